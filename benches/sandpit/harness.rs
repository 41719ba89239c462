//! What the scenarios run against: the benchmark image, a real `sandpitd`
//! on a temporary config and data directory, an authenticated gRPC client,
//! the raw Docker baseline with the daemon's own container spec, and the
//! cleanup guard that removes everything labelled with this run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use sandpit_core::policy::{Isolation, Profile};
use sandpit_docker::spec::ContainerSpec;
use sandpit_proto::profile_service_client::ProfileServiceClient;
use sandpit_proto::register_service_client::RegisterServiceClient;
use sandpit_proto::sandbox_service_client::SandboxServiceClient;
use sandpit_proto::{self as proto, CreateSandboxRequest, DeleteSandboxRequest, RegisterExperimentRequest};
use sandpitd::config::Config;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T, E = BoxError> = std::result::Result<T, E>;

/// Label on every container of a run, the daemon's (via `[labels]`) and the raw baseline's.
pub const RUN_LABEL: &str = "sandpit.bench-run";
/// Extra label on the raw baseline's containers only.
pub const RAW_LABEL: &str = "sandpit-bench.raw";
pub const IMAGE: &str = "sandpit-bench/base:latest";
pub const PROFILE: &str = "bench-none";
/// `PROFILE` with a warm pool (scenario 3).
pub const WARM_PROFILE: &str = "bench-warm";
/// `PROFILE` with network `isolated`: a Docker network per sandbox (soak).
pub const ISOLATED_PROFILE: &str = "bench-isolated";
/// `bench-none` under gVisor (its pool off until the isolation scenario turns it on).
pub const GVISOR_PROFILE: &str = "bench-gvisor";
/// An echo server on a forwardable port, and room for a file (scenario `work`).
pub const WORK_PROFILE: &str = "bench-work";
/// The engine runtime the daemon runs `bench-gvisor` on (network none), for the raw baseline.
pub const GVISOR_RUNTIME: &str = "runsc-none";
/// The daemon's range for sandbox networks: outside the integration tests'
/// (10.20-219.0.0/16) and the default (10.213.0.0/16).
const SUBNET_POOL: &str = "10.250.0.0/16";

/// The register entry every sandbox of the run belongs to (set once at start).
static EXPERIMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn experiment() -> &'static str {
    EXPERIMENT.get().map(String::as_str).unwrap_or("unregistered")
}
/// Docker client timeout, the same for the daemon (`[docker] timeout`) and the raw baseline.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);

pub fn unique(prefix: &str) -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("OS random source");
    format!("{prefix}-{}", hex::encode(b))
}

