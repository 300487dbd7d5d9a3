//! The storage's client-facing side: identification of incoming connections (clients the
//! primary announced as RUNNING; other storages are refused for now), the client requests
//! (stores, readCurrent checks, relocks, votes, aborts, loads, final TIDs) validated here
//! and served by the transaction manager (history requests by `history`), and what a
//! client's departure aborts.

use sha1::{Digest, Sha1};
use tracing::{debug, warn};

use super::transactions::{Origin, Out, Write};
use super::{Peer, Storage, ANNOUNCE_WAIT};
use crate::actors::{ConnId, Ctx};
use crate::db::{partition_of, DbError, ObjectData, TxnMeta, ZERO_HASH};
use crate::proto::{CellState, ErrorCode, Message, Nid, NodeState, NodeType, Packet, Tid};

/// What our cell of a partition lets us do with a store.
enum CellMode {
    /// Readable: lock and check.
    Locking,
    /// Being replicated: store without lock or check.
    Lockless,
    /// Not ours (or corrupted): ignore.
    Ignore,
}

impl Storage {
    pub(super) fn on_incoming(&mut self, cx: &mut Ctx, conn: ConnId, msg: Message) {
        let (code, why) = match &msg.packet {
            _ if self.unannounced.contains_key(&conn) => (
                ErrorCode::ProtocolError,
                format!("{} before identification", msg.packet.name()),
            ),
            Packet::RequestIdentification { cluster_name, .. }
                if *cluster_name != self.cfg.cluster =>
            {
                (
                    ErrorCode::ProtocolError,
                    format!(
                        "invalid cluster name {cluster_name:?} (this is cluster {:?})",
                        self.cfg.cluster
                    ),
                )
            }
            Packet::RequestIdentification { node_type, .. } if !self.operational => (
                ErrorCode::NotReady,
                format!("this storage is not operational ({node_type} refused)"),
            ),
            Packet::RequestIdentification {
                node_type: NodeType::Client,
                nid: Some(nid),
                ..
            } if nid.node_type() == Some(NodeType::Client) => {
                let nid = *nid;
                match self.announced(nid) {
                    Some(true) => return self.accept_client(cx, conn, msg.id, nid),
                    Some(false) => (
                        ErrorCode::NotReady,
                        format!("{nid} is not a running client"),
                    ),
                    None => {
                        // The primary's word about it may still be on its way.
                        self.unannounced.insert(conn, (msg.id, nid, cx.elapsed()));
                        return;
                    }
                }
            }
            Packet::RequestIdentification {
                node_type: NodeType::Client,
                nid,
                ..
            } => (
                ErrorCode::ProtocolError,
                format!("a client must identify with its client node id, not {nid:?}"),
            ),
            Packet::RequestIdentification { node_type, .. } => (
                ErrorCode::NotReady,
                format!("{node_type} connections are not served by this version"),
            ),
            other => (
                ErrorCode::ProtocolError,
                format!("expected RequestIdentification, got {}", other.name()),
            ),
        };
        debug!("{}: refusing a connection: {why}", self.me());
        self.unannounced.remove(&conn);
        self.answer(cx, conn, msg.id, Packet::error(code, why));
        self.links.close(cx, conn);
    }

    /// Whether the primary announced `nid` as a running client (None: not at all).
    fn announced(&self, nid: Nid) -> Option<bool> {
        let n = self.master.nodes().get(nid)?;
        Some(n.node_type == NodeType::Client && n.state == NodeState::Running)
    }

    fn accept_client(&mut self, cx: &mut Ctx, conn: ConnId, id: u32, nid: Nid) {
        self.unannounced.remove(&conn);
        if let Some(peer) = self.links.get_mut(conn) {
            *peer = Peer::Client(nid);
        }
        debug!("{}: client {nid} identified", self.me());
        let accept = Packet::AcceptIdentification {
            node_type: NodeType::Storage,
            nid: self.nid,
            your_nid: Some(nid),
        };
        self.answer(cx, conn, id, accept);
    }

