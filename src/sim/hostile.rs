//! The hostile peer: a simulated process the swarm can turn on that connects to any node,
//! identifies as any node type (with the right or a wrong cluster name, or not at all) and
//! sends well-formed messages of every packet kind with arbitrary field values and ids
//! (huge ids, `u64::MAX` table ids, impossible partitions, ...), in any order, from the
//! process's seeded generator. Nodes must refuse what is impossible and never panic; the
//! scenario's invariants must hold.
//!
//! What it may say is bounded by what the cluster cannot tell from the truth: a peer with
//! the right cluster name that claims to be a storage is, for the cluster, a storage, and
//! a storage that lies plausibly about its partition table would rightly be believed. So
//! with the right cluster name the peer sends only what is impossible (ids at their
//! limits), requests that change nothing (information, pings) and refusals; with a wrong
//! cluster name, or to a node before identifying, anything at all (but never neoctl's
//! commands to the admin node, which obeys any connection, as NEO's does).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::actors::{Actor, ConnId, Ctx, Event, TimerId};
use crate::proto::{
    Address, CellState, ClusterState, Data, ErrorCode, IdentificationExtra, Kind, Message, Nid,
    NodeInfo, NodeState, NodeType, Oid, Packet, Ptid, Tid, WallTime,
};
use crate::rng::{self, ChaCha8Rng};

/// A node the peer may connect to: its address, its type, the cluster's name.
#[derive(Clone, Debug)]
pub struct Target {
    pub address: Address,
    pub node_type: NodeType,
}

#[derive(Clone, Debug)]
pub struct HostileConfig {
    pub cluster: String,
    /// Its own address (claimed in identifications now and then).
    pub address: Address,
    pub targets: Vec<Target>,
}

/// How the peer behaves on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Right cluster name: only impossible values, harmless requests, refusals.
    Member,
    /// Wrong cluster name: anything.
    Stranger,
    /// No identification: anything but neoctl's commands.
    Anonymous,
}

struct Conn {
    mode: Mode,
    target: NodeType,
    /// Messages left to send before closing.
    budget: u32,
}

pub struct HostilePeer {
    cfg: HostileConfig,
    conns: BTreeMap<ConnId, Conn>,
    timer: Option<TimerId>,
}

/// A number at or near a limit, or a small or random one.
fn edge_u64(rng: &mut ChaCha8Rng) -> u64 {
    match rng::below(rng, 8) {
        0 => u64::MAX,
        1 => u64::MAX - 1,
        2 => i64::MAX as u64,
        3 => 0,
        4 => u32::MAX as u64,
        5 => rng::below(rng, 20),
        _ => rng::below(rng, u64::MAX),
    }
}

fn edge_u32(rng: &mut ChaCha8Rng) -> u32 {
    match rng::below(rng, 5) {
        0 => u32::MAX,
        1 => 0,
        2 => i32::MAX as u32,
        3 => rng::below(rng, 20) as u32,
        _ => rng::below(rng, u32::MAX as u64) as u32,
    }
}

fn pick_copy<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    *rng::pick(rng, items)
}

fn any_nid(rng: &mut ChaCha8Rng) -> Nid {
    match rng::below(rng, 4) {
        0 => Nid(edge_u32(rng) as i32),
        1 => Nid(i32::MIN),
        _ => {
            let ty = pick_copy(rng, NodeType::ALL);
            let n = match rng::below(rng, 3) {
                0 => Nid::MAX_NUMBER,
                _ => rng::between(rng, 1, 8) as u32,
            };
            Nid::new(ty, n)
        }
    }
}

fn maybe<T>(rng: &mut ChaCha8Rng, f: impl FnOnce(&mut ChaCha8Rng) -> T) -> Option<T> {
    rng::chance(rng, 0.7).then(|| f(rng))
}

fn any_rows(rng: &mut ChaCha8Rng) -> Vec<Vec<(Nid, CellState)>> {
    let n = pick_copy(rng, &[0usize, 1, 3, 12, 300]);
    (0..n)
        .map(|_| {
            (0..rng::below(rng, 4))
                .map(|_| (any_nid(rng), pick_copy(rng, CellState::ALL)))
                .collect()
        })
        .collect()
}

fn any_address(rng: &mut ChaCha8Rng) -> Address {
    let host = match rng::below(rng, 4) {
        0 => String::new(),
        1 => "10.0.0.1".into(),
        2 => "x".repeat(rng::below(rng, 300) as usize),
        _ => format!("10.0.{}.{}", rng::below(rng, 4), rng::below(rng, 9)),
    };
    Address::new(host, rng::below(rng, 65536) as u16)
}

