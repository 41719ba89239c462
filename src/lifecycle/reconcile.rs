//! Reconciliation: converge the store and Docker, on start, periodically and
//! after every reconnect of the event stream; and follow Docker's events so
//! exits and OOM kills show up at once.
//!
//! After Nomad's dangling-container rules: a container with a live record is
//! never removed by reconcile; a labelled container with no record is removed
//! once older than the grace period (its create may still be in flight in
//! another call); a container without our labels is never seen, let alone touched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{FutureExt, StreamExt};

use super::{container_name, Manager};
use crate::audit::action;
use crate::policy::NetworkMode;
use crate::runtime::{labels, Isolation, ManagedContainer, Runtime, RuntimeEvent};
use crate::sandbox::{EventKind, Sandbox, SandboxState};
use crate::{Error, Result};

/// Backoff bounds for reconnecting to Docker's event stream.
const EVENTS_RETRY_MIN: Duration = Duration::from_millis(500);
const EVENTS_RETRY_MAX: Duration = Duration::from_secs(10);
/// Backoff bounds for watching host firewall changes again after the watch ended.
const WATCH_RETRY_MIN: Duration = Duration::from_secs(1);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(300);
/// A firewall reload is many changes: let them land, then check once.
const FIREWALL_SETTLE: Duration = Duration::from_millis(250);

/// What one reconcile pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Live sandboxes this process found for the first time (after a restart): taken over.
    pub adopted: usize,
    pub orphans_removed: usize,
    pub leftovers_removed: usize,
    pub lost: usize,
    pub exited: usize,
    pub failed_provisioning: usize,
    /// Sandbox networks whose host firewall rules had been removed and were put back.
    pub firewall_restored: usize,
    /// Steps that failed (other than the engine being away); the next pass retries them.
    pub failed: usize,
}

/// One object's step of a pass: an engine that is away ends the pass; any
/// other failure is logged and counted, and the pass goes on with the rest,
/// so one object Docker keeps refusing cannot hold up all the others.
fn step<T>(report: &mut ReconcileReport, what: &str, object: &str, result: Result<T>) -> Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e @ Error::Unavailable(_)) => Err(e),
        Err(e) => {
            tracing::warn!(object, error = %e, "reconcile: {what} failed; the next pass retries");
            report.failed += 1;
            Ok(None)
        }
    }
}

impl<R: Runtime> Manager<R> {
    /// One full pass over Docker's and the store's view.
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let containers = self.runtime.list(&labels::selector(&self.instance)).await?;
        let records = self.live_records().await?;
        let now = SystemTime::now();
        let mut report = ReconcileReport::default();

        let mut by_sandbox: HashMap<String, Vec<ManagedContainer>> = HashMap::new();
        for c in containers {
            let record = match &c.sandbox_id {
                Some(id) => self.store.get(id).await?,
                None => None,
            };
            match (record, &c.sandbox_id) {
                (Some(r), Some(id)) if !r.state.is_ended() => by_sandbox.entry(id.clone()).or_default().push(c),
                (Some(r), _) => {
                    // The record ended but its container survived (a teardown cut short).
                    let removed = self.runtime.remove(&c.id, r.network_name().as_deref()).await;
                    if step(&mut report, "removing a leftover container", &c.id, removed)?.is_none() {
                        continue;
                    }
                    let sandbox = c.sandbox_id.as_deref().unwrap_or_default();
                    let reason = format!("removed container {} of an ended sandbox", c.id);
                    self.record(self.entry(None, action::REMOVE_LEFTOVER, "", sandbox, Ok(reason))).await;
                    report.leftovers_removed += 1;
                }
                (None, id) => {
                    let in_flight = id.as_deref().is_some_and(|id| self.is_creating(id));
                    if !in_flight && crate::runtime::docker::age(c.created, now) >= self.settings.orphan_grace {
                        tracing::info!(container = %c.id, sandbox = ?id, "removing labelled container with no record");
                        let removed = self.runtime.remove(&c.id, None).await;
                        if step(&mut report, "removing an orphan container", &c.id, removed)?.is_none() {
                            continue;
                        }
                        let reason = format!("removed labelled container {} with no record", c.id);
                        self.record(self.entry(
                            None,
                            action::REMOVE_ORPHAN,
                            "",
                            id.as_deref().unwrap_or_default(),
                            Ok(reason),
                        ))
                        .await;
                        report.orphans_removed += 1;
                    }
                }
            }
        }

