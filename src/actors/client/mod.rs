//! The client role: follows the primary master (node list, partition table, the snapshot
//! `last_tid` and the invalidations after it), connects to storages on demand, and serves an
//! application's ZODB calls (`api`): loads through the cache (`cache`), OID allocation, and
//! the two-phase commit of several transactions at once (neo-spec 6.4 to 6.12, 6.16).
//!
//! Every call gets exactly one reply (`Client::reply` answers only calls still pending), even
//! when the cluster is down (calls that need the primary wait at most `CALL_DEADLINE`), when
//! the client stops (Closed) or when the call does not fit (Invalid).

pub mod api;
pub mod cache;
mod query;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Read;
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha1::{Digest, Sha1};
use tracing::{debug, info, warn};

pub use api::*;
pub use cache::{Cache, SharedCache};
use query::{Query, QueryId, QueryOp};

use super::core::{Follower, Node};
use super::link::Links;
use super::master_link::{LinkEvent, MasterLink};
use super::requests::{Failure, REQUEST_TIMEOUT};
use super::{CloseReason, ConnId, Ctx, Ticker};
use crate::proto::{
    ErrorCode, IdentificationExtra, Message, Nid, NodeState, NodeType, Oid, Packet, Relocked, Tid,
};
use crate::pt::PartitionTable;

/// How long a call that needs the primary (or a snapshot) waits for one.
pub const CALL_DEADLINE: Duration = REQUEST_TIMEOUT;
/// How long the outcome of a finish whose answer was lost is looked for (6.11).
pub const OUTCOME_DEADLINE: Duration = Duration::from_secs(60);
/// A storage that failed us is tried last for this long.
pub const FAILED_RECENTLY: Duration = Duration::from_secs(600);
/// Bytes of stores sent and not fully answered beyond which `Store` replies wait.
pub const MAX_INFLIGHT_BYTES: u64 = 64 << 20;
/// Most calls pending at once.
pub const MAX_PENDING_CALLS: usize = 100_000;
/// OIDs asked of the primary at a time.
pub const OID_BATCH: u32 = 100;
/// The most OIDs the primary hands out per request: larger calls ask several times.
pub const MASTER_MAX_OIDS: u32 = 1000;
/// Largest object (uncompressed) a load accepts: a zlib bomb goes no further.
pub const MAX_OBJECT: usize = 64 << 20;
/// Most transactions in progress at once (begun and not finished or aborted).
pub const MAX_TXNS: usize = 10_000;
/// Most OIDs one NewOids call may ask.
pub const MAX_NEW_OIDS: u32 = 1 << 20;
/// Invalidations kept per load in flight (bounded against a slow storage).
pub const MAX_LOAD_INVALIDATIONS: usize = 64;
/// The checksum of a deletion.
pub const ZERO_HASH: [u8; 20] = [0; 20];

/// What a connection of the client is to.
#[derive(Debug)]
pub enum Peer {
    Master,
    Storage(StoragePeer),
    /// Something connected to us: clients do not listen, so it is dropped.
    Unknown,
}

#[derive(Debug)]
pub struct StoragePeer {
    nid: Nid,
    /// The storage accepted our identification.
    ready: bool,
    /// What waits for the identification: (packet, None for a notification).
    queue: Vec<(Packet, Option<Asked>)>,
}

/// One load in flight: the request it answers (`before` set for "latest").
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct LoadKey {
    oid: Oid,
    at: Option<Tid>,
    before: Option<Tid>,
}

/// What the client waits for from a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Asked {
    MasterId,
    StorageId(Nid),
    /// AskLastTransaction after identification.
    Snapshot,
    Sync(CallId),
    NewOids(u32),
    Begin(CallId),
    Load(LoadKey, Nid),
    /// A store or a readCurrent check of one object on one storage (`gen`: which store of
    /// the object; a re-store makes earlier answers stale).
    Write {
        txn: TxnRef,
        oid: Oid,
        nid: Nid,
        gen: u64,
    },
    Relock {
        txn: TxnRef,
        oid: Oid,
        nid: Nid,
        gen: u64,
    },
    /// AskStoreTransaction or AskVoteTransaction.
    Vote(TxnRef, Nid),
    FailedVote(TxnRef),
    Finish(TxnRef),
    FinalTid(TxnRef),
    FinalTidStorage(TxnRef, Nid),
    /// A query's request to storage `nid`, covering `parts`.
    Query {
        q: QueryId,
        nid: Nid,
        parts: Vec<u32>,
    },
    /// AskPack of the primary.
    Pack(CallId),
}

struct Inflight {
    waiters: Vec<CallId>,
    tried: BTreeSet<Nid>,
    /// A replica answered data with a wrong checksum for this serial.
    wrong: Option<Tid>,
    /// Invalidations of the oid received since the load was sent, the smallest
    /// `MAX_LOAD_INVALIDATIONS`: the answer's next serial is the smallest above its serial
    /// (which an `at` or `before` load does not know in advance).
    invalidated: BTreeSet<Tid>,
    /// Larger invalidations were left out of `invalidated`.
    overflow: bool,
    /// Invalidations may have been missed since it was sent (the primary was lost): its
    /// answer may not be cached as current.
    blind: bool,
    /// It reads past the snapshot it was sent in (`before` above `last_tid`): an answer
    /// with no next serial is current. An older snapshot's answer is not: invalidations
    /// received before it was sent are not in `invalidated`.
    latest: bool,
}

/// What a write call stores.
enum Write {
    /// readCurrent.
    Check,
    /// New data, or None: a deletion.
    Data(Option<Vec<u8>>),
    /// A revision sharing the data of the object at that serial (undo, restore).
    Backpointer(Tid),
}

/// One storage's answer to a store or check.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ans {
    Pending,
    Locked,
    /// Accepted without a lock (cell being replicated).
    Lockless,
    Conflict(Tid),
    Failed,
}

struct Obj {
    serial: Tid,
    /// Uncompressed, for conflicts and the cache.
    data: Option<Arc<[u8]>>,
    /// A backpointer store: the serial whose data the revision shares (`data` is None).
    data_serial: Option<Tid>,
    check_only: bool,
    gen: u64,
    cells: BTreeMap<Nid, Ans>,
    /// Bytes counted in flight until every cell answered.
    bytes: u64,
}

#[derive(Debug)]
enum Phase {
    Open,
    /// Metadata and votes sent; waiting for these storages.
    Voting {
        call: CallId,
        waiting: BTreeSet<Nid>,
        meta_ok: bool,
    },
    FailedVote(CallId),
    Voted,
    Finishing(CallId),
    /// The finish's answer was lost (6.11).
    FinishLost {
        call: CallId,
        since: Duration,
        asking: bool,
    },
}

struct Meta {
    user: Vec<u8>,
    description: Vec<u8>,
    extension: Vec<u8>,
}

struct Txn {
    ttid: Tid,
    phase: Phase,
    /// Why the transaction cannot commit any more.
    failed: Option<String>,
    objects: BTreeMap<Oid, Obj>,
    /// Store and check answers outstanding.
    pending: usize,
    /// A Vote waiting for those answers.
    vote: Option<(CallId, Meta)>,
    /// Storages sent anything for this transaction.
    used: BTreeSet<Nid>,
    /// Storages that failed us in this transaction.
    lost: BTreeSet<Nid>,
}

pub struct Client {
    cfg: ClientConfig,
    nid: Option<Nid>,
    links: Links<Peer, Asked>,
    master: MasterLink,
    pt: Option<PartitionTable>,
    tick: Ticker,
    closed: bool,
    cache: SharedCache,
    /// The snapshot: the last TID whose invalidations were delivered.
    last_tid: Option<Tid>,
    /// The primary answered our AskLastTransaction on the current link.
    snapshot: bool,
    /// Some snapshot was ever taken (a later different one means missed invalidations).
    had_snapshot: bool,
    /// Calls not answered yet.
    calls: BTreeSet<CallId>,
    /// Calls waiting for the primary and a snapshot, with their deadline.
    parked: VecDeque<(Duration, Call)>,
    storages: BTreeMap<Nid, ConnId>,
    failed_at: BTreeMap<Nid, Duration>,
    loads: BTreeMap<LoadKey, Inflight>,
    /// Loads that found no readable cell on a usable storage before trying any (right
    /// after connecting, the node list or the table may not say so yet), with their
    /// deadline: sent again after each message of the primary and each tick.
    cell_waits: BTreeMap<LoadKey, Duration>,
    oid_pool: VecDeque<Oid>,
    oid_waiters: VecDeque<(CallId, u32, Duration)>,
    oids_asked: bool,
    /// Begin calls waiting for the primary, with their deadlines. Their requests have none
    /// (a late answer must still come to us, to abort a transaction nobody would finish).
    begins: BTreeMap<CallId, Duration>,
    txns: BTreeMap<TxnRef, Txn>,
    next_txn: TxnRef,
    next_gen: u64,
    inflight: u64,
    /// Store calls whose Done waits for bytes in flight to drop.
    held: VecDeque<CallId>,
    queries: BTreeMap<QueryId, Query>,
    next_query: QueryId,
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Client {
        let master = MasterLink::new(NodeType::Client, cfg.cluster.clone(), None, &cfg.masters);
        let cache = Arc::new(Mutex::new(Cache::new(cfg.cache_size)));
        Client {
            cfg,
            nid: None,
            links: Links::default(),
            master,
            pt: None,
            tick: Ticker::default(),
            closed: false,
            cache,
            last_tid: None,
            snapshot: false,
            had_snapshot: false,
            calls: BTreeSet::new(),
            parked: VecDeque::new(),
            storages: BTreeMap::new(),
            failed_at: BTreeMap::new(),
            loads: BTreeMap::new(),
            cell_waits: BTreeMap::new(),
            oid_pool: VecDeque::new(),
            oid_waiters: VecDeque::new(),
            oids_asked: false,
            begins: BTreeMap::new(),
            txns: BTreeMap::new(),
            next_txn: 1,
            next_gen: 1,
            inflight: 0,
            held: VecDeque::new(),
            queries: BTreeMap::new(),
            next_query: 1,
        }
    }

