//! Hostile input for the roles' property tests: arbitrary sequences of what a host can
//! deliver (connections accepted, connected and closed, packets of every kind with arbitrary
//! and edge-case fields and message ids, timers firing, time passing) fed straight to an
//! actor, which must never panic and whose own consistency checks must hold.
//!
//! The sequences keep the host's side of the contract (events name only open connections,
//! timers fire only when set) so that a failure is the actor's, not the driver's. Field
//! values lean on the edges (`u64::MAX`, `Ptid::LIMIT`, node ids of the wrong type, message
//! ids that match pending requests) where plain uniform values would almost never go.

use std::time::Duration;

use proptest::prelude::*;

use super::testing::Harness;
use super::{Actor, CloseReason, Command, ConnId, Effect, Event, TimerId};
use crate::proto::{
    Address, CellState, ClusterState, IdentificationExtra, Kind, Message, Nid, NodeInfo, NodeState,
    NodeType, Oid, Packet, Ptid, Tid, WallTime,
};

/// One thing the host does to the actor.
#[derive(Clone, Debug)]
pub enum Step {
    /// A peer connects.
    Accept,
    /// A peer connects and sends this (an identification, mostly).
    Join(Packet),
    /// An open connection (by index among those open) comes up, if the actor made it.
    Connected(usize),
    /// An open connection ends.
    Close(usize, CloseReason),
    /// A packet arrives on an open connection.
    Receive(usize, Message),
    /// A request the actor sent (by index among those unanswered) gets the answer of its
    /// kind from these.
    Reply(usize, Box<Answers>),
    /// One of the timers the actor set fires (by index among those pending).
    Fire(usize),
    /// Time passes.
    Advance(Duration),
    /// The process is told to stop.
    Shutdown,
}

fn edge_u64() -> BoxedStrategy<u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(5),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(i64::MAX as u64),
        Just(Ptid::LIMIT.0 - 1),
        Just(Ptid::LIMIT.0),
        any::<u64>(),
    ]
    .boxed()
}

fn edge_u32() -> BoxedStrategy<u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(2),
        Just(11),
        Just(65_535),
        Just(u32::MAX),
        any::<u32>()
    ]
    .boxed()
}

pub fn ptid() -> BoxedStrategy<Ptid> {
    edge_u64().prop_map(Ptid).boxed()
}

fn tid() -> BoxedStrategy<Tid> {
    edge_u64().prop_map(Tid).boxed()
}

fn time() -> BoxedStrategy<WallTime> {
    prop_oneof![
        edge_u64().prop_map(WallTime),
        (0u64..10_000).prop_map(|s| WallTime::from_secs(1_767_225_600 + s)),
    ]
    .boxed()
}

/// Node ids: mostly the few a small cluster has, some of the wrong type or no type.
pub fn nid() -> BoxedStrategy<Nid> {
    prop_oneof![
        4 => (1u32..5).prop_map(|n| Nid::new(NodeType::Storage, n)),
        2 => (1u32..3).prop_map(|n| Nid::new(NodeType::Master, n)),
        1 => Just(Nid::new(NodeType::Admin, 1)),
        1 => Just(Nid::new(NodeType::Storage, Nid::MAX_NUMBER)),
        1 => any::<i32>().prop_map(Nid),
    ]
    .boxed()
}

/// Addresses: the few of the test clusters (see each role's tests), or any.
fn address() -> BoxedStrategy<Address> {
    prop_oneof![
        3 => (1u16..4).prop_map(|p| Address::new("10.0.0.1", p)),
        2 => (20000u16..20004).prop_map(|p| Address::new("10.0.1.1", p)),
        1 => any::<Address>(),
    ]
    .boxed()
}

fn rows() -> BoxedStrategy<Vec<Vec<(Nid, CellState)>>> {
    prop::collection::vec(
        prop::collection::vec((nid(), any::<CellState>()), 0..4),
        0..5,
    )
    .boxed()
}

