//! Fault injection: the daemon reaches Docker through a [`FaultProxy`] that
//! delays, fails, cuts and loses requests, or takes Docker away for a while.
//! Whatever happens, the records and Docker end up agreeing: every
//! acknowledged create is running, every other one is a recorded failure,
//! and no container or network is left that no live record owns.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptionsBuilder, ListNetworksOptionsBuilder};
use futures_util::StreamExt;
use sandpit_proto::{self as proto, SandboxState};
use tokio::task::JoinSet;

use crate::support::*;

/// A daemon whose Docker is behind a fault proxy.
struct Rig {
    /// Dropped first (fields drop in this order): requests it still holds
    /// back are cut, not let through to Docker after the daemon's cleanup
    /// (they would leave containers no cleanup sees).
    proxy: FaultProxy,
    d: Daemon,
    _dir: tempfile::TempDir,
}

async fn rig(opts: Options) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(&dir.path().join("docker.sock"));
    let d = Daemon::with(Options { docker_host: Some(proxy.docker_host()), ..opts }).await;
    Rig { d, proxy, _dir: dir }
}

fn list_all() -> proto::ListSandboxesRequest {
    proto::ListSandboxesRequest { include_ended: true, ..Default::default() }
}

/// Every record of the daemon, if Docker agrees with them: nothing
/// provisioning; each live record's container exists and carries its id;
/// each ended record has no container; each container of the daemon is
/// exactly one live record's; each network of the daemon is a live record's.
async fn agreement(d: &Daemon) -> Result<Vec<proto::Sandbox>, String> {
    let mut c = d.client(OPERATOR).await;
    let records = c.list_sandboxes(list_all()).await.map_err(|e| e.to_string())?.into_inner().sandboxes;
    let live = |s: &proto::Sandbox| matches!(state(s), SandboxState::Running | SandboxState::Exited);
    let by_id: HashMap<&str, &proto::Sandbox> = records.iter().map(|r| (r.id.as_str(), r)).collect();
    let containers = d.containers().await;
    let mut problems = Vec::new();
    let mut owners: HashMap<String, Vec<String>> = HashMap::new();
    for c in &containers {
        let id = c.id.clone().unwrap_or_default();
        let sandbox = c.labels.as_ref().and_then(|l| l.get("sandpit.sandbox")).cloned().unwrap_or_default();
        match by_id.get(sandbox.as_str()) {
            Some(r) if live(r) && r.container_id == id => {}
            Some(r) => problems.push(format!("container {id} of {sandbox} ({:?}) is not its record's", state(r))),
            None => problems.push(format!("container {id} labelled '{sandbox}' has no record")),
        }
        owners.entry(sandbox).or_default().push(id);
    }
    for (sandbox, ids) in &owners {
        if ids.len() > 1 {
            problems.push(format!("{sandbox} has {} containers", ids.len()));
        }
    }
    for r in &records {
        match state(r) {
            SandboxState::Provisioning => problems.push(format!("{} still provisioning", r.id)),
            _ if live(r) && !owners.contains_key(&r.id) => problems.push(format!("{} is live without container", r.id)),
            _ if !live(r) && owners.contains_key(&r.id) => {
                problems.push(format!("{} is {:?} but has a container", r.id, state(r)))
            }
            _ => {}
        }
    }
    let filters = HashMap::from([("label".to_string(), vec![format!("{TEST_RUN_LABEL}={}", d.run)])]);
    let opts = ListNetworksOptionsBuilder::default().filters(&filters).build();
    for n in docker().await.list_networks(Some(opts)).await.map_err(|e| e.to_string())? {
        let sandbox = n.labels.unwrap_or_default().remove("sandpit.sandbox").unwrap_or_default();
        if !by_id.get(sandbox.as_str()).is_some_and(|r| live(r)) {
            problems.push(format!("network {} of '{sandbox}' has no live sandbox", n.name.unwrap_or_default()));
        }
    }
    if problems.is_empty() {
        Ok(records)
    } else {
        Err(problems.join("; "))
    }
}

