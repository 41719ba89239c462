//! PostgreSQL store: the state several daemons share. The same tables as
//! the SQLite store (records are JSON bodies beside the columns queries
//! filter on, and a version every update compares and sets), so the two
//! behave alike behind [`Store`]; what differs is what sharing needs:
//!
//! - **One audit chain.** Every transaction that appends a record takes the
//!   single `audit_head` row `FOR UPDATE` after its change, so appends from
//!   every daemon are serialised in the database and each record follows
//!   the one committed before it.
//! - **Quotas and decisions hold across daemons.** An admitted write takes
//!   a transaction-level advisory lock on its team (racing creates for one
//!   team queue; other teams do not wait) and reads its experiment's row
//!   `FOR SHARE` (a decision cannot land between the check and the write).
//! - **No view in memory.** Other daemons write behind this one, so every
//!   read goes to the database.
//! - **The lease and the notices** ([`coordination`]): one daemon at a time
//!   runs the duties that must not run twice (expiry, reconcile, pool
//!   refill, checkpoints), under a session advisory lock the server drops
//!   the moment its holder's connection dies; and each daemon's events reach
//!   the others' watchers by `NOTIFY`.
//!
//! Connections come from a bounded pool (deadpool-postgres), with TLS when
//! the URL says `sslmode=require`; the schema is versioned
//! (`schema_version`) and brought up to date at open under an advisory lock,
//! so daemons starting together migrate once.

pub mod coordination;
#[cfg(any(test, feature = "test-server"))]
pub mod test_server;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use sandpit_core::audit::{self, AuditEntry, AuditRecord, Hash, Outcome, VerifyReport};
use sandpit_core::register::Experiment;
use sandpit_core::sandbox::Sandbox;
use sandpit_core::store::{
    Admission, Admitted, AuditPage, AuditQuery, ExperimentFilter, ListFilter, Shared, Store, StoreStats, Versioned,
    QUERY_FIELD_MAX,
};
use sandpit_core::time::{from_millis, to_millis};
use sandpit_core::Error;

pub use coordination::Coordination;

/// What the PostgreSQL store fails with at the [`Store`] interface: the
/// database's errors as [`Error::Store`], the core's unchanged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("store: no connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Core(#[from] Error),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::Core(e) => e,
            StoreError::Postgres(e) => Error::Store(db_error_text(&e)),
            other => Error::Store(other.to_string()),
        }
    }
}

/// tokio-postgres says "db error" and keeps the server's message inside.
fn db_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("postgres: {} ({})", db.message(), db.code().code()),
        None => format!("postgres: {e}"),
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;
type CoreResult<T> = sandpit_core::Result<T>;

/// How the store connects (`[store]` in the daemon's config).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `postgres://user:password@host:port/database?sslmode=require`.
    pub url: String,
    /// Connections in the pool (the lease's and the listener's are apart).
    pub pool_size: usize,
    /// PEM file of the CA that signed the server's certificate, for
    /// `sslmode=require`; the system's roots when unset.
    pub ca_file: Option<std::path::PathBuf>,
    /// How often a daemon without the lease tries to take it, and how often
    /// the holder checks its connection: the longest a lease stays unheld
    /// after its holder dies (the server drops a dead connection's locks at once).
    pub lease_retry: Duration,
}

impl Settings {
    pub fn new(url: impl Into<String>) -> Settings {
        Settings { url: url.into(), pool_size: 8, ca_file: None, lease_retry: Duration::from_secs(1) }
    }
}

/// Schema steps, in order; `schema_version` holds how many were applied.
const MIGRATIONS: &[&str] = &["
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    experiment TEXT NOT NULL,
    state TEXT NOT NULL,
    ended BOOLEAN NOT NULL,
    created_ms BIGINT NOT NULL,
    body TEXT NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX sandboxes_active ON sandboxes (ended, created_ms);
CREATE INDEX sandboxes_team ON sandboxes (team) WHERE NOT ended;
CREATE TABLE experiments (
    id TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    status TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    body TEXT NOT NULL,
    version BIGINT NOT NULL
);
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    time_ms BIGINT NOT NULL,
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
    prev_hash BYTEA NOT NULL,
    hash BYTEA NOT NULL
);
CREATE INDEX audit_time ON audit (time_ms);
CREATE INDEX audit_sandbox ON audit (sandbox);
CREATE INDEX audit_experiment ON audit (experiment);
-- The chain's last record: one row, taken FOR UPDATE by every append.
CREATE TABLE audit_head (
    id INT PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash BYTEA NOT NULL
);
INSERT INTO audit_head VALUES (1, 0, '\\x0000000000000000000000000000000000000000000000000000000000000000');
"];

