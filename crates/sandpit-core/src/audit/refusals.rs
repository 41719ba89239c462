//! Refusals on the record without letting anyone flood the record.
//!
//! A refused call (unauthenticated, wrong role, policy denial, bad input) or
//! a refused egress connection is audited, but a client that repeats one
//! thousands of times, or sprays different ones, must not be able to fill the
//! disk or bury everything else. Within each window:
//! - the first refusal of a kind (same source address, actor, action, code
//!   and reason) is recorded at once; identical ones after it are counted and
//!   recorded as one summary record with the count when the window closes;
//! - each (source address, actor) gets at most `per_source` records of its
//!   own; refusals beyond that are counted and summarised likewise;
//! - at most [`MAX_KINDS`] kinds are tracked at once; beyond that refusals
//!   are counted in one summary for the window.
//!
//! Pure: the caller supplies the time and writes what it is given.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use super::AuditEntry;

/// Action of a summary of refusals not recorded one by one.
pub const SUPPRESSED: &str = "refusals-suppressed";
/// Kinds of refusal tracked in one window; more are only counted.
pub const MAX_KINDS: usize = 10_000;

/// How refusals are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalLimits {
    pub window: Duration,
    /// Records of their own each (source address, actor) gets per window.
    pub per_source: u32,
}

/// Refusals identical for this purpose: same source address (port aside),
/// actor, action, code and reason.
type Kind = (String, String, String, String, String);

struct Repeats {
    /// The first one, as recorded.
    first: AuditEntry,
    more: u64,
    last: SystemTime,
}

#[derive(Default)]
struct Source {
    recorded: u32,
    suppressed: u64,
    first: Option<AuditEntry>,
    last: Option<SystemTime>,
}

pub struct Refusals {
    limits: RefusalLimits,
    kinds: HashMap<Kind, Repeats>,
    sources: HashMap<(String, String), Source>,
    /// Refusals beyond [`MAX_KINDS`] this window: count, first and last time.
    overflow: Option<(u64, SystemTime, SystemTime)>,
}

/// The source's address without its port: each connection has a new port.
fn address(source: &str) -> String {
    source.parse::<SocketAddr>().map(|a| a.ip().to_canonical().to_string()).unwrap_or_else(|_| source.to_string())
}

impl Refusals {
    pub fn new(limits: RefusalLimits) -> Refusals {
        Refusals { limits, kinds: HashMap::new(), sources: HashMap::new(), overflow: None }
    }

    pub fn limits(&self) -> RefusalLimits {
        self.limits
    }

    /// A refusal: the entry to record now, or `None` if it was counted for
    /// the window's summary instead.
    pub fn admit(&mut self, entry: AuditEntry) -> Option<AuditEntry> {
        let addr = address(&entry.source);
        let kind: Kind =
            (addr.clone(), entry.actor.clone(), entry.action.clone(), entry.code.clone(), entry.reason.clone());
        if let Some(r) = self.kinds.get_mut(&kind) {
            r.more += 1;
            r.last = entry.time;
            return None;
        }
        if self.kinds.len() >= MAX_KINDS {
            let o = self.overflow.get_or_insert((0, entry.time, entry.time));
            o.0 += 1;
            o.2 = entry.time;
            return None;
        }
        let source = self.sources.entry((addr, entry.actor.clone())).or_default();
        if source.recorded >= self.limits.per_source {
            source.suppressed += 1;
            source.first.get_or_insert_with(|| entry.clone());
            source.last = Some(entry.time);
            return None;
        }
        source.recorded += 1;
        self.kinds.insert(kind, Repeats { first: entry.clone(), more: 0, last: entry.time });
        Some(entry)
    }

    /// Closes the window: the summary records of what was counted, stamped
    /// `now`, and a fresh window.
    pub fn flush(&mut self, now: SystemTime) -> Vec<AuditEntry> {
        let mut out = Vec::new();
        let at = |t: SystemTime| crate::time::rfc3339_ms(t);
        for (_, r) in self.kinds.drain() {
            if r.more == 0 {
                continue;
            }
            let mut e = r.first;
            e.reason =
                format!("{} more identical refusals from {} to {}: {}", r.more, at(e.time), at(r.last), e.reason);
            e.time = now;
            out.push(e);
        }
        for ((addr, actor), s) in self.sources.drain() {
            let (Some(first), Some(last)) = (s.first, s.last) else { continue };
            out.push(AuditEntry {
                time: now,
                action: SUPPRESSED.to_string(),
                target: String::new(),
                reason: format!(
                    "{} further refusals of {actor} from {addr} between {} and {} were counted, not recorded one by one \
                     (more than {} kinds in a window of {}); the first: {} {}: {}",
                    s.suppressed,
                    at(first.time),
                    at(last),
                    self.limits.per_source,
                    crate::time::format_duration(self.limits.window),
                    first.action,
                    first.code,
                    first.reason
                ),
                ..first
            });
        }
        if let Some((n, first, last)) = self.overflow.take() {
            out.push(AuditEntry {
                time: now,
                actor: super::DAEMON.to_string(),
                role: String::new(),
                action: SUPPRESSED.to_string(),
                target: String::new(),
                experiment: String::new(),
                sandbox: String::new(),
                outcome: super::Outcome::Denied,
                code: String::new(),
                reason: format!(
                    "{n} refusals between {} and {} were counted, not recorded: more than {MAX_KINDS} kinds of refusal in one window",
                    at(first),
                    at(last)
                ),
                source: "daemon".to_string(),
            });
        }
        out.sort_by_key(|e| (e.source.clone(), e.actor.clone(), e.action.clone()));
        out
    }

