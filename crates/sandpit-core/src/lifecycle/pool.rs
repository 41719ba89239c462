//! Warm pools: a profile may ask for N sandboxes provisioned ahead of time,
//! so that a create matching it is a claim (a store write) rather than a
//! Docker create-and-start.
//!
//! - A warm sandbox is a record in state `warm`, owned by no one; its
//!   container and network exist and run the profile's command.
//! - A claim hands one to exactly one create (records are popped under a
//!   lock and claimed by compare-and-set under the sandbox's lock, one store
//!   write when nothing changed them since they were pooled), sets its experiment,
//!   owner, classification and expiry, and audits it like any create. A
//!   claimed sandbox never returns to the pool: nothing of one experiment
//!   reaches another.
//! - Only creates with the profile's default image and no datasets claim
//!   (datasets are mounts, fixed at creation).
//! - The pool refills in the background one sandbox at a time, so refills
//!   never crowd out cold creates; a reload that changes or removes a profile
//!   drains its stale warm sandboxes, and a smaller size drains the surplus.
//! - Warm sandboxes carry the labels of any sandbox (reconciled and cleaned
//!   up alike), but not the experiment and owner of their later claim: the
//!   store, not the labels, knows those. Their environment lacks
//!   `SANDPIT_EXPERIMENT` for the same reason.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{audit_log, Manager};
use crate::audit::action;
use crate::auth::Caller;
use crate::policy::admission::over_quota;
use crate::policy::{Plan, Profile};
use crate::sandbox::{EventKind, Sandbox, SandboxState};
use crate::store::{Admission, Admitted, ListFilter};
use crate::{Error, Result};

/// How often pools are checked even when nothing wakes the refiller.
const REFILL_EVERY: Duration = Duration::from_secs(5);
/// Pause after a failed warm provision, so a broken image does not spin.
const REFILL_BACKOFF: Duration = Duration::from_secs(5);

/// A pool's counters, for operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStatus {
    pub profile: String,
    pub target: u32,
    pub warm: u32,
    pub claims: u64,
    pub misses: u64,
}

/// What a create's claim on a warm pool came to.
pub(super) enum Claim {
    Claimed(Box<Sandbox>),
    /// No warm sandbox for it: create one cold.
    Missed,
    /// Its experiment changed since admission: admit again.
    Readmit,
}

#[derive(Default)]
pub(super) struct Pools {
    /// Warm sandboxes by profile, oldest first: each record as last written
    /// by this daemon, so a claim can compare-and-set it without reading it
    /// first (a record changed meanwhile fails the compare and is re-read).
    ready: std::sync::Mutex<HashMap<String, VecDeque<Sandbox>>>,
    claims: std::sync::Mutex<HashMap<String, Arc<(AtomicU64, AtomicU64)>>>,
    pub(super) wake: tokio::sync::Notify,
}

impl Pools {
    fn counters(&self, profile: &str) -> Arc<(AtomicU64, AtomicU64)> {
        let mut m = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(m.entry(profile.to_string()).or_default())
    }

    /// The warm sandboxes on record, in place of what the pools held.
    fn replace(&self, warm: impl Iterator<Item = Sandbox>) {
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        ready.clear();
        for sb in warm {
            ready.entry(sb.profile.name.clone()).or_default().push_back(sb);
        }
    }

    pub(super) fn push(&self, sb: Sandbox) {
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        ready.entry(sb.profile.name.clone()).or_default().push_back(sb);
    }

    fn pop(&self, profile: &str) -> Option<Sandbox> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner()).get_mut(profile)?.pop_front()
    }

    pub(super) fn remove(&self, profile: &str, id: &str) {
        if let Some(q) = self.ready.lock().unwrap_or_else(|p| p.into_inner()).get_mut(profile) {
            q.retain(|x| x.id != id);
        }
    }

    fn len(&self, profile: &str) -> usize {
        self.ready.lock().unwrap_or_else(|p| p.into_inner()).get(profile).map_or(0, VecDeque::len)
    }

    fn records(&self, profile: &str) -> Vec<Sandbox> {
        let ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        ready.get(profile).map(|q| q.iter().cloned().collect()).unwrap_or_default()
    }

    fn profiles(&self) -> Vec<String> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }
}

impl Manager {
    /// Puts the warm sandboxes on record in their pools (at start, and when
    /// this daemon takes the lease: the last holder refilled them).
    pub(super) fn load_pools(&self, records: &[Sandbox]) {
        self.pools.replace(records.iter().filter(|s| s.state == SandboxState::Warm).cloned());
    }

