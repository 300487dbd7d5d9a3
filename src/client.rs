//! `neo::client`: the blocking Rust client library. A [`Client`] runs the client role on a
//! thread of its own (`runtime::app`) and turns each method into a call to it, waiting for
//! the reply; it is `Send + Sync`, so several application threads share one client, as ZODB
//! connections in one process share one storage. The protocol lives in the role
//! (`actors::client`); this module only waits, resolves conflicts with the caller's
//! resolver, and delivers invalidations.
//!
//! Invalidations are delivered to the callback set with [`Client::on_invalidation`] on a
//! dedicated thread (`neo-invalidations`), one at a time, in commit order; the callback may
//! call the client. [`Client::sync`] returns only once every invalidation up to the TID it
//! returns went through the callback.
//!
//! ```no_run
//! use neo::client::{Address, Client, Options, Tid, TransactionMeta};
//!
//! let master = Address::parse_with_default("127.0.0.1:10000", None).unwrap();
//! let client = Client::connect(Options::new("neosimple", vec![master]))?;
//! let oid = client.new_oid()?;
//! let txn = client.tpc_begin(None)?;
//! client.store(&txn, oid, Tid::ZERO, Some(b"hello".to_vec()))?;
//! // A conflicting store is handed to the resolver: return merged data, or None to give up.
//! client.tpc_vote(&txn, &TransactionMeta::default(), |_conflict| None)?;
//! let tid = client.tpc_finish(txn)?;
//! assert_eq!(client.load(oid)?.data.as_deref(), Some(&b"hello"[..]));
//! assert_eq!(client.load(oid)?.serial, tid);
//! # Ok::<(), neo::client::ClientError>(())
//! ```
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::actors::client::cache::{self, SharedCache};
use crate::actors::{self, Command};
use crate::runtime::app::{AppNode, Outlet};

pub use crate::actors::client::api::{
    Call, CallId, ClientConfig, ClientError, Conflict, Loaded, Notice, Op, Outcome, Reply, TxnRef,
};
pub use crate::proto::{Address, Oid, Tid};

/// How long any call may wait for its reply. The role answers every call (with
/// `Unavailable` after its own deadlines, `OutcomeUnknown` for a finish it cannot learn the
/// outcome of within a minute); this only guards against a role that never does.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// How long `close` lets the role stop cleanly before stopping its thread.
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// What [`Client::connect`] needs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The cluster's name.
    pub cluster: String,
    /// Masters' addresses (any of them; the client follows the primary).
    pub masters: Vec<Address>,
    /// Refuse every write.
    pub read_only: bool,
    /// Most bytes of object data the cache keeps.
    pub cache_size: u64,
    /// Compress object data with zlib when that makes it smaller.
    pub compress: bool,
    /// How long `connect` waits for the cluster to serve.
    pub connect_timeout: Duration,
}

impl Options {
    pub fn new(cluster: impl Into<String>, masters: Vec<Address>) -> Options {
        Options {
            cluster: cluster.into(),
            masters,
            read_only: false,
            cache_size: ClientConfig::DEFAULT_CACHE_SIZE,
            compress: true,
            connect_timeout: Duration::from_secs(30),
        }
    }

    pub fn config(&self) -> ClientConfig {
        ClientConfig {
            cluster: self.cluster.clone(),
            masters: self.masters.clone(),
            read_only: self.read_only,
            cache_size: self.cache_size,
            compress: self.compress,
        }
    }
}

/// A transaction's metadata, given at vote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransactionMeta {
    pub user: Vec<u8>,
    pub description: Vec<u8>,
    /// ZODB's pickled extension dictionary, opaque here.
    pub extension: Vec<u8>,
}

/// The invalidation callback.
pub type InvalidationCallback = Box<dyn FnMut(&Notice) + Send>;

