//! The MySQL/MariaDB backend: a storage node's database on a server (InnoDB), with the SQL
//! core of `sql.rs`.
//!
//! The database string is NEO's `[user[:password]@]database[socket]` (a socket path starts
//! with `/`, `.` or `~`), extended with a TCP server: `[user[:password]@]database@host[:port]`
//! (the credentials may be empty: `@neo1@db.example:3307`). Without either, the server is
//! 127.0.0.1:3306; the default user is root with no password. Write `@` in a password as
//! `%40` (and `%` as `%25`).
//!
//! One database per storage node, created if missing. A server-side lock,
//! `GET_LOCK('<database>.neostorage')` held by the backend's connection, keeps a second
//! storage node out (`DbError::Locked`); the server drops it with the connection.
//!
//! A lost connection ("server has gone away", a killed session, a server restart) is
//! re-established, with its lock, and the statement run again, when nothing was pending on
//! it: no write since the last commit (which also covers the data rows `store` writes for
//! the objects the backend holds until `vote`). With writes pending, their loss would go
//! unnoticed: the call fails with `DbError::ConnectionLost` (fatal) instead, as NEO 1.2 made
//! its MySQL backend do.
//!
//! Big values: a statement may not exceed the server's `max_allowed_packet` (MariaDB's
//! default is 16 MiB), so values are stored in pieces of at most [`CHUNK`] bytes: the first in
//! `data.value`, the others in `bigdata` rows, with the total in `data.size`. Metadata is
//! bounded by `MAX_TXN_OIDS` / `MAX_TXN_TEXT` and multi-row inserts by [`ROWS_PER_INSERT`],
//! so no statement or row exceeds [`REQUIRED_MAX_ALLOWED_PACKET`], which opening checks.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder};

use super::sql::{
    check_identity, corrupt, percent_decode, placeholders, run_each, Engine, Field, NewData, Param,
    Row, SqlBackend, Step,
};
use super::{DbError, DbResult, Identity};
use crate::proto::Address;

/// A storage node's database on a MySQL or MariaDB server.
pub type MysqlBackend = SqlBackend<Mysql>;

/// The largest piece of a value one statement carries.
pub const CHUNK: usize = 8 << 20;
/// Rows per multi-row INSERT (of a few integers each).
pub const ROWS_PER_INSERT: usize = 256;
/// The smallest `max_allowed_packet` the backend works with: a piece of a value, or the
/// largest transaction metadata (8 MiB of OIDs and 3 x 64 KiB), plus room for the rest.
pub const REQUIRED_MAX_ALLOWED_PACKET: u64 = 9 << 20;
// The largest statements fit: a piece of a value, or the largest metadata, each with up to
// 64 KiB of statement text and headers; and MariaDB's default 16 MiB leaves room.
const _: () = {
    let overhead = 64 << 10;
    let metadata = (super::MAX_TXN_OIDS * 8 + 3 * super::MAX_TXN_TEXT) as u64;
    assert!(metadata + overhead <= REQUIRED_MAX_ALLOWED_PACKET);
    assert!(CHUNK as u64 + overhead <= REQUIRED_MAX_ALLOWED_PACKET);
    assert!(REQUIRED_MAX_ALLOWED_PACKET <= 16 << 20);
};
/// How long opening waits for the database's lock: a crashed predecessor's session may
/// take a moment to end on the server.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Server {
    Tcp { host: String, port: u16 },
    Socket(String),
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Server::Tcp { host, port } => write!(f, "{}", Address::new(host.clone(), *port)),
            Server::Socket(path) => write!(f, "socket {path}"),
        }
    }
}

/// A parsed database string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MysqlTarget {
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub server: Server,
}

impl MysqlTarget {
    /// Connection options for the server and user (no database selected).
    pub fn opts(&self) -> OptsBuilder {
        let opts = OptsBuilder::new()
            .user(Some(self.user.clone()))
            .pass(self.password.clone());
        match &self.server {
            // Without prefer_socket(false) the crate silently switches to the local socket.
            Server::Tcp { host, port } => opts
                .ip_or_hostname(Some(host.clone()))
                .tcp_port(*port)
                .prefer_socket(false),
            Server::Socket(path) => opts.socket(Some(match path.strip_prefix("~/") {
                Some(rest) => format!("{}/{rest}", std::env::var("HOME").unwrap_or_default()),
                None => path.clone(),
            })),
        }
    }
}

