//! Authentication and authorization for every RPC, in one place.
//!
//! A caller is identified by a bearer token or, over mutual TLS, by its
//! client certificate's subject. Each RPC declares the roles allowed to call
//! it in [`Method::roles`]; [`Gate::authorize`] enforces that table and
//! records every refusal in the audit log. Which team's objects a caller may
//! see or change is decided by the lifecycle manager.

use std::sync::Arc;

use tonic::Request;

use super::limits::{CallLimits, Limiter, Permit};
use crate::identity::{Caller, Identities, Role};
use sandpit_core::audit::{action, AuditEntry, Outcome};
use sandpit_core::metrics::Refusal;
use sandpit_core::Error;

/// Every RPC that needs a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    CreateSandbox,
    GetSandbox,
    ListSandboxes,
    ExtendSandbox,
    DeleteSandbox,
    WatchSandboxes,
    Exec,
    ExecInteractive,
    PullImage,
    CopyIn,
    CopyOut,
    PortForward,
    RegisterExperiment,
    GetExperiment,
    ListExperiments,
    ApproveExperiment,
    RejectExperiment,
    CloseExperiment,
    AddRisk,
    UpdateRisk,
    RecordAssessment,
    UpdateTransparency,
    QueryAuditLog,
    WatchAuditLog,
    VerifyAuditLog,
    GetCheckpoint,
    Export,
    ListActiveExperiments,
    ListProfiles,
    GetProfile,
    ValidateProfile,
    ReloadProfiles,
    ListPools,
}

use Role::{Approver, Auditor, Operator, Requester};

impl Method {
    pub const ALL: [Method; 33] = [
        Method::CreateSandbox,
        Method::GetSandbox,
        Method::ListSandboxes,
        Method::ExtendSandbox,
        Method::DeleteSandbox,
        Method::WatchSandboxes,
        Method::Exec,
        Method::ExecInteractive,
        Method::PullImage,
        Method::CopyIn,
        Method::CopyOut,
        Method::PortForward,
        Method::RegisterExperiment,
        Method::GetExperiment,
        Method::ListExperiments,
        Method::ApproveExperiment,
        Method::RejectExperiment,
        Method::CloseExperiment,
        Method::AddRisk,
        Method::UpdateRisk,
        Method::RecordAssessment,
        Method::UpdateTransparency,
        Method::QueryAuditLog,
        Method::WatchAuditLog,
        Method::VerifyAuditLog,
        Method::GetCheckpoint,
        Method::Export,
        Method::ListActiveExperiments,
        Method::ListProfiles,
        Method::GetProfile,
        Method::ValidateProfile,
        Method::ReloadProfiles,
        Method::ListPools,
    ];

