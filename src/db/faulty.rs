//! A faulty disk: a [`Backend`] wrapper that injects the failures of a real disk, driven by
//! shared [`DiskFaults`] that its owner (the simulator) controls.
//!
//! - I/O errors on reads (`DbError::Io`) and on writes: a write that commits fails either
//!   before doing anything or after it was done (the caller cannot tell which, as with a
//!   real `fsync` error), with EIO or ENOSPC (`DbError::NoSpace`); a write that does not
//!   commit fails before doing anything.
//! - Slow I/O: a call takes virtual time; the API is synchronous, so the time is added to
//!   [`DiskFaults::stalled`] and the simulator pauses the node's process for that long.
//! - A refused open ([`FaultyBackend::refused`]): the database could not be opened (another
//!   live process holds it); every call fails with that error, so the node stops at start
//!   with a clear message, as a real process whose open failed exits.
//!
//! Faults strike only while the disk is armed: the simulator arms it while the node's
//! process runs, so checkers reading the database between steps see it unharmed. What a
//! crash loses is the inner backend's business: dropping it rolls back what was not
//! committed.
//!
//! Like the rest of `db`, this is actor-side code: randomness only from the seeded stream.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use super::{
    Backend, Cell, DbConfig, DbError, DbResult, LastIds, Load, ObjectRecord, SerialRangeCheck,
    TidRangeCheck, TxnInfo, TxnMeta, UndoInfo, Value,
};
use crate::proto::{Nid, Oid, Ptid, Tid};
use crate::rng::{self, ChaCha8Rng};

/// What the disk of one node does wrong, and what it did.
pub struct DiskFaults {
    /// Faults strike only while armed.
    pub armed: bool,
    /// Chance that a read fails.
    pub read_error: f64,
    /// Chance that a write fails.
    pub write_error: f64,
    /// Chance that a call is slow, and the longest it then takes.
    pub slow: f64,
    pub slow_max: Duration,
    /// Virtual time spent in slow calls since the owner last took it.
    pub stalled: Duration,
    /// Faults injected since the owner last took them, worded for a trace.
    pub injected: Vec<String>,
    /// The next armed call fails with this error, doing nothing (scripted tests).
    pub fail_next: Option<DbError>,
    rng: ChaCha8Rng,
}

impl DiskFaults {
    /// A healthy disk (until its owner sets rates), drawing from `rng`.
    pub fn new(rng: ChaCha8Rng) -> DiskFaults {
        DiskFaults {
            armed: false,
            read_error: 0.0,
            write_error: 0.0,
            slow: 0.0,
            slow_max: Duration::ZERO,
            stalled: Duration::ZERO,
            injected: Vec::new(),
            fail_next: None,
            rng,
        }
    }

    /// Stop every fault (the liveness phase).
    pub fn heal(&mut self) {
        self.read_error = 0.0;
        self.write_error = 0.0;
        self.slow = 0.0;
    }

