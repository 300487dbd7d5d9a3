//! The cluster scenarios: masters and storages (SQLite in memory) with the swarm's faults.
//!
//! `recovery`: a new cluster starts (autostart), runs, loses and regains nodes, goes back to
//! recovery when its table stops being operational, and must be RUNNING again once faults
//! heal. `verification`: the storages start from a database holding committed history and
//! transactions a crash cut in the middle of their commit (voted here, locked there,
//! unlocked elsewhere); verification must commit everywhere what was locked anywhere and
//! drop what was not.
//!
//! Invariants, after every step: at most one primary past RECOVERING; partition-table ids
//! only grow on each storage and one id means one table; a primary past RECOVERING keeps a
//! readable cell in every partition and never runs on a table older than one a storage
//! holds with readable cells of its own; nodes' own consistency checks; a transaction
//! never locked is never committed.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use sha1::{Digest, Sha1};

use super::check;
use super::faults::Injector;
use super::net::NodeIdx;
use super::scenario::{
    add_masters, converged_for, node_clock, Plan, RunOptions, RunReport, Scenario, CLUSTER,
    LIVENESS_BOUND, STABLE_FOR,
};
use super::world::{Failure, NodeActor, World};
use crate::actors::master::election::Role;
use crate::actors::master::Master;
use crate::actors::storage::{Storage, StorageConfig};
use crate::db::sqlite::SqliteBackend;
use crate::db::{partition_of, Backend, Cell, Identity, Load, ObjectData, TxnMeta, Value};
use crate::proto::{
    Address, CellState, ClusterState, Nid, NodeState, NodeType, Oid, Ptid, Tid, WallTime,
};
use crate::pt::PartitionTable;
use crate::rng::{self, ChaCha8Rng};

/// Storage `i`'s address.
pub fn storage_address(i: usize) -> Address {
    Address::new(format!("10.0.1.{}", i + 1), 20000)
}

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

/// A cluster of the plan's shape; with `history`, storages start from scripted databases.
pub fn cluster_world(
    opts: &RunOptions,
    plan: &Plan,
    history: bool,
) -> (World, Rc<Vec<ScriptedTxn>>) {
    let seed = opts.seed;
    let mut w = World::new(seed, plan.swarm.latency.clone(), opts.mutant, opts.trace);
    let mut rng = rng::stream(seed, 5);
    let masters = add_masters(
        &mut w,
        &mut rng,
        &plan.swarm,
        plan.masters,
        Duration::from_secs(5),
        |cfg| {
            cfg.autostart = Some(plan.storages as u32);
            cfg.replicas = plan.replicas;
            cfg.partitions = plan.partitions;
        },
    );
    let identity = Identity {
        cluster: CLUSTER.into(),
        nid: None,
    };
    // Storage i is node `first + i`; its disk lives in the world (see `sim::disk`).
    let first = w.next_node();
    for i in 0..plan.storages {
        w.disks.add(first + i).expect("sim: memory database");
    }
    let txns = if history {
        let mut dbs: Vec<SqliteBackend> = (0..plan.storages)
            .map(|i| {
                w.disks
                    .open_plain(first + i, &identity)
                    .expect("sim: memory database")
            })
            .collect();
        let nids: Vec<Nid> = (1..=plan.storages as u32)
            .map(|n| Nid::new(NodeType::Storage, n))
            .collect();
        let epoch = w.epoch();
        let txns = write_history(&mut rng::stream(seed, 6), &mut dbs, &nids, plan, epoch);
        drop(dbs);
        txns
    } else {
        Vec::new()
    };
    for i in 0..plan.storages {
        let cfg = StorageConfig {
            cluster: CLUSTER.into(),
            bind: storage_address(i),
            masters: masters.clone(),
        };
        let (disks, identity, node) = (w.disks.clone(), identity.clone(), first + i);
        let clock = node_clock(&mut rng, &plan.swarm);
        let start = rng::duration(&mut rng, Duration::ZERO, Duration::from_secs(5));
        let make = move || {
            // A restarted process opens its disk again (the previous process's was dropped).
            let db = disks.open(node, &identity);
            NodeActor::Storage(Box::new(Storage::new(cfg.clone(), db)))
        };
        w.add_node(
            format!("s{}", i + 1),
            storage_address(i),
            Box::new(make),
            clock,
            start,
            plan.swarm.buggify,
        );
    }
    let txns = Rc::new(txns);
    w.add_invariant(Box::new(check::election_safety));
    w.add_invariant(Box::new(storages_consistent));
    w.add_invariant(Box::new(super::disk_check::wiped_disks_never_serve));
    w.add_invariant(Box::new(table_watch()));
    let t = txns.clone();
    w.add_invariant(Box::new(move |w: &World| {
        never_locked_never_committed(w, &t)
    }));
    (w, txns)
}

