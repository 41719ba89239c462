//! Scenario `soak` (only with `--only soak`): 1,000 mixed operations
//! (`--quick` 200) from 50 concurrent workers (`--quick` 20) against one
//! daemon, then everything torn down. A correctness check of the daemon
//! under sustained mixed load rather than a timing: it fails on any
//! unexpected error and on any Docker object of the run left behind.
//!
//! Each block of 20 operations is 4 creates of long-lived sandboxes (every
//! fourth of them on `bench-isolated`, which has a network of its own),
//! 2 creates of short-lived ones (ttl 3-10 s) whose expiry, 2 operations,
//! the daemon performs on its own, 6 execs (`echo soak` or `true`; mostly on
//! the newer half of the long-lived sandboxes, one in six on a short-lived
//! one at least 3 s from expiry), 3 extends (newer half) and 3 deletes (the
//! oldest long-lived sandbox). Errors on a sandbox another worker deleted,
//! or that was expiring, are expected races and counted apart; everything
//! else is unexpected. Expiry is checked from
//! each short-lived sandbox's record (state `expired`, `endedAt` -
//! `expiresAt` is its latency) and the engine (container gone). Then the
//! remaining sandboxes are deleted, the daemon idles, and its VmRSS and the
//! containers and networks carrying the run label are read.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{stream, StreamExt};
use sandpit_proto::{self as proto, exec_output::Output, ExecRequest, ExtendSandboxRequest, GetSandboxRequest};
use serde_json::{json, Value};
use tonic::Code;

use super::harness::{self, sp_create_in, sp_delete, to_system, ttl, Client, Result, ISOLATED_PROFILE, PROFILE};
use super::stats::{self, ms, round3, Summary};
use super::{Ctx, LONG_TTL};

/// Sizes: operations in all and concurrent workers.
pub struct SoakSize {
    pub ops: usize,
    pub workers: usize,
    /// Rounds in the same daemon: memory after the second shows whether the
    /// first's was growth or the allocator keeping what it had.
    pub rounds: usize,
}

impl SoakSize {
    pub fn new(quick: bool) -> SoakSize {
        if quick {
            SoakSize { ops: 200, workers: 20, rounds: 2 }
        } else {
            SoakSize { ops: 1000, workers: 50, rounds: 2 }
        }
    }
}

/// What a worker does; `Expiry` is the daemon's, two per block of 20.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Create,
    CreateShort,
    Exec,
    Extend,
    Delete,
    Expiry,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Create => "create",
            Kind::CreateShort => "create_short_ttl",
            Kind::Exec => "exec",
            Kind::Extend => "extend",
            Kind::Delete => "delete",
            Kind::Expiry => "expiry",
        }
    }
}

/// One block of 20 operations: the 18 the workers issue (plus 2 expiries).
const BLOCK: [Kind; 18] = {
    use Kind::*;
    [
        Create,
        Exec,
        CreateShort,
        Exec,
        Extend,
        Delete,
        Create,
        Exec,
        Exec,
        CreateShort,
        Extend,
        Delete,
        Create,
        Exec,
        Create,
        Exec,
        Extend,
        Delete,
    ]
};
const BLOCK_OPS: usize = 20;

/// How long a delete, extend or exec waits for a long-lived sandbox to exist.
const TARGET_WAIT: Duration = Duration::from_secs(60);
/// Idle time before the last RSS reading.
const IDLE: Duration = Duration::from_secs(5);
const RSS_SAMPLE: Duration = Duration::from_millis(100);

#[derive(Debug)]
enum Outcome {
    Ok,
    /// On a sandbox that was deleted or expiring meanwhile.
    Expected(String),
    Unexpected(String),
}

struct Record {
    kind: Kind,
    latency: Duration,
    outcome: Outcome,
}

#[derive(Default)]
struct Shared {
    /// Long-lived sandboxes nobody has deleted.
    live: Mutex<Vec<String>>,
    /// Short-lived sandboxes and their deadlines.
    short: Mutex<Vec<(String, SystemTime)>>,
    /// Sandboxes a worker has deleted (or started deleting).
    deleted: Mutex<HashSet<String>>,
    records: Mutex<Vec<Record>>,
    /// Long-lived creates so far (every fourth is isolated).
    creates: AtomicUsize,
    /// Long-lived sandboxes a delete leaves in place (fewer than the run ends with).
    keep: usize,
}

