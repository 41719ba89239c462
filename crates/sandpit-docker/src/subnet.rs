//! Per-sandbox subnets, carved by the daemon from its own range, so hundreds
//! of sandbox networks do not exhaust Docker's default address pools (about
//! 31 networks). Ranges are ipnet's; the allocator hands out subnets by index.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use ipnet::Ipv4Net;

use sandpit_core::egress::addr::parse_cidr;

/// The largest subnet prefix that still holds network, gateway, sandbox and broadcast.
const MAX_PREFIX: u8 = 29;
/// The smallest: one sandbox never needs more than a /8 (and a /0 does not fit the arithmetic).
const MIN_PREFIX: u8 = 8;

/// A range split into equal subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    range: Ipv4Net,
    prefix: u8,
}

/// One sandbox's subnet: `.0` network, `.1` gateway (the host), `.2` the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subnet(Ipv4Net);

impl Subnet {
    pub fn cidr(&self) -> String {
        self.0.to_string()
    }
    pub fn gateway(&self) -> Ipv4Addr {
        self.host(0)
    }
    pub fn sandbox(&self) -> Ipv4Addr {
        self.host(1)
    }

    /// The `n`th host address. Every subnet is at most a /[`MAX_PREFIX`]
    /// ([`Pool::new`] and [`Subnet::parse`] see to it), so its first hosts exist.
    fn host(&self, n: usize) -> Ipv4Addr {
        self.0.hosts().nth(n).unwrap_or_else(|| unreachable!("{} holds fewer than {} hosts", self.0, n + 1))
    }

    /// `a.b.c.d/n` as Docker reports a network's subnet, host bits and all
    /// (such a subnet belongs to no pool). Smaller than a /[`MAX_PREFIX`]
    /// is none of ours either, and is not a `Subnet`.
    pub fn parse(cidr: &str) -> Option<Subnet> {
        parse_cidr(cidr).filter(|n| n.prefix_len() <= MAX_PREFIX).map(Subnet)
    }
}

impl Pool {
    pub fn new(cidr: &str, prefix: u8) -> Result<Pool, String> {
        let range =
            parse_cidr(cidr).ok_or_else(|| format!("subnet_pool '{cidr}' is not an IPv4 range like 10.213.0.0/16"))?;
        if range.prefix_len() > prefix || !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(format!(
                "subnet_prefix {prefix} must be between the pool's /{} (at least /{MIN_PREFIX}) and /{MAX_PREFIX}",
                range.prefix_len()
            ));
        }
        if range != range.trunc() {
            return Err(format!("subnet_pool '{cidr}' has host bits set"));
        }
        Ok(Pool { range, prefix })
    }

    pub fn len(&self) -> u32 {
        // At most 2^(29 - 0): MIN_PREFIX and MAX_PREFIX keep it in a u32.
        1 << (self.prefix - self.range.prefix_len())
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `i`th subnet, `i < len()`. By index rather than through
    /// [`Ipv4Net::subnets`], which only iterates: the allocator and
    /// [`Pool::index_of`] must not walk up to 2^21 subnets per call.
    pub fn subnet(&self, i: u32) -> Subnet {
        let network = u32::from(self.range.network()) + (i << self.host_bits());
        Subnet(Ipv4Net::new_assert(Ipv4Addr::from(network), self.prefix))
    }

    /// The index of a subnet of this pool: one of its subnets exactly, not
    /// a range overlapping one.
    pub fn index_of(&self, s: &Subnet) -> Option<u32> {
        let n = s.0;
        let ours = n.prefix_len() == self.prefix && n == n.trunc() && self.range.contains(&n);
        ours.then(|| (u32::from(n.network()) - u32::from(self.range.network())) >> self.host_bits())
    }

    /// Address bits below the subnet prefix: 3 to 24.
    fn host_bits(&self) -> u32 {
        32 - u32::from(self.prefix)
    }

    /// The whole pool as a CIDR.
    pub fn cidr(&self) -> String {
        self.range.to_string()
    }

    /// The whole pool as a range.
    pub fn range(&self) -> Ipv4Net {
        self.range
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
    use proptest::prelude::*;

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
        assert!(Pool::new("010.213.0.0/16", 28).is_err(), "octal to some parsers");
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

    proptest! {
        /// Subnets by index are ipnet's subnets of the pool, in its order;
        /// `index_of` gives each its index back and refuses its neighbours
        /// outside the pool; the gateway and the sandbox are `.1` and `.2`.
        #[test]
        fn subnets_by_index_are_the_pools_subnets(bits in any::<u32>(), pool_prefix in 0u8..=MAX_PREFIX, extra in 0u8..=6) {
            let range = Ipv4Net::new(Ipv4Addr::from(bits), pool_prefix).unwrap().trunc();
            let prefix = (pool_prefix + extra).clamp(MIN_PREFIX, MAX_PREFIX);
            let pool = Pool::new(&range.to_string(), prefix).unwrap();
            let all: Vec<Ipv4Net> = range.subnets(prefix).unwrap().collect();
            prop_assert_eq!(all.len() as u64, u64::from(pool.len()));
            for (i, net) in all.iter().enumerate() {
                let s = pool.subnet(i as u32);
                prop_assert_eq!(s.cidr(), net.to_string());
                prop_assert_eq!(pool.index_of(&s), Some(i as u32));
                let network = u32::from(net.network());
                prop_assert_eq!((s.gateway(), s.sandbox()), (Ipv4Addr::from(network + 1), Ipv4Addr::from(network + 2)));
            }
            let size = 1u32 << (32 - prefix);
            let before = u32::from(range.network()).checked_sub(size);
            let after = u32::from(range.broadcast()).checked_add(1);
            for outside in [before, after].into_iter().flatten() {
                let s = Subnet(Ipv4Net::new(Ipv4Addr::from(outside), prefix).unwrap());
                prop_assert_eq!(pool.index_of(&s), None, "{}", s.cidr());
            }
        }
    }
}
