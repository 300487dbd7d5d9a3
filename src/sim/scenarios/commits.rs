//! The commits scenario: clients commit list-append transactions (`sim::workload`) on a
//! cluster of 1-3 masters and 2-4 storages (replicas 0-2) under the swarm's faults plus
//! faults aimed at the commit path (client crash or disconnect between vote and finish,
//! primary crash during finish, storage crashes during vote and finish).
//!
//! After every step, the recovery scenario's invariants. At the end of every seed, once
//! faults healed, every client committed again and the workload drained: every object's
//! full history and every TID read from the storages (one UP_TO_DATE cell per partition)
//! judged with the clients' history by `isolation::check` (snapshot isolation, checked
//! reads serializable, nothing acknowledged lost, nothing uncommitted seen), and the
//! clients' invalidations (`check_invalidations`). A seed where a wiped disk took the last
//! copy of some data is exempt from what needs that data (`disk_check::lost_to_a_wipe`).

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use super::recovery::cluster_world;
use crate::actors::client::Notice;
use crate::actors::Actor;
use crate::db::{partition_of, Load};
use crate::proto::{CellState, ClusterState, Oid, Tid};
use crate::rng::{self, ChaCha8Rng};
use crate::sim::builder::{add_clients, master_address, MakeClient};
use crate::sim::check;
use crate::sim::disk_check::lost_to_a_wipe;
use crate::sim::faults::Injector;
use crate::sim::isolation::{self, FinalHistory, Status, TxnRecord, Val};
use crate::sim::net::NodeIdx;
use crate::sim::scenario::{
    converged_for, Plan, RunOptions, RunReport, LIVENESS_BOUND, STABLE_FOR,
};
use crate::sim::workload::{decode, NoticeRecord, Strike, Targeted, Workload, WorkloadConfig};
use crate::sim::world::{Failure, World};

/// The client role's actor.
fn client_actor() -> MakeClient {
    Rc::new(|cfg| Box::new(crate::actors::client::Client::new(cfg)) as Box<dyn Actor>)
}

