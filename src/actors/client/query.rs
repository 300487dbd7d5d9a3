//! The client's reads of what is not an object revision (neo-spec 6.13, 6.14): transaction
//! information, undo serials, object history, the undo log and the TIDs of a range. A
//! `Query` asks one readable cell per partition it needs (the undo log first asks every
//! storage with readable cells), retries a partition on another cell when its cell fails
//! (with the loads' cell choice, `Client::ask_readable`), and merges the answers into one
//! reply. Its requests carry the request table's deadline, so every query is answered.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{debug, warn};

use super::{Asked, CallId, Client, ClientError, Outcome, TransactionInfo};
use crate::actors::{CloseReason, ConnId, Ctx};
use crate::proto::{ErrorCode, Nid, Oid, Packet, Tid, UndoSerial};

/// Identifies a query among those in flight.
pub type QueryId = u64;

/// What a query asks.
#[derive(Debug)]
pub(super) enum QueryOp {
    TransactionInfo(Tid),
    UndoSerials {
        ttid: Tid,
        ltid: Tid,
        undone: Tid,
        /// The oids asked, once each, in the caller's order.
        oids: Vec<Oid>,
        by_part: BTreeMap<u32, Vec<Oid>>,
    },
    History {
        oid: Oid,
        size: u32,
    },
    /// Every partition's newest `last` TIDs (the cut to `first..last` is ours: a storage
    /// skipping `first` of its own TIDs would skip others' too).
    UndoLog {
        first: u64,
        last: u64,
    },
    TidsFrom {
        min: Tid,
        max: Tid,
        limit: u32,
    },
}

/// A partition no answer covered yet.
#[derive(Default, Debug)]
pub(super) struct PartWait {
    tried: BTreeSet<Nid>,
    /// Requests in flight that cover it.
    asking: u32,
}

pub(super) struct Query {
    call: CallId,
    op: QueryOp,
    waiting: BTreeMap<u32, PartWait>,
    info: Option<TransactionInfo>,
    serials: BTreeMap<Oid, UndoSerial>,
    history: Vec<(Tid, u64)>,
    tids: BTreeSet<Tid>,
}

/// What a storage's answer to a query request means.
enum Answered {
    /// Merged: its partitions are covered.
    Covered,
    /// The query's final answer (an error that no other cell would change).
    Final(ClientError),
    /// That cell cannot serve it now: try another.
    Retry,
    /// Not an answer to what was asked: the storage is broken.
    Bad(String),
}

impl Client {
    /// Start a query of the partitions `parts` (a ready client only).
    pub(super) fn query(&mut self, cx: &mut Ctx, call: CallId, op: QueryOp, parts: Vec<u32>) {
        let q = self.next_query;
        self.next_query += 1;
        let waiting = parts.iter().map(|p| (*p, PartWait::default())).collect();
        let undo_log = matches!(op, QueryOp::UndoLog { .. });
        self.queries.insert(
            q,
            Query {
                call,
                op,
                waiting,
                info: None,
                serials: BTreeMap::new(),
                history: vec![],
                tids: BTreeSet::new(),
            },
        );
        if undo_log {
            self.undo_log_ask_storages(cx, q);
        }
        for p in parts {
            if !self.queries.contains_key(&q) {
                return;
            }
            if self.queries[&q]
                .waiting
                .get(&p)
                .is_some_and(|w| w.asking == 0)
            {
                self.query_send(cx, q, p);
            }
        }
        self.query_check(cx, q);
    }

    /// The undo log asks every storage with readable cells at once, for all of them.
    fn undo_log_ask_storages(&mut self, cx: &mut Ctx, q: QueryId) {
        let Some(QueryOp::UndoLog { last, .. }) = self.queries.get(&q).map(|q| &q.op) else {
            return;
        };
        let last = *last;
        let Some(pt) = self.pt.as_ref() else { return };
        let mut by_node: BTreeMap<Nid, Vec<u32>> = BTreeMap::new();
        for p in 0..pt.partitions() {
            for (nid, state) in pt.row(p) {
                if state.is_readable() {
                    by_node.entry(nid).or_default().push(p);
                }
            }
        }
        for (nid, parts) in by_node {
            if !self.storage_usable(nid) {
                continue;
            }
            let packet = Packet::AskTIDs {
                first: 0,
                last,
                partition: None,
            };
            let asked = Asked::Query {
                q,
                nid,
                parts: parts.clone(),
            };
            if self.send_storage(cx, nid, packet, Some(asked)) {
                let query = self.queries.get_mut(&q).expect("above");
                for p in parts {
                    if let Some(w) = query.waiting.get_mut(&p) {
                        w.asking += 1;
                    }
                }
            }
        }
    }

