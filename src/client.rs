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
    Call, CallId, ClientConfig, ClientError, Conflict, Loaded, Notice, Op, Outcome, Reply,
    TransactionInfo, TxnRef,
};
pub use crate::proto::packet::{MAX_HISTORY_LENGTH, MAX_TIDS_LENGTH};
pub use crate::proto::{Address, Oid, Tid, UndoSerial};

/// How long `pack` waits for the cluster to pack.
pub const PACK_TIMEOUT: Duration = Duration::from_secs(3600);

/// TIDs the transaction iterator asks at a time.
pub const ITERATOR_CHUNK: u32 = 100;

/// One revision in an object's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    pub serial: Tid,
    /// Size of its data.
    pub size: u64,
    /// The transaction that wrote it.
    pub info: TransactionInfo,
}

/// One record of a transaction, as the iterator gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub oid: Oid,
    /// The transaction's TID.
    pub serial: Tid,
    /// None: a deletion (or the undo of a creation).
    pub data: Option<Vec<u8>>,
    /// For a backpointer (undo, restore), the serial whose data it shares.
    pub data_serial: Option<Tid>,
}

/// One transaction and its records, as the iterator gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionRecords {
    pub info: TransactionInfo,
    pub records: Vec<Record>,
}

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
    /// Stores in flight: sent without waiting for their replies.
    stores: Mutex<Window>,
}

/// How many stores of one transaction may await their replies: enough to keep the role
/// busy while the application produces the next ones, few enough that a role holding
/// replies back (its bound on bytes in flight) stops the application soon.
pub const STORE_WINDOW: usize = 256;

/// The replies of a transaction's pipelined stores. A store's error is kept and returned
/// by the next store, the vote or the finish: a transaction with a failed store fails.
struct Window {
    tx: mpsc::SyncSender<(Reply, u64)>,
    rx: mpsc::Receiver<(Reply, u64)>,
    outstanding: usize,
    error: Option<ClientError>,
}

impl Window {
    fn new() -> Window {
        let (tx, rx) = mpsc::sync_channel(STORE_WINDOW);
        Window {
            tx,
            rx,
            outstanding: 0,
            error: None,
        }
    }

    fn take(&mut self, (reply, _): (Reply, u64)) {
        self.outstanding -= 1;
        if let Err(e) = reply.result {
            self.error.get_or_insert(e);
        }
    }

