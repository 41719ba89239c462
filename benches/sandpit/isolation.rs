//! Scenario `isolation`: what gVisor costs. In one run, on network mode
//! `none`: cold create-to-running of Sandpit on a runc profile and on a
//! gVisor one, and of the raw engine on runc and on the same runsc runtime
//! (the daemon's own container body, as in scenario 1); warm claims from a
//! gVisor pool; and the round trip of a trivial command (`true`) through
//! Sandpit's Exec and through a raw `docker exec` on each runtime.

use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecResults};
use futures_util::StreamExt;
use sandpit_core::policy::Isolation;
use sandpit_proto::{self as proto, exec_output::Output};
use serde_json::{json, Value};

use super::harness::{
    sp_create_in, sp_delete, Client, ProfileClient, Raw, Result, GVISOR_PROFILE, GVISOR_RUNTIME, PROFILE,
};
use super::stats::{self, header, ms, ratio, ratio_json, ratio_row, row, Summary};
use super::{Ctx, LONG_TTL};

/// Iterations discarded before the samples.
const WARMUP: usize = 2;
/// Size of the gVisor pool warm claims are taken from.
const GVISOR_POOL: u32 = 2;
/// How long a gVisor pool may take to fill.
const POOL_LIMIT: Duration = Duration::from_secs(120);

/// One of the four ways a sandbox is made in the cold comparison.
#[derive(Clone, Copy)]
enum Way {
    SandpitRunc,
    RawRunc,
    SandpitGvisor,
    RawGvisor,
}

const WAYS: [Way; 4] = [Way::SandpitRunc, Way::RawRunc, Way::SandpitGvisor, Way::RawGvisor];

/// Creates one sandbox the given way and removes it (untimed); the create's time.
async fn create_once(ctx: &mut Ctx, way: Way) -> Result<Duration> {
    match way {
        Way::SandpitRunc | Way::SandpitGvisor => {
            let profile = if matches!(way, Way::SandpitRunc) { PROFILE } else { GVISOR_PROFILE };
            let (sb, d) = sp_create_in(&mut ctx.client, profile, LONG_TTL).await?;
            sp_delete(&mut ctx.client, &sb.id).await?;
            Ok(d)
        }
        Way::RawRunc => {
            let (cid, d) = ctx.raw.create().await?;
            ctx.raw.remove(&cid).await?;
            Ok(d)
        }
        Way::RawGvisor => {
            let (cid, d) = ctx.raw.create_on(Isolation::Gvisor, Some(GVISOR_RUNTIME)).await?;
            ctx.raw.remove(&cid).await?;
            Ok(d)
        }
    }
}

/// One Exec of `true` through Sandpit, to its exit code.
async fn sp_exec(client: &mut Client, id: &str) -> Result<Duration> {
    let t = Instant::now();
    let req = proto::ExecRequest { id: id.into(), command: vec!["true".into()], ..Default::default() };
    let mut stream = client.exec(req).await?.into_inner();
    while let Some(m) = stream.next().await {
        if let Some(Output::ExitCode(code)) = m?.output {
            if code != 0 {
                return Err(format!("true exited {code}").into());
            }
            return Ok(t.elapsed());
        }
    }
    Err("the exec stream ended without an exit code".into())
}

