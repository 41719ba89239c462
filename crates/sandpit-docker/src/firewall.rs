//! Host firewall rules that keep sandboxes off the host and off non-public
//! networks, and everyone but allowlist sandboxes off the egress proxy.
//!
//! Layout, `<id>` being the first 12 characters of the daemon's instance id:
//!
//! - `INPUT -s <subnet> -j SANDPIT-<id>` for each isolated or open sandbox
//!   network, `INPUT -s <subnet> -j SANDPITE-<id>` for each allowlist one. A
//!   container on a bridge, even an internal one, reaches every host service
//!   through its gateway address, and Docker's rules filter FORWARD, not
//!   INPUT. `SANDPIT-<id>` rejects everything; `SANDPITE-<id>` accepts the
//!   egress proxy's port and rejects the rest.
//! - `INPUT ! -s <pool> ! -i lo -p tcp --dport <egress port> -j SANDPIT-<id>`:
//!   nobody else (the LAN, other containers) reaches the proxy. It leaves the
//!   sandbox pool out so that it needs no particular place among the rules
//!   above; and loopback, because the host's own processes are inside its
//!   trust boundary already (they could reach the daemon's API too), the
//!   proxy closes them unread, and a local check of the port keeps working.
//! - `DOCKER-USER -s <subnet> -j SANDPITF-<id>` for each sandbox network
//!   (`FORWARD` on an engine without DOCKER-USER): what a sandbox sends
//!   through the host (open mode) may go to the host's resolvers for DNS,
//!   and never to a non-public range ([`NON_PUBLIC`], shared with the
//!   proxy), the sandbox pool or a network the host is directly on. Docker
//!   rewrites its own inter-network rules as networks come and go; these do
//!   not depend on them.
//!
//! The chains' contents depend on the host (port, pool, resolvers,
//! networks), never on which networks exist; the hooks depend on the
//! networks alone. So rules written for one network never weaken another's,
//! even one this process has not adopted yet (after a restart).
//!
//! Every change is one `iptables-restore --noflush` transaction, planned
//! from one `iptables-save -t filter` and the desired state ([`plan`]).
//! Checked with iptables 1.8.9 (nf_tables): with `--noflush` a declared user
//! chain that exists (`:NAME - [0:0]`) is emptied, which is how a chain is
//! rewritten whole; `-D`, `-I`, `-F` and `-X` lines are accepted; a failing
//! line or commit applies nothing. Repair compares each of our chains whole
//! and each hook's presence; other chains' rules are never touched but for
//! jumps into ours. Hooks of networks this process does not know (a previous
//! run's, until reconcile adopts them) are left in place until their network
//! is gone from the engine ([`Firewall::forget`]); a network's hooks go with
//! it, and the chains with the last hook.
//!
//! Repairs of networks this process knows need no sandbox lock: a network
//! is forgotten, under the same lock as every repair, before its teardown
//! goes on, so no repair can put back what a teardown took away.
//!
//! Changes are watched with `xtables-monitor --event` (nf_tables only) so a
//! repair need not wait for the next reconcile ([`Firewall::changes`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use ipnet::Ipv4Net;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::spec::{Isolation, IsolationRepair};
use sandpit_core::egress::addr::{parse_net, NON_PUBLIC};
use sandpit_core::runtime::BoxStream;
use sandpit_core::{Error, Result};

/// Chain-name prefixes: sandboxes to the host, allowlist sandboxes to the
/// host, sandboxes through the host. Each is followed by [`SHORT`]
/// characters of the instance id.
pub const PREFIXES: [&str; 3] = ["SANDPIT-", "SANDPITE-", "SANDPITF-"];
/// Instance id characters in a chain name (iptables allows 28 in all).
pub const SHORT: usize = 12;

const REJECT_TCP: &str = "-p tcp -j REJECT --reject-with tcp-reset";
const REJECT_REST: &str = "-j REJECT --reject-with icmp-port-unreachable";
const RESTORE_TRIES: usize = 3;
/// How long to wait for the end of a transaction the monitor reported part of.
const GENERATION_WAIT: Duration = Duration::from_millis(200);
/// Own restore runs remembered, so the watch does not answer our own changes.
const OWN_PIDS: usize = 32;

/// One instance's chain names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub input: String,
    pub egress: String,
    pub forward: String,
}

impl Names {
    pub fn new(instance: &str) -> Names {
        let short: String = instance.chars().take(SHORT).collect();
        Names {
            input: format!("{}{short}", PREFIXES[0]),
            egress: format!("{}{short}", PREFIXES[1]),
            forward: format!("{}{short}", PREFIXES[2]),
        }
    }

    pub fn all(&self) -> [&str; 3] {
        [&self.input, &self.egress, &self.forward]
    }

