//! The list-append workload the commits scenario's clients run, and the history it records
//! for the isolation checker (`sim::isolation`).
//!
//! Each object holds a list of unique values (u64, 8 bytes little-endian each). A
//! transaction takes its snapshot (the client's last TID), reads some objects as of that
//! snapshot (some of them checked with readCurrent), appends a unique value to one to three
//! objects (storing the list it read plus the value, based on the serial it read), votes,
//! resolves some conflicts (re-storing the committed list plus its value) and aborts on the
//! others, sometimes aborts on purpose, and finishes. Each client runs one or two
//! transactions at a time, each issuing one call at a time.
//!
//! Some transactions undo an earlier committed one instead (as ZODB's undo: the undone
//! transaction's oids from TransactionInfo, the undo lookup within the new transaction, a
//! backpointer store per object, or a deletion where the undone one created it; an entry
//! that is not current would need conflict resolution, which the simulator has not: the
//! transaction aborts). Now and then a client packs at a TID it knows committed. These
//! choices come from a stream of their own, so a seed without them draws as before.
//!
//! The workload is driven by the scenario: it hands the world its calls (`World::call`) and
//! takes what the clients emitted (`World::take_client_output`). A client that crashes is a
//! new process when it comes back: its pending calls are lost (a finish sent is an unknown
//! outcome, anything earlier a failure, since nothing commits without a finish).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::isolation::{Read, Status, TxnRecord, Undo, Val};
use super::net::NodeIdx;
use super::world::{ClientOut, World};
use crate::actors::client::{Call, CallId, ClientError, Conflict, Notice, Op, Outcome, TxnRef};
use crate::proto::{Oid, Tid};
use crate::rng::{self, ChaCha8Rng};

/// How an object's list is stored.
pub fn encode(list: &[Val]) -> Vec<u8> {
    list.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The list an object's data holds; None if it is not a list this workload wrote.
pub fn decode(data: &[u8]) -> Option<Vec<Val>> {
    if data.len() % 8 != 0 {
        return None;
    }
    Some(
        data.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
    )
}

/// The workload's shape, drawn per seed.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Objects in the key space.
    pub keys: usize,
    /// Transactions each client runs at once (1 or 2).
    pub per_client: usize,
    /// Chance that a read object is also checked with readCurrent.
    pub read_current: f64,
    /// Chance that a conflict is resolved rather than aborted.
    pub resolve: f64,
    /// Chance that a transaction aborts on purpose (before or after its vote).
    pub abort: f64,
    /// Pause between one transaction's end and the next one's start (at most).
    pub think: Duration,
    /// Chance that a transaction undoes a recent committed one instead.
    pub undo: f64,
    /// Chance that a transaction is a pack instead.
    pub pack: f64,
}

impl WorkloadConfig {
    pub fn draw(rng: &mut ChaCha8Rng) -> WorkloadConfig {
        WorkloadConfig {
            keys: rng::between(rng, 5, 20) as usize,
            per_client: rng::between(rng, 1, 2) as usize,
            read_current: *rng::pick(rng, &[0.0, 0.3, 0.7]),
            resolve: *rng::pick(rng, &[0.0, 0.5, 0.9]),
            abort: *rng::pick(rng, &[0.0, 0.05, 0.15]),
            think: rng::duration(rng, Duration::from_millis(10), Duration::from_millis(800)),
            undo: 0.0,
            pack: 0.0,
        }
    }

    /// Undo and pack shares, from a stream of their own (the other draws are unchanged).
    pub fn draw_undo(&mut self, rng: &mut ChaCha8Rng) {
        if rng::chance(rng, 0.25) {
            return; // some seeds run the plain workload
        }
        self.undo = *rng::pick(rng, &[0.05, 0.15, 0.3]);
        self.pack = *rng::pick(rng, &[0.0, 0.01, 0.03]);
    }
}

/// Faults aimed at the commit path, drawn per seed: each is a chance per transaction that
/// reaches the moment it aims at.
#[derive(Clone, Debug, Default)]
pub struct Targeted {
    /// The client crashes between its vote and its finish (or just after sending it).
    pub client_crash: f64,
    /// The client's connections reset between vote and finish (its process runs on).
    pub client_reset: f64,
    /// The primary crashes while a transaction finishes.
    pub master_crash: f64,
    /// A storage crashes while a transaction votes.
    pub storage_vote: f64,
    /// A storage crashes while a transaction finishes.
    pub storage_finish: f64,
}

