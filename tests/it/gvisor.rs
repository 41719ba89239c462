//! Isolation levels: gVisor sandboxes really run under gVisor and work as
//! runc ones do (exec, copies, networks and their firewall, expiry, restart
//! and adoption with their runtime kept); the host policy ties
//! classification to isolation at profile load and at admission; a level
//! the engine cannot give is reported and refused, never run at a weaker one.
//!
//! These need runsc registered with the engine as `runsc-none` and
//! `runsc-host` (`scripts/register-runsc.sh`, run by `.ci/run`).

use std::process::Command;
use std::time::Duration;

use sandpit_proto::{self as proto, SandboxState};

use crate::lifecycle::exec;
use crate::network::{greeter, host_addresses, profile, reaches, via_proxy};
use crate::support::*;
use crate::transfer::copy_in_stream;

/// Host policy of these daemons: gVisor from OFFICIAL-SENSITIVE up.
const GVISOR_FROM_SENSITIVE: &str = "\"OFFICIAL\" = \"container\"\n\"OFFICIAL-SENSITIVE\" = \"gvisor\"";

/// The engine's runtime of a container, as `docker inspect` names it.
async fn runtime_of(container_id: &str) -> String {
    let i = docker().await.inspect_container(container_id, None).await.unwrap();
    i.host_config.unwrap().runtime.unwrap_or_default()
}

fn gvisor_profiles(allowed: u16) -> Vec<(String, String)> {
    let allow = format!("[[network.allow]]\nhost = \"127.0.0.1\"\nport = {allowed}\nresidency = \"UK\"\n");
    vec![
        ("test-gvisor-allow".into(), profile("allowlist", "OFFICIAL-SENSITIVE", "isolation = \"gvisor\"") + &allow),
        ("test-gvisor-warm".into(), profile("none", "OFFICIAL", "isolation = \"gvisor\"\nwarm_pool = 1")),
        // Replaces the harness's runc OFFICIAL-SENSITIVE profile, which this host policy refuses.
        ("test-sensitive".into(), profile("none", "OFFICIAL-SENSITIVE", "isolation = \"gvisor\"")),
        ("test-gvisor-isolated".into(), profile("isolated", "OFFICIAL-SENSITIVE", "isolation = \"gvisor\"")),
    ]
}

