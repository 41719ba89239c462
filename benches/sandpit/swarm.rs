//! Scenario `swarm` (only when named): sandboxes on a Docker Swarm of 3
//! nodes against the same on a swarm of 1, in one run, each beside raw
//! Docker Swarm on the same swarm.
//!
//! Each swarm is built on this machine by `scripts/swarm-harness.sh`
//! (engines in network namespaces of their own, every node labelled for
//! OFFICIAL and `container` isolation) and torn down at the end, pass or
//! fail. Per swarm:
//! - raw: `n_cold` sequential creates of an internal overlay and a service
//!   of one task on it (the daemon's own recipe, through bollard: network
//!   create, service create with the same CPU and memory limits and
//!   reservations as Sandpit's profile of the phase, task list polled every
//!   50 ms until running), then the same `n_burst` at a time 16 at once;
//! - Sandpit (a `sandpitd` with `[swarm]`): `n_cold` sequential creates of
//!   an isolated sandbox (0.25 CPU), as many of an allowlist one (its
//!   relay runs first), `n_warm` claims each from a full warm
//!   pool, and a burst of `n_burst` at 16 at once (0.01 CPU each, so that
//!   they fit on one node; a quota that small slows each start by about a
//!   second, raw's too), with how the burst spread over the
//!   nodes; then capacity: sandboxes reserving half a CPU each, created
//!   until the swarm refuses one (`RESOURCE_EXHAUSTED`).
//!
//! Deletes are not timed. Nothing is asserted.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use bollard::models::{
    Limit, NetworkAttachmentConfig, NetworkCreateRequest, ResourceObject, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::Docker;
use futures_util::{stream, StreamExt};
use sandpit_proto::{self as proto, CreateSandboxRequest};
use serde_json::{json, Value};

use super::harness::{ttl, unique, Client, Daemon, Result, IMAGE};
use super::stats::{header, json_opt, ms, round3, row, Summary};
use super::{Ctx, CONCURRENCY, LONG_TTL};

const HARNESS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/swarm-harness.sh");
const SWARM_PROFILE: &str = "bench-swarm";
const SWARM_WARM_PROFILE: &str = "bench-swarm-warm";
const SWARM_BIG_PROFILE: &str = "bench-swarm-big";
const SWARM_BURST_PROFILE: &str = "bench-swarm-burst";
const SWARM_ALLOW_PROFILE: &str = "bench-swarm-allow";
/// CPUs of the cold creates, as the one-engine benchmark's profile.
const COLD_CPUS: f64 = 0.25;
/// CPUs of the burst and the warm pool: small, so that 100 fit on one node
/// (Swarm places by reservations: a node holds CPUs / cpus sandboxes).
const BURST_CPUS: f64 = 0.01;
/// CPUs each sandbox of the capacity check reserves.
const BIG_CPUS: f64 = 0.5;

/// A swarm of this machine's engines; torn down when dropped.
struct Swarm {
    name: String,
    sockets: Vec<String>,
    hostnames: Vec<String>,
    /// The nodes' addresses.
    addresses: Vec<String>,
}