/// Run the world and the workload together until `done`, the deadline, or a failure.
fn drive(
    w: &mut World,
    wl: &mut Workload,
    rng: &mut ChaCha8Rng,
    deadline: Duration,
    mut done: impl FnMut(&World, &Workload) -> bool,
) -> Result<bool, Failure> {
    loop {
        wl.step(w);
        for s in wl.due_strikes(w.now()) {
            strike(w, rng, s);
        }
        wl.step(w);
        if done(w, wl) {
            return Ok(true);
        }
        if w.now() >= deadline {
            return Ok(false);
        }
        // Wake for the workload's next start or strike, but at least a little later (a
        // slot due now may wait for its client to come back).
        let next = [wl.next_wake(), wl.next_strike()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(deadline)
            .max(w.now() + Duration::from_millis(5))
            .min(deadline);
        w.run_until(next, |w| w.has_client_output())?;
    }
}

fn strike(w: &mut World, rng: &mut ChaCha8Rng, s: Strike) {
    let down = rng::duration(rng, Duration::from_millis(100), Duration::from_secs(10));
    let victim = match s {
        Strike::CrashClient(n) => Some(n),
        Strike::ResetClient(n) => {
            w.reset_connections_of(n);
            None
        }
        Strike::CrashPrimary => check::primary(w),
        Strike::CrashStorage => {
            let up: Vec<NodeIdx> = w
                .storages()
                .filter(|(i, _)| w.nodes[*i].is_up())
                .map(|(i, _)| i)
                .collect();
            (!up.is_empty()).then(|| *rng::pick(rng, &up))
        }
    };
    if let Some(n) = victim.filter(|n| w.nodes[*n].is_up()) {
        w.crash(n);
        w.restart_after(n, down);
    }
}

pub fn run(opts: &RunOptions, plan: &Plan) -> RunReport {
    let (mut w, _) = cluster_world(opts, plan, false);
    let mut rng = rng::stream(opts.seed, 20);
    let masters: Vec<_> = (0..plan.masters).map(master_address).collect();
    let count = rng::between(&mut rng, 2, 4) as usize;
    let clients = add_clients(
        &mut w,
        &mut rng,
        &plan.swarm,
        &masters,
        count,
        client_actor(),
    );
    let mut cfg = WorkloadConfig::draw(&mut rng);
    cfg.draw_undo(&mut rng::stream(opts.seed, 23));
    let mut wl = Workload::new(
        cfg,
        rng::stream(opts.seed, 21),
        rng::stream(opts.seed, 24),
        &clients,
    );
    let targeted = Targeted::draw(&mut rng);
    let swarm = format!(
        "{}; workload {:?}; aimed {:?}",
        plan.swarm,
        wl.config(),
        targeted
    );
    wl.set_targeted(targeted);
    let mut strikes = rng::stream(opts.seed, 22);
    let safety =
        Duration::from_secs(20) + rng::duration(&mut rng, Duration::ZERO, Duration::from_secs(40));
    w.start_faults(Injector::new(plan.swarm.clone(), rng::stream(opts.seed, 3)));
    let mut summary = String::new();
    let outcome = (|| {
        drive(&mut w, &mut wl, &mut strikes, safety, |_, _| false)?;
        // Liveness: faults heal; a master may stay down for good.
        wl.calm();
        let mut keep_down = vec![];
        if plan.masters >= 2 && rng::chance(&mut rng, 0.3) {
            keep_down.push(rng::below(&mut rng, plan.masters as u64) as usize);
        }
        let healed = w.heal_all(&keep_down);
        drive(&mut w, &mut wl, &mut strikes, healed, |_, _| false)?;
        wl.mark_progress();
        let deadline = w.now() + LIVENESS_BOUND;
        if !drive(&mut w, &mut wl, &mut strikes, deadline, |_, wl| {
            wl.progressed()
        })? {
            if lost_to_a_wipe(&w).is_some() {
                return Ok(());
            }
            return Err(Failure {
                at: w.now(),
                what: format!(
                    "liveness: not every client committed within {LIVENESS_BOUND:?} of healing ({} calls made; in progress: {})",
                    wl.calls(),
                    wl.in_progress(&w)
                ),
            });
        }
        wl.stop();
        let deadline = w.now() + LIVENESS_BOUND;
        if !drive(&mut w, &mut wl, &mut strikes, deadline, |_, wl| {
            wl.drained()
        })? {
            return Err(Failure {
                at: w.now(),
                what: format!(
                    "liveness: the workload did not drain within {LIVENESS_BOUND:?}: {}",
                    wl.in_progress(&w)
                ),
            });
        }
        // Unlocks may still be on their way: wait for a readable copy of every partition.
        let deadline = w.now() + LIVENESS_BOUND;
        if !w.run_until(deadline, converged_for(STABLE_FOR, readable))? {
            return Err(Failure {
                at: w.now(),
                what: format!(
                    "liveness: no UP_TO_DATE copy of every partition: {}",
                    readable(&w).err().unwrap_or_default()
                ),
            });
        }
        wl.step(&mut w);
        final_checks(&w, &wl, &mut summary)
    })();
    RunReport {
        shape: format!("{}; {count} clients", plan.shape()),
        summary,
        swarm,
        failure: outcome.err(),
        trace_hash: w.trace.hash(),
        sim_time: w.now(),
        steps: w.trace.steps(),
    }
}

/// The cluster runs and every partition has an UP_TO_DATE cell on a running, operational
/// storage: returns, per partition, the node to read it from.
fn readers(w: &World) -> Result<(u32, Vec<NodeIdx>), String> {
    let p = check::primary(w).ok_or("no primary")?;
    let m = w.nodes[p].master().expect("a master");
    if m.cluster_state() != Some(ClusterState::Running) {
        return Err(format!("the cluster is {:?}", m.cluster_state()));
    }
    let pt = m.primary_table().ok_or("no table")?;
    let mut out = Vec::new();
    for part in 0..pt.partitions() {
        let node = pt
            .row(part)
            .filter(|(_, s)| *s == CellState::UpToDate)
            .find_map(|(nid, _)| {
                w.storages().find(|(i, s)| {
                    w.nodes[*i].is_up() && s.nid() == Some(nid) && s.is_operational()
                })
            })
            .map(|(i, _)| i)
            .ok_or_else(|| format!("partition {part} has no UP_TO_DATE cell that serves"))?;
        out.push(node);
    }
    Ok((pt.partitions(), out))
}

fn readable(w: &World) -> Result<(), String> {
    readers(w).map(|_| ())
}

/// What the storages hold at the end: every object's history, every TID, and which
/// workload transaction each TID's description names (read only if `names`).
type Finals = (FinalHistory, BTreeSet<Tid>, Option<BTreeMap<Tid, usize>>);

/// Every object's history and every TID, as the storages hold them, and which workload
/// transaction each TID's description names (a pack commits no transaction of its own:
/// a TID that names none is left to the checker, as any orphan).
fn read_finals(w: &World, keys: &[Oid], names: bool) -> Result<Finals, String> {
    let (partitions, by_part) = readers(w)?;
    let mut finals = FinalHistory::new();
    for &oid in keys {
        let node = by_part[partition_of(oid.0, partitions) as usize];
        let db = w.nodes[node].storage().expect("a storage").backend();
        let label = w.label(node);
        let Some(mut serials) = db
            .history(oid, 0, 1 << 20)
            .map_err(|e| format!("{label}: history of {oid}: {e}"))?
        else {
            continue;
        };
        serials.reverse();
        let mut revisions = Vec::new();
        for (serial, _) in serials {
            let list = match db
                .load(oid, Some(serial), None)
                .map_err(|e| format!("{label}: load {oid} at {serial}: {e}"))?
            {
                Load::Found(l) => {
                    let data = if l.compression == 1 {
                        use std::io::Read as _;
                        let mut out = Vec::new();
                        flate2::read::ZlibDecoder::new(&l.data[..])
                            .read_to_end(&mut out)
                            .map_err(|e| format!("{label}: {oid} at {serial}: bad zlib: {e}"))?;
                        out
                    } else {
                        l.data
                    };
                    decode(&data)
                        .ok_or_else(|| format!("{label}: {oid} at {serial}: not a list"))?
                }
                other => return Err(format!("{label}: {oid} at {serial}: {other:?}")),
            };
            revisions.push((serial, list));
        }
        finals.insert(oid, revisions);
    }
    let mut tids = BTreeSet::new();
    let mut named = BTreeMap::new();
    for (p, &node) in by_part.iter().enumerate() {
        let db = w.nodes[node].storage().expect("a storage").backend();
        let t = db
            .tids(0, 1 << 20, &[p as u32])
            .map_err(|e| format!("{}: tids: {e}", w.label(node)))?;
        // Only unknown outcomes need the names (one query per TID).
        for &tid in t.iter().filter(|_| names) {
            let info = db
                .transaction(tid)
                .map_err(|e| format!("{}: transaction {tid}: {e}", w.label(node)))?
                .ok_or_else(|| {
                    format!("{}: transaction {tid} listed but not found", w.label(node))
                })?;
            let id = std::str::from_utf8(&info.meta.description)
                .ok()
                .and_then(|d| d.strip_prefix("txn "))
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(id) = id {
                named.insert(tid, id);
            }
        }
        tids.extend(t);
    }
    Ok((finals, tids, names.then_some(named)))
}

fn final_checks(w: &World, wl: &Workload, summary: &mut String) -> Result<(), Failure> {
    let fail = |what: String| Failure { at: w.now(), what };
    if let Some(why) = lost_to_a_wipe(w) {
        // What the checks need may be gone for good; safety held until then.
        *summary = format!("history not checked: {why}");
        return Ok(());
    }
    if let Some(first) = wl.duplicates().first() {
        return Err(fail(format!(
            "ids given twice: {} times; first: {first}",
            wl.duplicates().len()
        )));
    }
    let unknown = wl.records.iter().any(|r| r.status == Status::Unknown);
    let (finals, tids, named) =
        read_finals(w, wl.keys(), unknown).map_err(|e| fail(format!("final read: {e}")))?;
    let extras = isolation::Extras {
        named,
        packs: wl.packs.clone(),
    };
    let verdict = isolation::check_with(&wl.records, &finals, &tids, &extras);
    let notices: usize = wl.notices.iter().map(Vec::len).sum();
    let undos = wl.records.iter().filter(|r| r.undo.is_some());
    let undone = undos
        .clone()
        .filter(|r| matches!(r.status, Status::Committed(_)))
        .count();
    let undos = undos.count();
    let (packed, packs) = (wl.packed, wl.packs.len());
    *summary = format!(
        "{} transactions: {} committed, {} failed, {} unknown ({} of them committed); {} revisions of {} objects; {} reads ({} checked); {notices} notices; {} calls; {undone} undos committed of {undos}; {packed} packs done of {packs}",
        wl.records.len(),
        verdict.committed,
        verdict.failed,
        verdict.unknown,
        verdict.unknown_committed,
        verdict.revisions,
        verdict.objects,
        verdict.reads,
        verdict.checked_reads,
        wl.calls()
    );
    if let Some(first) = verdict.anomalies.first() {
        return Err(fail(format!(
            "isolation: {} anomalies; first: {first}",
            verdict.anomalies.len()
        )));
    }
    let named = extras.named.as_ref();
    check_invalidations(&wl.records, &wl.notices, &finals, &tids, named).map_err(fail)
}

/// Which committed transaction each TID is: its client and the objects it appended to or
/// undid, deletions excepted (transactions whose outcome was unknown count where the transaction tables name
/// them, or else where their values appear).
fn commits(
    records: &[TxnRecord],
    finals: &FinalHistory,
    named: Option<&BTreeMap<Tid, usize>>,
) -> BTreeMap<Tid, (usize, BTreeSet<Oid>)> {
    let by_id: BTreeMap<usize, Tid> = named
        .into_iter()
        .flatten()
        .map(|(&tid, &id)| (id, tid))
        .collect();
    // Where each value first appears.
    let mut first: BTreeMap<Val, Tid> = BTreeMap::new();
    for revisions in finals.values() {
        for (serial, list) in revisions {
            for v in list {
                first.entry(*v).or_insert(*serial);
            }
        }
    }
    let mut out = BTreeMap::new();
    for r in records {
        let tid = match r.status {
            Status::Committed(tid) => Some(tid),
            Status::Unknown => by_id
                .get(&r.id)
                .copied()
                .or_else(|| r.appends.iter().find_map(|(_, v)| first.get(v).copied())),
            Status::Failed => None,
        };
        if let Some(tid) = tid {
            // An undo invalidates every object it wrote, a deletion (an undone creation)
            // too: unlike NEO's InvalidateObjects, ours names deleted objects, so that no
            // cache keeps answering the revision a deletion ended.
            let undone = r.undo.iter().flat_map(|u| u.entries.iter().map(|e| e.0));
            let oids = r.appends.iter().map(|(o, _)| *o).chain(undone).collect();
            out.insert(tid, (r.client, oids));
        }
    }
    out
}

/// A client process's invalidations between two reconnections: (process, the TID it
/// started from if told, the invalidations as (tid, oids, when)).
type Span<'a> = (u32, Option<Tid>, Vec<(Tid, &'a [Oid], Duration)>);

