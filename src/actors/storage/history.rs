//! The storage's answers to the rest of the client API (neo-spec 6.13 to 6.15): a
//! transaction's metadata (`AskTransactionInformation`), the undo lookup
//! (`AskObjectUndoSerial`), an object's history (`AskObjectHistory`), the TID lists of
//! undoLog and the iterator (`AskTIDs`, `AskTIDsFrom`), and the primary's pack orders.
//!
//! Visibility: these read the committed tables (`trans`, `obj`), which hold nothing of a
//! transaction that is voted or locked and not unlocked here. But a transaction locked here
//! may already be committed for the cluster (the primary answers its client once every
//! storage locked, and unlocks at the same time), so its client may ask about it before our
//! unlock. A request therefore waits until the transactions locked here when it arrived are
//! unlocked (one primary round trip), as a load of a read-locked object does; only those,
//! so a stream of later commits cannot starve it. Limits are checked before it waits.
//!
//! Pack (the synchronous form: the primary asks, we answer once done) packs the partitions
//! whose cell here is UP_TO_DATE, one per step with a zero-delay timer between steps, so
//! that pings and other requests are served between partitions of a long pack.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tracing::{info, warn};

use super::transactions::{Origin, Out};
use super::Storage;
use crate::actors::{ConnId, Ctx, TimerId};
use crate::db::{partition_of, DbError};
use crate::proto::packet::{MAX_HISTORY_LENGTH, MAX_TIDS_LENGTH, MAX_UNDO_OIDS};
use crate::proto::{CellState, Data, ErrorCode, Nid, Packet, Tid, UndoSerial};

/// The token of the pack step timer (the tick's is 1, the group commit's 2).
pub(super) const PACK_TOKEN: u64 = 3;
/// The most a client may have waiting for unlocks, counted in requests plus the oids they
/// carry (an undo lookup may carry a whole transaction's).
const MAX_WAITING_WEIGHT: usize = 2 * MAX_UNDO_OIDS;

/// A request waiting for unlocks.
struct Waiting {
    origin: Origin,
    packet: Packet,
    /// The TTIDs of the transactions locked here when it arrived.
    after: BTreeSet<Tid>,
}

/// A pack in progress.
struct PackJob {
    /// The primary's request: (connection, message id).
    conn: ConnId,
    id: u32,
    tid: Tid,
    /// The next partition to consider.
    next: u32,
    timer: Option<TimerId>,
}

/// What this module keeps between events.
#[derive(Default)]
pub(super) struct History {
    waiting: Vec<Waiting>,
    pack: Option<PackJob>,
    /// Partitions packed since start (for tests).
    pub(super) packed: u64,
}

/// Whether `packet` is one of the requests this module serves clients.
pub(super) fn is_history_request(packet: &Packet) -> bool {
    matches!(
        packet,
        Packet::AskTransactionInformation { .. }
            | Packet::AskObjectUndoSerial { .. }
            | Packet::AskObjectHistory { .. }
            | Packet::AskTIDs { .. }
            | Packet::AskTIDsFrom { .. }
    )
}

/// What a request weighs while it waits.
fn weight(packet: &Packet) -> usize {
    match packet {
        Packet::AskObjectUndoSerial { oids, .. } => 1 + oids.len(),
        _ => 1,
    }
}

/// The request's limits, which do not depend on our state.
fn check_limits(packet: &Packet) -> Result<(), String> {
    let range = |first: u64, last: u64, max: u64, what: &str| {
        if last < first {
            Err(format!("{what}: last {last} below first {first}"))
        } else if last - first > max {
            Err(format!("{what}: at most {max} per request, {} asked", last - first))
        } else {
            Ok(())
        }
    };
    match packet {
        Packet::AskObjectUndoSerial { oids, .. } if oids.len() > MAX_UNDO_OIDS => Err(format!(
            "AskObjectUndoSerial: at most {MAX_UNDO_OIDS} oids, {} given",
            oids.len()
        )),
        Packet::AskObjectHistory { first, last, .. } => {
            range(*first, *last, MAX_HISTORY_LENGTH, "AskObjectHistory")
        }
        Packet::AskTIDs { first, last, .. } => range(*first, *last, MAX_TIDS_LENGTH, "AskTIDs"),
        Packet::AskTIDsFrom { length, .. } if u64::from(*length) > MAX_TIDS_LENGTH => Err(
            format!("AskTIDsFrom: at most {MAX_TIDS_LENGTH} TIDs per request, {length} asked"),
        ),
        _ => Ok(()),
    }
}

