//! The master role: identification of nodes, node ids, node and cluster notifications;
//! the election of a primary and the secondary role (`election`); the primary's cluster
//! lifecycle (`cluster`); operators' requests relayed by the admin (`admin`); clients and
//! the commit coordination (`transactions`); pack orders (`pack`).
//!
//! A master keeps nothing on disk. Its life is a loop: claim the primary role (RECOVERING,
//! with an election timestamp); yield to an older claimant or follow a primary that accepts
//! it; as a secondary, watch the primary and claim again when it is gone.

pub mod admin;
pub mod cluster;
pub mod election;
pub mod pack;
pub mod transactions;

use tracing::{debug, info, warn};

use self::election::{Claim, Role};
use super::bootstrap::PrimaryFinder;
use super::core::Node;
use super::link::{Backoff, Links};
use super::nodes::{hears_about, NodeTable};
use super::requests::Failure;
use super::{CloseReason, ConnId, Ctx, Observation, Ticker};
use crate::proto::{
    Address, ClusterState, ErrorCode, IdentificationExtra, Message, Nid, NodeInfo, NodeState,
    NodeType, Packet, WallTime,
};
use crate::pt::PartitionTable;

/// How a master is configured (neo.conf's master section and neomaster's options).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterConfig {
    pub cluster: String,
    pub bind: Address,
    /// The other masters (our own address may be listed too).
    pub masters: Vec<Address>,
    /// Start a new cluster once this many storages are pending.
    pub autostart: Option<u32>,
    /// Replicas and partitions of a new database.
    pub replicas: u32,
    pub partitions: u32,
    pub nid: Option<Nid>,
}

/// What a master knows about the peer of one of its connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Accepted, not identified yet.
    Incoming,
    /// We claim the primary role to this master (we are electing).
    Election(Address),
    /// Our secondary-role link to the master we follow.
    ToPrimary(Address),
    /// A node we, the primary, identified.
    Node(Nid),
}

/// What a master waits for, in its request table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Asked {
    /// The answer to our identification: an election claim, or to the master we follow.
    Identification,
    /// A storage's answer, as the primary.
    Storage(cluster::Asked),
}

/// Election timestamps are forced to increase by at least this much.
const TIME_STEP: u64 = 1_000_000;

pub struct Master {
    cfg: MasterConfig,
    nid: Option<Nid>,
    /// Known masters, and the search for the primary when we are a secondary.
    finder: PrimaryFinder,
    nodes: NodeTable,
    links: Links<Peer, Asked>,
    role: Role,
    /// The last time stamp handed out (see `monotonic_time`).
    last_time: WallTime,
    /// Pacing of connection attempts to other masters.
    backoff: Backoff,
    /// As a secondary: the time stamp of the primary's last node notification.
    last_notification: Option<WallTime>,
    tick: Ticker,
}

impl Master {
    pub fn new(cfg: MasterConfig) -> Master {
        Master {
            nid: cfg.nid,
            finder: PrimaryFinder::new(cfg.masters.iter().cloned(), Some(cfg.bind.clone())),
            nodes: NodeTable::default(),
            links: Links::default(),
            role: Role::Starting,
            last_time: WallTime(0),
            backoff: Backoff::default(),
            last_notification: None,
            tick: Ticker::default(),
            cfg,
        }
    }

