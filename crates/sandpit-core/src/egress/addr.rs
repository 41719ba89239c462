//! Host names and addresses: how a destination is written, compared and judged.
//!
//! The proxy compares what a sandbox asked for with what its profile lists,
//! then decides which resolved addresses it may connect to. Both steps must
//! agree on one spelling of a host, so every host (requested or listed) goes
//! through [`Host::parse`] before it is compared. The address judgement lives
//! here too so that the whole "where may this go" question is in one small,
//! table-tested file.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::Ipv4Net;

/// A destination host in its one comparable form: an IP literal, or a DNS
/// name in lower case without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

/// The longest DNS name (RFC 1035, without the trailing dot).
const MAX_NAME: usize = 253;

impl Host {
    /// Parses a host as written in a request (`example.com`, `192.0.2.1`,
    /// `[2001:db8::1]`) or in a profile, where a bare IPv6 literal (`::1`) is
    /// accepted too. Returns `None` for anything else.
    ///
    /// Names are held to letters, digits, `-`, `_` and dots between non-empty
    /// labels: no percent-encoding, userinfo or backslashes, so that no URL
    /// parser downstream can read the host differently from us.
    pub fn parse(s: &str) -> Option<Host> {
        if let Some(inner) = s.strip_prefix('[') {
            // Zone identifiers (`fe80::1%eth0`) do not parse and are refused:
            // they name an interface, not a destination.
            return inner.strip_suffix(']')?.parse::<Ipv6Addr>().ok().map(|ip| Host::Ip(IpAddr::V6(ip)));
        }
        if s.contains(':') {
            return s.parse::<Ipv6Addr>().ok().map(|ip| Host::Ip(IpAddr::V6(ip)));
        }
        let name = s.strip_suffix('.').unwrap_or(s);
        if name.is_empty() || name.len() > MAX_NAME {
            return None;
        }
        let valid_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
        if !name.chars().all(valid_char) || name.split('.').any(str::is_empty) {
            return None;
        }
        if let Ok(ip) = name.parse::<Ipv4Addr>() {
            return Some(Host::Ip(IpAddr::V4(ip)));
        }
        Some(Host::Name(name.to_ascii_lowercase()))
    }

    /// The host as it goes in a `Host:` header or an authority: IPv6 in brackets.
    pub fn authority(&self, port: u16) -> String {
        match self {
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            other => format!("{other}:{port}"),
        }
    }
}

/// Bare form, without brackets: this is what [`super::Decision::host`] carries.
impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => ip.fmt(f),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// An IPv4 range written `a.b.c.d/n` exactly as iptables-save and Docker
/// print it (and as [`Ipv4Net`] displays it), host bits allowed. Other
/// spellings are refused: ipnet reads `010.0.0.0/8` as decimal where
/// inet_aton would read octal, and std refuses leading zeros for that reason.
pub fn parse_cidr(s: &str) -> Option<Ipv4Net> {
    s.parse::<Ipv4Net>().ok().filter(|n| n.to_string() == s)
}

/// A range as [`parse_cidr`] reads it, without host bits set below the
/// prefix: iptables would silently clear them and the rule would not say
/// what was meant.
pub fn parse_net(s: &str) -> Option<Ipv4Net> {
    parse_cidr(s).filter(|n| *n == n.trunc())
}

const fn block(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)
}

/// Every IPv4 range that is not plainly public unicast, one IANA
/// special-purpose block each, most specific first so that the first match
/// names the narrowest block. The egress proxy refuses them as resolved
/// addresses ([`refusal`]) and the host firewall refuses to forward an
/// open-mode sandbox's traffic to them: one table, so the two cannot drift.
pub const NON_PUBLIC: [(Ipv4Net, &str); 16] = [
    (block(255, 255, 255, 255, 32), "broadcast"),
    (block(192, 0, 0, 0, 24), "IETF protocol assignments (192.0.0.0/24)"),
    (block(192, 0, 2, 0, 24), "documentation"),
    (block(192, 88, 99, 0, 24), "6to4 relay anycast (192.88.99.0/24)"),
    (block(198, 51, 100, 0, 24), "documentation"),
    (block(203, 0, 113, 0, 24), "documentation"),
    (block(169, 254, 0, 0, 16), "link-local (169.254.0.0/16)"),
    (block(192, 168, 0, 0, 16), "private (192.168.0.0/16)"),
    (block(198, 18, 0, 0, 15), "benchmarking (198.18.0.0/15)"),
    (block(172, 16, 0, 0, 12), "private (172.16.0.0/12)"),
    (block(100, 64, 0, 0, 10), "carrier-grade NAT (100.64.0.0/10)"),
    (block(0, 0, 0, 0, 8), "unspecified (0.0.0.0/8)"),
    (block(10, 0, 0, 0, 8), "private (10.0.0.0/8)"),
    (block(127, 0, 0, 0, 8), "loopback"),
    (block(224, 0, 0, 0, 4), "multicast"),
    (block(240, 0, 0, 0, 4), "reserved (240.0.0.0/4)"),
];

