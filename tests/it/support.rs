//! Test harness: a locally built image, a daemon spawned on port 0 with a
//! temporary data directory, authenticated clients, and cleanup by label.

mod fault_proxy;
pub use fault_proxy::{Fault, FaultProxy};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bollard::Docker;
pub use sandpit_core::policy::Isolation;
use sandpit_proto::audit_service_client::AuditServiceClient;
use sandpit_proto::register_service_client::RegisterServiceClient;
use sandpit_proto::sandbox_service_client::SandboxServiceClient;
use sandpit_proto::{self as proto, CreateSandboxRequest};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

pub const TEST_RUN_LABEL: &str = "sandpit.test-run";
pub const PROFILE: &str = "test-none";

/// Tokens of the identities every test daemon knows.
pub const TEAM_A: &str = "token-team-a";
pub const TEAM_B: &str = "token-team-b";
pub const OPERATOR: &str = "token-operator";
pub const AUDITOR: &str = "token-auditor";
/// An approver in the AI Leadership Group's team.
pub const APPROVER: &str = "token-approver";
/// An approver who is in team-a: may not approve team-a's experiments.
pub const APPROVER_A: &str = "token-approver-a";

/// The image every test sandbox runs, built once per test process from this
/// machine's own binaries (no registry is reachable).
pub fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let tag = "sandpit-test/base:latest".to_string();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-image.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(&tag)
            .arg("sandpit.test-image=true")
            .output()
            .expect("run build-image.sh");
        assert!(out.status.success(), "building the test image failed: {}", String::from_utf8_lossy(&out.stderr));
        tag
    })
}

/// An image holding nothing but one static program that sleeps: no shell,
/// no libc, no `tar`, as a team's own static binary would be. Built once
/// per test process with rustc (`-C target-feature=+crt-static`).
pub fn static_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let tag = "sandpit-test/static:latest".to_string();
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("app.rs");
        std::fs::write(&src, "fn main() { loop { std::thread::sleep(std::time::Duration::from_secs(3600)); } }\n")
            .unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .args(["-O", "-C", "target-feature=+crt-static", "-o"])
            .arg(root.join("app"))
            .arg(&src)
            .output()
            .expect("run rustc");
        assert!(out.status.success(), "building the static test program failed: {}", String::from_utf8_lossy(&out.stderr));
        let import = format!(
            "chmod 755 {root} && tar -C {root} -c . | docker import --change 'CMD [\"/app\"]' --change 'LABEL sandpit.test-image=true' - {tag} >/dev/null",
            root = root.display()
        );
        let out = Command::new("sh").arg("-c").arg(&import).output().expect("docker import");
        assert!(out.status.success(), "importing the static image failed: {}", String::from_utf8_lossy(&out.stderr));
        tag
    })
}

pub fn unique(prefix: &str) -> String {
    let mut b = [0u8; 5];
    getrandom::fill(&mut b).unwrap();
    format!("{prefix}-{}", hex::encode(b))
}

pub fn sha256(s: &str) -> String {
    sandpitd::identity::sha256_hex(s.as_bytes())
}

