//! The MySQL/MariaDB backend against a real server: the conformance suite, plus what only
//! this backend has (values split in pieces, the server's packet limit, the server lock).
//!
//! The server is 127.0.0.1:3306 (`NEO_MYSQL_HOST` / `NEO_MYSQL_PORT` override it), user root
//! without a password; each test works in its own database, dropped afterwards. Without a
//! server the tests fail: run `scripts/mariadb.sh` first (CI does).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder};
use sha1::{Digest, Sha1};

use neo::db::conformance::{identity, Fixture};
use neo::db::mysql::{MysqlBackend, REQUIRED_MAX_ALLOWED_PACKET};
use neo::db::{Backend, Cell, DbError, DbResult, Identity, ObjectData, TxnMeta, Value};
use neo::proto::{CellState, Nid, Oid, Ptid, Tid};

/// Tests that change server-wide settings take it for writing; every database takes it for
/// reading, so no test runs while the server is reconfigured.
static SERVER_SETTINGS: RwLock<()> = RwLock::new(());

fn server() -> (String, u16) {
    let host = std::env::var("NEO_MYSQL_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("NEO_MYSQL_PORT")
        .ok()
        .map(|p| p.parse().expect("NEO_MYSQL_PORT is a port number"))
        .unwrap_or(3306);
    (host, port)
}

/// A root connection to the server, for setting up and inspecting.
fn admin() -> Conn {
    let (host, port) = server();
    let opts = OptsBuilder::new()
        .ip_or_hostname(Some(host.clone()))
        .tcp_port(port)
        .prefer_socket(false)
        .user(Some("root"));
    Conn::new(opts).unwrap_or_else(|e| {
        panic!(
            "no MySQL/MariaDB server answers on {host}:{port} as root without a password \
             ({e}); start one with scripts/mariadb.sh"
        )
    })
}

/// A fresh database on the server, dropped with the fixture.
struct MysqlFixture {
    database: String,
    _settings: Option<RwLockReadGuard<'static, ()>>,
}

impl MysqlFixture {
    fn new() -> Self {
        let guard = SERVER_SETTINGS
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Self::create(Some(guard))
    }

    /// For a test that holds the settings lock itself.
    fn create(guard: Option<RwLockReadGuard<'static, ()>>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let database = format!(
            "neotest_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        admin()
            .query_drop(format!("DROP DATABASE IF EXISTS {database}"))
            .unwrap();
        MysqlFixture {
            database,
            _settings: guard,
        }
    }

    fn url(&self) -> String {
        let (host, port) = server();
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        format!("root@{}@{host}:{port}", self.database)
    }

    fn admin_in(&self) -> Conn {
        let mut conn = admin();
        conn.select_db(&self.database).unwrap();
        conn
    }

    fn count(&self, table: &str) -> u64 {
        self.admin_in()
            .query_first(format!("SELECT COUNT(*) FROM {table}"))
            .unwrap()
            .unwrap()
    }
}

impl Drop for MysqlFixture {
    fn drop(&mut self) {
        let _ = admin().query_drop(format!("DROP DATABASE IF EXISTS {}", self.database));
    }
}

impl Fixture for MysqlFixture {
    type Backend = MysqlBackend;

    fn open(&self, identity: &Identity) -> DbResult<MysqlBackend> {
        MysqlBackend::open(&self.url(), identity)
    }

    fn raw_exec(&self, sql: &str) {
        self.admin_in().query_drop(sql).unwrap();
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut conn = self.admin_in();
        let tables: Vec<String> = conn
            .exec(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = ? \
                 ORDER BY table_name",
                (&self.database,),
            )
            .unwrap();
        let mut out = Vec::new();
        for table in tables {
            let (_, create): (String, String) = conn
                .query_first(format!("SHOW CREATE TABLE {table}"))
                .unwrap()
                .unwrap();
            out.push(format!("{table}: {create}"));
            let mut rows: Vec<String> = conn
                .query::<mysql::Row, _>(format!("SELECT * FROM {table}"))
                .unwrap()
                .into_iter()
                .map(|row| format!("{table} {:?}", row.unwrap()))
                .collect();
            rows.sort();
            out.extend(rows);
        }
        out.join("\n").into_bytes()
    }

    fn rows(&self, backend: &MysqlBackend, table: &str) -> u64 {
        backend.row_counts().expect("row counts")[table]
    }
}

neo::conformance_tests!(MysqlFixture::new());

fn with_pt(b: &mut MysqlBackend) {
    let cells = [Cell {
        partition: 0,
        nid: Nid(1),
        state: CellState::UpToDate,
    }];
    b.change_partition_table(Ptid(1), 0, &cells, true).unwrap();
}

fn commit_value(b: &mut MysqlBackend, tid: u64, oid: u64, bytes: &[u8]) {
    let ttid = Tid(tid - 1);
    let data = ObjectData {
        compression: 0,
        checksum: Sha1::digest(bytes).into(),
        data: bytes.to_vec(),
    };
    b.store(ttid, Oid(oid), Value::Data(data)).unwrap();
    b.vote(ttid, Some(&TxnMeta::default())).unwrap();
    b.lock(ttid, Tid(tid)).unwrap();
    b.unlock(ttid, Tid(tid)).unwrap();
}

#[test]
fn big_values_are_stored_in_pieces() {
    let f = MysqlFixture::new();
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b);
    let big: Vec<u8> = (0..(64 << 20) + 5)
        .map(|i: usize| (i % 253) as u8)
        .collect();
    commit_value(&mut b, 100, 1, &big);
    // 64 MiB + 5 bytes: the first 8 MiB in `data`, then 7 full pieces and one of 5 bytes.
    assert_eq!(f.count("bigdata"), 8);
    let (size, first): (u64, u64) = f
        .admin_in()
        .query_first("SELECT size, LENGTH(value) FROM data")
        .unwrap()
        .unwrap();
    assert_eq!((size, first), (big.len() as u64, 8 << 20));
    b.delete_object(Oid(1), Tid(100)).unwrap();
    b.commit().unwrap();
    assert_eq!((f.count("data"), f.count("bigdata")), (0, 0));
}

