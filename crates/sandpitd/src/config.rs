//! Daemon configuration: embedded defaults, then an optional TOML file, then
//! `SANDPIT__*` environment variables (nested keys joined by `__`). Unknown
//! keys are errors that name the key; `sandpitd` exits 64 on any of them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use sandpit_core::policy::{Classification, Isolation, NetworkMode};
use sandpit_core::time::de_duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
pub const DEFAULT_DASHBOARD_LISTEN: &str = "127.0.0.1:9465";
pub const DEFAULT_PROFILES_DIR: &str = "./sandbox-profiles";
pub const DEFAULT_NODE: &str = "local";
/// The non-root user every sandbox runs as (nobody:nogroup).
pub const DEFAULT_SANDBOX_USER: &str = "65534:65534";
pub use sandpit_core::data_dir::{
    default_data_dir, ADDR_FILE, DASHBOARD_ADDR_FILE, DATABASE_FILE, LOCAL_TOKEN_FILE, METRICS_ADDR_FILE,
};

pub const ENV_PREFIX: &str = "SANDPIT";
/// The audit signing key in the data directory, when `audit.signing_key` is unset.
pub const DEFAULT_SIGNING_KEY_FILE: &str = "audit-signing.key";
/// The checkpoint directory in the data directory, when `audit.checkpoint_dir` is unset.
pub const DEFAULT_CHECKPOINT_DIR: &str = "checkpoints";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address (host:port; port 0 picks a free one).
    pub listen: SocketAddr,
    /// SQLite store, generated token and address file live here.
    pub data_dir: PathBuf,
    pub profiles_dir: PathBuf,
    /// The host's accreditation ceiling.
    pub max_classification: Classification,
    /// Serve plaintext gRPC on a non-loopback address. Unsafe; logged.
    pub allow_insecure_listen: bool,
    pub tls: Option<TlsConfig>,
    pub identities: Vec<IdentityConfig>,
    /// Residencies an allowlist destination may have in profiles above OFFICIAL.
    pub permitted_residency: Vec<String>,
    /// Host directories sandboxes may mount read-only.
    pub datasets: Vec<DatasetConfig>,
    pub network: NetworkConfig,
    pub docker: DockerConfig,
    pub lifecycle: LifecycleConfig,
    pub sandbox: SandboxConfig,
    /// Extra labels put on every Docker object the daemon creates.
    pub labels: BTreeMap<String, String>,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub dashboard: DashboardConfig,
    pub limits: LimitsConfig,
    pub quotas: QuotasConfig,
    pub audit: AuditConfig,
    pub store: StoreConfig,
    pub isolation: IsolationConfig,
    pub images: ImagesConfig,
    pub governance: GovernanceConfig,
    /// Sandboxes on a Docker Swarm instead of the one engine of `[docker]`.
    #[serde(default)]
    pub swarm: Option<SwarmConfig>,
}

/// A Docker Swarm to run sandboxes on: each sandbox a service of one task,
/// placed by Swarm on a node labelled for its classification and isolation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmConfig {
    /// The engine address of a manager of the swarm: `unix://...`, or
    /// `tcp://host:2376` with the `tls_*` files.
    pub manager: String,
    /// How long a sandbox's task may take to run before its create fails.
    #[serde(default = "SwarmConfig::default_start_timeout", deserialize_with = "de_duration")]
    pub start_timeout: Duration,
    /// How often the manager's node list is read: sandboxes on a node Swarm
    /// reports down are recorded lost within Swarm's detection plus this.
    #[serde(default = "SwarmConfig::default_node_check", deserialize_with = "de_duration")]
    pub node_check: Duration,
    /// Each node's own engine, by its hostname in the swarm: exec, copies
    /// and port forwarding reach a sandbox through it.
    pub nodes: Vec<SwarmNodeConfig>,
    /// For `tcp://` engines (manager and nodes): the CA their certificates
    /// chain to, and the daemon's client certificate and key (PEM). The
    /// engines must run with `--tlsverify`.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The address (IPv4) the nodes reach this daemon's host at. With it,
    /// `allowlist` profiles run on the swarm: each such sandbox gets a relay
    /// of its own on its overlay, which takes its traffic to this daemon's
    /// egress proxy (`network.egress_port`) with a token only that relay
    /// holds. Without it, `allowlist` profiles are refused on the swarm.
    #[serde(default)]
    pub egress_address: Option<std::net::Ipv4Addr>,
    /// Where relays' connections come from, as the daemon's host sees them
    /// (the nodes' addresses, as CIDRs). The proxy reads a relay's
    /// handshake only from these; every other source that is no sandbox is
    /// closed unread. Required with `egress_address`.
    #[serde(default)]
    pub egress_sources: Vec<String>,
}

impl SwarmConfig {
    /// The relay sources, parsed (validation has checked them).
    pub fn egress_sources(&self) -> Vec<ipnet::Ipv4Net> {
        self.egress_sources.iter().filter_map(|s| sandpit_core::egress::addr::parse_net(s)).collect()
    }

    /// The TLS files for `tcp://` engines, when all three are given.
    pub fn tls(&self) -> Option<sandpit_docker::EngineTls> {
        Some(sandpit_docker::EngineTls {
            ca: self.tls_ca.clone()?,
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }
}

impl SwarmConfig {
    fn default_start_timeout() -> Duration {
        Duration::from_secs(120)
    }
    fn default_node_check() -> Duration {
        Duration::from_secs(1)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmNodeConfig {
    /// The node's hostname as `docker node ls` shows it.
    pub name: String,
    /// Its engine's address: `unix://...`, or `tcp://host:2376` with the
    /// `[swarm] tls_*` files.
    pub host: String,
}

/// How the AI Leadership Group's process runs in the register: who must
/// sign off what, how often risks are reviewed, what refuses new sandboxes,
/// and the host's defaults for transparency (ATRS) records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernanceConfig {
    /// The functions approvers sign for (identities' `functions`).
    pub functions: Vec<String>,
    /// Functions that must sign off, per classification; an entry holds for
    /// its classification and every one above it. None: one approver of
    /// another team decides.
    pub sign_offs: BTreeMap<Classification, Vec<String>>,
    /// How often a risk's review falls due, by its impact.
    pub review: ReviewConfig,
    /// Refuse new sandboxes for an experiment with a risk of at least this
    /// impact overdue for review (rule risk-review-overdue): low, medium,
    /// high, or "never".
    pub refuse_overdue_risk: String,
    /// Sandboxes at or above this classification need a completed DPIA on
    /// the experiment's record (rule dpia-required), or "never".
    pub dpia_required: String,
    /// ATRS fields every record carries unless an experiment sets its own
    /// (e.g. organisation_name, contact_email), by the standard's names.
    pub transparency: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewConfig {
    #[serde(deserialize_with = "de_duration")]
    pub low: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub medium: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub high: Duration,
}

/// Images the daemon builds itself when one a sandbox needs is missing (no
/// registry is needed for the README's first create).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    pub build: Vec<ImageBuild>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageBuild {
    /// The image, exactly as profiles name it.
    pub image: String,
    /// The command that builds it (run in the directory sandpitd was started in).
    pub command: Vec<String>,
}

/// Isolation levels: which the host requires per classification, and which
/// of the engine's runtimes gives each.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolationConfig {
    /// The weakest isolation each classification may run at; an entry holds
    /// for its classification and every one above it.
    pub minimum: BTreeMap<Classification, Isolation>,
    /// The engine's runtime (`docker info` lists them) for each level; an
    /// empty name is the engine's default runtime (runc).
    pub runtimes: BTreeMap<Isolation, RuntimeName>,
}

/// One runtime for every network mode, or one per mode (for hosts where a
/// runtime needs a variant per mode: gVisor's `--network=none` and
/// `--network=host`, see scripts/register-runsc.sh).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RuntimeName {
    One(String),
    ByNetwork(BTreeMap<NetworkMode, String>),
}

/// Signed checkpoints of the audit chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The Ed25519 seed that signs checkpoints, created (0600) if missing;
    /// `<signing_key>.pub` holds the verifier key. Default: in data_dir.
    pub signing_key: Option<PathBuf>,
    /// Where each checkpoint is written (and `latest`). Default: in data_dir.
    pub checkpoint_dir: Option<PathBuf>,
    /// A checkpoint every this many records...
    pub checkpoint_every: u64,
    /// ...and this often when records were appended since the last one.
    #[serde(deserialize_with = "de_duration")]
    pub checkpoint_interval: Duration,
    /// First line of every checkpoint. Default: `sandpit/<instance id>`.
    pub origin: Option<String>,
    /// Name of the key in signatures and the verifier key. Default: `sandpit-<instance id>`.
    pub key_name: Option<String>,
}