/// Knobs a test may turn; the rest is fixed.
#[derive(Clone)]
pub struct Options {
    pub orphan_grace: &'static str,
    pub reconcile_interval: &'static str,
    pub expiry_warning: &'static str,
    pub docker_host: Option<String>,
    /// `docker.timeout`: how long any one Docker call may take.
    pub docker_timeout: &'static str,
    /// Extra TOML appended to the config (e.g. `[tls]`, more identities).
    pub extra_config: String,
    /// PEM CA that signed the daemon's TLS certificate (for https daemons).
    pub server_ca: Option<String>,
    /// More profiles: (name, TOML body); `{image}` in a body is the test image.
    pub profiles: Vec<(String, String)>,
    /// Body of the `[limits]` table (the defaults when empty).
    pub limits: String,
    /// Body of the `[quotas]` table (the defaults when empty).
    pub quotas: String,
    /// `lifecycle.min_ttl`: short by default, so expiry tests are quick.
    pub min_ttl: &'static str,
    /// Body of the `[isolation.minimum]` table. By default OFFICIAL-SENSITIVE
    /// may run as a container, so that the suites not about isolation run on
    /// runc (the embedded default requires gVisor).
    pub minimum_isolation: &'static str,
    /// The isolation of every test profile (the harness's own and
    /// `profiles`) that does not name one.
    pub isolation: Isolation,
    /// TOML appended to the config for a governance policy (`[governance]`,
    /// approvers with functions). With one, `exp_a` is left proposed: the
    /// harness's approver signs for no function.
    pub governance: String,
    /// `store.url`: empty for the SQLite file in the data directory.
    pub store_url: String,
    /// `(second octet of the subnet pool, egress port)`: daemons sharing a
    /// store on one host must agree on both (the firewall's rules name them);
    /// by default each daemon gets its own.
    pub network: Option<(u32, u16)>,
    /// Where the audit signing key and checkpoints are kept: daemons sharing
    /// a store share them. Default: the data directory.
    pub audit_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            orphan_grace: "30s",
            reconcile_interval: "2s",
            expiry_warning: "1s",
            docker_host: None,
            docker_timeout: "30s",
            extra_config: String::new(),
            server_ca: None,
            profiles: Vec::new(),
            limits: String::new(),
            quotas: String::new(),
            min_ttl: "1s",
            minimum_isolation: "\"OFFICIAL-SENSITIVE\" = \"container\"",
            isolation: Isolation::Container,
            governance: String::new(),
            store_url: String::new(),
            network: None,
            audit_dir: None,
        }
    }
}

/// A running `sandpitd` and everything it made. Dropping it kills the
/// daemon and removes every Docker object carrying this run's label.
pub struct Daemon {
    pub run: String,
    /// A registered, approved OFFICIAL-SENSITIVE experiment of team-a.
    pub exp_a: String,
    server_ca: Option<String>,
    pub dir: tempfile::TempDir,
    pub addr: String,
    child: Option<Child>,
    config: PathBuf,
}

impl Daemon {
    pub async fn start() -> Daemon {
        Self::with(Options::default()).await
    }

