//! Durable state behind a small trait, so the lifecycle manager does not care
//! whether it lives in a local SQLite file (today) or a shared database (a
//! fleet of daemons, later): sandbox records, the AI register, and the
//! hash-chained audit log.
//!
//! A state change and the audit record that describes it are written in one
//! transaction: if the audit log cannot be written, the change does not happen.
//!
//! `sandpit_store_sqlite::SqliteStore` keeps it in a SQLite file (one
//! daemon); `sandpit_store_postgres::PostgresStore` in PostgreSQL (several
//! daemons, see [`Shared`]); [`memory::MemoryStore`] in memory, for tests.

#[cfg(any(test, feature = "testing"))]
pub mod contract;
pub mod memory;

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{broadcast, watch};

use crate::audit::{AuditEntry, AuditRecord, Hash, VerifyReport};
use crate::register::{Experiment, Status};
use crate::sandbox::{EventKind, Sandbox};
use crate::Result;

/// Which records [`Store::list`] returns.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this team's.
    pub team: Option<String>,
    pub experiment: Option<String>,
    /// Also ended sandboxes (expired, deleted, failed, lost).
    pub include_ended: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ExperimentFilter {
    pub team: Option<String>,
    pub status: Option<Status>,
}

/// Which audit records [`Store::query_audit`] returns, oldest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    pub actor: Option<String>,
    pub experiment: Option<String>,
    pub sandbox: Option<String>,
    pub action: Option<String>,
    /// Only records after this sequence number (pagination).
    pub after_seq: u64,
    pub limit: usize,
    /// Stop once the page holds about this many bytes (0: no bound); a page
    /// always holds at least one record when any match.
    pub max_bytes: usize,
}

/// One page of [`Store::query_audit`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    /// Whether more records match after the last one.
    pub more: bool,
}

impl AuditPage {
    /// The page `q` asks for, from the matching records in sequence order
    /// (at least `q.limit + 1` of them, when there are that many): up to
    /// `q.limit` records or about `q.max_bytes`, and at least one record
    /// when any match. Every backend fills its pages with this.
    pub fn fill<E>(
        q: &AuditQuery,
        records: impl IntoIterator<Item = std::result::Result<AuditRecord, E>>,
    ) -> std::result::Result<AuditPage, E> {
        let mut page = AuditPage::default();
        let mut bytes = 0usize;
        for rec in records {
            let rec = rec?;
            let size = rec.entry.approx_size();
            let full = page.records.len() >= q.limit || (q.max_bytes > 0 && bytes + size > q.max_bytes);
            if full && !page.records.is_empty() {
                page.more = true;
                break;
            }
            bytes += size;
            page.records.push(rec);
        }
        Ok(page)
    }
}

/// The longest any text field of a record is returned by a query (legacy
/// records written before caller input was bounded can hold megabytes);
/// longer ones are cut, saying how long they were. Verification always reads
/// them whole.
pub const QUERY_FIELD_MAX: usize = 16 * 1024;