/// Waits until the records and Docker agree; their records.
async fn agreed(d: &Daemon, limit: Duration) -> Vec<proto::Sandbox> {
    let deadline = Instant::now() + limit;
    loop {
        match agreement(d).await {
            Ok(records) => return records,
            Err(e) if Instant::now() >= deadline => panic!("records and Docker still disagree after {limit:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

async fn record(c: &mut Client, id: &str) -> proto::Sandbox {
    c.get_sandbox(proto::GetSandboxRequest { id: id.into() }).await.expect("get").into_inner()
}

/// The only record of the daemon, once it is in `want` with no container left.
async fn ends_as(d: &Daemon, want: SandboxState, limit: Duration) -> proto::Sandbox {
    let records = eventually(limit, &format!("the sandbox {want:?} with nothing left in Docker"), || async {
        let records = agreement(d).await.ok()?;
        records.iter().all(|r| state(r) == want).then_some(records)
    })
    .await;
    assert_eq!(records.len(), 1, "{records:?}");
    records.into_iter().next().unwrap()
}

/// The proxy itself, against Docker directly: answers pass through on
/// kept-alive connections, each fault does what it says, hijacked exec
/// streams work, and an outage refuses and recovers.
#[tokio::test(flavor = "multi_thread")]
async fn the_fault_proxy_forwards_and_injects() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(&dir.path().join("docker.sock"));
    let docker = bollard::Docker::connect_with_host(&proxy.docker_host()).unwrap().negotiate_version().await.unwrap();
    let run = unique("proxy-test");
    let _cleanup = RemoveOnDrop(format!("{TEST_RUN_LABEL}={run}"));
    for _ in 0..3 {
        docker.ping().await.expect("ping through the proxy");
    }

    let fail = proxy.inject(Fault::fail("GET", "/_ping").times(1));
    match docker.ping().await {
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 500, message }) => {
            assert_eq!(message, "injected fault")
        }
        other => panic!("expected the injected 500, got {other:?}"),
    }
    docker.ping().await.expect("only the next match fails");
    assert_eq!(proxy.hits(fail), 1);

    proxy.inject(Fault::drop("GET", "/_ping").times(1));
    assert!(docker.ping().await.is_err(), "a dropped connection fails the call");
    docker.ping().await.expect("the next connection works");

    proxy.inject(Fault::delay("GET", "/_ping", Duration::from_millis(300)).times(1));
    let t = Instant::now();
    docker.ping().await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300), "{:?}", t.elapsed());

    // A lost answer: Docker did it, the caller cannot know.
    let name = unique("proxy-lost");
    let body = ContainerCreateBody {
        image: Some(image().to_string()),
        cmd: Some(vec!["sleep".into(), "300".into()]),
        labels: Some(HashMap::from([(TEST_RUN_LABEL.to_string(), run.clone())])),
        host_config: Some(bollard::models::HostConfig { network_mode: Some("none".into()), ..Default::default() }),
        ..Default::default()
    };
    proxy.inject(Fault::lose("POST", "/containers/create").times(1));
    let opts = CreateContainerOptionsBuilder::default().name(&name).build();
    assert!(docker.create_container(Some(opts), body.clone()).await.is_err());
    assert!(container_exists(&name).await, "Docker acted on the request whose answer was lost");

    // Exec hijacks its connection: copied raw from the upgrade on.
    docker.start_container(&name, None).await.unwrap();
    let exec = bollard::exec::CreateExecOptions::<String> {
        cmd: Some(vec!["echo".into(), "through the proxy".into()]),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let exec = docker.create_exec(&name, exec).await.unwrap();
    let bollard::exec::StartExecResults::Attached { mut output, .. } = docker.start_exec(&exec.id, None).await.unwrap()
    else {
        panic!("exec detached")
    };
    let mut out = Vec::new();
    while let Some(chunk) = output.next().await {
        out.extend_from_slice(&chunk.unwrap().into_bytes());
    }
    assert_eq!(String::from_utf8_lossy(&out), "through the proxy\n");

    proxy.down();
    assert!(docker.ping().await.is_err(), "refused while down");
    proxy.up();
    docker.ping().await.expect("back up");
}

struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        remove_labelled(&self.0);
    }
}

