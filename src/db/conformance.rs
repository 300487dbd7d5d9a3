//! The conformance suite every [`Backend`] must pass: one check per function, instantiated
//! as one `#[test]` per check by [`conformance_tests!`](crate::conformance_tests) for a
//! [`Fixture`] (a fresh database that can be opened, crashed and reopened).
//!
//! A "crash" is dropping the backend without committing: uncommitted work is rolled back
//! and held stores are lost; reopening must then find what was committed and nothing else,
//! with the data of lost stores released. Expected values are computed here independently
//! of the backends (digests included).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha1::{Digest, Sha1};

use super::sql::{HELD_BYTES, HELD_TXN_BYTES};
use super::{
    Backend, Cell, Checksum, DbError, Identity, Load, Loaded, ObjectData, ObjectRecord, TxnInfo,
    TxnMeta, UndoInfo, Value, MAX_TXN_OIDS, MAX_TXN_TEXT, SCHEMA_VERSION, ZERO_HASH,
};
use crate::proto::{CellState, Nid, Oid, Ptid, Tid};

/// A database under test. Each fixture is a fresh, empty database, removed when dropped.
pub trait Fixture {
    type Backend: Backend;
    /// Open the database (the first time, it is created).
    fn open(&self, identity: &Identity) -> super::DbResult<Self::Backend>;
    /// Run SQL on the database behind the backend's back (no backend open).
    fn raw_exec(&self, sql: &str);
    /// Everything the database holds, to compare before and after a refused open.
    fn snapshot(&self) -> Vec<u8>;
    /// The number of rows of a table.
    fn rows(&self, backend: &Self::Backend, table: &str) -> u64;
}

/// Expand to one `#[test]` per conformance check, each on a fresh fixture from `$fixture`.
#[macro_export]
macro_rules! conformance_tests {
    ($fixture:expr) => {
        $crate::conformance_tests!(@each $fixture;
            identity_is_stamped_and_kept,
            refused_databases_are_left_untouched,
            a_second_open_is_locked,
            operations_need_a_partition_table,
            partition_table_and_replication_marks,
            loads_see_every_revision,
            held_stores_are_replaced_and_released,
            abort_releases_everything,
            crash_after_store_releases_held_data,
            crash_after_vote_lock_and_unlock,
            deferred_write_path_waits_for_commit,
            identical_data_is_shared,
            undo_backpointers_and_find_undo,
            history_is_newest_first_with_sizes,
            transactions_and_tid_listings,
            oids_from_skips_deleted_objects,
            truncate_is_persistent_and_atomic,
            id_reservations_only_grow_and_are_durable,
            pack_keeps_the_newest_revision,
            drop_partitions_releases_data,
            replication_writes_and_ranges,
            replica_check_digests,
            metadata_limits,
            ten_thousand_objects_in_one_transaction,
            big_values_round_trip,
            many_stores_are_written_in_batches,
            pending_values_of_all_transactions_are_bounded,
            transactions_storing_the_same_bytes,
        );
    };
    (@each $fixture:expr; $($check:ident),+ $(,)?) => {
        $(
            #[test]
            fn $check() {
                let fixture = $fixture;
                $crate::db::conformance::$check(&fixture);
            }
        )+
    };
}

/// A temporary directory removed on drop (for file databases in tests and benchmarks).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const CLUSTER: &str = "conformance";
const S1: Nid = Nid(1);
const S2: Nid = Nid(2);

pub fn identity() -> Identity {
    Identity {
        cluster: CLUSTER.into(),
        nid: Some(S1),
    }
}

fn sha1(bytes: &[u8]) -> Checksum {
    Sha1::digest(bytes).into()
}

fn data(bytes: &[u8]) -> ObjectData {
    ObjectData {
        compression: 0,
        checksum: sha1(bytes),
        data: bytes.to_vec(),
    }
}

fn value(bytes: &[u8]) -> Value {
    Value::Data(data(bytes))
}

/// A value too big to wait for the vote in memory: its data row is written by `store`.
fn big(seed: u8) -> Vec<u8> {
    let mut bytes = vec![seed; HELD_TXN_BYTES + 1];
    bytes[..8].copy_from_slice(b"big data");
    bytes
}

fn meta(oids: &[u64]) -> TxnMeta {
    TxnMeta {
        user: b"user".to_vec(),
        description: format!("writes {oids:?}").into_bytes(),
        extension: b"ext".to_vec(),
        oids: oids.iter().map(|&o| Oid(o)).collect(),
    }
}

/// The transaction whose final TID is `tid` has the temporary id `tid - 1`.
fn ttid(tid: u64) -> Tid {
    Tid(tid - 1)
}

/// Partitions `0..n`, all UP_TO_DATE on S1.
fn with_pt<B: Backend>(b: &mut B, n: u32) {
    let cells: Vec<Cell> = (0..n)
        .map(|partition| Cell {
            partition,
            nid: S1,
            state: CellState::UpToDate,
        })
        .collect();
    b.change_partition_table(Ptid(1), 0, &cells, true).unwrap();
}

fn store_all<B: Backend>(b: &mut B, tid: u64, objects: Vec<(u64, Value)>) -> Vec<u64> {
    let oids: Vec<u64> = objects.iter().map(|(o, _)| *o).collect();
    for (oid, v) in objects {
        b.store(ttid(tid), Oid(oid), v).unwrap();
    }
    oids
}

/// The whole write path of a transaction with its metadata on this node.
fn commit<B: Backend>(b: &mut B, tid: u64, objects: Vec<(u64, Value)>) {
    let oids = store_all(b, tid, objects);
    b.vote(ttid(tid), Some(&meta(&oids))).unwrap();
    b.lock(ttid(tid), Tid(tid)).unwrap();
    b.unlock(ttid(tid), Tid(tid)).unwrap();
}

fn found(load: Load) -> Loaded {
    match load {
        Load::Found(loaded) => loaded,
        other => panic!("expected a revision, got {other:?}"),
    }
}

fn load<B: Backend>(b: &B, oid: u64, at: Option<u64>, before: Option<u64>) -> Load {
    b.load(Oid(oid), at.map(Tid), before.map(Tid)).unwrap()
}

fn latest<B: Backend>(b: &B, oid: u64) -> Loaded {
    found(load(b, oid, None, None))
}

fn serials<B: Backend>(b: &B, oid: u64) -> Vec<u64> {
    b.history(Oid(oid), 0, 1000)
        .unwrap()
        .unwrap_or_default()
        .iter()
        .map(|(t, _)| t.0)
        .collect()
}

fn tids(list: Vec<Tid>) -> Vec<u64> {
    list.iter().map(|t| t.0).collect()
}

/// Check the number of rows of each table.
fn assert_rows<F: Fixture>(f: &F, b: &F::Backend, expected: &[(&str, u64)]) {
    for &(table, rows) in expected {
        assert_eq!(f.rows(b, table), rows, "rows in {table}");
    }
}

fn crash<F: Fixture>(f: &F, b: F::Backend) -> F::Backend {
    drop(b);
    f.open(&identity()).unwrap()
}

pub fn identity_is_stamped_and_kept<F: Fixture>(f: &F) {
    let b = f.open(&identity()).unwrap();
    let c = b.config().unwrap();
    assert_eq!(c.version, SCHEMA_VERSION);
    assert_eq!(c.name, CLUSTER);
    assert_eq!(c.nid, Some(S1));
    assert_eq!((c.ptid, c.replicas), (None, None));
    assert_eq!((c.truncate_tid, c.backup_tid), (None, None));
    drop(b);
    // Without an imposed id the database's is kept; the primary may give another.
    let anonymous = Identity {
        cluster: CLUSTER.into(),
        nid: None,
    };
    let mut b = f.open(&anonymous).unwrap();
    assert_eq!(b.config().unwrap().nid, Some(S1));
    b.set_nid(S2).unwrap();
    drop(b);
    let mut b = f.open(&anonymous).unwrap();
    assert_eq!(b.config().unwrap().nid, Some(S2));
    b.set_backup_tid(Some(Tid(0x1234))).unwrap();
    b.commit().unwrap();
    assert_eq!(b.config().unwrap().backup_tid, Some(Tid(0x1234)));
    // A truncation decision is durable at once and clears the backup TID.
    b.set_truncate_tid(Some(Tid(0xabcd))).unwrap();
    drop(b);
    let mut b = f.open(&anonymous).unwrap();
    let c = b.config().unwrap();
    assert_eq!((c.truncate_tid, c.backup_tid), (Some(Tid(0xabcd)), None));
    b.set_truncate_tid(None).unwrap();
    assert_eq!(b.config().unwrap().truncate_tid, None);
}

