//! The storage's transaction manager (neo-spec 6.5-6.12): the transactions being committed
//! through this node, their write locks (one transaction per object), the read locks of
//! transactions being finished, and the requests that wait for a lock, with NEO's deadlock
//! avoidance (an older transaction never waits for a younger one that has not voted: the
//! younger one is told to give its lock up and take it again).
//!
//! Pure logic over the database: each entry point takes the backend and a list of
//! outgoing packets (`Out`) to which it appends answers, including answers to requests it
//! had delayed and can now serve. A request-level database error is answered with an
//! `Error`; a fatal one is returned (the node stops). Memory is bounded per client: queued
//! requests, open transactions and held data each have a cap, beyond which the client's
//! connection is closed.
//!
//! What is where: a transaction's stored data is in the database from `store` on (held,
//! then written at vote); this module keeps which objects it locked, with what serial, and
//! a copy of the stored bytes while it may still be asked to relock (for the client to
//! resolve the conflict again, NEO's `AnswerRelockObject` data).

use std::collections::{BTreeMap, BTreeSet};

use tracing::{debug, warn};

use crate::actors::ConnId;
use crate::db::{Backend, DbError, Load, ObjectData, TxnMeta, Value, ZERO_HASH};
use crate::proto::{Data, ErrorCode, Nid, Oid, Packet, Relocked, Tid};

/// Most requests one client may have waiting for locks.
pub const MAX_PENDING: usize = 10_000;
/// Most transactions one client may have open on this node.
pub const MAX_TXNS: usize = 1_000;
/// Most bytes of object data this node keeps in memory for one client (delayed stores and
/// the copies kept for relocks).
pub const MAX_CLIENT_BYTES: usize = 512 * 1024 * 1024;

/// Where a request came from, to answer it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub conn: ConnId,
    pub id: u32,
    pub client: Nid,
}

/// What to send.
#[derive(Clone, Debug, PartialEq)]
pub enum Out {
    Answer {
        conn: ConnId,
        id: u32,
        packet: Packet,
    },
    Notify {
        conn: ConnId,
        packet: Packet,
    },
    /// The client broke a limit: close its connection (and say why first).
    Close {
        conn: ConnId,
    },
}

fn answer(out: &mut Vec<Out>, o: Origin, packet: Packet) {
    out.push(Out::Answer {
        conn: o.conn,
        id: o.id,
        packet,
    });
}

fn refuse(out: &mut Vec<Out>, o: Origin, why: impl Into<String>) {
    answer(out, o, Packet::error(ErrorCode::ProtocolError, why));
}

/// What a store writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Data(ObjectData),
    /// A deletion (or an undone creation).
    Deleted,
    /// An undo: the data of this object's revision at that TID.
    Undo(Tid),
    /// readCurrent: lock without data.
    Check,
}

impl Write {
    fn bytes(&self) -> usize {
        match self {
            Write::Data(d) => d.data.len(),
            _ => 0,
        }
    }

    fn value(&self) -> Option<Value> {
        match self {
            Write::Data(d) => Some(Value::Data(d.clone())),
            Write::Deleted => Some(Value::Deleted),
            Write::Undo(t) => Some(Value::Backpointer(*t)),
            Write::Check => None,
        }
    }

    /// What `AnswerRelockObject` gives back for the client to resolve again.
    fn relocked_data(&self) -> Option<(u8, [u8; 20], Data)> {
        match self {
            Write::Data(d) => Some((d.compression, d.checksum, Data(d.data.clone()))),
            Write::Deleted => Some((0, ZERO_HASH, Data::default())),
            Write::Undo(_) | Write::Check => None,
        }
    }

    fn answer(&self, conflict: Option<Tid>) -> Packet {
        match self {
            Write::Check => Packet::AnswerCheckCurrentSerial { conflict },
            _ => Packet::AnswerStoreObject { conflict },
        }
    }
}

/// One object a transaction stored or checked.
struct Held {
    serial: Tid,
    write: Write,
    /// Whether it holds the write lock (false for a lockless store).
    locked: bool,
}

struct Txn {
    client: Nid,
    /// The connection of its client (where NotifyDeadlock goes).
    conn: ConnId,
    voted: bool,
    /// Mutant `unlock-before-vote-durable`: the vote was answered but not written; it is
    /// written when the lock comes.
    lazy_vote: Option<Option<TxnMeta>>,
    locked: Option<Tid>,
    objects: BTreeMap<Oid, Held>,
    /// Objects for which its client was told of a deadlock (once per object).
    notified: BTreeSet<Oid>,
    /// Whether it wrote an object row here (not only checks and metadata).
    wrote: bool,
}

/// A request waiting for a write lock.
enum Pending {
    Store {
        origin: Origin,
        ttid: Tid,
        oid: Oid,
        serial: Tid,
        write: Write,
    },
    Relock {
        origin: Origin,
        ttid: Tid,
        oid: Oid,
    },
}

impl Pending {
    fn origin(&self) -> Origin {
        match self {
            Pending::Store { origin, .. } | Pending::Relock { origin, .. } => *origin,
        }
    }

    fn ttid(&self) -> Tid {
        match self {
            Pending::Store { ttid, .. } | Pending::Relock { ttid, .. } => *ttid,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Pending::Store { write, .. } => write.bytes(),
            Pending::Relock { .. } => 0,
        }
    }
}

/// A load waiting for a transaction being finished to unlock.
struct PendingLoad {
    origin: Origin,
    oid: Oid,
    at: Option<Tid>,
    before: Option<Tid>,
}

#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
struct Usage {
    pending: usize,
    txns: usize,
    bytes: usize,
}

/// How the answer to a lock attempt goes.
enum Attempt {
    Locked,
    Delay,
    /// The serial is not the last committed one (`Tid::ZERO`: the object does not exist).
    Conflict(Tid),
}

/// Switches for the mutants of this module (bugs the simulator must catch).
#[derive(Default, Clone, Copy, Debug)]
pub struct Mutants {
    /// `conflict-check-skipped`: a store takes the lock without comparing serials.
    pub conflict_check_skipped: bool,
    /// `readcurrent-unchecked`: a readCurrent check locks without comparing serials.
    pub readcurrent_unchecked: bool,
    /// `undo-wrong-serial`: the undo lookup answers the undone TID itself as the serial
    /// whose data to restore.
    pub undo_wrong_serial: bool,
}

#[derive(Default)]
pub struct Transactions {
    txns: BTreeMap<Tid, Txn>,
    /// Object -> the transaction holding its write lock.
    write_locks: BTreeMap<Oid, Tid>,
    /// Object -> (ttid, final tid) of the locked transaction that wrote it: loads of a
    /// snapshot that would include it wait for its unlock.
    read_locks: BTreeMap<Oid, (Tid, Tid)>,
    /// Requests waiting for an object's write lock, in ttid order (then arrival).
    delayed: BTreeMap<Oid, BTreeMap<(Tid, u64), Pending>>,
    loads: BTreeMap<Oid, Vec<PendingLoad>>,
    usage: BTreeMap<Nid, Usage>,
    seq: u64,
    pub mutants: Mutants,
}

type DbResult = Result<(), DbError>;

impl Transactions {
    /// Transactions open on this node.
    pub fn len(&self) -> usize {
        self.txns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }

    /// The clients with transactions here.
    pub fn clients(&self) -> BTreeSet<Nid> {
        self.txns.values().map(|t| t.client).collect()
    }

    /// Transactions that did not vote.
    pub fn unvoted(&self) -> usize {
        self.txns.values().filter(|t| !t.voted).count()
    }

    pub fn is_voted(&self, ttid: Tid) -> bool {
        self.txns.get(&ttid).is_some_and(|t| t.voted)
    }