    /// Wait until at most `keep` replies are outstanding; the first error, if any.
    fn settle(&mut self, shared: &Shared, keep: usize) -> Result<(), ClientError> {
        while let Ok(r) = self.rx.try_recv() {
            self.take(r);
        }
        let deadline = Instant::now() + CALL_TIMEOUT;
        while self.outstanding > keep {
            // The role's end may go away with the client: poll its flag meanwhile.
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(r) => self.take(r),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if shared.closed.load(Ordering::Acquire) {
                        return Err(ClientError::Closed);
                    }
                    if Instant::now() >= deadline {
                        let why = format!("no answer to a store within {CALL_TIMEOUT:?}");
                        return Err(ClientError::Unavailable(why));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(ClientError::Closed),
            }
        }
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
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

    /// Make the call without waiting: its reply goes to `slot`.
    fn submit(&self, op: Op, slot: mpsc::SyncSender<(Reply, u64)>) -> Result<(), ClientError> {
        let id = {
            let mut s = lock(&self.shared.state);
            if s.closed {
                return Err(ClientError::Closed);
            }
            s.next_id += 1;
            let id = s.next_id;
            s.pending.insert(id, slot);
            id
        };
        if !self.post(id, op) {
            lock(&self.shared.state).pending.remove(&id);
            return Err(ClientError::Closed);
        }
        Ok(())
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
                stores: Mutex::new(Window::new()),
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
        self.submit_store(txn, op)
    }

    /// Send a store without waiting for its reply (the role answers it at once, unless it
    /// holds replies back because too many bytes are in flight): a commit of many objects
    /// costs one thread hand-off per object, not a round trip. An earlier store's error
    /// comes out here, or at the vote.
    fn submit_store(&self, txn: &Transaction, op: Op) -> Result<(), ClientError> {
        let mut w = lock(&txn.stores);
        w.settle(&self.shared, STORE_WINDOW - 1)?;
        self.sender.submit(op, w.tx.clone())?;
        w.outstanding += 1;
        Ok(())
    }

    /// Wait for every store of `txn` to be answered; the first error, if any.
    fn settle_stores(&self, txn: &Transaction) -> Result<(), ClientError> {
        lock(&txn.stores).settle(&self.shared, 0)
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
            self.settle_stores(txn)?;
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
        // A store after the vote fails the transaction: finishing it must not succeed.
        self.settle_stores(&txn)?;
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

    /// A committed transaction's metadata and the oids it wrote
    /// (`ClientError::UnknownTransaction` if none has that TID).
    pub fn transaction_info(&self, tid: Tid) -> Result<TransactionInfo, ClientError> {
        match self.sender.call(Op::TransactionInfo { tid })? {
            Outcome::Transaction(info) => Ok(info),
            o => Err(unexpected("transaction_info", o)),
        }
    }

    /// Undo transaction `tid` within `txn` (ZODB's `undo`): returns the oids it stores.
    /// An object whose revision by `tid` is still current goes back to the revision
    /// before it (a backpointer; a deletion if `tid` created it). Otherwise later changes
    /// must be merged: `resolver(oid, current serial, tid, data to undo to, current data)`
    /// returns the merged data, or None, which fails the undo (`UndoFailed`). Undoing an
    /// undo works the same way. Conflicts with transactions committing meanwhile come out
    /// of `tpc_vote`, as for stores.
    pub fn undo(
        &self,
        txn: &Transaction,
        tid: Tid,
        mut resolver: impl FnMut(Oid, Tid, Tid, Option<&[u8]>, Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> Result<Vec<Oid>, ClientError> {
        let info = self.transaction_info(tid)?;
        let op = Op::UndoSerials {
            txn: txn.txn,
            undone: tid,
            oids: info.oids,
        };
        let serials = match self.sender.call(op)? {
            Outcome::UndoSerials(s) => s,
            o => return Err(unexpected("undo", o)),
        };
        let mut oids = Vec::with_capacity(serials.len());
        for (oid, s) in serials {
            if s.is_current {
                match s.undo {
                    Some(undo) => self.store_backpointer(txn, oid, s.current, undo)?,
                    None => self.delete_object(txn, oid, s.current)?,
                }
            } else {
                let missing = |e: ClientError| match e {
                    ClientError::NotFound(_) | ClientError::DoesNotExist(_) => {
                        ClientError::UndoFailed(format!("{oid}: a revision was packed away"))
                    }
                    e => e,
                };
                let current = self.load_serial(oid, s.current).map_err(missing)?.data;
                let undo_data = match s.undo {
                    Some(u) => self.load_serial(oid, u).map_err(missing)?.data,
                    None => None,
                };
                let merged = resolver(
                    oid,
                    s.current,
                    tid,
                    undo_data.as_deref(),
                    current.as_deref(),
                )
                .ok_or_else(|| {
                    ClientError::UndoFailed(format!("{oid}: modified by a later transaction"))
                })?;
                self.store(txn, oid, s.current, Some(merged))?;
            }
            oids.push(oid);
        }
        Ok(oids)
    }

    /// Up to `size` revisions of `oid`, newest first, with their transactions.
    /// `size` is capped to `MAX_HISTORY_LENGTH` (what a storage answers at once).
    pub fn history(&self, oid: Oid, size: u32) -> Result<Vec<Revision>, ClientError> {
        let size = size.min(MAX_HISTORY_LENGTH as u32);
        let revs = match self.sender.call(Op::History { oid, size })? {
            Outcome::History(h) => h,
            o => return Err(unexpected("history", o)),
        };
        revs.into_iter()
            .map(|(serial, size)| {
                Ok(Revision {
                    serial,
                    size,
                    info: self.transaction_info(serial)?,
                })
            })
            .collect()
    }

    /// Committed transactions newest first, skipping `first`, up to (excluding) `last`
    /// (ZODB's `undoLog` range), with their metadata.
    /// The log reaches back at most `MAX_TIDS_LENGTH` transactions (what a storage
    /// answers at once): `last` is capped to it.
    pub fn undo_log(&self, first: u64, last: u64) -> Result<Vec<TransactionInfo>, ClientError> {
        let last = last.min(MAX_TIDS_LENGTH);
        let tids = match self.sender.call(Op::UndoLog { first, last })? {
            Outcome::Tids(t) => t,
            o => return Err(unexpected("undo_log", o)),
        };
        tids.into_iter().map(|t| self.transaction_info(t)).collect()
    }

    /// The transactions committed in `start..=stop` (bounds None: from the first, up to
    /// this client's last transaction), oldest first, each with its records (ZODB's
    /// `iterator`). TIDs are fetched `ITERATOR_CHUNK` at a time; records packed away are
    /// skipped.
    pub fn iterator(&self, start: Option<Tid>, stop: Option<Tid>) -> TransactionIterator<'_> {
        TransactionIterator {
            client: self,
            next: start.unwrap_or(Tid::ZERO),
            stop: stop.unwrap_or(Tid::MAX),
            chunk: VecDeque::new(),
            done: false,
        }
    }

    /// Committed TIDs in `min..=max`, ascending, at most `limit` (a chunk of the
    /// transaction iterator, for callers that cannot hold a [`TransactionIterator`]).
    pub fn tids(&self, min: Tid, max: Tid, limit: u32) -> Result<Vec<Tid>, ClientError> {
        match self.sender.call(Op::TidsFrom { min, max, limit })? {
            Outcome::Tids(tids) => Ok(tids),
            o => Err(unexpected("tids", o)),
        }
    }

    /// Transaction `tid` with its records, as the iterator gives it: records packed away
    /// (or only checked with readCurrent) are left out.
    pub fn transaction_records(&self, tid: Tid) -> Result<TransactionRecords, ClientError> {
        let info = self.transaction_info(tid)?;
        let mut records = Vec::with_capacity(info.oids.len());
        for &oid in &info.oids {
            match self.load_serial(oid, tid) {
                Ok(l) => records.push(Record {
                    oid,
                    serial: tid,
                    data: l.data,
                    data_serial: l.data_serial,
                }),
                Err(ClientError::NotFound(_) | ClientError::DoesNotExist(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(TransactionRecords { info, records })
    }

    /// Start loading `oids` (as `load_before(oid, before)`, or `load` when `before` is
    /// None) into the cache without waiting for any of them (ZODB's `prefetch`): every
    /// load not already cached is sent at once, and the replies only fill the cache, so a
    /// later load finds the object there or joins a load already under way.
    pub fn prefetch(&self, oids: &[Oid], before: Option<Tid>) {
        for &oid in oids {
            if let Some(shared) = &self.cache {
                if cache::lock(shared).get(oid, None, before).is_some() {
                    continue;
                }
            }
            self.sender.send_only(Op::Load {
                oid,
                at: None,
                before,
            });
        }
    }

    /// Whether the cache holds the latest revision of `oid` (no round trip; for tests
    /// and diagnostics: what `prefetch` brought in).
    pub fn cached(&self, oid: Oid) -> bool {
        self.cache
            .as_ref()
            .is_some_and(|shared| cache::lock(shared).get(oid, None, None).is_some())
    }

    /// Store a revision of `oid` (based on `serial`) that shares the data of `oid` at
    /// `data_serial` (undo, copyTransactionsFrom).
    pub fn store_backpointer(
        &self,
        txn: &Transaction,
        oid: Oid,
        serial: Tid,
        data_serial: Tid,
    ) -> Result<(), ClientError> {
        let op = Op::Store {
            txn: txn.txn,
            oid,
            serial,
            data: None,
            data_serial: Some(data_serial),
        };
        self.submit_store(txn, op)
    }

    /// Store a record copied from another storage (`restore`, in a transaction begun
    /// with its TID): its data, or a backpointer when `data_serial` is Some. `serial` is
    /// the revision it is based on, as for `store`.
    pub fn restore(
        &self,
        txn: &Transaction,
        oid: Oid,
        serial: Tid,
        data: Option<Vec<u8>>,
        data_serial: Option<Tid>,
    ) -> Result<(), ClientError> {
        match data_serial {
            Some(ds) => self.store_backpointer(txn, oid, serial, ds),
            None => self.store(txn, oid, serial, data),
        }
    }

    /// Delete `oid` (based on `serial`) in `txn` (ZODB's `deleteObject`).
    pub fn delete_object(
        &self,
        txn: &Transaction,
        oid: Oid,
        serial: Tid,
    ) -> Result<(), ClientError> {
        self.store(txn, oid, serial, None)
    }

    /// Remove, on every storage, the revisions that are not current as of `tid` (ZODB's
    /// `pack`); `tid` must be in (0, last transaction]. Returns once the cluster packed.
    pub fn pack(&self, tid: Tid) -> Result<(), ClientError> {
        match self.sender.call_seq(Op::Pack { tid }, PACK_TIMEOUT)?.0 {
            Outcome::Done => {
                // Revisions the pack removed may be cached: forget them all, so that this
                // client's loads answer as the storages now do.
                if let Some(shared) = &self.cache {
                    cache::lock(shared).clear();
                }
                Ok(())
            }
            o => Err(unexpected("pack", o)),
        }
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

/// The transactions of a range, oldest first (see [`Client::iterator`]).
pub struct TransactionIterator<'a> {
    client: &'a Client,
    /// The smallest TID not fetched yet.
    next: Tid,
    stop: Tid,
    chunk: VecDeque<Tid>,
    done: bool,
}

impl Iterator for TransactionIterator<'_> {
    type Item = Result<TransactionRecords, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.chunk.is_empty() && !self.done {
            let op = Op::TidsFrom {
                min: self.next,
                max: self.stop,
                limit: ITERATOR_CHUNK,
            };
            match self.client.sender.call(op) {
                Ok(Outcome::Tids(tids)) => {
                    self.done = tids.len() < ITERATOR_CHUNK as usize;
                    match tids.last() {
                        Some(&last) if last < Tid::MAX => self.next = Tid(last.0 + 1),
                        _ => self.done = true,
                    }
                    self.chunk.extend(tids);
                }
                Ok(o) => {
                    self.done = true;
                    return Some(Err(unexpected("iterator", o)));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        let tid = self.chunk.pop_front()?;
        Some(self.client.transaction_records(tid))
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
                    data_serial,
                } => match self.txns.get_mut(&txn) {
                    Some(_) if data.as_deref() == Some(b"refused") => {
                        Err(ClientError::Invalid("refused store".into()))
                    }
                    Some(_) => {
                        // A backpointer: the data it points to, as a storage answers it.
                        let data = match data_serial {
                            Some(ds) => self
                                .objects
                                .get(&oid)
                                .and_then(|r| r.iter().find(|r| r.0 == ds))
                                .and_then(|r| r.1.clone()),
                            None => data,
                        };
                        let stores = self.txns.get_mut(&txn).expect("above");
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
                Op::TransactionInfo { tid } => {
                    let oids: Vec<Oid> = self
                        .objects
                        .iter()
                        .filter(|(_, r)| r.iter().any(|r| r.0 == tid))
                        .map(|(o, _)| *o)
                        .collect();
                    if tid.0 == 0 || tid.0 > self.last {
                        Err(ClientError::UnknownTransaction(tid))
                    } else {
                        Ok(Outcome::Transaction(TransactionInfo {
                            tid,
                            user: vec![],
                            description: vec![],
                            extension: vec![],
                            packed: false,
                            oids,
                        }))
                    }
                }
                Op::UndoSerials { undone, oids, .. } => Ok(Outcome::UndoSerials(
                    oids.into_iter()
                        .filter_map(|oid| {
                            let revs = self.objects.get(&oid)?;
                            let i = revs.iter().position(|r| r.0 == undone)?;
                            Some((
                                oid,
                                UndoSerial {
                                    current: revs.last()?.0,
                                    undo: i.checked_sub(1).map(|j| revs[j].0),
                                    is_current: i + 1 == revs.len(),
                                },
                            ))
                        })
                        .collect(),
                )),
                Op::TidsFrom { min, max, limit } => Ok(Outcome::Tids(
                    (min.0.max(1)..=max.0.min(self.last))
                        .take(limit as usize)
                        .map(Tid)
                        .collect(),
                )),
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
    fn stores_are_pipelined_and_a_failed_one_fails_the_vote() {
        let (c, _) = fake();
        let n = STORE_WINDOW as u64 * 3;
        let txn = c.tpc_begin(None).unwrap();
        for i in 0..n {
            c.store(&txn, Oid(i + 1), Tid::ZERO, Some(vec![i as u8]))
                .unwrap();
        }
        let meta = TransactionMeta::default();
        c.tpc_vote(&txn, &meta, |_| None).unwrap();
        let tid = c.tpc_finish(txn).unwrap();
        for i in 0..n {
            let l = c.load(Oid(i + 1)).unwrap();
            assert_eq!((l.data, l.serial), (Some(vec![i as u8]), tid));
        }

        // A refused store in the middle: later stores may or may not see its error, the
        // vote must, and so must a finish attempted without a vote.
        let txn = c.tpc_begin(None).unwrap();
        let mut seen = false;
        for i in 0..n {
            let data = if i == 10 {
                b"refused".to_vec()
            } else {
                vec![1]
            };
            if let Err(e) = c.store(&txn, Oid(i + 1), tid, Some(data)) {
                assert_eq!(e, ClientError::Invalid("refused store".into()));
                seen = true;
            }
        }
        assert!(seen, "a window's worth of stores later, the error is out");
        let e = c.tpc_vote(&txn, &meta, |_| None).unwrap_err();
        assert_eq!(e, ClientError::Invalid("refused store".into()));
        assert_eq!(
            c.tpc_finish(txn).unwrap_err(),
            ClientError::Invalid("refused store".into())
        );
        assert_eq!(c.load(Oid(11)).unwrap().serial, tid, "nothing committed");
    }

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

    /// Undo: a current revision goes back by a backpointer (or a deletion for a
    /// creation), a later-modified one goes through the resolver, and None fails it; the
    /// iterator gives every transaction with its records.
    #[test]
    fn undo_and_iterate() {
        let (client, _) = fake();
        let (o1, o2) = (Oid(1), Oid(2));
        let t1 = commit(&client, &[(o1, Tid::ZERO, b"a"), (o2, Tid::ZERO, b"x")]).unwrap();
        let t2 = commit(&client, &[(o1, t1, b"b")]).unwrap();
        let txn = client.tpc_begin(None).unwrap();
        let undone = client
            .undo(&txn, t2, |_, _, _, _, _| panic!("no resolution"))
            .unwrap();
        assert_eq!(undone, vec![o1]);
        client
            .tpc_vote(&txn, &TransactionMeta::default(), |_| None)
            .unwrap();
        let t3 = client.tpc_finish(txn).unwrap();
        assert_eq!(client.load(o1).unwrap().data.as_deref(), Some(&b"a"[..]));
        // Undoing t1: o1 changed since (resolver refuses), o2 did not (deleted).
        let txn = client.tpc_begin(None).unwrap();
        let mut asked = vec![];
        let err = client
            .undo(&txn, t1, |oid, current, tid, undo, data| {
                asked.push((
                    oid,
                    current,
                    tid,
                    undo.map(<[u8]>::to_vec),
                    data.map(<[u8]>::to_vec),
                ));
                None
            })
            .unwrap_err();
        assert!(matches!(err, ClientError::UndoFailed(_)), "{err:?}");
        assert_eq!(asked, vec![(o1, t3, t1, None, Some(b"a".to_vec()))]);
        drop(txn);
        let txn = client.tpc_begin(None).unwrap();
        let undone = client
            .undo(&txn, t1, |_, _, _, _, data| {
                Some([data.unwrap(), b"!"].concat())
            })
            .unwrap();
        assert_eq!(undone, vec![o1, o2]);
        client
            .tpc_vote(&txn, &TransactionMeta::default(), |_| None)
            .unwrap();
        let t4 = client.tpc_finish(txn).unwrap();
        assert_eq!(client.load(o1).unwrap().data.as_deref(), Some(&b"a!"[..]));
        assert_eq!(client.load(o2).unwrap().data, None);
        let all: Vec<TransactionRecords> = client
            .iterator(None, None)
            .collect::<Result<_, _>>()
            .unwrap();
        let tids: Vec<Tid> = all.iter().map(|t| t.info.tid).collect();
        assert_eq!(tids, vec![t1, t2, t3, t4]);
        let data: Vec<(Oid, Option<Vec<u8>>)> = all[0]
            .records
            .iter()
            .map(|r| (r.oid, r.data.clone()))
            .collect();
        assert_eq!(
            data,
            vec![(o1, Some(b"a".to_vec())), (o2, Some(b"x".to_vec()))]
        );
        let some: Vec<Tid> = client
            .iterator(Some(t2), Some(t3))
            .map(|t| t.unwrap().info.tid)
            .collect();
        assert_eq!(some, vec![t2, t3]);
        assert_eq!(
            client.transaction_info(Tid(99)).unwrap_err(),
            ClientError::UnknownTransaction(Tid(99))
        );
    }
}
