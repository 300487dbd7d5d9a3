//! The primary's transaction manager (neo-spec 6.1 to 6.11, 6.16): client sessions, TTID
//! and final TID allocation, OID allocation, the commit queue, lock and unlock with the
//! storages, invalidations, aborts, and the outcome of recent commits for a client that
//! lost the answer to its finish.
//!
//! TIDs: one counter, `allocated`, is the greatest TID this primary handed out or knows
//! committed; every TTID and final TID is above it, so they strictly increase whatever the
//! clock does. After a failover it starts from verification's last TID, which is above every
//! TID the storages know. Commits complete in the order of their final TIDs: a transaction
//! every storage locked waits for those queued before it.
//!
//! Reservations: an id is handed out only once every running storage persisted a
//! reservation at or above it (`AskReserveIDs`), and verification reads the reservations
//! back (a new primary starts above them), so that neither an OID nor a TTID is handed out
//! twice across a failover, whatever the clocks do. OIDs are reserved in blocks of
//! `OID_BLOCK` ahead of demand, TIDs as a lease of `TID_LEASE` ahead of the clock, so that
//! most AskNewOIDs and begins are answered at once; the others wait for the next
//! reservation. Every running storage suffices: a future primary starts only with a
//! readable cell of every partition on the storages it reads at verification, and while
//! RUNNING every storage holding a readable cell is running (a lost one gets its cells
//! outdated, or the cluster goes back to recovery before handing anything out), so one of
//! them acknowledged every reservation; a storage lost while we wait is not waited for, as
//! for locks. A storage that gets readable cells later (replication, not yet built) must
//! have acknowledged the reservation first: a storage that becomes ready gets it at once.
//! Final TIDs need none: one is seen by a client only once committed, and committed TIDs
//! are the storages' last TID.
//!
//! Clients exist only while the cluster is RUNNING: when it leaves RUNNING their connections
//! are closed and the transactions dropped; verification then commits what was locked
//! anywhere and drops the rest, and clients learn the outcome with `AskFinalTID`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tracing::{debug, error, info, warn};

use super::cluster::Asked;
use super::{Identification, Master, Role};
use crate::actors::{ConnId, Ctx, Observation};
use crate::db::partition_of;
use crate::proto::{
    ClusterState, ErrorCode, Message, Nid, NodeInfo, NodeState, NodeType, Oid, Packet, Tid,
};

/// Transactions a client may have in progress (begun or waiting to begin).
pub const MAX_TRANSACTIONS_PER_CLIENT: usize = 1000;
/// The most OIDs one AskNewOIDs may ask for.
pub const MAX_NEW_OIDS: u32 = 1000;
/// The longest oid list a finish may carry (NEO's limit is 2^21 per transaction on disk).
pub const MAX_FINISH_OIDS: usize = 1 << 20;
/// Outcomes of recent commits kept for AskFinalTID.
pub const RECENT_OUTCOMES: usize = 100_000;
/// AskFinalTID requests one transaction may have waiting.
const MAX_FINAL_WAITERS: usize = 16;
/// AskNewOIDs that may wait for a reservation (from every client together).
const MAX_OID_WAITERS: usize = 10_000;
/// OIDs reserved ahead of the last one handed out (a failover skips at most this many).
pub const OID_BLOCK: u64 = 10_000;
/// How far ahead of the clock (or of the last TID handed out) TIDs are reserved.
pub const TID_LEASE: std::time::Duration = std::time::Duration::from_secs(10);

/// The id reservation (see the module's doc).
#[derive(Clone, Debug, Default)]
struct Reservation {
    /// What every running storage persisted: OIDs and TIDs up to these may be handed out.
    oid: Option<Oid>,
    tid: Option<Tid>,
    /// The reservation asked and not acknowledged yet: (oid, tid, storages to answer).
    asked: Option<(Option<Oid>, Option<Tid>, BTreeSet<Nid>)>,
    /// AskNewOIDs waiting for a reservation: (connection, message id, count).
    oid_waiters: VecDeque<(ConnId, u32, u32)>,
}

/// An identified client.
#[derive(Clone, Debug)]
struct Client {
    nid: Nid,
    read_only: bool,
    /// Transactions begun and not over, plus begins waiting.
    in_progress: usize,
}

/// What happens once a finish was requested.
#[derive(Clone, Debug)]
struct Finish {
    tid: Tid,
    /// The id of the finish request, while the client is there to answer.
    answer: Option<u32>,
    oids: Vec<Oid>,
    /// Involved storages that have not answered and are not lost.
    waiting: BTreeSet<Nid>,
    /// Storages that locked and are still connected (they get the unlock).
    locked_by: BTreeSet<Nid>,
    /// Whether any storage answered that it locked (then the transaction is committed).
    locked: bool,
    /// The invalidations were sent already (`invalidate-before-unlock` mutant).
    invalidated: bool,
    /// AskFinalTID requests to answer at unlock: (connection, message id).
    final_waiters: Vec<(ConnId, u32)>,
}

#[derive(Clone, Debug)]
struct Txn {
    client: ConnId,
    /// The readiness counter when it began: storages ready by then hold it in full.
    readiness: u64,
    /// Begun with the TID it must get (a restore).
    user_tid: bool,
    /// Storages the client reported failed at vote (accepted by FailedVote).
    failed: BTreeSet<Nid>,
    finish: Option<Finish>,
}

/// The primary's transaction manager (see the module's doc).
#[derive(Clone, Debug, Default)]
pub struct Transactions {
    /// The last committed TID.
    last_tid: Option<Tid>,
    /// The greatest OID handed out or known stored.
    last_oid: Option<Oid>,
    /// The greatest TID handed out (TTID or final) or known committed.
    allocated: Option<Tid>,
    clients: BTreeMap<ConnId, Client>,
    /// Transactions in progress, by TTID.
    txns: BTreeMap<Tid, Txn>,
    /// TTIDs whose finish was requested, in the order of their final TIDs.
    queue: VecDeque<Tid>,
    /// ttid -> final TID of recent commits.
    recent: BTreeMap<Tid, Tid>,
    /// Ready storages (between NotifyReady and their loss), each with its readiness number.
    ready: BTreeMap<Nid, u64>,
    readiness: u64,
    /// Begins delayed while a storage is starting or for a reservation: (connection,
    /// message id, user TID).
    delayed: VecDeque<(ConnId, u32, Option<Tid>)>,
    reserve: Reservation,
}

impl Transactions {
    pub fn last_tid(&self) -> Option<Tid> {
        self.last_tid
    }

    pub fn last_oid(&self) -> Option<Oid> {
        self.last_oid
    }

    /// Whether the client on `conn` identified as read-only (or is not one of ours).
    pub fn is_read_only(&self, conn: ConnId) -> bool {
        self.clients.get(&conn).is_none_or(|c| c.read_only)
    }

    /// Verification is over: the storages' last ids and reservations. The last TID is
    /// theirs (it goes back after a truncation); allocation stays above anything we or a
    /// previous primary may have handed out, and nothing is free until we reserve again.
    pub fn running(
        &mut self,
        last_tid: Option<Tid>,
        last_oid: Option<Oid>,
        reserved_oid: Option<Oid>,
        reserved_tid: Option<Tid>,
    ) {
        self.last_tid = last_tid;
        self.allocated = self.allocated.max(last_tid).max(reserved_tid);
        self.last_oid = self.last_oid.max(last_oid).max(reserved_oid);
        self.reserve = Reservation {
            oid: self.last_oid,
            tid: self.allocated,
            ..Default::default()
        };
    }

    /// The reservation every running storage acknowledged: (oid, tid).
    pub fn reserved(&self) -> (Option<Oid>, Option<Tid>) {
        (self.reserve.oid, self.reserve.tid)
    }

    /// The next TTID, if the reservation covers it: the clock's TID, above everything
    /// handed out (`user`: the TID a restore asked for, checked already).
    fn ttid_candidate(&self, now: Tid, user: Option<Tid>) -> Tid {
        user.unwrap_or(match self.allocated {
            Some(a) => now.later_than(a),
            None => now,
        })
    }

    /// What to reserve now, if anything: (oid, tid), each None if that kind needs nothing.
    /// Needed when a request waits, or ahead of demand when less than half a block (half
    /// a lease) is left. `oids`/`tids` false: that kind is not reserved (the mutants).
    fn reservation_wanted(&self, now: Tid, oids: bool, tids: bool) -> (Option<Oid>, Option<Tid>) {
        let r = &self.reserve;
        let mut oid = None;
        if oids {
            let waiting: u64 = r.oid_waiters.iter().map(|w| u64::from(w.2)).sum();
            let base = self.last_oid.map_or(0, |o| o.0).saturating_add(waiting);
            let left = r.oid.map_or(0, |o| o.0).saturating_sub(base);
            if waiting > 0 || left < OID_BLOCK / 2 {
                oid = Some(Oid(base.saturating_add(OID_BLOCK).min(i64::MAX as u64)));
            }
        }
        let mut tid = None;
        if tids {
            let mut base = self.ttid_candidate(now, None);
            for (_, _, user) in &self.delayed {
                base = base.max(user.unwrap_or(base));
            }
            // Begins also wait while a storage starts: only those above the reservation
            // wait for it.
            let waiting = !self.delayed.is_empty() && r.tid.is_none_or(|t| base > t);
            let half = Tid::from_wall(base.to_wall().saturating_add(TID_LEASE / 2));
            if waiting || r.tid.is_none_or(|t| t < half) {
                let lease = Tid::from_wall(base.to_wall().saturating_add(TID_LEASE));
                tid = Some(lease.later_than(base).min(Tid::MAX));
            }
        }
        (oid, tid)
    }

    /// Whether `nid` was ready when the transaction began.
    fn was_ready(&self, txn: &Txn, nid: Nid) -> bool {
        self.ready.get(&nid).is_some_and(|r| *r <= txn.readiness)
    }

    /// The next TTID: the clock's TID, above everything handed out.
    fn next_ttid(&mut self, now: Tid) -> Tid {
        let ttid = match self.allocated {
            Some(a) => now.later_than(a),
            None => now,
        };
        self.allocated = Some(ttid);
        ttid
    }

    /// The final TID of `ttid` (neo-spec 6.1): the clock's TID above everything handed out,
    /// moved up into the TTID's partition (`tid % np == ttid % np`), where storages filed
    /// the transaction's metadata at vote. The TTID itself if nothing was handed out after
    /// it and the clock is not past it.
    fn next_tid(&mut self, now: Tid, ttid: Tid, partitions: u32) -> Tid {
        if self.allocated == Some(ttid) && now <= ttid {
            return ttid;
        }
        let mut tid = match self.allocated {
            Some(a) => now.later_than(a),
            None => now,
        };
        let np = u64::from(partitions.max(1));
        let (want, have) = (ttid.0 % np, tid.0 % np);
        tid = Tid(tid.0.saturating_add((want + np - have) % np));
        self.allocated = self.allocated.max(Some(tid));
        tid
    }

    /// Record a commit's outcome, forgetting the oldest beyond `RECENT_OUTCOMES`.
    fn remember(&mut self, ttid: Tid, tid: Tid) {
        self.recent.insert(ttid, tid);
        while self.recent.len() > RECENT_OUTCOMES {
            self.recent.pop_first();
        }
    }

    /// Forget a transaction (over, aborted or dropped).
    fn drop_txn(&mut self, ttid: Tid) -> Option<Txn> {
        let txn = self.txns.remove(&ttid)?;
        self.queue.retain(|t| *t != ttid);
        if let Some(c) = self.clients.get_mut(&txn.client) {
            c.in_progress = c.in_progress.saturating_sub(1);
        }
        Some(txn)
    }