    pub fn locked_tid(&self, ttid: Tid) -> Option<Tid> {
        self.txns.get(&ttid).and_then(|t| t.locked)
    }

    /// The transactions locked here and not unlocked yet: ttid -> final TID.
    pub fn locked(&self) -> BTreeMap<Tid, Tid> {
        self.txns
            .iter()
            .filter_map(|(ttid, t)| t.locked.map(|tid| (*ttid, tid)))
            .collect()
    }

    /// Whether we know `ttid` wrote no object row here (only readCurrent checks and/or the
    /// metadata). Unknown after a restart.
    pub fn objectless(&self, ttid: Tid) -> bool {
        self.txns.get(&ttid).is_some_and(|t| !t.wrote)
    }

    /// The transaction holding `oid`'s write lock.
    pub fn write_locker(&self, oid: Oid) -> Option<Tid> {
        self.write_locks.get(&oid).copied()
    }

    /// Requests waiting (stores, checks, relocks, loads).
    pub fn waiting(&self) -> usize {
        self.delayed.values().map(|q| q.len()).sum::<usize>()
            + self.loads.values().map(|q| q.len()).sum::<usize>()
    }

    fn usage(&mut self, client: Nid) -> &mut Usage {
        self.usage.entry(client).or_default()
    }

    fn release_usage(&mut self, client: Nid, f: impl FnOnce(&mut Usage)) {
        if let Some(u) = self.usage.get_mut(&client) {
            f(u);
            if *u == Usage::default() {
                self.usage.remove(&client);
            }
        }
    }

    /// The client broke a memory cap: say so and close its connection (which aborts its
    /// transactions that did not vote).
    fn over_limit(out: &mut Vec<Out>, o: Origin, what: &str) {
        warn!("{}: {what}: closing its connection", o.client);
        refuse(out, o, format!("too many {what}"));
        out.push(Out::Close { conn: o.conn });
    }

    /// The transaction `ttid` of `o`'s client, registered if new. None (answered) if it
    /// belongs to another client, voted already, or the client has too many.
    fn open(&mut self, out: &mut Vec<Out>, o: Origin, ttid: Tid) -> Option<&mut Txn> {
        let (client, voted) = match self.txns.get(&ttid) {
            Some(t) => (t.client, t.voted),
            None => {
                if self.usage(o.client).txns >= MAX_TXNS {
                    Self::over_limit(out, o, "open transactions");
                    return None;
                }
                self.usage(o.client).txns += 1;
                self.txns.insert(
                    ttid,
                    Txn {
                        client: o.client,
                        conn: o.conn,
                        voted: false,
                        lazy_vote: None,
                        locked: None,
                        objects: BTreeMap::new(),
                        notified: BTreeSet::new(),
                        wrote: false,
                    },
                );
                (o.client, false)
            }
        };
        if client != o.client {
            refuse(out, o, format!("transaction {ttid} is not yours"));
            return None;
        }
        if voted {
            refuse(out, o, format!("transaction {ttid} already voted"));
            return None;
        }
        let t = self.txns.get_mut(&ttid)?;
        t.conn = o.conn;
        Some(t)
    }

    /// Register `ttid` for `origin`'s client (a store we ignore: the vote must still
    /// succeed). False (answered) if impossible.
    pub fn register(&mut self, out: &mut Vec<Out>, origin: Origin, ttid: Tid) -> bool {
        self.open(out, origin, ttid).is_some()
    }

    /// Refuse a new object beyond what a transaction's metadata may list.
    fn too_many_objects(&self, out: &mut Vec<Out>, o: Origin, ttid: Tid, oid: Oid) -> bool {
        let full = self.txns.get(&ttid).is_some_and(|t| {
            t.objects.len() >= crate::db::MAX_TXN_OIDS && !t.objects.contains_key(&oid)
        });
        if full {
            refuse(out, o, format!("too many objects in {ttid}"));
        }
        full
    }

    // ---- stores, checks, relocks ----

    /// AskStoreObject (a `Write` other than `Check`) or AskCheckCurrentSerial (`Check`) on
    /// a cell we hold readable: lock, check the serial, store.
    #[allow(clippy::too_many_arguments)]
    pub fn store(
        &mut self,
        db: &mut dyn Backend,
        out: &mut Vec<Out>,
        origin: Origin,
        ttid: Tid,
        oid: Oid,
        serial: Tid,
        write: Write,
    ) -> DbResult {
        let p = Pending::Store {
            origin,
            ttid,
            oid,
            serial,
            write,
        };
        self.run(db, out, p, true)
    }

