//! Docker Swarm as a sandbox runtime: each sandbox is a Swarm service of one
//! task that is never restarted, placed by Swarm's own scheduler on a node
//! accredited for its classification, with the profile's limits as both
//! reservations and limits.
//!
//! - The service is made through a manager's engine; the task's container
//!   is reached through its node's engine (`[[swarm.nodes]]`): exec,
//!   copies, port forwarding, kills and exit codes go there, each through a
//!   [`DockerRuntime`] of that node, exactly as on one host.
//! - Isolated sandboxes get an internal overlay network of their own.
//! - Allowlist sandboxes too, and a relay of their own on it
//!   (`sandpit-<id>-relay`, the helper's `relay`): a service on that
//!   overlay and on the swarm's egress network, which takes the sandbox's
//!   proxy connections to the daemon's egress proxy with a token only that
//!   relay holds (the proxy knows the sandbox by the token's hash, kept in
//!   the sandbox's record). The sandbox reaches nothing else: its overlay
//!   is internal, and its relay is the only other thing on it.
//! - Placement: a node runs a sandbox only if it carries the labels
//!   `sandpit.classification.<CLASSIFICATION>=true` and
//!   `sandpit.isolation.<level>=true`, as constraints Swarm enforces; the
//!   node watcher stops (and reports lost) a sandbox whose node loses them.
//! - Node loss: the watcher reads the manager's node list every
//!   `node_check`; tasks of this instance on a node Swarm marks `down`
//!   (or that left the swarm) are reported [`RuntimeEvent::Lost`]. A node
//!   `unknown` (as all are just after a manager restarts) is not a loss.
//! - gVisor: a service cannot name a runtime, so gVisor sandboxes go to
//!   nodes labelled `sandpit.isolation.gvisor=true` whose engine's default
//!   runtime is runsc, checked at every refresh and after each placement.
//! - What a Swarm service cannot be asked for on engine API 1.41
//!   (no-new-privileges, memory+swap, the network modes `none` and `open`) is
//!   either closed another way (the helper sets no_new_privs on every
//!   process it starts) or refused ([`Capabilities`]); the README has the
//!   table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, Limit, Mount as DockerMount, MountTmpfsOptions, MountType as MountTypeEnum,
    NetworkAttachmentConfig, NetworkCreateRequest, NodeState, ResourceObject, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, Task, TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecDnsConfig,
    TaskSpecLogDriver, TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
    TaskState,
};
use bollard::query_parameters::{ListNodesOptions, ListServicesOptionsBuilder, ListTasksOptionsBuilder};
use bollard::Docker;
use futures_util::StreamExt;

use crate::driver::{container_name, network_name};
use crate::{host_pids_limit, is_not_found, label_filters, labels, map_err, DockerRuntime, SandboxDefaults};
use sandpit_core::policy::{Isolation as Level, NetworkMode};
use sandpit_core::runtime::{
    BoxStream, Capabilities, Connection, ContainerStatus, ExecSession, ExecSpec, NetworkInfo, Owned, OwnedKind,
    Provisioned, PullProgress, Repair, Runtime, RuntimeEvent, TerminalSize,
};
use sandpit_core::sandbox::{Sandbox, DATASETS_DIR};
use sandpit_core::{Error, Result};

/// The node label that accredits a node for a classification:
/// `sandpit.classification.OFFICIAL-SENSITIVE=true`.
pub fn classification_label(c: sandpit_core::policy::Classification) -> String {
    format!("sandpit.classification.{c}")
}

/// The node label that says a node can run sandboxes at an isolation level.
pub fn isolation_label(level: Level) -> String {
    format!("sandpit.isolation.{level}")
}

/// Swarm's placement constraints for a sandbox: both labels, `true`.
pub fn constraints(sb: &Sandbox) -> Vec<String> {
    [classification_label(sb.classification), isolation_label(sb.profile.isolation)]
        .into_iter()
        .map(|l| format!("node.labels.{l}==true"))
        .collect()
}

/// How the Swarm driver watches and waits.
#[derive(Debug, Clone)]
pub struct SwarmTimings {
    /// How long a sandbox's task may take to run before its create fails.
    pub start_timeout: Duration,
    /// How often the manager's node list is read (node loss is reported
    /// within Swarm's own detection plus this).
    pub node_check: Duration,
}

/// A Swarm node as the driver sees it.
#[derive(Debug, Clone)]
struct NodeView {
    hostname: String,
    ready: bool,
    /// Swarm has marked it down (missed heartbeats, or it left). Not the
    /// same as not ready: `unknown` (e.g. just after a manager restart,
    /// until the node's next heartbeat) and `disconnected` are not losses.
    down: bool,
    state: String,
    labels: HashMap<String, String>,
}

impl NodeView {
    /// Whether the node carries `label=true`.
    fn has(&self, label: &str) -> bool {
        self.labels.get(label).is_some_and(|v| v == "true")
    }

    fn accredits(&self, sb: &Sandbox) -> bool {
        self.has(&classification_label(sb.classification)) && self.has(&isolation_label(sb.profile.isolation))
    }
}

/// Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct SwarmRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    /// Its client reaches a manager of the swarm.
    manager: DockerRuntime,
    /// Each node's engine, by the node's hostname in the swarm.
    nodes: BTreeMap<String, DockerRuntime>,
    /// The daemon's name for the swarm, until a sandbox is placed.
    node: String,
    instance: String,
    sandboxes: SandboxDefaults,
    timings: SwarmTimings,
    /// Node id to hostname, as last read.
    names: RwLock<HashMap<String, String>>,
    /// Nodes labelled for gVisor whose engine's default runtime is runsc,
    /// as of the last refresh; empty: gVisor unavailable.
    gvisor_nodes: RwLock<Vec<String>>,
    /// The daemon's egress proxy as the nodes reach it; `None`: allowlist
    /// sandboxes are refused.
    egress: Option<std::net::SocketAddr>,
    /// Held while the swarm's egress network is looked up or made.
    egress_network: tokio::sync::Mutex<()>,
}

/// The port an allowlist sandbox's relay listens on, on its overlay.
pub const RELAY_PORT: u16 = 3128;

/// The service of an allowlist sandbox's egress relay.
pub fn relay_name(id: &str) -> String {
    format!("{}-relay", container_name(id))
}

/// The swarm's egress network of a daemon instance: relays reach the
/// daemon's proxy through it (an overlay that is not internal).
pub fn egress_network_name(instance: &str) -> String {
    format!("sandpit-egress-{}", &instance[..instance.len().min(12)])
}

/// Why gVisor cannot be had when no node gives it.
const NO_GVISOR: &str = "no ready node is labelled sandpit.isolation.gvisor=true with runsc as its engine's default \
     runtime (a Swarm service cannot choose its runtime on engine API 1.41)";

/// How long a removal waits for Swarm to let go of a sandbox's overlay.
const NETWORK_RELEASE: Duration = Duration::from_secs(10);

