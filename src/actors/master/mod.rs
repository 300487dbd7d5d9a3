//! The master role: identification of nodes, node ids, node and cluster notifications, and
//! (in `election`) the election of a primary and the secondary role.
//!
//! A master keeps nothing on disk. Its life is a loop: claim the primary role (RECOVERING,
//! with an election timestamp); yield to an older claimant or follow a primary that accepts
//! it; as a secondary, watch the primary and claim again when it is gone.

pub mod election;

use std::collections::BTreeSet;
use std::time::Duration;

use tracing::{debug, info, warn};

use self::election::{Claim, Role};
use super::bootstrap::PrimaryFinder;
use super::link::{Backoff, Links};
use super::nodes::{hears_about, NodeTable};
use super::{Actor, CloseReason, Command, ConnId, Ctx, Event, Observation, TimerId};
use crate::proto::{
    Address, ClusterState, ErrorCode, IdentificationExtra, Message, Nid, NodeInfo, NodeState,
    NodeType, Packet, WallTime,
};
use crate::rng;

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

/// The periodic tick: elections, reconnections and idle checks.
const TICK: Duration = Duration::from_secs(1);
const TICK_TOKEN: u64 = 1;
/// Election timestamps are forced to increase by at least this much.
const TIME_STEP: u64 = 1_000_000;

pub struct Master {
    cfg: MasterConfig,
    nid: Option<Nid>,
    /// Known masters, and the search for the primary when we are a secondary.
    finder: PrimaryFinder,
    nodes: NodeTable,
    links: Links<Peer>,
    role: Role,
    /// The last time stamp handed out (see `monotonic_time`).
    last_time: WallTime,
    /// Pacing of connection attempts to other masters.
    backoff: Backoff,
    /// As a secondary: the time stamp of the primary's last node notification.
    last_notification: Option<WallTime>,
    tick: Option<TimerId>,
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
            tick: None,
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

    pub fn known_masters(&self) -> &BTreeSet<Address> {
        self.finder.known()
    }

