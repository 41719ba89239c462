//! Conversions between protobuf messages and the core's types, in one place:
//! what a request may carry is checked here, each refusal naming its field.

use std::time::{Duration, SystemTime};

use crate as proto;
use sandpit_core::audit::{AuditRecord, VerifyReport};
use sandpit_core::lifecycle::{ActiveExperiment, ExecOutput};
use sandpit_core::policy::{CreateSandbox, Profile};
use sandpit_core::register::{self, Experiment, NewExperiment};
use sandpit_core::runtime::PullProgress;
use sandpit_core::sandbox::{EventKind, Sandbox, SandboxEvent, SandboxState};
use sandpit_core::store::AuditQuery;
use sandpit_core::Error;

pub use crate::timestamp;

/// A protobuf duration as a std one; negative or out-of-range is an error naming `field`.
pub fn duration(field: &'static str, d: &pbjson_types::Duration) -> Result<Duration, Error> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Error::invalid(field, "must not be negative"));
    }
    if d.seconds > sandpit_core::time::LONGEST.as_secs() as i64 {
        return Err(Error::invalid(field, "is implausibly long"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// A terminal's size: rows and columns from 1 to 1000.
pub fn terminal_size(
    field: &'static str,
    t: &proto::TerminalSize,
) -> Result<sandpit_core::runtime::TerminalSize, Error> {
    let dim = |n: u32| u16::try_from(n).ok().filter(|n| (1..=1000).contains(n));
    match (dim(t.rows), dim(t.cols)) {
        (Some(rows), Some(cols)) => Ok(sandpit_core::runtime::TerminalSize { rows, cols }),
        _ => Err(Error::invalid(field, format!("{}x{} is not a terminal size (1 to 1000 each)", t.rows, t.cols))),
    }
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
            resources: sandpit_core::policy::ResourceRequest {
                cpus: (r.cpus != 0.0).then_some(r.cpus),
                memory: (r.memory_bytes != 0)
                    .then(|| u64::try_from(r.memory_bytes))
                    .transpose()
                    .map_err(|_| Error::invalid("memory_bytes", "must not be negative"))?,
            },
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
                ExecOutput::Notice(n) => Output::Notice(n),
            }),
        }
    }
}

impl From<sandpit_core::lifecycle::Transfer> for proto::FileTransfer {
    fn from(t: sandpit_core::lifecycle::Transfer) -> Self {
        proto::FileTransfer { sandbox_id: t.sandbox, path: t.path, size_bytes: t.size as i64, sha256: t.sha256 }
    }
}

impl From<PullProgress> for proto::PullProgress {
    fn from(p: PullProgress) -> Self {
        proto::PullProgress { status: p.status, layer: p.layer, current: p.current, total: p.total, done: false }
    }
}

/// 9999-12-31T23:59:59Z, the last second RFC 3339 (and so the CLI, the logs
/// and the CSV export) can write.
const LAST_TIMESTAMP_SECS: i64 = 253_402_300_799;

/// A protobuf timestamp as a std one; outside 1970-9999 is an error naming `field`.
pub fn system_time(field: &'static str, t: &pbjson_types::Timestamp) -> Result<SystemTime, Error> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Error::invalid(field, "nanos out of range"));
    }
    if !(0..=LAST_TIMESTAMP_SECS).contains(&t.seconds) {
        return Err(Error::invalid(field, "out of range (1970-01-01 to 9999-12-31)"));
    }
    Ok(sandpit_core::time::from_millis(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000))
}

/// The sandbox id and the new ttl of an `ExtendSandbox` request.
pub fn extend_request(r: proto::ExtendSandboxRequest) -> Result<(String, Duration), Error> {
    id("id", &r.id)?;
    let ttl = r.ttl.as_ref().ok_or_else(|| Error::invalid("ttl", "must be set"))?;
    Ok((r.id, duration("ttl", ttl)?))
}

/// A sandbox or experiment id: checked (length first) before anything
/// about the call is recorded, so no audit record can hold an unbounded id.
pub fn id(field: &'static str, value: &str) -> Result<(), Error> {
    sandpit_core::policy::admission::validate_name(field, value)
}

