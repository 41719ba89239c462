//! The governance the AI Leadership Group runs in the register: sign-offs
//! by function, risks that live (owner, status, review dates, history) and
//! impact assessments. Pure, as the rest of the register: the host policy
//! ([`Governance`]) comes from config; storage and audit are the manager's.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{text, Decision, Experiment, Level, Risk, Status};
use crate::error::quoted;
use crate::policy::{Classification, Rule};
use crate::{Error, Result};

/// How often a risk's review falls due, by its impact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReviewCadence {
    pub low: Duration,
    pub medium: Duration,
    pub high: Duration,
}

impl ReviewCadence {
    pub fn of(&self, impact: Level) -> Duration {
        match impact {
            Level::Low => self.low,
            Level::Medium => self.medium,
            Level::High => self.high,
        }
    }
}

impl Default for ReviewCadence {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        ReviewCadence {
            low: Duration::from_secs(180 * DAY),
            medium: Duration::from_secs(90 * DAY),
            high: Duration::from_secs(30 * DAY),
        }
    }
}

/// The host's governance policy (config `[governance]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Governance {
    /// The functions approvers sign for (e.g. ethics, data-protection,
    /// legal, security), as the operator names them.
    pub functions: Vec<String>,
    /// Functions that must sign off, per classification: an entry holds for
    /// its classification and every one above it (their lists add up). A
    /// classification that needs none is approved by one approver of
    /// another team, whatever their function.
    pub sign_offs: BTreeMap<Classification, Vec<String>>,
    pub review: ReviewCadence,
}

impl Governance {
    /// The functions that must sign off an experiment at `c`, in the order configured.
    pub fn required(&self, c: Classification) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for f in self.sign_offs.range(..=c).flat_map(|(_, fs)| fs) {
            if !out.contains(f) {
                out.push(f.clone());
            }
        }
        out
    }
}

/// Who signs, for which function, and what they decide.
#[derive(Debug, Clone)]
pub struct SignOff<'a> {
    pub approver: &'a str,
    pub team: &'a str,
    /// The functions the approver may sign for.
    pub functions: &'a [String],
    /// The function asked for; empty to let the daemon choose the one the
    /// approver can sign for, when there is exactly one.
    pub function: &'a str,
    pub decision: Decision,
    pub conditions: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RiskStatus {
    #[default]
    Open,
    Mitigated,
    Accepted,
    Closed,
}

impl RiskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RiskStatus::Open => "open",
            RiskStatus::Mitigated => "mitigated",
            RiskStatus::Accepted => "accepted",
            RiskStatus::Closed => "closed",
        }
    }
}

impl FromStr for RiskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "open" => Ok(RiskStatus::Open),
            "mitigated" => Ok(RiskStatus::Mitigated),
            "accepted" => Ok(RiskStatus::Accepted),
            "closed" => Ok(RiskStatus::Closed),
            _ => Err(format!("{} is not open, mitigated, accepted or closed", quoted(s))),
        }
    }
}

impl fmt::Display for RiskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change or review of a risk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskUpdate {
    pub by: String,
    pub team: String,
    pub time: SystemTime,
    /// What changed ("status open -> mitigated; impact high -> medium"), or "reviewed".
    pub changes: String,
    pub reason: String,
}

/// A change to a risk: each field left `None` stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RiskChange {
    pub status: Option<RiskStatus>,
    pub likelihood: Option<Level>,
    pub impact: Option<Level>,
    pub mitigation: Option<String>,
    pub owner: Option<String>,
    /// Why: required, as every change is also a review.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssessmentKind {
    /// Data protection impact assessment.
    Dpia,
    EqualityImpact,
    SecurityRisk,
}

impl AssessmentKind {
    pub const ALL: [AssessmentKind; 3] =
        [AssessmentKind::Dpia, AssessmentKind::EqualityImpact, AssessmentKind::SecurityRisk];

