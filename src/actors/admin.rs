//! The admin role: the operators' entry point. It follows the primary master (node list,
//! cluster state, partition table), answers neoctl's `print` requests itself, and relays
//! the other requests to the primary, sending the answer back to neoctl.
//!
//! neoctl does not identify: any connection to the admin's address may send requests.

use std::collections::BTreeMap;

use tracing::{debug, info, warn};

use super::link::Links;
use super::master_link::{LinkEvent, MasterLink};
use super::{Actor, CloseReason, Command, ConnId, Ctx, Event, Ticker};
use crate::proto::{Address, ClusterState, ErrorCode, Message, Nid, NodeType, Packet};
use crate::pt::PartitionTable;

/// The one answer (NOT_READY) to every neoctl request while no primary master accepted us:
/// what the last one told us (nodes, states, table) may be stale, so none of it is shown.
pub const NO_PRIMARY: &str = "no primary master";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    pub cluster: String,
    pub bind: Address,
    pub masters: Vec<Address>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Peer {
    Master,
    Ctl,
}

pub struct Admin {
    cfg: AdminConfig,
    nid: Option<Nid>,
    links: Links<Peer>,
    master: MasterLink,
    pt: Option<PartitionTable>,
    /// Requests relayed to the primary: our message id there -> (neoctl's link, its id).
    relayed: BTreeMap<u32, (ConnId, u32)>,
    tick: Ticker,
    stopped: bool,
}

impl Admin {
    pub fn new(cfg: AdminConfig) -> Admin {
        let master = MasterLink::new(
            NodeType::Admin,
            cfg.cluster.clone(),
            Some(cfg.bind.clone()),
            &cfg.masters,
        );
        Admin {
            cfg,
            nid: None,
            links: Links::default(),
            master,
            pt: None,
            relayed: BTreeMap::new(),
            tick: Ticker::default(),
            stopped: false,
        }
    }

    pub fn cluster_state(&self) -> Option<ClusterState> {
        self.master.cluster_state()
    }

    pub fn partition_table(&self) -> Option<&PartitionTable> {
        self.pt.as_ref()
    }

    fn on_tick(&mut self, cx: &mut Ctx) {
        self.tick.arm(cx);
        for conn in self.links.check_idle(cx) {
            if let Some(peer) = self.links.close(cx, conn) {
                self.on_closed(cx, conn, peer, CloseReason::TimedOut);
            }
        }
        self.follow_master(cx);
    }

    /// Find the primary master and stay identified to it.
    fn follow_master(&mut self, cx: &mut Ctx) {
        self.master.tick(
            cx,
            &mut self.links,
            Peer::Master,
            self.nid,
            Default::default(),
        );
    }

    fn on_closed(&mut self, cx: &mut Ctx, conn: ConnId, peer: Peer, reason: CloseReason) {
        match peer {
            Peer::Master => {
                if self.master.closed(conn, &reason) == Some(LinkEvent::Lost) {
                    // What was relayed will never be answered.
                    for (_, (ctl, id)) in std::mem::take(&mut self.relayed) {
                        let e = Packet::error(
                            ErrorCode::NotReady,
                            "lost the connection to the primary master",
                        );
                        self.links.answer(cx, ctl, id, e);
                    }
                    self.pt = None;
                }
                if !self.stopped {
                    self.follow_master(cx);
                }
            }
            Peer::Ctl => self.relayed.retain(|_, (c, _)| *c != conn),
        }
    }

