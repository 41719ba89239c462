//! Admission: a pure function from (request, caller, profile, host policy,
//! now) to a provisioning [`Plan`] or a denial naming the [`Rule`] that denied it.
//!
//! Rules, in the order they are checked (DESIGN.md "Classification"):
//! 1. `host-ceiling`: nothing above the host's accreditation ceiling;
//! 2. `profile-classification`: within the profile's ceiling;
//!    `isolation-classification`: the profile's isolation is at least what
//!    the host requires for the classification (`[isolation.minimum]`);
//!    `experiment-classification`: within the experiment's declared classification;
//! 3. `experiment-registered`: the experiment exists and belongs to the caller's team;
//!    `experiment-status`: it is neither rejected nor closed;
//!    `experiment-approval`: it is approved when the classification is
//!    OFFICIAL-SENSITIVE or above, or the profile requires approval;
//!    `risk-review-overdue`: no risk at or above the host's (or the
//!    profile's, if lower) impact threshold is overdue for review;
//!    `dpia-required`: a completed DPIA is on record at or above the host's
//!    `dpia_required` classification;
//! 4. `image-allowlist`: the image is one the profile allows;
//! 5. `ttl` and `max-lifetime`: within the profile's lifetime limits;
//!    `isolation-available`: the runtime can give the profile's isolation
//!    now (checked by the manager, which knows the runtime);
//!    `team-quota`: the team's live sandboxes stay within its quota
//!    (counted by the store in the transaction that writes the record,
//!    [`crate::store::Store::write_admitted`]; [`over_quota`] is the refusal).

use std::fmt;
use std::time::{Duration, SystemTime};

use super::classification::Classification;
use super::profile::{MinimumIsolation, Profile, ProfileSet, Resources};
use crate::error::{quoted, Error, Result};
use crate::register::{AssessmentKind, Experiment, Level, Status};

/// Longest accepted experiment id or image reference.
const MAX_ID_LEN: usize = 128;
const MAX_IMAGE_LEN: usize = 255;

/// Host-wide policy from config.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// The host's accreditation ceiling: nothing above it is ever provisioned.
    pub max_classification: Classification,
    /// Operator-declared datasets.
    pub datasets: Vec<Dataset>,
    /// The shortest ttl a create or an extension may ask for.
    pub min_ttl: Duration,
    /// The weakest isolation allowed per classification.
    pub minimum_isolation: MinimumIsolation,
    /// New sandboxes are refused for an experiment with a risk of at least
    /// this impact whose review is overdue (a profile may ask for a lower one).
    pub refuse_overdue_risk: Option<Level>,
    /// Sandboxes at or above this classification need a completed DPIA on
    /// the experiment's record.
    pub dpia_required: Option<Classification>,
}

/// The shortest ttl accepted unless the host's config says otherwise: a
/// sandbox that lives only seconds is a mistake or a way to flood the audit
/// log with lifecycle records.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(10);

/// Refuses a ttl below the host's minimum, naming the field.
pub fn check_min_ttl(ttl: Duration, min: Duration) -> Result<()> {
    if ttl < min {
        return Err(Error::invalid(
            "ttl",
            format!(
                "{} is below the minimum of {} (lifecycle.min_ttl)",
                crate::time::format_duration_ms(ttl),
                crate::time::format_duration_ms(min)
            ),
        ));
    }
    Ok(())
}

/// How many live sandboxes (provisioning, running or exited) each team may have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamQuotas {
    /// For any team not listed in `teams`.
    pub default: u32,
    pub teams: std::collections::BTreeMap<String, u32>,
}

impl TeamQuotas {
    pub fn of(&self, team: &str) -> u32 {
        self.teams.get(team).copied().unwrap_or(self.default)
    }
}

/// The refusal of a create by a team that has `live` sandboxes, at or over its quota.
pub fn over_quota(team: &str, live: u64, quotas: &TeamQuotas) -> Error {
    let quota = quotas.of(team);
    Error::denied(
        Rule::TeamQuota,
        format!("team '{team}' has {live} live sandboxes, its quota is {quota}; delete one or ask an operator"),
    )
}

/// A host directory an operator declared, with its classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    pub name: String,
    pub path: std::path::PathBuf,
    pub classification: Classification,
    pub residency: String,
}

