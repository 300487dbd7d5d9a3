//! What an application asks of the client role and what it gets back: ZODB's storage
//! operations as calls ([`Op`], carried by `Command::Call`), their outcomes ([`Reply`],
//! emitted as `Effect::Reply`), and what the client tells the application unasked
//! ([`Notice`], emitted as `Effect::Notice`: invalidations in commit order).
//!
//! The same calls come from the blocking library (`neo::client`, one host thread running
//! the actor) and from the simulator's workload, so the history checker judges exactly what
//! an application sees.
//!
//! Object data crosses this boundary uncompressed: the client compresses (zlib, when
//! smaller) and checksums on the way out, and verifies and decompresses on the way in.

use crate::proto::{Address, Oid, Tid, UndoSerial};

/// Pairs a reply with its call; chosen by the caller, unique among its pending calls.
pub type CallId = u64;

/// One transaction of this client, from `TpcBegin` to `Finish` or `Abort`. Several may be
/// in progress at once (one per application thread committing).
pub type TxnRef = u64;

/// How a client is configured (the library's options, NEO's `<NEOStorage>` keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The cluster's name: masters and storages of another cluster refuse us.
    pub cluster: String,
    pub masters: Vec<Address>,
    /// Refuse every write; the primary knows us as a read-only client.
    pub read_only: bool,
    /// Most bytes of object data the cache keeps (uncompressed).
    pub cache_size: u64,
    /// Compress object data with zlib when that makes it smaller.
    pub compress: bool,
}

impl ClientConfig {
    /// NEO's default cache size: 20 MiB.
    pub const DEFAULT_CACHE_SIZE: u64 = 20 << 20;

    pub fn new(cluster: impl Into<String>, masters: Vec<Address>) -> ClientConfig {
        ClientConfig {
            cluster: cluster.into(),
            masters,
            read_only: false,
            cache_size: Self::DEFAULT_CACHE_SIZE,
            compress: true,
        }
    }
}

/// A call from the application.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Call {
    pub id: CallId,
    pub op: Op,
}

/// ZODB's storage operations.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Op {
    /// `count` fresh OIDs, never handed out before (across failovers too).
    NewOids { count: u32 },
    /// `at`: that exact serial (`loadSerial`); `before`: the last revision before it
    /// (`loadBefore`); neither: the latest as of this client's last transaction (`load`).
    Load {
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    },
    /// The last TID this client knows committed (its snapshot; no round trip).
    LastTransaction,
    /// Ask the primary for the last TID, and answer once every invalidation up to it was
    /// delivered.
    Sync,
    /// Start a transaction; `tid` imposes its final TID (restore, copyTransactionsFrom).
    TpcBegin { tid: Option<Tid> },
    /// Store a revision of `oid` based on `serial` (`Tid::ZERO` for a new object). `data`
    /// None deletes the object, or with `data_serial` makes the revision a backpointer to
    /// the data of `oid` at `data_serial` (undo, restore). Answered at once; conflicts come
    /// out of `Vote`.
    Store {
        txn: TxnRef,
        oid: Oid,
        serial: Tid,
        data: Option<Vec<u8>>,
        data_serial: Option<Tid>,
    },
    /// readCurrent: the transaction commits only if `serial` is still the current revision
    /// of `oid` when it does. Answered at once; a failure comes out of `Vote`.
    CheckCurrentSerial { txn: TxnRef, oid: Oid, serial: Tid },
    /// Wait for every store and check, then vote. `Outcome::Conflicts` asks the caller to
    /// resolve (and `Store` again with the committed serial) or abort; then vote again.
    Vote {
        txn: TxnRef,
        user: Vec<u8>,
        description: Vec<u8>,
        extension: Vec<u8>,
    },
    /// Commit a voted transaction: answers its final TID once it is durable and
    /// invalidations for it were sent.
    Finish { txn: TxnRef },
    /// Abort a transaction that has not been finished.
    Abort { txn: TxnRef },
    /// A committed transaction's metadata and oids (`Outcome::Transaction`);
    /// `ClientError::UnknownTransaction` if there is none by that TID.
    TransactionInfo { tid: Tid },
    /// The undo lookup of `oids` for undoing `undone` within `txn` (its snapshot is this
    /// client's last TID): `Outcome::UndoSerials`, one entry per oid that `undone` wrote.
    UndoSerials {
        txn: TxnRef,
        undone: Tid,
        oids: Vec<Oid>,
    },
    /// Revisions of `oid`, newest first, at most `size`: `Outcome::History`.
    History { oid: Oid, size: u32 },
    /// Committed TIDs of every partition, newest first, skipping `first`, up to (excluding)
    /// `last` (`undoLog`'s range): `Outcome::Tids`.
    UndoLog { first: u64, last: u64 },
    /// Committed TIDs in `min..=max`, ascending, at most `limit` (the iterator's chunks):
    /// `Outcome::Tids`.
    TidsFrom { min: Tid, max: Tid, limit: u32 },
    /// Remove every revision that is not current as of `tid` (and deletions at or before
    /// it) on every storage: answered `Done` once the cluster packed.
    Pack { tid: Tid },
}

