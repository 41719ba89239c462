//! Reconciliation: converge the store and the runtime, on start,
//! periodically and after every reconnect of the event stream; follow the
//! runtime's events so exits and OOM kills show up at once; and repair host
//! state the runtime keeps (firewall rules) as soon as it says it changed.
//!
//! Each pass observes (the runtime's objects, the store's live records) and
//! decides per object and per sandbox what to do ([`judge_object`],
//! [`judge_sandbox`]: pure, and tested as such), then acts. After Nomad's
//! dangling-container rules: an object with a live record is never removed;
//! a labelled object with no record is removed once older than the grace
//! period (its create may still be in flight in another call); an object
//! without our labels is never seen, let alone touched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{FutureExt, StreamExt};

use super::{audit_log, Manager};
use crate::audit::action;
use crate::runtime::{Owned, OwnedKind, RuntimeEvent};
use crate::sandbox::{EventKind, Sandbox, SandboxState};
use crate::{Error, Result};

/// Backoff bounds for reconnecting to the runtime's event stream.
const EVENTS_RETRY_MIN: Duration = Duration::from_millis(500);
const EVENTS_RETRY_MAX: Duration = Duration::from_secs(10);
/// How long an exit by SIGKILL waits for an `oom` event that trails its `die`.
const OOM_TRAIL: Duration = Duration::from_millis(200);
/// Backoff bounds for watching host changes again after the watch ended.
const WATCH_RETRY_MIN: Duration = Duration::from_secs(1);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(300);
/// A firewall reload is many changes: let them land, then check once.
const REPAIR_SETTLE: Duration = Duration::from_millis(250);

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
    /// Host state (firewall rules) of live sandboxes someone else changed, put back.
    pub firewall_restored: usize,
    /// Steps that failed (other than the engine being away); the next pass retries them.
    pub failed: usize,
}

/// What to do about an object the runtime owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectAction {
    /// A live sandbox's: its record decides (see [`judge_sandbox`]).
    Live,
    /// Its sandbox ended, but the object survived (a teardown cut short).
    RemoveLeftover,
    /// Nobody's, and older than the grace period.
    RemoveOrphan,
    /// Nobody's yet: its create may still be in flight; or it names no sandbox.
    Leave,
}

/// Judges one owned object by the record of the sandbox it names (if any),
/// whether that sandbox's create is in flight in this process, and its age.
pub fn judge_object(
    o: &Owned,
    record: Option<&Sandbox>,
    creating: bool,
    grace: Duration,
    now: SystemTime,
) -> ObjectAction {
    let old_enough = now.duration_since(o.created).unwrap_or_default() >= grace;
    match (record, &o.sandbox_id) {
        (Some(r), Some(_)) if !r.state.is_ended() => ObjectAction::Live,
        (Some(_), _) => ObjectAction::RemoveLeftover,
        // A network that names no sandbox is not one of ours to judge.
        (None, None) if o.kind == OwnedKind::Network => ObjectAction::Leave,
        (None, _) if creating || !old_enough => ObjectAction::Leave,
        (None, _) => ObjectAction::RemoveOrphan,
    }
}

/// What to do about a live record, given its sandbox object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxAction {
    /// A create cut short by a crash of the daemon: it was never acknowledged.
    FailInterrupted,
    /// Its object is gone: marked lost once confirmed.
    MarkLost,
    /// Its main process ended.
    RecordExit,
    /// Live and running: keep its deadlines, and take it over if new to this process.
    Keep,
}

/// Judges one live record (not being created in this process) by the
/// runtime's sandbox object for it, if any.
pub fn judge_sandbox(record: &Sandbox, object: Option<&Owned>) -> SandboxAction {
    match (record.state, object) {
        (SandboxState::Provisioning, _) => SandboxAction::FailInterrupted,
        (_, None) => SandboxAction::MarkLost,
        (SandboxState::Running | SandboxState::Warm, Some(o)) if !o.running => SandboxAction::RecordExit,
        (_, Some(_)) => SandboxAction::Keep,
    }
}

/// One object's step of a pass: an engine that is away ends the pass; any
/// other failure is logged and counted, and the pass goes on with the rest,
/// so one object the engine keeps refusing cannot hold up all the others.
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

impl Manager {
    /// One full pass over the runtime's and the store's view.
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        self.runtime.refresh().await?;
        self.report_unrunnable();
        let owned = self.runtime.owned().await?;
        let records = self.live_records().await?;
        let now = SystemTime::now();
        let mut report = ReconcileReport::default();