/// An optional filter naming an object: empty, or a valid name.
pub fn filter(field: &'static str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        Ok(())
    } else {
        id(field, value)
    }
}

/// Longest free-text filter (actor, action) accepted in a query.
const FILTER_MAX: usize = 256;

fn text_filter(field: &'static str, value: String) -> Result<Option<String>, Error> {
    if value.len() > FILTER_MAX {
        return Err(Error::invalid(field, format!("longer than {FILTER_MAX} bytes")));
    }
    Ok(non_empty(value))
}

/// Bounds on what an exec request may carry: generous for real commands,
/// far below anything that could flood memory or the audit log.
pub const EXEC_MAX_ARGS: usize = 4096;
pub const EXEC_MAX_COMMAND_BYTES: usize = 256 * 1024;
pub const EXEC_MAX_ENV: usize = 256;
pub const EXEC_MAX_ENV_BYTES: usize = 64 * 1024;
pub const PATH_MAX: usize = 4096;

/// Checks an exec request's command, environment and working directory.
pub fn exec_spec(
    command: Vec<String>,
    env: Vec<String>,
    workdir: String,
) -> Result<sandpit_core::runtime::ExecSpec, Error> {
    if command.is_empty() || command[0].is_empty() {
        return Err(Error::invalid("command", "must not be empty"));
    }
    if command.len() > EXEC_MAX_ARGS {
        return Err(Error::invalid("command", format!("more than {EXEC_MAX_ARGS} arguments")));
    }
    if command.iter().map(String::len).sum::<usize>() > EXEC_MAX_COMMAND_BYTES {
        return Err(Error::invalid("command", format!("longer than {EXEC_MAX_COMMAND_BYTES} bytes in all")));
    }
    if command.iter().any(|a| a.contains('\0')) {
        return Err(Error::invalid("command", "contains a NUL byte"));
    }
    if env.len() > EXEC_MAX_ENV {
        return Err(Error::invalid("env", format!("more than {EXEC_MAX_ENV} entries")));
    }
    if env.iter().map(String::len).sum::<usize>() > EXEC_MAX_ENV_BYTES {
        return Err(Error::invalid("env", format!("longer than {EXEC_MAX_ENV_BYTES} bytes in all")));
    }
    if let Some(bad) = env.iter().find(|e| !e.contains('=') || e.starts_with('=') || e.contains('\0')) {
        return Err(Error::invalid("env", format!("{} is not KEY=VALUE", sandpit_core::error::quoted(bad))));
    }
    if !workdir.is_empty() && (!workdir.starts_with('/') || workdir.len() > PATH_MAX || workdir.contains('\0')) {
        return Err(Error::invalid(
            "workdir",
            format!("{} must be an absolute path of at most {PATH_MAX} bytes", sandpit_core::error::quoted(&workdir)),
        ));
    }
    Ok(sandpit_core::runtime::ExecSpec { command, env, workdir: non_empty(workdir), ..Default::default() })
}

/// A field that must hold something besides whitespace.
pub fn required(field: &'static str, value: &str) -> Result<(), Error> {
    if value.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    Ok(())
}

fn classification(field: &'static str, s: &str) -> Result<sandpit_core::policy::Classification, Error> {
    required(field, s)?;
    s.parse().map_err(|e: String| Error::invalid(field, e))
}

impl TryFrom<proto::RegisterExperimentRequest> for NewExperiment {
    type Error = Error;

    fn try_from(r: proto::RegisterExperimentRequest) -> Result<Self, Error> {
        let risks = r.risks.into_iter().map(|k| new_risk(k, "risks")).collect::<Result<Vec<_>, Error>>()?;
        Ok(NewExperiment {
            title: r.title,
            purpose: r.purpose,
            ai_tools: r.ai_tools,
            models: r.models,
            classification: classification("classification", &r.classification)?,
            datasets: r.datasets,
            risks,
            planned_end: r.planned_end.as_ref().map(|t| system_time("planned_end", t)).transpose()?,
            senior_responsible_owner: r.senior_responsible_owner,
            phase: r.phase,
            function: r.function,
            region: r.region,
        })
    }
}