/// How long a create waits while Swarm finds no node with room before it
/// is refused `RESOURCE_EXHAUSTED`.
const FULL_GRACE: Duration = Duration::from_secs(2);

/// The node watcher reads placement (every task and its node's labels)
/// once in this many node checks.
const PLACEMENT_EVERY: u64 = 5;

/// A relay's limits: it only copies bytes. Its threads are pids (two per
/// connection, at most 128 connections).
const RELAY_CPUS: i64 = 250_000_000;
const RELAY_MEMORY: i64 = 64 << 20;
const RELAY_PIDS: i64 = 512;

fn log_driver() -> TaskSpecLogDriver {
    TaskSpecLogDriver {
        name: Some("json-file".into()),
        options: Some(HashMap::from([
            ("max-size".to_string(), crate::LOG_MAX_SIZE.to_string()),
            ("max-file".to_string(), "1".to_string()),
        ])),
    }
}

/// An empty read-only tmpfs over each of an image's `VOLUME`s, so that
/// the engine makes no volume for them.
fn masks(volumes: &[String]) -> impl Iterator<Item = DockerMount> + '_ {
    volumes.iter().map(|v| DockerMount {
        target: Some(v.clone()),
        typ: Some(MountTypeEnum::TMPFS),
        read_only: Some(true),
        tmpfs_options: Some(MountTmpfsOptions { size_bytes: Some(4096), ..Default::default() }),
        ..Default::default()
    })
}

/// `source` on the node, read-only at `target`.
fn bind(source: &std::path::Path, target: &str) -> DockerMount {
    DockerMount {
        target: Some(target.to_string()),
        source: Some(source.display().to_string()),
        typ: Some(MountTypeEnum::BIND),
        read_only: Some(true),
        ..Default::default()
    }
}

fn one_replica() -> ServiceSpecMode {
    ServiceSpecMode { replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }), ..Default::default() }
}

/// The engine states of a task that can still become running.
fn on_its_way(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::NEW
            | TaskState::ALLOCATED
            | TaskState::PENDING
            | TaskState::ASSIGNED
            | TaskState::ACCEPTED
            | TaskState::PREPARING
            | TaskState::READY
            | TaskState::STARTING
    )
}

fn task_state(t: &Task) -> TaskState {
    t.status.as_ref().and_then(|s| s.state).unwrap_or(TaskState::NEW)
}

fn task_container(t: &Task) -> Option<String> {
    t.status.as_ref()?.container_status.as_ref()?.container_id.clone().filter(|c| !c.is_empty())
}

fn task_sandbox(t: &Task) -> Option<String> {
    t.spec.as_ref()?.container_spec.as_ref()?.labels.as_ref()?.get(labels::SANDBOX).cloned()
}

/// The sandbox whose egress relay task `t` is.
fn task_relay(t: &Task) -> Option<String> {
    t.spec.as_ref()?.container_spec.as_ref()?.labels.as_ref()?.get(labels::RELAY_FOR).cloned()
}

fn task_instance(t: &Task) -> Option<&str> {
    t.spec.as_ref()?.container_spec.as_ref()?.labels.as_ref()?.get(labels::INSTANCE).map(String::as_str)
}

fn bollard_time(t: Option<&bollard::models::BollardDate>) -> SystemTime {
    t.and_then(|d| sandpit_core::time::parse_rfc3339(&d.to_string())).unwrap_or(UNIX_EPOCH)
}

/// Why node `n` may no longer run task `t`: a node label its placement
/// constraints ([`constraints`]) need that the node lacks; `None` when it
/// has them all.
fn misplaced(t: &Task, n: &NodeView) -> Option<String> {
    let constraints = t.spec.as_ref()?.placement.as_ref()?.constraints.as_ref()?;
    let needed: Vec<&str> =
        constraints.iter().filter_map(|c| c.strip_prefix("node.labels.")?.strip_suffix("==true")).collect();
    let lacking: Vec<String> = needed.iter().filter(|l| !n.has(l)).map(|l| format!("{l}=true")).collect();
    (!lacking.is_empty()).then(|| format!("its node {} is no longer labelled {}", n.hostname, lacking.join(" and ")))
}

/// The newest task of a service's tasks.
fn newest(mut tasks: Vec<Task>) -> Option<Task> {
    tasks.sort_by_key(|t| bollard_time(t.created_at.as_ref()));
    tasks.pop()
}