    /// Hands a warm sandbox of the plan's profile to the caller, if one is
    /// ready and the plan can use it, while `admission` still holds.
    pub(super) async fn claim(&self, caller: &Caller, plan: &Plan, admission: Admission) -> Result<Claim> {
        let profile = &plan.profile;
        if profile.warm_pool == 0 {
            return Ok(Claim::Missed);
        }
        let counters = self.pools.counters(&profile.name);
        if plan.image != profile.default_image() || !plan.datasets.is_empty() || plan.resources != profile.resources {
            counters.1.fetch_add(1, Ordering::Relaxed);
            return Ok(Claim::Missed);
        }
        let started = std::time::Instant::now();
        // Warm sandboxes of an older version of the profile: left in the
        // pool for the refiller to drain.
        let mut stale = Vec::new();
        let claimed = loop {
            let Some(pooled) = self.pools.pop(&profile.name) else { break Ok(Claim::Missed) };
            if !pooled.profile.same_policy(profile) {
                stale.push(pooled);
                continue;
            }
            let _guard = self.locks.lock(&pooled.id).await;
            match self.claim_one(caller, plan, pooled, admission).await {
                // No longer warm: dropped from the pool; try the next.
                Ok(Claim::Missed) => continue,
                other => break other,
            }
        };
        for sb in stale {
            self.pools.push(sb);
        }
        self.pools.wake.notify_one();
        match claimed? {
            Claim::Claimed(sb) => {
                self.track(&sb.id);
                self.schedule(&sb);
                self.egress_learn(&sb);
                counters.0.fetch_add(1, Ordering::Relaxed);
                crate::metrics::global().provisioned(crate::metrics::Source::Warm, started.elapsed());
                self.emit(EventKind::Created, &sb, "running (warm pool)");
                Ok(Claim::Claimed(sb))
            }
            Claim::Missed => {
                counters.1.fetch_add(1, Ordering::Relaxed);
                Ok(Claim::Missed)
            }
            Claim::Readmit => Ok(Claim::Readmit),
        }
    }

    /// Hands `pooled` to the plan, under its lock: one write of the record
    /// as the pool holds it (compare-and-set, while `admission` holds), with
    /// the create's audit record. A record changed since it was pooled (it
    /// exited, was adopted or drained) is read again and claimed only if it
    /// is still warm ([`Claim::Missed`] if not). Unless claimed, `pooled`
    /// goes back to the pool.
    async fn claim_one(&self, caller: &Caller, plan: &Plan, pooled: Sandbox, admission: Admission) -> Result<Claim> {
        let audit = |sb: &Sandbox| {
            let reason = format!(
                "{} {} {} until {} (claimed from the warm pool)",
                sb.profile.name,
                sb.classification,
                sb.image,
                crate::time::rfc3339(sb.expires_at)
            );
            audit_log::entry(Some(caller), action::CREATE_SANDBOX, &sb.experiment, &sb.id, Ok(reason))
        };
        let mut sb = claimed(pooled.clone(), plan);
        let entry = audit(&sb);
        let mut outcome = self.commit_admitted(&mut sb, entry, admission).await;
        if matches!(outcome, Err(Error::Conflict(_))) {
            match self.store.get(&pooled.id).await {
                Ok(Some(fresh)) if fresh.state == SandboxState::Warm && fresh.profile.same_policy(&plan.profile) => {
                    sb = claimed(fresh, plan);
                    let entry = audit(&sb);
                    outcome = self.commit_admitted(&mut sb, entry, admission).await;
                }
                Ok(_) => return Ok(Claim::Missed),
                Err(e) => outcome = Err(e),
            }
        }
        let claim = match outcome {
            Ok(Admitted::Written(())) => return Ok(Claim::Claimed(Box::new(sb))),
            Ok(Admitted::ExperimentChanged) => Ok(Claim::Readmit),
            Ok(Admitted::OverQuota(live)) => Err(over_quota(&plan.team, live, &self.settings.quotas)),
            Err(e) => Err(e),
        };
        self.pools.push(pooled);
        claim
    }

    /// Every pool: its target, how many are ready, claims and misses.
    pub async fn pool_status(&self) -> Vec<PoolStatus> {
        let mut out = Vec::new();
        for p in self.profiles().iter().filter(|p| p.warm_pool > 0) {
            let c = self.pools.counters(&p.name);
            let mut warm = 0u32;
            for pooled in self.pools.records(&p.name) {
                if self.store.get(&pooled.id).await.ok().flatten().is_some_and(|s| s.state == SandboxState::Warm) {
                    warm += 1;
                }
            }
            out.push(PoolStatus {
                profile: p.name.clone(),
                target: p.warm_pool,
                warm,
                claims: c.0.load(Ordering::Relaxed),
                misses: c.1.load(Ordering::Relaxed),
            });
        }
        out
    }

    pub(super) async fn pool_loop(self: Arc<Self>) {
        // Passes woken by a claim or a reload trust the pool's copies of the
        // records; the first and the timed ones read each from the store, to
        // let go of warm sandboxes that exited or vanished meanwhile.
        let mut verify = true;
        loop {
            let refilled = self.refill_once(verify).await;
            verify = false;
            if !refilled {
                tokio::select! {
                    () = self.pools.wake.notified() => {}
                    () = tokio::time::sleep(REFILL_EVERY) => verify = true,
                }
            }
        }
    }

