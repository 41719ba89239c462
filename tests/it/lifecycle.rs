//! Create, inspect, exec, extend, delete and expire, against real Docker.

use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use sandpit_proto::{self as proto, exec_output::Output, SandboxEventKind, SandboxState};
use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn create_runs_a_hardened_container() {
    let d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 120).await;
    assert_eq!(state(&sb), SandboxState::Running);
    assert!(sb.id.starts_with("sb-"));
    assert_eq!((sb.owner.as_str(), sb.team.as_str(), sb.profile.as_str()), ("alice", "team-a", PROFILE));
    assert_eq!(sb.classification, "OFFICIAL");

    let i = docker().await.inspect_container(&sb.container_id, None).await.unwrap();
    assert!(i.state.unwrap().running.unwrap());
    let cfg = i.config.unwrap();
    let h = i.host_config.unwrap();
    assert_eq!(cfg.user.as_deref(), Some("65534:65534"), "non-root user");
    assert_eq!(h.cap_drop, Some(vec!["ALL".to_string()]), "all capabilities dropped");
    assert!(h.cap_add.unwrap_or_default().is_empty());
    assert_eq!(h.security_opt, Some(vec!["no-new-privileges:true".to_string()]));
    assert_eq!(h.readonly_rootfs, Some(true), "read-only root");
    let tmpfs = h.tmpfs.unwrap();
    assert!(tmpfs["/tmp"].contains(&format!("size={}", 16 << 20)), "{tmpfs:?}");
    assert_eq!(h.pids_limit, Some(64));
    assert_eq!(h.memory, Some(64 << 20));
    assert_eq!(h.memory_swap, h.memory, "swap equal to memory");
    assert_eq!(h.nano_cpus, Some(500_000_000));
    assert_eq!(h.privileged, Some(false));
    assert_eq!(h.network_mode.as_deref(), Some("none"));
    assert_eq!(h.ipc_mode.as_deref(), Some("private"));
    assert!(h.pid_mode.unwrap_or_default().is_empty() && h.uts_mode.unwrap_or_default().is_empty());
    assert!(h.port_bindings.unwrap_or_default().is_empty() && h.publish_all_ports != Some(true));
    // One bind only: the sandbox helper, a single file of the daemon's, read-only.
    let binds = h.binds.unwrap_or_default();
    assert_eq!(binds.len(), 1, "{binds:?}");
    assert!(binds[0].ends_with(":/.sandpit/helper:ro") && binds[0].contains("/helper/sandpit-helper-"), "{binds:?}");
    assert!(h.mounts.unwrap_or_default().is_empty());
    assert!(h.devices.unwrap_or_default().is_empty());
    assert_eq!(h.restart_policy.unwrap().name, Some(bollard::models::RestartPolicyNameEnum::NO));
    assert_eq!(h.init, Some(true));
    let sec = h.security_opt.unwrap_or_default().join(",");
    assert!(!sec.contains("unconfined"), "default seccomp/AppArmor kept");
    let labels = cfg.labels.unwrap();
    for (k, v) in [
        ("sandpit.managed", "true"),
        ("sandpit.sandbox", sb.id.as_str()),
        ("sandpit.experiment", d.exp_a.as_str()),
        ("sandpit.owner", "alice"),
        ("sandpit.team", "team-a"),
        ("sandpit.profile", PROFILE),
        ("sandpit.classification", "OFFICIAL"),
        ("sandpit.node", "local"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "label {k}");
    }
    let expires = sandpit_core::time::parse_rfc3339(&labels["sandpit.expires-at"]).unwrap();
    let want = to_system(sb.expires_at.as_ref().unwrap());
    assert!(want.duration_since(expires).unwrap_or_default() < Duration::from_secs(1));

    // From inside: no effective capabilities, no new privileges, read-only root.
    let (out, _, code) =
        exec(&mut c, &sb.id, &["sh", "-c", "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; id -u"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.trim_end().ends_with("65534"), "{out}");
    let (_, err, code) = exec(&mut c, &sb.id, &["touch", "/bin/evil"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("Read-only file system"), "{err}");
    let (_, _, code) = exec(&mut c, &sb.id, &["touch", "/tmp/scratch"]).await;
    assert_eq!(code, 0, "scratch space is writable");
}

/// Runs a command; returns stdout, stderr and the exit code.
pub async fn exec(c: &mut Client, id: &str, cmd: &[&str]) -> (String, String, i64) {
    let req = proto::ExecRequest {
        id: id.into(),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let mut stream = c.exec(req).await.expect("exec").into_inner();
    let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
    while let Some(m) = stream.next().await {
        match m.expect("exec stream").output.unwrap() {
            Output::Stdout(b) => out.extend(b),
            Output::Stderr(b) => err.extend(b),
            Output::ExitCode(c) => code = Some(c),
            Output::Notice(_) => {}
        }
    }
    (String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap(), code.expect("exit code"))
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_streams_output_and_exit_code() {
    let d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 120).await;
    let (out, err, code) = exec(&mut c, &sb.id, &["sh", "-c", "echo out; echo err >&2; exit 3"]).await;
    assert_eq!((out.as_str(), err.as_str(), code), ("out\n", "err\n", 3));
    let (out, _, code) = exec(&mut c, &sb.id, &["sh", "-c", "yes line | head -n 20000 | wc -l"]).await;
    assert_eq!((out.trim(), code), ("20000", 0));

    let req = proto::ExecRequest { id: sb.id.clone(), command: vec![], ..Default::default() };
    let e = c.exec(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("command"), "{}", e.message());
    let req = proto::ExecRequest { id: sb.id.clone(), command: vec!["/bin/nonexistent".into()], ..Default::default() };
    let mut s = c.exec(req).await.unwrap().into_inner();
    let mut code = None;
    while let Some(m) = s.next().await {
        if let Some(Output::ExitCode(x)) = m.unwrap().output {
            code = Some(x);
        }
    }
    assert!(matches!(code, Some(126 | 127)), "a missing program fails as in a shell: {code:?}");

    // A command past its timeout is cut off with DEADLINE_EXCEEDED.
    let req = proto::ExecRequest {
        id: sb.id.clone(),
        command: vec!["sleep".into(), "30".into()],
        timeout: Some(pbjson_types::Duration { seconds: 1, nanos: 0 }),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let mut s = c.exec(req).await.unwrap().into_inner();
    let last = loop {
        match s.next().await {
            Some(Err(e)) => break e,
            Some(Ok(_)) => continue,
            None => panic!("stream ended without the deadline error"),
        }
    };
    assert_eq!(last.code(), Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn extend_within_and_beyond_the_profile_limits() {
    let d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 60).await;

    let before = SystemTime::now();
    let ext =
        c.extend_sandbox(proto::ExtendSandboxRequest { id: sb.id.clone(), ttl: ttl(540) }).await.unwrap().into_inner();
    let expires = to_system(ext.expires_at.as_ref().unwrap());
    let from_now = expires.duration_since(before).unwrap();
    assert!(from_now >= Duration::from_secs(539) && from_now <= Duration::from_secs(542), "{from_now:?}");
    assert_eq!(
        c.get_sandbox(proto::GetSandboxRequest { id: sb.id.clone() }).await.unwrap().into_inner().expires_at,
        ext.expires_at
    );

    let e = c.extend_sandbox(proto::ExtendSandboxRequest { id: sb.id.clone(), ttl: ttl(11 * 60) }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("'ttl'") && e.message().contains("max_ttl"), "{}", e.message());
    let e = c.extend_sandbox(proto::ExtendSandboxRequest { id: sb.id.clone(), ttl: ttl(0) }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c.extend_sandbox(proto::ExtendSandboxRequest { id: sb.id.clone(), ttl: None }).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "ttl: must be set"));

    // A profile whose max lifetime equals its max ttl: any extension past creation + lifetime is refused.
    let mut req = create_req(&d.exp_a, 60);
    req.profile = "test-sensitive".into();
    let sens = c.create_sandbox(req).await.unwrap().into_inner();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = c.extend_sandbox(proto::ExtendSandboxRequest { id: sens.id.clone(), ttl: ttl(600) }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("max-lifetime"), "{}", e.message());
    assert_eq!(
        c.get_sandbox(proto::GetSandboxRequest { id: sens.id.clone() }).await.unwrap().into_inner().expires_at,
        sens.expires_at,
        "a refused extension changes nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_is_idempotent_and_removes_the_container() {
    let d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 120).await;
    let del = c.delete_sandbox(proto::DeleteSandboxRequest { id: sb.id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&del), SandboxState::Deleted);
    assert!(del.state_reason.contains("alice"), "{}", del.state_reason);
    assert!(!container_exists(&sb.container_id).await);
    let again = c.delete_sandbox(proto::DeleteSandboxRequest { id: sb.id.clone() }).await.unwrap().into_inner();
    assert_eq!(again, del, "a second delete returns the same record");
    // Ended sandboxes leave the default listing but stay on record.
    let active = c.list_sandboxes(proto::ListSandboxesRequest::default()).await.unwrap().into_inner();
    assert!(active.sandboxes.iter().all(|s| s.id != sb.id));
    let all = c
        .list_sandboxes(proto::ListSandboxesRequest { include_ended: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(all.sandboxes.iter().any(|s| s.id == sb.id));
    // Exec into a deleted sandbox is a precondition failure, not a crash.
    let req = proto::ExecRequest { id: sb.id.clone(), command: vec!["true".into()], ..Default::default() };
    assert_eq!(c.exec(req).await.unwrap_err().code(), Code::FailedPrecondition);
    // An operator may delete any team's sandbox.
    let other = create(&mut c, &d.exp_a, 120).await;
    let mut op = d.client(OPERATOR).await;
    let del = op.delete_sandbox(proto::DeleteSandboxRequest { id: other.id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&del), SandboxState::Deleted);
}

/// At its deadline a sandbox's processes stop at once (through its cgroup,
/// never before the deadline), and its container is removed after: within
/// seconds, however busy the engine is with other work.
#[tokio::test(flavor = "multi_thread")]
async fn expiry_tears_down_within_two_seconds_and_warns_first() {
    let d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    let mut watch = c.watch_sandboxes(proto::WatchSandboxesRequest::default()).await.unwrap().into_inner();
    let sb = create(&mut c, &d.exp_a, 3).await;
    let expires_at = to_system(sb.expires_at.as_ref().unwrap());

    let stopped = eventually(Duration::from_secs(10), "the sandbox's processes stopped at expiry", || {
        let cid = sb.container_id.clone();
        async move {
            let running = docker().await.inspect_container(&cid, None).await.ok().and_then(|c| c.state?.running);
            (running != Some(true)).then(SystemTime::now)
        }
    })
    .await;
    let late = stopped.duration_since(expires_at).unwrap_or_default();
    assert!(late < Duration::from_secs(2), "stopped {late:?} after expiry");
    assert!(stopped >= expires_at - Duration::from_millis(5), "stopped before its expiry");
    eventually(Duration::from_secs(20), "container removed after expiry", || {
        let cid = sb.container_id.clone();
        async move { (!container_exists(&cid).await).then_some(()) }
    })
    .await;

    let rec = c.get_sandbox(proto::GetSandboxRequest { id: sb.id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&rec), SandboxState::Expired);
    assert!(rec.ended_at.is_some());

    let mut kinds = Vec::new();
    while let Ok(Some(Ok(ev))) = tokio::time::timeout(Duration::from_secs(3), watch.next()).await {
        if ev.sandbox.as_ref().is_some_and(|s| s.id == sb.id) {
            kinds.push(SandboxEventKind::try_from(ev.kind).unwrap());
        }
        if kinds.last() == Some(&SandboxEventKind::Expired) {
            break;
        }
    }
    assert_eq!(kinds, [SandboxEventKind::Created, SandboxEventKind::ExpiringSoon, SandboxEventKind::Expired]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_killed_from_outside_shows_as_exited() {
    let d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 120).await;
    docker()
        .await
        .kill_container(&sb.container_id, None::<bollard::query_parameters::KillContainerOptions>)
        .await
        .unwrap();
    let rec = eventually(Duration::from_secs(5), "exited state", || {
        let mut c = c.clone();
        let id = sb.id.clone();
        async move {
            let r = c.get_sandbox(proto::GetSandboxRequest { id }).await.unwrap().into_inner();
            (state(&r) == SandboxState::Exited).then_some(r)
        }
    })
    .await;
    assert_eq!(rec.exit_code, Some(137));
    assert!(rec.state_reason.contains("137"), "{}", rec.state_reason);
    // Deleting it still removes the stopped container.
    c.delete_sandbox(proto::DeleteSandboxRequest { id: sb.id.clone() }).await.unwrap();
    assert!(!container_exists(&sb.container_id).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_zero_and_leaves_sandboxes_running() {
    let mut d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 120).await;
    let status = d.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(d.log().contains("sandboxes are left running"));
    let i = docker().await.inspect_container(&sb.container_id, None).await.unwrap();
    assert!(i.state.unwrap().running.unwrap(), "sandbox survives the daemon");
    d.spawn().await;
    let mut c = d.client(TEAM_A).await;
    let rec = c.get_sandbox(proto::GetSandboxRequest { id: sb.id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&rec), SandboxState::Running);
    assert_eq!(rec.expires_at, sb.expires_at);
    let (out, _, _) = exec(&mut c, &sb.id, &["echo", "still here"]).await;
    assert_eq!(out, "still here\n");
}
