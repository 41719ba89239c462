//! Docker unreachable: the daemon stays up, answers UNAVAILABLE, and recovers
//! by itself. The daemon talks to Docker through a socket proxy the test
//! starts and stops.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sandpit::proto::{self, SandboxState};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tonic::Code;

use crate::support::*;

fn docker_socket() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => PathBuf::from(h.trim_start_matches("unix://")),
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

/// A unix-socket proxy to the Docker socket; dropping it cuts every connection.
struct Proxy(tokio::task::JoinHandle<()>);

impl Proxy {
    fn start(path: &Path) -> Proxy {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        let target = docker_socket();
        Proxy(tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                conns.spawn(async move {
                    if let Ok(mut outbound) = UnixStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_outage_gives_unavailable_and_the_daemon_recovers() {
    let sockdir = tempfile::tempdir().unwrap();
    let sock = sockdir.path().join("docker.sock");
    let d =
        Daemon::with(Options { docker_host: Some(format!("unix://{}", sock.display())), ..Default::default() }).await;
    let mut c = d.client(TEAM_A).await;

    // Docker was never there: the daemon serves anyway.
    let e = c.create_sandbox(create_req(&d.exp_a, 60)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
    assert!(c.list_sandboxes(proto::ListSandboxesRequest::default()).await.is_ok(), "reads still work");
    let failed =
        c.list_sandboxes(proto::ListSandboxesRequest { include_ended: true, ..Default::default() }).await.unwrap();
    assert!(failed.into_inner().sandboxes.iter().all(|s| state(s) == SandboxState::Failed));

    // Docker arrives: creates work with no restart.
    let proxy = Proxy::start(&sock);
    let sb = eventually(Duration::from_secs(10), "create after Docker returns", || {
        let mut c = c.clone();
        let exp = d.exp_a.clone();
        async move { c.create_sandbox(create_req(&exp, 60)).await.ok().map(|r| r.into_inner()) }
    })
    .await;
    assert_eq!(state(&sb), SandboxState::Running);

    // Docker goes away again: delete is UNAVAILABLE and the sandbox stays on record as running.
    drop(proxy);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = std::fs::remove_file(&sock);
    let e = c.delete_sandbox(proto::DeleteSandboxRequest { id: sb.id.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
    let rec = c.get_sandbox(proto::GetSandboxRequest { id: sb.id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&rec), SandboxState::Running);

    let _proxy = Proxy::start(&sock);
    let del = eventually(Duration::from_secs(10), "delete after Docker returns", || {
        let mut c = c.clone();
        let id = sb.id.clone();
        async move { c.delete_sandbox(proto::DeleteSandboxRequest { id }).await.ok().map(|r| r.into_inner()) }
    })
    .await;
    assert_eq!(state(&del), SandboxState::Deleted);
    assert!(!container_exists(&sb.container_id).await);
}