impl Swarm {
    fn up(nodes: usize) -> Result<Swarm> {
        let name = unique("bs").replace('-', "")[..8].to_string();
        let mut args = vec!["up".to_string(), name.clone(), nodes.to_string(), "--image".into(), IMAGE.into()];
        for i in 1..=nodes {
            for label in ["sandpit.isolation.container=true", "sandpit.classification.OFFICIAL=true"] {
                args.push("--label".into());
                args.push(format!("n{i}:{label}"));
            }
        }
        let out = Command::new("bash").arg(HARNESS).args(&args).output()?;
        let mut swarm = Swarm { name, sockets: Vec::new(), hostnames: Vec::new(), addresses: Vec::new() };
        if !out.status.success() {
            return Err(format!("swarm-harness.sh up failed: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 6 {
                swarm.sockets.push(format!("unix://{}", f[2]));
                swarm.hostnames.push(f[4].to_string());
                swarm.addresses.push(f[5].to_string());
            }
        }
        Ok(swarm)
    }

    fn manager(&self) -> Result<Docker> {
        Ok(Docker::connect_with_unix(&self.sockets[0], 120, bollard::API_DEFAULT_VERSION)?)
    }

    /// With the host as the nodes reach it for allowlist sandboxes' relays.
    fn config(&self) -> String {
        let net = self.addresses[0].rsplit_once('.').map_or("", |(net, _)| net);
        let mut c = format!(
            "[swarm]\nmanager = \"{}\"\negress_address = \"{net}.1\"\negress_sources = [\"{net}.0/24\"]\n",
            self.sockets[0]
        );
        for (host, name) in self.sockets.iter().zip(&self.hostnames) {
            c.push_str(&format!("[[swarm.nodes]]\nname = \"{name}\"\nhost = \"{host}\"\n"));
        }
        c
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(HARNESS).args(["down", &self.name]).output();
    }
}

// ---- raw Docker Swarm ----------------------------------------------------

/// An internal overlay and a service of one never-restarted task on it,
/// until the task runs: the raw equivalent of one sandbox's create.
async fn raw_create(d: &Docker, name: &str, cpus: f64) -> Result<Duration> {
    let t = Instant::now();
    let net = d
        .create_network(NetworkCreateRequest {
            name: name.into(),
            driver: Some("overlay".into()),
            internal: Some(true),
            ..Default::default()
        })
        .await?;
    let spec = ServiceSpec {
        name: Some(name.into()),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(IMAGE.into()),
                command: Some(vec!["sleep".into(), "infinity".into()]),
                read_only: Some(true),
                init: Some(true),
                ..Default::default()
            }),
            // The same limits and reservations as the Sandpit profile of
            // the same phase: a small CPU quota slows a container's start
            // (CFS throttles runc and the init), so both sides get the same.
            resources: Some(TaskSpecResources {
                limits: Some(Limit {
                    nano_cpus: Some((cpus * 1e9) as i64),
                    memory_bytes: Some(16 << 20),
                    ..Default::default()
                }),
                reservations: Some(ResourceObject {
                    nano_cpus: Some((cpus * 1e9) as i64),
                    memory_bytes: Some(16 << 20),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                ..Default::default()
            }),
            networks: Some(vec![NetworkAttachmentConfig { target: Some(net.id), ..Default::default() }]),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
            ..Default::default()
        }),
        ..Default::default()
    };
    d.create_service(spec, None).await?;
    let filters = HashMap::from([("service".to_string(), vec![name.to_string()])]);
    loop {
        let opts = bollard::query_parameters::ListTasksOptionsBuilder::default().filters(&filters).build();
        let tasks = d.list_tasks(Some(opts)).await?;
        if tasks.iter().any(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING)) {
            return Ok(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(120) {
            return Err(format!("raw service {name} did not run in 120 s").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn raw_remove(d: &Docker, name: &str) {
    let _ = d.delete_service(name).await;
    for _ in 0..600 {
        match d.remove_network(name).await {
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) | Ok(()) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

// ---- Sandpit on the swarm ------------------------------------------------

async fn create(
    client: &Client,
    experiment: &str,
    profile: &str,
) -> std::result::Result<(proto::Sandbox, Duration), String> {
    let req = CreateSandboxRequest {
        experiment: experiment.into(),
        profile: profile.into(),
        classification: "OFFICIAL".into(),
        ttl: ttl(LONG_TTL),
        ..Default::default()
    };
    let t = Instant::now();
    let sb = client.clone().create_sandbox(req).await.map_err(|s| format!("{}: {}", s.code(), s.message()))?;
    Ok((sb.into_inner(), t.elapsed()))
}

async fn delete_all(client: &Client, ids: &[String]) {
    stream::iter(ids.iter().cloned())
        .for_each_concurrent(CONCURRENCY, |id| {
            let mut c = client.clone();
            async move {
                let _ = c.delete_sandbox(proto::DeleteSandboxRequest { id }).await;
            }
        })
        .await;
}

/// Waits (untimed) until the warm pool holds `size`.
async fn wait_full(profiles: &mut super::harness::ProfileClient, size: u32) -> Result<()> {
    let t = Instant::now();
    loop {
        let pools = profiles.list_pools(proto::ListPoolsRequest {}).await?.into_inner().pools;
        if pools.iter().any(|p| p.profile == SWARM_WARM_PROFILE && p.warm >= size) {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(300) {
            return Err(format!("{SWARM_WARM_PROFILE} pool not full after 300 s").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The figures of one swarm.
async fn on_swarm(ctx: &Ctx, nodes: usize, n_cold: usize, n_warm: usize, n_burst: usize) -> Result<Value> {
    let t = Instant::now();
    let swarm = tokio::task::spawn_blocking(move || Swarm::up(nodes)).await??;
    println!("    swarm of {nodes} node(s) {} up in {:.1} s", swarm.name, t.elapsed().as_secs_f64());
    let d = swarm.manager()?;

    // Raw: sequential, then a burst.
    let mut raw_cold = Vec::new();
    for i in 0..n_cold {
        let name = format!("rawbench-{}-{i}", swarm.name);
        raw_cold.push(raw_create(&d, &name, COLD_CPUS).await?);
        raw_remove(&d, &name).await;
    }
    let names: Vec<String> = (0..n_burst).map(|i| format!("rawburst-{}-{i}", swarm.name)).collect();
    let t = Instant::now();
    let raw_burst: Vec<Result<Duration>> =
        stream::iter(names.iter()).map(|n| raw_create(&d, n, BURST_CPUS)).buffer_unordered(CONCURRENCY).collect().await;
    let raw_wall = t.elapsed();
    stream::iter(names.iter()).for_each_concurrent(CONCURRENCY, |n| raw_remove(&d, n)).await;
    let raw_ok: Vec<Duration> = raw_burst.into_iter().filter_map(|r| r.ok()).collect();

    // Sandpit: a daemon on this swarm with an isolated profile and a warm pool of it.
    // Relays keep the proxy's port: a fixed one (free now).
    let egress_port = std::net::TcpListener::bind("0.0.0.0:0")?.local_addr()?.port();
    let mut daemon = Daemon::prepare_with(&ctx.run, egress_port, &swarm.config())?;
    let profile = |pool: usize, cpus: f64| {
        format!(
            "description = \"benchmark on a swarm\"\nmax_classification = \"OFFICIAL\"\nimages = [\"{IMAGE}\"]\n\
             command = [\"sleep\", \"infinity\"]\nwarm_pool = {pool}\n[resources]\ncpus = {cpus}\nmemory = \"16MiB\"\n\
             pids = 32\ntmpfs = \"8MiB\"\n[lifetime]\ndefault_ttl = \"30m\"\nmax_ttl = \"2h\"\nmax_lifetime = \"4h\"\n\
             [network]\nmode = \"isolated\"\n"
        )
    };
    std::fs::write(daemon.profiles_dir().join(format!("{SWARM_PROFILE}.toml")), profile(0, COLD_CPUS))?;
    std::fs::write(daemon.profiles_dir().join(format!("{SWARM_BURST_PROFILE}.toml")), profile(0, BURST_CPUS))?;
    std::fs::write(
        daemon.profiles_dir().join(format!("{SWARM_WARM_PROFILE}.toml")),
        profile(n_warm.min(5), BURST_CPUS),
    )?;
    std::fs::write(daemon.profiles_dir().join(format!("{SWARM_BIG_PROFILE}.toml")), profile(0, BIG_CPUS))?;
    let allow = profile(0, COLD_CPUS).replace(
        "mode = \"isolated\"\n",
        "mode = \"allowlist\"\n[[network.allow]]\nhost = \"127.0.0.1\"\nport = 9\nresidency = \"UK\"\n",
    );
    std::fs::write(daemon.profiles_dir().join(format!("{SWARM_ALLOW_PROFILE}.toml")), allow)?;
    daemon.start().await?;
    let experiment = daemon.new_experiment().await?;
    let client = daemon.client().await?;
    let mut profiles = daemon.profile_client().await?;

    // A pool filling beside the cold creates would slow them: full first.
    let pool = n_warm.min(5) as u32;
    wait_full(&mut profiles, pool).await?;
    let mut cold = Vec::new();
    for _ in 0..n_cold {
        let (sb, took) = create(&client, &experiment, SWARM_PROFILE).await?;
        cold.push(took);
        delete_all(&client, &[sb.id]).await;
    }
    // Allowlist: its relay runs before the sandbox's service is made.
    let mut cold_allow = Vec::new();
    for _ in 0..n_cold {
        let (sb, took) = create(&client, &experiment, SWARM_ALLOW_PROFILE).await?;
        cold_allow.push(took);
        delete_all(&client, &[sb.id]).await;
    }

    // Warm claims, each from a full pool.
    let mut warm = Vec::new();
    let mut missed = 0;
    for _ in 0..n_warm {
        wait_full(&mut profiles, pool).await?;
        let before = profiles.list_pools(proto::ListPoolsRequest {}).await?.into_inner().pools;
        let claims_before = before.iter().find(|p| p.profile == SWARM_WARM_PROFILE).map_or(0, |p| p.claims);
        let (sb, took) = create(&client, &experiment, SWARM_WARM_PROFILE).await?;
        let after = profiles.list_pools(proto::ListPoolsRequest {}).await?.into_inner().pools;
        if after.iter().find(|p| p.profile == SWARM_WARM_PROFILE).map_or(0, |p| p.claims) == claims_before {
            missed += 1;
        }
        warm.push(took);
        delete_all(&client, &[sb.id]).await;
    }

    wait_full(&mut profiles, pool).await?;
    let t = Instant::now();
    let burst: Vec<_> = stream::iter(0..n_burst)
        .map(|_| create(&client, &experiment, SWARM_BURST_PROFILE))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let wall = t.elapsed();
    let (mut ids, mut lat, mut failures, mut spread) = (Vec::new(), Vec::new(), Vec::new(), BTreeMap::new());
    for r in burst {
        match r {
            Ok((sb, took)) => {
                *spread.entry(sb.node.clone()).or_insert(0usize) += 1;
                ids.push(sb.id);
                lat.push(took);
            }
            Err(e) => failures.push(e),
        }
    }
    delete_all(&client, &ids).await;

    // Capacity: sandboxes reserving BIG_CPUS each, one at a time, until the
    // swarm refuses one (each node reserves what it has: this machine's CPUs).
    let (mut big, mut refusal) = (Vec::new(), String::new());
    while big.len() < 64 {
        match create(&client, &experiment, SWARM_BIG_PROFILE).await {
            Ok((sb, _)) => big.push(sb.id),
            Err(e) => {
                refusal = e;
                break;
            }
        }
    }
    delete_all(&client, &big).await;
    daemon.terminate(Duration::from_secs(15));

    let rate = ids.len() as f64 / wall.as_secs_f64();
    let raw_rate = raw_ok.len() as f64 / raw_wall.as_secs_f64();
    println!("    {nodes} node(s):");
    header();
    row("      raw cold create (overlay + service)", Summary::of(&raw_cold));
    row("      Sandpit cold create", Summary::of(&cold));
    row("      Sandpit cold create, allowlist (relay)", Summary::of(&cold_allow));
    row("      Sandpit warm claim", Summary::of(&warm));
    row("      raw burst create", Summary::of(&raw_ok));
    row("      Sandpit burst create", Summary::of(&lat));
    println!(
        "      burst of {n_burst}: raw {}/{n_burst} in {:.1} s ({raw_rate:.1}/s); Sandpit {}/{n_burst} in {:.1} s ({rate:.1}/s), {} failed; spread {spread:?}",
        raw_ok.len(),
        raw_wall.as_secs_f64(),
        ids.len(),
        wall.as_secs_f64(),
        failures.len()
    );
    println!("      capacity: {} sandboxes of {BIG_CPUS} CPUs fitted, then: {refusal}", big.len());
    Ok(json!({
        "nodes": nodes,
        "raw_cold": json_opt(Summary::of(&raw_cold)),
        "cold": json_opt(Summary::of(&cold)),
        "cold_allowlist": json_opt(Summary::of(&cold_allow)),
        "warm_claim": json_opt(Summary::of(&warm)),
        "warm_missed": missed,
        "raw_burst": {"created": raw_ok.len(), "wall_ms": round3(ms(raw_wall)), "per_second": round3(raw_rate), "latency": json_opt(Summary::of(&raw_ok))},
        "capacity": {"cpus_each": BIG_CPUS, "fitted": big.len(), "refusal": refusal},
        "burst": {"created": ids.len(), "failed": failures.len(), "failures": failures.iter().take(5).collect::<Vec<_>>(), "wall_ms": round3(ms(wall)), "per_second": round3(rate), "latency": json_opt(Summary::of(&lat)), "spread": spread},
    }))
}

pub async fn swarm(ctx: &mut Ctx, n_cold: usize, n_warm: usize, n_burst: usize) -> Result<Value> {
    println!(
        "[swarm] cold create ({n_cold}), warm claim ({n_warm}) and a burst of {n_burst} ({CONCURRENCY} at a time), \
         isolated sandboxes on a swarm of 3 nodes and of 1, raw Swarm on each in the same run"
    );
    let three = on_swarm(ctx, 3, n_cold, n_warm, n_burst).await?;
    let one = on_swarm(ctx, 1, n_cold, n_warm, n_burst).await?;
    Ok(json!({ "three_nodes": three, "one_node": one }))
}
