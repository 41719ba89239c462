//! Reading and parsing the one request head a proxy connection starts with.
//!
//! The proxy understands exactly two requests: `CONNECT host:port` and a plain
//! HTTP request whose target is an absolute `http://` URI. Everything else is
//! refused rather than interpreted, because every leniency here is a place
//! where the proxy and the origin could read a request differently: lines end
//! in CRLF only, single spaces separate the request line, no folded or
//! whitespace-named header fields, no userinfo in the URI. The parser is a
//! pure function over bytes so that it can be tested and fuzzed on its own.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::addr::Host;

/// Why a request head was refused. Reasons are fixed strings so that nothing
/// a client sent is echoed back or written to the audit log unvalidated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("no complete request head within {0:?}")]
    Timeout(Duration),
    #[error("request head larger than {0} bytes")]
    TooLarge(usize),
    #[error("connection closed before a complete request head")]
    Closed,
    #[error("reading the request head failed")]
    Read,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

/// A request the proxy will consider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `CONNECT` or the HTTP method, as sent (methods are case-sensitive).
    pub method: String,
    pub host: Host,
    pub port: u16,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `CONNECT host:port`: after the 200, bytes are tunnelled untouched.
    Connect,
    /// Plain HTTP to forward to the origin.
    Forward {
        /// `HTTP/1.1` or `HTTP/1.0`, kept so the origin answers in kind.
        version: &'static str,
        /// The origin-form target: path and query, always starting with `/`.
        path: String,
        /// Header lines to pass on verbatim (without CRLF); hop-by-hop,
        /// `Proxy-*` and `Host` lines are already gone.
        headers: Vec<Vec<u8>>,
    },
}

