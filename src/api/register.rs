//! `sandpit.v1.RegisterService`: the AI register.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::{Gate, Method};
use super::convert::{outcome, status_filter};
use crate::lifecycle::Manager;
use crate::proto;
use crate::proto::register_service_server::RegisterService;
use crate::register::{Decision, NewExperiment};
use crate::Error;

pub struct RegisterApi {
    manager: Arc<Manager>,
    gate: Gate,
}

impl RegisterApi {
    pub fn new(manager: Arc<Manager>, gate: Gate) -> Self {
        RegisterApi { manager, gate }
    }
}

/// Checks an experiment id, and records it in the call's span.
fn id(field: &'static str, value: &str) -> Result<(), Error> {
    crate::policy::admission::validate_name(field, value)?;
    tracing::Span::current().record("experiment", value);
    Ok(())
}

#[tonic::async_trait]
impl RegisterService for RegisterApi {
    async fn register_experiment(
        &self,
        req: Request<proto::RegisterExperimentRequest>,
    ) -> Result<Response<proto::Experiment>, Status> {
        let caller = self.gate.authorize(&req, Method::RegisterExperiment).await?;
        let new = NewExperiment::try_from(req.into_inner())?;
        let experiment = self.manager.register_experiment(&caller, new).await?;
        tracing::Span::current().record("experiment", experiment.id.as_str());
        Ok(Response::new(experiment.into()))
    }

    async fn get_experiment(
        &self,
        req: Request<proto::GetExperimentRequest>,
    ) -> Result<Response<proto::Experiment>, Status> {
        let caller = self.gate.authorize(&req, Method::GetExperiment).await?;
        let r = req.into_inner();
        id("id", &r.id)?;
        Ok(Response::new(self.manager.get_experiment(&caller, &r.id).await?.into()))
    }

    async fn list_experiments(
        &self,
        req: Request<proto::ListExperimentsRequest>,
    ) -> Result<Response<proto::ListExperimentsResponse>, Status> {
        let caller = self.gate.authorize(&req, Method::ListExperiments).await?;
        let r = req.into_inner();
        let team = (!r.team.is_empty()).then_some(r.team);
        let list = self.manager.list_experiments(&caller, team, status_filter(r.status)?).await?;
        Ok(Response::new(proto::ListExperimentsResponse { experiments: list.into_iter().map(Into::into).collect() }))
    }

    async fn approve_experiment(
        &self,
        req: Request<proto::DecideExperimentRequest>,
    ) -> Result<Response<proto::Experiment>, Status> {
        let caller = self.gate.authorize(&req, Method::ApproveExperiment).await?;
        let r = req.into_inner();
        id("id", &r.id)?;
        Ok(Response::new(
            self.manager.decide_experiment(&caller, &r.id, Decision::Approved, r.conditions).await?.into(),
        ))
    }

    async fn reject_experiment(
        &self,
        req: Request<proto::DecideExperimentRequest>,
    ) -> Result<Response<proto::Experiment>, Status> {
        let caller = self.gate.authorize(&req, Method::RejectExperiment).await?;
        let r = req.into_inner();
        id("id", &r.id)?;
        Ok(Response::new(
            self.manager.decide_experiment(&caller, &r.id, Decision::Rejected, r.conditions).await?.into(),
        ))
    }

    async fn close_experiment(
        &self,
        req: Request<proto::CloseExperimentRequest>,
    ) -> Result<Response<proto::Experiment>, Status> {
        let caller = self.gate.authorize(&req, Method::CloseExperiment).await?;
        let r = req.into_inner();
        id("id", &r.id)?;
        let outcome = outcome(r.outcome)?;
        Ok(Response::new(self.manager.close_experiment(&caller, &r.id, outcome, r.lessons_learnt).await?.into()))
    }
}