/// Creates fail at every step Docker can fail them (errors, cut connections,
/// answers lost after Docker acted, slow answers, failing cleanups): each
/// acknowledged create is running, each other one is a recorded failure, and
/// nothing is left in Docker that no running record owns.
#[tokio::test(flavor = "multi_thread")]
async fn every_acknowledged_create_runs_and_every_other_is_a_recorded_failure() {
    const CREATES: usize = 16;
    let r = rig(Options { orphan_grace: "3s", reconcile_interval: "1s", ..Default::default() }).await;
    let p = &r.proxy;
    p.inject(Fault::delay("", "", Duration::from_millis(20)));
    let limited = [
        (p.inject(Fault::fail("POST", "/containers/create").times(2)), 2),
        (p.inject(Fault::lose("POST", "/containers/create").times(2)), 2),
        (p.inject(Fault::drop("POST", "/start").times(2)), 2),
        (p.inject(Fault::lose("POST", "/start").times(1)), 1),
        (p.inject(Fault::fail("DELETE", "/containers/").times(3)), 3),
    ];
    p.inject(Fault::fail("POST", "/start").probability(0.15));

    let c = r.d.client(TEAM_A).await;
    let mut calls = JoinSet::new();
    for _ in 0..CREATES {
        let (mut c, exp) = (c.clone(), r.d.exp_a.clone());
        calls.spawn(async move { c.create_sandbox(create_req(&exp, 300)).await.map(|r| r.into_inner()) });
    }
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    while let Some(result) = calls.join_next().await {
        match result.unwrap() {
            Ok(sb) => acked.push(sb),
            Err(e) => refused.push(e),
        }
    }
    for e in &refused {
        assert!(matches!(e.code(), tonic::Code::Internal | tonic::Code::Unavailable), "{e:?}");
    }
    assert!(refused.len() >= 7, "every limited fault fails one create: {refused:?}");

    let records = agreed(&r.d, Duration::from_secs(60)).await;
    p.clear();
    for (id, times) in limited {
        assert_eq!(p.hits(id), times, "fault {id:?} fired as often as asked");
    }
    assert_eq!(records.len(), CREATES, "every create is on record");
    let running: HashMap<&str, &proto::Sandbox> =
        records.iter().filter(|s| state(s) == SandboxState::Running).map(|s| (s.id.as_str(), s)).collect();
    assert_eq!(running.len(), acked.len(), "running = acknowledged");
    for a in &acked {
        assert_eq!(running.get(a.id.as_str()).map(|s| &s.container_id), Some(&a.container_id), "{}", a.id);
    }
    let failed = records.iter().filter(|s| state(s) == SandboxState::Failed).count();
    assert_eq!(failed, refused.len(), "every refused create is a recorded failure");

    // The survivors work (exec hijacks its Docker connection through the
    // proxy) and delete cleanly.
    let mut c = r.d.client(TEAM_A).await;
    if let Some(a) = acked.first() {
        let (out, _, code) = crate::lifecycle::exec(&mut c, &a.id, &["echo", "ok"]).await;
        assert_eq!((out.as_str(), code), ("ok\n", 0));
    }
    for a in &acked {
        let del = c.delete_sandbox(proto::DeleteSandboxRequest { id: a.id.clone() }).await.expect("delete");
        assert_eq!(state(&del.into_inner()), SandboxState::Deleted);
    }
    let records = agreed(&r.d, Duration::from_secs(30)).await;
    assert!(records.iter().all(|s| state(s) != SandboxState::Running));
    assert!(r.d.containers().await.is_empty());
}

