//! The checks on the recorded history, in order: who wrote each value; each object's
//! revisions (each extends the previous by one committed transaction's value, at its TID);
//! each transaction's outcome (unknown ones decided by the final history) and commit; each
//! read against its revision and its snapshot; each append against its base (first
//! committer wins) and each checked read against the reader's commit; then the dependency
//! graph's cycles (G0, G1c, G-single, and any cycle through checked reads only).

use std::collections::{BTreeMap, BTreeSet};

use super::graph::{Edge, Graph, Kind, Step};
use super::model::Model;
use super::{Extras, FinalHistory, Read, Status, TxnRecord, Val, Verdict};
use crate::proto::{Oid, Tid};

/// Edges the G-single search may look at in all: it is bounded by TID order in a sane
/// history, and this keeps a broken one from taking minutes.
const SEARCH_BUDGET: usize = 20_000_000;

/// One object's final history, indexed.
struct Obj<'a> {
    /// Revisions ascending by serial.
    revs: Vec<(Tid, &'a [Val])>,
    /// The version order: values in the order they were appended (the last revision).
    order: &'a [Val],
    /// The serial of the revision that added each value of `order`.
    added_at: Vec<Tid>,
    /// Every revision extends the previous one, so `order` and `added_at` can be trusted.
    consistent: bool,
}

impl Obj<'_> {
    fn rev(&self, serial: Tid) -> Option<usize> {
        self.revs.binary_search_by_key(&serial, |r| r.0).ok()
    }

    /// The revision a read at `snapshot` must see: the last one at or before it.
    fn at(&self, snapshot: Option<Tid>) -> Option<usize> {
        let s = snapshot?;
        self.revs.partition_point(|r| r.0 <= s).checked_sub(1)
    }
}

pub(super) struct Checker<'a> {
    txns: &'a [TxnRecord],
    finals: &'a FinalHistory,
    tids: &'a BTreeSet<Tid>,
    v: Verdict,
    /// value -> (index of the transaction that appended it, object it was appended to)
    writer: BTreeMap<Val, (usize, Oid)>,
    /// value -> (object, serial) of its first appearance in the final history
    seen: BTreeMap<Val, (Oid, Tid)>,
    objs: BTreeMap<Oid, Obj<'a>>,
    /// The commit TID of each transaction that committed: acknowledged, or unknown and its
    /// values appear.
    tid_of: Vec<Option<Tid>>,
    /// Per transaction and read: the read is a revision of the final history, so the
    /// graph's edges can be derived from it.
    read_ok: Vec<Vec<bool>>,
    /// TIDs already reported missing from the transaction tables.
    missing: BTreeSet<Tid>,
    extras: &'a Extras,
    /// Undos and packs: objects an undo wrote are judged on it, not on their values.
    model: &'a Model,
}

fn opt(t: Option<Tid>) -> String {
    t.map_or_else(|| "none".to_string(), |t| t.to_string())
}

/// A list, shortened to its last values.
fn show(list: &[Val]) -> String {
    if list.len() <= 4 {
        format!("{list:?}")
    } else {
        let tail: Vec<String> = list[list.len() - 3..]
            .iter()
            .map(|v| v.to_string())
            .collect();
        format!("[.., {}] ({} values)", tail.join(", "), list.len())
    }
}

impl<'a> Checker<'a> {
    pub(super) fn new(
        txns: &'a [TxnRecord],
        finals: &'a FinalHistory,
        tids: &'a BTreeSet<Tid>,
        extras: &'a Extras,
        model: &'a Model,
    ) -> Self {
        Checker {
            txns,
            finals,
            tids,
            v: Verdict::default(),
            writer: BTreeMap::new(),
            seen: BTreeMap::new(),
            objs: BTreeMap::new(),
            tid_of: vec![None; txns.len()],
            read_ok: Vec::with_capacity(txns.len()),
            missing: BTreeSet::new(),
            extras,
            model,
        }
    }

