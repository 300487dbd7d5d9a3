//! The SQLite backend: a storage node's database in one file (production) or in memory (the
//! simulator), with the SQL core of `sql.rs`.
//!
//! Files: [`SqliteBackend::open`] takes a path or a `file:` URI whose query may set the
//! pragmas `cache_size`, `journal_mode` (default WAL) and `synchronous` (default FULL: a
//! vote must survive a power cut). The backend holds an exclusive advisory lock (`flock`) on
//! the database file for its whole life, so a second storage node on the same file, in this
//! process or another, gets `DbError::Locked`. Within one process the check is also made
//! against a registry before the file is even opened: closing a descriptor of a file drops
//! every POSIX lock the process holds on it, SQLite's own included.
//!
//! Memory: [`SqliteBackend::memory`] opens the shared-cache in-memory database
//! `file:NAME?mode=memory&cache=shared`. SQLite frees such a database when its last
//! connection closes, so the simulator keeps a [`MemoryAnchor`] per storage node:
//! - a process crash is modelled by dropping the backend: its uncommitted work is rolled
//!   back and its in-memory state (held stores) is lost, while the anchor keeps the committed
//!   database for the next `memory(NAME)`, which then cleans up like a restarted process;
//! - a restart with a wiped disk drops the anchor too (with no backend open), and the next
//!   `memory(NAME)` finds an empty database.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params_from_iter, Connection, OpenFlags, ToSql};

use super::sql::{
    check_identity, corrupt, percent_decode, Engine, Field, NewData, Param, Row, SqlBackend,
};
use super::{DbError, DbResult, Identity};

/// A storage node's database in SQLite.
pub type SqliteBackend = SqlBackend<Sqlite>;

/// The SQLite engine: the connection, and the claim on the database that keeps a second
/// backend out. Fields drop in order: the connection closes before the lock is released.
pub struct Sqlite {
    conn: Connection,
    _claim: Claim,
}

fn err(e: rusqlite::Error) -> DbError {
    DbError::Backend(format!("SQLite: {e}"))
}

/// A database in use by a backend of this process.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    File { dev: u64, ino: u64 },
    Memory(String),
}

static OPEN: Mutex<BTreeSet<Key>> = Mutex::new(BTreeSet::new());

fn registry() -> MutexGuard<'static, BTreeSet<Key>> {
    // A panic elsewhere while holding the registry leaves a usable set.
    OPEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// This process's claim on a database: a registry entry and, for a file, its `flock`.
struct Claim {
    key: Key,
    file: Option<File>,
}

