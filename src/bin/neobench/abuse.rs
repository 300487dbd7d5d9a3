//! `neobench abuse`: real node processes on 127.0.0.1 under hostile peers, with each node's
//! peak resident memory (from /proc/PID/status) against a stated bound:
//! - a client floods the admin with `print pt` requests and never reads the answers;
//! - 16 unidentified connections each send a frame announcing 63 MiB to the master;
//! - a burst of connections opened at once to the master.
//!
//! Each abuse runs for a bounded time and the program stops by itself; it ends with one
//! summary line.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use neo::proto::frame;
use neo::proto::{Address, Message, Packet};
use neo::runtime::client;

#[derive(Args)]
pub struct AbuseArgs {
    /// Longest time each abuse runs, in seconds.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// Connections in the burst.
    #[arg(long, default_value_t = 2000)]
    burst: usize,
}

const MIB: u64 = 1024 * 1024;

/// A node process; killed when dropped.
pub struct Node {
    name: &'static str,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    pub fn start(
        program: &Path,
        name: &'static str,
        dir: &Path,
        args: &[&str],
    ) -> Result<Node, String> {
        let log =
            std::fs::File::create(dir.join(format!("{name}.log"))).map_err(|e| e.to_string())?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        Ok(Node { name, child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Forget the peak resident memory so far (Linux: "5" to clear_refs resets VmHWM).
    fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }

    /// Peak resident memory since the last reset, in bytes.
    fn peak(&self) -> u64 {
        status_field(self.pid(), "VmHWM:").unwrap_or(0) * 1024
    }
}

fn status_field(pid: u32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

pub fn program(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let p = exe.parent().unwrap_or(Path::new(".")).join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{name} is not beside neobench (build every program: cargo build --release)"
        ))
    }
}

/// One abuse's outcome.
struct Outcome {
    what: &'static str,
    node: &'static str,
    peak: u64,
    bound: u64,
    /// What else must hold (the abuser was cut off, the node still serves), or why not.
    checks: Result<String, String>,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.peak <= self.bound && self.checks.is_ok()
    }
}

fn ask(admin: &Address, packet: Packet) -> Result<Packet, String> {
    client::request(admin, &[packet], Duration::from_secs(3)).map(|mut a| a.remove(0))
}

fn master_serves(port: u16) -> bool {
    // A peer of another cluster: a live master answers with an error.
    let req = Packet::RequestIdentification {
        node_type: neo::proto::NodeType::Admin,
        nid: None,
        address: None,
        cluster_name: "someone-else".into(),
        id_timestamp: None,
        extra: Default::default(),
    };
    matches!(
        client::request(
            &Address::new("127.0.0.1", port),
            &[req],
            Duration::from_secs(3)
        )
        .as_deref(),
        Ok([Packet::Error { .. }])
    )
}

