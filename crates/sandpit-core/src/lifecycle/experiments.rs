//! The AI register through the manager: registration, decisions and closing
//! (which tears down the experiment's sandboxes), each audited with the change.

use std::time::{Duration, SystemTime};

use super::{audit_log, Manager};
use crate::audit::action;
use crate::auth::Caller;
use crate::policy::Rule;
use crate::register::{
    Assessment, Decision, Experiment, ExperimentOutcome, Lessons, NewExperiment, Risk, RiskChange, SignOff, Status,
    Transparency,
};
use crate::sandbox::{Sandbox, SandboxState};
use crate::store::{ExperimentFilter, ListFilter, Versioned};
use crate::{Error, Result};

/// How often a change to an experiment is applied again when other writes
/// keep landing first.
const TRANSITION_ATTEMPTS: usize = 16;

/// An experiment that may have sandboxes (proposed or approved), with its live sandboxes.
#[derive(Debug, Clone)]
pub struct ActiveExperiment {
    pub experiment: Experiment,
    /// Live sandboxes and the time each has left.
    pub sandboxes: Vec<(Sandbox, Duration)>,
}

impl Manager {
    /// Records the outcome of a register request that changed nothing.
    async fn register_result<T>(&self, caller: &Caller, act: &str, id: &str, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            self.audit.refused(caller, act, id, "", e).await;
        }
        result
    }

    pub async fn register_experiment(&self, caller: &Caller, new: NewExperiment) -> Result<Experiment> {
        let result = async {
            let now = SystemTime::now();
            let mut e = Experiment::new(Experiment::new_id(), &caller.name, &caller.team, new, now)?;
            let governance = &self.settings.governance;
            e.schedule_reviews(&governance.review, now);
            e.required_functions = governance.required(e.classification);
            let reason = format!("'{}' declared {}", e.title, e.classification);
            let entry = audit_log::entry(Some(caller), action::REGISTER_EXPERIMENT, &e.id, "", Ok(reason));
            let rec = self.store.insert_experiment(&e, Some(entry)).await?;
            self.audit.published(rec);
            Ok(Experiment { version: 1, ..e })
        }
        .await;
        self.register_result(caller, action::REGISTER_EXPERIMENT, "", result).await
    }

    /// An experiment the caller may see: its own team's, or any for oversight roles.
    pub async fn get_experiment(&self, caller: &Caller, id: &str) -> Result<Experiment> {
        match self.store.get_experiment(id).await? {
            Some(e) if caller.may_see(&e.team) => Ok(e),
            _ => Err(Error::not_found("experiment", id)),
        }
    }

    pub async fn list_experiments(
        &self,
        caller: &Caller,
        team: Option<String>,
        status: Option<Status>,
    ) -> Result<Vec<Experiment>> {
        let team = if caller.sees_all_teams() { team } else { Some(caller.team.clone()) };
        self.store.list_experiments(&ExperimentFilter { team, status }).await
    }

    /// An approver's sign-off, for one function, on a proposed experiment of
    /// another team (see [`Experiment::sign_off`]): it is approved once every
    /// function the host policy requires for its classification has signed.
    /// A rejection tears down the sandboxes it already has (at OFFICIAL a
    /// proposed experiment may have some). Sign-offs racing on one
    /// experiment are applied one after the other, each to the record the
    /// other left.
    pub async fn decide_experiment(
        &self,
        caller: &Caller,
        id: &str,
        decision: Decision,
        function: &str,
        conditions: String,
    ) -> Result<Experiment> {
        let act = match decision {
            Decision::Approved => action::APPROVE_EXPERIMENT,
            Decision::Rejected => action::REJECT_EXPERIMENT,
        };
        let result = self
            .transition(caller, id, act, |e| {
                let required = self.settings.governance.required(e.classification);
                let sign = SignOff {
                    approver: &caller.name,
                    team: &caller.team,
                    functions: &caller.functions,
                    function,
                    decision,
                    conditions: conditions.clone(),
                };
                e.sign_off(sign, &required, SystemTime::now())?;
                // The sign-off just recorded.
                let Some(a) = e.approvals.last() else { return Ok(decision.as_str().to_string()) };
                let mut reason = match a.function.as_str() {
                    "" => decision.as_str().to_string(),
                    f => format!("{} for {f}", decision.as_str()),
                };
                if !a.conditions.is_empty() {
                    reason = format!("{reason}: {}", a.conditions);
                }
                let pending = e.pending_functions();
                if e.status == Status::Proposed && !pending.is_empty() {
                    reason = format!("{reason}; awaiting {}", pending.join(", "));
                } else if e.status == Status::Approved && !e.required_functions.is_empty() {
                    reason = format!("{reason}; approved by every required function");
                }
                Ok(reason)
            })
            .await;
        let (e, live) = self.register_result(caller, act, id, result).await?;
        if decision == Decision::Rejected {
            let reason = format!("experiment rejected by {}", caller.name);
            self.teardown_all(caller, live, &reason, action::REJECT_TEARDOWN).await?;
        }
        Ok(e)
    }

    /// Closes an experiment with its outcome and lessons learnt, then tears
    /// down every sandbox it still has.
    pub async fn close_experiment(
        &self,
        caller: &Caller,
        id: &str,
        outcome: ExperimentOutcome,
        lessons: Lessons,
    ) -> Result<Experiment> {
        let result = self
            .transition(caller, id, action::CLOSE_EXPERIMENT, |e| {
                e.close(&caller.name, &caller.team, outcome, lessons.clone(), SystemTime::now())?;
                Ok(format!("outcome {}", outcome.as_str()))
            })
            .await;
        let (e, live) = self.register_result(caller, action::CLOSE_EXPERIMENT, id, result).await?;
        let reason = format!("experiment closed by {}", caller.name);
        self.teardown_all(caller, live, &reason, action::CLOSE_TEARDOWN).await?;
        // Its work goes with it, on record.
        match self.runtime.remove_workspace(id).await {
            Ok(false) => {}
            Ok(true) => {
                let entry =
                    audit_log::entry(Some(caller), action::WORKSPACE_REMOVE, id, "", Ok("workspace removed".into()));
                self.record(entry).await;
            }
            Err(err) => {
                tracing::warn!(experiment = %id, error = %err, "could not remove a closed experiment's workspace");
                self.record(audit_log::entry(Some(caller), action::WORKSPACE_REMOVE, id, "", Err(&err))).await;
            }
        }
        Ok(e)
    }

    /// Applies `change` to the experiment and writes it only if no other
    /// write came between reading and writing it (compare-and-set on its
    /// version), with its audit record in the same transaction. When another
    /// write came first, `change` is applied again to the record as that
    /// write left it (which may now refuse it: a second sign-off for a
    /// function, a decision on a closed experiment). Returns the experiment
    /// as written and the sandboxes it had then.
    ///
    /// Changes the experiment (compare-and-set, which bumps its version),
    /// then lists its live sandboxes. A create writes its record only while
    /// the experiment is at the version it was admitted against, in the same
    /// store transaction ([`crate::store::Store::write_admitted`]): so it
    /// either landed before this change and is in the list, or is sent back
    /// to admission and sees the new status. None slips between.
    async fn transition(
        &self,
        caller: &Caller,
        id: &str,
        act: &str,
        change: impl Fn(&mut Experiment) -> Result<String>,
    ) -> Result<(Experiment, Vec<Sandbox>)> {
        let e = self.get_experiment(caller, id).await?;
        self.transition_from(caller, e, act, change).await
    }

    /// [`Manager::transition`] of an experiment the caller has just read.
    async fn transition_from(
        &self,
        caller: &Caller,
        mut e: Experiment,
        act: &str,
        change: impl Fn(&mut Experiment) -> Result<String>,
    ) -> Result<(Experiment, Vec<Sandbox>)> {
        let id = e.id.clone();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let reason = change(&mut e)?;
            let entry = audit_log::entry(Some(caller), act, &id, "", Ok(reason));
            match self.store.update_experiment(&e, entry).await? {
                Versioned::Written(rec) => {
                    self.audit.published(rec.map(|r| *r));
                    break;
                }
                Versioned::Stale(Some(now)) if attempts < TRANSITION_ATTEMPTS => e = now,
                Versioned::Stale(now) => {
                    let found = now.map_or("gone".to_string(), |n| n.status.as_str().to_string());
                    return Err(Error::Conflict(format!(
                        "experiment '{id}' ({found}) kept changing while this change was made; nothing was changed, try again"
                    )));
                }
            }
        }
        e.version += 1;
        let live = self.store.list(&ListFilter { experiment: Some(id.to_string()), ..Default::default() }).await?;
        Ok((e, live))
    }

    /// Changes an experiment's governance record (risks, assessments,
    /// transparency fields): its team's requesters and approvers may.
    async fn govern(
        &self,
        caller: &Caller,
        id: &str,
        act: &str,
        change: impl Fn(&mut Experiment) -> Result<String>,
    ) -> Result<Experiment> {
        let result = async {
            let e = self.get_experiment(caller, id).await?;
            if !caller.may_govern(&e.team) {
                return Err(Error::PermissionDenied(format!(
                    "{} may not change experiment '{id}' of team '{}': its own team's requesters and approvers may",
                    caller.name, e.team
                )));
            }
            self.transition_from(caller, e, act, change).await
        }
        .await;
        Ok(self.register_result(caller, act, id, result).await?.0)
    }

    /// Records a new risk on an experiment; open, its first review due
    /// after the host's cadence for its impact.
    pub async fn add_risk(&self, caller: &Caller, id: &str, risk: Risk, reason: String) -> Result<Experiment> {
        let cadence = self.settings.governance.review;
        self.govern(caller, id, action::ADD_RISK, |e| {
            let impact = risk.impact;
            let rid = e.add_risk(risk.clone(), (&caller.name, &caller.team), &reason, &cadence, SystemTime::now())?;
            Ok(format!("risk {rid} recorded ({impact} impact)"))
        })
        .await
    }

    /// Changes or reviews a risk: who, when, what changed and why go on the
    /// risk's history and in the audit log; its next review is set again.
    pub async fn update_risk(&self, caller: &Caller, id: &str, risk: &str, change: RiskChange) -> Result<Experiment> {
        let cadence = self.settings.governance.review;
        self.govern(caller, id, action::UPDATE_RISK, |e| {
            let what =
                e.update_risk(risk, change.clone(), (&caller.name, &caller.team), &cadence, SystemTime::now())?;
            Ok(format!("risk {risk}: {what}: {}", change.reason))
        })
        .await
    }

    /// Records an impact assessment, replacing the one of its kind.
    pub async fn record_assessment(&self, caller: &Caller, id: &str, assessment: Assessment) -> Result<Experiment> {
        self.govern(caller, id, action::RECORD_ASSESSMENT, |e| {
            let a = assessment.clone();
            let reason = match a.reference.as_str() {
                "" => format!("{} {}", a.kind.as_str(), a.status.as_str()),
                r => format!("{} {} ({r})", a.kind.as_str(), a.status.as_str()),
            };
            e.record_assessment(a)?;
            Ok(reason)
        })
        .await
    }

    /// Sets transparency fields; `known` says which ATRS field names the register keeps.
    pub async fn update_transparency(
        &self,
        caller: &Caller,
        id: &str,
        t: Transparency,
        known: impl Fn(&str) -> bool,
    ) -> Result<Experiment> {
        self.govern(caller, id, action::UPDATE_TRANSPARENCY, |e| {
            let changed = e.update_transparency(t.clone(), &known)?;
            Ok(if changed.is_empty() { "nothing changed".into() } else { format!("set {}", changed.join(", ")) })
        })
        .await
    }

    /// Tears down the sandboxes an experiment had when it was rejected or closed.
    async fn teardown_all(&self, caller: &Caller, live: Vec<Sandbox>, reason: &str, act: &str) -> Result<()> {
        for sb in live {
            self.teardown(&sb.id, SandboxState::Deleted, reason, Some(caller), act, |_| true).await?;
        }
        Ok(())
    }

    /// Whether the experiment of `sb` still lets it be used (extend, exec,
    /// file transfer): the admission rules on experiment status, checked again.
    pub(super) async fn experiment_in_force(&self, sb: &Sandbox) -> Result<()> {
        let experiment = self.store.get_experiment(&sb.experiment).await?.ok_or_else(|| {
            Error::denied(Rule::ExperimentRegistered, format!("experiment '{}' is not in the register", sb.experiment))
        })?;
        crate::policy::admission::experiment_in_force(&experiment, sb.classification, &sb.profile)
    }

    /// The oversight view: every experiment that may have sandboxes, its live sandboxes and their time left.
    pub async fn active_experiments(&self) -> Result<Vec<ActiveExperiment>> {
        let now = SystemTime::now();
        let live = self.store.list(&ListFilter::default()).await?;
        let experiments = self.store.list_experiments(&ExperimentFilter::default()).await?;
        Ok(experiments
            .into_iter()
            .filter(Experiment::may_have_sandboxes)
            .map(|experiment| {
                let sandboxes = live
                    .iter()
                    .filter(|s| s.experiment == experiment.id && s.team == experiment.team)
                    .map(|s| (s.clone(), s.expires_at.duration_since(now).unwrap_or_default()))
                    .collect();
                ActiveExperiment { experiment, sandboxes }
            })
            .collect())
    }

    /// Every live sandbox, for exports.
    pub async fn active_sandboxes(&self) -> Result<Vec<Sandbox>> {
        self.store.list(&ListFilter::default()).await
    }

    /// The whole register, for exports.
    pub async fn all_experiments(&self) -> Result<Vec<Experiment>> {
        self.store.list_experiments(&ExperimentFilter::default()).await
    }
}
