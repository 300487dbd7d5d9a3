//! The primary's side of pack, in the synchronous form (NEO's `AskPack` before its 2020
//! rewrite into asynchronous pack orders, neo-spec 6.15): ZODB expects `pack()` to be done
//! when it returns. A client asks the primary to pack at a TID; the primary asks every
//! RUNNING storage with readable cells to pack its UP_TO_DATE cells at that TID, and
//! answers the client once each of them answered or was lost (a lost storage's cells are
//! outdated, so it catches up by replication, whatever it packed).
//!
//! One pack at a time: orders that come meanwhile wait in a bounded queue, in order. A pack
//! TID above the last committed TID is refused: it would pack what is being committed
//! (see the storage's `pack_request` for why a TID at or below it is safe). The storages'
//! requests have no deadline (a pack of a large database rightly takes long; liveness
//! closes a silent storage).

use std::collections::{BTreeSet, VecDeque};

use tracing::{info, warn};

use super::cluster::Asked;
use super::Master;
use crate::actors::{ConnId, Ctx};
use crate::proto::{ClusterState, ErrorCode, Nid, NodeState, Packet, Tid};

/// Pack orders that may wait behind the one in progress.
pub const MAX_QUEUED_PACKS: usize = 16;

/// A client's pack order.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Order {
    /// Where to answer: (client connection, message id); None once the client is gone.
    client: Option<(ConnId, u32)>,
    tid: Tid,
}

/// The pack in progress.
#[derive(Clone, Debug)]
struct Packing {
    order: Order,
    /// Storages asked that have not answered and are not lost.
    waiting: BTreeSet<Nid>,
    /// Whether a storage answered that it could not pack.
    failed: bool,
}

/// The primary's pack orders.
#[derive(Clone, Debug, Default)]
pub struct Packs {
    current: Option<Packing>,
    queue: VecDeque<Order>,
}

impl Packs {
    /// The TID being packed at, and the storages still waited for.
    pub fn in_progress(&self) -> Option<(Tid, &BTreeSet<Nid>)> {
        self.current.as_ref().map(|p| (p.order.tid, &p.waiting))
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// A client is gone: its waiting orders are dropped, the one in progress goes on with
    /// nobody to answer.
    pub fn client_lost(&mut self, conn: ConnId) {
        self.queue
            .retain(|o| o.client.is_none_or(|(c, _)| c != conn));
        if let Some(current) = &mut self.current {
            if current.order.client.is_some_and(|(c, _)| c == conn) {
                current.order.client = None;
            }
        }
    }
}

impl Master {
    fn packs_mut(&mut self) -> Option<&mut Packs> {
        self.primary_mut().map(|p| &mut p.packs)
    }

    /// A client's AskPack.
    pub(super) fn pack_request(&mut self, cx: &mut Ctx, conn: ConnId, id: u32, tid: Tid) {
        let Some(p) = self.primary_mut() else { return };
        let refusal = if p.cluster_state != ClusterState::Running {
            Some((
                ErrorCode::NotReady,
                "the cluster is not running".to_string(),
            ))
        } else if p.tm.is_read_only(conn) {
            Some((
                ErrorCode::ReadOnlyAccess,
                "a read-only client cannot pack".into(),
            ))
        } else if tid == Tid::ZERO || p.tm.last_tid().is_none_or(|last| tid > last) {
            let why = format!(
                "cannot pack at {tid}: not in (0, last committed {:?}]",
                p.tm.last_tid()
            );
            Some((ErrorCode::ProtocolError, why))
        } else if p.packs.queue.len() >= MAX_QUEUED_PACKS {
            Some((
                ErrorCode::NotReady,
                "too many pack orders waiting".to_string(),
            ))
        } else {
            None
        };
        if let Some((code, why)) = refusal {
            warn!("{}: refused a pack: {why}", self.me());
            self.links.answer(cx, conn, id, Packet::error(code, why));
            return;
        }
        let order = Order {
            client: Some((conn, id)),
            tid,
        };
        p.packs.queue.push_back(order);
        self.next_pack(cx);
    }

