//! The storage role: finds the primary master and identifies; answers recovery and
//! verification (its partition table, last ids, voted and locked transactions); applies
//! truncations and validations; persists every partition-table change it is sent; starts
//! and stops operation when told. Told DOWN it stops; told UNKNOWN (dropped) it erases its
//! database and stops. While operational it serves clients the primary announced
//! (`client.rs`: stores, checks, votes, loads; `history.rs`: transaction metadata, undo
//! lookups, object history, TID lists), with the locks of `transactions`, and takes the
//! primary's lock / unlock / abort of transactions and its pack orders (`history.rs`).
//!
//! The database is a `Box<dyn Backend>` handed over at construction; it outlives the actor
//! (a crash loses memory and uncommitted work, not what was committed). Database errors come
//! in two kinds (`DbError::is_fatal`): one request could not be served (answered with an
//! `Error` packet; nothing was written, and the node goes on), or the database cannot be
//! trusted any more (I/O error, disk full, gone, corrupt, in use by another process): the
//! node stops with one log line saying why, and what it had not committed is rolled back
//! with its connection. Either way nothing is answered as done that was not committed: an
//! answer is sent only after the database call it reports on returned `Ok`.

use tracing::{debug, error, info, warn};

mod client;
mod group;
mod history;
pub mod transactions;

use std::time::Duration;

use self::transactions::{Mutants, Out, Transactions};
use super::core::{Follower, Node};
use super::link::Links;
use super::master_link::{LinkEvent, MasterLink};
use super::requests::Failure;
use super::{CloseReason, ConnId, Ctx, Ticker, TimerId};
use crate::db::{Backend, Cell, DbError};
use crate::proto::{
    Address, ClusterState, ErrorCode, IdentificationExtra, Message, Nid, NodeState, NodeType,
    Packet, Tid,
};
use crate::pt::PartitionTable;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageConfig {
    pub cluster: String,
    /// The address we listen on (as bound).
    pub bind: Address,
    pub masters: Vec<Address>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    Master,
    /// Another node connected to us, not identified yet.
    Incoming,
    /// A client the primary announced, identified.
    Client(Nid),
}

/// What a storage asks: only its identification, of the primary master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identification;

pub struct Storage {
    cfg: StorageConfig,
    db: Box<dyn Backend>,
    nid: Option<Nid>,
    links: Links<Peer, Identification>,
    master: MasterLink,
    /// Our copy of the partition table (also in the database).
    pt: Option<PartitionTable>,
    operational: bool,
    tick: Ticker,
    /// Set once a fatal error stopped us.
    failed: bool,
    /// The transactions being committed through us, their locks and waiting requests.
    tm: Transactions,
    /// Clients that asked to identify before the primary told us about them: (message id,
    /// their nid, since when); answered when the primary's node list names them.
    unannounced: std::collections::BTreeMap<ConnId, (u32, Nid, Duration)>,
    /// Answers waiting for the group commit (`group`).
    batch: group::Batch,
    /// History requests waiting for unlocks; the pack in progress (`history`).
    history: history::History,
}

/// How long a client's identification waits for the primary to announce it.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(10);

/// The rows of a table from the database's cells. A partition number or table id no
/// cluster can have means the database cannot be trusted (and must not size an allocation).
fn table_from_cells(
    ptid: Option<crate::proto::Ptid>,
    replicas: u32,
    cells: &[Cell],
) -> Result<Option<PartitionTable>, DbError> {
    let corrupt = |what: String| DbError::Backend(format!("corrupt partition table: {what}"));
    if let Some(p) = ptid.filter(|p| !p.is_plausible()) {
        return Err(corrupt(format!("impossible table id {p}")));
    }
    let Some(last) = cells.iter().map(|c| c.partition).max() else {
        return Ok(None);
    };
    if last >= crate::pt::MAX_PARTITIONS {
        return Err(corrupt(format!("partition {last}")));
    }
    let mut rows = vec![Vec::new(); last as usize + 1];
    for c in cells {
        rows[c.partition as usize].push((c.nid, c.state));
    }
    crate::pt::check_table(ptid, &rows).map_err(corrupt)?;
    Ok(Some(PartitionTable::from_rows(ptid, replicas, &rows)))
}

impl Storage {
    pub fn new(cfg: StorageConfig, mut db: Box<dyn Backend>) -> Storage {
        // Votes, locks and unlocks are committed in groups (`group`).
        db.set_deferred(true);
        let master = MasterLink::new(
            NodeType::Storage,
            cfg.cluster.clone(),
            Some(cfg.bind.clone()),
            &cfg.masters,
        );
        Storage {
            cfg,
            db,
            nid: None,
            links: Links::default(),
            master,
            pt: None,
            operational: false,
            tick: Ticker::default(),
            failed: false,
            tm: Transactions::default(),
            unannounced: Default::default(),
            batch: Default::default(),
            history: Default::default(),
        }
    }

    pub fn nid(&self) -> Option<Nid> {
        self.nid
    }

    pub fn is_operational(&self) -> bool {
        self.operational
    }

    pub fn partition_table(&self) -> Option<&PartitionTable> {
        self.pt.as_ref()
    }

    pub fn backend(&self) -> &dyn Backend {
        self.db.as_ref()
    }

    /// The primary master we are identified by, if any.
    pub fn primary(&self) -> Option<&Address> {
        self.master
            .target()
            .filter(|(_, identified)| *identified)
            .map(|(a, _)| a)
    }

    pub fn cluster_state(&self) -> Option<ClusterState> {
        self.master.cluster_state()
    }

    /// Whether our node id is in a partition table we hold: until then the id means little
    /// (two masters both claiming the primary role may each have given us one), and the
    /// primary may give us another rather than refuse us.
    fn identification_extra(&self) -> IdentificationExtra {
        IdentificationExtra {
            established: self.established(),
            ptid: self.pt.as_ref().and_then(|p| p.ptid()),
            ..Default::default()
        }
    }

    fn established(&self) -> bool {
        let (Some(nid), Some(pt)) = (self.nid, &self.pt) else {
            return false;
        };
        pt.nodes().contains(&nid)
    }

    fn me(&self) -> String {
        self.nid
            .map_or_else(|| self.cfg.bind.to_string(), |n| n.to_string())
    }

    /// Stop: a database error, or told so.
    fn stop(&mut self, cx: &mut Ctx, reason: String, success: bool) {
        if self.failed {
            return;
        }
        self.failed = true;
        if success {
            info!("{}: {reason}", self.me());
        } else {
            error!("{}: {reason}", self.me());
        }
        self.links.close_all(cx);
        cx.exit(reason, success);
    }

    fn db_failed(&mut self, cx: &mut Ctx, what: &str, e: DbError) {
        self.stop(cx, format!("database error while {what}: {e}"), false);
    }

    /// A database call failed while serving `msg_id` (a request, if `request`) on `conn`:
    /// stop if the database cannot be trusted any more; otherwise answer the request with an
    /// error, or, for a notification we could not apply, reconnect to the primary so that
    /// it sends us its whole state again.
    fn db_error(
        &mut self,
        cx: &mut Ctx,
        conn: ConnId,
        request: Option<u32>,
        what: &str,
        e: DbError,
    ) {
        if e.is_fatal() {
            return self.db_failed(cx, what, e);
        }
        warn!("{}: {what}: {e}", self.me());
        match request {
            Some(id) => self.answer(cx, conn, id, Packet::error(e.error_code(), e.to_string())),
            None => {
                let why = format!("could not apply a notification: {e}");
                if let Some(peer) = self.links.close(cx, conn) {
                    self.on_closed(cx, conn, peer, CloseReason::Protocol(why));
                }
            }
        }
    }

    fn load(&mut self) -> Result<(), DbError> {
        let config = self.db.config()?;
        self.nid = config.nid;
        let cells = self.db.partition_table()?;
        self.pt = table_from_cells(config.ptid, config.replicas.unwrap_or(0), &cells)?;
        Ok(())
    }

    fn answer(&mut self, cx: &mut Ctx, conn: ConnId, id: u32, packet: Packet) {
        self.links.answer(cx, conn, id, packet);
    }

