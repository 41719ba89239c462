//! Sandpit against the raw Docker engine, in one run on this machine.
//!
//!     cargo bench --bench sandpit -- [--quick] [--json-out FILE] [--only SCENARIO[,SCENARIO...]]
//!
//! `fleet` and `failover` (several daemons on PostgreSQL, see
//! benches/sandpit/fleet.rs) and `swarm` (a swarm of 3 engines against 1 on
//! this machine, see benches/sandpit/swarm.rs) run only when named, like
//! `soak` and `density`.
//!
//! Spawns the real release `sandpitd` on a temporary config and data
//! directory and drives it over gRPC; the baseline drives the same Docker
//! engine directly through bollard with the daemon's own hardened container
//! body (`sandpit_docker::create_body`). Measures and prints; asserts
//! no timings. Every container either side makes carries
//! `sandpit.bench-run=<run id>` and is removed however the run ends.
//!
//! Scenarios: `cold`, `burst`, `warm-pool`, `expiry`, `exit` (benches/sandpit/exit.rs), `scale`, `isolation`
//! (runc against gVisor; needs runsc registered as `runsc-none`, see
//! scripts/register-runsc.sh; benches/sandpit/isolation.rs), `work` (cp
//! throughput and port-forward round trips against `docker cp`, exec+cat
//! and `docker exec -i nc`; benches/sandpit/work.rs), and `soak`
//! (only with `--only soak`; see benches/sandpit/soak.rs). See README
//! "Benchmarks".
//!
//! `warm-pool` uses a second profile, `bench-warm`: the bench profile with
//! `warm_pool` set. It is written with `warm_pool = 0` so no background fill
//! runs during the other scenarios; the scenario rewrites it with a pool of
//! 20 (`--quick` 5) and calls `ReloadProfiles` as the `bench-operator`
//! identity (role operator, which also reads `ListPools`), and at the end
//! sets it back to 0 and waits for the drain. It times 30 (10) sequential
//! claims, each on a full pool (ListPools polled, untimed) with the claimed
//! sandbox deleted after (untimed), against the cold Sandpit and raw creates
//! of scenario 1, or, when scenario 1 did not run, 10 cold pairs it measures
//! itself; then 20 (5) creates released together on a full pool of as many,
//! counting claims and cold misses from ListPools. It checks that each
//! sandbox was handed out once and prints the floors beside the
//! figures without asserting them.

#[path = "sandpit/density.rs"]
mod density;
#[path = "sandpit/exit.rs"]
mod exit;
#[path = "sandpit/fleet.rs"]
mod fleet;
#[path = "sandpit/harness.rs"]
mod harness;
#[path = "sandpit/isolation.rs"]
mod isolation;
#[path = "sandpit/soak.rs"]
mod soak;
#[path = "sandpit/stats.rs"]
mod stats;
#[path = "sandpit/swarm.rs"]
mod swarm;
#[path = "sandpit/work.rs"]
mod work;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::EventsOptionsBuilder;
use clap::{Parser, ValueEnum};
use futures_util::{stream, StreamExt};
use sandpit_proto::{self as proto, ExtendSandboxRequest, ListSandboxesRequest};
use serde_json::{json, Map, Value};

use harness::{
    sp_create, sp_create_in, sp_delete, to_system, ttl, unique, BoxError, Cleanup, Client, Daemon, ProfileClient, Raw,
    Result, PROFILE, RUN_LABEL, WARM_PROFILE,
};
use stats::{header, ms, ratio, ratio_json, ratio_row, round3, row, samples_json, Summary};

/// Concurrency of set-up and tear-down work that is not itself measured, and of the scale creates.
const CONCURRENCY: usize = 16;
/// A ttl no sandbox reaches during the run (the profile's max_ttl is 2h).
const LONG_TTL: Duration = Duration::from_secs(30 * 60);

/// `cargo bench` runs this with `--bench`, then whatever follows `--`.
#[derive(Parser)]
#[command(
    bin_name = "cargo bench --bench sandpit --",
    about = "Sandpit against the raw Docker engine, in one run on this machine (README \"Benchmarks\")"
)]
struct Args {
    /// Smaller sizes of every scenario.
    #[arg(long)]
    quick: bool,
    /// Where the JSON report is written.
    #[arg(long, value_name = "FILE", default_value_os_t = default_json_out())]
    json_out: PathBuf,
    /// Only these scenarios, comma-separated or repeated. Without it, all but
    /// soak.
    #[arg(long, value_name = "SCENARIO", value_delimiter = ',')]
    only: Option<Vec<Scenario>>,
    /// Passed by `cargo bench` to a bench without the libtest harness.
    #[arg(long = "bench", hide = true)]
    _bench: bool,
    /// The arguments as given, for the report.
    #[arg(skip = std::env::args().skip(1).collect::<Vec<_>>())]
    argv: Vec<String>,
}

/// The scenarios, in the order they run.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Cold,
    Burst,
    #[value(alias = "warm", alias = "warm-pools")]
    WarmPool,
    Expiry,
    /// A main process's death to its `exited` record.
    Exit,
    Scale,
    /// runc against gVisor: cold creates, warm claims, exec.
    Isolation,
    /// Working inside a sandbox: cp throughput, port-forward round trips.
    Work,
    /// Only when named (minutes, and a correctness check rather than a measurement).
    Soak,
    /// Only when named (minutes): 1,000 live sandboxes, half isolated.
    Density,
    /// Only when named (PostgreSQL): create throughput and ListSandboxes
    /// with 1, 2 and 3 daemons on PostgreSQL beside SQLite.
    Fleet,
    /// Only when named (PostgreSQL): kill -9 of the lease holder to another
    /// daemon on duty, and an expiry due during the handover.
    Failover,
    /// Only when named (a swarm of engines on this machine): cold create,
    /// warm claim and a burst on 3 nodes against 1, raw Swarm beside.
    Swarm,
}

impl Scenario {
    /// Its name on the command line and in the report.
    fn name(self) -> String {
        self.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
    }

    /// Whether it runs only when named with `--only`.
    fn on_request(self) -> bool {
        matches!(self, Scenario::Soak | Scenario::Density | Scenario::Fleet | Scenario::Failover | Scenario::Swarm)
    }
}

/// `<target>/bench-results.json`, beside `<target>/release/sandpitd`.
fn default_json_out() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sandpitd"))
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("bench-results.json")
}

/// Sizes of each scenario, full or `--quick`.
struct Sizes {
    cold: usize,
    burst: usize,
    expiry: usize,
    scale: usize,
    list_calls: usize,
    /// Sequential warm claims.
    warm_seq: usize,
    /// Warm claims released together, and the pool size.
    warm_conc: usize,
    /// Cold creates and execs per way in the isolation scenario.
    isolation: usize,
    /// Warm claims from the gVisor pool.
    isolation_warm: usize,
    /// Bytes of the file copied in the work scenario.
    work_file: usize,
    /// Copies per way, and connection openings.
    work: usize,
    /// Round trips over one forwarded connection.
    work_rtt: usize,
    /// Creates (and live sandboxes listed) per configuration in the fleet scenario.
    fleet: usize,
    /// Kills of the lease holder in the failover scenario.
    failover: usize,
    swarm_cold: usize,
    swarm_warm: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                cold: 10,
                burst: 20,
                expiry: 20,
                scale: 100,
                list_calls: 200,
                warm_seq: 10,
                warm_conc: 5,
                isolation: 8,
                isolation_warm: 5,
                work_file: 10_000_000,
                work: 5,
                work_rtt: 100,
                fleet: 30,
                failover: 3,
                swarm_cold: 5,
                swarm_warm: 5,
            }
        } else {
            Sizes {
                cold: 30,
                burst: 100,
                expiry: 100,
                scale: 500,
                list_calls: 200,
                warm_seq: 30,
                warm_conc: 20,
                isolation: 20,
                isolation_warm: 10,
                work_file: 50_000_000,
                work: 10,
                work_rtt: 500,
                fleet: 100,
                failover: 5,
                swarm_cold: 10,
                swarm_warm: 10,
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let run = unique("bench");
    // Drops last: after the runtime (no task is still creating) and the daemon.
    let _cleanup = Cleanup::new(&run);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = bench(&args, &run) => r,
            _ = tokio::signal::ctrl_c() => Err::<(), BoxError>("interrupted".into()),
        }
    });
    drop(rt);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What every scenario works with.
struct Ctx {
    daemon: Daemon,
    client: Client,
    raw: Raw,
    run: String,
    /// Scenario 1's figures, when it ran, for scenario 3's ratios.
    cold: Option<ColdRef>,
}

