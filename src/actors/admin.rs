//! The admin role: the operators' entry point. It follows the primary master (node list,
//! cluster state, partition table), answers neoctl's `print` requests itself, and relays
//! the other requests to the primary, sending the answer back to neoctl.
//!
//! neoctl does not identify: any connection to the admin's address may send requests.

use tracing::{debug, info, warn};

use super::core::{Follower, Node};
use super::link::Links;
use super::master_link::{LinkEvent, MasterLink};
use super::requests::Failure;
use super::{CloseReason, ConnId, Ctx, Ticker};
use crate::proto::{
    Address, ClusterState, ErrorCode, IdentificationExtra, Message, Nid, NodeType, Packet,
};
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
pub enum Peer {
    Master,
    Ctl,
}

/// What the admin waits for from the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Asked {
    /// The answer to our identification.
    Identification,
    /// The answer to a neoctl request we relayed: neoctl's link and its message id.
    Relayed { ctl: ConnId, id: u32 },
}

pub struct Admin {
    cfg: AdminConfig,
    nid: Option<Nid>,
    links: Links<Peer, Asked>,
    master: MasterLink,
    pt: Option<PartitionTable>,
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

    /// A request to the primary will not be answered: if neoctl's, tell it.
    fn failed(&mut self, cx: &mut Ctx, conn: ConnId, asked: Asked, why: Failure) {
        match asked {
            Asked::Identification => {
                if why == Failure::TimedOut {
                    warn!("admin: the master did not answer our identification");
                    self.reconnect(cx, conn, CloseReason::TimedOut);
                }
            }
            Asked::Relayed { ctl, id } => {
                let why = match why {
                    Failure::Closed => "lost the connection to the primary master",
                    Failure::TimedOut => "the primary master did not answer in time",
                };
                self.links
                    .answer(cx, ctl, id, Packet::error(ErrorCode::NotReady, why));
            }
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

    fn on_master_message(&mut self, cx: &mut Ctx, conn: ConnId, msg: Message, answer: bool) {
        let Some(ev) = self
            .master
            .on_message(cx, &mut self.links, conn, self.nid, msg, answer)
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
                    self.apply_pt_changes(cx, conn, ptid, num_replicas, &changes);
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
            packet if is_relayed(&packet) => {
                // Checked above: with no primary, nothing is relayed.
                let Some(mconn) = self.master.conn() else {
                    return;
                };
                self.links
                    .ask(cx, mconn, packet, Asked::Relayed { ctl: conn, id });
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
    ) || is_relayed(p)
}

/// neoctl's requests the primary answers (the admin relays them).
fn is_relayed(p: &Packet) -> bool {
    matches!(
        p,
        Packet::SetClusterState { .. }
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

impl Node for Admin {
    type Peer = Peer;
    type Asked = Asked;

    fn core(&mut self) -> (&mut Links<Peer, Asked>, &mut Ticker) {
        (&mut self.links, &mut self.tick)
    }

    fn on_start(&mut self, cx: &mut Ctx) {
        info!("admin: listening for neoctl on {}", self.cfg.bind);
        self.tick(cx);
    }

    fn stopped(&self) -> bool {
        self.stopped
    }

    fn accepted(&self) -> Peer {
        Peer::Ctl
    }

    fn on_message(&mut self, cx: &mut Ctx, conn: ConnId, asked: Option<Asked>, msg: Message) {
        match (self.links.get(conn), asked) {
            (_, Some(Asked::Relayed { ctl, id })) => self.links.answer(cx, ctl, id, msg.packet),
            (Some(Peer::Master), asked) => {
                self.on_master_message(cx, conn, msg, asked == Some(Asked::Identification))
            }
            (Some(Peer::Ctl), _) => self.on_ctl_request(cx, conn, msg),
            (None, _) => {}
        }
    }

    fn on_failed(&mut self, cx: &mut Ctx, conn: ConnId, asked: Asked, why: Failure) {
        self.failed(cx, conn, asked, why);
    }

    fn on_closed(&mut self, cx: &mut Ctx, conn: ConnId, peer: Peer, reason: CloseReason) {
        match peer {
            Peer::Master => {
                if self.master_closed(cx, conn, &reason) {
                    self.pt = None;
                }
            }
            // What it asked and we relayed is answered to nobody (the link is gone).
            Peer::Ctl => {}
        }
    }

    fn on_tick(&mut self, cx: &mut Ctx) {
        self.follow_master(cx);
    }

    fn on_shutdown(&mut self, cx: &mut Ctx) {
        self.stop(cx, "shutdown requested");
    }
}

impl Follower for Admin {
    fn master_link(&mut self) -> (&mut MasterLink, &mut Links<Peer, Asked>) {
        (&mut self.master, &mut self.links)
    }

    fn identification(&self) -> (Peer, Asked, Option<Nid>, IdentificationExtra) {
        let extra = IdentificationExtra::default();
        (Peer::Master, Asked::Identification, self.nid, extra)
    }

    fn partition_table_mut(&mut self) -> &mut Option<PartitionTable> {
        &mut self.pt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::testing::{sent, Harness};
    use crate::actors::{Effect, Event};
    use std::time::Duration;

    fn admin() -> (Harness<Admin>, ConnId) {
        identified(Harness::new(Admin::new(config())))
    }

    fn config() -> AdminConfig {
        AdminConfig {
            cluster: "c".into(),
            bind: Address::new("10.0.2.1", 9999),
            masters: vec![Address::new("10.0.0.1", 10000)],
        }
    }

    /// Start and get identified by the primary; returns the master link.
    fn identified(mut h: Harness<Admin>) -> (Harness<Admin>, ConnId) {
        let out = h.start();
        let (conn, id) = out
            .iter()
            .find_map(|e| match e {
                Effect::Send { conn, msg } => Some((*conn, msg.id)),
                _ => None,
            })
            .expect("identifies to the master");
        h.handle(Event::Connected { conn });
        let accept = Packet::AcceptIdentification {
            node_type: NodeType::Master,
            nid: Some(Nid::new(NodeType::Master, 1)),
            your_nid: Some(Nid::new(NodeType::Admin, 1)),
        };
        h.handle(received(conn, id, accept));
        (h, conn)
    }

    fn received(conn: ConnId, id: u32, packet: Packet) -> Event {
        Event::Received {
            conn,
            msg: Message { id, packet },
        }
    }

    /// (message id, packet) of what was sent on `conn`.
    fn sent_msgs(out: &[Effect], conn: ConnId) -> Vec<(u32, Packet)> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Send { conn: c, msg } if *c == conn => Some((msg.id, msg.packet.clone())),
                _ => None,
            })
            .collect()
    }

    /// Relay `packet` from a new neoctl link `ctl` (message id 9); returns the id the
    /// request got on the master link.
    fn relay(h: &mut Harness<Admin>, master: ConnId, ctl: ConnId, packet: Packet) -> u32 {
        h.handle(Event::Accepted { conn: ctl });
        let out = h.handle(received(ctl, 9, packet.clone()));
        let to_master = sent_msgs(&out, master);
        assert_eq!(to_master.len(), 1, "{out:?}");
        assert_eq!(to_master[0].1, packet);
        to_master[0].0
    }

    #[test]
    fn relayed_answers_go_back_to_the_request_they_answer() {
        let (mut h, m) = admin();
        let (c1, c2) = (ConnId(500), ConnId(501));
        let id1 = relay(&mut h, m, c1, Packet::AddPendingNodes { nids: vec![] });
        let id2 = relay(&mut h, m, c2, Packet::SetNumReplicas { num_replicas: 1 });
        // Answered out of order; a notification carrying a pending id is not an answer.
        let out = h.handle(received(
            m,
            id1,
            Packet::NotifyClusterInformation {
                state: ClusterState::Running,
            },
        ));
        assert!(sent(&out, c1).is_empty());
        let out = h.handle(received(m, id2, Packet::ack("replicas")));
        assert_eq!(sent_msgs(&out, c2), vec![(9, Packet::ack("replicas"))]);
        assert!(sent(&out, c1).is_empty());
        let out = h.handle(received(m, id1, Packet::ack("added")));
        assert_eq!(sent_msgs(&out, c1), vec![(9, Packet::ack("added"))]);
        // Once answered, the same id answers nothing.
        let out = h.handle(received(m, id1, Packet::ack("again")));
        assert!(sent(&out, c1).is_empty());
    }

    /// Two neoctl requests whose answers have one packet type, answered in order: what
    /// each neoctl link gets back.
    fn two_acks(h: &mut Harness<Admin>, m: ConnId) -> Vec<Vec<(u32, Packet)>> {
        let (c1, c2) = (ConnId(500), ConnId(501));
        let id1 = relay(h, m, c1, Packet::AddPendingNodes { nids: vec![] });
        let id2 = relay(h, m, c2, Packet::SetNumReplicas { num_replicas: 1 });
        let mut out = h.handle(received(m, id1, Packet::ack("added")));
        out.extend(h.handle(received(m, id2, Packet::ack("replicas"))));
        vec![sent_msgs(&out, c1), sent_msgs(&out, c2)]
    }

    #[test]
    fn answers_of_one_type_are_told_apart_by_id() {
        let (mut h, m) = admin();
        let expected = vec![
            vec![(9, Packet::ack("added"))],
            vec![(9, Packet::ack("replicas"))],
        ];
        assert_eq!(two_acks(&mut h, m), expected);
        // The mutant that pairs answers by type gets this wrong: the test can fail.
        let (mut h, m) = identified(Harness::with_mutant(Admin::new(config()), "answer-by-type"));
        assert_ne!(two_acks(&mut h, m), expected);
    }

    #[test]
    fn a_relayed_request_fails_once_when_the_master_link_is_lost() {
        let (mut h, m) = admin();
        let c = ConnId(500);
        let id = relay(&mut h, m, c, Packet::AddPendingNodes { nids: vec![] });
        let out = h.handle(Event::Closed {
            conn: m,
            reason: CloseReason::Reset,
        });
        let answers = sent_msgs(&out, c);
        assert!(
            matches!(
                &answers[..],
                [(
                    9,
                    Packet::Error {
                        code: ErrorCode::NotReady,
                        ..
                    }
                )]
            ),
            "{answers:?}"
        );
        // Nothing more for it, even if a late answer came on a new link with that id.
        h.elapsed += Duration::from_secs(60);
        let out = h.handle(received(m, id, Packet::ack("late")));
        assert!(sent(&out, c).is_empty());
    }

    #[test]
    fn a_relayed_request_past_its_deadline_fails_once() {
        let (mut h, m) = admin();
        let c = ConnId(500);
        let id = relay(&mut h, m, c, Packet::AddPendingNodes { nids: vec![] });
        let mut failures = 0;
        // The master and neoctl keep their links alive (no idle close); the master never
        // answers.
        for t in 1..=40 {
            h.elapsed = Duration::from_secs(t);
            let notify = Packet::NotifyClusterInformation {
                state: ClusterState::Running,
            };
            let mut out = h.handle(received(m, 1000 + t as u32, notify));
            out.extend(h.handle(received(c, 0, Packet::Pong)));
            out.extend(h.tick());
            let answers = sent_msgs(&out, c)
                .into_iter()
                .filter(|(_, p)| *p != Packet::Ping);
            for (aid, p) in answers {
                assert_eq!(aid, 9);
                assert!(
                    matches!(&p, Packet::Error { code: ErrorCode::NotReady, message } if message.contains("in time")),
                    "{p:?}"
                );
                assert!(t >= 30, "failed early, at {t}s");
                failures += 1;
            }
        }
        assert_eq!(failures, 1);
        let out = h.handle(received(m, id, Packet::ack("late")));
        assert!(sent(&out, c).is_empty(), "a late answer is dropped");
    }
}

#[cfg(test)]
mod truth_tests {
    use super::*;
    use crate::actors::testing::{sent, Harness};
    use crate::actors::Event;
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
        let conn = crate::actors::testing::first_connect(&out).expect("connects to the master");
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
