//! Hand-built histories, one per anomaly (each must be reported) and valid ones that must
//! pass; generated snapshot-isolation executions that must pass, and one-read mutations of
//! them that must be caught.

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::proto::UndoSerial;
use crate::rng::{self, ChaCha8Rng};

/// A history under construction: the final revisions as a correct storage holds them, the
/// transaction tables, and the clients' records.
#[derive(Default)]
struct Db {
    finals: FinalHistory,
    tids: BTreeSet<Tid>,
    txns: Vec<TxnRecord>,
    extras: Extras,
}

impl Db {
    /// The read of `oid` at `snapshot` a correct storage answers.
    fn read(&self, oid: u64, snapshot: Option<u64>, checked: bool) -> Read {
        let rev = snapshot.and_then(|s| {
            self.finals
                .get(&Oid(oid))?
                .iter()
                .rev()
                .find(|r| r.0 .0 <= s)
        });
        Read {
            oid: Oid(oid),
            list: rev.map(|r| r.1.clone()).unwrap_or_default(),
            serial: rev.map(|r| r.0),
            checked,
        }
    }

    /// Appends each value to the latest revision of its object, as a commit at `tid`.
    fn install(&mut self, tid: u64, appends: &[(u64, Val)]) {
        for &(oid, val) in appends {
            let revs = self.finals.entry(Oid(oid)).or_default();
            let mut list = revs.last().map(|r| r.1.clone()).unwrap_or_default();
            list.push(val);
            revs.push((Tid(tid), list));
        }
        self.tids.insert(Tid(tid));
    }

    fn record(
        &mut self,
        client: usize,
        snapshot: Option<u64>,
        reads: Vec<Read>,
        appends: &[(u64, Val)],
        status: Status,
    ) -> usize {
        let id = self.txns.len();
        self.txns.push(TxnRecord {
            id,
            client,
            snapshot: snapshot.map(Tid),
            reads,
            appends: appends.iter().map(|&(o, v)| (Oid(o), v)).collect(),
            resolved: Vec::new(),
            undo: None,
            status,
            begun: Duration::from_millis(id as u64),
            ended: None,
        });
        id
    }

    /// Reads `reads` (oid, checked) at `snapshot`, then commits `appends` at `tid`.
    fn commit(
        &mut self,
        client: usize,
        snapshot: Option<u64>,
        reads: &[(u64, bool)],
        appends: &[(u64, Val)],
        tid: u64,
    ) -> usize {
        let reads = reads
            .iter()
            .map(|&(o, c)| self.read(o, snapshot, c))
            .collect();
        self.install(tid, appends);
        self.record(
            client,
            snapshot,
            reads,
            appends,
            Status::Committed(Tid(tid)),
        )
    }

    fn check(&self) -> Verdict {
        check_with(&self.txns, &self.finals, &self.tids, &self.extras)
    }

    /// The undo lookup a correct storage answers for undoing `undone` at `snapshot`, and
    /// the revisions the undo writes at `tid` (each object back to its list before
    /// `undone`; empty, a deletion, if `undone` created it). Installed if `status` is not
    /// Failed; recorded as a transaction with that status.
    fn undo(
        &mut self,
        client: usize,
        snapshot: u64,
        undone: u64,
        tid: u64,
        status: Status,
    ) -> usize {
        let mut entries = Vec::new();
        let mut writes = Vec::new();
        for (oid, revs) in &self.finals {
            let Some(k) = revs.iter().position(|r| r.0 == Tid(undone)) else {
                continue;
            };
            let cur = revs
                .iter()
                .rev()
                .find(|r| r.0 .0 <= snapshot)
                .expect("current");
            let before = k.checked_sub(1).map(|p| &revs[p]);
            entries.push((
                *oid,
                UndoSerial {
                    current: cur.0,
                    undo: before.map(|b| b.0),
                    is_current: cur.1 == revs[k].1,
                },
            ));
            writes.push((*oid, before.map(|b| b.1.clone()).unwrap_or_default()));
        }
        if status != Status::Failed {
            for (oid, list) in writes {
                self.finals
                    .get_mut(&oid)
                    .expect("written")
                    .push((Tid(tid), list));
            }
            self.tids.insert(Tid(tid));
        }
        let id = self.record(client, Some(snapshot), Vec::new(), &[], status);
        self.txns[id].undo = Some(Undo {
            undone: Tid(undone),
            entries,
        });
        id
    }
}