    pub async fn with(opts: Options) -> Daemon {
        let image = image();
        let dir = tempfile::tempdir().unwrap();
        let run = unique("run");
        let profiles = dir.path().join("profiles");
        std::fs::create_dir(&profiles).unwrap();
        // Top-level keys come first in every body, so a line in front stays top-level.
        let write_profile = |name: &str, body: &str| {
            let isolation = if body.contains("isolation =") {
                String::new()
            } else {
                format!("isolation = \"{}\"\n", opts.isolation)
            };
            std::fs::write(profiles.join(format!("{name}.toml")), format!("{isolation}{body}")).unwrap();
        };
        write_profile(
            PROFILE,
            &format!(
                r#"
description = "test profile"
max_classification = "OFFICIAL"
images = ["{image}", "sandpit-test/absent:never"]
command = ["sleep", "infinity"]
[resources]
cpus = 0.5
memory = "64MiB"
pids = 64
tmpfs = "16MiB"
[lifetime]
default_ttl = "5m"
max_ttl = "10m"
max_lifetime = "15m"
[network]
mode = "none"
"#
            ),
        );
        write_profile(
            "test-sensitive",
            &format!(
                "max_classification = \"OFFICIAL-SENSITIVE\"\nimages = [\"{image}\"]\ncommand = [\"sleep\", \"infinity\"]\n\
                 [lifetime]\ndefault_ttl = \"1m\"\nmax_ttl = \"10m\"\nmax_lifetime = \"10m\"\n"
            ),
        );
        for (name, body) in &opts.profiles {
            write_profile(name, &body.replace("{image}", image));
        }
        let host = opts.docker_host.map(|h| format!("host = \"{h}\"\n")).unwrap_or_default();
        // Each daemon its own address range and proxy port, so parallel tests never collide.
        static NEXT_POOL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pool = NEXT_POOL.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 200 + 20;
        let (pool, egress_port) = opts.network.unwrap_or((pool, 0));
        let mut store = String::new();
        if !opts.store_url.is_empty() {
            store = format!("[store]\nurl = \"{}\"\nlease_retry = \"1s\"\npool_size = 8\n", opts.store_url);
        }
        if let Some(audit) = &opts.audit_dir {
            store.push_str(&format!(
                "[audit]\nsigning_key = \"{}\"\ncheckpoint_dir = \"{}\"\n",
                audit.join("signing.key").display(),
                audit.join("checkpoints").display()
            ));
        }
        let config = dir.path().join("sandpit.toml");
        std::fs::write(
            &config,
            format!(
                r#"
listen = "127.0.0.1:0"
data_dir = "{data}"
profiles_dir = "{profiles}"
max_classification = "OFFICIAL-SENSITIVE"

[labels]
"{TEST_RUN_LABEL}" = "{run}"

[network]
subnet_pool = "10.{pool}.0.0/16"
subnet_prefix = 28
egress_port = {egress_port}

[docker]
{host}timeout = "{docker_timeout}"

[metrics]
listen = "127.0.0.1:0"

[dashboard]
listen = "127.0.0.1:0"

[limits]
{limits}

[quotas]
{quotas}

[isolation.minimum]
{minimum_isolation}

[lifecycle]
orphan_grace = "{grace}"
reconcile_interval = "{interval}"
expiry_warning = "{warning}"
shutdown_grace = "3s"
min_ttl = "{min_ttl}"

[[identities]]
name = "alice"
team = "team-a"
roles = ["requester"]
token_sha256 = "{a}"

[[identities]]
name = "bob"
team = "team-b"
roles = ["requester"]
token_sha256 = "{b}"

[[identities]]
name = "olive"
team = "platform"
roles = ["operator"]
token_sha256 = "{op}"

[[identities]]
name = "ada"
team = "alg"
roles = ["auditor"]
token_sha256 = "{aud}"

[[identities]]
name = "amir"
team = "alg"
roles = ["approver"]
token_sha256 = "{appr}"

[[identities]]
name = "anna"
team = "team-a"
roles = ["approver"]
token_sha256 = "{appr_a}"

{extra}

{governance}

{store}
"#,
                data = dir.path().join("data").display(),
                profiles = profiles.display(),
                grace = opts.orphan_grace,
                interval = opts.reconcile_interval,
                warning = opts.expiry_warning,
                a = sha256(TEAM_A),
                b = sha256(TEAM_B),
                op = sha256(OPERATOR),
                aud = sha256(AUDITOR),
                appr = sha256(APPROVER),
                appr_a = sha256(APPROVER_A),
                extra = opts.extra_config,
                governance = opts.governance,
                limits = opts.limits,
                quotas = opts.quotas,
                min_ttl = opts.min_ttl,
                docker_timeout = opts.docker_timeout,
                minimum_isolation = opts.minimum_isolation,
            ),
        )
        .unwrap();
        let server_ca = opts.server_ca.clone();
        let mut d = Daemon { run, exp_a: String::new(), server_ca, dir, addr: String::new(), child: None, config };
        d.spawn().await;
        d.exp_a = d.experiment(TEAM_A, "OFFICIAL-SENSITIVE").await;
        if !opts.governance.is_empty() {
            return d;
        }
        d.register(APPROVER)
            .await
            .approve_experiment(proto::DecideExperimentRequest {
                id: d.exp_a.clone(),
                conditions: String::new(),
                ..Default::default()
            })
            .await
            .expect("approve");
        d
    }

    /// Registers a new experiment for the token's team; returns its id.
    pub async fn experiment(&self, token: &str, classification: &str) -> String {
        let req = proto::RegisterExperimentRequest {
            title: "Test experiment".into(),
            purpose: "Integration tests".into(),
            classification: classification.into(),
            ai_tools: vec!["none".into()],
            ..Default::default()
        };
        self.register(token).await.register_experiment(req).await.expect("register experiment").into_inner().id
    }

    /// A channel to the daemon; over TLS when it serves https, optionally
    /// presenting a client certificate.
    pub async fn channel_with(
        &self,
        client: Option<tonic::transport::Identity>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut endpoint = Channel::from_shared(self.addr.clone()).unwrap();
        if let Some(ca) = &self.server_ca {
            let mut tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                .domain_name("localhost");
            if let Some(id) = client {
                tls = tls.identity(id);
            }
            endpoint = endpoint.tls_config(tls).unwrap();
        }
        endpoint.connect().await
    }

    async fn channel(&self) -> Channel {
        self.channel_with(None).await.unwrap()
    }