/// Builds the benchmark image from this machine's binaries (no registry) and
/// removes the image this tag named before, if a rebuild left it dangling.
pub fn build_image() -> Result<String> {
    let old = image_id(IMAGE);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-image.sh");
    let out = Command::new("bash").arg(script).arg(IMAGE).arg("sandpit.bench-image=true").output()?;
    if !out.status.success() {
        return Err(format!("scripts/build-image.sh failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let new = image_id(IMAGE);
    if let (Some(old), Some(new)) = (old, new.as_ref()) {
        if &old != new {
            // Fails harmlessly if something still uses it.
            let _ = Command::new("docker").args(["rmi", &old]).output();
        }
    }
    new.ok_or_else(|| "the benchmark image is missing after the build".into())
}

fn image_id(tag: &str) -> Option<String> {
    let out = Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", tag]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

// ---- cleanup -------------------------------------------------------------

/// Removes every container labelled with the run when dropped, however the
/// benchmark ends (success, error or panic). Declared before the runtime and
/// the daemon so it drops after both: nothing is creating containers by then.
pub struct Cleanup {
    pub run: String,
}

impl Cleanup {
    pub fn new(run: &str) -> Cleanup {
        Cleanup { run: run.to_string() }
    }
}

/// Ids of every container (any state) carrying `sandpit.bench-run=<run>`.
pub fn labelled_containers(run: &str) -> Vec<String> {
    let out = Command::new("docker").args(["ps", "-aq", "--filter", &format!("label={RUN_LABEL}={run}")]).output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).split_whitespace().map(String::from).collect(),
        Err(_) => Vec::new(),
    }
}

/// Ids of every network carrying `sandpit.bench-run=<run>`.
pub fn labelled_networks(run: &str) -> Vec<String> {
    let out =
        Command::new("docker").args(["network", "ls", "-q", "--filter", &format!("label={RUN_LABEL}={run}")]).output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).split_whitespace().map(String::from).collect(),
        Err(_) => Vec::new(),
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Twice: a create Docker was still finishing when the daemon died can
        // appear just after the first sweep.
        for pass in 0..2 {
            let left = labelled_containers(&self.run);
            if !left.is_empty() {
                eprintln!("cleanup: removing {} container(s) labelled {RUN_LABEL}={}", left.len(), self.run);
                let _ = Command::new("docker").args(["rm", "-f", "-v"]).args(&left).output();
            }
            let networks = labelled_networks(&self.run);
            if !networks.is_empty() {
                eprintln!("cleanup: removing {} network(s) labelled {RUN_LABEL}={}", networks.len(), self.run);
                let _ = Command::new("docker").args(["network", "rm"]).args(&networks).output();
            }
            if pass == 0 {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

// ---- the daemon ----------------------------------------------------------

/// The benchmark profile; with `warm_pool` for `bench-warm`, otherwise the same.
fn profile_toml(warm_pool: Option<u32>) -> String {
    let (description, pool) = match warm_pool {
        Some(n) => ("benchmark: no network, small resources, warm pool", format!("warm_pool = {n}\n")),
        None => ("benchmark: no network, small resources", String::new()),
    };
    profile_with(description, &pool, "none")
}

/// The benchmark profile under gVisor, with a pool of `warm_pool`.
fn gvisor_profile_toml(warm_pool: u32) -> String {
    let pool = format!("warm_pool = {warm_pool}\n");
    format!("isolation = \"gvisor\"\n{}", profile_with("benchmark: gVisor, no network, small resources", &pool, "none"))
}

fn profile_with(description: &str, pool: &str, network: &str) -> String {
    format!(
        r#"description = "{description}"
max_classification = "OFFICIAL"
images = ["{IMAGE}"]
command = ["sleep", "infinity"]
{pool}
[resources]
cpus = 0.25
memory = "32MiB"
pids = 32
tmpfs = "16MiB"

[lifetime]
default_ttl = "30m"
max_ttl = "2h"
max_lifetime = "4h"

[network]
mode = "{network}"
"#
    )
}

/// A real `sandpitd` (the release build) on a temporary profiles dir, config
/// and data dir. Killed when dropped.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub config: Config,
    pub profile: Profile,
    pub token: String,
    /// Bearer token of `bench-operator` (role operator).
    pub operator_token: String,
    pub addr: String,
    child: Option<Child>,
}

impl Daemon {
    /// Writes the profile and config. Does not start the daemon.
    pub fn prepare(run: &str) -> Result<Daemon> {
        Self::prepare_with(run, 0, "")
    }

    /// [`Daemon::prepare`] with the egress port given and `extra` TOML
    /// appended (`[store]`, `[audit]`): daemons sharing a store share both.
    pub fn prepare_with(run: &str, egress_port: u16, extra: &str) -> Result<Daemon> {
        let dir = tempfile::Builder::new().prefix("sandpit-bench-").tempdir()?;
        let profiles = dir.path().join("profiles");
        std::fs::create_dir(&profiles)?;
        std::fs::write(profiles.join(format!("{PROFILE}.toml")), profile_toml(None))?;
        // The warm-pool profile, its pool off until scenario 3 turns it on
        // (a pool filling in the background would disturb the other scenarios).
        std::fs::write(profiles.join(format!("{WARM_PROFILE}.toml")), profile_toml(Some(0)))?;
        std::fs::write(profiles.join(format!("{GVISOR_PROFILE}.toml")), gvisor_profile_toml(0))?;
        std::fs::write(profiles.join(format!("{WORK_PROFILE}.toml")), super::work::profile_toml())?;
        std::fs::write(
            profiles.join(format!("{ISOLATED_PROFILE}.toml")),
            profile_with("benchmark: isolated network, small resources", "", "isolated"),
        )?;
        let token = unique("bench-token");
        let operator_token = unique("bench-operator-token");
        let config_path = dir.path().join("sandpit.toml");
        std::fs::write(
            &config_path,
            format!(
                r#"listen = "127.0.0.1:0"
data_dir = "{data}"
profiles_dir = "{profiles}"
max_classification = "OFFICIAL-SENSITIVE"

[labels]
"{RUN_LABEL}" = "{run}"

[network]
subnet_pool = "{SUBNET_POOL}"
egress_port = {egress_port}

[docker]
timeout = "{timeout}s"

[metrics]
listen = "127.0.0.1:0"

[dashboard]
listen = "127.0.0.1:0"

# The benchmark is one identity driving the daemon as hard as it can: the
# per-identity limits (there to stop a runaway client) would measure themselves.
[limits]
max_concurrent_calls = 100000
calls_per_second = 1000000
burst = 1000000

[quotas]
sandboxes_per_team = 100000

# The soak's short-lived sandboxes (3-10 s) and the expiry scenario's
# deadlines are below the default minimum ttl.
[lifecycle]
min_ttl = "1s"

[[identities]]
name = "bench"
team = "bench"
roles = ["requester"]
token_sha256 = "{sha}"

# Reads pool state (ListPools), turns the warm pool on and off
# (ReloadProfiles) and sees warm sandboxes; creates nothing.
[[identities]]
name = "bench-operator"
team = "bench"
roles = ["operator"]
token_sha256 = "{op_sha}"

{extra}
"#,
                data = dir.path().join("data").display(),
                profiles = profiles.display(),
                timeout = DOCKER_TIMEOUT.as_secs(),
                sha = sandpitd::identity::sha256_hex(token.as_bytes()),
                op_sha = sandpitd::identity::sha256_hex(operator_token.as_bytes()),
            ),
        )?;
        // The raw baseline reads the same files the daemon does, so its
        // container spec cannot drift from the daemon's.
        let config = Config::load(Some(&config_path)).map_err(|e| format!("config: {e}"))?;
        let profile = sandpit_core::policy::ProfileSet::load_dir(&profiles)
            .map_err(|e| format!("profiles: {e:?}"))?
            .get(PROFILE)
            .cloned()
            .ok_or("the benchmark profile did not load")?;
        Ok(Daemon { dir, config_path, config, profile, token, operator_token, addr: String::new(), child: None })
    }

    pub fn profiles_dir(&self) -> PathBuf {
        self.dir.path().join("profiles")
    }

    /// Rewrites `bench-warm` with a pool of `size` (the daemon applies it on
    /// ReloadProfiles).
    pub fn write_warm_profile(&self, size: u32) -> Result<()> {
        std::fs::write(self.profiles_dir().join(format!("{WARM_PROFILE}.toml")), profile_toml(Some(size)))?;
        Ok(())
    }

    /// Rewrites `bench-gvisor` with a pool of `size`.
    pub fn write_gvisor_profile(&self, size: u32) -> Result<()> {
        std::fs::write(self.profiles_dir().join(format!("{GVISOR_PROFILE}.toml")), gvisor_profile_toml(size))?;
        Ok(())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("sandpitd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Bytes of log written so far, to read only what a later phase adds.
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0)
    }

    pub fn log_since(&self, offset: u64) -> String {
        let all = std::fs::read(self.log_path()).unwrap_or_default();
        let from = (offset as usize).min(all.len());
        String::from_utf8_lossy(&all[from..]).into_owned()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the binary without waiting; the caller times what follows.
    pub fn spawn(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(self.data_dir().join("sandpitd.addr"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let child = Command::new(env!("CARGO_BIN_EXE_sandpitd"))
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", std::env::var("SANDPIT_BENCH_LOG").unwrap_or_else(|_| "info".into()))
            .env_remove("SANDPIT__LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls for `<data_dir>/sandpitd.addr` (written once the listener is bound).
    pub async fn wait_addr(&mut self, limit: Duration, poll: Duration) -> Result<String> {
        let addr_file = self.data_dir().join("sandpitd.addr");
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                if a.ends_with('\n') {
                    self.addr = a.trim().to_string();
                    return Ok(self.addr.clone());
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!("sandpitd exited with {status}:\n{}", self.log()).into());
            }
            if Instant::now() > deadline {
                return Err(format!("sandpitd did not start:\n{}", self.log()).into());
            }
            tokio::time::sleep(poll).await;
        }
    }

    pub async fn start(&mut self) -> Result<()> {
        self.spawn()?;
        self.wait_addr(Duration::from_secs(30), Duration::from_millis(10)).await?;
        Ok(())
    }

    /// SIGKILL: the daemon gets no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, waiting up to `limit`, then SIGKILL.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn client(&self) -> Result<Client> {
        let channel = Channel::from_shared(self.addr.clone())?.connect().await?;
        Ok(SandboxServiceClient::with_interceptor(channel, Bearer(format!("Bearer {}", self.token).parse()?)))
    }

    /// A SandboxService client acting as `bench-operator` (sees warm sandboxes).
    pub async fn operator_client(&self) -> Result<Client> {
        let channel = Channel::from_shared(self.addr.clone())?.connect().await?;
        Ok(SandboxServiceClient::with_interceptor(channel, Bearer(format!("Bearer {}", self.operator_token).parse()?)))
    }

    /// A ProfileService client acting as `bench-operator` (ListPools, ReloadProfiles).
    pub async fn profile_client(&self) -> Result<ProfileClient> {
        let channel = Channel::from_shared(self.addr.clone())?.connect().await?;
        Ok(ProfileServiceClient::with_interceptor(channel, Bearer(format!("Bearer {}", self.operator_token).parse()?)))
    }

    /// Registers the run's experiment (OFFICIAL, so no approval is needed)
    /// and makes it the one every create names.
    pub async fn register_experiment(&self) -> Result<String> {
        let id = self.new_experiment().await?;
        EXPERIMENT.set(id.clone()).map_err(|_| "the experiment was registered twice")?;
        Ok(id)
    }

    /// Registers an OFFICIAL experiment of team bench (no approval needed).
    pub async fn new_experiment(&self) -> Result<String> {
        let channel = Channel::from_shared(self.addr.clone())?.connect().await?;
        let mut register =
            RegisterServiceClient::with_interceptor(channel, Bearer(format!("Bearer {}", self.token).parse()?));
        let id = register
            .register_experiment(RegisterExperimentRequest {
                title: "Sandpit benchmark".into(),
                purpose: "Measure Sandpit against the raw Docker engine".into(),
                classification: "OFFICIAL".into(),
                ai_tools: vec!["none".into()],
                ..Default::default()
            })
            .await?
            .into_inner()
            .id;
        Ok(id)
    }

    /// The daemon's metrics exposition, read once over HTTP.
    pub async fn metrics(&self) -> Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = std::fs::read_to_string(self.dir.path().join("data").join("metrics.addr"))?;
        let host = addr.trim().trim_start_matches("http://").trim_end_matches('/').trim_end_matches("/metrics");
        let mut s = tokio::net::TcpStream::connect(host).await?;
        s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
    }

    /// VmRSS of the daemon process, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- sandpitd log (last 60 lines) ----");
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            for l in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{l}");
            }
        }
    }
}

#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub type Client = SandboxServiceClient<InterceptedService<Channel, Bearer>>;
pub type ProfileClient = ProfileServiceClient<InterceptedService<Channel, Bearer>>;

pub fn ttl(d: Duration) -> Option<pbjson_types::Duration> {
    Some(pbjson_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 })
}

