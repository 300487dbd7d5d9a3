//! `neobench`: measure the storage node's disk layer.
//!
//! `neobench backend` runs the SQLite backend (a temporary file) and/or the MySQL/MariaDB
//! backend (a database it creates and drops) through the full commit path (store, vote,
//! lock, unlock) with 1, 10 and 100 objects of 300 bytes per transaction, then loads (the
//! latest revision, and the one before a TID), and measures the database size, extrapolated
//! to a million objects. Rates are medians over several timed runs; with both adapters,
//! their commit runs alternate and the ratio of their rates is printed.
//!
//! `neobench cluster` starts a local cluster of node processes and measures commits and
//! loads through the client library, beside the backend's direct figures (see
//! `cluster.rs`).
//!
//! `neobench abuse` runs real nodes under hostile peers and prints each one's peak memory
//! against a bound (see `abuse.rs`).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use mysql::prelude::Queryable;
use sha1::{Digest, Sha1};

use neo::db::conformance::TempDir;
use neo::db::mysql::{parse_database, MysqlBackend};
use neo::db::sqlite::SqliteBackend;
use neo::db::{Backend, Cell, DbResult, Identity, Load, ObjectData, TxnMeta, Value};
use neo::proto::{CellState, Nid, Oid, Ptid, Tid};

#[path = "neobench/abuse.rs"]
mod abuse;
#[path = "neobench/cluster.rs"]
mod cluster;