/// The rule that denied a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    HostCeiling,
    ProfileClassification,
    IsolationClassification,
    IsolationAvailable,
    ExperimentClassification,
    ExperimentRegistered,
    ExperimentStatus,
    ExperimentApproval,
    SelfApproval,
    SignOffFunction,
    RiskReviewOverdue,
    DpiaRequired,
    ImageAllowlist,
    DatasetAllowlist,
    DatasetClassification,
    FileTransfer,
    PortForward,
    Resources,
    Ttl,
    MaxLifetime,
    TeamQuota,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::HostCeiling => "host-ceiling",
            Rule::ProfileClassification => "profile-classification",
            Rule::IsolationClassification => "isolation-classification",
            Rule::IsolationAvailable => "isolation-available",
            Rule::ExperimentClassification => "experiment-classification",
            Rule::ExperimentRegistered => "experiment-registered",
            Rule::ExperimentStatus => "experiment-status",
            Rule::ExperimentApproval => "experiment-approval",
            Rule::SelfApproval => "self-approval",
            Rule::SignOffFunction => "sign-off-function",
            Rule::RiskReviewOverdue => "risk-review-overdue",
            Rule::DpiaRequired => "dpia-required",
            Rule::ImageAllowlist => "image-allowlist",
            Rule::DatasetAllowlist => "dataset-allowlist",
            Rule::DatasetClassification => "dataset-classification",
            Rule::FileTransfer => "file-transfer",
            Rule::PortForward => "port-forward",
            Rule::Resources => "resources",
            Rule::Ttl => "ttl",
            Rule::MaxLifetime => "max-lifetime",
            Rule::TeamQuota => "team-quota",
        }
    }

    /// Whether the denial depends on the state of an object (and may pass
    /// later) rather than on the request alone.
    pub fn depends_on_state(self) -> bool {
        matches!(
            self,
            Rule::MaxLifetime
                | Rule::IsolationAvailable
                | Rule::ExperimentRegistered
                | Rule::ExperimentStatus
                | Rule::ExperimentApproval
                | Rule::RiskReviewOverdue
                | Rule::DpiaRequired
                | Rule::TeamQuota
        )
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A create request after decoding, before policy.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateSandbox {
    pub experiment: String,
    pub profile: String,
    pub classification: Classification,
    /// `None`: the profile's default ttl.
    pub ttl: Option<Duration>,
    /// `None`: the profile's first image.
    pub image: Option<String>,
    /// Datasets to mount read-only.
    pub datasets: Vec<String>,
    /// Less or more than the profile gives, within its ceilings.
    pub resources: ResourceRequest,
}

/// The resources a create asks for, each within the profile's value, which
/// is both the default and the ceiling. `None`: the profile's.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ResourceRequest {
    pub cpus: Option<f64>,
    /// Bytes.
    pub memory: Option<u64>,
}

impl CreateSandbox {
    /// Checks the shape of every field; policy comes after, in [`admit`].
    pub fn validate(&self) -> Result<()> {
        validate_name("experiment", &self.experiment)?;
        validate_name("profile", &self.profile)?;
        if self.ttl.is_some_and(|t| t.is_zero()) {
            return Err(Error::invalid("ttl", "must be above zero"));
        }
        if let Some(cpus) = self.resources.cpus {
            if !cpus.is_finite() || cpus < 0.01 {
                return Err(Error::invalid("cpus", format!("{cpus} is not a cpu count of at least 0.01")));
            }
        }
        if let Some(memory) = self.resources.memory {
            if memory < super::profile::MIN_MEMORY {
                return Err(Error::invalid(
                    "memory",
                    format!("{} is below the least a sandbox may have, 6MiB", super::size::format_size(memory)),
                ));
            }
        }
        if let Some(image) = &self.image {
            validate_image(image)?;
        }
        for d in &self.datasets {
            validate_name("datasets", d)?;
        }
        Ok(())
    }
}

/// Identifiers: 1-128 of letters, digits, `.`, `_`, `-`.
pub fn validate_name(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(Error::invalid(field, format!("longer than {MAX_ID_LEN} characters")));
    }
    if !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(Error::invalid(
            field,
            format!("{} may contain only letters, digits, '.', '_' and '-'", quoted(value)),
        ));
    }
    Ok(())
}

/// The image a request for `profile` gets: the one it names if the
/// profile allows it (rule `image-allowlist`), else the profile's first.
pub fn allowed_image(profile: &Profile, requested: Option<&str>) -> Result<String> {
    match requested {
        Some(i) if profile.allows_image(i) => Ok(i.to_string()),
        Some(i) => Err(Error::denied(
            Rule::ImageAllowlist,
            format!(
                "image '{i}' is not allowed by profile '{}' (allowed: {})",
                profile.name,
                profile.images.join(", ")
            ),
        )),
        None => Ok(profile.default_image().to_string()),
    }
}

/// An image reference: 1-255 bytes, no whitespace or control characters.
pub fn validate_image(image: &str) -> Result<()> {
    if image.len() > MAX_IMAGE_LEN {
        return Err(Error::invalid("image", format!("longer than {MAX_IMAGE_LEN} characters")));
    }
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid("image", format!("{} is not an image reference", quoted(image))));
    }
    Ok(())
}

/// What the runtime provisions once admission says yes.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub experiment: String,
    pub owner: String,
    pub team: String,
    pub profile: Profile,
    pub classification: Classification,
    pub image: String,
    pub datasets: Vec<crate::sandbox::DatasetMount>,
    pub created_at: SystemTime,
    pub expires_at: SystemTime,
    /// The latest any extension may reach.
    pub max_expires_at: SystemTime,
    /// What the sandbox gets: the profile's resources with the request's
    /// cpus and memory where it asked for less (or no more).
    pub resources: Resources,
}

