//! The simulated network: TCP-like connections (connect, accept or refuse, per-direction
//! FIFO delivery, close after in-flight data, reset), a latency model with a slow tail, and
//! the faults that act on links: symmetric and one-way partitions and clogging.
//!
//! This module keeps the state; `world` schedules the deliveries it asks for.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::actors::ConnId;
use crate::proto::{Address, Message};
use crate::rng::{self, ChaCha8Rng};

/// Index of a node in the world.
pub type NodeIdx = usize;
/// Index of a simulated connection (both ends).
pub type SimConnId = u64;

/// How long one hop takes: uniform in `[min, max]`, plus now and then a slow tail.
#[derive(Clone, Debug)]
pub struct Latency {
    pub min: Duration,
    pub max: Duration,
    /// Probability that a hop is slow.
    pub slow_p: f64,
    pub slow_max: Duration,
}

impl Latency {
    pub fn draw(&self, rng: &mut ChaCha8Rng) -> Duration {
        let mut d = rng::duration(rng, self.min, self.max);
        if self.slow_p > 0.0 && rng::chance(rng, self.slow_p) {
            d += rng::duration(rng, Duration::ZERO, self.slow_max);
        }
        d
    }
}

/// What travels in one direction of a connection.
#[derive(Clone, Debug)]
pub enum Wire {
    Msg(Message),
    /// The sender closed its end after what precedes.
    Fin,
    /// The connection was reset: the receiver learns it, in-flight data is lost.
    Rst,
}

/// One end of a connection.
#[derive(Clone, Debug)]
pub struct End {
    pub node: NodeIdx,
    /// The node's id for it (the acceptor's is set when the connection is accepted).
    pub conn: Option<ConnId>,
    /// The end's owner can still use it and will be told when it ends.
    pub open: bool,
}

#[derive(Default, Debug)]
pub struct Dir {
    pub queue: VecDeque<(Duration, Wire)>,
    /// A delivery event for the head is in the world's queue.
    pub scheduled: bool,
    /// Ready time of the last queued item: later items are never ready before it (FIFO).
    pub last_ready: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    /// The SYN is on its way.
    Connecting,
    Open,
}

#[derive(Debug)]
pub struct SimConn {
    pub target: Address,
    pub state: State,
    /// `[initiator, acceptor]`; the acceptor's end exists once accepted.
    pub ends: [End; 2],
    /// `dirs[0]` carries initiator to acceptor, `dirs[1]` the other way.
    pub dirs: [Dir; 2],
}

impl SimConn {
    pub fn is_dead(&self) -> bool {
        !self.ends[0].open && !self.ends[1].open && self.dirs.iter().all(|d| d.queue.is_empty())
    }
}

#[derive(Default)]
pub struct Net {
    pub conns: BTreeMap<SimConnId, SimConn>,
    next_conn: SimConnId,
    /// (node, its conn id) -> (connection, side).
    by_end: BTreeMap<(NodeIdx, ConnId), (SimConnId, usize)>,
    /// Directed links that carry nothing: (from, to).
    blocked: BTreeSet<(NodeIdx, NodeIdx)>,
    /// Nodes whose traffic, both ways, is held until the given time.
    clogged: BTreeMap<NodeIdx, Duration>,
    /// Directions whose head is held by a partition; rescheduled when it heals.
    pub held: BTreeSet<(SimConnId, usize)>,
}

impl Net {
    pub fn open(&mut self, from: NodeIdx, conn: ConnId, target: Address) -> SimConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            SimConn {
                target,
                state: State::Connecting,
                ends: [
                    End {
                        node: from,
                        conn: Some(conn),
                        open: true,
                    },
                    End {
                        node: usize::MAX,
                        conn: None,
                        open: false,
                    },
                ],
                dirs: [Dir::default(), Dir::default()],
            },
        );
        self.by_end.insert((from, conn), (id, 0));
        id
    }

    pub fn accept(&mut self, id: SimConnId, node: NodeIdx, conn: ConnId) {
        let c = self
            .conns
            .get_mut(&id)
            .expect("accepting a live connection");
        c.state = State::Open;
        c.ends[1] = End {
            node,
            conn: Some(conn),
            open: true,
        };
        self.by_end.insert((node, conn), (id, 1));
    }

    pub fn lookup(&self, node: NodeIdx, conn: ConnId) -> Option<(SimConnId, usize)> {
        self.by_end.get(&(node, conn)).copied()
    }

    /// Close one end: its owner hears nothing more of it.
    pub fn close_end(&mut self, id: SimConnId, side: usize) {
        if let Some(c) = self.conns.get_mut(&id) {
            let end = &mut c.ends[side];
            end.open = false;
            if let Some(conn) = end.conn {
                self.by_end.remove(&(end.node, conn));
            }
        }
    }

    pub fn remove_if_dead(&mut self, id: SimConnId) {
        if self.conns.get(&id).is_some_and(|c| c.is_dead()) {
            self.conns.remove(&id);
            self.held.remove(&(id, 0));
            self.held.remove(&(id, 1));
        }
    }

    /// Every connection end a node holds.
    pub fn ends_of(&self, node: NodeIdx) -> Vec<(SimConnId, usize)> {
        self.by_end
            .range((node, ConnId(0))..=(node, ConnId(u64::MAX)))
            .map(|(_, v)| *v)
            .collect()
    }

    pub fn is_blocked(&self, from: NodeIdx, to: NodeIdx) -> bool {
        self.blocked.contains(&(from, to))
    }

    /// Either direction blocked: a TCP handshake cannot complete.
    pub fn is_cut(&self, a: NodeIdx, b: NodeIdx) -> bool {
        self.is_blocked(a, b) || self.is_blocked(b, a)
    }

    pub fn block(&mut self, from: NodeIdx, to: NodeIdx) {
        self.blocked.insert((from, to));
    }

    pub fn partitioned(&self) -> bool {
        !self.blocked.is_empty()
    }

    /// Lift every partition; returns the held directions to reschedule.
    pub fn heal_partitions(&mut self) -> Vec<(SimConnId, usize)> {
        self.blocked.clear();
        std::mem::take(&mut self.held).into_iter().collect()
    }

    pub fn clog(&mut self, node: NodeIdx, until: Duration) {
        let e = self.clogged.entry(node).or_default();
        *e = (*e).max(until);
    }

    /// When the last clog ends.
    pub fn clogs_end(&self) -> Option<Duration> {
        self.clogged.values().max().copied()
    }

    /// Until when traffic between `a` and `b` is held by clogging, if it is.
    pub fn clogged_until(&self, a: NodeIdx, b: NodeIdx, now: Duration) -> Option<Duration> {
        let t = [a, b]
            .iter()
            .filter_map(|n| self.clogged.get(n))
            .copied()
            .max()?;
        (t > now).then_some(t)
    }

    /// Open connections, for picking one to reset.
    pub fn open_conns(&self) -> Vec<SimConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.state == State::Open && c.ends[0].open && c.ends[1].open)
            .map(|(id, _)| *id)
            .collect()
    }
}
