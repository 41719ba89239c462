//! SQLite store: one file in the data directory, WAL mode. Records are JSON
//! bodies with the columns queries filter on beside them, and a version that
//! every update compares and sets; the audit log is a table of its own,
//! chained by hash, with its head kept in `meta`.
//!
//! SQLite is blocking, so it never runs on the async runtime's threads: one
//! thread owns the write connection (the chain is sequential by nature, and
//! one writer is what SQLite allows anyway), two own read connections, and a
//! whole-chain verification opens a connection of its own on a blocking
//! thread, so it holds up neither reads nor writes. Calls reach those threads
//! as jobs and await their answers.
//!
//! The process that opens the store is the only one that may write it (an
//! exclusive lock on the file, held while the store is open), so the writer
//! keeps the live sandbox records in memory as it commits them: listing and
//! reading live sandboxes (every ListSandboxes, every expiry) reads no rows.
//!
//! The schema is versioned (`PRAGMA user_version`); [`MIGRATIONS`] brings a
//! store written by any earlier daemon up to date at open, in one transaction.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};

use sandpit_core::audit::{self, AuditEntry, AuditRecord, Hash, Outcome, VerifyReport};
use sandpit_core::register::Experiment;
use sandpit_core::sandbox::Sandbox;
use sandpit_core::store::{
    Admission, Admitted, AuditPage, AuditQuery, ExperimentFilter, ListFilter, Store, StoreStats, Versioned,
    QUERY_FIELD_MAX,
};
use sandpit_core::time::{from_millis, to_millis};
use sandpit_core::Error;

/// What the SQLite store fails with: SQLite's errors and the core's (a
/// corrupt record, a stopped thread), kept apart inside this crate; at the
/// [`Store`] interface both are a core [`Error`] (SQLite's as [`Error::Store`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused or failed.
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// One of the core's errors, passed through unchanged.
    #[error(transparent)]
    Core(#[from] Error),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::Sqlite(e) => Error::Store(e.to_string()),
            StoreError::Core(e) => e,
        }
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;
/// What the [`Store`] interface answers with.
type CoreResult<T> = sandpit_core::Result<T>;

/// Schema steps, in order; `PRAGMA user_version` counts those applied. Each
/// step is idempotent, because stores written before the schema was versioned
/// (user_version 0) may already have some of it.
const MIGRATIONS: &[fn(&Transaction<'_>) -> Result<()>] =
    &[base_schema, experiment_versions, sandbox_versions, sandbox_columns_from_bodies];

fn base_schema(tx: &Transaction<'_>) -> Result<()> {
    tx.execute_batch(
        "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    experiment TEXT NOT NULL,
    state TEXT NOT NULL,
    ended INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sandboxes_active ON sandboxes (ended, created_ms);
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    status TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    experiment TEXT NOT NULL,
    sandbox TEXT NOT NULL,
    outcome TEXT NOT NULL,
    code TEXT NOT NULL,
    reason TEXT NOT NULL,
    source TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time_ms);
CREATE INDEX IF NOT EXISTS audit_sandbox ON audit (sandbox);
CREATE INDEX IF NOT EXISTS audit_experiment ON audit (experiment);
",
    )?;
    Ok(())
}

fn add_version_column(tx: &Transaction<'_>, table: &str) -> Result<()> {
    let exists =
        tx.prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = 'version'"))?.exists([])?;
    if !exists {
        tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN version INTEGER NOT NULL DEFAULT 1"))?;
    }
    Ok(())
}

fn experiment_versions(tx: &Transaction<'_>) -> Result<()> {
    add_version_column(tx, "experiments")
}

fn sandbox_versions(tx: &Transaction<'_>) -> Result<()> {
    add_version_column(tx, "sandboxes")
}

/// Daemons before this step updated a sandbox's state and body but not its
/// team, experiment and creation columns, so a claimed warm sandbox stayed
/// nobody's to the queries (quota counts, a team's list, an experiment's
/// teardown). Its body always had them: copy them back.
fn sandbox_columns_from_bodies(tx: &Transaction<'_>) -> Result<()> {
    let mut read = tx.prepare("SELECT id, body FROM sandboxes WHERE ended = 0")?;
    let rows = read.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut write = tx.prepare("UPDATE sandboxes SET team = ?2, experiment = ?3, created_ms = ?4 WHERE id = ?1")?;
    for row in rows {
        let (id, body) = row?;
        let sb: Sandbox = decode(body)?;
        write.execute(params![id, sb.team, sb.experiment, to_millis(sb.created_at)])?;
    }
    Ok(())
}

/// Applies the schema steps a store lacks; refuses a store newer than this daemon.
fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction()?;
    let at: usize = tx.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))?.try_into().unwrap_or(0);
    if at > MIGRATIONS.len() {
        return Err(Error::Store(format!(
            "the store is at schema version {at}, newer than this daemon's {}: upgrade the daemon",
            MIGRATIONS.len()
        ))
        .into());
    }
    for step in &MIGRATIONS[at..] {
        step(&tx)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    tx.commit()?;
    Ok(())
}

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// A thread that owns `S` (a connection) and runs the jobs sent to it, in order.
struct Worker<S> {
    jobs: std::sync::mpsc::Sender<Job<S>>,
}

impl<S: 'static> Worker<S> {
    fn spawn(name: &str, state: S) -> Result<Worker<S>>
    where
        S: Send,
    {
        let (jobs, rx) = std::sync::mpsc::channel::<Job<S>>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let mut state = state;
                // Ends when the store (every sender) is dropped.
                while let Ok(job) = rx.recv() {
                    // A job that panics must not take the store's thread with it.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut state)));
                }
            })
            .map_err(|e| Error::Store(format!("cannot start the store's {name} thread: {e}")))?;
        Ok(Worker { jobs })
    }

    /// Runs `f` on the worker's thread and waits for its answer.
    async fn call<T: Send + 'static>(&self, f: impl FnOnce(&mut S) -> Result<T> + Send + 'static) -> CoreResult<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |s| {
                let _ = tx.send(f(s));
            }))
            .map_err(|_| Error::Store("the store's thread has stopped".into()))?;
        let answer = rx.await.map_err(|_| Error::Store("a store call failed on its thread (panicked)".into()))?;
        Ok(answer?)
    }
}