impl Targeted {
    pub fn draw(rng: &mut ChaCha8Rng) -> Targeted {
        let mut p = |on: f64| {
            if rng::chance(rng, on) {
                rng::unit(rng) * 0.05
            } else {
                0.0
            }
        };
        Targeted {
            client_crash: p(0.4),
            client_reset: p(0.4),
            master_crash: p(0.4),
            storage_vote: p(0.4),
            storage_finish: p(0.4),
        }
    }
}

/// A targeted fault, due at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strike {
    CrashClient(NodeIdx),
    ResetClient(NodeIdx),
    CrashPrimary,
    CrashStorage,
}

/// Where a transaction is; each stage waits for the answer to one call.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Stage {
    /// Waiting to start (think time).
    Idle,
    /// Taking OIDs before the transaction starts.
    Oids,
    Snapshot,
    /// Reading `plan[i]`.
    Reading(usize),
    Begin,
    /// readCurrent of the i-th checked read.
    Checking(usize),
    /// Storing the i-th append.
    Storing(usize),
    Vote,
    /// An undo: the undone transaction's oids (TransactionInfo).
    Info,
    /// An undo: the undo lookup (UndoSerials).
    UndoLookup,
    /// A pack, until the cluster packed.
    Packing,
    /// Loading the committed revision of the i-th conflict to resolve it.
    Resolving(usize),
    /// Storing the resolved revision of the i-th conflict.
    Restoring(usize),
    Finish,
    Abort,
}

/// What a transaction does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Append,
    Undo,
    Pack,
}

/// One transaction in progress.
struct Running {
    kind: Kind,
    /// Not a transaction of the history (a pack, an undo with nothing to undo).
    silent: bool,
    rec: TxnRecord,
    /// Objects to read (every appended one among them), then which are checked.
    plan: Vec<Oid>,
    append_to: Vec<Oid>,
    checked: Vec<Oid>,
    txn: Option<TxnRef>,
    conflicts: Vec<Conflict>,
    votes: u32,
    /// Whether Finish was sent (then a lost answer is an unknown outcome).
    finishing: bool,
    /// The status decided before the last call (an abort after a failure).
    decided: Option<Status>,
}

struct Slot {
    stage: Stage,
    /// The pending call, if any.
    pending: Option<CallId>,
    /// When an idle slot starts its next transaction.
    wake: Duration,
    txn: Option<Running>,
}

struct ClientState {
    node: NodeIdx,
    /// The process the slots' calls went to.
    incarnation: u32,
    slots: Vec<Slot>,
}

/// One notice as a client got it: which process, when.
#[derive(Clone, Debug)]
pub struct NoticeRecord {
    pub incarnation: u32,
    pub at: Duration,
    pub notice: Notice,
}

pub struct Workload {
    cfg: WorkloadConfig,
    rng: ChaCha8Rng,
    clients: Vec<ClientState>,
    /// The key space, once allocated (NewOids).
    keys: Vec<Oid>,
    /// The pending NewOids call (client, call id).
    allocating: Option<(usize, CallId)>,
    next_call: CallId,
    next_val: Val,
    next_txn: usize,
    /// Finished transactions.
    pub records: Vec<TxnRecord>,
    /// Every notice, per client.
    pub notices: Vec<Vec<NoticeRecord>>,
    /// No new transaction starts (the liveness phase draining).
    stopping: bool,
    /// Per client: commits acknowledged since `mark_progress`.
    committed_since: Vec<usize>,
    /// Calls made so far.
    calls: u64,
    /// Every TID a pack was asked at, whatever came of it.
    pub packs: Vec<Tid>,
    /// Packs the cluster answered done.
    pub packed: usize,
    /// Draws the undo and pack choices.
    side: ChaCha8Rng,
    targeted: Targeted,
    /// Targeted faults drawn and not applied yet: (when, what).
    strikes: Vec<(Duration, Strike)>,
    /// Which transactions first ask for OIDs (a stream of its own: the other draws stay).
    oid_rng: ChaCha8Rng,
    /// Every OID and TTID a client got (NewOids, Began), with the client that got it.
    got_oids: BTreeMap<Oid, usize>,
    got_ttids: BTreeMap<Tid, usize>,
    /// Ids a client got that another call had got before.
    duplicates: Vec<String>,
}