    pub fn nid(&self) -> Option<Nid> {
        self.nid
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn address(&self) -> &Address {
        &self.cfg.bind
    }

    pub fn nodes(&self) -> &NodeTable {
        &self.nodes
    }

    /// The master we follow (or try to), when we are a secondary.
    pub fn following(&self) -> Option<(&Address, &election::Secondary)> {
        match &self.role {
            Role::Secondary(s) => self.finder.target().map(|t| (t, s)),
            _ => None,
        }
    }

    /// The cluster state, if we are primary.
    pub fn cluster_state(&self) -> Option<ClusterState> {
        match &self.role {
            Role::Primary(p) => Some(p.cluster_state),
            _ => None,
        }
    }

    /// The table, if we are primary.
    pub fn primary_table(&self) -> Option<&PartitionTable> {
        match &self.role {
            Role::Primary(p) => Some(&p.pt),
            _ => None,
        }
    }

    /// Wall time forced to increase strictly (by 1 ms steps when the clock stalls or goes
    /// back), as NEO's `monotonic_time`: election claims and node time stamps use it.
    fn monotonic_time(&mut self, cx: &Ctx) -> WallTime {
        let now = cx.now();
        self.last_time = if now > self.last_time {
            now
        } else {
            WallTime(self.last_time.0.saturating_add(TIME_STEP))
        };
        self.last_time
    }

    fn learn_master(&mut self, address: &Address) {
        if !self.finder.known().contains(address) {
            debug!("learnt master address {address}");
            self.finder.learn(address);
        }
    }

    /// Whether we may try `address` now (see `Backoff`).
    fn may_connect(&mut self, cx: &Ctx, address: &Address) -> bool {
        self.backoff.try_attempt(cx.elapsed(), address)
    }

    fn identification(&self, id_timestamp: Option<WallTime>) -> Packet {
        Packet::RequestIdentification {
            node_type: NodeType::Master,
            nid: self.nid,
            address: Some(self.cfg.bind.clone()),
            cluster_name: self.cfg.cluster.clone(),
            id_timestamp,
            extra: IdentificationExtra::default(),
        }
    }

    fn me(&self) -> String {
        match self.nid {
            Some(nid) => nid.to_string(),
            None => self.cfg.bind.to_string(),
        }
    }

    fn protocol_error(&mut self, cx: &mut Ctx, conn: ConnId, id: u32, why: String) {
        warn!("{}: protocol error on {conn:?}: {why}", self.me());
        self.links
            .answer(cx, conn, id, Packet::error(ErrorCode::ProtocolError, why));
        self.links.close(cx, conn);
    }

    fn refuse(&mut self, cx: &mut Ctx, conn: ConnId, id: u32, code: ErrorCode, why: &str) {
        self.links.answer(cx, conn, id, Packet::error(code, why));
        self.links.close(cx, conn);
    }

    /// A message from a peer; `asked` is what we asked if it answers our request.
    fn received(&mut self, cx: &mut Ctx, conn: ConnId, asked: Option<Asked>, msg: Message) {
        let Some(peer) = self.links.get(conn).cloned() else {
            return;
        };
        let node_type = match &peer {
            Peer::Node(nid) => self.nodes.get(*nid).map(|n| n.node_type),
            _ => None,
        };
        // Any error from a node but an admin closes it. A storage refusing a lock is no
        // exception: it may hold readable cells the transaction wrote to, so it must not
        // stay UP_TO_DATE without the commit; lost, its cells are outdated.
        if let Packet::Error { code, message } = &msg.packet {
            if node_type != Some(NodeType::Admin) {
                warn!("{}: {peer:?} answered {code}: {message}", self.me());
                self.links.close(cx, conn);
                self.on_lost(cx, conn, peer, CloseReason::Protocol(message.clone()));
                return;
            }
        }
        if let Peer::Election(a) | Peer::ToPrimary(a) = &peer {
            self.backoff.succeeded(a);
        }
        match peer {
            Peer::Incoming => match msg.packet {
                Packet::RequestIdentification {
                    node_type,
                    nid,
                    address,
                    cluster_name,
                    id_timestamp,
                    extra,
                } => {
                    if cluster_name != self.cfg.cluster {
                        let why = format!(
                            "invalid cluster name {cluster_name:?} (this is cluster {:?})",
                            self.cfg.cluster
                        );
                        self.protocol_error(cx, conn, msg.id, why);
                        return;
                    }
                    let req = Identification {
                        conn,
                        id: msg.id,
                        nid,
                        address,
                        id_timestamp,
                        established: extra.established,
                        ptid: extra.ptid,
                        read_only: extra.read_only,
                    };
                    self.identify(cx, node_type, req);
                }
                other => {
                    let why = format!("expected RequestIdentification, got {}", other.name());
                    self.protocol_error(cx, conn, msg.id, why);
                }
            },
            Peer::Election(address) => self.on_election_answer(cx, conn, address, msg),
            Peer::ToPrimary(_) => self.on_from_primary(cx, conn, msg),
            Peer::Node(nid) => match node_type {
                Some(NodeType::Storage) => {
                    let id = msg.id;
                    let asked = match asked {
                        Some(Asked::Storage(a)) => Some(a),
                        _ => None,
                    };
                    if !self.on_storage_message(cx, conn, nid, asked, msg) {
                        self.protocol_error(cx, conn, id, "unexpected packet".into());
                        self.storage_lost(cx, nid);
                    }
                }
                Some(NodeType::Admin) => self.on_admin_request(cx, conn, msg),
                Some(NodeType::Client) => self.on_client_message(cx, conn, nid, msg),
                _ => debug!("{}: ignoring {} from {nid}", self.me(), msg.packet.name()),
            },
        }
    }

    fn identify(&mut self, cx: &mut Ctx, node_type: NodeType, req: Identification) {
        if req.address.as_ref() == Some(&self.cfg.bind) {
            // Nobody else listens at our address: taken as a new incarnation of ours, it
            // would replace our own entry in the node list.
            let why = format!("{} is this master's own address", self.cfg.bind);
            return self.protocol_error(cx, req.conn, req.id, why);
        }
        let primary = match &self.role {
            Role::Primary(p) => p,
            Role::Secondary(s) => {
                let primary = if s.identified {
                    self.finder.target().cloned()
                } else {
                    None
                };
                let known_masters = self.finder.known().iter().cloned().collect();
                let answer = Packet::NotPrimaryMaster {
                    primary,
                    known_masters,
                };
                self.links.answer(cx, req.conn, req.id, answer);
                self.links.close(cx, req.conn);
                return;
            }
            Role::Starting => unreachable!("a master plays a role once started"),
        };
        match node_type {
            NodeType::Master => {}
            NodeType::Storage => return self.identify_storage(cx, req),
            NodeType::Admin => return self.identify_admin(cx, req),
            NodeType::Client => return self.identify_client(cx, req),
        }
        let Some(address) = req.address.clone() else {
            let why = "a master must give its listening address".into();
            return self.protocol_error(cx, req.conn, req.id, why);
        };
        // NEO's rule for adding a master: its address is in the others' `masters` lists
        // (or learnt from a primary that accepted it so). Anything else may be a stray or
        // hostile process that would be listed as a master, then DOWN, forever.
        if address == self.cfg.bind || !self.finder.known().contains(&address) {
            warn!(
                "{}: refused a master claiming to listen at {address}, which is not in the masters list",
                self.me()
            );
            let why = format!("{address} is not in this cluster's masters list");
            return self.refuse(cx, req.conn, req.id, ErrorCode::ProtocolError, &why);
        }
        let own = primary.electing().cloned();
        let peer = req.id_timestamp.map(|ts| Claim {
            ts,
            address: address.clone(),
        });
        if let (Some(own), Some(peer)) = (&own, &peer) {
            if peer < own && !cx.mutant("election-no-yield") {
                self.yield_to(cx, req.conn, own.clone(), peer.clone());
                return;
            }
        }
        cx.observe(Observation::AcceptedMaster { own, peer });
        self.learn_master(&address);
        let nid = self
            .nodes
            .allocate_nid(NodeType::Master, req.nid, Some(&address), self.nid);
        info!("{}: accepted master {nid} at {address}", self.me());
        let info = NodeInfo {
            node_type: NodeType::Master,
            address: Some(address),
            nid: Some(nid),
            state: NodeState::Running,
            id_timestamp: None,
        };
        self.welcome(cx, &req, info);
    }

    fn identify_storage(&mut self, cx: &mut Ctx, req: Identification) {
        let state = self.cluster_state().expect("primary");
        if state == ClusterState::Stopping {
            return self.refuse(
                cx,
                req.conn,
                req.id,
                ErrorCode::NotReady,
                "the cluster is stopping",
            );
        }
        let Some(address) = req.address.clone() else {
            let why = "a storage must give its listening address".into();
            return self.protocol_error(cx, req.conn, req.id, why);
        };
        if let Some(p) = req.ptid.filter(|p| !p.is_plausible()) {
            if !cx.mutant("ptid-wrap") {
                let why =
                    format!("impossible partition table id {p} from the storage at {address}");
                return self.protocol_error(cx, req.conn, req.id, why);
            }
        }
        if let Some(n) = req.nid.filter(|n| n.node_type() != Some(NodeType::Storage)) {
            let why = format!("{n} is not a storage node id (storage at {address})");
            return self.protocol_error(cx, req.conn, req.id, why);
        }
        self.replace_previous(cx, req.nid, &address);
        let Some(state) = self.cluster_state() else {
            return;
        };
        // A storage without a node id has an empty database: a new node. Until the table is
        // decided we cannot know which ids its nodes hold (a missing one may hold any), so it
        // waits for its id (see `admit_new_storages`), counted as a storage of a new cluster.
        if req.nid.is_none() && state == ClusterState::Recovering && !cx.mutant("wiped-disk-serves")
        {
            info!(
                "{}: new storage at {address} waits until the partition table is decided",
                self.me()
            );
            if let Some(p) = self.primary_mut() {
                p.new_storages.insert(req.conn, req);
            }
            return self.try_start(cx);
        }
        let Some(nid) = self.storage_nid(cx, &req, &address) else {
            return;
        };
        // The storage came back while its old connection looked alive (a crash we did not
        // see yet): the old process is gone with its locks, so while running it is lost
        // first (cells outdated, commits not waiting for it), as if that connection had
        // closed. (Before running, recovery and verification ask it again instead.)
        let old = self.conn_of(nid).filter(|c| *c != req.conn);
        if let Some(old) = old.filter(|_| state == ClusterState::Running) {
            info!(
                "{}: {nid} reconnected: its old connection is lost",
                self.me()
            );
            self.links.close(cx, old);
            self.on_lost(cx, old, Peer::Node(nid), CloseReason::Reset);
        }
        let Some(state) = self.cluster_state() else {
            return;
        };
        let known = self
            .nodes
            .get(nid)
            .filter(|n| n.node_type == NodeType::Storage)
            .cloned();
        let in_table = self
            .primary_table()
            .is_some_and(|pt| pt.nodes().contains(&nid));
        let node_state = match state {
            ClusterState::Recovering => NodeState::Pending,
            _ if known.is_some() || in_table => NodeState::Running,
            _ => NodeState::Pending,
        };
        info!(
            "{}: storage {nid} at {address} identified ({node_state})",
            self.me()
        );
        let info = NodeInfo {
            node_type: NodeType::Storage,
            address: Some(address),
            nid: Some(nid),
            state: node_state,
            id_timestamp: None,
        };
        self.welcome(cx, &req, info);
        match state {
            ClusterState::Recovering => self.recovery_join(cx, nid),
            _ => {
                if !self.outgrow_ptid(cx, req.ptid) {
                    self.send_partition_table(cx, req.conn);
                }
                if state == ClusterState::Verifying && node_state == NodeState::Running {
                    // A node that was running reconnected: what we asked it for
                    // verification is lost with its old connection, and it may hold
                    // readable cells: verify again, with it.
                    self.restart_verification(cx);
                }
                if state == ClusterState::Running && node_state == NodeState::Running {
                    self.start_operation(cx, nid);
                }
            }
        }
    }

    /// A node with another id (or none) listened at `address` before: this process
    /// replaced it (a storage's wiped or swapped disk, another node started there), so it
    /// is lost, as if its connection had closed. If the table names it, it stays listed,
    /// DOWN and without an address, so that its cells still name a known node; otherwise
    /// it is forgotten when the new one is listed.
    fn replace_previous(&mut self, cx: &mut Ctx, nid: Option<Nid>, address: &Address) {
        let previous: Vec<Nid> = self
            .nodes
            .iter()
            .filter(|n| n.address.as_ref() == Some(address) && n.nid != nid)
            .filter_map(|n| n.nid)
            .collect();
        for old in previous {
            if let Some(c) = self.conn_of(old) {
                info!(
                    "{}: the node at {address} is not {old} any more: {old} is lost",
                    self.me()
                );
                self.links.close(cx, c);
                self.on_lost(cx, c, Peer::Node(old), CloseReason::Reset);
            }
            let in_table = self
                .primary_table()
                .is_some_and(|pt| pt.nodes().contains(&old));
            if in_table {
                if let Some(mut info) = self.nodes.remove(old) {
                    info.address = None;
                    info.state = NodeState::Down;
                    self.nodes.upsert(info.clone());
                    self.broadcast_nodes(cx, &[info], None);
                }
            }
        }
    }

    /// The id of an identifying storage (None if refused: answered and closed). Storage ids
    /// are persistent: a known storage keeps its id whatever its address now, unless another
    /// live connection uses that id from elsewhere (a copied database); a storage without
    /// one gets an id no node we know of, in the table or not, ever had.
    fn storage_nid(
        &mut self,
        cx: &mut Ctx,
        req: &Identification,
        address: &Address,
    ) -> Option<Nid> {
        let fresh = |m: &mut Master, cx: &mut Ctx| {
            let nid = m.fresh_storage_nid(cx);
            if nid.is_none() {
                let why = "no storage node id left";
                m.refuse(cx, req.conn, req.id, ErrorCode::NotReady, why);
            }
            nid
        };
        let Some(proposed) = req.nid else {
            return fresh(self, cx);
        };
        let Some(k) = self.nodes.get(proposed).cloned() else {
            return Some(proposed);
        };
        if self.conn_of(proposed).is_none() || k.address.as_ref() == Some(address) {
            return Some(proposed);
        }
        if req.established {
            let why = format!(
                "node id {proposed} is in use by the storage at {:?}",
                k.address
            );
            self.protocol_error(cx, req.conn, req.id, why);
            return None;
        }
        // Two masters claiming the primary role at once gave the same id to two new
        // storages: the one connected first keeps it.
        fresh(self, cx)
    }

    /// A storage id above every storage id in our node list and our table, so that no id a
    /// node may still hold on its disk is handed out again; the lowest unused number if the
    /// numbers above ran out. The `wiped-disk-serves` mutant hands out the id of a storage
    /// of the table that is not connected, as the primary once did while recovering.
    fn fresh_storage_nid(&self, cx: &Ctx) -> Option<Nid> {
        let mut used: std::collections::BTreeSet<Nid> = self
            .nodes
            .of_type(NodeType::Storage)
            .filter_map(|n| n.nid)
            .collect();
        if let Some(pt) = self.primary_table() {
            used.extend(pt.nodes().iter().copied());
        }
        if cx.mutant("wiped-disk-serves") {
            if let Some(n) = used.iter().find(|n| self.conn_of(**n).is_none()) {
                return Some(*n);
            }
        }
        let top = used
            .iter()
            .filter(|n| n.node_type() == Some(NodeType::Storage))
            .map(|n| n.number())
            .max()
            .unwrap_or(0);
        if top < Nid::MAX_NUMBER {
            return Some(Nid::new(NodeType::Storage, top + 1));
        }
        (1..=Nid::MAX_NUMBER)
            .map(|n| Nid::new(NodeType::Storage, n))
            .find(|n| !used.contains(n))
    }

    fn identify_admin(&mut self, cx: &mut Ctx, req: Identification) {
        let nid = self
            .nodes
            .allocate_nid(NodeType::Admin, req.nid, req.address.as_ref(), self.nid);
        info!("{}: admin {nid} identified", self.me());
        let info = NodeInfo {
            node_type: NodeType::Admin,
            address: req.address.clone(),
            nid: Some(nid),
            state: NodeState::Running,
            id_timestamp: None,
        };
        self.welcome(cx, &req, info);
        self.send_partition_table(cx, req.conn);
    }

    /// Record an identified node and tell it (and the others) what they need: our
    /// acceptance, the full node list with its own entry first, the cluster state.
    fn welcome(&mut self, cx: &mut Ctx, req: &Identification, mut info: NodeInfo) {
        let nid = info.nid.expect("identified nodes have an id");
        if let Some(a) = &info.address {
            self.replace_previous(cx, Some(nid), a);
        }
        self.close_stale_links(cx, req.conn, nid, info.address.as_ref());
        info.id_timestamp = Some(self.monotonic_time(cx));
        self.nodes.upsert(info.clone());
        *self.links.get_mut(req.conn).expect("identifying link") = Peer::Node(nid);
        let accept = Packet::AcceptIdentification {
            node_type: NodeType::Master,
            nid: self.nid,
            your_nid: Some(nid),
        };
        self.links.answer(cx, req.conn, req.id, accept);
        let mut nodes = vec![info.clone()];
        nodes.extend(
            self.nodes
                .iter()
                .filter(|n| n.nid != Some(nid) && hears_about(info.node_type, n.node_type))
                .cloned(),
        );
        let timestamp = self.monotonic_time(cx);
        self.links.notify(
            cx,
            req.conn,
            Packet::NotifyNodeInformation { timestamp, nodes },
        );
        let state = self.cluster_state().expect("primary");
        self.links
            .notify(cx, req.conn, Packet::NotifyClusterInformation { state });
        self.broadcast_nodes(cx, &[info], Some(req.conn));
    }

    /// Close links left from a node's previous life (same id or same address): a new
    /// identification wins, as a restarted process must.
    fn close_stale_links(
        &mut self,
        cx: &mut Ctx,
        conn: ConnId,
        nid: Nid,
        address: Option<&Address>,
    ) {
        let stale: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(c, p)| match p {
                Peer::Node(n) => {
                    let same_address = address.is_some()
                        && self.nodes.get(*n).and_then(|i| i.address.as_ref()) == address;
                    *c != conn && (*n == nid || same_address)
                }
                _ => false,
            })
            .map(|(c, _)| c)
            .collect();
        for c in stale {
            debug!(
                "{}: closing the previous connection {c:?} of {nid}",
                self.me()
            );
            self.links.close(cx, c);
        }
    }

