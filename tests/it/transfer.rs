//! File transfer: tar archives in and out, allowed per profile, audited with
//! size and SHA-256.

use futures_util::StreamExt;
use sandpit_proto::{self as proto, copy_in_request::Part};
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

pub fn copy_in_stream(id: &str, path: &str, data: Vec<u8>) -> impl futures_util::Stream<Item = proto::CopyInRequest> {
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

/// Audit records of `sandbox` with `action`, polled until `n` exist.
pub async fn records(d: &Daemon, sandbox: &str, action: &str, n: usize) -> Vec<proto::AuditEvent> {
    eventually(std::time::Duration::from_secs(20), &format!("{n} {action} records"), || {
        let (sandbox, action) = (sandbox.to_string(), action.to_string());
        async move {
            let q = proto::QueryAuditLogRequest { sandbox, action, page_size: 1000, ..Default::default() };
            let events = d.audit(AUDITOR).await.query_audit_log(q).await.ok()?.into_inner().events;
            (events.len() >= n).then_some(events)
        }
    })
    .await
}

/// What `ls -a /tmp` shows in the sandbox, `.` and `..` aside.
async fn scratch(c: &mut Client, id: &str) -> Vec<String> {
    let (out, _, code) = exec(c, id, &["ls", "-a", "/tmp"]).await;
    assert_eq!(code, 0);
    out.lines().filter(|l| *l != "." && *l != "..").map(String::from).collect()
}

/// An archive of one file of `size` bytes that do not compress.
fn big_archive(size: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; size];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(dir.path().join("big.bin"), data).unwrap();
    let out = std::process::Command::new("tar").arg("-c").arg("-C").arg(dir.path()).arg("big.bin").output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// A copy-in bigger than the scratch space is RESOURCE_EXHAUSTED, leaves no
/// partial file, and is on record with what was received.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_in_that_outgrows_the_scratch_space_leaves_nothing() {
    let d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 120).await;
    let before = scratch(&mut c, &sb.id).await;
    // The test profile's scratch space is 16 MiB.
    let tar = big_archive(24 << 20);
    let e = c.copy_in(copy_in_stream(&sb.id, "/tmp", tar.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains("scratch space"), "{}", e.message());
    assert_eq!(scratch(&mut c, &sb.id).await, before, "no partial file, no staging directory");
    let (out, _, _) = exec(&mut c, &sb.id, &["sh", "-c", "busybox df -k /tmp | tail -1"]).await;
    assert!(out.split_whitespace().nth(2).is_some_and(|used| used.parse::<u64>().unwrap() < 1024), "{out}");
    let events = records(&d, &sb.id, "sandpit.v1.SandboxService/CopyIn", 1).await;
    let e = &events[0];
    assert_eq!((e.outcome.as_str(), e.code.as_str()), ("failed", "RESOURCE_EXHAUSTED"));
    assert!(e.reason.starts_with("ended after ") && e.reason.contains(" bytes sha256 "), "{}", e.reason);
    // The scratch space still works for what fits; directories that exist are merged into.
    c.copy_in(copy_in_stream(&sb.id, "/tmp", archive())).await.unwrap();
    assert!(scratch(&mut c, &sb.id).await.contains(&"notes.txt".to_string()));
    for name in ["a.txt", "b.txt"] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("work")).unwrap();
        std::fs::write(dir.path().join("work").join(name), name).unwrap();
        let out = std::process::Command::new("tar").arg("-c").arg("-C").arg(dir.path()).arg("work").output().unwrap();
        c.copy_in(copy_in_stream(&sb.id, "/tmp", out.stdout)).await.unwrap();
    }
    let (out, _, code) = exec(&mut c, &sb.id, &["sh", "-c", "cat /tmp/work/a.txt /tmp/work/b.txt; ls -A /tmp"]).await;
    assert_eq!(code, 0);
    assert_eq!(out, "a.txtb.txtnotes.txt\nwork\n", "merged, and no staging directory left");
}