    /// Internal consistency (see `Master::check_invariants`).
    pub fn check(&self) -> Result<(), String> {
        for (ttid, txn) in &self.txns {
            if txn.finish.is_some() != self.queue.contains(ttid) {
                return Err(format!(
                    "transaction {ttid:?} finishing but not queued, or so"
                ));
            }
            if !self.clients.contains_key(&txn.client) && txn.finish.is_none() {
                return Err(format!("transaction {ttid:?} of a client that is gone"));
            }
        }
        if let Some((c, _, _)) =
            (self.reserve.oid_waiters.iter()).find(|w| !self.clients.contains_key(&w.0))
        {
            return Err(format!("AskNewOIDs waiting from {c:?}, not a client"));
        }
        if self.queue.len() > self.txns.len() {
            return Err("commit queue longer than the transactions".into());
        }
        for (conn, c) in &self.clients {
            let n = self.txns.values().filter(|t| t.client == *conn).count()
                + self.delayed.iter().filter(|(c, _, _)| c == conn).count();
            if n != c.in_progress || n > MAX_TRANSACTIONS_PER_CLIENT {
                return Err(format!(
                    "client {} counts {} transactions, has {n}",
                    c.nid, c.in_progress
                ));
            }
        }
        Ok(())
    }
}

impl Master {
    fn tm(&self) -> Option<&Transactions> {
        match &self.role {
            Role::Primary(p) => Some(&p.tm),
            _ => None,
        }
    }

    fn tm_mut(&mut self) -> Option<&mut Transactions> {
        match &mut self.role {
            Role::Primary(p) => Some(&mut p.tm),
            _ => None,
        }
    }

    /// A client identifies: accepted only while RUNNING.
    pub(super) fn identify_client(&mut self, cx: &mut Ctx, req: Identification) {
        if self.cluster_state() != Some(ClusterState::Running) {
            let why = "the cluster is not running";
            return self.refuse(cx, req.conn, req.id, ErrorCode::NotReady, why);
        }
        if let Some(n) = req.nid.filter(|n| n.node_type() != Some(NodeType::Client)) {
            let why = format!("{n} is not a client node id");
            return self.protocol_error(cx, req.conn, req.id, why);
        }
        // A client keeps its id across reconnections, unless a live connection uses it
        // (a previous connection not yet known dead, or another process): then a new one.
        let proposed = req.nid.filter(|n| self.conn_of(*n).is_none());
        let nid = self
            .nodes
            .allocate_nid(NodeType::Client, proposed, None, self.nid);
        info!(
            "{}: client {nid} identified{}",
            self.me(),
            if req.read_only { " (read-only)" } else { "" }
        );
        let info = NodeInfo {
            node_type: NodeType::Client,
            address: None,
            nid: Some(nid),
            state: NodeState::Running,
            id_timestamp: None,
        };
        self.welcome(cx, &req, info);
        self.send_partition_table(cx, req.conn);
        if let Some(tm) = self.tm_mut() {
            tm.clients.insert(
                req.conn,
                Client {
                    nid,
                    read_only: req.read_only,
                    in_progress: 0,
                },
            );
        }
    }

    /// A client's connection is gone (closed by it, by us, or silent).
    pub(super) fn client_lost(&mut self, cx: &mut Ctx, conn: ConnId, nid: Nid) {
        let abort_locked = cx.mutant("abort-after-lock");
        let Role::Primary(p) = &mut self.role else {
            return;
        };
        p.packs.client_lost(conn);
        let tm = &mut p.tm;
        tm.clients.remove(&conn);
        tm.delayed.retain(|(c, _, _)| *c != conn);
        tm.reserve.oid_waiters.retain(|(c, _, _)| *c != conn);
        for txn in tm.txns.values_mut() {
            if let Some(f) = &mut txn.finish {
                f.final_waiters.retain(|(c, _)| *c != conn);
            }
        }
        let mine: Vec<(Tid, bool)> = tm
            .txns
            .iter()
            .filter(|(_, t)| t.client == conn)
            .map(|(ttid, t)| (*ttid, t.finish.is_some()))
            .collect();
        let mut aborted = Vec::new();
        for (ttid, finishing) in mine {
            if finishing && !abort_locked {
                // It commits: nobody to answer.
                if let Some(f) = tm.txns.get_mut(&ttid).and_then(|t| t.finish.as_mut()) {
                    f.answer = None;
                }
            } else {
                // The master does not know which storages the client used: all of them.
                if let Some(f) = tm.drop_txn(ttid).and_then(|t| t.finish) {
                    for (c, id) in f.final_waiters {
                        self.links
                            .answer(cx, c, id, Packet::AnswerFinalTID { tid: None });
                    }
                }
                aborted.push(ttid);
            }
        }
        if !aborted.is_empty() {
            info!("{}: {nid} lost: aborting {aborted:?}", self.me());
            let storages = self.running_storage_conns(None);
            for ttid in aborted {
                for c in &storages {
                    self.links
                        .notify(cx, *c, Packet::AbortTransaction { ttid, nids: vec![] });
                }
            }
        }
        if let Some(mut info) = self.nodes.remove(nid) {
            info!("{}: client {nid} is gone", self.me());
            info.state = NodeState::Down;
            self.broadcast_nodes(cx, &[info], None);
        }
        self.try_commit(cx);
    }

    /// The cluster leaves RUNNING: clients are closed and transactions dropped (see the
    /// module's doc).
    pub(super) fn leave_running(&mut self, cx: &mut Ctx) {
        let Some(tm) = self.tm() else { return };
        let clients: Vec<(ConnId, Nid)> = tm.clients.iter().map(|(c, k)| (*c, k.nid)).collect();
        for (conn, nid) in clients {
            self.links.close(cx, conn);
            self.client_lost(cx, conn, nid);
        }
        self.forget_packs();
        let Some(tm) = self.tm_mut() else { return };
        tm.txns.clear();
        tm.queue.clear();
        tm.delayed.clear();
        tm.ready.clear();
        // Its answers will not come (the asks are forgotten); verification reads anew.
        tm.reserve.asked = None;
        tm.reserve.oid_waiters.clear();
    }

    /// Connections of the RUNNING storages, those in `among` if given.
    fn running_storage_conns(&self, among: Option<&BTreeSet<Nid>>) -> Vec<ConnId> {
        self.storages()
            .into_iter()
            .filter(|(_, n, s)| *s == NodeState::Running && among.is_none_or(|a| a.contains(n)))
            .map(|(c, _, _)| c)
            .collect()
    }

    /// A storage said it is ready (NotifyReady): it takes part in transactions begun from
    /// now on; begins waited for it.
    pub(super) fn storage_ready(&mut self, cx: &mut Ctx, nid: Nid) {
        let Some(tm) = self.tm_mut() else { return };
        tm.readiness += 1;
        let r = tm.readiness;
        tm.ready.insert(nid, r);
        // Not waited for (it holds no readable cell yet), but a storage must hold the
        // reservation before it gets readable cells (see the module's doc).
        let (oid, tid) = match &tm.reserve.asked {
            Some((o, t, _)) => (tm.reserve.oid.max(*o), tm.reserve.tid.max(*t)),
            None => (tm.reserve.oid, tm.reserve.tid),
        };
        if oid.is_some() || tid.is_some() {
            let packet = Packet::AskReserveIDs { oid, tid };
            self.ask_storage(cx, nid, packet, Asked::Reserve(oid, tid));
        }
        self.run_delayed_begins(cx);
    }

    /// Ask every running storage to persist the reservation wanted now, unless one is on
    /// its way (its acknowledgement looks again).
    pub(super) fn reserve_ids(&mut self, cx: &mut Ctx) {
        if self.cluster_state() != Some(ClusterState::Running) {
            return;
        }
        let now = Tid::from_wall(cx.now());
        let oids = !cx.mutant("oid-not-reserved");
        let tids = !cx.mutant("ttid-not-reserved");
        let running: BTreeSet<Nid> = self
            .storages()
            .into_iter()
            .filter(|(_, _, s)| *s == NodeState::Running)
            .map(|(_, n, _)| n)
            .collect();
        let Some(tm) = self.tm_mut() else { return };
        if tm.reserve.asked.is_some() {
            return;
        }
        let (oid, tid) = tm.reservation_wanted(now, oids, tids);
        if oid.is_none() && tid.is_none() {
            return;
        }
        debug!("reserving ids up to {oid:?} and {tid:?} on {running:?}");
        tm.reserve.asked = Some((oid, tid, running.clone()));
        for nid in &running {
            let packet = Packet::AskReserveIDs { oid, tid };
            self.ask_storage(cx, *nid, packet, Asked::Reserve(oid, tid));
        }
        if running.is_empty() {
            self.reserve_answered(cx, None);
        }
    }

    /// A storage answered a reservation with what it holds now (`Some`), or is not waited
    /// for any more (`None`, lost): once none is left to answer, the ids are ours to hand
    /// out.
    pub(super) fn reserve_answered(
        &mut self,
        cx: &mut Ctx,
        from: Option<(Nid, Option<Oid>, Option<Tid>)>,
    ) {
        let Some(tm) = self.tm_mut() else { return };
        let Some((oid, tid, waiting)) = &mut tm.reserve.asked else {
            return;
        };
        if let Some((nid, has_oid, has_tid)) = from {
            // An answer to an older ask (a storage made ready) counts if it covers this one.
            if has_oid >= *oid && has_tid >= *tid {
                waiting.remove(&nid);
            }
        }
        if !waiting.is_empty() {
            return;
        }
        let (oid, tid) = (*oid, *tid);
        tm.reserve.asked = None;
        tm.reserve.oid = tm.reserve.oid.max(oid);
        tm.reserve.tid = tm.reserve.tid.max(tid);
        for (conn, id, count) in std::mem::take(&mut tm.reserve.oid_waiters) {
            self.new_oids(cx, conn, id, count);
        }
        self.run_delayed_begins(cx);
        self.reserve_ids(cx);
    }

    /// A storage is lost: it is not waited for any more, and its cells' outdating made the
    /// commits it locked safe with the others.
    pub(super) fn storage_lost_by_tm(&mut self, cx: &mut Ctx, nid: Nid) {
        let Some(tm) = self.tm_mut() else { return };
        tm.ready.remove(&nid);
        for txn in tm.txns.values_mut() {
            if let Some(f) = &mut txn.finish {
                f.waiting.remove(&nid);
                f.locked_by.remove(&nid);
            }
        }
        if let Some((_, _, waiting)) = &mut tm.reserve.asked {
            waiting.remove(&nid);
            self.reserve_answered(cx, None);
        }
        self.try_commit(cx);
        self.run_delayed_begins(cx);
    }

    /// A storage locked `ttid`.
    pub(super) fn on_locked(&mut self, cx: &mut Ctx, nid: Nid, ttid: Tid) {
        let Some(tm) = self.tm_mut() else { return };
        let Some(f) = tm.txns.get_mut(&ttid).and_then(|t| t.finish.as_mut()) else {
            return;
        };
        if f.waiting.remove(&nid) {
            f.locked = true;
            f.locked_by.insert(nid);
        }
        self.try_commit(cx);
    }

