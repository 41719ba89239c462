//! Network modes for real: what a sandbox of each mode can and cannot reach,
//! and the host firewall rules behind that. Every target is on this machine:
//! a listener the test binds on all host addresses, the daemon's own API and
//! proxy ports, a container on Docker's default bridge, other sandboxes, and
//! network namespaces the test makes behind veth pairs.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::CreateContainerOptionsBuilder;
use futures_util::StreamExt;
use sandpit_proto::{self as proto, SandboxState};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::lifecycle::exec;
use crate::support::*;

pub fn profile(mode: &str, class: &str, extra: &str) -> String {
    format!(
        "max_classification = \"{class}\"\nimages = [\"{{image}}\"]\ncommand = [\"sleep\", \"infinity\"]\n{extra}\n[network]\nmode = \"{mode}\"\n"
    )
}

/// A listener on all host addresses that greets whoever connects.
pub async fn greeter() -> u16 {
    let l = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(b"hello\n").await;
        }
    });
    port
}

/// Whether `nc` inside the sandbox gets a greeting from `host:port`.
pub async fn reaches(c: &mut Client, id: &str, host: &str, port: u16) -> bool {
    let (out, _, _) = exec(c, id, &["busybox", "nc", "-w", "2", host, &port.to_string()]).await;
    out.contains("hello")
}

/// The host's own IPv4 addresses (docker0 and the rest), loopback aside.
pub fn host_addresses() -> Vec<String> {
    let out = std::process::Command::new("hostname").arg("-I").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|a| a.parse::<Ipv4Addr>().is_ok_and(|ip| !ip.is_loopback()))
        .map(String::from)
        .collect()
}

fn gateway(sb: &proto::Sandbox) -> String {
    let ip: Ipv4Addr = sb.address.parse().expect("sandbox address");
    Ipv4Addr::from(u32::from(ip) - 1).to_string()
}

async fn outside_service(run: &str) -> (String, String) {
    let docker = docker().await;
    let body = ContainerCreateBody {
        image: Some(image().to_string()),
        cmd: Some(vec!["sh".into(), "-c".into(), "while true; do echo hello | busybox nc -l -p 8080; done".into()]),
        labels: Some(HashMap::from([(TEST_RUN_LABEL.to_string(), run.to_string())])),
        ..Default::default()
    };
    let opts = CreateContainerOptionsBuilder::default().name(&unique("outside")).build();
    let id = docker.create_container(Some(opts), body).await.unwrap().id;
    docker.start_container(&id, None).await.unwrap();
    let nets = docker.inspect_container(&id, None).await.unwrap().network_settings.unwrap().networks.unwrap();
    let ip = nets.values().find_map(|n| n.ip_address.clone().filter(|a| !a.is_empty())).expect("bridge address");
    (id, ip)
}

