//! The SQL core both backends share: NEO's data model and every [`Backend`] operation, written
//! once over an [`Engine`] (run a statement or a query, commit, keep a data value). `sqlite.rs`
//! and `mysql.rs` implement the engine with their own connection, schema types, locking and
//! storage of big values; the SQL here is the dialect both accept (backquoted `partition`,
//! `REPLACE INTO`, `LIMIT ? OFFSET ?`).
//!
//! Held data and crashes: `store` keeps the object in memory, its bytes pending. `vote`
//! writes the pending data rows and every `tobj` row of the transaction in multi-row
//! statements, with one lookup for deduplication, and commits. A transaction's pending
//! values are written earlier, with a `tdata` row (ttid, oid, data_id) each, once they
//! weigh more than [`HELD_TXN_BYTES`] (or all transactions' more than [`HELD_BYTES`]):
//! memory stays bounded. Whatever commits next (another transaction's vote) makes such rows
//! durable; `vote` replaces them by `tobj` rows. A data row lives while an `obj`, `tobj` or
//! `tdata` row refers to it, so after a crash the `tdata` rows are exactly the references the
//! lost in-memory holds had: opening deletes them and releases the data nothing else uses.
//!
//! Round trips: each write of the commit path is a batch of [`Step`]s an engine may send at
//! once (`Engine::run`): MySQL sends vote, lock and unlock as one script each.
//!
//! Data row ids are allocated here (one above the greatest at opening), so that multi-row
//! inserts need no id back from the engine.
//!
//! Deduplication: `data` has a unique key on (hash, compression); storing bytes whose key is
//! present reuses that row after comparing the bytes (`ChecksumCollision` if they differ).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use sha1::{Digest, Sha1};

use super::{
    partition_of, Backend, Cell, Checksum, DbConfig, DbError, DbResult, Identity, LastIds, Load,
    Loaded, ObjectData, ObjectRecord, SerialRangeCheck, TidRangeCheck, TxnInfo, TxnMeta, UndoInfo,
    Value, MAX_TXN_OIDS, MAX_TXN_TEXT, SCHEMA_VERSION, ZERO_HASH,
};
use crate::proto::{CellState, Nid, Oid, Ptid, Tid};

/// A statement parameter. Integers are NEO's unsigned 64-bit ids unless signed (node ids).
#[derive(Clone, Copy, Debug)]
pub enum Param<'a> {
    Null,
    U64(u64),
    I64(i64),
    Bytes(&'a [u8]),
    Text(&'a str),
}

fn opt(v: Option<u64>) -> Param<'static> {
    v.map_or(Param::Null, Param::U64)
}

/// A value read back.
#[derive(Clone, PartialEq, Eq)]
pub enum Field {
    Null,
    /// Wide enough for both SQLite's signed and MySQL's unsigned 64-bit integers.
    Int(i128),
    Bytes(Vec<u8>),
}

impl fmt::Debug for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Null => f.write_str("NULL"),
            Field::Int(v) => write!(f, "{v}"),
            Field::Bytes(b) => write!(f, "{} bytes", b.len()),
        }
    }
}

/// The error for a value the database should not hold.
pub fn corrupt(what: impl fmt::Display) -> DbError {
    DbError::Backend(format!("unexpected content in the database: {what}"))
}

impl Field {
    pub fn u64(&self) -> DbResult<u64> {
        match self {
            Field::Int(v) => u64::try_from(*v).map_err(|_| corrupt(format!("integer {v}"))),
            other => Err(corrupt(format!("{other:?} where an integer belongs"))),
        }
    }

    pub fn opt_u64(&self) -> DbResult<Option<u64>> {
        match self {
            Field::Null => Ok(None),
            other => other.u64().map(Some),
        }
    }

    pub fn i64(&self) -> DbResult<i64> {
        match self {
            Field::Int(v) => i64::try_from(*v).map_err(|_| corrupt(format!("integer {v}"))),
            other => Err(corrupt(format!("{other:?} where an integer belongs"))),
        }
    }

    pub fn take_bytes(&mut self) -> DbResult<Vec<u8>> {
        match std::mem::replace(self, Field::Null) {
            Field::Bytes(b) => Ok(b),
            other => Err(corrupt(format!("{other:?} where bytes belong"))),
        }
    }

    fn text(&mut self) -> DbResult<String> {
        String::from_utf8(self.take_bytes()?).map_err(|_| corrupt("non-UTF-8 text"))
    }
}

pub type Row = Vec<Field>;

/// What a database engine provides to the shared core.
pub trait Engine {
    /// The greatest integer a column holds (SQLite's are signed).
    const MAX_INT: u64;
    /// An expression for the length of `data.value` in a `LEFT JOIN data` (0 if no row).
    const DATA_SIZE: &'static str;
    /// Statements creating the schema.
    const SCHEMA: &'static [&'static str];

    /// Run a writing statement inside the current transaction (starting one if needed).
    fn exec(&self, sql: &str, params: &[Param]) -> DbResult<()>;
    fn query(&self, sql: &str, params: &[Param]) -> DbResult<Vec<Row>>;
    fn commit(&self) -> DbResult<()>;
    fn table_exists(&self, table: &str) -> DbResult<bool>;
    /// Insert new `data` rows (their ids are free), in as few statements as the engine
    /// allows.
    fn insert_data(&self, rows: &[NewData]) -> DbResult<()>;
    /// The whole value of data row `id` of `size` bytes, given what `data.value` holds.
    fn read_pieces(&self, id: u64, size: u64, first: Vec<u8>) -> DbResult<Vec<u8>> {
        let _ = (id, size);
        Ok(first)
    }
    fn delete_data(&self, ids: &[u64]) -> DbResult<()>;
    /// Run `steps` in order, then commit if `commit`. An engine may send them together
    /// (one round trip to a server); if the connection is lost meanwhile, it fails unless
    /// running them again is harmless.
    fn run(&self, steps: &[Step], commit: bool) -> DbResult<()> {
        run_each(self, steps, commit)
    }
    /// Insert rows of `width` parameters each with `head` ("INSERT INTO t (a, b) VALUES").
    fn insert_rows(&self, head: &str, width: usize, params: &[Param]) -> DbResult<()> {
        let sql = format!("{head} {}", placeholders(width));
        params
            .chunks(width)
            .try_for_each(|row| self.exec(&sql, row))
    }
}

/// A `data` row to insert; the backend allocates the ids.
#[derive(Clone, Copy, Debug)]
pub struct NewData<'a> {
    pub id: u64,
    pub checksum: &'a Checksum,
    pub compression: u8,
    pub data: &'a [u8],
}

/// A writing statement of a batch [`Engine::run`] sends.
#[derive(Debug)]
pub enum Step<'a> {
    /// A statement and its parameters.
    Exec(&'static str, Vec<Param<'a>>),
    /// Rows of `width` parameters each, inserted with `head` ("INSERT INTO t (a) VALUES").
    Rows {
        head: &'static str,
        width: usize,
        params: Vec<Param<'a>>,
    },
    /// New `data` rows.
    Data(Vec<NewData<'a>>),
}

/// [`Engine::run`] one statement at a time.
pub fn run_each<E: Engine + ?Sized>(engine: &E, steps: &[Step], commit: bool) -> DbResult<()> {
    for step in steps {
        match step {
            Step::Exec(sql, params) => engine.exec(sql, params)?,
            Step::Rows {
                head,
                width,
                params,
            } => engine.insert_rows(head, *width, params)?,
            Step::Data(rows) => engine.insert_data(rows)?,
        }
    }
    if commit {
        engine.commit()?;
    }
    Ok(())
}

/// `(?, ?, ...)` with `width` marks.
pub fn placeholders(width: usize) -> String {
    format!("({})", vec!["?"; width].join(", "))
}

/// Integers inlined in SQL (`IN (...)` lists of ids we generated, never text from outside).
fn int_list(values: &[u64]) -> String {
    let parts: Vec<String> = values.iter().map(u64::to_string).collect();
    parts.join(",")
}

