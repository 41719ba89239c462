//! `sandpitd`: the Sandpit daemon. Loads configuration, starts logging, runs
//! the server until SIGTERM or SIGINT, and returns an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sandpit::config::{Config, LogFormat};
use sandpit::server::{self, StartError};

/// Exit code for bad configuration (EX_USAGE).
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
    #[arg(long, conflicts_with = "check")]
    init_audit_key: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sandpitd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(&cfg);
    if args.check {
        return match sandpit::policy::ProfileSet::load_dir_with(&cfg.profiles_dir, &cfg.host_rules()) {
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
    if args.init_audit_key {
        return match server::init_audit_key(&cfg) {
            Ok((key, created, public, vkey)) => {
                let what = if created { "created" } else { "already there, kept" };
                println!("audit signing key: {} ({what})", key.display());
                println!("verifier key, also in {} (keep a copy off this host):", public.display());
                println!("{vkey}");
                ExitCode::SUCCESS
            }
            Err(StartError::Config(e)) => {
                eprintln!("sandpitd: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
            Err(StartError::Io(e)) => {
                eprintln!("sandpitd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandpitd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(cfg, shutdown_signal())) {
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