    fn on_master_message(&mut self, cx: &mut Ctx, conn: ConnId, msg: Message, answer: bool) {
        let Some(ev) = self
            .master
            .on_message(cx, &mut self.links, conn, self.nid, msg, answer)
        else {
            return;
        };
        let mut request = None;
        let result = match ev {
            LinkEvent::Identified { your_nid }
                if your_nid.is_some_and(|n| n.node_type() != Some(NodeType::Storage)) =>
            {
                let why = format!("{your_nid:?} is not a storage node id");
                self.master_protocol_error(cx, conn, None, why);
                return;
            }
            LinkEvent::Identified { your_nid } => self.identified(your_nid),
            LinkEvent::Told(NodeState::Unknown) => {
                // Dropped from the cluster: our data is of no use to anyone any more.
                let r = self.db.erase();
                match r {
                    Ok(()) => {
                        self.stop(cx, "dropped from the cluster: database erased".into(), true)
                    }
                    Err(e) => self.db_failed(cx, "erasing the database", e),
                }
                return;
            }
            LinkEvent::Told(state) => {
                self.stop(cx, format!("told {state} by the primary master"), true);
                return;
            }
            LinkEvent::ClusterState(_) | LinkEvent::Lost => Ok(()),
            LinkEvent::Message(msg) => {
                request = (msg.packet.kind() == crate::proto::Kind::Request).then_some(msg.id);
                self.on_master_request(cx, conn, msg)
            }
        };
        if let Err(e) = result {
            self.db_error(cx, conn, request, "serving the master", e);
        }
    }

    /// The primary sent what no primary sends: say so, drop the link and find the primary
    /// again, rather than trust it.
    fn master_protocol_error(&mut self, cx: &mut Ctx, conn: ConnId, id: Option<u32>, why: String) {
        warn!(
            "{}: protocol error from the master at {:?}: {why}",
            self.me(),
            self.master.target().map(|(a, _)| a)
        );
        if let Some(id) = id {
            self.answer(
                cx,
                conn,
                id,
                Packet::error(ErrorCode::ProtocolError, why.clone()),
            );
        }
        self.links.close(cx, conn);
        self.on_closed(cx, conn, Peer::Master, CloseReason::Protocol(why));
    }

    fn identified(&mut self, your_nid: Option<Nid>) -> Result<(), DbError> {
        if let Some(nid) = your_nid {
            if self.nid != Some(nid) {
                if self.nid.is_some() {
                    warn!("the primary gave us {nid} instead of {}", self.me());
                }
                self.db.set_nid(nid)?;
                self.nid = Some(nid);
            }
        }
        Ok(())
    }

    fn on_master_request(
        &mut self,
        cx: &mut Ctx,
        conn: ConnId,
        msg: Message,
    ) -> Result<(), DbError> {
        let id = msg.id;
        match msg.packet {
            Packet::AskRecovery => {
                let c = self.db.config()?;
                let answer = Packet::AnswerRecovery {
                    ptid: c.ptid,
                    backup_tid: c.backup_tid,
                    truncate_tid: c.truncate_tid,
                };
                self.answer(cx, conn, id, answer);
            }
            Packet::AskPartitionTable => {
                let (ptid, num_replicas, rows) = match &self.pt {
                    Some(pt) => (pt.ptid(), pt.replicas(), pt.rows()),
                    None => (None, 0, Vec::new()),
                };
                self.answer(
                    cx,
                    conn,
                    id,
                    Packet::AnswerPartitionTable {
                        ptid,
                        num_replicas,
                        rows,
                    },
                );
            }
            Packet::AskLastIDs => {
                // A pending truncation is applied before the last ids are read: this answer
                // is the master's acknowledgement of it.
                self.db.truncate()?;
                let ids = self.db.last_ids()?;
                let answer = Packet::AnswerLastIDs {
                    last_tid: ids.last_tid,
                    last_oid: ids.last_oid,
                    first_tid: ids.first_tid,
                };
                self.answer(cx, conn, id, answer);
            }
            Packet::AskReserveIDs { oid, tid } => {
                // Kept forever (only raised): an impossible one would leave no id to use.
                if oid.is_some_and(|o| o.0 > i64::MAX as u64) || tid.is_some_and(|t| t > Tid::MAX) {
                    let why = format!("impossible reservation {oid:?}, {tid:?}");
                    self.master_protocol_error(cx, conn, Some(id), why);
                    return Ok(());
                }
                // On disk before the answer: the primary hands these ids out on it.
                if oid.is_some() || tid.is_some() {
                    self.db.reserve_ids(oid, tid)?;
                }
                let c = self.db.config()?;
                let answer = Packet::AnswerReserveIDs {
                    oid: c.reserved_oid,
                    tid: c.reserved_tid,
                };
                self.answer(cx, conn, id, answer);
            }
            Packet::AskLockedTransactions => {
                let mut locked = self.db.locked_transactions()?;
                if cx.mutant("verification-readcurrent") {
                    // The bug: a transaction of which we hold only checks and/or the
                    // metadata looks like nothing to verify.
                    locked.retain(|ttid, _| !self.tm.objectless(*ttid));
                }
                let transactions = locked.into_iter().collect();
                self.answer(
                    cx,
                    conn,
                    id,
                    Packet::AnswerLockedTransactions { transactions },
                );
            }
            Packet::AskFinalTID { ttid } => {
                let tid = self.db.final_tid(ttid)?;
                self.answer(cx, conn, id, Packet::AnswerFinalTID { tid });
            }
            Packet::ValidateTransaction { ttid, tid } => {
                debug!("{}: validating {ttid:?} as {tid:?}", self.me());
                self.db.validate(ttid, tid)?;
            }
            Packet::Truncate { tid } => {
                info!("{}: truncation at {tid} decided", self.me());
                self.db.set_truncate_tid(Some(tid))?;
            }
            Packet::SendPartitionTable {
                ptid,
                num_replicas,
                rows,
            } => {
                let Some(ptid) = ptid else { return Ok(()) };
                if let Err(why) = crate::pt::check_table(Some(ptid), &rows) {
                    self.master_protocol_error(cx, conn, Some(id), why);
                    return Ok(());
                }
                let cells: Vec<Cell> = rows
                    .iter()
                    .enumerate()
                    .flat_map(|(p, row)| {
                        row.iter().map(move |(nid, state)| Cell {
                            partition: p as u32,
                            nid: *nid,
                            state: *state,
                        })
                    })
                    .collect();
                self.db
                    .change_partition_table(ptid, num_replicas, &cells, true)?;
                self.pt = Some(PartitionTable::from_rows(Some(ptid), num_replicas, &rows));
                debug!("{}: partition table {ptid}", self.me());
            }
            Packet::NotifyPartitionChanges {
                ptid,
                num_replicas,
                changes,
            } => {
                if !self.apply_pt_changes(cx, conn, ptid, num_replicas, &changes) {
                    return Ok(());
                }
                let cells: Vec<Cell> = changes
                    .iter()
                    .map(|(p, nid, state)| Cell {
                        partition: *p,
                        nid: *nid,
                        state: *state,
                    })
                    .collect();
                self.db
                    .change_partition_table(ptid, num_replicas, &cells, false)?;
            }
            Packet::AskLockInformation { ttid, tid } => {
                let answer = match self.tm.lock(self.db.as_mut(), ttid, tid)? {
                    Ok(()) => Packet::AnswerInformationLocked { ttid },
                    Err((code, why)) => {
                        warn!("{}: cannot lock {ttid}: {why}", self.me());
                        Packet::error(code, why)
                    }
                };
                // Held until the commit that makes the lock durable.
                let answer = Out::Answer {
                    conn,
                    id,
                    packet: answer,
                };
                self.flush(cx, vec![answer]);
            }
            Packet::NotifyUnlockInformation { ttid } => {
                let mut out = Vec::new();
                let r = self.tm.unlock(self.db.as_mut(), &mut out, ttid);
                self.lazy_call(cx);
                self.flush(cx, out);
                r?;
            }
            Packet::AbortTransaction { ttid, .. } => {
                let mut out = Vec::new();
                let r = self.tm.abort(self.db.as_mut(), &mut out, ttid, None);
                self.flush(cx, out);
                r?;
            }
            Packet::StartOperation { .. } => {
                // Voted transactions verification did not commit are dropped now.
                self.db.drop_unfinished()?;
                self.tm.reset();
                self.operational = true;
                info!("{}: operational", self.me());
                self.links.notify(cx, conn, Packet::NotifyReady);
            }
            Packet::AskPack { tid } if self.operational => self.pack_request(cx, conn, id, tid),
            Packet::StopOperation => {
                if self.operational {
                    info!("{}: operation stopped", self.me());
                }
                self.stop_serving(cx);
            }
            other if other.kind() == crate::proto::Kind::Request => {
                let why = format!("{} is not a request a storage serves", other.name());
                self.answer(cx, conn, id, Packet::error(ErrorCode::ProtocolError, why));
            }
            other => debug!("{}: ignoring {} from the master", self.me(), other.name()),
        }
        Ok(())
    }
}

