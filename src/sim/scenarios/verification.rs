//! The verification scenario: as recovery, but the storages start from databases holding
//! committed history and transactions a crash cut in the middle of their commit (voted
//! here, locked there, unlocked elsewhere); verification must commit everywhere what was
//! locked anywhere and drop what was not.
//!
//! Invariants, besides recovery's: a transaction never locked is never committed (after
//! every step); once the cluster runs, each scripted transaction's outcome holds on every
//! readable cell.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sha1::{Digest, Sha1};

use crate::actors::storage::Storage;
use crate::db::sqlite::SqliteBackend;
use crate::db::{partition_of, Backend, Cell, Load, ObjectData, TxnMeta, Value};
use crate::proto::{Nid, NodeType, Oid, Ptid, Tid, WallTime};
use crate::pt::PartitionTable;
use crate::rng::{self, ChaCha8Rng};
use crate::sim::builder::Databases;
use crate::sim::scenario::Plan;
use crate::sim::world::World;

/// A transaction the verification scenario wrote into the storages before they start,
/// and what verification must make of it.
#[derive(Clone, Debug)]
pub struct ScriptedTxn {
    pub ttid: Tid,
    pub tid: Tid,
    pub oids: Vec<Oid>,
    pub expect: Expect,
}

/// What verification must make of a scripted transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Never locked anywhere: gone everywhere.
    Dropped,
    /// Locked on some node while the lock was still in progress (the client was not told):
    /// either outcome, but the same on every readable cell.
    Atomic,
    /// Unlocked somewhere (every lock was done: the client was told it committed): on every
    /// readable cell.
    Committed,
}

fn object_bytes(ttid: Tid, oid: Oid) -> ObjectData {
    let data = format!("object {oid} written by {ttid:?}").into_bytes();
    ObjectData {
        compression: 0,
        checksum: Sha1::digest(&data).into(),
        data,
    }
}

/// The next TID after `after` in the same partition as `ttid` (final TIDs keep the
/// partition of their ttid).
fn final_tid(ttid: Tid, after: Tid, np: u32) -> Tid {
    let mut t = after.add_units(1);
    while partition_of(t.0, np) != partition_of(ttid.0, np) {
        t = t.add_units(1);
    }
    t
}