/// Decides a create request. Validates the request's shape first.
/// `experiment` is the register entry named by the request, if it exists.
pub fn admit(
    req: &CreateSandbox,
    owner: &str,
    team: &str,
    experiment: Option<&Experiment>,
    profiles: &ProfileSet,
    host: &HostPolicy,
    now: SystemTime,
) -> Result<Plan> {
    req.validate()?;
    let profile = profiles.get(&req.profile).ok_or_else(|| {
        let known: Vec<&str> = profiles.names().collect();
        Error::invalid("profile", format!("unknown profile '{}' (known: {})", req.profile, known.join(", ")))
    })?;
    if req.classification > host.max_classification {
        return Err(Error::denied(
            Rule::HostCeiling,
            format!("{} is above this host's accreditation ceiling {}", req.classification, host.max_classification),
        ));
    }
    if req.classification > profile.max_classification {
        return Err(Error::denied(
            Rule::ProfileClassification,
            format!(
                "{} is above profile '{}' ceiling {}",
                req.classification, profile.name, profile.max_classification
            ),
        ));
    }
    let required = host.minimum_isolation.at(req.classification);
    if profile.isolation < required {
        return Err(Error::denied(
            Rule::IsolationClassification,
            format!(
                "{} requires isolation '{required}' on this host; profile '{}' gives '{}'",
                req.classification, profile.name, profile.isolation
            ),
        ));
    }
    let experiment = experiment.filter(|e| e.team == team).ok_or_else(|| {
        Error::denied(
            Rule::ExperimentRegistered,
            format!("experiment '{}' is not in the register for team '{team}'; register it first", req.experiment),
        )
    })?;
    if req.classification > experiment.classification {
        return Err(Error::denied(
            Rule::ExperimentClassification,
            format!(
                "{} is above experiment '{}' declared classification {}",
                req.classification, experiment.id, experiment.classification
            ),
        ));
    }
    experiment_in_force(experiment, req.classification, profile)?;
    governance_in_force(experiment, req.classification, profile, host, now)?;
    let image = allowed_image(profile, req.image.as_deref())?;
    let mut datasets = Vec::new();
    for name in &req.datasets {
        let declared = host.datasets.iter().find(|d| d.name == *name);
        let Some(d) = declared.filter(|_| profile.datasets.contains(name)) else {
            return Err(Error::denied(
                Rule::DatasetAllowlist,
                format!("dataset '{name}' is not allowed by profile '{}'", profile.name),
            ));
        };
        if d.classification > req.classification {
            return Err(Error::denied(
                Rule::DatasetClassification,
                format!("dataset '{name}' is {}, above the sandbox's {}", d.classification, req.classification),
            ));
        }
        if !datasets.iter().any(|m: &crate::sandbox::DatasetMount| m.name == *name) {
            datasets.push(crate::sandbox::DatasetMount { name: name.clone(), source: d.path.clone() });
        }
    }
    let resources = within_ceilings(profile, req.resources)?;
    let ttl = req.ttl.unwrap_or(profile.lifetime.default_ttl);
    check_min_ttl(ttl, host.min_ttl)?;
    check_ttl(profile, ttl)?;
    let max_expires_at = now + profile.lifetime.max_lifetime;
    Ok(Plan {
        experiment: req.experiment.clone(),
        owner: owner.to_string(),
        team: team.to_string(),
        profile: profile.clone(),
        classification: req.classification,
        image,
        datasets,
        created_at: now,
        expires_at: now + ttl,
        max_expires_at,
        resources,
    })
}

/// The profile's resources with what the request asks for, refused by name
/// (rule `resources`) above the profile's: its values are the ceilings.
fn within_ceilings(profile: &Profile, asked: ResourceRequest) -> Result<Resources> {
    let mut r = profile.resources.clone();
    if let Some(cpus) = asked.cpus {
        if cpus > r.cpus {
            return Err(Error::denied(
                Rule::Resources,
                format!("cpus {cpus} is above profile '{}' ceiling of {}", profile.name, r.cpus),
            ));
        }
        r.cpus = cpus;
    }
    if let Some(memory) = asked.memory {
        if memory > r.memory {
            return Err(Error::denied(
                Rule::Resources,
                format!(
                    "memory {} is above profile '{}' ceiling of {}",
                    super::size::format_size(memory),
                    profile.name,
                    super::size::format_size(r.memory)
                ),
            ));
        }
        r.memory = memory;
    }
    Ok(r)
}

/// Whether `experiment` lets a sandbox at `classification` from `profile`
/// exist: neither rejected nor closed (`experiment-status`), and approved when
/// the classification is OFFICIAL-SENSITIVE or above or the profile requires
/// approval (`experiment-approval`). Checked at admission, and again before
/// every extend, exec and file transfer, so that a sandbox never outlives in
/// use the decision that allowed it.
pub fn experiment_in_force(experiment: &Experiment, classification: Classification, profile: &Profile) -> Result<()> {
    if matches!(experiment.status, Status::Rejected | Status::Closed) {
        return Err(Error::denied(
            Rule::ExperimentStatus,
            format!("experiment '{}' is {}", experiment.id, experiment.status.as_str()),
        ));
    }
    let needs_approval = classification >= Classification::OfficialSensitive || profile.requires_approval;
    if needs_approval && experiment.status != Status::Approved {
        return Err(Error::denied(
            Rule::ExperimentApproval,
            format!(
                "experiment '{}' is {} and must be approved for sandboxes at {} (or from profile '{}', which requires approval)",
                experiment.id,
                experiment.status.as_str(),
                classification,
                profile.name
            ),
        ));
    }
    Ok(())
}

