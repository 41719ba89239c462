//! Sandpit's Docker runtime: [`DockerRuntime`] implements the core's
//! [`Runtime`](sandpit_core::runtime::Runtime) on a Docker engine through
//! bollard, and is the one place that knows Docker's types:
//! it turns a [`ContainerSpec`] into a hardened container (CIS Docker Benchmark
//! section 5), and Docker's errors into [`Error`]s.
//!
//! The client is connected lazily and its API version negotiated on first
//! success, so the daemon starts and serves while the engine is down, answers
//! `UNAVAILABLE`, and recovers by itself when the engine returns.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, HostConfigLogConfig, Ipam, IpamConfig,
    NetworkCreateRequest, NetworkingConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::{StreamExt, TryStreamExt};
use ipnet::Ipv4Net;

pub mod firewall;
pub mod helper;
pub mod isolation;
pub mod labels;
pub mod spec;
pub mod subnet;
pub mod swarm;

mod cgroup;
pub mod cleanup;
mod driver;
mod transfer;

use self::firewall::Firewall;
pub use self::isolation::RuntimeNames;
use self::spec::{ContainerSpec, Isolation, IsolationRepair, ManagedContainer, ManagedNetwork, NetworkRequest};
use self::subnet::{Allocator, Pool, Subnet};
use sandpit_core::egress::addr::parse_net;
use sandpit_core::policy::Isolation as Level;
use sandpit_core::runtime::{
    BoxStream, ContainerStatus, ExecChunk, ExecSession, ExecSpec, NetworkInfo, Provisioned, PullProgress, RuntimeEvent,
};
use sandpit_core::sandbox::WORKSPACE_DIR;
use sandpit_core::{Error, Result};

/// Scratch space mount inside every sandbox (the root filesystem is read-only).
pub const SCRATCH_DIR: &str = "/tmp";
const LOG_MAX_SIZE: &str = "10m";
/// The kernel's AppArmor switch on the host: `Y` when AppArmor is enabled.
pub const APPARMOR_ENABLED: &str = "/sys/module/apparmor/parameters/enabled";
/// The AppArmor profile every sandbox runs under where the host has AppArmor.
pub const APPARMOR_PROFILE: &str = "docker-default";
/// tmpfs options of the mask over each image-declared VOLUME: read-only
/// (nothing may be written there), and as small as tmpfs goes.
const VOLUME_MASK: &str = "ro,nosuid,nodev,noexec,size=4k";

/// Cheap to clone: clones share one client.
#[derive(Clone)]
pub struct DockerRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    host: Option<String>,
    /// How to reach a `tcp://` host: TLS, verified both ways.
    tls: Option<EngineTls>,
    /// This daemon's instance: in the labels of everything it makes.
    instance: String,
    sandboxes: SandboxDefaults,
    timeout: Duration,
    node: String,
    client: RwLock<Option<Docker>>,
    subnets: Allocator,
    /// Filled once from the engine's existing networks, so no subnet overlaps one.
    subnets_loaded: tokio::sync::OnceCell<()>,
    firewall: Firewall,
    egress_port: u16,
    /// Whether sandboxes are put under AppArmor: learnt once, at the first
    /// connection to the engine (which is when it is said in the log).
    apparmor: OnceLock<bool>,
    /// Isolation levels the engine can give (and why not the others), as of
    /// the last connection or refresh.
    isolation: RwLock<IsolationState>,
    /// Whether each container (by id) has the helper mounted: only those
    /// made before it existed lack it. Forgotten when the sandbox is destroyed.
    helpers: std::sync::Mutex<HashMap<String, bool>>,
    /// One image build at a time.
    building: tokio::sync::Mutex<()>,
}

type IsolationState = (Vec<Level>, Vec<(Level, String)>);

/// The files of a TLS connection to an engine's TCP endpoint: the CA its
/// certificate must chain to, and the client certificate and key the
/// daemon presents (the engine runs with `--tlsverify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineTls {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// What every sandbox container gets from the daemon's config.
#[derive(Debug, Clone, Default)]
pub struct SandboxDefaults {
    /// uid:gid, never root.
    pub user: String,
    /// Extra labels on every object.
    pub labels: BTreeMap<String, String>,
    /// The engine runtime of each isolation level.
    pub runtimes: RuntimeNames,
    /// The helper on the engine's host ([`helper::install`]), mounted
    /// read-only into every sandbox; `None`: none (transfers then use the
    /// image's own `tar` or busybox, and a timed-out command's children are
    /// not found).
    pub helper: Option<std::path::PathBuf>,
    /// Images the daemon builds itself when missing, with the command that
    /// builds each (tried before a pull: such an image is not in a registry).
    pub builders: BTreeMap<String, Vec<String>>,
}

/// How sandbox networks are laid out on this engine.
#[derive(Debug, Clone)]
pub struct NetworkSettings {
    pub pool: Pool,
    pub egress_port: u16,
    /// Names this daemon's firewall chain.
    pub instance: String,
}

/// Containers, networks and volumes of one daemon instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceObjects {
    pub containers: usize,
    pub networks: usize,
    pub volumes: usize,
}

/// Tries before giving up on finding a subnet Docker accepts.
const SUBNET_TRIES: usize = 8;
/// Where name lookups of isolated sandboxes go: nowhere. Docker's embedded
/// DNS forwards to this, so names outside the sandbox never resolve (older
/// engines leaked DNS from internal networks, CVE-2024-29018).
const BLACKHOLE_DNS: &str = "127.0.0.1";

/// The environment that points an allowlist sandbox's HTTP clients at its
/// way out (the proxy on its gateway, or its relay on a swarm).
fn proxy_env(url: &str) -> impl Iterator<Item = String> + '_ {
    ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"].into_iter().map(move |k| format!("{k}={url}"))
}

impl DockerRuntime {
    /// `host`: e.g. `unix:///var/run/docker.sock`; `None` uses DOCKER_HOST or the local socket.
    pub fn new(
        host: Option<String>,
        timeout: Duration,
        node: String,
        net: NetworkSettings,
        sandboxes: SandboxDefaults,
    ) -> DockerRuntime {
        let isolation = RwLock::new(not_connected(&sandboxes.runtimes));
        DockerRuntime {
            inner: Arc::new(Inner {
                host,
                tls: None,
                instance: net.instance.clone(),
                sandboxes,
                timeout,
                node,
                client: RwLock::new(None),
                subnets: Allocator::new(net.pool),
                subnets_loaded: tokio::sync::OnceCell::new(),
                firewall: Firewall::new(&net.instance, net.egress_port, net.pool.range()),
                egress_port: net.egress_port,
                apparmor: OnceLock::new(),
                isolation,
                helpers: std::sync::Mutex::default(),
                building: tokio::sync::Mutex::default(),
            }),
        }
    }

    /// Reaches the engine's `tcp://` host over TLS with `tls`. Call before
    /// the runtime is cloned or used.
    pub fn with_tls(mut self, tls: EngineTls) -> DockerRuntime {
        Arc::get_mut(&mut self.inner).expect("with_tls is called on a new runtime").tls = Some(tls);
        self
    }

