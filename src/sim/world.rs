//! The world: nodes, the network and an event queue in virtual time, run in one thread.
//!
//! Events are ordered by (time, sequence number), so a run is a pure function of the seed.
//! Every queue event that reaches an actor is traced and hashed, then the scenario's
//! invariants are checked. The world also offers the controls that faults and scripted
//! tests use: crash, restart, pause, partition, clog, reset, clock jumps, and the storages'
//! disks (`disk`): I/O faults (a slow call pauses the node's process for the time it took),
//! restarts with a wiped disk or with another node's disk. Each node's effects are hashed
//! into the trace as well as what it receives.
//!
//! A node that exits on a failure (a storage whose disk failed) is restarted after a while,
//! as a service manager would.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use super::check;
use super::clock::NodeClock;
use super::disk::{DiskEvent, DiskEventKind, Disks, IoRates};
use super::faults::Injector;
use super::net::{Latency, Net, NodeIdx, SimConnId, State, Wire};
use super::trace::Trace;
use crate::actors::admin::Admin;
use crate::actors::client::{Call, Notice, Reply};
use crate::actors::master::Master;
use crate::actors::storage::Storage;
use crate::actors::{
    Actor, Buggify, CloseReason, Command, ConnId, Ctx, Effect, Event, NodeEnv, TimerId,
    CONNECT_TIMEOUT,
};
use crate::proto::{Address, Nid, WallTime};
use crate::rng::{self, ChaCha8Rng};

/// The role a simulated node plays (one variant per actor type, so checkers can look
/// inside).
pub enum NodeActor {
    Master(Box<Master>),
    Storage(Box<Storage>),
    Admin(Box<Admin>),
    /// A client node: the workload's calls go in as `Command::Call`, its replies and
    /// notices come out in the world's client outbox (`World::take_client_output`).
    Client(Box<dyn Actor>),
    /// A simulated process that is not a node of the cluster (the operator running neoctl,
    /// the hostile peer): nothing looks inside it.
    Process(Box<dyn Actor>),
}

impl NodeActor {
    fn actor(&mut self) -> &mut dyn Actor {
        match self {
            NodeActor::Master(m) => m.as_mut(),
            NodeActor::Storage(s) => s.as_mut(),
            NodeActor::Admin(a) => a.as_mut(),
            NodeActor::Client(c) => c.as_mut(),
            NodeActor::Process(p) => p.as_mut(),
        }
    }
}

/// Feed one effect of a node to the trace's hash.
fn emit(trace: &mut Trace, node: NodeIdx, e: &Effect) {
    match e {
        Effect::Connect { conn, to } => trace.emit((node, 0u8, conn, to)),
        Effect::Send { conn, msg } => trace.emit((node, 1u8, conn, msg)),
        Effect::Close { conn } => trace.emit((node, 2u8, conn)),
        Effect::SetTimer { id, after, token } => trace.emit((node, 3u8, id, after, token)),
        Effect::CancelTimer { id } => trace.emit((node, 4u8, id)),
        Effect::Observe(o) => trace.emit((node, 5u8, o)),
        Effect::Exit { reason, success } => trace.emit((node, 6u8, reason, success)),
        Effect::Reply(r) => trace.emit((node, 7u8, r)),
        Effect::Notice(n) => trace.emit((node, 8u8, n)),
    }
}

/// Whether a node's process runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proc {
    /// Not started yet, or crashed.
    Down,
    Up,
    /// Ended by itself (told to stop).
    Exited(String),
}

pub struct SimNode {
    /// A name for traces (`m1`, `s2`, ...): the simulator's, not a node id.
    pub label: String,
    pub address: Address,
    pub actor: Option<NodeActor>,
    make: Box<dyn Fn() -> NodeActor>,
    pub proc: Proc,
    pub incarnation: u32,
    /// When the current process started (virtual time).
    pub started_at: Duration,
    pub paused_until: Option<Duration>,
    pub clock: NodeClock,
    env: NodeEnv,
    timers: BTreeSet<TimerId>,
}

impl SimNode {
    pub fn master(&self) -> Option<&Master> {
        match &self.actor {
            Some(NodeActor::Master(m)) => Some(m),
            _ => None,
        }
    }

    pub fn storage(&self) -> Option<&Storage> {
        match &self.actor {
            Some(NodeActor::Storage(s)) => Some(s),
            _ => None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.proc == Proc::Up
    }
}

/// What a client node emitted for its application (the workload): which node, which
/// process of it (incarnation), and the reply or notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOutput {
    pub node: NodeIdx,
    pub incarnation: u32,
    pub what: ClientOut,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOut {
    Reply(Reply),
    Notice(Notice),
}

/// Why a run failed, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub at: Duration,
    pub what: String,
}