    /// The cache, for the library's threads.
    pub fn cache(&self) -> SharedCache {
        self.cache.clone()
    }

    pub fn last_tid(&self) -> Option<Tid> {
        self.last_tid
    }

    pub fn partition_table(&self) -> Option<&PartitionTable> {
        self.pt.as_ref()
    }

    /// Calls not answered yet.
    pub fn pending_calls(&self) -> usize {
        self.calls.len()
    }

    /// Bookkeeping that must hold after every event (the property tests check it).
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.calls.len() > MAX_PENDING_CALLS {
            return Err("too many pending calls".into());
        }
        let counted: u64 = self
            .txns
            .values()
            .flat_map(|t| t.objects.values())
            .map(|o| o.bytes)
            .sum();
        if counted != self.inflight {
            return Err(format!("in flight {} != {counted}", self.inflight));
        }
        for t in self.txns.values() {
            let pending = t
                .objects
                .values()
                .flat_map(|o| o.cells.values())
                .filter(|a| **a == Ans::Pending)
                .count();
            if pending != t.pending {
                return Err(format!("txn pending {} != {pending}", t.pending));
            }
        }
        if self.snapshot && self.master.conn().is_none() {
            return Err("a snapshot without a primary".into());
        }
        Ok(())
    }

    fn ready(&self) -> bool {
        self.snapshot && self.master.conn().is_some() && self.pt.is_some() && self.nid.is_some()
    }

    /// Answer a call, if it is still pending (each call is answered once).
    fn reply(&mut self, cx: &mut Ctx, id: CallId, result: Result<Outcome, ClientError>) {
        if self.calls.remove(&id) {
            cx.reply(Reply { id, result });
        }
    }

    fn with_cache<R>(&self, f: impl FnOnce(&mut Cache) -> R) -> R {
        f(&mut cache::lock(&self.cache))
    }

    fn partition(&self, id: u64) -> Option<u32> {
        let n = self.pt.as_ref()?.partitions();
        (n > 0).then(|| (id % n as u64) as u32)
    }

    // ---- calls ----

    fn call(&mut self, cx: &mut Ctx, call: Call) {
        if self.closed {
            cx.reply(Reply {
                id: call.id,
                result: Err(ClientError::Closed),
            });
            return;
        }
        if self.calls.contains(&call.id) {
            cx.reply(Reply {
                id: call.id,
                result: Err(ClientError::Invalid("call id already pending".into())),
            });
            return;
        }
        if self.calls.len() >= MAX_PENDING_CALLS {
            cx.reply(Reply {
                id: call.id,
                result: Err(ClientError::Unavailable("too many pending calls".into())),
            });
            return;
        }
        self.calls.insert(call.id);
        self.serve(cx, call);
    }

    /// Serve a registered call (also a parked one, once the primary is back).
    fn serve(&mut self, cx: &mut Ctx, call: Call) {
        let id = call.id;
        let writes = matches!(
            call.op,
            Op::NewOids { .. }
                | Op::TpcBegin { .. }
                | Op::Store { .. }
                | Op::CheckCurrentSerial { .. }
                | Op::Vote { .. }
                | Op::Finish { .. }
                | Op::UndoSerials { .. }
                | Op::Pack { .. }
        );
        if writes && self.cfg.read_only {
            return self.reply(cx, id, Err(ClientError::ReadOnly));
        }
        match call.op {
            Op::LastTransaction => self.reply(cx, id, Ok(Outcome::Tid(self.last_tid))),
            Op::Load { oid, at, before } => self.load(cx, call, oid, at, before),
            Op::NewOids { count } => {
                if count > MAX_NEW_OIDS {
                    let e = ClientError::Invalid(format!("at most {MAX_NEW_OIDS} oids at once"));
                    return self.reply(cx, id, Err(e));
                }
                let deadline = cx.elapsed() + CALL_DEADLINE;
                self.oid_waiters.push_back((id, count, deadline));
                self.serve_oids(cx);
            }
            Op::Sync => {
                if !self.ready() {
                    return self.park(cx, call);
                }
                let m = self.master.conn().expect("ready");
                self.links
                    .ask(cx, m, Packet::AskLastTransaction, Asked::Sync(id));
            }
            Op::TpcBegin { tid } => {
                if self.txns.len() >= MAX_TXNS {
                    let e = ClientError::Unavailable("too many transactions in progress".into());
                    return self.reply(cx, id, Err(e));
                }
                if !self.ready() {
                    return self.park(cx, call);
                }
                let m = self.master.conn().expect("ready");
                self.begins.insert(id, cx.elapsed() + CALL_DEADLINE);
                let begin = Packet::AskBeginTransaction { tid };
                self.links.ask_waiting(cx, m, begin, Asked::Begin(id));
            }
            Op::Store {
                data: Some(_),
                data_serial: Some(_),
                ..
            } => {
                let e = ClientError::Invalid("a store has data or a backpointer, not both".into());
                self.reply(cx, id, Err(e))
            }
            Op::Store {
                txn,
                oid,
                serial,
                data,
                data_serial,
            } => {
                let what = match data_serial {
                    Some(s) => Write::Backpointer(s),
                    None => Write::Data(data),
                };
                self.write(cx, id, txn, oid, serial, what)
            }
            Op::CheckCurrentSerial { txn, oid, serial } => {
                self.write(cx, id, txn, oid, serial, Write::Check)
            }
            Op::Vote {
                txn,
                user,
                description,
                extension,
            } => {
                let meta = Meta {
                    user,
                    description,
                    extension,
                };
                self.vote(cx, id, txn, meta)
            }
            Op::Finish { txn } => self.finish(cx, id, txn),
            Op::Abort { txn } => self.abort(cx, id, txn),
            Op::TransactionInfo { .. }
            | Op::UndoSerials { .. }
            | Op::History { .. }
            | Op::UndoLog { .. }
            | Op::TidsFrom { .. }
            | Op::Pack { .. } => self.serve_query(cx, call),
        }
    }

    /// The calls that read the transaction log, history and undo information, and pack.
    fn serve_query(&mut self, cx: &mut Ctx, call: Call) {
        if !self.ready() {
            return self.park(cx, call);
        }
        let id = call.id;
        let part = |s: &Self, x: u64| s.partition(x).expect("ready: a table");
        let np = self.pt.as_ref().map_or(0, |pt| pt.partitions());
        let (op, parts) = match call.op {
            Op::TransactionInfo { tid } => (QueryOp::TransactionInfo(tid), vec![part(self, tid.0)]),
            Op::UndoSerials { txn, undone, oids } => {
                let ttid = match Self::open_txn(&mut self.txns, txn) {
                    Ok(t) => t.ttid,
                    Err(e) => return self.reply(cx, id, Err(e)),
                };
                let Some(last) = self.last_tid else {
                    return self.reply(cx, id, Err(ClientError::UnknownTransaction(undone)));
                };
                let mut seen = BTreeSet::new();
                let oids: Vec<Oid> = oids.into_iter().filter(|o| seen.insert(*o)).collect();
                let mut by_part: BTreeMap<u32, Vec<Oid>> = BTreeMap::new();
                for &o in &oids {
                    by_part.entry(part(self, o.0)).or_default().push(o);
                }
                let parts = by_part.keys().copied().collect();
                let op = QueryOp::UndoSerials {
                    ttid,
                    ltid: cache::next_tid(last),
                    undone,
                    oids,
                    by_part,
                };
                (op, parts)
            }
            Op::History { oid, size } => (QueryOp::History { oid, size }, vec![part(self, oid.0)]),
            Op::UndoLog { first, last } => {
                if last <= first {
                    return self.reply(cx, id, Ok(Outcome::Tids(vec![])));
                }
                (QueryOp::UndoLog { first, last }, (0..np).collect())
            }
            Op::TidsFrom { min, max, limit } => {
                // Never past our snapshot: its invalidations are not delivered yet.
                let max = match self.last_tid {
                    Some(l) => max.min(l),
                    None => return self.reply(cx, id, Ok(Outcome::Tids(vec![]))),
                };
                if min > max || limit == 0 {
                    return self.reply(cx, id, Ok(Outcome::Tids(vec![])));
                }
                (QueryOp::TidsFrom { min, max, limit }, (0..np).collect())
            }
            Op::Pack { tid } => {
                if tid == Tid::ZERO || self.last_tid.is_none_or(|l| tid > l) {
                    let e = ClientError::Invalid(format!(
                        "pack at {tid}: not in (0, last transaction {:?}]",
                        self.last_tid
                    ));
                    return self.reply(cx, id, Err(e));
                }
                let m = self.master.conn().expect("ready");
                // Packing a large database takes long: no deadline but the primary's link.
                self.links
                    .ask_waiting(cx, m, Packet::AskPack { tid }, Asked::Pack(id));
                return;
            }
            other => {
                let e = ClientError::Invalid(format!("not a query: {other:?}"));
                return self.reply(cx, id, Err(e));
            }
        };
        self.query(cx, id, op, parts);
    }

    fn park(&mut self, cx: &mut Ctx, call: Call) {
        self.parked.push_back((cx.elapsed() + CALL_DEADLINE, call));
    }

    /// The primary and a snapshot are there: serve what waited for them.
    fn resume(&mut self, cx: &mut Ctx) {
        let parked = std::mem::take(&mut self.parked);
        for (deadline, call) in parked {
            if self.ready() {
                self.serve(cx, call);
            } else {
                self.parked.push_back((deadline, call));
            }
        }
        self.serve_oids(cx);
        let lost: Vec<TxnRef> = self
            .txns
            .iter()
            .filter(|(_, t)| matches!(t.phase, Phase::FinishLost { asking: false, .. }))
            .map(|(r, _)| *r)
            .collect();
        for r in lost {
            self.ask_final(cx, r);
        }
    }

    // ---- the primary ----

    fn on_master_message(
        &mut self,
        cx: &mut Ctx,
        conn: ConnId,
        asked: Option<Asked>,
        msg: Message,
    ) {
        let id_answer = asked == Some(Asked::MasterId);
        if let Some(a) = asked.filter(|a| *a != Asked::MasterId) {
            return self.master_answer(cx, conn, a, msg.packet);
        }
        let Some(ev) = self
            .master
            .on_message(cx, &mut self.links, conn, self.nid, msg, id_answer)
        else {
            return;
        };
        match ev {
            LinkEvent::Identified { your_nid } => {
                let renamed = self.nid.is_some() && your_nid != self.nid;
                self.nid = your_nid;
                if renamed {
                    // Storages know us by the old id, which the primary will say is gone.
                    let conns: Vec<ConnId> = self.storages.values().copied().collect();
                    for c in conns {
                        self.close_storage(cx, c, CloseReason::Protocol("new node id".into()));
                    }
                }
                self.snapshot = false;
                self.links
                    .ask(cx, conn, Packet::AskLastTransaction, Asked::Snapshot);
            }
            LinkEvent::Told(state) => self.stop(cx, &format!("told {state} by the primary")),
            LinkEvent::ClusterState(_) | LinkEvent::Lost => {}
            LinkEvent::Message(msg) => match msg.packet {
                Packet::SendPartitionTable {
                    ptid,
                    num_replicas,
                    rows,
                } => {
                    if let Err(why) = crate::pt::check_table(ptid, &rows) {
                        return self.master_protocol_error(cx, conn, why);
                    }
                    self.pt = Some(PartitionTable::from_rows(ptid, num_replicas, &rows));
                    if self.ready() {
                        self.resume(cx);
                    }
                }
                Packet::NotifyPartitionChanges {
                    ptid,
                    num_replicas,
                    changes,
                } => {
                    self.apply_pt_changes(cx, conn, ptid, num_replicas, &changes);
                }
                Packet::InvalidateObjects { tid, oids } => self.invalidated(cx, tid, oids),
                other => debug!("client: ignoring {} from the primary", other.name()),
            },
        }
    }

    fn master_protocol_error(&mut self, cx: &mut Ctx, conn: ConnId, why: String) {
        warn!("client: protocol error from the primary: {why}: reconnecting");
        self.reconnect(cx, conn, CloseReason::Protocol(why));
    }

    fn master_answer(&mut self, cx: &mut Ctx, conn: ConnId, asked: Asked, packet: Packet) {
        match (asked, packet) {
            (Asked::Snapshot, Packet::AnswerLastTransaction { tid }) => {
                self.snapshot_taken(cx, tid)
            }
            (Asked::Sync(call), Packet::AnswerLastTransaction { tid }) => {
                let tid = tid.max(self.last_tid);
                self.reply(cx, call, Ok(Outcome::Tid(tid)));
            }
            (Asked::NewOids(count), Packet::AnswerNewOIDs { oids }) => {
                self.oids_asked = false;
                if oids.len() != count as usize {
                    let why = format!("asked {count} oids, got {}", oids.len());
                    return self.master_protocol_error(cx, conn, why);
                }
                self.oid_pool.extend(oids);
                self.serve_oids(cx);
            }
            (Asked::Begin(call), Packet::AnswerBeginTransaction { ttid }) => {
                if self.begins.remove(&call).is_none() || !self.calls.contains(&call) {
                    // Its caller was answered already (it timed out, or the client is
                    // closing): nobody will finish or abort it.
                    let abort = Packet::AbortTransaction { ttid, nids: vec![] };
                    return self.links.notify(cx, conn, abort);
                }
                let txn = self.next_txn;
                self.next_txn += 1;
                self.txns.insert(
                    txn,
                    Txn {
                        ttid,
                        phase: Phase::Open,
                        failed: None,
                        objects: BTreeMap::new(),
                        pending: 0,
                        vote: None,
                        used: BTreeSet::new(),
                        lost: BTreeSet::new(),
                    },
                );
                self.reply(cx, call, Ok(Outcome::Began { txn, ttid }));
            }
            (Asked::Begin(call), Packet::Error { code, message }) => {
                if self.begins.remove(&call).is_none() {
                    return;
                }
                let e = match code {
                    ErrorCode::NotReady => ClientError::Unavailable(message),
                    _ => ClientError::TransactionFailed(format!("{code}: {message}")),
                };
                self.reply(cx, call, Err(e));
            }
            (Asked::FailedVote(txn), Packet::Error { code, message }) => {
                if code == ErrorCode::Ack {
                    self.voted(cx, txn);
                } else {
                    self.fail_txn(cx, txn, format!("{code}: {message}"));
                }
            }
            (Asked::Finish(txn), Packet::AnswerTransactionFinished { ttid, tid }) => {
                let Some(t) = self.txns.get(&txn) else { return };
                if ttid != t.ttid || tid < ttid || tid >= Tid::MAX {
                    let why = format!("finish answer {ttid}/{tid} for {}", t.ttid);
                    // The finish fails with the link: its outcome is looked for (6.11).
                    return self.master_protocol_error(cx, conn, why);
                }
                self.committed(cx, txn, tid, true);
            }
            (Asked::Finish(txn), Packet::Error { code, message }) => {
                self.fail_txn(cx, txn, format!("{code}: {message}"));
            }
            (Asked::Pack(call), Packet::AnswerPack { status }) => {
                let result = if status {
                    Ok(Outcome::Done)
                } else {
                    Err(ClientError::Unavailable("the cluster did not pack".into()))
                };
                self.reply(cx, call, result);
            }
            (Asked::Pack(call), Packet::Error { code, message }) => {
                let why = format!("pack: {code}: {message}");
                let e = match code {
                    ErrorCode::ProtocolError => ClientError::Invalid(why),
                    _ => ClientError::Unavailable(why),
                };
                self.reply(cx, call, Err(e));
            }
            (Asked::FinalTid(txn), Packet::AnswerFinalTID { tid }) => match tid {
                None => self.fail_txn(cx, txn, "aborted (the primary says)".into()),
                Some(Tid::MAX) => self.ask_final_storage(cx, txn),
                Some(tid) => self.committed(cx, txn, tid, false),
            },
            (asked, packet) => {
                // An error or an answer of the wrong type: the request failed.
                debug!("client: {} answers {asked:?}", packet.name());
                match asked {
                    Asked::Snapshot | Asked::NewOids(_) => {
                        let why = format!("{} answers {asked:?}", packet.name());
                        if matches!(packet, Packet::Error { .. }) {
                            self.oids_asked = false;
                            self.request_failed(cx, conn, asked, Failure::TimedOut);
                        } else {
                            self.master_protocol_error(cx, conn, why);
                        }
                    }
                    other => self.request_failed(cx, conn, other, Failure::Closed),
                }
            }
        }
    }

    fn snapshot_taken(&mut self, cx: &mut Ctx, tid: Option<Tid>) {
        if self.had_snapshot && tid != self.last_tid {
            info!(
                "client: the last transaction is now {tid:?}, was {:?}: invalidating all",
                self.last_tid
            );
            let back = tid < self.last_tid;
            self.with_cache(|c| if back { c.clear() } else { c.drop_current() });
            cx.notice(Notice::InvalidateAll { tid });
        }
        self.last_tid = tid;
        self.with_cache(|c| c.set_last_tid(tid));
        self.had_snapshot = true;
        self.snapshot = true;
        if self.ready() {
            self.resume(cx);
        }
    }

    fn invalidated(&mut self, cx: &mut Ctx, tid: Tid, oids: Vec<Oid>) {
        if !self.snapshot {
            // The snapshot's answer will cover it.
            return;
        }
        for &oid in &oids {
            self.load_invalidated(oid, tid);
        }
        let last = self.last_tid.max(Some(tid));
        self.last_tid = last;
        self.with_cache(|c| {
            for &oid in &oids {
                c.invalidate(oid, tid);
            }
            c.set_last_tid(last);
        });
        cx.notice(Notice::Invalidate { tid, oids });
    }

    /// Transaction `tid` changed `oid`: tell its loads in flight.
    fn load_invalidated(&mut self, oid: Oid, tid: Tid) {
        let range = LoadKey::first(oid)..=LoadKey::last(oid);
        for (_, l) in self.loads.range_mut(range) {
            l.invalidated.insert(tid);
            if l.invalidated.len() > MAX_LOAD_INVALIDATIONS {
                l.invalidated.pop_last();
                l.overflow = true;
            }
        }
    }

    fn master_lost(&mut self, cx: &mut Ctx) {
        self.snapshot = false;
        for l in self.loads.values_mut() {
            l.blind = true;
        }
        self.pt = None;
        self.oid_pool.clear();
        self.oids_asked = false;
        let refs: Vec<TxnRef> = self.txns.keys().copied().collect();
        for r in refs {
            let Some(t) = self.txns.get_mut(&r) else {
                continue;
            };
            match t.phase {
                Phase::Finishing(_) => {}
                Phase::FinishLost { ref mut asking, .. } => *asking = false,
                _ => self.fail_txn(cx, r, "lost the primary master".into()),
            }
        }
    }

    // ---- OIDs ----

    fn serve_oids(&mut self, cx: &mut Ctx) {
        while let Some(&(call, count, _)) = self.oid_waiters.front() {
            if self.oid_pool.len() < count as usize {
                break;
            }
            self.oid_waiters.pop_front();
            let oids: Vec<Oid> = self.oid_pool.drain(..count as usize).collect();
            self.reply(cx, call, Ok(Outcome::Oids(oids)));
        }
        let Some(&(_, count, _)) = self.oid_waiters.front() else {
            return;
        };
        if self.oids_asked || !self.ready() {
            return;
        }
        let m = self.master.conn().expect("ready");
        let want = OID_BATCH
            .max(count - self.oid_pool.len() as u32)
            .min(MASTER_MAX_OIDS);
        self.oids_asked = true;
        self.links.ask(
            cx,
            m,
            Packet::AskNewOIDs { count: want },
            Asked::NewOids(want),
        );
    }

    // ---- storages ----

    /// A running storage's address, if the primary told us one.
    fn storage_usable(&self, nid: Nid) -> bool {
        self.master
            .nodes()
            .get(nid)
            .is_some_and(|n| n.state == NodeState::Running && n.address.is_some())
    }

    /// Send to a storage, connecting and identifying first if needed. False if it cannot
    /// be reached at all (nothing sent; nothing will be reported).
    /// Send a request to a storage; false if its connection is gone.
    fn ask_storage(&mut self, cx: &mut Ctx, conn: ConnId, packet: Packet, a: Asked) -> bool {
        match a {
            // Waiting for locks held by other transactions is not a failure of the storage.
            Asked::Write { .. } | Asked::Relock { .. } | Asked::Vote(..) => {
                self.links.ask_waiting(cx, conn, packet, a).is_some()
            }
            _ => self.links.ask(cx, conn, packet, a).is_some(),
        }
    }

    fn send_storage(
        &mut self,
        cx: &mut Ctx,
        nid: Nid,
        packet: Packet,
        asked: Option<Asked>,
    ) -> bool {
        if let Some(&conn) = self.storages.get(&nid) {
            if let Some(Peer::Storage(sp)) = self.links.get_mut(conn) {
                if !sp.ready {
                    sp.queue.push((packet, asked));
                    return true;
                }
                return match asked {
                    Some(a) => self.ask_storage(cx, conn, packet, a),
                    None => {
                        self.links.notify(cx, conn, packet);
                        true
                    }
                };
            }
            self.storages.remove(&nid);
        }
        let Some(own) = self.nid else { return false };
        if !self.storage_usable(nid) {
            return false;
        }
        let Some(address) = self.master.nodes().get(nid).and_then(|n| n.address.clone()) else {
            return false;
        };
        let conn = cx.connect(&address);
        let sp = StoragePeer {
            nid,
            ready: false,
            queue: vec![(packet, asked)],
        };
        self.links.insert(cx, conn, Peer::Storage(sp));
        self.storages.insert(nid, conn);
        let req = Packet::RequestIdentification {
            node_type: NodeType::Client,
            nid: Some(own),
            address: None,
            cluster_name: self.cfg.cluster.clone(),
            id_timestamp: None,
            extra: IdentificationExtra {
                read_only: self.cfg.read_only,
                ..Default::default()
            },
        };
        self.links.ask(cx, conn, req, Asked::StorageId(nid));
        true
    }

    fn on_storage_message(
        &mut self,
        cx: &mut Ctx,
        conn: ConnId,
        nid: Nid,
        asked: Option<Asked>,
        msg: Message,
    ) {
        match asked {
            Some(Asked::StorageId(_)) => match msg.packet {
                Packet::AcceptIdentification {
                    node_type: NodeType::Storage,
                    ..
                } => {
                    let queue = match self.links.get_mut(conn) {
                        Some(Peer::Storage(sp)) => {
                            sp.ready = true;
                            std::mem::take(&mut sp.queue)
                        }
                        _ => return,
                    };
                    for (packet, asked) in queue {
                        match asked {
                            Some(a) => {
                                self.ask_storage(cx, conn, packet, a);
                            }
                            None => self.links.notify(cx, conn, packet),
                        }
                    }
                }
                other => {
                    warn!("client: storage {nid} refused us: {other:?}");
                    self.close_storage(cx, conn, CloseReason::Protocol("refused".into()));
                }
            },
            Some(a) => self.storage_answer(cx, conn, nid, a, msg.packet),
            None => match msg.packet {
                Packet::NotifyDeadlock { ttid, oid } => self.deadlock(cx, nid, ttid, oid),
                other => debug!("client: ignoring {} from storage {nid}", other.name()),
            },
        }
    }

    fn close_storage(&mut self, cx: &mut Ctx, conn: ConnId, reason: CloseReason) {
        if let Some(peer) = self.links.close(cx, conn) {
            self.on_closed(cx, conn, peer, reason);
        }
    }

    fn storage_answer(
        &mut self,
        cx: &mut Ctx,
        conn: ConnId,
        nid: Nid,
        asked: Asked,
        packet: Packet,
    ) {
        match asked {
            Asked::Load(key, _) => self.load_answered(cx, conn, key, nid, packet),
            Asked::Query { q, parts, .. } => self.query_answered(cx, conn, nid, q, parts, packet),
            Asked::Write { txn, oid, gen, .. } => {
                if let Packet::Error {
                    code: ErrorCode::UndoPackError,
                    message,
                } = &packet
                {
                    // The data an undo points back to is gone: no cell would take it.
                    let why = format!("undo of {oid}: {message} (packed away)");
                    self.fail_txn(cx, txn, why);
                }
                let ans = match packet {
                    Packet::AnswerStoreObject { conflict }
                    | Packet::AnswerCheckCurrentSerial { conflict } => match conflict {
                        None => Ans::Locked,
                        Some(Tid::ZERO) => Ans::Lockless,
                        Some(t) => Ans::Conflict(t),
                    },
                    _ => Ans::Failed,
                };
                self.write_answered(cx, txn, oid, nid, gen, ans);
            }
            Asked::Relock { txn, oid, gen, .. } => {
                let ans = match packet {
                    Packet::AnswerRelockObject { conflict: None } => Ans::Locked,
                    // A relock that did not lock again is never a success: a conflict,
                    // or a failure when it names no committed serial.
                    Packet::AnswerRelockObject {
                        conflict: Some(Relocked { conflict, .. }),
                    } if conflict != Tid::ZERO => Ans::Conflict(conflict),
                    _ => Ans::Failed,
                };
                self.write_answered(cx, txn, oid, nid, gen, ans);
            }
            Asked::Vote(txn, _) => {
                let ok = matches!(
                    packet,
                    Packet::AnswerStoreTransaction | Packet::AnswerVoteTransaction
                );
                self.vote_answered(cx, txn, nid, ok);
            }
            Asked::FinalTidStorage(txn, _) => match packet {
                Packet::AnswerFinalTID { tid: Some(tid) } => self.committed(cx, txn, tid, false),
                Packet::AnswerFinalTID { tid: None } => {
                    self.fail_txn(cx, txn, "aborted (the storage says)".into())
                }
                // Its cell is not readable (our table is behind): ask another.
                Packet::Error {
                    code: ErrorCode::NonReadableCell,
                    ..
                } => self.ask_final_storage_but(cx, txn, BTreeSet::from([nid])),
                _ => {
                    self.request_failed(cx, conn, Asked::FinalTidStorage(txn, nid), Failure::Closed)
                }
            },
            other => debug!("client: unexpected answer for {other:?} from storage {nid}"),
        }
    }

    // ---- loads ----

    fn load(&mut self, cx: &mut Ctx, call: Call, oid: Oid, at: Option<Tid>, before: Option<Tid>) {
        let id = call.id;
        if at.is_some() && before.is_some() {
            let e = ClientError::Invalid("a load takes `at` or `before`, not both".into());
            return self.reply(cx, id, Err(e));
        }
        let hit = self.with_cache(|c| c.get(oid, at, before));
        if let Some(l) = hit {
            return self.reply(cx, id, Ok(Outcome::Loaded(l)));
        }
        if !self.ready() {
            return self.park(cx, call);
        }
        let before = match (at, before) {
            (None, None) => match self.last_tid {
                Some(l) => Some(cache::next_tid(l)),
                None => return self.reply(cx, id, Err(ClientError::DoesNotExist(oid))),
            },
            _ => before,
        };
        let key = LoadKey { oid, at, before };
        if let Some(l) = self.loads.get_mut(&key) {
            l.waiters.push(id);
            return;
        }
        let latest = at.is_none() && before.is_some_and(|b| self.last_tid.is_some_and(|l| b > l));
        self.loads.insert(
            key,
            Inflight {
                waiters: vec![id],
                tried: BTreeSet::new(),
                wrong: None,
                invalidated: BTreeSet::new(),
                overflow: false,
                blind: false,
                latest,
            },
        );
        self.load_send(cx, key);
    }

    /// Send a load to a readable cell not tried yet, or fail it.
    fn load_send(&mut self, cx: &mut Ctx, key: LoadKey) {
        let Some(l) = self.loads.get_mut(&key) else {
            return;
        };
        let mut tried = std::mem::take(&mut l.tried);
        let packet = Packet::AskObject {
            oid: key.oid,
            at: key.at,
            before: key.before,
        };
        let sent = self.ask_readable(cx, key.oid.0, &mut tried, &packet, |nid| {
            Asked::Load(key, nid)
        });
        let Some(l) = self.loads.get_mut(&key) else {
            return;
        };
        l.tried = tried;
        if sent.is_none() && l.wrong.is_none() && l.tried.is_empty() {
            // No cell to try yet: wait for the primary to tell one, up to the deadline.
            let now = cx.elapsed();
            let deadline = *self.cell_waits.entry(key).or_insert(now + CALL_DEADLINE);
            if deadline > now {
                return;
            }
        }
        self.cell_waits.remove(&key);
        if sent.is_none() {
            let Some(l) = self.loads.get(&key) else {
                return;
            };
            let e = match l.wrong {
                Some(serial) => ClientError::WrongChecksum {
                    oid: key.oid,
                    serial,
                },
                None => ClientError::Unavailable(format!("no readable cell for {}", key.oid)),
            };
            self.load_done(cx, key, Err(e));
        }
    }

    /// Send `packet` to a readable cell of partition(id) not in `tried`, going on to the
    /// next while a cell cannot be reached (each into `tried`): the cell asked, or None
    /// when none is left.
    fn ask_readable(
        &mut self,
        cx: &mut Ctx,
        id: u64,
        tried: &mut BTreeSet<Nid>,
        packet: &Packet,
        asked: impl Fn(Nid) -> Asked,
    ) -> Option<Nid> {
        loop {
            let nid = self.pick_readable(cx, id, tried)?;
            if self.send_storage(cx, nid, packet.clone(), Some(asked(nid))) {
                return Some(nid);
            }
            tried.insert(nid);
        }
    }

    /// A random readable cell of partition(id) on a usable node not in `skip`, preferring
    /// nodes that did not fail recently.
    fn pick_readable(&mut self, cx: &mut Ctx, id: u64, skip: &BTreeSet<Nid>) -> Option<Nid> {
        let part = self.partition(id)?;
        let pt = self.pt.as_ref()?;
        let now = cx.elapsed();
        let cells: Vec<Nid> = pt
            .row(part)
            .filter(|(n, s)| s.is_readable() && !skip.contains(n) && self.storage_usable(*n))
            .map(|(n, _)| n)
            .collect();
        let fresh: Vec<Nid> = cells
            .iter()
            .copied()
            .filter(|n| {
                self.failed_at
                    .get(n)
                    .is_none_or(|t| now.saturating_sub(*t) >= FAILED_RECENTLY)
            })
            .collect();
        let pool = if fresh.is_empty() { cells } else { fresh };
        if pool.is_empty() {
            return None;
        }
        Some(*crate::rng::pick(cx.rng(), &pool))
    }

    /// Send again the loads waiting for a readable cell (failing those past their
    /// deadline).
    fn retry_cell_waits(&mut self, cx: &mut Ctx) {
        let now = cx.elapsed();
        let waits: Vec<(LoadKey, Duration)> =
            self.cell_waits.iter().map(|(k, d)| (*k, *d)).collect();
        for (key, deadline) in waits {
            if !self.loads.contains_key(&key) {
                self.cell_waits.remove(&key);
            } else if self.ready() || deadline <= now {
                // Past the deadline, this fails it.
                self.load_send(cx, key);
            }
        }
    }

    fn load_done(&mut self, cx: &mut Ctx, key: LoadKey, result: Result<Outcome, ClientError>) {
        self.cell_waits.remove(&key);
        if let Some(l) = self.loads.remove(&key) {
            for w in l.waiters {
                self.reply(cx, w, result.clone());
            }
        }
    }

    fn load_retry(&mut self, cx: &mut Ctx, key: LoadKey, nid: Nid) {
        if let Some(l) = self.loads.get_mut(&key) {
            l.tried.insert(nid);
            self.load_send(cx, key);
        }
    }

    fn load_answered(
        &mut self,
        cx: &mut Ctx,
        conn: ConnId,
        key: LoadKey,
        nid: Nid,
        packet: Packet,
    ) {
        let oid = key.oid;
        match packet {
            Packet::AnswerObject {
                oid: aoid,
                serial,
                next_serial,
                compression,
                checksum,
                data,
                data_serial,
            } => {
                let sane = aoid == oid
                    && key.at.is_none_or(|at| at == serial)
                    && key.before.is_none_or(|b| serial < b)
                    && next_serial.is_none_or(|n| n > serial)
                    && compression <= 1;
                if !sane {
                    warn!("client: storage {nid} answered an impossible object for {oid}");
                    self.close_storage(cx, conn, CloseReason::Protocol("bad AnswerObject".into()));
                    return self.load_retry(cx, key, nid);
                }
                let data = match data {
                    None => None,
                    Some(d) => {
                        let ok = <[u8; 20]>::from(Sha1::digest(&d.0)) == checksum;
                        let plain = if !ok {
                            None
                        } else if compression == 1 {
                            decompress(&d.0)
                        } else {
                            Some(d.0)
                        };
                        match plain {
                            Some(p) => Some(p),
                            None => {
                                warn!("client: storage {nid}: wrong checksum or data for {oid} at {serial}");
                                if let Some(l) = self.loads.get_mut(&key) {
                                    l.wrong = Some(serial);
                                }
                                return self.load_retry(cx, key, nid);
                            }
                        }
                    }
                };
                let (invalidated, unknown, latest) =
                    self.loads.get(&key).map_or((None, true, false), |l| {
                        let above = l.invalidated.range((Excluded(serial), Unbounded)).next();
                        // Nothing kept above it but some left out: its end is unknown.
                        let unknown = l.blind || (above.is_none() && l.overflow);
                        (above.copied(), unknown, l.latest)
                    });
                let next_serial = next_serial.or(invalidated);
                let shared: Option<Arc<[u8]>> = data.as_deref().map(Arc::from);
                if next_serial.is_some() || (latest && !unknown) {
                    self.with_cache(|c| c.store(oid, serial, next_serial, shared, data_serial));
                }
                let loaded = Loaded {
                    data,
                    serial,
                    next_serial,
                    data_serial,
                };
                self.load_done(cx, key, Ok(Outcome::Loaded(loaded)));
            }
            Packet::Error {
                code: ErrorCode::OidDoesNotExist,
                ..
            } => self.load_done(cx, key, Err(ClientError::DoesNotExist(oid))),
            Packet::Error {
                code: ErrorCode::OidNotFound,
                ..
            } => self.load_done(cx, key, Err(ClientError::NotFound(oid))),
            Packet::Error { code, message } => {
                debug!("client: storage {nid} cannot load {oid}: {code}: {message}");
                self.load_retry(cx, key, nid);
            }
            other => {
                warn!(
                    "client: storage {nid} answered a load with {}",
                    other.name()
                );
                self.close_storage(cx, conn, CloseReason::Protocol("bad answer".into()));
                self.load_retry(cx, key, nid);
            }
        }
    }

    // ---- transactions ----

    /// The transaction a write-phase call names, or the reply that refuses it.
    fn open_txn(txns: &mut BTreeMap<TxnRef, Txn>, txn: TxnRef) -> Result<&mut Txn, ClientError> {
        let t = txns
            .get_mut(&txn)
            .ok_or_else(|| ClientError::Invalid(format!("unknown transaction {txn}")))?;
        if let Some(why) = &t.failed {
            return Err(ClientError::TransactionFailed(why.clone()));
        }
        if !matches!(t.phase, Phase::Open) || t.vote.is_some() {
            return Err(ClientError::Invalid(format!(
                "transaction {txn} is voting or voted"
            )));
        }
        Ok(t)
    }

    /// A store (of data, a deletion or a backpointer) or a readCurrent check.
    fn write(
        &mut self,
        cx: &mut Ctx,
        call: CallId,
        txn: TxnRef,
        oid: Oid,
        serial: Tid,
        what: Write,
    ) {
        let compress = self.cfg.compress;
        let Some(part) = self.partition(oid.0) else {
            let failed = self.txns.contains_key(&txn);
            if failed {
                self.fail_txn(cx, txn, "no partition table".into());
            }
            return self.reply_txn_error(cx, call, txn);
        };
        let cells: Vec<Nid> = self
            .pt
            .as_ref()
            .map(|pt| pt.row(part).map(|(n, _)| n).collect())
            .unwrap_or_default();
        let t = match Self::open_txn(&mut self.txns, txn) {
            Ok(t) => t,
            Err(e) => return self.reply(cx, call, Err(e)),
        };
        let check_only = matches!(what, Write::Check);
        if check_only && t.objects.get(&oid).is_some_and(|o| !o.check_only) {
            // Already write-locked by our store.
            return self.reply(cx, call, Ok(Outcome::Done));
        }
        if let Some(old) = t.objects.remove(&oid) {
            t.pending -= old.cells.values().filter(|a| **a == Ans::Pending).count();
            self.inflight -= old.bytes;
        }
        let ttid = t.ttid;
        let data_serial = match what {
            Write::Backpointer(s) => Some(s),
            _ => None,
        };
        let (packet, plain) = match what {
            Write::Check => (Packet::AskCheckCurrentSerial { ttid, oid, serial }, None),
            // NEO sends a backpointer as a deletion that names the serial it points to.
            Write::Data(None) | Write::Backpointer(_) => (
                Packet::AskStoreObject {
                    oid,
                    serial,
                    compression: 0,
                    checksum: ZERO_HASH,
                    data: None,
                    data_serial,
                    ttid,
                },
                None,
            ),
            Write::Data(Some(plain)) => {
                let (compression, stored) = match compress.then(|| zlib(&plain)).flatten() {
                    Some(z) if z.len() < plain.len() => (1, z),
                    _ => (0, plain.clone()),
                };
                let checksum = Sha1::digest(&stored).into();
                let packet = Packet::AskStoreObject {
                    oid,
                    serial,
                    compression,
                    checksum,
                    data: Some(stored.into()),
                    data_serial: None,
                    ttid,
                };
                (packet, Some(Arc::<[u8]>::from(plain)))
            }
        };
        let size = match &packet {
            Packet::AskStoreObject { data: Some(d), .. } => d.0.len() as u64,
            _ => 0,
        } + 64;
        let gen = self.next_gen;
        self.next_gen += 1;
        let mut answers = BTreeMap::new();
        let mut sent = 0;
        for nid in cells {
            let asked = Asked::Write { txn, oid, nid, gen };
            let ok = self.send_storage(cx, nid, packet.clone(), Some(asked));
            answers.insert(nid, if ok { Ans::Pending } else { Ans::Failed });
            if ok {
                sent += 1;
            }
        }
        let bytes = if sent > 0 { size * sent } else { 0 };
        self.inflight += bytes;
        let unreachable: Vec<Nid> = answers
            .iter()
            .filter(|(n, a)| **a == Ans::Failed && self.storage_usable(**n))
            .map(|(n, _)| *n)
            .collect();
        let t = self.txns.get_mut(&txn).expect("checked above");
        t.pending += sent as usize;
        t.used.extend(answers.keys().copied());
        t.lost.extend(unreachable);
        t.objects.insert(
            oid,
            Obj {
                serial,
                data: plain,
                data_serial,
                check_only,
                gen,
                cells: answers,
                bytes,
            },
        );
        if self.inflight > MAX_INFLIGHT_BYTES {
            self.held.push_back(call);
        } else {
            self.reply(cx, call, Ok(Outcome::Done));
        }
    }

    fn reply_txn_error(&mut self, cx: &mut Ctx, call: CallId, txn: TxnRef) {
        let e = match self.txns.get(&txn) {
            None => ClientError::Invalid(format!("unknown transaction {txn}")),
            Some(t) => ClientError::TransactionFailed(t.failed.clone().unwrap_or_default()),
        };
        self.reply(cx, call, Err(e));
    }

    fn write_answered(
        &mut self,
        cx: &mut Ctx,
        txn: TxnRef,
        oid: Oid,
        nid: Nid,
        gen: u64,
        ans: Ans,
    ) {
        let Some(t) = self.txns.get_mut(&txn) else {
            return;
        };
        let Some(o) = t.objects.get_mut(&oid).filter(|o| o.gen == gen) else {
            return;
        };
        // A "conflict" with a serial older than the one we stored on is no conflict: that
        // storage missed a commit (dropped at a failed vote, not told yet) and its check is
        // worthless. Resolving it would rebase our data on the older revision, and the
        // storages that really hold our lock take a second store unchecked.
        let ans = match ans {
            Ans::Conflict(c) if c < o.serial => {
                warn!(
                    "client: {nid} reports {oid} at {c}, older than our {}: stale",
                    o.serial
                );
                Ans::Failed
            }
            a => a,
        };
        match o.cells.get_mut(&nid) {
            Some(a) if *a == Ans::Pending => *a = ans,
            _ => return,
        }
        t.pending -= 1;
        if ans == Ans::Failed {
            t.lost.insert(nid);
        }
        if !o.cells.values().any(|a| *a == Ans::Pending) {
            self.inflight -= o.bytes;
            o.bytes = 0;
            while self.inflight <= MAX_INFLIGHT_BYTES {
                let Some(call) = self.held.pop_front() else {
                    break;
                };
                self.reply(cx, call, Ok(Outcome::Done));
            }
        }
        let t = self.txns.get(&txn).expect("above");
        if t.pending == 0 && t.vote.is_some() {
            self.vote_check(cx, txn);
        }
    }

    fn deadlock(&mut self, cx: &mut Ctx, nid: Nid, ttid: Tid, oid: Oid) {
        let Some((&txn, t)) = self.txns.iter_mut().find(|(_, t)| t.ttid == ttid) else {
            return;
        };
        if !matches!(t.phase, Phase::Open) || t.failed.is_some() {
            return;
        }
        let Some(o) = t.objects.get_mut(&oid) else {
            return;
        };
        if !matches!(o.cells.get(&nid), Some(Ans::Locked | Ans::Conflict(_))) {
            return;
        }
        let gen = o.gen;
        let asked = Asked::Relock { txn, oid, nid, gen };
        if self.send_storage(cx, nid, Packet::AskRelockObject { ttid, oid }, Some(asked)) {
            let t = self.txns.get_mut(&txn).expect("above");
            let o = t.objects.get_mut(&oid).expect("above");
            o.cells.insert(nid, Ans::Pending);
            t.pending += 1;
        }
    }

    fn vote(&mut self, cx: &mut Ctx, call: CallId, txn: TxnRef, meta: Meta) {
        let t = match Self::open_txn(&mut self.txns, txn) {
            Ok(t) => t,
            Err(e) => return self.reply(cx, call, Err(e)),
        };
        t.vote = Some((call, meta));
        if t.pending == 0 {
            self.vote_check(cx, txn);
        }
    }

    /// Every store and check answered: report conflicts, or send the votes.
    fn vote_check(&mut self, cx: &mut Ctx, txn: TxnRef) {
        let Some(t) = self.txns.get_mut(&txn) else {
            return;
        };
        let Some((call, meta)) = t.vote.take() else {
            return;
        };
        let mut conflicts = vec![];
        for (&oid, o) in &t.objects {
            let committed = o
                .cells
                .values()
                .filter_map(|a| match a {
                    Ans::Conflict(t) => Some(*t),
                    _ => None,
                })
                .max();
            if let Some(committed) = committed {
                if o.check_only {
                    let e = ClientError::ReadConflict {
                        oid,
                        serial: o.serial,
                        current: committed,
                    };
                    return self.reply(cx, call, Err(e));
                }
                conflicts.push(Conflict {
                    oid,
                    serial: o.serial,
                    committed,
                    data: o.data.as_deref().map(<[u8]>::to_vec),
                });
            }
        }
        if !conflicts.is_empty() {
            return self.reply(cx, call, Ok(Outcome::Conflicts(conflicts)));
        }
        if let Some(oid) = t
            .objects
            .iter()
            .find(|(_, o)| !o.cells.values().any(|a| *a == Ans::Locked))
            .map(|(oid, _)| *oid)
        {
            self.calls_fail_txn(cx, txn, call, format!("no storage locked {oid}"));
            return;
        }
        let ttid = t.ttid;
        let oids: Vec<Oid> = t.objects.keys().copied().collect();
        let meta_cells: Vec<Nid> = match self.partition(ttid.0) {
            Some(p) => self
                .pt
                .as_ref()
                .map(|pt| pt.row(p).map(|(n, _)| n).collect())
                .unwrap_or_default(),
            None => vec![],
        };
        let t = self.txns.get(&txn).expect("above");
        let others: Vec<Nid> = t
            .used
            .iter()
            .filter(|n| !meta_cells.contains(n) && !t.lost.contains(n))
            .copied()
            .collect();
        let meta_cells: Vec<Nid> = meta_cells
            .into_iter()
            .filter(|n| !t.lost.contains(n))
            .collect();
        let mut waiting = BTreeSet::new();
        let mut lost = vec![];
        for nid in meta_cells {
            let p = Packet::AskStoreTransaction {
                ttid,
                user: meta.user.clone().into(),
                description: meta.description.clone().into(),
                extension: meta.extension.clone().into(),
                oids: oids.clone(),
            };
            if self.send_storage(cx, nid, p, Some(Asked::Vote(txn, nid))) {
                waiting.insert(nid);
            } else if self.storage_usable(nid) {
                lost.push(nid);
            }
        }
        let meta_sent = !waiting.is_empty();
        for nid in others {
            let p = Packet::AskVoteTransaction { ttid };
            if self.send_storage(cx, nid, p, Some(Asked::Vote(txn, nid))) {
                waiting.insert(nid);
            } else if self.storage_usable(nid) {
                lost.push(nid);
            }
        }
        let t = self.txns.get_mut(&txn).expect("above");
        t.used.extend(waiting.iter().copied());
        t.lost.extend(lost);
        if !meta_sent {
            return self.calls_fail_txn(cx, txn, call, "no storage for the metadata".into());
        }
        t.phase = Phase::Voting {
            call,
            waiting,
            meta_ok: false,
        };
    }

    fn vote_answered(&mut self, cx: &mut Ctx, txn: TxnRef, nid: Nid, ok: bool) {
        let meta_part = self.partition(self.txns.get(&txn).map_or(0, |t| t.ttid.0));
        let is_meta = meta_part
            .and_then(|p| self.pt.as_ref().map(|pt| pt.cell(p, nid).is_some()))
            .unwrap_or(false);
        let Some(t) = self.txns.get_mut(&txn) else {
            return;
        };
        let Phase::Voting {
            call,
            waiting,
            meta_ok,
        } = &mut t.phase
        else {
            return;
        };
        if !waiting.remove(&nid) {
            return;
        }
        if ok && is_meta {
            *meta_ok = true;
        }
        if !ok {
            t.lost.insert(nid);
        }
        if !waiting.is_empty() {
            return;
        }
        let (call, meta_ok) = (*call, *meta_ok);
        if !meta_ok {
            return self.calls_fail_txn(cx, txn, call, "no storage kept the metadata".into());
        }
        if t.lost.is_empty() {
            return self.voted(cx, txn);
        }
        let nids: Vec<Nid> = t.lost.iter().copied().collect();
        let ttid = t.ttid;
        let Some(m) = self.master.conn() else {
            return self.calls_fail_txn(cx, txn, call, "lost the primary master".into());
        };
        t.phase = Phase::FailedVote(call);
        self.links.ask(
            cx,
            m,
            Packet::FailedVote { ttid, nids },
            Asked::FailedVote(txn),
        );
    }

    fn voted(&mut self, cx: &mut Ctx, txn: TxnRef) {
        let Some(t) = self.txns.get_mut(&txn) else {
            return;
        };
        let call = match t.phase {
            Phase::Voting { call, .. } | Phase::FailedVote(call) => call,
            _ => return,
        };
        t.phase = Phase::Voted;
        self.reply(cx, call, Ok(Outcome::Done));
    }

    /// Mark a transaction failed and answer its pending call with why.
    fn calls_fail_txn(&mut self, cx: &mut Ctx, txn: TxnRef, call: CallId, why: String) {
        if let Some(t) = self.txns.get_mut(&txn) {
            t.failed = Some(why.clone());
            t.phase = Phase::Open;
            t.vote = None;
        }
        self.reply(cx, call, Err(ClientError::TransactionFailed(why)));
    }

    /// The transaction cannot commit: answer its pending call (a finishing one is over:
    /// it is forgotten).
    fn fail_txn(&mut self, cx: &mut Ctx, txn: TxnRef, why: String) {
        let Some(t) = self.txns.get_mut(&txn) else {
            return;
        };
        let call = match t.phase {
            Phase::Voting { call, .. } | Phase::FailedVote(call) => Some(call),
            Phase::Finishing(call) | Phase::FinishLost { call, .. } => {
                self.forget_txn(txn);
                return self.reply(cx, call, Err(ClientError::TransactionFailed(why)));
            }
            _ => t.vote.take().map(|(c, _)| c),
        };
        t.failed.get_or_insert(why.clone());
        t.phase = Phase::Open;
        if let Some(call) = call {
            self.reply(cx, call, Err(ClientError::TransactionFailed(why)));
        }
    }

    fn forget_txn(&mut self, txn: TxnRef) {
        if let Some(t) = self.txns.remove(&txn) {
            self.inflight -= t.objects.values().map(|o| o.bytes).sum::<u64>();
        }
    }

    fn finish(&mut self, cx: &mut Ctx, call: CallId, txn: TxnRef) {
        let checked_in_oids = cx.mutant("readcurrent-invalidates");
        let part = |s: &Self, oid: Oid| s.partition(oid.0).unwrap_or(0);
        let Some(t) = self.txns.get(&txn) else {
            return self.reply(
                cx,
                call,
                Err(ClientError::Invalid(format!("unknown transaction {txn}"))),
            );
        };
        if let Some(why) = &t.failed {
            let e = ClientError::TransactionFailed(why.clone());
            return self.reply(cx, call, Err(e));
        }
        if !matches!(t.phase, Phase::Voted) {
            let e = ClientError::Invalid(format!("transaction {txn} is not voted"));
            return self.reply(cx, call, Err(e));
        }
        let Some(m) = self.master.conn() else {
            self.fail_txn(cx, txn, "lost the primary master".into());
            return self.reply_txn_error(cx, call, txn);
        };
        let mut oids = vec![];
        let mut deleted = BTreeSet::new();
        let mut checked = BTreeSet::new();
        for (&oid, o) in &t.objects {
            if o.check_only {
                checked.insert(part(self, oid));
                if checked_in_oids {
                    oids.push(oid);
                }
            } else {
                // A deletion is a change other clients must hear of like any other (their
                // caches hold the revision it ends).
                if o.data.is_none() && o.data_serial.is_none() {
                    deleted.insert(part(self, oid));
                }
                oids.push(oid);
            }
        }
        let p = Packet::AskFinishTransaction {
            ttid: t.ttid,
            oids,
            deleted: deleted.into_iter().collect(),
            checked: checked.into_iter().collect(),
        };
        self.txns.get_mut(&txn).expect("above").phase = Phase::Finishing(call);
        self.links.ask(cx, m, p, Asked::Finish(txn));
    }

    /// The transaction committed as `tid`. `exact`: from the finish's answer, in commit
    /// order on the primary's link (the cache may take our data as current).
    fn committed(&mut self, cx: &mut Ctx, txn: TxnRef, tid: Tid, exact: bool) {
        let Some(t) = self.txns.get(&txn) else { return };
        let call = match t.phase {
            Phase::Finishing(call) | Phase::FinishLost { call, .. } => call,
            _ => return,
        };
        let t = self.txns.remove(&txn).expect("above");
        self.inflight -= t.objects.values().map(|o| o.bytes).sum::<u64>();
        // Our own commit invalidates what we wrote, as another client's would: a load in
        // flight must not take its answer as current.
        for (&oid, o) in &t.objects {
            if !o.check_only {
                self.load_invalidated(oid, tid);
            }
        }
        let last = self.last_tid.max(Some(tid));
        self.last_tid = last;
        self.with_cache(|c| {
            for (&oid, o) in &t.objects {
                if o.check_only {
                    continue;
                }
                c.invalidate(oid, tid);
                // A backpointer's data is not here: its next load caches it.
                if exact && o.data_serial.is_none() {
                    c.store(oid, tid, None, o.data.clone(), None);
                }
            }
            c.set_last_tid(last);
        });
        self.reply(cx, call, Ok(Outcome::Tid(Some(tid))));
    }

    fn ask_final(&mut self, cx: &mut Ctx, txn: TxnRef) {
        if !self.ready() {
            return;
        }
        let m = self.master.conn().expect("ready");
        let Some(t) = self.txns.get_mut(&txn) else {
            return;
        };
        let Phase::FinishLost { asking, .. } = &mut t.phase else {
            return;
        };
        *asking = true;
        let ttid = t.ttid;
        self.links
            .ask(cx, m, Packet::AskFinalTID { ttid }, Asked::FinalTid(txn));
    }

    fn ask_final_storage(&mut self, cx: &mut Ctx, txn: TxnRef) {
        self.ask_final_storage_but(cx, txn, BTreeSet::new());
    }

    /// Ask a storage not in `tried`; none left: the tick asks again.
    fn ask_final_storage_but(&mut self, cx: &mut Ctx, txn: TxnRef, mut tried: BTreeSet<Nid>) {
        let Some(ttid) = self.txns.get(&txn).map(|t| t.ttid) else {
            return;
        };
        while let Some(nid) = self.pick_readable(cx, ttid.0, &tried) {
            let asked = Asked::FinalTidStorage(txn, nid);
            if self.send_storage(cx, nid, Packet::AskFinalTID { ttid }, Some(asked)) {
                return;
            }
            tried.insert(nid);
        }
        // Nobody to ask now: the tick asks again.
        self.final_unasked(txn);
    }

    fn final_unasked(&mut self, txn: TxnRef) {
        if let Some(Txn {
            phase: Phase::FinishLost { asking, .. },
            ..
        }) = self.txns.get_mut(&txn)
        {
            *asking = false;
        }
    }

    fn abort(&mut self, cx: &mut Ctx, call: CallId, txn: TxnRef) {
        let Some(t) = self.txns.get(&txn) else {
            return self.reply(cx, call, Ok(Outcome::Done));
        };
        if matches!(t.phase, Phase::Finishing(_) | Phase::FinishLost { .. }) {
            let e = ClientError::Invalid(format!("transaction {txn} is finishing"));
            return self.reply(cx, call, Err(e));
        }
        let pending = match t.phase {
            Phase::Voting { call, .. } | Phase::FailedVote(call) => Some(call),
            _ => t.vote.as_ref().map(|(c, _)| *c),
        };
        let ttid = t.ttid;
        let used: Vec<Nid> = t.used.iter().copied().collect();
        self.forget_txn(txn);
        if let Some(p) = pending {
            let e = ClientError::TransactionFailed("aborted".into());
            self.reply(cx, p, Err(e));
        }
        for &nid in &used {
            if let Some(&conn) = self.storages.get(&nid) {
                if matches!(self.links.get(conn), Some(Peer::Storage(_))) {
                    let p = Packet::AbortTransaction { ttid, nids: vec![] };
                    self.send_storage(cx, nid, p, None);
                }
            }
        }
        if let Some(m) = self.master.conn() {
            self.links
                .notify(cx, m, Packet::AbortTransaction { ttid, nids: used });
        }
        while self.inflight <= MAX_INFLIGHT_BYTES {
            let Some(c) = self.held.pop_front() else {
                break;
            };
            self.reply(cx, c, Ok(Outcome::Done));
        }
        self.reply(cx, call, Ok(Outcome::Done));
    }

    // ---- failures ----

    fn request_failed(&mut self, cx: &mut Ctx, conn: ConnId, asked: Asked, why: Failure) {
        match asked {
            Asked::MasterId | Asked::Snapshot => {
                if why == Failure::TimedOut && self.links.get(conn).is_some() {
                    warn!("client: the master did not answer {asked:?}");
                    self.reconnect(cx, conn, CloseReason::TimedOut);
                }
            }
            Asked::StorageId(_) => {
                if self.links.get(conn).is_some() {
                    self.close_storage(cx, conn, CloseReason::TimedOut);
                }
            }
            Asked::Sync(call) => {
                let e = ClientError::Unavailable("the primary did not answer".into());
                self.reply(cx, call, Err(e));
            }
            Asked::NewOids(_) => {
                self.oids_asked = false;
            }
            Asked::Begin(call) => {
                if self.begins.remove(&call).is_some() {
                    let e = ClientError::Unavailable("the primary did not answer".into());
                    self.reply(cx, call, Err(e));
                }
            }
            Asked::Load(key, nid) => {
                self.failed_at.insert(nid, cx.elapsed());
                self.load_retry(cx, key, nid);
            }
            Asked::Write { txn, oid, nid, gen } | Asked::Relock { txn, oid, nid, gen } => {
                self.failed_at.insert(nid, cx.elapsed());
                self.write_answered(cx, txn, oid, nid, gen, Ans::Failed);
            }
            Asked::Vote(txn, nid) => self.vote_answered(cx, txn, nid, false),
            Asked::FailedVote(txn) => self.fail_txn(cx, txn, "the primary refused the vote".into()),
            Asked::Finish(txn) => {
                let Some(t) = self.txns.get_mut(&txn) else {
                    return;
                };
                if let Phase::Finishing(call) = t.phase {
                    warn!(
                        "client: lost the answer to finishing {}: asking its outcome",
                        t.ttid
                    );
                    t.phase = Phase::FinishLost {
                        call,
                        since: cx.elapsed(),
                        asking: false,
                    };
                    self.ask_final(cx, txn);
                }
            }
            Asked::FinalTid(txn) | Asked::FinalTidStorage(txn, _) => self.final_unasked(txn),
            Asked::Query { q, nid, parts } => {
                self.failed_at.insert(nid, cx.elapsed());
                self.query_failed(cx, q, nid, parts);
            }
            Asked::Pack(call) => {
                let e = ClientError::Unavailable("lost the primary while packing".into());
                self.reply(cx, call, Err(e));
            }
        }
    }

    fn stop(&mut self, cx: &mut Ctx, reason: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        info!("client: {reason}");
        let calls: Vec<CallId> = self.calls.iter().copied().collect();
        for id in calls {
            self.reply(cx, id, Err(ClientError::Closed));
        }
        self.parked.clear();
        self.loads.clear();
        self.cell_waits.clear();
        self.queries_clear();
        self.oid_waiters.clear();
        self.held.clear();
        self.txns.clear();
        self.inflight = 0;
        self.links.close_all(cx);
        cx.exit(reason, true);
    }

    fn expire_calls(&mut self, cx: &mut Ctx) {
        let now = cx.elapsed();
        let why = || ClientError::Unavailable("no primary master, or no snapshot yet".into());
        let parked = std::mem::take(&mut self.parked);
        for (deadline, call) in parked {
            if deadline <= now {
                self.reply(cx, call.id, Err(why()));
            } else {
                self.parked.push_back((deadline, call));
            }
        }
        // A begin given up stays asked: its late answer is aborted (see `master_answer`).
        let late: Vec<CallId> = self
            .begins
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(c, _)| *c)
            .collect();
        for call in late {
            self.begins.remove(&call);
            let e = ClientError::Unavailable("the primary did not answer".into());
            self.reply(cx, call, Err(e));
        }
        let waiters = std::mem::take(&mut self.oid_waiters);
        for (call, count, deadline) in waiters {
            if deadline <= now {
                self.reply(cx, call, Err(why()));
            } else {
                self.oid_waiters.push_back((call, count, deadline));
            }
        }
        let lost: Vec<(TxnRef, bool, bool)> = self
            .txns
            .iter()
            .filter_map(|(r, t)| match t.phase {
                Phase::FinishLost { since, asking, .. } => {
                    Some((*r, now.saturating_sub(since) >= OUTCOME_DEADLINE, asking))
                }
                _ => None,
            })
            .collect();
        for (txn, expired, asking) in lost {
            if expired {
                let Some(t) = self.txns.get(&txn) else {
                    continue;
                };
                let Phase::FinishLost { call, .. } = t.phase else {
                    continue;
                };
                let why = format!("could not learn whether {} committed", t.ttid);
                self.forget_txn(txn);
                self.reply(cx, call, Err(ClientError::OutcomeUnknown(why)));
            } else if !asking {
                self.ask_final(cx, txn);
            }
        }
        self.serve_oids(cx);
        // Loads in flight have their requests' deadlines; nothing else waits unbounded.
    }
}

