//! Bad input on the wire against a real `neomaster`: a foreign handshake, another protocol
//! version, an oversized or undecodable frame, a wrong cluster name. Each closes that
//! connection with a clear log line; the node keeps serving.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{free_port, wait_for, Node, TempDir};
use neo::proto::frame::{self, Decoder, HANDSHAKE_LEN, MAX_FRAME_SIZE};
use neo::proto::{ErrorCode, IdentificationExtra, Message, NodeType, Packet};

fn master(dir: &TempDir) -> (Node, u16) {
    let port = free_port();
    let node = Node::spawn(
        env!("CARGO_BIN_EXE_neomaster"),
        dir,
        "master",
        &[
            "--cluster",
            "wire-test",
            "--bind",
            &format!("127.0.0.1:{port}"),
        ],
    );
    wait_for(Duration::from_secs(10), || {
        node.log().contains("role: primary").then_some(())
    })
    .unwrap_or_else(|| panic!("master did not start:\n{}", node.log()));
    (node, port)
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Read until the peer closes; returns what it sent.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut all = vec![];
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("the node did not close the connection: {e}"),
        }
    }
}

fn expect_log(node: &Node, what: &str) {
    wait_for(Duration::from_secs(5), || {
        node.log().contains(what).then_some(())
    })
    .unwrap_or_else(|| panic!("no {what:?} in the log:\n{}", node.log()));
}

#[test]
fn bad_input_closes_the_connection_with_a_clear_error() {
    let dir = TempDir::new("wire");
    let (node, port) = master(&dir);

    // Another version of our protocol: the node sends its own handshake, then closes.
    let mut s = connect(port);
    let mut h = frame::handshake();
    h[HANDSHAKE_LEN - 1] ^= 0x7f;
    s.write_all(&h).unwrap();
    let got = read_to_close(&mut s);
    assert_eq!(
        &got[..],
        &frame::handshake()[..],
        "expected the node's handshake and a close"
    );
    expect_log(&node, "protocol version mismatch");

    // Not NEO at all (an HTTP request).
    let mut s = connect(port);
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    read_to_close(&mut s);
    expect_log(&node, "not a NEO node");

    // A frame larger than the maximum: refused from its length alone.
    let mut s = connect(port);
    s.write_all(&frame::handshake()).unwrap();
    s.write_all(&((MAX_FRAME_SIZE as u32) + 1).to_be_bytes())
        .unwrap();
    read_to_close(&mut s);
    expect_log(&node, "exceeds the maximum");

    // A frame that does not decode.
    let mut s = connect(port);
    s.write_all(&frame::handshake()).unwrap();
    s.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).unwrap();
    read_to_close(&mut s);
    expect_log(&node, "undecodable frame");

    // A wrong cluster name: an error answer, then the close.
    let mut s = connect(port);
    let mut out = frame::handshake().to_vec();
    let req = Message {
        id: 0,
        packet: Packet::RequestIdentification {
            node_type: NodeType::Master,
            nid: None,
            address: Some(neo::proto::Address::new("127.0.0.1", 1)),
            cluster_name: "someone-else".into(),
            id_timestamp: None,
            extra: IdentificationExtra::default(),
        },
    };
    frame::encode(&req, &mut out).unwrap();
    s.write_all(&out).unwrap();
    let mut d = Decoder::new();
    d.feed(&read_to_close(&mut s));
    match d.next_message().unwrap() {
        Some(Message {
            id: 0,
            packet:
                Packet::Error {
                    code: ErrorCode::ProtocolError,
                    message,
                },
        }) => {
            assert!(
                message.contains("someone-else") && message.contains("wire-test"),
                "{message}"
            )
        }
        other => panic!("expected a PROTOCOL_ERROR answer, got {other:?}"),
    }
    expect_log(&node, "invalid cluster name");

    // Through all of it the node kept running.
    assert!(
        node.try_wait().is_none(),
        "the master died:\n{}",
        node.log()
    );
}
