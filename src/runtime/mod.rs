//! Production wiring: each node is an actix actor (`NodeHost`) that owns a sans-IO role
//! actor and carries out its effects with real sockets, timers and the system clock. No
//! protocol logic lives here: it moves bytes, fires timers and reads the clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod app;
pub mod client;
pub mod conn;
pub mod log;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use tokio::net::{TcpListener, TcpStream};

use tracing::{error, info, warn};

use crate::actors::{
    self, CloseReason, Command, ConnId, Ctx, Effect, Event, NodeEnv, TimerId, CONNECT_TIMEOUT,
};
use crate::proto::{frame, Address, Message, WallTime};
use crate::rng::{ChaCha8Rng, SeedableRng};
use conn::{BoxedStream, Budget, Handles, Meter, Transport};
pub use log::init_logging;

/// What connection tasks and the process tell the host.
#[derive(Message)]
#[rtype(result = "()")]
pub enum ConnEvent {
    Accepted {
        stream: BoxedStream,
        peer: String,
    },
    ConnectDone {
        conn: ConnId,
        result: Result<(BoxedStream, String), CloseReason>,
    },
    Received {
        conn: ConnId,
        msg: Message,
    },
    Closed {
        conn: ConnId,
        reason: CloseReason,
    },
    /// The host itself cut a connection (its peer does not read): tell the node.
    Cut {
        conn: ConnId,
        reason: CloseReason,
    },
    Local(Command),
}

/// A connection as the host sees it.
struct Conn {
    /// The peer's address (for log lines).
    peer: String,
    meter: Meter,
    io: Io,
}

enum Io {
    /// Connecting: frames wait here.
    Pending(Vec<Vec<u8>>),
    Open(Handles),
}

/// The nodes one process hosts (one for a node program, several for neosimple): the
/// process ends when the last one exits, with the worst exit code.
#[derive(Clone, Default)]
pub struct Process {
    inner: std::rc::Rc<ProcessInner>,
}

#[derive(Default)]
struct ProcessInner {
    live: std::cell::Cell<usize>,
    code: std::cell::Cell<i32>,
    nodes: std::cell::RefCell<Vec<Recipient<ConnEvent>>>,
}

impl Process {
    fn node_started(&self, node: Recipient<ConnEvent>) {
        self.inner.live.set(self.inner.live.get() + 1);
        self.inner.nodes.borrow_mut().push(node);
    }

    fn node_exited(&self, code: i32) {
        let live = self.inner.live.get().saturating_sub(1);
        self.inner.live.set(live);
        self.inner.code.set(self.inner.code.get().max(code));
        if live == 0 {
            System::current().stop_with_code(self.inner.code.get());
        }
    }

    /// Ask every node to stop cleanly.
    pub fn shutdown(&self) {
        for n in self.inner.nodes.borrow().iter() {
            n.do_send(ConnEvent::Local(Command::Shutdown));
        }
    }

    /// Stop every node cleanly on SIGINT or SIGTERM. Signals are taken on a thread of their
    /// own, so that they work even while the node's thread is busy (a slow disk); a node
    /// that has not stopped `STOP_GRACE` after the signal, or a second signal, ends the
    /// process at once.
    pub fn shutdown_on_signals(&self) {
        let nodes: Vec<Recipient<ConnEvent>> = self.inner.nodes.borrow().clone();
        let spawned = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || watch_signals(nodes));
        if let Err(e) = spawned {
            warn!("cannot watch for signals: {e}");
        }
    }
}

/// How long a node may take to stop cleanly after SIGINT/SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

fn watch_signals(nodes: Vec<Recipient<ConnEvent>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            warn!("cannot watch for signals: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            warn!("cannot watch for signals");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        info!("signal received: stopping");
        for n in &nodes {
            n.do_send(ConnEvent::Local(Command::Shutdown));
        }
        let why = tokio::select! {
            _ = term.recv() => "a second signal",
            _ = int.recv() => "a second signal",
            _ = tokio::time::sleep(STOP_GRACE) => "not stopped in time",
        };
        error!("{why}: exiting now");
        log::flush(Duration::from_secs(1));
        std::process::exit(1);
    });
}

/// The actix actor hosting one node.
pub struct NodeHost<A: actors::Actor> {
    name: String,
    /// Boxed: actix needs the host to be `Unpin`.
    actor: Box<A>,
    env: NodeEnv,
    started: Instant,
    transport: Transport,
    conns: BTreeMap<ConnId, Conn>,
    timers: BTreeMap<TimerId, SpawnHandle>,
    /// Timers due at once, sent to ourselves as `DueNow` (see there).
    due_now: std::collections::BTreeSet<TimerId>,
    budget: Budget,
    /// Set when the node asked to exit.
    exited: bool,
    process: Process,
    /// Where a hosted client role's replies and notices go (the library); other nodes
    /// have none.
    outlet: Option<Box<dyn app::Outlet>>,
}