impl LoadKey {
    fn first(oid: Oid) -> LoadKey {
        LoadKey {
            oid,
            at: None,
            before: None,
        }
    }

    fn last(oid: Oid) -> LoadKey {
        LoadKey {
            oid,
            at: Some(Tid(u64::MAX)),
            before: Some(Tid(u64::MAX)),
        }
    }
}

/// `data` compressed with zlib, if that makes it smaller (None otherwise).
fn zlib(data: &[u8]) -> Option<Vec<u8>> {
    // Setting up a compressor's tables costs more than compressing a small object, so each
    // thread keeps one and resets it (the output depends on the input alone).
    thread_local! {
        static DEFLATE: std::cell::RefCell<flate2::Compress> =
            std::cell::RefCell::new(flate2::Compress::new(flate2::Compression::default(), true));
    }
    DEFLATE.with(|d| {
        let mut d = d.borrow_mut();
        d.reset();
        // Room for one byte less than the input: output that does not fit is not worth it.
        let mut out = Vec::with_capacity(data.len().saturating_sub(1));
        match d.compress_vec(data, &mut out, flate2::FlushCompress::Finish) {
            Ok(flate2::Status::StreamEnd) => Some(out),
            _ => None,
        }
    })
}

/// Inflate at most `MAX_OBJECT` bytes; None for bad or oversized data.
fn decompress(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(data)
        .take(MAX_OBJECT as u64 + 1)
        .read_to_end(&mut out)
        .ok()?;
    (out.len() <= MAX_OBJECT).then_some(out)
}