        // Objects first: leftovers and orphans go; live sandboxes' are kept for below.
        let mut sandbox_objects: HashMap<String, Vec<Owned>> = HashMap::new();
        for o in owned {
            let record = match &o.sandbox_id {
                Some(id) => self.store.get(id).await?,
                None => None,
            };
            let creating = o.sandbox_id.as_deref().is_some_and(|id| self.is_creating(id));
            let sandbox = o.sandbox_id.clone().unwrap_or_default();
            match judge_object(&o, record.as_ref(), creating, self.settings.orphan_grace, now) {
                ObjectAction::Live => {
                    if o.kind == OwnedKind::Sandbox {
                        sandbox_objects.entry(sandbox).or_default().push(o);
                    }
                }
                ObjectAction::Leave => {}
                ObjectAction::RemoveLeftover => {
                    let removed = self.runtime.remove_owned(&o).await;
                    if step(&mut report, "removing a leftover", &o.id, removed)?.is_none() {
                        continue;
                    }
                    let reason = format!("removed {} of an ended sandbox", o.id);
                    self.audit.record(audit_log::entry(None, action::REMOVE_LEFTOVER, "", &sandbox, Ok(reason))).await;
                    report.leftovers_removed += 1;
                }
                ObjectAction::RemoveOrphan => {
                    tracing::info!(object = %o.id, sandbox = ?o.sandbox_id, "removing a labelled object with no record");
                    let removed = self.runtime.remove_owned(&o).await;
                    if step(&mut report, "removing an orphan", &o.id, removed)?.is_none() {
                        continue;
                    }
                    let reason = format!("removed labelled {} with no live sandbox", o.id);
                    self.audit.record(audit_log::entry(None, action::REMOVE_ORPHAN, "", &sandbox, Ok(reason))).await;
                    report.orphans_removed += 1;
                }
            }
        }

        let mut adopting = Vec::new();
        for sb in records {
            if self.is_creating(&sb.id) || self.may_be_creating_elsewhere(&sb, now) {
                continue;
            }
            let objects = sandbox_objects.remove(&sb.id).unwrap_or_default();
            let object = objects.iter().find(|o| Some(&o.id) == sb.container_id.as_ref()).or(objects.first());
            match judge_sandbox(&sb, object) {
                SandboxAction::FailInterrupted => {
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
                SandboxAction::MarkLost => {
                    let lost = self.mark_lost(&sb.id).await;
                    if step(&mut report, "marking a sandbox lost", &sb.id, lost)? == Some(true) {
                        report.lost += 1;
                    }
                }
                SandboxAction::RecordExit => {
                    let exited = self.record_exit(&sb.id, None).await;
                    if step(&mut report, "recording an exit", &sb.id, exited)? == Some(true) {
                        report.exited += 1;
                    }
                }
                SandboxAction::Keep => {
                    // Keep (or put back) its deadlines; an expired one falls
                    // due at once. Adopted only the first time this process
                    // finds it (after a restart), not on every pass.
                    if self.track(&sb.id) {
                        adopting.push(sb.clone());
                    }
                    self.schedule(&sb);
                }
            }
        }
        if !adopting.is_empty() {
            let adopted = self.adopt(adopting).await;
            if let Some(n) = step(&mut report, "adopting sandboxes", "runtime", adopted)? {
                report.adopted += n;
            }
        }

        self.repair_runtime(&mut report).await?;
        Ok(report)
    }

    /// Whether `sb` may be a create in flight on another daemon sharing the
    /// store: provisioning for less than the orphan grace period. Alone on
    /// the store, a provisioning record this process is not creating was
    /// cut short by a crash, and is failed at once.
    fn may_be_creating_elsewhere(&self, sb: &Sandbox, now: SystemTime) -> bool {
        self.is_shared()
            && sb.state == SandboxState::Provisioning
            && now.duration_since(sb.created_at).unwrap_or_default() < self.settings.orphan_grace
    }

    /// Takes over sandboxes an earlier process made: under their locks
    /// (taken in id order, so that two passes cannot deadlock), and only
    /// those still live (a teardown meanwhile must not be undone). How many.
    async fn adopt(&self, mut sandboxes: Vec<Sandbox>) -> Result<usize> {
        sandboxes.sort_by(|a, b| a.id.cmp(&b.id));
        let mut guards = Vec::with_capacity(sandboxes.len());
        let mut live = Vec::with_capacity(sandboxes.len());
        for sb in sandboxes {
            guards.push(self.locks.lock(&sb.id).await);
            match self.store.get(&sb.id).await? {
                Some(now) if !now.state.is_ended() => {
                    self.egress_learn(&now);
                    live.push(now);
                }
                _ => self.untrack(&sb.id),
            }
        }
        self.runtime.adopt(&live).await?;
        Ok(live.len())
    }

