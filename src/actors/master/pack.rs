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
            Some((ErrorCode::NotReady, "the cluster is not running".to_string()))
        } else if p.tm.is_read_only(conn) {
            Some((ErrorCode::ReadOnlyAccess, "a read-only client cannot pack".into()))
        } else if tid == Tid::ZERO || p.tm.last_tid().is_none_or(|last| tid > last) {
            let why = format!(
                "cannot pack at {tid}: not in (0, last committed {:?}]",
                p.tm.last_tid()
            );
            Some((ErrorCode::ProtocolError, why))
        } else if p.packs.queue.len() >= MAX_QUEUED_PACKS {
            Some((ErrorCode::NotReady, "too many pack orders waiting".to_string()))
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
        let Some(packs) = self.packs_mut() else { return };
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
        let Some(packs) = self.packs_mut() else { return };
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
