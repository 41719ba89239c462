//! The store contract on PostgreSQL, two stores (two daemons) on one
//! database, the lease and the notices, and tampering with the tables.

use std::sync::Arc;
use std::time::Duration;

use sandpit_core::sandbox::EventKind;
use sandpit_core::store::contract::{entry, experiment, record};
use sandpit_core::store::{Notice, Store, Versioned};

use super::*;

fn settings(url: &str) -> Settings {
    Settings { lease_retry: Duration::from_millis(100), ..Settings::new(url) }
}

async fn open() -> Option<(Arc<dyn Store>, ())> {
    let url = test_server::database().await?;
    Some((Arc::new(PostgresStore::open(&settings(&url)).await.unwrap()), ()))
}

sandpit_core::store_contract_tests!(open);

/// Two stores on one database, as two daemons have.
async fn two() -> Option<(String, PostgresStore, PostgresStore)> {
    let url = test_server::database().await?;
    let set = settings(&url);
    let (a, b) = tokio::join!(PostgresStore::open(&set), PostgresStore::open(&set));
    Some((url, a.unwrap(), b.unwrap()))
}

async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Waits up to `within` for `f` to hold.
async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_records_ids_and_one_chain() {
    let Some((_url, a, b)) = two().await else { return };
    assert_eq!(a.instance_id().await.unwrap(), b.instance_id().await.unwrap(), "one id for the fleet");
    a.insert_experiment(&experiment("exp-1", "t"), Some(entry("a"))).await.unwrap();
    b.insert_sandbox(&record("sb-1", "t"), Some(entry("b"))).await.unwrap();
    assert_eq!(a.get("sb-1").await.unwrap().unwrap().version, 1, "written on one, read on the other");
    // Racing decisions from the two: one wins, the other is stale.
    let read = a.get_experiment("exp-1").await.unwrap().unwrap();
    let approve =
        sandpit_core::register::Experiment { status: sandpit_core::register::Status::Approved, ..read.clone() };
    let close = sandpit_core::register::Experiment { status: sandpit_core::register::Status::Closed, ..read };
    let (x, y) =
        tokio::join!(a.update_experiment(&approve, entry("approver")), b.update_experiment(&close, entry("closer")));
    let written = [&x, &y].iter().filter(|r| matches!(r, Ok(Versioned::Written(_)))).count();
    let stale = [&x, &y].iter().filter(|r| matches!(r, Ok(Versioned::Stale(Some(_))))).count();
    assert_eq!((written, stale), (1, 1), "{x:?} {y:?}");
    for i in 0..20 {
        let s = if i % 2 == 0 { &a } else { &b };
        s.append_audit(entry(&format!("e{i}"))).await.unwrap();
    }
    let report = b.verify_audit().await.unwrap();
    assert!(report.ok && report.records == 23, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_store_holds_the_lease_and_another_takes_it_when_it_goes() {
    let Some((_url, a, b)) = two().await else { return };
    let (la, lb) = (a.shared().unwrap().lease(), b.shared().unwrap().lease());
    assert!(eventually(Duration::from_secs(5), || *la.borrow() || *lb.borrow()).await, "someone takes it");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(*la.borrow() ^ *lb.borrow(), "exactly one holds it");
    let (holder, other, other_lease) = if *la.borrow() { (a, b, lb) } else { (b, a, la) };
    drop(holder);
    assert!(eventually(Duration::from_secs(3), || *other_lease.borrow()).await, "the other takes it over");
    drop(other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_reach_the_other_daemons_and_not_the_sender() {
    let Some((_url, a, b)) = two().await else { return };
    let (sa, sb) = (a.shared().unwrap(), b.shared().unwrap());
    let (mut on_a, mut on_b) = (sa.notices(), sb.notices());
    // The listeners are up once each connection has had a lease attempt.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = Notice { kind: EventKind::Created, sandbox: "sb-1".into(), version: 1, message: "m".repeat(10_000) };
    sa.publish(&n).await;
    let got = tokio::time::timeout(Duration::from_secs(5), on_b.recv()).await.expect("in time").unwrap();
    assert_eq!((got.kind, got.sandbox.as_str(), got.version), (EventKind::Created, "sb-1", 1));
    assert_eq!(got.message.len(), 2048, "cut to fit NOTIFY");
    assert!(tokio::time::timeout(Duration::from_millis(300), on_a.recv()).await.is_err(), "not its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_the_tables_is_detected() {
    let Some(url) = test_server::database().await else { return };
    let s = PostgresStore::open(&settings(&url)).await.unwrap();
    for i in 0..10 {
        s.append_audit(entry(&format!("a{i}"))).await.unwrap();
    }
    let h8 = s.audit_hash_at(8).await.unwrap().unwrap();
    let db = raw(&url).await;
    db.execute("UPDATE audit SET reason = 'edited' WHERE seq = 3", &[]).await.unwrap();
    let r = s.verify_audit().await.unwrap();
    assert_eq!((r.ok, r.first_bad_seq), (false, 3), "{r:?}");
    db.execute("UPDATE audit SET reason = '' WHERE seq = 3", &[]).await.unwrap();
    assert!(s.verify_audit().await.unwrap().ok);
    // Truncated with the head moved back: consistent with itself, not with the checkpoint.
    db.batch_execute(
        "DELETE FROM audit WHERE seq > 5; UPDATE audit_head SET seq = 5, hash = (SELECT hash FROM audit WHERE seq = 5)",
    )
    .await
    .unwrap();
    assert!(s.verify_audit().await.unwrap().ok);
    let r = s.verify_audit_against((8, h8)).await.unwrap();
    assert!(!r.ok && r.reason.contains("missing"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let Some(url) = test_server::database().await else { return };
    let set = settings(&url);
    let opened = futures_util::future::join_all((0..4).map(|_| PostgresStore::open(&set))).await;
    assert!(
        opened.iter().all(Result::is_ok),
        "{:?}",
        opened.iter().filter_map(|r| r.as_ref().err()).collect::<Vec<_>>()
    );
    raw(&url).await.execute("UPDATE schema_version SET version = 99", &[]).await.unwrap();
    let refused = PostgresStore::open(&settings(&url)).await.err().expect("refused");
    assert!(refused.to_string().contains("newer than this daemon"), "{refused}");
}

#[tokio::test]
async fn a_bad_url_or_unreachable_database_says_so_without_the_password() {
    let e = PostgresStore::open(&Settings::new("postgres://u:secret@127.0.0.1:1/db")).await.err().expect("unreachable");
    let text = e.to_string();
    assert!(text.contains("cannot connect") && text.contains("u:***@127.0.0.1") && !text.contains("secret"), "{text}");
    let e = PostgresStore::open(&Settings::new("mysql:// nonsense")).await.err().expect("invalid");
    assert!(e.to_string().contains("store.url"), "{e}");
    let tls = Settings {
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..Settings::new("postgres://u@127.0.0.1:1/db?sslmode=require")
    };
    let e = PostgresStore::open(&tls).await.err().expect("no CA");
    assert!(e.to_string().contains("store.ca_file /nonexistent/ca.pem"), "{e}");
}

/// `sslmode=require`: TLS, the server's certificate verified against
/// `ca_file` and its name; another CA's certificate is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_when_the_url_requires_it_verified_against_the_ca() {
    let Some(url) = test_server::database().await else { return };
    let Some(ca) = test_server::ca_file() else { return };
    let tls_url = format!("{}?sslmode=require", url.replace("127.0.0.1", "localhost"));
    let s = PostgresStore::open(&Settings { ca_file: Some(ca.clone()), ..settings(&tls_url) }).await.unwrap();
    s.append_audit(entry("over TLS")).await.unwrap();
    let ssl = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let row = s.client().await.unwrap().query_one(ssl, &[]).await.unwrap();
    assert!(row.get::<_, bool>(0), "the pool's connections are TLS");
    // Without sslmode=require: in the clear.
    let plain = PostgresStore::open(&settings(&url)).await.unwrap();
    let row = plain.client().await.unwrap().query_one(ssl, &[]).await.unwrap();
    assert!(!row.get::<_, bool>(0));
    // A CA that did not sign the server's certificate: refused.
    let dir = tempfile::tempdir().unwrap();
    let mut other = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let pem = other.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem();
    std::fs::write(dir.path().join("other.crt"), pem).unwrap();
    let wrong = Settings { ca_file: Some(dir.path().join("other.crt")), ..settings(&tls_url) };
    let refused = PostgresStore::open(&wrong).await.err().expect("refused");
    assert!(refused.to_string().contains("cannot connect"), "{refused}");
}
