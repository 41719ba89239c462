//! Per-identity limits: over-size messages, too many calls at once and too
//! many calls per second get RESOURCE_EXHAUSTED naming the limit; other
//! identities are not affected.

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
