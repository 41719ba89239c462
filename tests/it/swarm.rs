//! Sandboxes on a Docker Swarm: a real three-node swarm on this machine
//! (`scripts/swarm-harness.sh`: extra engines in network namespaces of their
//! own, joined by a bridge), driven by the real `sandpitd` with `[swarm]`.
//! Each test's swarm, with every namespace, engine, bridge and rule it
//! made, is removed when the test ends, pass or fail.
//!
//! Nodes (but in the gVisor test): n1 is the manager and accredited for
//! nothing; n2 for OFFICIAL; n3 for OFFICIAL and OFFICIAL-SENSITIVE. All run
//! `container` isolation. A swarm gives the `isolated` network mode, and
//! `allowlist` through a relay per sandbox when the daemon is given
//! `egress_address`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bollard::Docker;
use futures_util::StreamExt;
use sandpit_proto::{self as proto, SandboxEventKind, SandboxState};

use crate::lifecycle::exec;
use crate::support::*;
use crate::transfer::copy_in_stream;

const HARNESS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/swarm-harness.sh");
/// Where the harness keeps its runtime files; the owner's pid goes there.
const RUN_DIR: &str = "/run/sp-swarm";

/// One node of a [`Swarm`].
pub struct Node {
    pub socket: PathBuf,
    /// Its id in the swarm.
    pub id: String,
    pub hostname: String,
    pub address: String,
}

/// A Docker Swarm of engines on this machine; torn down on drop.
pub struct Swarm {
    pub name: String,
    pub nodes: Vec<Node>,
    /// Whether the engines also listen on TCP with TLS (the daemon is
    /// then given `tcp://` endpoints).
    pub tls: bool,
}

fn harness(args: &[&str]) -> std::process::Output {
    Command::new("bash").arg(HARNESS).args(args).output().expect("run swarm-harness.sh")
}

impl Swarm {
    /// Builds a swarm of `n` nodes with `labels` (`(node, "key=value")`,
    /// nodes from 1) and the test image on every node. Swarms of earlier
    /// test processes that died without tearing theirs down go first.
    pub fn up(n: usize, labels: &[(usize, &str)]) -> Swarm {
        Self::up_with(n, labels, &[], false)
    }

    /// [`Swarm::up`] with the nodes `gvisor` running every container under
    /// gVisor (runsc as their engine's default runtime), and with `tls`
    /// every engine also on `tcp://ADDRESS:2376`, verifying clients.
    pub fn up_with(n: usize, labels: &[(usize, &str)], gvisor: &[usize], tls: bool) -> Swarm {
        sweep_stale();
        let mut b = [0u8; 3];
        getrandom::fill(&mut b).unwrap();
        let name = format!("it{}", hex::encode(b));
        let mut args: Vec<String> = vec!["up".into(), name.clone(), n.to_string(), "--heartbeat".into(), "1s".into()];
        for img in [image(), volume_image()] {
            args.push("--image".into());
            args.push(img.into());
        }
        for (node, label) in labels {
            args.push("--label".into());
            args.push(format!("n{node}:{label}"));
        }
        for node in gvisor {
            args.push("--gvisor".into());
            args.push(node.to_string());
        }
        if tls {
            args.push("--tls".into());
        }
        let started = Instant::now();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Owned by this process (the harness writes it first thing), so that
        // no other test's sweep takes it for a dead run's.
        let out = Command::new("bash")
            .arg(HARNESS)
            .args(&args)
            .env("SP_SWARM_OWNER", std::process::id().to_string())
            .output()
            .expect("run swarm-harness.sh");
        let mut swarm = Swarm { name, nodes: Vec::new(), tls };
        assert!(out.status.success(), "building the swarm failed: {}", String::from_utf8_lossy(&out.stderr));
        let nodes = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 6 && f[0] == "node").then(|| Node {
                    socket: PathBuf::from(f[2]),
                    id: f[3].to_string(),
                    hostname: f[4].to_string(),
                    address: f[5].to_string(),
                })
            })
            .collect::<Vec<_>>();
        assert_eq!(nodes.len(), n, "{}", String::from_utf8_lossy(&out.stdout));
        eprintln!("swarm {} of {n} nodes up in {:?}", swarm.name, started.elapsed());
        swarm.nodes = nodes;
        swarm
    }

    /// The `[swarm]` config of a daemon on this swarm: the engines' unix
    /// sockets, or with TLS their TCP ports and the harness's certificates.
    pub fn config(&self, node_check: &str) -> String {
        let endpoint = |n: &Node| match self.tls {
            true => format!("tcp://{}:2376", n.address),
            false => format!("unix://{}", n.socket.display()),
        };
        let mut c = format!(
            "[swarm]\nmanager = \"{}\"\nnode_check = \"{node_check}\"\nstart_timeout = \"60s\"\n",
            endpoint(&self.nodes[0])
        );
        if self.tls {
            let t = Path::new(RUN_DIR).join(&self.name).join("tls");
            for (key, file) in [("tls_ca", "ca.pem"), ("tls_cert", "client-cert.pem"), ("tls_key", "client-key.pem")] {
                c.push_str(&format!("{key} = \"{}\"\n", t.join(file).display()));
            }
        }
        for n in &self.nodes {
            c.push_str(&format!("[[swarm.nodes]]\nname = \"{}\"\nhost = \"{}\"\n", n.hostname, endpoint(n)));
        }
        c
    }

    pub fn docker(&self, node: usize) -> Docker {
        let socket = self.nodes[node - 1].socket.display().to_string();
        Docker::connect_with_unix(&socket, 30, bollard::API_DEFAULT_VERSION).unwrap()
    }

    /// Which node (from 1) has this hostname.
    pub fn index_of(&self, hostname: &str) -> usize {
        self.nodes.iter().position(|n| n.hostname == hostname).unwrap_or_else(|| panic!("no node {hostname}")) + 1
    }

    /// Kills node `node` outright and cuts its link.
    pub fn kill(&self, node: usize) {
        let out = harness(&["kill", &self.name, &node.to_string()]);
        assert!(out.status.success(), "killing node {node} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `docker node update` on the manager.
    pub fn label(&self, node: usize, change: &str, label: &str) {
        let out = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.nodes[0].socket.display()))
            .args(["node", "update", change, label, &self.nodes[node - 1].hostname])
            .output()
            .unwrap();
        assert!(out.status.success(), "node update failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The sandbox services on the manager.
    pub async fn services(&self) -> Vec<String> {
        let list = self.docker(1).list_services(None::<bollard::query_parameters::ListServicesOptions>).await.unwrap();
        list.into_iter().filter_map(|s| s.spec?.name).filter(|n| n.starts_with("sandpit-")).collect()
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let out = harness(&["down", &self.name]);
        if !out.status.success() {
            eprintln!("tearing down swarm {} failed: {}", self.name, String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// The test image with a `VOLUME` declared, built once per test process
/// from [`image`] (no registry: the base is local).
fn volume_image() -> &'static str {
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        let tag = "sandpit-test/volume:latest".to_string();
        let dir = tempfile::tempdir().unwrap();
        let dockerfile = format!("FROM {}\nVOLUME /cache\nLABEL sandpit.test-image=true\n", image());
        std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
        let out = Command::new("docker")
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "-q", "-t", &tag])
            .arg(dir.path())
            .output()
            .expect("docker build");
        assert!(out.status.success(), "building the volume image failed: {}", String::from_utf8_lossy(&out.stderr));
        tag
    })
}