/// A risk as a caller describes it: the rest (id, status, reviews,
/// history) is the register's. `field` names it in errors (`risks`, `risk`).
pub fn new_risk(k: proto::Risk, field: &'static str) -> Result<register::Risk, Error> {
    let (likelihood, impact) = match field {
        "risks" => ("risks.likelihood", "risks.impact"),
        _ => ("risk.likelihood", "risk.impact"),
    };
    Ok(register::Risk::new(
        k.description,
        k.likelihood.parse().map_err(|e: String| Error::invalid(likelihood, e))?,
        k.impact.parse().map_err(|e: String| Error::invalid(impact, e))?,
        k.mitigation,
        k.owner,
    ))
}

/// A field that may be left empty (unchanged), parsed when given.
pub fn optional<T: std::str::FromStr<Err = String>>(field: &'static str, s: &str) -> Result<Option<T>, Error> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|e: String| Error::invalid(field, e))
}

impl TryFrom<proto::UpdateRiskRequest> for register::RiskChange {
    type Error = Error;

    fn try_from(r: proto::UpdateRiskRequest) -> Result<Self, Error> {
        let text = |s: String| (!s.is_empty()).then_some(s);
        Ok(register::RiskChange {
            status: optional("status", &r.status)?,
            likelihood: optional("likelihood", &r.likelihood)?,
            impact: optional("impact", &r.impact)?,
            mitigation: text(r.mitigation),
            owner: text(r.owner),
            reason: r.reason,
        })
    }
}

impl TryFrom<proto::UpdateTransparencyRequest> for register::Transparency {
    type Error = Error;

    fn try_from(r: proto::UpdateTransparencyRequest) -> Result<Self, Error> {
        // Empty: unchanged; "-": cleared.
        let field = |s: String| match s.as_str() {
            "" => None,
            "-" => Some(String::new()),
            _ => Some(s),
        };
        Ok(register::Transparency {
            senior_responsible_owner: field(r.senior_responsible_owner),
            phase: field(r.phase),
            function: field(r.function),
            region: field(r.region),
            fields: r.transparency.into_iter().collect(),
        })
    }
}

/// An assessment as recorded by `by`, now (its date defaults to now).
pub fn assessment(r: proto::RecordAssessmentRequest, by: &str, now: SystemTime) -> Result<register::Assessment, Error> {
    required("kind", &r.kind)?;
    required("status", &r.status)?;
    Ok(register::Assessment {
        kind: r.kind.parse().map_err(|e: String| Error::invalid("kind", e))?,
        status: r.status.parse().map_err(|e: String| Error::invalid("status", e))?,
        reference: r.reference,
        date: r.date.as_ref().map(|t| system_time("date", t)).transpose()?.unwrap_or(now),
        recorded_by: by.to_string(),
        recorded_at: now,
    })
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

pub fn outcome(o: i32) -> Result<register::ExperimentOutcome, Error> {
    match proto::ExperimentOutcome::try_from(o) {
        Ok(proto::ExperimentOutcome::Succeeded) => Ok(register::ExperimentOutcome::Succeeded),
        Ok(proto::ExperimentOutcome::Failed) => Ok(register::ExperimentOutcome::Failed),
        Ok(proto::ExperimentOutcome::Abandoned) => Ok(register::ExperimentOutcome::Abandoned),
        _ => Err(Error::invalid("outcome", "must be succeeded, failed or abandoned")),
    }
}

impl From<Experiment> for proto::Experiment {
    fn from(e: Experiment) -> Self {
        let now = SystemTime::now();
        let pending_functions = e.pending_functions().into_iter().map(String::from).collect();
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
                    overdue: r.overdue(now),
                    description: r.description,
                    likelihood: r.likelihood.to_string(),
                    impact: r.impact.to_string(),
                    mitigation: r.mitigation,
                    owner: r.owner,
                    id: r.id,
                    status: r.status.to_string(),
                    review_by: r.review_by.map(timestamp),
                    history: r
                        .history
                        .into_iter()
                        .map(|u| proto::RiskUpdate {
                            by: u.by,
                            team: u.team,
                            time: Some(timestamp(u.time)),
                            changes: u.changes,
                            reason: u.reason,
                        })
                        .collect(),
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
                    approver_team: a.approver_team,
                    function: a.function,
                })
                .collect(),
            outcome: match e.outcome {
                None => proto::ExperimentOutcome::Unspecified,
                Some(register::ExperimentOutcome::Succeeded) => proto::ExperimentOutcome::Succeeded,
                Some(register::ExperimentOutcome::Failed) => proto::ExperimentOutcome::Failed,
                Some(register::ExperimentOutcome::Abandoned) => proto::ExperimentOutcome::Abandoned,
            } as i32,
            lessons_learnt: e.lessons_learnt,
            created_at: Some(timestamp(e.created_at)),
            planned_end: e.planned_end.map(timestamp),
            closed_at: e.closed_at.map(timestamp),
            closed_by: e.closed_by,
            closed_by_team: e.closed_by_team,
            required_functions: e.required_functions,
            pending_functions,
            assessments: e
                .assessments
                .into_iter()
                .map(|a| proto::Assessment {
                    kind: a.kind.as_str().into(),
                    status: a.status.as_str().into(),
                    reference: a.reference,
                    date: Some(timestamp(a.date)),
                    recorded_by: a.recorded_by,
                    recorded_at: Some(timestamp(a.recorded_at)),
                })
                .collect(),
            senior_responsible_owner: e.senior_responsible_owner,
            phase: e.phase,
            function: e.function,
            region: e.region,
            transparency: e.transparency.into_iter().collect(),
            what_worked: e.what_worked,
            what_did_not: e.what_did_not,
            artefacts: e.artefacts,
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
            ..Default::default()
        }
    }
}

