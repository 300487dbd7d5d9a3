//! A real cluster of node processes on 127.0.0.1: it reaches RUNNING and neoctl shows the
//! expected state, table and nodes; killing a storage with SIGKILL (replicas 1) leaves it
//! RUNNING with that storage's cells OUT_OF_DATE; `set cluster STOPPING` stops every node.
//! On SQLite, on MariaDB, and through neosimple.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{free_port, wait_for, Node, TempDir};

fn neoctl(admin: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_neoctl"))
        .arg("-a")
        .arg(admin)
        .args(args)
        .output()
        .expect("neoctl runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text.trim().to_string())
}

fn wait_ctl(
    admin: &str,
    args: &[&str],
    what: &str,
    pred: impl Fn(&str) -> bool,
    nodes: &[Node],
) -> String {
    wait_for(Duration::from_secs(30), || {
        let (ok, text) = neoctl(admin, args);
        (ok && pred(&text)).then_some(text)
    })
    .unwrap_or_else(|| {
        panic!(
            "{what}: `neoctl {}` never satisfied the test; last: {:?}\nlogs:\n{}",
            args.join(" "),
            neoctl(admin, args),
            common::logs(nodes)
        )
    })
}

/// The storage line of `print pt`'s compact table for `nid`.
fn pt_line<'a>(pt: &'a str, nid: &str) -> &'a str {
    pt.lines()
        .find(|l| l.starts_with(&format!("{nid} ")))
        .unwrap_or("")
}

/// Start a master, two storages (built by `storage_db(i)`) and an admin; check the cluster
/// as the test's doc says.
fn cluster_lifecycle(dir: &TempDir, adapter: &str, storage_db: impl Fn(usize) -> String) {
    let master = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let common_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["--cluster", "proc-test", "--masters", &master]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let args = |v: &[String]| {
        v.iter()
            .map(String::as_str)
            .collect::<Vec<&str>>()
            .join("\u{1}")
    };
    let spawn = |prog: &str, name: &str, v: Vec<String>| {
        let joined = args(&v);
        let parts: Vec<&str> = joined.split('\u{1}').collect();
        Node::spawn(prog, dir, name, &parts)
    };
    let mut nodes = vec![spawn(
        env!("CARGO_BIN_EXE_neomaster"),
        "master",
        common_args(&[
            "--bind",
            &master,
            "--autostart",
            "2",
            "--replicas",
            "1",
            "--partitions",
            "5",
        ]),
    )];
    for i in 0..2 {
        let db = storage_db(i);
        nodes.push(spawn(
            env!("CARGO_BIN_EXE_neostorage"),
            &format!("storage{}", i + 1),
            common_args(&[
                "--bind",
                "127.0.0.1:0",
                "--adapter",
                adapter,
                "--database",
                &db,
            ]),
        ));
    }
    nodes.push(spawn(
        env!("CARGO_BIN_EXE_neoadmin"),
        "admin",
        common_args(&["--bind", &admin]),
    ));

    wait_ctl(
        &admin,
        &["print", "cluster"],
        "RUNNING",
        |t| t == "RUNNING",
        &nodes,
    );
    let pt = wait_ctl(
        &admin,
        &["print", "pt"],
        "table",
        |t| t.contains("S2"),
        &nodes,
    );
    assert!(pt.starts_with("# ptid: "), "{pt}");
    assert!(pt.contains("replicas: 1"), "{pt}");
    for nid in ["S1", "S2"] {
        assert!(
            pt_line(&pt, nid).ends_with("UUUUU"),
            "{nid} should hold every partition: {pt}"
        );
    }
    let (_, node_list) = neoctl(&admin, &["print", "node"]);
    for (nid, ty) in [
        ("M1", "MASTER"),
        ("S1", "STORAGE"),
        ("S2", "STORAGE"),
        ("A1", "ADMIN"),
    ] {
        let line = node_list
            .lines()
            .find(|l| l.starts_with(nid))
            .unwrap_or_else(|| panic!("no {nid}: {node_list}"));
        assert!(line.contains(ty) && line.contains("RUNNING"), "{line}");
    }
    assert_eq!(
        neoctl(&admin, &["print", "primary"]),
        (true, "M1".to_string())
    );

    // Kill one storage as a crash: the other has a readable copy of everything.
    let victim = 1;
    let log = nodes[victim].log();
    let victim_nid = if log.contains("as S1") { "S1" } else { "S2" };
    nodes[victim].kill9();
    let pt = wait_ctl(
        &admin,
        &["print", "pt"],
        "cells outdated",
        |t| pt_line(t, victim_nid).contains("OOOOO"),
        &nodes,
    );
    assert!(
        pt_line(&pt, victim_nid).contains('D'),
        "the killed node should be DOWN: {pt}"
    );
    assert_eq!(
        neoctl(&admin, &["print", "cluster"]),
        (true, "RUNNING".to_string())
    );

    // A refused request prints its reason and fails.
    let (ok, text) = neoctl(&admin, &["drop", "S7"]);
    assert!(!ok && text.contains("unknown node S7"), "{text}");

    // Stop the whole cluster: every remaining node exits, successfully.
    let (ok, text) = neoctl(&admin, &["set", "cluster", "STOPPING"]);
    assert!(ok, "{text}");
    for (i, n) in nodes.iter().enumerate() {
        if i == victim {
            continue;
        }
        let status = wait_for(Duration::from_secs(15), || n.try_wait())
            .unwrap_or_else(|| panic!("{} did not stop:\n{}", n.name, n.log()));
        assert!(
            status.success(),
            "{} exited with {status}:\n{}",
            n.name,
            n.log()
        );
    }
}

