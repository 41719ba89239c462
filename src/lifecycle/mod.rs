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

mod experiments;
mod expiry;
mod locks;
mod pool;
mod reconcile;
#[cfg(test)]
mod tests;
mod transfer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use experiments::ActiveExperiment;
pub use expiry::{Due, Scheduler};
pub use pool::PoolStatus;
pub use reconcile::ReconcileReport;
pub use transfer::{CopyOut, Transfer};

use crate::audit::{action, AuditEntry, AuditRecord, Outcome, VerifyReport, DAEMON};
use crate::auth::Caller;
use crate::egress;
use crate::policy::admission::check_quota;
use crate::policy::{admit, extend_deadline, CreateSandbox, HostPolicy, NetworkMode, ProfileSet};
use crate::runtime::{BoxStream, ExecChunk, ExecSpec, PullProgress, Runtime};
use crate::sandbox::{new_id, EventKind, Sandbox, SandboxEvent, SandboxState};
use crate::store::AuditQuery;
use crate::store::{ListFilter, Store, Versioned};
use crate::{Error, Result};

/// Events kept for slow watchers before they miss some.
const EVENT_BUFFER: usize = 1024;
/// Longest command line kept in an exec's audit record.
const AUDIT_COMMAND_MAX: usize = 512;
/// Expiry teardowns running at once.
const EXPIRY_PARALLELISM: usize = 64;
/// Retry delays for daemon-internal teardowns Docker refused or could not be reached for.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the manager needs from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: HostPolicy,
    pub expiry_warning: Duration,
    pub reconcile_interval: Duration,
    pub orphan_grace: Duration,
    pub exec_timeout: Duration,
    /// Where profiles are reloaded from, and what they are checked against.
    pub profiles_dir: std::path::PathBuf,
    pub host_rules: crate::policy::HostRules,
    pub quotas: crate::policy::admission::TeamQuotas,
    /// How refusals are bounded in the audit log.
    pub refusals: crate::audit::refusals::Limits,
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

/// One item of an exec's output stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutput {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i64),
}