pub fn to_system(t: &pbjson_types::Timestamp) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32)
}

/// One `CreateSandbox` round trip: the sandbox (running) and how long the call took.
pub async fn sp_create(client: &mut Client, ttl_: Duration) -> Result<(proto::Sandbox, Duration), Status> {
    sp_create_in(client, PROFILE, ttl_).await
}

/// [`sp_create`] with another profile, the profile's default image and no datasets.
pub async fn sp_create_in(
    client: &mut Client,
    profile: &str,
    ttl_: Duration,
) -> Result<(proto::Sandbox, Duration), Status> {
    let req = CreateSandboxRequest {
        experiment: experiment().into(),
        profile: profile.into(),
        classification: "OFFICIAL".into(),
        ttl: ttl(ttl_),
        image: String::new(),
        datasets: vec![],
        ..Default::default()
    };
    let t = Instant::now();
    let sb = client.create_sandbox(req).await?.into_inner();
    Ok((sb, t.elapsed()))
}

pub async fn sp_delete(client: &mut Client, id: &str) -> Result<Duration, Status> {
    let t = Instant::now();
    client.delete_sandbox(DeleteSandboxRequest { id: id.into() }).await?;
    Ok(t.elapsed())
}

// ---- the raw Docker baseline ---------------------------------------------

