//! `neobench cluster`: a local cluster of node processes (1 master, 2 storages, replicas 1,
//! 12 partitions; SQLite files, or MariaDB databases with `--backend mysql`, or one cluster
//! of each, one after the other, with `--backend both`) measured through the
//! client library with 1, 4 and 16 concurrent clients (each its own `Client`, its own
//! connections): commits per second and commit latency (median, p99) at 1, 10 and 100
//! objects of 300 bytes per transaction, and loads per second cold (clients without a cache)
//! and warm (everything cached). Beside each figure: the backend's direct single-writer
//! figure for the same object count, measured in the same run, and the ratio. With both
//! backends, a last table sets the MySQL cluster's commit rates beside the SQLite one's.

use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use neo::client::{Address, Client, Oid, Options, Tid, TransactionMeta};
use neo::db::conformance::TempDir;
use neo::db::mysql::{parse_database, MysqlTarget, Server};
use neo::db::{Backend, DbResult};

use super::abuse::{free_port, program, Node};
use super::{median, timed, with_pt, Mysql, Progress, Sqlite, Target, Writer, OBJECT_SIZE};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StorageBackend {
    Sqlite,
    Mysql,
    Both,
}

#[derive(Args)]
pub struct ClusterArgs {
    /// The storages' backend (both: a SQLite cluster, then a MySQL one).
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: StorageBackend,
    /// MySQL databases: a database in the storage node's syntax whose name is a prefix;
    /// each storage gets its own (suffixes _s0, _s1; _direct for the backend alone),
    /// created empty and dropped at the end.
    #[arg(long, default_value = "root@neobench@127.0.0.1:3306")]
    mysql: String,
    /// Length of each timed run, in seconds.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Timed runs per figure (the median rate is printed; latencies pool every run).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Concurrent clients, comma-separated.
    #[arg(long, default_value = "1,4,16", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Objects in the database for the load measurements.
    #[arg(long, default_value_t = 10_000)]
    objects: u64,
    /// Directory for SQLite files and node logs (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const CLUSTER: &str = "neobench";
const PER_TXN: [u64; 3] = [1, 10, 100];

/// The node processes (killed when dropped) and what clients need to reach them.
struct LocalCluster {
    master: Address,
    _nodes: Vec<Node>,
    _dbs: Vec<Mysql>,
}

impl LocalCluster {
    /// Start the nodes; the storages on MySQL databases named after `mysql` if given.
    fn start(mysql: Option<&str>, dir: &std::path::Path) -> Result<LocalCluster, String> {
        let port = free_port()?;
        let master = format!("127.0.0.1:{port}");
        let common = ["--cluster", CLUSTER, "--masters", master.as_str()];
        let mut nodes = vec![Node::start(
            &program("neomaster")?,
            "master",
            dir,
            &[
                &common[..],
                &[
                    "--bind",
                    &master,
                    "--autostart",
                    "2",
                    "--replicas",
                    "1",
                    "--partitions",
                    "12",
                ],
            ]
            .concat(),
        )?];
        let mut dbs = Vec::new();
        for (i, name) in ["storage1", "storage2"].into_iter().enumerate() {
            let (adapter, database) = match mysql {
                Some(url) => {
                    let url = suffixed(url, &format!("_s{i}"))?;
                    // Made empty now, dropped at the end.
                    let mut db = Mysql::new(&url)?;
                    db.drop_database().map_err(|e| e.to_string())?;
                    dbs.push(db);
                    ("MySQL", url)
                }
                None => (
                    "SQLite",
                    dir.join(format!("cluster-s{i}.sqlite"))
                        .display()
                        .to_string(),
                ),
            };
            nodes.push(Node::start(
                &program("neostorage")?,
                name,
                dir,
                &[
                    &common[..],
                    &[
                        "--bind",
                        "127.0.0.1:0",
                        "--adapter",
                        adapter,
                        "--database",
                        &database,
                    ],
                ]
                .concat(),
            )?);
        }
        Ok(LocalCluster {
            master: Address::new("127.0.0.1", port),
            _nodes: nodes,
            _dbs: dbs,
        })
    }

