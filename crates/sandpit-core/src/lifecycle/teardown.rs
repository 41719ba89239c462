//! How sandboxes end: one idempotent teardown under the sandbox's lock,
//! and expiries dispatched as they fall due (killed at once, removed in
//! bounded parallel, retried with backoff while the runtime refuses).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, OwnedMutexGuard, Semaphore};
use tokio_util::sync::CancellationToken;

use super::expiry::Due;
use super::{audit_log, Manager};
use crate::audit::action;
use crate::auth::Caller;
use crate::sandbox::{EventKind, Sandbox, SandboxState};
use crate::{Error, Result};

/// Expiry teardowns running at once.
const EXPIRY_PARALLELISM: usize = 64;
/// Retry delays for daemon-internal teardowns the runtime refused or could not be reached for.
pub(super) const RETRY_MIN: Duration = Duration::from_millis(500);
pub(super) const RETRY_MAX: Duration = Duration::from_secs(30);

impl Manager {
    /// Ends a sandbox: kill and remove its container, record `state`. Holds
    /// the sandbox's lock; does nothing to an ended sandbox or when `still`
    /// says the reason no longer holds (e.g. it was extended meanwhile).
    pub(super) async fn teardown(
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
    pub(super) async fn end(
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
        let reason = reason.into();
        let ended_at = SystemTime::now();
        // Another daemon on a shared store may write the record between the
        // read and this write (recording the exit this destroy caused):
        // the sandbox is gone either way, so end it as it now stands,
        // unless someone else already ended it.
        let mut tries = 0;
        loop {
            sb.end(state, reason.clone(), ended_at);
            let entry = audit_log::entry(caller, action, &sb.experiment, id, Ok(sb.state_reason.clone()));
            match self.update(&mut sb, Some(entry)).await {
                Ok(()) => break,
                Err(Error::Conflict(_)) if tries < 3 => {
                    tries += 1;
                    match self.store.get(id).await? {
                        Some(now) if !now.state.is_ended() => sb = now,
                        Some(now) => {
                            self.scheduler.cancel(id);
                            self.untrack(id);
                            return Ok((now, false));
                        }
                        None => return Err(Error::not_found("sandbox", id)),
                    }
                }
                Err(e) => return Err(e),
            }
        }
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
    pub(super) fn track(&self, id: &str) -> bool {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string())
    }

    pub(super) fn untrack(&self, id: &str) {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.oom_seen.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Handles due deadlines: everything due at one instant together, its
    /// expiries first (killed in one batch, then removed in bounded
    /// parallel, each retried with backoff while the engine is
    /// unavailable), then its warnings.
    pub(super) async fn dispatch_due(self: Arc<Self>, mut due: mpsc::UnboundedReceiver<Due>) {
        let permits = Arc::new(Semaphore::new(EXPIRY_PARALLELISM));
        while let Some(first) = due.recv().await {
            if !self.on_duty() {
                // Another daemon holds the lease and has these deadlines too
                // (it put them back from the store when it took the lease).
                while due.try_recv().is_ok() {}
                continue;
            }
            // The scheduler hands out an instant's deadlines in one go: take
            // all that have arrived.
            let (mut expire, mut warn) = (Vec::new(), Vec::new());
            let mut next = Some(first);
            while let Some(d) = next.take().or_else(|| due.try_recv().ok()) {
                match d {
                    Due::Warn(id) => warn.push(id),
                    Due::Expire(id) => {
                        let mut expiring = self.expiring.lock().unwrap_or_else(|p| p.into_inner());
                        // Already being expired (reconcile put the deadline back meanwhile).
                        if !expiring.contains_key(&id) {
                            expiring.insert(id.clone(), false);
                            expire.push(id);
                        }
                    }
                }
            }
            if !expire.is_empty() {
                let this = Arc::clone(&self);
                let permits = Arc::clone(&permits);
                self.tasks.spawn(async move { this.expire_together(expire, permits).await });
            }
            for id in warn {
                self.warn_expiring(&id).await;
            }
        }
    }

    async fn warn_expiring(&self, id: &str) {
        if let Ok(Some(sb)) = self.store.get(id).await {
            if !sb.state.is_ended() {
                let left = sb.expires_at.duration_since(SystemTime::now()).unwrap_or_default();
                self.emit(EventKind::ExpiringSoon, &sb, format!("expires in {}", crate::time::format_duration(left)));
            }
        }
    }

    /// Expires sandboxes that fell due at one instant. They are stopped
    /// first, so that many falling due together all stop on time: one read
    /// of their records and one batch of kills for all whose locks are free;
    /// each of the rest as its lock comes free, holding up none of the
    /// others. Each is then torn down, which is slower (Docker removes one
    /// at a time) and waits for one of `permits`.
    async fn expire_together(self: Arc<Self>, ids: Vec<String>, permits: Arc<Semaphore>) {
        let (mut free, mut busy) = (Vec::new(), Vec::new());
        for id in ids {
            match self.locks.try_lock(&id) {
                Some(guard) => free.push((id, guard)),
                None => busy.push(id),
            }
        }
        let free_ids: Vec<String> = free.iter().map(|(id, _)| id.clone()).collect();
        let mut killed = self.kill_due(free).await;
        for id in free_ids {
            let killed = killed.remove(&id);
            self.tasks.spawn(Arc::clone(&self).expire_after_kill(id, killed, Arc::clone(&permits)));
        }
        for id in busy {
            let (this, permits) = (Arc::clone(&self), Arc::clone(&permits));
            self.tasks.spawn(async move {
                let guard = this.locks.lock(&id).await;
                let killed = this.kill_due(vec![(id.clone(), guard)]).await.remove(&id);
                this.expire_after_kill(id, killed, permits).await;
            });
        }
    }

    /// The teardown of an expired sandbox, once a permit is free. `killed`:
    /// when the kill at expiry stopped it.
    async fn expire_after_kill(self: Arc<Self>, id: String, killed: Option<SystemTime>, permits: Arc<Semaphore>) {
        let _permit = permits.acquire_owned().await;
        self.expire(&id, killed).await;
        self.expiring.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Kills those of `locked` (each with its lock held) still running past
    /// their deadline: a sandbox extended meanwhile is left alone.
    async fn kill_due(&self, locked: Vec<(String, OwnedMutexGuard<()>)>) -> HashMap<String, SystemTime> {
        let mut killed = HashMap::new();
        if locked.is_empty() {
            return killed;
        }
        let ids: Vec<String> = locked.iter().map(|(id, _)| id.clone()).collect();
        let records = match self.store.get_many(&ids).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, sandboxes = ids.len(), "reading records at expiry failed; the teardowns will kill");
                return killed;
            }
        };
        let now = SystemTime::now();
        let due: Vec<Sandbox> = records
            .into_iter()
            .filter(|sb| !sb.state.is_ended() && sb.expires_at <= now && sb.container_id.is_some())
            .collect();
        let asked = now;
        let results = self.runtime.kill_all(&due).await;
        let at = SystemTime::now();
        let late =
            |sb: &Sandbox, t: SystemTime| t.duration_since(sb.expires_at).unwrap_or_default().as_secs_f64() * 1e3;
        let mut expiring = self.expiring.lock().unwrap_or_else(|p| p.into_inner());
        for (sb, result) in due.iter().zip(results) {
            match result {
                Ok(()) => {
                    tracing::debug!(sandbox = %sb.id, asked_ms = late(sb, asked), killed_ms = late(sb, at), "killed at expiry");
                    // Its process is gone: an extension waiting on the lock must not revive the record.
                    expiring.insert(sb.id.clone(), true);
                    killed.insert(sb.id.clone(), at);
                }
                Err(e) => {
                    tracing::debug!(sandbox = %sb.id, error = %e, "kill at expiry failed; the teardown will retry")
                }
            }
        }
        killed
    }

