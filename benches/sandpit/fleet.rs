//! Scenarios `fleet` and `failover`: several daemons on one PostgreSQL
//! database (a server of this machine's `postgresql` binaries, started by
//! the benchmark, with fsync on and `synchronous_commit=off`: the SQLite
//! store's guarantee).
//!
//! - `fleet`: create throughput (`n` creates, 16 at a time, spread over the
//!   daemons round robin) and ListSandboxes latency with those `n` live
//!   (calls round robin), for the run's SQLite daemon and for 1, 2 and 3
//!   daemons on a new database each; raw Docker's create + start at the same
//!   concurrency in the same run.
//! - `failover`: two daemons; the lease holder is killed with SIGKILL `rounds`
//!   times. Takeover is the time from the kill to the survivor saying it is
//!   on duty (`sandpit_on_duty`, polled every 10 ms), at a random phase of
//!   the survivor's once-a-second tries; a sandbox due 300 ms after each
//!   kill (while nobody holds the lease, unless the survivor's next try
//!   comes sooner) shows how late an expiry that falls due during the
//!   handover runs. The killed daemon is started again between rounds.

use std::time::{Duration, Instant, SystemTime};

use futures_util::{stream, StreamExt};
use sandpit_proto::{self as proto, CreateSandboxRequest};
use serde_json::{json, Value};

use super::harness::{ttl, Client, Daemon, Result, PROFILE};
use super::stats::{header, ms, round3, row, Summary};
use super::{live_count, raw_remove_many, sp_delete_many, Ctx, CONCURRENCY, LONG_TTL};

/// A few daemons on one new database, sharing what daemons on one host
/// must share (egress port, audit key and checkpoints), and an experiment
/// of theirs.
struct Fleet {
    daemons: Vec<Daemon>,
    experiment: String,
    _audit: tempfile::TempDir,
}

async fn fleet_of(run: &str, n: usize) -> Result<Fleet> {
    // SAFETY (set_var): set before the server starts, from the one task that starts it.
    unsafe { std::env::set_var("SANDPIT_TEST_POSTGRES_DURABLE", "1") };
    let url = sandpit_store_postgres::test_server::database()
        .await
        .ok_or("no PostgreSQL server could be started (install Debian's postgresql)")?;
    let audit = tempfile::Builder::new().prefix("sandpit-bench-audit-").tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let extra = format!(
        "[store]\nurl = \"{url}\"\npool_size = 16\n\n[audit]\nsigning_key = \"{}\"\ncheckpoint_dir = \"{}\"\n",
        audit.path().join("signing.key").display(),
        audit.path().join("checkpoints").display()
    );
    let mut daemons = Vec::new();
    for _ in 0..n {
        let mut d = Daemon::prepare_with(run, port, &extra)?;
        d.start().await?;
        daemons.push(d);
    }
    let experiment = daemons[0].new_experiment().await?;
    Ok(Fleet { daemons, experiment, _audit: audit })
}

async fn create_in(
    client: &mut Client,
    experiment: &str,
    ttl_: Duration,
) -> std::result::Result<(proto::Sandbox, Duration), tonic::Status> {
    let req = CreateSandboxRequest {
        experiment: experiment.into(),
        profile: PROFILE.into(),
        classification: "OFFICIAL".into(),
        ttl: ttl(ttl_),
        ..Default::default()
    };
    let t = Instant::now();
    let sb = client.create_sandbox(req).await?.into_inner();
    Ok((sb, t.elapsed()))
}

/// One configuration's figures.
struct Measured {
    created: usize,
    failures: Vec<String>,
    wall: Duration,
    create: Option<Summary>,
    list: Option<Summary>,
    wrong_counts: usize,
}