/// Parse `[user[:password]@]database[socket]` or `[user[:password]@]database@host[:port]`.
pub fn parse_database(s: &str) -> Result<MysqlTarget, String> {
    let bad = |why: &str| {
        format!(
            "invalid MySQL database {s:?}: {why} (expected [user[:password]@]database, \
             then optionally @host[:port] or a socket path starting with /, . or ~)"
        )
    };
    let parts: Vec<&str> = s.split('@').collect();
    let (credentials, database, host) = match parts.as_slice() {
        [database] => (None, *database, None),
        [credentials, database] => (Some(*credentials), *database, None),
        [credentials, database, host] => (Some(*credentials), *database, Some(*host)),
        _ => return Err(bad("too many '@' (write '@' in a password as %40)")),
    };
    let (user, password) = match credentials {
        None => ("root".to_owned(), None),
        Some(c) => {
            let (user, password) = match c.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (c, None),
            };
            let user = percent_decode(user).map_err(|e| bad(&e))?;
            let password = password
                .map(percent_decode)
                .transpose()
                .map_err(|e| bad(&e))?;
            (if user.is_empty() { "root".into() } else { user }, password)
        }
    };
    let split = database.find(['/', '.', '~']).unwrap_or(database.len());
    let (database, socket) = database.split_at(split);
    if database.is_empty() {
        return Err(bad("no database name"));
    }
    if database.len() > 64
        || !database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '-')
    {
        return Err(bad(
            "a database name has at most 64 letters, digits, '_', '$' or '-'",
        ));
    }
    let server = match (socket, host) {
        ("", None) => Server::Tcp {
            host: "127.0.0.1".into(),
            port: 3306,
        },
        ("", Some(host)) => {
            let address = Address::parse_with_default(host, Some(3306)).map_err(|e| bad(&e))?;
            Server::Tcp {
                host: address.host,
                port: address.port,
            }
        }
        (socket, None) => Server::Socket(socket.to_owned()),
        (_, Some(_)) => return Err(bad("give a socket or a host, not both")),
    };
    Ok(MysqlTarget {
        user,
        password,
        database: database.to_owned(),
        server,
    })
}

/// The MySQL engine: the connection (queries need `&mut`, reads are `&self`), and what it
/// takes to open it again.
pub struct Mysql {
    conn: RefCell<Conn>,
    target: MysqlTarget,
    /// Whether a write is pending (not committed) on the connection.
    pending: Cell<bool>,
    /// How many times the connection was re-established.
    reconnects: Cell<u64>,
}

fn err(e: mysql::Error) -> DbError {
    DbError::Backend(format!("MySQL: {e}"))
}

/// Whether an error means the connection is gone (rather than a statement failed).
fn connection_lost(e: &mysql::Error) -> bool {
    match e {
        mysql::Error::IoError(_) | mysql::Error::CodecError(_) => true,
        mysql::Error::DriverError(d) => matches!(
            d,
            mysql::DriverError::PacketOutOfSync | mysql::DriverError::UnexpectedPacket
        ),
        // CR_SERVER_GONE_ERROR, CR_SERVER_LOST, ER_CONNECTION_KILLED, ER_SERVER_SHUTDOWN.
        mysql::Error::MySqlError(m) => matches!(m.code, 2006 | 2013 | 1927 | 1053),
        _ => false,
    }
}