    /// Drains what no longer fits and adds at most one warm sandbox.
    /// Returns whether it added one (then it is called again at once).
    async fn refill_once(&self, verify: bool) -> bool {
        if self.cancel.is_cancelled() || !self.on_duty() {
            return false;
        }
        let profiles = self.profiles();
        // Drain: pools of removed or changed profiles, and surpluses.
        for name in self.pools.profiles() {
            let current = profiles.get(&name);
            let mut keep = 0u32;
            for pooled in self.pools.records(&name) {
                let sb = if verify {
                    match self.store.get(&pooled.id).await {
                        Ok(Some(sb)) if sb.state == SandboxState::Warm => sb,
                        _ => {
                            self.pools.remove(&name, &pooled.id);
                            continue;
                        }
                    }
                } else {
                    pooled
                };
                let fits = current.is_some_and(|p| sb.profile.same_policy(p) && keep < p.warm_pool);
                if fits {
                    keep += 1;
                    continue;
                }
                self.pools.remove(&name, &sb.id);
                let reason = "drained from the warm pool (profile changed, removed or shrunk)";
                let drained = self.teardown(&sb.id, SandboxState::Deleted, reason, None, action::POOL_DRAIN, |s| {
                    s.state == SandboxState::Warm
                });
                if let Err(e) = drained.await {
                    // Back in the list, so the next pass tries again.
                    tracing::warn!(sandbox = %sb.id, error = %e, "could not drain a warm sandbox; will retry");
                    self.pools.push(sb);
                }
            }
        }
        // Fill: the first pool below its size gets one more. A profile whose
        // isolation the runtime cannot give now waits (ListProfiles and the
        // log say so) without holding up the others.
        let caps = self.runtime.capabilities();
        for p in profiles.iter().filter(|p| p.warm_pool > 0 && caps.isolation.contains(&p.isolation)) {
            if (self.pools.len(&p.name) as u32) < p.warm_pool {
                match self.provision_warm(p).await {
                    Ok(()) => return true,
                    Err(e) => {
                        tracing::warn!(profile = %p.name, error = %e, "could not fill the warm pool");
                        tokio::time::sleep(REFILL_BACKOFF).await;
                        return false;
                    }
                }
            }
        }
        false
    }

    async fn provision_warm(&self, profile: &Profile) -> Result<()> {
        let now = SystemTime::now();
        let plan = Plan {
            experiment: String::new(),
            owner: String::new(),
            team: String::new(),
            profile: profile.clone(),
            classification: profile.max_classification,
            image: profile.default_image().to_string(),
            datasets: Vec::new(),
            created_at: now,
            // Unclaimed for a whole lifetime: recycle it.
            expires_at: now + profile.lifetime.max_lifetime,
            max_expires_at: now + profile.lifetime.max_lifetime,
            resources: profile.resources.clone(),
        };
        // Nothing is recorded while the engine is away or the image missing:
        // a pool must not fill the store and the audit log with failures.
        self.runtime.ensure_image(&plan.image).await?;
        let mut sb = Sandbox::provisioning(Sandbox::new_id(), self.runtime.node().to_string(), plan);
        self.creating.lock().unwrap_or_else(|p| p.into_inner()).insert(sb.id.clone());
        let result = async {
            self.store.insert_sandbox(&sb, None).await?;
            sb.version = 1;
            let _guard = self.locks.lock(&sb.id).await;
            let created = self.runtime.provision(&sb).await;
            match created {
                Ok(p) => {
                    sb.container_id = Some(p.container_id);
                    sb.network = p.network;
                    if let Some(node) = p.node {
                        sb.node = node;
                    }
                    sb.state = SandboxState::Warm;
                    let reason = format!("warm sandbox for profile {}", profile.name);
                    if let Err(e) = self
                        .commit(&mut sb, |sb| audit_log::entry(None, action::POOL_FILL, "", &sb.id, Ok(reason)))
                        .await
                    {
                        self.undo_create(&sb).await;
                        return Err(e);
                    }
                    self.track(&sb.id);
                    self.schedule(&sb);
                    self.pools.push(sb.clone());
                    self.tell_others(EventKind::Created, &sb, "warm");
                    Ok(())
                }
                Err(e) => {
                    self.undo_create(&sb).await;
                    sb.end(SandboxState::Failed, e.to_string(), SystemTime::now());
                    let _ =
                        self.commit(&mut sb, |sb| audit_log::entry(None, action::POOL_FILL, "", &sb.id, Err(&e))).await;
                    Err(e)
                }
            }
        }
        .await;
        self.creating.lock().unwrap_or_else(|p| p.into_inner()).remove(&sb.id);
        result
    }

    /// Warm sandboxes on record, for tests and status.
    pub async fn warm_sandboxes(&self) -> Result<Vec<Sandbox>> {
        Ok(self
            .store
            .list(&ListFilter::default())
            .await?
            .into_iter()
            .filter(|s| s.state == SandboxState::Warm)
            .collect())
    }
}

/// A warm sandbox as the plan's create takes it over.
fn claimed(mut sb: Sandbox, plan: &Plan) -> Sandbox {
    sb.experiment = plan.experiment.clone();
    sb.owner = plan.owner.clone();
    sb.team = plan.team.clone();
    sb.classification = plan.classification;
    sb.created_at = plan.created_at;
    sb.expires_at = plan.expires_at;
    sb.max_expires_at = plan.max_expires_at;
    sb.state = SandboxState::Running;
    sb
}
