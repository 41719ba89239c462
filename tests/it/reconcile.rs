//! Restarts, crashes, orphans and abandoned creates: the daemon never loses
//! or leaks a container.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::CreateContainerOptionsBuilder;
use sandpit_proto::{self as proto, SandboxState};
use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn kill9_restart_adopts_live_sandboxes_and_removes_expired_ones() {
    let mut d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    let live = create(&mut c, &d.exp_a, 300).await;
    let doomed = create(&mut c, &d.exp_a, 3).await;

    d.kill9();
    // Expire while the daemon is down: nothing may remove it yet.
    let doomed_at = to_system(doomed.expires_at.as_ref().unwrap());
    tokio::time::sleep(doomed_at.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_millis(500))
        .await;
    assert!(container_exists(&doomed.container_id).await, "nothing tears down while the daemon is away");

    d.spawn().await;
    let mut c = d.client(TEAM_A).await;
    let rec = c.get_sandbox(proto::GetSandboxRequest { id: live.id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&rec), SandboxState::Running);
    assert_eq!(rec.expires_at, live.expires_at, "adopted with its original expiry");
    assert!(container_exists(&live.container_id).await);

    eventually(Duration::from_secs(5), "expired sandbox removed after restart", || {
        let cid = doomed.container_id.clone();
        async move { (!container_exists(&cid).await).then_some(()) }
    })
    .await;
    let rec = c.get_sandbox(proto::GetSandboxRequest { id: doomed.id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&rec), SandboxState::Expired);
    let running: Vec<_> = d.containers().await.into_iter().filter_map(|c| c.id).collect();
    assert_eq!(running, vec![live.container_id.clone()]);
}

/// Adopted means taken over: a restarted daemon adopts the sandboxes it
/// finds, once; the passes after that, and a daemon's own sandboxes, are not
/// "adopted" again and again.
#[tokio::test(flavor = "multi_thread")]
async fn reconcile_adopts_a_sandbox_once_after_a_restart_and_never_its_own() {
    let mut d = Daemon::with(Options { reconcile_interval: "300ms", ..Default::default() }).await;
    let mut c = d.client(TEAM_A).await;
    create(&mut c, &d.exp_a, 300).await;
    create(&mut c, &d.exp_a, 300).await;
    let m = passes(&d, 5.0).await;
    assert_eq!(adopted(&m), 0.0, "this daemon's own sandboxes are not adopted");

    d.kill9();
    d.spawn().await;
    let m = passes(&d, 5.0).await;
    assert_eq!(adopted(&m), 2.0, "both taken over, once, over five passes");
    // What each pass reports says the same (the log spans both daemons).
    let log = d.log();
    let adopting: Vec<&str> = log.lines().filter(|l| l.contains("adopted: ") && !l.contains("adopted: 0")).collect();
    assert_eq!(adopting.len(), 1, "one pass adopted:\n{}", adopting.join("\n"));
}

fn adopted(m: &Metrics) -> f64 {
    m.get("sandpit_reconcile_actions_total", &[("action", "adopted")])
}

/// The metrics once the daemon has made `n` good reconcile passes.
async fn passes(d: &Daemon, n: f64) -> Metrics {
    eventually(Duration::from_secs(20), "reconcile passes", || async move {
        let m = d.scrape().await;
        (m.get("sandpit_reconcile_runs_total", &[("result", "ok")]) >= n).then_some(m)
    })
    .await
}