/// Open a session on the server: settings, the database's lock, the packet limit, the
/// database itself.
fn connect(target: &MysqlTarget) -> DbResult<Conn> {
    let opts = target
        .opts()
        .tcp_connect_timeout(Some(Duration::from_secs(10)));
    let mut conn = Conn::new(opts).map_err(|e| {
        DbError::Unusable(format!("cannot connect to MySQL at {}: {e}", target.server))
    })?;
    // READ COMMITTED: the database is this session's alone (the lock below), so a
    // snapshot older than the last commit would show nothing more; InnoDB then takes no
    // gap locks and reads the source rows of the unlock's INSERT ... SELECT without locking
    // them. Durability stays the server's (innodb_flush_log_at_trx_commit is global).
    conn.query_drop(
        "SET SESSION sql_mode = 'TRADITIONAL,NO_ENGINE_SUBSTITUTION', \
         autocommit = 0, wait_timeout = 2147483",
    )
    .map_err(err)?;
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .map_err(err)?;
    let db = &target.database;
    let lock: Option<Option<i64>> = conn
        .exec_first(
            "SELECT GET_LOCK(?, ?)",
            (format!("{db}.neostorage"), LOCK_WAIT.as_secs()),
        )
        .map_err(err)?;
    if lock != Some(Some(1)) {
        return Err(DbError::Locked(db.clone()));
    }
    let packet: Option<u64> = conn
        .query_first("SELECT @@max_allowed_packet")
        .map_err(err)?;
    let packet = packet.unwrap_or(0);
    if packet < REQUIRED_MAX_ALLOWED_PACKET {
        return Err(DbError::Unusable(format!(
            "the MySQL server's max_allowed_packet is {packet} bytes; the storage node \
             needs at least {REQUIRED_MAX_ALLOWED_PACKET} \
             (SET GLOBAL max_allowed_packet = {REQUIRED_MAX_ALLOWED_PACKET}, or \
             max_allowed_packet in the server's configuration)"
        )));
    }
    conn.query_drop(format!("CREATE DATABASE IF NOT EXISTS `{db}`"))
        .map_err(err)?;
    conn.select_db(db).map_err(err)?;
    Ok(conn)
}

fn values(params: &[Param]) -> Vec<mysql::Value> {
    params
        .iter()
        .map(|p| match *p {
            Param::Null => mysql::Value::NULL,
            Param::U64(v) => mysql::Value::UInt(v),
            Param::I64(v) => mysql::Value::Int(v),
            Param::Bytes(b) => mysql::Value::Bytes(b.to_vec()),
            Param::Text(t) => mysql::Value::Bytes(t.as_bytes().to_vec()),
        })
        .collect()
}

fn field(value: mysql::Value) -> DbResult<Field> {
    Ok(match value {
        mysql::Value::NULL => Field::Null,
        mysql::Value::Int(v) => Field::Int(v as i128),
        mysql::Value::UInt(v) => Field::Int(v as i128),
        mysql::Value::Bytes(b) => Field::Bytes(b),
        other => return Err(corrupt(format!("the value {other:?}"))),
    })
}

impl SqlBackend<Mysql> {
    /// Connect, lock and open (creating it if needed) the database; see the module doc.
    pub fn open(database: &str, identity: &Identity) -> DbResult<Self> {
        let target = parse_database(database).map_err(DbError::Unusable)?;
        let conn = connect(&target)?;
        let engine = Mysql {
            conn: RefCell::new(conn),
            target,
            pending: Cell::new(false),
            reconnects: Cell::new(0),
        };
        let initialised = check_identity(&engine, identity)?;
        SqlBackend::start(engine, identity, initialised)
    }
}

impl Mysql {
    /// The server's id of the connection (for tests that kill it).
    pub fn connection_id(&self) -> u32 {
        self.conn.borrow().connection_id()
    }

    /// How many times the connection was re-established.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.get()
    }

    /// Run `f` on the connection; if the connection is found lost, re-establish it and run
    /// `f` again when nothing was pending, or fail for good when something was.
    fn with_conn<T>(
        &self,
        writes: bool,
        f: impl Fn(&mut Conn) -> Result<T, mysql::Error>,
    ) -> DbResult<T> {
        let first = f(&mut self.conn.borrow_mut());
        let result = match first {
            Err(e) if connection_lost(&e) => {
                if self.pending.get() {
                    return Err(DbError::ConnectionLost(format!(
                        "MySQL: {e} (uncommitted writes would be lost)"
                    )));
                }
                // Nothing to lose: the server rolled back nothing of ours.
                let conn = connect(&self.target)?;
                *self.conn.borrow_mut() = conn;
                self.reconnects.set(self.reconnects.get() + 1);
                f(&mut self.conn.borrow_mut()).map_err(err)
            }
            other => other.map_err(err),
        };
        if writes && result.is_ok() {
            self.pending.set(true);
        }
        result
    }

    /// A statement without parameters or results, in the text protocol.
    fn text(&self, sql: &str) -> DbResult<()> {
        self.with_conn(true, |c| c.query_drop(sql))
    }
}