impl Shared {
    fn record(&self, kind: Kind, latency: Duration, outcome: Outcome) {
        self.records.lock().unwrap().push(Record { kind, latency, outcome });
    }

    /// An error is an expected race when its sandbox was deleted by another
    /// worker or was within a second of (or past) its expiry.
    fn classify(&self, id: &str, expires: Option<SystemTime>, what: String) -> Outcome {
        let deleted = self.deleted.lock().unwrap().contains(id);
        let expiring = expires.is_some_and(|t| SystemTime::now() + Duration::from_secs(1) >= t);
        if deleted || expiring {
            Outcome::Expected(what)
        } else {
            Outcome::Unexpected(what)
        }
    }

    /// A long-lived sandbox, waiting for one to exist. `take` removes the
    /// oldest (for a delete); otherwise one of the newer half, so that most
    /// execs and extends do not race a delete (some still do).
    async fn pick(&self, seed: usize, take: bool) -> Option<String> {
        let deadline = Instant::now() + TARGET_WAIT;
        loop {
            {
                let mut live = self.live.lock().unwrap();
                // A delete leaves `keep` behind, or it would take each new
                // sandbox as soon as it exists, under every exec aimed at it.
                if live.len() > if take { self.keep } else { 0 } {
                    return Some(if take {
                        let id = live.remove(0);
                        self.deleted.lock().unwrap().insert(id.clone());
                        id
                    } else {
                        let newer = live.len().div_ceil(2);
                        live[live.len() - 1 - seed.wrapping_mul(2_654_435_761) % newer].clone()
                    });
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A short-lived sandbox at least 3 s from its deadline (an exec under
    /// load can still outlast it).
    fn pick_short(&self, seed: usize) -> Option<(String, SystemTime)> {
        let now = SystemTime::now() + Duration::from_secs(3);
        let short = self.short.lock().unwrap();
        let open: Vec<&(String, SystemTime)> = short.iter().filter(|(_, t)| *t > now).collect();
        (!open.is_empty()).then(|| open[seed.wrapping_mul(40_503) % open.len()].clone())
    }
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Runs `echo soak` or `true`; `Ok` when it exits 0 with the expected output.
async fn exec(client: &mut Client, id: &str, echo: bool) -> std::result::Result<(), String> {
    let command = if echo { vec!["echo".into(), "soak".into()] } else { vec!["true".into()] };
    let req = ExecRequest { id: id.into(), command, timeout: ttl(Duration::from_secs(60)), ..Default::default() };
    let mut out = client.exec(req).await.map_err(|s| status_text(&s))?.into_inner();
    let mut stdout = Vec::new();
    let mut code = None;
    while let Some(msg) = out.next().await {
        match msg.map_err(|s| status_text(&s))?.output {
            Some(Output::Stdout(b)) => stdout.extend(b),
            Some(Output::ExitCode(c)) => code = Some(c),
            _ => {}
        }
    }
    let want: &[u8] = if echo { b"soak\n" } else { b"" };
    match code {
        Some(0) if stdout == want => Ok(()),
        Some(c) => Err(format!("exit code {c}, stdout {:?}", String::from_utf8_lossy(&stdout))),
        None => Err("exec stream ended without an exit code".into()),
    }
}

async fn worker(client: Client, plan: Arc<Vec<Kind>>, next: Arc<AtomicUsize>, shared: Arc<Shared>) {
    let mut c = client;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(&kind) = plan.get(i) else { return };
        let t = Instant::now();
        match kind {
            Kind::Create | Kind::CreateShort => {
                let short = kind == Kind::CreateShort;
                let isolated = !short && shared.creates.fetch_add(1, Ordering::Relaxed).is_multiple_of(4);
                let profile = if isolated { ISOLATED_PROFILE } else { PROFILE };
                let life = if short { Duration::from_secs(3 + (i % 8) as u64) } else { LONG_TTL };
                match sp_create_in(&mut c, profile, life).await {
                    Ok((sb, d)) => {
                        if short {
                            let at = sb.expires_at.as_ref().map(to_system).unwrap_or_else(SystemTime::now);
                            shared.short.lock().unwrap().push((sb.id, at));
                        } else {
                            shared.live.lock().unwrap().push(sb.id);
                        }
                        shared.record(kind, d, Outcome::Ok);
                    }
                    Err(s) => shared.record(kind, t.elapsed(), Outcome::Unexpected(status_text(&s))),
                }
            }
            Kind::Exec => {
                // One in six on a short-lived sandbox, which may be expiring.
                let target =
                    if i.is_multiple_of(6) { shared.pick_short(i).map(|(id, at)| (id, Some(at))) } else { None };
                let target = match target {
                    Some(t) => Some(t),
                    None => shared.pick(i, false).await.map(|id| (id, None)),
                };
                let Some((id, expires)) = target else {
                    shared.record(kind, t.elapsed(), Outcome::Unexpected("no sandbox to exec in".into()));
                    continue;
                };
                let outcome = match exec(&mut c, &id, i.is_multiple_of(2)).await {
                    Ok(()) => Outcome::Ok,
                    Err(e) => shared.classify(&id, expires, e),
                };
                shared.record(kind, t.elapsed(), outcome);
            }
            Kind::Extend => {
                let Some(id) = shared.pick(i, false).await else {
                    shared.record(kind, t.elapsed(), Outcome::Unexpected("no sandbox to extend".into()));
                    continue;
                };
                let req = ExtendSandboxRequest { id: id.clone(), ttl: ttl(LONG_TTL) };
                let outcome = match c.extend_sandbox(req).await {
                    Ok(_) => Outcome::Ok,
                    Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => {
                        shared.classify(&id, None, status_text(&s))
                    }
                    Err(s) => Outcome::Unexpected(status_text(&s)),
                };
                shared.record(kind, t.elapsed(), outcome);
            }
            Kind::Delete => {
                let Some(id) = shared.pick(i, true).await else {
                    shared.record(kind, t.elapsed(), Outcome::Unexpected("no sandbox to delete".into()));
                    continue;
                };
                // Each sandbox is deleted by one worker only: any error is unexpected.
                let outcome = match sp_delete(&mut c, &id).await {
                    Ok(_) => Outcome::Ok,
                    Err(s) => Outcome::Unexpected(status_text(&s)),
                };
                shared.record(kind, t.elapsed(), outcome);
            }
            Kind::Expiry => unreachable!("the daemon's"),
        }
    }
}

/// Waits for a short-lived sandbox to be expired and its container gone;
/// the latency is `endedAt - expiresAt` from its record.
async fn expiry(mut c: Client, docker: bollard::Docker, id: String, expires: SystemTime) -> Record {
    let deadline = expires + Duration::from_secs(60);
    let fail =
        |what: String| Record { kind: Kind::Expiry, latency: Duration::ZERO, outcome: Outcome::Unexpected(what) };
    let sb = loop {
        match c.get_sandbox(GetSandboxRequest { id: id.clone() }).await {
            Ok(r) => {
                let sb = r.into_inner();
                if sb.state == proto::SandboxState::Expired as i32 {
                    break sb;
                }
                if sb.state != proto::SandboxState::Running as i32 {
                    return fail(format!("{id} is {:?}, not expired", sb.state()));
                }
            }
            Err(s) => return fail(format!("{id}: {}", status_text(&s))),
        }
        if SystemTime::now() > deadline {
            return fail(format!("{id} not expired 60 s after its deadline"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // The record says expired only once the container is removed.
    if !sb.container_id.is_empty() && docker.inspect_container(&sb.container_id, None).await.is_ok() {
        return fail(format!("{id} is expired but its container {} still exists", sb.container_id));
    }
    let ended = sb.ended_at.as_ref().map(to_system);
    let latency = ended.and_then(|e| e.duration_since(expires).ok()).unwrap_or_default();
    Record { kind: Kind::Expiry, latency, outcome: Outcome::Ok }
}

/// Samples the daemon's VmRSS until stopped; the largest reading.
fn rss_sampler(pid: u32) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(AtomicU64::new(0));
    let p = Arc::clone(&peak);
    let task = tokio::spawn(async move {
        loop {
            if let Some(k) = rss_of(pid) {
                p.fetch_max(k, Ordering::Relaxed);
            }
            tokio::time::sleep(RSS_SAMPLE).await;
        }
    });
    (peak, task)
}

fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The soak, `size.rounds` times over in the same daemon.
pub async fn soak(ctx: &mut Ctx, size: SoakSize) -> Result<Value> {
    let mut rounds = Vec::new();
    let mut problems = Vec::new();
    for round in 1..=size.rounds {
        println!("[soak] round {round} of {}", size.rounds);
        let v = soak_round(ctx, &size).await?;
        if let Some(p) = v.get("problems").and_then(Value::as_array) {
            problems.extend(p.iter().map(|p| json!(format!("round {round}: {}", p.as_str().unwrap_or_default()))));
        }
        rounds.push(v);
    }
    let rss_end: Vec<Value> = rounds.iter().map(|r| r["rss_kib"]["end"].clone()).collect();
    println!(
        "    daemon VmRSS (KiB) at the start, then after each round idles: {} then {rss_end:?}",
        rounds[0]["rss_kib"]["start"]
    );
    Ok(json!({ "rounds": rounds, "rss_kib_after_each_round": rss_end, "problems": problems }))
}

async fn soak_round(ctx: &mut Ctx, size: &SoakSize) -> Result<Value> {
    let blocks = size.ops.div_ceil(BLOCK_OPS);
    let plan: Vec<Kind> = (0..blocks).flat_map(|_| BLOCK).collect();
    let planned = blocks * BLOCK_OPS;
    println!(
        "[soak] {planned} operations from {} concurrent workers: per 20, 4 creates (1 in 4 isolated), \
         2 short-lived creates (ttl 3-10 s) and their 2 expiries, 6 execs, 3 extends, 3 deletes; then tear down",
        size.workers
    );
    let pid = ctx.daemon.pid().ok_or("the daemon is not running")?;
    let rss_start = rss_of(pid);
    let (peak, sampler) = rss_sampler(pid);

    // The run ends with a twentieth of its operations as live sandboxes; keep a fifth of that.
    let shared = Arc::new(Shared { keep: planned / 100, ..Shared::default() });
    let next = Arc::new(AtomicUsize::new(0));
    let plan = Arc::new(plan);
    let t = Instant::now();
    let workers: Vec<_> = (0..size.workers)
        .map(|_| tokio::spawn(worker(ctx.client.clone(), Arc::clone(&plan), Arc::clone(&next), Arc::clone(&shared))))
        .collect();
    for w in workers {
        w.await?;
    }
    let workers_wall = t.elapsed();

    // The daemon's operations: every short-lived sandbox expires on its own.
    let short: Vec<(String, SystemTime)> = shared.short.lock().unwrap().clone();
    let docker = ctx.raw.docker.clone();
    let expiries: Vec<Record> = stream::iter(short)
        .map(|(id, at)| expiry(ctx.client.clone(), docker.clone(), id, at))
        .buffer_unordered(size.workers)
        .collect()
        .await;
    let ops_wall = t.elapsed();
    shared.records.lock().unwrap().extend(expiries);

    // Tear down what is left, then let the daemon idle.
    let left: Vec<String> = shared.live.lock().unwrap().drain(..).collect();
    let teardown: Vec<std::result::Result<Duration, tonic::Status>> = stream::iter(left.clone())
        .map(|id| {
            let mut c = ctx.client.clone();
            async move { sp_delete(&mut c, &id).await }
        })
        .buffer_unordered(size.workers)
        .collect()
        .await;
    let teardown_failures: Vec<String> = teardown.iter().filter_map(|r| r.as_ref().err().map(status_text)).collect();
    let live_after = super::live_count(&mut ctx.client).await?;
    tokio::time::sleep(IDLE).await;
    sampler.abort();
    let rss_end = rss_of(pid);
    let rss_peak = peak.load(Ordering::Relaxed).max(rss_end.unwrap_or(0));
    let containers_left = harness::labelled_containers(&ctx.run);
    let networks_left = harness::labelled_networks(&ctx.run);

    // Figures by kind.
    let records = std::mem::take(&mut *shared.records.lock().unwrap());
    let mut by_kind: BTreeMap<Kind, KindStats> = BTreeMap::new();
    let mut unexpected_examples = Vec::new();
    for r in &records {
        let e = by_kind.entry(r.kind).or_default();
        match &r.outcome {
            Outcome::Ok => e.ok.push(r.latency),
            Outcome::Expected(what) => *e.expected.entry(error_class(what)).or_default() += 1,
            Outcome::Unexpected(what) => {
                *e.unexpected.entry(error_class(what)).or_default() += 1;
                if unexpected_examples.len() < 10 {
                    unexpected_examples.push(format!("{}: {what}", r.kind.as_str()));
                }
            }
        }
    }
    let total = records.len();
    let issued = records.iter().filter(|r| r.kind != Kind::Expiry).count();
    let unexpected: usize = by_kind.values().map(|v| v.unexpected.values().sum::<usize>()).sum();
    let expected: usize = by_kind.values().map(|v| v.expected.values().sum::<usize>()).sum();

    stats::header();
    for (kind, k) in &by_kind {
        let label =
            if *kind == Kind::Expiry { "expiry (endedAt - expiresAt)".to_string() } else { kind.as_str().into() };
        stats::row(&label, Summary::of(&k.ok));
    }
    let kib = |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    println!(
        "    {total} operations ({} issued by workers in {:.1} s; with expiries {:.1} s, {:.1} ops/s): \
         {unexpected} unexpected error(s), {expected} expected race(s)",
        issued,
        workers_wall.as_secs_f64(),
        ops_wall.as_secs_f64(),
        total as f64 / ops_wall.as_secs_f64()
    );
    for (kind, k) in &by_kind {
        if !k.expected.is_empty() || !k.unexpected.is_empty() {
            println!(
                "    {}: {} ok, expected {:?}, unexpected {:?}",
                kind.as_str(),
                k.ok.len(),
                k.expected,
                k.unexpected
            );
        }
    }
    for e in &unexpected_examples {
        println!("    unexpected: {e}");
    }
    println!(
        "    teardown: {} deleted ({} failed); live after: {live_after}; daemon VmRSS start {}, peak {}, \
         end {} (after {} s idle)",
        left.len() - teardown_failures.len(),
        teardown_failures.len(),
        kib(rss_start),
        kib(Some(rss_peak)),
        kib(rss_end),
        IDLE.as_secs()
    );
    println!(
        "    left in Docker with the run label: {} container(s), {} network(s)",
        containers_left.len(),
        networks_left.len()
    );

    let mut problems = Vec::new();
    if unexpected > 0 {
        problems.push(format!("{unexpected} unexpected error(s): {unexpected_examples:?}"));
    }
    if !teardown_failures.is_empty() {
        problems.push(format!("teardown failures: {teardown_failures:?}"));
    }
    if live_after != 0 {
        problems.push(format!("{live_after} sandbox(es) still live after the teardown"));
    }
    if !containers_left.is_empty() || !networks_left.is_empty() {
        problems.push(format!(
            "leaked: {} container(s), {} network(s) with the run label",
            containers_left.len(),
            networks_left.len()
        ));
    }
    let kinds: serde_json::Map<String, Value> = by_kind
        .iter()
        .map(|(kind, k)| {
            (
                kind.as_str().to_string(),
                json!({
                    "ok": k.ok.len(),
                    "expected_errors": k.expected,
                    "unexpected_errors": k.unexpected,
                    "latency": stats::json_opt(Summary::of(&k.ok)),
                }),
            )
        })
        .collect();
    Ok(json!({
        "operations": total,
        "issued_by_workers": issued,
        "workers": size.workers,
        "workers_wall_ms": round3(ms(workers_wall)),
        "wall_ms": round3(ms(ops_wall)),
        "ops_per_s": round3(total as f64 / ops_wall.as_secs_f64()),
        "unexpected_errors": unexpected,
        "expected_errors": expected,
        "unexpected_examples": unexpected_examples,
        "by_kind": kinds,
        "teardown": {"deleted": left.len() - teardown_failures.len(), "failures": teardown_failures},
        "live_after_teardown": live_after,
        "rss_kib": {"start": rss_start, "peak": rss_peak, "end": rss_end, "idle_s": IDLE.as_secs()},
        "leaked": {"containers": containers_left, "networks": networks_left},
        "problems": problems,
    }))
}

/// Per kind of operation: latencies of those that succeeded, errors by class.
#[derive(Default)]
struct KindStats {
    ok: Vec<Duration>,
    expected: BTreeMap<String, usize>,
    unexpected: BTreeMap<String, usize>,
}

/// The kind of an error, for counting: the gRPC code or the first words.
fn error_class(what: &str) -> String {
    what.split(':').next().unwrap_or(what).chars().take(40).collect()
}