impl Request {
    /// The head to send to the origin for a [`Kind::Forward`] request: origin
    /// form, `Host` rewritten to the authority that was checked against the
    /// allowlist (RFC 9112 §3.2.2 requires a proxy to replace it), and
    /// `Connection: close` so that the origin ends the exchange and the
    /// connection cannot be reused for a request the proxy never parsed.
    /// `None` for [`Kind::Connect`].
    pub fn origin_head(&self) -> Option<Vec<u8>> {
        let Kind::Forward { version, path, headers } = &self.kind else { return None };
        let host = if self.port == 80 {
            match &self.host {
                Host::Ip(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
                other => other.to_string(),
            }
        } else {
            self.host.authority(self.port)
        };
        let mut out = format!("{} {path} {version}\r\nHost: {host}\r\n", self.method).into_bytes();
        for line in headers {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        Some(out)
    }
}

/// Reads until the blank line that ends a request head, at most `max` bytes
/// of head. Returns the head without its final blank line, and whatever the
/// client sent after it (request body or the start of a tunnelled stream),
/// which the caller must pass on.
///
/// Not bounded in time: the caller wraps it in a timeout.
pub async fn read_head<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<(Vec<u8>, Vec<u8>), HeadError> {
    const END: &[u8] = b"\r\n\r\n";
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = r.read(&mut chunk).await.map_err(|_| HeadError::Read)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        // Search only the bytes that could complete a terminator.
        let from = buf.len().saturating_sub(END.len() - 1);
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Some(at) = find(buf.get(from..).unwrap_or_default(), END) {
            let end = from + at;
            if end + END.len() > max {
                return Err(HeadError::TooLarge(max));
            }
            let rest = buf.split_off(end + END.len());
            buf.truncate(end);
            return Ok((buf, rest));
        }
        if buf.len() >= max {
            return Err(HeadError::TooLarge(max));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses a request head as returned by [`read_head`] (no final blank line).
pub fn parse(head: &[u8]) -> Result<Request, HeadError> {
    use HeadError::Malformed;

    if head.contains(&b'\0') {
        return Err(Malformed("NUL byte in head"));
    }
    let mut lines = split_crlf(head);
    let request_line = lines.next().unwrap_or_default();
    let mut headers = Vec::new();
    for line in lines {
        headers.push(header_line(line)?);
    }

    let request_line = std::str::from_utf8(request_line).map_err(|_| Malformed("request line is not ASCII"))?;
    if !request_line.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(Malformed("control or non-ASCII byte in request line"));
    }
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed("request line is not `method target version`"));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(Malformed("bad method"));
    }
    let version = match version {
        "HTTP/1.1" => "HTTP/1.1",
        "HTTP/1.0" => "HTTP/1.0",
        _ => return Err(Malformed("only HTTP/1.1 and HTTP/1.0 are spoken")),
    };

    if method == "CONNECT" {
        let (host, port) = authority(target, None)?;
        return Ok(Request { method: method.to_string(), host, port, kind: Kind::Connect });
    }

    let Some((scheme, rest)) = target.split_once("://") else {
        return Err(Malformed("target must be an absolute http:// URI; this is a proxy"));
    };
    if scheme.eq_ignore_ascii_case("https") {
        return Err(Malformed("https:// targets must use CONNECT"));
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(Malformed("only http:// targets are proxied"));
    }
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (auth, path) = rest.split_at(split);
    if path.contains('#') {
        return Err(Malformed("fragment in target"));
    }
    let (host, port) = authority(auth, Some(80))?;
    let path = match path.as_bytes().first() {
        None => "/".to_string(),
        Some(b'?') => format!("/{path}"),
        Some(_) => path.to_string(),
    };
    let headers = headers.into_iter().filter(|(name, _)| !is_hop_by_hop(name)).map(|(_, line)| line.to_vec()).collect();
    Ok(Request { method: method.to_string(), host, port, kind: Kind::Forward { version, path, headers } })
}

/// Splits on CRLF. A bare CR or LF stays inside a line, where the line
/// checks refuse it.
fn split_crlf(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(head);
    std::iter::from_fn(move || {
        let current = rest?;
        match find(current, b"\r\n") {
            Some(at) => {
                let (line, tail) = current.split_at(at);
                rest = tail.get(2..);
                Some(line)
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// Checks one header line and returns its name with the line itself.
fn header_line(line: &[u8]) -> Result<(&str, &[u8]), HeadError> {
    use HeadError::Malformed;

    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(Malformed("folded header line"));
    }
    let colon = line.iter().position(|&b| b == b':').ok_or(Malformed("header line without a colon"))?;
    let (name, value) = line.split_at(colon);
    if name.is_empty() || !name.iter().copied().all(is_tchar) {
        return Err(Malformed("bad header name"));
    }
    // Field values: visible bytes, obs-text, space and tab; no other controls.
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(Malformed("control byte in header value"));
    }
    let name = std::str::from_utf8(name).map_err(|_| Malformed("bad header name"))?;
    Ok((name, line))
}

/// Headers that concern this hop only, or that the proxy rewrites itself.
fn is_hop_by_hop(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("proxy-") || matches!(lower.as_str(), "host" | "connection" | "keep-alive")
}

/// Parses `host:port`, or `host` alone when `default_port` is given.
fn authority(s: &str, default_port: Option<u16>) -> Result<(Host, u16), HeadError> {
    use HeadError::Malformed;

    if s.contains('@') {
        return Err(Malformed("userinfo in authority"));
    }
    // An IPv6 literal carries colons, so it must be bracketed; the port is
    // whatever follows the closing bracket.
    let (host, port) = if s.starts_with('[') {
        let close = s.find(']').ok_or(Malformed("unclosed IPv6 bracket"))?;
        let (host, after) = s.split_at(close + 1);
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or(Malformed("junk after IPv6 literal"))?)),
        }
    } else {
        match s.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    let host = Host::parse(host).ok_or(Malformed("bad host"))?;
    let port = match (port, default_port) {
        (Some(p), _) => parse_port(p)?,
        (None, Some(d)) => d,
        (None, None) => return Err(Malformed("CONNECT target needs a port")),
    };
    Ok((host, port))
}

fn parse_port(s: &str) -> Result<u16, HeadError> {
    // `u16::from_str` accepts a leading `+`; a port is digits only.
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeadError::Malformed("bad port"));
    }
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(HeadError::Malformed("bad port")),
        Ok(p) => Ok(p),
    }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn host(s: &str) -> Host {
        Host::parse(s).expect("host")
    }

    fn parse_str(s: &str) -> Result<Request, HeadError> {
        parse(s.as_bytes())
    }

    #[test]
    fn parses_connect() {
        let r = parse_str("CONNECT Example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nUser-Agent: t").expect("ok");
        assert_eq!(r, Request { method: "CONNECT".into(), host: host("example.com"), port: 443, kind: Kind::Connect });
        let r = parse_str("CONNECT [::1]:8443 HTTP/1.1").expect("ok");
        assert_eq!((r.host, r.port), (host("::1"), 8443));
        let r = parse_str("CONNECT 169.254.169.254:80 HTTP/1.0").expect("ok");
        assert_eq!((r.host, r.port), (host("169.254.169.254"), 80));
    }

    #[test]
    fn parses_absolute_http() {
        let cases = [
            ("GET http://Example.com/a/b?c=d HTTP/1.1", "example.com", 80, "/a/b?c=d"),
            ("GET http://example.com HTTP/1.1", "example.com", 80, "/"),
            ("GET http://example.com?x=1 HTTP/1.1", "example.com", 80, "/?x=1"),
            ("HEAD HTTP://example.com:8080/ HTTP/1.0", "example.com", 8080, "/"),
            ("POST http://[::1]:8080/p HTTP/1.1", "::1", 8080, "/p"),
            ("GET http://[2001:db8::1]/ HTTP/1.1", "2001:db8::1", 80, "/"),
            ("GET http://127.0.0.1:81/%2e%2e/x HTTP/1.1", "127.0.0.1", 81, "/%2e%2e/x"),
        ];
        for (head, h, port, p) in cases {
            let r = parse_str(head).unwrap_or_else(|e| panic!("{head}: {e}"));
            assert_eq!((&r.host, r.port), (&host(h), port), "{head}");
            let Kind::Forward { path, .. } = &r.kind else { panic!("{head}: not forward") };
            assert_eq!(path, p, "{head}");
        }
    }

    #[test]
    fn refuses_malformed_heads() {
        let cases = [
            "",
            "GARBAGE",
            "GET / HTTP/1.1",
            "GET * HTTP/1.1",
            "OPTIONS * HTTP/1.1",
            "GET https://example.com/ HTTP/1.1",
            "GET ftp://example.com/ HTTP/1.1",
            "GET http://user@evil.com/ HTTP/1.1",
            "GET http://allowed.com\\@evil.com/ HTTP/1.1",
            "GET http://allowed.com%40evil.com/ HTTP/1.1",
            "GET http:///x HTTP/1.1",
            "GET http://:80/ HTTP/1.1",
            "GET http://a.com:/ HTTP/1.1",
            "GET http://a.com:0/ HTTP/1.1",
            "GET http://a.com:65536/ HTTP/1.1",
            "GET http://a.com:+80/ HTTP/1.1",
            "GET http://a.com/#frag HTTP/1.1",
            "GET http://::1/ HTTP/1.1",
            "GET http://[::1/ HTTP/1.1",
            "GET  http://a.com/ HTTP/1.1",
            "GET http://a.com/ HTTP/1.1 ",
            "GET http://a.com/ HTTP/2.0",
            "GET http://a.com/ http/1.1",
            "GET http://a.com/ HTTP/1.1 extra",
            "G@T http://a.com/ HTTP/1.1",
            "GET http://a.com/\tx HTTP/1.1",
            "GET http://a.com/é HTTP/1.1",
            "CONNECT example.com HTTP/1.1",
            "CONNECT :443 HTTP/1.1",
            "CONNECT example.com:0 HTTP/1.1",
            "CONNECT example.com:443x HTTP/1.1",
            "CONNECT example.com:0443000 HTTP/1.1",
            "CONNECT [::1]443 HTTP/1.1",
            "CONNECT [::1] HTTP/1.1",
            "CONNECT ::1:443 HTTP/1.1",
            "CONNECT http://example.com:443 HTTP/1.1",
            "CONNECT user@example.com:443 HTTP/1.1",
            "CONNECT [fe80::1%25eth0]:443 HTTP/1.1",
            "connect example.com:443 HTTP/1.1",
            "GET http://a.com/ HTTP/1.1\r\n folded: yes",
            "GET http://a.com/ HTTP/1.1\r\nName : v",
            "GET http://a.com/ HTTP/1.1\r\nNo colon",
            "GET http://a.com/ HTTP/1.1\r\n: empty name",
            "GET http://a.com/ HTTP/1.1\r\nA: b\nInjected: c",
            "GET http://a.com/ HTTP/1.1\r\nA: b\rc",
            "GET http://a.com/ HTTP/1.1\r\nA: b\0",
            "GET http://a.com/ HTTP/1.1\r\n\r\nA: b",
            "GET http://a.com/ HTTP/1.1\nHost: a.com",
            "\r\nGET http://a.com/ HTTP/1.1",
        ];
        for head in cases {
            assert!(matches!(parse_str(head), Err(HeadError::Malformed(_))), "{head:?} was accepted");
        }
    }

    #[test]
    fn rewrites_forwarded_head() {
        let head = b"POST http://Example.com:8080/submit?x=1 HTTP/1.1\r\n\
                    Host: evil.example\r\n\
                    Proxy-Authorization: Basic c2VjcmV0\r\n\
                    proxy-connection: keep-alive\r\n\
                    Connection: keep-alive, X-Secret\r\n\
                    Keep-Alive: timeout=5\r\n\
                    X-Secret: s\r\n\
                    Content-Length: 4\r\n\
                    User-Agent: t/1 \xff";
        let r = parse(head).expect("ok");
        let out = r.origin_head().expect("forward");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST /submit?x=1 HTTP/1.1\r\n\
             Host: example.com:8080\r\n\
             X-Secret: s\r\n\
             Content-Length: 4\r\n\
             User-Agent: t/1 \u{fffd}\r\n\
             Connection: close\r\n\r\n"
        );

        let r = parse_str("GET http://[::1]/ HTTP/1.0").expect("ok");
        assert_eq!(r.origin_head().expect("forward"), b"GET / HTTP/1.0\r\nHost: [::1]\r\nConnection: close\r\n\r\n");
        assert_eq!(parse_str("CONNECT a.com:443 HTTP/1.1").expect("ok").origin_head(), None);
    }

    #[tokio::test]
    async fn reads_heads() {
        let (head, rest) = read_head(&mut &b"CONNECT a:1 HTTP/1.1\r\n\r\nearly"[..], 1024).await.expect("ok");
        assert_eq!((head.as_slice(), rest.as_slice()), (&b"CONNECT a:1 HTTP/1.1"[..], &b"early"[..]));

        // The terminator split across reads is still found.
        let mut split = piecewise(&[b"GET http://a/ HTTP/1.1\r", b"\n\r", b"\nbody"]);
        let (head, rest) = read_head(&mut split, 1024).await.expect("ok");
        assert_eq!((head.as_slice(), rest.as_slice()), (&b"GET http://a/ HTTP/1.1"[..], &b"body"[..]));

        assert_eq!(read_head(&mut &b"GET http://a/ HTTP/1.1\r\n"[..], 1024).await, Err(HeadError::Closed));
        assert_eq!(read_head(&mut &b""[..], 1024).await, Err(HeadError::Closed));
        let big = [b"GET http://a/ HTTP/1.1\r\nX: ".as_slice(), &[b'x'; 2000], b"\r\n\r\n"].concat();
        assert_eq!(read_head(&mut big.as_slice(), 1024).await, Err(HeadError::TooLarge(1024)));
        // A head of exactly the limit, terminator included, is accepted.
        let exact = [b"GET http://a/ HTTP/1.1\r\nX: ".as_slice(), &[b'x'; 100], b"\r\n\r\n"].concat();
        assert!(read_head(&mut exact.as_slice(), exact.len()).await.is_ok());
        assert_eq!(read_head(&mut exact.as_slice(), exact.len() - 1).await, Err(HeadError::TooLarge(exact.len() - 1)));
    }

    /// A reader that yields the given pieces one read at a time.
    fn piecewise(pieces: &[&[u8]]) -> impl AsyncRead + Unpin {
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        let (mut tx, rx) = tokio::io::duplex(64);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for p in pieces {
                let _ = tx.write_all(&p).await;
                let _ = tx.flush().await;
                tokio::task::yield_now().await;
            }
        });
        rx
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
        }

        /// Arbitrary header bytes after a valid request line: exercise the
        /// header checks, and whatever is accepted must come out clean.
        #[test]
        fn forwarded_heads_are_clean(
            prefix in prop::sample::select(vec![
                "GET http://a.com/ HTTP/1.1\r\n",
                "POST http://[::1]:81/x?y HTTP/1.0\r\n",
                "CONNECT a.com:443 HTTP/1.1\r\n",
            ]),
            tail in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n'), Just(b':'), Just(b'P')], 0..512),
        ) {
            let head = [prefix.as_bytes(), &tail].concat();
            if let Ok(Some(out)) = parse(&head).map(|r| r.origin_head()) {
                let body = out.strip_suffix(b"\r\n\r\n").expect("ends with a blank line");
                let lines: Vec<&[u8]> = split_crlf(body).collect();
                for line in &lines {
                    prop_assert!(!line.contains(&b'\r') && !line.contains(&b'\n'));
                    prop_assert!(!line.to_ascii_lowercase().starts_with(b"proxy-"));
                }
                let connection = lines.iter().filter(|l| l.to_ascii_lowercase().starts_with(b"connection:")).count();
                prop_assert_eq!(connection, 1);
                let hosts = lines.iter().filter(|l| l.to_ascii_lowercase().starts_with(b"host:")).count();
                prop_assert_eq!(hosts, 1);
            }
        }

        #[test]
        fn structured_targets_never_panic(
            method in "[A-Z]{1,7}",
            target in "[\\[\\]:/?#@%a-z0-9.]{0,40}",
        ) {
            let _ = parse(format!("{method} {target} HTTP/1.1").as_bytes());
            let _ = parse(format!("{method} http://{target} HTTP/1.1").as_bytes());
        }
    }
}
