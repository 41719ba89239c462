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
//!
//!    On a swarm the proxy cannot know a sandbox by its address: the
//!    sandbox's traffic comes through a relay of its own (a service on the
//!    sandbox's own overlay and nothing else of the sandboxes'), from its
//!    node's address. A connection from a configured relay source
//!    ([`Relays`]: the nodes) that is no allowlist sandbox's must begin with
//!    the relay's handshake, `SANDPIT-RELAY <token>\n`, read within
//!    [`RELAY_HANDSHAKE`] and [`RELAY_LINE_MAX`] bytes, at most
//!    [`Relays::max_handshakes`] at once; the token's SHA-256 names the
//!    sandbox ([`Policy::lookup_relay`]). A wrong or missing token is closed
//!    unanswered and counted as a stranger. Sources outside the relay
//!    sources get rule 1, unread.
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

/// Where egress relays (a swarm's nodes) may connect from, and how many may
/// be in their handshake at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relays {
    pub sources: Vec<ipnet::Ipv4Net>,
    pub max_handshakes: usize,
}

impl Relays {
    /// No relays: every connection is known by its source address alone.
    pub fn none() -> Relays {
        Relays { sources: Vec::new(), max_handshakes: 0 }
    }

    /// Relays from `sources`, with the default bound on handshakes.
    pub fn new(sources: Vec<ipnet::Ipv4Net>) -> Relays {
        Relays { sources, max_handshakes: 64 }
    }

    fn admits(&self, ip: std::net::IpAddr) -> bool {
        match ip.to_canonical() {
            std::net::IpAddr::V4(v4) => self.sources.iter().any(|n| n.contains(&v4)),
            std::net::IpAddr::V6(_) => false,
        }
    }
}

/// What a relay sends first: this, its token, a newline.
pub const RELAY_PREFIX: &str = "SANDPIT-RELAY ";
/// Time for a relay to send its handshake line.
pub const RELAY_HANDSHAKE: Duration = Duration::from_secs(5);
/// Longest handshake line, newline included.
pub const RELAY_LINE_MAX: usize = 128;

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
    serve_with(listener, policy, limits, Relays::none(), shutdown).await;
}

/// [`serve_with_limits`] that also serves sandboxes through `relays`.
pub async fn serve_with(
    listener: TcpListener,
    policy: Arc<dyn Policy>,
    limits: ProxyLimits,
    relays: Relays,
    shutdown: impl Future<Output = ()> + Send,
) {
    run(listener, Arc::new(Ctx::new(policy, limits).with_relays(relays)), shutdown).await;
}

/// What every connection task shares.
struct Ctx {
    policy: Arc<dyn Policy>,
    limits: ProxyLimits,
    relays: Relays,
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
            relays: Relays::none(),
            dials: AtomicU64::new(0),
            strangers: AtomicU64::new(0),
            stranger_log: std::sync::Mutex::new((None, 0)),
        }
    }

    fn with_relays(mut self, relays: Relays) -> Ctx {
        self.relays = relays;
        self
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

/// Connections open per sandbox (one source address each, or one relay).
#[derive(Default)]
struct PerSource(std::sync::Mutex<std::collections::HashMap<String, usize>>);

/// One open connection of a sandbox; gives its place back when dropped.
struct SourceSlot {
    all: Arc<PerSource>,
    sandbox: String,
}

impl PerSource {
    fn take(self: &Arc<Self>, sandbox: &str, max: usize) -> Option<SourceSlot> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(sandbox.to_string()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot { all: Arc::clone(self), sandbox: sandbox.to_string() })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.all.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.sandbox) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.sandbox);
            }
        }
    }
}

async fn run(listener: TcpListener, ctx: Arc<Ctx>, shutdown: impl Future<Output = ()> + Send) {
    let slots = Arc::new(Semaphore::new(ctx.limits.max_connections.min(Semaphore::MAX_PERMITS)));
    let per_source = Arc::new(PerSource::default());
    let handshakes = Arc::new(Semaphore::new(ctx.relays.max_handshakes.min(Semaphore::MAX_PERMITS)));
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
                        if !ctx.relays.admits(peer.ip()) {
                            ctx.stranger(peer);
                            drop(stream);
                            continue;
                        }
                        // A relay: it says whose it is first, within bounds.
                        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
                            tracing::warn!(%peer, limit = ctx.relays.max_handshakes, "too many egress relay handshakes at once; closing connection");
                            continue;
                        };
                        let (ctx, slots, per_source) = (ctx.clone(), slots.clone(), per_source.clone());
                        tasks.spawn(async move {
                            let mut stream = stream;
                            let owner = relay_handshake(&mut stream, &ctx).await;
                            drop(handshake);
                            match owner {
                                Some(owner) => {
                                    if let Some(held) = admit(&ctx, &slots, &per_source, peer, &owner.0) {
                                        handle(stream, peer, owner, &ctx).await;
                                        drop(held);
                                    }
                                }
                                None => ctx.stranger(peer),
                            }
                        });
                        continue;
                    };
                    let Some(held) = admit(&ctx, &slots, &per_source, peer, &owner.0) else { continue };
                    let ctx = ctx.clone();
                    tasks.spawn(async move {
                        handle(stream, peer, owner, &ctx).await;
                        drop(held);
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

/// A connection slot, and one of its sandbox's; `None` (and a warning) when
/// either is full and the connection is to be closed unanswered.
fn admit(
    ctx: &Ctx,
    slots: &Arc<Semaphore>,
    per_source: &Arc<PerSource>,
    peer: SocketAddr,
    sandbox: &str,
) -> Option<(tokio::sync::OwnedSemaphorePermit, SourceSlot)> {
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        tracing::warn!(%peer, limit = ctx.limits.max_connections, "egress proxy full; closing connection");
        return None;
    };
    let Some(slot) = per_source.take(sandbox, ctx.limits.max_per_source) else {
        tracing::warn!(%peer, sandbox, limit = ctx.limits.max_per_source, "too many egress connections from one sandbox; closing connection");
        return None;
    };
    Some((permit, slot))
}

/// Reads a relay's handshake line, a byte at a time so that nothing of the
/// request after it is taken; the sandbox whose relay token it names.
/// `None` for anything else: a line too long or too slow, another prefix,
/// a token no allowlist sandbox's relay holds.
async fn relay_handshake(stream: &mut TcpStream, ctx: &Ctx) -> Option<(String, Vec<Destination>)> {
    use sha2::Digest;
    let line = timeout(RELAY_HANDSHAKE, async {
        let mut line = Vec::with_capacity(RELAY_LINE_MAX);
        let mut byte = [0u8; 1];
        while line.len() < RELAY_LINE_MAX {
            if stream.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            if byte[0] == b'\n' {
                return Some(line);
            }
            line.push(byte[0]);
        }
        None
    })
    .await
    .ok()??;
    let token = std::str::from_utf8(&line).ok()?.strip_prefix(RELAY_PREFIX)?;
    if token.is_empty() {
        return None;
    }
    ctx.policy.lookup_relay(&hex::encode(sha2::Sha256::digest(token.as_bytes())))
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
