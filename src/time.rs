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

/// The last second written: 9999-12-31T23:59:59Z.
const MAX_SECONDS: u64 = 253_402_300_799;

/// `2026-11-21T10:00:00Z`; times before 1970 or after 9999 are clamped.
pub fn format_unix(seconds: i64) -> String {
    let clamped = seconds.clamp(0, MAX_SECONDS as i64) as u64;
    with_seconds_text(clamped, str::to_owned)
}

/// `2026-11-21T10:00:00.123Z`
pub fn format_millis(t: SystemTime) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) if d.as_secs() <= MAX_SECONDS => with_seconds_text(d.as_secs(), |text| {
            let millis = d.subsec_millis();
            let mut out = String::with_capacity(text.len() + 4);
            out.push_str(&text[..text.len() - 1]);
            out.push('.');
            for digit in [millis / 100, millis / 10 % 10, millis % 10] {
                out.push(char::from(b'0' + digit as u8));
            }
            out.push('Z');
            out
        }),
        _ => humantime::format_rfc3339_millis(t).to_string(),
    }
}

/// Calls `f` with `2026-11-21T10:00:00Z` for `seconds` (at most [`MAX_SECONDS`]). Each
/// thread remembers the last few seconds it wrote: a decision writes its time and its token's
/// expiry, and both repeat from one decision to the next.
fn with_seconds_text<T>(seconds: u64, f: impl FnOnce(&str) -> T) -> T {
    const SLOTS: usize = 4;
    thread_local! {
        static RECENT: std::cell::RefCell<[(u64, String); SLOTS]> =
            std::cell::RefCell::new(std::array::from_fn(|_| (u64::MAX, String::new())));
    }
    RECENT.with_borrow_mut(|recent| {
        let (written, text) = &mut recent[seconds as usize % SLOTS];
        if *written != seconds {
            text.clear();
            use std::fmt::Write as _;
            let _ = write!(
                text,
                "{}",
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds))
            );
            *written = seconds;
        }
        f(text)
    })
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

    #[test]
    fn remembered_seconds_write_what_humantime_writes() {
        let mut rng = fastrand::Rng::with_seed(7);
        // Seconds that share slots, repeat, and lie at the ends of the range.
        let mut times: Vec<u64> = (0..2_000).map(|_| rng.u64(0..=MAX_SECONDS)).collect();
        times.extend([
            0,
            1,
            4,
            5,
            MAX_SECONDS,
            1_795_000_000,
            1_795_000_004,
            1_795_000_000,
        ]);
        for seconds in times {
            for millis in [0, 7, 45, 999, rng.u64(0..1000)] {
                let t = UNIX_EPOCH + Duration::from_millis(seconds * 1000 + millis);
                assert_eq!(
                    format_millis(t),
                    humantime::format_rfc3339_millis(t).to_string()
                );
            }
            let t = UNIX_EPOCH + Duration::from_secs(seconds);
            assert_eq!(
                format_unix(seconds as i64),
                humantime::format_rfc3339_seconds(t).to_string()
            );
        }
    }
}
