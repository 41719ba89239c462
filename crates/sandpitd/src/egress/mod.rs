//! The egress proxy for sandboxes in `allowlist` network mode.
//!
//! Such a sandbox sits on an internal network with no route and no DNS to the
//! outside; the only way out is this proxy, which lets a connection through
//! when its `host:port` is listed in the sandbox's profile. It speaks just
//! enough HTTP/1.1 for that: `CONNECT host:port` opens a byte tunnel, and a
//! plain request with an absolute `http://` target is forwarded in origin
//! form. Each connection of an allowlist sandbox carries exactly one request
//! and yields exactly one [`Decision`], reported through [`Policy::decided`]
//! before the client hears the answer.
//!
//! Rules, in the order they are applied:
//! 1. The source address must belong to an allowlist sandbox ([`Policy::lookup`]).
//!    Any other source (a stranger: the host firewall lets none through but
//!    loopback, so one here means a firewall gone or a local process) is
//!    closed on accept, before it holds a connection slot and without a byte
//!    read or answered: no number of strangers can crowd out the sandboxes,
//!    and none can fill the audit log. They are counted instead
//!    (`sandpit_egress_refused_strangers_total`) and logged at most every
//!    [`STRANGER_LOG_EVERY`].
//! 2. The request head must parse ([`http`]), within [`ProxyLimits::head_timeout`] and
//!    [`ProxyLimits::max_head`] bytes, else 400.
//! 3. `(host, port)` must equal an allowlist entry, host compared in one canonical
//!    form ([`addr::Host`]: case-insensitive, trailing dot ignored, no wildcards), else 403.
//! 4. An IP-literal entry is connected to as is: the operator named that very
//!    address. A name is resolved here, once, and only resolved addresses that
//!    pass [`addr::refusal`] are candidates (no loopback, private, link-local,
//!    metadata, IPv6 ...); if none pass, 403. The proxy connects to a
//!    candidate it resolved itself and never resolves again, so there is no
//!    window for DNS rebinding between check and use.
//! 5. Resolution or connection failing within [`ProxyLimits::connect_timeout`] answers 502.
//!
//! An entry grants a `host:port`, not URLs: once a connection is allowed the
//! proxy relays bytes without looking at them (a plain-HTTP client could
//! pipeline more requests, as it could through a CONNECT tunnel to the same
//! place). Nor can it stop an allowed destination relaying elsewhere (domain
//! fronting on a shared CDN, open proxies), so allowlists should name narrow
//! hosts. Tunnels have no idle timeout: a long-lived connection to an allowed
//! destination is legitimate.

pub mod http;

pub use sandpit_core::egress::{addr, Decision, Destination, Policy};

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{timeout, timeout_at, Instant};

use self::addr::Host;
use self::http::{HeadError, Kind};

/// Bounds on what one client can make the proxy do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyLimits {
    /// Connections served at once; any beyond are closed on accept, unanswered.
    pub max_connections: usize,
    /// Connections served at once from one source address (one sandbox), so
    /// that no sandbox can take every slot; any beyond are closed likewise.
    pub max_per_source: usize,
    /// Largest request head, request line to blank line inclusive.
    pub max_head: usize,
    /// Time for the client to send a complete head.
    pub head_timeout: Duration,
    /// Time to resolve the destination and connect to it, together.
    pub connect_timeout: Duration,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_per_source: 64,
            max_head: 16 * 1024,
            head_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// At most one log line per this long about strangers, however many there are.
pub const STRANGER_LOG_EVERY: Duration = Duration::from_secs(10);

/// After an error answer, how long and how much to keep reading so that
/// unread request bytes do not make the kernel reset the connection before
/// the client has read the answer.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_MAX: usize = 64 * 1024;

/// Serves until `shutdown` resolves. Each connection in its own task.
pub async fn serve(listener: TcpListener, policy: Arc<dyn Policy>, shutdown: impl Future<Output = ()> + Send) {
    serve_with_limits(listener, policy, ProxyLimits::default(), shutdown).await;
}

/// [`serve`] with limits other than the defaults.
///
/// When `shutdown` resolves, the listener is dropped and every open
/// connection, tunnels included, is closed before this returns.
pub async fn serve_with_limits(
    listener: TcpListener,
    policy: Arc<dyn Policy>,
    limits: ProxyLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    run(listener, Arc::new(Ctx::new(policy, limits)), shutdown).await;
}