/// A client of one NEO cluster. Cheap to share (`Arc<Client>`): every method takes `&self`.
pub struct Client {
    shared: Arc<Shared>,
    node: Mutex<Option<AppNode>>,
    /// Sends calls to the role without taking `node`'s lock.
    sender: Sender,
    notices: Option<std::thread::JoinHandle<()>>,
    /// The role's cache, read here without a round trip (loads it covers).
    cache: Option<SharedCache>,
}

/// An open transaction (from `tpc_begin`); several may be open at once. Dropped without
/// `tpc_finish` or `tpc_abort`, it is aborted (without waiting).
pub struct Transaction {
    txn: TxnRef,
    ttid: Tid,
    sender: Sender,
    open: bool,
}

impl Transaction {
    /// The transaction's temporary TID (its final TID comes from `tpc_finish`).
    pub fn ttid(&self) -> Tid {
        self.ttid
    }
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Transaction({}, ttid {})", self.txn, self.ttid)
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.open {
            self.sender.send_only(Op::Abort { txn: self.txn });
        }
    }
}

/// What the library shares with the role's thread and the notices' thread.
struct Shared {
    state: Mutex<State>,
    notices: Mutex<Notices>,
    /// Signalled when a notice is queued, delivered, or the client closes.
    notices_changed: Condvar,
    callback: Mutex<Option<InvalidationCallback>>,
    /// Set by `close` (and when the role stops): read without a lock by cached loads.
    closed: AtomicBool,
}

struct State {
    next_id: CallId,
    /// Each waiting call's slot: its reply, and how many notices came before it.
    pending: BTreeMap<CallId, mpsc::SyncSender<(Reply, u64)>>,
    closed: bool,
}

struct Notices {
    queue: VecDeque<Notice>,
    /// Notices the role emitted, and those the callback went through.
    queued: u64,
    delivered: u64,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A callback that panicked must not poison the client for every other thread.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn new() -> Shared {
        Shared {
            state: Mutex::new(State {
                next_id: 0,
                pending: BTreeMap::new(),
                closed: false,
            }),
            notices: Mutex::new(Notices {
                queue: VecDeque::new(),
                queued: 0,
                delivered: 0,
                closed: false,
            }),
            notices_changed: Condvar::new(),
            callback: Mutex::new(None),
            closed: AtomicBool::new(false),
        }
    }

