//! What the egress proxy (in `sandpitd`) asks of the daemon for sandboxes in
//! `allowlist` network mode, what it reports, and how hosts and addresses
//! are parsed and judged ([`addr`]). The lifecycle manager implements
//! [`Policy`]; profiles check their allowlists with [`addr::Host`].

pub mod addr;

use std::net::{IpAddr, SocketAddr};

/// One allowlist entry of a sandbox's profile.
///
/// `host` is a DNS name (matched case-insensitively, trailing dot ignored) or
/// an IP literal; IPv6 may be written with or without brackets (`[::1]`, `::1`).
/// An entry whose host does not parse matches nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    pub host: String,
    pub port: u16,
}

impl Destination {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self { host: host.into(), port }
    }
}

/// What the proxy asks of the daemon.
#[async_trait::async_trait]
pub trait Policy: Send + Sync + 'static {
    /// The sandbox that owns this source address and its allowed destinations;
    /// None when the address belongs to no allowlist sandbox (connection closed unanswered).
    ///
    /// Called on the accept loop for every connection: it must be quick.
    fn lookup(&self, source: IpAddr) -> Option<(String, Vec<Destination>)>;
    /// The sandbox whose egress relay presents a token with this SHA-256
    /// (hex), and its allowed destinations; None when no allowlist sandbox
    /// has it. Asked only for connections from the configured relay
    /// sources (a swarm's nodes), after their relay handshake.
    fn lookup_relay(&self, _token_sha256: &str) -> Option<(String, Vec<Destination>)> {
        None
    }
    /// Called once for every decision about an allowlist sandbox's request,
    /// allowed or denied (the daemon audits it). Strangers get no decision.
    ///
    /// Called on the connection's task before the client is answered (the
    /// decision is on record before the sandbox learns of it).
    async fn decided(&self, decision: &Decision);
}

/// The outcome of one proxy connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The sandbox that asked. Always set: strangers are closed before any
    /// decision (kept an `Option` so the daemon's record keeping is unchanged).
    pub sandbox: Option<String>,
    /// The client's address (IPv4-mapped IPv6 shown as IPv4).
    pub source: SocketAddr,
    /// "CONNECT" or the HTTP method; empty when the head did not parse.
    pub method: String,
    /// The requested host in canonical form (lower case, no trailing dot, IPv6
    /// without brackets); empty when the head did not parse.
    pub host: String,
    /// The requested port; 0 when the head did not parse.
    pub port: u16,
    /// True only when the proxy connected to the destination and let the
    /// client through.
    pub allowed: bool,
    /// Why denied, or the address connected to when allowed (`192.0.2.1:443`).
    pub reason: String,
    /// What the proxy answered: 200 (tunnel established or request forwarded),
    /// 400 (bad request head), 403 (denied by policy) or 502 (allowed by the
    /// allowlist but resolving or connecting failed; `allowed` is then false).
    pub status: u16,
}