#[test]
fn sqlite_cluster_runs_survives_a_storage_kill_and_stops() {
    let dir = TempDir::new("cluster-sqlite");
    let path = dir.path().to_path_buf();
    cluster_lifecycle(&dir, "SQLite", |i| {
        path.join(format!("s{i}.sqlite")).display().to_string()
    });
}

#[test]
fn mariadb_cluster_runs_survives_a_storage_kill_and_stops() {
    let host = std::env::var("NEO_MYSQL_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("NEO_MYSQL_PORT").unwrap_or_else(|_| "3306".into());
    let names: Vec<String> = (0..2)
        .map(|i| format!("neo_proc_{}_{i}", std::process::id()))
        .collect();
    let dir = TempDir::new("cluster-mariadb");
    let dbs = names.clone();
    cluster_lifecycle(&dir, "MySQL", |i| format!("root@{}@{host}:{port}", dbs[i]));
    let drop = names
        .iter()
        .map(|n| format!("DROP DATABASE IF EXISTS {n};"))
        .collect::<String>();
    let _ = Command::new("mariadb")
        .args(["-uroot", "-h127.0.0.1", "-e", &drop])
        .status();
}

/// The node processes neosimple started (its children), by program name.
fn children(pid: u32) -> Vec<(u32, String)> {
    let list =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    list.split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            (p, comm.trim().to_string())
        })
        .collect()
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// Start neosimple on `data`; returns it once it says the cluster is RUNNING.
fn neosimple(dir: &TempDir, name: &str, data: &std::path::Path, admin: &str) -> Node {
    let node = Node::spawn(
        env!("CARGO_BIN_EXE_neosimple"),
        dir,
        name,
        &[data.to_str().unwrap(), "--admin", admin, "--storages", "3"],
    );
    wait_for(Duration::from_secs(30), || {
        node.log().contains("is RUNNING").then_some(())
    })
    .unwrap_or_else(|| panic!("neosimple did not report RUNNING:\n{}", node.log()));
    node
}