    /// Complete the transactions at the head of the queue that every storage answered.
    fn try_commit(&mut self, cx: &mut Ctx) {
        // Clients whose commit's outcome is unknown: closed once the queue is done (closing
        // comes back here through `client_lost`).
        let mut unknown = Vec::new();
        self.commit_queue_head(cx, &mut unknown);
        for conn in unknown {
            let nid = self
                .tm()
                .and_then(|tm| tm.clients.get(&conn))
                .map(|c| c.nid);
            if let Some(nid) = nid {
                self.links.close(cx, conn);
                self.client_lost(cx, conn, nid);
            }
        }
    }

    fn commit_queue_head(&mut self, cx: &mut Ctx, unknown: &mut Vec<ConnId>) {
        let mutant = cx.mutant("tid-not-monotonic");
        loop {
            let me = self.me();
            let Role::Primary(p) = &mut self.role else {
                return;
            };
            let tm = &mut p.tm;
            let Some(&ttid) = tm.queue.front() else {
                return;
            };
            let done = tm.txns[&ttid]
                .finish
                .as_ref()
                .is_some_and(|f| f.waiting.is_empty());
            if !done {
                return;
            }
            let txn = tm.drop_txn(ttid).expect("queued");
            let f = txn.finish.expect("queued");
            if !f.locked {
                // Every storage asked to lock is lost, none said it locked: any of them may
                // have written the lock before it went, and verification commits what a
                // storage locked. The outcome is unknown here, not a failure: the client
                // loses its link and asks AskFinalTID (6.11), which storages answer.
                warn!("{me}: no storage left to commit {ttid:?}: outcome unknown");
                if f.answer.is_some() {
                    unknown.push(txn.client);
                }
                for (c, id) in f.final_waiters {
                    self.links.answer(
                        cx,
                        c,
                        id,
                        Packet::AnswerFinalTID {
                            tid: Some(Tid::MAX),
                        },
                    );
                }
                continue;
            }
            if tm.last_tid.is_some_and(|l| f.tid <= l) {
                error!(
                    "{me}: BUG: commit {:?} is not above the last committed {:?}",
                    f.tid, tm.last_tid
                );
                debug_assert!(mutant, "final TIDs must increase");
            }
            tm.last_tid = Some(f.tid);
            tm.remember(ttid, f.tid);
            let others: Vec<ConnId> = tm
                .clients
                .keys()
                .copied()
                .filter(|c| *c != txn.client)
                .collect();
            debug!("{me}: committed {ttid:?} as {:?}", f.tid);
            if let Some(id) = f.answer {
                let answer = Packet::AnswerTransactionFinished { ttid, tid: f.tid };
                self.links.answer(cx, txn.client, id, answer);
            }
            if !f.invalidated {
                for c in others {
                    let packet = Packet::InvalidateObjects {
                        tid: f.tid,
                        oids: f.oids.clone(),
                    };
                    self.links.notify(cx, c, packet);
                }
            }
            for nid in &f.locked_by {
                if let Some(c) = self.conn_of(*nid) {
                    self.links
                        .notify(cx, c, Packet::NotifyUnlockInformation { ttid });
                }
            }
            for (c, id) in f.final_waiters {
                self.links
                    .answer(cx, c, id, Packet::AnswerFinalTID { tid: Some(f.tid) });
            }
        }
    }

    /// Begins wait while a storage is starting (between StartOperation and NotifyReady),
    /// and for a reservation of their TTID: each is tried again once, in order.
    fn run_delayed_begins(&mut self, cx: &mut Ctx) {
        let Role::Primary(p) = &mut self.role else {
            return;
        };
        if !p.starting.is_empty() {
            return;
        }
        for (conn, id, tid) in std::mem::take(&mut p.tm.delayed) {
            let Role::Primary(p) = &mut self.role else {
                return;
            };
            if let Some(c) = p.tm.clients.get_mut(&conn) {
                c.in_progress -= 1;
                self.begin(cx, conn, id, tid);
            }
        }
    }

    /// Answer an impossible request from a client with PROTOCOL_ERROR (the connection stays).
    fn client_error(&mut self, cx: &mut Ctx, conn: ConnId, id: u32, why: String) {
        warn!("{}: refused a client request: {why}", self.me());
        self.links
            .answer(cx, conn, id, Packet::error(ErrorCode::ProtocolError, why));
    }

    /// A message from an identified client.
    pub(super) fn on_client_message(&mut self, cx: &mut Ctx, conn: ConnId, nid: Nid, msg: Message) {
        let Some(tm) = self.tm() else { return };
        let id = msg.id;
        match msg.packet {
            Packet::AskLastTransaction => {
                let tid = tm.last_tid;
                self.links
                    .answer(cx, conn, id, Packet::AnswerLastTransaction { tid });
            }
            Packet::AskNewOIDs { count } => self.new_oids(cx, conn, id, count),
            Packet::AskBeginTransaction { tid } => self.begin(cx, conn, id, tid),
            Packet::AskFinishTransaction {
                ttid,
                oids,
                deleted,
                checked,
            } => self.finish(cx, conn, id, ttid, oids, deleted, checked),
            Packet::FailedVote { ttid, nids } => self.failed_vote(cx, conn, id, ttid, nids),
            Packet::AbortTransaction { ttid, nids } => self.abort(cx, conn, ttid, nids),
            Packet::AskFinalTID { ttid } => self.final_tid(cx, conn, id, ttid),
            Packet::AskPack { tid } => self.pack_request(cx, conn, id, tid),
            other if other.kind() == crate::proto::Kind::Answer => {
                debug!("{}: ignoring {} from {nid}", self.me(), other.name());
            }
            other => {
                let why = format!("unexpected {} from client {nid}", other.name());
                self.protocol_error(cx, conn, id, why);
                self.client_lost(cx, conn, nid);
            }
        }
    }

    fn new_oids(&mut self, cx: &mut Ctx, conn: ConnId, id: u32, count: u32) {
        if count == 0 || count > MAX_NEW_OIDS {
            let why = format!("AskNewOIDs: {count} OIDs asked (1 to {MAX_NEW_OIDS})");
            return self.client_error(cx, conn, id, why);
        }
        let unreserved = cx.mutant("oid-not-reserved");
        let Some(tm) = self.tm_mut() else { return };
        // OID 0 is the root, which ZODB creates without asking for an OID.
        let first = tm.last_oid.map_or(Some(1), |o| o.0.checked_add(1));
        // OIDs are stored as signed 64-bit integers.
        let range = first.and_then(|f| Some((f, f.checked_add(u64::from(count) - 1)?)));
        let Some((first, last)) = range.filter(|(_, l)| *l <= i64::MAX as u64) else {
            let why = "no OID left";
            return self
                .links
                .answer(cx, conn, id, Packet::error(ErrorCode::NotReady, why));
        };
        let waiting = !tm.reserve.oid_waiters.is_empty();
        if !unreserved && (waiting || tm.reserve.oid.is_none_or(|r| last > r.0)) {
            if tm.reserve.oid_waiters.len() >= MAX_OID_WAITERS {
                let why = "too many AskNewOIDs waiting for a reservation";
                return self
                    .links
                    .answer(cx, conn, id, Packet::error(ErrorCode::NotReady, why));
            }
            tm.reserve.oid_waiters.push_back((conn, id, count));
            return self.reserve_ids(cx);
        }
        tm.last_oid = Some(Oid(last));
        cx.observe(Observation::HandedOut {
            oids: Some((Oid(first), Oid(last))),
            ttid: None,
        });
        let oids = (first..=last).map(Oid).collect();
        self.links
            .answer(cx, conn, id, Packet::AnswerNewOIDs { oids });
        self.reserve_ids(cx);
    }

    fn begin(&mut self, cx: &mut Ctx, conn: ConnId, id: u32, tid: Option<Tid>) {
        let now = Tid::from_wall(cx.now());
        let unreserved = cx.mutant("ttid-not-reserved");
        let Role::Primary(p) = &mut self.role else {
            return;
        };
        let tm = &mut p.tm;
        let Some(client) = tm.clients.get(&conn) else {
            return;
        };
        if client.read_only {
            let why = "a read-only client cannot begin a transaction";
            let answer = Packet::error(ErrorCode::ReadOnlyAccess, why);
            return self.links.answer(cx, conn, id, answer);
        }
        if client.in_progress >= MAX_TRANSACTIONS_PER_CLIENT {
            let why = format!("more than {MAX_TRANSACTIONS_PER_CLIENT} transactions in progress");
            return self.client_error(cx, conn, id, why);
        }
        if !p.starting.is_empty() {
            // NEO's DelayEvent: a storage that is starting may not be counted right.
            tm.delayed.push_back((conn, id, tid));
            if let Some(c) = tm.clients.get_mut(&conn) {
                c.in_progress += 1;
            }
            return;
        }
        let concurrent = "there can't be concurrent transactions when a TID is specified";
        match tid {
            Some(t) => {
                if !tm.txns.is_empty() {
                    return self.client_error(cx, conn, id, concurrent.into());
                }
                if tm.last_tid.is_some_and(|l| t <= l) || t > Tid::MAX {
                    let why = format!(
                        "TID {t:?} is not above the last committed {:?}",
                        tm.last_tid
                    );
                    return self.client_error(cx, conn, id, why);
                }
            }
            None if tm.txns.values().any(|t| t.user_tid) => {
                return self.client_error(cx, conn, id, concurrent.into());
            }
            None => {}
        }
        // Begins wait in order: none overtakes one waiting for the reservation.
        let candidate = tm.ttid_candidate(now, tid);
        if !unreserved && (!tm.delayed.is_empty() || tm.reserve.tid.is_none_or(|r| candidate > r)) {
            tm.delayed.push_back((conn, id, tid));
            if let Some(c) = tm.clients.get_mut(&conn) {
                c.in_progress += 1;
            }
            return self.reserve_ids(cx);
        }
        let ttid = match tid {
            Some(t) => {
                tm.allocated = tm.allocated.max(Some(t));
                t
            }
            None => {
                let ttid = tm.next_ttid(now);
                cx.observe(Observation::HandedOut {
                    oids: None,
                    ttid: Some(ttid),
                });
                ttid
            }
        };
        if let Some(c) = tm.clients.get_mut(&conn) {
            c.in_progress += 1;
        }
        let readiness = tm.readiness;
        tm.txns.insert(
            ttid,
            Txn {
                client: conn,
                readiness,
                user_tid: tid.is_some(),
                failed: BTreeSet::new(),
                finish: None,
            },
        );
        self.links
            .answer(cx, conn, id, Packet::AnswerBeginTransaction { ttid });
        self.reserve_ids(cx);
    }

    /// The transaction `ttid` of the client on `conn` that has not asked to finish, or why
    /// not.
    fn own_txn(&self, conn: ConnId, ttid: Tid) -> Result<&Txn, String> {
        let tm = self.tm().ok_or("not the primary")?;
        match tm.txns.get(&ttid) {
            None => Err(format!("unknown transaction {ttid:?}")),
            Some(t) if t.client != conn => Err(format!("{ttid:?} is another client's")),
            Some(t) if t.finish.is_some() => Err(format!("{ttid:?} is finishing already")),
            Some(t) => Ok(t),
        }
    }

    /// Whether the table stays operational without `excluded` storages.
    fn operational_without(&self, excluded: &[Nid]) -> bool {
        let Role::Primary(p) = &self.role else {
            return false;
        };
        p.pt.operational(
            |n| {
                self.nodes
                    .get(n)
                    .is_some_and(|i| i.state == NodeState::Running)
            },
            excluded,
        )
    }