    /// Host state of live sandboxes (firewall rules): whatever someone else
    /// removed or changed is put back, and on record.
    async fn repair_runtime(&self, report: &mut ReconcileReport) -> Result<()> {
        let checked = self.runtime.repair().await;
        let Some(repair) = step(report, "checking host state", "runtime", checked)? else {
            return Ok(());
        };
        if !repair.changes.is_empty() {
            tracing::warn!(restored = ?repair.restored, changes = ?repair.changes, "host rules of live sandboxes had been changed; restored");
            let reason = format!(
                "restored host firewall rules of {}: {}",
                repair.restored.join(", "),
                repair.changes.join("; ")
            );
            self.audit.record(audit_log::entry(None, action::FIREWALL_RESTORED, "", "", Ok(reason))).await;
            report.firewall_restored += repair.restored.len().max(1);
        }
        Ok(())
    }

    /// The repair on its own, when the runtime says host state changed.
    async fn repair_logged(&self, why: &str) {
        if !self.on_duty() {
            return;
        }
        let mut report = ReconcileReport::default();
        let result = self.repair_runtime(&mut report).await;
        let metrics = crate::metrics::global();
        metrics.reconcile_action("firewall_restored", report.firewall_restored);
        metrics.reconcile_action("step_failed", report.failed);
        match result {
            Ok(()) if report == ReconcileReport::default() => tracing::debug!(why, "host rules in place"),
            Ok(()) => tracing::info!(why, report = ?report, "host rules checked"),
            Err(e) => tracing::warn!(why, error = %e, "host rules check failed; reconcile retries"),
        }
    }

    /// Repairs host state soon after someone else changes it, rather than at
    /// the next reconcile; watches again with backoff when the watch ends
    /// (reconcile's interval still covers the time between).
    pub(super) async fn watch_runtime(self: Arc<Self>) {
        let mut delay = WATCH_RETRY_MIN;
        let mut first = true;
        loop {
            let started = std::time::Instant::now();
            let mut changes = self.runtime.repair_needed();
            // Changes made while no watch ran were never reported: check once.
            if !std::mem::take(&mut first) {
                self.repair_logged("host rules watch restarted").await;
            }
            while changes.next().await.is_some() {
                tokio::time::sleep(REPAIR_SETTLE).await;
                while let Some(Some(())) = changes.next().now_or_never() {}
                self.repair_logged("host rules changed").await;
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
        self.record_lost(id, None).await
    }

    /// Marks a record `lost`: with `reason`, because the runtime said so
    /// (its node is gone, or may no longer run it); without, once its
    /// container is confirmed gone.
    async fn record_lost(&self, id: &str, reason: Option<&str>) -> Result<bool> {
        let _guard = self.locks.lock(id).await;
        let Some(mut sb) = self.store.get(id).await? else {
            return Ok(false);
        };
        if sb.state.is_ended() || sb.state == SandboxState::Provisioning {
            return Ok(false);
        }
        if reason.is_none() && self.runtime.status(&sb).await?.is_some() {
            return Ok(false);
        }
        sb.end(SandboxState::Lost, reason.unwrap_or("its container vanished from the engine"), SystemTime::now());
        self.commit(&mut sb, |sb| {
            audit_log::entry(None, action::LOST, &sb.experiment, id, Ok(sb.state_reason.clone()))
        })
        .await?;
        self.scheduler.cancel(id);
        self.untrack(id);
        // Its address or relay token opens the egress proxy no more.
        self.egress_forget(&sb);
        tracing::warn!(sandbox = %id, reason = %sb.state_reason, "sandbox lost");
        self.emit(EventKind::Lost, &sb, sb.state_reason.clone());
        Ok(true)
    }

    /// Records that a running sandbox's main process ended, with its exit
    /// code and whether the OOM killer did it. The stopped container stays
    /// until expiry or delete.
    /// `exit_code`: as the engine's event gave it. Any but 137 is taken as
    /// is; 137 (SIGKILL, perhaps the OOM killer) and none are asked of the
    /// runtime, which knows whether it was an OOM kill.
    async fn record_exit(&self, id: &str, exit_code: Option<i64>) -> Result<bool> {
        let guard = self.locks.lock(id).await;
        let Some(mut sb) = self.store.get(id).await? else {
            return Ok(false);
        };
        if sb.container_id.is_none() {
            return Ok(false);
        }
        if sb.state == SandboxState::Warm {
            // Without an event's exit code (reconcile's listing), asked of
            // the runtime first, as for a running one: a listing taken as
            // the container started or under load must not fail a live one.
            if exit_code.is_none() && self.runtime.status(&sb).await?.is_some_and(|s| s.running) {
                return Ok(false);
            }
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
        let status = match exit_code {
            Some(code) if code != 137 => {
                crate::runtime::ContainerStatus { running: false, exit_code, oom_killed: false }
            }
            _ => match self.runtime.status(&sb).await? {
                Some(status) if !status.running => status,
                _ => return Ok(false),
            },
        };
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
        self.commit(&mut sb, |sb| {
            audit_log::entry(None, action::EXIT, &sb.experiment, id, Ok(sb.state_reason.clone()))
        })
        .await?;
        tracing::info!(sandbox = %id, exit_code = ?sb.exit_code, oom_killed = sb.oom_killed, "sandbox exited");
        self.emit(EventKind::Exited, &sb, sb.state_reason.clone());
        Ok(true)
    }

    async fn record_oom(&self, id: &str) -> Result<()> {
        self.oom_seen.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), std::time::Instant::now());
        let _guard = self.locks.lock(id).await;
        if let Some(mut sb) = self.store.get(id).await? {
            if !sb.state.is_ended() && !sb.oom_killed {
                sb.oom_killed = true;
                let reason = "the kernel OOM killer struck inside the sandbox".to_string();
                self.commit(&mut sb, |sb| audit_log::entry(None, action::OOM_KILL, &sb.experiment, id, Ok(reason)))
                    .await?;
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
            if self.on_duty() {
                self.reconcile_logged("periodic").await;
            }
        }
    }

    pub(super) async fn reconcile_logged(&self, why: &str) {
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

    fn oom_seen_lately(&self, id: &str) -> bool {
        let seen = self.oom_seen.lock().unwrap_or_else(|p| p.into_inner()).get(id).copied();
        seen.is_some_and(|t| t.elapsed() < OOM_TRAIL * 10)
    }

    /// Whether an exit of `id` by SIGKILL should wait for a trailing `oom`
    /// event: not when the OOM kill is already known, nor when expiry is
    /// what killed it.
    fn may_be_oom(&self, id: &str) -> bool {
        !self.oom_seen_lately(id) && !self.expiring.lock().unwrap_or_else(|p| p.into_inner()).contains_key(id)
    }

    fn handled(&self, result: Result<()>) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "handling a Docker event failed");
        }
    }