    /// The master we follow (or try to), when we are a secondary.
    pub fn following(&self) -> Option<(&Address, &election::Secondary)> {
        match &self.role {
            Role::Secondary(s) => self.finder.target().map(|t| (t, s)),
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
            WallTime(self.last_time.0 + TIME_STEP)
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

    fn arm_tick(&mut self, cx: &mut Ctx) {
        // A little jitter keeps masters that started together from acting in lockstep.
        let jitter = rng::duration(cx.rng(), Duration::ZERO, Duration::from_millis(100));
        self.tick = Some(cx.set_timer(TICK + jitter, TICK_TOKEN));
    }

    fn on_tick(&mut self, cx: &mut Ctx) {
        self.arm_tick(cx);
        for (conn, peer) in self.links.check_idle(cx) {
            debug!("closing silent connection {conn:?} to {peer:?}");
            self.on_lost(cx, conn, peer, CloseReason::TimedOut);
        }
        self.election_tick(cx);
    }

    fn protocol_error(&mut self, cx: &mut Ctx, conn: ConnId, id: u32, why: String) {
        warn!("{}: protocol error on {conn:?}: {why}", self.me());
        self.links
            .answer(cx, conn, id, Packet::error(ErrorCode::ProtocolError, why));
        self.links.close(cx, conn);
    }

    fn on_message(&mut self, cx: &mut Ctx, conn: ConnId, msg: Message) {
        let Some(peer) = self.links.get(conn).cloned() else {
            return;
        };
        if let Packet::Error { code, message } = &msg.packet {
            warn!("{}: {peer:?} answered {code}: {message}", self.me());
            self.links.close(cx, conn);
            self.on_lost(cx, conn, peer, CloseReason::Protocol(message.clone()));
            return;
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
                    ..
                } => {
                    if cluster_name != self.cfg.cluster {
                        let why = format!(
                            "invalid cluster name {cluster_name:?} (this is cluster {:?})",
                            self.cfg.cluster
                        );
                        self.protocol_error(cx, conn, msg.id, why);
                        return;
                    }
                    self.identify(cx, conn, msg.id, node_type, nid, address, id_timestamp);
                }
                other => {
                    let why = format!("expected RequestIdentification, got {}", other.name());
                    self.protocol_error(cx, conn, msg.id, why);
                }
            },
            Peer::Election(address) => self.on_election_answer(cx, conn, address, msg),
            Peer::ToPrimary(address) => self.on_from_primary(cx, conn, address, msg),
            Peer::Node(nid) => {
                debug!("{}: ignoring {} from {nid}", self.me(), msg.packet.name());
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn identify(
        &mut self,
        cx: &mut Ctx,
        conn: ConnId,
        id: u32,
        node_type: NodeType,
        nid: Option<Nid>,
        address: Option<Address>,
        id_timestamp: Option<WallTime>,
    ) {
        let primary = match &self.role {
            Role::Primary(p) => p,
            Role::Secondary(s) => {
                let primary = if s.identified {
                    self.finder.target().cloned()
                } else {
                    None
                };
                let known_masters = self.finder.known().iter().cloned().collect();
                self.links.answer(
                    cx,
                    conn,
                    id,
                    Packet::NotPrimaryMaster {
                        primary,
                        known_masters,
                    },
                );
                self.links.close(cx, conn);
                return;
            }
            Role::Starting => unreachable!("a master plays a role once started"),
        };
        if node_type != NodeType::Master {
            let why = format!("the cluster is not ready for {node_type} nodes");
            self.links
                .answer(cx, conn, id, Packet::error(ErrorCode::NotReady, why));
            self.links.close(cx, conn);
            return;
        }
        let Some(address) = address else {
            self.protocol_error(
                cx,
                conn,
                id,
                "a master must give its listening address".into(),
            );
            return;
        };
        let own = primary.electing().cloned();
        let peer = id_timestamp.map(|ts| Claim {
            ts,
            address: address.clone(),
        });
        if let (Some(own), Some(peer)) = (&own, &peer) {
            if peer < own && !cx.mutant("election-no-yield") {
                self.yield_to(cx, conn, own.clone(), peer.clone());
                return;
            }
        }
        cx.observe(Observation::AcceptedMaster { own, peer });
        self.accept_master(cx, conn, id, nid, address);
    }

    fn accept_master(
        &mut self,
        cx: &mut Ctx,
        conn: ConnId,
        id: u32,
        proposed: Option<Nid>,
        address: Address,
    ) {
        self.learn_master(&address);
        let nid = self
            .nodes
            .allocate_nid(NodeType::Master, proposed, Some(&address), self.nid);
        // A connection left from the same node's previous life (same id or same address)
        // is stale: the new identification wins, as a restarted process must.
        let stale: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(c, p)| match p {
                Peer::Node(n) => {
                    *c != conn
                        && (*n == nid
                            || self.nodes.get(*n).and_then(|i| i.address.as_ref())
                                == Some(&address))
                }
                _ => false,
            })
            .map(|(c, _)| c)
            .collect();
        for c in stale {
            debug!(
                "{}: closing the previous connection {c:?} of {address}",
                self.me()
            );
            self.links.close(cx, c);
        }
        let ts = self.monotonic_time(cx);
        let info = NodeInfo {
            node_type: NodeType::Master,
            address: Some(address),
            nid: Some(nid),
            state: NodeState::Running,
            id_timestamp: Some(ts),
        };
        self.nodes.upsert(info.clone());
        *self.links.get_mut(conn).expect("identifying link") = Peer::Node(nid);
        info!(
            "{}: accepted master {nid} at {}",
            self.me(),
            info.address.as_ref().unwrap()
        );
        self.links.answer(
            cx,
            conn,
            id,
            Packet::AcceptIdentification {
                node_type: NodeType::Master,
                nid: self.nid,
                your_nid: Some(nid),
            },
        );
        // The full list, the node's own entry first, then the cluster state.
        let mut nodes = vec![info.clone()];
        nodes.extend(
            self.nodes
                .iter()
                .filter(|n| n.nid != Some(nid) && hears_about(NodeType::Master, n.node_type))
                .cloned(),
        );
        let timestamp = self.monotonic_time(cx);
        self.links
            .notify(cx, conn, Packet::NotifyNodeInformation { timestamp, nodes });
        let state = self.cluster_state().expect("primary");
        self.links
            .notify(cx, conn, Packet::NotifyClusterInformation { state });
        self.broadcast_nodes(cx, &[info], Some(conn));
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
    /// link has a running entry in the node table, and a primary lists itself.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (conn, peer) in self.links.iter() {
            if let Peer::Node(nid) = peer {
                match self.nodes.get(*nid) {
                    Some(n) if n.state == NodeState::Running => {}
                    other => {
                        return Err(format!(
                            "{}: {conn:?} links {nid}, listed as {other:?}",
                            self.me()
                        ))
                    }
                }
            }
        }
        if let Role::Primary(_) = &self.role {
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

    /// The cluster state, if we are primary.
    pub fn cluster_state(&self) -> Option<ClusterState> {
        match &self.role {
            Role::Primary(p) => Some(p.cluster_state),
            _ => None,
        }
    }

    fn on_lost(&mut self, cx: &mut Ctx, conn: ConnId, peer: Peer, reason: CloseReason) {
        if let Peer::Election(a) | Peer::ToPrimary(a) = &peer {
            if matches!(reason, CloseReason::Refused | CloseReason::TimedOut) {
                self.backoff.failed(a);
            }
        }
        match peer {
            Peer::Incoming | Peer::Election(_) => {}
            Peer::ToPrimary(_) => self.primary_lost(cx, conn, reason),
            Peer::Node(nid) => {
                if let Some(info) = self.nodes.set_state(nid, NodeState::Down).cloned() {
                    info!("{}: {nid} is down ({reason:?})", self.me());
                    self.broadcast_nodes(cx, &[info], None);
                }
            }
        }
    }

    fn on_from_primary(&mut self, cx: &mut Ctx, conn: ConnId, address: Address, msg: Message) {
        match msg.packet {
            Packet::AcceptIdentification {
                node_type: NodeType::Master,
                nid,
                your_nid,
            } => self.identified_by_primary(cx, nid, your_nid),
            Packet::NotPrimaryMaster {
                primary,
                known_masters,
            } => {
                for m in &known_masters {
                    self.learn_master(m);
                }
                self.links.close(cx, conn);
                let _ = address;
                self.redirected(cx, primary);
            }
            Packet::NotifyNodeInformation { timestamp, nodes } => {
                if let Some(last) = self.last_notification {
                    if timestamp <= last {
                        debug!("{}: ignoring an old node notification", self.me());
                        return;
                    }
                    self.nodes.apply(&nodes);
                } else {
                    self.nodes.replace_all(&nodes);
                }
                self.last_notification = Some(timestamp);
                for n in nodes.iter().filter(|n| n.node_type == NodeType::Master) {
                    if let Some(a) = &n.address {
                        self.learn_master(a);
                    }
                }
                let me = nodes.iter().find(|n| n.nid.is_some() && n.nid == self.nid);
                if let Some(me) = me {
                    if matches!(me.state, NodeState::Down | NodeState::Unknown) {
                        info!(
                            "{}: the primary says this node is {}: exiting",
                            self.me(),
                            me.state
                        );
                        self.links.close_all(cx);
                        cx.exit(format!("told {} by the primary", me.state), true);
                    }
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

impl Actor for Master {
    fn start(&mut self, cx: &mut Ctx) {
        self.arm_tick(cx);
        self.play_primary(cx);
    }

    fn handle(&mut self, cx: &mut Ctx, ev: Event) {
        match ev {
            Event::Accepted { conn } => self.links.insert(cx, conn, Peer::Incoming),
            Event::Connected { .. } => {}
            Event::Closed { conn, reason } => {
                if let Some(peer) = self.links.remove(conn) {
                    self.on_lost(cx, conn, peer, reason);
                }
            }
            Event::Received { conn, msg } => {
                if let Some(msg) = self.links.receive(cx, conn, msg) {
                    self.on_message(cx, conn, msg);
                }
            }
            Event::Timer { id, token } => {
                if token == TICK_TOKEN && Some(id) == self.tick {
                    self.on_tick(cx);
                }
            }
            Event::Local(Command::Shutdown) => {
                info!("{}: shutting down", self.me());
                self.links.close_all(cx);
                cx.exit("shutdown requested", true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::testing::{closed, sent, Harness};
    use crate::actors::Effect;

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
        let mut h = Harness::new(Master::new(config(1)));
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
        // Older: we yield and go follow it.
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
}
