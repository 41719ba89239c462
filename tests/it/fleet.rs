//! Several daemons on one PostgreSQL database: each serves any call, a
//! create on one is seen (and watched) on the others, racing decisions and
//! quotas hold across them, one daemon at a time runs expiry and the rest
//! under the lease, and when its holder is killed another expires what falls
//! due within the lease time of the deadline. The audit chain verifies after
//! all of it. The database is a throwaway server from Debian's `postgresql`
//! (see `sandpit_store_postgres::test_server`).

use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use sandpit_proto::{self as proto, SandboxEventKind, SandboxState};
use sandpit_store_postgres::test_server;

use crate::support::*;

/// `n` daemons on one new database, sharing what daemons on one host must:
/// the subnet pool and egress port (the firewall names them), and the
/// audit key and checkpoint directory (one signer at a time).
async fn fleet(n: usize, tune: impl Fn(&mut Options)) -> Option<(Vec<Daemon>, tempfile::TempDir)> {
    let url = test_server::database().await?;
    fleet_on(n, |o| {
        o.store_url = url.clone();
        tune(o)
    })
    .await
}

/// As [`fleet`], with `tune` naming the database (`store_url`).
async fn fleet_on(n: usize, tune: impl Fn(&mut Options)) -> Option<(Vec<Daemon>, tempfile::TempDir)> {
    let audit = tempfile::tempdir().unwrap();
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let pool = 230 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 20;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut daemons = Vec::new();
    for _ in 0..n {
        let mut opts =
            Options { network: Some((pool, port)), audit_dir: Some(audit.path().to_path_buf()), ..Options::default() };
        tune(&mut opts);
        daemons.push(Daemon::with(opts).await);
    }
    Some((daemons, audit))
}

async fn on_duty(d: &Daemon) -> bool {
    d.scrape().await.get("sandpit_on_duty", &[]) == 1.0
}

/// The index of the lease holder, once exactly one holds it.
async fn holder(daemons: &[Daemon]) -> usize {
    eventually(Duration::from_secs(15), "exactly one daemon holds the lease", || async {
        let mut held = Vec::new();
        for (i, d) in daemons.iter().enumerate() {
            if on_duty(d).await {
                held.push(i);
            }
        }
        (held.len() == 1).then(|| held[0])
    })
    .await
}

