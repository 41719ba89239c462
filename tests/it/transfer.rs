//! File transfer: tar archives in and out, allowed per profile, audited with
//! size and SHA-256.

use futures_util::StreamExt;
use sandpit::proto::{self, copy_in_request::Part};
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::lifecycle::exec;
use crate::support::*;

fn archive() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "population estimates\n").unwrap();
    let out = std::process::Command::new("tar").arg("-c").arg("-C").arg(dir.path()).arg("notes.txt").output().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn copy_in_stream(id: &str, path: &str, data: Vec<u8>) -> impl futures_util::Stream<Item = proto::CopyInRequest> {
    let header =
        proto::CopyInRequest { part: Some(Part::Header(proto::CopyInHeader { id: id.into(), path: path.into() })) };
    let chunks: Vec<proto::CopyInRequest> =
        data.chunks(4096).map(|c| proto::CopyInRequest { part: Some(Part::Chunk(c.to_vec())) }).collect();
    futures_util::stream::iter(std::iter::once(header).chain(chunks))
}

#[tokio::test(flavor = "multi_thread")]
async fn files_copy_in_and_out_where_the_profile_allows() {
    let d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 120).await;

    let tar = archive();
    let want = hex::encode(Sha256::digest(&tar));
    let t = c.copy_in(copy_in_stream(&sb.id, "/tmp", tar.clone())).await.unwrap().into_inner();
    assert_eq!((t.size_bytes as usize, t.sha256.as_str()), (tar.len(), want.as_str()));
    let (out, _, code) = exec(&mut c, &sb.id, &["cat", "/tmp/notes.txt"]).await;
    assert_eq!((out.as_str(), code), ("population estimates\n", 0));

    let mut s = c
        .copy_out(proto::CopyOutRequest { id: sb.id.clone(), path: "/tmp/notes.txt".into() })
        .await
        .unwrap()
        .into_inner();
    let (mut bytes, mut summary) = (Vec::new(), None);
    while let Some(m) = s.next().await {
        let m = m.unwrap();
        bytes.extend(m.chunk);
        summary = m.summary.or(summary);
    }
    let summary = summary.expect("summary at the end");
    assert_eq!(summary.size_bytes as usize, bytes.len());
    assert_eq!(summary.sha256, hex::encode(Sha256::digest(&bytes)));
    let dir = tempfile::tempdir().unwrap();
    let mut untar = std::process::Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dir.path())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(untar.stdin.as_mut().unwrap(), &bytes).unwrap();
    drop(untar.stdin.take());
    assert!(untar.wait().unwrap().success());
    assert_eq!(std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(), "population estimates\n");

    // Bad paths and a failed extraction are clear errors.
    let e = c.copy_in(copy_in_stream(&sb.id, "tmp/../etc", tar.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c.copy_in(copy_in_stream(&sb.id, "/etc", tar.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "read-only root: {}", e.message());
    let e = c.copy_in(copy_in_stream(&sb.id, "/tmp", b"not a tar archive".repeat(100))).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // The sensitive profile allows copy-in but not copy-out (its default above OFFICIAL).
    let req = proto::CreateSandboxRequest {
        profile: "test-sensitive".into(),
        classification: "OFFICIAL-SENSITIVE".into(),
        ..create_req(&d.exp_a, 120)
    };
    let sens = c.create_sandbox(req).await.unwrap().into_inner();
    c.copy_in(copy_in_stream(&sens.id, "/tmp", tar.clone())).await.unwrap();
    let e = c.copy_out(proto::CopyOutRequest { id: sens.id.clone(), path: "/tmp/notes.txt".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("file-transfer"), "{}", e.message());
    // Another team cannot transfer files with it at all.
    let e = d.client(TEAM_B).await.copy_in(copy_in_stream(&sb.id, "/tmp", tar)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Each transfer is on record with its size and hash.
    let q = proto::QueryAuditLogRequest { sandbox: sb.id.clone(), ..Default::default() };
    let events = d.audit(AUDITOR).await.query_audit_log(q).await.unwrap().into_inner().events;
    let copy_in = events.iter().find(|e| e.action.ends_with("/CopyIn") && e.outcome == "succeeded").unwrap();
    assert!(copy_in.reason.contains(&want) && copy_in.reason.contains(&format!("{} bytes", t.size_bytes)));
    let copy_out = events.iter().find(|e| e.action.ends_with("/CopyOut") && e.outcome == "succeeded").unwrap();
    assert!(copy_out.reason.contains(&summary.sha256));
    let q = proto::QueryAuditLogRequest {
        sandbox: sens.id.clone(),
        action: "sandpit.v1.SandboxService/CopyOut".into(),
        ..Default::default()
    };
    let denied = d.audit(AUDITOR).await.query_audit_log(q).await.unwrap().into_inner().events;
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].outcome, "denied");
}