impl Workload {
    pub fn new(
        cfg: WorkloadConfig,
        rng: ChaCha8Rng,
        side: ChaCha8Rng,
        clients: &[NodeIdx],
    ) -> Workload {
        let per = cfg.per_client;
        let mut oid_rng = rng.clone();
        // Unlike any `rng::stream` number.
        oid_rng.set_stream(0x0071_d000);
        Workload {
            oid_rng,
            got_oids: BTreeMap::new(),
            got_ttids: BTreeMap::new(),
            duplicates: Vec::new(),
            cfg,
            rng,
            clients: clients
                .iter()
                .map(|&node| ClientState {
                    node,
                    incarnation: 0,
                    slots: (0..per)
                        .map(|_| Slot {
                            stage: Stage::Idle,
                            pending: None,
                            wake: Duration::ZERO,
                            txn: None,
                        })
                        .collect(),
                })
                .collect(),
            keys: Vec::new(),
            allocating: None,
            next_call: 1,
            next_val: 1,
            next_txn: 0,
            records: Vec::new(),
            notices: vec![Vec::new(); clients.len()],
            stopping: false,
            committed_since: vec![0; clients.len()],
            calls: 0,
            packs: Vec::new(),
            packed: 0,
            side,
            targeted: Targeted::default(),
            strikes: Vec::new(),
        }
    }

    /// Aim faults at the commit path (the safety phase), or stop (`Targeted::default()`).
    pub fn set_targeted(&mut self, targeted: Targeted) {
        self.targeted = targeted;
    }

    /// No more targeted faults (the liveness phase).
    pub fn calm(&mut self) {
        self.targeted = Targeted::default();
        self.strikes.clear();
    }

    /// When the next targeted fault is due.
    pub fn next_strike(&self) -> Option<Duration> {
        self.strikes.iter().map(|(at, _)| *at).min()
    }

    /// The targeted faults due now, in the order drawn.
    pub fn due_strikes(&mut self, now: Duration) -> Vec<Strike> {
        let (due, later): (Vec<_>, Vec<_>) = self.strikes.drain(..).partition(|(at, _)| *at <= now);
        self.strikes = later;
        due.into_iter().map(|(_, s)| s).collect()
    }

    /// Maybe strike within a few milliseconds of now.
    fn maybe_strike(&mut self, now: Duration, p: f64, strike: Strike) {
        if p > 0.0 && rng::chance(&mut self.rng, p) {
            let after = rng::duration(&mut self.rng, Duration::ZERO, Duration::from_millis(30));
            self.strikes.push((now + after, strike));
        }
    }

    pub fn config(&self) -> &WorkloadConfig {
        &self.cfg
    }

    /// The objects of the key space (allocated once the cluster first ran).
    pub fn keys(&self) -> &[Oid] {
        &self.keys
    }

    /// Ids clients got twice (NewOids, Began): each should be new.
    pub fn duplicates(&self) -> &[String] {
        &self.duplicates
    }

    /// Record ids a client got.
    fn got(&mut self, ci: usize, oids: &[Oid], ttid: Option<Tid>) {
        for oid in oids {
            if let Some(c) = self.got_oids.insert(*oid, ci) {
                let d = format!("client {ci} got {oid} from NewOids, which client {c} had got");
                self.duplicates.push(d);
            }
        }
        if let Some(t) = ttid {
            if let Some(c) = self.got_ttids.insert(t, ci) {
                let d = format!("client {ci} began with TTID {t:?}, which client {c} had got");
                self.duplicates.push(d);
            }
        }
    }

    /// Calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Start no new transaction; those in progress run to their end.
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    /// Count commits from now on (`progress`).
    pub fn mark_progress(&mut self) {
        self.committed_since.iter_mut().for_each(|c| *c = 0);
    }

    /// Whether every client committed at least one transaction since `mark_progress`.
    pub fn progressed(&self) -> bool {
        self.committed_since.iter().all(|c| *c > 0)
    }

    /// Whether no transaction is in progress.
    pub fn drained(&self) -> bool {
        self.allocating.is_none()
            && self
                .clients
                .iter()
                .all(|c| c.slots.iter().all(|s| s.txn.is_none()))
    }

    /// What is still in progress, for a liveness failure's message.
    pub fn in_progress(&self, w: &World) -> String {
        let mut out = Vec::new();
        for c in &self.clients {
            for s in &c.slots {
                if let Some(t) = &s.txn {
                    out.push(format!(
                        "{} txn {} at {:?}",
                        w.label(c.node),
                        t.rec.id,
                        s.stage
                    ));
                }
            }
        }
        if !self.keys.is_empty() && self.allocating.is_some() {
            out.push("allocating oids".into());
        }
        out.join(", ")
    }

    /// The next time an idle slot wants to start (to bound the world's run).
    pub fn next_wake(&self) -> Option<Duration> {
        if self.stopping {
            return None;
        }
        self.clients
            .iter()
            .flat_map(|c| c.slots.iter())
            .filter(|s| s.txn.is_none() && s.pending.is_none())
            .map(|s| s.wake)
            .min()
    }

    fn call_id(&mut self) -> CallId {
        self.next_call += 1;
        self.next_call
    }