pub struct Manager {
    runtime: Arc<dyn Runtime>,
    store: Arc<dyn Store>,
    profiles: RwLock<Arc<ProfileSet>>,
    settings: Settings,
    instance: String,
    scheduler: Scheduler,
    events: broadcast::Sender<SandboxEvent>,
    audit: broadcast::Sender<AuditRecord>,
    /// Allowlist sandboxes by address, for the egress proxy.
    egress: RwLock<HashMap<IpAddr, (String, Vec<egress::Destination>)>>,
    locks: locks::KeyedLocks,
    pools: pool::Pools,
    /// Sandboxes whose create is in flight in this process; reconcile leaves them be.
    creating: Mutex<HashSet<String>>,
    /// Live sandboxes this process has made or taken over: reconcile adopts
    /// only those it finds that are not in here yet.
    tracked: Mutex<HashSet<String>>,
    /// Sandboxes whose expiry is being carried out: a deadline that falls due
    /// again meanwhile (reconcile puts deadlines back) starts no second one.
    expiring: Mutex<HashSet<String>>,
    /// Refusals waiting to be summarised, so that none floods the audit log.
    refusals: Mutex<crate::audit::refusals::Refusals>,
    /// Every task the manager starts (loops, provisioning, teardowns, exec
    /// and transfer streams), so that shutdown can wait for them.
    tasks: TaskTracker,
    /// Cancelled when the daemon stops: loops end, streams finish, retries give up.
    cancel: CancellationToken,
    due_rx: Mutex<Option<mpsc::UnboundedReceiver<Due>>>,
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
        let refusals = crate::audit::refusals::Refusals::new(settings.refusals);
        Ok(Arc::new(Manager {
            runtime,
            store,
            profiles: RwLock::new(Arc::new(profiles)),
            settings,
            instance,
            scheduler: Scheduler::spawn(due_tx),
            events: broadcast::channel(EVENT_BUFFER).0,
            audit: broadcast::channel(EVENT_BUFFER).0,
            egress: RwLock::new(HashMap::new()),
            locks: locks::KeyedLocks::default(),
            pools: pool::Pools::default(),
            creating: Mutex::new(HashSet::new()),
            tracked: Mutex::new(HashSet::new()),
            expiring: Mutex::new(HashSet::new()),
            refusals: Mutex::new(refusals),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            due_rx: Mutex::new(Some(due_rx)),
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
        Ok(())
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn profiles(&self) -> Arc<ProfileSet> {
        self.profiles.read().unwrap_or_else(|p| p.into_inner()).clone()
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
        let loaded: Vec<String> = self.profiles().names().map(String::from).collect();
        let reason = if applied {
            format!("loaded {}", loaded.join(", "))
        } else {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            format!("kept the last good set: {}", list.join("; "))
        };
        let entry = if applied {
            self.entry(caller, action::RELOAD_PROFILES, "", "", Ok(reason))
        } else {
            self.entry(caller, action::RELOAD_PROFILES, "", "", Err(&Error::FailedPrecondition(reason)))
        };
        self.record(entry).await;
        tracing::info!(applied, profiles = loaded.len(), errors = errors.len(), "profiles reloaded");
        Reload { applied, loaded, errors }
    }

    /// The daemon is stopping: loops end, streaming calls (watch, exec)
    /// finish, background retries give up; work in flight (a provisioning, a
    /// teardown) runs to its end. Sandboxes are left running.
    pub fn begin_shutdown(&self) {
        self.cancel.cancel();
    }

    /// Resolves once [`Manager::begin_shutdown`] has been called.
    pub fn shutdown_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.cancel.clone().cancelled_owned()
    }

    /// Stops (as [`Manager::begin_shutdown`]) and waits up to `grace` for
    /// every task the manager started to end; whether they all did.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.begin_shutdown();
        self.tasks.close();
        let drained = tokio::time::timeout(grace, self.tasks.wait()).await.is_ok();
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
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(SandboxEvent {
            kind,
            time: SystemTime::now(),
            sandbox: sandbox.clone(),
            message: message.into(),
        });
    }

    /// An audit entry for an action on a sandbox or experiment. `caller`
    /// `None` means the daemon acted on its own.
    fn entry(
        &self,
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

    fn published(&self, rec: Option<AuditRecord>) {
        if let Some(r) = rec {
            let _ = self.audit.send(r);
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
        match self.store.update_sandbox(sb, entry).await? {
            Versioned::Written(rec) => {
                sb.version += 1;
                self.published(rec.map(|r| *r));
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
        match self.store.append_audit(entry).await {
            Ok(r) => {
                let _ = self.audit.send(r);
            }
            Err(e) => tracing::error!(error = %e, "could not append to the audit log"),
        }
    }

    /// Records a refusal (a call or connection that changed nothing), unless
    /// it repeats one already recorded in this window or its source has had
    /// its share of records: those are counted and summarised when the
    /// window closes ([`crate::audit::refusals`]).
    pub async fn record_refusal(&self, entry: AuditEntry) {
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

    async fn refusal_loop(self: Arc<Self>) {
        let window = self.settings.refusals.window;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + window, window);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush_refusals().await;
        }
    }

    /// The experiment of a sandbox, for audit records (empty when unknown).
    async fn experiment_of(&self, id: &str) -> String {
        self.store.get(id).await.ok().flatten().map(|s| s.experiment).unwrap_or_default()
    }

    /// Records a refused or failed request that changed nothing.
    async fn record_error(&self, caller: &Caller, action: &str, experiment: &str, sandbox: &str, e: &Error) {
        self.record_refusal(self.entry(Some(caller), action, experiment, sandbox, Err(e))).await;
    }

    fn schedule(&self, sb: &Sandbox) {
        let warn_at = sb.expires_at.checked_sub(self.settings.expiry_warning);
        self.scheduler.schedule(&sb.id, sb.expires_at, warn_at);
    }

    /// Lets the egress proxy know an allowlist sandbox by its address.
    fn egress_learn(&self, sb: &Sandbox) {
        if let (NetworkMode::Allowlist, Some(n)) = (sb.profile.network.mode, &sb.network) {
            let mut idx = self.egress.write().unwrap_or_else(|p| p.into_inner());
            let allow =
                sb.profile.network.allow.iter().map(|d| egress::Destination::new(d.host.clone(), d.port)).collect();
            idx.insert(IpAddr::V4(n.address), (sb.id.clone(), allow));
        }
    }

    fn egress_forget(&self, sb: &Sandbox) {
        if let Some(n) = &sb.network {
            let mut idx = self.egress.write().unwrap_or_else(|p| p.into_inner());
            if idx.get(&IpAddr::V4(n.address)).is_some_and(|(id, _)| *id == sb.id) {
                idx.remove(&IpAddr::V4(n.address));
            }
        }
    }
}

/// The egress proxy asks the manager who a source is and where it may go,
/// and every decision it makes goes into the audit log.
#[async_trait::async_trait]
impl egress::Policy for Manager {
    fn lookup(&self, source: IpAddr) -> Option<(String, Vec<egress::Destination>)> {
        self.egress.read().unwrap_or_else(|p| p.into_inner()).get(&source).cloned()
    }

    async fn decided(&self, d: &egress::Decision) {
        let sandbox = d.sandbox.clone().unwrap_or_default();
        let experiment = self.experiment_of(&sandbox).await;
        let what = format!("{} {}:{}", d.method, d.host, d.port);
        let result = match d.status {
            200 => Ok(format!("{what} via {}", d.reason)),
            400 => Err(Error::invalid("request", format!("{what}: {}", d.reason))),
            502 => Err(Error::Unavailable(format!("{what}: {}", d.reason))),
            _ => Err(Error::PermissionDenied(format!("{what}: {}", d.reason))),
        };
        let mut entry = self.entry(None, action::EGRESS, &experiment, &sandbox, result.as_ref().map(Clone::clone));
        entry.source = d.source.to_string();
        if result.is_ok() {
            self.record(entry).await;
        } else {
            // A sandbox retrying a refused destination is one record per window, with a count.
            self.record_refusal(entry).await;
        }
    }
}

impl Manager {
    /// A visible record, or not-found (other teams' sandboxes are not acknowledged).
    async fn visible(&self, caller: &Caller, id: &str) -> Result<Sandbox> {
        match self.store.get(id).await? {
            Some(sb) if caller.may_see(&sb.team) => {
                in_span(&sb.id, &sb.experiment);
                Ok(sb)
            }
            _ => Err(Error::not_found("sandbox", id)),
        }
    }

    // ---- requests ------------------------------------------------------

    /// Admits and provisions a sandbox; returns it running.
    pub async fn create(self: &Arc<Self>, caller: &Caller, req: CreateSandbox) -> Result<Sandbox> {
        if self.cancel.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        // One admission of a team at a time, until its record is in the
        // store: concurrent creates cannot overrun the team's quota.
        let team_guard = self.locks.lock(&format!("team:{}", caller.team)).await;
        let admitted = async {
            let experiment = self.store.get_experiment(&req.experiment).await?;
            let profiles = self.profiles();
            let plan = admit(
                &req,
                &caller.name,
                &caller.team,
                experiment.as_ref(),
                &profiles,
                &self.settings.host,
                SystemTime::now(),
            )?;
            check_quota(&caller.team, self.store.count_live(&caller.team).await?, &self.settings.quotas)?;
            Ok(plan)
        }
        .await;
        let plan = match admitted {
            Ok(plan) => plan,
            Err(e) => {
                self.record_error(caller, action::CREATE_SANDBOX, &req.experiment, "", &e).await;
                return Err(e);
            }
        };
        match self.claim(caller, &plan).await {
            Ok(Some(sb)) => {
                in_span(&sb.id, &sb.experiment);
                return Ok(sb);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "warm pool claim failed; creating cold"),
        }
        let mut sb = Sandbox::provisioning(new_id(), self.runtime.node().to_string(), plan);
        in_span(&sb.id, &sb.experiment);
        self.creating.lock().unwrap_or_else(|p| p.into_inner()).insert(sb.id.clone());
        if let Err(e) = self.store.insert_sandbox(&sb, None).await.map(|_| sb.version = 1) {
            self.creating.lock().unwrap_or_else(|p| p.into_inner()).remove(&sb.id);
            self.record_error(caller, action::CREATE_SANDBOX, &sb.experiment, &sb.id, &e).await;
            return Err(e);
        }
        drop(team_guard);

        // Provision in a task of its own. The caller acknowledges receipt; if
        // it hung up first, the task tears the new sandbox down again.
        let (result_tx, result_rx) = oneshot::channel();
        let (ack_tx, ack_rx) = oneshot::channel::<()>();
        let this = Arc::clone(self);
        let caller = caller.clone();
        let task = async move {
            let id = sb.id.clone();
            let result = this.provision(&caller, sb).await;
            let ok = result.is_ok();
            let delivered = result_tx.send(result).is_ok() && ack_rx.await.is_ok();
            if ok && !delivered {
                tracing::info!(sandbox = %id, "client went away during create; tearing down");
                let reason = "create abandoned by the client";
                // Reconcile would adopt it as running: this task must finish the job.
                with_backoff("teardown of an abandoned create", &id, || {
                    this.teardown(&id, SandboxState::Failed, reason, None, action::ABANDON, |_| true)
                })
                .await;
            }
            this.creating.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        };
        // In the call's span, so its log lines carry the RPC's ids. Not
        // cancelled at shutdown: a create under way finishes, or is undone.
        self.tasks.spawn(tracing::Instrument::in_current_span(task));
        let result = result_rx.await.map_err(|_| Error::Internal("provisioning task ended without a result".into()))?;
        let _ = ack_tx.send(());
        result
    }

    /// Removes what a failed create left in the engine: at once, and if the
    /// engine refuses, again in the background with backoff until it accepts.
    /// The failure is recorded meanwhile; nothing else would remove it before
    /// the next periodic reconcile.
    async fn undo_create(&self, sb: &Sandbox) {
        let Err(e) = self.runtime.destroy(sb).await else { return };
        tracing::warn!(sandbox = %sb.id, error = %e, "could not remove a failed create; retrying");
        let (runtime, sb) = (Arc::clone(&self.runtime), sb.clone());
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                _ = async {
                    tokio::time::sleep(RETRY_MIN).await;
                    with_backoff("removal of a failed create", &sb.id, || runtime.destroy(&sb)).await
                } => {}
            }
        });
    }

    async fn provision(&self, caller: &Caller, mut sb: Sandbox) -> Result<Sandbox> {
        let _guard = self.locks.lock(&sb.id).await;
        let started = std::time::Instant::now();
        let result = async {
            self.runtime.ensure_image(&sb.image).await?;
            self.runtime.provision(&sb).await
        }
        .await;
        let provisioned = match result {
            Ok(p) => p,
            Err(e) => {
                // The engine may have made something even though the call
                // failed: remove it before recording the failure.
                self.undo_create(&sb).await;
                sb.end(SandboxState::Failed, e.to_string(), SystemTime::now());
                let entry = self.entry(Some(caller), action::CREATE_SANDBOX, &sb.experiment, &sb.id, Err(&e));
                if let Err(se) = self.commit(&mut sb, |_| entry).await {
                    tracing::error!(sandbox = %sb.id, error = %se, "could not record failed create");
                }
                self.emit(EventKind::Failed, &sb, e.to_string());
                return Err(e);
            }
        };
        let container_id = provisioned.container_id;
        sb.container_id = Some(container_id.clone());
        sb.network = provisioned.network;
        sb.state = SandboxState::Running;
        let reason = format!(
            "{} {} {} until {}",
            sb.profile.name,
            sb.classification,
            sb.image,
            crate::time::rfc3339(sb.expires_at)
        );
        let entry = self.entry(Some(caller), action::CREATE_SANDBOX, &sb.experiment, &sb.id, Ok(reason));
        if let Err(e) = self.commit(&mut sb, |_| entry).await {
            // Not on record, not audited: refuse the create and leave nothing behind.
            self.undo_create(&sb).await;
            sb.end(SandboxState::Failed, e.to_string(), SystemTime::now());
            let _ = self.update(&mut sb, None).await;
            return Err(e);
        }
        self.track(&sb.id);
        self.schedule(&sb);
        self.egress_learn(&sb);
        crate::metrics::global().provisioned(crate::metrics::Source::Cold, started.elapsed());
        tracing::info!(sandbox = %sb.id, experiment = %sb.experiment, elapsed_ms = started.elapsed().as_millis() as u64, "sandbox running");
        self.emit(EventKind::Created, &sb, "running");
        Ok(sb)
    }

    pub async fn get(&self, caller: &Caller, id: &str) -> Result<Sandbox> {
        self.visible(caller, id).await
    }

    pub async fn list(&self, caller: &Caller, experiment: Option<String>, include_ended: bool) -> Result<Vec<Sandbox>> {
        let team = (!caller.sees_all_teams()).then(|| caller.team.clone());
        if team.is_some() && !caller.has(crate::auth::Role::Requester) {
            return Ok(Vec::new());
        }
        self.store.list(&ListFilter { team, experiment, include_ended }).await
    }

    /// Sets the sandbox to expire `ttl` from now, within its profile's limits.
    pub async fn extend(&self, caller: &Caller, id: &str, ttl: Duration) -> Result<Sandbox> {
        let result = self.extend_inner(caller, id, ttl).await;
        if let Err(e) = &result {
            let experiment = self.experiment_of(id).await;
            self.record_error(caller, action::EXTEND_SANDBOX, &experiment, id, e).await;
        }
        result
    }

    async fn extend_inner(&self, caller: &Caller, id: &str, ttl: Duration) -> Result<Sandbox> {
        let sb = self.visible(caller, id).await?;
        if !caller.may_use(&sb.team) {
            return Err(Error::PermissionDenied("extending sandboxes needs the requester role in their team".into()));
        }
        let _guard = self.locks.lock(id).await;
        let mut sb = self.visible(caller, id).await?;
        if sb.state != SandboxState::Running {
            return Err(Error::FailedPrecondition(format!("sandbox '{id}' is {}, not running", sb.state.as_str())));
        }
        self.experiment_in_force(&sb).await?;
        crate::policy::admission::check_min_ttl(ttl, self.settings.host.min_ttl)?;
        sb.expires_at = extend_deadline(&sb.profile, sb.max_expires_at, ttl, SystemTime::now())?;
        let reason = format!("ttl {} until {}", crate::time::format_duration(ttl), crate::time::rfc3339(sb.expires_at));
        self.commit(&mut sb, |sb| self.entry(Some(caller), action::EXTEND_SANDBOX, &sb.experiment, id, Ok(reason)))
            .await?;
        self.schedule(&sb);
        self.emit(EventKind::Extended, &sb, format!("now expires at {}", crate::time::rfc3339(sb.expires_at)));
        Ok(sb)
    }

    /// Tears a sandbox down. Deleting an ended sandbox returns its record.
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<Sandbox> {
        let result = async {
            let sb = self.visible(caller, id).await?;
            if !caller.may_delete(&sb.team) {
                return Err(Error::PermissionDenied(
                    "deleting sandboxes needs the requester (own team) or operator role".into(),
                ));
            }
            let reason = format!("deleted by {}", caller.name);
            self.teardown(id, SandboxState::Deleted, reason, Some(caller), action::DELETE_SANDBOX, |_| true).await
        }
        .await;
        if let Err(e) = &result {
            let experiment = self.experiment_of(id).await;
            self.record_error(caller, action::DELETE_SANDBOX, &experiment, id, e).await;
        }
        result
    }

    /// Makes an image a profile allows present, pulling it with progress.
    pub async fn pull_image(
        &self,
        caller: &Caller,
        profile: &str,
        image: Option<&str>,
    ) -> Result<BoxStream<Result<PullProgress>>> {
        let result = self.pull_image_inner(profile, image);
        match &result {
            Ok((image, _)) => {
                self.record(self.entry(Some(caller), action::PULL_IMAGE, "", "", Ok(format!("image {image}")))).await
            }
            Err(e) => self.record_error(caller, action::PULL_IMAGE, "", "", e).await,
        }
        result.map(|(_, stream)| stream)
    }

    fn pull_image_inner(
        &self,
        profile: &str,
        image: Option<&str>,
    ) -> Result<(String, BoxStream<Result<PullProgress>>)> {
        crate::policy::admission::validate_name("profile", profile)?;
        if let Some(i) = image {
            crate::policy::admission::validate_image(i)?;
        }
        let profiles = self.profiles();
        let p =
            profiles.get(profile).ok_or_else(|| Error::invalid("profile", format!("unknown profile '{profile}'")))?;
        let image = match image {
            Some(i) if p.images.iter().any(|a| a == i) => i.to_string(),
            Some(i) => {
                return Err(Error::denied(
                    crate::policy::Rule::ImageAllowlist,
                    format!("image '{i}' is not allowed by profile '{profile}'"),
                ))
            }
            None => p.default_image().to_string(),
        };
        let stream = self.runtime.pull_image(&image);
        Ok((image, stream))
    }

    /// Runs a command in a running sandbox: its output, then its exit code.
    pub async fn exec(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        spec: ExecSpec,
        timeout: Option<Duration>,
    ) -> Result<BoxStream<Result<ExecOutput>>> {
        let result = self.exec_inner(caller, id, spec, timeout).await;
        if let Err(e) = &result {
            let experiment = self.experiment_of(id).await;
            self.record_error(caller, action::EXEC, &experiment, id, e).await;
        }
        result
    }

    async fn exec_inner(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        spec: ExecSpec,
        timeout: Option<Duration>,
    ) -> Result<BoxStream<Result<ExecOutput>>> {
        let sb = self.visible(caller, id).await?;
        if !caller.may_use(&sb.team) {
            return Err(Error::PermissionDenied("exec needs the requester role in the sandbox's team".into()));
        }
        let (Some(_), SandboxState::Running) = (&sb.container_id, sb.state) else {
            return Err(Error::FailedPrecondition(format!("sandbox '{id}' is {}, not running", sb.state.as_str())));
        };
        self.experiment_in_force(&sb).await?;
        // On record before the command runs: what was run, by whom.
        let mut command = spec.command.join(" ");
        if command.len() > AUDIT_COMMAND_MAX {
            let cut = (0..=AUDIT_COMMAND_MAX).rev().find(|i| command.is_char_boundary(*i)).unwrap_or(0);
            command.truncate(cut);
            command.push('…');
        }
        let entry = self.entry(Some(caller), action::EXEC, &sb.experiment, id, Ok(format!("command: {command}")));
        self.published(Some(self.store.append_audit(entry).await?));
        let session = self.runtime.exec(&sb, spec).await?;
        let started = tokio::time::Instant::now();
        let deadline = started + timeout.unwrap_or(self.settings.exec_timeout);
        let cap = sb.profile.file_transfer.max_exec_output;
        let (tx, rx) = mpsc::channel(16);
        let this = Arc::clone(self);
        let (caller, sb) = (caller.clone(), sb.clone());
        let stop = self.shutdown_signal();
        let mut output = session.output;
        // Stream output until it ends, the deadline passes, the output cap is
        // reached, the daemon stops or the caller leaves; then the exit code.
        // Whichever it was goes on record with what the command sent out.
        self.tasks.spawn(async move {
            tokio::pin!(stop);
            let (mut stdout, mut stderr) = (transfer::Tally::default(), transfer::Tally::default());
            let ended: Result<i64> = async {
                loop {
                    let item = tokio::select! {
                        item = output.next() => item,
                        () = tokio::time::sleep_until(deadline) => {
                            return Err(Error::DeadlineExceeded("exec ran past its timeout".into()));
                        }
                        () = &mut stop => return Err(Error::ShuttingDown),
                        () = tx.closed() => return Err(Error::Cancelled("the client went away".into())),
                    };
                    let (mut bytes, is_stdout) = match item {
                        None => break,
                        Some(Ok(ExecChunk::Stdout(b))) => (b, true),
                        Some(Ok(ExecChunk::Stderr(b))) => (b, false),
                        Some(Err(e)) => return Err(e),
                    };
                    // Exec output leaves the sandbox like a copy-out does: within the profile's cap.
                    let over = cap.and_then(|cap| {
                        let left = cap.saturating_sub(stdout.bytes + stderr.bytes);
                        (bytes.len() as u64 > left).then_some((cap, left))
                    });
                    if let Some((_, left)) = over {
                        bytes.truncate(left as usize);
                    }
                    let tally = if is_stdout { &mut stdout } else { &mut stderr };
                    tally.add(&bytes);
                    let out = if is_stdout { ExecOutput::Stdout(bytes) } else { ExecOutput::Stderr(bytes) };
                    if tx.send(Ok(out)).await.is_err() {
                        return Err(Error::Cancelled("the client went away".into()));
                    }
                    if let Some((cap, _)) = over {
                        return Err(Error::ResourceExhausted(format!(
                            "exec output reached profile '{}' max_exec_output of {}; the rest was withheld",
                            sb.profile.name,
                            crate::policy::size::format_size(cap)
                        )));
                    }
                }
                exit_code(this.runtime.as_ref(), &session.exec_id).await
            }
            .await;
            let took = crate::time::format_duration_ms(started.elapsed());
            let sent = format!("stdout {}; stderr {}", stdout.describe(), stderr.describe());
            let result = match &ended {
                Ok(code) => Ok(format!("exit {code} after {took}; {sent}")),
                Err(e) => Err(e),
            };
            let mut entry = this.entry(Some(&caller), action::EXEC_END, &sb.experiment, &sb.id, result);
            if ended.is_err() {
                entry.reason = format!("ended after {took}, {sent}: {}", entry.reason);
            }
            this.record(entry).await;
            let _ = tx.send(ended.map(ExecOutput::Exit)).await;
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }

    /// Lifecycle events the caller may see, optionally of one sandbox or experiment.
    pub fn watch(&self, caller: &Caller, id: Option<String>, experiment: Option<String>) -> BoxStream<SandboxEvent> {
        let caller = caller.clone();
        let shutdown = self.shutdown_signal();
        tokio_stream::wrappers::BroadcastStream::new(self.events.subscribe())
            .filter_map(move |e| {
                let keep = match e {
                    Ok(e) => Some(e).filter(|e| {
                        caller.may_see(&e.sandbox.team)
                            && id.as_ref().is_none_or(|i| *i == e.sandbox.id)
                            && experiment.as_ref().is_none_or(|x| *x == e.sandbox.experiment)
                    }),
                    Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "a watcher fell behind and missed events");
                        None
                    }
                };
                std::future::ready(keep)
            })
            .take_until(shutdown)
            .boxed()
    }

    // ---- the audit log ------------------------------------------------

    pub async fn query_audit(&self, q: &AuditQuery) -> Result<crate::store::AuditPage> {
        self.store.query_audit(q).await
    }

    pub async fn verify_audit(&self) -> Result<VerifyReport> {
        self.store.verify_audit().await
    }

    /// As [`Manager::verify_audit`], and the chain must hold a checkpoint's `(size, head)`.
    pub async fn verify_audit_against(&self, checkpoint: (u64, crate::audit::Hash)) -> Result<VerifyReport> {
        self.store.verify_audit_against(checkpoint).await
    }

    /// Audit records as they are written.
    pub fn watch_audit(&self) -> BoxStream<AuditRecord> {
        let shutdown = self.shutdown_signal();
        tokio_stream::wrappers::BroadcastStream::new(self.audit.subscribe())
            .filter_map(|r| std::future::ready(r.ok()))
            .take_until(shutdown)
            .boxed()
    }

    // ---- daemon-driven transitions ------------------------------------

    /// Ends a sandbox: kill and remove its container, record `state`. Holds
    /// the sandbox's lock; does nothing to an ended sandbox or when `still`
    /// says the reason no longer holds (e.g. it was extended meanwhile).
    async fn teardown(
        &self,
        id: &str,
        state: SandboxState,
        reason: impl Into<String>,
        caller: Option<&Caller>,
        action: &str,
        still: impl FnOnce(&Sandbox) -> bool,
    ) -> Result<Sandbox> {
        self.end(id, state, reason, caller, action, still).await.map(|(sb, _)| sb)
    }

    /// [`Manager::teardown`], and whether this call ended the sandbox.
    async fn end(
        &self,
        id: &str,
        state: SandboxState,
        reason: impl Into<String>,
        caller: Option<&Caller>,
        action: &str,
        still: impl FnOnce(&Sandbox) -> bool,
    ) -> Result<(Sandbox, bool)> {
        let _guard = self.locks.lock(id).await;
        let mut sb = self.store.get(id).await?.ok_or_else(|| Error::not_found("sandbox", id))?;
        if sb.state.is_ended() || !still(&sb) {
            return Ok((sb, false));
        }
        self.runtime.destroy(&sb).await?;
        self.egress_forget(&sb);
        sb.end(state, reason, SystemTime::now());
        self.commit(&mut sb, |sb| self.entry(caller, action, &sb.experiment, id, Ok(sb.state_reason.clone()))).await?;
        self.scheduler.cancel(id);
        self.untrack(id);
        let kind = match state {
            SandboxState::Expired => EventKind::Expired,
            SandboxState::Deleted => EventKind::Deleted,
            SandboxState::Lost => EventKind::Lost,
            _ => EventKind::Failed,
        };
        tracing::info!(sandbox = %id, state = state.as_str(), reason = %sb.state_reason, "sandbox ended");
        self.emit(kind, &sb, sb.state_reason.clone());
        Ok((sb, true))
    }

    /// Marks a live sandbox as made or taken over by this process; whether it was new to it.
    fn track(&self, id: &str) -> bool {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string())
    }