/// Advisory lock keys (the first of pg_advisory_lock's two int4 keys is
/// this application's, so other users of the database are not in the way).
const LOCK_SPACE: i32 = 0x5341_4e44; // "SAND"
const LOCK_MIGRATE: i32 = 1;
/// The lease on the singleton duties ([`coordination`]).
pub(crate) const LOCK_LEASE: i32 = 2;
/// Notices between daemons.
pub(crate) const CHANNEL: &str = "sandpit_events";

/// How many audit records a verification reads per round trip.
const VERIFY_PAGE: i64 = 5_000;

pub struct PostgresStore {
    pool: Pool,
    /// The lease and notices; none for a store opened only to read.
    coordination: Option<Arc<Coordination>>,
}

fn decode<T: serde::de::DeserializeOwned>(body: &str) -> Result<T> {
    serde_json::from_str(body).map_err(|e| Error::Store(format!("corrupt record: {e}")).into())
}

fn encode<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Store(e.to_string()).into())
}

fn sandbox_from(row: &Row) -> Result<Sandbox> {
    let mut sb: Sandbox = decode(row.try_get::<_, &str>(0)?)?;
    sb.version = row.try_get::<_, i64>(1)? as u64;
    Ok(sb)
}

fn experiment_from(row: &Row) -> Result<Experiment> {
    let mut e: Experiment = decode(row.try_get::<_, &str>(0)?)?;
    e.version = row.try_get::<_, i64>(1)? as u64;
    Ok(e)
}

fn hash_from(row: &Row, i: usize) -> Result<Hash> {
    let v: &[u8] = row.try_get(i)?;
    v.try_into().map_err(|_| Error::Store("corrupt audit hash".into()).into())
}

/// Every column of an audit record, in [`record_from`] order.
const AUDIT_COLUMNS: &str =
    "seq, time_ms, actor, role, action, target, experiment, sandbox, outcome, code, reason, source, prev_hash, hash";

fn record_from(r: &Row) -> Result<AuditRecord> {
    let outcome: &str = r.try_get(8)?;
    Ok(AuditRecord {
        seq: r.try_get::<_, i64>(0)? as u64,
        entry: AuditEntry {
            time: from_millis(r.try_get(1)?),
            actor: r.try_get(2)?,
            role: r.try_get(3)?,
            action: r.try_get(4)?,
            target: r.try_get(5)?,
            experiment: r.try_get(6)?,
            sandbox: r.try_get(7)?,
            // An unknown outcome cannot come from the daemon; keep verify able to flag it.
            outcome: Outcome::parse(outcome).unwrap_or(Outcome::Failed),
            code: r.try_get(9)?,
            reason: r.try_get(10)?,
            source: r.try_get(11)?,
        },
        prev_hash: hash_from(r, 12)?,
        hash: hash_from(r, 13)?,
    })
}

/// A sandbox as its row: the columns the queries filter on, the body (at
/// the next version), and the version it was read at.
struct SandboxRow {
    id: String,
    team: String,
    experiment: String,
    state: &'static str,
    ended: bool,
    created_ms: i64,
    version: i64,
    body: String,
}

impl SandboxRow {
    fn new(sb: &Sandbox) -> Result<SandboxRow> {
        Ok(SandboxRow {
            id: sb.id.clone(),
            team: sb.team.clone(),
            experiment: sb.experiment.clone(),
            state: sb.state.as_str(),
            ended: sb.state.is_ended(),
            created_ms: to_millis(sb.created_at),
            version: sb.version as i64,
            body: encode(&Sandbox { version: sb.version + 1, ..sb.clone() })?,
        })
    }

