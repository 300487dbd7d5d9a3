//! The shared cluster builder every scenario uses: addresses, clocks, masters, storages
//! (SQLite in memory), the admin node, and the simulated processes that are not nodes of
//! the cluster (the operator, the hostile peer). A scenario picks what it needs; the
//! builder owns how each kind of process is wired into a world.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use super::clock::NodeClock;
use super::disk::Disks;
use super::faults::Swarm;
use super::hostile::{HostileConfig, HostilePeer, Target};
use super::net::NodeIdx;
use super::operator::{Operator, OperatorConfig, OperatorLog};
use super::scenario::{Plan, RunOptions, LIVENESS_BOUND};
use super::scenarios::recovery::Setup;
use super::world::{Failure, NodeActor, Proc, World};
use crate::actors::admin::{Admin, AdminConfig};
use crate::actors::client::ClientConfig;
use crate::actors::master::{Master, MasterConfig};
use crate::actors::storage::{Storage, StorageConfig};
use crate::actors::Actor;
use crate::ctl::CtlCommand;
use crate::db::sqlite::SqliteBackend;
use crate::db::Identity;
use crate::proto::{Address, ClusterState, NodeType};
use crate::rng::{self, ChaCha8Rng};

/// The simulated clusters' name.
pub const CLUSTER: &str = "sim";

/// Master `i`'s address in simulated clusters.
pub fn master_address(i: usize) -> Address {
    Address::new(format!("10.0.0.{}", i + 1), 10000)
}

/// Storage `i`'s address.
pub fn storage_address(i: usize) -> Address {
    Address::new(format!("10.0.1.{}", i + 1), 20000)
}

/// The admin node's address.
pub fn admin_address() -> Address {
    Address::new("10.0.2.1", 9999)
}