impl Claim {
    fn file(path: &str) -> DbResult<Claim> {
        let locked = || DbError::Locked(path.to_owned());
        let io = |e: std::io::Error| DbError::Backend(format!("{path}: {e}"));
        let mut open = registry();
        // Look before opening: our descriptor must never be closed while a connection of
        // this process has the file open (see the module doc).
        if let Ok(meta) = std::fs::metadata(path) {
            if open.contains(&Key::File {
                dev: meta.dev(),
                ino: meta.ino(),
            }) {
                return Err(locked());
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        // `File::try_lock` is stable since Rust 1.89; the toolchain is newer than the crate's
        // declared rust-version.
        #[allow(clippy::incompatible_msrv)]
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(locked()),
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let meta = file.metadata().map_err(io)?;
        let key = Key::File {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        open.insert(key.clone());
        Ok(Claim {
            key,
            file: Some(file),
        })
    }

    fn memory(name: &str) -> DbResult<Claim> {
        let key = Key::Memory(name.to_owned());
        if !registry().insert(key.clone()) {
            return Err(DbError::Locked(format!("memory:{name}")));
        }
        Ok(Claim { key, file: None })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Unlock before leaving the registry, so that whoever finds the entry gone also
        // finds the file unlocked.
        self.file.take();
        registry().remove(&self.key);
    }
}

/// What `SqliteBackend::open` was given: the file and the pragmas to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteTarget {
    pub path: String,
    pub cache_size: Option<i64>,
    pub journal_mode: String,
    pub synchronous: String,
}

/// Parse a database path, or a `file:` URI with `cache_size`, `journal_mode` and
/// `synchronous` query parameters.
pub fn parse_target(database: &str) -> Result<SqliteTarget, String> {
    let mut target = SqliteTarget {
        path: database.to_owned(),
        cache_size: None,
        journal_mode: "WAL".into(),
        synchronous: "FULL".into(),
    };
    if let Some(uri) = database.strip_prefix("file:") {
        if uri.contains('#') {
            return Err(format!("{database:?}: a fragment (#) is not allowed"));
        }
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let path = match path.strip_prefix("//") {
            Some(rest) => {
                let slash = rest.find('/').unwrap_or(rest.len());
                let authority = &rest[..slash];
                if !authority.is_empty() && authority != "localhost" {
                    return Err(format!(
                        "{database:?}: only local files (no host {authority:?})"
                    ));
                }
                &rest[slash..]
            }
            None => path,
        };
        target.path = percent_decode(path)?;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{database:?}: {pair:?} is not KEY=VALUE"))?;
            let value = percent_decode(value)?.to_ascii_uppercase();
            let one_of = |allowed: &[&str]| {
                if allowed.contains(&value.as_str()) {
                    Ok(value.clone())
                } else {
                    Err(format!(
                        "{database:?}: {key}={value} (one of {})",
                        allowed.join(", ")
                    ))
                }
            };
            match key {
                "cache_size" => {
                    target.cache_size = Some(value.parse().map_err(|_| {
                        format!("{database:?}: cache_size={value} is not an integer")
                    })?)
                }
                "journal_mode" => {
                    target.journal_mode =
                        one_of(&["DELETE", "TRUNCATE", "PERSIST", "MEMORY", "WAL", "OFF"])?
                }
                "synchronous" => {
                    target.synchronous =
                        one_of(&["OFF", "NORMAL", "FULL", "EXTRA", "0", "1", "2", "3"])?
                }
                _ => {
                    return Err(format!(
                        "{database:?}: unknown parameter {key:?} \
                         (accepted: cache_size, journal_mode, synchronous)"
                    ))
                }
            }
        }
    }
    if target.path.is_empty() {
        return Err(format!("{database:?}: no file name"));
    }
    Ok(target)
}

/// The URI of a named in-memory database shared by the connections of this process.
fn memory_uri(name: &str) -> DbResult<String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return Err(DbError::Unusable(format!(
            "in-memory database name {name:?}: use letters, digits, '_', '-' and '.'"
        )));
    }
    Ok(format!("file:{name}?mode=memory&cache=shared"))
}

fn open_memory(name: &str) -> DbResult<Connection> {
    Connection::open_with_flags(
        memory_uri(name)?,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)
}

/// Keeps a named in-memory database alive while no backend has it open (see the module doc).
pub struct MemoryAnchor {
    _conn: Connection,
}

impl MemoryAnchor {
    pub fn new(name: &str) -> DbResult<MemoryAnchor> {
        Ok(MemoryAnchor {
            _conn: open_memory(name)?,
        })
    }
}

