//! Per-identity limits: over-size messages, too many calls at once and too
//! many calls per second get RESOURCE_EXHAUSTED naming the limit; other
//! identities are not affected. Team quotas: a team's live sandboxes stay
//! within its quota, however many creates race.

use std::time::Duration;

use sandpit_proto as proto;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::support::*;

const LIST: &str = "sandpit.v1.SandboxService/ListSandboxes";

#[tokio::test(flavor = "multi_thread")]
async fn oversize_messages_are_resource_exhausted() {
    let d = Daemon::with(Options { limits: "max_message_bytes = 65536\n".into(), ..Default::default() }).await;
    let mut c = d.client(TEAM_A).await;
    let mut req = create_req(&d.exp_a, 60);
    req.image = "x".repeat(100_000);
    let e = c.create_sandbox(req).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains("65536"), "{}", e.message());
    // Just under the limit is decoded and judged on its merits.
    let mut req = create_req(&d.exp_a, 60);
    req.image = "x".repeat(60_000);
    let e = c.create_sandbox(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().starts_with("image: longer than"), "{}", e.message());
    assert!(d.containers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callers_rate_is_limited_and_recovers() {
    let limits = "calls_per_second = 2\nburst = 6\n".to_string();
    let d = Daemon::with(Options { limits, ..Default::default() }).await;
    let mut a = d.client(TEAM_A).await;
    let mut refused = None;
    for i in 0..20 {
        if let Err(e) = a.list_sandboxes(proto::ListSandboxesRequest::default()).await {
            refused = Some((i, e));
            break;
        }
    }
    let (i, e) = refused.expect("a burst of 20 calls is refused in part");
    assert!(i <= 6, "refused only after {i} calls");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("limits.calls_per_second"), "{}", e.message());
    // Another identity is unaffected.
    let mut b = d.client(TEAM_B).await;
    b.list_sandboxes(proto::ListSandboxesRequest::default()).await.unwrap();
    // Tokens come back at the sustained rate.
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.list_sandboxes(proto::ListSandboxesRequest::default()).await.unwrap();
    let m = d.scrape().await;
    assert!(m.get("sandpit_calls_refused_total", &[("method", LIST), ("reason", "rate_limited")]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_calls_at_once_are_refused_until_one_ends() {
    let d = Daemon::with(Options { limits: "max_concurrent_calls = 2\n".into(), ..Default::default() }).await;
    let mut a = d.client(TEAM_A).await;
    // Two open watch streams are two calls in progress.
    let w1 = a.watch_sandboxes(proto::WatchSandboxesRequest::default()).await.unwrap().into_inner();
    let mut w2 = a.watch_sandboxes(proto::WatchSandboxesRequest::default()).await.unwrap().into_inner();
    let e = a.list_sandboxes(proto::ListSandboxesRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("limits.max_concurrent_calls"), "{}", e.message());
    d.client(TEAM_B).await.list_sandboxes(proto::ListSandboxesRequest::default()).await.unwrap();

    // Hanging up one stream frees its place.
    drop(w1);
    eventually(Duration::from_secs(5), "a place frees up", || {
        let mut a = a.clone();
        async move { a.list_sandboxes(proto::ListSandboxesRequest::default()).await.ok() }
    })
    .await;
    // The other stream still works.
    let sb = create(&mut d.client(TEAM_A).await, &d.exp_a, 60).await;
    let ev = tokio::time::timeout(Duration::from_secs(10), w2.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(ev.sandbox.unwrap().id, sb.id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_team_never_exceeds_its_quota_even_with_racing_creates() {
    let quotas = "sandboxes_per_team = 3\nteams = { team-b = 1 }\n".to_string();
    let d = Daemon::with(Options { quotas, ..Default::default() }).await;
    let a = d.client(TEAM_A).await;
    let creates = (0..6).map(|_| {
        let mut a = a.clone();
        let req = create_req(&d.exp_a, 120);
        async move { a.create_sandbox(req).await }
    });
    let results = futures_util::future::join_all(creates).await;
    let (ok, refused): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
    assert_eq!(ok.len(), 3, "{refused:?}");
    for e in refused.iter().map(|r| r.as_ref().unwrap_err()) {
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.message().contains("team-quota") && e.message().contains("quota is 3"), "{}", e.message());
    }
    assert_eq!(d.containers().await.len(), 3);

    // A per-team quota; and ended sandboxes give their place back.
    let mut b = d.client(TEAM_B).await;
    let exp_b = d.experiment(TEAM_B, "OFFICIAL").await;
    let first = create(&mut b, &exp_b, 120).await;
    let e = b.create_sandbox(create_req(&exp_b, 120)).await.unwrap_err();
    assert!(e.message().contains("quota is 1"), "{}", e.message());
    b.delete_sandbox(proto::DeleteSandboxRequest { id: first.id }).await.unwrap();
    create(&mut b, &exp_b, 120).await;

    // The refusal is on record for the governance group: the first at once,
    // its two repeats counted for the window's summary record.
    let q = proto::QueryAuditLogRequest { actor: "alice".into(), ..Default::default() };
    let events = d.audit(AUDITOR).await.query_audit_log(q).await.unwrap().into_inner().events;
    let denied = events.iter().filter(|e| e.code == "RESOURCE_EXHAUSTED" && e.reason.contains("team-quota")).count();
    assert_eq!(denied, 1);
    assert_eq!(d.scrape().await.get("sandpit_audit_refusals_summarised_total", &[]), 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_chunk_in_a_copy_in_stream_is_resource_exhausted() {
    use sandpit_proto::copy_in_request::Part;
    let d = Daemon::with(Options { limits: "max_message_bytes = 65536\n".into(), ..Default::default() }).await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 120).await;
    let header = proto::CopyInRequest {
        part: Some(Part::Header(proto::CopyInHeader { id: sb.id.clone(), path: "/tmp".into() })),
    };
    let chunk = proto::CopyInRequest { part: Some(Part::Chunk(vec![0u8; 100_000])) };
    // Promptly: the extraction in the sandbox is told its input has ended.
    let call = c.copy_in(futures_util::stream::iter([header, chunk]));
    let e = tokio::time::timeout(Duration::from_secs(20), call).await.expect("answered in time").unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains("limits.max_message_bytes"), "{}", e.message());
    // An over-size first message (the header) too.
    let header = proto::CopyInRequest {
        part: Some(Part::Header(proto::CopyInHeader { id: sb.id.clone(), path: "/".repeat(100_000) })),
    };
    let e = c.copy_in(futures_util::stream::iter([header])).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    let rec = c.get_sandbox(proto::GetSandboxRequest { id: sb.id }).await.unwrap().into_inner();
    assert_eq!(state(&rec), sandpit_proto::SandboxState::Running);
}

/// Sizes of the audit table: (records, bytes of the largest, bytes in all).
fn audit_sizes(d: &Daemon) -> (i64, i64, i64) {
    let conn = rusqlite::Connection::open(d.data_dir().join("sandpit.db")).unwrap();
    let size = "length(actor) + length(role) + length(action) + length(target) + length(experiment) \
                + length(sandbox) + length(outcome) + length(code) + length(reason) + length(source)";
    conn.query_row(&format!("SELECT count(*), max({size}), sum({size}) FROM audit"), [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .unwrap()
}

/// Every caller-supplied string is bounded before anything is recorded: a
/// hostile client sending megabyte ids, titles, paths and commands gets
/// INVALID_ARGUMENT naming the field, and the audit log stays small.
#[tokio::test(flavor = "multi_thread")]
async fn no_audit_record_holds_unbounded_caller_input() {
    let d = Daemon::start().await;
    let (_, _, before) = audit_sizes(&d);
    let huge = "x".repeat(4_000_000);
    let big = "y".repeat(1_000_000);
    let mut a = d.client(TEAM_A).await;
    let invalid = |r: Result<(), tonic::Status>, field: &str, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(e.message().starts_with(&format!("{field}:")), "{what}: {}", e.message());
        assert!(e.message().len() < 300, "{what}: the message does not echo the input");
    };
    // The hostile tester's case: ten deletes with a 4 MB id.
    for _ in 0..10 {
        invalid(a.delete_sandbox(proto::DeleteSandboxRequest { id: huge.clone() }).await.map(|_| ()), "id", "delete");
    }
    invalid(a.get_sandbox(proto::GetSandboxRequest { id: big.clone() }).await.map(|_| ()), "id", "get");
    let r = a.extend_sandbox(proto::ExtendSandboxRequest { id: big.clone(), ttl: ttl(60) }).await;
    invalid(r.map(|_| ()), "id", "extend");
    let sb = create(&mut a, &d.exp_a, 300).await;
    let exec = |command: Vec<String>, env: Vec<String>, workdir: String| proto::ExecRequest {
        id: sb.id.clone(),
        command,
        env,
        workdir,
        timeout: None,
        tty: None,
    };
    let r = a.exec(exec(vec!["echo".into(), big.clone()], vec![], String::new())).await;
    invalid(r.map(|_| ()), "command", "exec with a huge command");
    let r = a.exec(exec(vec!["true".into()], vec![format!("A={big}")], String::new())).await;
    invalid(r.map(|_| ()), "env", "exec with a huge env");
    let r = a.exec(exec(vec!["true".into()], vec![big.clone()], String::new())).await;
    invalid(r.map(|_| ()), "env", "exec with a huge bad env");
    let r = a.exec(exec(vec!["true".into()], vec![], format!("/{big}"))).await;
    invalid(r.map(|_| ()), "workdir", "exec with a huge workdir");
    let r = a.copy_out(proto::CopyOutRequest { id: sb.id.clone(), path: format!("/{big}") }).await;
    invalid(r.map(|_| ()), "path", "copy-out of a huge path");
    let r = a.pull_image(proto::PullImageRequest { profile: PROFILE.into(), image: big.clone(), create: None }).await;
    invalid(r.map(|_| ()), "image", "pull of a huge image name");

    let mut reg = d.register(TEAM_A).await;
    let register = |f: &dyn Fn(&mut proto::RegisterExperimentRequest)| {
        let mut r = proto::RegisterExperimentRequest {
            title: "t".into(),
            purpose: "p".into(),
            classification: "OFFICIAL".into(),
            ..Default::default()
        };
        f(&mut r);
        r
    };
    for (field, req) in [
        ("title", register(&|r| r.title = big.clone())),
        ("purpose", register(&|r| r.purpose = big.clone())),
        ("ai_tools", register(&|r| r.ai_tools = vec![big.clone()])),
        ("classification", register(&|r| r.classification = big.clone())),
        (
            "risks.likelihood",
            register(&|r| {
                r.risks = vec![proto::Risk { description: "d".into(), likelihood: big.clone(), ..Default::default() }]
            }),
        ),
    ] {
        invalid(reg.register_experiment(req).await.map(|_| ()), field, field);
    }
    let mut approver = d.register(APPROVER).await;
    let decide = |id: &str, conditions: &str| proto::DecideExperimentRequest {
        id: id.into(),
        conditions: conditions.into(),
        ..Default::default()
    };
    invalid(approver.approve_experiment(decide(&big, "")).await.map(|_| ()), "id", "approve a huge id");
    let proposed = d.experiment(TEAM_A, "OFFICIAL").await;
    let r = approver.approve_experiment(decide(&proposed, &big)).await;
    invalid(r.map(|_| ()), "conditions", "approve with huge conditions");
    let close = proto::CloseExperimentRequest {
        id: proposed.clone(),
        outcome: proto::ExperimentOutcome::Failed as i32,
        lessons_learnt: big.clone(),
        ..Default::default()
    };
    invalid(approver.close_experiment(close).await.map(|_| ()), "lessons_learnt", "close with huge lessons");
    let q = proto::QueryAuditLogRequest { actor: big.clone(), ..Default::default() };
    invalid(d.audit(AUDITOR).await.query_audit_log(q).await.map(|_| ()), "actor", "query with a huge filter");

    let (records, largest, total) = audit_sizes(&d);
    assert!(largest < 5_000, "the largest record holds {largest} bytes");
    assert!(total - before < 100_000, "{records} records hold {} bytes", total - before);
    // And the log still pages, start to end.
    let mut audit = d.audit(AUDITOR).await;
    let page = audit.query_audit_log(proto::QueryAuditLogRequest { page_size: 1000, ..Default::default() }).await;
    assert_eq!(page.unwrap().into_inner().events.len() as i64, records);
}

/// Refusals are recorded without letting a source flood the log: repeats in
/// a window become one record with a count; a source spraying different
/// refusals gets its share of records and one summary for the rest; other
/// callers are not held back.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_summarised_per_source_and_window() {
    let limits = "refusal_window = \"2s\"\nrefusals_per_source = 5\n".to_string();
    let d = Daemon::with(Options { limits, ..Default::default() }).await;
    let mut anon = d.anonymous().await;
    for _ in 0..200 {
        anon.list_sandboxes(proto::ListSandboxesRequest::default()).await.unwrap_err();
    }
    let mut a = d.client(TEAM_A).await;
    for i in 0..50 {
        let e = a.delete_sandbox(proto::DeleteSandboxRequest { id: format!("sb-{i:012}") }).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    }
    // Nothing of alice's spray holds back bob.
    let mut b = d.client(TEAM_B).await;
    b.delete_sandbox(proto::DeleteSandboxRequest { id: "sb-bobs".into() }).await.unwrap_err();

    let mut audit = d.audit(AUDITOR).await;
    let query =
        |actor: &str| proto::QueryAuditLogRequest { actor: actor.into(), page_size: 1000, ..Default::default() };
    let now = audit.query_audit_log(query("anonymous")).await.unwrap().into_inner().events;
    assert_eq!(now.len(), 1, "the first refusal at once, the repeats counted");
    let bob = audit.query_audit_log(query("bob")).await.unwrap().into_inner().events;
    assert_eq!(bob.len(), 1, "another caller's refusal is recorded at once");

    let summaries = eventually(Duration::from_secs(10), "the window's summaries", || {
        let mut audit = audit.clone();
        async move {
            let anon = audit.query_audit_log(query("anonymous")).await.ok()?.into_inner().events;
            let alice = audit.query_audit_log(query("alice")).await.ok()?.into_inner().events;
            (anon.len() == 2 && alice.iter().any(|e| e.action == "refusals-suppressed")).then_some((anon, alice))
        }
    })
    .await;
    let (anon, alice) = summaries;
    assert!(anon[1].reason.starts_with("199 more identical refusals"), "{}", anon[1].reason);
    assert_eq!((anon[1].code.as_str(), anon[1].outcome.as_str()), ("UNAUTHENTICATED", "denied"));
    let deletes: Vec<_> = alice.iter().filter(|e| e.action.ends_with("DeleteSandbox")).collect();
    assert_eq!(deletes.len(), 5, "alice's share of records");
    let suppressed: Vec<_> = alice.iter().filter(|e| e.action == "refusals-suppressed").collect();
    assert_eq!(suppressed.len(), 1);
    assert!(
        suppressed[0].reason.starts_with("45 further refusals of alice from 127.0.0.1"),
        "{}",
        suppressed[0].reason
    );
    let m = d.scrape().await;
    assert_eq!(m.get("sandpit_audit_refusals_summarised_total", &[]), 199.0 + 45.0);
    let report = audit.verify_audit_log(proto::VerifyAuditLogRequest::default()).await.unwrap().into_inner();
    assert!(report.ok, "{report:?}");
}

/// A page of the audit log never outgrows what a client accepts (4 MiB by
/// default), even over records an older daemon let grow to megabytes.
#[tokio::test(flavor = "multi_thread")]
async fn audit_pages_stay_within_the_message_limit() {
    let d = Daemon::start().await;
    {
        // Three records of 3.5 MB each, as the flood wrote them before input was bounded.
        let conn = rusqlite::Connection::open(d.data_dir().join("sandpit.db")).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let max: i64 = conn.query_row("SELECT max(seq) FROM audit", [], |r| r.get(0)).unwrap();
        for i in 1..=3 {
            conn.execute(
                "INSERT INTO audit (seq, time_ms, actor, role, action, target, experiment, sandbox, outcome, code, reason, source, prev_hash, hash)
                 VALUES (?1, 0, 'alice', 'requester', 'sandpit.v1.SandboxService/DeleteSandbox', ?2, '', ?2, 'failed', 'NOT_FOUND', 'x', '127.0.0.1:1', zeroblob(32), zeroblob(32))",
                (max + i, "z".repeat(3_500_000)),
            )
            .unwrap();
        }
    }
    let mut audit = d.audit(AUDITOR).await;
    let mut req = proto::QueryAuditLogRequest { page_size: 1000, ..Default::default() };
    let mut seen = 0;
    loop {
        let page = audit.query_audit_log(req.clone()).await.expect("every page fits the client's limit").into_inner();
        seen += page.events.len();
        for e in page.events.iter().filter(|e| e.target.starts_with("zzz")) {
            assert!(e.target.len() < 20_000 && e.target.ends_with("[cut: 3500000 characters]"), "{}", e.target.len());
        }
        if page.next_page_token.is_empty() {
            break;
        }
        req.page_token = page.next_page_token;
    }
    assert!(seen >= 5, "{seen}");
}