    fn client(&self, cache_size: u64) -> Result<Client, String> {
        let mut options = Options::new(CLUSTER, vec![self.master.clone()]);
        options.cache_size = cache_size;
        options.connect_timeout = Duration::from_secs(60);
        Client::connect(options).map_err(|e| format!("cannot connect to the cluster: {e}"))
    }
}

/// The MySQL database string `url` with `suffix` appended to its database name, written
/// in the explicit form (`user[:password]@database@host:port`, or `...database/socket`).
fn suffixed(url: &str, suffix: &str) -> Result<String, String> {
    let MysqlTarget {
        user,
        password,
        database,
        server,
    } = parse_database(url)?;
    let escape = |s: &str| {
        s.replace('%', "%25")
            .replace('@', "%40")
            .replace(':', "%3A")
    };
    let credentials = match password {
        Some(p) => format!(
            "{}:{}",
            escape(&user),
            p.replace('%', "%25").replace('@', "%40")
        ),
        None => escape(&user),
    };
    let url = match server {
        Server::Tcp { host, port } => {
            let address = Address::new(host, port);
            format!("{credentials}@{database}{suffix}@{address}")
        }
        Server::Socket(path) => format!("{credentials}@{database}{suffix}{path}"),
    };
    // The name must stay valid (at most 64 characters).
    parse_database(&url)?;
    Ok(url)
}

/// Distinct object values (as the backend's: incompressible).
fn value(n: u64) -> Vec<u8> {
    use sha1::{Digest, Sha1};
    let mut bytes = Vec::with_capacity(OBJECT_SIZE);
    let mut i = n.wrapping_mul(1 << 20);
    while bytes.len() < OBJECT_SIZE {
        i += 1;
        bytes.extend_from_slice(&Sha1::digest(i.to_le_bytes()));
    }
    bytes.truncate(OBJECT_SIZE);
    bytes
}

/// One transaction rewriting `objects` (each on its serial); the new TID.
fn commit(c: &Client, objects: &[Oid], serials: &mut [Tid], n: u64) -> Result<Tid, String> {
    let txn = c.tpc_begin(None).map_err(|e| e.to_string())?;
    for (i, oid) in objects.iter().enumerate() {
        c.store(&txn, *oid, serials[i], Some(value(n + i as u64)))
            .map_err(|e| e.to_string())?;
    }
    let meta = TransactionMeta {
        user: b"neobench".to_vec(),
        ..TransactionMeta::default()
    };
    c.tpc_vote(&txn, &meta, |_| None)
        .map_err(|e| e.to_string())?;
    let tid = c.tpc_finish(txn).map_err(|e| e.to_string())?;
    serials.iter_mut().for_each(|s| *s = tid);
    Ok(tid)
}

/// Commit rate and latencies of `clients` writing `per_txn` objects each (their own).
struct CommitFigures {
    rate: f64,
    median: Duration,
    p99: Duration,
}

fn commits(
    args: &ClusterArgs,
    clients: &[Arc<Client>],
    per_txn: u64,
    progress: &mut Progress,
) -> Result<CommitFigures, String> {
    let mut rates = Vec::new();
    let mut latencies: Vec<Duration> = Vec::new();
    // Each client its own objects: no conflicts, only the cost of committing.
    let mut owned = Vec::new();
    for c in clients {
        let oids = c.new_oids(per_txn as u32).map_err(|e| e.to_string())?;
        owned.push((oids, vec![Tid::ZERO; per_txn as usize]));
    }
    for run in 1..=args.runs {
        progress.show(|| {
            format!(
                "{} clients, {per_txn} objects: run {run}/{}",
                clients.len(),
                args.runs
            )
        });
        let barrier = Arc::new(Barrier::new(clients.len()));
        let seconds = args.seconds;
        let threads: Vec<_> = clients
            .iter()
            .cloned()
            .zip(std::mem::take(&mut owned))
            .enumerate()
            .map(|(k, (c, (oids, mut serials)))| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    let mut lat = Vec::new();
                    let mut n = (k as u64) << 40;
                    while start.elapsed().as_secs_f64() < seconds {
                        let t = Instant::now();
                        commit(&c, &oids, &mut serials, n)?;
                        lat.push(t.elapsed());
                        n += per_txn;
                    }
                    Ok::<_, String>((lat, start.elapsed(), oids, serials))
                })
            })
            .collect();
        let mut done = 0usize;
        let mut longest = Duration::ZERO;
        for t in threads {
            let (lat, took, oids, serials) = t
                .join()
                .map_err(|_| "a client thread panicked".to_string())??;
            done += lat.len();
            longest = longest.max(took);
            latencies.extend(lat);
            owned.push((oids, serials));
        }
        rates.push(done as f64 / longest.as_secs_f64());
    }
    progress.clear();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    Ok(CommitFigures {
        rate: median(rates),
        median: at(0.5),
        p99: at(0.99),
    })
}