/// A delete Docker refuses is refused and leaves the sandbox running; asked
/// again it succeeds; asked again after that it answers the same. A delete
/// whose answer was lost, or of a sandbox whose container is already gone,
/// succeeds too.
#[tokio::test(flavor = "multi_thread")]
async fn deletes_are_idempotent_whatever_docker_did() {
    let r = rig(Options::default()).await;
    let (p, d) = (&r.proxy, &r.d);
    let mut c = d.client(TEAM_A).await;
    let del = |id: &str| proto::DeleteSandboxRequest { id: id.into() };

    // Refused twice, then accepted.
    let sb = create(&mut c, &d.exp_a, 300).await;
    let refusals = p.inject(Fault::fail("DELETE", "/containers/").times(2));
    for _ in 0..2 {
        let e = c.delete_sandbox(del(&sb.id)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
        assert_eq!(state(&record(&mut c, &sb.id).await), SandboxState::Running, "a refused delete changes nothing");
        assert!(container_exists(&sb.container_id).await);
    }
    let first = c.delete_sandbox(del(&sb.id)).await.expect("third delete").into_inner();
    assert_eq!(state(&first), SandboxState::Deleted);
    assert_eq!(p.hits(refusals), 2);
    assert!(!container_exists(&sb.container_id).await);
    let again = c.delete_sandbox(del(&sb.id)).await.expect("delete of a deleted sandbox").into_inner();
    assert_eq!((state(&again), again.ended_at), (SandboxState::Deleted, first.ended_at), "the same answer");

    // Docker removed it but the answer was lost: the retry finds it gone.
    let sb = create(&mut c, &d.exp_a, 300).await;
    let lost = p.inject(Fault::lose("DELETE", "/containers/").times(1));
    let e = c.delete_sandbox(del(&sb.id)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert_eq!(p.hits(lost), 1);
    assert!(!container_exists(&sb.container_id).await, "Docker did remove it");
    let done = c.delete_sandbox(del(&sb.id)).await.expect("delete after a lost answer").into_inner();
    assert_eq!(state(&done), SandboxState::Deleted);

    // The container went behind the daemon's back.
    let sb = create(&mut c, &d.exp_a, 300).await;
    let rm = bollard::query_parameters::RemoveContainerOptionsBuilder::default().force(true).build();
    docker().await.remove_container(&sb.container_id, Some(rm)).await.unwrap();
    let done = c.delete_sandbox(del(&sb.id)).await.expect("delete of a sandbox whose container is gone").into_inner();
    assert!(matches!(state(&done), SandboxState::Deleted | SandboxState::Lost), "ended either way: {:?}", state(&done));
    agreed(d, Duration::from_secs(20)).await;
}

/// Expiry keeps trying, with backoff, until Docker lets it remove the sandbox.
/// (No periodic reconcile to fall back on: the teardown itself retries.)
#[tokio::test(flavor = "multi_thread")]
async fn an_expiry_docker_refuses_is_retried_until_it_succeeds() {
    let r = rig(Options { reconcile_interval: "1h", ..Default::default() }).await;
    let mut c = r.d.client(TEAM_A).await;
    let sb = create(&mut c, &r.d.exp_a, 3).await;
    let refusals = r.proxy.inject(Fault::fail("DELETE", "/containers/").times(4));
    let rec = ends_as(&r.d, SandboxState::Expired, Duration::from_secs(60)).await;
    assert_eq!(rec.id, sb.id);
    assert_eq!(r.proxy.hits(refusals), 4, "refused four times, then removed");
    assert!(!container_exists(&sb.container_id).await);
}

/// A deadline that falls due again while its expiry is under way (reconcile
/// puts the deadlines of running sandboxes back, and the removal is slow)
/// starts no second expiry: one lateness in the metrics, one `expire` record.
#[tokio::test(flavor = "multi_thread")]
async fn expiry_happens_once_and_is_recorded_once_while_reconcile_runs() {
    let r = rig(Options { reconcile_interval: "200ms", ..Default::default() }).await;
    let mut c = r.d.client(TEAM_A).await;
    let exp = r.d.experiment(TEAM_A, "OFFICIAL").await;
    let sb = create(&mut c, &exp, 2).await;
    // While the removal is slow, the record is still live: each reconcile
    // pass finds a sandbox past its deadline and schedules it again. (The
    // kill goes through the container's cgroup, not the engine.)
    let slow = r.proxy.inject(Fault::delay("DELETE", "/containers/", Duration::from_millis(1500)));
    ends_as(&r.d, SandboxState::Expired, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(r.proxy.hits(slow) >= 1);
    let m = r.d.scrape().await;
    assert_eq!(m.get("sandpit_expiry_lateness_seconds_count", &[]), 1.0, "one expiry, counted once");
    let q = proto::QueryAuditLogRequest { sandbox: sb.id.clone(), page_size: 100, ..Default::default() };
    let events = r.d.audit(AUDITOR).await.query_audit_log(q).await.unwrap().into_inner().events;
    let expiries = events.iter().filter(|e| e.action == "expire").count();
    assert_eq!(expiries, 1, "{events:#?}");
    assert!(!container_exists(&sb.container_id).await);
}

/// Expiry stops a sandbox's processes through its cgroup, not in the
/// engine's queue: with every kill through the engine held up for 10 s,
/// the container's main process is gone within a second of its deadline
/// (the kernel's view: Docker's own `die` event can trail it by more than
/// a second on a busy host), and it is never killed early.
#[tokio::test(flavor = "multi_thread")]
async fn expiry_stops_a_sandbox_at_its_deadline_without_the_engines_kill() {
    let r = rig(Options { reconcile_interval: "1h", ..Default::default() }).await;
    let mut c = r.d.client(TEAM_A).await;
    let slow = r.proxy.inject(Fault::delay("POST", "/kill", Duration::from_secs(10)));
    let sb = create(&mut c, &r.d.exp_a, 3).await;
    let expires = to_system(sb.expires_at.as_ref().unwrap());
    // The main process as the host sees it (asked of Docker directly, not through the proxy).
    let pid = docker().await.inspect_container(&sb.container_id, None).await.unwrap().state.unwrap().pid.unwrap();
    assert!(pid > 0, "the container runs");
    let runs = move || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // `pid (comm) S ...`: gone, or a zombie waiting to be reaped, has stopped.
        stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|s| s != "Z" && s != "X")
    };
    let stopped = tokio::task::spawn_blocking(move || {
        let until = Instant::now() + Duration::from_secs(20);
        while runs() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        SystemTime::now()
    })
    .await
    .unwrap();
    let late = stopped.duration_since(expires).expect("never before its deadline");
    assert!(late < Duration::from_secs(1), "stopped {late:?} after its deadline");
    ends_as(&r.d, SandboxState::Expired, Duration::from_secs(30)).await;
    assert_eq!(r.proxy.hits(slow), 0, "no kill went through the engine");
}

/// A create whose caller gave up is torn down even when Docker refuses the
/// first removals; it is not left running until its expiry.
#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_create_is_torn_down_even_if_docker_refuses_at_first() {
    let r = rig(Options { reconcile_interval: "1h", ..Default::default() }).await;
    let mut c = r.d.client(TEAM_A).await;
    r.proxy.inject(Fault::delay("POST", "/start", Duration::from_millis(3000)).times(1));
    let refusals = r.proxy.inject(Fault::fail("DELETE", "/containers/").times(3));
    let call = c.create_sandbox(create_req(&r.d.exp_a, 300));
    assert!(tokio::time::timeout(Duration::from_millis(1000), call).await.is_err(), "the caller gives up first");
    let rec = ends_as(&r.d, SandboxState::Failed, Duration::from_secs(60)).await;
    assert!(rec.state_reason.contains("abandoned"), "{}", rec.state_reason);
    assert_eq!(r.proxy.hits(refusals), 3);
}