    pub async fn register(&self, token: &str) -> RegisterServiceClient<InterceptedService<Channel, Bearer>> {
        RegisterServiceClient::with_interceptor(self.channel().await, bearer(token))
    }

    pub async fn audit(&self, token: &str) -> AuditServiceClient<InterceptedService<Channel, Bearer>> {
        AuditServiceClient::with_interceptor(self.channel().await, bearer(token))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the daemon binary and waits until it serves.
    pub async fn spawn(&mut self) {
        let addr_file = self.data_dir().join("sandpitd.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("sandpitd.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sandpitd"))
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info,sandpit=debug")
            .env_remove("SANDPIT__LISTEN")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sandpitd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(a) = std::fs::read_to_string(&addr_file).ok().filter(|a| a.ends_with('\n')) {
                self.addr = a.trim().to_string();
                break;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sandpitd exited with {status} at start:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "sandpitd did not start:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One scrape of the daemon's Prometheus endpoint.
    pub async fn scrape(&self) -> Metrics {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let url = std::fs::read_to_string(self.data_dir().join("metrics.addr")).expect("metrics.addr");
        let host = url.trim().trim_start_matches("http://").trim_end_matches("/metrics").to_string();
        let mut s = tokio::net::TcpStream::connect(&host).await.expect("connect to metrics");
        s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        Metrics(body.to_string())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sandpitd.log")).unwrap_or_default()
    }

    pub fn profiles_dir(&self) -> PathBuf {
        self.dir.path().join("profiles")
    }

    /// Sends a signal (e.g. `HUP`) to the running daemon.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("daemon running").id().to_string();
        assert!(Command::new("kill").arg(format!("-{sig}")).arg(pid).status().unwrap().success());
    }

    pub async fn profile_client(
        &self,
        token: &str,
    ) -> sandpit_proto::profile_service_client::ProfileServiceClient<InterceptedService<Channel, Bearer>> {
        sandpit_proto::profile_service_client::ProfileServiceClient::with_interceptor(
            self.channel().await,
            bearer(token),
        )
    }

    /// SIGKILL: the daemon gets no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        Command::new("kill").arg("-TERM").arg(c.id().to_string()).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "sandpitd did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn client(&self, token: &str) -> Client {
        SandboxServiceClient::with_interceptor(self.channel().await, bearer(token))
    }

    pub async fn anonymous(&self) -> Client {
        SandboxServiceClient::with_interceptor(self.channel().await, Bearer(None))
    }

    /// Containers of this run, by `sandpit.sandbox` label (or name when unlabelled).
    pub async fn containers(&self) -> Vec<bollard::models::ContainerSummary> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{TEST_RUN_LABEL}={}", self.run)])]);
        let opts =
            bollard::query_parameters::ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        docker().await.list_containers(Some(opts)).await.unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- sandpitd log ({}) ----\n{}", self.run, self.log());
        }
        remove_labelled(&format!("{TEST_RUN_LABEL}={}", self.run));
        self.remove_firewall();
    }
}

impl Daemon {
    /// Removes this daemon's host firewall chains and the rules jumping to
    /// them (left behind when a test ends with sandboxes the daemon never tore down).
    fn remove_firewall(&self) {
        if let Some(instance) = self.instance() {
            remove_firewall_of(&instance);
        }
    }

    /// The instance id: from the SQLite store, or (on PostgreSQL) as the daemon logged it.
    pub fn instance(&self) -> Option<String> {
        let db = self.data_dir().join("sandpit.db");
        if db.is_file() {
            let conn = rusqlite::Connection::open(db).ok()?;
            return conn.query_row("SELECT value FROM meta WHERE key = 'instance_id'", [], |r| r.get(0)).ok();
        }
        let log = self.log();
        let at = log.find(" instance=")? + " instance=".len();
        Some(log[at..].split_whitespace().next()?.trim_matches('"').to_string())
    }
}

