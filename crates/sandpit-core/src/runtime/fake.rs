//! An in-memory [`Runtime`] for tests: no engine, no network, no host rules.
//!
//! It behaves as the Docker driver does where the manager can tell: a
//! provision makes a "container" (an id, running) and, when the profile gives
//! the sandbox a network, a network named after the sandbox; destroy removes
//! both and succeeds on what is already gone; kill stops the main process
//! (exit 137) and reports [`RuntimeEvent::Died`], as Docker's `die` event
//! does; [`Runtime::owned`] lists both kinds of object with their creation
//! times; exec runs a handler (by default `echo`); copy-in keeps the archive's
//! bytes by directory and copy-out returns what is kept at a path.
//!
//! Tests steer it:
//! - faults: [`FakeRuntime::fail_next`] makes the next calls of an [`Op`]
//!   fail ([`Fault::Unavailable`] as an engine away, [`Fault::Docker`] as an
//!   engine refusing), [`FakeRuntime::fail_on`] makes every call of an op on
//!   one sandbox or object fail until [`FakeRuntime::heal`];
//! - [`FakeRuntime::delay`] makes each call of an op take that long (tokio
//!   time: instant and exact under a paused clock);
//! - what happens behind the daemon's back: [`FakeRuntime::vanish`],
//!   [`FakeRuntime::exit_main`], [`FakeRuntime::plant`] (an object, e.g. an
//!   orphan of a given age), [`FakeRuntime::break_events`];
//! - [`FakeRuntime::calls`] counts calls per op (failed ones included).
//!
//! Everything is decided when a call starts, under one lock, so a test that
//! does the same things sees the same results.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::broadcast;

use super::{
    BoxStream, Capabilities, Connection, ContainerStatus, ExecChunk, ExecSession, ExecSpec, NetworkInfo, Owned,
    OwnedKind, Provisioned, PullProgress, Repair, Runtime, RuntimeEvent, TerminalSize,
};
use crate::policy::{Isolation, NetworkMode};
use crate::sandbox::Sandbox;
use crate::{Error, Result};

/// The operations of the [`Runtime`] trait, for faults, delays and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    EnsureImage,
    PullImage,
    Provision,
    Destroy,
    Kill,
    /// One batch of kills (each then counted as a [`Op::Kill`]).
    KillAll,
    Status,
    Adopt,
    Owned,
    RemoveOwned,
    Repair,
    Exec,
    ExecExitCode,
    ExecKill,
    ExecResize,
    PortConnect,
    RemoveWorkspace,
    CopyIn,
    CopyOut,
    Events,
}

impl Op {
    /// The name a Docker error gives the operation.
    pub fn name(self) -> &'static str {
        match self {
            Op::EnsureImage => "inspect image",
            Op::PullImage => "pull image",
            Op::Provision => "create container",
            Op::Destroy => "remove container",
            Op::Kill => "kill container",
            Op::KillAll => "kill containers",
            Op::Status => "inspect container",
            Op::Adopt => "adopt",
            Op::Owned => "list containers",
            Op::RemoveOwned => "remove object",
            Op::Repair => "repair",
            Op::Exec => "exec",
            Op::ExecExitCode => "inspect exec",
            Op::ExecKill => "kill exec",
            Op::PortConnect => "port connect",
            Op::ExecResize => "resize exec",
            Op::RemoveWorkspace => "remove volume",
            Op::CopyIn => "copy in",
            Op::CopyOut => "copy out",
            Op::Events => "events",
        }
    }
}

/// How an injected failure looks to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The engine cannot be reached: [`Error::Unavailable`].
    Unavailable,
    /// The engine answered with an error: [`Error::Docker`].
    Docker,
}

impl Fault {
    pub fn error(self, op: Op) -> Error {
        match self {
            Fault::Unavailable => Error::Unavailable(format!("{}: injected by the fake runtime", op.name())),
            Fault::Docker => Error::Docker { op: op.name(), message: "injected by the fake runtime (HTTP 500)".into() },
        }
    }
}

/// What an exec prints, then its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecScript {
    pub output: Vec<ExecChunk>,
    pub exit_code: i64,
}

/// Decides what an exec does from the sandbox and the command.
pub type ExecHandler = Arc<dyn Fn(&Sandbox, &ExecSpec) -> ExecScript + Send + Sync>;

/// The default handler: `echo ARGS` prints its arguments; anything else is
/// not found (exit 127), as in a shell.
pub fn echo(_: &Sandbox, spec: &ExecSpec) -> ExecScript {
    match spec.command.split_first() {
        Some((cmd, args)) if cmd == "echo" => {
            ExecScript { output: vec![ExecChunk::Stdout(format!("{}\n", args.join(" ")).into_bytes())], exit_code: 0 }
        }
        _ => ExecScript {
            output: vec![ExecChunk::Stderr(format!("{}: command not found\n", spec.command.join(" ")).into_bytes())],
            exit_code: 127,
        },
    }
}