fn storages_consistent(w: &World) -> Result<(), String> {
    for (i, s) in w.storages() {
        s.check_invariants()
            .map_err(|e| format!("{}: {e}", w.label(i)))?;
    }
    Ok(())
}

/// The primary past RECOVERING that can serve, if any (a primary cut off from its storages
/// may believe it is past RECOVERING a little longer; see `check::election_safety`).
fn active_primary(w: &World) -> Option<(NodeIdx, &Master)> {
    w.masters().find(|(i, m)| {
        matches!(m.role(), Role::Primary(p) if p.cluster_state != ClusterState::Recovering)
            && check::can_serve(w, *i)
    })
}

/// Partition-table history: on each storage, ids only grow and one id is one table; the
/// serving primary's table is the one its storages hold under the same id; every table
/// keeps a readable cell per partition; and the cluster never runs on a table older than
/// one a storage holds with readable cells of its own.
fn table_watch() -> impl FnMut(&World) -> Result<(), String> {
    type Rows = Vec<Vec<(Nid, CellState)>>;
    let history: RefCell<BTreeMap<(NodeIdx, usize), BTreeMap<Ptid, Rows>>> =
        RefCell::new(BTreeMap::new());
    type Last = (Ptid, Rows, Option<Nid>);
    let last: RefCell<BTreeMap<(NodeIdx, usize), Last>> = RefCell::new(BTreeMap::new());
    move |w: &World| {
        let mut history = history.borrow_mut();
        let mut last = last.borrow_mut();
        // What a wiped disk held is gone with it.
        last.retain(|(i, generation), _| *generation == w.wipes_of(*i));
        for (i, s) in w.storages() {
            let Some(pt) = s.partition_table() else {
                continue;
            };
            let Some(ptid) = pt.ptid() else { continue };
            let rows = pt.rows();
            if let Some(p) = rows
                .iter()
                .position(|r| !r.iter().any(|(_, s)| s.is_readable()))
            {
                return Err(format!(
                    "{}: partition {p} has no readable cell in table {ptid}",
                    w.label(i)
                ));
            }
            // A wiped disk is a new storage: its history starts again.
            let seen = history.entry((i, w.wipes_of(i))).or_default();
            if let Some((newest, _)) = seen.last_key_value() {
                if ptid < *newest {
                    return Err(format!(
                        "{}: partition table id went back from {newest} to {ptid}",
                        w.label(i)
                    ));
                }
            }
            if seen.get(&ptid).is_some_and(|t| *t != rows) {
                return Err(format!(
                    "{}: two different partition tables with id {ptid}",
                    w.label(i)
                ));
            }
            seen.insert(ptid, rows.clone());
            last.insert((i, w.wipes_of(i)), (ptid, rows, s.nid()));
        }
        let Some((pi, p)) = active_primary(w) else {
            return Ok(());
        };
        let pt = p.primary_table().expect("primary");
        let Some(ptid) = pt.ptid() else { return Ok(()) };
        for (i, s) in w
            .storages()
            .filter(|(_, s)| s.primary() == Some(p.address()))
        {
            if let Some(t) = s.partition_table().filter(|t| t.ptid() == Some(ptid)) {
                if t.rows() != pt.rows() {
                    return Err(format!(
                        "{}: partition table {ptid} differs from its primary {}'s",
                        w.label(i),
                        w.label(pi)
                    ));
                }
            }
        }
        if let Some(part) = (0..pt.partitions()).find(|p| !pt.row(*p).any(|(_, s)| s.is_readable()))
        {
            return Err(format!(
                "primary {}: partition {part} has no readable cell left (table {ptid})",
                w.label(pi)
            ));
        }
        for ((i, _), (q, rows, nid)) in last.iter() {
            let readable = nid.is_some_and(|n| {
                rows.iter()
                    .any(|r| r.iter().any(|(c, s)| *c == n && s.is_readable()))
            });
            if *q > ptid && readable {
                return Err(format!(
                    "primary {} is past RECOVERING with table {ptid}, but {} holds the newer table {q} with readable cells",
                    w.label(pi),
                    w.label(*i)
                ));
            }
        }
        Ok(())
    }
}