        // Networks whose sandbox has no live record (a crash between creating
        // the network and recording it), past the same grace period.
        for n in self.runtime.list_networks(&labels::selector(&self.instance)).await? {
            let Some(id) = n.sandbox_id.as_deref() else { continue };
            let live = self.store.get(id).await?.is_some_and(|r| !r.state.is_ended());
            if live || self.is_creating(id) || crate::runtime::docker::age(n.created, now) < self.settings.orphan_grace
            {
                continue;
            }
            let removed = self.runtime.remove(&container_name(id), Some(&n.name)).await;
            if step(&mut report, "removing an orphan network", &n.name, removed)?.is_none() {
                continue;
            }
            let reason = format!("removed labelled network {} with no live sandbox", n.name);
            self.record(self.entry(None, action::REMOVE_ORPHAN, "", id, Ok(reason))).await;
            report.orphans_removed += 1;
        }

        self.reconcile_firewall(&records, &mut report).await?;

        for sb in records {
            if self.is_creating(&sb.id) {
                continue;
            }
            let containers = by_sandbox.remove(&sb.id).unwrap_or_default();
            let container = containers.iter().find(|c| Some(&c.id) == sb.container_id.as_ref()).or(containers.first());
            match (sb.state, container) {
                (SandboxState::Provisioning, _) => {
                    // A create cut short by a crash of the daemon: it was never acknowledged.
                    let reason = "daemon stopped during provisioning";
                    let ended = self
                        .teardown(&sb.id, SandboxState::Failed, reason, None, action::INTERRUPTED, |s| {
                            s.state == SandboxState::Provisioning
                        })
                        .await;
                    if step(&mut report, "failing an interrupted create", &sb.id, ended)?.is_some() {
                        report.failed_provisioning += 1;
                    }
                }
                (_, None) => {
                    let lost = self.mark_lost(&sb.id).await;
                    if step(&mut report, "marking a sandbox lost", &sb.id, lost)? == Some(true) {
                        report.lost += 1;
                    }
                }
                (SandboxState::Running | SandboxState::Warm, Some(c)) if !c.running => {
                    let exited = self.record_exit(&sb.id).await;
                    if step(&mut report, "recording an exit", &sb.id, exited)? == Some(true) {
                        report.exited += 1;
                    }
                }
                (_, Some(_)) => {
                    // Live: keep (or put back) its deadlines; an expired one
                    // falls due at once. Adopted only the first time this
                    // process finds it (after a restart), not on every pass.
                    if self.track(&sb.id) {
                        report.adopted += 1;
                    }
                    self.schedule(&sb);
                }
            }
        }
        Ok(report)
    }

    /// Host rules of live networked sandboxes: whatever someone else removed
    /// or changed is put back, the rule set as a whole.
    async fn reconcile_firewall(&self, records: &[Sandbox], report: &mut ReconcileReport) -> Result<()> {
        let live: Vec<Isolation> = records
            .iter()
            .filter(|sb| !self.is_creating(&sb.id) && sb.state != SandboxState::Provisioning)
            .filter_map(|sb| {
                let egress = sb.profile.network.mode == NetworkMode::Allowlist;
                sb.network.as_ref().map(|n| Isolation { subnet: n.subnet.clone(), egress })
            })
            .collect();
        let checked = self.runtime.repair_isolation(&live).await;
        let Some(repair) = step(report, "checking host firewall rules", "firewall", checked)? else {
            return Ok(());
        };
        let (mut changes, mut restored) = (repair.changes, repair.restored);

        // Networks the runtime did not know (a previous run's) with rules
        // missing: put back under their sandboxes' locks, taken in id order
        // so that two passes cannot deadlock, and only while each sandbox is
        // still live: a teardown that released them meanwhile must not be
        // undone. One change for all of them.
        let mut owners: Vec<(&Sandbox, &Isolation)> = repair
            .unknown
            .iter()
            .filter_map(|net| {
                records
                    .iter()
                    .find(|sb| sb.network.as_ref().is_some_and(|n| n.subnet == net.subnet))
                    .map(|sb| (sb, net))
            })
            .collect();
        owners.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let mut guards = Vec::with_capacity(owners.len());
        let mut verified = Vec::new();
        for (owner, net) in owners {
            guards.push(self.locks.lock(&owner.id).await);
            let live =
                self.store.get(&owner.id).await?.is_some_and(|sb| {
                    !sb.state.is_ended() && sb.network.as_ref().is_some_and(|n| n.subnet == net.subnet)
                });
            if live {
                verified.push(net.clone());
            }
        }
        if !verified.is_empty()
            && step(report, "restoring host firewall rules", "firewall", self.runtime.isolate(&verified).await)?
                .is_some()
        {
            let subnets: Vec<String> = verified.into_iter().map(|n| n.subnet).collect();
            changes.push(format!("rules of {} put back", subnets.join(", ")));
            restored.extend(subnets);
        }
        drop(guards);

        if !changes.is_empty() {
            tracing::warn!(subnets = ?restored, ?changes, "host firewall rules of live sandboxes had been changed; restored");
            let reason = format!("restored host firewall rules of {}: {}", restored.join(", "), changes.join("; "));
            self.record(self.entry(None, action::FIREWALL_RESTORED, "", "", Ok(reason))).await;
            report.firewall_restored += restored.len().max(1);
        }
        Ok(())
    }

    /// The firewall part of a pass on its own, when a change was seen.
    async fn reconcile_firewall_logged(&self, why: &str) {
        let mut report = ReconcileReport::default();
        let result = match self.live_records().await {
            Ok(records) => self.reconcile_firewall(&records, &mut report).await,
            Err(e) => Err(e),
        };
        let metrics = crate::metrics::global();
        metrics.reconcile_action("firewall_restored", report.firewall_restored);
        metrics.reconcile_action("step_failed", report.failed);
        match result {
            Ok(()) if report == ReconcileReport::default() => tracing::debug!(why, "host firewall rules in place"),
            Ok(()) => tracing::info!(why, report = ?report, "host firewall checked"),
            Err(e) => tracing::warn!(why, error = %e, "host firewall check failed; reconcile retries"),
        }
    }

    /// Repairs the host firewall soon after someone else changes it, rather
    /// than at the next reconcile; watches again with backoff when the watch
    /// ends (reconcile's interval still covers the time between).
    pub(super) async fn watch_firewall(self: Arc<Self>) {
        let mut delay = WATCH_RETRY_MIN;
        loop {
            let started = std::time::Instant::now();
            let mut changes = self.runtime.isolation_changes();
            while changes.next().await.is_some() {
                tokio::time::sleep(FIREWALL_SETTLE).await;
                while let Some(Some(())) = changes.next().now_or_never() {}
                self.reconcile_firewall_logged("host firewall changed").await;
            }
            if started.elapsed() >= WATCH_RETRY_MAX {
                delay = WATCH_RETRY_MIN;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(WATCH_RETRY_MAX);
        }
    }

    /// Marks a record `lost` if its container is really gone.
    async fn mark_lost(&self, id: &str) -> Result<bool> {
        let _guard = self.locks.lock(id).await;
        let Some(mut sb) = self.store.get(id).await? else {
            return Ok(false);
        };
        if sb.state.is_ended() {
            return Ok(false);
        }
        let target = sb.container_id.clone().unwrap_or_else(|| container_name(id));
        if self.runtime.status(&target).await?.is_some() {
            return Ok(false);
        }
        sb.end(SandboxState::Lost, "container vanished from Docker", SystemTime::now());
        self.commit(&mut sb, |sb| self.entry(None, action::LOST, &sb.experiment, id, Ok(sb.state_reason.clone())))
            .await?;
        self.scheduler.cancel(id);
        self.untrack(id);
        tracing::warn!(sandbox = %id, "sandbox lost: its container is gone");
        self.emit(EventKind::Lost, &sb, sb.state_reason.clone());
        Ok(true)
    }

    /// Records that a running sandbox's main process ended, with its exit
    /// code and whether the OOM killer did it. The stopped container stays
    /// until expiry or delete.
    async fn record_exit(&self, id: &str) -> Result<bool> {
        let guard = self.locks.lock(id).await;
        let Some(mut sb) = self.store.get(id).await? else {
            return Ok(false);
        };
        let Some(cid) = sb.container_id.clone() else {
            return Ok(false);
        };
        if sb.state == SandboxState::Warm {
            // A warm sandbox that died is no use to anyone: never hand it out.
            drop(guard);
            let reason = "warm sandbox's main process ended before it was claimed";
            self.teardown(id, SandboxState::Failed, reason, None, action::EXIT, |s| s.state == SandboxState::Warm)
                .await?;
            return Ok(true);
        }
        // Past its expiry it is being torn down (expiry kills first): not an exit.
        if sb.state != SandboxState::Running || sb.expires_at <= SystemTime::now() {
            return Ok(false);
        }
        let Some(status) = self.runtime.status(&cid).await? else {
            return Ok(false);
        };
        if status.running {
            return Ok(false);
        }
        sb.state = SandboxState::Exited;
        sb.exit_code = status.exit_code;
        sb.oom_killed |= status.oom_killed;
        // Docker's OOMKilled stays set once anything in the sandbox was
        // OOM-killed; the main process was only if it died of SIGKILL.
        sb.state_reason = if sb.oom_killed && status.exit_code == Some(137) {
            "killed by the OOM killer (memory limit reached)".to_string()
        } else {
            format!("main process exited with code {}", status.exit_code.unwrap_or(-1))
        };
        self.commit(&mut sb, |sb| self.entry(None, action::EXIT, &sb.experiment, id, Ok(sb.state_reason.clone())))
            .await?;
        tracing::info!(sandbox = %id, exit_code = ?sb.exit_code, oom_killed = sb.oom_killed, "sandbox exited");
        self.emit(EventKind::Exited, &sb, sb.state_reason.clone());
        Ok(true)
    }

    async fn record_oom(&self, id: &str) -> Result<()> {
        let _guard = self.locks.lock(id).await;
        if let Some(mut sb) = self.store.get(id).await? {
            if !sb.state.is_ended() && !sb.oom_killed {
                sb.oom_killed = true;
                let reason = "the kernel OOM killer struck inside the sandbox".to_string();
                self.commit(&mut sb, |sb| self.entry(None, action::OOM_KILL, &sb.experiment, id, Ok(reason))).await?;
                tracing::warn!(sandbox = %id, "OOM kill inside sandbox");
            }
        }
        Ok(())
    }

    pub(super) async fn reconcile_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.settings.reconcile_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.reconcile_logged("periodic").await;
        }
    }

    async fn reconcile_logged(&self, why: &str) {
        let metrics = crate::metrics::global();
        match self.reconcile().await {
            Ok(r) => {
                metrics.reconciled("ok");
                metrics.reconcile_action("adopted", r.adopted);
                metrics.reconcile_action("orphan_removed", r.orphans_removed);
                metrics.reconcile_action("leftover_removed", r.leftovers_removed);
                metrics.reconcile_action("lost", r.lost);
                metrics.reconcile_action("exited", r.exited);
                metrics.reconcile_action("interrupted_create_failed", r.failed_provisioning);
                metrics.reconcile_action("firewall_restored", r.firewall_restored);
                metrics.reconcile_action("step_failed", r.failed);
                if r == ReconcileReport::default() {
                    tracing::debug!(why, "reconciled with Docker: nothing to do")
                } else {
                    tracing::info!(why, report = ?r, "reconciled with Docker")
                }
            }
            Err(e @ Error::Unavailable(_)) => {
                metrics.reconciled("unavailable");
                tracing::warn!(why, error = %e, "reconcile skipped: Docker unavailable")
            }
            Err(e) => {
                metrics.reconciled("error");
                tracing::error!(why, error = %e, "reconcile failed")
            }
        }
    }

    /// Follows Docker's event stream for this instance's containers,
    /// reconnecting with backoff and reconciling after each reconnect to
    /// catch whatever happened while it was away.
    pub(super) async fn follow_events(self: Arc<Self>) {
        let mut delay = EVENTS_RETRY_MIN;
        let mut first = true;
        loop {
            let mut events = self.runtime.events(&labels::selector(&self.instance));
            if !first {
                self.reconcile_logged("event stream reconnected").await;
            }
            first = false;
            while let Some(ev) = events.next().await {
                delay = EVENTS_RETRY_MIN;
                let result = match ev {
                    Ok(RuntimeEvent::Died { sandbox_id, .. }) => self.record_exit(&sandbox_id).await.map(|_| ()),
                    Ok(RuntimeEvent::Oom { sandbox_id, .. }) => self.record_oom(&sandbox_id).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "Docker event stream failed");
                        break;
                    }
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "handling a Docker event failed");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(EVENTS_RETRY_MAX);
        }
    }
}