struct Container {
    sandbox_id: Option<String>,
    running: bool,
    exit_code: Option<i64>,
    oom_killed: bool,
    created: SystemTime,
}

struct Network {
    sandbox_id: Option<String>,
    created: SystemTime,
}

#[derive(Default)]
struct State {
    seq: u64,
    /// By container id.
    containers: BTreeMap<String, Container>,
    /// By name.
    networks: BTreeMap<String, Network>,
    missing_images: BTreeSet<String>,
    /// Isolation levels it cannot give, and why.
    lost_isolation: Vec<(Isolation, String)>,
    next_faults: HashMap<Op, VecDeque<Fault>>,
    target_faults: HashMap<(Op, String), Fault>,
    delays: HashMap<Op, Duration>,
    calls: HashMap<Op, usize>,
    debris: bool,
    adopted: Vec<String>,
    repairs: VecDeque<Repair>,
    /// Exit codes of execs by id, `None` while their output is being read.
    execs: HashMap<String, Option<i64>>,
    /// Exec ids by their tag.
    exec_tags: HashMap<String, String>,
    /// Tags of the execs killed, in order.
    exec_kills: Vec<String>,
    /// Experiments with a workspace (made by the first sandbox of a
    /// profile with `workspace`).
    workspaces: Vec<String>,
    /// Bytes by (sandbox id, path).
    files: BTreeMap<(String, String), Vec<u8>>,
    handler: Option<ExecHandler>,
    /// Allowlist sandboxes' networks carry an egress relay key (as on a
    /// swarm): `relay-<seq>`.
    relay_keys: bool,
}

impl State {
    /// The container of a sandbox: by its recorded id, else by the sandbox it names.
    fn container_of(&self, sb_id: &str, container_id: Option<&str>) -> Option<String> {
        container_id.filter(|c| self.containers.contains_key(*c)).map(String::from).or_else(|| {
            self.containers.iter().find(|(_, c)| c.sandbox_id.as_deref() == Some(sb_id)).map(|(id, _)| id.clone())
        })
    }

    fn remove_sandbox(&mut self, sb_id: &str, container_id: Option<&str>) {
        if let Some(c) = container_id {
            self.containers.remove(c);
        }
        self.containers.retain(|_, c| c.sandbox_id.as_deref() != Some(sb_id));
        self.networks.remove(&network_name(sb_id));
        self.files.retain(|(s, _), _| s != sb_id);
    }
}

fn network_name(sb_id: &str) -> String {
    format!("sandpit-{sb_id}")
}

#[derive(Debug, Clone)]
enum Signal {
    Event(RuntimeEvent),
    Break(String),
}