fn node_info() -> BoxedStrategy<NodeInfo> {
    (
        any::<NodeType>(),
        prop::option::of(address()),
        prop::option::of(nid()),
        any::<NodeState>(),
        prop::option::of(time()),
    )
        .prop_map(|(node_type, address, nid, state, id_timestamp)| NodeInfo {
            node_type,
            address,
            nid,
            state,
            id_timestamp,
        })
        .boxed()
}

fn node_type() -> BoxedStrategy<NodeType> {
    prop_oneof![
        3 => Just(NodeType::Storage),
        1 => Just(NodeType::Admin),
        1 => Just(NodeType::Master),
        1 => Just(NodeType::Client),
    ]
    .boxed()
}

/// `RequestIdentification`, mostly well-formed enough to get past the first checks.
fn identification(cluster: &'static str) -> BoxedStrategy<Packet> {
    (
        node_type(),
        prop_oneof![1 => Just(None), 2 => nid().prop_map(Some)],
        prop_oneof![5 => address().prop_map(Some), 1 => Just(None)],
        prop_oneof![6 => Just(cluster.to_string()), 1 => any::<String>()],
        prop::option::of(time()),
        any::<bool>(),
        prop::option::of(ptid()),
    )
        .prop_map(
            |(node_type, nid, address, cluster_name, id_timestamp, established, ptid)| {
                Packet::RequestIdentification {
                    node_type,
                    nid,
                    address,
                    cluster_name,
                    id_timestamp,
                    extra: IdentificationExtra {
                        established,
                        ptid,
                        ..Default::default()
                    },
                }
            },
        )
        .boxed()
}

fn simple() -> BoxedStrategy<Packet> {
    prop_oneof![
        Just(Packet::AskRecovery),
        Just(Packet::AskLastIDs),
        Just(Packet::AskPartitionTable),
        Just(Packet::AskLockedTransactions),
        Just(Packet::AskClusterState),
        Just(Packet::AskPrimary),
        Just(Packet::AskLastTransaction),
        Just(Packet::StopOperation),
        Just(Packet::NotifyReady),
        Just(Packet::Ping),
        Just(Packet::Pong),
        Just(Packet::CloseClient),
        any::<bool>().prop_map(|backup| Packet::StartOperation { backup }),
        any::<ClusterState>().prop_map(|state| Packet::NotifyClusterInformation { state }),
        any::<ClusterState>().prop_map(|state| Packet::SetClusterState { state }),
        prop::option::of(any::<NodeType>()).prop_map(|node_type| Packet::AskNodeList { node_type }),
    ]
    .boxed()
}

fn accept() -> BoxedStrategy<Packet> {
    (
        prop_oneof![4 => Just(NodeType::Master), 1 => any::<NodeType>()],
        prop::option::of(nid()),
        prop::option::of(nid()),
    )
        .prop_map(|(node_type, nid, your_nid)| Packet::AcceptIdentification {
            node_type,
            nid,
            your_nid,
        })
        .boxed()
}

fn not_primary() -> BoxedStrategy<Packet> {
    (
        prop::option::of(address()),
        prop::collection::vec(address(), 0..4),
    )
        .prop_map(|(primary, known_masters)| Packet::NotPrimaryMaster {
            primary,
            known_masters,
        })
        .boxed()
}

/// What a primary master sends.
fn master_side() -> BoxedStrategy<Packet> {
    prop_oneof![
        accept(),
        not_primary(),
        (time(), prop::collection::vec(node_info(), 0..5))
            .prop_map(|(timestamp, nodes)| Packet::NotifyNodeInformation { timestamp, nodes }),
        (prop::option::of(ptid()), edge_u32(), rows()).prop_map(|(ptid, num_replicas, rows)| {
            Packet::SendPartitionTable {
                ptid,
                num_replicas,
                rows,
            }
        }),
        (
            ptid(),
            edge_u32(),
            prop::collection::vec((edge_u32(), nid(), any::<CellState>()), 0..4)
        )
            .prop_map(
                |(ptid, num_replicas, changes)| Packet::NotifyPartitionChanges {
                    ptid,
                    num_replicas,
                    changes
                }
            ),
        tid().prop_map(|tid| Packet::Truncate { tid }),
        tid().prop_map(|ttid| Packet::AskFinalTID { ttid }),
        (tid(), tid()).prop_map(|(ttid, tid)| Packet::ValidateTransaction { ttid, tid }),
    ]
    .boxed()
}

