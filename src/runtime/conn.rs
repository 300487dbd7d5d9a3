//! One TCP connection in production: the transport (plain TCP now; TLS plugs in here), then
//! a reader task that turns bytes into messages with `proto::frame::Decoder` and a writer
//! task that sends our handshake and then queued frames.
//!
//! Both tasks report to the node's host actor; neither knows any protocol beyond framing.

use std::pin::Pin;

use actix::Addr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{ConnEvent, NodeHost};
use crate::actors::{Actor, CloseReason, ConnId};
use crate::proto::frame::{self, Decoder};

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

/// Run a connection until it ends: returns the sender the host queues encoded frames on.
/// Dropping the sender closes the connection after the queued frames are written.
pub fn spawn<A: Actor + 'static>(
    host: Addr<NodeHost<A>>,
    conn: ConnId,
    stream: BoxedStream,
    peer: String,
) -> (mpsc::UnboundedSender<Vec<u8>>, tokio::task::JoinHandle<()>) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer_host = host.clone();
    let writer_peer = peer.clone();
    actix_rt::spawn(async move {
        let mut result = wr.write_all(&frame::handshake()).await;
        while result.is_ok() {
            match rx.recv().await {
                Some(bytes) => result = wr.write_all(&bytes).await,
                None => break,
            }
        }
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
    let reader = actix_rt::spawn(async move {
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        let reason = loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) => break CloseReason::PeerClosed,
                Ok(n) => n,
                Err(e) => {
                    debug!("read from {peer} failed: {e}");
                    break CloseReason::Reset;
                }
            };
            decoder.feed(&buf[..n]);
            let mut failed = None;
            loop {
                match decoder.next_message() {
                    Ok(Some(msg)) => {
                        // Waiting for the host to take each message is our back-pressure.
                        if host.send(ConnEvent::Received { conn, msg }).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!("closing the connection with {peer}: {e}");
                        failed = Some(CloseReason::Protocol(e.to_string()));
                        break;
                    }
                }
            }
            if let Some(reason) = failed {
                break reason;
            }
        };
        host.do_send(ConnEvent::Closed { conn, reason });
    });
    (tx, reader)
}
