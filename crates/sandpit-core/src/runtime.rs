//! The engine that runs sandboxes, behind one object-safe trait that speaks
//! sandboxes, not containers: the lifecycle manager holds an
//! `Arc<dyn Runtime>` and never learns which engine it drives. Object names,
//! networks, subnets, host firewall rules and how files and commands reach a
//! sandbox all belong to the driver (`sandpit_docker::DockerRuntime` for a
//! Docker engine through bollard; [`fake::FakeRuntime`] in memory for tests);
//! a Swarm or Kubernetes driver implements the same trait in a crate of its
//! own, and says what it can do in [`Capabilities`].

pub mod fake;

use std::net::Ipv4Addr;
use std::pin::Pin;
use std::time::SystemTime;

use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::policy::{Isolation, NetworkMode};
use crate::sandbox::Sandbox;
use crate::Result;

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send + 'static>>;

/// The network a sandbox got, kept in its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub name: String,
    /// CIDR, e.g. `10.213.0.16/28`.
    pub subnet: String,
    pub gateway: Ipv4Addr,
    /// The sandbox's own address.
    pub address: Ipv4Addr,
    /// Where the egress proxy cannot know the sandbox by its address (on a
    /// swarm, its traffic reaches the proxy through a relay of its own):
    /// the SHA-256 (hex) of the token its relay presents. Only the hash is
    /// kept; the token itself lives in the relay's service alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_key: Option<String>,
}

/// What [`Runtime::provision`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    pub container_id: String,
    pub network: Option<NetworkInfo>,
    /// The node it landed on, when the runtime places sandboxes itself
    /// (a cluster's scheduler); `None`: [`Runtime::node`].
    pub node: Option<String>,
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
    /// The main process ended (with `exit_code` when the engine says).
    Died { container_id: String, sandbox_id: String, exit_code: Option<i64> },
    /// The kernel OOM killer struck inside the container.
    Oom { container_id: String, sandbox_id: String },
    /// The sandbox is gone with the node it ran on (the node died or left
    /// the cluster), or was stopped because its node no longer may run it;
    /// `reason` says which, for the record.
    Lost { sandbox_id: String, reason: String },
}

#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// The daemon's name for this exec, unique: the runtime marks the
    /// command's processes with it, so that [`Runtime::exec_kill`] finds
    /// every one it started. `None`: not to be killed apart from its sandbox.
    pub tag: Option<String>,
    /// Attach standard input ([`ExecSession::input`]).
    pub stdin: bool,
    /// Run with a terminal of this size (output then comes as stdout only).
    pub tty: Option<TerminalSize>,
}

/// A terminal's size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub rows: u16,
    pub cols: u16,
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
    /// The command's standard input, when [`ExecSpec::stdin`] asked for it;
    /// shut it down to send the end of input.
    pub input: Option<Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
}

/// A TCP connection to a port on a sandbox's loopback, as a byte stream
/// each way: write to `input`, read `output`. Shutting `input` down sends
/// the end of the stream; `output` ends when the other side closes.
pub struct Connection {
    pub input: Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    pub output: BoxStream<Result<Vec<u8>>>,
}

/// One progress line of an image pull.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullProgress {
    pub status: String,
    pub layer: String,
    pub current: i64,
    pub total: i64,
}

/// What a runtime can do: the manager refuses what it cannot rather than
/// finding out half-way through a create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Network modes it can give a sandbox.
    pub network_modes: Vec<NetworkMode>,
    /// Isolation levels it can run sandboxes at now (an engine may gain or
    /// lose a runtime while the daemon runs).
    pub isolation: Vec<Isolation>,
    /// Levels it knows but cannot give now, and why (e.g. the engine has no
    /// runtime named `runsc`).
    pub unavailable: Vec<(Isolation, String)>,
    /// Confinement it applies to every sandbox beyond the common hardening
    /// (e.g. `seccomp`, `apparmor`), as the engine reports it.
    pub confinement: Vec<String>,
    /// Whether it can give an experiment's sandboxes one workspace that
    /// outlives each of them (a volume on one engine; not across nodes).
    pub workspaces: bool,
}

impl Capabilities {
    /// Why `isolation` cannot be had now; `None` when it can.
    pub fn why_not(&self, isolation: Isolation) -> Option<String> {
        if self.isolation.contains(&isolation) {
            return None;
        }
        let known = self.unavailable.iter().find(|(i, _)| *i == isolation).map(|(_, why)| why.clone());
        Some(known.unwrap_or_else(|| format!("this runtime has no '{isolation}' isolation")))
    }
}

/// An object a runtime made for this daemon instance, found by
/// [`Runtime::owned`]: reconcile decides whether it is a live sandbox's, a
/// leftover of an ended one, or an orphan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub kind: OwnedKind,
    /// The engine's id or name of the object.
    pub id: String,
    /// The sandbox it was made for, when it says.
    pub sandbox_id: Option<String>,
    /// For a container: whether its main process runs.
    pub running: bool,
    pub created: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnedKind {
    /// What runs a sandbox's processes.
    Sandbox,
    /// What a sandbox's network consists of.
    Network,
}