    /// Tell identified nodes about node changes, each what NEO's routing lets it hear.
    fn broadcast_nodes(&mut self, cx: &mut Ctx, changes: &[NodeInfo], except: Option<ConnId>) {
        let receivers: Vec<(ConnId, NodeType)> = self
            .links
            .iter()
            .filter(|(c, _)| Some(*c) != except)
            .filter_map(|(c, p)| match p {
                Peer::Node(nid) => self.nodes.get(*nid).map(|n| (c, n.node_type)),
                _ => None,
            })
            .collect();
        if receivers.is_empty() {
            return;
        }
        let timestamp = self.monotonic_time(cx);
        for (conn, ty) in receivers {
            let nodes: Vec<NodeInfo> = changes
                .iter()
                .filter(|n| hears_about(ty, n.node_type))
                .cloned()
                .collect();
            if !nodes.is_empty() {
                self.links
                    .notify(cx, conn, Packet::NotifyNodeInformation { timestamp, nodes });
            }
        }
    }

    /// Internal consistency, checked by the simulator after every step: every identified
    /// link has a live entry in the node table, a primary lists itself, and a RUNNING
    /// cluster has an operational table.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (conn, peer) in self.links.iter() {
            if let Peer::Node(nid) = peer {
                match self.nodes.get(*nid) {
                    Some(n) if matches!(n.state, NodeState::Running | NodeState::Pending) => {}
                    other => {
                        return Err(format!(
                            "{}: {conn:?} links {nid}, listed as {other:?}",
                            self.me()
                        ))
                    }
                }
            }
        }
        if let Role::Primary(p) = &self.role {
            let running = |n: Nid| {
                self.nodes
                    .get(n)
                    .is_some_and(|i| i.state == NodeState::Running)
            };
            if p.cluster_state == ClusterState::Running && !p.pt.operational(running, &[]) {
                return Err(format!(
                    "{}: RUNNING with a table that is not operational",
                    self.me()
                ));
            }
            p.tm.check()?;
            let own = self.nid.and_then(|nid| self.nodes.get(nid));
            if !own.is_some_and(|n| {
                n.state == NodeState::Running && n.address.as_ref() == Some(&self.cfg.bind)
            }) {
                return Err(format!(
                    "{}: a primary that does not list itself as running",
                    self.me()
                ));
            }
        }
        Ok(())
    }

    fn on_lost(&mut self, cx: &mut Ctx, conn: ConnId, peer: Peer, reason: CloseReason) {
        if let Peer::Election(a) | Peer::ToPrimary(a) = &peer {
            if matches!(reason, CloseReason::Refused | CloseReason::TimedOut) {
                self.backoff.failed(a);
            }
        }
        let nid = match peer {
            Peer::Incoming => {
                // A new storage waiting for its id, maybe.
                if let Some(p) = self.primary_mut() {
                    p.new_storages.remove(&conn);
                }
                return;
            }
            Peer::Election(_) => return,
            Peer::ToPrimary(_) => return self.primary_lost(cx, conn, reason),
            Peer::Node(nid) => nid,
        };
        match self.nodes.get(nid).map(|n| n.node_type) {
            Some(NodeType::Storage) => {
                info!("{}: storage {nid} lost ({reason:?})", self.me());
                self.storage_lost(cx, nid);
            }
            Some(NodeType::Client) => self.client_lost(cx, conn, nid),
            Some(NodeType::Admin) => {
                if let Some(mut info) = self.nodes.remove(nid) {
                    info.state = NodeState::Unknown;
                    self.broadcast_nodes(cx, &[info], None);
                }
            }
            _ => {
                if let Some(info) = self.nodes.set_state(nid, NodeState::Down).cloned() {
                    info!("{}: {nid} is down ({reason:?})", self.me());
                    self.broadcast_nodes(cx, &[info], None);
                }
            }
        }
    }

    fn on_from_primary(&mut self, cx: &mut Ctx, conn: ConnId, msg: Message) {
        match msg.packet {
            Packet::AcceptIdentification {
                node_type: NodeType::Master,
                nid,
                your_nid,
            } => self.identified_by_primary(nid, your_nid),
            Packet::NotPrimaryMaster {
                primary,
                known_masters,
            } => {
                for m in &known_masters {
                    self.learn_master(m);
                }
                self.links.close(cx, conn);
                self.redirected(cx, primary);
            }
            Packet::NotifyNodeInformation { timestamp, nodes } => {
                let own = self.nid;
                let Some(n) =
                    self.nodes
                        .notified(&mut self.last_notification, timestamp, &nodes, own)
                else {
                    debug!("{}: ignoring an old node notification", self.me());
                    return;
                };
                for m in &n.masters {
                    self.learn_master(m);
                }
                if let Some(state) = n.told {
                    info!(
                        "{}: the primary says this node is {state}: exiting",
                        self.me()
                    );
                    self.links.close_all(cx);
                    cx.exit(format!("told {state} by the primary"), true);
                }
            }
            Packet::NotifyClusterInformation { state } => {
                if state == ClusterState::Stopping {
                    info!("{}: the cluster is stopping: exiting", self.me());
                    self.links.close_all(cx);
                    cx.exit("cluster stopped", true);
                }
            }
            other => {
                let why = format!("unexpected {} from the primary", other.name());
                self.protocol_error(cx, conn, msg.id, why);
                self.primary_lost(cx, conn, CloseReason::Protocol("unexpected packet".into()));
            }
        }
    }
}