fn assert_ok(db: &Db) -> Verdict {
    let v = db.check();
    assert!(v.is_ok(), "{v}");
    v
}

fn assert_has(db: &Db, what: &[&str]) -> Verdict {
    let v = db.check();
    for w in what {
        assert!(
            v.anomalies.iter().any(|l| l.contains(w)),
            "expected {w:?} in {v}"
        );
    }
    v
}

/// x = 1, y = 2 at TID 10: a start most histories share.
fn base() -> Db {
    let mut db = Db::default();
    db.commit(0, None, &[(1, false), (2, false)], &[(1, 1), (2, 2)], 10);
    db
}

// ---- valid histories ----

#[test]
fn a_serial_history_passes() {
    let mut db = base();
    db.commit(1, Some(10), &[(1, false)], &[(1, 3), (3, 4)], 20);
    db.commit(0, Some(20), &[(1, true), (3, true)], &[(2, 5)], 30);
    // readCurrent only: its TID is in the tables, no object changes.
    let reads = vec![db.read(1, Some(30), true)];
    db.tids.insert(Tid(40));
    db.record(1, Some(30), reads, &[], Status::Committed(Tid(40)));
    let v = assert_ok(&db);
    assert_eq!(
        (
            v.committed,
            v.objects,
            v.revisions,
            v.reads,
            v.checked_reads
        ),
        (4, 3, 5, 6, 3)
    );
    assert_eq!((v.ww, v.wr), (2, 4), "{v}");
    assert!(v.to_string().ends_with(": ok"), "{v}");
}

#[test]
fn write_skew_passes() {
    let mut db = base();
    db.commit(1, Some(10), &[(1, false), (2, false)], &[(1, 3)], 20);
    db.commit(2, Some(10), &[(1, false), (2, false)], &[(2, 4)], 30);
    let v = assert_ok(&db);
    assert_eq!(v.rw, 2, "{v}");
}

#[test]
fn the_read_only_anomaly_passes_even_with_checked_reads() {
    // T -rw(y)-> A -rw(x)-> B -wr(x)-> T: two anti-dependencies, A's unchecked: legal SI.
    let mut db = base();
    let a_reads = vec![db.read(1, Some(10), false), db.read(2, Some(10), false)];
    db.commit(1, Some(10), &[], &[(1, 3)], 20); // B
    db.commit(2, Some(20), &[(1, true), (2, true)], &[(3, 4)], 25); // T
    db.install(30, &[(2, 5)]);
    db.record(3, Some(10), a_reads, &[(2, 5)], Status::Committed(Tid(30))); // A
    assert_ok(&db);
}

#[test]
fn a_checked_read_overwritten_after_the_commit_passes() {
    let mut db = base();
    db.commit(1, Some(10), &[(1, true)], &[(2, 3)], 20);
    db.commit(2, Some(10), &[(1, false)], &[(1, 4)], 30);
    assert_ok(&db);
}

#[test]
fn unknown_outcomes_pass_either_way() {
    let mut db = base();
    let reads = vec![db.read(1, Some(10), false)];
    db.install(20, &[(1, 3), (3, 4)]);
    db.record(1, Some(10), reads, &[(1, 3), (3, 4)], Status::Unknown);
    let reads = vec![db.read(2, Some(20), false)];
    db.record(2, Some(20), reads, &[(2, 5)], Status::Unknown); // never committed
    db.commit(0, Some(20), &[(1, true), (3, false)], &[(2, 6)], 30);
    let v = assert_ok(&db);
    assert_eq!((v.unknown, v.unknown_committed), (2, 1));
    assert!(v.wr >= 2, "{v}");
}

