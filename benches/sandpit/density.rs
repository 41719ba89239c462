//! Scenario `density` (only with `--only density`): 1,000 live sandboxes on
//! one host (`--quick` 200), half of them `isolated` (a Docker network and
//! host firewall hooks of their own), the rest with no network. Measures
//! what a full host costs and whether it stays consistent:
//!
//! - creates: throughput and latency by kind, and every failure;
//! - the host firewall: one hook per isolated network into the host chain
//!   and the forward chain (read back with `iptables -S`), and how many
//!   network changes went into how many transactions (the daemon's
//!   `sandpit_firewall_*` counters);
//! - the daemon's RSS, ListSandboxes latency with all of them live, and
//!   restart (SIGKILL) to a ListSandboxes returning all of them;
//! - teardown of all of them, then what is left: containers, networks and
//!   firewall rules of the run (all must be none);
//! - the raw Docker baseline in the same run: as many containers, the same
//!   share each on an internal network of its own (named subnets from a
//!   range of its own, as the daemon does), created and removed as fast.
//!
//! What bounds it is printed beside the figures: Docker's network count,
//! the subnet pool's size, iptables rules.

use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use serde_json::{json, Value};

use super::harness::{sp_create_in, sp_delete, Result, ISOLATED_PROFILE, PROFILE};
use super::stats::{self, ms, round3, Summary};
use super::{header, live_count, restart_to_serving, row, Ctx, CONCURRENCY, LONG_TTL};

/// A sandbox create's outcome and latency.
type Created = std::result::Result<(sandpit_proto::Sandbox, Duration), tonic::Status>;
/// A raw create's container, its own network if any, and latency.
type RawCreated = Result<(String, Option<String>, Duration)>;

pub struct DensitySize {
    pub n: usize,
    pub isolated: usize,
    pub list_calls: usize,
}

impl DensitySize {
    pub fn new(quick: bool) -> DensitySize {
        if quick {
            DensitySize { n: 200, isolated: 100, list_calls: 100 }
        } else {
            DensitySize { n: 1000, isolated: 500, list_calls: 200 }
        }
    }
}

/// The raw baseline's networks: /28s of a range of their own, never the
/// daemon's pool (harness::SUBNET_POOL) nor the test suite's.
fn raw_subnet(i: usize) -> (String, String) {
    let base = u32::from(std::net::Ipv4Addr::new(10, 251, 0, 0)) + (i as u32) * 16;
    let net = std::net::Ipv4Addr::from(base);
    let gateway = std::net::Ipv4Addr::from(base + 1);
    (format!("{net}/28"), gateway.to_string())
}

/// A counter's value in a Prometheus exposition.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// `iptables -S` lines hooking a subnet into `chain` of this instance.
fn hooks(rules: &str, hook: &str, chain: &str) -> usize {
    rules.lines().filter(|l| l.starts_with(&format!("-A {hook} -s ")) && l.ends_with(&format!("-j {chain}"))).count()
}