#[derive(Debug)]
enum Ev {
    /// Start `node` if it has not been started since this was scheduled (its incarnation
    /// is still `inc`): a restart planned for a crash is void once the node came back and,
    /// say, exited cleanly (no service manager restarts that).
    Start {
        node: NodeIdx,
        inc: u32,
    },
    Timer {
        node: NodeIdx,
        inc: u32,
        id: TimerId,
        token: u64,
    },
    Syn {
        conn: SimConnId,
    },
    ConnectDone {
        conn: SimConnId,
        result: Result<(), CloseReason>,
    },
    Deliver {
        conn: SimConnId,
        dir: usize,
    },
    FaultTick,
    HealPartition,
}

struct Scheduled {
    at: Duration,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // BinaryHeap is a max-heap: reverse, so the earliest (then first scheduled) pops first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A check run after every step; it may keep history (what it saw before).
pub type Invariant = Box<dyn FnMut(&World) -> Result<(), String>>;

pub struct World {
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    pub nodes: Vec<SimNode>,
    by_address: BTreeMap<Address, NodeIdx>,
    pub net: Net,
    latency: Latency,
    /// True time at virtual time zero.
    epoch: WallTime,
    seed: u64,
    mutant: Option<&'static str>,
    rng: ChaCha8Rng,
    pub trace: Trace,
    invariants: Vec<Invariant>,
    /// The node whose actor the last step ran, if it ran exactly one (see `stepped`).
    stepped: Option<NodeIdx>,
    failure: Option<Failure>,
    injector: Option<Injector>,
    /// Nodes that must not be restarted (left down for the liveness phase).
    keep_down: BTreeSet<NodeIdx>,
    effects: Vec<Effect>,
    /// The storages' disks.
    pub disks: Disks,
    disk_events: Vec<DiskEvent>,
    /// Restarts that will open another node's disk: node -> whose.
    pending_swaps: BTreeMap<NodeIdx, NodeIdx>,
    /// Nodes whose process exited on a failure and waits to be restarted.
    failed: BTreeSet<NodeIdx>,
    /// Client replies and notices not yet taken by the workload, in emission order.
    client_out: Vec<ClientOutput>,
    /// The ids primaries handed out (`check::HandedOut`).
    handed: check::HandedOut,
}

impl World {
    pub fn new(
        seed: u64,
        latency: Latency,
        mutant: Option<&'static str>,
        print_trace: bool,
    ) -> World {
        let mut rng = rng::stream(seed, 10);
        // Somewhere in 2026, so TIDs look like real ones.
        let epoch = WallTime::from_secs(1_767_225_600 + rng::below(&mut rng, 365 * 86_400));
        World {
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            by_address: BTreeMap::new(),
            net: Net::default(),
            latency,
            epoch,
            seed,
            mutant,
            rng,
            trace: Trace::new(print_trace),
            invariants: Vec::new(),
            stepped: None,
            failure: None,
            injector: None,
            keep_down: BTreeSet::new(),
            effects: Vec::new(),
            disks: Disks::new(rng::stream(seed, 11)),
            disk_events: Vec::new(),
            pending_swaps: BTreeMap::new(),
            failed: BTreeSet::new(),
            handed: check::HandedOut::default(),
            client_out: Vec::new(),
        }
    }

    /// Whether a client emitted something the workload has not taken yet.
    pub fn has_client_output(&self) -> bool {
        !self.client_out.is_empty()
    }

    /// What the clients emitted since the last call, in order.
    pub fn take_client_output(&mut self) -> Vec<ClientOutput> {
        std::mem::take(&mut self.client_out)
    }

    /// An application call to a running client node (traced like any event); false if the
    /// node is down (the call never happened).
    pub fn call(&mut self, node: NodeIdx, call: Call) -> bool {
        if !self.nodes[node].is_up() {
            return false;
        }
        self.dispatch(node, Event::Local(Command::Call(call)), None)
    }

    /// What happened to the storages' disks (wipes, swaps), in order.
    pub fn disk_events(&self) -> &[DiskEvent] {
        &self.disk_events
    }

    /// How many times the disk of `node` was wiped so far.
    pub fn wipes_of(&self, node: NodeIdx) -> usize {
        self.disk_events
            .iter()
            .filter(|e| e.node == node && e.kind == DiskEventKind::Wiped)
            .count()
    }

    /// The index the next node added gets.
    pub fn next_node(&self) -> NodeIdx {
        self.nodes.len()
    }

