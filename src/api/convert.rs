//! Conversions between protobuf messages and domain types, in one place.

use std::time::{Duration, SystemTime};

use crate::lifecycle::ExecOutput;
use crate::policy::CreateSandbox;
use crate::proto;
use crate::runtime::PullProgress;
use crate::sandbox::{EventKind, Sandbox, SandboxEvent, SandboxState};
use crate::Error;

pub fn timestamp(t: SystemTime) -> pbjson_types::Timestamp {
    let ms = crate::time::to_millis(t);
    pbjson_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
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
    pbjson_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.trim().is_empty()).then_some(s)
}

impl TryFrom<proto::CreateSandboxRequest> for CreateSandbox {
    type Error = Error;

    fn try_from(r: proto::CreateSandboxRequest) -> Result<Self, Error> {
        if r.classification.trim().is_empty() {
            return Err(Error::invalid("classification", "must not be empty"));
        }
        let classification = r
            .classification
            .parse()
            .map_err(|e: String| Error::invalid("classification", e))?;
        let req = CreateSandbox {
            experiment: r.experiment,
            profile: r.profile,
            classification,
            ttl: r.ttl.as_ref().map(|d| duration("ttl", d)).transpose()?,
            image: non_empty(r.image),
        };
        req.validate()?;
        Ok(req)
    }
}

pub fn state(s: SandboxState) -> proto::SandboxState {
    match s {
        SandboxState::Provisioning => proto::SandboxState::Provisioning,
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
            network_mode: s.profile.network.as_str().to_string(),
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

impl From<PullProgress> for proto::PullProgress {
    fn from(p: PullProgress) -> Self {
        proto::PullProgress {
            status: p.status,
            layer: p.layer,
            current: p.current,
            total: p.total,
            done: false,
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
        assert_eq!(
            field_of(proto::CreateSandboxRequest {
                classification: "".into(),
                ..req()
            }),
            "classification"
        );
        assert_eq!(
            field_of(proto::CreateSandboxRequest {
                classification: "RESTRICTED".into(),
                ..req()
            }),
            "classification"
        );
        assert_eq!(
            field_of(proto::CreateSandboxRequest {
                experiment: "".into(),
                ..req()
            }),
            "experiment"
        );
        assert_eq!(
            field_of(proto::CreateSandboxRequest {
                profile: "".into(),
                ..req()
            }),
            "profile"
        );
        let neg = pbjson_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(
            field_of(proto::CreateSandboxRequest {
                ttl: Some(neg),
                ..req()
            }),
            "ttl"
        );
        let zero = pbjson_types::Duration {
            seconds: 0,
            nanos: 0,
        };
        assert_eq!(
            field_of(proto::CreateSandboxRequest {
                ttl: Some(zero),
                ..req()
            }),
            "ttl"
        );
        let huge = pbjson_types::Duration {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(
            field_of(proto::CreateSandboxRequest {
                ttl: Some(huge),
                ..req()
            }),
            "ttl"
        );
    }

    #[test]
    fn timestamps_keep_milliseconds() {
        let t = crate::time::from_millis(1_700_000_000_123);
        let ts = timestamp(t);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_000_000));
    }
}