/// Docker started the container but its answer was lost, and then refused
/// the cleanup: the create is a recorded failure and the container is
/// removed by the daemon's own retries, not left to a periodic sweep.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_create_is_cleaned_up_even_if_docker_refuses_at_first() {
    let r = rig(Options { reconcile_interval: "1h", ..Default::default() }).await;
    let mut c = r.d.client(TEAM_A).await;
    let lost = r.proxy.inject(Fault::lose("POST", "/start").times(1));
    let refusals = r.proxy.inject(Fault::fail("DELETE", "/containers/").times(4));
    let e = c.create_sandbox(create_req(&r.d.exp_a, 300)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert_eq!(r.proxy.hits(lost), 1);
    ends_as(&r.d, SandboxState::Failed, Duration::from_secs(60)).await;
    assert_eq!(r.proxy.hits(refusals), 4);
}

/// A container runtime that hangs (gVisor on a platform the host cannot run
/// hung at start and held the engine's locks) does not wedge the daemon: the
/// start times out, the create fails naming the runtime, the sandbox is
/// recorded failed with nothing left, the log says which runtime hung, and
/// the daemon goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_runtime_fails_the_create_naming_it_and_leaves_nothing() {
    let gvisor = "isolation = \"gvisor\"\nmax_classification = \"OFFICIAL\"\nimages = [\"{image}\"]\n\
                  command = [\"sleep\", \"infinity\"]\n[network]\nmode = \"none\"\n";
    let r = rig(Options {
        // Long enough for every other Docker call on a busy machine.
        docker_timeout: "10s",
        reconcile_interval: "1h",
        profiles: vec![("test-gvisor".into(), gvisor.into())],
        ..Default::default()
    })
    .await;
    let mut c = r.d.client(TEAM_A).await;
    // The start is held past the daemon's Docker timeout, as a hung runtime would.
    let hung = r.proxy.inject(Fault::delay("POST", "/start", Duration::from_secs(20)).times(1));
    let req = proto::CreateSandboxRequest { profile: "test-gvisor".into(), ..create_req(&r.d.exp_a, 300) };
    let started = Instant::now();
    let e = c.create_sandbox(req).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(19), "the create waited {:?}", started.elapsed());
    assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
    assert!(e.message().contains("runtime 'runsc-none' did not start the sandbox within 10s"), "{}", e.message());
    assert_eq!(r.proxy.hits(hung), 1);
    let failed = ends_as(&r.d, SandboxState::Failed, Duration::from_secs(60)).await;
    assert!(failed.state_reason.contains("runsc-none"), "{failed:?}");
    assert!(r.d.log().lines().any(|l| l.contains("ERROR") && l.contains("runtime=runsc-none") && l.contains("hung")));
    // The daemon still serves, and a runc create goes through.
    let ok = c.create_sandbox(create_req(&r.d.exp_a, 300)).await.expect("a runc create after the hang").into_inner();
    assert_eq!(state(&ok), SandboxState::Running);
}