/// Tears down test swarms whose owning process is gone. One with no owner
/// on record yet may be another test's `up` under way: it is left alone
/// unless older than [`UNOWNED_STALE`].
fn sweep_stale() {
    let out = harness(&["list"]);
    for name in String::from_utf8_lossy(&out.stdout).lines().filter(|n| n.starts_with("it")) {
        let dir = Path::new(RUN_DIR).join(name);
        let stale = match std::fs::read_to_string(dir.join("owner")) {
            Ok(owner) => owner.trim().parse::<u32>().is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists()),
            Err(_) => std::fs::metadata(&dir)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > UNOWNED_STALE),
        };
        if stale {
            let _ = harness(&["down", name]);
        }
    }
}

/// How old a test swarm with no owner on record must be to be swept.
const UNOWNED_STALE: Duration = Duration::from_secs(600);

const ACCREDITED: &[(usize, &str)] = &[
    (1, "sandpit.isolation.container=true"),
    (2, "sandpit.isolation.container=true"),
    (3, "sandpit.isolation.container=true"),
    (2, "sandpit.classification.OFFICIAL=true"),
    (3, "sandpit.classification.OFFICIAL=true"),
    (3, "sandpit.classification.OFFICIAL-SENSITIVE=true"),
];

const ISOLATED: &str = r#"max_classification = "OFFICIAL"
images = ["{image}", "sandpit-test/volume:latest"]
command = ["sleep", "infinity"]
[resources]
cpus = 0.25
memory = "32MiB"
pids = 32
tmpfs = "16MiB"
[lifetime]
default_ttl = "5m"
max_ttl = "10m"
max_lifetime = "10m"
[network]
mode = "isolated"
"#;