/// SHA-1 of decimal integers joined with commas, as NEO's replica checks compute them.
pub fn digest(values: impl IntoIterator<Item = u64>) -> Checksum {
    let mut sha = Sha1::new();
    let mut any = false;
    for v in values {
        if any {
            sha.update(b",");
        }
        sha.update(v.to_string().as_bytes());
        any = true;
    }
    if any {
        sha.finalize().into()
    } else {
        ZERO_HASH
    }
}

/// Decode `%XX` escapes (in URIs and database strings).
pub fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

fn check_meta(meta: &TxnMeta) -> DbResult<()> {
    if meta.oids.len() > MAX_TXN_OIDS {
        return Err(DbError::TooLarge(format!(
            "{} OIDs, at most {MAX_TXN_OIDS}",
            meta.oids.len()
        )));
    }
    for (what, text) in [
        ("user", &meta.user),
        ("description", &meta.description),
        ("extension", &meta.extension),
    ] {
        if text.len() > MAX_TXN_TEXT {
            return Err(DbError::TooLarge(format!(
                "{what} of {} bytes, at most {MAX_TXN_TEXT}",
                text.len()
            )));
        }
    }
    Ok(())
}

fn oids_bytes(oids: &[Oid]) -> Vec<u8> {
    oids.iter().flat_map(|o| o.0.to_be_bytes()).collect()
}

fn parse_oids(bytes: &[u8]) -> DbResult<Vec<Oid>> {
    if bytes.len() % 8 != 0 {
        return Err(corrupt(format!("an OID list of {} bytes", bytes.len())));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| Oid(u64::from_be_bytes(c.try_into().expect("8-byte chunk"))))
        .collect())
}

fn cell_state_code(state: CellState) -> u64 {
    CellState::ALL.iter().position(|s| *s == state).unwrap_or(0) as u64
}

fn cell_state(code: u64) -> DbResult<CellState> {
    CellState::ALL
        .get(code as usize)
        .copied()
        .filter(|s| *s != CellState::Discarded)
        .ok_or_else(|| corrupt(format!("cell state {code}")))
}

fn hex_tid(tid: Tid) -> String {
    format!("{:016x}", tid.0)
}

/// `config` as stored: name -> value.
fn read_config<E: Engine>(engine: &E) -> DbResult<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for mut row in engine.query("SELECT name, value FROM config", &[])? {
        if row[1] != Field::Null {
            let value = row[1].text()?;
            map.insert(row[0].text()?, value);
        }
    }
    Ok(map)
}

fn parse_config(map: &BTreeMap<String, String>) -> DbResult<DbConfig> {
    fn num<T: std::str::FromStr>(map: &BTreeMap<String, String>, key: &str) -> DbResult<Option<T>> {
        map.get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| corrupt(format!("config {key} = {v:?}")))
            })
            .transpose()
    }
    fn tid(map: &BTreeMap<String, String>, key: &str) -> DbResult<Option<Tid>> {
        map.get(key)
            .map(|v| {
                u64::from_str_radix(v, 16)
                    .map(Tid)
                    .map_err(|_| corrupt(format!("config {key} = {v:?}")))
            })
            .transpose()
    }
    Ok(DbConfig {
        version: num(map, "version")?.unwrap_or(0),
        name: map.get("name").cloned().unwrap_or_default(),
        nid: num::<i32>(map, "nid")?.map(Nid),
        ptid: num(map, "ptid")?.map(Ptid),
        replicas: num(map, "replicas")?,
        truncate_tid: tid(map, "truncate_tid")?,
        backup_tid: tid(map, "backup_tid")?,
        reserved_oid: num(map, "reserved_oid")?.map(Oid),
        reserved_tid: tid(map, "reserved_tid")?,
    })
}

/// Check, without writing anything, that the database may be opened by `identity`.
/// Ok(true) if it is initialised, Ok(false) if it is new (or its creation never finished).
pub fn check_identity<E: Engine>(engine: &E, identity: &Identity) -> DbResult<bool> {
    if !engine.table_exists("config")? {
        return Ok(false);
    }
    let map = read_config(engine)?;
    if !map.contains_key("version") {
        return Ok(false);
    }
    let config = parse_config(&map)?;
    if config.version > SCHEMA_VERSION {
        return Err(DbError::NewerSchema {
            supported: SCHEMA_VERSION,
            found: config.version,
        });
    }
    if config.name != identity.cluster {
        return Err(DbError::Foreign {
            what: "cluster",
            expected: identity.cluster.clone(),
            found: config.name,
        });
    }
    if let (Some(expected), Some(found)) = (identity.nid, config.nid) {
        if expected != found {
            return Err(DbError::Foreign {
                what: "node",
                expected: expected.to_string(),
                found: found.to_string(),
            });
        }
    }
    Ok(true)
}

/// What `store` holds for an object until `vote`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Held {
    /// Bytes whose data row is not written yet (see the module doc).
    Pending(ObjectData),
    /// A written data row (or none: a deletion), with a `tdata` row referring to it if any.
    Written {
        data_id: Option<u64>,
        value_tid: Option<Tid>,
    },
}

/// What `store` holds for one transaction.
#[derive(Default)]
struct HeldTxn {
    objects: BTreeMap<Oid, Held>,
    /// What its `Pending` values weigh (`held_weight`).
    pending: usize,
    /// Whether some `tdata` row of it may exist.
    tdata: bool,
}

/// A transaction's pending values are written once they weigh more than this...
pub const HELD_TXN_BYTES: usize = 1 << 20;
/// ... and every transaction's once all pending values together weigh more than this: the
/// memory held for unvoted stores stays bounded, however many transactions store at once.
pub const HELD_BYTES: usize = 16 << 20;

/// What writing a transaction's pending values takes (`plan_pending`).
struct Plan<'a> {
    rows: Vec<NewData<'a>>,
    /// The data row of each pending object.
    ids: BTreeMap<Oid, u64>,
    /// `next_data_id` once `rows` are written.
    next_data_id: u64,
}

/// What a pending value counts for against the bounds (its bytes and bookkeeping).
fn held_weight(data: &ObjectData) -> usize {
    data.data.len() + 64
}

/// The newest revision of an object up to some TID, and how many it has there.
struct Newest {
    oid: u64,
    tid: u64,
    data_id: Option<u64>,
    revisions: u64,
}

/// A revision in `obj`.
#[derive(Clone, Copy, Debug)]
struct Rev {
    tid: Tid,
    data_id: Option<u64>,
    value_tid: Option<Tid>,
}

fn rev(row: &Row) -> DbResult<Rev> {
    Ok(Rev {
        tid: Tid(row[0].u64()?),
        data_id: row[1].opt_u64()?,
        value_tid: row[2].opt_u64()?.map(Tid),
    })
}

/// Objects fetched per query by the operations that walk a whole partition.
const BATCH: u64 = 1000;

/// Where the walk continues after a batch whose first column is the OID: None when the
/// batch was the last (short, or ending at the greatest OID).
fn next_batch(rows: &[Row]) -> DbResult<Option<u64>> {
    match rows.last() {
        Some(last) if rows.len() as u64 == BATCH => Ok(last[0].u64()?.checked_add(1)),
        _ => Ok(None),
    }
}
/// Ids per `IN (...)` list.
const IDS_PER_STATEMENT: usize = 500;

/// A storage node's database over an SQL engine (see the module doc).
pub struct SqlBackend<E: Engine> {
    engine: E,
    /// The number of partitions of the stored partition table.
    partitions: Option<u32>,
    nid: Option<Nid>,
    /// ttid -> what `store` holds.
    held: BTreeMap<Tid, HeldTxn>,
    /// What every pending value weighs together.
    pending: usize,
    /// The id of the next `data` row (ids are never reused within a process; at start, one
    /// above the greatest).
    next_data_id: u64,
    /// `vote`, `lock` and `unlock` leave their work for `commit` (`Backend::set_deferred`).
    deferred: bool,
}