#[tokio::test(flavor = "multi_thread")]
async fn isolated_none_and_open_sandboxes_reach_nothing_they_must_not() {
    let d = Daemon::with(Options {
        profiles: vec![
            ("test-isolated".into(), profile("isolated", "OFFICIAL-SENSITIVE", "")),
            ("test-open".into(), profile("open", "OFFICIAL", "")),
        ],
        ..Default::default()
    })
    .await;
    let port = greeter().await;
    let api_port: u16 = d.addr.rsplit(':').next().unwrap().parse().unwrap();
    let (_, outside_ip) = outside_service(&d.run).await;
    let mut c = d.client(TEAM_A).await;
    let create = |profile: &str| proto::CreateSandboxRequest { profile: profile.into(), ..create_req(&d.exp_a, 300) };

    let none = c.create_sandbox(create(PROFILE)).await.unwrap().into_inner();
    let iso_a = c.create_sandbox(create("test-isolated")).await.unwrap().into_inner();
    let iso_b = c.create_sandbox(create("test-isolated")).await.unwrap().into_inner();
    let open = c.create_sandbox(create("test-open")).await.unwrap().into_inner();
    assert_eq!(none.network_mode, "none");
    assert!(none.address.is_empty());
    assert_eq!((iso_a.network_mode.as_str(), open.network_mode.as_str()), ("isolated", "open"));
    assert_ne!(iso_a.address, iso_b.address);

    // Positive controls: the targets are up and reachable from where they should be.
    let mut direct = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = direct.shutdown().await;
    let (out, _, _) = crate::lifecycle::exec(
        &mut c,
        &iso_b.id,
        &["sh", "-c", "(while true; do echo hello | busybox nc -l -p 9000; done) >/dev/null 2>&1 &"],
    )
    .await;
    assert!(out.is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(reaches(&mut c, &iso_b.id, "127.0.0.1", 9000).await, "the in-sandbox listener works");

    let hosts = host_addresses();
    assert!(!hosts.is_empty());
    for sb in [&none, &iso_a, &open] {
        let mut targets: Vec<(String, u16)> =
            hosts.iter().flat_map(|h| [(h.clone(), port), (h.clone(), api_port)]).collect();
        targets.push((outside_ip.clone(), 8080));
        targets.push(("169.254.169.254".into(), 80));
        if !sb.address.is_empty() {
            targets.push((gateway(sb), port));
            targets.push((gateway(sb), api_port));
        }
        if sb.id != open.id {
            targets.push((iso_b.address.clone(), 9000));
        }
        for (host, p) in targets {
            assert!(!reaches(&mut c, &sb.id, &host, p).await, "{} sandbox reached {host}:{p}", sb.network_mode);
        }
    }

    // Networks and host rules go with their sandboxes.
    // This daemon's chains only: other tests' daemons add rules of their own.
    let short = short(&instance_of(&iso_a.container_id).await);
    let chain_rules = || {
        let out = std::process::Command::new("iptables").args(["-S"]).output().unwrap();
        let jumps: Vec<String> = chain_names(&short).iter().map(|c| format!("-j {c}")).collect();
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| jumps.iter().any(|j| l.ends_with(j))).count()
    };
    let before = chain_rules();
    assert_eq!(before, 7, "an INPUT and a DOCKER-USER rule per sandbox network, and the proxy port's guard");
    for sb in [&iso_a, &iso_b, &open] {
        let del = c.delete_sandbox(proto::DeleteSandboxRequest { id: sb.id.clone() }).await.unwrap().into_inner();
        assert_eq!(state(&del), SandboxState::Deleted);
        let net = docker().await.inspect_network(&format!("sandpit-{}", sb.id), None).await;
        assert!(net.is_err(), "network of {} removed", sb.id);
    }
    assert_eq!(chain_rules(), 0, "rules go with their networks");
    assert_eq!(chains_left(&short), Vec::<String>::new(), "the chains go with the last network");
}

/// The daemon instance that owns a container.
pub async fn instance_of(container_id: &str) -> String {
    let config = docker().await.inspect_container(container_id, None).await.unwrap().config.unwrap();
    config.labels.unwrap()["sandpit.instance"].clone()
}

/// The part of an instance id its chain names carry.
pub fn short(instance: &str) -> String {
    instance[..sandpit_docker::firewall::SHORT].to_string()
}

fn chain_names(short: &str) -> Vec<String> {
    sandpit_docker::firewall::PREFIXES.iter().map(|p| format!("{p}{short}")).collect()
}