/// Write the scripted history into the storages' databases: a partition table, committed
/// transactions, and transactions cut by a crash during vote, lock or unlock.
fn write_history(
    rng: &mut ChaCha8Rng,
    dbs: &mut [SqliteBackend],
    nids: &[Nid],
    plan: &Plan,
    epoch: WallTime,
) -> Vec<ScriptedTxn> {
    let np = plan.partitions;
    let mut pt = PartitionTable::new(np, plan.replicas);
    pt.make(nids);
    let cells: Vec<Cell> = (0..np)
        .flat_map(|p| {
            pt.row(p)
                .map(move |(nid, state)| Cell {
                    partition: p,
                    nid,
                    state,
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for (db, nid) in dbs.iter_mut().zip(nids) {
        db.set_nid(*nid).expect("history: nid");
        db.change_partition_table(Ptid(1), plan.replicas, &cells, true)
            .expect("history: table");
    }
    let holders = |p: u32| -> Vec<usize> {
        pt.row(p)
            .map(|(n, _)| nids.iter().position(|x| *x == n).expect("member"))
            .collect()
    };
    let mut last = Tid::from_wall(epoch.saturating_sub(Duration::from_secs(3600)));
    let mut txns = Vec::new();
    let committed_count = rng::between(rng, 1, 3);
    let inflight_count = rng::between(rng, 1, 4);
    for k in 0..committed_count + inflight_count {
        let ttid = last.add_units(rng::between(rng, 1, 1 << 20));
        let tid = final_tid(ttid, ttid, np);
        last = tid;
        let oids: Vec<Oid> = (0..rng::between(rng, 1, 3))
            .map(|_| Oid(rng::between(rng, 1, 40)))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let meta_part = partition_of(ttid.0, np);
        let mut involved: BTreeMap<usize, Vec<Oid>> = BTreeMap::new();
        for &oid in &oids {
            for i in holders(partition_of(oid.0, np)) {
                involved.entry(i).or_default().push(oid);
            }
        }
        for i in holders(meta_part) {
            involved.entry(i).or_default();
        }
        // How far the commit got: 0 = during vote, 1 = during lock, 2 = during unlock,
        // 3 = done. The first in-flight transaction is always one that verification must
        // finish: unlocked somewhere, not everywhere.
        let stage = if k < committed_count {
            3
        } else if k == committed_count {
            2
        } else {
            rng::between(rng, 0, 2)
        };
        let meta = TxnMeta {
            user: b"sim".to_vec(),
            description: format!("transaction {k}").into_bytes(),
            extension: Vec::new(),
            oids: oids.clone(),
        };
        let holders_meta = holders(meta_part);
        // Who reaches each step: everyone before the stage, a random part at the stage.
        let mut some = |stage_here: u64| -> Vec<usize> {
            let all: Vec<usize> = involved.keys().copied().collect();
            if stage > stage_here {
                all
            } else if stage == stage_here {
                all.into_iter().filter(|_| rng::chance(rng, 0.5)).collect()
            } else {
                Vec::new()
            }
        };
        let voted = some(0);
        let locked = some(1);
        let mut unlocked = some(2);
        if k == committed_count {
            let first = *involved.keys().next().expect("involved nodes");
            unlocked.retain(|i| *i != first);
            if unlocked.is_empty() && involved.len() > 1 {
                unlocked.push(*involved.keys().last().expect("involved nodes"));
            }
        }
        let expect = match stage {
            0 => Expect::Dropped,
            1 if !locked.iter().any(|i| holders_meta.contains(i)) => Expect::Dropped,
            1 => Expect::Atomic,
            _ => Expect::Committed,
        };
        for &i in &voted {
            let db = &mut dbs[i];
            for &oid in &involved[&i] {
                db.store(ttid, oid, Value::Data(object_bytes(ttid, oid)))
                    .expect("history: store");
            }
            let m = holders_meta.contains(&i).then_some(&meta);
            db.vote(ttid, m).expect("history: vote");
        }
        for &i in &locked {
            dbs[i].lock(ttid, tid).expect("history: lock");
        }
        for &i in &unlocked {
            if !locked.contains(&i) {
                dbs[i].lock(ttid, tid).expect("history: lock");
            }
            dbs[i].unlock(ttid, tid).expect("history: unlock");
        }
        txns.push(ScriptedTxn {
            ttid,
            tid,
            oids,
            expect,
        });
    }
    txns
}

/// Write the scripted history into the storages' databases before they start.
pub fn prepare(
    rng: &mut ChaCha8Rng,
    dbs: &Databases,
    plan: &Plan,
    epoch: WallTime,
) -> Vec<ScriptedTxn> {
    let mut open = dbs.open_all();
    let nids: Vec<Nid> = (1..=plan.storages as u32)
        .map(|n| Nid::new(NodeType::Storage, n))
        .collect();
    write_history(rng, &mut open, &nids, plan, epoch)
}

/// A scripted transaction that was never locked must never show up committed.
pub fn never_locked_never_committed(w: &World, txns: &[ScriptedTxn]) -> Result<(), String> {
    for t in txns.iter().filter(|t| t.expect == Expect::Dropped) {
        for (i, s) in w.storages() {
            let f = s.backend().final_tid(t.ttid).map_err(|e| e.to_string())?;
            if f.is_some() {
                return Err(format!(
                    "{}: transaction {:?} was never locked, yet it is committed as {f:?}",
                    w.label(i),
                    t.ttid
                ));
            }
        }
    }
    Ok(())
}

/// Each scripted transaction's outcome, on every readable cell of `pt` held by the
/// operational storages `by_nid`.
pub fn outcome_holds(
    pt: &PartitionTable,
    by_nid: &BTreeMap<Nid, &Storage>,
    txns: &[ScriptedTxn],
) -> Result<(), String> {
    let np = pt.partitions();
    for t in txns {
        // Where the transaction is, on each readable cell it concerns: (node, what, present).
        let mut seen: Vec<(Nid, String, bool)> = Vec::new();
        for (nid, s) in by_nid {
            let db = s.backend();
            let err = |e: crate::db::DbError| e.to_string();
            if db.locked_transactions().map_err(err)?.contains_key(&t.ttid) {
                return Err(format!(
                    "{nid} is operational and still holds {:?} as unfinished",
                    t.ttid
                ));
            }
            let readable = |part: u32| pt.cell(part, *nid).is_some_and(|c| c.is_readable());
            for &oid in &t.oids {
                if readable(partition_of(oid.0, np)) {
                    let present = match db.load(oid, Some(t.tid), None).map_err(err)? {
                        Load::Found(l) if l.data == object_bytes(t.ttid, oid).data => true,
                        Load::Found(l) => {
                            return Err(format!(
                                "{nid}: {oid} at {:?} holds other data: {l:?}",
                                t.tid
                            ))
                        }
                        _ => false,
                    };
                    seen.push((*nid, format!("{oid}"), present));
                }
            }
            if readable(partition_of(t.ttid.0, np)) {
                let present = db.transaction(t.tid).map_err(err)?.is_some();
                seen.push((*nid, "its metadata".into(), present));
            }
        }
        let missing = seen.iter().find(|(_, _, p)| !p);
        let found = seen.iter().find(|(_, _, p)| *p);
        match (t.expect, missing, found) {
            (Expect::Committed, Some((nid, what, _)), _) => {
                return Err(format!(
                    "{nid}: {what} of the committed transaction {:?} is missing",
                    t.tid
                ));
            }
            (Expect::Dropped, _, Some((nid, what, _))) => {
                return Err(format!(
                    "{nid}: {what} of the dropped transaction {:?} is there",
                    t.tid
                ));
            }
            (Expect::Atomic, Some((a, wa, _)), Some((b, wb, _))) => {
                return Err(format!(
                    "transaction {:?} committed in part: {wb} on {b}, but not {wa} on {a}",
                    t.tid
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The verification scenario: the cluster run from scripted history.
pub fn run(
    opts: &crate::sim::scenario::RunOptions,
    plan: &Plan,
) -> crate::sim::scenario::RunReport {
    let setup = super::recovery::Setup {
        history: true,
        ..Default::default()
    };
    super::recovery::run_cluster(opts, plan, &setup)
}