    /// A store on a cell being replicated: accepted without a lock or a conflict check
    /// (a readable cell does the check); a check there is a no-op. Answers `Tid::ZERO`.
    #[allow(clippy::too_many_arguments)]
    pub fn store_lockless(
        &mut self,
        db: &mut dyn Backend,
        out: &mut Vec<Out>,
        origin: Origin,
        ttid: Tid,
        oid: Oid,
        serial: Tid,
        write: Write,
    ) -> DbResult {
        let bytes = write.bytes();
        if self.usage(origin.client).bytes + bytes > MAX_CLIENT_BYTES {
            Self::over_limit(out, origin, "bytes of held data");
            return Ok(());
        }
        let packet = write.answer(Some(Tid::ZERO));
        if self.open(out, origin, ttid).is_none() || self.too_many_objects(out, origin, ttid, oid) {
            return Ok(());
        }
        let txn = self.txns.get_mut(&ttid).expect("opened above");
        if let Some(value) = write.value() {
            match db.store(ttid, oid, value) {
                Ok(()) => {}
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    answer(out, origin, Packet::error(e.error_code(), e.to_string()));
                    return Ok(());
                }
            }
            txn.wrote = true;
            let locked = txn.objects.get(&oid).is_some_and(|h| h.locked);
            let old = txn.objects.insert(
                oid,
                Held {
                    serial,
                    write,
                    locked,
                },
            );
            let freed = old.map_or(0, |h| h.write.bytes());
            let u = self.usage(origin.client);
            u.bytes = (u.bytes + bytes).saturating_sub(freed);
        }
        answer(out, origin, packet);
        Ok(())
    }

    /// AskRelockObject: give up `oid`'s lock (the older transaction waiting for it gets
    /// it), then take it again like a store.
    pub fn relock(
        &mut self,
        db: &mut dyn Backend,
        out: &mut Vec<Out>,
        origin: Origin,
        ttid: Tid,
        oid: Oid,
    ) -> DbResult {
        let Some(txn) = self.open(out, origin, ttid) else {
            return Ok(());
        };
        let Some(held) = txn.objects.get_mut(&oid).filter(|h| h.locked) else {
            refuse(out, origin, format!("{oid} is not locked by {ttid}"));
            return Ok(());
        };
        held.locked = false;
        txn.notified.remove(&oid);
        if self.write_locks.get(&oid) == Some(&ttid) {
            self.write_locks.remove(&oid);
            self.run_delayed(db, out, oid)?;
        }
        self.run(db, out, Pending::Relock { origin, ttid, oid }, true)
    }

    /// Try a request (anew, or again after a lock was released): answer it or queue it.
    fn run(
        &mut self,
        db: &mut dyn Backend,
        out: &mut Vec<Out>,
        p: Pending,
        first: bool,
    ) -> DbResult {
        let origin = p.origin();
        match &p {
            Pending::Store {
                ttid,
                oid,
                serial,
                write,
                ..
            } => {
                let (ttid, oid, serial) = (*ttid, *oid, *serial);
                if !first && self.txns.get(&ttid).is_none_or(|t| t.voted) {
                    refuse(out, origin, format!("transaction {ttid} is gone"));
                    return Ok(());
                }
                if self.open(out, origin, ttid).is_none()
                    || self.too_many_objects(out, origin, ttid, oid)
                {
                    return Ok(());
                }
                // The data a store would hold counts against its client's cap, as when
                // it waits or is accepted lockless.
                if self.usage(origin.client).bytes + write.bytes() > MAX_CLIENT_BYTES {
                    Self::over_limit(out, origin, "bytes of held data");
                    return Ok(());
                }
                let check = match write {
                    Write::Check => !self.mutants.readcurrent_unchecked,
                    _ => !self.mutants.conflict_check_skipped,
                };
                let had_lock = self.write_locks.get(&oid) == Some(&ttid);
                match self.try_lock(db, out, ttid, oid, serial, check)? {
                    Attempt::Delay => return self.delay(out, oid, p),
                    Attempt::Conflict(Tid::ZERO) => refuse(
                        out,
                        origin,
                        format!("{oid} does not exist (serial {serial})"),
                    ),
                    Attempt::Conflict(last) => answer(out, origin, write.answer(Some(last))),
                    Attempt::Locked => {
                        if let Some(value) = write.value() {
                            match db.store(ttid, oid, value) {
                                Ok(()) => {}
                                Err(e) if e.is_fatal() => return Err(e),
                                Err(e) => {
                                    if !had_lock {
                                        self.write_locks.remove(&oid);
                                        self.run_delayed(db, out, oid)?;
                                    }
                                    answer(
                                        out,
                                        origin,
                                        Packet::error(e.error_code(), e.to_string()),
                                    );
                                    return Ok(());
                                }
                            }
                        }
                        let Pending::Store { write, .. } = p else {
                            unreachable!()
                        };
                        let bytes = write.bytes();
                        let packet = write.answer(None);
                        let txn = self.txns.get_mut(&ttid).expect("opened above");
                        let freed = match txn.objects.get(&oid) {
                            // A check after a store of the same object keeps the store.
                            Some(h) if write == Write::Check && h.write != Write::Check => 0,
                            _ => {
                                txn.wrote |= write != Write::Check;
                                let old = txn.objects.insert(
                                    oid,
                                    Held {
                                        serial,
                                        write,
                                        locked: true,
                                    },
                                );
                                old.map_or(0, |h| h.write.bytes())
                            }
                        };
                        if let Some(h) = txn.objects.get_mut(&oid) {
                            h.locked = true;
                        }
                        let u = self.usage(origin.client);
                        u.bytes = (u.bytes + bytes).saturating_sub(freed);
                        answer(out, origin, packet);
                    }
                }
            }
            Pending::Relock { ttid, oid, .. } => {
                let (ttid, oid) = (*ttid, *oid);
                let Some(serial) = self
                    .txns
                    .get(&ttid)
                    .filter(|t| !t.voted)
                    .and_then(|t| t.objects.get(&oid))
                    .map(|h| h.serial)
                else {
                    refuse(out, origin, format!("transaction {ttid} is gone"));
                    return Ok(());
                };
                match self.try_lock(db, out, ttid, oid, serial, true)? {
                    Attempt::Delay => return self.delay(out, oid, p),
                    Attempt::Locked => {
                        if let Some(h) = self
                            .txns
                            .get_mut(&ttid)
                            .and_then(|t| t.objects.get_mut(&oid))
                        {
                            h.locked = true;
                        }
                        answer(out, origin, Packet::AnswerRelockObject { conflict: None });
                    }
                    Attempt::Conflict(last) => {
                        // A newer revision committed meanwhile: the client resolves again
                        // and stores anew; what it stored is forgotten here.
                        let txn = self.txns.get_mut(&ttid).expect("checked above");
                        let held = txn.objects.remove(&oid).expect("checked above");
                        if held.write != Write::Check {
                            db.unstore(ttid, oid)?;
                        }
                        let client = txn.client;
                        let freed = held.write.bytes();
                        self.release_usage(client, |u| u.bytes = u.bytes.saturating_sub(freed));
                        let conflict = Relocked {
                            serial: held.serial,
                            conflict: last,
                            data: held.write.relocked_data(),
                        };
                        answer(
                            out,
                            origin,
                            Packet::AnswerRelockObject {
                                conflict: Some(conflict),
                            },
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Take `oid`'s write lock for `ttid`, or say why not.
    fn try_lock(
        &mut self,
        db: &mut dyn Backend,
        out: &mut Vec<Out>,
        ttid: Tid,
        oid: Oid,
        serial: Tid,
        check: bool,
    ) -> Result<Attempt, DbError> {
        // Stored again (a resolved conflict) or checked after a store, the lock is already
        // ttid's; the serial is still checked below: the lock keeps others from committing
        // meanwhile, not the client from basing its new store on an older serial.
        if let Some(&locker) = self.write_locks.get(&oid).filter(|&&l| l != ttid) {
            let Some(l) = self.txns.get_mut(&locker) else {
                // Cannot happen: locks are released with their transaction.
                self.write_locks.remove(&oid);
                return self.try_lock(db, out, ttid, oid, serial, check);
            };
            if !l.voted && ttid < locker && l.notified.insert(oid) {
                // An older transaction waits for a younger one that may itself wait for
                // it elsewhere: the younger one gives its lock up and takes it again.
                debug!("deadlock avoidance: {ttid} waits for {locker} on {oid}");
                out.push(Out::Notify {
                    conn: l.conn,
                    packet: Packet::NotifyDeadlock { ttid: locker, oid },
                });
            }
            return Ok(Attempt::Delay);
        }
        if check {
            let last = match db.load(oid, None, None)? {
                Load::Found(l) => l.serial,
                Load::NotFound | Load::DoesNotExist => Tid::ZERO,
            };
            if last != serial {
                return Ok(Attempt::Conflict(last));
            }
        }
        self.write_locks.insert(oid, ttid);
        Ok(Attempt::Locked)
    }

    fn delay(&mut self, out: &mut Vec<Out>, oid: Oid, p: Pending) -> DbResult {
        let o = p.origin();
        let bytes = p.bytes();
        let u = self.usage(o.client);
        if u.pending >= MAX_PENDING {
            Self::over_limit(out, o, "requests waiting for locks");
            return Ok(());
        }
        if u.bytes + bytes > MAX_CLIENT_BYTES {
            Self::over_limit(out, o, "bytes of held data");
            return Ok(());
        }
        u.pending += 1;
        u.bytes += bytes;
        self.seq += 1;
        self.delayed
            .entry(oid)
            .or_default()
            .insert((p.ttid(), self.seq), p);
        Ok(())
    }

    /// Run again, in ttid order, the requests waiting for `oid`'s write lock.
    fn run_delayed(&mut self, db: &mut dyn Backend, out: &mut Vec<Out>, oid: Oid) -> DbResult {
        let Some(queue) = self.delayed.remove(&oid) else {
            return Ok(());
        };
        for (_, p) in queue {
            let (client, bytes) = (p.origin().client, p.bytes());
            self.release_usage(client, |u| {
                u.pending = u.pending.saturating_sub(1);
                u.bytes = u.bytes.saturating_sub(bytes);
            });
            self.run(db, out, p, false)?;
        }
        Ok(())
    }

    // ---- vote, lock, unlock, abort ----

    /// AskStoreTransaction (`meta`: this node keeps the metadata) or AskVoteTransaction:
    /// write what the transaction stored to the temporary tables, committed before the
    /// answer. `lazy` (mutant `unlock-before-vote-durable`): answer first, write at lock.
    #[allow(clippy::too_many_arguments)]
    pub fn vote(
        &mut self,
        db: &mut dyn Backend,
        out: &mut Vec<Out>,
        origin: Origin,
        ttid: Tid,
        meta: Option<TxnMeta>,
        lazy: bool,
    ) -> DbResult {
        if meta.is_none() && !self.txns.contains_key(&ttid) {
            refuse(out, origin, format!("unknown transaction {ttid}"));
            return Ok(());
        }
        let waiting = self
            .delayed
            .values()
            .flat_map(|q| q.values())
            .any(|p| p.ttid() == ttid);
        if waiting {
            refuse(
                out,
                origin,
                format!("transaction {ttid} has stores waiting for locks"),
            );
            return Ok(());
        }
        let packet = if meta.is_some() {
            Packet::AnswerStoreTransaction
        } else {
            Packet::AnswerVoteTransaction
        };
        let Some(txn) = self.open(out, origin, ttid) else {
            return Ok(());
        };
        if lazy {
            txn.lazy_vote = Some(meta);
        } else {
            match db.vote(ttid, meta.as_ref()) {
                Ok(()) => {}
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    answer(out, origin, Packet::error(e.error_code(), e.to_string()));
                    return Ok(());
                }
            }
        }
        txn.voted = true;
        // Relocks are over: the copies kept for them are not needed any more.
        let mut freed = 0;
        for h in txn.objects.values_mut() {
            if let Write::Data(d) = &mut h.write {
                freed += d.data.len();
                d.data = Vec::new();
            }
        }
        let client = txn.client;
        self.release_usage(client, |u| u.bytes = u.bytes.saturating_sub(freed));
        answer(out, origin, packet);
        Ok(())
    }

    /// AskLockInformation from the primary: record the final TID (committed), read-lock
    /// what the transaction wrote. `Err` answers for an unknown or unvoted transaction.
    pub fn lock(
        &mut self,
        db: &mut dyn Backend,
        ttid: Tid,
        tid: Tid,
    ) -> Result<Result<(), (ErrorCode, String)>, DbError> {
        let Some(txn) = self.txns.get_mut(&ttid) else {
            return Ok(Err((
                ErrorCode::ProtocolError,
                format!("unknown transaction {ttid}"),
            )));
        };
        if !txn.voted {
            return Ok(Err((
                ErrorCode::ProtocolError,
                format!("transaction {ttid} did not vote"),
            )));
        }
        match txn.locked {
            Some(t) if t == tid => return Ok(Ok(())),
            Some(t) => {
                return Ok(Err((
                    ErrorCode::ProtocolError,
                    format!("transaction {ttid} already locked as {t}"),
                )))
            }
            None => {}
        }
        let result = match txn.lazy_vote.take() {
            Some(meta) => db
                .vote(ttid, meta.as_ref())
                .and_then(|()| db.lock(ttid, tid)),
            None => db.lock(ttid, tid),
        };
        match result {
            Ok(()) => {}
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => return Ok(Err((e.error_code(), e.to_string()))),
        }
        txn.locked = Some(tid);
        for (oid, h) in &txn.objects {
            if h.write != Write::Check {
                self.read_locks.insert(*oid, (ttid, tid));
            }
        }
        Ok(Ok(()))
    }

    /// NotifyUnlockInformation from the primary: move the transaction to the permanent
    /// tables (committed), release its locks, serve what waited for them.
    pub fn unlock(&mut self, db: &mut dyn Backend, out: &mut Vec<Out>, ttid: Tid) -> DbResult {
        let Some(tid) = self.txns.get(&ttid).and_then(|t| t.locked) else {
            warn!("unlock of {ttid}, which is not locked here: ignored");
            return Ok(());
        };
        db.unlock(ttid, tid)?;
        self.release(db, out, ttid)
    }

    /// AbortTransaction: drop a transaction that is not locked (`by`: the client that
    /// asked, None for the primary). A locked transaction is never aborted.
    pub fn abort(
        &mut self,
        db: &mut dyn Backend,
        out: &mut Vec<Out>,
        ttid: Tid,
        by: Option<Nid>,
    ) -> DbResult {
        let Some(txn) = self.txns.get(&ttid) else {
            debug!("abort of unknown transaction {ttid}");
            return Ok(());
        };
        if by.is_some_and(|c| c != txn.client) {
            warn!(
                "{by:?} asked to abort {ttid}, a transaction of {}: ignored",
                txn.client
            );
            return Ok(());
        }
        if let Some(tid) = txn.locked {
            warn!("refusing to abort {ttid}: it is locked as {tid}");
            return Ok(());
        }
        db.abort(ttid)?;
        self.release(db, out, ttid)
    }

    /// Forget a finished or aborted transaction: its locks, its waiting requests (answered
    /// with an error), then serve what waited for its locks.
    fn release(&mut self, db: &mut dyn Backend, out: &mut Vec<Out>, ttid: Tid) -> DbResult {
        let Some(txn) = self.txns.remove(&ttid) else {
            return Ok(());
        };
        let held: usize = txn.objects.values().map(|h| h.write.bytes()).sum();
        self.release_usage(txn.client, |u| {
            u.txns = u.txns.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(held);
        });
        let mine: Vec<(Oid, (Tid, u64))> = self
            .delayed
            .iter()
            .flat_map(|(oid, q)| {
                q.iter()
                    .filter(|(k, _)| k.0 == ttid)
                    .map(|(k, _)| (*oid, *k))
            })
            .collect();
        for (oid, key) in mine {
            if let Some(p) = self.delayed.get_mut(&oid).and_then(|q| q.remove(&key)) {
                self.unqueued(&p);
                refuse(out, p.origin(), format!("transaction {ttid} is gone"));
            }
        }
        self.delayed.retain(|_, q| !q.is_empty());
        let mut unlocked = Vec::new();
        for oid in txn.objects.keys() {
            if self.write_locks.get(oid) == Some(&ttid) {
                self.write_locks.remove(oid);
                unlocked.push(*oid);
            }
        }
        let mut readable = Vec::new();
        for oid in txn.objects.keys() {
            if self.read_locks.get(oid).is_some_and(|(t, _)| *t == ttid) {
                self.read_locks.remove(oid);
                readable.push(*oid);
            }
        }
        for oid in unlocked {
            self.run_delayed(db, out, oid)?;
        }
        for oid in readable {
            for l in self.loads.remove(&oid).unwrap_or_default() {
                self.release_usage(l.origin.client, |u| u.pending = u.pending.saturating_sub(1));
                self.load(db, out, l.origin, l.oid, l.at, l.before)?;
            }
        }
        Ok(())
    }

    fn unqueued(&mut self, p: &Pending) {
        let bytes = p.bytes();
        self.release_usage(p.origin().client, |u| {
            u.pending = u.pending.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(bytes);
        });
    }

    // ---- loads ----

    /// AskObject on a readable cell: the revision, or wait while a transaction writing the
    /// object is being finished. Every load waits, not only those whose snapshot includes
    /// the locked TID: the database does not know that TID yet, so an older revision
    /// would be answered with no next serial and the client would cache it as current
    /// after the invalidation already passed.
    pub fn load(
        &mut self,
        db: &mut dyn Backend,
        out: &mut Vec<Out>,
        origin: Origin,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> DbResult {
        if self.read_locks.contains_key(&oid) {
            let u = self.usage(origin.client);
            if u.pending >= MAX_PENDING {
                Self::over_limit(out, origin, "requests waiting for locks");
                return Ok(());
            }
            u.pending += 1;
            self.loads.entry(oid).or_default().push(PendingLoad {
                origin,
                oid,
                at,
                before,
            });
            return Ok(());
        }
        let packet = match db.load(oid, at, before) {
            Ok(Load::Found(l)) => Packet::AnswerObject {
                oid,
                serial: l.serial,
                next_serial: l.next_serial,
                compression: l.compression,
                checksum: l.checksum,
                data: (l.checksum != ZERO_HASH).then_some(Data(l.data)),
                data_serial: l.data_serial,
            },
            Ok(Load::NotFound) => Packet::error(
                ErrorCode::OidNotFound,
                format!("{oid} has no revision at {at:?} or before {before:?}"),
            ),
            Ok(Load::DoesNotExist) => {
                Packet::error(ErrorCode::OidDoesNotExist, format!("{oid} does not exist"))
            }
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => Packet::error(e.error_code(), e.to_string()),
        };
        answer(out, origin, packet);
        Ok(())
    }

    // ---- clients and operation ----

    /// A client connection closed: its transactions there that did not vote are aborted
    /// (voted ones wait for the primary's word); its waiting requests are dropped.
    pub fn connection_closed(
        &mut self,
        db: &mut dyn Backend,
        out: &mut Vec<Out>,
        conn: ConnId,
    ) -> DbResult {
        self.drop_waiting(|o| o.conn == conn);
        let unvoted: Vec<Tid> = self
            .txns
            .iter()
            .filter(|(_, t)| t.conn == conn && !t.voted)
            .map(|(ttid, _)| *ttid)
            .collect();
        for ttid in unvoted {
            self.abort(db, out, ttid, None)?;
        }
        Ok(())
    }

    /// The primary reports the client gone: abort its transactions that did not vote.
    /// Voted ones wait for the primary, which aborts or commits them: client ids are
    /// reused, and a report that a previous session is gone may arrive after the new one
    /// voted here (commits seed 444572912).
    pub fn client_gone(
        &mut self,
        db: &mut dyn Backend,
        out: &mut Vec<Out>,
        client: Nid,
    ) -> DbResult {
        self.drop_waiting(|o| o.client == client);
        let gone: Vec<Tid> = self
            .txns
            .iter()
            .filter(|(_, t)| t.client == client && t.locked.is_none() && !t.voted)
            .map(|(ttid, _)| *ttid)
            .collect();
        for ttid in gone {
            self.abort(db, out, ttid, None)?;
        }
        Ok(())
    }

    /// Drop (unanswered) the waiting requests of matching origins.
    fn drop_waiting(&mut self, matches: impl Fn(&Origin) -> bool) {
        let mut dropped = Vec::new();
        for q in self.delayed.values_mut() {
            q.retain(|_, p| {
                let keep = !matches(&p.origin());
                if !keep {
                    dropped.push((p.origin().client, p.bytes()));
                }
                keep
            });
        }
        self.delayed.retain(|_, q| !q.is_empty());
        for q in self.loads.values_mut() {
            q.retain(|l| {
                let keep = !matches(&l.origin);
                if !keep {
                    dropped.push((l.origin.client, 0));
                }
                keep
            });
        }
        self.loads.retain(|_, q| !q.is_empty());
        for (client, bytes) in dropped {
            self.release_usage(client, |u| {
                u.pending = u.pending.saturating_sub(1);
                u.bytes = u.bytes.saturating_sub(bytes);
            });
        }
    }

    /// The node stops being operational: transactions that did not vote are aborted and
    /// waiting requests dropped; voted ones are on disk, for verification to decide.
    pub fn stop_operation(&mut self, db: &mut dyn Backend) -> DbResult {
        self.drop_waiting(|_| true);
        let unvoted: Vec<Tid> = self
            .txns
            .iter()
            .filter(|(_, t)| !t.voted)
            .map(|(ttid, _)| *ttid)
            .collect();
        let mut out = Vec::new();
        for ttid in unvoted {
            self.abort(db, &mut out, ttid, None)?;
        }
        Ok(())
    }

    /// Everything unfinished was dropped from the database (operation starts anew).
    pub fn reset(&mut self) {
        let mutants = self.mutants;
        *self = Transactions::default();
        self.mutants = mutants;
    }

    /// Internal consistency: every lock belongs to a known transaction that holds it,
    /// usage counts match what is queued.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (oid, ttid) in &self.write_locks {
            if !self.txns.contains_key(ttid) {
                return Err(format!("{oid} write-locked by unknown {ttid}"));
            }
        }
        for (oid, (ttid, _)) in &self.read_locks {
            if self.txns.get(ttid).and_then(|t| t.locked).is_none() {
                return Err(format!("{oid} read-locked by {ttid}, which is not locked"));
            }
        }
        let mut pending: BTreeMap<Nid, usize> = BTreeMap::new();
        for p in self.delayed.values().flat_map(|q| q.values()) {
            *pending.entry(p.origin().client).or_default() += 1;
        }
        for l in self.loads.values().flatten() {
            *pending.entry(l.origin.client).or_default() += 1;
        }
        for (client, n) in &pending {
            let counted = self.usage.get(client).map_or(0, |u| u.pending);
            if counted != *n {
                return Err(format!("{client}: {n} waiting, {counted} counted"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::sqlite::SqliteBackend;
    use crate::db::{Cell, Identity};
    use crate::proto::{CellState, NodeType, Ptid};
    use sha1::{Digest, Sha1};

    fn db(name: &str) -> SqliteBackend {
        let identity = Identity {
            cluster: "c".into(),
            nid: None,
        };
        let mut db = SqliteBackend::memory(name, &identity).unwrap();
        let cell = Cell {
            partition: 0,
            nid: Nid::new(NodeType::Storage, 1),
            state: CellState::UpToDate,
        };
        db.change_partition_table(Ptid(1), 0, &[cell], true)
            .unwrap();
        db
    }

    fn client(n: u32) -> Nid {
        Nid::new(NodeType::Client, n)
    }

    /// A request of client `n` on its connection `n`, message `id`.
    fn from(n: u32, id: u32) -> Origin {
        Origin {
            conn: ConnId(n as u64),
            id,
            client: client(n),
        }
    }

    fn data(bytes: &[u8]) -> Write {
        Write::Data(ObjectData {
            compression: 0,
            checksum: Sha1::digest(bytes).into(),
            data: bytes.to_vec(),
        })
    }

    fn answers(out: &mut Vec<Out>) -> Vec<(u32, Packet)> {
        out.drain(..)
            .filter_map(|o| match o {
                Out::Answer { id, packet, .. } => Some((id, packet)),
                _ => None,
            })
            .collect()
    }

    fn stored(conflict: Option<Tid>) -> Packet {
        Packet::AnswerStoreObject { conflict }
    }

    fn is_error(p: &Packet) -> bool {
        matches!(p, Packet::Error { .. })
    }

    /// Store `oid` in a new transaction of client 9 and commit it as `tid`.
    fn commit(tm: &mut Transactions, db: &mut dyn Backend, ttid: u64, oid: u64, tid: u64) {
        let mut out = Vec::new();
        let serial = match db.load(Oid(oid), None, None).unwrap() {
            Load::Found(l) => l.serial,
            _ => Tid::ZERO,
        };
        let o = from(9, 0);
        tm.store(db, &mut out, o, Tid(ttid), Oid(oid), serial, data(b"x"))
            .unwrap();
        tm.vote(db, &mut out, o, Tid(ttid), None, false).unwrap();
        assert_eq!(
            answers(&mut out),
            vec![(0, stored(None)), (0, Packet::AnswerVoteTransaction)]
        );
        tm.lock(db, Tid(ttid), Tid(tid)).unwrap().unwrap();
        tm.unlock(db, &mut out, Tid(ttid)).unwrap();
        tm.check_invariants().unwrap();
    }

    #[test]
    fn a_store_on_a_stale_serial_conflicts() {
        for skipped in [false, true] {
            let mut db = db(&format!("tm-conflict-{skipped}"));
            let mut tm = Transactions::default();
            tm.mutants.conflict_check_skipped = skipped;
            commit(&mut tm, &mut db, 100, 1, 110);
            let mut out = Vec::new();
            // Based on the creation (ZERO) while 110 is current.
            tm.store(
                &mut db,
                &mut out,
                from(1, 1),
                Tid(200),
                Oid(1),
                Tid::ZERO,
                data(b"y"),
            )
            .unwrap();
            let expected = if skipped { None } else { Some(Tid(110)) };
            assert_eq!(answers(&mut out), vec![(1, stored(expected))]);
            assert_eq!(tm.write_locker(Oid(1)), skipped.then_some(Tid(200)));
            // Resolved: stored again on the current serial, it locks.
            tm.store(
                &mut db,
                &mut out,
                from(1, 2),
                Tid(200),
                Oid(1),
                Tid(110),
                data(b"z"),
            )
            .unwrap();
            assert_eq!(answers(&mut out), vec![(2, stored(None))]);
            assert_eq!(tm.write_locker(Oid(1)), Some(Tid(200)));
        }
    }

    #[test]
    fn a_store_again_under_its_own_lock_is_still_checked() {
        // Seed 212 of the commits scenario: the client re-stores, under the lock it
        // holds, on a serial older than the committed one; the storage must say so.
        let mut db = db("tm-restore-checked");
        let mut tm = Transactions::default();
        commit(&mut tm, &mut db, 100, 1, 110);
        let mut out = Vec::new();
        let mut store = |tm: &mut Transactions, id, serial, write| {
            tm.store(
                &mut db,
                &mut out,
                from(1, id),
                Tid(200),
                Oid(1),
                serial,
                write,
            )
            .unwrap();
            answers(&mut out)
        };
        assert_eq!(
            store(&mut tm, 1, Tid(110), data(b"y")),
            vec![(1, stored(None))]
        );
        assert_eq!(tm.write_locker(Oid(1)), Some(Tid(200)));
        // Again, on the serial before the committed one: a conflict, the lock kept.
        assert_eq!(
            store(&mut tm, 2, Tid(105), data(b"z")),
            vec![(2, stored(Some(Tid(110))))]
        );
        assert_eq!(tm.write_locker(Oid(1)), Some(Tid(200)));
        // A readCurrent check after the store, on an old serial: a conflict too.
        assert_eq!(
            store(&mut tm, 3, Tid(105), Write::Check),
            vec![(
                3,
                Packet::AnswerCheckCurrentSerial {
                    conflict: Some(Tid(110))
                }
            )]
        );
        // On the committed serial, both pass.
        assert_eq!(
            store(&mut tm, 4, Tid(110), data(b"w")),
            vec![(4, stored(None))]
        );
        assert_eq!(
            store(&mut tm, 5, Tid(110), Write::Check),
            vec![(5, Packet::AnswerCheckCurrentSerial { conflict: None })]
        );
        tm.check_invariants().unwrap();
    }

    #[test]
    fn a_readcurrent_check_conflicts_and_locks() {
        for unchecked in [false, true] {
            let mut db = db(&format!("tm-readcurrent-{unchecked}"));
            let mut tm = Transactions::default();
            tm.mutants.readcurrent_unchecked = unchecked;
            commit(&mut tm, &mut db, 100, 1, 110);
            let mut out = Vec::new();
            tm.store(
                &mut db,
                &mut out,
                from(1, 1),
                Tid(200),
                Oid(1),
                Tid(105),
                Write::Check,
            )
            .unwrap();
            let expected = if unchecked { None } else { Some(Tid(110)) };
            assert_eq!(
                answers(&mut out),
                vec![(1, Packet::AnswerCheckCurrentSerial { conflict: expected })]
            );
            // Checked on the current serial: locked, and a younger store waits for it.
            tm.store(
                &mut db,
                &mut out,
                from(1, 2),
                Tid(200),
                Oid(1),
                Tid(110),
                Write::Check,
            )
            .unwrap();
            assert_eq!(
                answers(&mut out),
                vec![(2, Packet::AnswerCheckCurrentSerial { conflict: None })]
            );
            tm.store(
                &mut db,
                &mut out,
                from(2, 3),
                Tid(300),
                Oid(1),
                Tid(110),
                data(b"a"),
            )
            .unwrap();
            assert!(answers(&mut out).is_empty());
            assert!(tm.objectless(Tid(200)));
        }
    }

    #[test]
    fn waiting_stores_get_the_lock_in_ttid_order() {
        let mut db = db("tm-wait-order");
        let mut tm = Transactions::default();
        let mut out = Vec::new();
        tm.store(
            &mut db,
            &mut out,
            from(1, 1),
            Tid(10),
            Oid(1),
            Tid::ZERO,
            data(b"a"),
        )
        .unwrap();
        tm.vote(&mut db, &mut out, from(1, 2), Tid(10), None, false)
            .unwrap();
        answers(&mut out);
        // The locker voted: younger and older stores both wait, no deadlock notice.
        tm.store(
            &mut db,
            &mut out,
            from(3, 3),
            Tid(30),
            Oid(1),
            Tid::ZERO,
            data(b"c"),
        )
        .unwrap();
        tm.store(
            &mut db,
            &mut out,
            from(2, 4),
            Tid(5),
            Oid(1),
            Tid::ZERO,
            data(b"b"),
        )
        .unwrap();
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(tm.waiting(), 2);
        // Abort of the voted locker (by its client): the oldest waiter gets the lock, the
        // other waits again.
        tm.abort(&mut db, &mut out, Tid(10), Some(client(1)))
            .unwrap();
        assert_eq!(answers(&mut out), vec![(4, stored(None))]);
        assert_eq!(tm.write_locker(Oid(1)), Some(Tid(5)));
        assert_eq!(tm.waiting(), 1);
        tm.check_invariants().unwrap();
        // Ttid 5 commits: ttid 30 now conflicts with it.
        tm.vote(&mut db, &mut out, from(2, 5), Tid(5), None, false)
            .unwrap();
        tm.lock(&mut db, Tid(5), Tid(50)).unwrap().unwrap();
        answers(&mut out);
        tm.unlock(&mut db, &mut out, Tid(5)).unwrap();
        assert_eq!(answers(&mut out), vec![(3, stored(Some(Tid(50))))]);
        assert_eq!(tm.write_locker(Oid(1)), None);
        tm.check_invariants().unwrap();
    }

    #[test]
    fn deadlock_notice_then_relock_without_conflict() {
        let mut db = db("tm-relock-none");
        let mut tm = Transactions::default();
        let mut out = Vec::new();
        // Younger 20 holds oid 1; older 10 wants it.
        tm.store(
            &mut db,
            &mut out,
            from(2, 1),
            Tid(20),
            Oid(1),
            Tid::ZERO,
            data(b"b"),
        )
        .unwrap();
        answers(&mut out);
        tm.store(
            &mut db,
            &mut out,
            from(1, 2),
            Tid(10),
            Oid(1),
            Tid::ZERO,
            data(b"a"),
        )
        .unwrap();
        let notice = Out::Notify {
            conn: ConnId(2),
            packet: Packet::NotifyDeadlock {
                ttid: Tid(20),
                oid: Oid(1),
            },
        };
        assert_eq!(out, vec![notice.clone()]);
        out.clear();
        // Once per object and locker.
        tm.store(
            &mut db,
            &mut out,
            from(1, 3),
            Tid(10),
            Oid(1),
            Tid::ZERO,
            Write::Check,
        )
        .unwrap();
        assert!(out.is_empty(), "{out:?}");
        // The younger one relocks: the older gets the lock (both its requests answered),
        // the relock waits behind it.
        tm.relock(&mut db, &mut out, from(2, 4), Tid(20), Oid(1))
            .unwrap();
        assert_eq!(
            answers(&mut out),
            vec![
                (2, stored(None)),
                (3, Packet::AnswerCheckCurrentSerial { conflict: None })
            ]
        );
        assert_eq!(tm.write_locker(Oid(1)), Some(Tid(10)));
        tm.check_invariants().unwrap();
        // The older one aborts: nothing changed, the relock succeeds plainly.
        tm.abort(&mut db, &mut out, Tid(10), None).unwrap();
        assert_eq!(
            answers(&mut out),
            vec![(4, Packet::AnswerRelockObject { conflict: None })]
        );
        assert_eq!(tm.write_locker(Oid(1)), Some(Tid(20)));
        tm.check_invariants().unwrap();
    }

    #[test]
    fn relock_after_a_newer_commit_returns_the_stored_data() {
        let mut db = db("tm-relock-conflict");
        let mut tm = Transactions::default();
        let mut out = Vec::new();
        tm.store(
            &mut db,
            &mut out,
            from(2, 1),
            Tid(20),
            Oid(1),
            Tid::ZERO,
            data(b"mine"),
        )
        .unwrap();
        tm.store(
            &mut db,
            &mut out,
            from(1, 2),
            Tid(10),
            Oid(1),
            Tid::ZERO,
            data(b"a"),
        )
        .unwrap();
        tm.relock(&mut db, &mut out, from(2, 3), Tid(20), Oid(1))
            .unwrap();
        assert_eq!(tm.write_locker(Oid(1)), Some(Tid(10)));
        out.clear();
        tm.vote(&mut db, &mut out, from(1, 4), Tid(10), None, false)
            .unwrap();
        tm.lock(&mut db, Tid(10), Tid(15)).unwrap().unwrap();
        answers(&mut out);
        tm.unlock(&mut db, &mut out, Tid(10)).unwrap();
        let Write::Data(d) = data(b"mine") else {
            unreachable!()
        };
        let expected = Relocked {
            serial: Tid::ZERO,
            conflict: Tid(15),
            data: Some((0, d.checksum, Data(d.data))),
        };
        assert_eq!(
            answers(&mut out),
            vec![(
                3,
                Packet::AnswerRelockObject {
                    conflict: Some(expected)
                }
            )]
        );
        // Not locked: the client resolves and stores again on the new serial.
        assert_eq!(tm.write_locker(Oid(1)), None);
        tm.store(
            &mut db,
            &mut out,
            from(2, 5),
            Tid(20),
            Oid(1),
            Tid(15),
            data(b"m2"),
        )
        .unwrap();
        assert_eq!(answers(&mut out), vec![(5, stored(None))]);
        tm.check_invariants().unwrap();
    }

    #[test]
    fn lockless_stores_take_no_lock_and_check_nothing() {
        let mut db = db("tm-lockless");
        let mut tm = Transactions::default();
        let mut out = Vec::new();
        commit(&mut tm, &mut db, 100, 1, 110);
        tm.store_lockless(
            &mut db,
            &mut out,
            from(1, 1),
            Tid(200),
            Oid(1),
            Tid::ZERO,
            data(b"a"),
        )
        .unwrap();
        assert_eq!(answers(&mut out), vec![(1, stored(Some(Tid::ZERO)))]);
        assert_eq!(tm.write_locker(Oid(1)), None);
        tm.store(
            &mut db,
            &mut out,
            from(2, 2),
            Tid(300),
            Oid(1),
            Tid(110),
            data(b"b"),
        )
        .unwrap();
        assert_eq!(answers(&mut out), vec![(2, stored(None))]);
        // Its data is written at vote all the same.
        tm.vote(&mut db, &mut out, from(1, 3), Tid(200), None, false)
            .unwrap();
        assert_eq!(answers(&mut out), vec![(3, Packet::AnswerVoteTransaction)]);
        assert!(db.locked_transactions().unwrap().contains_key(&Tid(200)));
    }

    #[test]
    fn the_vote_is_on_disk_before_its_answer() {
        for lazy in [false, true] {
            let mut db = db(&format!("tm-vote-{lazy}"));
            let mut tm = Transactions::default();
            let mut out = Vec::new();
            tm.store(
                &mut db,
                &mut out,
                from(1, 1),
                Tid(10),
                Oid(1),
                Tid::ZERO,
                data(b"a"),
            )
            .unwrap();
            let meta = TxnMeta {
                oids: vec![Oid(1)],
                ..Default::default()
            };
            tm.vote(&mut db, &mut out, from(1, 2), Tid(10), Some(meta), lazy)
                .unwrap();
            assert_eq!(
                answers(&mut out),
                vec![(1, stored(None)), (2, Packet::AnswerStoreTransaction)]
            );
            let on_disk = db.locked_transactions().unwrap();
            assert_eq!(on_disk.contains_key(&Tid(10)), !lazy, "{on_disk:?}");
            // Either way the lock makes it durable.
            tm.lock(&mut db, Tid(10), Tid(12)).unwrap().unwrap();
            assert_eq!(
                db.locked_transactions().unwrap().get(&Tid(10)),
                Some(&Some(Tid(12)))
            );
        }
    }

    #[test]
    fn every_load_of_a_read_locked_object_waits_for_the_unlock() {
        let mut db = db("tm-read-lock");
        let mut tm = Transactions::default();
        let mut out = Vec::new();
        commit(&mut tm, &mut db, 100, 1, 110);
        let o = from(1, 1);
        tm.store(
            &mut db,
            &mut out,
            o,
            Tid(200),
            Oid(1),
            Tid(110),
            data(b"new"),
        )
        .unwrap();
        tm.vote(&mut db, &mut out, o, Tid(200), None, false)
            .unwrap();
        tm.lock(&mut db, Tid(200), Tid(210)).unwrap().unwrap();
        answers(&mut out);
        // Every load waits, even one whose snapshot excludes 210: answered now, it would
        // say 110 has no next serial, and be cached as current.
        tm.load(&mut db, &mut out, from(2, 2), Oid(1), None, None)
            .unwrap();
        tm.load(&mut db, &mut out, from(2, 3), Oid(1), None, Some(Tid(211)))
            .unwrap();
        tm.load(&mut db, &mut out, from(2, 4), Oid(1), None, Some(Tid(210)))
            .unwrap();
        tm.load(&mut db, &mut out, from(2, 7), Oid(1), Some(Tid(110)), None)
            .unwrap();
        assert_eq!(answers(&mut out), vec![]);
        assert_eq!(tm.waiting(), 4);
        tm.check_invariants().unwrap();
        tm.unlock(&mut db, &mut out, Tid(200)).unwrap();
        let served = answers(&mut out);
        assert!(
            matches!(
                &served[..],
                [
                    (
                        2,
                        Packet::AnswerObject {
                            serial: Tid(210),
                            ..
                        }
                    ),
                    (
                        3,
                        Packet::AnswerObject {
                            serial: Tid(210),
                            ..
                        }
                    ),
                    (
                        4,
                        Packet::AnswerObject {
                            serial: Tid(110),
                            next_serial: Some(Tid(210)),
                            ..
                        }
                    ),
                    (
                        7,
                        Packet::AnswerObject {
                            serial: Tid(110),
                            next_serial: Some(Tid(210)),
                            ..
                        }
                    )
                ]
            ),
            "{served:?}"
        );
        tm.check_invariants().unwrap();
        // Errors: no such object; no revision that old.
        tm.load(&mut db, &mut out, from(2, 5), Oid(7), None, None)
            .unwrap();
        tm.load(&mut db, &mut out, from(2, 6), Oid(1), Some(Tid(3)), None)
            .unwrap();
        let codes: Vec<_> = answers(&mut out)
            .into_iter()
            .map(|(_, p)| match p {
                Packet::Error { code, .. } => Some(code),
                _ => None,
            })
            .collect();
        assert_eq!(
            codes,
            vec![
                Some(ErrorCode::OidDoesNotExist),
                Some(ErrorCode::OidNotFound)
            ]
        );
    }

    #[test]
    fn a_locked_store_counts_against_the_client_cap() {
        let mut db = db("tm-cap-locked");
        let mut tm = Transactions::default();
        let mut out = Vec::new();
        let o = from(1, 1);
        tm.store(&mut db, &mut out, o, Tid(10), Oid(1), Tid::ZERO, data(b"a"))
            .unwrap();
        assert_eq!(answers(&mut out), vec![(1, stored(None))]);
        // Near the cap: the next store is refused and the connection closed.
        tm.usage(client(1)).bytes = MAX_CLIENT_BYTES - 2;
        tm.store(
            &mut db,
            &mut out,
            from(1, 2),
            Tid(10),
            Oid(2),
            Tid::ZERO,
            data(b"bbbb"),
        )
        .unwrap();
        assert!(
            out.iter().any(|o| matches!(o, Out::Close { .. })),
            "{out:?}"
        );
        assert_eq!(tm.write_locker(Oid(2)), None);
    }

    #[test]
    fn a_locked_transaction_is_never_aborted() {
        let mut db = db("tm-abort-locked");
        let mut tm = Transactions::default();
        let mut out = Vec::new();
        let o = from(1, 1);
        tm.store(&mut db, &mut out, o, Tid(10), Oid(1), Tid::ZERO, data(b"a"))
            .unwrap();
        tm.vote(&mut db, &mut out, o, Tid(10), None, false).unwrap();
        tm.lock(&mut db, Tid(10), Tid(11)).unwrap().unwrap();
        tm.abort(&mut db, &mut out, Tid(10), None).unwrap();
        tm.abort(&mut db, &mut out, Tid(10), Some(client(1)))
            .unwrap();
        tm.client_gone(&mut db, &mut out, client(1)).unwrap();
        tm.connection_closed(&mut db, &mut out, ConnId(1)).unwrap();
        assert_eq!(tm.locked_tid(Tid(10)), Some(Tid(11)));
        assert_eq!(tm.write_locker(Oid(1)), Some(Tid(10)));
        tm.unlock(&mut db, &mut out, Tid(10)).unwrap();
        assert!(matches!(
            db.load(Oid(1), None, None).unwrap(),
            Load::Found(l) if l.serial == Tid(11)
        ));
    }

    #[test]
    fn a_closed_connection_aborts_only_unvoted_transactions() {
        let mut db = db("tm-disconnect");
        let mut tm = Transactions::default();
        let mut out = Vec::new();
        for (ttid, oid) in [(10, 1), (20, 2)] {
            tm.store(
                &mut db,
                &mut out,
                from(1, 1),
                Tid(ttid),
                Oid(oid),
                Tid::ZERO,
                data(b"a"),
            )
            .unwrap();
        }
        tm.vote(&mut db, &mut out, from(1, 2), Tid(10), None, false)
            .unwrap();
        // Another client waits for oid 2.
        tm.store(
            &mut db,
            &mut out,
            from(2, 3),
            Tid(30),
            Oid(2),
            Tid::ZERO,
            data(b"b"),
        )
        .unwrap();
        answers(&mut out);
        tm.connection_closed(&mut db, &mut out, ConnId(1)).unwrap();
        assert!(tm.is_voted(Tid(10)));
        assert_eq!(tm.write_locker(Oid(2)), Some(Tid(30)));
        assert_eq!(answers(&mut out), vec![(3, stored(None))]);
        assert_eq!(tm.len(), 2);
        // The primary reports the client gone: the voted one waits for the primary (the
        // report may be about an earlier session of the same client id).
        tm.client_gone(&mut db, &mut out, client(1)).unwrap();
        assert_eq!(tm.len(), 2);
        assert!(db.locked_transactions().unwrap().contains_key(&Tid(10)));
        tm.abort(&mut db, &mut out, Tid(10), None).unwrap();
        assert_eq!(tm.len(), 1);
        assert!(!db.locked_transactions().unwrap().contains_key(&Tid(10)));
        tm.check_invariants().unwrap();
    }

    #[test]
    fn impossible_requests_are_answered_with_errors() {
        let mut db = db("tm-impossible");
        let mut tm = Transactions::default();
        let mut out = Vec::new();
        let o = from(1, 1);
        tm.store(&mut db, &mut out, o, Tid(10), Oid(1), Tid::ZERO, data(b"a"))
            .unwrap();
        answers(&mut out);
        // Another client's transaction; an unknown one; relock of what it did not lock;
        // a nonexistent object stored on a serial.
        tm.store(
            &mut db,
            &mut out,
            from(2, 2),
            Tid(10),
            Oid(2),
            Tid::ZERO,
            data(b"a"),
        )
        .unwrap();
        tm.vote(&mut db, &mut out, from(2, 3), Tid(99), None, false)
            .unwrap();
        tm.relock(&mut db, &mut out, from(1, 4), Tid(10), Oid(5))
            .unwrap();
        tm.store(
            &mut db,
            &mut out,
            from(1, 5),
            Tid(10),
            Oid(6),
            Tid(3),
            data(b"a"),
        )
        .unwrap();
        assert!(
            tm.lock(&mut db, Tid(10), Tid(11)).unwrap().is_err(),
            "not voted"
        );
        tm.vote(&mut db, &mut out, o, Tid(10), None, false).unwrap();
        // After the vote: stores, a second vote.
        tm.store(
            &mut db,
            &mut out,
            from(1, 6),
            Tid(10),
            Oid(7),
            Tid::ZERO,
            data(b"a"),
        )
        .unwrap();
        tm.vote(&mut db, &mut out, from(1, 7), Tid(10), None, false)
            .unwrap();
        let got = answers(&mut out);
        let errors: Vec<u32> = got
            .iter()
            .filter(|(_, p)| is_error(p))
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(errors, vec![2, 3, 4, 5, 6, 7], "{got:?}");
        assert!(tm.lock(&mut db, Tid(99), Tid(100)).unwrap().is_err());
        tm.check_invariants().unwrap();
    }

    #[test]
    fn a_client_with_too_many_waiting_requests_is_cut_off() {
        let mut db = db("tm-cap");
        let mut tm = Transactions::default();
        let mut out = Vec::new();
        tm.store(
            &mut db,
            &mut out,
            from(1, 0),
            Tid(10),
            Oid(1),
            Tid::ZERO,
            Write::Check,
        )
        .unwrap();
        tm.vote(&mut db, &mut out, from(1, 0), Tid(10), None, false)
            .unwrap();
        out.clear();
        for i in 0..MAX_PENDING as u32 {
            tm.store(
                &mut db,
                &mut out,
                from(2, i),
                Tid(20),
                Oid(1),
                Tid::ZERO,
                Write::Check,
            )
            .unwrap();
        }
        assert!(out.is_empty());
        tm.store(
            &mut db,
            &mut out,
            from(2, 9),
            Tid(20),
            Oid(1),
            Tid::ZERO,
            Write::Check,
        )
        .unwrap();
        assert!(out.contains(&Out::Close { conn: ConnId(2) }), "{out:?}");
        tm.connection_closed(&mut db, &mut out, ConnId(2)).unwrap();
        assert_eq!(tm.waiting(), 0);
        tm.check_invariants().unwrap();
    }
}
