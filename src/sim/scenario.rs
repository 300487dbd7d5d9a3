//! Scenarios: how a seed becomes a cluster, a fault mix and a run with a safety phase and a
//! liveness phase, and which invariants judge it. `neosim` and `sim-tests` both run them
//! through [`run`].

use std::fmt;
use std::time::Duration;

use super::faults::Swarm;
use super::scenarios;
use super::world::{Failure, World};
use crate::rng;

// Where these lived before the builder and the per-scenario files (tests import them here).
pub use super::builder::{add_masters, master_address, node_clock, CLUSTER};
pub use super::check::primary;
pub use super::scenarios::election::{election_world, run_election_with};

/// Re-introduced bugs (simulation only) that a scenario's sweep must catch:
/// (name, scenario, what it breaks).
pub const MUTANTS: &[(&str, Scenario, &str)] = &[
    ("recovery-no-wait", Scenario::Recovery, "start as soon as the table is operational, without waiting for every node with readable cells"),
    ("pt-outdate-last", Scenario::Recovery, "outdate the last readable cell of a partition when its node is lost"),
    ("recovery-first-table", Scenario::Recovery, "recovery loads the first table a storage reports instead of the newest"),
    ("pt-renumber-loaded", Scenario::Recovery, "recovery renumbers the table it loaded as it was, without the cells it outdated"),
    ("pt-outdate-wrong", Scenario::Recovery, "a storage lost while the cluster runs keeps its cells readable"),
    ("verification-drop-locked", Scenario::Verification, "drop locked transactions instead of committing them"),
    ("ptid-wrap", Scenario::Recovery, "take a peer's partition table id unchecked and increment it with a wrap"),
    ("wiped-disk-serves", Scenario::Recovery, "give a storage restarted with an empty disk the id of a missing storage of the table"),
    ("answer-by-type", Scenario::Verification, "pair an answer with the newest request expecting its packet type, ignoring its id"),
    ("tid-not-monotonic", Scenario::Commits, "take the final TID from the wall clock without the max of the TIDs given before"),
    ("conflict-check-skipped", Scenario::Commits, "a storage takes a store without comparing its serial with the last committed one"),
    ("unlock-before-vote-durable", Scenario::Commits, "a storage answers the vote before the transaction's data is on disk"),
    ("invalidate-before-unlock", Scenario::Commits, "the primary sends invalidations before the storages unlocked the transaction"),
    ("verification-readcurrent", Scenario::Commits, "verification drops transactions whose objects were only readCurrent (NEO 1.6)"),
    ("readcurrent-invalidates", Scenario::Commits, "invalidations name readCurrent-only objects (NEO 1.5.1)"),
    ("abort-after-lock", Scenario::Commits, "a client that disconnects after the lock gets its transaction aborted"),
    ("readcurrent-unchecked", Scenario::Commits, "readCurrent is accepted without checking the serial"),
    ("oid-not-reserved", Scenario::Commits, "the primary hands out OIDs without reserving them on the storages (a new primary starts at the last stored OID)"),
    ("ttid-not-reserved", Scenario::Commits, "the primary hands out TTIDs without reserving them on the storages (a new primary starts at the last committed TID)"),
    ("undo-wrong-serial", Scenario::Commits, "the storage's undo lookup answers the undone TID itself as the serial to restore"),
    ("pack-removes-current", Scenario::Commits, "a pack also deletes each object's newest revision at or before the pack TID"),
    (
        "election-no-yield",
        Scenario::Election,
        "a recovering master never yields to an older claimant",
    ),
    (
        "election-no-reelect",
        Scenario::Election,
        "secondaries never elect again after losing the primary",
    ),
];

/// The mutant's canonical name (the world keeps `&'static str`s).
pub fn mutant(name: &str) -> Result<&'static str, String> {
    MUTANTS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(n, _, _)| *n)
        .ok_or_else(|| {
            let names: Vec<&str> = MUTANTS.iter().map(|(n, _, _)| *n).collect();
            format!("unknown mutant {name:?} (one of {})", names.join(", "))
        })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scenario {
    /// Masters only: elections under faults.
    Election,
    /// Masters and storages: recovery, running, node losses, restarts.
    Recovery,
    /// As recovery, with storages that start holding transactions a crash interrupted in
    /// the middle of their commit.
    Verification,
    /// Elections with storages: 2, 3 or 5 masters and 1-3 storages, so that a primary past
    /// RECOVERING exists and "never two primaries that can serve" can fail; the liveness
    /// phase often keeps the primary down for good.
    Failover,
    /// Recovery with the admin node and an operator running neoctl's commands (add, tweak,
    /// drop, kill, set replicas, set cluster STOPPING, start) at random moments.
    Operator,
    /// Clients committing list-append transactions under faults aimed at the commit path;
    /// the recorded history is checked (isolation, durability, invalidations).
    Commits,
}

impl Scenario {
    pub const ALL: &'static [Scenario] = &[
        Scenario::Election,
        Scenario::Recovery,
        Scenario::Verification,
        Scenario::Failover,
        Scenario::Operator,
        Scenario::Commits,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Election => "election",
            Scenario::Recovery => "recovery",
            Scenario::Verification => "verification",
            Scenario::Failover => "failover",
            Scenario::Operator => "operator",
            Scenario::Commits => "commits",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Scenario, String> {
        Scenario::ALL
            .iter()
            .copied()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                format!("unknown scenario {s:?} (one of {})", names.join(", "))
            })
    }
}