    /// The request for partition `p` alone.
    fn query_packet(op: &QueryOp, p: u32) -> Packet {
        match op {
            QueryOp::TransactionInfo(tid) => Packet::AskTransactionInformation { tid: *tid },
            QueryOp::UndoSerials {
                ttid,
                ltid,
                undone,
                by_part,
                ..
            } => Packet::AskObjectUndoSerial {
                ttid: *ttid,
                ltid: *ltid,
                undone_tid: *undone,
                oids: by_part.get(&p).cloned().unwrap_or_default(),
            },
            QueryOp::History { oid, size } => Packet::AskObjectHistory {
                oid: *oid,
                first: 0,
                last: u64::from(*size),
            },
            QueryOp::UndoLog { last, .. } => Packet::AskTIDs {
                first: 0,
                last: *last,
                partition: Some(p),
            },
            QueryOp::TidsFrom { min, max, limit } => Packet::AskTIDsFrom {
                min_tid: *min,
                max_tid: *max,
                length: *limit,
                partition: p,
            },
        }
    }

    /// Ask partition `p` of a readable cell not tried yet; none left fails the query.
    fn query_send(&mut self, cx: &mut Ctx, q: QueryId, p: u32) {
        let Some(query) = self.queries.get_mut(&q) else {
            return;
        };
        let packet = Self::query_packet(&query.op, p);
        let Some(w) = query.waiting.get_mut(&p) else {
            return;
        };
        let mut tried = std::mem::take(&mut w.tried);
        let sent = self.ask_readable(cx, u64::from(p), &mut tried, &packet, |nid| Asked::Query {
            q,
            nid,
            parts: vec![p],
        });
        let Some(w) = self
            .queries
            .get_mut(&q)
            .and_then(|query| query.waiting.get_mut(&p))
        else {
            return;
        };
        w.tried = tried;
        match sent {
            Some(_) => w.asking += 1,
            None => {
                let e = ClientError::Unavailable(format!("no readable cell for partition {p}"));
                self.query_end(cx, q, Err(e));
            }
        }
    }

    fn query_end(&mut self, cx: &mut Ctx, q: QueryId, result: Result<Outcome, ClientError>) {
        if let Some(query) = self.queries.remove(&q) {
            self.reply(cx, query.call, result);
        }
    }

    /// Every partition covered: answer.
    fn query_check(&mut self, cx: &mut Ctx, q: QueryId) {
        if !self.queries.get(&q).is_some_and(|q| q.waiting.is_empty()) {
            return;
        }
        let query = self.queries.remove(&q).expect("above");
        let result = match query.op {
            QueryOp::TransactionInfo(tid) => query
                .info
                .map(Outcome::Transaction)
                .ok_or(ClientError::UnknownTransaction(tid)),
            QueryOp::UndoSerials { oids, .. } => {
                let serials = oids
                    .iter()
                    .filter_map(|o| query.serials.get(o).map(|s| (*o, *s)))
                    .collect();
                Ok(Outcome::UndoSerials(serials))
            }
            QueryOp::History { .. } => Ok(Outcome::History(query.history)),
            QueryOp::UndoLog { first, last } => {
                let tids = query
                    .tids
                    .iter()
                    .rev()
                    .skip(usize::try_from(first).unwrap_or(usize::MAX))
                    .take(usize::try_from(last - first).unwrap_or(usize::MAX))
                    .copied()
                    .collect();
                Ok(Outcome::Tids(tids))
            }
            QueryOp::TidsFrom { limit, .. } => Ok(Outcome::Tids(
                query.tids.iter().take(limit as usize).copied().collect(),
            )),
        };
        self.reply(cx, query.call, result);
    }

    /// A storage answered request `parts` of query `q`.
    pub(super) fn query_answered(
        &mut self,
        cx: &mut Ctx,
        conn: ConnId,
        nid: Nid,
        q: QueryId,
        parts: Vec<u32>,
        packet: Packet,
    ) {
        let np = self.pt.as_ref().map_or(0, |pt| pt.partitions() as u64);
        let Some(query) = self.queries.get_mut(&q) else {
            return;
        };
        let answered = query.merge(&parts, np, packet);
        match answered {
            Answered::Covered => {
                for p in &parts {
                    query.waiting.remove(p);
                }
                self.query_check(cx, q);
            }
            Answered::Final(e) => self.query_end(cx, q, Err(e)),
            Answered::Retry => self.query_failed(cx, q, nid, parts),
            Answered::Bad(why) => {
                warn!("client: storage {nid}: {why}");
                self.close_storage(cx, conn, CloseReason::Protocol(why));
                self.query_failed(cx, q, nid, parts);
            }
        }
    }

