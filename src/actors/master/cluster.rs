//! The primary master's cluster lifecycle (neo-spec sections 4 and 5): RECOVERING (find
//! the newest partition table among the storages, wait until it is safe to start),
//! VERIFYING (finish or drop half-committed transactions, apply a truncation, read the
//! last ids), RUNNING (storages join, leave and are outdated), back to RECOVERING when the
//! table stops being operational, and STOPPING.
//!
//! The split-brain rule: after an election the primary does not start the cluster until
//! every storage of the newest table is back, unless an operator says `neoctl start`. NEO
//! waits only for the storages holding readable cells; we wait for all of them because the
//! simulator showed a storage without readable cells holding a newer table than the others
//! (a change that reached only it before the previous primary was lost), and starting on the
//! older table then serves from cells that table still calls readable but the newer one had
//! outdated. An automatic restart of the same primary (the table stopped being operational)
//! starts on its own table as soon as it is operational again, but only while every other
//! known master follows it: otherwise another primary may have run the cluster meanwhile.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{debug, info, warn};

use super::election::Claim;
use super::{Master, Peer};
use crate::actors::{ConnId, Ctx, Observation};
use crate::db::partition_of;
use crate::proto::{
    ClusterState, Message, Nid, NodeInfo, NodeState, NodeType, Oid, Packet, Ptid, Tid,
};
use crate::pt::{Change, PartitionTable};

/// What a request the primary sent to a storage was (kept in the request table with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Asked {
    Recovery,
    PartitionTable,
    LockedTransactions,
    FinalTid(Tid),
    LastIds,
    /// AskLockInformation for this TTID.
    Lock(Tid),
    /// AskPack (`pack`).
    Pack,
    /// AskReserveIDs reading a storage's reservation (verification).
    ReadReserved,
    /// AskReserveIDs raising it to these (running).
    Reserve(Option<Oid>, Option<Tid>),
}

/// A storage's AnswerRecovery: (ptid, truncate_tid, backup_tid).
type RecoveryAnswer = (Option<Ptid>, Option<Tid>, Option<Tid>);

/// Recovery's progress.
#[derive(Clone, Debug, Default)]
struct Recovery {
    /// The newest table id a storage reported (its holders are those whose answer names it).
    target: Option<Ptid>,
    /// Whether the table loaded is the target's.
    loaded: bool,
    /// What each storage answered to AskRecovery: (ptid, truncate_tid, backup_tid).
    answers: BTreeMap<Nid, RecoveryAnswer>,
}

/// Where verification is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum VerifyStep {
    /// Asking nodes with readable cells for their voted transactions.
    #[default]
    Locked,
    /// Asking other nodes whether they committed the voted ones nobody reported locked.
    FinalTids,
    /// Validation sent; asking every storage for its last ids.
    LastIds,
}

/// Verification's progress.
#[derive(Clone, Debug, Default)]
struct Verification {
    step: VerifyStep,
    /// Who reported each voted transaction.
    voted: BTreeMap<Tid, BTreeSet<Nid>>,
    /// Final TIDs known, by ttid.
    locked: BTreeMap<Tid, Tid>,
    last_tid: Option<Tid>,
    last_oid: Option<Oid>,
    /// The greatest reservation a storage holds (what a previous primary may have handed
    /// out).
    reserved_oid: Option<Oid>,
    reserved_tid: Option<Tid>,
}

/// The primary's state.
#[derive(Clone, Debug)]
pub struct Primary {
    pub claim: Claim,
    pub cluster_state: ClusterState,
    pub pt: PartitionTable,
    /// `neoctl start`: start as soon as the table is operational (or, for a new database,
    /// with the storages there are).
    pub startup_allowed: bool,
    /// An automatic restart after the table stopped being operational: never create a new
    /// database (a table exists somewhere), and start as soon as the table is operational
    /// again if no other master can have become primary meanwhile (see `relaxed_start`).
    pub auto_restart: bool,
    /// Clients and their transactions; the last TID and OID.
    pub tm: super::transactions::Transactions,
    /// Pack orders (`pack`).
    pub packs: super::pack::Packs,
    pub truncate_tid: Option<Tid>,
    pub backup_tid: Option<Tid>,
    recovery: Recovery,
    verification: Verification,
    /// Storages told to start operation that have not said they are ready.
    pub starting: BTreeSet<Nid>,
    /// Storages without a node id (empty databases) waiting, while RECOVERING, for the
    /// table to be decided before they get one (see `Master::admit_new_storages`).
    pub(super) new_storages: BTreeMap<ConnId, super::Identification>,
}