type Refusal = (ErrorCode, String);

fn error(r: Refusal) -> Packet {
    Packet::error(r.0, r.1)
}

impl Storage {
    /// A history request from a client: refused if out of limits, answered now, or once
    /// the transactions locked here now are unlocked (see the module's doc).
    pub(super) fn history_request(
        &mut self,
        o: Origin,
        packet: Packet,
        out: &mut Vec<Out>,
    ) -> Result<(), DbError> {
        if let Err(why) = check_limits(&packet) {
            out.push(answer(o, Packet::error(ErrorCode::ProtocolError, why)));
            return Ok(());
        }
        let after: BTreeSet<Tid> = self.tm.locked().into_keys().collect();
        if after.is_empty() {
            let packet = self.history_answer(&packet)?;
            out.push(answer(o, packet));
            return Ok(());
        }
        let held: usize = self
            .history
            .waiting
            .iter()
            .filter(|w| w.origin.client == o.client)
            .map(|w| weight(&w.packet))
            .sum();
        if held + weight(&packet) > MAX_WAITING_WEIGHT {
            warn!(
                "{}: {} has too many requests waiting for unlocks: closing its connection",
                self.me(),
                o.client
            );
            let why = "too many requests waiting for unlocks";
            out.push(answer(o, Packet::error(ErrorCode::ProtocolError, why)));
            out.push(Out::Close { conn: o.conn });
            return Ok(());
        }
        self.history.waiting.push(Waiting {
            origin: o,
            packet,
            after,
        });
        Ok(())
    }

    /// Serve the waiting requests whose transactions are all unlocked now.
    pub(super) fn serve_waiting_reads(&mut self, cx: &mut Ctx) {
        if self.history.waiting.is_empty() || self.failed {
            return;
        }
        let locked: BTreeMap<Tid, Tid> = self.tm.locked();
        let (ready, still): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(
            &mut self.history.waiting,
        )
        .into_iter()
        .partition(|w| !w.after.iter().any(|t| locked.contains_key(t)));
        self.history.waiting = still;
        for w in ready {
            let packet = match self.history_answer(&w.packet) {
                Ok(p) => p,
                Err(e) if e.is_fatal() => {
                    return self.db_failed(cx, "serving a client's history request", e)
                }
                Err(e) => {
                    warn!("{}: serving {}: {e}", self.me(), w.origin.client);
                    Packet::error(e.error_code(), e.to_string())
                }
            };
            self.flush(cx, vec![answer(w.origin, packet)]);
        }
    }

    /// Forget the waiting requests of a connection (None: of every one).
    pub(super) fn forget_waiting_reads(&mut self, conn: Option<ConnId>) {
        self.history
            .waiting
            .retain(|w| conn.is_some_and(|c| c != w.origin.conn));
    }

    /// Requests waiting for unlocks.
    pub fn waiting_reads(&self) -> usize {
        self.history.waiting.len()
    }

    /// The partition `id` (an oid or a tid) belongs to, if our cell of it is readable.
    fn readable(&self, id: u64) -> Result<(), Refusal> {
        let p = self.partitions()?;
        self.readable_partition(partition_of(id, p))
            .map_err(|(code, _)| (code, format!("no readable cell here for {id:#x}")))
    }

    fn partitions(&self) -> Result<u32, Refusal> {
        match &self.pt {
            Some(pt) if pt.partitions() > 0 && self.nid.is_some() => Ok(pt.partitions()),
            _ => Err((ErrorCode::NotReady, "no partition table yet".into())),
        }
    }