    fn untrack(&self, id: &str) {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Handles due deadlines: warnings at once, expiries in bounded parallel,
    /// each retried with backoff while the engine is unavailable.
    async fn dispatch_due(self: Arc<Self>, mut due: mpsc::UnboundedReceiver<Due>) {
        let permits = Arc::new(Semaphore::new(EXPIRY_PARALLELISM));
        while let Some(d) = due.recv().await {
            match d {
                Due::Warn(id) => {
                    if let Ok(Some(sb)) = self.store.get(&id).await {
                        if !sb.state.is_ended() {
                            let left = sb.expires_at.duration_since(SystemTime::now()).unwrap_or_default();
                            self.emit(
                                EventKind::ExpiringSoon,
                                &sb,
                                format!("expires in {}", crate::time::format_duration(left)),
                            );
                        }
                    }
                }
                Due::Expire(id) => {
                    if !self.expiring.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone()) {
                        // Already being expired (reconcile put the deadline back meanwhile).
                        continue;
                    }
                    let this = Arc::clone(&self);
                    let permits = Arc::clone(&permits);
                    self.tasks.spawn(async move {
                        // Stop it now; removing it (slower, and Docker does
                        // removals one at a time) can wait for a permit.
                        let killed = this.stop_expired(&id).await;
                        let _permit = permits.acquire_owned().await;
                        this.expire(&id, killed).await;
                        this.expiring.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    });
                }
            }
        }
    }

