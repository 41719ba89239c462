//! The audit log as the manager writes it: one place that builds entries,
//! records them (refusals through the flood bounds of
//! [`crate::audit::refusals`]), publishes them to watchers, and records a
//! failed request ([`AuditLog::failed`]) so that no call site repeats it.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures_util::StreamExt;
use tokio::sync::broadcast;

use crate::audit::refusals::{RefusalLimits, Refusals};
use crate::audit::{AuditEntry, AuditRecord, Outcome, DAEMON};
use crate::auth::Caller;
use crate::runtime::BoxStream;
use crate::store::Store;
use crate::Error;

/// Records kept for slow watchers before they miss some.
const BUFFER: usize = 1024;

pub struct AuditLog {
    store: Arc<dyn Store>,
    published: broadcast::Sender<AuditRecord>,
    /// Refusals waiting to be summarised, so that none floods the log.
    refusals: Mutex<Refusals>,
}

/// An entry for an action on a sandbox or experiment. `caller` `None` means
/// the daemon acted on its own; `Err` the request was refused or failed.
pub fn entry(
    caller: Option<&Caller>,
    action: &str,
    experiment: &str,
    sandbox: &str,
    result: std::result::Result<String, &Error>,
) -> AuditEntry {
    let (outcome, code, reason) = match result {
        Ok(reason) => (Outcome::Succeeded, crate::error::Code::Ok, reason),
        Err(e) => {
            let outcome = if e.is_denial() { Outcome::Denied } else { Outcome::Failed };
            (outcome, e.code(), e.to_string())
        }
    };
    AuditEntry {
        time: SystemTime::now(),
        actor: caller.map_or(DAEMON, |c| c.name.as_str()).to_string(),
        role: caller.map_or("", |c| c.role_name()).to_string(),
        action: action.to_string(),
        target: if sandbox.is_empty() { experiment } else { sandbox }.to_string(),
        experiment: experiment.to_string(),
        sandbox: sandbox.to_string(),
        outcome,
        code: code.as_str().to_string(),
        reason,
        source: caller.map_or("daemon", |c| c.source.as_str()).to_string(),
    }
}

impl AuditLog {
    pub fn new(store: Arc<dyn Store>, limits: RefusalLimits) -> AuditLog {
        AuditLog { store, published: broadcast::channel(BUFFER).0, refusals: Mutex::new(Refusals::new(limits)) }
    }

    /// Tells watchers about a record written with a change of state.
    pub fn published(&self, rec: Option<AuditRecord>) {
        if let Some(r) = rec {
            // No receivers is fine: nobody is watching.
            let _ = self.published.send(r);
        }
    }

    /// Appends a record that goes with no change of state.
    pub async fn record(&self, entry: AuditEntry) {
        match self.store.append_audit(entry).await {
            Ok(r) => self.published(Some(r)),
            Err(e) => tracing::error!(error = %e, "could not append to the audit log"),
        }
    }

    /// Records a refusal (a call or connection that changed nothing), unless
    /// it repeats one already recorded in this window or its source has had
    /// its share of records: those are counted and summarised when the
    /// window closes.
    pub async fn refusal(&self, entry: AuditEntry) {
        let admitted = { self.refusals.lock().unwrap_or_else(|p| p.into_inner()).admit(entry) };
        match admitted {
            Some(e) => self.record(e).await,
            None => crate::metrics::global().refusal_summarised(),
        }
    }

    /// Writes the summaries of the refusals counted in the window now closing.
    pub async fn flush_refusals(&self) {
        let summaries = { self.refusals.lock().unwrap_or_else(|p| p.into_inner()).flush(SystemTime::now()) };
        for e in summaries {
            self.record(e).await;
        }
    }

    pub fn refusal_window(&self) -> std::time::Duration {
        self.refusals.lock().unwrap_or_else(|p| p.into_inner()).limits().window
    }

    /// The experiment of a sandbox, for records (empty when unknown).
    pub async fn experiment_of(&self, sandbox: &str) -> String {
        self.store.get(sandbox).await.ok().flatten().map(|s| s.experiment).unwrap_or_default()
    }

    /// Records a request that was refused or failed and changed nothing.
    pub async fn refused(&self, caller: &Caller, action: &str, experiment: &str, sandbox: &str, e: &Error) {
        self.refusal(entry(Some(caller), action, experiment, sandbox, Err(e))).await;
    }

    /// `result` of a request about sandbox `id`, with its failure (if it
    /// failed) on record: the one audit-on-error path of sandbox requests.
    pub async fn failed<T>(
        &self,
        caller: &Caller,
        action: &str,
        id: &str,
        result: crate::Result<T>,
    ) -> crate::Result<T> {
        if let Err(e) = &result {
            let experiment = self.experiment_of(id).await;
            self.refused(caller, action, &experiment, id, e).await;
        }
        result
    }

    /// Records as they are written, until `until` resolves.
    pub fn watch(&self, until: impl std::future::Future<Output = ()> + Send + 'static) -> BoxStream<AuditRecord> {
        tokio_stream::wrappers::BroadcastStream::new(self.published.subscribe())
            .filter_map(|r| std::future::ready(r.ok()))
            .take_until(until)
            .boxed()
    }
}
