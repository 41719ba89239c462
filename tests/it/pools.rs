//! Warm pools: a create matching a pool is a claim of a sandbox made ready in
//! the background; never handed out twice, refilled, drained on reload.

use std::time::Duration;

use sandpit_proto::{self as proto, SandboxState};

use crate::support::*;

pub fn warm_profile(size: u32) -> String {
    format!(
        "max_classification = \"OFFICIAL\"\nimages = [\"{{image}}\", \"sandpit-test/absent:never\"]\ncommand = [\"sleep\", \"infinity\"]\nwarm_pool = {size}\n"
    )
}

pub async fn pool(d: &Daemon) -> proto::PoolStatus {
    let mut p = d.profile_client(OPERATOR).await;
    let pools = p.list_pools(proto::ListPoolsRequest {}).await.unwrap().into_inner().pools;
    pools.into_iter().find(|p| p.profile == "test-warm").unwrap_or_default()
}

pub async fn wait_warm(d: &Daemon, n: u32) -> proto::PoolStatus {
    eventually(Duration::from_secs(20), "pool filled", || async move {
        let p = pool(d).await;
        (p.warm == n).then_some(p)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn creates_claim_warm_sandboxes_and_pools_refill_and_drain() {
    let d = Daemon::with(Options { profiles: vec![("test-warm".into(), warm_profile(2))], ..Default::default() }).await;
    let status = wait_warm(&d, 2).await;
    assert_eq!((status.target, status.claims, status.misses), (2, 0, 0));
    let m = d.scrape().await;
    assert_eq!(m.get("sandpit_warm_pool_target", &[("profile", "test-warm")]), 2.0);
    assert_eq!(m.get("sandpit_warm_pool_ready", &[("profile", "test-warm")]), 2.0);
    assert_eq!(m.get("sandpit_sandboxes", &[("state", "warm"), ("profile", "test-warm")]), 2.0);

    // Operators see the warm sandboxes; requesters never do.
    let mut op = d.client(OPERATOR).await;
    let warm: Vec<proto::Sandbox> = op
        .list_sandboxes(proto::ListSandboxesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sandboxes
        .into_iter()
        .filter(|s| state(s) == SandboxState::Warm)
        .collect();
    assert_eq!(warm.len(), 2);
    assert!(warm.iter().all(|s| s.owner.is_empty() && s.experiment.is_empty()));
    let mut a = d.client(TEAM_A).await;
    assert!(a.list_sandboxes(proto::ListSandboxesRequest::default()).await.unwrap().into_inner().sandboxes.is_empty());

    // Two claims hand out the two warm sandboxes, each once.
    let req = || proto::CreateSandboxRequest { profile: "test-warm".into(), ..create_req(&d.exp_a, 120) };
    let (mut a1, mut a2) = (a.clone(), a.clone());
    let (one, two) = tokio::join!(a1.create_sandbox(req()), a2.create_sandbox(req()));
    let (one, two) = (one.unwrap().into_inner(), two.unwrap().into_inner());
    assert_ne!(one.id, two.id);
    for sb in [&one, &two] {
        assert!(
            warm.iter().any(|w| w.id == sb.id && w.container_id == sb.container_id),
            "{} came from the pool",
            sb.id
        );
        assert_eq!(
            (state(sb), sb.owner.as_str(), sb.experiment.as_str()),
            (SandboxState::Running, "alice", d.exp_a.as_str())
        );
        let ttl = to_system(sb.expires_at.as_ref().unwrap()).duration_since(std::time::SystemTime::now()).unwrap();
        assert!(ttl > Duration::from_secs(110) && ttl <= Duration::from_secs(120), "expiry from the claim: {ttl:?}");
    }
    let (out, _, _) = crate::lifecycle::exec(&mut a, &one.id, &["id", "-u"]).await;
    assert_eq!(out, "65534\n");

    // The pool refills in the background; claims and misses are counted.
    let status = wait_warm(&d, 2).await;
    assert_eq!(status.claims, 2);
    // Another allowed image cannot use the pool: a miss, created cold (and here
    // failing, as that image is not on the engine).
    let other_image = proto::CreateSandboxRequest { image: "sandpit-test/absent:never".into(), ..req() };
    assert_eq!(a.create_sandbox(other_image).await.unwrap_err().code(), tonic::Code::FailedPrecondition);
    assert_eq!(pool(&d).await.misses, 1);
    let m = d.scrape().await;
    assert_eq!(m.get("sandpit_warm_pool_claims_total", &[("profile", "test-warm")]), 2.0);
    assert_eq!(m.get("sandpit_warm_pool_misses_total", &[("profile", "test-warm")]), 1.0);
    assert_eq!(m.get("sandpit_provisioning_seconds_count", &[("source", "warm")]), 2.0);
    let mut fresh = op.list_sandboxes(proto::ListSandboxesRequest::default()).await.unwrap().into_inner().sandboxes;
    fresh.retain(|s| state(s) == SandboxState::Warm);
    assert_eq!(fresh.len(), 2);
    assert!(fresh.iter().all(|w| w.id != one.id && w.id != two.id), "claimed sandboxes never return to the pool");

    // The claim is audited as the create it is.
    let q = proto::QueryAuditLogRequest { sandbox: one.id.clone(), ..Default::default() };
    let events = d.audit(AUDITOR).await.query_audit_log(q).await.unwrap().into_inner().events;
    let actions: Vec<&str> = events.iter().map(|e| e.action.rsplit('/').next().unwrap()).collect();
    assert_eq!(actions, ["pool-fill", "CreateSandbox", "Exec", "exec-end"]);
    assert!(events[1].reason.contains("warm pool") && events[1].actor == "alice");

    // A reload that removes the pool drains it; the claimed sandboxes stay.
    std::fs::write(d.profiles_dir().join("test-warm.toml"), warm_profile(0).replace("{image}", image())).unwrap();
    let r =
        d.profile_client(OPERATOR).await.reload_profiles(proto::ReloadProfilesRequest {}).await.unwrap().into_inner();
    assert!(r.applied);
    eventually(Duration::from_secs(20), "pool drained", || {
        let mut op = op.clone();
        async move {
            let list = op.list_sandboxes(proto::ListSandboxesRequest::default()).await.unwrap().into_inner().sandboxes;
            list.iter().all(|s| state(s) != SandboxState::Warm).then_some(())
        }
    })
    .await;
    for w in &fresh {
        assert!(!container_exists(&w.container_id).await, "drained warm container removed");
    }
    assert!(container_exists(&one.container_id).await && container_exists(&two.container_id).await);
}

/// A pool of an `isolated` profile holds sandboxes whose network and host
/// rules were made with them: a claim hands one over as it is (same
/// container, address and network, made before the claim), and it is as
/// cut off as a cold one: it reaches neither the host nor anything else.
#[tokio::test(flavor = "multi_thread")]
async fn a_pool_of_isolated_sandboxes_has_their_networks_made_ahead() {
    use crate::network::{greeter, host_addresses, profile, reaches};
    let body = profile("isolated", "OFFICIAL", "warm_pool = 1");
    let d = Daemon::with(Options { profiles: vec![("test-warm".into(), body)], ..Default::default() }).await;
    wait_warm(&d, 1).await;
    let mut op = d.client(OPERATOR).await;
    let list = op.list_sandboxes(proto::ListSandboxesRequest::default()).await.unwrap().into_inner().sandboxes;
    let warm = list.into_iter().find(|s| state(s) == SandboxState::Warm).expect("a warm sandbox");
    assert!(!warm.address.is_empty(), "its network is made with it: {warm:?}");
    let docker = docker().await;
    let inspect = docker.inspect_container(&warm.container_id, None).await.unwrap();
    let networks: Vec<String> =
        inspect.network_settings.and_then(|n| n.networks).map(|n| n.into_keys().collect()).unwrap_or_default();
    assert_eq!(networks.len(), 1, "{networks:?}");

    let mut a = d.client(TEAM_A).await;
    let req = proto::CreateSandboxRequest { profile: "test-warm".into(), ..create_req(&d.exp_a, 120) };
    let sb = a.create_sandbox(req).await.unwrap().into_inner();
    assert_eq!(
        (sb.id.as_str(), sb.container_id.as_str(), sb.address.as_str()),
        (warm.id.as_str(), warm.container_id.as_str(), warm.address.as_str())
    );
    assert_eq!(pool(&d).await.claims, 1);
    let inspect = docker.inspect_container(&sb.container_id, None).await.unwrap();
    let now: Vec<String> =
        inspect.network_settings.and_then(|n| n.networks).map(|n| n.into_keys().collect()).unwrap_or_default();
    assert_eq!(now, networks, "the same network, made before the claim");

    let port = greeter().await;
    for host in host_addresses() {
        assert!(!reaches(&mut a, &sb.id, &host, port).await, "a claimed isolated sandbox reaches the host at {host}");
    }
}