    fn owns(&self, chain: &str) -> bool {
        self.all().contains(&chain)
    }
}

/// What the chains' contents depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub egress_port: u16,
    /// Every sandbox subnet is in it.
    pub pool: Ipv4Net,
    /// The host's IPv4 resolvers: Docker sends open sandboxes' lookups there.
    pub nameservers: Vec<Ipv4Addr>,
    /// Networks the host is directly on.
    pub networks: Vec<Ipv4Net>,
    /// Whether the engine has a DOCKER-USER chain; else forwarding is hooked from FORWARD.
    pub docker_user: bool,
}

/// The rules one instance wants, written as `iptables-save` prints them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Each of our chains with its rules in order; none when nothing needs them.
    pub chains: BTreeMap<String, Vec<String>>,
    /// `(built-in chain, rule)` pairs that jump to ours.
    pub hooks: Vec<(String, String)>,
}

/// The rule set for `nets` (subnet, may reach the proxy); `present: false` is none at all.
pub fn desired(names: &Names, host: &Host, nets: &BTreeMap<Ipv4Net, bool>, present: bool) -> Desired {
    if !present {
        return Desired::default();
    }
    let port = host.egress_port;
    let mut forward = Vec::new();
    for ns in &host.nameservers {
        for proto in ["udp", "tcp"] {
            forward.push(format!("-d {ns}/32 -p {proto} -m {proto} --dport 53 -j RETURN"));
        }
    }
    forward.extend(rejected(host).iter().map(|n| format!("-d {n} -j REJECT --reject-with icmp-net-unreachable")));
    forward.push("-j RETURN".to_string());
    let chains = BTreeMap::from([
        (names.input.clone(), vec![REJECT_TCP.to_string(), REJECT_REST.to_string()]),
        (
            names.egress.clone(),
            vec![format!("-p tcp -m tcp --dport {port} -j ACCEPT"), REJECT_TCP.to_string(), REJECT_REST.to_string()],
        ),
        (names.forward.clone(), forward),
    ]);
    let mut hooks = Vec::new();
    for (net, egress) in nets {
        let to = if *egress { &names.egress } else { &names.input };
        hooks.push(("INPUT".to_string(), format!("-s {net} -j {to}")));
        hooks.push((forward_hook(host).to_string(), format!("-s {net} -j {}", names.forward)));
    }
    hooks.push((
        "INPUT".to_string(),
        format!("! -s {} ! -i lo -p tcp -m tcp --dport {port} -j {}", host.pool, names.input),
    ));
    Desired { chains, hooks }
}

fn forward_hook(host: &Host) -> &'static str {
    if host.docker_user {
        "DOCKER-USER"
    } else {
        "FORWARD"
    }
}

/// Where forwarded sandbox traffic may not go: the whole table, then the
/// pool and the host's networks where the table does not cover them (so that
/// sandbox bridges coming and going change nothing).
fn rejected(host: &Host) -> Vec<Ipv4Net> {
    let mut out: Vec<Ipv4Net> = NON_PUBLIC.iter().map(|(n, _)| *n).collect();
    for extra in std::iter::once(host.pool).chain(host.networks.iter().copied()) {
        if !out.iter().any(|n| n.contains(&extra)) {
            out.push(extra);
        }
    }
    out
}

/// The filter table: each chain with its rules (`-A` lines without `-A <chain>`), in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dump {
    pub chains: BTreeMap<String, Vec<String>>,
}

/// Parses `iptables-save` (its filter table) or `iptables -S` output.
pub fn parse(text: &str) -> Dump {
    let mut dump = Dump::default();
    let mut filter = true;
    for line in text.lines().map(str::trim_end) {
        if let Some(table) = line.strip_prefix('*') {
            filter = table == "filter";
        } else if let Some(rest) = line.strip_prefix("-A ").filter(|_| filter) {
            let (chain, rule) = rest.split_once(' ').unwrap_or((rest, ""));
            dump.chains.entry(chain.to_string()).or_default().push(rule.to_string());
        } else if let Some(rest) =
            line.strip_prefix(':').or(line.strip_prefix("-N ")).or(line.strip_prefix("-P ")).filter(|_| filter)
        {
            if let Some(chain) = rest.split_whitespace().next() {
                dump.chains.entry(chain.to_string()).or_default();
            }
        }
    }
    dump
}

/// The chain a rule jumps or goes to.
fn target(rule: &str) -> Option<&str> {
    let words: Vec<&str> = rule.split_whitespace().collect();
    words.windows(2).rev().find(|w| w[0] == "-j" || w[0] == "-g").map(|w| w[1])
}

/// The network of a hook shaped `-s <net> -j <chain>`.
fn hook_net(rule: &str) -> Option<Ipv4Net> {
    match rule.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["-s", net, "-j", _] => parse_net(net),
        _ => None,
    }
}