/// The ids a primary reserved (`AskReserveIDs`) are on disk when `reserve_ids` returns,
/// are only ever raised, and go with an erased database.
pub fn id_reservations_only_grow_and_are_durable<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    let reserved = |b: &F::Backend| {
        let c = b.config().unwrap();
        (c.reserved_oid, c.reserved_tid)
    };
    assert_eq!(reserved(&b), (None, None));
    b.reserve_ids(Some(Oid(100)), Some(Tid(0x500))).unwrap();
    let mut b = crash(f, b);
    assert_eq!(reserved(&b), (Some(Oid(100)), Some(Tid(0x500))));
    // Lower or absent values leave each as it was.
    b.reserve_ids(Some(Oid(50)), None).unwrap();
    assert_eq!(reserved(&b), (Some(Oid(100)), Some(Tid(0x500))));
    b.reserve_ids(None, Some(Tid(0x600))).unwrap();
    b.reserve_ids(Some(Oid(1 << 62)), Some(Tid(0x400))).unwrap();
    let mut b = crash(f, b);
    assert_eq!(reserved(&b), (Some(Oid(1 << 62)), Some(Tid(0x600))));
    b.erase().unwrap();
    assert_eq!(reserved(&b), (None, None));
}

pub fn refused_databases_are_left_untouched<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 2);
    commit(&mut b, 100, vec![(1, value(b"one"))]);
    drop(b);
    let before = f.snapshot();
    let other_cluster = Identity {
        cluster: "other".into(),
        nid: Some(S1),
    };
    assert_eq!(
        f.open(&other_cluster).err(),
        Some(DbError::Foreign {
            what: "cluster",
            expected: "other".into(),
            found: CLUSTER.into(),
        })
    );
    assert!(
        f.snapshot() == before,
        "a foreign cluster's open changed the database"
    );
    let other_node = Identity {
        cluster: CLUSTER.into(),
        nid: Some(S2),
    };
    assert_eq!(
        f.open(&other_node).err(),
        Some(DbError::Foreign {
            what: "node",
            expected: "S2".into(),
            found: "S1".into(),
        })
    );
    assert!(
        f.snapshot() == before,
        "another node's open changed the database"
    );
    f.raw_exec("UPDATE config SET value = '2' WHERE name = 'version'");
    let newer = f.snapshot();
    assert!(newer != before);
    assert_eq!(
        f.open(&identity()).err(),
        Some(DbError::NewerSchema {
            supported: SCHEMA_VERSION,
            found: 2,
        })
    );
    assert!(
        f.snapshot() == newer,
        "opening a newer schema changed the database"
    );
    f.raw_exec("UPDATE config SET value = '1' WHERE name = 'version'");
    let b = f.open(&identity()).unwrap();
    assert_eq!(latest(&b, 1).data, b"one");
}

pub fn a_second_open_is_locked<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    assert!(matches!(f.open(&identity()), Err(DbError::Locked(_))));
    // The refused attempt did not disturb the first backend.
    with_pt(&mut b, 1);
    commit(&mut b, 100, vec![(1, value(b"x"))]);
    let b = crash(f, b);
    assert_eq!(latest(&b, 1).data, b"x");
}

pub fn operations_need_a_partition_table<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    assert_eq!(b.partition_table().unwrap(), vec![]);
    let none = Err(DbError::NoPartitionTable);
    assert_eq!(
        b.load(Oid(1), None, None),
        none.clone().map(|()| Load::NotFound)
    );
    assert_eq!(b.history(Oid(1), 0, 1), none.clone().map(|()| None));
    assert_eq!(b.transaction(Tid(5)), none.clone().map(|()| None));
    // Data can be held and voted before, but moving it to `obj` needs the partitions.
    b.store(ttid(100), Oid(1), value(b"early")).unwrap();
    b.vote(ttid(100), Some(&meta(&[1]))).unwrap();
    b.lock(ttid(100), Tid(100)).unwrap();
    assert_eq!(b.unlock(ttid(100), Tid(100)), none);
    with_pt(&mut b, 3);
    b.unlock(ttid(100), Tid(100)).unwrap();
    assert_eq!(latest(&b, 1).data, b"early");
    assert_eq!(b.transaction(Tid(100)).unwrap().unwrap().ttid, ttid(100));
}

pub fn partition_table_and_replication_marks<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    let cell = |partition, nid, state| Cell {
        partition,
        nid,
        state,
    };
    use CellState::*;
    let table = vec![
        cell(0, S2, OutOfDate),
        cell(0, S1, UpToDate),
        cell(1, S1, OutOfDate),
        cell(1, S2, UpToDate),
        cell(2, S1, Corrupted),
        cell(2, S2, Feeding),
    ];
    b.change_partition_table(Ptid(1), 1, &table, true).unwrap();
    let mut sorted = table.clone();
    sorted.sort();
    assert_eq!(b.partition_table().unwrap(), sorted);
    let c = b.config().unwrap();
    assert_eq!((c.ptid, c.replicas), (Some(Ptid(1)), Some(1)));
    // Marks exist for own OUT_OF_DATE cells only.
    assert_eq!(b.replicated_up_to(1).unwrap(), None);
    assert!(b.set_replicated_up_to(0, Some(Tid(1))).is_err());
    b.set_replicated_up_to(1, Some(Tid(50))).unwrap();
    assert_eq!(b.replicated_up_to(1).unwrap(), Some(Tid(50)));
    // Not committed: lost in a crash.
    let mut b = crash(f, b);
    assert_eq!(b.replicated_up_to(1).unwrap(), None);
    b.set_replicated_up_to(1, Some(Tid(50))).unwrap();
    b.commit().unwrap();
    // A change that keeps the cell OUT_OF_DATE keeps its mark.
    b.change_partition_table(
        Ptid(2),
        1,
        &[cell(1, S1, OutOfDate), cell(0, S2, Discarded)],
        false,
    )
    .unwrap();
    let mut b = crash(f, b);
    assert_eq!(b.replicated_up_to(1).unwrap(), Some(Tid(50)));
    assert_eq!(b.config().unwrap().ptid, Some(Ptid(2)));
    assert_eq!(b.partition_table().unwrap().len(), 5);
    assert!(!b
        .partition_table()
        .unwrap()
        .contains(&cell(0, S2, OutOfDate)));
    // Leaving OUT_OF_DATE forgets it; coming back starts from scratch.
    b.change_partition_table(Ptid(3), 1, &[cell(1, S1, UpToDate)], false)
        .unwrap();
    assert_eq!(b.replicated_up_to(1).unwrap(), None);
    b.change_partition_table(Ptid(4), 1, &[cell(1, S1, OutOfDate)], false)
        .unwrap();
    assert_eq!(b.replicated_up_to(1).unwrap(), None);
    // The number of partitions is that of the stored table: 5 after this reset.
    let five: Vec<Cell> = (0..5).map(|p| cell(p, S1, UpToDate)).collect();
    b.change_partition_table(Ptid(5), 0, &five, true).unwrap();
    assert_eq!(b.partition_table().unwrap(), five);
    commit(&mut b, 100, vec![(7, value(b"seven"))]);
    let in_partition = |p| {
        b.replication_objects(p, Tid(0), Tid(1000), Oid(0), 10)
            .unwrap()
    };
    assert_eq!(in_partition(2), vec![(Tid(100), Oid(7))]);
    assert_eq!(in_partition(3), vec![]);
    assert_eq!(b.tids(0, 10, &[0]).unwrap(), vec![Tid(100)]);
}

