//! `relay PORT PROXY FROM`: an allowlist sandbox's way to the egress proxy
//! on a swarm, where the proxy cannot know the sandbox by its address.
//!
//! It runs as a service of its own on the sandbox's overlay (which only the
//! sandbox and it are on) and on the swarm's egress network. It accepts
//! connections on `PORT` from addresses in `FROM` (the overlay's subnet)
//! and nothing else, and for each connects to `PROXY`, sends
//! `SANDPIT-RELAY <token>\n` (the token from [`TOKEN_VAR`], which only the
//! relay's service holds) and then passes bytes both ways untouched. The
//! proxy knows the sandbox by the token and applies its allowlist as for
//! any other allowlist sandbox; the relay decides nothing.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The environment variable that holds the relay's token.
pub const TOKEN_VAR: &str = "SANDPIT_RELAY_TOKEN";

/// Connections relayed at once; more are closed (the proxy allows 64 per
/// sandbox anyway).
const MAX_CONNECTIONS: usize = 128;

/// An IPv4 network, `A.B.C.D/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    base: u32,
    mask: u32,
}

impl Net {
    pub fn parse(s: &str) -> Option<Net> {
        let (addr, prefix) = s.split_once('/')?;
        let addr: Ipv4Addr = addr.parse().ok()?;
        let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 32)?;
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        Some(Net { base: u32::from(addr) & mask, mask })
    }

    pub fn contains(&self, addr: SocketAddr) -> bool {
        match addr {
            SocketAddr::V4(a) => u32::from(*a.ip()) & self.mask == self.base,
            SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some_and(|ip| u32::from(ip) & self.mask == self.base),
        }
    }
}

/// Serves until it fails to listen; never returns otherwise.
pub fn relay(port: u16, proxy: &str, from: Net) -> io::Result<()> {
    let token = std::env::var(TOKEN_VAR).map_err(|_| io::Error::other(format!("relay: {TOKEN_VAR} is not set")))?;
    if token.is_empty() || token.contains(['\n', '\r', ' ']) {
        return Err(io::Error::other(format!("relay: {TOKEN_VAR} must be one word")));
    }
    let proxy: SocketAddr = proxy
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("relay: PROXY '{proxy}' is no address")))?;
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
    let handshake: Arc<[u8]> = format!("SANDPIT-RELAY {token}\n").into_bytes().into();
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (client, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("sandpit-helper relay: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if !from.contains(peer) {
            continue;
        }
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let (handshake, open) = (handshake.clone(), open.clone());
        std::thread::spawn(move || {
            if let Err(e) = pass(client, proxy, &handshake) {
                eprintln!("sandpit-helper relay: {peer}: {e}");
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// One connection: the handshake, then bytes both ways until both sides
/// are done (half-closes passed on). If the proxy cannot be reached the
/// client gets a 502, as from the proxy itself.
fn pass(mut client: TcpStream, proxy: SocketAddr, handshake: &[u8]) -> io::Result<()> {
    let mut upstream = match TcpStream::connect_timeout(&proxy, Duration::from_secs(10)) {
        Ok(s) => s,
        Err(e) => {
            let body = format!("the egress proxy at {proxy} cannot be reached: {e}\n");
            let _ = write!(
                client,
                "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            return Err(e);
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    upstream.write_all(handshake)?;
    let (mut c2, mut u2) = (client.try_clone()?, upstream.try_clone()?);
    let up = std::thread::spawn(move || copy_then_close(&mut c2, &mut u2));
    let down = copy_then_close(&mut upstream, &mut client);
    let up = up.join().unwrap_or(Ok(()));
    down.and(up)
}

/// Copies until `from` ends, then closes `to`'s writing side.
fn copy_then_close(from: &mut TcpStream, to: &mut TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    let result = loop {
        match from.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(e) = to.write_all(&buf[..n]) {
                    break Err(e);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    let _ = to.shutdown(Shutdown::Write);
    if result.is_err() {
        let _ = from.shutdown(Shutdown::Both);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_holds_its_own_addresses_only() {
        let net = Net::parse("10.252.3.0/24").unwrap();
        assert!(net.contains("10.252.3.7:40000".parse().unwrap()));
        assert!(net.contains("[::ffff:10.252.3.7]:1".parse().unwrap()));
        assert!(!net.contains("10.252.4.7:40000".parse().unwrap()));
        assert!(!net.contains("[::1]:1".parse().unwrap()));
        assert!(Net::parse("0.0.0.0/0").unwrap().contains("192.0.2.1:1".parse().unwrap()));
        for bad in ["10.252.3.0", "10.252.3.0/33", "x/24", "10.252.3/24"] {
            assert_eq!(Net::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_relayed_connection_starts_with_the_handshake_and_carries_both_ways() {
        let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = proxy.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(b"answer").unwrap();
            got
        });
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let front_addr = front.local_addr().unwrap();
        let relay = std::thread::spawn(move || {
            let (c, _) = front.accept().unwrap();
            pass(c, proxy_addr, b"SANDPIT-RELAY t0k\n")
        });
        let mut client = TcpStream::connect(front_addr).unwrap();
        client.write_all(b"CONNECT x:1 HTTP/1.1\r\n\r\n").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "answer");
        assert_eq!(server.join().unwrap(), b"SANDPIT-RELAY t0k\nCONNECT x:1 HTTP/1.1\r\n\r\n");
        relay.join().unwrap().unwrap();
    }

    #[test]
    fn an_unreachable_proxy_answers_502() {
        // A port nothing listens on: bound, then closed.
        let gone = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let front_addr = front.local_addr().unwrap();
        let relay = std::thread::spawn(move || {
            let (c, _) = front.accept().unwrap();
            pass(c, gone, b"SANDPIT-RELAY t\n")
        });
        let mut client = TcpStream::connect(front_addr).unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
        assert!(relay.join().unwrap().is_err());
    }
}
