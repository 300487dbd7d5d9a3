//! `neosimple`: a whole local cluster in one command and one process: masters, storages on
//! SQLite files in a folder, and an admin. It waits until the cluster is RUNNING, says how
//! to reach it with neoctl, and stops cleanly on Ctrl-C. Started again on the same folder,
//! it brings the same database back.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use neo::actors::admin::{Admin, AdminConfig};
use neo::actors::master::{Master, MasterConfig};
use neo::actors::storage::{Storage, StorageConfig};
use neo::db::sqlite::SqliteBackend;
use neo::db::Identity;
use neo::proto::{Address, ClusterState, Packet};
use neo::runtime::{self, client, Process};

#[derive(Parser)]
#[command(
    name = "neosimple",
    about = "Start a local NEO cluster (SQLite) in one process",
    version
)]
struct Cli {
    /// Folder for the storage databases and the log.
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

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("neosimple: {e}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let admin_address = match Address::parse_with_default(&cli.admin, Some(neo::config::ADMIN_PORT))
    {
        Ok(a) => a,
        Err(e) => return fail(format!("--admin: {e}")),
    };
    if let Err(e) = std::fs::create_dir_all(&cli.dir) {
        return fail(format!("cannot create {}: {e}", cli.dir.display()));
    }
    let log = cli.dir.join("neosimple.log");
    if let Err(e) = runtime::init_logging(Some(&log)) {
        return fail(e);
    }
    let replicas = cli.replicas.unwrap_or(if cli.storages > 1 { 1 } else { 0 });
    if replicas >= cli.storages {
        return fail(format!(
            "{replicas} replicas need more than {} storages",
            cli.storages
        ));
    }
    eprintln!(
        "neosimple: starting cluster {:?}: {} master(s), {} storage(s) on SQLite in {}, an admin (log: {})",
        cli.cluster,
        cli.masters,
        cli.storages,
        cli.dir.display(),
        log.display()
    );
    let system = actix::System::new();
    let started = system.block_on(start(&cli, replicas, admin_address.clone()));
    if let Err(e) = started {
        return fail(e);
    }
    let code = system.run_with_code().unwrap_or(1);
    if code == 0 {
        eprintln!("neosimple: stopped");
        ExitCode::SUCCESS
    } else {
        fail(format!(
            "a node failed (exit code {code}); see {}",
            log.display()
        ))
    }
}

async fn start(cli: &Cli, replicas: u32, admin: Address) -> Result<(), String> {
    let localhost = Address::new("127.0.0.1", 0);
    let mut master_listeners = Vec::new();
    for _ in 0..cli.masters {
        master_listeners.push(runtime::bind(&localhost).await?);
    }
    let masters: Vec<Address> = master_listeners.iter().map(|(_, a)| a.clone()).collect();
    let (admin_listener, admin) = match runtime::bind(&admin).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("neosimple: {e}; using a free port instead");
            runtime::bind(&Address::new(admin.host.clone(), 0)).await?
        }
    };
    let process = Process::default();
    for (i, (listener, bind)) in master_listeners.into_iter().enumerate() {
        let cfg = MasterConfig {
            cluster: cli.cluster.clone(),
            bind,
            masters: masters.clone(),
            autostart: Some(cli.storages),
            replicas,
            partitions: cli.partitions,
            nid: None,
        };
        runtime::start_node(
            &process,
            format!("master{}", i + 1),
            Some(listener),
            Master::new(cfg),
        );
    }
    let identity = Identity {
        cluster: cli.cluster.clone(),
        nid: None,
    };
    for i in 0..cli.storages {
        let path = cli.dir.join(format!("storage{}.sqlite", i + 1));
        let db = SqliteBackend::open(&path.display().to_string(), &identity)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let (listener, bind) = runtime::bind(&localhost).await?;
        let cfg = StorageConfig {
            cluster: cli.cluster.clone(),
            bind,
            masters: masters.clone(),
        };
        runtime::start_node(
            &process,
            format!("storage{}", i + 1),
            Some(listener),
            Storage::new(cfg, Box::new(db)),
        );
    }
    let cfg = AdminConfig {
        cluster: cli.cluster.clone(),
        bind: admin.clone(),
        masters: masters.clone(),
    };
    runtime::start_node(
        &process,
        "admin".into(),
        Some(admin_listener),
        Admin::new(cfg),
    );
    process.shutdown_on_signals();
    let summary = format!(
        "{} master(s) on {}, {} storage(s), partitions {}, replicas {replicas}",
        cli.masters,
        masters
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        cli.storages,
        cli.partitions
    );
    actix_rt::spawn(watch(process, admin, cli.cluster.clone(), summary));
    Ok(())
}

/// Show progress until the cluster is RUNNING, then how to reach it.
async fn watch(process: Process, admin: Address, cluster: String, summary: String) {
    let started = Instant::now();
    let mut last: Option<ClusterState> = None;
    loop {
        let a = admin.clone();
        let answer = tokio::task::spawn_blocking(move || {
            client::request(&a, &[Packet::AskClusterState], Duration::from_secs(5))
        })
        .await;
        let state = match answer {
            Ok(Ok(answers)) => match answers.first() {
                Some(Packet::AnswerClusterState { state }) => *state,
                _ => None,
            },
            _ => None,
        };
        if state != last {
            if let Some(s) = state {
                eprintln!(
                    "neosimple: cluster {s} ({:.1}s)",
                    started.elapsed().as_secs_f64()
                );
            }
            last = state;
        }
        if state == Some(ClusterState::Running) {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            eprintln!("neosimple: the cluster is not RUNNING after 120 s; stopping");
            process.shutdown();
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    let port_arg = if admin.port == neo::config::ADMIN_PORT && admin.host == "127.0.0.1" {
        String::new()
    } else {
        format!(" -a {admin}")
    };
    println!("cluster {cluster:?} is RUNNING: {summary}");
    println!("admin (for neoctl): {admin}");
    println!("try:  neoctl{port_arg} print node");
    println!("      neoctl{port_arg} print pt");
    println!("stop: Ctrl-C (or neoctl{port_arg} set cluster STOPPING)");
}