pub fn loads_see_every_revision<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 4);
    commit(&mut b, 100, vec![(1, value(b"a1")), (2, value(b"b1"))]);
    commit(&mut b, 200, vec![(1, value(b"a2"))]);
    commit(&mut b, 300, vec![(1, Value::Deleted)]);
    let zipped = ObjectData {
        compression: 1,
        checksum: sha1(b"zipped"),
        data: b"zipped".to_vec(),
    };
    commit(&mut b, 400, vec![(4, Value::Data(zipped))]);

    let deleted = latest(&b, 1);
    assert_eq!(
        deleted,
        Loaded {
            serial: Tid(300),
            next_serial: None,
            compression: 0,
            checksum: ZERO_HASH,
            data: vec![],
            data_serial: None,
        }
    );
    assert_eq!(
        found(load(&b, 1, Some(200), None)),
        Loaded {
            serial: Tid(200),
            next_serial: Some(Tid(300)),
            compression: 0,
            checksum: sha1(b"a2"),
            data: b"a2".to_vec(),
            data_serial: None,
        }
    );
    let first = found(load(&b, 1, None, Some(200)));
    assert_eq!(
        (first.serial, first.next_serial, first.data),
        (Tid(100), Some(Tid(200)), b"a1".to_vec())
    );
    assert_eq!(found(load(&b, 1, None, Some(301))).serial, Tid(300));
    assert_eq!(found(load(&b, 1, None, Some(u64::MAX))).serial, Tid(300));
    // `at` wins over `before`, as in NEO.
    assert_eq!(found(load(&b, 1, Some(100), Some(300))).serial, Tid(100));
    assert_eq!(load(&b, 1, None, Some(100)), Load::NotFound);
    assert_eq!(load(&b, 1, Some(150), None), Load::NotFound);
    assert_eq!(load(&b, 1, Some(u64::MAX), None), Load::NotFound);
    assert_eq!(load(&b, 3, None, None), Load::DoesNotExist);
    assert_eq!(load(&b, 3, Some(100), None), Load::DoesNotExist);
    // Ids beyond what a backend can store are simply absent (SQLite has 63-bit integers).
    assert_eq!(load(&b, u64::MAX, None, None), Load::DoesNotExist);
    assert_eq!(b.history(Oid(u64::MAX), 0, 10).unwrap(), None);
    assert_eq!(b.final_tid(Tid(u64::MAX)).unwrap(), None);
    assert_eq!(b.transaction(Tid(u64::MAX)).unwrap(), None);
    let b1 = latest(&b, 2);
    assert_eq!((b1.serial, b1.next_serial), (Tid(100), None));
    let z = latest(&b, 4);
    assert_eq!((z.compression, z.checksum), (1, sha1(b"zipped")));

    let ids = b.last_ids().unwrap();
    assert_eq!(
        (ids.last_tid, ids.last_oid, ids.first_tid),
        (Some(Tid(400)), Some(Oid(4)), Some(Tid(100)))
    );
    let txn = b.transaction(Tid(200)).unwrap().unwrap();
    assert_eq!(
        txn,
        TxnInfo {
            tid: Tid(200),
            ttid: ttid(200),
            packed: false,
            meta: meta(&[1]),
        }
    );
    assert_eq!(b.transaction(Tid(250)).unwrap(), None);
    assert_eq!(b.final_tid(ttid(200)).unwrap(), Some(Tid(200)));
    assert_eq!(b.final_tid(Tid(12345)).unwrap(), None);
    // Everything above was committed.
    let b = crash(f, b);
    assert_eq!(found(load(&b, 1, None, Some(300))).data, b"a2");
}

pub fn held_stores_are_replaced_and_released<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 2);
    let t = ttid(100);
    // Small values wait in memory for the vote, replaced and dropped there.
    b.store(t, Oid(1), value(b"x")).unwrap();
    b.store(t, Oid(1), value(b"y")).unwrap();
    b.store(t, Oid(2), value(b"y")).unwrap();
    b.store(t, Oid(3), value(b"z")).unwrap();
    b.store(t, Oid(3), Value::Deleted).unwrap();
    b.unstore(t, Oid(2)).unwrap();
    b.unstore(t, Oid(9)).unwrap();
    // A big value is written at once, with what the transaction held in memory, and
    // released when replaced or dropped.
    b.store(t, Oid(4), value(&big(1))).unwrap();
    assert_rows(f, &b, &[("data", 2), ("tdata", 2)]);
    b.store(t, Oid(4), value(b"y")).unwrap();
    assert_rows(f, &b, &[("data", 1), ("tdata", 1)]);
    b.store(t, Oid(5), value(&big(2))).unwrap();
    assert_rows(f, &b, &[("data", 2), ("tdata", 3)]);
    b.store(t, Oid(5), value(&big(3))).unwrap();
    assert_rows(f, &b, &[("data", 2), ("tdata", 3)]);
    b.store(t, Oid(6), value(&big(3))).unwrap();
    assert_rows(f, &b, &[("data", 2), ("tdata", 4)]);
    b.unstore(t, Oid(5)).unwrap();
    assert_eq!(f.rows(&b, "data"), 2, "oid 6 still holds it");
    b.store(t, Oid(6), Value::Deleted).unwrap();
    assert_rows(f, &b, &[("data", 1), ("tdata", 2)]);
    b.store(t, Oid(7), value(&big(4))).unwrap();
    b.vote(t, Some(&meta(&[1, 3, 4, 6, 7]))).unwrap();
    b.lock(t, Tid(100)).unwrap();
    b.unlock(t, Tid(100)).unwrap();
    assert_eq!(latest(&b, 1).data, b"y");
    assert_eq!(load(&b, 2, None, None), Load::DoesNotExist);
    assert_eq!(latest(&b, 3).checksum, ZERO_HASH);
    assert_eq!(latest(&b, 4).data, b"y");
    assert_eq!(load(&b, 5, None, None), Load::DoesNotExist);
    assert_eq!(latest(&b, 6).checksum, ZERO_HASH);
    assert!(latest(&b, 7).data == big(4));
    assert_rows(
        f,
        &b,
        &[
            ("data", 2),
            ("tdata", 0),
            ("tobj", 0),
            ("ttrans", 0),
            ("obj", 5),
        ],
    );
}

pub fn abort_releases_everything<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 2);
    commit(&mut b, 100, vec![(5, value(b"shared"))]);
    let t = ttid(200);
    store_all(&mut b, 200, vec![(1, value(b"x")), (2, value(b"shared"))]);
    b.vote(t, Some(&meta(&[1, 2]))).unwrap();
    assert_eq!(
        b.locked_transactions().unwrap(),
        BTreeMap::from([(t, None)])
    );
    assert_eq!(f.rows(&b, "data"), 2);
    b.abort(t).unwrap();
    assert_eq!(b.locked_transactions().unwrap(), BTreeMap::new());
    assert_rows(
        f,
        &b,
        &[("data", 1), ("tobj", 0), ("ttrans", 0), ("tdata", 0)],
    );
    // A transaction that never voted, with a value in memory and one written.
    b.store(ttid(300), Oid(1), value(b"z")).unwrap();
    b.store(ttid(300), Oid(2), value(&big(1))).unwrap();
    assert_rows(f, &b, &[("data", 3), ("tdata", 2)]);
    b.abort(ttid(300)).unwrap();
    assert_rows(f, &b, &[("data", 1), ("tdata", 0)]);
    // Its store is gone: voting the same ttid now writes nothing.
    b.vote(ttid(300), None).unwrap();
    assert_eq!(f.rows(&b, "tobj"), 0);
    let b = crash(f, b);
    assert_eq!(f.rows(&b, "data"), 1);
    assert_eq!(latest(&b, 5).data, b"shared");
    assert_eq!(load(&b, 1, None, None), Load::DoesNotExist);
}

