//! Wires configuration into a running daemon: store, runtime, manager, gRPC
//! services (with health and reflection), and a graceful shutdown.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::api::audit::AuditApi;
use crate::api::auth::Gate;
use crate::api::limits::CallLimits;
use crate::api::profile::ProfileApi;
use crate::api::register::RegisterApi;
use crate::api::sandbox::SandboxApi;
use crate::checkpoints::{Checkpointer, KeyError};
use crate::config::{Config, ADDR_FILE, DASHBOARD_ADDR_FILE, METRICS_ADDR_FILE};
use crate::identity::{local_caller, local_token, Identities};
use crate::proto::audit_service_server::AuditServiceServer;
use crate::proto::profile_service_server::ProfileServiceServer;
use crate::proto::register_service_server::RegisterServiceServer;
use crate::proto::sandbox_service_server::SandboxServiceServer;
use sandpit_core::lifecycle::{Manager, Settings};
use sandpit_core::policy::admission::Dataset;
use sandpit_core::policy::{HostPolicy, ProfileSet};
use sandpit_core::store::Store;
use sandpit_docker::subnet::Pool;
use sandpit_docker::{DockerRuntime, NetworkSettings, SandboxDefaults};
use sandpit_store_postgres::PostgresStore;
use sandpit_store_sqlite::SqliteStore;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration or profiles: the operator must fix a file.
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Prepares the data directory: created if missing, private to the daemon's user.
/// Where in the data directory the sandbox helper is kept.
const HELPER_DIR: &str = "helper";

fn data_dir(path: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).map_err(|e| StartError::Io(format!("data_dir {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| StartError::Io(format!("data_dir {}: {e}", path.display())))
}

/// Writes a small file whole, then renames it: a reader never sees half of it.
fn write_atomically(path: &Path, content: &str) -> Result<(), StartError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| StartError::Io(format!("{}: {e}", path.display())))
}

/// A key file problem, as a start error; a missing key that could not be
/// created (e.g. under a read-only /etc) says how to create it.
fn key_error(cfg: &Config, e: KeyError) -> StartError {
    match e {
        KeyError::Invalid(m) => StartError::Config(m),
        KeyError::Io(m) if !cfg.signing_key().exists() => StartError::Io(format!(
            "{m}; create it once with `sandpitd --config <file> --init-audit-key` as a user that may write there"
        )),
        KeyError::Io(m) => StartError::Io(m),
    }
}

