//! Prometheus metrics.
//!
//! Counters and histograms are updated where the work happens (provisioning,
//! expiry, Docker calls, reconcile, refused calls) in one process-wide
//! [`Metrics`]; gauges (sandboxes by state, audit log length, warm pools) are
//! read from the store and the pools when scraped, so they cannot drift from
//! the truth. [`serve`] answers `GET /metrics` in the text exposition format
//! on its own listener (`[metrics] listen`, loopback by default).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upper bounds (seconds) of the provisioning latency buckets.
const PROVISION_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Upper bounds (seconds) of the expiry lateness buckets.
const LATENESS_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0];

/// A cumulative histogram with fixed buckets.
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (not yet cumulative), then the overflow.
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.iter().position(|b| secs <= *b).unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {}", self.count());
    }
}

/// Counters keyed by `N` label values.
struct Counters<const N: usize>(Mutex<BTreeMap<[&'static str; N], u64>>);

impl<const N: usize> Counters<N> {
    fn new() -> Self {
        Counters(Mutex::new(BTreeMap::new()))
    }

    fn inc(&self, key: [&'static str; N]) {
        self.add(key, 1);
    }

    fn add(&self, key: [&'static str; N], n: u64) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default() += n;
    }

    fn render(&self, out: &mut String, name: &str, labels: [&str; N]) {
        for (key, n) in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let pairs: Vec<String> = labels.iter().zip(key).map(|(l, v)| format!("{l}=\"{}\"", escape(v))).collect();
            let _ = writeln!(out, "{name}{{{}}} {n}", pairs.join(","));
        }
    }
}

/// Why a call was refused before it reached its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unauthenticated,
    PermissionDenied,
    RateLimited,
    TooManyConcurrent,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::PermissionDenied => "permission_denied",
            Refusal::RateLimited => "rate_limited",
            Refusal::TooManyConcurrent => "too_many_concurrent",
        }
    }
}

/// What the daemon counts as it works.
pub struct Metrics {
    /// Create latency by source: `cold` (a new container) or `warm` (a pool claim).
    provisioning: [Histogram; 2],
    expiry_lateness: Histogram,
    docker_errors: Counters<2>,
    reconcile_runs: Counters<1>,
    reconcile_actions: Counters<1>,
    calls: Counters<1>,
    refused: Counters<2>,
    /// Refusals counted into a summary record rather than recorded one by one.
    refusals_summarised: std::sync::atomic::AtomicU64,
    /// 1 or 0 once the audit chain has been checked at start; [`UNKNOWN`] before.
    audit_chain_ok: AtomicU64,
    checkpoints: AtomicU64,
    egress_strangers: AtomicU64,
}

/// `audit_chain_ok` before the first check: no sample is rendered.
const UNKNOWN: u64 = u64::MAX;