    /// Marks every subnet the engine already uses, once.
    async fn load_subnets(&self, d: &Docker) -> Result<()> {
        self.inner
            .subnets_loaded
            .get_or_try_init(|| async {
                let nets = d
                    .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
                    .await
                    .map_err(|e| map_err("list networks", e))?;
                for n in nets {
                    for c in n.ipam.and_then(|i| i.config).unwrap_or_default() {
                        if let Some(s) = c.subnet.as_deref().and_then(Subnet::parse) {
                            self.inner.subnets.mark_used(&s);
                        }
                    }
                }
                Ok::<_, Error>(())
            })
            .await
            .map(|_| ())
    }

    /// Creates the sandbox's network on a free subnet and keeps it off the host.
    async fn create_network(
        &self,
        d: &Docker,
        req: &NetworkRequest,
        labels: &HashMap<String, String>,
    ) -> Result<NetworkInfo> {
        self.load_subnets(d).await?;
        for _ in 0..SUBNET_TRIES {
            let subnet = self.inner.subnets.allocate().ok_or_else(|| {
                Error::Unavailable(format!("no free subnet left in {}", self.inner.subnets.pool().cidr()))
            })?;
            let body = NetworkCreateRequest {
                name: req.name.clone(),
                driver: Some("bridge".into()),
                internal: Some(req.internal),
                enable_ipv6: Some(false),
                ipam: Some(Ipam {
                    config: Some(vec![IpamConfig {
                        subnet: Some(subnet.cidr()),
                        gateway: Some(subnet.gateway().to_string()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                options: Some(HashMap::from([(
                    // No traffic between containers on this bridge (there is one, but say so).
                    "com.docker.network.bridge.enable_icc".to_string(),
                    "false".to_string(),
                )])),
                labels: Some(labels.clone()),
                ..Default::default()
            };
            match d.create_network(body).await {
                Ok(_) => {}
                // Someone else (another daemon, an operator) took this range: skip it.
                Err(BollardError::DockerResponseServerError { message, .. })
                    if message.contains("overlaps") || message.contains("Pool overlaps") =>
                {
                    tracing::debug!(subnet = %subnet.cidr(), "subnet in use on the engine, trying the next");
                    continue;
                }
                Err(e) => {
                    self.inner.subnets.release(&subnet);
                    return Err(map_err("create network", e));
                }
            }
            let isolation = Isolation { subnet: subnet.cidr(), egress: req.egress };
            if let Err(e) = self.inner.firewall.isolate(&[isolation]).await {
                let _ = d.remove_network(&req.name).await;
                self.inner.subnets.release(&subnet);
                return Err(e);
            }
            return Ok(NetworkInfo {
                name: req.name.clone(),
                subnet: subnet.cidr(),
                gateway: subnet.gateway(),
                address: subnet.sandbox(),
                egress_key: None,
            });
        }
        Err(Error::Unavailable("no free subnet found that the engine accepts".into()))
    }

    /// Removes a network, its host rules and its subnet reservation. Gone is fine.
    async fn remove_network(&self, d: &Docker, name: &str) -> Result<()> {
        let subnet = match d.inspect_network(name, None).await {
            Ok(n) => n.ipam.and_then(|i| i.config).unwrap_or_default().into_iter().find_map(|c| c.subnet),
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(map_err("inspect network", e)),
        };
        // Rules first (its containers are gone): a crash in between then
        // leaves a network without rules, which reconcile removes, rather
        // than rules without a network, which nothing would.
        if let Some(cidr) = &subnet {
            self.inner.firewall.release(cidr).await?;
        }
        match d.remove_network(name).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(map_err("remove network", e)),
        }
        if let Some(s) = subnet.as_deref().and_then(Subnet::parse) {
            self.inner.subnets.release(&s);
        }
        Ok(())
    }

    /// The negotiated client, connecting first if needed.
    async fn docker(&self) -> Result<Docker> {
        let inner = &self.inner;
        if let Some(d) = inner.client.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(d.clone());
        }
        let mut d = match (&inner.host, &inner.tls) {
            (Some(h), Some(t)) => Docker::connect_with_ssl(
                h,
                &t.key,
                &t.cert,
                &t.ca,
                inner.timeout.as_secs().max(1),
                bollard::API_DEFAULT_VERSION,
            ),
            (Some(h), None) => Docker::connect_with_host(h),
            (None, _) => Docker::connect_with_defaults(),
        }
        .map_err(|e| Error::Unavailable(e.to_string()))?;
        d.set_timeout(inner.timeout);
        let d = d.negotiate_version().await.map_err(|e| map_err("connect", e))?;
        tracing::info!(version = %d.client_version(), "connected to the Docker engine");
        // What the engine can enforce, before any sandbox is made with this client.
        let info = d.info().await.map_err(|e| map_err("info", e))?;
        let host_flag = std::fs::read_to_string(APPARMOR_ENABLED).ok();
        let support = apparmor_support(host_flag.as_deref(), info.security_options.as_deref().unwrap_or(&[]));
        inner.apparmor.get_or_init(|| match support {
            Ok(()) => {
                tracing::info!(profile = APPARMOR_PROFILE, "AppArmor available: every sandbox runs under its profile");
                true
            }
            Err(missing) => {
                tracing::warn!(
                    %missing,
                    "AppArmor unavailable on this host: sandboxes run without an AppArmor profile \
                     (seccomp, no capabilities and no-new-privileges still apply)"
                );
                false
            }
        });
        self.learn_runtimes(&info);
        *inner.client.write().unwrap_or_else(|p| p.into_inner()) = Some(d.clone());
        Ok(d)
    }

    /// Takes in the engine's runtimes (from `docker info`): which isolation
    /// levels it can give from now on. Says so in the log when that changes.
    fn learn_runtimes(&self, info: &bollard::models::SystemInfo) {
        let inner = &self.inner;
        let engine: Vec<String> = info.runtimes.iter().flat_map(|r| r.keys().cloned()).collect();
        let now = inner.sandboxes.runtimes.availability(&engine);
        let mut known = inner.isolation.write().unwrap_or_else(|p| p.into_inner());
        if *known == now {
            return;
        }
        for level in &now.0 {
            if !known.0.contains(level) {
                let runtimes = inner.sandboxes.runtimes.names(*level).join(", ");
                tracing::info!(isolation = %level, %runtimes, "isolation level available");
            }
        }
        for (level, why) in &now.1 {
            if !known.1.iter().any(|(l, w)| l == level && w == why) {
                tracing::warn!(isolation = %level, %why, "isolation level unavailable: profiles that need it are refused");
            }
        }
        *known = now;
    }

    /// Reads the engine's runtimes again (an operator may register one, e.g.
    /// runsc, and SIGHUP the engine while the daemon runs).
    pub async fn refresh_runtimes(&self) -> Result<()> {
        let info = self.docker().await?.info().await.map_err(|e| map_err("info", e))?;
        self.learn_runtimes(&info);
        Ok(())
    }

    /// Isolation levels the engine can give now, and why not the others.
    pub fn isolation_levels(&self) -> IsolationState {
        self.inner.isolation.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Creates and starts an exec, attached to its output (and stdin if asked).
    async fn start_exec(
        &self,
        container: &str,
        spec: ExecSpec,
        stdin: bool,
    ) -> Result<(ExecSession, Pin<Box<dyn tokio::io::AsyncWrite + Send>>)> {
        let d = self.docker().await?;
        let opts = CreateExecOptions::<String> {
            cmd: Some(spec.command),
            env: Some(spec.env),
            working_dir: spec.workdir,
            attach_stdin: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(spec.tty.is_some()),
            privileged: Some(false),
            ..Default::default()
        };
        let size = spec.tty;
        let exec = d.create_exec(container, opts).await.map_err(|e| exec_err("create exec", e))?;
        // When the container stops between the create and the start, runc's
        // complaint comes back as the command's output, with exit code 126:
        // that is the sandbox stopping, not the command's doing.
        let (rt, container, mut first) = (self.clone(), container.to_string(), true);
        let not_started = move |item: Result<ExecChunk>| {
            // Only the first chunk is looked at: nothing is cloned for the rest.
            let check = std::mem::replace(&mut first, false).then(|| (rt.clone(), container.clone()));
            async move {
                match (&item, check) {
                    (Ok(ExecChunk::Stdout(b)), Some((rt, container))) if b.starts_with(b"OCI runtime exec failed") => {
                        // The engine may still call a dying container
                        // running for a moment: look again before passing
                        // the complaint on as the command's.
                        for _ in 0..5 {
                            if !matches!(rt.container_status(&container).await, Ok(Some(s)) if s.running) {
                                return Err(Error::FailedPrecondition(
                                    "the sandbox stopped before the command could start".into(),
                                ));
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        item
                    }
                    _ => item,
                }
            }
        };
        let started = d.start_exec(&exec.id, None).await.map_err(|e| exec_err("start exec", e))?;
        if let Some(size) = size {
            self.resize_exec(&exec.id, size).await?;
        }
        match started {
            StartExecResults::Attached { output, input } => Ok((
                ExecSession {
                    input: None,
                    exec_id: exec.id,
                    output: output
                        .filter_map(|r| async move {
                            match r {
                                Ok(bollard::container::LogOutput::StdOut { message }) => {
                                    Some(Ok(ExecChunk::Stdout(message.to_vec())))
                                }
                                Ok(bollard::container::LogOutput::StdErr { message }) => {
                                    Some(Ok(ExecChunk::Stderr(message.to_vec())))
                                }
                                Ok(bollard::container::LogOutput::Console { message }) => {
                                    Some(Ok(ExecChunk::Stdout(message.to_vec())))
                                }
                                Ok(bollard::container::LogOutput::StdIn { .. }) => None,
                                Err(e) => Some(Err(map_err("exec output", e))),
                            }
                        })
                        .then(not_started)
                        .boxed(),
                },
                input,
            )),
            StartExecResults::Detached => Err(Error::Internal("exec started detached".into())),
        }
    }

    /// The subnets of every network on the engine, ours or not.
    pub(crate) async fn subnets_in_use(&self) -> Result<Vec<Ipv4Net>> {
        let d = self.docker().await?;
        let nets = d
            .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
            .await
            .map_err(|e| map_err("list networks", e))?;
        Ok(nets
            .into_iter()
            .flat_map(|n| n.ipam.and_then(|i| i.config).unwrap_or_default())
            .filter_map(|c| c.subnet.as_deref().and_then(parse_net))
            .collect())
    }

    /// Every daemon instance's objects on this engine (labelled
    /// `sandpit.managed=true`), by their `sandpit.instance` label.
    pub async fn instances(&self) -> Result<BTreeMap<String, InstanceObjects>> {
        let d = self.docker().await?;
        let managed = HashMap::from([(labels::MANAGED.to_string(), "true".to_string())]);
        let filters = label_filters(&managed);
        let mut out: BTreeMap<String, InstanceObjects> = BTreeMap::new();
        let containers = d
            .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
            .await
            .map_err(|e| map_err("list containers", e))?;
        let networks = d
            .list_networks(Some(
                bollard::query_parameters::ListNetworksOptionsBuilder::default().filters(&filters).build(),
            ))
            .await
            .map_err(|e| map_err("list networks", e))?;
        let volumes = d
            .list_volumes(Some(
                bollard::query_parameters::ListVolumesOptionsBuilder::default().filters(&filters).build(),
            ))
            .await
            .map_err(|e| map_err("list volumes", e))?
            .volumes
            .unwrap_or_default();
        let instance = |l: Option<&HashMap<String, String>>| l.and_then(|l| l.get(labels::INSTANCE)).cloned();
        for i in containers.iter().filter_map(|c| instance(c.labels.as_ref())) {
            out.entry(i).or_default().containers += 1;
        }
        for i in networks.iter().filter_map(|n| instance(n.labels.as_ref())) {
            out.entry(i).or_default().networks += 1;
        }
        for i in volumes.iter().filter_map(|v| instance(Some(&v.labels))) {
            out.entry(i).or_default().volumes += 1;
        }
        Ok(out)
    }

    /// Removes every container, network and volume of `instance`
    /// (containers first: a network in use cannot go). Goes on past a
    /// failure and reports all of them. Its host firewall rules are not
    /// touched here.
    pub async fn remove_instance(&self, instance: &str) -> Result<InstanceObjects> {
        let d = self.docker().await?;
        let filters = label_filters(&labels::selector(instance));
        let mut removed = InstanceObjects::default();
        let mut failed = Vec::new();
        let containers = d
            .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
            .await
            .map_err(|e| map_err("list containers", e))?;
        let opts = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        for id in containers.into_iter().filter_map(|c| c.id) {
            match d.remove_container(&id, Some(opts.clone())).await {
                Ok(()) => removed.containers += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => failed.push(format!("container {id}: {e}")),
            }
        }
        let networks = d
            .list_networks(Some(
                bollard::query_parameters::ListNetworksOptionsBuilder::default().filters(&filters).build(),
            ))
            .await
            .map_err(|e| map_err("list networks", e))?;
        for name in networks.into_iter().filter_map(|n| n.name) {
            match d.remove_network(&name).await {
                Ok(()) => removed.networks += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => failed.push(format!("network {name}: {e}")),
            }
        }
        let volumes = d
            .list_volumes(Some(
                bollard::query_parameters::ListVolumesOptionsBuilder::default().filters(&filters).build(),
            ))
            .await
            .map_err(|e| map_err("list volumes", e))?
            .volumes
            .unwrap_or_default();
        let force = bollard::query_parameters::RemoveVolumeOptionsBuilder::default().force(true).build();
        for v in volumes {
            match d.remove_volume(&v.name, Some(force.clone())).await {
                Ok(()) => removed.volumes += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => failed.push(format!("volume {}: {e}", v.name)),
            }
        }
        if failed.is_empty() {
            Ok(removed)
        } else {
            Err(Error::Internal(format!("removed {removed:?}, but not: {}", failed.join("; "))))
        }
    }

    /// What the engine (AppArmor, learnt at connect) and the image (its
    /// declared VOLUMEs) add to the hardening of `spec`'s container.
    async fn confinement(&self, d: &Docker, spec: &ContainerSpec) -> Result<Confinement> {
        let image = match d.inspect_image(&spec.image).await {
            Ok(i) => i,
            Err(e) if is_not_found(&e) => return Err(image_missing(spec)),
            Err(e) => return Err(map_err("inspect image", e)),
        };
        let declared = image.config.and_then(|c| c.volumes).unwrap_or_default();
        let masked_volumes = masked_volumes(&declared, spec).map_err(Error::FailedPrecondition)?;
        if !masked_volumes.is_empty() {
            tracing::info!(
                image = %spec.image,
                container = %spec.name,
                masked = ?masked_volumes,
                "the image declares VOLUMEs: each is masked by an empty read-only tmpfs, so none is host disk"
            );
        }
        Ok(Confinement { apparmor: self.inner.apparmor.get().copied().unwrap_or(false), masked_volumes })
    }

    /// Removes a network (and its host rules) that no sandbox names.
    pub(crate) async fn remove_network_only(&self, name: &str) -> Result<()> {
        let d = self.docker().await?;
        self.remove_network(&d, name).await
    }

    /// Docker's own view of the engine, for health checks.
    pub async fn ping(&self) -> Result<()> {
        self.docker().await?.ping().await.map(|_| ()).map_err(|e| map_err("ping", e))
    }
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code: 404, .. })
}

/// What the engine can give before it has been reached: only levels that
/// need no runtime of their own (the engine's default).
fn not_connected(names: &RuntimeNames) -> IsolationState {
    let (available, mut unavailable) = names.availability(&[]);
    for (_, why) in &mut unavailable {
        *why = format!("the Docker engine has not been reached yet to check its runtimes ({why})");
    }
    (available, unavailable)
}

/// Connection-level failures mean the engine is unavailable; answers are Docker errors.
/// An exec refused because the container is stopping, being removed or gone
/// (an exec racing a delete or expiry) is the sandbox's state, not a fault.
/// A failed exec call: a container that is gone, stopped or on its way out
/// (the engine says 404, 409, or 500 with "Removal In Progress") is the
/// sandbox not running, which the caller can act on; anything else is the
/// engine's failure.
fn exec_err(op: &'static str, e: BollardError) -> Error {
    const STOPPING: [&str; 4] = ["is not running", "Removal In Progress", "is restarting", "is paused"];
    match e {
        BollardError::DockerResponseServerError { status_code, message }
            if matches!(status_code, 404 | 409) || STOPPING.iter().any(|m| message.contains(m)) =>
        {
            Error::FailedPrecondition(format!("the sandbox's container is not running ({message})"))
        }
        other => map_err(op, other),
    }
}

/// A failed Docker call as the daemon's error, counted in the metrics.
fn map_err(op: &'static str, e: BollardError) -> Error {
    let error = match e {
        BollardError::DockerResponseServerError { status_code, message } => {
            Error::Docker { op, message: format!("{message} (HTTP {status_code})") }
        }
        BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::HttpClientError { .. }
        | BollardError::SocketNotFoundError(_)
        | BollardError::RequestTimeoutError
        | BollardError::HyperLegacyError { .. } => Error::Unavailable(format!("{op}: {e}")),
        other => Error::Docker { op, message: other.to_string() },
    };
    let kind = if matches!(error, Error::Unavailable(_)) { "unavailable" } else { "error" };
    sandpit_core::metrics::global().docker_error(op, kind);
    error
}

/// Whether sandboxes can be put under AppArmor: the host has it enabled
/// (`host_flag`, the content of [`APPARMOR_ENABLED`]; `None` when the file is
/// absent, i.e. no AppArmor in the kernel) and the engine lists
/// `name=apparmor` among its security options (`docker info`). Both, because
/// an engine without AppArmor takes `apparmor=` options without complaint
/// and reports a profile it does not enforce (seen on Docker 20.10), and a
/// host flag alone says nothing of the engine. `Err` says what is missing.
pub fn apparmor_support(host_flag: Option<&str>, engine_options: &[String]) -> std::result::Result<(), String> {
    let mut missing = Vec::new();
    match host_flag.map(str::trim) {
        Some("Y") => {}
        Some(other) => missing.push(format!("the host has AppArmor disabled ({APPARMOR_ENABLED} is {other:?})")),
        None => missing.push(format!("the host kernel has no AppArmor ({APPARMOR_ENABLED} is absent)")),
    }
    let engine = engine_options.iter().any(|o| o.split(',').any(|kv| kv.trim() == "name=apparmor"));
    if !engine {
        missing.push("the Docker engine does not list name=apparmor in its security options".into());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

/// What the engine and the image add to a container's hardening.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confinement {
    /// Ask for AppArmor's [`APPARMOR_PROFILE`] by name (see [`apparmor_support`]).
    pub apparmor: bool,
    /// The image's declared VOLUMEs to mask, as [`masked_volumes`] gives them.
    pub masked_volumes: Vec<String>,
}

/// An absolute path as Docker keys mounts by it (Go's `filepath.Clean`):
/// `None` when it is not absolute.
fn clean_path(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// The image's declared VOLUMEs (`declared`, from `docker image inspect`)
/// that the sandbox must mask: Docker would otherwise make each one an
/// anonymous volume, a writable directory on the host's disk outside the
/// sandbox's size-limited tmpfs. One at the scratch directory or at a
/// dataset's mount point is left out: that mount already covers it, and
/// Docker makes no volume where something is mounted. Sorted, each once.
///
/// Masked rather than refused: many ordinary images declare a VOLUME (for
/// data a service would keep), and they still run; only writing there fails,
/// loudly (read-only file system) instead of filling the host's disk.
/// `Err` names a volume that cannot be masked (not absolute, or `/`): the
/// image is refused.
pub fn masked_volumes(declared: &[String], spec: &ContainerSpec) -> std::result::Result<Vec<String>, String> {
    let covered: Vec<String> = std::iter::once(SCRATCH_DIR)
        .chain(spec.mounts.iter().map(|m| m.target.as_str()))
        .filter_map(clean_path)
        .collect();
    let mut masked = Vec::new();
    for v in declared {
        let path = clean_path(v).filter(|p| p != "/").ok_or_else(|| {
            format!("image '{}' declares VOLUME {v:?}, which a sandbox cannot mask: the image is refused", spec.image)
        })?;
        if !covered.contains(&path) {
            masked.push(path);
        }
    }
    masked.sort();
    masked.dedup();
    Ok(masked)
}

/// The scratch tmpfs's options. `mode=1777` alone does not make it writable:
/// runc (1.1 on Docker 20.10 here) gives a tmpfs's root the mode of the image
/// directory it is mounted over, copy-up or not, so an image whose /tmp is
/// root's 0755 gave a /tmp only root could write. This engine refuses
/// `notmpcopyup`, and a `Mounts` tmpfs with a mode fares the same. So the
/// tmpfs belongs to the sandbox user (`uid=`/`gid=`, when the user is given
/// as numbers): as owner it may write whatever mode the image leaves, short
/// of one that denies even the owner (e.g. 0555). A sandbox has one user, so
/// the sticky bit protected no one. `mode=1777` still serves images with no
/// /tmp at all.
fn scratch_options(spec: &ContainerSpec) -> String {
    let mut o = format!("rw,nosuid,nodev,size={},mode=1777", spec.resources.tmpfs);
    let mut ids = spec.user.splitn(2, ':');
    for (key, id) in [("uid", ids.next()), ("gid", ids.next())] {
        if let Some(n) = id.map(str::trim).filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
            o.push_str(&format!(",{key}={n}"));
        }
    }
    o
}

/// Host threads gVisor's Sentry and Gofer use with nothing running inside,
/// and per process inside (measured with runsc 20221219: about 54 idle and
/// 7.5 per process).
const GVISOR_BASE_THREADS: i64 = 64;
const GVISOR_THREADS_PER_PROCESS: i64 = 8;

/// The pids limit the engine is given for a profile's `pids`. Under runc it
/// counts the sandbox's own processes. Under gVisor the host's pids cgroup
/// counts the Sentry's threads, not the processes inside (which live in
/// gVisor's kernel), so the limit is scaled to hold about `pids` processes
/// inside; at the limit the sandbox is stopped rather than refused a fork
/// (gVisor's Sentry cannot make a thread and exits), which still keeps the
/// host safe.
pub fn host_pids_limit(isolation: Level, pids: i64) -> i64 {
    match isolation {
        Level::Container => pids,
        Level::Gvisor => GVISOR_BASE_THREADS.saturating_add(pids.saturating_mul(GVISOR_THREADS_PER_PROCESS)),
    }
}

/// The container Docker is asked for: the spec plus every hardening setting.
/// `network` is the sandbox's own network, if it has one; `egress_port` the
/// proxy's port on its gateway; `confinement` what the engine and the image
/// add.
pub fn create_body(
    spec: &ContainerSpec,
    network: Option<&NetworkInfo>,
    egress_port: u16,
    confinement: &Confinement,
) -> ContainerCreateBody {
    let r = &spec.resources;
    let memory = i64::try_from(r.memory).unwrap_or(i64::MAX);
    let mut security_opt = vec!["no-new-privileges:true".to_string()];
    if confinement.apparmor {
        // Named, so that no engine default (or a change of it) can leave a
        // sandbox unconfined.
        security_opt.push(format!("apparmor={APPARMOR_PROFILE}"));
    }
    // An empty read-only tmpfs over each image VOLUME: Docker makes no
    // anonymous volume where a tmpfs is mounted (nothing is copied into it).
    let mut tmpfs: HashMap<String, String> =
        confinement.masked_volumes.iter().map(|v| (v.clone(), VOLUME_MASK.to_string())).collect();
    tmpfs.insert(SCRATCH_DIR.to_string(), scratch_options(spec));
    let host_config = HostConfig {
        // Limits: memory with swap equal (no swap), cpus, pids.
        memory: Some(memory),
        memory_swap: Some(memory),
        nano_cpus: Some((r.cpus * 1e9) as i64),
        pids_limit: Some(host_pids_limit(spec.isolation, r.pids)),
        // No capabilities, no privilege escalation; Docker's default seccomp
        // profile stays in force because nothing overrides it.
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(security_opt),
        privileged: Some(false),
        readonly_rootfs: Some(true),
        tmpfs: Some(tmpfs),
        // Own namespaces; its own network or none; nothing published; only
        // datasets mounted, read-only.
        network_mode: Some(network.map_or_else(|| "none".to_string(), |n| n.name.clone())),
        dns: network.filter(|_| spec.network.as_ref().is_some_and(|r| r.internal)).map(|_| vec![BLACKHOLE_DNS.into()]),
        binds: (!spec.mounts.is_empty())
            .then(|| spec.mounts.iter().map(|m| format!("{}:{}:ro", m.source.display(), m.target)).collect()),
        // The experiment's workspace: the one writable mount that outlives the sandbox.
        mounts: spec.workspace.as_ref().map(|ws| {
            vec![bollard::models::Mount {
                target: Some(WORKSPACE_DIR.into()),
                source: Some(ws.name.clone()),
                typ: Some(bollard::models::MountType::VOLUME),
                read_only: Some(false),
                ..Default::default()
            }]
        }),
        ipc_mode: Some("private".into()),
        publish_all_ports: Some(false),
        init: Some(true),
        runtime: spec.runtime.clone(),
        restart_policy: Some(RestartPolicy { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None }),
        auto_remove: Some(false),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), LOG_MAX_SIZE.to_string()),
                ("max-file".to_string(), "1".to_string()),
            ])),
        }),
        ..Default::default()
    };
    let mut env = spec.env.clone();
    if let (Some(n), Some(true)) = (network, spec.network.as_ref().map(|r| r.egress)) {
        env.extend(proxy_env(&format!("http://{}:{egress_port}", n.gateway)));
    }
    let networking_config = network.map(|n| NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            n.name.clone(),
            EndpointSettings {
                ipam_config: Some(EndpointIpamConfig {
                    ipv4_address: Some(n.address.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )])),
    });
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        user: Some(spec.user.clone()),
        hostname: Some(spec.hostname.clone()),
        env: Some(env),
        working_dir: Some(SCRATCH_DIR.into()),
        labels: Some(spec.labels.clone()),
        network_disabled: Some(network.is_none()),
        host_config: Some(host_config),
        networking_config,
        ..Default::default()
    }
}

