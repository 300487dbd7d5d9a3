//! The connection every non-master node keeps with the primary master: find it (following
//! `NotPrimaryMaster`), identify, keep the node list and cluster state it sends, and
//! reconnect when it is lost. Storages and admins (and clients) embed one.
//!
//! Its identification request goes through the node's request table: the role hands the
//! answer back (`on_message` with `answer` set) only when it matched that request by
//! (connection, id), so an `AcceptIdentification`, `NotPrimaryMaster` or `Error` is never
//! taken for one by its type alone.

use tracing::{debug, info, warn};

use super::bootstrap::PrimaryFinder;
use super::link::{Backoff, Links};
use super::nodes::NodeTable;
use super::{CloseReason, ConnId, Ctx};
use crate::proto::{
    Address, ClusterState, IdentificationExtra, Message, Nid, NodeState, NodeType, Packet, WallTime,
};

/// What the role has to act on after the link handled a message.
#[derive(Debug, PartialEq)]
pub enum LinkEvent {
    /// The primary accepted us, giving us this node id.
    Identified {
        your_nid: Option<Nid>,
    },
    /// The primary says this node is DOWN (stop) or UNKNOWN (dropped: erase and stop).
    Told(NodeState),
    ClusterState(ClusterState),
    /// Any other message from the primary, for the role.
    Message(Message),
    /// The link is gone (the role's state that depended on it must be reset).
    Lost,
}

pub struct MasterLink {
    node_type: NodeType,
    cluster: String,
    /// Our listening address, told to the primary.
    address: Option<Address>,
    finder: PrimaryFinder,
    backoff: Backoff,
    conn: Option<ConnId>,
    identified: bool,
    primary_nid: Option<Nid>,
    nodes: NodeTable,
    last_notification: Option<WallTime>,
    cluster_state: Option<ClusterState>,
}

impl MasterLink {
    pub fn new(
        node_type: NodeType,
        cluster: String,
        address: Option<Address>,
        masters: &[Address],
    ) -> MasterLink {
        MasterLink {
            node_type,
            cluster,
            address,
            finder: PrimaryFinder::new(masters.iter().cloned(), None),
            backoff: Backoff::default(),
            conn: None,
            identified: false,
            primary_nid: None,
            nodes: NodeTable::default(),
            last_notification: None,
            cluster_state: None,
        }
    }

    pub fn conn(&self) -> Option<ConnId> {
        self.conn.filter(|_| self.identified)
    }

    pub fn is_identified(&self) -> bool {
        self.identified
    }

    pub fn primary_nid(&self) -> Option<Nid> {
        self.primary_nid
    }

    pub fn nodes(&self) -> &NodeTable {
        &self.nodes
    }

    pub fn cluster_state(&self) -> Option<ClusterState> {
        self.cluster_state
    }

    /// Connect to the next candidate if we have no link; call on every tick.
    /// `asked` is what the role's request table keeps for our identification request: the
    /// role gives its answer back to `on_message` as such.
    pub fn tick<P, A>(
        &mut self,
        cx: &mut Ctx,
        links: &mut Links<P, A>,
        peer: P,
        asked: A,
        nid: Option<Nid>,
        extra: IdentificationExtra,
    ) {
        if self.conn.is_some() {
            return;
        }
        let target = match self.finder.target().cloned() {
            Some(t) => t,
            None => match self.finder.restart() {
                Some(t) => t,
                None => return,
            },
        };
        if !self.backoff.try_attempt(cx.elapsed(), &target) {
            return;
        }
        let conn = cx.connect(&target);
        links.insert(cx, conn, peer);
        self.conn = Some(conn);
        let req = Packet::RequestIdentification {
            node_type: self.node_type,
            nid,
            address: self.address.clone(),
            cluster_name: self.cluster.clone(),
            id_timestamp: None,
            extra,
        };
        links.ask(cx, conn, req, asked);
    }

    /// The master we follow or try, and whether it accepted us.
    pub fn target(&self) -> Option<(&Address, bool)> {
        self.finder.target().map(|t| (t, self.identified))
    }

    /// The link was closed (by us or by the host).
    pub fn closed(&mut self, conn: ConnId, reason: &CloseReason) -> Option<LinkEvent> {
        if self.conn != Some(conn) {
            return None;
        }
        self.conn = None;
        let target = self.finder.target().cloned();
        if self.identified {
            info!("lost the primary master ({reason:?})");
            self.identified = false;
            self.primary_nid = None;
            self.cluster_state = None;
            self.finder.lost();
            Some(LinkEvent::Lost)
        } else {
            if let Some(t) = &target {
                if matches!(reason, CloseReason::Refused | CloseReason::TimedOut) {
                    self.backoff.failed(t);
                }
            }
            if self.finder.next(None).is_none() {
                self.finder.restart();
            }
            None
        }
    }

    /// Handle a message from the link: `answer` if it is the answer to our identification
    /// (paired by the request table), else a notification or a request from the primary.
    /// What is not the link's business comes back.
    pub fn on_message<P, A>(
        &mut self,
        cx: &mut Ctx,
        links: &mut Links<P, A>,
        conn: ConnId,
        own: Option<Nid>,
        msg: Message,
        answer: bool,
    ) -> Option<LinkEvent> {
        if let Some(t) = self.finder.target().cloned() {
            self.backoff.succeeded(&t);
        }
        match msg.packet {
            Packet::AcceptIdentification {
                node_type: NodeType::Master,
                nid,
                your_nid,
            } if answer && !self.identified => {
                self.identified = true;
                self.primary_nid = nid;
                self.last_notification = None;
                self.finder.found();
                let primary = nid.map_or_else(|| "?".into(), |n| n.to_string());
                info!(
                    "identified by the primary master {primary} as {}",
                    your_nid.map_or_else(|| "?".into(), |n| n.to_string())
                );
                Some(LinkEvent::Identified { your_nid })
            }
            Packet::NotPrimaryMaster {
                primary,
                known_masters,
            } if answer && !self.identified => {
                for m in &known_masters {
                    self.finder.learn(m);
                }
                links.close(cx, conn);
                self.conn = None;
                if self.finder.next(primary).is_none() {
                    self.finder.restart();
                }
                // Try the next one at once (the back-off still paces each address).
                None
            }
            Packet::Error { code, message } if answer && !self.identified => {
                warn!("the master refused us: {code}: {message}");
                links.close(cx, conn);
                self.closed(conn, &CloseReason::Protocol(message))
            }
            Packet::NotifyNodeInformation { timestamp, nodes } if self.identified => {
                let Some(n) =
                    self.nodes
                        .notified(&mut self.last_notification, timestamp, &nodes, own)
                else {
                    debug!("ignoring an old node notification");
                    return None;
                };
                for m in &n.masters {
                    self.finder.learn(m);
                }
                n.told.map(LinkEvent::Told)
            }
            Packet::NotifyClusterInformation { state } if self.identified => {
                self.cluster_state = Some(state);
                Some(LinkEvent::ClusterState(state))
            }
            _ if !self.identified => {
                let why = format!("unexpected {} before identification", msg.packet.name());
                warn!("{why}");
                links.close(cx, conn);
                self.closed(conn, &CloseReason::Protocol(why))
            }
            _ => Some(LinkEvent::Message(msg)),
        }
    }
}