/// Random bytes with a taste for limits and small numbers, for postcard to decode.
fn noise(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| match rng::below(rng, 10) {
            0..=3 => rng::below(rng, 4) as u8,
            4 => 0xff,
            5 => 0x80 | rng::below(rng, 0x80) as u8,
            6 | 7 => b'a' + rng::below(rng, 26) as u8,
            _ => rng::below(rng, 256) as u8,
        })
        .collect()
}

/// Any packet: decoded from random bytes after a random variant index (every kind, any
/// field values), or one of the hand-made packets with values at their limits.
pub fn any_packet(rng: &mut ChaCha8Rng) -> Packet {
    if rng::chance(rng, 0.5) {
        let kinds = packet_kinds();
        for _ in 0..50 {
            let mut bytes = noise(rng, 48);
            bytes[0] = rng::below(rng, kinds) as u8;
            if let Ok((p, _)) = postcard::take_from_bytes::<Packet>(&bytes) {
                return p;
            }
        }
    }
    edge_packet(rng)
}

/// How many packet kinds there are: postcard numbers variants from 0, and a buffer of
/// zeros decodes as any of them (empty lists, None, zero numbers), so the first index that
/// does not decode is the count. Counted once, so that a new packet needs no edit here.
fn packet_kinds() -> u64 {
    static KINDS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KINDS.get_or_init(|| {
        (0..=127u8)
            .take_while(|i| {
                let mut bytes = vec![0u8; 64];
                bytes[0] = *i;
                postcard::take_from_bytes::<Packet>(&bytes).is_ok()
            })
            .count() as u64
    })
}

