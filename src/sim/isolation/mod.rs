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
//!
//! - this file: the record types (the simulator fills them) and the [`Verdict`];
//! - `checker`: the checks on values, revisions, reads and commits;
//! - `graph`: the dependency graph (Adya/Elle ww, wr, rw edges) and its cycle searches;
//! - `model`: undo and pack: every object's revisions replayed from the committed
//!   transactions (an undo writes back the list as it was before the revision it undoes),
//!   compared with the final history, which a pack may have thinned only as it is allowed.

mod checker;
mod graph;
mod model;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::proto::{Oid, Tid, UndoSerial};

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
    /// The checker decides from the final history: it committed iff its values appear (a
    /// transaction that appended nothing stays undecided and is left out of the graph).
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
    /// The snapshot its reads were taken at (the client's last TID at begin). None: the
    /// client knew of no transaction yet, so its reads must find no object.
    pub snapshot: Option<Tid>,
    /// The reads at the snapshot, one per object, as answered (a resolved conflict's
    /// reload of the committed revision is not a read: it stays out of this list).
    pub reads: Vec<Read>,
    /// Values it appended (stored as the read list plus the value, based on the read
    /// serial; a resolved conflict appends to the committed list instead).
    pub appends: Vec<(Oid, Val)>,
    /// Objects whose append was rebased by conflict resolution onto a revision committed
    /// after the snapshot: first committer wins is waived for them, and their reads are
    /// not taken as the base of the append.
    pub resolved: Vec<Oid>,
    /// An undo transaction: what it undid and the lookup it stored from (it appends
    /// nothing; each entry is a backpointer store, or a deletion if `undo` is None).
    pub undo: Option<Undo>,
    pub status: Status,
    /// Virtual time of begin and of the end the client saw (None if unknown).
    pub begun: Duration,
    pub ended: Option<Duration>,
}

/// What an undo transaction did: the TID it undid and, per object, the storage's undo
/// lookup (the serial it replaced, the one whose data it restored, whether current).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undo {
    pub undone: Tid,
    pub entries: Vec<(Oid, UndoSerial)>,
}

/// What the run knows beyond the clients' records and the revisions.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    /// The transaction tables' descriptions: TID -> the id of the workload transaction it
    /// names ("txn N"); None if not read (then unknown outcomes are decided by values only).
    pub named: Option<BTreeMap<Tid, usize>>,
    /// Every TID a pack was asked at, whatever came of it.
    pub packs: Vec<Tid>,
}

/// Every revision of every object as the storages hold it after the run: oid -> (serial,
/// list) ascending by serial; a deletion (an undone creation) is an empty list.
pub type FinalHistory = BTreeMap<Oid, Vec<(Tid, Vec<Val>)>>;

/// The checker's judgement: the anomalies found (one readable line each) and the counts a
/// summary line needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// At most [`Verdict::MAX_LINES`] lines; `omitted` counts the rest.
    pub anomalies: Vec<String>,
    pub omitted: usize,
    /// Transactions by the status their client saw.
    pub committed: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Unknown ones whose values appear in the final history (so they committed).
    pub unknown_committed: usize,
    pub objects: usize,
    pub revisions: usize,
    pub reads: usize,
    pub checked_reads: usize,
    /// Dependency graph edges between committed transactions.
    pub ww: usize,
    pub wr: usize,
    pub rw: usize,
}

impl Verdict {
    /// Lines kept: a broken run can produce thousands, and the first ones tell the story.
    pub const MAX_LINES: usize = 100;

    pub fn is_ok(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// How many anomalies were found, listed or not.
    pub fn total(&self) -> usize {
        self.anomalies.len() + self.omitted
    }

    fn report(&mut self, line: String) {
        if self.anomalies.len() < Self::MAX_LINES {
            self.anomalies.push(line);
        } else {
            self.omitted += 1;
        }
    }

    fn full(&self) -> bool {
        self.anomalies.len() >= Self::MAX_LINES
    }
}

impl fmt::Display for Verdict {
    /// One summary line, then one line per anomaly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "isolation: {} committed, {} failed, {} unknown ({} committed); {} objects, {} \
             revisions, {} reads ({} checked); edges ww {} wr {} rw {}: ",
            self.committed,
            self.failed,
            self.unknown,
            self.unknown_committed,
            self.objects,
            self.revisions,
            self.reads,
            self.checked_reads,
            self.ww,
            self.wr,
            self.rw,
        )?;
        if self.is_ok() {
            return write!(f, "ok");
        }
        write!(f, "{} anomalies", self.total())?;
        for line in &self.anomalies {
            write!(f, "\n  {line}")?;
        }
        if self.omitted > 0 {
            write!(f, "\n  ... and {} more", self.omitted)?;
        }
        Ok(())
    }
}

/// Judges a run: `txns` as the clients saw them, `finals` every object's revisions as a
/// storage holds them after the run, `tids` every TID in the storages' transaction tables.
/// Linear in the size of the input, plus a bounded search per anti-dependency that goes
/// backwards in TID order (concurrent transactions only).
pub fn check(txns: &[TxnRecord], finals: &FinalHistory, tids: &BTreeSet<Tid>) -> Verdict {
    check_with(txns, finals, tids, &Extras::default())
}

/// `check`, with undos and packs: objects an undo wrote are judged on the replayed model
/// (their values are no longer append-only), and revisions a pack could remove are put
/// back from the model before the other checks (a pack that removed more is reported).
pub fn check_with(
    txns: &[TxnRecord],
    finals: &FinalHistory,
    tids: &BTreeSet<Tid>,
    extras: &Extras,
) -> Verdict {
    let mut v = Verdict::default();
    let model = model::Model::build(txns, finals, extras, &mut v);
    let completed = model.complete(finals);
    let finals = completed.as_ref().unwrap_or(finals);
    let out = checker::Checker::new(txns, finals, tids, extras, &model).run();
    // The model's lines first: they name the cause (an undo, a pack) of what follows.
    let omitted = v.omitted + out.omitted;
    let lines = std::mem::take(&mut v.anomalies);
    v = Verdict {
        anomalies: Vec::new(),
        omitted,
        ..out.clone()
    };
    for line in lines.into_iter().chain(out.anomalies) {
        v.report(line);
    }
    v
}