fn iptables_rules() -> String {
    std::process::Command::new("iptables")
        .arg("-S")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

pub async fn density(ctx: &mut Ctx, size: DensitySize) -> Result<Value> {
    let DensitySize { n, isolated, list_calls } = size;
    println!("[density] {n} live sandboxes, {isolated} of them isolated (a network each), then the raw baseline");
    let rss_before = ctx.daemon.rss_kib();
    let metrics_before = ctx.daemon.metrics().await.unwrap_or_default();
    let engine_networks_before = ctx.raw.docker.list_networks(None).await?.len();

    // Interleaved, so both kinds compete for the engine as a mixed host's would.
    let kinds: Vec<bool> = (0..n).map(|i| i * isolated / n != (i + 1) * isolated / n).collect();
    let want_isolated = kinds.iter().filter(|k| **k).count();
    let t = Instant::now();
    let results: Vec<(bool, Created)> = stream::iter(kinds.iter().copied())
        .map(|iso| {
            let mut c = ctx.client.clone();
            async move {
                let profile = if iso { ISOLATED_PROFILE } else { PROFILE };
                (iso, sp_create_in(&mut c, profile, LONG_TTL).await)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let create_wall = t.elapsed();
    let mut ids = Vec::new();
    let (mut lat_iso, mut lat_none, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    let mut container = None;
    for (iso, r) in results {
        match r {
            Ok((sb, took)) => {
                container.get_or_insert(sb.container_id.clone());
                ids.push(sb.id);
                if iso {
                    lat_iso.push(took)
                } else {
                    lat_none.push(took)
                }
            }
            Err(s) => failures.push(format!("{}: {}", s.code(), s.message())),
        }
    }
    let live = ids.len();
    println!(
        "    created {live}/{n} ({} isolated of {want_isolated}; {} failed) in {:.1} s ({:.1} creates/s)",
        lat_iso.len(),
        failures.len(),
        create_wall.as_secs_f64(),
        live as f64 / create_wall.as_secs_f64()
    );
    for f in failures.iter().take(5) {
        println!("    failure: {f}");
    }

    // The firewall as the kernel has it: one hook per isolated network.
    let short = match &container {
        Some(c) => ctx.raw.docker.inspect_container(c, None).await?.config.and_then(|c| c.labels).and_then(|l| {
            l.get("sandpit.instance").map(|i| i[..sandpit_docker::firewall::SHORT.min(i.len())].to_string())
        }),
        None => None,
    }
    .unwrap_or_default();
    let rules = iptables_rules();
    let input_hooks = hooks(&rules, "INPUT", &format!("SANDPIT-{short}"));
    let forward = if rules.contains("-A DOCKER-USER -s ") { "DOCKER-USER" } else { "FORWARD" };
    let forward_hooks = hooks(&rules, forward, &format!("SANDPITF-{short}"));
    let total_rules = rules.lines().filter(|l| l.starts_with("-A ")).count();
    let consistent = input_hooks == lat_iso.len() && forward_hooks == lat_iso.len();
    let engine_networks = ctx.raw.docker.list_networks(None).await?.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_live = ctx.daemon.rss_kib();
    let metrics_live = ctx.daemon.metrics().await.unwrap_or_default();
    let batches = |from: &str, to: &str| {
        let delta = |name: &str| counter(to, name) - counter(from, name);
        (delta("sandpit_firewall_transactions_total"), delta("sandpit_firewall_changes_total"))
    };
    let (tx_create, ch_create) = batches(&metrics_before, &metrics_live);
    println!(
        "    firewall: {input_hooks} INPUT and {forward_hooks} {forward} hooks for {} isolated networks ({}); \
         {ch_create} network changes in {tx_create} transactions; {total_rules} filter rules on the host",
        lat_iso.len(),
        if consistent { "consistent" } else { "INCONSISTENT" }
    );
    let kib = |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    println!(
        "    engine networks: {engine_networks} (was {engine_networks_before}); daemon VmRSS {} before, {} with {live} live",
        kib(rss_before),
        kib(rss_live)
    );

    let mut list_lat = Vec::with_capacity(list_calls);
    let mut list_wrong = 0;
    for _ in 0..list_calls {
        let t = Instant::now();
        if live_count(&mut ctx.client).await? != live {
            list_wrong += 1;
        }
        list_lat.push(t.elapsed());
    }
    let restart = restart_to_serving(ctx, live).await?;
    let rss_restarted = ctx.daemon.rss_kib();
    // The counters start again with the new process.
    let metrics_restarted = ctx.daemon.metrics().await.unwrap_or_default();

    let t = Instant::now();
    let deleted: Vec<std::result::Result<Duration, tonic::Status>> = stream::iter(ids.iter().cloned())
        .map(|id| {
            let mut c = ctx.client.clone();
            async move { sp_delete(&mut c, &id).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let delete_wall = t.elapsed();
    let del_lat: Vec<Duration> = deleted.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    let del_failed: Vec<String> = deleted.iter().filter_map(|r| r.as_ref().err().map(|s| s.to_string())).collect();
    let metrics_after = ctx.daemon.metrics().await.unwrap_or_default();
    let (tx_delete, ch_delete) = batches(&metrics_restarted, &metrics_after);
    let left_containers = ctx.raw.count_labelled().await?;
    let left_networks = ctx.raw.count_labelled_networks().await?;
    let rules_after = iptables_rules();
    let left_rules = rules_after.lines().filter(|l| !short.is_empty() && l.contains(&short)).count();
    println!(
        "    deleted {}/{live} ({} failed) in {:.1} s; left: {left_containers} containers, {left_networks} networks, \
         {left_rules} firewall rules; {} network changes (adoptions at restart included) in {} transactions",
        del_lat.len(),
        del_failed.len(),
        delete_wall.as_secs_f64(),
        ch_delete,
        tx_delete
    );

    // The raw baseline: the same mix, straight to the engine.
    let t = Instant::now();
    let raw_results: Vec<(bool, RawCreated)> = stream::iter(kinds.iter().copied().enumerate())
        .map(|(i, iso)| {
            let raw = ctx.raw.clone();
            async move {
                let r = if iso {
                    let (subnet, gateway) = raw_subnet(i);
                    raw.create_isolated(&subnet, &gateway).await.map(|(c, n, d)| (c, Some(n), d))
                } else {
                    raw.create().await.map(|(c, d)| (c, None, d))
                };
                (iso, r)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let raw_wall = t.elapsed();
    let (mut raw_iso, mut raw_none, mut raw_failed, mut raw_made) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (iso, r) in raw_results {
        match r {
            Ok((c, net, d)) => {
                raw_made.push((c, net));
                if iso {
                    raw_iso.push(d)
                } else {
                    raw_none.push(d)
                }
            }
            Err(e) => raw_failed.push(e.to_string()),
        }
    }
    let t = Instant::now();
    let raw_removed: Vec<Result<()>> = stream::iter(raw_made)
        .map(|(c, net)| {
            let raw = ctx.raw.clone();
            async move {
                raw.remove(&c).await?;
                if let Some(net) = net {
                    raw.docker.remove_network(&net).await?;
                }
                Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let raw_remove_wall = t.elapsed();
    let raw_remove_failed = raw_removed.iter().filter(|r| r.is_err()).count();
    println!(
        "    raw Docker: created {} ({} on own networks; {} failed) in {:.1} s; removed with their networks in {:.1} s ({raw_remove_failed} failed)",
        raw_iso.len() + raw_none.len(),
        raw_iso.len(),
        raw_failed.len(),
        raw_wall.as_secs_f64(),
        raw_remove_wall.as_secs_f64()
    );
    for f in raw_failed.iter().take(3) {
        println!("    raw failure: {f}");
    }

    header();
    row(&format!("sandpit CreateSandbox isolated (concurrency {CONCURRENCY})"), Summary::of(&lat_iso));
    row(&format!("raw network + inspect+create+start (concurrency {CONCURRENCY})"), Summary::of(&raw_iso));
    row("sandpit CreateSandbox none", Summary::of(&lat_none));
    row("raw inspect+create+start none", Summary::of(&raw_none));
    row(&format!("ListSandboxes ({live} live) x{list_calls}"), Summary::of(&list_lat));
    row("DeleteSandbox (concurrency 16)", Summary::of(&del_lat));
    println!(
        "    floors (issue; information only): RSS < 64 MiB (now {}), ListSandboxes p99 < 20 ms, restart to serving all < 3 s",
        kib(rss_live)
    );
    println!(
        "    bounds: subnet pool {} of 4096 /28s in use at the peak; Docker networks on the engine {engine_networks}; \
         {total_rules} iptables filter rules at the peak",
        lat_iso.len()
    );
    Ok(json!({
        "n": n,
        "isolated_requested": want_isolated,
        "create": {
            "concurrency": CONCURRENCY,
            "succeeded": live,
            "isolated": lat_iso.len(),
            "failed": failures.len(),
            "failures": failures,
            "wall_ms": round3(ms(create_wall)),
            "latency_isolated": stats::json_opt(Summary::of(&lat_iso)),
            "latency_none": stats::json_opt(Summary::of(&lat_none)),
        },
        "firewall": {
            "input_hooks": input_hooks,
            "forward_hooks": forward_hooks,
            "forward_chain": forward,
            "consistent": consistent,
            "filter_rules_at_peak": total_rules,
            "create_changes": ch_create,
            "create_transactions": tx_create,
            "delete_changes": ch_delete,
            "delete_transactions": tx_delete,
        },
        "engine_networks": {"before": engine_networks_before, "at_peak": engine_networks},
        "rss_kib": {"before": rss_before, "live": rss_live, "after_restart": rss_restarted},
        "list": {"calls": list_calls, "live": live, "wrong_count": list_wrong, "latency": stats::json_opt(Summary::of(&list_lat))},
        "restart": restart,
        "delete": {
            "succeeded": del_lat.len(),
            "failed": del_failed.len(),
            "failures": del_failed,
            "wall_ms": round3(ms(delete_wall)),
            "latency": stats::json_opt(Summary::of(&del_lat)),
        },
        "left_after_teardown": {"containers": left_containers, "networks": left_networks, "firewall_rules": left_rules},
        "raw": {
            "created": raw_iso.len() + raw_none.len(),
            "isolated": raw_iso.len(),
            "failed": raw_failed.len(),
            "failures": raw_failed,
            "wall_ms": round3(ms(raw_wall)),
            "latency_isolated": stats::json_opt(Summary::of(&raw_iso)),
            "latency_none": stats::json_opt(Summary::of(&raw_none)),
            "remove_wall_ms": round3(ms(raw_remove_wall)),
            "remove_failed": raw_remove_failed,
        },
    }))
}