/// What governance asks before a new sandbox: no risk at or above the
/// refusal impact (the host's, or the profile's if lower) overdue for review
/// (`risk-review-overdue`), and a completed DPIA at or above the host's
/// `dpia_required` classification (`dpia-required`).
fn governance_in_force(
    experiment: &Experiment,
    classification: Classification,
    profile: &Profile,
    host: &HostPolicy,
    now: SystemTime,
) -> Result<()> {
    let threshold = match (host.refuse_overdue_risk, profile.refuse_overdue_risk) {
        (Some(h), Some(p)) => Some(h.min(p)),
        (h, p) => h.or(p),
    };
    if let Some(threshold) = threshold {
        let overdue: Vec<String> = experiment
            .overdue_risks(now)
            .filter(|r| r.impact >= threshold)
            .map(|r| {
                format!(
                    "{} ({} impact, due {})",
                    r.id,
                    r.impact,
                    r.review_by.map(crate::time::rfc3339).unwrap_or_default()
                )
            })
            .collect();
        if !overdue.is_empty() {
            return Err(Error::denied(
                Rule::RiskReviewOverdue,
                format!(
                    "experiment '{}' has risk reviews overdue: {}; review them first (sandpit risk review EXPERIMENT RISK --reason ...)",
                    experiment.id,
                    overdue.join(", ")
                ),
            ));
        }
    }
    if host.dpia_required.is_some_and(|c| classification >= c) && !experiment.completed(AssessmentKind::Dpia) {
        return Err(Error::denied(
            Rule::DpiaRequired,
            format!(
                "{classification} sandboxes need a completed DPIA on experiment '{}'s record; record it (sandpit assess {} dpia completed --reference REF)",
                experiment.id, experiment.id
            ),
        ));
    }
    Ok(())
}

fn check_ttl(profile: &Profile, ttl: Duration) -> Result<()> {
    if ttl.is_zero() {
        return Err(Error::invalid("ttl", "must be above zero"));
    }
    if ttl > profile.lifetime.max_ttl {
        return Err(Error::denied(
            Rule::Ttl,
            format!(
                "ttl {} exceeds profile '{}' max_ttl {}",
                crate::time::format_duration(ttl),
                profile.name,
                crate::time::format_duration(profile.lifetime.max_ttl)
            ),
        ));
    }
    Ok(())
}

