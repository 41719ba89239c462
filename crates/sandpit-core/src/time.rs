//! Wall-clock helpers: durations in the `10m`/`1h30m` form people write, and
//! conversion between `SystemTime` deadlines and tokio instants.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer};

/// The longest duration Sandpit accepts anywhere (ttls, timeouts, profile
/// lifetimes): a hundred years. Longer is a typo, not a lifetime, and keeps
/// every deadline within what the clock and RFC 3339 can hold.
pub const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses `90s`, `10m`, `1h 30m`, `2d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("'{s}' is not a duration like 10m or 1h30m ({e})"))
}

/// Formats a duration compactly, to the second: `1h 30m`.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Formats a duration to the millisecond when it is under a minute (`9s 500ms`), else as [`format_duration`].
pub fn format_duration_ms(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
    } else {
        format_duration(d)
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// RFC 3339 to the millisecond.
pub fn rfc3339_ms(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok()
}

/// Milliseconds since the Unix epoch (negative before it; never in practice).
pub fn to_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

pub fn from_millis(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// The tokio instant at which a wall-clock deadline falls (now, if it has passed).
pub fn instant_at(deadline: SystemTime) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    match deadline.duration_since(SystemTime::now()) {
        Ok(left) => now + left,
        Err(_) => now,
    }
}

/// Serde helper: a duration written as a humantime string.
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// Serde helper for optional durations.
pub fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?.map(|s| parse_duration(&s).map_err(serde::de::Error::custom)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_durations() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("ten minutes").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn millis_round_trip() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(from_millis(to_millis(t)), t);
    }
}
