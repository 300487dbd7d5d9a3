//! The client library (`neo::client`) against a real cluster of node processes on
//! 127.0.0.1 (1 master, 2 storages, replicas 1, an admin), on SQLite and on MariaDB:
//! commit, read back, load_before/load_serial; two clients commit conflicting stores (one
//! gets the conflict with the right serials, then resolves it); invalidations reach the
//! other client in commit order; kill -9 of a storage between commits loses nothing
//! acknowledged, before and after it is restarted.
//!
//! The MariaDB tests need a server on 127.0.0.1:3306 (`NEO_MYSQL_HOST` / `NEO_MYSQL_PORT`),
//! user root without a password: `scripts/mariadb.sh` starts one.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{free_port, wait_for, Node, TempDir};
use neo::client::{Address, Client, ClientError, Notice, Oid, Options, Tid, TransactionMeta};

const CLUSTER: &str = "client-test";

struct Cluster<'a> {
    dir: &'a TempDir,
    master: String,
    admin: String,
    adapter: &'static str,
    dbs: Vec<String>,
    /// master, storage 1, storage 2, admin
    nodes: Vec<Node>,
}

impl<'a> Cluster<'a> {
    fn start(dir: &'a TempDir, adapter: &'static str, dbs: Vec<String>) -> Cluster<'a> {
        let master = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let mut c = Cluster {
            dir,
            master,
            admin,
            adapter,
            dbs,
            nodes: Vec::new(),
        };
        let m = c.spawn(
            env!("CARGO_BIN_EXE_neomaster"),
            "master",
            &[
                "--bind",
                &c.master.clone(),
                "--autostart",
                "2",
                "--replicas",
                "1",
                "--partitions",
                "6",
            ],
        );
        c.nodes.push(m);
        for i in 0..2 {
            let s = c.storage(i, "");
            c.nodes.push(s);
        }
        let a = c.spawn(
            env!("CARGO_BIN_EXE_neoadmin"),
            "admin",
            &["--bind", &c.admin.clone()],
        );
        c.nodes.push(a);
        c
    }

    fn spawn(&self, program: &str, name: &str, extra: &[&str]) -> Node {
        let mut args = vec!["--cluster", CLUSTER, "--masters", &self.master];
        args.extend_from_slice(extra);
        Node::spawn(program, self.dir, name, &args)
    }

    fn storage(&self, i: usize, suffix: &str) -> Node {
        self.spawn(
            env!("CARGO_BIN_EXE_neostorage"),
            &format!("storage{}{suffix}", i + 1),
            &[
                "--bind",
                "127.0.0.1:0",
                "--adapter",
                self.adapter,
                "--database",
                &self.dbs[i],
            ],
        )
    }

    fn client(&self) -> Client {
        let (host, port) = self.master.split_once(':').unwrap();
        let mut options = Options::new(CLUSTER, vec![Address::new(host, port.parse().unwrap())]);
        options.connect_timeout = Duration::from_secs(60);
        Client::connect(options).unwrap_or_else(|e| panic!("cannot connect: {e}\n{}", self.logs()))
    }

    fn logs(&self) -> String {
        common::logs(&self.nodes)
    }

    fn neoctl(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_neoctl"))
            .arg("-a")
            .arg(&self.admin)
            .args(args)
            .output()
            .expect("neoctl runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Wait until `neoctl print pt` satisfies `pred`.
    fn wait_pt(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_for(Duration::from_secs(60), || {
            let pt = self.neoctl(&["print", "pt"]);
            pred(&pt).then_some(pt)
        })
        .unwrap_or_else(|| {
            panic!(
                "{what}: last table {}\n{}",
                self.neoctl(&["print", "pt"]),
                self.logs()
            )
        })
    }
}

/// One transaction storing `stores`; its TID.
fn commit(c: &Client, stores: &[(Oid, Tid, Vec<u8>)]) -> Result<Tid, ClientError> {
    let txn = c.tpc_begin(None)?;
    for (oid, serial, data) in stores {
        c.store(&txn, *oid, *serial, Some(data.clone()))?;
    }
    let meta = TransactionMeta {
        user: b"test".to_vec(),
        description: b"client_processes".to_vec(),
        extension: Vec::new(),
    };
    c.tpc_vote(&txn, &meta, |_| None)?;
    c.tpc_finish(txn)
}

/// The invalidations a client's callback saw: (tid, oids).
type Seen = Arc<Mutex<Vec<(Tid, Vec<Oid>)>>>;

fn watch(c: &Client) -> Seen {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    c.on_invalidation(move |n| {
        if let Notice::Invalidate { tid, oids } = n {
            s.lock().unwrap().push((*tid, oids.clone()));
        }
    });
    seen
}

fn commits_conflicts_and_invalidations(cluster: &Cluster) {
    let c1 = cluster.client();
    let c2 = cluster.client();
    let seen1 = watch(&c1);
    let seen2 = watch(&c2);

    // Commit, read back, older revisions.
    let oids = c1.new_oids(3).unwrap();
    let oid = oids[0];
    assert!(oids.windows(2).all(|w| w[0] < w[1]), "{oids:?}");
    let t1 = commit(&c1, &[(oid, Tid::ZERO, b"one".to_vec())]).unwrap();
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
    let t2 = commit(
        &c1,
        &[
            (oid, t1, b"two".to_vec()),
            (oids[1], Tid::ZERO, big.clone()),
        ],
    )
    .unwrap();
    assert!(t2 > t1);
    let l = c1.load(oid).unwrap();
    assert_eq!((l.data.as_deref(), l.serial), (Some(&b"two"[..]), t2));
    let l = c1.load_before(oid, t2).unwrap();
    assert_eq!(
        (l.data.as_deref(), l.serial, l.next_serial),
        (Some(&b"one"[..]), t1, Some(t2))
    );
    assert_eq!(
        c1.load_serial(oid, t1).unwrap().data.as_deref(),
        Some(&b"one"[..])
    );
    assert_eq!(
        c1.load_before(oid, t1).unwrap_err(),
        ClientError::NotFound(oid),
        "nothing before the first revision"
    );
    assert_eq!(
        c1.load(oids[2]).unwrap_err(),
        ClientError::DoesNotExist(oids[2])
    );
    assert_eq!(c1.last_transaction().unwrap(), Some(t2));

    // The other client: invalidations in commit order, then the same data (uncached).
    assert_eq!(c2.sync().unwrap(), Some(t2));
    {
        let seen = seen2.lock().unwrap();
        let tids: Vec<Tid> = seen.iter().map(|s| s.0).collect();
        assert_eq!(tids, vec![t1, t2], "{seen:?}");
        assert!(seen[1].1.contains(&oid) && seen[1].1.contains(&oids[1]));
    }
    assert_eq!(c2.load(oids[1]).unwrap().data, Some(big));
    assert!(
        seen1.lock().unwrap().is_empty(),
        "a client is not told about its own commits"
    );

    // Conflicting stores: c1 commits first, c2's vote finds the conflict with both serials.
    let a = c1.tpc_begin(None).unwrap();
    let b = c2.tpc_begin(None).unwrap();
    c1.store(&a, oid, t2, Some(b"a".to_vec())).unwrap();
    c2.store(&b, oid, t2, Some(b"b".to_vec())).unwrap();
    c1.tpc_vote(&a, &TransactionMeta::default(), |_| None)
        .unwrap();
    let t3 = c1.tpc_finish(a).unwrap();
    let err = c2
        .tpc_vote(&b, &TransactionMeta::default(), |_| None)
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::Conflict {
            oid,
            serial: t2,
            committed: t3
        },
        "{}",
        cluster.logs()
    );
    c2.tpc_abort(b).unwrap();

    // The same again, resolved: the resolver sees our data and the serials.
    let b = c2.tpc_begin(None).unwrap();
    c2.store(&b, oid, t2, Some(b"b".to_vec())).unwrap();
    let mut resolved = Vec::new();
    c2.tpc_vote(&b, &TransactionMeta::default(), |c| {
        resolved.push((c.oid, c.serial, c.committed));
        Some([&b"a+"[..], c.data.as_deref().unwrap_or_default()].concat())
    })
    .unwrap();
    assert_eq!(resolved, vec![(oid, t2, t3)]);
    let t4 = c2.tpc_finish(b).unwrap();
    assert!(t4 > t3);
    assert_eq!(c1.sync().unwrap(), Some(t4));
    assert_eq!(c1.load(oid).unwrap().data.as_deref(), Some(&b"a+b"[..]));
    assert_eq!(
        seen1.lock().unwrap().last().cloned(),
        Some((t4, vec![oid])),
        "c1 heard of c2's commit"
    );
    c2.sync().unwrap();
    assert_eq!(seen2.lock().unwrap().last().map(|s| s.0), Some(t3));

    // A read-only client reads and cannot write.
    let (host, port) = cluster.master.split_once(':').unwrap();
    let mut options = Options::new(CLUSTER, vec![Address::new(host, port.parse().unwrap())]);
    options.read_only = true;
    let ro = Client::connect(options).unwrap();
    assert_eq!(ro.load(oid).unwrap().serial, t4);
    assert!(matches!(
        ro.tpc_begin(None).map(|_| ()),
        Err(ClientError::ReadOnly)
    ));
    ro.close();
    assert_eq!(ro.load(oid).unwrap_err(), ClientError::Closed);
}