    /// Whether anything is waiting to be summarised.
    pub fn pending(&self) -> bool {
        self.overflow.is_some()
            || self.kinds.values().any(|r| r.more > 0)
            || self.sources.values().any(|s| s.suppressed > 0)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::audit::Outcome;

    fn refusal(source: &str, actor: &str, action: &str, reason: &str, t: u64) -> AuditEntry {
        AuditEntry {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + t),
            actor: actor.into(),
            role: String::new(),
            action: action.into(),
            target: String::new(),
            experiment: String::new(),
            sandbox: String::new(),
            outcome: Outcome::Denied,
            code: "UNAUTHENTICATED".into(),
            reason: reason.into(),
            source: source.into(),
        }
    }

    fn limits(per_source: u32) -> RefusalLimits {
        RefusalLimits { window: Duration::from_secs(10), per_source }
    }

    #[test]
    fn identical_refusals_are_one_record_with_a_count() {
        let mut r = Refusals::new(limits(30));
        let mut written = 0;
        for port in 0..1000 {
            // A new connection each time: the port changes, the source does not.
            if r.admit(refusal(&format!("10.0.0.1:{}", 40000 + port), "anonymous", "m", "unknown token", port))
                .is_some()
            {
                written += 1;
            }
        }
        assert_eq!(written, 1);
        assert!(r.pending());
        let summary = r.flush(SystemTime::now());
        assert_eq!(summary.len(), 1);
        assert!(summary[0].reason.starts_with("999 more identical refusals"), "{}", summary[0].reason);
        assert_eq!((summary[0].action.as_str(), summary[0].code.as_str()), ("m", "UNAUTHENTICATED"));
        // A new window starts afresh.
        assert!(!r.pending());
        assert!(r.admit(refusal("10.0.0.1:1", "anonymous", "m", "unknown token", 2000)).is_some());
        assert!(r.flush(SystemTime::now()).is_empty(), "nothing repeated: nothing to summarise");
    }

    #[test]
    fn each_source_gets_a_bounded_number_of_records() {
        let mut r = Refusals::new(limits(5));
        let written = (0..100)
            .filter(|i| r.admit(refusal("10.0.0.1:5", "anonymous", &format!("m{i}"), "x", 0)).is_some())
            .count();
        assert_eq!(written, 5);
        // Others are not held back by that source.
        assert!(r.admit(refusal("10.0.0.2:5", "anonymous", "m0", "x", 0)).is_some());
        assert!(r.admit(refusal("10.0.0.1:5", "alice", "m0", "x", 0)).is_some());
        let summary = r.flush(SystemTime::now());
        let s: Vec<&AuditEntry> = summary.iter().filter(|e| e.action == SUPPRESSED).collect();
        assert_eq!(s.len(), 1);
        assert!(s[0].reason.starts_with("95 further refusals of anonymous from 10.0.0.1"), "{}", s[0].reason);
    }

    #[test]
    fn kinds_beyond_the_bound_are_only_counted() {
        let mut r = Refusals::new(limits(u32::MAX));
        for i in 0..MAX_KINDS + 50 {
            r.admit(refusal(&format!("10.{}.{}.{}:1", i >> 16 & 255, i >> 8 & 255, i & 255), "a", "m", "x", 0));
        }
        let summary = r.flush(SystemTime::now());
        let o: Vec<&AuditEntry> = summary.iter().filter(|e| e.action == SUPPRESSED).collect();
        assert_eq!(o.len(), 1);
        assert!(o[0].reason.starts_with("50 refusals"), "{}", o[0].reason);
    }

    proptest! {
        /// Whatever arrives in a window, what is written (at once and in the
        /// summary) is bounded by the distinct sources, and every refusal is
        /// accounted for: recorded, or counted in exactly one summary.
        #[test]
        fn every_refusal_is_recorded_or_counted(
            events in prop::collection::vec((0u8..4, 0u8..3, 0u8..5, 0u8..3), 0..400),
            per_source in 1u32..10,
        ) {
            let mut r = Refusals::new(limits(per_source));
            let mut written = 0u64;
            for (i, (src, actor, action, reason)) in events.iter().enumerate() {
                let e = refusal(&format!("10.0.0.{src}:{i}"), &format!("u{actor}"), &format!("m{action}"), &format!("r{reason}"), i as u64);
                if r.admit(e).is_some() {
                    written += 1;
                }
            }
            let summary = r.flush(SystemTime::now());
            let sources: std::collections::HashSet<(u8, u8)> = events.iter().map(|(s, a, _, _)| (*s, *a)).collect();
            prop_assert!(written <= sources.len() as u64 * u64::from(per_source));
            let mut counted = 0u64;
            for s in &summary {
                let n: u64 = s.reason.split(' ').next().unwrap().parse().unwrap();
                counted += n;
            }
            prop_assert_eq!(written + counted, events.len() as u64);
        }
    }
}