/// What one transaction changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The transaction's lines, between `*filter` and `COMMIT`; none when all is in place.
    pub lines: Vec<String>,
    /// Our chains as the plan leaves them (none: removed).
    pub chains: BTreeMap<String, Vec<String>>,
    /// Chains written whole, with what they held (`None`: missing).
    pub rewritten: Vec<(String, Option<Vec<String>>)>,
    /// Hooks put in: `(chain, rule)`.
    pub added: Vec<(String, String)>,
    /// Jumps into our chains taken out: `(chain, rule)`.
    pub removed: Vec<(String, String)>,
    /// Our chains deleted.
    pub deleted: Vec<String>,
}

impl Changes {
    /// Input for `iptables-restore --noflush`.
    pub fn restore_input(&self) -> String {
        format!("*filter\n{}\nCOMMIT\n", self.lines.join("\n"))
    }
}

/// What turns `dump` into the rule set of `nets`, with the hooks of `drop`
/// (networks going away) removed. Jumps into our chains from elsewhere that
/// are neither desired nor hooks of unknown networks are removed; rules of
/// other chains are never touched.
pub fn plan(names: &Names, host: &Host, nets: &BTreeMap<Ipv4Net, bool>, dump: &Dump, drop: &[Ipv4Net]) -> Changes {
    let refs: Vec<(&str, &str)> = dump
        .chains
        .iter()
        .filter(|(chain, _)| !names.owns(chain))
        .flat_map(|(chain, rules)| rules.iter().map(move |r| (chain.as_str(), r.as_str())))
        .filter(|(_, rule)| target(rule).is_some_and(|t| names.owns(t)))
        .collect();
    let unknown = |rule: &str| hook_net(rule).is_some_and(|n| !nets.contains_key(&n) && !drop.contains(&n));
    let present = !nets.is_empty() || refs.iter().any(|(_, r)| unknown(r));
    let want = desired(names, host, nets, present);

    let mut p = Changes::default();
    for (chain, rules) in &want.chains {
        let have = dump.chains.get(chain);
        if have != Some(rules) {
            p.lines.push(format!(":{chain} - [0:0]"));
            p.lines.extend(rules.iter().map(|r| format!("-A {chain} {r}")));
            p.rewritten.push((chain.clone(), have.cloned()));
        }
    }
    let mut kept = BTreeSet::new();
    for (chain, rule) in refs {
        let key = (chain.to_string(), rule.to_string());
        let keep = want.hooks.contains(&key) || unknown(rule);
        if !(keep && kept.insert(key.clone())) {
            p.lines.push(format!("-D {chain} {rule}"));
            p.removed.push(key);
        }
    }
    for hook in &want.hooks {
        if !kept.contains(hook) {
            p.lines.push(format!("-I {} 1 {}", hook.0, hook.1));
            p.added.push(hook.clone());
        }
    }
    if !present {
        let ours: Vec<String> =
            names.all().into_iter().filter(|c| dump.chains.contains_key(*c)).map(String::from).collect();
        p.lines.extend(ours.iter().map(|c| format!("-F {c}")));
        p.lines.extend(ours.iter().map(|c| format!("-X {c}")));
        p.deleted = ours;
    }
    p.chains = want.chains;
    p
}

/// Networks with hooks into our chains that are neither `known` nor `live`.
fn strays(names: &Names, dump: &Dump, known: &BTreeMap<Ipv4Net, bool>, live: &BTreeSet<Ipv4Net>) -> Vec<Ipv4Net> {
    let mut out = BTreeSet::new();
    for (_, rules) in dump.chains.iter().filter(|(c, _)| !names.owns(c)) {
        for rule in rules.iter().filter(|r| target(r).is_some_and(|t| names.owns(t))) {
            if let Some(net) = hook_net(rule).filter(|n| !known.contains_key(n) && !live.contains(n)) {
                out.insert(net);
            }
        }
    }
    out.into_iter().collect()
}

/// Whether `net`'s own hooks are exactly as they should be (its shared chains aside).
fn hooks_intact(names: &Names, host: &Host, dump: &Dump, net: Ipv4Net, egress: bool) -> bool {
    let want = desired(names, host, &BTreeMap::from([(net, egress)]), true).hooks;
    let mut found = Vec::new();
    for (chain, rules) in dump.chains.iter().filter(|(c, _)| !names.owns(c)) {
        for rule in rules {
            if hook_net(rule) == Some(net) && target(rule).is_some_and(|t| names.owns(t)) {
                found.push((chain.clone(), rule.clone()));
            }
        }
    }
    found.sort();
    let mut wanted: Vec<_> = want.into_iter().filter(|(_, r)| hook_net(r) == Some(net)).collect();
    wanted.sort();
    found == wanted
}