async fn verify(d: &Daemon) -> proto::VerifyAuditLogResponse {
    let mut audit = d.audit(AUDITOR).await;
    audit.verify_audit_log(proto::VerifyAuditLogRequest::default()).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_serve_one_register_and_each_others_sandboxes() {
    let Some((daemons, _audit)) = fleet(2, |_| {}).await else { return };
    let (a, b) = (&daemons[0], &daemons[1]);
    assert_eq!(a.instance(), b.instance(), "one instance id for the fleet's Docker objects");
    let mut on_b = b.client(TEAM_A).await;
    let mut watch = on_b.watch_sandboxes(proto::WatchSandboxesRequest::default()).await.unwrap().into_inner();

    // Created on A: B lists it, reads it and its watchers see it.
    let mut on_a = a.client(TEAM_A).await;
    let sb = create(&mut on_a, &a.exp_a, 300).await;
    let listed = on_b.list_sandboxes(proto::ListSandboxesRequest::default()).await.unwrap().into_inner();
    assert!(listed.sandboxes.iter().any(|s| s.id == sb.id), "A's sandbox listed on B");
    let got = on_b.get_sandbox(proto::GetSandboxRequest { id: sb.id.clone() }).await.unwrap().into_inner();
    assert_eq!((got.container_id.as_str(), state(&got)), (sb.container_id.as_str(), SandboxState::Running));
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(ev)) = watch.next().await {
            if ev.sandbox.as_ref().is_some_and(|s| s.id == sb.id) {
                return SandboxEventKind::try_from(ev.kind).unwrap();
            }
        }
        panic!("the watch ended");
    })
    .await
    .expect("B's watcher sees A's create");
    assert_eq!(seen, SandboxEventKind::Created);

    // B extends and deletes A's sandbox, through the same engine.
    let extended = on_b
        .extend_sandbox(proto::ExtendSandboxRequest { id: sb.id.clone(), ttl: ttl(600) })
        .await
        .unwrap()
        .into_inner();
    assert!(to_system(extended.expires_at.as_ref().unwrap()) > to_system(sb.expires_at.as_ref().unwrap()));
    let deleted = on_b.delete_sandbox(proto::DeleteSandboxRequest { id: sb.id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&deleted), SandboxState::Deleted);
    assert!(!container_exists(&sb.container_id).await);
    let on_a_now = on_a.get_sandbox(proto::GetSandboxRequest { id: sb.id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&on_a_now), SandboxState::Deleted, "A reads what B did");

    // Deletes on B of sandboxes made on A, while A follows the engine's
    // events too (it sees each container die): every delete succeeds.
    let mut made = Vec::new();
    for _ in 0..6 {
        made.push(create(&mut on_a, &a.exp_a, 300).await.id);
    }
    let deletes = made.iter().map(|id| {
        let mut c = on_b.clone();
        let id = id.clone();
        async move { c.delete_sandbox(proto::DeleteSandboxRequest { id }).await }
    });
    for r in futures_util::future::join_all(deletes).await {
        assert_eq!(state(&r.expect("a delete on B of A's sandbox succeeds").into_inner()), SandboxState::Deleted);
    }

    // Experiments registered on either are one register.
    let e = b.experiment(TEAM_B, "OFFICIAL").await;
    let read = a.register(TEAM_B).await.get_experiment(proto::GetExperimentRequest { id: e.clone() }).await;
    assert_eq!(read.unwrap().into_inner().id, e);
    let (va, vb) = (verify(a).await, verify(b).await);
    assert!(va.ok && va.records > 5, "{va:?}");
    assert_eq!((va.records, va.head_hash), (vb.records, vb.head_hash), "one chain");
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_decisions_and_quotas_hold_across_daemons() {
    let tune = |o: &mut Options| o.quotas = "sandboxes_per_team = 3".into();
    let Some((daemons, _audit)) = fleet(2, tune).await else { return };
    let (a, b) = (&daemons[0], &daemons[1]);
    crate::register::race_decisions(a, b).await;

    // Eight creates for one team, four on each daemon, against a quota of 3.
    let creates = (0..8).map(|i| {
        let d = if i % 2 == 0 { a } else { b };
        async move {
            let mut c = d.client(TEAM_A).await;
            c.create_sandbox(create_req(&a.exp_a, 300)).await
        }
    });
    let results = futures_util::future::join_all(creates).await;
    let made: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), tonic::Code::ResourceExhausted, "{r:?}");
    }
    assert_eq!(made.len(), 3, "the team's quota holds across daemons");
    let live = a.client(TEAM_A).await.list_sandboxes(proto::ListSandboxesRequest::default()).await.unwrap();
    assert_eq!(live.into_inner().sandboxes.len(), 3);
    let report = verify(b).await;
    assert!(report.ok, "{report:?}");
}

/// The lease holder is killed with sandboxes due in the next seconds (the
/// first just after the kill, while nobody holds the lease): the other
/// daemon takes the lease and stops each within lease (1 s) + 1 s of its
/// deadline; nothing is expired twice, and the chain verifies.
#[tokio::test(flavor = "multi_thread")]
async fn when_the_lease_holder_dies_another_expires_on_time() {
    // Reconcile seldom: the takeover itself must put the deadlines back.
    let Some((mut daemons, _audit)) = fleet(2, |o| o.reconcile_interval = "60s").await else { return };
    let h = holder(&daemons).await;
    let other = 1 - h;
    // Created on both daemons, due 4 to 8 s from now.
    let mut sandboxes = Vec::new();
    for (i, secs) in [4, 6, 7, 8].into_iter().enumerate() {
        let d = &daemons[if i % 2 == 0 { h } else { other }];
        let mut c = d.client(TEAM_A).await;
        sandboxes.push(create(&mut c, &d.exp_a, secs).await);
    }
    let first = to_system(sandboxes[0].expires_at.as_ref().unwrap());
    tokio::time::sleep(
        first.duration_since(SystemTime::now()).unwrap_or_default().saturating_sub(Duration::from_millis(150)),
    )
    .await;
    let killed = Instant::now();
    daemons[h].kill9();
    for (id, late) in stopped_after_deadlines(&sandboxes).await {
        assert!(late <= Duration::from_secs(2), "{id} stopped {late:?} after its deadline");
    }
    let survivor = &daemons[other];
    assert!(on_duty(survivor).await, "the survivor holds the lease");
    eprintln!("lease holder killed; the survivor took over and expired everything {:?} later", killed.elapsed());
    expired_once_and_chain_verifies(survivor, &sandboxes).await;
    // The checkpoint the survivor signs covers the whole chain.
    let mut audit = survivor.audit(AUDITOR).await;
    let cp = audit.get_checkpoint(proto::GetCheckpointRequest::default()).await.unwrap().into_inner();
    assert_eq!(cp.size, verify(survivor).await.records);
}