/// The egress proxy's listener. With a shared store, daemons on one host
/// share the port (SO_REUSEPORT, which the kernel allows only to processes
/// of the same user): the host firewall's rules name one port, and each
/// daemon's proxy knows every allowlist sandbox (from the other daemons'
/// notices), so it does not matter which of them a connection reaches.
fn egress_listener(addr: std::net::SocketAddr, shared: bool) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    if shared {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The store `[store]` names: the SQLite file in the data directory, or PostgreSQL.
pub async fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, StartError> {
    if cfg.store.is_postgres() {
        let store = PostgresStore::open(&postgres_settings(cfg)).await.map_err(|e| StartError::Io(e.to_string()))?;
        tracing::info!(url = %sandpit_store_postgres::redacted(&cfg.store.url), "store: PostgreSQL, shared with every daemon on it");
        return Ok(Arc::new(store));
    }
    let store = SqliteStore::open(&cfg.data_dir.join(crate::config::DATABASE_FILE))
        .map_err(|e| StartError::Io(e.to_string()))?;
    Ok(Arc::new(store))
}

pub fn postgres_settings(cfg: &Config) -> sandpit_store_postgres::Settings {
    sandpit_store_postgres::Settings {
        url: cfg.store.url.clone(),
        pool_size: cfg.store.pool_size,
        ca_file: cfg.store.ca_file.clone(),
        lease_retry: cfg.store.lease_retry,
    }
}

/// `sandpitd --migrate-from sqlite:PATH`: moves that SQLite store into the
/// empty PostgreSQL database `store.url` names, then verifies the chain
/// there. The SQLite store is opened as a daemon would (so its daemon must
/// be stopped) and left as it was. A summary of what moved.
pub async fn migrate_from(cfg: &Config, from: &str) -> Result<String, StartError> {
    let Some(path) = from.strip_prefix("sqlite:") else {
        return Err(StartError::Config(format!("--migrate-from: '{from}' is not sqlite:PATH")));
    };
    if !cfg.store.is_postgres() {
        return Err(StartError::Config(
            "--migrate-from: store.url must name the PostgreSQL database to move into".into(),
        ));
    }
    let io = |e: &dyn std::fmt::Display| StartError::Io(e.to_string());
    let path = Path::new(path);
    if !path.is_file() {
        return Err(StartError::Config(format!("--migrate-from: {}: no such store", path.display())));
    }
    let sqlite = Arc::new(SqliteStore::open(path).map_err(|e| io(&e))?);
    let before = sqlite.verify_audit().await.map_err(|e| io(&e))?;
    if !before.ok {
        return Err(StartError::Io(format!(
            "the audit chain in {} does not verify (record {}: {}); nothing was moved",
            path.display(),
            before.first_bad_seq,
            before.reason
        )));
    }
    let instance = sqlite.instance_id().await.map_err(|e| io(&e))?;
    let experiments = sqlite.list_experiments(&Default::default()).await.map_err(|e| io(&e))?;
    let all = sandpit_core::store::ListFilter { include_ended: true, ..Default::default() };
    let sandboxes = sqlite.list(&all).await.map_err(|e| io(&e))?;
    let pg = PostgresStore::open(&postgres_settings(cfg)).await.map_err(|e| io(&e))?;
    let pages = Arc::clone(&sqlite);
    let moved = pg
        .import(&instance, &experiments, &sandboxes, move |after| {
            let pages = Arc::clone(&pages);
            async move { Ok(pages.audit_records(after, 5_000)?) }
        })
        .await
        .map_err(|e| io(&e))?;
    let after = pg.verify_audit().await.map_err(|e| io(&e))?;
    if !after.ok || (after.records, after.head_hash) != (before.records, before.head_hash) {
        return Err(StartError::Io(format!(
            "the audit chain in PostgreSQL does not match the one moved ({} records, head {}; moved {} records, head {}): {}",
            after.records,
            hex::encode(after.head_hash),
            before.records,
            hex::encode(before.head_hash),
            after.reason
        )));
    }
    Ok(format!(
        "moved {} experiments, {} sandboxes and {moved} audit records from {} into {} (instance {instance}); the chain verifies there: {} records, head {}",
        experiments.len(),
        sandboxes.len(),
        path.display(),
        sandpit_store_postgres::redacted(&cfg.store.url),
        after.records,
        hex::encode(after.head_hash),
    ))
}

/// `sandpitd --init-audit-key`: creates the audit signing key (never
/// replacing one) and its `.pub`, for a daemon that may not write where the
/// key lives. Returns the key's path, whether it was created, the `.pub`
/// path and the verifier key.
/// The Swarm runtime `[swarm]` describes: a client of the manager and one
/// of each node's engine. The daemon's own `[docker]` engine is not used.
async fn swarm_runtime(
    cfg: &Config,
    sw: &crate::config::SwarmConfig,
    net: NetworkSettings,
    sandboxes: SandboxDefaults,
) -> Result<sandpit_docker::swarm::SwarmRuntime, StartError> {
    let tls = sw.tls();
    let engine = |host: &str| {
        let net = NetworkSettings { pool: net.pool, egress_port: net.egress_port, instance: net.instance.clone() };
        let rt = DockerRuntime::new(
            Some(host.to_string()),
            cfg.docker.timeout,
            cfg.docker.node.clone(),
            net,
            sandboxes.clone(),
        );
        match &tls {
            Some(t) if host.starts_with("tcp://") => rt.with_tls(t.clone()),
            _ => rt,
        }
    };
    let manager = engine(&sw.manager);
    if let Err(e) = manager.ping().await {
        tracing::warn!(manager = %sw.manager, error = %e, "the swarm's manager is not reachable yet; serving anyway and retrying");
    }
    let nodes = sw.nodes.iter().map(|n| (n.name.clone(), engine(&n.host))).collect();
    let timings = sandpit_docker::swarm::SwarmTimings { start_timeout: sw.start_timeout, node_check: sw.node_check };
    let egress = sw.egress_address.map(|a| std::net::SocketAddr::from((a, net.egress_port)));
    tracing::info!(
        manager = %sw.manager,
        nodes = sw.nodes.len(),
        "sandboxes run on a Docker Swarm: each a service, placed on nodes labelled for its classification"
    );
    match egress {
        Some(proxy) => {
            tracing::info!(%proxy, sources = ?sw.egress_sources, "allowlist sandboxes on the swarm reach the egress proxy through a relay of their own")
        }
        None => tracing::info!("no swarm.egress_address: allowlist profiles are refused on the swarm"),
    }
    sandpit_docker::swarm::SwarmRuntime::new(manager, nodes, cfg.docker.node.clone(), net.instance, sandboxes, timings)
        .map(|rt| rt.with_egress(egress))
        .map_err(|e| StartError::Config(e.to_string()))
}

pub async fn init_audit_key(
    cfg: &Config,
) -> Result<(std::path::PathBuf, bool, std::path::PathBuf, String), StartError> {
    data_dir(&cfg.data_dir)?;
    let store = open_store(cfg).await?;
    let instance = store.instance_id().await.map_err(|e| StartError::Io(e.to_string()))?;
    let settings = cfg.checkpoint_settings(&instance);
    let (key, created) = crate::checkpoints::load_or_create_key(&settings.signing_key, &settings.key_name)
        .map_err(|e| key_error(cfg, e))?;
    let public = crate::checkpoints::write_public_key(&settings.signing_key, key.verifier()).map_err(|e| {
        let path = crate::checkpoints::public_key_path(&settings.signing_key);
        StartError::Io(format!("{}: {e}", path.display()))
    })?;
    Ok((settings.signing_key, created, public, key.verifier().to_string()))
}

/// One span per RPC: every log line of the call carries its method, and the
/// handlers record the caller, sandbox and experiment as they learn them.
fn rpc_span(req: &tonic::codegen::http::Request<()>) -> tracing::Span {
    use tracing::field::Empty;
    tracing::info_span!(target: "sandpit::rpc", "rpc", method = %req.uri().path(), caller = Empty, sandbox = Empty, experiment = Empty)
}

/// tonic answers a request message over the size limit with OUT_OF_RANGE;
/// gRPC's convention (and every other gRPC server) says RESOURCE_EXHAUSTED.
fn oversize_is_resource_exhausted<B>(mut res: tonic::codegen::http::Response<B>) -> tonic::codegen::http::Response<B> {
    use tonic::codegen::http::HeaderValue;
    let h = res.headers_mut();
    let oversize = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message").and_then(|m| m.to_str().ok()).is_some_and(|m| {
            m.contains("decoded message length too large") || m.contains("decoded%20message%20length%20too%20large")
        });
    if oversize {
        h.insert("grpc-status", HeaderValue::from_static("8"));
    }
    res
}