/// A `RequestIdentification` being handled.
#[derive(Clone, Debug)]
struct Identification {
    conn: ConnId,
    id: u32,
    nid: Option<Nid>,
    address: Option<Address>,
    id_timestamp: Option<WallTime>,
    established: bool,
    ptid: Option<crate::proto::Ptid>,
    /// A client that will not write.
    read_only: bool,
}

impl Master {
    /// A request of ours will not be answered. A peer that does not answer in time is
    /// treated as gone (it is alive, as it answers pings, but stuck or hostile).
    fn on_request_failed(&mut self, cx: &mut Ctx, conn: ConnId, asked: Asked, why: Failure) {
        if why == Failure::TimedOut {
            if let Some(peer) = self.links.close(cx, conn) {
                warn!("{}: {peer:?} did not answer in time", self.me());
                self.on_lost(cx, conn, peer, CloseReason::TimedOut);
            }
        }
        if let Asked::Storage(a) = asked {
            self.storage_ask_failed(cx, a);
        }
    }
}

impl Node for Master {
    type Peer = Peer;
    type Asked = Asked;

    fn core(&mut self) -> (&mut Links<Peer, Asked>, &mut Ticker) {
        (&mut self.links, &mut self.tick)
    }

    fn on_start(&mut self, cx: &mut Ctx) {
        self.tick.arm(cx);
        self.play_primary(cx);
    }