/// A packet of a kind that carries ids, with ids at their limits.
fn edge_packet(rng: &mut ChaCha8Rng) -> Packet {
    let r = rng;
    match rng::below(r, 31) {
        30 => Packet::AnswerTransactionInformation {
            tid: Tid(edge_u64(r)),
            user: Data(noise(r, 4)),
            description: Data(noise(r, 4)),
            extension: Data(noise(r, 4)),
            packed: rng::chance(r, 0.5),
            oids: (0..rng::below(r, 4)).map(|_| Oid(edge_u64(r))).collect(),
        },
        24 => Packet::AskTransactionInformation {
            tid: Tid(edge_u64(r)),
        },
        25 => Packet::AskObjectUndoSerial {
            ttid: Tid(edge_u64(r)),
            ltid: Tid(edge_u64(r)),
            undone_tid: Tid(edge_u64(r)),
            oids: (0..rng::below(r, 4)).map(|_| Oid(edge_u64(r))).collect(),
        },
        26 => Packet::AskObjectHistory {
            oid: Oid(edge_u64(r)),
            first: edge_u64(r),
            last: edge_u64(r),
        },
        27 => Packet::AskTIDs {
            first: edge_u64(r),
            last: edge_u64(r),
            partition: maybe(r, edge_u32),
        },
        28 => Packet::AskTIDsFrom {
            min_tid: Tid(edge_u64(r)),
            max_tid: Tid(edge_u64(r)),
            length: edge_u32(r),
            partition: edge_u32(r),
        },
        29 => Packet::AskPack {
            tid: Tid(edge_u64(r)),
        },
        17 => Packet::AskStoreObject {
            oid: Oid(edge_u64(r)),
            serial: Tid(edge_u64(r)),
            compression: edge_u32(r) as u8,
            checksum: [0; 20],
            data: maybe(r, |r| Data(noise(r, 16))),
            data_serial: maybe(r, |r| Tid(edge_u64(r))),
            ttid: Tid(edge_u64(r)),
        },
        18 => Packet::AskFinishTransaction {
            ttid: Tid(edge_u64(r)),
            oids: (0..rng::below(r, 4)).map(|_| Oid(edge_u64(r))).collect(),
            deleted: (0..rng::below(r, 3)).map(|_| edge_u32(r)).collect(),
            checked: (0..rng::below(r, 3)).map(|_| edge_u32(r)).collect(),
        },
        19 => Packet::AskLockInformation {
            ttid: Tid(edge_u64(r)),
            tid: Tid(edge_u64(r)),
        },
        20 => Packet::InvalidateObjects {
            tid: Tid(edge_u64(r)),
            oids: (0..rng::below(r, 4)).map(|_| Oid(edge_u64(r))).collect(),
        },
        21 => Packet::AnswerObject {
            oid: Oid(edge_u64(r)),
            serial: Tid(edge_u64(r)),
            next_serial: maybe(r, |r| Tid(edge_u64(r))),
            compression: edge_u32(r) as u8,
            checksum: [0; 20],
            data: maybe(r, |r| Data(noise(r, 16))),
            data_serial: maybe(r, |r| Tid(edge_u64(r))),
        },
        22 => Packet::AskNewOIDs { count: edge_u32(r) },
        23 => Packet::AnswerBeginTransaction {
            ttid: Tid(edge_u64(r)),
        },
        0 => Packet::AnswerRecovery {
            ptid: Some(Ptid(edge_u64(r))),
            backup_tid: maybe(r, |r| Tid(edge_u64(r))),
            truncate_tid: maybe(r, |r| Tid(edge_u64(r))),
        },
        1 => Packet::AnswerPartitionTable {
            ptid: maybe(r, |r| Ptid(edge_u64(r))),
            num_replicas: edge_u32(r),
            rows: any_rows(r),
        },
        2 => Packet::SendPartitionTable {
            ptid: maybe(r, |r| Ptid(edge_u64(r))),
            num_replicas: edge_u32(r),
            rows: any_rows(r),
        },
        3 => Packet::NotifyPartitionChanges {
            ptid: Ptid(edge_u64(r)),
            num_replicas: edge_u32(r),
            changes: (0..rng::below(r, 4))
                .map(|_| (edge_u32(r), any_nid(r), pick_copy(r, CellState::ALL)))
                .collect(),
        },
        4 => Packet::AnswerLastIDs {
            last_tid: maybe(r, |r| Tid(edge_u64(r))),
            last_oid: maybe(r, |r| Oid(edge_u64(r))),
            first_tid: maybe(r, |r| Tid(edge_u64(r))),
        },
        5 => Packet::AnswerLockedTransactions {
            transactions: (0..rng::below(r, 4))
                .map(|_| (Tid(edge_u64(r)), maybe(r, |r| Tid(edge_u64(r)))))
                .collect(),
        },
        6 => Packet::AnswerFinalTID {
            tid: maybe(r, |r| Tid(edge_u64(r))),
        },
        7 => Packet::ValidateTransaction {
            ttid: Tid(edge_u64(r)),
            tid: Tid(edge_u64(r)),
        },
        8 => Packet::NotifyNodeInformation {
            timestamp: WallTime(edge_u64(r)),
            nodes: (0..rng::below(r, 4))
                .map(|_| NodeInfo {
                    node_type: pick_copy(r, NodeType::ALL),
                    address: maybe(r, any_address),
                    nid: maybe(r, any_nid),
                    state: pick_copy(r, NodeState::ALL),
                    id_timestamp: maybe(r, |r| WallTime(edge_u64(r))),
                })
                .collect(),
        },
        9 => Packet::AcceptIdentification {
            node_type: pick_copy(r, NodeType::ALL),
            nid: maybe(r, any_nid),
            your_nid: maybe(r, any_nid),
        },
        10 => Packet::NotPrimaryMaster {
            primary: maybe(r, any_address),
            known_masters: (0..rng::below(r, 4)).map(|_| any_address(r)).collect(),
        },
        11 => Packet::AskPartitionList {
            min_offset: edge_u32(r),
            max_offset: edge_u32(r),
            nid: maybe(r, any_nid),
        },
        12 => Packet::Truncate {
            tid: Tid(edge_u64(r)),
        },
        13 => Packet::AskFinalTID {
            ttid: Tid(edge_u64(r)),
        },
        15 => Packet::RequestIdentification {
            node_type: pick_copy(r, NodeType::ALL),
            nid: maybe(r, any_nid),
            address: maybe(r, any_address),
            cluster_name: pick_copy(r, &["", "other"]).to_string(),
            id_timestamp: maybe(r, |r| WallTime(edge_u64(r))),
            extra: IdentificationExtra {
                read_only: rng::chance(r, 0.5),
                devpath: Vec::new(),
                established: rng::chance(r, 0.5),
                ptid: maybe(r, |r| Ptid(edge_u64(r))),
            },
        },
        14 => Packet::NotifyClusterInformation {
            state: pick_copy(r, ClusterState::ALL),
        },
        _ => Packet::StartOperation {
            backup: rng::chance(r, 0.5),
        },
    }
}