/// Where the state lives: the SQLite file in `data_dir` (one daemon), or
/// PostgreSQL (several daemons sharing it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Empty: `sandpit.db` in `data_dir`. `postgres://user:password@host/db`
    /// (add `?sslmode=require` for TLS, verified): PostgreSQL, shared by
    /// every daemon given the same URL.
    pub url: String,
    /// PostgreSQL: connections in this daemon's pool.
    pub pool_size: usize,
    /// PostgreSQL with `sslmode=require`: the CA that signed the server's
    /// certificate (PEM). Default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PostgreSQL: how often a daemon without the lease on the singleton
    /// duties (expiry, reconcile, pool refill, checkpoints) tries to take
    /// it, and how often its holder checks its connection. A dead holder's
    /// duties are taken over within this.
    #[serde(deserialize_with = "de_duration")]
    pub lease_retry: Duration,
}

impl StoreConfig {
    /// Whether the store is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotasConfig {
    /// Live sandboxes (provisioning, running, exited) a team may have at once.
    pub sandboxes_per_team: u32,
    /// Quotas of particular teams, by team name.
    pub teams: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics at `http://<listen>/metrics`.
    pub enabled: bool,
    /// Its own plaintext listener; loopback unless you mean otherwise (logged).
    pub listen: SocketAddr,
}

/// The read-only web dashboard for approvers, auditors and operators.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    pub enabled: bool,
    /// Its own listener: HTTPS with the daemon's `[tls]` certificate when
    /// that is set (client certificates too, with `tls.client_ca`), else
    /// plaintext, which only a loopback address gets unless
    /// `allow_insecure_listen` says otherwise.
    pub listen: SocketAddr,
    /// How long a sign-in lasts.
    #[serde(deserialize_with = "de_duration")]
    pub session_ttl: Duration,
}

/// What one identity (one token or certificate) may ask of the daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request message accepted; bigger ones get RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
    /// Calls one identity may have in progress at once (open streams count).
    pub max_concurrent_calls: u32,
    /// Sustained calls per second one identity may make.
    pub calls_per_second: u32,
    /// Calls one identity may make at once after being idle.
    pub burst: u32,
    /// Refusals are summarised per window of this length: a repeat of one
    /// already recorded in the window is counted, not recorded.
    #[serde(deserialize_with = "de_duration")]
    pub refusal_window: Duration,
    /// Refusal records each source (address and identity) gets per window;
    /// beyond it refusals are counted into one summary record.
    pub refusals_per_source: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA that signs client certificates; set it to accept mutual TLS.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    pub name: String,
    pub team: String,
    pub roles: Vec<crate::identity::Role>,
    /// Hex SHA-256 of the bearer token.
    pub token_sha256: Option<String>,
    /// Subject of the client certificate (mutual TLS), e.g. `CN=alice, O=ONS`.
    pub cert_subject: Option<String>,
    /// The governance functions an approver signs for (from `governance.functions`).
    #[serde(default)]
    pub functions: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub name: String,
    pub path: PathBuf,
    pub classification: Classification,
    pub residency: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// IPv4 range per-sandbox networks take their subnets from.
    pub subnet_pool: String,
    /// Prefix length of each sandbox's subnet.
    pub subnet_prefix: u8,
    /// Port of the egress proxy on every sandbox network's gateway. Keep it
    /// fixed, so sandboxes adopted after a restart still reach it (0 picks a
    /// free port at start: for tests).
    pub egress_port: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// Engine address (unix:///var/run/docker.sock, tcp://...). Unset: DOCKER_HOST or the local socket.
    pub host: Option<String>,
    /// Name of this engine in sandbox records.
    pub node: String,
    /// Per-call timeout.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleConfig {
    /// Watchers are warned this long before a sandbox expires.
    #[serde(deserialize_with = "de_duration")]
    pub expiry_warning: Duration,
    /// Full reconcile with Docker this often (events cover the time between).
    #[serde(deserialize_with = "de_duration")]
    pub reconcile_interval: Duration,
    /// A labelled container with no record is removed once it is this old.
    #[serde(deserialize_with = "de_duration")]
    pub orphan_grace: Duration,
    /// On SIGTERM/SIGINT, in-flight calls get this long to finish.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
    /// Exec commands are cut off after this long unless the request says otherwise.
    #[serde(deserialize_with = "de_duration")]
    pub exec_timeout: Duration,
    /// The shortest ttl a create or extension may ask for.
    #[serde(deserialize_with = "de_duration")]
    pub min_ttl: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// uid:gid every sandbox runs as; never root.
    pub user: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// tracing filter, e.g. `info,sandpit=debug`. RUST_LOG wins when set.
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The embedded defaults, as TOML: one place that names every key.
fn defaults() -> String {
    format!(
        r#"
listen = "{DEFAULT_LISTEN}"
data_dir = "{data_dir}"
profiles_dir = "{DEFAULT_PROFILES_DIR}"
max_classification = "OFFICIAL-SENSITIVE"
allow_insecure_listen = false
identities = []
permitted_residency = ["UK"]
datasets = []
labels = {{}}

[network]
subnet_pool = "10.213.0.0/16"
subnet_prefix = 28
egress_port = 3128

[docker]
node = "{DEFAULT_NODE}"
timeout = "2m"

[lifecycle]
expiry_warning = "1m"
reconcile_interval = "30s"
orphan_grace = "1m"
shutdown_grace = "10s"
exec_timeout = "10m"
min_ttl = "10s"

[sandbox]
user = "{DEFAULT_SANDBOX_USER}"

[log]
format = "text"
filter = "info"

[metrics]
enabled = true
listen = "{DEFAULT_METRICS_LISTEN}"

[dashboard]
enabled = true
listen = "{DEFAULT_DASHBOARD_LISTEN}"
session_ttl = "8h"

[limits]
max_message_bytes = 4194304
max_concurrent_calls = 128
calls_per_second = 100
burst = 200
refusal_window = "10s"
refusals_per_source = 30

[quotas]
sandboxes_per_team = 50
teams = {{}}

[audit]
checkpoint_every = 1000
checkpoint_interval = "5m"

[store]
url = ""
pool_size = 16
lease_retry = "1s"

[isolation]
minimum = {{ "OFFICIAL" = "container", "OFFICIAL-SENSITIVE" = "gvisor" }}

[governance]
functions = []
sign_offs = {{}}
refuse_overdue_risk = "high"
dpia_required = "never"
transparency = {{}}

[governance.review]
low = "180d"
medium = "90d"
high = "30d"

[isolation.runtimes]
container = ""
gvisor = {{ none = "runsc-none", isolated = "runsc-host", allowlist = "runsc-host", open = "runsc-host" }}

# The example profiles' image, built from this machine's own binaries the
# first time a sandbox needs it (run from the repository's root).
[[images.build]]
image = "sandpit/base:local"
command = ["scripts/build-image.sh", "sandpit/base:local"]

[[images.build]]
image = "sandpit/python-data:local"
command = ["scripts/build-image.sh", "--recipe", "python-data", "sandpit/python-data:local"]
"#,
        data_dir = default_data_dir().display().to_string().replace('\\', "/"),
    )
}

/// The numeric `uid:gid` every sandbox runs as. Numbers, not names: a name
/// means whatever the image's /etc/passwd says (root, for all the daemon
/// knows), and the scratch tmpfs is made the user's by number. Neither may be
/// 0 (`00` and `0:0` included): never root, never root's group.
pub fn sandbox_user(user: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = user.trim().split_once(':').ok_or_else(|| format!("'{user}' is not uid:gid, e.g. 65534:65534"))?;
    let id = |what: &str, v: &str| {
        v.parse::<u32>().map_err(|_| format!("'{user}': the {what} must be a number (names depend on the image)"))
    };
    let (uid, gid) = (id("uid", uid)?, id("gid", gid)?);
    if uid == 0 || gid == 0 {
        return Err(format!("'{user}' would run sandboxes as root or in root's group"));
    }
    Ok((uid, gid))
}