#[test]
fn an_undecided_read_only_transaction_may_leave_a_tid() {
    let mut db = base();
    let reads = vec![db.read(1, Some(10), true)];
    db.record(1, Some(10), reads, &[], Status::Unknown);
    db.tids.insert(Tid(20));
    assert_ok(&db);
}

#[test]
fn failed_transactions_stay_invisible() {
    let mut db = base();
    let reads = vec![db.read(1, Some(10), false)];
    db.record(1, Some(10), reads, &[(1, 3)], Status::Failed);
    db.commit(2, Some(10), &[(1, false)], &[(1, 4)], 20);
    let v = assert_ok(&db);
    assert_eq!(v.failed, 1);
}

#[test]
fn a_resolved_conflict_passes() {
    // T2 read x and y at 10, T1 then appended to both; T2's append to x was rebased onto
    // T1's revision. Its stale read of y makes T2 -rw(y)-> T1 -ww(x)-> T2, which is
    // resolution, not an SI violation.
    let mut db = base();
    let t2_reads = vec![db.read(1, Some(10), false), db.read(2, Some(10), false)];
    db.commit(
        1,
        Some(10),
        &[(1, false), (2, false)],
        &[(1, 3), (2, 4)],
        20,
    );
    db.install(30, &[(1, 5)]);
    let t2 = db.record(2, Some(10), t2_reads, &[(1, 5)], Status::Committed(Tid(30)));
    let v = db.check();
    assert!(v.anomalies.iter().any(|l| l.contains("lost update")), "{v}");
    db.txns[t2].resolved = vec![Oid(1)];
    assert_ok(&db);
}

// ---- anomalies ----

#[test]
fn a_lost_acknowledged_append_is_reported() {
    let mut db = base();
    db.commit(1, Some(10), &[(1, false)], &[(1, 3)], 20);
    db.finals.get_mut(&Oid(1)).unwrap().pop();
    assert_has(
        &db,
        &["lost: T1 (client 1, tid 0x0000000000000014) was acknowledged"],
    );
}

#[test]
fn a_committed_tid_missing_from_the_tables_is_reported() {
    let mut db = base();
    let reads = vec![db.read(1, Some(10), true)];
    db.record(1, Some(10), reads, &[], Status::Committed(Tid(20)));
    assert_has(&db, &["lost: T1", "missing from the transaction tables"]);
}

#[test]
fn an_aborted_write_made_visible_is_g1a() {
    let mut db = base();
    let reads = vec![db.read(1, Some(10), false)];
    db.install(20, &[(1, 3)]);
    db.record(1, Some(10), reads, &[(1, 3)], Status::Failed);
    assert_has(&db, &["G1a (aborted write visible): T1 (client 1, failed)"]);
}

#[test]
fn reading_an_aborted_value_is_g1a() {
    let mut db = base();
    db.record(1, Some(10), vec![], &[(1, 3)], Status::Failed);
    let mut read = db.read(1, Some(10), false);
    read.list.push(3);
    db.record(2, Some(10), vec![read], &[], Status::Failed);
    assert_has(&db, &["G1a (aborted read): T2", "3 of T1"]);
}

#[test]
fn reading_a_value_never_committed_is_g1b() {
    let mut db = base();
    db.record(1, Some(10), vec![], &[(2, 3)], Status::Unknown);
    let mut read = db.read(2, Some(10), false);
    read.list.push(3);
    db.record(2, Some(10), vec![read], &[], Status::Failed);
    assert_has(
        &db,
        &[
            "G1b (read of data never committed): T2",
            "3 of T1 (client 1, unknown, not committed)",
        ],
    );
}

#[test]
fn a_read_unlike_its_revision_is_g1b() {
    let mut db = base();
    db.commit(1, Some(10), &[(1, false)], &[(1, 3)], 20);
    let mut read = db.read(1, Some(20), false);
    read.list = vec![3];
    db.record(2, Some(20), vec![read], &[], Status::Failed);
    assert_has(
        &db,
        &[
            "G1b (inconsistent read): T2",
            "but that revision holds [1, 3]",
        ],
    );
}

