//! What the Docker driver makes of a sandbox: the container it asks the
//! engine for, its network, and the host firewall's view of that network.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::SystemTime;

use sandpit_core::policy::{Isolation as Level, Resources};

/// Everything needed to create one hardened sandbox container. The hardening
/// itself (non-root, no capabilities, read-only root, ...) is not optional and
/// so is not a field: every runtime applies it to every container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    pub name: String,
    pub hostname: String,
    pub image: String,
    /// Empty: the image's default command.
    pub command: Vec<String>,
    /// uid:gid, never root.
    pub user: String,
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    pub resources: Resources,
    /// `None`: no network at all, loopback only.
    pub network: Option<NetworkRequest>,
    /// Read-only bind mounts (datasets).
    pub mounts: Vec<Mount>,
    /// How strongly it is kept from the host's kernel.
    pub isolation: Level,
    /// The engine's runtime (e.g. `runsc-none` for gVisor); `None`: its default (runc).
    pub runtime: Option<String>,
    /// The experiment's workspace volume, mounted read-write at
    /// [`sandpit_core::sandbox::WORKSPACE_DIR`].
    pub workspace: Option<Workspace>,
}

/// A named volume that outlives the sandboxes of one experiment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub name: String,
    pub labels: HashMap<String, String>,
}

/// A network of the sandbox's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRequest {
    pub name: String,
    /// No route out: reaches nothing but, with `egress`, the proxy.
    pub internal: bool,
    /// Point HTTP(S)_PROXY at the daemon's egress proxy on the gateway.
    pub egress: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: String,
}

/// A sandbox network's place in the host firewall.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Isolation {
    /// CIDR, e.g. `10.213.0.16/28`.
    pub subnet: String,
    /// An allowlist sandbox's network: it may reach the egress proxy's port
    /// on its gateway (no other network may).
    pub egress: bool,
}

/// What [`super::DockerRuntime::repair_isolation`] found out of place and put back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IsolationRepair {
    /// Each repair, for the record (e.g. `SANDPIT-… rewritten (missing: …)`).
    pub changes: Vec<String>,
    /// Subnets of networks whose rules were incomplete and are whole again.
    pub restored: Vec<String>,
    /// Networks of live sandboxes the runtime did not know (e.g. after a
    /// restart) whose rules are not all in place: for [`super::DockerRuntime::isolate`],
    /// once each sandbox is known to be still live.
    pub unknown: Vec<Isolation>,
}

/// A network carrying the daemon's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedNetwork {
    pub name: String,
    pub sandbox_id: Option<String>,
    pub created: SystemTime,
}

/// A container carrying the daemon's labels, as listed by the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedContainer {
    pub id: String,
    pub sandbox_id: Option<String>,
    pub running: bool,
    pub created: SystemTime,
}
