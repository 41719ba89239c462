//! The container engine behind a small trait. [`docker::DockerRuntime`] drives
//! a Docker engine through bollard; the lifecycle manager is written against
//! [`Runtime`] alone, so a remote engine or an orchestrator can stand in later.

pub mod docker;
pub mod firewall;
pub mod labels;
pub mod subnet;

use std::collections::HashMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::SystemTime;

use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::policy::Resources;
use crate::Result;

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send + 'static>>;

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

/// The network a sandbox got, kept in its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub name: String,
    /// CIDR, e.g. `10.213.0.16/28`.
    pub subnet: String,
    pub gateway: Ipv4Addr,
    /// The sandbox's own address.
    pub address: Ipv4Addr,
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

/// What [`Runtime::repair_isolation`] found out of place and put back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IsolationRepair {
    /// Each repair, for the record (e.g. `SANDPIT-… rewritten (missing: …)`).
    pub changes: Vec<String>,
    /// Subnets of networks whose rules were incomplete and are whole again.
    pub restored: Vec<String>,
    /// Networks of live sandboxes the runtime did not know (e.g. after a
    /// restart) whose rules are not all in place: for [`Runtime::isolate`],
    /// once each sandbox is known to be still live.
    pub unknown: Vec<Isolation>,
}

/// What [`Runtime::create`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    pub container_id: String,
    pub network: Option<NetworkInfo>,
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

/// The state of a container's main process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerStatus {
    pub running: bool,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
}

/// Something the engine reports about a managed container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// The main process ended.
    Died { container_id: String, sandbox_id: String },
    /// The kernel OOM killer struck inside the container.
    Oom { container_id: String, sandbox_id: String },
}

#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecChunk {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// A running exec: its output, then ask [`Runtime::exec_exit_code`].
pub struct ExecSession {
    pub exec_id: String,
    pub output: BoxStream<Result<ExecChunk>>,
}

/// One progress line of an image pull.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullProgress {
    pub status: String,
    pub layer: String,
    pub current: i64,
    pub total: i64,
}

pub trait Runtime: Clone + Send + Sync + 'static {
    /// The engine's name in sandbox records.
    fn node(&self) -> &str;

    /// Makes sure `image` is present, pulling it if missing.
    fn ensure_image(&self, image: &str) -> impl Future<Output = Result<()>> + Send;

    /// Pulls `image` if missing, reporting progress; ends once present.
    fn pull_image(&self, image: &str) -> BoxStream<Result<PullProgress>>;

    /// Creates the sandbox's network (if any) and container, and starts it.
    /// If any step fails, whatever was made is removed before the error is returned.
    fn create(&self, spec: &ContainerSpec) -> impl Future<Output = Result<Provisioned>> + Send;

    /// Kills (no stop grace) and removes a container by id or name, then its
    /// network by name, with the host rules that went with it. Removing what
    /// is already gone succeeds.
    fn remove(&self, container: &str, network: Option<&str>) -> impl Future<Output = Result<()>> + Send;

    /// Every network carrying all of `selector`'s labels.
    fn list_networks(
        &self,
        selector: &HashMap<String, String>,
    ) -> impl Future<Output = Result<Vec<ManagedNetwork>>> + Send;

    /// Compares the host's firewall rules, as a whole, with what the
    /// sandbox networks the runtime knows need (those it made or adopted),
    /// and puts back whatever is out of place. Removing a network makes the
    /// runtime forget it first, so a repair never undoes a teardown. Of
    /// `live` (the networks of live sandboxes on record), those it does not
    /// know yet are adopted when their rules are in place and returned as
    /// `unknown` when not.
    fn repair_isolation(&self, live: &[Isolation]) -> impl Future<Output = Result<IsolationRepair>> + Send;

    /// Puts `nets`' host rules (back) in place, with whatever else the rule
    /// set lacks, in one change. Idempotent.
    fn isolate(&self, nets: &[Isolation]) -> impl Future<Output = Result<()>> + Send;

    /// Yields soon after someone else changes the host rules of this
    /// runtime's networks; ends when that cannot be watched (then only
    /// reconcile's interval repairs them).
    fn isolation_changes(&self) -> BoxStream<()>;

    /// Sends SIGKILL to a container's processes. A missing or stopped container is fine.
    fn kill(&self, container: &str) -> impl Future<Output = Result<()>> + Send;

    /// Every container (running or not) carrying all of `selector`'s labels.
    fn list(&self, selector: &HashMap<String, String>) -> impl Future<Output = Result<Vec<ManagedContainer>>> + Send;

    /// The container's process state; `None` if it does not exist.
    fn status(&self, container: &str) -> impl Future<Output = Result<Option<ContainerStatus>>> + Send;

    /// Starts a command in a running container.
    fn exec(&self, container: &str, spec: ExecSpec) -> impl Future<Output = Result<ExecSession>> + Send;

    /// Starts a command with its standard input attached; returns the session
    /// and the writer to its stdin (drop or shut it down to send EOF).
    fn exec_with_stdin(
        &self,
        container: &str,
        spec: ExecSpec,
    ) -> impl Future<Output = Result<(ExecSession, Pin<Box<dyn tokio::io::AsyncWrite + Send>>)>> + Send;

    /// The exit code of a finished exec (`None` while it runs).
    fn exec_exit_code(&self, exec_id: &str) -> impl Future<Output = Result<Option<i64>>> + Send;

    /// Lifecycle events of containers carrying `selector`'s labels. The stream
    /// ends or errors when the engine goes away; callers reconnect.
    fn events(&self, selector: &HashMap<String, String>) -> BoxStream<Result<RuntimeEvent>>;
}