/// A scripted transaction that was never locked must never show up committed.
fn never_locked_never_committed(w: &World, txns: &[ScriptedTxn]) -> Result<(), String> {
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

/// The cluster is RUNNING with every running storage serving, and verification's outcome
/// holds on every readable cell.
fn cluster_converged(w: &World, txns: &[ScriptedTxn]) -> Result<(), String> {
    check::election_converged(w)?;
    let Some((pi, p)) = w
        .masters()
        .find(|(i, m)| w.nodes[*i].is_up() && matches!(m.role(), Role::Primary(_)))
    else {
        return Err("no primary".into());
    };
    if p.cluster_state() != Some(ClusterState::Running) {
        return Err(format!("the cluster is {:?}", p.cluster_state()));
    }
    let pt = p.primary_table().expect("primary");
    let mut by_nid = BTreeMap::new();
    for (i, s) in w.storages() {
        if !w.nodes[i].is_up() {
            continue;
        }
        let nid = s
            .nid()
            .ok_or_else(|| format!("{} has no node id", w.label(i)))?;
        let listed = p.nodes().get(nid).map(|n| n.state);
        if !pt.nodes().contains(&nid) {
            // A storage without cells waits, PENDING, for `neoctl add`.
            if listed != Some(NodeState::Pending) && listed != Some(NodeState::Running) {
                return Err(format!(
                    "primary {} lists {} ({nid}) as {listed:?}",
                    w.label(pi),
                    w.label(i)
                ));
            }
            continue;
        }
        if !s.is_operational() {
            return Err(format!("{} ({nid}) is not operational", w.label(i)));
        }
        if listed != Some(NodeState::Running) {
            return Err(format!(
                "primary {} lists {} ({nid}) as {listed:?}",
                w.label(pi),
                w.label(i)
            ));
        }
        by_nid.insert(nid, s);
    }
    let np = pt.partitions();
    for t in txns {
        // Where the transaction is, on each readable cell it concerns: (node, what, present).
        let mut seen: Vec<(Nid, String, bool)> = Vec::new();
        for (nid, s) in &by_nid {
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

pub fn run(opts: &RunOptions, plan: &Plan) -> RunReport {
    let history = opts.scenario == Scenario::Verification;
    let (mut w, txns) = cluster_world(opts, plan, history);
    let mut rng = rng::stream(opts.seed, 4);
    let safety =
        Duration::from_secs(30) + rng::duration(&mut rng, Duration::ZERO, Duration::from_secs(90));
    w.start_faults(Injector::new(plan.swarm.clone(), rng::stream(opts.seed, 3)));
    let outcome = w.run_for(safety).and_then(|()| {
        // Liveness: every storage comes back (the split-brain rule waits for them), but a
        // master may stay down for good.
        let mut keep_down = vec![];
        if plan.masters >= 2 && rng::chance(&mut rng, 0.4) {
            keep_down.push(rng::below(&mut rng, plan.masters as u64) as usize);
        }
        let healed = w.heal_all(&keep_down);
        w.run_until(healed, |_| false)?;
        let deadline = healed + LIVENESS_BOUND;
        let t = txns.clone();
        if !w.run_until(deadline, converged_for(STABLE_FOR, move |w| cluster_converged(w, &t)))? {
            if super::disk_check::lost_to_a_wipe(&w).is_some() {
                // Data lost with a wiped disk: waiting for it is right; safety still held.
                return Ok(());
            }
            let why = cluster_converged(&w, &txns).err().unwrap_or_else(|| "not for long enough".into());
            return Err(Failure {
                at: w.now(),
                what: format!("liveness: the cluster is not RUNNING and verified, stable for {STABLE_FOR:?}, within {LIVENESS_BOUND:?} of healing: {why}"),
            });
        }
        Ok(())
    });
    RunReport {
        shape: plan.shape(),
        swarm: plan.swarm.to_string(),
        failure: outcome.err(),
        trace_hash: w.trace.hash(),
        sim_time: w.now(),
        steps: w.trace.steps(),
    }
}