/// Removes every chain of the instance `instance` and every rule jumping to them.
pub fn remove_firewall_of(instance: &str) {
    let short = &instance[..sandpit_docker::firewall::SHORT.min(instance.len())];
    let chains: Vec<String> = sandpit_docker::firewall::PREFIXES.iter().map(|p| format!("{p}{short}")).collect();
    let out = Command::new("iptables").args(["-w", "5", "-S"]).output();
    let rules = out.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
    for rule in rules.lines().filter(|l| l.starts_with("-A ") && chains.iter().any(|c| l.ends_with(&format!("-j {c}"))))
    {
        let spec: Vec<&str> = rule.split_whitespace().skip(1).collect();
        let _ = Command::new("iptables").args(["-w", "5", "-D"]).args(&spec).output();
    }
    for op in ["-F", "-X"] {
        for chain in &chains {
            let _ = Command::new("iptables").args(["-w", "5", op, chain]).output();
        }
    }
}

/// Removes every container, network and volume carrying `label`.
pub fn remove_labelled(label: &str) {
    let filter = format!("label={label}");
    let list = |args: &[&str]| -> Vec<String> {
        let out = Command::new("docker").args(args).output().expect("docker CLI");
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
    };
    let containers = list(&["ps", "-aq", "--filter", &filter]);
    if !containers.is_empty() {
        let _ = Command::new("docker").args(["rm", "-f", "-v"]).args(&containers).output();
    }
    let networks = list(&["network", "ls", "-q", "--filter", &filter]);
    if !networks.is_empty() {
        let _ = Command::new("docker").args(["network", "rm"]).args(&networks).output();
    }
    let volumes = list(&["volume", "ls", "-q", "--filter", &filter]);
    if !volumes.is_empty() {
        let _ = Command::new("docker").args(["volume", "rm", "-f"]).args(&volumes).output();
    }
}

#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

pub fn bearer(token: &str) -> Bearer {
    Bearer(Some(format!("Bearer {token}").parse().unwrap()))
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Client = SandboxServiceClient<InterceptedService<Channel, Bearer>>;

pub async fn docker() -> Docker {
    Docker::connect_with_defaults().unwrap().negotiate_version().await.unwrap()
}

pub fn ttl(secs: i64) -> Option<pbjson_types::Duration> {
    Some(pbjson_types::Duration { seconds: secs, nanos: 0 })
}

pub fn create_req(experiment: &str, ttl_secs: i64) -> CreateSandboxRequest {
    CreateSandboxRequest {
        experiment: experiment.into(),
        profile: PROFILE.into(),
        classification: "OFFICIAL".into(),
        ttl: ttl(ttl_secs),
        image: String::new(),
        datasets: vec![],
        ..Default::default()
    }
}

pub async fn create(client: &mut Client, experiment: &str, ttl_secs: i64) -> proto::Sandbox {
    client.create_sandbox(create_req(experiment, ttl_secs)).await.expect("create").into_inner()
}

pub fn state(sb: &proto::Sandbox) -> proto::SandboxState {
    proto::SandboxState::try_from(sb.state).unwrap()
}

/// Polls `f` until it returns `Some`, or panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether Docker has a container by this id.
pub async fn container_exists(id: &str) -> bool {
    docker().await.inspect_container(id, None).await.is_ok()
}

pub fn to_system(t: &pbjson_types::Timestamp) -> std::time::SystemTime {
    sandpit_core::time::from_millis(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// A scraped exposition.
pub struct Metrics(pub String);

impl Metrics {
    /// The sum of the samples of `name` whose labels include every one of `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
                let want = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
                (n == name && want).then(|| value.parse::<f64>().ok()).flatten()
            })
            .sum()
    }
}

/// A TCP relay to the daemon that can be cut, as a client whose machine or
/// network goes away would be: its connections end without a goodbye.
pub struct Cuttable {
    pub addr: String,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Cuttable {
    pub async fn to(daemon: &Daemon) -> Cuttable {
        let target = daemon.addr.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let tasks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = std::sync::Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let relay = tokio::spawn(async move {
                    let mut outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                held.lock().unwrap().push(relay.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Cuttable { addr, tasks }
    }

    /// A client of `token` whose calls go through this relay.
    pub async fn client(&self, token: &str) -> Client {
        let channel = Channel::from_shared(self.addr.clone()).unwrap().connect().await.unwrap();
        SandboxServiceClient::with_interceptor(channel, bearer(token))
    }

    /// Drops every connection at once.
    pub fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for Cuttable {
    fn drop(&mut self) {
        self.cut();
    }
}
