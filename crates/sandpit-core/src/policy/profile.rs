//! Profiles: operator-written templates in `sandbox-profiles/*.toml`.
//!
//! A profile's name is its file stem. Files are parsed strictly (unknown
//! fields are errors) and then checked for impossible or unsafe claims; every
//! problem is reported with the file and the field it concerns.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::classification::Classification;
use super::size::de_size;
use crate::time::de_duration;

/// Docker refuses memory limits below 6 MiB.
pub(crate) const MIN_MEMORY: u64 = 6 << 20;
/// The init process and a shell need a few pids.
const MIN_PIDS: i64 = 8;
const MAX_CPUS: f64 = 1024.0;
/// Largest warm pool one profile may ask for.
const MAX_WARM_POOL: u32 = 64;

/// A validated profile. Serialisable so that each sandbox record keeps the
/// profile it was created with, whatever reloads happen later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub max_classification: Classification,
    pub requires_approval: bool,
    /// Refuse new sandboxes for an experiment with a risk of at least this
    /// impact overdue for review (rule risk-review-overdue); the host's own
    /// threshold applies too, the lower of the two winning.
    #[serde(default)]
    pub refuse_overdue_risk: Option<crate::register::Level>,
    pub images: Vec<String>,
    pub command: Vec<String>,
    pub resources: Resources,
    pub lifetime: Lifetime,
    pub network: Network,
    /// Datasets (by name, as declared in the daemon's config) it may mount.
    pub datasets: Vec<String>,
    pub file_transfer: FileTransfer,
    /// Ports on the sandbox's loopback a team may forward a connection to.
    /// Records written before port forwarding existed allow none.
    #[serde(default)]
    pub port_forward: PortForward,
    /// Each sandbox mounts its experiment's workspace (a volume kept across
    /// sandboxes and restarts, removed when the experiment is closed) at
    /// `/workspace`. Records written before workspaces existed have none.
    #[serde(default)]
    pub workspace: bool,
    /// Pre-provisioned sandboxes to keep ready for claims.
    pub warm_pool: u32,
    /// How strongly its sandboxes are kept from the host's kernel. Records
    /// written before isolation levels existed ran as containers.
    #[serde(default)]
    pub isolation: Isolation,
    pub source: PathBuf,
}

/// How strongly a sandbox is kept from the host's kernel, weakest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A hardened container on the host's kernel (runc): one kernel bug is one escape.
    #[default]
    Container,
    /// gVisor: the sandbox's system calls go to a kernel in user space
    /// (runsc), not to the host's.
    Gvisor,
}

impl Isolation {
    pub const ALL: [Isolation; 2] = [Isolation::Container, Isolation::Gvisor];

    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Container => "container",
            Isolation::Gvisor => "gvisor",
        }
    }

    pub fn parse(s: &str) -> Option<Isolation> {
        Isolation::ALL.into_iter().find(|i| i.as_str() == s)
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The weakest isolation the host allows for each classification
/// (`[isolation.minimum]`): an entry holds for its classification and every
/// one above it, up to the next entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MinimumIsolation(pub BTreeMap<Classification, Isolation>);

impl MinimumIsolation {
    /// The weakest isolation a sandbox at `c` may have.
    pub fn at(&self, c: Classification) -> Isolation {
        self.0.range(..=c).map(|(_, i)| *i).max().unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub cpus: f64,
    #[serde(deserialize_with = "de_size")]
    pub memory: u64,
    pub pids: i64,
    #[serde(deserialize_with = "de_size")]
    pub tmpfs: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Resources { cpus: 1.0, memory: 512 << 20, pids: 256, tmpfs: 64 << 20 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lifetime {
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub default_ttl: Duration,
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub max_ttl: Duration,
    /// Longest a sandbox may live from creation, extensions included.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub max_lifetime: Duration,
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

impl Default for Lifetime {
    fn default() -> Self {
        Lifetime {
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(8 * 3600),
            max_lifetime: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// How a sandbox reaches the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Loopback only.
    None,
    /// Its own internal bridge network; reaches nothing, not even other sandboxes.
    Isolated,
    /// Isolated, plus the daemon's egress proxy to the listed destinations.
    Allowlist,
    /// A normal bridge network with outbound access; OFFICIAL only.
    Open,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Isolated => "isolated",
            NetworkMode::Allowlist => "allowlist",
            NetworkMode::Open => "open",
        }
    }

    /// Whether the sandbox gets a network of its own.
    pub fn has_network(self) -> bool {
        self != NetworkMode::None
    }
}

/// A destination the egress proxy lets an allowlist sandbox reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    pub port: u16,
    /// Where the destination keeps data, e.g. `UK`.
    pub residency: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub mode: NetworkMode,
    #[serde(default)]
    pub allow: Vec<Destination>,
}

impl Default for Network {
    fn default() -> Self {
        Network { mode: NetworkMode::None, allow: Vec::new() }
    }
}

/// Whether files may be copied into and out of sandboxes of this profile,
/// and how much output an exec may bring out (exec output is a transfer too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTransfer {
    pub copy_in: bool,
    pub copy_out: bool,
    /// Most stdout and stderr bytes, together, one exec may return; `None`: no cap.
    #[serde(default)]
    pub max_exec_output: Option<u64>,
}

/// Ports a team may reach, through the daemon, on a sandbox's own loopback
/// (a notebook, a small web app). Empty: none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// The exec output cap of a profile that refuses copy-out and names no cap
/// of its own: enough for any command's report, too little to carry data out.
pub const DEFAULT_EXEC_OUTPUT_WITHOUT_COPY_OUT: u64 = 1 << 20;

/// What profile validation needs to know about the host.
#[derive(Debug, Clone)]
pub struct HostRules {
    /// Residencies allowlist destinations may have above OFFICIAL.
    pub permitted_residency: Vec<String>,
    /// Declared datasets: name and classification.
    pub datasets: Vec<(String, Classification)>,
    /// The weakest isolation allowed per classification.
    pub minimum_isolation: MinimumIsolation,
}

impl Default for HostRules {
    fn default() -> Self {
        HostRules {
            permitted_residency: vec!["UK".into()],
            datasets: Vec::new(),
            minimum_isolation: MinimumIsolation::default(),
        }
    }
}

/// What an operator writes; turned into a [`Profile`] by [`Profile::parse`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[serde(default)]
    description: String,
    max_classification: Classification,
    #[serde(default)]
    requires_approval: bool,
    #[serde(default)]
    refuse_overdue_risk: Option<crate::register::Level>,
    images: Vec<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    resources: Resources,
    #[serde(default)]
    lifetime: Lifetime,
    #[serde(default)]
    network: Network,
    #[serde(default)]
    datasets: Vec<String>,
    file_transfer: Option<FileTransferFile>,
    #[serde(default)]
    port_forward: PortForward,
    #[serde(default)]
    workspace: bool,
    #[serde(default)]
    warm_pool: u32,
    #[serde(default)]
    isolation: Isolation,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTransferFile {
    copy_in: Option<bool>,
    copy_out: Option<bool>,
    #[serde(default, deserialize_with = "de_opt_size")]
    max_exec_output: Option<u64>,
}

fn de_opt_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de_size(d).map(Some)
}

/// One problem with one profile file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileError {
    pub file: PathBuf,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.field, self.reason)
        }
    }
}

