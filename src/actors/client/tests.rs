//! The client role played against a master and storages by hand.

use std::collections::BTreeMap;
use std::time::Duration;

use sha1::{Digest, Sha1};

use super::*;
use crate::actors::testing::{first_connect, Harness};
use crate::actors::{Command, Effect, Event};
use crate::proto::{Address, CellState, ClusterState, Data, NodeInfo, Ptid, UndoSerial, WallTime};

const S1: Nid = Nid(0x00_0001);
const S2: Nid = Nid(0x00_0002);

fn addr(nid: Nid) -> Address {
    Address::new(
        format!("10.0.1.{}", nid.number()),
        20000 + nid.number() as u16,
    )
}

fn config(read_only: bool) -> ClientConfig {
    let mut c = ClientConfig::new("c", vec![Address::new("10.0.0.1", 10000)]);
    c.read_only = read_only;
    c
}

/// A client following a master by hand, with storages S1 and S2:
/// partition 0 on S1 and S2, partition 1 on S2 only.
struct World {
    h: Harness<Client>,
    m: ConnId,
    storages: BTreeMap<Nid, ConnId>,
    next_call: CallId,
    next_mid: u32,
}

fn msgs(out: &[Effect], conn: ConnId) -> Vec<(u32, Packet)> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Send { conn: c, msg } if *c == conn => Some((msg.id, msg.packet.clone())),
            _ => None,
        })
        .collect()
}

