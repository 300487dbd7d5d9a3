//! The one table of requests a node sent and waits an answer for, shared by every role
//! (it lives in [`super::link::Links`], so that no request can be sent unregistered).
//!
//! A request is registered under (connection, message id) with a deadline and a value the
//! role defines (what it needs to resume when the answer comes). Only an *answer* packet is
//! looked up, by (connection, id): a notification or request that happens to carry the id
//! of a pending request is not its answer. A request whose deadline passed, or whose
//! connection closed, leaves the table as a [`Failure`] exactly once; its answer, if it
//! comes later, matches nothing and is dropped.
//!
//! NEO has no request timeouts (it relies on TCP keepalive); we have both idle detection
//! (`link::DEAD_AFTER`) and a per-request deadline, so that a peer that answers pings but
//! not our requests cannot stall its owner forever.

use std::collections::BTreeMap;
use std::time::Duration;

use super::ConnId;
use crate::proto::Message;

/// How long a peer may take to answer a request before the request fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request will never be answered.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Failure {
    /// Its deadline passed.
    TimedOut,
    /// Its connection closed (by the peer, the network or us).
    Closed,
}

struct Pending<A> {
    deadline: Duration,
    /// The request's packet name (for logs, and the `answer-by-type` mutant).
    request: &'static str,
    /// Order of registration (the `answer-by-type` mutant takes the newest).
    seq: u64,
    what: A,
}

/// Pending requests, keyed by (connection, message id).
pub struct Requests<A> {
    pending: BTreeMap<(ConnId, u32), Pending<A>>,
    seq: u64,
}

impl<A> Default for Requests<A> {
    fn default() -> Self {
        Requests {
            pending: BTreeMap::new(),
            seq: 0,
        }
    }
}

impl<A> Requests<A> {
    /// Register the request named `request`, sent on `conn` with message id `id`, due by `deadline` (on the
    /// node's monotonic clock). Ids are per connection and 32 bits: one still pending when
    /// its id comes round again is replaced (it would need 2^32 requests meanwhile).
    pub fn insert(
        &mut self,
        conn: ConnId,
        id: u32,
        request: &'static str,
        deadline: Duration,
        what: A,
    ) {
        self.seq = self.seq.wrapping_add(1);
        let pending = Pending {
            deadline,
            request,
            seq: self.seq,
            what,
        };
        self.pending.insert((conn, id), pending);
    }

    /// The request `msg` answers, taken out of the table; None if `msg` is not an answer,
    /// or answers nothing pending (late, after its request failed, or bogus).
    ///
    /// `by_type` is the `answer-by-type` mutant: ignore the id and take the newest request
    /// on the connection whose answer has this packet type, as a matcher that keys requests
    /// by what they expect would.
    pub fn answered(&mut self, conn: ConnId, msg: &Message, by_type: bool) -> Option<A> {
        if !msg.packet.is_answer() {
            return None;
        }
        let key = if by_type {
            let name = msg.packet.name();
            self.pending
                .iter()
                .filter(|((c, _), p)| {
                    *c == conn && (name == "Error" || expected_answer(p.request) == name)
                })
                .max_by_key(|(_, p)| p.seq)
                .map(|(k, _)| *k)?
        } else {
            (conn, msg.id)
        };
        self.pending.remove(&key).map(|p| p.what)
    }

    /// Take out the requests whose deadline passed, oldest first.
    pub fn expired(&mut self, now: Duration) -> Vec<(ConnId, A)> {
        self.take(|_, p| p.deadline <= now)
    }

    /// Take out the requests sent on a connection that closed.
    pub fn closed(&mut self, conn: ConnId) -> Vec<(ConnId, A)> {
        self.take(|c, _| c == conn)
    }

    /// Forget the requests `drop` selects, without reporting them: their owner gave up on
    /// them (it starts over), and their answers will be dropped as unknown.
    pub fn cancel(&mut self, mut drop: impl FnMut(&A) -> bool) {
        self.pending.retain(|_, p| !drop(&p.what));
    }

    /// What is pending, in no meaningful order.
    pub fn values(&self) -> impl Iterator<Item = &A> {
        self.pending.values().map(|p| &p.what)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn take(&mut self, mut pick: impl FnMut(ConnId, &Pending<A>) -> bool) -> Vec<(ConnId, A)> {
        let keys: Vec<(ConnId, u32)> = self
            .pending
            .iter()
            .filter(|((c, _), p)| pick(*c, p))
            .map(|(k, _)| *k)
            .collect();
        let mut out: Vec<(u64, ConnId, A)> = keys
            .into_iter()
            .filter_map(|k| self.pending.remove(&k).map(|p| (p.seq, k.0, p.what)))
            .collect();
        out.sort_by_key(|(seq, _, _)| *seq);
        out.into_iter().map(|(_, c, a)| (c, a)).collect()
    }
}

/// The packet that answers a request (besides Error, which may answer any): what a matcher
/// by type would look for. Only the `answer-by-type` mutant needs it.
fn expected_answer(request: &str) -> &'static str {
    match request {
        "RequestIdentification" => "AcceptIdentification",
        "Ping" => "Pong",
        "AskPrimary" => "AnswerPrimary",
        "AskClusterState" => "AnswerClusterState",
        "AskRecovery" => "AnswerRecovery",
        "AskLastIDs" => "AnswerLastIDs",
        "AskPartitionTable" => "AnswerPartitionTable",
        "AskLockedTransactions" => "AnswerLockedTransactions",
        "AskFinalTID" => "AnswerFinalTID",
        "AskPartitionList" => "AnswerPartitionList",
        "AskNodeList" => "AnswerNodeList",
        "TweakPartitionTable" => "AnswerTweakPartitionTable",
        "AskLastTransaction" => "AnswerLastTransaction",
        "AskReserveIDs" => "AnswerReserveIDs",
        // Truncate, SetNodeState, AddPendingNodes, SetNumReplicas, SetClusterState.
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ErrorCode, Packet, Ptid};

