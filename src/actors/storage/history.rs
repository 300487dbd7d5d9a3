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
use crate::proto::{CellState, Data, ErrorCode, Nid, Oid, Packet, Tid, UndoSerial};

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
            Err(format!(
                "{what}: at most {max} per request, {} asked",
                last - first
            ))
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
        Packet::AskTIDsFrom { length, .. } if u64::from(*length) > MAX_TIDS_LENGTH => Err(format!(
            "AskTIDsFrom: at most {MAX_TIDS_LENGTH} TIDs per request, {length} asked"
        )),
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
        let (ready, still): (Vec<Waiting>, Vec<Waiting>) =
            std::mem::take(&mut self.history.waiting)
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
                                undo: if self.tm.mutants.undo_wrong_serial {
                                    Some(*undone_tid)
                                } else {
                                    u.undo
                                },
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
                    None => {
                        Packet::error(ErrorCode::OidDoesNotExist, format!("{oid} does not exist"))
                    }
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
            self.answer(cx, job.conn, job.id, Packet::AnswerPack { status: true });
            return;
        };
        if let Err(e) = self.db.pack(tid, &[partition]) {
            let job = self.history.pack.take().expect("checked above");
            if e.is_fatal() {
                return self.db_failed(cx, "packing", e);
            }
            warn!("{}: packing partition {partition} at {tid}: {e}", self.me());
            self.answer(cx, job.conn, job.id, Packet::AnswerPack { status: false });
            return;
        }
        if cx.mutant("pack-removes-current") {
            if let Err(e) = self.pack_removes_current(tid, partition) {
                return self.db_failed(cx, "packing (mutant)", e);
            }
        }
        self.history.packed += 1;
        let timer = cx.set_timer(Duration::ZERO, PACK_TOKEN);
        if let Some(job) = self.history.pack.as_mut() {
            job.next = partition + 1;
            job.timer = Some(timer);
        }
    }

    /// The `pack-removes-current` mutant: after the pack, also delete each object's newest
    /// revision at or before `tid` (the one the pack must keep).
    fn pack_removes_current(&mut self, tid: Tid, partition: u32) -> Result<(), DbError> {
        let revs = self
            .db
            .replication_objects(partition, Tid(0), tid, Oid(0), 1 << 30)?;
        let mut newest: BTreeMap<Oid, Tid> = BTreeMap::new();
        for (serial, oid) in revs {
            let n = newest.entry(oid).or_insert(serial);
            *n = (*n).max(serial);
        }
        for (oid, serial) in newest {
            self.db.delete_object(oid, serial)?;
        }
        self.db.commit()
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

#[cfg(test)]
mod tests {
    use super::super::serving_tests::{commit, error_code, meta, store, stored, Setup, CLIENT};
    use super::*;
    use crate::actors::testing::sent;
    use crate::actors::{CloseReason, Effect, Event};
    use crate::db::Load;
    use crate::proto::{CellState, Oid};
    use CellState::*;

    fn info(tid: u64) -> Packet {
        Packet::AskTransactionInformation { tid: Tid(tid) }
    }

    fn history(oid: u64, first: u64, last: u64) -> Packet {
        Packet::AskObjectHistory {
            oid: Oid(oid),
            first,
            last,
        }
    }

    fn tids(first: u64, last: u64, partition: Option<u32>) -> Packet {
        Packet::AskTIDs {
            first,
            last,
            partition,
        }
    }

    fn tids_from(min: u64, max: u64, length: u32, partition: u32) -> Packet {
        Packet::AskTIDsFrom {
            min_tid: Tid(min),
            max_tid: Tid(max),
            length,
            partition,
        }
    }

    fn undo(ltid: u64, undone: u64, oids: &[u64]) -> Packet {
        Packet::AskObjectUndoSerial {
            ttid: Tid(1000),
            ltid: Tid(ltid),
            undone_tid: Tid(undone),
            oids: oids.iter().map(|o| Oid(*o)).collect(),
        }
    }

    fn tid_list(t: &[u64]) -> Vec<Tid> {
        t.iter().map(|t| Tid(*t)).collect()
    }

    /// Partitions: 0 ours and readable, 1 not ours. Objects 0 and 2 committed in 110, 120
    /// (object 0) and 130 (object 2): every id is even, so everything is in partition 0.
    fn committed(name: &str) -> Setup {
        let mut s = Setup::new(name, None, &[Some(UpToDate), None]);
        commit(&mut s, 100, 0, 0, 110);
        commit(&mut s, 114, 0, 110, 120);
        commit(&mut s, 124, 2, 0, 130);
        s
    }

    #[test]
    fn transaction_information_answers_readable_committed_transactions() {
        let mut s = committed("hist-info");
        assert_eq!(
            s.ask(info(120)),
            vec![Packet::AnswerTransactionInformation {
                tid: Tid(120),
                user: Data(b"u".to_vec()),
                description: Data::default(),
                extension: Data::default(),
                packed: false,
                oids: vec![Oid(0)],
            }]
        );
        assert_eq!(error_code(&s.ask(info(122))), Some(ErrorCode::TidNotFound));
        assert_eq!(
            error_code(&s.ask(info(121))),
            Some(ErrorCode::NonReadableCell)
        );
        // Ids no backend can hold are unknown, not errors of the node.
        assert_eq!(
            error_code(&s.ask(info(u64::MAX - 1))),
            Some(ErrorCode::TidNotFound)
        );
        assert!(!s.h.actor.failed);
    }

    #[test]
    fn object_history_is_newest_first_bounded_and_checked() {
        let mut s = committed("hist-history");
        assert_eq!(
            s.ask(history(0, 0, 10)),
            vec![Packet::AnswerObjectHistory {
                oid: Oid(0),
                history: vec![(Tid(120), 1), (Tid(110), 1)],
            }]
        );
        assert_eq!(
            s.ask(history(0, 1, 2)),
            vec![Packet::AnswerObjectHistory {
                oid: Oid(0),
                history: vec![(Tid(110), 1)],
            }]
        );
        assert_eq!(
            s.ask(history(4, 0, 10)),
            vec![Packet::error(
                ErrorCode::OidDoesNotExist,
                format!("{} does not exist", Oid(4))
            )]
        );
        assert_eq!(
            error_code(&s.ask(history(1, 0, 10))),
            Some(ErrorCode::NonReadableCell)
        );
        for bad in [
            history(0, 5, 4),
            history(0, 0, MAX_HISTORY_LENGTH + 1),
            history(0, u64::MAX - MAX_HISTORY_LENGTH - 1, u64::MAX),
        ] {
            assert_eq!(
                error_code(&s.ask(bad.clone())),
                Some(ErrorCode::ProtocolError),
                "{bad:?}"
            );
        }
        // At the limit, and far past the end: served.
        assert!(matches!(
            &s.ask(history(0, 0, MAX_HISTORY_LENGTH))[..],
            [Packet::AnswerObjectHistory { history, .. }] if history.len() == 2
        ));
        assert_eq!(
            s.ask(history(0, u64::MAX - 1, u64::MAX)),
            vec![Packet::AnswerObjectHistory {
                oid: Oid(0),
                history: vec![],
            }]
        );
        assert!(!s.h.actor.failed);
    }

    #[test]
    fn tid_lists_cover_readable_partitions_only() {
        let mut s = committed("hist-tids");
        let answer = |t: &[u64]| vec![Packet::AnswerTIDs { tids: tid_list(t) }];
        assert_eq!(s.ask(tids(0, 10, None)), answer(&[130, 120, 110]));
        assert_eq!(s.ask(tids(1, 2, Some(0))), answer(&[120]));
        assert_eq!(
            error_code(&s.ask(tids(0, 10, Some(1)))),
            Some(ErrorCode::NonReadableCell)
        );
        for bad in [
            tids(0, 10, Some(2)),
            tids(0, 10, Some(u32::MAX)),
            tids(3, 2, None),
            tids(0, MAX_TIDS_LENGTH + 1, None),
            tids_from(0, 1000, MAX_TIDS_LENGTH as u32 + 1, 0),
            tids_from(0, 1000, 10, 2),
        ] {
            assert_eq!(
                error_code(&s.ask(bad.clone())),
                Some(ErrorCode::ProtocolError),
                "{bad:?}"
            );
        }
        let from = |t: &[u64]| vec![Packet::AnswerTIDsFrom { tids: tid_list(t) }];
        assert_eq!(s.ask(tids_from(0, u64::MAX, 10, 0)), from(&[110, 120, 130]));
        assert_eq!(s.ask(tids_from(111, 130, 1, 0)), from(&[120]));
        assert_eq!(s.ask(tids_from(131, 100, 10, 0)), from(&[]));
        assert_eq!(
            error_code(&s.ask(tids_from(0, 1000, 10, 1))),
            Some(ErrorCode::NonReadableCell)
        );
        // A cell that is not readable any more (outdated) stops being listed.
        s.master_says(Packet::NotifyPartitionChanges {
            ptid: crate::proto::Ptid(2),
            num_replicas: 0,
            changes: vec![(0, s.h.actor.nid.unwrap(), OutOfDate)],
        });
        assert_eq!(s.ask(tids(0, 10, None)), answer(&[]));
        assert_eq!(
            error_code(&s.ask(tids_from(0, 1000, 10, 0))),
            Some(ErrorCode::NonReadableCell)
        );
    }

    #[test]
    fn undo_lookups_follow_the_asked_order_and_refuse_what_cannot_be_undone() {
        let mut s = committed("hist-undo");
        let entry = |oid: u64, current: u64, undo: Option<u64>, is_current: bool| {
            (
                Oid(oid),
                UndoSerial {
                    current: Tid(current),
                    undo: undo.map(Tid),
                    is_current,
                },
            )
        };
        // Undo of 120 (current): back to 110's data.
        assert_eq!(
            s.ask(undo(200, 120, &[0])),
            vec![Packet::AnswerObjectUndoSerial {
                serials: vec![entry(0, 120, Some(110), true)],
            }]
        );
        // Undo of 110 (the creation, no longer current), with a snapshot before 120.
        assert_eq!(
            s.ask(undo(200, 110, &[0])),
            vec![Packet::AnswerObjectUndoSerial {
                serials: vec![entry(0, 120, None, false)],
            }]
        );
        assert_eq!(
            s.ask(undo(115, 110, &[0])),
            vec![Packet::AnswerObjectUndoSerial {
                serials: vec![entry(0, 110, None, true)],
            }]
        );
        // Two objects of one transaction, in the asked order.
        assert_eq!(s.ask(store(144, 0, 120, b"w")), stored(None));
        assert_eq!(s.ask(store(144, 2, 130, b"x")), stored(None));
        s.ask(meta(144, &[0, 2]));
        s.master_says(Packet::AskLockInformation {
            ttid: Tid(144),
            tid: Tid(150),
        });
        s.master_says(Packet::NotifyUnlockInformation { ttid: Tid(144) });
        assert_eq!(
            s.ask(undo(200, 150, &[2, 0])),
            vec![Packet::AnswerObjectUndoSerial {
                serials: vec![
                    entry(2, 150, Some(130), true),
                    entry(0, 150, Some(120), true)
                ],
            }]
        );
        // An object without a revision in the undone transaction (or packed away).
        assert_eq!(
            error_code(&s.ask(undo(200, 120, &[0, 2]))),
            Some(ErrorCode::OidNotFound)
        );
        assert_eq!(
            error_code(&s.ask(undo(200, 120, &[1]))),
            Some(ErrorCode::NonReadableCell)
        );
        let huge = Packet::AskObjectUndoSerial {
            ttid: Tid(1000),
            ltid: Tid(200),
            undone_tid: Tid(120),
            oids: vec![Oid(0); MAX_UNDO_OIDS + 1],
        };
        assert_eq!(error_code(&s.ask(huge)), Some(ErrorCode::ProtocolError));
        assert!(!s.h.actor.failed);
    }

    #[test]
    fn requests_wait_for_the_transactions_locked_on_arrival_only() {
        let mut s = committed("hist-wait");
        // A voted transaction is not visible, and delays nothing.
        assert_eq!(s.ask(store(200, 0, 120, b"w")), stored(None));
        assert_eq!(s.ask(meta(200, &[0])), vec![Packet::AnswerStoreTransaction]);
        assert_eq!(
            s.ask(tids(0, 10, None)),
            vec![Packet::AnswerTIDs {
                tids: tid_list(&[130, 120, 110])
            }]
        );
        assert_eq!(error_code(&s.ask(info(210))), Some(ErrorCode::TidNotFound));
        // Locked as 210: the primary may have answered its client already, so requests
        // wait for its unlock.
        s.master_says(Packet::AskLockInformation {
            ttid: Tid(200),
            tid: Tid(210),
        });
        assert!(s.ask(tids(0, 10, None)).is_empty());
        assert!(s.ask(info(210)).is_empty());
        assert!(s.ask(history(0, 0, 10)).is_empty());
        // Bad requests do not wait.
        assert_eq!(
            error_code(&s.ask(tids(0, u64::MAX, None))),
            Some(ErrorCode::ProtocolError)
        );
        assert_eq!(s.h.actor.waiting_reads(), 3);
        // Another transaction locked later does not delay them further.
        assert_eq!(s.ask(store(300, 2, 130, b"x")), stored(None));
        s.ask(meta(300, &[2]));
        s.master_says(Packet::AskLockInformation {
            ttid: Tid(300),
            tid: Tid(310),
        });
        let out = s.h.handle(Event::Received {
            conn: s.master,
            msg: crate::proto::Message {
                id: 7,
                packet: Packet::NotifyUnlockInformation { ttid: Tid(200) },
            },
        });
        let out = s.settle(out);
        let answers = sent(&out, CLIENT);
        assert_eq!(
            answers,
            vec![
                Packet::AnswerTIDs {
                    tids: tid_list(&[210, 130, 120, 110])
                },
                Packet::AnswerTransactionInformation {
                    tid: Tid(210),
                    user: Data(b"u".to_vec()),
                    description: Data::default(),
                    extension: Data::default(),
                    packed: false,
                    oids: vec![Oid(0)],
                },
                Packet::AnswerObjectHistory {
                    oid: Oid(0),
                    history: vec![(Tid(210), 1), (Tid(120), 1), (Tid(110), 1)],
                },
            ]
        );
        assert_eq!(s.h.actor.waiting_reads(), 0);
        // A client that leaves takes its waiting requests with it.
        assert!(s.ask(tids(0, 10, None)).is_empty());
        assert_eq!(s.h.actor.waiting_reads(), 1);
        s.h.handle(Event::Closed {
            conn: CLIENT,
            reason: CloseReason::PeerClosed,
        });
        assert_eq!(s.h.actor.waiting_reads(), 0);
    }

    #[test]
    fn losing_operation_forgets_waiting_requests() {
        let mut s = committed("hist-stop");
        assert_eq!(s.ask(store(200, 0, 120, b"w")), stored(None));
        s.ask(meta(200, &[0]));
        s.master_says(Packet::AskLockInformation {
            ttid: Tid(200),
            tid: Tid(210),
        });
        assert!(s.ask(tids(0, 10, None)).is_empty());
        s.master_says(Packet::StopOperation);
        assert_eq!(s.h.actor.waiting_reads(), 0);
    }

    /// AskPack from the primary; the pack steps run (their timers fired); what the primary
    /// got back.
    fn pack(s: &mut Setup, tid: u64) -> Vec<Packet> {
        let mut out = s.h.handle(Event::Received {
            conn: s.master,
            msg: crate::proto::Message {
                id: 77,
                packet: Packet::AskPack { tid: Tid(tid) },
            },
        });
        let mut answers = Vec::new();
        for _ in 0..100 {
            answers.extend(sent(&out, s.master));
            let timers: Vec<_> = out
                .iter()
                .filter_map(|e| match e {
                    Effect::SetTimer { id, token, .. } if *token == PACK_TOKEN => Some(*id),
                    _ => None,
                })
                .collect();
            let Some(id) = timers.first() else {
                return answers;
            };
            out = s.h.handle(Event::Timer {
                id: *id,
                token: PACK_TOKEN,
            });
        }
        panic!("the pack never ends");
    }

    #[test]
    fn pack_removes_old_revisions_of_up_to_date_partitions_only() {
        // Partitions: 0 ours UP_TO_DATE, 1 ours UP_TO_DATE, 2 ours OUT_OF_DATE.
        let mut s = Setup::new("hist-pack", None, &[Some(UpToDate), Some(UpToDate), None]);
        // Object 0 (partition 0) and 1 (partition 1) twice each (each transaction in the
        // partition of its TTID, as the primary chooses).
        commit(&mut s, 102, 0, 0, 111);
        commit(&mut s, 103, 1, 0, 121);
        commit(&mut s, 105, 0, 111, 132);
        commit(&mut s, 106, 1, 121, 142);
        assert_eq!(pack(&mut s, 135), vec![Packet::AnswerPack { status: true }]);
        assert_eq!(s.h.actor.history.packed, 2);
        // Object 0: 111 is gone (132 is its revision at 135); object 1: 121 stays (its
        // only revision at 135), 142 too.
        assert_eq!(
            s.ask(history(0, 0, 10)),
            vec![Packet::AnswerObjectHistory {
                oid: Oid(0),
                history: vec![(Tid(132), 1)],
            }]
        );
        assert!(matches!(
            s.db().load(Oid(1), Some(Tid(121)), None),
            Ok(Load::Found(_))
        ));
        assert!(matches!(
            s.db().load(Oid(0), Some(Tid(111)), None),
            Ok(Load::NotFound)
        ));
        // Transactions at or before 135 are marked packed, and their undo is refused.
        assert!(matches!(
            &s.ask(info(111))[..],
            [Packet::AnswerTransactionInformation { packed: true, .. }]
        ));
        assert!(matches!(
            &s.ask(info(142))[..],
            [Packet::AnswerTransactionInformation { packed: false, .. }]
        ));
        assert_eq!(
            error_code(&s.ask(undo(200, 111, &[0]))),
            Some(ErrorCode::OidNotFound)
        );
        // A cell out of date is not packed.
        let mut s = Setup::new(
            "hist-pack-ood",
            None,
            &[Some(UpToDate), Some(OutOfDate), None],
        );
        assert_eq!(pack(&mut s, 135), vec![Packet::AnswerPack { status: true }]);
        assert_eq!(s.h.actor.history.packed, 1);
    }

    #[test]
    fn a_pack_is_dropped_when_operation_stops() {
        let mut s = committed("hist-pack-stop");
        let out = s.h.handle(Event::Received {
            conn: s.master,
            msg: crate::proto::Message {
                id: 77,
                packet: Packet::AskPack { tid: Tid(120) },
            },
        });
        let timer = out.iter().find_map(|e| match e {
            Effect::SetTimer { id, token, .. } if *token == PACK_TOKEN => Some(*id),
            _ => None,
        });
        // A second order while one runs is refused.
        let again = s.master_says(Packet::AskPack { tid: Tid(120) });
        assert_eq!(error_code(&again), Some(ErrorCode::ProtocolError));
        s.master_says(Packet::StopOperation);
        let out = s.h.handle(Event::Timer {
            id: timer.unwrap(),
            token: PACK_TOKEN,
        });
        assert!(sent(&out, s.master).is_empty());
        assert_eq!(s.h.actor.history.packed, 0);
    }

    #[test]
    fn the_undo_oid_limit_is_what_a_transaction_may_write() {
        assert_eq!(MAX_UNDO_OIDS, crate::db::MAX_TXN_OIDS);
    }
}