fn answer_recovery() -> BoxedStrategy<Packet> {
    (
        prop_oneof![2 => Just(None), 3 => ptid().prop_map(Some)],
        prop::option::of(tid()),
        prop::option::of(tid()),
    )
        .prop_map(|(ptid, backup_tid, truncate_tid)| Packet::AnswerRecovery {
            ptid,
            backup_tid,
            truncate_tid,
        })
        .boxed()
}

fn answer_table() -> BoxedStrategy<Packet> {
    (prop::option::of(ptid()), edge_u32(), rows())
        .prop_map(|(ptid, num_replicas, rows)| Packet::AnswerPartitionTable {
            ptid,
            num_replicas,
            rows,
        })
        .boxed()
}

fn answer_last_ids() -> BoxedStrategy<Packet> {
    (
        prop::option::of(tid()),
        prop::option::of(edge_u64().prop_map(Oid)),
        prop::option::of(tid()),
    )
        .prop_map(|(last_tid, last_oid, first_tid)| Packet::AnswerLastIDs {
            last_tid,
            last_oid,
            first_tid,
        })
        .boxed()
}

fn answer_locked() -> BoxedStrategy<Packet> {
    prop::collection::vec((tid(), prop::option::of(tid())), 0..4)
        .prop_map(|transactions| Packet::AnswerLockedTransactions { transactions })
        .boxed()
}

fn answer_final_tid() -> BoxedStrategy<Packet> {
    prop::option::of(tid())
        .prop_map(|tid| Packet::AnswerFinalTID { tid })
        .boxed()
}

/// A storage's answers to the primary.
fn storage_side() -> BoxedStrategy<Packet> {
    prop_oneof![
        answer_recovery(),
        answer_table(),
        answer_last_ids(),
        answer_locked(),
        answer_final_tid(),
    ]
    .boxed()
}

/// neoctl's requests.
fn admin_side() -> BoxedStrategy<Packet> {
    prop_oneof![
        (edge_u32(), edge_u32(), prop::option::of(nid())).prop_map(
            |(min_offset, max_offset, nid)| Packet::AskPartitionList {
                min_offset,
                max_offset,
                nid,
            }
        ),
        (nid(), any::<NodeState>()).prop_map(|(nid, state)| Packet::SetNodeState { nid, state }),
        prop::collection::vec(nid(), 0..3).prop_map(|nids| Packet::AddPendingNodes { nids }),
        (any::<bool>(), prop::collection::vec(nid(), 0..3))
            .prop_map(|(dry_run, nids)| Packet::TweakPartitionTable { dry_run, nids }),
        edge_u32().prop_map(|num_replicas| Packet::SetNumReplicas { num_replicas }),
    ]
    .boxed()
}

/// Packets of every kind: derived arbitrary ones, and ones built from edge values and the
/// names a small cluster uses, so that they get past the first checks.
pub fn packet(cluster: &'static str) -> BoxedStrategy<Packet> {
    prop_oneof![
        2 => any::<Packet>(),
        4 => identification(cluster),
        3 => simple(),
        3 => master_side(),
        3 => storage_side(),
        2 => admin_side(),
    ]
    .boxed()
}

/// One answer of each kind a role asks for, with arbitrary fields; `wrong` answers with
/// `other` whatever the request was.
#[derive(Clone, Debug)]
pub struct Answers {
    recovery: Packet,
    table: Packet,
    last_ids: Packet,
    locked: Packet,
    final_tid: Packet,
    identification: Packet,
    other: Packet,
    wrong: bool,
}