pub fn crash_after_store_releases_held_data<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 2);
    commit(&mut b, 100, vec![(1, value(b"kept"))]);
    // T1 only stores (a value big enough to be written at once); T2 votes, which commits
    // T1's data row along with its own.
    b.store(ttid(200), Oid(2), value(&big(1))).unwrap();
    b.store(ttid(300), Oid(3), value(b"voted")).unwrap();
    b.vote(ttid(300), Some(&meta(&[3]))).unwrap();
    assert_eq!(f.rows(&b, "data"), 3);
    let mut b = crash(f, b);
    assert_eq!(f.rows(&b, "data"), 2, "the held data was not released");
    assert_eq!(f.rows(&b, "tdata"), 0);
    assert_eq!(
        b.locked_transactions().unwrap(),
        BTreeMap::from([(ttid(300), None)])
    );
    assert_eq!(load(&b, 2, None, None), Load::DoesNotExist);
    // A store nothing committed simply vanishes.
    b.store(ttid(400), Oid(4), value(b"never")).unwrap();
    let mut b = crash(f, b);
    assert_eq!(f.rows(&b, "data"), 2);
    b.drop_unfinished().unwrap();
    assert_eq!(b.locked_transactions().unwrap(), BTreeMap::new());
    assert_rows(f, &b, &[("data", 1), ("tobj", 0), ("ttrans", 0)]);
    assert_eq!(latest(&b, 1).data, b"kept");
}

pub fn crash_after_vote_lock_and_unlock<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 2);
    // Voted only.
    store_all(&mut b, 100, vec![(1, value(b"voted"))]);
    b.vote(ttid(100), Some(&meta(&[1]))).unwrap();
    // Voted and locked.
    store_all(&mut b, 200, vec![(2, value(b"locked"))]);
    b.vote(ttid(200), Some(&meta(&[2]))).unwrap();
    b.lock(ttid(200), Tid(200)).unwrap();
    // Unlocked.
    commit(&mut b, 300, vec![(3, value(b"unlocked"))]);
    // Objects of a transaction whose metadata another node keeps, locked.
    store_all(&mut b, 400, vec![(4, value(b"elsewhere"))]);
    b.vote(ttid(400), None).unwrap();
    b.lock(ttid(400), Tid(400)).unwrap();

    let mut b = crash(f, b);
    assert_eq!(
        b.locked_transactions().unwrap(),
        BTreeMap::from([
            (ttid(100), None),
            (ttid(200), Some(Tid(200))),
            (ttid(400), None),
        ])
    );
    assert_eq!(b.final_tid(ttid(100)).unwrap(), None);
    assert_eq!(b.final_tid(ttid(200)).unwrap(), Some(Tid(200)));
    assert_eq!(b.final_tid(ttid(300)).unwrap(), Some(Tid(300)));
    assert_eq!(latest(&b, 3).data, b"unlocked");
    assert_eq!(load(&b, 2, None, None), Load::DoesNotExist);
    // Verification: replay the locked ones, drop the rest.
    b.validate(ttid(200), Tid(200)).unwrap();
    b.validate(ttid(400), Tid(400)).unwrap();
    b.drop_unfinished().unwrap();
    let b = crash(f, b);
    assert_eq!(b.locked_transactions().unwrap(), BTreeMap::new());
    assert_eq!(latest(&b, 2).serial, Tid(200));
    assert_eq!(latest(&b, 4).data, b"elsewhere");
    assert_eq!(b.transaction(Tid(200)).unwrap().unwrap().meta, meta(&[2]));
    assert_eq!(b.transaction(Tid(400)).unwrap(), None);
    assert_eq!(load(&b, 1, None, None), Load::DoesNotExist);
    assert_rows(
        f,
        &b,
        &[
            ("data", 3),
            ("obj", 3),
            ("trans", 2),
            ("tobj", 0),
            ("ttrans", 0),
        ],
    );
}

/// Deferred mode: votes, locks and unlocks of several transactions are seen by the same
/// connection at once, lost together by a crash before `commit`, kept together after it.
pub fn deferred_write_path_waits_for_commit<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 2);
    commit(&mut b, 100, vec![(1, value(b"committed"))]);
    // Voted and locked the usual way (durable before the deferred work).
    store_all(&mut b, 200, vec![(2, value(b"locked"))]);
    b.vote(ttid(200), Some(&meta(&[2]))).unwrap();
    b.lock(ttid(200), Tid(200)).unwrap();
    let deferred = |b: &mut F::Backend| {
        b.set_deferred(true);
        store_all(b, 300, vec![(3, value(b"three"))]);
        b.vote(ttid(300), Some(&meta(&[3]))).unwrap();
        store_all(b, 400, vec![(4, value(b"four")), (1, value(b"one again"))]);
        b.vote(ttid(400), None).unwrap();
        b.lock(ttid(300), Tid(300)).unwrap();
        b.unlock(ttid(200), Tid(200)).unwrap();
        // The same connection sees it all at once.
        assert_eq!(
            b.locked_transactions().unwrap(),
            BTreeMap::from([(ttid(300), Some(Tid(300))), (ttid(400), None)])
        );
        assert_eq!(latest(b, 2).data, b"locked");
        assert_eq!(b.final_tid(ttid(200)).unwrap(), Some(Tid(200)));
    };
    deferred(&mut b);
    // A crash before the commit loses every deferred step, and only them.
    let mut b = crash(f, b);
    assert_eq!(
        b.locked_transactions().unwrap(),
        BTreeMap::from([(ttid(200), Some(Tid(200)))])
    );
    assert_eq!(load(&b, 2, None, None), Load::DoesNotExist);
    assert_eq!(latest(&b, 1).data, b"committed");
    assert_rows(
        f,
        &b,
        &[("data", 2), ("obj", 1), ("tobj", 1), ("ttrans", 1)],
    );
    // Again, committed once: all of it survives.
    deferred(&mut b);
    b.commit().unwrap();
    let mut b = crash(f, b);
    assert_eq!(
        b.locked_transactions().unwrap(),
        BTreeMap::from([(ttid(300), Some(Tid(300))), (ttid(400), None)])
    );
    assert_eq!(latest(&b, 2).data, b"locked");
    assert_eq!(b.transaction(Tid(200)).unwrap().unwrap().meta, meta(&[2]));
    b.validate(ttid(300), Tid(300)).unwrap();
    b.validate(ttid(400), Tid(400)).unwrap();
    let b = crash(f, b);
    assert_eq!(latest(&b, 3).data, b"three");
    assert_eq!(latest(&b, 4).data, b"four");
    assert_eq!(latest(&b, 1).data, b"one again");
    // Not deferred any more after a reopen: each call commits again.
    let mut b = b;
    store_all(&mut b, 500, vec![(5, value(b"five"))]);
    b.vote(ttid(500), None).unwrap();
    let b = crash(f, b);
    assert_eq!(
        b.locked_transactions().unwrap(),
        BTreeMap::from([(ttid(500), None)])
    );
}

