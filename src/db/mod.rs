//! The storage node's disk: the [`Backend`] trait with NEO's data model, its SQLite and
//! MySQL/MariaDB implementations (one SQL core, `sql`, over two engines), the conformance
//! suite both must pass, and `faulty`, a wrapper that injects disk faults (the simulator's).
//!
//! Errors come in two kinds ([`DbError::is_fatal`]): a request that cannot be served
//! (answered with an error; nothing was written) and a database that cannot be trusted any
//! more (the node stops, saying why).
//!
//! The data model (neo-spec section 12): `config` (schema version, cluster name, node id,
//! partition-table id, replicas, truncate and backup TIDs), the node's view of the partition
//! table `pt` (with each own OUT_OF_DATE cell's replication progress), committed history in
//! `trans` / `obj` / `data`, and the temporary `ttrans` / `tobj` a vote writes.
//!
//! The write path of a transaction, and what survives a crash at each point:
//! - `store`: the object is held in memory; its data row (deduplicated by SHA-1 and
//!   compression) is written by `vote`, or earlier once held values weigh more than a bound
//!   (memory stays bounded). Lost in a crash, and any data row written for it released.
//! - `vote`: `tobj` rows (and `ttrans` with a NULL tid, on the node that keeps the
//!   transaction's metadata) are written and committed. Survives; verification decides.
//! - `lock`: the final TID is recorded in `ttrans` and committed. Survives: a locked
//!   transaction is never aborted.
//! - `unlock`: the rows move to `trans` / `obj` under the final TID, committed.
//! - `abort`: the temporary rows and held data are dropped, committed.
//!
//! Deferred mode (`set_deferred(true)`, the storage's group commit): `vote`, `lock` and
//! `unlock` write but do not commit; one `commit` then makes several transactions' steps
//! durable at once, and a crash before it loses them all (as if they never ran). The same
//! connection sees what they wrote meanwhile. Every other method that commits also commits
//! what deferred calls left pending.
//!
//! Every method that says "commits" leaves nothing pending when it returns; the others
//! (replication's `put_*`/`delete_*`, `set_replicated_up_to`, `set_backup_tid`) are committed
//! by `commit`.
//! Partitions: an object's partition is `oid % partitions`, a transaction's `tid %
//! partitions`, where `partitions` is the number of rows of the stored partition table.
//!
//! This code runs inside the storage actor: it never reads a clock, spawns a thread or
//! iterates a `HashMap`.

pub mod conformance;
pub mod faulty;
pub mod mysql;
pub mod sql;
pub mod sqlite;

use std::collections::BTreeMap;

use crate::proto::{CellState, Nid, Oid, Ptid, Tid};

/// The schema version this program writes; a database with a greater one is refused.
pub const SCHEMA_VERSION: u32 = 1;

/// SHA-1 of an object's stored (possibly compressed) bytes.
pub type Checksum = [u8; 20];
/// The checksum of "no data" (a deletion, an undone creation).
pub const ZERO_HASH: Checksum = [0; 20];

/// The most OIDs a transaction's metadata may list (`vote`, `put_transaction`). NEO allows
/// fewer than 2^21; half of that keeps the MySQL backend's largest statement under 9 MiB, so
/// it works with MariaDB's default 16 MiB `max_allowed_packet`.
pub const MAX_TXN_OIDS: usize = 1 << 20;
/// The longest user, description or extension of a transaction (NEO's BLOB columns).
pub const MAX_TXN_TEXT: usize = 65_535;

