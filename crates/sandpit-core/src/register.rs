//! The AI register: one entry per proof-of-concept, fields aligned with the UK
//! Algorithmic Transparency Recording Standard where they overlap (owner,
//! purpose, tools and models, data, risks). Pure: the rules of status changes
//! live here; storage and audit are the lifecycle manager's.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::policy::admission::validate_name;
use crate::policy::{Classification, Rule};
use crate::{Error, Result};

const MAX_TEXT: usize = 4000;
const MAX_LIST: usize = 64;

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

/// Likelihood and impact of a risk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Low => "low",
            Level::Medium => "medium",
            Level::High => "high",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Risk {
    pub description: String,
    pub likelihood: Level,
    pub impact: Level,
    pub mitigation: String,
    pub owner: String,
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
}

fn text(field: &'static str, value: &str, required: bool) -> Result<()> {
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
            text("risks.description", &r.description, true)?;
            text("risks.mitigation", &r.mitigation, false)?;
            text("risks.owner", &r.owner, false)?;
        }
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
            risks: n.risks,
            status: Status::Proposed,
            approvals: Vec::new(),
            outcome: None,
            lessons_learnt: String::new(),
            created_at: now,
            planned_end: n.planned_end,
            closed_at: None,
            closed_by: String::new(),
            closed_by_team: String::new(),
            version: 0,
        })
    }

    /// An approver's decision. Only proposed experiments are decided, and
    /// never by an approver of the experiment's own team.
    pub fn decide(
        &mut self,
        approver: &str,
        approver_team: &str,
        decision: Decision,
        conditions: String,
        now: SystemTime,
    ) -> Result<()> {
        text("conditions", &conditions, false)?;
        if approver_team == self.team {
            return Err(Error::denied(
                Rule::SelfApproval,
                format!(
                    "{approver} is in team '{}', whose experiment this is; another team's approver must decide",
                    self.team
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
        self.status = match decision {
            Decision::Approved => Status::Approved,
            Decision::Rejected => Status::Rejected,
        };
        self.approvals.push(Approval {
            approver: approver.to_string(),
            approver_team: approver_team.to_string(),
            time: now,
            decision,
            conditions,
        });
        Ok(())
    }

    /// Closes the experiment with its outcome and lessons learnt, recording who closed it.
    pub fn close(
        &mut self,
        by: &str,
        by_team: &str,
        outcome: ExperimentOutcome,
        lessons_learnt: String,
        now: SystemTime,
    ) -> Result<()> {
        text("lessons_learnt", &lessons_learnt, true)?;
        if self.status == Status::Closed {
            return Err(Error::FailedPrecondition(format!("experiment '{}' is already closed", self.id)));
        }
        self.status = Status::Closed;
        self.outcome = Some(outcome);
        self.lessons_learnt = lessons_learnt;
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
mod tests {
    use super::*;

    fn new(c: Classification) -> NewExperiment {
        NewExperiment {
            title: "Census text classification".into(),
            purpose: "Classify free-text occupation answers".into(),
            ai_tools: vec!["scikit-learn".into()],
            models: vec![],
            classification: c,
            datasets: vec![],
            risks: vec![Risk {
                description: "misclassification".into(),
                likelihood: Level::Medium,
                impact: Level::Low,
                mitigation: "human review".into(),
                owner: "alice".into(),
            }],
            planned_end: None,
        }
    }

    #[test]
    fn lifecycle_of_an_experiment() {
        let now = SystemTime::now();
        let mut e = Experiment::new("exp-1".into(), "alice", "a", new(Classification::OfficialSensitive), now).unwrap();
        assert_eq!(e.status, Status::Proposed);
        let self_approval = e.decide("amy", "a", Decision::Approved, String::new(), now).unwrap_err();
        assert!(matches!(self_approval, Error::Denied { rule: Rule::SelfApproval, .. }));
        e.decide("zed", "alg", Decision::Approved, "review monthly".into(), now).unwrap();
        assert_eq!(e.status, Status::Approved);
        assert_eq!(e.approvals[0].conditions, "review monthly");
        assert!(matches!(
            e.decide("zed", "alg", Decision::Rejected, String::new(), now),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(matches!(
            e.close("zed", "alg", ExperimentOutcome::Succeeded, "".into(), now),
            Err(Error::InvalidArgument { field: "lessons_learnt", .. })
        ));
        e.close("zed", "alg", ExperimentOutcome::Succeeded, "works".into(), now).unwrap();
        assert_eq!((e.status, e.outcome), (Status::Closed, Some(ExperimentOutcome::Succeeded)));
        assert_eq!((e.closed_by.as_str(), e.closed_by_team.as_str()), ("zed", "alg"));
        assert!(e.close("zed", "alg", ExperimentOutcome::Failed, "again".into(), now).is_err());
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
