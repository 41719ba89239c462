//! Host firewall rules that keep sandboxes off the host. A container on a
//! bridge network, even an internal one, can reach every host service through
//! its gateway address; Docker's own rules do not stop that (they filter
//! FORWARD, not INPUT). Each sandbox subnet gets one INPUT rule jumping to this
//! daemon's chain, which accepts only the egress proxy port and rejects the
//! rest. Rules are added with the network and removed with it; the chain is
//! removed when no rule uses it. Every command is idempotent.

use tokio::process::Command;

use crate::{Error, Result};

pub struct Firewall {
    chain: String,
    egress_port: u16,
    /// Serialises rule changes: iptables is not safe to run concurrently.
    lock: tokio::sync::Mutex<()>,
}

async fn run(args: &[&str]) -> Result<std::process::Output> {
    Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .await
        .map_err(|e| Error::Internal(format!("cannot run iptables (needed to isolate sandbox networks): {e}")))
}

/// Whether the command succeeded (for checks like `-C` and `-L`).
async fn iptables(args: &[&str]) -> Result<bool> {
    Ok(run(args).await?.status.success())
}

async fn must(args: &[&str]) -> Result<()> {
    let out = run(args).await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Internal(format!("iptables {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

impl Firewall {
    /// `instance` names this daemon's chain; `egress_port` is the only host port sandboxes may reach.
    pub fn new(instance: &str, egress_port: u16) -> Firewall {
        let short: String = instance.chars().take(12).collect();
        Firewall { chain: format!("SANDPIT-{short}"), egress_port, lock: tokio::sync::Mutex::new(()) }
    }

    pub fn chain(&self) -> &str {
        &self.chain
    }

    async fn ensure_chain(&self) -> Result<()> {
        if iptables(&["-n", "-L", &self.chain]).await? {
            return Ok(());
        }
        must(&["-N", &self.chain]).await?;
        let port = self.egress_port.to_string();
        must(&["-A", &self.chain, "-p", "tcp", "--dport", &port, "-j", "ACCEPT"]).await?;
        must(&["-A", &self.chain, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"]).await?;
        must(&["-A", &self.chain, "-j", "REJECT", "--reject-with", "icmp-port-unreachable"]).await
    }

    /// Keeps `subnet` (CIDR) off every host port but the egress proxy.
    pub async fn isolate(&self, subnet: &str) -> Result<()> {
        let _g = self.lock.lock().await;
        self.ensure_chain().await?;
        let rule = ["INPUT", "-s", subnet, "-j", &self.chain];
        if !iptables(&[&["-C"], &rule[..]].concat()).await? {
            must(&[&["-I"], &rule[..]].concat()).await?;
        }
        Ok(())
    }

    /// Removes `subnet`'s rule, and the chain once nothing jumps to it.
    pub async fn release(&self, subnet: &str) -> Result<()> {
        let _g = self.lock.lock().await;
        let rule = ["INPUT", "-s", subnet, "-j", &self.chain];
        while iptables(&[&["-D"], &rule[..]].concat()).await? {}
        let out = run(&["-S", "INPUT"]).await?;
        let in_use = String::from_utf8_lossy(&out.stdout).lines().any(|l| l.ends_with(&format!("-j {}", self.chain)));
        if !in_use && iptables(&["-n", "-L", &self.chain]).await? {
            must(&["-F", &self.chain]).await?;
            must(&["-X", &self.chain]).await?;
        }
        Ok(())
    }
}