/// neosimple runs each node in a process of its own (a stalled storage does not stall the
/// others), stops them all on SIGINT or SIGTERM, and brings the same database back.
#[test]
fn neosimple_starts_a_running_cluster_and_stops_on_sigint() {
    let dir = TempDir::new("neosimple");
    let admin = format!("127.0.0.1:{}", free_port());
    let data = dir.path().join("data");
    let node = neosimple(&dir, "neosimple", &data, &admin);
    assert!(
        node.log()
            .contains(&format!("neoctl -a {admin} print node")),
        "{}",
        node.log()
    );
    assert_eq!(
        neoctl(&admin, &["print", "cluster"]),
        (true, "RUNNING".to_string())
    );
    let (_, nodes) = neoctl(&admin, &["print", "node", "storage"]);
    assert_eq!(
        nodes.lines().filter(|l| l.contains("RUNNING")).count(),
        3,
        "{nodes}"
    );
    let kids = children(node.pid().unwrap());
    let count = |prog: &str| kids.iter().filter(|(_, c)| c == prog).count();
    assert_eq!(
        (count("neomaster"), count("neostorage"), count("neoadmin")),
        (1, 3, 1),
        "one process per node: {kids:?}"
    );
    // A storage that stalls (as on a slow disk) stalls nobody else.
    let storage = kids.iter().find(|(_, c)| c == "neostorage").unwrap().0;
    signal(storage, "-STOP");
    assert_eq!(
        neoctl(&admin, &["print", "cluster"]),
        (true, "RUNNING".to_string())
    );
    signal(storage, "-CONT");
    let (_, pt) = neoctl(&admin, &["print", "pt"]);
    assert!(pt.starts_with("# ptid: "), "{pt}");

    node.terminate();
    let status =
        wait_for(Duration::from_secs(20), || node.try_wait()).expect("neosimple stops on SIGTERM");
    assert!(status.success(), "{}", node.log());
    for (pid, prog) in &kids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{prog} ({pid}) outlived neosimple"
        );
    }
    assert!(data.join("storage1.sqlite").exists());

    // Started again on the same folder: the same database (table id and cells) is back.
    let again = neosimple(&dir, "neosimple-again", &data, &admin);
    // The same cells on the same nodes (the table id may have grown: recovery may renumber).
    let cells = |t: &str| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>();
    let ptid = |t: &str| -> u64 {
        t.strip_prefix("# ptid: ")
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let pt_again = wait_ctl(
        &admin,
        &["print", "pt"],
        &format!("the table back ({pt})"),
        |t| cells(t) == cells(&pt) && ptid(t) >= ptid(&pt),
        &[],
    );
    assert!(ptid(&pt) > 0, "{pt} / {pt_again}");
    again.interrupt();
    let status =
        wait_for(Duration::from_secs(20), || again.try_wait()).expect("neosimple stops on SIGINT");
    assert!(status.success(), "{}", again.log());
}

/// Start-up failures end neosimple with the one clear error and a non-zero status, never
/// a panic: a folder of another cluster, a database file that is not SQLite.
#[test]
fn neosimple_refuses_another_clusters_folder_or_a_corrupt_database_with_one_error() {
    let dir = TempDir::new("neosimple-errors");
    let fails = |name: &str, data: &std::path::Path| -> String {
        let node = Node::spawn(
            env!("CARGO_BIN_EXE_neosimple"),
            &dir,
            name,
            &[
                data.to_str().unwrap(),
                "--admin",
                &format!("127.0.0.1:{}", free_port()),
            ],
        );
        let status = wait_for(Duration::from_secs(30), || node.try_wait())
            .unwrap_or_else(|| panic!("neosimple did not exit:\n{}", node.log()));
        let log = node.log();
        assert!(!status.success(), "{log}");
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(!log.contains("panicked"), "{log}");
        assert_eq!(log.trim().lines().count(), 1, "one error line: {log}");
        log
    };

    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let identity = neo::db::Identity {
        cluster: "another-cluster".into(),
        nid: None,
    };
    drop(
        neo::db::sqlite::SqliteBackend::open(
            &other.join("storage1.sqlite").display().to_string(),
            &identity,
        )
        .unwrap(),
    );
    let log = fails("other-cluster", &other);
    assert!(
        log.contains("storage1.sqlite") && log.contains("another-cluster"),
        "{log}"
    );

    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(
        corrupt.join("storage1.sqlite"),
        b"not a database at all ".repeat(200),
    )
    .unwrap();
    let log = fails("corrupt", &corrupt);
    assert!(log.contains("storage1.sqlite"), "{log}");
}

