//! Group commit: the database runs in deferred mode (`Backend::set_deferred`), so votes,
//! locks and unlocks write without committing; the answers that claim durability
//! (`AnswerStoreTransaction` / `AnswerVoteTransaction`, `AnswerInformationLocked`) wait
//! here, and one database commit releases them all. The commit runs on a zero-delay timer
//! armed by the first uncommitted call, so everything the host hands us before it fires
//! shares it, or at once when the batch reaches its bound. Once an answer waits, every later
//! answer or notification waits behind it, so a peer sees them in the order they were made.
//! Unlocks need no answer and no fsync of their own (as in NEO, whose unlock commit is
//! deferred by a second): a crash that loses one leaves the transaction locked, and
//! verification replays it. So an unlock rides the next commit that something durable
//! needs, or a commit [`UNLOCK_DELAY`] later if nothing else commits; loads run on the same
//! database session, so they see unlocked data at once. A failed commit is fatal: the node
//! stops and nothing waiting is sent.

use super::transactions::Out;
use super::Storage;
use crate::actors::{Ctx, TimerId};
use crate::proto::Packet;
use std::time::Duration;

/// The token of the flush timer (the tick's is 1).
pub(super) const FLUSH_TOKEN: u64 = 2;
/// A batch is committed at once when this many answers wait...
const MAX_ANSWERS: usize = 256;
/// ... or when these many deferred calls are uncommitted (bounds what a crash loses and
/// the commit's size).
const MAX_CALLS: usize = 256;
/// How long an unlock may stay uncommitted when nothing durable commits meanwhile: bounds
/// what verification may have to replay after a crash.
pub(super) const UNLOCK_DELAY: Duration = Duration::from_secs(1);

/// What waits for the next commit.
#[derive(Default)]
pub(super) struct Batch {
    /// In the order they were made.
    held: Vec<Out>,
    /// Deferred calls (votes, locks, unlocks) since the last commit.
    calls: usize,
    timer: Option<TimerId>,
    /// Whether `timer` is the zero-delay one (something waits for durability), not the
    /// unlocks' `UNLOCK_DELAY`.
    urgent: bool,
    /// Commits done (for tests and tracing).
    pub(super) commits: u64,
}

/// Whether an answer reports something a database commit must have made durable.
fn needs_commit(packet: &Packet) -> bool {
    matches!(
        packet,
        Packet::AnswerStoreTransaction
            | Packet::AnswerVoteTransaction
            | Packet::AnswerInformationLocked { .. }
    )
}

impl Storage {
    /// A deferred write-path call whose answer claims durability (vote, lock) may have
    /// written: commit soon.
    pub(super) fn deferred_call(&mut self, cx: &mut Ctx) {
        self.batch.calls += 1;
        if !self.batch.urgent {
            if let Some(id) = self.batch.timer.take() {
                cx.cancel_timer(id);
            }
            self.batch.timer = Some(cx.set_timer(Duration::ZERO, FLUSH_TOKEN));
            self.batch.urgent = true;
        }
        if self.batch.calls >= MAX_CALLS {
            self.commit_batch(cx);
        }
    }

    /// An unlock wrote: commit with the next durable call, or within `UNLOCK_DELAY`.
    pub(super) fn lazy_call(&mut self, cx: &mut Ctx) {
        self.batch.calls += 1;
        if self.batch.timer.is_none() {
            self.batch.timer = Some(cx.set_timer(UNLOCK_DELAY, FLUSH_TOKEN));
        }
        if self.batch.calls >= MAX_CALLS {
            self.commit_batch(cx);
        }
    }

    /// Send `out` now, or hold it for the next commit if it needs one or something before
    /// it waits. Returns it if it is to be sent (or done) now.
    pub(super) fn hold(&mut self, cx: &mut Ctx, out: Out) -> Option<Out> {
        let durable = match &out {
            Out::Answer { packet, .. } => needs_commit(packet),
            Out::Notify { .. } => false,
            // Closing a connection is no answer: the messages held for it are dropped.
            Out::Close { .. } => return Some(out),
        };
        if !durable && self.batch.held.is_empty() {
            return Some(out);
        }
        if durable {
            self.deferred_call(cx);
        }
        self.batch.held.push(out);
        if self.batch.held.len() >= MAX_ANSWERS {
            self.commit_batch(cx);
        }
        None
    }

    /// The flush timer fired.
    pub(super) fn flush_timer(&mut self, cx: &mut Ctx, id: TimerId, token: u64) {
        if token == FLUSH_TOKEN && self.batch.timer == Some(id) {
            self.batch.timer = None;
            self.batch.urgent = false;
            self.commit_batch(cx);
        }
    }

    /// Commit what deferred calls wrote, then send what waited for it.
    pub(super) fn commit_batch(&mut self, cx: &mut Ctx) {
        if let Some(id) = self.batch.timer.take() {
            cx.cancel_timer(id);
        }
        self.batch.urgent = false;
        if self.failed {
            return;
        }
        let held = std::mem::take(&mut self.batch.held);
        if self.batch.calls > 0 {
            self.batch.calls = 0;
            if let Err(e) = self.db.commit() {
                return self.db_failed(cx, "committing", e);
            }
            self.batch.commits += 1;
        }
        for out in held {
            match out {
                Out::Answer { conn, id, packet } => self.links.answer(cx, conn, id, packet),
                Out::Notify { conn, packet } => self.links.notify(cx, conn, packet),
                Out::Close { .. } => {}
            }
        }
    }
}
