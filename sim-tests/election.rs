//! Election scenarios, run by `cargo test` over seed ranges (`NEO_SIM_SEEDS` seeds from
//! `NEO_SIM_SEED_START`): clusters of 1, 2, 3 and 5 masters elect one primary; a crashed or
//! partitioned primary is replaced within a bound; partitions and clogs heal; runs are
//! deterministic; and the sweep catches each election mutant.
//!
//! Every failure names its seed and the `neosim replay` command that reproduces it.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::time::Duration;

use neo::actors::master::election::Role;
use neo::sim::check::{election_converged, election_converged_among};
use neo::sim::faults::Swarm;
use neo::sim::scenario::{
    converged_for, election_world, primary, run_election_with, RunOptions, Scenario,
};
use neo::sim::sweep::run_checked;
use neo::sim::World;

use common::seeds;

/// Panic with the seed and how to look at it.
fn fail(seed: u64, masters: usize, what: &str) -> ! {
    panic!(
        "seed {seed} ({masters} masters) failed: {what}\n  trace it: neosim replay --scenario election --seed {seed} --masters {masters} --trace \
         (this test scripts its faults; the replay shows the same cluster under the swarm)"
    )
}

/// Run until `cond` holds, within `bound` of virtual time; the world's invariants are
/// checked at every step.
fn expect(
    w: &mut World,
    masters: usize,
    bound: Duration,
    what: &str,
    cond: impl FnMut(&World) -> bool,
) {
    let deadline = w.now() + bound;
    match w.run_until(deadline, cond) {
        Ok(true) => {}
        Ok(false) => fail(w.seed(), masters, &format!("not within {bound:?}: {what}")),
        Err(f) => fail(
            w.seed(),
            masters,
            &format!("{} at {:.3}s", f.what, f.at.as_secs_f64()),
        ),
    }
}

/// A cluster without faults, run until every master has started (they start at random
/// times within 10 s).
fn calm_world(seed: u64, masters: usize) -> World {
    let mut w = election_world(seed, masters, &Swarm::calm(), None, false);
    expect(
        &mut w,
        masters,
        Duration::from_secs(11),
        "every master started",
        |w| w.nodes.iter().all(|n| n.is_up()),
    );
    w
}

const STABLE: Duration = Duration::from_secs(5);

#[test]
fn swarm_sweep_finds_no_failure() {
    common::sweep_passes(Scenario::Election, 1000);
}

/// Seeds that once found a bug (see BUGS.md). The code has changed since, so they no longer
/// replay the same run, but they stay in every test run.
const REGRESSIONS: &[u64] = &[15, 1286, 7097, 38168];

#[test]
fn regression_seeds_pass() {
    common::regressions_pass(Scenario::Election, REGRESSIONS);
}

#[test]
fn one_two_three_and_five_masters_elect_exactly_one_primary() {
    for masters in [1, 2, 3, 5] {
        for seed in seeds(50) {
            let mut w = calm_world(seed, masters);
            expect(
                &mut w,
                masters,
                Duration::from_secs(30),
                "one primary, every other master its secondary",
                converged_for(STABLE, election_converged),
            );
            let p = primary(&w).expect("converged");
            // With true clocks and no faults the oldest claim is the first master to start,
            // and it must win.
            let first = (0..masters).min_by_key(|i| w.nodes[*i].started_at).unwrap();
            assert_eq!(
                p, first,
                "seed {seed}: the primary is not the oldest claimant"
            );
        }
    }
}

