//! Scenario `work`: what working inside a sandbox costs, against what the
//! engine gives without Sandpit, in one run.
//!
//! - Copies of one file of pseudo-random bytes into and out of a sandbox's
//!   `/tmp`: Sandpit's CopyIn and CopyOut (a tar archive over gRPC, through
//!   the helper in the sandbox); the engine's archive API, which is what
//!   `docker cp` uses (into a raw container's writable root: the API cannot
//!   reach a tmpfs); and `docker exec -i ... cat` on a raw hardened
//!   container. Order rotated each round.
//! - The round trip of 64 bytes over a forwarded port to an echo server
//!   inside a sandbox (Sandpit's PortForward, one connection), against the
//!   same echo server in a raw container reached as plain Docker reaches a
//!   port it does not publish, `docker exec -i C busybox nc 127.0.0.1 PORT`;
//!   and the time to open a connection and get its first echo, both ways.

use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder, RemoveContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use futures_util::StreamExt;
use sandpit_proto::{self as proto, copy_in_request::Part, port_forward_request};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::harness::{sp_create_in, sp_delete, unique, Client, Result, IMAGE, RAW_LABEL, RUN_LABEL, WORK_PROFILE};
use super::stats::{self, header, ratio, ratio_row, row, Summary};
use super::{Ctx, LONG_TTL};

/// Rounds discarded before the samples.
const WARMUP: usize = 1;
/// The echo server's port, in the sandbox and in the raw container.
const ECHO_PORT: u16 = 9000;
/// Bytes per round trip.
const MESSAGE: usize = 64;

/// Pseudo-random bytes (xorshift): nothing compresses.
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `data` as a tar archive holding one file, `data.bin`.
fn archive(data: &[u8]) -> Result<Vec<u8>> {
    use sandpit_helper::tar;
    let mut a = Vec::with_capacity(data.len() + 2048);
    let h = tar::Header {
        kind: tar::Kind::File,
        path: b"data.bin".to_vec(),
        link: vec![],
        mode: 0o644,
        size: data.len() as u64,
        mtime: 0,
    };
    tar::write_header(&mut a, &h)?;
    a.extend_from_slice(data);
    a.extend(std::iter::repeat_n(0u8, tar::padding(data.len() as u64)));
    tar::write_end(&mut a)?;
    Ok(a)
}

/// MB/s (10^6 bytes) of moving `bytes` in a p50 of `s`.
fn mb_per_s(bytes: usize, s: Option<Summary>) -> f64 {
    s.map_or(f64::NAN, |s| bytes as f64 / 1e6 / (s.p50 / 1000.0))
}

/// A raw container for the baselines: the daemon's container body (with
/// the work profile's resources, its echo server as the command), with a
/// `writable` root for the archive API.
async fn raw_container(ctx: &Ctx, writable: bool) -> Result<String> {
    let id = unique("rw");
    let mut spec = ctx.raw.spec(&id);
    spec.resources = resources();
    spec.command = echo_command();
    let mut body = sandpit_docker::create_body(&spec, None, 0, &Default::default());
    let hc = body.host_config.get_or_insert_with(Default::default);
    hc.readonly_rootfs = Some(!writable);
    hc.restart_policy = Some(RestartPolicy { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None });
    let labels = body.labels.get_or_insert_with(Default::default);
    labels.insert(RUN_LABEL.into(), ctx.run.clone());
    labels.insert(RAW_LABEL.into(), "true".into());
    let opts = CreateContainerOptionsBuilder::default().name(&spec.name).build();
    let created = ctx.raw.docker.create_container(Some(opts), body).await?;
    ctx.raw.docker.start_container(&created.id, None).await?;
    Ok(created.id)
}

/// What a work sandbox (and each raw container) gets: room in /tmp for the
/// file and a copy of it being extracted (tmpfs counts against memory).
fn resources() -> sandpit_core::policy::Resources {
    sandpit_core::policy::Resources { cpus: 1.0, memory: 384 << 20, pids: 64, tmpfs: 160 << 20 }
}

/// The `bench-work` profile: the echo server as its command, its port forwardable.
pub fn profile_toml() -> String {
    let r = resources();
    let command: Vec<String> = echo_command().iter().map(|a| format!("{a:?}")).collect();
    format!(
        "description = \"benchmark: working inside a sandbox\"\nmax_classification = \"OFFICIAL\"\n\
         images = [\"{IMAGE}\"]\ncommand = [{}]\n[resources]\ncpus = {:.1}\nmemory = \"{}MiB\"\npids = {}\n\
         tmpfs = \"{}MiB\"\n[port_forward]\nports = [{ECHO_PORT}]\n[network]\nmode = \"none\"\n",
        command.join(", "),
        r.cpus,
        r.memory >> 20,
        r.pids,
        r.tmpfs >> 20
    )
}