    pub fn as_str(self) -> &'static str {
        match self {
            AssessmentKind::Dpia => "dpia",
            AssessmentKind::EqualityImpact => "equality-impact",
            AssessmentKind::SecurityRisk => "security-risk",
        }
    }

    /// The title an ATRS record or a report gives it.
    pub fn title(self) -> &'static str {
        match self {
            AssessmentKind::Dpia => "Data Protection Impact Assessment",
            AssessmentKind::EqualityImpact => "Equality Impact Assessment",
            AssessmentKind::SecurityRisk => "Security Risk Assessment",
        }
    }
}

impl FromStr for AssessmentKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        AssessmentKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("{} is not dpia, equality-impact or security-risk", quoted(&s)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssessmentStatus {
    NotStarted,
    InProgress,
    Completed,
    NotRequired,
}

impl AssessmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AssessmentStatus::NotStarted => "not-started",
            AssessmentStatus::InProgress => "in-progress",
            AssessmentStatus::Completed => "completed",
            AssessmentStatus::NotRequired => "not-required",
        }
    }
}

impl FromStr for AssessmentStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "not-started" => Ok(AssessmentStatus::NotStarted),
            "in-progress" => Ok(AssessmentStatus::InProgress),
            "completed" => Ok(AssessmentStatus::Completed),
            "not-required" => Ok(AssessmentStatus::NotRequired),
            _ => Err(format!("{} is not not-started, in-progress, completed or not-required", quoted(s))),
        }
    }
}

/// An impact assessment on record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assessment {
    pub kind: AssessmentKind,
    pub status: AssessmentStatus,
    /// Where it is kept: a document reference or URL.
    pub reference: String,
    /// When it was completed (or last changed).
    pub date: SystemTime,
    pub recorded_by: String,
    pub recorded_at: SystemTime,
}

impl Experiment {
    /// The required functions that have not signed off yet.
    pub fn pending_functions(&self) -> Vec<&str> {
        self.required_functions.iter().filter(|f| !self.signed_for(f)).map(String::as_str).collect()
    }

    fn signed_for(&self, function: &str) -> bool {
        self.approvals.iter().any(|a| a.function == function && a.decision == Decision::Approved)
    }

    /// A sign-off by one approver for one function, under the host policy's
    /// `required` functions for the experiment's classification. Only
    /// proposed experiments are signed off, never by an approver of the
    /// experiment's own team. An approval counts for its function; the
    /// experiment is approved once every required function has approved
    /// (or at once when none is required). A rejection by any of them
    /// rejects it. A function signs off once: a second sign-off for it
    /// changes nothing and is refused.
    pub fn sign_off(&mut self, s: SignOff<'_>, required: &[String], now: SystemTime) -> Result<()> {
        text("conditions", &s.conditions, false)?;
        if s.team == self.team {
            return Err(Error::denied(
                Rule::SelfApproval,
                format!(
                    "{} is in team '{}', whose experiment this is; another team's approver must decide",
                    s.approver, self.team
                ),
            ));
        }
        if self.status != Status::Proposed {
            return Err(Error::FailedPrecondition(format!(
                "experiment '{}' is {}; only proposed experiments can be approved or rejected",
                self.id,
                self.status.as_str()
            )));
        }
        self.required_functions = required.to_vec();
        let function = self.function_signed_for(&s)?;
        if s.decision == Decision::Approved && !function.is_empty() {
            if let Some(a) = self.approvals.iter().find(|a| a.function == function && a.decision == Decision::Approved)
            {
                return Err(Error::FailedPrecondition(format!(
                    "{function} already signed off experiment '{}' ({} at {}); nothing was changed",
                    self.id,
                    a.approver,
                    crate::time::rfc3339(a.time)
                )));
            }
        }
        self.approvals.push(super::Approval {
            approver: s.approver.to_string(),
            approver_team: s.team.to_string(),
            time: now,
            decision: s.decision,
            conditions: s.conditions,
            function,
        });
        self.status = match s.decision {
            Decision::Rejected => Status::Rejected,
            Decision::Approved if self.pending_functions().is_empty() => Status::Approved,
            Decision::Approved => Status::Proposed,
        };
        Ok(())
    }