impl Profile {
    /// Whether `other` promises what this one does: equal in everything
    /// but the file each was read from (daemons sharing a store may read
    /// one profile from directories of their own).
    pub fn same_policy(&self, other: &Profile) -> bool {
        if self.source == other.source {
            return self == other;
        }
        Profile { source: other.source.clone(), ..self.clone() } == *other
    }

    /// Parses and validates one profile. The name is the file stem.
    pub fn parse(file: &Path, content: &str) -> Result<Profile, Vec<ProfileError>> {
        Self::parse_with(file, content, &HostRules::default())
    }

    /// As [`Profile::parse`], checking datasets and residencies against the host's rules.
    pub fn parse_with(file: &Path, content: &str, host: &HostRules) -> Result<Profile, Vec<ProfileError>> {
        let err =
            |field: &str, reason: String| ProfileError { file: file.to_path_buf(), field: field.to_string(), reason };
        let name = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        let raw: ProfileFile = toml::from_str(content).map_err(|e| {
            let line = e.span().map(|s| content[..s.start].matches('\n').count() + 1);
            let field = line.map(|l| format!("line {l}")).unwrap_or_default();
            vec![err(&field, e.message().trim().to_string())]
        })?;

        let mut errors = Vec::new();
        if !valid_name(&name) {
            errors.push(err(
                "name",
                format!("file stem '{name}' must be 1-63 of a-z, 0-9 and '-', starting with a letter or digit"),
            ));
        }
        if raw.images.is_empty() {
            errors.push(err("images", "at least one image must be allowed".into()));
        }
        for (i, image) in raw.images.iter().enumerate() {
            if let Err(why) = image_entry(image, i == 0) {
                errors.push(err(&format!("images[{i}]"), why));
            }
        }
        if raw.command.iter().any(|a| a.contains('\0')) {
            errors.push(err("command", "arguments must not contain NUL".into()));
        }
        let r = &raw.resources;
        if !(r.cpus > 0.0 && r.cpus <= MAX_CPUS) {
            errors.push(err("resources.cpus", format!("{} must be above 0 and at most {MAX_CPUS}", r.cpus)));
        }
        if r.memory < MIN_MEMORY {
            errors.push(err("resources.memory", format!("{} bytes is below Docker's minimum of 6MiB", r.memory)));
        }
        if r.pids < MIN_PIDS {
            errors.push(err("resources.pids", format!("{} is below the minimum of {MIN_PIDS}", r.pids)));
        }
        if r.tmpfs == 0 {
            errors.push(err("resources.tmpfs", "scratch space must be above 0".into()));
        }
        let l = &raw.lifetime;
        if l.default_ttl.is_zero() {
            errors.push(err("lifetime.default_ttl", "must be above 0".into()));
        }
        if l.default_ttl > l.max_ttl {
            errors.push(err("lifetime.default_ttl", "must not exceed lifetime.max_ttl".into()));
        }
        if l.max_ttl > l.max_lifetime {
            errors.push(err("lifetime.max_ttl", "must not exceed lifetime.max_lifetime".into()));
        }
        if l.max_lifetime > crate::time::LONGEST {
            errors.push(err("lifetime.max_lifetime", "must be at most 100 years (36500d)".into()));
        }
        let net = &raw.network;
        if net.mode == NetworkMode::Open && raw.max_classification > Classification::Official {
            errors.push(err(
                "network.mode",
                format!("'open' network is only for OFFICIAL profiles, not {}", raw.max_classification),
            ));
        }
        match (net.mode, net.allow.is_empty()) {
            (NetworkMode::Allowlist, true) => {
                errors.push(err("network.allow", "an allowlist profile must list at least one destination".into()))
            }
            (NetworkMode::None | NetworkMode::Isolated | NetworkMode::Open, false) => errors.push(err(
                "network.allow",
                format!("destinations are only used with mode 'allowlist', not '{}'", net.mode.as_str()),
            )),
            _ => {}
        }
        for (i, d) in net.allow.iter().enumerate() {
            let field = |f: &str| format!("network.allow[{i}].{f}");
            // The same parser the egress proxy matches requests with, so an
            // entry never silently matches nothing.
            if crate::egress::addr::Host::parse(&d.host).is_none() {
                errors.push(err(&field("host"), format!("'{}' is not a host name or address", d.host)));
            }
            if d.port == 0 {
                errors.push(err(&field("port"), "must be 1-65535".into()));
            }
            if d.residency.trim().is_empty() {
                errors.push(err(&field("residency"), "must say where the destination keeps data, e.g. UK".into()));
            } else if raw.max_classification > Classification::Official
                && !host.permitted_residency.iter().any(|r| r.eq_ignore_ascii_case(d.residency.trim()))
            {
                errors.push(err(
                    &field("residency"),
                    format!(
                        "'{}' is not a permitted residency ({}) for a profile that carries {}",
                        d.residency,
                        host.permitted_residency.join(", "),
                        raw.max_classification
                    ),
                ));
            }
        }
        for (i, name) in raw.datasets.iter().enumerate() {
            if !host.datasets.iter().any(|(n, _)| n == name) {
                errors.push(err(
                    &format!("datasets[{i}]"),
                    format!("'{name}' is not a dataset declared in the daemon's config"),
                ));
            }
        }
        if raw.workspace && raw.warm_pool > 0 {
            errors.push(err(
                "workspace",
                "a workspace belongs to an experiment, and warm sandboxes have none until claimed: set warm_pool = 0"
                    .into(),
            ));
        }
        if raw.warm_pool > MAX_WARM_POOL {
            errors.push(err(
                "warm_pool",
                format!("{} is above the most a pool may hold, {MAX_WARM_POOL}", raw.warm_pool),
            ));
        }
        // Copy-out is refused by default above OFFICIAL; copy-in allowed by
        // default. Where copy-out is refused, exec output is capped unless
        // the profile says otherwise, or refusing copy-out would mean nothing.
        let ft = raw.file_transfer.as_ref();
        let copy_out = ft.and_then(|f| f.copy_out).unwrap_or(raw.max_classification == Classification::Official);
        let max_exec_output =
            ft.and_then(|f| f.max_exec_output).or((!copy_out).then_some(DEFAULT_EXEC_OUTPUT_WITHOUT_COPY_OUT));
        if max_exec_output == Some(0) {
            errors.push(err(
                "file_transfer.max_exec_output",
                "must be above 0 (a command's exit code comes with its output)".into(),
            ));
        }
        let required = host.minimum_isolation.at(raw.max_classification);
        if raw.isolation < required {
            errors.push(err(
                "isolation",
                format!(
                    "'{}' is below the isolation this host requires for {} ('{required}', isolation.minimum; \
                     rule isolation-classification): set isolation = \"{required}\" or lower max_classification",
                    raw.isolation, raw.max_classification
                ),
            ));
        }
        let file_transfer =
            FileTransfer { copy_in: ft.and_then(|f| f.copy_in).unwrap_or(true), copy_out, max_exec_output };
        // A forwarded connection carries data out as a copy-out does.
        if !raw.port_forward.ports.is_empty() && !copy_out {
            errors.push(err(
                "port_forward.ports",
                "a forwarded connection carries data out of the sandbox: it needs file_transfer.copy_out".into(),
            ));
        }
        for (i, port) in raw.port_forward.ports.iter().enumerate() {
            if *port == 0 || raw.port_forward.ports[..i].contains(port) {
                errors.push(err(
                    &format!("port_forward.ports[{i}]"),
                    format!("{port} must be a port from 1 to 65535, once"),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Profile {
            name,
            description: raw.description,
            max_classification: raw.max_classification,
            requires_approval: raw.requires_approval,
            refuse_overdue_risk: raw.refuse_overdue_risk,
            images: raw.images,
            command: raw.command,
            resources: raw.resources,
            lifetime: raw.lifetime,
            network: raw.network,
            datasets: raw.datasets,
            file_transfer,
            port_forward: raw.port_forward,
            workspace: raw.workspace,
            warm_pool: raw.warm_pool,
            isolation: raw.isolation,
            source: file.to_path_buf(),
        })
    }

    /// The image used when a request names none.
    pub fn default_image(&self) -> &str {
        &self.images[0]
    }

    /// Whether `image` is one this profile allows: an entry exactly, or an
    /// image in a repository an entry names as `REPOSITORY/*`.
    pub fn allows_image(&self, image: &str) -> bool {
        self.images.iter().any(|entry| match entry.strip_suffix("/*") {
            Some(repo) => image.strip_prefix(repo).is_some_and(|rest| rest.len() > 1 && rest.starts_with('/')),
            None => entry == image,
        })
    }
}

/// Checks one `images` entry: an image reference (`name[:tag]`, or
/// `name@sha256:DIGEST` pinned to one build), or `REPOSITORY/*` for any image
/// under a repository (a registry's path the operator trusts). The first
/// entry is the default image, so it cannot be a pattern.
fn image_entry(image: &str, first: bool) -> std::result::Result<(), String> {
    if image.trim().is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("'{image}' is not an image reference"));
    }
    let pattern = image.strip_suffix("/*");
    if let Some(repo) = pattern {
        if first {
            return Err(format!("'{image}' is a pattern; the first image is the default and must name one image"));
        }
        if repo.is_empty() || repo.contains('*') || repo.contains('@') || repo.contains(':') && !repo.contains('/') {
            return Err(format!("'{image}' is not a repository pattern (REPOSITORY/*)"));
        }
    } else if image.contains('*') {
        return Err(format!("'{image}': '*' is only allowed as a whole last path element (REPOSITORY/*)"));
    }
    if let Some((_, digest)) = image.split_once('@') {
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("'{image}': a digest is sha256: and 64 lowercase hex digits"));
        }
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Every profile in a directory, by name.
#[derive(Debug, Clone, Default)]
pub struct ProfileSet {
    profiles: BTreeMap<String, Profile>,
}

impl ProfileSet {
    /// Loads every `*.toml` in `dir`. Any invalid file fails the whole set,
    /// with every error of every file reported.
    pub fn load_dir(dir: &Path) -> Result<ProfileSet, Vec<ProfileError>> {
        Self::load_dir_with(dir, &HostRules::default())
    }