/// Sets the server's max_allowed_packet and puts the old value back when dropped, even if
/// the test fails.
struct PacketSetting {
    old: u64,
}

impl PacketSetting {
    fn set(bytes: u64) -> Self {
        let mut conn = admin();
        let old = conn
            .query_first("SELECT @@GLOBAL.max_allowed_packet")
            .unwrap()
            .unwrap();
        conn.query_drop(format!("SET GLOBAL max_allowed_packet = {bytes}"))
            .unwrap();
        PacketSetting { old }
    }
}

impl Drop for PacketSetting {
    fn drop(&mut self) {
        admin()
            .query_drop(format!("SET GLOBAL max_allowed_packet = {}", self.old))
            .expect("restore max_allowed_packet");
    }
}

#[test]
fn a_server_with_small_packets_is_refused() {
    let _exclusive = SERVER_SETTINGS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let f = MysqlFixture::create(None);
    let required = REQUIRED_MAX_ALLOWED_PACKET;
    {
        let _small = PacketSetting::set(required - 1024);
        match f.open(&identity()) {
            Err(DbError::Unusable(message)) => {
                assert!(
                    message.contains(&(required - 1024).to_string()),
                    "{message}"
                );
                assert!(message.contains(&required.to_string()), "{message}");
            }
            other => panic!("expected Unusable, got {:?}", other.err()),
        }
        let exists: Option<String> = admin()
            .exec_first(
                "SELECT schema_name FROM information_schema.schemata WHERE schema_name = ?",
                (&f.database,),
            )
            .unwrap();
        assert_eq!(exists, None, "the refused open created the database");
    }
    // Exactly the required size is enough, for the largest statements too.
    let _exact = PacketSetting::set(required);
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b);
    let piece: Vec<u8> = (0..(8 << 20) + 1).map(|i: usize| (i % 7) as u8).collect();
    commit_value(&mut b, 100, 1, &piece);
    let largest = TxnMeta {
        user: vec![1; neo::db::MAX_TXN_TEXT],
        description: vec![2; neo::db::MAX_TXN_TEXT],
        extension: vec![3; neo::db::MAX_TXN_TEXT],
        oids: (0..neo::db::MAX_TXN_OIDS as u64).map(Oid).collect(),
    };
    b.vote(Tid(199), Some(&largest)).unwrap();
    b.lock(Tid(199), Tid(200)).unwrap();
    b.unlock(Tid(199), Tid(200)).unwrap();
    assert_eq!(b.transaction(Tid(200)).unwrap().unwrap().meta, largest);
    match b.load(Oid(1), None, None).unwrap() {
        neo::db::Load::Found(loaded) => assert!(loaded.data == piece),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_server_lock_belongs_to_the_connection() {
    let f = MysqlFixture::new();
    let b = f.open(&identity()).unwrap();
    let name = format!("{}.neostorage", f.database);
    let held: Option<Option<u64>> = admin()
        .exec_first("SELECT IS_USED_LOCK(?)", (&name,))
        .unwrap();
    assert!(matches!(held, Some(Some(_))), "{name} is not held");
    assert_eq!(
        f.open(&identity()).err(),
        Some(DbError::Locked(f.database.clone()))
    );
    // Another database is another lock.
    let g = MysqlFixture::new();
    let other = g.open(&identity()).unwrap();
    drop(b);
    let reopened = f.open(&identity()).unwrap();
    drop((reopened, other));
}

#[test]
fn connection_errors_are_reported() {
    match MysqlBackend::open("root@neo@127.0.0.1:1", &identity()) {
        Err(DbError::Unusable(message)) => {
            assert!(
                message.contains("cannot connect to MySQL at 127.0.0.1:1"),
                "{message}"
            )
        }
        other => panic!("expected Unusable, got {:?}", other.err()),
    }
    match MysqlBackend::open("root@ne o", &identity()) {
        Err(DbError::Unusable(message)) => assert!(message.contains("invalid MySQL database")),
        other => panic!("expected Unusable, got {:?}", other.err()),
    }
}

/// Kill the backend's session from another one, as a server restart or `wait_timeout` would.
fn kill(b: &MysqlBackend) {
    let id = b.engine().connection_id();
    admin().query_drop(format!("KILL {id}")).unwrap();
}

#[test]
fn a_lost_connection_is_reestablished_when_nothing_is_pending() {
    let f = MysqlFixture::new();
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b);
    commit_value(&mut b, 10, 1, b"before");
    // Nothing pending: the next read reconnects (with the lock) and is served.
    kill(&b);
    assert!(matches!(
        b.load(Oid(1), None, None).unwrap(),
        neo::db::Load::Found(l) if l.data == b"before"
    ));
    assert_eq!(b.engine().reconnects(), 1);
    let name = format!("{}.neostorage", f.database);
    let holder: Option<Option<u64>> = admin()
        .exec_first("SELECT IS_USED_LOCK(?)", (&name,))
        .unwrap();
    assert_eq!(
        holder,
        Some(Some(b.engine().connection_id() as u64)),
        "the new session holds the lock"
    );
    // And a write that starts a transaction on a lost connection is run again there.
    kill(&b);
    commit_value(&mut b, 20, 2, b"after");
    assert_eq!(b.engine().reconnects(), 2);
    assert!(matches!(
        b.load(Oid(2), None, None).unwrap(),
        neo::db::Load::Found(l) if l.data == b"after"
    ));
}

#[test]
fn a_lost_connection_with_pending_changes_fails_rather_than_lose_them() {
    let f = MysqlFixture::new();
    let mut b = f.open(&identity()).unwrap();
    with_pt(&mut b);
    // A value too big to wait in memory for the vote: its store writes its data row and
    // holds the object until vote, so a write is pending, uncommitted.
    let held = vec![7; neo::db::sql::HELD_TXN_BYTES + 1];
    let data = ObjectData {
        compression: 0,
        checksum: Sha1::digest(&held).into(),
        data: held,
    };
    b.store(Tid(99), Oid(3), Value::Data(data)).unwrap();
    kill(&b);
    let e = b.vote(Tid(99), Some(&TxnMeta::default())).unwrap_err();
    assert!(
        matches!(e, DbError::ConnectionLost(_)) && e.is_fatal(),
        "expected a fatal ConnectionLost, got {e:?}"
    );
    assert_eq!(b.engine().reconnects(), 0);
    drop(b);
    // Nothing of it was committed: the vote did not happen.
    let b = f.open(&identity()).unwrap();
    assert!(b.locked_transactions().unwrap().is_empty());
}