struct Writer {
    conn: Connection,
    /// The chain's last (seq, hash), as committed.
    head: (u64, Hash),
    live: Arc<Mutex<Live>>,
}

impl Writer {
    /// After a commit: the chain's head moves to `audit` (if one was
    /// appended) and the live view takes `stored` (the sandbox record the
    /// change stored, at its new version).
    fn committed(&mut self, audit: Option<&AuditRecord>, stored: Option<Sandbox>) {
        if let Some(r) = audit {
            self.head = (r.seq, r.hash);
        }
        if let Some(sb) = stored {
            self.live.lock().unwrap_or_else(|p| p.into_inner()).put(sb);
        }
    }
}

/// The live (not ended) sandbox records as committed.
#[derive(Default)]
struct Live {
    by_id: std::collections::HashMap<String, Sandbox>,
    /// (created_ms, id) of each: oldest first, as the store lists.
    by_age: std::collections::BTreeSet<(i64, String)>,
}

impl Live {
    /// Puts `sb` as stored: replaces its earlier version, or removes it once ended.
    fn put(&mut self, sb: Sandbox) {
        if let Some(old) = self.by_id.remove(&sb.id) {
            self.by_age.remove(&(to_millis(old.created_at), old.id));
        }
        if !sb.state.is_ended() {
            self.by_age.insert((to_millis(sb.created_at), sb.id.clone()));
            self.by_id.insert(sb.id.clone(), sb);
        }
    }

    fn get(&self, id: &str) -> Option<&Sandbox> {
        self.by_id.get(id)
    }

    /// Oldest first.
    fn iter(&self) -> impl Iterator<Item = &Sandbox> {
        self.by_age.iter().filter_map(|(_, id)| self.by_id.get(id))
    }
}

/// Read connections: enough that a slow query does not hold up the rest.
const READERS: usize = 2;

/// Memory all of the process's SQLite connections may hold together (page
/// caches, schemas, statements) before SQLite recycles cached pages: what
/// one connection's cache held when the store had one. Each connection's own
/// cache may otherwise grow to 2 MiB, and with a writer and two readers that
/// was up to 4 MiB more resident memory, for pages the kernel caches anyway.
const SQLITE_SOFT_HEAP_LIMIT: i64 = 2 << 20;

pub struct SqliteStore {
    path: PathBuf,
    writer: Worker<Writer>,
    readers: Vec<Worker<Connection>>,
    next_reader: AtomicUsize,
    /// Live sandbox records as committed, kept by the writer: lists and
    /// reads of live sandboxes need no row read, no JSON decoded (decoding a
    /// thousand bodies, profile and all, was most of a ListSandboxes call).
    live: Arc<Mutex<Live>>,
    /// Held while the store is open: this process is the file's only writer.
    _lock: std::fs::File,
}

fn decode<T: serde::de::DeserializeOwned>(body: String) -> Result<T> {
    serde_json::from_str(&body).map_err(|e| Error::Store(format!("corrupt record: {e}")).into())
}

fn encode<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Store(e.to_string()).into())
}

fn read_head(conn: &Connection) -> Result<Option<(u64, Hash)>> {
    let seq: Option<String> =
        conn.query_row("SELECT value FROM meta WHERE key = 'audit_head_seq'", [], |r| r.get(0)).optional()?;
    let hash: Option<String> =
        conn.query_row("SELECT value FROM meta WHERE key = 'audit_head_hash'", [], |r| r.get(0)).optional()?;
    match (seq, hash) {
        (Some(s), Some(h)) => {
            let seq = s.parse().map_err(|_| Error::Store("corrupt audit head".into()))?;
            let mut hash = [0u8; 32];
            hex::decode_to_slice(h, &mut hash).map_err(|_| Error::Store("corrupt audit head".into()))?;
            Ok(Some((seq, hash)))
        }
        _ => Ok(None),
    }
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    let blob = |i: usize| -> rusqlite::Result<Hash> {
        let v: Vec<u8> = r.get(i)?;
        v.try_into().map_err(|_| rusqlite::Error::InvalidColumnType(i, "hash".into(), rusqlite::types::Type::Blob))
    };
    let outcome: String = r.get(8)?;
    Ok(AuditRecord {
        seq: r.get::<_, i64>(0)? as u64,
        entry: AuditEntry {
            time: from_millis(r.get(1)?),
            actor: r.get(2)?,
            role: r.get(3)?,
            action: r.get(4)?,
            target: r.get(5)?,
            experiment: r.get(6)?,
            sandbox: r.get(7)?,
            // An unknown outcome cannot come from the daemon; keep verify able to flag it.
            outcome: Outcome::parse(&outcome).unwrap_or(Outcome::Failed),
            code: r.get(9)?,
            reason: r.get(10)?,
            source: r.get(11)?,
        },
        prev_hash: blob(12)?,
        hash: blob(13)?,
    })
}

/// Every column of a record, whole, in [`row_to_record`] order (for verification).
const AUDIT_COLUMNS: &str =
    "seq, time_ms, actor, role, action, target, experiment, sandbox, outcome, code, reason, source, prev_hash, hash";

/// A body with the version its row holds.
fn versioned_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, i64)> {
    Ok((r.get(0)?, r.get(1)?))
}

fn decode_experiment((body, version): (String, i64)) -> Result<Experiment> {
    let mut e: Experiment = decode(body)?;
    e.version = version as u64;
    Ok(e)
}

fn decode_sandbox((body, version): (String, i64)) -> Result<Sandbox> {
    let mut sb: Sandbox = decode(body)?;
    sb.version = version as u64;
    Ok(sb)
}