/// One `docker exec` of `true` on a raw container: create, start attached
/// until its output ends, inspect for the exit code.
async fn raw_exec(raw: &Raw, container: &str) -> Result<Duration> {
    let t = Instant::now();
    let opts = CreateExecOptions::<String> {
        cmd: Some(vec!["true".into()]),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let exec = raw.docker.create_exec(container, opts).await?;
    if let StartExecResults::Attached { mut output, .. } = raw.docker.start_exec(&exec.id, None).await? {
        while let Some(chunk) = output.next().await {
            chunk?;
        }
    }
    let code = raw.docker.inspect_exec(&exec.id).await?.exit_code;
    if code != Some(0) {
        return Err(format!("raw exec of true exited {code:?}").into());
    }
    Ok(t.elapsed())
}

/// The pool of `bench-gvisor`: (warm, claims so far); none until the
/// daemon has taken in its new size.
async fn gvisor_pool(p: &mut ProfileClient) -> Result<(u32, u64)> {
    let pools = p.list_pools(proto::ListPoolsRequest {}).await?.into_inner().pools;
    Ok(pools.into_iter().find(|s| s.profile == GVISOR_PROFILE).map_or((0, 0), |s| (s.warm, s.claims)))
}

async fn set_gvisor_pool(ctx: &Ctx, p: &mut ProfileClient, size: u32) -> Result<()> {
    ctx.daemon.write_gvisor_profile(size)?;
    let r = p.reload_profiles(proto::ReloadProfilesRequest {}).await?.into_inner();
    if !r.applied {
        return Err(format!("ReloadProfiles (bench-gvisor warm_pool = {size}) not applied: {:?}", r.errors).into());
    }
    Ok(())
}

pub async fn isolation(ctx: &mut Ctx, n: usize, warm_n: usize) -> Result<Value> {
    println!(
        "[6] isolation: runc against gVisor ({GVISOR_RUNTIME}), network none. Cold creates n={n} per way (order \
         rotated each round, {WARMUP} warm-up rounds discarded, delete after each, untimed); {warm_n} warm claims \
         from a gVisor pool of {GVISOR_POOL}, full before each; n={n} execs of `true` per runtime"
    );
    // Cold.
    let mut cold: [Vec<Duration>; 4] = Default::default();
    for i in 0..WARMUP + n {
        for k in 0..WAYS.len() {
            let w = (i + k) % WAYS.len();
            let d = create_once(ctx, WAYS[w]).await?;
            if i >= WARMUP {
                cold[w].push(d);
            }
        }
    }
    let [sp_runc, raw_runc, sp_gv, raw_gv] = cold.map(|v| Summary::of(&v));
    header();
    row("sandpit CreateSandbox, runc", sp_runc);
    row("raw inspect+create+start, runc", raw_runc);
    row("sandpit CreateSandbox, gVisor", sp_gv);
    row("raw inspect+create+start, gVisor", raw_gv);
    ratio_row("ratio sandpit/raw, gVisor", ratio(sp_gv, raw_gv));
    ratio_row("ratio gVisor/runc, sandpit", ratio(sp_gv, sp_runc));
    ratio_row("ratio gVisor/runc, raw", ratio(raw_gv, raw_runc));

    // Exec round trips, on one sandbox (and one raw container) per runtime.
    let (runc_sb, _) = sp_create_in(&mut ctx.client, PROFILE, LONG_TTL).await?;
    let (gv_sb, _) = sp_create_in(&mut ctx.client, GVISOR_PROFILE, LONG_TTL).await?;
    let (runc_raw, _) = ctx.raw.create().await?;
    let (gv_raw, _) = ctx.raw.create_on(Isolation::Gvisor, Some(GVISOR_RUNTIME)).await?;
    let mut execs: [Vec<Duration>; 4] = Default::default();
    let measured = async {
        for i in 0..WARMUP + n {
            let round = [
                sp_exec(&mut ctx.client, &runc_sb.id).await?,
                raw_exec(&ctx.raw, &runc_raw).await?,
                sp_exec(&mut ctx.client, &gv_sb.id).await?,
                raw_exec(&ctx.raw, &gv_raw).await?,
            ];
            if i >= WARMUP {
                for (k, d) in round.into_iter().enumerate() {
                    execs[k].push(d);
                }
            }
        }
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    sp_delete(&mut ctx.client, &runc_sb.id).await?;
    sp_delete(&mut ctx.client, &gv_sb.id).await?;
    ctx.raw.remove(&runc_raw).await?;
    ctx.raw.remove(&gv_raw).await?;
    measured?;
    let [ex_sp_runc, ex_raw_runc, ex_sp_gv, ex_raw_gv] = execs.map(|v| Summary::of(&v));
    println!();
    header();
    row("sandpit Exec `true`, runc", ex_sp_runc);
    row("raw docker exec `true`, runc", ex_raw_runc);
    row("sandpit Exec `true`, gVisor", ex_sp_gv);
    row("raw docker exec `true`, gVisor", ex_raw_gv);
    ratio_row("ratio gVisor/runc, sandpit", ratio(ex_sp_gv, ex_sp_runc));

    // Warm claims from a gVisor pool of GVISOR_POOL, full before each claim
    // (polled, untimed), the claimed sandbox deleted after (untimed).
    let mut p = ctx.daemon.profile_client().await?;
    set_gvisor_pool(ctx, &mut p, GVISOR_POOL).await?;
    let t = Instant::now();
    let wait_full = |p: &mut ProfileClient| {
        let mut p = p.clone();
        async move {
            let t = Instant::now();
            loop {
                let (warm, claims) = gvisor_pool(&mut p).await?;
                if warm >= GVISOR_POOL {
                    return Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(claims);
                }
                if t.elapsed() > POOL_LIMIT {
                    return Err(format!("bench-gvisor pool not full after {POOL_LIMIT:?}: {warm}/{GVISOR_POOL}").into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let claims_before = wait_full(&mut p).await?;
    let filled_in = t.elapsed();
    let mut claims = Vec::new();
    for _ in 0..warm_n {
        wait_full(&mut p).await?;
        let (sb, d) = sp_create_in(&mut ctx.client, GVISOR_PROFILE, LONG_TTL).await?;
        claims.push(d);
        sp_delete(&mut ctx.client, &sb.id).await?;
    }
    let (_, claims_after) = gvisor_pool(&mut p).await?;
    set_gvisor_pool(ctx, &mut p, 0).await?;
    // Drained: no live sandbox of the profile left (ListPools may stop
    // listing a pool of size 0 before its sandboxes are gone).
    let mut op = ctx.daemon.operator_client().await?;
    let t = Instant::now();
    loop {
        let live = op.list_sandboxes(proto::ListSandboxesRequest::default()).await?.into_inner().sandboxes;
        if !live.iter().any(|sb| sb.profile == GVISOR_PROFILE) || t.elapsed() > POOL_LIMIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s_claim = Summary::of(&claims);
    println!();
    println!("    gVisor pool of {GVISOR_POOL} filled in {:.1} s", filled_in.as_secs_f64());
    header();
    row("warm claim, gVisor (CreateSandbox)", s_claim);
    ratio_row("ratio warm claim gVisor / cold sandpit gVisor", ratio(s_claim, sp_gv));
    let counted = claims_after.saturating_sub(claims_before);
    println!("    claims counted by ListPools: {counted} of {} creates", claims.len());
    let problems: Vec<String> = if counted as usize == claims.len() {
        vec![]
    } else {
        vec![format!("{counted} claims counted of {}", claims.len())]
    };

    let samples = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>();
    Ok(json!({
        "n": n,
        "warmup_rounds_discarded": WARMUP,
        "network": "none",
        "gvisor_runtime": GVISOR_RUNTIME,
        "cold": {
            "sandpit_runc": stats::json_opt(sp_runc),
            "raw_runc": stats::json_opt(raw_runc),
            "sandpit_gvisor": stats::json_opt(sp_gv),
            "raw_gvisor": stats::json_opt(raw_gv),
            "ratio_sandpit_over_raw_gvisor": ratio_json(ratio(sp_gv, raw_gv)),
            "ratio_gvisor_over_runc_sandpit": ratio_json(ratio(sp_gv, sp_runc)),
            "ratio_gvisor_over_runc_raw": ratio_json(ratio(raw_gv, raw_runc)),
        },
        "exec_true": {
            "sandpit_runc": stats::json_opt(ex_sp_runc),
            "raw_runc": stats::json_opt(ex_raw_runc),
            "sandpit_gvisor": stats::json_opt(ex_sp_gv),
            "raw_gvisor": stats::json_opt(ex_raw_gv),
        },
        "warm_claim_gvisor": {
            "pool": GVISOR_POOL,
            "filled_in_ms": ms(filled_in),
            "claims": stats::json_opt(s_claim),
            "counted_by_list_pools": counted,
            "samples_ms": samples(&claims),
        },
        "problems": problems,
    }))
}
