//! The packet catalogue: one `Packet` enum, one variant per NEO packet (names and fields as
//! NEO's, encoding our own), and the `Message` that carries it with its per-connection id.
//!
//! Variants are appended, never reordered: postcard encodes a variant by its index, so the
//! order is part of the wire format (bump `frame::PROTOCOL_VERSION` when it changes).

use serde::{Deserialize, Serialize};

use super::ids::{Address, Nid, Oid, Ptid, Tid, WallTime};
use super::states::{CellState, ClusterState, ErrorCode, NodeState, NodeType};

/// What a packet is to the connection carrying it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Expects an answer carrying the same message id.
    Request,
    /// Answers the request with the same message id.
    Answer,
    /// Expects nothing back.
    Notification,
}

/// One packet on a connection. `id` is the sender's counter for requests and notifications;
/// an answer carries the id of the request it answers.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Message {
    pub id: u32,
    pub packet: Packet,
}

/// A node as the primary master describes it in `NotifyNodeInformation` and neoctl prints it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct NodeInfo {
    pub node_type: NodeType,
    pub address: Option<Address>,
    pub nid: Option<Nid>,
    pub state: NodeState,
    /// When the primary identified it; lets storages tell incarnations of a client apart.
    pub id_timestamp: Option<WallTime>,
}

/// `RequestIdentification`'s optional extras (NEO's `extra` map).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct IdentificationExtra {
    /// A client that will not write.
    pub read_only: bool,
    /// A storage's place in the topology (machine, disk, ...), for spreading replicas.
    pub devpath: Vec<String>,
    /// A storage whose node id is in a partition table it holds: that id is its own, and a
    /// second node claiming it is a copy. Otherwise the id may be replaced.
    pub established: bool,
    /// A storage's partition-table id: a primary whose table is not newer moves to a new
    /// id, so that ids keep growing on every node.
    pub ptid: Option<Ptid>,
}