/// Default and largest audit page.
const PAGE_DEFAULT: usize = 100;
const PAGE_MAX: usize = 1000;
/// Largest page of audit records sent in one response, well below the 4 MiB
/// gRPC clients accept by default, whatever page size was asked for.
pub const PAGE_BYTES: usize = 1024 * 1024;

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
            actor: text_filter("actor", r.actor)?,
            experiment: {
                filter("experiment", &r.experiment)?;
                non_empty(r.experiment)
            },
            sandbox: {
                filter("sandbox", &r.sandbox)?;
                non_empty(r.sandbox)
            },
            action: text_filter("action", r.action)?,
            after_seq,
            limit,
            max_bytes: PAGE_BYTES,
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

impl From<&Profile> for proto::Profile {
    fn from(p: &Profile) -> Self {
        proto::Profile {
            name: p.name.clone(),
            description: p.description.clone(),
            max_classification: p.max_classification.to_string(),
            requires_approval: p.requires_approval,
            refuse_overdue_risk: p.refuse_overdue_risk.map(|l| l.as_str().to_string()).unwrap_or_default(),
            images: p.images.clone(),
            command: p.command.clone(),
            resources: Some(proto::ProfileResources {
                cpus: p.resources.cpus,
                memory_bytes: p.resources.memory as i64,
                pids: p.resources.pids,
                tmpfs_bytes: p.resources.tmpfs as i64,
            }),
            lifetime: Some(proto::ProfileLifetime {
                default_ttl: Some(proto_duration(p.lifetime.default_ttl)),
                max_ttl: Some(proto_duration(p.lifetime.max_ttl)),
                max_lifetime: Some(proto_duration(p.lifetime.max_lifetime)),
            }),
            network: Some(proto::ProfileNetwork {
                mode: p.network.mode.as_str().to_string(),
                allow: p
                    .network
                    .allow
                    .iter()
                    .map(|d| proto::Destination {
                        host: d.host.clone(),
                        port: d.port.into(),
                        residency: d.residency.clone(),
                    })
                    .collect(),
            }),
            datasets: p.datasets.clone(),
            file_transfer: Some(proto::ProfileFileTransfer {
                copy_in: p.file_transfer.copy_in,
                copy_out: p.file_transfer.copy_out,
                max_exec_output_bytes: p.file_transfer.max_exec_output.unwrap_or(0),
            }),
            warm_pool_size: p.warm_pool,
            source: p.source.display().to_string(),
            isolation: p.isolation.to_string(),
            unavailable: String::new(),
            port_forward_ports: p.port_forward.ports.iter().map(|p| u32::from(*p)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testing::{any_proto_duration, any_proto_timestamp, mostly, nasty_list, nasty_string};

    fn req() -> proto::CreateSandboxRequest {
        proto::CreateSandboxRequest {
            experiment: "exp".into(),
            profile: "p".into(),
            classification: "OFFICIAL".into(),
            ttl: Some(proto_duration(Duration::from_secs(60))),
            image: String::new(),
            datasets: vec![],
            cpus: 0.0,
            memory_bytes: 0,
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
    fn timestamps_rfc3339_cannot_write_are_refused() {
        // An experiment planned to end in the year 10000 once broke the register's CSV export.
        for seconds in [-1, 253_402_300_800, i64::MAX] {
            let t = pbjson_types::Timestamp { seconds, nanos: 0 };
            assert!(matches!(system_time("planned_end", &t), Err(Error::InvalidArgument { field: "planned_end", .. })));
        }
        let last = system_time("planned_end", &pbjson_types::Timestamp { seconds: 253_402_300_799, nanos: 0 }).unwrap();
        assert_eq!(sandpit_core::time::rfc3339(last), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn timestamps_keep_milliseconds() {
        let t = sandpit_core::time::from_millis(1_700_000_000_123);
        let ts = timestamp(t);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_000_000));
    }

    const HUNDRED_YEARS: u64 = sandpit_core::time::LONGEST.as_secs();

    /// An `InvalidArgument` naming one of `fields`, whose message starts with that field.
    fn names_a_field(e: &Error, fields: &[&str]) -> Result<&'static str, TestCaseError> {
        match e {
            Error::InvalidArgument { field, reason } => {
                prop_assert!(fields.contains(field), "unexpected field '{}' in {}", field, e);
                prop_assert!(!reason.trim().is_empty(), "no reason for {}", field);
                prop_assert!(e.to_string().starts_with(&format!("{field}: ")), "{}", e);
                Ok(field)
            }
            other => Err(TestCaseError::fail(format!("expected an invalid-argument error, got {other:?}"))),
        }
    }

    const CREATE_FIELDS: [&str; 9] =
        ["classification", "ttl", "experiment", "profile", "image", "datasets", "cpus", "memory", "memory_bytes"];

    /// `r` with `field` set to a valid value.
    fn fix_create(mut r: proto::CreateSandboxRequest, field: &str) -> proto::CreateSandboxRequest {
        match field {
            "classification" => r.classification = "OFFICIAL".into(),
            "ttl" => r.ttl = None,
            "experiment" => r.experiment = "exp".into(),
            "profile" => r.profile = "p".into(),
            "image" => r.image = String::new(),
            "datasets" => r.datasets.clear(),
            "cpus" => r.cpus = 0.0,
            "memory" | "memory_bytes" => r.memory_bytes = 0,
            _ => unreachable!("{field}"),
        }
        r
    }

    const REGISTER_FIELDS: [&str; 13] = [
        "title",
        "purpose",
        "ai_tools",
        "models",
        "classification",
        "datasets",
        "risks",
        "risks.description",
        "risks.likelihood",
        "risks.impact",
        "risks.mitigation",
        "risks.owner",
        "planned_end",
    ];

    fn risk() -> impl Strategy<Value = proto::Risk> {
        let level = || mostly(prop::sample::select(vec!["low", "Medium", "HIGH"]).prop_map(String::from));
        (mostly("[a-z ]{1,20}".prop_map(String::from)), level(), level(), nasty_string(), nasty_string()).prop_map(
            |(description, likelihood, impact, mitigation, owner)| proto::Risk {
                description,
                likelihood,
                impact,
                mitigation,
                owner,
                ..Default::default()
            },
        )
    }

    fn classification_name() -> impl Strategy<Value = String> {
        mostly(
            prop::sample::select(vec!["OFFICIAL", "official-sensitive", "Official_Sensitive", " SECRET", "top secret"])
                .prop_map(String::from),
        )
    }

    proptest! {
        /// A create request either converts into one that passes validation,
        /// with what was asked, or is refused naming the field at fault:
        /// setting that field right gets past it.
        #[test]
        fn create_requests_convert_or_name_the_field(
            experiment in mostly("[a-z0-9-]{1,12}".prop_map(String::from)),
            profile in mostly("[a-z0-9-]{1,12}".prop_map(String::from)),
            classification in classification_name(),
            ttl in prop::option::of(any_proto_duration()),
            image in prop_oneof![Just(String::new()), mostly("[a-z]{1,8}:[0-9]".prop_map(String::from))],
            datasets in prop_oneof![Just(vec![]), nasty_list()],
            cpus in prop_oneof![Just(0.0), 0.01f64..64.0, any::<f64>()],
            memory_bytes in prop_oneof![Just(0i64), (6i64 << 20)..(64i64 << 30), any::<i64>()],
        ) {
            let r = proto::CreateSandboxRequest { experiment, profile, classification, ttl, image, datasets, cpus, memory_bytes };
            match CreateSandbox::try_from(r.clone()) {
                Ok(c) => {
                    prop_assert!(c.validate().is_ok());
                    prop_assert_eq!(&c.experiment, &r.experiment);
                    prop_assert_eq!(&c.profile, &r.profile);
                    prop_assert_eq!(Ok(c.classification), r.classification.parse::<sandpit_core::policy::Classification>());
                    prop_assert_eq!(c.ttl.is_some(), r.ttl.is_some());
                    prop_assert!(c.ttl.is_none_or(|t| !t.is_zero() && t.as_secs() <= HUNDRED_YEARS));
                    prop_assert_eq!(c.image.as_deref(), Some(r.image.as_str()).filter(|i| !i.trim().is_empty()));
                    prop_assert_eq!(&c.datasets, &r.datasets);
                    prop_assert_eq!(c.resources.cpus, (r.cpus != 0.0).then_some(r.cpus));
                    prop_assert_eq!(c.resources.memory, (r.memory_bytes != 0).then_some(r.memory_bytes as u64));
                }
                Err(e) => {
                    let field = names_a_field(&e, &CREATE_FIELDS)?;
                    match CreateSandbox::try_from(fix_create(r, field)) {
                        Ok(_) => {}
                        Err(e) => prop_assert_ne!(names_a_field(&e, &CREATE_FIELDS)?, field),
                    }
                }
            }
        }

        #[test]
        fn extend_requests_convert_or_name_the_field(
            id in nasty_string(),
            ttl in prop::option::of(any_proto_duration()),
        ) {
            let r = proto::ExtendSandboxRequest { id, ttl };
            match extend_request(r.clone()) {
                Ok((id, ttl)) => {
                    prop_assert_eq!(id, r.id);
                    let d = r.ttl.unwrap();
                    prop_assert_eq!(ttl, Duration::new(d.seconds as u64, d.nanos as u32));
                    prop_assert!(ttl.as_secs() <= HUNDRED_YEARS);
                }
                Err(e) => {
                    names_a_field(&e, &["id", "ttl"])?;
                }
            }
        }

        /// Durations: accepted exactly when non-negative, normalised and at
        /// most a hundred years.
        #[test]
        fn durations_are_accepted_exactly_in_range(d in any_proto_duration()) {
            let in_range = (0..=HUNDRED_YEARS as i64).contains(&d.seconds) && (0..1_000_000_000).contains(&d.nanos);
            match duration("timeout", &d) {
                Ok(got) => {
                    prop_assert!(in_range);
                    prop_assert_eq!(proto_duration(got), d);
                }
                Err(e) => {
                    prop_assert!(!in_range);
                    names_a_field(&e, &["timeout"])?;
                }
            }
        }

        /// Whatever timestamp a client sends, one that is accepted can be
        /// stored (milliseconds), read back and printed as RFC 3339 (as the
        /// CLI and the CSV export do).
        #[test]
        fn accepted_timestamps_can_be_stored_and_printed(t in any_proto_timestamp()) {
            match system_time("since", &t) {
                Ok(st) => {
                    let ms = sandpit_core::time::to_millis(st);
                    prop_assert_eq!(ms, t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
                    prop_assert_eq!(sandpit_core::time::from_millis(ms), st);
                    let printed = sandpit_core::time::rfc3339(st);
                    prop_assert_eq!(sandpit_core::time::parse_rfc3339(&printed).map(sandpit_core::time::to_millis), Some(ms / 1000 * 1000));
                    let back = timestamp(st);
                    prop_assert_eq!((back.seconds, back.nanos / 1_000_000), (t.seconds, t.nanos / 1_000_000));
                }
                Err(e) => {
                    names_a_field(&e, &["since"])?;
                }
            }
        }

        #[test]
        fn register_requests_convert_or_name_the_field(
            title in mostly("[A-Za-z ]{1,20}".prop_map(String::from)),
            purpose in mostly("[A-Za-z ]{1,20}".prop_map(String::from)),
            ai_tools in prop_oneof![Just(vec![]), nasty_list()],
            models in prop_oneof![Just(vec![]), nasty_list()],
            classification in classification_name(),
            datasets in prop_oneof![Just(vec![]), nasty_list()],
            risks in prop_oneof![4 => prop::collection::vec(risk(), 0..3), 1 => prop::collection::vec(risk(), 64..66)],
            planned_end in prop::option::of(any_proto_timestamp()),
        ) {
            let r = proto::RegisterExperimentRequest {
                title, purpose, ai_tools, models, classification, datasets, risks, planned_end,
                ..Default::default()
            };
            let now = SystemTime::now();
            // As the manager does: convert, then validate when creating the entry.
            let converted = NewExperiment::try_from(r.clone())
                .and_then(|n| Experiment::new("exp-1".into(), "alice", "team", n, now));
            match converted {
                Ok(e) => {
                    prop_assert_eq!(&e.title, &r.title);
                    prop_assert_eq!(e.risks.len(), r.risks.len());
                    // Everything shown back to people renders.
                    let shown = proto::Experiment::from(e.clone());
                    if let Some(end) = e.planned_end {
                        prop_assert!(end > now);
                        sandpit_core::time::rfc3339(end);
                    }
                    prop_assert_eq!(shown.planned_end.is_some(), r.planned_end.is_some());
                }
                Err(e) => {
                    names_a_field(&e, &REGISTER_FIELDS)?;
                }
            }
        }

        #[test]
        fn audit_queries_convert_or_name_the_field(
            since in prop::option::of(any_proto_timestamp()),
            until in prop::option::of(any_proto_timestamp()),
            actor in nasty_string(),
            action in nasty_string(),
            experiment in prop_oneof![Just(String::new()), nasty_string()],
            sandbox in prop_oneof![Just(String::new()), nasty_string()],
            page_size in prop_oneof![0u32..2000, any::<u32>()],
            page_token in prop_oneof![Just(String::new()), any::<u64>().prop_map(|n| n.to_string()), nasty_string()],
        ) {
            let r = proto::QueryAuditLogRequest {
                since, until, actor, action, page_size, page_token, experiment, sandbox,
            };
            match AuditQuery::try_from(r.clone()) {
                Ok(q) => {
                    prop_assert!((1..=PAGE_MAX).contains(&q.limit));
                    prop_assert_eq!(q.actor.is_some(), !r.actor.trim().is_empty());
                    // Every filter is bounded, and pages are bounded in bytes.
                    for f in [&q.actor, &q.action, &q.experiment, &q.sandbox].into_iter().flatten() {
                        prop_assert!(f.len() <= 256);
                    }
                    prop_assert_eq!(q.max_bytes, PAGE_BYTES);
                }
                Err(e) => {
                    names_a_field(&e, &["since", "until", "page_size", "page_token", "actor", "action", "experiment", "sandbox"])?;
                }
            }
        }

        /// Enum values a newer (or hostile) client may send.
        #[test]
        fn unknown_enum_values_are_refused_by_name(v in prop_oneof![-2i32..8, any::<i32>()]) {
            match status_filter(v) {
                Ok(s) => prop_assert!((0..=4).contains(&v) && s.is_some() == (v != 0)),
                Err(e) => { names_a_field(&e, &["status"])?; }
            }
            match outcome(v) {
                Ok(_) => prop_assert!((1..=3).contains(&v)),
                Err(e) => { names_a_field(&e, &["outcome"])?; }
            }
        }
    }
}
