//! Profiles as operators manage them: list, validate before installing,
//! reload (by RPC and SIGHUP) keeping the last good set when a file is bad.

use std::time::Duration;

use sandpit_proto as proto;
use tonic::Code;

use crate::support::*;

fn names(list: &proto::ListProfilesResponse) -> Vec<String> {
    list.profiles.iter().map(|p| p.name.clone()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_validate_and_reload_profiles_keeping_the_last_good_set() {
    let d = Daemon::start().await;
    let mut op = d.profile_client(OPERATOR).await;
    let before = op.list_profiles(proto::ListProfilesRequest {}).await.unwrap().into_inner();
    assert_eq!(names(&before), [PROFILE, "test-sensitive"]);
    let p = op.get_profile(proto::GetProfileRequest { name: PROFILE.into() }).await.unwrap().into_inner();
    assert_eq!((p.max_classification.as_str(), p.network.unwrap().mode.as_str()), ("OFFICIAL", "none"));

    // Validate before installing: an unsafe claim is named with file and field.
    let unsafe_open = "max_classification = \"OFFICIAL-SENSITIVE\"\nimages = [\"x\"]\n[network]\nmode = \"open\"\n";
    let v = op
        .validate_profile(proto::ValidateProfileRequest { file_name: "leaky.toml".into(), content: unsafe_open.into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!v.valid);
    assert_eq!((v.errors[0].file.as_str(), v.errors[0].field.as_str()), ("leaky.toml", "network.mode"));
    let ok = op
        .validate_profile(proto::ValidateProfileRequest {
            file_name: "fine.toml".into(),
            content: "max_classification = \"OFFICIAL\"\nimages = [\"x\"]\n".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.valid && ok.profile.unwrap().name == "fine");
    let e = op
        .validate_profile(proto::ValidateProfileRequest { file_name: "../etc/x.toml".into(), content: String::new() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Requesters may read profiles but not change them.
    let mut req = d.profile_client(TEAM_A).await;
    assert!(req.list_profiles(proto::ListProfilesRequest {}).await.is_ok());
    assert_eq!(req.reload_profiles(proto::ReloadProfilesRequest {}).await.unwrap_err().code(), Code::PermissionDenied);

    // A sandbox created now keeps its profile whatever the reloads do.
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 120).await;

    // A good new file and a bad one: nothing changes, every error is reported.
    let dir = d.profiles_dir();
    std::fs::write(dir.join("extra.toml"), format!("max_classification = \"OFFICIAL\"\nimages = [\"{}\"]\n", image()))
        .unwrap();
    std::fs::write(dir.join("broken.toml"), "max_classification = \"OFFICIAL\"\nimages = [\"x\"]\n[resources]\ncpus = 0\nmemory = \"1MiB\"\npids = 64\ntmpfs = \"1MiB\"\n").unwrap();
    let r = op.reload_profiles(proto::ReloadProfilesRequest {}).await.unwrap().into_inner();
    assert!(!r.applied);
    assert_eq!(r.loaded, [PROFILE, "test-sensitive"], "the last good set stays");
    let fields: Vec<&str> = r.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["resources.cpus", "resources.memory"]);
    assert!(r.errors.iter().all(|e| e.file.ends_with("broken.toml")));

    // Fix the file: SIGHUP installs the new set.
    std::fs::remove_file(dir.join("broken.toml")).unwrap();
    std::fs::remove_file(dir.join("test-sensitive.toml")).unwrap();
    d.signal("HUP");
    let after = eventually(Duration::from_secs(5), "reload on SIGHUP", || {
        let mut op = op.clone();
        async move {
            let l = op.list_profiles(proto::ListProfilesRequest {}).await.unwrap().into_inner();
            (names(&l) == ["extra", PROFILE]).then_some(l)
        }
    })
    .await;
    assert_eq!(after.profiles.len(), 2);
    let mut create_sensitive = create_req(&d.exp_a, 60);
    create_sensitive.profile = "test-sensitive".into();
    assert_eq!(c.create_sandbox(create_sensitive).await.unwrap_err().code(), Code::InvalidArgument, "removed profile");
    let still = c.get_sandbox(proto::GetSandboxRequest { id: sb.id.clone() }).await.unwrap().into_inner();
    assert_eq!((still.profile.as_str(), still.resources.unwrap().pids), (PROFILE, 64));

    // Both reloads are on record.
    let q =
        proto::QueryAuditLogRequest { action: "sandpit.v1.ProfileService/ReloadProfiles".into(), ..Default::default() };
    let events = d.audit(AUDITOR).await.query_audit_log(q).await.unwrap().into_inner().events;
    let shape: Vec<(&str, &str)> = events.iter().map(|e| (e.actor.as_str(), e.outcome.as_str())).collect();
    assert_eq!(shape, [("alice", "denied"), ("olive", "failed"), ("sandpitd", "succeeded")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_profile_stops_the_daemon_with_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "max_classification = \"OFFICIAL\"\nimages = [\"x\"]\nnetwork_mode = \"open\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandpitd"))
        .env("SANDPIT__PROFILES_DIR", dir.path())
        .env("SANDPIT__DATA_DIR", dir.path().join("data"))
        .env("SANDPIT__LISTEN", "127.0.0.1:0")
        .arg("--check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("line 3") && err.contains("network_mode"), "{err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandpitd"))
        .env("SANDPIT__LISTEN", "127.0.0.1:0")
        .env("SANDPIT__LIFECYCLE__NAP", "1s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "unknown config key");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nap"));
}