/// What a plan put back that someone else had removed or changed, as
/// opposed to what follows this process's own networks (new hooks, the
/// first network's chains, removals) or the host (resolvers, networks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Repairs {
    changes: Vec<String>,
    /// A shared chain or the proxy guard was out of place: every network was exposed.
    all: bool,
    nets: BTreeSet<Ipv4Net>,
    /// Chains rewritten only because the host changed.
    updated: Vec<String>,
}

fn repairs(
    names: &Names,
    plan: &Changes,
    known: &BTreeMap<Ipv4Net, bool>,
    applied: Option<&BTreeMap<String, Vec<String>>>,
    drop: &[Ipv4Net],
) -> Repairs {
    let mut r = Repairs::default();
    for (chain, had) in &plan.rewritten {
        match (had, applied) {
            // The first network's chains.
            (None, None) => {}
            (None, Some(_)) => {
                r.changes.push(format!("{chain} was missing; recreated"));
                r.all = true;
            }
            (Some(had), Some(applied)) if applied.get(chain) == Some(had) => r.updated.push(chain.clone()),
            (Some(had), _) => {
                r.changes.push(format!("{chain} rewritten ({})", differences(had, &plan.chains[chain])));
                r.all = true;
            }
        }
    }
    let chains_were_there = !plan.rewritten.iter().any(|(c, had)| *c == names.input && had.is_none());
    for (chain, rule) in &plan.added {
        let repaired = match hook_net(rule) {
            Some(net) => known.contains_key(&net),
            None => chains_were_there,
        };
        if repaired {
            r.changes.push(format!("{chain} rule put back: {rule}"));
            match hook_net(rule) {
                Some(net) => {
                    r.nets.insert(net);
                }
                None => r.all = true,
            }
        }
    }
    for (chain, rule) in &plan.removed {
        // The chains going, every jump into them goes.
        let expected =
            plan.chains.is_empty() || hook_net(rule).is_some_and(|n| drop.contains(&n) || !known.contains_key(&n));
        if !expected {
            r.changes.push(format!("{chain} rule removed: {rule}"));
        }
    }
    r
}

/// `missing: ...; unexpected: ...` between what a chain held and what it should.
fn differences(had: &[String], want: &[String]) -> String {
    fn count(rules: &[String]) -> BTreeMap<&str, i32> {
        let mut m = BTreeMap::new();
        for rule in rules {
            *m.entry(rule.as_str()).or_default() += 1;
        }
        m
    }
    let (had_n, want_n) = (count(had), count(want));
    let list = |from: &BTreeMap<&str, i32>, minus: &BTreeMap<&str, i32>| -> Vec<String> {
        from.iter()
            .filter(|(rule, n)| **n > minus.get(*rule).copied().unwrap_or(0))
            .map(|(rule, _)| rule.to_string())
            .collect()
    };
    let (missing, unexpected) = (list(&want_n, &had_n), list(&had_n, &want_n));
    let show = |rules: &[String]| {
        let mut s = rules.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        if rules.len() > 3 {
            s.push_str(&format!(" and {} more", rules.len() - 3));
        }
        s
    };
    match (missing.is_empty(), unexpected.is_empty()) {
        (true, true) => "rules out of order".to_string(),
        (false, true) => format!("missing: {}", show(&missing)),
        (true, false) => format!("unexpected: {}", show(&unexpected)),
        (false, false) => format!("missing: {}; unexpected: {}", show(&missing), show(&unexpected)),
    }
}

/// Networks the host is directly on, from `/proc/net/route`: routes with no
/// gateway, default and reject routes aside.
pub fn directly_connected(route: &str) -> Vec<Ipv4Net> {
    const UP: u32 = 0x1;
    const GATEWAY: u32 = 0x2;
    const REJECT: u32 = 0x200;
    // The kernel prints each address as the native-endian integer of its
    // network-order bytes.
    let addr = |hex: &str| u32::from_str_radix(hex, 16).ok().map(|n| Ipv4Addr::from(n.to_ne_bytes()));
    let mut out = BTreeSet::new();
    for line in route.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(iface), Some(dest), Some(gw), Some(flags), Some(mask)) =
            (f.first(), f.get(1).and_then(|h| addr(h)), f.get(2).and_then(|h| addr(h)), f.get(3), f.get(7))
        else {
            continue;
        };
        let (Ok(flags), Some(mask)) = (u32::from_str_radix(flags, 16), addr(mask)) else { continue };
        if *iface == "lo" || flags & UP == 0 || flags & (GATEWAY | REJECT) != 0 || !gw.is_unspecified() {
            continue;
        }
        // A mask that is not contiguous has no prefix and no rule to match it.
        if let Some(net) = Ipv4Net::with_netmask(dest, mask).ok().filter(|n| n.prefix_len() > 0) {
            out.insert(net.trunc());
        }
    }
    out.into_iter().collect()
}