/// What every connection task shares.
struct Ctx {
    policy: Arc<dyn Policy>,
    limits: ProxyLimits,
    /// Connection attempts to destinations, so that tests can prove a denied
    /// request never reached the network.
    dials: AtomicU64,
    /// Connections closed on accept because their source is no allowlist sandbox.
    strangers: AtomicU64,
    /// When strangers were last logged, and how many came since.
    stranger_log: std::sync::Mutex<(Option<Instant>, u64)>,
}

impl Ctx {
    fn new(policy: Arc<dyn Policy>, limits: ProxyLimits) -> Ctx {
        Ctx {
            policy,
            limits,
            dials: AtomicU64::new(0),
            strangers: AtomicU64::new(0),
            stranger_log: std::sync::Mutex::new((None, 0)),
        }
    }

    /// Counts a stranger, and logs one line per [`STRANGER_LOG_EVERY`] at
    /// most, so that a flood cannot flood the log either.
    fn stranger(&self, peer: SocketAddr) {
        self.strangers.fetch_add(1, Ordering::Relaxed);
        sandpit_core::metrics::global().egress_stranger_refused();
        let mut log = self.stranger_log.lock().unwrap_or_else(|p| p.into_inner());
        log.1 += 1;
        let now = Instant::now();
        if log.0.is_none_or(|last| now.duration_since(last) >= STRANGER_LOG_EVERY) {
            tracing::warn!(
                latest = %peer,
                closed = log.1,
                "egress proxy closed connections from sources that are no allowlist sandbox (is the host firewall in place?)"
            );
            *log = (Some(now), 0);
        }
    }
}

/// Connections open per source address.
#[derive(Default)]
struct PerSource(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One open connection of a source; gives its place back when dropped.
struct SourceSlot {
    all: Arc<PerSource>,
    ip: std::net::IpAddr,
}

impl PerSource {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<SourceSlot> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot { all: Arc::clone(self), ip })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.all.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

async fn run(listener: TcpListener, ctx: Arc<Ctx>, shutdown: impl Future<Output = ()> + Send) {
    let slots = Arc::new(Semaphore::new(ctx.limits.max_connections.min(Semaphore::MAX_PERMITS)));
    let per_source = Arc::new(PerSource::default());
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // Reap finished tasks so the set does not grow with every connection.
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "egress connection task failed");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Before any slot is taken and without reading a byte.
                    let Some(owner) = ctx.policy.lookup(peer.ip().to_canonical()) else {
                        ctx.stranger(peer);
                        drop(stream);
                        continue;
                    };
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, limit = ctx.limits.max_connections, "egress proxy full; closing connection");
                        continue;
                    };
                    let Some(slot) = per_source.take(peer.ip().to_canonical(), ctx.limits.max_per_source) else {
                        tracing::warn!(%peer, limit = ctx.limits.max_per_source, "too many egress connections from one source; closing connection");
                        continue;
                    };
                    let ctx = ctx.clone();
                    tasks.spawn(async move {
                        handle(stream, peer, owner, &ctx).await;
                        drop((permit, slot));
                    });
                }
                Err(e) => {
                    // Typically out of file descriptors: back off rather than spin.
                    tracing::warn!(error = %e, "egress proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    tasks.shutdown().await;
}

/// Serves one connection of `owner` (sandbox, allowlist): one request, one decision.
async fn handle(mut client: TcpStream, peer: SocketAddr, owner: (String, Vec<Destination>), ctx: &Ctx) {
    let source = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let limits = &ctx.limits;
    let head = match timeout(limits.head_timeout, http::read_head(&mut client, limits.max_head)).await {
        Ok(Ok((head, rest))) => http::parse(&head).map(|request| (request, rest)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(HeadError::Timeout(limits.head_timeout)),
    };
    let (sandbox, allowlist) = owner;

    let mut decision = Decision {
        sandbox: Some(sandbox),
        source,
        method: String::new(),
        host: String::new(),
        port: 0,
        allowed: false,
        reason: String::new(),
        status: 0,
    };
    if let Ok((request, _)) = &head {
        decision.method = request.method.clone();
        decision.host = request.host.to_string();
        decision.port = request.port;
    }

    let (request, rest) = match head {
        Ok(ok) => ok,
        Err(e) => return refuse(client, decision, 400, e.to_string(), ctx).await,
    };

    let deadline = Instant::now() + limits.connect_timeout;
    let candidates = match plan(&request.host, request.port, &allowlist) {
        Err(reason) => return refuse(client, decision, 403, reason, ctx).await,
        Ok(Plan::Literal(addr)) => vec![addr],
        Ok(Plan::Resolve(name)) => {
            match timeout_at(deadline, tokio::net::lookup_host((name.as_str(), request.port))).await {
                Err(_) => return refuse(client, decision, 502, format!("resolving {name} timed out"), ctx).await,
                Ok(Err(e)) => return refuse(client, decision, 502, format!("cannot resolve {name}: {e}"), ctx).await,
                Ok(Ok(resolved)) => match acceptable(&name, resolved) {
                    Ok(addrs) => addrs,
                    Err(reason) => return refuse(client, decision, 403, reason, ctx).await,
                },
            }
        }
    };
    let (mut upstream, connected) = match dial(&candidates, deadline, ctx).await {
        Ok(ok) => ok,
        Err(reason) => return refuse(client, decision, 502, reason, ctx).await,
    };

    decision.allowed = true;
    decision.status = 200;
    decision.reason = connected.to_string();
    ctx.policy.decided(&decision).await;
    tracing::debug!(?decision, "egress allowed");

    // Small writes (TLS handshakes, interactive protocols) should not wait on Nagle.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let opened = match &request.kind {
        Kind::Connect => {
            async {
                client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await?;
                upstream.write_all(&rest).await
            }
            .await
        }
        Kind::Forward { .. } => {
            let mut head = request.origin_head().unwrap_or_default();
            head.extend_from_slice(&rest);
            upstream.write_all(&head).await
        }
    };
    if let Err(e) = opened {
        tracing::debug!(%source, error = %e, "egress connection ended before relaying");
        return;
    }
    // Half-closes are passed on, so a client that shuts its side after the
    // request still gets the whole response.
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%source, error = %e, "egress relay ended with an error");
    }
}