/// Loads per second of `clients` reading scattered objects among `oids` for `seconds`, and
/// the median latency of one load in `stride` (a warm load is shorter than a clock read).
fn loads(
    args: &ClusterArgs,
    clients: &[Arc<Client>],
    oids: &Arc<Vec<Oid>>,
    stride: u64,
) -> Result<(f64, Duration), String> {
    let mut rates = Vec::new();
    let mut latencies = Vec::new();
    for _ in 0..args.runs {
        let barrier = Arc::new(Barrier::new(clients.len()));
        let seconds = args.seconds;
        let threads: Vec<_> = clients
            .iter()
            .cloned()
            .enumerate()
            .map(|(k, c)| {
                let (barrier, oids) = (barrier.clone(), oids.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    let mut i = k as u64 * 7919;
                    let mut lat = Vec::new();
                    let mut n = 0u64;
                    while start.elapsed().as_secs_f64() < seconds {
                        for _ in 0..64 {
                            i = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
                            let oid = oids[(i % oids.len() as u64) as usize];
                            let t = (n % stride == 0).then(Instant::now);
                            let l = c.load(oid).map_err(|e| e.to_string())?;
                            if l.data.map(|d| d.len()) != Some(OBJECT_SIZE) {
                                return Err(format!("{oid:?}: wrong data"));
                            }
                            if let Some(t) = t {
                                lat.push(t.elapsed());
                            }
                            n += 1;
                        }
                    }
                    Ok::<_, String>((n, start.elapsed(), lat))
                })
            })
            .collect();
        let (mut n, mut longest) = (0u64, Duration::ZERO);
        for t in threads {
            let (k, took, lat) = t
                .join()
                .map_err(|_| "a client thread panicked".to_string())??;
            n += k;
            longest = longest.max(took);
            latencies.extend(lat);
        }
        rates.push(n as f64 / longest.as_secs_f64());
    }
    latencies.sort();
    let med = latencies
        .get(latencies.len() / 2)
        .copied()
        .unwrap_or_default();
    Ok((median(rates), med))
}

