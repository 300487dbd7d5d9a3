//! Undo and pack in the checked history: every object's revisions replayed from the
//! committed transactions in TID order, and the final history judged against them.
//!
//! An append writes the previous list plus its value; an undo of D writes, on each object
//! D wrote, the list as it was just before D's revision (none, a deletion, if D created
//! it). So an undo is a transaction like any other: it must be based on the revision
//! current when it commits (first committer wins: the serial its lookup answered as
//! current), and that revision must still hold D's data (else the undo drops what came
//! after D: the lookup's `is_current` was wrong). Objects an undo wrote are no longer
//! append-only, so they are judged here, revision by revision, and not by the value
//! checks of `checker` (which still judges their reads against the revisions).
//!
//! Pack at p may remove, per object, every revision older than the newest one at or
//! before p (and that one too if it is a deletion); anything else missing is reported.
//! The revisions a pack could remove are put back from the model before the other checks,
//! so that reads taken before the pack are still judged.
//!
//! The model is built only when the run has undos or packs; it takes outcomes from the
//! clients (committed) and from the transaction tables' descriptions (unknown ones).

use std::collections::{BTreeMap, BTreeSet};

use super::{FinalHistory, Status, TxnRecord, Val, Verdict};
use crate::proto::{Oid, Tid};

/// One revision the model expects: its serial, list (empty: a deletion) and writer.
#[derive(Clone, Debug)]
pub(super) struct Rev {
    pub serial: Tid,
    pub list: Vec<Val>,
    pub writer: usize,
}

#[derive(Default)]
pub(super) struct Model {
    /// Objects' expected revisions, ascending by serial (empty if not built).
    pub objs: BTreeMap<Oid, Vec<Rev>>,
    /// Objects some committed undo wrote.
    pub touched: BTreeSet<Oid>,
    /// The highest TID a pack was asked at.
    pub pack: Option<Tid>,
    active: bool,
}

fn show(list: &[Val]) -> String {
    if list.is_empty() {
        return "deleted".to_string();
    }
    if list.len() <= 4 {
        format!("{list:?}")
    } else {
        format!("[.., {}] ({} values)", list[list.len() - 1], list.len())
    }
}