impl Node for Client {
    type Peer = Peer;
    type Asked = Asked;

    fn core(&mut self) -> (&mut Links<Peer, Asked>, &mut Ticker) {
        (&mut self.links, &mut self.tick)
    }

    fn on_start(&mut self, cx: &mut Ctx) {
        self.tick(cx);
    }

    fn accepted(&self) -> Peer {
        Peer::Unknown
    }

    fn on_message(&mut self, cx: &mut Ctx, conn: ConnId, asked: Option<Asked>, msg: Message) {
        if self.closed {
            return;
        }
        match self.links.get(conn) {
            Some(Peer::Master) => {
                self.on_master_message(cx, conn, asked, msg);
                self.retry_cell_waits(cx);
            }
            Some(Peer::Storage(sp)) => {
                let nid = sp.nid;
                self.on_storage_message(cx, conn, nid, asked, msg)
            }
            Some(Peer::Unknown) => {
                self.links.close(cx, conn);
            }
            None => {}
        }
    }

    fn on_failed(&mut self, cx: &mut Ctx, conn: ConnId, asked: Asked, why: Failure) {
        if !self.closed {
            self.request_failed(cx, conn, asked, why);
        }
    }

    fn on_closed(&mut self, cx: &mut Ctx, conn: ConnId, peer: Peer, reason: CloseReason) {
        if self.closed {
            return;
        }
        match peer {
            Peer::Master => {
                if self.master_closed(cx, conn, &reason) {
                    self.master_lost(cx);
                }
            }
            Peer::Storage(sp) => {
                if self.storages.get(&sp.nid) == Some(&conn) {
                    self.storages.remove(&sp.nid);
                }
                self.failed_at.insert(sp.nid, cx.elapsed());
                // A storage drops the transactions it did not vote when their client's
                // connection goes: stores it answered before are gone with it, so it
                // cannot take part in their vote (FailedVote decides).
                for t in self.txns.values_mut() {
                    if matches!(t.phase, Phase::Open) && t.used.contains(&sp.nid) {
                        t.lost.insert(sp.nid);
                    }
                }
                for (_, asked) in sp.queue {
                    if let Some(a) = asked {
                        self.request_failed(cx, conn, a, Failure::Closed);
                    }
                }
            }
            Peer::Unknown => {}
        }
    }

    fn on_tick(&mut self, cx: &mut Ctx) {
        if self.closed {
            return;
        }
        self.follow_master(cx);
        self.expire_calls(cx);
        self.retry_cell_waits(cx);
    }

    fn on_shutdown(&mut self, cx: &mut Ctx) {
        self.stop(cx, "shutdown requested");
    }

    fn on_call(&mut self, cx: &mut Ctx, call: Call) {
        self.call(cx, call);
    }
}

impl Follower for Client {
    fn master_link(&mut self) -> (&mut MasterLink, &mut Links<Peer, Asked>) {
        (&mut self.master, &mut self.links)
    }

    fn identification(&self) -> (Peer, Asked, Option<Nid>, IdentificationExtra) {
        let extra = IdentificationExtra {
            read_only: self.cfg.read_only,
            ..Default::default()
        };
        (Peer::Master, Asked::MasterId, self.nid, extra)
    }

    fn partition_table_mut(&mut self) -> &mut Option<PartitionTable> {
        &mut self.pt
    }
}