    /// The function a sign-off counts for: the one asked for, which the
    /// approver must hold and the classification must need; or, when none
    /// was asked for, the one function the approver holds among those still
    /// to sign (none at all where no function is required).
    fn function_signed_for(&self, s: &SignOff<'_>) -> Result<String> {
        let required = &self.required_functions;
        let function = s.function.trim();
        if !function.is_empty() {
            if !s.functions.iter().any(|f| f == function) {
                let holds = if s.functions.is_empty() { "none".to_string() } else { s.functions.join(", ") };
                return Err(Error::denied(
                    Rule::SignOffFunction,
                    format!("{} does not sign for {} (signs for: {holds})", s.approver, quoted(function)),
                ));
            }
            if !required.is_empty() && !required.iter().any(|f| f == function) {
                return Err(Error::invalid(
                    "function",
                    format!(
                        "{} is not a function {} needs to sign off (required: {})",
                        quoted(function),
                        self.classification,
                        required.join(", ")
                    ),
                ));
            }
            return Ok(function.to_string());
        }
        if required.is_empty() {
            // Any approver decides; one function on record if they hold just one.
            return Ok(match s.functions {
                [only] => only.clone(),
                _ => String::new(),
            });
        }
        let pending = self.pending_functions();
        let candidates: Vec<&String> = s.functions.iter().filter(|f| required.contains(f)).collect();
        let open: Vec<&&String> = candidates.iter().filter(|f| pending.contains(&f.as_str())).collect();
        match (candidates.as_slice(), open.as_slice()) {
            ([], _) => Err(Error::denied(
                Rule::SignOffFunction,
                format!(
                    "{} needs sign-off by {}; {} signs for {}",
                    self.classification,
                    required.join(" and "),
                    s.approver,
                    if s.functions.is_empty() { "no function".to_string() } else { s.functions.join(", ") }
                ),
            )),
            ([only], _) => Ok((*only).clone()),
            (_, [only]) => Ok((**only).clone()),
            _ => Err(Error::invalid(
                "function",
                format!(
                    "{} signs for {}: say which (still to sign: {})",
                    s.approver,
                    candidates.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", "),
                    pending.join(", ")
                ),
            )),
        }
    }

    /// Adds a risk: open, its first review due after the cadence for its
    /// impact. Returns its id.
    pub fn add_risk(
        &mut self,
        mut risk: Risk,
        by: (&str, &str),
        reason: &str,
        cadence: &ReviewCadence,
        now: SystemTime,
    ) -> Result<String> {
        self.changeable("risks")?;
        risk.validate()?;
        text("reason", reason, false)?;
        if self.risks.len() >= super::MAX_LIST {
            return Err(Error::invalid("risks", format!("more than {} entries", super::MAX_LIST)));
        }
        risk.id = format!("r{}", self.risks.len() + 1);
        risk.status = RiskStatus::Open;
        risk.review_by = Some(now + cadence.of(risk.impact));
        risk.history = vec![RiskUpdate {
            by: by.0.to_string(),
            team: by.1.to_string(),
            time: now,
            changes: "recorded".into(),
            reason: reason.to_string(),
        }];
        let id = risk.id.clone();
        self.risks.push(risk);
        Ok(id)
    }

    /// Changes or reviews risk `id`: every call records who, when, what
    /// changed and why, and sets the next review from the (new) impact;
    /// a closed risk has none. Returns what changed.
    pub fn update_risk(
        &mut self,
        id: &str,
        change: RiskChange,
        by: (&str, &str),
        cadence: &ReviewCadence,
        now: SystemTime,
    ) -> Result<String> {
        self.changeable("risks")?;
        text("reason", &change.reason, true)?;
        if let Some(m) = &change.mitigation {
            text("mitigation", m, false)?;
        }
        if let Some(o) = &change.owner {
            text("owner", o, false)?;
        }
        let experiment = self.id.clone();
        let risk = self
            .risks
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or_else(|| Error::not_found("risk", format!("{id} of experiment '{experiment}'")))?;
        if risk.history.len() >= MAX_HISTORY {
            return Err(Error::FailedPrecondition(format!(
                "risk '{id}' has {MAX_HISTORY} updates on record; record a new risk instead"
            )));
        }
        let mut changes = Vec::new();
        fn set<T: PartialEq + fmt::Display>(name: &str, field: &mut T, to: Option<T>, changes: &mut Vec<String>) {
            if let Some(to) = to.filter(|to| to != field) {
                changes.push(format!("{name} {field} -> {to}"));
                *field = to;
            }
        }
        set("status", &mut risk.status, change.status, &mut changes);
        set("likelihood", &mut risk.likelihood, change.likelihood, &mut changes);
        set("impact", &mut risk.impact, change.impact, &mut changes);
        if let Some(m) = change.mitigation.filter(|m| *m != risk.mitigation) {
            changes.push("mitigation changed".into());
            risk.mitigation = m;
        }
        if let Some(o) = change.owner.filter(|o| *o != risk.owner) {
            changes.push(format!("owner {} -> {o}", if risk.owner.is_empty() { "none" } else { &risk.owner }));
            risk.owner = o;
        }
        let changes = if changes.is_empty() { "reviewed".to_string() } else { changes.join("; ") };
        risk.review_by = (risk.status != RiskStatus::Closed).then(|| now + cadence.of(risk.impact));
        risk.history.push(RiskUpdate {
            by: by.0.to_string(),
            team: by.1.to_string(),
            time: now,
            changes: changes.clone(),
            reason: change.reason,
        });
        Ok(changes)
    }

    /// Risks not closed whose review date has passed.
    pub fn overdue_risks(&self, now: SystemTime) -> impl Iterator<Item = &Risk> {
        self.risks.iter().filter(move |r| r.overdue(now))
    }

    /// Records an impact assessment, replacing any of the same kind. A
    /// completed one needs its reference.
    pub fn record_assessment(&mut self, a: Assessment) -> Result<()> {
        self.changeable("assessments")?;
        text("reference", &a.reference, a.status == AssessmentStatus::Completed)?;
        if a.reference.len() > 1024 {
            return Err(Error::invalid("reference", "longer than 1024 characters"));
        }
        self.assessments.retain(|x| x.kind != a.kind);
        self.assessments.push(a);
        self.assessments.sort_by_key(|x| x.kind);
        Ok(())
    }

    /// Whether the assessment of `kind` is completed.
    pub fn completed(&self, kind: AssessmentKind) -> bool {
        self.assessments.iter().any(|a| a.kind == kind && a.status == AssessmentStatus::Completed)
    }
}