/// For each client process and each span between reconnections (`InvalidateAll`): the
/// invalidations' TIDs strictly increase, each names exactly the objects the transaction
/// with that TID appended to (a readCurrent-only object is no change), and no
/// other client's commit inside the span is missing.
pub fn check_invalidations(
    records: &[TxnRecord],
    notices: &[Vec<NoticeRecord>],
    finals: &FinalHistory,
    tids: &BTreeSet<Tid>,
    named: Option<&BTreeMap<Tid, usize>>,
) -> Result<(), String> {
    let commits = commits(records, finals, named);
    for (ci, list) in notices.iter().enumerate() {
        // Spans: (process, lower bound exclusive, invalidations).
        let mut spans: Vec<Span> = Vec::new();
        for n in list {
            let new_span = spans.last().is_none_or(|(inc, _, _)| *inc != n.incarnation);
            match &n.notice {
                Notice::InvalidateAll { tid } => spans.push((n.incarnation, *tid, Vec::new())),
                Notice::Invalidate { tid, oids } => {
                    if new_span {
                        spans.push((n.incarnation, None, Vec::new()));
                    }
                    let span = spans.last_mut().expect("pushed");
                    span.2.push((*tid, oids, n.at));
                }
            }
        }
        for (inc, lo, invs) in &spans {
            let mut last = *lo;
            for (tid, oids, at) in invs {
                let whence = format!(
                    "client c{} (process {inc}) at {:.3}s",
                    ci + 1,
                    at.as_secs_f64()
                );
                if last.is_some_and(|l| *tid <= l) {
                    return Err(format!(
                        "invalidations: {whence}: {tid} after {} (not in commit order)",
                        last.expect("some")
                    ));
                }
                last = Some(*tid);
                let named: BTreeSet<Oid> = oids.iter().copied().collect();
                match commits.get(tid) {
                    Some((writer, appended)) => {
                        // Its own commit may come back as an invalidation when the
                        // client reconnected during the finish (the primary then knows
                        // it as a new node): harmless, but it must still be exact.
                        if named != *appended || named.len() != oids.len() {
                            return Err(format!(
                                "invalidations: {whence}: {tid} names {oids:?}, but c{} appended to {appended:?}",
                                writer + 1
                            ));
                        }
                    }
                    None if tids.contains(tid) => {
                        if !named.is_empty() {
                            return Err(format!(
                                "invalidations: {whence}: {tid} names {oids:?}, but that transaction changed no object"
                            ));
                        }
                    }
                    None => {
                        return Err(format!(
                            "invalidations: {whence}: {tid} ({oids:?}) was never committed"
                        ))
                    }
                }
            }
            // Nothing missing between the span's start and its last invalidation.
            let Some(hi) = last else { continue };
            let from = match lo {
                Some(l) => std::ops::Bound::Excluded(*l),
                None => std::ops::Bound::Included(invs[0].0),
            };
            let seen: BTreeSet<Tid> = invs.iter().map(|(t, _, _)| *t).collect();
            for (tid, (writer, appended)) in commits.range((from, std::ops::Bound::Included(hi))) {
                if *writer != ci && !appended.is_empty() && !seen.contains(tid) {
                    return Err(format!(
                        "invalidations: client c{} (process {inc}) missed {tid} (c{} appended to {appended:?}) between {lo:?} and {hi}",
                        ci + 1,
                        writer + 1
                    ));
                }
            }
        }
    }
    Ok(())
}