    /// Kills an expired sandbox's container at once, so that many sandboxes
    /// falling due together all stop on time. Best effort: the teardown that
    /// follows kills and removes in any case. When it stopped the sandbox.
    async fn stop_expired(&self, id: &str) -> Option<SystemTime> {
        let _guard = self.locks.lock(id).await;
        let Ok(Some(sb)) = self.store.get(id).await else { return None };
        if sb.state.is_ended() || sb.expires_at > SystemTime::now() {
            return None;
        }
        sb.container_id.as_ref()?;
        match self.runtime.kill(&sb).await {
            Ok(()) => Some(SystemTime::now()),
            Err(e) => {
                tracing::debug!(sandbox = %id, error = %e, "kill at expiry failed; the teardown will retry");
                None
            }
        }
    }

    /// Tears an expired sandbox down, retrying while Docker refuses. `killed`:
    /// when the kill at expiry stopped it. Its lateness goes into the metrics
    /// once, by the call that recorded it expired.
    async fn expire(&self, id: &str, killed: Option<SystemTime>) {
        let now = SystemTime::now();
        let end =
            || self.end(id, SandboxState::Expired, "ttl reached", None, action::EXPIRE, |sb| sb.expires_at <= now);
        if let Some((sb, true)) = with_backoff("expiry teardown", id, end).await {
            let stopped = killed.or(sb.ended_at).unwrap_or(now);
            crate::metrics::global().expired(stopped.duration_since(sb.expires_at).unwrap_or_default());
        }
    }
}