fn request(d: &Daemon, profile: &str, classification: &str) -> proto::CreateSandboxRequest {
    proto::CreateSandboxRequest {
        profile: profile.into(),
        classification: classification.into(),
        ..create_req(&d.exp_a, 300)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gvisor_sandbox_runs_under_gvisor_and_works_as_a_runc_one_does() {
    let allowed = greeter().await;
    let mut d = Daemon::with(Options {
        minimum_isolation: GVISOR_FROM_SENSITIVE,
        profiles: gvisor_profiles(allowed),
        ..Default::default()
    })
    .await;
    let mut c = d.client(TEAM_A).await;

    // ListProfiles says which isolation each profile has, and that all can run.
    let mut ops = d.profile_client(OPERATOR).await;
    let listed = ops.list_profiles(proto::ListProfilesRequest {}).await.unwrap().into_inner().profiles;
    let of = |name: &str| listed.iter().find(|p| p.name == name).unwrap().clone();
    assert_eq!((of("test-sensitive").isolation.as_str(), of("test-sensitive").unavailable.as_str()), ("gvisor", ""));
    assert_eq!(of(PROFILE).isolation, "container");

    let gv = c.create_sandbox(request(&d, "test-sensitive", "OFFICIAL-SENSITIVE")).await.unwrap().into_inner();
    let runc = create(&mut c, &d.exp_a, 300).await;
    // The engine names the runtime; the kernel inside says whose it is.
    assert_eq!(runtime_of(&gv.container_id).await, "runsc-none");
    assert_eq!(runtime_of(&runc.container_id).await, "runc");
    let (out, err, code) = exec(&mut c, &gv.id, &["busybox", "dmesg"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Starting gVisor"), "dmesg under gVisor: {out}");
    let (gv_kernel, _, _) = exec(&mut c, &gv.id, &["uname", "-r"]).await;
    let (runc_kernel, _, _) = exec(&mut c, &runc.id, &["uname", "-r"]).await;
    let host_kernel = String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout).unwrap();
    assert_eq!(runc_kernel, host_kernel, "runc shares the host's kernel");
    assert_ne!(gv_kernel, host_kernel, "gVisor's kernel is its own: {gv_kernel}");
    let (_, err, code) = exec(&mut c, &runc.id, &["busybox", "dmesg"]).await;
    assert!(code != 0 && !err.contains("gVisor"), "runc: the host's kernel log stays closed: {err}");

    // Hardening holds inside: not root, read-only root, scratch space writable.
    let (out, _, _) = exec(&mut c, &gv.id, &["id", "-u"]).await;
    assert_eq!(out, "65534\n");
    // (gVisor checks the permission before the read-only mount, so the
    // error differs from runc's; the mount table says read-only either way.)
    let (_, err, code) = exec(&mut c, &gv.id, &["touch", "/x"]).await;
    assert!(code != 0 && (err.contains("Read-only file system") || err.contains("Permission denied")), "{err}");
    let (mounts, _, _) = exec(&mut c, &gv.id, &["cat", "/proc/mounts"]).await;
    let root = mounts.lines().find(|l| l.split_whitespace().nth(1) == Some("/")).unwrap_or_default();
    assert!(root.split_whitespace().nth(3).is_some_and(|o| o.split(',').any(|o| o == "ro")), "root mount: {mounts}");
    let (_, err, code) = exec(&mut c, &gv.id, &["touch", "/tmp/x"]).await;
    assert_eq!(code, 0, "{err}");
    // More processes than a pids limit taken literally would allow under gVisor.
    let (out, err, code) =
        exec(&mut c, &gv.id, &["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 2 & done; wait; echo done"]).await;
    assert_eq!((out.as_str(), code), ("done\n", 0), "{err}");

    // Copies in and out (copy-out is refused above OFFICIAL by default, so
    // through an exec, whose output is capped but allowed).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "gvisor copy-in\n").unwrap();
    let out = Command::new("tar").arg("-c").arg("-C").arg(dir.path()).arg("in.txt").output().unwrap();
    assert!(out.status.success());
    let tar = out.stdout;
    let stream = copy_in_stream(&gv.id, "/tmp", tar);
    c.copy_in(stream).await.expect("copy in under gVisor");
    let (out, _, _) = exec(&mut c, &gv.id, &["cat", "/tmp/in.txt"]).await;
    assert_eq!(out, "gvisor copy-in\n");

    // An isolated network under gVisor (runsc-host: the container's own
    // namespace): the host's firewall rules hold as for runc.
    let net = c.create_sandbox(request(&d, "test-gvisor-isolated", "OFFICIAL-SENSITIVE")).await.unwrap().into_inner();
    assert_eq!(runtime_of(&net.container_id).await, "runsc-host");
    let port = greeter().await;
    for host in host_addresses() {
        assert!(!reaches(&mut c, &net.id, &host, port).await, "an isolated gVisor sandbox reached {host}:{port}");
    }
    // Positive control: its network works (a listener inside, reached at
    // the sandbox's own address rather than loopback).
    let listen = "(while true; do echo hello | busybox nc -l -p 9000; done) >/dev/null 2>&1 &";
    let (out, _, _) = exec(&mut c, &net.id, &["sh", "-c", listen]).await;
    assert!(out.is_empty());
    let own = net.address.clone();
    assert!(!own.is_empty());
    eventually(Duration::from_secs(10), "the listener inside the gVisor sandbox answers at its address", || {
        let (mut c, id, own) = (c.clone(), net.id.clone(), own.clone());
        async move { reaches(&mut c, &id, &own, 9000).await.then_some(()) }
    })
    .await;

    // The egress proxy serves an allowlist sandbox under gVisor as under
    // runc: the listed destination through it, nothing else, nothing direct.
    let allow = c.create_sandbox(request(&d, "test-gvisor-allow", "OFFICIAL-SENSITIVE")).await.unwrap().into_inner();
    assert_eq!(runtime_of(&allow.container_id).await, "runsc-host");
    let connect = |port: u16| format!("CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\n\\r\\n");
    // Retried: once, under a loaded host, the proxy relayed the greeting
    // (its log said so) and the exec still came back with no output.
    let mut tries = Vec::new();
    for _ in 0..3 {
        let out = via_proxy(&mut c, &allow.id, &connect(allowed)).await;
        if out.starts_with("HTTP/1.1 200") && out.contains("hello") {
            break;
        }
        tries.push(out);
    }
    assert!(tries.len() < 3, "through the proxy: {tries:?}");
    // Retried on an empty answer alone (the same lost exec output as above):
    // whatever answer comes back must be the refusal.
    let mut refused = None;
    for _ in 0..3 {
        let out = via_proxy(&mut c, &allow.id, &connect(port)).await;
        if !out.is_empty() {
            refused = Some(out);
            break;
        }
    }
    let out = refused.expect("an answer from the proxy for an unlisted destination");
    assert!(out.starts_with("HTTP/1.1 403"), "an unlisted destination: {out:?}");
    for host in host_addresses() {
        assert!(!reaches(&mut c, &allow.id, &host, allowed).await, "reached {host}:{allowed} around the proxy");
    }

    // A warm pool of gVisor sandboxes fills, and a create claims one.
    let mut ops = d.profile_client(OPERATOR).await;
    let pool = |ops: &mut proto::profile_service_client::ProfileServiceClient<_>| {
        let mut ops = ops.clone();
        async move {
            let pools = ops.list_pools(proto::ListPoolsRequest {}).await.unwrap().into_inner().pools;
            pools.into_iter().find(|p| p.profile == "test-gvisor-warm")
        }
    };
    eventually(Duration::from_secs(30), "the gVisor pool filled", || {
        let f = pool(&mut ops);
        async move { f.await.filter(|p| p.warm >= 1).map(|_| ()) }
    })
    .await;
    let claimed = c.create_sandbox(request(&d, "test-gvisor-warm", "OFFICIAL")).await.unwrap().into_inner();
    assert_eq!(pool(&mut ops).await.unwrap().claims, 1, "the create was a claim");
    assert_eq!(runtime_of(&claimed.container_id).await, "runsc-none");
    let (out, _, code) = exec(&mut c, &claimed.id, &["busybox", "dmesg"]).await;
    assert!(code == 0 && out.contains("gVisor"), "{out}");

    // A restart adopts them with their runtime kept (the containers are not remade).
    d.kill9();
    d.spawn().await;
    let mut c = d.client(TEAM_A).await;
    for (sb, runtime) in [(&gv, "runsc-none"), (&net, "runsc-host")] {
        let got = c.get_sandbox(proto::GetSandboxRequest { id: sb.id.clone() }).await.unwrap().into_inner();
        assert_eq!((state(&got), got.container_id.as_str()), (SandboxState::Running, sb.container_id.as_str()));
        assert_eq!(runtime_of(&sb.container_id).await, runtime);
    }
    let (out, _, code) = exec(&mut c, &gv.id, &["cat", "/tmp/in.txt"]).await;
    assert_eq!((out.as_str(), code), ("gvisor copy-in\n", 0), "the adopted sandbox kept its files");

    // Expiry stops a gVisor sandbox on time, and delete removes everything.
    let short = c
        .create_sandbox(proto::CreateSandboxRequest {
            ttl: ttl(2),
            ..request(&d, "test-sensitive", "OFFICIAL-SENSITIVE")
        })
        .await
        .unwrap()
        .into_inner();
    eventually(Duration::from_secs(30), "the short-lived gVisor sandbox expired and its container went", || {
        let mut c = c.clone();
        let (id, cid) = (short.id.clone(), short.container_id.clone());
        async move {
            let sb = c.get_sandbox(proto::GetSandboxRequest { id }).await.unwrap().into_inner();
            (state(&sb) == SandboxState::Expired && !container_exists(&cid).await).then_some(())
        }
    })
    .await;
    c.delete_sandbox(proto::DeleteSandboxRequest { id: net.id.clone() }).await.unwrap();
    assert!(!container_exists(&net.container_id).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sensitive_create_on_a_runc_profile_is_refused_by_rule_where_the_host_requires_gvisor() {
    // With no minimum, a runc profile may carry OFFICIAL-SENSITIVE ...
    let d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    c.create_sandbox(request(&d, "test-sensitive", "OFFICIAL-SENSITIVE"))
        .await
        .expect("runc allowed without a minimum");

    // ... where the host requires gVisor for it, such a profile is refused
    // at load (the daemon names the file, the field and the rule) ...
    let mut reload = d.profile_client(OPERATOR).await;
    let file = d.profiles_dir().join("test-sensitive.toml");
    let body = std::fs::read_to_string(&file).unwrap();
    let v = reload
        .validate_profile(proto::ValidateProfileRequest { file_name: "test-sensitive.toml".into(), content: body })
        .await
        .unwrap()
        .into_inner();
    assert!(v.valid, "valid on a host without the minimum");
    drop(d);

    let dir = tempfile::tempdir().unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_sandpitd"))
        .args(["--check", "--config"])
        .arg(write_config_requiring_gvisor(dir.path()))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&refused.stdout), String::from_utf8_lossy(&refused.stderr));
    assert!(!refused.status.success(), "{text}");
    assert!(
        text.contains("test-sensitive.toml") && text.contains("isolation") && text.contains("isolation-classification"),
        "{text}"
    );

    // ... so no loaded profile lets OFFICIAL-SENSITIVE work run under runc:
    // the runc profiles that load stop at OFFICIAL (rule
    // profile-classification), and the gVisor one serves it. (Admission's
    // own rule, isolation-classification, checks each create's
    // classification again: sandpit-core's admission tests show it.)
    let d = Daemon::with(Options {
        minimum_isolation: GVISOR_FROM_SENSITIVE,
        profiles: vec![
            ("test-sensitive".into(), profile("none", "OFFICIAL-SENSITIVE", "isolation = \"gvisor\"")),
            ("test-runc".into(), profile("none", "OFFICIAL", "")),
        ],
        ..Default::default()
    })
    .await;
    let mut c = d.client(TEAM_A).await;
    let e = c.create_sandbox(request(&d, "test-runc", "OFFICIAL-SENSITIVE")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("profile-classification"), "{}", e.message());
    let ok = c.create_sandbox(request(&d, "test-sensitive", "OFFICIAL-SENSITIVE")).await.unwrap().into_inner();
    assert_eq!(runtime_of(&ok.container_id).await, "runsc-none");
}

/// A config like the harness's, requiring gVisor from OFFICIAL-SENSITIVE,
/// over a profiles directory holding a runc OFFICIAL-SENSITIVE profile.
fn write_config_requiring_gvisor(dir: &std::path::Path) -> std::path::PathBuf {
    let profiles = dir.join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    std::fs::write(
        profiles.join("test-sensitive.toml"),
        profile("none", "OFFICIAL-SENSITIVE", "").replace("{image}", image()),
    )
    .unwrap();
    let config = dir.join("sandpit.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nprofiles_dir = \"{}\"\n[isolation.minimum]\n{GVISOR_FROM_SENSITIVE}\n",
            dir.join("data").display(),
            profiles.display()
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn a_level_the_engine_cannot_give_is_reported_and_refused_never_downgraded() {
    let d = Daemon::with(Options {
        profiles: vec![("test-gvisor".into(), profile("none", "OFFICIAL", "isolation = \"gvisor\"\nwarm_pool = 1"))],
        extra_config: "[isolation.runtimes]\ngvisor = \"sandpit-test-no-such-runtime\"\n".into(),
        ..Default::default()
    })
    .await;
    let mut ops = d.profile_client(OPERATOR).await;
    let listed = ops.list_profiles(proto::ListProfilesRequest {}).await.unwrap().into_inner().profiles;
    let gv = listed.iter().find(|p| p.name == "test-gvisor").unwrap();
    assert_eq!(gv.isolation, "gvisor");
    assert!(gv.unavailable.contains("no runtime 'sandpit-test-no-such-runtime'"), "{}", gv.unavailable);
    assert!(listed.iter().filter(|p| p.name != "test-gvisor").all(|p| p.unavailable.is_empty()));

    // So does `sandpit profile ls`.
    let out = crate::cli::sandpit(&d, OPERATOR, &["profile", "ls"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text.lines().find(|l| l.starts_with("test-gvisor")).unwrap_or_default();
    assert!(row.contains("gvisor (unavailable)") && row.contains("sandpit-test-no-such-runtime"), "{text}");
    let row = text.lines().find(|l| l.starts_with(PROFILE)).unwrap_or_default();
    assert!(row.contains("container") && !row.contains("unavailable"), "{text}");

    let mut c = d.client(TEAM_A).await;
    let e = c.create_sandbox(request(&d, "test-gvisor", "OFFICIAL")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("isolation-available") && e.message().contains("sandpit-test-no-such-runtime"),
        "{}",
        e.message()
    );
    // Nothing was made for it, its warm pool stays empty, and the log says why.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(d.containers().await.iter().all(|c| !c.labels.as_ref().unwrap().values().any(|v| v == "test-gvisor")));
    let log = d.log();
    assert!(log.contains("profile unavailable on this host") && log.contains("test-gvisor"), "{log}");
    // A container profile still runs.
    create(&mut c, &d.exp_a, 60).await;
}