    fn failed_vote(&mut self, cx: &mut Ctx, conn: ConnId, id: u32, ttid: Tid, nids: Vec<Nid>) {
        let txn = match self.own_txn(conn, ttid) {
            Ok(t) => t.clone(),
            Err(why) => return self.client_error(cx, conn, id, format!("FailedVote: {why}")),
        };
        let Some(tm) = self.tm() else { return };
        // Only storages ready when it began were expected to hold it in full.
        let mut failed = txn.failed.clone();
        failed.extend(nids.iter().copied().filter(|n| tm.was_ready(&txn, *n)));
        let excluded: Vec<Nid> = failed.iter().copied().collect();
        if !self.operational_without(&excluded) {
            let why = format!("the table would not be operational without {excluded:?}");
            let answer = Packet::error(ErrorCode::IncompleteTransaction, why);
            return self.links.answer(cx, conn, id, answer);
        }
        if let Some(t) = self.tm_mut().and_then(|tm| tm.txns.get_mut(&ttid)) {
            t.failed = failed;
        }
        self.links
            .answer(cx, conn, id, Packet::ack("go on without them"));
    }

    fn abort(&mut self, cx: &mut Ctx, conn: ConnId, ttid: Tid, nids: Vec<Nid>) {
        if let Err(why) = self.own_txn(conn, ttid) {
            // A notification: nothing to answer. An abort after a reconnection names a
            // transaction we already dropped.
            return debug!("{}: ignoring an abort: {why}", self.me());
        }
        if let Some(tm) = self.tm_mut() {
            tm.drop_txn(ttid);
        }
        let among: BTreeSet<Nid> = nids.into_iter().collect();
        for c in self.running_storage_conns(Some(&among)) {
            self.links
                .notify(cx, c, Packet::AbortTransaction { ttid, nids: vec![] });
        }
    }

    fn final_tid(&mut self, cx: &mut Ctx, conn: ConnId, id: u32, ttid: Tid) {
        let Some(tm) = self.tm_mut() else { return };
        let answer = if let Some(tid) = tm.recent.get(&ttid) {
            Some(*tid)
        } else if let Some(txn) = tm.txns.get_mut(&ttid) {
            match &mut txn.finish {
                Some(f) if f.final_waiters.len() < MAX_FINAL_WAITERS => {
                    f.final_waiters.push((conn, id));
                    return;
                }
                _ => {
                    let why = format!("AskFinalTID: {ttid:?} is not finishing");
                    return self.client_error(cx, conn, id, why);
                }
            }
        } else if tm.allocated.is_none_or(|a| ttid > a) {
            // Never handed out by us, nor above what the storages committed.
            None
        } else {
            // Committed or aborted before our time: a storage knows.
            Some(Tid::MAX)
        };
        self.links
            .answer(cx, conn, id, Packet::AnswerFinalTID { tid: answer });
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        cx: &mut Ctx,
        conn: ConnId,
        id: u32,
        ttid: Tid,
        oids: Vec<Oid>,
        deleted: Vec<u32>,
        checked: Vec<u32>,
    ) {
        let Some(np) = self.primary_table().map(|pt| pt.partitions()) else {
            return;
        };
        let txn = match self.own_txn(conn, ttid) {
            Ok(t) => t.clone(),
            Err(why) => return self.client_error(cx, conn, id, format!("finish: {why}")),
        };
        if oids.len() > MAX_FINISH_OIDS
            || deleted.len() > MAX_FINISH_OIDS
            || checked.len() > MAX_FINISH_OIDS
        {
            let why = format!("finish: more than {MAX_FINISH_OIDS} objects");
            return self.client_error(cx, conn, id, why);
        }
        if let Some(p) = deleted.iter().chain(&checked).find(|p| **p >= np) {
            let why = format!("finish: no partition {p} (there are {np})");
            return self.client_error(cx, conn, id, why);
        }
        // OIDs are stored as signed 64-bit integers. Not checked against what was handed
        // out: a restore (copying another database) stores OIDs this master never gave.
        if let Some(o) = oids.iter().find(|o| o.0 > i64::MAX as u64) {
            let why = format!("finish: {o} is above the largest OID");
            return self.client_error(cx, conn, id, why);
        }
        // The storages that failed at vote are dropped first: their cells get outdated.
        let failed: Vec<Nid> = txn.failed.iter().copied().collect();
        if !self.operational_without(&failed) {
            let why = format!("the table would not be operational without {failed:?}");
            let answer = Packet::error(ErrorCode::IncompleteTransaction, why);
            self.links.answer(cx, conn, id, answer);
            return self.abort(
                cx,
                conn,
                ttid,
                self.storages().iter().map(|s| s.1).collect(),
            );
        }
        for nid in &failed {
            if let Some(c) = self.conn_of(*nid) {
                info!(
                    "{}: {nid} failed the vote of {ttid:?}: dropping it",
                    self.me()
                );
                self.links.close(cx, c);
                self.storage_lost(cx, *nid);
            }
        }
        // Losing them cannot have stopped the cluster (checked above), but be sure.
        if self.cluster_state() != Some(ClusterState::Running) || self.own_txn(conn, ttid).is_err()
        {
            return;
        }
        let wall = cx.now();
        let mutant_tid = cx.mutant("tid-not-monotonic");
        let early_invalidation = cx.mutant("invalidate-before-unlock");
        let mut partitions: BTreeSet<u32> = oids.iter().map(|o| partition_of(o.0, np)).collect();
        partitions.extend(deleted.iter().chain(&checked).copied());
        partitions.insert(partition_of(ttid.0, np));
        let Role::Primary(p) = &self.role else { return };
        let involved: BTreeSet<Nid> = self
            .storages()
            .into_iter()
            .filter(|(_, n, s)| {
                *s == NodeState::Running
                    && p.tm.was_ready(&txn, *n)
                    && partitions.iter().any(|o| p.pt.cell(*o, *n).is_some())
            })
            .map(|(_, n, _)| n)
            .collect();
        let me = self.me();
        let Role::Primary(p) = &mut self.role else {
            return;
        };
        let tm = &mut p.tm;
        let tid = if txn.user_tid {
            ttid
        } else if mutant_tid {
            let t = Tid::from_wall(wall);
            tm.allocated = tm.allocated.max(Some(t));
            t
        } else {
            tm.next_tid(Tid::from_wall(wall), ttid, np)
        };
        if let Some(max) = oids.iter().max() {
            tm.last_oid = tm.last_oid.max(Some(*max));
        }
        info!("{me}: finishing {ttid:?} as {tid:?} with {involved:?}");
        let others: Vec<ConnId> = tm.clients.keys().copied().filter(|c| *c != conn).collect();
        if early_invalidation {
            for c in &others {
                let packet = Packet::InvalidateObjects {
                    tid,
                    oids: oids.clone(),
                };
                self.links.notify(cx, *c, packet);
            }
        }
        let Some(tm) = self.tm_mut() else { return };
        let t = tm.txns.get_mut(&ttid).expect("checked");
        t.finish = Some(Finish {
            tid,
            answer: Some(id),
            oids,
            waiting: involved.clone(),
            locked_by: BTreeSet::new(),
            locked: false,
            invalidated: early_invalidation,
            final_waiters: Vec::new(),
        });
        tm.queue.push_back(ttid);
        for nid in involved {
            if let Some(c) = self.conn_of(nid) {
                let packet = Packet::AskLockInformation { ttid, tid };
                self.links
                    .ask(cx, c, packet, super::Asked::Storage(Asked::Lock(ttid)));
            }
        }
        self.try_commit(cx);
    }