/// What went wrong, worded for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    /// The database engine failed (I/O, SQL, connection).
    #[error("database error: {0}")]
    Backend(String),
    /// The database belongs to another cluster or node; nothing was modified.
    #[error("this database belongs to {what} {found:?}, not {expected:?}")]
    Foreign {
        what: &'static str,
        expected: String,
        found: String,
    },
    /// Written by a newer program; nothing was modified.
    #[error("database schema version {found} is newer than this program's ({supported})")]
    NewerSchema { supported: u32, found: u32 },
    /// Another storage node (process) uses this database.
    #[error("database {0} is in use by another storage node")]
    Locked(String),
    /// The server or the database is not usable as configured.
    #[error("{0}")]
    Unusable(String),
    /// An operation needs the partition table and there is none yet.
    #[error("no partition table yet")]
    NoPartitionTable,
    /// Undo found no data to point back to (packed away).
    #[error("cannot undo {oid}: no record at {tid} (packed?)")]
    UndoPack { oid: Oid, tid: Tid },
    /// The same hash and compression with different bytes: a SHA-1 collision or corruption.
    #[error("data with checksum {0:02x?} differs from the stored data of the same checksum")]
    ChecksumCollision(Checksum),
    /// A transaction's metadata exceeds `MAX_TXN_OIDS` or `MAX_TXN_TEXT`; nothing was written.
    #[error("transaction metadata too large: {0}")]
    TooLarge(String),
    /// The disk failed a read or a write (EIO).
    #[error("I/O error: {0}")]
    Io(String),
    /// The disk is full (ENOSPC): a write that had to succeed did not.
    #[error("no space left on device: {0}")]
    NoSpace(String),
    /// The connection to the database server was lost while changes were pending on it:
    /// reconnecting would silently lose them.
    #[error("lost the connection to the database with changes pending: {0}")]
    ConnectionLost(String),
}

impl DbError {
    /// Whether the database can no longer be trusted, so the node must stop (saying why),
    /// rather than one request could not be served.
    ///
    /// Request-level errors (metadata too large, an undo whose data was packed away, data
    /// whose checksum collides with stored data, no partition table yet) are all detected
    /// before anything is written, so the node answers the request with an error and goes
    /// on with nothing half done. Every other error may have left the database, or what the
    /// node believes of it, in an unknown state: the node stops, and what it had not
    /// committed is rolled back with its connection.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            DbError::TooLarge(_)
                | DbError::UndoPack { .. }
                | DbError::ChecksumCollision(_)
                | DbError::NoPartitionTable
        )
    }

    /// The code of the `Error` answer to a request this error failed.
    pub fn error_code(&self) -> crate::proto::ErrorCode {
        use crate::proto::ErrorCode;
        match self {
            DbError::UndoPack { .. } => ErrorCode::UndoPackError,
            DbError::NoPartitionTable => ErrorCode::NotReady,
            _ => ErrorCode::ProtocolError,
        }
    }
}

pub type DbResult<T> = Result<T, DbError>;

/// Who opens a database: a new database is stamped with it, an existing one must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster: String,
    /// A node id the operator imposed (`--nid`); otherwise whatever the database holds.
    pub nid: Option<Nid>,
}

/// The `config` table.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DbConfig {
    pub version: u32,
    pub name: String,
    pub nid: Option<Nid>,
    pub ptid: Option<Ptid>,
    pub replicas: Option<u32>,
    pub truncate_tid: Option<Tid>,
    pub backup_tid: Option<Tid>,
    /// The greatest OID and TID a primary reserved here (`AskReserveIDs`): ids it may have
    /// handed out, which the next primary must start above.
    pub reserved_oid: Option<Oid>,
    pub reserved_tid: Option<Tid>,
}

/// One cell of the partition table as the storage keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cell {
    pub partition: u32,
    pub nid: Nid,
    pub state: CellState,
}

/// An object's stored bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectData {
    /// 0 = raw, 1 = zlib.
    pub compression: u8,
    /// SHA-1 of `data`.
    pub checksum: Checksum,
    pub data: Vec<u8>,
}

/// What one object revision holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    Data(ObjectData),
    /// A deletion, or an undone creation: no data.
    Deleted,
    /// An undo: the same data as the revision of this object at the given TID (the
    /// backpointer); `store` fails with `UndoPack` if that revision has no data row.
    Backpointer(Tid),
}

/// A revision as replication moves it: the data (if any) and the backpointer (if any).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectRecord {
    pub data: Option<ObjectData>,
    pub data_serial: Option<Tid>,
}