/// The answer to one call.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Reply {
    pub id: CallId,
    pub result: Result<Outcome, ClientError>,
}

/// What a call produced.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Outcome {
    /// Store, CheckCurrentSerial, Abort, and a Vote that succeeded.
    Done,
    Oids(Vec<Oid>),
    Loaded(Loaded),
    /// LastTransaction, Sync (None: nothing committed yet), Finish.
    Tid(Option<Tid>),
    Began {
        txn: TxnRef,
        ttid: Tid,
    },
    /// A Vote found stores that conflict: resolve each, or abort.
    Conflicts(Vec<Conflict>),
    Transaction(TransactionInfo),
    UndoSerials(Vec<(Oid, UndoSerial)>),
    /// (serial, size of the data) newest first.
    History(Vec<(Tid, u64)>),
    Tids(Vec<Tid>),
}

/// A committed transaction as `TransactionInfo` describes it.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TransactionInfo {
    pub tid: Tid,
    pub user: Vec<u8>,
    pub description: Vec<u8>,
    pub extension: Vec<u8>,
    /// Packed: some revisions it wrote may be gone.
    pub packed: bool,
    /// Every oid it wrote (or checked with readCurrent), in the order the client gave.
    pub oids: Vec<Oid>,
}

/// One revision, as loaded.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Loaded {
    /// Uncompressed; None if this revision deleted the object (or undid its creation).
    pub data: Option<Vec<u8>>,
    pub serial: Tid,
    /// The serial of the next revision; None if this one is current.
    pub next_serial: Option<Tid>,
    /// If this revision is a backpointer (undo, restore), the serial whose data it shares.
    pub data_serial: Option<Tid>,
}

/// A store that found a newer committed revision than the one it was based on.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Conflict {
    pub oid: Oid,
    /// The serial our store was based on.
    pub serial: Tid,
    /// The revision committed since.
    pub committed: Tid,
    /// What we stored (uncompressed), for the resolver; None for a deletion.
    pub data: Option<Vec<u8>>,
}

/// Why a call failed.
#[derive(Clone, PartialEq, Eq, Hash, Debug, thiserror::Error)]
pub enum ClientError {
    /// ZODB's ConflictError, when the caller gave up resolving.
    #[error("conflict on {oid}: stored on {serial}, committed {committed}")]
    Conflict {
        oid: Oid,
        serial: Tid,
        committed: Tid,
    },
    /// ZODB's ReadConflictError: a readCurrent object changed.
    #[error("read conflict on {oid}: read {serial}, now {current}")]
    ReadConflict { oid: Oid, serial: Tid, current: Tid },
    /// POSKeyError: the object has no revision at all.
    #[error("object {0} does not exist")]
    DoesNotExist(Oid),
    /// POSKeyError: the object exists, but not at (or before) the requested serial.
    #[error("object {0} has no such revision")]
    NotFound(Oid),
    /// Every replica answered data whose checksum is wrong.
    #[error("object {oid} at {serial}: wrong checksum on every replica")]
    WrongChecksum { oid: Oid, serial: Tid },
    /// A read-only client was asked to write.
    #[error("read-only access")]
    ReadOnly,
    /// No primary, the cluster is not RUNNING, or no storage could serve: try again later.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// The transaction failed and was aborted (lost a storage it needed, lost the primary
    /// before finishing, refused by the primary). Nothing of it was committed.
    #[error("transaction failed: {0}")]
    TransactionFailed(String),
    /// The answer to Finish was lost and the outcome could not be learnt in time: the
    /// transaction may or may not have committed.
    #[error("transaction outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The call does not fit the transaction's state (unknown txn, store after vote, ...).
    #[error("invalid call: {0}")]
    Invalid(String),
    /// No committed transaction has that TID.
    #[error("no transaction {0}")]
    UnknownTransaction(Tid),
    /// An undo that cannot be done: the revisions it needs were packed away, or its
    /// changes conflict with later ones and could not be resolved.
    #[error("undo failed: {0}")]
    UndoFailed(String),
    /// The client is stopping or stopped.
    #[error("client closed")]
    Closed,
}

/// What the client tells the application unasked.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Notice {
    /// Transaction `tid` (of another client) changed `oids`; delivered in commit order,
    /// none missing.
    Invalidate { tid: Tid, oids: Vec<Oid> },
    /// The client lost track of invalidations (it reconnected and the cluster's last TID
    /// is not what it knew): every cached object may be stale. `tid` is the new last TID.
    InvalidateAll { tid: Option<Tid> },
}