fn image_missing(spec: &ContainerSpec) -> Error {
    Error::ImageUnavailable { image: spec.image.clone(), reason: "not present on the engine".into() }
}

fn label_filters(selector: &HashMap<String, String>) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), selector.iter().map(|(k, v)| format!("{k}={v}")).collect())])
}

/// `image:tag` split for the pull API; a digest or no tag pulls as named.
fn split_image(image: &str) -> (&str, Option<&str>) {
    if image.contains('@') {
        return (image, None);
    }
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
        _ => (image, Some("latest")),
    }
}

/// What the engine offers, by container and network: the driver
/// ([`driver`]) builds sandboxes out of these.
impl DockerRuntime {
    pub(crate) async fn image_present(&self, image: &str) -> Result<()> {
        let d = self.docker().await?;
        match d.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(map_err("inspect image", e)),
        }
        tracing::info!(%image, "image missing locally, pulling");
        let mut progress = self.pull(image);
        while let Some(p) = progress.next().await {
            p?;
        }
        Ok(())
    }

    pub(crate) fn pull(&self, image: &str) -> BoxStream<Result<PullProgress>> {
        let rt = self.clone();
        let image = image.to_string();
        futures_util::stream::once(async move {
            let d = rt.docker().await?;
            match d.inspect_image(&image).await {
                Ok(_) => return Ok(futures_util::stream::empty().boxed()),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(map_err("inspect image", e)),
            }
            if let Some(command) = rt.inner.sandboxes.builders.get(&image) {
                return rt.build_image(&image, command).await.map(|p| futures_util::stream::iter([Ok(p)]).boxed());
            }
            let (repo, tag) = split_image(&image);
            let mut opts = CreateImageOptionsBuilder::default().from_image(repo);
            if let Some(t) = tag {
                opts = opts.tag(t);
            }
            let unavailable = move |reason: String| Error::ImageUnavailable { image: image.clone(), reason };
            Ok(d.create_image(Some(opts.build()), None, None)
                .map(move |r| match r {
                    Ok(info) => match info.error_detail.and_then(|e| e.message) {
                        Some(err) => Err(unavailable(err)),
                        None => {
                            let detail = info.progress_detail.unwrap_or_default();
                            Ok(PullProgress {
                                status: info.status.unwrap_or_default(),
                                layer: info.id.unwrap_or_default(),
                                current: detail.current.unwrap_or(0),
                                total: detail.total.unwrap_or(0),
                            })
                        }
                    },
                    Err(e) => Err(match map_err("pull", e) {
                        Error::Docker { message, .. } => unavailable(message),
                        other => other,
                    }),
                })
                .boxed())
        })
        .try_flatten()
        .boxed()
    }

    /// Creates the sandbox's network (if any) and container, and starts it.
    /// If any step fails, whatever was made is removed before the error is returned.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<Provisioned> {
        let d = self.docker().await?;
        let confinement = self.confinement(&d, spec).await?;
        let network = match &spec.network {
            Some(req) => Some(self.create_network(&d, req, &spec.labels).await?),
            None => None,
        };
        let undo_network = |d: Docker, name: Option<String>| async move {
            if let Some(n) = name {
                let _ = self.remove_network(&d, &n).await;
            }
        };
        if let Some(ws) = &spec.workspace {
            if let Err(e) = self.ensure_workspace(&d, ws, &spec.user).await {
                undo_network(d, network.map(|n| n.name)).await;
                return Err(e);
            }
        }
        let opts = CreateContainerOptionsBuilder::default().name(&spec.name).build();
        let body = create_body(spec, network.as_ref(), self.inner.egress_port, &confinement);
        let created = match d.create_container(Some(opts), body).await {
            Ok(c) => c,
            Err(e) => {
                undo_network(d, network.map(|n| n.name)).await;
                return Err(match e {
                    BollardError::DockerResponseServerError { status_code: 404, .. } => image_missing(spec),
                    other => map_err("create container", other),
                });
            }
        };
        // The image was inspected before the create; should its tag have
        // moved since to one declaring other VOLUMEs, Docker made volumes
        // for them. Such a container never starts.
        let volumes = match d.inspect_container(&created.id, None).await {
            Ok(i) => i
                .mounts
                .unwrap_or_default()
                .into_iter()
                .filter(|m| m.typ.as_deref() == Some("volume"))
                .filter(|m| spec.workspace.is_none() || m.destination.as_deref() != Some(WORKSPACE_DIR))
                .map(|m| m.destination.unwrap_or_default())
                .collect::<Vec<_>>(),
            Err(e) => {
                let _ = self.remove(&created.id, network.as_ref().map(|n| n.name.as_str())).await;
                return Err(map_err("inspect container", e));
            }
        };
        if !volumes.is_empty() {
            // Removed with its anonymous volumes.
            let _ = self.remove(&created.id, network.as_ref().map(|n| n.name.as_str())).await;
            return Err(Error::FailedPrecondition(format!(
                "image '{}' changed while the sandbox was made: Docker gave it volumes at {volumes:?}; try again",
                spec.image
            )));
        }
        if let Err(e) = d.start_container(&created.id, None).await {
            let hung = matches!(e, BollardError::RequestTimeoutError);
            let error = map_err("start container", e);
            // Never leave a created-but-not-started container behind.
            let _ = self.remove(&created.id, network.as_ref().map(|n| n.name.as_str())).await;
            if !hung {
                return Err(error);
            }
            // A runtime that never answers (gVisor on a platform the host
            // cannot run, say) must not pass for an engine that went away:
            // the create fails, and the log says which runtime it was.
            let runtime = spec.runtime.as_deref().unwrap_or("the engine's default (runc)");
            let within = sandpit_core::time::format_duration_ms(self.inner.timeout);
            tracing::error!(
                %runtime,
                container = %created.id,
                timeout = %within,
                "the container runtime did not start a sandbox in time: it may be hung, and holding the engine's locks"
            );
            return Err(Error::Docker {
                op: "start container",
                message: format!("runtime '{runtime}' did not start the sandbox within {within}: it may be hung"),
            });
        }
        Ok(Provisioned { container_id: created.id, network, node: None })
    }

    /// Kills (no stop grace) and removes a container by id or name, then its
    /// network by name, with the host rules that went with it. Removing what
    /// is already gone succeeds.
    pub async fn remove(&self, container: &str, network: Option<&str>) -> Result<()> {
        let d = self.docker().await?;
        // force: SIGKILL then remove, with no stop grace period.
        let opts = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match d.remove_container(container, Some(opts)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            // Docker answers 409 while a removal of the same container is already in progress.
            Err(BollardError::DockerResponseServerError { status_code: 409, message })
                if message.contains("already in progress") => {}
            Err(e) => return Err(map_err("remove container", e)),
        }
        match network {
            Some(n) => self.remove_network(&d, n).await,
            None => Ok(()),
        }
    }

    pub(crate) async fn repair_isolation(&self, live: &[Isolation]) -> Result<IsolationRepair> {
        let (repair, strays) = self.inner.firewall.repair(live).await?;
        if !strays.is_empty() {
            // Only hooks whose network is gone from the engine: a network
            // being made now already has its subnet there.
            match self.subnets_in_use().await {
                Ok(used) => {
                    let gone: Vec<Ipv4Net> = strays.into_iter().filter(|s| !used.contains(s)).collect();
                    if let Err(e) = self.inner.firewall.forget(&gone).await {
                        tracing::warn!(error = %e, "removing host rules of vanished networks failed; the next check retries");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot list networks; stray host rules stay for now"),
            }
        }
        Ok(repair)
    }

    pub(crate) async fn isolate(&self, nets: &[Isolation]) -> Result<()> {
        self.inner.firewall.isolate(nets).await
    }

    pub(crate) fn isolation_changes(&self) -> BoxStream<()> {
        self.inner.firewall.changes()
    }

    /// Sends SIGKILL to a container's processes. A missing or stopped container is fine.
    pub(crate) async fn kill_container(&self, container: &str) -> Result<()> {
        let d = self.docker().await?;
        let opts = bollard::query_parameters::KillContainerOptionsBuilder::default().signal("SIGKILL").build();
        match d.kill_container(container, Some(opts)).await {
            Ok(()) => Ok(()),
            // Gone, or not running (409): nothing to stop.
            Err(e) if is_not_found(&e) => Ok(()),
            Err(BollardError::DockerResponseServerError { status_code: 409, .. }) => Ok(()),
            Err(e) => Err(map_err("kill container", e)),
        }
    }

    /// Every network carrying all of `selector`'s labels.
    pub(crate) async fn list_networks(&self, selector: &HashMap<String, String>) -> Result<Vec<ManagedNetwork>> {
        let d = self.docker().await?;
        let opts =
            bollard::query_parameters::ListNetworksOptionsBuilder::default().filters(&label_filters(selector)).build();
        let list = d.list_networks(Some(opts)).await.map_err(|e| map_err("list networks", e))?;
        Ok(list
            .into_iter()
            .filter_map(|n| {
                Some(ManagedNetwork {
                    name: n.name?,
                    sandbox_id: n.labels.unwrap_or_default().remove(labels::SANDBOX),
                    created: n.created.as_deref().and_then(sandpit_core::time::parse_rfc3339).unwrap_or(UNIX_EPOCH),
                })
            })
            .collect())
    }

    /// Every container (running or not) carrying all of `selector`'s labels.
    pub(crate) async fn list_containers(&self, selector: &HashMap<String, String>) -> Result<Vec<ManagedContainer>> {
        let d = self.docker().await?;
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&label_filters(selector)).build();
        let list = d.list_containers(Some(opts)).await.map_err(|e| map_err("list containers", e))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let id = c.id?;
                let labels = c.labels.unwrap_or_default();
                Some(ManagedContainer {
                    id,
                    sandbox_id: labels.get(labels::SANDBOX).cloned(),
                    running: c.state.is_some_and(|s| s.to_string() == "running"),
                    // Docker reports whole seconds, rounded down: round up
                    // instead, so an orphan is never removed before its grace.
                    created: UNIX_EPOCH + Duration::from_secs(c.created.unwrap_or(0).max(0) as u64 + 1),
                })
            })
            .collect())
    }

    /// The container's process state; `None` if it does not exist.
    pub(crate) async fn container_status(&self, container: &str) -> Result<Option<ContainerStatus>> {
        let d = self.docker().await?;
        match d.inspect_container(container, None).await {
            Ok(i) => {
                let s = i.state.unwrap_or_default();
                Ok(Some(ContainerStatus {
                    running: s.running.unwrap_or(false),
                    exit_code: s.exit_code,
                    oom_killed: s.oom_killed.unwrap_or(false),
                }))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_err("inspect container", e)),
        }
    }

    /// Makes the workspace volume if it is missing, owned by the sandbox
    /// user (a new volume's root is root's 0755), from this host: the
    /// engine runs here, as it must for datasets and the helper.
    async fn ensure_workspace(&self, d: &Docker, ws: &spec::Workspace, user: &str) -> Result<()> {
        let opts = bollard::models::VolumeCreateRequest {
            name: Some(ws.name.clone()),
            labels: Some(ws.labels.clone()),
            ..Default::default()
        };
        let v = d.create_volume(opts).await.map_err(|e| map_err("create volume", e))?;
        let ids = user.split_once(':').and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)));
        let Some((uid, gid)) = ids else {
            return Err(Error::FailedPrecondition(format!(
                "sandbox user '{user}' is not uid:gid; a workspace needs numbers"
            )));
        };
        let root = std::path::Path::new(&v.mountpoint);
        let owned = std::fs::metadata(root).map(|m| std::os::unix::fs::MetadataExt::uid(&m) == uid);
        if !matches!(owned, Ok(true)) {
            std::os::unix::fs::chown(root, Some(uid), Some(gid)).map_err(|e| {
                Error::FailedPrecondition(format!(
                    "workspace {} at {}: cannot give it to the sandbox user ({e}); the daemon must run as root on the engine's host",
                    ws.name, v.mountpoint
                ))
            })?;
        }
        Ok(())
    }

    /// Removes a volume; whether it existed.
    pub(crate) async fn remove_volume(&self, name: &str) -> Result<bool> {
        let d = self.docker().await?;
        match d.remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>).await {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(map_err("remove volume", e)),
        }
    }

    /// Builds `image` with `command` (one build at a time; a build another
    /// call finished meanwhile is not repeated), its output in the log.
    async fn build_image(&self, image: &str, command: &[String]) -> Result<PullProgress> {
        let _one = self.inner.building.lock().await;
        let d = self.docker().await?;
        if d.inspect_image(image).await.is_ok() {
            return Ok(PullProgress { status: format!("{image} was built meanwhile"), ..Default::default() });
        }
        let shown = command.join(" ");
        tracing::info!(%image, command = %shown, "image missing locally; building it");
        let started = std::time::Instant::now();
        let out = tokio::process::Command::new(&command[0])
            .args(&command[1..])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| Error::ImageUnavailable { image: image.into(), reason: format!("running {shown}: {e}") })?;
        for line in String::from_utf8_lossy(&out.stdout).lines().chain(String::from_utf8_lossy(&out.stderr).lines()) {
            tracing::info!(%image, "build: {line}");
        }
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(3).collect();
            return Err(Error::ImageUnavailable {
                image: image.into(),
                reason: format!(
                    "building it with {shown} failed ({}): {}",
                    out.status,
                    tail.into_iter().rev().collect::<Vec<_>>().join("; ")
                ),
            });
        }
        d.inspect_image(image).await.map_err(|_| Error::ImageUnavailable {
            image: image.into(),
            reason: format!("{shown} succeeded but the engine has no image named {image}"),
        })?;
        let took = sandpit_core::time::format_duration_ms(started.elapsed());
        tracing::info!(%image, took = %took, "image built");
        Ok(PullProgress { status: format!("built {image} with {shown} in {took}"), ..Default::default() })
    }

    /// Whether `container` has the helper at [`helper::PATH_IN_SANDBOX`].
    pub(crate) async fn has_helper(&self, container: &str) -> Result<bool> {
        if let Some(known) = self.inner.helpers.lock().unwrap_or_else(|p| p.into_inner()).get(container) {
            return Ok(*known);
        }
        let d = self.docker().await?;
        let info = d.inspect_container(container, None).await.map_err(|e| exec_err("inspect container", e))?;
        let has =
            info.mounts.unwrap_or_default().iter().any(|m| m.destination.as_deref() == Some(helper::PATH_IN_SANDBOX));
        let mut known = self.inner.helpers.lock().unwrap_or_else(|p| p.into_inner());
        // Containers that vanished without a destroy (lost) would pile up.
        if known.len() > 100_000 {
            known.clear();
        }
        known.insert(container.to_string(), has);
        Ok(has)
    }

    /// Forgets what [`Self::has_helper`] learnt of a container that is gone.
    pub(crate) fn forget_helper(&self, container: &str) {
        self.inner.helpers.lock().unwrap_or_else(|p| p.into_inner()).remove(container);
    }

    /// Starts a command in a running container.
    pub(crate) async fn exec_in(&self, container: &str, spec: ExecSpec) -> Result<ExecSession> {
        self.start_exec(container, spec, false).await.map(|(session, _)| session)
    }

    /// Starts a command with its standard input attached; returns the session
    /// and the writer to its stdin (drop or shut it down to send EOF).
    pub(crate) async fn exec_in_with_stdin(
        &self,
        container: &str,
        spec: ExecSpec,
    ) -> Result<(ExecSession, Pin<Box<dyn tokio::io::AsyncWrite + Send>>)> {
        self.start_exec(container, spec, true).await
    }

    /// Resizes an exec's terminal.
    pub(crate) async fn resize_exec(&self, exec_id: &str, size: sandpit_core::runtime::TerminalSize) -> Result<()> {
        let d = self.docker().await?;
        let opts = bollard::query_parameters::ResizeExecOptions { h: i32::from(size.rows), w: i32::from(size.cols) };
        d.resize_exec(exec_id, opts).await.map_err(|e| exec_err("resize exec", e))
    }

    /// The exit code of a finished exec (`None` while it runs).
    pub(crate) async fn exec_code(&self, exec_id: &str) -> Result<Option<i64>> {
        let d = self.docker().await?;
        let i = d.inspect_exec(exec_id).await.map_err(|e| exec_err("inspect exec", e))?;
        Ok(if i.running.unwrap_or(false) { None } else { i.exit_code })
    }

    /// Lifecycle events of containers carrying `selector`'s labels.
    pub(crate) fn container_events(&self, selector: &HashMap<String, String>) -> BoxStream<Result<RuntimeEvent>> {
        let mut filters = label_filters(selector);
        filters.insert("type".into(), vec!["container".into()]);
        filters.insert("event".into(), vec!["die".into(), "oom".into()]);
        let rt = self.clone();
        futures_util::stream::once(async move {
            let d = rt.docker().await?;
            let opts = EventsOptionsBuilder::default().filters(&filters).build();
            Ok::<_, Error>(d.events(Some(opts)).filter_map(|r| async move {
                match r {
                    Ok(ev) => {
                        let actor = ev.actor.unwrap_or_default();
                        let container_id = actor.id?;
                        let mut attributes = actor.attributes.unwrap_or_default();
                        let sandbox_id = attributes.remove(labels::SANDBOX)?;
                        match ev.action.as_deref() {
                            Some("die") => {
                                let exit_code = attributes.get("exitCode").and_then(|c| c.parse().ok());
                                Some(Ok(RuntimeEvent::Died { container_id, sandbox_id, exit_code }))
                            }
                            Some("oom") => Some(Ok(RuntimeEvent::Oom { container_id, sandbox_id })),
                            _ => None,
                        }
                    }
                    Err(e) => Some(Err(map_err("events", e))),
                }
            }))
        })
        .try_flatten()
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_on_a_container_on_its_way_out_is_a_failed_precondition() {
        let server = |status_code: u16, message: &str| BollardError::DockerResponseServerError {
            status_code,
            message: message.to_string(),
        };
        for (code, msg) in [
            (409, "Container abc is not running"),
            (404, "No such container: abc"),
            (500, "removal of container abc is already in progress: Removal In Progress"),
            (500, "Container abc is restarting, wait until the container is running"),
        ] {
            assert!(matches!(exec_err("create exec", server(code, msg)), Error::FailedPrecondition(_)), "{msg}");
        }
        assert!(matches!(exec_err("create exec", server(500, "disk on fire")), Error::Docker { .. }));
    }
    use sandpit_core::policy::Resources;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "sandpit-sb-1".into(),
            hostname: "sb-1".into(),
            image: "img:1".into(),
            command: vec![],
            user: "65534:65534".into(),
            env: vec![],
            labels: HashMap::from([("sandpit.managed".into(), "true".into())]),
            resources: Resources { cpus: 0.5, memory: 64 << 20, pids: 32, tmpfs: 8 << 20 },
            network: None,
            mounts: vec![],
            isolation: Level::Container,
            runtime: None,
            workspace: None,
        }
    }

    #[test]
    fn a_workspace_is_the_one_writable_volume() {
        let mut s = spec();
        s.workspace = Some(spec::Workspace { name: "sandpit-i-ws-exp-1".into(), labels: HashMap::new() });
        let h = create_body(&s, None, 3128, &Confinement::default()).host_config.unwrap();
        let m = h.mounts.unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(
            (m[0].target.as_deref(), m[0].source.as_deref(), m[0].read_only),
            (Some("/workspace"), Some("sandpit-i-ws-exp-1"), Some(false))
        );
        assert_eq!(h.readonly_rootfs, Some(true), "the root stays read-only");
    }

    #[test]
    fn every_container_is_hardened() {
        let b = create_body(&spec(), None, 3128, &Confinement::default());
        let h = b.host_config.unwrap();
        assert_eq!(b.user.as_deref(), Some("65534:65534"));
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(h.security_opt, Some(vec!["no-new-privileges:true".to_string()]));
        assert_eq!((h.readonly_rootfs, h.privileged, h.init), (Some(true), Some(false), Some(true)));
        assert_eq!(h.memory, h.memory_swap);
        assert_eq!(h.nano_cpus, Some(500_000_000));
        assert_eq!(h.pids_limit, Some(32));
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        assert!(h.binds.is_none() && h.mounts.is_none() && h.devices.is_none() && h.port_bindings.is_none());
        let tmpfs = h.tmpfs.unwrap();
        assert_eq!(tmpfs.len(), 1, "nothing but scratch: {tmpfs:?}");
        assert!(tmpfs["/tmp"].contains(&format!("size={}", 8 << 20)));
        // Owned by the sandbox user, whatever the mode of the image's /tmp.
        assert!(tmpfs["/tmp"].ends_with(",uid=65534,gid=65534"), "{tmpfs:?}");
        assert_eq!(h.restart_policy.unwrap().name, Some(RestartPolicyNameEnum::NO));
        assert!(h.pid_mode.is_none() && h.uts_mode.is_none() && h.cap_add.is_none());
        assert!(b.cmd.is_none(), "an empty command keeps the image default");
    }

    #[test]
    fn apparmor_is_asked_for_by_name_only_where_the_host_has_it() {
        let with = Confinement { apparmor: true, ..Default::default() };
        let h = create_body(&spec(), None, 3128, &with).host_config.unwrap();
        let opts = h.security_opt.unwrap();
        assert_eq!(opts, ["no-new-privileges:true", "apparmor=docker-default"]);
        let h = create_body(&spec(), None, 3128, &Confinement::default()).host_config.unwrap();
        assert!(!h.security_opt.unwrap().iter().any(|o| o.contains("apparmor")));
    }

    #[test]
    fn apparmor_needs_the_host_and_the_engine() {
        let engine = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let with = engine(&["name=apparmor", "name=seccomp,profile=default"]);
        let without = engine(&["name=seccomp,profile=default"]);
        assert_eq!(apparmor_support(Some("Y\n"), &with), Ok(()));
        // This machine: no AppArmor in the kernel, none in the engine.
        let e = apparmor_support(None, &without).unwrap_err();
        assert!(e.contains("is absent") && e.contains("does not list name=apparmor"), "{e}");
        let e = apparmor_support(Some("N\n"), &with).unwrap_err();
        assert!(e.contains("disabled") && !e.contains("engine"), "{e}");
        let e = apparmor_support(Some("Y"), &without).unwrap_err();
        assert!(e.contains("engine") && !e.contains("host"), "{e}");
        // Only the option's name counts, not a profile that happens to say apparmor.
        assert!(apparmor_support(Some("Y"), &engine(&["name=seccomp,profile=apparmor"])).is_err());
        assert!(apparmor_support(Some("Y"), &[]).is_err());
    }

    #[test]
    fn image_volumes_are_masked_read_only_except_scratch_and_datasets() {
        let mut s = spec();
        s.mounts = vec![spec::Mount { source: "/srv/ref".into(), target: "/data/ref".into() }];
        let declared: Vec<String> =
            ["/var/lib/app/", "/data", "/tmp", "/data/ref", "/x//y/../z", "/data", "/tmp/cache"]
                .map(String::from)
                .into();
        let masked = masked_volumes(&declared, &s).unwrap();
        assert_eq!(masked, ["/data", "/tmp/cache", "/var/lib/app", "/x/z"]);
        let b = create_body(&s, None, 3128, &Confinement { apparmor: false, masked_volumes: masked });
        let tmpfs = b.host_config.unwrap().tmpfs.unwrap();
        assert_eq!(tmpfs.len(), 5, "{tmpfs:?}");
        for v in ["/data", "/tmp/cache", "/var/lib/app", "/x/z"] {
            assert_eq!(tmpfs[v], "ro,nosuid,nodev,noexec,size=4k", "{v}");
        }
        assert!(tmpfs["/tmp"].starts_with("rw,") && tmpfs["/tmp"].contains("size=8388608"), "scratch untouched");
        assert_eq!(masked_volumes(&[], &s), Ok(vec![]));
        for bad in ["data", "/", "/..", ""] {
            let e = masked_volumes(&[bad.to_string()], &s).unwrap_err();
            assert!(e.contains(&format!("VOLUME {bad:?}")) && e.contains("img:1"), "{e}");
        }
    }

    #[test]
    fn scratch_belongs_to_a_numeric_sandbox_user() {
        let mut s = spec();
        for (user, tail) in [
            ("1000:1001", "mode=1777,uid=1000,gid=1001"),
            ("1000", "mode=1777,uid=1000"),
            // Names are resolved in the image, which only Docker reads.
            ("nobody:nogroup", "mode=1777"),
        ] {
            s.user = user.into();
            assert!(scratch_options(&s).ends_with(tail), "{user}: {}", scratch_options(&s));
        }
    }

    #[test]
    fn image_names_split_for_pull() {
        assert_eq!(split_image("alpine"), ("alpine", Some("latest")));
        assert_eq!(split_image("alpine:3"), ("alpine", Some("3")));
        assert_eq!(split_image("reg:5000/a/b"), ("reg:5000/a/b", Some("latest")));
        assert_eq!(split_image("reg:5000/a/b:1"), ("reg:5000/a/b", Some("1")));
        assert_eq!(split_image("a@sha256:00"), ("a@sha256:00", None));
    }
}
