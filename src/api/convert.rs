//! Conversions between protobuf messages and domain types, in one place.

use std::time::{Duration, SystemTime};

use crate::audit::{AuditRecord, VerifyReport};
use crate::lifecycle::{ActiveExperiment, ExecOutput};
use crate::policy::CreateSandbox;
use crate::proto;
use crate::register::{self, Experiment, NewExperiment};
use crate::runtime::PullProgress;
use crate::sandbox::{EventKind, Sandbox, SandboxEvent, SandboxState};
use crate::store::AuditQuery;
use crate::Error;

pub fn timestamp(t: SystemTime) -> pbjson_types::Timestamp {
    let ms = crate::time::to_millis(t);
    pbjson_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// A protobuf duration as a std one; negative or out-of-range is an error naming `field`.
pub fn duration(field: &'static str, d: &pbjson_types::Duration) -> Result<Duration, Error> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Error::invalid(field, "must not be negative"));
    }
    // Anything past a hundred years is a typo, not a lifetime.
    if d.seconds > 100 * 365 * 24 * 3600 {
        return Err(Error::invalid(field, "is implausibly long"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

pub fn proto_duration(d: Duration) -> pbjson_types::Duration {
    pbjson_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn non_empty(s: String) -> Option<String> {
    (!s.trim().is_empty()).then_some(s)
}

impl TryFrom<proto::CreateSandboxRequest> for CreateSandbox {
    type Error = Error;

    fn try_from(r: proto::CreateSandboxRequest) -> Result<Self, Error> {
        let classification = classification("classification", &r.classification)?;
        let req = CreateSandbox {
            experiment: r.experiment,
            profile: r.profile,
            classification,
            ttl: r.ttl.as_ref().map(|d| duration("ttl", d)).transpose()?,
            image: non_empty(r.image),
            datasets: r.datasets,
        };
        req.validate()?;
        Ok(req)
    }
}

pub fn state(s: SandboxState) -> proto::SandboxState {
    match s {
        SandboxState::Provisioning => proto::SandboxState::Provisioning,
        SandboxState::Warm => proto::SandboxState::Warm,
        SandboxState::Running => proto::SandboxState::Running,
        SandboxState::Exited => proto::SandboxState::Exited,
        SandboxState::Expired => proto::SandboxState::Expired,
        SandboxState::Deleted => proto::SandboxState::Deleted,
        SandboxState::Failed => proto::SandboxState::Failed,
        SandboxState::Lost => proto::SandboxState::Lost,
    }
}

impl From<Sandbox> for proto::Sandbox {
    fn from(s: Sandbox) -> Self {
        let r = &s.profile.resources;
        proto::Sandbox {
            resources: Some(proto::SandboxResources {
                cpus: r.cpus,
                memory_bytes: r.memory as i64,
                pids: r.pids,
                tmpfs_bytes: r.tmpfs as i64,
            }),
            network_mode: s.profile.network.mode.as_str().to_string(),
            datasets: s.datasets.iter().map(|d| d.name.clone()).collect(),
            address: s.network.as_ref().map(|n| n.address.to_string()).unwrap_or_default(),
            command: s.profile.command.clone(),
            profile: s.profile.name,
            id: s.id,
            experiment: s.experiment,
            owner: s.owner,
            team: s.team,
            classification: s.classification.to_string(),
            image: s.image,
            state: state(s.state) as i32,
            created_at: Some(timestamp(s.created_at)),
            expires_at: Some(timestamp(s.expires_at)),
            container_id: s.container_id.unwrap_or_default(),
            node: s.node,
            max_expires_at: Some(timestamp(s.max_expires_at)),
            state_reason: s.state_reason,
            ended_at: s.ended_at.map(timestamp),
            exit_code: s.exit_code,
            oom_killed: s.oom_killed,
        }
    }
}

impl From<SandboxEvent> for proto::SandboxEvent {
    fn from(e: SandboxEvent) -> Self {
        use proto::SandboxEventKind as K;
        let kind = match e.kind {
            EventKind::Created => K::Created,
            EventKind::Extended => K::Extended,
            EventKind::ExpiringSoon => K::ExpiringSoon,
            EventKind::Expired => K::Expired,
            EventKind::Deleted => K::Deleted,
            EventKind::Exited => K::Exited,
            EventKind::Failed => K::Failed,
            EventKind::Lost => K::Lost,
            EventKind::Adopted => K::Adopted,
        };
        proto::SandboxEvent {
            kind: kind as i32,
            time: Some(timestamp(e.time)),
            sandbox: Some(e.sandbox.into()),
            message: e.message,
        }
    }
}

impl From<ExecOutput> for proto::ExecOutput {
    fn from(o: ExecOutput) -> Self {
        use proto::exec_output::Output;
        proto::ExecOutput {
            output: Some(match o {
                ExecOutput::Stdout(b) => Output::Stdout(b),
                ExecOutput::Stderr(b) => Output::Stderr(b),
                ExecOutput::Exit(c) => Output::ExitCode(c),
            }),
        }
    }
}

impl From<crate::lifecycle::Transfer> for proto::FileTransfer {
    fn from(t: crate::lifecycle::Transfer) -> Self {
        proto::FileTransfer { sandbox_id: t.sandbox, path: t.path, size_bytes: t.size as i64, sha256: t.sha256 }
    }
}

impl From<PullProgress> for proto::PullProgress {
    fn from(p: PullProgress) -> Self {
        proto::PullProgress { status: p.status, layer: p.layer, current: p.current, total: p.total, done: false }
    }
}

pub fn system_time(field: &'static str, t: &pbjson_types::Timestamp) -> Result<SystemTime, Error> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Error::invalid(field, "nanos out of range"));
    }
    let ms = t.seconds.checked_mul(1000).and_then(|ms| ms.checked_add(i64::from(t.nanos) / 1_000_000));
    ms.map(crate::time::from_millis).ok_or_else(|| Error::invalid(field, "out of range"))
}

fn classification(field: &'static str, s: &str) -> Result<crate::policy::Classification, Error> {
    if s.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    s.parse().map_err(|e: String| Error::invalid(field, e))
}

impl TryFrom<proto::RegisterExperimentRequest> for NewExperiment {
    type Error = Error;

    fn try_from(r: proto::RegisterExperimentRequest) -> Result<Self, Error> {
        let risks = r
            .risks
            .into_iter()
            .map(|k| {
                Ok(register::Risk {
                    likelihood: k.likelihood.parse().map_err(|e: String| Error::invalid("risks.likelihood", e))?,
                    impact: k.impact.parse().map_err(|e: String| Error::invalid("risks.impact", e))?,
                    description: k.description,
                    mitigation: k.mitigation,
                    owner: k.owner,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(NewExperiment {
            title: r.title,
            purpose: r.purpose,
            ai_tools: r.ai_tools,
            models: r.models,
            classification: classification("classification", &r.classification)?,
            datasets: r.datasets,
            risks,
            planned_end: r.planned_end.as_ref().map(|t| system_time("planned_end", t)).transpose()?,
        })
    }
}

pub fn experiment_status(s: register::Status) -> proto::ExperimentStatus {
    match s {
        register::Status::Proposed => proto::ExperimentStatus::Proposed,
        register::Status::Approved => proto::ExperimentStatus::Approved,
        register::Status::Rejected => proto::ExperimentStatus::Rejected,
        register::Status::Closed => proto::ExperimentStatus::Closed,
    }
}

pub fn status_filter(s: i32) -> Result<Option<register::Status>, Error> {
    match proto::ExperimentStatus::try_from(s) {
        Ok(proto::ExperimentStatus::Unspecified) => Ok(None),
        Ok(proto::ExperimentStatus::Proposed) => Ok(Some(register::Status::Proposed)),
        Ok(proto::ExperimentStatus::Approved) => Ok(Some(register::Status::Approved)),
        Ok(proto::ExperimentStatus::Rejected) => Ok(Some(register::Status::Rejected)),
        Ok(proto::ExperimentStatus::Closed) => Ok(Some(register::Status::Closed)),
        Err(_) => Err(Error::invalid("status", format!("{s} is not an experiment status"))),
    }
}

pub fn outcome(o: i32) -> Result<register::Outcome, Error> {
    match proto::ExperimentOutcome::try_from(o) {
        Ok(proto::ExperimentOutcome::Succeeded) => Ok(register::Outcome::Succeeded),
        Ok(proto::ExperimentOutcome::Failed) => Ok(register::Outcome::Failed),
        Ok(proto::ExperimentOutcome::Abandoned) => Ok(register::Outcome::Abandoned),
        _ => Err(Error::invalid("outcome", "must be succeeded, failed or abandoned")),
    }
}

impl From<Experiment> for proto::Experiment {
    fn from(e: Experiment) -> Self {
        proto::Experiment {
            id: e.id,
            title: e.title,
            team: e.team,
            owner: e.owner,
            purpose: e.purpose,
            ai_tools: e.ai_tools,
            models: e.models,
            classification: e.classification.to_string(),
            datasets: e.datasets,
            risks: e
                .risks
                .into_iter()
                .map(|r| proto::Risk {
                    description: r.description,
                    likelihood: r.likelihood.to_string(),
                    impact: r.impact.to_string(),
                    mitigation: r.mitigation,
                    owner: r.owner,
                })
                .collect(),
            status: experiment_status(e.status) as i32,
            approvals: e
                .approvals
                .into_iter()
                .map(|a| proto::Approval {
                    approver: a.approver,
                    time: Some(timestamp(a.time)),
                    decision: a.decision.as_str().to_string(),
                    conditions: a.conditions,
                })
                .collect(),
            outcome: match e.outcome {
                None => proto::ExperimentOutcome::Unspecified,
                Some(register::Outcome::Succeeded) => proto::ExperimentOutcome::Succeeded,
                Some(register::Outcome::Failed) => proto::ExperimentOutcome::Failed,
                Some(register::Outcome::Abandoned) => proto::ExperimentOutcome::Abandoned,
            } as i32,
            lessons_learnt: e.lessons_learnt,
            created_at: Some(timestamp(e.created_at)),
            planned_end: e.planned_end.map(timestamp),
            closed_at: e.closed_at.map(timestamp),
        }
    }
}

impl From<AuditRecord> for proto::AuditEvent {
    fn from(r: AuditRecord) -> Self {
        let e = r.entry;
        proto::AuditEvent {
            seq: r.seq,
            time: Some(timestamp(e.time)),
            actor: e.actor,
            role: e.role,
            action: e.action,
            target: e.target,
            experiment: e.experiment,
            sandbox: e.sandbox,
            outcome: e.outcome.as_str().to_string(),
            code: e.code,
            reason: e.reason,
            source: e.source,
            prev_hash: hex::encode(r.prev_hash),
            hash: hex::encode(r.hash),
        }
    }
}

impl From<VerifyReport> for proto::VerifyAuditLogResponse {
    fn from(r: VerifyReport) -> Self {
        proto::VerifyAuditLogResponse {
            ok: r.ok,
            records: r.records,
            first_bad_seq: r.first_bad_seq,
            reason: r.reason,
            head_hash: hex::encode(r.head_hash),
        }
    }
}

/// Default and largest audit page.
const PAGE_DEFAULT: usize = 100;
const PAGE_MAX: usize = 1000;

impl TryFrom<proto::QueryAuditLogRequest> for AuditQuery {
    type Error = Error;

    fn try_from(r: proto::QueryAuditLogRequest) -> Result<Self, Error> {
        let after_seq = if r.page_token.is_empty() {
            0
        } else {
            r.page_token.parse().map_err(|_| Error::invalid("page_token", "not a token this service issued"))?
        };
        let limit = match r.page_size as usize {
            0 => PAGE_DEFAULT,
            n if n > PAGE_MAX => return Err(Error::invalid("page_size", format!("at most {PAGE_MAX}"))),
            n => n,
        };
        Ok(AuditQuery {
            since: r.since.as_ref().map(|t| system_time("since", t)).transpose()?,
            until: r.until.as_ref().map(|t| system_time("until", t)).transpose()?,
            actor: non_empty(r.actor),
            experiment: non_empty(r.experiment),
            sandbox: non_empty(r.sandbox),
            action: non_empty(r.action),
            after_seq,
            limit,
        })
    }
}

impl From<ActiveExperiment> for proto::ActiveExperiment {
    fn from(a: ActiveExperiment) -> Self {
        proto::ActiveExperiment {
            experiment: Some(a.experiment.into()),
            sandboxes: a
                .sandboxes
                .into_iter()
                .map(|(s, left)| proto::ActiveSandbox {
                    sandbox: Some(s.into()),
                    time_left: Some(proto_duration(left)),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> proto::CreateSandboxRequest {
        proto::CreateSandboxRequest {
            experiment: "exp".into(),
            profile: "p".into(),
            classification: "OFFICIAL".into(),
            ttl: Some(proto_duration(Duration::from_secs(60))),
            image: String::new(),
            datasets: vec![],
        }
    }

    fn field_of(r: proto::CreateSandboxRequest) -> &'static str {
        match CreateSandbox::try_from(r) {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_request_validation_names_fields() {
        let ok = CreateSandbox::try_from(req()).unwrap();
        assert_eq!(ok.ttl, Some(Duration::from_secs(60)));
        assert_eq!(ok.image, None);
        assert_eq!(field_of(proto::CreateSandboxRequest { classification: "".into(), ..req() }), "classification");
        assert_eq!(
            field_of(proto::CreateSandboxRequest { classification: "RESTRICTED".into(), ..req() }),
            "classification"
        );
        assert_eq!(field_of(proto::CreateSandboxRequest { experiment: "".into(), ..req() }), "experiment");
        assert_eq!(field_of(proto::CreateSandboxRequest { profile: "".into(), ..req() }), "profile");
        let neg = pbjson_types::Duration { seconds: -1, nanos: 0 };
        assert_eq!(field_of(proto::CreateSandboxRequest { ttl: Some(neg), ..req() }), "ttl");
        let zero = pbjson_types::Duration { seconds: 0, nanos: 0 };
        assert_eq!(field_of(proto::CreateSandboxRequest { ttl: Some(zero), ..req() }), "ttl");
        let huge = pbjson_types::Duration { seconds: i64::MAX, nanos: 0 };
        assert_eq!(field_of(proto::CreateSandboxRequest { ttl: Some(huge), ..req() }), "ttl");
    }

    #[test]
    fn timestamps_keep_milliseconds() {
        let t = crate::time::from_millis(1_700_000_000_123);
        let ts = timestamp(t);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_000_000));
    }
}
