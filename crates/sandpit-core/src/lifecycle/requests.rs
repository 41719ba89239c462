//! What callers ask of sandboxes: create, get, list, extend, delete, pull
//! an image, watch events, read the audit log. Exec and file transfers have
//! modules of their own.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::pool::Claim;
use super::teardown::{with_backoff, RETRY_MIN};
use super::{audit_log, in_span, Manager};
use crate::audit::{action, AuditRecord, VerifyReport};
use crate::auth::Caller;
use crate::policy::admission::{over_quota, Plan};
use crate::policy::{admit, extend_deadline, CreateSandbox, Rule};
use crate::runtime::{BoxStream, PullProgress};
use crate::sandbox::{EventKind, Sandbox, SandboxEvent, SandboxState};
use crate::store::{Admission, Admitted, AuditQuery, ListFilter, Versioned};
use crate::{Error, Result};

/// How often a create is admitted again when its experiment changes
/// meanwhile, before it gives up.
const ADMISSION_ATTEMPTS: u32 = 5;

impl Manager {
    /// A visible record, or not-found (other teams' sandboxes are not acknowledged).
    pub(super) async fn visible(&self, caller: &Caller, id: &str) -> Result<Sandbox> {
        match self.store.get(id).await? {
            Some(sb) if caller.may_see(&sb.team) => {
                in_span(&sb.id, &sb.experiment);
                Ok(sb)
            }
            _ => Err(Error::not_found("sandbox", id)),
        }
    }

    /// Whether the runtime can give a sandbox what its profile asks: a
    /// profile it cannot honour is refused, never run with less.
    pub(super) fn runtime_can(&self, plan: &Plan) -> Result<()> {
        let caps = self.runtime.capabilities();
        let profile = &plan.profile;
        if let Some(why) = caps.why_not(profile.isolation) {
            return Err(Error::denied(
                Rule::IsolationAvailable,
                format!(
                    "profile '{}' needs isolation '{}', which node '{}' cannot give now: {why}",
                    profile.name,
                    profile.isolation,
                    self.runtime.node(),
                ),
            ));
        }
        if profile.workspace && !caps.workspaces {
            return Err(Error::FailedPrecondition(format!(
                "profile '{}' keeps a workspace for its experiment, which the runtime on node '{}' cannot give \
                 (its sandboxes may land on different nodes)",
                profile.name,
                self.runtime.node()
            )));
        }
        let mode = profile.network.mode;
        if caps.network_modes.contains(&mode) {
            return Ok(());
        }
        Err(Error::FailedPrecondition(format!(
            "profile '{}' needs network mode '{}', which the runtime on node '{}' cannot give",
            profile.name,
            mode.as_str(),
            self.runtime.node()
        )))
    }

    /// Admission of a create: its plan, and the version of the experiment
    /// it was admitted against.
    async fn admit_create(&self, caller: &Caller, req: &CreateSandbox) -> Result<(Plan, u64)> {
        let experiment = self.store.get_experiment(&req.experiment).await?;
        let plan = admit(
            req,
            &caller.name,
            &caller.team,
            experiment.as_ref(),
            &self.profiles(),
            &self.settings.host,
            SystemTime::now(),
        )?;
        self.runtime_can(&plan)?;
        Ok((plan, experiment.map_or(0, |e| e.version)))
    }

    /// Admits and provisions a sandbox; returns it running.
    pub async fn create(self: &Arc<Self>, caller: &Caller, req: CreateSandbox) -> Result<Sandbox> {
        if self.cancel.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let experiment = &req.experiment;
        let refused = |e: Error, target: String| async move {
            self.audit.refused(caller, action::CREATE_SANDBOX, experiment, &target, &e).await;
            e
        };
        // What admitted the create (the team's quota, its experiment's
        // status) is checked again in the store transaction that writes its
        // record, so neither racing creates nor a decision on the experiment
        // can slip between: a decision that lands first sends the create
        // back to admission.
        let max_live = u64::from(self.settings.quotas.of(&caller.team));
        let mut attempts = 0;
        let sb = loop {
            attempts += 1;
            if attempts > ADMISSION_ATTEMPTS {
                let e = Error::Conflict(format!(
                    "experiment '{}' kept changing while this create was admitted; nothing was created, try again",
                    req.experiment
                ));
                return Err(refused(e, String::new()).await);
            }
            let (plan, experiment_version) = match self.admit_create(caller, &req).await {
                Ok(admitted) => admitted,
                Err(e) => return Err(refused(e, String::new()).await),
            };
            let admission = Admission { max_live, experiment_version };
            match self.claim(caller, &plan, admission).await {
                Ok(Claim::Claimed(sb)) => {
                    in_span(&sb.id, &sb.experiment);
                    return Ok(*sb);
                }
                Ok(Claim::Readmit) => continue,
                Ok(Claim::Missed) => {}
                Err(e @ Error::Denied { rule: Rule::TeamQuota, .. }) => return Err(refused(e, String::new()).await),
                Err(e) => tracing::warn!(error = %e, "warm pool claim failed; creating cold"),
            }
            let mut sb = Sandbox::provisioning(Sandbox::new_id(), self.runtime.node().to_string(), plan);
            in_span(&sb.id, &sb.experiment);
            self.creating.lock().unwrap_or_else(|p| p.into_inner()).insert(sb.id.clone());
            let written = self.store.write_admitted(&sb, None, admission).await;
            if !matches!(written, Ok(Admitted::Written(Versioned::Written(_)))) {
                self.creating.lock().unwrap_or_else(|p| p.into_inner()).remove(&sb.id);
            }
            match written {
                Ok(Admitted::Written(Versioned::Written(_))) => {
                    sb.version = 1;
                    break sb;
                }
                // A new record has no version to be stale against.
                Ok(Admitted::Written(Versioned::Stale(_))) => {
                    let e = Error::Internal(format!("sandbox '{}' existed before its create", sb.id));
                    return Err(refused(e, sb.id.clone()).await);
                }
                Ok(Admitted::ExperimentChanged) => continue,
                Ok(Admitted::OverQuota(live)) => {
                    let e = over_quota(&caller.team, live, &self.settings.quotas);
                    return Err(refused(e, String::new()).await);
                }
                Err(e) => return Err(refused(e, sb.id.clone()).await),
            }
        };

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
                with_backoff(&this.cancel, "teardown of an abandoned create", &id, || {
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
    pub(super) async fn undo_create(&self, sb: &Sandbox) {
        let Err(e) = self.runtime.destroy(sb).await else { return };
        tracing::warn!(sandbox = %sb.id, error = %e, "could not remove a failed create; retrying");
        let (runtime, sb) = (Arc::clone(&self.runtime), sb.clone());
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(RETRY_MIN) => {}
            }
            with_backoff(&cancel, "removal of a failed create", &sb.id, || runtime.destroy(&sb)).await;
        });
    }