impl Engine for Mysql {
    const MAX_INT: u64 = u64::MAX;
    const DATA_SIZE: &'static str = "data.size";
    const SCHEMA: &'static [&'static str] = &[
        "CREATE TABLE IF NOT EXISTS config (name VARBINARY(255) NOT NULL PRIMARY KEY, \
         value VARBINARY(255) NULL) ENGINE = InnoDB",
        // state: CellState's index; tid: an own OUT_OF_DATE cell's replication mark.
        "CREATE TABLE IF NOT EXISTS pt (`partition` INT UNSIGNED NOT NULL, nid INT NOT NULL, \
         state TINYINT UNSIGNED NOT NULL, tid BIGINT UNSIGNED NULL, \
         PRIMARY KEY (`partition`, nid)) ENGINE = InnoDB",
        "CREATE TABLE IF NOT EXISTS trans (`partition` INT UNSIGNED NOT NULL, \
         tid BIGINT UNSIGNED NOT NULL, packed BOOLEAN NOT NULL, oids MEDIUMBLOB NOT NULL, \
         user BLOB NOT NULL, description BLOB NOT NULL, ext BLOB NOT NULL, \
         ttid BIGINT UNSIGNED NOT NULL, PRIMARY KEY (`partition`, tid), KEY ttid (ttid)) \
         ENGINE = InnoDB",
        "CREATE TABLE IF NOT EXISTS obj (`partition` INT UNSIGNED NOT NULL, \
         oid BIGINT UNSIGNED NOT NULL, tid BIGINT UNSIGNED NOT NULL, \
         data_id BIGINT UNSIGNED NULL, value_tid BIGINT UNSIGNED NULL, \
         PRIMARY KEY (`partition`, oid, tid), KEY tid (`partition`, tid, oid), \
         KEY data_id (data_id)) ENGINE = InnoDB",
        "CREATE TABLE IF NOT EXISTS data (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT \
         PRIMARY KEY, hash BINARY(20) NOT NULL, compression TINYINT UNSIGNED NOT NULL, \
         size BIGINT UNSIGNED NOT NULL, value MEDIUMBLOB NOT NULL, \
         UNIQUE KEY hash (hash, compression)) ENGINE = InnoDB",
        "CREATE TABLE IF NOT EXISTS bigdata (id BIGINT UNSIGNED NOT NULL, \
         seq INT UNSIGNED NOT NULL, value MEDIUMBLOB NOT NULL, PRIMARY KEY (id, seq)) \
         ENGINE = InnoDB",
        "CREATE TABLE IF NOT EXISTS ttrans (ttid BIGINT UNSIGNED NOT NULL PRIMARY KEY, \
         tid BIGINT UNSIGNED NULL, packed BOOLEAN NOT NULL, oids MEDIUMBLOB NOT NULL, \
         user BLOB NOT NULL, description BLOB NOT NULL, ext BLOB NOT NULL) ENGINE = InnoDB",
        "CREATE TABLE IF NOT EXISTS tobj (tid BIGINT UNSIGNED NOT NULL, \
         oid BIGINT UNSIGNED NOT NULL, data_id BIGINT UNSIGNED NULL, \
         value_tid BIGINT UNSIGNED NULL, PRIMARY KEY (tid, oid), KEY data_id (data_id)) \
         ENGINE = InnoDB",
        "CREATE TABLE IF NOT EXISTS tdata (ttid BIGINT UNSIGNED NOT NULL, \
         oid BIGINT UNSIGNED NOT NULL, data_id BIGINT UNSIGNED NOT NULL, \
         PRIMARY KEY (ttid, oid), KEY data_id (data_id)) ENGINE = InnoDB",
    ];

    fn exec(&self, sql: &str, params: &[Param]) -> DbResult<()> {
        if params.is_empty() {
            return self.text(sql);
        }
        self.with_conn(true, |c| c.exec_drop(sql, values(params)))
    }

    fn query(&self, sql: &str, params: &[Param]) -> DbResult<Vec<Row>> {
        // Always the binary protocol: integers come back as integers.
        let rows = self.with_conn(false, |c| {
            let result = c.exec_iter(sql, values(params))?;
            let mut rows = Vec::new();
            for row in result {
                rows.push(row?.unwrap());
            }
            Ok(rows)
        })?;
        rows.into_iter()
            .map(|row| row.into_iter().map(field).collect::<DbResult<Row>>())
            .collect()
    }

    fn commit(&self) -> DbResult<()> {
        self.with_conn(false, |c| c.query_drop("COMMIT"))?;
        self.pending.set(false);
        Ok(())
    }

    fn table_exists(&self, table: &str) -> DbResult<bool> {
        let rows = self.query(
            "SELECT 1 FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = ?",
            &[Param::Text(table)],
        )?;
        Ok(!rows.is_empty())
    }

    fn insert_data(&self, rows: &[NewData]) -> DbResult<()> {
        // Values of at most a piece go in multi-row statements of at most a piece of
        // values; bigger ones in pieces, one statement each.
        let mut batch = Vec::new();
        let mut bytes = 0;
        let flush = |batch: &mut Vec<Param>| -> DbResult<()> {
            self.insert_rows(
                "INSERT INTO data (id, hash, compression, size, value) VALUES",
                5,
                batch,
            )?;
            batch.clear();
            Ok(())
        };
        for row in rows {
            let mut pieces = row.data.chunks(CHUNK);
            let first = pieces.next().unwrap_or_default();
            if bytes + first.len() > CHUNK {
                flush(&mut batch)?;
                bytes = 0;
            }
            bytes += first.len();
            batch.extend([
                Param::U64(row.id),
                Param::Bytes(row.checksum),
                Param::U64(row.compression as u64),
                Param::U64(row.data.len() as u64),
                Param::Bytes(first),
            ]);
            for (seq, piece) in pieces.enumerate() {
                self.exec(
                    "INSERT INTO bigdata (id, seq, value) VALUES (?, ?, ?)",
                    &[
                        Param::U64(row.id),
                        Param::U64(seq as u64 + 1),
                        Param::Bytes(piece),
                    ],
                )?;
            }
        }
        flush(&mut batch)
    }

    fn read_pieces(&self, id: u64, size: u64, mut data: Vec<u8>) -> DbResult<Vec<u8>> {
        if (data.len() as u64) < size {
            data.reserve(size as usize - data.len());
            for mut piece in self.query(
                "SELECT value FROM bigdata WHERE id = ? ORDER BY seq",
                &[Param::U64(id)],
            )? {
                data.extend_from_slice(&piece[0].take_bytes()?);
            }
        }
        Ok(data)
    }

    fn delete_data(&self, ids: &[u64]) -> DbResult<()> {
        // `IN ()` is a syntax error: erasing a database without data rows failed.
        if ids.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        let list = list.join(",");
        self.text(&format!("DELETE FROM bigdata WHERE id IN ({list})"))?;
        self.text(&format!("DELETE FROM data WHERE id IN ({list})"))
    }

    fn run(&self, steps: &[Step], commit: bool) -> DbResult<()> {
        let Some(script) = script(steps, commit) else {
            // Too big for one statement: one at a time.
            return run_each(self, steps, commit);
        };
        // Sent again on a new connection only if nothing was pending: the script then either
        // did nothing or, if it committed, runs again harmlessly (lock and unlock) or fails
        // on the rows it already inserted (vote), never silently.
        self.with_conn(true, |c| {
            let mut result = c.query_iter(&script)?;
            while let Some(set) = result.iter() {
                for row in set {
                    row?;
                }
            }
            Ok(())
        })?;
        if commit {
            self.pending.set(false);
        }
        Ok(())
    }

    fn insert_rows(&self, head: &str, width: usize, params: &[Param]) -> DbResult<()> {
        // Full batches, then the rest in power-of-two batches: few distinct statements for
        // the server to prepare, few round trips.
        let mut rest = params;
        while !rest.is_empty() {
            let rows = (rest.len() / width).min(ROWS_PER_INSERT);
            let rows = if rows == ROWS_PER_INSERT {
                rows
            } else {
                1 << rows.ilog2()
            };
            let row = placeholders(width);
            let sql = format!("{head} {}", vec![row; rows].join(", "));
            let (batch, tail) = rest.split_at(rows * width);
            self.exec(&sql, batch)?;
            rest = tail;
        }
        Ok(())
    }
}

