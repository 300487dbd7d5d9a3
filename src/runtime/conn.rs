//! One TCP connection in production: the transport (plain TCP now; TLS plugs in here), then
//! a reader task that turns bytes into messages with `proto::frame::Decoder` and a writer
//! task that sends our handshake and then queued frames.
//!
//! Both tasks report to the node's host actor; neither knows any protocol beyond framing.
//! They also keep the memory a peer can make a node hold bounded (see [`Budget`]): frames
//! from a peer that has not identified are small, what such peers have buffered is capped
//! for the whole node, and the bytes queued for a peer that does not read are counted so
//! that the host can disconnect it.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;

use actix::Addr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{ConnEvent, NodeHost};
use crate::actors::{Actor, CloseReason, ConnId};
use crate::proto::frame::{self, Decoder, MAX_FRAME_SIZE, UNIDENTIFIED_MAX_FRAME_SIZE};

/// A byte stream a connection runs over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
pub type BoxedStream = Pin<Box<dyn Stream>>;

/// How connections are secured. TLS (rustls, mutual) will be a second variant: the seam is
/// here, between accepting/connecting a socket and speaking NEO on it.
#[derive(Clone, Debug, Default)]
pub enum Transport {
    #[default]
    Plain,
}

impl Transport {
    pub async fn wrap(&self, tcp: TcpStream, _outgoing: bool) -> std::io::Result<BoxedStream> {
        tcp.set_nodelay(true)?;
        match self {
            Transport::Plain => Ok(Box::pin(tcp)),
        }
    }
}

/// A burst of queued frames is gathered into one write up to this size.
const COALESCE_BYTES: usize = 256 * 1024;

/// Bytes queued for one peer past which it is disconnected (it does not read what we
/// send); checked before each frame is queued, so one frame of any size still goes out.
pub const CONN_QUEUE_LIMIT: usize = 32 * 1024 * 1024;
/// Bytes queued for all peers of a node past which the peer with the most queued is
/// disconnected.
pub const NODE_QUEUE_LIMIT: usize = 256 * 1024 * 1024;
/// Bytes all unidentified peers of a node may have buffered (received, not yet a whole
/// frame); a peer that would go past it is disconnected.
pub const UNIDENTIFIED_INPUT_LIMIT: usize = 16 * 1024 * 1024;
/// How long a closed connection's queued frames may take to go out before it is cut.
pub const FLUSH_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What a node's connections hold, in bytes, shared by the host and the connection tasks
/// (all on the node's one thread).
#[derive(Clone, Default)]
pub struct Budget {
    /// Queued for sending on every connection.
    pub queued: Rc<Cell<usize>>,
    /// Buffered by the readers of unidentified connections.
    pub unidentified: Rc<Cell<usize>>,
}

/// One connection's shared counters.
#[derive(Clone)]
pub struct Meter {
    /// Bytes queued for sending and not yet written.
    pub queued: Rc<Cell<usize>>,
    /// The largest frame the peer may send now.
    pub limit: Rc<Cell<usize>>,
}

impl Meter {
    pub fn new() -> Meter {
        Meter {
            queued: Rc::new(Cell::new(0)),
            limit: Rc::new(Cell::new(UNIDENTIFIED_MAX_FRAME_SIZE)),
        }
    }

    pub fn identified(&self) -> bool {
        self.limit.get() >= MAX_FRAME_SIZE
    }

    /// The peer identified: its frames may be large from now on.
    pub fn set_identified(&self) {
        self.limit.set(MAX_FRAME_SIZE);
    }
}

impl Default for Meter {
    fn default() -> Meter {
        Meter::new()
    }
}

/// Keeps the node-wide count right however a task ends (aborted, too).
struct Held {
    total: Rc<Cell<usize>>,
    mine: Rc<Cell<usize>>,
}