/// The new expiry for "ttl from now", within the limits of the profile the
/// sandbox was created with and its maximum lifetime.
pub fn extend_deadline(
    profile: &Profile,
    max_expires_at: SystemTime,
    ttl: Duration,
    now: SystemTime,
) -> Result<SystemTime> {
    check_ttl(profile, ttl)?;
    let new = now + ttl;
    if new > max_expires_at {
        let left = max_expires_at.duration_since(now).unwrap_or_default();
        return Err(Error::denied(
            Rule::MaxLifetime,
            format!(
                "ttl {} would pass the sandbox's maximum lifetime ({} from creation); at most {} is left",
                crate::time::format_duration(ttl),
                crate::time::format_duration(profile.lifetime.max_lifetime),
                crate::time::format_duration(left)
            ),
        ));
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::*;
    use crate::policy::profile::{Isolation, Lifetime};

    fn profile(max: Classification) -> Profile {
        let mut p =
            Profile::parse(Path::new("p.toml"), "max_classification = \"OFFICIAL\"\nimages = [\"img:1\", \"img:2\"]\n")
                .unwrap();
        p.max_classification = max;
        p.lifetime = Lifetime {
            default_ttl: Duration::from_secs(600),
            max_ttl: Duration::from_secs(3600),
            max_lifetime: Duration::from_secs(4 * 3600),
        };
        p
    }

    fn req(c: Classification) -> CreateSandbox {
        CreateSandbox {
            experiment: "exp-1".into(),
            profile: "p".into(),
            classification: c,
            ttl: None,
            image: None,
            datasets: vec![],
            resources: Default::default(),
        }
    }

    fn exp(c: Classification, status: Status) -> Experiment {
        let n = crate::register::NewExperiment {
            title: "t".into(),
            purpose: "p".into(),
            ai_tools: vec![],
            models: vec![],
            classification: c,
            datasets: vec![],
            risks: vec![],
            planned_end: None,
            senior_responsible_owner: String::new(),
            phase: String::new(),
            function: String::new(),
            region: String::new(),
        };
        let mut e = Experiment::new("exp-1".into(), "u", "t", n, SystemTime::now()).unwrap();
        e.status = status;
        e
    }

    fn top() -> Experiment {
        exp(Classification::TopSecret, Status::Approved)
    }

    fn host() -> HostPolicy {
        HostPolicy {
            max_classification: Classification::OfficialSensitive,
            datasets: vec![],
            min_ttl: Duration::ZERO,
            minimum_isolation: Default::default(),
            refuse_overdue_risk: None,
            dpia_required: None,
        }
    }

    fn set(max: Classification) -> ProfileSet {
        ProfileSet::from_profiles([profile(max)])
    }

    fn rule_of(e: Error) -> Rule {
        match e {
            Error::Denied { rule, .. } => rule,
            other => panic!("expected a denial, got {other}"),
        }
    }

    #[test]
    fn team_quota_counts_live_sandboxes_with_per_team_overrides() {
        let q = TeamQuotas { default: 2, teams: [("big".to_string(), 5)].into() };
        assert_eq!((q.of("t"), q.of("big")), (2, 5));
        let e = over_quota("t", 2, &q);
        assert!(matches!(e, Error::Denied { rule: Rule::TeamQuota, .. }), "{e}");
        assert!(e.to_string().contains("has 2 live sandboxes, its quota is 2"), "{e}");
        assert_eq!(e.code(), crate::error::Code::ResourceExhausted);
    }

    #[test]
    fn plan_uses_profile_defaults() {
        let now = SystemTime::now();
        let plan = admit(
            &req(Classification::Official),
            "alice",
            "t",
            Some(&top()),
            &set(Classification::Official),
            &host(),
            now,
        )
        .unwrap();
        assert_eq!(plan.image, "img:1");
        assert_eq!(plan.expires_at, now + Duration::from_secs(600));
        assert_eq!(plan.max_expires_at, now + Duration::from_secs(4 * 3600));
        assert_eq!((plan.owner.as_str(), plan.team.as_str()), ("alice", "t"));
    }

    #[test]
    fn a_create_may_ask_for_less_than_the_profile_and_never_more() {
        let now = SystemTime::now();
        let profiles = set(Classification::Official);
        let p = profiles.get("p").unwrap().resources.clone();
        let ask = |cpus: Option<f64>, memory: Option<u64>| CreateSandbox {
            resources: ResourceRequest { cpus, memory },
            ..req(Classification::Official)
        };
        let plan = admit(&ask(None, None), "u", "t", Some(&top()), &profiles, &host(), now).unwrap();
        assert_eq!(plan.resources, p, "the profile's values are the defaults");
        let plan = admit(&ask(Some(0.25), Some(64 << 20)), "u", "t", Some(&top()), &profiles, &host(), now).unwrap();
        assert_eq!((plan.resources.cpus, plan.resources.memory, plan.resources.pids), (0.25, 64 << 20, p.pids));
        let e = admit(&ask(Some(p.cpus * 2.0), None), "u", "t", Some(&top()), &profiles, &host(), now).unwrap_err();
        assert!(e.to_string().contains("cpus") && e.to_string().contains("ceiling"), "{e}");
        assert_eq!(rule_of(e), Rule::Resources);
        let e = admit(&ask(None, Some(p.memory + 1)), "u", "t", Some(&top()), &profiles, &host(), now).unwrap_err();
        assert!(e.to_string().contains("memory"), "{e}");
        assert_eq!(rule_of(e), Rule::Resources);
        for (bad, field) in
            [(ask(Some(0.0), None), "cpus"), (ask(Some(f64::NAN), None), "cpus"), (ask(None, Some(1)), "memory")]
        {
            assert!(matches!(bad.validate(), Err(Error::InvalidArgument { field: f, .. }) if f == field), "{bad:?}");
        }
    }

    #[test]
    fn isolation_below_the_hosts_minimum_for_the_classification_is_refused() {
        let now = SystemTime::now();
        let minimum = MinimumIsolation([(Classification::OfficialSensitive, Isolation::Gvisor)].into());
        let h = HostPolicy { minimum_isolation: minimum, ..host() };
        let runc = set(Classification::OfficialSensitive);
        // OFFICIAL on a runc profile: the minimum does not reach it.
        assert!(admit(&req(Classification::Official), "u", "t", Some(&top()), &runc, &h, now).is_ok());
        let e = admit(&req(Classification::OfficialSensitive), "u", "t", Some(&top()), &runc, &h, now).unwrap_err();
        assert_eq!(e.code(), crate::error::Code::PermissionDenied);
        assert!(e.to_string().contains("OFFICIAL-SENSITIVE requires isolation 'gvisor'"), "{e}");
        assert_eq!(rule_of(e), Rule::IsolationClassification);
        let mut p = profile(Classification::OfficialSensitive);
        p.isolation = Isolation::Gvisor;
        let gvisor = ProfileSet::from_profiles([p]);
        let plan = admit(&req(Classification::OfficialSensitive), "u", "t", Some(&top()), &gvisor, &h, now).unwrap();
        assert_eq!(plan.profile.isolation, Isolation::Gvisor);
    }

    #[test]
    fn each_rule_denies_by_name() {
        let now = SystemTime::now();
        let s = set(Classification::Official);
        let e =
            admit(&req(Classification::Secret), "u", "t", Some(&top()), &set(Classification::TopSecret), &host(), now)
                .unwrap_err();
        assert_eq!(rule_of(e), Rule::HostCeiling);
        let e = admit(&req(Classification::OfficialSensitive), "u", "t", Some(&top()), &s, &host(), now).unwrap_err();
        assert_eq!(rule_of(e), Rule::ProfileClassification);
        let r = CreateSandbox { image: Some("evil:latest".into()), ..req(Classification::Official) };
        let e = admit(&r, "u", "t", Some(&top()), &s, &host(), now).unwrap_err();
        assert!(e.to_string().contains("image-allowlist") && e.to_string().contains("evil:latest"));
        let r = CreateSandbox { ttl: Some(Duration::from_secs(7200)), ..req(Classification::Official) };
        assert_eq!(rule_of(admit(&r, "u", "t", Some(&top()), &s, &host(), now).unwrap_err()), Rule::Ttl);
    }

    #[test]
    fn experiment_rules() {
        let now = SystemTime::now();
        let s = set(Classification::TopSecret);
        let os = req(Classification::OfficialSensitive);
        let deny =
            |e: Option<&Experiment>, r: &CreateSandbox| rule_of(admit(r, "u", "t", e, &s, &host(), now).unwrap_err());
        assert_eq!(deny(None, &os), Rule::ExperimentRegistered);
        let mut other_team = top();
        other_team.team = "someone-else".into();
        assert_eq!(deny(Some(&other_team), &os), Rule::ExperimentRegistered);
        assert_eq!(deny(Some(&exp(Classification::Official, Status::Approved)), &os), Rule::ExperimentClassification);
        assert_eq!(
            deny(Some(&exp(Classification::OfficialSensitive, Status::Proposed)), &os),
            Rule::ExperimentApproval
        );
        assert_eq!(deny(Some(&exp(Classification::OfficialSensitive, Status::Closed)), &os), Rule::ExperimentStatus);
        assert_eq!(deny(Some(&exp(Classification::OfficialSensitive, Status::Rejected)), &os), Rule::ExperimentStatus);
        // OFFICIAL needs no approval, unless the profile says so.
        let proposed = exp(Classification::Official, Status::Proposed);
        assert!(admit(&req(Classification::Official), "u", "t", Some(&proposed), &s, &host(), now).is_ok());
        let mut strict = profile(Classification::TopSecret);
        strict.requires_approval = true;
        let strict = ProfileSet::from_profiles([strict]);
        let e = admit(&req(Classification::Official), "u", "t", Some(&proposed), &strict, &host(), now).unwrap_err();
        assert_eq!(rule_of(e), Rule::ExperimentApproval);
    }

    #[test]
    fn overdue_reviews_and_a_missing_dpia_refuse_by_rule() {
        use crate::register::{Assessment, AssessmentKind, AssessmentStatus, ReviewCadence, Risk};
        let now = SystemTime::now();
        let s = set(Classification::TopSecret);
        let mut e = exp(Classification::OfficialSensitive, Status::Approved);
        let cadence = ReviewCadence {
            low: Duration::from_secs(60),
            medium: Duration::from_secs(60),
            high: Duration::from_secs(60),
        };
        let medium = Risk::new("drift".into(), Level::Low, Level::Medium, String::new(), String::new());
        e.add_risk(medium, ("u", "t"), "", &cadence, now - Duration::from_secs(120)).unwrap();
        let os = req(Classification::OfficialSensitive);
        let high_only = HostPolicy { refuse_overdue_risk: Some(Level::High), ..host() };
        assert!(
            admit(&os, "u", "t", Some(&e), &s, &high_only, now).is_ok(),
            "a medium risk overdue: below the host's threshold"
        );
        // A profile may lower the threshold; never raise it.
        let mut strict = profile(Classification::TopSecret);
        strict.refuse_overdue_risk = Some(Level::Medium);
        let strict = ProfileSet::from_profiles([strict]);
        let refused = admit(&os, "u", "t", Some(&e), &strict, &high_only, now).unwrap_err();
        assert_eq!(rule_of(refused), Rule::RiskReviewOverdue);
        let mut lax = profile(Classification::TopSecret);
        lax.refuse_overdue_risk = Some(Level::High);
        let medium_host = HostPolicy { refuse_overdue_risk: Some(Level::Medium), ..host() };
        let refused = admit(&os, "u", "t", Some(&e), &ProfileSet::from_profiles([lax]), &medium_host, now).unwrap_err();
        assert_eq!(rule_of(refused), Rule::RiskReviewOverdue);
        // Never refusing is the host's to choose.
        assert!(admit(&os, "u", "t", Some(&e), &s, &host(), now).is_ok());

        let dpia_host = HostPolicy { dpia_required: Some(Classification::OfficialSensitive), ..host() };
        assert_eq!(rule_of(admit(&os, "u", "t", Some(&e), &s, &dpia_host, now).unwrap_err()), Rule::DpiaRequired);
        assert!(admit(&req(Classification::Official), "u", "t", Some(&e), &s, &dpia_host, now).is_ok());
        let dpia = |status| Assessment {
            kind: AssessmentKind::Dpia,
            status,
            reference: "DPIA-1".into(),
            date: now,
            recorded_by: "u".into(),
            recorded_at: now,
        };
        e.record_assessment(dpia(AssessmentStatus::InProgress)).unwrap();
        assert_eq!(rule_of(admit(&os, "u", "t", Some(&e), &s, &dpia_host, now).unwrap_err()), Rule::DpiaRequired);
        e.record_assessment(dpia(AssessmentStatus::Completed)).unwrap();
        assert!(admit(&os, "u", "t", Some(&e), &s, &dpia_host, now).is_ok());
    }

    #[test]
    fn malformed_fields_are_invalid_arguments() {
        let s = set(Classification::Official);
        let now = SystemTime::now();
        let cases = [
            (CreateSandbox { experiment: "".into(), ..req(Classification::Official) }, "experiment"),
            (CreateSandbox { experiment: "a b".into(), ..req(Classification::Official) }, "experiment"),
            (CreateSandbox { profile: "".into(), ..req(Classification::Official) }, "profile"),
            (CreateSandbox { profile: "nope".into(), ..req(Classification::Official) }, "profile"),
            (CreateSandbox { ttl: Some(Duration::ZERO), ..req(Classification::Official) }, "ttl"),
            (CreateSandbox { image: Some("".into()), ..req(Classification::Official) }, "image"),
        ];
        for (r, field) in cases {
            match admit(&r, "u", "t", Some(&top()), &s, &host(), now) {
                Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn extension_limits() {
        let p = profile(Classification::Official);
        let now = SystemTime::now();
        let max = now + Duration::from_secs(1800);
        assert_eq!(extend_deadline(&p, max, Duration::from_secs(60), now).unwrap(), now + Duration::from_secs(60));
        let e = extend_deadline(&p, max, Duration::from_secs(3601), now).unwrap_err();
        assert_eq!(rule_of(e), Rule::Ttl);
        let e = extend_deadline(&p, max, Duration::from_secs(1801), now).unwrap_err();
        assert_eq!(rule_of(e), Rule::MaxLifetime);
        assert!(matches!(extend_deadline(&p, max, Duration::ZERO, now), Err(Error::InvalidArgument { .. })));
    }

    fn classification() -> impl Strategy<Value = Classification> {
        prop::sample::select(Classification::ALL.to_vec())
    }

    proptest! {
        /// Whatever is asked, a plan never exceeds the host ceiling, the
        /// profile's ceiling, its allowed images or its lifetime limits.
        #[test]
        fn admitted_plans_respect_every_limit(
            c in classification(),
            host in classification(),
            prof in classification(),
            ttl in prop::option::of(0u64..20_000),
            image in prop::option::of(prop::sample::select(vec!["img:1", "img:2", "other", ""])),
            experiment in "[a-z0-9 ._-]{0,12}",
            declared in classification(),
            status in prop::sample::select(vec![Status::Proposed, Status::Approved, Status::Rejected, Status::Closed]),
        ) {
            let r = CreateSandbox {
                experiment,
                profile: "p".into(),
                classification: c,
                ttl: ttl.map(Duration::from_secs),
                image: image.map(String::from),
                datasets: vec![],
                resources: Default::default(),
            };
            let now = SystemTime::now();
            let s = set(prof);
            let e = exp(declared, status);
            if let Ok(plan) = admit(&r, "u", "t", Some(&e), &s, &HostPolicy { max_classification: host, datasets: vec![], min_ttl: Duration::ZERO, minimum_isolation: Default::default(), refuse_overdue_risk: None, dpia_required: None }, now) {
                let p = s.get("p").unwrap();
                prop_assert!(plan.classification <= host && plan.classification <= prof && plan.classification <= declared);
                prop_assert!(matches!(status, Status::Proposed | Status::Approved));
                prop_assert!(plan.classification == Classification::Official || status == Status::Approved);
                prop_assert!(p.images.contains(&plan.image));
                let ttl = plan.expires_at.duration_since(now).unwrap();
                prop_assert!(!ttl.is_zero() && ttl <= p.lifetime.max_ttl);
                prop_assert!(plan.expires_at <= plan.max_expires_at);
            }
        }

        /// Extensions never pass the maximum lifetime nor the max ttl.
        #[test]
        fn extensions_stay_within_limits(ttl in 0u64..20_000, left in 0u64..20_000) {
            let p = profile(Classification::Official);
            let now = SystemTime::now();
            let max = now + Duration::from_secs(left);
            if let Ok(new) = extend_deadline(&p, max, Duration::from_secs(ttl), now) {
                prop_assert!(new <= max && new > now);
                prop_assert!(new.duration_since(now).unwrap() <= p.lifetime.max_ttl);
            }
        }
    }

    // ---- arbitrary profiles, experiments and requests ---------------------

    /// Host datasets: `d1` OFFICIAL, `d2` of any classification; `d3` is not declared.
    fn host_datasets(d2: Classification) -> Vec<Dataset> {
        [("d1", Classification::Official), ("d2", d2)]
            .into_iter()
            .map(|(name, classification)| Dataset {
                name: name.into(),
                path: format!("/srv/{name}").into(),
                classification,
                residency: "UK".into(),
            })
            .collect()
    }

    /// A profile `p` as an operator could write it; `None` when it does not
    /// pass validation (admission only ever sees validated profiles).
    fn written_profile(
        max: Classification,
        requires_approval: bool,
        images: &[&str],
        lifetime: &[String; 3],
        datasets: &[&str],
        d2: Classification,
    ) -> Option<Profile> {
        let list = |v: &[&str]| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
        let toml = format!(
            "max_classification = \"{max}\"\nrequires_approval = {requires_approval}\nimages = [{}]\n\
             datasets = [{}]\n[lifetime]\ndefault_ttl = \"{}\"\nmax_ttl = \"{}\"\nmax_lifetime = \"{}\"\n",
            list(images),
            list(datasets),
            lifetime[0],
            lifetime[1],
            lifetime[2],
        );
        let host = crate::policy::HostRules {
            permitted_residency: vec!["UK".into()],
            datasets: host_datasets(d2).into_iter().map(|d| (d.name, d.classification)).collect(),
            ..Default::default()
        };
        Profile::parse_with(Path::new("p.toml"), &toml, &host).ok()
    }

    /// `default_ttl`, `max_ttl` and `max_lifetime` as written: mostly in
    /// order (so the profile is valid), sometimes absurdly long.
    fn lifetime_texts() -> impl Strategy<Value = [String; 3]> {
        let one = (
            prop_oneof![3 => 1u64..5_000, 1 => any::<u64>(), 1 => prop::sample::select(vec![0, 36_500, 3_650_000])],
            prop::sample::select(vec![("s", 1u64), ("m", 60), ("h", 3600), ("d", 86_400), ("y", 31_557_600)]),
        );
        ([one.clone(), one.clone(), one], prop::bool::weighted(0.8)).prop_map(|(mut l, ordered)| {
            if ordered {
                l.sort_by_key(|(n, (_, secs))| n.saturating_mul(*secs));
            }
            l.map(|(n, (unit, _))| format!("{n}{unit}"))
        })
    }

    fn status() -> impl Strategy<Value = Status> {
        prop::sample::select(vec![
            Status::Proposed,
            Status::Approved,
            Status::Approved,
            Status::Rejected,
            Status::Closed,
        ])
    }

    fn name_or_junk(valid: Vec<&'static str>) -> impl Strategy<Value = String> {
        crate::testing::mostly(prop::sample::select(valid).prop_map(String::from))
    }

    /// What a denial must say: the rule, by name, and why; a malformed request
    /// names its field.
    fn check_refusal(e: &Error) -> std::result::Result<(), TestCaseError> {
        match e {
            Error::Denied { rule, reason } => {
                prop_assert!(e.to_string().contains(rule.as_str()), "{}", e);
                prop_assert!(!reason.trim().is_empty());
            }
            Error::InvalidArgument { field, reason } => {
                prop_assert!(["experiment", "profile", "ttl", "image", "datasets"].contains(field), "{}", e);
                prop_assert!(!reason.trim().is_empty());
            }
            other => prop_assert!(false, "admission answered neither a denial nor an invalid argument: {other:?}"),
        }
        Ok(())
    }

    proptest! {
        /// Any profile an operator can write, any register entry, any request:
        /// admission never panics; a plan keeps every rule; a refusal names
        /// its rule or field, and the host ceiling is checked before anything
        /// that depends on the profile's other settings or the experiment.
        #[test]
        fn any_profile_experiment_and_request_is_decided_by_rule(
            prof_max in classification(),
            requires_approval in any::<bool>(),
            images in prop::sample::subsequence(vec!["img:1", "img:2", "other:3"], 1..=3),
            lifetime in lifetime_texts(),
            prof_datasets in prop::sample::subsequence(vec!["d1", "d2"], 0..=2),
            d2 in classification(),
            ceiling in classification(),
            experiment in prop::option::weighted(0.9, (classification(), status(), prop::sample::select(vec!["t", "t", "u"]))),
            req_experiment in name_or_junk(vec!["exp-1", "exp-2"]),
            req_profile in name_or_junk(vec!["p", "q"]),
            c in prop_oneof![2 => Just(Classification::Official), 1 => classification()],
            ttl in prop::option::of(prop_oneof![0u64..20_000, any::<u64>(), Just(crate::time::LONGEST.as_secs())]),
            image in prop::option::of(name_or_junk(vec!["img:1", "img:2", "other:3", "evil:latest"])),
            datasets in prop::collection::vec(name_or_junk(vec!["d1", "d2", "d3"]), 0..3),
            elapsed in 0u64..40_000,
            ext_ttl in prop_oneof![0u64..20_000, Just(crate::time::LONGEST.as_secs())],
        ) {
            let Some(profile) = written_profile(prof_max, requires_approval, &images, &lifetime, &prof_datasets, d2)
            else {
                return Ok(());
            };
            let profiles = ProfileSet::from_profiles([profile.clone()]);
            let host = HostPolicy { max_classification: ceiling, datasets: host_datasets(d2), min_ttl: Duration::ZERO, minimum_isolation: Default::default(), refuse_overdue_risk: None, dpia_required: None };
            let experiment = experiment.map(|(declared, status, team)| {
                let mut e = exp(declared, status);
                e.team = team.into();
                e
            });
            let r = CreateSandbox {
                experiment: req_experiment,
                profile: req_profile,
                classification: c,
                ttl: ttl.map(Duration::from_secs),
                image,
                datasets,
                resources: Default::default(),
            };
            let now = SystemTime::now();
            match admit(&r, "alice", "t", experiment.as_ref(), &profiles, &host, now) {
                Ok(plan) => {
                    let e = experiment.as_ref().unwrap();
                    prop_assert!(r.validate().is_ok() && r.profile == "p");
                    prop_assert_eq!(plan.classification, c);
                    prop_assert!(c <= ceiling && c <= profile.max_classification && c <= e.classification);
                    prop_assert_eq!(e.team.as_str(), "t");
                    prop_assert!(matches!(e.status, Status::Proposed | Status::Approved));
                    if c >= Classification::OfficialSensitive || profile.requires_approval {
                        prop_assert_eq!(e.status, Status::Approved);
                    }
                    prop_assert!(profile.images.contains(&plan.image));
                    prop_assert_eq!(plan.image == profile.images[0], r.image.as_ref().is_none_or(|i| *i == profile.images[0]));
                    for m in &plan.datasets {
                        prop_assert!(profile.datasets.contains(&m.name));
                        let d = host.datasets.iter().find(|d| d.name == m.name).unwrap();
                        prop_assert!(d.classification <= c && m.source == d.path);
                    }
                    prop_assert!(plan.datasets.iter().enumerate().all(|(i, m)| plan.datasets[..i].iter().all(|o| o.name != m.name)));
                    let ttl = plan.expires_at.duration_since(now).unwrap();
                    prop_assert!(!ttl.is_zero() && ttl <= profile.lifetime.max_ttl);
                    prop_assert_eq!(plan.max_expires_at, now + profile.lifetime.max_lifetime);
                    prop_assert!(plan.expires_at <= plan.max_expires_at);
                    // The deadlines go into labels and logs.
                    crate::time::rfc3339(plan.max_expires_at);

                    // Any later extension stays within the same limits.
                    let later = now + Duration::from_secs(elapsed);
                    match extend_deadline(&plan.profile, plan.max_expires_at, Duration::from_secs(ext_ttl), later) {
                        Ok(new) => {
                            prop_assert!(new > later && new <= plan.max_expires_at);
                            prop_assert!(new.duration_since(later).unwrap() <= profile.lifetime.max_ttl);
                        }
                        Err(e) => {
                            check_refusal(&e)?;
                            if let Error::Denied { rule, .. } = e {
                                prop_assert!(matches!(rule, Rule::Ttl | Rule::MaxLifetime), "{rule}");
                            }
                        }
                    }
                }
                Err(e) => {
                    check_refusal(&e)?;
                    if let Error::Denied { rule, .. } = &e {
                        prop_assert!(r.validate().is_ok() && r.profile == "p");
                        prop_assert!(c > ceiling || *rule != Rule::HostCeiling);
                    }
                    if r.validate().is_ok() && r.profile == "p" && c > ceiling {
                        prop_assert!(matches!(e, Error::Denied { rule: Rule::HostCeiling, .. }), "{}", e);
                    }
                }
            }
        }
    }
}