    /// Request `parts` of query `q` to `nid` failed: ask those partitions of another cell
    /// once no other request covers them.
    pub(super) fn query_failed(&mut self, cx: &mut Ctx, q: QueryId, nid: Nid, parts: Vec<u32>) {
        let Some(query) = self.queries.get_mut(&q) else {
            return;
        };
        let mut again = vec![];
        for p in parts {
            if let Some(w) = query.waiting.get_mut(&p) {
                w.tried.insert(nid);
                w.asking = w.asking.saturating_sub(1);
                if w.asking == 0 {
                    again.push(p);
                }
            }
        }
        for p in again {
            self.query_send(cx, q, p);
        }
    }

    /// The client stops: its queries are answered with the other calls.
    pub(super) fn queries_clear(&mut self) {
        self.queries.clear();
    }
}

impl Query {
    /// Merge a storage's answer for `parts` (`np` partitions in the table).
    fn merge(&mut self, parts: &[u32], np: u64, packet: Packet) -> Answered {
        let single = match parts {
            [p] => Some(*p),
            _ => None,
        };
        match (&self.op, packet) {
            (
                QueryOp::TransactionInfo(asked),
                Packet::AnswerTransactionInformation {
                    tid,
                    user,
                    description,
                    extension,
                    packed,
                    oids,
                },
            ) => {
                if tid != *asked {
                    return Answered::Bad(format!("information on {tid}, asked {asked}"));
                }
                self.info = Some(TransactionInfo {
                    tid,
                    user: user.0,
                    description: description.0,
                    extension: extension.0,
                    packed,
                    oids,
                });
                Answered::Covered
            }
            (
                QueryOp::TransactionInfo(tid),
                Packet::Error {
                    code: ErrorCode::TidNotFound,
                    ..
                },
            ) => Answered::Final(ClientError::UnknownTransaction(*tid)),
            (QueryOp::UndoSerials { by_part, .. }, Packet::AnswerObjectUndoSerial { serials }) => {
                let asked = single.and_then(|p| by_part.get(&p));
                let Some(asked) = asked else {
                    return Answered::Bad("undo serials for a request it was not asked".into());
                };
                if let Some((oid, _)) = serials.iter().find(|(o, _)| !asked.contains(o)) {
                    return Answered::Bad(format!("undo serial of {oid}, not asked"));
                }
                self.serials.extend(serials);
                Answered::Covered
            }
            (
                QueryOp::UndoSerials { .. },
                Packet::Error {
                    code: ErrorCode::OidNotFound,
                    ..
                },
            ) => Answered::Final(ClientError::UndoFailed("non-undoable transaction".into())),
            (QueryOp::History { oid, size }, Packet::AnswerObjectHistory { oid: a, history }) => {
                let descending = history.windows(2).all(|w| w[0].0 > w[1].0);
                if a != *oid || history.len() > *size as usize || !descending {
                    return Answered::Bad(format!("a bad history of {a} for {oid}"));
                }
                self.history = history;
                Answered::Covered
            }
            (
                QueryOp::History { oid, .. },
                Packet::Error {
                    code: ErrorCode::OidDoesNotExist,
                    ..
                },
            ) => Answered::Final(ClientError::DoesNotExist(*oid)),
            (QueryOp::UndoLog { last, .. }, Packet::AnswerTIDs { tids }) => {
                if tids.len() as u64 > *last {
                    return Answered::Bad(format!("{} TIDs, asked at most {last}", tids.len()));
                }
                if let Some(p) = single.filter(|_| np > 0) {
                    if tids.iter().any(|t| t.0 % np != u64::from(p)) {
                        return Answered::Bad(format!("TIDs not of partition {p}"));
                    }
                }
                self.tids.extend(tids);
                Answered::Covered
            }
            (QueryOp::TidsFrom { min, max, limit }, Packet::AnswerTIDsFrom { tids }) => {
                let fits = |t: &Tid| {
                    t >= min
                        && t <= max
                        && single.is_some_and(|p| np > 0 && t.0 % np == u64::from(p))
                };
                if tids.len() > *limit as usize || !tids.iter().all(fits) {
                    return Answered::Bad("TIDs out of the range or partition asked".into());
                }
                self.tids.extend(tids);
                Answered::Covered
            }
            (_, Packet::Error { code, message }) => {
                debug!("client: query refused: {code}: {message}");
                Answered::Retry
            }
            (op, other) => Answered::Bad(format!("{} answers {op:?}", other.name())),
        }
    }
}
