//! Datasets: declared by operators, mounted read-only, only when the profile
//! and the sandbox's classification allow.

use std::os::unix::fs::PermissionsExt;

use sandpit_proto as proto;
use tonic::Code;

use crate::lifecycle::exec;
use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn datasets_mount_read_only_and_only_when_allowed() {
    let data = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (name, content) in [("census-sample", "age,count\n30,12\n"), ("sensitive-stats", "secret\n")] {
        let dir = data.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("readme.csv"), content).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.join("readme.csv"), std::fs::Permissions::from_mode(0o644)).unwrap();
        paths.push(dir);
    }
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let extra = format!(
        r#"
[[datasets]]
name = "census-sample"
path = "{}"
classification = "OFFICIAL"
residency = "UK"

[[datasets]]
name = "sensitive-stats"
path = "{}"
classification = "OFFICIAL-SENSITIVE"
residency = "UK"
"#,
        paths[0].display(),
        paths[1].display()
    );
    let profile = "max_classification = \"OFFICIAL-SENSITIVE\"\nimages = [\"{image}\"]\ncommand = [\"sleep\", \"infinity\"]\ndatasets = [\"census-sample\", \"sensitive-stats\"]\n";
    let d = Daemon::with(Options {
        extra_config: extra,
        profiles: vec![("test-data".into(), profile.into())],
        ..Default::default()
    })
    .await;
    let mut c = d.client(TEAM_A).await;
    let req = |class: &str, profile: &str, datasets: &[&str]| proto::CreateSandboxRequest {
        profile: profile.into(),
        classification: class.into(),
        datasets: datasets.iter().map(|s| s.to_string()).collect(),
        ..create_req(&d.exp_a, 120)
    };

    let sb = c.create_sandbox(req("OFFICIAL", "test-data", &["census-sample"])).await.unwrap().into_inner();
    assert_eq!(sb.datasets, ["census-sample"]);
    let (out, _, code) = exec(&mut c, &sb.id, &["cat", "/data/census-sample/readme.csv"]).await;
    assert_eq!((out.as_str(), code), ("age,count\n30,12\n", 0));
    let (_, err, code) = exec(&mut c, &sb.id, &["touch", "/data/census-sample/new"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("Read-only"), "{err}");
    let (out, _, _) = exec(&mut c, &sb.id, &["ls", "/data"]).await;
    assert_eq!(out, "census-sample\n", "only the requested dataset is there");
    let mounts = docker().await.inspect_container(&sb.container_id, None).await.unwrap().mounts.unwrap();
    assert!(mounts.iter().all(|m| m.rw == Some(false)), "{mounts:?}");

    // A dataset above the sandbox's classification, or one the profile does not list.
    let e = c.create_sandbox(req("OFFICIAL", "test-data", &["sensitive-stats"])).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("dataset-classification"), "{}", e.message());
    let e = c.create_sandbox(req("OFFICIAL", PROFILE, &["census-sample"])).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("dataset-allowlist"), "{}", e.message());
    let e = c.create_sandbox(req("OFFICIAL", "test-data", &["nope"])).await.unwrap_err();
    assert!(e.message().contains("dataset-allowlist"), "{}", e.message());

    // At OFFICIAL-SENSITIVE (approved experiment) both may be mounted.
    let both = c
        .create_sandbox(req("OFFICIAL-SENSITIVE", "test-data", &["census-sample", "sensitive-stats"]))
        .await
        .unwrap()
        .into_inner();
    let (out, _, _) = exec(&mut c, &both.id, &["cat", "/data/sensitive-stats/readme.csv"]).await;
    assert_eq!(out, "secret\n");
    // Without datasets there is nothing under /data.
    let plain = create(&mut c, &d.exp_a, 60).await;
    let (_, _, code) = exec(&mut c, &plain.id, &["ls", "/data"]).await;
    assert_ne!(code, 0);
}