fn echo_command() -> Vec<String> {
    ["busybox", "nc", "-ll", "-p", &ECHO_PORT.to_string(), "-e", "cat"].iter().map(|s| s.to_string()).collect()
}

async fn remove(ctx: &Ctx, id: &str) {
    let opts = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
    let _ = ctx.raw.docker.remove_container(id, Some(opts)).await;
}

async fn sp_copy_in(client: &mut Client, id: &str, archive: &[u8]) -> Result<Duration> {
    let t = Instant::now();
    let header =
        proto::CopyInRequest { part: Some(Part::Header(proto::CopyInHeader { id: id.into(), path: "/tmp".into() })) };
    let chunks: Vec<proto::CopyInRequest> =
        archive.chunks(256 << 10).map(|c| proto::CopyInRequest { part: Some(Part::Chunk(c.to_vec())) }).collect();
    client.copy_in(futures_util::stream::iter(std::iter::once(header).chain(chunks))).await?;
    Ok(t.elapsed())
}

async fn sp_copy_out(client: &mut Client, id: &str, want: usize) -> Result<Duration> {
    let t = Instant::now();
    let mut s =
        client.copy_out(proto::CopyOutRequest { id: id.into(), path: "/tmp/data.bin".into() }).await?.into_inner();
    let mut got = 0;
    while let Some(c) = s.next().await {
        got += c?.chunk.len();
    }
    if got < want {
        return Err(format!("CopyOut brought {got} bytes, fewer than {want}").into());
    }
    Ok(t.elapsed())
}