    /// The roles allowed to call each RPC: the one table.
    pub fn roles(self) -> &'static [Role] {
        match self {
            Method::CreateSandbox
            | Method::ExtendSandbox
            | Method::Exec
            | Method::ExecInteractive
            | Method::PullImage
            | Method::CopyIn
            | Method::CopyOut
            | Method::PortForward => &[Requester],
            Method::GetSandbox | Method::ListSandboxes | Method::WatchSandboxes => {
                &[Requester, Operator, Auditor, Approver]
            }
            Method::DeleteSandbox => &[Requester, Operator],
            Method::RegisterExperiment => &[Requester],
            Method::GetExperiment | Method::ListExperiments => &[Requester, Approver, Auditor, Operator],
            Method::ApproveExperiment | Method::RejectExperiment | Method::CloseExperiment => &[Approver],
            // The experiment's own team's requesters (checked by the manager) and approvers.
            Method::AddRisk | Method::UpdateRisk | Method::RecordAssessment | Method::UpdateTransparency => {
                &[Requester, Approver]
            }
            Method::QueryAuditLog
            | Method::WatchAuditLog
            | Method::VerifyAuditLog
            | Method::GetCheckpoint
            | Method::Export => &[Auditor],
            Method::ListActiveExperiments => &[Auditor, Approver],
            Method::ListProfiles | Method::GetProfile => &[Requester, Operator, Approver, Auditor],
            Method::ValidateProfile | Method::ReloadProfiles | Method::ListPools => &[Operator],
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Method::CreateSandbox => action::CREATE_SANDBOX,
            Method::GetSandbox => action::GET_SANDBOX,
            Method::ListSandboxes => action::LIST_SANDBOXES,
            Method::ExtendSandbox => action::EXTEND_SANDBOX,
            Method::DeleteSandbox => action::DELETE_SANDBOX,
            Method::WatchSandboxes => action::WATCH_SANDBOXES,
            Method::Exec => action::EXEC,
            Method::ExecInteractive => action::EXEC_INTERACTIVE,
            Method::PullImage => action::PULL_IMAGE,
            Method::CopyIn => action::COPY_IN,
            Method::CopyOut => action::COPY_OUT,
            Method::PortForward => action::PORT_FORWARD,
            Method::RegisterExperiment => action::REGISTER_EXPERIMENT,
            Method::GetExperiment => action::GET_EXPERIMENT,
            Method::ListExperiments => action::LIST_EXPERIMENTS,
            Method::ApproveExperiment => action::APPROVE_EXPERIMENT,
            Method::RejectExperiment => action::REJECT_EXPERIMENT,
            Method::CloseExperiment => action::CLOSE_EXPERIMENT,
            Method::AddRisk => action::ADD_RISK,
            Method::UpdateRisk => action::UPDATE_RISK,
            Method::RecordAssessment => action::RECORD_ASSESSMENT,
            Method::UpdateTransparency => action::UPDATE_TRANSPARENCY,
            Method::QueryAuditLog => action::QUERY_AUDIT_LOG,
            Method::WatchAuditLog => action::WATCH_AUDIT_LOG,
            Method::VerifyAuditLog => action::VERIFY_AUDIT_LOG,
            Method::GetCheckpoint => action::GET_CHECKPOINT,
            Method::Export => action::EXPORT,
            Method::ListActiveExperiments => action::LIST_ACTIVE_EXPERIMENTS,
            Method::ListProfiles => action::LIST_PROFILES,
            Method::GetProfile => action::GET_PROFILE,
            Method::ValidateProfile => action::VALIDATE_PROFILE,
            Method::ReloadProfiles => action::RELOAD_PROFILES,
            Method::ListPools => action::LIST_POOLS,
        }
    }
}

/// Where refusals are recorded.
#[async_trait::async_trait]
pub trait AuditSink: Send + Sync + 'static {
    async fn record(&self, entry: AuditEntry);
}

/// Refusals go through the manager's bounds: a source repeating a refused
/// call, or spraying different ones, cannot flood the audit log.
#[async_trait::async_trait]
impl AuditSink for sandpit_core::lifecycle::Manager {
    async fn record(&self, entry: AuditEntry) {
        sandpit_core::lifecycle::Manager::record_refusal(self, entry).await
    }
}

/// A refused call: the error to answer with, and its audit record (none
/// for load refusals, which are counted rather than audited).
struct Refused {
    entry: Option<Box<AuditEntry>>,
    error: Error,
}

/// Authenticates, authorizes and rate-limits each call.
#[derive(Clone)]
pub struct Gate {
    identities: Arc<Identities>,
    audit: Arc<dyn AuditSink>,
    limiter: Arc<Limiter>,
}

/// An admitted call: its caller, and its place among the caller's calls in
/// progress, given back when this is dropped. Keep it for as long as the call
/// runs (move it into a response stream to count the stream).
#[derive(Debug)]
pub struct Call {
    pub caller: Caller,
    _permit: Permit,
}

impl std::ops::Deref for Call {
    type Target = Caller;

    fn deref(&self) -> &Caller {
        &self.caller
    }
}

impl Call {
    /// Keeps this call counted as in progress until `stream` ends or is dropped.
    pub fn hold<S: futures_util::Stream + Send + 'static>(
        self,
        stream: S,
    ) -> impl futures_util::Stream<Item = S::Item> {
        use futures_util::StreamExt;
        stream.map(move |item| {
            let _held = &self;
            item
        })
    }
}

impl Gate {
    pub fn new(identities: Arc<Identities>, audit: Arc<dyn AuditSink>, limits: CallLimits) -> Gate {
        Gate { identities, audit, limiter: Arc::new(Limiter::new(limits)) }
    }

