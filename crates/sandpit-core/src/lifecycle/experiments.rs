//! The AI register through the manager: registration, decisions and closing
//! (which tears down the experiment's sandboxes), each audited with the change.

use std::time::{Duration, SystemTime};

use super::{audit_log, Manager};
use crate::audit::action;
use crate::auth::Caller;
use crate::policy::Rule;
use crate::register::{Decision, Experiment, ExperimentOutcome, NewExperiment, Status};
use crate::sandbox::{Sandbox, SandboxState};
use crate::store::{ExperimentFilter, ListFilter, Versioned};
use crate::{Error, Result};

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
            let e = Experiment::new(Experiment::new_id(), &caller.name, &caller.team, new, SystemTime::now())?;
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

    /// An approver's decision on a proposed experiment of another team. A
    /// rejection tears down the sandboxes it already has (at OFFICIAL a
    /// proposed experiment may have some).
    pub async fn decide_experiment(
        &self,
        caller: &Caller,
        id: &str,
        decision: Decision,
        conditions: String,
    ) -> Result<Experiment> {
        let act = match decision {
            Decision::Approved => action::APPROVE_EXPERIMENT,
            Decision::Rejected => action::REJECT_EXPERIMENT,
        };
        let result = self
            .transition(caller, id, act, |e| {
                e.decide(&caller.name, &caller.team, decision, conditions, SystemTime::now())?;
                let approval = e.approvals.last().map(|a| a.conditions.clone()).unwrap_or_default();
                Ok(if approval.is_empty() {
                    decision.as_str().to_string()
                } else {
                    format!("{}: {approval}", decision.as_str())
                })
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
        lessons: String,
    ) -> Result<Experiment> {
        let result = self
            .transition(caller, id, action::CLOSE_EXPERIMENT, |e| {
                e.close(&caller.name, &caller.team, outcome, lessons, SystemTime::now())?;
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
    /// version), with its audit record in the same transaction. Returns the
    /// experiment as written and the sandboxes it had then.
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
        change: impl FnOnce(&mut Experiment) -> Result<String>,
    ) -> Result<(Experiment, Vec<Sandbox>)> {
        let mut e = self.get_experiment(caller, id).await?;
        let reason = change(&mut e)?;
        let entry = audit_log::entry(Some(caller), act, id, "", Ok(reason));
        match self.store.update_experiment(&e, entry).await? {
            Versioned::Written(rec) => self.audit.published(rec.map(|r| *r)),
            Versioned::Stale(now) => {
                let found = now.map_or("gone".to_string(), |n| n.status.as_str().to_string());
                return Err(Error::FailedPrecondition(format!(
                    "experiment '{id}' is {found}: another decision changed it first; nothing was changed"
                )));
            }
        }
        e.version += 1;
        let live = self.store.list(&ListFilter { experiment: Some(id.to_string()), ..Default::default() }).await?;
        Ok((e, live))
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