/// A transaction's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct TxnMeta {
    pub user: Vec<u8>,
    pub description: Vec<u8>,
    pub extension: Vec<u8>,
    /// Every OID the transaction wrote (or checked), in the client's order.
    pub oids: Vec<Oid>,
}

/// A committed transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TxnInfo {
    pub tid: Tid,
    /// The temporary id it had while being committed.
    pub ttid: Tid,
    pub packed: bool,
    pub meta: TxnMeta,
}

/// A revision found by `load`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub serial: Tid,
    /// The serial of the next revision; None if this one is current.
    pub next_serial: Option<Tid>,
    /// `ZERO_HASH`, compression 0 and no bytes for a deletion.
    pub compression: u8,
    pub checksum: Checksum,
    pub data: Vec<u8>,
    /// The undo backpointer, if this revision is one.
    pub data_serial: Option<Tid>,
}

/// The outcome of `load`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Load {
    Found(Loaded),
    /// The object exists, but not at (or before) the requested TID.
    NotFound,
    /// The object has no revision at all.
    DoesNotExist,
}

/// The undo lookup's answer for one object (`AskObjectUndoSerial`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UndoInfo {
    /// The serial visible to the undoing transaction (the latest before its snapshot).
    pub current: Tid,
    /// The serial holding the data as it was before the undone transaction, following
    /// backpointers; None if the undone revision created the object.
    pub undo: Option<Tid>,
    /// Whether the undone revision's data is still the current data.
    pub is_current: bool,
}

/// `AnswerLastIDs`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LastIds {
    /// The greatest TID in `trans` and `obj`.
    pub last_tid: Option<Tid>,
    /// The greatest OID in `obj` and `tobj`.
    pub last_oid: Option<Oid>,
    /// The smallest TID in `trans`.
    pub first_tid: Option<Tid>,
}

/// `AnswerCheckTIDRange`: over at most `length` transactions of a partition from
/// `min_tid` to `max_tid` (inclusive), ordered by TID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TidRangeCheck {
    pub count: u64,
    /// SHA-1 of the decimal TIDs joined with commas (ZERO_HASH when count is 0).
    pub sha1: Checksum,
    /// The last TID counted.
    pub max_tid: Option<Tid>,
}

/// `AnswerCheckSerialRange`: over at most `length` object revisions of a partition, ordered
/// by (TID, OID), from (`min_tid`, `min_oid`) to `max_tid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialRangeCheck {
    pub count: u64,
    /// SHA-1 of the decimal serials joined with commas.
    pub tid_sha1: Checksum,
    pub last_tid: Option<Tid>,
    /// SHA-1 of the decimal OIDs joined with commas.
    pub oid_sha1: Checksum,
    pub last_oid: Option<Oid>,
}

/// A storage node's database. Synchronous: each call returns when done.
pub trait Backend {
    // ---- identity, configuration, partition table ----

    fn config(&self) -> DbResult<DbConfig>;
    /// Record the node id the primary gave us. Commits.
    fn set_nid(&mut self, nid: Nid) -> DbResult<()>;
    /// Persist a truncation decision (`None` clears it); also clears `backup_tid`. Commits.
    fn set_truncate_tid(&mut self, tid: Option<Tid>) -> DbResult<()>;
    /// Record how far a backup cluster is complete. Committed by `commit`.
    fn set_backup_tid(&mut self, tid: Option<Tid>) -> DbResult<()>;
    /// Raise the id reservation to `oid` and `tid` (each kept if already higher or None).
    /// Commits.
    fn reserve_ids(&mut self, oid: Option<Oid>, tid: Option<Tid>) -> DbResult<()>;

