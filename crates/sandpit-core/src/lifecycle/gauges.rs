//! The metrics scrape: gauges read from the store and the pools at scrape
//! time, then the process's counters and histograms.

use std::collections::BTreeMap;

use super::{Manager, PoolStatus};
use crate::{Error, Result};

impl Manager {
    /// Every metric in the Prometheus text format: the gauges read now from
    /// the store and the pools, then the process's counters and histograms.
    pub async fn render_metrics(&self) -> Result<String> {
        use crate::metrics::{Reading, Readings};
        let mut now = Readings::default();
        // Ended totals before the live list: a sandbox that ends between the
        // two reads is then briefly in neither, never in both.
        let stats = self.store.stats().await?;
        let mut live: BTreeMap<(&'static str, String, String), u64> = BTreeMap::new();
        let records = self.live_records().await?;
        for sb in &records {
            *live.entry((sb.state.as_str(), sb.profile.name.clone(), sb.classification.to_string())).or_default() += 1;
        }
        let sandboxes =
            now.gauge("sandpit_sandboxes", "Sandboxes not yet ended, by state, profile and classification.");
        for ((state, profile, classification), n) in &live {
            sandboxes.sample(&[("state", state), ("profile", profile), ("classification", classification)], *n);
        }
        let ended = now.gauge("sandpit_sandboxes_ended", "Ended sandboxes on record, by final state.");
        for (state, n) in &stats.ended {
            ended.sample(&[("state", state)], *n);
        }
        now.gauge("sandpit_audit_records", "Records in the hash-chained audit log.").sample(&[], stats.audit_records);
        // Governance: overdue risk reviews of experiments not closed, by impact
        // (every impact sampled, so an alert on a series never sees it vanish).
        let at = std::time::SystemTime::now();
        let mut overdue: BTreeMap<&'static str, u64> = [("low", 0), ("medium", 0), ("high", 0)].into_iter().collect();
        let experiments = self.all_experiments().await?;
        for e in experiments.iter().filter(|e| e.status != crate::register::Status::Closed) {
            for r in e.overdue_risks(at) {
                *overdue.entry(r.impact.as_str()).or_default() += 1;
            }
        }
        let family = now.gauge(
            "sandpit_risk_reviews_overdue",
            "Risks of experiments not closed whose review date has passed, by impact.",
        );
        for (impact, n) in &overdue {
            family.sample(&[("impact", impact)], *n);
        }
        let mut awaiting = 0;
        for e in &experiments {
            awaiting += u64::from(e.status == crate::register::Status::Proposed && !e.pending_functions().is_empty());
        }
        now.gauge(
            "sandpit_experiments_awaiting_sign_off",
            "Proposed experiments still awaiting a required function's sign-off.",
        )
        .sample(&[], awaiting);
        let pools = self.pool_status().await;
        type Kind = for<'a> fn(&'a mut Readings, &'static str, &'static str) -> &'a mut Reading;
        type Read = fn(&PoolStatus) -> u64;
        // Counters are named without the `_total` the encoder appends.
        let per_pool: [(Kind, &str, &str, Read); 4] = [
            (Readings::gauge, "sandpit_warm_pool_target", "Warm sandboxes each pool is kept at.", |p| p.target.into()),
            (Readings::gauge, "sandpit_warm_pool_ready", "Warm sandboxes ready to be claimed.", |p| p.warm.into()),
            (Readings::counter, "sandpit_warm_pool_claims", "Creates served from a warm pool.", |p| p.claims),
            (
                Readings::counter,
                "sandpit_warm_pool_misses",
                "Creates of a pooled profile that found no warm sandbox (or needed another image or datasets) and started cold.",
                |p| p.misses,
            ),
        ];
        for (kind, name, help, read) in per_pool {
            let family = kind(&mut now, name, help);
            for p in &pools {
                family.sample(&[("profile", &p.profile)], read(p));
            }
        }
        crate::metrics::global().encode(now).map_err(|e| Error::Internal(format!("encoding metrics: {e}")))
    }
}
