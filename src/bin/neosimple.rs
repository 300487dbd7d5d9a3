//! `neosimple`: a whole local cluster in one command: masters, storages on SQLite files in a
//! folder, and an admin, each node a process of its own (the `neomaster`, `neostorage` and
//! `neoadmin` programs beside this one), so that one node waiting on its disk never stalls
//! another. It waits until the cluster is RUNNING, showing progress, says how to reach it
//! with neoctl, and stops every node cleanly on Ctrl-C or SIGTERM. Started again on the same
//! folder, it brings the same database back. A start-up failure (a folder of another
//! cluster, a corrupt database) ends it with that one error and a non-zero status.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use neo::db::sqlite::SqliteBackend;
use neo::db::Identity;
use neo::proto::{Address, ClusterState, Packet};
use neo::runtime::client;
use neo::runtime::log::{out, say};

#[derive(Parser)]
#[command(
    name = "neosimple",
    about = "Start a local NEO cluster (SQLite), one process per node",
    version
)]
struct Cli {
    /// Folder for the storage databases and the nodes' logs.
    #[arg(default_value = "neosimple-data")]
    dir: PathBuf,
    #[arg(long, default_value = "neosimple")]
    cluster: String,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9))]
    masters: u32,
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=32))]
    storages: u32,
    /// Replicas of a new database (default: 1 with two storages or more).
    #[arg(long)]
    replicas: Option<u32>,
    /// Partitions of a new database.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=65535))]
    partitions: u32,
    /// The admin's address, where neoctl connects.
    #[arg(long, default_value = "127.0.0.1:9999")]
    admin: String,
}

/// How long the cluster may take to reach RUNNING.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the nodes may take to stop after SIGTERM before they are killed (each node
/// ends itself 10 s after the signal at the latest).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => {
            say("neosimple: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            say(format!("neosimple: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// One node process.
struct Node {
    name: String,
    log: PathBuf,
    child: Child,
    status: Option<ExitStatus>,
}

impl Node {
    fn spawn(program: &Path, name: &str, dir: &Path, args: &[String]) -> Result<Node, String> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let err = file.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            // Its own process group: Ctrl-C reaches neosimple only, which stops each node
            // once (a node told twice stops at once, uncleanly).
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; it only sets a flag of the new process.
        unsafe {
            cmd.pre_exec(|| {
                // If neosimple dies (even by SIGKILL), its nodes are told to stop.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        Ok(Node {
            name: name.to_string(),
            log,
            child,
            status: None,
        })
    }

    /// Whether it has exited (its status is kept).
    fn poll(&mut self) -> bool {
        if self.status.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
            }
        }
        self.status.is_some()
    }

    fn signal(&self, sig: libc::c_int) {
        if self.status.is_none() {
            // SAFETY: kill(2) on our own child's pid, which we have not reaped.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, sig);
            }
        }
    }

    /// The last error its log holds, to explain why it stopped.
    fn last_error(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        text.lines()
            .rev()
            .find(|l| l.contains("ERROR") || l.contains("error:") || l.contains(": cannot "))
            .map(|l| l.trim().to_string())
    }
}

/// The node programs, from the folder of this one.
fn programs() -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own program: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let find = |name: &str| {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "{name} is not beside neosimple in {} (build every program: cargo build --release)",
                dir.display()
            ))
        }
    };
    Ok((find("neomaster")?, find("neostorage")?, find("neoadmin")?))
}

/// A port nothing listens on now on 127.0.0.1.
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