pub fn identical_data_is_shared<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 2);
    let t = ttid(100);
    b.store(t, Oid(1), value(b"same")).unwrap();
    b.store(t, Oid(2), value(b"same")).unwrap();
    // The same bytes compressed differently are another row.
    let compressed = ObjectData {
        compression: 1,
        ..data(b"same")
    };
    b.store(t, Oid(3), Value::Data(compressed)).unwrap();
    // Same checksum, other bytes: the transaction cannot vote, and its vote writes nothing.
    let forged = ObjectData {
        compression: 0,
        checksum: sha1(b"same"),
        data: b"different".to_vec(),
    };
    b.store(t, Oid(4), Value::Data(forged.clone())).unwrap();
    let collision = DbError::ChecksumCollision(sha1(b"same"));
    assert!(!collision.is_fatal());
    assert_eq!(b.vote(t, Some(&meta(&[1, 2, 3, 4]))), Err(collision));
    assert_rows(f, &b, &[("data", 0), ("tobj", 0), ("ttrans", 0)]);
    assert_eq!(b.locked_transactions().unwrap(), BTreeMap::new());
    // Without the forged value it votes.
    b.unstore(t, Oid(4)).unwrap();
    b.vote(t, Some(&meta(&[1, 2, 3]))).unwrap();
    assert_eq!(f.rows(&b, "data"), 2);
    b.lock(t, Tid(100)).unwrap();
    b.unlock(t, Tid(100)).unwrap();
    assert_eq!(load(&b, 4, None, None), Load::DoesNotExist);
    assert_eq!(latest(&b, 2).data, b"same");
    // Forged against a stored row: refused too, until the value is replaced.
    let t = ttid(150);
    b.store(t, Oid(4), Value::Data(forged)).unwrap();
    b.store(t, Oid(5), value(b"other")).unwrap();
    assert_eq!(
        b.vote(t, None),
        Err(DbError::ChecksumCollision(sha1(b"same")))
    );
    b.store(t, Oid(4), value(b"same")).unwrap();
    b.vote(t, None).unwrap();
    b.lock(t, Tid(150)).unwrap();
    b.unlock(t, Tid(150)).unwrap();
    assert_eq!(latest(&b, 4).data, b"same");
    assert_eq!(f.rows(&b, "data"), 3);
    // A row goes with the last revision using it.
    b.delete_object(Oid(5), Tid(150)).unwrap();
    b.delete_object(Oid(4), Tid(150)).unwrap();
    b.delete_object(Oid(1), Tid(100)).unwrap();
    assert_eq!(f.rows(&b, "data"), 2);
    b.delete_object(Oid(2), Tid(100)).unwrap();
    assert_eq!(f.rows(&b, "data"), 1);
    b.commit().unwrap();
    // Storing it again later makes a new row that is shared again.
    commit(&mut b, 200, vec![(5, value(b"same")), (6, value(b"same"))]);
    assert_eq!(f.rows(&b, "data"), 2);
    // A big value (written by `store`) with a forged checksum is refused by the store.
    commit(&mut b, 300, vec![(7, value(&big(1)))]);
    let forged = ObjectData {
        data: big(2),
        ..data(&big(1))
    };
    let t = ttid(400);
    assert_eq!(
        b.store(t, Oid(8), Value::Data(forged)),
        Err(DbError::ChecksumCollision(sha1(&big(1))))
    );
    b.store(t, Oid(8), value(&big(1))).unwrap();
    b.vote(t, None).unwrap();
    b.abort(t).unwrap();
    assert_eq!(f.rows(&b, "data"), 3);
}

pub fn undo_backpointers_and_find_undo<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 2);
    commit(&mut b, 100, vec![(1, value(b"v1"))]);
    commit(&mut b, 200, vec![(1, value(b"v2"))]);
    // Undo of 200: back to the data of 100.
    commit(&mut b, 300, vec![(1, Value::Backpointer(Tid(100)))]);
    let undone = latest(&b, 1);
    assert_eq!(
        (undone.serial, undone.data_serial, undone.data.as_slice()),
        (Tid(300), Some(Tid(100)), &b"v1"[..])
    );
    assert_eq!(undone.checksum, sha1(b"v1"));
    assert_eq!(f.rows(&b, "data"), 2, "the backpointer shares v1's row");
    let undo = |b: &F::Backend, ltid, undone| b.find_undo(Oid(1), Tid(ltid), Tid(undone)).unwrap();
    let info = |current, undo: Option<u64>, is_current| {
        Some(UndoInfo {
            current: Tid(current),
            undo: undo.map(Tid),
            is_current,
        })
    };
    assert_eq!(undo(&b, 301, 200), info(300, Some(100), false));
    assert_eq!(undo(&b, 301, 300), info(300, Some(200), true));
    // 300 restored the data of 100, so undoing 100 (the creation) is "current".
    assert_eq!(undo(&b, 301, 100), info(300, None, true));
    assert_eq!(undo(&b, 250, 200), info(200, Some(100), true));
    assert_eq!(undo(&b, 301, 150), None);
    assert_eq!(b.find_undo(Oid(9), Tid(301), Tid(100)).unwrap(), None);
    // A backpointer to a backpointer: the data serial is followed to the end.
    commit(&mut b, 400, vec![(1, Value::Backpointer(Tid(300)))]);
    let again = latest(&b, 1);
    assert_eq!(
        (again.data_serial, again.data),
        (Some(Tid(300)), b"v1".to_vec())
    );
    assert_eq!(undo(&b, 401, 400), info(400, Some(100), true));
    // No revision, or one without data: nothing to point back to.
    commit(&mut b, 500, vec![(2, value(b"w"))]);
    commit(&mut b, 600, vec![(2, Value::Deleted)]);
    for (oid, tid) in [(1, 250), (2, 600), (3, 100)] {
        assert_eq!(
            b.store(ttid(700), Oid(oid), Value::Backpointer(Tid(tid))),
            Err(DbError::UndoPack {
                oid: Oid(oid),
                tid: Tid(tid)
            })
        );
    }
    assert_eq!(f.rows(&b, "tdata"), 0);
    assert_eq!(f.rows(&b, "data"), 3);
}

pub fn history_is_newest_first_with_sizes<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 2);
    commit(&mut b, 100, vec![(1, value(b"aaa"))]);
    commit(&mut b, 200, vec![(1, value(b"bbbbb"))]);
    commit(&mut b, 300, vec![(1, Value::Deleted)]);
    commit(&mut b, 400, vec![(1, Value::Backpointer(Tid(100)))]);
    let h = |offset, length| b.history(Oid(1), offset, length).unwrap();
    assert_eq!(
        h(0, 10),
        Some(vec![
            (Tid(400), 3),
            (Tid(300), 0),
            (Tid(200), 5),
            (Tid(100), 3)
        ])
    );
    assert_eq!(h(1, 2), Some(vec![(Tid(300), 0), (Tid(200), 5)]));
    assert_eq!(h(10, 5), Some(vec![]));
    assert_eq!(h(0, 0), Some(vec![]));
    assert_eq!(b.history(Oid(2), 0, 10).unwrap(), None);
}

pub fn transactions_and_tid_listings<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 4);
    for tid in 100..112 {
        commit(&mut b, tid, vec![(tid, value(&tid.to_be_bytes()))]);
    }
    let all: Vec<u64> = (100..112).rev().collect();
    assert_eq!(tids(b.tids(0, 100, &[0, 1, 2, 3]).unwrap()), all);
    assert_eq!(tids(b.tids(2, 3, &[1]).unwrap()), vec![101]);
    assert_eq!(tids(b.tids(0, 2, &[1, 3]).unwrap()), vec![111, 109]);
    assert_eq!(b.tids(0, 5, &[]).unwrap(), vec![]);
    assert_eq!(
        tids(b.tids_from(Tid(102), Tid(109), 100, &[2, 3]).unwrap()),
        vec![102, 103, 106, 107]
    );
    assert_eq!(
        tids(b.tids_from(Tid(102), Tid(109), 3, &[2, 3]).unwrap()),
        vec![102, 103, 106]
    );
    assert_eq!(
        tids(b.tids_from(Tid(0), Tid(u64::MAX), 100, &[0]).unwrap()),
        vec![100, 104, 108]
    );
    assert_eq!(
        tids(b.replication_tids(1, Tid(101), Tid(105), 10).unwrap()),
        vec![101, 105]
    );
    assert_eq!(
        tids(b.replication_tids(1, Tid(102), Tid(108), 10).unwrap()),
        vec![105]
    );
    // A voted transaction's OIDs count for the last OID, not its TID.
    store_all(&mut b, 500, vec![(500, value(b"pending"))]);
    b.vote(ttid(500), None).unwrap();
    let ids = b.last_ids().unwrap();
    assert_eq!(
        (ids.last_tid, ids.last_oid, ids.first_tid),
        (Some(Tid(111)), Some(Oid(500)), Some(Tid(100)))
    );
    let txn = b.transaction(Tid(105)).unwrap().unwrap();
    assert_eq!((txn.ttid, txn.meta), (ttid(105), meta(&[105])));
}

