//! Per-identity limits: a rate (governor's GCRA, `calls_per_second`
//! sustained with `burst` at once) and a semaphore for calls in progress.
//! Each identity (token or certificate) has its own, so a runaway script of
//! one team cannot starve the others.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use sandpit_core::metrics::Refusal;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallLimits {
    pub max_concurrent_calls: u32,
    pub calls_per_second: u32,
    pub burst: u32,
}

/// Held for as long as a call is in progress.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] OwnedSemaphorePermit);

/// One identity's rate: lock-free, a single atomic per identity.
type Rate<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

struct Identity<C: Clock> {
    in_progress: Arc<Semaphore>,
    rate: Rate<C>,
}

/// One map of identities holds both limits, so an identity costs one entry.
/// It is never pruned: callers reach [`Limiter::admit`] only once
/// authenticated, as a configured identity or the local token, so the map is
/// bounded by the config.
pub struct Limiter<C: Clock = MonotonicClock> {
    limits: CallLimits,
    quota: Quota,
    clock: C,
    identities: Mutex<HashMap<String, Arc<Identity<C>>>>,
}

impl Limiter {
    pub fn new(limits: CallLimits) -> Limiter {
        Limiter::with_clock(limits, MonotonicClock)
    }
}

impl<C: Clock + Clone> Limiter<C> {
    /// A limiter reading `clock`; tests pass governor's `FakeRelativeClock`.
    pub fn with_clock(limits: CallLimits, clock: C) -> Limiter<C> {
        // The config refuses 0 for both (`limits.*: must be at least 1`).
        let at_least_one = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(at_least_one(limits.calls_per_second)).allow_burst(at_least_one(limits.burst));
        Limiter { limits, quota, clock, identities: Mutex::new(HashMap::new()) }
    }

    pub fn limits(&self) -> CallLimits {
        self.limits
    }

    /// Admits one call of `identity` now, or says which limit it hit.
    pub fn admit(&self, identity: &str) -> Result<Permit, Refusal> {
        let id = {
            let mut all = self.identities.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(all.entry(identity.to_string()).or_insert_with(|| {
                Arc::new(Identity {
                    in_progress: Arc::new(Semaphore::new(self.limits.max_concurrent_calls as usize)),
                    rate: RateLimiter::direct_with_clock(self.quota, self.clock.clone()),
                })
            }))
        };
        // Concurrency first: a call refused for it does not use up the rate.
        let permit = Arc::clone(&id.in_progress).try_acquire_owned().map_err(|_| Refusal::TooManyConcurrent)?;
        id.rate.check().map_err(|_| Refusal::RateLimited)?;
        Ok(Permit(permit))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;
    use proptest::prelude::*;

    use super::*;

    fn limiter(concurrent: u32, rate: u32, burst: u32) -> (Limiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limits = CallLimits { max_concurrent_calls: concurrent, calls_per_second: rate, burst };
        (Limiter::with_clock(limits, clock.clone()), clock)
    }

    #[test]
    fn burst_then_the_sustained_rate() {
        let (l, clock) = limiter(100, 10, 5);
        for _ in 0..5 {
            drop(l.admit("a").unwrap());
        }
        assert_eq!(l.admit("a").unwrap_err(), Refusal::RateLimited);
        assert!(l.admit("b").is_ok(), "identities have buckets of their own");
        // 10 per second: one more after 100 ms, not before.
        clock.advance(Duration::from_millis(99));
        assert_eq!(l.admit("a").unwrap_err(), Refusal::RateLimited);
        clock.advance(Duration::from_millis(1));
        assert!(l.admit("a").is_ok());
        assert_eq!(l.admit("a").unwrap_err(), Refusal::RateLimited);
    }

    #[test]
    fn calls_in_progress_are_capped_until_one_ends() {
        let (l, _) = limiter(2, 1000, 1000);
        let first = l.admit("a").unwrap();
        let _second = l.admit("a").unwrap();
        assert_eq!(l.admit("a").unwrap_err(), Refusal::TooManyConcurrent);
        drop(first);
        assert!(l.admit("a").is_ok());
    }

    #[test]
    fn a_call_refused_for_concurrency_leaves_the_rate_alone() {
        let (l, _) = limiter(1, 1, 2);
        let first = l.admit("a").unwrap();
        for _ in 0..10 {
            assert_eq!(l.admit("a").unwrap_err(), Refusal::TooManyConcurrent);
        }
        drop(first);
        // The burst's second call is still there, with no time passed.
        let _second = l.admit("a").unwrap();
    }

    proptest! {
        /// Over any schedule, admitted calls never exceed burst + rate x
        /// elapsed; and a caller keeping to the rate (a call at least
        /// 1/rate after the one before), or within the burst, is never
        /// refused. The schedule drives the limiter's own clock, so a
        /// limiter letting more through, or fewer, fails this.
        #[test]
        fn never_more_than_burst_plus_rate(rate in 1u32..50, burst in 1u32..50, gaps in prop::collection::vec(0u64..200, 1..300)) {
            let (l, clock) = limiter(1000, rate, burst);
            let (mut elapsed, mut admitted) = (Duration::ZERO, 0u64);
            for gap in gaps.into_iter().map(Duration::from_millis) {
                clock.advance(gap);
                elapsed += gap;
                let within = admitted < u64::from(burst) || gap >= Duration::from_secs(1) / rate;
                match l.admit("a") {
                    Ok(_) => admitted += 1,
                    Err(why) => prop_assert!(!within, "{why:?} after {gap:?}, {admitted} admitted"),
                }
            }
            let allowed = f64::from(burst) + f64::from(rate) * elapsed.as_secs_f64();
            prop_assert!(admitted as f64 <= allowed + 1e-9, "{admitted} > {allowed}");
        }
    }
}