fn wall_now() -> WallTime {
    WallTime(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64,
    )
}

impl<A: actors::Actor + 'static> NodeHost<A> {
    pub fn new(name: String, actor: A, process: Process, transport: Transport) -> NodeHost<A> {
        let seed = wall_now().0 ^ ((std::process::id() as u64) << 32);
        NodeHost {
            name,
            actor: Box::new(actor),
            env: NodeEnv::production(ChaCha8Rng::seed_from_u64(seed)),
            started: Instant::now(),
            transport,
            conns: BTreeMap::new(),
            timers: BTreeMap::new(),
            due_now: std::collections::BTreeSet::new(),
            budget: Budget::default(),
            exited: false,
            process,
            outlet: None,
        }
    }

    /// Hand the node's replies and notices to `outlet` (a hosted client role).
    pub fn with_outlet(mut self, outlet: Box<dyn app::Outlet>) -> NodeHost<A> {
        self.outlet = Some(outlet);
        self
    }

    fn run(&mut self, ctx: &mut Context<Self>, f: impl FnOnce(&mut A, &mut Ctx)) {
        if self.exited {
            return;
        }
        let span = tracing::info_span!("node", name = %self.name);
        let _enter = span.enter();
        let mut effects = Vec::new();
        {
            let mut cx = Ctx::new(
                wall_now(),
                self.started.elapsed(),
                &mut self.env,
                &mut effects,
            );
            f(&mut self.actor, &mut cx);
        }
        for e in effects {
            self.apply(ctx, e);
        }
    }

    fn dispatch(&mut self, ctx: &mut Context<Self>, ev: Event) {
        self.run(ctx, |a, cx| a.handle(cx, ev));
    }

    fn apply(&mut self, ctx: &mut Context<Self>, effect: Effect) {
        if self.exited {
            return;
        }
        match effect {
            Effect::Connect { conn, to } => {
                self.conns.insert(
                    conn,
                    Conn {
                        peer: to.to_string(),
                        meter: Meter::new(),
                        io: Io::Pending(Vec::new()),
                    },
                );
                let host = ctx.address();
                let transport = self.transport.clone();
                actix_rt::spawn(async move {
                    let attempt = TcpStream::connect((to.host.as_str(), to.port));
                    let result = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
                        Ok(Ok(s)) => match transport.wrap(s, true).await {
                            Ok(s) => Ok((s, to.to_string())),
                            Err(e) => {
                                warn!("connection to {to} failed: {e}");
                                Err(CloseReason::Reset)
                            }
                        },
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            Err(CloseReason::Refused)
                        }
                        Ok(Err(_)) => Err(CloseReason::Reset),
                        Err(_) => Err(CloseReason::TimedOut),
                    };
                    host.do_send(ConnEvent::ConnectDone { conn, result });
                });
            }
            Effect::Send { conn, msg } => self.send(ctx, conn, &msg),
            Effect::Close { conn } => {
                if let Some(c) = self.conns.remove(&conn) {
                    self.forget(ctx, c, true);
                }
            }
            Effect::SetTimer { id, after, token } if after.is_zero() => {
                self.due_now.insert(id);
                ctx.notify(DueNow { id, token });
            }
            Effect::SetTimer { id, after, token } => {
                let handle = ctx.run_later(after, move |host, ctx| {
                    if host.timers.remove(&id).is_some() {
                        host.dispatch(ctx, Event::Timer { id, token });
                    }
                });
                self.timers.insert(id, handle);
            }
            Effect::CancelTimer { id } => {
                if let Some(h) = self.timers.remove(&id) {
                    ctx.cancel_future(h);
                }
                self.due_now.remove(&id);
            }
            Effect::Observe(_) => {}
            // Hosting the client role (the library) delivers these to the application.
            Effect::Reply(r) => {
                if let Some(o) = &mut self.outlet {
                    o.reply(r);
                }
            }
            Effect::Notice(n) => {
                if let Some(o) = &mut self.outlet {
                    o.notice(n);
                }
            }
            Effect::Exit { reason, success } => {
                info!("{}: exiting: {reason}", self.name);
                self.exited = true;
                let code = if success { 0 } else { 1 };
                // Let writers flush what was queued (a last answer, a close) before stopping.
                for (_, c) in std::mem::take(&mut self.conns) {
                    self.forget(ctx, c, true);
                }
                ctx.run_later(Duration::from_millis(200), move |host, ctx| {
                    ctx.stop();
                    host.process.node_exited(code);
                });
            }
        }
    }

    /// Queue `msg` for `conn`, within the limits on what may be queued.
    fn send(&mut self, ctx: &mut Context<Self>, conn: ConnId, msg: &Message) {
        let mut bytes = Vec::new();
        if let Err(e) = frame::encode(msg, &mut bytes) {
            // Our own message cannot be framed (too large): a bug of ours, not the peer's.
            error!("cannot send {} on {conn:?}: {e}", msg.packet.name());
            return;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if frame::identifies(&msg.packet) {
            // We accepted this peer: its frames may be large from now on.
            c.meter.set_identified();
        }
        let queued = c.meter.queued.get();
        if queued > conn::CONN_QUEUE_LIMIT {
            let why = format!("the peer does not read what we send ({queued} bytes queued)");
            self.cut(ctx, conn, why);
            return;
        }
        let n = bytes.len();
        let accepted = match &mut c.io {
            Io::Pending(q) => {
                q.push(bytes);
                true
            }
            Io::Open(h) => h.tx.send(bytes).is_ok(),
        };
        if accepted {
            c.meter.queued.set(queued + n);
            self.budget.queued.set(self.budget.queued.get() + n);
        }
        // Past the node's limit, the peer with the most queued goes.
        while self.budget.queued.get() > conn::NODE_QUEUE_LIMIT {
            let Some((&worst, c)) = self.conns.iter().max_by_key(|(_, c)| c.meter.queued.get())
            else {
                break;
            };
            let why = format!(
                "the node has more than {} bytes queued, {} of them for this peer",
                conn::NODE_QUEUE_LIMIT,
                c.meter.queued.get()
            );
            self.cut(ctx, worst, why);
        }
    }

    /// Disconnect a peer at once (it does not read): its queued frames are dropped, and the
    /// node is told the connection closed.
    fn cut(&mut self, ctx: &mut Context<Self>, conn: ConnId, why: String) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        warn!(
            "{}: closing the connection with {}: {why}",
            self.name, c.peer
        );
        self.forget(ctx, c, false);
        ctx.notify(ConnEvent::Cut {
            conn,
            reason: CloseReason::Protocol(why),
        });
    }

    /// Stop a connection's tasks; with `flush`, its queued frames may still go out for a
    /// while (then FIN), without, they are dropped.
    fn forget(&mut self, ctx: &mut Context<Self>, c: Conn, flush: bool) {
        match c.io {
            Io::Pending(_) => {
                let q = c.meter.queued.get();
                self.budget
                    .queued
                    .set(self.budget.queued.get().saturating_sub(q));
                c.meter.queued.set(0);
            }
            Io::Open(h) => {
                h.reader.abort();
                // Dropping the sender lets the writer flush and send FIN; a peer that does not
                // read gets a bounded time for it.
                drop(h.tx);
                if flush {
                    let writer = h.writer;
                    ctx.run_later(conn::FLUSH_GRACE, move |_, _| writer.abort());
                } else {
                    h.writer.abort();
                }
            }
        }
    }

    fn open(
        &mut self,
        ctx: &mut Context<Self>,
        conn: ConnId,
        stream: BoxedStream,
        peer: String,
        dialed: bool,
    ) {
        let meter = self
            .conns
            .get(&conn)
            .map(|c| c.meter.clone())
            .unwrap_or_default();
        let h = conn::spawn(
            ctx.address(),
            conn,
            stream,
            peer.clone(),
            dialed,
            &meter,
            &self.budget,
        );
        let old = self.conns.insert(
            conn,
            Conn {
                peer,
                meter,
                io: Io::Open(Handles {
                    tx: h.tx.clone(),
                    reader: h.reader,
                    writer: h.writer,
                }),
            },
        );
        if let Some(Conn {
            io: Io::Pending(q), ..
        }) = old
        {
            // Already counted when queued: the writer counts them down as they go out.
            for bytes in q {
                let _ = h.tx.send(bytes);
            }
        }
    }
}

