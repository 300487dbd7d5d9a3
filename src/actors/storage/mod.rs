//! The storage role: finds the primary master and identifies; answers recovery and
//! verification (its partition table, last ids, voted and locked transactions); applies
//! truncations and validations; persists every partition-table change it is sent; starts
//! and stops operation when told. Told DOWN it stops; told UNKNOWN (dropped) it erases its
//! database and stops. While operational it serves clients the primary announced
//! (`client.rs`: stores, checks, votes, loads), with the locks of `transactions`, and takes
//! the primary's lock / unlock / abort of transactions.
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
pub mod transactions;

use std::time::Duration;

use self::transactions::{Mutants, Transactions};
use super::core::{Follower, Node};
use super::link::Links;
use super::master_link::{LinkEvent, MasterLink};
use super::requests::Failure;
use super::{CloseReason, ConnId, Ctx, Ticker};
use crate::db::{Backend, Cell, DbError};
use crate::proto::{
    Address, ClusterState, ErrorCode, IdentificationExtra, Message, Nid, NodeState, NodeType,
    Packet,
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
    pub fn new(cfg: StorageConfig, db: Box<dyn Backend>) -> Storage {
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
                self.answer(cx, conn, id, answer);
            }
            Packet::NotifyUnlockInformation { ttid } => {
                let mut out = Vec::new();
                let r = self.tm.unlock(self.db.as_mut(), &mut out, ttid);
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
        };
        match self.links.get(conn) {
            Some(Peer::Master) => {
                self.on_master_message(cx, conn, msg, asked.is_some());
                self.after_master_message(cx);
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

    fn on_shutdown(&mut self, cx: &mut Ctx) {
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
    /// Internal consistency for the simulator: our table matches the database's.
    pub fn check_invariants(&self) -> Result<(), String> {
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
        Harness::new(Storage::new(cfg, Box::new(db)))
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
