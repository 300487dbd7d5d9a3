//! The failover scenario: elections with storages. 2, 3 or 5 masters and 1-3 storages
//! under the swarm's faults; the liveness phase keeps the primary down for good in part of
//! the seeds, so the others must elect and restart the cluster without it. Unlike the
//! masters-only election scenario, a primary here leaves RECOVERING, so "never two
//! primaries that can serve" (`check::election_safety`) and "the operational storages all
//! serve under one primary" (`history::primary_history`, judged from the storages, not from
//! the election's own comparison of claims) can fail.

use super::recovery::{run_cluster, Setup};
use crate::sim::scenario::{Plan, RunOptions, RunReport};

pub fn run(opts: &RunOptions, plan: &Plan) -> RunReport {
    let setup = Setup {
        primary_down: true,
        ..Setup::default()
    };
    run_cluster(opts, plan, &setup)
}