/// One run's inputs. A run is a pure function of these (and the build).
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub scenario: Scenario,
    pub seed: u64,
    pub mutant: Option<&'static str>,
    /// Force the number of masters instead of drawing it.
    pub masters: Option<usize>,
    /// Force the number of storages (cluster scenarios).
    pub storages: Option<usize>,
    /// Print one line per step.
    pub trace: bool,
}

impl RunOptions {
    pub fn new(scenario: Scenario, seed: u64) -> RunOptions {
        RunOptions {
            scenario,
            seed,
            mutant: None,
            masters: None,
            storages: None,
            trace: false,
        }
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "neosim replay --scenario {} --seed {}",
            self.scenario, self.seed
        );
        if let Some(m) = self.mutant {
            cmd += &format!(" --mutant {m}");
        }
        if let Some(n) = self.masters {
            cmd += &format!(" --masters {n}");
        }
        if let Some(n) = self.storages {
            cmd += &format!(" --storages {n}");
        }
        cmd
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub shape: String,
    /// What the run did, in a line (scenarios with a workload: its outcome).
    pub summary: String,
    pub swarm: String,
    pub failure: Option<Failure>,
    pub trace_hash: u64,
    pub sim_time: Duration,
    pub steps: u64,
}

/// How long the liveness phase may take to converge.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(60);
/// How long a converged state must then hold.
pub const STABLE_FOR: Duration = Duration::from_secs(5);

/// What a seed draws before the run starts: the cluster's shape and the fault mix.
#[derive(Clone, Debug)]
pub struct Plan {
    pub masters: usize,
    pub storages: usize,
    pub replicas: u32,
    pub partitions: u32,
    pub swarm: Swarm,
    /// Whether the hostile peer runs during the safety phase.
    pub hostile: bool,
}

impl Plan {
    pub fn shape(&self) -> String {
        let mut shape = if self.storages == 0 {
            format!("{} masters", self.masters)
        } else {
            format!(
                "{} masters, {} storages, {} partitions, {} replicas",
                self.masters, self.storages, self.partitions, self.replicas
            )
        };
        if self.hostile {
            shape += "; hostile peer on";
        }
        shape
    }
}

/// The share of seeds (of every scenario) that run the hostile peer.
pub const HOSTILE_SHARE: f64 = 0.3;

/// Draw a seed's plan (the same draws `run` makes), to print it before running.
pub fn plan(opts: &RunOptions) -> Plan {
    let mut rng = rng::stream(opts.seed, 1);
    let swarm = Swarm::draw(&mut rng::stream(opts.seed, 2));
    let hostile = rng::chance(&mut rng::stream(opts.seed, 11), HOSTILE_SHARE);
    if opts.scenario == Scenario::Election {
        let masters = opts
            .masters
            .unwrap_or_else(|| *rng::pick(&mut rng, &[1usize, 2, 3, 5]));
        return Plan {
            masters,
            storages: 0,
            replicas: 0,
            partitions: 0,
            swarm,
            hostile,
        };
    }
    if opts.scenario == Scenario::Failover {
        let masters = opts
            .masters
            .unwrap_or_else(|| *rng::pick(&mut rng, &[2usize, 3, 5]));
        let storages = opts
            .storages
            .unwrap_or_else(|| rng::between(&mut rng, 1, 3) as usize);
        let replicas = rng::between(&mut rng, 0, (storages as u64 - 1).min(1)) as u32;
        let partitions = rng::between(&mut rng, 1, 6) as u32;
        return Plan {
            masters,
            storages,
            replicas,
            partitions,
            swarm,
            hostile,
        };
    }
    let masters = opts
        .masters
        .unwrap_or_else(|| rng::between(&mut rng, 1, 3) as usize);
    // The commits scenario needs two storages for its faults to leave a cluster to write to.
    let (fewest, most) = match opts.scenario {
        Scenario::Commits => (2, 4),
        _ => (1, 6),
    };
    let storages = opts
        .storages
        .unwrap_or_else(|| rng::between(&mut rng, fewest, most) as usize);
    let replicas = rng::between(&mut rng, 0, (storages as u64 - 1).min(2)) as u32;
    let partitions = rng::between(&mut rng, 1, 12) as u32;
    Plan {
        masters,
        storages,
        replicas,
        partitions,
        swarm,
        hostile,
    }
}

/// Run one seed of a scenario.
pub fn run(opts: &RunOptions) -> RunReport {
    let plan = plan(opts);
    match opts.scenario {
        Scenario::Election => scenarios::election::run_election_with(opts, plan.swarm),
        Scenario::Recovery => scenarios::recovery::run(opts, &plan),
        Scenario::Verification => scenarios::verification::run(opts, &plan),
        Scenario::Failover => scenarios::failover::run(opts, &plan),
        Scenario::Operator => scenarios::operator::run(opts, &plan),
        Scenario::Commits => scenarios::commits::run(opts, &plan),
    }
}

/// A stop condition for `World::run_until`: `converged` has held for `span` (stale messages
/// in flight may still disturb a state that converged a moment ago).
pub fn converged_for(
    span: Duration,
    converged: impl Fn(&World) -> Result<(), String>,
) -> impl FnMut(&World) -> bool {
    let mut since: Option<Duration> = None;
    move |w| {
        if converged(w).is_ok() {
            let t = *since.get_or_insert(w.now());
            w.now() - t >= span
        } else {
            since = None;
            false
        }
    }
}
