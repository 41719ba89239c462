//! The lifecycle manager: provisions, extends, tears down, expires and
//! reconciles sandboxes, written against the [`Runtime`] and [`Store`] traits.
//!
//! Invariants:
//! - a record is written (`provisioning`) before any Docker object exists, so
//!   a crash at any point leaves something reconcile can find;
//! - provisioning runs in its own task: a client hanging up cannot leave half
//!   a sandbox, and an abandoned create is torn down;
//! - every transition of one sandbox holds that sandbox's lock;
//! - teardown is idempotent and converges on what Docker actually has.

mod allowlist;
mod audit_log;
/// An audit entry for an action by a caller (or the daemon), as the manager writes them.
pub use audit_log::entry as audit_entry;
mod exec;
mod experiments;
mod expiry;
mod forward;
mod gauges;
mod locks;
mod pool;
mod reconcile;
mod requests;
mod shared;
mod teardown;
#[cfg(test)]
mod tests;
mod transfer;

pub use exec::{ExecInput, ExecOutput};
pub use forward::Forwarded;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use audit_log::AuditLog;
pub use experiments::ActiveExperiment;
pub use expiry::{Due, Scheduler};
pub use pool::PoolStatus;
pub use reconcile::ReconcileReport;
pub use transfer::{CopyOut, Transfer};

use crate::audit::{action, AuditEntry};
use crate::auth::Caller;
use crate::egress;
use crate::policy::{HostPolicy, ProfileSet};
use crate::runtime::Runtime;
use crate::sandbox::{EventKind, Sandbox, SandboxEvent, SandboxState};
use crate::store::{Admission, Admitted, ListFilter, Notice, Shared, Store, Versioned};
use crate::{Error, Result};

/// Events kept for slow watchers before they miss some.
const EVENT_BUFFER: usize = 1024;

/// What the manager needs from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: HostPolicy,
    /// Sign-offs by function and risk review cadence (config `[governance]`).
    pub governance: crate::register::Governance,
    pub expiry_warning: Duration,
    pub reconcile_interval: Duration,
    pub orphan_grace: Duration,
    pub exec_timeout: Duration,
    /// Where profiles are reloaded from, and what they are checked against.
    pub profiles_dir: std::path::PathBuf,
    pub host_rules: crate::policy::HostRules,
    pub quotas: crate::policy::admission::TeamQuotas,
    /// How refusals are bounded in the audit log.
    pub refusals: crate::audit::refusals::RefusalLimits,
}

/// The result of reloading the profiles directory.
#[derive(Debug, Clone)]
pub struct Reload {
    /// Whether the new set replaced the old one.
    pub applied: bool,
    /// Names in force after the reload.
    pub loaded: Vec<String>,
    pub errors: Vec<crate::policy::ProfileError>,
}

pub struct Manager {
    runtime: Arc<dyn Runtime>,
    store: Arc<dyn Store>,
    profiles: RwLock<Arc<ProfileSet>>,
    settings: Settings,
    instance: String,
    scheduler: Scheduler,
    events: broadcast::Sender<SandboxEvent>,
    audit: AuditLog,
    /// Allowlist sandboxes by address, for the egress proxy.
    egress: RwLock<HashMap<IpAddr, (String, Vec<egress::Destination>)>>,
    /// Allowlist sandboxes by the SHA-256 (hex) of their egress relay's
    /// token, for the egress proxy (sandboxes on a swarm).
    egress_relays: RwLock<HashMap<String, (String, Vec<egress::Destination>)>>,
    locks: locks::KeyedLocks,
    pools: pool::Pools,
    /// Sandboxes whose create is in flight in this process; reconcile leaves them be.
    creating: Mutex<HashSet<String>>,
    /// Live sandboxes this process has made or taken over: reconcile adopts
    /// only those it finds that are not in here yet.
    tracked: Mutex<HashSet<String>>,
    /// When the OOM killer last struck in each sandbox, so that a command
    /// it killed can be told why (its own exit code says only 137).
    oom_seen: Mutex<HashMap<String, std::time::Instant>>,
    /// Sandboxes whose expiry is being carried out: a deadline that falls due
    /// again meanwhile (reconcile puts deadlines back) starts no second one.
    /// The flag: its container has been killed, so it is too late to extend.
    expiring: Mutex<HashMap<String, bool>>,
    /// Every task the manager starts (loops, provisioning, teardowns, exec
    /// and transfer streams), so that shutdown can wait for them.
    tasks: TaskTracker,
    /// Cancelled when the daemon stops: loops end, streams finish, retries give up.
    cancel: CancellationToken,
    /// When shutdown began.
    stopping: std::sync::OnceLock<tokio::time::Instant>,
    due_rx: Mutex<Option<mpsc::UnboundedReceiver<Due>>>,
    /// Profiles the runtime cannot run now, and why, as last said in the log.
    unrunnable: Mutex<BTreeMap<String, String>>,
    /// Other daemons on the same store, if any ([`Store::shared`]).
    shared: Option<Arc<dyn Shared>>,
    /// Whether this daemon runs the duties one daemon runs at a time
    /// (expiry, reconcile, warm-pool refill, host-rule repair): always when
    /// it is the store's only user, else while it holds the lease.
    duty: watch::Receiver<bool>,
    /// Keeps `duty` at true when there is no lease.
    _sole: Option<watch::Sender<bool>>,
    /// This daemon's events for the others, in order (see `publish_notices`).
    notices: Option<mpsc::UnboundedSender<Notice>>,
    notices_rx: Mutex<Option<mpsc::UnboundedReceiver<Notice>>>,
}

