//! The labels on every Docker object the daemon creates. They carry enough to
//! rebuild the daemon's view from Docker alone, and operators' scripts filter
//! on them: keep the names stable.

use std::collections::{BTreeMap, HashMap};

use sandpit_core::sandbox::Sandbox;

pub const MANAGED: &str = "sandpit.managed";
pub const SANDBOX: &str = "sandpit.sandbox";
/// The daemon instance (its data directory) that owns the object.
pub const INSTANCE: &str = "sandpit.instance";
pub const EXPERIMENT: &str = "sandpit.experiment";
pub const OWNER: &str = "sandpit.owner";
pub const TEAM: &str = "sandpit.team";
pub const PROFILE: &str = "sandpit.profile";
pub const CLASSIFICATION: &str = "sandpit.classification";
/// Expiry at creation (RFC 3339); the store holds later extensions.
pub const EXPIRES_AT: &str = "sandpit.expires-at";
pub const NODE: &str = "sandpit.node";
/// On a swarm, an allowlist sandbox's egress relay (service and container)
/// carries its sandbox's id under this label, and not [`SANDBOX`]: it is
/// no sandbox, and goes with its sandbox's overlay.
pub const RELAY_FOR: &str = "sandpit.relay-for";
/// The swarm's egress network that relays reach the daemon's proxy by.
pub const EGRESS_NETWORK: &str = "sandpit.egress-network";

/// The labels that select everything one daemon instance manages.
pub fn selector(instance: &str) -> HashMap<String, String> {
    HashMap::from([(MANAGED.to_string(), "true".to_string()), (INSTANCE.to_string(), instance.to_string())])
}

/// Every label of a sandbox's objects: the operator's extra labels first, so
/// that the daemon's own always win.
/// Labels of an experiment's workspace volume: the daemon's, the
/// experiment's, its team and the classification of the sandbox that made it.
pub fn for_workspace(sb: &Sandbox, instance: &str, extra: &BTreeMap<String, String>) -> HashMap<String, String> {
    let mut l: HashMap<String, String> = extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    l.extend(selector(instance));
    l.extend([
        (EXPERIMENT.to_string(), sb.experiment.clone()),
        (TEAM.to_string(), sb.team.clone()),
        (CLASSIFICATION.to_string(), sb.classification.to_string()),
        (NODE.to_string(), sb.node.clone()),
    ]);
    l
}

pub fn for_sandbox(sb: &Sandbox, instance: &str, extra: &BTreeMap<String, String>) -> HashMap<String, String> {
    let mut l: HashMap<String, String> = extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    l.extend(selector(instance));
    l.extend([
        (SANDBOX.to_string(), sb.id.clone()),
        (EXPERIMENT.to_string(), sb.experiment.clone()),
        (OWNER.to_string(), sb.owner.clone()),
        (TEAM.to_string(), sb.team.clone()),
        (PROFILE.to_string(), sb.profile.name.clone()),
        (CLASSIFICATION.to_string(), sb.classification.to_string()),
        (EXPIRES_AT.to_string(), sandpit_core::time::rfc3339(sb.expires_at)),
        (NODE.to_string(), sb.node.clone()),
    ]);
    l
}
