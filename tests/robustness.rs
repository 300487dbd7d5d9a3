//! Real node processes against a hostile environment: logging never stops a node (standard
//! error on /dev/full, or a pipe closed while it runs: it keeps serving and stops on
//! SIGTERM), and the memory a peer can make a node hold is bounded (a frame header
//! announcing 63 MiB before identifying is refused at once; a client flooding the admin
//! with requests without reading the answers is disconnected before the admin grows).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, rss_kib, wait_for, Node, TempDir};
use neo::proto::frame::{self, Decoder};
use neo::proto::{Address, ErrorCode, IdentificationExtra, Message, NodeType, Packet};
use neo::runtime::client;

/// A node process started here; killed if the test ends first.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
    }

    /// Its exit status within `within`, if it exited.
    fn exited_within(&mut self, within: Duration) -> Option<ExitStatus> {
        wait_for(within, || self.0.try_wait().ok().flatten())
    }
}

fn master_args(port: u16) -> Vec<String> {
    [
        "--cluster",
        "robust",
        "--bind",
        &format!("127.0.0.1:{port}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Ask the master at `port` to identify a peer of another cluster: it answers with a
/// protocol error and closes (and logs a line). Ok if it answered so.
fn master_answers(port: u16) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut out = frame::handshake().to_vec();
    let req = Message {
        id: 0,
        packet: Packet::RequestIdentification {
            node_type: NodeType::Master,
            nid: None,
            address: Some(Address::new("127.0.0.1", 1)),
            cluster_name: "someone-else".into(),
            id_timestamp: None,
            extra: IdentificationExtra::default(),
        },
    };
    frame::encode(&req, &mut out).map_err(|e| e.to_string())?;
    s.write_all(&out).map_err(|e| e.to_string())?;
    let mut all = vec![];
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(format!("no answer: {e}")),
        }
    }
    let mut d = Decoder::new();
    d.feed(&all);
    match d.next_message() {
        Ok(Some(Message {
            packet:
                Packet::Error {
                    code: ErrorCode::ProtocolError,
                    ..
                },
            ..
        })) => Ok(()),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

fn admin_answers(port: u16) -> Result<(), String> {
    client::request(
        &Address::new("127.0.0.1", port),
        &[Packet::AskClusterState],
        Duration::from_secs(5),
    )
    .map(|_| ())
}

#[test]
fn a_master_whose_stderr_is_dev_full_serves_and_stops_on_sigterm() {
    let port = free_port();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let mut node = Proc(
        Command::new(env!("CARGO_BIN_EXE_neomaster"))
            .args(master_args(port))
            .env("NEO_LOG", "debug")
            .stdout(Stdio::from(full.try_clone().unwrap()))
            .stderr(Stdio::from(full))
            .spawn()
            .unwrap(),
    );
    let served = wait_for(Duration::from_secs(10), || {
        if let Ok(Some(status)) = node.0.try_wait() {
            return Some(Err(format!("it exited: {status}")));
        }
        master_answers(port).ok().map(Ok)
    });
    match served {
        Some(Ok(())) => {}
        Some(Err(e)) => panic!("the master does not serve with its log on /dev/full: {e}"),
        None => panic!("the master never answered with its log on /dev/full"),
    }
    for _ in 0..20 {
        master_answers(port).expect("it keeps serving");
    }
    node.terminate();
    let status = node
        .exited_within(Duration::from_secs(5))
        .expect("the master stops on SIGTERM");
    assert!(status.success(), "{status}");
}

/// Start `program` with its standard error on a pipe, read its log until `ready` shows,
/// then close the pipe; the node must go on serving (`serves`) while it logs, and stop on
/// SIGTERM within a few seconds.
fn survives_a_closed_log_pipe(
    program: &str,
    args: &[String],
    ready: &str,
    serves: impl Fn() -> Result<(), String>,
) {
    let mut node = Proc(
        Command::new(program)
            .args(args)
            .env("NEO_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = node.0.stderr.take().unwrap();
    let wanted = ready.to_string();
    let reader = std::thread::spawn(move || {
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = vec![];
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match lines.next() {
                Some(Ok(l)) => {
                    let done = l.contains(&wanted);
                    seen.push(l);
                    if done {
                        return Ok(());
                    }
                }
                _ => break,
            }
        }
        Err(seen)
        // The pipe's read end closes here.
    });
    if let Err(seen) = reader.join().unwrap() {
        panic!("{program} never logged {:?}: {seen:?}", ready);
    }
    // Each request makes it log; the writes now fail with EPIPE.
    for i in 0..30 {
        if let Err(e) = serves() {
            panic!(
                "{program} stopped serving after its log pipe closed (request {i}): {e}; exited: {:?}",
                node.0.try_wait()
            );
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    serves().expect("it still serves");
    node.terminate();
    let status = node
        .exited_within(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("{program} ignores SIGTERM once its log pipe is closed"));
    assert!(status.success(), "{status}");
}

#[test]
fn a_master_whose_log_pipe_closes_keeps_serving_and_stops_on_sigterm() {
    let port = free_port();
    survives_a_closed_log_pipe(
        env!("CARGO_BIN_EXE_neomaster"),
        &master_args(port),
        "role: primary",
        || master_answers(port),
    );
}

#[test]
fn an_admin_whose_log_pipe_closes_keeps_serving_and_stops_on_sigterm() {
    // No master: the admin logs its failed connections and answers neoctl all the same.
    let port = free_port();
    let args: Vec<String> = [
        "--cluster",
        "robust",
        "--masters",
        &format!("127.0.0.1:{}", free_port()),
        "--bind",
        &format!("127.0.0.1:{port}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    survives_a_closed_log_pipe(env!("CARGO_BIN_EXE_neoadmin"), &args, "listening", || {
        admin_answers(port)
    });
}

/// Read until the peer closes (or `within` passes: Err).
fn closed_within(s: &mut TcpStream, within: Duration) -> Result<usize, String> {
    s.set_read_timeout(Some(within)).unwrap();
    let mut total = 0;
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(total),
            Err(e) => return Err(format!("still open after {within:?}: {e}")),
        }
    }
}

#[test]
fn a_peer_announcing_a_huge_frame_before_identifying_is_disconnected() {
    let dir = TempDir::new("bigframe");
    let port = free_port();
    let args = master_args(port);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Node::spawn(env!("CARGO_BIN_EXE_neomaster"), &dir, "master", &args);
    wait_for(Duration::from_secs(10), || {
        node.log().contains("role: primary").then_some(())
    })
    .unwrap_or_else(|| panic!("master did not start:\n{}", node.log()));

    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&frame::handshake()).unwrap();
    s.write_all(&(63u32 << 20).to_be_bytes()).unwrap();
    // Some of the announced body: the node must not wait for (or keep) the rest.
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..16 {
        if s.write_all(&chunk).is_err() {
            break; // already closed
        }
    }
    if let Err(e) = closed_within(&mut s, Duration::from_secs(5)) {
        panic!("an unidentified peer's 63 MiB frame was not refused: {e}");
    }
    wait_for(Duration::from_secs(5), || {
        node.log()
            .contains(&format!(
                "exceeds the maximum of {} bytes",
                frame::UNIDENTIFIED_MAX_FRAME_SIZE
            ))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no log line for the refused frame:\n{}", node.log()));
    master_answers(port).expect("the master still serves");
}

#[test]
fn a_client_flooding_the_admin_without_reading_is_disconnected() {
    const RSS_BOUND_KIB: u64 = 200 * 1024;
    let dir = TempDir::new("flood");
    let master = format!("127.0.0.1:{}", free_port());
    let admin_port = free_port();
    let admin = format!("127.0.0.1:{admin_port}");
    let db = dir.path().join("s1.sqlite").display().to_string();
    // Many partitions: each `print pt` answer is tens of KiB for a request of a few bytes.
    let nodes = vec![
        Node::spawn(
            env!("CARGO_BIN_EXE_neomaster"),
            &dir,
            "master",
            &[
                "--cluster",
                "flood",
                "--bind",
                &master,
                "--autostart",
                "1",
                "--partitions",
                "5000",
            ],
        ),
        Node::spawn(
            env!("CARGO_BIN_EXE_neostorage"),
            &dir,
            "storage",
            &[
                "--cluster",
                "flood",
                "--masters",
                &master,
                "--bind",
                "127.0.0.1:0",
                "--database",
                &db,
            ],
        ),
        Node::spawn(
            env!("CARGO_BIN_EXE_neoadmin"),
            &dir,
            "admin",
            &["--cluster", "flood", "--masters", &master, "--bind", &admin],
        ),
    ];
    let admin_addr = Address::new("127.0.0.1", admin_port);
    wait_for(Duration::from_secs(30), || {
        match client::request(
            &admin_addr,
            &[Packet::AskPartitionList {
                min_offset: 0,
                max_offset: 1,
                nid: None,
            }],
            Duration::from_secs(2),
        ) {
            Ok(a) if matches!(a[0], Packet::AnswerPartitionList { .. }) => Some(()),
            _ => None,
        }
    })
    .unwrap_or_else(|| panic!("no partition table:\n{}", common::logs(&nodes)));
    let pid = nodes[2].pid().unwrap();

    let mut s = TcpStream::connect(("127.0.0.1", admin_port)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(&frame::handshake()).unwrap();
    let mut batch = Vec::new();
    for id in 0..1000 {
        let m = Message {
            id,
            packet: Packet::AskPartitionList {
                min_offset: 0,
                max_offset: 0,
                nid: None,
            },
        };
        frame::encode(&m, &mut batch).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut peak = 0;
    // Where the stream of back-to-back batches is, so that frames stay whole.
    let mut at = 0;
    let disconnected = loop {
        let (_, hwm) = rss_kib(pid).unwrap_or_else(|| panic!("the admin died"));
        peak = peak.max(hwm);
        if peak > RSS_BOUND_KIB || Instant::now() > deadline {
            break false;
        }
        match s.write(&batch[at..]) {
            Ok(n) => at = (at + n) % batch.len(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break true,
        }
    };
    assert!(
        disconnected,
        "the admin kept a client that does not read (peak RSS {peak} KiB, bound {RSS_BOUND_KIB} KiB)"
    );
    assert!(
        peak <= RSS_BOUND_KIB,
        "the admin grew to {peak} KiB (bound {RSS_BOUND_KIB} KiB)"
    );
    wait_for(Duration::from_secs(5), || {
        nodes[2].log().contains("does not read").then_some(())
    })
    .unwrap_or_else(|| panic!("no log line for the disconnection:\n{}", nodes[2].log()));
    admin_answers(admin_port).expect("the admin still serves");
}

#[test]
fn a_master_whose_log_pipe_is_never_read_keeps_serving_and_stops_on_sigterm() {
    // A pipe nobody reads fills up (64 KiB) and then blocks every write to it.
    let port = free_port();
    let mut node = Proc(
        Command::new(env!("CARGO_BIN_EXE_neomaster"))
            .args(master_args(port))
            .env("NEO_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let _held = node.0.stderr.take().unwrap();
    wait_for(Duration::from_secs(10), || master_answers(port).ok()).expect("the master serves");
    // Each refused peer is a log line of ~100 bytes: well past what the pipe holds.
    for i in 0..1500 {
        if let Err(e) = master_answers(port) {
            panic!("the master stopped serving once its log pipe was full (request {i}): {e}");
        }
    }
    node.terminate();
    let status = node
        .exited_within(Duration::from_secs(8))
        .expect("the master stops on SIGTERM with a full log pipe");
    assert!(status.success(), "{status}");
}