impl Manager {
    /// Every metric in the Prometheus text format: the gauges read now from
    /// the store and the pools, then the process's counters and histograms.
    pub async fn render_metrics(&self) -> Result<String> {
        use crate::metrics::{Reading, Readings};
        let mut now = Readings::default();
        // Ended totals before the live list: a sandbox that ends between the
        // two reads is then briefly in neither, never in both.
        let stats = self.store.stats().await?;
        let mut live: BTreeMap<(&'static str, String, String), u64> = BTreeMap::new();
        let records = self.live_records().await?;
        for sb in &records {
            *live.entry((sb.state.as_str(), sb.profile.name.clone(), sb.classification.to_string())).or_default() += 1;
        }
        let sandboxes =
            now.gauge("sandpit_sandboxes", "Sandboxes not yet ended, by state, profile and classification.");
        for ((state, profile, classification), n) in &live {
            sandboxes.sample(&[("state", state), ("profile", profile), ("classification", classification)], *n);
        }
        let ended = now.gauge("sandpit_sandboxes_ended", "Ended sandboxes on record, by final state.");
        for (state, n) in &stats.ended {
            ended.sample(&[("state", state)], *n);
        }
        now.gauge("sandpit_audit_records", "Records in the hash-chained audit log.").sample(&[], stats.audit_records);
        let pools = self.pool_status().await;
        type Kind = for<'a> fn(&'a mut Readings, &'static str, &'static str) -> &'a mut Reading;
        type Read = fn(&PoolStatus) -> u64;
        // Counters are named without the `_total` the encoder appends.
        let per_pool: [(Kind, &str, &str, Read); 4] = [
            (Readings::gauge, "sandpit_warm_pool_target", "Warm sandboxes each pool is kept at.", |p| p.target.into()),
            (Readings::gauge, "sandpit_warm_pool_ready", "Warm sandboxes ready to be claimed.", |p| p.warm.into()),
            (Readings::counter, "sandpit_warm_pool_claims", "Creates served from a warm pool.", |p| p.claims),
            (
                Readings::counter,
                "sandpit_warm_pool_misses",
                "Creates of a pooled profile that found no warm sandbox (or needed another image or datasets) and started cold.",
                |p| p.misses,
            ),
        ];
        for (kind, name, help, read) in per_pool {
            let family = kind(&mut now, name, help);
            for p in &pools {
                family.sample(&[("profile", &p.profile)], read(p));
            }
        }
        crate::metrics::global().encode(now).map_err(|e| Error::Internal(format!("encoding metrics: {e}")))
    }