impl SwarmRuntime {
    /// `manager`: a runtime whose engine is a manager of the swarm;
    /// `nodes`: each node's engine by its hostname in the swarm. The
    /// helper is required: it is how every process gets no_new_privs.
    pub fn new(
        manager: DockerRuntime,
        nodes: BTreeMap<String, DockerRuntime>,
        node: String,
        instance: String,
        sandboxes: SandboxDefaults,
        timings: SwarmTimings,
    ) -> Result<SwarmRuntime> {
        if sandboxes.helper.is_none() {
            return Err(Error::FailedPrecondition(
                "the Swarm driver needs the helper (it sets no_new_privs on every sandbox process)".into(),
            ));
        }
        Ok(SwarmRuntime {
            inner: Arc::new(Inner {
                manager,
                nodes,
                node,
                instance,
                sandboxes,
                timings,
                names: RwLock::default(),
                gvisor_nodes: RwLock::default(),
                egress: None,
                egress_network: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Allowlist sandboxes get a relay to the daemon's egress proxy at
    /// `proxy` (as the nodes reach it); `None` refuses them.
    pub fn with_egress(mut self, proxy: Option<std::net::SocketAddr>) -> SwarmRuntime {
        Arc::get_mut(&mut self.inner).expect("with_egress is called before the runtime is shared").egress = proxy;
        self
    }

    async fn client(&self) -> Result<Docker> {
        self.inner.manager.docker().await
    }

    /// The engine of node `name`.
    fn endpoint(&self, name: &str) -> Result<&DockerRuntime> {
        self.inner.nodes.get(name).ok_or_else(|| {
            Error::FailedPrecondition(format!("node '{name}' has no engine endpoint in [[swarm.nodes]]"))
        })
    }

    /// Every node, by id.
    async fn nodes(&self, d: &Docker) -> Result<HashMap<String, NodeView>> {
        let list = d.list_nodes(None::<ListNodesOptions>).await.map_err(|e| map_err("list nodes", e))?;
        let mut out = HashMap::new();
        for n in list {
            let Some(id) = n.id else { continue };
            let hostname = n.description.and_then(|d| d.hostname).unwrap_or_else(|| id.clone());
            let status = n.status.unwrap_or_default();
            let state = status.state.unwrap_or(NodeState::UNKNOWN);
            out.insert(
                id,
                NodeView {
                    hostname,
                    ready: state == NodeState::READY,
                    down: state == NodeState::DOWN,
                    state: format!("{state}{}", status.message.map(|m| format!(" ({m})")).unwrap_or_default()),
                    labels: n.spec.and_then(|s| s.labels).unwrap_or_default(),
                },
            );
        }
        *self.inner.names.write().unwrap_or_else(|p| p.into_inner()) =
            out.iter().map(|(id, n)| (id.clone(), n.hostname.clone())).collect();
        Ok(out)
    }

    /// The runtime node `name`'s engine runs containers under by default,
    /// and whether it is gVisor's runsc (by the program's name).
    async fn default_runtime(&self, name: &str) -> Result<(String, bool)> {
        let info = self.endpoint(name)?.docker().await?.info().await.map_err(|e| map_err("info", e))?;
        let default = info.default_runtime.unwrap_or_default();
        let path = info.runtimes.unwrap_or_default().remove(&default).and_then(|r| r.path).unwrap_or_default();
        let runsc = std::path::Path::new(&path).file_name().is_some_and(|f| f == "runsc");
        Ok((default, runsc))
    }

    /// The ready nodes that give gVisor: labelled for it, and running
    /// containers under runsc by default. A label whose engine does not is
    /// ignored, and said in the log.
    async fn gvisor_nodes(&self, d: &Docker) -> Result<Vec<String>> {
        let label = isolation_label(Level::Gvisor);
        let mut out = Vec::new();
        for n in self.nodes(d).await?.into_values() {
            if !n.ready || !n.has(&label) {
                continue;
            }
            match self.default_runtime(&n.hostname).await {
                Ok((_, true)) => out.push(n.hostname),
                Ok((runtime, false)) => tracing::warn!(
                    node = %n.hostname, %runtime,
                    "node is labelled {label}=true but its engine's default runtime is not runsc: not used for gVisor"
                ),
                Err(e) => tracing::warn!(node = %n.hostname, error = %e, "cannot ask node's engine for its runtime"),
            }
        }
        out.sort();
        Ok(out)
    }

    /// A gVisor sandbox must have landed on an engine that runs it under
    /// runsc: a node labelled for gVisor whose engine does not is refused,
    /// never run with less.
    async fn check_isolation(&self, sb: &Sandbox, node: &str) -> Result<()> {
        if sb.profile.isolation != Level::Gvisor {
            return Ok(());
        }
        match self.default_runtime(node).await? {
            (_, true) => Ok(()),
            (runtime, false) => Err(Error::FailedPrecondition(format!(
                "node '{node}' is labelled {}=true but its engine runs containers under '{runtime}', not runsc: \
                 the gVisor sandbox was not run there",
                isolation_label(Level::Gvisor)
            ))),
        }
    }

    /// The tasks of this instance's services (all of them, or those on one node).
    async fn tasks(&self, d: &Docker, filters: HashMap<String, Vec<String>>) -> Result<Vec<Task>> {
        let opts = ListTasksOptionsBuilder::default().filters(&filters).build();
        let list = d.list_tasks(Some(opts)).await.map_err(|e| map_err("list tasks", e))?;
        Ok(list.into_iter().filter(|t| task_instance(t) == Some(self.inner.instance.as_str())).collect())
    }

    /// The newest task of a sandbox's service; `None` without one.
    async fn task_of(&self, d: &Docker, id: &str) -> Result<Option<Task>> {
        let filters = HashMap::from([("service".to_string(), vec![container_name(id)])]);
        let tasks = self.tasks(d, filters).await?;
        Ok(newest(tasks.into_iter().filter(|t| task_sandbox(t).as_deref() == Some(id)).collect()))
    }

    /// Refuses a sandbox no ready node may run, before anything is made.
    async fn check_placement(&self, d: &Docker, sb: &Sandbox) -> Result<()> {
        let nodes = self.nodes(d).await?;
        if nodes.values().any(|n| n.ready && n.accredits(sb)) {
            return Ok(());
        }
        Err(Error::FailedPrecondition(format!(
            "no ready node of the swarm is accredited for {} at isolation '{}' (node labels {}=true and {}=true)",
            sb.classification,
            sb.profile.isolation,
            classification_label(sb.classification),
            isolation_label(sb.profile.isolation)
        )))
    }

    /// What the image makes of the sandbox: its command line, started
    /// through the helper's `nnp` (the image's entrypoint and the profile's
    /// command, or the image's), and its declared VOLUMEs to mask, as the
    /// Docker driver masks them.
    async fn read_image(&self, d: &Docker, sb: &Sandbox) -> Result<(Vec<String>, Vec<String>)> {
        let image = match d.inspect_image(&sb.image).await {
            Ok(i) => i,
            Err(e) if is_not_found(&e) => {
                // The manager may run no sandboxes: ask a node that has it.
                let mut found = None;
                for rt in self.inner.nodes.values() {
                    if let Ok(d) = rt.docker().await {
                        if let Ok(i) = d.inspect_image(&sb.image).await {
                            found = Some(i);
                            break;
                        }
                    }
                }
                found.ok_or_else(|| Error::ImageUnavailable {
                    image: sb.image.clone(),
                    reason: "not present on any node of the swarm".into(),
                })?
            }
            Err(e) => return Err(map_err("inspect image", e)),
        };
        let config = image.config.unwrap_or_default();
        let declared = config.volumes.clone().unwrap_or_default();
        let masked =
            crate::masked_volumes(&declared, &self.inner.manager.spec(sb)).map_err(Error::FailedPrecondition)?;
        if !masked.is_empty() {
            tracing::info!(image = %sb.image, sandbox = %sb.id, masked = ?masked, "the image declares VOLUMEs: each is masked by an empty read-only tmpfs");
        }
        let cmd =
            if sb.profile.command.is_empty() { config.cmd.unwrap_or_default() } else { sb.profile.command.clone() };
        let line: Vec<String> = config.entrypoint.unwrap_or_default().into_iter().chain(cmd).collect();
        if line.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "image '{}' has no command and profile '{}' gives none",
                sb.image, sb.profile.name
            )));
        }
        Ok((crate::helper::command(["nnp", "--"]).into_iter().chain(line).collect(), masked))
    }

    /// The service a sandbox is.
    fn service_spec(
        &self,
        sb: &Sandbox,
        command: Vec<String>,
        masked: &[String],
        network: Option<&str>,
        proxy: Option<&str>,
    ) -> ServiceSpec {
        let mut spec = self.inner.manager.spec(sb);
        spec.env.extend(proxy.map(crate::proxy_env).into_iter().flatten());
        let r = &sb.profile.resources;
        let memory = i64::try_from(r.memory).unwrap_or(i64::MAX);
        let cpus = (r.cpus * 1e9) as i64;
        let mut mounts: Vec<DockerMount> = sb
            .datasets
            .iter()
            .map(|ds| bind(&ds.source, &format!("{DATASETS_DIR}/{}", ds.name)))
            .chain(self.helper_mount())
            .collect();
        mounts.push(DockerMount {
            target: Some(crate::SCRATCH_DIR.into()),
            typ: Some(MountTypeEnum::TMPFS),
            tmpfs_options: Some(MountTmpfsOptions {
                size_bytes: Some(i64::try_from(r.tmpfs).unwrap_or(i64::MAX)),
                mode: Some(0o1777),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.extend(masks(masked));
        let internal = sb.profile.network.mode != NetworkMode::Open;
        ServiceSpec {
            name: Some(container_name(&sb.id)),
            labels: Some(spec.labels.clone()),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(sb.image.clone()),
                    labels: Some(spec.labels),
                    command: Some(command),
                    hostname: Some(spec.hostname),
                    env: Some(spec.env),
                    dir: Some(crate::SCRATCH_DIR.into()),
                    user: Some(spec.user),
                    read_only: Some(true),
                    mounts: Some(mounts),
                    stop_signal: Some("SIGKILL".into()),
                    stop_grace_period: Some(0),
                    dns_config: network.filter(|_| internal).map(|_| TaskSpecContainerSpecDnsConfig {
                        nameservers: Some(vec![crate::BLACKHOLE_DNS.into()]),
                        ..Default::default()
                    }),
                    init: Some(true),
                    capability_drop: Some(vec!["ALL".into()]),
                    ..Default::default()
                }),
                resources: Some(TaskSpecResources {
                    limits: Some(Limit {
                        nano_cpus: Some(cpus),
                        memory_bytes: Some(memory),
                        pids: Some(host_pids_limit(sb.profile.isolation, r.pids)),
                    }),
                    reservations: Some(ResourceObject {
                        nano_cpus: Some(cpus),
                        memory_bytes: Some(memory),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                    max_attempts: Some(0),
                    ..Default::default()
                }),
                placement: Some(TaskSpecPlacement { constraints: Some(constraints(sb)), ..Default::default() }),
                networks: network
                    .map(|n| vec![NetworkAttachmentConfig { target: Some(n.into()), ..Default::default() }]),
                log_driver: Some(log_driver()),
                ..Default::default()
            }),
            mode: Some(one_replica()),
            ..Default::default()
        }
    }

    /// The helper, bind-mounted read-only where every sandbox has it.
    fn helper_mount(&self) -> Option<DockerMount> {
        self.inner.sandboxes.helper.as_deref().map(|h| bind(h, crate::helper::PATH_IN_SANDBOX))
    }

    /// The service of an allowlist sandbox's relay: the helper's `relay`
    /// in the sandbox's image (on every node already), as nobody, with
    /// nothing writable and no capability, on the sandbox's overlay and the
    /// egress network, on a node accredited for the sandbox's
    /// classification (whatever its isolation: the relay runs no code of
    /// the team's), the image's `VOLUME`s masked as the sandbox's are.
    ///
    /// The sandbox is told the relay's task address: a service's virtual
    /// IP needs IPVS on every node (absent on some kernels, this machine's
    /// among them), so the relay has none (`dnsrr`). A new task would have
    /// a new address, so Swarm never restarts it: a relay that ends, or
    /// whose node is lost, loses its sandbox ([`SwarmRuntime::check_nodes`]).
    fn relay_spec(
        &self,
        sb: &Sandbox,
        token: &str,
        (overlay, subnet): (&str, &str),
        proxy: std::net::SocketAddr,
        egress: &str,
        masked: &[String],
    ) -> ServiceSpec {
        let mut labels = labels::for_sandbox(sb, &self.inner.instance, &self.inner.sandboxes.labels);
        labels.remove(labels::SANDBOX);
        labels.insert(labels::RELAY_FOR.to_string(), sb.id.clone());
        let port = RELAY_PORT.to_string();
        let proxy = proxy.to_string();
        let command =
            crate::helper::command(["nnp", "--", crate::helper::PATH_IN_SANDBOX, "relay", &port, &proxy, subnet]);
        ServiceSpec {
            name: Some(relay_name(&sb.id)),
            labels: Some(labels.clone()),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(sb.image.clone()),
                    labels: Some(labels),
                    command: Some(command),
                    env: Some(vec![format!("{}={token}", sandpit_helper::relay::TOKEN_VAR)]),
                    user: Some("65534:65534".into()),
                    read_only: Some(true),
                    mounts: Some(self.helper_mount().into_iter().chain(masks(masked)).collect()),
                    stop_signal: Some("SIGKILL".into()),
                    stop_grace_period: Some(0),
                    init: Some(true),
                    capability_drop: Some(vec!["ALL".into()]),
                    ..Default::default()
                }),
                resources: Some(TaskSpecResources {
                    limits: Some(Limit {
                        nano_cpus: Some(RELAY_CPUS),
                        memory_bytes: Some(RELAY_MEMORY),
                        pids: Some(RELAY_PIDS),
                    }),
                    ..Default::default()
                }),
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                    max_attempts: Some(0),
                    ..Default::default()
                }),
                placement: Some(TaskSpecPlacement {
                    constraints: Some(vec![format!("node.labels.{}==true", classification_label(sb.classification))]),
                    ..Default::default()
                }),
                networks: Some(
                    [overlay, egress]
                        .map(|n| NetworkAttachmentConfig { target: Some(n.into()), ..Default::default() })
                        .to_vec(),
                ),
                log_driver: Some(log_driver()),
                ..Default::default()
            }),
            mode: Some(one_replica()),
            endpoint_spec: Some(EndpointSpec { mode: Some(EndpointSpecModeEnum::DNSRR), ..Default::default() }),
            ..Default::default()
        }
    }

    /// The swarm's egress network (made if missing); its id.
    async fn egress_network(&self, d: &Docker) -> Result<String> {
        let _one_at_a_time = self.inner.egress_network.lock().await;
        let name = egress_network_name(&self.inner.instance);
        match d.inspect_network(&name, None).await {
            Ok(n) => {
                return n
                    .id
                    .ok_or_else(|| Error::Docker { op: "inspect network", message: format!("{name} has no id") })
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(map_err("inspect network", e)),
        }
        let mut labels: HashMap<String, String> =
            self.inner.sandboxes.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        labels.extend(labels::selector(&self.inner.instance));
        labels.insert(labels::EGRESS_NETWORK.to_string(), "true".to_string());
        let body = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("overlay".into()),
            internal: Some(false),
            attachable: Some(false),
            enable_ipv6: Some(false),
            labels: Some(labels),
            ..Default::default()
        };
        let created = d.create_network(body).await.map_err(|e| map_err("create network", e))?;
        tracing::info!(network = %name, "made the swarm's egress network for allowlist sandboxes' relays");
        Ok(created.id)
    }

    /// Starts an allowlist sandbox's relay on its overlay `overlay` (id)
    /// and waits until it runs; its address there and the SHA-256 (hex) of
    /// its token.
    async fn start_relay(
        &self,
        d: &Docker,
        sb: &Sandbox,
        overlay: &str,
        masked: &[String],
    ) -> Result<(String, String)> {
        use sha2::Digest;
        let proxy = self.inner.egress.ok_or_else(|| {
            Error::FailedPrecondition("allowlist sandboxes on this swarm need [swarm] egress_address".into())
        })?;
        let subnet = self
            .until("overlay subnet", || async {
                let net = d.inspect_network(overlay, None).await.map_err(|e| map_err("inspect network", e))?;
                Ok(net.ipam.and_then(|i| i.config).unwrap_or_default().into_iter().find_map(|c| c.subnet))
            })
            .await?;
        let egress = self.egress_network(d).await?;
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| Error::Internal(format!("no randomness for a relay token: {e}")))?;
        let token = hex::encode(raw);
        let spec = self.relay_spec(sb, &token, (overlay, &subnet), proxy, &egress, masked);
        d.create_service(spec, None).await.map_err(|e| map_err("create service", e))?;
        let name = relay_name(&sb.id);
        let task = self
            .until("relay running", || async {
                let filters = HashMap::from([("service".to_string(), vec![name.clone()])]);
                let Some(t) = newest(self.tasks(d, filters).await?) else { return Ok(None) };
                let state = task_state(&t);
                if state == TaskState::RUNNING && task_container(&t).is_some() {
                    return Ok(Some(t));
                }
                if !on_its_way(state) {
                    let said = t.status.as_ref().and_then(|s| s.err.clone().or(s.message.clone())).unwrap_or_default();
                    return Err(Error::Docker {
                        op: "start relay",
                        message: format!("the sandbox's egress relay ended {state} before it ran: {said}"),
                    });
                }
                Ok(None)
            })
            .await?;
        let node = self.hostname(d, task.node_id.as_deref().unwrap_or_default()).await?;
        let container = task_container(&task).expect("waited for it");
        let overlay_name = network_name(sb).expect("an allowlist sandbox has an overlay");
        let at = self.network_info(d, &node, &container, &overlay_name).await?;
        Ok((at.address.to_string(), hex::encode(sha2::Sha256::digest(token.as_bytes()))))
    }

    /// Asks `check` every 50 ms until it gives a value, within the start
    /// timeout.
    async fn until<T, F, Fut>(&self, what: &str, mut check: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let deadline = tokio::time::Instant::now() + self.inner.timings.start_timeout;
        loop {
            if let Some(v) = check().await? {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Docker { op: "swarm", message: format!("no {what} within the start timeout") });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An overlay network of the sandbox's own; its id.
    async fn create_network(&self, d: &Docker, sb: &Sandbox, name: &str) -> Result<String> {
        let body = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("overlay".into()),
            internal: Some(sb.profile.network.mode != NetworkMode::Open),
            attachable: Some(false),
            enable_ipv6: Some(false),
            labels: Some(labels::for_sandbox(sb, &self.inner.instance, &self.inner.sandboxes.labels)),
            ..Default::default()
        };
        let created = d.create_network(body).await.map_err(|e| map_err("create network", e))?;
        Ok(created.id)
    }

    /// Removes a sandbox's overlay network, once Swarm has let go of it
    /// (its task's endpoint goes a moment after the service). Gone is fine.
    /// Waits at most [`NETWORK_RELEASE`]: a caller that gets the error
    /// (teardown, reconcile) tries again later rather than stalling.
    async fn remove_network(&self, d: &Docker, name: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + NETWORK_RELEASE.min(self.inner.timings.start_timeout);
        loop {
            match d.remove_network(name).await {
                Ok(()) => return Ok(()),
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(network = name, error = %e, "overlay network still in use; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(map_err("remove network", e)),
            }
        }
    }

    async fn remove_service(&self, d: &Docker, name: &str) -> Result<()> {
        match d.delete_service(name).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(map_err("remove service", e)),
        }
    }

    /// Waits until the sandbox's task runs; the task.
    async fn wait_running(&self, d: &Docker, sb: &Sandbox) -> Result<Task> {
        let deadline = tokio::time::Instant::now() + self.inner.timings.start_timeout;
        let mut last = String::new();
        let mut full_since = None;
        loop {
            if let Some(task) = self.task_of(d, &sb.id).await? {
                let state = task_state(&task);
                let status = task.status.clone().unwrap_or_default();
                let said = status.err.clone().or(status.message.clone()).unwrap_or_default();
                if state == TaskState::RUNNING && task_container(&task).is_some() {
                    return Ok(task);
                }
                if !on_its_way(state) {
                    return Err(Error::Docker {
                        op: "start service",
                        message: format!("the sandbox's task ended {state} before it ran: {said}"),
                    });
                }
                if said.contains("constraints not satisfied") {
                    return Err(Error::FailedPrecondition(format!(
                        "no node of the swarm may run a {} sandbox at isolation '{}': {said}",
                        sb.classification, sb.profile.isolation
                    )));
                }
                // Every node's reservations are taken: the swarm is full.
                // Briefly, a delete in flight may free room; past that the
                // create is refused, as over a quota, rather than left waiting.
                if said.contains("insufficient resources") {
                    let since = *full_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= FULL_GRACE {
                        return Err(Error::ResourceExhausted(format!(
                            "no node of the swarm has room for the sandbox's reservations ({} CPUs, {} bytes of memory): {said}",
                            sb.profile.resources.cpus, sb.profile.resources.memory
                        )));
                    }
                } else {
                    full_since = None;
                }
                last = format!("{state}: {said}");
            }
            if tokio::time::Instant::now() >= deadline {
                let within = sandpit_core::time::format_duration_ms(self.inner.timings.start_timeout);
                return Err(Error::Docker {
                    op: "start service",
                    message: format!("the task did not run within {within} ({last})"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The hostname of node `id`, reading the node list again if unknown.
    async fn hostname(&self, d: &Docker, id: &str) -> Result<String> {
        if let Some(h) = self.inner.names.read().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(h.clone());
        }
        self.nodes(d)
            .await?
            .remove(id)
            .map(|n| n.hostname)
            .ok_or_else(|| Error::Docker { op: "inspect node", message: format!("node {id} is not in the swarm") })
    }

    async fn provision_on(&self, d: &Docker, sb: &Sandbox) -> Result<Provisioned> {
        let started = std::time::Instant::now();
        let step = |what: &str| tracing::debug!(sandbox = %sb.id, elapsed_ms = started.elapsed().as_millis() as u64, "swarm create: {what}");
        self.check_placement(d, sb).await?;
        let (command, masked) = self.read_image(d, sb).await?;
        step("placement and image checked");
        let net_name = network_name(sb);
        let network = match &net_name {
            Some(name) => Some(self.create_network(d, sb, name).await?),
            None => None,
        };
        step("overlay made");
        let relay = match (sb.profile.network.mode, &network) {
            (NetworkMode::Allowlist, Some(overlay)) => Some(self.start_relay(d, sb, overlay, &masked).await?),
            _ => None,
        };
        if relay.is_some() {
            step("relay running");
        }
        let proxy = relay.as_ref().map(|(address, _)| format!("http://{address}:{RELAY_PORT}"));
        d.create_service(self.service_spec(sb, command, &masked, network.as_deref(), proxy.as_deref()), None)
            .await
            .map_err(|e| map_err("create service", e))?;
        step("service made");
        let task = self.wait_running(d, sb).await?;
        step("task running");
        let container_id = task_container(&task).expect("waited for it");
        let node = self.hostname(d, task.node_id.as_deref().unwrap_or_default()).await?;
        self.check_isolation(sb, &node).await?;
        let network = match &net_name {
            Some(name) => Some(NetworkInfo {
                egress_key: relay.map(|(_, key)| key),
                ..self.network_info(d, &node, &container_id, name).await?
            }),
            None => None,
        };
        Ok(Provisioned { container_id, network, node: Some(node) })
    }

    /// The overlay network as the sandbox's record keeps it.
    async fn network_info(&self, d: &Docker, node: &str, container: &str, name: &str) -> Result<NetworkInfo> {
        let net = d.inspect_network(name, None).await.map_err(|e| map_err("inspect network", e))?;
        let ipam = net.ipam.and_then(|i| i.config).unwrap_or_default().into_iter().next().unwrap_or_default();
        let on_node = self.endpoint(node)?.docker().await?;
        let c = on_node.inspect_container(container, None).await.map_err(|e| map_err("inspect container", e))?;
        let address = c
            .network_settings
            .and_then(|s| s.networks)
            .and_then(|mut n| n.remove(name))
            .and_then(|e| e.ip_address)
            .and_then(|a| a.parse().ok());
        let parse = |s: Option<String>| s.and_then(|s| s.parse().ok());
        match (ipam.subnet, parse(ipam.gateway), address) {
            (Some(subnet), Some(gateway), Some(address)) => {
                Ok(NetworkInfo { name: name.to_string(), subnet, gateway, address, egress_key: None })
            }
            _ => Err(Error::Docker { op: "inspect network", message: format!("overlay {name} has no address yet") }),
        }
    }

    /// Reports lost sandboxes: those on nodes Swarm marks down (or gone
    /// from the swarm), and those on nodes that no longer carry their
    /// placement labels (stopped first). Each task once.
    /// Placement is read only when `placement` (every few checks); the
    /// tasks only then or when a node is not ready.
    async fn check_nodes(
        &self,
        d: &Docker,
        reported: &mut HashSet<String>,
        placement: bool,
    ) -> Result<Vec<RuntimeEvent>> {
        let nodes = self.nodes(d).await?;
        if !placement && nodes.values().all(|n| !n.down) {
            return Ok(Vec::new());
        }
        // Every task: Swarm sets a task's desired state to shutdown when
        // its node goes down, while its last known state stays running.
        // A task whose service was removed (desired `remove`) is over.
        let tasks = self.tasks(d, HashMap::new()).await?;
        let mut out = Vec::new();
        for t in tasks {
            // A relay's task stands for its sandbox: the sandbox has no way
            // out without it, and it is never restarted (see relay_spec).
            let relay = task_relay(&t);
            let (Some(task_id), Some(sandbox_id)) = (t.id.clone(), task_sandbox(&t).or(relay.clone())) else {
                continue;
            };
            let live = task_state(&t) == TaskState::RUNNING || on_its_way(task_state(&t));
            if reported.contains(&task_id) || t.desired_state == Some(TaskState::REMOVE) {
                continue;
            }
            if !live {
                if relay.is_some() && placement {
                    let said = t.status.as_ref().and_then(|s| s.err.clone().or(s.message.clone())).unwrap_or_default();
                    reported.insert(task_id);
                    let reason = format!("its egress relay ended {}: {said}", task_state(&t));
                    out.push(RuntimeEvent::Lost { sandbox_id, reason });
                }
                continue;
            }
            let Some(node_id) = t.node_id.as_deref().filter(|n| !n.is_empty()) else { continue };
            let reason = match nodes.get(node_id) {
                None => format!("its node {node_id} left the swarm"),
                Some(n) if n.down => format!("its node {} is {}", n.hostname, n.state),
                // Unknown or disconnected: not known to be lost yet.
                Some(n) if !n.ready => continue,
                Some(n) if placement && task_state(&t) == TaskState::RUNNING => {
                    let Some(why) = misplaced(&t, n) else { continue };
                    // Stop it where it runs before it is reported.
                    if let (Ok(rt), Some(c)) = (self.endpoint(&n.hostname), task_container(&t)) {
                        rt.kill_container(&c).await?;
                    }
                    format!("{why}: stopped")
                }
                Some(_) => continue,
            };
            let reason = if relay.is_some() { format!("its egress relay is lost: {reason}") } else { reason };
            reported.insert(task_id);
            out.push(RuntimeEvent::Lost { sandbox_id, reason });
        }
        Ok(out)
    }

    /// A sandbox whose container died because Swarm shut its task down
    /// (its node no longer meets its placement: Swarm's constraint
    /// enforcer), reported lost rather than exited: the daemon never asks
    /// Swarm to shut a task down (a sandbox ends with its service).
    async fn stopped_by_swarm(&self, sandbox_id: &str) -> Option<RuntimeEvent> {
        let d = self.client().await.ok()?;
        let task = self.task_of(&d, sandbox_id).await.ok()??;
        if task.desired_state != Some(TaskState::SHUTDOWN) {
            return None;
        }
        let node = task.node_id.as_deref().unwrap_or_default();
        let nodes = self.nodes(&d).await.ok()?;
        let n = nodes.get(node);
        let reason = match n.and_then(|n| misplaced(&task, n)) {
            Some(why) => format!("Swarm stopped it: {why}"),
            None => {
                let said = task.status.as_ref().and_then(|s| s.err.clone().or(s.message.clone())).unwrap_or_default();
                let host = n.map_or(node, |n| n.hostname.as_str());
                format!("Swarm shut its task down on node {host} ({said})")
            }
        };
        Some(RuntimeEvent::Lost { sandbox_id: sandbox_id.to_string(), reason })
    }

    /// Container events of every node, kept followed (a node that goes
    /// away is followed again once back), and the node watcher.
    fn watch(&self) -> BoxStream<Result<RuntimeEvent>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<RuntimeEvent>(1024);
        let mut tasks = tokio::task::JoinSet::new();
        let selector = labels::selector(&self.inner.instance);
        for (name, rt) in &self.inner.nodes {
            let (rt, tx, selector, name) = (rt.clone(), tx.clone(), selector.clone(), name.clone());
            let this = self.clone();
            tasks.spawn(async move {
                loop {
                    let mut events = rt.container_events(&selector);
                    while let Some(ev) = events.next().await {
                        match ev {
                            Ok(ev) => {
                                let ev = match &ev {
                                    RuntimeEvent::Died { sandbox_id, .. } => {
                                        this.stopped_by_swarm(sandbox_id).await.unwrap_or(ev)
                                    }
                                    _ => ev,
                                };
                                if tx.send(ev).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                tracing::debug!(node = %name, error = %e, "node's event stream failed; following again");
                                break;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        let this = self.clone();
        tasks.spawn(async move {
            let mut reported = HashSet::new();
            let mut tick = tokio::time::interval(this.inner.timings.node_check);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0u64.. {
                tick.tick().await;
                let checked = match this.client().await {
                    Ok(d) => this.check_nodes(&d, &mut reported, n % PLACEMENT_EVERY == 0).await,
                    Err(e) => Err(e),
                };
                match checked {
                    Ok(lost) => {
                        for ev in lost {
                            if tx.send(ev).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reading the swarm's nodes failed; retrying"),
                }
            }
        });
        // The tasks end with the stream.
        futures_util::stream::unfold((rx, tasks), |(mut rx, tasks)| async move {
            rx.recv().await.map(|ev| (Ok(ev), (rx, tasks)))
        })
        .boxed()
    }
}

/// The engine's exec id with the node it runs on: `node/exec`.
fn exec_on(node: &str, id: &str) -> String {
    format!("{node}/{id}")
}

impl SwarmRuntime {
    fn split_exec<'a>(&self, exec_id: &'a str) -> Result<(&DockerRuntime, &'a str)> {
        let (node, id) = exec_id
            .split_once('/')
            .ok_or_else(|| Error::Internal(format!("exec id '{exec_id}' does not name its node")))?;
        Ok((self.endpoint(node)?, id))
    }
}

#[async_trait]
impl Runtime for SwarmRuntime {
    fn node(&self) -> &str {
        &self.inner.node
    }

    fn capabilities(&self) -> Capabilities {
        let gvisor = !self.inner.gvisor_nodes.read().unwrap_or_else(|p| p.into_inner()).is_empty();
        let (isolation, unavailable) = if gvisor {
            (vec![Level::Container, Level::Gvisor], Vec::new())
        } else {
            (vec![Level::Container], vec![(Level::Gvisor, NO_GVISOR.to_string())])
        };
        Capabilities {
            // Not `none`: a Swarm task cannot join the engine's `none`
            // network (it is not swarm-scoped), and with no network it gets
            // the node's default bridge. `allowlist` with an egress relay
            // (`[swarm] egress_address`). Not `open`: it would need every
            // node's firewall to keep sandboxes off non-public ranges.
            network_modes: match self.inner.egress {
                Some(_) => vec![NetworkMode::Isolated, NetworkMode::Allowlist],
                None => vec![NetworkMode::Isolated],
            },
            isolation,
            unavailable,
            confinement: vec!["seccomp".to_string(), "no-new-privileges (helper)".to_string()],
            workspaces: false,
        }
    }

    /// Reads again which nodes give gVisor (reconcile calls it every pass).
    async fn refresh(&self) -> Result<()> {
        let d = self.client().await?;
        let now = self.gvisor_nodes(&d).await?;
        let mut known = self.inner.gvisor_nodes.write().unwrap_or_else(|p| p.into_inner());
        if *known != now {
            tracing::info!(nodes = ?now, "nodes giving gVisor isolation");
            *known = now;
        }
        Ok(())
    }

    async fn ensure_image(&self, image: &str) -> Result<()> {
        let d = self.client().await?;
        let nodes = self.nodes(&d).await?;
        let mut missing = Vec::new();
        for n in nodes.values().filter(|n| n.ready) {
            let Ok(rt) = self.endpoint(&n.hostname) else { continue };
            if let Err(e) = rt.ensure_image(image).await {
                missing.push(format!("{}: {e}", n.hostname));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::ImageUnavailable { image: image.to_string(), reason: missing.join("; ") })
    }

    fn pull_image(&self, image: &str) -> BoxStream<Result<PullProgress>> {
        let pulls: Vec<_> = self.inner.nodes.values().map(|rt| rt.pull_image(image)).collect();
        futures_util::stream::iter(pulls).flatten().boxed()
    }

    async fn provision(&self, sb: &Sandbox) -> Result<Provisioned> {
        let d = self.client().await?;
        match self.provision_on(&d, sb).await {
            Ok(p) => Ok(p),
            Err(e) => {
                // Whatever was made goes before the error is returned.
                if let Err(undo) = self.destroy(sb).await {
                    tracing::warn!(sandbox = %sb.id, error = %undo, "removing a failed create's service failed; reconcile retries");
                }
                Err(e)
            }
        }
    }

    async fn destroy(&self, sb: &Sandbox) -> Result<()> {
        let d = self.client().await?;
        // Killed where it runs first: a service's removal stops its task in the background.
        if let (Some(c), Ok(rt)) = (sb.container_id.as_deref(), self.endpoint(&sb.node)) {
            if let Err(e) = rt.kill_container(c).await {
                tracing::debug!(sandbox = %sb.id, error = %e, "kill on the node failed; removing the service regardless");
            }
            rt.forget_helper(c);
        }
        self.remove_service(&d, &container_name(&sb.id)).await?;
        // Before the overlay, which it is on (so it never outlives it).
        self.remove_service(&d, &relay_name(&sb.id)).await?;
        match network_name(sb) {
            Some(n) => self.remove_network(&d, &n).await,
            None => Ok(()),
        }
    }

    async fn kill(&self, sb: &Sandbox) -> Result<()> {
        let Some(c) = sb.container_id.as_deref() else { return Ok(()) };
        self.endpoint(&sb.node)?.kill_container(c).await
    }

    async fn status(&self, sb: &Sandbox) -> Result<Option<ContainerStatus>> {
        let d = self.client().await?;
        let Some(task) = self.task_of(&d, &sb.id).await? else { return Ok(None) };
        let nodes = self.nodes(&d).await?;
        let node = task.node_id.as_deref().and_then(|id| nodes.get(id));
        if node.is_none_or(|n| n.down) {
            // Gone with its node.
            return Ok(None);
        }
        if let (Some(c), Some(n)) = (task_container(&task), node) {
            if let Ok(rt) = self.endpoint(&n.hostname) {
                match rt.container_status(&c).await {
                    Ok(s) => return Ok(s),
                    Err(e) => {
                        tracing::debug!(sandbox = %sb.id, error = %e, "node's engine unreachable; the manager's view")
                    }
                }
            }
        }
        let state = task_state(&task);
        let exit_code = task.status.as_ref().and_then(|s| s.container_status.as_ref()).and_then(|c| c.exit_code);
        Ok(Some(ContainerStatus { running: state == TaskState::RUNNING, exit_code, oom_killed: false }))
    }

    async fn adopt(&self, _sandboxes: &[Sandbox]) -> Result<()> {
        // No host state: Swarm keeps the overlay networks' rules on each node.
        Ok(())
    }

    async fn owned(&self) -> Result<Vec<Owned>> {
        let d = self.client().await?;
        let selector = labels::selector(&self.inner.instance);
        let opts = ListServicesOptionsBuilder::default().filters(&label_filters(&selector)).build();
        let services = d.list_services(Some(opts)).await.map_err(|e| map_err("list services", e))?;
        let nodes = self.nodes(&d).await?;
        let mut by_service: HashMap<String, Vec<Task>> = HashMap::new();
        for t in self.tasks(&d, HashMap::new()).await? {
            by_service.entry(t.service_id.clone().unwrap_or_default()).or_default().push(t);
        }
        let mut out = Vec::new();
        for s in services {
            let (Some(id), Some(spec)) = (s.id, s.spec) else { continue };
            // A relay goes with its sandbox's overlay (see remove_owned).
            if spec.labels.as_ref().is_some_and(|l| l.contains_key(labels::RELAY_FOR)) {
                continue;
            }
            let task = newest(by_service.remove(&id).unwrap_or_default());
            let running = task.as_ref().is_some_and(|t| {
                let up = t.node_id.as_deref().and_then(|n| nodes.get(n)).is_some_and(|n| !n.down);
                up && (task_state(t) == TaskState::RUNNING || on_its_way(task_state(t)))
            });
            out.push(Owned {
                kind: OwnedKind::Sandbox,
                id: spec.name.unwrap_or(id),
                sandbox_id: spec.labels.unwrap_or_default().remove(labels::SANDBOX),
                running,
                created: bollard_time(s.created_at.as_ref()),
            });
        }
        let opts =
            bollard::query_parameters::ListNetworksOptionsBuilder::default().filters(&label_filters(&selector)).build();
        for n in d.list_networks(Some(opts)).await.map_err(|e| map_err("list networks", e))? {
            let Some(name) = n.name else { continue };
            // Shared by every relay; kept.
            if n.labels.as_ref().is_some_and(|l| l.contains_key(labels::EGRESS_NETWORK)) {
                continue;
            }
            out.push(Owned {
                kind: OwnedKind::Network,
                id: name,
                sandbox_id: n.labels.unwrap_or_default().remove(labels::SANDBOX),
                running: false,
                created: n.created.as_deref().and_then(sandpit_core::time::parse_rfc3339).unwrap_or(UNIX_EPOCH),
            });
        }
        Ok(out)
    }

    async fn remove_owned(&self, o: &Owned) -> Result<()> {
        let d = self.client().await?;
        let service = match (&o.kind, &o.sandbox_id) {
            (_, Some(id)) => Some(container_name(id)),
            (OwnedKind::Sandbox, None) => Some(o.id.clone()),
            (OwnedKind::Network, None) => None,
        };
        if let Some(s) = service {
            self.remove_service(&d, &s).await?;
        }
        if let Some(id) = &o.sandbox_id {
            self.remove_service(&d, &relay_name(id)).await?;
        }
        let network = match (&o.kind, &o.sandbox_id) {
            (OwnedKind::Network, _) => Some(o.id.clone()),
            (OwnedKind::Sandbox, Some(id)) => Some(container_name(id)),
            (OwnedKind::Sandbox, None) => None,
        };
        match network {
            Some(n) => self.remove_network(&d, &n).await,
            None => Ok(()),
        }
    }

    async fn repair(&self) -> Result<Repair> {
        Ok(Repair::default())
    }

    fn repair_needed(&self) -> BoxStream<()> {
        // Nothing of the host's to repair: never yields.
        futures_util::stream::pending().boxed()
    }

    async fn exec(&self, sb: &Sandbox, mut spec: ExecSpec) -> Result<ExecSession> {
        // Every process started in the sandbox gets no_new_privs.
        spec.command = crate::helper::command(["nnp", "--"]).into_iter().chain(spec.command).collect();
        let mut session = self.endpoint(&sb.node)?.exec(sb, spec).await?;
        session.exec_id = exec_on(&sb.node, &session.exec_id);
        Ok(session)
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>> {
        let (rt, id) = self.split_exec(exec_id)?;
        rt.exec_exit_code(id).await
    }

    async fn exec_resize(&self, exec_id: &str, size: TerminalSize) -> Result<()> {
        let (rt, id) = self.split_exec(exec_id)?;
        rt.exec_resize(id, size).await
    }

    async fn exec_kill(&self, sb: &Sandbox, tag: &str) -> Result<u64> {
        self.endpoint(&sb.node)?.exec_kill(sb, tag).await
    }

    async fn remove_workspace(&self, _experiment: &str) -> Result<bool> {
        Ok(false)
    }

    async fn port_connect(&self, sb: &Sandbox, port: u16) -> Result<Connection> {
        self.endpoint(&sb.node)?.port_connect(sb, port).await
    }

    async fn copy_in(&self, sb: &Sandbox, dir: &str, archive: BoxStream<Result<Vec<u8>>>) -> Result<()> {
        self.endpoint(&sb.node)?.copy_in(sb, dir, archive).await
    }

    async fn copy_out(&self, sb: &Sandbox, path: &str) -> Result<BoxStream<Result<Vec<u8>>>> {
        self.endpoint(&sb.node)?.copy_out(sb, path).await
    }

    fn events(&self) -> BoxStream<Result<RuntimeEvent>> {
        self.watch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_is_constrained_to_nodes_accredited_for_its_classification_and_isolation() {
        let mut sb = sandpit_core::store::contract::record("sb-1", "team-a");
        sb.classification = sandpit_core::policy::Classification::OfficialSensitive;
        assert_eq!(
            constraints(&sb),
            vec![
                "node.labels.sandpit.classification.OFFICIAL-SENSITIVE==true".to_string(),
                "node.labels.sandpit.isolation.container==true".to_string(),
            ]
        );
        let node = |labels: &[(&str, &str)]| NodeView {
            hostname: "n1".into(),
            ready: true,
            down: false,
            state: "ready".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        assert!(node(&[
            ("sandpit.classification.OFFICIAL-SENSITIVE", "true"),
            ("sandpit.isolation.container", "true")
        ])
        .accredits(&sb));
        assert!(!node(&[("sandpit.classification.OFFICIAL", "true"), ("sandpit.isolation.container", "true")])
            .accredits(&sb));
        assert!(!node(&[("sandpit.classification.OFFICIAL-SENSITIVE", "true")]).accredits(&sb));
        assert!(!node(&[
            ("sandpit.classification.OFFICIAL-SENSITIVE", "yes"),
            ("sandpit.isolation.container", "true")
        ])
        .accredits(&sb));
        // A running task is misplaced once its node lacks a label it needs, and says which.
        let task = Task {
            spec: Some(TaskSpec {
                placement: Some(TaskSpecPlacement { constraints: Some(constraints(&sb)), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let full =
            node(&[("sandpit.classification.OFFICIAL-SENSITIVE", "true"), ("sandpit.isolation.container", "true")]);
        assert_eq!(misplaced(&task, &full), None);
        assert_eq!(
            misplaced(&task, &node(&[("sandpit.isolation.container", "true")])).as_deref(),
            Some("its node n1 is no longer labelled sandpit.classification.OFFICIAL-SENSITIVE=true")
        );
    }
}
