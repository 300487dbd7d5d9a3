//! The actor contract every node role implements, and the roles themselves.
//!
//! A role is a state machine: it reacts to an [`Event`] and acts on the world only through
//! [`Ctx`], which records [`Effect`]s for the host to carry out after the call returns. The
//! same role code runs in two hosts: `sim` (virtual time, simulated network, faults) and
//! `runtime` (actix, TCP, the system clock). Role code never reads a clock, opens a socket,
//! spawns a thread, draws OS randomness or iterates a `HashMap`; clippy.toml enforces it.
//!
//! Contract: the host calls [`Actor::start`] once per process start (also after a crash),
//! then [`Actor::handle`] for each event, one at a time, and applies the effects of each call
//! in order before the next event. Messages may be sent on a connection as soon as
//! [`Ctx::connect`] returns its id; the host queues them until the connection is up and
//! drops them if it fails (the actor then gets `Closed`).
//!
//! What every role does alike is written once: `core` (the event dispatch, the tick,
//! following the primary master), `link` (connections, idle detection) and `requests`
//! (the one table that pairs answers with requests). A role implements `core::Node`'s
//! hooks and gets `Actor` from it.

pub mod admin;
pub mod bootstrap;
pub mod client;
pub mod core;
#[cfg(test)]
pub(crate) mod fuzz;
pub mod link;
pub mod master;
pub mod master_link;
pub mod nodes;
pub mod requests;
pub mod storage;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::proto::{Address, Message, WallTime};
use crate::rng::{self, ChaCha8Rng};

pub use master::election::Claim;

/// A host gives up on a connection attempt that has not completed after this long (the
/// actor then gets `Closed` with `TimedOut`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection, numbered by the host, unique for the life of the node's host (never
/// reused, even across restarts).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ConnId(pub u64);

/// A timer, numbered by the host like connections.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct TimerId(pub u64);

/// The periodic tick every role runs (reconnections, idle checks, elections): a second
/// apart, plus up to 100 ms of jitter so that nodes started together do not act in
/// lockstep.
#[derive(Default)]
pub struct Ticker {
    armed: Option<TimerId>,
}

impl Ticker {
    const PERIOD: Duration = Duration::from_secs(1);
    const JITTER: Duration = Duration::from_millis(100);
    const TOKEN: u64 = 1;

    /// Schedule the next tick (forgetting any earlier one).
    pub fn arm(&mut self, cx: &mut Ctx) {
        let jitter = rng::duration(cx.rng(), Duration::ZERO, Self::JITTER);
        self.armed = Some(cx.set_timer(Self::PERIOD + jitter, Self::TOKEN));
    }

    /// Whether a timer event is the tick armed last (one superseded by a later `arm` is
    /// not).
    pub fn fired(&self, id: TimerId, token: u64) -> bool {
        token == Self::TOKEN && self.armed == Some(id)
    }
}

/// Why a connection ended.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum CloseReason {
    /// The peer closed it.
    PeerClosed,
    /// Reset by the peer or the network (the peer process died, the route broke).
    Reset,
    /// Nobody accepts connections at that address.
    Refused,
    /// The connection attempt did not complete in time.
    TimedOut,
    /// The peer's bytes were not our protocol (handshake, framing or decoding).
    Protocol(String),
}

/// What happens to a node.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Event {
    /// A peer connected to our listening address.
    Accepted {
        conn: ConnId,
    },
    /// A connection we asked for is up.
    Connected {
        conn: ConnId,
    },
    /// A connection ended; no more events will name it.
    Closed {
        conn: ConnId,
        reason: CloseReason,
    },
    Received {
        conn: ConnId,
        msg: Message,
    },
    Timer {
        id: TimerId,
        token: u64,
    },
    /// A request from the process itself (an operator's signal, a client library call).
    Local(Command),
}

/// Requests a node gets from its own process.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Command {
    /// Stop cleanly (SIGINT/SIGTERM).
    Shutdown,
    /// An application's call to the client role.
    Call(client::Call),
}

/// What a node asks its host to do, in order.
#[derive(Clone, PartialEq, Debug)]
pub enum Effect {
    Connect {
        conn: ConnId,
        to: Address,
    },
    Send {
        conn: ConnId,
        msg: Message,
    },
    Close {
        conn: ConnId,
    },
    SetTimer {
        id: TimerId,
        after: Duration,
        token: u64,
    },
    CancelTimer {
        id: TimerId,
    },
    /// A fact for the simulator's checkers; production hosts ignore it.
    Observe(Observation),
    /// The client role answers an application's call.
    Reply(client::Reply),
    /// The client role tells the application something unasked (invalidations).
    Notice(client::Notice),
    /// The process should end (told to stop by the cluster, or a fatal condition).
    Exit {
        reason: String,
        success: bool,
    },
}