    /// The identified clients (for tests and the simulator's checks).
    pub fn clients(&self) -> Vec<Nid> {
        self.tm()
            .map(|tm| tm.clients.values().map(|c| c.nid).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::actors::testing::{closed, sent, Harness};
    use crate::actors::{CloseReason, Effect, Event};
    use crate::proto::{Address, IdentificationExtra, WallTime};

    const NP: u32 = 4;
    pub(in crate::actors::master) const S1: ConnId = ConnId(100);
    pub(in crate::actors::master) const S2: ConnId = ConnId(101);
    pub(in crate::actors::master) const C1: ConnId = ConnId(200);
    pub(in crate::actors::master) const C2: ConnId = ConnId(201);

    pub(in crate::actors::master) fn config(replicas: u32) -> super::super::MasterConfig {
        super::super::MasterConfig {
            cluster: "prod".into(),
            bind: Address::new("10.0.0.1", 1),
            masters: vec![Address::new("10.0.0.1", 1)],
            autostart: Some(2),
            replicas,
            partitions: NP,
            nid: None,
        }
    }

    fn storage(port: u16) -> Packet {
        Packet::RequestIdentification {
            node_type: NodeType::Storage,
            nid: None,
            address: Some(Address::new("10.0.1.1", port)),
            cluster_name: "prod".into(),
            id_timestamp: None,
            extra: IdentificationExtra::default(),
        }
    }

    pub(in crate::actors::master) fn client(read_only: bool) -> Packet {
        Packet::RequestIdentification {
            node_type: NodeType::Client,
            nid: None,
            address: None,
            cluster_name: "prod".into(),
            id_timestamp: None,
            extra: IdentificationExtra {
                read_only,
                ..Default::default()
            },
        }
    }

    pub(in crate::actors::master) fn messages(
        effects: &[Effect],
        conn: ConnId,
    ) -> Vec<(u32, Packet)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { conn: c, msg } if *c == conn => Some((msg.id, msg.packet.clone())),
                _ => None,
            })
            .collect()
    }

    pub(in crate::actors::master) fn recv(
        h: &mut Harness<Master>,
        conn: ConnId,
        id: u32,
        packet: Packet,
    ) -> Vec<Effect> {
        h.handle(Event::Received {
            conn,
            msg: Message { id, packet },
        })
    }

    /// A primary with two new storages, RUNNING with the storages' last ids, both ready.
    pub(in crate::actors::master) fn running(
        h: &mut Harness<Master>,
        last_tid: Option<Tid>,
        last_oid: Option<Oid>,
    ) {
        running_with(h, last_tid, last_oid, (None, None))
    }

    /// `running`, the storages holding `reserved` (answering every reservation at once).
    fn running_with(
        h: &mut Harness<Master>,
        last_tid: Option<Tid>,
        last_oid: Option<Oid>,
        reserved: (Option<Oid>, Option<Tid>),
    ) {
        h.start();
        let mut out = h.incoming(S1, storage(30));
        out.extend(h.incoming(S2, storage(31)));
        while !out.is_empty() {
            let mut next = Vec::new();
            for conn in [S1, S2] {
                for (id, p) in messages(&out, conn) {
                    let answer = match p {
                        Packet::AskRecovery => Packet::AnswerRecovery {
                            ptid: None,
                            backup_tid: None,
                            truncate_tid: None,
                        },
                        Packet::AskLockedTransactions => Packet::AnswerLockedTransactions {
                            transactions: vec![],
                        },
                        Packet::AskReserveIDs { oid, tid } => Packet::AnswerReserveIDs {
                            oid: oid.max(reserved.0),
                            tid: tid.max(reserved.1),
                        },
                        Packet::AskLastIDs => Packet::AnswerLastIDs {
                            last_tid,
                            last_oid,
                            first_tid: None,
                        },
                        _ => continue,
                    };
                    next.extend(recv(h, conn, id, answer));
                }
            }
            out = next;
        }
        assert_eq!(h.actor.cluster_state(), Some(ClusterState::Running));
        for conn in [S1, S2] {
            recv(h, conn, 0, Packet::NotifyReady);
        }
    }

    pub(in crate::actors::master) fn ask(
        h: &mut Harness<Master>,
        conn: ConnId,
        id: u32,
        packet: Packet,
    ) -> Vec<Packet> {
        let out = recv(h, conn, id, packet);
        messages(&out, conn)
            .into_iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, p)| p)
            .collect()
    }

    pub(in crate::actors::master) fn begin(h: &mut Harness<Master>, conn: ConnId, id: u32) -> Tid {
        match &ask(h, conn, id, Packet::AskBeginTransaction { tid: None })[..] {
            [Packet::AnswerBeginTransaction { ttid }] => *ttid,
            other => panic!("begin: {other:?}"),
        }
    }

    pub(in crate::actors::master) fn finish_packet(ttid: Tid, oids: &[u64]) -> Packet {
        Packet::AskFinishTransaction {
            ttid,
            oids: oids.iter().map(|o| Oid(*o)).collect(),
            deleted: vec![],
            checked: vec![],
        }
    }

    /// The AskLockInformation requests in `out`: (storage connection, message id, ttid, tid).
    pub(in crate::actors::master) fn lock_requests(out: &[Effect]) -> Vec<(ConnId, u32, Tid, Tid)> {
        [S1, S2]
            .into_iter()
            .flat_map(|c| {
                messages(out, c)
                    .into_iter()
                    .filter_map(move |(id, p)| match p {
                        Packet::AskLockInformation { ttid, tid } => Some((c, id, ttid, tid)),
                        _ => None,
                    })
            })
            .collect()
    }

    pub(in crate::actors::master) fn lock(
        h: &mut Harness<Master>,
        req: (ConnId, u32, Tid, Tid),
    ) -> Vec<Effect> {
        recv(
            h,
            req.0,
            req.1,
            Packet::AnswerInformationLocked { ttid: req.2 },
        )
    }

    pub(in crate::actors::master) fn error_code(p: &[Packet]) -> Option<ErrorCode> {
        match p {
            [Packet::Error { code, .. }] => Some(*code),
            _ => None,
        }
    }

    /// A running cluster (replicas 1: both storages hold every partition) with clients C1, C2.
    pub(in crate::actors::master) fn cluster(mutant: Option<&'static str>) -> Harness<Master> {
        let m = Master::new(config(1));
        let mut h = match mutant {
            Some(name) => Harness::with_mutant(m, name),
            None => Harness::new(m),
        };
        running(&mut h, None, None);
        for c in [C1, C2] {
            let out = h.incoming(c, client(false));
            assert!(
                matches!(
                    sent(&out, c).first(),
                    Some(Packet::AcceptIdentification { .. })
                ),
                "{out:?}"
            );
        }
        h
    }

    #[test]
    fn a_client_gets_the_nodes_but_clients_and_the_table_and_storages_hear_of_it() {
        let mut h = cluster(None);
        let out = h.incoming(ConnId(202), client(false));
        let got = sent(&out, ConnId(202));
        let Some(Packet::AcceptIdentification {
            your_nid: Some(nid),
            ..
        }) = got.first()
        else {
            panic!("{got:?}")
        };
        assert_eq!(nid.node_type(), Some(NodeType::Client));
        let Some(Packet::NotifyNodeInformation { nodes, .. }) = got.get(1) else {
            panic!("{got:?}")
        };
        assert_eq!(nodes[0].nid, Some(*nid));
        assert!(nodes[0].id_timestamp.is_some());
        assert!(nodes[1..].iter().all(|n| n.node_type != NodeType::Client));
        assert!(got
            .iter()
            .any(|p| matches!(p, Packet::SendPartitionTable { .. })));
        let told = |c| {
            sent(&out, c).iter().any(|p| matches!(p, Packet::NotifyNodeInformation { nodes, .. } if nodes.iter().any(|n| n.nid == Some(*nid))))
        };
        assert!(told(S1) && told(S2));
        assert!(!told(C1), "clients are not told of clients");
        assert_eq!(h.actor.clients().len(), 3);
    }

    #[test]
    fn clients_are_refused_outside_running_and_closed_when_it_stops() {
        let mut h = Harness::new(Master::new(config(0)));
        h.start();
        let out = h.incoming(C1, client(false));
        assert_eq!(error_code(&sent(&out, C1)), Some(ErrorCode::NotReady));
        assert!(closed(&out, C1));
        // Replicas 0: losing a storage stops the cluster; the client is closed.
        running(&mut h, None, None);
        h.incoming(C1, client(false));
        assert_eq!(h.actor.clients().len(), 1);
        let out = h.handle(Event::Closed {
            conn: S1,
            reason: CloseReason::Reset,
        });
        assert_eq!(h.actor.cluster_state(), Some(ClusterState::Recovering));
        assert!(closed(&out, C1), "{out:?}");
        assert!(h.actor.clients().is_empty());
        h.actor.check_invariants().unwrap();
    }

    #[test]
    fn a_read_only_client_cannot_begin() {
        let mut h = cluster(None);
        h.incoming(ConnId(202), client(true));
        let got = ask(
            &mut h,
            ConnId(202),
            1,
            Packet::AskBeginTransaction { tid: None },
        );
        assert_eq!(error_code(&got), Some(ErrorCode::ReadOnlyAccess));
        // It may read: the last transaction.
        let got = ask(&mut h, ConnId(202), 2, Packet::AskLastTransaction);
        assert_eq!(got, vec![Packet::AnswerLastTransaction { tid: None }]);
    }

    #[test]
    fn oids_continue_above_what_storages_know_and_what_was_stored() {
        let mut h = Harness::new(Master::new(config(1)));
        running(&mut h, None, Some(Oid(41)));
        h.incoming(C1, client(false));
        for count in [0, MAX_NEW_OIDS + 1] {
            let got = ask(&mut h, C1, 1, Packet::AskNewOIDs { count });
            assert_eq!(error_code(&got), Some(ErrorCode::ProtocolError));
        }
        let got = ask(&mut h, C1, 2, Packet::AskNewOIDs { count: 3 });
        assert_eq!(
            got,
            vec![Packet::AnswerNewOIDs {
                oids: vec![Oid(42), Oid(43), Oid(44)]
            }]
        );
        // A client stored OID 100 (from another primary's allocation, say).
        let ttid = begin(&mut h, C1, 3);
        recv(&mut h, C1, 4, finish_packet(ttid, &[100]));
        let got = ask(&mut h, C1, 5, Packet::AskNewOIDs { count: 1 });
        assert_eq!(
            got,
            vec![Packet::AnswerNewOIDs {
                oids: vec![Oid(101)]
            }]
        );
        // An OID beyond what the storages can hold is refused, and allocation goes on.
        let ttid = begin(&mut h, C1, 6);
        let got = ask(&mut h, C1, 7, finish_packet(ttid, &[u64::MAX]));
        assert_eq!(error_code(&got), Some(ErrorCode::ProtocolError));
        let got = ask(&mut h, C1, 8, Packet::AskNewOIDs { count: 1 });
        assert_eq!(
            got,
            vec![Packet::AnswerNewOIDs {
                oids: vec![Oid(102)]
            }]
        );
        // The last OID there is: none left, no overflow.
        let ttid = begin(&mut h, C1, 9);
        recv(&mut h, C1, 10, finish_packet(ttid, &[i64::MAX as u64]));
        let got = ask(&mut h, C1, 11, Packet::AskNewOIDs { count: 1 });
        assert_eq!(error_code(&got), Some(ErrorCode::NotReady));
    }

    /// TTIDs and final TIDs strictly increase when the clock goes back, start above the
    /// storages' last TID whatever the clock says, and the final TID is in the TTID's
    /// partition.
    fn tids_under_a_clock_going_back(mutant: Option<&'static str>) -> Result<(), String> {
        let m = Master::new(config(1));
        let mut h = match mutant {
            Some(name) => Harness::with_mutant(m, name),
            None => Harness::new(m),
        };
        // The storages know a TID an hour ahead of our clock.
        let ahead = Tid::from_wall(h.now.saturating_add(Duration::from_secs(3600)));
        running(&mut h, Some(ahead), None);
        h.incoming(C1, client(false));
        let mut last = ahead;
        let mut id = 0;
        for step in 0..6u64 {
            if step % 2 == 1 {
                h.now = h.now.saturating_sub(Duration::from_secs(600));
            } else {
                h.now = h.now.saturating_add(Duration::from_millis(1));
            }
            id += 2;
            let ttid = begin(&mut h, C1, id);
            if ttid <= last {
                return Err(format!("ttid {ttid:?} after {last:?}"));
            }
            let out = recv(&mut h, C1, id + 1, finish_packet(ttid, &[step]));
            let locks = lock_requests(&out);
            let tid = locks.first().map(|l| l.3).ok_or("no lock asked")?;
            if tid < ttid || tid <= last {
                return Err(format!("tid {tid:?} for ttid {ttid:?} after {last:?}"));
            }
            if tid.0 % u64::from(NP) != ttid.0 % u64::from(NP) {
                return Err(format!("tid {tid:?} not in the partition of {ttid:?}"));
            }
            for l in locks {
                lock(&mut h, l);
            }
            last = tid;
        }
        Ok(())
    }

    #[test]
    fn tids_increase_across_clock_jumps_and_stay_in_the_ttid_partition() {
        tids_under_a_clock_going_back(None).unwrap();
        assert!(tids_under_a_clock_going_back(Some("tid-not-monotonic")).is_err());
    }

    #[test]
    fn a_user_tid_must_be_above_the_last_and_alone() {
        let mut h = Harness::new(Master::new(config(1)));
        let last = Tid::from_wall(h.now);
        running(&mut h, Some(last), None);
        h.incoming(C1, client(false));
        let got = ask(
            &mut h,
            C1,
            1,
            Packet::AskBeginTransaction { tid: Some(last) },
        );
        assert_eq!(error_code(&got), Some(ErrorCode::ProtocolError));
        let want = Tid(last.0 + 7);
        let got = ask(
            &mut h,
            C1,
            2,
            Packet::AskBeginTransaction { tid: Some(want) },
        );
        assert_eq!(got, vec![Packet::AnswerBeginTransaction { ttid: want }]);
        let got = ask(&mut h, C1, 3, Packet::AskBeginTransaction { tid: None });
        assert_eq!(error_code(&got), Some(ErrorCode::ProtocolError));
        let out = recv(&mut h, C1, 4, finish_packet(want, &[1]));
        let locks = lock_requests(&out);
        assert!(locks.iter().all(|l| l.3 == want) && locks.len() == 2);
    }

    #[test]
    fn commits_wait_for_every_lock_and_complete_in_tid_order() {
        let mut h = cluster(None);
        let t1 = begin(&mut h, C1, 1);
        let t2 = begin(&mut h, C2, 1);
        let l1 = lock_requests(&recv(&mut h, C1, 2, finish_packet(t1, &[1, 2])));
        let l2 = lock_requests(&recv(&mut h, C2, 2, finish_packet(t2, &[3])));
        assert_eq!(
            (l1.len(), l2.len()),
            (2, 2),
            "both storages hold every partition"
        );
        let (tid1, tid2) = (l1[0].3, l2[0].3);
        assert!(tid1 < tid2);
        // T2 locked everywhere: it waits for T1, ahead in the queue.
        let mut out = Vec::new();
        for l in &l2 {
            out.extend(lock(&mut h, *l));
        }
        assert!(
            sent(&out, C2).is_empty() && sent(&out, C1).is_empty(),
            "{out:?}"
        );
        // T1 locked on one storage only: still waiting.
        let out = lock(&mut h, l1[0]);
        assert!(sent(&out, C1).is_empty(), "{out:?}");
        let out = lock(&mut h, l1[1]);
        let finished = |c| {
            messages(&out, c)
                .into_iter()
                .find(|(_, p)| matches!(p, Packet::AnswerTransactionFinished { .. }))
        };
        assert_eq!(
            finished(C1),
            Some((
                2,
                Packet::AnswerTransactionFinished {
                    ttid: t1,
                    tid: tid1
                }
            ))
        );
        assert_eq!(
            finished(C2),
            Some((
                2,
                Packet::AnswerTransactionFinished {
                    ttid: t2,
                    tid: tid2
                }
            ))
        );
        // Each client is told of the other's commit only, in TID order, before... after it
        // answered its own.
        let invalidations = |c| -> Vec<Packet> {
            sent(&out, c)
                .into_iter()
                .filter(|p| matches!(p, Packet::InvalidateObjects { .. }))
                .collect()
        };
        assert_eq!(
            invalidations(C1),
            vec![Packet::InvalidateObjects {
                tid: tid2,
                oids: vec![Oid(3)]
            }]
        );
        assert_eq!(
            invalidations(C2),
            vec![Packet::InvalidateObjects {
                tid: tid1,
                oids: vec![Oid(1), Oid(2)]
            }]
        );
        for s in [S1, S2] {
            assert_eq!(
                sent(&out, s),
                vec![
                    Packet::NotifyUnlockInformation { ttid: t1 },
                    Packet::NotifyUnlockInformation { ttid: t2 }
                ]
            );
        }
        let got = ask(&mut h, C1, 9, Packet::AskLastTransaction);
        assert_eq!(got, vec![Packet::AnswerLastTransaction { tid: Some(tid2) }]);
        h.actor.check_invariants().unwrap();
    }

    #[test]
    fn invalidate_before_unlock_mutant_invalidates_at_the_finish_request() {
        for (mutant, early) in [(None, false), (Some("invalidate-before-unlock"), true)] {
            let mut h = cluster(mutant);
            let t1 = begin(&mut h, C1, 1);
            let out = recv(&mut h, C1, 2, finish_packet(t1, &[1]));
            let told = sent(&out, C2)
                .iter()
                .any(|p| matches!(p, Packet::InvalidateObjects { .. }));
            assert_eq!(told, early, "{mutant:?}");
        }
    }

    #[test]
    fn an_abort_before_finish_reaches_the_storages_named_and_is_refused_after() {
        let mut h = cluster(None);
        let t1 = begin(&mut h, C1, 1);
        let s1 = h
            .actor
            .storages()
            .into_iter()
            .find(|s| s.0 == S1)
            .unwrap()
            .1;
        let out = recv(
            &mut h,
            C1,
            2,
            Packet::AbortTransaction {
                ttid: t1,
                nids: vec![s1],
            },
        );
        assert_eq!(
            sent(&out, S1),
            vec![Packet::AbortTransaction {
                ttid: t1,
                nids: vec![]
            }]
        );
        assert!(sent(&out, S2).is_empty());
        let got = ask(&mut h, C1, 3, finish_packet(t1, &[1]));
        assert_eq!(error_code(&got), Some(ErrorCode::ProtocolError));
        // Once finish was requested, an abort is ignored: the commit goes on.
        let t2 = begin(&mut h, C1, 4);
        let locks = lock_requests(&recv(&mut h, C1, 5, finish_packet(t2, &[1])));
        let out = recv(
            &mut h,
            C1,
            6,
            Packet::AbortTransaction {
                ttid: t2,
                nids: vec![s1],
            },
        );
        assert!(sent(&out, S1).is_empty(), "{out:?}");
        let mut out = Vec::new();
        for l in locks {
            out.extend(lock(&mut h, l));
        }
        assert!(sent(&out, C1)
            .iter()
            .any(|p| matches!(p, Packet::AnswerTransactionFinished { .. })));
        // Another client's transaction, an unknown one: refused, no panic.
        let t3 = begin(&mut h, C2, 1);
        let got = ask(&mut h, C1, 7, finish_packet(t3, &[1]));
        assert_eq!(error_code(&got), Some(ErrorCode::ProtocolError));
        let got = ask(&mut h, C1, 8, finish_packet(Tid(5), &[1]));
        assert_eq!(error_code(&got), Some(ErrorCode::ProtocolError));
        h.actor.check_invariants().unwrap();
    }

    /// A client that disconnects: its transaction not finishing is aborted on every
    /// storage; the one finishing commits (the other client is told).
    fn disconnect(mutant: Option<&'static str>) -> (Vec<Effect>, Vec<Effect>, Tid) {
        let mut h = cluster(mutant);
        let t1 = begin(&mut h, C1, 1);
        let t2 = begin(&mut h, C1, 2);
        let locks = lock_requests(&recv(&mut h, C1, 3, finish_packet(t2, &[1])));
        let lost = h.handle(Event::Closed {
            conn: C1,
            reason: CloseReason::Reset,
        });
        let aborted = |s| {
            sent(&lost, s)
                .into_iter()
                .filter_map(|p| match p {
                    Packet::AbortTransaction { ttid, .. } => Some(ttid),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let mut later = Vec::new();
        for l in locks {
            later.extend(lock(&mut h, l));
        }
        h.actor.check_invariants().unwrap();
        assert_eq!(aborted(S1), aborted(S2));
        assert!(aborted(S1).contains(&t1));
        (lost, later, t2)
    }

    #[test]
    fn a_client_lost_after_its_finish_request_still_commits() {
        let (lost, later, t2) = disconnect(None);
        assert!(!sent(&lost, S1).contains(&Packet::AbortTransaction {
            ttid: t2,
            nids: vec![]
        }));
        assert!(sent(&later, S1).contains(&Packet::NotifyUnlockInformation { ttid: t2 }));
        assert!(sent(&later, C2)
            .iter()
            .any(|p| matches!(p, Packet::InvalidateObjects { .. })));
        let (lost, later, t2) = disconnect(Some("abort-after-lock"));
        assert!(sent(&lost, S1).contains(&Packet::AbortTransaction {
            ttid: t2,
            nids: vec![]
        }));
        assert!(!sent(&later, S1).contains(&Packet::NotifyUnlockInformation { ttid: t2 }));
    }

    #[test]
    fn failed_vote_is_acknowledged_while_the_table_stays_operational() {
        let mut h = cluster(None);
        let nids: Vec<Nid> = h.actor.storages().into_iter().map(|s| s.1).collect();
        let t1 = begin(&mut h, C1, 1);
        let got = ask(
            &mut h,
            C1,
            2,
            Packet::FailedVote {
                ttid: t1,
                nids: nids.clone(),
            },
        );
        assert_eq!(error_code(&got), Some(ErrorCode::IncompleteTransaction));
        let got = ask(
            &mut h,
            C1,
            3,
            Packet::FailedVote {
                ttid: t1,
                nids: vec![nids[0]],
            },
        );
        assert_eq!(error_code(&got), Some(ErrorCode::Ack));
        // At finish, the failed storage is dropped first and not asked to lock.
        let out = recv(&mut h, C1, 4, finish_packet(t1, &[1]));
        let failed_conn = h.actor.storages().iter().all(|s| s.1 != nids[0]);
        assert!(failed_conn, "the failed storage is still connected");
        assert!(closed(&out, S1) || closed(&out, S2));
        let locks = lock_requests(&out);
        assert_eq!(locks.len(), 1, "{locks:?}");
        let out = lock(&mut h, locks[0]);
        assert!(sent(&out, C1)
            .iter()
            .any(|p| matches!(p, Packet::AnswerTransactionFinished { .. })));
        h.actor.check_invariants().unwrap();
    }

    #[test]
    fn a_storage_lost_while_locking_is_not_waited_for() {
        let mut h = cluster(None);
        let t1 = begin(&mut h, C1, 1);
        let locks = lock_requests(&recv(&mut h, C1, 2, finish_packet(t1, &[1])));
        lock(&mut h, locks[0]);
        let other = if locks[0].0 == S1 { S2 } else { S1 };
        let out = h.handle(Event::Closed {
            conn: other,
            reason: CloseReason::Reset,
        });
        assert!(sent(&out, C1)
            .iter()
            .any(|p| matches!(p, Packet::AnswerTransactionFinished { .. })));
        // The lost storage's cells are outdated first, then the unlock.
        let to_locker = sent(&out, locks[0].0);
        let changes = to_locker
            .iter()
            .position(|p| matches!(p, Packet::NotifyPartitionChanges { .. }));
        assert!(changes.is_some(), "{to_locker:?}");
        assert_eq!(
            to_locker.last(),
            Some(&Packet::NotifyUnlockInformation { ttid: t1 })
        );
        // Clients are told too: they read from and write to the cells.
        for c in [C1, C2] {
            assert!(sent(&out, c)
                .iter()
                .any(|p| matches!(p, Packet::NotifyPartitionChanges { .. })));
        }
    }

    /// Seed 794889413: the storages asked to lock were lost before answering; one had
    /// written the lock, so the transaction came back committed after the primary had said
    /// it failed. The outcome is unknown: the client is closed (it asks AskFinalTID, 6.11)
    /// and those asking already are sent to the storages.
    #[test]
    fn every_storage_lost_while_locking_leaves_the_outcome_unknown() {
        let mut h = cluster(None);
        let t1 = begin(&mut h, C1, 1);
        let locks = lock_requests(&recv(&mut h, C1, 2, finish_packet(t1, &[1])));
        assert_eq!(locks.len(), 2);
        assert!(ask(&mut h, C2, 1, Packet::AskFinalTID { ttid: t1 }).is_empty());
        let mut out = Vec::new();
        for s in [S1, S2] {
            out.extend(h.handle(Event::Closed {
                conn: s,
                reason: CloseReason::Reset,
            }));
        }
        assert!(
            !messages(&out, C1).iter().any(|(id, _)| *id == 2),
            "the finish must not be answered: {out:?}"
        );
        assert!(closed(&out, C1), "{out:?}");
        // The table is not operational without them: back to recovery, which closes every
        // client; one asking AskFinalTID is sent to the storages, or closed and asks again.
        assert!(
            closed(&out, C2)
                || messages(&out, C2).contains(&(
                    1,
                    Packet::AnswerFinalTID {
                        tid: Some(Tid::MAX)
                    }
                )),
            "{out:?}"
        );
        // Asked later, the primary sends the client to the storages too.
        assert!(!sent(&out, C2).contains(&Packet::AnswerFinalTID { tid: None }));
        h.actor.check_invariants().unwrap();
    }

    /// Commits seed 341182646: a storage crashed and came back before its old connection
    /// was seen closed; the commit waiting for its lock waited for good, and every commit
    /// after it. The old connection is lost when the storage identifies again.
    #[test]
    fn a_storage_back_on_a_new_connection_is_lost_on_the_old_one() {
        let mut h = cluster(None);
        let nid = |h: &Harness<Master>, c| {
            h.actor
                .storages()
                .into_iter()
                .find(|s| s.0 == c)
                .map(|s| s.1)
        };
        let s2 = nid(&h, S2).unwrap();
        let t1 = begin(&mut h, C1, 1);
        let locks = lock_requests(&recv(&mut h, C1, 2, finish_packet(t1, &[1])));
        let from_s1 = *locks.iter().find(|l| l.0 == S1).unwrap();
        lock(&mut h, from_s1);
        let again = Packet::RequestIdentification {
            node_type: NodeType::Storage,
            nid: Some(s2),
            address: Some(Address::new("10.0.1.1", 31)),
            cluster_name: "prod".into(),
            id_timestamp: None,
            extra: IdentificationExtra::default(),
        };
        let out = h.incoming(ConnId(300), again);
        assert!(closed(&out, S2), "{out:?}");
        assert_eq!(nid(&h, ConnId(300)), Some(s2));
        assert!(
            sent(&out, C1)
                .iter()
                .any(|p| matches!(p, Packet::AnswerTransactionFinished { .. })),
            "{out:?}"
        );
        assert!(sent(&out, S1)
            .iter()
            .any(|p| matches!(p, Packet::NotifyPartitionChanges { .. })));
        h.actor.check_invariants().unwrap();
    }

    /// Commits seeds 19 and 25: the storage lost while locking held the only UP_TO_DATE
    /// cells; the one that locked held OUT_OF_DATE ones. Committing with it alone acknowledged
    /// a transaction the cell that stays readable never got: the table is not operational,
    /// so the transaction is left to verification and nothing is answered.
    #[test]
    fn a_lock_from_out_of_date_cells_alone_is_not_a_commit() {
        let mut h = cluster(None);
        let s1 = h
            .actor
            .storages()
            .into_iter()
            .find(|(c, _, _)| *c == S1)
            .map(|(_, n, _)| n)
            .unwrap();
        let Role::Primary(p) = &mut h.actor.role else {
            panic!("not primary")
        };
        let next = p.pt.ptid().and_then(|t| t.next()).unwrap();
        let changes: Vec<crate::pt::Change> = (0..NP)
            .map(|o| (o, s1, crate::proto::CellState::OutOfDate))
            .collect();
        let replicas = p.pt.replicas();
        p.pt.apply(next, replicas, &changes).unwrap();
        let t1 = begin(&mut h, C1, 1);
        let locks = lock_requests(&recv(&mut h, C1, 2, finish_packet(t1, &[1])));
        assert_eq!(locks.len(), 2, "both storages hold cells: {locks:?}");
        let from_s1 = *locks.iter().find(|l| l.0 == S1).unwrap();
        lock(&mut h, from_s1);
        let out = h.handle(Event::Closed {
            conn: S2,
            reason: CloseReason::Reset,
        });
        assert!(
            !sent(&out, C1)
                .iter()
                .any(|p| matches!(p, Packet::AnswerTransactionFinished { .. })),
            "{out:?}"
        );
        assert!(!sent(&out, S1).contains(&Packet::NotifyUnlockInformation { ttid: t1 }));
        assert_eq!(h.actor.cluster_state(), Some(ClusterState::Recovering));
        h.actor.check_invariants().unwrap();
    }

    /// Commits seed 444572912: a storage that lost us identifies again while we still hold
    /// its old link. It stopped operating and will drop at StartOperation what it locked,
    /// so its old link is lost first: its cells are outdated and the commit goes on with
    /// the others instead of counting on its lock.
    #[test]
    fn a_storage_identifying_again_is_lost_first() {
        let mut h = cluster(None);
        let s1 = h
            .actor
            .storages()
            .into_iter()
            .find(|(c, _, _)| *c == S1)
            .map(|(_, n, _)| n)
            .unwrap();
        let t1 = begin(&mut h, C1, 1);
        let locks = lock_requests(&recv(&mut h, C1, 2, finish_packet(t1, &[1])));
        assert_eq!(locks.len(), 2, "{locks:?}");
        let from_s1 = *locks.iter().find(|l| l.0 == S1).unwrap();
        let from_s2 = *locks.iter().find(|l| l.0 == S2).unwrap();
        lock(&mut h, from_s1);
        let again = Packet::RequestIdentification {
            node_type: NodeType::Storage,
            nid: Some(s1),
            address: Some(Address::new("10.0.1.1", 30)),
            cluster_name: "prod".into(),
            id_timestamp: None,
            extra: IdentificationExtra::default(),
        };
        let out = h.incoming(ConnId(102), again);
        assert!(closed(&out, S1), "{out:?}");
        assert!(sent(&out, S2).iter().any(|p| matches!(
            p,
            Packet::NotifyPartitionChanges { changes, .. }
                if changes.iter().any(|c| c.1 == s1 && c.2 == crate::proto::CellState::OutOfDate)
        )));
        // S1's lock went with its old link: the commit is S2's to make.
        assert!(sent(&out, ConnId(102))
            .iter()
            .all(|p| !matches!(p, Packet::NotifyUnlockInformation { .. })));
        let out = lock(&mut h, from_s2);
        assert!(sent(&out, C1)
            .iter()
            .any(|p| matches!(p, Packet::AnswerTransactionFinished { .. })));
        assert!(!sent(&out, ConnId(102)).contains(&Packet::NotifyUnlockInformation { ttid: t1 }));
        h.actor.check_invariants().unwrap();
    }

    /// A storage that refuses a lock may hold readable cells the transaction wrote to: it
    /// is lost (its cells outdated), and the commit goes on with the others.
    #[test]
    fn an_error_to_a_lock_loses_the_storage() {
        let mut h = cluster(None);
        let t1 = begin(&mut h, C1, 1);
        let locks = lock_requests(&recv(&mut h, C1, 2, finish_packet(t1, &[1])));
        assert_eq!(locks.len(), 2, "{locks:?}");
        lock(&mut h, locks[0]);
        let (c, id, _, _) = locks[1];
        let out = recv(
            &mut h,
            c,
            id,
            Packet::error(ErrorCode::ProtocolError, "unknown"),
        );
        assert!(closed(&out, c), "{out:?}");
        assert!(sent(&out, C1)
            .iter()
            .any(|p| matches!(p, Packet::AnswerTransactionFinished { .. })));
        assert!(!sent(&out, c).contains(&Packet::NotifyUnlockInformation { ttid: t1 }));
        h.actor.check_invariants().unwrap();
    }

    #[test]
    fn final_tid_answers_known_unknown_and_waits_for_a_commit_in_progress() {
        let mut h = cluster(None);
        let t1 = begin(&mut h, C1, 1);
        let locks = lock_requests(&recv(&mut h, C1, 2, finish_packet(t1, &[1])));
        assert!(ask(&mut h, C2, 1, Packet::AskFinalTID { ttid: t1 }).is_empty());
        let mut out = Vec::new();
        for l in locks {
            out.extend(lock(&mut h, l));
        }
        let tid = h.actor.tm().unwrap().last_tid().unwrap();
        assert!(messages(&out, C2).contains(&(1, Packet::AnswerFinalTID { tid: Some(tid) })));
        let got = ask(&mut h, C2, 2, Packet::AskFinalTID { ttid: t1 });
        assert_eq!(got, vec![Packet::AnswerFinalTID { tid: Some(tid) }]);
        let got = ask(
            &mut h,
            C2,
            3,
            Packet::AskFinalTID {
                ttid: Tid(tid.0 + 1000),
            },
        );
        assert_eq!(got, vec![Packet::AnswerFinalTID { tid: None }]);
        let got = ask(&mut h, C2, 4, Packet::AskFinalTID { ttid: Tid(5) });
        assert_eq!(
            got,
            vec![Packet::AnswerFinalTID {
                tid: Some(Tid::MAX)
            }]
        );
    }

    /// The AskReserveIDs requests in `out`: (storage connection, message id, oid, tid).
    fn reserve_requests(out: &[Effect]) -> Vec<(ConnId, u32, Option<Oid>, Option<Tid>)> {
        [S1, S2]
            .into_iter()
            .flat_map(|c| {
                messages(out, c)
                    .into_iter()
                    .filter_map(move |(id, p)| match p {
                        Packet::AskReserveIDs { oid, tid } => Some((c, id, oid, tid)),
                        _ => None,
                    })
            })
            .collect()
    }

    #[test]
    fn oids_wait_for_every_running_storage_to_persist_their_reservation() {
        let mut h = Harness::new(Master::new(config(1)));
        running(&mut h, None, None);
        assert_eq!(h.actor.tm().unwrap().reserved().0, Some(Oid(OID_BLOCK)));
        h.incoming(C1, client(false));
        // The block is handed out without waiting; past half of it, the next is asked.
        let mut asked = Vec::new();
        let per = u64::from(MAX_NEW_OIDS);
        for i in 0..OID_BLOCK / per {
            let out = recv(
                &mut h,
                C1,
                i as u32,
                Packet::AskNewOIDs {
                    count: MAX_NEW_OIDS,
                },
            );
            assert_eq!(messages(&out, C1).len(), 1, "answered at once");
            asked.extend(reserve_requests(&out));
        }
        assert_eq!(asked.len(), 2, "one reservation on each storage: {asked:?}");
        // Beyond the block, a request waits for both storages.
        let out = recv(&mut h, C1, 99, Packet::AskNewOIDs { count: 1 });
        assert!(messages(&out, C1).is_empty());
        let answer = |(c, id, oid, tid): (ConnId, u32, Option<Oid>, Option<Tid>)| {
            (c, id, Packet::AnswerReserveIDs { oid, tid })
        };
        let (c, id, p) = answer(asked[0]);
        assert!(messages(&recv(&mut h, c, id, p), C1).is_empty());
        let (c, id, p) = answer(asked[1]);
        let out = recv(&mut h, c, id, p);
        assert_eq!(
            messages(&out, C1),
            vec![(
                99,
                Packet::AnswerNewOIDs {
                    oids: vec![Oid(OID_BLOCK + 1)]
                }
            )]
        );
        h.actor.check_invariants().unwrap();
    }

    #[test]
    fn a_new_primary_hands_out_ids_above_the_reservations_it_read() {
        let mut h = Harness::new(Master::new(config(1)));
        // A previous primary, its clock an hour ahead of ours, reserved these.
        let ahead = Tid::from_wall(h.now.saturating_add(Duration::from_secs(3600)));
        running_with(&mut h, None, Some(Oid(7)), (Some(Oid(5000)), Some(ahead)));
        h.incoming(C1, client(false));
        let got = ask(&mut h, C1, 1, Packet::AskNewOIDs { count: 1 });
        assert_eq!(
            got,
            vec![Packet::AnswerNewOIDs {
                oids: vec![Oid(5001)]
            }]
        );
        assert!(begin(&mut h, C1, 2) > ahead);
        // A late AskFinalTID for the previous primary's transaction is not ours.
        let got = ask(&mut h, C1, 3, Packet::AskFinalTID { ttid: ahead });
        assert_eq!(
            got,
            vec![Packet::AnswerFinalTID {
                tid: Some(Tid::MAX)
            }]
        );
    }

    #[test]
    fn begins_wait_while_a_storage_is_starting() {
        let mut h = cluster(None);
        // S2 reconnects: it starts operation again.
        h.handle(Event::Closed {
            conn: S2,
            reason: CloseReason::Reset,
        });
        let nid = h
            .actor
            .nodes()
            .of_type(NodeType::Storage)
            .find(|n| n.state == NodeState::Down)
            .and_then(|n| n.nid);
        let back = Packet::RequestIdentification {
            node_type: NodeType::Storage,
            nid,
            address: Some(Address::new("10.0.1.1", 31)),
            cluster_name: "prod".into(),
            id_timestamp: None,
            extra: IdentificationExtra::default(),
        };
        let out = h.incoming(ConnId(102), back);
        assert!(sent(&out, ConnId(102)).contains(&Packet::StartOperation { backup: false }));
        assert!(ask(&mut h, C1, 1, Packet::AskBeginTransaction { tid: None }).is_empty());
        let out = recv(&mut h, ConnId(102), 0, Packet::NotifyReady);
        assert!(matches!(
            &messages(&out, C1)[..],
            [(1, Packet::AnswerBeginTransaction { .. })]
        ));
        h.actor.check_invariants().unwrap();
    }

    #[test]
    fn a_client_cannot_hoard_transactions() {
        let mut h = cluster(None);
        for id in 0..MAX_TRANSACTIONS_PER_CLIENT as u32 {
            begin(&mut h, C1, id);
        }
        let got = ask(&mut h, C1, 5000, Packet::AskBeginTransaction { tid: None });
        assert_eq!(error_code(&got), Some(ErrorCode::ProtocolError));
        h.actor.check_invariants().unwrap();
        let _ = WallTime(0);
    }

    /// What a random session does.
    #[derive(Clone, Debug)]
    enum Op {
        Begin(usize),
        Finish(usize, usize, Vec<u64>),
        Abort(usize, usize),
        FailedVote(usize, usize, bool),
        /// Answer one of the pending lock requests.
        Lock(usize),
        FinalTid(usize, usize),
        Disconnect(usize),
        /// Move the clock (seconds, negative: back).
        Clock(i64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..3usize).prop_map(Op::Begin),
            4 => (0..3usize, any::<usize>(), proptest::collection::vec(0..20u64, 0..4))
                .prop_map(|(c, t, o)| Op::Finish(c, t, o)),
            1 => (0..3usize, any::<usize>()).prop_map(|(c, t)| Op::Abort(c, t)),
            1 => (0..3usize, any::<usize>(), any::<bool>())
                .prop_map(|(c, t, b)| Op::FailedVote(c, t, b)),
            8 => any::<usize>().prop_map(Op::Lock),
            1 => (0..3usize, any::<usize>()).prop_map(|(c, t)| Op::FinalTid(c, t)),
            1 => (0..3usize).prop_map(Op::Disconnect),
            2 => (-4000i64..5).prop_map(Op::Clock),
        ]
    }

    /// What the clients and storages saw.
    #[derive(Default)]
    struct Seen {
        ttids: Vec<Tid>,
        /// Final TIDs answered, in order, with their TTIDs.
        finished: Vec<(Tid, Tid)>,
        /// Per connection: the TIDs of the invalidations it got, in order.
        invalidated: BTreeMap<ConnId, Vec<Tid>>,
        /// Per connection: the final TIDs of its own commits.
        own: BTreeMap<ConnId, BTreeSet<Tid>>,
        /// ttid -> final TID, from the lock requests.
        tids: BTreeMap<Tid, Tid>,
        unlocked: BTreeMap<ConnId, Vec<Tid>>,
        pending_locks: Vec<(ConnId, u32, Tid, Tid)>,
        /// Per client connection: its transactions (ttid), begun and not known over.
        open: BTreeMap<ConnId, Vec<Tid>>,
    }

    impl Seen {
        fn take(&mut self, out: &[Effect]) -> Result<(), String> {
            for e in out {
                let Effect::Send { conn, msg } = e else {
                    continue;
                };
                match &msg.packet {
                    Packet::AnswerBeginTransaction { ttid } => {
                        if self.ttids.last().is_some_and(|l| l >= ttid) {
                            return Err(format!("ttid {ttid:?} after {:?}", self.ttids));
                        }
                        self.ttids.push(*ttid);
                        self.open.entry(*conn).or_default().push(*ttid);
                    }
                    Packet::AskLockInformation { ttid, tid } => {
                        self.tids.insert(*ttid, *tid);
                        self.pending_locks.push((*conn, msg.id, *ttid, *tid));
                    }
                    Packet::AnswerTransactionFinished { ttid, tid } => {
                        if self.finished.last().is_some_and(|(_, l)| l >= tid) {
                            return Err(format!("tid {tid:?} after {:?}", self.finished));
                        }
                        if tid.0 % u64::from(NP) != ttid.0 % u64::from(NP) || tid < ttid {
                            return Err(format!("tid {tid:?} for ttid {ttid:?}"));
                        }
                        self.finished.push((*ttid, *tid));
                        self.own.entry(*conn).or_default().insert(*tid);
                    }
                    Packet::InvalidateObjects { tid, .. } => {
                        let v = self.invalidated.entry(*conn).or_default();
                        if v.last().is_some_and(|l| l >= tid) {
                            return Err(format!("invalidation {tid:?} after {v:?} on {conn:?}"));
                        }
                        v.push(*tid);
                    }
                    Packet::NotifyUnlockInformation { ttid } => {
                        let tid = self.tids[ttid];
                        let v = self.unlocked.entry(*conn).or_default();
                        if v.last().is_some_and(|l| *l >= tid) {
                            return Err(format!("unlock {tid:?} after {v:?} on {conn:?}"));
                        }
                        v.push(tid);
                    }
                    _ => {}
                }
            }
            for (conn, tids) in &self.invalidated {
                if let Some(t) = self
                    .own
                    .get(conn)
                    .and_then(|o| tids.iter().find(|t| o.contains(t)))
                {
                    return Err(format!("{conn:?} told of its own commit {t:?}"));
                }
            }
            Ok(())
        }
    }

    fn pick<T: Copy>(v: &[T], i: usize) -> Option<T> {
        (!v.is_empty()).then(|| v[i % v.len()])
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            failure_persistence: None,
            cases: 64,
            ..Default::default()
        })]

        /// Random sessions of three clients, with clock jumps and disconnections: TTIDs and
        /// final TIDs strictly increase, each final TID is in its TTID's partition,
        /// invalidations reach each client in TID order and never for its own commits,
        /// storages unlock in TID order, and the master's invariants hold.
        #[test]
        fn random_sessions_keep_tids_ordered(ops in proptest::collection::vec(op(), 1..120)) {
            let mut h = cluster(None);
            let mut conns = [C1, C2, ConnId(202)];
            h.incoming(conns[2], client(false));
            let mut next_conn = 300;
            let mut seen = Seen::default();
            let mut id = 10;
            for op in ops {
                id += 1;
                let out = match op {
                    Op::Begin(c) => recv(&mut h, conns[c], id, Packet::AskBeginTransaction { tid: None }),
                    Op::Finish(c, t, oids) => {
                        let open = seen.open.get(&conns[c]).cloned().unwrap_or_default();
                        let Some(ttid) = pick(&open, t) else { continue };
                        seen.open.get_mut(&conns[c]).unwrap().retain(|x| *x != ttid);
                        recv(&mut h, conns[c], id, finish_packet(ttid, &oids))
                    }
                    Op::Abort(c, t) => {
                        let open = seen.open.get(&conns[c]).cloned().unwrap_or_default();
                        let Some(ttid) = pick(&open, t) else { continue };
                        seen.open.get_mut(&conns[c]).unwrap().retain(|x| *x != ttid);
                        let nids = h.actor.storages().into_iter().map(|s| s.1).collect();
                        recv(&mut h, conns[c], id, Packet::AbortTransaction { ttid, nids })
                    }
                    Op::FailedVote(c, t, first) => {
                        let open = seen.open.get(&conns[c]).cloned().unwrap_or_default();
                        let Some(ttid) = pick(&open, t) else { continue };
                        let storages = h.actor.storages();
                        let Some(s) = storages.get(usize::from(!first)) else { continue };
                        recv(&mut h, conns[c], id, Packet::FailedVote { ttid, nids: vec![s.1] })
                    }
                    Op::Lock(i) => {
                        let Some(l) = pick(&seen.pending_locks, i) else { continue };
                        seen.pending_locks.retain(|x| *x != l);
                        lock(&mut h, l)
                    }
                    Op::FinalTid(c, t) => {
                        let Some(ttid) = pick(&seen.ttids, t) else { continue };
                        recv(&mut h, conns[c], id, Packet::AskFinalTID { ttid })
                    }
                    Op::Disconnect(c) => {
                        let old = conns[c];
                        seen.open.remove(&old);
                        let mut out = h.handle(Event::Closed { conn: old, reason: CloseReason::Reset });
                        conns[c] = ConnId(next_conn);
                        next_conn += 1;
                        out.extend(h.incoming(conns[c], client(false)));
                        out
                    }
                    Op::Clock(secs) => {
                        let d = Duration::from_secs(secs.unsigned_abs());
                        h.now = if secs < 0 { h.now.saturating_sub(d) } else { h.now.saturating_add(d) };
                        continue;
                    }
                };
                seen.take(&out).map_err(proptest::test_runner::TestCaseError::fail)?;
                h.actor.check_invariants().map_err(proptest::test_runner::TestCaseError::fail)?;
            }
        }
    }

    /// Client packets with TTIDs near those the master hands out, and storages' lock
    /// answers, so that hostile input reaches the transaction code past the first checks.
    fn hostile() -> impl proptest::strategy::Strategy<Value = Packet> {
        use proptest::prelude::*;
        let base = Tid::from_wall(WallTime::from_secs(1_767_225_600)).0;
        let tid = prop_oneof![
            4 => (0..12u64).prop_map(move |d| Tid(base + d)),
            1 => any::<u64>().prop_map(Tid),
        ];
        let nids = proptest::collection::vec(crate::actors::fuzz::nid(), 0..3);
        let oids = proptest::collection::vec(any::<u64>().prop_map(Oid), 0..4);
        let parts = proptest::collection::vec(prop_oneof![0..NP + 1, any::<u32>()], 0..3);
        prop_oneof![
            3 => proptest::option::of(tid.clone()).prop_map(|tid| Packet::AskBeginTransaction { tid }),
            2 => any::<u32>().prop_map(|count| Packet::AskNewOIDs { count }),
            3 => (tid.clone(), oids, parts.clone(), parts).prop_map(|(ttid, oids, deleted, checked)| {
                Packet::AskFinishTransaction { ttid, oids, deleted, checked }
            }),
            2 => (tid.clone(), nids.clone()).prop_map(|(ttid, nids)| Packet::FailedVote { ttid, nids }),
            2 => (tid.clone(), nids).prop_map(|(ttid, nids)| Packet::AbortTransaction { ttid, nids }),
            2 => tid.clone().prop_map(|ttid| Packet::AskFinalTID { ttid }),
            3 => tid.prop_map(|ttid| Packet::AnswerInformationLocked { ttid }),
            1 => Just(Packet::NotifyReady),
            2 => crate::actors::fuzz::packet("prod"),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            failure_persistence: None,
            cases: 64,
            ..Default::default()
        })]

        /// Clients and storages of a running cluster sending anything, with arbitrary
        /// message ids, closing at random: no panic, invariants hold.
        #[test]
        fn the_primary_survives_hostile_clients(
            steps in proptest::collection::vec(
                (0..5usize, 0..8u32, hostile(), proptest::bool::weighted(0.05), -100i64..3),
                1..100,
            ),
        ) {
            let mut h = cluster(None);
            let conns = [C1, C2, S1, S2, ConnId(202)];
            for (who, id, packet, close, secs) in steps {
                let conn = conns[who];
                if conn == ConnId(202) && !h.actor.clients().is_empty() {
                    // A newcomer: identify first (refused unless RUNNING).
                    h.handle(Event::Closed { conn, reason: CloseReason::Reset });
                    h.incoming(conn, client(false));
                }
                let d = Duration::from_secs(secs.unsigned_abs());
                h.now = if secs < 0 { h.now.saturating_sub(d) } else { h.now.saturating_add(d) };
                if close {
                    h.handle(Event::Closed { conn, reason: CloseReason::PeerClosed });
                } else {
                    recv(&mut h, conn, id, packet);
                }
                h.actor.check_invariants().map_err(proptest::test_runner::TestCaseError::fail)?;
            }
        }
    }
}