/// The most bytes of values a [`script`] carries (twice that in hexadecimal).
const SCRIPT_BYTES: usize = 1 << 20;
/// Rows per multi-row INSERT of a script.
const SCRIPT_ROWS: usize = 1000;

/// `steps` (then COMMIT if `commit`) as one text of statements with their parameters
/// inlined, for one round trip; None if their values are too big for that.
fn script(steps: &[Step], commit: bool) -> Option<String> {
    let bytes: usize = steps
        .iter()
        .map(|step| match step {
            Step::Exec(_, params) | Step::Rows { params, .. } => params_bytes(params),
            Step::Data(rows) => rows.iter().map(|r| r.data.len() + 20).sum(),
        })
        .sum();
    if bytes > SCRIPT_BYTES {
        return None;
    }
    let mut out = String::with_capacity(2 * bytes + 256);
    for step in steps {
        match step {
            Step::Exec(sql, params) => statement(&mut out, sql, params),
            Step::Rows {
                head,
                width,
                params,
            } => rows_statements(&mut out, head, *width, params),
            Step::Data(rows) => {
                let params: Vec<Param> = rows
                    .iter()
                    .flat_map(|row| {
                        [
                            Param::U64(row.id),
                            Param::Bytes(row.checksum),
                            Param::U64(row.compression as u64),
                            Param::U64(row.data.len() as u64),
                            Param::Bytes(row.data),
                        ]
                    })
                    .collect();
                rows_statements(
                    &mut out,
                    "INSERT INTO data (id, hash, compression, size, value) VALUES",
                    5,
                    &params,
                );
            }
        }
    }
    if commit {
        out.push_str("COMMIT;");
    }
    // An empty script is not a statement.
    (!out.is_empty()).then_some(out)
}

