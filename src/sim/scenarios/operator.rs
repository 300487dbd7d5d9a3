//! The operator scenario: recovery with the admin node and an operator that runs neoctl's
//! commands through it (add, tweak, drop, kill, set replicas, set cluster STOPPING, and
//! `start` when no partition can hide a running primary) at random moments, under the
//! swarm's faults. Every invariant of recovery holds; once faults heal, the operator
//! restarts the nodes it stopped and the cluster must be RUNNING again; in part of the
//! seeds it then stops the cluster, which must end STOPPED.

use super::recovery::{run_cluster, Setup};
use crate::sim::scenario::{Plan, RunOptions, RunReport};

pub fn run(opts: &RunOptions, plan: &Plan) -> RunReport {
    let setup = Setup {
        operator: true,
        ..Setup::default()
    };
    run_cluster(opts, plan, &setup)
}
