//! The byte stream of a connection: a fixed handshake (magic and protocol version) that both
//! sides send first, then frames of `u32 big-endian length | postcard(Message)`.
//!
//! The decoder is sans-IO: the runtime feeds it bytes and takes messages out. Malformed input
//! is an error for that connection (the caller closes it), never a panic, and a length above
//! the decoder's limit is refused before anything is allocated for it. The limit is
//! `UNIDENTIFIED_MAX_FRAME_SIZE` until the peer has identified (see [`identifies`]) and
//! `MAX_FRAME_SIZE` after, so that a peer nobody accepted cannot make a node buffer 64 MiB.

use super::packet::{Message, Packet};

/// Bytes that open every connection; distinct from a TLS record (0x16) and from the Python
/// NEO's msgpack handshake (0x92), so either mistake is recognised and named.
pub const MAGIC: [u8; 6] = *b"NEOrs\0";
/// Bumped whenever the packet list or a packet's fields change.
pub const PROTOCOL_VERSION: u16 = 4;
pub const HANDSHAKE_LEN: usize = MAGIC.len() + 2;
/// The largest frame: a 64 MiB object plus room for its packet's other fields.
pub const MAX_FRAME_SIZE: usize = 64 * 1024 * 1024 + 64 * 1024;
/// The largest frame from a peer that has not identified yet: identification, errors,
/// neoctl's requests and pings are all far smaller.
pub const UNIDENTIFIED_MAX_FRAME_SIZE: usize = 64 * 1024;

/// Whether `packet` completes an identification on its connection: the node that sends
/// it has accepted the peer, and the node that receives it (on a connection it opened) has
/// been accepted by the peer it chose. Past it, the peer's frames may be `MAX_FRAME_SIZE`.
pub fn identifies(packet: &Packet) -> bool {
    matches!(packet, Packet::AcceptIdentification { .. })
}

/// Why a connection's byte stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("peer is not a NEO node of this implementation (first bytes {0:02x?}){hint}", hint = not_neo_hint(.0))]
    NotNeo(Vec<u8>),
    #[error(
        "protocol version mismatch: peer speaks version {theirs}, this node speaks version {ours}"
    )]
    VersionMismatch { ours: u16, theirs: u16 },
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("undecodable frame of {size} bytes: {reason}")]
    Malformed { size: usize, reason: String },
}

fn not_neo_hint(first: &[u8]) -> &'static str {
    match first.first() {
        Some(0x16) => " (this looks like TLS: the peer uses TLS and this node does not)",
        Some(0x92) => " (this looks like the Python NEO's protocol)",
        _ => "",
    }
}

/// The handshake this node sends.
pub fn handshake() -> [u8; HANDSHAKE_LEN] {
    let mut h = [0u8; HANDSHAKE_LEN];
    h[..MAGIC.len()].copy_from_slice(&MAGIC);
    h[MAGIC.len()..].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    h
}

/// Check the peer's handshake.
pub fn check_handshake(h: &[u8]) -> Result<(), FrameError> {
    if h.len() < HANDSHAKE_LEN || h[..MAGIC.len()] != MAGIC {
        return Err(FrameError::NotNeo(h[..h.len().min(HANDSHAKE_LEN)].to_vec()));
    }
    let theirs = u16::from_be_bytes([h[MAGIC.len()], h[MAGIC.len() + 1]]);
    if theirs != PROTOCOL_VERSION {
        return Err(FrameError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        });
    }
    Ok(())
}

/// Append one frame holding `msg` to `out`.
pub fn encode(msg: &Message, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let body =
        postcard::to_extend(msg, std::mem::take(out)).map_err(|e| FrameError::Malformed {
            size: 0,
            reason: e.to_string(),
        })?;
    *out = body;
    let size = out.len() - start - 4;
    if size > MAX_FRAME_SIZE {
        out.truncate(start);
        return Err(FrameError::TooLarge {
            size,
            max: MAX_FRAME_SIZE,
        });
    }
    out[start..start + 4].copy_from_slice(&(size as u32).to_be_bytes());
    Ok(())
}

