//! End-to-end tests of the proxy over real sockets, all on 127.0.0.1.
//!
//! Destinations the proxy must refuse (metadata, private ranges) appear only
//! in requests that are denied before any connection attempt; `Ctx::dials`
//! proves that no attempt was made.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::*;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Bound on every client-side wait, so that a bug fails a test instead of hanging it.
const WAIT: Duration = Duration::from_secs(5);

/// A policy that knows sandboxes at `known` (`sb-1` the first), all with one
/// allowlist, or none at all; and records decisions.
struct Fake {
    known: Vec<IpAddr>,
    /// SHA-256 (hex) of the relay tokens known, `relay-1` the first.
    relay_keys: Vec<String>,
    allowlist: Option<Vec<Destination>>,
    decisions: Mutex<Vec<Decision>>,
}

#[async_trait::async_trait]
impl Policy for Fake {
    fn lookup(&self, source: IpAddr) -> Option<(String, Vec<Destination>)> {
        let list = self.allowlist.as_ref()?;
        let i = self.known.iter().position(|ip| *ip == source)?;
        Some((format!("sb-{}", i + 1), list.clone()))
    }

    fn lookup_relay(&self, token_sha256: &str) -> Option<(String, Vec<Destination>)> {
        let list = self.allowlist.as_ref()?;
        let i = self.relay_keys.iter().position(|k| k == token_sha256)?;
        Some((format!("relay-{}", i + 1), list.clone()))
    }

    async fn decided(&self, decision: &Decision) {
        self.decisions.lock().expect("lock").push(decision.clone());
    }
}

struct Proxy {
    addr: SocketAddr,
    policy: Arc<Fake>,
    ctx: Arc<Ctx>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// `None` makes 127.0.0.1 an unknown source.
    async fn start(allowlist: Option<Vec<Destination>>, limits: ProxyLimits) -> Proxy {
        Proxy::start_for(vec![LOCAL], allowlist, limits).await
    }

    /// A proxy whose sandboxes are at `known`.
    async fn start_for(known: Vec<IpAddr>, allowlist: Option<Vec<Destination>>, limits: ProxyLimits) -> Proxy {
        Proxy::start_with(known, allowlist, limits, Relays::none(), &[]).await
    }

    /// A proxy whose sandboxes are at `known` and behind relays holding
    /// `tokens`, relays connecting from `relays`.
    async fn start_with(
        known: Vec<IpAddr>,
        allowlist: Option<Vec<Destination>>,
        limits: ProxyLimits,
        relays: Relays,
        tokens: &[&str],
    ) -> Proxy {
        use sha2::Digest;
        let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let relay_keys = tokens.iter().map(|t| hex::encode(sha2::Sha256::digest(t.as_bytes()))).collect();
        let policy = Arc::new(Fake { known, relay_keys, allowlist, decisions: Mutex::new(Vec::new()) });
        let ctx = Arc::new(Ctx::new(policy.clone(), limits).with_relays(relays));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(listener, ctx.clone(), async move {
            let _ = stopped.await;
        }));
        Proxy { addr, policy, ctx, stop, task }
    }

    async fn allowing(allowlist: Vec<Destination>) -> Proxy {
        Proxy::start(Some(allowlist), ProxyLimits::default()).await
    }

    fn dials(&self) -> u64 {
        self.ctx.dials.load(Ordering::Relaxed)
    }

    fn strangers(&self) -> u64 {
        self.ctx.strangers.load(Ordering::Relaxed)
    }

    /// A connection from `source` (any 127.0.0.0/8 address works on Linux).
    async fn connect_from(&self, source: Ipv4Addr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::from((source, 0))).expect("bind source");
        socket.connect(self.addr).await.expect("connect to proxy")
    }

    /// Takes the decisions made so far.
    fn decisions(&self) -> Vec<Decision> {
        std::mem::take(&mut *self.policy.decisions.lock().expect("lock"))
    }

    /// Takes the decisions made so far, asserting there was exactly one.
    fn decision(&self) -> Decision {
        let mut all = self.decisions();
        assert_eq!(all.len(), 1, "expected exactly one decision: {all:?}");
        all.remove(0)
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.expect("connect to proxy")
    }

    /// Sends `request` on a fresh connection and returns everything the proxy answers.
    async fn exchange(&self, request: &[u8]) -> String {
        let mut client = self.connect().await;
        client.write_all(request).await.expect("write");
        read_all(&mut client).await
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        timeout(WAIT, self.task).await.expect("serve returns on shutdown").expect("serve task");
    }
}

