//! The AI register: one entry per proof-of-concept, fields aligned with the UK
//! Algorithmic Transparency Recording Standard where they overlap (owner,
//! purpose, tools and models, data, risks). Pure: the rules of status changes
//! live here; storage and audit are the lifecycle manager's. Sign-offs by
//! function, risks that live and impact assessments are in [`governance`].

pub mod governance;

use std::collections::BTreeMap;

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub use governance::{
    Assessment, AssessmentKind, AssessmentStatus, Governance, ReviewCadence, RiskChange, RiskStatus, RiskUpdate,
    SignOff,
};

use crate::error::quoted;
use crate::policy::admission::validate_name;
use crate::policy::Classification;
use crate::{Error, Result};

const MAX_TEXT: usize = 4000;
pub(crate) const MAX_LIST: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Proposed,
    Approved,
    Rejected,
    Closed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Proposed => "proposed",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExperimentOutcome {
    Succeeded,
    Failed,
    Abandoned,
}

impl ExperimentOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ExperimentOutcome::Succeeded => "succeeded",
            ExperimentOutcome::Failed => "failed",
            ExperimentOutcome::Abandoned => "abandoned",
        }
    }
}

/// Likelihood and impact of a risk, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Low,
    Medium,
    High,
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "low" => Ok(Level::Low),
            "medium" => Ok(Level::Medium),
            "high" => Ok(Level::High),
            _ => Err(format!("{} is not low, medium or high", crate::error::quoted(s))),
        }
    }
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Low => "low",
            Level::Medium => "medium",
            Level::High => "high",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Risk {
    /// `r1`, `r2`, ... in the order recorded (set by the register).
    #[serde(default)]
    pub id: String,
    pub description: String,
    pub likelihood: Level,
    pub impact: Level,
    pub mitigation: String,
    pub owner: String,
    #[serde(default)]
    pub status: RiskStatus,
    /// When its next review falls due; none once closed.
    #[serde(default)]
    pub review_by: Option<SystemTime>,
    /// Every change and review, oldest first.
    #[serde(default)]
    pub history: Vec<RiskUpdate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Approved,
    Rejected,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub approver: String,
    pub approver_team: String,
    pub time: SystemTime,
    pub decision: Decision,
    pub conditions: String,
    /// The function signed for; empty where none was required.
    #[serde(default)]
    pub function: String,
}

/// What an experiment's team learnt, recorded when it closes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lessons {
    /// The summary (required).
    pub summary: String,
    pub what_worked: String,
    pub what_did_not: String,
    /// Reusable artefacts: repositories, notebooks, documents.
    pub artefacts: Vec<String>,
}

impl Lessons {
    pub fn summary(s: &str) -> Lessons {
        Lessons { summary: s.to_string(), ..Default::default() }
    }
}

/// The transparency fields the register keeps for the ATRS record, beyond
/// what registration asks for. Each `None` stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transparency {
    pub senior_responsible_owner: Option<String>,
    pub phase: Option<String>,
    pub function: Option<String>,
    pub region: Option<String>,
    /// Other ATRS fields by the standard's name; an empty value removes one.
    pub fields: BTreeMap<String, String>,
}

/// What a requester registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewExperiment {
    pub title: String,
    pub purpose: String,
    pub ai_tools: Vec<String>,
    pub models: Vec<String>,
    pub classification: Classification,
    pub datasets: Vec<String>,
    pub risks: Vec<Risk>,
    pub planned_end: Option<SystemTime>,
    /// Transparency fields (ATRS) known at registration.
    pub senior_responsible_owner: String,
    pub phase: String,
    pub function: String,
    pub region: String,
}

pub(crate) fn text(field: &'static str, value: &str, required: bool) -> Result<()> {
    if required && value.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_TEXT {
        return Err(Error::invalid(field, format!("longer than {MAX_TEXT} characters")));
    }
    Ok(())
}