fn run(cli: &Cli) -> Result<(), String> {
    let admin = Address::parse_with_default(&cli.admin, Some(neo::config::ADMIN_PORT))
        .map_err(|e| format!("--admin: {e}"))?;
    let replicas = cli.replicas.unwrap_or(if cli.storages > 1 { 1 } else { 0 });
    if replicas >= cli.storages {
        return Err(format!(
            "{replicas} replicas need more than {} storages",
            cli.storages
        ));
    }
    let (neomaster, neostorage, neoadmin) = programs()?;
    std::fs::create_dir_all(&cli.dir)
        .map_err(|e| format!("cannot create {}: {e}", cli.dir.display()))?;
    // Refuse a folder of another cluster or a damaged database before starting anything.
    let identity = Identity {
        cluster: cli.cluster.clone(),
        nid: None,
    };
    let databases: Vec<PathBuf> = (1..=cli.storages)
        .map(|i| cli.dir.join(format!("storage{i}.sqlite")))
        .collect();
    for path in &databases {
        SqliteBackend::open(&path.display().to_string(), &identity)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    // Port 0 (any): the one the system gives now, so that neosimple knows where to ask.
    let admin = match std::net::TcpListener::bind((admin.host.as_str(), admin.port))
        .and_then(|l| l.local_addr())
    {
        Ok(bound) => Address::new(admin.host.clone(), bound.port()),
        Err(e) => {
            let free = Address::new("127.0.0.1", free_port()?);
            say(format!(
                "neosimple: cannot listen on {admin}: {e}; using {free} instead"
            ));
            free
        }
    };
    // The first master on NEO's default port when it is free, so that a ZODB application's
    // `master_nodes` stays the same from one start to the next; the others where they can.
    let masters: Vec<Address> = (0..cli.masters)
        .map(|i| {
            let default = neo::config::MASTER_PORT;
            if i == 0 && std::net::TcpListener::bind(("127.0.0.1", default)).is_ok() {
                Ok(Address::new("127.0.0.1", default))
            } else {
                free_port().map(|p| Address::new("127.0.0.1", p))
            }
        })
        .collect::<Result<_, _>>()?;
    let masters_arg = masters
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    say(format!(
        "neosimple: starting cluster {:?}: {} master(s), {} storage(s) on SQLite in {}, an admin (logs: {}/*.log)",
        cli.cluster,
        cli.masters,
        cli.storages,
        cli.dir.display(),
        cli.dir.display()
    ));
    let base = |bind: &str| -> Vec<String> {
        vec![
            "--cluster".into(),
            cli.cluster.clone(),
            "--masters".into(),
            masters_arg.clone(),
            "--bind".into(),
            bind.into(),
        ]
    };
    let mut nodes: Vec<Node> = Vec::new();
    let spawned = (|| -> Result<(), String> {
        for (i, m) in masters.iter().enumerate() {
            let mut args = base(&m.to_string());
            args.extend([
                "--autostart".into(),
                cli.storages.to_string(),
                "--replicas".into(),
                replicas.to_string(),
                "--partitions".into(),
                cli.partitions.to_string(),
            ]);
            let name = format!("master{}", i + 1);
            nodes.push(Node::spawn(&neomaster, &name, &cli.dir, &args)?);
        }
        for (i, db) in databases.iter().enumerate() {
            let mut args = base("127.0.0.1:0");
            args.extend(["--database".into(), db.display().to_string()]);
            let name = format!("storage{}", i + 1);
            nodes.push(Node::spawn(&neostorage, &name, &cli.dir, &args)?);
        }
        nodes.push(Node::spawn(
            &neoadmin,
            "admin",
            &cli.dir,
            &base(&admin.to_string()),
        )?);
        Ok(())
    })();
    let summary = format!(
        "{} master(s) on {masters_arg}, {} storage(s), partitions {}, replicas {replicas}",
        cli.masters, cli.storages, cli.partitions
    );
    let result = match spawned {
        Ok(()) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let reach = Reach {
                admin: &admin,
                masters: &masters_arg,
                cluster: &cli.cluster,
                summary: &summary,
            };
            rt.block_on(supervise(&mut nodes, &reach))
        }
        Err(e) => Err(e),
    };
    // Whatever happened, no node outlives neosimple.
    stop(&mut nodes);
    result?;
    let failed: Vec<String> = nodes
        .iter()
        .filter(|n| n.status.is_some_and(|s| !s.success()))
        .map(|n| n.name.clone())
        .collect();
    if !failed.is_empty() {
        return Err(format!(
            "{} failed; see {}",
            failed.join(", "),
            cli.dir.display()
        ));
    }
    Ok(())
}

