//! Per-identity limits: a token bucket for the call rate and a semaphore for
//! calls in progress. Each identity (token or certificate) has its own, so a
//! runaway script of one team cannot starve the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Refusal;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_concurrent_calls: u32,
    pub calls_per_second: u32,
    pub burst: u32,
}

/// Held for as long as a call is in progress.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] OwnedSemaphorePermit);

struct Bucket {
    tokens: f64,
    updated: Instant,
}

struct Identity {
    in_progress: Arc<Semaphore>,
    bucket: Mutex<Bucket>,
}

pub struct Limiter {
    limits: Limits,
    identities: Mutex<HashMap<String, Arc<Identity>>>,
}

impl Limiter {
    pub fn new(limits: Limits) -> Limiter {
        Limiter { limits, identities: Mutex::new(HashMap::new()) }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Admits one call of `identity` at `now`, or says which limit it hit.
    pub fn admit(&self, identity: &str, now: Instant) -> Result<Permit, Refusal> {
        let id = {
            let mut all = self.identities.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(all.entry(identity.to_string()).or_insert_with(|| {
                Arc::new(Identity {
                    in_progress: Arc::new(Semaphore::new(self.limits.max_concurrent_calls as usize)),
                    bucket: Mutex::new(Bucket { tokens: f64::from(self.limits.burst), updated: now }),
                })
            }))
        };
        // Concurrency first: a call refused for it does not use up the rate.
        let permit = Arc::clone(&id.in_progress).try_acquire_owned().map_err(|_| Refusal::TooManyConcurrent)?;
        let mut b = id.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let refill = now.saturating_duration_since(b.updated).as_secs_f64() * f64::from(self.limits.calls_per_second);
        b.tokens = (b.tokens + refill).min(f64::from(self.limits.burst));
        b.updated = now;
        if b.tokens < 1.0 {
            return Err(Refusal::RateLimited);
        }
        b.tokens -= 1.0;
        Ok(Permit(permit))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn limiter(concurrent: u32, rate: u32, burst: u32) -> Limiter {
        Limiter::new(Limits { max_concurrent_calls: concurrent, calls_per_second: rate, burst })
    }

    #[test]
    fn burst_then_the_sustained_rate() {
        let l = limiter(100, 10, 5);
        let t = Instant::now();
        for _ in 0..5 {
            drop(l.admit("a", t).unwrap());
        }
        assert_eq!(l.admit("a", t).unwrap_err(), Refusal::RateLimited);
        assert!(l.admit("b", t).is_ok(), "identities have buckets of their own");
        // 10 per second: one more after 100 ms.
        let later = t + Duration::from_millis(100);
        assert!(l.admit("a", later).is_ok());
        assert_eq!(l.admit("a", later).unwrap_err(), Refusal::RateLimited);
    }

    #[test]
    fn calls_in_progress_are_capped_until_one_ends() {
        let l = limiter(2, 1000, 1000);
        let t = Instant::now();
        let first = l.admit("a", t).unwrap();
        let _second = l.admit("a", t).unwrap();
        assert_eq!(l.admit("a", t).unwrap_err(), Refusal::TooManyConcurrent);
        drop(first);
        assert!(l.admit("a", t).is_ok());
    }

    proptest! {
        /// Over any schedule, admitted calls never exceed burst + rate x elapsed.
        #[test]
        fn never_more_than_burst_plus_rate(rate in 1u32..50, burst in 1u32..50, gaps in prop::collection::vec(0u64..200, 1..300)) {
            let l = limiter(1000, rate, burst);
            let start = Instant::now();
            let mut now = start;
            let mut admitted = 0u64;
            for gap in gaps {
                now += Duration::from_millis(gap);
                if l.admit("a", now).is_ok() {
                    admitted += 1;
                }
            }
            let allowed = f64::from(burst) + f64::from(rate) * now.duration_since(start).as_secs_f64();
            prop_assert!(admitted as f64 <= allowed + 1e-9, "{admitted} > {allowed}");
        }
    }
}