    fn strike(&mut self, op: Op, name: &'static str) -> Strike {
        if !self.armed {
            return Strike::None;
        }
        if let Some(e) = self.fail_next.take() {
            self.injected.push(format!("injected error in {name}: {e}"));
            return Strike::Before(e);
        }
        if self.slow > 0.0 && rng::chance(&mut self.rng, self.slow) {
            let took = rng::duration(&mut self.rng, Duration::from_millis(1), self.slow_max);
            self.stalled += took;
        }
        let (p, kind) = match op {
            Op::Read => (self.read_error, "read"),
            Op::Write | Op::Commit => (self.write_error, "write"),
        };
        if p <= 0.0 || !rng::chance(&mut self.rng, p) {
            return Strike::None;
        }
        let full = op != Op::Read && rng::chance(&mut self.rng, 0.5);
        // A commit may fail after its work was done: the caller must not rely on either.
        let after = op == Op::Commit && rng::chance(&mut self.rng, 0.5);
        let what = format!(
            "{} in {name}{}",
            if full { "ENOSPC" } else { "EIO" },
            if after { " (after the write)" } else { "" }
        );
        self.injected.push(format!("injected {kind} error: {what}"));
        let e = if full {
            DbError::NoSpace(format!("injected, in {name}"))
        } else {
            DbError::Io(format!("injected {kind} error in {name}"))
        };
        if after {
            Strike::After(e)
        } else {
            Strike::Before(e)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    /// Written, committed by a later `commit`.
    Write,
    /// Written and committed.
    Commit,
}

enum Strike {
    None,
    Before(DbError),
    After(DbError),
}

/// A backend whose disk fails as its [`DiskFaults`] say.
pub struct FaultyBackend {
    inner: Result<Box<dyn Backend>, DbError>,
    faults: Rc<RefCell<DiskFaults>>,
    /// Whether the inner backend defers its write-path commits (they fail as plain writes).
    deferred: bool,
}

impl FaultyBackend {
    pub fn new(inner: Box<dyn Backend>, faults: Rc<RefCell<DiskFaults>>) -> FaultyBackend {
        FaultyBackend {
            inner: Ok(inner),
            faults,
            deferred: false,
        }
    }

    /// A database that could not be opened: every call fails with `why`.
    pub fn refused(why: DbError, faults: Rc<RefCell<DiskFaults>>) -> FaultyBackend {
        FaultyBackend {
            inner: Err(why),
            faults,
            deferred: false,
        }
    }

    fn read<T>(
        &self,
        name: &'static str,
        f: impl FnOnce(&dyn Backend) -> DbResult<T>,
    ) -> DbResult<T> {
        let inner = self.inner.as_ref().map_err(Clone::clone)?;
        let strike = self.faults.borrow_mut().strike(Op::Read, name);
        match strike {
            Strike::None => f(inner.as_ref()),
            Strike::Before(e) | Strike::After(e) => Err(e),
        }
    }

    fn write<T>(
        &mut self,
        name: &'static str,
        commits: bool,
        f: impl FnOnce(&mut dyn Backend) -> DbResult<T>,
    ) -> DbResult<T> {
        let inner = self.inner.as_mut().map_err(|e| e.clone())?;
        let op = if commits { Op::Commit } else { Op::Write };
        let strike = self.faults.borrow_mut().strike(op, name);
        match strike {
            Strike::None => f(inner.as_mut()),
            Strike::Before(e) => Err(e),
            Strike::After(e) => {
                f(inner.as_mut())?;
                Err(e)
            }
        }
    }
}

impl Backend for FaultyBackend {
    fn config(&self) -> DbResult<DbConfig> {
        self.read("config", |b| b.config())
    }
    fn set_nid(&mut self, nid: Nid) -> DbResult<()> {
        self.write("set_nid", true, |b| b.set_nid(nid))
    }
    fn set_truncate_tid(&mut self, tid: Option<Tid>) -> DbResult<()> {
        self.write("set_truncate_tid", true, |b| b.set_truncate_tid(tid))
    }
    fn set_backup_tid(&mut self, tid: Option<Tid>) -> DbResult<()> {
        self.write("set_backup_tid", false, |b| b.set_backup_tid(tid))
    }
    fn reserve_ids(&mut self, oid: Option<Oid>, tid: Option<Tid>) -> DbResult<()> {
        self.write("reserve_ids", true, |b| b.reserve_ids(oid, tid))
    }
    fn partition_table(&self) -> DbResult<Vec<Cell>> {
        self.read("partition_table", |b| b.partition_table())
    }
    fn change_partition_table(
        &mut self,
        ptid: Ptid,
        replicas: u32,
        cells: &[Cell],
        reset: bool,
    ) -> DbResult<()> {
        self.write("change_partition_table", true, |b| {
            b.change_partition_table(ptid, replicas, cells, reset)
        })
    }
    fn replicated_up_to(&self, partition: u32) -> DbResult<Option<Tid>> {
        self.read("replicated_up_to", |b| b.replicated_up_to(partition))
    }
    fn set_replicated_up_to(&mut self, partition: u32, tid: Option<Tid>) -> DbResult<()> {
        self.write("set_replicated_up_to", false, |b| {
            b.set_replicated_up_to(partition, tid)
        })
    }
    fn store(&mut self, ttid: Tid, oid: Oid, value: Value) -> DbResult<()> {
        self.write("store", false, |b| b.store(ttid, oid, value))
    }
    fn unstore(&mut self, ttid: Tid, oid: Oid) -> DbResult<()> {
        self.write("unstore", false, |b| b.unstore(ttid, oid))
    }
    fn vote(&mut self, ttid: Tid, meta: Option<&TxnMeta>) -> DbResult<()> {
        let commits = !self.deferred;
        self.write("vote", commits, |b| b.vote(ttid, meta))
    }
    fn set_deferred(&mut self, deferred: bool) {
        self.deferred = deferred;
        if let Ok(inner) = self.inner.as_mut() {
            inner.set_deferred(deferred);
        }
    }
    fn lock(&mut self, ttid: Tid, tid: Tid) -> DbResult<()> {
        let commits = !self.deferred;
        self.write("lock", commits, |b| b.lock(ttid, tid))
    }
    fn unlock(&mut self, ttid: Tid, tid: Tid) -> DbResult<()> {
        let commits = !self.deferred;
        self.write("unlock", commits, |b| b.unlock(ttid, tid))
    }
    fn abort(&mut self, ttid: Tid) -> DbResult<()> {
        self.write("abort", true, |b| b.abort(ttid))
    }
    fn locked_transactions(&self) -> DbResult<BTreeMap<Tid, Option<Tid>>> {
        self.read("locked_transactions", |b| b.locked_transactions())
    }
    fn final_tid(&self, ttid: Tid) -> DbResult<Option<Tid>> {
        self.read("final_tid", |b| b.final_tid(ttid))
    }
    fn validate(&mut self, ttid: Tid, tid: Tid) -> DbResult<()> {
        self.write("validate", true, |b| b.validate(ttid, tid))
    }
    fn drop_unfinished(&mut self) -> DbResult<()> {
        self.write("drop_unfinished", true, |b| b.drop_unfinished())
    }
    fn load(&self, oid: Oid, at: Option<Tid>, before: Option<Tid>) -> DbResult<Load> {
        self.read("load", |b| b.load(oid, at, before))
    }
    fn history(&self, oid: Oid, offset: u64, length: u64) -> DbResult<Option<Vec<(Tid, u64)>>> {
        self.read("history", |b| b.history(oid, offset, length))
    }
    fn transaction(&self, tid: Tid) -> DbResult<Option<TxnInfo>> {
        self.read("transaction", |b| b.transaction(tid))
    }
    fn tids(&self, offset: u64, length: u64, partitions: &[u32]) -> DbResult<Vec<Tid>> {
        self.read("tids", |b| b.tids(offset, length, partitions))
    }
    fn tids_from(
        &self,
        min_tid: Tid,
        max_tid: Tid,
        length: u64,
        partitions: &[u32],
    ) -> DbResult<Vec<Tid>> {
        self.read("tids_from", |b| {
            b.tids_from(min_tid, max_tid, length, partitions)
        })
    }
    fn oids_from(
        &self,
        partition: u32,
        length: u64,
        min_oid: Oid,
        tid: Tid,
    ) -> DbResult<(Vec<Oid>, Option<Oid>)> {
        self.read("oids_from", |b| {
            b.oids_from(partition, length, min_oid, tid)
        })
    }
    fn find_undo(&self, oid: Oid, ltid: Tid, undone_tid: Tid) -> DbResult<Option<UndoInfo>> {
        self.read("find_undo", |b| b.find_undo(oid, ltid, undone_tid))
    }
    fn last_ids(&self) -> DbResult<LastIds> {
        self.read("last_ids", |b| b.last_ids())
    }
    fn truncate(&mut self) -> DbResult<()> {
        self.write("truncate", true, |b| b.truncate())
    }
    fn replication_tids(
        &self,
        partition: u32,
        min_tid: Tid,
        max_tid: Tid,
        length: u64,
    ) -> DbResult<Vec<Tid>> {
        self.read("replication_tids", |b| {
            b.replication_tids(partition, min_tid, max_tid, length)
        })
    }
    fn replication_objects(
        &self,
        partition: u32,
        min_tid: Tid,
        max_tid: Tid,
        min_oid: Oid,
        length: u64,
    ) -> DbResult<Vec<(Tid, Oid)>> {
        self.read("replication_objects", |b| {
            b.replication_objects(partition, min_tid, max_tid, min_oid, length)
        })
    }
    fn object_record(&self, oid: Oid, serial: Tid) -> DbResult<Option<ObjectRecord>> {
        self.read("object_record", |b| b.object_record(oid, serial))
    }
    fn put_transaction(&mut self, txn: &TxnInfo) -> DbResult<()> {
        self.write("put_transaction", false, |b| b.put_transaction(txn))
    }
    fn put_object(&mut self, oid: Oid, serial: Tid, record: &ObjectRecord) -> DbResult<()> {
        self.write("put_object", false, |b| b.put_object(oid, serial, record))
    }
    fn delete_transaction(&mut self, tid: Tid) -> DbResult<()> {
        self.write("delete_transaction", false, |b| b.delete_transaction(tid))
    }
    fn delete_object(&mut self, oid: Oid, serial: Tid) -> DbResult<()> {
        self.write("delete_object", false, |b| b.delete_object(oid, serial))
    }
    fn check_tid_range(
        &self,
        partition: u32,
        length: u64,
        min_tid: Tid,
        max_tid: Tid,
    ) -> DbResult<TidRangeCheck> {
        self.read("check_tid_range", |b| {
            b.check_tid_range(partition, length, min_tid, max_tid)
        })
    }
    fn check_serial_range(
        &self,
        partition: u32,
        length: u64,
        min_tid: Tid,
        max_tid: Tid,
        min_oid: Oid,
    ) -> DbResult<SerialRangeCheck> {
        self.read("check_serial_range", |b| {
            b.check_serial_range(partition, length, min_tid, max_tid, min_oid)
        })
    }
    fn commit(&mut self) -> DbResult<()> {
        self.write("commit", true, |b| b.commit())
    }
    fn pack(&mut self, tid: Tid, partitions: &[u32]) -> DbResult<()> {
        self.write("pack", true, |b| b.pack(tid, partitions))
    }
    fn drop_partitions(&mut self, partitions: &[u32]) -> DbResult<()> {
        self.write("drop_partitions", true, |b| b.drop_partitions(partitions))
    }
    fn erase(&mut self) -> DbResult<()> {
        self.write("erase", true, |b| b.erase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::sqlite::SqliteBackend;
    use crate::db::Identity;
    use crate::proto::NodeType;

    fn disk(name: &str) -> (FaultyBackend, Rc<RefCell<DiskFaults>>) {
        let identity = Identity {
            cluster: "c".into(),
            nid: None,
        };
        let inner = SqliteBackend::memory(name, &identity).unwrap();
        let faults = Rc::new(RefCell::new(DiskFaults::new(rng::stream(7, 0))));
        (FaultyBackend::new(Box::new(inner), faults.clone()), faults)
    }

    #[test]
    fn faults_strike_only_while_armed_and_say_what_they_did() {
        let (mut db, faults) = disk("faulty-unit-armed");
        faults.borrow_mut().read_error = 1.0;
        faults.borrow_mut().write_error = 1.0;
        assert!(db.config().is_ok(), "not armed: no fault");
        faults.borrow_mut().armed = true;
        let e = db.config().unwrap_err();
        assert!(matches!(e, DbError::Io(_)) && e.is_fatal(), "{e}");
        let e = db.set_nid(Nid::new(NodeType::Storage, 1)).unwrap_err();
        assert!(matches!(e, DbError::Io(_) | DbError::NoSpace(_)), "{e}");
        assert_eq!(faults.borrow().injected.len(), 2);
        faults.borrow_mut().heal();
        db.set_nid(Nid::new(NodeType::Storage, 2)).unwrap();
        assert_eq!(
            db.config().unwrap().nid,
            Some(Nid::new(NodeType::Storage, 2))
        );
    }

    #[test]
    fn slow_calls_add_up_and_a_refused_open_fails_every_call() {
        let (db, faults) = disk("faulty-unit-slow");
        {
            let mut f = faults.borrow_mut();
            f.armed = true;
            f.slow = 1.0;
            f.slow_max = Duration::from_millis(10);
        }
        for _ in 0..5 {
            db.config().unwrap();
        }
        let stalled = faults.borrow().stalled;
        assert!(stalled >= Duration::from_millis(5) && stalled <= Duration::from_millis(50));
        let refused = FaultyBackend::refused(DbError::Locked("x".into()), faults);
        assert_eq!(refused.config(), Err(DbError::Locked("x".into())));
    }
}