fn open_read_only(path: &Path) -> Result<Connection> {
    if !path.is_file() {
        return Err(Error::Store(format!("{}: no such store", path.display())).into());
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// A sandbox as its row: the columns the queries filter on, the body, and
/// the version it was read at.
struct SandboxRow {
    id: String,
    team: String,
    experiment: String,
    state: &'static str,
    ended: bool,
    created_ms: i64,
    version: i64,
    /// The record as it will be stored: at `version + 1`.
    body: String,
}

impl SandboxRow {
    /// The row, and the record it stores (for the writer's live view).
    fn new(sb: &Sandbox) -> Result<(SandboxRow, Sandbox)> {
        let record = Sandbox { version: sb.version + 1, ..sb.clone() };
        let body = encode(&record)?;
        let row = SandboxRow {
            id: sb.id.clone(),
            team: sb.team.clone(),
            experiment: sb.experiment.clone(),
            state: sb.state.as_str(),
            ended: sb.state.is_ended(),
            created_ms: to_millis(sb.created_at),
            version: sb.version as i64,
            body,
        };
        Ok((row, record))
    }

    /// A new row at version 1. Fails if the id exists.
    fn insert(&self, tx: &Transaction<'_>) -> Result<()> {
        tx.prepare_cached(
            "INSERT INTO sandboxes (id, team, experiment, state, ended, created_ms, body, version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1)",
        )?
        .execute(params![
            self.id,
            self.team,
            self.experiment,
            self.state,
            self.ended,
            self.created_ms,
            self.body
        ])?;
        Ok(())
    }

    /// Compare-and-set: rows changed (0 when the stored version is not
    /// `version`). Every filtered column too: a claim gives a warm sandbox
    /// its team, experiment and creation time.
    fn update(&self, tx: &Transaction<'_>) -> Result<usize> {
        Ok(tx
            .prepare_cached(
                "UPDATE sandboxes SET state = ?2, ended = ?3, body = ?5, version = version + 1,
                 team = ?6, experiment = ?7, created_ms = ?8
                 WHERE id = ?1 AND version = ?4",
            )?
            .execute(params![
                self.id,
                self.state,
                self.ended,
                self.version,
                self.body,
                self.team,
                self.experiment,
                self.created_ms
            ])?)
    }
}

/// One sandbox's row, decoded (a transaction derefs to its connection).
fn read_sandbox(c: &Connection, id: &str) -> Result<Option<Sandbox>> {
    c.prepare_cached("SELECT body, version FROM sandboxes WHERE id = ?1")?
        .query_row([id], versioned_row)
        .optional()?
        .map(decode_sandbox)
        .transpose()
}

/// An exclusive lock on the store's file (flock(2), apart from SQLite's own
/// byte-range locks), or an error naming it when another process holds it:
/// two daemons on one file would each believe they alone manage its sandboxes.
fn lock_exclusive(path: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let failed = |e: &dyn std::fmt::Display| Error::Store(format!("{}: cannot lock: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| failed(&e))?;
    // SAFETY: flock(2) on a descriptor this function owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(file);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        return Err(Error::Store(format!(
            "{} is in use by another process (a sandpitd on the same data directory?)",
            path.display()
        ))
        .into());
    }
    Err(failed(&e).into())
}

