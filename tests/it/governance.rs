//! The AI register, roles on every service, and the audit log as the AI
//! Leadership Group relies on it.

use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use sandpit_proto::{self as proto, SandboxState};
use tonic::Code;

use crate::support::*;

fn decide(id: &str) -> proto::DecideExperimentRequest {
    proto::DecideExperimentRequest { id: id.into(), conditions: "review in a month".into(), ..Default::default() }
}

/// One call per service per caller: who is allowed, who is refused with which code.
#[tokio::test(flavor = "multi_thread")]
async fn each_role_is_allowed_and_refused_on_each_service() {
    let d = Daemon::start().await;
    let allowed = |r: Result<(), tonic::Status>, who: &str, what: &str| {
        if let Err(e) = r {
            assert!(
                !matches!(e.code(), Code::PermissionDenied | Code::Unauthenticated),
                "{who} should be allowed to {what}: {e:?}"
            );
        }
    };
    let refused = |r: Result<(), tonic::Status>, code: Code, who: &str, what: &str| {
        let e = r.expect_err(&format!("{who} must not {what}"));
        assert_eq!(e.code(), code, "{who} {what}: {}", e.message());
    };

    for (who, token) in
        [("requester", TEAM_A), ("operator", OPERATOR), ("approver", APPROVER), ("auditor", AUDITOR), ("nobody", "")]
    {
        let mut sandboxes = if token.is_empty() { d.anonymous().await } else { d.client(token).await };
        let mut register = d.register(if token.is_empty() { "bogus" } else { token }).await;
        let mut audit = d.audit(if token.is_empty() { "bogus" } else { token }).await;

        let create = sandboxes.create_sandbox(create_req(&d.exp_a, 60)).await.map(|_| ());
        let list = sandboxes.list_sandboxes(proto::ListSandboxesRequest::default()).await.map(|_| ());
        let reg = register
            .register_experiment(proto::RegisterExperimentRequest {
                title: "t".into(),
                purpose: "p".into(),
                classification: "OFFICIAL".into(),
                ..Default::default()
            })
            .await
            .map(|_| ());
        let approve = register.approve_experiment(decide("exp-0000000000")).await.map(|_| ());
        let query = audit.query_audit_log(proto::QueryAuditLogRequest::default()).await.map(|_| ());
        let verify = audit.verify_audit_log(proto::VerifyAuditLogRequest::default()).await.map(|_| ());
        let active = audit.list_active_experiments(proto::ListActiveExperimentsRequest {}).await.map(|_| ());

        let deny = Code::PermissionDenied;
        match who {
            "requester" => {
                allowed(create, who, "create");
                allowed(list, who, "list");
                allowed(reg, who, "register");
                refused(approve, deny, who, "approve");
                refused(query, deny, who, "query the audit log");
                refused(verify, deny, who, "verify");
                refused(active, deny, who, "list active experiments");
            }
            "operator" => {
                refused(create, deny, who, "create");
                allowed(list, who, "list");
                refused(reg, deny, who, "register");
                refused(approve, deny, who, "approve");
                refused(query, deny, who, "query the audit log");
                refused(verify, deny, who, "verify");
                refused(active, deny, who, "list active experiments");
            }
            "approver" => {
                refused(create, deny, who, "create");
                allowed(list, who, "list");
                refused(reg, deny, who, "register");
                // Allowed by role; the experiment does not exist.
                refused(approve, Code::NotFound, who, "approve a missing experiment");
                refused(query, deny, who, "query the audit log");
                refused(verify, deny, who, "verify");
                allowed(active, who, "list active experiments");
            }
            "auditor" => {
                refused(create, deny, who, "create");
                allowed(list, who, "list");
                refused(reg, deny, who, "register");
                refused(approve, deny, who, "approve");
                allowed(query, who, "query the audit log");
                allowed(verify, who, "verify");
                allowed(active, who, "list active experiments");
            }
            _ => {
                for (r, what) in [
                    (create, "create"),
                    (list, "list"),
                    (reg, "register"),
                    (approve, "approve"),
                    (query, "query"),
                    (verify, "verify"),
                    (active, "active"),
                ] {
                    refused(r, Code::Unauthenticated, who, what);
                }
            }
        }
    }

    // Every refusal is on record, with the caller and the method.
    let mut audit = d.audit(AUDITOR).await;
    let q = proto::QueryAuditLogRequest { actor: "olive".into(), page_size: 1000, ..Default::default() };
    let events = audit.query_audit_log(q).await.unwrap().into_inner().events;
    assert!(events.iter().any(|e| e.action.ends_with("AuditService/QueryAuditLog")
        && e.outcome == "denied"
        && e.code == "PERMISSION_DENIED"));
    let q = proto::QueryAuditLogRequest { actor: "anonymous".into(), page_size: 1000, ..Default::default() };
    let anon = audit.query_audit_log(q).await.unwrap().into_inner().events;
    assert_eq!(anon.len(), 7, "every unauthenticated call is recorded");
    assert!(anon.iter().all(|e| e.code == "UNAUTHENTICATED" && e.source.starts_with("127.0.0.1:")));
}