/// The most updates one risk keeps (each is a review; a risk reviewed
/// weekly for years stays well under it).
const MAX_HISTORY: usize = 1000;

impl Risk {
    /// A risk as registered: open, reviews not yet scheduled.
    pub fn new(description: String, likelihood: Level, impact: Level, mitigation: String, owner: String) -> Risk {
        Risk {
            id: String::new(),
            description,
            likelihood,
            impact,
            mitigation,
            owner,
            status: RiskStatus::Open,
            review_by: None,
            history: Vec::new(),
        }
    }

    pub(super) fn validate(&self) -> Result<()> {
        text("risks.description", &self.description, true)?;
        text("risks.mitigation", &self.mitigation, false)?;
        text("risks.owner", &self.owner, false)
    }

    /// Not closed, and its review date has passed.
    pub fn overdue(&self, now: SystemTime) -> bool {
        self.status != RiskStatus::Closed && self.review_by.is_some_and(|t| t < now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::register::{tests::new, ExperimentOutcome, Lessons};

    fn policy() -> Governance {
        Governance {
            functions: ["ethics", "data-protection", "legal", "security"].map(String::from).to_vec(),
            sign_offs: [
                (Classification::Official, vec!["ethics".to_string()]),
                (Classification::OfficialSensitive, vec!["data-protection".to_string(), "security".to_string()]),
            ]
            .into_iter()
            .collect(),
            review: ReviewCadence::default(),
        }
    }

    fn fs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn sign<'a>(who: &'a str, functions: &'a [String], function: &'a str, d: Decision) -> SignOff<'a> {
        SignOff { approver: who, team: "alg", functions, function, decision: d, conditions: String::new() }
    }