    fn stop(&mut self, cx: &mut Ctx, reason: &str) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        info!("admin: {reason}");
        self.links.close_all(cx);
        cx.exit(reason, true);
    }

    fn on_master_message(&mut self, cx: &mut Ctx, conn: ConnId, msg: Message) {
        let Some(ev) = self
            .master
            .on_message(cx, &mut self.links, conn, self.nid, msg)
        else {
            return;
        };
        match ev {
            LinkEvent::Identified { your_nid } => self.nid = your_nid,
            LinkEvent::Told(state) => self.stop(cx, &format!("told {state} by the primary master")),
            LinkEvent::ClusterState(ClusterState::Stopping) => {
                self.stop(cx, "the cluster is stopping")
            }
            LinkEvent::ClusterState(_) | LinkEvent::Lost => {}
            LinkEvent::Message(msg) => match msg.packet {
                Packet::SendPartitionTable {
                    ptid,
                    num_replicas,
                    rows,
                } => {
                    if let Err(why) = crate::pt::check_table(ptid, &rows) {
                        warn!("admin: protocol error from the primary: {why}: reconnecting");
                        self.links.close(cx, conn);
                        self.on_closed(cx, conn, Peer::Master, CloseReason::Protocol(why));
                        return;
                    }
                    self.pt = Some(PartitionTable::from_rows(ptid, num_replicas, &rows));
                }
                Packet::NotifyPartitionChanges {
                    ptid,
                    num_replicas,
                    changes,
                } => {
                    let applied = match &mut self.pt {
                        Some(pt) => pt.apply(ptid, num_replicas, &changes),
                        None => Err("no table".into()),
                    };
                    if let Err(why) = applied {
                        // Reconnect: the primary sends the whole table again.
                        warn!("admin: {why}: reconnecting to the primary");
                        self.links.close(cx, conn);
                        self.on_closed(cx, conn, Peer::Master, CloseReason::Protocol(why));
                    }
                }
                packet if packet.kind() == crate::proto::Kind::Answer => {
                    match self.relayed.remove(&msg.id) {
                        Some((ctl, id)) => self.links.answer(cx, ctl, id, packet),
                        None => debug!("admin: an answer nobody waits for: {}", packet.name()),
                    }
                }
                other => debug!("admin: ignoring {} from the primary", other.name()),
            },
        }
    }

    fn on_ctl_request(&mut self, cx: &mut Ctx, conn: ConnId, msg: Message) {
        let id = msg.id;
        if is_ctl_request(&msg.packet) && self.master.conn().is_none() {
            let e = Packet::error(ErrorCode::NotReady, NO_PRIMARY);
            return self.links.answer(cx, conn, id, e);
        }
        let answer = match msg.packet {
            Packet::AskClusterState => match self.master.cluster_state() {
                Some(state) => Packet::AnswerClusterState { state: Some(state) },
                None => Packet::error(ErrorCode::NotReady, NO_PRIMARY),
            },
            Packet::AskPrimary => Packet::AnswerPrimary {
                primary_nid: self.master.primary_nid(),
            },
            Packet::AskNodeList { node_type } => Packet::AnswerNodeList {
                nodes: self
                    .master
                    .nodes()
                    .iter()
                    .filter(|n| node_type.is_none_or(|t| t == n.node_type))
                    .cloned()
                    .collect(),
            },
            Packet::AskPartitionList {
                min_offset,
                max_offset,
                ..
            } => match &self.pt {
                Some(pt) => {
                    let end = if max_offset == 0 {
                        pt.partitions()
                    } else {
                        max_offset.min(pt.partitions())
                    };
                    Packet::AnswerPartitionList {
                        ptid: pt.ptid(),
                        num_replicas: pt.replicas(),
                        rows: (min_offset..end)
                            .map(|o| (o, pt.row(o).collect()))
                            .collect(),
                    }
                }
                None => Packet::error(ErrorCode::NotReady, "no partition table yet"),
            },
            packet @ (Packet::SetClusterState { .. }
            | Packet::SetNodeState { .. }
            | Packet::AddPendingNodes { .. }
            | Packet::TweakPartitionTable { .. }
            | Packet::SetNumReplicas { .. }
            | Packet::AskRecovery
            | Packet::AskLastIDs
            | Packet::AskLastTransaction
            | Packet::Truncate { .. }) => {
                let Some(mconn) = self.master.conn() else {
                    let e = Packet::error(ErrorCode::NotReady, NO_PRIMARY);
                    return self.links.answer(cx, conn, id, e);
                };
                if let Some(mid) = self.links.ask(cx, mconn, packet) {
                    self.relayed.insert(mid, (conn, id));
                }
                return;
            }
            Packet::RequestIdentification { .. } => {
                let e = Packet::error(
                    ErrorCode::ProtocolError,
                    "an admin node accepts neoctl requests only",
                );
                self.links.answer(cx, conn, id, e);
                self.links.close(cx, conn);
                return;
            }
            other => Packet::error(
                ErrorCode::ProtocolError,
                format!("{} is not a neoctl request", other.name()),
            ),
        };
        self.links.answer(cx, conn, id, answer);
    }
}