fn replies(out: &[Effect]) -> Vec<Reply> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Reply(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn notices(out: &[Effect]) -> Vec<Notice> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Notice(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

fn storage_node(nid: Nid) -> NodeInfo {
    NodeInfo {
        node_type: NodeType::Storage,
        address: Some(addr(nid)),
        nid: Some(nid),
        state: NodeState::Running,
        id_timestamp: None,
    }
}

fn sha(b: &[u8]) -> [u8; 20] {
    Sha1::digest(b).into()
}

impl World {
    fn new(cfg: ClientConfig, mutant: Option<&'static str>) -> World {
        let client = Client::new(cfg);
        let h = match mutant {
            Some(m) => Harness::with_mutant(client, m),
            None => Harness::new(client),
        };
        let mut w = World {
            h,
            m: ConnId(0),
            storages: BTreeMap::new(),
            next_call: 1,
            next_mid: 1000,
        };
        let out = w.h.start();
        w.m = first_connect(&out).expect("connects to the master");
        w.identify(&out, Some(Tid(100)));
        w
    }

    /// Identify on the master link `self.m` (its effects `out`); answer the snapshot.
    fn identify(&mut self, out: &[Effect], last: Option<Tid>) -> Vec<Effect> {
        let m = self.m;
        let sent = msgs(out, m);
        let (id, req) = sent.first().expect("identification").clone();
        match req {
            Packet::RequestIdentification {
                node_type, extra, ..
            } => {
                assert_eq!(node_type, NodeType::Client);
                assert_eq!(extra.read_only, self.h.actor.cfg.read_only);
            }
            other => panic!("{other:?}"),
        }
        self.h.handle(Event::Connected { conn: m });
        let accept = Packet::AcceptIdentification {
            node_type: NodeType::Master,
            nid: Some(Nid::new(NodeType::Master, 1)),
            your_nid: Some(Nid::new(NodeType::Client, 1)),
        };
        let out = self.h.handle(Event::Received {
            conn: m,
            msg: Message { id, packet: accept },
        });
        let snap = msgs(&out, m)
            .into_iter()
            .find(|(_, p)| *p == Packet::AskLastTransaction)
            .expect("asks the snapshot")
            .0;
        self.notify(Packet::NotifyNodeInformation {
            timestamp: WallTime(1),
            nodes: vec![storage_node(S1), storage_node(S2)],
        });
        self.notify(Packet::NotifyClusterInformation {
            state: ClusterState::Running,
        });
        self.notify(Packet::SendPartitionTable {
            ptid: Some(Ptid(1)),
            num_replicas: 1,
            rows: vec![
                vec![(S1, CellState::UpToDate), (S2, CellState::UpToDate)],
                vec![(S2, CellState::UpToDate)],
            ],
        });
        self.answer(m, snap, Packet::AnswerLastTransaction { tid: last })
    }

    fn notify(&mut self, packet: Packet) -> Vec<Effect> {
        self.next_mid += 1;
        self.h.handle(Event::Received {
            conn: self.m,
            msg: Message {
                id: self.next_mid,
                packet,
            },
        })
    }

    fn answer(&mut self, conn: ConnId, id: u32, packet: Packet) -> Vec<Effect> {
        self.h.handle(Event::Received {
            conn,
            msg: Message { id, packet },
        })
    }

    fn call(&mut self, op: Op) -> (CallId, Vec<Effect>) {
        let id = self.next_call;
        self.next_call += 1;
        let out = self.h.handle(Event::Local(Command::Call(Call { id, op })));
        (id, out)
    }

    /// Accept the identification of every storage connection opened in `out`; returns
    /// what the client sent then, with `out`'s own sends to known storages:
    /// (storage, message id, packet).
    fn storage_sends(&mut self, out: &[Effect]) -> Vec<(Nid, u32, Packet)> {
        let mut all = vec![];
        let mut effects = out.to_vec();
        for e in out {
            if let Effect::Connect { conn, to } = e {
                let nid = [S1, S2]
                    .into_iter()
                    .find(|n| addr(*n) == *to)
                    .expect("a storage");
                self.storages.insert(nid, *conn);
                let sent = msgs(out, *conn);
                let (id, p) = &sent[0];
                assert!(matches!(
                    p,
                    Packet::RequestIdentification {
                        node_type: NodeType::Client,
                        ..
                    }
                ));
                self.h.handle(Event::Connected { conn: *conn });
                let accept = Packet::AcceptIdentification {
                    node_type: NodeType::Storage,
                    nid: Some(nid),
                    your_nid: None,
                };
                let more = self.answer(*conn, *id, accept);
                effects.extend(more);
            }
        }
        for (&nid, &conn) in &self.storages {
            for (id, p) in msgs(&effects, conn) {
                if !matches!(p, Packet::RequestIdentification { .. }) {
                    all.push((nid, id, p));
                }
            }
        }
        all
    }

    fn reply_of(out: &[Effect], id: CallId) -> Result<Outcome, ClientError> {
        let rs: Vec<Reply> = replies(out).into_iter().filter(|r| r.id == id).collect();
        assert_eq!(rs.len(), 1, "one reply for call {id}: {out:?}");
        rs[0].result.clone()
    }

    fn begin(&mut self) -> (TxnRef, Tid) {
        let (id, out) = self.call(Op::TpcBegin { tid: None });
        let (mid, p) = msgs(&out, self.m).pop().expect("asks the master");
        assert_eq!(p, Packet::AskBeginTransaction { tid: None });
        let ttid = Tid(201); // odd: partition 1, on S2 only
        let out = self.answer(self.m, mid, Packet::AnswerBeginTransaction { ttid });
        match World::reply_of(&out, id) {
            Ok(Outcome::Began { txn, ttid: t }) => {
                assert_eq!(t, ttid);
                (txn, ttid)
            }
            other => panic!("{other:?}"),
        }
    }
}

fn object(oid: Oid, serial: Tid, next: Option<Tid>, data: &[u8]) -> Packet {
    Packet::AnswerObject {
        oid,
        serial,
        next_serial: next,
        compression: 0,
        checksum: sha(data),
        data: Some(Data(data.to_vec())),
        data_serial: None,
    }
}

fn loaded(r: Result<Outcome, ClientError>) -> Loaded {
    match r {
        Ok(Outcome::Loaded(l)) => l,
        other => panic!("{other:?}"),
    }
}

#[test]
fn identification_snapshot_and_invalidations() {
    let mut w = World::new(config(false), None);
    let (id, out) = w.call(Op::LastTransaction);
    assert_eq!(World::reply_of(&out, id), Ok(Outcome::Tid(Some(Tid(100)))));
    let out = w.notify(Packet::InvalidateObjects {
        tid: Tid(105),
        oids: vec![Oid(1)],
    });
    assert_eq!(
        notices(&out),
        vec![Notice::Invalidate {
            tid: Tid(105),
            oids: vec![Oid(1)]
        }]
    );
    assert_eq!(w.h.actor.last_tid(), Some(Tid(105)));
    // The primary is lost; a new one is found.
    w.h.handle(Event::Closed {
        conn: w.m,
        reason: CloseReason::Reset,
    });
    w.h.elapsed += Duration::from_secs(2);
    let out = w.h.tick();
    w.m = first_connect(&out).expect("reconnects");
    let m = w.m;
    let sent = msgs(&out, m);
    w.h.handle(Event::Connected { conn: m });
    let accept = Packet::AcceptIdentification {
        node_type: NodeType::Master,
        nid: Some(Nid::new(NodeType::Master, 1)),
        your_nid: Some(Nid::new(NodeType::Client, 1)),
    };
    let out = w.answer(m, sent[0].0, accept);
    let snap = msgs(&out, m)[0].0;
    // An invalidation before the snapshot's answer is covered by it: ignored.
    let out = w.notify(Packet::InvalidateObjects {
        tid: Tid(110),
        oids: vec![Oid(2)],
    });
    assert!(notices(&out).is_empty());
    let out = w.answer(
        m,
        snap,
        Packet::AnswerLastTransaction {
            tid: Some(Tid(110)),
        },
    );
    assert_eq!(
        notices(&out),
        vec![Notice::InvalidateAll {
            tid: Some(Tid(110))
        }]
    );
    assert_eq!(w.h.actor.last_tid(), Some(Tid(110)));
}

#[test]
fn loads_retry_on_a_non_readable_cell_and_share_one_request() {
    let mut w = World::new(config(false), None);
    let oid = Oid(2); // partition 0: S1 and S2
    let (c1, out) = w.call(Op::Load {
        oid,
        at: None,
        before: None,
    });
    let sends = w.storage_sends(&out);
    assert_eq!(sends.len(), 1, "{sends:?}");
    let (first, id, p) = sends[0].clone();
    assert_eq!(
        p,
        Packet::AskObject {
            oid,
            at: None,
            before: Some(Tid(101))
        }
    );
    // The same load again waits for the same answer.
    let (c2, out) = w.call(Op::Load {
        oid,
        at: None,
        before: None,
    });
    assert!(w.storage_sends(&out).is_empty());
    assert!(replies(&out).is_empty());
    let out = w.answer(
        w.storages[&first],
        id,
        Packet::error(ErrorCode::NonReadableCell, "no"),
    );
    let sends = w.storage_sends(&out);
    assert_eq!(sends.len(), 1);
    let (second, id, _) = sends[0].clone();
    assert_ne!(first, second, "another cell");
    let out = w.answer(
        w.storages[&second],
        id,
        object(oid, Tid(50), None, b"hello"),
    );
    for c in [c1, c2] {
        let l = loaded(World::reply_of(&out, c));
        assert_eq!(l.data.as_deref(), Some(&b"hello"[..]));
        assert_eq!((l.serial, l.next_serial), (Tid(50), None));
    }
    // Now a hit: no request.
    let (c3, out) = w.call(Op::Load {
        oid,
        at: None,
        before: None,
    });
    assert_eq!(loaded(World::reply_of(&out, c3)).serial, Tid(50));
    // Unknown objects.
    let (c4, out) = w.call(Op::Load {
        oid: Oid(4),
        at: Some(Tid(3)),
        before: None,
    });
    let (nid, id, _) = w.storage_sends(&out)[0].clone();
    let out = w.answer(
        w.storages[&nid],
        id,
        Packet::error(ErrorCode::OidNotFound, "no"),
    );
    assert_eq!(
        World::reply_of(&out, c4),
        Err(ClientError::NotFound(Oid(4)))
    );
}

#[test]
fn a_load_with_no_usable_cell_yet_waits_for_one_up_to_the_deadline() {
    let mut w = World::new(config(false), None);
    // Right after connecting, S2 (the only cell of partition 1) is not known running.
    let mut s2 = storage_node(S2);
    s2.state = NodeState::Down;
    w.notify(Packet::NotifyNodeInformation {
        timestamp: WallTime(2),
        nodes: vec![s2],
    });
    let oid = Oid(1); // partition 1: S2 only
    let load = Op::Load {
        oid,
        at: None,
        before: None,
    };
    let (c1, out) = w.call(load.clone());
    assert!(replies(&out).is_empty(), "waits: {out:?}");
    assert!(w.storage_sends(&out).is_empty());
    // The primary tells S2 runs: the load goes out and is answered.
    let out = w.notify(Packet::NotifyNodeInformation {
        timestamp: WallTime(3),
        nodes: vec![storage_node(S2)],
    });
    let sends = w.storage_sends(&out);
    assert_eq!(sends.len(), 1, "{sends:?}");
    let (nid, id, _) = sends[0].clone();
    assert_eq!(nid, S2);
    let out = w.answer(w.storages[&S2], id, object(oid, Tid(50), None, b"x"));
    assert_eq!(loaded(World::reply_of(&out, c1)).serial, Tid(50));
    assert!(w.h.actor.cell_waits.is_empty());
    // With no cell ever usable, the load fails at the call deadline, not before.
    let mut s2 = storage_node(S2);
    s2.state = NodeState::Down;
    w.notify(Packet::NotifyNodeInformation {
        timestamp: WallTime(4),
        nodes: vec![s2],
    });
    let (c2, out) = w.call(Op::Load {
        oid: Oid(3),
        at: Some(Tid(40)),
        before: None,
    });
    assert!(replies(&out).is_empty());
    w.h.elapsed += CALL_DEADLINE - Duration::from_secs(1);
    assert!(replies(&w.h.tick()).is_empty());
    w.h.elapsed += Duration::from_secs(2);
    let out = w.h.tick();
    match World::reply_of(&out, c2) {
        Err(ClientError::Unavailable(why)) => assert!(why.contains("no readable cell"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(w.h.actor.cell_waits.is_empty() && w.h.actor.loads.is_empty());
}

#[test]
fn wrong_checksums_try_another_replica_and_data_is_decompressed() {
    let mut w = World::new(config(false), None);
    let oid = Oid(6);
    let bad = Packet::AnswerObject {
        oid,
        serial: Tid(40),
        next_serial: None,
        compression: 0,
        checksum: sha(b"other"),
        data: Some(Data(b"data".to_vec())),
        data_serial: None,
    };
    let (c, out) = w.call(Op::Load {
        oid,
        at: Some(Tid(40)),
        before: None,
    });
    let (n1, id, _) = w.storage_sends(&out)[0].clone();
    let out = w.answer(w.storages[&n1], id, bad.clone());
    let (n2, id, _) = w.storage_sends(&out)[0].clone();
    assert_ne!(n1, n2);
    let out = w.answer(w.storages[&n2], id, bad);
    assert_eq!(
        World::reply_of(&out, c),
        Err(ClientError::WrongChecksum {
            oid,
            serial: Tid(40)
        })
    );
    // A bad replica then a good, compressed one.
    let plain = vec![7u8; 1000];
    let z = zlib(&plain).unwrap();
    let good = Packet::AnswerObject {
        oid,
        serial: Tid(40),
        next_serial: None,
        compression: 1,
        checksum: sha(&z),
        data: Some(Data(z.clone())),
        data_serial: None,
    };
    let corrupt = Packet::AnswerObject {
        oid,
        serial: Tid(40),
        next_serial: None,
        compression: 1,
        checksum: sha(&z),
        data: Some(Data(z[..z.len() - 1].to_vec())),
        data_serial: None,
    };
    let (c, out) = w.call(Op::Load {
        oid,
        at: Some(Tid(40)),
        before: None,
    });
    let (n1, id, _) = w.storage_sends(&out)[0].clone();
    let out = w.answer(w.storages[&n1], id, corrupt);
    assert!(replies(&out).is_empty());
    let (n2, id, _) = w.storage_sends(&out)[0].clone();
    let out = w.answer(w.storages[&n2], id, good);
    assert_eq!(loaded(World::reply_of(&out, c)).data, Some(plain));
}

#[test]
fn a_load_that_raced_an_invalidation_is_cached_as_closed() {
    let mut w = World::new(config(false), None);
    let oid = Oid(8);
    let (c, out) = w.call(Op::Load {
        oid,
        at: None,
        before: None,
    });
    let (nid, id, _) = w.storage_sends(&out)[0].clone();
    // Transaction 120 changes the object after the load was sent, before its answer.
    let out = w.notify(Packet::InvalidateObjects {
        tid: Tid(120),
        oids: vec![oid],
    });
    assert_eq!(notices(&out).len(), 1);
    let out = w.answer(w.storages[&nid], id, object(oid, Tid(90), None, b"old"));
    let l = loaded(World::reply_of(&out, c));
    assert_eq!((l.serial, l.next_serial), (Tid(90), Some(Tid(120))));
    // The cache knows it is not current: a latest load asks again.
    let (_, out) = w.call(Op::Load {
        oid,
        at: None,
        before: None,
    });
    assert_eq!(w.storage_sends(&out).len(), 1, "not served from the cache");
    // But the closed revision serves a read before 120.
    let (c, out) = w.call(Op::Load {
        oid,
        at: None,
        before: Some(Tid(120)),
    });
    assert_eq!(
        loaded(World::reply_of(&out, c)).data.as_deref(),
        Some(&b"old"[..])
    );
    // Shared with the library's threads.
    let cache = w.h.actor.cache();
    let hit = cache::lock(&cache).get(oid, Some(Tid(90)), None).unwrap();
    assert_eq!(hit.next_serial, Some(Tid(120)));
}

/// Seed 341182728: a load below our snapshot (the workload's pinned `before`) sent after
/// an invalidation of its object, answered by a storage that had not unlocked that commit
/// yet (no next serial), was cached as current; the next latest load read the old revision.
#[test]
fn a_load_below_our_snapshot_is_not_cached_as_current() {
    let mut w = World::new(config(false), None);
    let oid = Oid(8);
    w.notify(Packet::InvalidateObjects {
        tid: Tid(120),
        oids: vec![oid],
    });
    let (c, out) = w.call(Op::Load {
        oid,
        at: None,
        before: Some(Tid(110)),
    });
    let (nid, id, _) = w.storage_sends(&out)[0].clone();
    let out = w.answer(w.storages[&nid], id, object(oid, Tid(90), None, b"old"));
    assert_eq!(loaded(World::reply_of(&out, c)).serial, Tid(90));
    let (_, out) = w.call(Op::Load {
        oid,
        at: None,
        before: None,
    });
    assert_eq!(w.storage_sends(&out).len(), 1, "not served from the cache");
    let hit = cache::lock(&w.h.actor.cache()).get(oid, None, None);
    assert!(hit.is_none(), "{hit:?}");
}

#[test]
fn a_load_learns_the_first_invalidation_above_its_answer() {
    let mut w = World::new(config(false), None);
    let oid = Oid(8);
    let (c, out) = w.call(Op::Load {
        oid,
        at: Some(Tid(150)),
        before: None,
    });
    let (nid, id, _) = w.storage_sends(&out)[0].clone();
    for tid in [120, 160, 170] {
        w.notify(Packet::InvalidateObjects {
            tid: Tid(tid),
            oids: vec![oid],
        });
    }
    let out = w.answer(w.storages[&nid], id, object(oid, Tid(150), None, b"v"));
    let l = loaded(World::reply_of(&out, c));
    assert_eq!((l.serial, l.next_serial), (Tid(150), Some(Tid(160))));
}

/// Store `data` on `oid` in `txn`; returns the stores sent (they must be answered).
fn store(
    w: &mut World,
    txn: TxnRef,
    oid: Oid,
    serial: Tid,
    data: Option<&[u8]>,
) -> Vec<(Nid, u32, Packet)> {
    let (c, out) = w.call(Op::Store {
        txn,
        oid,
        serial,
        data: data.map(|d| d.to_vec()),
        data_serial: None,
    });
    assert_eq!(
        World::reply_of(&out, c),
        Ok(Outcome::Done),
        "answered at once"
    );
    w.storage_sends(&out)
}

fn vote_op(txn: TxnRef) -> Op {
    Op::Vote {
        txn,
        user: b"u".to_vec(),
        description: b"d".to_vec(),
        extension: vec![],
    }
}

#[test]
fn a_whole_commit() {
    let mut w = World::new(config(false), None);
    let (txn, ttid) = w.begin();
    let data = vec![b'x'; 500];
    let oid = Oid(2); // partition 0: S1 and S2
    let sends = store(&mut w, txn, oid, Tid(50), Some(&data));
    assert_eq!(sends.len(), 2, "to every cell");
    for (_, _, p) in &sends {
        match p {
            Packet::AskStoreObject {
                oid: o,
                serial,
                compression,
                checksum,
                data: Some(d),
                ttid: t,
                ..
            } => {
                assert_eq!((*o, *serial, *t), (oid, Tid(50), ttid));
                assert_eq!(*compression, 1, "compressible data is compressed");
                assert_eq!(*checksum, sha(&d.0));
                assert_eq!(decompress(&d.0).unwrap(), data);
            }
            other => panic!("{other:?}"),
        }
    }
    let (vc, out) = w.call(vote_op(txn));
    assert!(replies(&out).is_empty(), "waits for the stores");
    let mut out = vec![];
    for (nid, id, _) in &sends {
        out.extend(w.answer(
            w.storages[nid],
            *id,
            Packet::AnswerStoreObject { conflict: None },
        ));
    }
    let votes = w.storage_sends(&out);
    // partition(ttid) = 1, on S2 only: the metadata goes there, S1 just votes.
    let mut meta = None;
    for (nid, id, p) in &votes {
        match (nid, p) {
            (
                &S2,
                Packet::AskStoreTransaction {
                    ttid: t,
                    user,
                    oids,
                    ..
                },
            ) => {
                assert_eq!(
                    (*t, user.0.as_slice(), oids.as_slice()),
                    (ttid, &b"u"[..], &[oid][..])
                );
                meta = Some(*id);
            }
            (&S1, Packet::AskVoteTransaction { ttid: t }) => assert_eq!(*t, ttid),
            other => panic!("{other:?}"),
        }
    }
    assert!(meta.is_some());
    assert_eq!(votes.len(), 2);
    let mut out = vec![];
    for (nid, id, p) in &votes {
        let a = match p {
            Packet::AskStoreTransaction { .. } => Packet::AnswerStoreTransaction,
            _ => Packet::AnswerVoteTransaction,
        };
        out.extend(w.answer(w.storages[nid], *id, a));
    }
    assert_eq!(World::reply_of(&out, vc), Ok(Outcome::Done));
    let (fc, out) = w.call(Op::Finish { txn });
    let (mid, p) = msgs(&out, w.m).pop().unwrap();
    assert_eq!(
        p,
        Packet::AskFinishTransaction {
            ttid,
            oids: vec![oid],
            deleted: vec![],
            checked: vec![]
        }
    );
    let tid = Tid(203);
    let out = w.answer(w.m, mid, Packet::AnswerTransactionFinished { ttid, tid });
    assert_eq!(World::reply_of(&out, fc), Ok(Outcome::Tid(Some(tid))));
    assert_eq!(w.h.actor.last_tid(), Some(tid));
    // The cache has our data as current.
    let (c, out) = w.call(Op::Load {
        oid,
        at: None,
        before: None,
    });
    let l = loaded(World::reply_of(&out, c));
    assert_eq!((l.serial, l.data), (tid, Some(data)));
    w.h.actor.check_invariants().unwrap();
}

/// Begin, store `oid` and answer its stores with `conflict`, then vote.
fn voted_with(w: &mut World, oid: Oid, conflict: Option<Tid>) -> (TxnRef, CallId, Vec<Effect>) {
    let (txn, _) = w.begin();
    let sends = store(w, txn, oid, Tid(50), Some(b"mine"));
    let (vc, _) = w.call(vote_op(txn));
    let mut out = vec![];
    for (i, (nid, id, _)) in sends.iter().enumerate() {
        let c = if i == 0 { conflict } else { None };
        out.extend(w.answer(
            w.storages[nid],
            *id,
            Packet::AnswerStoreObject { conflict: c },
        ));
    }
    (txn, vc, out)
}

#[test]
fn conflicts_are_returned_at_vote_and_resolved_by_storing_again() {
    let mut w = World::new(config(false), None);
    let oid = Oid(2);
    let (txn, vc, out) = voted_with(&mut w, oid, Some(Tid(70)));
    assert_eq!(
        World::reply_of(&out, vc),
        Ok(Outcome::Conflicts(vec![Conflict {
            oid,
            serial: Tid(50),
            committed: Tid(70),
            data: Some(b"mine".to_vec())
        }]))
    );
    let sends = store(&mut w, txn, oid, Tid(70), Some(b"resolved"));
    let (vc, _) = w.call(vote_op(txn));
    let mut out = vec![];
    for (nid, id, p) in &sends {
        assert!(matches!(
            p,
            Packet::AskStoreObject {
                serial: Tid(70),
                ..
            }
        ));
        out.extend(w.answer(
            w.storages[nid],
            *id,
            Packet::AnswerStoreObject { conflict: None },
        ));
    }
    assert!(replies(&out).iter().all(|r| r.id != vc), "now votes");
    assert_eq!(w.storage_sends(&out).len(), 2);
}

#[test]
fn a_conflict_older_than_the_stored_serial_is_a_failed_storage_not_a_conflict() {
    // Seed 212: a storage dropped at a failed vote (not told yet) still had the revision
    // before ours; its "conflict" must not make us rebase on that older revision.
    let mut w = World::new(config(false), None);
    let oid = Oid(2);
    let (txn, vc, out) = voted_with(&mut w, oid, Some(Tid(40)));
    assert!(
        replies(&out).iter().all(|r| r.id != vc),
        "no conflict to resolve: votes"
    );
    assert!(!w.storage_sends(&out).is_empty());
    let t = &w.h.actor.txns[&txn];
    let stale = t.objects[&oid]
        .cells
        .iter()
        .find(|(_, a)| **a != Ans::Locked)
        .map(|(n, a)| (*n, *a));
    let (nid, a) = stale.expect("the stale storage's answer");
    assert_eq!(a, Ans::Failed);
    assert!(t.lost.contains(&nid));
}

#[test]
fn a_read_current_conflict_fails_the_vote() {
    let mut w = World::new(config(false), None);
    let (txn, _) = w.begin();
    let (c, out) = w.call(Op::CheckCurrentSerial {
        txn,
        oid: Oid(3),
        serial: Tid(30),
    });
    assert_eq!(World::reply_of(&out, c), Ok(Outcome::Done));
    let sends = w.storage_sends(&out);
    assert_eq!(sends.len(), 1, "partition 1: S2");
    let (vc, _) = w.call(vote_op(txn));
    let (nid, id, _) = sends[0].clone();
    let out = w.answer(
        w.storages[&nid],
        id,
        Packet::AnswerCheckCurrentSerial {
            conflict: Some(Tid(35)),
        },
    );
    assert_eq!(
        World::reply_of(&out, vc),
        Err(ClientError::ReadConflict {
            oid: Oid(3),
            serial: Tid(30),
            current: Tid(35)
        })
    );
}

#[test]
fn a_deadlock_notification_relocks_and_a_relocked_conflict_is_resolved_at_vote() {
    let mut w = World::new(config(false), None);
    let (txn, ttid) = w.begin();
    let oid = Oid(2);
    let sends = store(&mut w, txn, oid, Tid(50), Some(b"mine"));
    for (nid, id, _) in &sends {
        w.answer(
            w.storages[nid],
            *id,
            Packet::AnswerStoreObject { conflict: None },
        );
    }
    let s1 = w.storages[&S1];
    let out = w.answer(s1, 77, Packet::NotifyDeadlock { ttid, oid });
    let relock = msgs(&out, s1);
    assert_eq!(relock.len(), 1);
    assert_eq!(relock[0].1, Packet::AskRelockObject { ttid, oid });
    let (vc, out) = w.call(vote_op(txn));
    assert!(replies(&out).is_empty(), "waits for the relock");
    let out = w.answer(
        s1,
        relock[0].0,
        Packet::AnswerRelockObject {
            conflict: Some(Relocked {
                serial: Tid(50),
                conflict: Tid(60),
                data: None,
            }),
        },
    );
    match World::reply_of(&out, vc) {
        Ok(Outcome::Conflicts(c)) => assert_eq!((c[0].oid, c[0].committed), (oid, Tid(60))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_relocked_answer_without_a_conflict_serial_is_a_failure() {
    let mut w = World::new(config(false), None);
    let (txn, ttid) = w.begin();
    let oid = Oid(2);
    let sends = store(&mut w, txn, oid, Tid(50), Some(b"mine"));
    for (nid, id, _) in &sends {
        w.answer(
            w.storages[nid],
            *id,
            Packet::AnswerStoreObject { conflict: None },
        );
    }
    let s1 = w.storages[&S1];
    let out = w.answer(s1, 77, Packet::NotifyDeadlock { ttid, oid });
    let relock = msgs(&out, s1);
    w.answer(
        s1,
        relock[0].0,
        Packet::AnswerRelockObject {
            conflict: Some(Relocked {
                serial: Tid(50),
                conflict: Tid::ZERO,
                data: None,
            }),
        },
    );
    let t = &w.h.actor.txns[&txn];
    assert!(t.lost.contains(&S1), "not taken as locked");
    assert_eq!(t.objects[&oid].cells[&S1], Ans::Failed);
}

#[test]
fn a_store_waiting_for_locks_has_no_deadline_of_its_own() {
    let mut w = World::new(config(false), None);
    let (txn, _) = w.begin();
    let oid = Oid(2);
    let sends = store(&mut w, txn, oid, Tid(50), Some(b"mine"));
    assert_eq!(sends.len(), 2);
    // The storages answer pings but hold the store (another transaction has the lock).
    for _ in 0..60 {
        w.h.elapsed += Duration::from_secs(1);
        let out = w.h.tick();
        let conns: Vec<ConnId> = w.storages.values().copied().chain([w.m]).collect();
        for conn in conns {
            for (id, p) in msgs(&out, conn) {
                if p == Packet::Ping {
                    w.answer(conn, id, Packet::Pong);
                }
            }
        }
        assert!(
            !out.iter().any(|e| matches!(e, Effect::Close { .. })),
            "{out:?}"
        );
    }
    let t = &w.h.actor.txns[&txn];
    assert!(t.lost.is_empty());
    assert!(t.objects[&oid].cells.values().all(|a| *a == Ans::Pending));
}

#[test]
fn a_begin_answered_after_its_call_timed_out_is_aborted() {
    let mut w = World::new(config(false), None);
    let (c, out) = w.call(Op::TpcBegin { tid: None });
    let (mid, _) = msgs(&out, w.m).pop().expect("asks the master");
    let mut replied = vec![];
    for _ in 0..40 {
        w.h.elapsed += Duration::from_secs(1);
        let out = w.h.tick();
        for (id, p) in msgs(&out, w.m) {
            if p == Packet::Ping {
                w.answer(w.m, id, Packet::Pong);
            }
        }
        replied.extend(replies(&out));
    }
    assert!(
        matches!(&replied[..], [Reply { id, result: Err(ClientError::Unavailable(_)) }] if *id == c),
        "{replied:?}"
    );
    let ttid = Tid(201);
    let out = w.answer(w.m, mid, Packet::AnswerBeginTransaction { ttid });
    assert!(replies(&out).is_empty());
    assert_eq!(
        msgs(&out, w.m),
        vec![(
            msgs(&out, w.m)[0].0,
            Packet::AbortTransaction { ttid, nids: vec![] }
        )]
    );
    assert!(w.h.actor.txns.is_empty());
}

/// A voted transaction storing oid 2, finish requested; returns (txn, ttid, finish call).
fn finishing(w: &mut World) -> (TxnRef, Tid, CallId) {
    let (txn, vc, out) = voted_with(w, Oid(2), None);
    let votes = w.storage_sends(&out);
    let mut out = vec![];
    for (nid, id, p) in &votes {
        let a = match p {
            Packet::AskStoreTransaction { .. } => Packet::AnswerStoreTransaction,
            _ => Packet::AnswerVoteTransaction,
        };
        out.extend(w.answer(w.storages[nid], *id, a));
    }
    assert_eq!(World::reply_of(&out, vc), Ok(Outcome::Done));
    let ttid = w.h.actor.txns[&txn].ttid;
    let (fc, out) = w.call(Op::Finish { txn });
    assert!(matches!(
        msgs(&out, w.m).pop(),
        Some((_, Packet::AskFinishTransaction { .. }))
    ));
    (txn, ttid, fc)
}

#[test]
fn a_load_racing_our_own_commit_is_not_taken_as_current() {
    let mut w = World::new(config(false), None);
    let oid = Oid(2);
    let (txn, vc, out) = voted_with(&mut w, oid, None);
    let mut out2 = vec![];
    for (nid, id, p) in &w.storage_sends(&out) {
        let a = match p {
            Packet::AskStoreTransaction { .. } => Packet::AnswerStoreTransaction,
            _ => Packet::AnswerVoteTransaction,
        };
        out2.extend(w.answer(w.storages[nid], *id, a));
    }
    assert_eq!(World::reply_of(&out2, vc), Ok(Outcome::Done));
    let (lc, out) = w.call(Op::Load {
        oid,
        at: None,
        before: None,
    });
    let (nid, lid, _) = w.storage_sends(&out)[0].clone();
    let (fc, out) = w.call(Op::Finish { txn });
    let (mid, _) = msgs(&out, w.m).pop().unwrap();
    let ttid = w.h.actor.txns[&txn].ttid;
    let tid = Tid(203);
    let out = w.answer(w.m, mid, Packet::AnswerTransactionFinished { ttid, tid });
    assert_eq!(World::reply_of(&out, fc), Ok(Outcome::Tid(Some(tid))));
    // The storage answers the load as of before our commit.
    let out = w.answer(w.storages[&nid], lid, object(oid, Tid(50), None, b"old"));
    let l = loaded(World::reply_of(&out, lc));
    assert_eq!((l.serial, l.next_serial), (Tid(50), Some(tid)));
}

#[test]
fn a_final_tid_refused_by_a_non_readable_cell_is_asked_elsewhere() {
    let mut w = World::new(config(false), None);
    let (_, ttid, fc) = finishing(&mut w);
    let out = reconnect(&mut w, Some(Tid(100)));
    let (mid, _) = msgs(&out, w.m).pop().expect("asks the outcome");
    w.notify(Packet::SendPartitionTable {
        ptid: Some(Ptid(2)),
        num_replicas: 1,
        rows: vec![
            vec![(S1, CellState::UpToDate), (S2, CellState::UpToDate)],
            vec![(S1, CellState::UpToDate), (S2, CellState::UpToDate)],
        ],
    });
    let out = w.answer(
        w.m,
        mid,
        Packet::AnswerFinalTID {
            tid: Some(Tid::MAX),
        },
    );
    let (first, id, _) = w.storage_sends(&out)[0].clone();
    let refused = Packet::error(ErrorCode::NonReadableCell, "not readable here");
    let out = w.answer(w.storages[&first], id, refused);
    let sends = w.storage_sends(&out);
    let asked: Vec<_> = sends
        .iter()
        .filter(|(_, _, p)| *p == Packet::AskFinalTID { ttid })
        .collect();
    assert_eq!(asked.len(), 1, "{sends:?}");
    let (other, id, _) = asked[0].clone();
    assert_ne!(other, first);
    let out = w.answer(
        w.storages[&other],
        id,
        Packet::AnswerFinalTID {
            tid: Some(Tid(205)),
        },
    );
    assert_eq!(World::reply_of(&out, fc), Ok(Outcome::Tid(Some(Tid(205)))));
}

/// Lose the primary and identify to it again; returns what the client sent after the
/// snapshot.
fn reconnect(w: &mut World, last: Option<Tid>) -> Vec<Effect> {
    w.h.handle(Event::Closed {
        conn: w.m,
        reason: CloseReason::Reset,
    });
    w.h.elapsed += Duration::from_secs(2);
    let out = w.h.tick();
    w.m = first_connect(&out).expect("reconnects");
    w.identify(&out, last)
}

#[test]
fn a_lost_finish_answer_is_learnt_from_the_primary_then_a_storage() {
    let mut w = World::new(config(false), None);
    let (_, ttid, fc) = finishing(&mut w);
    let out = reconnect(&mut w, Some(Tid(100)));
    let (mid, p) = msgs(&out, w.m).pop().expect("asks the outcome");
    assert_eq!(p, Packet::AskFinalTID { ttid });
    let out = w.answer(
        w.m,
        mid,
        Packet::AnswerFinalTID {
            tid: Some(Tid::MAX),
        },
    );
    let sends = w.storage_sends(&out);
    assert_eq!(sends.len(), 1);
    let (nid, id, p) = sends[0].clone();
    assert_eq!(
        (nid, p),
        (S2, Packet::AskFinalTID { ttid }),
        "a cell of partition(ttid)"
    );
    let out = w.answer(
        w.storages[&nid],
        id,
        Packet::AnswerFinalTID {
            tid: Some(Tid(205)),
        },
    );
    assert_eq!(World::reply_of(&out, fc), Ok(Outcome::Tid(Some(Tid(205)))));
    w.h.actor.check_invariants().unwrap();

    // The primary says it was aborted.
    let (_, _, fc) = finishing(&mut w);
    let out = reconnect(&mut w, Some(Tid(205)));
    let (mid, _) = msgs(&out, w.m).pop().unwrap();
    let out = w.answer(w.m, mid, Packet::AnswerFinalTID { tid: None });
    assert!(matches!(
        World::reply_of(&out, fc),
        Err(ClientError::TransactionFailed(_))
    ));

    // Nobody answers in time: the outcome is unknown.
    let (_, _, fc) = finishing(&mut w);
    w.h.handle(Event::Closed {
        conn: w.m,
        reason: CloseReason::Reset,
    });
    let mut replied = vec![];
    for _ in 0..70 {
        w.h.elapsed += Duration::from_secs(1);
        replied.extend(replies(&w.h.tick()));
    }
    assert!(
        matches!(&replied[..], [Reply { id, result: Err(ClientError::OutcomeUnknown(_)) }] if *id == fc),
        "{replied:?}"
    );
    assert!(w.h.actor.txns.is_empty());
}

#[test]
fn the_primary_lost_before_finishing_fails_the_transaction() {
    let mut w = World::new(config(false), None);
    let (txn, _) = w.begin();
    store(&mut w, txn, Oid(2), Tid(50), Some(b"x"));
    reconnect(&mut w, Some(Tid(100)));
    let (c, out) = w.call(vote_op(txn));
    assert!(matches!(
        World::reply_of(&out, c),
        Err(ClientError::TransactionFailed(_))
    ));
    let (c, out) = w.call(Op::Abort { txn });
    assert_eq!(World::reply_of(&out, c), Ok(Outcome::Done));
}

#[test]
fn abort_tells_the_storages_used_and_the_primary() {
    let mut w = World::new(config(false), None);
    let (txn, ttid) = w.begin();
    store(&mut w, txn, Oid(2), Tid(50), Some(b"x"));
    let (c, out) = w.call(Op::Abort { txn });
    assert_eq!(World::reply_of(&out, c), Ok(Outcome::Done));
    for nid in [S1, S2] {
        assert_eq!(
            msgs(&out, w.storages[&nid])
                .into_iter()
                .map(|(_, p)| p)
                .collect::<Vec<_>>(),
            vec![Packet::AbortTransaction { ttid, nids: vec![] }]
        );
    }
    assert_eq!(
        msgs(&out, w.m).pop().unwrap().1,
        Packet::AbortTransaction {
            ttid,
            nids: vec![S1, S2]
        }
    );
    let (c, out) = w.call(vote_op(txn));
    assert!(matches!(
        World::reply_of(&out, c),
        Err(ClientError::Invalid(_))
    ));
    w.h.actor.check_invariants().unwrap();
}

#[test]
fn a_read_only_client_refuses_writes() {
    let mut w = World::new(config(true), None);
    for op in [
        Op::TpcBegin { tid: None },
        Op::NewOids { count: 1 },
        Op::Store {
            txn: 1,
            oid: Oid(1),
            serial: Tid::ZERO,
            data: None,
            data_serial: None,
        },
    ] {
        let (c, out) = w.call(op);
        assert_eq!(World::reply_of(&out, c), Err(ClientError::ReadOnly));
    }
}

/// The finish request of a transaction that stored oid 2 and checked oid 5.
fn finish_request(mutant: Option<&'static str>) -> Packet {
    let mut w = World::new(config(false), mutant);
    let (txn, _) = w.begin();
    let mut sends = store(&mut w, txn, Oid(2), Tid(50), Some(b"x"));
    let (_, out) = w.call(Op::CheckCurrentSerial {
        txn,
        oid: Oid(5),
        serial: Tid(40),
    });
    sends.extend(w.storage_sends(&out));
    let (vc, _) = w.call(vote_op(txn));
    let mut out = vec![];
    for (nid, id, p) in &sends {
        let a = match p {
            Packet::AskStoreObject { .. } => Packet::AnswerStoreObject { conflict: None },
            _ => Packet::AnswerCheckCurrentSerial { conflict: None },
        };
        out.extend(w.answer(w.storages[nid], *id, a));
    }
    let votes = w.storage_sends(&out);
    let mut out = vec![];
    for (nid, id, p) in &votes {
        let a = match p {
            Packet::AskStoreTransaction { oids, .. } => {
                assert_eq!(oids, &vec![Oid(2), Oid(5)], "written or checked");
                Packet::AnswerStoreTransaction
            }
            _ => Packet::AnswerVoteTransaction,
        };
        out.extend(w.answer(w.storages[nid], *id, a));
    }
    assert_eq!(World::reply_of(&out, vc), Ok(Outcome::Done));
    let (_, out) = w.call(Op::Finish { txn });
    msgs(&out, w.m).pop().unwrap().1
}

#[test]
fn read_current_oids_are_not_invalidated_unless_the_mutant_says_so() {
    let normal = finish_request(None);
    assert_eq!(
        normal,
        Packet::AskFinishTransaction {
            ttid: Tid(201),
            oids: vec![Oid(2)],
            deleted: vec![],
            checked: vec![1]
        }
    );
    if cfg!(feature = "mutants") {
        let mutant = finish_request(Some("readcurrent-invalidates"));
        assert_ne!(mutant, normal);
        assert!(
            matches!(mutant, Packet::AskFinishTransaction { oids, .. } if oids.contains(&Oid(5)))
        );
    }
}

#[test]
fn new_oids_come_from_a_pool_refilled_a_hundred_at_a_time() {
    let mut w = World::new(config(false), None);
    let (c, out) = w.call(Op::NewOids { count: 3 });
    let (mid, p) = msgs(&out, w.m).pop().unwrap();
    assert_eq!(p, Packet::AskNewOIDs { count: 100 });
    let oids: Vec<Oid> = (1..=100).map(Oid).collect();
    let out = w.answer(w.m, mid, Packet::AnswerNewOIDs { oids });
    assert_eq!(
        World::reply_of(&out, c),
        Ok(Outcome::Oids(vec![Oid(1), Oid(2), Oid(3)]))
    );
    let (c, out) = w.call(Op::NewOids { count: 2 });
    assert!(msgs(&out, w.m).is_empty());
    assert_eq!(
        World::reply_of(&out, c),
        Ok(Outcome::Oids(vec![Oid(4), Oid(5)]))
    );
}

#[test]
fn every_call_is_answered_once_when_the_cluster_is_down_or_the_client_stops() {
    let mut h = Harness::new(Client::new(config(false)));
    h.start();
    let call =
        |h: &mut Harness<Client>, id, op| h.handle(Event::Local(Command::Call(Call { id, op })));
    let out = call(&mut h, 1, Op::Sync);
    assert!(replies(&out).is_empty(), "waits for a primary");
    call(&mut h, 2, Op::TpcBegin { tid: None });
    let mut got = vec![];
    for _ in 0..35 {
        h.elapsed += Duration::from_secs(1);
        got.extend(replies(&h.tick()));
    }
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got
        .iter()
        .all(|r| matches!(r.result, Err(ClientError::Unavailable(_)))));
    call(&mut h, 3, Op::Sync);
    let out = h.handle(Event::Local(Command::Shutdown));
    assert_eq!(
        replies(&out),
        vec![Reply {
            id: 3,
            result: Err(ClientError::Closed)
        }]
    );
    let out = call(&mut h, 4, Op::LastTransaction);
    assert_eq!(replies(&out)[0].result, Err(ClientError::Closed));
}

/// Runs the client's actor with a list of calls, one handed to it before each event.
struct Driven {
    client: Client,
    ops: Vec<Op>,
    next: CallId,
}

impl crate::actors::Actor for Driven {
    fn start(&mut self, cx: &mut Ctx) {
        crate::actors::Actor::start(&mut self.client, cx);
    }

    fn handle(&mut self, cx: &mut Ctx, ev: Event) {
        if let Some(op) = self.ops.pop() {
            self.next += 1;
            let call = Call { id: self.next, op };
            crate::actors::Actor::handle(&mut self.client, cx, Event::Local(Command::Call(call)));
        }
        crate::actors::Actor::handle(&mut self.client, cx, ev);
    }
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    let oid = (0u64..6).prop_map(Oid);
    let tid = prop_oneof![Just(None), (0u64..300).prop_map(|t| Some(Tid(t)))];
    prop_oneof![
        (oid.clone(), tid.clone()).prop_map(|(oid, at)| Op::Load {
            oid,
            at,
            before: None
        }),
        Just(Op::TpcBegin { tid: None }),
        Just(Op::Sync),
        (0u32..200).prop_map(|count| Op::NewOids { count }),
        (
            1u64..4,
            oid.clone(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))
        )
            .prop_map(|(txn, oid, data)| Op::Store {
                txn,
                oid,
                serial: Tid::ZERO,
                data,
                data_serial: None,
            }),
        (1u64..4, oid.clone()).prop_map(|(txn, oid)| Op::CheckCurrentSerial {
            txn,
            oid,
            serial: Tid(1)
        }),
        (1u64..4).prop_map(vote_op),
        (1u64..4).prop_map(|txn| Op::Finish { txn }),
        (1u64..4).prop_map(|txn| Op::Abort { txn }),
        (1u64..4, oid.clone(), 0u64..300).prop_map(|(txn, oid, s)| Op::Store {
            txn,
            oid,
            serial: Tid(1),
            data: None,
            data_serial: Some(Tid(s)),
        }),
        (0u64..300).prop_map(|t| Op::TransactionInfo { tid: Tid(t) }),
        (1u64..4, proptest::collection::vec(0u64..6, 0..4)).prop_map(|(txn, oids)| {
            Op::UndoSerials {
                txn,
                undone: Tid(50),
                oids: oids.into_iter().map(Oid).collect(),
            }
        }),
        (oid.clone(), 0u32..5).prop_map(|(oid, size)| Op::History { oid, size }),
        (0u64..5, 0u64..10).prop_map(|(first, last)| Op::UndoLog { first, last }),
        (0u64..300, 0u64..300, 0u32..5).prop_map(|(a, b, limit)| Op::TidsFrom {
            min: Tid(a),
            max: Tid(b),
            limit
        }),
        (0u64..300).prop_map(|t| Op::Pack { tid: Tid(t) }),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        failure_persistence: None,
        ..Default::default()
    })]

    /// Hostile packets from the master and storage links, interleaved with calls: the
    /// client never panics, its bookkeeping holds, and shutting down answers every call
    /// still pending.
    #[test]
    fn the_client_survives_hostile_input(
        steps in proptest::collection::vec(crate::actors::fuzz::step("c"), 1..80),
        ops in proptest::collection::vec(op(), 0..30),
    ) {
        let mut h = Harness::new(Driven { client: Client::new(config(false)), ops, next: 0 });
        crate::actors::fuzz::run(&mut h, steps, |d: &Driven| d.client.check_invariants())?;
        let pending = h.actor.client.pending_calls();
        let out = h.handle(Event::Local(Command::Shutdown));
        let closed = replies(&out).len();
        if !h.actor.client.closed {
            // It had exited already (told DOWN): every call was answered then.
            proptest::prop_assert_eq!(pending, 0);
        } else {
            proptest::prop_assert!(closed >= pending);
        }
        proptest::prop_assert_eq!(h.actor.client.pending_calls(), 0);
    }
}

/// A storage lost during the stores: the vote goes on without it and asks the primary
/// (FailedVote): ACK goes on, INCOMPLETE_TRANSACTION fails.
#[test]
fn a_storage_lost_during_the_stores_is_reported_to_the_primary() {
    for (answer, ok) in [
        (Packet::ack("ok"), true),
        (Packet::error(ErrorCode::IncompleteTransaction, "no"), false),
    ] {
        let mut w = World::new(config(false), None);
        let (txn, ttid) = w.begin();
        let sends = store(&mut w, txn, Oid(2), Tid(50), Some(b"x"));
        w.h.handle(Event::Closed {
            conn: w.storages[&S1],
            reason: CloseReason::Reset,
        });
        let (vc, _) = w.call(vote_op(txn));
        let (_, id, _) = sends.iter().find(|(n, _, _)| *n == S2).unwrap().clone();
        let out = w.answer(
            w.storages[&S2],
            id,
            Packet::AnswerStoreObject { conflict: None },
        );
        let votes = msgs(&out, w.storages[&S2]);
        assert!(
            matches!(&votes[..], [(_, Packet::AskStoreTransaction { .. })]),
            "{votes:?}"
        );
        let out = w.answer(w.storages[&S2], votes[0].0, Packet::AnswerStoreTransaction);
        assert!(replies(&out).is_empty());
        let (mid, p) = msgs(&out, w.m).pop().unwrap();
        assert_eq!(
            p,
            Packet::FailedVote {
                ttid,
                nids: vec![S1]
            }
        );
        let out = w.answer(w.m, mid, answer);
        let r = World::reply_of(&out, vc);
        if ok {
            assert_eq!(r, Ok(Outcome::Done));
        } else {
            assert!(matches!(r, Err(ClientError::TransactionFailed(_))), "{r:?}");
        }
        w.h.actor.check_invariants().unwrap();
    }
}

/// Commits seed 392472644: a storage answered a store, then the connection to it was reset
/// before the vote. The storage dropped the transaction with the connection, so the store is
/// lost there: the vote reports it to the primary instead of voting an empty transaction.
#[test]
fn a_storage_lost_after_answering_a_store_is_reported_at_the_vote() {
    let mut w = World::new(config(false), None);
    let (txn, ttid) = w.begin();
    let sends = store(&mut w, txn, Oid(2), Tid(50), Some(b"x"));
    for (nid, id, _) in &sends {
        w.answer(
            w.storages[nid],
            *id,
            Packet::AnswerStoreObject { conflict: None },
        );
    }
    assert!(sends.iter().any(|(n, _, _)| *n == S1), "{sends:?}");
    let old_s1 = w.storages[&S1];
    w.h.handle(Event::Closed {
        conn: old_s1,
        reason: CloseReason::Reset,
    });
    let (vc, out) = w.call(vote_op(txn));
    assert!(msgs(&out, old_s1).is_empty());
    let votes = msgs(&out, w.storages[&S2]);
    assert_eq!(votes.len(), 1, "{votes:?}");
    let answer = match votes[0].1 {
        Packet::AskStoreTransaction { .. } => Packet::AnswerStoreTransaction,
        _ => Packet::AnswerVoteTransaction,
    };
    let out = w.answer(w.storages[&S2], votes[0].0, answer);
    assert!(replies(&out).is_empty(), "{out:?}");
    let (mid, p) = msgs(&out, w.m).pop().unwrap();
    assert_eq!(
        p,
        Packet::FailedVote {
            ttid,
            nids: vec![S1]
        }
    );
    let out = w.answer(
        w.m,
        mid,
        Packet::error(ErrorCode::IncompleteTransaction, "no"),
    );
    let r = World::reply_of(&out, vc);
    assert!(matches!(r, Err(ClientError::TransactionFailed(_))), "{r:?}");
    w.h.actor.check_invariants().unwrap();
}

/// A load sent before the primary was lost may have missed invalidations: its answer is
/// not cached as current; and a lost storage connection retries the load elsewhere.
#[test]
fn a_load_across_a_lost_primary_is_not_cached_as_current() {
    let mut w = World::new(config(false), None);
    let oid = Oid(2);
    let (c, out) = w.call(Op::Load {
        oid,
        at: None,
        before: None,
    });
    let (n1, _, _) = w.storage_sends(&out)[0].clone();
    let out = w.h.handle(Event::Closed {
        conn: w.storages[&n1],
        reason: CloseReason::Reset,
    });
    let (n2, id, _) = w.storage_sends(&out)[0].clone();
    assert_ne!(n1, n2, "retried on the other replica");
    reconnect(&mut w, Some(Tid(100)));
    let out = w.answer(w.storages[&n2], id, object(oid, Tid(50), None, b"v"));
    assert_eq!(loaded(World::reply_of(&out, c)).serial, Tid(50));
    assert!(cache::lock(&w.h.actor.cache())
        .get(oid, None, None)
        .is_none());
}

#[test]
fn an_old_snapshot_answer_is_not_cached_as_current() {
    let mut w = World::new(config(false), None);
    let oid = Oid(2);
    // Snapshot 100: a load before 80 or at 50 may miss an invalidation received earlier.
    for (at, before) in [(None, Some(Tid(80))), (Some(Tid(50)), None)] {
        let (c, out) = w.call(Op::Load { oid, at, before });
        let (nid, id, _) = w.storage_sends(&out)[0].clone();
        let out = w.answer(w.storages[&nid], id, object(oid, Tid(50), None, b"v"));
        assert_eq!(loaded(World::reply_of(&out, c)).serial, Tid(50));
        assert!(
            cache::lock(&w.h.actor.cache())
                .get(oid, None, None)
                .is_none(),
            "{at:?} {before:?}"
        );
    }
    // A latest load's answer is current.
    let (c, out) = w.call(Op::Load {
        oid,
        at: None,
        before: None,
    });
    let (nid, id, _) = w.storage_sends(&out)[0].clone();
    let out = w.answer(w.storages[&nid], id, object(oid, Tid(50), None, b"v"));
    assert_eq!(loaded(World::reply_of(&out, c)).serial, Tid(50));
    assert!(cache::lock(&w.h.actor.cache())
        .get(oid, None, None)
        .is_some());
}

#[test]
fn a_large_oid_call_asks_the_primary_several_times() {
    let mut w = World::new(config(false), None);
    let (c, out) = w.call(Op::NewOids { count: 1500 });
    let (mid, p) = msgs(&out, w.m).pop().unwrap();
    assert_eq!(p, Packet::AskNewOIDs { count: 1000 });
    let out = w.answer(
        w.m,
        mid,
        Packet::AnswerNewOIDs {
            oids: (1..=1000).map(Oid).collect(),
        },
    );
    assert!(replies(&out).is_empty());
    let (mid, p) = msgs(&out, w.m).pop().unwrap();
    assert_eq!(p, Packet::AskNewOIDs { count: 500 });
    let out = w.answer(
        w.m,
        mid,
        Packet::AnswerNewOIDs {
            oids: (1001..=1500).map(Oid).collect(),
        },
    );
    assert_eq!(
        World::reply_of(&out, c),
        Ok(Outcome::Oids((1..=1500).map(Oid).collect()))
    );
}

#[test]
fn stores_wait_while_too_many_bytes_are_in_flight() {
    let mut cfg = config(false);
    cfg.compress = false;
    let mut w = World::new(cfg, None);
    let (txn, _) = w.begin();
    let big = vec![1u8; (MAX_INFLIGHT_BYTES / 2 + 1) as usize];
    // Partition 1: one cell (S2).
    let first = store(&mut w, txn, Oid(1), Tid::ZERO, Some(&big));
    let (c, out) = w.call(Op::Store {
        txn,
        oid: Oid(3),
        serial: Tid::ZERO,
        data: Some(big.clone()),
        data_serial: None,
    });
    assert!(replies(&out).is_empty(), "held: over the cap");
    let (nid, id, _) = first[0].clone();
    let out = w.answer(
        w.storages[&nid],
        id,
        Packet::AnswerStoreObject { conflict: None },
    );
    assert_eq!(World::reply_of(&out, c), Ok(Outcome::Done));
    w.h.actor.check_invariants().unwrap();
}

/// The reused compressor: round trips, gives the same output twice (it is reset), and
/// declines data it cannot make smaller.
#[test]
fn zlib_reuses_its_compressor_and_declines_what_does_not_shrink() {
    let plain: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
    let z = zlib(&plain).expect("repetitive data shrinks");
    assert!(z.len() < plain.len());
    assert_eq!(zlib(&plain).as_deref(), Some(&z[..]));
    assert_eq!(decompress(&z).as_deref(), Some(&plain[..]));
    let noise: Vec<u8> = (0..64u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect();
    assert_eq!(zlib(&noise), None);
    assert_eq!(zlib(b""), None);
}

// ---- undo, history, iteration, pack (neo-spec 6.13 to 6.15) ----

fn info(tid: Tid, oids: Vec<Oid>) -> Packet {
    Packet::AnswerTransactionInformation {
        tid,
        user: Data(b"u".to_vec()),
        description: Data(b"d".to_vec()),
        extension: Data(vec![]),
        packed: false,
        oids,
    }
}

#[test]
fn transaction_info_retries_another_cell_and_names_an_unknown_tid() {
    let mut w = World::new(config(false), None);
    let tid = Tid(90); // partition 0: S1 and S2
    let (c, out) = w.call(Op::TransactionInfo { tid });
    let sends = w.storage_sends(&out);
    assert_eq!(sends.len(), 1, "{sends:?}");
    let (first, id, p) = sends[0].clone();
    assert_eq!(p, Packet::AskTransactionInformation { tid });
    let refused = Packet::error(ErrorCode::NonReadableCell, "no");
    let out = w.answer(w.storages[&first], id, refused);
    assert!(replies(&out).is_empty());
    let (second, id, _) = w.storage_sends(&out)[0].clone();
    assert_ne!(first, second, "another cell");
    let out = w.answer(w.storages[&second], id, info(tid, vec![Oid(2), Oid(3)]));
    assert_eq!(
        World::reply_of(&out, c),
        Ok(Outcome::Transaction(TransactionInfo {
            tid,
            user: b"u".to_vec(),
            description: b"d".to_vec(),
            extension: vec![],
            packed: false,
            oids: vec![Oid(2), Oid(3)],
        }))
    );
    // Every cell refuses: unavailable, answered once.
    let (c, out) = w.call(Op::TransactionInfo { tid });
    let (n1, id, _) = w.storage_sends(&out)[0].clone();
    let out = w.answer(w.storages[&n1], id, Packet::error(ErrorCode::NotReady, "x"));
    let (n2, id, _) = w.storage_sends(&out)[0].clone();
    let out = w.answer(w.storages[&n2], id, Packet::error(ErrorCode::NotReady, "x"));
    assert!(matches!(
        World::reply_of(&out, c),
        Err(ClientError::Unavailable(_))
    ));
    // Unknown.
    let (c, out) = w.call(Op::TransactionInfo { tid: Tid(91) });
    let (nid, id, _) = w.storage_sends(&out)[0].clone();
    assert_eq!(nid, S2, "partition 1: S2 only");
    let out = w.answer(
        w.storages[&nid],
        id,
        Packet::error(ErrorCode::TidNotFound, "no"),
    );
    assert_eq!(
        World::reply_of(&out, c),
        Err(ClientError::UnknownTransaction(Tid(91)))
    );
    // An answer about another transaction is a broken storage: closed, asked elsewhere.
    let (c, out) = w.call(Op::TransactionInfo { tid });
    let (n1, id, _) = w.storage_sends(&out)[0].clone();
    let out = w.answer(w.storages[&n1], id, info(Tid(92), vec![]));
    assert!(out
        .iter()
        .any(|e| matches!(e, Effect::Close { conn } if *conn == w.storages[&n1])));
    let sends = w.storage_sends(&out);
    let (n2, id, _) = sends.last().unwrap().clone();
    assert_ne!(n1, n2);
    let out = w.answer(w.storages[&n2], id, info(tid, vec![]));
    assert!(matches!(
        World::reply_of(&out, c),
        Ok(Outcome::Transaction(_))
    ));
    w.h.actor.check_invariants().unwrap();
}

#[test]
fn transaction_info_survives_a_lost_connection() {
    let mut w = World::new(config(false), None);
    let tid = Tid(90);
    let (c, out) = w.call(Op::TransactionInfo { tid });
    let (first, _, _) = w.storage_sends(&out)[0].clone();
    let out = w.h.handle(Event::Closed {
        conn: w.storages[&first],
        reason: CloseReason::Reset,
    });
    let sends = w.storage_sends(&out);
    let (second, id, _) = sends.last().expect("asked elsewhere").clone();
    assert_ne!(first, second);
    let out = w.answer(w.storages[&second], id, info(tid, vec![]));
    assert!(matches!(
        World::reply_of(&out, c),
        Ok(Outcome::Transaction(_))
    ));
}

#[test]
fn undo_serials_ask_each_partition_and_merge_in_the_asked_order() {
    let mut w = World::new(config(false), None);
    let (txn, ttid) = w.begin();
    let s = |current, undo: Option<u64>, is_current| UndoSerial {
        current: Tid(current),
        undo: undo.map(Tid),
        is_current,
    };
    let (c, out) = w.call(Op::UndoSerials {
        txn,
        undone: Tid(80),
        oids: vec![Oid(3), Oid(2), Oid(4), Oid(3)],
    });
    let sends = w.storage_sends(&out);
    assert_eq!(sends.len(), 2, "{sends:?}");
    let mut out = vec![];
    for (nid, id, p) in &sends {
        let Packet::AskObjectUndoSerial {
            ttid: t,
            ltid,
            undone_tid,
            oids,
        } = p
        else {
            panic!("{p:?}")
        };
        assert_eq!((*t, *ltid, *undone_tid), (ttid, Tid(101), Tid(80)));
        let serials = match oids.as_slice() {
            [Oid(3)] => {
                assert_eq!(*nid, S2);
                vec![(Oid(3), s(90, Some(70), false))]
            }
            [Oid(2), Oid(4)] => vec![(Oid(4), s(80, None, true)), (Oid(2), s(80, Some(60), true))],
            other => panic!("{other:?}"),
        };
        out.extend(w.answer(
            w.storages[nid],
            *id,
            Packet::AnswerObjectUndoSerial { serials },
        ));
    }
    assert_eq!(
        World::reply_of(&out, c),
        Ok(Outcome::UndoSerials(vec![
            (Oid(3), s(90, Some(70), false)),
            (Oid(2), s(80, Some(60), true)),
            (Oid(4), s(80, None, true)),
        ]))
    );
    // A revision packed away: the undo cannot be done.
    let (c, out) = w.call(Op::UndoSerials {
        txn,
        undone: Tid(80),
        oids: vec![Oid(3)],
    });
    let (nid, id, _) = w.storage_sends(&out)[0].clone();
    let out = w.answer(
        w.storages[&nid],
        id,
        Packet::error(ErrorCode::OidNotFound, "x"),
    );
    assert!(matches!(
        World::reply_of(&out, c),
        Err(ClientError::UndoFailed(_))
    ));
    // An entry for an oid not asked is a broken storage.
    let (c, out) = w.call(Op::UndoSerials {
        txn,
        undone: Tid(80),
        oids: vec![Oid(3)],
    });
    let (nid, id, _) = w.storage_sends(&out)[0].clone();
    let wrong = Packet::AnswerObjectUndoSerial {
        serials: vec![(Oid(5), s(90, Some(70), false))],
    };
    let out = w.answer(w.storages[&nid], id, wrong);
    assert!(
        matches!(World::reply_of(&out, c), Err(ClientError::Unavailable(_))),
        "no other cell of partition 1"
    );
    // Not in an open transaction.
    let (c, out) = w.call(Op::UndoSerials {
        txn: 99,
        undone: Tid(80),
        oids: vec![Oid(3)],
    });
    assert!(matches!(
        World::reply_of(&out, c),
        Err(ClientError::Invalid(_))
    ));
}

#[test]
fn history_asks_the_object_s_partition() {
    let mut w = World::new(config(false), None);
    let (c, out) = w.call(Op::History {
        oid: Oid(3),
        size: 5,
    });
    let sends = w.storage_sends(&out);
    assert_eq!(
        sends[0].2,
        Packet::AskObjectHistory {
            oid: Oid(3),
            first: 0,
            last: 5
        }
    );
    let history = vec![(Tid(90), 10), (Tid(70), 4)];
    let out = w.answer(
        w.storages[&sends[0].0],
        sends[0].1,
        Packet::AnswerObjectHistory {
            oid: Oid(3),
            history: history.clone(),
        },
    );
    assert_eq!(World::reply_of(&out, c), Ok(Outcome::History(history)));
    let (c, out) = w.call(Op::History {
        oid: Oid(3),
        size: 5,
    });
    let (nid, id, _) = w.storage_sends(&out)[0].clone();
    let out = w.answer(
        w.storages[&nid],
        id,
        Packet::error(ErrorCode::OidDoesNotExist, "x"),
    );
    assert_eq!(
        World::reply_of(&out, c),
        Err(ClientError::DoesNotExist(Oid(3)))
    );
}

#[test]
fn the_undo_log_asks_every_storage_and_cuts_the_merged_log() {
    let mut w = World::new(config(false), None);
    let (c, out) = w.call(Op::UndoLog { first: 1, last: 4 });
    let sends = w.storage_sends(&out);
    assert_eq!(sends.len(), 2, "S1 and S2: {sends:?}");
    let ask = Packet::AskTIDs {
        first: 0,
        last: 4,
        partition: None,
    };
    assert!(sends.iter().all(|(_, _, p)| *p == ask));
    let mut out = vec![];
    for (nid, id, _) in &sends {
        let tids = match *nid {
            S1 => vec![Tid(98), Tid(96), Tid(94), Tid(92)],
            _ => vec![Tid(99), Tid(98), Tid(97), Tid(96)],
        };
        out.extend(w.answer(w.storages[nid], *id, Packet::AnswerTIDs { tids }));
    }
    assert_eq!(
        World::reply_of(&out, c),
        Ok(Outcome::Tids(vec![Tid(98), Tid(97), Tid(96)]))
    );
    // S2 fails: partition 1 has no other cell.
    let (c, out) = w.call(Op::UndoLog { first: 0, last: 4 });
    let sends = w.storage_sends(&out);
    let (_, id1, _) = sends.iter().find(|s| s.0 == S1).unwrap().clone();
    let out = w.answer(
        w.storages[&S1],
        id1,
        Packet::AnswerTIDs {
            tids: vec![Tid(98)],
        },
    );
    assert!(replies(&out).is_empty(), "partition 1 not covered yet");
    let out = w.h.handle(Event::Closed {
        conn: w.storages[&S2],
        reason: CloseReason::Reset,
    });
    assert!(matches!(
        World::reply_of(&out, c),
        Err(ClientError::Unavailable(_))
    ));
    // S1 fails: S2 covers partition 0 too.
    let (c, out) = w.call(Op::UndoLog { first: 0, last: 4 });
    let sends = w.storage_sends(&out);
    let (_, id2, _) = sends.iter().find(|s| s.0 == S2).unwrap().clone();
    let out = w.answer(
        w.storages[&S1],
        sends.iter().find(|s| s.0 == S1).unwrap().1,
        Packet::error(ErrorCode::NonReadableCell, "x"),
    );
    assert!(replies(&out).is_empty());
    assert!(
        w.storage_sends(&out).is_empty(),
        "S2's request covers partition 0"
    );
    let out = w.answer(
        w.storages[&S2],
        id2,
        Packet::AnswerTIDs {
            tids: vec![Tid(99), Tid(98)],
        },
    );
    assert_eq!(
        World::reply_of(&out, c),
        Ok(Outcome::Tids(vec![Tid(99), Tid(98)]))
    );
}

#[test]
fn tids_from_asks_each_partition_below_the_snapshot() {
    let mut w = World::new(config(false), None);
    let (c, out) = w.call(Op::TidsFrom {
        min: Tid(10),
        max: Tid(500),
        limit: 3,
    });
    let sends = w.storage_sends(&out);
    assert_eq!(sends.len(), 2);
    let mut out = vec![];
    for (nid, id, p) in &sends {
        let Packet::AskTIDsFrom {
            min_tid,
            max_tid,
            length,
            partition,
        } = p
        else {
            panic!("{p:?}")
        };
        assert_eq!((*min_tid, *max_tid, *length), (Tid(10), Tid(100), 3));
        let tids = match partition {
            0 => vec![Tid(12), Tid(14), Tid(40)],
            _ => vec![Tid(11), Tid(41)],
        };
        out.extend(w.answer(w.storages[nid], *id, Packet::AnswerTIDsFrom { tids }));
    }
    assert_eq!(
        World::reply_of(&out, c),
        Ok(Outcome::Tids(vec![Tid(11), Tid(12), Tid(14)]))
    );
    // A TID of another partition is a broken storage.
    let (c, out) = w.call(Op::TidsFrom {
        min: Tid(10),
        max: Tid(500),
        limit: 3,
    });
    let sends = w.storage_sends(&out);
    let (nid, id, _) = sends
        .iter()
        .find(|s| matches!(s.2, Packet::AskTIDsFrom { partition: 1, .. }))
        .unwrap()
        .clone();
    let out = w.answer(
        w.storages[&nid],
        id,
        Packet::AnswerTIDsFrom {
            tids: vec![Tid(12)],
        },
    );
    assert!(matches!(
        World::reply_of(&out, c),
        Err(ClientError::Unavailable(_))
    ));
    // Nothing past the snapshot.
    let (c, out) = w.call(Op::TidsFrom {
        min: Tid(101),
        max: Tid(500),
        limit: 3,
    });
    assert_eq!(World::reply_of(&out, c), Ok(Outcome::Tids(vec![])));
}

#[test]
fn pack_asks_the_primary_within_the_snapshot() {
    let mut w = World::new(config(false), None);
    let (c, out) = w.call(Op::Pack { tid: Tid(101) });
    assert!(matches!(
        World::reply_of(&out, c),
        Err(ClientError::Invalid(_))
    ));
    let (c, out) = w.call(Op::Pack { tid: Tid(100) });
    let (mid, p) = msgs(&out, w.m).pop().expect("asks the primary");
    assert_eq!(p, Packet::AskPack { tid: Tid(100) });
    // Packing takes as long as it takes: no deadline of its own.
    for _ in 0..40 {
        w.h.elapsed += Duration::from_secs(1);
        let out = w.h.tick();
        for (id, p) in msgs(&out, w.m) {
            if p == Packet::Ping {
                w.answer(w.m, id, Packet::Pong);
            }
        }
        assert!(replies(&out).is_empty());
    }
    let out = w.answer(w.m, mid, Packet::AnswerPack { status: true });
    assert_eq!(World::reply_of(&out, c), Ok(Outcome::Done));
    // The primary lost while packing: answered.
    let (c, _) = w.call(Op::Pack { tid: Tid(100) });
    let out = w.h.handle(Event::Closed {
        conn: w.m,
        reason: CloseReason::Reset,
    });
    assert!(matches!(
        World::reply_of(&out, c),
        Err(ClientError::Unavailable(_))
    ));
}

#[test]
fn a_read_only_client_refuses_undo_and_pack() {
    let mut w = World::new(config(true), None);
    for op in [
        Op::Pack { tid: Tid(100) },
        Op::UndoSerials {
            txn: 1,
            undone: Tid(80),
            oids: vec![Oid(1)],
        },
    ] {
        let (c, out) = w.call(op);
        assert_eq!(World::reply_of(&out, c), Err(ClientError::ReadOnly));
    }
    // Reads are fine.
    let (_, out) = w.call(Op::History {
        oid: Oid(1),
        size: 1,
    });
    assert_eq!(w.storage_sends(&out).len(), 1);
}

#[test]
fn queries_wait_for_the_primary_then_time_out_and_are_answered_once_on_close() {
    let mut w = World::new(config(false), None);
    w.h.handle(Event::Closed {
        conn: w.m,
        reason: CloseReason::Reset,
    });
    let (c, out) = w.call(Op::TransactionInfo { tid: Tid(90) });
    assert!(replies(&out).is_empty(), "parked");
    let mut got = vec![];
    for _ in 0..40 {
        w.h.elapsed += Duration::from_secs(1);
        got.extend(replies(&w.h.tick()));
    }
    assert!(
        matches!(&got[..], [Reply { id, result: Err(ClientError::Unavailable(_)) }] if *id == c),
        "{got:?}"
    );
    // Queries in flight when the client stops: Closed, once.
    let mut w = World::new(config(false), None);
    let (c1, _) = w.call(Op::UndoLog { first: 0, last: 10 });
    let (c2, _) = w.call(Op::History {
        oid: Oid(2),
        size: 3,
    });
    let out = w.h.handle(Event::Local(Command::Shutdown));
    for c in [c1, c2] {
        assert_eq!(World::reply_of(&out, c), Err(ClientError::Closed));
    }
    assert!(w.h.actor.queries.is_empty());
}

#[test]
fn a_backpointer_store_names_its_data_serial_and_is_invalidated_on_commit() {
    let mut w = World::new(config(false), None);
    let (txn, ttid) = w.begin();
    let oid = Oid(2);
    let (c, out) = w.call(Op::Store {
        txn,
        oid,
        serial: Tid(80),
        data: Some(b"x".to_vec()),
        data_serial: Some(Tid(60)),
    });
    assert!(matches!(
        World::reply_of(&out, c),
        Err(ClientError::Invalid(_))
    ));
    let (c, out) = w.call(Op::Store {
        txn,
        oid,
        serial: Tid(80),
        data: None,
        data_serial: Some(Tid(60)),
    });
    assert_eq!(World::reply_of(&out, c), Ok(Outcome::Done));
    let sends = w.storage_sends(&out);
    assert_eq!(sends.len(), 2);
    for (_, _, p) in &sends {
        assert_eq!(
            *p,
            Packet::AskStoreObject {
                oid,
                serial: Tid(80),
                compression: 0,
                checksum: ZERO_HASH,
                data: None,
                data_serial: Some(Tid(60)),
                ttid,
            }
        );
    }
    let (vc, _) = w.call(vote_op(txn));
    let mut out = vec![];
    for (nid, id, _) in &sends {
        out.extend(w.answer(
            w.storages[nid],
            *id,
            Packet::AnswerStoreObject { conflict: None },
        ));
    }
    let mut out2 = vec![];
    for (nid, id, p) in &w.storage_sends(&out) {
        let a = match p {
            Packet::AskStoreTransaction { .. } => Packet::AnswerStoreTransaction,
            _ => Packet::AnswerVoteTransaction,
        };
        out2.extend(w.answer(w.storages[nid], *id, a));
    }
    assert_eq!(World::reply_of(&out2, vc), Ok(Outcome::Done));
    let (fc, out) = w.call(Op::Finish { txn });
    let (mid, p) = msgs(&out, w.m).pop().unwrap();
    assert_eq!(
        p,
        Packet::AskFinishTransaction {
            ttid,
            oids: vec![oid],
            deleted: vec![],
            checked: vec![]
        },
        "an undo invalidates, it is no deletion"
    );
    let tid = Tid(203);
    let out = w.answer(w.m, mid, Packet::AnswerTransactionFinished { ttid, tid });
    assert_eq!(World::reply_of(&out, fc), Ok(Outcome::Tid(Some(tid))));
    assert!(
        cache::lock(&w.h.actor.cache())
            .get(oid, None, None)
            .is_none(),
        "its data is not known here"
    );
    // Its load caches the data with the backpointer.
    let (c, out) = w.call(Op::Load {
        oid,
        at: None,
        before: None,
    });
    let (nid, id, _) = w.storage_sends(&out)[0].clone();
    let answer = Packet::AnswerObject {
        oid,
        serial: tid,
        next_serial: None,
        compression: 0,
        checksum: sha(b"old"),
        data: Some(Data(b"old".to_vec())),
        data_serial: Some(Tid(60)),
    };
    let out = w.answer(w.storages[&nid], id, answer);
    let l = loaded(World::reply_of(&out, c));
    assert_eq!((l.serial, l.data_serial), (tid, Some(Tid(60))));
    let (c, out) = w.call(Op::Load {
        oid,
        at: None,
        before: None,
    });
    assert!(w.storage_sends(&out).is_empty(), "a hit");
    assert_eq!(loaded(World::reply_of(&out, c)), l);
}

#[test]
fn an_undo_whose_data_was_packed_away_fails_its_transaction() {
    let mut w = World::new(config(false), None);
    let (txn, _) = w.begin();
    let (_, out) = w.call(Op::Store {
        txn,
        oid: Oid(3),
        serial: Tid(80),
        data: None,
        data_serial: Some(Tid(60)),
    });
    let (nid, id, _) = w.storage_sends(&out)[0].clone();
    w.answer(
        w.storages[&nid],
        id,
        Packet::error(ErrorCode::UndoPackError, "no data at 60"),
    );
    let (vc, out) = w.call(vote_op(txn));
    match World::reply_of(&out, vc) {
        Err(ClientError::TransactionFailed(why)) => assert!(why.contains("packed"), "{why}"),
        other => panic!("{other:?}"),
    }
}
