//! The node core: what every role does alike, written once. A role implements [`Node`]
//! (its hooks) and gets [`Actor`] from it: the event dispatch (connections accepted and
//! closed, Ping/Pong, answers paired with their requests, failed requests reported once),
//! the periodic tick (re-armed, idle links closed, overdue requests failed) and shutdown.
//!
//! Every role but the master also follows the primary master through a [`MasterLink`]:
//! [`Follower`] adds finding, identifying to and reconnecting to the primary.
//!
//! Roles keep their `Links`, `Ticker` and `MasterLink` as their own fields (lent to the core
//! through [`Node::core`] and [`Follower::master_link`]) so that role code reads
//! `self.links` as before.

use tracing::warn;

use super::client::{Call, ClientError, Reply};
use super::link::{Incoming, Links};
use super::master_link::{LinkEvent, MasterLink};
use super::requests::Failure;
use super::{Actor, CloseReason, Command, ConnId, Ctx, Event, Ticker, TimerId};
use crate::proto::{CellState, IdentificationExtra, Message, Nid, Ptid};
use crate::pt::PartitionTable;

/// A node role, as the core drives it.
pub trait Node {
    /// What the role knows of the peer of a connection.
    type Peer;
    /// What the role needs to resume when one of its requests is answered or fails.
    type Asked;

    /// The role's connections (with its pending requests) and its tick.
    fn core(&mut self) -> (&mut Links<Self::Peer, Self::Asked>, &mut Ticker);

    /// The process starts (also after a crash): arm the tick (`Node::tick` does), start
    /// connecting.
    fn on_start(&mut self, cx: &mut Ctx);

    /// Once true, the node handles no more events (it stopped, or asked to exit).
    fn stopped(&self) -> bool {
        false
    }

    /// What a peer that connected to us is until it identifies.
    fn accepted(&self) -> Self::Peer;

    /// A message for the role: `asked` is what we registered with our request when `msg`
    /// answers it, None for the peer's requests and notifications.
    fn on_message(&mut self, cx: &mut Ctx, conn: ConnId, asked: Option<Self::Asked>, msg: Message);

    /// One of our requests will never be answered (reported once per request, after the
    /// event that made it fail was handled).
    fn on_failed(&mut self, cx: &mut Ctx, conn: ConnId, asked: Self::Asked, why: Failure);

    /// A connection is gone (closed by the host, or by the core as silent); the role's
    /// requests on it are reported failed afterwards.
    fn on_closed(&mut self, cx: &mut Ctx, conn: ConnId, peer: Self::Peer, reason: CloseReason);

    /// The role's periodic work, after the core's.
    fn on_tick(&mut self, cx: &mut Ctx);

    /// A timer the role set itself (any but the tick) fired.
    fn on_timer(&mut self, cx: &mut Ctx, id: TimerId, token: u64) {
        let _ = (cx, id, token);
    }

    /// Stop cleanly (SIGINT/SIGTERM).
    fn on_shutdown(&mut self, cx: &mut Ctx);

    /// An application's call: only the client role serves them.
    fn on_call(&mut self, cx: &mut Ctx, call: Call) {
        cx.reply(Reply {
            id: call.id,
            result: Err(ClientError::Invalid("this node is not a client".into())),
        });
    }

    /// The periodic tick: re-arm it, close silent links, fail overdue requests, then the
    /// role's own work.
    fn tick(&mut self, cx: &mut Ctx) {
        let (links, ticker) = self.core();
        ticker.arm(cx);
        for conn in links.check_idle(cx) {
            let (links, _) = self.core();
            if let Some(peer) = links.close(cx, conn) {
                self.on_closed(cx, conn, peer, CloseReason::TimedOut);
            }
        }
        self.report_failures(cx);
        if !self.stopped() {
            self.on_tick(cx);
        }
    }

    /// Tell the role about each request that failed, once.
    fn report_failures(&mut self, cx: &mut Ctx) {
        while let Some((conn, asked, why)) = self.core().0.take_failed() {
            if self.stopped() {
                continue;
            }
            self.on_failed(cx, conn, asked, why);
        }
    }