    fn readable_partition(&self, partition: u32) -> Result<(), Refusal> {
        let count = self.partitions()?;
        if partition >= count {
            let why = format!("no partition {partition} (there are {count})");
            return Err((ErrorCode::ProtocolError, why));
        }
        let (Some(pt), Some(me)) = (&self.pt, self.nid) else {
            return Err((ErrorCode::NotReady, "no partition table yet".into()));
        };
        match pt.cell(partition, me) {
            Some(s) if s.is_readable() => Ok(()),
            _ => Err((
                ErrorCode::NonReadableCell,
                format!("no readable cell here for partition {partition}"),
            )),
        }
    }

    /// The partitions `partition` names (None: all) that are readable here.
    fn readable_partitions(&self, partition: Option<u32>) -> Result<Vec<u32>, Refusal> {
        match partition {
            Some(p) => self.readable_partition(p).map(|()| vec![p]),
            None => {
                let count = self.partitions()?;
                Ok((0..count)
                    .filter(|p| self.readable_partition(*p).is_ok())
                    .collect())
            }
        }
    }

    /// The answer to a history request (limits checked): a request-level problem is an
    /// `Error` answer; a database error is returned.
    fn history_answer(&self, packet: &Packet) -> Result<Packet, DbError> {
        if let Err(why) = check_limits(packet) {
            return Ok(Packet::error(ErrorCode::ProtocolError, why));
        }
        Ok(match packet {
            Packet::AskTransactionInformation { tid } => {
                if let Err(r) = self.readable(tid.0) {
                    return Ok(error(r));
                }
                match self.db.transaction(*tid)? {
                    None => Packet::error(ErrorCode::TidNotFound, format!("no transaction {tid}")),
                    Some(t) => Packet::AnswerTransactionInformation {
                        tid: *tid,
                        user: Data(t.meta.user),
                        description: Data(t.meta.description),
                        extension: Data(t.meta.extension),
                        packed: t.packed,
                        oids: t.meta.oids,
                    },
                }
            }
            Packet::AskObjectUndoSerial {
                ltid,
                undone_tid,
                oids,
                ..
            } => {
                if let Some(r) = oids.iter().find_map(|o| self.readable(o.0).err()) {
                    return Ok(error(r));
                }
                let mut serials = Vec::with_capacity(oids.len());
                for oid in oids {
                    match self.db.find_undo(*oid, *ltid, *undone_tid)? {
                        Some(u) => serials.push((
                            *oid,
                            UndoSerial {
                                current: u.current,
                                undo: u.undo,
                                is_current: u.is_current,
                            },
                        )),
                        None => {
                            let why = format!(
                                "{oid} has no revision at {undone_tid} before {ltid} \
                                 (packed?): cannot undo"
                            );
                            return Ok(Packet::error(ErrorCode::OidNotFound, why));
                        }
                    }
                }
                Packet::AnswerObjectUndoSerial { serials }
            }
            Packet::AskObjectHistory { oid, first, last } => {
                if let Err(r) = self.readable(oid.0) {
                    return Ok(error(r));
                }
                match self.db.history(*oid, *first, last - first)? {
                    None => Packet::error(
                        ErrorCode::OidDoesNotExist,
                        format!("{oid} does not exist"),
                    ),
                    Some(history) => Packet::AnswerObjectHistory { oid: *oid, history },
                }
            }
            Packet::AskTIDs {
                first,
                last,
                partition,
            } => match self.readable_partitions(*partition) {
                Err(r) => error(r),
                Ok(partitions) => Packet::AnswerTIDs {
                    tids: self.db.tids(*first, last - first, &partitions)?,
                },
            },
            Packet::AskTIDsFrom {
                min_tid,
                max_tid,
                length,
                partition,
            } => match self.readable_partition(*partition) {
                Err(r) => error(r),
                Ok(()) => Packet::AnswerTIDsFrom {
                    tids: self.db.tids_from(
                        *min_tid,
                        *max_tid,
                        u64::from(*length),
                        &[*partition],
                    )?,
                },
            },
            other => Packet::error(
                ErrorCode::ProtocolError,
                format!("{} is not a history request", other.name()),
            ),
        })
    }