    #[test]
    fn required_functions_add_up_from_the_classification_down() {
        let g = policy();
        assert_eq!(g.required(Classification::Official), fs(&["ethics"]));
        assert_eq!(g.required(Classification::OfficialSensitive), fs(&["ethics", "data-protection", "security"]));
        assert_eq!(g.required(Classification::Secret), g.required(Classification::OfficialSensitive));
        assert!(Governance::default().required(Classification::Secret).is_empty());
    }

    #[test]
    fn approved_only_once_every_required_function_has_signed() {
        let now = SystemTime::now();
        let required = fs(&["data-protection", "security"]);
        let mut e = Experiment::new("exp-1".into(), "a", "team", new(Classification::OfficialSensitive), now).unwrap();
        let dp = fs(&["data-protection"]);
        let sec = fs(&["security"]);
        e.sign_off(sign("dora", &dp, "", Decision::Approved), &required, now).unwrap();
        assert_eq!((e.status, e.pending_functions()), (Status::Proposed, vec!["security"]));
        // The same function again changes nothing.
        let again = e.sign_off(sign("dan", &dp, "data-protection", Decision::Approved), &required, now);
        assert!(matches!(again, Err(Error::FailedPrecondition(_))), "{again:?}");
        assert_eq!(e.approvals.len(), 1);
        // A function the approver does not hold is refused by rule.
        let not_held = e.sign_off(sign("dora", &dp, "security", Decision::Approved), &required, now).unwrap_err();
        assert!(matches!(not_held, Error::Denied { rule: Rule::SignOffFunction, .. }));
        // A function the classification does not need names the field.
        let legal = fs(&["legal"]);
        let unneeded = e.sign_off(sign("lee", &legal, "legal", Decision::Approved), &required, now).unwrap_err();
        assert!(matches!(unneeded, Error::InvalidArgument { field: "function", .. }), "{unneeded:?}");
        e.sign_off(sign("sam", &sec, "", Decision::Approved), &required, now).unwrap();
        assert_eq!(e.status, Status::Approved);
        assert_eq!(
            e.approvals.iter().map(|a| a.function.as_str()).collect::<Vec<_>>(),
            ["data-protection", "security"]
        );
    }

    #[test]
    fn a_rejection_by_any_required_function_wins() {
        let now = SystemTime::now();
        let required = fs(&["data-protection", "security"]);
        let mut e = Experiment::new("exp-1".into(), "a", "team", new(Classification::OfficialSensitive), now).unwrap();
        e.sign_off(sign("dora", &fs(&["data-protection"]), "", Decision::Approved), &required, now).unwrap();
        e.sign_off(sign("sam", &fs(&["security"]), "", Decision::Rejected), &required, now).unwrap();
        assert_eq!(e.status, Status::Rejected);
        let late = e.sign_off(sign("sid", &fs(&["security"]), "", Decision::Approved), &required, now);
        assert!(matches!(late, Err(Error::FailedPrecondition(_))));
    }

    #[test]
    fn an_approver_of_two_functions_must_say_which() {
        let now = SystemTime::now();
        let required = fs(&["data-protection", "security"]);
        let both = fs(&["data-protection", "security"]);
        let mut e = Experiment::new("exp-1".into(), "a", "team", new(Classification::OfficialSensitive), now).unwrap();
        let vague = e.sign_off(sign("pat", &both, "", Decision::Approved), &required, now).unwrap_err();
        assert!(matches!(vague, Error::InvalidArgument { field: "function", .. }), "{vague:?}");
        e.sign_off(sign("pat", &both, "security", Decision::Approved), &required, now).unwrap();
        // Now only one is left for them: it is the one.
        e.sign_off(sign("pat", &both, "", Decision::Approved), &required, now).unwrap();
        assert_eq!(e.status, Status::Approved);
    }

    #[test]
    fn with_no_function_required_one_approver_decides() {
        let now = SystemTime::now();
        let mut e = Experiment::new("exp-1".into(), "a", "team", new(Classification::Official), now).unwrap();
        e.sign_off(sign("zed", &[], "", Decision::Approved), &[], now).unwrap();
        assert_eq!((e.status, e.approvals[0].function.as_str()), (Status::Approved, ""));
    }

