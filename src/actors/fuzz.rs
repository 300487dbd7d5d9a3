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
    Address, CellState, ClusterState, IdentificationExtra, Message, Nid, NodeInfo, NodeState,
    NodeType, Oid, Packet, Ptid, Tid, WallTime,
};

/// One thing the host does to the actor.
#[derive(Clone, Debug)]
pub enum Step {
    /// A peer connects.
    Accept,
    /// An open connection (by index among those open) comes up, if the actor made it.
    Connected(usize),
    /// An open connection ends.
    Close(usize, CloseReason),
    /// A packet arrives on an open connection.
    Receive(usize, Message),
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

/// Packets of every kind: derived arbitrary ones, and ones built from edge values and the
/// names a small cluster uses, so that they get past the first checks.
pub fn packet(cluster: &'static str) -> BoxedStrategy<Packet> {
    let identification = (
        any::<NodeType>(),
        prop::option::of(nid()),
        prop::option::of(address()),
        prop_oneof![4 => Just(cluster.to_string()), 1 => any::<String>()],
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
        );
    let simple = prop_oneof![
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
    ];
    let master_side = prop_oneof![
        (
            any::<NodeType>(),
            prop::option::of(nid()),
            prop::option::of(nid())
        )
            .prop_map(|(node_type, nid, your_nid)| {
                Packet::AcceptIdentification {
                    node_type,
                    nid,
                    your_nid,
                }
            }),
        (
            prop::option::of(address()),
            prop::collection::vec(address(), 0..4)
        )
            .prop_map(|(primary, known_masters)| Packet::NotPrimaryMaster {
                primary,
                known_masters
            }),
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
    ];
    let storage_side = prop_oneof![
        (
            prop::option::of(ptid()),
            prop::option::of(tid()),
            prop::option::of(tid())
        )
            .prop_map(|(ptid, backup_tid, truncate_tid)| {
                Packet::AnswerRecovery {
                    ptid,
                    backup_tid,
                    truncate_tid,
                }
            }),
        (prop::option::of(ptid()), edge_u32(), rows()).prop_map(|(ptid, num_replicas, rows)| {
            Packet::AnswerPartitionTable {
                ptid,
                num_replicas,
                rows,
            }
        }),
        (
            prop::option::of(tid()),
            prop::option::of(edge_u64().prop_map(Oid)),
            prop::option::of(tid())
        )
            .prop_map(|(last_tid, last_oid, first_tid)| Packet::AnswerLastIDs {
                last_tid,
                last_oid,
                first_tid
            }),
        prop::collection::vec((tid(), prop::option::of(tid())), 0..4)
            .prop_map(|transactions| Packet::AnswerLockedTransactions { transactions }),
        prop::option::of(tid()).prop_map(|tid| Packet::AnswerFinalTID { tid }),
    ];
    let admin_side = prop_oneof![
        (edge_u32(), edge_u32(), prop::option::of(nid())).prop_map(
            |(min_offset, max_offset, nid)| {
                Packet::AskPartitionList {
                    min_offset,
                    max_offset,
                    nid,
                }
            }
        ),
        (nid(), any::<NodeState>()).prop_map(|(nid, state)| Packet::SetNodeState { nid, state }),
        prop::collection::vec(nid(), 0..3).prop_map(|nids| Packet::AddPendingNodes { nids }),
        (any::<bool>(), prop::collection::vec(nid(), 0..3))
            .prop_map(|(dry_run, nids)| Packet::TweakPartitionTable { dry_run, nids }),
        edge_u32().prop_map(|num_replicas| Packet::SetNumReplicas { num_replicas }),
    ];
    prop_oneof![
        2 => any::<Packet>(),
        3 => identification,
        3 => simple,
        3 => master_side,
        3 => storage_side,
        2 => admin_side,
    ]
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
        3 => Just(Step::Accept),
        2 => any::<usize>().prop_map(Step::Connected),
        2 => (any::<usize>(), reason()).prop_map(|(i, r)| Step::Close(i, r)),
        12 => (any::<usize>(), message(cluster)).prop_map(|(i, m)| Step::Receive(i, m)),
        3 => any::<usize>().prop_map(Step::Fire),
        2 => (0u64..20_000).prop_map(|ms| Step::Advance(Duration::from_millis(ms))),
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
                }
                Effect::SetTimer { id, token, .. } => self.timers.push((*id, *token)),
                Effect::CancelTimer { id } => self.timers.retain(|(t, _)| t != id),
                Effect::Exit { .. } => self.exited = true,
                Effect::Send { .. } | Effect::Observe(_) => {}
            }
        }
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
            Step::Close(i, reason) => {
                let conn = pick(&self.open, i)?;
                self.open.retain(|c| *c != conn);
                self.connecting.retain(|c| *c != conn);
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
            Step::Advance(_) => return None,
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
        let Some(ev) = host.event(step) else { continue };
        let out = h.handle(ev);
        host.apply(&out);
        if !host.exited {
            check(&h.actor).map_err(TestCaseError::fail)?;
        }
    }
    Ok(())
}
