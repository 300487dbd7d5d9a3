//! Clients committing in the simulator (`cargo test`, over `NEO_SIM_SEEDS` seeds from
//! `NEO_SIM_SEED_START`): 2-4 clients run the list-append workload on 1-3 masters and 2-4
//! storages (replicas 0-2) under the swarm's faults and faults aimed at the commit path.
//! After every step, the recovery invariants; at the end of every seed, the clients'
//! history (snapshot isolation, checked reads serializable, nothing acknowledged lost,
//! nothing uncommitted read) and their invalidations (commit order, exact objects, none
//! missing); once faults heal, every client commits again and the workload drains.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use neo::sim::Scenario;

#[test]
fn commits_sweep_finds_no_failure() {
    common::sweep_passes(Scenario::Commits, 200);
}

/// Seeds that found bugs while this scenario was built.
#[test]
fn commits_regression_seeds_pass() {
    common::regressions_pass(Scenario::Commits, &[0, 1, 2]);
}