fn params_bytes(params: &[Param]) -> usize {
    params
        .iter()
        .map(|p| match p {
            Param::Bytes(b) => b.len(),
            Param::Text(t) => t.len(),
            _ => 8,
        })
        .sum()
}

/// Append `sql;` with each `?` replaced by its parameter (our statements have no other `?`).
fn statement(out: &mut String, sql: &str, params: &[Param]) {
    let mut params = params.iter();
    for c in sql.chars() {
        if c == '?' {
            literal(out, params.next().unwrap_or(&Param::Null));
        } else {
            out.push(c);
        }
    }
    out.push(';');
}

fn rows_statements(out: &mut String, head: &str, width: usize, params: &[Param]) {
    for chunk in params.chunks(width * SCRIPT_ROWS) {
        out.push_str(head);
        for (i, row) in chunk.chunks(width).enumerate() {
            out.push_str(if i == 0 { " (" } else { ", (" });
            for (j, param) in row.iter().enumerate() {
                if j > 0 {
                    out.push_str(", ");
                }
                literal(out, param);
            }
            out.push(')');
        }
        out.push(';');
    }
}

/// A parameter as SQL: integers in decimal, bytes and text in hexadecimal (no escaping).
fn literal(out: &mut String, param: &Param) {
    use std::fmt::Write;
    match *param {
        Param::Null => out.push_str("NULL"),
        Param::U64(v) => {
            let _ = write!(out, "{v}");
        }
        Param::I64(v) => {
            let _ = write!(out, "{v}");
        }
        Param::Bytes(b) => hex(out, b),
        Param::Text(t) => hex(out, t.as_bytes()),
    }
}