/// One cluster of separate node processes on 127.0.0.1, storages on SQLite files.
struct Procs {
    dir: TempDir,
    cluster: &'static str,
    master: String,
    admin: String,
}

impl Procs {
    fn new(cluster: &'static str) -> Procs {
        Procs {
            dir: TempDir::new(cluster),
            cluster,
            master: format!("127.0.0.1:{}", free_port()),
            admin: format!("127.0.0.1:{}", free_port()),
        }
    }

    /// A master (with `--autostart 2 --replicas 1` and `partitions` partitions).
    fn master(&self, name: &str, partitions: &str) -> Node {
        let args = [
            "--cluster",
            self.cluster,
            "--bind",
            &self.master,
            "--autostart",
            "2",
            "--replicas",
            "1",
            "--partitions",
            partitions,
        ];
        Node::spawn(env!("CARGO_BIN_EXE_neomaster"), &self.dir, name, &args)
    }

    fn admin(&self) -> Node {
        let args = [
            "--cluster",
            self.cluster,
            "--masters",
            &self.master,
            "--bind",
            &self.admin,
        ];
        Node::spawn(env!("CARGO_BIN_EXE_neoadmin"), &self.dir, "admin", &args)
    }

    /// Storage `i`, on the SQLite file `s{i}.sqlite`.
    fn storage(&self, i: usize) -> Node {
        let db = self
            .dir
            .path()
            .join(format!("s{i}.sqlite"))
            .display()
            .to_string();
        let args = [
            "--cluster",
            self.cluster,
            "--masters",
            &self.master,
            "--bind",
            "127.0.0.1:0",
            "--database",
            &db,
        ];
        Node::spawn(
            env!("CARGO_BIN_EXE_neostorage"),
            &self.dir,
            &format!("storage{i}"),
            &args,
        )
    }

    /// A master, the admin and storages 1 and 2 (in that order), once RUNNING.
    fn running(&self, master: &str, partitions: &str) -> Vec<Node> {
        let nodes = vec![
            self.master(master, partitions),
            self.admin(),
            self.storage(1),
            self.storage(2),
        ];
        wait_ctl(
            &self.admin,
            &["print", "cluster"],
            "RUNNING",
            |t| t == "RUNNING",
            &nodes,
        );
        nodes
    }
}