/// `"never"` as `None`, anything else parsed.
fn never_or<T: std::str::FromStr>(s: &str) -> Result<Option<T>, T::Err> {
    if s.trim().eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    s.parse().map(Some)
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// TOML syntax errors with the line they are on (the `config` crate reports
/// some, such as a number out of range, with neither line nor key).
fn check_syntax(path: &Path) -> Result<(), ConfigError> {
    let content =
        std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
    toml::from_str::<toml::Table>(&content).map(|_| ()).map_err(|e| {
        let line = e.span().map(|s| format!("line {}: ", content[..s.start].matches('\n').count() + 1));
        ConfigError(format!("{}: {}{}", path.display(), line.unwrap_or_default(), e.message().trim()))
    })
}

impl Config {
    pub fn team_quotas(&self) -> sandpit_core::policy::admission::TeamQuotas {
        sandpit_core::policy::admission::TeamQuotas {
            default: self.quotas.sandboxes_per_team,
            teams: self.quotas.teams.clone(),
        }
    }

    /// `audit.signing_key`, or its default in the data directory.
    pub fn signing_key(&self) -> PathBuf {
        self.audit.signing_key.clone().unwrap_or_else(|| self.data_dir.join(DEFAULT_SIGNING_KEY_FILE))
    }

    /// `audit.checkpoint_dir`, or its default in the data directory.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.audit.checkpoint_dir.clone().unwrap_or_else(|| self.data_dir.join(DEFAULT_CHECKPOINT_DIR))
    }

    /// What the checkpointer needs, defaults resolved with the store's instance id.
    pub fn checkpoint_settings(&self, instance: &str) -> crate::checkpoints::Settings {
        crate::checkpoints::Settings {
            signing_key: self.signing_key(),
            checkpoint_dir: self.checkpoint_dir(),
            every: self.audit.checkpoint_every,
            interval: self.audit.checkpoint_interval,
            origin: self.audit.origin.clone().unwrap_or_else(|| format!("sandpit/{instance}")),
            key_name: self.audit.key_name.clone().unwrap_or_else(|| format!("sandpit-{instance}")),
        }
    }

    /// What profile validation needs to know about this host.
    pub fn host_rules(&self) -> sandpit_core::policy::HostRules {
        sandpit_core::policy::HostRules {
            permitted_residency: self.permitted_residency.clone(),
            datasets: self.datasets.iter().map(|d| (d.name.clone(), d.classification)).collect(),
            minimum_isolation: self.minimum_isolation(),
        }
    }

    /// The engine runtime of each isolation level, per network mode.
    pub fn runtime_names(&self) -> sandpit_docker::RuntimeNames {
        let mut names = sandpit_docker::RuntimeNames::default();
        for (level, name) in &self.isolation.runtimes {
            match name {
                RuntimeName::One(n) => names.set_all(*level, n),
                RuntimeName::ByNetwork(by) => {
                    for (mode, n) in by {
                        names.set(*level, *mode, n);
                    }
                }
            }
        }
        names
    }

    /// The governance policy the register applies.
    pub fn governance(&self) -> sandpit_core::register::Governance {
        let g = &self.governance;
        sandpit_core::register::Governance {
            functions: g.functions.clone(),
            sign_offs: g.sign_offs.clone(),
            review: sandpit_core::register::ReviewCadence {
                low: g.review.low,
                medium: g.review.medium,
                high: g.review.high,
            },
        }
    }

    /// `governance.refuse_overdue_risk` (validated at load).
    pub fn refuse_overdue_risk(&self) -> Option<sandpit_core::register::Level> {
        never_or(&self.governance.refuse_overdue_risk).ok().flatten()
    }

    /// `governance.dpia_required` (validated at load).
    pub fn dpia_required(&self) -> Option<Classification> {
        never_or(&self.governance.dpia_required).ok().flatten()
    }

    fn validate_governance(&self) -> Result<(), String> {
        let g = &self.governance;
        for (i, f) in g.functions.iter().enumerate() {
            let ok = !f.is_empty()
                && f.len() <= 64
                && f.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                return Err(format!("governance.functions[{i}]: '{f}' must be 1-64 of a-z, 0-9 and '-'"));
            }
            if g.functions[..i].contains(f) {
                return Err(format!("governance.functions[{i}]: '{f}' is listed twice"));
            }
        }
        for (c, list) in &g.sign_offs {
            for f in list {
                if !g.functions.contains(f) {
                    return Err(format!(
                        "governance.sign_offs.\"{c}\": '{f}' is not one of governance.functions ({})",
                        g.functions.join(", ")
                    ));
                }
            }
        }
        for (key, d) in [("low", g.review.low), ("medium", g.review.medium), ("high", g.review.high)] {
            if d < Duration::from_secs(1) || d > sandpit_core::time::LONGEST {
                return Err(format!("governance.review.{key}: must be between 1s and 100 years"));
            }
        }
        never_or::<sandpit_core::register::Level>(&g.refuse_overdue_risk)
            .map_err(|e| format!("governance.refuse_overdue_risk: {e} (or \"never\")"))?;
        never_or::<Classification>(&g.dpia_required)
            .map_err(|e| format!("governance.dpia_required: {e} (or \"never\")"))?;
        for (name, value) in &g.transparency {
            if !crate::export::atrs::settable(name) {
                return Err(format!(
                    "governance.transparency.{name}: not an ATRS field the register leaves to the host \
                     (see docs/atrs/atrs-v3-fields.json)"
                ));
            }
            if value.len() > 4000 {
                return Err(format!("governance.transparency.{name}: longer than 4000 characters"));
            }
        }
        for (i, id) in self.identities.iter().enumerate() {
            for f in &id.functions {
                if !g.functions.contains(f) {
                    return Err(format!(
                        "identities[{i}].functions: '{f}' is not one of governance.functions ({})",
                        g.functions.join(", ")
                    ));
                }
            }
            if !id.functions.is_empty() && !id.roles.contains(&crate::identity::Role::Approver) {
                return Err(format!("identities[{i}].functions: only approvers sign off; give it the approver role"));
            }
        }
        Ok(())
    }

    pub fn minimum_isolation(&self) -> sandpit_core::policy::MinimumIsolation {
        sandpit_core::policy::MinimumIsolation(self.isolation.minimum.clone())
    }

    /// Defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Config::load`], with the environment given (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(&defaults(), config::FileFormat::Toml));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!("{}: no such file", path.display())));
            }
            check_syntax(path)?;
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let vars: config::Map<String, String> =
            env.into_iter().filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__"))).collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(vars)),
        );
        let where_ = file.map(|p| format!("{}: ", p.display())).unwrap_or_default();
        let cfg: Config =
            builder.build().and_then(|c| c.try_deserialize()).map_err(|e| ConfigError(format!("{where_}{e}")))?;
        cfg.validate().map_err(|e| ConfigError(format!("{where_}{e}")))?;
        Ok(cfg)
    }

    fn validate_audit(&self) -> Result<(), String> {
        let a = &self.audit;
        if a.checkpoint_every == 0 {
            return Err("audit.checkpoint_every: must be at least 1".into());
        }
        if a.checkpoint_interval < Duration::from_secs(1) {
            return Err("audit.checkpoint_interval: must be at least 1s".into());
        }
        if let Some(o) = &a.origin {
            sandpit_core::audit::checkpoint::valid_origin(o).map_err(|e| format!("audit.origin: {e}"))?;
        }
        if let Some(n) = &a.key_name {
            sandpit_core::audit::checkpoint::valid_key_name(n).map_err(|e| format!("audit.key_name: {e}"))?;
        }
        for (key, path) in [("audit.signing_key", &a.signing_key), ("audit.checkpoint_dir", &a.checkpoint_dir)] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(format!("{key}: must not be empty"));
            }
        }
        // The checkpoint directory is meant to be shipped off the host; the private key must not go with it.
        let (key, dir) = (self.signing_key(), self.checkpoint_dir());
        if key.starts_with(&dir) {
            return Err(format!(
                "audit.signing_key: {} is inside audit.checkpoint_dir {}, which is shipped off the host; keep the private key elsewhere",
                key.display(),
                dir.display()
            ));
        }
        Ok(())
    }

    fn validate_isolation(&self) -> Result<(), String> {
        let valid = |n: &str| n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        for (level, name) in &self.isolation.runtimes {
            let key = format!("isolation.runtimes.{level}");
            match name {
                RuntimeName::One(n) if !valid(n) => return Err(format!("{key}: '{n}' is not a runtime name")),
                RuntimeName::One(_) => {}
                RuntimeName::ByNetwork(by) => {
                    for mode in [NetworkMode::None, NetworkMode::Isolated, NetworkMode::Allowlist, NetworkMode::Open] {
                        match by.get(&mode) {
                            None => {
                                return Err(format!(
                                    "{key}: names no runtime for network mode '{}' (give all four, or one name)",
                                    mode.as_str()
                                ))
                            }
                            Some(n) if !valid(n) || (n.is_empty() && *level != Isolation::Container) => {
                                return Err(format!("{key}.{}: '{n}' is not a runtime name", mode.as_str()))
                            }
                            Some(_) => {}
                        }
                    }
                }
            }
            if *level != Isolation::Container && matches!(name, RuntimeName::One(n) if n.is_empty()) {
                // The engine's default is runc: naming it for gVisor would
                // run sensitive work with less isolation than it claims.
                return Err(format!("{key}: must name the engine's runtime for '{level}', not its default"));
            }
        }
        Ok(())
    }

    fn validate_swarm(&self) -> Result<(), String> {
        let Some(sw) = &self.swarm else { return Ok(()) };
        // A local socket, or TCP with TLS verified both ways: an engine's
        // TCP port without TLS is root on its host to anyone who reaches it.
        let given = [("tls_ca", &sw.tls_ca), ("tls_cert", &sw.tls_cert), ("tls_key", &sw.tls_key)];
        let some = given.iter().filter(|(_, p)| p.is_some()).count();
        if some != 0 && some != 3 {
            let missing: Vec<&str> = given.iter().filter(|(_, p)| p.is_none()).map(|(k, _)| *k).collect();
            return Err(format!("swarm.{}: tls_ca, tls_cert and tls_key go together", missing[0]));
        }
        for (key, path) in given {
            if let Some(p) = path {
                std::fs::metadata(p).map_err(|e| format!("swarm.{key}: {}: {e}", p.display()))?;
            }
        }
        let endpoint = |key: String, h: &str| -> Result<(), String> {
            if h.starts_with("unix:///") {
                return Ok(());
            }
            if let Some(addr) = h.strip_prefix("tcp://") {
                if addr.is_empty() || addr.contains('/') {
                    return Err(format!("{key}: '{h}' is not tcp://HOST:PORT"));
                }
                if some == 0 {
                    return Err(format!(
                        "{key}: '{h}' needs swarm.tls_ca, tls_cert and tls_key (an engine's TCP port is only reached over TLS)"
                    ));
                }
                return Ok(());
            }
            Err(format!("{key}: '{h}' is neither unix:///PATH nor tcp://HOST:PORT"))
        };
        endpoint("swarm.manager".into(), &sw.manager)?;
        if sw.nodes.is_empty() {
            return Err("swarm.nodes: at least one node's engine is needed".into());
        }
        for (i, n) in sw.nodes.iter().enumerate() {
            if n.name.trim().is_empty() || n.name.contains('/') {
                return Err(format!("swarm.nodes[{i}].name: '{}' is not a node hostname", n.name));
            }
            if sw.nodes[..i].iter().any(|o| o.name == n.name) {
                return Err(format!("swarm.nodes[{i}].name: '{}' is listed twice", n.name));
            }
            endpoint(format!("swarm.nodes[{i}].host"), &n.host)?;
        }
        for (key, d) in [("start_timeout", sw.start_timeout), ("node_check", sw.node_check)] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
                return Err(format!("swarm.{key}: {d:?} is not between 100ms and 1h"));
            }
        }
        for (i, net) in sw.egress_sources.iter().enumerate() {
            if sandpit_core::egress::addr::parse_net(net).is_none() {
                return Err(format!(
                    "swarm.egress_sources[{i}]: '{net}' is not an IPv4 network (A.B.C.D/N, host bits zero)"
                ));
            }
        }
        match (&sw.egress_address, sw.egress_sources.is_empty()) {
            (Some(a), true) => Err(format!(
                "swarm.egress_sources: needed with egress_address {a} (the nodes' addresses, whence relays connect)"
            )),
            (Some(a), false) if a.is_unspecified() || a.is_loopback() => Err(format!(
                "swarm.egress_address: {a} is not an address the nodes can reach this host at"
            )),
            (None, false) => Err("swarm.egress_address: needed with egress_sources".into()),
            // Relays keep the proxy's address for their life, across restarts.
            (Some(_), false) if self.network.egress_port == 0 => Err(
                "network.egress_port: 0 (any free port) cannot be used with swarm.egress_address: relays on the swarm keep the proxy's port across restarts".into(),
            ),
            _ => Ok(()),
        }
    }

    fn validate_store(&self) -> Result<(), String> {
        let s = &self.store;
        if !s.url.is_empty() && !s.is_postgres() {
            return Err(format!(
                "store.url: '{}' is neither empty (SQLite in data_dir) nor a postgres:// URL",
                s.url.split('@').next_back().unwrap_or_default()
            ));
        }
        if !(1..=1000).contains(&s.pool_size) {
            return Err(format!("store.pool_size: {} is not between 1 and 1000", s.pool_size));
        }
        if s.lease_retry < Duration::from_millis(100) || s.lease_retry > Duration::from_secs(60) {
            return Err(format!("store.lease_retry: {:?} is not between 100ms and 60s", s.lease_retry));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), String> {
        self.validate_store()?;
        self.validate_swarm()?;
        self.validate_isolation()?;
        self.validate_governance()?;
        for (i, b) in self.images.build.iter().enumerate() {
            if b.image.trim().is_empty() || b.image.chars().any(char::is_whitespace) {
                return Err(format!("images.build[{i}].image: '{}' is not an image reference", b.image));
            }
            if b.command.first().is_none_or(|c| c.is_empty()) {
                return Err(format!("images.build[{i}].command: must name the program that builds '{}'", b.image));
            }
        }
        for (i, id) in self.identities.iter().enumerate() {
            let field = |f: &str| format!("identities[{i}].{f}");
            if id.name.trim().is_empty() {
                return Err(format!("{}: must not be empty", field("name")));
            }
            if id.team.trim().is_empty() {
                return Err(format!("{}: must not be empty", field("team")));
            }
            if id.roles.is_empty() {
                return Err(format!("{}: at least one role is needed", field("roles")));
            }
            if id.token_sha256.is_none() && id.cert_subject.is_none() {
                return Err(format!("identities[{i}]: needs token_sha256 or cert_subject"));
            }
            if let Some(h) = &id.token_sha256 {
                if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(format!("{}: must be 64 hex digits (sha256 of the token)", field("token_sha256")));
                }
                let dup = self.identities[..i]
                    .iter()
                    .filter_map(|o| o.token_sha256.as_ref())
                    .any(|o| o.eq_ignore_ascii_case(h));
                if dup {
                    return Err(format!("{}: the same token is given to two identities", field("token_sha256")));
                }
            }
            if let Some(s) = &id.cert_subject {
                let subject: crate::identity::DistinguishedName =
                    s.parse().map_err(|e| format!("{}: '{s}': {e}", field("cert_subject")))?;
                let same = self.identities[..i].iter().position(|o| {
                    o.cert_subject.as_ref().and_then(|o| o.parse().ok()).is_some_and(|o| subject.matches(&o))
                });
                if let Some(j) = same {
                    return Err(format!(
                        "{}: the same subject as identities[{j}].cert_subject (as written or reversed: \
                         both orders match a certificate)",
                        field("cert_subject")
                    ));
                }
                if self.tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
                    return Err(format!(
                        "{}: needs tls.client_ca to verify client certificates",
                        field("cert_subject")
                    ));
                }
            }
        }
        sandpit_docker::subnet::Pool::new(&self.network.subnet_pool, self.network.subnet_prefix)
            .map_err(|e| format!("network: {e}"))?;
        for (i, d) in self.datasets.iter().enumerate() {
            if sandpit_core::policy::admission::validate_name("name", &d.name).is_err() {
                return Err(format!(
                    "datasets[{i}].name: '{}' may contain only letters, digits, '.', '_' and '-'",
                    d.name
                ));
            }
            if self.datasets[..i].iter().any(|o| o.name == d.name) {
                return Err(format!("datasets[{i}].name: '{}' is declared twice", d.name));
            }
            if !d.path.is_absolute() || !d.path.is_dir() {
                return Err(format!("datasets[{i}].path: {} is not an existing absolute directory", d.path.display()));
            }
            if d.residency.trim().is_empty() {
                return Err(format!("datasets[{i}].residency: must not be empty"));
            }
        }
        sandbox_user(&self.sandbox.user).map_err(|e| format!("sandbox.user: {e}"))?;
        if !self.listen.ip().is_loopback() && self.tls.is_none() && !self.allow_insecure_listen {
            return Err(format!(
                "listen: {} is not a loopback address and no [tls] is configured; \
                 set tls.cert and tls.key, or allow_insecure_listen = true to accept plaintext",
                self.listen
            ));
        }
        let d = &self.dashboard;
        if d.enabled && !d.listen.ip().is_loopback() && self.tls.is_none() && !self.allow_insecure_listen {
            return Err(format!(
                "dashboard.listen: {} is not a loopback address and no [tls] is configured (tokens would cross \
                 the network in plaintext); set tls.cert and tls.key, or allow_insecure_listen = true",
                d.listen
            ));
        }
        if d.session_ttl < Duration::from_secs(60) || d.session_ttl > Duration::from_secs(7 * 24 * 3600) {
            return Err("dashboard.session_ttl: must be between 1m and 7d".into());
        }
        let limits = &self.limits;
        if limits.max_message_bytes < 64 * 1024 {
            return Err("limits.max_message_bytes: must be at least 65536".into());
        }
        for (key, value) in [
            ("max_concurrent_calls", limits.max_concurrent_calls),
            ("calls_per_second", limits.calls_per_second),
            ("burst", limits.burst),
            ("refusals_per_source", limits.refusals_per_source),
        ] {
            if value == 0 {
                return Err(format!("limits.{key}: must be at least 1"));
            }
        }
        if self.limits.refusal_window < Duration::from_millis(100) {
            return Err("limits.refusal_window: must be at least 100ms".into());
        }
        if self.lifecycle.min_ttl < Duration::from_secs(1) {
            return Err("lifecycle.min_ttl: must be at least 1s".into());
        }
        if self.lifecycle.reconcile_interval.is_zero() {
            return Err("lifecycle.reconcile_interval: must be above zero".into());
        }
        self.validate_audit()?;
        let l = &self.lifecycle;
        for (key, d) in [
            ("docker.timeout", self.docker.timeout),
            ("lifecycle.expiry_warning", l.expiry_warning),
            ("lifecycle.reconcile_interval", l.reconcile_interval),
            ("lifecycle.orphan_grace", l.orphan_grace),
            ("lifecycle.shutdown_grace", l.shutdown_grace),
            ("lifecycle.exec_timeout", l.exec_timeout),
            ("lifecycle.min_ttl", l.min_ttl),
            ("limits.refusal_window", self.limits.refusal_window),
            ("audit.checkpoint_interval", self.audit.checkpoint_interval),
        ] {
            // Deadlines are computed by adding these to the clock.
            if d > sandpit_core::time::LONGEST {
                return Err(format!("{key}: must be at most 100 years (36500d)"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn file(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    #[test]
    fn embedded_defaults_are_safe() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.listen.port(), 50051);
        assert_eq!(c.max_classification, Classification::OfficialSensitive);
        assert!(!c.allow_insecure_listen && c.tls.is_none() && c.identities.is_empty());
        assert_eq!(c.sandbox.user, DEFAULT_SANDBOX_USER);
        assert!(c.metrics.enabled && c.metrics.listen.ip().is_loopback());
        assert!(c.limits.max_concurrent_calls > 0 && c.limits.calls_per_second > 0);
        assert_eq!(c.team_quotas().of("anyone"), 50);
    }

    #[test]
    fn isolation_defaults_require_gvisor_for_sensitive_work_on_its_runtime_variants() {
        use sandpit_core::policy::Isolation;
        let c = Config::load_from(None, env(&[])).unwrap();
        let m = c.minimum_isolation();
        assert_eq!(m.at(Classification::Official), Isolation::Container);
        assert_eq!(m.at(Classification::OfficialSensitive), Isolation::Gvisor);
        assert_eq!(m.at(Classification::TopSecret), Isolation::Gvisor);
        let names = c.runtime_names();
        assert_eq!(names.get(Isolation::Container, NetworkMode::Isolated), Some(""));
        assert_eq!(names.get(Isolation::Gvisor, NetworkMode::None), Some("runsc-none"));
        assert_eq!(names.get(Isolation::Gvisor, NetworkMode::Allowlist), Some("runsc-host"));
        // One name for every mode (a host whose runsc has a working netstack).
        let f = file("[isolation.runtimes]\ngvisor = \"runsc\"\n");
        let c = Config::load_from(Some(f.path()), env(&[])).unwrap();
        assert_eq!(c.runtime_names().get(Isolation::Gvisor, NetworkMode::Open), Some("runsc"));
        // A table names the modes it changes; the others keep their default.
        let f = file("[isolation.runtimes.gvisor]\nnone = \"gvisor-none\"\n");
        let names = Config::load_from(Some(f.path()), env(&[])).unwrap().runtime_names();
        assert_eq!(names.get(Isolation::Gvisor, NetworkMode::None), Some("gvisor-none"));
        assert_eq!(names.get(Isolation::Gvisor, NetworkMode::Open), Some("runsc-host"));
        // An operator may lower the minimum, explicitly.
        let f = file("[isolation.minimum]\n\"OFFICIAL-SENSITIVE\" = \"container\"\n");
        let c = Config::load_from(Some(f.path()), env(&[])).unwrap();
        assert_eq!(c.minimum_isolation().at(Classification::Secret), Isolation::Container);
    }

    #[test]
    fn isolation_settings_that_would_mislead_are_refused_by_key() {
        for (body, key) in [
            ("[isolation.runtimes]\ngvisor = \"\"\n", "isolation.runtimes.gvisor: must name the engine's runtime"),
            (
                "[isolation.runtimes]\ngvisor = { none = \"\" }\n",
                "isolation.runtimes.gvisor.none: '' is not a runtime name",
            ),
            (
                "[isolation.runtimes]\ngvisor = \"run sc\"\n",
                "isolation.runtimes.gvisor: 'run sc' is not a runtime name",
            ),
            ("[isolation.runtimes]\nkata = \"kata\"\n", "kata"),
            ("[isolation.minimum]\n\"OFFICIAL-SENSITIVE\" = \"vm\"\n", "vm"),
            ("[isolation.minimum]\nRESTRICTED = \"gvisor\"\n", "RESTRICTED"),
        ] {
            let f = file(body);
            let e = Config::load_from(Some(f.path()), env(&[])).unwrap_err().to_string();
            assert!(e.contains(key), "{body}: {e}");
        }
    }

    #[test]
    fn file_then_environment() {
        let f = file("listen = \"127.0.0.1:6000\"\n[lifecycle]\norphan_grace = \"5s\"\n");
        let c = Config::load_from(
            Some(f.path()),
            env(&[
                ("SANDPIT__LISTEN", "127.0.0.1:7000"),
                ("SANDPIT__LIFECYCLE__EXPIRY_WARNING", "10s"),
                ("SANDPIT_ADDR", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.lifecycle.orphan_grace, Duration::from_secs(5));
        assert_eq!(c.lifecycle.expiry_warning, Duration::from_secs(10));
    }

    #[test]
    fn unknown_keys_are_named() {
        let f = file("listen = \"127.0.0.1:6000\"\nlisten_port = 3\n");
        let e = Config::load_from(Some(f.path()), env(&[])).unwrap_err().to_string();
        assert!(e.contains("listen_port"), "{e}");
        let e = Config::load_from(None, env(&[("SANDPIT__LIFECYCLE__NAP", "1s")])).unwrap_err().to_string();
        assert!(e.contains("nap"), "{e}");
    }

    #[test]
    fn unsafe_settings_are_refused() {
        let e = Config::load_from(None, env(&[("SANDPIT__LISTEN", "0.0.0.0:50051")])).unwrap_err().to_string();
        assert!(e.contains("listen") && e.contains("tls"), "{e}");
        let ok = Config::load_from(
            None,
            env(&[("SANDPIT__LISTEN", "0.0.0.0:50051"), ("SANDPIT__ALLOW_INSECURE_LISTEN", "true")]),
        );
        assert!(ok.is_ok());
        for root in ["0:0", "00:1000", "1000:0", "root:root", "65534", "nobody:nogroup", "-1:5", ""] {
            let e = Config::load_from(None, env(&[("SANDPIT__SANDBOX__USER", root)])).unwrap_err().to_string();
            assert!(e.contains("sandbox.user"), "{root}: {e}");
        }
        assert_eq!(sandbox_user(" 1000:1001 "), Ok((1000, 1001)));
        let f = file("[[identities]]\nname = \"a\"\nteam = \"t\"\nroles = [\"requester\"]\ntoken_sha256 = \"abc\"\n");
        let e = Config::load_from(Some(f.path()), env(&[])).unwrap_err().to_string();
        assert!(e.contains("identities[0].token_sha256"), "{e}");
        let e = Config::load_from(None, env(&[("SANDPIT__LIMITS__BURST", "0")])).unwrap_err().to_string();
        assert!(e.contains("limits.burst"), "{e}");
    }

    #[test]
    fn cert_subjects_are_distinguished_names_of_one_identity_each() {
        let load = |subjects: &[&str]| {
            let mut s = "[tls]\ncert = \"/c\"\nkey = \"/k\"\nclient_ca = \"/ca\"\n".to_string();
            for (i, subject) in subjects.iter().enumerate() {
                s += &format!("[[identities]]\nname = \"p{i}\"\nteam = \"t\"\nroles = [\"requester\"]\ncert_subject = '{subject}'\n");
            }
            let f = file(&s);
            Config::load_from(Some(f.path()), env(&[])).map_err(|e| e.to_string())
        };
        let c = load(&[
            "CN=alice, O=ONS",
            "CN=bob, O=ONS",
            r"CN=alice\, O=ONS",
            "CN=alice+O=ONS",
            "O=ONS, CN=alice, O=ONS",
        ])
        .unwrap();
        assert_eq!(c.identities.len(), 5);
        for (subjects, why) in [
            (&["CN=alice;O=ONS"][..], "identities[0].cert_subject: 'CN=alice;O=ONS': ';' at character 9"),
            (&["dave"], "identities[0].cert_subject: 'dave': expected '='"),
            (&["CN=alice", "CN=#00"], "identities[1].cert_subject: 'CN=#00': the value of CN is in #hex (BER) form"),
            (&["CN=alice, O=ONS", "cn = alice,o=ONS"], "identities[1].cert_subject: the same subject as identities[0]"),
            (
                &["CN=alice, O=ONS", "X=y", "O=ONS, CN=alice"],
                "identities[1].cert_subject: 'X=y': unknown attribute type",
            ),
            (
                &["CN=alice, O=ONS", "CN=b", "O=ONS, CN=alice"],
                "identities[2].cert_subject: the same subject as identities[0]",
            ),
        ] {
            let e = load(subjects).unwrap_err();
            assert!(e.contains(why), "{subjects:?}: {e}");
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Config::load_from(None, env(&[("SANDPIT__MAX_CLASSIFICATION", "RESTRICTED")])).unwrap_err().to_string();
        assert!(e.contains("RESTRICTED"), "{e}");
        let e = Config::load_from(None, env(&[("SANDPIT__LIFECYCLE__ORPHAN_GRACE", "soon")])).unwrap_err().to_string();
        assert!(e.contains("soon"), "{e}");
        let e = Config::load_from(Some(Path::new("/nonexistent/sandpit.toml")), env(&[])).unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
        // Once accepted: an exec without a timeout then panicked adding it to the clock.
        let e = Config::load_from(None, env(&[("SANDPIT__LIFECYCLE__EXEC_TIMEOUT", "300000000000y")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lifecycle.exec_timeout"), "{e}");
    }

    #[test]
    fn governance_defaults_and_bad_values_are_named() {
        use sandpit_core::register::Level;
        let c = Config::load_from(None, env(&[])).unwrap();
        let g = c.governance();
        assert!(g.functions.is_empty() && g.required(Classification::Secret).is_empty(), "one approver decides");
        assert_eq!(g.review.high, Duration::from_secs(30 * 24 * 3600));
        assert_eq!((c.refuse_overdue_risk(), c.dpia_required()), (Some(Level::High), None));
        let good = "[governance]\nfunctions = [\"ethics\", \"data-protection\"]\nrefuse_overdue_risk = \"never\"\n\
                    dpia_required = \"OFFICIAL-SENSITIVE\"\n[governance.sign_offs]\n\"OFFICIAL\" = [\"ethics\"]\n\
                    \"OFFICIAL-SENSITIVE\" = [\"data-protection\"]\n[governance.transparency]\ncontact_email = \"x@example\"\n";
        let c = Config::load_from(Some(file(good).path()), env(&[])).unwrap();
        assert_eq!(c.governance().required(Classification::OfficialSensitive), ["ethics", "data-protection"]);
        assert_eq!((c.refuse_overdue_risk(), c.dpia_required()), (None, Some(Classification::OfficialSensitive)));
        for (toml, named) in [
            ("[governance]\nfunctions = [\"Ethics Board\"]\n", "governance.functions[0]"),
            ("[governance]\nfunctions = [\"a\", \"a\"]\n", "governance.functions[1]"),
            ("[governance.sign_offs]\n\"OFFICIAL\" = [\"legal\"]\n", "governance.sign_offs"),
            ("[governance]\nrefuse_overdue_risk = \"severe\"\n", "governance.refuse_overdue_risk"),
            ("[governance]\ndpia_required = \"RESTRICTED\"\n", "governance.dpia_required"),
            ("[governance.review]\nhigh = \"0s\"\n", "governance.review.high"),
            ("[governance.transparency]\ntitle = \"x\"\n", "governance.transparency.title"),
            (
                "[[identities]]\nname = \"a\"\nteam = \"t\"\nroles = [\"approver\"]\nfunctions = [\"ethics\"]\n\
                 token_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
                "identities[0].functions",
            ),
        ] {
            let e = Config::load_from(Some(file(toml).path()), env(&[])).unwrap_err().to_string();
            assert!(e.contains(named), "{named}: {e}");
        }
    }

    #[test]
    fn audit_keys_default_into_the_data_dir_and_bad_ones_are_named() {
        let c = Config::load_from(None, env(&[("SANDPIT__DATA_DIR", "/srv/sp")])).unwrap();
        assert_eq!(c.signing_key(), Path::new("/srv/sp/audit-signing.key"));
        assert_eq!(c.checkpoint_dir(), Path::new("/srv/sp/checkpoints"));
        assert_eq!((c.audit.checkpoint_every, c.audit.checkpoint_interval), (1000, Duration::from_secs(300)));
        let s = c.checkpoint_settings("0123abcd");
        assert_eq!((s.origin.as_str(), s.key_name.as_str()), ("sandpit/0123abcd", "sandpit-0123abcd"));
        let f = file(
            "[audit]\nsigning_key = \"/etc/sp/k\"\ncheckpoint_dir = \"/var/log/sp\"\norigin = \"o.example/log\"\nkey_name = \"o.example\"\ncheckpoint_every = 10\ncheckpoint_interval = \"30s\"\n",
        );
        let c = Config::load_from(Some(f.path()), env(&[])).unwrap();
        let s = c.checkpoint_settings("x");
        assert_eq!(
            (s.signing_key.as_path(), s.checkpoint_dir.as_path()),
            (Path::new("/etc/sp/k"), Path::new("/var/log/sp"))
        );
        assert_eq!((s.origin.as_str(), s.key_name.as_str(), s.every), ("o.example/log", "o.example", 10));
        assert_eq!(s.interval, Duration::from_secs(30));

        for (vars, key) in [
            (vec![("SANDPIT__AUDIT__CHECKPOINT_EVERY", "0")], "audit.checkpoint_every"),
            (vec![("SANDPIT__AUDIT__CHECKPOINT_EVERY", "many")], "audit.checkpoint_every"),
            (vec![("SANDPIT__AUDIT__CHECKPOINT_INTERVAL", "0s")], "audit.checkpoint_interval"),
            (vec![("SANDPIT__AUDIT__CHECKPOINT_INTERVAL", "soon")], "audit.checkpoint_interval"),
            (vec![("SANDPIT__AUDIT__CHECKPOINT_INTERVAL", "36501d")], "audit.checkpoint_interval"),
            (vec![("SANDPIT__AUDIT__KEY_NAME", "two words")], "audit.key_name"),
            (vec![("SANDPIT__AUDIT__KEY_NAME", "a+b")], "audit.key_name"),
            (vec![("SANDPIT__AUDIT__ORIGIN", "")], "audit.origin"),
            (vec![("SANDPIT__AUDIT__SIGNING_KEY", "")], "audit.signing_key"),
            (
                vec![("SANDPIT__AUDIT__SIGNING_KEY", "/srv/cp/key"), ("SANDPIT__AUDIT__CHECKPOINT_DIR", "/srv/cp")],
                "audit.signing_key",
            ),
            (
                vec![("SANDPIT__DATA_DIR", "/srv/sp"), ("SANDPIT__AUDIT__CHECKPOINT_DIR", "/srv/sp")],
                "audit.signing_key",
            ),
            (vec![("SANDPIT__AUDIT__NAP", "1")], "nap"),
        ] {
            let e = Config::load_from(None, env(&vars)).unwrap_err().to_string();
            assert!(e.contains(key), "{vars:?}: {e}");
        }
    }

    #[test]
    fn the_store_is_sqlite_by_default_and_bad_store_keys_are_named_without_the_password() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert!(!c.store.is_postgres() && c.store.url.is_empty());
        assert_eq!((c.store.pool_size, c.store.lease_retry), (16, Duration::from_secs(1)));
        let url = "postgresql://sandpit:pw@db.example/sandpit?sslmode=require";
        let c = Config::load_from(None, env(&[("SANDPIT__STORE__URL", url)])).unwrap();
        assert!(c.store.is_postgres());
        for (vars, key) in [
            (vec![("SANDPIT__STORE__URL", "mysql://u:secret@db/x")], "store.url"),
            (vec![("SANDPIT__STORE__POOL_SIZE", "0")], "store.pool_size"),
            (vec![("SANDPIT__STORE__POOL_SIZE", "5000")], "store.pool_size"),
            (vec![("SANDPIT__STORE__LEASE_RETRY", "10ms")], "store.lease_retry"),
            (vec![("SANDPIT__STORE__LEASE_RETRY", "5m")], "store.lease_retry"),
            (vec![("SANDPIT__STORE__LEASE", "1s")], "lease"),
        ] {
            let e = Config::load_from(None, env(&vars)).unwrap_err().to_string();
            assert!(e.contains(key), "{vars:?}: {e}");
            assert!(!e.contains("secret"), "the password is not repeated: {e}");
        }
    }

    #[test]
    fn a_swarm_is_reached_by_local_sockets_or_by_tcp_with_tls_both_ways() {
        assert!(Config::load_from(None, env(&[])).unwrap().swarm.is_none(), "one engine by default");
        let pem = file("not checked here");
        let p = pem.path().display().to_string();
        let swarm = |manager: &str, node: &str, tls: &str| {
            format!("[swarm]\nmanager = \"{manager}\"\n{tls}[[swarm.nodes]]\nname = \"n1\"\nhost = \"{node}\"\n")
        };
        let all = format!("tls_ca = \"{p}\"\ntls_cert = \"{p}\"\ntls_key = \"{p}\"\n");
        let ok = file(&swarm("unix:///run/m.sock", "tcp://10.0.0.2:2376", &all));
        let c = Config::load_from(Some(ok.path()), env(&[])).unwrap();
        let sw = c.swarm.unwrap();
        assert_eq!((sw.node_check, sw.start_timeout), (Duration::from_secs(1), Duration::from_secs(120)));
        assert!(sw.tls().is_some());
        assert!(sw.egress_address.is_none() && sw.egress_sources().is_empty(), "no relays unless asked for");
        let relays = file(&swarm(
            "unix:///run/m.sock",
            "unix:///run/n1.sock",
            "egress_address = \"10.0.0.9\"\negress_sources = [\"10.0.0.0/24\", \"10.1.0.0/16\"]\n",
        ));
        let sw = Config::load_from(Some(relays.path()), env(&[])).unwrap().swarm.unwrap();
        assert_eq!(sw.egress_sources().len(), 2);
        for (body, key) in [
            (swarm("tcp://10.0.0.1:2376", "unix:///run/n1.sock", ""), "swarm.manager"),
            (swarm("unix:///run/m.sock", "tcp://10.0.0.2:2376", ""), "swarm.nodes[0].host"),
            (swarm("unix:///run/m.sock", "http://10.0.0.2:2375", &all), "swarm.nodes[0].host"),
            (swarm("unix:///run/m.sock", "unix:///run/n1.sock", &format!("tls_ca = \"{p}\"\n")), "swarm.tls_cert"),
            (
                swarm(
                    "unix:///run/m.sock",
                    "unix:///run/n1.sock",
                    "tls_ca = \"/nonexistent\"\ntls_cert = \"/x\"\ntls_key = \"/y\"\n",
                ),
                "swarm.tls_ca",
            ),
            ("[swarm]\nmanager = \"unix:///run/m.sock\"\nnodes = []\n".to_string(), "swarm.nodes"),
            (
                swarm("unix:///run/m.sock", "unix:///run/n1.sock", "egress_address = \"10.0.0.9\"\n"),
                "swarm.egress_sources",
            ),
            (
                swarm("unix:///run/m.sock", "unix:///run/n1.sock", "egress_sources = [\"10.0.0.0/24\"]\n"),
                "swarm.egress_address",
            ),
            (
                swarm(
                    "unix:///run/m.sock",
                    "unix:///run/n1.sock",
                    "egress_address = \"10.0.0.9\"\negress_sources = [\"10.0.0.1/24\"]\n",
                ),
                "swarm.egress_sources[0]",
            ),
            (
                swarm(
                    "unix:///run/m.sock",
                    "unix:///run/n1.sock",
                    "egress_address = \"127.0.0.1\"\negress_sources = [\"10.0.0.0/24\"]\n",
                ),
                "swarm.egress_address",
            ),
        ] {
            let f = file(&body);
            let e = Config::load_from(Some(f.path()), env(&[])).unwrap_err().to_string();
            assert!(e.contains(key), "{body}: {e}");
        }
    }

    #[test]
    fn example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/sandpit.example.toml");
        Config::load_from(Some(&path), env(&[])).unwrap();
    }

    // ---- property tests: whatever the file and environment say, loading
    // never panics; an accepted config is safe and usable; a refusal names
    // the file and the key.

    use proptest::prelude::*;

    use sandpit_core::testing::{apply, nasty_string, quoted, toml_value, Edit};

    /// What a key holds, to pick values of the wrong kind for it.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Kind {
        Duration,
        U8,
        U16,
        Classification,
        Addr,
        Str,
        LogFormat,
        Cidr,
    }

    /// Every scalar key: its table (`""` at the top), name and kind.
    const KEYS: [(&str, &str, Kind); 23] = [
        ("", "listen", Kind::Addr),
        ("", "data_dir", Kind::Str),
        ("", "profiles_dir", Kind::Str),
        ("", "max_classification", Kind::Classification),
        ("network", "subnet_pool", Kind::Cidr),
        ("network", "subnet_prefix", Kind::U8),
        ("network", "egress_port", Kind::U16),
        ("docker", "node", Kind::Str),
        ("docker", "timeout", Kind::Duration),
        ("lifecycle", "expiry_warning", Kind::Duration),
        ("lifecycle", "reconcile_interval", Kind::Duration),
        ("lifecycle", "orphan_grace", Kind::Duration),
        ("lifecycle", "shutdown_grace", Kind::Duration),
        ("lifecycle", "exec_timeout", Kind::Duration),
        ("sandbox", "user", Kind::Str),
        ("log", "format", Kind::LogFormat),
        ("log", "filter", Kind::Str),
        ("", "allow_insecure_listen", Kind::Str),
        ("audit", "checkpoint_interval", Kind::Duration),
        ("audit", "key_name", Kind::Str),
        ("audit", "origin", Kind::Str),
        ("dashboard", "listen", Kind::Addr),
        ("dashboard", "session_ttl", Kind::Duration),
    ];

    /// A value `kind` cannot hold.
    fn wrong_value(kind: Kind) -> BoxedStrategy<String> {
        let containers = prop::sample::select(vec!["[]", "[1]", "{}", "{ a = 1 }"]).prop_map(String::from);
        let junk = "[a-z ]{0,8}".prop_map(|s| quoted(&format!("{s}!")));
        match kind {
            Kind::Duration => prop_oneof![
                junk,
                containers,
                any::<i64>().prop_map(|n| n.to_string()),
                Just("\"99999999999999999999999s\"".to_string()),
            ]
            .boxed(),
            Kind::U8 => {
                prop_oneof![junk, containers, prop_oneof![256i64..100_000, i64::MIN..0].prop_map(|n| n.to_string())]
                    .boxed()
            }
            Kind::U16 => prop_oneof![
                junk,
                containers,
                prop_oneof![65_536i64..10_000_000, i64::MIN..0].prop_map(|n| n.to_string())
            ]
            .boxed(),
            Kind::Classification | Kind::Addr | Kind::LogFormat => prop_oneof![junk, containers].boxed(),
            Kind::Str | Kind::Cidr => containers.boxed(),
        }
    }

    /// A value for `kind`, often right, sometimes edgy.
    fn value_for(kind: Kind) -> BoxedStrategy<String> {
        let right = match kind {
            Kind::Duration => (
                prop_oneof![0u64..1000, any::<u64>(), Just(3_650_000u64)],
                prop::sample::select(vec!["s", "m", "d", "y", "ns"]),
            )
                .prop_map(|(n, u)| format!("\"{n}{u}\""))
                .boxed(),
            Kind::U8 => (0u32..=40).prop_map(|n| n.to_string()).boxed(),
            Kind::U16 => prop_oneof![Just(0u32), 1000u32..=65_535].prop_map(|n| n.to_string()).boxed(),
            Kind::Classification => prop::sample::select(vec!["\"OFFICIAL\"", "\"SECRET\"", "\"top-secret\""])
                .prop_map(String::from)
                .boxed(),
            Kind::Addr => prop::sample::select(vec![
                "\"127.0.0.1:0\"",
                "\"0.0.0.0:50051\"",
                "\"[::1]:50051\"",
                "\"[::]:1\"",
                "\"10.0.0.1:65535\"",
            ])
            .prop_map(String::from)
            .boxed(),
            Kind::LogFormat => prop::sample::select(vec!["\"json\"", "\"text\""]).prop_map(String::from).boxed(),
            Kind::Cidr => prop::sample::select(vec![
                "\"0.0.0.0/0\"",
                "\"10.0.0.0/8\"",
                "\"10.213.0.0/16\"",
                "\"10.213.0.0/29\"",
                "\"10.213.0.1/16\"",
                "\"255.255.255.248/29\"",
                "\"::/0\"",
            ])
            .prop_map(String::from)
            .boxed(),
            Kind::Str => nasty_string().prop_map(|s| quoted(&s)).boxed(),
        };
        prop_oneof![4 => right, 1 => wrong_value(kind), 1 => toml_value()].boxed()
    }

    fn example() -> &'static str {
        static EXAMPLE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        EXAMPLE.get_or_init(|| {
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/sandpit.example.toml"))
                .unwrap()
        })
    }

    /// Lines of a config file: known keys, tables, junk.
    fn config_line() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(KEYS.to_vec())
                .prop_flat_map(|(_, k, kind)| value_for(kind).prop_map(move |v| format!("{k} = {v}"))),
            2 => prop::sample::select(vec![
                "[network]", "[docker]", "[lifecycle]", "[sandbox]", "[log]", "[labels]", "[tls]", "[[identities]]", "[audit]",
                "[[datasets]]", "[identities]", "[nope]", "roles = [\"requester\"]", "roles = [\"root\"]",
                "token_sha256 = \"00\"", "cert_subject = \"CN=x\"", "path = \"/\"", "\"sandpit.managed\" = \"false\"",
            ])
            .prop_map(String::from),
            1 => nasty_string(),
        ]
    }

    fn config_edit() -> impl Strategy<Value = Edit> {
        let set = prop::sample::select(KEYS.to_vec())
            .prop_flat_map(|(_, k, kind)| value_for(kind).prop_map(move |v| Edit::Set(k, v)));
        sandpit_core::testing::edit(set, config_line())
    }

    /// An environment variable or two, as an operator's unit file may set them.
    fn env_vars() -> impl Strategy<Value = Vec<(String, String)>> {
        let var = prop_oneof![
            3 => prop::sample::select(KEYS.to_vec()).prop_flat_map(|(table, k, kind)| {
                let name = if table.is_empty() { k.to_uppercase() } else { format!("{table}__{k}").to_uppercase() };
                prop_oneof![value_for(kind).prop_map(|v| v.trim_matches('"').to_string()), nasty_string()]
                    .prop_map(move |v| (format!("SANDPIT__{name}"), v))
            }),
            1 => ("SANDPIT__[A-Z_]{1,12}", nasty_string()),
        ];
        prop::collection::vec(var, 0..3)
    }

    /// Whether a load error says where: a key (as the `config` crate quotes
    /// it, or as `validate` prefixes it) or a line.
    fn names_key_or_line(e: &str) -> bool {
        let after_file = e.split(".toml: ").nth(1).unwrap_or(e);
        let prefix = after_file.split(": ").next().unwrap_or_default();
        e.contains("key `")
            || e.contains("field `")
            || e.contains("field \"")
            || after_file.starts_with("line ")
            || (!prefix.is_empty()
                && prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.[]".contains(c)))
    }

    /// What every accepted config must satisfy, whatever it was given.
    fn check_accepted(c: &Config) -> Result<(), TestCaseError> {
        prop_assert!(c.listen.ip().is_loopback() || c.tls.is_some() || c.allow_insecure_listen);
        let (uid, gid) = sandbox_user(&c.sandbox.user).unwrap();
        prop_assert!(uid != 0 && gid != 0, "user {}", c.sandbox.user);
        prop_assert!(!c.lifecycle.reconcile_interval.is_zero());
        for id in &c.identities {
            prop_assert!(!id.roles.is_empty() && (id.token_sha256.is_some() || id.cert_subject.is_some()));
        }
        // The daemon can use what it was given: the subnet pool carves
        // subnets, and every duration can be added to the clocks.
        let pool = sandpit_docker::subnet::Pool::new(&c.network.subnet_pool, c.network.subnet_prefix);
        prop_assert!(pool.is_ok());
        let pool = pool.unwrap();
        let last = pool.subnet(pool.len() - 1);
        prop_assert_eq!(pool.index_of(&last), Some(pool.len() - 1));
        let l = &c.lifecycle;
        prop_assert!(c.audit.checkpoint_every >= 1 && !c.audit.checkpoint_interval.is_zero());
        prop_assert!(!c.signing_key().starts_with(c.checkpoint_dir()), "the private key would be shipped");
        for d in [
            c.docker.timeout,
            l.expiry_warning,
            l.reconcile_interval,
            l.orphan_grace,
            l.shutdown_grace,
            l.exec_timeout,
            c.audit.checkpoint_interval,
        ] {
            prop_assert!(std::time::Instant::now().checked_add(d).is_some(), "{:?} overflows the clock", d);
            prop_assert!(std::time::SystemTime::now().checked_add(d).is_some(), "{:?} overflows the clock", d);
        }
        Ok(())
    }

    proptest! {
        /// The example config with one to four edits, and an environment
        /// variable or two: loads into a safe, usable config or fails
        /// naming the file.
        #[test]
        fn edited_configs_load_safely_or_name_the_file(
            edits in prop::collection::vec(config_edit(), 1..5),
            env in env_vars(),
        ) {
            let content = edits.iter().fold(example().to_string(), |c, e| apply(&c, e));
            let f = file(&content);
            match Config::load_from(Some(f.path()), env) {
                Ok(c) => check_accepted(&c)?,
                Err(e) => {
                    let e = e.to_string();
                    prop_assert!(e.contains(&f.path().display().to_string()), "{}", e);
                    prop_assert!(names_key_or_line(&e), "{}", e);
                }
            }
        }

        /// The subnet pool and prefix together: usable, or refused naming them.
        #[test]
        fn subnet_pools_are_usable_or_refused(pool in value_for(Kind::Cidr), prefix in value_for(Kind::U8)) {
            let f = file(&format!("[network]\nsubnet_pool = {pool}\nsubnet_prefix = {prefix}\n"));
            match Config::load_from(Some(f.path()), env(&[])) {
                Ok(c) => check_accepted(&c)?,
                Err(e) => {
                    let e = e.to_string();
                    prop_assert!(e.contains("subnet_pool") || e.contains("subnet_prefix") || e.contains(": line "), "{}", e);
                }
            }
        }

        /// A value of the wrong kind for a key, in the file or in the
        /// environment: the error names the key.
        #[test]
        fn a_bad_value_names_its_key(
            (table, key, value) in prop::sample::select(KEYS.to_vec())
                .prop_filter("accepts anything a string can", |(_, _, kind)| *kind != Kind::Str)
                .prop_flat_map(|(table, key, kind)| wrong_value(kind).prop_map(move |v| (table, key, v))),
        ) {
            let header = if table.is_empty() { String::new() } else { format!("[{table}]\n") };
            let f = file(&format!("{header}{key} = {value}\n"));
            let e = Config::load_from(Some(f.path()), env(&[]));
            prop_assert!(e.is_err(), "{} = {} was accepted", key, value);
            let e = e.unwrap_err().to_string();
            prop_assert!(e.contains(&f.path().display().to_string()) && e.contains(key), "{}", e);
        }

        /// A key the daemon does not know, in any table: named.
        #[test]
        fn an_unknown_key_is_named(
            table in prop::sample::select(vec!["", "network", "docker", "lifecycle", "sandbox", "log", "tls", "[identities]"]),
            key in "[a-z][a-z_]{0,12}".prop_filter("unknown", |k| !KEYS.iter().any(|(_, known, _)| known == k)
                && !["tls", "identities", "permitted_residency", "datasets", "labels", "network", "docker",
                    "lifecycle", "sandbox", "log", "host", "cert", "key", "client_ca", "name", "team", "roles",
                    "token_sha256", "cert_subject"].contains(&k.as_str())),
        ) {
            let header = match table {
                "" => String::new(),
                "[identities]" => "[[identities]]\nname = \"a\"\nteam = \"t\"\nroles = [\"requester\"]\n".into(),
                "tls" => "[tls]\ncert = \"/c\"\nkey = \"/k\"\n".into(),
                t => format!("[{t}]\n"),
            };
            let f = file(&format!("{header}{key} = 1\n"));
            let e = Config::load_from(Some(f.path()), env(&[])).unwrap_err().to_string();
            prop_assert!(e.contains(&format!("`{key}`")) && e.contains(&f.path().display().to_string()), "{}", e);
        }
    }
}