/// While nobody holds the lease (the test holds its lock itself, after the
/// holder is killed), nothing expires; the moment a daemon takes it, what
/// fell due meanwhile is expired at once.
#[tokio::test(flavor = "multi_thread")]
async fn an_expiry_due_while_nobody_holds_the_lease_runs_when_one_takes_it() {
    let Some(url) = test_server::database().await else { return };
    let tune = |o: &mut Options| {
        o.store_url = url.clone();
        o.reconcile_interval = "60s";
    };
    let Some((mut daemons, _audit)) = fleet_on(2, tune).await else { return };
    let h = holder(&daemons).await;
    let other = 1 - h;
    let mut c = daemons[other].client(TEAM_A).await;
    let sb = create(&mut c, &daemons[other].exp_a, 2).await;
    // Queue for the lease behind the holder: when it dies, the test has it.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    let conn = tokio::spawn(connection);
    let waiting = tokio::spawn(async move {
        client.execute("SELECT pg_advisory_lock(1396788804, 2)", &[]).await.unwrap();
        client
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemons[h].kill9();
    let client =
        tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("the test takes the lease").unwrap();
    let deadline = to_system(sb.expires_at.as_ref().unwrap());
    tokio::time::sleep(deadline.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_secs(2)).await;
    let running = docker().await.inspect_container(&sb.container_id, None).await.ok().and_then(|c| c.state?.running);
    assert_eq!(running, Some(true), "nobody on duty: nothing expires (the container is there and running)");
    assert!(!on_duty(&daemons[other]).await);
    let released = SystemTime::now();
    drop(client);
    conn.abort();
    let stopped = stopped_after_deadlines(std::slice::from_ref(&sb)).await;
    let after_release = (deadline + stopped[0].1).duration_since(released).unwrap_or_default();
    assert!(after_release <= Duration::from_secs(2), "expired {after_release:?} after the lease was free");
    expired_once_and_chain_verifies(&daemons[other], std::slice::from_ref(&sb)).await;
}

/// When each sandbox's processes stopped, after its deadline.
async fn stopped_after_deadlines(sandboxes: &[proto::Sandbox]) -> Vec<(String, Duration)> {
    let stops = sandboxes.iter().map(|sb| async move {
        let deadline = to_system(sb.expires_at.as_ref().unwrap());
        let stopped = eventually(Duration::from_secs(20), "the sandbox's processes stopped", || {
            let cid = sb.container_id.clone();
            async move {
                let running = docker().await.inspect_container(&cid, None).await.ok().and_then(|c| c.state?.running);
                (running != Some(true)).then(SystemTime::now)
            }
        })
        .await;
        assert!(stopped + Duration::from_millis(50) >= deadline, "{} stopped before its deadline", sb.id);
        (sb.id.clone(), stopped.duration_since(deadline).unwrap_or_default())
    });
    futures_util::future::join_all(stops).await
}

/// Each recorded expired, with one expiry audit record; the chain verifies.
async fn expired_once_and_chain_verifies(d: &Daemon, sandboxes: &[proto::Sandbox]) {
    let c = d.client(TEAM_A).await;
    for sb in sandboxes {
        let now = eventually(Duration::from_secs(10), "recorded expired", || {
            let mut c = c.clone();
            let id = sb.id.clone();
            async move {
                let r = c.get_sandbox(proto::GetSandboxRequest { id }).await.unwrap().into_inner();
                (state(&r) == SandboxState::Expired).then_some(r)
            }
        })
        .await;
        assert!(now.ended_at.is_some());
    }
    let mut audit = d.audit(AUDITOR).await;
    for sb in sandboxes {
        let q = proto::QueryAuditLogRequest { sandbox: sb.id.clone(), page_size: 100, ..Default::default() };
        let events = audit.query_audit_log(q).await.unwrap().into_inner().events;
        let expired = events.iter().filter(|e| e.action == "expire" && e.outcome == "succeeded").count();
        assert_eq!(expired, 1, "{}: {:?}", sb.id, events.iter().map(|e| &e.action).collect::<Vec<_>>());
    }
    let report = verify(d).await;
    assert!(report.ok, "{report:?}");
}

/// Isolated sandboxes made on the lease holder, then deleted on the other
/// daemon: their host rules go with them, and none comes back when the
/// holder, which made them, repairs host rules (it stops keeping the rules
/// of a sandbox another daemon tore down).
#[tokio::test(flavor = "multi_thread")]
async fn host_rules_of_sandboxes_deleted_on_another_daemon_do_not_come_back() {
    let isolated = crate::network::profile("isolated", "OFFICIAL", "");
    let Some((daemons, _audit)) = fleet(2, |o| o.profiles = vec![("fleet-isolated".into(), isolated.clone())]).await
    else {
        return;
    };
    let h = holder(&daemons).await;
    let (maker, deleter) = (&daemons[h], &daemons[1 - h]);
    let mut c = maker.client(TEAM_A).await;
    let mut made = Vec::new();
    for _ in 0..3 {
        let req = proto::CreateSandboxRequest { profile: "fleet-isolated".into(), ..create_req(&maker.exp_a, 300) };
        made.push(c.create_sandbox(req).await.unwrap().into_inner());
    }
    let mut subnets = Vec::new();
    for sb in &made {
        let net = docker().await.inspect_network(&format!("sandpit-{}", sb.id), None).await.unwrap();
        let ipam = net.ipam.and_then(|i| i.config).unwrap_or_default();
        subnets.push(ipam.first().and_then(|c| c.subnet.clone()).expect("the sandbox network's subnet"));
    }
    let hooked = |subnet: &str| {
        let out = std::process::Command::new("iptables").args(["-S", "INPUT"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.contains(&format!("-s {subnet} ")) && l.contains("SANDPIT"))
    };
    assert!(subnets.iter().all(|s| hooked(s)), "each isolated sandbox is fenced off the host: {subnets:?}");
    let mut d = deleter.client(TEAM_A).await;
    for sb in &made {
        d.delete_sandbox(proto::DeleteSandboxRequest { id: sb.id.clone() }).await.unwrap();
    }
    // The holder sees its chains' hooks change and repairs; several
    // reconcile passes (every 2 s here) later, still gone.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for s in &subnets {
        assert!(!hooked(s), "the host rules of {s} came back after its sandbox was deleted");
    }
}

/// The lease holder fills the warm pool; the other daemon's creates claim
/// from it (nothing is provisioned for them, and no sandbox twice).
#[tokio::test(flavor = "multi_thread")]
async fn the_other_daemon_claims_the_holders_warm_sandboxes() {
    use crate::pools::{pool, wait_warm, warm_profile};
    let Some((daemons, _audit)) = fleet(2, |o| o.profiles = vec![("test-warm".into(), warm_profile(2))]).await else {
        return;
    };
    let h = holder(&daemons).await;
    let (holder_d, other) = (&daemons[h], &daemons[1 - h]);
    wait_warm(holder_d, 2).await;
    let warm = wait_warm(other, 2).await;
    assert_eq!(warm.claims, 0);
    let mut op = holder_d.client(OPERATOR).await;
    let listed = op.list_sandboxes(proto::ListSandboxesRequest::default()).await.unwrap().into_inner().sandboxes;
    let warm_ids: Vec<String> =
        listed.iter().filter(|s| state(s) == SandboxState::Warm).map(|s| s.id.clone()).collect();
    assert_eq!(warm_ids.len(), 2);
    let mut c = other.client(TEAM_A).await;
    let mut claimed = Vec::new();
    for _ in 0..2 {
        let req = proto::CreateSandboxRequest { profile: "test-warm".into(), ..create_req(&other.exp_a, 120) };
        claimed.push(c.create_sandbox(req).await.unwrap().into_inner().id);
    }
    assert!(
        claimed.iter().all(|id| warm_ids.contains(id)),
        "both claimed from the holder's pool: {claimed:?} {warm_ids:?}"
    );
    assert_ne!(claimed[0], claimed[1]);
    assert_eq!(pool(other).await.claims, 2);
    // The holder refills.
    wait_warm(holder_d, 2).await;
}

/// A SQLite store moved into PostgreSQL: a daemon on PostgreSQL takes over
/// its sandboxes, register and audit chain (verifying against the
/// checkpoints the SQLite daemon signed).
#[tokio::test(flavor = "multi_thread")]
async fn a_sqlite_store_moves_into_postgres() {
    let Some(url) = test_server::database().await else { return };
    let mut d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 300).await;
    let gone = create(&mut c, &d.exp_a, 300).await;
    c.delete_sandbox(proto::DeleteSandboxRequest { id: gone.id.clone() }).await.unwrap();
    let before = verify(&d).await;
    assert!(d.terminate().success());
    let instance = d.instance().unwrap();

    let db = d.data_dir().join("sandpit.db");
    let migrate = |from: String| {
        let config = d.dir.path().join("sandpit.toml");
        std::process::Command::new(env!("CARGO_BIN_EXE_sandpitd"))
            .arg("--config")
            .arg(config)
            .arg("--migrate-from")
            .arg(from)
            .env("SANDPIT__STORE__URL", &url)
            .output()
            .unwrap()
    };
    let out = migrate(format!("sqlite:{}", db.display()));
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("2 sandboxes") && said.contains(&format!("{} audit records", before.records)), "{said}");
    assert!(said.contains(&before.head_hash), "{said}");
    // Into a database that holds data already: refused, nothing changed.
    let again = migrate(format!("sqlite:{}", db.display()));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("empty"), "{:?}", again);

    // The same daemon's configuration on PostgreSQL: it adopts the sandbox.
    let config = std::fs::read_to_string(d.dir.path().join("sandpit.toml")).unwrap();
    let db_moved = db.with_extension("db.moved");
    std::fs::rename(&db, &db_moved).unwrap();
    std::fs::write(d.dir.path().join("sandpit.toml"), format!("{config}\n[store]\nurl = \"{url}\"\n")).unwrap();
    d.spawn().await;
    assert_eq!(d.instance().as_deref(), Some(instance.as_str()), "the moved store keeps its instance id");
    let mut c = d.client(TEAM_A).await;
    let now = c.get_sandbox(proto::GetSandboxRequest { id: sb.id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&now), SandboxState::Running);
    let ended = c.get_sandbox(proto::GetSandboxRequest { id: gone.id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&ended), SandboxState::Deleted);
    let after = verify(&d).await;
    assert!(after.ok && after.records >= before.records, "{after:?}");
    assert!(d.log().contains("audit chain verified at start"), "verified against its checkpoints at start");
    c.delete_sandbox(proto::DeleteSandboxRequest { id: sb.id.clone() }).await.unwrap();

    // The CLI verifies the database directly (as for a restored backup),
    // against the newest checkpoint, checking its signature with the .pub.
    let signed = d.data_dir().join("checkpoints").join("latest");
    let public = d.data_dir().join("audit-signing.key.pub");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandpit"))
        .args(["audit", "verify", "--store-url", &url, "--checkpoint"])
        .arg(&signed)
        .arg("--public-key")
        .arg(&public)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("audit log verified"), "{said}");
    // Put the file back so the harness finds the instance id for cleanup.
    std::fs::rename(&db_moved, &db).unwrap();
}
