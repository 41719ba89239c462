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
mod transfer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

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
use crate::runtime::{
    labels, BoxStream, ContainerSpec, ExecChunk, ExecSpec, Mount, NetworkRequest, PullProgress, Runtime,
};
use crate::sandbox::{new_id, EventKind, Sandbox, SandboxEvent, SandboxState, DATASETS_DIR};
use crate::store::AuditQuery;
use crate::store::{ListFilter, Store};
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
    /// uid:gid of every sandbox.
    pub user: String,
    /// Extra labels on every Docker object.
    pub labels: BTreeMap<String, String>,
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

pub struct Manager<R: Runtime> {
    runtime: R,
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
    shutdown: watch::Sender<bool>,
    due_rx: Mutex<Option<mpsc::UnboundedReceiver<Due>>>,
}

/// Background tasks of a started manager; aborted when dropped.
pub struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl<R: Runtime> Manager<R> {
    pub fn new(runtime: R, store: Arc<dyn Store>, profiles: ProfileSet, settings: Settings) -> Result<Arc<Self>> {
        let instance = store.instance_id()?;
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
            shutdown: watch::channel(false).0,
            due_rx: Mutex::new(Some(due_rx)),
        }))
    }

    /// Schedules every live record's expiry from the store (no Docker needed,
    /// so a restart serves at once), then starts expiry handling, periodic
    /// reconcile and the Docker event follower.
    pub fn start(self: &Arc<Self>) -> Result<Tasks> {
        let live = self.store.list(&ListFilter::default())?;
        for sb in &live {
            if sb.state != SandboxState::Provisioning {
                self.schedule(sb);
                self.egress_learn(sb);
            }
        }
        self.load_pools(&live);
        let due_rx = self.due_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let due_rx = due_rx.ok_or_else(|| Error::Internal("manager started twice".into()))?;
        Ok(Tasks(vec![
            tokio::spawn(Arc::clone(self).dispatch_due(due_rx)),
            tokio::spawn(Arc::clone(self).reconcile_loop()),
            tokio::spawn(Arc::clone(self).follow_events()),
            tokio::spawn(Arc::clone(self).pool_loop()),
            tokio::spawn(Arc::clone(self).refusal_loop()),
            tokio::spawn(Arc::clone(self).watch_firewall()),
        ]))
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
    pub fn reload_profiles(&self, caller: Option<&Caller>) -> Reload {
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
        self.record(entry);
        tracing::info!(applied, profiles = loaded.len(), errors = errors.len(), "profiles reloaded");
        Reload { applied, loaded, errors }
    }

    /// Tells streaming calls (watch, exec) to finish: the daemon is stopping.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Resolves once [`Manager::begin_shutdown`] has been called.
    pub fn shutdown_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
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

    /// Writes a sandbox record and the audit record of its change, atomically.
    fn commit(&self, sb: &Sandbox, entry: AuditEntry) -> Result<()> {
        let rec = self.store.put(sb, Some(entry))?;
        self.published(rec);
        Ok(())
    }

    /// Appends an audit record that goes with no state change.
    pub fn record(&self, entry: AuditEntry) {
        match self.store.append_audit(entry) {
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
    pub fn record_refusal(&self, entry: AuditEntry) {
        let admitted = self.refusals.lock().unwrap_or_else(|p| p.into_inner()).admit(entry);
        match admitted {
            Some(e) => self.record(e),
            None => crate::metrics::global().refusal_summarised(),
        }
    }

    /// Writes the summaries of the refusals counted in the window now closing.
    pub fn flush_refusals(&self) {
        let summaries = self.refusals.lock().unwrap_or_else(|p| p.into_inner()).flush(SystemTime::now());
        for e in summaries {
            self.record(e);
        }
    }

    async fn refusal_loop(self: Arc<Self>) {
        let window = self.settings.refusals.window;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + window, window);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush_refusals();
        }
    }

    /// The experiment of a sandbox, for audit records (empty when unknown).
    fn experiment_of(&self, id: &str) -> String {
        self.store.get(id).ok().flatten().map(|s| s.experiment).unwrap_or_default()
    }

    /// Records a refused or failed request that changed nothing.
    fn record_error(&self, caller: &Caller, action: &str, experiment: &str, sandbox: &str, e: &Error) {
        self.record_refusal(self.entry(Some(caller), action, experiment, sandbox, Err(e)));
    }

    fn schedule(&self, sb: &Sandbox) {
        let warn_at = sb.expires_at.checked_sub(self.settings.expiry_warning);
        self.scheduler.schedule(&sb.id, sb.expires_at, warn_at);
    }

    fn container_spec(&self, sb: &Sandbox) -> ContainerSpec {
        ContainerSpec {
            name: container_name(&sb.id),
            hostname: sb.id.clone(),
            image: sb.image.clone(),
            command: sb.profile.command.clone(),
            user: self.settings.user.clone(),
            env: vec![format!("SANDPIT_SANDBOX_ID={}", sb.id), format!("SANDPIT_EXPERIMENT={}", sb.experiment)],
            labels: labels::for_sandbox(sb, &self.instance, &self.settings.labels),
            resources: sb.profile.resources.clone(),
            network: sb.network_name().map(|name| NetworkRequest {
                name,
                internal: sb.profile.network.mode != NetworkMode::Open,
                egress: sb.profile.network.mode == NetworkMode::Allowlist,
            }),
            mounts: sb
                .datasets
                .iter()
                .map(|d| Mount { source: d.source.clone(), target: format!("{DATASETS_DIR}/{}", d.name) })
                .collect(),
        }
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
impl<R: Runtime> egress::Policy for Manager<R> {
    fn lookup(&self, source: IpAddr) -> Option<(String, Vec<egress::Destination>)> {
        self.egress.read().unwrap_or_else(|p| p.into_inner()).get(&source).cloned()
    }

    fn decided(&self, d: &egress::Decision) {
        let sandbox = d.sandbox.clone().unwrap_or_default();
        let experiment = self.experiment_of(&sandbox);
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
            self.record(entry);
        } else {
            // A sandbox retrying a refused destination is one record per window, with a count.
            self.record_refusal(entry);
        }
    }
}

impl<R: Runtime> Manager<R> {
    /// A visible record, or not-found (other teams' sandboxes are not acknowledged).
    fn visible(&self, caller: &Caller, id: &str) -> Result<Sandbox> {
        match self.store.get(id)? {
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
        if *self.shutdown.borrow() {
            return Err(Error::ShuttingDown);
        }
        // One admission of a team at a time, until its record is in the
        // store: concurrent creates cannot overrun the team's quota.
        let team_guard = self.locks.lock(&format!("team:{}", caller.team)).await;
        let admitted = self.store.get_experiment(&req.experiment).and_then(|experiment| {
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
            check_quota(&caller.team, self.store.count_live(&caller.team)?, &self.settings.quotas)?;
            Ok(plan)
        });
        let plan = match admitted {
            Ok(plan) => plan,
            Err(e) => {
                self.record_error(caller, action::CREATE_SANDBOX, &req.experiment, "", &e);
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
        let sb = Sandbox::provisioning(new_id(), self.runtime.node().to_string(), plan);
        in_span(&sb.id, &sb.experiment);
        self.creating.lock().unwrap_or_else(|p| p.into_inner()).insert(sb.id.clone());
        if let Err(e) = self.store.put(&sb, None) {
            self.creating.lock().unwrap_or_else(|p| p.into_inner()).remove(&sb.id);
            self.record_error(caller, action::CREATE_SANDBOX, &sb.experiment, &sb.id, &e);
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
        // In the call's span, so its log lines carry the RPC's ids.
        tokio::spawn(tracing::Instrument::in_current_span(task));
        let result = result_rx.await.map_err(|_| Error::Internal("provisioning task ended without a result".into()))?;
        let _ = ack_tx.send(());
        result
    }

    /// Removes what a failed create left in Docker: at once, and if Docker
    /// refuses, again in the background with backoff until it accepts. The
    /// failure is recorded meanwhile; nothing else would remove the container
    /// before the next periodic reconcile.
    async fn undo_create(&self, container: &str, network: Option<&str>) {
        let Err(e) = self.runtime.remove(container, network).await else { return };
        tracing::warn!(%container, error = %e, "could not remove a failed create's container; retrying");
        let (runtime, container, network) = (self.runtime.clone(), container.to_string(), network.map(String::from));
        tokio::spawn(async move {
            tokio::time::sleep(RETRY_MIN).await;
            with_backoff("removal of a failed create", &container, || runtime.remove(&container, network.as_deref()))
                .await;
        });
    }

    async fn provision(&self, caller: &Caller, mut sb: Sandbox) -> Result<Sandbox> {
        let _guard = self.locks.lock(&sb.id).await;
        let started = std::time::Instant::now();
        let result = async {
            self.runtime.ensure_image(&sb.image).await?;
            self.runtime.create(&self.container_spec(&sb)).await
        }
        .await;
        let provisioned = match result {
            Ok(p) => p,
            Err(e) => {
                // Docker may have created the container even though the call
                // failed: remove by name before recording the failure.
                self.undo_create(&container_name(&sb.id), sb.network_name().as_deref()).await;
                sb.end(SandboxState::Failed, e.to_string(), SystemTime::now());
                let entry = self.entry(Some(caller), action::CREATE_SANDBOX, &sb.experiment, &sb.id, Err(&e));
                if let Err(se) = self.commit(&sb, entry) {
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
        if let Err(e) = self.commit(&sb, entry) {
            // Not on record, not audited: refuse the create and leave nothing behind.
            self.undo_create(&container_id, sb.network_name().as_deref()).await;
            sb.end(SandboxState::Failed, e.to_string(), SystemTime::now());
            let _ = self.store.put(&sb, None);
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

    pub fn get(&self, caller: &Caller, id: &str) -> Result<Sandbox> {
        self.visible(caller, id)
    }

    pub fn list(&self, caller: &Caller, experiment: Option<String>, include_ended: bool) -> Result<Vec<Sandbox>> {
        let team = (!caller.sees_all_teams()).then(|| caller.team.clone());
        if team.is_some() && !caller.has(crate::auth::Role::Requester) {
            return Ok(Vec::new());
        }
        self.store.list(&ListFilter { team, experiment, include_ended })
    }

    /// Sets the sandbox to expire `ttl` from now, within its profile's limits.
    pub async fn extend(&self, caller: &Caller, id: &str, ttl: Duration) -> Result<Sandbox> {
        let result = self.extend_inner(caller, id, ttl).await;
        if let Err(e) = &result {
            let experiment = self.experiment_of(id);
            self.record_error(caller, action::EXTEND_SANDBOX, &experiment, id, e);
        }
        result
    }

    async fn extend_inner(&self, caller: &Caller, id: &str, ttl: Duration) -> Result<Sandbox> {
        let sb = self.visible(caller, id)?;
        if !caller.may_use(&sb.team) {
            return Err(Error::PermissionDenied("extending sandboxes needs the requester role in their team".into()));
        }
        let _guard = self.locks.lock(id).await;
        let mut sb = self.visible(caller, id)?;
        if sb.state != SandboxState::Running {
            return Err(Error::FailedPrecondition(format!("sandbox '{id}' is {}, not running", sb.state.as_str())));
        }
        self.experiment_in_force(&sb)?;
        crate::policy::admission::check_min_ttl(ttl, self.settings.host.min_ttl)?;
        sb.expires_at = extend_deadline(&sb.profile, sb.max_expires_at, ttl, SystemTime::now())?;
        let reason = format!("ttl {} until {}", crate::time::format_duration(ttl), crate::time::rfc3339(sb.expires_at));
        self.commit(&sb, self.entry(Some(caller), action::EXTEND_SANDBOX, &sb.experiment, id, Ok(reason)))?;
        self.schedule(&sb);
        self.emit(EventKind::Extended, &sb, format!("now expires at {}", crate::time::rfc3339(sb.expires_at)));
        Ok(sb)
    }

    /// Tears a sandbox down. Deleting an ended sandbox returns its record.
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<Sandbox> {
        let result = async {
            let sb = self.visible(caller, id)?;
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
            let experiment = self.experiment_of(id);
            self.record_error(caller, action::DELETE_SANDBOX, &experiment, id, e);
        }
        result
    }

    /// Makes an image a profile allows present, pulling it with progress.
    pub fn pull_image(
        &self,
        caller: &Caller,
        profile: &str,
        image: Option<&str>,
    ) -> Result<BoxStream<Result<PullProgress>>> {
        let result = self.pull_image_inner(profile, image);
        match &result {
            Ok((image, _)) => {
                self.record(self.entry(Some(caller), action::PULL_IMAGE, "", "", Ok(format!("image {image}"))))
            }
            Err(e) => self.record_error(caller, action::PULL_IMAGE, "", "", e),
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
            let experiment = self.experiment_of(id);
            self.record_error(caller, action::EXEC, &experiment, id, e);
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
        let sb = self.visible(caller, id)?;
        if !caller.may_use(&sb.team) {
            return Err(Error::PermissionDenied("exec needs the requester role in the sandbox's team".into()));
        }
        let (Some(cid), SandboxState::Running) = (sb.container_id.clone(), sb.state) else {
            return Err(Error::FailedPrecondition(format!("sandbox '{id}' is {}, not running", sb.state.as_str())));
        };
        self.experiment_in_force(&sb)?;
        // On record before the command runs: what was run, by whom.
        let mut command = spec.command.join(" ");
        if command.len() > AUDIT_COMMAND_MAX {
            let cut = (0..=AUDIT_COMMAND_MAX).rev().find(|i| command.is_char_boundary(*i)).unwrap_or(0);
            command.truncate(cut);
            command.push('…');
        }
        let entry = self.entry(Some(caller), action::EXEC, &sb.experiment, id, Ok(format!("command: {command}")));
        self.published(Some(self.store.append_audit(entry)?));
        let session = self.runtime.exec(&cid, spec).await?;
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
        tokio::spawn(async move {
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
                exit_code(&this.runtime, &session.exec_id).await
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
            this.record(entry);
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

    pub fn query_audit(&self, q: &AuditQuery) -> Result<crate::store::AuditPage> {
        self.store.query_audit(q)
    }

    pub fn verify_audit(&self) -> Result<VerifyReport> {
        self.store.verify_audit()
    }

    /// As [`Manager::verify_audit`], and the chain must hold a checkpoint's `(size, head)`.
    pub fn verify_audit_against(&self, checkpoint: (u64, crate::audit::Hash)) -> Result<VerifyReport> {
        self.store.verify_audit_against(checkpoint)
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
        let mut sb = self.store.get(id)?.ok_or_else(|| Error::not_found("sandbox", id))?;
        if sb.state.is_ended() || !still(&sb) {
            return Ok((sb, false));
        }
        let target = sb.container_id.clone().unwrap_or_else(|| container_name(id));
        self.runtime.remove(&target, sb.network_name().as_deref()).await?;
        self.egress_forget(&sb);
        sb.end(state, reason, SystemTime::now());
        self.commit(&sb, self.entry(caller, action, &sb.experiment, id, Ok(sb.state_reason.clone())))?;
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
                    if let Ok(Some(sb)) = self.store.get(&id) {
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
                    tokio::spawn(async move {
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
        let Ok(Some(sb)) = self.store.get(id) else { return None };
        if sb.state.is_ended() || sb.expires_at > SystemTime::now() {
            return None;
        }
        let cid = sb.container_id.as_ref()?;
        match self.runtime.kill(cid).await {
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

impl<R: Runtime> Manager<R> {
    /// Every metric in the Prometheus text format: the gauges read now from
    /// the store and the pools, then the process's counters and histograms.
    pub fn render_metrics(&self) -> Result<String> {
        use crate::metrics::{Reading, Readings};
        let mut now = Readings::default();
        let mut live: BTreeMap<(&'static str, String, String), u64> = BTreeMap::new();
        let records = self.live_records()?;
        for sb in &records {
            *live.entry((sb.state.as_str(), sb.profile.name.clone(), sb.classification.to_string())).or_default() += 1;
        }
        let sandboxes =
            now.gauge("sandpit_sandboxes", "Sandboxes not yet ended, by state, profile and classification.");
        for ((state, profile, classification), n) in &live {
            sandboxes.sample(&[("state", state), ("profile", profile), ("classification", classification)], *n);
        }
        let stats = self.store.stats()?;
        let ended = now.gauge("sandpit_sandboxes_ended", "Ended sandboxes on record, by final state.");
        for (state, n) in &stats.ended {
            ended.sample(&[("state", state)], *n);
        }
        now.gauge("sandpit_audit_records", "Records in the hash-chained audit log.").sample(&[], stats.audit_records);
        let pools = self.pool_status();
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
    fn live_records(&self) -> Result<Vec<Sandbox>> {
        self.store.list(&ListFilter::default())
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
async fn exit_code<R: Runtime>(runtime: &R, exec_id: &str) -> Result<i64> {
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

/// The Docker name of a sandbox's container.
pub fn container_name(id: &str) -> String {
    format!("sandpit-{id}")
}