#[derive(Parser)]
#[command(name = "neobench", about = "Benchmarks of NEO's components", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Commit and load rates and database size of the storage backends.
    Backend(BackendArgs),
    /// Peak memory of real nodes under hostile peers, against stated bounds.
    Abuse(abuse::AbuseArgs),
    /// Commits and loads through the client library on a local cluster of node processes.
    Cluster(cluster::ClusterArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Adapter {
    Sqlite,
    Mysql,
    Both,
}

#[derive(Args)]
struct BackendArgs {
    #[arg(long, value_enum, default_value = "both")]
    adapter: Adapter,
    /// Objects in the database for the load and size measurements.
    #[arg(long, default_value_t = 20_000)]
    objects: u64,
    /// Length of each timed run, in seconds.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Timed runs per figure (the median is printed).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// MySQL database (created and dropped), in the storage node's syntax.
    #[arg(long, default_value = "root@neobench@127.0.0.1:3306")]
    mysql: String,
    /// Directory for the SQLite file (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const OBJECT_SIZE: usize = 300;
const PARTITIONS: u32 = 12;

/// Progress on stderr when it is a terminal, overwritten in place.
struct Progress {
    on: bool,
    last: Instant,
}

impl Progress {
    fn new() -> Self {
        Progress {
            on: std::io::stderr().is_terminal(),
            last: Instant::now(),
        }
    }

    fn show(&mut self, text: impl FnOnce() -> String) {
        if self.on && self.last.elapsed() > Duration::from_millis(100) {
            eprint!("\r\x1b[2K{}", text());
            let _ = std::io::stderr().flush();
            self.last = Instant::now();
        }
    }

    fn clear(&self) {
        if self.on {
            eprint!("\r\x1b[2K");
        }
    }
}

/// Where each adapter's databases come from.
trait Target {
    type B: Backend;
    fn name(&self) -> &'static str;
    /// A new, empty database (whatever an earlier call made is gone).
    fn fresh(&mut self) -> DbResult<Self::B>;
    /// Reopen the current database.
    fn reopen(&mut self) -> DbResult<Self::B>;
    /// Bytes the current database takes, with no backend open; and how it was measured.
    fn size(&mut self) -> DbResult<(u64, &'static str)>;
}

fn identity() -> Identity {
    Identity {
        cluster: "neobench".into(),
        nid: Some(Nid(1)),
    }
}

struct Sqlite {
    dir: PathBuf,
    _temp: Option<TempDir>,
    path: PathBuf,
    generation: u64,
}

impl Sqlite {
    fn new(dir: Option<PathBuf>) -> Self {
        let temp = dir.is_none().then(|| TempDir::new("neobench"));
        let dir = dir.unwrap_or_else(|| temp.as_ref().unwrap().path().to_owned());
        Sqlite {
            path: dir.join("neobench-0.sqlite"),
            dir,
            _temp: temp,
            generation: 0,
        }
    }

    fn remove(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        self.remove();
    }
}

impl Target for Sqlite {
    type B = SqliteBackend;

    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn fresh(&mut self) -> DbResult<SqliteBackend> {
        self.remove();
        self.generation += 1;
        self.path = self
            .dir
            .join(format!("neobench-{}.sqlite", self.generation));
        self.reopen()
    }

    fn reopen(&mut self) -> DbResult<SqliteBackend> {
        SqliteBackend::open(&self.path.to_string_lossy(), &identity())
    }

    fn size(&mut self) -> DbResult<(u64, &'static str)> {
        // Closed, the WAL is checkpointed into the file and removed.
        let bytes = std::fs::metadata(&self.path)
            .map_err(|e| neo::db::DbError::Backend(e.to_string()))?
            .len();
        Ok((bytes, "file size"))
    }
}

struct Mysql {
    url: String,
    database: String,
    admin: mysql::Conn,
}

impl Mysql {
    fn new(url: &str) -> Result<Self, String> {
        let target = parse_database(url)?;
        let admin = mysql::Conn::new(target.opts()).map_err(|e| {
            format!(
                "cannot connect to MySQL at {} ({e}); start one with scripts/mariadb.sh",
                target.server
            )
        })?;
        Ok(Mysql {
            url: url.to_owned(),
            database: target.database,
            admin,
        })
    }

    fn drop_database(&mut self) -> DbResult<()> {
        self.admin
            .query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.database))
            .map_err(|e| neo::db::DbError::Backend(e.to_string()))
    }
}

impl Drop for Mysql {
    fn drop(&mut self) {
        let _ = self.drop_database();
    }
}

impl Target for Mysql {
    type B = MysqlBackend;

    fn name(&self) -> &'static str {
        "mysql"
    }

    fn fresh(&mut self) -> DbResult<MysqlBackend> {
        self.drop_database()?;
        self.reopen()
    }

    fn reopen(&mut self) -> DbResult<MysqlBackend> {
        MysqlBackend::open(&self.url, &identity())
    }

    fn size(&mut self) -> DbResult<(u64, &'static str)> {
        let e = |e: mysql::Error| neo::db::DbError::Backend(e.to_string());
        let tables: Vec<String> = self
            .admin
            .exec(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
                (&self.database,),
            )
            .map_err(e)?;
        for table in tables {
            // Refresh InnoDB's statistics, which information_schema reports.
            self.admin
                .query_drop(format!("ANALYZE TABLE `{}`.`{table}`", self.database))
                .map_err(e)?;
        }
        let bytes: Option<u64> = self
            .admin
            .exec_first(
                "SELECT CAST(SUM(data_length + index_length) AS UNSIGNED) \
                 FROM information_schema.tables WHERE table_schema = ?",
                (&self.database,),
            )
            .map_err(e)?;
        Ok((bytes.unwrap_or(0), "InnoDB data + index pages"))
    }
}

/// Distinct, incompressible-looking object values.
struct Values(u64);

impl Values {
    fn next(&mut self) -> Value {
        let mut bytes = Vec::with_capacity(OBJECT_SIZE);
        while bytes.len() < OBJECT_SIZE {
            self.0 = self.0.wrapping_add(1);
            bytes.extend_from_slice(&Sha1::digest(self.0.to_le_bytes()));
        }
        bytes.truncate(OBJECT_SIZE);
        Value::Data(ObjectData {
            compression: 0,
            checksum: Sha1::digest(&bytes).into(),
            data: bytes,
        })
    }
}

/// Writes transactions with increasing TIDs.
struct Writer {
    values: Values,
    next_tid: u64,
}

impl Writer {
    fn new() -> Self {
        Writer {
            values: Values(0),
            next_tid: 1000,
        }
    }

