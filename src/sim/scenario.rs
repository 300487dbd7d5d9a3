//! Scenarios: how a seed becomes a cluster, a fault mix and a run with a safety phase and a
//! liveness phase, and which invariants judge it. `neosim` and `sim-tests` both run them
//! through [`run`].

use std::fmt;
use std::time::Duration;

use super::check;
use super::clock::NodeClock;
use super::faults::{Injector, Swarm};
use super::net::NodeIdx;
use super::world::{Failure, NodeActor, World};
use crate::actors::master::election::Role;
use crate::actors::master::{Master, MasterConfig};
use crate::proto::Address;
use crate::rng;

/// Re-introduced bugs (simulation only) that a scenario's sweep must catch:
/// (name, scenario, what it breaks).
pub const MUTANTS: &[(&str, Scenario, &str)] = &[
    ("recovery-no-wait", Scenario::Recovery, "start as soon as the table is operational, without waiting for every node with readable cells"),
    ("pt-outdate-last", Scenario::Recovery, "outdate the last readable cell of a partition when its node is lost"),
    ("verification-drop-locked", Scenario::Verification, "drop locked transactions instead of committing them"),
    ("answer-by-type", Scenario::Verification, "pair an answer with the newest request expecting its packet type, ignoring its id"),
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
}

impl Scenario {
    pub const ALL: &'static [Scenario] = &[
        Scenario::Election,
        Scenario::Recovery,
        Scenario::Verification,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Election => "election",
            Scenario::Recovery => "recovery",
            Scenario::Verification => "verification",
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
}

impl Plan {
    pub fn shape(&self) -> String {
        if self.storages == 0 {
            format!("{} masters", self.masters)
        } else {
            format!(
                "{} masters, {} storages, {} partitions, {} replicas",
                self.masters, self.storages, self.partitions, self.replicas
            )
        }
    }
}

/// Draw a seed's plan (the same draws `run` makes), to print it before running.
pub fn plan(opts: &RunOptions) -> Plan {
    let mut rng = rng::stream(opts.seed, 1);
    let swarm = Swarm::draw(&mut rng::stream(opts.seed, 2));
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
        };
    }
    let masters = opts
        .masters
        .unwrap_or_else(|| rng::between(&mut rng, 1, 3) as usize);
    let storages = opts
        .storages
        .unwrap_or_else(|| rng::between(&mut rng, 1, 6) as usize);
    let replicas = rng::between(&mut rng, 0, (storages as u64 - 1).min(2)) as u32;
    let partitions = rng::between(&mut rng, 1, 12) as u32;
    Plan {
        masters,
        storages,
        replicas,
        partitions,
        swarm,
    }
}

/// Run one seed of a scenario.
pub fn run(opts: &RunOptions) -> RunReport {
    let plan = plan(opts);
    match opts.scenario {
        Scenario::Election => run_election_with(opts, plan.swarm),
        Scenario::Recovery | Scenario::Verification => super::cluster::run(opts, &plan),
    }
}

/// Master `i`'s address in simulated clusters.
pub fn master_address(i: usize) -> Address {
    Address::new(format!("10.0.0.{}", i + 1), 10000)
}

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

/// The simulated clusters' name.
pub const CLUSTER: &str = "sim";

/// Add `count` masters that know each other, with the swarm's clocks, each starting at a
/// random time within `start_within`; `configure` adjusts their shared configuration.
pub fn add_masters(
    w: &mut World,
    rng: &mut crate::rng::ChaCha8Rng,
    swarm: &Swarm,
    count: usize,
    start_within: Duration,
    configure: impl Fn(&mut MasterConfig),
) -> Vec<Address> {
    let addresses: Vec<Address> = (0..count).map(master_address).collect();
    for (i, address) in addresses.iter().enumerate() {
        let mut cfg = MasterConfig {
            cluster: CLUSTER.into(),
            bind: address.clone(),
            masters: addresses.clone(),
            autostart: None,
            replicas: 0,
            partitions: 12,
            nid: None,
        };
        configure(&mut cfg);
        let clock = node_clock(rng, swarm);
        let start = rng::duration(rng, Duration::ZERO, start_within);
        w.add_node(
            format!("m{}", i + 1),
            address.clone(),
            Box::new(move || NodeActor::Master(Box::new(Master::new(cfg.clone())))),
            clock,
            start,
            swarm.buggify,
        );
    }
    addresses
}

/// A node's clock under the swarm's skew.
pub fn node_clock(rng: &mut crate::rng::ChaCha8Rng, swarm: &Swarm) -> NodeClock {
    let spread = |rng: &mut crate::rng::ChaCha8Rng, max: i64| {
        if max > 0 {
            rng::between(rng, 0, 2 * max as u64) as i64 - max
        } else {
            0
        }
    };
    NodeClock {
        offset_ns: spread(rng, swarm.clock_offset.as_nanos() as i64),
        drift_ppm: spread(rng, swarm.drift_ppm),
    }
}

/// The current primary, if exactly one running master plays it.
pub fn primary(w: &World) -> Option<NodeIdx> {
    let mut p = w
        .masters()
        .filter(|(i, m)| w.nodes[*i].is_up() && matches!(m.role(), Role::Primary(_)))
        .map(|(i, _)| i);
    let first = p.next();
    if p.next().is_some() {
        None
    } else {
        first
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

/// The election scenario with a given fault mix (tests that want only some faults).
pub fn run_election_with(opts: &RunOptions, swarm: Swarm) -> RunReport {
    let seed = opts.seed;
    let masters = plan(opts).masters;
    let mut w = election_world(seed, masters, &swarm, opts.mutant, opts.trace);
    let mut rng = rng::stream(seed, 4);
    let safety =
        Duration::from_secs(30) + rng::duration(&mut rng, Duration::ZERO, Duration::from_secs(90));
    w.start_faults(Injector::new(swarm.clone(), rng::stream(seed, 3)));
    let outcome = w.run_for(safety).and_then(|()| {
        // Liveness: heal everything, but now and then leave the primary (or any master)
        // down for good, so the others must elect without it.
        let mut keep_down = vec![];
        if masters >= 2 && rng::chance(&mut rng, 0.4) {
            let victim = primary(&w).unwrap_or_else(|| rng::below(&mut rng, masters as u64) as usize);
            keep_down.push(victim);
        }
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
        shape: format!("{masters} masters"),
        swarm: swarm.to_string(),
        failure: outcome.err(),
        trace_hash: w.trace.hash(),
        sim_time: w.now(),
        steps: w.trace.steps(),
    }
}