impl Node for Storage {
    type Peer = Peer;
    type Asked = Identification;

    fn core(&mut self) -> (&mut Links<Peer, Identification>, &mut Ticker) {
        (&mut self.links, &mut self.tick)
    }

    fn on_start(&mut self, cx: &mut Ctx) {
        if let Err(e) = self.load() {
            self.db_failed(cx, "loading", e);
            return;
        }
        info!(
            "{}: starting with partition table {:?}",
            self.me(),
            self.pt.as_ref().and_then(|p| p.ptid())
        );
        self.tick(cx);
    }

    fn stopped(&self) -> bool {
        self.failed
    }

    fn accepted(&self) -> Peer {
        Peer::Incoming
    }

    fn on_message(
        &mut self,
        cx: &mut Ctx,
        conn: ConnId,
        asked: Option<Identification>,
        msg: Message,
    ) {
        // Delayed requests may run on any message: the mutants apply to them all.
        self.tm.mutants = Mutants {
            conflict_check_skipped: cx.mutant("conflict-check-skipped"),
            readcurrent_unchecked: cx.mutant("readcurrent-unchecked"),
            undo_wrong_serial: cx.mutant("undo-wrong-serial"),
        };
        match self.links.get(conn) {
            Some(Peer::Master) => {
                self.on_master_message(cx, conn, msg, asked.is_some());
                self.after_master_message(cx);
                // An unlock may be what waiting history requests wait for.
                self.serve_waiting_reads(cx);
            }
            Some(Peer::Incoming) => self.on_incoming(cx, conn, msg),
            Some(Peer::Client(nid)) => {
                let nid = *nid;
                self.on_client_message(cx, conn, nid, msg)
            }
            None => {}
        }
    }

    fn on_failed(&mut self, cx: &mut Ctx, conn: ConnId, _: Identification, why: Failure) {
        // A master that does not answer our identification: try again, or another one.
        if why == Failure::TimedOut {
            self.reconnect(cx, conn, CloseReason::TimedOut);
        }
    }

    fn on_closed(&mut self, cx: &mut Ctx, conn: ConnId, peer: Peer, reason: CloseReason) {
        match peer {
            Peer::Master => {
                if self.master_closed(cx, conn, &reason) {
                    // Without a primary we serve nobody until it tells us to start again.
                    self.stop_serving(cx);
                }
            }
            Peer::Incoming => {
                self.unannounced.remove(&conn);
            }
            Peer::Client(_) => self.client_closed(cx, conn),
        }
    }

    fn on_tick(&mut self, cx: &mut Ctx) {
        self.follow_master(cx);
        self.expire_unannounced(cx);
    }

    fn on_timer(&mut self, cx: &mut Ctx, id: TimerId, token: u64) {
        self.flush_timer(cx, id, token);
        self.pack_timer(cx, id, token);
    }

    fn on_shutdown(&mut self, cx: &mut Ctx) {
        // What waits for the group commit is committed and answered first.
        self.commit_batch(cx);
        self.stop(cx, "shutdown requested".into(), true);
    }
}

impl Follower for Storage {
    fn master_link(&mut self) -> (&mut MasterLink, &mut Links<Peer, Identification>) {
        (&mut self.master, &mut self.links)
    }

    fn identification(&self) -> (Peer, Identification, Option<Nid>, IdentificationExtra) {
        let extra = self.identification_extra();
        (Peer::Master, Identification, self.nid, extra)
    }

    fn partition_table_mut(&mut self) -> &mut Option<PartitionTable> {
        &mut self.pt
    }
}