    pub(super) fn run(mut self) -> Verdict {
        for t in self.txns {
            match t.status {
                Status::Committed(_) => self.v.committed += 1,
                Status::Failed => self.v.failed += 1,
                Status::Unknown => self.v.unknown += 1,
            }
        }
        self.index_appends();
        self.index_finals();
        self.decide_outcomes();
        self.check_revisions();
        self.check_commits();
        self.check_reads();
        self.check_bases();
        let g = self.build_graph();
        self.judge_graph(&g);
        self.v
    }

    /// "T7 (client 2, tid 0x..)": a transaction as the anomaly lines name it.
    fn name(&self, i: usize) -> String {
        let t = &self.txns[i];
        let how = match (&t.status, self.tid_of[i]) {
            (Status::Committed(tid), _) => format!("tid {tid}"),
            (Status::Failed, _) => "failed".to_string(),
            (Status::Unknown, Some(tid)) => format!("unknown, committed at {tid}"),
            (Status::Unknown, None) => "unknown, not committed".to_string(),
        };
        format!("T{} (client {}, {how})", t.id, t.client)
    }

    /// The transaction that wrote the value, if it committed (a graph node).
    fn node(&self, val: Val) -> Option<usize> {
        let &(w, _) = self.writer.get(&val)?;
        self.tid_of[w].map(|_| w)
    }

    /// Who wrote revision `k` of an object (the value it added), for anomaly lines.
    fn rev_writer(&self, obj: &Obj, k: usize) -> String {
        // The transaction committed at its serial (an undo's revision holds no value of
        // its own), else the one that appended its last value.
        if let Some(w) = self.tid_of.iter().position(|t| *t == Some(obj.revs[k].0)) {
            return self.name(w);
        }
        match obj.revs[k].1.last().and_then(|v| self.writer.get(v)) {
            Some(&(w, _)) => self.name(w),
            None => "no known transaction".to_string(),
        }
    }

    fn missing_tid(&mut self, tid: Tid, whose: String) {
        if self.missing.insert(tid) {
            self.v.report(format!(
                "lost: {whose}: TID {tid} is missing from the transaction tables"
            ));
        }
    }

    fn index_appends(&mut self) {
        for (i, t) in self.txns.iter().enumerate() {
            let mut oids = BTreeSet::new();
            for &(oid, val) in &t.appends {
                if !oids.insert(oid) {
                    self.v.report(format!(
                        "workload: T{} (client {}) appends twice to {oid:?}",
                        t.id, t.client
                    ));
                }
                if let Some(&(j, _)) = self.writer.get(&val) {
                    let u = &self.txns[j];
                    self.v.report(format!(
                        "workload: value {val} appended by both T{} and T{}",
                        u.id, t.id
                    ));
                } else {
                    self.writer.insert(val, (i, oid));
                }
            }
        }
    }