#[test]
fn a_final_list_that_drops_a_value_is_reported() {
    let mut db = base();
    db.commit(1, Some(10), &[(1, false)], &[(1, 3)], 20);
    db.commit(2, Some(20), &[(1, false)], &[(1, 4)], 30);
    db.finals.get_mut(&Oid(1)).unwrap()[2].1 = vec![1, 4];
    assert_has(&db, &["does not extend the one at 0x0000000000000014"]);
}

#[test]
fn a_revision_adding_two_values_is_reported() {
    let mut db = base();
    db.commit(1, Some(10), &[], &[(1, 3)], 20);
    db.finals.get_mut(&Oid(1)).unwrap()[1].1 = vec![1, 3, 99];
    assert_has(
        &db,
        &[
            "adds 2 values",
            "value 99 at 0x0000000000000014, appended by no transaction",
        ],
    );
}

#[test]
fn a_stale_read_is_reported_with_its_read_skew() {
    // T2 sees T1's x but not its y: stale, and T1 -wr(x)-> T2 -rw(y)-> T1 is G-single.
    let mut db = base();
    db.commit(1, Some(10), &[], &[(1, 3), (2, 4)], 20);
    let reads = vec![db.read(1, Some(20), false), db.read(2, Some(10), false)];
    db.install(30, &[(3, 5)]);
    db.record(2, Some(20), reads, &[(3, 5)], Status::Committed(Tid(30)));
    assert_has(
        &db,
        &[
            "stale read: T2",
            "missed the revision at 0x0000000000000014 by T1",
            "G-single",
        ],
    );
}

#[test]
fn a_future_read_is_reported() {
    let mut db = base();
    db.commit(1, Some(10), &[], &[(1, 3)], 20);
    let reads = vec![db.read(1, Some(20), false)];
    db.record(2, Some(10), reads, &[], Status::Failed);
    assert_has(
        &db,
        &["future read: T2 (client 2, failed) (snapshot 0x000000000000000a)"],
    );
}

#[test]
fn a_write_cycle_is_g0() {
    // x: T1 then T2; y: T2 then T1.
    let mut db = Db::default();
    db.install(10, &[(1, 1)]);
    db.install(20, &[(1, 2), (2, 3)]);
    db.install(30, &[(2, 4)]);
    db.record(
        1,
        None,
        vec![],
        &[(1, 1), (2, 4)],
        Status::Committed(Tid(10)),
    );
    db.record(
        2,
        None,
        vec![],
        &[(1, 2), (2, 3)],
        Status::Committed(Tid(20)),
    );
    assert_has(
        &db,
        &[
            "G0 (write cycle): T0",
            "T1 (client 2, tid 0x0000000000000014)",
        ],
    );
}

#[test]
fn circular_information_flow_is_g1c() {
    let mut db = Db::default();
    db.install(10, &[(1, 1)]);
    db.install(20, &[(2, 2)]);
    // T0 read T1's y and T1 read T0's x.
    let r0 = db.read(2, Some(20), false);
    let r1 = db.read(1, Some(10), false);
    db.record(1, Some(5), vec![r0], &[(1, 1)], Status::Committed(Tid(10)));
    db.record(2, Some(15), vec![r1], &[(2, 2)], Status::Committed(Tid(20)));
    assert_has(&db, &["G1c (circular information flow)", "future read: T0"]);
}

#[test]
fn a_lost_update_is_reported_and_is_g_single() {
    let mut db = base();
    let r2 = db.read(1, Some(10), false);
    db.commit(1, Some(10), &[(1, false)], &[(1, 3)], 20);
    db.install(30, &[(1, 4)]);
    db.record(2, Some(10), vec![r2], &[(1, 4)], Status::Committed(Tid(30)));
    assert_has(
        &db,
        &[
            "lost update (first committer wins): T2",
            "G-single (one anti-dependency): T2",
        ],
    );
}