    /// Tears an expired sandbox down, retrying while Docker refuses. `killed`:
    /// when the kill at expiry stopped it. Its lateness goes into the metrics
    /// once, by the call that recorded it expired.
    pub(super) async fn expire(&self, id: &str, killed: Option<SystemTime>) {
        let now = SystemTime::now();
        let end =
            || self.end(id, SandboxState::Expired, "ttl reached", None, action::EXPIRE, |sb| sb.expires_at <= now);
        if let Some((sb, true)) = with_backoff(&self.cancel, "expiry teardown", id, end).await {
            let stopped = killed.or(sb.ended_at).unwrap_or(now);
            crate::metrics::global().expired(stopped.duration_since(sb.expires_at).unwrap_or_default());
        }
    }
}

/// Runs `op` until it succeeds (its result) or finds nothing to act on
/// (`None`), sleeping between tries with backoff from [`RETRY_MIN`] to
/// [`RETRY_MAX`]: for daemon-internal work that no caller will retry. Gives
/// up (`None`) when `cancel` fires: the reconcile of the next start finishes
/// the job.
pub(super) async fn with_backoff<T, F, Fut>(
    cancel: &CancellationToken,
    what: &str,
    target: &str,
    mut op: F,
) -> Option<T>
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
                tokio::select! {
                    () = cancel.cancelled() => {
                        tracing::warn!(object = %target, "{what} given up: the daemon is stopping");
                        return None;
                    }
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}