impl Model {
    /// Replays the committed transactions; reports what an undo did wrong and what the
    /// final history lacks or holds wrongly.
    pub fn build(
        txns: &[TxnRecord],
        finals: &FinalHistory,
        extras: &super::Extras,
        v: &mut Verdict,
    ) -> Model {
        let mut m = Model {
            pack: extras.packs.iter().max().copied(),
            ..Model::default()
        };
        m.active = m.pack.is_some() || txns.iter().any(|t| t.undo.is_some());
        if !m.active {
            return m;
        }
        let by_id: BTreeMap<usize, Tid> = extras
            .named
            .iter()
            .flatten()
            .map(|(&tid, &id)| (id, tid))
            .collect();
        let tid_of: Vec<Option<Tid>> = txns
            .iter()
            .map(|t| match t.status {
                Status::Committed(tid) => Some(tid),
                Status::Failed => None,
                Status::Unknown => by_id.get(&t.id).copied(),
            })
            .collect();
        let name = |i: usize| {
            let t = &txns[i];
            format!(
                "T{} (client {}, {})",
                t.id,
                t.client,
                tid_of[i].unwrap_or_default()
            )
        };
        let mut order: Vec<(Tid, usize)> = tid_of
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (t, i)))
            .collect();
        order.sort_unstable();
        let by_tid: BTreeMap<Tid, usize> = order.iter().copied().collect();
        for &(tid, i) in &order {
            let t = &txns[i];
            for &(oid, val) in &t.appends {
                let revs = m.objs.entry(oid).or_default();
                let mut list = revs.last().map(|r| r.list.clone()).unwrap_or_default();
                list.push(val);
                revs.push(Rev {
                    serial: tid,
                    list,
                    writer: i,
                });
            }
            let Some(u) = &t.undo else { continue };
            let Some(&d) = by_tid.get(&u.undone) else {
                v.report(format!(
                    "undo: {} undid {}, which no committed transaction holds",
                    name(i),
                    u.undone
                ));
                continue;
            };
            let wrote: BTreeSet<Oid> = m
                .objs
                .iter()
                .filter(|(_, revs)| revs.iter().any(|r| r.serial == u.undone))
                .map(|(o, _)| *o)
                .collect();
            let asked: BTreeSet<Oid> = u.entries.iter().map(|e| e.0).collect();
            if wrote != asked {
                v.report(format!(
                    "undo: {} undid {}, which wrote {wrote:?}, but its lookup answered {asked:?}",
                    name(i),
                    name(d)
                ));
            }
            for (oid, us) in &u.entries {
                let revs = m.objs.entry(*oid).or_default();
                let Some(k) = revs.iter().position(|r| r.serial == u.undone) else {
                    continue;
                };
                let before = k.checked_sub(1).map(|p| revs[p].list.clone());
                let last = revs.last().expect("holds the undone revision");
                if last.serial != us.current {
                    v.report(format!(
                        "first committer wins (undo): {} undid {} on {oid:?} based on {}, but \
                         the revision before its own is at {} by {}",
                        name(i),
                        name(d),
                        us.current,
                        last.serial,
                        name(last.writer)
                    ));
                }
                if last.list != revs[k].list {
                    v.report(format!(
                        "undo over changed data: {} undid {} on {oid:?} (which wrote {}) \
                         over {} at {} by {}: what came after it is lost",
                        name(i),
                        name(d),
                        show(&revs[k].list),
                        show(&last.list),
                        last.serial,
                        name(last.writer)
                    ));
                }
                revs.push(Rev {
                    serial: tid,
                    list: before.unwrap_or_default(),
                    writer: i,
                });
                m.touched.insert(*oid);
            }
        }
        m.check_bases(txns, &tid_of, v, &name);
        m.compare(finals, v, &name);
        m
    }

    /// Whether revision `j` of `revs` may be gone after the packs asked.
    fn packable(&self, revs: &[Rev], j: usize) -> bool {
        let Some(p) = self.pack else { return false };
        let Some(k) = revs.partition_point(|r| r.serial <= p).checked_sub(1) else {
            return false;
        };
        j < k || (j == k && revs[k].list.is_empty())
    }

    /// First committer wins on objects an undo wrote (the value checks skip them): each
    /// append follows the revision it read (unless resolved), each checked read is still
    /// current when its reader commits.
    fn check_bases(
        &self,
        txns: &[TxnRecord],
        tid_of: &[Option<Tid>],
        v: &mut Verdict,
        name: &dyn Fn(usize) -> String,
    ) {
        for (i, t) in txns.iter().enumerate() {
            let Some(tid) = tid_of[i] else { continue };
            for r in &t.reads {
                let Some(revs) = self
                    .objs
                    .get(&r.oid)
                    .filter(|_| self.touched.contains(&r.oid))
                else {
                    continue;
                };
                let appended = t.appends.iter().any(|a| a.0 == r.oid);
                if appended && !t.resolved.contains(&r.oid) {
                    let k = revs.iter().position(|x| x.serial == tid);
                    let prev = k.and_then(|k| k.checked_sub(1)).map(|p| &revs[p]);
                    // A deletion read as absent is the same base.
                    let same = match (prev, r.serial) {
                        (None, None) => true,
                        (Some(p), Some(s)) => p.serial == s,
                        (Some(p), None) => p.list.is_empty(),
                        (None, Some(_)) => false,
                    };
                    if k.is_some() && !same {
                        v.report(format!(
                            "lost update (first committer wins): {} appended to {:?} based on \
                             its read at {:?}, but its revision follows the one at {:?}",
                            name(i),
                            r.oid,
                            r.serial,
                            prev.map(|p| p.serial)
                        ));
                    }
                }
                if r.checked && !appended {
                    let next = match r.serial {
                        Some(s) => revs.iter().find(|x| x.serial > s),
                        None => revs.first(),
                    };
                    if let Some(n) = next.filter(|n| n.serial < tid) {
                        v.report(format!(
                            "readCurrent not enforced: {} checked {:?} at {:?}, but {} \
                             committed it at {}, before it",
                            name(i),
                            r.oid,
                            r.serial,
                            name(n.writer),
                            n.serial
                        ));
                    }
                }
            }
        }
    }

    /// The final history against the model: every expected revision present unless a
    /// pack may have removed it; on objects an undo wrote, every final revision expected,
    /// with the expected list.
    fn compare(&self, finals: &FinalHistory, v: &mut Verdict, name: &dyn Fn(usize) -> String) {
        let empty = Vec::new();
        for (oid, revs) in &self.objs {
            let fin = finals.get(oid).unwrap_or(&empty);
            let touched = self.touched.contains(oid);
            for (j, r) in revs.iter().enumerate() {
                if fin.iter().any(|f| f.0 == r.serial) || self.packable(revs, j) {
                    continue;
                }
                if let Some(p) = self.pack {
                    v.report(format!(
                        "pack removed too much: {oid:?}'s revision at {} ({}) by {} is gone, \
                         but no pack up to {p} may remove it",
                        r.serial,
                        show(&r.list),
                        name(r.writer)
                    ));
                } else if touched {
                    v.report(format!(
                        "lost: {oid:?}'s revision at {} ({}) by {} is gone",
                        r.serial,
                        show(&r.list),
                        name(r.writer)
                    ));
                }
            }
            if !touched {
                continue;
            }
            for (s, list) in fin {
                match revs.iter().find(|r| r.serial == *s) {
                    None => v.report(format!(
                        "{oid:?} holds a revision at {s} ({}) that no committed transaction wrote",
                        show(list)
                    )),
                    Some(r) if r.list != *list => v.report(format!(
                        "{oid:?}'s revision at {s} holds {}, but {} wrote {}",
                        show(list),
                        name(r.writer),
                        show(&r.list)
                    )),
                    Some(_) => {}
                }
            }
        }
    }

    /// The final history with the revisions a pack removed put back (None: unchanged).
    pub fn complete(&self, finals: &FinalHistory) -> Option<FinalHistory> {
        self.pack?;
        let mut out = finals.clone();
        for (oid, revs) in &self.objs {
            let fin = out.get(oid);
            let back: Vec<(Tid, Vec<Val>)> = revs
                .iter()
                .enumerate()
                .filter(|&(j, r)| {
                    self.packable(revs, j)
                        && !fin.is_some_and(|f| f.iter().any(|f| f.0 == r.serial))
                })
                .map(|(_, r)| (r.serial, r.list.clone()))
                .collect();
            if !back.is_empty() {
                let fin = out.entry(*oid).or_default();
                fin.extend(back);
                fin.sort_by_key(|f| f.0);
            }
        }
        Some(out)
    }
}