/// Docker goes away for longer than a sandbox's ttl: nothing can remove it
/// meanwhile, reads still work, and once Docker is back the sandbox is
/// removed and recorded as expired.
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_longer_than_the_ttl_ends_with_the_sandbox_removed() {
    let r = rig(Options { reconcile_interval: "1s", ..Default::default() }).await;
    let mut c = r.d.client(TEAM_A).await;
    let sb = create(&mut c, &r.d.exp_a, 3).await;
    let expires = to_system(sb.expires_at.as_ref().unwrap());
    let len = expires.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_secs(5);
    let during = async {
        tokio::time::sleep(len - Duration::from_secs(1)).await;
        (container_exists(&sb.container_id).await, state(&record(&mut c, &sb.id).await))
    };
    let ((), (exists, st)) = tokio::join!(r.proxy.outage(len), during);
    assert!(exists, "Docker was away: nothing could remove it");
    assert_eq!(st, SandboxState::Running, "not ended while still in Docker");
    let rec = ends_as(&r.d, SandboxState::Expired, Duration::from_secs(60)).await;
    assert_eq!(rec.id, sb.id);
    assert!(!container_exists(&sb.container_id).await);
}

/// `kill -9` while 50 creates are in flight, then a restart: every
/// acknowledged create is running with the container it was acknowledged
/// with, every other record ended with nothing in Docker, and no container
/// or network is an orphan or a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn kill9_during_50_concurrent_creates_leaves_records_and_docker_agreeing() {
    const CREATES: usize = 50;
    let quotas = format!("sandboxes_per_team = {}", 2 * CREATES);
    let mut r = rig(Options { orphan_grace: "3s", reconcile_interval: "1s", quotas, ..Default::default() }).await;
    // Hold about a third of the container creates back for a while: they
    // reach Docker after the kill, some perhaps after the restart too.
    r.proxy.inject(Fault::delay("POST", "/containers/create", Duration::from_millis(4000)).probability(0.3));
    let c = r.d.client(TEAM_A).await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut calls = JoinSet::new();
    for _ in 0..CREATES {
        let (mut c, exp, acked) = (c.clone(), r.d.exp_a.clone(), Arc::clone(&acked));
        calls.spawn(async move {
            if let Ok(sb) = c.create_sandbox(create_req(&exp, 300)).await {
                acked.lock().unwrap().push(sb.into_inner());
            }
        });
    }
    // Kill once some are acknowledged: by then others have containers that
    // are not yet on record as running, and others have none yet.
    let at_kill = eventually(Duration::from_secs(120), "the first creates acknowledged", || async {
        let n = acked.lock().unwrap().len();
        if n < 5 {
            return None;
        }
        Some((n, r.d.containers().await.len()))
    })
    .await;
    r.d.kill9();
    while calls.join_next().await.is_some() {}
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() < CREATES, "the kill came after every create: nothing was in flight");

    r.d.spawn().await;
    let records = agreed(&r.d, Duration::from_secs(120)).await;
    let by_id: HashMap<&str, &proto::Sandbox> = records.iter().map(|s| (s.id.as_str(), s)).collect();
    for a in &acked {
        let rec = by_id.get(a.id.as_str()).unwrap_or_else(|| panic!("acknowledged {} has no record", a.id));
        assert_eq!((state(rec), &rec.container_id), (SandboxState::Running, &a.container_id), "{}", a.id);
    }
    assert!(records.len() <= CREATES);
    let ids: HashSet<&str> = records.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), records.len(), "no duplicate records");
    let unacked_running = records.iter().filter(|s| state(s) == SandboxState::Running).count() - acked.len();
    eprintln!(
        "kill -9 with {} acknowledged and {} containers made: {} acknowledged in all, {} on record, \
         {} running but never acknowledged, {} failed",
        at_kill.0,
        at_kill.1,
        acked.len(),
        records.len(),
        unacked_running,
        records.iter().filter(|s| state(s) == SandboxState::Failed).count()
    );
}

