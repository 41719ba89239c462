//! Host firewall rules that keep sandboxes off the host and off private
//! networks.
//!
//! - A container on a bridge network, even an internal one, can reach every
//!   host service through its gateway address; Docker's own rules do not stop
//!   that (they filter FORWARD, not INPUT). Each sandbox subnet gets one INPUT
//!   rule jumping to this daemon's chain `SANDPIT-<id>`, which accepts only
//!   the egress proxy port and rejects the rest.
//! - Traffic a sandbox sends through the host (open mode) must not reach
//!   private, carrier-grade NAT or link-local addresses: other containers,
//!   the LAN, cloud metadata. Docker's inter-network isolation rules are
//!   rewritten whenever networks come and go, so the daemon does not rely on
//!   them: each subnet also gets a DOCKER-USER rule into `SANDPITF-<id>`,
//!   which lets DNS through to the host's resolvers and rejects those ranges.
//!
//! Rules are added with the network and removed with it; the chains are
//! removed when no rule uses them. Every command is idempotent. Reconcile
//! puts back rules and chains that someone else removed ([`Firewall::missing`]).

use tokio::process::Command;

use crate::{Error, Result};

/// Destinations a sandbox must never reach through the host.
const PRIVATE: [&str; 5] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"];

pub struct Firewall {
    chain: String,
    forward: String,
    egress_port: u16,
    /// Serialises rule changes: iptables is not safe to run concurrently.
    lock: tokio::sync::Mutex<()>,
}

/// `op` followed by a rule's words.
fn with(op: &str, rule: &[String]) -> Vec<String> {
    std::iter::once(op.to_string()).chain(rule.iter().cloned()).collect()
}

/// IPv4 nameservers of the host (from /etc/resolv.conf), loopback aside.
fn nameservers() -> Vec<String> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| !ip.is_loopback()))
        .map(String::from)
        .collect()
}

async fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<std::process::Output> {
    Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .await
        .map_err(|e| Error::Internal(format!("cannot run iptables (needed to isolate sandbox networks): {e}")))
}

/// Whether the command succeeded (for checks like `-C` and `-L`).
async fn iptables<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<bool> {
    Ok(run(args).await?.status.success())
}

async fn must<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<()> {
    let out = run(args).await?;
    if out.status.success() {
        Ok(())
    } else {
        let cmd: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().to_string()).collect();
        Err(Error::Internal(format!("iptables {}: {}", cmd.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

impl Firewall {
    /// `instance` names this daemon's chain; `egress_port` is the only host port sandboxes may reach.
    pub fn new(instance: &str, egress_port: u16) -> Firewall {
        let short: String = instance.chars().take(12).collect();
        Firewall {
            chain: format!("SANDPIT-{short}"),
            forward: format!("SANDPITF-{short}"),
            egress_port,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// Whether `chain` exists with rules in it (a firewall reload may leave it empty).
    async fn filled(chain: &str) -> Result<bool> {
        let out = run(&["-S", chain]).await?;
        Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("-A ")))
    }

    /// Creates a missing chain, or empties one whose rules are incomplete, for refilling.
    async fn fresh(chain: &str) -> Result<()> {
        if iptables(&["-n", "-L", chain]).await? {
            must(&["-F", chain]).await
        } else {
            must(&["-N", chain]).await
        }
    }

    async fn ensure_chains(&self) -> Result<()> {
        if !Self::filled(&self.forward).await? {
            Self::fresh(&self.forward).await?;
            // The host's resolvers, for sandboxes whose names Docker resolves through them.
            for ns in nameservers() {
                for proto in ["udp", "tcp"] {
                    must(&["-A", &self.forward, "-d", &ns, "-p", proto, "--dport", "53", "-j", "RETURN"]).await?;
                }
            }
            for range in PRIVATE {
                must(&["-A", &self.forward, "-d", range, "-j", "REJECT", "--reject-with", "icmp-net-unreachable"])
                    .await?;
            }
            must(&["-A", &self.forward, "-j", "RETURN"]).await?;
        }
        if Self::filled(&self.chain).await? {
            return Ok(());
        }
        Self::fresh(&self.chain).await?;
        let port = self.egress_port.to_string();
        must(&["-A", &self.chain, "-p", "tcp", "--dport", &port, "-j", "ACCEPT"]).await?;
        must(&["-A", &self.chain, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"]).await?;
        must(&["-A", &self.chain, "-j", "REJECT", "--reject-with", "icmp-port-unreachable"]).await
    }

    /// Keeps `subnet` (CIDR) off every host port but the egress proxy.
    pub async fn isolate(&self, subnet: &str) -> Result<()> {
        let _g = self.lock.lock().await;
        self.ensure_chains().await?;
        for rule in [self.input_rule(subnet), self.forward_rule(subnet).await?] {
            if !iptables(&with("-C", &rule)).await? {
                must(&with("-I", &rule)).await?;
            }
        }
        Ok(())
    }

    /// Those of `subnets` (CIDRs of live sandbox networks) whose rules are
    /// not all in place: someone else removed them, e.g. a firewall service
    /// reloading its own rules. [`Firewall::isolate`] puts them back.
    pub async fn missing(&self, subnets: &[String]) -> Result<Vec<String>> {
        if subnets.is_empty() {
            return Ok(Vec::new());
        }
        let _g = self.lock.lock().await;
        if !Self::filled(&self.chain).await? || !Self::filled(&self.forward).await? {
            return Ok(subnets.to_vec());
        }
        let rules = String::from_utf8_lossy(&run(&["-S"]).await?.stdout).to_string();
        let present = |rule: &[String]| rules.lines().any(|l| l.strip_prefix("-A ") == Some(rule.join(" ").as_str()));
        let mut missing = Vec::new();
        for subnet in subnets {
            if !present(&self.input_rule(subnet)) || !present(&self.forward_rule(subnet).await?) {
                missing.push(subnet.clone());
            }
        }
        Ok(missing)
    }

    /// Removes `subnet`'s rules, and the chains once nothing jumps to them.
    pub async fn release(&self, subnet: &str) -> Result<()> {
        let _g = self.lock.lock().await;
        for rule in [self.input_rule(subnet), self.forward_rule(subnet).await?] {
            while iptables(&with("-D", &rule)).await? {}
        }
        let rules = String::from_utf8_lossy(&run(&["-S"]).await?.stdout).to_string();
        for chain in [&self.chain, &self.forward] {
            let in_use = rules.lines().any(|l| l.ends_with(&format!("-j {chain}")));
            if !in_use && iptables(&["-n", "-L", chain]).await? {
                must(&["-F", chain]).await?;
                must(&["-X", chain]).await?;
            }
        }
        Ok(())
    }

    fn input_rule(&self, subnet: &str) -> Vec<String> {
        ["INPUT", "-s", subnet, "-j", &self.chain].map(String::from).to_vec()
    }

    /// Hooked from DOCKER-USER, which Docker evaluates before its own
    /// forwarding rules (FORWARD where an engine has no DOCKER-USER).
    async fn forward_rule(&self, subnet: &str) -> Result<Vec<String>> {
        let hook = if iptables(&["-n", "-L", "DOCKER-USER"]).await? { "DOCKER-USER" } else { "FORWARD" };
        Ok([hook, "-s", subnet, "-j", &self.forward].map(String::from).to_vec())
    }
}