/// neoctl's commands: what the admin node relays to the primary from any connection.
fn is_admin_command(p: &Packet) -> bool {
    matches!(
        p,
        Packet::SetClusterState { .. }
            | Packet::SetNodeState { .. }
            | Packet::AddPendingNodes { .. }
            | Packet::TweakPartitionTable { .. }
            | Packet::SetNumReplicas { .. }
            | Packet::Truncate { .. }
    )
}

/// Requests that only ask, whatever their fields.
fn harmless_request(rng: &mut ChaCha8Rng) -> Packet {
    match rng::below(rng, 8) {
        0 => Packet::Ping,
        1 => Packet::AskPrimary,
        2 => Packet::AskClusterState,
        3 => Packet::AskNodeList {
            node_type: maybe(rng, |r| pick_copy(r, NodeType::ALL)),
        },
        4 => Packet::AskPartitionList {
            min_offset: edge_u32(rng),
            max_offset: edge_u32(rng),
            nid: maybe(rng, any_nid),
        },
        5 => Packet::AskLastIDs,
        6 => Packet::AskLastTransaction,
        _ => Packet::AskRecovery,
    }
}

impl HostilePeer {
    pub fn new(cfg: HostileConfig) -> HostilePeer {
        HostilePeer {
            cfg,
            conns: BTreeMap::new(),
            timer: None,
        }
    }

    fn arm(&mut self, cx: &mut Ctx) {
        let after = rng::duration(cx.rng(), Duration::from_millis(10), Duration::from_secs(2));
        self.timer = Some(cx.set_timer(after, 1));
    }

    fn send(&mut self, cx: &mut Ctx, conn: ConnId, packet: Packet) {
        let id = match rng::below(cx.rng(), 4) {
            0 => u32::MAX,
            1 => 0,
            _ => rng::below(cx.rng(), 1 << 20) as u32,
        };
        cx.send(conn, Message { id, packet });
    }

    fn identification(&self, cx: &mut Ctx, mode: Mode) -> Packet {
        let r = cx.rng();
        let cluster_name = match mode {
            Mode::Member => self.cfg.cluster.clone(),
            _ => pick_copy(r, &["", "other", "sim "]).to_string(),
        };
        let address = match (mode, rng::below(r, 3)) {
            (_, 0) => None,
            (Mode::Member, _) => Some(self.cfg.address.clone()),
            _ => Some(any_address(r)),
        };
        Packet::RequestIdentification {
            node_type: pick_copy(r, NodeType::ALL),
            nid: maybe(r, any_nid),
            address,
            cluster_name,
            id_timestamp: maybe(r, |r| WallTime(edge_u64(r))),
            extra: IdentificationExtra {
                read_only: rng::chance(r, 0.2),
                devpath: Vec::new(),
                established: rng::chance(r, 0.2),
                ptid: match rng::below(r, 3) {
                    0 => None,
                    1 => Some(Ptid(u64::MAX)),
                    _ => Some(Ptid(edge_u64(r))),
                },
            },
        }
        .clone()
    }

    /// The next message on a connection, by its mode.
    fn next_packet(&self, cx: &mut Ctx, conn: &Conn) -> Packet {
        let r = cx.rng();
        match conn.mode {
            Mode::Member => {
                if rng::chance(r, 0.3) {
                    // Impossible ids, as a storage or master would send them.
                    match rng::below(r, 3) {
                        0 => Packet::AnswerRecovery {
                            ptid: Some(Ptid(u64::MAX)),
                            backup_tid: None,
                            truncate_tid: None,
                        },
                        1 => Packet::NotifyPartitionChanges {
                            ptid: Ptid(u64::MAX),
                            num_replicas: u32::MAX,
                            changes: vec![(u32::MAX, any_nid(r), CellState::UpToDate)],
                        },
                        _ => Packet::AnswerLastIDs {
                            last_tid: Some(Tid(u64::MAX)),
                            last_oid: Some(Oid(u64::MAX)),
                            first_tid: None,
                        },
                    }
                } else {
                    harmless_request(r)
                }
            }
            Mode::Stranger => self.stranger(any_packet(r)),
            Mode::Anonymous => loop {
                let p = self.stranger(any_packet(r));
                if !(conn.target == NodeType::Admin && is_admin_command(&p)) {
                    break p;
                }
            },
        }
    }

