//! How sandboxes end: one idempotent teardown under the sandbox's lock,
//! and expiries dispatched as they fall due (killed at once, removed in
//! bounded parallel, retried with backoff while the runtime refuses).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, Semaphore};
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
        sb.end(state, reason, SystemTime::now());
        self.commit(&mut sb, |sb| audit_log::entry(caller, action, &sb.experiment, id, Ok(sb.state_reason.clone())))
            .await?;
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

    /// Handles due deadlines: warnings at once, expiries in bounded parallel,
    /// each retried with backoff while the engine is unavailable.
    pub(super) async fn dispatch_due(self: Arc<Self>, mut due: mpsc::UnboundedReceiver<Due>) {
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
                    {
                        let mut expiring = self.expiring.lock().unwrap_or_else(|p| p.into_inner());
                        if expiring.contains_key(&id) {
                            // Already being expired (reconcile put the deadline back meanwhile).
                            continue;
                        }
                        expiring.insert(id.clone(), false);
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
    pub(super) async fn stop_expired(&self, id: &str) -> Option<SystemTime> {
        let _guard = self.locks.lock(id).await;
        let Ok(Some(sb)) = self.store.get(id).await else { return None };
        if sb.state.is_ended() || sb.expires_at > SystemTime::now() {
            return None;
        }
        sb.container_id.as_ref()?;
        let late = |t: SystemTime| t.duration_since(sb.expires_at).unwrap_or_default().as_secs_f64() * 1e3;
        let asked = SystemTime::now();
        match self.runtime.kill(&sb).await {
            Ok(()) => {
                tracing::debug!(sandbox = %id, asked_ms = late(asked), killed_ms = late(SystemTime::now()), "killed at expiry");
                // Its process is gone: an extension waiting on the lock must not revive the record.
                self.expiring.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), true);
                Some(SystemTime::now())
            }
            Err(e) => {
                tracing::debug!(sandbox = %id, error = %e, "kill at expiry failed; the teardown will retry");
                None
            }
        }
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