#[test]
fn a_blind_append_over_a_concurrent_commit_is_reported() {
    let mut db = base();
    db.commit(1, Some(10), &[], &[(1, 3)], 20);
    db.commit(2, Some(10), &[], &[(1, 4)], 30);
    assert_has(
        &db,
        &[
            "first committer wins: T2",
            "over the revision at 0x0000000000000014 by T1",
        ],
    );
    let mut db = base();
    db.commit(1, Some(10), &[], &[(1, 3)], 20);
    let t2 = db.commit(2, Some(10), &[], &[(1, 4)], 30);
    db.txns[t2].resolved = vec![Oid(1)];
    assert_ok(&db);
}

#[test]
fn a_checked_read_overwritten_before_the_commit_is_reported() {
    // T1 checks x, T2 checks y; each overwrites what the other checked, T2 first.
    let mut db = base();
    let r1 = db.read(1, Some(10), true);
    db.commit(2, Some(10), &[(1, false), (2, true)], &[(1, 3)], 20);
    db.install(30, &[(2, 4)]);
    db.record(1, Some(10), vec![r1], &[(2, 4)], Status::Committed(Tid(30)));
    assert_has(
        &db,
        &[
            "readCurrent not enforced: T2",
            "not serializable (cycle through checked reads)",
        ],
    );
}

#[test]
fn an_unknown_transaction_seen_in_part_is_not_atomic() {
    let mut db = base();
    db.install(20, &[(1, 3)]);
    db.record(1, Some(10), vec![], &[(1, 3), (2, 4)], Status::Unknown);
    assert_has(&db, &["not atomic: T1", "4 to oid:2 at none"]);
}

#[test]
fn tid_order_faults_are_reported() {
    let mut db = base();
    let reads = vec![db.read(1, Some(10), false)];
    db.record(1, Some(10), reads, &[], Status::Committed(Tid(10)));
    db.commit(2, Some(10), &[], &[(3, 3)], 5);
    db.tids.insert(Tid(99));
    assert_has(
        &db,
        &[
            "T0 (client 0, tid 0x000000000000000a) and T1 (client 1, tid 0x000000000000000a) share a TID",
            "T2 (client 2, tid 0x0000000000000005): TID not above its snapshot",
            "1 TIDs in the transaction tables belong to no committed transaction",
        ],
    );
}

#[test]
fn the_listing_is_bounded() {
    let mut db = base();
    for k in 0..(Verdict::MAX_LINES as u64 + 20) {
        db.record(
            1,
            Some(10),
            vec![],
            &[(1, 100 + k)],
            Status::Committed(Tid(1000 + k)),
        );
    }
    let v = db.check();
    assert_eq!(v.anomalies.len(), Verdict::MAX_LINES);
    assert!(v.omitted > 0 && v.to_string().contains("more"), "{v}");
}

// ---- generated executions ----

struct Open {
    client: usize,
    snapshot: Option<u64>,
    reads: Vec<Read>,
    appends: Vec<(u64, Val)>,
}

