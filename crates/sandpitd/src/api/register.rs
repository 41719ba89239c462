//! `sandpit.v1.RegisterService`: the AI register.

use sandpit_proto::status::to_status;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::{Gate, Method};
use crate::proto;
use crate::proto::register_service_server::RegisterService;
use sandpit_core::lifecycle::Manager;
use sandpit_core::register::{Decision, Lessons, NewExperiment, RiskChange, Transparency};
use sandpit_core::Error;
use sandpit_proto::convert::{assessment, new_risk, outcome, status_filter};
use std::time::SystemTime;

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
    sandpit_core::policy::admission::validate_name(field, value)?;
    tracing::Span::current().record("experiment", value);
    Ok(())
}

#[tonic::async_trait]
impl RegisterService for RegisterApi {
    async fn register_experiment(
        &self,
        req: Request<proto::RegisterExperimentRequest>,
    ) -> Result<Response<proto::Experiment>, Status> {
        let caller = self.gate.authorize(&req, Method::RegisterExperiment).await.map_err(to_status)?;
        let new = NewExperiment::try_from(req.into_inner()).map_err(to_status)?;
        let experiment = self.manager.register_experiment(&caller, new).await.map_err(to_status)?;
        tracing::Span::current().record("experiment", experiment.id.as_str());
        Ok(Response::new(experiment.into()))
    }

    async fn get_experiment(
        &self,
        req: Request<proto::GetExperimentRequest>,
    ) -> Result<Response<proto::Experiment>, Status> {
        let caller = self.gate.authorize(&req, Method::GetExperiment).await.map_err(to_status)?;
        let r = req.into_inner();
        id("id", &r.id).map_err(to_status)?;
        Ok(Response::new(self.manager.get_experiment(&caller, &r.id).await.map_err(to_status)?.into()))
    }

    async fn list_experiments(
        &self,
        req: Request<proto::ListExperimentsRequest>,
    ) -> Result<Response<proto::ListExperimentsResponse>, Status> {
        let caller = self.gate.authorize(&req, Method::ListExperiments).await.map_err(to_status)?;
        let r = req.into_inner();
        let team = (!r.team.is_empty()).then_some(r.team);
        let list = self
            .manager
            .list_experiments(&caller, team, status_filter(r.status).map_err(to_status)?)
            .await
            .map_err(to_status)?;
        Ok(Response::new(proto::ListExperimentsResponse { experiments: list.into_iter().map(Into::into).collect() }))
    }

    async fn approve_experiment(
        &self,
        req: Request<proto::DecideExperimentRequest>,
    ) -> Result<Response<proto::Experiment>, Status> {
        let caller = self.gate.authorize(&req, Method::ApproveExperiment).await.map_err(to_status)?;
        let r = req.into_inner();
        id("id", &r.id).map_err(to_status)?;
        Ok(Response::new(
            self.manager
                .decide_experiment(&caller, &r.id, Decision::Approved, &r.function, r.conditions)
                .await
                .map_err(to_status)?
                .into(),
        ))
    }

    async fn reject_experiment(
        &self,
        req: Request<proto::DecideExperimentRequest>,
    ) -> Result<Response<proto::Experiment>, Status> {
        let caller = self.gate.authorize(&req, Method::RejectExperiment).await.map_err(to_status)?;
        let r = req.into_inner();
        id("id", &r.id).map_err(to_status)?;
        Ok(Response::new(
            self.manager
                .decide_experiment(&caller, &r.id, Decision::Rejected, &r.function, r.conditions)
                .await
                .map_err(to_status)?
                .into(),
        ))
    }

    async fn close_experiment(
        &self,
        req: Request<proto::CloseExperimentRequest>,
    ) -> Result<Response<proto::Experiment>, Status> {
        let caller = self.gate.authorize(&req, Method::CloseExperiment).await.map_err(to_status)?;
        let r = req.into_inner();
        id("id", &r.id).map_err(to_status)?;
        let outcome = outcome(r.outcome).map_err(to_status)?;
        let lessons = Lessons {
            summary: r.lessons_learnt,
            what_worked: r.what_worked,
            what_did_not: r.what_did_not,
            artefacts: r.artefacts,
        };
        Ok(Response::new(
            self.manager.close_experiment(&caller, &r.id, outcome, lessons).await.map_err(to_status)?.into(),
        ))
    }

    async fn add_risk(&self, req: Request<proto::AddRiskRequest>) -> Result<Response<proto::Experiment>, Status> {
        let caller = self.gate.authorize(&req, Method::AddRisk).await.map_err(to_status)?;
        let r = req.into_inner();
        id("experiment", &r.experiment).map_err(to_status)?;
        let risk = r.risk.ok_or_else(|| Error::invalid("risk", "is required")).and_then(|k| new_risk(k, "risk"));
        let risk = risk.map_err(to_status)?;
        Ok(Response::new(
            self.manager.add_risk(&caller, &r.experiment, risk, r.reason).await.map_err(to_status)?.into(),
        ))
    }

    async fn update_risk(&self, req: Request<proto::UpdateRiskRequest>) -> Result<Response<proto::Experiment>, Status> {
        let caller = self.gate.authorize(&req, Method::UpdateRisk).await.map_err(to_status)?;
        let r = req.into_inner();
        id("experiment", &r.experiment).map_err(to_status)?;
        if r.risk_id.is_empty() || r.risk_id.len() > 16 {
            return Err(to_status(Error::invalid("risk_id", "must name a risk, e.g. r1")));
        }
        let (experiment, risk) = (r.experiment.clone(), r.risk_id.clone());
        let change = RiskChange::try_from(r).map_err(to_status)?;
        Ok(Response::new(
            self.manager.update_risk(&caller, &experiment, &risk, change).await.map_err(to_status)?.into(),
        ))
    }

    async fn record_assessment(
        &self,
        req: Request<proto::RecordAssessmentRequest>,
    ) -> Result<Response<proto::Experiment>, Status> {
        let caller = self.gate.authorize(&req, Method::RecordAssessment).await.map_err(to_status)?;
        let r = req.into_inner();
        id("experiment", &r.experiment).map_err(to_status)?;
        let experiment = r.experiment.clone();
        let a = assessment(r, &caller.name, SystemTime::now()).map_err(to_status)?;
        Ok(Response::new(self.manager.record_assessment(&caller, &experiment, a).await.map_err(to_status)?.into()))
    }

    async fn update_transparency(
        &self,
        req: Request<proto::UpdateTransparencyRequest>,
    ) -> Result<Response<proto::Experiment>, Status> {
        let caller = self.gate.authorize(&req, Method::UpdateTransparency).await.map_err(to_status)?;
        let r = req.into_inner();
        id("experiment", &r.experiment).map_err(to_status)?;
        let experiment = r.experiment.clone();
        let t = Transparency::try_from(r).map_err(to_status)?;
        Ok(Response::new(
            self.manager
                .update_transparency(&caller, &experiment, t, crate::export::atrs::settable)
                .await
                .map_err(to_status)?
                .into(),
        ))
    }
}