pub(crate) async fn start_container(name: &str, labels: HashMap<String, String>) -> String {
    let body = ContainerCreateBody {
        image: Some(image().to_string()),
        cmd: Some(vec!["sleep".into(), "300".into()]),
        labels: Some(labels),
        host_config: Some(bollard::models::HostConfig { network_mode: Some("none".into()), ..Default::default() }),
        ..Default::default()
    };
    let docker = docker().await;
    let opts = CreateContainerOptionsBuilder::default().name(name).build();
    let id = docker.create_container(Some(opts), body).await.unwrap().id;
    docker.start_container(&id, None).await.unwrap();
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn labelled_orphans_are_removed_after_grace_and_nothing_else_is_touched() {
    let d = Daemon::with(Options { orphan_grace: "5s", reconcile_interval: "1s", ..Default::default() }).await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 300).await;
    let labels =
        docker().await.inspect_container(&sb.container_id, None).await.unwrap().config.unwrap().labels.unwrap();
    let instance = labels["sandpit.instance"].clone();
    let run = (TEST_RUN_LABEL.to_string(), d.run.clone());

    let other_daemon = start_container(
        &unique("other-daemon"),
        HashMap::from([
            ("sandpit.managed".into(), "true".into()),
            ("sandpit.instance".into(), "someone-else".into()),
            ("sandpit.sandbox".into(), "sb-111111111111".into()),
            run.clone(),
        ]),
    )
    .await;
    let unlabelled = start_container(&unique("unlabelled"), HashMap::from([run.clone()])).await;
    let orphan_net = unique("orphan-net");
    let net = bollard::models::NetworkCreateRequest {
        name: orphan_net.clone(),
        internal: Some(true),
        labels: Some(HashMap::from([
            ("sandpit.managed".into(), "true".into()),
            ("sandpit.instance".into(), instance.clone()),
            ("sandpit.sandbox".into(), "sb-222222222222".into()),
            run.clone(),
        ])),
        ..Default::default()
    };
    docker().await.create_network(net).await.unwrap();

    // The orphan last, timed: within the grace period it is left alone (its
    // create may be in flight). On a machine too loaded to check within the
    // grace, only the removal is checked.
    let made = std::time::Instant::now();
    let orphan = start_container(
        &unique("orphan"),
        HashMap::from([
            ("sandpit.managed".into(), "true".into()),
            ("sandpit.instance".into(), instance.clone()),
            ("sandpit.sandbox".into(), "sb-000000000000".into()),
            run.clone(),
        ]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let exists = container_exists(&orphan).await;
    if made.elapsed() < Duration::from_secs(4) {
        assert!(exists, "removed before its grace period");
    }

    eventually(Duration::from_secs(20), "orphan removed", || {
        let id = orphan.clone();
        async move { (!container_exists(&id).await).then_some(()) }
    })
    .await;
    eventually(Duration::from_secs(20), "orphan network removed", || {
        let name = orphan_net.clone();
        async move { docker().await.inspect_network(&name, None).await.is_err().then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(container_exists(&other_daemon).await, "another daemon's container is never touched");
    assert!(container_exists(&unlabelled).await, "an unlabelled container is never touched");
    assert!(container_exists(&sb.container_id).await, "a tracked sandbox is never removed by reconcile");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_whose_container_vanished_is_marked_lost() {
    let d = Daemon::with(Options { reconcile_interval: "1s", ..Default::default() }).await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 300).await;
    let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::default().force(true).build();
    docker().await.remove_container(&sb.container_id, Some(opts)).await.unwrap();
    let rec = eventually(Duration::from_secs(6), "lost state", || {
        let mut c = c.clone();
        let id = sb.id.clone();
        async move {
            let r = c.get_sandbox(proto::GetSandboxRequest { id }).await.unwrap().into_inner();
            (state(&r) == SandboxState::Lost).then_some(r)
        }
    })
    .await;
    assert!(rec.state_reason.contains("vanished"), "{}", rec.state_reason);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_abandoned_by_its_client_leaves_nothing() {
    let d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    // Hang up while the daemon is provisioning.
    let exp = d.experiment(TEAM_A, "OFFICIAL").await;
    let call = c.create_sandbox(create_req(&exp, 120));
    assert!(tokio::time::timeout(Duration::from_millis(60), call).await.is_err(), "create finished before the hang-up");

    let c = d.client(TEAM_A).await;
    let rec = eventually(Duration::from_secs(10), "abandoned create recorded as failed", || {
        let mut c = c.clone();
        let exp = exp.clone();
        async move {
            let req = proto::ListSandboxesRequest { include_ended: true, experiment: exp };
            let list = c.list_sandboxes(req).await.unwrap().into_inner().sandboxes;
            list.into_iter().find(|s| state(s) == SandboxState::Failed)
        }
    })
    .await;
    assert!(rec.state_reason.contains("abandoned"), "{}", rec.state_reason);
    assert!(d.containers().await.is_empty(), "no container is left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_fails_cleanly_naming_the_image() {
    let d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    let exp = d.experiment(TEAM_A, "OFFICIAL").await;
    let mut req = create_req(&exp, 60);
    req.image = "sandpit-test/absent:never".into();
    let e = c.create_sandbox(req).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("sandpit-test/absent:never"), "{}", e.message());
    assert!(e.message().contains("docker load") || e.message().contains("docker import"), "{}", e.message());
    assert!(d.containers().await.is_empty());
    let req = proto::ListSandboxesRequest { include_ended: true, experiment: exp.clone() };
    let list = c.list_sandboxes(req).await.unwrap().into_inner().sandboxes;
    assert_eq!(list.len(), 1);
    assert_eq!(state(&list[0]), SandboxState::Failed, "the failure is on record");
}