/// Every live sandbox record, decoded: the writer's view at open.
fn read_live(conn: &Connection) -> Result<Live> {
    let mut live = Live::default();
    let mut stmt = conn.prepare("SELECT body, version FROM sandboxes WHERE ended = 0")?;
    for row in stmt.query_map([], versioned_row)? {
        live.put(decode_sandbox(row?)?);
    }
    Ok(live)
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let mut conn = Connection::open(path)?;
        let lock = lock_exclusive(path)?;
        // WAL with synchronous=NORMAL survives a crash of the daemon without
        // losing a committed record, and keeps commits cheap.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Process-wide (SQLite's sqlite3_soft_heap_limit64), set before the readers open.
        conn.pragma_update(None, "soft_heap_limit", SQLITE_SOFT_HEAP_LIMIT)?;
        migrate(&mut conn)?;
        let head = read_head(&conn)?.unwrap_or((0, [0; 32]));
        let live = Arc::new(Mutex::new(read_live(&conn)?));
        let writer = Worker::spawn("sqlite-writer", Writer { conn, head, live: Arc::clone(&live) })?;
        let readers = (0..READERS)
            .map(|i| Worker::spawn(&format!("sqlite-reader-{i}"), open_read_only(path)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer,
            readers,
            next_reader: AtomicUsize::new(0),
            live,
            _lock: lock,
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a read on one of the reader threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> CoreResult<T> {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        self.readers[i].call(move |c| f(c)).await
    }

    /// Runs `change` and appends `audit` in one transaction on the writer.
    /// `stored`: the sandbox record the change stores, for the live view.
    async fn write(
        &self,
        audit: Option<AuditEntry>,
        stored: Option<Sandbox>,
        change: impl FnOnce(&Transaction<'_>) -> Result<()> + Send + 'static,
    ) -> CoreResult<Option<AuditRecord>> {
        self.writer
            .call(move |w| {
                let head = w.head;
                let tx = w.conn.transaction()?;
                change(&tx)?;
                let rec = audit.map(|e| append_in(&tx, head, e)).transpose()?;
                tx.commit()?;
                w.committed(rec.as_ref(), stored);
                Ok(rec)
            })
            .await
    }

    /// Compare-and-set of one versioned row: `update` changes the row only
    /// where it is still at `version` (`?4` in its SQL), with `audit` in the
    /// same transaction; else nothing is written and `current` reads what is there.
    async fn update_versioned<T: Send + 'static>(
        &self,
        update: impl FnOnce(&Transaction<'_>) -> Result<usize> + Send + 'static,
        current: impl FnOnce(&Transaction<'_>) -> Result<Option<T>> + Send + 'static,
        audit: Option<AuditEntry>,
        stored: Option<Sandbox>,
    ) -> CoreResult<Versioned<T>> {
        self.writer
            .call(move |w| {
                let head = w.head;
                let tx = w.conn.transaction()?;
                if update(&tx)? == 0 {
                    let now = current(&tx)?;
                    drop(tx);
                    return Ok(Versioned::Stale(now));
                }
                let rec = audit.map(|e| append_in(&tx, head, e)).transpose()?;
                tx.commit()?;
                w.committed(rec.as_ref(), stored);
                Ok(Versioned::Written(rec.map(Box::new)))
            })
            .await
    }

    /// Runs `f` on a connection of its own on a blocking thread: for
    /// whole-chain scans that would hold a reader for long.
    async fn scan<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> CoreResult<T> {
        let path = self.path.clone();
        let scanned = tokio::task::spawn_blocking(move || f(&open_read_only(&path)?))
            .await
            .map_err(|e| Error::Store(format!("audit scan failed: {e}")))?;
        Ok(scanned?)
    }

    /// Verifies the audit chain of a data directory's store without a
    /// running daemon, reading only.
    pub fn verify_file(path: &Path) -> Result<VerifyReport> {
        verify_conn(&open_read_only(path)?, None)
    }

    /// As [`SqliteStore::verify_file`], and the chain must hold a
    /// checkpoint's `(size, head)` (see [`Store::verify_audit_against`]).
    pub fn verify_file_against(path: &Path, checkpoint: (u64, Hash)) -> Result<VerifyReport> {
        verify_conn(&open_read_only(path)?, Some(checkpoint))
    }

    /// Up to `limit` audit records after `after`, whole and as stored (for
    /// moving the log elsewhere: queries cut long fields, this does not).
    pub fn audit_records(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        let conn = open_read_only(&self.path)?;
        let mut stmt =
            conn.prepare(&format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"))?;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![after, limit as i64], row_to_record)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The instance id of the store at `path`, reading only: `None` when
    /// there is no store there or it has no id yet.
    pub fn read_instance_id(path: &Path) -> Result<Option<String>> {
        if !path.is_file() {
            return Ok(None);
        }
        let conn = open_read_only(path)?;
        let has_meta: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
            [],
            |r| r.get(0),
        )?;
        if !has_meta {
            return Ok(None);
        }
        Ok(conn.query_row("SELECT value FROM meta WHERE key = 'instance_id'", [], |r| r.get(0)).optional()?)
    }
}

/// Appends `entry` in `tx` after `head`, returning the sealed record.
fn append_in(tx: &Transaction<'_>, head: (u64, Hash), entry: AuditEntry) -> Result<AuditRecord> {
    let rec = audit::seal(head.0, head.1, entry.bounded());
    let e = &rec.entry;
    tx.prepare_cached(
        "INSERT INTO audit (seq, time_ms, actor, role, action, target, experiment, sandbox, outcome, code, reason, source, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        rec.seq as i64,
        to_millis(e.time),
        e.actor,
        e.role,
        e.action,
        e.target,
        e.experiment,
        e.sandbox,
        e.outcome.as_str(),
        e.code,
        e.reason,
        e.source,
        &rec.prev_hash[..],
        &rec.hash[..],
    ])?;
    tx.prepare_cached("INSERT INTO meta (key, value) VALUES ('audit_head_seq', ?1), ('audit_head_hash', ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?
        .execute(params![rec.seq.to_string(), hex::encode(rec.hash)])?;
    Ok(rec)
}

/// Runs `f` in one read transaction: the rows and the head it reads are one snapshot.
fn snapshot<T>(conn: &Connection, f: impl FnOnce() -> Result<T>) -> Result<T> {
    conn.execute_batch("BEGIN")?;
    let result = f();
    conn.execute_batch("COMMIT")?;
    result
}

/// The whole chain, checked against a checkpoint's `(size, head)` if given.
fn verify_conn(conn: &Connection, checkpoint: Option<(u64, Hash)>) -> Result<VerifyReport> {
    snapshot(conn, || {
        let head = read_head(conn)?.unwrap_or((0, [0; 32]));
        let mut stmt = conn.prepare(&format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY rowid"))?;
        let rows = stmt.query_map([], row_to_record)?;
        Ok(match checkpoint {
            None => audit::verify(rows, Some(head))?,
            Some(cp) => audit::verify_against(rows, Some(head), cp)?,
        })
    })
}

fn hash_at(conn: &Connection, seq: u64) -> Result<Option<Hash>> {
    if seq == 0 {
        return Ok(Some([0; 32]));
    }
    let Ok(seq) = i64::try_from(seq) else { return Ok(None) };
    let v: Option<Vec<u8>> = conn.query_row("SELECT hash FROM audit WHERE seq = ?1", [seq], |r| r.get(0)).optional()?;
    v.map(|v| v.try_into().map_err(|_| Error::Store(format!("audit record {seq}: corrupt hash")).into())).transpose()
}

/// The records after `from`, which must still end in `from`'s hash.
fn verify_from_conn(conn: &Connection, from: (u64, Hash)) -> Result<VerifyReport> {
    snapshot(conn, || {
        let head = read_head(conn)?.unwrap_or((0, [0; 32]));
        let bad = |reason: String| VerifyReport {
            ok: false,
            records: head.0,
            first_bad_seq: from.0,
            reason,
            head_hash: head.1,
        };
        match hash_at(conn, from.0)? {
            None => return Ok(bad(format!("record {} is gone (records deleted or the log truncated)", from.0))),
            Some(h) if h != from.1 => {
                return Ok(bad(format!(
                    "record {} no longer has the hash it had when it was verified (rewritten)",
                    from.0
                )))
            }
            Some(_) => {}
        }
        let after = i64::try_from(from.0).map_err(|_| Error::Store(format!("sequence {} out of range", from.0)))?;
        let mut stmt = conn.prepare(&format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE rowid > ?1 ORDER BY rowid"))?;
        let rows = stmt.query_map([after], row_to_record)?;
        Ok(audit::verify_from(from, rows, Some(head))?)
    })
}

/// A page of audit records, text fields cut at [`QUERY_FIELD_MAX`] in SQL
/// so that a page of legacy megabyte records is never read into memory whole.
fn query_audit(conn: &Connection, q: &AuditQuery) -> Result<AuditPage> {
    let cut = |c: &str| {
        format!(
            "CASE WHEN length({c}) > {QUERY_FIELD_MAX} THEN substr({c}, 1, {QUERY_FIELD_MAX}) || '… [cut: ' || length({c}) || ' characters]' ELSE {c} END"
        )
    };
    let text = ["actor", "role", "action", "target", "experiment", "sandbox", "outcome", "code", "reason", "source"];
    let columns: Vec<String> = text.iter().map(|c| cut(c)).collect();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT seq, time_ms, {}, prev_hash, hash FROM audit
         WHERE seq > ?1 AND (?2 IS NULL OR time_ms >= ?2) AND (?3 IS NULL OR time_ms < ?3)
           AND (?4 IS NULL OR actor = ?4) AND (?5 IS NULL OR experiment = ?5)
           AND (?6 IS NULL OR sandbox = ?6) AND (?7 IS NULL OR action = ?7)
         ORDER BY seq LIMIT ?8",
        columns.join(", ")
    ))?;
    let rows = stmt.query_map(
        params![
            q.after_seq as i64,
            q.since.map(to_millis),
            q.until.map(to_millis),
            q.actor,
            q.experiment,
            q.sandbox,
            q.action,
            q.limit.saturating_add(1) as i64
        ],
        row_to_record,
    )?;
    Ok(AuditPage::fill(q, rows)?)
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_sandbox(&self, sb: &Sandbox, audit: Option<AuditEntry>) -> CoreResult<Option<AuditRecord>> {
        let (row, record) = SandboxRow::new(sb)?;
        self.write(audit, Some(record), move |tx| row.insert(tx)).await
    }

    async fn update_sandbox(&self, sb: &Sandbox, audit: Option<AuditEntry>) -> CoreResult<Versioned<Sandbox>> {
        let (row, record) = SandboxRow::new(sb)?;
        let read_id = sb.id.clone();
        self.update_versioned(move |tx| row.update(tx), move |tx| read_sandbox(tx, &read_id), audit, Some(record)).await
    }

    async fn write_admitted(
        &self,
        sb: &Sandbox,
        audit: Option<AuditEntry>,
        admission: Admission,
    ) -> CoreResult<Admitted<Versioned<Sandbox>>> {
        let (row, record) = SandboxRow::new(sb)?;
        self.writer
            .call(move |w| {
                let head = w.head;
                let tx = w.conn.transaction()?;
                let experiment: Option<i64> = tx
                    .prepare_cached("SELECT version FROM experiments WHERE id = ?1")?
                    .query_row([&row.experiment], |r| r.get(0))
                    .optional()?;
                if experiment != Some(admission.experiment_version as i64) {
                    return Ok(Admitted::ExperimentChanged);
                }
                let live: i64 = tx
                    .prepare_cached("SELECT COUNT(*) FROM sandboxes WHERE ended = 0 AND team = ?1 AND id != ?2")?
                    .query_row(params![row.team, row.id], |r| r.get(0))?;
                if live as u64 >= admission.max_live {
                    return Ok(Admitted::OverQuota(live as u64));
                }
                if row.version == 0 {
                    row.insert(&tx)?;
                } else if row.update(&tx)? == 0 {
                    let now = read_sandbox(&tx, &row.id)?;
                    return Ok(Admitted::Written(Versioned::Stale(now)));
                }
                let rec = audit.map(|e| append_in(&tx, head, e)).transpose()?;
                tx.commit()?;
                w.committed(rec.as_ref(), Some(record));
                Ok(Admitted::Written(Versioned::Written(rec.map(Box::new))))
            })
            .await
    }

    async fn stats(&self) -> CoreResult<StoreStats> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT state, COUNT(*) FROM sandboxes WHERE ended = 1 GROUP BY state ORDER BY state",
            )?;
            let ended = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let audit_records = read_head(c)?.map_or(0, |(seq, _)| seq);
            Ok(StoreStats { ended, audit_records })
        })
        .await
    }

    async fn get(&self, id: &str) -> CoreResult<Option<Sandbox>> {
        if let Some(sb) = self.live().get(id) {
            return Ok(Some(sb.clone()));
        }
        let id = id.to_string();
        self.read(move |c| read_sandbox(c, &id)).await
    }

    async fn get_many(&self, ids: &[String]) -> CoreResult<Vec<Sandbox>> {
        let mut found: std::collections::HashMap<String, Sandbox> = {
            let live = self.live();
            ids.iter().filter_map(|id| live.get(id).map(|sb| (id.clone(), sb.clone()))).collect()
        };
        // Ended ones (not in the live view) in one job on a reader.
        let ended: Vec<String> = ids.iter().filter(|id| !found.contains_key(*id)).cloned().collect();
        if !ended.is_empty() {
            let read = self
                .read(move |c| {
                    ended.iter().filter_map(|id| read_sandbox(c, id).transpose()).collect::<Result<Vec<_>>>()
                })
                .await?;
            found.extend(read.into_iter().map(|sb| (sb.id.clone(), sb)));
        }
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    async fn list(&self, f: &ListFilter) -> CoreResult<Vec<Sandbox>> {
        if !f.include_ended {
            let wanted = |sb: &&Sandbox| {
                f.team.as_ref().is_none_or(|t| *t == sb.team)
                    && f.experiment.as_ref().is_none_or(|e| *e == sb.experiment)
            };
            return Ok(self.live().iter().filter(wanted).cloned().collect());
        }
        let f = f.clone();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT body, version FROM sandboxes
                 WHERE (?1 IS NULL OR team = ?1) AND (?2 IS NULL OR experiment = ?2)
                 ORDER BY created_ms, id",
            )?;
            let rows = stmt.query_map(params![f.team, f.experiment], versioned_row)?;
            rows.map(|r| decode_sandbox(r?)).collect()
        })
        .await
    }

    async fn instance_id(&self) -> CoreResult<String> {
        self.writer
            .call(|w| {
                let existing: Option<String> = w
                    .conn
                    .query_row("SELECT value FROM meta WHERE key = 'instance_id'", [], |r| r.get(0))
                    .optional()?;
                if let Some(id) = existing {
                    return Ok(id);
                }
                let mut b = [0u8; 8];
                getrandom::fill(&mut b).map_err(|e| Error::Internal(e.to_string()))?;
                let id = hex::encode(b);
                w.conn.execute("INSERT INTO meta (key, value) VALUES ('instance_id', ?1)", [&id])?;
                Ok(id)
            })
            .await
    }

    async fn insert_experiment(&self, e: &Experiment, audit: Option<AuditEntry>) -> CoreResult<Option<AuditRecord>> {
        let e = Experiment { version: 1, ..e.clone() };
        let body = encode(&e)?;
        self.write(audit, None, move |tx| {
            tx.prepare_cached(
                "INSERT INTO experiments (id, team, status, created_ms, body, version) VALUES (?1, ?2, ?3, ?4, ?5, 1)",
            )?
            .execute(params![e.id, e.team, e.status.as_str(), to_millis(e.created_at), body])?;
            Ok(())
        })
        .await
    }

    async fn update_experiment(&self, e: &Experiment, audit: AuditEntry) -> CoreResult<Versioned<Experiment>> {
        let next = Experiment { version: e.version + 1, ..e.clone() };
        let body = encode(&next)?;
        let (id, status, version) = (e.id.clone(), e.status.as_str(), e.version as i64);
        let read_id = id.clone();
        self.update_versioned(
            move |tx| {
                Ok(tx
                    .prepare_cached(
                        "UPDATE experiments SET status = ?2, body = ?3, version = version + 1 WHERE id = ?1 AND version = ?4",
                    )?
                    .execute(params![id, status, body, version])?)
            },
            move |tx| {
                tx.query_row("SELECT body, version FROM experiments WHERE id = ?1", [&read_id], versioned_row)
                    .optional()?
                    .map(decode_experiment)
                    .transpose()
            },
            Some(audit),
            None,
        )
        .await
    }

    async fn get_experiment(&self, id: &str) -> CoreResult<Option<Experiment>> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row("SELECT body, version FROM experiments WHERE id = ?1", [id], versioned_row)
                .optional()?
                .map(decode_experiment)
                .transpose()
        })
        .await
    }

    async fn list_experiments(&self, f: &ExperimentFilter) -> CoreResult<Vec<Experiment>> {
        let f = f.clone();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT body, version FROM experiments WHERE (?1 IS NULL OR team = ?1) AND (?2 IS NULL OR status = ?2)
                 ORDER BY created_ms, id",
            )?;
            let rows = stmt.query_map(params![f.team, f.status.map(|s| s.as_str())], versioned_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?.into_iter().map(decode_experiment).collect()
        })
        .await
    }

    async fn append_audit(&self, entry: AuditEntry) -> CoreResult<AuditRecord> {
        self.write(Some(entry), None, |_| Ok(()))
            .await?
            .ok_or_else(|| Error::Internal("audit append returned nothing".into()))
    }

    async fn query_audit(&self, q: &AuditQuery) -> CoreResult<AuditPage> {
        let q = q.clone();
        self.read(move |c| query_audit(c, &q)).await
    }

    async fn verify_audit(&self) -> CoreResult<VerifyReport> {
        self.scan(|c| verify_conn(c, None)).await
    }

    async fn verify_audit_against(&self, checkpoint: (u64, Hash)) -> CoreResult<VerifyReport> {
        self.scan(move |c| verify_conn(c, Some(checkpoint))).await
    }

    async fn verify_audit_from(&self, from: (u64, Hash)) -> CoreResult<VerifyReport> {
        self.scan(move |c| verify_from_conn(c, from)).await
    }

    async fn audit_hash_at(&self, seq: u64) -> CoreResult<Option<Hash>> {
        self.read(move |c| hash_at(c, seq)).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use sandpit_core::sandbox::SandboxState;
    use sandpit_core::store::contract::{self, entry, record};

    fn experiment(team: &str) -> Experiment {
        contract::experiment("exp-1", team)
    }

    async fn open() -> Option<(std::sync::Arc<dyn Store>, tempfile::TempDir)> {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        Some((std::sync::Arc::new(s), dir))
    }

    sandpit_core::store_contract_tests!(open);

    #[tokio::test]
    async fn records_survive_reopen_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let id;
        {
            let s = SqliteStore::open(&path).unwrap();
            id = s.instance_id().await.unwrap();
            s.insert_sandbox(&record("sb-1", "a"), None).await.unwrap();
            let mut b = record("sb-2", "b");
            s.insert_sandbox(&b, None).await.unwrap();
            b.version = 1;
            b.end(SandboxState::Deleted, "test", SystemTime::now());
            assert!(matches!(s.update_sandbox(&b, Some(entry("x"))).await.unwrap(), Versioned::Written(Some(_))));
            // Written at version 1 once: the same write again is stale.
            assert!(matches!(s.update_sandbox(&b, None).await.unwrap(), Versioned::Stale(Some(_))));
        }
        assert_eq!(SqliteStore::read_instance_id(&path).unwrap(), Some(id.clone()));
        assert_eq!(SqliteStore::read_instance_id(&path.with_extension("absent")).unwrap(), None);
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.instance_id().await.unwrap(), id);
        assert_eq!(s.get("sb-2").await.unwrap().unwrap().state, SandboxState::Deleted);
        assert!(s.get("sb-3").await.unwrap().is_none());
        let many = s.get_many(&["sb-2".into(), "sb-3".into(), "sb-1".into()]).await.unwrap();
        assert_eq!(
            many.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["sb-2", "sb-1"],
            "those that exist, in order"
        );
        let active = s.list(&ListFilter::default()).await.unwrap();
        assert_eq!(active.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["sb-1"]);
        let all = s.list(&ListFilter { include_ended: true, ..Default::default() }).await.unwrap();
        assert_eq!(all.len(), 2);
        let b =
            s.list(&ListFilter { team: Some("b".into()), include_ended: true, ..Default::default() }).await.unwrap();
        assert_eq!(b[0], s.get("sb-2").await.unwrap().unwrap());
        // The chain continues across a reopen.
        s.append_audit(entry("y")).await.unwrap();
        let report = s.verify_audit().await.unwrap();
        assert!(report.ok && report.records == 2, "{report:?}");
    }

    /// The live records as the rows have them (read from SQL, not the view).
    async fn live_rows(s: &SqliteStore) -> Vec<Sandbox> {
        let all = s.list(&ListFilter { include_ended: true, ..Default::default() }).await.unwrap();
        all.into_iter().filter(|sb| !sb.state.is_ended()).collect()
    }

    /// Lists and reads of live sandboxes come from the writer's view; it
    /// follows every committed write (never an old version, nothing a stale
    /// write tried), drops ended records, and is read again at open.
    #[tokio::test]
    async fn the_live_view_follows_every_write_and_agrees_with_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let s = SqliteStore::open(&path).unwrap();
        for id in ["sb-1", "sb-2", "sb-3"] {
            s.insert_sandbox(&record(id, "a"), None).await.unwrap();
        }
        let first = s.list(&ListFilter::default()).await.unwrap();
        assert_eq!(first.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(), ["sb-1", "sb-2", "sb-3"]);
        assert_eq!(first, live_rows(&s).await);
        let mut changed = first[1].clone();
        changed.expires_at += std::time::Duration::from_secs(60);
        assert!(matches!(s.update_sandbox(&changed, None).await.unwrap(), Versioned::Written(_)));
        // The same write again is stale: nothing changes.
        assert!(matches!(s.update_sandbox(&changed, None).await.unwrap(), Versioned::Stale(_)));
        let second = s.list(&ListFilter::default()).await.unwrap();
        assert_eq!(second[1], Sandbox { version: changed.version + 1, ..changed.clone() });
        assert_eq!(second[0], first[0], "unchanged records as they were");
        assert_eq!(second, live_rows(&s).await);
        assert_eq!(s.get("sb-2").await.unwrap().unwrap(), second[1]);
        // An ended one leaves the view; it is still read, from its row.
        let mut ended = second[2].clone();
        ended.end(SandboxState::Deleted, "test", SystemTime::now());
        s.update_sandbox(&ended, None).await.unwrap();
        let third = s.list(&ListFilter::default()).await.unwrap();
        assert_eq!(third.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(), ["sb-1", "sb-2"]);
        assert_eq!(third, live_rows(&s).await);
        assert_eq!(s.get("sb-3").await.unwrap().unwrap().state, SandboxState::Deleted);
        let many = s.get_many(&["sb-3".into(), "sb-1".into()]).await.unwrap();
        assert_eq!((many[0].state, many[1].id.as_str()), (SandboxState::Deleted, "sb-1"));
        // Filters as SQL's.
        let team_b = s.list(&ListFilter { team: Some("b".into()), ..Default::default() }).await.unwrap();
        assert!(team_b.is_empty());
        drop(s);
        let reopened = SqliteStore::open(&path).unwrap();
        assert_eq!(reopened.list(&ListFilter::default()).await.unwrap(), third, "read again at open");
    }

    /// The store's file is one process's to write: a second open while the
    /// first is held is refused, naming the file; once closed it opens.
    #[tokio::test]
    async fn a_store_in_use_is_not_opened_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let s = SqliteStore::open(&path).unwrap();
        let refused = SqliteStore::open(&path).err().expect("in use");
        assert!(refused.to_string().contains("in use by another process"), "{refused}");
        assert!(refused.to_string().contains("s.db"), "{refused}");
        drop(s);
        SqliteStore::open(&path).unwrap();
    }

    /// How many of `team`'s sandboxes have not ended.
    async fn live(s: &SqliteStore, team: &str) -> usize {
        s.list(&ListFilter { team: Some(team.into()), ..Default::default() }).await.unwrap().len()
    }

    /// Sandbox sb-1 is team a's and experiment exp-a's to every query.
    async fn claimed_by_a(s: &SqliteStore) {
        assert_eq!((live(s, "a").await, live(s, "").await), (1, 0));
        let by_team = s.list(&ListFilter { team: Some("a".into()), ..Default::default() }).await.unwrap();
        let by_experiment =
            s.list(&ListFilter { experiment: Some("exp-a".into()), ..Default::default() }).await.unwrap();
        assert_eq!((by_team.len(), by_experiment.len()), (1, 1));
    }

    #[tokio::test]
    async fn an_older_stores_claimed_warm_sandbox_is_repaired_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let s = SqliteStore::open(&path).unwrap();
        // Warm: nobody's. The claim gives it a team, an experiment and a creation time.
        let mut warm = record("sb-1", "");
        warm.experiment = String::new();
        s.insert_sandbox(&warm, None).await.unwrap();
        let claimed = Sandbox {
            version: 1,
            team: "a".into(),
            experiment: "exp-a".into(),
            created_at: warm.created_at + Duration::from_secs(60),
            ..warm.clone()
        };
        assert!(matches!(s.update_sandbox(&claimed, None).await.unwrap(), Versioned::Written(_)));
        claimed_by_a(&s).await;
        // A store an older daemon wrote (the columns left as the warm record
        // had them) is repaired at open.
        drop(s);
        let raw = Connection::open(&path).unwrap();
        raw.execute_batch("UPDATE sandboxes SET team = '', experiment = ''; PRAGMA user_version = 3;").unwrap();
        drop(raw);
        claimed_by_a(&SqliteStore::open(&path).unwrap()).await;
    }

    #[tokio::test]
    async fn a_store_without_experiment_versions_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let raw = Connection::open(&path).unwrap();
        raw.execute_batch(
            "CREATE TABLE experiments (id TEXT PRIMARY KEY, team TEXT NOT NULL, status TEXT NOT NULL,
             created_ms INTEGER NOT NULL, body TEXT NOT NULL);",
        )
        .unwrap();
        let old = serde_json::to_string(&experiment("a")).unwrap();
        raw.execute("INSERT INTO experiments VALUES ('exp-1', 'a', 'proposed', 0, ?1)", [old]).unwrap();
        drop(raw);
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.get_experiment("exp-1").await.unwrap().unwrap().version, 1);
    }

    #[tokio::test]
    async fn audit_pages_are_bounded_in_bytes_and_huge_legacy_fields_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let s = SqliteStore::open(&path).unwrap();
        for _ in 0..20 {
            s.append_audit(entry("a")).await.unwrap();
        }
        // A record as an older daemon wrote it, before caller input was bounded.
        let raw = Connection::open(&path).unwrap();
        raw.execute("UPDATE audit SET target = ?1 WHERE seq = 3", [&"x".repeat(4_000_000)]).unwrap();
        let q = AuditQuery { limit: 1000, max_bytes: 2000, ..Default::default() };
        let page = s.query_audit(&q).await.unwrap();
        assert!(page.more && page.records.len() < 20, "{}", page.records.len());
        let bytes: usize = page.records.iter().map(|r| r.entry.approx_size()).sum();
        assert!(bytes <= 2000 + QUERY_FIELD_MAX + 100, "{bytes}");
        // Paging on reaches every record, the huge one cut.
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let page = s.query_audit(&AuditQuery { after_seq: after, ..q.clone() }).await.unwrap();
            seen.extend(page.records.iter().map(|r| r.seq));
            let huge = page.records.iter().find(|r| r.seq == 3);
            if let Some(r) = huge {
                assert!(r.entry.target.len() < QUERY_FIELD_MAX + 64, "cut in the query");
                assert!(r.entry.target.ends_with("[cut: 4000000 characters]"), "says how long it was");
            }
            after = page.records.last().unwrap().seq;
            if !page.more {
                break;
            }
        }
        assert_eq!(seen, (1..=20).collect::<Vec<_>>());
        // Verification still reads it whole (and so finds the edit).
        assert_eq!(s.verify_audit().await.unwrap().first_bad_seq, 3);
    }

    /// A closed store of `n` records, its path, and the hash of record 8.
    async fn closed_store(n: usize) -> (tempfile::TempDir, std::path::PathBuf, Hash) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let s = SqliteStore::open(&path).unwrap();
        for i in 0..n {
            s.append_audit(entry(&format!("actor-{i}"))).await.unwrap();
        }
        let h8 = s.audit_hash_at(8).await.unwrap().unwrap();
        (dir, path, h8)
    }

    /// Re-chains every record from `from` on, and the head, as someone able to write the file could.
    fn rechain(conn: &Connection, from: u64) {
        let mut stmt = conn.prepare(&format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq")).unwrap();
        let records: Vec<AuditRecord> =
            stmt.query_map([], row_to_record).unwrap().collect::<rusqlite::Result<_>>().unwrap();
        let mut prev = [0u8; 32];
        for r in &records {
            if r.seq >= from {
                let hash = audit::chain_hash(&prev, r.seq, &r.entry);
                conn.execute(
                    "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
                    params![&prev[..], &hash[..], r.seq as i64],
                )
                .unwrap();
                prev = hash;
            } else {
                prev = r.hash;
            }
        }
        set_head(conn, records.last().map_or(0, |r| r.seq), prev);
    }

    fn set_head(conn: &Connection, seq: u64, hash: Hash) {
        conn.execute("UPDATE meta SET value = ?1 WHERE key = 'audit_head_seq'", [seq.to_string()]).unwrap();
        conn.execute("UPDATE meta SET value = ?1 WHERE key = 'audit_head_hash'", [hex::encode(hash)]).unwrap();
    }

    #[tokio::test]
    async fn the_hash_at_a_size_is_read_back() {
        let (_dir, path, h8) = closed_store(10).await;
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.audit_hash_at(0).await.unwrap(), Some([0; 32]));
        assert_eq!(s.audit_hash_at(8).await.unwrap(), Some(h8));
        let page = s.query_audit(&AuditQuery { after_seq: 7, limit: 1, ..Default::default() }).await.unwrap();
        assert_eq!(page.records[0].hash, h8);
        assert_eq!(s.audit_hash_at(11).await.unwrap(), None);
        assert_eq!(s.audit_hash_at(u64::MAX).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_checkpoint_catches_truncation_emptying_and_rechaining() {
        let (_dir, path, h8) = closed_store(10).await;
        let cp = (8, h8);
        assert!(SqliteStore::verify_file_against(&path, cp).unwrap().ok);
        assert!(SqliteStore::open(&path).unwrap().verify_audit_against(cp).await.unwrap().ok);

        type Tamper = fn(&Connection);
        let cases: [(&str, Tamper, u64, &str); 3] = [
            (
                "truncated, head rewritten",
                |c| {
                    let h5: Vec<u8> = c.query_row("SELECT hash FROM audit WHERE seq = 5", [], |r| r.get(0)).unwrap();
                    c.execute("DELETE FROM audit WHERE seq > 5", []).unwrap();
                    set_head(c, 5, h5.try_into().unwrap());
                },
                0,
                "records 6 to 8 are missing",
            ),
            (
                "emptied, head deleted",
                |c| c.execute_batch("DELETE FROM audit; DELETE FROM meta WHERE key LIKE 'audit_head_%';").unwrap(),
                0,
                "records 1 to 8 are missing",
            ),
            (
                "edited and re-chained",
                |c| {
                    c.execute("UPDATE audit SET reason = 'nothing happened' WHERE seq = 3", []).unwrap();
                    rechain(c, 3);
                },
                8,
                "rewritten",
            ),
        ];
        for (what, tamper, first_bad, says) in cases {
            let (_dir, path, _) = closed_store(10).await;
            tamper(&Connection::open(&path).unwrap());
            let alone = SqliteStore::verify_file(&path).unwrap();
            assert!(alone.ok, "{what}: consistent with itself: {alone:?}");
            let r = SqliteStore::verify_file_against(&path, cp).unwrap();
            assert!(!r.ok && r.first_bad_seq == first_bad && r.reason.contains(says), "{what}: {r:?}");
            assert_eq!(SqliteStore::open(&path).unwrap().verify_audit_against(cp).await.unwrap(), r);
        }
    }

    #[tokio::test]
    async fn verifying_from_a_verified_record_sees_what_changed_since() {
        let (_dir, path, h8) = closed_store(10).await;
        let s = SqliteStore::open(&path).unwrap();
        let r = s.verify_audit_from((8, h8)).await.unwrap();
        assert!(r.ok && r.records == 10, "{r:?}");
        s.append_audit(entry("more")).await.unwrap();
        let r = s.verify_audit_from((10, r.head_hash)).await.unwrap();
        assert!(r.ok && r.records == 11, "{r:?}");
        assert!(!s.verify_audit_from((8, [1; 32])).await.unwrap().ok, "not the hash it had");
        let raw = Connection::open(&path).unwrap();
        raw.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 9", []).unwrap();
        let r = s.verify_audit_from((8, h8)).await.unwrap();
        assert_eq!((r.ok, r.first_bad_seq), (false, 9), "{r:?}");
        raw.execute("DELETE FROM audit WHERE seq >= 8", []).unwrap();
        let r = s.verify_audit_from((8, h8)).await.unwrap();
        assert!(!r.ok && r.reason.contains("record 8 is gone"), "{r:?}");
    }

    #[tokio::test]
    async fn tampering_with_the_file_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let s = SqliteStore::open(&path).unwrap();
        for _ in 0..5 {
            s.append_audit(entry("a")).await.unwrap();
        }
        drop(s);
        assert!(SqliteStore::verify_file(&path).unwrap().ok);
        let raw = Connection::open(&path).unwrap();
        raw.execute("UPDATE audit SET reason = 'edited' WHERE seq = 3", []).unwrap();
        let r = SqliteStore::verify_file(&path).unwrap();
        assert_eq!((r.ok, r.first_bad_seq), (false, 3));
    }
}