    /// After each message from the primary: answer the clients it now announced, and abort
    /// the transactions of clients it reports gone (DOWN or forgotten).
    pub(super) fn after_master_message(&mut self, cx: &mut Ctx) {
        if self.failed {
            return;
        }
        let waiting: Vec<(ConnId, u32, Nid)> = self
            .unannounced
            .iter()
            .map(|(c, (id, nid, _))| (*c, *id, *nid))
            .collect();
        for (conn, id, nid) in waiting {
            match self.announced(nid) {
                Some(true) if self.operational => self.accept_client(cx, conn, id, nid),
                Some(_) => {
                    self.unannounced.remove(&conn);
                    let why = format!("{nid} is not a running client");
                    self.answer(cx, conn, id, Packet::error(ErrorCode::NotReady, why));
                    self.links.close(cx, conn);
                }
                None => {}
            }
        }
        if !self.operational {
            return;
        }
        let departed: Vec<ConnId> = self
            .links
            .iter()
            .filter_map(|(c, p)| match p {
                Peer::Client(n) if self.announced(*n) != Some(true) => Some(c),
                _ => None,
            })
            .collect();
        for conn in departed {
            self.links.close(cx, conn);
            self.client_closed(cx, conn);
        }
        let gone: Vec<Nid> = self
            .tm
            .clients()
            .into_iter()
            .filter(|c| self.announced(*c) != Some(true))
            .collect();
        for client in gone {
            debug!(
                "{}: client {client} gone: aborting its transactions",
                self.me()
            );
            let mut out = Vec::new();
            let r = self.tm.client_gone(self.db.as_mut(), &mut out, client);
            self.flush(cx, out);
            if let Err(e) = r {
                return self.db_failed(cx, "aborting a departed client's transactions", e);
            }
        }
    }

    /// Refuse identifications the primary did not confirm in time.
    pub(super) fn expire_unannounced(&mut self, cx: &mut Ctx) {
        let now = cx.elapsed();
        let expired: Vec<(ConnId, u32, Nid)> = self
            .unannounced
            .iter()
            .filter(|(_, (_, _, since))| now.saturating_sub(*since) >= ANNOUNCE_WAIT)
            .map(|(c, (id, nid, _))| (*c, *id, *nid))
            .collect();
        for (conn, id, nid) in expired {
            self.unannounced.remove(&conn);
            let why = format!("the primary master did not announce {nid}");
            self.answer(cx, conn, id, Packet::error(ErrorCode::NotReady, why));
            self.links.close(cx, conn);
        }
    }