    /// Start the next queued pack if none is in progress.
    fn next_pack(&mut self, cx: &mut Ctx) {
        let Some(p) = self.primary() else { return };
        if p.packs.current.is_some() {
            return;
        }
        let readable = p.pt.readable_nodes();
        let targets: Vec<(ConnId, Nid)> = self
            .storages()
            .into_iter()
            .filter(|(_, n, s)| *s == NodeState::Running && readable.contains(n))
            .map(|(c, n, _)| (c, n))
            .collect();
        let Some(packs) = self.packs_mut() else {
            return;
        };
        let Some(order) = packs.queue.pop_front() else {
            return;
        };
        let tid = order.tid;
        info!(
            "{}: packing at {tid} on {:?}",
            self.me(),
            targets.iter().map(|(_, n)| *n).collect::<Vec<_>>()
        );
        let mut waiting = BTreeSet::new();
        for (conn, nid) in targets {
            let what = super::Asked::Storage(Asked::Pack);
            if self
                .links
                .ask_waiting(cx, conn, Packet::AskPack { tid }, what)
                .is_some()
            {
                waiting.insert(nid);
            }
        }
        if let Some(packs) = self.packs_mut() {
            packs.current = Some(Packing {
                order,
                waiting,
                failed: false,
            });
        }
        self.pack_progress(cx);
    }

    /// A storage answered our AskPack.
    pub(super) fn on_packed(&mut self, cx: &mut Ctx, nid: Nid, status: bool) {
        let me = self.me();
        let Some(current) = self.packs_mut().and_then(|p| p.current.as_mut()) else {
            return;
        };
        if current.waiting.remove(&nid) && !status {
            warn!("{me}: {nid} could not pack at {}", current.order.tid);
            current.failed = true;
        }
        self.pack_progress(cx);
    }

    /// A storage is lost: not waited for any more.
    pub(super) fn pack_storage_lost(&mut self, cx: &mut Ctx, nid: Nid) {
        let me = self.me();
        let Some(current) = self.packs_mut().and_then(|p| p.current.as_mut()) else {
            return;
        };
        if current.waiting.remove(&nid) {
            warn!(
                "{me}: {nid} lost while packing at {}: its cells are out of date anyway",
                current.order.tid
            );
            self.pack_progress(cx);
        }
    }

    /// Answer the pack in progress once nobody is waited for, and start the next.
    fn pack_progress(&mut self, cx: &mut Ctx) {
        let me = self.me();
        let Some(packs) = self.packs_mut() else {
            return;
        };
        if !packs.current.as_ref().is_some_and(|c| c.waiting.is_empty()) {
            return;
        }
        let done = packs.current.take().expect("checked above");
        info!(
            "{me}: pack at {} done{}",
            done.order.tid,
            if done.failed { " (with failures)" } else { "" }
        );
        if let Some((conn, id)) = done.order.client {
            let status = !done.failed;
            self.links
                .answer(cx, conn, id, Packet::AnswerPack { status });
        }
        self.next_pack(cx);
    }