    /// Take the clients' output, notice crashed clients, start due transactions, and issue
    /// the calls that follow, until nothing more is to be done at this instant.
    pub fn step(&mut self, w: &mut World) {
        loop {
            let mut busy = false;
            for out in w.take_client_output() {
                busy = true;
                let Some(ci) = self.clients.iter().position(|c| c.node == out.node) else {
                    continue;
                };
                match out.what {
                    ClientOut::Notice(notice) => self.notices[ci].push(NoticeRecord {
                        incarnation: out.incarnation,
                        at: w.now(),
                        notice,
                    }),
                    ClientOut::Reply(r) => {
                        if out.incarnation != self.clients[ci].incarnation {
                            continue; // for a process whose calls were given up
                        }
                        self.on_reply(w, ci, r.id, r.result);
                    }
                }
            }
            for ci in 0..self.clients.len() {
                busy |= self.check_process(w, ci);
                busy |= self.start_due(w, ci);
            }
            if !busy {
                return;
            }
        }
    }

    /// A client that crashed (or runs another process now) lost its pending calls.
    fn check_process(&mut self, w: &World, ci: usize) -> bool {
        let node = self.clients[ci].node;
        let n = &w.nodes[node];
        let inc = if n.is_up() { n.incarnation } else { u32::MAX };
        if inc == self.clients[ci].incarnation {
            return false;
        }
        let mut changed = false;
        for si in 0..self.clients[ci].slots.len() {
            let slot = &mut self.clients[ci].slots[si];
            slot.pending = None;
            slot.stage = Stage::Idle;
            if let Some(t) = slot.txn.take() {
                let status = if t.finishing {
                    Status::Unknown
                } else {
                    Status::Failed
                };
                self.end(w, t, status, ci, false);
                changed = true;
            }
        }
        if self.allocating.is_some_and(|(c, _)| c == ci) {
            self.allocating = None;
        }
        self.clients[ci].incarnation = inc;
        changed
    }

    fn end(&mut self, w: &World, mut t: Running, status: Status, ci: usize, seen: bool) {
        if matches!(status, Status::Committed(_)) {
            self.committed_since[ci] += 1;
        }
        if t.silent {
            return;
        }
        t.rec.status = status;
        t.rec.ended = seen.then_some(w.now());
        self.records.push(t.rec);
    }

    fn send(&mut self, w: &mut World, ci: usize, si: usize, stage: Stage, op: Op) -> bool {
        let id = self.call_id();
        let slot = &mut self.clients[ci].slots[si];
        slot.stage = stage;
        slot.pending = Some(id);
        self.calls += 1;
        let node = self.clients[ci].node;
        w.call(node, Call { id, op });
        true
    }

    /// Start the transactions that are due on a running client.
    fn start_due(&mut self, w: &mut World, ci: usize) -> bool {
        let node = self.clients[ci].node;
        if !w.nodes[node].is_up() || self.stopping {
            return false;
        }
        if self.keys.is_empty() {
            if self.allocating.is_some() {
                return false;
            }
            let id = self.call_id();
            self.allocating = Some((ci, id));
            self.calls += 1;
            let count = self.cfg.keys as u32;
            w.call(
                node,
                Call {
                    id,
                    op: Op::NewOids { count },
                },
            );
            return true;
        }
        let mut started = false;
        for si in 0..self.clients[ci].slots.len() {
            let slot = &self.clients[ci].slots[si];
            if slot.txn.is_some() || slot.pending.is_some() || slot.wake > w.now() {
                continue;
            }
            let t = self.plan_txn(w, ci);
            self.clients[ci].slots[si].txn = Some(t);
            // Some take OIDs first, as a ZODB connection does for new objects (they are
            // not stored: only handing them out is checked).
            if rng::chance(&mut self.oid_rng, 0.3) {
                let count = rng::between(&mut self.oid_rng, 1, 3) as u32;
                self.send(w, ci, si, Stage::Oids, Op::NewOids { count });
            } else {
                self.send(w, ci, si, Stage::Snapshot, Op::LastTransaction);
            }
            started = true;
        }
        started
    }