/// Watch the nodes: progress until RUNNING, then wait until they have all exited (the
/// cluster was stopped) or a signal comes.
async fn supervise(nodes: &mut [Node], reach: &Reach<'_>) -> Result<(), String> {
    let admin = reach.admin;
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut running = false;
    let mut last: Option<ClusterState> = None;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        for n in nodes.iter_mut() {
            let was = n.status.is_some();
            if !n.poll() || was {
                continue;
            }
            let status = n.status.expect("polled");
            let why = n.last_error().unwrap_or_default();
            if !running {
                return Err(format!(
                    "{} exited during start-up ({status}): {why}",
                    n.name
                ));
            }
            if !status.success() {
                say(format!("neosimple: {} exited ({status}): {why}", n.name));
            }
        }
        if nodes.iter().all(|n| n.status.is_some()) {
            return Ok(());
        }
        if running {
            continue;
        }
        let a = admin.clone();
        let state = tokio::task::spawn_blocking(move || {
            match client::request(&a, &[Packet::AskClusterState], Duration::from_secs(2)) {
                Ok(answers) => match answers.first() {
                    Some(Packet::AnswerClusterState { state }) => *state,
                    _ => None,
                },
                Err(_) => None,
            }
        })
        .await
        .unwrap_or(None);
        if state != last {
            if let Some(s) = state {
                say(format!(
                    "neosimple: cluster {s} ({:.1}s)",
                    started.elapsed().as_secs_f64()
                ));
            }
            last = state;
        }
        if state == Some(ClusterState::Running) {
            running = true;
            announce(reach);
        } else if started.elapsed() > START_TIMEOUT {
            return Err(format!(
                "the cluster is not RUNNING after {} s; stopping",
                START_TIMEOUT.as_secs()
            ));
        }
    }
}

/// Where the running cluster is, for neoctl and for ZODB applications.
struct Reach<'a> {
    admin: &'a Address,
    /// The masters, space-separated, as `master_nodes` takes them.
    masters: &'a str,
    cluster: &'a str,
    summary: &'a str,
}

/// Say how to reach the running cluster.
fn announce(reach: &Reach<'_>) {
    let Reach {
        admin,
        masters,
        cluster,
        summary,
    } = *reach;
    let port_arg = if admin.port == neo::config::ADMIN_PORT && admin.host == "127.0.0.1" {
        String::new()
    } else {
        format!(" -a {admin}")
    };
    out(format!("cluster {cluster:?} is RUNNING: {summary}"));
    out(format!("admin (for neoctl): {admin}"));
    out(format!("try:  neoctl{port_arg} print node"));
    out(format!("      neoctl{port_arg} print pt"));
    out(format!(
        "stop: Ctrl-C (or neoctl{port_arg} set cluster STOPPING)"
    ));
    out(format!(
        "ZODB (zope.conf, after %import neo.client): <NEOStorage> master_nodes {masters}  name {cluster} </NEOStorage>"
    ));
}

/// Stop every node still running: the masters first, so that no primary outlives a storage
/// and marks its cells out of date (the database would come back with them OUT_OF_DATE),
/// then the others; SIGTERM, then SIGKILL for those not gone in time.
fn stop(nodes: &mut [Node]) {
    let (masters, others): (Vec<&mut Node>, Vec<&mut Node>) =
        nodes.iter_mut().partition(|n| n.name.starts_with("master"));
    stop_wave(masters);
    stop_wave(others);
}

fn stop_wave(mut nodes: Vec<&mut Node>) {
    for n in nodes.iter_mut() {
        if !n.poll() {
            n.signal(libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline && !nodes.iter_mut().all(|n| n.poll()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for n in nodes.iter_mut() {
        if !n.poll() {
            say(format!("neosimple: {} did not stop; killing it", n.name));
            let _ = n.child.kill();
            n.status = n.child.wait().ok();
        }
    }
}
