//! Election scenarios, run by `cargo test` over seed ranges (`NEO_SIM_SEEDS` seeds from
//! `NEO_SIM_SEED_START`): clusters of 1, 2, 3 and 5 masters elect one primary; a crashed or
//! partitioned primary is replaced within a bound; partitions and clogs heal; runs are
//! deterministic; and the sweep catches each election mutant.
//!
//! Every failure names its seed and the `neosim replay` command that reproduces it.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::collections::BTreeSet;

use neo::sim::scenario::{RunOptions, Scenario};
use neo::sim::sweep::run_checked;

use common::{script_passes, seeds};

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

// The scripted tests: each failure prints the `neosim replay --script` command that replays
// that very run (see `neo::sim::script`).

#[test]
fn one_two_three_and_five_masters_elect_exactly_one_primary() {
    script_passes("elect", &[1, 2, 3, 5], 50);
}

#[test]
fn crashed_primary_is_replaced_and_rejoins_as_secondary() {
    script_passes("crash-primary", &[2, 3, 5], 40);
}

#[test]
fn partitioned_primary_is_replaced_and_the_cluster_reunites() {
    script_passes("partition-primary", &[3, 5], 40);
}

#[test]
fn partitions_and_clogs_heal_into_one_primary() {
    // Only network faults, always on, at the swarm's rates; the seed draws the masters.
    script_passes("network-only", &[0], 300);
}

#[test]
fn runs_are_deterministic() {
    let mut hashes = BTreeSet::new();
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