    /// The sandboxes in the store that own (or may own) Docker objects.
    async fn live_records(&self) -> Result<Vec<Sandbox>> {
        self.store.list(&ListFilter::default()).await
    }

    fn is_creating(&self, id: &str) -> bool {
        self.creating.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
    }
}

/// Runs `op` until it succeeds (its result) or finds nothing to act on
/// (`None`), sleeping between tries with backoff from [`RETRY_MIN`] to
/// [`RETRY_MAX`]: for daemon-internal work that no caller will retry.
async fn with_backoff<T, F, Fut>(what: &str, target: &str, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = RETRY_MIN;
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(Error::NotFound { .. }) => return None,
            Err(e) => {
                tracing::warn!(object = %target, error = %e, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

/// An exec's exit code. Its output can end a moment before Docker marks it finished.
async fn exit_code(runtime: &dyn Runtime, exec_id: &str) -> Result<i64> {
    for _ in 0..100 {
        if let Some(code) = runtime.exec_exit_code(exec_id).await? {
            return Ok(code);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(Error::Internal("exec output ended but the command did not finish".into()))
}

/// Records the sandbox and experiment in the current RPC's span (no-op outside one).
fn in_span(sandbox: &str, experiment: &str) {
    let span = tracing::Span::current();
    span.record("sandbox", sandbox);
    if !experiment.is_empty() {
        span.record("experiment", experiment);
    }
}