async fn bench(args: &Args, run: &str) -> Result<()> {
    let sizes = Sizes::new(args.quick);
    let started = SystemTime::now();
    println!("Sandpit benchmark, run {run} ({})", if args.quick { "--quick" } else { "full" });

    let t = Instant::now();
    let image_id = harness::build_image()?;
    println!(
        "image {} ({}) built from this machine's binaries in {:.1}s",
        harness::IMAGE,
        &image_id[..image_id.len().min(19)],
        t.elapsed().as_secs_f64()
    );

    let docker = harness::docker().await?;
    let machine = machine_info(&docker).await;
    println!("machine: {}", serde_json::to_string(&machine)?);

    let mut daemon = Daemon::prepare(run)?;
    let t = Instant::now();
    daemon.start().await?;
    println!(
        "sandpitd {} (pid {}) serving at {} after {:.0} ms; data dir {}",
        env!("CARGO_BIN_EXE_sandpitd"),
        daemon.pid().unwrap_or(0),
        daemon.addr,
        ms(t.elapsed()),
        daemon.data_dir().display()
    );
    let experiment = daemon.register_experiment().await?;
    println!("experiment {experiment} registered (OFFICIAL, team bench)");
    let client = daemon.client().await?;
    let raw = Raw::new(docker.clone(), run, &daemon);
    let mut ctx = Ctx { daemon, client, raw, run: run.to_string(), cold: None };
    println!(
        "raw baseline: bollard on the same engine with sandpit_docker::create_body, \
         per create inspect_image + create_container + start_container (the daemon's runtime does the same)"
    );

    let mut scenarios = Map::new();
    let mut failed = Vec::new();
    for &scenario in Scenario::value_variants() {
        let wanted = match &args.only {
            Some(only) => only.contains(&scenario),
            None => !scenario.on_request(),
        };
        if !wanted {
            continue;
        }
        let name = scenario.name();
        println!();
        let result = match scenario {
            Scenario::Cold => cold(&mut ctx, sizes.cold).await,
            Scenario::Burst => burst(&mut ctx, sizes.burst).await,
            Scenario::WarmPool => warm_pool(&mut ctx, sizes.warm_seq, sizes.warm_conc).await,
            Scenario::Expiry => expiry(&mut ctx, sizes.expiry).await,
            Scenario::Exit => exit::exit(&mut ctx, sizes.expiry).await,
            Scenario::Scale => scale(&mut ctx, sizes.scale, sizes.list_calls).await,
            Scenario::Isolation => isolation::isolation(&mut ctx, sizes.isolation, sizes.isolation_warm).await,
            Scenario::Work => work::work(&mut ctx, sizes.work_file, sizes.work, sizes.work_rtt).await,
            Scenario::Soak => soak::soak(&mut ctx, soak::SoakSize::new(args.quick)).await,
            Scenario::Density => density::density(&mut ctx, density::DensitySize::new(args.quick)).await,
            Scenario::Fleet => fleet::fleet(&mut ctx, sizes.fleet, sizes.list_calls).await,
            Scenario::Failover => fleet::failover(&mut ctx, sizes.failover).await,
            Scenario::Swarm => swarm::swarm(&mut ctx, sizes.swarm_cold, sizes.swarm_warm, sizes.burst).await,
        };
        match result {
            Ok(v) => {
                // A scenario that measured but found something wrong (e.g. a
                // sandbox handed out twice) lists it under "problems".
                if v.get("problems").and_then(Value::as_array).is_some_and(|p| !p.is_empty()) {
                    println!("    FAILED: {}", v["problems"]);
                    failed.push(name.clone());
                }
                scenarios.insert(name, v);
            }
            Err(e) => {
                println!("    FAILED: {e}");
                scenarios.insert(name.clone(), json!({"error": e.to_string()}));
                failed.push(name);
            }
        }
    }

    // Stop the daemon, then make sure nothing of this run is left in Docker.
    println!();
    let status = ctx.daemon.terminate(Duration::from_secs(15));
    let daemon_errors = ctx
        .daemon
        .log()
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .map(String::from)
        .collect::<Vec<_>>();
    let left = harness::labelled_containers(&ctx.run);
    if !left.is_empty() {
        println!("{} container(s) labelled {RUN_LABEL}={} were left; removing them", left.len(), ctx.run);
        let _ = std::process::Command::new("docker").args(["rm", "-f", "-v"]).args(&left).output();
    }
    let remaining = harness::labelled_containers(&ctx.run).len();
    let all_containers = std::process::Command::new("docker")
        .args(["ps", "-aq"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().count())
        .unwrap_or(0);
    println!(
        "sandpitd stopped ({}); {} daemon WARN/ERROR log line(s); containers with this run's label \
         left after the scenarios: {} (after sweep: {}); `docker ps -aq` now lists {}",
        status.map(|s| s.to_string()).unwrap_or_else(|| "not running".into()),
        daemon_errors.len(),
        left.len(),
        remaining,
        all_containers
    );
    for l in daemon_errors.iter().take(10) {
        println!("    {l}");
    }

    let report = json!({
        "schema": 1,
        "run_id": ctx.run,
        "started_at": humantime::format_rfc3339_millis(started).to_string(),
        "duration_s": round3(started.elapsed().unwrap_or_default().as_secs_f64()),
        "mode": if args.quick { "quick" } else { "full" },
        "args": args.argv,
        "machine": machine,
        "sandpit": {
            "version": env!("CARGO_PKG_VERSION"),
            "git": git_describe(),
            "daemon_binary": env!("CARGO_BIN_EXE_sandpitd"),
            "image": harness::IMAGE,
            "image_id": image_id,
            "profile": {
                "name": harness::PROFILE,
                "network": "none",
                "command": ["sleep", "infinity"],
                "cpus": ctx.daemon.profile.resources.cpus,
                "memory_bytes": ctx.daemon.profile.resources.memory,
                "pids": ctx.daemon.profile.resources.pids,
                "tmpfs_bytes": ctx.daemon.profile.resources.tmpfs,
            },
            "lifecycle": {
                "expiry_warning_ms": ctx.daemon.config.lifecycle.expiry_warning.as_millis() as u64,
                "reconcile_interval_ms": ctx.daemon.config.lifecycle.reconcile_interval.as_millis() as u64,
                "orphan_grace_ms": ctx.daemon.config.lifecycle.orphan_grace.as_millis() as u64,
                "docker_timeout_ms": ctx.daemon.config.docker.timeout.as_millis() as u64,
            },
            "daemon_warn_error_lines": daemon_errors,
        },
        "scenarios": scenarios,
        "cleanup": {
            "labelled_left_after_scenarios": left.len(),
            "labelled_remaining": remaining,
            "docker_ps_a_total": all_containers,
        },
    });
    if let Some(parent) = args.json_out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.json_out, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("results written to {}", args.json_out.display());

    if !failed.is_empty() {
        return Err(format!("scenario(s) failed: {}", failed.join(", ")).into());
    }
    if remaining != 0 {
        return Err(format!("{remaining} labelled container(s) could not be removed").into());
    }
    Ok(())
}

// ---- 1. cold create-to-running, sequential -------------------------------

/// Create pairs discarded before the cold samples.
const COLD_WARMUP: usize = 2;

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Sandpit,
    Raw,
}

/// Sequential create pairs, Sandpit and raw, alternating which goes first;
/// each deleted right after, untimed. The first `warmup` pairs are discarded.
struct ColdPairs {
    sp: Vec<Duration>,
    sp_ids: Vec<String>,
    raw: Vec<Duration>,
}

async fn cold_pairs(ctx: &mut Ctx, n: usize, warmup: usize) -> Result<ColdPairs> {
    let mut pairs = ColdPairs { sp: Vec::new(), sp_ids: Vec::new(), raw: Vec::new() };
    for i in 0..warmup + n {
        let order = if i % 2 == 0 { [Side::Sandpit, Side::Raw] } else { [Side::Raw, Side::Sandpit] };
        for side in order {
            match side {
                Side::Sandpit => {
                    let (sb, d) = sp_create(&mut ctx.client, LONG_TTL).await?;
                    sp_delete(&mut ctx.client, &sb.id).await?;
                    if i >= warmup {
                        pairs.sp.push(d);
                        pairs.sp_ids.push(sb.id);
                    }
                }
                Side::Raw => {
                    let (cid, d) = ctx.raw.create().await?;
                    ctx.raw.remove(&cid).await?;
                    if i >= warmup {
                        pairs.raw.push(d);
                    }
                }
            }
        }
    }
    Ok(pairs)
}