/// One orphan Docker keeps refusing to remove does not hold up reconcile:
/// the others are removed in the same passes, and it goes once Docker relents.
#[tokio::test(flavor = "multi_thread")]
async fn reconcile_goes_on_past_an_object_docker_keeps_refusing() {
    let r = rig(Options { orphan_grace: "1s", reconcile_interval: "1s", ..Default::default() }).await;
    let mut c = r.d.client(TEAM_A).await;
    let sb = create(&mut c, &r.d.exp_a, 300).await;
    let labels =
        docker().await.inspect_container(&sb.container_id, None).await.unwrap().config.unwrap().labels.unwrap();
    let orphan = |n: &str| {
        HashMap::from([
            ("sandpit.managed".to_string(), "true".to_string()),
            ("sandpit.instance".to_string(), labels["sandpit.instance"].clone()),
            ("sandpit.sandbox".to_string(), format!("sb-00000000000{n}")),
            (TEST_RUN_LABEL.to_string(), r.d.run.clone()),
        ])
    };
    // Docker lists the newest first: the stubborn one comes up first in every pass.
    let other = crate::reconcile::start_container(&unique("other"), orphan("2")).await;
    let stubborn = crate::reconcile::start_container(&unique("stubborn"), orphan("1")).await;
    let refusals = r.proxy.inject(Fault::fail("DELETE", &format!("/containers/{stubborn}")));

    eventually(Duration::from_secs(30), "the other orphan removed, the stubborn one refused twice", || {
        let id = other.clone();
        let refused = r.proxy.hits(refusals);
        async move { (!container_exists(&id).await && refused >= 2).then_some(()) }
    })
    .await;
    assert!(container_exists(&stubborn).await);
    let m = r.d.scrape().await;
    assert!(m.get("sandpit_reconcile_actions_total", &[("action", "step_failed")]) >= 1.0);
    assert!(m.get("sandpit_docker_errors_total", &[("operation", "remove container"), ("kind", "error")]) >= 1.0);

    r.proxy.clear();
    eventually(Duration::from_secs(30), "the stubborn orphan removed", || {
        let id = stubborn.clone();
        async move { (!container_exists(&id).await).then_some(()) }
    })
    .await;
    assert!(container_exists(&sb.container_id).await, "the tracked sandbox is never touched");
}

/// An exec that races the container stopping (a delete, an expiry, the main
/// process exiting) before the daemon hears of it: Docker refuses, and the
/// caller is told the sandbox is not running, not that the daemon failed.
#[tokio::test(flavor = "multi_thread")]
async fn exec_into_a_container_stopped_behind_the_daemons_back_is_failed_precondition() {
    // No event stream and no periodic reconcile: only Docker knows it stopped.
    let r = rig(Options { reconcile_interval: "1h", ..Default::default() }).await;
    let events = r.proxy.inject(Fault::drop("GET", "/events"));
    r.proxy.down();
    r.proxy.up();
    // Let the event follower's reconnects back off (each one reconciles).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut c = r.d.client(TEAM_A).await;
    let sb = create(&mut c, &r.d.exp_a, 120).await;
    let kill = None::<bollard::query_parameters::KillContainerOptions>;
    docker().await.kill_container(&sb.container_id, kill).await.unwrap();
    let req = proto::ExecRequest { id: sb.id.clone(), command: vec!["true".into()], ..Default::default() };
    let e = c.exec(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("not running"), "{}", e.message());
    assert!(r.proxy.hits(events) >= 1, "the event stream was kept away");
}
