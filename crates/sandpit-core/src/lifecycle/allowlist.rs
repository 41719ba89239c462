//! The egress proxy's view of the manager: which allowlist sandbox an
//! address (or egress relay token) belongs to and where it may go, and
//! every decision on record.

use std::net::IpAddr;

use super::{audit_log, Manager};
use crate::audit::action;
use crate::egress;
use crate::policy::NetworkMode;
use crate::sandbox::Sandbox;
use crate::Error;

impl Manager {
    /// Lets the egress proxy know an allowlist sandbox: by its address, or
    /// by its relay's token where its traffic comes through a relay.
    pub(super) fn egress_learn(&self, sb: &Sandbox) {
        if let (NetworkMode::Allowlist, Some(n)) = (sb.profile.network.mode, &sb.network) {
            let allow =
                sb.profile.network.allow.iter().map(|d| egress::Destination::new(d.host.clone(), d.port)).collect();
            match &n.egress_key {
                Some(key) => {
                    let mut idx = self.egress_relays.write().unwrap_or_else(|p| p.into_inner());
                    idx.insert(key.clone(), (sb.id.clone(), allow));
                }
                None => {
                    let mut idx = self.egress.write().unwrap_or_else(|p| p.into_inner());
                    idx.insert(IpAddr::V4(n.address), (sb.id.clone(), allow));
                }
            }
        }
    }

    pub(super) fn egress_forget(&self, sb: &Sandbox) {
        let Some(n) = &sb.network else { return };
        match &n.egress_key {
            Some(key) => {
                let mut idx = self.egress_relays.write().unwrap_or_else(|p| p.into_inner());
                if idx.get(key).is_some_and(|(id, _)| *id == sb.id) {
                    idx.remove(key);
                }
            }
            None => {
                let mut idx = self.egress.write().unwrap_or_else(|p| p.into_inner());
                if idx.get(&IpAddr::V4(n.address)).is_some_and(|(id, _)| *id == sb.id) {
                    idx.remove(&IpAddr::V4(n.address));
                }
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

    fn lookup_relay(&self, token_sha256: &str) -> Option<(String, Vec<egress::Destination>)> {
        self.egress_relays.read().unwrap_or_else(|p| p.into_inner()).get(token_sha256).cloned()
    }

    async fn decided(&self, d: &egress::Decision) {
        let sandbox = d.sandbox.clone().unwrap_or_default();
        let experiment = self.audit.experiment_of(&sandbox).await;
        let what = format!("{} {}:{}", d.method, d.host, d.port);
        let result = match d.status {
            200 => Ok(format!("{what} via {}", d.reason)),
            400 => Err(Error::invalid("request", format!("{what}: {}", d.reason))),
            502 => Err(Error::Unavailable(format!("{what}: {}", d.reason))),
            _ => Err(Error::PermissionDenied(format!("{what}: {}", d.reason))),
        };
        let mut entry =
            audit_log::entry(None, action::EGRESS, &experiment, &sandbox, result.as_ref().map(Clone::clone));
        entry.source = d.source.to_string();
        if result.is_ok() {
            self.record(entry).await;
        } else {
            // A sandbox retrying a refused destination is one record per window, with a count.
            self.audit.refusal(entry).await;
        }
    }
}