/// What [`Runtime::repair`] found out of place and put back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repair {
    /// Each repair, for the record.
    pub changes: Vec<String>,
    /// What was restored (e.g. subnets whose rules were incomplete).
    pub restored: Vec<String>,
}

#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// The engine's name in sandbox records.
    fn node(&self) -> &str;

    fn capabilities(&self) -> Capabilities;

    /// Reads again what the engine can do (e.g. a runtime registered since);
    /// reconcile calls it every pass.
    async fn refresh(&self) -> Result<()> {
        Ok(())
    }

    /// Makes sure `image` is present, pulling it if missing.
    async fn ensure_image(&self, image: &str) -> Result<()>;

    /// Pulls `image` if missing, reporting progress; ends once present.
    fn pull_image(&self, image: &str) -> BoxStream<Result<PullProgress>>;

    /// Makes and starts everything the sandbox needs (network, host rules,
    /// container) from its record. If any step fails, whatever was made is
    /// removed before the error is returned.
    async fn provision(&self, sandbox: &Sandbox) -> Result<Provisioned>;

    /// Kills (no grace) and removes everything the sandbox owns, found by
    /// its id whether or not its provisioning finished. Removing what is
    /// already gone succeeds.
    async fn destroy(&self, sandbox: &Sandbox) -> Result<()>;

    /// Stops the sandbox's processes at once (SIGKILL); its objects stay.
    /// A sandbox already stopped or gone is fine.
    async fn kill(&self, sandbox: &Sandbox) -> Result<()>;

    /// [`Runtime::kill`] for many sandboxes at one instant (expiry), each
    /// result in the order given. A runtime that can stop them with less
    /// than one call each does so.
    async fn kill_all(&self, sandboxes: &[Sandbox]) -> Vec<Result<()>> {
        futures_util::future::join_all(sandboxes.iter().map(|sb| self.kill(sb))).await
    }

    /// The state of the sandbox's main process; `None` if it does not exist.
    async fn status(&self, sandbox: &Sandbox) -> Result<Option<ContainerStatus>>;

    /// Takes over sandboxes an earlier process provisioned: whatever host
    /// state the runtime keeps for them (firewall rules) is known from now
    /// on and put in place, in one change. Idempotent. Called with the
    /// sandboxes' locks held and each of them live.
    async fn adopt(&self, sandboxes: &[Sandbox]) -> Result<()>;

    /// Stops keeping the host state of a sandbox another daemon sharing the
    /// store tore down (it removed that state itself), without touching it:
    /// otherwise this runtime would put back rules for a network that is
    /// gone, or that another sandbox now has. Idempotent.
    async fn disown(&self, _sandbox: &Sandbox) {}

    /// Every object this daemon instance owns on the engine.
    async fn owned(&self) -> Result<Vec<Owned>>;

    /// Removes an object [`Runtime::owned`] found (an orphan, or a leftover
    /// of an ended sandbox), with whatever goes with it.
    async fn remove_owned(&self, object: &Owned) -> Result<()>;

    /// Compares the host state of the sandboxes it knows (made or adopted)
    /// with what it should be, and puts back whatever someone else changed.
    /// Never undoes a [`Runtime::destroy`].
    async fn repair(&self) -> Result<Repair>;

    /// Yields soon after someone else changes what [`Runtime::repair`]
    /// fixes; ends when that cannot be watched (reconcile's interval then
    /// covers it).
    fn repair_needed(&self) -> BoxStream<()>;

    /// Starts a command in a running sandbox.
    async fn exec(&self, sandbox: &Sandbox, spec: ExecSpec) -> Result<ExecSession>;

    /// The exit code of a finished exec (`None` while it runs).
    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>>;
    /// Resizes the terminal of an exec started with [`ExecSpec::tty`].
    async fn exec_resize(&self, exec_id: &str, size: TerminalSize) -> Result<()>;
    /// Kills, at once, the command of the exec tagged `tag`
    /// ([`ExecSpec::tag`]) and every process it started, double forks
    /// included; how many there were (0 once it has ended).
    async fn exec_kill(&self, sandbox: &Sandbox, tag: &str) -> Result<u64>;

    /// Removes experiment `experiment`'s workspace, if it has one (no
    /// sandbox may be using it); whether there was one.
    async fn remove_workspace(&self, experiment: &str) -> Result<bool>;
    /// Opens a TCP connection to `port` on the sandbox's own loopback,
    /// whatever its network mode, without publishing anything on the host.
    async fn port_connect(&self, sandbox: &Sandbox, port: u16) -> Result<Connection>;
    /// Extracts the tar archive `archive` into directory `dir` of the
    /// sandbox, all of it or nothing (a failure leaves no partial file).
    async fn copy_in(&self, sandbox: &Sandbox, dir: &str, archive: BoxStream<Result<Vec<u8>>>) -> Result<()>;

    /// `path` in the sandbox as a tar archive; the stream ends with an error
    /// if archiving fails part-way.
    async fn copy_out(&self, sandbox: &Sandbox, path: &str) -> Result<BoxStream<Result<Vec<u8>>>>;

    /// Lifecycle events of this instance's sandboxes. The stream ends or
    /// errors when the engine goes away; callers reconnect.
    fn events(&self) -> BoxStream<Result<RuntimeEvent>>;
}