    /// A new row at version 1. Fails if the id exists.
    async fn insert(&self, c: &impl GenericClient) -> Result<()> {
        let stmt = c
            .prepare_cached(
                "INSERT INTO sandboxes (id, team, experiment, state, ended, created_ms, body, version)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 1)",
            )
            .await?;
        c.execute(
            &stmt,
            &[&self.id, &self.team, &self.experiment, &self.state, &self.ended, &self.created_ms, &self.body],
        )
        .await?;
        Ok(())
    }

    /// Compare-and-set: whether the row was at `version` (and so written).
    async fn update(&self, c: &impl GenericClient) -> Result<bool> {
        let stmt = c
            .prepare_cached(
                "UPDATE sandboxes SET state = $2, ended = $3, body = $5, version = version + 1,
                 team = $6, experiment = $7, created_ms = $8
                 WHERE id = $1 AND version = $4",
            )
            .await?;
        let n = c
            .execute(
                &stmt,
                &[
                    &self.id,
                    &self.state,
                    &self.ended,
                    &self.version,
                    &self.body,
                    &self.team,
                    &self.experiment,
                    &self.created_ms,
                ],
            )
            .await?;
        Ok(n == 1)
    }
}

async fn read_sandbox(c: &impl GenericClient, id: &str) -> Result<Option<Sandbox>> {
    let stmt = c.prepare_cached("SELECT body, version FROM sandboxes WHERE id = $1").await?;
    c.query_opt(&stmt, &[&id]).await?.as_ref().map(sandbox_from).transpose()
}

async fn read_experiment(c: &impl GenericClient, id: &str) -> Result<Option<Experiment>> {
    let stmt = c.prepare_cached("SELECT body, version FROM experiments WHERE id = $1").await?;
    c.query_opt(&stmt, &[&id]).await?.as_ref().map(experiment_from).transpose()
}

/// Appends `entry` to the chain in `tx`: takes the head (waiting for any
/// other daemon's append to commit), writes the record after it and moves it.
async fn append_in(tx: &deadpool_postgres::Transaction<'_>, entry: AuditEntry) -> Result<AuditRecord> {
    let head = tx.prepare_cached("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE").await?;
    let row = tx.query_one(&head, &[]).await?;
    let rec = audit::seal(row.try_get::<_, i64>(0)? as u64, hash_from(&row, 1)?, entry.bounded());
    insert_record(tx, &rec).await?;
    let moved = tx.prepare_cached("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1").await?;
    tx.execute(&moved, &[&(rec.seq as i64), &&rec.hash[..]]).await?;
    Ok(rec)
}

/// Writes one audit record's row, as it is (the head is the caller's).
async fn insert_record(c: &impl GenericClient, rec: &AuditRecord) -> Result<()> {
    let insert = c
        .prepare_cached(&format!(
            "INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .await?;
    let e = &rec.entry;
    let seq = rec.seq as i64;
    let params: [&(dyn ToSql + Sync); 14] = [
        &seq,
        &to_millis(e.time),
        &e.actor,
        &e.role,
        &e.action,
        &e.target,
        &e.experiment,
        &e.sandbox,
        &e.outcome.as_str(),
        &e.code,
        &e.reason,
        &e.source,
        &&rec.prev_hash[..],
        &&rec.hash[..],
    ];
    c.execute(&insert, &params).await?;
    Ok(())
}

async fn read_head(c: &impl GenericClient) -> Result<(u64, Hash)> {
    let row = c.query_one("SELECT seq, hash FROM audit_head WHERE id = 1", &[]).await?;
    Ok((row.try_get::<_, i64>(0)? as u64, hash_from(&row, 1)?))
}

async fn hash_at(c: &impl GenericClient, seq: u64) -> Result<Option<Hash>> {
    if seq == 0 {
        return Ok(Some([0; 32]));
    }
    let Ok(seq) = i64::try_from(seq) else { return Ok(None) };
    let stmt = c.prepare_cached("SELECT hash FROM audit WHERE seq = $1").await?;
    c.query_opt(&stmt, &[&seq]).await?.map(|r| hash_from(&r, 0)).transpose()
}

/// Applies the schema steps the database lacks, one daemon at a time;
/// refuses a database newer than this daemon.
async fn migrate(client: &mut deadpool_postgres::Client) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_SPACE, &LOCK_MIGRATE]).await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INT NOT NULL)").await?;
    let at: i32 = match tx.query_opt("SELECT version FROM schema_version", &[]).await? {
        Some(row) => row.try_get(0)?,
        None => {
            tx.execute("INSERT INTO schema_version VALUES (0)", &[]).await?;
            0
        }
    };
    let at = usize::try_from(at).unwrap_or(0);
    if at > MIGRATIONS.len() {
        return Err(Error::Store(format!(
            "the database is at schema version {at}, newer than this daemon's {}: upgrade the daemon",
            MIGRATIONS.len()
        ))
        .into());
    }
    for step in &MIGRATIONS[at..] {
        tx.batch_execute(step).await?;
    }
    tx.execute("UPDATE schema_version SET version = $1", &[&(MIGRATIONS.len() as i32)]).await?;
    tx.commit().await?;
    Ok(())
}