pub fn oids_from_skips_deleted_objects<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 2);
    let evens: Vec<(u64, Value)> = [0, 2, 4, 6, 8, 10]
        .iter()
        .map(|&o| (o, value(&[o as u8])))
        .collect();
    commit(&mut b, 100, evens);
    commit(&mut b, 102, vec![(4, Value::Deleted), (1, value(b"odd"))]);
    commit(&mut b, 104, vec![(12, value(b"twelve"))]);
    let oids_from = |p, length, min, tid| {
        let (oids, next) = b.oids_from(p, length, Oid(min), Tid(tid)).unwrap();
        (
            oids.iter().map(|o| o.0).collect::<Vec<_>>(),
            next.map(|o| o.0),
        )
    };
    assert_eq!(oids_from(0, 10, 0, 102), (vec![0, 2, 6, 8, 10], None));
    assert_eq!(oids_from(0, 10, 0, 101), (vec![0, 2, 4, 6, 8, 10], None));
    assert_eq!(oids_from(0, 2, 0, 200), (vec![0, 2], Some(6)));
    assert_eq!(oids_from(0, 2, 6, 200), (vec![6, 8], Some(10)));
    assert_eq!(oids_from(0, 2, 9, 200), (vec![10, 12], None));
    assert_eq!(oids_from(0, 10, 0, 99), (vec![], None));
    assert_eq!(oids_from(1, 10, 0, 200), (vec![1], None));
}

pub fn truncate_is_persistent_and_atomic<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    let cells = [
        Cell {
            partition: 0,
            nid: S1,
            state: CellState::UpToDate,
        },
        Cell {
            partition: 1,
            nid: S1,
            state: CellState::OutOfDate,
        },
    ];
    b.change_partition_table(Ptid(1), 0, &cells, true).unwrap();
    commit(&mut b, 100, vec![(1, value(b"a"))]);
    commit(&mut b, 200, vec![(1, value(b"b")), (2, value(b"c"))]);
    commit(&mut b, 301, vec![(2, value(b"d")), (3, value(b"a"))]);
    b.set_replicated_up_to(1, Some(Tid(301))).unwrap();
    b.set_backup_tid(Some(Tid(250))).unwrap();
    b.commit().unwrap();
    b.set_truncate_tid(Some(Tid(200))).unwrap();
    // The decision survives a crash; nothing is deleted until `truncate`.
    let mut b = crash(f, b);
    let c = b.config().unwrap();
    assert_eq!((c.truncate_tid, c.backup_tid), (Some(Tid(200)), None));
    assert_eq!(latest(&b, 2).serial, Tid(301));
    b.truncate().unwrap();
    let check = |b: &F::Backend| {
        assert_eq!(latest(b, 1).data, b"b");
        assert_eq!(latest(b, 2).serial, Tid(200));
        assert_eq!(load(b, 3, None, None), Load::DoesNotExist);
        assert_eq!(b.transaction(Tid(301)).unwrap(), None);
        assert_eq!(tids(b.tids(0, 10, &[0, 1]).unwrap()), vec![200, 100]);
        assert_eq!(f.rows(b, "data"), 3, "d released, a still used by oid 1");
        assert_eq!(b.replicated_up_to(1).unwrap(), Some(Tid(200)));
        assert_eq!(b.config().unwrap().truncate_tid, None);
        assert_eq!(b.last_ids().unwrap().last_tid, Some(Tid(200)));
    };
    check(&b);
    // One commit did it all.
    let mut b = crash(f, b);
    check(&b);
    b.truncate().unwrap();
    check(&b);
}

pub fn pack_keeps_the_newest_revision<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 2);
    commit(
        &mut b,
        100,
        vec![(2, value(b"a")), (4, value(b"x")), (1, value(b"p"))],
    );
    commit(
        &mut b,
        201,
        vec![(2, value(b"b")), (4, Value::Deleted), (1, value(b"q"))],
    );
    commit(&mut b, 300, vec![(2, value(b"c")), (6, value(b"y"))]);
    assert_eq!(f.rows(&b, "data"), 7);
    b.pack(Tid(250), &[0]).unwrap();
    assert_eq!(serials(&b, 2), vec![300, 201]);
    assert_eq!(load(&b, 2, None, Some(201)), Load::NotFound);
    assert_eq!(
        load(&b, 4, None, None),
        Load::DoesNotExist,
        "a deletion goes too"
    );
    assert_eq!(serials(&b, 6), vec![300]);
    assert_eq!(serials(&b, 1), vec![201, 100], "partition 1 was not packed");
    let packed = |b: &F::Backend, tid| b.transaction(Tid(tid)).unwrap().unwrap().packed;
    assert!(packed(&b, 100));
    assert!(!packed(&b, 201), "its partition is 1");
    assert!(!packed(&b, 300));
    assert_eq!(f.rows(&b, "data"), 5, "a and x released");
    let mut b = crash(f, b);
    b.pack(Tid(250), &[1]).unwrap();
    assert_eq!(serials(&b, 1), vec![201]);
    assert!(packed(&b, 201));
    assert_eq!(f.rows(&b, "data"), 4, "p released");
    assert_eq!(latest(&b, 1).data, b"q");
    assert_eq!(latest(&b, 2).data, b"c");
}

pub fn drop_partitions_releases_data<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 2);
    commit(&mut b, 100, vec![(1, value(b"a")), (3, value(b"shared"))]);
    commit(&mut b, 101, vec![(2, value(b"shared"))]);
    b.drop_partitions(&[0]).unwrap();
    assert_eq!(load(&b, 2, None, None), Load::DoesNotExist);
    assert_eq!(b.tids(0, 10, &[0, 1]).unwrap(), vec![Tid(101)]);
    assert_eq!(f.rows(&b, "data"), 2);
    let mut b = crash(f, b);
    b.drop_partitions(&[1]).unwrap();
    assert_rows(f, &b, &[("data", 0), ("obj", 0), ("trans", 0)]);
    assert_eq!(b.partition_table().unwrap().len(), 2, "cells stay");
}