/// IPv4 nameservers of a resolv.conf, loopback aside (a local stub is not reached through the host).
pub fn nameservers(conf: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for ip in conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|ip| !ip.is_loopback())
    {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// A line of `xtables-monitor --event`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Monitor {
    /// ` EVENT: -4 -t filter -D INPUT -s ... -j SANDPIT-...`: whether it names one of our chains.
    Event {
        ours: bool,
    },
    /// `NEWGEN: GENID=28 PID=13915 NAME=iptables`: the end of one transaction.
    Generation {
        pid: Option<u32>,
    },
    Other,
}

fn monitor_line(line: &str, names: &[String]) -> Monitor {
    let line = line.trim();
    if let Some(event) = line.strip_prefix("EVENT:") {
        let ours = event.contains("-t filter") && event.split_whitespace().any(|w| names.iter().any(|n| n == w));
        return Monitor::Event { ours };
    }
    if let Some(generation) = line.strip_prefix("NEWGEN:") {
        let pid = generation.split_whitespace().find_map(|w| w.strip_prefix("PID=")).and_then(|p| p.parse().ok());
        return Monitor::Generation { pid };
    }
    Monitor::Other
}

async fn save() -> Result<Dump> {
    let out =
        Command::new("iptables-save").args(["-t", "filter"]).output().await.map_err(|e| {
            Error::Internal(format!("cannot run iptables-save (needed to isolate sandbox networks): {e}"))
        })?;
    if !out.status.success() {
        return Err(Error::Internal(format!("iptables-save: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

/// Runs one `iptables-restore --noflush` transaction; `own` learns its PID.
async fn restore(input: &str, own: &Mutex<VecDeque<u32>>) -> Result<()> {
    let cannot = |e: std::io::Error| Error::Internal(format!("cannot run iptables-restore: {e}"));
    let mut child = Command::new("iptables-restore")
        .args(["--wait=5", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(cannot)?;
    if let Some(pid) = child.id() {
        let mut own = own.lock().unwrap_or_else(|p| p.into_inner());
        if own.len() >= OWN_PIDS {
            own.pop_front();
        }
        own.push_back(pid);
    }
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).await.map_err(cannot)?;
    }
    let out = child.wait_with_output().await.map_err(cannot)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Internal(format!("iptables-restore: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// Everything one daemon instance's rules need.
pub struct Firewall {
    names: Names,
    egress_port: u16,
    pool: Ipv4Net,
    /// Serialises transactions: each is read, planned and applied whole.
    state: tokio::sync::Mutex<State>,
    /// Changes waiting for the next transaction: whoever holds `state` next
    /// applies every one queued by then, in one transaction (group commit),
    /// so a burst of creates or teardowns rewrites the rules a few times
    /// rather than once per network.
    queue: Mutex<Vec<Queued>>,
    own: Arc<Mutex<VecDeque<u32>>>,
}

/// A change asked for, and where its outcome goes.
struct Queued {
    change: Change,
    done: tokio::sync::oneshot::Sender<std::result::Result<(), String>>,
}

#[derive(Clone)]
enum Change {
    /// Networks made or adopted, and whether each may reach the proxy.
    Add(Vec<(Ipv4Net, bool)>),
    /// A network going away: its hooks go with it.
    Drop(Ipv4Net),
}

#[derive(Default)]
struct State {
    /// Networks made or adopted by this process, and whether each may reach
    /// the proxy. Removing a network takes it out first, under this state's
    /// lock, so a repair from this set cannot undo a teardown.
    nets: BTreeMap<Ipv4Net, bool>,
    /// Our chains as last written or found whole: a chain that still holds
    /// this but should hold something else followed a change of the host.
    applied: Option<BTreeMap<String, Vec<String>>>,
    /// Repairs made in passing by a create or a removal, for the next check to report.
    unreported: IsolationRepair,
}

impl Firewall {
    /// `instance` names the chains; `egress_port` is the only host port
    /// allowlist sandboxes may reach; `pool` holds every sandbox subnet.
    pub fn new(instance: &str, egress_port: u16, pool: Ipv4Net) -> Firewall {
        Firewall {
            names: Names::new(instance),
            egress_port,
            pool,
            state: tokio::sync::Mutex::new(State::default()),
            queue: Mutex::new(Vec::new()),
            own: Arc::new(Mutex::new(VecDeque::new())),
        }
    }

    fn host(&self, dump: &Dump) -> Host {
        Host {
            egress_port: self.egress_port,
            pool: self.pool,
            nameservers: nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()),
            networks: directly_connected(&std::fs::read_to_string("/proc/net/route").unwrap_or_default()),
            docker_user: dump.chains.contains_key("DOCKER-USER"),
        }
    }

    /// Makes the host's rules those of `st.nets`, with `drop`'s hooks gone,
    /// in one transaction (retried on a fresh read if someone changed the
    /// rules in between). Returns the plan that was applied.
    async fn apply(&self, st: &mut State, drop: &[Ipv4Net], mut dump: Option<Dump>) -> Result<Changes> {
        let mut last = None;
        for _ in 0..RESTORE_TRIES {
            let now = match dump.take() {
                Some(d) => d,
                None => save().await?,
            };
            let plan = plan(&self.names, &self.host(&now), &st.nets, &now, drop);
            if !plan.lines.is_empty() {
                if let Err(e) = restore(&plan.restore_input(), &self.own).await {
                    tracing::debug!(error = %e, "firewall transaction failed; reading the rules again");
                    last = Some(e);
                    continue;
                }
            }
            st.applied = (!plan.chains.is_empty()).then(|| plan.chains.clone());
            return Ok(plan);
        }
        Err(last.unwrap_or_else(|| Error::Internal("firewall transaction failed".into())))
    }

    /// Reports what `plan` repaired beyond the change asked for.
    fn note(&self, st: &State, r: Repairs) -> IsolationRepair {
        if !r.updated.is_empty() {
            tracing::info!(chains = ?r.updated, "host firewall chains follow a change of the host's resolvers or networks");
        }
        let restored: BTreeSet<Ipv4Net> = if r.all { st.nets.keys().copied().collect() } else { r.nets };
        IsolationRepair {
            changes: r.changes,
            restored: restored.iter().map(Ipv4Net::to_string).collect(),
            unknown: Vec::new(),
        }
    }

    /// Puts `nets`' rules in place with the rest of the rule set, in one
    /// transaction (shared with the changes queued beside it). Anything else
    /// it had to put back is reported by the next [`Firewall::repair`].
    pub async fn isolate(&self, nets: &[Isolation]) -> Result<()> {
        let parsed = nets
            .iter()
            .map(|n| {
                parse_net(&n.subnet)
                    .map(|net| (net, n.egress))
                    .ok_or_else(|| Error::Internal(format!("not an IPv4 subnet: {}", n.subnet)))
            })
            .collect::<Result<Vec<_>>>()?;
        self.commit(Change::Add(parsed)).await
    }

    /// Removes `subnet`'s rules, and the chains when no network needs them.
    pub async fn release(&self, subnet: &str) -> Result<()> {
        let Some(net) = parse_net(subnet) else { return Ok(()) };
        self.commit(Change::Drop(net)).await
    }

    /// Queues `change` and returns once a transaction holding it is applied
    /// (or failed): the one this call makes, or one another call made with
    /// it while this one waited for the lock. Should that other call be
    /// dropped before it answered, the change is queued again: changes are
    /// to a desired state, so applying one twice is harmless.
    async fn commit(&self, change: Change) -> Result<()> {
        for _ in 0..RESTORE_TRIES {
            let (done, outcome) = tokio::sync::oneshot::channel();
            self.queue.lock().unwrap_or_else(|p| p.into_inner()).push(Queued { change: change.clone(), done });
            let mine = {
                let mut st = self.state.lock().await;
                let batch = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
                if batch.is_empty() {
                    None
                } else {
                    Some(self.apply_batch(&mut st, batch).await)
                }
            };
            // Ours went in the batch just applied, or in one applied (and
            // answered) by another call before it let go of the lock.
            match (outcome.await, mine) {
                (Ok(Ok(())), _) => return Ok(()),
                // Ours failed in our own transaction: its error as it was.
                (Ok(Err(_)), Some(Err(e))) => return Err(e),
                (Ok(Err(msg)), _) => return Err(Error::Internal(format!("host firewall: {msg}"))),
                (Err(_), _) => continue,
            }
        }
        Err(Error::Internal("host firewall: the change was dropped unapplied".into()))
    }

    /// Applies every queued change in one transaction and answers each.
    /// Returns the transaction's own error, if it failed.
    async fn apply_batch(&self, st: &mut State, batch: Vec<Queued>) -> Result<()> {
        let known = st.nets.clone();
        let applied = st.applied.clone();
        let mut drop: Vec<Ipv4Net> = Vec::new();
        for q in &batch {
            match &q.change {
                Change::Add(nets) => {
                    for (net, egress) in nets {
                        st.nets.insert(*net, *egress);
                        drop.retain(|d| d != net);
                    }
                }
                Change::Drop(net) => {
                    st.nets.remove(net);
                    if !drop.contains(net) {
                        drop.push(*net);
                    }
                }
            }
        }
        sandpit_core::metrics::global().firewall_transaction(batch.len());
        let result = self.apply(st, &drop, None).await.map(|plan| {
            let r = repairs(&self.names, &plan, &known, applied.as_ref(), &drop);
            let repaired = self.note(st, r);
            self.defer(st, &repaired);
        });
        let answer = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
        for q in batch {
            let _ = q.done.send(answer.clone());
        }
        result
    }

    /// Keeps repairs made in passing for the next check to report.
    fn defer(&self, st: &mut State, r: &IsolationRepair) {
        if r.changes.is_empty() {
            return;
        }
        tracing::warn!(changes = ?r.changes, "host firewall rules had been changed; put back");
        st.unreported.changes.extend(r.changes.iter().cloned());
        for net in &r.restored {
            if !st.unreported.restored.contains(net) {
                st.unreported.restored.push(net.clone());
            }
        }
    }

    /// Compares the host's rules, as a whole, with what the known networks
    /// need and puts back whatever is out of place. Of `live` (the networks
    /// of live sandboxes on record), those not known yet are adopted when
    /// their hooks are in place, and returned as `unknown` when not. Also
    /// returns the networks whose hooks are there but which are neither
    /// known nor live, for [`Firewall::forget`] once their network is gone.
    pub async fn repair(&self, live: &[Isolation]) -> Result<(IsolationRepair, Vec<Ipv4Net>)> {
        let mut st = self.state.lock().await;
        // Nothing networked, nothing to read: hosts with mode `none` alone need no iptables.
        if live.is_empty() && st.nets.is_empty() && st.unreported.changes.is_empty() {
            return Ok((IsolationRepair::default(), Vec::new()));
        }
        let dump = save().await?;
        let host = self.host(&dump);
        let mut unknown = Vec::new();
        for l in live {
            let Some(net) = parse_net(&l.subnet) else {
                tracing::warn!(subnet = %l.subnet, "a sandbox's subnet is not an IPv4 range; not firewalled");
                continue;
            };
            if st.nets.get(&net) == Some(&l.egress) {
                continue;
            }
            if hooks_intact(&self.names, &host, &dump, net, l.egress) {
                st.nets.insert(net, l.egress);
            } else {
                unknown.push(l.clone());
            }
        }
        let live_nets: BTreeSet<Ipv4Net> = live.iter().filter_map(|l| parse_net(&l.subnet)).collect();
        let strays = strays(&self.names, &dump, &st.nets, &live_nets);
        let known = st.nets.clone();
        let applied = st.applied.clone();
        let plan = self.apply(&mut st, &[], Some(dump)).await?;
        let r = repairs(&self.names, &plan, &known, applied.as_ref(), &[]);
        let mut out = std::mem::take(&mut st.unreported);
        let now = self.note(&st, r);
        out.changes.extend(now.changes);
        for net in now.restored {
            if !out.restored.contains(&net) {
                out.restored.push(net);
            }
        }
        out.unknown = unknown;
        Ok((out, strays))
    }

    /// Stops keeping `subnet`'s rules without touching them (another
    /// daemon on the same host tore its network down and removed them).
    /// Should its hooks still be there, they are strays from now on
    /// ([`Firewall::repair`]): removed once no network has the subnet.
    pub async fn disown(&self, subnet: &str) {
        if let Some(net) = parse_net(subnet) {
            self.state.lock().await.nets.remove(&net);
        }
    }

    /// Removes the hooks of `nets` that are still unknown: networks gone
    /// without their rules (removed behind the daemon's back), whose hooks
    /// would otherwise keep the chains, and fence whatever network takes
    /// the subnet next.
    pub async fn forget(&self, nets: &[Ipv4Net]) -> Result<()> {
        let mut st = self.state.lock().await;
        let drop: Vec<Ipv4Net> = nets.iter().copied().filter(|n| !st.nets.contains_key(n)).collect();
        if drop.is_empty() {
            return Ok(());
        }
        self.apply(&mut st, &drop, None).await?;
        tracing::info!(subnets = ?drop, "removed host rules of sandbox networks that no longer exist");
        Ok(())
    }

    /// Yields soon after someone else changes a rule in or into this
    /// instance's chains. Ends when that cannot be watched (no nf_tables,
    /// no `xtables-monitor` or `stdbuf`); callers fall back to polling.
    pub fn changes(&self) -> BoxStream<()> {
        let names: Vec<String> = self.names.all().into_iter().map(String::from).collect();
        let own = Arc::clone(&self.own);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if let Err(e) = watch(&names, &own, &tx).await {
                if SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::debug!(error = %e, "host firewall changes are not watched");
                } else {
                    tracing::info!(error = %e, "host firewall changes are not watched; reconcile repairs them on its interval");
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }
}

/// Follows `xtables-monitor --event` until `tx`'s receiver goes. Each
/// transaction that touched our chains, by a process other than our own
/// restores, sends one signal (coalesced while one is pending).
async fn watch(names: &[String], own: &Mutex<VecDeque<u32>>, tx: &tokio::sync::mpsc::Sender<()>) -> Result<()> {
    // Piped, the monitor's output is block-buffered (nothing arrives until
    // 4 KiB): stdbuf makes it line-buffered. It lives as long as its stdin,
    // which only this task holds: whether the task ends or the daemon is
    // killed, the shell then stops the monitor (it would otherwise live on
    // until its next write failed).
    let mut child = Command::new("sh")
        .args([
            "-c",
            "stdbuf -oL xtables-monitor --event -4 </dev/null & m=$!; exec >/dev/null; read -r _; kill $m; wait $m",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Internal(format!("cannot run xtables-monitor: {e}")))?;
    let stdout = child.stdout.take().ok_or_else(|| Error::Internal("xtables-monitor has no output".into()))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    tracing::debug!("watching host firewall changes with xtables-monitor");
    let mut pending = false;
    loop {
        let wait = if pending { GENERATION_WAIT } else { Duration::from_secs(3600) };
        let next = tokio::select! {
            () = tx.closed() => return Ok(()),
            next = tokio::time::timeout(wait, lines.next_line()) => next,
        };
        match next {
            // Part of a transaction and no end line: signal anyway.
            Err(_) => {
                if std::mem::take(&mut pending) {
                    let _ = tx.try_send(());
                }
            }
            Ok(Ok(Some(line))) => match monitor_line(&line, names) {
                Monitor::Event { ours } => pending |= ours,
                Monitor::Generation { pid } => {
                    let ours = pid.is_some_and(|p| own.lock().unwrap_or_else(|e| e.into_inner()).contains(&p));
                    if std::mem::take(&mut pending) && !ours {
                        let _ = tx.try_send(());
                    }
                }
                Monitor::Other => {}
            },
            Ok(Ok(None)) | Ok(Err(_)) => break,
        }
    }
    drop(child.stdin.take());
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = tokio::time::timeout(Duration::from_secs(1), stderr.read_to_string(&mut err)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
    Err(Error::Internal(format!("xtables-monitor ended: {}", err.trim())))
}

/// Chains and rules one instance has on this host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leftover {
    pub chains: usize,
    /// Rules in its chains and jumps into them.
    pub rules: usize,
}

/// Every instance's chains in `dump`, by the [`SHORT`] id in their names.
pub fn instances(dump: &Dump) -> BTreeMap<String, Leftover> {
    let mut out: BTreeMap<String, Leftover> = BTreeMap::new();
    let short_of = |chain: &str| PREFIXES.iter().find_map(|p| chain.strip_prefix(p)).map(String::from);
    for (chain, rules) in &dump.chains {
        if let Some(short) = short_of(chain) {
            let l = out.entry(short).or_default();
            l.chains += 1;
            l.rules += rules.len();
        }
        for rule in rules {
            if let Some(short) = target(rule).and_then(short_of).filter(|_| short_of(chain).is_none()) {
                out.entry(short).or_default().rules += 1;
            }
        }
    }
    out
}

/// The transaction that removes every rule and chain of the instance whose
/// chains end in `short`, and nothing else.
pub fn removal(dump: &Dump, short: &str) -> Changes {
    let names = Names::new(short);
    let mut p = Changes::default();
    for (chain, rules) in dump.chains.iter().filter(|(c, _)| !names.owns(c)) {
        for rule in rules.iter().filter(|r| target(r).is_some_and(|t| names.owns(t))) {
            p.lines.push(format!("-D {chain} {rule}"));
            p.removed.push((chain.clone(), rule.clone()));
        }
    }
    p.deleted = names.all().into_iter().filter(|c| dump.chains.contains_key(*c)).map(String::from).collect();
    p.lines.extend(p.deleted.iter().map(|c| format!("-F {c}")));
    p.lines.extend(p.deleted.iter().map(|c| format!("-X {c}")));
    p
}

/// Every instance's chains on this host.
pub async fn leftovers() -> Result<BTreeMap<String, Leftover>> {
    Ok(instances(&save().await?))
}

/// Removes every rule and chain of the instance `short`, in one transaction.
pub async fn remove_instance(instance: &str) -> Result<Leftover> {
    let short: String = instance.chars().take(SHORT).collect();
    let dump = save().await?;
    let found = instances(&dump).remove(&short).unwrap_or_default();
    let plan = removal(&dump, &short);
    if !plan.lines.is_empty() {
        restore(&plan.restore_input(), &Mutex::new(VecDeque::new())).await?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests;