    // ---- pack ----

    /// The primary's AskPack: start packing at `tid`, answered once every partition whose
    /// cell here is UP_TO_DATE is packed.
    ///
    /// Why this cannot harm a transaction being committed: `Backend::pack` removes, per
    /// object, only revisions older than its newest revision at or before `tid` (and that
    /// one if it is a deletion), and unreferenced data rows, where rows of voted (`tobj`)
    /// and stored (`tdata`) transactions count as references. The primary asks only for a
    /// `tid` at or below its last committed TID, after it sent us the unlock of every
    /// transaction up to it on this same connection, so those are in `obj` before we pack;
    /// every transaction not committed yet gets a final TID above it, so its revisions are
    /// never touched. A store's conflict check compares with the newest revision, which
    /// stays (unless it is a deletion at or before `tid`: the object is then gone, and a
    /// store based on that deletion conflicts, as on a missing object). An undo stored
    /// against a revision the pack removed fails at vote with UNDO_PACK_ERROR, as in NEO.
    pub(super) fn pack_request(&mut self, cx: &mut Ctx, conn: ConnId, id: u32, tid: Tid) {
        if self.history.pack.is_some() {
            let why = "a pack is already in progress here";
            warn!("{}: {why}: refusing another one", self.me());
            self.answer(cx, conn, id, Packet::error(ErrorCode::ProtocolError, why));
            return;
        }
        info!("{}: packing at {tid}", self.me());
        self.history.pack = Some(PackJob {
            conn,
            id,
            tid,
            next: 0,
            timer: Some(cx.set_timer(Duration::ZERO, PACK_TOKEN)),
        });
    }

    /// The pack step timer fired: pack the next UP_TO_DATE partition, or answer if none is
    /// left. A table change between steps is taken into account: only partitions still
    /// UP_TO_DATE here when their turn comes are packed.
    pub(super) fn pack_timer(&mut self, cx: &mut Ctx, id: TimerId, token: u64) {
        let Some(job) = self.history.pack.as_mut() else {
            return;
        };
        if token != PACK_TOKEN || job.timer != Some(id) {
            return;
        }
        job.timer = None;
        let (tid, start) = (job.tid, job.next);
        let me: Option<Nid> = self.nid;
        let next = self.pt.as_ref().zip(me).and_then(|(pt, me)| {
            (start..pt.partitions()).find(|p| pt.cell(*p, me) == Some(CellState::UpToDate))
        });
        let Some(partition) = next else {
            let job = self.history.pack.take().expect("checked above");
            info!("{}: packed at {tid}", self.me());
            self.answer(
                cx,
                job.conn,
                job.id,
                Packet::AnswerPack { status: true },
            );
            return;
        };
        if let Err(e) = self.db.pack(tid, &[partition]) {
            let job = self.history.pack.take().expect("checked above");
            if e.is_fatal() {
                return self.db_failed(cx, "packing", e);
            }
            warn!("{}: packing partition {partition} at {tid}: {e}", self.me());
            self.answer(
                cx,
                job.conn,
                job.id,
                Packet::AnswerPack { status: false },
            );
            return;
        }
        self.history.packed += 1;
        let timer = cx.set_timer(Duration::ZERO, PACK_TOKEN);
        if let Some(job) = self.history.pack.as_mut() {
            job.next = partition + 1;
            job.timer = Some(timer);
        }
    }

    /// Operation stopped or the primary is gone: a pack in progress is dropped (the
    /// primary that asked is gone or will not wait for us any more).
    pub(super) fn drop_pack(&mut self, cx: &mut Ctx) {
        if let Some(job) = self.history.pack.take() {
            if let Some(t) = job.timer {
                cx.cancel_timer(t);
            }
            info!("{}: pack at {} abandoned", self.me(), job.tid);
        }
    }
}

fn answer(o: Origin, packet: Packet) -> Out {
    Out::Answer {
        conn: o.conn,
        id: o.id,
        packet,
    }
}