    /// No more replies: waiting calls fail with `Closed` (their slots are dropped).
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        {
            let mut s = lock(&self.state);
            s.closed = true;
            s.pending.clear();
        }
        lock(&self.notices).closed = true;
        self.notices_changed.notify_all();
    }

    /// Wait until the callback went through the first `seq` notices.
    fn wait_delivered(&self, seq: u64, deadline: Instant) -> Result<(), ClientError> {
        let mut n = lock(&self.notices);
        while n.delivered < seq {
            if n.closed {
                return Err(ClientError::Closed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Unavailable(
                    "the invalidation callback did not finish in time".into(),
                ));
            }
            n = self
                .notices_changed
                .wait_timeout(n, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// The notices' thread: the callback, one notice at a time, in order.
    fn deliver_notices(&self) {
        loop {
            let notice = {
                let mut n = lock(&self.notices);
                loop {
                    if let Some(notice) = n.queue.pop_front() {
                        break notice;
                    }
                    if n.closed {
                        return;
                    }
                    n = self
                        .notices_changed
                        .wait(n)
                        .unwrap_or_else(|p| p.into_inner());
                }
            };
            {
                let mut cb = lock(&self.callback);
                if let Some(cb) = cb.as_mut() {
                    let call = std::panic::AssertUnwindSafe(|| cb(&notice));
                    if std::panic::catch_unwind(call).is_err() {
                        tracing::error!("the invalidation callback panicked on {notice:?}");
                    }
                }
            }
            lock(&self.notices).delivered += 1;
            self.notices_changed.notify_all();
        }
    }
}

/// The library's side of the role's thread.
struct LibOutlet(Arc<Shared>);

impl Outlet for LibOutlet {
    fn reply(&mut self, r: Reply) {
        let slot = lock(&self.0.state).pending.remove(&r.id);
        if let Some(slot) = slot {
            let seq = lock(&self.0.notices).queued;
            // The caller may have given up waiting (timeout): then no one reads it.
            let _ = slot.try_send((r, seq));
        }
    }

    fn notice(&mut self, n: Notice) {
        {
            let mut q = lock(&self.0.notices);
            q.queue.push_back(n);
            q.queued += 1;
        }
        self.0.notices_changed.notify_all();
    }
}

/// Hands calls to the role; shared by the client and its open transactions.
#[derive(Clone)]
struct Sender {
    shared: Arc<Shared>,
    node: Arc<Mutex<Option<actix::Recipient<crate::runtime::ConnEvent>>>>,
}

impl Sender {
    fn post(&self, id: CallId, op: Op) -> bool {
        match lock(&self.node).as_ref() {
            Some(node) if node.connected() => {
                node.do_send(crate::runtime::ConnEvent::Local(Command::Call(Call {
                    id,
                    op,
                })));
                true
            }
            _ => false,
        }
    }

    /// Make the call and wait for its reply; also returns how many notices preceded it.
    fn call_seq(&self, op: Op, timeout: Duration) -> Result<(Outcome, u64), ClientError> {
        let is_finish = matches!(op, Op::Finish { .. });
        let (tx, rx) = mpsc::sync_channel(1);
        let id = {
            let mut s = lock(&self.shared.state);
            if s.closed {
                return Err(ClientError::Closed);
            }
            s.next_id += 1;
            let id = s.next_id;
            s.pending.insert(id, tx);
            id
        };
        if !self.post(id, op) {
            lock(&self.shared.state).pending.remove(&id);
            return Err(ClientError::Closed);
        }
        match rx.recv_timeout(timeout) {
            Ok((reply, seq)) => reply.result.map(|o| (o, seq)),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                lock(&self.shared.state).pending.remove(&id);
                let why = format!("no answer from the client role within {timeout:?}");
                Err(if is_finish {
                    ClientError::OutcomeUnknown(why)
                } else {
                    ClientError::Unavailable(why)
                })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(ClientError::Closed),
        }
    }

    fn call(&self, op: Op) -> Result<Outcome, ClientError> {
        self.call_seq(op, CALL_TIMEOUT).map(|(o, _)| o)
    }

    /// A call whose reply no one waits for (an abort from a drop).
    fn send_only(&self, op: Op) {
        let id = {
            let mut s = lock(&self.shared.state);
            if s.closed {
                return;
            }
            s.next_id += 1;
            s.next_id
        };
        self.post(id, op);
    }
}

fn unexpected(what: &str, o: Outcome) -> ClientError {
    ClientError::Invalid(format!("unexpected answer to {what}: {o:?}"))
}

impl Client {
    /// Connect to a cluster: start the client role and wait until the cluster serves (the
    /// primary answers `sync`), or `options.connect_timeout` passes.
    pub fn connect(options: Options) -> Result<Client, ClientError> {
        let config = options.config();
        let (tx, rx) = mpsc::channel();
        let mut client = Client::start(move || {
            let role = actors::client::Client::new(config);
            let _ = tx.send(role.cache());
            role
        })?;
        client.cache = rx.recv().ok();
        client.wait_serving(options.connect_timeout)?;
        Ok(client)
    }

    /// Run the role `make` builds (the client role, or a stand-in in tests) on its thread,
    /// without waiting for anything.
    pub fn start<A, F>(make: F) -> Result<Client, ClientError>
    where
        A: actors::Actor + 'static,
        F: FnOnce() -> A + Send + 'static,
    {
        let shared = Arc::new(Shared::new());
        let on_exit = {
            let shared = shared.clone();
            Box::new(move || shared.close())
        };
        let node = AppNode::spawn(
            "neo-client".into(),
            make,
            Box::new(LibOutlet(shared.clone())),
            on_exit,
        )
        .map_err(|e| ClientError::Unavailable(format!("cannot start the client: {e}")))?;
        let notices = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("neo-invalidations".into())
                .spawn(move || shared.deliver_notices())
                .map_err(|e| ClientError::Unavailable(format!("cannot start the client: {e}")))?
        };
        let sender = Sender {
            shared: shared.clone(),
            node: Arc::new(Mutex::new(Some(node.recipient()))),
        };
        Ok(Client {
            shared,
            node: Mutex::new(Some(node)),
            sender,
            notices: Some(notices),
            cache: None,
        })
    }

    /// Sync until it succeeds (the primary answers) or `timeout` passes.
    fn wait_serving(&self, timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .sender
                .call_seq(Op::Sync, left.max(Duration::from_millis(1)))
            {
                Ok(_) => return Ok(()),
                Err(ClientError::Unavailable(why)) => {
                    if Instant::now() >= deadline {
                        return Err(ClientError::Unavailable(format!(
                            "the cluster did not serve within {timeout:?}: {why}"
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(100).min(left));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Call `f` with each invalidation, in commit order, on the `neo-invalidations` thread
    /// (replaces the previous callback).
    pub fn on_invalidation(&self, f: impl FnMut(&Notice) + Send + 'static) {
        *lock(&self.shared.callback) = Some(Box::new(f));
    }

    /// One fresh OID.
    pub fn new_oid(&self) -> Result<Oid, ClientError> {
        self.new_oids(1)?
            .pop()
            .ok_or_else(|| ClientError::Invalid("no OID in the answer".into()))
    }

    /// `count` fresh OIDs, never handed out before.
    pub fn new_oids(&self, count: u32) -> Result<Vec<Oid>, ClientError> {
        match self.sender.call(Op::NewOids { count })? {
            Outcome::Oids(oids) if oids.len() == count as usize => Ok(oids),
            o => Err(unexpected("new_oids", o)),
        }
    }

    fn load_op(
        &self,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> Result<Loaded, ClientError> {
        if let Some(shared) = &self.cache {
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(ClientError::Closed);
            }
            if let Some(hit) = cache::lock(shared).get(oid, at, before) {
                return Ok(hit);
            }
        }
        match self.sender.call(Op::Load { oid, at, before })? {
            Outcome::Loaded(l) => Ok(l),
            o => Err(unexpected("load", o)),
        }
    }

    /// The latest revision as of this client's last transaction (`load`): data (None if
    /// deleted) and serial.
    pub fn load(&self, oid: Oid) -> Result<Loaded, ClientError> {
        self.load_op(oid, None, None)
    }

    /// The revision current just before `tid` (`loadBefore`), with the serial of the next.
    pub fn load_before(&self, oid: Oid, tid: Tid) -> Result<Loaded, ClientError> {
        self.load_op(oid, None, Some(tid))
    }

    /// The revision committed by `serial` (`loadSerial`).
    pub fn load_serial(&self, oid: Oid, serial: Tid) -> Result<Loaded, ClientError> {
        self.load_op(oid, Some(serial), None)
    }

    /// The last TID this client knows committed (None: nothing yet); no round trip.
    pub fn last_transaction(&self) -> Result<Option<Tid>, ClientError> {
        match self.sender.call(Op::LastTransaction)? {
            Outcome::Tid(t) => Ok(t),
            o => Err(unexpected("last_transaction", o)),
        }
    }

    /// Catch up with the cluster: returns its last TID once every invalidation up to it
    /// went through the invalidation callback.
    pub fn sync(&self) -> Result<Option<Tid>, ClientError> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        match self.sender.call_seq(Op::Sync, CALL_TIMEOUT)? {
            (Outcome::Tid(t), seq) => {
                self.shared.wait_delivered(seq, deadline)?;
                Ok(t)
            }
            (o, _) => Err(unexpected("sync", o)),
        }
    }

    /// Begin a transaction; `tid` imposes its final TID (restore).
    pub fn tpc_begin(&self, tid: Option<Tid>) -> Result<Transaction, ClientError> {
        match self.sender.call(Op::TpcBegin { tid })? {
            Outcome::Began { txn, ttid } => Ok(Transaction {
                txn,
                ttid,
                sender: self.sender.clone(),
                open: true,
            }),
            o => Err(unexpected("tpc_begin", o)),
        }
    }

    fn done(&self, what: &str, op: Op) -> Result<(), ClientError> {
        match self.sender.call(op)? {
            Outcome::Done => Ok(()),
            o => Err(unexpected(what, o)),
        }
    }

    /// Store a revision of `oid` based on `serial` (`Tid::ZERO` for a new object); `data`
    /// None deletes it. Conflicts come out of `tpc_vote`.
    pub fn store(
        &self,
        txn: &Transaction,
        oid: Oid,
        serial: Tid,
        data: Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let op = Op::Store {
            txn: txn.txn,
            oid,
            serial,
            data,
            data_serial: None,
        };
        self.done("store", op)
    }

    /// readCurrent: commit only if `serial` is still `oid`'s current revision.
    pub fn check_current_serial(
        &self,
        txn: &Transaction,
        oid: Oid,
        serial: Tid,
    ) -> Result<(), ClientError> {
        let op = Op::CheckCurrentSerial {
            txn: txn.txn,
            oid,
            serial,
        };
        self.done("check_current_serial", op)
    }

    /// Vote. Each conflicting store goes to `resolver`: Some(data) stores that data again
    /// on the committed serial (and votes again), None gives up with
    /// `ClientError::Conflict`. On any error the caller aborts the transaction
    /// (`tpc_abort`, or dropping it), as ZODB does.
    pub fn tpc_vote(
        &self,
        txn: &Transaction,
        meta: &TransactionMeta,
        mut resolver: impl FnMut(&Conflict) -> Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        loop {
            let op = Op::Vote {
                txn: txn.txn,
                user: meta.user.clone(),
                description: meta.description.clone(),
                extension: meta.extension.clone(),
            };
            match self.sender.call(op)? {
                Outcome::Done => return Ok(()),
                Outcome::Conflicts(conflicts) if !conflicts.is_empty() => {
                    for c in &conflicts {
                        let Some(data) = resolver(c) else {
                            return Err(ClientError::Conflict {
                                oid: c.oid,
                                serial: c.serial,
                                committed: c.committed,
                            });
                        };
                        self.store(txn, c.oid, c.committed, Some(data))?;
                    }
                }
                o => return Err(unexpected("tpc_vote", o)),
            }
        }
    }

    /// Commit a voted transaction; returns its TID once it is durable.
    pub fn tpc_finish(&self, mut txn: Transaction) -> Result<Tid, ClientError> {
        txn.open = false;
        match self.sender.call(Op::Finish { txn: txn.txn })? {
            Outcome::Tid(Some(tid)) => Ok(tid),
            o => Err(unexpected("tpc_finish", o)),
        }
    }

    /// Abort a transaction that was not finished.
    pub fn tpc_abort(&self, mut txn: Transaction) -> Result<(), ClientError> {
        txn.open = false;
        self.done("tpc_abort", Op::Abort { txn: txn.txn })
    }

    /// Stop the client: the role closes its connections, calls still waiting fail with
    /// `Closed`, and so does every call afterwards. Also done on drop.
    pub fn close(&self) {
        let node = lock(&self.node).take();
        if let Some(mut node) = node {
            node.stop(CLOSE_GRACE);
        }
        *lock(&self.sender.node) = None;
        self.shared.close();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
        if let Some(t) = self.notices.take() {
            // The notices' thread ends once its queue is empty; a callback that never
            // returns keeps it, and we do not wait for that.
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::{Actor, Ctx, Event};

    /// (serial, data)
    type Revision = (Tid, Option<Vec<u8>>);
    /// (oid, serial based on, data)
    type Stored = (Oid, Tid, Option<Vec<u8>>);

    /// A stand-in for the client role and its cluster, all in one: it commits in memory,
    /// tells each commit as an invalidation (before answering the finish), and exits
    /// without answering on `NewOids { count: 0 }`.
    struct Fake {
        objects: BTreeMap<Oid, Vec<Revision>>,
        last: u64,
        next_txn: TxnRef,
        txns: BTreeMap<TxnRef, Vec<Stored>>,
        aborted: Arc<Mutex<Vec<TxnRef>>>,
        next_oid: u64,
        /// Syncs answered Unavailable before the "cluster" serves.
        unavailable_syncs: u32,
    }

    impl Fake {
        fn new(aborted: Arc<Mutex<Vec<TxnRef>>>) -> Fake {
            Fake {
                objects: BTreeMap::new(),
                last: 0,
                next_txn: 0,
                txns: BTreeMap::new(),
                aborted,
                next_oid: 0,
                unavailable_syncs: 0,
            }
        }

        fn current(&self, oid: Oid) -> Tid {
            self.objects
                .get(&oid)
                .and_then(|r| r.last())
                .map_or(Tid::ZERO, |r| r.0)
        }

        fn serve(&mut self, cx: &mut Ctx, op: Op) -> Option<Result<Outcome, ClientError>> {
            Some(match op {
                Op::NewOids { count: 0 } => {
                    cx.exit("asked to", false);
                    return None;
                }
                Op::NewOids { count } => Ok(Outcome::Oids(
                    (0..count)
                        .map(|_| {
                            self.next_oid += 1;
                            Oid(self.next_oid)
                        })
                        .collect(),
                )),
                Op::Load { oid, at, before } => {
                    let revs = self.objects.get(&oid).cloned().unwrap_or_default();
                    let i = match (at, before) {
                        (Some(at), _) => revs.iter().position(|r| r.0 == at),
                        (None, Some(b)) => revs.iter().rposition(|r| r.0 < b),
                        (None, None) => revs.len().checked_sub(1),
                    };
                    match i {
                        _ if revs.is_empty() => Err(ClientError::DoesNotExist(oid)),
                        None => Err(ClientError::NotFound(oid)),
                        Some(i) => Ok(Outcome::Loaded(Loaded {
                            data: revs[i].1.clone(),
                            serial: revs[i].0,
                            next_serial: revs.get(i + 1).map(|r| r.0),
                            data_serial: None,
                        })),
                    }
                }
                Op::Sync if self.unavailable_syncs > 0 => {
                    self.unavailable_syncs -= 1;
                    Err(ClientError::Unavailable("not yet".into()))
                }
                Op::LastTransaction | Op::Sync => {
                    Ok(Outcome::Tid((self.last > 0).then_some(Tid(self.last))))
                }
                Op::TpcBegin { .. } => {
                    self.next_txn += 1;
                    self.txns.insert(self.next_txn, Vec::new());
                    Ok(Outcome::Began {
                        txn: self.next_txn,
                        ttid: Tid(1000 + self.next_txn),
                    })
                }
                Op::Store {
                    txn,
                    oid,
                    serial,
                    data,
                    ..
                } => match self.txns.get_mut(&txn) {
                    Some(stores) => {
                        stores.retain(|s| s.0 != oid);
                        stores.push((oid, serial, data));
                        Ok(Outcome::Done)
                    }
                    None => Err(ClientError::Invalid("no such txn".into())),
                },
                Op::CheckCurrentSerial { .. } => Ok(Outcome::Done),
                Op::Vote { txn, .. } => {
                    let stores = self.txns.get(&txn).cloned().unwrap_or_default();
                    let conflicts: Vec<Conflict> = stores
                        .into_iter()
                        .filter(|(oid, serial, _)| self.current(*oid) != *serial)
                        .map(|(oid, serial, data)| Conflict {
                            oid,
                            serial,
                            committed: self.current(oid),
                            data,
                        })
                        .collect();
                    if conflicts.is_empty() {
                        Ok(Outcome::Done)
                    } else {
                        Ok(Outcome::Conflicts(conflicts))
                    }
                }
                Op::Finish { txn } => {
                    let stores = self.txns.remove(&txn).unwrap_or_default();
                    self.last += 1;
                    let tid = Tid(self.last);
                    let mut oids = Vec::new();
                    for (oid, _, data) in stores {
                        self.objects.entry(oid).or_default().push((tid, data));
                        oids.push(oid);
                    }
                    cx.notice(Notice::Invalidate { tid, oids });
                    Ok(Outcome::Tid(Some(tid)))
                }
                Op::Abort { txn } => {
                    self.txns.remove(&txn);
                    lock(&self.aborted).push(txn);
                    Ok(Outcome::Done)
                }
                op => Err(ClientError::Invalid(format!("the fake does not do {op:?}"))),
            })
        }
    }

    impl Actor for Fake {
        fn start(&mut self, _cx: &mut Ctx) {}

        fn handle(&mut self, cx: &mut Ctx, ev: Event) {
            match ev {
                Event::Local(Command::Call(Call { id, op })) => {
                    if let Some(result) = self.serve(cx, op) {
                        cx.reply(Reply { id, result });
                    }
                }
                Event::Local(Command::Shutdown) => cx.exit("shutdown", true),
                _ => {}
            }
        }
    }

    fn fake() -> (Client, Arc<Mutex<Vec<TxnRef>>>) {
        let aborted = Arc::new(Mutex::new(Vec::new()));
        let a = aborted.clone();
        (Client::start(move || Fake::new(a)).unwrap(), aborted)
    }

    fn commit(c: &Client, stores: &[(Oid, Tid, &[u8])]) -> Result<Tid, ClientError> {
        let txn = c.tpc_begin(None)?;
        for (oid, serial, data) in stores {
            c.store(&txn, *oid, *serial, Some(data.to_vec()))?;
        }
        c.tpc_vote(&txn, &TransactionMeta::default(), |_| None)?;
        c.tpc_finish(txn)
    }

    #[test]
    fn client_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<Client>();
        shared::<Transaction>();
    }

    /// Threads commit at once through one client; everything reads back, and load_before /
    /// load_serial see the older revisions.
    #[test]
    fn threads_share_one_client() {
        let (client, _) = fake();
        let client = Arc::new(client);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let c = client.clone();
                std::thread::spawn(move || {
                    let oid = c.new_oid().unwrap();
                    let mut serial = Tid::ZERO;
                    let mut serials = Vec::new();
                    for i in 0..20u32 {
                        let data = format!("{t}-{i}");
                        serial = commit(&c, &[(oid, serial, data.as_bytes())]).unwrap();
                        serials.push(serial);
                    }
                    (t, oid, serials)
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let mut oids: Vec<Oid> = results.iter().map(|r| r.1).collect();
        oids.sort();
        oids.dedup();
        assert_eq!(oids.len(), 8, "each thread got its own OID");
        for (t, oid, serials) in &results {
            let latest = client.load(*oid).unwrap();
            assert_eq!(latest.data.as_deref(), Some(format!("{t}-19").as_bytes()));
            assert_eq!(latest.serial, serials[19]);
            let before = client.load_before(*oid, serials[19]).unwrap();
            assert_eq!(before.data.as_deref(), Some(format!("{t}-18").as_bytes()));
            assert_eq!(before.next_serial, Some(serials[19]));
            let first = client.load_serial(*oid, serials[0]).unwrap();
            assert_eq!(first.data.as_deref(), Some(format!("{t}-0").as_bytes()));
        }
        assert_eq!(client.last_transaction().unwrap(), Some(Tid(160)));
        assert_eq!(
            client.load(Oid(999)).unwrap_err(),
            ClientError::DoesNotExist(Oid(999))
        );
    }

    /// The resolver sees each conflict with both serials; its data is stored on the
    /// committed serial; giving up is a Conflict error with the same serials.
    #[test]
    fn conflicts_go_through_the_resolver() {
        let (client, aborted) = fake();
        let oid = client.new_oid().unwrap();
        let s0 = commit(&client, &[(oid, Tid::ZERO, b"0")]).unwrap();
        let a = client.tpc_begin(None).unwrap();
        let b = client.tpc_begin(None).unwrap();
        client.store(&a, oid, s0, Some(b"a".to_vec())).unwrap();
        client.store(&b, oid, s0, Some(b"b".to_vec())).unwrap();
        client
            .tpc_vote(&a, &TransactionMeta::default(), |_| None)
            .unwrap();
        let s1 = client.tpc_finish(a).unwrap();
        let mut seen = Vec::new();
        client
            .tpc_vote(&b, &TransactionMeta::default(), |c| {
                seen.push(c.clone());
                Some([c.data.clone().unwrap(), b"+resolved".to_vec()].concat())
            })
            .unwrap();
        assert_eq!(
            seen,
            vec![Conflict {
                oid,
                serial: s0,
                committed: s1,
                data: Some(b"b".to_vec())
            }]
        );
        let s2 = client.tpc_finish(b).unwrap();
        let l = client.load(oid).unwrap();
        assert_eq!(
            (l.data.as_deref(), l.serial),
            (Some(&b"b+resolved"[..]), s2)
        );

        let c = client.tpc_begin(None).unwrap();
        client.store(&c, oid, s1, Some(b"c".to_vec())).unwrap();
        let err = client
            .tpc_vote(&c, &TransactionMeta::default(), |_| None)
            .unwrap_err();
        assert_eq!(
            err,
            ClientError::Conflict {
                oid,
                serial: s1,
                committed: s2
            }
        );
        let txn = c.txn;
        drop(c);
        // The drop's abort is not waited for: a call after it is answered after it.
        client.sync().unwrap();
        assert_eq!(*lock(&aborted), vec![txn]);
    }

    /// Invalidations reach the callback in commit order, and sync returns only after the
    /// callback went through all of them, even a slow callback.
    #[test]
    fn sync_waits_for_the_callback() {
        let (client, _) = fake();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        client.on_invalidation(move |n| {
            std::thread::sleep(Duration::from_millis(20));
            if let Notice::Invalidate { tid, .. } = n {
                lock(&s).push(*tid);
            }
        });
        let oid = client.new_oid().unwrap();
        let mut serial = Tid::ZERO;
        let mut tids = Vec::new();
        for _ in 0..10 {
            serial = commit(&client, &[(oid, serial, b"x")]).unwrap();
            tids.push(serial);
        }
        assert_eq!(client.sync().unwrap(), Some(serial));
        assert_eq!(*lock(&seen), tids);
    }

    /// Connecting waits while the cluster answers Unavailable, up to its timeout.
    #[test]
    fn connecting_waits_for_the_cluster() {
        let start = |n| {
            let aborted = Arc::new(Mutex::new(Vec::new()));
            Client::start(move || Fake {
                unavailable_syncs: n,
                ..Fake::new(aborted)
            })
            .unwrap()
        };
        let c = start(3);
        c.wait_serving(Duration::from_secs(10)).unwrap();
        assert_eq!(c.sync().unwrap(), None);
        let c = start(1000);
        let t = Instant::now();
        let err = c.wait_serving(Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, ClientError::Unavailable(_)), "{err:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    /// A role that exits fails the call waiting on it and every later one with Closed;
    /// close makes calls fail with Closed too.
    #[test]
    fn closed_clients_answer_closed() {
        let (client, _) = fake();
        assert_eq!(client.new_oids(0).unwrap_err(), ClientError::Closed);
        assert_eq!(client.new_oid().unwrap_err(), ClientError::Closed);
        let (client, _) = fake();
        assert!(client.new_oid().is_ok());
        let txn = client.tpc_begin(None).unwrap();
        client.close();
        assert_eq!(client.sync().unwrap_err(), ClientError::Closed);
        assert_eq!(
            client.store(&txn, Oid(1), Tid::ZERO, None).unwrap_err(),
            ClientError::Closed
        );
        drop(txn);
    }
}