    fn index_finals(&mut self) {
        for (&oid, revs) in self.finals {
            self.v.objects += 1;
            self.v.revisions += revs.len();
            let mut sorted: Vec<(Tid, &[Val])> =
                revs.iter().map(|(s, l)| (*s, l.as_slice())).collect();
            let mut consistent = true;
            if self.model.touched.contains(&oid) {
                // Not append-only: judged on the model (values, order, bases, edges).
                sorted.sort_by_key(|r| r.0);
                for &(s, list) in &sorted {
                    for &val in list {
                        self.seen.entry(val).or_insert((oid, s));
                    }
                }
                self.objs.insert(
                    oid,
                    Obj {
                        revs: sorted,
                        order: &[],
                        added_at: Vec::new(),
                        consistent: false,
                    },
                );
                continue;
            }
            if !sorted.windows(2).all(|w| w[0].0 < w[1].0) {
                self.v.report(format!(
                    "{oid:?}: revisions not strictly ascending by serial (or one serial twice)"
                ));
                sorted.sort_by_key(|r| r.0);
                consistent = false;
            }
            let mut added_at = Vec::new();
            let mut prev: (Option<Tid>, &[Val]) = (None, &[]);
            for (k, &(s, list)) in sorted.iter().enumerate() {
                if consistent && !list.starts_with(prev.1) {
                    self.v.report(format!(
                        "{oid:?}: the revision at {s} ({}) does not extend the one at {} ({}): \
                         values lost or reordered",
                        show(list),
                        opt(prev.0),
                        show(prev.1)
                    ));
                    consistent = false;
                }
                if consistent {
                    let delta = &list[prev.1.len()..];
                    if delta.len() != 1 && !(k == 0 && delta.is_empty()) {
                        self.v.report(format!(
                            "{oid:?}: the revision at {s} adds {} values ({}), not one \
                             transaction's append",
                            delta.len(),
                            show(delta)
                        ));
                    }
                    for &val in delta {
                        if let Some(&(o, s0)) = self.seen.get(&val) {
                            self.v.report(format!(
                                "{oid:?}: value {val} at {s} was already in {o:?} at {s0}"
                            ));
                            consistent = false;
                        } else {
                            self.seen.insert(val, (oid, s));
                        }
                    }
                    added_at.extend(std::iter::repeat_n(s, delta.len()));
                } else {
                    // Only where something is already reported: first appearances still
                    // tell unknown outcomes and lost values apart.
                    for &val in list {
                        self.seen.entry(val).or_insert((oid, s));
                    }
                }
                prev = (Some(s), list);
            }
            let order = prev.1;
            self.objs.insert(
                oid,
                Obj {
                    revs: sorted,
                    order,
                    added_at,
                    consistent,
                },
            );
        }
    }

    /// An unknown transaction committed iff the transaction tables name it, or else iff
    /// its values appear, all at one serial.
    fn decide_outcomes(&mut self) {
        let named: BTreeMap<usize, Tid> = self
            .extras
            .named
            .iter()
            .flatten()
            .map(|(&tid, &id)| (id, tid))
            .collect();
        for (i, t) in self.txns.iter().enumerate() {
            self.tid_of[i] = match t.status {
                Status::Committed(tid) => Some(tid),
                Status::Failed => None,
                Status::Unknown if named.contains_key(&t.id) => {
                    let tid = named[&t.id];
                    self.v.unknown_committed += 1;
                    for &(oid, val) in &t.appends {
                        let at = self.seen.get(&val).filter(|(o, _)| *o == oid).map(|x| x.1);
                        if at != Some(tid) {
                            self.v.report(format!(
                                "not atomic: T{} (client {}, unknown) committed at {tid}, but \
                                 its value {val} first appears in {oid:?} at {}",
                                t.id,
                                t.client,
                                opt(at)
                            ));
                        }
                    }
                    Some(tid)
                }
                Status::Unknown => {
                    let found: Vec<Option<Tid>> = t
                        .appends
                        .iter()
                        .map(|(oid, val)| {
                            self.seen
                                .get(val)
                                .filter(|(o, _)| o == oid)
                                .map(|&(_, s)| s)
                        })
                        .collect();
                    let serials: BTreeSet<Tid> = found.iter().flatten().copied().collect();
                    let first = serials.first().copied();
                    if first.is_some() {
                        self.v.unknown_committed += 1;
                        if serials.len() > 1 || found.contains(&None) {
                            let parts: Vec<String> = t
                                .appends
                                .iter()
                                .zip(&found)
                                .map(|((oid, val), s)| format!("{val} to {oid:?} at {}", opt(*s)))
                                .collect();
                            self.v.report(format!(
                                "not atomic: T{} (client {}, unknown) committed only partly \
                                 or at several serials: {}",
                                t.id,
                                t.client,
                                parts.join(", ")
                            ));
                        }
                    }
                    first
                }
            };
        }
    }