/// A snapshot-isolation execution of `n` random transactions, `concurrency` at a time, on
/// `objects` objects: snapshots (some lagging), first committer wins with conflicts
/// resolved or aborted, readCurrent checked, some aborts, some outcomes lost.
fn execute(seed: u64, n: usize, concurrency: usize, objects: u64) -> Db {
    let mut rng = rng::stream(seed, 0);
    let r: &mut ChaCha8Rng = &mut rng;
    let mut db = Db::default();
    let mut committed: Vec<u64> = Vec::new();
    let mut open: Vec<Open> = Vec::new();
    let (mut started, mut next_tid, mut next_val) = (0, 1u64, 1u64);
    while started < n || !open.is_empty() {
        if started < n && open.len() < concurrency && (open.is_empty() || rng::chance(r, 0.5)) {
            started += 1;
            let snapshot = match committed.last() {
                None => None,
                Some(&last) if rng::chance(r, 0.8) => Some(last),
                Some(_) => Some(*rng::pick(r, &committed)),
            };
            let mut reads: Vec<Read> = Vec::new();
            for _ in 0..rng::below(r, 4) {
                let oid = rng::below(r, objects);
                if reads.iter().all(|x| x.oid != Oid(oid)) {
                    let checked = rng::chance(r, 0.3);
                    reads.push(db.read(oid, snapshot, checked));
                }
            }
            let mut appends = Vec::new();
            let least = u64::from(!reads.iter().any(|x| x.checked));
            for _ in 0..rng::between(r, least, 2) {
                let oid = rng::below(r, objects);
                if appends.iter().all(|a: &(u64, Val)| a.0 != oid) {
                    appends.push((oid, next_val));
                    next_val += 1;
                    if rng::chance(r, 0.8) && reads.iter().all(|x| x.oid != Oid(oid)) {
                        reads.push(db.read(oid, snapshot, false));
                    }
                }
            }
            open.push(Open {
                client: started % 4,
                snapshot,
                reads,
                appends,
            });
            continue;
        }
        let o = open.swap_remove(rng::below(r, open.len() as u64) as usize);
        let latest =
            |db: &Db, oid: u64| db.finals.get(&Oid(oid)).and_then(|v| v.last()).map(|v| v.0);
        let mut failed = rng::chance(r, 0.05);
        for x in o.reads.iter().filter(|x| x.checked) {
            if !o.appends.iter().any(|a| Oid(a.0) == x.oid) && latest(&db, x.oid.0) != x.serial {
                failed = true;
            }
        }
        let mut resolved = Vec::new();
        for &(oid, _) in &o.appends {
            let base = match o.reads.iter().find(|x| x.oid == Oid(oid)) {
                Some(x) => x.serial,
                None => db.read(oid, o.snapshot, false).serial,
            };
            if latest(&db, oid) != base {
                if rng::chance(r, 0.5) {
                    resolved.push(Oid(oid));
                } else {
                    failed = true;
                }
            }
        }
        let status = if failed {
            if rng::chance(r, 0.2) {
                Status::Unknown
            } else {
                Status::Failed
            }
        } else {
            next_tid += rng::between(r, 1, 3);
            db.install(next_tid, &o.appends);
            committed.push(next_tid);
            if rng::chance(r, 0.15) {
                Status::Unknown
            } else {
                Status::Committed(Tid(next_tid))
            }
        };
        let i = db.record(o.client, o.snapshot, o.reads, &o.appends, status);
        db.txns[i].resolved = if failed { Vec::new() } else { resolved };
    }
    db
}

#[test]
fn ten_thousand_transactions_pass() {
    let db = execute(1, 10_000, 4, 50);
    let v = assert_ok(&db);
    assert_eq!(v.committed + v.failed + v.unknown, 10_000);
    assert!(
        v.committed > 5_000 && v.unknown_committed > 500 && v.rw > 1_000,
        "{v}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn snapshot_isolated_executions_pass(seed: u64, concurrency in 1usize..5) {
        let db = execute(seed, 80, concurrency, 5);
        let v = db.check();
        prop_assert!(v.is_ok(), "{}", v);
    }

    #[test]
    fn dropping_a_value_from_one_read_is_caught(seed: u64, pick: u64) {
        let mut db = execute(seed, 80, 1, 5);
        let reads: Vec<(usize, usize)> = db.txns.iter().enumerate()
            .flat_map(|(i, t)| t.reads.iter().enumerate()
                .filter(|(_, x)| !x.list.is_empty()).map(move |(k, _)| (i, k)))
            .collect();
        prop_assume!(!reads.is_empty());
        let (i, k) = reads[(pick % reads.len() as u64) as usize];
        db.txns[i].reads[k].list.pop();
        let v = db.check();
        prop_assert!(!v.is_ok(), "{}", v);
    }

    #[test]
    fn one_consistent_stale_read_is_caught(seed: u64, pick: u64, concurrency in 1usize..5) {
        let mut db = execute(seed, 80, concurrency, 5);
        let reads: Vec<(usize, usize)> = db.txns.iter().enumerate()
            .flat_map(|(i, t)| t.reads.iter().enumerate()
                .filter(|(_, x)| x.serial.is_some()).map(move |(k, _)| (i, k)))
            .collect();
        prop_assume!(!reads.is_empty());
        let (i, k) = reads[(pick % reads.len() as u64) as usize];
        let read = &db.txns[i].reads[k];
        let revs = &db.finals[&read.oid];
        let at = revs.iter().position(|x| Some(x.0) == read.serial).unwrap();
        let (serial, list) = match at.checked_sub(1) {
            Some(p) => (Some(revs[p].0), revs[p].1.clone()),
            None => (None, Vec::new()),
        };
        let read = &mut db.txns[i].reads[k];
        (read.serial, read.list) = (serial, list);
        let v = db.check();
        prop_assert!(v.anomalies.iter().any(|l| l.contains("stale read")), "{}", v);
    }
}

