//! Audit log benchmark: append N hash-chained records to a real SQLite store,
//! then verify the whole chain (through the store and offline from the file).
//!
//!   cargo bench --bench audit -- [N]        (N defaults to 100000)
//!
//! It measures and prints; it asserts nothing about time.

use std::time::{Instant, SystemTime};

use sandpit_core::audit::{AuditEntry, Outcome};
use sandpit_core::store::Store;
use sandpit_store_sqlite::SqliteStore;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("sandpit.db");
    let store = SqliteStore::open(&path).expect("open store");

    let started = Instant::now();
    for i in 0..n {
        store
            .append_audit(AuditEntry {
                time: SystemTime::now(),
                actor: format!("user-{}", i % 50),
                role: "requester".into(),
                action: "sandpit.v1.SandboxService/CreateSandbox".into(),
                target: format!("sb-{i:012x}"),
                experiment: format!("exp-{:010x}", i % 200),
                sandbox: format!("sb-{i:012x}"),
                outcome: if i % 10 == 0 { Outcome::Denied } else { Outcome::Succeeded },
                code: if i % 10 == 0 { "PERMISSION_DENIED".into() } else { "OK".into() },
                reason: "official-none OFFICIAL sandpit/base:local until 2026-11-26T17:00:00Z".into(),
                source: "127.0.0.1:50000".into(),
            })
            .await
            .expect("append");
    }
    let append = started.elapsed();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(dir.path().join("sandpit.db-wal")).map(|m| m.len()).unwrap_or(0);

    let started = Instant::now();
    let report = store.verify_audit().await.expect("verify");
    let verify = started.elapsed();
    assert!(report.ok, "{report:?}");
    drop(store);

    let started = Instant::now();
    let offline = SqliteStore::verify_file(&path).expect("verify file");
    let verify_offline = started.elapsed();
    assert!(offline.ok && offline.records == n);

    println!("audit log benchmark, {n} records");
    println!(
        "  append:          {:>8.2} s  ({:.0} records/s, {:.1} us/record, one transaction each)",
        append.as_secs_f64(),
        n as f64 / append.as_secs_f64(),
        append.as_secs_f64() * 1e6 / n as f64
    );
    println!("  verify (daemon): {:>8.3} s", verify.as_secs_f64());
    println!("  verify (file):   {:>8.3} s", verify_offline.as_secs_f64());
    println!("  store size:      {:>8.1} MiB", size as f64 / (1 << 20) as f64);
}