/// The fake runtime; see the module documentation.
pub struct FakeRuntime {
    node: String,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Signal>,
    host_changes: broadcast::Sender<()>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime::new()
    }
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        FakeRuntime {
            node: "fake".to_string(),
            state: Arc::new(Mutex::new(State::default())),
            events: broadcast::channel(1024).0,
            host_changes: broadcast::channel(16).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- steering ---------------------------------------------------------

    /// The next `n` calls of `op` (on anything) fail with `fault`, after
    /// those already queued.
    pub fn fail_next(&self, op: Op, n: usize, fault: Fault) {
        self.lock().next_faults.entry(op).or_default().extend(std::iter::repeat_n(fault, n));
    }

    /// Every call of `op` on `target` (a sandbox id; for
    /// [`Op::RemoveOwned`] an object id; for images the image) fails with
    /// `fault` until [`FakeRuntime::heal`].
    pub fn fail_on(&self, op: Op, target: &str, fault: Fault) {
        self.lock().target_faults.insert((op, target.to_string()), fault);
    }

    /// Ends a [`FakeRuntime::fail_on`].
    pub fn heal(&self, op: Op, target: &str) {
        self.lock().target_faults.remove(&(op, target.to_string()));
    }

    /// Every call of `op` takes `d` (tokio time) before it does anything; zero: no delay.
    pub fn delay(&self, op: Op, d: Duration) {
        self.lock().delays.insert(op, d);
    }

    /// How many times `op` was called, failed calls included.
    pub fn calls(&self, op: Op) -> usize {
        self.lock().calls.get(&op).copied().unwrap_or(0)
    }

    /// [`Runtime::ensure_image`] of `image` fails as a pull would.
    pub fn missing_image(&self, image: &str) {
        self.lock().missing_images.insert(image.to_string());
    }

    /// From now on it cannot give `isolation` (as an engine without the runtime).
    pub fn lose_isolation(&self, isolation: Isolation, why: &str) {
        self.lock().lost_isolation.push((isolation, why.to_string()));
    }

    /// Whether a failed provision leaves what it made behind (a stopped
    /// container and the network), as an engine that made them and then
    /// failed or timed out can: the manager must remove them.
    pub fn leave_debris_on_failed_provision(&self, yes: bool) {
        self.lock().debris = yes;
    }

    /// Execs run `handler` instead of [`echo`].
    pub fn set_exec_handler(&self, handler: impl Fn(&Sandbox, &ExecSpec) -> ExecScript + Send + Sync + 'static) {
        self.lock().handler = Some(Arc::new(handler));
    }

    /// Every exec prints `script`'s output and exits with its code.
    pub fn set_exec_output(&self, script: ExecScript) {
        self.set_exec_handler(move |_, _| script.clone());
    }

    /// The next [`Runtime::repair`] reports `repair`.
    pub fn push_repair(&self, repair: Repair) {
        self.lock().repairs.push_back(repair);
    }

    /// Adds an object as if something made it on the engine: an orphan, a
    /// leftover, an object from before a restart.
    pub fn plant(&self, o: Owned) {
        let mut s = self.lock();
        match o.kind {
            OwnedKind::Sandbox => {
                let c = Container {
                    sandbox_id: o.sandbox_id,
                    running: o.running,
                    exit_code: (!o.running).then_some(0),
                    oom_killed: false,
                    created: o.created,
                };
                s.containers.insert(o.id, c);
            }
            OwnedKind::Network => {
                s.networks.insert(o.id, Network { sandbox_id: o.sandbox_id, created: o.created });
            }
        }
    }

    /// Everything of the sandbox disappears from the engine, as a `docker rm
    /// -f` behind the daemon's back (no event).
    pub fn vanish(&self, sandbox_id: &str) {
        self.lock().remove_sandbox(sandbox_id, None);
    }

    /// The sandbox's main process ends with `code`; [`RuntimeEvent::Died`] is reported.
    pub fn exit_main(&self, sandbox_id: &str, code: i64) {
        if let Some(container_id) = self.stop(sandbox_id, code, false) {
            self.emit(RuntimeEvent::Died { container_id, sandbox_id: sandbox_id.to_string(), exit_code: Some(code) });
        }
    }

    /// The sandbox is gone with its node (a cluster runtime's node died):
    /// [`RuntimeEvent::Lost`] is reported with `reason`; its container is
    /// left as it was, as a dead node's would be.
    /// From now on an allowlist sandbox's network carries an egress relay
    /// key, `relay-<n>`, as the Swarm driver's do.
    pub fn relay_egress(&self) {
        self.lock().relay_keys = true;
    }

    pub fn lose(&self, sandbox_id: &str, reason: &str) {
        self.emit(RuntimeEvent::Lost { sandbox_id: sandbox_id.to_string(), reason: reason.to_string() });
    }

    /// As [`FakeRuntime::exit_main`], with no event: only a reconcile can find out.
    pub fn exit_main_unseen(&self, sandbox_id: &str, code: i64) {
        self.stop(sandbox_id, code, false);
    }

    /// The OOM killer ends the main process: [`RuntimeEvent::Oom`] then [`RuntimeEvent::Died`].
    pub fn oom_kill(&self, sandbox_id: &str) {
        if let Some(container_id) = self.stop(sandbox_id, 137, true) {
            let sandbox_id = sandbox_id.to_string();
            self.emit(RuntimeEvent::Oom { container_id: container_id.clone(), sandbox_id: sandbox_id.clone() });
            self.emit(RuntimeEvent::Died { container_id, sandbox_id, exit_code: Some(137) });
        }
    }

    /// As [`FakeRuntime::oom_kill`] as gVisor sometimes reports it: `die`
    /// first, `oom` a moment after, and the container not marked OOM-killed.
    pub fn oom_kill_reported_late(&self, sandbox_id: &str) {
        if let Some(container_id) = self.stop(sandbox_id, 137, false) {
            let sandbox_id = sandbox_id.to_string();
            self.emit(RuntimeEvent::Died {
                container_id: container_id.clone(),
                sandbox_id: sandbox_id.clone(),
                exit_code: Some(137),
            });
            self.emit(RuntimeEvent::Oom { container_id, sandbox_id });
        }
    }

    /// Every open event stream yields an error and ends, as when the engine restarts.
    pub fn break_events(&self, reason: &str) {
        let _ = self.events.send(Signal::Break(reason.to_string()));
    }

    /// Someone changed host state: [`Runtime::repair_needed`] streams yield.
    pub fn host_changed(&self) {
        let _ = self.host_changes.send(());
    }

    // ---- inspection -------------------------------------------------------

    /// What [`Runtime::owned`] would list, without counting a call.
    pub fn objects(&self) -> Vec<Owned> {
        let s = self.lock();
        let containers = s.containers.iter().map(|(id, c)| Owned {
            kind: OwnedKind::Sandbox,
            id: id.clone(),
            sandbox_id: c.sandbox_id.clone(),
            running: c.running,
            created: c.created,
        });
        let networks = s.networks.iter().map(|(name, n)| Owned {
            kind: OwnedKind::Network,
            id: name.clone(),
            sandbox_id: n.sandbox_id.clone(),
            running: false,
            created: n.created,
        });
        containers.chain(networks).collect()
    }

    /// The objects that name `sandbox_id`.
    pub fn objects_of(&self, sandbox_id: &str) -> Vec<Owned> {
        self.objects().into_iter().filter(|o| o.sandbox_id.as_deref() == Some(sandbox_id)).collect()
    }

    /// The state of the sandbox's container, if it has one.
    pub fn status_of(&self, sandbox_id: &str) -> Option<ContainerStatus> {
        let s = self.lock();
        let id = s.container_of(sandbox_id, None)?;
        s.containers.get(&id).map(|c| ContainerStatus {
            running: c.running,
            exit_code: c.exit_code,
            oom_killed: c.oom_killed,
        })
    }

    /// Whether the sandbox's main process runs.
    pub fn is_running(&self, sandbox_id: &str) -> bool {
        self.status_of(sandbox_id).is_some_and(|s| s.running)
    }

    /// Ids of the sandboxes passed to [`Runtime::adopt`], in order, every call.
    pub fn adopted(&self) -> Vec<String> {
        self.lock().adopted.clone()
    }

    /// Puts `bytes` at `path` in the sandbox, for copy-out.
    pub fn put_file(&self, sandbox_id: &str, path: &str, bytes: &[u8]) {
        self.lock().files.insert((sandbox_id.to_string(), path.to_string()), bytes.to_vec());
    }

    /// Tags of the execs [`Runtime::exec_kill`] was asked to kill, in order.
    pub fn exec_kills(&self) -> Vec<String> {
        self.lock().exec_kills.clone()
    }

    /// What copy-in put at `dir` in the sandbox (the archive's bytes).
    pub fn file(&self, sandbox_id: &str, path: &str) -> Option<Vec<u8>> {
        self.lock().files.get(&(sandbox_id.to_string(), path.to_string())).cloned()
    }

    // ---- internals --------------------------------------------------------

    /// Counts a call and decides its fate: the fault it meets, if any, after its delay.
    async fn enter(&self, op: Op, target: &str) -> Result<()> {
        let (delay, fault) = self.decide(op, target);
        if let Some(d) = delay.filter(|d| !d.is_zero()) {
            tokio::time::sleep(d).await;
        }
        fault.map_or(Ok(()), |f| Err(f.error(op)))
    }

    fn decide(&self, op: Op, target: &str) -> (Option<Duration>, Option<Fault>) {
        let mut s = self.lock();
        *s.calls.entry(op).or_default() += 1;
        let fault = match s.target_faults.get(&(op, target.to_string())) {
            Some(f) => Some(*f),
            None => s.next_faults.get_mut(&op).and_then(VecDeque::pop_front),
        };
        (s.delays.get(&op).copied(), fault)
    }

    fn emit(&self, e: RuntimeEvent) {
        // No receivers is fine: nobody follows events.
        let _ = self.events.send(Signal::Event(e));
    }

    /// Stops the sandbox's main process; its container id if it was running.
    fn stop(&self, sandbox_id: &str, code: i64, oom: bool) -> Option<String> {
        let mut s = self.lock();
        let id = s.container_of(sandbox_id, None)?;
        let c = s.containers.get_mut(&id)?;
        if !c.running {
            return None;
        }
        c.running = false;
        c.exit_code = Some(code);
        c.oom_killed |= oom;
        Some(id)
    }

    /// Makes a sandbox's container (and network); its id and network.
    fn make(&self, sb: &Sandbox, running: bool) -> Provisioned {
        let mut s = self.lock();
        s.seq += 1;
        let n = s.seq;
        let now = SystemTime::now();
        let container_id = format!("fake-{n:06}");
        s.containers.insert(
            container_id.clone(),
            Container {
                sandbox_id: Some(sb.id.clone()),
                running,
                exit_code: (!running).then_some(0),
                oom_killed: false,
                created: now,
            },
        );
        let network = sb.profile.network.mode.has_network().then(|| {
            let name = network_name(&sb.id);
            s.networks.insert(name.clone(), Network { sandbox_id: Some(sb.id.clone()), created: now });
            // A /28 of 10.213.0.0/16 per sandbox, as the driver's pool hands out.
            let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + ((n as u32 % 4096) << 4);
            NetworkInfo {
                name,
                subnet: format!("{}/28", Ipv4Addr::from(base)),
                gateway: Ipv4Addr::from(base + 1),
                address: Ipv4Addr::from(base + 2),
                egress_key: (s.relay_keys && sb.profile.network.mode == crate::policy::NetworkMode::Allowlist)
                    .then(|| format!("relay-{n}")),
            }
        });
        Provisioned { container_id, network, node: None }
    }

    /// A running sandbox's container, or the error an exec or transfer gets.
    fn running_container(&self, sb: &Sandbox) -> Result<String> {
        let Some(id) = sb.container_id.clone() else {
            return Err(Error::FailedPrecondition(format!("sandbox '{}' has no container yet", sb.id)));
        };
        match self.lock().containers.get(&id) {
            Some(c) if c.running => Ok(id),
            Some(_) => Err(Error::FailedPrecondition(format!(
                "the sandbox's container is not running (container {id} is not running)"
            ))),
            None => Err(Error::FailedPrecondition(format!(
                "the sandbox's container is not running (no such container: {id})"
            ))),
        }
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn node(&self) -> &str {
        &self.node
    }

    fn capabilities(&self) -> Capabilities {
        let unavailable = self.lock().lost_isolation.clone();
        Capabilities {
            network_modes: vec![NetworkMode::None, NetworkMode::Isolated, NetworkMode::Allowlist, NetworkMode::Open],
            isolation: Isolation::ALL.into_iter().filter(|i| !unavailable.iter().any(|(u, _)| u == i)).collect(),
            unavailable,
            confinement: vec!["seccomp".to_string()],
            workspaces: true,
        }
    }

    async fn ensure_image(&self, image: &str) -> Result<()> {
        self.enter(Op::EnsureImage, image).await?;
        if self.lock().missing_images.contains(image) {
            return Err(Error::ImageUnavailable { image: image.to_string(), reason: "not in the fake runtime".into() });
        }
        Ok(())
    }

    fn pull_image(&self, image: &str) -> BoxStream<Result<PullProgress>> {
        let (_, fault) = self.decide(Op::PullImage, image);
        let item = match fault {
            Some(f) => Err(f.error(Op::PullImage)),
            None => {
                self.lock().missing_images.remove(image);
                Ok(PullProgress { status: format!("Downloaded {image}"), ..Default::default() })
            }
        };
        futures_util::stream::once(std::future::ready(item)).boxed()
    }

    async fn provision(&self, sb: &Sandbox) -> Result<Provisioned> {
        if let Err(e) = self.enter(Op::Provision, &sb.id).await {
            let debris = self.lock().debris;
            if debris {
                self.make(sb, false);
            }
            return Err(e);
        }
        if self.lock().container_of(&sb.id, None).is_some() {
            return Err(Error::Docker {
                op: Op::Provision.name(),
                message: format!("Conflict. The container name \"/sandpit-{}\" is already in use (HTTP 409)", sb.id),
            });
        }
        if sb.profile.workspace && !sb.experiment.is_empty() {
            let mut s = self.lock();
            if !s.workspaces.contains(&sb.experiment) {
                s.workspaces.push(sb.experiment.clone());
            }
        }
        Ok(self.make(sb, true))
    }

    async fn destroy(&self, sb: &Sandbox) -> Result<()> {
        self.enter(Op::Destroy, &sb.id).await?;
        self.lock().remove_sandbox(&sb.id, sb.container_id.as_deref());
        Ok(())
    }

    async fn kill(&self, sb: &Sandbox) -> Result<()> {
        self.enter(Op::Kill, &sb.id).await?;
        let died = {
            let mut s = self.lock();
            let id = s.container_of(&sb.id, sb.container_id.as_deref());
            match id.and_then(|id| s.containers.get_mut(&id).map(|c| (id, c))) {
                Some((id, c)) if c.running => {
                    c.running = false;
                    c.exit_code = Some(137);
                    Some(id)
                }
                _ => None,
            }
        };
        if let Some(container_id) = died {
            self.emit(RuntimeEvent::Died { container_id, sandbox_id: sb.id.clone(), exit_code: Some(137) });
        }
        Ok(())
    }

    async fn kill_all(&self, sandboxes: &[Sandbox]) -> Vec<Result<()>> {
        let (delay, fault) = self.decide(Op::KillAll, "");
        if let Some(d) = delay.filter(|d| !d.is_zero()) {
            tokio::time::sleep(d).await;
        }
        if let Some(f) = fault {
            return sandboxes.iter().map(|_| Err(f.error(Op::KillAll))).collect();
        }
        futures_util::future::join_all(sandboxes.iter().map(|sb| self.kill(sb))).await
    }

    async fn status(&self, sb: &Sandbox) -> Result<Option<ContainerStatus>> {
        self.enter(Op::Status, &sb.id).await?;
        let s = self.lock();
        let id = s.container_of(&sb.id, sb.container_id.as_deref());
        Ok(id.and_then(|id| s.containers.get(&id)).map(|c| ContainerStatus {
            running: c.running,
            exit_code: c.exit_code,
            oom_killed: c.oom_killed,
        }))
    }

    async fn adopt(&self, sandboxes: &[Sandbox]) -> Result<()> {
        self.enter(Op::Adopt, "").await?;
        self.lock().adopted.extend(sandboxes.iter().map(|s| s.id.clone()));
        Ok(())
    }

    async fn owned(&self) -> Result<Vec<Owned>> {
        self.enter(Op::Owned, "").await?;
        Ok(self.objects())
    }

    async fn remove_owned(&self, o: &Owned) -> Result<()> {
        self.enter(Op::RemoveOwned, &o.id).await?;
        let mut s = self.lock();
        match (o.kind, &o.sandbox_id) {
            // A sandbox's container, with the network named after the sandbox.
            (OwnedKind::Sandbox, Some(sb)) => {
                s.containers.remove(&o.id);
                s.networks.remove(&network_name(sb));
            }
            (OwnedKind::Sandbox, None) => {
                s.containers.remove(&o.id);
            }
            // A sandbox's network, with the sandbox's container.
            (OwnedKind::Network, Some(sb)) => {
                let sb = sb.clone();
                s.containers.retain(|_, c| c.sandbox_id.as_deref() != Some(&sb));
                s.networks.remove(&o.id);
            }
            (OwnedKind::Network, None) => {
                s.networks.remove(&o.id);
            }
        }
        Ok(())
    }

    async fn repair(&self) -> Result<Repair> {
        self.enter(Op::Repair, "").await?;
        Ok(self.lock().repairs.pop_front().unwrap_or_default())
    }

    fn repair_needed(&self) -> BoxStream<()> {
        let rx = self.host_changes.subscribe();
        futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => Some(((), rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .boxed()
    }

    async fn exec(&self, sb: &Sandbox, spec: ExecSpec) -> Result<ExecSession> {
        self.enter(Op::Exec, &sb.id).await?;
        self.running_container(sb)?;
        let (exec_id, script) = {
            let mut s = self.lock();
            s.seq += 1;
            let exec_id = format!("exec-{:06}", s.seq);
            s.execs.insert(exec_id.clone(), None);
            if let Some(tag) = &spec.tag {
                s.exec_tags.insert(tag.clone(), exec_id.clone());
            }
            let handler = s.handler.clone();
            drop(s);
            let script = match handler {
                Some(h) => h(sb, &spec),
                None => echo(sb, &spec),
            };
            (exec_id, script)
        };
        // The exit code is known once the output has been read to its end.
        let (state, id, code) = (Arc::clone(&self.state), exec_id.clone(), script.exit_code);
        let finished = futures_util::stream::once(async move {
            state.lock().unwrap_or_else(|p| p.into_inner()).execs.insert(id, Some(code));
        })
        .filter_map(|()| std::future::ready(None));
        let output = futures_util::stream::iter(script.output.into_iter().map(Ok)).chain(finished).boxed();
        Ok(ExecSession { exec_id, output, input: None })
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>> {
        self.enter(Op::ExecExitCode, exec_id).await?;
        self.lock().execs.get(exec_id).copied().ok_or_else(|| Error::not_found("exec", exec_id))
    }

    async fn exec_resize(&self, exec_id: &str, _size: TerminalSize) -> Result<()> {
        self.enter(Op::ExecResize, exec_id).await
    }

    async fn exec_kill(&self, sb: &Sandbox, tag: &str) -> Result<u64> {
        self.enter(Op::ExecKill, &sb.id).await?;
        let mut s = self.lock();
        s.exec_kills.push(tag.to_string());
        let Some(exec_id) = s.exec_tags.get(tag).cloned() else {
            return Ok(0);
        };
        match s.execs.get_mut(&exec_id) {
            Some(code @ None) => {
                *code = Some(137);
                Ok(1)
            }
            _ => Ok(0),
        }
    }

    async fn remove_workspace(&self, experiment: &str) -> Result<bool> {
        self.enter(Op::RemoveWorkspace, experiment).await?;
        let mut s = self.lock();
        let before = s.workspaces.len();
        s.workspaces.retain(|w| w != experiment);
        Ok(s.workspaces.len() != before)
    }

    /// An echo server on every port: what is written comes back.
    async fn port_connect(&self, sb: &Sandbox, _port: u16) -> Result<Connection> {
        self.enter(Op::PortConnect, &sb.id).await?;
        self.running_container(sb)?;
        let (ours, theirs) = tokio::io::duplex(64 << 10);
        let (mut their_read, mut their_write) = tokio::io::split(theirs);
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut their_read, &mut their_write).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut their_write).await;
        });
        let (read, write) = tokio::io::split(ours);
        let output = futures_util::stream::unfold(read, |mut r| async move {
            let mut buf = vec![0u8; 16 << 10];
            match tokio::io::AsyncReadExt::read(&mut r, &mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(buf), r))
                }
            }
        })
        .boxed();
        Ok(Connection { input: Box::pin(write), output })
    }

    async fn copy_in(&self, sb: &Sandbox, dir: &str, mut archive: BoxStream<Result<Vec<u8>>>) -> Result<()> {
        self.enter(Op::CopyIn, &sb.id).await?;
        self.running_container(sb)?;
        // All or nothing: a stream that fails part-way leaves nothing.
        let mut bytes = Vec::new();
        while let Some(chunk) = archive.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        self.lock().files.insert((sb.id.clone(), dir.to_string()), bytes);
        Ok(())
    }

    async fn copy_out(&self, sb: &Sandbox, path: &str) -> Result<BoxStream<Result<Vec<u8>>>> {
        self.enter(Op::CopyOut, &sb.id).await?;
        self.running_container(sb)?;
        let Some(bytes) = self.file(&sb.id, path) else {
            return Err(Error::FailedPrecondition(format!(
                "copy-out {path} failed (tar exit 2): tar: {path}: No such file or directory"
            )));
        };
        let chunks: Vec<Result<Vec<u8>>> = bytes.chunks(32 * 1024).map(|c| Ok(c.to_vec())).collect();
        Ok(futures_util::stream::iter(chunks).boxed())
    }

    fn events(&self) -> BoxStream<Result<RuntimeEvent>> {
        let (_, fault) = self.decide(Op::Events, "");
        if let Some(f) = fault {
            return futures_util::stream::once(std::future::ready(Err(f.error(Op::Events)))).boxed();
        }
        let rx = self.events.subscribe();
        futures_util::stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            loop {
                match rx.recv().await {
                    Ok(Signal::Event(e)) => return Some((Ok(e), Some(rx))),
                    Ok(Signal::Break(reason)) => return Some((Err(Error::Unavailable(reason)), None)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{admit, Classification, CreateSandbox, HostPolicy, Profile, ProfileSet};
    use crate::register::{Experiment, NewExperiment};

    fn sandbox(id: &str, mode: &str) -> Sandbox {
        let toml = format!("max_classification = \"OFFICIAL\"\nimages = [\"i\"]\nnetwork = {{ mode = \"{mode}\" }}\n");
        let p = Profile::parse(Path::new("p.toml"), &toml).unwrap();
        let n = NewExperiment {
            title: "t".into(),
            purpose: "p".into(),
            ai_tools: vec![],
            models: vec![],
            classification: Classification::Official,
            datasets: vec![],
            risks: vec![],
            planned_end: None,
            senior_responsible_owner: String::new(),
            phase: String::new(),
            function: String::new(),
            region: String::new(),
        };
        let e = Experiment::new("exp-1".into(), "o", "t", n, SystemTime::now()).unwrap();
        let req = CreateSandbox {
            experiment: "exp-1".into(),
            profile: "p".into(),
            classification: Classification::Official,
            ttl: None,
            image: None,
            datasets: vec![],
            resources: Default::default(),
        };
        let host = HostPolicy {
            max_classification: Classification::Official,
            datasets: vec![],
            min_ttl: Duration::ZERO,
            minimum_isolation: Default::default(),
            refuse_overdue_risk: None,
            dpia_required: None,
        };
        let plan = admit(&req, "o", "t", Some(&e), &ProfileSet::from_profiles([p]), &host, SystemTime::now()).unwrap();
        Sandbox::provisioning(id.into(), "fake".into(), plan)
    }

    #[tokio::test]
    async fn provisions_lists_kills_and_destroys() {
        let rt = FakeRuntime::new();
        let mut events = rt.events();
        let mut sb = sandbox("sb-1", "isolated");
        let p = rt.provision(&sb).await.unwrap();
        sb.container_id = Some(p.container_id.clone());
        assert_eq!(p.network.as_ref().unwrap().name, "sandpit-sb-1");
        assert!(rt.provision(&sb).await.is_err(), "one container per sandbox");
        let kinds: Vec<OwnedKind> = rt.owned().await.unwrap().iter().map(|o| o.kind).collect();
        assert_eq!(kinds, [OwnedKind::Sandbox, OwnedKind::Network]);
        assert!(rt.status(&sb).await.unwrap().unwrap().running);
        rt.kill(&sb).await.unwrap();
        let died = RuntimeEvent::Died { container_id: p.container_id, sandbox_id: "sb-1".into(), exit_code: Some(137) };
        assert_eq!(events.next().await.unwrap().unwrap(), died);
        assert_eq!(rt.status(&sb).await.unwrap().unwrap().exit_code, Some(137));
        rt.destroy(&sb).await.unwrap();
        rt.destroy(&sb).await.unwrap();
        assert!(rt.objects().is_empty() && rt.status(&sb).await.unwrap().is_none());
        assert_eq!((rt.calls(Op::Destroy), rt.calls(Op::Provision)), (2, 2));
        // No network for mode none.
        assert!(rt.provision(&sandbox("sb-2", "none")).await.unwrap().network.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn faults_delays_and_counts() {
        let rt = FakeRuntime::new();
        let sb = sandbox("sb-1", "none");
        rt.fail_next(Op::Destroy, 2, Fault::Docker);
        assert!(matches!(rt.destroy(&sb).await, Err(Error::Docker { op: "remove container", .. })));
        assert!(matches!(rt.destroy(&sb).await, Err(Error::Docker { .. })));
        rt.destroy(&sb).await.unwrap();
        rt.fail_on(Op::Kill, "sb-1", Fault::Unavailable);
        for _ in 0..3 {
            assert!(matches!(rt.kill(&sb).await, Err(Error::Unavailable(_))));
        }
        rt.kill(&sandbox("sb-2", "none")).await.unwrap();
        rt.heal(Op::Kill, "sb-1");
        rt.kill(&sb).await.unwrap();
        assert_eq!((rt.calls(Op::Destroy), rt.calls(Op::Kill)), (3, 5));
        rt.delay(Op::Provision, Duration::from_secs(30));
        let started = tokio::time::Instant::now();
        rt.provision(&sb).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        rt.fail_next(Op::Events, 1, Fault::Unavailable);
        assert!(rt.events().next().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn exec_copy_and_events_behind_the_back() {
        let rt = FakeRuntime::new();
        let mut sb = sandbox("sb-1", "none");
        let mut events = rt.events();
        sb.container_id = Some(rt.provision(&sb).await.unwrap().container_id);
        let spec = ExecSpec { command: vec!["echo".into(), "hi".into()], ..Default::default() };
        let mut session = rt.exec(&sb, spec.clone()).await.unwrap();
        assert_eq!(rt.exec_exit_code(&session.exec_id).await.unwrap(), None, "running until read");
        assert_eq!(session.output.next().await.unwrap().unwrap(), ExecChunk::Stdout(b"hi\n".to_vec()));
        assert!(session.output.next().await.is_none());
        assert_eq!(rt.exec_exit_code(&session.exec_id).await.unwrap(), Some(0));

        let archive = futures_util::stream::iter([Ok(b"ab".to_vec()), Ok(b"c".to_vec())]).boxed();
        rt.copy_in(&sb, "/work", archive).await.unwrap();
        assert_eq!(rt.file("sb-1", "/work").unwrap(), b"abc");
        let broken = futures_util::stream::iter([Ok(b"x".to_vec()), Err(Error::Cancelled("gone".into()))]).boxed();
        assert!(rt.copy_in(&sb, "/other", broken).await.is_err());
        assert!(rt.file("sb-1", "/other").is_none(), "all or nothing");
        let out: Vec<Vec<u8>> = rt.copy_out(&sb, "/work").await.unwrap().map(|c| c.unwrap()).collect().await;
        assert_eq!(out.concat(), b"abc");
        assert!(rt.copy_out(&sb, "/missing").await.is_err());

        rt.exit_main("sb-1", 3);
        assert!(matches!(events.next().await.unwrap().unwrap(), RuntimeEvent::Died { .. }));
        assert_eq!(rt.status_of("sb-1").unwrap().exit_code, Some(3));
        assert!(matches!(rt.exec(&sb, spec).await, Err(Error::FailedPrecondition(_))));
        rt.break_events("engine restarted");
        assert!(events.next().await.unwrap().is_err());
        assert!(events.next().await.is_none());
        rt.vanish("sb-1");
        assert!(rt.objects().is_empty());
    }
}