    /// Each value in the final history was appended, to that object, by a transaction that
    /// did not fail; each revision's serial is in the transaction tables.
    fn check_revisions(&mut self) {
        let objs = std::mem::take(&mut self.objs);
        for (&oid, obj) in &objs {
            for &(s, _) in &obj.revs {
                if !self.tids.contains(&s) {
                    self.missing_tid(s, format!("{oid:?}'s revision at {s}"));
                }
            }
            if !obj.consistent {
                continue;
            }
            for (&val, &s) in obj.order.iter().zip(&obj.added_at) {
                match self.writer.get(&val) {
                    None => self.v.report(format!(
                        "garbage: {oid:?} holds value {val} at {s}, appended by no transaction"
                    )),
                    Some(&(w, woid)) if woid != oid => self.v.report(format!(
                        "garbage: {oid:?} holds value {val} at {s}, which {} appended to {woid:?}",
                        self.name(w)
                    )),
                    Some(&(w, _)) if self.txns[w].status == Status::Failed => {
                        self.v.report(format!(
                            "G1a (aborted write visible): {} failed, yet its value {val} is in \
                             {oid:?} at {s}",
                            self.name(w)
                        ))
                    }
                    // Serials of committed ones: check_commits and decide_outcomes.
                    Some(_) => {}
                }
            }
        }
        self.objs = objs;
    }

