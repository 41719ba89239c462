//! What operators see: Prometheus metrics that move as sandboxes come and
//! go, and JSON logs with one span per RPC carrying its sandbox and experiment.

use std::time::Duration;

use sandpit_proto as proto;

use crate::support::*;

const CREATE: &str = "sandpit.v1.SandboxService/CreateSandbox";

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_when_sandboxes_are_created_and_expire() {
    let d = Daemon::start().await;
    let running = [("state", "running"), ("profile", PROFILE), ("classification", "OFFICIAL")];
    let before = d.scrape().await;
    assert_eq!(before.get("sandpit_sandboxes", &running), 0.0);
    assert_eq!(before.get("sandpit_provisioning_seconds_count", &[("source", "cold")]), 0.0);
    let audit_before = before.get("sandpit_audit_records", &[]);
    assert!(audit_before >= 2.0, "the experiment's registration and approval are on record");

    let mut c = d.client(TEAM_A).await;
    let exp = d.experiment(TEAM_A, "OFFICIAL").await;
    let sb = create(&mut c, &exp, 3).await;
    let after = d.scrape().await;
    assert_eq!(after.get("sandpit_sandboxes", &running), 1.0);
    assert_eq!(after.get("sandpit_provisioning_seconds_count", &[("source", "cold")]), 1.0);
    assert_eq!(after.get("sandpit_provisioning_seconds_bucket", &[("source", "cold"), ("le", "+Inf")]), 1.0);
    assert!(after.get("sandpit_provisioning_seconds_sum", &[("source", "cold")]) > 0.0);
    assert!(after.get("sandpit_audit_records", &[]) >= audit_before + 2.0, "registration and create audited");
    assert_eq!(after.get("sandpit_calls_total", &[("method", CREATE)]), 1.0);

    // It expires on its own: the gauges and the lateness histogram follow.
    let expired = eventually(Duration::from_secs(20), "expiry in the metrics", || {
        let d = &d;
        async move {
            let m = d.scrape().await;
            (m.get("sandpit_sandboxes_ended", &[("state", "expired")]) == 1.0).then_some(m)
        }
    })
    .await;
    assert_eq!(expired.get("sandpit_sandboxes", &running), 0.0);
    assert_eq!(expired.get("sandpit_expiry_lateness_seconds_count", &[]), 1.0);
    assert!(expired.get("sandpit_reconcile_runs_total", &[("result", "ok")]) >= 1.0);
    assert!(!container_exists(&sb.container_id).await);

    // Refused calls are counted by method and reason.
    let mut anon = d.anonymous().await;
    assert!(anon.list_sandboxes(proto::ListSandboxesRequest::default()).await.is_err());
    let m = d.scrape().await;
    let refused = [("method", "sandpit.v1.SandboxService/ListSandboxes"), ("reason", "unauthenticated")];
    assert_eq!(m.get("sandpit_calls_refused_total", &refused), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_endpoint_serves_only_get_metrics() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = Daemon::start().await;
    let url = std::fs::read_to_string(d.data_dir().join("metrics.addr")).unwrap();
    let host = url.trim().trim_start_matches("http://").trim_end_matches("/metrics").to_string();
    assert!(host.starts_with("127.0.0.1:"), "loopback: {host}");
    for (request, status) in
        [("GET /nope HTTP/1.1", "404"), ("POST /metrics HTTP/1.1", "405"), ("GET /metrics?x=1 HTTP/1.0", "200")]
    {
        let mut s = tokio::net::TcpStream::connect(&host).await.unwrap();
        s.write_all(format!("{request}\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        // hyper (under axum) answers an HTTP/1.0 request with an HTTP/1.0 status line, where the
        // hand-written server said HTTP/1.1: nothing changes for a 1.0 client. The status is the point.
        let version = if request.ends_with("HTTP/1.0") { "HTTP/1.0" } else { "HTTP/1.1" };
        assert!(resp.starts_with(&format!("{version} {status} ")), "{request}: {resp}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_have_one_span_per_rpc_with_its_ids() {
    let d = Daemon::with(Options { extra_config: "[log]\nformat = \"json\"\n".into(), ..Default::default() }).await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 60).await;
    c.delete_sandbox(proto::DeleteSandboxRequest { id: sb.id.clone() }).await.unwrap();

    let log = d.log();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let in_span = |method: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|l| l["span"]["method"] == format!("/sandpit.v1.SandboxService/{method}")).collect()
    };
    // The create's own lines (provisioning included) carry the call's ids.
    let created = in_span("CreateSandbox");
    let running = created
        .iter()
        .find(|l| l["fields"]["message"] == "sandbox running")
        .unwrap_or_else(|| panic!("no 'sandbox running' line in the create's span:\n{log}"));
    assert_eq!(running["span"]["name"], "rpc");
    assert_eq!(running["span"]["sandbox"], sb.id.as_str());
    assert_eq!(running["span"]["experiment"], d.exp_a.as_str());
    assert_eq!(running["span"]["caller"], "alice");
    // The span's close is logged once per call, with its duration.
    let closed: Vec<_> = created.iter().filter(|l| l["fields"]["message"] == "close").collect();
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert!(closed[0]["fields"]["time.busy"].is_string());

    let deleted = in_span("DeleteSandbox");
    let ended = deleted
        .iter()
        .find(|l| l["fields"]["message"] == "sandbox ended")
        .unwrap_or_else(|| panic!("no 'sandbox ended' line in the delete's span:\n{log}"));
    assert_eq!(ended["span"]["sandbox"], sb.id.as_str());
    assert_eq!(ended["span"]["experiment"], d.exp_a.as_str());
}