    /// Follows Docker's event stream for this instance's containers,
    /// reconnecting with backoff and reconciling after each reconnect to
    /// catch whatever happened while it was away.
    pub(super) async fn follow_events(self: Arc<Self>) {
        let mut delay = EVENTS_RETRY_MIN;
        let mut first = true;
        loop {
            let mut events = self.runtime.events();
            if !first {
                self.reconcile_logged("event stream reconnected").await;
            }
            first = false;
            // Exits by SIGKILL waiting (until the instant given) for an
            // `oom` event that may trail their `die`: a SIGKILLed main
            // process may be the OOM killer's work, and the engine can report
            // the OOM a moment after the exit (seen under gVisor, where
            // Docker then leaves OOMKilled unset too). Other events go on
            // meanwhile.
            let mut held: Vec<(tokio::time::Instant, String)> = Vec::new();
            loop {
                let next_due = held.iter().map(|(t, _)| *t).min();
                let ev = tokio::select! {
                    ev = events.next() => match ev {
                        Some(ev) => ev,
                        None => break,
                    },
                    () = async { tokio::time::sleep_until(next_due.expect("guarded")).await }, if next_due.is_some() => {
                        let now = tokio::time::Instant::now();
                        let (due, rest): (Vec<_>, Vec<_>) = held.drain(..).partition(|(t, _)| *t <= now);
                        held = rest;
                        for (_, id) in due {
                            self.handled(self.record_exit(&id, Some(137)).await.map(|_| ()));
                        }
                        continue;
                    }
                };
                delay = EVENTS_RETRY_MIN;
                match ev {
                    Ok(RuntimeEvent::Died { sandbox_id, exit_code, .. }) => {
                        if exit_code == Some(137) && self.may_be_oom(&sandbox_id) {
                            held.push((tokio::time::Instant::now() + OOM_TRAIL, sandbox_id));
                        } else {
                            // Recorded beside the stream, not in turn: many
                            // sandboxes ending together are recorded together.
                            let this = Arc::clone(&self);
                            self.tasks.spawn(async move {
                                this.handled(this.record_exit(&sandbox_id, exit_code).await.map(|_| ()));
                            });
                        }
                    }
                    Ok(RuntimeEvent::Lost { sandbox_id, reason }) => {
                        self.handled(self.record_lost(&sandbox_id, Some(&reason)).await.map(|_| ()));
                    }
                    Ok(RuntimeEvent::Oom { sandbox_id, .. }) => {
                        self.handled(self.record_oom(&sandbox_id).await);
                        if let Some(i) = held.iter().position(|(_, id)| *id == sandbox_id) {
                            let (_, id) = held.remove(i);
                            self.handled(self.record_exit(&id, Some(137)).await.map(|_| ()));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Docker event stream failed");
                        break;
                    }
                }
            }
            // Exits held back are recorded before the stream is followed again.
            for (_, id) in held {
                self.handled(self.record_exit(&id, Some(137)).await.map(|_| ()));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(EVENTS_RETRY_MAX);
        }
    }
}