/// `docker exec -i C sh -c 'cat > /tmp/data.bin'`, fed `data`.
async fn raw_exec_in(ctx: &Ctx, container: &str, data: &[u8]) -> Result<Duration> {
    let d = &ctx.raw.docker;
    let t = Instant::now();
    let opts = CreateExecOptions::<String> {
        cmd: Some(vec!["sh".into(), "-c".into(), "cat > /tmp/data.bin".into()]),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let exec = d.create_exec(container, opts).await?;
    if let StartExecResults::Attached { mut output, mut input } = d.start_exec(&exec.id, None).await? {
        for c in data.chunks(256 << 10) {
            input.write_all(c).await?;
        }
        input.shutdown().await?;
        while let Some(c) = output.next().await {
            c?;
        }
    }
    exec_ok(ctx, &exec.id).await?;
    Ok(t.elapsed())
}

/// `docker exec C cat /tmp/data.bin`, read to its end.
async fn raw_exec_out(ctx: &Ctx, container: &str, want: usize) -> Result<Duration> {
    let d = &ctx.raw.docker;
    let t = Instant::now();
    let opts = CreateExecOptions::<String> {
        cmd: Some(vec!["cat".into(), "/tmp/data.bin".into()]),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let exec = d.create_exec(container, opts).await?;
    let mut got = 0;
    if let StartExecResults::Attached { mut output, .. } = d.start_exec(&exec.id, None).await? {
        while let Some(c) = output.next().await {
            got += c?.into_bytes().len();
        }
    }
    exec_ok(ctx, &exec.id).await?;
    if got < want {
        return Err(format!("exec cat brought {got} bytes, fewer than {want}").into());
    }
    Ok(t.elapsed())
}

async fn exec_ok(ctx: &Ctx, exec_id: &str) -> Result<()> {
    for _ in 0..100 {
        let i = ctx.raw.docker.inspect_exec(exec_id).await?;
        if i.running != Some(true) {
            return match i.exit_code {
                Some(0) => Ok(()),
                code => Err(format!("raw exec exited {code:?}").into()),
            };
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err("raw exec did not finish".into())
}

/// The engine's archive API (`docker cp`), into the container's root.
async fn raw_cp_in(ctx: &Ctx, container: &str, archive: &[u8]) -> Result<Duration> {
    let t = Instant::now();
    let opts = UploadToContainerOptionsBuilder::default().path("/").build();
    let body = bollard::body_full(bytes::Bytes::copy_from_slice(archive));
    ctx.raw.docker.upload_to_container(container, Some(opts), body).await?;
    Ok(t.elapsed())
}

async fn raw_cp_out(ctx: &Ctx, container: &str, want: usize) -> Result<Duration> {
    let t = Instant::now();
    let opts = DownloadFromContainerOptionsBuilder::default().path("/data.bin").build();
    let mut s = ctx.raw.docker.download_from_container(container, Some(opts));
    let mut got = 0;
    while let Some(c) = s.next().await {
        got += c?.len();
    }
    if got < want {
        return Err(format!("the archive API brought {got} bytes, fewer than {want}").into());
    }
    Ok(t.elapsed())
}

/// One forwarded connection through Sandpit: write to `tx`, read `rx`.
struct Forwarded {
    tx: mpsc::Sender<proto::PortForwardRequest>,
    rx: tonic::Streaming<proto::PortForwardResponse>,
    pending: Vec<u8>,
}

impl Forwarded {
    async fn open(client: &mut Client, id: &str) -> Result<Forwarded> {
        let (tx, rx) = mpsc::channel(8);
        let header = proto::PortForwardHeader { id: id.into(), port: u32::from(ECHO_PORT) };
        tx.send(proto::PortForwardRequest { part: Some(port_forward_request::Part::Header(header)) }).await?;
        let rx = client.port_forward(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        Ok(Forwarded { tx, rx, pending: Vec::new() })
    }

    async fn round_trip(&mut self, msg: &[u8]) -> Result<()> {
        let part = port_forward_request::Part::Data(msg.to_vec());
        self.tx.send(proto::PortForwardRequest { part: Some(part) }).await?;
        while self.pending.len() < msg.len() {
            match self.rx.next().await {
                Some(m) => self.pending.extend(m?.data),
                None => return Err("the forwarded connection closed".into()),
            }
        }
        self.pending.drain(..msg.len());
        Ok(())
    }
}

/// A connection to the raw echo container's port as plain Docker gives one
/// without publishing anything: `docker exec -i C busybox nc 127.0.0.1 PORT`.
struct ExecConn {
    input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    output: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>> + Send>,
    >,
    pending: usize,
}

impl ExecConn {
    async fn open(ctx: &Ctx, container: &str) -> Result<ExecConn> {
        let opts = CreateExecOptions::<String> {
            cmd: Some(vec!["busybox".into(), "nc".into(), "127.0.0.1".into(), ECHO_PORT.to_string()]),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let exec = ctx.raw.docker.create_exec(container, opts).await?;
        match ctx.raw.docker.start_exec(&exec.id, None).await? {
            StartExecResults::Attached { output, input } => Ok(ExecConn { input, output, pending: 0 }),
            StartExecResults::Detached => Err("the exec started detached".into()),
        }
    }

    async fn round_trip(&mut self, msg: &[u8]) -> Result<()> {
        self.input.write_all(msg).await?;
        self.input.flush().await?;
        while self.pending < msg.len() {
            match self.output.next().await {
                Some(out) => self.pending += out?.into_bytes().len(),
                None => return Err("docker exec nc ended".into()),
            }
        }
        self.pending -= msg.len();
        Ok(())
    }
}

/// Retries `f` until the echo server inside answers (it starts with the container).
async fn until_ready<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let t = Instant::now();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if t.elapsed() > Duration::from_secs(20) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub async fn work(ctx: &mut Ctx, size: usize, n: usize, rtt_n: usize) -> Result<Value> {
    println!(
        "[7] work: copies of a {} MB file into and out of /tmp, n={n} per way (order rotated, {WARMUP} warm-up \
         round discarded); {rtt_n} round trips of {MESSAGE} bytes over one forwarded connection and over a \
         `docker exec -i nc` into a raw container (how plain Docker reaches a port it does not publish), and {n} openings each",
        size / 1_000_000
    );
    let data = noise(size);
    let tar = archive(&data)?;
    let (sb, _) = sp_create_in(&mut ctx.client, WORK_PROFILE, LONG_TTL).await?;
    let hardened = raw_container(ctx, false).await?;
    let writable = raw_container(ctx, true).await?;
    let echo = raw_container(ctx, false).await?;
    let measured = measure(ctx, &sb.id, &hardened, &writable, &echo, &data, &tar, n, rtt_n).await;
    sp_delete(&mut ctx.client, &sb.id).await?;
    for c in [&hardened, &writable, &echo] {
        remove(ctx, c).await;
    }
    measured
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    ctx: &mut Ctx,
    sb: &str,
    hardened: &str,
    writable: &str,
    echo: &str,
    data: &[u8],
    tar: &[u8],
    n: usize,
    rtt_n: usize,
) -> Result<Value> {
    // Copies: six ways, rotated.
    let mut t: [Vec<Duration>; 6] = Default::default();
    for i in 0..WARMUP + n {
        for k in 0..6 {
            let w = (i + k) % 6;
            let d = match w {
                0 => sp_copy_in(&mut ctx.client, sb, tar).await?,
                1 => raw_cp_in(ctx, writable, tar).await?,
                2 => raw_exec_in(ctx, hardened, data).await?,
                3 => {
                    // Copy-out after the copy-in of this round put the file there.
                    sp_copy_out(&mut ctx.client, sb, data.len()).await?
                }
                4 => raw_cp_out(ctx, writable, data.len()).await?,
                _ => raw_exec_out(ctx, hardened, data.len()).await?,
            };
            if i >= WARMUP {
                t[w].push(d);
            }
        }
    }
    let [sp_in, cp_in, ex_in, sp_out, cp_out, ex_out] = t.map(|v| Summary::of(&v));
    header();
    row("sandpit CopyIn", sp_in);
    row("docker archive API (docker cp) in", cp_in);
    row("docker exec -i cat > file", ex_in);
    row("sandpit CopyOut", sp_out);
    row("docker archive API (docker cp) out", cp_out);
    row("docker exec cat file", ex_out);
    let size = data.len();
    let rates = [sp_in, cp_in, ex_in, sp_out, cp_out, ex_out].map(|s| mb_per_s(size, s));
    println!(
        "    MB/s (p50): in: sandpit {:.0}, docker cp {:.0}, exec+cat {:.0}; out: sandpit {:.0}, docker cp {:.0}, exec+cat {:.0}",
        rates[0], rates[1], rates[2], rates[3], rates[4], rates[5]
    );

    // Port forwarding: round trips on one connection, then openings.
    let msg = vec![b'x'; MESSAGE];
    let mut fwd = until_ready(|| {
        let mut c = ctx.client.clone();
        let msg = msg.clone();
        async move {
            let mut f = Forwarded::open(&mut c, sb).await?;
            f.round_trip(&msg).await?;
            Ok(f)
        }
    })
    .await?;
    let shared: &Ctx = ctx;
    let mut direct = until_ready(|| {
        let msg = msg.clone();
        async move {
            let mut e = ExecConn::open(shared, echo).await?;
            e.round_trip(&msg).await?;
            Ok(e)
        }
    })
    .await?;
    let (mut rt_sp, mut rt_raw) = (Vec::new(), Vec::new());
    for _ in 0..rtt_n {
        let t = Instant::now();
        fwd.round_trip(&msg).await?;
        rt_sp.push(t.elapsed());
        let t = Instant::now();
        direct.round_trip(&msg).await?;
        rt_raw.push(t.elapsed());
    }
    drop(fwd);
    drop(direct);
    let (mut open_sp, mut open_raw) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let mut f = Forwarded::open(&mut ctx.client, sb).await?;
        f.round_trip(&msg).await?;
        open_sp.push(t.elapsed());
        drop(f);
        let t = Instant::now();
        let mut e = ExecConn::open(ctx, echo).await?;
        e.round_trip(&msg).await?;
        open_raw.push(t.elapsed());
        drop(e);
    }
    let [rt_sp, rt_raw, open_sp, open_raw] = [rt_sp, rt_raw, open_sp, open_raw].map(|v| Summary::of(&v));
    println!();
    header();
    row("sandpit PortForward round trip", rt_sp);
    row("docker exec -i nc (raw), round trip", rt_raw);
    ratio_row("ratio sandpit/raw", ratio(rt_sp, rt_raw));
    row("sandpit PortForward open + first echo", open_sp);
    row("docker exec -i nc open + first echo", open_raw);
    Ok(json!({
        "file_bytes": size,
        "copy_in": {"sandpit": stats::json_opt(sp_in), "docker_cp": stats::json_opt(cp_in), "exec_cat": stats::json_opt(ex_in)},
        "copy_out": {"sandpit": stats::json_opt(sp_out), "docker_cp": stats::json_opt(cp_out), "exec_cat": stats::json_opt(ex_out)},
        "mb_per_s_p50": {
            "in": {"sandpit": stats::round3(rates[0]), "docker_cp": stats::round3(rates[1]), "exec_cat": stats::round3(rates[2])},
            "out": {"sandpit": stats::round3(rates[3]), "docker_cp": stats::round3(rates[4]), "exec_cat": stats::round3(rates[5])},
        },
        "port_forward": {
            "message_bytes": MESSAGE,
            "round_trip": {"sandpit": stats::json_opt(rt_sp), "docker_exec_nc": stats::json_opt(rt_raw)},
            "open_and_first_echo": {"sandpit": stats::json_opt(open_sp), "docker_exec_nc": stats::json_opt(open_raw)},
        },
    }))
}