// ---- undo and pack ----

/// x = [1, 3] at 20 (T1), then T1 undone at 30: x = [1] again.
fn undone() -> Db {
    let mut db = base();
    db.commit(1, Some(10), &[(1, false)], &[(1, 3)], 20);
    db.undo(2, 20, 20, 30, Status::Committed(Tid(30)));
    db
}

#[test]
fn an_undo_is_a_transaction_like_any_other() {
    let mut db = undone();
    assert_eq!(db.finals[&Oid(1)].last().unwrap().1, vec![1]);
    // Read after the undo, appended on top of it; a reader before it saw T1's value.
    db.commit(0, Some(30), &[(1, true)], &[(1, 4)], 40);
    let reads = vec![db.read(1, Some(20), false)];
    db.record(3, Some(20), reads, &[], Status::Committed(Tid(25)));
    db.tids.insert(Tid(25));
    let v = assert_ok(&db);
    // T0 -ww-> T1 -ww-> undo -ww-> T3 on x: the undo's writes are writes.
    assert!(v.ww >= 3, "{v}");
}

#[test]
fn an_undo_of_an_undo_and_of_a_creation_pass() {
    let mut db = undone();
    db.undo(1, 30, 30, 40, Status::Committed(Tid(40)));
    assert_eq!(db.finals[&Oid(1)].last().unwrap().1, vec![1, 3]);
    // Undo the creation of x and y: both deleted; read as absent, then created again.
    db.undo(0, 40, 10, 50, Status::Failed); // not current any more on x: aborted
    db.commit(2, Some(40), &[], &[(3, 7)], 45);
    db.undo(0, 45, 45, 50, Status::Committed(Tid(50)));
    assert_eq!(db.finals[&Oid(3)].last().unwrap().1, Vec::<Val>::new());
    let deleted = db.read(3, Some(50), false);
    assert_eq!((deleted.serial, deleted.list.len()), (Some(Tid(50)), 0));
    let absent = Read {
        serial: None,
        ..deleted.clone()
    };
    db.record(1, Some(50), vec![absent], &[], Status::Committed(Tid(55)));
    db.tids.insert(Tid(55));
    db.commit(2, Some(50), &[(3, false)], &[(3, 8)], 60);
    assert_ok(&db);
}

#[test]
fn an_unknown_undo_is_decided_by_the_transaction_tables() {
    let mut db = base();
    db.commit(1, Some(10), &[(1, false)], &[(1, 3)], 20);
    let u = db.undo(2, 20, 20, 30, Status::Unknown);
    // Not named: not committed, so its revision drops a value.
    assert_has(&db, &["values lost"]);
    db.extras.named = Some([(Tid(30), db.txns[u].id)].into_iter().collect());
    let v = assert_ok(&db);
    assert_eq!(v.unknown_committed, 1);
}

#[test]
fn an_undo_restoring_the_undone_data_is_reported() {
    let mut db = undone();
    // The mutant undo-wrong-serial: the undo restored T1's own data.
    db.finals.get_mut(&Oid(1)).unwrap().last_mut().unwrap().1 = vec![1, 3];
    assert_has(&db, &["holds [1, 3], but T"]);
}