/// This daemon's chains that still exist.
fn chains_left(short: &str) -> Vec<String> {
    let out = std::process::Command::new("iptables").args(["-S"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    chain_names(short).into_iter().filter(|c| text.lines().any(|l| l == format!("-N {c}"))).collect()
}

/// This daemon's rules (`iptables -S` lines) that jump to, or are in, its chains.
fn rules_of(short: &str) -> Vec<String> {
    let out = std::process::Command::new("iptables").args(["-S"]).output().unwrap();
    let chains = chain_names(short);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| chains.iter().any(|c| l.ends_with(&format!("-j {c}")) || l.starts_with(&format!("-A {c} "))))
        .map(String::from)
        .collect()
}

fn iptables(args: &[&str]) {
    let ok = std::process::Command::new("iptables").args(args).status().unwrap().success();
    assert!(ok, "iptables {args:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn firewall_rules_removed_behind_the_daemons_back_are_restored() {
    let d = Daemon::with(Options {
        reconcile_interval: "1s",
        profiles: vec![("test-isolated".into(), profile("isolated", "OFFICIAL-SENSITIVE", ""))],
        ..Default::default()
    })
    .await;
    let mut c = d.client(TEAM_A).await;
    let req = proto::CreateSandboxRequest { profile: "test-isolated".into(), ..create_req(&d.exp_a, 300) };
    let sb = c.create_sandbox(req).await.unwrap().into_inner();
    let labels =
        docker().await.inspect_container(&sb.container_id, None).await.unwrap().config.unwrap().labels.unwrap();
    let short = labels["sandpit.instance"][..12].to_string();
    let chain = format!("SANDPIT-{short}");
    let installed = rules_of(&short);
    assert!(installed.iter().any(|l| l.starts_with("-A INPUT ") && l.ends_with(&format!("-j {chain}"))));
    assert!(installed.len() > 2, "the chains hold rules: {installed:?}");

    // A firewall reload drops the INPUT jump and empties the chain: the
    // sandbox can reach host ports until reconcile puts them back.
    let jump = installed.iter().find(|l| l.starts_with("-A INPUT ")).unwrap().clone();
    let mut delete: Vec<&str> = vec!["-D"];
    delete.extend(jump.trim_start_matches("-A ").split_whitespace());
    iptables(&delete);
    iptables(&["-F", &chain]);
    assert!(rules_of(&short).len() < installed.len());

    eventually(Duration::from_secs(15), "rules restored", || {
        let short = short.clone();
        let mut want = installed.clone();
        async move {
            let mut now = rules_of(&short);
            now.sort();
            want.sort();
            (now == want).then_some(())
        }
    })
    .await;
    let port = greeter().await;
    assert!(!reaches(&mut c, &sb.id, &gateway(&sb), port).await, "the host is out of reach again");
    let q = proto::QueryAuditLogRequest { action: "reconcile-firewall-restored".into(), ..Default::default() };
    let events = d.audit(AUDITOR).await.query_audit_log(q).await.unwrap().into_inner().events;
    assert!(!events.is_empty() && events[0].reason.contains(&sb.address[..sb.address.rfind('.').unwrap()]));
    let m = d.scrape().await;
    assert!(m.get("sandpit_reconcile_actions_total", &[("action", "firewall_restored")]) >= 1.0);
}

/// Sends `request` to the proxy on the sandbox's gateway, returns what comes back.
pub async fn via_proxy(c: &mut Client, id: &str, request: &str) -> String {
    let script = format!(
        r#"p=${{HTTP_PROXY#http://}}; exec 3<>/dev/tcp/${{p%:*}}/${{p#*:}} || exit 9; printf '{request}' >&3; timeout 10 cat <&3"#
    );
    let (out, _, _) = exec(c, id, &["bash", "-c", &script]).await;
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn allowlist_reaches_the_listed_destination_through_the_proxy_and_nothing_else() {
    let allowed = greeter().await;
    let other = greeter().await;
    let extra = format!("[[network.allow]]\nhost = \"127.0.0.1\"\nport = {allowed}\nresidency = \"UK\"\n");
    let body = format!(
        "max_classification = \"OFFICIAL-SENSITIVE\"\nimages = [\"{{image}}\"]\ncommand = [\"sleep\", \"infinity\"]\n[network]\nmode = \"allowlist\"\n{extra}"
    );
    let d = Daemon::with(Options { profiles: vec![("test-allow".into(), body)], ..Default::default() }).await;
    let api_port: u16 = d.addr.rsplit(':').next().unwrap().parse().unwrap();
    let mut c = d.client(TEAM_A).await;
    let req = proto::CreateSandboxRequest { profile: "test-allow".into(), ..create_req(&d.exp_a, 300) };
    let sb = c.create_sandbox(req).await.unwrap().into_inner();
    assert_eq!(sb.network_mode, "allowlist");

    let connect =
        |host: &str, port: u16| format!("CONNECT {host}:{port} HTTP/1.1\\r\\nHost: {host}:{port}\\r\\n\\r\\n");
    let out = via_proxy(&mut c, &sb.id, &connect("127.0.0.1", allowed)).await;
    assert!(out.starts_with("HTTP/1.1 200") && out.contains("hello"), "allowed destination through the proxy: {out:?}");
    for (host, port) in [("127.0.0.1", other), ("10.0.0.1", allowed), ("169.254.169.254", 80), ("localhost", allowed)] {
        let out = via_proxy(&mut c, &sb.id, &connect(host, port)).await;
        assert!(out.starts_with("HTTP/1.1 403"), "{host}:{port} must be refused: {out:?}");
        assert!(!out.contains("hello"));
    }
    let get = format!("GET http://127.0.0.1:{other}/ HTTP/1.1\\r\\nHost: 127.0.0.1:{other}\\r\\n\\r\\n");
    assert!(via_proxy(&mut c, &sb.id, &get).await.starts_with("HTTP/1.1 403"));

    // Around the proxy: no direct route to the listener, the API or any host port.
    for (host, port) in [(gateway(&sb), allowed), (gateway(&sb), api_port), ("127.0.0.1".to_string(), allowed)] {
        assert!(!reaches(&mut c, &sb.id, &host, port).await, "reached {host}:{port} directly");
    }
    for h in host_addresses() {
        assert!(!reaches(&mut c, &sb.id, &h, allowed).await, "reached {h}:{allowed} directly");
    }

    // Every decision is on record with the sandbox.
    let q = proto::QueryAuditLogRequest { sandbox: sb.id.clone(), action: "egress".into(), ..Default::default() };
    let events = d.audit(AUDITOR).await.query_audit_log(q).await.unwrap().into_inner().events;
    let allowed_events = events.iter().filter(|e| e.outcome == "succeeded").count();
    let denied_events = events.iter().filter(|e| e.outcome == "denied").count();
    assert_eq!((allowed_events, denied_events), (1, 5), "{events:#?}");
    assert!(events.iter().all(|e| e.experiment == d.exp_a && e.source.starts_with(&sb.address)));

    // A sandbox retrying a refused destination is one record per window, with a count.
    let before = d.scrape().await.get("sandpit_audit_refusals_summarised_total", &[]);
    for _ in 0..10 {
        assert!(via_proxy(&mut c, &sb.id, &connect("127.0.0.1", other)).await.starts_with("HTTP/1.1 403"));
    }
    let q = proto::QueryAuditLogRequest { sandbox: sb.id.clone(), action: "egress".into(), ..Default::default() };
    let now = d.audit(AUDITOR).await.query_audit_log(q).await.unwrap().into_inner().events;
    assert_eq!(now.len(), events.len(), "repeats are counted, not recorded one by one");
    assert_eq!(d.scrape().await.get("sandpit_audit_refusals_summarised_total", &[]), before + 10.0);
}

/// Hundreds of isolated sandboxes at once: subnets come from the daemon's own
/// range, not Docker's default pools (which run out near 31 networks).
#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_isolated_sandboxes_then_all_removed_with_their_networks() {
    const N: usize = 200;
    let d = Daemon::with(Options {
        profiles: vec![("test-isolated".into(), profile("isolated", "OFFICIAL", ""))],
        quotas: format!("sandboxes_per_team = {N}\n"),
        ..Default::default()
    })
    .await;
    let c = d.client(TEAM_A).await;
    let created: Vec<proto::Sandbox> = futures_util::stream::iter(0..N)
        .map(|_| {
            let mut c = c.clone();
            let req = proto::CreateSandboxRequest { profile: "test-isolated".into(), ..create_req(&d.exp_a, 600) };
            async move { c.create_sandbox(req).await.expect("create").into_inner() }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let subnets: std::collections::HashSet<&str> = created.iter().map(|s| s.address.as_str()).collect();
    assert_eq!(subnets.len(), N, "every sandbox its own network");
    let live = c.clone().list_sandboxes(proto::ListSandboxesRequest::default()).await.unwrap().into_inner();
    assert_eq!(live.sandboxes.iter().filter(|s| state(s) == SandboxState::Running).count(), N);
    // Creates that raced each other left one consistent rule set: a hook
    // per network into the host chain and the forward chain, no more.
    let labels = docker().await.inspect_container(&created[0].container_id, None).await.unwrap().config.unwrap();
    let short = labels.labels.unwrap()["sandpit.instance"][..12].to_string();
    let rules = rules_of(&short);
    let hooks = |chain: &str, prefix: &str| {
        let target = format!("-j {prefix}{short}");
        rules.iter().filter(|l| l.starts_with(&format!("-A {chain} -s ")) && l.ends_with(&target)).count()
    };
    assert_eq!(hooks("INPUT", "SANDPIT-"), N, "{rules:#?}");
    let forward = if rules.iter().any(|l| l.starts_with("-A DOCKER-USER ")) { "DOCKER-USER" } else { "FORWARD" };
    assert_eq!(hooks(forward, "SANDPITF-"), N, "{rules:#?}");

    let deleted: Vec<proto::Sandbox> = futures_util::stream::iter(created.iter().map(|s| s.id.clone()))
        .map(|id| {
            let mut c = c.clone();
            async move { c.delete_sandbox(proto::DeleteSandboxRequest { id }).await.expect("delete").into_inner() }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(deleted.iter().all(|s| state(s) == SandboxState::Deleted));
    assert!(d.containers().await.is_empty());
    let filters = HashMap::from([("label".to_string(), vec![format!("{TEST_RUN_LABEL}={}", d.run)])]);
    let opts = bollard::query_parameters::ListNetworksOptionsBuilder::default().filters(&filters).build();
    assert!(docker().await.list_networks(Some(opts)).await.unwrap().is_empty(), "every network removed");
    assert!(rules_of(&short).is_empty() && chains_left(&short).is_empty(), "the rules went with the networks");
    // Each network came and went through the firewall; changes that met
    // waiting for it went in one transaction (how many met depends on timing).
    let m = d.scrape().await;
    let (transactions, changes) =
        (m.get("sandpit_firewall_transactions_total", &[]), m.get("sandpit_firewall_changes_total", &[]));
    assert!(changes >= (2 * N) as f64 && transactions >= 1.0 && transactions <= changes, "{transactions} / {changes}");
    eprintln!("firewall: {changes} network changes in {transactions} transactions");
}

/// A TCP connection from inside the sandbox to `host:port`: `Ok` when
/// accepted, else what the shell said (e.g. "Connection refused").
async fn connect(c: &mut Client, id: &str, host: &str, port: u16) -> Result<(), String> {
    let script = format!("exec 3<>/dev/tcp/{host}/{port} && echo connected");
    let (out, err, _) = exec(c, id, &["timeout", "5", "bash", "-c", &script]).await;
    if out.contains("connected") {
        Ok(())
    } else {
        Err(err)
    }
}

/// The egress proxy's port, as an allowlist sandbox is told it.
async fn proxy_port(c: &mut Client, id: &str) -> u16 {
    let (out, _, _) = exec(c, id, &["sh", "-c", "echo \"$HTTP_PROXY\""]).await;
    out.trim().rsplit(':').next().unwrap().parse().expect("HTTP_PROXY ends in the port")
}

/// The address of Docker's default bridge on the host (what a container
/// that is no sandbox, like a machine on the LAN, reaches the host on).
fn docker0_gateway() -> String {
    let out = std::process::Command::new("ip").args(["-4", "-o", "addr", "show", "docker0"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let inet = text.split_whitespace().skip_while(|w| *w != "inet").nth(1).expect("docker0 has an IPv4 address");
    inet.split('/').next().unwrap().to_string()
}

fn allowlist_profile(port: u16) -> String {
    format!(
        "max_classification = \"OFFICIAL-SENSITIVE\"\nimages = [\"{{image}}\"]\ncommand = [\"sleep\", \"infinity\"]\n\
         [network]\nmode = \"allowlist\"\n[[network.allow]]\nhost = \"127.0.0.1\"\nport = {port}\nresidency = \"UK\"\n"
    )
}

async fn audit_of(d: &Daemon, action: &str) -> Vec<proto::AuditEvent> {
    let q = proto::QueryAuditLogRequest { action: action.into(), ..Default::default() };
    d.audit(AUDITOR).await.query_audit_log(q).await.unwrap().into_inner().events
}

#[tokio::test(flavor = "multi_thread")]
async fn only_allowlist_sandboxes_reach_the_proxy_port() {
    let allowed = greeter().await;
    let d = Daemon::with(Options {
        profiles: vec![
            ("test-isolated".into(), profile("isolated", "OFFICIAL-SENSITIVE", "")),
            ("test-open".into(), profile("open", "OFFICIAL", "")),
            ("test-allow".into(), allowlist_profile(allowed)),
        ],
        ..Default::default()
    })
    .await;
    let mut c = d.client(TEAM_A).await;
    let create = |profile: &str| proto::CreateSandboxRequest { profile: profile.into(), ..create_req(&d.exp_a, 300) };
    let iso = c.create_sandbox(create("test-isolated")).await.unwrap().into_inner();
    let open = c.create_sandbox(create("test-open")).await.unwrap().into_inner();
    let allow = c.create_sandbox(create("test-allow")).await.unwrap().into_inner();
    let port = proxy_port(&mut c, &allow.id).await;

    // The allowlist sandbox reaches the proxy on its gateway, and it is the proxy.
    assert_eq!(connect(&mut c, &allow.id, &gateway(&allow), port).await, Ok(()));
    let answer = via_proxy(&mut c, &allow.id, "CONNECT 127.0.0.1:1 HTTP/1.1\\r\\n\\r\\n").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer:?}");

    // Isolated and open sandboxes are refused by the firewall, not answered by the proxy.
    for sb in [&iso, &open] {
        let refused = connect(&mut c, &sb.id, &gateway(sb), port).await.expect_err("reached the proxy port");
        assert!(refused.contains("refused"), "{} sandbox: {refused}", sb.network_mode);
    }

    // So is a source that is no sandbox at all, as a machine on the LAN would be.
    let script = format!("exec 3<>/dev/tcp/{}/{port} && echo connected", docker0_gateway());
    let out = std::process::Command::new("docker")
        .args(["run", "--rm", "--label", &format!("{TEST_RUN_LABEL}={}", d.run), "--network", "bridge"])
        .args([image(), "timeout", "5", "bash", "-c", &script])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("connected") && stderr.contains("refused"), "{stdout} {stderr}");

    // Loopback is let through (the host's own processes); the proxy closes
    // it unread, and counts rather than audits it.
    let mut local = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("loopback reaches the port");
    let _ = local.write_all(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n").await;
    let mut answer = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut local, &mut answer));
    assert!(read.await.expect("closed at once").is_err() || answer.is_empty(), "answered: {answer:?}");
    assert!(d.scrape().await.get("sandpit_egress_refused_strangers_total", &[]) >= 1.0);
    let egress = audit_of(&d, "egress").await;
    assert!(!egress.is_empty() && egress.iter().all(|e| e.sandbox == allow.id), "{egress:#?}");

    // The rules read back as written: passes of reconcile find nothing to restore.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(audit_of(&d, "reconcile-firewall-restored").await, vec![]);
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_changed_in_our_chains_are_repaired_within_seconds() {
    // Reconcile runs once, at start: only the watch can repair in time.
    let d = Daemon::with(Options {
        reconcile_interval: "1h",
        profiles: vec![("test-isolated".into(), profile("isolated", "OFFICIAL-SENSITIVE", ""))],
        ..Default::default()
    })
    .await;
    let mut c = d.client(TEAM_A).await;
    let req = proto::CreateSandboxRequest { profile: "test-isolated".into(), ..create_req(&d.exp_a, 300) };
    let sb = c.create_sandbox(req).await.unwrap().into_inner();
    let short = short(&instance_of(&sb.container_id).await);
    let (input, forward) = (format!("SANDPIT-{short}"), format!("SANDPITF-{short}"));
    let installed = stable(rules_of(&short));
    let hook = installed.iter().find(|l| l.starts_with("-A INPUT -s ")).expect("the sandbox's INPUT hook").clone();
    let hook_spec: Vec<&str> = hook.trim_start_matches("-A ").split_whitespace().collect();

    let tampering: [(&[&str], &str); 4] = [
        (&["-D", &input, "-j", "REJECT", "--reject-with", "icmp-port-unreachable"], "missing: -j REJECT"),
        (&["-I", &input, "1", "-j", "ACCEPT"], "unexpected: -j ACCEPT"),
        (&[&["-D"], hook_spec.as_slice()].concat(), "INPUT rule put back"),
        (&["-F", &forward], &format!("{forward} rewritten (missing: ")),
    ];
    for (i, (change, said)) in tampering.iter().enumerate() {
        iptables(change);
        assert_ne!(stable(rules_of(&short)), installed, "{change:?} changed nothing");
        eventually(Duration::from_secs(10), &format!("repair of {change:?}"), || {
            let (short, installed) = (short.clone(), installed.clone());
            async move { (stable(rules_of(&short)) == installed).then_some(()) }
        })
        .await;
        let records = eventually(Duration::from_secs(5), "the audit record", || async {
            let r = audit_of(&d, "reconcile-firewall-restored").await;
            (r.len() > i).then_some(r)
        })
        .await;
        assert!(
            records
                .iter()
                .any(|r| r.reason.contains(said) && r.reason.contains(&sb.address[..sb.address.rfind('.').unwrap()])),
            "{said}: {records:#?}"
        );
    }
    let port = greeter().await;
    assert!(!reaches(&mut c, &sb.id, &gateway(&sb), port).await, "the host is out of reach again");
    let m = d.scrape().await;
    assert!(m.get("sandpit_reconcile_actions_total", &[("action", "firewall_restored")]) >= 4.0);

    // A hook of a subnet no network has (one removed behind the daemon's
    // back) is dropped, without a record: nothing was exposed.
    let records = audit_of(&d, "reconcile-firewall-restored").await.len();
    let stray = format!("{}.240/28", &sb.address[..sb.address.rfind('.').unwrap()]);
    iptables(&["-I", "INPUT", "-s", &stray, "-j", &input]);
    eventually(Duration::from_secs(10), "the stray hook dropped", || {
        let (short, installed) = (short.clone(), installed.clone());
        async move { (stable(rules_of(&short)) == installed).then_some(()) }
    })
    .await;
    assert_eq!(audit_of(&d, "reconcile-firewall-restored").await.len(), records);
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// `rules` sorted, without the forward chain's rules that follow the host
/// (its resolvers, and networks it is on outside the private ranges): tests
/// running beside this one add and remove such networks, and the daemon
/// rightly rewrites the chain when they do.
fn stable(rules: Vec<String>) -> Vec<String> {
    let core = ["-d 10.0.0.0/8 ", "-d 172.16.0.0/12 ", "-d 192.168.0.0/16 "];
    sorted(
        rules
            .into_iter()
            .filter(|r| {
                let forward = r.starts_with("-A SANDPITF-");
                !forward
                    || (r.ends_with(" -j RETURN") && !r.contains("--dport 53"))
                    || core.iter().any(|c| r.contains(c))
            })
            .collect(),
    )
}

/// Removes an instance's chains when dropped, pass or fail, for tests
/// that take its data directory away.
struct ChainsOf(String);

impl Drop for ChainsOf {
    fn drop(&mut self) {
        remove_firewall_of(&self.0);
    }
}

fn sandpitd(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandpitd"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_removes_a_killed_daemons_containers_networks_and_rules() {
    let mut d = Daemon::with(Options {
        profiles: vec![
            ("test-isolated".into(), profile("isolated", "OFFICIAL-SENSITIVE", "")),
            ("test-allow".into(), allowlist_profile(9)),
        ],
        ..Default::default()
    })
    .await;
    let mut c = d.client(TEAM_A).await;
    let create = |profile: &str| proto::CreateSandboxRequest { profile: profile.into(), ..create_req(&d.exp_a, 300) };
    let iso = c.create_sandbox(create("test-isolated")).await.unwrap().into_inner();
    c.create_sandbox(create("test-allow")).await.unwrap();
    let instance = instance_of(&iso.container_id).await;
    let _chains = ChainsOf(instance.clone());
    let config = d.dir.path().join("sandpit.toml");
    d.kill9();

    // Listed, marked as this config's, and not removable while its store exists.
    let (code, listing, err) = sandpitd(&config, &["--cleanup"]);
    assert_eq!(code, 0, "{err}");
    let line = listing.lines().find(|l| l.starts_with(&instance)).unwrap_or_else(|| panic!("{listing}"));
    let counts: Vec<usize> = line.split_whitespace().skip(1).take(5).map(|n| n.parse().unwrap()).collect();
    assert_eq!(counts[..4], [2, 2, 0, 3], "containers, networks, volumes, chains: {line}");
    assert!(counts[4] >= 5 + 2 * 2, "the chains' rules and the hooks: {line}");
    assert!(line.ends_with("(this config's store)"), "{line}");
    let (code, _, err) = sandpitd(&config, &["--cleanup", &instance]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("own store"), "{err}");
    assert_eq!(sandpitd(&config, &["--cleanup", "not-an-id"]).0, 64);

    // Its data gone, nothing will ever adopt those sandboxes: cleanup may take them.
    std::fs::remove_dir_all(d.data_dir()).unwrap();
    let (_, listing, _) = sandpitd(&config, &["--cleanup"]);
    assert!(listing.lines().any(|l| l.starts_with(&instance) && !l.contains("this config")), "{listing}");
    let (code, out, err) = sandpitd(&config, &["--cleanup", &instance]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("removed 2 containers, 2 networks, 0 volumes, 3 firewall chains"), "{out}");

    assert!(d.containers().await.is_empty(), "containers removed");
    let filters = HashMap::from([("label".to_string(), vec![format!("{TEST_RUN_LABEL}={}", d.run)])]);
    let opts = bollard::query_parameters::ListNetworksOptionsBuilder::default().filters(&filters).build();
    assert!(docker().await.list_networks(Some(opts)).await.unwrap().is_empty(), "networks removed");
    assert_eq!(rules_of(&short(&instance)), Vec::<String>::new(), "rules removed");
    assert_eq!(chains_left(&short(&instance)), Vec::<String>::new(), "chains removed");
    let (_, listing, _) = sandpitd(&config, &["--cleanup"]);
    assert!(!listing.contains(&instance[..12]), "{listing}");
}

/// A network namespace behind a veth pair, the host on `.1` and a greeter
/// on `.2:8080` of a /30: a destination routed through the host that
/// belongs to nobody else. Removed when dropped.
struct Outside {
    ns: String,
    host_if: String,
    pub addr: String,
    server: Option<std::process::Child>,
}

impl Outside {
    /// On a free /30 of `a.b.c.0/24`, or of `a.b.0.0/16` without `c`.
    fn new(a: u8, b: u8, c: Option<u8>) -> Outside {
        let id = unique("o");
        let tag = &id[id.len() - 8..];
        let mut o = Outside {
            ns: format!("sandpit-test-{tag}"),
            host_if: format!("sph{tag}"),
            addr: String::new(),
            server: None,
        };
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ip(&["netns", "add", &o.ns]);
        let ns_if = format!("spn{tag}");
        ip(&["link", "add", &o.host_if, "type", "veth", "peer", "name", &ns_if, "netns", &o.ns]);
        let addrs = std::process::Command::new("ip").args(["-4", "-o", "addr"]).output().unwrap().stdout;
        let (c, d) = (0..16)
            .map(|_| {
                let mut r = [0u8; 2];
                getrandom::fill(&mut r).unwrap();
                (c.unwrap_or(r[0]), r[1] & 0xfc)
            })
            .find(|(c, d)| !String::from_utf8_lossy(&addrs).contains(&format!(" {a}.{b}.{c}.{}/", d + 1)))
            .expect("a free /30");
        ip(&["addr", "add", &format!("{a}.{b}.{c}.{}/30", d + 1), "dev", &o.host_if]);
        ip(&["link", "set", &o.host_if, "up"]);
        ip(&["-n", &o.ns, "addr", "add", &format!("{a}.{b}.{c}.{}/30", d + 2), "dev", &ns_if]);
        ip(&["-n", &o.ns, "link", "set", &ns_if, "up"]);
        o.addr = format!("{a}.{b}.{c}.{}", d + 2);
        o.server = Some(
            std::process::Command::new("ip")
                .args(["netns", "exec", &o.ns, "busybox", "nc", "-ll", "-p", "8080", "-e", "busybox", "echo", "hello"])
                .spawn()
                .unwrap(),
        );
        o
    }

    /// `a.b.c.d/30` of the veth pair, as the host's routes have it.
    fn network(&self) -> String {
        let ip: Ipv4Addr = self.addr.parse().unwrap();
        format!("{}/30", Ipv4Addr::from(u32::from(ip) & !3))
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = std::process::Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn open_sandboxes_reach_no_benchmarking_range_and_no_network_the_host_is_on() {
    // 198.18.0.0/15 is in the table of non-public ranges. 192.31.196.0/24
    // (AS112, a sink for stray reverse lookups) is not: it is refused only
    // because the host is now directly on part of it. Neither is reachable
    // from this machine otherwise, and both go with the namespaces.
    let bench = Outside::new(198, 18, None);
    let lan = Outside::new(192, 31, Some(196));
    let d = Daemon::with(Options {
        profiles: vec![("test-open".into(), profile("open", "OFFICIAL", ""))],
        ..Default::default()
    })
    .await;
    let mut c = d.client(TEAM_A).await;
    let req = proto::CreateSandboxRequest { profile: "test-open".into(), ..create_req(&d.exp_a, 300) };
    let open = c.create_sandbox(req).await.unwrap().into_inner();

    for o in [&bench, &lan] {
        // Control: the destination is up and routed through the host.
        let greeting = eventually(Duration::from_secs(5), "the greeter", || async {
            let mut s = tokio::net::TcpStream::connect((o.addr.as_str(), 8080)).await.ok()?;
            let mut buf = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut s, &mut buf).await.ok()?;
            Some(buf)
        })
        .await;
        assert_eq!(greeting, "hello\n");
        assert!(!reaches(&mut c, &open.id, &o.addr, 8080).await, "the open sandbox reached {}", o.addr);
    }
    let short = short(&instance_of(&open.container_id).await);
    let rules = rules_of(&short);
    for range in ["198.18.0.0/15".to_string(), lan.network()] {
        let rule = format!("-A SANDPITF-{short} -d {range} -j REJECT --reject-with icmp-net-unreachable");
        assert!(rules.contains(&rule), "{rule} in {rules:#?}");
    }
    // And the host's own addresses, on every interface.
    let port = greeter().await;
    for h in host_addresses() {
        assert!(!reaches(&mut c, &open.id, &h, port).await, "the open sandbox reached {h}:{port}");
    }
}