    /// A stranger never names the right cluster (it would become a member, which may lie
    /// plausibly, and be rightly believed).
    fn stranger(&self, mut p: Packet) -> Packet {
        if let Packet::RequestIdentification { cluster_name, .. } = &mut p {
            if *cluster_name == self.cfg.cluster {
                cluster_name.push('?');
            }
        }
        p
    }

    fn on_tick(&mut self, cx: &mut Ctx) {
        self.arm(cx);
        if self.conns.len() < 3 && !self.cfg.targets.is_empty() && rng::chance(cx.rng(), 0.5) {
            let target = rng::pick(cx.rng(), &self.cfg.targets).clone();
            let mode = pick_copy(cx.rng(), &[Mode::Member, Mode::Stranger, Mode::Anonymous]);
            let conn = cx.connect(&target.address);
            let budget = rng::between(cx.rng(), 1, 30) as u32;
            let c = Conn {
                mode,
                target: target.node_type,
                budget,
            };
            if mode != Mode::Anonymous {
                let id = self.identification(cx, mode);
                self.send(cx, conn, id);
            }
            self.conns.insert(conn, c);
        }
        let open: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in open {
            let n = rng::below(cx.rng(), 3);
            for _ in 0..n {
                let Some(c) = self.conns.get(&conn) else {
                    break;
                };
                if c.budget == 0 {
                    self.conns.remove(&conn);
                    cx.close(conn);
                    break;
                }
                let p = self.next_packet(cx, c);
                self.send(cx, conn, p);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.budget -= 1;
                }
            }
        }
    }

    /// Answer a request: a refusal, or (when anything goes) any answer at all, with the
    /// request's id.
    fn answer(&mut self, cx: &mut Ctx, conn: ConnId, msg: &Message) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if msg.packet.kind() != Kind::Request || rng::chance(cx.rng(), 0.3) {
            return;
        }
        let packet = if c.mode == Mode::Member {
            if matches!(msg.packet, Packet::AskRecovery) && rng::chance(cx.rng(), 0.5) {
                Packet::AnswerRecovery {
                    ptid: Some(Ptid(u64::MAX)),
                    backup_tid: None,
                    truncate_tid: None,
                }
            } else {
                let code = pick_copy(cx.rng(), &[ErrorCode::NotReady, ErrorCode::ProtocolError]);
                Packet::error(code, "hostile peer")
            }
        } else {
            let r = cx.rng();
            loop {
                let p = any_packet(r);
                if p.kind() == Kind::Answer {
                    break self.stranger(p);
                }
            }
        };
        cx.send(conn, Message { id: msg.id, packet });
    }
}

impl Actor for HostilePeer {
    fn start(&mut self, cx: &mut Ctx) {
        self.conns.clear();
        self.arm(cx);
    }

    fn handle(&mut self, cx: &mut Ctx, ev: Event) {
        match ev {
            Event::Timer { id, .. } if Some(id) == self.timer => self.on_tick(cx),
            Event::Accepted { conn } => cx.close(conn),
            Event::Closed { conn, .. } => {
                self.conns.remove(&conn);
            }
            Event::Received { conn, msg } => self.answer(cx, conn, &msg),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The generator reaches every packet kind (the variant count is read from the
    /// decoder, so a new packet is counted without editing this test).
    #[test]
    fn any_packet_reaches_every_kind() {
        let kinds: BTreeSet<&str> = (0..=255u8)
            .filter_map(|i| {
                let mut bytes = vec![0u8; 64];
                bytes[0] = i;
                postcard::take_from_bytes::<Packet>(&bytes)
                    .ok()
                    .map(|(p, _)| p.name())
            })
            .collect();
        assert!(kinds.len() > 40, "only {} packet kinds decode", kinds.len());
        let mut rng = rng::stream(1, 1);
        let seen: BTreeSet<&str> = (0..20_000).map(|_| any_packet(&mut rng).name()).collect();
        let missing: Vec<_> = kinds.difference(&seen).collect();
        assert!(missing.is_empty(), "never generated: {missing:?}");
    }

    /// Limits show up: a u64::MAX table id among the generated packets.
    #[test]
    fn any_packet_reaches_the_limits() {
        let mut rng = rng::stream(2, 1);
        let max = (0..5_000).any(|_| {
            matches!(
                any_packet(&mut rng),
                Packet::AnswerRecovery {
                    ptid: Some(Ptid(u64::MAX)),
                    ..
                }
            )
        });
        assert!(max);
    }
}