pub fn replication_writes_and_ranges<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 2);
    let txn = TxnInfo {
        tid: Tid(100),
        ttid: Tid(90),
        packed: true,
        meta: meta(&[1, 3]),
    };
    let a = ObjectRecord {
        data: Some(data(b"a")),
        data_serial: None,
    };
    let undo = ObjectRecord {
        data: None,
        data_serial: Some(Tid(100)),
    };
    let deletion = ObjectRecord {
        data: None,
        data_serial: None,
    };
    let put = |b: &mut F::Backend| {
        b.put_transaction(&txn).unwrap();
        b.put_object(Oid(1), Tid(100), &a).unwrap();
        b.put_object(Oid(3), Tid(100), &deletion).unwrap();
        b.put_object(Oid(1), Tid(200), &undo).unwrap();
    };
    put(&mut b);
    // Nothing is durable before `commit`.
    let mut b = crash(f, b);
    assert_eq!(b.transaction(Tid(100)).unwrap(), None);
    assert_eq!(f.rows(&b, "data"), 0);
    put(&mut b);
    b.commit().unwrap();
    let mut b = crash(f, b);
    assert_eq!(b.transaction(Tid(100)).unwrap(), Some(txn.clone()));
    assert_eq!(b.final_tid(Tid(90)).unwrap(), Some(Tid(100)));
    assert_eq!(b.object_record(Oid(1), Tid(100)).unwrap(), Some(a.clone()));
    // A backpointer is replicated with the data it points to.
    assert_eq!(
        b.object_record(Oid(1), Tid(200)).unwrap(),
        Some(ObjectRecord {
            data: Some(data(b"a")),
            data_serial: Some(Tid(100)),
        })
    );
    assert_eq!(b.object_record(Oid(3), Tid(100)).unwrap(), Some(deletion));
    assert_eq!(b.object_record(Oid(1), Tid(150)).unwrap(), None);
    assert_eq!(f.rows(&b, "data"), 1);
    // Replacing a revision keeps data others use; deleting the last user releases it.
    let replacement = ObjectRecord {
        data: Some(data(b"b")),
        data_serial: None,
    };
    b.put_object(Oid(1), Tid(100), &replacement).unwrap();
    assert_eq!(latest(&b, 1).data, b"a");
    assert_eq!(f.rows(&b, "data"), 2);
    b.delete_object(Oid(1), Tid(200)).unwrap();
    assert_eq!(f.rows(&b, "data"), 1);
    assert_eq!(latest(&b, 1).data, b"b");
    assert_eq!(
        b.put_object(Oid(5), Tid(100), &undo),
        Err(DbError::UndoPack {
            oid: Oid(5),
            tid: Tid(100)
        })
    );
    b.delete_transaction(Tid(100)).unwrap();
    b.commit().unwrap();
    assert_eq!(b.transaction(Tid(100)).unwrap(), None);

    // Ranges of a partition, ordered by (serial, oid), resuming at (min_tid, min_oid).
    for (tid, oid) in [(100, 5), (200, 1), (200, 3), (300, 7), (300, 2)] {
        b.put_object(Oid(oid), Tid(tid), &a).unwrap();
    }
    b.commit().unwrap();
    let range = |min_tid, max_tid, min_oid, length| {
        b.replication_objects(1, Tid(min_tid), Tid(max_tid), Oid(min_oid), length)
            .unwrap()
            .iter()
            .map(|(t, o)| (t.0, o.0))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        range(0, 1000, 0, 100),
        vec![(100, 1), (100, 3), (100, 5), (200, 1), (200, 3), (300, 7)]
    );
    assert_eq!(
        range(100, 200, 3, 100),
        vec![(100, 3), (100, 5), (200, 1), (200, 3)]
    );
    assert_eq!(range(100, 200, 3, 2), vec![(100, 3), (100, 5)]);
    assert_eq!(range(200, 200, 2, 100), vec![(200, 3)]);
    assert_eq!(range(301, u64::MAX, 0, 100), vec![]);
}

/// SHA-1 of `values` written in decimal and joined with commas, computed here on purpose
/// rather than with the backends' helper.
fn expected_digest(values: &[u64]) -> Checksum {
    if values.is_empty() {
        return ZERO_HASH;
    }
    let text: Vec<String> = values.iter().map(|v| format!("{v}")).collect();
    sha1(text.join(",").as_bytes())
}

pub fn replica_check_digests<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 2);
    for tid in [100, 102, 104, 105, 106] {
        commit(
            &mut b,
            tid,
            vec![(tid - 90, value(b"r")), (tid - 89, value(b"s"))],
        );
    }
    let t = b.check_tid_range(0, 100, Tid(101), Tid(106)).unwrap();
    assert_eq!(
        (t.count, t.sha1, t.max_tid),
        (3, expected_digest(&[102, 104, 106]), Some(Tid(106)))
    );
    let t = b.check_tid_range(0, 2, Tid(0), Tid(1000)).unwrap();
    assert_eq!(
        (t.count, t.sha1, t.max_tid),
        (2, expected_digest(&[100, 102]), Some(Tid(102)))
    );
    let t = b.check_tid_range(1, 10, Tid(0), Tid(1000)).unwrap();
    assert_eq!((t.count, t.sha1), (1, expected_digest(&[105])));
    let none = b.check_tid_range(0, 10, Tid(107), Tid(1000)).unwrap();
    assert_eq!((none.count, none.sha1, none.max_tid), (0, ZERO_HASH, None));
    // Partition 0 holds the even OIDs: 10 (100), 12 (102), 14 (104), 16 (105, 106).
    let s = b
        .check_serial_range(0, 100, Tid(102), Tid(106), Oid(13))
        .unwrap();
    assert_eq!(s.count, 3);
    assert_eq!(s.tid_sha1, expected_digest(&[104, 105, 106]));
    assert_eq!(s.oid_sha1, expected_digest(&[14, 16, 16]));
    assert_eq!((s.last_tid, s.last_oid), (Some(Tid(106)), Some(Oid(16))));
    let s = b
        .check_serial_range(1, 2, Tid(0), Tid(1000), Oid(0))
        .unwrap();
    assert_eq!(
        (s.count, s.tid_sha1, s.oid_sha1),
        (2, expected_digest(&[100, 102]), expected_digest(&[11, 13]))
    );
    let empty = b
        .check_serial_range(1, 10, Tid(500), Tid(1000), Oid(0))
        .unwrap();
    assert_eq!(
        (empty.count, empty.tid_sha1, empty.oid_sha1, empty.last_oid),
        (0, ZERO_HASH, ZERO_HASH, None)
    );
}

pub fn metadata_limits<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 2);
    let t = ttid(100);
    b.store(t, Oid(1), value(b"x")).unwrap();
    let mut too_many = meta(&[]);
    too_many.oids = vec![Oid(1); MAX_TXN_OIDS + 1];
    assert!(matches!(
        b.vote(t, Some(&too_many)),
        Err(DbError::TooLarge(_))
    ));
    assert_rows(f, &b, &[("tobj", 0), ("ttrans", 0)]);
    // The largest metadata allowed goes through, and the store is still held.
    let largest = TxnMeta {
        user: vec![b'u'; MAX_TXN_TEXT],
        description: vec![b'd'; MAX_TXN_TEXT],
        extension: vec![b'e'; MAX_TXN_TEXT],
        oids: (0..MAX_TXN_OIDS as u64).map(Oid).collect(),
    };
    b.vote(t, Some(&largest)).unwrap();
    b.lock(t, Tid(100)).unwrap();
    b.unlock(t, Tid(100)).unwrap();
    assert_eq!(b.transaction(Tid(100)).unwrap().unwrap().meta, largest);
    assert_eq!(latest(&b, 1).data, b"x");
    let mut long_user = TxnInfo {
        tid: Tid(200),
        ttid: Tid(199),
        packed: false,
        meta: meta(&[1]),
    };
    long_user.meta.user = vec![b'u'; MAX_TXN_TEXT + 1];
    assert!(matches!(
        b.put_transaction(&long_user),
        Err(DbError::TooLarge(_))
    ));
}

pub fn ten_thousand_objects_in_one_transaction<F: Fixture>(f: &F) {
    const N: u64 = 10_000;
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 4);
    let objects: Vec<(u64, Value)> = (0..N)
        .map(|oid| {
            (
                oid,
                value(format!("object {oid:05} {}", "-".repeat(100)).as_bytes()),
            )
        })
        .collect();
    commit(&mut b, 1000, objects);
    let b = crash(f, b);
    assert_rows(f, &b, &[("obj", N), ("data", N), ("tobj", 0), ("tdata", 0)]);
    assert_eq!(
        b.transaction(Tid(1000)).unwrap().unwrap().meta.oids.len() as u64,
        N
    );
    for oid in [0, 1, 4999, N - 1] {
        let loaded = latest(&b, oid);
        assert_eq!(loaded.serial, Tid(1000));
        assert!(loaded
            .data
            .starts_with(format!("object {oid:05}").as_bytes()));
    }
    // A partition holds 2,500 of them: more than one batch of the walk.
    let (oids, next) = b.oids_from(3, N, Oid(0), Tid(1000)).unwrap();
    let expected: Vec<Oid> = (0..N).filter(|o| o % 4 == 3).map(Oid).collect();
    assert_eq!((oids, next), (expected, None));
    let (first, next) = b.oids_from(3, 1500, Oid(0), Tid(1000)).unwrap();
    assert_eq!((first.len(), next), (1500, Some(Oid(6003))));
    assert_eq!(b.last_ids().unwrap().last_oid, Some(Oid(N - 1)));
    let objects = b
        .replication_objects(2, Tid(0), Tid(1000), Oid(0), 10 * N)
        .unwrap();
    assert_eq!(objects.len() as u64, N / 4);
}