/// How a create was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cold,
    Warm,
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            provisioning: [Histogram::new(PROVISION_BUCKETS), Histogram::new(PROVISION_BUCKETS)],
            expiry_lateness: Histogram::new(LATENESS_BUCKETS),
            docker_errors: Counters::new(),
            reconcile_runs: Counters::new(),
            reconcile_actions: Counters::new(),
            calls: Counters::new(),
            refused: Counters::new(),
            refusals_summarised: std::sync::atomic::AtomicU64::new(0),
            audit_chain_ok: AtomicU64::new(UNKNOWN),
            checkpoints: AtomicU64::new(0),
            egress_strangers: AtomicU64::new(0),
        }
    }

    /// Whether the audit chain verified (at start, and before each checkpoint since).
    pub fn audit_chain(&self, ok: bool) {
        self.audit_chain_ok.store(u64::from(ok), Ordering::Relaxed);
    }

    /// A signed checkpoint of the audit chain was written.
    pub fn checkpoint_signed(&self) {
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
    }

    pub fn provisioned(&self, source: Source, took: Duration) {
        self.provisioning[source as usize].observe(took);
    }

    /// A sandbox stopped `late` after its deadline.
    pub fn expired(&self, late: Duration) {
        self.expiry_lateness.observe(late);
    }

    /// A Docker call failed: `kind` is `unavailable` (the engine could not be
    /// reached or timed out) or `error` (it answered with an error).
    pub fn docker_error(&self, operation: &'static str, kind: &'static str) {
        self.docker_errors.inc([operation, kind]);
    }

    /// A reconcile pass ended: `ok`, `unavailable` or `error`.
    pub fn reconciled(&self, result: &'static str) {
        self.reconcile_runs.inc([result]);
    }

    /// Reconcile did `n` of `action` (adopted, lost, exited, ...).
    pub fn reconcile_action(&self, action: &'static str, n: usize) {
        if n > 0 {
            self.reconcile_actions.add([action], n as u64);
        }
    }

    /// An authorized call of `method` began.
    pub fn call(&self, method: &'static str) {
        self.calls.inc([method]);
    }

    pub fn refused(&self, method: &'static str, why: Refusal) {
        self.refused.inc([method, why.as_str()]);
    }

    /// A refusal was counted into its window's summary record instead of being recorded alone.
    pub fn refusal_summarised(&self) {
        self.refusals_summarised.fetch_add(1, Ordering::Relaxed);
    }

    /// The egress proxy closed a connection from a source that is no allowlist sandbox.
    pub fn egress_stranger_refused(&self) {
        self.egress_strangers.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters and histograms in the text exposition format.
    pub fn render(&self, out: &mut String) {
        help(out, "sandpit_provisioning_seconds", "histogram", "Time from an admitted create to a running sandbox; source=cold is a new container, source=warm a pool claim.");
        self.provisioning[Source::Cold as usize].render(out, "sandpit_provisioning_seconds", "source=\"cold\"");
        self.provisioning[Source::Warm as usize].render(out, "sandpit_provisioning_seconds", "source=\"warm\"");
        help(
            out,
            "sandpit_expiry_lateness_seconds",
            "histogram",
            "Time from a sandbox's expiry deadline to its container being stopped.",
        );
        self.expiry_lateness.render(out, "sandpit_expiry_lateness_seconds", "");
        help(out, "sandpit_docker_errors_total", "counter", "Failed Docker Engine calls by operation; kind=unavailable means the engine could not be reached or timed out.");
        self.docker_errors.render(out, "sandpit_docker_errors_total", ["operation", "kind"]);
        help(
            out,
            "sandpit_reconcile_runs_total",
            "counter",
            "Full reconcile passes with Docker by result (ok, unavailable, error).",
        );
        self.reconcile_runs.render(out, "sandpit_reconcile_runs_total", ["result"]);
        help(out, "sandpit_reconcile_actions_total", "counter", "What reconcile changed: adopted, lost, exited, orphan_removed, leftover_removed, interrupted_create_failed, firewall_restored, step_failed.");
        self.reconcile_actions.render(out, "sandpit_reconcile_actions_total", ["action"]);
        help(out, "sandpit_calls_total", "counter", "Authorized API calls by method.");
        self.calls.render(out, "sandpit_calls_total", ["method"]);
        help(
            out,
            "sandpit_calls_refused_total",
            "counter",
            "API calls refused before their handler ran, by method and reason.",
        );
        self.refused.render(out, "sandpit_calls_refused_total", ["method", "reason"]);
        help(
            out,
            "sandpit_audit_refusals_summarised_total",
            "counter",
            "Refusals counted into a summary audit record (repeats, or over a source's share) instead of recorded one by one.",
        );
        sample(out, "sandpit_audit_refusals_summarised_total", &[], self.refusals_summarised.load(Ordering::Relaxed));
        help(out, "sandpit_audit_chain_ok", "gauge", "1 when the audit chain verified at start (against the newest checkpoint too) and before every checkpoint since; 0 when it did not (the log says why, and no checkpoint is signed). Absent until the check at start ends.");
        let ok = self.audit_chain_ok.load(Ordering::Relaxed);
        if ok != UNKNOWN {
            sample(out, "sandpit_audit_chain_ok", &[], ok);
        }
        help(
            out,
            "sandpit_audit_checkpoints_total",
            "counter",
            "Signed checkpoints of the audit chain written by this process.",
        );
        sample(out, "sandpit_audit_checkpoints_total", &[], self.checkpoints.load(Ordering::Relaxed));
        help(
            out,
            "sandpit_egress_refused_strangers_total",
            "counter",
            "Connections to the egress proxy from sources that are no allowlist sandbox, closed unread and unaudited.",
        );
        sample(out, "sandpit_egress_refused_strangers_total", &[], self.egress_strangers.load(Ordering::Relaxed));
    }
}