    /// As [`ProfileSet::load_dir`], validating against the host's rules.
    pub fn load_dir_with(dir: &Path, host: &HostRules) -> Result<ProfileSet, Vec<ProfileError>> {
        let dir_err = |reason: String| vec![ProfileError { file: dir.to_path_buf(), field: String::new(), reason }];
        let entries = std::fs::read_dir(dir).map_err(|e| dir_err(format!("cannot read profiles directory: {e}")))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        let mut set = ProfileSet::default();
        let mut errors = Vec::new();
        for path in paths {
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| dir_err(format!("cannot read {}: {e}", path.display())))
                .and_then(|content| Profile::parse_with(&path, &content, host));
            match parsed {
                Ok(p) => {
                    set.profiles.insert(p.name.clone(), p);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if set.profiles.is_empty() {
            return Err(dir_err("no *.toml profiles found".into()));
        }
        Ok(set)
    }

    pub fn from_profiles(profiles: impl IntoIterator<Item = Profile>) -> ProfileSet {
        ProfileSet { profiles: profiles.into_iter().map(|p| (p.name.clone(), p)).collect() }
    }

    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.values()
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        description = "test"
        max_classification = "OFFICIAL"
        images = ["sandpit/base:local"]
        command = ["sleep", "infinity"]
        [resources]
        cpus = 0.5
        memory = "256MiB"
        pids = 64
        tmpfs = "16MiB"
        [lifetime]
        default_ttl = "10m"
        max_ttl = "1h"
        max_lifetime = "4h"
        [network]
        mode = "none"
    "#;

    fn parse(content: &str) -> Result<Profile, Vec<ProfileError>> {
        Profile::parse(Path::new("/p/official-none.toml"), content)
    }

    #[test]
    fn parses_a_full_profile() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.name, "official-none");
        assert_eq!(p.max_classification, Classification::Official);
        assert_eq!(p.resources.memory, 256 << 20);
        assert_eq!(p.lifetime.max_ttl, Duration::from_secs(3600));
        assert_eq!(p.default_image(), "sandpit/base:local");
    }

