//! Prometheus metrics, kept with `prometheus-client`.
//!
//! Counters and histograms are updated where the work happens (provisioning,
//! expiry, Docker calls, reconcile, refused calls) in one process-wide
//! [`Metrics`]; gauges (sandboxes by state, audit log length, warm pools) are
//! read from the store and the pools when scraped, so they cannot drift from
//! the truth: the caller hands them to [`Metrics::encode`] as [`Readings`].
//! The daemon serves the result (`sandpitd::metrics`).
//!
//! Counters are named here without the `_total` suffix: the encoder appends
//! it (`sandpit_calls` is exposed as `sandpit_calls_total`).

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Metric, Registry};

/// The media type of what [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the provisioning latency buckets.
const PROVISION_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Upper bounds (seconds) of the expiry lateness buckets.
const LATENESS_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0];

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

/// How a create was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cold,
    Warm,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Cold => "cold",
            Source::Warm => "warm",
        }
    }
}

// Label sets: each field is a label, named as the field.

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DockerErrorLabels {
    operation: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    method: &'static str,
    reason: &'static str,
}

/// No labels: for a family with at most one, unlabelled, member.
type Unlabelled = [(&'static str, &'static str); 0];

/// What the daemon counts as it works.
pub struct Metrics {
    /// Everything below, in the order it is exposed.
    registry: Registry,
    /// Create latency by source: `cold` (a new container) or `warm` (a pool claim).
    provisioning: Family<SourceLabels, Histogram, fn() -> Histogram>,
    expiry_lateness: Histogram,
    docker_errors: Family<DockerErrorLabels, Counter>,
    reconcile_runs: Family<ResultLabels, Counter>,
    reconcile_actions: Family<ActionLabels, Counter>,
    calls: Family<MethodLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    /// Refusals counted into a summary record rather than recorded one by one.
    refusals_summarised: Counter,
    /// 1 or 0 once the audit chain has been checked at start. Its one member
    /// is made by the first check: an empty family is not exposed at all, so
    /// there is no sample (rather than a made-up 0) before then.
    audit_chain_ok: Family<Unlabelled, Gauge>,
    checkpoints: Counter,
    egress_strangers: Counter,
    firewall_transactions: Counter,
    firewall_changes: Counter,
    on_duty: Gauge,
}

/// Registers `metric` with `help` as written: prometheus-client ends every
/// registered HELP text with a period of its own, so one already there is
/// dropped (the exposed text stays exactly as written).
fn register(registry: &mut Registry, name: &str, help: &str, metric: impl Metric) {
    registry.register(name, help.strip_suffix('.').unwrap_or(help), metric);
}