/// `n` creates spread over `clients`, then `list_calls` ListSandboxes, then delete all.
async fn measure(clients: &[Client], experiment: &str, n: usize, list_calls: usize) -> Result<Measured> {
    let t = Instant::now();
    let results: Vec<_> = stream::iter(0..n)
        .map(|i| {
            let mut c = clients[i % clients.len()].clone();
            let experiment = experiment.to_string();
            async move { create_in(&mut c, &experiment, LONG_TTL).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let wall = t.elapsed();
    let (mut ids, mut lat, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    for r in results {
        match r {
            Ok((sb, d)) => {
                ids.push(sb.id);
                lat.push(d);
            }
            Err(s) => failures.push(format!("{}: {}", s.code(), s.message())),
        }
    }
    let mut list = Vec::with_capacity(list_calls);
    let mut wrong_counts = 0;
    for i in 0..list_calls {
        let mut c = clients[i % clients.len()].clone();
        let t = Instant::now();
        let live = live_count(&mut c).await?;
        list.push(t.elapsed());
        if live != ids.len() {
            wrong_counts += 1;
        }
    }
    let (_, del_fail, _) = sp_delete_many(&clients[0], &ids).await;
    if !del_fail.is_empty() {
        return Err(format!("{} deletes failed: {}", del_fail.len(), del_fail[0]).into());
    }
    Ok(Measured {
        created: ids.len(),
        failures,
        wall,
        create: Summary::of(&lat),
        list: Summary::of(&list),
        wrong_counts,
    })
}

fn measured_json(m: &Measured) -> Value {
    json!({
        "created": m.created,
        "failed": m.failures.len(),
        "failures": m.failures.iter().take(5).collect::<Vec<_>>(),
        "wall_ms": round3(ms(m.wall)),
        "creates_per_second": round3(m.created as f64 / m.wall.as_secs_f64()),
        "create_latency": super::stats::json_opt(m.create),
        "list_latency": super::stats::json_opt(m.list),
        "list_wrong_counts": m.wrong_counts,
    })
}

pub async fn fleet(ctx: &mut Ctx, n: usize, list_calls: usize) -> Result<Value> {
    println!(
        "[fleet] create throughput ({n} creates, {CONCURRENCY} at a time) and ListSandboxes ({n} live, x{list_calls}): \
         SQLite beside 1, 2 and 3 daemons on PostgreSQL, raw Docker in the same run"
    );
    let mut out = serde_json::Map::new();
    let mut rows = Vec::new();

    // Raw Docker: create + start at the same concurrency.
    let t = Instant::now();
    let raw: Vec<_> = stream::iter(0..n)
        .map(|_| {
            let r = ctx.raw.clone();
            async move { r.create().await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let raw_wall = t.elapsed();
    let raw_ids: Vec<String> = raw.iter().filter_map(|r| r.as_ref().ok().map(|(id, _)| id.clone())).collect();
    let raw_lat: Vec<Duration> = raw.iter().filter_map(|r| r.as_ref().ok().map(|(_, d)| *d)).collect();
    raw_remove_many(&ctx.raw, &raw_ids).await;
    let raw_rate = raw_ids.len() as f64 / raw_wall.as_secs_f64();
    out.insert(
        "raw".into(),
        json!({"created": raw_ids.len(), "wall_ms": round3(ms(raw_wall)), "creates_per_second": round3(raw_rate), "create_latency": super::stats::json_opt(Summary::of(&raw_lat))}),
    );

    let sqlite = measure(std::slice::from_ref(&ctx.client), super::harness::experiment(), n, list_calls).await?;
    out.insert("sqlite_1".into(), measured_json(&sqlite));
    rows.push(("SQLite, 1 daemon".to_string(), sqlite));

    for daemons in 1..=3 {
        let fleet = fleet_of(&ctx.run, daemons).await?;
        let mut clients = Vec::new();
        for d in &fleet.daemons {
            clients.push(d.client().await?);
        }
        let m = measure(&clients, &fleet.experiment, n, list_calls).await?;
        out.insert(format!("postgres_{daemons}"), measured_json(&m));
        rows.push((format!("PostgreSQL, {daemons} daemon(s)"), m));
    }

    println!(
        "    raw Docker create+start: {} in {:.1} s ({raw_rate:.1} creates/s)",
        raw_ids.len(),
        raw_wall.as_secs_f64()
    );
    for (label, m) in &rows {
        println!(
            "    {label}: {}/{n} created ({} failed) in {:.1} s: {:.1} creates/s",
            m.created,
            m.failures.len(),
            m.wall.as_secs_f64(),
            m.created as f64 / m.wall.as_secs_f64()
        );
        for f in m.failures.iter().take(3) {
            println!("      failure: {f}");
        }
        if m.wrong_counts > 0 {
            println!("      {} ListSandboxes call(s) returned another count", m.wrong_counts);
        }
    }
    header();
    row("raw Docker create+start (concurrency 16)", Summary::of(&raw_lat));
    for (label, m) in &rows {
        row(&format!("{label}: CreateSandbox"), m.create);
        row(&format!("{label}: ListSandboxes ({} live)", m.created), m.list);
    }
    out.insert("n".into(), json!(n));
    out.insert("concurrency".into(), json!(CONCURRENCY));
    out.insert(
        "postgres_server".into(),
        json!("this machine's postgresql binaries on loopback; fsync on, synchronous_commit=off (as SQLite's WAL with synchronous=NORMAL)"),
    );
    Ok(Value::Object(out))
}

async fn on_duty(d: &Daemon) -> bool {
    d.metrics().await.is_ok_and(|m| m.lines().any(|l| l.trim() == "sandpit_on_duty 1"))
}

/// The index of the lease holder, once exactly one daemon holds it.
async fn holder(daemons: &[Daemon], limit: Duration) -> Result<usize> {
    let deadline = Instant::now() + limit;
    loop {
        let mut held = Vec::new();
        for (i, d) in daemons.iter().enumerate() {
            if on_duty(d).await {
                held.push(i);
            }
        }
        if held.len() == 1 {
            return Ok(held[0]);
        }
        if Instant::now() > deadline {
            return Err(format!("no single lease holder after {limit:?} (holders: {held:?})").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn failover(ctx: &mut Ctx, rounds: usize) -> Result<Value> {
    println!("[failover] two daemons on PostgreSQL (lease_retry 1s); the lease holder SIGKILLed {rounds} times");
    let mut fleet = fleet_of(&ctx.run, 2).await?;
    let docker = ctx.raw.docker.clone();
    let (mut takeover, mut late) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let h = holder(&fleet.daemons, Duration::from_secs(30)).await?;
        let other = 1 - h;
        // A random phase against the survivor's once-a-second tries, so
        // that the takeover samples the whole retry interval.
        let mut jitter = [0u8; 2];
        getrandom::fill(&mut jitter).map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(u64::from(u16::from_le_bytes(jitter)) % 1000)).await;
        // Due about 300 ms after the kill: in the handover.
        let mut c = fleet.daemons[other].client().await?;
        let (sb, _) = create_in(&mut c, &fleet.experiment, Duration::from_secs(3)).await?;
        let deadline = super::harness::to_system(sb.expires_at.as_ref().ok_or("no expires_at")?);
        let kill_at = deadline - Duration::from_millis(300);
        tokio::time::sleep(kill_at.duration_since(SystemTime::now()).unwrap_or_default()).await;
        let killed = Instant::now();
        fleet.daemons[h].kill9();
        while !on_duty(&fleet.daemons[other]).await {
            if killed.elapsed() > Duration::from_secs(30) {
                return Err("the survivor did not take the lease within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        takeover.push(killed.elapsed());
        let stopped = loop {
            let running = docker.inspect_container(&sb.container_id, None).await.ok().and_then(|c| c.state?.running);
            if running != Some(true) {
                break SystemTime::now();
            }
            if killed.elapsed() > Duration::from_secs(30) {
                return Err(format!("{} was not expired within 30 s of the kill", sb.id).into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        late.push(stopped.duration_since(deadline).unwrap_or_default());
        println!(
            "    round {}: takeover {:.0} ms after the kill; the sandbox due in the handover stopped {:.0} ms after its deadline",
            round + 1,
            ms(takeover[round]),
            ms(late[round])
        );
        fleet.daemons[h].start().await?;
    }
    header();
    row("kill -9 of the holder to the survivor on duty", Summary::of(&takeover));
    row("expiry due in the handover: stopped after its deadline", Summary::of(&late));
    Ok(json!({
        "rounds": rounds,
        "lease_retry_ms": 1000,
        "takeover": super::stats::json_opt(Summary::of(&takeover)),
        "handover_expiry_lateness": super::stats::json_opt(Summary::of(&late)),
    }))
}