#[test]
fn an_undo_over_changed_data_is_reported() {
    let mut db = base();
    db.commit(1, Some(10), &[(1, false)], &[(1, 3)], 20);
    db.commit(1, Some(20), &[(1, false)], &[(1, 4)], 25);
    // The lookup says current though x changed since T1: the undo drops value 4.
    let u = db.undo(2, 25, 20, 30, Status::Committed(Tid(30)));
    db.txns[u].undo.as_mut().unwrap().entries[0].1.is_current = true;
    assert_has(&db, &["undo over changed data"]);
}

#[test]
fn an_undo_on_a_stale_base_is_reported() {
    let mut db = base();
    db.commit(1, Some(10), &[(1, false)], &[(1, 3)], 20);
    // The undo's lookup saw 20 as current; a commit at 25 (of y's... x) slipped in.
    let u = db.undo(2, 20, 20, 30, Status::Committed(Tid(30)));
    let revs = db.finals.get_mut(&Oid(1)).unwrap();
    revs.insert(2, (Tid(25), vec![1, 3, 9]));
    db.install(25, &[]);
    db.record(0, Some(20), vec![], &[(1, 9)], Status::Committed(Tid(25)));
    let _ = u;
    assert_has(&db, &["first committer wins (undo)"]);
}

#[test]
fn a_pack_may_remove_only_what_is_not_current_at_its_tid() {
    let mut db = base();
    let old_read = db.read(1, Some(10), false);
    db.commit(1, Some(10), &[(1, false)], &[(1, 3)], 20);
    db.commit(1, Some(20), &[(1, false)], &[(1, 4)], 30);
    db.record(2, Some(10), vec![old_read], &[], Status::Committed(Tid(15)));
    db.tids.insert(Tid(15));
    db.extras.packs = vec![Tid(25)];
    // x at 10 is older than x at 20, the newest at or before 25: it may go (and the read
    // of it taken before the pack is still judged against it).
    db.finals.get_mut(&Oid(1)).unwrap().remove(0);
    assert_ok(&db);
    // x at 20 must stay: loads before 30 answer it.
    let mut bad = Db {
        finals: db.finals.clone(),
        tids: db.tids.clone(),
        txns: db.txns.clone(),
        extras: db.extras.clone(),
    };
    bad.finals.get_mut(&Oid(1)).unwrap().remove(0);
    assert_has(&bad, &["pack removed too much"]);
    // y at 10 is y's current revision.
    db.finals.remove(&Oid(2));
    assert_has(&db, &["pack removed too much"]);
}

#[test]
fn a_packed_deletion_may_go() {
    let mut db = base();
    db.undo(0, 10, 10, 20, Status::Committed(Tid(20)));
    db.commit(1, Some(20), &[], &[(3, 5)], 30);
    db.extras.packs = vec![Tid(25)];
    // x and y: created at 10, deleted at 20, both removed by a pack at 25.
    db.finals.remove(&Oid(1));
    db.finals.remove(&Oid(2));
    assert_ok(&db);
    // A pack commits no transaction of its own (AskPack is synchronous): a TID in the
    // tables that no transaction names is still reported.
    db.tids.insert(Tid(26));
    assert_has(&db, &["belong to no committed transaction"]);
}

#[test]
fn a_read_of_an_object_after_its_deletion_is_stale() {
    let mut db = base();
    db.commit(2, Some(10), &[], &[(3, 7)], 20);
    // The creation of z undone at 30: deletions are invalidated like any change, so a
    // read of z at 20 by a snapshot after 30 is stale.
    db.undo(0, 20, 20, 30, Status::Committed(Tid(30)));
    let cached = db.read(3, Some(20), false);
    db.record(1, Some(35), vec![cached], &[], Status::Committed(Tid(36)));
    db.tids.insert(Tid(36));
    assert_has(&db, &["stale read: T", "missed the revision at"]);
}
