//! Scripted runs: a cluster driven through a fixed sequence of faults (rather than the
//! swarm's) and expectations, named so that `neosim replay --script NAME` replays exactly
//! the run a test made. Each is a pure function of (script, seed, masters).

use std::time::Duration;

use super::check::{election_converged, election_converged_among};
use super::faults::{Rate, Swarm};
use super::net::NodeIdx;
use super::scenario::{
    converged_for, election_world, primary, run_election_with, RunOptions, Scenario,
};
use super::world::World;
use crate::actors::master::election::Role;

/// (name, what it does).
pub const SCRIPTS: &[(&str, &str)] = &[
    (
        "elect",
        "masters without faults elect the oldest claimant, the others follow it",
    ),
    (
        "crash-primary",
        "the primary crashes: another is elected; the old one rejoins as a secondary",
    ),
    (
        "partition-primary",
        "the primary is cut off: the majority elects another; after healing, one primary",
    ),
    (
        "network-only",
        "the election scenario with partitions and clogs always on, and no other fault",
    ),
];

/// The script's canonical name.
pub fn script(name: &str) -> Result<&'static str, String> {
    SCRIPTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, _)| *n)
        .ok_or_else(|| {
            let names: Vec<&str> = SCRIPTS.iter().map(|(n, _)| *n).collect();
            format!("unknown script {name:?} (one of {})", names.join(", "))
        })
}

/// The command that replays a scripted run.
pub fn replay_command(name: &str, seed: u64, masters: usize) -> String {
    let mut cmd = format!("neosim replay --scenario election --script {name} --seed {seed}");
    if name != "network-only" {
        cmd += &format!(" --masters {masters}");
    }
    cmd
}

/// What a scripted run did.
#[derive(Clone, Debug)]
pub struct ScriptReport {
    pub failure: Option<String>,
    pub trace_hash: u64,
    pub sim_time: Duration,
    pub steps: u64,
}

const STABLE: Duration = Duration::from_secs(5);

/// Run until `cond` holds within `bound`; the world's invariants are checked at each step.
fn expect(
    w: &mut World,
    bound: Duration,
    what: &str,
    cond: impl FnMut(&World) -> bool,
) -> Result<(), String> {
    let deadline = w.now() + bound;
    match w.run_until(deadline, cond) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("not within {bound:?}: {what}")),
        Err(f) => Err(format!("{} at {:.3}s", f.what, f.at.as_secs_f64())),
    }
}

fn elect(w: &mut World, masters: usize) -> Result<(), String> {
    expect(
        w,
        Duration::from_secs(30),
        "one primary, every other master its secondary",
        converged_for(STABLE, election_converged),
    )?;
    let p = primary(w).ok_or("no primary")?;
    // With true clocks and no faults the oldest claim is the first master to start, and it
    // must win.
    let first = (0..masters)
        .min_by_key(|i| w.nodes[*i].started_at)
        .ok_or("no master")?;
    if p != first {
        return Err(format!(
            "the primary {} is not the oldest claimant {}",
            w.label(p),
            w.label(first)
        ));
    }
    Ok(())
}

/// Wait for the first election to settle; the primary it made.
fn first_primary(w: &mut World) -> Result<NodeIdx, String> {
    expect(
        w,
        Duration::from_secs(40),
        "a first primary",
        converged_for(STABLE, election_converged),
    )?;
    Ok(primary(w).ok_or("no primary")?)
}

fn crash_primary(w: &mut World) -> Result<(), String> {
    let old = first_primary(w)?;
    w.crash(old);
    // The others notice at once (connections reset), try the old primary and each other,
    // then claim: a new primary among them within a few seconds.
    expect(
        w,
        Duration::from_secs(15),
        "a new primary among the survivors",
        |w| primary(w).is_some_and(|p| p != old) && election_converged(w).is_ok(),
    )?;
    let new = primary(w).ok_or("no primary")?;
    // Back with a fresh, younger claim, the old primary must follow the new one.
    w.restart_after(old, Duration::from_secs(1));
    expect(
        w,
        Duration::from_secs(30),
        "the old primary rejoins as a secondary",
        |w| w.nodes[old].is_up() && election_converged(w).is_ok(),
    )?;
    if primary(w) != Some(new) {
        return Err("the restarted master took over".into());
    }
    match w.nodes[old].master().map(|m| m.role()) {
        Some(Role::Secondary(s)) if s.identified => Ok(()),
        other => Err(format!(
            "the old primary is not an identified secondary: {other:?}"
        )),
    }
}

fn partition_primary(w: &mut World) -> Result<(), String> {
    let old = first_primary(w)?;
    w.partition(&[old], false);
    // The majority notices through idle detection (a dozen seconds), then elects.
    expect(
        w,
        Duration::from_secs(45),
        "a new primary on the majority side",
        |w| {
            election_converged_among(w, |i| i != old).is_ok()
                && w.masters()
                    .any(|(i, m)| i != old && matches!(m.role(), Role::Primary(_)))
        },
    )?;
    // The isolated master still claims with its old timestamp, so once the partition
    // heals the older claim wins again; either way, exactly one primary.
    w.heal_partitions();
    expect(
        w,
        Duration::from_secs(60),
        "one primary after healing",
        converged_for(STABLE, election_converged),
    )
}

/// The swarm of `network-only`: only network faults, partitions and clogs always on.
pub fn network_only_swarm(seed: u64) -> Swarm {
    let mut swarm = Swarm::draw(&mut crate::rng::stream(seed, 2));
    let defaults = Swarm::draw(&mut crate::rng::stream(seed ^ 0x5eed, 2));
    swarm.crash = None;
    swarm.pause = None;
    swarm.clock_jump = None;
    swarm.read_errors = 0.0;
    swarm.write_errors = 0.0;
    swarm.slow_io = None;
    swarm.wipe = None;
    swarm.swap = None;
    swarm.partition = swarm.partition.or(defaults.partition).or(Some(Rate {
        per_tick: 0.05,
        min: Duration::from_millis(500),
        max: Duration::from_secs(30),
    }));
    swarm.clog = swarm.clog.or(Some(Rate {
        per_tick: 0.05,
        min: Duration::from_millis(50),
        max: Duration::from_secs(10),
    }));
    swarm
}

/// Run a script (`masters` is ignored by `network-only`, which draws it from the seed).
pub fn run_script(name: &str, seed: u64, masters: usize, trace: bool) -> ScriptReport {
    if name == "network-only" {
        let mut opts = RunOptions::new(Scenario::Election, seed);
        opts.trace = trace;
        let r = run_election_with(&opts, network_only_swarm(seed));
        return ScriptReport {
            failure: r
                .failure
                .map(|f| format!("{} at {:.3}s", f.what, f.at.as_secs_f64())),
            trace_hash: r.trace_hash,
            sim_time: r.sim_time,
            steps: r.steps,
        };
    }
    // A cluster without faults, run until every master has started (within 10 s).
    let mut w = election_world(seed, masters, &Swarm::calm(), None, trace);
    let outcome = expect(
        &mut w,
        Duration::from_secs(11),
        "every master started",
        |w| w.nodes.iter().all(|n| n.is_up()),
    )
    .and_then(|()| match name {
        "elect" => elect(&mut w, masters),
        "crash-primary" => crash_primary(&mut w),
        "partition-primary" => partition_primary(&mut w),
        other => script(other).map(|_| ()),
    });
    ScriptReport {
        failure: outcome.err(),
        trace_hash: w.trace.hash(),
        sim_time: w.now(),
        steps: w.trace.steps(),
    }
}