/// bollard against the same engine with the daemon's own hardened container
/// body ([`sandpit_docker::create_body`]), per create doing what the
/// daemon's runtime does: inspect the image, create, start.
#[derive(Clone)]
pub struct Raw {
    pub docker: Docker,
    run: String,
    image: String,
    user: String,
    profile: Profile,
}

impl Raw {
    pub fn new(docker: Docker, run: &str, daemon: &Daemon) -> Raw {
        Raw {
            docker,
            run: run.to_string(),
            image: daemon.profile.default_image().to_string(),
            user: daemon.config.sandbox.user.clone(),
            profile: daemon.profile.clone(),
        }
    }

    /// The spec the daemon would build for a sandbox with this id: same name
    /// pattern, image, command, user, env and resources, and as many labels.
    pub fn spec(&self, id: &str) -> ContainerSpec {
        let mut labels: HashMap<String, String> = [
            (RUN_LABEL, self.run.as_str()),
            (RAW_LABEL, "true"),
            ("sandpit-bench.sandbox", id),
            ("sandpit-bench.instance", "raw"),
            ("sandpit-bench.experiment", experiment()),
            ("sandpit-bench.owner", "bench"),
            ("sandpit-bench.team", "bench"),
            ("sandpit-bench.profile", PROFILE),
            ("sandpit-bench.classification", "OFFICIAL"),
            ("sandpit-bench.expires-at", "2099-01-01T00:00:00Z"),
            ("sandpit-bench.node", "local"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        labels.insert("sandpit-bench.managed".into(), "false".into());
        ContainerSpec {
            name: format!("sandpit-bench-raw-{id}"),
            hostname: id.to_string(),
            image: self.image.clone(),
            command: self.profile.command.clone(),
            user: self.user.clone(),
            env: vec![format!("SANDPIT_SANDBOX_ID={id}"), format!("SANDPIT_EXPERIMENT={}", experiment())],
            labels,
            resources: self.profile.resources.clone(),
            network: None,
            mounts: vec![],
            isolation: Default::default(),
            runtime: None,
            workspace: None,
        }
    }

    /// inspect image + create + start; returns the container id and the time
    /// the three calls took. A failed start removes the container, as the daemon does.
    pub async fn create(&self) -> Result<(String, Duration)> {
        self.create_on(Isolation::Container, None).await
    }

    /// [`Raw::create`] on engine runtime `runtime` (`None`: the engine's
    /// default), with the limits the daemon gives `isolation`.
    pub async fn create_on(&self, isolation: Isolation, runtime: Option<&str>) -> Result<(String, Duration)> {
        let id = unique("rb");
        let t = Instant::now();
        self.docker.inspect_image(&self.image).await?;
        let spec = ContainerSpec { isolation, runtime: runtime.map(String::from), ..self.spec(&id) };
        let opts = CreateContainerOptionsBuilder::default().name(&spec.name).build();
        let created = self
            .docker
            .create_container(Some(opts), sandpit_docker::create_body(&spec, None, 0, &Default::default()))
            .await?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = self.remove(&created.id).await;
            return Err(e.into());
        }
        Ok((created.id, t.elapsed()))
    }

    /// Forced remove (SIGKILL, no grace), as the daemon's teardown.
    pub async fn remove(&self, id: &str) -> Result<Duration> {
        let t = Instant::now();
        let opts = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        self.docker.remove_container(id, Some(opts)).await?;
        Ok(t.elapsed())
    }

    /// As [`Raw::create`], on an internal bridge network of its own made
    /// first with `subnet` (Docker's default address pools hold about 31
    /// networks, so a host of hundreds names each range, as the daemon
    /// does). Returns the container, its network and the time all took.
    pub async fn create_isolated(&self, subnet: &str, gateway: &str) -> Result<(String, String, Duration)> {
        use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
        let id = unique("rn");
        let t = Instant::now();
        let labels = HashMap::from([(RUN_LABEL.to_string(), self.run.clone()), (RAW_LABEL.to_string(), "true".into())]);
        let body = NetworkCreateRequest {
            name: format!("sandpit-bench-raw-{id}"),
            driver: Some("bridge".into()),
            internal: Some(true),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(subnet.to_string()),
                    gateway: Some(gateway.to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            options: Some(HashMap::from([("com.docker.network.bridge.enable_icc".to_string(), "false".to_string())])),
            labels: Some(labels),
            ..Default::default()
        };
        let network = self.docker.create_network(body).await?.id;
        self.docker.inspect_image(&self.image).await?;
        let request = sandpit_docker::spec::NetworkRequest {
            name: format!("sandpit-bench-raw-{id}"),
            internal: true,
            egress: false,
        };
        let spec = ContainerSpec { network: Some(request), ..self.spec(&id) };
        let opts = CreateContainerOptionsBuilder::default().name(&spec.name).build();
        let body = sandpit_docker::create_body(&spec, None, 0, &Default::default());
        let created = match self.docker.create_container(Some(opts), body).await {
            Ok(c) => c,
            Err(e) => {
                let _ = self.docker.remove_network(&network).await;
                return Err(e.into());
            }
        };
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = self.remove(&created.id).await;
            let _ = self.docker.remove_network(&network).await;
            return Err(e.into());
        }
        Ok((created.id, network, t.elapsed()))
    }

    /// Networks of this run, by label.
    pub async fn count_labelled_networks(&self) -> Result<usize> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{RUN_LABEL}={}", self.run)])]);
        let opts = bollard::query_parameters::ListNetworksOptionsBuilder::default().filters(&filters).build();
        Ok(self.docker.list_networks(Some(opts)).await?.len())
    }

    /// Containers of this run, by label.
    pub async fn count_labelled(&self) -> Result<usize> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{RUN_LABEL}={}", self.run)])]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        Ok(self.docker.list_containers(Some(opts)).await?.len())
    }
}

pub async fn docker() -> Result<Docker> {
    let mut d = Docker::connect_with_defaults()?;
    d.set_timeout(DOCKER_TIMEOUT);
    Ok(d.negotiate_version().await?)
}

// ---- the daemon's log ----------------------------------------------------

/// The timestamp a `tracing_subscriber` text line starts with.
pub fn log_time(line: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(line.split_whitespace().next()?).ok()
}

/// `key=value` of a text log line (values without spaces).
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|tok| tok.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')).map(|v| v.trim_matches('"')))
}

/// `elapsed_ms` of each "sandbox running" line, by sandbox id: the daemon's
/// own time from provisioning start (lock taken) to the container running.
pub fn provision_times(log: &str) -> HashMap<String, f64> {
    log.lines()
        .filter(|l| l.contains("sandbox running"))
        .filter_map(|l| Some((log_field(l, "sandbox")?.to_string(), log_field(l, "elapsed_ms")?.parse().ok()?)))
        .collect()
}