fn list(field: &'static str, values: &[String]) -> Result<()> {
    if values.len() > MAX_LIST {
        return Err(Error::invalid(field, format!("more than {MAX_LIST} entries")));
    }
    for v in values {
        if v.trim().is_empty() || v.len() > 256 {
            return Err(Error::invalid(field, format!("{} must be 1-256 characters", crate::error::quoted(v))));
        }
    }
    Ok(())
}

/// A one-line transparency field: at most 256 characters.
fn short(field: &'static str, value: &str) -> Result<()> {
    if value.len() > 256 || value.contains(['\n', '\r']) {
        return Err(Error::invalid(field, "must be one line of at most 256 characters"));
    }
    Ok(())
}

impl NewExperiment {
    pub fn validate(&self, now: SystemTime) -> Result<()> {
        text("title", &self.title, true)?;
        if self.title.len() > 200 {
            return Err(Error::invalid("title", "longer than 200 characters"));
        }
        text("purpose", &self.purpose, true)?;
        list("ai_tools", &self.ai_tools)?;
        list("models", &self.models)?;
        list("datasets", &self.datasets)?;
        if self.risks.len() > MAX_LIST {
            return Err(Error::invalid("risks", format!("more than {MAX_LIST} entries")));
        }
        for r in &self.risks {
            r.validate()?;
        }
        short("senior_responsible_owner", &self.senior_responsible_owner)?;
        short("phase", &self.phase)?;
        short("function", &self.function)?;
        short("region", &self.region)?;
        if self.planned_end.is_some_and(|t| t <= now) {
            return Err(Error::invalid("planned_end", "must be in the future"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Experiment {
    pub id: String,
    pub title: String,
    pub team: String,
    pub owner: String,
    pub purpose: String,
    pub ai_tools: Vec<String>,
    pub models: Vec<String>,
    /// Declared data classification: the highest any of its sandboxes may carry.
    pub classification: Classification,
    pub datasets: Vec<String>,
    pub risks: Vec<Risk>,
    pub status: Status,
    pub approvals: Vec<Approval>,
    pub outcome: Option<ExperimentOutcome>,
    pub lessons_learnt: String,
    pub created_at: SystemTime,
    pub planned_end: Option<SystemTime>,
    pub closed_at: Option<SystemTime>,
    /// Who closed it, and their team.
    #[serde(default)]
    pub closed_by: String,
    #[serde(default)]
    pub closed_by_team: String,
    /// Functions that must sign off (the host policy for its classification
    /// when it was registered or last signed).
    #[serde(default)]
    pub required_functions: Vec<String>,
    #[serde(default)]
    pub assessments: Vec<governance::Assessment>,
    /// Transparency fields (ATRS): the senior responsible owner (a role
    /// title), phase, the public-sector function served, region.
    #[serde(default)]
    pub senior_responsible_owner: String,
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub function: String,
    #[serde(default)]
    pub region: String,
    /// Other ATRS fields, by the standard's name.
    #[serde(default)]
    pub transparency: BTreeMap<String, String>,
    #[serde(default)]
    pub what_worked: String,
    #[serde(default)]
    pub what_did_not: String,
    #[serde(default)]
    pub artefacts: Vec<String>,
    /// Bumped by the store on every write: a decision or close is written
    /// only if nothing else wrote the record since it was read, so racing
    /// decisions cannot both succeed.
    #[serde(default)]
    pub version: u64,
}

impl Experiment {
    /// A new experiment id: `exp-` and 10 random hex digits.
    pub fn new_id() -> String {
        crate::sandbox::random_id::<5>("exp")
    }

    pub fn new(id: String, owner: &str, team: &str, n: NewExperiment, now: SystemTime) -> Result<Experiment> {
        n.validate(now)?;
        validate_name("id", &id)?;
        let mut risks = n.risks;
        for (i, r) in risks.iter_mut().enumerate() {
            r.id = format!("r{}", i + 1);
            r.status = RiskStatus::Open;
            r.review_by = None;
            r.history = vec![RiskUpdate {
                by: owner.to_string(),
                team: team.to_string(),
                time: now,
                changes: "recorded".into(),
                reason: "registered".into(),
            }];
        }
        Ok(Experiment {
            id,
            title: n.title,
            team: team.to_string(),
            owner: owner.to_string(),
            purpose: n.purpose,
            ai_tools: n.ai_tools,
            models: n.models,
            classification: n.classification,
            datasets: n.datasets,
            risks,
            status: Status::Proposed,
            approvals: Vec::new(),
            outcome: None,
            lessons_learnt: String::new(),
            created_at: now,
            planned_end: n.planned_end,
            closed_at: None,
            closed_by: String::new(),
            closed_by_team: String::new(),
            required_functions: Vec::new(),
            assessments: Vec::new(),
            senior_responsible_owner: n.senior_responsible_owner,
            phase: n.phase,
            function: n.function,
            region: n.region,
            transparency: BTreeMap::new(),
            what_worked: String::new(),
            what_did_not: String::new(),
            artefacts: Vec::new(),
            version: 0,
        })
    }

    /// Sets the first review date of risks that have none (at registration).
    pub fn schedule_reviews(&mut self, cadence: &ReviewCadence, now: SystemTime) {
        for r in self.risks.iter_mut().filter(|r| r.review_by.is_none() && r.status != RiskStatus::Closed) {
            r.review_by = Some(now + cadence.of(r.impact));
        }
    }

    /// Changes the transparency fields; `known` says whether a name is an
    /// ATRS field the register keeps in `transparency`. Returns the names changed.
    pub fn update_transparency(&mut self, t: Transparency, known: impl Fn(&str) -> bool) -> Result<Vec<String>> {
        self.changeable("record")?;
        let mut changed = Vec::new();
        for (name, field, value) in [
            ("senior_responsible_owner", &mut self.senior_responsible_owner, t.senior_responsible_owner),
            ("phase", &mut self.phase, t.phase),
            ("function", &mut self.function, t.function),
            ("region", &mut self.region, t.region),
        ] {
            if let Some(v) = value {
                short(name, &v)?;
                if *field != v {
                    *field = v;
                    changed.push(name.to_string());
                }
            }
        }
        for (name, value) in t.fields {
            if !known(&name) {
                return Err(Error::invalid(
                    "transparency",
                    format!(
                        "{} is not an ATRS field the register keeps (see docs/atrs/atrs-v3-fields.json)",
                        quoted(&name)
                    ),
                ));
            }
            text("transparency", &value, false)?;
            let old = if value.is_empty() {
                self.transparency.remove(&name)
            } else {
                self.transparency.insert(name.clone(), value.clone())
            };
            if old.as_deref() != Some(value.as_str()).filter(|v| !v.is_empty()) {
                changed.push(name);
            }
        }
        if self.transparency.len() > 128 {
            return Err(Error::invalid("transparency", "more than 128 fields"));
        }
        Ok(changed)
    }

    /// Refuses a change to `what` (its record, risks, assessments) once the experiment is closed.
    fn changeable(&self, what: &str) -> Result<()> {
        if self.status == Status::Closed {
            return Err(Error::FailedPrecondition(format!(
                "experiment '{}' is closed; its {what} can no longer change",
                self.id
            )));
        }
        Ok(())
    }

    /// Closes the experiment with its outcome and lessons learnt, recording who closed it.
    pub fn close(
        &mut self,
        by: &str,
        by_team: &str,
        outcome: ExperimentOutcome,
        lessons: Lessons,
        now: SystemTime,
    ) -> Result<()> {
        text("lessons_learnt", &lessons.summary, true)?;
        text("what_worked", &lessons.what_worked, false)?;
        text("what_did_not", &lessons.what_did_not, false)?;
        list("artefacts", &lessons.artefacts)?;
        if self.status == Status::Closed {
            return Err(Error::FailedPrecondition(format!("experiment '{}' is already closed", self.id)));
        }
        self.status = Status::Closed;
        self.outcome = Some(outcome);
        self.lessons_learnt = lessons.summary;
        self.what_worked = lessons.what_worked;
        self.what_did_not = lessons.what_did_not;
        self.artefacts = lessons.artefacts;
        self.closed_at = Some(now);
        self.closed_by = by.to_string();
        self.closed_by_team = by_team.to_string();
        Ok(())
    }

    /// Whether sandboxes may exist for this experiment at all: proposed
    /// (at OFFICIAL, or from profiles that need no approval) or approved.
    pub fn may_have_sandboxes(&self) -> bool {
        matches!(self.status, Status::Proposed | Status::Approved)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::policy::Rule;

    pub(crate) fn new(c: Classification) -> NewExperiment {
        NewExperiment {
            title: "Census text classification".into(),
            purpose: "Classify free-text occupation answers".into(),
            ai_tools: vec!["scikit-learn".into()],
            models: vec![],
            classification: c,
            datasets: vec![],
            risks: vec![Risk::new(
                "misclassification".into(),
                Level::Medium,
                Level::Low,
                "human review".into(),
                "alice".into(),
            )],
            planned_end: None,
            senior_responsible_owner: String::new(),
            phase: String::new(),
            function: String::new(),
            region: String::new(),
        }
    }

    #[test]
    fn lifecycle_of_an_experiment() {
        let now = SystemTime::now();
        let mut e = Experiment::new("exp-1".into(), "alice", "a", new(Classification::OfficialSensitive), now).unwrap();
        assert_eq!(e.status, Status::Proposed);
        let sign = |who, team, decision, conditions: &str| SignOff {
            approver: who,
            team,
            functions: &[],
            function: "",
            decision,
            conditions: conditions.into(),
        };
        let self_approval = e.sign_off(sign("amy", "a", Decision::Approved, ""), &[], now).unwrap_err();
        assert!(matches!(self_approval, Error::Denied { rule: Rule::SelfApproval, .. }));
        e.sign_off(sign("zed", "alg", Decision::Approved, "review monthly"), &[], now).unwrap();
        assert_eq!(e.status, Status::Approved);
        assert_eq!(e.approvals[0].conditions, "review monthly");
        assert!(matches!(
            e.sign_off(sign("zed", "alg", Decision::Rejected, ""), &[], now),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(matches!(
            e.close("zed", "alg", ExperimentOutcome::Succeeded, Lessons::summary(""), now),
            Err(Error::InvalidArgument { field: "lessons_learnt", .. })
        ));
        let lessons = Lessons {
            summary: "works".into(),
            what_worked: "embeddings".into(),
            what_did_not: "rules".into(),
            artefacts: vec!["git://notebooks".into()],
        };
        e.close("zed", "alg", ExperimentOutcome::Succeeded, lessons, now).unwrap();
        assert_eq!((e.status, e.outcome), (Status::Closed, Some(ExperimentOutcome::Succeeded)));
        assert_eq!((e.closed_by.as_str(), e.closed_by_team.as_str()), ("zed", "alg"));
        assert_eq!((e.what_worked.as_str(), e.artefacts.len()), ("embeddings", 1));
        assert!(e.close("zed", "alg", ExperimentOutcome::Failed, Lessons::summary("again"), now).is_err());
    }

    #[test]
    fn registration_is_validated() {
        let now = SystemTime::now();
        let mut n = new(Classification::Official);
        n.title = " ".into();
        assert!(matches!(n.validate(now), Err(Error::InvalidArgument { field: "title", .. })));
        let mut n = new(Classification::Official);
        n.purpose.clear();
        assert!(matches!(n.validate(now), Err(Error::InvalidArgument { field: "purpose", .. })));
        let mut n = new(Classification::Official);
        n.risks[0].description.clear();
        assert!(matches!(n.validate(now), Err(Error::InvalidArgument { field: "risks.description", .. })));
        let mut n = new(Classification::Official);
        n.planned_end = Some(now - std::time::Duration::from_secs(1));
        assert!(matches!(n.validate(now), Err(Error::InvalidArgument { field: "planned_end", .. })));
        assert_eq!("High".parse::<Level>().unwrap(), Level::High);
        assert!("severe".parse::<Level>().is_err());
    }
}
