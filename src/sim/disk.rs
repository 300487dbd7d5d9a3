//! The storages' disks in the simulator: one SQLite in-memory database per storage node,
//! opened by each (re)started process through a [`FaultyBackend`] whose [`DiskFaults`] the
//! world drives (armed while the node's process runs; rates from the swarm).
//!
//! What survives what:
//! - a crash drops the process's backend: its uncommitted SQL transaction is rolled back and
//!   its in-memory state lost, while the disk's [`MemoryAnchor`] keeps what was committed for
//!   the next process;
//! - a wipe (only while the owner's process is down) drops the anchor and makes a new, empty
//!   database under a new name: the next process starts from nothing;
//! - a swap makes the next process open another node's disk; the SQLite backend's
//!   one-process-per-database claim refuses it while that node's process lives, and the
//!   refused process gets a backend that fails every call, so it exits saying why.
//!
//! In-memory database names are global to the OS process, and sweeps run worlds on several
//! threads: each world's names get a unique prefix, which is never part of a trace.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::net::NodeIdx;
use crate::db::faulty::{DiskFaults, FaultyBackend};
use crate::db::sqlite::{MemoryAnchor, SqliteBackend};
use crate::db::{Backend, DbError, DbResult, Identity};
use crate::proto::Nid;
use crate::rng::{self, ChaCha8Rng};

fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "neo-sim-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The I/O fault rates of every disk of a run (per database call).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IoRates {
    pub read_error: f64,
    pub write_error: f64,
    pub slow: f64,
    pub slow_max: Duration,
}

struct Disk {
    /// The database's current name; a wipe moves to a new one.
    name: String,
    generation: u32,
    anchor: Option<MemoryAnchor>,
    faults: Rc<RefCell<DiskFaults>>,
    /// The next process of this node opens this node's disk instead (a swap).
    swap_next: Option<NodeIdx>,
}

struct Inner {
    prefix: String,
    disks: BTreeMap<NodeIdx, Disk>,
    rng: ChaCha8Rng,
}

/// Every storage's disk (a shared handle: the nodes' restart closures hold one).
#[derive(Clone)]
pub struct Disks(Rc<RefCell<Inner>>);

/// What happened to a storage's disk, for the checkers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskEvent {
    pub node: NodeIdx,
    pub at: Duration,
    /// The node id the node had before (its process's, or its database's).
    pub old_nid: Option<Nid>,
    pub kind: DiskEventKind,
    /// The ids with a readable cell in a primary's table at the time (their data was
    /// somewhere else than on the new disk).
    pub readable: Vec<Nid>,
    /// Whether the disk held the last readable copy of some partition (in its table).
    pub lost_data: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskEventKind {
    /// Restarted with a new, empty database.
    Wiped,
    /// Restarted with the disk of `with`, whose process was running.
    Swapped { with: NodeIdx },
}

impl Disks {
    pub fn new(rng: ChaCha8Rng) -> Disks {
        Disks(Rc::new(RefCell::new(Inner {
            prefix: unique_prefix(),
            disks: BTreeMap::new(),
            rng,
        })))
    }

    fn make(inner: &mut Inner, node: NodeIdx, generation: u32) -> DbResult<Disk> {
        let name = format!("{}-n{node}-g{generation}", inner.prefix);
        let anchor = MemoryAnchor::new(&name)?;
        let seed = rng::below(&mut inner.rng, u64::MAX);
        Ok(Disk {
            name,
            generation,
            anchor: Some(anchor),
            faults: Rc::new(RefCell::new(DiskFaults::new(rng::stream(seed, 0)))),
            swap_next: None,
        })
    }

    /// Give node `node` an empty disk.
    pub fn add(&self, node: NodeIdx) -> DbResult<()> {
        let mut inner = self.0.borrow_mut();
        let disk = Self::make(&mut inner, node, 0)?;
        inner.disks.insert(node, disk);
        Ok(())
    }

    pub fn has(&self, node: NodeIdx) -> bool {
        self.0.borrow().disks.contains_key(&node)
    }

    /// The node's database without faults (to prepare it before the run, or to look at it).
    pub fn open_plain(&self, node: NodeIdx, identity: &Identity) -> DbResult<SqliteBackend> {
        let name = self.0.borrow().disks[&node].name.clone();
        SqliteBackend::memory(&name, identity)
    }