/// Why the proxy will not connect to `ip` on behalf of a name it resolved,
/// or `None` when the address is an ordinary public IPv4 address.
///
/// This is deliberately broader than "private": anything that is not plainly
/// a public unicast IPv4 host is refused, because a name an operator listed
/// should never be a way into the host, its networks or the cloud metadata
/// service. IPv6 is refused outright: the sandbox networks' firewalling is
/// IPv4 and IPv6 has too many ways to embed or reach local addresses.
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V6(_) => Some("IPv6"),
        IpAddr::V4(v4) => NON_PUBLIC.iter().find(|(range, _)| range.contains(&v4)).map(|(_, why)| *why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        let table: &[(&str, Option<&str>)] = &[
            // Ordinary public addresses, including the neighbours of refused blocks.
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("93.184.216.34", None),
            ("172.15.255.255", None),
            ("172.32.0.1", None),
            ("100.63.255.255", None),
            ("100.128.0.1", None),
            ("192.0.1.1", None),
            ("192.169.0.1", None),
            ("198.17.255.255", None),
            ("198.20.0.1", None),
            ("223.255.255.255", None),
            ("0.0.0.0", Some("unspecified (0.0.0.0/8)")),
            ("0.1.2.3", Some("unspecified (0.0.0.0/8)")),
            ("127.0.0.1", Some("loopback")),
            ("127.255.255.254", Some("loopback")),
            ("10.0.0.1", Some("private (10.0.0.0/8)")),
            ("172.16.0.1", Some("private (172.16.0.0/12)")),
            ("172.31.255.255", Some("private (172.16.0.0/12)")),
            ("192.168.1.1", Some("private (192.168.0.0/16)")),
            ("169.254.169.254", Some("link-local (169.254.0.0/16)")),
            ("169.254.0.1", Some("link-local (169.254.0.0/16)")),
            ("100.64.0.1", Some("carrier-grade NAT (100.64.0.0/10)")),
            ("100.127.255.255", Some("carrier-grade NAT (100.64.0.0/10)")),
            ("192.0.0.170", Some("IETF protocol assignments (192.0.0.0/24)")),
            ("192.0.2.1", Some("documentation")),
            ("198.51.100.7", Some("documentation")),
            ("203.0.113.9", Some("documentation")),
            ("198.18.0.1", Some("benchmarking (198.18.0.0/15)")),
            ("198.19.255.255", Some("benchmarking (198.18.0.0/15)")),
            ("224.0.0.1", Some("multicast")),
            ("239.255.255.250", Some("multicast")),
            ("240.0.0.1", Some("reserved (240.0.0.0/4)")),
            ("255.255.255.254", Some("reserved (240.0.0.0/4)")),
            ("255.255.255.255", Some("broadcast")),
            ("192.88.99.1", Some("6to4 relay anycast (192.88.99.0/24)")),
            ("192.88.98.255", None),
            ("192.88.100.0", None),
            ("::1", Some("IPv6")),
            ("::", Some("IPv6")),
            ("2606:4700:4700::1111", Some("IPv6")),
            ("::ffff:8.8.8.8", Some("IPv6")),
            ("::ffff:127.0.0.1", Some("IPv6")),
            ("fe80::1", Some("IPv6")),
            ("fd00:ec2::254", Some("IPv6")),
        ];
        for (addr, want) in table {
            let ip: IpAddr = addr.parse().expect("table address");
            assert_eq!(refusal(ip), *want, "{addr}");
        }
    }

    #[test]
    fn the_table_is_most_specific_first_and_its_blocks_are_disjoint_but_for_broadcast() {
        for pair in NON_PUBLIC.windows(2) {
            assert!(pair[0].0.prefix_len() >= pair[1].0.prefix_len(), "{:?} before {:?}", pair[0], pair[1]);
        }
        for (i, (a, _)) in NON_PUBLIC.iter().enumerate() {
            // One with host bits would be written into rules one way and read back from iptables-save another.
            assert_eq!(*a, a.trunc(), "{a} has host bits");
            for (b, _) in &NON_PUBLIC[i + 1..] {
                let nested = b.contains(a) && a.addr() == Ipv4Addr::BROADCAST;
                assert!(nested || !(a.contains(b) || b.contains(a)), "{a} and {b} overlap");
            }
        }
        let cidrs: Vec<String> = NON_PUBLIC.iter().map(|(n, _)| n.to_string()).collect();
        for want in [
            "0.0.0.0/8",
            "10.0.0.0/8",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "172.16.0.0/12",
            "192.0.0.0/24",
            "192.0.2.0/24",
            "192.88.99.0/24",
            "192.168.0.0/16",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "224.0.0.0/4",
            "240.0.0.0/4",
            "255.255.255.255/32",
        ] {
            assert!(cidrs.iter().any(|c| c == want), "{want} missing from {cidrs:?}");
        }
    }

    #[test]
    fn ranges_parse_and_compare() {
        let n = |s: &str| parse_net(s).unwrap_or_else(|| panic!("{s}"));
        assert_eq!(n("10.1.2.0/24").to_string(), "10.1.2.0/24");
        assert_eq!(n("192.0.2.7/32").to_string(), "192.0.2.7/32");
        assert_eq!(n("0.0.0.0/0").to_string(), "0.0.0.0/0");
        for bad in ["10.1.2.3/24", "10.1.2.0", "10.1.2.0/33", "10.1.2/24", "x/8", "::1/128", "10.1.2.0/24 "] {
            assert_eq!(parse_net(bad), None, "{bad}");
        }
        assert_eq!(parse_cidr("10.1.2.3/24").map(|n| n.to_string()).as_deref(), Some("10.1.2.3/24"));
        for odd in ["010.1.2.0/24", "10.1.2.0/024", "10.1.2.0/+24", "10.1.2.0/08"] {
            assert_eq!(parse_cidr(odd), None, "{odd}");
        }
        // Containment of a whole range, as the firewall's table-covers-the-pool check uses it.
        assert!(n("10.0.0.0/8").contains(&n("10.213.0.16/28")));
        assert!(n("10.0.0.0/8").contains(&n("10.0.0.0/8")));
        assert!(!n("10.213.0.16/28").contains(&n("10.0.0.0/8")));
        assert!(!n("10.0.0.0/8").contains(&n("11.0.0.0/28")));
        assert!(n("0.0.0.0/0").contains(&Ipv4Addr::BROADCAST));
    }

    #[test]
    fn parses_hosts() {
        let v4 = |s: &str| Some(Host::Ip(s.parse().expect("v4")));
        let v6 = |s: &str| Some(Host::Ip(s.parse().expect("v6")));
        let name = |s: &str| Some(Host::Name(s.to_string()));
        let table: &[(&str, Option<Host>)] = &[
            ("example.com", name("example.com")),
            ("Example.COM.", name("example.com")),
            ("a-b_c.example", name("a-b_c.example")),
            ("localhost", name("localhost")),
            // Not a dotted quad to Rust: stays a name, and its resolved
            // addresses are judged like any other name's.
            ("127.1", name("127.1")),
            ("2130706433", name("2130706433")),
            ("127.0.0.1", v4("127.0.0.1")),
            ("127.0.0.1.", v4("127.0.0.1")),
            ("169.254.169.254", v4("169.254.169.254")),
            ("[::1]", v6("::1")),
            ("::1", v6("::1")),
            ("[0:0:0:0:0:0:0:1]", v6("::1")),
            ("[2001:DB8::1]", v6("2001:db8::1")),
            ("", None),
            (".", None),
            ("..", None),
            (".example.com", None),
            ("a..b", None),
            ("exa mple.com", None),
            ("user@example.com", None),
            ("a.com\\@evil.com", None),
            ("ex%61mple.com", None),
            ("exämple.com", None),
            ("[::1", None),
            ("::1]", None),
            ("[127.0.0.1]", None),
            ("[fe80::1%25eth0]", None),
            ("[fe80::1%eth0]", None),
            ("example.com:443", None),
        ];
        for (s, want) in table {
            assert_eq!(&Host::parse(s), want, "{s:?}");
        }
        assert_eq!(Host::parse(&"a".repeat(253)), name(&"a".repeat(253)));
        assert_eq!(Host::parse(&"a".repeat(254)), None);
    }

    #[test]
    fn writes_authorities() {
        let host = |s: &str| Host::parse(s).expect("host");
        assert_eq!(host("Example.com").authority(443), "example.com:443");
        assert_eq!(host("192.0.2.1").authority(80), "192.0.2.1:80");
        assert_eq!(host("[::1]").authority(8080), "[::1]:8080");
        assert_eq!(host("[::1]").to_string(), "::1");
    }
}