async fn cold(ctx: &mut Ctx, n: usize) -> Result<Value> {
    println!(
        "[1] cold create-to-running, sequential, n={n}, network none \
         (alternating which side goes first; {COLD_WARMUP} warm-up pairs discarded; delete after each, untimed)"
    );
    let log_from = ctx.daemon.log_len();
    let ColdPairs { sp, sp_ids, raw } = cold_pairs(ctx, n, COLD_WARMUP).await?;
    let provision = harness::provision_times(&ctx.daemon.log_since(log_from));
    let sp_ms: Vec<f64> = sp.iter().map(|d| ms(*d)).collect();
    let raw_ms: Vec<f64> = raw.iter().map(|d| ms(*d)).collect();
    let prov_ms: Vec<f64> = sp_ids.iter().filter_map(|id| provision.get(id).copied()).collect();
    // RPC round trip minus the daemon's own provisioning time, per sandbox.
    let outside_ms: Vec<f64> =
        sp_ids.iter().zip(&sp_ms).filter_map(|(id, rpc)| provision.get(id).map(|p| rpc - p)).collect();
    let (s_sp, s_raw) = (Summary::of_ms(&sp_ms), Summary::of_ms(&raw_ms));
    let (s_prov, s_out) = (Summary::of_ms(&prov_ms), Summary::of_ms(&outside_ms));
    let r = ratio(s_sp, s_raw);
    ctx.cold = Some(ColdRef { sandpit: s_sp, raw: s_raw, n, source: "scenario 1 (cold) of this run" });
    header();
    row("sandpit CreateSandbox (gRPC round trip)", s_sp);
    row("raw inspect+create+start (bollard)", s_raw);
    ratio_row("ratio sandpit/raw", r);
    row("  daemon provision (log elapsed_ms)", s_prov);
    row("  round trip - provision (per sandbox)", s_out);
    if let (Some(a), Some(b)) = (s_sp, s_raw) {
        println!("    sandpit overhead at p50: {:+.1} ms ({:+.0}%)", a.p50 - b.p50, (a.p50 / b.p50 - 1.0) * 100.0);
    }
    Ok(json!({
        "n": n,
        "warmup_pairs_discarded": COLD_WARMUP,
        "order": "alternating (ABBA) per iteration",
        "network": "none",
        "raw_includes_inspect_image": true,
        "sandpit_create": stats::json_opt(s_sp),
        "raw_create_start": stats::json_opt(s_raw),
        "ratio_sandpit_over_raw": ratio_json(r),
        "daemon_provision_from_log": stats::json_opt(s_prov),
        "rpc_minus_provision": stats::json_opt(s_out),
        "samples_ms": {"sandpit": samples_json(&sp_ms), "raw": samples_json(&raw_ms)},
    }))
}

// ---- 2. burst ------------------------------------------------------------

/// Outcome of `n` requests released at once.
struct Burst {
    ok: Vec<Duration>,
    failures: Vec<String>,
    wall: Duration,
}

/// Spawns `n` tasks that each run `op` once, releases them together and
/// waits for all; wall time is from release to the last completion.
async fn release_together<T, F, Fut>(n: usize, op: F) -> (Burst, Vec<T>)
where
    T: Send + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(T, Duration)>> + Send + 'static,
{
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let mut go = go_rx.clone();
        let fut = op();
        tasks.push(tokio::spawn(async move {
            let _ = go.wait_for(|g| *g).await;
            let r = fut.await;
            (r, Instant::now())
        }));
    }
    // Let every task reach the gate before opening it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    go_tx.send_replace(true);
    let mut burst = Burst { ok: Vec::new(), failures: Vec::new(), wall: Duration::ZERO };
    let mut values = Vec::new();
    for t in tasks {
        match t.await {
            Ok((r, end)) => {
                burst.wall = burst.wall.max(end.duration_since(t0));
                match r {
                    Ok((v, d)) => {
                        burst.ok.push(d);
                        values.push(v);
                    }
                    Err(e) => burst.failures.push(e.to_string()),
                }
            }
            Err(e) => burst.failures.push(format!("task: {e}")),
        }
    }
    (burst, values)
}

async fn burst(ctx: &mut Ctx, n: usize) -> Result<Value> {
    println!("[2] burst: {n} concurrent creates released together (Sandpit first, then raw)");
    let log_from = ctx.daemon.log_len();
    let client = ctx.client.clone();
    let (sp, sbs) = release_together(n, || {
        let mut c = client.clone();
        async move {
            sp_create(&mut c, LONG_TTL).await.map_err(|s| BoxError::from(format!("{}: {}", s.code(), s.message())))
        }
    })
    .await;
    let provision = harness::provision_times(&ctx.daemon.log_since(log_from));
    let sp_ids: Vec<String> = sbs.into_iter().map(|sb| sb.id).collect();
    let (del, del_fail, del_wall) = sp_delete_many(&ctx.client, &sp_ids).await;

    let raw_side = ctx.raw.clone();
    let (rw, cids): (Burst, Vec<String>) = release_together(n, || {
        let r = raw_side.clone();
        async move { r.create().await }
    })
    .await;
    let (rdel, rdel_fail, rdel_wall) = raw_remove_many(&ctx.raw, &cids).await;

    let prov_ms: Vec<f64> = sp_ids.iter().filter_map(|id| provision.get(id).copied()).collect();
    let (s_sp, s_raw, s_prov) = (Summary::of(&sp.ok), Summary::of(&rw.ok), Summary::of_ms(&prov_ms));
    let r = ratio(s_sp, s_raw);
    println!(
        "    sandpit: {}/{n} succeeded, {} failed, wall {:.0} ms ({:.1} creates/s)",
        sp.ok.len(),
        sp.failures.len(),
        ms(sp.wall),
        sp.ok.len() as f64 / sp.wall.as_secs_f64()
    );
    println!(
        "    raw:     {}/{n} succeeded, {} failed, wall {:.0} ms ({:.1} creates/s)",
        rw.ok.len(),
        rw.failures.len(),
        ms(rw.wall),
        rw.ok.len() as f64 / rw.wall.as_secs_f64()
    );
    println!("    wall ratio sandpit/raw: {:.2}x", sp.wall.as_secs_f64() / rw.wall.as_secs_f64());
    for f in sp.failures.iter().chain(&rw.failures).take(5) {
        println!("    failure: {f}");
    }
    header();
    row("sandpit CreateSandbox per request", s_sp);
    row("raw inspect+create+start per request", s_raw);
    ratio_row("ratio sandpit/raw", r);
    row("  daemon provision (log elapsed_ms)", s_prov);
    row("  (untimed cleanup) sandpit DeleteSandbox", Summary::of(&del));
    row("  (untimed cleanup) raw remove -f", Summary::of(&rdel));
    Ok(json!({
        "n": n,
        "sandpit": {
            "succeeded": sp.ok.len(),
            "failed": sp.failures.len(),
            "failures": sp.failures,
            "wall_ms": round3(ms(sp.wall)),
            "latency": stats::json_opt(s_sp),
            "daemon_provision_from_log": stats::json_opt(s_prov),
            "cleanup_delete": {"concurrency": CONCURRENCY, "wall_ms": round3(ms(del_wall)), "failed": del_fail.len(), "latency": stats::json_opt(Summary::of(&del))},
        },
        "raw": {
            "succeeded": rw.ok.len(),
            "failed": rw.failures.len(),
            "failures": rw.failures,
            "wall_ms": round3(ms(rw.wall)),
            "latency": stats::json_opt(s_raw),
            "cleanup_remove": {"concurrency": CONCURRENCY, "wall_ms": round3(ms(rdel_wall)), "failed": rdel_fail.len(), "latency": stats::json_opt(Summary::of(&rdel))},
        },
        "ratio_sandpit_over_raw": ratio_json(r),
        "wall_ratio_sandpit_over_raw": round3(sp.wall.as_secs_f64() / rw.wall.as_secs_f64()),
    }))
}