/// Runs the daemon until `shutdown` resolves, then drains in-flight calls for
/// up to the configured grace period and signs a last audit checkpoint.
/// Sandboxes are left running.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), StartError> {
    let profiles = ProfileSet::load_dir_with(&cfg.profiles_dir, &cfg.host_rules())
        .map_err(|errors| StartError::Config(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))?;
    data_dir(&cfg.data_dir)?;
    let store = open_store(&cfg).await?;

    let mut identities = Identities::from_config(&cfg.identities);
    if identities.is_empty() {
        let token = local_token(&cfg.data_dir).map_err(|e| StartError::Io(format!("local token: {e}")))?;
        identities.insert(&token, local_caller());
        tracing::info!(
            path = %cfg.data_dir.join(crate::config::LOCAL_TOKEN_FILE).display(),
            "no identities configured: a local token with every role was written (readable only by this user); the sandpit CLI on this machine uses it"
        );
    }

    if cfg.lifecycle.min_ttl < sandpit_core::policy::admission::DEFAULT_MIN_TTL {
        tracing::warn!(min_ttl = ?cfg.lifecycle.min_ttl, "lifecycle.min_ttl is below 10s: sandboxes may be asked to live only seconds");
    }
    let instance = store.instance_id().await.map_err(|e| StartError::Io(e.to_string()))?;
    let checkpoints =
        Checkpointer::new(Arc::clone(&store), cfg.checkpoint_settings(&instance)).map_err(|e| key_error(&cfg, e))?;
    tracing::info!(
        verifier_key = %checkpoints.verifier(),
        signing_key = %cfg.signing_key().display(),
        checkpoint_dir = %cfg.checkpoint_dir().display(),
        "audit checkpoints are signed with this key; keep the verifier key and the checkpoints off this host"
    );
    // The egress proxy listens on every address, as sandbox gateways come
    // and go. The host firewall lets only allowlist sandboxes (and loopback)
    // reach the port, and the proxy closes any other source unread.
    let egress_addr = std::net::SocketAddr::from(([0, 0, 0, 0], cfg.network.egress_port));
    let egress = egress_listener(egress_addr, cfg.store.is_postgres())
        .map_err(|e| StartError::Io(format!("egress proxy listen {egress_addr}: {e}")))?;
    let egress_port = egress.local_addr().map_err(|e| StartError::Io(e.to_string()))?.port();
    let net = NetworkSettings {
        pool: Pool::new(&cfg.network.subnet_pool, cfg.network.subnet_prefix).map_err(StartError::Config)?,
        egress_port,
        instance,
    };
    // The helper every sandbox gets, on this host's disk for the engine to mount.
    let helper_dir = cfg.data_dir.join(HELPER_DIR);
    let helper = sandpit_docker::helper::install(&helper_dir)
        .map_err(|e| StartError::Io(format!("installing the sandbox helper in {}: {e}", helper_dir.display())))?;
    let sandboxes = SandboxDefaults {
        user: cfg.sandbox.user.clone(),
        labels: cfg.labels.clone(),
        runtimes: cfg.runtime_names(),
        helper: Some(helper),
        builders: cfg.images.build.iter().map(|b| (b.image.clone(), b.command.clone())).collect(),
    };
    let runtime: Arc<dyn sandpit_core::runtime::Runtime> = match &cfg.swarm {
        None => {
            let runtime = DockerRuntime::new(
                cfg.docker.host.clone(),
                cfg.docker.timeout,
                cfg.docker.node.clone(),
                net,
                sandboxes,
            );
            if let Err(e) = runtime.ping().await {
                tracing::warn!(error = %e, "Docker is not reachable yet; serving anyway and retrying");
            }
            Arc::new(runtime)
        }
        Some(sw) => Arc::new(swarm_runtime(&cfg, sw, net, sandboxes).await?),
    };
    let settings = Settings {
        host: HostPolicy {
            max_classification: cfg.max_classification,
            datasets: cfg
                .datasets
                .iter()
                .map(|d| Dataset {
                    name: d.name.clone(),
                    path: d.path.clone(),
                    classification: d.classification,
                    residency: d.residency.clone(),
                })
                .collect(),
            min_ttl: cfg.lifecycle.min_ttl,
            minimum_isolation: cfg.minimum_isolation(),
            refuse_overdue_risk: cfg.refuse_overdue_risk(),
            dpia_required: cfg.dpia_required(),
        },
        governance: cfg.governance(),
        expiry_warning: cfg.lifecycle.expiry_warning,
        reconcile_interval: cfg.lifecycle.reconcile_interval,
        orphan_grace: cfg.lifecycle.orphan_grace,
        exec_timeout: cfg.lifecycle.exec_timeout,
        profiles_dir: cfg.profiles_dir.clone(),
        host_rules: cfg.host_rules(),
        quotas: cfg.team_quotas(),
        refusals: sandpit_core::audit::refusals::RefusalLimits {
            window: cfg.limits.refusal_window,
            per_source: cfg.limits.refusals_per_source,
        },
    };
    let manager = Manager::new(runtime, store, profiles, settings).await.map_err(|e| StartError::Io(e.to_string()))?;
    checkpoints.sign_only_on_duty(manager.duty());
    manager.start().await.map_err(|e| StartError::Io(e.to_string()))?;
    // Verifies the chain (in a blocking task: serving starts meanwhile), then signs on schedule.
    let _checkpointing = AbortOnDrop(tokio::spawn(Arc::clone(&checkpoints).run(manager.watch_audit())));

    let _metrics = match &cfg.metrics {
        m if m.enabled => {
            let listener = TcpListener::bind(m.listen)
                .await
                .map_err(|e| StartError::Io(format!("metrics listen {}: {e}", m.listen)))?;
            let maddr = listener.local_addr().map_err(|e| StartError::Io(e.to_string()))?;
            if !maddr.ip().is_loopback() {
                tracing::warn!(%maddr, "serving metrics on a non-loopback address: anyone who can reach it can read them");
            }
            write_atomically(&cfg.data_dir.join(METRICS_ADDR_FILE), &format!("http://{maddr}/metrics\n"))?;
            tracing::info!(addr = %maddr, "metrics at /metrics");
            let m = Arc::clone(&manager);
            let render: crate::metrics::Render = Arc::new(move || {
                let m = Arc::clone(&m);
                Box::pin(async move { m.render_metrics().await.map_err(|e| e.to_string()) })
            });
            Some(AbortOnDrop(tokio::spawn(crate::metrics::serve(listener, render, manager.shutdown_signal()))))
        }
        _ => None,
    };

    // The [tls] files, read once for both listeners: certificate, key, client CA.
    let tls_pem = match &cfg.tls {
        Some(t) => {
            let read =
                |p: &Path| std::fs::read(p).map_err(|e| StartError::Config(format!("tls: {}: {e}", p.display())));
            Some((read(&t.cert)?, read(&t.key)?, t.client_ca.as_deref().map(read).transpose()?))
        }
        None => None,
    };
    let identities = Arc::new(identities);
    let _dashboard = match &cfg.dashboard {
        d if d.enabled => {
            let tls = match &tls_pem {
                Some((cert, key, ca)) => Some(
                    crate::dashboard::tls_config(cert, key, ca.as_deref())
                        .map_err(|e| StartError::Config(format!("dashboard: {e}")))?,
                ),
                None => None,
            };
            let listener = TcpListener::bind(d.listen)
                .await
                .map_err(|e| StartError::Io(format!("dashboard listen {}: {e}", d.listen)))?;
            let daddr = listener.local_addr().map_err(|e| StartError::Io(e.to_string()))?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            if tls.is_none() && !daddr.ip().is_loopback() {
                tracing::warn!(%daddr, "serving the dashboard in plaintext on a non-loopback address (allow_insecure_listen = true): tokens and session cookies cross the network readable");
            }
            write_atomically(&cfg.data_dir.join(DASHBOARD_ADDR_FILE), &format!("{scheme}://{daddr}/\n"))?;
            tracing::info!(url = %format!("{scheme}://{daddr}/"), "dashboard for approvers, auditors and operators");
            let dashboard = crate::dashboard::Dashboard::new(
                Arc::clone(&manager),
                Arc::clone(&checkpoints),
                Arc::clone(&identities),
                d.session_ttl,
                tls.is_some(),
                cfg.governance.transparency.clone(),
            );
            Some(AbortOnDrop(tokio::spawn(crate::dashboard::serve(
                listener,
                tls,
                dashboard,
                manager.shutdown_signal(),
            ))))
        }
        _ => None,
    };

    let listener =
        TcpListener::bind(cfg.listen).await.map_err(|e| StartError::Io(format!("listen {}: {e}", cfg.listen)))?;
    let addr = listener.local_addr().map_err(|e| StartError::Io(e.to_string()))?;
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    write_atomically(&cfg.data_dir.join(ADDR_FILE), &format!("{scheme}://{addr}\n"))?;

    let mut builder = Server::builder();
    if let Some((cert, key, ca)) = tls_pem {
        let mut server_tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = ca {
            // Client certificates are verified against this CA; callers
            // without one may still present a bearer token.
            server_tls = server_tls.client_ca_root(Certificate::from_pem(ca)).client_auth_optional(true);
        }
        builder = builder.tls_config(server_tls).map_err(|e| StartError::Config(format!("tls: {e}")))?;
    } else if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "serving plaintext gRPC on a non-loopback address (allow_insecure_listen = true)");
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SandboxServiceServer<SandboxApi>>().await;
    health.set_serving::<RegisterServiceServer<RegisterApi>>().await;
    health.set_serving::<AuditServiceServer<AuditApi>>().await;
    health.set_serving::<ProfileServiceServer<ProfileApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Io(e.to_string()))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| StartError::Io(e.to_string()))?;

    let limits = CallLimits {
        max_concurrent_calls: cfg.limits.max_concurrent_calls,
        calls_per_second: cfg.limits.calls_per_second,
        burst: cfg.limits.burst,
    };
    let gate = Gate::new(identities, Arc::clone(&manager) as Arc<dyn crate::api::auth::AuditSink>, limits);
    let max = cfg.limits.max_message_bytes;
    let sandboxes =
        SandboxServiceServer::new(SandboxApi::new(Arc::clone(&manager), gate.clone())).max_decoding_message_size(max);
    let register =
        RegisterServiceServer::new(RegisterApi::new(Arc::clone(&manager), gate.clone())).max_decoding_message_size(max);
    let audit = AuditServiceServer::new(AuditApi::new(
        Arc::clone(&manager),
        gate.clone(),
        Arc::clone(&checkpoints),
        cfg.governance.transparency.clone(),
    ))
    .max_decoding_message_size(max);
    let profile = ProfileServiceServer::new(ProfileApi::new(Arc::clone(&manager), gate)).max_decoding_message_size(max);

    let _egress = {
        let policy = Arc::clone(&manager) as Arc<dyn crate::egress::Policy>;
        // On a swarm, allowlist sandboxes' relays connect from the nodes.
        let relays = match cfg.swarm.as_ref().filter(|sw| sw.egress_address.is_some()) {
            Some(sw) => crate::egress::Relays::new(sw.egress_sources()),
            None => crate::egress::Relays::none(),
        };
        let limits = crate::egress::ProxyLimits::default();
        AbortOnDrop(tokio::spawn(crate::egress::serve_with(egress, policy, limits, relays, manager.shutdown_signal())))
    };

    // SIGHUP reloads the profiles, like ReloadProfiles.
    let _hup = {
        let manager = Arc::clone(&manager);
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| StartError::Io(format!("SIGHUP handler: {e}")))?;
        AbortOnDrop(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let r = manager.reload_profiles(None).await;
                for e in &r.errors {
                    tracing::error!(error = %e, "invalid profile; the last good set stays in force");
                }
            }
        }))
    };

    tracing::info!(%addr, instance = manager.instance(), profiles = manager.profiles().len(), "sandpitd serving");
    let signalled = {
        let manager = Arc::clone(&manager);
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new calls; sandboxes are left running");
            manager.begin_shutdown();
        }
    };
    let server = builder
        .trace_fn(rpc_span)
        .layer(tower::util::MapResponseLayer::new(oversize_is_resource_exhausted))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(sandboxes)
        .add_service(register)
        .add_service(audit)
        .add_service(profile)
        // tonic's own tcp_nodelay does not apply to a listener we bound
        // ourselves: without it, small responses wait ~40 ms on Nagle.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), signalled);

    // Drain: once shutdown begins, in-flight calls get the grace period.
    let grace = cfg.lifecycle.shutdown_grace;
    let drained = async {
        manager.shutdown_signal().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        r = server => r.map_err(|e| StartError::Io(format!("server: {e}")))?,
        () = drained => tracing::warn!(grace = ?grace, "in-flight calls did not finish within the grace period"),
    }
    // Provisioning, teardowns and streams the manager started get what is
    // left of the grace period; its loops have already stopped.
    manager.shutdown(grace).await;
    // Refusals counted since the last summary are not lost with the process.
    manager.flush_refusals().await;
    // The last records of this run, calls drained, are checkpointed before exit.
    checkpoints.finish().await;
    let _ = std::fs::remove_file(cfg.data_dir.join(ADDR_FILE));
    let _ = std::fs::remove_file(cfg.data_dir.join(METRICS_ADDR_FILE));
    let _ = std::fs::remove_file(cfg.data_dir.join(DASHBOARD_ADDR_FILE));
    tracing::info!("stopped");
    Ok(())
}