impl Primary {
    pub fn new(claim: Claim, partitions: u32, replicas: u32) -> Primary {
        Primary {
            claim,
            cluster_state: ClusterState::Recovering,
            pt: PartitionTable::new(partitions, replicas),
            startup_allowed: false,
            auto_restart: false,
            tm: Default::default(),
            packs: Default::default(),
            truncate_tid: None,
            backup_tid: None,
            recovery: Recovery::default(),
            verification: Verification::default(),
            starting: BTreeSet::new(),
            new_storages: BTreeMap::new(),
        }
    }

    /// The claim, while it still counts (in RECOVERING).
    pub fn electing(&self) -> Option<&Claim> {
        (self.cluster_state == ClusterState::Recovering).then_some(&self.claim)
    }
}

/// The id after `ptid`, which was checked plausible when it arrived (`Ptid::LIMIT`); the
/// `ptid-wrap` mutant increments unchecked ids with a wrap, as the code once did.
fn next_ptid(cx: &Ctx, ptid: Ptid) -> Option<Ptid> {
    if cx.mutant("ptid-wrap") {
        Some(Ptid(ptid.0.wrapping_add(1)))
    } else {
        ptid.next()
    }
}

impl Master {
    pub(super) fn primary(&self) -> Option<&Primary> {
        match &self.role {
            super::Role::Primary(p) => Some(p),
            _ => None,
        }
    }

    pub(super) fn primary_mut(&mut self) -> Option<&mut Primary> {
        match &mut self.role {
            super::Role::Primary(p) => Some(p),
            _ => None,
        }
    }

    /// Whether a request to a storage that `kind` selects is pending.
    fn waiting_for(&self, kind: impl Fn(&Asked) -> bool) -> bool {
        self.links
            .pending()
            .any(|a| matches!(a, super::Asked::Storage(a) if kind(a)))
    }

    /// Forget what we asked storages: their answers no longer count (we start over).
    fn forget_asks(&mut self) {
        self.links.cancel(|a| matches!(a, super::Asked::Storage(_)));
    }

    /// A request to a storage will not be answered (its connection is gone, or the storage
    /// was too slow and we closed it): ask another holder for the table if it was that.
    pub(super) fn storage_ask_failed(&mut self, cx: &mut Ctx, asked: Asked) {
        if asked == Asked::PartitionTable {
            self.ask_table(cx);
        }
    }

    /// Identified storages: (connection, nid, state).
    pub(super) fn storages(&self) -> Vec<(ConnId, Nid, NodeState)> {
        self.links
            .iter()
            .filter_map(|(c, p)| match p {
                Peer::Node(nid) => self
                    .nodes
                    .get(*nid)
                    .filter(|n| n.node_type == NodeType::Storage)
                    .map(|n| (c, *nid, n.state)),
                _ => None,
            })
            .collect()
    }