impl<A: actors::Actor + 'static> Actor for NodeHost<A> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.run(ctx, |a, cx| a.start(cx));
    }
}

/// A timer set to fire at once (a storage's group-commit flush): a message to ourselves,
/// so it fires after what the mailbox already holds (the frames that arrived meanwhile share
/// the flush) and without waiting for the timer wheel's next millisecond tick, which would
/// add up to a millisecond to every phase of every commit.
#[derive(Message)]
#[rtype(result = "()")]
struct DueNow {
    id: TimerId,
    token: u64,
}

impl<A: actors::Actor + 'static> Handler<DueNow> for NodeHost<A> {
    type Result = ();

    fn handle(&mut self, due: DueNow, ctx: &mut Context<Self>) {
        if self.due_now.remove(&due.id) {
            self.dispatch(
                ctx,
                Event::Timer {
                    id: due.id,
                    token: due.token,
                },
            );
        }
    }
}

impl<A: actors::Actor + 'static> Handler<ConnEvent> for NodeHost<A> {
    type Result = ();

    fn handle(&mut self, ev: ConnEvent, ctx: &mut Context<Self>) {
        match ev {
            ConnEvent::Accepted { stream, peer } => {
                let conn = self.env.next_conn();
                self.conns.insert(
                    conn,
                    Conn {
                        peer: peer.clone(),
                        meter: Meter::new(),
                        io: Io::Pending(Vec::new()),
                    },
                );
                self.open(ctx, conn, stream, peer, false);
                self.dispatch(ctx, Event::Accepted { conn });
            }
            ConnEvent::ConnectDone { conn, result } => {
                if !self.conns.contains_key(&conn) {
                    return; // closed by the node meanwhile
                }
                match result {
                    Ok((stream, peer)) => {
                        self.open(ctx, conn, stream, peer, true);
                        self.dispatch(ctx, Event::Connected { conn });
                    }
                    Err(reason) => {
                        if let Some(c) = self.conns.remove(&conn) {
                            self.forget(ctx, c, false);
                        }
                        self.dispatch(ctx, Event::Closed { conn, reason });
                    }
                }
            }
            ConnEvent::Received { conn, msg } => {
                if self.conns.contains_key(&conn) {
                    self.dispatch(ctx, Event::Received { conn, msg });
                }
            }
            ConnEvent::Closed { conn, reason } => {
                if let Some(c) = self.conns.remove(&conn) {
                    self.forget(ctx, c, false);
                    self.dispatch(ctx, Event::Closed { conn, reason });
                }
            }
            ConnEvent::Cut { conn, reason } => self.dispatch(ctx, Event::Closed { conn, reason }),
            ConnEvent::Local(cmd) => self.dispatch(ctx, Event::Local(cmd)),
        }
    }
}

