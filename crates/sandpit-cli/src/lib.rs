//! `sandpit`: the command-line client. Tables for people, `--json` (proto3
//! JSON mapping) for scripts; errors are one line naming the gRPC status.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use comfy_table::{presets, ColumnConstraint, ContentArrangement, Table, Width};
use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sandpit_core::audit::checkpoint::{Checkpoint, VerifierKey};
use sandpit_core::data_dir::{default_data_dir, ADDR_FILE, DATABASE_FILE, LOCAL_TOKEN_FILE};
use sandpit_core::text::{json_safe, shown};
use sandpit_proto as proto;
use sandpit_proto::audit_service_client::AuditServiceClient;
use sandpit_proto::profile_service_client::ProfileServiceClient;
use sandpit_proto::register_service_client::RegisterServiceClient;
use sandpit_proto::{exec_output::Output, sandbox_service_client::SandboxServiceClient};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

/// One line for a person, each field in it shown inert: a title or reason
/// cannot print a second line, move the cursor or clear the screen.
macro_rules! say {
    ($($t:tt)*) => { println!("{}", $crate::shown(&format!($($t)*))) };
}

/// [`say!`] on stderr.
macro_rules! complain {
    ($($t:tt)*) => { eprintln!("{}", $crate::shown(&format!($($t)*))) };
}

mod cp;
mod forward;
mod interactive;

const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";