impl Manager {
    pub async fn new(
        runtime: Arc<dyn Runtime>,
        store: Arc<dyn Store>,
        profiles: ProfileSet,
        settings: Settings,
    ) -> Result<Arc<Self>> {
        let instance = store.instance_id().await?;
        let (due_tx, due_rx) = mpsc::unbounded_channel();
        let audit = AuditLog::new(Arc::clone(&store), settings.refusals);
        let shared = store.shared();
        let (duty, sole) = match &shared {
            Some(s) => (s.lease(), None),
            None => {
                let (tx, rx) = watch::channel(true);
                (rx, Some(tx))
            }
        };
        let (notices, notices_rx) = match &shared {
            Some(_) => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        Ok(Arc::new(Manager {
            runtime,
            store,
            profiles: RwLock::new(Arc::new(profiles)),
            settings,
            instance,
            scheduler: Scheduler::spawn(due_tx),
            events: broadcast::channel(EVENT_BUFFER).0,
            audit,
            egress: RwLock::new(HashMap::new()),
            egress_relays: RwLock::new(HashMap::new()),
            locks: locks::KeyedLocks::default(),
            pools: pool::Pools::default(),
            creating: Mutex::new(HashSet::new()),
            tracked: Mutex::new(HashSet::new()),
            oom_seen: Mutex::new(HashMap::new()),
            expiring: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            stopping: std::sync::OnceLock::new(),
            due_rx: Mutex::new(Some(due_rx)),
            unrunnable: Mutex::new(BTreeMap::new()),
            shared,
            duty,
            _sole: sole,
            notices,
            notices_rx: Mutex::new(notices_rx),
        }))
    }

    /// Schedules every live record's expiry from the store (no Docker needed,
    /// so a restart serves at once), then starts expiry handling, periodic
    /// reconcile and the Docker event follower.
    pub async fn start(self: &Arc<Self>) -> Result<()> {
        let live = self.store.list(&ListFilter::default()).await?;
        for sb in &live {
            if sb.state != SandboxState::Provisioning {
                self.schedule(sb);
                self.egress_learn(sb);
            }
        }
        self.load_pools(&live);
        let due_rx = self.due_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let due_rx = due_rx.ok_or_else(|| Error::Internal("manager started twice".into()))?;
        self.spawn_until_shutdown(Arc::clone(self).dispatch_due(due_rx));
        self.spawn_until_shutdown(Arc::clone(self).reconcile_loop());
        self.spawn_until_shutdown(Arc::clone(self).follow_events());
        self.spawn_until_shutdown(Arc::clone(self).pool_loop());
        self.spawn_until_shutdown(Arc::clone(self).refusal_loop());
        self.spawn_until_shutdown(Arc::clone(self).watch_runtime());
        crate::metrics::global().on_duty(self.on_duty());
        if let Some(shared) = &self.shared {
            let rx = self.notices_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(rx) = rx {
                self.spawn_until_shutdown(shared::publish_notices(Arc::clone(shared), rx));
            }
            self.spawn_until_shutdown(Arc::clone(self).follow_notices(Arc::clone(shared)));
            self.spawn_until_shutdown(Arc::clone(self).follow_lease());
        }
        Ok(())
    }

    /// Whether this daemon runs the singleton duties now (see `duty`).
    pub fn on_duty(&self) -> bool {
        *self.duty.borrow()
    }

    /// [`Manager::on_duty`], now and as it changes (the checkpointer signs only on duty).
    pub fn duty(&self) -> watch::Receiver<bool> {
        self.duty.clone()
    }

    /// Whether other daemons may share the store.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn profiles(&self) -> Arc<ProfileSet> {
        self.profiles.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What the runtime can give now (isolation levels come and go with
    /// the engine's runtimes).
    pub fn capabilities(&self) -> crate::runtime::Capabilities {
        self.runtime.capabilities()
    }

    /// Says in the log which profiles the runtime cannot run now (their
    /// isolation level is unavailable) and which it can again, when that
    /// changes. ListProfiles says it to callers.
    pub fn report_unrunnable(&self) {
        let caps = self.runtime.capabilities();
        let now: BTreeMap<String, String> = self
            .profiles()
            .iter()
            .filter_map(|p| {
                caps.why_not(p.isolation).map(|why| (p.name.clone(), format!("isolation '{}': {why}", p.isolation)))
            })
            .collect();
        let mut said = self.unrunnable.lock().unwrap_or_else(|p| p.into_inner());
        for (profile, why) in &now {
            if said.get(profile) != Some(why) {
                tracing::warn!(%profile, %why, "profile unavailable on this host: its creates are refused (rule isolation-available)");
            }
        }
        for profile in said.keys().filter(|p| !now.contains_key(*p)) {
            if self.profiles().get(profile).is_some() {
                tracing::info!(%profile, "profile available again");
            }
        }
        *said = now;
    }

    pub fn host_rules(&self) -> crate::policy::HostRules {
        self.settings.host_rules.clone()
    }

    /// Re-reads the profiles directory. Any invalid file keeps the last good
    /// set in force and reports every error; running sandboxes keep the
    /// profile they were created with either way.
    pub async fn reload_profiles(&self, caller: Option<&Caller>) -> Reload {
        let result = ProfileSet::load_dir_with(&self.settings.profiles_dir, &self.settings.host_rules);
        let (applied, errors) = match result {
            Ok(set) => {
                *self.profiles.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
                (true, Vec::new())
            }
            Err(errors) => (false, errors),
        };
        self.pools.wake.notify_one();
        self.report_unrunnable();
        let loaded: Vec<String> = self.profiles().names().map(String::from).collect();
        let reason = if applied {
            format!("loaded {}", loaded.join(", "))
        } else {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            format!("kept the last good set: {}", list.join("; "))
        };
        let entry = if applied {
            audit_log::entry(caller, action::RELOAD_PROFILES, "", "", Ok(reason))
        } else {
            audit_log::entry(caller, action::RELOAD_PROFILES, "", "", Err(&Error::FailedPrecondition(reason)))
        };
        self.record(entry).await;
        tracing::info!(applied, profiles = loaded.len(), errors = errors.len(), "profiles reloaded");
        Reload { applied, loaded, errors }
    }

    /// The daemon is stopping: loops end, streaming calls (watch, exec)
    /// finish, background retries give up; work in flight (a provisioning, a
    /// teardown) runs to its end. Sandboxes are left running.
    pub fn begin_shutdown(&self) {
        self.stopping.get_or_init(tokio::time::Instant::now);
        self.cancel.cancel();
    }

    /// A future that resolves once shutdown has begun.
    pub fn shutdown_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.cancel.clone().cancelled_owned()
    }

    /// Stops the manager: begins shutdown if nothing has, then waits for
    /// its tasks (loops, provisioning, teardowns, exec and transfer
    /// streams) until `grace` after shutdown began. Whether they all ended.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.begin_shutdown();
        self.tasks.close();
        let begun = *self.stopping.get_or_init(tokio::time::Instant::now);
        let drained = tokio::time::timeout_at(begun + grace, self.tasks.wait()).await.is_ok();
        if !drained {
            tracing::warn!(left = self.tasks.len(), ?grace, "manager tasks still running after the grace period");
        }
        drained
    }