    /// What a starting process of `node` opens: its disk (or the one a swap names) behind
    /// its faults; a refused open gives a backend that fails every call.
    pub fn open(&self, node: NodeIdx, identity: &Identity) -> Box<dyn Backend> {
        let mut inner = self.0.borrow_mut();
        let disk = inner.disks.get_mut(&node).expect("a storage has a disk");
        let from = disk.swap_next.take().unwrap_or(node);
        let faults = disk.faults.clone();
        let (name, generation) = (
            inner.disks[&from].name.clone(),
            inner.disks[&from].generation,
        );
        drop(inner);
        Box::new(match SqliteBackend::memory(&name, identity) {
            Ok(db) => FaultyBackend::new(Box::new(db), faults),
            // The real name is unique to this OS process; the run must not depend on it.
            Err(DbError::Locked(_)) => FaultyBackend::refused(
                DbError::Locked(format!("disk-n{from}-g{generation}")),
                faults,
            ),
            Err(e) => FaultyBackend::refused(e, faults),
        })
    }

    /// Replace the disk of `node` (whose process is down) with a new, empty one.
    pub fn wipe(&self, node: NodeIdx) -> DbResult<()> {
        let mut inner = self.0.borrow_mut();
        let generation = inner.disks[&node].generation + 1;
        let mut disk = Self::make(&mut inner, node, generation)?;
        let old = inner.disks.remove(&node).expect("a storage has a disk");
        // The faults (and their stream) belong to the node, not to the database.
        disk.faults = old.faults;
        drop(old.anchor);
        inner.disks.insert(node, disk);
        Ok(())
    }

    /// The next process of `node` opens the disk of `with`.
    pub fn swap_next(&self, node: NodeIdx, with: NodeIdx) {
        if let Some(d) = self.0.borrow_mut().disks.get_mut(&node) {
            d.swap_next = Some(with);
        }
    }

    pub fn set_rates(&self, rates: &IoRates) {
        for d in self.0.borrow().disks.values() {
            let mut f = d.faults.borrow_mut();
            f.read_error = rates.read_error;
            f.write_error = rates.write_error;
            f.slow = rates.slow;
            f.slow_max = rates.slow_max;
        }
    }

    pub fn heal(&self) {
        for d in self.0.borrow_mut().disks.values_mut() {
            d.faults.borrow_mut().heal();
            d.swap_next = None;
        }
    }

    /// Arm or disarm the faults of `node`'s disk (if it has one).
    pub fn arm(&self, node: NodeIdx, armed: bool) {
        if let Some(d) = self.0.borrow().disks.get(&node) {
            d.faults.borrow_mut().armed = armed;
        }
    }

    /// What `node`'s disk did during the last call: the virtual time its slow calls took and
    /// the faults it injected.
    pub fn take(&self, node: NodeIdx) -> (Duration, Vec<String>) {
        match self.0.borrow().disks.get(&node) {
            Some(d) => {
                let mut f = d.faults.borrow_mut();
                (
                    std::mem::take(&mut f.stalled),
                    std::mem::take(&mut f.injected),
                )
            }
            None => (Duration::ZERO, Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{NodeType, Tid};

    fn identity() -> Identity {
        Identity {
            cluster: "sim".into(),
            nid: None,
        }
    }

    #[test]
    fn a_crash_loses_what_was_not_committed_a_wipe_everything_a_swap_is_refused() {
        let disks = Disks::new(rng::stream(1, 11));
        disks.add(0).unwrap();
        disks.add(1).unwrap();
        let s1 = Nid::new(NodeType::Storage, 1);
        let mut db = disks.open(0, &identity());
        db.set_nid(s1).unwrap();
        db.set_backup_tid(Some(Tid(5))).unwrap();
        // The process dies before committing the backup TID.
        drop(db);
        let db = disks.open(0, &identity());
        let config = db.config().unwrap();
        assert_eq!((config.nid, config.backup_tid), (Some(s1), None));
        // While node 0 runs, node 1 cannot open its disk.
        disks.swap_next(1, 0);
        let refused = disks.open(1, &identity());
        assert_eq!(refused.config(), Err(DbError::Locked("disk-n0-g0".into())));
        // The next start of node 1 opens its own disk again.
        assert_eq!(disks.open(1, &identity()).config().unwrap().nid, None);
        drop(db);
        disks.wipe(0).unwrap();
        assert_eq!(disks.open(0, &identity()).config().unwrap().nid, None);
    }
}
