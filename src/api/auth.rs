//! Authentication and authorization for every RPC, in one place.
//!
//! A caller is identified by a bearer token or, over mutual TLS, by its
//! client certificate's subject. Each RPC declares the roles allowed to call
//! it in [`Method::roles`]; [`Gate::authorize`] enforces that table and
//! records every refusal in the audit log. Which team's objects a caller may
//! see or change is decided by the lifecycle manager.

use std::sync::Arc;

use tonic::Request;

use crate::audit::{action, AuditEntry, Outcome};
use crate::auth::{certificate_subject, Caller, Identities, Role};
use crate::Error;

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
    PullImage,
    CopyIn,
    CopyOut,
    RegisterExperiment,
    GetExperiment,
    ListExperiments,
    ApproveExperiment,
    RejectExperiment,
    CloseExperiment,
    QueryAuditLog,
    WatchAuditLog,
    VerifyAuditLog,
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
    pub const ALL: [Method; 26] = [
        Method::CreateSandbox,
        Method::GetSandbox,
        Method::ListSandboxes,
        Method::ExtendSandbox,
        Method::DeleteSandbox,
        Method::WatchSandboxes,
        Method::Exec,
        Method::PullImage,
        Method::CopyIn,
        Method::CopyOut,
        Method::RegisterExperiment,
        Method::GetExperiment,
        Method::ListExperiments,
        Method::ApproveExperiment,
        Method::RejectExperiment,
        Method::CloseExperiment,
        Method::QueryAuditLog,
        Method::WatchAuditLog,
        Method::VerifyAuditLog,
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
            | Method::PullImage
            | Method::CopyIn
            | Method::CopyOut => &[Requester],
            Method::GetSandbox | Method::ListSandboxes | Method::WatchSandboxes => {
                &[Requester, Operator, Auditor, Approver]
            }
            Method::DeleteSandbox => &[Requester, Operator],
            Method::RegisterExperiment => &[Requester],
            Method::GetExperiment | Method::ListExperiments => &[Requester, Approver, Auditor, Operator],
            Method::ApproveExperiment | Method::RejectExperiment | Method::CloseExperiment => &[Approver],
            Method::QueryAuditLog | Method::WatchAuditLog | Method::VerifyAuditLog | Method::Export => &[Auditor],
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
            Method::PullImage => action::PULL_IMAGE,
            Method::CopyIn => action::COPY_IN,
            Method::CopyOut => action::COPY_OUT,
            Method::RegisterExperiment => action::REGISTER_EXPERIMENT,
            Method::GetExperiment => action::GET_EXPERIMENT,
            Method::ListExperiments => action::LIST_EXPERIMENTS,
            Method::ApproveExperiment => action::APPROVE_EXPERIMENT,
            Method::RejectExperiment => action::REJECT_EXPERIMENT,
            Method::CloseExperiment => action::CLOSE_EXPERIMENT,
            Method::QueryAuditLog => action::QUERY_AUDIT_LOG,
            Method::WatchAuditLog => action::WATCH_AUDIT_LOG,
            Method::VerifyAuditLog => action::VERIFY_AUDIT_LOG,
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
pub trait AuditSink: Send + Sync + 'static {
    fn record(&self, entry: AuditEntry);
}

impl<R: crate::runtime::Runtime> AuditSink for crate::lifecycle::Manager<R> {
    fn record(&self, entry: AuditEntry) {
        crate::lifecycle::Manager::record(self, entry)
    }
}

/// Authenticates and authorizes each call.
#[derive(Clone)]
pub struct Gate {
    identities: Arc<Identities>,
    audit: Arc<dyn AuditSink>,
}

impl Gate {
    pub fn new(identities: Identities, audit: Arc<dyn AuditSink>) -> Gate {
        Gate { identities: Arc::new(identities), audit }
    }

    /// The caller of `req`, allowed to call `method` in the returned role.
    pub fn authorize<T>(&self, req: &Request<T>, method: Method) -> Result<Caller, Error> {
        let source = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let deny = |actor: &str, role: &str, e: Error| {
            self.audit.record(AuditEntry {
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
            });
            e
        };
        let mut caller = match self.identify(req) {
            Ok(c) => c,
            Err(why) => {
                tracing::info!(method = method.path(), %source, why, "unauthenticated call");
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
            return Err(deny(&caller.name, "", e));
        };
        caller.role = Some(role);
        caller.source = source;
        Ok(caller)
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
            let subject = certs.first().and_then(|c| certificate_subject(c)).ok_or("unreadable client certificate")?;
            return self.identities.by_subject(&subject).cloned().ok_or("unknown certificate subject");
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
    }
}