/// Where an allowed request may go, before any resolution.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// An IP literal listed as such: connect to exactly this.
    Literal(SocketAddr),
    /// A listed name: resolve it and judge every address.
    Resolve(String),
}

/// Matches a request against the allowlist. Denial reasons are returned as
/// text for the 403 body and the audit record.
fn plan(host: &Host, port: u16, allowlist: &[Destination]) -> Result<Plan, String> {
    let listed = allowlist.iter().any(|d| d.port == port && Host::parse(&d.host).as_ref() == Some(host));
    if !listed {
        return Err(format!("{} is not in the allowlist", host.authority(port)));
    }
    Ok(match host {
        Host::Ip(ip) => Plan::Literal(SocketAddr::new(*ip, port)),
        Host::Name(name) => Plan::Resolve(name.clone()),
    })
}

/// Keeps the resolved addresses a name may be connected to, in resolver
/// order and without repeats; if there are none, says what was refused.
fn acceptable(name: &str, resolved: impl IntoIterator<Item = SocketAddr>) -> Result<Vec<SocketAddr>, String> {
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for addr in resolved {
        match addr::refusal(addr.ip()) {
            None if !ok.contains(&addr) => ok.push(addr),
            Some(why) => {
                let entry = format!("{} ({why})", addr.ip());
                if !refused.contains(&entry) {
                    refused.push(entry);
                }
            }
            None => {}
        }
    }
    if !ok.is_empty() {
        return Ok(ok);
    }
    if refused.is_empty() {
        return Err(format!("{name} resolves to no address"));
    }
    Err(format!("{name} resolves only to refused addresses: {}", refused.join(", ")))
}

/// Connects to the first candidate that answers before `deadline`.
async fn dial(candidates: &[SocketAddr], deadline: Instant, ctx: &Ctx) -> Result<(TcpStream, SocketAddr), String> {
    let mut last = String::from("no address to connect to");
    for &addr in candidates {
        ctx.dials.fetch_add(1, Ordering::Relaxed);
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, addr)),
            Ok(Err(e)) => last = format!("cannot connect to {addr}: {e}"),
            Err(_) => return Err(format!("connecting to {addr} timed out")),
        }
    }
    Err(last)
}

/// Reports a refusal, answers it, and closes the connection.
async fn refuse(mut client: TcpStream, mut decision: Decision, status: u16, reason: String, ctx: &Ctx) {
    let phrase = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        _ => "Bad Gateway",
    };
    let body = format!("{reason}\n");
    let answer = format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    decision.allowed = false;
    decision.status = status;
    decision.reason = reason;
    ctx.policy.decided(&decision).await;
    tracing::debug!(?decision, "egress refused");

    let _ = timeout(LINGER, async {
        client.write_all(answer.as_bytes()).await?;
        client.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_MAX {
            match client.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}
