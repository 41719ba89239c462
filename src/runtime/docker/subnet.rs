//! Per-sandbox subnets, carved by the daemon from its own range, so hundreds
//! of sandbox networks do not exhaust Docker's default address pools (about
//! 31 networks). Pure arithmetic plus a small allocator.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

/// The largest subnet prefix that still holds network, gateway, sandbox and broadcast.
const MAX_PREFIX: u8 = 29;
/// The smallest: one sandbox never needs more than a /8 (and a /0 does not fit the arithmetic).
const MIN_PREFIX: u8 = 8;

/// A range split into equal subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    base: u32,
    pool_prefix: u8,
    prefix: u8,
}

/// One sandbox's subnet: `.0` network, `.1` gateway (the host), `.2` the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }
    pub fn sandbox(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 2)
    }

    pub fn parse(cidr: &str) -> Option<Subnet> {
        let (ip, prefix) = cidr.split_once('/')?;
        Some(Subnet { network: ip.parse().ok()?, prefix: prefix.parse().ok().filter(|p| *p <= 32)? })
    }
}

impl Pool {
    pub fn new(cidr: &str, prefix: u8) -> Result<Pool, String> {
        let s = Subnet::parse(cidr)
            .ok_or_else(|| format!("subnet_pool '{cidr}' is not an IPv4 range like 10.213.0.0/16"))?;
        if s.prefix > prefix || !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(format!(
                "subnet_prefix {prefix} must be between the pool's /{} (at least /{MIN_PREFIX}) and /{MAX_PREFIX}",
                s.prefix
            ));
        }
        let base = u32::from(s.network);
        let mask = if s.prefix == 0 { 0 } else { u32::MAX << (32 - s.prefix) };
        if base & !mask != 0 {
            return Err(format!("subnet_pool '{cidr}' has host bits set"));
        }
        Ok(Pool { base, pool_prefix: s.prefix, prefix })
    }

    pub fn len(&self) -> u32 {
        1u32.checked_shl(u32::from(self.prefix - self.pool_prefix)).unwrap_or(u32::MAX)
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn subnet(&self, i: u32) -> Subnet {
        let size = 1u32 << (32 - self.prefix);
        Subnet { network: Ipv4Addr::from(self.base + i * size), prefix: self.prefix }
    }

    /// The index of a subnet of this pool.
    pub fn index_of(&self, s: &Subnet) -> Option<u32> {
        let n = u32::from(s.network);
        let size = 1u32 << (32 - self.prefix);
        let i = n.checked_sub(self.base)? / size;
        (s.prefix == self.prefix && i < self.len() && self.subnet(i) == *s).then_some(i)
    }

    /// The whole pool as a CIDR.
    pub fn cidr(&self) -> String {
        self.range().to_string()
    }

    /// The whole pool as a range.
    pub fn range(&self) -> crate::egress::addr::Net4 {
        crate::egress::addr::Net4::new(Ipv4Addr::from(self.base), self.pool_prefix)
    }
}

/// Hands out free subnets of a pool, round-robin so a freed subnet is not
/// reused at once.
pub struct Allocator {
    pool: Pool,
    state: Mutex<State>,
}

struct State {
    used: BTreeSet<u32>,
    next: u32,
}

impl Allocator {
    pub fn new(pool: Pool) -> Allocator {
        Allocator { pool, state: Mutex::new(State { used: BTreeSet::new(), next: 0 }) }
    }

    pub fn pool(&self) -> Pool {
        self.pool
    }

    pub fn allocate(&self) -> Option<Subnet> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.pool.len();
        for k in 0..n {
            let i = (st.next + k) % n;
            if st.used.insert(i) {
                st.next = (i + 1) % n;
                return Some(self.pool.subnet(i));
            }
        }
        None
    }

    /// Marks a subnet taken (found on the engine, or refused as overlapping).
    pub fn mark_used(&self, s: &Subnet) {
        if let Some(i) = self.pool.index_of(s) {
            self.state.lock().unwrap_or_else(|p| p.into_inner()).used.insert(i);
        }
    }

    pub fn release(&self, s: &Subnet) {
        if let Some(i) = self.pool.index_of(s) {
            self.state.lock().unwrap_or_else(|p| p.into_inner()).used.remove(&i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_arithmetic() {
        let p = Pool::new("10.213.0.0/16", 28).unwrap();
        assert_eq!(p.len(), 4096);
        let s = p.subnet(1);
        assert_eq!(s.cidr(), "10.213.0.16/28");
        assert_eq!((s.gateway(), s.sandbox()), ("10.213.0.17".parse().unwrap(), "10.213.0.18".parse().unwrap()));
        assert_eq!(p.index_of(&s), Some(1));
        assert_eq!(p.index_of(&Subnet::parse("10.213.0.17/28").unwrap()), None, "not aligned");
        assert_eq!(p.index_of(&Subnet::parse("10.214.0.0/28").unwrap()), None, "outside");
        assert!(Pool::new("10.213.0.1/16", 28).is_err(), "host bits");
        assert!(Pool::new("10.213.0.0/16", 30).is_err(), "too small for a sandbox");
        assert!(Pool::new("10.213.0.0/24", 16).is_err(), "prefix above the pool's");
        assert!(Pool::new("bogus", 28).is_err());
        // Once accepted: carving a /0 out of 0.0.0.0/0 overflowed.
        assert!(Pool::new("0.0.0.0/0", 0).is_err(), "a whole address space per sandbox");
        assert_eq!(Pool::new("0.0.0.0/0", 8).unwrap().subnet(255).cidr(), "255.0.0.0/8");
    }

    #[test]
    fn allocator_round_robin_and_exhaustion() {
        let a = Allocator::new(Pool::new("10.0.0.0/27", 29).unwrap());
        let s: Vec<Subnet> = (0..4).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(
            s.iter().map(|s| s.cidr()).collect::<Vec<_>>(),
            ["10.0.0.0/29", "10.0.0.8/29", "10.0.0.16/29", "10.0.0.24/29"]
        );
        assert!(a.allocate().is_none(), "exhausted");
        a.release(&s[1]);
        assert_eq!(a.allocate(), Some(s[1]));
        a.release(&s[0]);
        a.mark_used(&s[0]);
        assert!(a.allocate().is_none());
    }
}