    /// The caller of `req`, allowed to call `method` in the returned role and
    /// within its limits.
    /// The caller of `req`, allowed to call `method` in the returned role and
    /// within its limits; a refusal is on record before it is returned.
    ///
    /// The request is read at once (it need not outlive the check); only the
    /// recording of a refusal is awaited.
    pub fn authorize<T>(
        &self,
        req: &Request<T>,
        method: Method,
    ) -> impl std::future::Future<Output = Result<Call, Error>> + Send + '_ {
        let checked = self.check(req, method);
        async move {
            match checked {
                Ok(call) => Ok(call),
                Err(Refused { entry: Some(entry), error }) => {
                    self.audit.record(*entry).await;
                    Err(error)
                }
                Err(Refused { entry: None, error }) => Err(error),
            }
        }
    }

    fn check<T>(&self, req: &Request<T>, method: Method) -> Result<Call, Refused> {
        let metrics = sandpit_core::metrics::global();
        let source = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let deny = |actor: &str, role: &str, e: Error| Refused {
            entry: Some(Box::new(AuditEntry {
                time: std::time::SystemTime::now(),
                actor: actor.to_string(),
                role: role.to_string(),
                action: method.path().to_string(),
                target: String::new(),
                experiment: String::new(),
                sandbox: String::new(),
                outcome: Outcome::Denied,
                code: e.code().as_str().to_string(),
                reason: e.to_string(),
                source: source.clone(),
            })),
            error: e,
        };
        let mut caller = match self.identify(req) {
            Ok(c) => c,
            Err(why) => {
                tracing::info!(method = method.path(), %source, why, "unauthenticated call");
                metrics.refused(method.path(), Refusal::Unauthenticated);
                return Err(deny("anonymous", "", Error::Unauthenticated));
            }
        };
        let Some(role) = method.roles().iter().copied().find(|r| caller.has(*r)) else {
            let need: Vec<&str> = method.roles().iter().map(|r| r.as_str()).collect();
            let has: Vec<&str> = caller.roles.iter().map(|r| r.as_str()).collect();
            let e = Error::PermissionDenied(format!(
                "{} needs one of the roles [{}]; {} has [{}]",
                method.path(),
                need.join(", "),
                caller.name,
                has.join(", ")
            ));
            metrics.refused(method.path(), Refusal::PermissionDenied);
            return Err(deny(&caller.name, "", e));
        };
        // Refusals for load are counted, not audited: a runaway client
        // would flood the audit log.
        let permit = self.limiter.admit(&caller.name).map_err(|why| Refused {
            entry: None,
            error: {
                metrics.refused(method.path(), why);
                let limits = self.limiter.limits();
                tracing::debug!(method = method.path(), caller = %caller.name, ?why, "call refused by a limit");
                Error::ResourceExhausted(match why {
                    Refusal::TooManyConcurrent => format!(
                        "{} already has {} calls in progress (limits.max_concurrent_calls); retry when one ends",
                        caller.name, limits.max_concurrent_calls
                    ),
                    _ => format!(
                        "{} is over {} calls per second (limits.calls_per_second, burst {}); retry with backoff",
                        caller.name, limits.calls_per_second, limits.burst
                    ),
                })
            },
        })?;
        metrics.call(method.path());
        tracing::Span::current().record("caller", caller.name.as_str());
        caller.role = Some(role);
        caller.source = source;
        Ok(Call { caller, _permit: permit })
    }

    fn identify<T>(&self, req: &Request<T>) -> Result<Caller, &'static str> {
        if let Some(header) = req.metadata().get("authorization") {
            let token = header
                .to_str()
                .ok()
                .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or("malformed authorization header")?;
            return self.identities.by_token(token).cloned().ok_or("unknown token");
        }
        // Only certificates the TLS layer verified against tls.client_ca get here.
        if let Some(certs) = req.peer_certs() {
            let cert = certs.first().ok_or("no client certificate")?;
            return self.identities.by_certificate(cert).cloned();
        }
        Err("no bearer token or client certificate")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_allows_some_role_and_paths_are_unique() {
        let mut paths = std::collections::HashSet::new();
        for m in Method::ALL {
            assert!(!m.roles().is_empty(), "{m:?}");
            assert!(paths.insert(m.path()), "{m:?}");
        }
    }

    #[test]
    fn separation_of_duties() {
        // Requesters cannot approve or read the audit log; approvers and auditors cannot create sandboxes.
        assert!(!Method::ApproveExperiment.roles().contains(&Requester));
        assert!(!Method::QueryAuditLog.roles().contains(&Requester));
        assert!(!Method::CreateSandbox.roles().contains(&Approver));
        assert!(!Method::CreateSandbox.roles().contains(&Auditor));
        assert!(!Method::VerifyAuditLog.roles().contains(&Operator));
        assert_eq!(Method::GetCheckpoint.roles(), [Auditor]);
    }
}