    /// Every cell, ordered by (partition, nid).
    fn partition_table(&self) -> DbResult<Vec<Cell>>;
    /// Apply a partition-table change and record `ptid` and `replicas`: `reset` replaces the
    /// whole table with `cells`; otherwise each cell is set, and a DISCARDED one removed.
    /// Commits.
    fn change_partition_table(
        &mut self,
        ptid: Ptid,
        replicas: u32,
        cells: &[Cell],
        reset: bool,
    ) -> DbResult<()>;
    /// How far an own OUT_OF_DATE cell is replicated (None: from the start).
    fn replicated_up_to(&self, partition: u32) -> DbResult<Option<Tid>>;
    fn set_replicated_up_to(&mut self, partition: u32, tid: Option<Tid>) -> DbResult<()>;

    // ---- the write path ----

    /// Hold `value` as the revision of `oid` in transaction `ttid`, replacing what an earlier
    /// `store` of the same object in the same transaction held. Data whose checksum and
    /// compression match stored data with other bytes (`ChecksumCollision`) is refused by
    /// the call that writes its data row (this store, a later one of the transaction, or
    /// `vote`), which then writes nothing; the value stays held, so the transaction cannot
    /// vote until the object is stored again, unstored or the transaction aborted.
    fn store(&mut self, ttid: Tid, oid: Oid, value: Value) -> DbResult<()>;
    /// Forget what `store` held for `oid` in `ttid` (conflict resolution re-stores it).
    fn unstore(&mut self, ttid: Tid, oid: Oid) -> DbResult<()>;
    /// Write the held objects of `ttid` to `tobj`, and `meta` (if this node keeps the
    /// transaction's metadata) to `ttrans` with no final TID. Commits. `TooLarge` if `meta`
    /// exceeds `MAX_TXN_OIDS` / `MAX_TXN_TEXT`.
    fn vote(&mut self, ttid: Tid, meta: Option<&TxnMeta>) -> DbResult<()>;
    /// While `deferred`, `vote`, `lock` and `unlock` do not commit (`commit` does); see the
    /// module doc.
    fn set_deferred(&mut self, deferred: bool);
    /// Record the final TID of a voted transaction. Commits.
    fn lock(&mut self, ttid: Tid, tid: Tid) -> DbResult<()>;
    /// Move a locked transaction to `trans` / `obj` under `tid`. Commits.
    fn unlock(&mut self, ttid: Tid, tid: Tid) -> DbResult<()>;
    /// Drop everything of an unlocked transaction (held, voted), releasing its data. Commits.
    fn abort(&mut self, ttid: Tid) -> DbResult<()>;

    // ---- verification ----

    /// Every voted transaction: ttid -> final TID if locked.
    fn locked_transactions(&self) -> DbResult<BTreeMap<Tid, Option<Tid>>>;
    /// The final TID of a transaction by its ttid, committed (in `trans`) or locked.
    fn final_tid(&self, ttid: Tid) -> DbResult<Option<Tid>>;
    /// Replay lock and unlock of a voted transaction. Commits.
    fn validate(&mut self, ttid: Tid, tid: Tid) -> DbResult<()>;
    /// Drop every unfinished transaction (held and voted) and release its data. Commits.
    fn drop_unfinished(&mut self) -> DbResult<()>;

    // ---- reads ----

    /// The revision of `oid` at serial `at`, or the last one before `before`, or the latest.
    fn load(&self, oid: Oid, at: Option<Tid>, before: Option<Tid>) -> DbResult<Load>;
    /// Revisions of `oid`, newest first, skipping `offset`, at most `length`: (serial, data
    /// size). None if the object does not exist.
    fn history(&self, oid: Oid, offset: u64, length: u64) -> DbResult<Option<Vec<(Tid, u64)>>>;
    fn transaction(&self, tid: Tid) -> DbResult<Option<TxnInfo>>;
    /// TIDs of the given partitions, newest first, skipping `offset`, at most `length`.
    fn tids(&self, offset: u64, length: u64, partitions: &[u32]) -> DbResult<Vec<Tid>>;
    /// TIDs of the given partitions in `min_tid..=max_tid`, ascending, at most `length`.
    fn tids_from(
        &self,
        min_tid: Tid,
        max_tid: Tid,
        length: u64,
        partitions: &[u32],
    ) -> DbResult<Vec<Tid>>;
    /// OIDs of a partition from `min_oid`, ascending, at most `length`, that exist and are
    /// not deleted at `tid`; with the OID to continue from, if any remain.
    fn oids_from(
        &self,
        partition: u32,
        length: u64,
        min_oid: Oid,
        tid: Tid,
    ) -> DbResult<(Vec<Oid>, Option<Oid>)>;
    /// The undo lookup for `oid` when transaction `undone_tid` is undone by a transaction
    /// whose snapshot is before `ltid`. None if `oid` has no revision at `undone_tid`, or
    /// none before `ltid`.
    fn find_undo(&self, oid: Oid, ltid: Tid, undone_tid: Tid) -> DbResult<Option<UndoInfo>>;
    fn last_ids(&self) -> DbResult<LastIds>;