    #[test]
    fn risks_live_with_owner_status_reviews_and_history() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let cadence = ReviewCadence {
            low: Duration::from_secs(300),
            medium: Duration::from_secs(200),
            high: Duration::from_secs(100),
        };
        let mut e = Experiment::new("exp-1".into(), "a", "team", new(Classification::Official), t0).unwrap();
        assert_eq!(e.risks[0].id, "r1");
        let risk = Risk::new("re-identification".into(), Level::Low, Level::High, "".into(), "alice".into());
        let id = e.add_risk(risk, ("alice", "team"), "found in testing", &cadence, t0).unwrap();
        assert_eq!(id, "r2");
        assert_eq!(e.risks[1].review_by, Some(t0 + Duration::from_secs(100)));
        let later = t0 + Duration::from_secs(101);
        assert_eq!(e.overdue_risks(later).map(|r| r.id.as_str()).collect::<Vec<_>>(), ["r2"]);
        let missing_reason = RiskChange::default();
        assert!(matches!(
            e.update_risk("r2", missing_reason, ("bob", "alg"), &cadence, later),
            Err(Error::InvalidArgument { field: "reason", .. })
        ));
        let change = RiskChange {
            status: Some(RiskStatus::Mitigated),
            impact: Some(Level::Medium),
            reason: "k-anonymity applied".into(),
            ..Default::default()
        };
        let what = e.update_risk("r2", change, ("bob", "alg"), &cadence, later).unwrap();
        assert_eq!(what, "status open -> mitigated; impact high -> medium");
        assert_eq!(e.risks[1].review_by, Some(later + Duration::from_secs(200)));
        assert_eq!(e.overdue_risks(later).count(), 0);
        let review = RiskChange { reason: "no change".into(), ..Default::default() };
        assert_eq!(e.update_risk("r2", review, ("bob", "alg"), &cadence, later).unwrap(), "reviewed");
        let close =
            RiskChange { status: Some(RiskStatus::Closed), reason: "data deleted".into(), ..Default::default() };
        e.update_risk("r2", close, ("bob", "alg"), &cadence, later).unwrap();
        assert_eq!(e.risks[1].review_by, None);
        assert_eq!(e.risks[1].history.len(), 4);
        assert!(matches!(
            e.update_risk("r9", RiskChange { reason: "x".into(), ..Default::default() }, ("b", "t"), &cadence, later),
            Err(Error::NotFound { .. })
        ));
        e.close("bob", "alg", ExperimentOutcome::Failed, Lessons::summary("done"), later).unwrap();
        let closed = e.add_risk(
            Risk::new("x".into(), Level::Low, Level::Low, "".into(), "".into()),
            ("a", "t"),
            "",
            &cadence,
            later,
        );
        assert!(matches!(closed, Err(Error::FailedPrecondition(_))));
    }

    #[test]
    fn assessments_are_recorded_one_per_kind() {
        let now = SystemTime::now();
        let mut e = Experiment::new("exp-1".into(), "a", "team", new(Classification::Official), now).unwrap();
        let a = |status, reference: &str| Assessment {
            kind: AssessmentKind::Dpia,
            status,
            reference: reference.into(),
            date: now,
            recorded_by: "alice".into(),
            recorded_at: now,
        };
        assert!(matches!(
            e.record_assessment(a(AssessmentStatus::Completed, "")),
            Err(Error::InvalidArgument { field: "reference", .. })
        ));
        e.record_assessment(a(AssessmentStatus::InProgress, "")).unwrap();
        assert!(!e.completed(AssessmentKind::Dpia));
        e.record_assessment(a(AssessmentStatus::Completed, "DPIA-2026-041")).unwrap();
        assert!(e.completed(AssessmentKind::Dpia));
        assert_eq!(e.assessments.len(), 1);
        assert_eq!("Equality-Impact".parse::<AssessmentKind>().unwrap(), AssessmentKind::EqualityImpact);
    }
}