/// The connection pool `settings` describe, and the configuration and TLS
/// connector it connects with.
fn pool(settings: &Settings) -> Result<(Pool, tokio_postgres::Config, tokio_postgres_rustls::MakeRustlsConnect)> {
    let shown = redacted(&settings.url);
    let mut config: tokio_postgres::Config =
        settings.url.parse().map_err(|e| Error::Store(format!("store.url {shown}: {}", db_error_text(&e))))?;
    let tls = tls::connector(&mut config, settings.ca_file.as_deref())?;
    let manager = deadpool_postgres::Manager::from_config(
        config.clone(),
        tls.clone(),
        deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
    );
    let pool = Pool::builder(manager)
        .max_size(settings.pool_size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(Duration::from_secs(10)))
        .build()
        .map_err(|e| Error::Store(format!("store pool: {e}")))?;
    Ok((pool, config, tls))
}

/// The URL without its password, for messages and logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl PostgresStore {
    /// Connects, brings the schema up to date and starts the coordination
    /// connection (lease and notices).
    pub async fn open(settings: &Settings) -> Result<PostgresStore> {
        let (pool, config, tls) = pool(settings)?;
        let mut client = pool
            .get()
            .await
            .map_err(|e| Error::Store(format!("store.url {}: cannot connect: {e}", redacted(&settings.url))))?;
        migrate(&mut client).await?;
        drop(client);
        let coordination = Coordination::start(config, tls, pool.clone(), settings.lease_retry);
        Ok(PostgresStore { pool, coordination: Some(coordination) })
    }

    /// Connects to read only (verification, by hand or from a backup): no
    /// schema change, no lease taken, no notices.
    pub async fn open_read_only(settings: &Settings) -> Result<PostgresStore> {
        let (pool, _, _) = pool(settings)?;
        let client = pool
            .get()
            .await
            .map_err(|e| Error::Store(format!("store.url {}: cannot connect: {e}", redacted(&settings.url))))?;
        let at: Option<i32> = match client.query_opt("SELECT version FROM schema_version", &[]).await {
            Ok(row) => row.map(|r| r.get(0)),
            Err(_) => None,
        };
        if at.is_none_or(|v| v < 1) {
            return Err(Error::Store(format!("{}: no Sandpit store there", redacted(&settings.url))).into());
        }
        Ok(PostgresStore { pool, coordination: None })
    }

    /// The instance id of the database at `settings.url`, if a daemon has
    /// run on it: reading only, taking no lease.
    pub async fn read_instance_id(settings: &Settings) -> Result<Option<String>> {
        let mut config: tokio_postgres::Config = settings
            .url
            .parse()
            .map_err(|e| Error::Store(format!("store.url {}: {}", redacted(&settings.url), db_error_text(&e))))?;
        let tls = tls::connector(&mut config, settings.ca_file.as_deref())?;
        let (client, connection) = config.connect(tls).await?;
        let _conn = coordination::AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let has_meta: bool = client.query_one("SELECT to_regclass('meta') IS NOT NULL", &[]).await?.try_get(0)?;
        if !has_meta {
            return Ok(None);
        }
        let row = client.query_opt("SELECT value FROM meta WHERE key = 'instance_id'", &[]).await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Moves another store's contents into this database, which must hold
    /// none yet: experiments and sandboxes at their versions, the audit
    /// records verbatim (`next_audit` pages them in order; the chain's
    /// hashes cover the records, not where they are kept), and the
    /// instance id the sandboxes' Docker objects are labelled with. One
    /// transaction: all of it or nothing.
    pub async fn import<F, Fut>(
        &self,
        instance_id: &str,
        experiments: &[Experiment],
        sandboxes: &[Sandbox],
        mut next_audit: F,
    ) -> CoreResult<u64>
    where
        F: FnMut(u64) -> Fut,
        Fut: std::future::Future<Output = CoreResult<Vec<AuditRecord>>>,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        // Nobody appends while the log moves in.
        let head =
            tx.prepare_cached("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE").await.map_err(StoreError::from)?;
        let at: i64 = tx.query_one(&head, &[]).await.map_err(StoreError::from)?.get(0);
        let used: i64 = tx
            .query_one("SELECT (SELECT COUNT(*) FROM sandboxes) + (SELECT COUNT(*) FROM experiments) + (SELECT COUNT(*) FROM audit)", &[])
            .await
            .map_err(StoreError::from)?
            .get(0);
        if at != 0 || used != 0 {
            return Err(Error::FailedPrecondition(
                "the database already holds sandboxes, experiments or audit records: migrate into a new, empty one"
                    .into(),
            ));
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('instance_id', $1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&instance_id],
        )
        .await
        .map_err(StoreError::from)?;
        let exp = tx
            .prepare(
                "INSERT INTO experiments (id, team, status, created_ms, body, version) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .await
            .map_err(StoreError::from)?;
        for e in experiments {
            let body = encode(e)?;
            tx.execute(
                &exp,
                &[&e.id, &e.team, &e.status.as_str(), &to_millis(e.created_at), &body, &(e.version as i64)],
            )
            .await
            .map_err(StoreError::from)?;
        }
        let sbx = tx
            .prepare(
                "INSERT INTO sandboxes (id, team, experiment, state, ended, created_ms, body, version)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .await
            .map_err(StoreError::from)?;
        for sb in sandboxes {
            let body = encode(sb)?;
            let params: [&(dyn ToSql + Sync); 8] = [
                &sb.id,
                &sb.team,
                &sb.experiment,
                &sb.state.as_str(),
                &sb.state.is_ended(),
                &to_millis(sb.created_at),
                &body,
                &(sb.version as i64),
            ];
            tx.execute(&sbx, &params).await.map_err(StoreError::from)?;
        }
        let mut last: Option<(u64, Hash)> = None;
        loop {
            let page = next_audit(last.map_or(0, |l| l.0)).await?;
            if page.is_empty() {
                break;
            }
            for r in &page {
                insert_record(&tx, r).await?;
                last = Some((r.seq, r.hash));
            }
        }
        if let Some((seq, hash)) = last {
            tx.execute("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1", &[&(seq as i64), &&hash[..]])
                .await
                .map_err(StoreError::from)?;
        }
        tx.commit().await.map_err(StoreError::from)?;
        Ok(last.map_or(0, |l| l.0))
    }

    async fn client(&self) -> Result<deadpool_postgres::Client> {
        Ok(self.pool.get().await?)
    }

    /// Runs `change` and appends `audit` in one transaction.
    async fn write<F>(&self, audit: Option<AuditEntry>, change: F) -> Result<Option<AuditRecord>>
    where
        F: for<'a> FnOnce(
                &'a deadpool_postgres::Transaction<'a>,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>
            + Send,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        change(&tx).await?;
        let rec = match audit {
            Some(e) => Some(append_in(&tx, e).await?),
            None => None,
        };
        tx.commit().await?;
        Ok(rec)
    }

    /// Reads the whole chain (after `from`, if given) in one snapshot, a page
    /// at a time, into `verify` on a blocking thread.
    async fn scan<T: Send + 'static>(
        &self,
        from: u64,
        verify: impl FnOnce(&mut dyn Iterator<Item = Result<AuditRecord>>, (u64, Hash)) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let head = read_head(&tx).await?;
        let (pages, rx) = std::sync::mpsc::sync_channel::<Result<AuditRecord>>(VERIFY_PAGE as usize);
        let verifier = tokio::task::spawn_blocking(move || verify(&mut rx.into_iter(), head));
        let stmt =
            tx.prepare(&format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2")).await?;
        let mut after = i64::try_from(from).map_err(|_| Error::Store(format!("sequence {from} out of range")))?;
        'pages: loop {
            let rows = match tx.query(&stmt, &[&after, &VERIFY_PAGE]).await {
                Ok(rows) => rows,
                Err(e) => {
                    let _ = pages.send(Err(e.into()));
                    break;
                }
            };
            let n = rows.len();
            for row in rows {
                let rec = record_from(&row);
                if let Ok(r) = &rec {
                    after = r.seq as i64;
                }
                // A closed channel: the verifier has seen enough.
                if pages.send(rec).is_err() {
                    break 'pages;
                }
            }
            if (n as i64) < VERIFY_PAGE {
                break;
            }
        }
        drop(pages);
        let verified = verifier.await.map_err(|e| Error::Store(format!("audit verification failed: {e}")))?;
        tx.commit().await?;
        verified
    }
}