/// What a decision should say: one argument per field, so that each assertion
/// reads as the record it expects.
#[allow(clippy::too_many_arguments)]
fn expected(
    sandbox: Option<&str>,
    client: &TcpStream,
    method: &str,
    host: &str,
    port: u16,
    allowed: bool,
    reason: &str,
    status: u16,
) -> Decision {
    Decision {
        sandbox: sandbox.map(String::from),
        source: client.local_addr().expect("client addr"),
        method: method.into(),
        host: host.into(),
        port,
        allowed,
        reason: reason.into(),
        status,
    }
}

async fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut out)).await.expect("answer in time").expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads up to and including the blank line ending a response head.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        let n = timeout(WAIT, stream.read(&mut byte)).await.expect("head in time").expect("read");
        assert_ne!(n, 0, "closed mid-head: {:?}", String::from_utf8_lossy(&out));
        out.push(byte[0]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn read_exact(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    timeout(WAIT, stream.read_exact(&mut buf)).await.expect("data in time").expect("read");
    buf
}

/// An echo server on 127.0.0.1; returns its port.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind echo");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// A port on 127.0.0.1 with nothing listening.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind");
    listener.local_addr().expect("addr").port()
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default()
}

#[tokio::test]
async fn connect_tunnels_to_an_allowed_destination() {
    let echo = echo_server().await;
    let proxy = Proxy::allowing(vec![Destination::new("127.0.0.1", echo)]).await;
    let mut client = proxy.connect().await;
    // Bytes sent right behind the head (a client not waiting for the 200)
    // must reach the destination too.
    client.write_all(format!("CONNECT 127.0.0.1:{echo} HTTP/1.1\r\nHost: x\r\n\r\nearly").as_bytes()).await.unwrap();
    assert_eq!(read_head(&mut client).await, "HTTP/1.1 200 Connection Established\r\n\r\n");
    assert_eq!(read_exact(&mut client, 5).await, b"early");
    client.write_all(b"\x00\x01binary\xff").await.unwrap();
    assert_eq!(read_exact(&mut client, 9).await, b"\x00\x01binary\xff");
    client.shutdown().await.unwrap();
    assert_eq!(read_all(&mut client).await, "", "half-close travels through and back");

    let reason = format!("127.0.0.1:{echo}");
    assert_eq!(proxy.decision(), expected(Some("sb-1"), &client, "CONNECT", "127.0.0.1", echo, true, &reason, 200));
    assert_eq!(proxy.dials(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn connect_to_an_unlisted_port_is_forbidden() {
    let echo = echo_server().await;
    let other = closed_port().await;
    let proxy = Proxy::allowing(vec![Destination::new("127.0.0.1", echo)]).await;
    let mut client = proxy.connect().await;
    client.write_all(format!("CONNECT 127.0.0.1:{other} HTTP/1.1\r\n\r\n").as_bytes()).await.unwrap();
    let answer = read_all(&mut client).await;
    let reason = format!("127.0.0.1:{other} is not in the allowlist");
    assert_eq!(status_line(&answer), "HTTP/1.1 403 Forbidden");
    assert_eq!(body(&answer), format!("{reason}\n"));
    assert_eq!(proxy.decision(), expected(Some("sb-1"), &client, "CONNECT", "127.0.0.1", other, false, &reason, 403));
    assert_eq!(proxy.dials(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn connect_to_an_unlisted_ip_literal_is_forbidden() {
    let proxy = Proxy::allowing(vec![Destination::new("example.com", 443)]).await;
    for (target, host) in [("10.1.2.3:443", "10.1.2.3"), ("93.184.216.34:443", "93.184.216.34")] {
        let mut client = proxy.connect().await;
        client.write_all(format!("CONNECT {target} HTTP/1.1\r\n\r\n").as_bytes()).await.unwrap();
        let answer = read_all(&mut client).await;
        assert_eq!(status_line(&answer), "HTTP/1.1 403 Forbidden", "{target}");
        let reason = format!("{target} is not in the allowlist");
        assert_eq!(proxy.decision(), expected(Some("sb-1"), &client, "CONNECT", host, 443, false, &reason, 403));
    }
    assert_eq!(proxy.dials(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn metadata_address_is_forbidden_without_a_connection_attempt() {
    let echo = echo_server().await;
    let proxy = Proxy::allowing(vec![Destination::new("127.0.0.1", echo)]).await;
    let requests: [(&str, &[u8]); 2] = [
        ("CONNECT", b"CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n"),
        ("GET", b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"),
    ];
    for (method, request) in requests {
        let mut client = proxy.connect().await;
        client.write_all(request).await.unwrap();
        let answer = read_all(&mut client).await;
        assert_eq!(status_line(&answer), "HTTP/1.1 403 Forbidden", "{method}");
        let reason = "169.254.169.254:80 is not in the allowlist";
        assert_eq!(
            proxy.decision(),
            expected(Some("sb-1"), &client, method, "169.254.169.254", 80, false, reason, 403)
        );
    }
    assert_eq!(proxy.dials(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_forbidden_unless_the_literal_is_listed() {
    let echo = echo_server().await;

    // Listing the name is not enough: it resolves to loopback.
    let proxy = Proxy::allowing(vec![Destination::new("localhost", echo)]).await;
    let mut client = proxy.connect().await;
    client.write_all(format!("CONNECT LocalHost.:{echo} HTTP/1.1\r\n\r\n").as_bytes()).await.unwrap();
    let answer = read_all(&mut client).await;
    assert_eq!(status_line(&answer), "HTTP/1.1 403 Forbidden");
    let d = proxy.decision();
    assert!(d.reason.starts_with("localhost resolves only to refused addresses: 127.0.0.1 (loopback)"), "{d:?}");
    assert_eq!(d, expected(Some("sb-1"), &client, "CONNECT", "localhost", echo, false, &d.reason, 403));
    assert_eq!(proxy.dials(), 0);
    proxy.stop().await;

    // Listing the literal allows the literal, not the name.
    let proxy = Proxy::allowing(vec![Destination::new("127.0.0.1", echo)]).await;
    let answer = proxy.exchange(format!("CONNECT localhost:{echo} HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert_eq!(status_line(&answer), "HTTP/1.1 403 Forbidden");
    assert_eq!(proxy.decision().reason, format!("localhost:{echo} is not in the allowlist"));
    let mut client = proxy.connect().await;
    client.write_all(format!("CONNECT 127.0.0.1:{echo} HTTP/1.1\r\n\r\n").as_bytes()).await.unwrap();
    assert_eq!(read_head(&mut client).await, "HTTP/1.1 200 Connection Established\r\n\r\n");
    drop(client);
    assert!(proxy.decision().allowed);
    assert_eq!(proxy.dials(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn an_ipv6_literal_is_forbidden_unless_listed() {
    let echo = echo_server().await;
    let proxy = Proxy::allowing(vec![Destination::new("127.0.0.1", echo), Destination::new("localhost", echo)]).await;
    let mut client = proxy.connect().await;
    client.write_all(format!("CONNECT [::1]:{echo} HTTP/1.1\r\n\r\n").as_bytes()).await.unwrap();
    let answer = read_all(&mut client).await;
    assert_eq!(status_line(&answer), "HTTP/1.1 403 Forbidden");
    let reason = format!("[::1]:{echo} is not in the allowlist");
    assert_eq!(proxy.decision(), expected(Some("sb-1"), &client, "CONNECT", "::1", echo, false, &reason, 403));
    assert_eq!(proxy.dials(), 0);
    proxy.stop().await;
    // The listed case connects to ::1, which these tests must not do over a
    // socket; `plan_matches_canonical_hosts` covers it.
}

/// An origin on 127.0.0.1 that takes one request (head plus `body_len`
/// bytes), answers `hello` and closes; returns its port and what it received.
async fn origin(body_len: usize) -> (u16, oneshot::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind origin");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else { return };
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
            if head_end.is_some_and(|end| got.len() >= end + body_len) {
                break;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello").await;
        let _ = tx.send(got);
    });
    (port, rx)
}

#[tokio::test]
async fn plain_http_is_forwarded_in_origin_form() {
    for (method, body) in [("GET", ""), ("POST", "body")] {
        let (port, received) = origin(body.len()).await;
        let proxy = Proxy::allowing(vec![Destination::new("127.0.0.1", port)]).await;
        let mut client = proxy.connect().await;
        let length = if body.is_empty() { String::new() } else { format!("Content-Length: {}\r\n", body.len()) };
        let request = format!(
            "{method} http://127.0.0.1:{port}/submit?x=1 HTTP/1.1\r\n\
             Host: evil.example\r\n\
             Proxy-Authorization: Basic c2VjcmV0\r\n\
             Proxy-Connection: keep-alive\r\n\
             Connection: keep-alive\r\n\
             User-Agent: test/1\r\n\
             {length}\r\n{body}"
        );
        client.write_all(request.as_bytes()).await.unwrap();
        let answer = read_all(&mut client).await;
        assert_eq!(answer, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");

        let received = timeout(WAIT, received).await.expect("origin in time").expect("origin saw a request");
        assert_eq!(
            String::from_utf8_lossy(&received),
            format!(
                "{method} /submit?x=1 HTTP/1.1\r\n\
                 Host: 127.0.0.1:{port}\r\n\
                 User-Agent: test/1\r\n\
                 {length}\
                 Connection: close\r\n\r\n{body}"
            )
        );
        let reason = format!("127.0.0.1:{port}");
        assert_eq!(proxy.decision(), expected(Some("sb-1"), &client, method, "127.0.0.1", port, true, &reason, 200));
        proxy.stop().await;
    }
}

#[tokio::test]
async fn an_unknown_source_is_closed_unread_unanswered_and_unaudited() {
    let echo = echo_server().await;
    let proxy = Proxy::start(None, ProxyLimits::default()).await;
    for request in [format!("CONNECT 127.0.0.1:{echo} HTTP/1.1\r\n\r\n"), "nonsense\r\n\r\n".to_string()] {
        let mut client = proxy.connect().await;
        // The proxy may have closed before this write: either way nothing comes back.
        let _ = client.write_all(request.as_bytes()).await;
        assert_closed_unanswered(client).await;
    }
    assert_eq!(proxy.decisions(), vec![], "strangers are counted, not audited");
    assert_eq!(proxy.strangers(), 2);
    assert_eq!(proxy.dials(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn strangers_holding_connections_open_cannot_crowd_out_a_sandbox() {
    // Two slots, one per source: before strangers were refused on accept,
    // two of them holding a head open took both slots.
    let limits = ProxyLimits { max_connections: 2, max_per_source: 1, ..ProxyLimits::default() };
    let proxy = Proxy::start_for(vec![LOCAL], Some(vec![]), limits).await;
    let mut strangers = Vec::new();
    for i in 2..=41u8 {
        let mut s = proxy.connect_from(Ipv4Addr::new(127, 0, 0, i)).await;
        let _ = s.write_all(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n").await;
        strangers.push(s);
    }
    let mut sandbox = proxy.connect().await;
    sandbox.write_all(b"CONNECT 127.0.0.1:7 HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(status_line(&read_all(&mut sandbox).await), "HTTP/1.1 403 Forbidden");
    let d = proxy.decision();
    assert_eq!((d.sandbox.as_deref(), d.port), (Some("sb-1"), 7), "only the sandbox was decided");
    // Accepted in order, so every stranger was seen before the sandbox.
    assert_eq!(proxy.strangers(), 40);
    for s in strangers {
        assert_closed_unanswered(s).await;
    }
    proxy.stop().await;
}

#[tokio::test]
async fn malformed_heads_are_bad_requests() {
    let echo = echo_server().await;
    let proxy = Proxy::allowing(vec![Destination::new("127.0.0.1", echo)]).await;
    let cases: [(String, &str); 5] = [
        ("GARBAGE\r\n\r\n".into(), "malformed request: request line is not `method target version`"),
        (
            "GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            "malformed request: target must be an absolute http:// URI; this is a proxy",
        ),
        (
            format!("GET https://127.0.0.1:{echo}/ HTTP/1.1\r\n\r\n"),
            "malformed request: https:// targets must use CONNECT",
        ),
        (format!("GET http://a@127.0.0.1:{echo}/ HTTP/1.1\r\n\r\n"), "malformed request: userinfo in authority"),
        (
            format!("CONNECT 127.0.0.1:{echo} HTTP/1.1\r\nX: a\nY: b\r\n\r\n"),
            "malformed request: control byte in header value",
        ),
    ];
    for (request, reason) in cases {
        let mut client = proxy.connect().await;
        client.write_all(request.as_bytes()).await.unwrap();
        let answer = read_all(&mut client).await;
        assert_eq!(status_line(&answer), "HTTP/1.1 400 Bad Request", "{request:?}");
        assert_eq!(body(&answer), format!("{reason}\n"));
        assert_eq!(proxy.decision(), expected(Some("sb-1"), &client, "", "", 0, false, reason, 400));
    }
    assert_eq!(proxy.dials(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn an_oversize_head_is_a_bad_request() {
    let echo = echo_server().await;
    let proxy = Proxy::allowing(vec![Destination::new("127.0.0.1", echo)]).await;
    let mut client = proxy.connect().await;
    let request = format!("CONNECT 127.0.0.1:{echo} HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(20 * 1024));
    client.write_all(request.as_bytes()).await.unwrap();
    let answer = read_all(&mut client).await;
    assert_eq!(status_line(&answer), "HTTP/1.1 400 Bad Request");
    let reason = "request head larger than 16384 bytes";
    assert_eq!(proxy.decision(), expected(Some("sb-1"), &client, "", "", 0, false, reason, 400));
    assert_eq!(proxy.dials(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn a_slow_head_is_a_bad_request() {
    let limits = ProxyLimits { head_timeout: Duration::from_millis(200), ..ProxyLimits::default() };
    let proxy = Proxy::start(Some(vec![]), limits).await;
    let mut client = proxy.connect().await;
    client.write_all(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n").await.unwrap();
    let answer = read_all(&mut client).await;
    assert_eq!(status_line(&answer), "HTTP/1.1 400 Bad Request");
    let reason = "no complete request head within 200ms";
    assert_eq!(proxy.decision(), expected(Some("sb-1"), &client, "", "", 0, false, reason, 400));

    // Silence counts too.
    let mut client = proxy.connect().await;
    assert_eq!(status_line(&read_all(&mut client).await), "HTTP/1.1 400 Bad Request");
    assert_eq!(proxy.decision().reason, reason);
    proxy.stop().await;
}

#[tokio::test]
async fn an_unreachable_allowed_destination_is_a_bad_gateway() {
    let port = closed_port().await;
    let proxy = Proxy::allowing(vec![Destination::new("127.0.0.1", port)]).await;
    let mut client = proxy.connect().await;
    client.write_all(format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").as_bytes()).await.unwrap();
    let answer = read_all(&mut client).await;
    assert_eq!(status_line(&answer), "HTTP/1.1 502 Bad Gateway");
    let d = proxy.decision();
    assert!(d.reason.starts_with(&format!("cannot connect to 127.0.0.1:{port}: ")), "{d:?}");
    assert_eq!(d, expected(Some("sb-1"), &client, "CONNECT", "127.0.0.1", port, false, &d.reason, 502));
    assert_eq!(proxy.dials(), 1);
    proxy.stop().await;
}

/// The proxy closes `client` without answering it.
async fn assert_closed_unanswered(mut client: TcpStream) {
    let mut buf = Vec::new();
    let closed = timeout(WAIT, client.read_to_end(&mut buf)).await.expect("closed in time");
    assert!(closed.is_err() || buf.is_empty(), "the connection was answered: {buf:?}");
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_unanswered() {
    let limits = ProxyLimits { max_connections: 1, ..ProxyLimits::default() };
    let proxy = Proxy::start(Some(vec![]), limits).await;
    let mut first = proxy.connect().await;
    first.write_all(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n").await.unwrap();

    assert_closed_unanswered(proxy.connect().await).await;

    first.write_all(b"\r\n").await.unwrap();
    assert_eq!(status_line(&read_all(&mut first).await), "HTTP/1.1 403 Forbidden");
    assert_eq!(proxy.decision().port, 1, "only the first connection was decided");
    drop(first);

    // The slot frees once the first connection is done; until then the
    // proxy may still be closing on us (a reset, since our request is unread).
    let mut served = false;
    for _ in 0..50 {
        let mut client = proxy.connect().await;
        let mut answer = Vec::new();
        if client.write_all(b"CONNECT 127.0.0.1:2 HTTP/1.1\r\n\r\n").await.is_ok()
            && timeout(WAIT, client.read_to_end(&mut answer)).await.is_ok_and(|r| r.is_ok())
            && !answer.is_empty()
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a slot never freed");
    assert_eq!(proxy.decision().port, 2);
    proxy.stop().await;
}

#[tokio::test]
async fn one_source_cannot_take_every_connection() {
    let limits = ProxyLimits { max_connections: 100, max_per_source: 1, ..ProxyLimits::default() };
    let other_ip = Ipv4Addr::new(127, 0, 0, 2);
    let proxy = Proxy::start_for(vec![LOCAL, IpAddr::V4(other_ip)], Some(vec![]), limits).await;
    let mut first = proxy.connect().await;
    first.write_all(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n").await.unwrap();

    // A second connection from the same address is closed unanswered...
    assert_closed_unanswered(proxy.connect().await).await;

    // ...while another source is served.
    let mut other = proxy.connect_from(other_ip).await;
    other.write_all(b"CONNECT 127.0.0.1:3 HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(status_line(&read_all(&mut other).await), "HTTP/1.1 403 Forbidden");
    assert_eq!(proxy.decision().port, 3);

    first.write_all(b"\r\n").await.unwrap();
    assert_eq!(status_line(&read_all(&mut first).await), "HTTP/1.1 403 Forbidden");
    assert_eq!(proxy.decision().port, 1);
    proxy.stop().await;
}

#[tokio::test]
async fn shutdown_closes_open_tunnels() {
    let echo = echo_server().await;
    let proxy = Proxy::allowing(vec![Destination::new("127.0.0.1", echo)]).await;
    let mut client = proxy.connect().await;
    client.write_all(format!("CONNECT 127.0.0.1:{echo} HTTP/1.1\r\n\r\nping").as_bytes()).await.unwrap();
    assert_eq!(read_head(&mut client).await, "HTTP/1.1 200 Connection Established\r\n\r\n");
    assert_eq!(read_exact(&mut client, 4).await, b"ping");

    proxy.stop().await;
    let mut rest = Vec::new();
    let end = timeout(WAIT, client.read_to_end(&mut rest)).await.expect("tunnel closed on shutdown");
    assert!(end.is_err() || rest.is_empty());
}

#[test]
fn plan_matches_canonical_hosts() {
    let list = vec![
        Destination::new("Example.COM.", 443),
        Destination::new("[::1]", 8443),
        Destination::new("2001:db8::7", 443),
        Destination::new("127.0.0.1", 5432),
        Destination::new("not a host", 80),
    ];
    let host = |s: &str| Host::parse(s).expect("host");
    let sock = |s: &str| Plan::Literal(s.parse().expect("socket address"));

    assert_eq!(plan(&host("example.com"), 443, &list), Ok(Plan::Resolve("example.com".into())));
    assert_eq!(plan(&host("EXAMPLE.com."), 443, &list), Ok(Plan::Resolve("example.com".into())));
    // A listed IP literal is connected to as is, even loopback or IPv6.
    assert_eq!(plan(&host("[::1]"), 8443, &list), Ok(sock("[::1]:8443")));
    assert_eq!(plan(&host("[0:0::1]"), 8443, &list), Ok(sock("[::1]:8443")));
    assert_eq!(plan(&host("[2001:DB8::7]"), 443, &list), Ok(sock("[2001:db8::7]:443")));
    assert_eq!(plan(&host("127.0.0.1"), 5432, &list), Ok(sock("127.0.0.1:5432")));

    let denied = |h: &str, port| plan(&host(h), port, &list).expect_err(h);
    assert_eq!(denied("example.com", 80), "example.com:80 is not in the allowlist");
    assert_eq!(denied("www.example.com", 443), "www.example.com:443 is not in the allowlist");
    assert_eq!(denied("com", 443), "com:443 is not in the allowlist");
    assert_eq!(denied("[::1]", 443), "[::1]:443 is not in the allowlist");
    assert_eq!(denied("localhost", 5432), "localhost:5432 is not in the allowlist");
    assert_eq!(denied("127.0.0.2", 5432), "127.0.0.2:5432 is not in the allowlist");
}

#[test]
fn only_public_resolved_addresses_are_acceptable() {
    let addrs = |list: &[&str]| list.iter().map(|s| s.parse::<SocketAddr>().expect("addr")).collect::<Vec<_>>();

    let mixed = addrs(&["10.0.0.8:443", "93.184.216.34:443", "[2606:2800::1]:443", "93.184.216.34:443", "1.1.1.1:443"]);
    assert_eq!(acceptable("example.com", mixed), Ok(addrs(&["93.184.216.34:443", "1.1.1.1:443"])));

    let rebound = addrs(&["169.254.169.254:80", "127.0.0.1:80", "[::1]:80", "127.0.0.1:80"]);
    assert_eq!(
        acceptable("evil.example", rebound),
        Err("evil.example resolves only to refused addresses: \
             169.254.169.254 (link-local (169.254.0.0/16)), 127.0.0.1 (loopback), ::1 (IPv6)"
            .into())
    );
    assert_eq!(acceptable("empty.example", []), Err("empty.example resolves to no address".into()));
}

/// Relays from 127.0.0.0/8 (every test client), one relay token known.
async fn behind_relays(allowlist: Vec<Destination>, limits: ProxyLimits) -> Proxy {
    let relays = Relays::new(vec!["127.0.0.0/8".parse().unwrap()]);
    Proxy::start_with(vec![], Some(allowlist), limits, relays, &["t0ken"]).await
}

#[tokio::test]
async fn a_relay_with_a_known_token_is_served_as_its_sandbox() {
    let echo = echo_server().await;
    let proxy = behind_relays(vec![Destination::new("127.0.0.1", echo)], ProxyLimits::default()).await;
    let mut client = proxy.connect().await;
    // The handshake and the head in one write: nothing of the head is lost.
    client
        .write_all(format!("SANDPIT-RELAY t0ken\nCONNECT 127.0.0.1:{echo} HTTP/1.1\r\n\r\nearly").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_head(&mut client).await, "HTTP/1.1 200 Connection Established\r\n\r\n");
    assert_eq!(read_exact(&mut client, 5).await, b"early");
    let reason = format!("127.0.0.1:{echo}");
    assert_eq!(proxy.decision(), expected(Some("relay-1"), &client, "CONNECT", "127.0.0.1", echo, true, &reason, 200));
    drop(client);

    // Its allowlist is applied as to any sandbox's.
    let other = closed_port().await;
    let answer =
        proxy.exchange(format!("SANDPIT-RELAY t0ken\nCONNECT 127.0.0.1:{other} HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert_eq!(status_line(&answer), "HTTP/1.1 403 Forbidden");
    assert_eq!(proxy.decision().sandbox.as_deref(), Some("relay-1"));
    assert_eq!(proxy.strangers(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn a_relay_handshake_that_names_no_sandbox_is_closed_unanswered_and_unaudited() {
    let echo = echo_server().await;
    let proxy = behind_relays(vec![Destination::new("127.0.0.1", echo)], ProxyLimits::default()).await;
    let head = format!("CONNECT 127.0.0.1:{echo} HTTP/1.1\r\n\r\n");
    let long = format!("SANDPIT-RELAY {}\n", "t".repeat(RELAY_LINE_MAX));
    for first in
        ["SANDPIT-RELAY wrong\n", "SANDPIT-RELAY \n", "SANDPIT-RELAY t0ken \n", "sandpit-relay t0ken\n", "", &long]
    {
        let mut client = proxy.connect().await;
        let _ = client.write_all(format!("{first}{head}").as_bytes()).await;
        assert_closed_unanswered(client).await;
    }
    assert_eq!(proxy.decisions(), vec![], "no sandbox, no decision");
    assert_eq!(proxy.strangers(), 6);
    assert_eq!(proxy.dials(), 0);
    proxy.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_relay_that_says_nothing_is_closed_after_the_handshake_time() {
    let proxy = behind_relays(vec![], ProxyLimits::default()).await;
    let mut client = proxy.connect().await;
    client.write_all(b"SANDPIT-RELAY t0k").await.unwrap();
    let mut buf = Vec::new();
    // Paused time: the proxy's handshake timer fires as soon as every task waits.
    let closed = timeout(RELAY_HANDSHAKE + Duration::from_secs(1), client.read_to_end(&mut buf)).await;
    assert!(closed.is_ok_and(|r| r.is_err() || buf.is_empty()), "closed unanswered: {buf:?}");
    assert_eq!(proxy.strangers(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn relay_handshakes_are_not_read_from_sources_outside_the_relay_sources() {
    let echo = echo_server().await;
    let relays = Relays::new(vec!["127.0.0.2/32".parse().unwrap()]);
    let allow = vec![Destination::new("127.0.0.1", echo)];
    let proxy = Proxy::start_with(vec![], Some(allow), ProxyLimits::default(), relays, &["t0ken"]).await;
    let request = format!("SANDPIT-RELAY t0ken\nCONNECT 127.0.0.1:{echo} HTTP/1.1\r\n\r\n");
    let mut outside = proxy.connect().await;
    let _ = outside.write_all(request.as_bytes()).await;
    assert_closed_unanswered(outside).await;
    let mut inside = proxy.connect_from(Ipv4Addr::new(127, 0, 0, 2)).await;
    inside.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_head(&mut inside).await, "HTTP/1.1 200 Connection Established\r\n\r\n");
    assert_eq!(proxy.decision().sandbox.as_deref(), Some("relay-1"));
    assert_eq!(proxy.strangers(), 1);
    proxy.stop().await;
}
