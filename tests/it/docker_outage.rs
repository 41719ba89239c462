//! Docker unreachable: the daemon stays up, answers UNAVAILABLE, and recovers
//! by itself. The daemon talks to Docker through a [`FaultProxy`] the test
//! takes down and brings back.

use std::time::Duration;

use sandpit_proto::{self as proto, SandboxState};
use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn docker_outage_gives_unavailable_and_the_daemon_recovers() {
    let sockdir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(&sockdir.path().join("docker.sock"));
    proxy.down();
    let d = Daemon::with(Options { docker_host: Some(proxy.docker_host()), ..Default::default() }).await;
    let mut c = d.client(TEAM_A).await;

    // Docker was never there: the daemon serves anyway.
    let e = c.create_sandbox(create_req(&d.exp_a, 60)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
    assert!(c.list_sandboxes(proto::ListSandboxesRequest::default()).await.is_ok(), "reads still work");
    let failed =
        c.list_sandboxes(proto::ListSandboxesRequest { include_ended: true, ..Default::default() }).await.unwrap();
    assert!(failed.into_inner().sandboxes.iter().all(|s| state(s) == SandboxState::Failed));

    // Docker arrives: creates work with no restart.
    proxy.up();
    let sb = eventually(Duration::from_secs(10), "create after Docker returns", || {
        let mut c = c.clone();
        let exp = d.exp_a.clone();
        async move { c.create_sandbox(create_req(&exp, 60)).await.ok().map(|r| r.into_inner()) }
    })
    .await;
    assert_eq!(state(&sb), SandboxState::Running);

    // Docker goes away again: delete is UNAVAILABLE and the sandbox stays on record as running.
    proxy.down();
    let e = c.delete_sandbox(proto::DeleteSandboxRequest { id: sb.id.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
    let rec = c.get_sandbox(proto::GetSandboxRequest { id: sb.id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&rec), SandboxState::Running);

    proxy.up();
    let del = eventually(Duration::from_secs(10), "delete after Docker returns", || {
        let mut c = c.clone();
        let id = sb.id.clone();
        async move { c.delete_sandbox(proto::DeleteSandboxRequest { id }).await.ok().map(|r| r.into_inner()) }
    })
    .await;
    assert_eq!(state(&del), SandboxState::Deleted);
    assert!(!container_exists(&sb.container_id).await);
}