    /// The cluster leaves RUNNING: storages stop operation and drop their packs; we forget
    /// ours (clients are closed meanwhile).
    pub(super) fn forget_packs(&mut self) {
        self.links
            .cancel(|a| *a == super::Asked::Storage(Asked::Pack));
        if let Some(packs) = self.packs_mut() {
            *packs = Packs::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::transactions::tests::{
        ask, client, config, error_code, messages, recv, running, C1, C2, S1, S2,
    };
    use super::*;
    use crate::actors::testing::{sent, Harness};
    use crate::actors::{CloseReason, Effect, Event};

    const RO: ConnId = ConnId(202);

    /// A running cluster whose last committed TID is 1000 (two storages holding every
    /// partition), with clients C1 and C2, and RO, read-only.
    fn cluster() -> Harness<Master> {
        let mut h = Harness::new(Master::new(config(1)));
        running(&mut h, Some(Tid(1000)), None);
        for (c, read_only) in [(C1, false), (C2, false), (RO, true)] {
            let out = h.incoming(c, client(read_only));
            assert!(matches!(
                sent(&out, c).first(),
                Some(Packet::AcceptIdentification { .. })
            ));
        }
        h
    }

    /// The AskPack requests in `out`: (storage connection, message id, tid).
    fn pack_requests(out: &[Effect]) -> Vec<(ConnId, u32, Tid)> {
        [S1, S2]
            .into_iter()
            .flat_map(|c| {
                messages(out, c)
                    .into_iter()
                    .filter_map(move |(id, p)| match p {
                        Packet::AskPack { tid } => Some((c, id, tid)),
                        _ => None,
                    })
            })
            .collect()
    }

    fn packed(h: &mut Harness<Master>, req: (ConnId, u32, Tid), status: bool) -> Vec<Effect> {
        recv(h, req.0, req.1, Packet::AnswerPack { status })
    }

    #[test]
    fn a_pack_above_the_last_commit_or_from_a_read_only_client_is_refused() {
        let mut h = cluster();
        for (conn, tid, code) in [
            (C1, 1001, ErrorCode::ProtocolError),
            (C1, u64::MAX, ErrorCode::ProtocolError),
            (C1, 0, ErrorCode::ProtocolError),
            (RO, 500, ErrorCode::ReadOnlyAccess),
        ] {
            let out = recv(&mut h, conn, 9, Packet::AskPack { tid: Tid(tid) });
            assert_eq!(error_code(&sent(&out, conn)), Some(code), "{tid}");
            assert!(pack_requests(&out).is_empty());
        }
        assert!(h.actor.primary().unwrap().packs.in_progress().is_none());
        // At the last commit: accepted.
        let out = recv(&mut h, C1, 9, Packet::AskPack { tid: Tid(1000) });
        assert_eq!(pack_requests(&out).len(), 2);
    }

    #[test]
    fn a_pack_goes_to_every_storage_and_is_answered_after_all() {
        let mut h = cluster();
        let out = recv(&mut h, C1, 5, Packet::AskPack { tid: Tid(900) });
        let reqs = pack_requests(&out);
        assert_eq!(
            reqs.iter().map(|r| (r.0, r.2)).collect::<Vec<_>>(),
            vec![(S1, Tid(900)), (S2, Tid(900))]
        );
        assert!(sent(&out, C1).is_empty());
        // A second order waits for the first.
        let out = recv(&mut h, C2, 6, Packet::AskPack { tid: Tid(950) });
        assert!(pack_requests(&out).is_empty() && sent(&out, C2).is_empty());
        assert_eq!(h.actor.primary().unwrap().packs.queued(), 1);
        let out = packed(&mut h, reqs[0], true);
        assert!(sent(&out, C1).is_empty());
        let out = packed(&mut h, reqs[1], true);
        assert_eq!(
            messages(&out, C1),
            vec![(5, Packet::AnswerPack { status: true })]
        );
        // Then the second one starts; a storage that could not pack makes it fail.
        let reqs = pack_requests(&out);
        assert_eq!(
            reqs.iter().map(|r| r.2).collect::<Vec<_>>(),
            vec![Tid(950), Tid(950)]
        );
        packed(&mut h, reqs[0], false);
        let out = packed(&mut h, reqs[1], true);
        assert_eq!(
            messages(&out, C2),
            vec![(6, Packet::AnswerPack { status: false })]
        );
        assert!(h.actor.primary().unwrap().packs.in_progress().is_none());
        // A late or repeated answer is ignored.
        let out = packed(&mut h, reqs[1], true);
        assert!(sent(&out, C2).is_empty());
    }

    #[test]
    fn a_storage_lost_while_packing_is_not_waited_for() {
        let mut h = cluster();
        let out = recv(&mut h, C1, 5, Packet::AskPack { tid: Tid(900) });
        let reqs = pack_requests(&out);
        packed(&mut h, reqs[0], true);
        let out = h.handle(Event::Closed {
            conn: S2,
            reason: CloseReason::PeerClosed,
        });
        let answers: Vec<_> = messages(&out, C1)
            .into_iter()
            .filter(|(_, p)| matches!(p, Packet::AnswerPack { .. }))
            .collect();
        assert_eq!(answers, vec![(5, Packet::AnswerPack { status: true })]);
        // The next pack goes to the storage left only.
        let out = recv(&mut h, C1, 7, Packet::AskPack { tid: Tid(950) });
        assert_eq!(
            pack_requests(&out).iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![S1]
        );
    }

    #[test]
    fn a_client_gone_while_packing_gets_no_answer_and_its_queued_orders_are_dropped() {
        let mut h = cluster();
        let reqs = pack_requests(&recv(&mut h, C1, 5, Packet::AskPack { tid: Tid(900) }));
        recv(&mut h, C1, 6, Packet::AskPack { tid: Tid(950) });
        recv(&mut h, C2, 6, Packet::AskPack { tid: Tid(960) });
        h.handle(Event::Closed {
            conn: C1,
            reason: CloseReason::PeerClosed,
        });
        assert_eq!(h.actor.primary().unwrap().packs.queued(), 1);
        packed(&mut h, reqs[0], true);
        let out = packed(&mut h, reqs[1], true);
        // C2's order is next.
        assert_eq!(
            pack_requests(&out).iter().map(|r| r.2).collect::<Vec<_>>(),
            vec![Tid(960), Tid(960)]
        );
        // The queue is bounded.
        let mut h = cluster();
        for i in 0..=MAX_QUEUED_PACKS {
            assert!(ask(&mut h, C1, i as u32, Packet::AskPack { tid: Tid(900) }).is_empty());
        }
        let refused = ask(&mut h, C1, 99, Packet::AskPack { tid: Tid(900) });
        assert_eq!(error_code(&refused), Some(ErrorCode::NotReady));
    }
}