    #[test]
    fn the_same_policy_read_from_another_directory_is_the_same_profile() {
        let here = parse(GOOD).unwrap();
        let there = Profile::parse(Path::new("/elsewhere/official-none.toml"), GOOD).unwrap();
        assert!(here.same_policy(&there) && there.same_policy(&here) && here.same_policy(&here));
        let changed = Profile::parse(Path::new("/elsewhere/official-none.toml"), &GOOD.replace("4h", "3h")).unwrap();
        assert!(!here.same_policy(&changed) && !there.same_policy(&changed));
        let moved_and_changed = Profile { warm_pool: 3, ..there.clone() };
        assert!(!there.same_policy(&moved_and_changed), "same file, other content");
    }

    #[test]
    fn defaults_fill_optional_tables() {
        let p = parse("max_classification = \"OFFICIAL\"\nimages = [\"x\"]\n").unwrap();
        assert_eq!(p.resources, Resources::default());
        assert_eq!(p.lifetime, Lifetime::default());
        assert_eq!(p.network, Network::default());
        assert_eq!(p.file_transfer, FileTransfer { copy_in: true, copy_out: true, max_exec_output: None });
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let e = parse("max_classification = \"OFFICIAL\"\nimages = [\"x\"]\nprivileged = true\n").unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].field, "line 3");
        assert!(e[0].reason.contains("privileged"), "{}", e[0].reason);
        assert!(e[0].to_string().starts_with("/p/official-none.toml: line 3:"));
    }

    #[test]
    fn impossible_limits_are_all_reported() {
        let bad = GOOD
            .replace("cpus = 0.5", "cpus = 0.0")
            .replace("\"256MiB\"", "\"1MiB\"")
            .replace("pids = 64", "pids = 1")
            .replace("default_ttl = \"10m\"", "default_ttl = \"2h\"")
            .replace("max_lifetime = \"4h\"", "max_lifetime = \"30m\"");
        let fields: Vec<String> = parse(&bad).unwrap_err().into_iter().map(|e| e.field).collect();
        for f in ["resources.cpus", "resources.memory", "resources.pids", "lifetime.default_ttl", "lifetime.max_ttl"] {
            assert!(fields.contains(&f.to_string()), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn lifetimes_longer_than_a_century_are_refused() {
        // Once accepted: sandboxes then got deadlines past the year 9999 (their
        // labels could not be written) or past the end of the clock (admission panicked).
        for long in ["101y", "10000y", "300000000000y"] {
            let bad = GOOD.replace("max_lifetime = \"4h\"", &format!("max_lifetime = \"{long}\""));
            assert_eq!(fields(parse(&bad).unwrap_err()), ["lifetime.max_lifetime"], "{long}");
        }
        assert!(parse(&GOOD.replace("max_lifetime = \"4h\"", "max_lifetime = \"36500d\"")).is_ok());
    }

    fn fields(e: Vec<ProfileError>) -> Vec<String> {
        e.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn unsafe_network_claims_are_refused() {
        let open_sensitive = GOOD
            .replace("max_classification = \"OFFICIAL\"", "max_classification = \"OFFICIAL-SENSITIVE\"")
            .replace("mode = \"none\"", "mode = \"open\"");
        assert_eq!(fields(parse(&open_sensitive).unwrap_err()), ["network.mode"]);
        let allow = |class: &str, residency: &str| {
            GOOD.replace("max_classification = \"OFFICIAL\"", &format!("max_classification = \"{class}\""))
                .replace(
                    "mode = \"none\"",
                    &format!("mode = \"allowlist\"\n[[network.allow]]\nhost = \"api.example.gov.uk\"\nport = 443\nresidency = \"{residency}\""),
                )
        };
        assert!(parse(&allow("OFFICIAL-SENSITIVE", "UK")).is_ok());
        assert!(parse(&allow("OFFICIAL", "US")).is_ok(), "residency is not restricted at OFFICIAL");
        let e = parse(&allow("OFFICIAL-SENSITIVE", "US")).unwrap_err();
        assert_eq!(e[0].field, "network.allow[0].residency");
        assert!(e[0].reason.contains("US") && e[0].reason.contains("UK"), "{}", e[0].reason);
        let empty = GOOD.replace("mode = \"none\"", "mode = \"allowlist\"");
        assert_eq!(fields(parse(&empty).unwrap_err()), ["network.allow"]);
        let stray = allow("OFFICIAL", "UK").replace("mode = \"allowlist\"", "mode = \"isolated\"");
        assert_eq!(fields(parse(&stray).unwrap_err()), ["network.allow"]);
        let bad_port = allow("OFFICIAL", "UK").replace("port = 443", "port = 0");
        assert_eq!(fields(parse(&bad_port).unwrap_err()), ["network.allow[0].port"]);
        let e = parse(&GOOD.replace("mode = \"none\"", "mode = \"bridge\"")).unwrap_err();
        assert!(e[0].reason.contains("unknown variant"), "{}", e[0].reason);
    }

    #[test]
    fn minimum_isolation_holds_from_its_classification_up() {
        let m = MinimumIsolation(
            [(Classification::Official, Isolation::Container), (Classification::OfficialSensitive, Isolation::Gvisor)]
                .into(),
        );
        assert_eq!(m.at(Classification::Official), Isolation::Container);
        assert_eq!(m.at(Classification::OfficialSensitive), Isolation::Gvisor);
        assert_eq!(m.at(Classification::TopSecret), Isolation::Gvisor);
        // A weaker entry above a stronger one does not lower it.
        let m = MinimumIsolation(
            [(Classification::Official, Isolation::Gvisor), (Classification::Secret, Isolation::Container)].into(),
        );
        assert_eq!(m.at(Classification::Secret), Isolation::Gvisor);
        assert_eq!(MinimumIsolation::default().at(Classification::TopSecret), Isolation::Container);
    }

    #[test]
    fn isolation_is_parsed_and_checked_against_the_hosts_minimum() {
        let p = Profile::parse(Path::new("p.toml"), GOOD).unwrap();
        assert_eq!(p.isolation, Isolation::Container);
        let p = Profile::parse(Path::new("p.toml"), &format!("isolation = \"gvisor\"\n{GOOD}")).unwrap();
        assert_eq!(p.isolation, Isolation::Gvisor);
        let e = Profile::parse(Path::new("p.toml"), &format!("isolation = \"kata\"\n{GOOD}")).unwrap_err();
        assert!(e[0].to_string().contains("unknown variant `kata`"), "{}", e[0]);
        let host = HostRules {
            minimum_isolation: MinimumIsolation([(Classification::OfficialSensitive, Isolation::Gvisor)].into()),
            ..Default::default()
        };
        let sensitive =
            GOOD.replace("max_classification = \"OFFICIAL\"", "max_classification = \"OFFICIAL-SENSITIVE\"");
        assert_ne!(sensitive, GOOD);
        let e = Profile::parse_with(Path::new("p.toml"), &sensitive, &host).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].field, "isolation");
        assert!(e[0].reason.contains("isolation-classification") && e[0].reason.contains("'gvisor'"), "{}", e[0]);
        assert!(
            Profile::parse_with(Path::new("p.toml"), &format!("isolation = \"gvisor\"\n{sensitive}"), &host).is_ok()
        );
        assert!(Profile::parse_with(Path::new("p.toml"), GOOD, &host).is_ok());
    }

    #[test]
    fn a_record_written_before_isolation_levels_ran_as_a_container() {
        let p = Profile::parse(Path::new("p.toml"), GOOD).unwrap();
        let mut json: serde_json::Value = serde_json::to_value(&p).unwrap();
        json.as_object_mut().unwrap().remove("isolation");
        let old: Profile = serde_json::from_value(json).unwrap();
        assert_eq!(old.isolation, Isolation::Container);
    }

    #[test]
    fn datasets_transfers_and_pools() {
        let host = HostRules {
            permitted_residency: vec!["UK".into()],
            datasets: vec![("census-sample".into(), Classification::Official)],
            ..Default::default()
        };
        let with = |extra: &str| Profile::parse_with(Path::new("p.toml"), &format!("{GOOD}\n{extra}"), &host);
        let top = |extra: &str| {
            Profile::parse_with(Path::new("p.toml"), &format!("datasets = [\"census-sample\"]\n{extra}{GOOD}"), &host)
        };
        assert_eq!(top("").unwrap().datasets, ["census-sample"]);
        let e = Profile::parse_with(Path::new("p.toml"), &format!("datasets = [\"nope\"]\n{GOOD}"), &host).unwrap_err();
        assert_eq!(fields(e), ["datasets[0]"]);
        let p = with("[file_transfer]\ncopy_out = false\n").unwrap();
        let capped = Some(DEFAULT_EXEC_OUTPUT_WITHOUT_COPY_OUT);
        assert_eq!(p.file_transfer, FileTransfer { copy_in: true, copy_out: false, max_exec_output: capped });
        let p = with("[file_transfer]\ncopy_out = false\nmax_exec_output = \"64KiB\"\n").unwrap();
        assert_eq!(p.file_transfer.max_exec_output, Some(64 << 10));
        let e = with("[file_transfer]\nmax_exec_output = \"0B\"\n").unwrap_err();
        assert!(e.iter().any(|e| e.field == "file_transfer.max_exec_output"), "{e:?}");
        let sensitive =
            GOOD.replace("max_classification = \"OFFICIAL\"", "max_classification = \"OFFICIAL-SENSITIVE\"");
        let p = Profile::parse_with(Path::new("p.toml"), &sensitive, &host).unwrap();
        assert!(!p.file_transfer.copy_out, "copy-out is refused by default above OFFICIAL");
        assert_eq!(
            Profile::parse_with(Path::new("p.toml"), &format!("warm_pool = 3\n{GOOD}"), &host).unwrap().warm_pool,
            3
        );
        let e = Profile::parse_with(Path::new("p.toml"), &format!("warm_pool = 65\n{GOOD}"), &host).unwrap_err();
        assert_eq!(fields(e), ["warm_pool"]);
    }

    #[test]
    fn bad_names_and_images() {
        let e = Profile::parse(Path::new("Bad_Name.toml"), GOOD).unwrap_err();
        assert_eq!(e[0].field, "name");
        let e = parse("max_classification = \"OFFICIAL\"\nimages = []\n").unwrap_err();
        assert_eq!(e[0].field, "images");
        let e = parse("max_classification = \"OFFICIAL\"\nimages = [\"a b\"]\n").unwrap_err();
        assert_eq!(e[0].field, "images[0]");
    }

    #[test]
    fn load_dir_reports_every_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.toml"), GOOD).unwrap();
        std::fs::write(dir.path().join("bad-one.toml"), "images = 3").unwrap();
        std::fs::write(dir.path().join("bad-two.toml"), GOOD.replace("pids = 64", "pids = 0")).unwrap();
        std::fs::write(dir.path().join("notes.md"), "ignored").unwrap();
        let errors = ProfileSet::load_dir(dir.path()).unwrap_err();
        let files: Vec<_> = errors.iter().map(|e| e.file.file_name().unwrap().to_str().unwrap()).collect();
        assert_eq!(files, ["bad-one.toml", "bad-two.toml"]);
        std::fs::remove_file(dir.path().join("bad-one.toml")).unwrap();
        std::fs::remove_file(dir.path().join("bad-two.toml")).unwrap();
        let set = ProfileSet::load_dir(dir.path()).unwrap();
        assert_eq!(set.names().collect::<Vec<_>>(), ["good"]);
    }

    #[test]
    fn repository_profiles_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sandbox-profiles");
        let set = ProfileSet::load_dir(&dir).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(!set.is_empty());
    }

    // ---- property tests: whatever an operator writes, parsing never panics,
    // a profile it accepts keeps every promise, and a refusal names the file
    // and the field (or line).

    use proptest::prelude::*;

    use crate::testing::{apply, nasty_string, toml_value, Edit};

    /// The repository's example profiles.
    fn examples() -> &'static [(PathBuf, String)] {
        static EXAMPLES: std::sync::OnceLock<Vec<(PathBuf, String)>> = std::sync::OnceLock::new();
        EXAMPLES.get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sandbox-profiles");
            let mut files: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .map(|p| {
                    let content = std::fs::read_to_string(&p).unwrap();
                    (p, content)
                })
                .collect();
            files.sort();
            assert!(!files.is_empty());
            files
        })
    }

    fn host_rules() -> HostRules {
        HostRules {
            permitted_residency: vec!["UK".into()],
            datasets: vec![("census-sample".into(), Classification::Official)],
            ..Default::default()
        }
    }

    const KEYS: [&str; 31] = [
        "description",
        "max_classification",
        "requires_approval",
        "refuse_overdue_risk",
        "images",
        "command",
        "datasets",
        "warm_pool",
        "cpus",
        "memory",
        "pids",
        "tmpfs",
        "default_ttl",
        "max_ttl",
        "max_lifetime",
        "mode",
        "host",
        "port",
        "residency",
        "copy_in",
        "copy_out",
        "max_exec_output",
        "privileged",
        "network_mode",
        "user",
        "cap_add",
        "resources",
        "lifetime",
        "network",
        "file_transfer",
        "isolation",
    ];

    const TABLES: [&str; 8] = [
        "[resources]",
        "[lifetime]",
        "[network]",
        "[[network.allow]]",
        "[file_transfer]",
        "[network.allow]",
        "[[resources]]",
        "[devices]",
    ];

    /// A line an operator might write: `key = value`, a table header, junk.
    fn toml_line() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => (prop::sample::select(KEYS.to_vec()), toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
            2 => prop::sample::select(TABLES.to_vec()).prop_map(String::from),
            1 => nasty_string(),
            1 => prop::sample::select(vec!["[", "]", "=", "a =", "= 1", "\"", "'''", "[[", "x = [", "#"])
                .prop_map(String::from),
        ]
    }

    /// A duration as operators write them, often far too long.
    fn duration() -> impl Strategy<Value = String> {
        (
            prop_oneof![
                2 => 1u64..100,
                1 => any::<u64>(),
                2 => prop::sample::select(vec![0, 36_500, 36_525, 36_600, 3_650_000, 300_000_000_000, u64::MAX]),
            ],
            prop::sample::select(vec!["s", "m", "h", "d", "y", "ns", "years"]),
        )
            .prop_map(|(n, u)| format!("\"{n}{u}\""))
    }

    /// A plausible but edgy value for `key`, as an operator might write it.
    fn value_for(key: &'static str) -> BoxedStrategy<String> {
        let size = || {
            prop_oneof![
                any::<u64>().prop_map(|n| n.to_string()),
                (0u64..100_000, prop::sample::select(vec!["", "B", "KiB", "MiB", "GiB", "MB", "k", "XB"]))
                    .prop_map(|(n, u)| format!("\"{n}{u}\"")),
            ]
        };
        match key {
            "default_ttl" | "max_ttl" | "max_lifetime" => duration().boxed(),
            "memory" | "tmpfs" | "max_exec_output" => size().boxed(),
            "cpus" => prop_oneof![any::<f64>().prop_map(|f| format!("{f:?}")), Just("nan".to_string())].boxed(),
            "pids" => any::<i64>().prop_map(|n| n.to_string()).boxed(),
            "warm_pool" | "port" => prop_oneof![0i64..70, any::<i64>()].prop_map(|n| n.to_string()).boxed(),
            "max_classification" => {
                prop::sample::select(vec!["OFFICIAL", "OFFICIAL-SENSITIVE", "SECRET", "TOP-SECRET"])
                    .prop_map(|c| format!("\"{c}\""))
                    .boxed()
            }
            "mode" => prop::sample::select(vec!["none", "isolated", "allowlist", "open"])
                .prop_map(|m| format!("\"{m}\""))
                .boxed(),
            _ => toml_value().boxed(),
        }
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let set = prop::sample::select(vec![
            "default_ttl",
            "max_ttl",
            "max_lifetime",
            "memory",
            "tmpfs",
            "cpus",
            "pids",
            "warm_pool",
            "port",
            "max_classification",
            "mode",
        ])
        .prop_flat_map(|k| value_for(k).prop_map(move |v| Edit::Set(k, v)));
        crate::testing::edit(set, toml_line())
    }

    /// What every profile that parses must satisfy, whatever its file said.
    fn check_accepted(p: &Profile, host: &HostRules) -> Result<(), TestCaseError> {
        prop_assert!(valid_name(&p.name));
        prop_assert!(!p.images.is_empty());
        prop_assert!(p.images.iter().all(|i| !i.trim().is_empty() && !i.chars().any(char::is_whitespace)));
        prop_assert!(!p.command.iter().any(|a| a.contains('\0')));
        let r = &p.resources;
        prop_assert!(r.cpus.is_finite() && r.cpus > 0.0 && r.cpus <= MAX_CPUS, "cpus {}", r.cpus);
        prop_assert!(r.memory >= MIN_MEMORY && r.pids >= MIN_PIDS && r.tmpfs > 0);
        let l = &p.lifetime;
        prop_assert!(!l.default_ttl.is_zero() && l.default_ttl <= l.max_ttl && l.max_ttl <= l.max_lifetime);
        // Sandboxes of this profile get deadlines that exist and can be
        // written in their labels.
        let last = std::time::SystemTime::now().checked_add(l.max_lifetime);
        prop_assert!(last.is_some(), "max_lifetime {:?} overflows the clock", l.max_lifetime);
        crate::time::rfc3339(last.unwrap());
        let net = &p.network;
        prop_assert!(net.mode != NetworkMode::Open || p.max_classification == Classification::Official);
        prop_assert_eq!(net.mode == NetworkMode::Allowlist, !net.allow.is_empty());
        for d in &net.allow {
            prop_assert!(d.port != 0 && !d.residency.trim().is_empty());
            prop_assert!(crate::egress::addr::Host::parse(&d.host).is_some());
            prop_assert!(
                p.max_classification == Classification::Official
                    || host.permitted_residency.iter().any(|r| r.eq_ignore_ascii_case(d.residency.trim()))
            );
        }
        prop_assert!(p.datasets.iter().all(|d| host.datasets.iter().any(|(n, _)| n == d)));
        prop_assert!(p.warm_pool <= MAX_WARM_POOL);
        // Refusing copy-out always comes with a cap on exec output.
        prop_assert!(p.file_transfer.copy_out || p.file_transfer.max_exec_output.is_some());
        prop_assert!(p.file_transfer.max_exec_output != Some(0));
        Ok(())
    }

    /// What every refusal must say: the file, a field or line, and why.
    /// Parses `content` as `file`: accepted safely, or refused by field.
    fn parsed_safely(file: &Path, content: &str) -> Result<(), TestCaseError> {
        let host = host_rules();
        match Profile::parse_with(file, content, &host) {
            Ok(p) => check_accepted(&p, &host),
            Err(errors) => check_refused(file, content, &errors),
        }
    }

    fn check_refused(file: &Path, content: &str, errors: &[ProfileError]) -> Result<(), TestCaseError> {
        prop_assert!(!errors.is_empty());
        for e in errors {
            prop_assert_eq!(&e.file, file);
            prop_assert!(!e.field.is_empty(), "no field or line in {}", e);
            prop_assert!(!e.reason.trim().is_empty(), "no reason in {}", e);
            let shown = e.to_string();
            prop_assert!(shown.starts_with(&format!("{}: {}: ", file.display(), e.field)), "{}", shown);
            if let Some(n) = e.field.strip_prefix("line ") {
                let n: usize = n.parse().map_err(|_| TestCaseError::fail(format!("bad line in {shown}")))?;
                let lines = content.lines().count().max(1);
                prop_assert!(n >= 1 && n <= lines + 1, "{} of {} lines", shown, lines);
            }
        }
        Ok(())
    }

    proptest! {
        /// One to four edits of a repository profile: accepted profiles keep
        /// every promise; refusals name the file and the field.
        #[test]
        fn edited_example_profiles_are_accepted_safely_or_refused_by_field(
            which in any::<usize>(),
            edits in prop::collection::vec(edit(), 1..5),
        ) {
            let (path, original) = &examples()[which % examples().len()];
            let content = edits.iter().fold(original.clone(), |c, e| apply(&c, e));
            parsed_safely(path, &content)?;
        }

        /// Lifetimes: whatever the operator writes, an accepted profile's
        /// deadlines exist on the clock and can be written down.
        #[test]
        fn profile_lifetimes_fit_the_clock(
            which in any::<usize>(),
            default_ttl in duration(),
            max_ttl in duration(),
            max_lifetime in duration(),
        ) {
            let (path, original) = &examples()[which % examples().len()];
            let content = [("default_ttl", default_ttl), ("max_ttl", max_ttl), ("max_lifetime", max_lifetime)]
                .into_iter()
                .fold(original.clone(), |c, (k, v)| apply(&c, &Edit::Set(k, v)));
            parsed_safely(path, &content)?;
        }

        /// Files assembled line by line from profile keys, tables and junk.
        #[test]
        fn toml_ish_profiles_are_accepted_safely_or_refused_by_field(
            lines in prop::collection::vec(toml_line(), 0..16),
            name in prop_oneof![Just("p".to_string()), nasty_string()],
        ) {
            let content = lines.join("\n");
            let file = Path::new("/profiles").join(format!("{name}.toml"));
            parsed_safely(&file, &content)?;
        }

        /// Arbitrary text, not even TOML.
        #[test]
        fn arbitrary_text_never_panics(content in any::<String>()) {
            let file = Path::new("x.toml");
            if let Err(errors) = Profile::parse(file, &content) {
                check_refused(file, &content, &errors)?;
            }
        }
    }

    #[test]
    fn port_forward_needs_copy_out_and_real_ports() {
        let base = "max_classification = \"OFFICIAL-SENSITIVE\"\nimages = [\"img:1\"]\n";
        let errs = Profile::parse(Path::new("p.toml"), &format!("{base}[port_forward]\nports = [8888, 0, 8888]\n"))
            .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["port_forward.ports", "port_forward.ports[1]", "port_forward.ports[2]"], "{errs:?}");
        assert!(errs[0].reason.contains("copy_out"), "{errs:?}");
        let ok = format!("{base}[file_transfer]\ncopy_out = true\n[port_forward]\nports = [8888, 8501]\n");
        assert_eq!(Profile::parse(Path::new("p.toml"), &ok).unwrap().port_forward.ports, [8888, 8501]);
        let none = Profile::parse(Path::new("p.toml"), base).unwrap();
        assert!(none.port_forward.ports.is_empty(), "none unless listed");
    }

    #[test]
    fn images_are_pinned_by_digest_or_allowed_by_repository() {
        let digest = "a".repeat(64);
        let toml = format!(
            "max_classification = \"OFFICIAL\"\nimages = [\"sandpit/base:local\", \"reg.example.org/stats/py@sha256:{digest}\", \"reg.example.org/stats/*\"]\n"
        );
        let p = Profile::parse(Path::new("p.toml"), &toml).unwrap();
        for ok in [
            "sandpit/base:local",
            "reg.example.org/stats/py:3.11",
            "reg.example.org/stats/py@sha256:0011",
            "reg.example.org/stats/team/tool:1",
        ] {
            assert!(p.allows_image(ok), "{ok}");
        }
        for refused in [
            "sandpit/base:latest",
            "reg.example.org/stats",
            "reg.example.org/stats/",
            "reg.example.org/statsx/py:1",
            "evil.org/reg.example.org/stats/py",
        ] {
            assert!(!p.allows_image(refused), "{refused}");
        }
        for (bad, why) in [
            ("[\"reg.example.org/stats/*\"]", "the first image"),
            ("[\"a:1\", \"reg/*/x\"]", "whole last path element"),
            ("[\"a:1\", \"b@sha256:abc\"]", "64 lowercase hex"),
            ("[\"a:1\", \"*\"]", "whole last path element"),
        ] {
            let e =
                Profile::parse(Path::new("p.toml"), &format!("max_classification = \"OFFICIAL\"\nimages = {bad}\n"))
                    .unwrap_err();
            assert!(e.iter().any(|e| e.field.starts_with("images[") && e.reason.contains(why)), "{bad}: {e:?}");
        }
    }
}