    fn plan_txn(&mut self, w: &World, ci: usize) -> Running {
        let kind = if rng::chance(&mut self.side, self.cfg.undo) {
            Kind::Undo
        } else if rng::chance(&mut self.side, self.cfg.pack) {
            Kind::Pack
        } else {
            Kind::Append
        };
        if kind != Kind::Append {
            let mut t = self.new_running(w, ci, Vec::new(), Vec::new(), Vec::new());
            t.kind = kind;
            t.silent = kind == Kind::Pack;
            return t;
        }
        let rng = &mut self.rng;
        let pick_some = |rng: &mut ChaCha8Rng, keys: &[Oid], lo: u64, hi: u64| {
            let n = rng::between(rng, lo, hi) as usize;
            let mut set = BTreeSet::new();
            for _ in 0..n {
                set.insert(*rng::pick(rng, keys));
            }
            set
        };
        let append_to = pick_some(rng, &self.keys, 1, 3);
        let read_only: BTreeSet<Oid> = pick_some(rng, &self.keys, 0, 3)
            .difference(&append_to)
            .copied()
            .collect();
        let p = self.cfg.read_current;
        let checked: Vec<Oid> = read_only
            .iter()
            .copied()
            .filter(|_| rng::chance(rng, p))
            .collect();
        // Read-only-checked transactions (no appends) test serializability: a few.
        let append_to: Vec<Oid> = if !checked.is_empty() && rng::chance(rng, 0.1) {
            Vec::new()
        } else {
            append_to.into_iter().collect()
        };
        let mut plan: Vec<Oid> = read_only.into_iter().chain(append_to.clone()).collect();
        plan.sort_unstable();
        plan.dedup();
        self.new_running(w, ci, plan, append_to, checked)
    }

    fn new_running(
        &mut self,
        w: &World,
        ci: usize,
        plan: Vec<Oid>,
        append_to: Vec<Oid>,
        checked: Vec<Oid>,
    ) -> Running {
        let id = self.next_txn;
        self.next_txn += 1;
        Running {
            kind: Kind::Append,
            silent: false,
            rec: TxnRecord {
                id,
                client: ci,
                snapshot: None,
                reads: Vec::new(),
                appends: Vec::new(),
                resolved: Vec::new(),
                undo: None,
                status: Status::Unknown,
                begun: w.now(),
                ended: None,
            },
            plan,
            append_to,
            checked,
            txn: None,
            conflicts: Vec::new(),
            votes: 0,
            finishing: false,
            decided: None,
        }
    }

    fn on_reply(
        &mut self,
        w: &mut World,
        ci: usize,
        id: CallId,
        result: Result<Outcome, ClientError>,
    ) {
        if self.allocating == Some((ci, id)) {
            self.allocating = None;
            if let Ok(Outcome::Oids(oids)) = result {
                self.got(ci, &oids, None);
                if !oids.is_empty() {
                    self.keys = oids;
                }
            }
            return;
        }
        let Some(si) = self.clients[ci]
            .slots
            .iter()
            .position(|s| s.pending == Some(id))
        else {
            return;
        };
        self.clients[ci].slots[si].pending = None;
        let stage = self.clients[ci].slots[si].stage.clone();
        let mut t = self.clients[ci].slots[si]
            .txn
            .take()
            .expect("a pending call belongs to a transaction");
        match self.advance(w, ci, si, &mut t, stage, result) {
            Next::Continue => self.clients[ci].slots[si].txn = Some(t),
            Next::End(status) => {
                let think = rng::duration(&mut self.rng, Duration::ZERO, self.cfg.think);
                let slot = &mut self.clients[ci].slots[si];
                slot.stage = Stage::Idle;
                slot.wake = w.now() + think;
                self.end(w, t, status, ci, true);
            }
        }
    }

    /// Abort the transaction (it failed or we chose to); its status is `Failed`.
    fn abort(&mut self, w: &mut World, ci: usize, si: usize, t: &mut Running) -> Next {
        match t.txn {
            Some(txn) => {
                t.decided = Some(Status::Failed);
                self.send(w, ci, si, Stage::Abort, Op::Abort { txn });
                Next::Continue
            }
            None => Next::End(Status::Failed),
        }
    }

