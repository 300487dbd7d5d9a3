//! Per-connection bookkeeping shared by every role: what the peer is, the message-id
//! counter, idle detection, and the requests sent and not answered yet (see `requests`).
//!
//! NEO relies on TCP keepalive to notice dead peers; we detect them in the actor instead
//! (ping after `PING_AFTER` of silence, close after `DEAD_AFTER`), so that the simulator
//! exercises it and a partitioned peer is noticed within a bound we choose.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tracing::debug;

use super::requests::{Failure, Requests, REQUEST_TIMEOUT};
use super::{ConnId, Ctx};
use crate::proto::{Message, Packet};

/// Send a Ping on a connection that has been silent this long.
pub const PING_AFTER: Duration = Duration::from_secs(4);
/// Close a connection on which nothing arrived for this long.
pub const DEAD_AFTER: Duration = Duration::from_secs(12);

pub struct Link<P> {
    pub peer: P,
    next_id: u32,
    last_rx: Duration,
    last_tx: Duration,
}

/// What a received message is to the role.
#[derive(Debug, PartialEq)]
pub enum Incoming<A> {
    /// The answer to our request registered with `A`.
    Answer(A, Message),
    /// A request or a notification from the peer.
    Message(Message),
}

/// The connections of one node, keyed by id, each with the role's description `P` of its
/// peer, and the requests sent on them, each with what the role needs `A` to resume.
pub struct Links<P, A = ()> {
    map: BTreeMap<ConnId, Link<P>>,
    requests: Requests<A>,
    /// Requests that failed and that the role has not been told about yet (see
    /// `take_failed`).
    failed: VecDeque<(ConnId, A, Failure)>,
}

impl<P, A> Default for Links<P, A> {
    fn default() -> Self {
        Links {
            map: BTreeMap::new(),
            requests: Requests::default(),
            failed: VecDeque::new(),
        }
    }
}

impl<P, A> Links<P, A> {
    pub fn insert(&mut self, cx: &Ctx, conn: ConnId, peer: P) {
        let now = cx.elapsed();
        self.map.insert(
            conn,
            Link {
                peer,
                next_id: 0,
                last_rx: now,
                last_tx: now,
            },
        );
    }

    pub fn get(&self, conn: ConnId) -> Option<&P> {
        self.map.get(&conn).map(|l| &l.peer)
    }

    pub fn get_mut(&mut self, conn: ConnId) -> Option<&mut P> {
        self.map.get_mut(&conn).map(|l| &mut l.peer)
    }

    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &P)> {
        self.map.iter().map(|(c, l)| (*c, &l.peer))
    }

    /// Forget a connection the host reported closed; its requests fail.
    pub fn remove(&mut self, conn: ConnId) -> Option<P> {
        let peer = self.map.remove(&conn)?.peer;
        let failed = self.requests.closed(conn);
        self.fail(failed, Failure::Closed);
        Some(peer)
    }

    /// Close a connection and forget it; its requests fail.
    pub fn close(&mut self, cx: &mut Ctx, conn: ConnId) -> Option<P> {
        let peer = self.remove(conn)?;
        cx.close(conn);
        Some(peer)
    }

    pub fn close_all(&mut self, cx: &mut Ctx) {
        let conns: Vec<ConnId> = self.map.keys().copied().collect();
        for conn in conns {
            self.close(cx, conn);
        }
    }

    fn send(&mut self, cx: &mut Ctx, conn: ConnId, id: Option<u32>, packet: Packet) -> Option<u32> {
        let link = self.map.get_mut(&conn)?;
        let id = id.unwrap_or_else(|| {
            let id = link.next_id;
            link.next_id = link.next_id.wrapping_add(1);
            id
        });
        link.last_tx = cx.elapsed();
        cx.send(conn, Message { id, packet });
        Some(id)
    }

    /// Send a request and wait for its answer: it comes back as `Incoming::Answer` with
    /// `what`, or fails (see `take_failed`). Returns its message id (None if the connection
    /// is gone: nothing is sent, nothing will be reported).
    pub fn ask(&mut self, cx: &mut Ctx, conn: ConnId, packet: Packet, what: A) -> Option<u32> {
        // Simulation: now and then a deadline so short that healthy peers miss it, to
        // exercise every role's handling of a request that failed.
        let timeout = if cx.buggify("request-short-deadline") {
            Duration::from_millis(500)
        } else {
            REQUEST_TIMEOUT
        };
        let deadline = cx.elapsed().saturating_add(timeout);
        let name = packet.name();
        let id = self.send(cx, conn, None, packet)?;
        self.requests.insert(conn, id, name, deadline, what);
        Some(id)
    }

    /// As `ask`, for a request the peer may rightly hold for long (a store, check, relock
    /// or vote waiting for locks that other transactions hold): no deadline of its own, it
    /// fails only when its connection closes (a silent peer's link is closed by liveness).
    pub fn ask_waiting(
        &mut self,
        cx: &mut Ctx,
        conn: ConnId,
        packet: Packet,
        what: A,
    ) -> Option<u32> {
        let name = packet.name();
        let id = self.send(cx, conn, None, packet)?;
        self.requests.insert(conn, id, name, Duration::MAX, what);
        Some(id)
    }

    pub fn notify(&mut self, cx: &mut Ctx, conn: ConnId, packet: Packet) {
        self.send(cx, conn, None, packet);
    }

    /// Answer the request whose message id was `id`.
    pub fn answer(&mut self, cx: &mut Ctx, conn: ConnId, id: u32, packet: Packet) {
        self.send(cx, conn, Some(id), packet);
    }

    /// Note traffic from the peer, handle what every role handles alike (Ping, Pong) and
    /// pair answers with our requests. Returns what the role still has to handle; an
    /// answer to nothing pending (late, or bogus) is dropped here.
    pub fn receive(&mut self, cx: &mut Ctx, conn: ConnId, msg: Message) -> Option<Incoming<A>> {
        let link = self.map.get_mut(&conn)?;
        link.last_rx = cx.elapsed();
        match msg.packet {
            Packet::Ping => {
                self.answer(cx, conn, msg.id, Packet::Pong);
                None
            }
            // Pings are not registered: any traffic proves the peer alive.
            Packet::Pong => None,
            _ if msg.packet.is_answer() => {
                let by_type = cx.mutant("answer-by-type");
                match self.requests.answered(conn, &msg, by_type) {
                    Some(what) => Some(Incoming::Answer(what, msg)),
                    None => {
                        debug!(
                            "{conn:?}: dropping {} #{}: it answers no pending request",
                            msg.packet.name(),
                            msg.id
                        );
                        None
                    }
                }
            }
            _ => Some(Incoming::Message(msg)),
        }
    }

    /// The requests waiting for an answer.
    pub fn pending(&self) -> impl Iterator<Item = &A> {
        self.requests.values()
    }

    /// Forget pending requests without reporting them (their owner starts over).
    pub fn cancel(&mut self, drop: impl FnMut(&A) -> bool) {
        self.requests.cancel(drop);
    }

    /// The next request that failed (its connection closed, or its deadline passed, see
    /// `check_idle`), each reported once, in order.
    pub fn take_failed(&mut self) -> Option<(ConnId, A, Failure)> {
        self.failed.pop_front()
    }

    fn fail(&mut self, requests: Vec<(ConnId, A)>, why: Failure) {
        self.failed
            .extend(requests.into_iter().map(|(c, a)| (c, a, why)));
    }

    /// Ping quiet connections, fail the requests past their deadline; return the silent
    /// connections, for the role to close and handle one at a time (what it says about the
    /// first loss must still reach the others).
    pub fn check_idle(&mut self, cx: &mut Ctx) -> Vec<ConnId> {
        let now = cx.elapsed();
        let expired = self.requests.expired(now);
        self.fail(expired, Failure::TimedOut);
        let mut dead: Vec<ConnId> = self
            .map
            .iter()
            .filter(|(_, l)| now.saturating_sub(l.last_rx) >= DEAD_AFTER)
            .map(|(c, _)| *c)
            .collect();
        // Simulation: now and then give up on a healthy connection, as a flaky network or
        // a too eager keepalive would, to exercise every reconnection path.
        if let Some(&c) = self.map.keys().next() {
            if !dead.contains(&c) && cx.buggify("link-drop-healthy") {
                dead.push(c);
            }
        }
        let quiet: Vec<ConnId> = self
            .map
            .iter()
            .filter(|(c, l)| {
                !dead.contains(c)
                    && now.saturating_sub(l.last_rx) >= PING_AFTER
                    && now.saturating_sub(l.last_tx) >= PING_AFTER / 2
            })
            .map(|(c, _)| *c)
            .collect();
        for conn in quiet {
            self.send(cx, conn, None, Packet::Ping);
        }
        dead
    }
}