pub fn run(args: &AbuseArgs) -> Result<bool, String> {
    let limit = Duration::from_secs_f64(args.seconds);
    let dir = neo::db::conformance::TempDir::new("neobench-abuse");
    let master_port = free_port()?;
    let admin_port = free_port()?;
    let master = format!("127.0.0.1:{master_port}");
    let admin = format!("127.0.0.1:{admin_port}");
    let db = dir.path().join("storage.sqlite").display().to_string();
    let common = ["--cluster", "abuse", "--masters", &master];
    let mut nodes = [
        Node::start(
            &program("neomaster")?,
            "master",
            dir.path(),
            &[
                "--cluster",
                "abuse",
                "--bind",
                &master,
                "--autostart",
                "1",
                "--partitions",
                "5000",
            ],
        )?,
        Node::start(
            &program("neostorage")?,
            "storage",
            dir.path(),
            &[&common[..], &["--bind", "127.0.0.1:0", "--database", &db]].concat(),
        )?,
        Node::start(
            &program("neoadmin")?,
            "admin",
            dir.path(),
            &[&common[..], &["--bind", &admin]].concat(),
        )?,
    ];
    let admin_addr = Address::new("127.0.0.1", admin_port);
    let started = Instant::now();
    loop {
        let pt = ask(
            &admin_addr,
            Packet::AskPartitionList {
                min_offset: 0,
                max_offset: 1,
                nid: None,
            },
        );
        if matches!(pt, Ok(Packet::AnswerPartitionList { .. })) {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) || !nodes.iter_mut().all(Node::alive) {
            return Err(format!(
                "the cluster did not start; logs in {}",
                dir.path().display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "cluster running (master {master}, admin {admin}, 5000 partitions); each abuse runs at most {:.0} s",
        limit.as_secs_f64()
    );
    let outcomes = vec![
        flood_admin(&nodes[2], admin_port, limit),
        big_frames(&nodes[0], master_port, limit),
        burst(&nodes[0], master_port, args.burst, limit),
    ];
    let mut passed = 0;
    for o in &outcomes {
        let verdict = if o.passed() { "ok  " } else { "FAIL" };
        let checks = match &o.checks {
            Ok(s) | Err(s) => s,
        };
        println!(
            "{verdict} {:<46} {:>6} peak RSS {:>5} MiB (bound {} MiB); {checks}",
            o.what,
            o.node,
            o.peak / MIB,
            o.bound / MIB
        );
        passed += usize::from(o.passed());
    }
    let alive = nodes.iter_mut().all(Node::alive);
    if !alive {
        println!("FAIL a node died; logs in {}", dir.path().display());
    }
    println!(
        "abuse: {passed} passed, {} failed",
        outcomes.len() - passed + usize::from(!alive)
    );
    Ok(passed == outcomes.len() && alive)
}

/// A client sends `print pt` requests (answers of ~30 KiB) and never reads.
fn flood_admin(node: &Node, port: u16, limit: Duration) -> Outcome {
    node.reset_peak();
    let mut outcome = Outcome {
        what: "client floods requests, never reads",
        node: node.name,
        peak: 0,
        bound: 200 * MIB,
        checks: Err("not cut off".into()),
    };
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        outcome.checks = Err("cannot connect".into());
        return outcome;
    };
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    if s.write_all(&frame::handshake()).is_err() {
        outcome.checks = Err("cannot send the handshake".into());
        return outcome;
    }
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
        let _ = frame::encode(&m, &mut batch);
    }
    let started = Instant::now();
    let mut sent = 0u64;
    // Where the stream of back-to-back batches is, so that frames stay whole.
    let mut at = 0;
    while started.elapsed() < limit {
        match s.write(&batch[at..]) {
            Ok(n) => {
                sent += n as u64;
                at = (at + n) % batch.len();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                outcome.checks = Ok(format!(
                    "cut off after {:.1} s ({} KiB of requests)",
                    started.elapsed().as_secs_f64(),
                    sent / 1024
                ));
                break;
            }
        }
    }
    outcome.peak = node.peak();
    if outcome.checks.is_ok() && !admin_serves(port) {
        outcome.checks = Err("the admin no longer answers".into());
    }
    outcome
}

fn admin_serves(port: u16) -> bool {
    ask(&Address::new("127.0.0.1", port), Packet::AskClusterState).is_ok()
}

/// 16 connections that never identify each announce a 63 MiB frame and send its bytes.
fn big_frames(node: &Node, port: u16, limit: Duration) -> Outcome {
    node.reset_peak();
    let threads: Vec<_> = (0..16)
        .map(|_| {
            std::thread::spawn(move || -> Result<u64, String> {
                let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
                let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
                s.write_all(&frame::handshake())
                    .map_err(|e| e.to_string())?;
                s.write_all(&(63u32 << 20).to_be_bytes())
                    .map_err(|e| e.to_string())?;
                let chunk = vec![0u8; 64 * 1024];
                let started = Instant::now();
                let mut sent = 0u64;
                while sent < 63 * MIB && started.elapsed() < limit {
                    match s.write(&chunk) {
                        Ok(n) => sent += n as u64,
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => return Ok(sent),
                    }
                }
                // Not cut off: did the node at least close its side?
                let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                let mut b = [0u8; 64];
                match s.read(&mut b) {
                    Ok(0) | Err(_) => Ok(sent),
                    Ok(_) => Err(format!("still open after {sent} bytes")),
                }
            })
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().unwrap_or(Err("thread failed".into())))
        .collect();
    let peak = node.peak();
    let refused = results.iter().filter(|r| r.is_ok()).count();
    let most = results.iter().flatten().max().copied().unwrap_or(0);
    let checks = if refused == results.len() && master_serves(port) {
        Ok(format!(
            "16 of 16 refused, at most {} KiB sent before",
            most / 1024
        ))
    } else {
        let first = results.iter().find_map(|r| r.as_ref().err());
        Err(format!(
            "{refused} of 16 refused (first other: {})",
            first.map_or("the master no longer answers", |e| e.as_str())
        ))
    };
    Outcome {
        what: "16 unidentified peers send 63 MiB frames",
        node: node.name,
        peak,
        bound: 100 * MIB,
        checks,
    }
}

/// `n` connections opened at once (each sends the handshake), held, then closed.
fn burst(node: &Node, port: u16, n: usize, limit: Duration) -> Outcome {
    node.reset_peak();
    let started = Instant::now();
    let per = n.div_ceil(8);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut held = Vec::new();
                let mut failed = 0;
                for _ in 0..per {
                    match TcpStream::connect(("127.0.0.1", port)) {
                        Ok(mut s) => {
                            let _ = s.write_all(&frame::handshake());
                            held.push(s);
                        }
                        Err(_) => failed += 1,
                    }
                }
                (held, failed)
            })
        })
        .collect();
    let mut held = Vec::new();
    let mut failed = 0;
    for t in threads {
        if let Ok((h, f)) = t.join() {
            held.extend(h);
            failed += f;
        }
    }
    let opened = held.len();
    let took = started.elapsed();
    // Hold them a moment (bounded), while the node serves others.
    std::thread::sleep(Duration::from_secs(1).min(limit));
    let serves = master_serves(port);
    drop(held);
    let peak = node.peak();
    let checks = if failed == 0 && serves {
        Ok(format!(
            "{opened} connections in {:.2} s, none refused; the master answered meanwhile",
            took.as_secs_f64()
        ))
    } else {
        Err(format!(
            "{opened} opened, {failed} refused; the master answered: {serves}"
        ))
    };
    Outcome {
        what: "a burst of connections",
        node: node.name,
        peak,
        bound: 100 * MIB,
        checks,
    }
}
