//! The reference in-memory [`Store`], for tests: everything the SQLite store
//! promises, kept in a mutex and gone with the process.
//!
//! Same semantics as [`super::SqliteStore`]: records are versioned (an insert
//! stores version 1, an update is a compare-and-set on the version and
//! answers [`Versioned::Stale`] with the record as it is now), a change and
//! its audit record land together or not at all, the audit log is one hash
//! chain ([`crate::audit::seal`] of [`AuditEntry::bounded`] entries) whose
//! head is tracked beside it, lists are ordered by creation time (to the
//! millisecond, as stored) then id, and audit queries filter, page and bound
//! their pages in bytes exactly as the SQL does.
//!
//! It never blocks and never sleeps, so tests on a paused tokio clock
//! (`tokio::time::pause`) stay deterministic, which a store answering from
//! threads of its own cannot promise.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::{
    Admission, Admitted, AuditPage, AuditQuery, ExperimentFilter, ListFilter, Notice, Shared, Store, StoreStats,
    Versioned, QUERY_FIELD_MAX,
};
use crate::audit::{self, AuditEntry, AuditRecord, Hash, VerifyReport};
use crate::register::Experiment;
use crate::sandbox::Sandbox;
use crate::time::to_millis;
use crate::{Error, Result};

#[derive(Default)]
struct Inner {
    sandboxes: HashMap<String, Sandbox>,
    experiments: HashMap<String, Experiment>,
    /// In storage order (sequence order, unless someone edited it).
    audit: Vec<AuditRecord>,
    /// The chain's last `(seq, hash)`, as committed.
    head: (u64, Hash),
}

impl Inner {
    /// Seals `entry` after the head and appends it.
    fn append(&mut self, entry: AuditEntry) -> AuditRecord {
        let rec = audit::seal(self.head.0, self.head.1, entry.bounded());
        self.head = (rec.seq, rec.hash);
        self.audit.push(rec.clone());
        rec
    }

    fn hash_at(&self, seq: u64) -> Option<Hash> {
        if seq == 0 {
            return Some([0; 32]);
        }
        self.audit.iter().find(|r| r.seq == seq).map(|r| r.hash)
    }
}

/// The in-memory store; see the module documentation.
pub struct MemoryStore {
    instance: String,
    /// Shared by every handle ([`MemoryStore::sharing`]).
    inner: std::sync::Arc<Mutex<Inner>>,
    shared: Option<std::sync::Arc<dyn Shared>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl Inner {
    fn insert_sandbox(&mut self, sb: &Sandbox, audit: Option<AuditEntry>) -> Result<Option<AuditRecord>> {
        if self.sandboxes.contains_key(&sb.id) {
            return Err(Error::Store(format!("sandbox '{}' already exists", sb.id)));
        }
        self.sandboxes.insert(sb.id.clone(), Sandbox { version: 1, ..sb.clone() });
        Ok(audit.map(|e| self.append(e)))
    }

    fn update_sandbox(&mut self, sb: &Sandbox, audit: Option<AuditEntry>) -> Versioned<Sandbox> {
        match self.sandboxes.get(&sb.id) {
            Some(now) if now.version == sb.version => {}
            now => return Versioned::Stale(now.cloned()),
        }
        self.sandboxes.insert(sb.id.clone(), Sandbox { version: sb.version + 1, ..sb.clone() });
        Versioned::Written(audit.map(|e| Box::new(self.append(e))))
    }
}

impl MemoryStore {
    /// An empty store with a random instance id, as a new SQLite file gets.
    pub fn new() -> MemoryStore {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("the OS random source is available");
        MemoryStore::with_instance(&hex::encode(b))
    }

    /// An empty store whose [`Store::instance_id`] is `instance`.
    pub fn with_instance(instance: &str) -> MemoryStore {
        MemoryStore { instance: instance.to_string(), inner: Default::default(), shared: None }
    }