/// Objects rewritten together, and what was acknowledged for each.
struct Acked {
    oids: Vec<Oid>,
    serials: Vec<Tid>,
    expected: Vec<Vec<u8>>,
    round: u32,
}

impl Acked {
    fn write(&mut self, c: &Client, cluster: &Cluster) {
        self.round += 1;
        let stores: Vec<(Oid, Tid, Vec<u8>)> = self
            .oids
            .iter()
            .zip(&self.serials)
            .map(|(o, s)| (*o, *s, format!("{o:?} round {}", self.round).into_bytes()))
            .collect();
        let tid = commit(c, &stores).unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
        for (i, (_, _, data)) in stores.into_iter().enumerate() {
            self.serials[i] = tid;
            self.expected[i] = data;
        }
    }

    fn check(&self, c: &Client, what: &str, cluster: &Cluster) {
        for (i, oid) in self.oids.iter().enumerate() {
            let l = c
                .load(*oid)
                .unwrap_or_else(|e| panic!("{what}: {oid:?}: {e}\n{}", cluster.logs()));
            assert_eq!(l.data.as_ref(), Some(&self.expected[i]), "{what}: {oid:?}");
            assert_eq!(l.serial, self.serials[i], "{what}: {oid:?}");
        }
    }
}

fn kill9_loses_nothing_acknowledged(cluster: &Cluster) {
    let c = cluster.client();
    let oids = c.new_oids(20).unwrap();
    let mut acked = Acked {
        serials: vec![Tid::ZERO; oids.len()],
        expected: vec![Vec::new(); oids.len()],
        oids,
        round: 0,
    };
    for _ in 0..5 {
        acked.write(&c, cluster);
    }
    // nodes[1] is the storage on dbs[0].
    cluster.nodes[1].kill9();
    cluster.wait_pt("the killed storage's cells out of date", |pt| {
        pt.lines().skip(1).any(|l| l.contains('O'))
    });
    // Commits go on with the other storage; everything acknowledged reads back, also
    // through a client with an empty cache.
    for _ in 0..5 {
        acked.write(&c, cluster);
    }
    acked.check(&c, "the writer, one storage down", cluster);
    acked.check(&cluster.client(), "a new client, one storage down", cluster);
    // Restarted on the same database, it rejoins; reads and commits still work.
    let again = cluster.storage(0, "-again");
    wait_for(Duration::from_secs(60), || {
        let nodes = cluster.neoctl(&["print", "node", "storage"]);
        (nodes.lines().filter(|l| l.contains("RUNNING")).count() == 2).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the storage did not come back\n{}{}",
            cluster.logs(),
            again.log()
        )
    });
    for _ in 0..3 {
        acked.write(&c, cluster);
    }
    acked.check(
        &cluster.client(),
        "a new client, the storage restarted",
        cluster,
    );
}