    fn advance(
        &mut self,
        w: &mut World,
        ci: usize,
        si: usize,
        t: &mut Running,
        stage: Stage,
        result: Result<Outcome, ClientError>,
    ) -> Next {
        match stage {
            Stage::Idle => Next::Continue,
            Stage::Oids => {
                if let Ok(Outcome::Oids(oids)) = &result {
                    self.got(ci, oids, None);
                }
                self.send(w, ci, si, Stage::Snapshot, Op::LastTransaction);
                Next::Continue
            }
            Stage::Snapshot => {
                let Ok(Outcome::Tid(snapshot)) = result else {
                    return Next::End(Status::Failed);
                };
                t.rec.snapshot = snapshot;
                match t.kind {
                    Kind::Append => self.read_next(w, ci, si, t, 0),
                    Kind::Undo => self.start_undo(w, ci, si, t),
                    Kind::Pack => self.start_pack(w, ci, si, t),
                }
            }
            Stage::Info => match result {
                // A packed transaction is not undoable (ZODB's undoLog leaves it out): the
                // revisions before it may be gone, and the undo lookup cannot tell a
                // revision packed away from an object's creation.
                Ok(Outcome::Transaction(info)) if !info.packed => {
                    let txn = t.txn.expect("begun");
                    let undone = t.rec.undo.as_ref().expect("an undo").undone;
                    let op = Op::UndoSerials {
                        txn,
                        undone,
                        oids: info.oids,
                    };
                    self.send(w, ci, si, Stage::UndoLookup, op);
                    Next::Continue
                }
                _ => self.abort(w, ci, si, t),
            },
            Stage::UndoLookup => match result {
                // An entry that is not current needs conflict resolution: none here. A pack
                // asked at or above the undone TID since may have run before the lookup
                // (see above: it would answer a deletion): not undoable either.
                Ok(Outcome::UndoSerials(entries))
                    if !entries.is_empty()
                        && entries.iter().all(|e| e.1.is_current)
                        && !self.packed_at_or_after(t.rec.undo.as_ref().map(|u| u.undone)) =>
                {
                    t.rec.undo.as_mut().expect("an undo").entries = entries;
                    self.store_next(w, ci, si, t, 0)
                }
                _ => self.abort(w, ci, si, t),
            },
            Stage::Packing => {
                if matches!(result, Ok(Outcome::Done)) {
                    self.packed += 1;
                }
                Next::End(Status::Failed)
            }
            Stage::Reading(i) => {
                let oid = t.plan[i];
                let checked = t.checked.contains(&oid);
                match result {
                    // A deletion (an undone creation): the object is absent at that serial.
                    Ok(Outcome::Loaded(l)) if l.data.is_none() => {
                        t.rec.reads.push(Read {
                            oid,
                            list: Vec::new(),
                            serial: Some(l.serial),
                            checked,
                        });
                    }
                    Ok(Outcome::Loaded(l)) => {
                        let Some(list) = l.data.as_deref().and_then(decode) else {
                            return self.abort(w, ci, si, t);
                        };
                        t.rec.reads.push(Read {
                            oid,
                            list,
                            serial: Some(l.serial),
                            checked,
                        });
                    }
                    Err(ClientError::DoesNotExist(_)) | Err(ClientError::NotFound(_))
                        if self.packed_after(t.rec.snapshot) =>
                    {
                        // A pack above the snapshot may have removed the revision it
                        // sees: absent or packed away, the read tells nothing.
                        return self.abort(w, ci, si, t);
                    }
                    Err(ClientError::DoesNotExist(_)) | Err(ClientError::NotFound(_)) => {
                        t.rec.reads.push(Read {
                            oid,
                            list: Vec::new(),
                            serial: None,
                            checked,
                        });
                    }
                    _ => return Next::End(Status::Failed),
                }
                self.read_next(w, ci, si, t, i + 1)
            }
            Stage::Begin => {
                let Ok(Outcome::Began { txn, ttid }) = result else {
                    return Next::End(Status::Failed);
                };
                self.got(ci, &[], Some(ttid));
                t.txn = Some(txn);
                if let Some(u) = &t.rec.undo {
                    let tid = u.undone;
                    self.send(w, ci, si, Stage::Info, Op::TransactionInfo { tid });
                    return Next::Continue;
                }
                self.check_next(w, ci, si, t, 0)
            }
            Stage::Checking(i) => {
                if result.is_err() {
                    return self.abort(w, ci, si, t);
                }
                self.check_next(w, ci, si, t, i + 1)
            }
            Stage::Storing(i) => {
                if result.is_err() {
                    return self.abort(w, ci, si, t);
                }
                self.store_next(w, ci, si, t, i + 1)
            }
            Stage::Vote => match result {
                Ok(Outcome::Done) => {
                    if rng::chance(&mut self.rng, self.cfg.abort / 2.0) {
                        return self.abort(w, ci, si, t);
                    }
                    t.finishing = true;
                    let txn = t.txn.expect("begun");
                    let (now, node, tg) = (w.now(), self.clients[ci].node, self.targeted.clone());
                    self.maybe_strike(now, tg.client_crash, Strike::CrashClient(node));
                    self.maybe_strike(now, tg.client_reset, Strike::ResetClient(node));
                    self.maybe_strike(now, tg.master_crash, Strike::CrashPrimary);
                    self.maybe_strike(now, tg.storage_finish, Strike::CrashStorage);
                    self.send(w, ci, si, Stage::Finish, Op::Finish { txn });
                    Next::Continue
                }
                Ok(Outcome::Conflicts(conflicts)) => {
                    let resolvable = conflicts
                        .iter()
                        .all(|c| t.append_to.contains(&c.oid) && c.data.is_some());
                    if !resolvable || t.votes > 5 || !rng::chance(&mut self.rng, self.cfg.resolve) {
                        return self.abort(w, ci, si, t);
                    }
                    t.conflicts = conflicts;
                    self.resolve_next(w, ci, si, t, 0)
                }
                _ => self.abort(w, ci, si, t),
            },
            Stage::Resolving(i) => {
                let c = t.conflicts[i].clone();
                let list = match result {
                    Ok(Outcome::Loaded(l)) => l.data.as_deref().and_then(decode),
                    _ => None,
                };
                let Some(mut list) = list else {
                    return self.abort(w, ci, si, t);
                };
                let Some(&(_, v)) = t.rec.appends.iter().find(|(o, _)| *o == c.oid) else {
                    return self.abort(w, ci, si, t);
                };
                list.push(v);
                // The append is now based on the committed revision, not on what was
                // read at the snapshot.
                if !t.rec.resolved.contains(&c.oid) {
                    t.rec.resolved.push(c.oid);
                }
                let txn = t.txn.expect("begun");
                self.send(
                    w,
                    ci,
                    si,
                    Stage::Restoring(i),
                    Op::Store {
                        txn,
                        oid: c.oid,
                        serial: c.committed,
                        data: Some(encode(&list)),
                        data_serial: None,
                    },
                );
                Next::Continue
            }
            Stage::Restoring(i) => {
                if result.is_err() {
                    return self.abort(w, ci, si, t);
                }
                self.resolve_next(w, ci, si, t, i + 1)
            }
            Stage::Finish => match result {
                Ok(Outcome::Tid(Some(tid))) => Next::End(Status::Committed(tid)),
                Err(
                    ClientError::TransactionFailed(_)
                    | ClientError::Conflict { .. }
                    | ClientError::ReadConflict { .. }
                    | ClientError::Invalid(_)
                    | ClientError::ReadOnly,
                ) => Next::End(Status::Failed),
                _ => Next::End(Status::Unknown),
            },
            Stage::Abort => Next::End(t.decided.clone().unwrap_or(Status::Failed)),
        }
    }