impl Answers {
    fn to(&self, request: &str) -> Packet {
        if self.wrong {
            return self.other.clone();
        }
        match request {
            "AskRecovery" => self.recovery.clone(),
            "AskPartitionTable" => self.table.clone(),
            "AskLastIDs" => self.last_ids.clone(),
            "AskLockedTransactions" => self.locked.clone(),
            "AskFinalTID" => self.final_tid.clone(),
            "AskReserveIDs" => Packet::AnswerReserveIDs {
                oid: None,
                tid: None,
            },
            "RequestIdentification" => self.identification.clone(),
            "Ping" => Packet::Pong,
            _ => self.other.clone(),
        }
    }
}

fn answers(cluster: &'static str) -> BoxedStrategy<Answers> {
    (
        (
            answer_recovery(),
            answer_table(),
            answer_last_ids(),
            answer_locked(),
            answer_final_tid(),
        ),
        prop_oneof![4 => accept(), 1 => not_primary(), 1 => packet(cluster)],
        prop_oneof![3 => Just(Packet::ack("ok")), 1 => packet(cluster)],
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |((recovery, table, last_ids, locked, final_tid), identification, other, wrong)| {
                Answers {
                    recovery,
                    table,
                    last_ids,
                    locked,
                    final_tid,
                    identification,
                    other,
                    wrong,
                }
            },
        )
        .boxed()
}

/// Message ids: mostly small, to match the requests a node has pending on a connection.
fn message(cluster: &'static str) -> BoxedStrategy<Message> {
    (
        prop_oneof![4 => 0u32..8, 1 => any::<u32>()],
        packet(cluster),
    )
        .prop_map(|(id, packet)| Message { id, packet })
        .boxed()
}

fn reason() -> BoxedStrategy<CloseReason> {
    prop_oneof![
        Just(CloseReason::PeerClosed),
        Just(CloseReason::Reset),
        Just(CloseReason::Refused),
        Just(CloseReason::TimedOut),
        any::<String>().prop_map(CloseReason::Protocol),
    ]
    .boxed()
}

pub fn step(cluster: &'static str) -> BoxedStrategy<Step> {
    prop_oneof![
        10 => Just(Step::Accept),
        30 => identification(cluster).prop_map(Step::Join),
        20 => any::<usize>().prop_map(Step::Connected),
        15 => (any::<usize>(), reason()).prop_map(|(i, r)| Step::Close(i, r)),
        30 => (any::<usize>(), message(cluster)).prop_map(|(i, m)| Step::Receive(i, m)),
        80 => (any::<usize>(), answers(cluster)).prop_map(|(i, a)| Step::Reply(i, Box::new(a))),
        30 => any::<usize>().prop_map(Step::Fire),
        20 => prop_oneof![
            4 => 0u64..3_000,
            1 => 0u64..30_000,
        ].prop_map(|ms| Step::Advance(Duration::from_millis(ms))),
        1 => Just(Step::Shutdown),
    ]
    .boxed()
}

/// What a host knows of the actor: its open connections and pending timers.
#[derive(Default)]
struct Host {
    open: Vec<ConnId>,
    connecting: Vec<ConnId>,
    timers: Vec<(TimerId, u64)>,
    /// Requests the actor sent, not answered yet: (connection, id, packet name).
    requests: Vec<(ConnId, u32, &'static str)>,
    next_accept: u64,
    exited: bool,
}

impl Host {
    fn apply(&mut self, effects: &[Effect]) {
        for e in effects {
            match e {
                Effect::Connect { conn, .. } => {
                    self.open.push(*conn);
                    self.connecting.push(*conn);
                }
                Effect::Close { conn } => {
                    self.open.retain(|c| c != conn);
                    self.connecting.retain(|c| c != conn);
                    self.requests.retain(|(c, _, _)| c != conn);
                }
                Effect::Send { conn, msg } if msg.packet.kind() == Kind::Request => {
                    self.requests.push((*conn, msg.id, msg.packet.name()));
                }
                Effect::SetTimer { id, token, .. } => self.timers.push((*id, *token)),
                Effect::CancelTimer { id } => self.timers.retain(|(t, _)| t != id),
                Effect::Exit { .. } => self.exited = true,
                Effect::Send { .. } | Effect::Observe(_) | Effect::Reply(_) | Effect::Notice(_) => {
                }
            }
        }
    }