fn sqlite_dbs(dir: &TempDir) -> Vec<String> {
    (0..2)
        .map(|i| {
            dir.path()
                .join(format!("s{i}.sqlite"))
                .display()
                .to_string()
        })
        .collect()
}

#[test]
fn sqlite_commits_conflicts_and_invalidations() {
    let dir = TempDir::new("client-sqlite");
    let cluster = Cluster::start(&dir, "SQLite", sqlite_dbs(&dir));
    commits_conflicts_and_invalidations(&cluster);
}

#[test]
fn sqlite_storage_kill9_loses_nothing_acknowledged() {
    let dir = TempDir::new("client-sqlite-kill");
    let cluster = Cluster::start(&dir, "SQLite", sqlite_dbs(&dir));
    kill9_loses_nothing_acknowledged(&cluster);
}

/// Two databases on the MariaDB server, dropped afterwards.
struct MariaDbs(Vec<String>);

impl MariaDbs {
    fn new(tag: &str) -> MariaDbs {
        MariaDbs(
            (0..2)
                .map(|i| format!("neo_client_{tag}_{}_{i}", std::process::id()))
                .collect(),
        )
    }

    fn urls(&self) -> Vec<String> {
        let host = std::env::var("NEO_MYSQL_HOST").unwrap_or_else(|_| "127.0.0.1".into());
        let port = std::env::var("NEO_MYSQL_PORT").unwrap_or_else(|_| "3306".into());
        self.0
            .iter()
            .map(|n| format!("root@{n}@{host}:{port}"))
            .collect()
    }
}

impl Drop for MariaDbs {
    fn drop(&mut self) {
        let drop = self
            .0
            .iter()
            .map(|n| format!("DROP DATABASE IF EXISTS {n};"))
            .collect::<String>();
        let _ = Command::new("mariadb")
            .args(["-uroot", "-h127.0.0.1", "-e", &drop])
            .status();
    }
}

#[test]
fn mariadb_commits_conflicts_and_invalidations() {
    let dbs = MariaDbs::new("cci");
    let dir = TempDir::new("client-mariadb");
    let cluster = Cluster::start(&dir, "MySQL", dbs.urls());
    commits_conflicts_and_invalidations(&cluster);
}

#[test]
fn mariadb_storage_kill9_loses_nothing_acknowledged() {
    let dbs = MariaDbs::new("kill");
    let dir = TempDir::new("client-mariadb-kill");
    let cluster = Cluster::start(&dir, "MySQL", dbs.urls());
    kill9_loses_nothing_acknowledged(&cluster);
}