    fn commit<B: Backend + ?Sized>(
        &mut self,
        b: &mut B,
        oids: impl Iterator<Item = u64>,
    ) -> DbResult<Tid> {
        let (ttid, tid) = (Tid(self.next_tid), Tid(self.next_tid + 1));
        self.next_tid += 2;
        let mut meta = TxnMeta {
            user: b"neobench".to_vec(),
            ..TxnMeta::default()
        };
        for oid in oids {
            b.store(ttid, Oid(oid), self.values.next())?;
            meta.oids.push(Oid(oid));
        }
        b.vote(ttid, Some(&meta))?;
        b.lock(ttid, tid)?;
        b.unlock(ttid, tid)?;
        Ok(tid)
    }
}

fn with_pt<B: Backend + ?Sized>(b: &mut B) -> DbResult<()> {
    let cells: Vec<Cell> = (0..PARTITIONS)
        .map(|partition| Cell {
            partition,
            nid: Nid(1),
            state: CellState::UpToDate,
        })
        .collect();
    b.change_partition_table(Ptid(1), 0, &cells, true)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Call `op` for `seconds`, `runs` times; the median rate in calls per second.
fn timed(
    runs: usize,
    seconds: f64,
    progress: &mut Progress,
    what: &str,
    mut op: impl FnMut(u64) -> DbResult<()>,
) -> DbResult<f64> {
    let mut rates = Vec::new();
    let mut i = 0u64;
    for run in 1..=runs {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < seconds {
            op(i)?;
            i += 1;
            n += 1;
            progress.show(|| format!("{what}: run {run}/{runs}, {n} done"));
        }
        rates.push(n as f64 / start.elapsed().as_secs_f64());
    }
    progress.clear();
    Ok(median(rates))
}

/// A [`Target`] whose backend is boxed, so that targets of both adapters run side by side.
trait AnyTarget {
    fn name(&self) -> &'static str;
    fn fresh_boxed(&mut self) -> DbResult<Box<dyn Backend>>;
}

impl<T: Target> AnyTarget for T
where
    T::B: 'static,
{
    fn name(&self) -> &'static str {
        Target::name(self)
    }

    fn fresh_boxed(&mut self) -> DbResult<Box<dyn Backend>> {
        Ok(Box::new(self.fresh()?))
    }
}

/// Commit rates of every target at 1, 10 and 100 objects per transaction. The targets take
/// turns run by run, so that a machine whose load changes (other processes, the disk's
/// other writers) weighs on each alike and the ratio between them means something.
fn commit_rates(targets: &mut [&mut dyn AnyTarget], args: &BackendArgs) -> DbResult<()> {
    let mut progress = Progress::new();
    for per_txn in [1u64, 10, 100] {
        let mut runs = Vec::new();
        for target in targets.iter_mut() {
            let mut b = target.fresh_boxed()?;
            with_pt(&mut *b)?;
            runs.push((target.name(), b, Writer::new(), Vec::new(), 0u64));
        }
        for run in 1..=args.runs {
            for (name, b, writer, rates, i) in runs.iter_mut() {
                let what = format!("{name}: commits of {per_txn} objects, run {run}");
                let rate = timed(1, args.seconds, &mut progress, &what, |_| {
                    *i += 1;
                    writer
                        .commit(&mut **b, (*i - 1) * per_txn..*i * per_txn)
                        .map(drop)
                })?;
                rates.push(rate);
            }
        }
        let mut objects_per_s = Vec::new();
        for (name, _, _, rates, _) in runs {
            let rate = median(rates);
            objects_per_s.push((name, rate * per_txn as f64));
            println!(
                "{name}: {rate:8.1} commits/s with {per_txn:3} objects of {OBJECT_SIZE} bytes \
                 ({:8.0} objects/s), median of {} runs of {}s",
                rate * per_txn as f64,
                args.runs,
                args.seconds
            );
        }
        if let [(first, a), (second, b)] = objects_per_s[..] {
            println!(
                "{second}/{first}: {:.2} at {per_txn} objects per commit (runs interleaved)",
                b / a
            );
        }
    }
    Ok(())
}

