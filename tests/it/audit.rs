//! Signed checkpoints of the audit chain, end to end: the daemon writes and
//! serves them, and `sandpit audit verify --checkpoint` catches what the
//! chain alone cannot (a truncated, emptied or re-chained log), forged
//! checkpoints and wrong keys; a daemon restarted on a broken chain says so
//! and signs nothing more.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use rusqlite::{params, Connection};
use sandpit_core::audit::checkpoint::{Checkpoint, SigningKey, VerifierKey};
use sandpit_core::audit::{chain_hash, AuditEntry, Outcome};
use sandpit_proto as proto;
use tonic::Code;

use crate::support::*;

/// The CLI as an auditor, against `d`.
fn sandpit(d: &Daemon, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sandpit"))
        .args(args)
        .env("SANDPIT_ADDR", &d.addr)
        .env("SANDPIT_TOKEN", AUDITOR)
        .env_remove("SANDPIT_DATA_DIR")
        .output()
        .expect("run sandpit")
}

/// The CLI with no daemon: `audit verify --data-dir DIR` and `args`.
fn verify_offline(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sandpit"))
        .args(["audit", "verify", "--data-dir"])
        .arg(dir)
        .args(args)
        .env_remove("SANDPIT_ADDR")
        .env_remove("SANDPIT_DATA_DIR")
        .output()
        .expect("run sandpit")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn both(o: &Output) -> String {
    format!("{}{}", stdout(o), String::from_utf8_lossy(&o.stderr))
}

/// `n` audit records: each registration is one.
async fn records(d: &Daemon, n: usize) {
    for _ in 0..n {
        d.experiment(TEAM_A, "OFFICIAL").await;
    }
}

/// Names of the files in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| r.map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn instance(data: &Path) -> String {
    Connection::open(data.join("sandpit.db"))
        .unwrap()
        .query_row("SELECT value FROM meta WHERE key = 'instance_id'", [], |r| r.get(0))
        .unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every audit record's (seq, hash), oldest first.
async fn hashes(d: &Daemon) -> Vec<(u64, String)> {
    let q = proto::QueryAuditLogRequest { page_size: 1000, ..Default::default() };
    let events = d.audit(AUDITOR).await.query_audit_log(q).await.unwrap().into_inner().events;
    events.into_iter().map(|e| (e.seq, e.hash)).collect()
}

/// A config with small checkpoint settings (and `more` in the `[audit]` table).
fn audit_config(every: u32, interval: &str, more: &str) -> Options {
    Options {
        extra_config: format!("[audit]\ncheckpoint_every = {every}\ncheckpoint_interval = \"{interval}\"\n{more}\n"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_writes_signs_and_serves_checkpoints() {
    // The key and the checkpoints outside the data directory, as in production.
    let outside = tempfile::tempdir().unwrap();
    let key_path = outside.path().join("keys/audit.key");
    let cp_dir = outside.path().join("checkpoints");
    let more = format!("signing_key = \"{}\"\ncheckpoint_dir = \"{}\"", key_path.display(), cp_dir.display());
    let mut d = Daemon::with(audit_config(5, "1h", &more)).await;
    let data = d.data_dir();

    // The key: private, in a private directory; its verifier key beside it.
    assert_eq!((mode(&key_path), mode(key_path.parent().unwrap())), (0o600, 0o700));
    let pub_path = outside.path().join("keys/audit.key.pub");
    let key = VerifierKey::parse(&std::fs::read_to_string(&pub_path).unwrap()).unwrap();
    let inst = instance(&data);
    assert_eq!(key.name(), format!("sandpit-{inst}"));
    assert!(!data.join("audit-signing.key").exists() && !data.join("checkpoints").exists());

    records(&d, 12).await;
    let files = eventually(Duration::from_secs(10), "two checkpoints", || {
        let files = listing(&cp_dir);
        async move { (files.iter().filter(|f| f.starts_with("checkpoint-")).count() >= 2).then_some(files) }
    })
    .await;
    let chain = hashes(&d).await;
    let mut sizes = Vec::new();
    for f in files.iter().filter(|f| f.starts_with("checkpoint-")) {
        let note = std::fs::read_to_string(cp_dir.join(f)).unwrap();
        let cp = Checkpoint::open(&note, &key).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(cp.origin, format!("sandpit/{inst}"));
        assert_eq!(*f, format!("checkpoint-{:020}", cp.size), "named by size");
        let (_, hash) = chain.iter().find(|(seq, _)| *seq == cp.size).expect("the record exists");
        assert_eq!(*hash, hex::encode(cp.head), "{f}: the head is record {}'s hash", cp.size);
        assert_eq!(mode(&cp_dir.join(f)), 0o644);
        sizes.push(cp.size);
    }
    assert!(sizes.windows(2).all(|w| w[0] < w[1]) && sizes[0] >= 5, "{sizes:?}");
    assert!(files.contains(&"latest".to_string()));
    let log = d.log();
    assert!(
        log.lines().any(|l| l.contains("INFO")
            && l.contains("audit checkpoint signed")
            && l.contains(&format!("size={}", sizes[0]))),
        "{log}"
    );
    let m = d.scrape().await;
    assert_eq!(m.get("sandpit_audit_chain_ok", &[]), 1.0);
    assert!(m.get("sandpit_audit_checkpoints_total", &[]) >= 2.0);

    // Served: `sandpit audit checkpoint` prints a note that verifies, of the chain as it is now.
    records(&d, 2).await;
    let out = sandpit(&d, &["audit", "checkpoint"]);
    assert!(out.status.success(), "{}", both(&out));
    let note = stdout(&out);
    let cp = Checkpoint::open(&note, &key).unwrap();
    let chain = hashes(&d).await;
    assert_eq!((cp.size, hex::encode(cp.head)), chain.last().cloned().unwrap(), "the whole chain, now");
    assert_eq!(std::fs::read_to_string(cp_dir.join("latest")).unwrap(), note, "written like any other");
    let out = sandpit(&d, &["audit", "checkpoint", "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["note"], note.as_str());
    assert_eq!(j["verifierKey"], key.to_string());
    assert_eq!(j["headHash"], hex::encode(cp.head));
    assert_eq!(j["size"], cp.size.to_string(), "uint64 is a string in proto3 JSON");
    let e = d.audit(TEAM_A).await.get_checkpoint(proto::GetCheckpointRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "auditors only");

    // Verified online, with the auditor's key or the daemon's.
    let off_host = tempfile::tempdir().unwrap();
    let cp_file = off_host.path().join("cp.note");
    std::fs::write(&cp_file, &note).unwrap();
    let (cp_arg, pub_arg) = (cp_file.to_str().unwrap(), pub_path.to_str().unwrap());
    let out = sandpit(&d, &["audit", "verify", "--checkpoint", cp_arg, "--public-key", pub_arg]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(stdout(&out).contains(&format!("holds checkpoint {cp_arg}")), "{}", stdout(&out));
    assert!(stdout(&out).contains(&format!("checked here against {pub_arg}")), "{}", stdout(&out));
    let out = sandpit(&d, &["audit", "verify", "--checkpoint", cp_arg]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(stdout(&out).contains("checked by the daemon against its own key"), "{}", stdout(&out));

    // At shutdown, a last checkpoint covers everything.
    records(&d, 1).await;
    assert!(d.terminate().success());
    let rows: u64 = Connection::open(data.join("sandpit.db"))
        .unwrap()
        .query_row("SELECT max(seq) FROM audit", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64;
    let latest = Checkpoint::open(&std::fs::read_to_string(cp_dir.join("latest")).unwrap(), &key).unwrap();
    assert_eq!(latest.size, rows, "the shutdown checkpoint");
    assert!(listing(&cp_dir).contains(&format!("checkpoint-{rows:020}")));

    // Offline: with the public key it verifies; without, it refuses to pretend.
    let latest_arg = cp_dir.join("latest");
    let out = verify_offline(&data, &["--checkpoint", latest_arg.to_str().unwrap(), "--public-key", pub_arg]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(stdout(&out).contains(&format!("audit log verified: {rows} records")), "{}", stdout(&out));
    let out = verify_offline(&data, &["--checkpoint", latest_arg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(both(&out).contains("needs --public-key"), "{}", both(&out));
}

/// The rows of the audit table as entries, to re-chain them.
fn entries(conn: &Connection) -> Vec<(u64, AuditEntry, Vec<u8>)> {
    let mut stmt = conn
        .prepare(
            "SELECT seq, time_ms, actor, role, action, target, experiment, sandbox, outcome, code, reason, source, hash
             FROM audit ORDER BY seq",
        )
        .unwrap();
    stmt.query_map([], |r| {
        let outcome: String = r.get(8)?;
        Ok((
            r.get::<_, i64>(0)? as u64,
            AuditEntry {
                time: sandpit_core::time::from_millis(r.get(1)?),
                actor: r.get(2)?,
                role: r.get(3)?,
                action: r.get(4)?,
                target: r.get(5)?,
                experiment: r.get(6)?,
                sandbox: r.get(7)?,
                outcome: Outcome::parse(&outcome).unwrap(),
                code: r.get(9)?,
                reason: r.get(10)?,
                source: r.get(11)?,
            },
            r.get(12)?,
        ))
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

fn set_head(conn: &Connection, seq: u64, hash: &[u8]) {
    conn.execute("UPDATE meta SET value = ?1 WHERE key = 'audit_head_seq'", [seq.to_string()]).unwrap();
    conn.execute("UPDATE meta SET value = ?1 WHERE key = 'audit_head_hash'", [hex::encode(hash)]).unwrap();
}

/// Ways to tamper with a stopped daemon's store that leave a chain consistent with itself.
#[derive(Debug, Clone, Copy)]
enum Tamper {
    /// Records after `keep` deleted, the head in `meta` rewritten to match.
    Truncate { keep: u64 },
    /// Every record and the head deleted.
    Empty,
    /// Record `seq` edited, and it and every later record re-chained, head too.
    Rechain { seq: u64 },
}

impl Tamper {
    fn apply(self, db: &Path) {
        let conn = Connection::open(db).unwrap();
        match self {
            Tamper::Truncate { keep } => {
                let rows = entries(&conn);
                conn.execute("DELETE FROM audit WHERE seq > ?1", [keep as i64]).unwrap();
                set_head(&conn, keep, &rows[keep as usize - 1].2);
            }
            Tamper::Empty => {
                conn.execute_batch("DELETE FROM audit; DELETE FROM meta WHERE key LIKE 'audit_head_%';").unwrap()
            }
            Tamper::Rechain { seq } => {
                let mut prev = [0u8; 32];
                let mut last = 0;
                for (n, mut e, hash) in entries(&conn) {
                    if n < seq {
                        prev = hash.try_into().unwrap();
                        continue;
                    }
                    if n == seq {
                        e.reason = "nothing happened".into();
                        conn.execute("UPDATE audit SET reason = ?1 WHERE seq = ?2", params![e.reason, n as i64])
                            .unwrap();
                    }
                    let h = chain_hash(&prev, n, &e);
                    conn.execute(
                        "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
                        params![&prev[..], &h[..], n as i64],
                    )
                    .unwrap();
                    (prev, last) = (h, n);
                }
                set_head(&conn, last, &prev);
            }
        }
    }

    /// What the failed verification must say.
    fn says(self) -> &'static str {
        match self {
            Tamper::Truncate { .. } | Tamper::Empty => "missing",
            Tamper::Rechain { .. } => "rewritten",
        }
    }
}

/// Copies a stopped daemon's store whole (its WAL folded in first).
fn copy_store(from: &Path, to: &Path) {
    Connection::open(from).unwrap().execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    for suffix in ["-wal", "-shm"] {
        let mut side = to.as_os_str().to_owned();
        side.push(suffix);
        let _ = std::fs::remove_file(side);
    }
    std::fs::copy(from, to).unwrap();
}

/// A copy of a stopped daemon's store, tampered with.
fn tampered_copy(data: &Path, t: Tamper) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_store(&data.join("sandpit.db"), &dir.path().join("sandpit.db"));
    t.apply(&dir.path().join("sandpit.db"));
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_with_a_checkpoint_catches_truncation_deletion_rewriting_and_forgery() {
    // Default locations: the key and the checkpoints in the data directory.
    let mut d = Daemon::with(audit_config(1000, "1h", "")).await;
    records(&d, 8).await;
    let off_host = tempfile::tempdir().unwrap();
    let out = sandpit(&d, &["audit", "checkpoint"]);
    assert!(out.status.success(), "{}", both(&out));
    let cp_file = off_host.path().join("checkpoint.note");
    std::fs::write(&cp_file, stdout(&out)).unwrap();
    let pub_file = off_host.path().join("sandpit.pub");
    std::fs::copy(d.data_dir().join("audit-signing.key.pub"), &pub_file).unwrap();
    let key = VerifierKey::parse(&std::fs::read_to_string(&pub_file).unwrap()).unwrap();
    let cp = Checkpoint::open(&stdout(&out), &key).unwrap();
    assert!(cp.size >= 10, "{cp:?}");
    records(&d, 2).await;
    assert!(d.terminate().success());
    let data = d.data_dir();
    assert!(listing(&data.join("checkpoints")).contains(&"latest".to_string()));
    let with_cp = |dir: &Path| {
        verify_offline(dir, &["--checkpoint", cp_file.to_str().unwrap(), "--public-key", pub_file.to_str().unwrap()])
    };

    let out = with_cp(&data);
    assert!(out.status.success(), "an untouched log holds its checkpoint: {}", both(&out));
    assert!(stdout(&out).contains(&format!("holds checkpoint {}", cp_file.display())), "{}", stdout(&out));
    assert!(stdout(&out).contains(&format!("{} records", cp.size)), "{}", stdout(&out));

    for t in [Tamper::Truncate { keep: cp.size - 3 }, Tamper::Empty, Tamper::Rechain { seq: 4 }] {
        let copy = tampered_copy(&data, t);
        // The chain alone cannot tell: it is consistent with itself.
        let alone = verify_offline(copy.path(), &[]);
        assert!(alone.status.success(), "{t:?}: the chain alone verifies: {}", both(&alone));
        let out = with_cp(copy.path());
        assert_eq!(out.status.code(), Some(1), "{t:?}: {}", both(&out));
        assert!(stdout(&out).contains(t.says()), "{t:?}: '{}' should say {}", stdout(&out), t.says());
        assert!(stdout(&out).contains("does NOT hold checkpoint"), "{t:?}: {}", stdout(&out));
    }

    // A forged checkpoint, one signed by another key, and the wrong public key.
    let note = std::fs::read_to_string(&cp_file).unwrap();
    let shorter = Checkpoint { size: cp.size - 3, ..cp.clone() };
    let altered = note.replacen(&format!("\n{}\n", cp.size), &format!("\n{}\n", shorter.size), 1);
    assert_ne!(altered, note);
    let impostor = SigningKey::from_seed(key.name(), &[7; 32]).unwrap();
    let resigned = shorter.sign(&impostor).unwrap();
    let impostor_pub = off_host.path().join("impostor.pub");
    std::fs::write(&impostor_pub, impostor.verifier().to_string()).unwrap();
    let cases = [
        (altered.as_str(), pub_file.as_path(), "does not verify"),
        (resigned.as_str(), pub_file.as_path(), "no signature by key"),
        (note.as_str(), impostor_pub.as_path(), "no signature by key"),
    ];
    for (i, (text, public, says)) in cases.into_iter().enumerate() {
        let f = off_host.path().join(format!("case-{i}.note"));
        std::fs::write(&f, text).unwrap();
        let out =
            verify_offline(&data, &["--checkpoint", f.to_str().unwrap(), "--public-key", public.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "case {i}: {}", both(&out));
        assert!(stdout(&out).contains("REFUSED") && stdout(&out).contains(says), "case {i}: {}", stdout(&out));
    }

    // Online: the daemon refuses the forgery against its own key, and holds the real one.
    d.spawn().await;
    let forged = off_host.path().join("case-0.note");
    let out = sandpit(&d, &["audit", "verify", "--checkpoint", forged.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(stdout(&out).contains("REFUSED") && stdout(&out).contains("does not verify"), "{}", stdout(&out));
    let impostor_arg = impostor_pub.to_str().unwrap();
    let out =
        sandpit(&d, &["audit", "verify", "--checkpoint", cp_file.to_str().unwrap(), "--public-key", impostor_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let out = sandpit(&d, &["audit", "verify", "--checkpoint", cp_file.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", both(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((j["ok"].as_bool(), j["checkpointSize"].as_str()), (Some(true), Some(cp.size.to_string().as_str())));
    assert_eq!(j["verifierKey"], key.to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_restarted_on_a_broken_chain_says_so_and_signs_nothing() {
    let mut d = Daemon::with(audit_config(3, "1s", "")).await;
    records(&d, 9).await;
    let cp_dir = d.data_dir().join("checkpoints");
    let key =
        VerifierKey::parse(&std::fs::read_to_string(d.data_dir().join("audit-signing.key.pub")).unwrap()).unwrap();
    assert!(d.terminate().success());
    let db = d.data_dir().join("sandpit.db");
    let pristine = tempfile::tempdir().unwrap();
    copy_store(&db, &pristine.path().join("sandpit.db"));
    let signed = Checkpoint::open(&std::fs::read_to_string(cp_dir.join("latest")).unwrap(), &key).unwrap();
    assert!(signed.size >= 11, "{signed:?}");

    for t in [Tamper::Truncate { keep: signed.size - 2 }, Tamper::Empty, Tamper::Rechain { seq: 5 }] {
        copy_store(&pristine.path().join("sandpit.db"), &db);
        t.apply(&db);
        let before = listing(&cp_dir);
        let latest = std::fs::read_to_string(cp_dir.join("latest")).unwrap();
        let log_from = d.log().len();
        d.spawn().await;

        let line =
            eventually(Duration::from_secs(10), "the ERROR line", || {
                let log = d.log()[log_from..].to_string();
                async move {
                    log.lines().find(|l| l.contains("ERROR") && l.contains("audit chain BROKEN")).map(String::from)
                }
            })
            .await;
        assert!(line.contains(t.says()) && line.contains("no checkpoint"), "{t:?}: {line}");
        let m = d.scrape().await;
        assert!(m.0.lines().any(|l| l == "sandpit_audit_chain_ok 0"), "{t:?}: {}", m.0);

        // New records, intervals passing, a request, a shutdown: nothing is signed.
        records(&d, 4).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let e = d.audit(AUDITOR).await.get_checkpoint(proto::GetCheckpointRequest {}).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{t:?}: {e:?}");
        assert!(e.message().contains("failed verification"), "{}", e.message());
        assert_eq!(d.scrape().await.get("sandpit_audit_checkpoints_total", &[]), 0.0);
        assert!(d.terminate().success());
        assert_eq!(listing(&cp_dir), before, "{t:?}: no new checkpoint file");
        assert_eq!(std::fs::read_to_string(cp_dir.join("latest")).unwrap(), latest, "{t:?}");
        let log = d.log()[log_from..].to_string();
        assert!(!log.contains("audit checkpoint signed"), "{t:?}: {log}");
    }

    // Restored, the daemon verifies and signs again.
    copy_store(&pristine.path().join("sandpit.db"), &db);
    let log_from = d.log().len();
    d.spawn().await;
    records(&d, 1).await;
    let out = sandpit(&d, &["audit", "checkpoint"]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(Checkpoint::open(&stdout(&out), &key).unwrap().size > signed.size);
    assert!(d.log()[log_from..].contains("audit chain verified at start"));
    assert_eq!(d.scrape().await.get("sandpit_audit_chain_ok", &[]), 1.0);
}