/// A page of audit records, text fields cut at [`QUERY_FIELD_MAX`] characters in SQL.
async fn query_audit(c: &impl GenericClient, q: &AuditQuery) -> Result<AuditPage> {
    let cut = |c: &str| {
        format!(
            "CASE WHEN length({c}) > {QUERY_FIELD_MAX} THEN substr({c}, 1, {QUERY_FIELD_MAX}) || '… [cut: ' || length({c}) || ' characters]' ELSE {c} END"
        )
    };
    let text = ["actor", "role", "action", "target", "experiment", "sandbox", "outcome", "code", "reason", "source"];
    let columns: Vec<String> = text.iter().map(|c| cut(c)).collect();
    let stmt = c
        .prepare_cached(&format!(
            "SELECT seq, time_ms, {}, prev_hash, hash FROM audit
             WHERE seq > $1 AND ($2::BIGINT IS NULL OR time_ms >= $2) AND ($3::BIGINT IS NULL OR time_ms < $3)
               AND ($4::TEXT IS NULL OR actor = $4) AND ($5::TEXT IS NULL OR experiment = $5)
               AND ($6::TEXT IS NULL OR sandbox = $6) AND ($7::TEXT IS NULL OR action = $7)
             ORDER BY seq LIMIT $8",
            columns.join(", ")
        ))
        .await?;
    let after = i64::try_from(q.after_seq).unwrap_or(i64::MAX);
    let limit = i64::try_from(q.limit.saturating_add(1)).unwrap_or(i64::MAX);
    let params: [&(dyn ToSql + Sync); 8] = [
        &after,
        &q.since.map(to_millis),
        &q.until.map(to_millis),
        &q.actor,
        &q.experiment,
        &q.sandbox,
        &q.action,
        &limit,
    ];
    let rows = c.query(&stmt, &params).await?;
    AuditPage::fill(q, rows.iter().map(record_from))
}