#[derive(Parser)]
#[command(version, about = "Sandpit client: create and manage AI prototyping sandboxes")]
struct Cli {
    /// Daemon address. Default: the address a local daemon wrote to its data
    /// directory, else http://127.0.0.1:50051.
    #[arg(long, env = "SANDPIT_ADDR", global = true)]
    addr: Option<String>,
    /// Bearer token. Default: a local daemon's generated token.
    #[arg(long, env = "SANDPIT_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificate to verify an https:// daemon.
    #[arg(long, env = "SANDPIT_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// PEM client certificate to present to an https:// daemon (mutual TLS;
    /// needs --key). It is then the identity: the local token file is not
    /// sent. A --token or SANDPIT_TOKEN still is, and the daemon checks it first.
    #[arg(long, env = "SANDPIT_CERT", global = true)]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, env = "SANDPIT_KEY", global = true)]
    key: Option<PathBuf>,
    /// Print responses in the proto3 JSON mapping.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a sandbox and wait until it runs.
    Create {
        #[arg(long)]
        experiment: String,
        #[arg(long)]
        profile: String,
        /// OFFICIAL, OFFICIAL-SENSITIVE, SECRET or TOP-SECRET.
        #[arg(long)]
        classification: String,
        /// Time to live, e.g. 10m or 1h30m. Default: the profile's.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
        /// Image; default: the profile's first.
        #[arg(long)]
        image: Option<String>,
        /// Dataset to mount read-only at /data/NAME, repeatable.
        #[arg(long = "dataset")]
        datasets: Vec<String>,
        /// CPUs, at most the profile's (its value is the default).
        #[arg(long)]
        cpus: Option<f64>,
        /// Memory, e.g. 2GiB, at most the profile's (its value is the default).
        #[arg(long, value_parser = parse_size)]
        memory: Option<u64>,
    },
    /// Show one sandbox.
    Get { id: String },
    /// List sandboxes.
    Ls {
        /// Include expired, deleted, failed and lost sandboxes.
        #[arg(long, short)]
        all: bool,
        #[arg(long)]
        experiment: Option<String>,
    },
    /// Set a new ttl, counted from now.
    Extend {
        id: String,
        #[arg(long, value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Delete a sandbox.
    Rm { id: String },
    /// Run a command in a sandbox; exits with the command's exit code (124
    /// if it ran past its timeout, as timeout(1) does).
    Exec {
        id: String,
        /// Forward standard input to the command.
        #[arg(long, short)]
        interactive: bool,
        /// Give the command a terminal (this one's size, in raw mode with -i).
        #[arg(long, short)]
        tty: bool,
        /// KEY=VALUE, repeatable.
        #[arg(long, short)]
        env: Vec<String>,
        #[arg(long, short)]
        workdir: Option<String>,
        #[arg(long, value_parser = parse_ttl)]
        timeout: Option<Duration>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Copy a file or directory into or out of a sandbox, as `docker cp`
    /// does: `sandpit cp ./data.csv ID:/tmp/work/`, `sandpit cp
    /// ID:/tmp/work/out ./out`. Prints each single file's SHA-256 and the
    /// archive's, as the audit log records it.
    Cp {
        /// A local path, or ID:PATH in a sandbox.
        src: String,
        /// A local path, or ID:PATH in a sandbox: a directory receives the
        /// copy; a path that does not exist is the copy's new name.
        dest: String,
    },
    /// An interactive shell in a sandbox (exec -i -t of the shell).
    Shell {
        id: String,
        /// The shell to run.
        #[arg(long, default_value = "sh")]
        shell: String,
    },
    /// Forward a local port to a port on the sandbox's own loopback, as
    /// `kubectl port-forward` does: `sandpit port-forward ID 8888` or
    /// `ID 9000:8888` (LOCAL 0: any free port). The profile must list the
    /// port; every connection is audited. Runs until interrupted.
    PortForward {
        id: String,
        /// [LOCAL:]REMOTE
        ports: String,
        /// Local address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        address: String,
    },
    /// Follow sandbox lifecycle events.
    Watch {
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        experiment: Option<String>,
    },
    /// Register an experiment in the AI register.
    Register {
        #[arg(long)]
        title: String,
        #[arg(long)]
        purpose: String,
        /// Declared data classification: the highest its sandboxes may carry.
        #[arg(long)]
        classification: String,
        /// AI tool used, repeatable.
        #[arg(long = "ai-tool")]
        ai_tools: Vec<String>,
        /// Model used, repeatable.
        #[arg(long = "model")]
        models: Vec<String>,
        /// Dataset used, repeatable.
        #[arg(long = "dataset")]
        datasets: Vec<String>,
        /// "description;likelihood;impact;mitigation;owner" (low/medium/high), repeatable.
        #[arg(long = "risk", value_parser = parse_risk)]
        risks: Vec<proto::Risk>,
        /// Planned end date, YYYY-MM-DD or RFC 3339.
        #[arg(long, value_parser = parse_time)]
        planned_end: Option<SystemTime>,
        #[command(flatten)]
        transparency: TransparencyArgs,
    },
    /// Show one experiment.
    Experiment { id: String },
    /// List experiments.
    Experiments {
        #[arg(long)]
        team: Option<String>,
        /// proposed, approved, rejected or closed.
        #[arg(long)]
        status: Option<String>,
    },
    /// Sign off a proposed experiment for your function (approvers; not
    /// your own team's). It is approved once every function its
    /// classification needs has signed off.
    Approve {
        id: String,
        /// The function you sign for (e.g. data-protection); needed only
        /// when you sign for more than one of those still to sign.
        #[arg(long, default_value = "")]
        function: String,
        #[arg(long, default_value = "")]
        conditions: String,
    },
    /// Reject a proposed experiment (any required function's rejection wins).
    Reject {
        id: String,
        #[arg(long, default_value = "")]
        function: String,
        #[arg(long, default_value = "")]
        conditions: String,
    },
    /// Close an experiment with its outcome and lessons learnt; tears down its sandboxes.
    Close {
        id: String,
        /// succeeded, failed or abandoned.
        #[arg(long)]
        outcome: String,
        /// The summary of what was learnt.
        #[arg(long)]
        lessons: String,
        #[arg(long, default_value = "")]
        what_worked: String,
        #[arg(long, default_value = "")]
        what_did_not: String,
        /// A reusable artefact (repository, notebook, document), repeatable.
        #[arg(long = "artefact")]
        artefacts: Vec<String>,
    },
    /// An experiment's risks: add, update or review one.
    #[command(subcommand)]
    Risk(RiskCommand),
    /// Record an impact assessment: `sandpit assess EXP dpia completed
    /// --reference DPIA-2026-041` (kinds: dpia, equality-impact,
    /// security-risk; statuses: not-started, in-progress, completed,
    /// not-required).
    Assess {
        experiment: String,
        kind: String,
        status: String,
        #[arg(long, default_value = "")]
        reference: String,
        /// When it was completed, YYYY-MM-DD or RFC 3339 (default: now).
        #[arg(long, value_parser = parse_time)]
        date: Option<SystemTime>,
    },
    /// Set an experiment's transparency (ATRS) fields.
    Transparency {
        experiment: String,
        #[command(flatten)]
        fields: TransparencyArgs,
        /// Any other ATRS field by the standard's name: NAME=VALUE
        /// (NAME= removes it), repeatable. See docs/atrs/atrs-v3-fields.json.
        #[arg(long = "set")]
        set: Vec<String>,
    },
    /// The audit log and oversight views.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Profiles: list, show, validate a file, reload, warm pools.
    #[command(subcommand)]
    Profile(ProfileCommand),
}

/// The register's own transparency (ATRS) fields.
#[derive(clap::Args, Default)]
struct TransparencyArgs {
    /// Senior responsible owner: a role title.
    #[arg(long = "sro", default_value = "")]
    senior_responsible_owner: String,
    /// ATRS phase (e.g. Pre-deployment, Beta/pilot, Production, Retired).
    #[arg(long, default_value = "")]
    phase: String,
    /// The public-sector function it serves (ATRS "function", e.g. Economic affairs).
    #[arg(long = "public-function", default_value = "")]
    public_function: String,
    /// ATRS region (e.g. UK, England).
    #[arg(long, default_value = "")]
    region: String,
}

#[derive(Subcommand)]
enum RiskCommand {
    /// Record a new risk (open; its first review falls due by its impact).
    Add {
        experiment: String,
        #[arg(long)]
        description: String,
        /// low, medium or high.
        #[arg(long)]
        likelihood: String,
        /// low, medium or high.
        #[arg(long)]
        impact: String,
        #[arg(long, default_value = "")]
        mitigation: String,
        #[arg(long, default_value = "")]
        owner: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Change a risk; also counts as its review.
    Update {
        experiment: String,
        /// The risk's id (r1, r2, ...).
        risk: String,
        /// Why: the finding of this review.
        #[arg(long)]
        reason: String,
        /// open, mitigated, accepted or closed.
        #[arg(long, default_value = "")]
        status: String,
        #[arg(long, default_value = "")]
        likelihood: String,
        #[arg(long, default_value = "")]
        impact: String,
        #[arg(long, default_value = "")]
        mitigation: String,
        #[arg(long, default_value = "")]
        owner: String,
    },
    /// Review a risk, changing nothing: its next review falls due again.
    Review {
        experiment: String,
        risk: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// List the profiles in force.
    Ls,
    /// Show one profile.
    Get { name: String },
    /// Check a profile file before installing it (operators).
    Validate { file: PathBuf },
    /// Re-read the profiles directory (operators); a bad file keeps the last good set.
    Reload,
    /// Warm pools: target, ready, claims and misses (operators).
    Pools,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Query the audit log, oldest first.
    Log {
        /// RFC 3339 or YYYY-MM-DD.
        #[arg(long, value_parser = parse_time)]
        since: Option<SystemTime>,
        #[arg(long, value_parser = parse_time)]
        until: Option<SystemTime>,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        experiment: Option<String>,
        #[arg(long)]
        sandbox: Option<String>,
        #[arg(long)]
        action: Option<String>,
        /// At most this many records (all when absent).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Follow the audit log as it is written.
    Watch,
    /// Recompute the hash chain. With --data-dir, reads the store directly
    /// (the daemon may be stopped). With --checkpoint, the chain must also
    /// hold that signed checkpoint's head at its size. Exits 1 when the chain
    /// is broken, does not hold the checkpoint, or the signature fails.
    Verify {
        #[arg(long, conflicts_with = "store_url")]
        data_dir: Option<PathBuf>,
        /// Reads a PostgreSQL store directly (`postgres://...`, as
        /// `store.url`; e.g. a backup restored into a scratch database),
        /// taking no lease and changing nothing.
        #[arg(long, value_name = "URL")]
        store_url: Option<String>,
        /// A signed checkpoint: a file from audit.checkpoint_dir, or the
        /// output of `sandpit audit checkpoint`, kept off the host.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// The verifier key to check the checkpoint's signature with (the
        /// .pub beside audit.signing_key, kept off the host). Needed with
        /// --data-dir; online, the daemon's own key is used without it.
        #[arg(long, requires = "checkpoint")]
        public_key: Option<PathBuf>,
    },
    /// A signed checkpoint of the chain as it is now (signed now if records
    /// were appended since the newest): the note as is; --json adds its
    /// size, head and verifier key.
    Checkpoint,
    /// Export the register, the active sandboxes, ATRS records (json or
    /// csv; the required fields still empty are named on stderr) or lessons
    /// learnt (markdown or html; nothing above OFFICIAL unless
    /// --include-above-official).
    Export {
        /// register, sandboxes, atrs or lessons.
        #[arg(long)]
        kind: String,
        /// json or csv; markdown or html for lessons (default: json, markdown).
        #[arg(long)]
        format: Option<String>,
        /// Only this experiment (atrs, lessons).
        #[arg(long)]
        experiment: Option<String>,
        /// Lessons of experiments closed from this date (YYYY-MM-DD or RFC 3339).
        #[arg(long, value_parser = parse_time)]
        since: Option<SystemTime>,
        /// ...until this one.
        #[arg(long, value_parser = parse_time)]
        until: Option<SystemTime>,
        /// Include lessons of experiments above OFFICIAL (audited).
        #[arg(long)]
        include_above_official: bool,
    },
    /// Active experiments with their live sandboxes and time left.
    Active,
}

fn parse_risk(s: &str) -> Result<proto::Risk, String> {
    let parts: Vec<&str> = s.split(';').map(str::trim).collect();
    let [description, likelihood, impact, mitigation, owner] = parts[..] else {
        return Err("expected description;likelihood;impact;mitigation;owner".into());
    };
    Ok(proto::Risk {
        description: description.into(),
        likelihood: likelihood.into(),
        impact: impact.into(),
        mitigation: mitigation.into(),
        owner: owner.into(),
        ..Default::default()
    })
}

fn parse_time(s: &str) -> Result<SystemTime, String> {
    let full = if s.len() == 10 { format!("{s}T00:00:00Z") } else { s.to_string() };
    sandpit_core::time::parse_rfc3339(&full).ok_or_else(|| format!("'{s}' is not YYYY-MM-DD or RFC 3339"))
}

fn ts(t: SystemTime) -> pbjson_types::Timestamp {
    proto::timestamp(t)
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    sandpit_core::time::parse_duration(s)
}

fn parse_size(s: &str) -> Result<u64, String> {
    sandpit_core::policy::size::parse_size(s)
}

type Client = SandboxServiceClient<InterceptedService<Channel, Auth>>;
type Register = RegisterServiceClient<InterceptedService<Channel, Auth>>;
type Audit = AuditServiceClient<InterceptedService<Channel, Auth>>;

struct Clients {
    channel: Channel,
    auth: Auth,
}

impl Clients {
    fn sandboxes(&self) -> Client {
        SandboxServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }
    fn register(&self) -> Register {
        RegisterServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }
    fn audit(&self) -> Audit {
        AuditServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }
}

#[derive(Clone)]
struct Auth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A failure: a gRPC status from the daemon, or a local problem.
enum Failure {
    Status(Status),
    Local(String),
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        Failure::Status(s)
    }
}

fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `sandpit`'s `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            complain!("sandpit: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(Failure::Status(s)) => {
            complain!("sandpit: {}: {}", code_name(s.code()), s.message());
            ExitCode::FAILURE
        }
        Err(Failure::Local(msg)) => {
            complain!("sandpit: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

async fn connect(cli: &Cli) -> Result<Clients, Failure> {
    let data_dir = std::env::var_os("SANDPIT_DATA_DIR").map(PathBuf::from).unwrap_or_else(default_data_dir);
    let addr = cli
        .addr
        .clone()
        .or_else(|| read_trimmed(&data_dir.join(ADDR_FILE)))
        .unwrap_or_else(|| DEFAULT_ADDR.to_string());
    let read = |flag: &str, path: &Path| {
        std::fs::read(path).map_err(|e| Failure::Local(format!("{flag} {}: {e}", path.display())))
    };
    // A client certificate (mutual TLS): both files, or neither.
    let identity = match (&cli.cert, &cli.key) {
        (None, None) => None,
        (Some(_), None) => return Err(Failure::Local("--cert needs --key (or SANDPIT_KEY), its private key".into())),
        (None, Some(_)) => return Err(Failure::Local("--key needs --cert (or SANDPIT_CERT), its certificate".into())),
        (Some(cert), Some(key)) => Some(Identity::from_pem(read("--cert", cert)?, read("--key", key)?)),
    };
    // With a certificate, it is the identity: the local token (every role)
    // would otherwise be sent and win, as the daemon checks tokens first.
    let token = match (&cli.token, &identity) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(_)) => None,
        (None, None) => read_trimmed(&data_dir.join(LOCAL_TOKEN_FILE)),
    };
    let mut endpoint =
        Endpoint::from_shared(addr.clone()).map_err(|e| Failure::Local(format!("--addr {addr}: {e}")))?;
    if addr.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        match &cli.ca_cert {
            Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(read("--ca-cert", ca)?)),
            None => return Err(Failure::Local("an https:// address needs --ca-cert (or SANDPIT_CA_CERT)".into())),
        }
        let with_identity = identity.is_some();
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| {
            let what = if with_identity { "--ca-cert, --cert, --key" } else { "--ca-cert" };
            let mut msg = format!("tls ({what}): {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg += &format!(": {s}");
                source = s.source();
            }
            Failure::Local(msg)
        })?;
    } else if identity.is_some() {
        return Err(Failure::Local(format!("--cert needs an https:// daemon address; {addr} is not")));
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| Failure::Status(Status::unavailable(format!("cannot reach {addr}: {e}"))))?;
    let auth = match token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| Failure::Local("the token contains characters not allowed in a header".into()))?,
        ),
        None => None,
    };
    Ok(Clients { channel, auth: Auth(auth) })
}