/// Creates `n` sandboxes, `CONCURRENCY` at a time.
async fn sp_create_many(
    client: &Client,
    n: usize,
    ttl_: Duration,
) -> (Vec<(proto::Sandbox, Duration)>, Vec<String>, Duration) {
    let t = Instant::now();
    let results: Vec<_> = stream::iter(0..n)
        .map(|_| {
            let mut c = client.clone();
            async move { sp_create(&mut c, ttl_).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let wall = t.elapsed();
    let mut ok = Vec::new();
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(s) => failures.push(format!("{}: {}", s.code(), s.message())),
        }
    }
    (ok, failures, wall)
}

async fn sp_delete_many(client: &Client, ids: &[String]) -> (Vec<Duration>, Vec<String>, Duration) {
    let t = Instant::now();
    let results: Vec<_> = stream::iter(ids.iter().cloned())
        .map(|id| {
            let mut c = client.clone();
            async move { sp_delete(&mut c, &id).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let wall = t.elapsed();
    split(results.into_iter().map(|r| r.map_err(|s| format!("{}: {}", s.code(), s.message()))).collect(), wall)
}

async fn raw_remove_many(raw: &Raw, ids: &[String]) -> (Vec<Duration>, Vec<String>, Duration) {
    let t = Instant::now();
    let results: Vec<_> = stream::iter(ids.iter().cloned())
        .map(|id| {
            let r = raw.clone();
            async move { r.remove(&id).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let wall = t.elapsed();
    split(results.into_iter().map(|r| r.map_err(|e| e.to_string())).collect(), wall)
}

fn split(
    results: Vec<std::result::Result<Duration, String>>,
    wall: Duration,
) -> (Vec<Duration>, Vec<String>, Duration) {
    let mut ok = Vec::new();
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(d) => ok.push(d),
            Err(e) => failures.push(e),
        }
    }
    (ok, failures, wall)
}

// ---- 3. warm-pool claims -------------------------------------------------

/// The floors, printed beside the figures; the benchmark asserts none.
const FLOOR_SEQ_P50_MS: f64 = 25.0;
const FLOOR_SEQ_P99_MS: f64 = 60.0;
const FLOOR_CONC_P99_MS: f64 = 100.0;
/// The concurrency the concurrent floor is stated for.
const FLOOR_CONC_N: usize = 20;
/// Cold pairs scenario 3 measures itself when scenario 1 did not run.
const OWN_COLD_PAIRS: usize = 10;
/// Longest wait for the pool to fill (from empty) or drain.
const POOL_LIMIT: Duration = Duration::from_secs(180);
/// ListPools / ListSandboxes poll interval while waiting on the pool.
const POOL_POLL: Duration = Duration::from_millis(10);

/// Cold create figures that scenario 3 compares claims with.
#[derive(Clone)]
struct ColdRef {
    sandpit: Option<Summary>,
    raw: Option<Summary>,
    n: usize,
    source: &'static str,
}

impl ColdRef {
    fn json(&self) -> Value {
        json!({
            "source": self.source,
            "n": self.n,
            "sandpit_create": stats::json_opt(self.sandpit),
            "raw_create_start": stats::json_opt(self.raw),
        })
    }
}

async fn pool_status(p: &mut ProfileClient) -> Result<proto::PoolStatus> {
    let pools = p.list_pools(proto::ListPoolsRequest {}).await?.into_inner().pools;
    pools
        .into_iter()
        .find(|s| s.profile == WARM_PROFILE)
        .ok_or_else(|| format!("ListPools does not list {WARM_PROFILE}").into())
}

/// Polls ListPools until the pool holds `size`; its status and the wait.
async fn wait_full(p: &mut ProfileClient, size: u32) -> Result<(proto::PoolStatus, Duration)> {
    let t = Instant::now();
    loop {
        let s = pool_status(p).await?;
        if s.target == size && s.warm >= size {
            return Ok((s, t.elapsed()));
        }
        if t.elapsed() > POOL_LIMIT {
            let (secs, warm, target) = (POOL_LIMIT.as_secs(), s.warm, s.target);
            return Err(format!("{WARM_PROFILE} pool not full after {secs} s: warm {warm}/{target}").into());
        }
        tokio::time::sleep(POOL_POLL).await;
    }
}

/// Live (not ended) sandboxes of `bench-warm`, as the operator sees them
/// (warm, provisioning and claimed ones): `(id, state)`.
async fn warm_profile_live(op: &mut Client) -> Result<Vec<(String, i32)>> {
    let list = op.list_sandboxes(ListSandboxesRequest::default()).await?.into_inner().sandboxes;
    Ok(list.into_iter().filter(|s| s.profile == WARM_PROFILE).map(|s| (s.id, s.state)).collect())
}

/// Ids of the warm (unclaimed) sandboxes of `bench-warm`.
async fn warm_ids(op: &mut Client) -> Result<HashSet<String>> {
    let live = warm_profile_live(op).await?;
    Ok(live.into_iter().filter(|(_, st)| *st == proto::SandboxState::Warm as i32).map(|(id, _)| id).collect())
}

/// Rewrites `bench-warm` with a pool of `size` and has the daemon reload it.
async fn set_pool(daemon: &Daemon, p: &mut ProfileClient, size: u32) -> Result<()> {
    daemon.write_warm_profile(size)?;
    let r = p.reload_profiles(proto::ReloadProfilesRequest {}).await?.into_inner();
    if !r.applied {
        return Err(format!("ReloadProfiles (warm_pool = {size}) was not applied: {:?}", r.errors).into());
    }
    Ok(())
}

/// Values that occur more than once.
fn duplicates<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut dup: Vec<String> = values.into_iter().filter(|v| !seen.insert(*v)).map(String::from).collect();
    dup.sort();
    dup.dedup();
    dup
}

fn floor_json(floor: f64, measured: Option<f64>) -> Value {
    json!({"floor_ms": floor, "measured_ms": measured.map(round3), "met": measured.map(|m| m <= floor)})
}

fn floor_text(what: &str, floor: f64, measured: Option<f64>) -> String {
    match measured {
        Some(m) => format!("{what} <= {floor:.0} ms: {m:.1} ms, {}", if m <= floor { "met" } else { "NOT met" }),
        None => format!("{what} <= {floor:.0} ms: no samples"),
    }
}

async fn warm_pool(ctx: &mut Ctx, seq_n: usize, conc_n: usize) -> Result<Value> {
    println!(
        "[3] warm-pool claims: profile {WARM_PROFILE} ({PROFILE} with warm_pool = {conc_n}); {seq_n} sequential claims \
         (pool full before each, claimed sandbox deleted after, both untimed), then {conc_n} claims released together \
         on a full pool"
    );
    let cold = match ctx.cold.clone() {
        Some(c) => c,
        None => {
            println!(
                "    scenario 1 did not run in this invocation: measuring a cold baseline first, {OWN_COLD_PAIRS} \
                 sequential {PROFILE} + raw pairs as scenario 1 does ({COLD_WARMUP} warm-up pairs discarded), pool off"
            );
            let pairs = cold_pairs(ctx, OWN_COLD_PAIRS, COLD_WARMUP).await?;
            ColdRef {
                sandpit: Summary::of(&pairs.sp),
                raw: Summary::of(&pairs.raw),
                n: OWN_COLD_PAIRS,
                source: "measured by scenario 3 (scenario 1 did not run in this invocation)",
            }
        }
    };
    let mut prof = ctx.daemon.profile_client().await?;
    let mut op = ctx.daemon.operator_client().await?;
    // Claimed sandboxes not yet deleted, whatever happens below.
    let mut live = Vec::new();
    let measured = warm_measure(ctx, &mut prof, &mut op, seq_n, conc_n, &cold, &mut live).await;

    // However that went: delete what is still claimed, turn the pool off and
    // wait until no sandbox of the profile is left (a fill in flight included).
    let (_, left_fail, _) = sp_delete_many(&ctx.client, &live).await;
    let off = set_pool(&ctx.daemon, &mut prof, 0).await;
    let t = Instant::now();
    let drained = loop {
        match warm_profile_live(&mut op).await {
            Ok(l) if l.is_empty() => break Ok(t.elapsed()),
            Ok(l) if t.elapsed() > POOL_LIMIT => {
                break Err(format!("{} sandbox(es) of {WARM_PROFILE} still live after the drain", l.len()))
            }
            Ok(_) => tokio::time::sleep(POOL_POLL).await,
            Err(e) => break Err(e.to_string()),
        }
    };
    let labelled = ctx.raw.count_labelled().await?;
    let mut v = measured?;
    off?;
    println!(
        "    pool turned off (warm_pool = 0, ReloadProfiles): {}; containers with the run label after: {labelled}",
        match &drained {
            Ok(d) => format!("no {WARM_PROFILE} sandbox left after {:.0} ms", ms(*d)),
            Err(e) => e.clone(),
        }
    );
    let problems = v["problems"].as_array_mut().ok_or("no problems list")?;
    if !left_fail.is_empty() {
        problems.push(json!(format!("{} claimed sandbox(es) could not be deleted: {}", left_fail.len(), left_fail[0])));
    }
    if let Err(e) = &drained {
        problems.push(json!(e));
    }
    if labelled != 0 {
        problems.push(json!(format!("{labelled} container(s) with the run label left after the drain")));
    }
    v["drain"] = json!({
        "method": "bench-warm rewritten with warm_pool = 0, ReloadProfiles, then ListSandboxes (operator) polled until no sandbox of the profile is live",
        "ms": drained.as_ref().ok().map(|d| round3(ms(*d))),
        "error": drained.err(),
        "labelled_containers_after": labelled,
    });
    Ok(v)
}

/// Scenario 3 proper: turns the pool on, runs both parts. Ids of claimed
/// sandboxes not yet deleted are kept in `live` for the caller to delete.
async fn warm_measure(
    ctx: &mut Ctx,
    prof: &mut ProfileClient,
    op: &mut Client,
    seq_n: usize,
    conc_n: usize,
    cold: &ColdRef,
    live: &mut Vec<String>,
) -> Result<Value> {
    let size = conc_n as u32;
    let mut problems: Vec<String> = Vec::new();
    set_pool(&ctx.daemon, prof, size).await?;
    let (_, fill) = wait_full(prof, size).await?;
    println!(
        "    ReloadProfiles with warm_pool = {size}: pool full after {:.1} s (filled one sandbox at a time)",
        fill.as_secs_f64()
    );

    // Part 1: sequential claims, each on a full pool.
    let start = pool_status(prof).await?;
    let mut seq = Vec::with_capacity(seq_n);
    let mut refill = Vec::with_capacity(seq_n);
    let (mut seq_ids, mut seq_cids) = (Vec::new(), Vec::new());
    let mut not_claims = Vec::new();
    for _ in 0..seq_n {
        let (before, _) = wait_full(prof, size).await?;
        let warm = warm_ids(op).await?;
        let (sb, d) = sp_create_in(&mut ctx.client, WARM_PROFILE, LONG_TTL).await?;
        let claimed_at = Instant::now();
        live.push(sb.id.clone());
        let after = pool_status(prof).await?;
        let claimed = after.claims == before.claims + 1 && after.misses == before.misses && warm.contains(&sb.id);
        if !claimed {
            not_claims.push(sb.id.clone());
        }
        if sb.state != proto::SandboxState::Running as i32 {
            problems.push(format!("sequential: {} came back in state {}", sb.id, sb.state));
        }
        sp_delete(&mut ctx.client, &sb.id).await?;
        live.retain(|id| *id != sb.id);
        wait_full(prof, size).await?;
        refill.push(claimed_at.elapsed());
        seq.push(d);
        seq_ids.push(sb.id);
        seq_cids.push(sb.container_id);
    }
    let end = pool_status(prof).await?;
    let (seq_claims, seq_misses) = (end.claims - start.claims, end.misses - start.misses);
    let seq_dup_ids = duplicates(seq_ids.iter().map(String::as_str));
    let seq_dup_cids = duplicates(seq_cids.iter().map(String::as_str));
    if !not_claims.is_empty() {
        problems.push(format!("sequential: {} create(s) on a full pool were not claims", not_claims.len()));
    }
    if !seq_dup_ids.is_empty() || !seq_dup_cids.is_empty() {
        problems.push(format!("sequential: handed out twice: ids {seq_dup_ids:?}, containers {seq_dup_cids:?}"));
    }

    let s_seq = Summary::of(&seq);
    let (r_cold, r_raw) = (ratio(s_seq, cold.sandpit), ratio(s_seq, cold.raw));
    println!("    cold reference: {}, n={}", cold.source, cold.n);
    header();
    row("warm claim, sequential (CreateSandbox)", s_seq);
    row("cold sandpit CreateSandbox", cold.sandpit);
    row("cold raw inspect+create+start (bollard)", cold.raw);
    ratio_row("ratio warm claim / cold sandpit", r_cold);
    ratio_row("ratio warm claim / cold raw", r_raw);
    row("  (untimed) claim -> pool full again", Summary::of(&refill));
    if let (Some(w), Some(c), Some(r)) = (s_seq, cold.sandpit, cold.raw) {
        println!(
            "    p50: warm claim {:.1} ms vs cold sandpit {:.1} ms ({:.3}x, {:.0}x faster) and raw {:.1} ms ({:.3}x)",
            w.p50,
            c.p50,
            w.p50 / c.p50,
            c.p50 / w.p50,
            r.p50,
            w.p50 / r.p50
        );
    }
    println!(
        "    floors (issue; information only): {}; {}",
        floor_text("p50", FLOOR_SEQ_P50_MS, s_seq.map(|s| s.p50)),
        floor_text("p99", FLOOR_SEQ_P99_MS, s_seq.map(|s| s.p99))
    );
    println!(
        "    sequential: {}/{seq_n} succeeded; ListPools claims +{seq_claims}, misses +{seq_misses}; \
         {} of {seq_n} checked as claims (counter +1 and id warm before); {} distinct ids, {} distinct containers",
        seq.len(),
        seq_n - not_claims.len(),
        seq_ids.iter().collect::<HashSet<_>>().len(),
        seq_cids.iter().collect::<HashSet<_>>().len()
    );

    // Part 2: `conc_n` claims released together on a full pool of `conc_n`.
    let (before, _) = wait_full(prof, size).await?;
    let warm = warm_ids(op).await?;
    let client = ctx.client.clone();
    let (burst, sbs) = release_together(conc_n, || {
        let mut c = client.clone();
        async move {
            sp_create_in(&mut c, WARM_PROFILE, LONG_TTL)
                .await
                .map_err(|s| BoxError::from(format!("{}: {}", s.code(), s.message())))
        }
    })
    .await;
    live.extend(sbs.iter().map(|sb| sb.id.clone()));
    let after = pool_status(prof).await?;
    let (conc_claims, conc_misses) = (after.claims - before.claims, after.misses - before.misses);
    let from_pool = sbs.iter().filter(|sb| warm.contains(&sb.id)).count();
    let conc_ids: Vec<String> = sbs.iter().map(|sb| sb.id.clone()).collect();
    let conc_dup_ids = duplicates(conc_ids.iter().map(String::as_str));
    let conc_dup_cids = duplicates(sbs.iter().map(|sb| sb.container_id.as_str()));
    let across = duplicates(seq_ids.iter().chain(&conc_ids).map(String::as_str));
    let not_running = sbs.iter().filter(|sb| sb.state != proto::SandboxState::Running as i32).count();
    let (del, del_fail, del_wall) = sp_delete_many(&ctx.client, &conc_ids).await;
    if del_fail.is_empty() {
        live.retain(|id| !conc_ids.contains(id));
    }
    if !burst.failures.is_empty() {
        problems.push(format!(
            "concurrent: {} of {conc_n} creates failed: {}",
            burst.failures.len(),
            burst.failures[0]
        ));
    }
    if !conc_dup_ids.is_empty() || !conc_dup_cids.is_empty() {
        problems.push(format!("concurrent: handed out twice: ids {conc_dup_ids:?}, containers {conc_dup_cids:?}"));
    }
    if !across.is_empty() {
        problems.push(format!("ids handed out in both parts: {across:?}"));
    }
    if not_running > 0 {
        problems.push(format!("concurrent: {not_running} sandbox(es) not running on return"));
    }
    if !del_fail.is_empty() {
        problems.push(format!("concurrent: {} delete(s) failed: {}", del_fail.len(), del_fail[0]));
    }

    let s_conc = Summary::of(&burst.ok);
    println!(
        "    concurrent: {}/{conc_n} succeeded, {} failed, wall {:.1} ms; ListPools claims +{conc_claims}, \
         misses (cold) +{conc_misses}; by id {from_pool} from the pool, {} cold; {} distinct ids, {} distinct containers",
        burst.ok.len(),
        burst.failures.len(),
        ms(burst.wall),
        sbs.len() - from_pool,
        conc_ids.iter().collect::<HashSet<_>>().len(),
        sbs.iter().map(|sb| &sb.container_id).collect::<HashSet<_>>().len()
    );
    for f in burst.failures.iter().take(5) {
        println!("    failure: {f}");
    }
    header();
    row(&format!("warm CreateSandbox x{conc_n} together"), s_conc);
    row("  (untimed cleanup) DeleteSandbox", Summary::of(&del));
    println!(
        "    floor (issue; information only): {}{}",
        floor_text(&format!("p99 at {FLOOR_CONC_N} concurrent"), FLOOR_CONC_P99_MS, s_conc.map(|s| s.p99)),
        if conc_n == FLOOR_CONC_N {
            String::new()
        } else {
            format!(" (this run released {conc_n}, not {FLOOR_CONC_N})")
        }
    );
    let seq_ms: Vec<f64> = seq.iter().map(|d| ms(*d)).collect();
    let conc_ms: Vec<f64> = burst.ok.iter().map(|d| ms(*d)).collect();
    Ok(json!({
        "profile": WARM_PROFILE,
        "pool_size": size,
        "pool_switch": "bench-warm is written with warm_pool = 0 at start (no background fills during other scenarios); this scenario rewrites it with warm_pool = pool_size and calls ReloadProfiles, and turns it off again at the end",
        "initial_fill_ms": round3(ms(fill)),
        "cold_reference": cold.json(),
        "sequential": {
            "n": seq_n,
            "method": "before each claim ListPools is polled (10 ms) until warm == target; CreateSandbox round trip timed; the claimed sandbox is deleted, untimed",
            "latency": stats::json_opt(s_seq),
            "ratio_over_cold_sandpit": ratio_json(r_cold),
            "ratio_over_cold_raw": ratio_json(r_raw),
            "claims_delta": seq_claims,
            "misses_delta": seq_misses,
            "not_claims": not_claims,
            "distinct_ids": seq_ids.iter().collect::<HashSet<_>>().len(),
            "distinct_containers": seq_cids.iter().collect::<HashSet<_>>().len(),
            "duplicate_ids": seq_dup_ids,
            "duplicate_containers": seq_dup_cids,
            "claim_to_pool_full_again": stats::json_opt(Summary::of(&refill)),
            "samples_ms": samples_json(&seq_ms),
        },
        "concurrent": {
            "n": conc_n,
            "succeeded": burst.ok.len(),
            "failed": burst.failures.len(),
            "failures": burst.failures,
            "wall_ms": round3(ms(burst.wall)),
            "latency": stats::json_opt(s_conc),
            "claims_delta": conc_claims,
            "misses_delta": conc_misses,
            "from_pool_by_id": from_pool,
            "cold_by_id": sbs.len() - from_pool,
            "distinct_ids": conc_ids.iter().collect::<HashSet<_>>().len(),
            "duplicate_ids": conc_dup_ids,
            "duplicate_containers": conc_dup_cids,
            "ids_also_in_sequential": across,
            "samples_ms": samples_json(&conc_ms),
            "cleanup_delete": {"concurrency": CONCURRENCY, "wall_ms": round3(ms(del_wall)), "failed": del_fail.len(), "latency": stats::json_opt(Summary::of(&del))},
        },
        "floors": {
            "source": "issue text; information only, nothing asserted",
            "sequential_p50": floor_json(FLOOR_SEQ_P50_MS, s_seq.map(|s| s.p50)),
            "sequential_p99": floor_json(FLOOR_SEQ_P99_MS, s_seq.map(|s| s.p99)),
            "concurrent_p99": {
                "at_concurrency": FLOOR_CONC_N,
                "this_run_concurrency": conc_n,
                "floor_ms": FLOOR_CONC_P99_MS,
                "measured_ms": s_conc.map(|s| round3(s.p99)),
                "met": s_conc.map(|s| s.p99 <= FLOOR_CONC_P99_MS),
            },
        },
        "problems": problems,
    }))
}

// ---- 4. expiry precision -------------------------------------------------

/// Teardowns the daemon runs at once when many sandboxes fall due together
/// (`EXPIRY_PARALLELISM` in src/lifecycle/mod.rs); the raw baseline uses the same.
const DAEMON_EXPIRY_PARALLELISM: usize = 64;

/// `(container id, action, time_nano)` of Docker's kill, die and destroy events.
type Seen = Vec<(String, String, i64)>;

/// How late each `die` event reached this subscriber (received - time_nano,
/// ms): the engine's own delivery delay, which the daemon's follower has too.
type DieLag = Vec<f64>;

/// A container's `cgroup.procs`, where the engine's cgroupfs or systemd
/// driver puts it under cgroup v2 or v1 (the freezer hierarchy).
fn cgroup_procs(cid: &str) -> Option<PathBuf> {
    let scope = format!("docker-{cid}.scope");
    [
        format!("/sys/fs/cgroup/docker/{cid}"),
        format!("/sys/fs/cgroup/system.slice/{scope}"),
        format!("/sys/fs/cgroup/freezer/docker/{cid}"),
        format!("/sys/fs/cgroup/freezer/system.slice/{scope}"),
    ]
    .into_iter()
    .map(|d| PathBuf::from(d).join("cgroup.procs"))
    .find(|p| p.exists())
}

/// Whether the process `pid` (a line of `cgroup.procs`) still runs: it
/// exists and is not a zombie (dead, waiting for its parent, here the
/// container's shim, to reap it).
fn runs(pid: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    // `pid (comm) S ...`: the state follows the last ')'.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|s| s != "Z" && s != "X")
}

/// The kernel's view of when each container's processes stopped: from
/// shortly before `from` until `limit` has passed, polls every container's
/// cgroup every 5 ms (a pass over 100 takes well under 1 ms; polling
/// faster would take a core from the engine being measured) and notes when
/// none of its processes runs any more (each gone or a zombie; the shim
/// reaps them a moment later). Containers whose cgroup cannot be found are
/// left out.
fn watch_cgroups(
    cids: Vec<String>,
    from: SystemTime,
    limit: Duration,
) -> tokio::task::JoinHandle<HashMap<String, SystemTime>> {
    const POLL: Duration = Duration::from_millis(5);
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own, not the blocking pool's: its priority dies with it.
    std::thread::spawn(move || {
        let _ = tx.send(poll_cgroups(cids, from, limit, POLL));
    });
    tokio::spawn(async move { rx.await.unwrap_or_default() })
}

/// Raises the calling thread to a real-time priority (SCHED_FIFO 10) where
/// this process may (root): a burst of 100 deaths keeps this 2-core host's
/// container shims busy, and a poller at normal priority then notices them
/// late, all at once, measuring its own wait for a core rather than when
/// the processes stopped. It sleeps 5 ms between passes of under 1 ms, so
/// it takes little from the engine being measured.
fn realtime_priority() -> bool {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: sched_setscheduler(2) on the calling thread (0) with a valid
    // policy and a parameter that outlives the call.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

fn poll_cgroups(cids: Vec<String>, from: SystemTime, limit: Duration, poll: Duration) -> HashMap<String, SystemTime> {
    if !realtime_priority() {
        eprintln!("    (the cgroup poller runs at normal priority: it may notice stops late on a busy host)");
    }
    let mut left: Vec<(String, PathBuf)> = cids.into_iter().filter_map(|c| cgroup_procs(&c).map(|p| (c, p))).collect();
    let mut stopped = HashMap::new();
    if let Ok(wait) = from.duration_since(SystemTime::now()) {
        std::thread::sleep(wait.saturating_sub(Duration::from_millis(50)));
    }
    let until = Instant::now() + limit;
    while !left.is_empty() && Instant::now() < until {
        let now = SystemTime::now();
        left.retain(|(cid, procs)| {
            let running = std::fs::read_to_string(procs).is_ok_and(|s| s.lines().any(runs));
            if !running {
                stopped.insert(cid.clone(), now);
            }
            running
        });
        std::thread::sleep(poll);
    }
    stopped
}

/// Follows Docker's events for `want` (containers of this run) from one
/// second ago until every one is destroyed or `limit` passes.
fn follow_events(
    docker: &bollard::Docker,
    run: &str,
    want: HashSet<String>,
    limit: Duration,
) -> Result<tokio::task::JoinHandle<(Seen, DieLag, Option<String>)>> {
    let since = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs().saturating_sub(1);
    let filters = HashMap::from([
        ("label".to_string(), vec![format!("{RUN_LABEL}={run}")]),
        ("type".to_string(), vec!["container".to_string()]),
        ("event".to_string(), vec!["kill".to_string(), "die".to_string(), "destroy".to_string()]),
    ]);
    let opts = EventsOptionsBuilder::default().since(&since.to_string()).filters(&filters).build();
    let mut events = docker.events(Some(opts));
    let until = tokio::time::Instant::now() + limit;
    Ok(tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut lag = Vec::new();
        let mut destroyed = HashSet::new();
        let mut error = None;
        while destroyed.len() < want.len() {
            let ev = tokio::select! {
                ev = events.next() => ev,
                () = tokio::time::sleep_until(until) => break,
            };
            match ev {
                Some(Ok(ev)) => {
                    let (Some(actor), Some(action), Some(t)) = (ev.actor, ev.action, ev.time_nano) else {
                        continue;
                    };
                    let Some(id) = actor.id.filter(|id| want.contains(id)) else {
                        continue;
                    };
                    if action == "destroy" {
                        destroyed.insert(id.clone());
                    }
                    if action == "die" {
                        lag.push((nanos(SystemTime::now()) - t) as f64 / 1e6);
                    }
                    seen.push((id, action, t));
                }
                Some(Err(e)) => {
                    error = Some(e.to_string());
                    break;
                }
                None => break,
            }
        }
        (seen, lag, error)
    }))
}

fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i64
}

/// Lateness of each container's teardown against its deadline, from the events.
struct Lateness {
    /// When the container's cgroup held no process any more (polled every
    /// 5 ms from this process), minus the deadline, ms: the kernel's
    /// view of the processes stopping. Empty where cgroups cannot be read.
    emptied: Vec<f64>,
    /// die minus the deadline, ms: when Docker saw the processes end.
    stopped: Vec<f64>,
    /// destroy minus the deadline, ms.
    gone: Vec<f64>,
    kills: usize,
    dies: usize,
    destroys: usize,
    /// Earliest die after the earliest deadline, ms.
    first_stop: Option<f64>,
    /// Last destroy after the latest deadline, when every container was destroyed, ms.
    all_gone: Option<f64>,
    /// Containers with no destroy event.
    not_gone: Vec<String>,
}

impl Lateness {
    fn of(seen: &Seen, deadlines: &HashMap<String, SystemTime>, emptied: &HashMap<String, SystemTime>) -> Lateness {
        let mut kill: HashMap<&str, i64> = HashMap::new();
        let mut die: HashMap<&str, i64> = HashMap::new();
        let mut destroy: HashMap<&str, i64> = HashMap::new();
        for (id, action, t) in seen {
            let slot = match action.as_str() {
                "kill" => &mut kill,
                "die" => &mut die,
                "destroy" => &mut destroy,
                _ => continue,
            };
            slot.entry(id.as_str()).and_modify(|v| *v = (*v).min(*t)).or_insert(*t);
        }
        let mut l = Lateness {
            emptied: deadlines
                .iter()
                .filter_map(|(cid, at)| emptied.get(cid).map(|t| (nanos(*t) - nanos(*at)) as f64 / 1e6))
                .collect(),
            stopped: Vec::new(),
            gone: Vec::new(),
            kills: kill.len(),
            dies: die.len(),
            destroys: destroy.len(),
            first_stop: None,
            all_gone: None,
            not_gone: Vec::new(),
        };
        for (cid, at) in deadlines {
            let at = nanos(*at);
            if let Some(t) = die.get(cid.as_str()) {
                l.stopped.push((t - at) as f64 / 1e6);
            }
            match destroy.get(cid.as_str()) {
                Some(t) => l.gone.push((t - at) as f64 / 1e6),
                None => l.not_gone.push(cid.clone()),
            }
        }
        let earliest = deadlines.values().min().copied().map(nanos);
        let latest = deadlines.values().max().copied().map(nanos);
        l.first_stop = die.values().min().zip(earliest).map(|(k, e)| (k - e) as f64 / 1e6);
        if l.not_gone.is_empty() {
            l.all_gone = destroy.values().max().zip(latest).map(|(d, e)| (d - e) as f64 / 1e6);
        }
        l
    }

    fn json(&self) -> Value {
        json!({
            "processes_stopped_lateness": stats::json_opt(Summary::of_ms(&self.emptied)),
            "stopped_lateness": stats::json_opt(Summary::of_ms(&self.stopped)),
            "container_gone_lateness": stats::json_opt(Summary::of_ms(&self.gone)),
            "first_stop_after_earliest_deadline_ms": self.first_stop.map(round3),
            "all_gone_after_latest_deadline_ms": self.all_gone.map(round3),
            "events": {"kill": self.kills, "die": self.dies, "destroy": self.destroys},
            "samples_ms": {
                "processes_stopped_lateness": samples_json(&self.emptied),
                "stopped_lateness": samples_json(&self.stopped),
            },
        })
    }

    fn describe(&self, n: usize, deadline: &str) {
        println!(
            "    first stop {} ms after the earliest {deadline}; all gone {} ms after the latest {deadline}; \
             events: die {}/{n}, kill {}/{n} (none when the cgroup stopped it), destroy {}/{n}",
            self.first_stop.map_or("-".into(), |x| format!("{x:.1}")),
            self.all_gone.map_or("(not all)".into(), |x| format!("{x:.1}")),
            self.dies,
            self.kills,
            self.destroys
        );
    }
}

async fn expiry(ctx: &mut Ctx, n: usize) -> Result<Value> {
    println!(
        "[4] expiry precision: {n} sandboxes set to expire at one instant; lateness from Docker's event stream (time_nano)"
    );
    let (created, failures, create_wall) = sp_create_many(&ctx.client, n, LONG_TTL).await;
    if !failures.is_empty() {
        let ids: Vec<String> = created.iter().map(|(sb, _)| sb.id.clone()).collect();
        sp_delete_many(&ctx.client, &ids).await;
        return Err(format!("{} of {n} creates failed: {}", failures.len(), failures[0]).into());
    }
    // container id -> sandbox id
    let containers: HashMap<String, String> =
        created.iter().map(|(sb, _)| (sb.container_id.clone(), sb.id.clone())).collect();
    println!("    created {n} (concurrency {CONCURRENCY}) in {:.0} ms", ms(create_wall));

    // Time one extend to size the lead: every extend must land before the target.
    let probe_id = created[0].0.id.clone();
    let t = Instant::now();
    ctx.client.extend_sandbox(ExtendSandboxRequest { id: probe_id, ttl: ttl(LONG_TTL) }).await?;
    // Some calls stall ~40 ms (seen on this daemon's responses), so allow at least 50 ms each.
    let per_call = (t.elapsed() * 3).max(Duration::from_millis(50));
    let lead = Duration::from_secs(2) + per_call * n as u32;

    let collector = follow_events(
        &ctx.raw.docker,
        &ctx.run,
        containers.keys().cloned().collect(),
        lead + Duration::from_secs(180),
    )?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // One target instant: each ExtendSandbox gets ttl = target - now, computed
    // just before its call, so expiresAt values differ only by call jitter.
    let target = SystemTime::now() + lead;
    let mut deadlines: HashMap<String, SystemTime> = HashMap::new();
    let t = Instant::now();
    for (cid, sb_id) in &containers {
        let left = target
            .duration_since(SystemTime::now())
            .map_err(|_| "the expiry target passed while extending; raise the lead")?;
        let sb =
            ctx.client.extend_sandbox(ExtendSandboxRequest { id: sb_id.clone(), ttl: ttl(left) }).await?.into_inner();
        let at = sb.expires_at.as_ref().map(to_system).ok_or("no expiresAt")?;
        deadlines.insert(cid.clone(), at);
    }
    let extend_wall = t.elapsed();
    let earliest = *deadlines.values().min().ok_or("no sandboxes")?;
    let latest = *deadlines.values().max().ok_or("no sandboxes")?;
    let spread = latest.duration_since(earliest)?;
    let cgroups = watch_cgroups(containers.keys().cloned().collect(), earliest, lead + Duration::from_secs(60));
    println!(
        "    expiresAt set by {n} sequential ExtendSandbox calls in {:.0} ms (ttl = target - now per call; \
         target {:.0} ms ahead); expiresAt spread {:.1} ms (expiresAt has ms precision)",
        ms(extend_wall),
        ms(lead),
        ms(spread)
    );

    let emptied = cgroups.await?;
    let (seen, _, stream_error) = collector.await?;
    let sp = Lateness::of(&seen, &deadlines, &emptied);

    // What the daemon recorded, and anything that did not go. A record says
    // `expired` once its container is removed, a moment after Docker's
    // destroy event: give the records a few seconds to catch up.
    let mut expired_state = 0;
    for _ in 0..50 {
        let listed = ctx
            .client
            .list_sandboxes(ListSandboxesRequest { include_ended: true, experiment: String::new() })
            .await?
            .into_inner()
            .sandboxes;
        let states: HashMap<&str, i32> = listed.iter().map(|s| (s.id.as_str(), s.state)).collect();
        expired_state = containers
            .values()
            .filter(|id| states.get(id.as_str()) == Some(&(proto::SandboxState::Expired as i32)))
            .count();
        if expired_state == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let not_gone: Vec<String> = sp.not_gone.iter().filter_map(|cid| containers.get(cid).cloned()).collect();
    if !not_gone.is_empty() {
        sp_delete_many(&ctx.client, &not_gone).await;
    }

    // Baselines: the same number of raw containers stopped by this process
    // at one instant: killed all at once through the engine (what the
    // daemon did before it stopped them through their cgroups), and
    // removed DAEMON_EXPIRY_PARALLELISM at a time.
    let raw_kill = raw_expiry(ctx, n, RawStop::Kill).await?;
    let raw_remove = raw_expiry(ctx, n, RawStop::Remove).await?;

    header();
    row("sandpit processes stopped (none running)", Summary::of_ms(&sp.emptied));
    row("raw kill at once: processes stopped", Summary::of_ms(&raw_kill.emptied));
    row("raw remove: processes stopped", Summary::of_ms(&raw_remove.emptied));
    row("sandpit stopped (die - expiresAt)", Summary::of_ms(&sp.stopped));
    row("raw kill at once (die - deadline)", Summary::of_ms(&raw_kill.stopped));
    row("raw remove 64 at a time (die - deadline)", Summary::of_ms(&raw_remove.stopped));
    row("sandpit gone (destroy - expiresAt)", Summary::of_ms(&sp.gone));
    row("raw remove gone (destroy - deadline)", Summary::of_ms(&raw_remove.gone));
    sp.describe(n, "expiresAt");
    raw_kill.describe(n, "raw deadline (kill)");
    raw_remove.describe(n, "raw deadline (remove)");
    println!(
        "    records in state expired: {expired_state}/{n}{}",
        stream_error.as_ref().map(|e| format!("; event stream error: {e}")).unwrap_or_default()
    );
    Ok(json!({
        "n": n,
        "setup": {
            "create_concurrency": CONCURRENCY,
            "create_wall_ms": round3(ms(create_wall)),
            "method": "created with a long ttl, then ExtendSandbox with ttl = target - now per call, sequentially",
            "extend_wall_ms": round3(ms(extend_wall)),
            "lead_ms": round3(ms(lead)),
        },
        "expires_at_spread_ms": round3(ms(spread)),
        "sandpit": sp.json(),
        "records_expired": expired_state,
        "not_torn_down": not_gone,
        "event_stream_error": stream_error,
        "raw_baseline": {
            "kill_at_once": {
                "method": "bench kills (SIGKILL, Docker API) every raw container at one deadline, all at once, then removes them",
                "lateness": raw_kill.json(),
            },
            "remove_parallel": {
                "method": format!("bench removes (force) each raw container at one deadline, {DAEMON_EXPIRY_PARALLELISM} at a time"),
                "lateness": raw_remove.json(),
            },
        },
    }))
}

/// How the raw baseline stops its containers at the deadline.
#[derive(Clone, Copy)]
enum RawStop {
    /// `docker kill` of every container at once, then removal.
    Kill,
    /// `docker rm -f`, [`DAEMON_EXPIRY_PARALLELISM`] at a time.
    Remove,
}

/// `n` raw containers stopped at one deadline.
async fn raw_expiry(ctx: &mut Ctx, n: usize, how: RawStop) -> Result<Lateness> {
    let results: Vec<_> = stream::iter(0..n)
        .map(|_| {
            let r = ctx.raw.clone();
            async move { r.create().await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut cids = Vec::new();
    let mut error = None;
    for r in results {
        match r {
            Ok((cid, _)) => cids.push(cid),
            Err(e) => error = Some(e.to_string()),
        }
    }
    if let Some(e) = error {
        raw_remove_many(&ctx.raw, &cids).await;
        return Err(format!("raw baseline create failed: {e}").into());
    }
    let lead = Duration::from_secs(2);
    let collector =
        follow_events(&ctx.raw.docker, &ctx.run, cids.iter().cloned().collect(), lead + Duration::from_secs(180))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deadline = SystemTime::now() + lead;
    let at = tokio::time::Instant::now() + deadline.duration_since(SystemTime::now())?;
    let cgroups = watch_cgroups(cids.clone(), deadline, lead + Duration::from_secs(60));
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(match how {
        RawStop::Kill => n.max(1),
        RawStop::Remove => DAEMON_EXPIRY_PARALLELISM,
    }));
    let mut tasks = Vec::new();
    for cid in &cids {
        let (r, cid, permits) = (ctx.raw.clone(), cid.clone(), permits.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let _permit = permits.acquire_owned().await;
            if let RawStop::Kill = how {
                let opts = bollard::query_parameters::KillContainerOptionsBuilder::default().signal("SIGKILL").build();
                r.docker.kill_container(&cid, Some(opts)).await?;
            }
            r.remove(&cid).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let emptied = cgroups.await?;
    let (seen, _, _) = collector.await?;
    let deadlines = cids.iter().map(|c| (c.clone(), deadline)).collect();
    let l = Lateness::of(&seen, &deadlines, &emptied);
    if !l.not_gone.is_empty() {
        raw_remove_many(&ctx.raw, &l.not_gone).await;
    }
    Ok(l)
}

// ---- 5. scale ------------------------------------------------------------

async fn live_count(client: &mut Client) -> std::result::Result<usize, tonic::Status> {
    Ok(client.list_sandboxes(ListSandboxesRequest::default()).await?.into_inner().sandboxes.len())
}

/// ListSandboxes calls made before the scale creates, with nothing live.
const EMPTY_LIST_CALLS: usize = 50;

async fn scale(ctx: &mut Ctx, n: usize, list_calls: usize) -> Result<Value> {
    println!(
        "[5] scale: {n} live sandboxes (created {CONCURRENCY} at a time), list latency, restart-to-serving, delete all"
    );
    let rss_before = ctx.daemon.rss_kib();
    // For contrast: the same call while nothing is live (a near-empty response).
    let already_live = live_count(&mut ctx.client).await?;
    let mut list_empty = Vec::with_capacity(EMPTY_LIST_CALLS);
    for _ in 0..EMPTY_LIST_CALLS {
        let t = Instant::now();
        live_count(&mut ctx.client).await?;
        list_empty.push(t.elapsed());
    }
    let s_list_empty = Summary::of(&list_empty);
    let (created, failures, create_wall) = sp_create_many(&ctx.client, n, LONG_TTL).await;
    let ids: Vec<String> = created.iter().map(|(sb, _)| sb.id.clone()).collect();
    let create_lat: Vec<Duration> = created.iter().map(|(_, d)| *d).collect();
    let live = ids.len();
    // Give the allocator a moment after the burst, then read RSS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_live = ctx.daemon.rss_kib();
    println!(
        "    created {live}/{n} ({} failed) in {:.1} s ({:.1} creates/s)",
        failures.len(),
        create_wall.as_secs_f64(),
        live as f64 / create_wall.as_secs_f64()
    );
    for f in failures.iter().take(5) {
        println!("    failure: {f}");
    }
    let kib = |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    println!("    daemon VmRSS: {} before, {} with {live} live", kib(rss_before), kib(rss_live));

    // ListSandboxes latency with everything live.
    let mut list_lat = Vec::with_capacity(list_calls);
    let mut list_wrong = 0;
    for _ in 0..list_calls {
        let t = Instant::now();
        let got = live_count(&mut ctx.client).await?;
        list_lat.push(t.elapsed());
        if got != live {
            list_wrong += 1;
        }
    }
    let s_list = Summary::of(&list_lat);

    let restart = restart_to_serving(ctx, live).await?;
    let rss_restarted = ctx.daemon.rss_kib();

    // Delete everything.
    let (del, del_fail, del_wall) = sp_delete_many(&ctx.client, &ids).await;
    let live_after = live_count(&mut ctx.client).await?;
    let labelled_after = ctx.raw.count_labelled().await?;

    header();
    row("sandpit CreateSandbox (concurrency 16)", Summary::of(&create_lat));
    row(&format!("ListSandboxes ({already_live} live) x{EMPTY_LIST_CALLS}"), s_list_empty);
    row(&format!("ListSandboxes ({live} live) x{list_calls}"), s_list);
    row("DeleteSandbox (concurrency 16)", Summary::of(&del));
    if list_wrong > 0 {
        println!("    {list_wrong} ListSandboxes call(s) returned a count other than {live}");
    }
    println!(
        "    daemon VmRSS after restart: {}; deleted {}/{live} ({} failed) in {:.1} s; \
         live after: {live_after}; containers with the run label after: {labelled_after}",
        kib(rss_restarted),
        del.len(),
        del_fail.len(),
        del_wall.as_secs_f64()
    );
    Ok(json!({
        "n": n,
        "create": {
            "concurrency": CONCURRENCY,
            "succeeded": live,
            "failed": failures.len(),
            "failures": failures,
            "wall_ms": round3(ms(create_wall)),
            "latency": stats::json_opt(Summary::of(&create_lat)),
        },
        "rss_kib": {"before": rss_before, "live": rss_live, "after_restart": rss_restarted},
        "list": {"calls": list_calls, "live": live, "wrong_count": list_wrong, "latency": stats::json_opt(s_list)},
        "list_before_create": {"calls": EMPTY_LIST_CALLS, "live": already_live, "latency": stats::json_opt(s_list_empty)},
        "restart": restart,
        "delete": {
            "concurrency": CONCURRENCY,
            "succeeded": del.len(),
            "failed": del_fail.len(),
            "failures": del_fail,
            "wall_ms": round3(ms(del_wall)),
            "latency": stats::json_opt(Summary::of(&del)),
        },
        "live_after_delete": live_after,
        "labelled_containers_after": labelled_after,
    }))
}

/// Kills the daemon with SIGKILL and starts it again on the same config and
/// data dir: how long until a ListSandboxes returns all `live` sandboxes,
/// and when the first reconcile pass was logged. Prints the figures and
/// returns them as JSON; `ctx.client` is the new daemon's.
async fn restart_to_serving(ctx: &mut Ctx, live: usize) -> Result<Value> {
    // Restart: SIGKILL, respawn on the same config and data dir.
    let log_from = ctx.daemon.log_len();
    ctx.daemon.kill9();
    let spawned_wall = SystemTime::now();
    let t0 = Instant::now();
    ctx.daemon.spawn()?;
    ctx.daemon.wait_addr(Duration::from_secs(60), Duration::from_millis(2)).await?;
    let addr_at = t0.elapsed();
    let mut attempts = 0usize;
    let mut first_partial = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (client, serving_at) = loop {
        attempts += 1;
        if let Ok(mut c) = ctx.daemon.client().await {
            match live_count(&mut c).await {
                Ok(k) if k == live => break (c, t0.elapsed()),
                Ok(k) => {
                    first_partial.get_or_insert(k);
                }
                Err(_) => {}
            }
        }
        if Instant::now() > deadline {
            return Err("the restarted daemon did not list every sandbox within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    ctx.client = client;
    // The first reconcile pass's log line (adopted N), relative to the spawn.
    let mut reconcile = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while reconcile.is_none() && Instant::now() < deadline {
        let log = ctx.daemon.log_since(log_from);
        reconcile = log.lines().find(|l| l.contains("reconciled with Docker")).map(|l| {
            (
                harness::log_time(l).and_then(|t| t.duration_since(spawned_wall).ok()),
                l.split_once("report=").map(|(_, r)| r.trim().to_string()),
            )
        });
        if reconcile.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let serving_log = ctx
        .daemon
        .log_since(log_from)
        .lines()
        .find(|l| l.contains("sandpitd serving"))
        .and_then(harness::log_time)
        .and_then(|t| t.duration_since(spawned_wall).ok());

    println!(
        "    restart after SIGKILL: address file after {:.0} ms; 'sandpitd serving' logged at {}; \
         first ListSandboxes returning all {live} at {:.0} ms ({attempts} attempt(s){})",
        ms(addr_at),
        serving_log.map_or("-".into(), |d| format!("{:.0} ms", ms(d))),
        ms(serving_at),
        first_partial.map(|k| format!(", an earlier one returned {k}")).unwrap_or_default()
    );
    match &reconcile {
        Some((at, report)) => println!(
            "    first reconcile pass logged at {} after the spawn: {}",
            at.map_or("-".into(), |d| format!("{:.0} ms", ms(d))),
            report.as_deref().unwrap_or("-")
        ),
        None => println!("    no 'reconciled with Docker' line within 60 s of the restart"),
    }
    Ok(json!({
        "signal": "SIGKILL",
        "addr_file_ms": round3(ms(addr_at)),
        "serving_logged_ms": serving_log.map(|d| round3(ms(d))),
        "first_full_list_ms": round3(ms(serving_at)),
        "attempts": attempts,
        "first_partial_count": first_partial,
        "first_reconcile_logged_ms": reconcile.as_ref().and_then(|(d, _)| d.map(|d| round3(ms(d)))),
        "first_reconcile_report": reconcile.and_then(|(_, r)| r),
    }))
}

// ---- machine info ----------------------------------------------------------

async fn machine_info(docker: &bollard::Docker) -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string());
    let mem_total_kib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
    let version = docker.version().await.ok();
    let info = docker.info().await.ok();
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu_model,
        "mem_total_kib": mem_total_kib,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "docker_server_version": version.as_ref().and_then(|v| v.version.clone()),
        "docker_api_version": version.as_ref().and_then(|v| v.api_version.clone()),
        "docker_storage_driver": info.as_ref().and_then(|i| i.driver.clone()),
        "docker_cgroup_driver": info.as_ref().and_then(|i| i.cgroup_driver.map(|d| d.to_string())),
        "docker_cgroup_version": info.as_ref().and_then(|i| i.cgroup_version.map(|d| d.to_string())),
        "docker_os": info.as_ref().and_then(|i| i.operating_system.clone()),
        "docker_containers_at_start": info.as_ref().and_then(|i| i.containers),
    })
}

fn git_describe() -> Value {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    json!({
        "commit": git(&["rev-parse", "HEAD"]),
        "branch": git(&["rev-parse", "--abbrev-ref", "HEAD"]),
        "dirty": git(&["status", "--porcelain"]).map(|s| !s.is_empty()),
    })
}