impl SqlBackend<Sqlite> {
    /// Open (creating it if needed) the database in a file; see the module doc.
    pub fn open(path_or_uri: &str, identity: &Identity) -> DbResult<Self> {
        let target = parse_target(path_or_uri).map_err(DbError::Unusable)?;
        let claim = Claim::file(&target.path)?;
        let conn = Connection::open_with_flags(
            &target.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        // These pragmas only configure the connection; nothing is written yet.
        if let Some(pages) = target.cache_size {
            conn.pragma_update(None, "cache_size", pages).map_err(err)?;
        }
        conn.pragma_update(None, "synchronous", &target.synchronous)
            .map_err(err)?;
        let engine = Sqlite::new(conn, claim)?;
        let initialised = check_identity(&engine, identity)?;
        // Switching the journal mode writes the file header: only once the file is ours.
        let mode: String = engine
            .conn
            .pragma_update_and_check(None, "journal_mode", &target.journal_mode, |row| row.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case(&target.journal_mode) {
            return Err(DbError::Unusable(format!(
                "SQLite kept journal_mode={mode} instead of {}",
                target.journal_mode
            )));
        }
        SqlBackend::start(engine, identity, initialised)
    }

    /// Open (creating it if needed) the named in-memory database; see the module doc.
    pub fn memory(name: &str, identity: &Identity) -> DbResult<Self> {
        let claim = Claim::memory(name)?;
        let engine = Sqlite::new(open_memory(name)?, claim)?;
        let initialised = check_identity(&engine, identity)?;
        SqlBackend::start(engine, identity, initialised)
    }
}

impl Sqlite {
    fn new(conn: Connection, claim: Claim) -> DbResult<Sqlite> {
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Sqlite {
            conn,
            _claim: claim,
        })
    }

    fn begin(&self) -> DbResult<()> {
        if self.conn.is_autocommit() {
            self.conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
        }
        Ok(())
    }
}

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Param::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Param::U64(v) => ToSqlOutput::Owned(rusqlite::types::Value::Integer(
                i64::try_from(v).map_err(|_| {
                    rusqlite::Error::ToSqlConversionFailure(
                        format!("{v} exceeds SQLite's integers (at most 2^63-1)").into(),
                    )
                })?,
            )),
            Param::I64(v) => ToSqlOutput::Owned(rusqlite::types::Value::Integer(v)),
            Param::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
            Param::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
        })
    }
}