    fn read_next(
        &mut self,
        w: &mut World,
        ci: usize,
        si: usize,
        t: &mut Running,
        i: usize,
    ) -> Next {
        if i < t.plan.len() {
            let Some(snapshot) = t.rec.snapshot else {
                // Nothing committed yet: every object is empty.
                let oid = t.plan[i];
                t.rec.reads.push(Read {
                    oid,
                    list: Vec::new(),
                    serial: None,
                    checked: t.checked.contains(&oid),
                });
                return self.read_next(w, ci, si, t, i + 1);
            };
            let op = Op::Load {
                oid: t.plan[i],
                at: None,
                before: Some(Tid(snapshot.0 + 1)),
            };
            self.send(w, ci, si, Stage::Reading(i), op);
            return Next::Continue;
        }
        if rng::chance(&mut self.rng, self.cfg.abort / 2.0) {
            return Next::End(Status::Failed); // gave up before committing anything
        }
        self.send(w, ci, si, Stage::Begin, Op::TpcBegin { tid: None });
        Next::Continue
    }

    /// Whether a pack was asked at or above `tid`.
    fn packed_at_or_after(&self, tid: Option<Tid>) -> bool {
        tid.is_some_and(|tid| self.packs.iter().any(|&p| p >= tid))
    }

    /// Whether a pack was asked above `snapshot` (then reads at it may find nothing).
    fn packed_after(&self, snapshot: Option<Tid>) -> bool {
        self.packs.iter().any(|&p| snapshot.is_none_or(|s| p > s))
    }

    /// Committed transactions this client may know of (at or before its snapshot) that
    /// wrote something, most recent last.
    fn undoable(&self, snapshot: Option<Tid>) -> Vec<Tid> {
        let Some(snap) = snapshot else {
            return Vec::new();
        };
        let mut tids: Vec<Tid> = self
            .records
            .iter()
            .filter(|r| {
                !r.appends.is_empty() || r.undo.as_ref().is_some_and(|u| !u.entries.is_empty())
            })
            .filter_map(|r| match r.status {
                Status::Committed(tid) if tid <= snap => Some(tid),
                _ => None,
            })
            .collect();
        tids.sort_unstable();
        tids
    }