    /// New storages waiting for a node id on a connection still open.
    pub(super) fn waiting_new_storages(&self) -> Vec<ConnId> {
        self.primary()
            .map(|p| {
                p.new_storages
                    .keys()
                    .copied()
                    .filter(|c| self.links.get(*c) == Some(&Peer::Incoming))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Answer the new storages that waited for the table to be decided: each gets an id
    /// above every id of the table and of every node we know (`fresh_storage_nid`), so it
    /// can never be mistaken for a node whose data it does not have. In RECOVERING (a new
    /// cluster about to be created) they join recovery like any storage; past it they are
    /// PENDING, without cells, until an operator adds them.
    fn admit_new_storages(&mut self, cx: &mut Ctx) {
        let live = self.waiting_new_storages();
        let Some(p) = self.primary_mut() else { return };
        let waiting = std::mem::take(&mut p.new_storages);
        for (conn, mut req) in waiting {
            if !live.contains(&conn) {
                continue;
            }
            let Some(nid) = self.fresh_storage_nid(cx) else {
                let why = "no storage node id left";
                self.refuse(cx, conn, req.id, crate::proto::ErrorCode::NotReady, why);
                continue;
            };
            // Proposing the fresh id makes `identify_storage` admit it now.
            req.nid = Some(nid);
            self.identify_storage(cx, req);
        }
    }

    pub(super) fn conn_of(&self, nid: Nid) -> Option<ConnId> {
        self.links
            .iter()
            .find(|(_, p)| **p == Peer::Node(nid))
            .map(|(c, _)| c)
    }

    fn is_running(&self, nid: Nid) -> bool {
        self.nodes
            .get(nid)
            .is_some_and(|n| n.state == NodeState::Running)
    }

    pub(super) fn ask_storage(&mut self, cx: &mut Ctx, nid: Nid, packet: Packet, kind: Asked) {
        let Some(conn) = self.conn_of(nid) else {
            return;
        };
        self.links
            .ask(cx, conn, packet, super::Asked::Storage(kind));
    }

    fn set_node_state(&mut self, cx: &mut Ctx, nid: Nid, state: NodeState) {
        if let Some(info) = self.nodes.set_state(nid, state).cloned() {
            self.broadcast_nodes(cx, &[info], None);
        }
    }

    /// Tell every identified node the cluster state.
    pub(super) fn set_cluster_state(&mut self, cx: &mut Ctx, state: ClusterState) {
        let me = self.me();
        let Some(p) = self.primary_mut() else { return };
        if p.cluster_state == state {
            return;
        }
        let was = p.cluster_state;
        p.cluster_state = state;
        info!("{me}: cluster state {state}");
        if was == ClusterState::Running {
            self.leave_running(cx);
        }
        let conns: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(_, p)| matches!(p, Peer::Node(_)))
            .map(|(c, _)| c)
            .collect();
        for conn in conns {
            self.links
                .notify(cx, conn, Packet::NotifyClusterInformation { state });
        }
    }

    /// Send the whole table to a node (storages and admins).
    pub(super) fn send_partition_table(&mut self, cx: &mut Ctx, conn: ConnId) {
        let Some(p) = self.primary() else { return };
        if p.pt.ptid().is_none() {
            return;
        }
        let packet = Packet::SendPartitionTable {
            ptid: p.pt.ptid(),
            num_replicas: p.pt.replicas(),
            rows: p.pt.rows(),
        };
        self.links.notify(cx, conn, packet);
    }

    /// A storage joined with table id `theirs`: if ours is not newer, move to a new id above
    /// it (same cells) and send everyone the whole table, so that ids only grow on every
    /// node and one id never names two tables. Returns whether it did.
    pub(super) fn outgrow_ptid(&mut self, cx: &mut Ctx, theirs: Option<Ptid>) -> bool {
        let Some(p) = self.primary_mut() else {
            return false;
        };
        let (Some(theirs), Some(ours)) = (theirs, p.pt.ptid()) else {
            return false;
        };
        if theirs < ours {
            return false;
        }
        // `theirs` was checked when the storage identified.
        let Some(next) = next_ptid(cx, theirs) else {
            return false;
        };
        let nodes: Vec<Nid> = p.pt.nodes().iter().copied().collect();
        p.pt = PartitionTable::from_rows(Some(next), p.pt.replicas(), &p.pt.rows());
        p.pt.add_nodes(&nodes);
        info!("partition table {ours} renumbered {next}: a storage had table {theirs}");
        self.broadcast_pt(cx);
        true
    }

    /// Nodes that keep a copy of the table: identified storages, admins and clients
    /// (which read from and write to the cells it names).
    fn pt_receivers(&self) -> Vec<ConnId> {
        self.links
            .iter()
            .filter_map(|(c, p)| match p {
                Peer::Node(nid) => self
                    .nodes
                    .get(*nid)
                    .filter(|n| {
                        matches!(
                            n.node_type,
                            NodeType::Storage | NodeType::Admin | NodeType::Client
                        )
                    })
                    .map(|_| c),
                _ => None,
            })
            .collect()
    }

    /// Broadcast a change list (the table already holds it, with its new id).
    pub(super) fn broadcast_pt_changes(&mut self, cx: &mut Ctx, changes: Vec<Change>) {
        let Some(p) = self.primary() else { return };
        let Some(ptid) = p.pt.ptid() else { return };
        let packet = Packet::NotifyPartitionChanges {
            ptid,
            num_replicas: p.pt.replicas(),
            changes,
        };
        for conn in self.pt_receivers() {
            self.links.notify(cx, conn, packet.clone());
        }
    }

    /// Send every receiver the whole table (after recovery built or chose it).
    fn broadcast_pt(&mut self, cx: &mut Ctx) {
        for conn in self.pt_receivers() {
            self.send_partition_table(cx, conn);
        }
    }

    // ---- recovery ----

    /// Go back to RECOVERING because the table stopped being operational: the table we ran
    /// with is the newest there is (every change went from us to the storages), so it stays
    /// the target, and a storage that comes back with an older one cannot start the cluster
    /// on it.
    pub(super) fn enter_recovery(&mut self, cx: &mut Ctx) {
        let Some(p) = self.primary_mut() else { return };
        p.recovery = Recovery {
            target: p.pt.ptid(),
            loaded: p.pt.ptid().is_some(),
            ..Recovery::default()
        };
        p.verification = Verification::default();
        p.starting.clear();
        self.forget_asks();
        self.set_cluster_state(cx, ClusterState::Recovering);
        for (conn, nid, state) in self.storages() {
            if state != NodeState::Pending {
                self.set_node_state(cx, nid, NodeState::Pending);
            }
            self.links.notify(cx, conn, Packet::StopOperation);
            self.ask_storage(cx, nid, Packet::AskRecovery, Asked::Recovery);
        }
    }

    /// A storage identified during RECOVERING.
    pub(super) fn recovery_join(&mut self, cx: &mut Ctx, nid: Nid) {
        self.ask_storage(cx, nid, Packet::AskRecovery, Asked::Recovery);
        // Simulation: ask twice, as after a reconnection: the second answer must not
        // confuse the choice of table.
        if cx.buggify("recovery-ask-twice") {
            self.ask_storage(cx, nid, Packet::AskRecovery, Asked::Recovery);
        }
    }

    fn on_answer_recovery(
        &mut self,
        cx: &mut Ctx,
        nid: Nid,
        ptid: Option<Ptid>,
        truncate: Option<Tid>,
        backup: Option<Tid>,
    ) {
        let first_only = cx.mutant("recovery-first-table");
        let Some(p) = self.primary_mut() else { return };
        p.recovery.answers.insert(nid, (ptid, truncate, backup));
        if let Some(ptid) = ptid {
            if p.recovery.target.is_none_or(|t| ptid > t && !first_only) {
                debug!("recovery: {nid} has the newest table so far ({ptid})");
                p.recovery.target = Some(ptid);
                p.recovery.loaded = false;
                self.ask_table(cx);
            } else if Some(ptid) == p.recovery.target {
                self.ask_table(cx);
            }
        }
        self.try_start(cx);
    }

    /// Ask a holder of the newest table for it, unless loaded or asked already.
    fn ask_table(&mut self, cx: &mut Ctx) {
        let Some(p) = self.primary() else { return };
        if p.recovery.loaded || self.waiting_for(|a| *a == Asked::PartitionTable) {
            return;
        }
        let target = p.recovery.target;
        let holders: Vec<Nid> = p
            .recovery
            .answers
            .iter()
            .filter(|(_, (ptid, _, _))| ptid.is_some() && *ptid == target)
            .map(|(nid, _)| *nid)
            .collect();
        if let Some(nid) = holders.into_iter().find(|n| self.conn_of(*n).is_some()) {
            self.ask_storage(cx, nid, Packet::AskPartitionTable, Asked::PartitionTable);
        }
    }

    fn on_answer_partition_table(
        &mut self,
        cx: &mut Ctx,
        nid: Nid,
        ptid: Option<Ptid>,
        replicas: u32,
        rows: Vec<Vec<(Nid, crate::proto::CellState)>>,
    ) {
        let Some(p) = self.primary_mut() else { return };
        if ptid.is_none() || ptid != p.recovery.target || rows.is_empty() {
            // A newer table was reported meanwhile: ask one of its holders.
            self.ask_table(cx);
            return;
        }
        let pt = PartitionTable::from_rows(ptid, replicas, &rows);
        let (_, truncate, backup) = p.recovery.answers.get(&nid).copied().unwrap_or_default();
        p.truncate_tid = truncate;
        p.backup_tid = backup;
        p.recovery.loaded = true;
        info!(
            "recovery: partition table {} from {nid}",
            ptid.expect("checked")
        );
        // Storages the table names that we do not know are down until they identify.
        let unknown: Vec<Nid> = pt
            .nodes()
            .iter()
            .copied()
            .filter(|n| self.nodes.get(*n).is_none())
            .collect();
        if let Some(p) = self.primary_mut() {
            p.pt = pt;
        }
        for n in unknown {
            self.nodes.upsert(NodeInfo {
                node_type: NodeType::Storage,
                address: None,
                nid: Some(n),
                state: NodeState::Down,
                id_timestamp: None,
            });
        }
        let admins = self.pt_receivers_of(NodeType::Admin);
        for conn in admins {
            self.send_partition_table(cx, conn);
        }
        self.try_start(cx);
    }

    fn pt_receivers_of(&self, ty: NodeType) -> Vec<ConnId> {
        self.links
            .iter()
            .filter_map(|(c, p)| match p {
                Peer::Node(nid) => self
                    .nodes
                    .get(*nid)
                    .filter(|n| n.node_type == ty)
                    .map(|_| c),
                _ => None,
            })
            .collect()
    }

    /// Whether an automatic restart may start without waiting for every node: only while
    /// every other known master follows us. A master cut off from us may have become
    /// primary and run the cluster on the nodes we would not wait for; then our table is
    /// not the newest and we must wait for everyone (and meet that primary meanwhile).
    fn relaxed_start(&self) -> bool {
        let Some(p) = self.primary() else {
            return false;
        };
        p.auto_restart
            && self
                .finder
                .known()
                .iter()
                .filter(|a| **a != self.cfg.bind)
                .all(|a| {
                    self.links.iter().any(|(_, peer)| match peer {
                        Peer::Node(n) => {
                            self.nodes.get(*n).and_then(|i| i.address.as_ref()) == Some(a)
                        }
                        _ => false,
                    })
                })
    }

    /// Leave RECOVERING if it is safe (neo-spec 4.4).
    pub(super) fn try_start(&mut self, cx: &mut Ctx) {
        let no_wait = cx.mutant("recovery-no-wait");
        let Some(p) = self.primary() else { return };
        if p.cluster_state != ClusterState::Recovering {
            return;
        }
        let storages = self.storages();
        let pending: BTreeSet<Nid> = storages
            .iter()
            .filter(|(_, _, s)| *s == NodeState::Pending)
            .map(|(_, n, _)| *n)
            .collect();
        let new = self.waiting_new_storages().len();
        // Every identified storage must have answered; the newest table must be loaded.
        if (pending.is_empty() && new == 0)
            || self.waiting_for(|a| matches!(a, Asked::Recovery | Asked::PartitionTable))
        {
            return;
        }
        if p.recovery.target.is_some() && !p.recovery.loaded {
            return;
        }
        let selected: Vec<Nid> = if p.recovery.target.is_some() {
            let pending_node = |n: Nid| pending.contains(&n);
            if !p.pt.operational(pending_node, &[]) {
                return;
            }
            if let Some(t) = p.truncate_tid {
                // A truncation needs every node of the table, each agreeing on it.
                if !p.pt.nodes().iter().all(|n| pending.contains(n)) {
                    return;
                }
                let disagree: Vec<Nid> = p
                    .recovery
                    .answers
                    .iter()
                    .filter(|(n, (_, tt, _))| {
                        p.pt.nodes().contains(n) && tt.is_none_or(|tt| tt > t)
                    })
                    .map(|(n, _)| *n)
                    .collect();
                if !disagree.is_empty() {
                    for n in disagree {
                        if let Some(c) = self.conn_of(n) {
                            self.links.notify(cx, c, Packet::Truncate { tid: t });
                        }
                        self.ask_storage(cx, n, Packet::AskRecovery, Asked::Recovery);
                    }
                    return;
                }
            } else if !p.startup_allowed && !self.relaxed_start() && !no_wait {
                // The split-brain rule: a new primary waits for every node of the table.
                // Those with readable cells, or it would serve stale data; the others too,
                // because one of them may hold a newer table (a change that reached only
                // them before the previous primary died), which must be the one we start on.
                let missing: Vec<Nid> =
                    p.pt.nodes()
                        .iter()
                        .copied()
                        .filter(|n| !pending.contains(n))
                        .collect();
                if !missing.is_empty() {
                    debug!("recovery: waiting for {missing:?}");
                    return;
                }
            }
            p.pt.nodes()
                .iter()
                .copied()
                .filter(|n| pending.contains(n))
                .collect()
        } else {
            // A new database.
            let enough = self
                .cfg
                .autostart
                .is_some_and(|n| pending.len() + new >= n as usize);
            if !p.startup_allowed && !enough {
                return;
            }
            if new > 0 {
                // The new storages get their ids and join recovery; we start once they
                // answered it, as storages of the new cluster.
                return self.admit_new_storages(cx);
            }
            pending.iter().copied().collect()
        };
        self.start_cluster(cx, selected);
    }

    fn start_cluster(&mut self, cx: &mut Ctx, selected: Vec<Nid>) {
        for nid in &selected {
            self.set_node_state(cx, *nid, NodeState::Running);
        }
        let keep_last = !cx.mutant("pt-outdate-last");
        let running: BTreeSet<Nid> = selected.iter().copied().collect();
        let relaxed = self.relaxed_start();
        let renumber_loaded = cx.mutant("pt-renumber-loaded");
        let Some(p) = self.primary_mut() else { return };
        let missing: Vec<Nid> =
            p.pt.readable_nodes()
                .into_iter()
                .filter(|n| !running.contains(n))
                .collect();
        cx.observe(Observation::ClusterStarted {
            ptid: p.pt.ptid(),
            missing,
            startup_allowed: p.startup_allowed || relaxed,
        });
        if p.pt.ptid().is_none() {
            p.pt.make(&selected);
            info!("recovery: new partition table over {selected:?}");
        } else {
            let loaded = p.pt.rows();
            p.pt.outdate(None, |n| running.contains(&n), keep_last);
            // A new id either way: this table is the one the cluster starts with.
            let (ptid, replicas, mut rows) = (p.pt.ptid(), p.pt.replicas(), p.pt.rows());
            if renumber_loaded {
                rows = loaded;
            }
            // Above every id a storage reported, so that none of them sees an id twice.
            let newest = p
                .recovery
                .answers
                .values()
                .filter_map(|(id, _, _)| *id)
                .max();
            // Every id here is plausible (checked on arrival), so there is a next one.
            let next = ptid.max(newest).map_or(Some(Ptid(1)), |t| next_ptid(cx, t));
            let next = next.unwrap_or(Ptid(u64::MAX));
            p.pt = PartitionTable::from_rows(Some(next), replicas, &rows);
            p.pt.add_nodes(&selected);
        }
        info!("recovery done with partition table {:?}", p.pt.ptid());
        self.set_cluster_state(cx, ClusterState::Verifying);
        self.broadcast_pt(cx);
        self.start_verification(cx);
        self.admit_new_storages(cx);
    }

    // ---- verification ----

    /// Verify again from the start (a node we asked reconnected; its answer is lost).
    pub(super) fn restart_verification(&mut self, cx: &mut Ctx) {
        self.forget_asks();
        self.start_verification(cx);
    }

    fn start_verification(&mut self, cx: &mut Ctx) {
        let Some(p) = self.primary_mut() else { return };
        p.verification = Verification::default();
        let readable = p.pt.readable_nodes();
        let nodes: Vec<Nid> = self
            .storages()
            .into_iter()
            .filter(|(_, n, s)| *s == NodeState::Running && readable.contains(n))
            .map(|(_, n, _)| n)
            .collect();
        for nid in nodes {
            self.ask_storage(
                cx,
                nid,
                Packet::AskLockedTransactions,
                Asked::LockedTransactions,
            );
        }
        self.verification_progress(cx);
    }

    fn on_locked_transactions(&mut self, cx: &mut Ctx, nid: Nid, txns: Vec<(Tid, Option<Tid>)>) {
        let Some(p) = self.primary_mut() else { return };
        for (ttid, tid) in txns {
            p.verification.voted.entry(ttid).or_default().insert(nid);
            if let Some(tid) = tid {
                p.verification.locked.insert(ttid, tid);
            }
        }
        self.verification_progress(cx);
    }

    fn on_final_tid(&mut self, cx: &mut Ctx, ttid: Tid, tid: Option<Tid>) {
        let Some(p) = self.primary_mut() else { return };
        if let Some(tid) = tid {
            p.verification.locked.insert(ttid, tid);
        }
        self.verification_progress(cx);
    }

    fn on_last_ids(&mut self, cx: &mut Ctx, last_tid: Option<Tid>, last_oid: Option<Oid>) {
        let Some(p) = self.primary_mut() else { return };
        let v = &mut p.verification;
        v.last_tid = v.last_tid.max(last_tid);
        v.last_oid = v.last_oid.max(last_oid);
        self.verification_progress(cx);
    }

    /// Move verification on once the answers of a step are all in.
    fn verification_progress(&mut self, cx: &mut Ctx) {
        let Some(p) = self.primary() else { return };
        if p.cluster_state != ClusterState::Verifying || self.waiting_for(|_| true) {
            return;
        }
        match p.verification.step {
            VerifyStep::Locked => {
                // Voted transactions nobody reported locked: another node of their
                // partition may have committed them already.
                let np = p.pt.partitions();
                let mut asks = Vec::new();
                for (ttid, reporters) in &p.verification.voted {
                    if p.verification.locked.contains_key(ttid) {
                        continue;
                    }
                    for (nid, state) in p.pt.row(partition_of(ttid.0, np)) {
                        if state.is_readable() && !reporters.contains(&nid) && self.is_running(nid)
                        {
                            asks.push((nid, *ttid));
                        }
                    }
                }
                if let Some(p) = self.primary_mut() {
                    p.verification.step = VerifyStep::FinalTids;
                }
                for (nid, ttid) in &asks {
                    self.ask_storage(
                        cx,
                        *nid,
                        Packet::AskFinalTID { ttid: *ttid },
                        Asked::FinalTid(*ttid),
                    );
                }
                if asks.is_empty() {
                    self.verification_progress(cx);
                }
            }
            VerifyStep::FinalTids => self.validate_and_ask_last_ids(cx),
            VerifyStep::LastIds => self.provide_service(cx),
        }
    }

    /// Commit what was locked, on every node that voted it; then ask every storage for its
    /// last ids (they apply a pending truncation before answering, and answer after the
    /// validations sent before on the same connection).
    fn validate_and_ask_last_ids(&mut self, cx: &mut Ctx) {
        let drop_locked = cx.mutant("verification-drop-locked");
        let Some(p) = self.primary_mut() else { return };
        p.verification.step = VerifyStep::LastIds;
        let validate: Vec<(Tid, Tid, Vec<Nid>)> = p
            .verification
            .locked
            .iter()
            .map(|(ttid, tid)| {
                let voters = p
                    .verification
                    .voted
                    .get(ttid)
                    .map(|s| s.iter().copied().collect());
                (*ttid, *tid, voters.unwrap_or_default())
            })
            .collect();
        for (ttid, tid, nodes) in validate {
            if drop_locked {
                continue;
            }
            info!("verification: committing {ttid:?} as {tid:?} on {nodes:?}");
            for nid in nodes {
                if let Some(c) = self.conn_of(nid) {
                    self.links
                        .notify(cx, c, Packet::ValidateTransaction { ttid, tid });
                }
            }
        }
        let running: Vec<Nid> = self
            .storages()
            .into_iter()
            .filter(|(_, _, s)| *s == NodeState::Running)
            .map(|(_, n, _)| n)
            .collect();
        for nid in &running {
            self.ask_storage(cx, *nid, Packet::AskLastIDs, Asked::LastIds);
            let read = Packet::AskReserveIDs {
                oid: None,
                tid: None,
            };
            self.ask_storage(cx, *nid, read, Asked::ReadReserved);
        }
    }

    /// Verification is over: RUNNING.
    fn provide_service(&mut self, cx: &mut Ctx) {
        let Some(p) = self.primary_mut() else { return };
        let v = &p.verification;
        p.tm.running(v.last_tid, v.last_oid, v.reserved_oid, v.reserved_tid);
        p.truncate_tid = None;
        p.startup_allowed = false;
        p.auto_restart = false;
        info!(
            "verification done: last tid {:?}, last oid {:?}",
            p.tm.last_tid(),
            p.tm.last_oid()
        );
        self.set_cluster_state(cx, ClusterState::Running);
        let running: Vec<Nid> = self
            .storages()
            .into_iter()
            .filter(|(_, _, s)| *s == NodeState::Running)
            .map(|(_, n, _)| n)
            .collect();
        for nid in running {
            self.start_operation(cx, nid);
        }
        // Nothing is free after verification: reserve before the first client asks.
        self.reserve_ids(cx);
    }

    pub(super) fn start_operation(&mut self, cx: &mut Ctx, nid: Nid) {
        if let Some(c) = self.conn_of(nid) {
            self.links
                .notify(cx, c, Packet::StartOperation { backup: false });
            if let Some(p) = self.primary_mut() {
                p.starting.insert(nid);
            }
        }
    }

    // ---- answers from storages ----

    /// A storage's answer (to what we `asked`, paired by the request table) or its
    /// notification; returns false if it was not one we expect.
    pub(super) fn on_storage_message(
        &mut self,
        cx: &mut Ctx,
        conn: ConnId,
        nid: Nid,
        asked: Option<Asked>,
        msg: Message,
    ) -> bool {
        let impossible = match &msg.packet {
            Packet::AnswerRecovery { ptid: Some(p), .. } if !p.is_plausible() => {
                Some(format!("impossible partition table id {p}"))
            }
            Packet::AnswerPartitionTable { ptid, rows, .. } if ptid.is_some() => {
                crate::pt::check_table(*ptid, rows).err()
            }
            Packet::AnswerReserveIDs { oid, tid }
                if oid.is_some_and(|o| o.0 > i64::MAX as u64)
                    || tid.is_some_and(|t| t > Tid::MAX) =>
            {
                Some(format!("impossible reservation {oid:?}, {tid:?}"))
            }
            _ => None,
        };
        if let Some(why) = impossible.filter(|_| !cx.mutant("ptid-wrap")) {
            let address = self.nodes.get(nid).and_then(|n| n.address.clone());
            let why = format!("{why} from {nid} at {address:?}");
            self.protocol_error(cx, conn, msg.id, why);
            self.storage_lost(cx, nid);
            return true;
        }
        match (asked, msg.packet) {
            (
                Some(Asked::Recovery),
                Packet::AnswerRecovery {
                    ptid,
                    backup_tid,
                    truncate_tid,
                },
            ) => self.on_answer_recovery(cx, nid, ptid, truncate_tid, backup_tid),
            (
                Some(Asked::PartitionTable),
                Packet::AnswerPartitionTable {
                    ptid,
                    num_replicas,
                    rows,
                },
            ) => self.on_answer_partition_table(cx, nid, ptid, num_replicas, rows),
            (
                Some(Asked::LockedTransactions),
                Packet::AnswerLockedTransactions { transactions },
            ) => self.on_locked_transactions(cx, nid, transactions),
            (Some(Asked::FinalTid(ttid)), Packet::AnswerFinalTID { tid }) => {
                self.on_final_tid(cx, ttid, tid)
            }
            (
                Some(Asked::LastIds),
                Packet::AnswerLastIDs {
                    last_tid, last_oid, ..
                },
            ) => self.on_last_ids(cx, last_tid, last_oid),
            (Some(Asked::ReadReserved), Packet::AnswerReserveIDs { oid, tid }) => {
                if let Some(p) = self.primary_mut() {
                    let v = &mut p.verification;
                    v.reserved_oid = v.reserved_oid.max(oid);
                    v.reserved_tid = v.reserved_tid.max(tid);
                }
                self.verification_progress(cx);
            }
            (Some(Asked::Reserve(o, t)), Packet::AnswerReserveIDs { oid, tid }) => {
                if oid < o || tid < t {
                    // It did not keep what it was asked to: it cannot be counted on.
                    let why = format!("reservation {oid:?}, {tid:?} below {o:?}, {t:?}");
                    self.protocol_error(cx, conn, msg.id, why);
                    self.storage_lost(cx, nid);
                } else {
                    self.reserve_answered(cx, Some((nid, oid, tid)))
                }
            }
            (None, Packet::NotifyReady) => {
                let started = self.primary_mut().is_some_and(|p| p.starting.remove(&nid));
                if started {
                    self.storage_ready(cx, nid);
                }
            }
            (Some(Asked::Lock(ttid)), Packet::AnswerInformationLocked { ttid: t }) if t == ttid => {
                self.on_locked(cx, nid, ttid)
            }
            (Some(Asked::Pack), Packet::AnswerPack { status }) => self.on_packed(cx, nid, status),
            (None, other) if other.kind() == crate::proto::Kind::Answer => {
                debug!("ignoring a late {} from {nid}", other.name());
            }
            (asked, other) => {
                warn!("unexpected {} from {nid} (asked: {asked:?})", other.name());
                return false;
            }
        }
        true
    }

    // ---- storages leaving ----

    /// A storage's connection is gone.
    pub(super) fn storage_lost(&mut self, cx: &mut Ctx, nid: Nid) {
        let keep_last = !cx.mutant("pt-outdate-last");
        let outdate_wrong = cx.mutant("pt-outdate-wrong");
        self.pack_storage_lost(cx, nid);
        let Some(p) = self.primary_mut() else { return };
        // Its unanswered requests fail once its link is gone (see `storage_ask_failed`).
        p.starting.remove(&nid);
        let state = p.cluster_state;
        let was = self.nodes.get(nid).map(|n| n.state);
        match state {
            ClusterState::Recovering => {
                if let Some(p) = self.primary_mut() {
                    p.recovery.answers.remove(&nid);
                }
                self.set_node_state(cx, nid, NodeState::Down);
                self.try_start(cx);
            }
            _ if was == Some(NodeState::Pending) => {
                // A pending node that leaves is forgotten.
                if let Some(mut info) = self.nodes.remove(nid) {
                    info.state = NodeState::Unknown;
                    self.broadcast_nodes(cx, &[info], None);
                }
            }
            _ => {
                self.set_node_state(cx, nid, NodeState::Down);
                let running: BTreeSet<Nid> = self
                    .nodes
                    .of_type(NodeType::Storage)
                    .filter(|n| n.state == NodeState::Running)
                    .filter_map(|n| n.nid)
                    .collect();
                let Some(p) = self.primary_mut() else { return };
                let changes = p.pt.outdate(
                    Some(nid),
                    |n| running.contains(&n) || (outdate_wrong && n == nid),
                    keep_last,
                );
                let operational = p.pt.operational(|n| running.contains(&n), &[]);
                if !changes.is_empty() {
                    info!("{nid} lost: partition table {:?}", p.pt.ptid());
                    self.broadcast_pt_changes(cx, changes);
                }
                // Commits it was to lock go on with the others (its cells are outdated now),
                // but only while the table stays operational: otherwise the locks we have
                // may come from OUT_OF_DATE cells alone, while the cell that stays
                // UP_TO_DATE (the last one is never outdated) never got the transaction.
                // Recovery drops the transactions; verification commits what a readable
                // cell locked and the client asks the outcome (AskFinalTID).
                if operational {
                    self.storage_lost_by_tm(cx, nid);
                }
                if !operational && state != ClusterState::Stopping {
                    warn!("the partition table is not operational any more: back to recovery");
                    self.enter_recovery(cx);
                    if let Some(p) = self.primary_mut() {
                        // An automatic restart: no need to wait for every node again.
                        p.auto_restart = true;
                    }
                } else if state == ClusterState::Verifying {
                    self.verification_progress(cx);
                }
            }
        }
    }
}
