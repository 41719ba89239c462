//! Network modes for real: what a sandbox of each mode can and cannot reach.
//! Every target is on this machine: a listener the test binds on all host
//! addresses, the daemon's own API port, a container on Docker's default
//! bridge, and other sandboxes.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::CreateContainerOptionsBuilder;
use futures_util::StreamExt;
use sandpit::proto::{self, SandboxState};
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
    // This daemon's chain only: other tests' daemons add rules of their own.
    let labels =
        docker().await.inspect_container(&iso_a.container_id, None).await.unwrap().config.unwrap().labels.unwrap();
    let short = labels["sandpit.instance"][..12].to_string();
    let chain_rules = || {
        let out = std::process::Command::new("iptables").args(["-S"]).output().unwrap();
        let (input, forward) = (format!("-j SANDPIT-{short}"), format!("-j SANDPITF-{short}"));
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.ends_with(&input) || l.ends_with(&forward)).count()
    };
    let before = chain_rules();
    assert_eq!(before, 6, "an INPUT and a DOCKER-USER rule per sandbox network");
    for sb in [&iso_a, &iso_b, &open] {
        let del = c.delete_sandbox(proto::DeleteSandboxRequest { id: sb.id.clone() }).await.unwrap().into_inner();
        assert_eq!(state(&del), SandboxState::Deleted);
        let net = docker().await.inspect_network(&format!("sandpit-{}", sb.id), None).await;
        assert!(net.is_err(), "network of {} removed", sb.id);
    }
    assert_eq!(chain_rules(), 0, "rules go with their networks");
}

/// This daemon's rules (`iptables -S` lines) that jump to, or are in, its chains.
fn rules_of(short: &str) -> Vec<String> {
    let out = std::process::Command::new("iptables").args(["-S"]).output().unwrap();
    let chains = [format!("SANDPIT-{short}"), format!("SANDPITF-{short}")];
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
async fn via_proxy(c: &mut Client, id: &str, request: &str) -> String {
    let script = format!(
        r#"p=${{HTTP_PROXY#http://}}; exec 3<>/dev/tcp/${{p%:*}}/${{p#*:}} || exit 9; printf '{request}' >&3; timeout 3 cat <&3"#
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
}