/// Transfers the client abandons half-way are on record with the bytes moved
/// and how they ended; an abandoned copy-in leaves nothing behind.
#[tokio::test(flavor = "multi_thread")]
async fn transfers_cut_short_by_the_client_are_on_record() {
    let d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 120).await;
    let (_, _, code) = exec(&mut c, &sb.id, &["sh", "-c", "head -c 8000000 /dev/zero > /tmp/big"]).await;
    assert_eq!(code, 0);

    // Copy-out: read one chunk, then hang up.
    let mut out =
        c.copy_out(proto::CopyOutRequest { id: sb.id.clone(), path: "/tmp/big".into() }).await.unwrap().into_inner();
    let first = out.next().await.unwrap().unwrap();
    assert!(!first.chunk.is_empty());
    drop(out);
    let events = records(&d, &sb.id, "sandpit.v1.SandboxService/CopyOut", 1).await;
    let e = &events[0];
    assert_eq!((e.outcome.as_str(), e.code.as_str()), ("failed", "CANCELLED"), "{e:?}");
    assert!(e.reason.starts_with("ended after ") && e.reason.contains("client went away"), "{}", e.reason);
    let moved: u64 = e.reason["ended after ".len()..].split(' ').next().unwrap().parse().unwrap();
    assert!(moved >= first.chunk.len() as u64 && moved < 8_000_000, "{moved}");

    // Copy-in: send half an archive, then hang up.
    let before = scratch(&mut c, &sb.id).await;
    let tar = big_archive(4 << 20);
    let header = proto::CopyInRequest {
        part: Some(Part::Header(proto::CopyInHeader { id: sb.id.clone(), path: "/tmp".into() })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let relay = Cuttable::to(&d).await;
    let mut upload = relay.client(TEAM_A).await;
    let call = tokio::spawn(async move { upload.copy_in(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    tx.send(header).await.unwrap();
    for chunk in tar[..2 << 20].chunks(64 << 10) {
        tx.send(proto::CopyInRequest { part: Some(Part::Chunk(chunk.to_vec())) }).await.unwrap();
    }
    // Once the daemon has taken some of it, the client's connection is gone
    // (the upload never ends: its sender is still held).
    records_moving(&d, &sb.id).await;
    relay.cut();
    assert!(call.await.unwrap().is_err());
    let events = records(&d, &sb.id, "sandpit.v1.SandboxService/CopyIn", 1).await;
    let e = &events[0];
    assert_eq!((e.outcome.as_str(), e.code.as_str()), ("failed", "CANCELLED"), "{e:?}");
    assert!(e.reason.starts_with("ended after ") && e.reason.contains("upload broke off"), "{}", e.reason);
    assert_eq!(scratch(&mut c, &sb.id).await, before, "an abandoned copy-in leaves nothing");
    drop(tx);
}

/// Waits until the sandbox's scratch space has a copy-in staging directory.
async fn records_moving(d: &Daemon, id: &str) {
    let mut c = d.client(TEAM_A).await;
    eventually(std::time::Duration::from_secs(20), "a copy-in under way", || {
        let mut c = c.clone();
        async move { scratch(&mut c, id).await.iter().any(|f| f.starts_with(".sandpit-copy-in-")).then_some(()) }
    })
    .await;
    let _ = &mut c;
}

/// Exec output is a transfer too: each exec's end is on record, however it
/// ended, with its stdout and stderr sizes and SHA-256; where a profile
/// refuses copy-out, exec output is capped.
#[tokio::test(flavor = "multi_thread")]
async fn exec_output_is_on_record_and_capped_where_copy_out_is_refused() {
    use sandpit_proto::exec_output::Output;
    let d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 120).await;
    let (out, err, code) = exec(&mut c, &sb.id, &["sh", "-c", "echo out; echo error >&2"]).await;
    assert_eq!((out.as_str(), err.as_str(), code), ("out\n", "error\n", 0));
    let ended = records(&d, &sb.id, "exec-end", 1).await;
    let sha = |s: &str| hex::encode(Sha256::digest(s.as_bytes()));
    assert_eq!((ended[0].outcome.as_str(), ended[0].actor.as_str()), ("succeeded", "alice"));
    assert!(ended[0].reason.starts_with("exit 0 after "), "{}", ended[0].reason);
    let sent = format!("stdout 4 bytes sha256 {}; stderr 6 bytes sha256 {}; tag exec-", sha("out\n"), sha("error\n"));
    assert!(ended[0].reason.contains(&sent), "{}", ended[0].reason);

    // Past its timeout.
    let req = |cmd: &[&str], timeout: Option<i64>| proto::ExecRequest {
        id: sb.id.clone(),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: timeout.map(|s| pbjson_types::Duration { seconds: s, nanos: 0 }),
        ..Default::default()
    };
    let mut s = c.exec(req(&["sh", "-c", "echo started; sleep 30"], Some(1))).await.unwrap().into_inner();
    let mut last = None;
    while let Some(m) = s.next().await {
        last = Some(m);
    }
    assert_eq!(last.unwrap().unwrap_err().code(), Code::DeadlineExceeded);
    let ended = records(&d, &sb.id, "exec-end", 2).await;
    assert_eq!(ended[1].code, "DEADLINE_EXCEEDED");
    assert!(ended[1].reason.contains(&format!("stdout 8 bytes sha256 {}", sha("started\n"))), "{}", ended[1].reason);

    // The client goes away.
    let mut s = c.exec(req(&["sh", "-c", "echo waiting; sleep 30"], None)).await.unwrap().into_inner();
    assert!(matches!(s.next().await.unwrap().unwrap().output, Some(Output::Stdout(_))));
    drop(s);
    let ended = records(&d, &sb.id, "exec-end", 3).await;
    assert_eq!((ended[2].outcome.as_str(), ended[2].code.as_str()), ("failed", "CANCELLED"));
    assert!(ended[2].reason.contains("client went away"), "{}", ended[2].reason);

    // OFFICIAL-SENSITIVE without copy-out: output is capped at 1 MiB by default.
    let req = proto::CreateSandboxRequest {
        profile: "test-sensitive".into(),
        classification: "OFFICIAL-SENSITIVE".into(),
        ..create_req(&d.exp_a, 120)
    };
    let sens = c.create_sandbox(req).await.unwrap().into_inner();
    let big = proto::ExecRequest {
        id: sens.id.clone(),
        command: vec!["head".into(), "-c".into(), "5000000".into(), "/dev/zero".into()],
        ..Default::default()
    };
    let mut s = c.exec(big).await.unwrap().into_inner();
    let (mut got, mut end) = (0usize, None);
    while let Some(m) = s.next().await {
        match m {
            Ok(proto::ExecOutput { output: Some(Output::Stdout(b)) }) => got += b.len(),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => end = Some(e),
        }
    }
    assert_eq!(got, 1 << 20, "exactly the cap reaches the client");
    let end = end.expect("the stream ends with an error");
    assert_eq!(end.code(), Code::ResourceExhausted);
    assert!(end.message().contains("max_exec_output"), "{}", end.message());
    let ended = records(&d, &sens.id, "exec-end", 1).await;
    assert_eq!(ended[0].code, "RESOURCE_EXHAUSTED");
    assert!(ended[0].reason.contains("stdout 1048576 bytes"), "{}", ended[0].reason);
}