impl Metrics {
    fn new() -> Metrics {
        let provisioning: Family<SourceLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(PROVISION_BUCKETS.iter().copied()));
        // Both sources are exposed from the start, at zero, so a rate over
        // warm claims reads 0 rather than nothing before the first one.
        for source in [Source::Cold, Source::Warm] {
            let _ = provisioning.get_or_create(&SourceLabels { source: source.as_str() });
        }
        let m = Metrics {
            registry: Registry::default(),
            provisioning,
            expiry_lateness: Histogram::new(LATENESS_BUCKETS.iter().copied()),
            docker_errors: Family::default(),
            reconcile_runs: Family::default(),
            reconcile_actions: Family::default(),
            calls: Family::default(),
            refused: Family::default(),
            refusals_summarised: Counter::default(),
            audit_chain_ok: Family::default(),
            checkpoints: Counter::default(),
            egress_strangers: Counter::default(),
            firewall_transactions: Counter::default(),
            firewall_changes: Counter::default(),
            on_duty: Gauge::default(),
        };
        // The metrics share their state with the clones registered here.
        let mut r = Registry::default();
        register(&mut r, "sandpit_provisioning_seconds", "Time from an admitted create to a running sandbox; source=cold is a new container, source=warm a pool claim.", m.provisioning.clone());
        register(
            &mut r,
            "sandpit_expiry_lateness_seconds",
            "Time from a sandbox's expiry deadline to its container being stopped.",
            m.expiry_lateness.clone(),
        );
        register(&mut r, "sandpit_docker_errors", "Failed Docker Engine calls by operation; kind=unavailable means the engine could not be reached or timed out.", m.docker_errors.clone());
        register(
            &mut r,
            "sandpit_reconcile_runs",
            "Full reconcile passes with Docker by result (ok, unavailable, error).",
            m.reconcile_runs.clone(),
        );
        register(&mut r, "sandpit_reconcile_actions", "What reconcile changed: adopted, lost, exited, orphan_removed, leftover_removed, interrupted_create_failed, firewall_restored, step_failed.", m.reconcile_actions.clone());
        register(&mut r, "sandpit_calls", "Authorized API calls by method.", m.calls.clone());
        register(
            &mut r,
            "sandpit_calls_refused",
            "API calls refused before their handler ran, by method and reason.",
            m.refused.clone(),
        );
        register(
            &mut r,
            "sandpit_audit_refusals_summarised",
            "Refusals counted into a summary audit record (repeats, or over a source's share) instead of recorded one by one.",
            m.refusals_summarised.clone(),
        );
        register(&mut r, "sandpit_on_duty", "1 while this daemon runs expiry, reconcile, warm-pool refill and checkpoints: always when it is its store's only user; with several daemons on PostgreSQL, while it holds the lease.", m.on_duty.clone());
        register(&mut r, "sandpit_audit_chain_ok", "1 when the audit chain verified at start (against the newest checkpoint too) and before every checkpoint since; 0 when it did not (the log says why, and no checkpoint is signed). Absent until the check at start ends.", m.audit_chain_ok.clone());
        register(
            &mut r,
            "sandpit_audit_checkpoints",
            "Signed checkpoints of the audit chain written by this process.",
            m.checkpoints.clone(),
        );
        register(
            &mut r,
            "sandpit_egress_refused_strangers",
            "Connections to the egress proxy from sources that are no allowlist sandbox, closed unread and unaudited.",
            m.egress_strangers.clone(),
        );
        register(
            &mut r,
            "sandpit_firewall_transactions",
            "Host firewall transactions (one iptables-restore each) made for sandbox networks coming and going.",
            m.firewall_transactions.clone(),
        );
        register(
            &mut r,
            "sandpit_firewall_changes",
            "Sandbox network changes (made or removed) applied to the host firewall; above sandpit_firewall_transactions when changes were batched.",
            m.firewall_changes.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Whether this daemon runs the singleton duties now.
    pub fn on_duty(&self, held: bool) {
        self.on_duty.set(i64::from(held));
    }

    /// Whether the audit chain verified (at start, and before each checkpoint since).
    pub fn audit_chain(&self, ok: bool) {
        self.audit_chain_ok.get_or_create(&[]).set(i64::from(ok));
    }

    /// A signed checkpoint of the audit chain was written.
    pub fn checkpoint_signed(&self) {
        self.checkpoints.inc();
    }

    pub fn provisioned(&self, source: Source, took: Duration) {
        self.provisioning.get_or_create(&SourceLabels { source: source.as_str() }).observe(took.as_secs_f64());
    }

    /// A sandbox stopped `late` after its deadline.
    pub fn expired(&self, late: Duration) {
        self.expiry_lateness.observe(late.as_secs_f64());
    }

    /// A Docker call failed: `kind` is `unavailable` (the engine could not be
    /// reached or timed out) or `error` (it answered with an error).
    pub fn docker_error(&self, operation: &'static str, kind: &'static str) {
        self.docker_errors.get_or_create(&DockerErrorLabels { operation, kind }).inc();
    }

    /// A reconcile pass ended: `ok`, `unavailable` or `error`.
    pub fn reconciled(&self, result: &'static str) {
        self.reconcile_runs.get_or_create(&ResultLabels { result }).inc();
    }

    /// Reconcile did `n` of `action` (adopted, lost, exited, ...).
    pub fn reconcile_action(&self, action: &'static str, n: usize) {
        // No series for an action that never happened, as before.
        if n > 0 {
            self.reconcile_actions.get_or_create(&ActionLabels { action }).inc_by(n as u64);
        }
    }

    /// An authorized call of `method` began.
    pub fn call(&self, method: &'static str) {
        self.calls.get_or_create(&MethodLabels { method }).inc();
    }

    pub fn refused(&self, method: &'static str, why: Refusal) {
        self.refused.get_or_create(&RefusedLabels { method, reason: why.as_str() }).inc();
    }

    /// A refusal was counted into its window's summary record instead of being recorded alone.
    pub fn refusal_summarised(&self) {
        self.refusals_summarised.inc();
    }

    /// One host firewall transaction applied `changes` network changes.
    pub fn firewall_transaction(&self, changes: usize) {
        self.firewall_transactions.inc();
        self.firewall_changes.inc_by(changes as u64);
    }

    /// The egress proxy closed a connection from a source that is no allowlist sandbox.
    pub fn egress_stranger_refused(&self) {
        self.egress_strangers.inc();
    }

    /// The whole exposition in the Prometheus text format 0.0.4: `readings`
    /// first, then the process's counters and histograms. A family with no
    /// sample yet is left out, HELP and TYPE included.
    pub fn encode(&self, readings: Readings) -> Result<String, std::fmt::Error> {
        let mut scrape = Registry::default();
        scrape.register_collector(Box::new(readings));
        let mut out = String::with_capacity(8192);
        // The 0.0.4 format has no end marker, so two encodings concatenate.
        prometheus_text::encode(&mut out, &scrape)?;
        prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The daemon's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Values read from elsewhere when scraped (the store, the pools), for
/// [`Metrics::encode`] to expose through prometheus-client's [`Collector`].
/// Samples keep the order they were added in (a `Family` would hash them into
/// any order) and HELP texts are exposed as written.
#[derive(Debug, Default)]
pub struct Readings(Vec<Reading>);

/// One family of [`Readings`].
#[derive(Debug)]
pub struct Reading {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Vec<(&'static str, String)>, u64)>,
}

impl Readings {
    /// A gauge family.
    pub fn gauge(&mut self, name: &'static str, help: &'static str) -> &mut Reading {
        self.family(name, help, MetricType::Gauge)
    }

    /// A counter family, `name` without the `_total` the encoder appends.
    pub fn counter(&mut self, name: &'static str, help: &'static str) -> &mut Reading {
        debug_assert!(!name.ends_with("_total"), "{name}: the encoder appends _total");
        self.family(name, help, MetricType::Counter)
    }

    fn family(&mut self, name: &'static str, help: &'static str, kind: MetricType) -> &mut Reading {
        self.0.push(Reading { name, help, kind, samples: Vec::new() });
        self.0.last_mut().expect("just pushed")
    }
}

impl Reading {
    /// One sample; `labels` in the order they are exposed, values escaped by the encoder.
    pub fn sample(&mut self, labels: &[(&'static str, &str)], value: u64) {
        self.samples.push((labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(), value));
    }
}

impl Collector for Readings {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Empty families are left out, as the registry leaves out its own.
        for family in self.0.iter().filter(|f| !f.samples.is_empty()) {
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, family.kind)?;
            for (labels, value) in &family.samples {
                let member = metric.encode_family(labels)?;
                match family.kind {
                    MetricType::Counter => ConstCounter::new(*value).encode(member)?,
                    _ => ConstGauge::new(*value).encode(member)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(m: &Metrics) -> String {
        m.encode(Readings::default()).unwrap()
    }

    /// The `le` labels of `name`'s buckets, in order.
    fn bounds(out: &str, name: &str) -> Vec<String> {
        let prefix = format!("{name}_bucket{{");
        out.lines()
            .filter(|l| l.starts_with(&prefix) && l.contains("source=\"cold\"") == name.contains("provisioning"))
            .map(|l| l.split("le=\"").nth(1).unwrap().split('"').next().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf() {
        let m = Metrics::new();
        m.provisioned(Source::Cold, Duration::from_millis(50));
        m.provisioned(Source::Cold, Duration::from_millis(500));
        m.provisioned(Source::Cold, Duration::from_secs(5));
        let out = encode(&m);
        let name = "sandpit_provisioning_seconds";
        assert!(out.contains(&format!("{name}_bucket{{source=\"cold\",le=\"0.05\"}} 1\n")), "{out}");
        assert!(out.contains(&format!("{name}_bucket{{source=\"cold\",le=\"1\"}} 2\n")), "{out}");
        assert!(out.contains(&format!("{name}_bucket{{source=\"cold\",le=\"5\"}} 3\n")), "{out}");
        assert!(out.contains(&format!("{name}_bucket{{source=\"cold\",le=\"+Inf\"}} 3\n")), "{out}");
        assert!(out.contains(&format!("{name}_sum{{source=\"cold\"}} 5.55\n")), "{out}");
        assert!(out.contains(&format!("{name}_count{{source=\"cold\"}} 3\n")), "{out}");
        // The warm series is there at zero before any claim.
        assert!(out.contains(&format!("{name}_count{{source=\"warm\"}} 0\n")), "{out}");
    }

    #[test]
    fn bucket_bounds_are_written_as_before() {
        let out = encode(&Metrics::new());
        let provisioning = "0.001 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10 30 +Inf";
        assert_eq!(bounds(&out, "sandpit_provisioning_seconds").join(" "), provisioning, "{out}");
        let lateness = "0.05 0.1 0.25 0.5 1 2 5 10 30 60 300 +Inf";
        assert_eq!(bounds(&out, "sandpit_expiry_lateness_seconds").join(" "), lateness, "{out}");
        assert!(out.contains("\nsandpit_expiry_lateness_seconds_count 0\n"), "unlabelled, no braces: {out}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut readings = Readings::default();
        readings.gauge("g", "G.").sample(&[("profile", "a\"b\\c\nd")], 2);
        let out = Metrics::new().encode(readings).unwrap();
        assert!(out.starts_with("# HELP g G.\n# TYPE g gauge\ng{profile=\"a\\\"b\\\\c\\nd\"} 2\n"), "{out}");

        let m = Metrics::new();
        m.call("/x/\"Y\"");
        assert!(encode(&m).contains("sandpit_calls_total{method=\"/x/\\\"Y\\\"\"} 1\n"));
    }

    #[test]
    fn counters_render_with_their_labels() {
        let m = Metrics::new();
        m.docker_error("remove container", "unavailable");
        m.docker_error("remove container", "unavailable");
        m.refused("/x/Y", Refusal::RateLimited);
        m.reconcile_action("adopted", 0);
        m.reconcile_action("lost", 3);
        m.egress_stranger_refused();
        let out = encode(&m);
        assert!(out.contains("sandpit_docker_errors_total{operation=\"remove container\",kind=\"unavailable\"} 2\n"));
        assert!(out.contains("sandpit_calls_refused_total{method=\"/x/Y\",reason=\"rate_limited\"} 1\n"));
        assert!(out.contains("sandpit_reconcile_actions_total{action=\"lost\"} 3\n"), "{out}");
        assert!(!out.contains("action=\"adopted\""), "no series for nothing done: {out}");
        assert!(out.contains("# TYPE sandpit_expiry_lateness_seconds histogram\n"));
        assert!(out.contains("\nsandpit_egress_refused_strangers_total 1\n"), "{out}");
        assert!(!out.contains("sandpit_calls_total"), "a family with no sample is left out: {out}");
    }

    #[test]
    fn the_audit_chain_gauge_is_absent_until_checked() {
        let m = Metrics::new();
        assert!(!encode(&m).contains("sandpit_audit_chain_ok"), "unknown before the check");
        m.audit_chain(true);
        m.checkpoint_signed();
        m.checkpoint_signed();
        let out = encode(&m);
        assert!(
            out.contains("\nsandpit_audit_chain_ok 1\n") && out.contains("\nsandpit_audit_checkpoints_total 2\n"),
            "{out}"
        );
        m.audit_chain(false);
        assert!(encode(&m).contains("\nsandpit_audit_chain_ok 0\n"));
    }

    #[test]
    fn every_family_keeps_its_name_type_and_help() {
        let m = Metrics::new();
        m.provisioned(Source::Warm, Duration::from_millis(1));
        m.expired(Duration::ZERO);
        m.docker_error("x", "error");
        m.reconciled("ok");
        m.reconcile_action("lost", 1);
        m.call("x");
        m.refused("x", Refusal::Unauthenticated);
        m.refusal_summarised();
        m.audit_chain(true);
        m.checkpoint_signed();
        m.egress_stranger_refused();
        m.firewall_transaction(3);
        let mut readings = Readings::default();
        readings.gauge("sandpit_warm_pool_ready", "Warm sandboxes ready to be claimed.").sample(&[("profile", "p")], 1);
        readings.counter("sandpit_warm_pool_claims", "Creates served from a warm pool.").sample(&[("profile", "p")], 4);
        readings.gauge("sandpit_sandboxes_ended", "Ended sandboxes on record, by final state.");
        let out = m.encode(readings).unwrap();
        let types: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        assert_eq!(
            types,
            [
                "sandpit_warm_pool_ready gauge",
                "sandpit_warm_pool_claims_total counter",
                "sandpit_provisioning_seconds histogram",
                "sandpit_expiry_lateness_seconds histogram",
                "sandpit_docker_errors_total counter",
                "sandpit_reconcile_runs_total counter",
                "sandpit_reconcile_actions_total counter",
                "sandpit_calls_total counter",
                "sandpit_calls_refused_total counter",
                "sandpit_audit_refusals_summarised_total counter",
                "sandpit_on_duty gauge",
                "sandpit_audit_chain_ok gauge",
                "sandpit_audit_checkpoints_total counter",
                "sandpit_egress_refused_strangers_total counter",
                "sandpit_firewall_transactions_total counter",
                "sandpit_firewall_changes_total counter",
            ]
        );
        assert!(out.contains("\nsandpit_warm_pool_claims_total{profile=\"p\"} 4\n"), "{out}");
        assert!(out.contains("\nsandpit_firewall_changes_total 3\n"), "{out}");
        assert!(out.contains("# HELP sandpit_warm_pool_ready Warm sandboxes ready to be claimed.\n"), "{out}");
        assert!(out.contains("# HELP sandpit_calls_total Authorized API calls by method.\n"), "{out}");
        let helps = out.lines().filter(|l| l.starts_with("# HELP "));
        assert!(helps.clone().all(|l| l.ends_with('.') && !l.ends_with("..")), "{out}");
        assert_eq!(helps.count(), types.len());
    }
}