type Change<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>;

#[async_trait]
impl Store for PostgresStore {
    async fn insert_sandbox(&self, sb: &Sandbox, audit: Option<AuditEntry>) -> CoreResult<Option<AuditRecord>> {
        let row = SandboxRow::new(sb)?;
        Ok(self.write(audit, move |tx| -> Change<'_> { Box::pin(async move { row.insert(tx).await }) }).await?)
    }

    async fn update_sandbox(&self, sb: &Sandbox, audit: Option<AuditEntry>) -> CoreResult<Versioned<Sandbox>> {
        let row = SandboxRow::new(sb)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        if !row.update(&tx).await? {
            return Ok(Versioned::Stale(read_sandbox(&tx, &row.id).await?));
        }
        let rec = match audit {
            Some(e) => Some(Box::new(append_in(&tx, e).await?)),
            None => None,
        };
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Versioned::Written(rec))
    }

    async fn write_admitted(
        &self,
        sb: &Sandbox,
        audit: Option<AuditEntry>,
        admission: Admission,
    ) -> CoreResult<Admitted<Versioned<Sandbox>>> {
        let row = SandboxRow::new(sb)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        // Racing creates for one team, on any daemon, queue here.
        let team_lock =
            tx.prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))").await.map_err(StoreError::from)?;
        tx.execute(&team_lock, &[&LOCK_SPACE, &format!("team:{}", row.team)]).await.map_err(StoreError::from)?;
        // FOR SHARE: a decision on the experiment waits until this write is in.
        let experiment = tx
            .prepare_cached("SELECT version FROM experiments WHERE id = $1 FOR SHARE")
            .await
            .map_err(StoreError::from)?;
        let at: Option<i64> =
            tx.query_opt(&experiment, &[&row.experiment]).await.map_err(StoreError::from)?.map(|r| r.get(0));
        if at != Some(admission.experiment_version as i64) {
            return Ok(Admitted::ExperimentChanged);
        }
        let count = tx
            .prepare_cached("SELECT COUNT(*) FROM sandboxes WHERE NOT ended AND team = $1 AND id != $2")
            .await
            .map_err(StoreError::from)?;
        let live: i64 = tx.query_one(&count, &[&row.team, &row.id]).await.map_err(StoreError::from)?.get(0);
        if live as u64 >= admission.max_live {
            return Ok(Admitted::OverQuota(live as u64));
        }
        if row.version == 0 {
            row.insert(&tx).await?;
        } else if !row.update(&tx).await? {
            let now = read_sandbox(&tx, &row.id).await?;
            return Ok(Admitted::Written(Versioned::Stale(now)));
        }
        let rec = match audit {
            Some(e) => Some(Box::new(append_in(&tx, e).await?)),
            None => None,
        };
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Admitted::Written(Versioned::Written(rec)))
    }

    async fn get(&self, id: &str) -> CoreResult<Option<Sandbox>> {
        Ok(read_sandbox(&self.client().await?, id).await?)
    }

    async fn get_many(&self, ids: &[String]) -> CoreResult<Vec<Sandbox>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT body, version FROM sandboxes WHERE id = ANY($1)")
            .await
            .map_err(StoreError::from)?;
        let rows = client.query(&stmt, &[&ids]).await.map_err(StoreError::from)?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let sb = sandbox_from(row)?;
            found.insert(sb.id.clone(), sb);
        }
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    async fn list(&self, f: &ListFilter) -> CoreResult<Vec<Sandbox>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT body, version FROM sandboxes
                 WHERE ($1 OR NOT ended) AND ($2::TEXT IS NULL OR team = $2) AND ($3::TEXT IS NULL OR experiment = $3)
                 ORDER BY created_ms, id",
            )
            .await
            .map_err(StoreError::from)?;
        let rows = client.query(&stmt, &[&f.include_ended, &f.team, &f.experiment]).await.map_err(StoreError::from)?;
        Ok(rows.iter().map(sandbox_from).collect::<Result<Vec<_>>>()?)
    }

    async fn instance_id(&self) -> CoreResult<String> {
        let client = self.client().await?;
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|e| Error::Internal(e.to_string()))?;
        // The first daemon's id stays: every daemon on the database shares it.
        client
            .execute(
                "INSERT INTO meta (key, value) VALUES ('instance_id', $1) ON CONFLICT (key) DO NOTHING",
                &[&hex::encode(b)],
            )
            .await
            .map_err(StoreError::from)?;
        let row = client
            .query_one("SELECT value FROM meta WHERE key = 'instance_id'", &[])
            .await
            .map_err(StoreError::from)?;
        Ok(row.get(0))
    }

    async fn insert_experiment(&self, e: &Experiment, audit: Option<AuditEntry>) -> CoreResult<Option<AuditRecord>> {
        let e = Experiment { version: 1, ..e.clone() };
        let body = encode(&e)?;
        Ok(self
            .write(audit, move |tx| -> Change<'_> {
                Box::pin(async move {
                    let stmt = tx
                        .prepare_cached(
                            "INSERT INTO experiments (id, team, status, created_ms, body, version) VALUES ($1, $2, $3, $4, $5, 1)",
                        )
                        .await?;
                    tx.execute(&stmt, &[&e.id, &e.team, &e.status.as_str(), &to_millis(e.created_at), &body]).await?;
                    Ok(())
                })
            })
            .await?)
    }

    async fn update_experiment(&self, e: &Experiment, audit: AuditEntry) -> CoreResult<Versioned<Experiment>> {
        let body = encode(&Experiment { version: e.version + 1, ..e.clone() })?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        let stmt = tx
            .prepare_cached(
                "UPDATE experiments SET status = $2, body = $3, version = version + 1 WHERE id = $1 AND version = $4",
            )
            .await
            .map_err(StoreError::from)?;
        let n = tx
            .execute(&stmt, &[&e.id, &e.status.as_str(), &body, &(e.version as i64)])
            .await
            .map_err(StoreError::from)?;
        if n == 0 {
            return Ok(Versioned::Stale(read_experiment(&tx, &e.id).await?));
        }
        let rec = append_in(&tx, audit).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Versioned::Written(Some(Box::new(rec))))
    }

    async fn get_experiment(&self, id: &str) -> CoreResult<Option<Experiment>> {
        Ok(read_experiment(&self.client().await?, id).await?)
    }

    async fn list_experiments(&self, f: &ExperimentFilter) -> CoreResult<Vec<Experiment>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT body, version FROM experiments
                 WHERE ($1::TEXT IS NULL OR team = $1) AND ($2::TEXT IS NULL OR status = $2)
                 ORDER BY created_ms, id",
            )
            .await
            .map_err(StoreError::from)?;
        let status = f.status.map(|s| s.as_str());
        let rows = client.query(&stmt, &[&f.team, &status]).await.map_err(StoreError::from)?;
        Ok(rows.iter().map(experiment_from).collect::<Result<Vec<_>>>()?)
    }

    async fn append_audit(&self, entry: AuditEntry) -> CoreResult<AuditRecord> {
        self.write(Some(entry), |_| -> Change<'_> { Box::pin(async { Ok(()) }) })
            .await?
            .ok_or_else(|| Error::Internal("audit append returned nothing".into()))
    }

    async fn query_audit(&self, q: &AuditQuery) -> CoreResult<AuditPage> {
        Ok(query_audit(&self.client().await?, q).await?)
    }

    async fn verify_audit(&self) -> CoreResult<VerifyReport> {
        Ok(self.scan(0, |rows, head| audit::verify(rows, Some(head))).await?)
    }

    async fn verify_audit_against(&self, checkpoint: (u64, Hash)) -> CoreResult<VerifyReport> {
        Ok(self.scan(0, move |rows, head| audit::verify_against(rows, Some(head), checkpoint)).await?)
    }

    async fn verify_audit_from(&self, from: (u64, Hash)) -> CoreResult<VerifyReport> {
        // The record verified before must still be there with that hash.
        let head = read_head(&self.client().await?).await?;
        let bad = |reason: String| VerifyReport {
            ok: false,
            records: head.0,
            first_bad_seq: from.0,
            reason,
            head_hash: head.1,
        };
        match hash_at(&self.client().await?, from.0).await? {
            None => return Ok(bad(format!("record {} is gone (records deleted or the log truncated)", from.0))),
            Some(h) if h != from.1 => {
                return Ok(bad(format!(
                    "record {} no longer has the hash it had when it was verified (rewritten)",
                    from.0
                )))
            }
            Some(_) => {}
        }
        Ok(self.scan(from.0, move |rows, head| audit::verify_from(from, rows, Some(head))).await?)
    }

    async fn audit_hash_at(&self, seq: u64) -> CoreResult<Option<Hash>> {
        Ok(hash_at(&self.client().await?, seq).await?)
    }

    async fn stats(&self) -> CoreResult<StoreStats> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT state, COUNT(*) FROM sandboxes WHERE ended GROUP BY state ORDER BY state", &[])
            .await
            .map_err(StoreError::from)?;
        let ended = rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64)).collect();
        let audit_records = read_head(&client).await?.0;
        Ok(StoreStats { ended, audit_records })
    }

    fn shared(&self) -> Option<Arc<dyn Shared>> {
        self.coordination.as_ref().map(|c| Arc::clone(c) as Arc<dyn Shared>)
    }
}

#[cfg(test)]
mod tests;