#[test]
fn crashed_primary_is_replaced_and_rejoins_as_secondary() {
    for masters in [2, 3, 5] {
        for seed in seeds(40) {
            let mut w = calm_world(seed, masters);
            expect(
                &mut w,
                masters,
                Duration::from_secs(40),
                "a first primary",
                converged_for(STABLE, election_converged),
            );
            let old = primary(&w).expect("converged");
            w.crash(old);
            // The others notice at once (connections reset), try the old primary and each
            // other, then claim: a new primary among them within a few seconds.
            expect(
                &mut w,
                masters,
                Duration::from_secs(15),
                "a new primary among the survivors",
                |w| primary(w).is_some_and(|p| p != old) && election_converged(w).is_ok(),
            );
            let new = primary(&w).unwrap();
            // Back with a fresh, younger claim, the old primary must follow the new one.
            w.restart_after(old, Duration::from_secs(1));
            expect(
                &mut w,
                masters,
                Duration::from_secs(30),
                "the old primary rejoins as a secondary",
                |w| w.nodes[old].is_up() && election_converged(w).is_ok(),
            );
            assert_eq!(
                primary(&w),
                Some(new),
                "seed {seed}: the restarted master took over"
            );
            let role = w.nodes[old].master().unwrap().role().clone();
            assert!(
                matches!(role, Role::Secondary(s) if s.identified),
                "seed {seed}"
            );
        }
    }
}

#[test]
fn partitioned_primary_is_replaced_and_the_cluster_reunites() {
    for masters in [3, 5] {
        for seed in seeds(40) {
            let mut w = calm_world(seed, masters);
            expect(
                &mut w,
                masters,
                Duration::from_secs(40),
                "a first primary",
                converged_for(STABLE, election_converged),
            );
            let old = primary(&w).expect("converged");
            w.partition(&[old], false);
            // The majority notices through idle detection (a dozen seconds), then elects.
            expect(
                &mut w,
                masters,
                Duration::from_secs(45),
                "a new primary on the majority side",
                |w| {
                    let others = |i: usize| i != old;
                    election_converged_among(w, others).is_ok()
                        && w.masters()
                            .any(|(i, m)| i != old && matches!(m.role(), Role::Primary(_)))
                },
            );
            // The isolated master still claims with its old timestamp, so once the
            // partition heals the older claim wins again; either way, exactly one primary.
            w.heal_partitions();
            expect(
                &mut w,
                masters,
                Duration::from_secs(60),
                "one primary after healing",
                converged_for(STABLE, election_converged),
            );
        }
    }
}

#[test]
fn partitions_and_clogs_heal_into_one_primary() {
    for seed in seeds(300) {
        // Only network faults, always on, at the swarm's rates.
        let mut swarm = Swarm::draw(&mut neo::rng::stream(seed, 2));
        let defaults = Swarm::draw(&mut neo::rng::stream(seed ^ 0x5eed, 2));
        swarm.crash = None;
        swarm.pause = None;
        swarm.clock_jump = None;
        swarm.partition = swarm
            .partition
            .or(defaults.partition)
            .or(Some(neo::sim::faults::Rate {
                per_tick: 0.05,
                min: Duration::from_millis(500),
                max: Duration::from_secs(30),
            }));
        swarm.clog = swarm.clog.or(Some(neo::sim::faults::Rate {
            per_tick: 0.05,
            min: Duration::from_millis(50),
            max: Duration::from_secs(10),
        }));
        let opts = RunOptions::new(Scenario::Election, seed);
        let report = run_election_with(&opts, swarm);
        if let Some(f) = report.failure {
            panic!(
                "seed {seed}: {} at {:.3}s\n  shape: {}; swarm: {}",
                f.what,
                f.at.as_secs_f64(),
                report.shape,
                report.swarm
            );
        }
    }
}

#[test]
fn runs_are_deterministic() {
    let mut hashes = std::collections::BTreeSet::new();
    let range = seeds(30);
    let count = range.end - range.start;
    for seed in range {
        let opts = RunOptions::new(Scenario::Election, seed);
        let (report, failed) = run_checked(&opts, true);
        assert_eq!(
            failed,
            None,
            "seed {seed}; replay: {}",
            opts.replay_command()
        );
        hashes.insert(report.trace_hash);
    }
    // Different seeds are different runs.
    assert!(
        hashes.len() as u64 > count * 5 / 6,
        "only {} distinct trace hashes in {count} seeds",
        hashes.len()
    );
}

#[test]
fn each_election_mutant_is_caught_within_1000_seeds() {
    common::mutants_are_caught(Scenario::Election);
}
