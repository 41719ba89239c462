//! The `sandpitd` command line. Loads configuration, starts logging, runs
//! the server until SIGTERM or SIGINT, and returns an exit code: 0, 1 on a
//! failure, 64 on bad usage or configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Config, LogFormat};
use crate::server::{self, StartError};
use clap::Parser;
use sandpit_docker::{DockerRuntime, NetworkSettings};
use sandpit_store_sqlite::SqliteStore;

/// Exit code for bad usage or configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// Sandpit daemon: isolated, policy-checked Docker sandboxes over gRPC.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file; every key can also be set as SANDPIT__KEY.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Check the configuration and profiles, then exit.
    #[arg(long)]
    check: bool,
    /// Create the audit signing key (audit.signing_key) and its .pub if
    /// missing, print the verifier key, then exit. Never replaces a key.
    #[arg(long, conflicts_with_all = ["check", "cleanup"])]
    init_audit_key: bool,
    /// List the daemon instances that left containers, networks, volumes or
    /// firewall rules on this host, removing nothing; with INSTANCE, remove
    /// all of that instance's (one whose daemon and data are gone for good).
    #[arg(long, value_name = "INSTANCE", num_args = 0..=1, default_missing_value = "", conflicts_with = "check")]
    cleanup: Option<String>,
    /// Move a SQLite store (`sqlite:PATH`, its daemon stopped) into the
    /// empty PostgreSQL database `store.url` names: register, sandboxes and
    /// the audit chain, verified after the move; then exit.
    #[arg(long, value_name = "sqlite:PATH", conflicts_with_all = ["check", "cleanup", "init_audit_key"])]
    migrate_from: Option<String>,
}

/// `sandpitd`'s `main`.
pub fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(EXIT_CONFIG),
            };
        }
    };
    let cfg = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sandpitd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(&cfg);
    if args.check {
        return match sandpit_core::policy::ProfileSet::load_dir_with(&cfg.profiles_dir, &cfg.host_rules()) {
            Ok(set) => {
                println!("configuration and {} profiles are valid", set.len());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("sandpitd: {e}");
                }
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    if let Some(from) = &args.migrate_from {
        let runtime = match runtime(true) {
            Ok(rt) => rt,
            Err(code) => return code,
        };
        return exit_code(runtime.block_on(server::migrate_from(&cfg, from)).map(|summary| println!("{summary}")));
    }
    if args.init_audit_key {
        let runtime = match runtime(false) {
            Ok(rt) => rt,
            Err(code) => return code,
        };
        return exit_code(runtime.block_on(server::init_audit_key(&cfg)).map(|(key, created, public, vkey)| {
            let what = if created { "created" } else { "already there, kept" };
            println!("audit signing key: {} ({what})", key.display());
            println!("verifier key, also in {} (keep a copy off this host):", public.display());
            println!("{vkey}");
        }));
    }
    let runtime = match runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    if let Some(target) = args.cleanup {
        return runtime.block_on(cleanup(&cfg, &target));
    }
    exit_code(runtime.block_on(server::run(cfg, shutdown_signal())))
}

/// The async runtime a command runs on; failing that, the exit code.
fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|e| {
        eprintln!("sandpitd: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

/// A command's outcome as the exit code: 64 for bad configuration, said on stderr.
fn exit_code(result: Result<(), StartError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(StartError::Config(e)) => {
            eprintln!("sandpitd: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(StartError::Io(e)) => {
            eprintln!("sandpitd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--cleanup [INSTANCE]`: lists leftovers, or removes one instance's.
async fn cleanup(cfg: &Config, target: &str) -> ExitCode {
    let own = if cfg.store.is_postgres() {
        let settings = server::postgres_settings(cfg);
        match sandpit_store_postgres::PostgresStore::read_instance_id(&settings).await {
            Ok(own) => own,
            Err(e) => {
                eprintln!(
                    "sandpitd: cannot read the instance id from {}: {e}",
                    sandpit_store_postgres::redacted(&settings.url)
                );
                return ExitCode::FAILURE;
            }
        }
    } else {
        let store = cfg.data_dir.join(crate::config::DATABASE_FILE);
        match SqliteStore::read_instance_id(&store) {
            Ok(own) => own,
            Err(e) => {
                eprintln!("sandpitd: cannot read {}: {e}", store.display());
                return ExitCode::FAILURE;
            }
        }
    };
    let pool = match sandpit_docker::subnet::Pool::new(&cfg.network.subnet_pool, cfg.network.subnet_prefix) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sandpitd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let net = NetworkSettings { pool, egress_port: cfg.network.egress_port, instance: own.clone().unwrap_or_default() };
    let rt = DockerRuntime::new(
        cfg.docker.host.clone(),
        cfg.docker.timeout,
        cfg.docker.node.clone(),
        net,
        Default::default(),
    );
    if target.is_empty() {
        return match sandpit_docker::cleanup::survey(&rt).await {
            Ok(found) if found.is_empty() => {
                println!("no daemon instance has containers, networks, volumes or firewall rules here");
                ExitCode::SUCCESS
            }
            Ok(found) => {
                print!("{}", sandpit_docker::cleanup::table(&found, own.as_deref()));
                println!("\nremove one instance's with: sandpitd --cleanup INSTANCE (only once its daemon and data are gone)");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sandpitd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(why) = sandpit_docker::cleanup::refusal(target, own.as_deref()) {
        eprintln!("sandpitd: refusing to clean up: {why}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match sandpit_docker::cleanup::remove(&rt, target).await {
        Ok(r) => {
            let o = r.objects;
            println!(
                "removed {} containers, {} networks, {} volumes, {} firewall chains and {} rules of instance {target}",
                o.containers, o.networks, o.volumes, r.firewall.chains, r.firewall.rules
            );
            ExitCode::SUCCESS
        }
        Err(e @ sandpit_core::Error::InvalidArgument { .. }) => {
            eprintln!("sandpitd: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("sandpitd: cleanup of {target} failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.filter));
    use std::io::IsTerminal;
    // Each RPC is a span (target sandpit::rpc) carrying its method, caller,
    // sandbox and experiment; its close is logged with the call's duration.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
