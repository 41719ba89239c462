//! Scenario `exit`: how soon a sandbox whose main process dies is recorded
//! `exited`. `n` sandboxes' main processes are sent SIGTERM at one instant
//! through the engine (tini passes it on; the container exits 143); the
//! latency of each is the time of its `exited` event on WatchSandboxes (the
//! daemon stamps it after the record is committed) minus Docker's `die`
//! event for its container (time_nano). Raw Docker keeps no record to
//! compare with: the die events themselves are the reference. Beside it,
//! how late the engine delivered each `die` event to a subscriber of its
//! own (the daemon follows the same stream): when the engine is busy, that
//! delay is most of the latency.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use sandpit_proto::{self as proto};
use serde_json::{json, Value};

use super::harness::{to_system, Result};
use super::stats::{header, round3, row, samples_json, Summary};
use super::{follow_events, nanos, sp_create_many, sp_delete_many, Ctx, LONG_TTL};

pub async fn exit(ctx: &mut Ctx, n: usize) -> Result<Value> {
    println!("[exit] exit detection: {n} main processes ended at one instant; exited record - Docker's die event");
    let (created, failures, _) = sp_create_many(&ctx.client, n, LONG_TTL).await;
    let ids: Vec<String> = created.iter().map(|(sb, _)| sb.id.clone()).collect();
    if !failures.is_empty() {
        sp_delete_many(&ctx.client, &ids).await;
        return Err(format!("{} of {n} creates failed: {}", failures.len(), failures[0]).into());
    }
    let containers: HashMap<String, String> =
        created.iter().map(|(sb, _)| (sb.container_id.clone(), sb.id.clone())).collect();

    // Records first, then Docker's account; both before anything dies.
    let mut watch = ctx.client.watch_sandboxes(proto::WatchSandboxesRequest::default()).await?.into_inner();
    let docker_events =
        follow_events(&ctx.raw.docker, &ctx.run, containers.keys().cloned().collect(), Duration::from_secs(60))?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let want: HashSet<String> = ids.iter().cloned().collect();
    let recorded = tokio::spawn(async move {
        let mut at: HashMap<String, i64> = HashMap::new();
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        while at.len() < want.len() {
            let ev = tokio::select! {
                ev = watch.next() => ev,
                () = tokio::time::sleep_until(until) => break,
            };
            let Some(Ok(ev)) = ev else { break };
            let exited = ev.kind == proto::SandboxEventKind::Exited as i32;
            if let (true, Some(sb), Some(t)) = (exited, ev.sandbox, ev.time) {
                if want.contains(&sb.id) {
                    at.entry(sb.id).or_insert(nanos(to_system(&t)));
                }
            }
        }
        at
    });

    let term = bollard::query_parameters::KillContainerOptionsBuilder::default().signal("SIGTERM").build();
    let kills = containers.keys().map(|cid| {
        let (docker, term) = (ctx.raw.docker.clone(), term.clone());
        let cid = cid.clone();
        async move { docker.kill_container(&cid, Some(term)).await }
    });
    for r in futures_util::future::join_all(kills).await {
        r?;
    }
    let recorded = recorded.await?;
    // The containers stay (an exited sandbox keeps its container until
    // deleted): stop following Docker once the records are in.
    sp_delete_many(&ctx.client, &ids).await;
    let (seen, die_lag, stream_error) = docker_events.await?;

    let mut latency = Vec::new();
    let mut missing = Vec::new();
    for (cid, sb) in &containers {
        let died = seen.iter().filter(|(id, action, _)| id == cid && action == "die").map(|(_, _, t)| *t).min();
        match (died, recorded.get(sb)) {
            (Some(d), Some(r)) => latency.push((r - d) as f64 / 1e6),
            _ => missing.push(sb.clone()),
        }
    }
    header();
    let s = Summary::of_ms(&latency);
    row("exited recorded - die event", s);
    // What bounds it: the engine hands out its events late when it is busy,
    // to the daemon as to this subscriber.
    let lag = Summary::of_ms(&die_lag);
    row("die event received - die event (engine)", lag);
    println!(
        "    {} of {n} measured{}",
        latency.len(),
        if missing.is_empty() { String::new() } else { format!("; missing: {missing:?}") }
    );
    Ok(json!({
        "n": n,
        "method": "SIGTERM to every main process at once through the Docker API; latency = WatchSandboxes exited event time - Docker die event time_nano",
        "exit_detection_latency": super::stats::json_opt(s),
        "die_event_delivery_lag": super::stats::json_opt(lag),
        "samples_ms": {"exit_detection_latency": samples_json(&latency), "die_event_delivery_lag": samples_json(&die_lag)},
        "unmeasured": missing,
        "event_stream_error": stream_error,
        "max_ms": latency.iter().copied().fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x)))).map(round3),
    }))
}