async fn on_swarm(swarm: &Swarm, node_check: &str) -> Daemon {
    let sensitive =
        ISOLATED.replace(r#"max_classification = "OFFICIAL""#, r#"max_classification = "OFFICIAL-SENSITIVE""#);
    Daemon::with(Options {
        extra_config: swarm.config(node_check),
        profiles: vec![("isolated".into(), ISOLATED.into()), ("isolated-sensitive".into(), sensitive)],
        ..Options::default()
    })
    .await
}

/// An isolated sandbox (the mode a swarm gives) of `d.exp_a`.
fn isolated(d: &Daemon, ttl: i64) -> proto::CreateSandboxRequest {
    proto::CreateSandboxRequest { profile: "isolated".into(), ..create_req(&d.exp_a, ttl) }
}

async fn create_isolated(c: &mut Client, d: &Daemon, ttl: i64) -> proto::Sandbox {
    c.create_sandbox(isolated(d, ttl)).await.expect("create").into_inner()
}

async fn get(c: &mut Client, id: &str) -> proto::Sandbox {
    c.get_sandbox(proto::GetSandboxRequest { id: id.into() }).await.unwrap().into_inner()
}

async fn verify(d: &Daemon) {
    let mut audit = d.audit(AUDITOR).await;
    let v = audit.verify_audit_log(proto::VerifyAuditLogRequest::default()).await.unwrap().into_inner();
    assert!(v.ok, "audit chain verifies: {v:?}");
}

/// Whether the node's engine still has the container.
async fn on_node(swarm: &Swarm, sb: &proto::Sandbox) -> bool {
    swarm.docker(swarm.index_of(&sb.node)).inspect_container(&sb.container_id, None).await.is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn sandboxes_spread_over_a_three_node_swarm_only_onto_accredited_nodes() {
    // The daemon reaches every engine over TCP, with TLS verified both ways.
    let swarm = tokio::task::spawn_blocking(|| Swarm::up_with(3, ACCREDITED, &[], true)).await.unwrap();
    let d = on_swarm(&swarm, "500ms").await;
    let mut c = d.client(TEAM_A).await;

    // A promise the swarm cannot keep is refused, before anything is made.
    let e = c.create_sandbox(create_req(&d.exp_a, 300)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("network mode 'none'"), "{}", e.message());
    assert!(swarm.services().await.is_empty());

    // Six OFFICIAL sandboxes at once: all on n2 or n3 (n1 is not
    // accredited), spread over both.
    let started = Instant::now();
    let made = futures_util::future::join_all((0..6).map(|_| {
        let mut c = c.clone();
        let req = isolated(&d, 300);
        async move { c.create_sandbox(req).await.expect("create").into_inner() }
    }))
    .await;
    eprintln!("6 creates on the swarm took {:?}", started.elapsed());
    let nodes: std::collections::BTreeSet<usize> = made.iter().map(|sb| swarm.index_of(&sb.node)).collect();
    assert!(!nodes.contains(&1), "nothing lands on the unaccredited manager: {nodes:?}");
    assert_eq!(nodes.len(), 2, "Swarm spread them over both accredited nodes: {nodes:?}");
    for sb in &made {
        assert_eq!(state(sb), SandboxState::Running);
        assert!(on_node(&swarm, sb).await, "{} runs on {}", sb.id, sb.node);
    }

    // Hardening, as the node's engine made the container and as the sandbox sees it.
    let sb = &made[0];
    let info = swarm.docker(swarm.index_of(&sb.node)).inspect_container(&sb.container_id, None).await.unwrap();
    let host = info.host_config.unwrap();
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    assert_eq!(host.memory, Some(32 << 20));
    assert_eq!(host.pids_limit, Some(32));
    assert_eq!(host.nano_cpus, Some(250_000_000));
    assert_eq!(host.init, Some(true));
    let (out, _, code) = exec(
        &mut c,
        &sb.id,
        &["sh", "-c", "id -u; grep -E '^(NoNewPrivs|CapEff)' /proc/self/status; ls /sys/class/net"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], "65534", "runs as nobody");
    assert!(lines.contains(&"NoNewPrivs:\t1") || out.contains("NoNewPrivs:\t1"), "every exec has no_new_privs: {out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "no capabilities: {out}");
    let mut ifaces = lines[3..].to_vec();
    ifaces.sort();
    assert_eq!(ifaces, ["eth0", "lo"], "its overlay and loopback only: {out}");
    // The main process too (its parent is the engine's init).
    let (out, _, _) = exec(&mut c, &sb.id, &["sh", "-c", "grep NoNewPrivs /proc/[0-9]*/status | sort -u"]).await;
    let main_nnp = out.lines().filter(|l| !l.starts_with("/proc/1/")).all(|l| l.ends_with("\t1"));
    assert!(main_nnp, "every process but the engine's init has no_new_privs: {out}");
    let (_, err, code) = exec(&mut c, &sb.id, &["touch", "/bin/evil"]).await;
    assert!(code != 0 && err.contains("Read-only"), "read-only root: {err}");

    // Files in and out through the node's engine.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "swarm\n").unwrap();
    let tar = Command::new("tar").arg("-c").arg("-C").arg(dir.path()).arg("notes.txt").output().unwrap().stdout;
    c.copy_in(copy_in_stream(&sb.id, "/tmp", tar)).await.unwrap();
    let (out, _, code) = exec(&mut c, &sb.id, &["cat", "/tmp/notes.txt"]).await;
    assert_eq!((out.as_str(), code), ("swarm\n", 0));

    // OFFICIAL-SENSITIVE lands only on n3.
    let mut req = isolated(&d, 300);
    req.classification = "OFFICIAL-SENSITIVE".into();
    req.profile = "isolated-sensitive".into();
    for _ in 0..2 {
        let s = c.create_sandbox(req.clone()).await.unwrap().into_inner();
        assert_eq!(swarm.index_of(&s.node), 3, "OFFICIAL-SENSITIVE only where accredited");
        c.delete_sandbox(proto::DeleteSandboxRequest { id: s.id.clone() }).await.unwrap();
    }

    // Delete: the service and its container go.
    let gone = made[1].clone();
    c.delete_sandbox(proto::DeleteSandboxRequest { id: gone.id.clone() }).await.unwrap();
    assert!(!swarm.services().await.contains(&format!("sandpit-{}", gone.id)), "service removed");
    eventually(Duration::from_secs(30), "the deleted sandbox's container to go", || async {
        (!on_node(&swarm, &gone).await).then_some(())
    })
    .await;

    // A node that loses its accreditation: its sandboxes are stopped and recorded lost.
    let mut watch = c.watch_sandboxes(proto::WatchSandboxesRequest::default()).await.unwrap().into_inner();
    // Every sandbox of the six still live: all but the one deleted above.
    let live: Vec<&proto::Sandbox> = made.iter().filter(|s| s.id != gone.id).collect();
    let on_n2: Vec<String> = live.iter().filter(|s| swarm.index_of(&s.node) == 2).map(|s| s.id.clone()).collect();
    let on_n3: Vec<String> = live.iter().filter(|s| swarm.index_of(&s.node) == 3).map(|s| s.id.clone()).collect();
    swarm.label(2, "--label-rm", "sandpit.classification.OFFICIAL");
    let mut lost = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lost.len() < on_n2.len() {
        let ev = tokio::time::timeout_at(deadline.into(), watch.next()).await.expect("lost events").unwrap().unwrap();
        if ev.kind() == SandboxEventKind::Lost {
            assert!(ev.message.contains("no longer labelled sandpit.classification.OFFICIAL=true"), "{}", ev.message);
            lost.insert(ev.sandbox.unwrap().id);
        }
    }
    assert_eq!(lost, on_n2.iter().cloned().collect(), "exactly n2's sandboxes were lost");
    for id in &on_n3 {
        assert_eq!(state(&get(&mut c, id).await), SandboxState::Running, "n3's sandboxes go on");
    }
    for id in &on_n2 {
        let s = get(&mut c, id).await;
        assert_eq!(state(&s), SandboxState::Lost);
        let st = swarm.docker(2).inspect_container(&s.container_id, None).await.map(|i| i.state.unwrap().running);
        assert!(!matches!(st, Ok(Some(true))), "stopped on n2: {st:?}");
    }
    // Now nothing OFFICIAL may land on n2.
    let s = create_isolated(&mut c, &d, 300).await;
    assert_eq!(swarm.index_of(&s.node), 3);
    verify(&d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn isolated_sandboxes_on_a_swarm_reach_nothing_but_themselves_and_expire_and_survive_a_restart() {
    let swarm = tokio::task::spawn_blocking(|| Swarm::up(3, ACCREDITED)).await.unwrap();
    let mut d = on_swarm(&swarm, "500ms").await;
    let mut c = d.client(TEAM_A).await;
    let req = isolated(&d, 300);
    let a = c.create_sandbox(req.clone()).await.unwrap().into_inner();
    let b = c.create_sandbox(req.clone()).await.unwrap().into_inner();
    assert!(!a.address.is_empty() && !b.address.is_empty(), "each on an overlay of its own");
    assert_ne!(a.address, b.address);

    // B listens on 8080; B reaches itself; A reaches neither B, the nodes nor the host.
    let listen = "busybox nc -ll -p 8080 -e busybox echo hi >/dev/null 2>&1 & sleep 0.3; echo started";
    let (out, _, _) = exec(&mut c, &b.id, &["sh", "-c", listen]).await;
    assert!(out.contains("started"), "{out}");
    let probe = |addr: &str, port: u16| format!("busybox timeout 3 busybox nc {addr} {port} </dev/null; echo rc=$?");
    let (out, _, _) = exec(&mut c, &b.id, &["sh", "-c", &probe(&b.address, 8080)]).await;
    assert!(out.contains("hi"), "B answers on its own address: {out}");
    let (out, _, _) = exec(&mut c, &a.id, &["sh", "-c", &probe(&b.address, 8080)]).await;
    assert!(!out.contains("hi"), "A cannot reach B: {out}");
    let host = swarm.nodes[0].address.rsplit_once('.').map(|(net, _)| format!("{net}.1")).unwrap();
    for (addr, port) in
        [(swarm.nodes[0].address.as_str(), 2377u16), (swarm.nodes[1].address.as_str(), 7946), (host.as_str(), 22)]
    {
        let (out, _, _) = exec(&mut c, &a.id, &["sh", "-c", &probe(addr, port)]).await;
        assert!(!out.contains("rc=0"), "A cannot reach {addr}:{port}: {out}");
    }
    let (out, _, _) = exec(&mut c, &a.id, &["sh", "-c", "cat /etc/resolv.conf"]).await;
    assert!(out.contains("127.0.0.1") || out.contains("127.0.0.11"), "names resolve nowhere: {out}");

    // An image's VOLUME is masked by an empty read-only tmpfs, as on one host.
    let mut with_volume = req.clone();
    with_volume.image = volume_image().into();
    let v = c.create_sandbox(with_volume).await.unwrap().into_inner();
    let (out, err, code) = exec(&mut c, &v.id, &["sh", "-c", "grep ' /cache ' /proc/mounts; touch /cache/x"]).await;
    assert!(out.contains("tmpfs /cache tmpfs ro,"), "masked read-only: {out}");
    assert!(code != 0 && err.contains("Read-only"), "nothing written there: {err}");
    c.delete_sandbox(proto::DeleteSandboxRequest { id: v.id.clone() }).await.unwrap();

    // Expiry on the swarm: stopped, its service and overlay removed.
    let short = create_isolated(&mut c, &d, 3).await;
    let expired = eventually(Duration::from_secs(30), "expiry", || {
        let mut c = c.clone();
        let id = short.id.clone();
        async move { Some(get(&mut c, &id).await).filter(|s| state(s) == SandboxState::Expired) }
    })
    .await;
    assert!(!swarm.services().await.contains(&format!("sandpit-{}", expired.id)));

    // A restart: the daemon finds its sandboxes on the swarm and goes on serving them;
    // one that fell due while it was down expires once it is back.
    let due = create_isolated(&mut c, &d, 4).await;
    d.kill9();
    tokio::time::sleep(Duration::from_secs(5)).await;
    d.spawn().await;
    let mut c = d.client(TEAM_A).await;
    let (out, _, code) = exec(&mut c, &a.id, &["echo", "still here"]).await;
    assert_eq!((out.as_str(), code), ("still here\n", 0), "adopted after the restart");
    eventually(Duration::from_secs(30), "the sandbox due while down to expire", || {
        let mut c = c.clone();
        let id = due.id.clone();
        async move { Some(get(&mut c, &id).await).filter(|s| state(s) == SandboxState::Expired) }
    })
    .await;
    for sb in [&a, &b] {
        c.delete_sandbox(proto::DeleteSandboxRequest { id: sb.id.clone() }).await.unwrap();
    }
    eventually(Duration::from_secs(30), "every service and overlay to go", || async {
        let nets = swarm.docker(1).list_networks(None::<bollard::query_parameters::ListNetworksOptions>).await.unwrap();
        let left = nets.iter().filter(|n| n.name.as_deref().is_some_and(|n| n.starts_with("sandpit-"))).count();
        (swarm.services().await.is_empty() && left == 0).then_some(())
    })
    .await;
    verify(&d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sandboxes_on_a_node_that_dies_are_recorded_lost() {
    let swarm = tokio::task::spawn_blocking(|| Swarm::up(3, ACCREDITED)).await.unwrap();
    let d = on_swarm(&swarm, "500ms").await;
    let mut c = d.client(TEAM_A).await;
    let made = futures_util::future::join_all((0..4).map(|_| {
        let mut c = c.clone();
        let req = isolated(&d, 300);
        async move { c.create_sandbox(req).await.expect("create").into_inner() }
    }))
    .await;
    let victim = swarm.index_of(&made[0].node);
    let on_victim: std::collections::BTreeSet<String> =
        made.iter().filter(|s| swarm.index_of(&s.node) == victim).map(|s| s.id.clone()).collect();
    let mut watch = c.watch_sandboxes(proto::WatchSandboxesRequest::default()).await.unwrap().into_inner();

    let killed = Instant::now();
    swarm.kill(victim);
    let mut lost = std::collections::BTreeSet::new();
    let deadline = killed + Duration::from_secs(60);
    while lost.len() < on_victim.len() {
        let ev = tokio::time::timeout_at(deadline.into(), watch.next()).await.expect("lost events").unwrap().unwrap();
        if ev.kind() == SandboxEventKind::Lost {
            assert!(ev.message.contains(&swarm.nodes[victim - 1].hostname), "{}", ev.message);
            lost.insert(ev.sandbox.unwrap().id);
        }
    }
    eprintln!("{} sandboxes on a killed node recorded lost {:?} after the kill", lost.len(), killed.elapsed());
    assert_eq!(lost, on_victim);
    for sb in made.iter().filter(|s| !on_victim.contains(&s.id)) {
        let (out, _, code) = exec(&mut c, &sb.id, &["echo", "alive"]).await;
        assert_eq!((out.as_str(), code), ("alive\n", 0), "the other nodes' sandboxes go on");
    }
    // New sandboxes go to the nodes that are left.
    let s = create_isolated(&mut c, &d, 300).await;
    assert_ne!(swarm.index_of(&s.node), victim);
    // The lost sandboxes' services and overlays go at the next reconciles,
    // so a node that comes back does not run them again.
    eventually(Duration::from_secs(60), "the lost sandboxes' services and overlays to go", || async {
        let services = swarm.services().await;
        let nets = swarm.docker(1).list_networks(None::<bollard::query_parameters::ListNetworksOptions>).await.unwrap();
        let left = on_victim.iter().any(|id| {
            let name = format!("sandpit-{id}");
            services.contains(&name) || nets.iter().any(|n| n.name.as_deref() == Some(name.as_str()))
        });
        (!left).then_some(())
    })
    .await;
    let mut audit = d.audit(AUDITOR).await;
    let page = audit
        .query_audit_log(proto::QueryAuditLogRequest { action: "reconcile-lost".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), on_victim.len(), "each loss audited once");
    verify(&d).await;
}

/// gVisor on a swarm: a gVisor sandbox lands only on a node labelled for it
/// whose engine runs containers under runsc, and runs under gVisor there;
/// a node labelled for gVisor whose engine does not is never used for one.
#[tokio::test(flavor = "multi_thread")]
async fn gvisor_sandboxes_run_only_on_nodes_that_give_gvisor() {
    if Command::new("runsc").arg("--version").output().is_err() {
        eprintln!("runsc is not installed: skipping (CI installs it)");
        return;
    }
    let labels: &[(usize, &str)] = &[
        (1, "sandpit.isolation.container=true"),
        (1, "sandpit.classification.OFFICIAL-SENSITIVE=true"),
        (2, "sandpit.isolation.gvisor=true"),
        (2, "sandpit.classification.OFFICIAL-SENSITIVE=true"),
    ];
    let swarm = tokio::task::spawn_blocking(move || Swarm::up_with(2, labels, &[2], false)).await.unwrap();
    let gvisor = ISOLATED.replace(
        r#"max_classification = "OFFICIAL""#,
        "isolation = \"gvisor\"\nmax_classification = \"OFFICIAL-SENSITIVE\"",
    );
    // Reconcile (which reads the nodes again) only at start: the label move
    // below then reaches a daemon that still believes the old labels, and
    // only the check after placement stands between it and runc.
    let d = Daemon::with(Options {
        extra_config: swarm.config("500ms"),
        profiles: vec![("isolated-gvisor".into(), gvisor)],
        reconcile_interval: "1h",
        ..Options::default()
    })
    .await;
    let mut c = d.client(TEAM_A).await;
    let req = proto::CreateSandboxRequest {
        profile: "isolated-gvisor".into(),
        classification: "OFFICIAL-SENSITIVE".into(),
        ..create_req(&d.exp_a, 300)
    };
    // gVisor becomes available once the daemon has read the nodes (its first reconcile).
    let first = eventually(Duration::from_secs(30), "a gVisor create", || {
        let mut c = c.clone();
        let req = req.clone();
        async move { c.create_sandbox(req).await.ok().map(|r| r.into_inner()) }
    })
    .await;
    let second = c.create_sandbox(req.clone()).await.unwrap().into_inner();
    for sb in [&first, &second] {
        assert_eq!(swarm.index_of(&sb.node), 2, "only the gVisor node");
        let (out, _, code) = exec(&mut c, &sb.id, &["cat", "/proc/version"]).await;
        assert_eq!(code, 0);
        assert!(out.contains("4.4.0"), "gVisor's kernel answers: {out}");
        let info = swarm.docker(2).inspect_container(&sb.container_id, None).await.unwrap();
        assert_eq!(info.host_config.unwrap().runtime.as_deref(), Some("runsc"));
    }

    // The label moves to the runc node: Swarm places the next one there, and
    // the daemon refuses to run it under runc.
    swarm.label(2, "--label-rm", "sandpit.isolation.gvisor");
    swarm.label(1, "--label-add", "sandpit.isolation.gvisor=true");
    let e = c.create_sandbox(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("not runsc"), "{}", e.message());
    let services = swarm.services().await;
    assert_eq!(services.len(), 2, "nothing of the refused create is left: {services:?}");
    verify(&d).await;
}

/// A free TCP port on this host (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port()
}

/// Sends `head` to the daemon's egress proxy from this host (an address in
/// the relay sources), after `handshake`; everything it answers before it
/// closes (a reset counts as closed; a connection held open fails).
async fn from_host(proxy: &str, handshake: &str, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy).await.expect("connect to the proxy");
    s.write_all(format!("{handshake}{head}").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the proxy neither closed nor finished answering {handshake:?} within 10 s");
    String::from_utf8_lossy(&out).to_string()
}

/// The token an allowlist sandbox's relay service holds.
async fn relay_token(swarm: &Swarm, id: &str) -> String {
    let s = swarm.docker(1).inspect_service(&format!("sandpit-{id}-relay"), None).await.expect("the relay's service");
    let env = s.spec.unwrap().task_template.unwrap().container_spec.unwrap().env.unwrap_or_default();
    env.iter().find_map(|e| e.strip_prefix("SANDPIT_RELAY_TOKEN=")).expect("the relay's token").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn allowlist_sandboxes_on_a_swarm_reach_listed_destinations_through_a_relay_of_their_own_and_nothing_else() {
    use crate::network::{greeter, via_proxy};
    let swarm = tokio::task::spawn_blocking(|| Swarm::up(3, ACCREDITED)).await.unwrap();
    let allowed = greeter().await;
    let other = greeter().await;
    // The host as the nodes reach it, and the nodes' network (whence relays connect).
    let (net, _) = swarm.nodes[0].address.rsplit_once('.').unwrap();
    let host = format!("{net}.1");
    let egress_port = free_port();
    let config = swarm.config("500ms").replacen(
        "[swarm]\n",
        &format!("[swarm]\negress_address = \"{host}\"\negress_sources = [\"{net}.0/24\"]\n"),
        1,
    );
    let allowlist = ISOLATED.replace(
        "mode = \"isolated\"",
        &format!(
            "mode = \"allowlist\"\n[[network.allow]]\nhost = \"127.0.0.1\"\nport = {allowed}\nresidency = \"UK\"\n"
        ),
    );
    let mut d = Daemon::with(Options {
        extra_config: config,
        profiles: vec![("allow".into(), allowlist), ("isolated".into(), ISOLATED.into())],
        network: Some((230, egress_port)),
        ..Options::default()
    })
    .await;
    let mut c = d.client(TEAM_A).await;
    let req = proto::CreateSandboxRequest { profile: "allow".into(), ..create_req(&d.exp_a, 300) };
    let started = Instant::now();
    let a = c.create_sandbox(req.clone()).await.expect("an allowlist create on the swarm").into_inner();
    let b = c.create_sandbox(req.clone()).await.unwrap().into_inner();
    let allowlist_creates = started.elapsed();
    let started = Instant::now();
    let iso = create_isolated(&mut c, &d, 300).await;
    eprintln!(
        "2 allowlist creates (relay first) took {allowlist_creates:?}; 1 isolated create {:?}",
        started.elapsed()
    );
    assert_eq!(a.network_mode, "allowlist");
    let services = swarm.services().await;
    for sb in [&a, &b] {
        assert!(services.contains(&format!("sandpit-{}-relay", sb.id)), "a relay each: {services:?}");
    }

    // Its proxy is its relay, on its own overlay.
    let (proxy_env, _, _) = exec(&mut c, &a.id, &["sh", "-c", "echo $HTTP_PROXY"]).await;
    let relay_addr =
        proxy_env.trim().strip_prefix("http://").and_then(|p| p.strip_suffix(":3128")).unwrap().to_string();
    let a_net = a.address.rsplit_once('.').unwrap().0;
    assert!(relay_addr.starts_with(&format!("{a_net}.")), "relay {relay_addr} on A's overlay ({})", a.address);

    // Through the relay: the listed destination, and nothing else.
    let connect =
        |host: &str, port: u16| format!("CONNECT {host}:{port} HTTP/1.1\\r\\nHost: {host}:{port}\\r\\n\\r\\n");
    let out = via_proxy(&mut c, &a.id, &connect("127.0.0.1", allowed)).await;
    assert!(out.starts_with("HTTP/1.1 200") && out.contains("hello"), "allowed through the relay: {out:?}");
    for (h, port) in [("127.0.0.1", other), ("10.0.0.1", allowed), ("localhost", allowed)] {
        let out = via_proxy(&mut c, &a.id, &connect(h, port)).await;
        assert!(out.starts_with("HTTP/1.1 403") && !out.contains("hello"), "{h}:{port} refused: {out:?}");
    }
    let out = via_proxy(&mut c, &b.id, &connect("127.0.0.1", allowed)).await;
    assert!(out.contains("hello"), "B through its own relay: {out:?}");

    // Around the relay: not the host, its proxy, the nodes, B's relay or B.
    let (b_relay, _, _) = exec(&mut c, &b.id, &["sh", "-c", "echo $HTTP_PROXY"]).await;
    let b_relay = b_relay.trim().strip_prefix("http://").and_then(|p| p.strip_suffix(":3128")).unwrap().to_string();
    for (addr, port) in [
        (host.as_str(), allowed),
        (host.as_str(), egress_port),
        (swarm.nodes[1].address.as_str(), 7946),
        (b_relay.as_str(), 3128),
        (b.address.as_str(), 3128),
    ] {
        let (out, _, _) = exec(
            &mut c,
            &a.id,
            &["sh", "-c", &format!("busybox timeout 3 busybox nc {addr} {port} </dev/null; echo rc=$?")],
        )
        .await;
        assert!(!out.contains("rc=0"), "A connected to {addr}:{port}: {out}");
    }
    // An isolated sandbox on the same swarm gets no relay and no proxy.
    let (out, _, _) = exec(&mut c, &iso.id, &["sh", "-c", "echo proxy=$HTTP_PROXY"]).await;
    assert_eq!(out.trim(), "proxy=");
    assert!(!swarm.services().await.contains(&format!("sandpit-{}-relay", iso.id)));

    // The proxy knows a relay by its token alone: a wrong one, none, or a
    // stranger's bytes are closed unanswered; A's own token is A.
    let proxy = format!("{host}:{egress_port}");
    let head = "CONNECT 127.0.0.1:{allowed} HTTP/1.1\r\n\r\n".replace("{allowed}", &allowed.to_string());
    let token = relay_token(&swarm, &a.id).await;
    for handshake in ["SANDPIT-RELAY 0000\n".to_string(), String::new(), format!("SANDPIT-RELAY {token}x\n")] {
        let out = from_host(&proxy, &handshake, &head).await;
        assert!(out.is_empty(), "{handshake:?} got an answer: {out:?}");
    }
    let out = from_host(&proxy, &format!("SANDPIT-RELAY {token}\n"), &head).await;
    assert!(out.starts_with("HTTP/1.1 200") && out.contains("hello"), "A's token is A: {out:?}");

    // Every decision is on record with A, from its relay's node.
    let q = proto::QueryAuditLogRequest { sandbox: a.id.clone(), action: "egress".into(), ..Default::default() };
    let events = d.audit(AUDITOR).await.query_audit_log(q).await.unwrap().into_inner().events;
    let allowed_events = events.iter().filter(|e| e.outcome == "succeeded").count();
    let denied_events = events.iter().filter(|e| e.outcome == "denied").count();
    assert_eq!((allowed_events, denied_events), (2, 3), "{events:#?}");
    assert!(events.iter().all(|e| e.experiment == d.exp_a && e.source.starts_with(&format!("{net}."))), "{events:#?}");

    // A restart: the daemon knows A's relay again from A's record.
    d.kill9();
    d.spawn().await;
    let mut c = d.client(TEAM_A).await;
    let out = via_proxy(&mut c, &a.id, &connect("127.0.0.1", allowed)).await;
    assert!(out.contains("hello"), "A's egress after the restart: {out:?}");

    // A delete takes the relay with it; its token opens nothing any more.
    c.delete_sandbox(proto::DeleteSandboxRequest { id: a.id.clone() }).await.unwrap();
    assert!(!swarm.services().await.contains(&format!("sandpit-{}-relay", a.id)));
    let out = from_host(&proxy, &format!("SANDPIT-RELAY {token}\n"), &head).await;
    assert!(out.is_empty(), "a deleted sandbox's token: {out:?}");

    // B's relay ends (it is never restarted: a new task would have a new
    // address): B has no way out, and is recorded lost, saying why.
    let relay = swarm.docker(1).list_tasks(None::<bollard::query_parameters::ListTasksOptions>).await.unwrap();
    let relay = relay
        .into_iter()
        .find(|t| {
            let labels = t.spec.as_ref().and_then(|s| s.container_spec.as_ref()).and_then(|c| c.labels.as_ref());
            labels.and_then(|l| l.get("sandpit.relay-for")) == Some(&b.id)
                && t.status.as_ref().and_then(|s| s.state) == Some(bollard::models::TaskState::RUNNING)
        })
        .expect("B's relay task");
    let node = swarm.nodes.iter().position(|n| relay.node_id.as_deref() == Some(n.id.as_str())).unwrap() + 1;
    let container = relay.status.unwrap().container_status.unwrap().container_id.unwrap();
    swarm
        .docker(node)
        .kill_container(&container, None::<bollard::query_parameters::KillContainerOptions>)
        .await
        .unwrap();
    let lost = eventually(Duration::from_secs(30), "B to be recorded lost", || {
        let mut c = c.clone();
        let id = b.id.clone();
        async move { Some(get(&mut c, &id).await).filter(|s| state(s) == SandboxState::Lost) }
    })
    .await;
    assert!(lost.state_reason.contains("egress relay ended"), "{}", lost.state_reason);
    for sb in [&b, &iso] {
        c.delete_sandbox(proto::DeleteSandboxRequest { id: sb.id.clone() }).await.unwrap();
    }
    eventually(Duration::from_secs(30), "every service and sandbox overlay to go", || async {
        let nets = swarm.docker(1).list_networks(None::<bollard::query_parameters::ListNetworksOptions>).await.unwrap();
        let left = nets
            .iter()
            .filter_map(|n| n.name.as_deref())
            .filter(|n| n.starts_with("sandpit-") && !n.starts_with("sandpit-egress-"))
            .count();
        (swarm.services().await.is_empty() && left == 0).then_some(())
    })
    .await;
    verify(&d).await;
}