    pub(super) async fn provision(&self, caller: &Caller, mut sb: Sandbox) -> Result<Sandbox> {
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
                let entry = audit_log::entry(Some(caller), action::CREATE_SANDBOX, &sb.experiment, &sb.id, Err(&e));
                if let Err(se) = self.commit(&mut sb, |_| entry).await {
                    tracing::error!(sandbox = %sb.id, error = %se, "could not record failed create");
                }
                self.emit(EventKind::Failed, &sb, e.to_string());
                return Err(e);
            }
        };
        let container_id = provisioned.container_id;
        sb.container_id = Some(container_id.clone());
        if let Some(node) = provisioned.node {
            sb.node = node;
        }
        sb.network = provisioned.network;
        sb.state = SandboxState::Running;
        let reason = format!(
            "{} {} {} until {}",
            sb.profile.name,
            sb.classification,
            sb.image,
            crate::time::rfc3339(sb.expires_at)
        );
        let entry = audit_log::entry(Some(caller), action::CREATE_SANDBOX, &sb.experiment, &sb.id, Ok(reason));
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
        self.audit.failed(caller, action::EXTEND_SANDBOX, id, result).await
    }

    pub(super) async fn extend_inner(&self, caller: &Caller, id: &str, ttl: Duration) -> Result<Sandbox> {
        let sb = self.visible(caller, id).await?;
        if !caller.may_use(&sb.team) {
            return Err(Error::PermissionDenied("extending sandboxes needs the requester role in their team".into()));
        }
        let _guard = self.locks.lock(id).await;
        let mut sb = self.visible(caller, id).await?;
        if sb.state != SandboxState::Running {
            return Err(Error::FailedPrecondition(format!("sandbox '{id}' is {}, not running", sb.state.as_str())));
        }
        // Killed at expiry, waiting to be removed: too late to extend.
        if self.expiring.lock().unwrap_or_else(|p| p.into_inner()).get(id) == Some(&true) {
            return Err(Error::FailedPrecondition(format!(
                "sandbox '{id}' expired at {} and is being torn down",
                crate::time::rfc3339(sb.expires_at)
            )));
        }
        self.experiment_in_force(&sb).await?;
        crate::policy::admission::check_min_ttl(ttl, self.settings.host.min_ttl)?;
        sb.expires_at = extend_deadline(&sb.profile, sb.max_expires_at, ttl, SystemTime::now())?;
        let reason = format!("ttl {} until {}", crate::time::format_duration(ttl), crate::time::rfc3339(sb.expires_at));
        self.commit(&mut sb, |sb| {
            audit_log::entry(Some(caller), action::EXTEND_SANDBOX, &sb.experiment, id, Ok(reason))
        })
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
        self.audit.failed(caller, action::DELETE_SANDBOX, id, result).await
    }

    /// Makes an image a profile allows present, pulling it with progress.
    /// Pulls an image `profile` allows if it is missing. With `create`, the
    /// create it is for is admitted first (as [`Manager::create`] would)
    /// and the pull is on record with its experiment: nothing is pulled
    /// for a create that would be refused.
    pub async fn pull_image(
        &self,
        caller: &Caller,
        profile: &str,
        image: Option<&str>,
        create: Option<CreateSandbox>,
    ) -> Result<BoxStream<Result<PullProgress>>> {
        let experiment = create.as_ref().map(|c| c.experiment.clone()).unwrap_or_default();
        let result = match &create {
            Some(req) => match self.admit_create(caller, req).await {
                Ok((plan, _)) => self.pull_image_inner(&plan.profile.name, Some(&plan.image)),
                Err(e) => Err(e),
            },
            None => self.pull_image_inner(profile, image),
        };
        match &result {
            Ok((image, _)) => {
                let entry =
                    audit_log::entry(Some(caller), action::PULL_IMAGE, &experiment, "", Ok(format!("image {image}")));
                self.record(entry).await
            }
            Err(e) => self.audit.refused(caller, action::PULL_IMAGE, &experiment, "", e).await,
        }
        result.map(|(_, stream)| stream)
    }

    pub(super) fn pull_image_inner(
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
        let image = crate::policy::admission::allowed_image(p, image)?;
        let stream = self.runtime.pull_image(&image);
        Ok((image, stream))
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
        self.audit.watch(self.shutdown_signal())
    }
}