    // ---- truncation ----

    /// Apply the persisted truncation: delete everything after `truncate_tid` in every table
    /// (transactions, revisions, unreferenced data), lower replication marks above it, and
    /// clear `truncate_tid`. Commits. Does nothing if no truncation is pending.
    fn truncate(&mut self) -> DbResult<()>;

    // ---- replication and replica checks ----

    /// TIDs of a partition's transactions in `min_tid..=max_tid`, ascending, at most `length`.
    fn replication_tids(
        &self,
        partition: u32,
        min_tid: Tid,
        max_tid: Tid,
        length: u64,
    ) -> DbResult<Vec<Tid>>;
    /// (serial, OID) of a partition's revisions from (`min_tid`, `min_oid`) to `max_tid`,
    /// ordered by (serial, OID), at most `length`.
    fn replication_objects(
        &self,
        partition: u32,
        min_tid: Tid,
        max_tid: Tid,
        min_oid: Oid,
        length: u64,
    ) -> DbResult<Vec<(Tid, Oid)>>;
    fn object_record(&self, oid: Oid, serial: Tid) -> DbResult<Option<ObjectRecord>>;
    /// Write a replicated transaction (replacing one with the same TID). `TooLarge` as `vote`.
    fn put_transaction(&mut self, txn: &TxnInfo) -> DbResult<()>;
    /// Write a replicated revision (replacing one with the same OID and serial).
    fn put_object(&mut self, oid: Oid, serial: Tid, record: &ObjectRecord) -> DbResult<()>;
    fn delete_transaction(&mut self, tid: Tid) -> DbResult<()>;
    /// Delete a revision, releasing its data if nothing else uses it.
    fn delete_object(&mut self, oid: Oid, serial: Tid) -> DbResult<()>;
    fn check_tid_range(
        &self,
        partition: u32,
        length: u64,
        min_tid: Tid,
        max_tid: Tid,
    ) -> DbResult<TidRangeCheck>;
    fn check_serial_range(
        &self,
        partition: u32,
        length: u64,
        min_tid: Tid,
        max_tid: Tid,
        min_oid: Oid,
    ) -> DbResult<SerialRangeCheck>;
    /// Commit what the uncommitted operations above wrote.
    fn commit(&mut self) -> DbResult<()>;

    // ---- maintenance ----

    /// Pack the given partitions at `tid`: for each object, revisions older than its last
    /// revision at or before `tid` are removed, and that one too if it is a deletion; the
    /// transactions at or before `tid` are marked packed (never removed); unreferenced data
    /// is released. Commits.
    fn pack(&mut self, tid: Tid, partitions: &[u32]) -> DbResult<()>;
    /// Delete every transaction and revision of the given partitions. Commits.
    fn drop_partitions(&mut self, partitions: &[u32]) -> DbResult<()>;
    /// Erase everything but the identity (version and cluster name): the node was dropped
    /// from its cluster. Commits.
    fn erase(&mut self) -> DbResult<()>;
}

/// The partition of an object or transaction id.
pub fn partition_of(id: u64, partitions: u32) -> u32 {
    (id % partitions as u64) as u32
}