/// Facts a node reports about decisions the checkers judge (see `sim::check`).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Observation {
    /// A primary master accepted another master's identification; `own` is its claim if
    /// it was still electing (RECOVERING), `peer` the claim the peer sent, if any.
    AcceptedMaster {
        own: Option<Claim>,
        peer: Option<Claim>,
    },
    /// A claimant gave up its claim to an older one.
    Yielded { own: Claim, to: Claim },
    /// A primary left RECOVERING with the table `ptid`, without these nodes that hold
    /// readable cells in it; `startup_allowed` if an operator (or an automatic restart)
    /// allowed starting without them.
    ClusterStarted {
        ptid: Option<crate::proto::Ptid>,
        missing: Vec<crate::proto::Nid>,
        startup_allowed: bool,
    },
    /// A primary handed out these OIDs (first, last) or this TTID (not one a restore
    /// chose): none may ever be handed out again.
    HandedOut {
        oids: Option<(crate::proto::Oid, crate::proto::Oid)>,
        ttid: Option<crate::proto::Tid>,
    },
}

/// A node role.
pub trait Actor {
    /// The process (re)starts: arm timers, start connecting.
    fn start(&mut self, cx: &mut Ctx);
    fn handle(&mut self, cx: &mut Ctx, ev: Event);
}

/// Per-node state the host keeps for the actor across calls: its random generator, the id
/// counter for connections and timers, and the simulator's fault hooks.
pub struct NodeEnv {
    pub rng: ChaCha8Rng,
    next_id: u64,
    buggify: Option<Buggify>,
    mutant: Option<&'static str>,
}

impl NodeEnv {
    /// A production environment: no buggify, no mutant.
    pub fn production(rng: ChaCha8Rng) -> NodeEnv {
        NodeEnv {
            rng,
            next_id: 1,
            buggify: None,
            mutant: None,
        }
    }

    /// A simulated environment with fault injection hooks.
    pub fn simulated(
        rng: ChaCha8Rng,
        buggify: Option<Buggify>,
        mutant: Option<&'static str>,
    ) -> NodeEnv {
        NodeEnv {
            rng,
            next_id: 1,
            buggify,
            mutant,
        }
    }

    /// A fresh id for a connection the host creates itself (an accepted one).
    pub fn next_conn(&mut self) -> ConnId {
        self.next_id += 1;
        ConnId(self.next_id)
    }

    /// No more rare paths (the simulator's liveness phase: faults have healed).
    pub fn stop_buggify(&mut self) {
        self.buggify = None;
    }

    /// Re-seed after a simulated restart: a new process draws new numbers, but ids keep
    /// counting so that nothing from the previous life can be mistaken for a new one.
    pub fn reseed(&mut self, rng: ChaCha8Rng) {
        self.rng = rng;
    }
}

/// The simulator's rare-path switch: each call site is enabled for a run or not (decided at
/// its first use), and an enabled site fires now and then. Production nodes have none.
pub struct Buggify {
    rng: ChaCha8Rng,
    sites: BTreeMap<&'static str, bool>,
}

impl Buggify {
    pub fn new(rng: ChaCha8Rng) -> Buggify {
        Buggify {
            rng,
            sites: BTreeMap::new(),
        }
    }

    fn fire(&mut self, site: &'static str) -> bool {
        let rng = &mut self.rng;
        let enabled = *self
            .sites
            .entry(site)
            .or_insert_with(|| rng::chance(rng, 0.25));
        enabled && rng::chance(&mut self.rng, 0.05)
    }
}

