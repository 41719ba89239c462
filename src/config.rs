//! Daemon configuration: embedded defaults, then an optional TOML file, then
//! `SANDPIT__*` environment variables (nested keys joined by `__`). Unknown
//! keys are errors that name the key; `sandpitd` exits 64 on any of them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::policy::Classification;
use crate::time::de_duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
pub const DEFAULT_PROFILES_DIR: &str = "./sandbox-profiles";
pub const DEFAULT_NODE: &str = "local";
/// The non-root user every sandbox runs as (nobody:nogroup).
pub const DEFAULT_SANDBOX_USER: &str = "65534:65534";
/// File in the data directory holding the generated local token.
pub const LOCAL_TOKEN_FILE: &str = "local-token";
/// File in the data directory holding the address the daemon listens on.
pub const ADDR_FILE: &str = "sandpitd.addr";
/// File in the data directory holding the address metrics are served on.
pub const METRICS_ADDR_FILE: &str = "metrics.addr";
pub const ENV_PREFIX: &str = "SANDPIT";

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
    pub limits: LimitsConfig,
    pub quotas: QuotasConfig,
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
    pub roles: Vec<crate::auth::Role>,
    /// Hex SHA-256 of the bearer token.
    pub token_sha256: Option<String>,
    /// Subject of the client certificate (mutual TLS), e.g. `CN=alice, O=ONS`.
    pub cert_subject: Option<String>,
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

[sandbox]
user = "{DEFAULT_SANDBOX_USER}"

[log]
format = "text"
filter = "info"

[metrics]
enabled = true
listen = "{DEFAULT_METRICS_LISTEN}"

[limits]
max_message_bytes = 4194304
max_concurrent_calls = 128
calls_per_second = 100
burst = 200

[quotas]
sandboxes_per_team = 50
teams = {{}}
"#,
        data_dir = default_data_dir().display().to_string().replace('\\', "/"),
    )
}

/// `$XDG_DATA_HOME/sandpit`, else `~/.local/share/sandpit`, else `./sandpit-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("sandpit");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".local/share/sandpit");
    }
    PathBuf::from("./sandpit-data")
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    pub fn team_quotas(&self) -> crate::policy::admission::TeamQuotas {
        crate::policy::admission::TeamQuotas {
            default: self.quotas.sandboxes_per_team,
            teams: self.quotas.teams.clone(),
        }
    }

    /// What profile validation needs to know about this host.
    pub fn host_rules(&self) -> crate::policy::HostRules {
        crate::policy::HostRules {
            permitted_residency: self.permitted_residency.clone(),
            datasets: self.datasets.iter().map(|d| (d.name.clone(), d.classification)).collect(),
        }
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

    fn validate(&self) -> Result<(), String> {
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
                if !s.contains('=') {
                    return Err(format!("{}: '{s}' is not a subject like CN=alice, O=ONS", field("cert_subject")));
                }
                if id.cert_subject.is_some() && self.tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
                    return Err(format!(
                        "{}: needs tls.client_ca to verify client certificates",
                        field("cert_subject")
                    ));
                }
            }
        }
        crate::runtime::subnet::Pool::new(&self.network.subnet_pool, self.network.subnet_prefix)
            .map_err(|e| format!("network: {e}"))?;
        for (i, d) in self.datasets.iter().enumerate() {
            if crate::policy::admission::validate_name("name", &d.name).is_err() {
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
        let user = self.sandbox.user.trim();
        let uid = user.split(':').next().unwrap_or_default();
        if uid.is_empty() || uid == "0" || uid == "root" {
            return Err(format!("sandbox.user: '{user}' would run sandboxes as root"));
        }
        if !self.listen.ip().is_loopback() && self.tls.is_none() && !self.allow_insecure_listen {
            return Err(format!(
                "listen: {} is not a loopback address and no [tls] is configured; \
                 set tls.cert and tls.key, or allow_insecure_listen = true to accept plaintext",
                self.listen
            ));
        }
        let limits = &self.limits;
        if limits.max_message_bytes < 64 * 1024 {
            return Err("limits.max_message_bytes: must be at least 65536".into());
        }
        for (key, value) in [
            ("max_concurrent_calls", limits.max_concurrent_calls),
            ("calls_per_second", limits.calls_per_second),
            ("burst", limits.burst),
        ] {
            if value == 0 {
                return Err(format!("limits.{key}: must be at least 1"));
            }
        }
        if self.lifecycle.reconcile_interval.is_zero() {
            return Err("lifecycle.reconcile_interval: must be above zero".into());
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
        let e = Config::load_from(None, env(&[("SANDPIT__SANDBOX__USER", "0:0")])).unwrap_err().to_string();
        assert!(e.contains("sandbox.user"), "{e}");
        let f = file("[[identities]]\nname = \"a\"\nteam = \"t\"\nroles = [\"requester\"]\ntoken_sha256 = \"abc\"\n");
        let e = Config::load_from(Some(f.path()), env(&[])).unwrap_err().to_string();
        assert!(e.contains("identities[0].token_sha256"), "{e}");
        let e = Config::load_from(None, env(&[("SANDPIT__LIMITS__BURST", "0")])).unwrap_err().to_string();
        assert!(e.contains("limits.burst"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Config::load_from(None, env(&[("SANDPIT__MAX_CLASSIFICATION", "RESTRICTED")])).unwrap_err().to_string();
        assert!(e.contains("RESTRICTED"), "{e}");
        let e = Config::load_from(None, env(&[("SANDPIT__LIFECYCLE__ORPHAN_GRACE", "soon")])).unwrap_err().to_string();
        assert!(e.contains("soon"), "{e}");
        let e = Config::load_from(Some(Path::new("/nonexistent/sandpit.toml")), env(&[])).unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
    }

    #[test]
    fn example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/sandpit.example.toml");
        Config::load_from(Some(&path), env(&[])).unwrap();
    }
}