    /// Runs `work` as a tracked task that ends when the daemon stops.
    fn spawn_until_shutdown(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = work => {}
            }
        });
    }

    fn emit(&self, kind: EventKind, sandbox: &Sandbox, message: impl Into<String>) {
        let message = message.into();
        self.tell_others(kind, sandbox, &message);
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(SandboxEvent { kind, time: SystemTime::now(), sandbox: sandbox.clone(), message });
    }

    /// Tells the other daemons sharing the store of an event (in order with
    /// the rest); watchers here are not told. A warm sandbox made is told
    /// this way only: nobody watches it, but every daemon may claim it.
    fn tell_others(&self, kind: EventKind, sandbox: &Sandbox, message: &str) {
        if let Some(tx) = &self.notices {
            let _ = tx.send(Notice {
                kind,
                sandbox: sandbox.id.clone(),
                version: sandbox.version,
                message: message.to_string(),
            });
        }
    }

    /// Writes a sandbox record and the audit record of its change, atomically,
    /// if nothing else wrote the record since it was read (its version moves on).
    async fn commit(&self, sb: &mut Sandbox, entry: impl FnOnce(&Sandbox) -> AuditEntry) -> Result<()> {
        let entry = entry(sb);
        self.update(sb, Some(entry)).await
    }

    /// Compare-and-set of a sandbox record, with the audit record of the change if any.
    async fn update(&self, sb: &mut Sandbox, entry: Option<AuditEntry>) -> Result<()> {
        let written = self.store.update_sandbox(sb, entry).await?;
        self.committed(sb, written)
    }

    /// As [`Manager::commit`] for a create, while `admission` holds; when
    /// it no longer does, nothing is written.
    async fn commit_admitted(&self, sb: &mut Sandbox, entry: AuditEntry, admission: Admission) -> Result<Admitted<()>> {
        Ok(match self.store.write_admitted(sb, Some(entry), admission).await? {
            Admitted::Written(written) => Admitted::Written(self.committed(sb, written)?),
            Admitted::OverQuota(live) => Admitted::OverQuota(live),
            Admitted::ExperimentChanged => Admitted::ExperimentChanged,
        })
    }

    /// Takes a compare-and-set's outcome: the new version and the published
    /// audit record, or the conflict.
    fn committed(&self, sb: &mut Sandbox, written: Versioned<Sandbox>) -> Result<()> {
        match written {
            Versioned::Written(rec) => {
                sb.version += 1;
                self.audit.published(rec.map(|r| *r));
                Ok(())
            }
            Versioned::Stale(now) => Err(Error::Conflict(format!(
                "sandbox '{}' was changed by someone else meanwhile (it is {}); nothing was changed, try again",
                sb.id,
                now.map_or("gone", |n| n.state.as_str())
            ))),
        }
    }

    /// Appends an audit record that goes with no state change.
    pub async fn record(&self, entry: AuditEntry) {
        self.audit.record(entry).await
    }

    /// Records a refusal, within the flood bounds (see [`AuditLog::refusal`]).
    pub async fn record_refusal(&self, entry: AuditEntry) {
        self.audit.refusal(entry).await
    }

    /// Writes the summaries of the refusals counted in the window now closing.
    pub async fn flush_refusals(&self) {
        self.audit.flush_refusals().await
    }

    async fn refusal_loop(self: Arc<Self>) {
        let window = self.audit.refusal_window();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + window, window);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush_refusals().await;
        }
    }

    fn schedule(&self, sb: &Sandbox) {
        let warn_at = sb.expires_at.checked_sub(self.settings.expiry_warning);
        self.scheduler.schedule(&sb.id, sb.expires_at, warn_at);
    }
}

impl Manager {}

impl Manager {
    /// The sandboxes in the store that own (or may own) Docker objects.
    async fn live_records(&self) -> Result<Vec<Sandbox>> {
        self.store.list(&ListFilter::default()).await
    }

    fn is_creating(&self, id: &str) -> bool {
        self.creating.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
    }
}

/// Records the sandbox and experiment in the current RPC's span (no-op outside one).
fn in_span(sandbox: &str, experiment: &str) {
    let span = tracing::Span::current();
    span.record("sandbox", sandbox);
    if !experiment.is_empty() {
        span.record("experiment", experiment);
    }
}