    /// Another handle on the same records, as another daemon on a shared
    /// database has, with `shared` as its lease and notices (see [`Hub`]).
    pub fn sharing(&self, shared: std::sync::Arc<dyn Shared>) -> MemoryStore {
        MemoryStore { instance: self.instance.clone(), inner: std::sync::Arc::clone(&self.inner), shared: Some(shared) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Edits the stored audit records and head in place, as someone able to
    /// write the store's file could: for tests of verification. Nothing is
    /// re-chained.
    pub fn tamper_audit(&self, edit: impl FnOnce(&mut Vec<AuditRecord>, &mut (u64, Hash))) {
        let mut inner = self.lock();
        let Inner { audit, head, .. } = &mut *inner;
        edit(audit, head);
    }
}

/// `s` cut to [`QUERY_FIELD_MAX`] characters, saying how long it was, as the SQL query cuts it.
fn cut_for_query(s: &mut String) {
    let chars = s.chars().count();
    if chars > QUERY_FIELD_MAX {
        let kept: String = s.chars().take(QUERY_FIELD_MAX).collect();
        *s = format!("{kept}… [cut: {chars} characters]");
    }
}

fn cut_record(mut r: AuditRecord) -> AuditRecord {
    let e = &mut r.entry;
    for f in [
        &mut e.actor,
        &mut e.role,
        &mut e.action,
        &mut e.target,
        &mut e.experiment,
        &mut e.sandbox,
        &mut e.code,
        &mut e.reason,
        &mut e.source,
    ] {
        cut_for_query(f);
    }
    r
}

fn matches(q: &AuditQuery, r: &AuditRecord) -> bool {
    let e = &r.entry;
    let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
    r.seq > q.after_seq
        && q.since.is_none_or(|t| to_millis(e.time) >= to_millis(t))
        && q.until.is_none_or(|t| to_millis(e.time) < to_millis(t))
        && eq(&q.actor, &e.actor)
        && eq(&q.experiment, &e.experiment)
        && eq(&q.sandbox, &e.sandbox)
        && eq(&q.action, &e.action)
}

#[async_trait]
impl Store for MemoryStore {
    fn shared(&self) -> Option<std::sync::Arc<dyn Shared>> {
        self.shared.clone()
    }

    async fn insert_sandbox(&self, sb: &Sandbox, audit: Option<AuditEntry>) -> Result<Option<AuditRecord>> {
        self.lock().insert_sandbox(sb, audit)
    }

    async fn update_sandbox(&self, sb: &Sandbox, audit: Option<AuditEntry>) -> Result<Versioned<Sandbox>> {
        Ok(self.lock().update_sandbox(sb, audit))
    }

    async fn write_admitted(
        &self,
        sb: &Sandbox,
        audit: Option<AuditEntry>,
        admission: Admission,
    ) -> Result<Admitted<Versioned<Sandbox>>> {
        // One lock across the checks and the write, as SQLite's one transaction.
        let mut inner = self.lock();
        if inner.experiments.get(&sb.experiment).map(|e| e.version) != Some(admission.experiment_version) {
            return Ok(Admitted::ExperimentChanged);
        }
        let live =
            inner.sandboxes.values().filter(|s| s.id != sb.id && s.team == sb.team && !s.state.is_ended()).count()
                as u64;
        if live >= admission.max_live {
            return Ok(Admitted::OverQuota(live));
        }
        Ok(Admitted::Written(if sb.version == 0 {
            Versioned::Written(inner.insert_sandbox(sb, audit)?.map(Box::new))
        } else {
            inner.update_sandbox(sb, audit)
        }))
    }

    async fn get(&self, id: &str) -> Result<Option<Sandbox>> {
        Ok(self.lock().sandboxes.get(id).cloned())
    }

    async fn list(&self, f: &ListFilter) -> Result<Vec<Sandbox>> {
        let inner = self.lock();
        let mut out: Vec<Sandbox> = inner
            .sandboxes
            .values()
            .filter(|s| f.include_ended || !s.state.is_ended())
            .filter(|s| f.team.as_ref().is_none_or(|t| *t == s.team))
            .filter(|s| f.experiment.as_ref().is_none_or(|x| *x == s.experiment))
            .cloned()
            .collect();
        out.sort_by(|a, b| (to_millis(a.created_at), &a.id).cmp(&(to_millis(b.created_at), &b.id)));
        Ok(out)
    }

    async fn instance_id(&self) -> Result<String> {
        Ok(self.instance.clone())
    }

    async fn insert_experiment(&self, e: &Experiment, audit: Option<AuditEntry>) -> Result<Option<AuditRecord>> {
        let mut inner = self.lock();
        if inner.experiments.contains_key(&e.id) {
            return Err(Error::Store(format!("experiment '{}' already exists", e.id)));
        }
        inner.experiments.insert(e.id.clone(), Experiment { version: 1, ..e.clone() });
        Ok(audit.map(|a| inner.append(a)))
    }

    async fn update_experiment(&self, e: &Experiment, audit: AuditEntry) -> Result<Versioned<Experiment>> {
        let mut inner = self.lock();
        match inner.experiments.get(&e.id) {
            Some(now) if now.version == e.version => {}
            now => return Ok(Versioned::Stale(now.cloned())),
        }
        inner.experiments.insert(e.id.clone(), Experiment { version: e.version + 1, ..e.clone() });
        Ok(Versioned::Written(Some(Box::new(inner.append(audit)))))
    }

    async fn get_experiment(&self, id: &str) -> Result<Option<Experiment>> {
        Ok(self.lock().experiments.get(id).cloned())
    }

    async fn list_experiments(&self, f: &ExperimentFilter) -> Result<Vec<Experiment>> {
        let inner = self.lock();
        let mut out: Vec<Experiment> = inner
            .experiments
            .values()
            .filter(|e| f.team.as_ref().is_none_or(|t| *t == e.team))
            .filter(|e| f.status.is_none_or(|s| s == e.status))
            .cloned()
            .collect();
        out.sort_by(|a, b| (to_millis(a.created_at), &a.id).cmp(&(to_millis(b.created_at), &b.id)));
        Ok(out)
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord> {
        Ok(self.lock().append(entry))
    }

    async fn query_audit(&self, q: &AuditQuery) -> Result<AuditPage> {
        let inner = self.lock();
        let mut by_seq: Vec<&AuditRecord> = inner.audit.iter().filter(|r| matches(q, r)).collect();
        by_seq.sort_by_key(|r| r.seq);
        // As the SQL: at most `limit + 1` rows are read, then the page is filled.
        let rows = by_seq.into_iter().take(q.limit.saturating_add(1)).map(|r| Ok(cut_record(r.clone())));
        AuditPage::fill(q, rows)
    }

    async fn verify_audit(&self) -> Result<VerifyReport> {
        let inner = self.lock();
        audit::verify(inner.audit.iter().cloned().map(Ok::<_, Error>), Some(inner.head))
    }

    async fn verify_audit_against(&self, checkpoint: (u64, Hash)) -> Result<VerifyReport> {
        let inner = self.lock();
        audit::verify_against(inner.audit.iter().cloned().map(Ok::<_, Error>), Some(inner.head), checkpoint)
    }

    async fn verify_audit_from(&self, from: (u64, Hash)) -> Result<VerifyReport> {
        let inner = self.lock();
        let head = inner.head;
        let bad = |reason: String| VerifyReport {
            ok: false,
            records: head.0,
            first_bad_seq: from.0,
            reason,
            head_hash: head.1,
        };
        match inner.hash_at(from.0) {
            None => return Ok(bad(format!("record {} is gone (records deleted or the log truncated)", from.0))),
            Some(h) if h != from.1 => {
                return Ok(bad(format!(
                    "record {} no longer has the hash it had when it was verified (rewritten)",
                    from.0
                )))
            }
            Some(_) => {}
        }
        // Storage order after the record `from` names, as SQLite's rowid order.
        let start = inner.audit.iter().position(|r| r.seq == from.0).map_or(0, |i| i + 1);
        let rest = inner.audit[start..].iter().cloned().map(Ok::<_, Error>);
        audit::verify_from(from, rest, Some(head))
    }

    async fn audit_hash_at(&self, seq: u64) -> Result<Option<Hash>> {
        Ok(self.lock().hash_at(seq))
    }

    async fn stats(&self) -> Result<StoreStats> {
        let inner = self.lock();
        let mut ended: std::collections::BTreeMap<&'static str, u64> = std::collections::BTreeMap::new();
        for s in inner.sandboxes.values().filter(|s| s.state.is_ended()) {
            *ended.entry(s.state.as_str()).or_default() += 1;
        }
        Ok(StoreStats {
            ended: ended.into_iter().map(|(s, n)| (s.to_string(), n)).collect(),
            audit_records: inner.head.0,
        })
    }
}

/// Daemons on one shared store, in memory, for tests: each member is one
/// daemon's lease (set by the test) and notices (what one member publishes
/// reaches every other, in order).
#[derive(Default)]
pub struct Hub {
    members: Mutex<Vec<tokio::sync::broadcast::Sender<Notice>>>,
}

/// One daemon's view of a [`Hub`].
pub struct Member {
    hub: std::sync::Arc<Hub>,
    me: usize,
    lease: tokio::sync::watch::Sender<bool>,
}

impl Hub {
    /// A new daemon on the hub, holding the lease or not.
    pub fn member(self: &std::sync::Arc<Self>, holds_lease: bool) -> std::sync::Arc<Member> {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.push(tokio::sync::broadcast::channel(1024).0);
        std::sync::Arc::new(Member {
            hub: std::sync::Arc::clone(self),
            me: members.len() - 1,
            lease: tokio::sync::watch::channel(holds_lease).0,
        })
    }
}

impl Member {
    /// Gives or takes away this daemon's lease.
    pub fn set_lease(&self, held: bool) {
        self.lease.send_replace(held);
    }
}

#[async_trait]
impl Shared for Member {
    fn lease(&self) -> tokio::sync::watch::Receiver<bool> {
        self.lease.subscribe()
    }

    async fn publish(&self, notice: &Notice) {
        let members = self.hub.members.lock().unwrap_or_else(|p| p.into_inner());
        for (_, m) in members.iter().enumerate().filter(|(i, _)| *i != self.me) {
            let _ = m.send(notice.clone());
        }
    }

    fn notices(&self) -> tokio::sync::broadcast::Receiver<Notice> {
        self.hub.members.lock().unwrap_or_else(|p| p.into_inner())[self.me].subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::sandbox::SandboxState;

    use crate::store::contract::{entry, record};

    async fn open() -> Option<(std::sync::Arc<dyn Store>, ())> {
        Some((std::sync::Arc::new(MemoryStore::with_instance("inst")), ()))
    }

    crate::store_contract_tests!(open);

    #[tokio::test]
    async fn sandboxes_are_versioned_filtered_and_ordered() {
        let s = MemoryStore::with_instance("inst");
        assert_eq!(s.instance_id().await.unwrap(), "inst");
        // On a whole millisecond, so that t0 + 10 µs falls in the same one.
        let t0 = std::time::UNIX_EPOCH
            + Duration::from_millis(SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64);
        // Created in the same millisecond: ordered by id; later ones after.
        let mut c = record("sb-c", "a");
        c.created_at = t0;
        let mut a = record("sb-a", "a");
        a.created_at = t0 + Duration::from_micros(10);
        let mut b = record("sb-b", "b");
        b.created_at = t0 - Duration::from_secs(1);
        for r in [&c, &a, &b] {
            assert!(s.insert_sandbox(r, None).await.unwrap().is_none());
        }
        assert!(s.insert_sandbox(&a, None).await.is_err(), "an id is stored once");
        assert_eq!(s.get("sb-a").await.unwrap().unwrap().version, 1);
        let ids = |v: Vec<Sandbox>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(ids(s.list(&ListFilter::default()).await.unwrap()), ["sb-b", "sb-a", "sb-c"]);

        let mut ended = s.get("sb-b").await.unwrap().unwrap();
        ended.end(SandboxState::Deleted, "test", SystemTime::now());
        match s.update_sandbox(&ended, Some(entry("x"))).await.unwrap() {
            Versioned::Written(Some(r)) => assert_eq!(r.seq, 1),
            other => panic!("{other:?}"),
        }
        // Written at version 1 once: the same write again is stale, and says what is there.
        match s.update_sandbox(&ended, Some(entry("late"))).await.unwrap() {
            Versioned::Stale(Some(now)) => assert_eq!((now.state, now.version), (SandboxState::Deleted, 2)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(s.update_sandbox(&record("sb-none", "a"), None).await.unwrap(), Versioned::Stale(None)));

        assert_eq!(ids(s.list(&ListFilter::default()).await.unwrap()), ["sb-a", "sb-c"]);
        let all = ListFilter { include_ended: true, ..Default::default() };
        assert_eq!(s.list(&all).await.unwrap().len(), 3);
        let team_b = ListFilter { team: Some("b".into()), include_ended: true, ..Default::default() };
        assert_eq!(ids(s.list(&team_b).await.unwrap()), ["sb-b"]);
        let other = ListFilter { experiment: Some("exp-2".into()), include_ended: true, ..Default::default() };
        assert!(s.list(&other).await.unwrap().is_empty());
        let live = |team: &str| ListFilter { team: Some(team.into()), ..Default::default() };
        assert_eq!((s.list(&live("a")).await.unwrap().len(), s.list(&live("b")).await.unwrap().len()), (2, 0));
        let stats = s.stats().await.unwrap();
        assert_eq!(stats, StoreStats { ended: vec![("deleted".into(), 1)], audit_records: 1 });
        // The stale write's audit record was not written either.
        let page = s.query_audit(&AuditQuery { limit: 10, ..Default::default() }).await.unwrap();
        assert_eq!(page.records.iter().map(|r| r.entry.actor.as_str()).collect::<Vec<_>>(), ["x"]);
    }

    #[tokio::test]
    async fn entries_are_bounded_and_oversized_fields_cut_in_queries() {
        let s = MemoryStore::new();
        let mut e = entry("a");
        e.reason = "r".repeat(100_000);
        let rec = s.append_audit(e).await.unwrap();
        assert!(rec.entry.reason.len() <= crate::audit::REASON_MAX, "bounded on append");
        // A legacy record, longer than any query returns.
        s.tamper_audit(|records, _| records[0].entry.target = "x".repeat(40_000));
        let page = s.query_audit(&AuditQuery { limit: 10, ..Default::default() }).await.unwrap();
        assert!(page.records[0].entry.target.ends_with("[cut: 40000 characters]"));
        assert!(page.records[0].entry.target.len() < QUERY_FIELD_MAX + 64);
    }

    #[tokio::test]
    async fn the_chain_verifies_and_edits_are_found() {
        let s = MemoryStore::new();
        for i in 0..10 {
            s.append_audit(entry(&format!("actor-{i}"))).await.unwrap();
        }
        let r = s.verify_audit().await.unwrap();
        assert!(r.ok && r.records == 10, "{r:?}");
        assert_eq!(s.audit_hash_at(0).await.unwrap(), Some([0; 32]));
        assert_eq!(s.audit_hash_at(11).await.unwrap(), None);
        let h8 = s.audit_hash_at(8).await.unwrap().unwrap();
        assert!(s.verify_audit_against((8, h8)).await.unwrap().ok);
        assert!(!s.verify_audit_against((8, [7; 32])).await.unwrap().ok, "not the checkpoint's head");
        assert!(!s.verify_audit_against((11, h8)).await.unwrap().ok, "shorter than the checkpoint");
        let from = s.verify_audit_from((8, h8)).await.unwrap();
        assert!(from.ok && from.records == 10, "{from:?}");
        assert!(!s.verify_audit_from((8, [1; 32])).await.unwrap().ok, "not the hash it had");

        s.tamper_audit(|records, _| records[8].entry.actor = "mallory".into());
        let r = s.verify_audit_from((8, h8)).await.unwrap();
        assert_eq!((r.ok, r.first_bad_seq), (false, 9), "{r:?}");
        assert_eq!(s.verify_audit().await.unwrap().first_bad_seq, 9);
        s.tamper_audit(|records, _| records.truncate(7));
        let r = s.verify_audit_from((8, h8)).await.unwrap();
        assert!(!r.ok && r.reason.contains("record 8 is gone"), "{r:?}");
    }
}