fn json<T: serde::Serialize>(msg: &T) -> Result<(), Failure> {
    let s = serde_json::to_string_pretty(msg).map_err(|e| Failure::Local(e.to_string()))?;
    println!("{}", json_safe(s));
    Ok(())
}

fn json_line<T: serde::Serialize>(msg: &T) -> Result<(), Failure> {
    let s = serde_json::to_string(msg).map_err(|e| Failure::Local(e.to_string()))?;
    println!("{}", json_safe(s));
    Ok(())
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    // Offline verification needs no daemon.
    if let Command::Audit(AuditCommand::Verify { data_dir: Some(dir), checkpoint, public_key, .. }) = &cli.command {
        let store = Offline::Sqlite(dir.join(DATABASE_FILE));
        return verify_offline(store, checkpoint.as_deref(), public_key.as_deref(), cli.json).await;
    }
    if let Command::Audit(AuditCommand::Verify { store_url: Some(url), checkpoint, public_key, .. }) = &cli.command {
        let store = Offline::Postgres(url.clone());
        return verify_offline(store, checkpoint.as_deref(), public_key.as_deref(), cli.json).await;
    }
    let clients = connect(&cli).await?;
    let mut client = clients.sandboxes();
    match cli.command {
        Command::Create { experiment, profile, classification, ttl, image, datasets, cpus, memory } => {
            let req = proto::CreateSandboxRequest {
                experiment,
                profile,
                classification,
                ttl: ttl
                    .map(|d| pbjson_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }),
                image: image.unwrap_or_default(),
                datasets,
                cpus: cpus.unwrap_or(0.0),
                memory_bytes: memory.map_or(0, |m| i64::try_from(m).unwrap_or(i64::MAX)),
            };
            // Admitted first: nothing is pulled for a create that would be refused.
            pull(&mut client, &req, cli.json).await?;
            let sb = client.create_sandbox(req).await?.into_inner();
            if cli.json {
                json(&sb)?;
            } else {
                print_sandbox(&sb);
            }
        }
        Command::Get { id } => {
            let sb = client.get_sandbox(proto::GetSandboxRequest { id }).await?.into_inner();
            if cli.json {
                json(&sb)?;
            } else {
                print_sandbox(&sb);
            }
        }
        Command::Ls { all, experiment } => {
            let req = proto::ListSandboxesRequest { include_ended: all, experiment: experiment.unwrap_or_default() };
            let list = client.list_sandboxes(req).await?.into_inner();
            if cli.json {
                json(&list)?;
            } else {
                print_table(&list.sandboxes);
            }
        }
        Command::Extend { id, ttl } => {
            let req = proto::ExtendSandboxRequest {
                id,
                ttl: Some(pbjson_types::Duration { seconds: ttl.as_secs() as i64, nanos: ttl.subsec_nanos() as i32 }),
            };
            let sb = client.extend_sandbox(req).await?.into_inner();
            if cli.json {
                json(&sb)?;
            } else {
                say!("{} now expires {}", sb.id, when(sb.expires_at.as_ref()));
            }
        }
        Command::Rm { id } => {
            let sb = client.delete_sandbox(proto::DeleteSandboxRequest { id }).await?.into_inner();
            if cli.json {
                json(&sb)?;
            } else {
                say!("{} {}", sb.id, proto::shown::<proto::SandboxState>(sb.state));
            }
        }
        Command::Shell { id, shell } => {
            let req = proto::ExecRequest { id, command: vec![shell], ..Default::default() };
            return interactive::exec(&mut client, req, true, true).await;
        }
        Command::Exec { id, interactive, tty, env, workdir, timeout, command } => {
            let req = proto::ExecRequest {
                id,
                command,
                env,
                workdir: workdir.unwrap_or_default(),
                timeout: timeout.map(|d| pbjson_types::Duration { seconds: d.as_secs() as i64, nanos: 0 }),
                tty: None,
            };
            if interactive || tty {
                return interactive::exec(&mut client, req, interactive, tty).await;
            }
            let mut stream = client.exec(req).await?.into_inner();
            let mut code = None;
            while let Some(msg) = stream.next().await {
                let msg = match msg {
                    Ok(msg) => msg,
                    // As timeout(1) says it: 124.
                    Err(s) if s.code() == Code::DeadlineExceeded => {
                        complain!("sandpit: {}: {}", code_name(s.code()), s.message());
                        return Ok(ExitCode::from(124));
                    }
                    Err(s) => return Err(s.into()),
                };
                if cli.json {
                    json_line(&msg)?;
                }
                match msg.output {
                    Some(Output::Stdout(b)) if !cli.json => {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(&b);
                        let _ = out.flush();
                    }
                    Some(Output::Stderr(b)) if !cli.json => {
                        let _ = std::io::stderr().write_all(&b);
                    }
                    Some(Output::ExitCode(c)) => code = Some(c),
                    Some(Output::Notice(n)) if !cli.json => complain!("sandpit: {n}"),
                    _ => {}
                }
            }
            let code = code.ok_or_else(|| Failure::Local("the exec stream ended without an exit code".into()))?;
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        Command::Cp { src, dest } => cp::cp(&mut client, &src, &dest, cli.json).await?,
        Command::PortForward { id, ports, address } => forward::port_forward(client, id, &ports, &address).await?,
        Command::Watch { id, experiment } => {
            let req =
                proto::WatchSandboxesRequest { id: id.unwrap_or_default(), experiment: experiment.unwrap_or_default() };
            let mut stream = client.watch_sandboxes(req).await?.into_inner();
            while let Some(ev) = stream.next().await {
                let ev = ev?;
                if cli.json {
                    json_line(&ev)?;
                } else {
                    let kind = proto::shown::<proto::SandboxEventKind>(ev.kind);
                    let sb = ev.sandbox.unwrap_or_default();
                    say!(
                        "{}  {:<14} {:<16} {:<20} {}",
                        when_abs(ev.time.as_ref()),
                        kind,
                        sb.id,
                        sb.experiment,
                        ev.message
                    );
                }
            }
        }
        Command::Register {
            title,
            purpose,
            classification,
            ai_tools,
            models,
            datasets,
            risks,
            planned_end,
            transparency: t,
        } => {
            let req = proto::RegisterExperimentRequest {
                title,
                purpose,
                ai_tools,
                models,
                classification,
                datasets,
                risks,
                planned_end: planned_end.map(ts),
                senior_responsible_owner: t.senior_responsible_owner,
                phase: t.phase,
                function: t.public_function,
                region: t.region,
            };
            let e = clients.register().register_experiment(req).await?.into_inner();
            show_experiment(&e, cli.json)?;
        }
        Command::Experiment { id } => {
            let e = clients.register().get_experiment(proto::GetExperimentRequest { id }).await?.into_inner();
            show_experiment(&e, cli.json)?;
        }
        Command::Experiments { team, status } => {
            let status = match status {
                None => proto::ExperimentStatus::Unspecified,
                Some(s) => proto::ExperimentStatus::from_str_name(&format!("EXPERIMENT_STATUS_{}", s.to_uppercase()))
                    .ok_or_else(|| {
                    Failure::Local(format!("--status {s}: use proposed, approved, rejected or closed"))
                })?,
            };
            let req = proto::ListExperimentsRequest { team: team.unwrap_or_default(), status: status as i32 };
            let list = clients.register().list_experiments(req).await?.into_inner();
            if cli.json {
                json(&list)?;
            } else {
                let rows = list
                    .experiments
                    .iter()
                    .map(|e| {
                        vec![
                            e.id.clone(),
                            e.title.clone(),
                            e.team.clone(),
                            e.owner.clone(),
                            e.classification.clone(),
                            proto::shown::<proto::ExperimentStatus>(e.status),
                        ]
                    })
                    .collect();
                table(&["ID", "TITLE", "TEAM", "OWNER", "CLASSIFICATION", "STATUS"], &["TITLE"], rows);
            }
        }
        Command::Approve { id, function, conditions } => {
            let req = proto::DecideExperimentRequest { id, conditions, function };
            let e = clients.register().approve_experiment(req).await?;
            show_experiment(&e.into_inner(), cli.json)?;
        }
        Command::Reject { id, function, conditions } => {
            let req = proto::DecideExperimentRequest { id, conditions, function };
            let e = clients.register().reject_experiment(req).await?;
            show_experiment(&e.into_inner(), cli.json)?;
        }
        Command::Risk(cmd) => {
            let mut register = clients.register();
            let e = match cmd {
                RiskCommand::Add { experiment, description, likelihood, impact, mitigation, owner, reason } => {
                    let risk = proto::Risk { description, likelihood, impact, mitigation, owner, ..Default::default() };
                    register.add_risk(proto::AddRiskRequest { experiment, risk: Some(risk), reason }).await?
                }
                RiskCommand::Update { experiment, risk, reason, status, likelihood, impact, mitigation, owner } => {
                    let req = proto::UpdateRiskRequest {
                        experiment,
                        risk_id: risk,
                        reason,
                        status,
                        likelihood,
                        impact,
                        mitigation,
                        owner,
                    };
                    register.update_risk(req).await?
                }
                RiskCommand::Review { experiment, risk, reason } => {
                    let req = proto::UpdateRiskRequest { experiment, risk_id: risk, reason, ..Default::default() };
                    register.update_risk(req).await?
                }
            };
            show_experiment(&e.into_inner(), cli.json)?;
        }
        Command::Assess { experiment, kind, status, reference, date } => {
            let req = proto::RecordAssessmentRequest { experiment, kind, status, reference, date: date.map(ts) };
            let e = clients.register().record_assessment(req).await?;
            show_experiment(&e.into_inner(), cli.json)?;
        }
        Command::Transparency { experiment, fields: t, set } => {
            let mut transparency = std::collections::HashMap::new();
            for kv in set {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| Failure::Local(format!("--set {kv}: use NAME=VALUE (NAME= removes it)")))?;
                transparency.insert(k.trim().to_string(), v.to_string());
            }
            let req = proto::UpdateTransparencyRequest {
                experiment,
                senior_responsible_owner: t.senior_responsible_owner,
                phase: t.phase,
                function: t.public_function,
                region: t.region,
                transparency,
            };
            let e = clients.register().update_transparency(req).await?;
            show_experiment(&e.into_inner(), cli.json)?;
        }
        Command::Close { id, outcome, lessons, what_worked, what_did_not, artefacts } => {
            let outcome =
                proto::ExperimentOutcome::from_str_name(&format!("EXPERIMENT_OUTCOME_{}", outcome.to_uppercase()))
                    .filter(|o| *o != proto::ExperimentOutcome::Unspecified)
                    .ok_or_else(|| {
                        Failure::Local(format!("--outcome {outcome}: use succeeded, failed or abandoned"))
                    })?;
            let req = proto::CloseExperimentRequest {
                id,
                outcome: outcome as i32,
                lessons_learnt: lessons,
                what_worked,
                what_did_not,
                artefacts,
            };
            let e = clients.register().close_experiment(req).await?.into_inner();
            show_experiment(&e, cli.json)?;
        }
        Command::Audit(cmd) => return audit(&clients, cmd, cli.json).await,
        Command::Profile(cmd) => return profile(&clients, cmd, cli.json).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn audit(clients: &Clients, cmd: AuditCommand, as_json: bool) -> Result<ExitCode, Failure> {
    let mut audit = clients.audit();
    match cmd {
        AuditCommand::Log { since, until, actor, experiment, sandbox, action, limit } => {
            let mut req = proto::QueryAuditLogRequest {
                since: since.map(ts),
                until: until.map(ts),
                actor: actor.unwrap_or_default(),
                experiment: experiment.unwrap_or_default(),
                sandbox: sandbox.unwrap_or_default(),
                action: action.unwrap_or_default(),
                page_size: 1000,
                page_token: String::new(),
            };
            let mut events = Vec::new();
            loop {
                let page = audit.query_audit_log(req.clone()).await?.into_inner();
                events.extend(page.events);
                if page.next_page_token.is_empty() || limit.is_some_and(|l| events.len() >= l) {
                    break;
                }
                req.page_token = page.next_page_token;
            }
            if let Some(l) = limit {
                events.truncate(l);
            }
            if as_json {
                json(&proto::QueryAuditLogResponse { events, next_page_token: String::new() })?;
            } else {
                print_events(&events);
            }
        }
        AuditCommand::Watch => {
            let mut stream = audit.watch_audit_log(proto::WatchAuditLogRequest {}).await?.into_inner();
            while let Some(ev) = stream.next().await {
                let ev = ev?;
                if as_json {
                    json_line(&ev)?;
                } else {
                    print_events(std::slice::from_ref(&ev));
                }
            }
        }
        AuditCommand::Verify { checkpoint: None, .. } => {
            let report = audit.verify_audit_log(proto::VerifyAuditLogRequest::default()).await?.into_inner();
            return print_verify(report, None, as_json);
        }
        AuditCommand::Verify { checkpoint: Some(file), public_key, .. } => {
            let note = read_note(&file)?;
            let (verifier_key, how) = match &public_key {
                Some(path) => {
                    let key = read_public_key(path)?;
                    // Checked here: the daemon is not trusted to say so.
                    if let Err(e) = Checkpoint::open(&note, &key) {
                        return refuse_checkpoint(&file, &key, &e.to_string(), as_json);
                    }
                    (key.to_string(), format!("checked here against {}", path.display()))
                }
                None => (
                    String::new(),
                    "checked by the daemon against its own key; pass --public-key with a key you hold to check it yourself"
                        .to_string(),
                ),
            };
            let req = proto::VerifyAuditLogRequest { checkpoint: note, verifier_key };
            let report = audit.verify_audit_log(req).await?.into_inner();
            return print_verify(report, Some((&file, &how)), as_json);
        }
        AuditCommand::Checkpoint => {
            let cp = audit.get_checkpoint(proto::GetCheckpointRequest {}).await?.into_inner();
            if as_json {
                json(&cp)?;
            } else {
                for line in cp.note.lines() {
                    say!("{line}");
                }
            }
        }
        AuditCommand::Export { kind, format, experiment, since, until, include_above_official } => {
            let kind = match kind.as_str() {
                "register" => proto::ExportKind::Register,
                "sandboxes" | "active-sandboxes" => proto::ExportKind::ActiveSandboxes,
                "atrs" => proto::ExportKind::Atrs,
                "lessons" => proto::ExportKind::Lessons,
                other => {
                    return Err(Failure::Local(format!("--kind {other}: use register, sandboxes, atrs or lessons")))
                }
            };
            let lessons = kind == proto::ExportKind::Lessons;
            let format = format.unwrap_or_else(|| if lessons { "markdown" } else { "json" }.into());
            let format = match format.as_str() {
                "json" => proto::ExportFormat::Json,
                "csv" => proto::ExportFormat::Csv,
                "markdown" | "md" => proto::ExportFormat::Markdown,
                "html" => proto::ExportFormat::Html,
                other => return Err(Failure::Local(format!("--format {other}: use json, csv, markdown or html"))),
            };
            let req = proto::ExportRequest {
                kind: kind as i32,
                format: format as i32,
                experiment: experiment.unwrap_or_default(),
                since: since.map(ts),
                until: until.map(ts),
                include_above_official,
            };
            let mut stream = audit.export(req).await?.into_inner();
            let mut data = Vec::new();
            while let Some(chunk) = stream.next().await {
                data.extend_from_slice(&chunk?.data);
            }
            let _ = std::io::stdout().lock().write_all(&data);
            if kind == proto::ExportKind::Atrs && format == proto::ExportFormat::Json {
                // Say what each record still lacks, beside the records.
                let records: Vec<serde_json::Value> = serde_json::from_slice(&data).unwrap_or_default();
                for r in records {
                    let missing: Vec<&str> = r["missing_required"]
                        .as_array()
                        .map(|m| m.iter().filter_map(|v| v.as_str()).collect())
                        .unwrap_or_default();
                    if !missing.is_empty() {
                        complain!(
                            "{}: {} required ATRS field(s) empty: {}",
                            r["sandpit_experiment"].as_str().unwrap_or("?"),
                            missing.len(),
                            missing.join(", ")
                        );
                    }
                }
            }
        }
        AuditCommand::Active => {
            let list = audit.list_active_experiments(proto::ListActiveExperimentsRequest {}).await?.into_inner();
            if as_json {
                json(&list)?;
            } else {
                let rows = list.experiments.iter().map(active_row).collect();
                table(
                    &["EXPERIMENT", "TEAM", "OWNER", "CLASSIFICATION", "APPROVAL", "OVERDUE REVIEWS", "SANDBOXES"],
                    &["APPROVAL", "OVERDUE REVIEWS", "SANDBOXES"],
                    rows,
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn profile(clients: &Clients, cmd: ProfileCommand, as_json: bool) -> Result<ExitCode, Failure> {
    let mut profiles = ProfileServiceClient::with_interceptor(clients.channel.clone(), clients.auth.clone());
    let errors = |errors: &[proto::ProfileError]| {
        for e in errors {
            complain!("{}: {}: {}", e.file, e.field, e.reason);
        }
    };
    match cmd {
        ProfileCommand::Ls => {
            let list = profiles.list_profiles(proto::ListProfilesRequest {}).await?.into_inner();
            if as_json {
                json(&list)?;
            } else {
                let rows = list
                    .profiles
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            p.max_classification.clone(),
                            p.network.as_ref().map(|n| n.mode.clone()).unwrap_or_default(),
                            // A level the engine cannot give now is marked, with why in the last column.
                            if p.unavailable.is_empty() {
                                p.isolation.clone()
                            } else {
                                format!("{} (unavailable)", p.isolation)
                            },
                            p.warm_pool_size.to_string(),
                            if p.unavailable.is_empty() {
                                p.description.clone()
                            } else {
                                format!("unavailable: {}", p.unavailable)
                            },
                        ]
                    })
                    .collect();
                table(&["PROFILE", "CEILING", "NETWORK", "ISOLATION", "WARM", "DESCRIPTION"], &["DESCRIPTION"], rows);
            }
        }
        ProfileCommand::Get { name } => {
            json(&profiles.get_profile(proto::GetProfileRequest { name }).await?.into_inner())?
        }
        ProfileCommand::Validate { file } => {
            let content =
                std::fs::read_to_string(&file).map_err(|e| Failure::Local(format!("{}: {e}", file.display())))?;
            let file_name = file.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
            let r = profiles.validate_profile(proto::ValidateProfileRequest { file_name, content }).await?.into_inner();
            if as_json {
                json(&r)?;
            } else if r.valid {
                say!("{} is valid", file.display());
            } else {
                errors(&r.errors);
            }
            return Ok(if r.valid { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        ProfileCommand::Reload => {
            let r = profiles.reload_profiles(proto::ReloadProfilesRequest {}).await?.into_inner();
            if as_json {
                json(&r)?;
            } else if r.applied {
                say!("reloaded: {}", r.loaded.join(", "));
            } else {
                errors(&r.errors);
                say!("kept the last good set: {}", r.loaded.join(", "));
            }
            return Ok(if r.applied { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        ProfileCommand::Pools => {
            let list = profiles.list_pools(proto::ListPoolsRequest {}).await?.into_inner();
            if as_json {
                json(&list)?;
            } else {
                let rows = list
                    .pools
                    .iter()
                    .map(|p| {
                        vec![
                            p.profile.clone(),
                            p.target.to_string(),
                            p.warm.to_string(),
                            p.claims.to_string(),
                            p.misses.to_string(),
                        ]
                    })
                    .collect();
                table(&["PROFILE", "TARGET", "WARM", "CLAIMS", "MISSES"], &[], rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn active_row(a: &proto::ActiveExperiment) -> Vec<String> {
    let e = a.experiment.clone().unwrap_or_default();
    let approval = if e.pending_functions.is_empty() {
        e.approvals.last().map(|a| {
            let function = if a.function.is_empty() { String::new() } else { format!(" for {}", a.function) };
            format!("{}{function} by {} ({})", a.decision, a.approver, a.approver_team)
        })
    } else {
        Some(format!("awaiting {}", e.pending_functions.join(", ")))
    };
    let overdue: Vec<String> = e
        .risks
        .iter()
        .filter(|r| r.overdue)
        .map(|r| format!("{} ({}, due {})", r.id, r.impact, when_abs(r.review_by.as_ref())))
        .collect();
    let sandboxes: Vec<String> = a
        .sandboxes
        .iter()
        .map(|s| {
            let sb = s.sandbox.clone().unwrap_or_default();
            let left = Duration::from_secs(s.time_left.as_ref().map_or(0, |d| d.seconds.max(0) as u64));
            format!("{} ({}, {} left)", sb.id, sb.profile, sandpit_core::time::format_duration(left))
        })
        .collect();
    vec![
        e.id,
        e.team,
        e.owner,
        e.classification,
        approval.unwrap_or_else(|| proto::shown::<proto::ExperimentStatus>(e.status)),
        if overdue.is_empty() { "-".into() } else { overdue.join(", ") },
        if sandboxes.is_empty() { "-".into() } else { sandboxes.join(", ") },
    ]
}

/// Exit code of a refused invocation (as clap's own usage errors).
const EXIT_USAGE: u8 = 2;

fn read_note(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure::Local(format!("--checkpoint {}: {e}", path.display())))
}

fn read_public_key(path: &Path) -> Result<VerifierKey, Failure> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Failure::Local(format!("--public-key {}: {e}", path.display())))?;
    VerifierKey::parse(&text).map_err(|e| Failure::Local(format!("--public-key {}: {e}", path.display())))
}

/// A checkpoint whose signature (or syntax) fails: exit 1, saying why.
fn refuse_checkpoint(file: &Path, key: &VerifierKey, why: &str, as_json: bool) -> Result<ExitCode, Failure> {
    let reason = format!("the checkpoint does not verify against key {key}: {why}");
    if as_json {
        json(&proto::VerifyAuditLogResponse {
            ok: false,
            reason,
            verifier_key: key.to_string(),
            ..Default::default()
        })?;
    } else {
        say!("checkpoint {} REFUSED: {reason}", file.display());
    }
    Ok(ExitCode::FAILURE)
}

/// A store read directly by `audit verify`.
enum Offline {
    /// `--data-dir`: its SQLite file.
    Sqlite(PathBuf),
    /// `--store-url`.
    Postgres(String),
}

impl Offline {
    /// The whole chain, against a checkpoint's `(size, head)` if given.
    async fn verify(
        &self,
        checkpoint: Option<(u64, sandpit_core::audit::Hash)>,
    ) -> Result<sandpit_core::audit::VerifyReport, Failure> {
        let local = |e: &dyn std::fmt::Display| Failure::Local(e.to_string());
        match (self, checkpoint) {
            (Offline::Sqlite(db), None) => sandpit_store_sqlite::SqliteStore::verify_file(db).map_err(|e| local(&e)),
            (Offline::Sqlite(db), Some(cp)) => {
                sandpit_store_sqlite::SqliteStore::verify_file_against(db, cp).map_err(|e| local(&e))
            }
            (Offline::Postgres(url), cp) => {
                use sandpit_core::store::Store as _;
                let settings =
                    sandpit_store_postgres::Settings { pool_size: 1, ..sandpit_store_postgres::Settings::new(url) };
                let store =
                    sandpit_store_postgres::PostgresStore::open_read_only(&settings).await.map_err(|e| local(&e))?;
                match cp {
                    None => store.verify_audit().await,
                    Some(cp) => store.verify_audit_against(cp).await,
                }
                .map_err(|e| local(&e))
            }
        }
    }
}

/// `audit verify --data-dir` or `--store-url`: the store read directly, no daemon.
async fn verify_offline(
    store: Offline,
    checkpoint: Option<&Path>,
    public_key: Option<&Path>,
    as_json: bool,
) -> Result<ExitCode, Failure> {
    let Some(file) = checkpoint else {
        let report = store.verify(None).await?;
        return print_verify(report.into(), None, as_json);
    };
    let Some(key_file) = public_key else {
        complain!(
            "sandpit: --checkpoint with --data-dir or --store-url needs --public-key FILE: offline, nothing else can \
             vouch for the checkpoint's signature. Use the verifier key written beside audit.signing_key \
             (<signing_key>.pub), from a copy kept off this host, or verify online, where the daemon checks it with \
             its own key."
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    };
    let key = read_public_key(key_file)?;
    let note = read_note(file)?;
    let cp = match Checkpoint::open(&note, &key) {
        Ok(cp) => cp,
        Err(e) => return refuse_checkpoint(file, &key, &e.to_string(), as_json),
    };
    let report = store.verify(Some((cp.size, cp.head))).await?;
    let report = proto::VerifyAuditLogResponse {
        checkpoint_size: cp.size,
        checkpoint_origin: cp.origin,
        verifier_key: key.to_string(),
        ..report.into()
    };
    print_verify(report, Some((file, &format!("checked here against {}", key_file.display()))), as_json)
}

/// Prints a verification; `checkpoint` is the file checked against and how its signature was checked.
fn print_verify(
    report: proto::VerifyAuditLogResponse,
    checkpoint: Option<(&Path, &str)>,
    as_json: bool,
) -> Result<ExitCode, Failure> {
    let code = if report.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    if as_json {
        json(&report)?;
        return Ok(code);
    }
    if let Some((file, _)) = checkpoint.filter(|_| !report.ok && report.checkpoint_origin.is_empty()) {
        // Refused before the chain was looked at: signature or origin.
        say!("checkpoint {} REFUSED: {}", file.display(), report.reason);
        return Ok(code);
    }
    if report.ok {
        say!("audit log verified: {} records, head {}", report.records, report.head_hash);
    } else if report.first_bad_seq > 0 {
        say!("audit log BROKEN at record {}: {}", report.first_bad_seq, report.reason);
    } else {
        say!("audit log BROKEN: {}", report.reason);
    }
    if let Some((file, how)) = checkpoint {
        let holds = if report.ok { "holds" } else { "does NOT hold" };
        say!(
            "the log {holds} checkpoint {} (origin {}, {} records); its signature by {} was {how}",
            file.display(),
            report.checkpoint_origin,
            report.checkpoint_size,
            report.verifier_key
        );
    }
    Ok(code)
}

/// Audit records, one line each. Fixed widths rather than a [`table`]:
/// `audit watch` prints each record as it arrives, and its lines line up
/// with those of `audit log`.
fn print_events(events: &[proto::AuditEvent]) {
    for e in events {
        say!(
            "{:>6}  {}  {:<10} {:<9} {:<46} {:<16} {:<9} {:<18} {}",
            e.seq,
            when_abs(e.time.as_ref()),
            e.actor,
            e.role,
            e.action,
            e.target,
            e.outcome,
            e.code,
            e.reason
        );
    }
}

fn show_experiment(e: &proto::Experiment, as_json: bool) -> Result<(), Failure> {
    if as_json {
        return json(e);
    }
    let rows = [
        ("id", e.id.clone()),
        ("title", e.title.clone()),
        ("status", proto::shown::<proto::ExperimentStatus>(e.status)),
        ("owner", format!("{} (team {})", e.owner, e.team)),
        ("purpose", e.purpose.clone()),
        ("classification", e.classification.clone()),
        ("ai tools", e.ai_tools.join(", ")),
        ("models", e.models.join(", ")),
        ("datasets", e.datasets.join(", ")),
        ("created", when_abs(e.created_at.as_ref())),
    ];
    for (k, v) in rows {
        say!("{k:<15} {v}");
    }
    for (k, v) in
        [("sro", &e.senior_responsible_owner), ("phase", &e.phase), ("function", &e.function), ("region", &e.region)]
    {
        if !v.is_empty() {
            say!("{k:<15} {v}");
        }
    }
    let mut atrs: Vec<_> = e.transparency.iter().collect();
    atrs.sort();
    for (k, v) in atrs {
        say!("{:<15} {k}: {v}", "atrs");
    }
    if !e.required_functions.is_empty() {
        let pending = if e.pending_functions.is_empty() { "none".into() } else { e.pending_functions.join(", ") };
        say!("{:<15} {} (still to sign: {pending})", "sign-offs", e.required_functions.join(", "));
    }
    for r in &e.risks {
        let review = match (&r.review_by, r.overdue) {
            (None, _) => String::new(),
            (Some(t), false) => format!("; review by {}", when_abs(Some(t))),
            (Some(t), true) => format!("; review OVERDUE since {}", when_abs(Some(t))),
        };
        say!(
            "{:<15} {} {} (likelihood {}, impact {}; {}; mitigation: {}; owner: {}{review})",
            "risk",
            r.id,
            r.description,
            r.likelihood,
            r.impact,
            r.status,
            r.mitigation,
            r.owner
        );
        if let Some(u) = r.history.last().filter(|_| r.history.len() > 1) {
            say!("{:<15}   last: {} by {} at {}: {}", "", u.changes, u.by, when_abs(u.time.as_ref()), u.reason);
        }
    }
    for a in &e.assessments {
        say!(
            "{:<15} {} {} {} ({}, recorded by {})",
            "assessment",
            a.kind,
            a.status,
            a.reference,
            when_abs(a.date.as_ref()),
            a.recorded_by
        );
    }
    for a in &e.approvals {
        let function = if a.function.is_empty() { String::new() } else { format!(" for {}", a.function) };
        say!(
            "{:<15} {}{function} by {} (team {}) at {} {}",
            "decision",
            a.decision,
            a.approver,
            a.approver_team,
            when_abs(a.time.as_ref()),
            a.conditions
        );
    }
    if e.closed_at.is_some() {
        let outcome = proto::shown::<proto::ExperimentOutcome>(e.outcome);
        say!(
            "{:<15} {outcome} by {} (team {}) at {}: {}",
            "closed",
            e.closed_by,
            e.closed_by_team,
            when_abs(e.closed_at.as_ref()),
            e.lessons_learnt
        );
        for (k, v) in [("what worked", &e.what_worked), ("what did not", &e.what_did_not)] {
            if !v.is_empty() {
                say!("{k:<15} {v}");
            }
        }
        for a in &e.artefacts {
            say!("{:<15} {a}", "artefact");
        }
    }
    Ok(())
}

/// Space between two columns of a [`table`].
const GAP: u16 = 2;

/// Prints a table for a person: the header row first, then left-aligned
/// columns [`GAP`] spaces apart, no borders (people pipe it into grep and
/// awk), each cell shown inert (so widths count what is shown). Piped,
/// nothing is wrapped: one row, one line. On a terminal narrower than the
/// table, the free-text columns named in `prose` wrap between words, never
/// inside one (an id within stays whole); every other column, ids first,
/// keeps its full width.
fn table(header: &[&str], prose: &[&str], rows: Vec<Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| shown(c).into_owned()).collect()).collect();
    let mut t = Table::new();
    t.load_style(presets::NOTHING).set_header(header.to_vec());
    let terminal = console::Term::stdout().size_checked().map(|(_rows, columns)| columns);
    for (i, column) in t.column_iter_mut().enumerate() {
        // The gap is each column's right padding (trimmed at the end of a line).
        column.set_padding((0, GAP));
        if terminal.is_none() {
            continue;
        }
        let constraint = if prose.contains(&header[i]) {
            let widest_word = std::iter::once(header[i])
                .chain(rows.iter().filter_map(|r| r.get(i)).map(String::as_str))
                .flat_map(str::split_whitespace)
                .map(console::measure_text_width)
                .max()
                .unwrap_or(0);
            let widest_word = u16::try_from(widest_word).unwrap_or(u16::MAX);
            ColumnConstraint::LowerBoundary(Width::Fixed(widest_word.saturating_add(GAP)))
        } else {
            ColumnConstraint::ContentWidth
        };
        column.set_constraint(constraint);
    }
    if let Some(width) = terminal {
        t.set_width(width).set_content_arrangement(ContentArrangement::Dynamic);
    }
    t.add_rows(rows);
    for line in t.lines() {
        say!("{}", line.trim_end());
    }
}

/// Makes sure the image is on the daemon's engine, showing the pull on
/// stderr when it is a terminal (nothing otherwise, nor with `--json`).
async fn pull(client: &mut Client, create: &proto::CreateSandboxRequest, quiet: bool) -> Result<(), Failure> {
    let req = proto::PullImageRequest {
        profile: create.profile.clone(),
        image: create.image.clone(),
        create: Some(create.clone()),
    };
    let mut stream = client.pull_image(req).await?.into_inner();
    let show = !quiet && std::io::stderr().is_terminal();
    // Made at the first progress message: an image already there shows nothing.
    let mut bars: Option<PullBars> = None;
    while let Some(p) = stream.next().await {
        let p = p?;
        if p.done {
            if let Some(bars) = bars.take() {
                bars.finish();
            }
        } else if show {
            bars.get_or_insert_with(PullBars::new).show(&p);
        }
    }
    Ok(())
}

/// A pull on a terminal: a line for each layer (and one for the image as a
/// whole, the messages Docker sends without a layer), with its status and,
/// while Docker counts its bytes, a bar.
struct PullBars {
    lines: MultiProgress,
    layers: HashMap<String, ProgressBar>,
    counted: ProgressStyle,
    uncounted: ProgressStyle,
}

impl PullBars {
    fn new() -> PullBars {
        let style = |template| ProgressStyle::with_template(template).expect("the template is valid");
        PullBars {
            lines: MultiProgress::new(),
            layers: HashMap::new(),
            // ASCII, as the tables.
            counted: style("{prefix:12} {msg:18} [{bar:30}] {bytes}/{total_bytes}").progress_chars("=> "),
            uncounted: style("{prefix:12} {msg}"),
        }
    }

    fn show(&mut self, p: &proto::PullProgress) {
        let bar = self
            .layers
            .entry(p.layer.clone())
            .or_insert_with(|| self.lines.add(ProgressBar::no_length().with_prefix(shown(&p.layer).into_owned())));
        match (u64::try_from(p.current), u64::try_from(p.total)) {
            (Ok(current), Ok(total)) if total > 0 => {
                bar.set_style(self.counted.clone());
                bar.set_length(total);
                bar.set_position(current);
            }
            _ => bar.set_style(self.uncounted.clone()),
        }
        bar.set_message(shown(&p.status).into_owned());
    }

    /// Leaves every line as it last was.
    fn finish(self) {
        for bar in self.layers.values() {
            bar.finish();
        }
    }
}

fn to_system(t: &pbjson_types::Timestamp) -> SystemTime {
    sandpit_core::time::from_millis(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

fn when_abs(t: Option<&pbjson_types::Timestamp>) -> String {
    t.map(|t| sandpit_core::time::rfc3339(to_system(t))).unwrap_or_else(|| "-".into())
}

/// An absolute time with how far it is from now: `2026-11-26T16:00:00Z (in 9m 59s)`.
fn when(t: Option<&pbjson_types::Timestamp>) -> String {
    let Some(t) = t else { return "-".into() };
    let t = to_system(t);
    let now = SystemTime::now();
    let rel = match t.duration_since(now) {
        Ok(d) => format!("in {}", sandpit_core::time::format_duration(d)),
        Err(e) => format!("{} ago", sandpit_core::time::format_duration(e.duration())),
    };
    format!("{} ({rel})", sandpit_core::time::rfc3339(t))
}

fn print_sandbox(sb: &proto::Sandbox) {
    let rows = [
        ("id", sb.id.clone()),
        ("state", proto::shown::<proto::SandboxState>(sb.state)),
        ("experiment", sb.experiment.clone()),
        ("owner", format!("{} (team {})", sb.owner, sb.team)),
        ("profile", sb.profile.clone()),
        ("classification", sb.classification.clone()),
        ("image", sb.image.clone()),
        ("created", when(sb.created_at.as_ref())),
        ("expires", when(sb.expires_at.as_ref())),
        ("max expiry", when(sb.max_expires_at.as_ref())),
        ("container", sb.container_id.chars().take(12).collect()),
        ("node", sb.node.clone()),
    ];
    for (k, v) in rows {
        say!("{k:<15} {v}");
    }
    if !sb.state_reason.is_empty() {
        say!("{:<15} {}", "reason", sb.state_reason);
    }
    if let Some(code) = sb.exit_code {
        say!("{:<15} {code}{}", "exit code", if sb.oom_killed { " (OOM killed)" } else { "" });
    }
}

fn print_table(list: &[proto::Sandbox]) {
    let rows = list
        .iter()
        .map(|s| {
            let expires = match s.expires_at.as_ref().map(to_system) {
                Some(t) => match t.duration_since(SystemTime::now()) {
                    Ok(d) => format!("in {}", sandpit_core::time::format_duration(d)),
                    Err(e) => format!("{} ago", sandpit_core::time::format_duration(e.duration())),
                },
                None => "-".into(),
            };
            vec![
                s.id.clone(),
                s.experiment.clone(),
                s.team.clone(),
                s.profile.clone(),
                s.classification.clone(),
                proto::shown::<proto::SandboxState>(s.state),
                expires,
            ]
        })
        .collect();
    table(&["ID", "EXPERIMENT", "TEAM", "PROFILE", "CLASSIFICATION", "STATE", "EXPIRES"], &[], rows);
}
