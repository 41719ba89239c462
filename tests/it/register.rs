//! The AI register under racing decisions, and what a decision does to the
//! sandboxes an experiment already has.

use futures_util::StreamExt;
use sandpit_proto::{self as proto, ExperimentStatus, SandboxState};
use tonic::Code;

use crate::support::*;

fn decide(id: &str, conditions: &str) -> proto::DecideExperimentRequest {
    proto::DecideExperimentRequest { id: id.into(), conditions: conditions.into(), ..Default::default() }
}

fn close(id: &str, lessons: &str) -> proto::CloseExperimentRequest {
    proto::CloseExperimentRequest {
        id: id.into(),
        outcome: proto::ExperimentOutcome::Abandoned as i32,
        lessons_learnt: lessons.into(),
        ..Default::default()
    }
}

/// A refusal of a racing decision: FAILED_PRECONDITION naming the status it found.
fn lost_race(e: &tonic::Status) {
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        ["is approved", "is rejected", "is closed", "already closed"].iter().any(|s| e.message().contains(s)),
        "the refusal names the status it found: {}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_decisions_have_one_winner_and_never_reopen_a_closed_experiment() {
    let d = Daemon::start().await;
    race_decisions(&d, &d).await;
}

/// Approves on `d` against rejects and closes on `other` (the same daemon,
/// or another on the same store), and checks what stood and what the audit
/// log says.
pub async fn race_decisions(d: &Daemon, other: &Daemon) {
    let mut ids = Vec::new();
    for _ in 0..16 {
        ids.push(d.experiment(TEAM_A, "OFFICIAL").await);
    }
    let (approvers, closers) = (d.register(APPROVER).await, other.register(APPROVER).await);
    let rejecters = other.register(APPROVER).await;

    // Approve against reject: exactly one decision stands.
    let races = ids[..8].iter().map(|id| {
        let (mut ap, mut rj) = (approvers.clone(), rejecters.clone());
        async move {
            let (a, r) = tokio::join!(ap.approve_experiment(decide(id, "yes")), rj.reject_experiment(decide(id, "no")));
            (id.clone(), a.map(|r| r.into_inner()), r.map(|r| r.into_inner()))
        }
    });
    for (id, a, r) in futures_util::future::join_all(races).await {
        let winner = match (&a, &r) {
            (Ok(e), Err(loser)) | (Err(loser), Ok(e)) => {
                lost_race(loser);
                e.clone()
            }
            _ => panic!("exactly one of approve and reject must win for {id}: {a:?} / {r:?}"),
        };
        let now = d.register(AUDITOR).await.get_experiment(proto::GetExperimentRequest { id }).await.unwrap();
        let now = now.into_inner();
        assert_eq!((now.status, now.approvals.len()), (winner.status, 1), "one decision on record");
    }

    // Approve against close: both may stand (approved, then closed), but a
    // close that succeeded is never undone and keeps its lessons.
    let races = ids[8..].iter().map(|id| {
        let (mut ap, mut cl) = (approvers.clone(), closers.clone());
        async move {
            let (a, c) =
                tokio::join!(ap.approve_experiment(decide(id, "yes")), cl.close_experiment(close(id, "lesson")));
            (id.clone(), a.map(|r| r.into_inner()), c.map(|r| r.into_inner()))
        }
    });
    for (id, a, c) in futures_util::future::join_all(races).await {
        for r in [a.as_ref().err(), c.as_ref().err()].into_iter().flatten() {
            lost_race(r);
        }
        assert!(a.is_ok() || c.is_ok(), "one of them wins for {id}");
        let now = d.register(AUDITOR).await.get_experiment(proto::GetExperimentRequest { id: id.clone() }).await;
        let now = now.unwrap().into_inner();
        if c.is_ok() {
            assert_eq!(now.status, ExperimentStatus::Closed as i32, "{id}: a successful close is never reopened");
            assert_eq!(now.lessons_learnt, "lesson", "{id}: its lessons are kept");
        } else {
            assert_eq!(now.status, ExperimentStatus::Approved as i32, "{id}");
        }
    }

    // The audit log has one succeeded record per decision that stood, and
    // each refusal is recorded as failed or denied.
    let mut audit = d.audit(AUDITOR).await;
    for id in &ids {
        let q = proto::QueryAuditLogRequest { experiment: id.clone(), page_size: 100, ..Default::default() };
        let events = audit.query_audit_log(q).await.unwrap().into_inner().events;
        let now = d.register(AUDITOR).await.get_experiment(proto::GetExperimentRequest { id: id.clone() }).await;
        let now = now.unwrap().into_inner();
        let succeeded: Vec<&str> = events
            .iter()
            .filter(|e| e.outcome == "succeeded" && !e.action.ends_with("RegisterExperiment"))
            .map(|e| e.action.rsplit('/').next().unwrap())
            .collect();
        let expected = match (ExperimentStatus::try_from(now.status).unwrap(), now.approvals.len()) {
            (ExperimentStatus::Closed, 1) => vec!["ApproveExperiment", "CloseExperiment"],
            (ExperimentStatus::Closed, _) => vec!["CloseExperiment"],
            (ExperimentStatus::Approved, _) => vec!["ApproveExperiment"],
            (ExperimentStatus::Rejected, _) => vec!["RejectExperiment"],
            other => panic!("{id}: unexpected {other:?}"),
        };
        assert_eq!(succeeded, expected, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rejecting_tears_down_and_the_register_keeps_who_decided_and_closed() {
    let d = Daemon::start().await;
    let mut a = d.client(TEAM_A).await;
    // At OFFICIAL a proposed experiment may already have sandboxes.
    let rejected = d.experiment(TEAM_A, "OFFICIAL").await;
    let doomed = [create(&mut a, &rejected, 300).await, create(&mut a, &rejected, 300).await];
    let other = create(&mut a, &d.exp_a, 300).await;

    let r = d.register(APPROVER).await.reject_experiment(decide(&rejected, "no personal data")).await.unwrap();
    let r = r.into_inner();
    assert_eq!(r.status, ExperimentStatus::Rejected as i32);
    assert_eq!((r.approvals[0].approver.as_str(), r.approvals[0].approver_team.as_str()), ("amir", "alg"));
    for sb in &doomed {
        let rec = a.get_sandbox(proto::GetSandboxRequest { id: sb.id.clone() }).await.unwrap().into_inner();
        assert_eq!(state(&rec), SandboxState::Deleted, "a rejected experiment keeps no sandbox");
        assert!(rec.state_reason.contains("experiment rejected by amir"), "{}", rec.state_reason);
        assert!(!container_exists(&sb.container_id).await);
    }
    assert!(container_exists(&other.container_id).await, "other experiments keep their sandboxes");
    let e = a.create_sandbox(create_req(&rejected, 60)).await.unwrap_err();
    assert!(e.message().contains("experiment-status"), "{}", e.message());

    let mut audit = d.audit(AUDITOR).await;
    let q = proto::QueryAuditLogRequest { experiment: rejected.clone(), page_size: 100, ..Default::default() };
    let events = audit.query_audit_log(q).await.unwrap().into_inner().events;
    let teardowns: Vec<&str> =
        events.iter().filter(|e| e.action == "reject-teardown").map(|e| e.sandbox.as_str()).collect();
    assert_eq!(teardowns, [doomed[0].id.as_str(), doomed[1].id.as_str()], "each teardown is audited");
    assert!(events.iter().all(|e| e.action != "reject-teardown" || e.actor == "amir"));

    // Who closed, with their team, is kept and exported.
    let closed_exp = d.experiment(TEAM_A, "OFFICIAL").await;
    let c = d.register(APPROVER).await.close_experiment(close(&closed_exp, "done")).await.unwrap().into_inner();
    assert_eq!((c.closed_by.as_str(), c.closed_by_team.as_str()), ("amir", "alg"));
    let proposed = d.experiment(TEAM_A, "OFFICIAL").await;

    let export = |format: proto::ExportFormat| {
        let mut audit = audit.clone();
        async move {
            let req = proto::ExportRequest {
                kind: proto::ExportKind::Register as i32,
                format: format as i32,
                ..Default::default()
            };
            let mut s = audit.export(req).await.unwrap().into_inner();
            let mut out = Vec::new();
            while let Some(c) = s.next().await {
                out.extend(c.unwrap().data);
            }
            String::from_utf8(out).unwrap()
        }
    };
    let json: serde_json::Value = serde_json::from_str(&export(proto::ExportFormat::Json).await).unwrap();
    let find = |id: &str| json.as_array().unwrap().iter().find(|e| e["id"] == id).unwrap().clone();
    assert_eq!(find(&closed_exp)["closedBy"], "amir");
    assert_eq!(find(&closed_exp)["closedByTeam"], "alg");
    assert_eq!(find(&rejected)["approvals"][0]["approverTeam"], "alg");
    let csv = export(proto::ExportFormat::Csv).await;
    assert!(csv.lines().next().unwrap().contains(",closed_by,closed_by_team,required_functions,"), "{csv}");
    let row = csv.lines().find(|l| l.starts_with(&closed_exp)).unwrap();
    assert!(row.contains(",amir,alg,"), "{row}");
    let row = csv.lines().find(|l| l.starts_with(&rejected)).unwrap();
    assert!(row.contains("rejected by amir (alg)"), "{row}");

    // `audit active` lists only experiments that can have sandboxes.
    let active = audit.list_active_experiments(proto::ListActiveExperimentsRequest {}).await.unwrap().into_inner();
    let listed: Vec<String> = active.experiments.iter().map(|x| x.experiment.as_ref().unwrap().id.clone()).collect();
    assert!(listed.contains(&d.exp_a) && listed.contains(&proposed), "{listed:?}");
    assert!(!listed.contains(&rejected) && !listed.contains(&closed_exp), "{listed:?}");
}

/// Sets an experiment's status behind the daemon's back: the window between
/// a decision and the teardown it starts, held open.
fn set_status(d: &Daemon, id: &str, status: &str) {
    let conn = rusqlite::Connection::open(d.data_dir().join("sandpit.db")).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    let body: String = conn.query_row("SELECT body FROM experiments WHERE id = ?1", [id], |r| r.get(0)).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["status"] = status.into();
    conn.execute("UPDATE experiments SET status = ?2, body = ?3 WHERE id = ?1", (id, status, v.to_string())).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_is_used_only_while_its_experiment_allows_it() {
    let d = Daemon::with(Options {
        profiles: vec![(
            "test-transfer".into(),
            "max_classification = \"OFFICIAL\"\nimages = [\"{image}\"]\ncommand = [\"sleep\", \"infinity\"]\n\
             [file_transfer]\ncopy_in = true\ncopy_out = true\n"
                .into(),
        )],
        ..Default::default()
    })
    .await;
    let mut a = d.client(TEAM_A).await;
    let exp = d.experiment(TEAM_A, "OFFICIAL").await;
    let req = proto::CreateSandboxRequest { profile: "test-transfer".into(), ..create_req(&exp, 300) };
    let sb = a.create_sandbox(req).await.unwrap().into_inner();
    let exec = |id: &str| proto::ExecRequest { id: id.into(), command: vec!["true".into()], ..Default::default() };
    let extend = |id: &str| proto::ExtendSandboxRequest { id: id.into(), ttl: ttl(120) };
    // Proposed at OFFICIAL: usable.
    a.extend_sandbox(extend(&sb.id)).await.unwrap();
    let mut out = a.exec(exec(&sb.id)).await.unwrap().into_inner();
    while out.next().await.is_some() {}

    for status in ["rejected", "closed"] {
        set_status(&d, &exp, status);
        let refused = |e: tonic::Status, what: &str| {
            assert_eq!(e.code(), Code::FailedPrecondition, "{what} on a {status} experiment: {e:?}");
            assert!(e.message().contains("experiment-status"), "{what}: {}", e.message());
        };
        refused(a.extend_sandbox(extend(&sb.id)).await.unwrap_err(), "extend");
        refused(a.exec(exec(&sb.id)).await.unwrap_err(), "exec");
        let out = a.copy_out(proto::CopyOutRequest { id: sb.id.clone(), path: "/tmp".into() }).await;
        refused(out.unwrap_err(), "copy-out");
        let header = proto::CopyInRequest {
            part: Some(proto::copy_in_request::Part::Header(proto::CopyInHeader {
                id: sb.id.clone(),
                path: "/tmp".into(),
            })),
        };
        refused(a.copy_in(futures_util::stream::iter([header])).await.unwrap_err(), "copy-in");
    }

    // An approval-only profile needs the experiment approved, not merely proposed.
    let sensitive = d.experiment(TEAM_A, "OFFICIAL-SENSITIVE").await;
    d.register(APPROVER).await.approve_experiment(decide(&sensitive, "")).await.unwrap();
    let req = proto::CreateSandboxRequest {
        profile: "test-sensitive".into(),
        classification: "OFFICIAL-SENSITIVE".into(),
        ..create_req(&sensitive, 300)
    };
    let sb = a.create_sandbox(req).await.unwrap().into_inner();
    set_status(&d, &sensitive, "proposed");
    let e = a.extend_sandbox(extend(&sb.id)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("experiment-approval"), "{}", e.message());
}
