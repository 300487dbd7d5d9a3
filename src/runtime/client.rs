//! A blocking request-answer client for short-lived tools (neoctl, neosimple's progress,
//! tests): connect, send requests, collect their answers by message id. No identification:
//! the admin node serves requests directly.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::proto::frame::{self, Decoder};
use crate::proto::{Address, Kind, Message, Packet};

/// Send `requests` to `address` and return their answers, in order.
pub fn request(
    address: &Address,
    requests: &[Packet],
    timeout: Duration,
) -> Result<Vec<Packet>, String> {
    let deadline = Instant::now() + timeout;
    let addrs = std::net::ToSocketAddrs::to_socket_addrs(&(address.host.as_str(), address.port))
        .map_err(|e| format!("cannot resolve {address}: {e}"))?;
    let mut stream = None;
    let mut last_error = String::from("no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    let mut stream = stream.ok_or_else(|| format!("cannot connect to {address}: {last_error}"))?;
    let mut out = frame::handshake().to_vec();
    for (id, packet) in requests.iter().enumerate() {
        frame::encode(
            &Message {
                id: id as u32,
                packet: packet.clone(),
            },
            &mut out,
        )
        .map_err(|e| e.to_string())?;
    }
    stream
        .write_all(&out)
        .map_err(|e| format!("cannot send to {address}: {e}"))?;
    let mut answers: Vec<Option<Packet>> = vec![None; requests.len()];
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    while answers.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer from {address} within {timeout:?}"));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        let n = match stream.read(&mut buf) {
            Ok(0) => return Err(format!("{address} closed the connection")),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(format!("cannot read from {address}: {e}")),
        };
        decoder.feed(&buf[..n]);
        while let Some(msg) = decoder
            .next_message()
            .map_err(|e| format!("{address}: {e}"))?
        {
            match msg.packet {
                Packet::Ping => {
                    let mut pong = Vec::new();
                    let _ = frame::encode(
                        &Message {
                            id: msg.id,
                            packet: Packet::Pong,
                        },
                        &mut pong,
                    );
                    let _ = stream.write_all(&pong);
                }
                // Only an answer answers: a request or notification from the peer may carry
                // any id of its own counter.
                p if p.kind() == Kind::Answer
                    && (msg.id as usize) < answers.len()
                    && answers[msg.id as usize].is_none() =>
                {
                    answers[msg.id as usize] = Some(p);
                }
                _ => {}
            }
        }
    }
    Ok(answers
        .into_iter()
        .map(|a| a.expect("all answered"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ClusterState;
    use std::net::TcpListener;

    /// A peer that pings and notifies with the request's id before answering: the client
    /// answers the ping and takes only the answer as the answer.
    #[test]
    fn only_an_answer_answers_and_pings_get_pongs() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut out = frame::handshake().to_vec();
            for packet in [
                Packet::Ping,
                Packet::NotifyClusterInformation {
                    state: ClusterState::Verifying,
                },
                Packet::AnswerClusterState {
                    state: Some(ClusterState::Running),
                },
            ] {
                frame::encode(&Message { id: 0, packet }, &mut out).unwrap();
            }
            s.write_all(&out).unwrap();
            // Read what the client sent until its Pong arrives.
            let mut decoder = Decoder::new();
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.contains(&Packet::Pong) {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the client closed before its Pong; got {got:?}");
                decoder.feed(&buf[..n]);
                while let Some(m) = decoder.next_message().unwrap() {
                    got.push(m.packet);
                }
            }
            got
        });
        let answers = request(
            &Address::new("127.0.0.1", port),
            &[Packet::AskClusterState],
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(
            answers,
            vec![Packet::AnswerClusterState {
                state: Some(ClusterState::Running)
            }]
        );
        assert_eq!(
            peer.join().unwrap(),
            vec![Packet::AskClusterState, Packet::Pong]
        );
    }
}