fn hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.push_str("X'");
    out.reserve(2 * bytes.len() + 1);
    for &b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Server {
        Server::Tcp {
            host: host.into(),
            port,
        }
    }

    fn target(user: &str, password: Option<&str>, database: &str, server: Server) -> MysqlTarget {
        MysqlTarget {
            user: user.into(),
            password: password.map(Into::into),
            database: database.into(),
            server,
        }
    }

    #[test]
    fn database_strings_parse() {
        let cases = [
            ("neo", target("root", None, "neo", tcp("127.0.0.1", 3306))),
            (
                "bob@neo",
                target("bob", None, "neo", tcp("127.0.0.1", 3306)),
            ),
            (
                "bob:s3:cret@neo",
                target("bob", Some("s3:cret"), "neo", tcp("127.0.0.1", 3306)),
            ),
            (
                "bob:@neo",
                target("bob", Some(""), "neo", tcp("127.0.0.1", 3306)),
            ),
            (
                "bob:p%40ss@neo1@db.example",
                target("bob", Some("p@ss"), "neo1", tcp("db.example", 3306)),
            ),
            (
                "@neo@10.0.0.5:3307",
                target("root", None, "neo", tcp("10.0.0.5", 3307)),
            ),
            (
                "u@neo@[::1]:13306",
                target("u", None, "neo", tcp("::1", 13306)),
            ),
            (
                "u:p@neo/var/run/mysqld/mysqld.sock",
                target(
                    "u",
                    Some("p"),
                    "neo",
                    Server::Socket("/var/run/mysqld/mysqld.sock".into()),
                ),
            ),
            (
                "neo./mysql.sock",
                target("root", None, "neo", Server::Socket("./mysql.sock".into())),
            ),
            (
                "neo~/mysql.sock",
                target("root", None, "neo", Server::Socket("~/mysql.sock".into())),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_database(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn bad_database_strings_say_why() {
        for (text, why) in [
            ("", "no database name"),
            ("bob@", "no database name"),
            ("bob@/tmp/sock", "no database name"),
            ("a@b@c@d", "too many '@'"),
            ("neo@host:99999", "port"),
            ("neo@db@", "empty"),
            ("u@neo/tmp/s@host", "not both"),
            ("u@ne o", "at most 64"),
            ("u@ne`o", "at most 64"),
            ("u:p%zz@neo", "percent escape"),
        ] {
            let error = parse_database(text).unwrap_err();
            assert!(error.contains(why), "{text:?}: {error}");
            assert!(
                error.contains("expected [user[:password]@]database"),
                "{error}"
            );
        }
        let long = "x".repeat(65);
        assert!(parse_database(&long).is_err());
        assert!(parse_database(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn scripts_inline_parameters() {
        let checksum = [0xab; 20];
        let steps = [
            Step::Exec(
                "UPDATE t SET a = ? WHERE b = ? AND c = ?",
                vec![Param::U64(u64::MAX), Param::I64(-3), Param::Null],
            ),
            Step::Rows {
                head: "INSERT INTO r (x, y) VALUES",
                width: 2,
                params: vec![
                    Param::U64(1),
                    Param::Bytes(b"\x00'\\"),
                    Param::U64(2),
                    Param::Bytes(b""),
                ],
            },
            Step::Data(vec![NewData {
                id: 7,
                checksum: &checksum,
                compression: 1,
                data: b"ab",
            }]),
            Step::Rows {
                head: "INSERT INTO e (x) VALUES",
                width: 1,
                params: vec![],
            },
        ];
        let hash = "ab".repeat(20);
        assert_eq!(
            script(&steps, true).unwrap(),
            format!(
                "UPDATE t SET a = 18446744073709551615 WHERE b = -3 AND c = NULL;\
                 INSERT INTO r (x, y) VALUES (1, X'00275c'), (2, X'');\
                 INSERT INTO data (id, hash, compression, size, value) VALUES \
                 (7, X'{hash}', 1, 2, X'6162');COMMIT;"
            )
        );
        assert_eq!(script(&steps[3..], false), None);
        let big = vec![0; SCRIPT_BYTES + 1];
        let too_big = [Step::Exec(
            "INSERT INTO t (v) VALUES (?)",
            vec![Param::Bytes(&big)],
        )];
        assert_eq!(script(&too_big, true), None);
    }

    #[test]
    fn servers_display_for_errors() {
        assert_eq!(tcp("::1", 5).to_string(), "[::1]:5");
        assert_eq!(Server::Socket("/s".into()).to_string(), "socket /s");
    }
}