    /// The events a step stands for (none if it names nothing that exists).
    fn events(&mut self, step: Step) -> Vec<Event> {
        if let Step::Join(packet) = step {
            let Some(Event::Accepted { conn }) = self.event(Step::Accept) else {
                return vec![];
            };
            let msg = Message { id: 0, packet };
            return vec![Event::Accepted { conn }, Event::Received { conn, msg }];
        }
        self.event(step).into_iter().collect()
    }

    /// The event a step stands for, if it names something that exists.
    fn event(&mut self, step: Step) -> Option<Event> {
        let pick = |v: &[ConnId], i: usize| (!v.is_empty()).then(|| v[i % v.len()]);
        Some(match step {
            Step::Accept => {
                self.next_accept += 1;
                let conn = ConnId(1_000_000 + self.next_accept);
                self.open.push(conn);
                Event::Accepted { conn }
            }
            Step::Connected(i) => {
                let conn = pick(&self.connecting, i)?;
                self.connecting.retain(|c| *c != conn);
                Event::Connected { conn }
            }
            Step::Reply(i, answers) => {
                if self.requests.is_empty() {
                    return None;
                }
                let (conn, id, name) = self.requests.remove(i % self.requests.len());
                if self.connecting.contains(&conn) {
                    self.connecting.retain(|c| *c != conn);
                    self.requests.push((conn, id, name));
                    return Some(Event::Connected { conn });
                }
                let msg = Message {
                    id,
                    packet: answers.to(name),
                };
                Event::Received { conn, msg }
            }
            Step::Close(i, reason) => {
                let conn = pick(&self.open, i)?;
                self.open.retain(|c| *c != conn);
                self.connecting.retain(|c| *c != conn);
                self.requests.retain(|(c, _, _)| *c != conn);
                Event::Closed { conn, reason }
            }
            Step::Receive(i, msg) => {
                let conn = pick(&self.open, i)?;
                if self.connecting.contains(&conn) {
                    // Bytes arrive only once a connection is up.
                    self.connecting.retain(|c| *c != conn);
                    return Some(Event::Connected { conn });
                }
                Event::Received { conn, msg }
            }
            Step::Fire(i) => {
                if self.timers.is_empty() {
                    return None;
                }
                let (id, token) = self.timers.remove(i % self.timers.len());
                Event::Timer { id, token }
            }
            Step::Advance(_) | Step::Join(_) => return None,
            Step::Shutdown => Event::Local(Command::Shutdown),
        })
    }
}

/// Feed `steps` to the actor (started first), checking `check` after each; stops when the
/// actor exits, as a host would. A panic fails the property test with the sequence.
pub fn run<A: Actor>(
    h: &mut Harness<A>,
    steps: Vec<Step>,
    check: impl Fn(&A) -> Result<(), String>,
) -> Result<(), TestCaseError> {
    let mut host = Host::default();
    let out = h.start();
    host.apply(&out);
    for step in steps {
        if host.exited {
            break;
        }
        if let Step::Advance(d) = step {
            h.now = h.now.saturating_add(d);
            h.elapsed += d;
            continue;
        }
        for ev in host.events(step) {
            if host.exited {
                break;
            }
            let out = h.handle(ev);
            host.apply(&out);
            if !host.exited {
                check(&h.actor).map_err(TestCaseError::fail)?;
            }
        }
    }
    Ok(())
}
