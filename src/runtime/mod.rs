//! Production wiring: each node is an actix actor (`NodeHost`) that owns a sans-IO role
//! actor and carries out its effects with real sockets, timers and the system clock. No
//! protocol logic lives here: it moves bytes, fires timers and reads the clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod client;
pub mod conn;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use tokio::net::{TcpListener, TcpStream};

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::actors::{
    self, CloseReason, Command, ConnId, Ctx, Effect, Event, NodeEnv, TimerId, CONNECT_TIMEOUT,
};
use crate::proto::{frame, Address, Message, WallTime};
use crate::rng::{ChaCha8Rng, SeedableRng};
use conn::{BoxedStream, Transport};

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
    Local(Command),
}

enum ConnState {
    /// Connecting: frames wait here.
    Pending(Vec<Vec<u8>>),
    Open {
        tx: mpsc::UnboundedSender<Vec<u8>>,
        reader: tokio::task::JoinHandle<()>,
    },
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

    /// Stop every node cleanly on SIGINT or SIGTERM.
    pub fn shutdown_on_signals(&self) {
        let process = self.clone();
        actix_rt::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            info!("signal received: stopping");
            process.shutdown();
        });
    }
}

/// The actix actor hosting one node.
pub struct NodeHost<A: actors::Actor> {
    name: String,
    /// Boxed: actix needs the host to be `Unpin`.
    actor: Box<A>,
    env: NodeEnv,
    started: Instant,
    transport: Transport,
    conns: BTreeMap<ConnId, ConnState>,
    timers: BTreeMap<TimerId, SpawnHandle>,
    /// Set when the node asked to exit.
    exited: bool,
    process: Process,
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
            exited: false,
            process,
        }
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
                self.conns.insert(conn, ConnState::Pending(Vec::new()));
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
            Effect::Send { conn, msg } => {
                let mut bytes = Vec::new();
                if let Err(e) = frame::encode(&msg, &mut bytes) {
                    // Our own message cannot be framed (too large): a bug of ours, not the peer's.
                    error!("cannot send {} on {conn:?}: {e}", msg.packet.name());
                    return;
                }
                match self.conns.get_mut(&conn) {
                    Some(ConnState::Pending(q)) => q.push(bytes),
                    Some(ConnState::Open { tx, .. }) => {
                        let _ = tx.send(bytes);
                    }
                    None => {}
                }
            }
            Effect::Close { conn } => {
                if let Some(ConnState::Open { reader, .. }) = self.conns.remove(&conn) {
                    // Dropping the sender lets the writer flush and send FIN.
                    reader.abort();
                }
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
            }
            Effect::Observe(_) => {}
            Effect::Exit { reason, success } => {
                info!("{}: exiting: {reason}", self.name);
                self.exited = true;
                let code = if success { 0 } else { 1 };
                // Let writers flush what was queued (a last answer, a close) before stopping.
                for (_, c) in std::mem::take(&mut self.conns) {
                    if let ConnState::Open { reader, .. } = c {
                        reader.abort();
                    }
                }
                ctx.run_later(Duration::from_millis(200), move |host, ctx| {
                    ctx.stop();
                    host.process.node_exited(code);
                });
            }
        }
    }

    fn open(&mut self, ctx: &mut Context<Self>, conn: ConnId, stream: BoxedStream, peer: String) {
        let (tx, reader) = conn::spawn(ctx.address(), conn, stream, peer);
        let queued = match self.conns.insert(
            conn,
            ConnState::Open {
                tx: tx.clone(),
                reader,
            },
        ) {
            Some(ConnState::Pending(q)) => q,
            _ => Vec::new(),
        };
        for bytes in queued {
            let _ = tx.send(bytes);
        }
    }
}

impl<A: actors::Actor + 'static> Actor for NodeHost<A> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.run(ctx, |a, cx| a.start(cx));
    }
}

impl<A: actors::Actor + 'static> Handler<ConnEvent> for NodeHost<A> {
    type Result = ();

    fn handle(&mut self, ev: ConnEvent, ctx: &mut Context<Self>) {
        match ev {
            ConnEvent::Accepted { stream, peer } => {
                let conn = self.env.next_conn();
                self.open(ctx, conn, stream, peer);
                self.dispatch(ctx, Event::Accepted { conn });
            }
            ConnEvent::ConnectDone { conn, result } => {
                if !self.conns.contains_key(&conn) {
                    return; // closed by the node meanwhile
                }
                match result {
                    Ok((stream, peer)) => {
                        self.open(ctx, conn, stream, peer);
                        self.dispatch(ctx, Event::Connected { conn });
                    }
                    Err(reason) => {
                        self.conns.remove(&conn);
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
                if self.conns.remove(&conn).is_some() {
                    self.dispatch(ctx, Event::Closed { conn, reason });
                }
            }
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

/// Bind a node's listening address (port 0: any free port); returns the address bound.
pub async fn bind(listen: &Address) -> Result<(TcpListener, Address), String> {
    let l = TcpListener::bind((listen.host.as_str(), listen.port))
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();
    Ok((l, Address::new(listen.host.clone(), port)))
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
    if let Err(e) = started {
        error!("{e}");
        eprintln!("error: {e}");
        return 1;
    }
    system.run_with_code().unwrap_or(1)
}

/// Logs for a node program: one line per event, to standard error or a file. `NEO_LOG`
/// (or `RUST_LOG`) sets the filter; the default is `info`.
pub fn init_logging(logfile: Option<&Path>) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("NEO_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match logfile {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        None => {
            use std::io::IsTerminal;
            builder
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .init();
        }
    }
    Ok(())
}
