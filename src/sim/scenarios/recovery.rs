//! The cluster scenarios' shared run, and the recovery scenario: masters and storages
//! (SQLite in memory) with the swarm's faults. A new cluster starts (autostart), runs,
//! loses and regains nodes, goes back to recovery when its table stops being operational,
//! and must be RUNNING again once faults heal. (`verification` runs the same way from
//! storages holding scripted history: see `verification.rs`.)
//!
//! Invariants, after every step: at most one primary past RECOVERING; partition-table ids
//! only grow on each storage and one id means one table; a primary past RECOVERING keeps a
//! readable cell in every partition and never runs on a table older than one a storage
//! holds with readable cells of its own; nodes' own consistency checks; what tables say
//! (`history::table_contents`) and who runs the cluster (`history::primary_history`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use super::verification::{self, ScriptedTxn};
use crate::actors::master::election::Role;
use crate::actors::master::Master;
use crate::proto::{CellState, ClusterState, Nid, NodeState, Ptid};
use crate::rng;
use crate::sim::builder::{add_masters, add_storages, Databases, Extras};
use crate::sim::faults::Injector;
use crate::sim::net::NodeIdx;
use crate::sim::scenario::{
    converged_for, Plan, RunOptions, RunReport, LIVENESS_BOUND, STABLE_FOR,
};
use crate::sim::world::{Failure, NodeActor, World};
use crate::sim::{check, history};

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
    let dbs = Databases::new(&mut w, plan.storages);
    let txns = if history {
        verification::prepare(&mut rng::stream(seed, 6), &dbs, plan, w.epoch())
    } else {
        Vec::new()
    };
    add_storages(&mut w, &mut rng, &plan.swarm, &masters, &dbs);
    let txns = Rc::new(txns);
    w.add_invariant(Box::new(check::election_safety));
    w.add_invariant(Box::new(storages_consistent));
    w.add_invariant(Box::new(crate::sim::disk_check::wiped_disks_never_serve));
    w.add_invariant(Box::new(table_watch()));
    w.add_invariant(Box::new(history::table_contents()));
    w.add_invariant(Box::new(history::primary_history()));
    let t = txns.clone();
    w.add_invariant(Box::new(move |w: &World| {
        verification::never_locked_never_committed(w, &t)
    }));
    (w, txns)
}

fn storages_consistent(w: &World) -> Result<(), String> {
    // A storage's memory and disk change only when it handles an event (its disk is
    // wiped or swapped only at a restart, a step that names no single node): after a step
    // on one node, only that node needs reading back from its database.
    for (i, s) in w.storages() {
        if w.stepped().is_some_and(|n| n != i) {
            continue;
        }
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
    verification::outcome_holds(pt, &by_nid, txns)
}

/// The admin node tells operators what the primary knows: the cluster state and the
/// partition table.
fn admin_agrees(w: &World, admin: NodeIdx) -> Result<(), String> {
    let Some(NodeActor::Admin(a)) = &w.nodes[admin].actor else {
        return Err("the admin node is not running".into());
    };
    let Some(p) = check::primary(w).and_then(|i| w.nodes[i].master()) else {
        return Err("no primary".into());
    };
    if a.cluster_state() != p.cluster_state() {
        return Err(format!(
            "the admin node says the cluster is {:?}, the primary {:?}",
            a.cluster_state(),
            p.cluster_state()
        ));
    }
    let (ours, theirs) = (a.partition_table(), p.primary_table());
    if ours.map(|t| (t.ptid(), t.rows())) != theirs.map(|t| (t.ptid(), t.rows())) {
        return Err(format!(
            "the admin node shows table {:?}, the primary has {:?}",
            ours.and_then(|t| t.ptid()),
            theirs.and_then(|t| t.ptid())
        ));
    }
    Ok(())
}

/// The recovery scenario.
pub fn run(opts: &RunOptions, plan: &Plan) -> RunReport {
    run_cluster(opts, plan, &Setup::default())
}

/// What a cluster scenario adds to the shared run.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// Storages start from scripted history (verification).
    pub history: bool,
    /// The master the liveness phase may keep down for good is the primary, not any one.
    pub primary_down: bool,
    /// The admin node and the operator's workload.
    pub operator: bool,
}

/// The cluster scenarios' run: build, a safety phase under the swarm's faults (and the
/// hostile peer, the operator, when on), then a liveness phase where faults heal and the
/// cluster must be RUNNING (or, when the operator stops it at the end, STOPPED).
pub fn run_cluster(opts: &RunOptions, plan: &Plan, setup: &Setup) -> RunReport {
    let (mut w, txns) = cluster_world(opts, plan, setup.history);
    let extra = Extras::add(&mut w, opts, plan, setup);
    let mut rng = rng::stream(opts.seed, 4);
    let safety =
        Duration::from_secs(30) + rng::duration(&mut rng, Duration::ZERO, Duration::from_secs(90));
    w.start_faults(Injector::new(plan.swarm.clone(), rng::stream(opts.seed, 3)));
    let outcome = w.run_for(safety).and_then(|()| {
        // Liveness: every storage comes back (the split-brain rule waits for them), but a
        // master may stay down for good.
        let mut keep_down = vec![];
        if plan.masters >= 2 && rng::chance(&mut rng, 0.4) {
            let any = rng::below(&mut rng, plan.masters as u64) as usize;
            let victim = if setup.primary_down {
                check::primary(&w).unwrap_or(any)
            } else {
                any
            };
            keep_down.push(victim);
        }
        keep_down.extend(extra.stop_at_heal());
        let healed = w.heal_all(&keep_down);
        extra.restart_exited(&mut w, &keep_down);
        w.run_until(healed, |_| false)?;
        if extra.operator.is_some() {
            // A stop told just before healing may still be on its way (operator seed 847):
            // once it has arrived, restart what it stopped.
            w.run_for(Duration::from_secs(5))?;
            extra.restart_exited(&mut w, &keep_down);
        }
        let deadline = healed + LIVENESS_BOUND;
        let t = txns.clone();
        let admin = extra.admin;
        let converged = move |w: &World| {
            cluster_converged(w, &t).and_then(|()| admin.map_or(Ok(()), |a| admin_agrees(w, a)))
        };
        if !w.run_until(deadline, converged_for(STABLE_FOR, converged.clone()))? {
            if crate::sim::disk_check::lost_to_a_wipe(&w).is_some() {
                // Data lost with a wiped disk: waiting for it is right; safety still held.
                return Ok(());
            }
            let why = converged(&w).err().unwrap_or_else(|| "not for long enough".into());
            return Err(Failure {
                at: w.now(),
                what: format!("liveness: the cluster is not RUNNING and verified, stable for {STABLE_FOR:?}, within {LIVENESS_BOUND:?} of healing: {why}"),
            });
        }
        extra.stop_at_the_end(&mut w)
    });
    RunReport {
        summary: String::new(),
        shape: plan.shape(),
        swarm: plan.swarm.to_string(),
        failure: outcome.err(),
        trace_hash: w.trace.hash(),
        sim_time: w.now(),
        steps: w.trace.steps(),
    }
}