    fn msg(id: u32, packet: Packet) -> Message {
        Message { id, packet }
    }

    fn recovery(ptid: u64) -> Packet {
        Packet::AnswerRecovery {
            ptid: Some(Ptid(ptid)),
            backup_tid: None,
            truncate_tid: None,
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn only_answers_are_looked_up_by_connection_and_id() {
        let mut t = Requests::default();
        let (a, b) = (ConnId(1), ConnId(2));
        t.insert(a, 7, "AskRecovery", S(30), "a7");
        t.insert(b, 7, "AskRecovery", S(30), "b7");
        // A notification carrying a pending id is not its answer.
        assert_eq!(t.answered(a, &msg(7, Packet::NotifyReady), false), None);
        assert_eq!(t.answered(a, &msg(7, Packet::AskLastIDs), false), None);
        assert_eq!(t.len(), 2);
        // The right id on the wrong connection, or the wrong id: nothing.
        assert_eq!(t.answered(ConnId(3), &msg(7, recovery(1)), false), None);
        assert_eq!(t.answered(a, &msg(8, recovery(1)), false), None);
        assert_eq!(t.answered(b, &msg(7, recovery(1)), false), Some("b7"));
        let e = Packet::error(ErrorCode::NotReady, "no");
        assert_eq!(
            t.answered(a, &msg(7, e), false),
            Some("a7"),
            "Error answers"
        );
        assert!(t.is_empty());
        assert_eq!(t.answered(a, &msg(7, recovery(1)), false), None, "once");
    }

    #[test]
    fn a_deadline_fails_a_request_once_and_its_late_answer_is_ignored() {
        let mut t = Requests::default();
        let c = ConnId(1);
        t.insert(c, 1, "AskRecovery", S(10), "first");
        t.insert(c, 2, "AskLastIDs", S(20), "second");
        assert!(t.expired(S(9)).is_empty());
        assert_eq!(t.expired(S(10)), vec![(c, "first")]);
        assert!(t.expired(S(15)).is_empty(), "reported once");
        assert_eq!(t.answered(c, &msg(1, recovery(1)), false), None, "late");
        assert_eq!(t.values().collect::<Vec<_>>(), vec![&"second"]);
        assert_eq!(t.expired(S(99)), vec![(c, "second")]);
        assert!(t.expired(S(99)).is_empty());
    }

    #[test]
    fn a_closed_connection_fails_its_requests_once_in_order() {
        let mut t = Requests::default();
        let (a, b) = (ConnId(1), ConnId(2));
        t.insert(a, 5, "AskRecovery", S(10), 1);
        t.insert(b, 1, "AskRecovery", S(10), 2);
        t.insert(a, 2, "AskLastIDs", S(10), 3);
        assert_eq!(t.closed(a), vec![(a, 1), (a, 3)], "in the order asked");
        assert!(t.closed(a).is_empty(), "reported once");
        assert!(
            t.expired(S(10)) == vec![(b, 2)],
            "the other connection's stays"
        );
        assert_eq!(t.answered(a, &msg(5, recovery(1)), false), None);
    }

    #[test]
    fn cancelled_requests_are_not_reported() {
        let mut t = Requests::default();
        let c = ConnId(1);
        t.insert(c, 1, "AskRecovery", S(10), 1);
        t.insert(c, 2, "AskLastIDs", S(10), 2);
        t.cancel(|a| *a == 1);
        assert_eq!(t.closed(c), vec![(c, 2)]);
    }

    #[test]
    fn the_mutant_matches_by_type_and_mixes_up_answers() {
        let mut t = Requests::default();
        let c = ConnId(1);
        t.insert(c, 1, "AskFinalTID", S(10), "ttid 10");
        t.insert(c, 2, "AskFinalTID", S(10), "ttid 20");
        let answer = msg(1, Packet::AnswerFinalTID { tid: None });
        assert_eq!(t.answered(c, &answer, true), Some("ttid 20"));
        let mut t2 = Requests::default();
        t2.insert(c, 1, "AskFinalTID", S(10), "ttid 10");
        t2.insert(c, 2, "AskFinalTID", S(10), "ttid 20");
        assert_eq!(t2.answered(c, &answer, false), Some("ttid 10"));
    }
}