impl Engine for Sqlite {
    const MAX_INT: u64 = i64::MAX as u64;
    const DATA_SIZE: &'static str = "LENGTH(data.value)";
    const SCHEMA: &'static [&'static str] = &[
        "CREATE TABLE config (name TEXT NOT NULL PRIMARY KEY, value TEXT) WITHOUT ROWID",
        // state: CellState's index; tid: an own OUT_OF_DATE cell's replication mark.
        "CREATE TABLE pt (`partition` INTEGER NOT NULL, nid INTEGER NOT NULL, \
         state INTEGER NOT NULL, tid INTEGER, PRIMARY KEY (`partition`, nid)) WITHOUT ROWID",
        "CREATE TABLE trans (`partition` INTEGER NOT NULL, tid INTEGER NOT NULL, \
         packed INTEGER NOT NULL, oids BLOB NOT NULL, user BLOB NOT NULL, \
         description BLOB NOT NULL, ext BLOB NOT NULL, ttid INTEGER NOT NULL, \
         PRIMARY KEY (`partition`, tid)) WITHOUT ROWID",
        "CREATE INDEX _trans_i1 ON trans (ttid)",
        "CREATE TABLE obj (`partition` INTEGER NOT NULL, oid INTEGER NOT NULL, \
         tid INTEGER NOT NULL, data_id INTEGER, value_tid INTEGER, \
         PRIMARY KEY (`partition`, oid, tid)) WITHOUT ROWID",
        "CREATE INDEX _obj_i1 ON obj (`partition`, tid, oid)",
        "CREATE INDEX _obj_i2 ON obj (data_id)",
        "CREATE TABLE data (id INTEGER PRIMARY KEY, hash BLOB NOT NULL, \
         compression INTEGER NOT NULL, value BLOB NOT NULL)",
        "CREATE UNIQUE INDEX _data_i1 ON data (hash, compression)",
        "CREATE TABLE ttrans (ttid INTEGER NOT NULL PRIMARY KEY, tid INTEGER, \
         packed INTEGER NOT NULL, oids BLOB NOT NULL, user BLOB NOT NULL, \
         description BLOB NOT NULL, ext BLOB NOT NULL)",
        "CREATE TABLE tobj (tid INTEGER NOT NULL, oid INTEGER NOT NULL, data_id INTEGER, \
         value_tid INTEGER, PRIMARY KEY (tid, oid)) WITHOUT ROWID",
        "CREATE INDEX _tobj_i1 ON tobj (data_id)",
        "CREATE TABLE tdata (ttid INTEGER NOT NULL, oid INTEGER NOT NULL, \
         data_id INTEGER NOT NULL, PRIMARY KEY (ttid, oid)) WITHOUT ROWID",
        "CREATE INDEX _tdata_i1 ON tdata (data_id)",
    ];

    fn exec(&self, sql: &str, params: &[Param]) -> DbResult<()> {
        self.begin()?;
        let mut statement = self.conn.prepare_cached(sql).map_err(err)?;
        statement.execute(params_from_iter(params)).map_err(err)?;
        Ok(())
    }

    fn query(&self, sql: &str, params: &[Param]) -> DbResult<Vec<Row>> {
        let mut statement = self.conn.prepare_cached(sql).map_err(err)?;
        let width = statement.column_count();
        let mut rows = statement.query(params_from_iter(params)).map_err(err)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(err)? {
            let mut fields = Vec::with_capacity(width);
            for i in 0..width {
                fields.push(match row.get_ref(i).map_err(err)? {
                    ValueRef::Null => Field::Null,
                    ValueRef::Integer(v) => Field::Int(v as i128),
                    ValueRef::Real(v) => return Err(corrupt(format!("the real number {v}"))),
                    ValueRef::Text(b) | ValueRef::Blob(b) => Field::Bytes(b.to_vec()),
                });
            }
            out.push(fields);
        }
        Ok(out)
    }

    fn commit(&self) -> DbResult<()> {
        if !self.conn.is_autocommit() {
            self.conn.execute_batch("COMMIT").map_err(err)?;
        }
        Ok(())
    }

    fn table_exists(&self, table: &str) -> DbResult<bool> {
        let rows = self.query(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
            &[Param::Text(table)],
        )?;
        Ok(!rows.is_empty())
    }

    fn insert_data(&self, rows: &[NewData]) -> DbResult<()> {
        let params: Vec<Param> = rows
            .iter()
            .flat_map(|row| {
                [
                    Param::U64(row.id),
                    Param::Bytes(row.checksum),
                    Param::U64(row.compression as u64),
                    Param::Bytes(row.data),
                ]
            })
            .collect();
        self.insert_rows(
            "INSERT INTO data (id, hash, compression, value) VALUES",
            4,
            &params,
        )
    }

    fn delete_data(&self, ids: &[u64]) -> DbResult<()> {
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        self.exec(
            &format!("DELETE FROM data WHERE id IN ({})", list.join(",")),
            &[],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::conformance::{Fixture, TempDir};
    use crate::db::Backend;
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{RwLock, RwLockReadGuard};

    /// A child process inherits every descriptor between its fork and its exec, and with
    /// them the `flock` of any database open in another test thread: a test that spawns
    /// processes takes this for writing, every file database for reading.
    static SPAWNING: RwLock<()> = RwLock::new(());

    /// A database file in a fresh temporary directory.
    pub struct FileFixture {
        dir: TempDir,
        _spawning: Option<RwLockReadGuard<'static, ()>>,
    }

    impl FileFixture {
        pub fn new() -> Self {
            let guard = SPAWNING.read().unwrap_or_else(|p| p.into_inner());
            FileFixture {
                dir: TempDir::new("neo-sqlite"),
                _spawning: Some(guard),
            }
        }

        /// For the test that holds `SPAWNING` itself.
        fn unguarded() -> Self {
            FileFixture {
                dir: TempDir::new("neo-sqlite"),
                _spawning: None,
            }
        }

        fn path(&self) -> String {
            self.dir
                .path()
                .join("db.sqlite")
                .to_string_lossy()
                .into_owned()
        }

        fn raw(&self) -> Connection {
            Connection::open(self.path()).expect("raw connection")
        }
    }

    impl Fixture for FileFixture {
        type Backend = SqliteBackend;

        fn open(&self, identity: &Identity) -> DbResult<SqliteBackend> {
            SqliteBackend::open(&self.path(), identity)
        }

        fn raw_exec(&self, sql: &str) {
            self.raw().execute_batch(sql).expect(sql);
        }

        fn snapshot(&self) -> Vec<u8> {
            std::fs::read(self.path()).expect("database file")
        }

        fn rows(&self, backend: &SqliteBackend, table: &str) -> u64 {
            backend.row_counts().expect("row counts")[table]
        }
    }

    /// A named in-memory database kept alive by an anchor, as the simulator uses it.
    pub struct MemoryFixture {
        name: String,
        _anchor: MemoryAnchor,
    }

    impl MemoryFixture {
        pub fn new() -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let name = format!(
                "conformance-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            MemoryFixture {
                _anchor: MemoryAnchor::new(&name).expect("anchor"),
                name,
            }
        }
    }

    impl Fixture for MemoryFixture {
        type Backend = SqliteBackend;

        fn open(&self, identity: &Identity) -> DbResult<SqliteBackend> {
            SqliteBackend::memory(&self.name, identity)
        }

        fn raw_exec(&self, sql: &str) {
            open_memory(&self.name)
                .expect("raw connection")
                .execute_batch(sql)
                .expect(sql);
        }

        fn snapshot(&self) -> Vec<u8> {
            dump(&open_memory(&self.name).expect("raw connection"))
        }

        fn rows(&self, backend: &SqliteBackend, table: &str) -> u64 {
            backend.row_counts().expect("row counts")[table]
        }
    }

    /// The schema and every row of every table, rows sorted, as text.
    fn dump(conn: &Connection) -> Vec<u8> {
        let mut out = Vec::new();
        let mut tables = conn
            .prepare("SELECT name, sql FROM sqlite_master ORDER BY name")
            .unwrap();
        let tables: Vec<(String, Option<String>)> = tables
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for (name, sql) in tables {
            out.push(format!("{name}: {sql:?}"));
            if sql.is_some_and(|s| s.starts_with("CREATE TABLE")) {
                let mut select = conn.prepare(&format!("SELECT * FROM {name}")).unwrap();
                let width = select.column_count();
                let mut rows: Vec<String> = select
                    .query_map([], |r| {
                        (0..width)
                            .map(|i| r.get::<_, rusqlite::types::Value>(i))
                            .collect::<rusqlite::Result<Vec<_>>>()
                    })
                    .unwrap()
                    .map(|row| format!("{name} {:?}", row.unwrap()))
                    .collect();
                rows.sort();
                out.extend(rows);
            }
        }
        out.join("\n").into_bytes()
    }

    mod file {
        crate::conformance_tests!(super::FileFixture::new());
    }

    mod memory {
        crate::conformance_tests!(super::MemoryFixture::new());
    }

    fn identity() -> Identity {
        Identity {
            cluster: "test".into(),
            nid: None,
        }
    }

    #[test]
    fn targets_parse() {
        let plain = parse_target("/var/lib/neo/db.sqlite").unwrap();
        assert_eq!(plain.path, "/var/lib/neo/db.sqlite");
        assert_eq!(
            (
                plain.cache_size,
                plain.journal_mode.as_str(),
                plain.synchronous.as_str()
            ),
            (None, "WAL", "FULL")
        );
        let uri = parse_target(
            "file:///tmp/a%20b.db?cache_size=-2000&journal_mode=delete&synchronous=normal",
        )
        .unwrap();
        assert_eq!(uri.path, "/tmp/a b.db");
        assert_eq!(uri.cache_size, Some(-2000));
        assert_eq!(uri.journal_mode, "DELETE");
        assert_eq!(uri.synchronous, "NORMAL");
        assert_eq!(parse_target("file:rel.db").unwrap().path, "rel.db");
        assert_eq!(parse_target("file://localhost/x.db").unwrap().path, "/x.db");
        for bad in [
            "",
            "file:",
            "file:x.db?mode=ro",
            "file:x.db?journal_mode=fast",
            "file:x.db?cache_size=big",
            "file:x.db?synchronous",
            "file://host/x.db",
            "file:x.db#frag",
            "file:x%zz.db",
        ] {
            assert!(parse_target(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn uri_pragmas_are_applied() {
        let fixture = FileFixture::new();
        let uri = format!(
            "file:{}?cache_size=123&journal_mode=truncate&synchronous=extra",
            fixture.path()
        );
        let backend = SqliteBackend::open(&uri, &identity()).unwrap();
        let conn = &backend.engine().conn;
        let get = |pragma: &str| -> String {
            conn.query_row(&format!("PRAGMA {pragma}"), [], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| match v {
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Text(t) => t,
                other => format!("{other:?}"),
            })
            .unwrap()
        };
        assert_eq!(get("cache_size"), "123");
        assert_eq!(get("journal_mode"), "truncate");
        assert_eq!(get("synchronous"), "3");
        drop(backend);
        // Defaults: WAL and FULL.
        let backend = SqliteBackend::open(&fixture.path(), &identity()).unwrap();
        let conn = &backend.engine().conn;
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2));
    }

    #[test]
    fn a_file_is_locked_against_this_process_and_others() {
        let _spawning = SPAWNING.write().unwrap_or_else(|p| p.into_inner());
        let fixture = FileFixture::unguarded();
        let backend = SqliteBackend::open(&fixture.path(), &identity()).unwrap();
        // The same process, through another name of the same file.
        let link = fixture.dir.path().join("link.sqlite");
        std::os::unix::fs::symlink(fixture.path(), &link).unwrap();
        for name in [fixture.path(), link.to_string_lossy().into_owned()] {
            assert_eq!(
                SqliteBackend::open(&name, &identity()).err(),
                Some(DbError::Locked(name.clone()))
            );
        }
        // Another process cannot take the lock while the backend lives...
        let status = Command::new("flock")
            .args(["--nonblock", "--exclusive", &fixture.path(), "true"])
            .status()
            .expect("flock(1)");
        assert_eq!(status.code(), Some(1), "flock(1) got the lock");
        // ... and the first backend still works after the refused attempts.
        assert_eq!(backend.config().unwrap().name, "test");
        drop(backend);
        let status = Command::new("flock")
            .args(["--nonblock", "--exclusive", &fixture.path(), "true"])
            .status()
            .expect("flock(1)");
        assert!(status.success(), "the lock outlived the backend");

        // A lock held by another process keeps the backend out until it goes.
        let mut holder = Command::new("flock")
            .args(["--exclusive", &fixture.path(), "sh", "-c", "echo held; cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("flock(1)");
        let mut line = String::new();
        BufReader::new(holder.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "held\n");
        assert_eq!(
            SqliteBackend::open(&fixture.path(), &identity()).err(),
            Some(DbError::Locked(fixture.path()))
        );
        holder.stdin.take().unwrap().flush().unwrap();
        holder.wait().unwrap();
        assert!(SqliteBackend::open(&fixture.path(), &identity()).is_ok());
    }

    #[test]
    fn memory_databases_live_with_their_anchor() {
        let name = format!("anchor-test-{}", std::process::id());
        let anchor = MemoryAnchor::new(&name).unwrap();
        let mut backend = SqliteBackend::memory(&name, &identity()).unwrap();
        backend.set_nid(crate::proto::Nid(7)).unwrap();
        assert_eq!(
            SqliteBackend::memory(&name, &identity()).err(),
            Some(DbError::Locked(format!("memory:{name}")))
        );
        drop(backend);
        // A "process restart": the anchor kept the database.
        let backend = SqliteBackend::memory(&name, &identity()).unwrap();
        assert_eq!(backend.config().unwrap().nid, Some(crate::proto::Nid(7)));
        drop(backend);
        // A "wiped disk": without the anchor the database is gone.
        drop(anchor);
        let backend = SqliteBackend::memory(&name, &identity()).unwrap();
        assert_eq!(backend.config().unwrap().nid, None);
        assert!(matches!(
            SqliteBackend::memory("no/slash", &identity()),
            Err(DbError::Unusable(_))
        ));
    }
}