    /// Handle one event.
    fn dispatch(&mut self, cx: &mut Ctx, ev: Event) {
        if self.stopped() {
            return;
        }
        match ev {
            Event::Accepted { conn } => {
                let peer = self.accepted();
                self.core().0.insert(cx, conn, peer);
            }
            Event::Connected { .. } => {}
            Event::Closed { conn, reason } => {
                if let Some(peer) = self.core().0.remove(conn) {
                    self.on_closed(cx, conn, peer, reason);
                }
            }
            Event::Received { conn, msg } => match self.core().0.receive(cx, conn, msg) {
                Some(Incoming::Answer(asked, msg)) => self.on_message(cx, conn, Some(asked), msg),
                Some(Incoming::Message(msg)) => self.on_message(cx, conn, None, msg),
                None => {}
            },
            Event::Timer { id, token } => {
                if self.core().1.fired(id, token) {
                    self.tick(cx);
                } else {
                    self.on_timer(cx, id, token);
                }
            }
            Event::Local(Command::Shutdown) => self.on_shutdown(cx),
            Event::Local(Command::Call(call)) => self.on_call(cx, call),
        }
        self.report_failures(cx);
    }
}

/// A role that follows the primary master (storages, admins, clients).
pub trait Follower: Node {
    /// The link to the primary, and the role's connections.
    fn master_link(&mut self) -> (&mut MasterLink, &mut Links<Self::Peer, Self::Asked>);

    /// How we identify to the primary: the peer of the link, what the request table keeps
    /// for the identification request, our node id if we have one, and the extras.
    fn identification(&self) -> (Self::Peer, Self::Asked, Option<Nid>, IdentificationExtra);

    /// Our copy of the partition table, kept from what the primary sends.
    fn partition_table_mut(&mut self) -> &mut Option<PartitionTable>;

    /// Find the primary master and stay identified to it (every tick, and at once when
    /// the link is lost).
    fn follow_master(&mut self, cx: &mut Ctx) {
        let (peer, asked, nid, extra) = self.identification();
        let (master, links) = self.master_link();
        master.tick(cx, links, peer, asked, nid, extra);
    }

    /// The link to the primary closed: look for it again. Returns whether we were
    /// identified (what the role learnt from that primary is stale then).
    fn master_closed(&mut self, cx: &mut Ctx, conn: ConnId, reason: &CloseReason) -> bool {
        let lost = self.master_link().0.closed(conn, reason) == Some(LinkEvent::Lost);
        if !self.stopped() {
            self.follow_master(cx);
        }
        lost
    }

    /// Drop the link to the primary and connect again (it sent what we cannot apply, such
    /// as a table change that does not follow ours, or does not answer): the primary sends
    /// everything again to a node that identifies.
    fn reconnect(&mut self, cx: &mut Ctx, conn: ConnId, reason: CloseReason) {
        if let Some(peer) = self.master_link().1.close(cx, conn) {
            self.on_closed(cx, conn, peer, reason);
        }
    }

    /// Apply a change of the partition table the primary sent on `conn`. One that does not
    /// follow our table means we missed something: reconnect (the primary sends the whole
    /// table to a node that identifies) and return false.
    fn apply_pt_changes(
        &mut self,
        cx: &mut Ctx,
        conn: ConnId,
        ptid: Ptid,
        num_replicas: u32,
        changes: &[(u32, Nid, CellState)],
    ) -> bool {
        let applied = match self.partition_table_mut() {
            Some(pt) => pt.apply(ptid, num_replicas, changes),
            None => Err("no partition table to change".into()),
        };
        match applied {
            Ok(()) => true,
            Err(why) => {
                warn!("{why}: reconnecting to the primary");
                self.reconnect(cx, conn, CloseReason::Protocol(why));
                false
            }
        }
    }
}

impl<N: Node> Actor for N {
    fn start(&mut self, cx: &mut Ctx) {
        self.on_start(cx);
        self.report_failures(cx);
    }

    fn handle(&mut self, cx: &mut Ctx, ev: Event) {
        self.dispatch(cx, ev);
    }
}