async fn accept_loop<A: actors::Actor + 'static>(
    listener: TcpListener,
    transport: Transport,
    host: Addr<NodeHost<A>>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (transport, host) = (transport.clone(), host.clone());
                // Securing a connection may take a handshake: not in the accept loop.
                actix_rt::spawn(async move {
                    match transport.wrap(stream, false).await {
                        Ok(stream) => host.do_send(ConnEvent::Accepted {
                            stream,
                            peer: peer.to_string(),
                        }),
                        Err(e) => warn!("connection from {peer} failed: {e}"),
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Connections waiting to be accepted: room for a burst of peers connecting at once (the
/// kernel caps it at `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 1024;

/// Bind a node's listening address (port 0: any free port); returns the address bound.
pub async fn bind(listen: &Address) -> Result<(TcpListener, Address), String> {
    let cannot = |e: std::io::Error| format!("cannot listen on {listen}: {e}");
    let mut last = None;
    let addrs = tokio::net::lookup_host((listen.host.as_str(), listen.port))
        .await
        .map_err(cannot)?;
    for a in addrs {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        let listener = socket.and_then(|s| {
            // As std's TcpListener: a restarted node can bind while old connections linger.
            s.set_reuseaddr(true)?;
            s.bind(a)?;
            s.listen(LISTEN_BACKLOG)
        });
        match listener {
            Ok(l) => {
                let port = l.local_addr().map_err(cannot)?.port();
                return Ok((l, Address::new(listen.host.clone(), port)));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(cannot(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such address")
    })))
}

/// Start a node (inside a running System) on an already bound listener.
pub fn start_node<A: actors::Actor + 'static>(
    process: &Process,
    name: String,
    listener: Option<TcpListener>,
    actor: A,
) {
    // One transport for both directions: what we accept is secured as what we dial.
    let transport = Transport::default();
    let host = NodeHost::new(name, actor, process.clone(), transport.clone()).start();
    process.node_started(host.clone().recipient());
    if let Some(l) = listener {
        actix_rt::spawn(accept_loop(l, transport, host));
    }
}

/// Bind `listen` (if any), build the node with the address actually bound (port 0 picks a
/// free one), and run it until it exits. Returns the process exit code.
pub fn run_node<A, F>(name: String, listen: Option<Address>, make: F) -> i32
where
    A: actors::Actor + 'static,
    F: FnOnce(Option<Address>) -> Result<A, String> + 'static,
{
    let system = System::new();
    let started = system.block_on(async move {
        let (listener, bound) = match &listen {
            Some(a) => {
                let (l, b) = bind(a).await?;
                (Some(l), Some(b))
            }
            None => (None, None),
        };
        if let Some(b) = &bound {
            info!("{name}: listening on {b}");
        }
        let process = Process::default();
        start_node(&process, name, listener, make(bound)?);
        process.shutdown_on_signals();
        Ok::<(), String>(())
    });
    let code = match started {
        Ok(()) => system.run_with_code().unwrap_or(1),
        Err(e) => {
            error!("{e}");
            log::say(format!("error: {e}"));
            1
        }
    };
    log::flush(Duration::from_secs(2));
    code
}
