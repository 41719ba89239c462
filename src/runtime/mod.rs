//! The container engine behind a small trait. [`docker::DockerRuntime`] drives
//! a Docker engine through bollard; the lifecycle manager is written against
//! [`Runtime`] alone, so a remote engine or an orchestrator can stand in later.

pub mod docker;
pub mod labels;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use futures_util::Stream;

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

    /// Creates and starts a container; returns its id. If start fails the
    /// container is removed before the error is returned.
    fn create(&self, spec: &ContainerSpec) -> impl Future<Output = Result<String>> + Send;

    /// Kills (no stop grace) and removes a container by id or name, and
    /// anything else it owns. Removing a missing container succeeds.
    fn remove(&self, container: &str) -> impl Future<Output = Result<()>> + Send;

    /// Every container (running or not) carrying all of `selector`'s labels.
    fn list(&self, selector: &HashMap<String, String>) -> impl Future<Output = Result<Vec<ManagedContainer>>> + Send;

    /// The container's process state; `None` if it does not exist.
    fn status(&self, container: &str) -> impl Future<Output = Result<Option<ContainerStatus>>> + Send;

    /// Starts a command in a running container.
    fn exec(&self, container: &str, spec: ExecSpec) -> impl Future<Output = Result<ExecSession>> + Send;

    /// The exit code of a finished exec (`None` while it runs).
    fn exec_exit_code(&self, exec_id: &str) -> impl Future<Output = Result<Option<i64>>> + Send;

    /// Lifecycle events of containers carrying `selector`'s labels. The stream
    /// ends or errors when the engine goes away; callers reconnect.
    fn events(&self, selector: &HashMap<String, String>) -> BoxStream<Result<RuntimeEvent>>;
}