/// Turns a connection's incoming bytes into messages: first the handshake, then frames.
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed; compacted lazily so a run of small frames costs
    /// one copy, not one per frame.
    start: usize,
    handshake_done: bool,
    failed: Option<FrameError>,
    /// The largest frame accepted now.
    limit: usize,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder::with_limit(MAX_FRAME_SIZE)
    }
}

/// Past a large frame, a buffer this big is given back rather than kept for the
/// connection's life.
const KEEP_CAPACITY: usize = 1024 * 1024;

impl Decoder {
    /// A decoder that accepts frames up to `MAX_FRAME_SIZE`.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// A decoder that accepts frames up to `limit` bytes (at most `MAX_FRAME_SIZE`).
    pub fn with_limit(limit: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            start: 0,
            handshake_done: false,
            failed: None,
            limit: limit.min(MAX_FRAME_SIZE),
        }
    }

    /// Change the largest frame accepted from now on (raised once the peer identified).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.min(MAX_FRAME_SIZE);
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes received and not yet decoded (what this connection holds in memory).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
            if self.buf.capacity() > KEEP_CAPACITY && self.buf.len() < KEEP_CAPACITY / 2 {
                self.buf.shrink_to(KEEP_CAPACITY / 2);
            }
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed. After an error the
    /// decoder keeps returning it: the connection is finished.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.decode_one();
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn decode_one(&mut self) -> Result<Option<Message>, FrameError> {
        let avail = &self.buf[self.start..];
        if !self.handshake_done {
            // Judge the magic as soon as its bytes differ, so that a peer speaking another
            // protocol is named even if it sends fewer bytes than our handshake.
            let n = avail.len().min(MAGIC.len());
            if avail[..n] != MAGIC[..n] {
                return Err(FrameError::NotNeo(avail[..n].to_vec()));
            }
            if avail.len() < HANDSHAKE_LEN {
                return Ok(None);
            }
            check_handshake(&avail[..HANDSHAKE_LEN])?;
            self.start += HANDSHAKE_LEN;
            self.handshake_done = true;
            return self.decode_one();
        }
        if avail.len() < 4 {
            return Ok(None);
        }
        let size = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if size > self.limit {
            return Err(FrameError::TooLarge {
                size,
                max: self.limit,
            });
        }
        if avail.len() < 4 + size {
            // Grow once to the frame's size rather than by doubling past it.
            let missing = 4 + size - avail.len();
            self.buf.reserve_exact(missing);
            return Ok(None);
        }
        let body = &avail[4..4 + size];
        let msg = match postcard::take_from_bytes::<Message>(body) {
            Ok((m, [])) => m,
            // postcard stops after one value; a frame must be exactly one message.
            Ok((_, rest)) => {
                return Err(FrameError::Malformed {
                    size,
                    reason: format!("{} trailing bytes", rest.len()),
                })
            }
            Err(e) => {
                return Err(FrameError::Malformed {
                    size,
                    reason: e.to_string(),
                })
            }
        };
        self.start += 4 + size;
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ErrorCode, Nid, NodeType, Packet};
    use proptest::prelude::*;

    fn stream(msgs: &[Message]) -> Vec<u8> {
        let mut out = handshake().to_vec();
        for m in msgs {
            encode(m, &mut out).unwrap();
        }
        out
    }

    proptest! {
        #[test]
        fn every_packet_round_trips(msg: Message) {
            let bytes = stream(std::slice::from_ref(&msg));
            let mut d = Decoder::new();
            d.feed(&bytes);
            prop_assert_eq!(d.next_message().unwrap(), Some(msg));
            prop_assert_eq!(d.next_message().unwrap(), None);
        }

    }

    proptest! {
        // Vectors of arbitrary messages are costly to generate: fewer cases.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn messages_survive_any_chunking(msgs: Vec<Message>, cuts in proptest::collection::vec(1usize..64, 1..20)) {
            let bytes = stream(&msgs);
            let mut d = Decoder::new();
            let mut got = vec![];
            let mut pos = 0;
            for c in cuts.iter().cycle() {
                if pos >= bytes.len() { break; }
                let end = (pos + c).min(bytes.len());
                d.feed(&bytes[pos..end]);
                pos = end;
                while let Some(m) = d.next_message().unwrap() { got.push(m); }
            }
            prop_assert_eq!(got, msgs);
        }
    }

    proptest! {

        #[test]
        fn garbage_never_panics(bytes: Vec<u8>, with_handshake: bool) {
            let mut d = Decoder::new();
            if with_handshake { d.feed(&handshake()); }
            d.feed(&bytes);
            for _ in 0..bytes.len() + 2 {
                match d.next_message() {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }

        #[test]
        fn garbage_frames_never_panic(body: Vec<u8>) {
            let mut bytes = handshake().to_vec();
            bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&body);
            let mut d = Decoder::new();
            d.feed(&bytes);
            let _ = d.next_message();
        }
    }

    #[test]
    fn handshake_mismatches_are_named() {
        let mut d = Decoder::new();
        let mut h = handshake();
        h[HANDSHAKE_LEN - 1] ^= 0xff;
        d.feed(&h);
        let e = d.next_message().unwrap_err();
        assert!(
            matches!(
                e,
                FrameError::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("protocol version mismatch"));

        let mut d = Decoder::new();
        d.feed(&[0x16, 0x03, 0x01]);
        let e = d.next_message().unwrap_err();
        assert!(e.to_string().contains("looks like TLS"), "{e}");

        let mut d = Decoder::new();
        d.feed(&[0x92, 0xa3, b'N', b'E', b'O', 5]);
        assert!(d
            .next_message()
            .unwrap_err()
            .to_string()
            .contains("Python NEO"));
        // The error sticks.
        d.feed(&handshake());
        assert!(d.next_message().is_err());
    }

    #[test]
    fn oversized_frames_are_refused_before_reading_them() {
        let mut d = Decoder::new();
        d.feed(&handshake());
        d.feed(&((MAX_FRAME_SIZE as u32) + 1).to_be_bytes());
        assert_eq!(
            d.next_message().unwrap_err(),
            FrameError::TooLarge {
                size: MAX_FRAME_SIZE + 1,
                max: MAX_FRAME_SIZE
            }
        );
        let big = Message {
            id: 1,
            packet: Packet::error(ErrorCode::Ack, "x".repeat(MAX_FRAME_SIZE)),
        };
        let mut out = vec![];
        assert!(matches!(
            encode(&big, &mut out),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn the_limit_is_small_until_identification() {
        let accept = Message {
            id: 0,
            packet: Packet::AcceptIdentification {
                node_type: NodeType::Master,
                nid: None,
                your_nid: Some(Nid::new(NodeType::Storage, 1)),
            },
        };
        assert!(identifies(&accept.packet));
        assert!(!identifies(&Packet::Ping));
        let big = Message {
            id: 1,
            packet: Packet::error(ErrorCode::Ack, "x".repeat(UNIDENTIFIED_MAX_FRAME_SIZE)),
        };
        let bytes = stream(std::slice::from_ref(&big));
        let mut d = Decoder::with_limit(UNIDENTIFIED_MAX_FRAME_SIZE);
        d.feed(&bytes);
        assert!(matches!(
            d.next_message(),
            Err(FrameError::TooLarge {
                max: UNIDENTIFIED_MAX_FRAME_SIZE,
                ..
            })
        ));
        let mut d = Decoder::with_limit(UNIDENTIFIED_MAX_FRAME_SIZE);
        d.feed(&stream(std::slice::from_ref(&accept)));
        assert_eq!(d.next_message().unwrap(), Some(accept));
        d.set_limit(MAX_FRAME_SIZE);
        d.feed(&bytes[HANDSHAKE_LEN..]);
        assert_eq!(d.next_message().unwrap(), Some(big));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn trailing_bytes_in_a_frame_are_malformed() {
        let msg = Message {
            id: 7,
            packet: Packet::AnswerPrimary {
                primary_nid: Some(Nid::new(NodeType::Master, 1)),
            },
        };
        let mut body = postcard::to_stdvec(&msg).unwrap();
        body.push(0);
        let mut bytes = handshake().to_vec();
        bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&body);
        let mut d = Decoder::new();
        d.feed(&bytes);
        assert!(matches!(
            d.next_message(),
            Err(FrameError::Malformed { .. })
        ));
    }
}