/// The world as one call of an actor sees it.
pub struct Ctx<'a> {
    now: WallTime,
    elapsed: Duration,
    env: &'a mut NodeEnv,
    effects: &'a mut Vec<Effect>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        now: WallTime,
        elapsed: Duration,
        env: &'a mut NodeEnv,
        effects: &'a mut Vec<Effect>,
    ) -> Ctx<'a> {
        Ctx {
            now,
            elapsed,
            env,
            effects,
        }
    }

    /// This node's wall clock (TIDs and election timestamps come from it). It may jump,
    /// backwards too.
    pub fn now(&self) -> WallTime {
        self.now
    }

    /// This node's monotonic clock: time since the process started.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    pub fn connect(&mut self, to: &Address) -> ConnId {
        let conn = self.env.next_conn();
        self.effects.push(Effect::Connect {
            conn,
            to: to.clone(),
        });
        conn
    }

    pub fn send(&mut self, conn: ConnId, msg: Message) {
        self.effects.push(Effect::Send { conn, msg });
    }

    /// Close a connection; no event will name it afterwards.
    pub fn close(&mut self, conn: ConnId) {
        self.effects.push(Effect::Close { conn });
    }

    pub fn set_timer(&mut self, after: Duration, token: u64) -> TimerId {
        self.env.next_id += 1;
        let id = TimerId(self.env.next_id);
        self.effects.push(Effect::SetTimer { id, after, token });
        id
    }

    pub fn cancel_timer(&mut self, id: TimerId) {
        self.effects.push(Effect::CancelTimer { id });
    }

    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.env.rng
    }

    /// True now and then in simulation, to push a rare path; always false in production.
    pub fn buggify(&mut self, site: &'static str) -> bool {
        match &mut self.env.buggify {
            Some(b) => b.fire(site),
            None => false,
        }
    }

    /// Whether this run re-introduces the named bug (simulation only), to prove that the
    /// checkers catch it. Without the `mutants` feature (production builds) it is a
    /// constant false, so the compiler drops every mutant branch.
    #[cfg(feature = "mutants")]
    pub fn mutant(&self, name: &str) -> bool {
        self.env.mutant == Some(name)
    }

    #[cfg(not(feature = "mutants"))]
    #[inline(always)]
    pub fn mutant(&self, _name: &str) -> bool {
        let _ = self.env.mutant;
        false
    }

    /// Answer an application's call (client role).
    pub fn reply(&mut self, r: client::Reply) {
        self.effects.push(Effect::Reply(r));
    }

    /// Tell the application something unasked (client role).
    pub fn notice(&mut self, n: client::Notice) {
        self.effects.push(Effect::Notice(n));
    }

    pub fn observe(&mut self, o: Observation) {
        self.effects.push(Effect::Observe(o));
    }

    pub fn exit(&mut self, reason: impl Into<String>, success: bool) {
        self.effects.push(Effect::Exit {
            reason: reason.into(),
            success,
        });
    }
}

/// Drive one actor by hand in unit tests: feed events, look at the effects.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub struct Harness<A: Actor> {
        pub actor: A,
        env: NodeEnv,
        pub now: WallTime,
        pub elapsed: Duration,
        /// The last timer the actor set.
        timer: Option<(TimerId, u64)>,
    }

    impl<A: Actor> Harness<A> {
        pub fn new(actor: A) -> Harness<A> {
            Harness {
                actor,
                env: NodeEnv::production(rng::stream(0, 0)),
                now: WallTime::from_secs(1_767_225_600),
                elapsed: Duration::ZERO,
                timer: None,
            }
        }

        fn note_timers(&mut self, out: &[Effect]) {
            for e in out {
                if let Effect::SetTimer { id, token, .. } = e {
                    self.timer = Some((*id, *token));
                }
            }
        }

        /// Run the actor with a simulation mutant switched on.
        pub fn with_mutant(actor: A, mutant: &'static str) -> Harness<A> {
            let mut h = Harness::new(actor);
            h.env = NodeEnv::simulated(rng::stream(0, 0), None, Some(mutant));
            h
        }

        pub fn start(&mut self) -> Vec<Effect> {
            let mut out = vec![];
            let mut cx = Ctx::new(self.now, self.elapsed, &mut self.env, &mut out);
            self.actor.start(&mut cx);
            self.note_timers(&out);
            out
        }

        pub fn handle(&mut self, ev: Event) -> Vec<Effect> {
            let mut out = vec![];
            let mut cx = Ctx::new(self.now, self.elapsed, &mut self.env, &mut out);
            self.actor.handle(&mut cx, ev);
            self.note_timers(&out);
            out
        }

        /// Fire the periodic tick armed last (whenever it was due).
        pub fn tick(&mut self) -> Vec<Effect> {
            match self.timer {
                Some((id, token)) => self.handle(Event::Timer { id, token }),
                None => vec![],
            }
        }

        /// A peer connects and sends `packet`.
        pub fn incoming(&mut self, conn: ConnId, packet: crate::proto::Packet) -> Vec<Effect> {
            self.handle(Event::Accepted { conn });
            self.handle(Event::Received {
                conn,
                msg: Message { id: 0, packet },
            })
        }
    }

    /// The packets sent on `conn`, in order.
    pub fn sent(effects: &[Effect], conn: ConnId) -> Vec<crate::proto::Packet> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { conn: c, msg } if *c == conn => Some(msg.packet.clone()),
                _ => None,
            })
            .collect()
    }

    /// The first connection the node asked to open.
    pub fn first_connect(effects: &[Effect]) -> Option<ConnId> {
        effects.iter().find_map(|e| match e {
            Effect::Connect { conn, .. } => Some(*conn),
            _ => None,
        })
    }

    pub fn closed(effects: &[Effect], conn: ConnId) -> bool {
        effects
            .iter()
            .any(|e| matches!(e, Effect::Close { conn: c } if *c == conn))
    }
}