macro_rules! packets {
    ($( $(#[$doc:meta])* $kind:ident $name:ident $({ $($(#[$fdoc:meta])* $field:ident : $ty:ty),* $(,)? })? ),* $(,)?) => {
        /// Every packet of the protocol.
        #[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        pub enum Packet {
            $( $(#[$doc])* $name $({ $($(#[$fdoc])* $field: $ty),* })? ),*
        }

        impl Packet {
            /// The packet's NEO name, for logs and traces.
            pub fn name(&self) -> &'static str {
                match self { $( Packet::$name { .. } => stringify!($name) ),* }
            }

            pub fn kind(&self) -> Kind {
                match self { $( Packet::$name { .. } => Kind::$kind ),* }
            }

            /// Whether the packet answers a request (the `Answer*` packets, Error, Pong,
            /// AcceptIdentification, NotPrimaryMaster): only those are matched to requests.
            pub fn is_answer(&self) -> bool {
                self.kind() == Kind::Answer
            }
        }
    };
}

packets! {
    /// The generic answer: an error, or ACK for requests that have no answer of their own.
    Answer Error { code: ErrorCode, message: String },
    /// The first packet on every node-to-node connection.
    Request RequestIdentification {
        node_type: NodeType,
        nid: Option<Nid>,
        /// The requester's listening address (none for clients and neoctl).
        address: Option<Address>,
        cluster_name: String,
        /// Master to master: the election timestamp of a claimant (none from a secondary).
        id_timestamp: Option<WallTime>,
        extra: IdentificationExtra,
    },
    Answer AcceptIdentification { node_type: NodeType, nid: Option<Nid>, your_nid: Option<Nid> },
    /// A network barrier, and our idle-connection heartbeat.
    Request Ping,
    Answer Pong,
    /// "You may close this connection if you are done with me."
    Notification CloseClient,
    Request AskPrimary,
    Answer AnswerPrimary { primary_nid: Option<Nid> },
    /// A secondary master's answer to any identification: who it believes is primary and
    /// the masters it knows. The connection is closed after it.
    Answer NotPrimaryMaster { primary: Option<Address>, known_masters: Vec<Address> },
    /// Node changes, sent by the primary; `timestamp` strictly increases per primary.
    Notification NotifyNodeInformation { timestamp: WallTime, nodes: Vec<NodeInfo> },
    Notification NotifyClusterInformation { state: ClusterState },
    Request AskClusterState,
    Answer AnswerClusterState { state: Option<ClusterState> },

    // ---- recovery and partition-table distribution (master <-> storage) ----
    Request AskRecovery,
    Answer AnswerRecovery { ptid: Option<Ptid>, backup_tid: Option<Tid>, truncate_tid: Option<Tid> },
    /// Last ids; a storage applies a pending truncation before answering.
    Request AskLastIDs,
    Answer AnswerLastIDs { last_tid: Option<Tid>, last_oid: Option<Oid>, first_tid: Option<Tid> },
    Request AskPartitionTable,
    Answer AnswerPartitionTable { ptid: Option<Ptid>, num_replicas: u32, rows: Vec<Vec<(Nid, CellState)>> },
    /// The full table (receivers replace theirs).
    Notification SendPartitionTable { ptid: Option<Ptid>, num_replicas: u32, rows: Vec<Vec<(Nid, CellState)>> },
    /// Changes; receivers require `ptid` to follow theirs.
    Notification NotifyPartitionChanges { ptid: Ptid, num_replicas: u32, changes: Vec<(u32, Nid, CellState)> },
    Notification StartOperation { backup: bool },
    Notification StopOperation,
    /// A storage finished starting operation.
    Notification NotifyReady,
    /// Master to storage: persist a truncation decision. From neoctl: truncate (answered
    /// with an Error packet).
    Request Truncate { tid: Tid },

    // ---- verification ----
    Request AskLockedTransactions,
    /// Voted transactions: ttid -> final TID if locked.
    Answer AnswerLockedTransactions { transactions: Vec<(Tid, Option<Tid>)> },
    Request AskFinalTID { ttid: Tid },
    Answer AnswerFinalTID { tid: Option<Tid> },
    /// Replay lock and unlock of a voted transaction.
    Notification ValidateTransaction { ttid: Tid, tid: Tid },

    // ---- administration (neoctl -> admin -> primary) ----
    /// `max_offset` 0 means all partitions.
    Request AskPartitionList { min_offset: u32, max_offset: u32, nid: Option<Nid> },
    Answer AnswerPartitionList { ptid: Option<Ptid>, num_replicas: u32, rows: Vec<(u32, Vec<(Nid, CellState)>)> },
    Request AskNodeList { node_type: Option<NodeType> },
    Answer AnswerNodeList { nodes: Vec<NodeInfo> },
    Request SetNodeState { nid: Nid, state: NodeState },
    Request AddPendingNodes { nids: Vec<Nid> },
    Request TweakPartitionTable { dry_run: bool, nids: Vec<Nid> },
    Answer AnswerTweakPartitionTable { changed: bool, rows: Vec<Vec<(Nid, CellState)>> },
    Request SetNumReplicas { num_replicas: u32 },
    Request SetClusterState { state: ClusterState },
    Request AskLastTransaction,
    Answer AnswerLastTransaction { tid: Option<Tid> },

    // ---- transactions (running; neo-spec 6.4 to 6.11) ----
    /// Client to primary: begin a transaction, with the TID it must get (restore) or not.
    Request AskBeginTransaction { tid: Option<Tid> },
    Answer AnswerBeginTransaction { ttid: Tid },
    Request AskNewOIDs { count: u32 },
    Answer AnswerNewOIDs { oids: Vec<Oid> },
    /// Client to every cell of the object's partition. `data` is None for a deletion
    /// (checksum `ZERO_HASH`); `data_serial` is an undo's backpointer.
    Request AskStoreObject {
        oid: Oid,
        serial: Tid,
        compression: u8,
        checksum: [u8; 20],
        data: Option<Data>,
        data_serial: Option<Tid>,
        ttid: Tid,
    },
    /// None: stored and write-locked. `Some(Tid::ZERO)`: accepted without a lock (the
    /// cell is being replicated) or ignored (not ours). Otherwise the conflicting serial.
    Answer AnswerStoreObject { conflict: Option<Tid> },
    /// readCurrent: lock `oid` as a store would, conflicting if `serial` is not current.
    Request AskCheckCurrentSerial { ttid: Tid, oid: Oid, serial: Tid },
    Answer AnswerCheckCurrentSerial { conflict: Option<Tid> },
    /// Storage to the client of a younger transaction holding a lock an older one waits
    /// for: give it up and take it again (`AskRelockObject`) if you have not voted.
    Notification NotifyDeadlock { ttid: Tid, oid: Oid },
    Request AskRelockObject { ttid: Tid, oid: Oid },
    /// None: locked again with nothing changed. Otherwise the store must be resolved again
    /// against `conflict`.
    Answer AnswerRelockObject { conflict: Option<Relocked> },
    /// Client to the cells of partition(ttid): the metadata, and vote. `oids` lists every
    /// object written or checked.
    Request AskStoreTransaction {
        ttid: Tid,
        user: Data,
        description: Data,
        extension: Data,
        oids: Vec<Oid>,
    },
    Answer AnswerStoreTransaction,
    /// Client to every other storage it stored to: vote.
    Request AskVoteTransaction { ttid: Tid },
    Answer AnswerVoteTransaction,
    /// Client to primary: these storages failed during the vote; answered ACK (go on) or
    /// INCOMPLETE_TRANSACTION.
    Request FailedVote { ttid: Tid, nids: Vec<Nid> },
    /// `oids`: objects to invalidate; `deleted`/`checked`: partitions of deleted and
    /// readCurrent-only objects, whose storages take part in lock and unlock.
    Request AskFinishTransaction { ttid: Tid, oids: Vec<Oid>, deleted: Vec<u32>, checked: Vec<u32> },
    Answer AnswerTransactionFinished { ttid: Tid, tid: Tid },
    /// Primary to every storage involved: the final TID; make the transaction durable.
    Request AskLockInformation { ttid: Tid, tid: Tid },
    Answer AnswerInformationLocked { ttid: Tid },
    Notification NotifyUnlockInformation { ttid: Tid },
    /// Primary to every other client, in commit order.
    Notification InvalidateObjects { tid: Tid, oids: Vec<Oid> },
    /// Client to storages (`nids` empty) and to the primary (the storages it used).
    Notification AbortTransaction { ttid: Tid, nids: Vec<Nid> },

    // ---- reads (neo-spec 6.12) ----
    /// `at`: that exact serial; `before`: the last revision before it; neither: latest.
    Request AskObject { oid: Oid, at: Option<Tid>, before: Option<Tid> },
    Answer AnswerObject {
        oid: Oid,
        serial: Tid,
        next_serial: Option<Tid>,
        compression: u8,
        checksum: [u8; 20],
        data: Option<Data>,
        data_serial: Option<Tid>,
    },

    // ---- the rest of the storage API: undo, history, iteration, pack (neo-spec 6.13-6.15) ----
    /// Client to a readable cell of partition(tid): a committed transaction's metadata and
    /// the oids it wrote. `TID_NOT_FOUND` if it has none by that TID.
    Request AskTransactionInformation { tid: Tid },
    Answer AnswerTransactionInformation {
        tid: Tid,
        user: Data,
        description: Data,
        extension: Data,
        packed: bool,
        oids: Vec<Oid>,
    },
    /// Client to one readable cell per partition of `oids`: how to undo `undone_tid` in
    /// transaction `ttid`, whose snapshot is everything before `ltid`.
    Request AskObjectUndoSerial { ttid: Tid, ltid: Tid, undone_tid: Tid, oids: Vec<Oid> },
    /// One entry per asked oid, in the asked order; OID_NOT_FOUND instead if one of them
    /// has no revision at `undone_tid` (packed away: the transaction cannot be undone).
    Answer AnswerObjectUndoSerial { serials: Vec<(Oid, UndoSerial)> },
    /// Client to a readable cell of partition(oid): revisions newest first, skipping
    /// `first`, up to (excluding) `last`. OID_DOES_NOT_EXIST if it has none.
    Request AskObjectHistory { oid: Oid, first: u64, last: u64 },
    Answer AnswerObjectHistory { oid: Oid, history: Vec<(Tid, u64)> },
    /// Client to every storage with readable cells: TIDs newest first, skipping `first`, up
    /// to (excluding) `last`, of `partition` or (None) of every partition readable there.
    Request AskTIDs { first: u64, last: u64, partition: Option<u32> },
    Answer AnswerTIDs { tids: Vec<Tid> },
    /// Client to a readable cell of `partition`: its TIDs in `min_tid..=max_tid`, ascending,
    /// at most `length`.
    Request AskTIDsFrom { min_tid: Tid, max_tid: Tid, length: u32, partition: u32 },
    Answer AnswerTIDsFrom { tids: Vec<Tid> },
    /// Client to primary, and primary to every storage with readable cells: remove the
    /// revisions that are not current as of `tid`. Answered once done everywhere.
    Request AskPack { tid: Tid },
    Answer AnswerPack { status: bool },

    // ---- id reservations (primary <-> storage; not in NEO) ----
    /// Primary to every running storage: persist these as the greatest OID and TID a primary
    /// may have handed out (each only raised, never lowered), then answer. Both None: only
    /// read them (verification).
    Request AskReserveIDs { oid: Option<Oid>, tid: Option<Tid> },
    /// The storage's reservation after the request, committed to disk.
    Answer AnswerReserveIDs { oid: Option<Oid>, tid: Option<Tid> },
}

/// The most revisions one `AskObjectHistory` may ask for (`last - first`).
pub const MAX_HISTORY_LENGTH: u64 = 10_000;
/// The most TIDs one `AskTIDs` (`last - first`) or `AskTIDsFrom` (`length`) may ask for.
pub const MAX_TIDS_LENGTH: u64 = 10_000;
/// The most oids one `AskObjectUndoSerial` may carry: as many as one transaction may write
/// (`db::MAX_TXN_OIDS`).
pub const MAX_UNDO_OIDS: usize = 1 << 20;

/// `AnswerObjectUndoSerial`'s entry for one oid (see `db::UndoInfo`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UndoSerial {
    /// The serial visible to the undoing transaction.
    pub current: Tid,
    /// The serial whose data the undo restores; None if the undone revision created the
    /// object (the undo deletes it).
    pub undo: Option<Tid>,
    /// Whether the undone revision's data is still current (the undo is a plain
    /// backpointer store; otherwise it must be resolved against the current data).
    pub is_current: bool,
}

/// Opaque bytes (object data, transaction text), encoded as one length-prefixed block
/// rather than byte by byte.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Data(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl From<Vec<u8>> for Data {
    fn from(v: Vec<u8>) -> Data {
        Data(v)
    }
}

/// `AnswerRelockObject`'s conflict: the serial the relocked store was based on, the one it
/// now conflicts with, and what had been stored (None for a readCurrent check), since the
/// client may have dropped it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Relocked {
    pub serial: Tid,
    pub conflict: Tid,
    pub data: Option<(u8, [u8; 20], Data)>,
}

impl Packet {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Packet {
        Packet::Error {
            code,
            message: message.into(),
        }
    }

    pub fn ack(message: impl Into<String>) -> Packet {
        Packet::error(ErrorCode::Ack, message)
    }
}
