//! Verification under faults: storages start from databases holding committed history and
//! transactions a crash interrupted during vote, lock or unlock. Once the cluster runs, a
//! transaction unlocked anywhere is committed on every readable cell, one locked while the
//! lock was in progress is committed everywhere or nowhere, and one never locked is gone
//! everywhere (checked at every step for the last).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use neo::sim::Scenario;

#[test]
fn verification_sweep_finds_no_failure() {
    common::sweep_passes(Scenario::Verification, 1000);
}

#[test]
fn verification_mutant_is_caught_within_1000_seeds() {
    common::mutants_are_caught(Scenario::Verification);
}

#[test]
fn verification_regression_seeds_pass() {
    common::regressions_pass(Scenario::Verification, &[32, 2744, 3905, 4855]);
}