/// An operator grows and shrinks the cluster: a new storage waits PENDING, `add` lets it
/// serve, `tweak` gives it cells (OUT_OF_DATE: data must come to it first), a second tweak
/// changes nothing, `kill` stops it, `drop` removes it; refused commands say why.
#[test]
fn operators_add_tweak_kill_and_drop_storages() {
    let c = Procs::new("ops");
    let admin = c.admin.as_str();
    let mut nodes = c.running("master", "4");
    // A third storage joins a running cluster: PENDING, no cells.
    nodes.push(c.storage(3));
    wait_ctl(
        admin,
        &["print", "node", "storage"],
        "S3 pending",
        |t| t.contains("S3") && t.contains("PENDING"),
        &nodes,
    );
    let (ok, text) = neoctl(admin, &["tweak", "-n"]);
    assert!(
        ok && text == "No change done.",
        "pending nodes are left out of a tweak: {text}"
    );
    assert_eq!(
        neoctl(admin, &["add", "all"]),
        (true, "Nodes added: S3".to_string())
    );
    wait_ctl(
        admin,
        &["print", "node", "storage"],
        "S3 running",
        |t| t.lines().filter(|l| l.contains("RUNNING")).count() == 3,
        &nodes,
    );

    // Tweak: 4 partitions x 2 copies over 3 nodes. S3 gets cells to replicate; the cells
    // it takes stay as FEEDING sources on the others until it has the data.
    let (ok, table) = neoctl(admin, &["tweak"]);
    assert!(ok, "{table}");
    let pt = wait_ctl(
        admin,
        &["print", "pt"],
        "S3 has cells",
        |t| pt_line(t, "S3").contains('O'),
        &nodes,
    );
    let s3 = pt_line(&pt, "S3");
    assert!(
        !s3.contains('U') && !s3.contains('F'),
        "new cells are OUT_OF_DATE: {pt}"
    );
    assert!(
        pt.contains('F'),
        "moved cells are kept as FEEDING sources: {pt}"
    );
    let (ok, text) = neoctl(admin, &["tweak"]);
    assert!(
        ok && text == "No change done.",
        "a second tweak changes nothing: {text}"
    );
    let (_, detail) = neoctl(admin, &["print", "pt", "0", "1"]);
    assert!(
        detail.contains("000 | ") && detail.contains("001 | ") && !detail.contains("002 | "),
        "{detail}"
    );

    // Refusals.
    let (ok, text) = neoctl(admin, &["drop", "S3"]);
    assert!(
        !ok && text.contains("running"),
        "a running node cannot be dropped: {text}"
    );
    let (ok, text) = neoctl(admin, &["kill", "M1"]);
    assert!(!ok && text.contains("primary"), "{text}");
    let (ok, text) = neoctl(admin, &["set", "cluster", "RUNNING"]);
    assert!(!ok && text.contains("cannot switch"), "{text}");

    // Kill S3 (its cells hold nothing readable): it is told to stop, and exits.
    let (ok, text) = neoctl(admin, &["kill", "S3"]);
    assert!(ok, "{text}");
    let status =
        wait_for(Duration::from_secs(15), || nodes[4].try_wait()).expect("S3 stops when killed");
    assert!(status.success(), "{}", nodes[4].log());
    wait_ctl(
        admin,
        &["print", "node", "storage"],
        "S3 down",
        |t| t.lines().any(|l| l.starts_with("S3") && l.contains("DOWN")),
        &nodes,
    );

    // Drop it: its cells go, the FEEDING ones become UP_TO_DATE again.
    let (ok, text) = neoctl(admin, &["drop", "S3"]);
    assert!(ok, "{text}");
    let pt = wait_ctl(
        admin,
        &["print", "pt"],
        "S3 gone",
        |t| pt_line(t, "S3").is_empty(),
        &nodes,
    );
    assert!(
        !pt.contains('F') && pt_line(&pt, "S1").ends_with("UUUU"),
        "{pt}"
    );
    assert_eq!(
        neoctl(admin, &["print", "cluster"]),
        (true, "RUNNING".to_string())
    );

    let (ok, text) = neoctl(admin, &["set", "replicas", "0"]);
    assert!(ok, "{text}");
    wait_ctl(
        admin,
        &["print", "pt"],
        "replicas 0",
        |t| t.contains("replicas: 0"),
        &nodes,
    );
    assert!(neoctl(admin, &["set", "cluster", "STOPPING"]).0);
}

/// The split-brain rule on real processes: a primary restarted while a storage is away
/// stays in RECOVERING; `neoctl start` lets it start with the storages that are there.
#[test]
fn a_new_primary_waits_for_every_storage_unless_told_to_start() {
    let c = Procs::new("split");
    let admin = c.admin.as_str();
    let mut nodes = c.running("master-0", "3");
    // The master and one storage go away; the master comes back, the storage does not.
    nodes[0].kill9();
    nodes[3].kill9();
    nodes[0] = c.master("master-1", "3");
    wait_ctl(
        admin,
        &["print", "cluster"],
        "RECOVERING",
        |t| t == "RECOVERING",
        &nodes,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        neoctl(admin, &["print", "cluster"]),
        (true, "RECOVERING".to_string()),
        "it must wait for the missing storage"
    );

    let (ok, text) = neoctl(admin, &["start"]);
    assert!(ok, "{text}");
    wait_ctl(
        admin,
        &["print", "cluster"],
        "RUNNING after start",
        |t| t == "RUNNING",
        &nodes,
    );
    let pt = wait_ctl(
        admin,
        &["print", "pt"],
        "the missing storage outdated",
        |t| t.lines().any(|l| l.contains("OOO")),
        &nodes,
    );
    assert!(
        pt.lines().any(|l| l.ends_with("UUU")),
        "the storage there serves every partition: {pt}"
    );
    assert!(neoctl(admin, &["set", "cluster", "STOPPING"]).0);
}
