//! Latency summaries: nearest-rank percentiles in milliseconds, printed as
//! aligned rows and written as JSON.

use std::time::Duration;

use serde_json::{json, Value};

/// Percentiles of one set of samples, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted samples: the smallest sample with at
/// least `p`% of the samples at or below it (so p99 of 30 samples is the max).
fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Summary {
    /// `None` for no samples.
    pub fn of_ms(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Some(Summary {
            n: s.len(),
            min: s[0],
            p50: nearest_rank(&s, 50.0),
            p90: nearest_rank(&s, 90.0),
            p99: nearest_rank(&s, 99.0),
            max: s[s.len() - 1],
            mean: s.iter().sum::<f64>() / s.len() as f64,
        })
    }

    pub fn of(samples: &[Duration]) -> Option<Summary> {
        Self::of_ms(&samples.iter().map(|d| ms(*d)).collect::<Vec<_>>())
    }

    pub fn json(&self) -> Value {
        json!({
            "n": self.n,
            "min_ms": round3(self.min),
            "p50_ms": round3(self.p50),
            "p90_ms": round3(self.p90),
            "p99_ms": round3(self.p99),
            "max_ms": round3(self.max),
            "mean_ms": round3(self.mean),
        })
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// JSON for an optional summary (`null` when there were no samples).
pub fn json_opt(s: Option<Summary>) -> Value {
    s.map(|s| s.json()).unwrap_or(Value::Null)
}

/// Samples as a JSON array of milliseconds (3 decimals).
pub fn samples_json(samples: &[f64]) -> Value {
    Value::from(samples.iter().map(|x| round3(*x)).collect::<Vec<_>>())
}

pub const LABEL_WIDTH: usize = 40;

pub fn header() {
    println!("    {:<LABEL_WIDTH$} {:>5} {:>9} {:>9} {:>9} {:>9}", "(ms)", "n", "p50", "p90", "p99", "max");
}

pub fn row(label: &str, s: Option<Summary>) {
    match s {
        Some(s) => {
            println!("    {label:<LABEL_WIDTH$} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>9.1}", s.n, s.p50, s.p90, s.p99, s.max)
        }
        None => println!("    {label:<LABEL_WIDTH$}  (no samples)"),
    }
}

/// Sandpit over raw, percentile by percentile.
pub fn ratio(a: Option<Summary>, b: Option<Summary>) -> Option<[f64; 4]> {
    let (a, b) = (a?, b?);
    let r = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
    Some([r(a.p50, b.p50), r(a.p90, b.p90), r(a.p99, b.p99), r(a.max, b.max)])
}

/// Two decimals, or three when a ratio is below 0.1 (warm claims against cold creates).
pub fn ratio_row(label: &str, r: Option<[f64; 4]>) {
    if let Some([p50, p90, p99, max]) = r {
        let d = if [p50, p90, p99, max].iter().any(|x| *x < 0.1) { 3 } else { 2 };
        println!("    {label:<LABEL_WIDTH$} {:>5} {p50:>8.d$}x {p90:>8.d$}x {p99:>8.d$}x {max:>8.d$}x", "");
    }
}

pub fn ratio_json(r: Option<[f64; 4]>) -> Value {
    match r {
        Some([p50, p90, p99, max]) => json!({
            "p50": round3(p50), "p90": round3(p90), "p99": round3(p99), "max": round3(max),
        }),
        None => Value::Null,
    }
}