    /// Each committed transaction: its own TID, above its snapshot, in the transaction
    /// tables; an acknowledged one's values all first appear at its TID. And no TID in the
    /// tables that no transaction can account for.
    fn check_commits(&mut self) {
        let mut by_tid: BTreeMap<Tid, usize> = BTreeMap::new();
        for (i, t) in self.txns.iter().enumerate() {
            let Some(tid) = self.tid_of[i] else { continue };
            if let Some(&j) = by_tid.get(&tid) {
                self.v
                    .report(format!("{} and {} share a TID", self.name(j), self.name(i)));
            } else {
                by_tid.insert(tid, i);
            }
            if let Some(s) = t.snapshot.filter(|&s| s >= tid) {
                self.v
                    .report(format!("{}: TID not above its snapshot {s}", self.name(i)));
            }
            if !matches!(t.status, Status::Committed(_)) {
                continue;
            }
            for &(oid, val) in &t.appends {
                match self.seen.get(&val) {
                    None => self.v.report(format!(
                        "lost: {} was acknowledged, but its value {val} is in no revision of \
                         {oid:?}",
                        self.name(i)
                    )),
                    Some(&(o, s)) if o == oid && s != tid => self.v.report(format!(
                        "{}: its value {val} first appears in {oid:?} at {s}, not at its TID",
                        self.name(i)
                    )),
                    // In another object: reported as garbage there.
                    Some(_) => {}
                }
            }
            if !self.tids.contains(&tid) {
                self.missing_tid(tid, self.name(i));
            }
        }
        let orphans: Vec<Tid> = self
            .tids
            .iter()
            .copied()
            .filter(|t| !by_tid.contains_key(t))
            .collect();
        // An unknown transaction that appended nothing (readCurrent only) may have committed
        // without a trace in any object.
        let undecided = self
            .txns
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                t.status == Status::Unknown && self.tid_of[*i].is_none() && t.appends.is_empty()
            })
            .count();
        if orphans.len() > undecided {
            let few: Vec<String> = orphans.iter().take(5).map(|t| t.to_string()).collect();
            self.v.report(format!(
                "{} TIDs in the transaction tables belong to no committed transaction (only \
                 {undecided} undecided read-only ones could): {}{}",
                orphans.len(),
                few.join(", "),
                if orphans.len() > 5 { ", .." } else { "" }
            ));
        }
    }

    fn check_reads(&mut self) {
        // Out of self while reads are judged, which reports through self.
        let objs = std::mem::take(&mut self.objs);
        for (i, t) in self.txns.iter().enumerate() {
            let mut oks = Vec::with_capacity(t.reads.len());
            for r in &t.reads {
                self.v.reads += 1;
                self.v.checked_reads += usize::from(r.checked);
                oks.push(self.check_read(i, r, &objs));
            }
            self.read_ok.push(oks);
        }
        self.objs = objs;
    }

    /// One read: exactly a revision of the final history (so only committed values: the
    /// revisions' values are checked once, in check_revisions), the one its snapshot
    /// selects. True if it is a revision (its edges can be derived).
    fn check_read(&mut self, i: usize, r: &Read, objs: &BTreeMap<Oid, Obj>) -> bool {
        let t = &self.txns[i];
        let Some(obj) = objs.get(&r.oid) else {
            if r.serial.is_none() && r.list.is_empty() {
                return true;
            }
            if !self.check_read_values(i, r) {
                self.v.report(format!(
                    "{} read {:?} at {} as {}, but the final history has no such object",
                    self.name(i),
                    r.oid,
                    opt(r.serial),
                    show(&r.list)
                ));
            }
            return false;
        };
        let found = match r.serial {
            None => r.list.is_empty().then_some(None),
            Some(s) => obj
                .rev(s)
                .filter(|&k| obj.revs[k].1 == r.list.as_slice())
                .map(Some),
        };
        let got = match found {
            Some(got) if obj.consistent => got,
            _ if self.check_read_values(i, r) => return false,
            Some(got) => got,
            None => {
                let line = match r.serial.map(|s| (s, obj.rev(s))) {
                    None => format!(
                        "{} read {:?} as {} without a serial",
                        self.name(i),
                        r.oid,
                        show(&r.list)
                    ),
                    Some((s, None)) => format!(
                        "{} read {:?} at {s} as {}, a revision the final history does not hold",
                        self.name(i),
                        r.oid,
                        show(&r.list)
                    ),
                    Some((s, Some(k))) => format!(
                        "G1b (inconsistent read): {} read {:?} at {s} as {}, but that revision \
                         holds {}",
                        self.name(i),
                        r.oid,
                        show(&r.list),
                        show(obj.revs[k].1)
                    ),
                };
                self.v.report(line);
                return false;
            }
        };
        let mut want = obj.at(t.snapshot);
        // A deletion (an undone creation) reads as absent.
        if got.is_none() && want.is_some_and(|k| obj.revs[k].1.is_empty()) {
            want = None;
        }
        if want != got {
            let future = match (got, t.snapshot) {
                (Some(k), Some(snap)) => obj.revs[k].0 > snap,
                (Some(_), None) => true,
                (None, _) => false,
            };
            let line = if future {
                let k = got.unwrap_or_default();
                format!(
                    "future read: {} (snapshot {}) read {:?} at {}, committed after its \
                     snapshot by {}",
                    self.name(i),
                    opt(t.snapshot),
                    r.oid,
                    obj.revs[k].0,
                    self.rev_writer(obj, k)
                )
            } else {
                // The first revision it missed is at or before its snapshot.
                let missed = got.map_or(0, |k| k + 1);
                format!(
                    "stale read: {} (snapshot {}) read {:?} at {} but missed the revision at \
                     {} by {}",
                    self.name(i),
                    opt(t.snapshot),
                    r.oid,
                    opt(r.serial),
                    obj.revs[missed].0,
                    self.rev_writer(obj, missed)
                )
            };
            self.v.report(line);
        }
        true
    }

    /// Values a read should not hold: of failed transactions (G1a), never committed
    /// (G1b). True if it reported any.
    fn check_read_values(&mut self, i: usize, r: &Read) -> bool {
        let mut aborted = Vec::new();
        let mut uncommitted = Vec::new();
        for &val in &r.list {
            match self.writer.get(&val) {
                None => uncommitted.push(format!("{val} (appended by no transaction)")),
                Some(&(w, _)) if self.txns[w].status == Status::Failed => {
                    aborted.push(format!("{val} of {}", self.name(w)))
                }
                Some(&(w, _)) if self.tid_of[w].is_none() => {
                    uncommitted.push(format!("{val} of {}", self.name(w)))
                }
                Some(_) => {}
            }
        }
        if !aborted.is_empty() {
            self.v.report(format!(
                "G1a (aborted read): {} read {:?} at {} holding {}",
                self.name(i),
                r.oid,
                opt(r.serial),
                aborted.join(", ")
            ));
        }
        if !uncommitted.is_empty() {
            self.v.report(format!(
                "G1b (read of data never committed): {} read {:?} at {} holding {}",
                self.name(i),
                r.oid,
                opt(r.serial),
                uncommitted.join(", ")
            ));
        }
        !aborted.is_empty() || !uncommitted.is_empty()
    }

    /// First committer wins: each committed append is based on the revision its
    /// transaction read (or, if it read none, one in its snapshot) unless resolved; each
    /// checked read is still current when its transaction commits.
    fn check_bases(&mut self) {
        for (i, t) in self.txns.iter().enumerate() {
            let Some(tid) = self.tid_of[i] else { continue };
            for &(oid, val) in &t.appends {
                let Some(obj) = self.objs.get(&oid).filter(|o| o.consistent) else {
                    continue;
                };
                // Lost or misplaced values are reported already.
                let Some(k) = obj.rev(tid).filter(|&k| obj.revs[k].1.last() == Some(&val)) else {
                    continue;
                };
                if t.resolved.contains(&oid) {
                    continue;
                }
                let prev = k.checked_sub(1);
                let prev_serial = prev.map(|p| obj.revs[p].0);
                let prev_writer = || prev.map_or("nobody".to_string(), |p| self.rev_writer(obj, p));
                match t.reads.iter().position(|r| r.oid == oid) {
                    Some(ri) if self.read_ok[i][ri] => {
                        let r = &t.reads[ri];
                        if prev_serial != r.serial {
                            let line = format!(
                                "lost update (first committer wins): {} appended {val} to {oid:?} \
                                 based on its read at {}, but its revision follows the one at {} \
                                 by {}",
                                self.name(i),
                                opt(r.serial),
                                opt(prev_serial),
                                prev_writer()
                            );
                            self.v.report(line);
                        }
                    }
                    Some(_) => {}
                    None => {
                        let after = match (prev_serial, t.snapshot) {
                            (Some(p), Some(snap)) => p > snap,
                            (Some(_), None) => true,
                            (None, _) => false,
                        };
                        if after {
                            let line = format!(
                                "first committer wins: {} (snapshot {}) appended {val} to \
                                 {oid:?} over the revision at {} by {}, committed after its \
                                 snapshot",
                                self.name(i),
                                opt(t.snapshot),
                                opt(prev_serial),
                                prev_writer()
                            );
                            self.v.report(line);
                        }
                    }
                }
            }
            for (ri, r) in t.reads.iter().enumerate() {
                if !r.checked || !self.read_ok[i][ri] || t.appends.iter().any(|a| a.0 == r.oid) {
                    continue;
                }
                let Some(obj) = self.objs.get(&r.oid).filter(|o| o.consistent) else {
                    continue;
                };
                let next = r.list.len();
                let Some(&s_next) = obj.added_at.get(next) else {
                    continue;
                };
                if s_next < tid {
                    let w = self.writer.get(&obj.order[next]).map(|&(w, _)| w);
                    let line = format!(
                        "readCurrent not enforced: {} checked {:?} at {}, but {} committed it \
                         at {s_next}, before it",
                        self.name(i),
                        r.oid,
                        opt(r.serial),
                        w.map_or("no known transaction".to_string(), |w| self.name(w))
                    );
                    self.v.report(line);
                }
            }
        }
    }

    /// Edges between committed transactions, derived from the data: ww from each object's
    /// version order, wr from the last value each read saw to the reader, rw from the
    /// reader to the writer of the version after what it saw.
    fn build_graph(&mut self) -> Graph {
        let mut g = Graph::new(self.txns.len());
        for (&oid, obj) in &self.objs {
            if !obj.consistent {
                continue;
            }
            for pair in obj.order.windows(2) {
                let (Some(a), Some(b)) = (self.node(pair[0]), self.node(pair[1])) else {
                    continue;
                };
                if a != b {
                    let into_resolved = self.txns[b].resolved.contains(&oid);
                    g.add(
                        a,
                        Edge {
                            to: b,
                            kind: Kind::Ww,
                            oid,
                            into_resolved,
                            checked: false,
                        },
                    );
                }
            }
        }
        self.model_edges(&mut g);
        for (i, t) in self.txns.iter().enumerate() {
            if self.tid_of[i].is_none() {
                continue;
            }
            for (ri, r) in t.reads.iter().enumerate() {
                let Some(obj) = self.objs.get(&r.oid).filter(|o| o.consistent) else {
                    continue;
                };
                if !self.read_ok[i][ri] {
                    continue;
                }
                let len = r.list.len();
                let edge = |to, kind, checked| Edge {
                    to,
                    kind,
                    oid: r.oid,
                    into_resolved: false,
                    checked,
                };
                if let Some(w) = len.checked_sub(1).and_then(|p| self.node(obj.order[p])) {
                    if w != i {
                        g.add(w, edge(i, Kind::Wr, false));
                    }
                }
                // A resolved append's read is not its base: no anti-dependency from it.
                if t.resolved.contains(&r.oid) {
                    continue;
                }
                if let Some(b) = obj.order.get(len).and_then(|&v| self.node(v)) {
                    if b != i {
                        let checked = r.checked || t.appends.iter().any(|a| a.0 == r.oid);
                        g.add(i, edge(b, Kind::Rw, checked));
                    }
                }
            }
        }
        g
    }

    /// The edges of objects an undo wrote, from the model's revisions (their version
    /// order): ww between successive writers, wr from the writer of the revision read, rw
    /// to the writer of the one after it.
    fn model_edges(&self, g: &mut Graph) {
        for oid in &self.model.touched {
            let Some(revs) = self.model.objs.get(oid) else {
                continue;
            };
            for pair in revs.windows(2) {
                let (a, b) = (pair[0].writer, pair[1].writer);
                if a != b && self.tid_of[a].is_some() && self.tid_of[b].is_some() {
                    let into_resolved = self.txns[b].resolved.contains(oid);
                    g.add(
                        a,
                        Edge {
                            to: b,
                            kind: Kind::Ww,
                            oid: *oid,
                            into_resolved,
                            checked: false,
                        },
                    );
                }
            }
        }
        for (i, t) in self.txns.iter().enumerate() {
            if self.tid_of[i].is_none() {
                continue;
            }
            for (ri, r) in t.reads.iter().enumerate() {
                if !self.model.touched.contains(&r.oid) || !self.read_ok[i][ri] {
                    continue;
                }
                let Some(revs) = self.model.objs.get(&r.oid) else {
                    continue;
                };
                // The revision read: by serial (absent: before the first, or a deletion).
                let k = match r.serial {
                    Some(s) => revs.iter().position(|x| x.serial == s),
                    None => None,
                };
                let edge = |to, kind, checked| Edge {
                    to,
                    kind,
                    oid: r.oid,
                    into_resolved: false,
                    checked,
                };
                if let Some(w) = k.map(|k| revs[k].writer).filter(|&w| w != i) {
                    if self.tid_of[w].is_some() {
                        g.add(w, edge(i, Kind::Wr, false));
                    }
                }
                if t.resolved.contains(&r.oid) {
                    continue;
                }
                let next = match (k, r.serial) {
                    (Some(k), _) => revs.get(k + 1),
                    (None, None) => t
                        .snapshot
                        .and_then(|s| revs.iter().find(|x| x.serial > s))
                        .or(if t.snapshot.is_none() {
                            revs.first()
                        } else {
                            None
                        }),
                    (None, Some(_)) => None,
                };
                if let Some(b) = next.map(|n| n.writer).filter(|&b| b != i) {
                    if self.tid_of[b].is_some() {
                        let checked = r.checked || t.appends.iter().any(|a| a.0 == r.oid);
                        g.add(i, edge(b, Kind::Rw, checked));
                    }
                }
            }
        }
    }

    fn tid(&self, i: usize) -> Tid {
        self.tid_of[i].unwrap_or_default()
    }

    fn show_cycle(&self, cycle: &[Step]) -> String {
        let mut s = String::new();
        for (k, (from, e)) in cycle.iter().enumerate() {
            if k == 0 {
                s.push_str(&self.name(*from));
            }
            s.push_str(&format!(" -{}({:?})-> ", e.kind, e.oid));
            if k + 1 == cycle.len() {
                s.push_str(&format!("T{}", self.txns[e.to].id));
            } else {
                s.push_str(&self.name(e.to));
            }
        }
        s
    }

    fn judge_graph(&mut self, g: &Graph) {
        // Whether every ww and wr edge goes forward in TID order, and whether its source
        // is even in the target's snapshot (not so for a ww edge into a resolved append).
        let mut forward = true;
        let mut in_snapshot = true;
        for (a, e) in g.edges() {
            match e.kind {
                Kind::Ww => self.v.ww += 1,
                Kind::Wr => self.v.wr += 1,
                Kind::Rw => self.v.rw += 1,
            }
            if e.kind == Kind::Rw {
                continue;
            }
            if self.tid(a) >= self.tid(e.to) {
                forward = false;
                let line = format!(
                    "{} edge against TID order: {}",
                    e.kind,
                    self.show_cycle(&[(a, e)])
                );
                self.v.report(line);
            }
            if !e.into_resolved && self.txns[e.to].snapshot.is_none_or(|s| self.tid(a) > s) {
                in_snapshot = false;
            }
        }
        let ww = |e: &Edge| e.kind == Kind::Ww;
        for scc in g.sccs(ww) {
            if let Some(c) = g.cycle_in(&scc, ww) {
                let line = format!("G0 (write cycle): {}", self.show_cycle(&c));
                self.v.report(line);
            }
        }
        let ww_wr = |e: &Edge| e.kind != Kind::Rw;
        for scc in g.sccs(ww_wr) {
            if let Some(c) = g
                .cycle_in(&scc, ww_wr)
                .filter(|c| c.iter().any(|s| s.1.kind == Kind::Wr))
            {
                let line = format!("G1c (circular information flow): {}", self.show_cycle(&c));
                self.v.report(line);
            }
        }
        // G-single: an rw edge a -> b closed by ww/wr edges from b back to a (ww edges into
        // resolved appends left out). Those edges follow TIDs in a sane history, and each
        // source is in its target's snapshot: then every transaction on the way back to a
        // committed at or before a's snapshot, which b (whose version a did not see) did
        // only if a's read was stale. So a sane history costs no search at all, and a
        // broken one a search among few transactions (or within a budget).
        let mut budget = SEARCH_BUDGET;
        let rws: Vec<Step> = g.edges().filter(|(_, e)| e.kind == Kind::Rw).collect();
        for (a, e) in rws {
            if self.v.full() {
                break;
            }
            let ta = self.tid(a);
            let bound = match (forward, in_snapshot) {
                (true, true) => self.txns[a].snapshot,
                (true, false) => Some(ta),
                (false, _) => Some(Tid::INVALID),
            };
            let Some(bound) = bound.filter(|&b| self.tid(e.to) <= b) else {
                continue;
            };
            let keep = |e: &Edge| e.kind != Kind::Rw && !e.into_resolved;
            let allow = |x: usize| self.tid(x) <= bound;
            if let Some(path) = g.path(e.to, a, keep, allow, &mut budget) {
                let mut cycle = vec![(a, e)];
                cycle.extend(path);
                let line = format!(
                    "G-single (one anti-dependency): {}",
                    self.show_cycle(&cycle)
                );
                self.v.report(line);
            }
            if budget == 0 {
                self.v
                    .report("G-single search stopped: step budget exhausted".to_string());
                break;
            }
        }
        // Checked reads: with ww and wr, the rw edges leaving them must stay acyclic.
        let checked = |e: &Edge| e.kind != Kind::Rw || e.checked;
        for scc in g.sccs(checked) {
            if let Some(c) = g.cycle_in(&scc, checked) {
                let line = format!(
                    "not serializable (cycle through checked reads): {}",
                    self.show_cycle(&c)
                );
                self.v.report(line);
            }
        }
    }
}
