//! The clients' recorded history and the isolation check run on it at the end of every
//! seed of the commits scenario (Elle-style list-append).
//!
//! Each object holds a list of unique values; a transaction reads some objects (some with
//! readCurrent) and appends a unique value to others. The checker is given every
//! transaction as the simulated clients saw it (committed with its TID, failed, or unknown
//! because the answer was lost) and every object's full revision history as the storages
//! hold it after the run, and judges the isolation ZODB promises: snapshot isolation (first
//! committer wins; write skew allowed) for everyone, serializability where reads were
//! checked, nothing acknowledged lost, nothing uncommitted read.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::proto::{Oid, Tid};

/// A value appended to an object's list; unique across the whole run.
pub type Val = u64;

/// How a transaction ended, as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// tpc_finish answered this TID.
    Committed(Tid),
    /// Aborted (a conflict, a failed vote, an explicit abort): nothing of it may be seen.
    Failed,
    /// The answer to tpc_finish (or the vote) was lost: it may or may not have committed.
    Unknown,
}

/// One object a transaction read: the list it saw and the serial of that revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    pub oid: Oid,
    /// Empty if the object did not exist yet at the snapshot (`serial` is then None).
    pub list: Vec<Val>,
    pub serial: Option<Tid>,
    /// Checked with readCurrent (the commit fails if it changed).
    pub checked: bool,
}

/// One transaction as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnRecord {
    /// Unique in the run.
    pub id: usize,
    pub client: usize,
    /// The snapshot its reads were taken at (the client's last TID at begin).
    pub snapshot: Option<Tid>,
    pub reads: Vec<Read>,
    /// Values it appended (stored as the read list plus the value, based on the read
    /// serial; a resolved conflict appends to the committed list instead).
    pub appends: Vec<(Oid, Val)>,
    pub status: Status,
    /// Virtual time of begin and of the end the client saw (None if unknown).
    pub begun: Duration,
    pub ended: Option<Duration>,
}

/// Every revision of every object as the storages hold it after the run: oid -> (serial,
/// list) ascending by serial.
pub type FinalHistory = BTreeMap<Oid, Vec<(Tid, Vec<Val>)>>;