    /// Undo one of the last committed transactions (the older, the less likely current).
    fn start_undo(&mut self, w: &mut World, ci: usize, si: usize, t: &mut Running) -> Next {
        let tids = self.undoable(t.rec.snapshot);
        let recent = &tids[tids.len().saturating_sub(8)..];
        if recent.is_empty() {
            t.silent = true;
            return Next::End(Status::Failed);
        }
        let undone = *rng::pick(&mut self.side, recent);
        t.rec.undo = Some(Undo {
            undone,
            entries: Vec::new(),
        });
        self.send(w, ci, si, Stage::Begin, Op::TpcBegin { tid: None });
        Next::Continue
    }

    /// Pack at a TID this client knows committed.
    fn start_pack(&mut self, w: &mut World, ci: usize, si: usize, t: &mut Running) -> Next {
        let tids = self.undoable(t.rec.snapshot);
        if tids.is_empty() {
            return Next::End(Status::Failed);
        }
        let tid = *rng::pick(&mut self.side, &tids);
        self.packs.push(tid);
        self.send(w, ci, si, Stage::Packing, Op::Pack { tid });
        Next::Continue
    }

    fn check_next(
        &mut self,
        w: &mut World,
        ci: usize,
        si: usize,
        t: &mut Running,
        i: usize,
    ) -> Next {
        let txn = t.txn.expect("begun");
        // Only objects that exist can be checked.
        let mut i = i;
        while i < t.checked.len() {
            let oid = t.checked[i];
            if let Some(serial) = t
                .rec
                .reads
                .iter()
                .find(|r| r.oid == oid)
                .and_then(|r| r.serial)
            {
                self.send(
                    w,
                    ci,
                    si,
                    Stage::Checking(i),
                    Op::CheckCurrentSerial { txn, oid, serial },
                );
                return Next::Continue;
            }
            // Not checked after all: the record says so.
            if let Some(r) = t.rec.reads.iter_mut().find(|r| r.oid == oid) {
                r.checked = false;
            }
            i += 1;
        }
        self.store_next(w, ci, si, t, 0)
    }

    fn store_next(
        &mut self,
        w: &mut World,
        ci: usize,
        si: usize,
        t: &mut Running,
        i: usize,
    ) -> Next {
        let txn = t.txn.expect("begun");
        if let Some(u) = &t.rec.undo {
            let Some(&(oid, us)) = u.entries.get(i) else {
                return self.vote(w, ci, si, t);
            };
            // A backpointer to the data before the undone revision (None: a deletion).
            let op = Op::Store {
                txn,
                oid,
                serial: us.current,
                data: None,
                data_serial: us.undo,
            };
            self.send(w, ci, si, Stage::Storing(i), op);
            return Next::Continue;
        }
        if i < t.append_to.len() {
            let oid = t.append_to[i];
            let read = t
                .rec
                .reads
                .iter()
                .find(|r| r.oid == oid)
                .expect("appended objects are read");
            let v = self.next_val;
            self.next_val += 1;
            let mut list = read.list.clone();
            list.push(v);
            let serial = read.serial.unwrap_or(Tid::ZERO);
            t.rec.appends.push((oid, v));
            self.send(
                w,
                ci,
                si,
                Stage::Storing(i),
                Op::Store {
                    txn,
                    oid,
                    serial,
                    data: Some(encode(&list)),
                    data_serial: None,
                },
            );
            return Next::Continue;
        }
        self.vote(w, ci, si, t)
    }

    fn vote(&mut self, w: &mut World, ci: usize, si: usize, t: &mut Running) -> Next {
        t.votes += 1;
        let txn = t.txn.expect("begun");
        if t.votes == 1 && rng::chance(&mut self.rng, self.cfg.abort / 2.0) {
            return self.abort(w, ci, si, t);
        }
        let (now, tg) = (w.now(), self.targeted.clone());
        self.maybe_strike(now, tg.storage_vote, Strike::CrashStorage);
        let user = format!("c{ci}").into_bytes();
        let description = format!("txn {}", t.rec.id).into_bytes();
        self.send(
            w,
            ci,
            si,
            Stage::Vote,
            Op::Vote {
                txn,
                user,
                description,
                extension: Vec::new(),
            },
        );
        Next::Continue
    }

    fn resolve_next(
        &mut self,
        w: &mut World,
        ci: usize,
        si: usize,
        t: &mut Running,
        i: usize,
    ) -> Next {
        if i < t.conflicts.len() {
            let c = &t.conflicts[i];
            let op = Op::Load {
                oid: c.oid,
                at: Some(c.committed),
                before: None,
            };
            self.send(w, ci, si, Stage::Resolving(i), op);
            return Next::Continue;
        }
        t.conflicts.clear();
        self.vote(w, ci, si, t)
    }
}

enum Next {
    Continue,
    End(Status),
}