    pub fn now(&self) -> Duration {
        self.now
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// True time at virtual time zero.
    pub fn epoch(&self) -> WallTime {
        self.epoch
    }

    /// The node whose actor handled the last step's event, when that is all the step did
    /// (None after a step that started, crashed or restarted nodes, or ran the swarm):
    /// invariants about one node's own state need only look at that node.
    pub fn stepped(&self) -> Option<NodeIdx> {
        self.stepped
    }

    pub fn add_invariant(&mut self, inv: Invariant) {
        self.invariants.push(inv);
    }

    /// Add a node whose process starts at `start_at`; `make` builds a fresh actor for each
    /// (re)start.
    pub fn add_node(
        &mut self,
        label: impl Into<String>,
        address: Address,
        make: Box<dyn Fn() -> NodeActor>,
        clock: NodeClock,
        start_at: Duration,
        buggify: bool,
    ) -> NodeIdx {
        let idx = self.nodes.len();
        let env_rng = rng::stream(self.seed, 1000 + idx as u64 * 1000);
        let buggify =
            buggify.then(|| Buggify::new(rng::stream(self.seed, 1001 + idx as u64 * 1000)));
        self.nodes.push(SimNode {
            label: label.into(),
            address: address.clone(),
            actor: None,
            make,
            proc: Proc::Down,
            incarnation: 0,
            started_at: Duration::ZERO,
            paused_until: None,
            clock,
            env: NodeEnv::simulated(env_rng, buggify, self.mutant),
            timers: BTreeSet::new(),
        });
        self.by_address.insert(address, idx);
        self.schedule(start_at, Ev::Start { node: idx, inc: 0 });
        idx
    }

    fn schedule(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    fn fail(&mut self, what: String) {
        if self.failure.is_none() {
            self.failure = Some(Failure { at: self.now, what });
        }
    }

    /// Run until virtual time `deadline`, a failure, or `until` holds (checked after each
    /// step that reached a node). Returns whether `until` held.
    pub fn run_until(
        &mut self,
        deadline: Duration,
        mut until: impl FnMut(&World) -> bool,
    ) -> Result<bool, Failure> {
        loop {
            if let Some(f) = &self.failure {
                return Err(f.clone());
            }
            if self.mutant == Some(super::sweep::PANIC_HOOK)
                && self.seed % 2 == 1
                && self.now >= Duration::from_secs(1)
            {
                panic!("test hook: a panic inside the run of seed {}", self.seed);
            }
            match self.queue.peek() {
                Some(s) if s.at <= deadline => {}
                _ => {
                    self.now = self.now.max(deadline);
                    return Ok(until(self));
                }
            }
            if self.step() && self.failure.is_none() {
                let mut invariants = std::mem::take(&mut self.invariants);
                for inv in &mut invariants {
                    if let Err(e) = inv(self) {
                        self.failure = Some(Failure {
                            at: self.now,
                            what: e,
                        });
                        break;
                    }
                }
                self.invariants = invariants;
                if self.failure.is_none() && until(self) {
                    return Ok(true);
                }
            }
        }
    }

    /// Run for a span of virtual time.
    pub fn run_for(&mut self, span: Duration) -> Result<(), Failure> {
        self.run_until(self.now + span, |_| false).map(|_| ())
    }

    /// Process the next event; returns whether it reached a node.
    fn step(&mut self) -> bool {
        self.stepped = None;
        let Some(s) = self.queue.pop() else {
            return false;
        };
        debug_assert!(s.at >= self.now, "time went backwards");
        self.now = s.at;
        match s.ev {
            Ev::Start { node, inc } => {
                if self.nodes[node].incarnation != inc {
                    return false;
                }
                self.start(node)
            }
            Ev::Timer {
                node,
                inc,
                id,
                token,
            } => {
                let n = &self.nodes[node];
                if n.incarnation != inc || !n.timers.contains(&id) || !n.is_up() {
                    return false;
                }
                if let Some(t) = self.paused(node) {
                    self.schedule(
                        t,
                        Ev::Timer {
                            node,
                            inc,
                            id,
                            token,
                        },
                    );
                    return false;
                }
                self.nodes[node].timers.remove(&id);
                self.dispatch(node, Event::Timer { id, token }, None)
            }
            Ev::Syn { conn } => self.on_syn(conn),
            Ev::ConnectDone { conn, result } => self.on_connect_done(conn, result),
            Ev::Deliver { conn, dir } => self.on_deliver(conn, dir),
            Ev::FaultTick => {
                if let Some(mut inj) = self.injector.take() {
                    inj.tick(self);
                    let next = self.now + inj.period();
                    self.injector = Some(inj);
                    self.schedule(next, Ev::FaultTick);
                }
                false
            }
            Ev::HealPartition => {
                self.heal_partitions();
                false
            }
        }
    }

    fn paused(&self, node: NodeIdx) -> Option<Duration> {
        self.nodes[node].paused_until.filter(|t| *t > self.now)
    }

    /// Hand one event to a node's actor and carry out what it asks.
    fn dispatch(&mut self, node: NodeIdx, ev: Event, from: Option<NodeIdx>) -> bool {
        if !self.nodes[node].is_up() {
            return false;
        }
        self.stepped = Some(node);
        let from_label = from.map(|f| self.nodes[f].label.clone());
        let n = &mut self.nodes[node];
        let label = &n.label;
        self.trace
            .step(self.now, (node, &ev), || match (&ev, &from_label) {
                (Event::Received { conn, msg }, Some(f)) => {
                    format!("{label} <- {f} c{} #{} {:?}", conn.0, msg.id, msg.packet)
                }
                _ => format!("{label} {ev:?}"),
            });
        let wall = n.clock.wall(self.epoch, self.now);
        let elapsed = self.now - n.started_at;
        let mut effects = std::mem::take(&mut self.effects);
        self.disks.arm(node, true);
        {
            // Node logs (when a subscriber listens: `neosim replay --trace`) say whose they are.
            let _span = tracing::info_span!("", node = %n.label).entered();
            let mut cx = Ctx::new(wall, elapsed, &mut n.env, &mut effects);
            n.actor
                .as_mut()
                .expect("a running node has an actor")
                .actor()
                .handle(&mut cx, ev);
        }
        self.disks.arm(node, false);
        let stalled = self.disk_faults_seen(node);
        // What the node did leaves when its slow disk calls are done.
        let now = self.now;
        self.now += stalled;
        self.apply(node, &mut effects);
        self.now = now;
        self.effects = effects;
        if stalled > Duration::ZERO && self.nodes[node].is_up() {
            // The trace says "pause": a slow disk stalls the whole (synchronous) process.
            self.pause(node, stalled);
        }
        true
    }

    /// What the node's disk did during its last step: injected faults go to the trace
    /// (before what the node did about them); returns the time its slow calls took.
    fn disk_faults_seen(&mut self, node: NodeIdx) -> Duration {
        let (stalled, injected) = self.disks.take(node);
        for what in injected {
            let what = format!("{}: {what}", self.nodes[node].label);
            self.note(what);
        }
        stalled
    }

    fn start(&mut self, node: NodeIdx) -> bool {
        if self.nodes[node].proc == Proc::Up || self.keep_down.contains(&node) {
            return false;
        }
        self.failed.remove(&node);
        if let Some(with) = self.pending_swaps.remove(&node) {
            let what = if self.nodes[with].is_up() {
                self.disks.swap_next(node, with);
                let old_nid = self.nodes[node].storage().and_then(|s| s.nid());
                self.disk_events.push(DiskEvent {
                    node,
                    at: self.now,
                    old_nid,
                    kind: DiskEventKind::Swapped { with },
                    readable: Vec::new(),
                    lost_data: false,
                });
                format!(
                    "{} restarts with the disk of {}",
                    self.nodes[node].label, self.nodes[with].label
                )
            } else {
                // Its owner is down: opening it would succeed, which is another story (a
                // moved disk); this fault is about the refusal.
                format!(
                    "{} restarts with its own disk ({} is down)",
                    self.nodes[node].label, self.nodes[with].label
                )
            };
            self.note(what);
        }
        let now = self.now;
        let seed = self.seed;
        let n = &mut self.nodes[node];
        n.incarnation += 1;
        n.proc = Proc::Up;
        n.started_at = now;
        n.paused_until = None;
        n.timers.clear();
        n.env.reseed(rng::stream(
            seed,
            1000 + node as u64 * 1000 + 2 + n.incarnation as u64,
        ));
        n.actor = Some((n.make)());
        let label = n.label.clone();
        let inc = n.incarnation;
        self.trace.step(now, (node, "start", inc), || {
            format!("{label} start (incarnation {inc})")
        });
        let n = &mut self.nodes[node];
        let wall = n.clock.wall(self.epoch, now);
        let mut effects = std::mem::take(&mut self.effects);
        self.disks.arm(node, true);
        {
            let _span = tracing::info_span!("", node = %n.label).entered();
            let mut cx = Ctx::new(wall, Duration::ZERO, &mut n.env, &mut effects);
            n.actor.as_mut().expect("just built").actor().start(&mut cx);
        }
        self.disks.arm(node, false);
        let stalled = self.disk_faults_seen(node);
        // What the node did leaves when its slow disk calls are done.
        let now = self.now;
        self.now += stalled;
        self.apply(node, &mut effects);
        self.now = now;
        self.effects = effects;
        if stalled > Duration::ZERO && self.nodes[node].is_up() {
            // The trace says "pause": a slow disk stalls the whole (synchronous) process.
            self.pause(node, stalled);
        }
        true
    }

    fn apply(&mut self, node: NodeIdx, effects: &mut Vec<Effect>) {
        for e in effects.drain(..) {
            if !self.nodes[node].is_up() {
                break; // it exited: the rest is moot
            }
            // What a node emits is part of the run as much as what it receives.
            emit(&mut self.trace, node, &e);
            match e {
                Effect::Connect { conn, to } => self.net_connect(node, conn, to),
                Effect::Send { conn, msg } => {
                    if let Some((id, side)) = self.net.lookup(node, conn) {
                        self.push(id, side, Wire::Msg(msg));
                    }
                }
                Effect::Close { conn } => {
                    if let Some((id, side)) = self.net.lookup(node, conn) {
                        self.net.close_end(id, side);
                        if self.net.conns[&id].state == State::Open {
                            self.push(id, side, Wire::Fin);
                        }
                        self.net.remove_if_dead(id);
                    }
                }
                Effect::SetTimer { id, after, token } => {
                    let n = &mut self.nodes[node];
                    n.timers.insert(id);
                    let inc = n.incarnation;
                    self.schedule(
                        self.now + after,
                        Ev::Timer {
                            node,
                            inc,
                            id,
                            token,
                        },
                    );
                }
                Effect::CancelTimer { id } => {
                    self.nodes[node].timers.remove(&id);
                }
                Effect::Observe(o) => {
                    let label = &self.nodes[node].label;
                    self.trace
                        .step(self.now, (node, &o), || format!("{label} observed {o:?}"));
                    let judged = check::judge(&o).and_then(|()| self.handed.observe(node, &o));
                    if let Err(e) = judged {
                        let what = format!("{label}: {e}");
                        self.fail(what);
                    }
                }
                // Client replies and notices go to the workload (the commits scenario).
                Effect::Reply(r) => {
                    let label = &self.nodes[node].label;
                    self.trace
                        .step(self.now, (node, 7u8), || format!("{label} replied {r:?}"));
                    let incarnation = self.nodes[node].incarnation;
                    self.client_out.push(ClientOutput {
                        node,
                        incarnation,
                        what: ClientOut::Reply(r),
                    });
                }
                Effect::Notice(n) => {
                    let label = &self.nodes[node].label;
                    self.trace
                        .step(self.now, (node, 8u8), || format!("{label} notice {n:?}"));
                    let incarnation = self.nodes[node].incarnation;
                    self.client_out.push(ClientOutput {
                        node,
                        incarnation,
                        what: ClientOut::Notice(n),
                    });
                }
                Effect::Exit { reason, success } => {
                    let label = self.nodes[node].label.clone();
                    self.trace.step(self.now, (node, "exit", &reason), || {
                        format!("{label} exit: {reason} (success: {success})")
                    });
                    self.stop_process(node, Proc::Exited(reason), Wire::Fin);
                    if !success {
                        // A service manager restarts a node that failed.
                        self.failed.insert(node);
                        let after = rng::duration(
                            &mut self.rng,
                            Duration::from_secs(1),
                            Duration::from_secs(20),
                        );
                        self.restart_after(node, after);
                    }
                }
            }
        }
    }

    /// End a node's process: its connections are closed (Fin) or reset (Rst) to peers.
    fn stop_process(&mut self, node: NodeIdx, proc: Proc, how: Wire) {
        let n = &mut self.nodes[node];
        n.proc = proc;
        n.actor = None;
        n.timers.clear();
        n.paused_until = None;
        for (id, side) in self.net.ends_of(node) {
            self.net.close_end(id, side);
            if self.net.conns[&id].state == State::Open {
                if matches!(how, Wire::Rst) {
                    // A dead process's unsent data is lost, and so is what was on its way to it.
                    let c = self.net.conns.get_mut(&id).expect("live");
                    c.dirs[side].queue.clear();
                    c.dirs[1 - side].queue.clear();
                }
                self.push(id, side, how.clone());
            }
            self.net.remove_if_dead(id);
        }
    }

    // ---- network ----

    fn net_connect(&mut self, node: NodeIdx, conn: ConnId, to: Address) {
        let id = self.net.open(node, conn, to.clone());
        let target = self.by_address.get(&to).copied();
        if target.is_some_and(|t| self.net.is_cut(node, t)) {
            self.connect_across_partition(id);
        } else {
            let lat = self.latency.draw(&mut self.rng);
            self.schedule(self.now + lat, Ev::Syn { conn: id });
        }
    }

    /// A connect into a partition: the SYN is lost (the host gives up after its timeout) or
    /// an ICMP error comes back.
    fn connect_across_partition(&mut self, id: SimConnId) {
        if rng::chance(&mut self.rng, 0.5) {
            self.schedule(
                self.now + CONNECT_TIMEOUT,
                Ev::ConnectDone {
                    conn: id,
                    result: Err(CloseReason::TimedOut),
                },
            );
        } else {
            let lat = self.latency.draw(&mut self.rng);
            self.schedule(
                self.now + lat,
                Ev::ConnectDone {
                    conn: id,
                    result: Err(CloseReason::Refused),
                },
            );
        }
    }

    fn on_syn(&mut self, id: SimConnId) -> bool {
        let Some(c) = self.net.conns.get(&id) else {
            return false;
        };
        if !c.ends[0].open {
            self.net.conns.remove(&id);
            return false;
        }
        let from = c.ends[0].node;
        let target = self.by_address.get(&c.target).copied();
        let lat = self.latency.draw(&mut self.rng);
        let Some(t) = target.filter(|t| self.nodes[*t].is_up()) else {
            self.schedule(
                self.now + lat,
                Ev::ConnectDone {
                    conn: id,
                    result: Err(CloseReason::Refused),
                },
            );
            return false;
        };
        if self.net.is_cut(from, t) {
            self.connect_across_partition(id);
            return false;
        }
        if let Some(until) = self.paused(t) {
            self.schedule(until, Ev::Syn { conn: id });
            return false;
        }
        let conn = self.nodes[t].env.next_conn();
        self.net.accept(id, t, conn);
        // The initiator learns it is connected before any answer reaches it.
        let done_at = self.now + lat;
        let c = self.net.conns.get_mut(&id).expect("accepted");
        c.dirs[1].last_ready = done_at;
        // What the initiator sent while connecting leaves now.
        let queued: Vec<Wire> = c.dirs[0].queue.drain(..).map(|(_, w)| w).collect();
        c.dirs[0].last_ready = self.now;
        self.schedule(
            done_at,
            Ev::ConnectDone {
                conn: id,
                result: Ok(()),
            },
        );
        let reached = self.dispatch(t, Event::Accepted { conn }, Some(from));
        for w in queued {
            self.push(id, 0, w);
        }
        reached
    }

    fn on_connect_done(&mut self, id: SimConnId, result: Result<(), CloseReason>) -> bool {
        let Some(c) = self.net.conns.get(&id) else {
            return false;
        };
        let end = c.ends[0].clone();
        if !end.open {
            return false;
        }
        if let Some(until) = self.paused(end.node) {
            self.schedule(until, Ev::ConnectDone { conn: id, result });
            return false;
        }
        let conn = end.conn.expect("initiator end has an id");
        match result {
            Ok(()) => self.dispatch(end.node, Event::Connected { conn }, None),
            Err(reason) => {
                self.net.close_end(id, 0);
                self.net.conns.remove(&id);
                self.dispatch(end.node, Event::Closed { conn, reason }, None)
            }
        }
    }

    /// Queue `wire` from `side` of a connection towards the other side.
    fn push(&mut self, id: SimConnId, side: usize, wire: Wire) {
        let lat = self.latency.draw(&mut self.rng);
        let now = self.now;
        let held = self.net.held.contains(&(id, side));
        let Some(c) = self.net.conns.get_mut(&id) else {
            return;
        };
        let open = c.state == State::Open;
        let d = &mut c.dirs[side];
        let ready = (now + lat).max(d.last_ready);
        d.last_ready = ready;
        d.queue.push_back((ready, wire));
        if open && !d.scheduled && !held {
            d.scheduled = true;
            let at = d.queue.front().expect("just pushed").0;
            self.schedule(
                at,
                Ev::Deliver {
                    conn: id,
                    dir: side,
                },
            );
        }
    }

    fn on_deliver(&mut self, id: SimConnId, dir: usize) -> bool {
        let now = self.now;
        let Some(c) = self.net.conns.get_mut(&id) else {
            return false;
        };
        c.dirs[dir].scheduled = false;
        let (from, to) = (c.ends[dir].node, c.ends[1 - dir].node);
        if c.dirs[dir].queue.is_empty() {
            return false;
        }
        if self.net.is_blocked(from, to) {
            self.net.held.insert((id, dir));
            return false;
        }
        let hold = self
            .net
            .clogged_until(from, to, now)
            .or_else(|| self.paused(to));
        let c = self.net.conns.get_mut(&id).expect("checked");
        if let Some(until) = hold {
            c.dirs[dir].scheduled = true;
            self.schedule(until, Ev::Deliver { conn: id, dir });
            return false;
        }
        let (_, wire) = c.dirs[dir].queue.pop_front().expect("non-empty");
        if let Some(&(next, _)) = c.dirs[dir].queue.front() {
            c.dirs[dir].scheduled = true;
            self.schedule(next.max(now), Ev::Deliver { conn: id, dir });
        }
        let c = &self.net.conns[&id];
        let recv = c.ends[1 - dir].clone();
        let reached = if !recv.open {
            false
        } else {
            let conn = recv.conn.expect("open end has an id");
            match wire {
                Wire::Msg(msg) => self.dispatch(to, Event::Received { conn, msg }, Some(from)),
                Wire::Fin | Wire::Rst => {
                    let reason = if matches!(wire, Wire::Fin) {
                        CloseReason::PeerClosed
                    } else {
                        CloseReason::Reset
                    };
                    self.net.close_end(id, 1 - dir);
                    self.dispatch(to, Event::Closed { conn, reason }, Some(from))
                }
            }
        };
        self.net.remove_if_dead(id);
        reached
    }

    // ---- controls (faults and scripted tests) ----

    pub fn label(&self, node: NodeIdx) -> &str {
        &self.nodes[node].label
    }

    fn note(&mut self, what: String) {
        self.trace
            .step(self.now, ("fault", &what), || format!("fault: {what}"));
    }

    /// Kill a node's process: memory gone, connections reset.
    pub fn crash(&mut self, node: NodeIdx) {
        if !self.nodes[node].is_up() {
            return;
        }
        let what = format!("crash {}", self.nodes[node].label);
        self.note(what);
        self.stop_process(node, Proc::Down, Wire::Rst);
    }

    /// Start a crashed node again after `after`.
    pub fn restart_after(&mut self, node: NodeIdx, after: Duration) {
        let inc = self.nodes[node].incarnation;
        self.schedule(self.now + after, Ev::Start { node, inc });
    }

    /// Stall a node's process: nothing reaches it until `until` (its timers fire late).
    pub fn pause(&mut self, node: NodeIdx, span: Duration) {
        if !self.nodes[node].is_up() {
            return;
        }
        let what = format!("pause {} for {span:?}", self.nodes[node].label);
        self.note(what);
        let until = self.now + span;
        let n = &mut self.nodes[node];
        n.paused_until = Some(n.paused_until.map_or(until, |t| t.max(until)));
    }

    /// Cut `side` off from every other node; one way: only `side`'s outgoing traffic.
    pub fn partition(&mut self, side: &[NodeIdx], one_way: bool) {
        let labels: Vec<&str> = side.iter().map(|n| self.nodes[*n].label.as_str()).collect();
        let what = format!(
            "partition {labels:?}{}",
            if one_way {
                " (one way: outgoing lost)"
            } else {
                ""
            }
        );
        self.note(what);
        for &a in side {
            for b in 0..self.nodes.len() {
                if side.contains(&b) {
                    continue;
                }
                self.net.block(a, b);
                if !one_way {
                    self.net.block(b, a);
                }
            }
        }
    }

    /// Lift partitions after `after`.
    pub fn heal_partitions_after(&mut self, after: Duration) {
        self.schedule(self.now + after, Ev::HealPartition);
    }

    pub fn heal_partitions(&mut self) {
        if !self.net.partitioned() {
            return;
        }
        self.note("heal partitions".into());
        for (id, dir) in self.net.heal_partitions() {
            if let Some(c) = self.net.conns.get_mut(&id) {
                let d = &mut c.dirs[dir];
                if let (false, Some(&(at, _))) = (d.scheduled, d.queue.front()) {
                    d.scheduled = true;
                    self.schedule(at.max(self.now), Ev::Deliver { conn: id, dir });
                }
            }
        }
    }

    /// Hold a node's traffic, both ways, for a while.
    pub fn clog(&mut self, node: NodeIdx, span: Duration) {
        let what = format!("clog {} for {span:?}", self.nodes[node].label);
        self.note(what);
        self.net.clog(node, self.now + span);
    }

    /// Reset one open connection, chosen at random.
    pub fn reset_random_connection(&mut self) {
        let open = self.net.open_conns();
        if open.is_empty() {
            return;
        }
        let id = *rng::pick(&mut self.rng, &open);
        let c = &self.net.conns[&id];
        let what = format!(
            "reset {} - {}",
            self.nodes[c.ends[0].node].label, self.nodes[c.ends[1].node].label
        );
        self.note(what);
        let c = self.net.conns.get_mut(&id).expect("open");
        c.dirs[0].queue.clear();
        c.dirs[1].queue.clear();
        self.push(id, 0, Wire::Rst);
        self.push(id, 1, Wire::Rst);
    }

    /// Reset every open connection of a node (a client's network blip: its process runs on).
    pub fn reset_connections_of(&mut self, node: NodeIdx) {
        let open: Vec<SimConnId> = self
            .net
            .open_conns()
            .into_iter()
            .filter(|id| self.net.conns[id].ends.iter().any(|e| e.node == node))
            .collect();
        if open.is_empty() {
            return;
        }
        let what = format!("reset every connection of {}", self.nodes[node].label);
        self.note(what);
        for id in open {
            let c = self.net.conns.get_mut(&id).expect("open");
            c.dirs[0].queue.clear();
            c.dirs[1].queue.clear();
            self.push(id, 0, Wire::Rst);
            self.push(id, 1, Wire::Rst);
        }
    }

    pub fn jump_clock(&mut self, node: NodeIdx, by_ns: i64) {
        let what = format!(
            "clock of {} jumps {:+.3}s",
            self.nodes[node].label,
            by_ns as f64 / 1e9
        );
        self.note(what);
        self.nodes[node].clock.jump(by_ns);
    }

    /// Crash a storage and restart it after `after` with a new, empty disk.
    pub fn restart_wiped(&mut self, node: NodeIdx, after: Duration) {
        if !self.disks.has(node) {
            return;
        }
        let old_nid = self.nodes[node].storage().and_then(|s| s.nid());
        // The ids that hold data now: none of them may come back on an empty disk.
        let readable: BTreeSet<Nid> = self
            .masters()
            .filter_map(|(_, m)| m.primary_table())
            .flat_map(|pt| {
                (0..pt.partitions())
                    .flat_map(|p| pt.row(p).filter(|(_, s)| s.is_readable()).map(|(n, _)| n))
                    .collect::<Vec<_>>()
            })
            .collect();
        // Whether the wipe loses data for good: a partition whose every readable cell (in
        // the node's table) was on this disk or on one wiped before.
        let mut gone: BTreeSet<Nid> = self
            .disk_events
            .iter()
            .filter(|e| e.kind == DiskEventKind::Wiped)
            .filter_map(|e| e.old_nid)
            .collect();
        gone.extend(old_nid);
        let lost_data = self.nodes[node]
            .storage()
            .and_then(|s| s.partition_table())
            .is_some_and(|pt| {
                (0..pt.partitions()).any(|p| {
                    pt.row(p)
                        .filter(|(_, s)| s.is_readable())
                        .all(|(n, _)| gone.contains(&n))
                })
            });
        self.crash(node);
        if self.nodes[node].is_up() {
            return;
        }
        if let Err(e) = self.disks.wipe(node) {
            self.fail(format!("simulator: wiping a disk: {e}"));
            return;
        }
        let what = format!(
            "wipe the disk of {} (was {old_nid:?})",
            self.nodes[node].label
        );
        self.note(what);
        self.disk_events.push(DiskEvent {
            node,
            at: self.now,
            old_nid,
            kind: DiskEventKind::Wiped,
            readable: readable.into_iter().collect(),
            lost_data,
        });
        self.restart_after(node, after);
    }

    /// Crash a storage and restart it after `after` with the disk of `with` (refused if
    /// `with` is running then); it comes back with its own disk later.
    pub fn restart_swapped(&mut self, node: NodeIdx, with: NodeIdx, after: Duration) {
        if node == with || !self.disks.has(node) || !self.disks.has(with) {
            return;
        }
        self.crash(node);
        self.pending_swaps.insert(node, with);
        self.restart_after(node, after);
    }

    /// Set the I/O fault rates of every disk.
    pub fn set_disk_faults(&mut self, rates: &IoRates) {
        self.disks.set_rates(rates);
    }

    pub fn start_faults(&mut self, injector: Injector) {
        injector.start(self);
        let first = self.now + injector.period();
        self.injector = Some(injector);
        self.schedule(first, Ev::FaultTick);
    }

    /// The liveness phase: no more faults (nor buggify), partitions heal, and every node that is down
    /// starts again, except `keep_down`. Pauses and clogs run out by themselves (they are
    /// short); returns when the last one ends.
    pub fn heal_all(&mut self, keep_down: &[NodeIdx]) -> Duration {
        self.injector = None;
        self.disks.heal();
        self.pending_swaps.clear();
        for n in &mut self.nodes {
            n.env.stop_buggify();
        }
        self.heal_partitions();
        for &k in keep_down {
            self.crash(k);
        }
        self.keep_down = keep_down.iter().copied().collect();
        for i in 0..self.nodes.len() {
            let down = self.nodes[i].proc == Proc::Down || self.failed.contains(&i);
            if down && !self.keep_down.contains(&i) {
                let inc = self.nodes[i].incarnation;
                self.schedule(self.now, Ev::Start { node: i, inc });
            }
        }
        let paused = self.nodes.iter().filter_map(|n| n.paused_until).max();
        [Some(self.now), paused, self.net.clogs_end()]
            .into_iter()
            .flatten()
            .max()
            .expect("now")
    }

    pub fn storages(&self) -> impl Iterator<Item = (NodeIdx, &Storage)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.storage().map(|s| (i, s)))
    }

    pub fn masters(&self) -> impl Iterator<Item = (NodeIdx, &Master)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.master().map(|m| (i, m)))
    }
}