pub fn big_values_round_trip<F: Fixture>(f: &F) {
    const MIB: usize = 1 << 20;
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 2);
    let sizes = [0, 1, 8 * MIB - 1, 8 * MIB, 8 * MIB + 1, 64 * MIB];
    let bytes = |size: usize, seed: usize| -> Vec<u8> {
        (0..size).map(|i| ((i * 7 + seed) % 251) as u8).collect()
    };
    for (i, &size) in sizes.iter().enumerate() {
        commit(
            &mut b,
            100 + i as u64,
            vec![(i as u64, value(&bytes(size, i)))],
        );
    }
    let mut b = crash(f, b);
    for (i, &size) in sizes.iter().enumerate() {
        let loaded = latest(&b, i as u64);
        assert_eq!(loaded.data.len(), size);
        assert!(
            loaded.data == bytes(size, i),
            "value of {size} bytes differs"
        );
        assert_eq!(loaded.checksum, sha1(&loaded.data));
        assert_eq!(
            b.history(Oid(i as u64), 0, 1).unwrap(),
            Some(vec![(Tid(100 + i as u64), size as u64)])
        );
    }
    // The biggest value, stored again, is recognised and shared; it is released with its
    // last revision.
    let biggest = sizes.len() as u64 - 1;
    commit(
        &mut b,
        200,
        vec![(100, value(&bytes(64 * MIB, biggest as usize)))],
    );
    assert_eq!(f.rows(&b, "data"), sizes.len() as u64);
    let record = b.object_record(Oid(100), Tid(200)).unwrap().unwrap();
    assert_eq!(record.data.map(|d| d.data.len()), Some(64 * MIB));
    b.delete_object(Oid(biggest), Tid(100 + biggest)).unwrap();
    b.delete_object(Oid(100), Tid(200)).unwrap();
    b.commit().unwrap();
    assert_eq!(f.rows(&b, "data"), sizes.len() as u64 - 1);
}

/// The bytes of object `oid` in version `version`: 1,000 bytes, distinct.
fn object(oid: u64, version: u64) -> Vec<u8> {
    let mut bytes = format!("object {oid} version {version} ").into_bytes();
    bytes.resize(1000, b'.');
    bytes
}

pub fn many_stores_are_written_in_batches<F: Fixture>(f: &F) {
    const N: u64 = 3000;
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 4);
    let t = ttid(100);
    for oid in 0..N {
        b.store(t, Oid(oid), value(&object(oid, 0))).unwrap();
    }
    // Past the bound, some are written before the vote, the others wait in memory.
    let written = f.rows(&b, "tdata");
    assert!(written > 0 && written < N, "{written} of {N} written");
    assert_eq!(f.rows(&b, "data"), written);
    // Re-stores of written and of pending objects; one takes another's bytes; one is
    // dropped.
    for oid in (0..N).step_by(2) {
        b.store(t, Oid(oid), value(&object(oid, 1))).unwrap();
    }
    b.store(t, Oid(1), value(&object(3, 0))).unwrap();
    b.unstore(t, Oid(5)).unwrap();
    let oids: Vec<u64> = (0..N).filter(|&o| o != 5).collect();
    b.vote(t, Some(&meta(&oids))).unwrap();
    b.lock(t, Tid(100)).unwrap();
    b.unlock(t, Tid(100)).unwrap();
    let mut b = crash(f, b);
    // Rows: the even objects' second versions, the odd ones' first (1 and 3 share one, 5
    // is gone).
    assert_rows(
        f,
        &b,
        &[
            ("obj", N - 1),
            ("data", N - 2),
            ("tdata", 0),
            ("tobj", 0),
            ("ttrans", 0),
        ],
    );
    for oid in [0, 1, 2, 3, 4, 6, 7, N - 2, N - 1] {
        let expected = match oid {
            1 => object(3, 0),
            o if o % 2 == 0 => object(o, 1),
            o => object(o, 0),
        };
        let loaded = latest(&b, oid);
        assert_eq!((loaded.serial, loaded.data), (Tid(100), expected), "{oid}");
    }
    assert_eq!(load(&b, 5, None, None), Load::DoesNotExist);
    assert_eq!(b.transaction(Tid(100)).unwrap().unwrap().meta, meta(&oids));

    // Many stores, then an abort: everything written for them goes.
    let t = ttid(200);
    for oid in 0..N {
        b.store(t, Oid(oid), value(&object(oid, 2))).unwrap();
    }
    assert!(f.rows(&b, "data") > N - 2);
    b.abort(t).unwrap();
    assert_rows(f, &b, &[("data", N - 2), ("tdata", 0), ("obj", N - 1)]);

    // Many stores, then another transaction's vote commits what was written for them,
    // then a crash: it is released on restart.
    for oid in 0..N {
        b.store(ttid(300), Oid(oid), value(&object(oid, 3)))
            .unwrap();
    }
    commit(&mut b, 400, vec![(N, value(b"voted"))]);
    assert!(f.rows(&b, "tdata") > 0);
    let b = crash(f, b);
    assert_rows(f, &b, &[("data", N - 1), ("tdata", 0), ("obj", N)]);
    assert_eq!(latest(&b, 0).data, object(0, 1));
}

pub fn pending_values_of_all_transactions_are_bounded<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 2);
    // Each transaction's value stays under its own bound; together they pass the bound of
    // all, and every pending value is written.
    let size = HELD_TXN_BYTES - 1000;
    let count = (HELD_BYTES / size + 1) as u64;
    let bytes = |i: u64| {
        let mut v = vec![i as u8; size];
        v[..8].copy_from_slice(&i.to_be_bytes());
        v
    };
    for i in 0..count {
        b.store(ttid(100 + 10 * i), Oid(i), value(&bytes(i)))
            .unwrap();
        if i + 1 < count {
            assert_eq!(f.rows(&b, "data"), 0, "written after {} stores", i + 1);
        }
    }
    assert_rows(f, &b, &[("data", count), ("tdata", count)]);
    // And each transaction votes what it holds.
    for i in 0..count {
        let t = ttid(100 + 10 * i);
        b.vote(t, Some(&meta(&[i]))).unwrap();
        b.lock(t, Tid(100 + 10 * i)).unwrap();
        b.unlock(t, Tid(100 + 10 * i)).unwrap();
    }
    let b = crash(f, b);
    assert_rows(f, &b, &[("data", count), ("tdata", 0), ("obj", count)]);
    for i in [0, count - 1] {
        assert!(latest(&b, i).data == bytes(i));
    }
}

pub fn transactions_storing_the_same_bytes<F: Fixture>(f: &F) {
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b, 2);
    let (t1, t2, t3) = (ttid(100), ttid(200), ttid(300));
    b.store(t1, Oid(1), value(b"common")).unwrap();
    b.store(t2, Oid(2), value(b"common")).unwrap();
    b.store(t3, Oid(3), value(b"common")).unwrap();
    b.vote(t1, Some(&meta(&[1]))).unwrap();
    b.vote(t2, Some(&meta(&[2]))).unwrap();
    assert_eq!(f.rows(&b, "data"), 1);
    // The first aborts: the row stays for the second, and the third (still held) shares
    // it when it votes.
    b.abort(t1).unwrap();
    assert_eq!(f.rows(&b, "data"), 1);
    b.lock(t2, Tid(200)).unwrap();
    b.unlock(t2, Tid(200)).unwrap();
    b.vote(t3, Some(&meta(&[3]))).unwrap();
    b.lock(t3, Tid(300)).unwrap();
    b.unlock(t3, Tid(300)).unwrap();
    let b = crash(f, b);
    assert_rows(f, &b, &[("data", 1), ("obj", 2)]);
    assert_eq!(load(&b, 1, None, None), Load::DoesNotExist);
    assert_eq!(latest(&b, 2).data, b"common");
    assert_eq!(latest(&b, 3).data, b"common");
}