/// The backend's direct figures for the same workloads: single-writer commits/s at each
/// object count, and loads/s of the latest revision.
fn direct<T: Target>(
    target: &mut T,
    args: &ClusterArgs,
    progress: &mut Progress,
) -> DbResult<(Vec<f64>, f64)> {
    let mut writer = Writer::new();
    let mut rates = Vec::new();
    for per_txn in PER_TXN {
        let mut b = target.fresh()?;
        with_pt(&mut b)?;
        let what = format!("backend: commits of {per_txn} objects");
        rates.push(timed(args.runs, args.seconds, progress, &what, |i| {
            writer
                .commit(&mut b, i * per_txn..(i + 1) * per_txn)
                .map(drop)
        })?);
    }
    let mut b = target.fresh()?;
    with_pt(&mut b)?;
    let objects = args.objects.max(100);
    for start in (0..objects).step_by(100) {
        writer.commit(&mut b, start..(start + 100).min(objects))?;
    }
    let load = timed(args.runs, args.seconds, progress, "backend: loads", |i| {
        let oid = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % objects;
        b.load(neo::proto::Oid(oid), None, None).map(drop)
    })?;
    Ok((rates, load))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn run(args: &ClusterArgs) -> Result<(), String> {
    let temp = args.dir.is_none().then(|| TempDir::new("neobench-cluster"));
    let dir = args.dir.clone().unwrap_or_else(|| {
        temp.as_ref()
            .map(|t| t.path().to_owned())
            .unwrap_or_default()
    });
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mysql = Some(args.mysql.as_str());
    match args.backend {
        StorageBackend::Sqlite => run_one(args, None, &dir).map(drop),
        StorageBackend::Mysql => run_one(args, mysql, &dir).map(drop),
        StorageBackend::Both => {
            let sqlite = run_one(args, None, &dir)?;
            println!();
            let mysql = run_one(args, mysql, &dir)?;
            println!();
            println!(
                "{:>7} {:>6} {:>16} {:>16} {:>7}",
                "clients", "objs", "sqlite commits/s", "mysql commits/s", "ratio"
            );
            for (s, m) in sqlite.iter().zip(&mysql) {
                println!(
                    "{:>7} {:>6} {:>16.1} {:>16.1} {:>6.2}x",
                    s.0,
                    s.1,
                    s.2,
                    m.2,
                    m.2 / s.2
                );
            }
            Ok(())
        }
    }
}

/// One cluster's figures, its storages on SQLite files in `dir` or on MySQL databases named
/// after `mysql`; returns (clients, objects per commit, commits/s) of each commit figure.
fn run_one(
    args: &ClusterArgs,
    mysql: Option<&str>,
    dir: &std::path::Path,
) -> Result<Vec<(usize, u64, f64)>, String> {
    let mut progress = Progress::new();
    let name = if mysql.is_some() { "mysql" } else { "sqlite" };

    // The backend alone first, so that the nodes do not compete with it.
    let (direct_rates, direct_load) = match mysql {
        Some(url) => direct(
            &mut Mysql::new(&suffixed(url, "_direct")?)?,
            args,
            &mut progress,
        ),
        None => direct(&mut Sqlite::new(Some(dir.to_owned())), args, &mut progress),
    }
    .map_err(|e| format!("backend: {e}"))?;
    for (per_txn, rate) in PER_TXN.iter().zip(&direct_rates) {
        println!(
            "{name} backend direct: {rate:8.1} commits/s with {per_txn:3} objects (one writer)"
        );
    }
    println!("{name} backend direct: {direct_load:8.0} loads/s");

    progress.show(|| "starting the cluster".into());
    let cluster = LocalCluster::start(mysql, dir)?;
    let most = args.clients.iter().copied().max().unwrap_or(1);
    let clients: Vec<Arc<Client>> = (0..most)
        .map(|_| {
            cluster
                .client(neo::client::ClientConfig::DEFAULT_CACHE_SIZE)
                .map(Arc::new)
        })
        .collect::<Result<_, _>>()?;
    progress.clear();

    println!(
        "{:>7} {:>6} {:>10} {:>9} {:>9} {:>10} {:>7}",
        "clients", "objs", "commits/s", "median", "p99", "direct/s", "ratio"
    );
    let mut summary = Vec::new();
    let mut rates = Vec::new();
    for &n in &args.clients {
        for (k, per_txn) in PER_TXN.into_iter().enumerate() {
            let f = commits(args, &clients[..n], per_txn, &mut progress)?;
            rates.push((n, per_txn, f.rate));
            let ratio = f.rate / direct_rates[k];
            println!(
                "{n:>7} {per_txn:>6} {:>10.1} {:>7.2}ms {:>7.2}ms {:>10.1} {:>6.2}x",
                f.rate,
                ms(f.median),
                ms(f.p99),
                direct_rates[k],
                ratio
            );
            if (n == 1 && per_txn == 100) || (n == most && per_txn == 1) {
                summary.push(format!(
                    "{n} client(s) x {per_txn} objects: {:.0} commits/s ({ratio:.2}x direct)",
                    f.rate
                ));
            }
        }
    }

    // Loads: a database of `objects` objects, then readers without a cache (cold) and
    // readers that loaded everything once (warm).
    let objects = args.objects.max(100);
    let writer = &clients[0];
    let mut oids = Vec::new();
    while (oids.len() as u64) < objects {
        // The primary hands out at most 1,000 at a time.
        let n = (objects - oids.len() as u64).min(1000) as u32;
        oids.extend(writer.new_oids(n).map_err(|e| e.to_string())?);
    }
    let oids = Arc::new(oids);
    for (i, chunk) in oids.chunks(100).enumerate() {
        let mut serials = vec![Tid::ZERO; chunk.len()];
        commit(writer, chunk, &mut serials, (i as u64) << 32)?;
        progress.show(|| format!("writing {objects} objects: {}", i * 100));
    }
    progress.clear();
    println!(
        "{:>7} {:>12} {:>12} {:>12} {:>10} {:>7}",
        "clients", "cold loads/s", "cold median", "warm loads/s", "direct/s", "ratio"
    );
    for &n in &args.clients {
        progress.show(|| format!("{n} clients: loads"));
        let cold: Vec<Arc<Client>> = (0..n)
            .map(|_| cluster.client(0).map(Arc::new))
            .collect::<Result<_, _>>()?;
        // Connected to the storages before timing: cold means not cached, not unconnected.
        for c in &cold {
            for oid in oids.iter().take(32) {
                c.load(*oid).map_err(|e| e.to_string())?;
            }
        }
        let (cold_rate, cold_median) = loads(args, &cold, &oids, 1)?;
        drop(cold);
        let warm = &clients[..n];
        for c in warm {
            for oid in oids.iter() {
                c.load(*oid).map_err(|e| e.to_string())?;
            }
        }
        let (warm_rate, _) = loads(args, warm, &oids, 4096)?;
        progress.clear();
        println!(
            "{n:>7} {cold_rate:>12.0} {:>10.3}ms {warm_rate:>12.0} {direct_load:>10.0} {:>6.2}x",
            ms(cold_median),
            cold_rate / direct_load
        );
        if n == 1 {
            summary.push(format!(
                "1 client: {cold_rate:.0} cold loads/s ({:.3} ms), {warm_rate:.0} warm loads/s",
                ms(cold_median)
            ));
        }
    }
    for c in &clients {
        c.close();
    }
    println!("neobench cluster ({name}): {}", summary.join("; "));
    Ok(rates)
}