impl Storage {
    /// Internal consistency for the simulator: our table matches the database's; the
    /// transaction manager's locks and queues agree.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.tm
            .check_invariants()
            .map_err(|e| format!("{}: {e}", self.me()))?;
        let config = self.db.config().map_err(|e| e.to_string())?;
        let ptid = self.pt.as_ref().and_then(|p| p.ptid());
        if ptid != config.ptid {
            return Err(format!(
                "{}: table {ptid:?} in memory, {:?} on disk",
                self.me(),
                config.ptid
            ));
        }
        if let Some(pt) = &self.pt {
            let cells = self.db.partition_table().map_err(|e| e.to_string())?;
            let on_disk = table_from_cells(config.ptid, config.replicas.unwrap_or(0), &cells)
                .map_err(|e| e.to_string())?;
            if on_disk.as_ref().map(|t| t.rows()) != Some(pt.rows()) {
                return Err(format!(
                    "{}: table {ptid:?} differs in memory and on disk",
                    self.me()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::testing::{sent, Harness};
    use crate::actors::{ConnId, Effect, Event};
    use crate::db::sqlite::SqliteBackend;
    use crate::db::Identity;
    use crate::proto::{NodeInfo, Ptid, WallTime};

    fn storage(name: &str) -> Harness<Storage> {
        Harness::new(storage_actor(name))
    }

    fn storage_actor(name: &str) -> Storage {
        let identity = Identity {
            cluster: "c".into(),
            nid: None,
        };
        let db = SqliteBackend::memory(name, &identity).unwrap();
        let cfg = StorageConfig {
            cluster: "c".into(),
            bind: Address::new("10.0.1.1", 20000),
            masters: vec![Address::new("10.0.0.1", 10000)],
        };
        Storage::new(cfg, Box::new(db))
    }

    /// Start, connect to the master, get identified as S1 with a one-cell table.
    fn identified(h: &mut Harness<Storage>) -> ConnId {
        let out = h.start();
        let conn = crate::actors::testing::first_connect(&out).expect("connects to the master");
        let s1 = Nid::new(NodeType::Storage, 1);
        let m1 = Nid::new(NodeType::Master, 1);
        let msg = |id, packet| Event::Received {
            conn,
            msg: Message { id, packet },
        };
        h.handle(Event::Connected { conn });
        h.handle(msg(
            0,
            Packet::AcceptIdentification {
                node_type: NodeType::Master,
                nid: Some(m1),
                your_nid: Some(s1),
            },
        ));
        let me = NodeInfo {
            node_type: NodeType::Storage,
            address: Some(Address::new("10.0.1.1", 20000)),
            nid: Some(s1),
            state: NodeState::Running,
            id_timestamp: None,
        };
        h.handle(msg(
            0,
            Packet::NotifyNodeInformation {
                timestamp: WallTime(1),
                nodes: vec![me],
            },
        ));
        let rows = vec![vec![(s1, crate::proto::CellState::UpToDate)]];
        h.handle(msg(
            1,
            Packet::SendPartitionTable {
                ptid: Some(Ptid(1)),
                num_replicas: 0,
                rows,
            },
        ));
        conn
    }

    #[test]
    fn recovery_questions_are_answered_from_the_database() {
        let mut h = storage("storage-unit-answers");
        let conn = identified(&mut h);
        assert_eq!(h.actor.nid(), Some(Nid::new(NodeType::Storage, 1)));
        assert_eq!(
            h.actor.backend().config().unwrap().nid,
            Some(Nid::new(NodeType::Storage, 1))
        );
        let out = h.handle(Event::Received {
            conn,
            msg: Message {
                id: 7,
                packet: Packet::AskRecovery,
            },
        });
        assert_eq!(
            sent(&out, conn),
            vec![Packet::AnswerRecovery {
                ptid: Some(Ptid(1)),
                backup_tid: None,
                truncate_tid: None
            }]
        );
        // A change that does not follow our table id is refused: we reconnect for the
        // whole table instead of applying it.
        let bad = Packet::NotifyPartitionChanges {
            ptid: Ptid(3),
            num_replicas: 0,
            changes: vec![],
        };
        let out = h.handle(Event::Received {
            conn,
            msg: Message { id: 2, packet: bad },
        });
        assert!(out
            .iter()
            .any(|e| matches!(e, Effect::Close { conn: c } if *c == conn)));
        assert_eq!(h.actor.backend().config().unwrap().ptid, Some(Ptid(1)));
    }

    /// A storage over a faulty disk, armed (faults strike), and the disk's controls.
    fn faulty_storage(
        name: &str,
    ) -> (
        Harness<Storage>,
        std::rc::Rc<std::cell::RefCell<crate::db::faulty::DiskFaults>>,
    ) {
        use crate::db::faulty::{DiskFaults, FaultyBackend};
        let identity = Identity {
            cluster: "c".into(),
            nid: None,
        };
        let inner = SqliteBackend::memory(name, &identity).unwrap();
        let faults = std::rc::Rc::new(std::cell::RefCell::new(DiskFaults::new(
            crate::rng::stream(1, 1),
        )));
        faults.borrow_mut().armed = true;
        let db = FaultyBackend::new(Box::new(inner), faults.clone());
        let cfg = StorageConfig {
            cluster: "c".into(),
            bind: Address::new("10.0.1.1", 20000),
            masters: vec![Address::new("10.0.0.1", 10000)],
        };
        (Harness::new(Storage::new(cfg, Box::new(db))), faults)
    }

    #[test]
    fn a_request_level_database_error_is_answered_and_the_node_goes_on() {
        let (mut h, faults) = faulty_storage("storage-unit-request-error");
        let conn = identified(&mut h);
        faults.borrow_mut().fail_next = Some(DbError::NoPartitionTable);
        let ask = |id| Event::Received {
            conn,
            msg: Message {
                id,
                packet: Packet::AskLockedTransactions,
            },
        };
        let out = h.handle(ask(8));
        assert!(
            !out.iter().any(|e| matches!(e, Effect::Exit { .. })),
            "{out:?}"
        );
        assert!(
            matches!(
                sent(&out, conn).as_slice(),
                [Packet::Error {
                    code: ErrorCode::NotReady,
                    ..
                }]
            ),
            "{out:?}"
        );
        // The next request is served as usual.
        let out = h.handle(ask(9));
        assert_eq!(
            sent(&out, conn),
            vec![Packet::AnswerLockedTransactions {
                transactions: vec![]
            }]
        );
    }

    #[test]
    fn a_fatal_database_error_stops_the_node_once_without_answering() {
        for e in [
            DbError::Io("injected".into()),
            DbError::NoSpace("injected".into()),
        ] {
            let (mut h, faults) = faulty_storage("storage-unit-fatal-error");
            let conn = identified(&mut h);
            faults.borrow_mut().fail_next = Some(e.clone());
            let table = Packet::SendPartitionTable {
                ptid: Some(Ptid(2)),
                num_replicas: 0,
                rows: vec![vec![(
                    Nid::new(NodeType::Storage, 1),
                    crate::proto::CellState::UpToDate,
                )]],
            };
            let out = h.handle(Event::Received {
                conn,
                msg: Message {
                    id: 4,
                    packet: table,
                },
            });
            let exits: Vec<_> = out
                .iter()
                .filter_map(|e| match e {
                    Effect::Exit { reason, success } => Some((reason.clone(), *success)),
                    _ => None,
                })
                .collect();
            assert_eq!(exits.len(), 1, "{out:?}");
            assert!(
                !exits[0].1 && exits[0].0.contains(&e.to_string()),
                "{exits:?}"
            );
            assert!(sent(&out, conn).is_empty(), "{out:?}");
            // The table it could not write is not believed either.
            assert_eq!(h.actor.backend().config().unwrap().ptid, Some(Ptid(1)));
            assert_eq!(h.actor.partition_table().unwrap().ptid(), Some(Ptid(1)));
            // Stopped: nothing more is served.
            let out = h.handle(Event::Received {
                conn,
                msg: Message {
                    id: 5,
                    packet: Packet::AskRecovery,
                },
            });
            assert!(out.is_empty(), "{out:?}");
        }
    }

    #[test]
    fn told_unknown_it_erases_its_database_and_exits() {
        let mut h = storage("storage-unit-erase");
        let conn = identified(&mut h);
        assert!(!h.actor.backend().partition_table().unwrap().is_empty());
        let mut gone = NodeInfo {
            node_type: NodeType::Storage,
            address: Some(Address::new("10.0.1.1", 20000)),
            nid: Some(Nid::new(NodeType::Storage, 1)),
            state: NodeState::Unknown,
            id_timestamp: None,
        };
        let out = h.handle(Event::Received {
            conn,
            msg: Message {
                id: 3,
                packet: Packet::NotifyNodeInformation {
                    timestamp: WallTime(2),
                    nodes: vec![gone.clone()],
                },
            },
        });
        assert!(
            out.iter()
                .any(|e| matches!(e, Effect::Exit { success: true, .. })),
            "{out:?}"
        );
        let config = h.actor.backend().config().unwrap();
        assert_eq!((config.nid, config.ptid), (None, None));
        assert!(h.actor.backend().partition_table().unwrap().is_empty());

        // Told DOWN instead: it stops and keeps its data.
        let mut h = storage("storage-unit-down");
        let conn = identified(&mut h);
        gone.state = NodeState::Down;
        let out = h.handle(Event::Received {
            conn,
            msg: Message {
                id: 3,
                packet: Packet::NotifyNodeInformation {
                    timestamp: WallTime(2),
                    nodes: vec![gone],
                },
            },
        });
        assert!(out
            .iter()
            .any(|e| matches!(e, Effect::Exit { success: true, .. })));
        assert_eq!(h.actor.backend().config().unwrap().ptid, Some(Ptid(1)));
    }

    /// Finding 2 at the storage: a table id that cannot be incremented, a table of node
    /// ids that are not storages, a partition far out of range: refused with a protocol
    /// error, the link dropped, the database untouched.
    #[test]
    fn impossible_tables_from_the_master_are_refused() {
        let s1 = Nid::new(NodeType::Storage, 1);
        let m1 = Nid::new(NodeType::Master, 1);
        let up = crate::proto::CellState::UpToDate;
        let bad = [
            Packet::SendPartitionTable {
                ptid: Some(Ptid(u64::MAX)),
                num_replicas: 0,
                rows: vec![vec![(s1, up)]],
            },
            Packet::SendPartitionTable {
                ptid: Some(Ptid(2)),
                num_replicas: 0,
                rows: vec![vec![(m1, up)]],
            },
        ];
        for (i, packet) in bad.into_iter().enumerate() {
            let mut h = storage(&format!("storage-unit-impossible-{i}"));
            let conn = identified(&mut h);
            let out = h.handle(Event::Received {
                conn,
                msg: Message { id: 5, packet },
            });
            assert!(
                matches!(
                    &sent(&out, conn)[..],
                    [Packet::Error {
                        code: ErrorCode::ProtocolError,
                        ..
                    }]
                ),
                "{out:?}"
            );
            assert!(out
                .iter()
                .any(|e| matches!(e, Effect::Close { conn: c } if *c == conn)));
            assert_eq!(h.actor.backend().config().unwrap().ptid, Some(Ptid(1)));
            h.actor.check_invariants().unwrap();
        }
        // A change after an id that cannot grow is refused, not wrapped.
        let mut pt = PartitionTable::from_rows(Some(Ptid(u64::MAX)), 0, &[vec![(s1, up)]]);
        assert!(pt.apply(Ptid(0), 0, &[]).is_err());
    }

    /// A database holding a partition number no table can have is a fatal error with a
    /// clear message, not an allocation of billions of rows.
    #[test]
    fn an_impossible_partition_on_disk_is_fatal() {
        let cells = [Cell {
            partition: u32::MAX,
            nid: Nid::new(NodeType::Storage, 1),
            state: crate::proto::CellState::UpToDate,
        }];
        let e = table_from_cells(Some(Ptid(1)), 0, &cells).unwrap_err();
        assert!(e.to_string().contains("partition"), "{e}");
        let e = table_from_cells(Some(Ptid(u64::MAX)), 0, &cells[..0]).unwrap_err();
        assert!(e.to_string().contains("table id"), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            failure_persistence: None,
            ..Default::default()
        })]

        /// Any sequence of events a host can deliver, hostile packets from the master link
        /// and from incoming connections included: the storage never panics, and its table
        /// in memory stays the one on disk.
        #[test]
        fn the_storage_survives_hostile_input(
            steps in proptest::collection::vec(crate::actors::fuzz::step("c"), 1..60),
        ) {
            static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut h = storage(&format!("storage-fuzz-{n}"));
            crate::actors::fuzz::run(&mut h, steps, |s: &Storage| {
                if s.failed {
                    return Ok(());
                }
                s.check_invariants()
            })?;
        }
    }
}

#[cfg(test)]
pub(super) mod serving_tests {
    use super::*;
    use crate::actors::testing::{closed, sent, Harness};
    use crate::actors::{ConnId, Effect, Event};
    use crate::db::sqlite::SqliteBackend;
    use crate::db::{Identity, Load};
    use crate::proto::{CellState, Data, NodeInfo, Oid, Ptid, Tid, WallTime};
    use sha1::{Digest, Sha1};

    #[allow(non_snake_case)]
    fn S1() -> Nid {
        Nid::new(NodeType::Storage, 1)
    }
    #[allow(non_snake_case)]
    fn C1() -> Nid {
        Nid::new(NodeType::Client, 1)
    }
    pub(super) const CLIENT: ConnId = ConnId(1000);

    pub(super) struct Setup {
        pub(super) h: Harness<Storage>,
        pub(super) master: ConnId,
        next_id: u32,
        stamp: u64,
    }

    fn client_info(nid: Nid, state: NodeState) -> NodeInfo {
        NodeInfo {
            node_type: NodeType::Client,
            address: None,
            nid: Some(nid),
            state,
            id_timestamp: None,
        }
    }

    impl Setup {
        /// An operational S1() whose partition `p` has our cell in `cells[p]` (None: not
        /// ours), with C1() announced as running and identified on `CLIENT`.
        pub(super) fn new(
            name: &str,
            mutant: Option<&'static str>,
            cells: &[Option<CellState>],
        ) -> Setup {
            let identity = Identity {
                cluster: "c".into(),
                nid: None,
            };
            let db = SqliteBackend::memory(name, &identity).unwrap();
            Setup::over(Box::new(db), mutant, cells)
        }

        /// `new` over the given database.
        pub(super) fn over(
            db: Box<dyn crate::db::Backend>,
            mutant: Option<&'static str>,
            cells: &[Option<CellState>],
        ) -> Setup {
            let cfg = StorageConfig {
                cluster: "c".into(),
                bind: Address::new("10.0.1.1", 20000),
                masters: vec![Address::new("10.0.0.1", 10000)],
            };
            let actor = Storage::new(cfg, db);
            let h = match mutant {
                Some(m) => Harness::with_mutant(actor, m),
                None => Harness::new(actor),
            };
            let mut s = Setup {
                h,
                master: ConnId(0),
                next_id: 100,
                stamp: 1,
            };
            let out = s.h.start();
            s.master = crate::actors::testing::first_connect(&out).unwrap();
            s.h.handle(Event::Connected { conn: s.master });
            s.master_says_id(
                0,
                Packet::AcceptIdentification {
                    node_type: NodeType::Master,
                    nid: Some(Nid::new(NodeType::Master, 1)),
                    your_nid: Some(S1()),
                },
            );
            let me = NodeInfo {
                node_type: NodeType::Storage,
                address: Some(Address::new("10.0.1.1", 20000)),
                nid: Some(S1()),
                state: NodeState::Running,
                id_timestamp: None,
            };
            s.announce(vec![me]);
            let s2 = Nid::new(NodeType::Storage, 2);
            let rows = cells
                .iter()
                .map(|c| match c {
                    Some(state) => vec![(S1(), *state)],
                    None => vec![(s2, CellState::UpToDate)],
                })
                .collect();
            s.master_says(Packet::SendPartitionTable {
                ptid: Some(Ptid(1)),
                num_replicas: 0,
                rows,
            });
            s.master_says(Packet::StartOperation { backup: false });
            assert!(s.h.actor.is_operational());
            s.announce(vec![client_info(C1(), NodeState::Running)]);
            let out =
                s.h.incoming(CLIENT, identify(NodeType::Client, Some(C1()), "c"));
            assert_eq!(
                sent(&out, CLIENT),
                vec![Packet::AcceptIdentification {
                    node_type: NodeType::Storage,
                    nid: Some(S1()),
                    your_nid: Some(C1())
                }]
            );
            s
        }

        fn master_says_id(&mut self, id: u32, packet: Packet) -> Vec<Effect> {
            let out = self.h.handle(Event::Received {
                conn: self.master,
                msg: Message { id, packet },
            });
            self.settle(out)
        }

        /// The host fires the group commit's zero-delay timer if `out` set it.
        pub(super) fn settle(&mut self, mut out: Vec<Effect>) -> Vec<Effect> {
            for id in flush_timers(&out) {
                out.extend(self.h.handle(Event::Timer {
                    id,
                    token: group::FLUSH_TOKEN,
                }));
            }
            out
        }

        pub(super) fn master_says(&mut self, packet: Packet) -> Vec<Packet> {
            self.next_id += 1;
            let out = self.master_says_id(self.next_id, packet);
            sent(&out, self.master)
        }

        /// A message from the primary, its effects, the flush timer not fired.
        fn master_raw(&mut self, packet: Packet) -> Vec<Effect> {
            self.next_id += 1;
            self.h.handle(Event::Received {
                conn: self.master,
                msg: Message {
                    id: self.next_id,
                    packet,
                },
            })
        }

        /// A client request, its effects, the flush timer not fired.
        pub(super) fn ask_raw(&mut self, packet: Packet) -> Vec<Effect> {
            self.next_id += 1;
            self.h.handle(Event::Received {
                conn: CLIENT,
                msg: Message {
                    id: self.next_id,
                    packet,
                },
            })
        }

        fn announce(&mut self, nodes: Vec<NodeInfo>) -> Vec<Effect> {
            self.stamp += 1;
            self.master_says_id(
                0,
                Packet::NotifyNodeInformation {
                    timestamp: WallTime(self.stamp),
                    nodes,
                },
            )
        }

        /// A client request; what the client got back.
        pub(super) fn ask(&mut self, packet: Packet) -> Vec<Packet> {
            let out = self.ask_raw(packet);
            let out = self.settle(out);
            sent(&out, CLIENT)
        }

        pub(super) fn db(&self) -> &dyn crate::db::Backend {
            self.h.actor.backend()
        }
    }

    /// The group commit's timers set among `out`.
    fn flush_timers(out: &[Effect]) -> Vec<crate::actors::TimerId> {
        out.iter()
            .filter_map(|e| match e {
                Effect::SetTimer { id, token, .. } if *token == group::FLUSH_TOKEN => Some(*id),
                _ => None,
            })
            .collect()
    }

    fn fire(s: &mut Setup, id: crate::actors::TimerId) -> Vec<Effect> {
        s.h.handle(Event::Timer {
            id,
            token: group::FLUSH_TOKEN,
        })
    }

    #[test]
    fn votes_of_several_transactions_share_one_commit() {
        let mut s = Setup::new("group-votes", None, &[Some(CellState::UpToDate)]);
        for t in [10, 20, 30] {
            assert_eq!(s.ask(store(t, t, 0, b"a")), stored(None));
        }
        let before = s.h.actor.batch.commits;
        let mut timers = Vec::new();
        for packet in [
            meta(10, &[10]),
            meta(20, &[20]),
            Packet::AskVoteTransaction { ttid: Tid(30) },
        ] {
            let out = s.ask_raw(packet);
            assert!(sent(&out, CLIENT).is_empty(), "answered early: {out:?}");
            timers.extend(flush_timers(&out));
        }
        // Answers made meanwhile wait behind them, in order.
        let out = s.ask_raw(store(40, 40, 0, b"b"));
        assert!(sent(&out, CLIENT).is_empty(), "{out:?}");
        assert_eq!(timers.len(), 1, "one commit for the batch");
        assert_eq!(s.h.actor.batch.commits, before);
        let out = fire(&mut s, timers[0]);
        assert_eq!(
            sent(&out, CLIENT),
            vec![
                Packet::AnswerStoreTransaction,
                Packet::AnswerStoreTransaction,
                Packet::AnswerVoteTransaction,
                Packet::AnswerStoreObject { conflict: None },
            ]
        );
        assert_eq!(s.h.actor.batch.commits, before + 1);
        // Nothing waits now: a store is answered at once.
        assert_eq!(s.ask(store(50, 50, 0, b"c")), stored(None));
    }

    #[test]
    fn a_failed_group_commit_answers_nothing() {
        use crate::db::faulty::{DiskFaults, FaultyBackend};
        let identity = Identity {
            cluster: "c".into(),
            nid: None,
        };
        let inner = SqliteBackend::memory("group-fail", &identity).unwrap();
        let faults = std::rc::Rc::new(std::cell::RefCell::new(DiskFaults::new(
            crate::rng::stream(1, 1),
        )));
        let db = FaultyBackend::new(Box::new(inner), faults.clone());
        let mut s = Setup::over(Box::new(db), None, &[Some(CellState::UpToDate)]);
        faults.borrow_mut().armed = true;
        assert_eq!(s.ask(store(10, 1, 0, b"a")), stored(None));
        let out = s.ask_raw(meta(10, &[1]));
        assert!(sent(&out, CLIENT).is_empty(), "{out:?}");
        let timer = flush_timers(&out)[0];
        faults.borrow_mut().fail_next = Some(DbError::Io("injected".into()));
        let out = fire(&mut s, timer);
        assert!(sent(&out, CLIENT).is_empty(), "{out:?}");
        assert!(
            out.iter()
                .any(|e| matches!(e, Effect::Exit { success: false, .. })),
            "{out:?}"
        );
    }

    #[test]
    fn locks_wait_for_the_commit_and_unlocks_ride_one() {
        let mut s = Setup::new("group-lock", None, &[Some(CellState::UpToDate)]);
        assert_eq!(s.ask(store(10, 1, 0, b"a")), stored(None));
        assert_eq!(s.ask(meta(10, &[1])), vec![Packet::AnswerStoreTransaction]);
        let master = s.master;
        let out = s.master_raw(Packet::AskLockInformation {
            ttid: Tid(10),
            tid: Tid(11),
        });
        assert!(sent(&out, master).is_empty(), "{out:?}");
        let out = fire(&mut s, flush_timers(&out)[0]);
        assert_eq!(
            sent(&out, master),
            vec![Packet::AnswerInformationLocked { ttid: Tid(10) }]
        );
        let before = s.h.actor.batch.commits;
        let out = s.master_raw(Packet::NotifyUnlockInformation { ttid: Tid(10) });
        let timers = flush_timers(&out);
        assert_eq!(timers.len(), 1);
        // A load sees the unlocked data before the unlock's commit, at once.
        let out = s.ask_raw(Packet::AskObject {
            oid: Oid(1),
            at: None,
            before: None,
        });
        assert!(
            matches!(
                sent(&out, CLIENT).as_slice(),
                [Packet::AnswerObject {
                    serial: Tid(11),
                    ..
                }]
            ),
            "{out:?}"
        );
        fire(&mut s, timers[0]);
        assert_eq!(s.h.actor.batch.commits, before + 1);
    }

    /// The delays of the flush timers set among `out`.
    fn out_delays(out: &[Effect]) -> Vec<Duration> {
        out.iter()
            .filter_map(|e| match e {
                Effect::SetTimer { after, token, .. } if *token == group::FLUSH_TOKEN => {
                    Some(*after)
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn unlocks_ride_the_next_durable_commit() {
        let mut s = Setup::new("group-unlock", None, &[Some(CellState::UpToDate)]);
        let master = s.master;
        assert_eq!(s.ask(store(10, 1, 0, b"a")), stored(None));
        assert_eq!(s.ask(meta(10, &[1])), vec![Packet::AnswerStoreTransaction]);
        let out = s.master_raw(Packet::AskLockInformation {
            ttid: Tid(10),
            tid: Tid(11),
        });
        fire(&mut s, flush_timers(&out)[0]);
        let before = s.h.actor.batch.commits;
        let out = s.master_raw(Packet::NotifyUnlockInformation { ttid: Tid(10) });
        // No commit now, only one within UNLOCK_DELAY.
        assert_eq!(out_delays(&out), vec![group::UNLOCK_DELAY]);
        assert_eq!(s.h.actor.batch.commits, before);
        let lazy = flush_timers(&out)[0];
        // A vote needs a commit at once: the lazy timer gives way to a zero-delay one, and
        // one commit makes both durable.
        assert_eq!(s.ask(store(20, 2, 0, b"b")), stored(None));
        let out = s.ask_raw(meta(20, &[2]));
        assert!(sent(&out, CLIENT).is_empty(), "{out:?}");
        assert!(
            out.iter()
                .any(|e| matches!(e, Effect::CancelTimer { id } if *id == lazy)),
            "{out:?}"
        );
        assert_eq!(out_delays(&out), vec![Duration::ZERO]);
        let out = fire(&mut s, flush_timers(&out)[0]);
        assert_eq!(sent(&out, CLIENT), vec![Packet::AnswerStoreTransaction]);
        assert_eq!(s.h.actor.batch.commits, before + 1);
        // The cancelled lazy timer firing late commits nothing more.
        fire(&mut s, lazy);
        assert_eq!(s.h.actor.batch.commits, before + 1);
        assert!(sent(&out, master).is_empty());
    }

    fn identify(node_type: NodeType, nid: Option<Nid>, cluster: &str) -> Packet {
        Packet::RequestIdentification {
            node_type,
            nid,
            address: None,
            cluster_name: cluster.into(),
            id_timestamp: None,
            extra: Default::default(),
        }
    }

    pub(super) fn store(ttid: u64, oid: u64, serial: u64, bytes: &[u8]) -> Packet {
        Packet::AskStoreObject {
            oid: Oid(oid),
            serial: Tid(serial),
            compression: 0,
            checksum: Sha1::digest(bytes).into(),
            data: Some(Data(bytes.to_vec())),
            data_serial: None,
            ttid: Tid(ttid),
        }
    }

    pub(super) fn meta(ttid: u64, oids: &[u64]) -> Packet {
        Packet::AskStoreTransaction {
            ttid: Tid(ttid),
            user: Data(b"u".to_vec()),
            description: Data::default(),
            extension: Data::default(),
            oids: oids.iter().map(|o| Oid(*o)).collect(),
        }
    }

    pub(super) fn stored(conflict: Option<u64>) -> Vec<Packet> {
        vec![Packet::AnswerStoreObject {
            conflict: conflict.map(Tid),
        }]
    }

    /// The code of the one error among `p` (pings aside).
    pub(super) fn error_code(p: &[Packet]) -> Option<ErrorCode> {
        match p.iter().filter(|p| **p != Packet::Ping).collect::<Vec<_>>()[..] {
            [Packet::Error { code, .. }] => Some(*code),
            _ => None,
        }
    }

    /// Commit a transaction storing `oid` through the storage, as the client and the
    /// primary would.
    pub(super) fn commit(s: &mut Setup, ttid: u64, oid: u64, serial: u64, tid: u64) {
        assert_eq!(s.ask(store(ttid, oid, serial, b"v")), stored(None));
        assert_eq!(
            s.ask(meta(ttid, &[oid])),
            vec![Packet::AnswerStoreTransaction]
        );
        let locked = s.master_says(Packet::AskLockInformation {
            ttid: Tid(ttid),
            tid: Tid(tid),
        });
        assert_eq!(
            locked,
            vec![Packet::AnswerInformationLocked { ttid: Tid(ttid) }]
        );
        s.master_says(Packet::NotifyUnlockInformation { ttid: Tid(ttid) });
    }

    #[test]
    fn identification_of_clients() {
        let mut s = Setup::new("serve-ident", None, &[Some(CellState::UpToDate)]);
        // Not announced yet: waits for the primary's word, then accepted.
        let c2 = Nid::new(NodeType::Client, 2);
        let out =
            s.h.incoming(ConnId(2000), identify(NodeType::Client, Some(c2), "c"));
        assert!(out.is_empty(), "{out:?}");
        let out = s.announce(vec![client_info(c2, NodeState::Running)]);
        assert!(matches!(
            &sent(&out, ConnId(2000))[..],
            [Packet::AcceptIdentification { your_nid: Some(n), .. }] if *n == c2
        ));
        // Never announced: refused after a while.
        let c3 = Nid::new(NodeType::Client, 3);
        let out =
            s.h.incoming(ConnId(3000), identify(NodeType::Client, Some(c3), "c"));
        assert!(out.is_empty(), "{out:?}");
        s.h.elapsed += std::time::Duration::from_secs(11);
        let out = s.h.tick();
        assert_eq!(
            error_code(&sent(&out, ConnId(3000))),
            Some(ErrorCode::NotReady)
        );
        assert!(closed(&out, ConnId(3000)));
        // Other storages, anonymous clients, another cluster: refused and closed.
        for (i, packet) in [
            identify(NodeType::Storage, Some(Nid::new(NodeType::Storage, 2)), "c"),
            identify(NodeType::Client, None, "c"),
            identify(NodeType::Client, Some(c2), "other"),
            Packet::AskObject {
                oid: Oid(1),
                at: None,
                before: None,
            },
        ]
        .into_iter()
        .enumerate()
        {
            let conn = ConnId(4000 + i as u64);
            let out = s.h.incoming(conn, packet);
            assert!(error_code(&sent(&out, conn)).is_some(), "{out:?}");
            assert!(closed(&out, conn));
        }
        // A client the primary reports down is refused.
        s.announce(vec![client_info(c2, NodeState::Down)]);
        let out =
            s.h.incoming(ConnId(5000), identify(NodeType::Client, Some(c2), "c"));
        assert_eq!(
            error_code(&sent(&out, ConnId(5000))),
            Some(ErrorCode::NotReady)
        );
    }

    #[test]
    fn a_commit_and_reads_through_the_storage() {
        let mut s = Setup::new("serve-commit", None, &[Some(CellState::UpToDate)]);
        commit(&mut s, 100, 1, 0, 110);
        // Bad stores: wrong checksum, unknown compression, data with a zero checksum.
        let mut bad = store(200, 1, 110, b"v");
        if let Packet::AskStoreObject { checksum, .. } = &mut bad {
            checksum[0] ^= 1;
        }
        assert_eq!(error_code(&s.ask(bad)), Some(ErrorCode::ProtocolError));
        let mut bad = store(200, 1, 110, b"v");
        if let Packet::AskStoreObject { compression, .. } = &mut bad {
            *compression = 2;
        }
        assert_eq!(error_code(&s.ask(bad)), Some(ErrorCode::ProtocolError));
        // A stale store conflicts with the current serial.
        assert_eq!(s.ask(store(200, 1, 0, b"w")), stored(Some(110)));
        assert_eq!(s.ask(store(200, 1, 110, b"w")), stored(None));
        assert_eq!(
            s.ask(Packet::AskVoteTransaction { ttid: Tid(200) }),
            vec![Packet::AnswerVoteTransaction]
        );
        assert_eq!(
            s.master_says(Packet::AskLockInformation {
                ttid: Tid(200),
                tid: Tid(210)
            }),
            vec![Packet::AnswerInformationLocked { ttid: Tid(200) }]
        );
        // The latest revision waits for the unlock, and so does an older snapshot (its next
        // serial, 210, is not final here until the unlock).
        let latest = Packet::AskObject {
            oid: Oid(1),
            at: None,
            before: None,
        };
        assert!(s.ask(latest).is_empty());
        let old = s.ask(Packet::AskObject {
            oid: Oid(1),
            at: None,
            before: Some(Tid(210)),
        });
        assert!(old.is_empty(), "{old:?}");
        let out = s.master_says_id(9, Packet::NotifyUnlockInformation { ttid: Tid(200) });
        let answered = sent(&out, CLIENT);
        assert!(
            matches!(&answered[..], [
                Packet::AnswerObject { serial: Tid(210), data: Some(d), .. },
                Packet::AnswerObject { serial: Tid(110), next_serial: Some(Tid(210)), .. },
            ] if d.0 == b"w"),
            "{answered:?}"
        );
        // The final TID is known where the metadata is (100's, not 200's).
        for (ttid, tid) in [(100, Some(Tid(110))), (200, None)] {
            assert_eq!(
                s.ask(Packet::AskFinalTID { ttid: Tid(ttid) }),
                vec![Packet::AnswerFinalTID { tid }]
            );
        }
        // A locked transaction is not aborted by its client.
        assert_eq!(s.ask(store(300, 2, 0, b"x")), stored(None));
        s.ask(meta(300, &[2]));
        s.master_says(Packet::AskLockInformation {
            ttid: Tid(300),
            tid: Tid(310),
        });
        s.ask(Packet::AbortTransaction {
            ttid: Tid(300),
            nids: vec![],
        });
        assert_eq!(
            s.db().locked_transactions().unwrap().get(&Tid(300)),
            Some(&Some(Tid(310)))
        );
        s.h.actor.tm.check_invariants().unwrap();
    }

    #[test]
    fn cells_decide_locking_lockless_or_ignored() {
        use CellState::*;
        // Partitions: 0 ours readable, 1 ours out of date, 2 not ours.
        let mut s = Setup::new(
            "serve-cells",
            None,
            &[Some(UpToDate), Some(OutOfDate), None],
        );
        commit(&mut s, 99, 0, 0, 100);
        assert_eq!(s.ask(store(200, 1, 5, b"a")), stored(Some(0)));
        assert_eq!(s.h.actor.tm.write_locker(Oid(1)), None);
        assert_eq!(s.ask(store(200, 2, 5, b"a")), stored(Some(0)));
        assert_eq!(
            s.ask(Packet::AskCheckCurrentSerial {
                ttid: Tid(200),
                oid: Oid(4),
                serial: Tid(5)
            }),
            vec![Packet::AnswerCheckCurrentSerial {
                conflict: Some(Tid::ZERO)
            }]
        );
        for oid in [1, 2] {
            let got = s.ask(Packet::AskObject {
                oid: Oid(oid),
                at: None,
                before: None,
            });
            assert_eq!(error_code(&got), Some(ErrorCode::NonReadableCell));
            // Nor may it say a transaction there is unknown: it may not have its metadata.
            let got = s.ask(Packet::AskFinalTID {
                ttid: Tid(300 + oid),
            });
            assert_eq!(error_code(&got), Some(ErrorCode::NonReadableCell));
        }
        assert_eq!(
            s.ask(Packet::AskFinalTID { ttid: Tid(99) }),
            vec![Packet::AnswerFinalTID {
                tid: Some(Tid(100))
            }]
        );
        // The metadata of a transaction whose partition is not ours does not belong here.
        assert_eq!(
            error_code(&s.ask(meta(302, &[]))),
            Some(ErrorCode::ProtocolError)
        );
    }

    #[test]
    fn a_departed_client_loses_its_transactions() {
        let mut s = Setup::new("serve-departed", None, &[Some(CellState::UpToDate)]);
        assert_eq!(s.ask(store(10, 1, 0, b"a")), stored(None));
        assert_eq!(s.ask(store(20, 2, 0, b"b")), stored(None));
        s.ask(Packet::AskVoteTransaction { ttid: Tid(20) });
        let out = s.h.handle(Event::Closed {
            conn: CLIENT,
            reason: CloseReason::PeerClosed,
        });
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(s.h.actor.tm.len(), 1);
        assert!(s.h.actor.tm.is_voted(Tid(20)));
        assert!(s.db().locked_transactions().unwrap().contains_key(&Tid(20)));
        // Reported gone: the voted one waits for the primary's word (the report may be
        // about an earlier session of the same client id).
        s.announce(vec![client_info(C1(), NodeState::Down)]);
        assert_eq!(s.h.actor.tm.len(), 1);
        let master = s.master;
        s.h.handle(Event::Received {
            conn: master,
            msg: Message {
                id: 2,
                packet: Packet::AbortTransaction {
                    ttid: Tid(20),
                    nids: vec![],
                },
            },
        });
        assert_eq!(s.h.actor.tm.len(), 0);
        assert!(s.db().locked_transactions().unwrap().is_empty());
    }

    #[test]
    fn losing_operation_forgets_unvoted_transactions_and_clients() {
        let mut s = Setup::new("serve-stop", None, &[Some(CellState::UpToDate)]);
        assert_eq!(s.ask(store(10, 1, 0, b"a")), stored(None));
        assert_eq!(s.ask(store(20, 2, 0, b"b")), stored(None));
        s.ask(Packet::AskVoteTransaction { ttid: Tid(20) });
        let master = s.master;
        let out = s.h.handle(Event::Received {
            conn: master,
            msg: Message {
                id: 1,
                packet: Packet::StopOperation,
            },
        });
        assert!(closed(&out, CLIENT));
        assert_eq!(s.h.actor.tm.len(), 1);
        assert!(s.db().locked_transactions().unwrap().contains_key(&Tid(20)));
    }

    #[test]
    fn mutant_conflict_checks_are_caught() {
        for (mutant, conflict) in [
            (None, Some(Tid(100))),
            (Some("conflict-check-skipped"), None),
            (Some("readcurrent-unchecked"), Some(Tid(100))),
        ] {
            let name = format!("serve-mutant-conflict-{}", mutant.unwrap_or("none"));
            let mut s = Setup::new(&name, mutant, &[Some(CellState::UpToDate)]);
            commit(&mut s, 99, 1, 0, 100);
            let got = s.ask(store(200, 1, 0, b"b"));
            assert_eq!(
                got,
                vec![Packet::AnswerStoreObject { conflict }],
                "{mutant:?}"
            );
            let got = s.ask(Packet::AskCheckCurrentSerial {
                ttid: Tid(300),
                oid: Oid(1),
                serial: Tid(50),
            });
            let conflict = if mutant == Some("readcurrent-unchecked") {
                None
            } else {
                Some(Tid(100))
            };
            // (Under conflict-check-skipped, 200 holds the lock: the check waits.)
            if mutant != Some("conflict-check-skipped") {
                assert_eq!(got, vec![Packet::AnswerCheckCurrentSerial { conflict }]);
            }
        }
    }

    #[test]
    fn mutant_unlock_before_vote_durable_is_caught() {
        for mutant in [None, Some("unlock-before-vote-durable")] {
            let name = format!("serve-mutant-vote-{}", mutant.unwrap_or("none"));
            let mut s = Setup::new(&name, mutant, &[Some(CellState::UpToDate)]);
            assert_eq!(s.ask(store(10, 1, 0, b"a")), stored(None));
            assert_eq!(s.ask(meta(10, &[1])), vec![Packet::AnswerStoreTransaction]);
            let on_disk = s.db().locked_transactions().unwrap().contains_key(&Tid(10));
            assert_eq!(on_disk, mutant.is_none());
        }
    }

    #[test]
    fn mutant_verification_readcurrent_is_caught() {
        for mutant in [None, Some("verification-readcurrent")] {
            let name = format!("serve-mutant-verif-{}", mutant.unwrap_or("none"));
            let mut s = Setup::new(&name, mutant, &[Some(CellState::UpToDate)]);
            // Only a readCurrent check and the metadata here.
            let got = s.ask(Packet::AskCheckCurrentSerial {
                ttid: Tid(10),
                oid: Oid(1),
                serial: Tid::ZERO,
            });
            assert_eq!(
                got,
                vec![Packet::AnswerCheckCurrentSerial { conflict: None }]
            );
            s.ask(meta(10, &[1]));
            s.master_says(Packet::AskLockInformation {
                ttid: Tid(10),
                tid: Tid(12),
            });
            let got = s.master_says(Packet::AskLockedTransactions);
            let listed = match &got[..] {
                [Packet::AnswerLockedTransactions { transactions }] => {
                    transactions.contains(&(Tid(10), Some(Tid(12))))
                }
                _ => panic!("{got:?}"),
            };
            assert_eq!(listed, mutant.is_none());
            assert!(matches!(
                s.db().load(Oid(1), None, None).unwrap(),
                Load::DoesNotExist
            ));
        }
    }
}

#[cfg(test)]
mod hostile_client_tests {
    use super::serving_tests::Setup;
    use super::*;
    use crate::actors::{ConnId, Event};
    use crate::proto::{CellState, Data, Oid, Tid};
    use proptest::prelude::*;

    /// What a client or the primary may send about a few transactions and objects:
    /// well-formed or not, in any order.
    fn action() -> impl Strategy<Value = (bool, Packet)> {
        let ttid = (1u64..6).prop_map(Tid);
        let oid = (0u64..4).prop_map(Oid);
        let serial = prop_oneof![Just(Tid::ZERO), (1u64..8).prop_map(|t| Tid(t * 10))];
        let bytes = prop_oneof![Just(b"a".to_vec()), Just(b"bb".to_vec())];
        let client = prop_oneof![
            (
                oid.clone(),
                serial.clone(),
                ttid.clone(),
                bytes,
                any::<bool>()
            )
                .prop_map(|(oid, serial, ttid, b, good)| {
                    use sha1::Digest;
                    let mut checksum: [u8; 20] = sha1::Sha1::digest(&b).into();
                    if !good {
                        checksum[3] ^= 1;
                    }
                    Packet::AskStoreObject {
                        oid,
                        serial,
                        compression: 0,
                        checksum,
                        data: Some(Data(b)),
                        data_serial: None,
                        ttid,
                    }
                }),
            (ttid.clone(), oid.clone(), serial.clone()).prop_map(|(ttid, oid, serial)| {
                Packet::AskCheckCurrentSerial { ttid, oid, serial }
            }),
            (ttid.clone(), oid.clone())
                .prop_map(|(ttid, oid)| Packet::AskRelockObject { ttid, oid }),
            (ttid.clone(), proptest::collection::vec(oid.clone(), 0..3)).prop_map(
                |(ttid, oids)| {
                    Packet::AskStoreTransaction {
                        ttid,
                        user: Data::default(),
                        description: Data::default(),
                        extension: Data::default(),
                        oids,
                    }
                }
            ),
            ttid.clone()
                .prop_map(|ttid| Packet::AskVoteTransaction { ttid }),
            ttid.clone()
                .prop_map(|ttid| Packet::AbortTransaction { ttid, nids: vec![] }),
            (
                oid.clone(),
                proptest::option::of(serial.clone()),
                proptest::option::of(serial.clone())
            )
                .prop_map(|(oid, at, before)| Packet::AskObject { oid, at, before }),
            ttid.clone().prop_map(|ttid| Packet::AskFinalTID { ttid }),
            serial
                .clone()
                .prop_map(|tid| Packet::AskTransactionInformation { tid }),
            (
                serial.clone(),
                serial.clone(),
                proptest::collection::vec(oid.clone(), 0..3)
            )
                .prop_map(|(ltid, undone_tid, oids)| Packet::AskObjectUndoSerial {
                    ttid: Tid(1),
                    ltid,
                    undone_tid,
                    oids,
                }),
            (oid.clone(), 0u64..3, 0u64..4)
                .prop_map(|(oid, first, last)| Packet::AskObjectHistory { oid, first, last }),
            (0u64..3, 0u64..4, proptest::option::of(0u32..4)).prop_map(
                |(first, last, partition)| Packet::AskTIDs {
                    first,
                    last,
                    partition
                }
            ),
            (serial.clone(), serial.clone(), 0u32..4, 0u32..4).prop_map(
                |(min_tid, max_tid, length, partition)| Packet::AskTIDsFrom {
                    min_tid,
                    max_tid,
                    length,
                    partition,
                }
            ),
        ];
        let master = prop_oneof![
            (ttid.clone(), 1u64..100).prop_map(|(ttid, t)| Packet::AskLockInformation {
                ttid,
                tid: Tid(100 + t)
            }),
            ttid.clone()
                .prop_map(|ttid| Packet::NotifyUnlockInformation { ttid }),
            ttid.prop_map(|ttid| Packet::AbortTransaction { ttid, nids: vec![] }),
            (1u64..200).prop_map(|t| Packet::AskPack { tid: Tid(t) }),
        ];
        prop_oneof![
            4 => client.prop_map(|p| (false, p)),
            1 => master.prop_map(|p| (true, p)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            cases: 64,
            ..Default::default()
        })]

        /// A client (and a primary) sending any sequence of transaction requests: the
        /// storage never panics or stops, its locks and queues stay consistent, and a
        /// disconnect leaves only voted transactions behind.
        #[test]
        fn the_storage_survives_any_client_sequence(
            actions in proptest::collection::vec(action(), 1..40),
        ) {
            static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = format!("storage-hostile-client-{n}");
            let mut s = Setup::new(&name, None, &[Some(CellState::UpToDate), Some(CellState::OutOfDate), None]);
            for (from_master, packet) in actions {
                if from_master {
                    s.master_says(packet);
                } else {
                    s.ask(packet);
                }
                prop_assert!(!s.h.actor.failed);
                s.h.actor.check_invariants().map_err(TestCaseError::fail)?;
            }
            s.h.handle(Event::Closed { conn: ConnId(1000), reason: CloseReason::PeerClosed });
            s.h.actor.check_invariants().map_err(TestCaseError::fail)?;
            prop_assert_eq!(s.h.actor.tm.waiting(), 0);
            prop_assert_eq!(s.h.actor.waiting_reads(), 0);
            prop_assert_eq!(s.h.actor.tm.unvoted(), 0);
            prop_assert!(s.h.actor.tm.clients().len() <= 1);
        }
    }
}