/// The daemon's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// A `# HELP` and `# TYPE` header.
pub fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample line.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
        return;
    }
    let pairs: Vec<String> = labels.iter().map(|(l, v)| format!("{l}=\"{}\"", escape(v))).collect();
    let _ = writeln!(out, "{name}{{{}}} {value}", pairs.join(","));
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Produces the whole exposition on each scrape.
pub type Render = Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// Longest request head read from a scraper.
const REQUEST_MAX: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` until `shutdown` resolves. One request per
/// connection; anything else gets 404 or 405.
pub async fn serve(listener: TcpListener, render: Render, shutdown: impl Future<Output = ()> + Send) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let render = Arc::clone(&render);
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, render)).await {
                tracing::debug!(error = %e, "metrics request timed out");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, render: Render) {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > REQUEST_MAX {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", "").await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let path = path.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => match render().await {
            Ok(body) => respond(&mut stream, "200 OK", "text/plain; version=0.0.4; charset=utf-8", &body).await,
            Err(e) => {
                tracing::warn!(error = %e, "metrics scrape failed");
                respond(&mut stream, "500 Internal Server Error", "text/plain", &format!("{e}\n")).await
            }
        },
        ("GET", _) => respond(&mut stream, "404 Not Found", "text/plain", "metrics are at /metrics\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", "").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "a=\"b\"");
        assert!(out.contains("x_seconds_bucket{a=\"b\",le=\"0.1\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{a=\"b\",le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_sum{a=\"b\"} 5.55\n"), "{out}");
        assert!(out.contains("x_seconds_count{a=\"b\"} 3\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "g", &[("profile", "a\"b\\c\nd")], 2);
        assert_eq!(out, "g{profile=\"a\\\"b\\\\c\\nd\"} 2\n");
    }

    #[test]
    fn counters_render_with_their_labels() {
        let m = Metrics::new();
        m.docker_error("remove container", "unavailable");
        m.docker_error("remove container", "unavailable");
        m.refused("/x/Y", Refusal::RateLimited);
        m.egress_stranger_refused();
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("sandpit_docker_errors_total{operation=\"remove container\",kind=\"unavailable\"} 2\n"));
        assert!(out.contains("sandpit_calls_refused_total{method=\"/x/Y\",reason=\"rate_limited\"} 1\n"));
        assert!(out.contains("# TYPE sandpit_expiry_lateness_seconds histogram\n"));
        assert!(out.contains("\nsandpit_egress_refused_strangers_total 1\n"), "{out}");
    }

    #[test]
    fn the_audit_chain_gauge_is_absent_until_checked() {
        let m = Metrics::new();
        let render = |m: &Metrics| {
            let mut out = String::new();
            m.render(&mut out);
            out
        };
        assert!(!render(&m).contains("\nsandpit_audit_chain_ok "), "unknown before the check");
        m.audit_chain(true);
        m.checkpoint_signed();
        m.checkpoint_signed();
        let out = render(&m);
        assert!(
            out.contains("\nsandpit_audit_chain_ok 1\n") && out.contains("\nsandpit_audit_checkpoints_total 2\n"),
            "{out}"
        );
        m.audit_chain(false);
        assert!(render(&m).contains("\nsandpit_audit_chain_ok 0\n"));
    }
}
