//! The election scenario: masters only, elections under faults; the liveness phase may
//! leave one master (often the primary) down for good, and the others must elect without
//! it.

use std::time::Duration;

use crate::rng;
use crate::sim::builder::{add_hostile, add_masters};
use crate::sim::check;
use crate::sim::faults::{Injector, Swarm};
use crate::sim::scenario::{
    converged_for, plan, RunOptions, RunReport, LIVENESS_BOUND, STABLE_FOR,
};
use crate::sim::world::{Failure, World};

/// A cluster of `masters` masters with the swarm's clocks, starting at random times in the
/// first 10 s. No faults are injected yet.
pub fn election_world(
    seed: u64,
    masters: usize,
    swarm: &Swarm,
    mutant: Option<&'static str>,
    trace: bool,
) -> World {
    let mut w = World::new(seed, swarm.latency.clone(), mutant, trace);
    let mut rng = rng::stream(seed, 5);
    add_masters(
        &mut w,
        &mut rng,
        swarm,
        masters,
        Duration::from_secs(10),
        |_| {},
    );
    w.add_invariant(Box::new(check::election_safety));
    w
}

/// The election scenario with a given fault mix (tests that want only some faults).
pub fn run_election_with(opts: &RunOptions, swarm: Swarm) -> RunReport {
    let seed = opts.seed;
    let plan = plan(opts);
    let masters = plan.masters;
    let mut w = election_world(seed, masters, &swarm, opts.mutant, opts.trace);
    let hostile = plan
        .hostile
        .then(|| add_hostile(&mut w, &mut rng::stream(seed, 7)));
    let mut rng = rng::stream(seed, 4);
    let safety =
        Duration::from_secs(30) + rng::duration(&mut rng, Duration::ZERO, Duration::from_secs(90));
    w.start_faults(Injector::new(swarm.clone(), rng::stream(seed, 3)));
    let outcome = w.run_for(safety).and_then(|()| {
        // Liveness: heal everything, but now and then leave the primary (or any master)
        // down for good, so the others must elect without it.
        let mut keep_down = vec![];
        if masters >= 2 && rng::chance(&mut rng, 0.4) {
            let victim = check::primary(&w).unwrap_or_else(|| rng::below(&mut rng, masters as u64) as usize);
            keep_down.push(victim);
        }
        keep_down.extend(hostile);
        let healed = w.heal_all(&keep_down);
        w.run_until(healed, |_| false)?;
        let deadline = healed + LIVENESS_BOUND;
        if !w.run_until(deadline, converged_for(STABLE_FOR, check::election_converged))? {
            let why = check::election_converged(&w).err().unwrap_or_else(|| "not for long enough".into());
            return Err(Failure {
                at: w.now(),
                what: format!("liveness: no primary stable for {STABLE_FOR:?} within {LIVENESS_BOUND:?} of healing: {why}"),
            });
        }
        Ok(())
    });
    RunReport {
        summary: String::new(),
        shape: plan.shape(),
        swarm: swarm.to_string(),
        failure: outcome.err(),
        trace_hash: w.trace.hash(),
        sim_time: w.now(),
        steps: w.trace.steps(),
    }
}