/// Database size and load rates of one target.
fn bench<T: Target>(target: &mut T, args: &BackendArgs) -> DbResult<()> {
    let name = target.name();
    let mut progress = Progress::new();
    let mut writer = Writer::new();
    // A database of `objects` objects, 100 per transaction.
    let objects = args.objects.max(100);
    let mut b = target.fresh()?;
    with_pt(&mut b)?;
    let mut first = Vec::new();
    for start in (0..objects).step_by(100) {
        first.push(writer.commit(&mut b, start..(start + 100).min(objects))?);
        progress.show(|| format!("{name}: writing {objects} objects: {start}"));
    }
    progress.clear();
    drop(b);
    let (bytes, how) = target.size()?;
    println!(
        "{name}: {:.1} MiB for {objects} objects ({how}), so {:.2} GiB per million objects \
         (extrapolated)",
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / objects as f64 * 1e6 / (1 << 30) as f64
    );

    // A second revision of each, so that "before" finds the first one.
    let mut b = target.reopen()?;
    for start in (0..objects).step_by(100) {
        writer.commit(&mut b, start..(start + 100).min(objects))?;
        progress.show(|| format!("{name}: rewriting {objects} objects: {start}"));
    }
    progress.clear();
    // Objects in a scattered order, the same for both kinds of load.
    let oid = |i: u64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % objects;
    let expect = |load: Load, serial: Option<Tid>| match (load, serial) {
        (Load::Found(l), Some(s)) if l.serial == s => Ok(()),
        (Load::Found(l), None) if l.next_serial.is_none() => Ok(()),
        (other, _) => Err(neo::db::DbError::Backend(format!(
            "unexpected load result {other:?}"
        ))),
    };
    let latest = timed(
        args.runs,
        args.seconds,
        &mut progress,
        &format!("{name}: loads"),
        |i| expect(b.load(Oid(oid(i)), None, None)?, None),
    )?;
    println!(
        "{name}: {latest:8.0} loads/s of the latest revision ({objects} objects, 2 revisions each)"
    );
    let before = timed(
        args.runs,
        args.seconds,
        &mut progress,
        &format!("{name}: loads before"),
        |i| {
            let o = oid(i);
            let tid = first[(o / 100) as usize];
            expect(b.load(Oid(o), None, Some(Tid(tid.0 + 1)))?, Some(tid))
        },
    )?;
    println!("{name}: {before:8.0} loads/s before a TID (finding the first revision)");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.cmd {
        Cmd::Backend(args) => args,
        Cmd::Cluster(args) => {
            return match cluster::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("neobench: cluster: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Abuse(args) => {
            return match abuse::run(&args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("neobench: abuse: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    };
    let mut sqlite = matches!(args.adapter, Adapter::Sqlite | Adapter::Both)
        .then(|| Sqlite::new(args.dir.clone()));
    let mut mysql = match args.adapter {
        Adapter::Mysql | Adapter::Both => match Mysql::new(&args.mysql) {
            Ok(target) => Some(target),
            Err(e) => {
                eprintln!("neobench: mysql: {e}");
                return ExitCode::FAILURE;
            }
        },
        Adapter::Sqlite => None,
    };
    let mut targets: Vec<&mut dyn AnyTarget> = Vec::new();
    if let Some(t) = sqlite.as_mut() {
        targets.push(t);
    }
    if let Some(t) = mysql.as_mut() {
        targets.push(t);
    }
    if let Err(e) = commit_rates(&mut targets, &args) {
        eprintln!("neobench: commits: {e}");
        return ExitCode::FAILURE;
    }
    let mut failed = false;
    if let Some(t) = sqlite.as_mut() {
        if let Err(e) = bench(t, &args) {
            eprintln!("neobench: sqlite: {e}");
            failed = true;
        }
    }
    if let Some(t) = mysql.as_mut() {
        if let Err(e) = bench(t, &args) {
            eprintln!("neobench: mysql: {e}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