impl<E: Engine> SqlBackend<E> {
    /// Finish opening: create the schema if `initialised` is false, stamp the identity, drop
    /// what a previous process held but never voted, and commit. `check_identity` came first.
    pub fn start(engine: E, identity: &Identity, initialised: bool) -> DbResult<Self> {
        let mut backend = SqlBackend {
            engine,
            partitions: None,
            nid: None,
            held: BTreeMap::new(),
            pending: 0,
            next_data_id: 1,
            deferred: false,
        };
        if !initialised {
            for ddl in E::SCHEMA {
                backend.engine.exec(ddl, &[])?;
            }
            backend.set_config("name", Some(identity.cluster.clone()))?;
            backend.set_config("version", Some(SCHEMA_VERSION.to_string()))?;
        }
        let config = backend.config()?;
        if let (Some(nid), None) = (identity.nid, config.nid) {
            backend.set_config("nid", Some(nid.0.to_string()))?;
        }
        let stale = backend.ids("SELECT DISTINCT data_id FROM tdata", &[])?;
        backend.engine.exec("DELETE FROM tdata", &[])?;
        backend.prune(stale)?;
        backend.engine.commit()?;
        backend.next_data_id = backend
            .first_u64("SELECT MAX(id) FROM data", &[])?
            .map_or(1, |max| max.saturating_add(1));
        backend.nid = identity.nid.or(config.nid);
        backend.partitions = backend.count_partitions()?;
        Ok(backend)
    }

    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// The number of rows of each table, for statistics and tests.
    pub fn row_counts(&self) -> DbResult<BTreeMap<&'static str, u64>> {
        let mut counts = BTreeMap::new();
        for table in [
            "config", "pt", "trans", "obj", "data", "ttrans", "tobj", "tdata",
        ] {
            let rows = self
                .engine
                .query(&format!("SELECT COUNT(*) FROM {table}"), &[])?;
            counts.insert(table, rows[0][0].u64()?);
        }
        Ok(counts)
    }

    fn count_partitions(&self) -> DbResult<Option<u32>> {
        let rows = self.engine.query("SELECT MAX(`partition`) FROM pt", &[])?;
        match rows[0][0].opt_u64()? {
            None => Ok(None),
            Some(max) => u32::try_from(max + 1)
                .map(Some)
                .map_err(|_| corrupt(format!("partition {max}"))),
        }
    }

    fn np(&self) -> DbResult<u32> {
        self.partitions.ok_or(DbError::NoPartitionTable)
    }

    fn part(&self, id: u64) -> DbResult<Param<'static>> {
        Ok(Param::U64(partition_of(id, self.np()?) as u64))
    }

    fn set_config(&self, name: &str, value: Option<String>) -> DbResult<()> {
        match value {
            Some(v) => self.engine.exec(
                "REPLACE INTO config (name, value) VALUES (?, ?)",
                &[Param::Text(name), Param::Text(&v)],
            ),
            None => self
                .engine
                .exec("DELETE FROM config WHERE name = ?", &[Param::Text(name)]),
        }
    }

    /// The first column of every row, as ids.
    fn ids(&self, sql: &str, params: &[Param]) -> DbResult<Vec<u64>> {
        self.engine
            .query(sql, params)?
            .iter()
            .map(|row| row[0].u64())
            .collect()
    }

    fn first_u64(&self, sql: &str, params: &[Param]) -> DbResult<Option<u64>> {
        match self.engine.query(sql, params)?.first() {
            Some(row) => row[0].opt_u64(),
            None => Ok(None),
        }
    }

    /// Delete the data rows among `ids` that no revision and no held store refers to.
    fn prune(&self, ids: impl IntoIterator<Item = u64>) -> DbResult<()> {
        let ids: Vec<u64> = ids
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let dead = self.ids(
                &format!(
                    "SELECT id FROM data WHERE id IN ({}) \
                     AND NOT EXISTS (SELECT 1 FROM obj WHERE obj.data_id = data.id) \
                     AND NOT EXISTS (SELECT 1 FROM tobj WHERE tobj.data_id = data.id) \
                     AND NOT EXISTS (SELECT 1 FROM tdata WHERE tdata.data_id = data.id)",
                    int_list(chunk)
                ),
                &[],
            )?;
            if !dead.is_empty() {
                self.engine.delete_data(&dead)?;
            }
        }
        Ok(())
    }

    /// The id of the data row holding `data`, inserting it if no row has its checksum.
    fn hold_data(&mut self, data: &ObjectData) -> DbResult<u64> {
        let found = self.find_data(&[data])?;
        match found.get(&(data.checksum, data.compression)) {
            Some(&id) => Ok(id),
            None => {
                let id = self.new_data_id()?;
                self.engine.insert_data(&[NewData {
                    id,
                    checksum: &data.checksum,
                    compression: data.compression,
                    data: &data.data,
                }])?;
                Ok(id)
            }
        }
    }

    fn new_data_id(&mut self) -> DbResult<u64> {
        let id = self.next_data_id;
        if id >= E::MAX_INT {
            return Err(DbError::Backend("data row ids exhausted".into()));
        }
        self.next_data_id = id + 1;
        Ok(id)
    }

    /// The ids of the stored data rows with the checksum and compression of some of
    /// `values`, after checking that they hold the same bytes; and that values with the
    /// same checksum and compression hold the same bytes. Reads only: a
    /// `ChecksumCollision` leaves nothing written.
    fn find_data(&self, values: &[&ObjectData]) -> DbResult<BTreeMap<(Checksum, u8), u64>> {
        let mut wanted: BTreeMap<(Checksum, u8), &ObjectData> = BTreeMap::new();
        for &value in values {
            let key = (value.checksum, value.compression);
            match wanted.get(&key) {
                Some(first) if first.data != value.data => {
                    return Err(DbError::ChecksumCollision(value.checksum))
                }
                Some(_) => {}
                None => {
                    wanted.insert(key, value);
                }
            }
        }
        let hashes: Vec<&Checksum> = wanted
            .keys()
            .map(|(hash, _)| hash)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut found = BTreeMap::new();
        for chunk in hashes.chunks(IDS_PER_STATEMENT) {
            // A power-of-two list (the last hash repeated): few distinct statements to
            // prepare.
            let marks = chunk.len().next_power_of_two();
            let params: Vec<Param> = (0..marks)
                .map(|i| Param::Bytes(chunk[i.min(chunk.len() - 1)]))
                .collect();
            let rows = self.engine.query(
                &format!(
                    "SELECT data.id, {} FROM data WHERE hash IN ({})",
                    Self::data_columns(),
                    vec!["?"; marks].join(", ")
                ),
                &params,
            )?;
            for mut row in rows {
                let id = row[0].u64()?;
                let stored = self.data_from(id, &mut row[1..])?;
                let key = (stored.checksum, stored.compression);
                if let Some(value) = wanted.get(&key) {
                    if value.data != stored.data {
                        return Err(DbError::ChecksumCollision(stored.checksum));
                    }
                    found.insert(key, id);
                }
            }
        }
        Ok(found)
    }

    /// What writing the values `ttid` holds pending takes (reads only): the data rows to
    /// insert, reusing stored rows with the same bytes, and each object's data row. A
    /// `ChecksumCollision` leaves everything as it was: still pending, so that the
    /// transaction cannot vote until the value is replaced or dropped.
    fn plan_pending(&self, ttid: Tid) -> DbResult<Plan<'_>> {
        let mut plan = Plan {
            rows: Vec::new(),
            ids: BTreeMap::new(),
            next_data_id: self.next_data_id,
        };
        let Some(txn) = self.held.get(&ttid) else {
            return Ok(plan);
        };
        let pending: Vec<(Oid, &ObjectData)> = txn
            .objects
            .iter()
            .filter_map(|(oid, held)| match held {
                Held::Pending(data) => Some((*oid, data)),
                Held::Written { .. } => None,
            })
            .collect();
        if pending.is_empty() {
            return Ok(plan);
        }
        let values: Vec<&ObjectData> = pending.iter().map(|(_, data)| *data).collect();
        let mut ids = self.find_data(&values)?;
        for (oid, data) in pending {
            let key = (data.checksum, data.compression);
            let id = match ids.get(&key) {
                Some(&id) => id,
                None => {
                    let id = plan.next_data_id;
                    if id >= E::MAX_INT {
                        return Err(DbError::Backend("data row ids exhausted".into()));
                    }
                    plan.next_data_id = id + 1;
                    plan.rows.push(NewData {
                        id,
                        checksum: &data.checksum,
                        compression: data.compression,
                        data: &data.data,
                    });
                    ids.insert(key, id);
                    id
                }
            };
            plan.ids.insert(oid, id);
        }
        Ok(plan)
    }

    /// Write the data rows of the values `ttid` holds pending and refer to them from
    /// `tdata` rows (see `plan_pending`).
    fn write_pending(&mut self, ttid: Tid) -> DbResult<()> {
        let plan = self.plan_pending(ttid)?;
        if plan.ids.is_empty() {
            return Ok(());
        }
        let tdata = plan
            .ids
            .iter()
            .flat_map(|(oid, id)| [Param::U64(ttid.0), Param::U64(oid.0), Param::U64(*id)])
            .collect();
        let steps = [
            Step::Data(plan.rows),
            Step::Rows {
                head: "REPLACE INTO tdata (ttid, oid, data_id) VALUES",
                width: 3,
                params: tdata,
            },
        ];
        self.engine.run(&steps, false)?;
        let (ids, next) = (plan.ids, plan.next_data_id);
        self.next_data_id = next;
        let txn = self.held.get_mut(&ttid).expect("planned above");
        for (oid, id) in ids {
            txn.objects.insert(
                oid,
                Held::Written {
                    data_id: Some(id),
                    value_tid: None,
                },
            );
        }
        self.pending -= txn.pending;
        txn.pending = 0;
        txn.tdata = true;
        Ok(())
    }

    /// Keep the pending values within their bounds after a store to `ttid`.
    fn bound_pending(&mut self, ttid: Tid) -> DbResult<()> {
        if self
            .held
            .get(&ttid)
            .is_some_and(|t| t.pending > HELD_TXN_BYTES)
        {
            self.write_pending(ttid)?;
        }
        if self.pending > HELD_BYTES {
            self.write_pending(ttid)?;
            let others: Vec<Tid> = self.held.keys().copied().filter(|t| *t != ttid).collect();
            for other in others {
                match self.write_pending(other) {
                    // Its own vote will report it.
                    Err(DbError::ChecksumCollision(_)) => {}
                    result => result?,
                }
            }
        }
        Ok(())
    }

    /// The columns of a data row `data_from` reads.
    fn data_columns() -> String {
        format!("data.compression, data.hash, {}, data.value", E::DATA_SIZE)
    }

    /// The data row `id`, from its columns in `fields`.
    fn data_from(&self, id: u64, fields: &mut [Field]) -> DbResult<ObjectData> {
        if fields[0] == Field::Null {
            return Err(corrupt(format!("a revision refers to missing data {id}")));
        }
        let size = fields[2].u64()?;
        let data = self.engine.read_pieces(id, size, fields[3].take_bytes()?)?;
        if data.len() as u64 != size {
            return Err(corrupt(format!(
                "data {id} has {} bytes instead of {size}",
                data.len()
            )));
        }
        Ok(ObjectData {
            compression: u8::try_from(fields[0].u64()?)
                .map_err(|_| corrupt(format!("compression of data {id}")))?,
            checksum: fields[1]
                .take_bytes()?
                .try_into()
                .map_err(|_| corrupt(format!("hash of data {id}")))?,
            data,
        })
    }

    fn read_data(&self, id: u64) -> DbResult<Option<ObjectData>> {
        let mut rows = self.engine.query(
            &format!("SELECT {} FROM data WHERE id = ?", Self::data_columns()),
            &[Param::U64(id)],
        )?;
        rows.first_mut()
            .map(|row| self.data_from(id, row))
            .transpose()
    }

    /// The revision of `oid` at `at`, or the last before `before`, or the latest; followed
    /// by its data columns if `with_data` (NULL for no data).
    fn revision_row(
        &self,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
        with_data: bool,
    ) -> DbResult<Option<Row>> {
        let (condition, bound) = match (at, before) {
            _ if oid.0 > E::MAX_INT => return Ok(None),
            (Some(at), _) if at.0 > E::MAX_INT => return Ok(None),
            (Some(at), _) => ("AND obj.tid = ?", Some(at)),
            (None, Some(before)) if before.0 <= E::MAX_INT => ("AND obj.tid < ?", Some(before)),
            _ => ("", None),
        };
        let (columns, join) = if with_data {
            (
                format!(", {}", Self::data_columns()),
                "LEFT JOIN data ON data.id = obj.data_id",
            )
        } else {
            (String::new(), "")
        };
        let mut params = vec![self.part(oid.0)?, Param::U64(oid.0)];
        params.extend(bound.map(|t| Param::U64(t.0)));
        let rows = self.engine.query(
            &format!(
                "SELECT obj.tid, obj.data_id, obj.value_tid{columns} FROM obj {join} \
                 WHERE obj.`partition` = ? AND obj.oid = ? {condition} \
                 ORDER BY obj.tid DESC LIMIT 1"
            ),
            &params,
        )?;
        Ok(rows.into_iter().next())
    }

    fn revision(&self, oid: Oid, at: Option<Tid>, before: Option<Tid>) -> DbResult<Option<Rev>> {
        self.revision_row(oid, at, before, false)?
            .as_ref()
            .map(rev)
            .transpose()
    }

    fn object_exists(&self, oid: Oid) -> DbResult<bool> {
        if oid.0 > E::MAX_INT {
            return Ok(false);
        }
        let rows = self.engine.query(
            "SELECT 1 FROM obj WHERE `partition` = ? AND oid = ? LIMIT 1",
            &[self.part(oid.0)?, Param::U64(oid.0)],
        )?;
        Ok(!rows.is_empty())
    }

    /// The serial whose revision holds the data of `rev`, following undo backpointers. A
    /// broken chain (a pointer forward, or to a packed revision) gives `rev`'s own serial,
    /// as NEO does.
    fn data_serial(&self, oid: Oid, rev: Rev) -> DbResult<Tid> {
        let mut current = rev;
        while let Some(target) = current.value_tid {
            if target >= current.tid {
                return Ok(rev.tid);
            }
            match self.revision(oid, Some(target), None)? {
                Some(next) => current = next,
                None => return Ok(rev.tid),
            }
        }
        Ok(current.tid)
    }

    fn load_data(&self, data_id: Option<u64>) -> DbResult<Option<ObjectData>> {
        data_id
            .map(|id| {
                self.read_data(id)?
                    .ok_or_else(|| corrupt(format!("a revision refers to missing data {id}")))
            })
            .transpose()
    }

    fn lock_steps(ttid: Tid, tid: Tid) -> Step<'static> {
        Step::Exec(
            "UPDATE ttrans SET tid = ? WHERE ttid = ?",
            vec![Param::U64(tid.0), Param::U64(ttid.0)],
        )
    }

    /// Moving a locked transaction to `trans` / `obj`: running it again changes nothing.
    fn unlock_steps(&self, ttid: Tid, tid: Tid) -> DbResult<[Step<'static>; 4]> {
        let np = self.np()?;
        Ok([
            Step::Exec(
                "INSERT INTO trans (`partition`, tid, packed, oids, user, description, ext, \
                 ttid) SELECT ?, ?, packed, oids, user, description, ext, ttid FROM ttrans \
                 WHERE ttid = ?",
                vec![
                    Param::U64(partition_of(tid.0, np) as u64),
                    Param::U64(tid.0),
                    Param::U64(ttid.0),
                ],
            ),
            Step::Exec(
                "INSERT INTO obj (`partition`, oid, tid, data_id, value_tid) \
                 SELECT oid % ?, oid, ?, data_id, value_tid FROM tobj WHERE tid = ?",
                vec![Param::U64(np as u64), Param::U64(tid.0), Param::U64(ttid.0)],
            ),
            Step::Exec("DELETE FROM tobj WHERE tid = ?", vec![Param::U64(ttid.0)]),
            Step::Exec(
                "DELETE FROM ttrans WHERE ttid = ?",
                vec![Param::U64(ttid.0)],
            ),
        ])
    }

    /// Delete revisions of a partition matching `filter` (a condition on `obj` with the
    /// given parameters after the partition), releasing their data.
    fn delete_revisions(&self, partition: u32, filter: &str, params: &[Param]) -> DbResult<()> {
        let mut all = vec![Param::U64(partition as u64)];
        all.extend_from_slice(params);
        let ids = self.ids(
            &format!(
                "SELECT DISTINCT data_id FROM obj WHERE `partition` = ? AND data_id IS NOT NULL \
                 AND {filter}"
            ),
            &all,
        )?;
        self.engine.exec(
            &format!("DELETE FROM obj WHERE `partition` = ? AND {filter}"),
            &all,
        )?;
        self.prune(ids)
    }

    fn partitions_or_all(&self) -> Vec<u32> {
        (0..self.partitions.unwrap_or(0)).collect()
    }

    /// Visit, in OID order from `min_oid`, the newest revision at or before `tid` of each
    /// object of a partition, until `visit` returns false. Batches keep memory bounded.
    fn walk_newest(
        &self,
        partition: u32,
        min_oid: u64,
        tid: Tid,
        mut visit: impl FnMut(Newest) -> DbResult<bool>,
    ) -> DbResult<()> {
        let p = Param::U64(partition as u64);
        let mut from = min_oid;
        while from <= E::MAX_INT {
            let rows = self.engine.query(
                "SELECT o.oid, o.tid, o.data_id, t.n FROM \
                 (SELECT oid, MAX(tid) AS tid, COUNT(*) AS n FROM obj \
                  WHERE `partition` = ? AND oid >= ? AND tid <= ? \
                  GROUP BY oid ORDER BY oid LIMIT ?) t \
                 JOIN obj o ON o.`partition` = ? AND o.oid = t.oid AND o.tid = t.tid \
                 ORDER BY o.oid",
                &[
                    p,
                    Param::U64(from),
                    Param::U64(tid.0.min(E::MAX_INT)),
                    Param::U64(BATCH),
                    p,
                ],
            )?;
            for row in &rows {
                let newest = Newest {
                    oid: row[0].u64()?,
                    tid: row[1].u64()?,
                    data_id: row[2].opt_u64()?,
                    revisions: row[3].u64()?,
                };
                if !visit(newest)? {
                    return Ok(());
                }
            }
            match next_batch(&rows)? {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(())
    }

    fn pack_partition(&self, tid: Tid, partition: u32) -> DbResult<()> {
        self.walk_newest(partition, 0, tid, |newest| {
            let filter = if newest.data_id.is_none() {
                "oid = ? AND tid <= ?"
            } else if newest.revisions > 1 {
                "oid = ? AND tid < ?"
            } else {
                return Ok(true);
            };
            let params = [Param::U64(newest.oid), Param::U64(newest.tid)];
            self.delete_revisions(partition, filter, &params)?;
            Ok(true)
        })?;
        self.engine.exec(
            "UPDATE trans SET packed = 1 WHERE `partition` = ? AND tid <= ?",
            &[
                Param::U64(partition as u64),
                Param::U64(tid.0.min(E::MAX_INT)),
            ],
        )
    }

    /// Drop what `store` holds for `ttid` (its rows are dealt with).
    fn forget(&mut self, ttid: Tid) {
        if let Some(txn) = self.held.remove(&ttid) {
            self.pending -= txn.pending;
        }
    }

    fn forget_all(&mut self) {
        self.held.clear();
        self.pending = 0;
    }

    fn txn_row(&self, meta: &TxnMeta) -> DbResult<Vec<u8>> {
        check_meta(meta)?;
        Ok(oids_bytes(&meta.oids))
    }
}

impl<E: Engine> Backend for SqlBackend<E> {
    fn config(&self) -> DbResult<DbConfig> {
        parse_config(&read_config(&self.engine)?)
    }

    fn set_nid(&mut self, nid: Nid) -> DbResult<()> {
        self.set_config("nid", Some(nid.0.to_string()))?;
        self.engine.commit()?;
        self.nid = Some(nid);
        Ok(())
    }

    fn set_truncate_tid(&mut self, tid: Option<Tid>) -> DbResult<()> {
        self.set_config("truncate_tid", tid.map(hex_tid))?;
        self.set_config("backup_tid", None)?;
        self.engine.commit()
    }

    fn set_backup_tid(&mut self, tid: Option<Tid>) -> DbResult<()> {
        self.set_config("backup_tid", tid.map(hex_tid))
    }

    fn reserve_ids(&mut self, oid: Option<Oid>, tid: Option<Tid>) -> DbResult<()> {
        let c = self.config()?;
        if oid > c.reserved_oid {
            self.set_config("reserved_oid", oid.map(|o| o.0.to_string()))?;
        }
        if tid > c.reserved_tid {
            self.set_config("reserved_tid", tid.map(hex_tid))?;
        }
        self.engine.commit()
    }

    fn partition_table(&self) -> DbResult<Vec<Cell>> {
        self.engine
            .query(
                "SELECT `partition`, nid, state FROM pt ORDER BY `partition`, nid",
                &[],
            )?
            .iter()
            .map(|row| {
                Ok(Cell {
                    partition: u32::try_from(row[0].u64()?)
                        .map_err(|_| corrupt("partition number"))?,
                    nid: Nid(i32::try_from(row[1].i64()?).map_err(|_| corrupt("node id"))?),
                    state: cell_state(row[2].u64()?)?,
                })
            })
            .collect()
    }

    fn change_partition_table(
        &mut self,
        ptid: Ptid,
        replicas: u32,
        cells: &[Cell],
        reset: bool,
    ) -> DbResult<()> {
        // Replication marks of own cells that stay OUT_OF_DATE survive the change.
        let mut marks = BTreeMap::new();
        if let Some(nid) = self.nid {
            for row in self.engine.query(
                "SELECT `partition`, tid FROM pt WHERE nid = ? AND state = ?",
                &[
                    Param::I64(nid.0 as i64),
                    Param::U64(cell_state_code(CellState::OutOfDate)),
                ],
            )? {
                marks.insert(row[0].u64()?, row[1].opt_u64()?);
            }
        }
        if reset {
            self.engine.exec("DELETE FROM pt", &[])?;
        }
        for cell in cells {
            let (p, nid) = (
                Param::U64(cell.partition as u64),
                Param::I64(cell.nid.0 as i64),
            );
            if cell.state == CellState::Discarded {
                self.engine.exec(
                    "DELETE FROM pt WHERE `partition` = ? AND nid = ?",
                    &[p, nid],
                )?;
                continue;
            }
            let mark = if Some(cell.nid) == self.nid && cell.state == CellState::OutOfDate {
                marks.get(&(cell.partition as u64)).copied().flatten()
            } else {
                None
            };
            self.engine.exec(
                "REPLACE INTO pt (`partition`, nid, state, tid) VALUES (?, ?, ?, ?)",
                &[p, nid, Param::U64(cell_state_code(cell.state)), opt(mark)],
            )?;
        }
        self.set_config("ptid", Some(ptid.0.to_string()))?;
        self.set_config("replicas", Some(replicas.to_string()))?;
        self.engine.commit()?;
        self.partitions = self.count_partitions()?;
        Ok(())
    }

    fn replicated_up_to(&self, partition: u32) -> DbResult<Option<Tid>> {
        let Some(nid) = self.nid else {
            return Ok(None);
        };
        Ok(self
            .first_u64(
                "SELECT tid FROM pt WHERE `partition` = ? AND nid = ?",
                &[Param::U64(partition as u64), Param::I64(nid.0 as i64)],
            )?
            .map(Tid))
    }

    fn set_replicated_up_to(&mut self, partition: u32, tid: Option<Tid>) -> DbResult<()> {
        let own = self.nid.map(|nid| nid.0 as i64).unwrap_or(i64::MIN);
        let (p, state) = (
            Param::U64(partition as u64),
            Param::U64(cell_state_code(CellState::OutOfDate)),
        );
        let found = self.engine.query(
            "SELECT 1 FROM pt WHERE `partition` = ? AND nid = ? AND state = ?",
            &[p, Param::I64(own), state],
        )?;
        if found.is_empty() {
            return Err(DbError::Backend(format!(
                "partition {partition} has no OUT_OF_DATE cell of this node to mark replicated"
            )));
        }
        self.engine.exec(
            "UPDATE pt SET tid = ? WHERE `partition` = ? AND nid = ?",
            &[opt(tid.map(|t| t.0)), p, Param::I64(own)],
        )
    }

    fn store(&mut self, ttid: Tid, oid: Oid, value: Value) -> DbResult<()> {
        let key = [Param::U64(ttid.0), Param::U64(oid.0)];
        let held = match value {
            Value::Data(data) => Held::Pending(data),
            Value::Deleted => Held::Written {
                data_id: None,
                value_tid: None,
            },
            // Undo is rare: its data row is referred to at once, so that a pack before the
            // vote cannot release it.
            Value::Backpointer(tid) => match self.revision(oid, Some(tid), None)? {
                Some(Rev {
                    data_id: Some(id), ..
                }) => {
                    self.engine.exec(
                        "REPLACE INTO tdata (ttid, oid, data_id) VALUES (?, ?, ?)",
                        &[key[0], key[1], Param::U64(id)],
                    )?;
                    self.held.entry(ttid).or_default().tdata = true;
                    Held::Written {
                        data_id: Some(id),
                        value_tid: Some(tid),
                    }
                }
                _ => return Err(DbError::UndoPack { oid, tid }),
            },
        };
        let new_id = match &held {
            Held::Written { data_id, .. } => *data_id,
            Held::Pending(_) => None,
        };
        let weight = match &held {
            Held::Pending(data) => held_weight(data),
            Held::Written { .. } => 0,
        };
        let txn = self.held.entry(ttid).or_default();
        txn.pending += weight;
        self.pending += weight;
        match txn.objects.insert(oid, held) {
            Some(Held::Pending(old)) => {
                txn.pending -= held_weight(&old);
                self.pending -= held_weight(&old);
            }
            Some(Held::Written {
                data_id: Some(old), ..
            }) => {
                if new_id.is_none() {
                    self.engine
                        .exec("DELETE FROM tdata WHERE ttid = ? AND oid = ?", &key)?;
                }
                if new_id != Some(old) {
                    self.prune([old])?;
                }
            }
            _ => {}
        }
        self.bound_pending(ttid)
    }

    fn unstore(&mut self, ttid: Tid, oid: Oid) -> DbResult<()> {
        let Some(txn) = self.held.get_mut(&ttid) else {
            return Ok(());
        };
        match txn.objects.remove(&oid) {
            Some(Held::Pending(data)) => {
                txn.pending -= held_weight(&data);
                self.pending -= held_weight(&data);
            }
            Some(Held::Written {
                data_id: Some(id), ..
            }) => {
                self.engine.exec(
                    "DELETE FROM tdata WHERE ttid = ? AND oid = ?",
                    &[Param::U64(ttid.0), Param::U64(oid.0)],
                )?;
                self.prune([id])?;
            }
            _ => {}
        }
        Ok(())
    }

    fn vote(&mut self, ttid: Tid, meta: Option<&TxnMeta>) -> DbResult<()> {
        let oids = meta.map(|m| self.txn_row(m)).transpose()?;
        // Reads first: a collision found here leaves nothing written.
        let plan = self.plan_pending(ttid)?;
        let next_data_id = plan.next_data_id;
        let mut steps = Vec::new();
        if let Some(txn) = self.held.get(&ttid) {
            let mut tobj = Vec::with_capacity(txn.objects.len() * 4);
            for (oid, held) in &txn.objects {
                let (data_id, value_tid) = match held {
                    Held::Written { data_id, value_tid } => (*data_id, *value_tid),
                    Held::Pending(_) => (plan.ids.get(oid).copied(), None),
                };
                tobj.extend([
                    Param::U64(ttid.0),
                    Param::U64(oid.0),
                    opt(data_id),
                    opt(value_tid.map(|t| t.0)),
                ]);
            }
            steps.push(Step::Data(plan.rows));
            steps.push(Step::Rows {
                head: "INSERT INTO tobj (tid, oid, data_id, value_tid) VALUES",
                width: 4,
                params: tobj,
            });
            if txn.tdata {
                steps.push(Step::Exec(
                    "DELETE FROM tdata WHERE ttid = ?",
                    vec![Param::U64(ttid.0)],
                ));
            }
        }
        if let (Some(meta), Some(oids)) = (meta, &oids) {
            steps.push(Step::Exec(
                "REPLACE INTO ttrans (ttid, tid, packed, oids, user, description, ext) \
                 VALUES (?, NULL, 0, ?, ?, ?, ?)",
                vec![
                    Param::U64(ttid.0),
                    Param::Bytes(oids),
                    Param::Bytes(&meta.user),
                    Param::Bytes(&meta.description),
                    Param::Bytes(&meta.extension),
                ],
            ));
        }
        self.engine.run(&steps, !self.deferred)?;
        drop(steps);
        self.next_data_id = next_data_id;
        self.forget(ttid);
        Ok(())
    }

    fn set_deferred(&mut self, deferred: bool) {
        self.deferred = deferred;
    }

    fn lock(&mut self, ttid: Tid, tid: Tid) -> DbResult<()> {
        self.engine
            .run(&[Self::lock_steps(ttid, tid)], !self.deferred)
    }

    fn unlock(&mut self, ttid: Tid, tid: Tid) -> DbResult<()> {
        self.engine
            .run(&self.unlock_steps(ttid, tid)?, !self.deferred)
    }

    fn abort(&mut self, ttid: Tid) -> DbResult<()> {
        let key = [Param::U64(ttid.0)];
        let ids = self.ids(
            "SELECT data_id FROM tobj WHERE tid = ? AND data_id IS NOT NULL \
             UNION SELECT data_id FROM tdata WHERE ttid = ?",
            &[key[0], key[0]],
        )?;
        self.engine.exec("DELETE FROM tdata WHERE ttid = ?", &key)?;
        self.engine.exec("DELETE FROM tobj WHERE tid = ?", &key)?;
        self.engine
            .exec("DELETE FROM ttrans WHERE ttid = ?", &key)?;
        self.prune(ids)?;
        self.engine.commit()?;
        self.forget(ttid);
        Ok(())
    }

    fn locked_transactions(&self) -> DbResult<BTreeMap<Tid, Option<Tid>>> {
        let mut voted = BTreeMap::new();
        for ttid in self.ids("SELECT DISTINCT tid FROM tobj", &[])? {
            voted.insert(Tid(ttid), None);
        }
        for row in self.engine.query("SELECT ttid, tid FROM ttrans", &[])? {
            voted.insert(Tid(row[0].u64()?), row[1].opt_u64()?.map(Tid));
        }
        Ok(voted)
    }

    fn final_tid(&self, ttid: Tid) -> DbResult<Option<Tid>> {
        if ttid.0 > E::MAX_INT {
            return Ok(None);
        }
        let key = [Param::U64(ttid.0)];
        let committed = self.first_u64("SELECT tid FROM trans WHERE ttid = ?", &key)?;
        let found = match committed {
            Some(tid) => Some(tid),
            None => self.first_u64("SELECT tid FROM ttrans WHERE ttid = ?", &key)?,
        };
        Ok(found.map(Tid))
    }

    fn validate(&mut self, ttid: Tid, tid: Tid) -> DbResult<()> {
        let [a, b, c, d] = self.unlock_steps(ttid, tid)?;
        self.engine
            .run(&[Self::lock_steps(ttid, tid), a, b, c, d], true)
    }

    fn drop_unfinished(&mut self) -> DbResult<()> {
        let mut ids = self.ids(
            "SELECT DISTINCT data_id FROM tobj WHERE data_id IS NOT NULL",
            &[],
        )?;
        ids.extend(self.ids("SELECT DISTINCT data_id FROM tdata", &[])?);
        for table in ["tdata", "tobj", "ttrans"] {
            self.engine.exec(&format!("DELETE FROM {table}"), &[])?;
        }
        self.prune(ids)?;
        self.engine.commit()?;
        self.forget_all();
        Ok(())
    }

    fn load(&self, oid: Oid, at: Option<Tid>, before: Option<Tid>) -> DbResult<Load> {
        let Some(mut row) = self.revision_row(oid, at, before, true)? else {
            return Ok(if self.object_exists(oid)? {
                Load::NotFound
            } else {
                Load::DoesNotExist
            });
        };
        let rev = rev(&row)?;
        let latest = at.is_none() && before.is_none_or(|b| b.0 > E::MAX_INT);
        let next_serial = if latest {
            None
        } else {
            self.first_u64(
                "SELECT MIN(tid) FROM obj WHERE `partition` = ? AND oid = ? AND tid > ?",
                &[self.part(oid.0)?, Param::U64(oid.0), Param::U64(rev.tid.0)],
            )?
            .map(Tid)
        };
        let data = match rev.data_id {
            Some(id) => self.data_from(id, &mut row[3..])?,
            None => ObjectData {
                compression: 0,
                checksum: ZERO_HASH,
                data: Vec::new(),
            },
        };
        Ok(Load::Found(Loaded {
            serial: rev.tid,
            next_serial,
            compression: data.compression,
            checksum: data.checksum,
            data: data.data,
            data_serial: rev.value_tid,
        }))
    }

    fn history(&self, oid: Oid, offset: u64, length: u64) -> DbResult<Option<Vec<(Tid, u64)>>> {
        if !self.object_exists(oid)? {
            return Ok(None);
        }
        let rows = self.engine.query(
            &format!(
                "SELECT obj.tid, {} FROM obj LEFT JOIN data ON data.id = obj.data_id \
                 WHERE obj.`partition` = ? AND obj.oid = ? ORDER BY obj.tid DESC LIMIT ? OFFSET ?",
                E::DATA_SIZE
            ),
            &[
                self.part(oid.0)?,
                Param::U64(oid.0),
                Param::U64(length.min(E::MAX_INT)),
                Param::U64(offset.min(E::MAX_INT)),
            ],
        )?;
        rows.iter()
            .map(|row| Ok((Tid(row[0].u64()?), row[1].opt_u64()?.unwrap_or(0))))
            .collect::<DbResult<_>>()
            .map(Some)
    }

    fn transaction(&self, tid: Tid) -> DbResult<Option<TxnInfo>> {
        if tid.0 > E::MAX_INT {
            return Ok(None);
        }
        let mut rows = self.engine.query(
            "SELECT ttid, packed, user, description, ext, oids FROM trans \
             WHERE `partition` = ? AND tid = ?",
            &[self.part(tid.0)?, Param::U64(tid.0)],
        )?;
        let Some(row) = rows.first_mut() else {
            return Ok(None);
        };
        Ok(Some(TxnInfo {
            tid,
            ttid: Tid(row[0].u64()?),
            packed: row[1].u64()? != 0,
            meta: TxnMeta {
                user: row[2].take_bytes()?,
                description: row[3].take_bytes()?,
                extension: row[4].take_bytes()?,
                oids: parse_oids(&row[5].take_bytes()?)?,
            },
        }))
    }

    fn tids(&self, offset: u64, length: u64, partitions: &[u32]) -> DbResult<Vec<Tid>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<u64> = partitions.iter().map(|&p| p as u64).collect();
        let tids = self.ids(
            &format!(
                "SELECT tid FROM trans WHERE `partition` IN ({}) \
                 ORDER BY tid DESC LIMIT ? OFFSET ?",
                int_list(&list)
            ),
            &[
                Param::U64(length.min(E::MAX_INT)),
                Param::U64(offset.min(E::MAX_INT)),
            ],
        )?;
        Ok(tids.into_iter().map(Tid).collect())
    }

    fn tids_from(
        &self,
        min_tid: Tid,
        max_tid: Tid,
        length: u64,
        partitions: &[u32],
    ) -> DbResult<Vec<Tid>> {
        if partitions.is_empty() || min_tid.0 > E::MAX_INT {
            return Ok(Vec::new());
        }
        let list: Vec<u64> = partitions.iter().map(|&p| p as u64).collect();
        let tids = self.ids(
            &format!(
                "SELECT tid FROM trans WHERE `partition` IN ({}) AND tid >= ? AND tid <= ? \
                 ORDER BY tid LIMIT ?",
                int_list(&list)
            ),
            &[
                Param::U64(min_tid.0),
                Param::U64(max_tid.0.min(E::MAX_INT)),
                Param::U64(length.min(E::MAX_INT)),
            ],
        )?;
        Ok(tids.into_iter().map(Tid).collect())
    }

    fn oids_from(
        &self,
        partition: u32,
        length: u64,
        min_oid: Oid,
        tid: Tid,
    ) -> DbResult<(Vec<Oid>, Option<Oid>)> {
        // Deleted objects are skipped; the first one past `length` is where the caller
        // continues.
        let mut found = Vec::new();
        let mut next = None;
        self.walk_newest(partition, min_oid.0, tid, |newest| {
            if newest.data_id.is_none() {
                return Ok(true);
            }
            if found.len() as u64 == length {
                next = Some(Oid(newest.oid));
                return Ok(false);
            }
            found.push(Oid(newest.oid));
            Ok(true)
        })?;
        Ok((found, next))
    }

    fn find_undo(&self, oid: Oid, ltid: Tid, undone_tid: Tid) -> DbResult<Option<UndoInfo>> {
        let Some(undone) = self.revision(oid, Some(undone_tid), None)? else {
            return Ok(None);
        };
        let Some(current) = self.revision(oid, None, Some(ltid))? else {
            return Ok(None);
        };
        let is_current = self.data_serial(oid, undone)? == self.data_serial(oid, current)?;
        let undo = match self.revision(oid, None, Some(undone_tid))? {
            Some(before) => Some(self.data_serial(oid, before)?),
            None => None,
        };
        Ok(Some(UndoInfo {
            current: current.tid,
            undo,
            is_current,
        }))
    }

    fn last_ids(&self) -> DbResult<LastIds> {
        let mut ids = LastIds {
            last_oid: self.first_u64("SELECT MAX(oid) FROM tobj", &[])?.map(Oid),
            ..LastIds::default()
        };
        // Per partition, so that every aggregate is an index lookup.
        for partition in self.partitions_or_all() {
            let p = [Param::U64(partition as u64)];
            let max = |sql: &str| self.first_u64(sql, &p);
            let last_trans = max("SELECT MAX(tid) FROM trans WHERE `partition` = ?")?;
            let last_obj = max("SELECT MAX(tid) FROM obj WHERE `partition` = ?")?;
            let last_oid = max("SELECT MAX(oid) FROM obj WHERE `partition` = ?")?;
            let first = max("SELECT MIN(tid) FROM trans WHERE `partition` = ?")?;
            ids.last_tid = ids.last_tid.max(last_trans.max(last_obj).map(Tid));
            ids.last_oid = ids.last_oid.max(last_oid.map(Oid));
            if let Some(first) = first.map(Tid) {
                ids.first_tid = Some(ids.first_tid.map_or(first, |f| f.min(first)));
            }
        }
        Ok(ids)
    }

    fn truncate(&mut self) -> DbResult<()> {
        let Some(tid) = self.config()?.truncate_tid else {
            return Ok(());
        };
        let t = Param::U64(tid.0.min(E::MAX_INT));
        for partition in self.partitions_or_all() {
            let p = Param::U64(partition as u64);
            self.engine.exec(
                "DELETE FROM trans WHERE `partition` = ? AND tid > ?",
                &[p, t],
            )?;
            self.delete_revisions(partition, "tid > ?", &[t])?;
        }
        self.engine
            .exec("UPDATE pt SET tid = ? WHERE tid > ?", &[t, t])?;
        self.set_config("truncate_tid", None)?;
        self.engine.commit()
    }

    fn replication_tids(
        &self,
        partition: u32,
        min_tid: Tid,
        max_tid: Tid,
        length: u64,
    ) -> DbResult<Vec<Tid>> {
        self.tids_from(min_tid, max_tid, length, &[partition])
    }

    fn replication_objects(
        &self,
        partition: u32,
        min_tid: Tid,
        max_tid: Tid,
        min_oid: Oid,
        length: u64,
    ) -> DbResult<Vec<(Tid, Oid)>> {
        if min_tid.0 > E::MAX_INT {
            return Ok(Vec::new());
        }
        self.engine
            .query(
                "SELECT tid, oid FROM obj WHERE `partition` = ? AND tid >= ? AND tid <= ? \
                 AND (tid > ? OR oid >= ?) ORDER BY tid, oid LIMIT ?",
                &[
                    Param::U64(partition as u64),
                    Param::U64(min_tid.0),
                    Param::U64(max_tid.0.min(E::MAX_INT)),
                    Param::U64(min_tid.0),
                    Param::U64(min_oid.0.min(E::MAX_INT)),
                    Param::U64(length.min(E::MAX_INT)),
                ],
            )?
            .iter()
            .map(|row| Ok((Tid(row[0].u64()?), Oid(row[1].u64()?))))
            .collect()
    }

    fn object_record(&self, oid: Oid, serial: Tid) -> DbResult<Option<ObjectRecord>> {
        let Some(rev) = self.revision(oid, Some(serial), None)? else {
            return Ok(None);
        };
        Ok(Some(ObjectRecord {
            data: self.load_data(rev.data_id)?,
            data_serial: rev.value_tid,
        }))
    }

    fn put_transaction(&mut self, txn: &TxnInfo) -> DbResult<()> {
        let oids = self.txn_row(&txn.meta)?;
        self.engine.exec(
            "REPLACE INTO trans (`partition`, tid, packed, oids, user, description, ext, ttid) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            &[
                self.part(txn.tid.0)?,
                Param::U64(txn.tid.0),
                Param::U64(txn.packed as u64),
                Param::Bytes(&oids),
                Param::Bytes(&txn.meta.user),
                Param::Bytes(&txn.meta.description),
                Param::Bytes(&txn.meta.extension),
                Param::U64(txn.ttid.0),
            ],
        )
    }

    fn put_object(&mut self, oid: Oid, serial: Tid, record: &ObjectRecord) -> DbResult<()> {
        let p = self.part(oid.0)?;
        let data_id = match (&record.data, record.data_serial) {
            (Some(data), _) => Some(self.hold_data(data)?),
            (None, Some(tid)) => match self.revision(oid, Some(tid), None)? {
                Some(Rev {
                    data_id: Some(id), ..
                }) => Some(id),
                _ => return Err(DbError::UndoPack { oid, tid }),
            },
            (None, None) => None,
        };
        let old = self
            .revision(oid, Some(serial), None)?
            .and_then(|r| r.data_id);
        self.engine.exec(
            "REPLACE INTO obj (`partition`, oid, tid, data_id, value_tid) VALUES (?, ?, ?, ?, ?)",
            &[
                p,
                Param::U64(oid.0),
                Param::U64(serial.0),
                opt(data_id),
                opt(record.data_serial.map(|t| t.0)),
            ],
        )?;
        self.prune(old.filter(|&id| Some(id) != data_id))
    }

    fn delete_transaction(&mut self, tid: Tid) -> DbResult<()> {
        if tid.0 > E::MAX_INT {
            return Ok(());
        }
        self.engine.exec(
            "DELETE FROM trans WHERE `partition` = ? AND tid = ?",
            &[self.part(tid.0)?, Param::U64(tid.0)],
        )
    }

    fn delete_object(&mut self, oid: Oid, serial: Tid) -> DbResult<()> {
        if serial.0 > E::MAX_INT || oid.0 > E::MAX_INT {
            return Ok(());
        }
        let partition = partition_of(oid.0, self.np()?);
        self.delete_revisions(
            partition,
            "oid = ? AND tid = ?",
            &[Param::U64(oid.0), Param::U64(serial.0)],
        )
    }

    fn check_tid_range(
        &self,
        partition: u32,
        length: u64,
        min_tid: Tid,
        max_tid: Tid,
    ) -> DbResult<TidRangeCheck> {
        let tids = self.replication_tids(partition, min_tid, max_tid, length)?;
        Ok(TidRangeCheck {
            count: tids.len() as u64,
            sha1: digest(tids.iter().map(|t| t.0)),
            max_tid: tids.last().copied(),
        })
    }

    fn check_serial_range(
        &self,
        partition: u32,
        length: u64,
        min_tid: Tid,
        max_tid: Tid,
        min_oid: Oid,
    ) -> DbResult<SerialRangeCheck> {
        let rows = self.replication_objects(partition, min_tid, max_tid, min_oid, length)?;
        Ok(SerialRangeCheck {
            count: rows.len() as u64,
            tid_sha1: digest(rows.iter().map(|(t, _)| t.0)),
            last_tid: rows.last().map(|(t, _)| *t),
            oid_sha1: digest(rows.iter().map(|(_, o)| o.0)),
            last_oid: rows.last().map(|(_, o)| *o),
        })
    }

    fn commit(&mut self) -> DbResult<()> {
        self.engine.commit()
    }

    fn pack(&mut self, tid: Tid, partitions: &[u32]) -> DbResult<()> {
        for &partition in partitions {
            self.pack_partition(tid, partition)?;
        }
        self.engine.commit()
    }

    fn erase(&mut self) -> DbResult<()> {
        self.forget_all();
        for table in ["pt", "trans", "obj", "ttrans", "tobj", "tdata"] {
            self.engine.exec(&format!("DELETE FROM {table}"), &[])?;
        }
        let ids = self.ids("SELECT id FROM data", &[])?;
        self.engine.delete_data(&ids)?;
        for key in [
            "nid",
            "ptid",
            "replicas",
            "truncate_tid",
            "backup_tid",
            "reserved_oid",
            "reserved_tid",
        ] {
            self.set_config(key, None)?;
        }
        self.partitions = None;
        self.nid = None;
        self.engine.commit()
    }

    fn drop_partitions(&mut self, partitions: &[u32]) -> DbResult<()> {
        for &partition in partitions {
            self.engine.exec(
                "DELETE FROM trans WHERE `partition` = ?",
                &[Param::U64(partition as u64)],
            )?;
            self.delete_revisions(partition, "1 = 1", &[])?;
        }
        self.engine.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_sha1_of_comma_joined_decimals() {
        assert_eq!(digest([]), ZERO_HASH);
        let expected: Checksum = Sha1::digest(b"1,22,333").into();
        assert_eq!(digest([1, 22, 333]), expected);
    }

    #[test]
    fn oid_lists_round_trip_and_bad_lengths_are_errors() {
        let oids = vec![Oid(1), Oid(u64::MAX), Oid(0x0102_0304_0506_0708)];
        assert_eq!(parse_oids(&oids_bytes(&oids)).unwrap(), oids);
        assert!(matches!(parse_oids(&[0; 7]), Err(DbError::Backend(_))));
    }

    #[test]
    fn metadata_limits() {
        let mut meta = TxnMeta {
            oids: vec![Oid(0); MAX_TXN_OIDS],
            ..TxnMeta::default()
        };
        assert!(check_meta(&meta).is_ok());
        meta.oids.push(Oid(0));
        assert!(matches!(check_meta(&meta), Err(DbError::TooLarge(_))));
        meta.oids.clear();
        meta.description = vec![b'x'; MAX_TXN_TEXT + 1];
        assert!(matches!(check_meta(&meta), Err(DbError::TooLarge(_))));
    }
}
