//! `neostorage`: a storage node. Options as NEO's (`-f neo.conf -s storage`, `--cluster`,
//! `--masters`, `--bind`, `--adapter SQLite|MySQL`, `--database`, `--wait`, ...).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use neo::actors::storage::{Storage, StorageConfig};
use neo::config::{Adapter, StorageArgs, StorageSettings};
use neo::db::mysql::MysqlBackend;
use neo::db::sqlite::SqliteBackend;
use neo::db::{Backend, DbError, Identity};
use neo::runtime;

#[derive(Parser)]
#[command(name = "neostorage", about = "NEO storage node", version)]
struct Cli {
    #[command(flatten)]
    args: StorageArgs,
}

/// Open the database; for MySQL, keep trying for `--wait` seconds (-1: forever) while the
/// server does not answer.
fn open(cfg: &StorageSettings) -> Result<Box<dyn Backend>, DbError> {
    let identity = Identity {
        cluster: cfg.cluster.clone(),
        nid: cfg.nid,
    };
    match cfg.adapter {
        Adapter::Sqlite => Ok(Box::new(SqliteBackend::open(&cfg.database, &identity)?)),
        Adapter::Mysql => {
            let started = Instant::now();
            let wait = cfg.wait.unwrap_or(0);
            loop {
                match MysqlBackend::open(&cfg.database, &identity) {
                    Err(DbError::Backend(e))
                        if wait < 0 || started.elapsed() < Duration::from_secs(wait as u64) =>
                    {
                        tracing::warn!("waiting for the MySQL server: {e}");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    other => return Ok(Box::new(other?)),
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (cfg, opts) = match cli.args.config() {
        Ok(c) => c,
        Err(e) => {
            runtime::log::say(format!("neostorage: {e}"));
            return ExitCode::from(2);
        }
    };
    if let Err(e) = runtime::init_logging(opts.logfile.as_deref()) {
        runtime::log::say(format!("neostorage: {e}"));
        return ExitCode::from(2);
    }
    let db = match open(&cfg) {
        Ok(db) => db,
        Err(e) => {
            tracing::error!("cannot open the database {}: {e}", cfg.database);
            runtime::log::say(format!(
                "neostorage: cannot open the database {}: {e}",
                cfg.database
            ));
            runtime::log::flush(Duration::from_secs(2));
            return ExitCode::FAILURE;
        }
    };
    let name = format!("storage {}", cfg.database);
    let bind = cfg.bind.clone();
    let code = runtime::run_node(name, Some(bind), move |bound| {
        let scfg = StorageConfig {
            cluster: cfg.cluster.clone(),
            bind: bound.unwrap_or(cfg.bind.clone()),
            masters: cfg.masters.clone(),
        };
        Ok(Storage::new(scfg, db))
    });
    ExitCode::from(code.clamp(0, 255) as u8)
}