/// Durable state, async so that a networked database can stand behind it.
/// Records are versioned: an update is written only if the record is still
/// at the version it was read at (compare-and-set), so racing writers (in
/// one daemon, or several on one database) cannot overwrite each other.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Adds a new sandbox record (its version becomes 1), with the audit
    /// record of the change if any. Fails if the id exists.
    async fn insert_sandbox(&self, sandbox: &Sandbox, audit: Option<AuditEntry>) -> Result<Option<AuditRecord>>;
    /// Writes `sandbox` only if the stored record is still at
    /// `sandbox.version`, with the audit record of the change in the same
    /// transaction. The stored version is then one higher.
    async fn update_sandbox(&self, sandbox: &Sandbox, audit: Option<AuditEntry>) -> Result<Versioned<Sandbox>>;
    /// As [`Store::insert_sandbox`] (when `sandbox.version` is 0) or
    /// [`Store::update_sandbox`], for a create: only if what admitted it
    /// still holds when the write lands (see [`Admission`]), checked in the
    /// write's own transaction. Racing creates cannot overrun a team's
    /// quota, and a create cannot slip past a decision on its experiment
    /// (which bumps the experiment's version), in one daemon or in several
    /// on one database.
    async fn write_admitted(
        &self,
        sandbox: &Sandbox,
        audit: Option<AuditEntry>,
        admission: Admission,
    ) -> Result<Admitted<Versioned<Sandbox>>>;
    async fn get(&self, id: &str) -> Result<Option<Sandbox>>;
    /// The records of those of `ids` that exist, in one read where the
    /// backend can (expiry reads every sandbox falling due at one instant).
    async fn get_many(&self, ids: &[String]) -> Result<Vec<Sandbox>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.get(id).await?);
        }
        Ok(out)
    }
    /// Records matching `filter`, oldest first.
    async fn list(&self, filter: &ListFilter) -> Result<Vec<Sandbox>>;
    /// A stable id for this daemon's data, put in the labels of everything it
    /// creates so that two daemons on one engine never touch each other's objects.
    async fn instance_id(&self) -> Result<String>;

    /// Adds a new experiment (its version becomes 1), with the audit record of its registration.
    async fn insert_experiment(
        &self,
        experiment: &Experiment,
        audit: Option<AuditEntry>,
    ) -> Result<Option<AuditRecord>>;
    /// Writes `experiment` only if the stored record is still at
    /// `experiment.version` (compare-and-set), with the audit record of the
    /// change in the same transaction. The stored version is then one higher.
    async fn update_experiment(&self, experiment: &Experiment, audit: AuditEntry) -> Result<Versioned<Experiment>>;
    async fn get_experiment(&self, id: &str) -> Result<Option<Experiment>>;
    async fn list_experiments(&self, filter: &ExperimentFilter) -> Result<Vec<Experiment>>;

    /// Appends an audit record that goes with no other change (e.g. a denial).
    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord>;
    async fn query_audit(&self, query: &AuditQuery) -> Result<AuditPage>;
    /// Recomputes the whole chain.
    async fn verify_audit(&self) -> Result<VerifyReport>;
    /// Recomputes the whole chain, which must also hold a checkpoint's
    /// `(size, head)`: record `size` exists and hashes to `head`.
    async fn verify_audit_against(&self, checkpoint: (u64, Hash)) -> Result<VerifyReport>;
    /// Verifies only what follows `from`, the `(seq, hash)` of a record
    /// verified before: that record still has that hash, and every later
    /// one follows on from it up to the head.
    async fn verify_audit_from(&self, from: (u64, Hash)) -> Result<VerifyReport>;
    /// The hash stored for record `seq` (32 zero bytes for 0), if there is one.
    async fn audit_hash_at(&self, seq: u64) -> Result<Option<Hash>>;

    /// Totals for metrics: ended sandboxes by final state, and the audit log's length.
    async fn stats(&self) -> Result<StoreStats>;

    /// Where several daemons share this store: the lease on the duties one
    /// runs at a time, and the notices they send each other. `None` (the
    /// default): this process is the store's only user, and holds every duty.
    fn shared(&self) -> Option<Arc<dyn Shared>> {
        None
    }
}

/// Several daemons on one store ([`Store::shared`]).
#[async_trait::async_trait]
pub trait Shared: Send + Sync + 'static {
    /// Whether this daemon holds the lease on the singleton duties (expiry,
    /// reconcile, warm-pool refill, checkpoints), now and as it changes. The
    /// implementation keeps trying to take it while it is not held.
    fn lease(&self) -> watch::Receiver<bool>;
    /// Tells the other daemons of an event (best effort: a failure is logged).
    async fn publish(&self, notice: &Notice);
    /// Notices the other daemons publish, from now on.
    fn notices(&self) -> broadcast::Receiver<Notice>;
}

/// An event one daemon tells the others sharing its store of, so that
/// watchers on every daemon see it and each keeps the sandbox's deadlines.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Notice {
    pub kind: EventKind,
    pub sandbox: String,
    /// The record's version after the event: a receiver reads at least this one.
    pub version: u64,
    pub message: String,
}

/// The outcome of a compare-and-set write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Versioned<T> {
    /// Written; the audit record that went with it, if any.
    Written(Option<Box<AuditRecord>>),
    /// Someone else wrote the record since it was read: nothing was written.
    /// The record as it is now (`None` if it is gone).
    Stale(Option<T>),
}

/// What must still be true when a create's record is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// The team may have fewer than this many other live sandboxes.
    pub max_live: u64,
    /// The sandbox's experiment is still at the version admission read.
    pub experiment_version: u64,
}

/// What [`Store::write_admitted`] did.
#[derive(Debug)]
pub enum Admitted<T> {
    /// Admission still held: the write's outcome.
    Written(T),
    /// The team already had this many other live sandboxes: nothing was written.
    OverQuota(u64),
    /// The experiment changed (or went) since admission read it: nothing was
    /// written; admit again.
    ExperimentChanged,
}

/// See [`Store::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// `(state, count)` of ended sandboxes.
    pub ended: Vec<(String, u64)>,
    pub audit_records: u64,
}