/// neoctl's requests: those answered here (`print`) and those relayed to the primary.
fn is_ctl_request(p: &Packet) -> bool {
    matches!(
        p,
        Packet::AskClusterState
            | Packet::AskPrimary
            | Packet::AskNodeList { .. }
            | Packet::AskPartitionList { .. }
            | Packet::SetClusterState { .. }
            | Packet::SetNodeState { .. }
            | Packet::AddPendingNodes { .. }
            | Packet::TweakPartitionTable { .. }
            | Packet::SetNumReplicas { .. }
            | Packet::AskRecovery
            | Packet::AskLastIDs
            | Packet::AskLastTransaction
            | Packet::Truncate { .. }
    )
}

impl Actor for Admin {
    fn start(&mut self, cx: &mut Ctx) {
        info!("admin: listening for neoctl on {}", self.cfg.bind);
        self.on_tick(cx);
    }

    fn handle(&mut self, cx: &mut Ctx, ev: Event) {
        if self.stopped {
            return;
        }
        match ev {
            Event::Accepted { conn } => self.links.insert(cx, conn, Peer::Ctl),
            Event::Connected { .. } => {}
            Event::Closed { conn, reason } => {
                if let Some(peer) = self.links.remove(conn) {
                    self.on_closed(cx, conn, peer, reason);
                }
            }
            Event::Received { conn, msg } => {
                let Some(msg) = self.links.receive(cx, conn, msg) else {
                    return;
                };
                match self.links.get(conn) {
                    Some(Peer::Master) => self.on_master_message(cx, conn, msg),
                    Some(Peer::Ctl) => self.on_ctl_request(cx, conn, msg),
                    None => {}
                }
            }
            Event::Timer { id, token } => {
                if self.tick.fired(id, token) {
                    self.on_tick(cx);
                }
            }
            Event::Local(Command::Shutdown) => self.stop(cx, "shutdown requested"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::testing::{sent, Harness};
    use crate::actors::Effect;
    use crate::proto::{CellState, NodeInfo, NodeState, Ptid, WallTime};

    fn admin() -> Harness<Admin> {
        Harness::new(Admin::new(AdminConfig {
            cluster: "c".into(),
            bind: Address::new("10.0.2.1", 9999),
            masters: vec![Address::new("10.0.0.1", 1)],
        }))
    }

    /// Start and get identified by a primary that says the cluster runs with S1; returns
    /// the master link.
    fn following(h: &mut Harness<Admin>) -> ConnId {
        let out = h.start();
        let conn = out
            .iter()
            .find_map(|e| match e {
                Effect::Connect { conn, .. } => Some(*conn),
                _ => None,
            })
            .expect("connects to the master");
        let s1 = Nid::new(NodeType::Storage, 1);
        let m1 = Nid::new(NodeType::Master, 1);
        let node = |nid, node_type, port| NodeInfo {
            node_type,
            address: Some(Address::new("10.0.0.1", port)),
            nid: Some(nid),
            state: NodeState::Running,
            id_timestamp: None,
        };
        let packets = [
            Packet::AcceptIdentification {
                node_type: NodeType::Master,
                nid: Some(m1),
                your_nid: Some(Nid::new(NodeType::Admin, 1)),
            },
            Packet::NotifyNodeInformation {
                timestamp: WallTime(1),
                nodes: vec![
                    node(m1, NodeType::Master, 1),
                    node(s1, NodeType::Storage, 2),
                ],
            },
            Packet::NotifyClusterInformation {
                state: ClusterState::Running,
            },
            Packet::SendPartitionTable {
                ptid: Some(Ptid(3)),
                num_replicas: 0,
                rows: vec![vec![(s1, CellState::UpToDate)]],
            },
        ];
        h.handle(Event::Connected { conn });
        for (id, packet) in packets.into_iter().enumerate() {
            h.handle(Event::Received {
                conn,
                msg: Message {
                    id: id as u32,
                    packet,
                },
            });
        }
        conn
    }

    /// neoctl's requests for every `print`, and `print ids`' relayed ones.
    fn prints() -> Vec<Packet> {
        vec![
            Packet::AskClusterState,
            Packet::AskPrimary,
            Packet::AskNodeList { node_type: None },
            Packet::AskPartitionList {
                min_offset: 0,
                max_offset: 0,
                nid: None,
            },
            Packet::AskRecovery,
            Packet::AskLastIDs,
        ]
    }

    fn ask(h: &mut Harness<Admin>, conn: ConnId, packet: Packet) -> Vec<Packet> {
        let out = h.handle(Event::Received {
            conn,
            msg: Message { id: 9, packet },
        });
        sent(&out, conn)
    }

    /// Finding 12: without a primary, every `print` gets the same NOT_READY answer; with
    /// one, the admin answers from what it learnt.
    #[test]
    fn without_a_primary_every_print_says_so() {
        let mut h = admin();
        let mconn = following(&mut h);
        let ctl = ConnId(500);
        h.handle(Event::Accepted { conn: ctl });
        let answers = ask(&mut h, ctl, Packet::AskNodeList { node_type: None });
        assert!(
            matches!(&answers[..], [Packet::AnswerNodeList { nodes }] if nodes.len() == 2),
            "{answers:?}"
        );
        let answers = ask(&mut h, ctl, Packet::AskClusterState);
        assert_eq!(
            answers,
            vec![Packet::AnswerClusterState {
                state: Some(ClusterState::Running)
            }]
        );
        // The primary is lost: nothing it said is shown any more.
        h.handle(Event::Closed {
            conn: mconn,
            reason: CloseReason::Reset,
        });
        for p in prints() {
            let answers = ask(&mut h, ctl, p.clone());
            assert_eq!(
                answers,
                vec![Packet::error(ErrorCode::NotReady, NO_PRIMARY)],
                "{p:?}"
            );
        }
        // Nor before any primary accepted us.
        let mut h = admin();
        h.start();
        h.handle(Event::Accepted { conn: ctl });
        for p in prints() {
            let answers = ask(&mut h, ctl, p.clone());
            assert_eq!(
                answers,
                vec![Packet::error(ErrorCode::NotReady, NO_PRIMARY)],
                "{p:?}"
            );
        }
    }

    /// neoctl turns that answer into an error (a non-zero exit status), for every print.
    #[test]
    fn neoctl_fails_on_the_no_primary_answer() {
        use crate::ctl::{render, requests, CtlCommand, CtlError};
        let commands = [
            CtlCommand::PrintCluster,
            CtlCommand::PrintIds,
            CtlCommand::PrintPt {
                min: None,
                max: None,
            },
            CtlCommand::PrintNode { node_type: None },
            CtlCommand::PrintPrimary,
        ];
        for cmd in commands {
            let answers: Vec<Packet> = requests(&cmd)
                .iter()
                .map(|_| Packet::error(ErrorCode::NotReady, NO_PRIMARY))
                .collect();
            assert_eq!(
                render(&cmd, &answers),
                Err(CtlError::Error(NO_PRIMARY.into())),
                "{cmd:?}"
            );
        }
        // An answer without a state or a primary is an error too, not "None".
        let none = [
            (
                CtlCommand::PrintCluster,
                Packet::AnswerClusterState { state: None },
            ),
            (
                CtlCommand::PrintPrimary,
                Packet::AnswerPrimary { primary_nid: None },
            ),
        ];
        for (cmd, answer) in none {
            assert!(render(&cmd, &[answer]).is_err(), "{cmd:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            failure_persistence: None,
            ..Default::default()
        })]

        /// Any sequence of events a host can deliver, hostile packets from the master
        /// link and from neoctl connections included: the admin never panics, and it never
        /// shows what it learnt from a primary it is not connected to.
        #[test]
        fn the_admin_survives_hostile_input(
            steps in proptest::collection::vec(crate::actors::fuzz::step("c"), 1..80),
        ) {
            let mut h = admin();
            crate::actors::fuzz::run(&mut h, steps, |a: &Admin| {
                if a.master.conn().is_none() && a.pt.is_some() {
                    return Err("a table kept without a primary".into());
                }
                Ok(())
            })?;
        }
    }
}