/// The shortest wait between two connection attempts to one address (NEO's CONNECT_LIMIT).
pub const CONNECT_LIMIT: Duration = Duration::from_secs(1);
/// The longest wait, reached after repeated failures.
pub const CONNECT_LIMIT_MAX: Duration = Duration::from_secs(8);

/// Pacing of connection attempts per address: at most one per `CONNECT_LIMIT`, doubling
/// after each failure up to `CONNECT_LIMIT_MAX`, back to the minimum once a peer answers.
#[derive(Default)]
pub struct Backoff {
    /// Address -> (last attempt, consecutive failures).
    attempts: BTreeMap<crate::proto::Address, (Duration, u32)>,
}

impl Backoff {
    /// Whether an attempt may start now; records it if so.
    pub fn try_attempt(&mut self, now: Duration, address: &crate::proto::Address) -> bool {
        match self.attempts.get_mut(address) {
            Some((last, failures)) => {
                let wait = (CONNECT_LIMIT * 2u32.pow((*failures).min(3))).min(CONNECT_LIMIT_MAX);
                if now.saturating_sub(*last) < wait {
                    return false;
                }
                *last = now;
                true
            }
            None => {
                self.attempts.insert(address.clone(), (now, 0));
                true
            }
        }
    }

    pub fn failed(&mut self, address: &crate::proto::Address) {
        if let Some((_, failures)) = self.attempts.get_mut(address) {
            *failures = failures.saturating_add(1);
        }
    }

    pub fn succeeded(&mut self, address: &crate::proto::Address) {
        if let Some((_, failures)) = self.attempts.get_mut(address) {
            *failures = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Address;

    #[test]
    fn backoff_doubles_and_resets() {
        let a = Address::new("h", 1);
        let s = Duration::from_secs;
        let mut b = Backoff::default();
        assert!(b.try_attempt(s(0), &a));
        assert!(!b.try_attempt(s(0) + Duration::from_millis(999), &a));
        assert!(b.try_attempt(s(1), &a));
        b.failed(&a);
        assert!(!b.try_attempt(s(2), &a));
        assert!(b.try_attempt(s(3), &a));
        for _ in 0..10 {
            b.failed(&a);
        }
        assert!(!b.try_attempt(s(10), &a));
        assert!(b.try_attempt(s(11), &a), "capped at CONNECT_LIMIT_MAX");
        b.succeeded(&a);
        assert!(b.try_attempt(s(12), &a));
        assert!(b.try_attempt(s(0), &Address::new("h", 2)), "per address");
    }
}