impl Held {
    fn set(&self, n: usize) {
        let t = self.total.get().saturating_sub(self.mine.get()) + n;
        self.total.set(t);
        self.mine.set(n);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// What the host keeps of a running connection.
pub struct Handles {
    /// Encoded frames to send; dropping it closes the connection once they are written.
    pub tx: mpsc::UnboundedSender<Vec<u8>>,
    pub reader: tokio::task::JoinHandle<()>,
    pub writer: tokio::task::JoinHandle<()>,
}

/// Run a connection until it ends. `dialed`: we opened it (the peer is one we chose; it
/// counts as identified once it accepts our identification).
pub fn spawn<A: Actor + 'static>(
    host: Addr<NodeHost<A>>,
    conn: ConnId,
    stream: BoxedStream,
    peer: String,
    dialed: bool,
    meter: &Meter,
    budget: &Budget,
) -> Handles {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer_host = host.clone();
    let writer_peer = peer.clone();
    // What is still queued when the writer ends (or is cut) leaves the node's count.
    let outgoing = Held {
        total: budget.queued.clone(),
        mine: meter.queued.clone(),
    };
    let writer = actix_rt::spawn(async move {
        let mut result = wr.write_all(&frame::handshake()).await;
        while result.is_ok() {
            match rx.recv().await {
                Some(mut bytes) => {
                    // Frames queued meanwhile go in the same write: one syscall (and, with
                    // TCP_NODELAY, as few segments) per burst rather than per frame.
                    while bytes.len() < COALESCE_BYTES {
                        match rx.try_recv() {
                            Ok(more) => bytes.extend_from_slice(&more),
                            Err(_) => break,
                        }
                    }
                    result = wr.write_all(&bytes).await;
                    outgoing.set(outgoing.mine.get().saturating_sub(bytes.len()));
                }
                None => break,
            }
        }
        drop(outgoing);
        match result {
            Ok(()) => {
                let _ = wr.shutdown().await;
            }
            Err(e) => {
                debug!("write to {writer_peer} failed: {e}");
                writer_host.do_send(ConnEvent::Closed {
                    conn,
                    reason: CloseReason::Reset,
                });
            }
        }
    });
    let limit = meter.limit.clone();
    let incoming = Held {
        total: budget.unidentified.clone(),
        mine: Rc::new(Cell::new(0)),
    };
    let reader = actix_rt::spawn(async move {
        let mut decoder = Decoder::with_limit(limit.get());
        // Small until the peer identifies: a burst of idle connections costs little.
        let mut buf = vec![0u8; 4 * 1024];
        let reason = 'conn: loop {
            if buf.len() < 64 * 1024 && limit.get() >= MAX_FRAME_SIZE {
                buf.resize(64 * 1024, 0);
            }
            let n = match rd.read(&mut buf).await {
                Ok(0) => break CloseReason::PeerClosed,
                Ok(n) => n,
                Err(e) => {
                    debug!("read from {peer} failed: {e}");
                    break CloseReason::Reset;
                }
            };
            decoder.feed(&buf[..n]);
            loop {
                decoder.set_limit(limit.get());
                if limit.get() < MAX_FRAME_SIZE {
                    incoming.set(decoder.buffered());
                    if incoming.total.get() > UNIDENTIFIED_INPUT_LIMIT {
                        let why = format!(
                            "unidentified peers hold more than {UNIDENTIFIED_INPUT_LIMIT} bytes of input"
                        );
                        warn!("closing the connection with {peer}: {why}");
                        break 'conn CloseReason::Protocol(why);
                    }
                } else {
                    incoming.set(0);
                }
                match decoder.next_message() {
                    Ok(Some(msg)) => {
                        if dialed && frame::identifies(&msg.packet) {
                            limit.set(MAX_FRAME_SIZE);
                        }
                        // Waiting for the host to take each message is our back-pressure.
                        if host.send(ConnEvent::Received { conn, msg }).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let before = if limit.get() < MAX_FRAME_SIZE {
                            " (before identifying)"
                        } else {
                            ""
                        };
                        warn!("closing the connection with {peer}: {e}{before}");
                        break 'conn CloseReason::Protocol(e.to_string());
                    }
                }
            }
        };
        drop(incoming);
        host.do_send(ConnEvent::Closed { conn, reason });
    });
    Handles { tx, reader, writer }
}