#[tokio::test(flavor = "multi_thread")]
async fn approvals_gate_sensitive_sandboxes_and_no_one_approves_their_own_team() {
    let d = Daemon::start().await;
    let mut a = d.client(TEAM_A).await;
    let exp = d.experiment(TEAM_A, "OFFICIAL-SENSITIVE").await;
    let sensitive = |exp: &str| proto::CreateSandboxRequest {
        profile: "test-sensitive".into(),
        classification: "OFFICIAL-SENSITIVE".into(),
        ..create_req(exp, 60)
    };

    let e = a.create_sandbox(sensitive(&exp)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("experiment-approval"), "{}", e.message());

    let e = d.register(APPROVER_A).await.approve_experiment(decide(&exp)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("self-approval"), "{}", e.message());
    let e = d.register(TEAM_A).await.approve_experiment(decide(&exp)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "a requester cannot approve");

    let approved = d.register(APPROVER).await.approve_experiment(decide(&exp)).await.unwrap().into_inner();
    assert_eq!(approved.status, proto::ExperimentStatus::Approved as i32);
    let approval = &approved.approvals[0];
    assert_eq!((approval.approver.as_str(), approval.decision.as_str()), ("amir", "approved"));
    assert_eq!(approval.conditions, "review in a month");
    assert!(approval.time.is_some());
    let e = d.register(APPROVER).await.reject_experiment(decide(&exp)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "decided experiments stay decided");

    let sb = a.create_sandbox(sensitive(&exp)).await.unwrap().into_inner();
    assert_eq!(state(&sb), SandboxState::Running);

    // The other admission rules about experiments.
    let e = a.create_sandbox(create_req("exp-unregistered", 60)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("experiment-registered"), "{}", e.message());
    let e = d.client(TEAM_B).await.create_sandbox(create_req(&exp, 60)).await.unwrap_err();
    assert!(e.message().contains("experiment-registered"), "another team's experiment: {}", e.message());
    let official = d.experiment(TEAM_A, "OFFICIAL").await;
    let e = a.create_sandbox(sensitive(&official)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("experiment-classification"), "{}", e.message());
    let ok = a.create_sandbox(create_req(&official, 60)).await.unwrap().into_inner();
    assert_eq!(state(&ok), SandboxState::Running, "OFFICIAL needs no approval");

    // Requesters see their own team's register entries only.
    let mut b = d.register(TEAM_B).await;
    assert_eq!(
        b.get_experiment(proto::GetExperimentRequest { id: exp.clone() }).await.unwrap_err().code(),
        Code::NotFound
    );
    let listed = b.list_experiments(proto::ListExperimentsRequest::default()).await.unwrap().into_inner();
    assert!(listed.experiments.is_empty());
    let mut auditor_view = d.audit(AUDITOR).await;
    let active =
        auditor_view.list_active_experiments(proto::ListActiveExperimentsRequest {}).await.unwrap().into_inner();
    let entry = active.experiments.iter().find(|x| x.experiment.as_ref().unwrap().id == exp).expect("listed");
    assert_eq!(entry.sandboxes.len(), 1);
    assert_eq!(entry.sandboxes[0].sandbox.as_ref().unwrap().profile, "test-sensitive");
    let left = entry.sandboxes[0].time_left.as_ref().unwrap().seconds;
    assert!((50..=60).contains(&left), "time left {left}");
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_an_experiment_tears_down_its_sandboxes() {
    let d = Daemon::start().await;
    let mut a = d.client(TEAM_A).await;
    let exp = d.experiment(TEAM_A, "OFFICIAL").await;
    let one = create(&mut a, &exp, 300).await;
    let two = create(&mut a, &exp, 300).await;
    let other = create(&mut a, &d.exp_a, 300).await;

    let close = proto::CloseExperimentRequest {
        id: exp.clone(),
        outcome: proto::ExperimentOutcome::Succeeded as i32,
        lessons_learnt: "Rules beat the model on short answers".into(),
        ..Default::default()
    };
    assert_eq!(
        d.register(TEAM_A).await.close_experiment(close.clone()).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let closed = d.register(APPROVER).await.close_experiment(close.clone()).await.unwrap().into_inner();
    assert_eq!(closed.status, proto::ExperimentStatus::Closed as i32);
    assert_eq!(closed.outcome, proto::ExperimentOutcome::Succeeded as i32);
    assert_eq!(closed.lessons_learnt, "Rules beat the model on short answers");

    for sb in [&one, &two] {
        let rec = a.get_sandbox(proto::GetSandboxRequest { id: sb.id.clone() }).await.unwrap().into_inner();
        assert_eq!(state(&rec), SandboxState::Deleted);
        assert!(rec.state_reason.contains("experiment closed"), "{}", rec.state_reason);
        assert!(!container_exists(&sb.container_id).await);
    }
    assert!(container_exists(&other.container_id).await, "other experiments keep their sandboxes");
    let e = a.create_sandbox(create_req(&exp, 60)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("experiment-status"), "{}", e.message());
    assert_eq!(d.register(APPROVER).await.close_experiment(close).await.unwrap_err().code(), Code::FailedPrecondition);
}

/// (action suffix, outcome, actor) of each audit record.
fn shape(events: &[proto::AuditEvent]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| (e.action.rsplit('/').next().unwrap().to_string(), e.outcome.clone(), e.actor.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scripted_session_produces_exactly_the_expected_audit_events() {
    let d = Daemon::start().await;
    let mut watch = d.audit(AUDITOR).await.watch_audit_log(proto::WatchAuditLogRequest {}).await.unwrap().into_inner();
    let mut a = d.client(TEAM_A).await;
    let exp = d.experiment(TEAM_A, "OFFICIAL").await;
    let keep = create(&mut a, &exp, 120).await;
    let e = a.create_sandbox(create_req(&exp, 3600)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    a.extend_sandbox(proto::ExtendSandboxRequest { id: keep.id.clone(), ttl: ttl(300) }).await.unwrap();
    a.extend_sandbox(proto::ExtendSandboxRequest { id: keep.id.clone(), ttl: ttl(3600) }).await.unwrap_err();
    let short = create(&mut a, &exp, 2).await;
    eventually(Duration::from_secs(8), "expiry", || {
        let mut a = a.clone();
        let id = short.id.clone();
        async move {
            let r = a.get_sandbox(proto::GetSandboxRequest { id }).await.unwrap().into_inner();
            (state(&r) == SandboxState::Expired).then_some(())
        }
    })
    .await;
    a.delete_sandbox(proto::DeleteSandboxRequest { id: keep.id.clone() }).await.unwrap();

    let s = |a: &str, o: &str, who: &str| (a.to_string(), o.to_string(), who.to_string());
    let expected = vec![
        s("RegisterExperiment", "succeeded", "alice"),
        s("CreateSandbox", "succeeded", "alice"),
        s("CreateSandbox", "denied", "alice"),
        s("ExtendSandbox", "succeeded", "alice"),
        s("ExtendSandbox", "denied", "alice"),
        s("CreateSandbox", "succeeded", "alice"),
        s("expire", "succeeded", "sandpitd"),
        s("DeleteSandbox", "succeeded", "alice"),
    ];
    let mut audit = d.audit(AUDITOR).await;
    let q = proto::QueryAuditLogRequest { experiment: exp.clone(), ..Default::default() };
    let events = audit.query_audit_log(q).await.unwrap().into_inner().events;
    assert_eq!(shape(&events), expected);
    assert_eq!(events[1].sandbox, keep.id);
    assert_eq!((events[2].code.as_str(), events[1].role.as_str()), ("PERMISSION_DENIED", "requester"));
    assert!(events[2].reason.contains("rule 'ttl'"), "{}", events[2].reason);
    assert_eq!((events[6].sandbox.as_str(), events[6].source.as_str()), (short.id.as_str(), "daemon"));
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq && w[1].prev_hash == w[0].hash || w[1].seq > w[0].seq + 1));

    // The live stream carried the same records, in the same order.
    let mut streamed = Vec::new();
    while streamed.len() < events.len() {
        let ev = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("stream").unwrap().unwrap();
        if ev.experiment == exp {
            streamed.push(ev);
        }
    }
    assert_eq!(streamed, events);

    // Paging walks the same records.
    let q = proto::QueryAuditLogRequest { experiment: exp.clone(), page_size: 3, ..Default::default() };
    let first = audit.query_audit_log(q.clone()).await.unwrap().into_inner();
    assert_eq!(first.events.len(), 3);
    let next = proto::QueryAuditLogRequest { page_token: first.next_page_token, ..q };
    assert_eq!(audit.query_audit_log(next).await.unwrap().into_inner().events[0], events[3]);

    let report = audit.verify_audit_log(proto::VerifyAuditLogRequest::default()).await.unwrap().into_inner();
    assert!(report.ok, "{report:?}");
}

fn verify_offline(data_dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sandpit"))
        .args(["audit", "verify", "--data-dir"])
        .arg(data_dir)
        .env_remove("SANDPIT_ADDR")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
}

/// Copies a stopped daemon's data directory, applies `sql` to the copy's store.
fn tampered(src: &std::path::Path, sql: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("sandpit.db"), dir.path().join("sandpit.db")).unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("sandpit.db")).unwrap();
    conn.execute_batch(sql).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn editing_deleting_or_reordering_audit_rows_is_detected() {
    let mut d = Daemon::start().await;
    let mut a = d.client(TEAM_A).await;
    for _ in 0..3 {
        let sb = create(&mut a, &d.exp_a, 60).await;
        a.delete_sandbox(proto::DeleteSandboxRequest { id: sb.id }).await.unwrap();
    }
    assert!(d.terminate().success());
    let data = d.data_dir();
    let n: i64 = rusqlite::Connection::open(data.join("sandpit.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert!(n >= 8, "{n} records");

    let (ok, out) = verify_offline(&data);
    assert!(ok, "an untouched log verifies: {out}");
    assert!(out.contains(&format!("{n} records")), "{out}");

    let cases = [
        ("edit a reason", "UPDATE audit SET reason = 'nothing happened' WHERE seq = 4", "record 4"),
        ("edit an actor", "UPDATE audit SET actor = 'mallory' WHERE seq = 2", "record 2"),
        ("delete a row", "DELETE FROM audit WHERE seq = 5", "record 6"),
        (
            "reorder two rows",
            "UPDATE audit SET seq = -1 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 6; UPDATE audit SET seq = 6 WHERE seq = -1;",
            "record 3",
        ),
        (
            "delete the last row",
            "DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)",
            "removed from the end",
        ),
    ];
    for (what, sql, names) in cases {
        let copy = tampered(&data, sql);
        let (ok, out) = verify_offline(copy.path());
        assert!(!ok, "{what}: verify must fail");
        assert!(out.contains(names), "{what}: '{out}' should name {names}");
    }

    // The daemon's own verify sees a tampered file too.
    rusqlite::Connection::open(data.join("sandpit.db"))
        .unwrap()
        .execute("UPDATE audit SET reason = reason || ' (edited)' WHERE seq = 7", [])
        .unwrap();
    d.spawn().await;
    let report =
        d.audit(AUDITOR).await.verify_audit_log(proto::VerifyAuditLogRequest::default()).await.unwrap().into_inner();
    assert!(!report.ok);
    assert_eq!(report.first_bad_seq, 7, "{report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exports_of_the_register_and_active_sandboxes() {
    let d = Daemon::start().await;
    let mut a = d.client(TEAM_A).await;
    let sb = create(&mut a, &d.exp_a, 60).await;
    let mut audit = d.audit(AUDITOR).await;
    let export = |kind: proto::ExportKind, format: proto::ExportFormat| proto::ExportRequest {
        kind: kind as i32,
        format: format as i32,
        ..Default::default()
    };
    let collect = |req: proto::ExportRequest| {
        let mut audit = audit.clone();
        async move {
            let mut s = audit.export(req).await.unwrap().into_inner();
            let mut out = Vec::new();
            while let Some(c) = s.next().await {
                out.extend(c.unwrap().data);
            }
            String::from_utf8(out).unwrap()
        }
    };
    let json: serde_json::Value =
        serde_json::from_str(&collect(export(proto::ExportKind::Register, proto::ExportFormat::Json)).await).unwrap();
    assert_eq!(json[0]["id"], d.exp_a.as_str());
    assert_eq!(json[0]["approvals"][0]["approver"], "amir");
    let csv = collect(export(proto::ExportKind::Register, proto::ExportFormat::Csv)).await;
    assert!(csv.starts_with("id,title,team,owner,purpose,classification,status"), "{csv}");
    assert!(csv.lines().nth(1).unwrap().contains(",approved,"), "{csv}");
    let csv = collect(export(proto::ExportKind::ActiveSandboxes, proto::ExportFormat::Csv)).await;
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.contains(&sb.id) && csv.contains(",running,"), "{csv}");
    let json: serde_json::Value =
        serde_json::from_str(&collect(export(proto::ExportKind::ActiveSandboxes, proto::ExportFormat::Json)).await)
            .unwrap();
    assert_eq!(json[0]["containerId"], sb.container_id.as_str());
    let e = audit.export(proto::ExportRequest { kind: 0, format: 1, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}