/// A node's clock under the swarm's skew.
pub fn node_clock(rng: &mut ChaCha8Rng, swarm: &Swarm) -> NodeClock {
    let spread = |rng: &mut ChaCha8Rng, max: i64| {
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

/// Add `count` masters that know each other, with the swarm's clocks, each starting at a
/// random time within `start_within`; `configure` adjusts their shared configuration.
pub fn add_masters(
    w: &mut World,
    rng: &mut ChaCha8Rng,
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

/// The storages' disks, one per storage to add (see `sim::disk`): storage `i` will be node
/// `first + i`. A scenario may write into them before the storages start.
pub struct Databases {
    first: NodeIdx,
    count: usize,
    disks: Disks,
}

impl Databases {
    /// Disks for the next `count` nodes the world adds (add the storages next).
    pub fn new(w: &mut World, count: usize) -> Databases {
        let first = w.next_node();
        for i in 0..count {
            w.disks.add(first + i).expect("sim: memory database");
        }
        Databases {
            first,
            count,
            disks: w.disks.clone(),
        }
    }

    /// Open every disk outside any process (a scenario writing history before the start).
    pub fn open_all(&self) -> Vec<SqliteBackend> {
        (0..self.count)
            .map(|i| {
                self.disks
                    .open_plain(self.first + i, &Self::identity())
                    .expect("sim: memory database")
            })
            .collect()
    }

    /// The identity a new storage's database starts with: this cluster, no node id yet.
    pub fn identity() -> Identity {
        Identity {
            cluster: CLUSTER.into(),
            nid: None,
        }
    }
}

/// Add one storage per database, following `masters`, each starting within the first 5 s.
pub fn add_storages(
    w: &mut World,
    rng: &mut ChaCha8Rng,
    swarm: &Swarm,
    masters: &[Address],
    dbs: &Databases,
) -> Vec<NodeIdx> {
    let identity = Databases::identity();
    let mut added = Vec::new();
    assert_eq!(
        w.next_node(),
        dbs.first,
        "sim: storages come right after their disks"
    );
    for i in 0..dbs.count {
        let cfg = StorageConfig {
            cluster: CLUSTER.into(),
            bind: storage_address(i),
            masters: masters.to_vec(),
        };
        let (disks, identity, node) = (dbs.disks.clone(), identity.clone(), dbs.first + i);
        let clock = node_clock(rng, swarm);
        let start = rng::duration(rng, Duration::ZERO, Duration::from_secs(5));
        let make = move || {
            // A restarted process opens its disk again (the previous process's was dropped).
            let db = disks.open(node, &identity);
            NodeActor::Storage(Box::new(Storage::new(cfg.clone(), db)))
        };
        added.push(w.add_node(
            format!("s{}", i + 1),
            storage_address(i),
            Box::new(make),
            clock,
            start,
            swarm.buggify,
        ));
    }
    added
}

/// Add the admin node (neoctl's entry point), following `masters`, starting within 5 s.
pub fn add_admin(
    w: &mut World,
    rng: &mut ChaCha8Rng,
    swarm: &Swarm,
    masters: &[Address],
) -> NodeIdx {
    let cfg = AdminConfig {
        cluster: CLUSTER.into(),
        bind: admin_address(),
        masters: masters.to_vec(),
    };
    let clock = node_clock(rng, swarm);
    let start = rng::duration(rng, Duration::ZERO, Duration::from_secs(5));
    w.add_node(
        "a1",
        admin_address(),
        Box::new(move || NodeActor::Admin(Box::new(Admin::new(cfg.clone())))),
        clock,
        start,
        swarm.buggify,
    )
}

/// The node type of a node of the cluster, by the label the builder gave it (`m1`, `s2`,
/// `a1`); None for the other processes.
pub fn node_type(label: &str) -> Option<NodeType> {
    match label.as_bytes().first() {
        Some(b'm') => Some(NodeType::Master),
        Some(b's') => Some(NodeType::Storage),
        Some(b'a') => Some(NodeType::Admin),
        // `c1`, `c2`...; the operator's `ctl` is no node.
        Some(b'c') if label[1..].bytes().all(|b| b.is_ascii_digit()) && label.len() > 1 => {
            Some(NodeType::Client)
        }
        _ => None,
    }
}

/// The hostile peer's address.
pub fn hostile_address() -> Address {
    Address::new("10.0.9.1", 7777)
}

/// Add the hostile peer, aimed at every node added so far, starting within 10 s.
pub fn add_hostile(w: &mut World, rng: &mut ChaCha8Rng) -> NodeIdx {
    let targets: Vec<Target> = w
        .nodes
        .iter()
        .filter_map(|n| {
            node_type(&n.label).map(|node_type| Target {
                address: n.address.clone(),
                node_type,
            })
        })
        .collect();
    let cfg = HostileConfig {
        cluster: CLUSTER.into(),
        address: hostile_address(),
        targets,
    };
    let start = rng::duration(rng, Duration::ZERO, Duration::from_secs(10));
    w.add_node(
        "x1",
        hostile_address(),
        Box::new(move || NodeActor::Process(Box::new(HostilePeer::new(cfg.clone())))),
        NodeClock::default(),
        start,
        false,
    )
}

/// The operator's address (it only connects out).
pub fn operator_address(i: usize) -> Address {
    Address::new(format!("10.0.3.{}", i + 1), 1)
}

/// Add an operator (neoctl) process starting at `start`.
pub fn add_operator(
    w: &mut World,
    label: &str,
    cfg: OperatorConfig,
    start: Duration,
) -> (NodeIdx, Rc<RefCell<OperatorLog>>) {
    let log = Rc::new(RefCell::new(OperatorLog::default()));
    let l = log.clone();
    let i = w.nodes.len();
    let idx = w.add_node(
        label,
        operator_address(i),
        Box::new(move || NodeActor::Process(Box::new(Operator::new(cfg.clone(), l.clone())))),
        NodeClock::default(),
        start,
        false,
    );
    (idx, log)
}

/// What a cluster scenario adds beyond masters and storages: the hostile peer, the admin
/// node and the operator.
pub struct Extras {
    pub hostile: Option<NodeIdx>,
    pub admin: Option<NodeIdx>,
    /// The operator's process, and its log.
    pub operator: Option<(NodeIdx, Rc<RefCell<OperatorLog>>)>,
    /// Whether the operator stops the cluster once it runs again at the end.
    pub final_stop: bool,
    masters: u32,
    storages: u32,
}

impl Extras {
    pub fn add(w: &mut World, opts: &RunOptions, plan: &Plan, setup: &Setup) -> Extras {
        let mut rng = rng::stream(opts.seed, 7);
        let mut extras = Extras {
            hostile: None,
            admin: None,
            operator: None,
            final_stop: false,
            masters: plan.masters as u32,
            storages: plan.storages as u32,
        };
        if setup.operator {
            let masters: Vec<Address> = (0..plan.masters).map(master_address).collect();
            extras.admin = Some(add_admin(w, &mut rng, &plan.swarm, &masters));
            let cfg = OperatorConfig {
                admin: admin_address(),
                storages: plan.storages as u32,
                masters: plan.masters as u32,
                every: rng::duration(&mut rng, Duration::from_secs(2), Duration::from_secs(15)),
                may_stop: rng::chance(&mut rng, 0.2),
                // `neoctl start` overrides the split-brain rule: an operator says it only
                // knowing the missing nodes are gone, never across a partition.
                may_start: plan.swarm.partition.is_none(),
                script: None,
            };
            let start = rng::duration(&mut rng, Duration::ZERO, Duration::from_secs(20));
            extras.operator = Some(add_operator(w, "ctl", cfg, start));
            extras.final_stop = rng::chance(&mut rng, 0.25);
        }
        if plan.hostile {
            extras.hostile = Some(add_hostile(w, &mut rng));
        }
        extras
    }

    /// The processes that stop when faults heal: the hostile peer, and the operator's
    /// random commands (the liveness phase judges the cluster left alone).
    pub fn stop_at_heal(&self) -> Vec<NodeIdx> {
        self.hostile
            .into_iter()
            .chain(self.operator.as_ref().map(|(i, _)| *i))
            .collect()
    }

    /// After healing, the operator restarts the nodes that were told to stop (killed,
    /// dropped, or stopped with the cluster), as one would.
    pub fn restart_exited(&self, w: &mut World, keep_down: &[NodeIdx]) {
        if self.operator.is_none() {
            return;
        }
        for i in 0..w.nodes.len() {
            if matches!(w.nodes[i].proc, Proc::Exited(_)) && !keep_down.contains(&i) {
                w.restart_after(i, Duration::ZERO);
            }
        }
    }

    /// When drawn, `neoctl set cluster STOPPING` once the cluster runs again: every master,
    /// storage and the admin must then end, within the liveness bound.
    pub fn stop_at_the_end(&self, w: &mut World) -> Result<(), Failure> {
        if !self.final_stop {
            return Ok(());
        }
        let cfg = OperatorConfig {
            admin: admin_address(),
            storages: self.storages,
            masters: self.masters,
            every: Duration::from_millis(100),
            may_stop: true,
            may_start: false,
            script: Some(vec![CtlCommand::SetCluster(ClusterState::Stopping)]),
        };
        let (_, log) = add_operator(w, "ctl-stop", cfg, w.now());
        let cluster_up = |w: &World| -> Vec<String> {
            w.nodes
                .iter()
                .filter(|n| n.is_up() && node_type(&n.label).is_some())
                .map(|n| n.label.clone())
                .collect()
        };
        let deadline = w.now() + LIVENESS_BOUND;
        // Done when every node ended and neoctl got its answer (or gave up).
        let l = log.clone();
        let stopped = w.run_until(deadline, move |w| {
            cluster_up(w).is_empty() && !l.borrow().done.is_empty()
        })?;
        let acked = log.borrow().stop_acked;
        if !stopped || !acked {
            return Err(Failure {
                at: w.now(),
                what: format!(
                    "liveness: the operator stopped the cluster (acknowledged: {acked}), but within {LIVENESS_BOUND:?} these still run: {:?}; operator: {:?}",
                    cluster_up(w),
                    log.borrow().done
                ),
            });
        }
        Ok(())
    }
}

/// Client `i`'s address (clients only connect out; the address names the process).
pub fn client_address(i: usize) -> Address {
    Address::new(format!("10.0.4.{}", i + 1), 1)
}

/// Builds a client actor from its configuration (the scenario passes the client role's
/// constructor).
pub type MakeClient = Rc<dyn Fn(ClientConfig) -> Box<dyn Actor>>;

/// Add `count` client nodes following `masters`, each starting within the first 5 s, with
/// the swarm's clocks. Crashable and restartable like any node: a restart is a new process.
pub fn add_clients(
    w: &mut World,
    rng: &mut ChaCha8Rng,
    swarm: &Swarm,
    masters: &[Address],
    count: usize,
    make: MakeClient,
) -> Vec<NodeIdx> {
    (0..count)
        .map(|i| {
            let mut cfg = ClientConfig::new(CLUSTER, masters.to_vec());
            // A small cache, so that evictions happen too.
            cfg.cache_size = 1 << 12;
            cfg.compress = rng::chance(rng, 0.5);
            let clock = node_clock(rng, swarm);
            let start = rng::duration(rng, Duration::ZERO, Duration::from_secs(5));
            let make = make.clone();
            w.add_node(
                format!("c{}", i + 1),
                client_address(i),
                Box::new(move || NodeActor::Client(make(cfg.clone()))),
                clock,
                start,
                swarm.buggify,
            )
        })
        .collect()
}
