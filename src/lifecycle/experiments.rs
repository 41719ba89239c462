//! The AI register through the manager: registration, decisions and closing
//! (which tears down the experiment's sandboxes), each audited with the change.

use std::time::{Duration, SystemTime};

use super::Manager;
use crate::audit::action;
use crate::auth::Caller;
use crate::register::{new_id, Decision, Experiment, NewExperiment, Outcome, Status};
use crate::runtime::Runtime;
use crate::sandbox::{Sandbox, SandboxState};
use crate::store::{ExperimentFilter, ListFilter};
use crate::{Error, Result};

/// An experiment that is not closed, with its live sandboxes.
#[derive(Debug, Clone)]
pub struct ActiveExperiment {
    pub experiment: Experiment,
    /// Live sandboxes and the time each has left.
    pub sandboxes: Vec<(Sandbox, Duration)>,
}

impl<R: Runtime> Manager<R> {
    /// Records the outcome of a register request that changed nothing.
    fn register_result<T>(&self, caller: &Caller, act: &str, id: &str, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            self.record_error(caller, act, id, "", e);
        }
        result
    }

    pub fn register_experiment(&self, caller: &Caller, new: NewExperiment) -> Result<Experiment> {
        let result = Experiment::new(new_id(), &caller.name, &caller.team, new, SystemTime::now()).and_then(|e| {
            let reason = format!("'{}' declared {}", e.title, e.classification);
            let entry = self.entry(Some(caller), action::REGISTER_EXPERIMENT, &e.id, "", Ok(reason));
            let rec = self.store.put_experiment(&e, Some(entry))?;
            self.published(rec);
            Ok(e)
        });
        self.register_result(caller, action::REGISTER_EXPERIMENT, "", result)
    }

    /// An experiment the caller may see: its own team's, or any for oversight roles.
    pub fn get_experiment(&self, caller: &Caller, id: &str) -> Result<Experiment> {
        match self.store.get_experiment(id)? {
            Some(e) if caller.may_see(&e.team) => Ok(e),
            _ => Err(Error::not_found("experiment", id)),
        }
    }

    pub fn list_experiments(
        &self,
        caller: &Caller,
        team: Option<String>,
        status: Option<Status>,
    ) -> Result<Vec<Experiment>> {
        let team = if caller.sees_all_teams() { team } else { Some(caller.team.clone()) };
        self.store.list_experiments(&ExperimentFilter { team, status })
    }

    /// An approver's decision on a proposed experiment of another team.
    pub fn decide_experiment(
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
        let result = self.get_experiment(caller, id).and_then(|mut e| {
            e.decide(&caller.name, &caller.team, decision, conditions, SystemTime::now())?;
            let approval = e.approvals.last().map(|a| a.conditions.clone()).unwrap_or_default();
            let reason = if approval.is_empty() {
                decision.as_str().to_string()
            } else {
                format!("{}: {approval}", decision.as_str())
            };
            let rec = self.store.put_experiment(&e, Some(self.entry(Some(caller), act, id, "", Ok(reason))))?;
            self.published(rec);
            Ok(e)
        });
        self.register_result(caller, act, id, result)
    }

    /// Closes an experiment with its outcome and lessons learnt, then tears
    /// down every sandbox it still has.
    pub async fn close_experiment(
        &self,
        caller: &Caller,
        id: &str,
        outcome: Outcome,
        lessons: String,
    ) -> Result<Experiment> {
        let result = self.get_experiment(caller, id).and_then(|mut e| {
            e.close(outcome, lessons, SystemTime::now())?;
            let reason = format!("outcome {}", outcome.as_str());
            let rec = self
                .store
                .put_experiment(&e, Some(self.entry(Some(caller), action::CLOSE_EXPERIMENT, id, "", Ok(reason))))?;
            self.published(rec);
            Ok(e)
        });
        let e = self.register_result(caller, action::CLOSE_EXPERIMENT, id, result)?;
        // Closed experiments admit no new sandboxes, so this list cannot grow.
        let live = self.store.list(&ListFilter { experiment: Some(id.to_string()), ..Default::default() })?;
        for sb in live {
            let reason = format!("experiment closed by {}", caller.name);
            self.teardown(&sb.id, SandboxState::Deleted, reason, Some(caller), action::CLOSE_TEARDOWN, |_| true)
                .await?;
        }
        Ok(e)
    }

    /// The oversight view: every experiment not closed, its live sandboxes and their time left.
    pub fn active_experiments(&self) -> Result<Vec<ActiveExperiment>> {
        let now = SystemTime::now();
        let live = self.store.list(&ListFilter::default())?;
        let experiments = self.store.list_experiments(&ExperimentFilter::default())?;
        Ok(experiments
            .into_iter()
            .filter(|e| e.status != Status::Closed)
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
    pub fn active_sandboxes(&self) -> Result<Vec<Sandbox>> {
        self.store.list(&ListFilter::default())
    }

    /// The whole register, for exports.
    pub fn all_experiments(&self) -> Result<Vec<Experiment>> {
        self.store.list_experiments(&ExperimentFilter::default())
    }
}
