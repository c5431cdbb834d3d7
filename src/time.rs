//! Time helpers: Unix seconds from the caller's clock, and RFC 3339 text for traces.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Milliseconds since 1970 (0 for earlier times).
pub fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `2026-11-21T10:00:00.123Z` for milliseconds since 1970 (earlier times clamp to 1970).
pub fn format_unix_millis(millis: i64) -> String {
    format_millis(UNIX_EPOCH + Duration::from_millis(millis.max(0) as u64))
}

/// `2026-11-21T10:00:00Z`; times before 1970 or after 9999 are clamped.
pub fn format_unix(seconds: i64) -> String {
    const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let clamped = seconds.clamp(0, MAX) as u64;
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(clamped)).to_string()
}

/// `2026-11-21T10:00:00.123Z`
pub fn format_millis(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_clamps() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(-5), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(i64::MAX), "9999-12-31T23:59:59Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(format_millis(t), "2026-11-18T11:06:40.123Z");
        assert_eq!(unix_seconds(t), 1_795_000_000);
        assert_eq!(unix_millis(t), 1_795_000_000_123);
        assert_eq!(
            format_unix_millis(1_795_000_000_123),
            "2026-11-18T11:06:40.123Z"
        );
        assert_eq!(format_unix_millis(-1), "1970-01-01T00:00:00.000Z");
    }
}