    fn accepted(&self) -> Peer {
        Peer::Incoming
    }

    fn on_message(&mut self, cx: &mut Ctx, conn: ConnId, asked: Option<Asked>, msg: Message) {
        self.received(cx, conn, asked, msg);
    }

    fn on_failed(&mut self, cx: &mut Ctx, conn: ConnId, asked: Asked, why: Failure) {
        self.on_request_failed(cx, conn, asked, why);
    }

    fn on_closed(&mut self, cx: &mut Ctx, conn: ConnId, peer: Peer, reason: CloseReason) {
        self.on_lost(cx, conn, peer, reason);
    }

    fn on_tick(&mut self, cx: &mut Ctx) {
        self.election_tick(cx);
    }

    fn on_shutdown(&mut self, cx: &mut Ctx) {
        info!("{}: shutting down", self.me());
        self.links.close_all(cx);
        cx.exit("shutdown requested", true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::testing::{closed, sent, Harness};
    use crate::actors::{Effect, Event};
    use crate::proto::{CellState, Ptid};

    fn config(port: u16) -> MasterConfig {
        MasterConfig {
            cluster: "prod".into(),
            bind: Address::new("10.0.0.1", port),
            masters: vec![Address::new("10.0.0.1", 1), Address::new("10.0.0.1", 2)],
            autostart: None,
            replicas: 0,
            partitions: 12,
            nid: None,
        }
    }

    fn identification(
        cluster: &str,
        node_type: NodeType,
        port: u16,
        ts: Option<WallTime>,
    ) -> Packet {
        Packet::RequestIdentification {
            node_type,
            nid: None,
            address: Some(Address::new("10.0.0.1", port)),
            cluster_name: cluster.into(),
            id_timestamp: ts,
            extra: IdentificationExtra::default(),
        }
    }

    #[test]
    fn a_claimant_claims_to_every_other_known_master() {
        let mut h = Harness::new(Master::new(config(1)));
        let out = h.start();
        let connects: Vec<&Address> = out
            .iter()
            .filter_map(|e| match e {
                Effect::Connect { to, .. } => Some(to),
                _ => None,
            })
            .collect();
        assert_eq!(connects, vec![&Address::new("10.0.0.1", 2)]);
        assert!(
            matches!(h.actor.role(), Role::Primary(p) if p.cluster_state == ClusterState::Recovering)
        );
        assert_eq!(h.actor.nid(), Some(Nid::new(NodeType::Master, 1)));
    }

    #[test]
    fn a_wrong_cluster_name_is_refused_with_a_protocol_error() {
        let mut h = Harness::new(Master::new(config(1)));
        h.start();
        let out = h.incoming(
            ConnId(100),
            identification("other", NodeType::Master, 2, None),
        );
        let answers = sent(&out, ConnId(100));
        assert!(
            matches!(&answers[..], [Packet::Error { code: ErrorCode::ProtocolError, message }] if message.contains("\"other\"") && message.contains("\"prod\"")),
            "{answers:?}"
        );
        assert!(closed(&out, ConnId(100)));
        assert!(h
            .actor
            .nodes()
            .by_address(&Address::new("10.0.0.1", 2))
            .is_none());
    }

    #[test]
    fn an_older_claimant_makes_a_claimant_yield_and_a_younger_one_is_accepted() {
        let mut cfg = config(1);
        cfg.masters.push(Address::new("10.0.0.1", 3));
        let mut h = Harness::new(Master::new(cfg));
        h.start();
        let own = h.actor.role().clone();
        let Role::Primary(p) = own else { panic!() };
        // Younger: accepted, told its nid, the node list (its own entry first) and the state.
        let younger = WallTime(p.claim.ts.0 + 1);
        let out = h.incoming(
            ConnId(100),
            identification("prod", NodeType::Master, 2, Some(younger)),
        );
        let answers = sent(&out, ConnId(100));
        assert!(
            matches!(&answers[0], Packet::AcceptIdentification { your_nid: Some(n), .. } if *n == Nid::new(NodeType::Master, 2))
        );
        assert!(
            matches!(&answers[1], Packet::NotifyNodeInformation { nodes, .. } if nodes[0].nid == Some(Nid::new(NodeType::Master, 2)) && nodes.len() == 2)
        );
        assert_eq!(
            answers[2],
            Packet::NotifyClusterInformation {
                state: ClusterState::Recovering
            }
        );
        assert!(matches!(h.actor.role(), Role::Primary(_)));
        // Older: we yield and go follow it (once the pacing of our first claim to it
        // allows a new connection).
        h.elapsed += std::time::Duration::from_secs(2);
        let older = WallTime(p.claim.ts.0 - 1);
        let out = h.incoming(
            ConnId(101),
            identification("prod", NodeType::Master, 3, Some(older)),
        );
        assert!(sent(&out, ConnId(101)).is_empty());
        assert!(closed(&out, ConnId(101)));
        assert!(matches!(h.actor.following(), Some((p, _)) if *p == Address::new("10.0.0.1", 3)));
        assert!(out.iter().any(
            |e| matches!(e, Effect::Connect { to, .. } if *to == Address::new("10.0.0.1", 3))
        ));
        // Now a secondary: any identification gets NotPrimaryMaster and a close.
        let out = h.incoming(
            ConnId(102),
            identification("prod", NodeType::Storage, 4, None),
        );
        assert!(
            matches!(&sent(&out, ConnId(102))[..], [Packet::NotPrimaryMaster { primary: None, known_masters }] if known_masters.len() == 3)
        );
        assert!(closed(&out, ConnId(102)));
    }

    #[test]
    fn a_message_before_identification_is_a_protocol_error() {
        let mut h = Harness::new(Master::new(config(1)));
        h.start();
        let out = h.incoming(ConnId(100), Packet::AskClusterState);
        assert!(matches!(
            &sent(&out, ConnId(100))[..],
            [Packet::Error {
                code: ErrorCode::ProtocolError,
                ..
            }]
        ));
        assert!(closed(&out, ConnId(100)));
    }

    fn storage(port: u16, nid: Option<Nid>, ptid: Option<Ptid>) -> Packet {
        Packet::RequestIdentification {
            node_type: NodeType::Storage,
            nid,
            address: Some(Address::new("10.0.1.1", port)),
            cluster_name: "prod".into(),
            id_timestamp: None,
            extra: IdentificationExtra {
                established: nid.is_some() && ptid.is_some(),
                ptid,
                ..Default::default()
            },
        }
    }

    fn s(n: u32) -> Nid {
        Nid::new(NodeType::Storage, n)
    }

    /// The messages (id, packet) sent on `conn`.
    fn messages(effects: &[Effect], conn: ConnId) -> Vec<(u32, Packet)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { conn: c, msg } if *c == conn => Some((msg.id, msg.packet.clone())),
                _ => None,
            })
            .collect()
    }

    /// The id the master gave on `conn`, if it accepted it.
    fn accepted(effects: &[Effect], conn: ConnId) -> Option<Nid> {
        sent(effects, conn).into_iter().find_map(|p| match p {
            Packet::AcceptIdentification { your_nid, .. } => your_nid,
            _ => None,
        })
    }

    /// The id of the last `packet` (by name) sent on `conn`.
    fn sent_id(effects: &[Effect], conn: ConnId, name: &str) -> Option<u32> {
        effects.iter().rev().find_map(|e| match e {
            Effect::Send { conn: c, msg } if *c == conn && msg.packet.name() == name => {
                Some(msg.id)
            }
            _ => None,
        })
    }

    /// Answer, as empty storages with no table would, every request the master sends to
    /// `storages`, until it asks nothing more; returns every effect seen.
    fn serve_empty_storages(
        h: &mut Harness<Master>,
        mut out: Vec<Effect>,
        storages: &[ConnId],
    ) -> Vec<Effect> {
        let mut seen = Vec::new();
        while !out.is_empty() {
            let mut next = Vec::new();
            for &conn in storages {
                for (id, p) in messages(&out, conn) {
                    let answer = match p {
                        Packet::AskRecovery => Packet::AnswerRecovery {
                            ptid: None,
                            backup_tid: None,
                            truncate_tid: None,
                        },
                        Packet::AskLockedTransactions => Packet::AnswerLockedTransactions {
                            transactions: vec![],
                        },
                        Packet::AskReserveIDs { oid, tid } => Packet::AnswerReserveIDs { oid, tid },
                        Packet::AskLastIDs => Packet::AnswerLastIDs {
                            last_tid: None,
                            last_oid: None,
                            first_tid: None,
                        },
                        _ => continue,
                    };
                    let msg = Message { id, packet: answer };
                    next.extend(h.handle(Event::Received { conn, msg }));
                }
            }
            seen.extend(out);
            out = next;
        }
        seen
    }

    #[test]
    fn a_master_from_an_address_not_in_masters_is_refused() {
        let mut h = Harness::new(Master::new(config(1)));
        h.start();
        let ts = Some(WallTime(u64::MAX));
        for (conn, port) in [(100, 7), (101, 1)] {
            // Port 7 is in nobody's list; port 1 is our own address.
            let out = h.incoming(
                ConnId(conn),
                identification("prod", NodeType::Master, port, ts),
            );
            assert!(
                matches!(&sent(&out, ConnId(conn))[..], [Packet::Error { code: ErrorCode::ProtocolError, message }] if message.contains("masters list") || port == 1),
                "{out:?}"
            );
            assert!(closed(&out, ConnId(conn)));
        }
        assert!(h
            .actor
            .nodes()
            .by_address(&Address::new("10.0.0.1", 7))
            .is_none());
        assert_eq!(h.actor.nodes().of_type(NodeType::Master).count(), 1);
        // A master of the list is still accepted.
        let out = h.incoming(ConnId(102), identification("prod", NodeType::Master, 2, ts));
        assert!(accepted(&out, ConnId(102)).is_some(), "{out:?}");
    }

    /// Finding 8: an empty storage (no node id) that identifies while the primary recovers
    /// must not take the id of a storage of the table that is missing, and must not be
    /// listed with cells.
    #[test]
    fn an_empty_storage_never_takes_the_id_of_a_missing_one() {
        let mut h = Harness::new(Master::new(config(1)));
        h.start();
        let (empty, s1, admin) = (ConnId(100), ConnId(101), ConnId(102));
        let mut seen = h.incoming(empty, storage(30, None, None));
        // S1 comes back with table 5, of S1 and S2; S2 stays away.
        let out = h.incoming(s1, storage(31, Some(s(1)), Some(Ptid(5))));
        let ask = messages(&out, s1)
            .into_iter()
            .find(|(_, p)| *p == Packet::AskRecovery);
        seen.extend(out);
        let Some((id, _)) = ask else {
            panic!("S1 is not asked for recovery: {seen:?}");
        };
        let answer = Packet::AnswerRecovery {
            ptid: Some(Ptid(5)),
            backup_tid: None,
            truncate_tid: None,
        };
        let out = h.handle(Event::Received {
            conn: s1,
            msg: Message { id, packet: answer },
        });
        let (id, _) = messages(&out, s1)
            .into_iter()
            .find(|(_, p)| *p == Packet::AskPartitionTable)
            .expect("asks S1 for its table");
        seen.extend(out);
        let rows = vec![vec![(s(1), CellState::UpToDate), (s(2), CellState::UpToDate)]; 4];
        let table = Packet::AnswerPartitionTable {
            ptid: Some(Ptid(5)),
            num_replicas: 1,
            rows,
        };
        seen.extend(h.handle(Event::Received {
            conn: s1,
            msg: Message { id, packet: table },
        }));
        // The operator starts without S2.
        seen.extend(h.incoming(admin, identification("prod", NodeType::Admin, 40, None)));
        let start = Packet::SetClusterState {
            state: ClusterState::Verifying,
        };
        seen.extend(h.handle(Event::Received {
            conn: admin,
            msg: Message {
                id: 1,
                packet: start,
            },
        }));
        let given = accepted(&seen, empty);
        assert!(
            given.is_some_and(|n| n != s(1) && n != s(2)),
            "the empty storage got {given:?}"
        );
        let given = given.unwrap();
        let pt = h.actor.primary_table().expect("primary");
        assert!(pt.nodes().contains(&s(1)) && pt.nodes().contains(&s(2)));
        assert!(!pt.nodes().contains(&given), "{}", pt.render(|_| '?'));
        assert_eq!(
            h.actor.nodes().get(given).map(|n| n.state),
            Some(NodeState::Pending)
        );
        assert_eq!(
            h.actor.nodes().get(s(2)).map(|n| n.state),
            Some(NodeState::Down)
        );
    }

    /// A brand-new cluster: storages without ids wait while RECOVERING, count for
    /// autostart, and get distinct ids when the cluster is created.
    #[test]
    fn new_storages_of_a_new_cluster_are_counted_and_get_distinct_ids() {
        let mut cfg = config(1);
        cfg.autostart = Some(2);
        let mut h = Harness::new(Master::new(cfg));
        h.start();
        let (a, b) = (ConnId(100), ConnId(101));
        let out = h.incoming(a, storage(30, None, None));
        assert_eq!(
            accepted(&out, a),
            None,
            "waits while the table is undecided"
        );
        let out = h.incoming(b, storage(31, None, None));
        let seen = serve_empty_storages(&mut h, out, &[a, b]);
        let ids = (accepted(&seen, a), accepted(&seen, b));
        assert!(matches!(ids, (Some(x), Some(y)) if x != y), "{ids:?}");
        assert_eq!(h.actor.cluster_state(), Some(ClusterState::Running));
        let pt = h.actor.primary_table().unwrap();
        assert_eq!(pt.nodes().len(), 2);
    }

    /// Finding 2: a storage identifying with an impossible table id (u64::MAX) while the
    /// cluster runs is refused with a protocol error, and the table id does not move.
    #[test]
    fn an_impossible_table_id_from_a_storage_is_refused() {
        let mut cfg = config(1);
        cfg.autostart = Some(1);
        let mut h = Harness::new(Master::new(cfg));
        h.start();
        let out = h.incoming(ConnId(100), storage(30, None, None));
        serve_empty_storages(&mut h, out, &[ConnId(100)]);
        assert_eq!(h.actor.cluster_state(), Some(ClusterState::Running));
        let before = h.actor.primary_table().unwrap().ptid();
        for (conn, ptid) in [(101, u64::MAX), (102, Ptid::LIMIT.0)] {
            let out = h.incoming(ConnId(conn), storage(31, Some(s(7)), Some(Ptid(ptid))));
            assert!(
                matches!(
                    &sent(&out, ConnId(conn))[..],
                    [Packet::Error {
                        code: ErrorCode::ProtocolError,
                        ..
                    }]
                ),
                "{out:?}"
            );
            assert!(closed(&out, ConnId(conn)));
        }
        assert_eq!(h.actor.primary_table().unwrap().ptid(), before);
        h.actor.check_invariants().unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            failure_persistence: None,
            ..Default::default()
        })]

        /// Any sequence of events a host can deliver, hostile packets included: the master
        /// never panics and its invariants hold after every step.
        #[test]
        fn the_master_survives_hostile_input(
            autostart in proptest::option::of(1u32..3),
            alone in proptest::bool::ANY,
            steps in proptest::collection::vec(crate::actors::fuzz::step("prod"), 1..80),
        ) {
            let mut cfg = config(1);
            cfg.autostart = autostart;
            if alone {
                cfg.masters.truncate(1);
            }
            let mut h = Harness::new(Master::new(cfg));
            crate::actors::fuzz::run(&mut h, steps, Master::check_invariants)?;
        }
    }

    /// Finding 1: the primary paired every message of a storage with the request of the
    /// same id, notifications included, and dropped a storage whose `NotifyReady` carried
    /// the id of a pending `AskRecovery`.
    #[test]
    fn a_notification_with_the_id_of_a_pending_request_is_not_its_answer() {
        let mut h = Harness::new(Master::new(config(1)));
        h.start();
        let s = ConnId(100);
        // A storage of the cluster (a new one would wait until the table is decided).
        let out = h.incoming(s, storage(20000, Some(self::s(1)), None));
        assert!(matches!(
            &sent(&out, s)[0],
            Packet::AcceptIdentification { .. }
        ));
        let id = sent_id(&out, s, "AskRecovery").expect("recovery asks the storage");
        let msg = |id, packet| Event::Received {
            conn: s,
            msg: Message { id, packet },
        };
        let out = h.handle(msg(id, Packet::NotifyReady));
        assert!(!closed(&out, s), "the storage was dropped: {out:?}");
        assert!(sent(&out, s).is_empty(), "{out:?}");
        // An answer with another id answers nothing; the one with the id is the answer
        // (a storage with a table: the primary asks it for the table next).
        let answer = Packet::AnswerRecovery {
            ptid: Some(crate::proto::Ptid(3)),
            backup_tid: None,
            truncate_tid: None,
        };
        let out = h.handle(msg(id.wrapping_add(7), answer.clone()));
        assert!(!closed(&out, s) && sent(&out, s).is_empty(), "{out:?}");
        let out = h.handle(msg(id, answer));
        assert_eq!(sent(&out, s), vec![Packet::AskPartitionTable]);
        assert!(h
            .actor
            .nodes()
            .iter()
            .any(|n| n.node_type == NodeType::Storage && n.state == NodeState::Pending));
    }

    /// A storage identified to a fresh primary; returns the id of the AskRecovery it got.
    fn join_storage(h: &mut Harness<Master>, conn: ConnId, port: u16) -> u32 {
        let nid = s(u32::from(port - 20000));
        let out = h.incoming(conn, storage(port, Some(nid), None));
        sent_id(&out, conn, "AskRecovery").expect("recovery asks the storage")
    }

    fn answer_recovery(h: &mut Harness<Master>, conn: ConnId, id: u32) -> Vec<Effect> {
        let packet = Packet::AnswerRecovery {
            ptid: Some(crate::proto::Ptid(3)),
            backup_tid: None,
            truncate_tid: None,
        };
        h.handle(Event::Received {
            conn,
            msg: Message { id, packet },
        })
    }

    #[test]
    fn a_table_request_lost_with_its_storage_goes_to_another_holder_once() {
        let mut h = Harness::new(Master::new(config(1)));
        h.start();
        let (s1, s2) = (ConnId(100), ConnId(101));
        let id1 = join_storage(&mut h, s1, 20001);
        let id2 = join_storage(&mut h, s2, 20002);
        let out = answer_recovery(&mut h, s1, id1);
        assert_eq!(sent(&out, s1), vec![Packet::AskPartitionTable]);
        let out = answer_recovery(&mut h, s2, id2);
        assert!(sent(&out, s2).is_empty(), "one holder is asked at a time");
        let out = h.handle(Event::Closed {
            conn: s1,
            reason: CloseReason::Reset,
        });
        let asks = sent(&out, s2)
            .into_iter()
            .filter(|p| *p == Packet::AskPartitionTable)
            .count();
        assert_eq!(asks, 1, "{out:?}");
        // Reported once: nothing more on later events.
        let out = h.tick();
        assert!(!sent(&out, s2).contains(&Packet::AskPartitionTable));
    }

    #[test]
    fn a_storage_that_does_not_answer_in_time_is_dropped() {
        let mut h = Harness::new(Master::new(config(1)));
        h.start();
        let s = ConnId(100);
        join_storage(&mut h, s, 20001);
        // It answers pings (no idle close), never AskRecovery.
        for t in 1..=40 {
            h.elapsed = std::time::Duration::from_secs(t);
            h.handle(Event::Received {
                conn: s,
                msg: Message {
                    id: 0,
                    packet: Packet::Pong,
                },
            });
            let out = h.tick();
            if closed(&out, s) {
                assert!(t >= 30, "closed at {t}s, before the deadline");
                assert!(h
                    .actor
                    .nodes()
                    .iter()
                    .all(|n| n.node_type != NodeType::Storage || n.state == NodeState::Down));
                return;
            }
        }
        panic!("the storage that never answers was kept");
    }
}
