//! Recovery under faults (`cargo test`, over `NEO_SIM_SEEDS` seeds from
//! `NEO_SIM_SEED_START`): clusters of 1-3 masters and 1-6 storages with 0-2 replicas start,
//! run, lose and regain nodes through crashes, pauses, partitions, clogs, resets and clock
//! jumps, and must be RUNNING again once faults heal. After every step: partition-table ids
//! only grow on each storage and one id is one table; never two primaries that can both
//! serve; never a primary running on a table older than one a storage holds with readable
//! cells; never a partition without a readable cell; the split-brain rule; what tables
//! say (a cell not readable in a table in effect never readable again in a later one; a
//! primary past RECOVERING shows readable cells only on storages it runs); operational
//! storages all serve under one primary. The hostile peer runs in part of the seeds.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use neo::sim::Scenario;

#[test]
fn recovery_sweep_finds_no_failure() {
    common::sweep_passes(Scenario::Recovery, 1000);
}

#[test]
fn recovery_mutants_are_caught_within_1000_seeds() {
    common::mutants_are_caught(Scenario::Recovery);
}

/// Seeds that found bugs while the recovery scenario was built (BUGS.md lists them).
#[test]
fn recovery_regression_seeds_pass() {
    common::regressions_pass(
        Scenario::Recovery,
        &[
            8, 16, 32, 57, 237, 997, 1809, 2261, 2310, 3290, 3392, 6292, 7019, 8170, 8420, 9781,
            15274, 17898,
        ],
    );
}
