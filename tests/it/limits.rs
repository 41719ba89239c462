//! Per-identity limits: over-size messages, too many calls at once and too
//! many calls per second get RESOURCE_EXHAUSTED naming the limit; other
//! identities are not affected. Team quotas: a team's live sandboxes stay
//! within its quota, however many creates race.

use std::time::Duration;

use sandpit::proto;
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

    // The refusal is on record for the governance group.
    let q = proto::QueryAuditLogRequest { actor: "alice".into(), ..Default::default() };
    let events = d.audit(AUDITOR).await.query_audit_log(q).await.unwrap().into_inner().events;
    let denied = events.iter().filter(|e| e.code == "RESOURCE_EXHAUSTED" && e.reason.contains("team-quota")).count();
    assert_eq!(denied, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_chunk_in_a_copy_in_stream_is_resource_exhausted() {
    use sandpit::proto::copy_in_request::Part;
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
    assert_eq!(state(&rec), sandpit::proto::SandboxState::Running);
}