    /// We stop serving (lost primary, StopOperation): clients are disconnected, their
    /// transactions that did not vote forgotten (voted ones are on disk for verification).
    pub(super) fn stop_serving(&mut self, cx: &mut Ctx) {
        self.operational = false;
        let clients: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(c, p)| matches!(p, Peer::Client(_)) || self.unannounced.contains_key(c))
            .map(|(c, _)| c)
            .collect();
        for conn in clients {
            self.links.close(cx, conn);
        }
        self.unannounced.clear();
        self.forget_waiting_reads(None);
        self.drop_pack(cx);
        if let Err(e) = self.tm.stop_operation(self.db.as_mut()) {
            self.db_failed(cx, "dropping unvoted transactions", e);
        }
    }

    pub(super) fn client_closed(&mut self, cx: &mut Ctx, conn: ConnId) {
        self.forget_waiting_reads(Some(conn));
        let mut out = Vec::new();
        let r = self.tm.connection_closed(self.db.as_mut(), &mut out, conn);
        self.flush(cx, out);
        if let Err(e) = r {
            self.db_failed(cx, "aborting a disconnected client's transactions", e);
        }
    }

    /// Send what the transaction manager produced; a connection it closes aborts that
    /// client's unvoted transactions in turn.
    pub(super) fn flush(&mut self, cx: &mut Ctx, out: Vec<Out>) {
        let mut queue = std::collections::VecDeque::from(out);
        while let Some(o) = queue.pop_front() {
            let Some(o) = self.hold(cx, o) else {
                continue;
            };
            match o {
                Out::Answer { conn, id, packet } => self.links.answer(cx, conn, id, packet),
                Out::Notify { conn, packet } => self.links.notify(cx, conn, packet),
                Out::Close { conn } => {
                    if let Some(Peer::Client(_)) = self.links.close(cx, conn) {
                        self.forget_waiting_reads(Some(conn));
                        let mut more = Vec::new();
                        let r = self.tm.connection_closed(self.db.as_mut(), &mut more, conn);
                        queue.extend(more);
                        if let Err(e) = r {
                            return self.db_failed(cx, "aborting transactions", e);
                        }
                    }
                }
            }
        }
    }

    /// What our cell of `id`'s partition is (`id`: an oid, or a ttid for metadata).
    fn cell_mode(&self, id: u64) -> Result<CellMode, (ErrorCode, String)> {
        let not_ready = || (ErrorCode::NotReady, "no partition table yet".to_string());
        let (Some(pt), Some(me)) = (&self.pt, self.nid) else {
            return Err(not_ready());
        };
        if pt.partitions() == 0 {
            return Err(not_ready());
        }
        Ok(match pt.cell(partition_of(id, pt.partitions()), me) {
            Some(s) if s.is_readable() => CellMode::Locking,
            Some(CellState::OutOfDate) => CellMode::Lockless,
            _ => CellMode::Ignore,
        })
    }

    pub(super) fn on_client_message(&mut self, cx: &mut Ctx, conn: ConnId, nid: Nid, msg: Message) {
        let origin = Origin {
            conn,
            id: msg.id,
            client: nid,
        };
        let mut out = Vec::new();
        let r = self.serve_client(cx, origin, msg.packet, &mut out);
        self.flush(cx, out);
        match r {
            Ok(()) => {}
            Err(e) if e.is_fatal() => self.db_failed(cx, "serving a client", e),
            Err(e) => {
                warn!("{}: serving {nid}: {e}", self.me());
                self.answer(
                    cx,
                    conn,
                    msg.id,
                    Packet::error(e.error_code(), e.to_string()),
                );
            }
        }
    }

    fn serve_client(
        &mut self,
        cx: &mut Ctx,
        o: Origin,
        packet: Packet,
        out: &mut Vec<Out>,
    ) -> Result<(), DbError> {
        let error = |out: &mut Vec<Out>, (code, why): (ErrorCode, String)| {
            out.push(Out::Answer {
                conn: o.conn,
                id: o.id,
                packet: Packet::error(code, why),
            })
        };
        match packet {
            Packet::AskStoreObject {
                oid,
                serial,
                compression,
                checksum,
                data,
                data_serial,
                ttid,
            } => {
                let write = match store_write(compression, checksum, data, data_serial) {
                    Ok(w) => w,
                    Err(why) => {
                        error(out, (ErrorCode::ProtocolError, why));
                        return Ok(());
                    }
                };
                let mode = self.cell_mode(oid.0);
                self.store(mode, o, ttid, oid, serial, write, out)?;
            }
            Packet::AskCheckCurrentSerial { ttid, oid, serial } => {
                let mode = self.cell_mode(oid.0);
                self.store(mode, o, ttid, oid, serial, Write::Check, out)?;
            }
            Packet::AskRelockObject { ttid, oid } => {
                self.tm.relock(self.db.as_mut(), out, o, ttid, oid)?
            }
            Packet::AskStoreTransaction {
                ttid,
                user,
                description,
                extension,
                oids,
            } => match self.cell_mode(ttid.0) {
                Err(e) => error(out, e),
                Ok(CellMode::Ignore) => error(
                    out,
                    (
                        ErrorCode::ProtocolError,
                        format!("the metadata of {ttid} does not belong here"),
                    ),
                ),
                Ok(_) => {
                    let meta = TxnMeta {
                        user: user.0,
                        description: description.0,
                        extension: extension.0,
                        oids,
                    };
                    let lazy = cx.mutant("unlock-before-vote-durable");
                    self.tm
                        .vote(self.db.as_mut(), out, o, ttid, Some(meta), lazy)?;
                }
            },
            Packet::AskVoteTransaction { ttid } => {
                let lazy = cx.mutant("unlock-before-vote-durable");
                self.tm.vote(self.db.as_mut(), out, o, ttid, None, lazy)?;
            }
            Packet::AbortTransaction { ttid, .. } => {
                self.tm.abort(self.db.as_mut(), out, ttid, Some(o.client))?
            }
            Packet::AskObject { oid, at, before } => match self.cell_mode(oid.0) {
                Err(e) => error(out, e),
                Ok(CellMode::Locking) => self.tm.load(self.db.as_mut(), out, o, oid, at, before)?,
                Ok(_) => error(
                    out,
                    (
                        ErrorCode::NonReadableCell,
                        format!("no readable cell here for {oid}"),
                    ),
                ),
            },
            Packet::AskFinalTID { ttid } => {
                // Only a readable cell of the TTID's partition surely has the metadata.
                let refused = match self.cell_mode(ttid.0) {
                    Err(e) => Some(e),
                    Ok(CellMode::Locking) => None,
                    Ok(_) => Some((
                        ErrorCode::NonReadableCell,
                        format!("no readable cell here for {ttid}"),
                    )),
                };
                if let Some(e) = refused {
                    error(out, e);
                    return Ok(());
                }
                let tid = self.db.final_tid(ttid)?;
                out.push(Out::Answer {
                    conn: o.conn,
                    id: o.id,
                    packet: Packet::AnswerFinalTID { tid },
                });
            }
            p if super::history::is_history_request(&p) => self.history_request(o, p, out)?,
            other if other.kind() == crate::proto::Kind::Request => {
                let why = format!("{} is not a request a storage serves clients", other.name());
                error(out, (ErrorCode::ProtocolError, why));
            }
            other => debug!("{}: ignoring {} from {}", self.me(), other.name(), o.client),
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        mode: Result<CellMode, (ErrorCode, String)>,
        o: Origin,
        ttid: Tid,
        oid: crate::proto::Oid,
        serial: Tid,
        write: Write,
        out: &mut Vec<Out>,
    ) -> Result<(), DbError> {
        let db = self.db.as_mut();
        match mode {
            Err((code, why)) => out.push(Out::Answer {
                conn: o.conn,
                id: o.id,
                packet: Packet::error(code, why),
            }),
            Ok(CellMode::Locking) => self.tm.store(db, out, o, ttid, oid, serial, write)?,
            Ok(CellMode::Lockless) => self
                .tm
                .store_lockless(db, out, o, ttid, oid, serial, write)?,
            Ok(CellMode::Ignore) => {
                // Not ours (the client's table is older): nothing to keep, but its vote
                // here must not fail.
                if self.tm.register(out, o, ttid) {
                    out.push(Out::Answer {
                        conn: o.conn,
                        id: o.id,
                        packet: match write {
                            Write::Check => Packet::AnswerCheckCurrentSerial {
                                conflict: Some(Tid::ZERO),
                            },
                            _ => Packet::AnswerStoreObject {
                                conflict: Some(Tid::ZERO),
                            },
                        },
                    })
                }
            }
        }
        Ok(())
    }
}

/// Validate a store's fields (neo-spec 6.5) into what it writes.
fn store_write(
    compression: u8,
    checksum: [u8; 20],
    data: Option<crate::proto::Data>,
    data_serial: Option<Tid>,
) -> Result<Write, String> {
    if compression > 1 {
        return Err(format!("unknown compression {compression}"));
    }
    match (data, data_serial) {
        (Some(_), Some(_)) => Err("a store with both data and an undo backpointer".into()),
        (None, _) if checksum != ZERO_HASH => Err("no data but a checksum".into()),
        (None, Some(tid)) => Ok(Write::Undo(tid)),
        (None, None) => Ok(Write::Deleted),
        (Some(d), None) => {
            let sum: [u8; 20] = Sha1::digest(&d.0).into();
            if sum != checksum || checksum == ZERO_HASH {
                return Err("the data does not match its checksum".into());
            }
            Ok(Write::Data(ObjectData {
                compression,
                checksum,
                data: d.0,
            }))
        }
    }
}
