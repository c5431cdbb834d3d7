//! Rate limits of operations (`rateLimit` in a policy): at most `requests` per `per`, counted
//! per subject, client or client address in fixed windows aligned to the Unix epoch, so that
//! every replica that shares a counter (Redis) agrees on where a window starts.
//!
//! The engine says what to count ([`LimitCheck`]); who counts is the caller's choice: the
//! process' own [`LocalCounters`], or a shared store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;

/// What a rate limit counts requests by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKey {
    /// The token's `sub` claim.
    Subject,
    /// The token's client id (`client_id` or `azp`).
    Client,
    /// The client address the gateway reported.
    Ip,
}

impl LimitKey {
    pub const NAMES: &[&str] = &["subject", "client", "ip"];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitKey::Subject => "subject",
            LimitKey::Client => "client",
            LimitKey::Ip => "ip",
        }
    }

    /// What the key is, in prose.
    pub fn described(self) -> &'static str {
        match self {
            LimitKey::Subject => "subject",
            LimitKey::Client => "client",
            LimitKey::Ip => "client address",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [LimitKey::Subject, LimitKey::Client, LimitKey::Ip]
            .into_iter()
            .find(|k| k.as_str() == text)
    }
}

/// A compiled `rateLimit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub key: LimitKey,
    pub requests: u64,
    pub per: Duration,
    /// `file:line` of the `rateLimit` in the policy files.
    pub location: Arc<str>,
}

/// Shortest window a policy may set.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Longest window a policy may set (a monthly quota).
pub const MAX_WINDOW: Duration = Duration::from_secs(31 * 24 * 3600);
/// Most requests a limit may allow per window.
pub const MAX_REQUESTS: u64 = 1_000_000_000;
/// Longest key value kept as it is in a counter's name; longer ones are replaced by a digest.
const MAX_KEY_VALUE: usize = 128;

/// One request to count against an operation's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitCheck {
    /// Names the counter: service, operation, key kind and key value. Distinct limits never
    /// share a bucket; the same limit has the same bucket on every replica.
    pub bucket: String,
    pub key: LimitKey,
    /// The value counted by, as the trace shows it; `None` when the request has none (all
    /// such requests share one counter, so that leaving the value out never lifts the limit).
    pub value: Option<String>,
    pub requests: u64,
    pub per: Duration,
    pub location: Arc<str>,
}

impl LimitCheck {
    pub fn new(service: &str, operation: &str, limit: &RateLimit, value: Option<&str>) -> Self {
        let shown = value.map(|v| {
            if v.len() <= MAX_KEY_VALUE && !v.chars().any(char::is_control) {
                v.to_owned()
            } else {
                // Long or odd values (hostile claims) name the counter by a digest.
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, v.as_bytes());
                let hex: String = digest.as_ref()[..16]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("sha256:{hex}")
            }
        });
        // The unit separator cannot occur in names (validated) nor in `shown` (no controls).
        let bucket = format!(
            "{service}\u{1f}{operation}\u{1f}{}\u{1f}{}",
            limit.key.as_str(),
            shown.as_deref().unwrap_or("")
        );
        Self {
            bucket,
            key: limit.key,
            value: shown,
            requests: limit.requests,
            per: limit.per,
            location: limit.location.clone(),
        }
    }

    fn per_millis(&self) -> u64 {
        (self.per.as_millis() as u64).max(1)
    }

    /// The window `now_millis` (since the epoch) falls in.
    pub fn window(&self, now_millis: u64) -> u64 {
        now_millis / self.per_millis()
    }

    /// Milliseconds from `now_millis` until its window ends.
    pub fn millis_left(&self, now_millis: u64) -> u64 {
        (self.window(now_millis) + 1) * self.per_millis() - now_millis
    }
}

/// Where a count came from: the trace and the metrics say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountedBy {
    /// This process' counters: the only counters there are.
    Local,
    /// The counter shared by every replica.
    Shared,
    /// This process' counters because the shared store did not answer.
    LocalFallback,
}

impl CountedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            CountedBy::Local => "local",
            CountedBy::Shared => "shared",
            CountedBy::LocalFallback => "local_fallback",
        }
    }
}

/// The requests counted in the current window, this one included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub count: u64,
    /// Milliseconds until the window ends.
    pub millis_left: u64,
    pub counted_by: CountedBy,
}

impl Count {
    pub fn exceeds(&self, check: &LimitCheck) -> bool {
        self.count > check.requests
    }

    /// Whole seconds a client waits before the window ends (at least 1), for `Retry-After`.
    pub fn retry_after_secs(&self) -> u64 {
        self.millis_left.div_ceil(1000).max(1)
    }
}

/// Buckets kept at most by default.
pub const DEFAULT_MAX_BUCKETS: usize = 100_000;

/// The count of one bucket in one window.
#[derive(Debug, Clone, Copy, Default)]
struct Counter {
    /// When the counted window ends (milliseconds since the epoch), which names the window;
    /// after it the counter is dead.
    ends_millis: u64,
    count: u64,
}

/// This process' counters: one per bucket, for the current window only. Bounded: when full,
/// counters of past windows are dropped (at most one sweep per second), and a bucket that
/// still finds no room is counted with every other such bucket of its limit, which can only
/// make the limit stricter, never lift it.
#[derive(Debug)]
pub struct LocalCounters {
    counters: DashMap<Box<str>, Counter, foldhash::fast::RandomState>,
    max_buckets: usize,
    last_sweep_millis: AtomicU64,
}

impl Default for LocalCounters {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BUCKETS)
    }
}

impl LocalCounters {
    pub fn new(max_buckets: usize) -> Self {
        Self {
            counters: DashMap::default(),
            max_buckets: max_buckets.max(1),
            last_sweep_millis: AtomicU64::new(0),
        }
    }

    /// Counts one request against `check` at `now_millis` and returns the window's count.
    pub fn hit(&self, check: &LimitCheck, now_millis: u64, counted_by: CountedBy) -> Count {
        let ends_millis = now_millis + check.millis_left(now_millis);
        let count = if let Some(mut counter) = self.counters.get_mut(check.bucket.as_str()) {
            bump(&mut counter, ends_millis)
        } else {
            let bucket = if self.counters.len() < self.max_buckets || self.sweep(now_millis) {
                check.bucket.as_str()
            } else {
                // Full of live counters: share the overflow counter of this limit.
                let cut = check.bucket.rfind('\u{1f}').unwrap_or(check.bucket.len());
                &check.bucket[..cut]
            };
            let mut counter = self.counters.entry(bucket.into()).or_default();
            bump(&mut counter, ends_millis)
        };
        Count {
            count,
            millis_left: ends_millis - now_millis,
            counted_by,
        }
    }

    /// Drops dead counters if no sweep ran in the last second; whether there is room now.
    fn sweep(&self, now_millis: u64) -> bool {
        let last = self.last_sweep_millis.load(Ordering::Relaxed);
        if now_millis.saturating_sub(last) >= 1000
            && self
                .last_sweep_millis
                .compare_exchange(last, now_millis, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.counters.retain(|_, c| c.ends_millis > now_millis);
        }
        self.counters.len() < self.max_buckets
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.counters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }
}

/// Counts one request in the window ending at `ends_millis`, starting that window's count if
/// the counter still holds an earlier one.
fn bump(counter: &mut Counter, ends_millis: u64) -> u64 {
    if counter.ends_millis != ends_millis {
        *counter = Counter {
            ends_millis,
            count: 0,
        };
    }
    counter.count = counter.count.saturating_add(1);
    counter.count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u64, per_secs: u64) -> RateLimit {
        RateLimit {
            key: LimitKey::Subject,
            requests,
            per: Duration::from_secs(per_secs),
            location: "p.yaml:3".into(),
        }
    }

    #[test]
    fn counts_per_bucket_within_a_window_and_starts_again_in_the_next() {
        let counters = LocalCounters::default();
        let l = limit(2, 60);
        let alice = LimitCheck::new("svc", "op", &l, Some("alice"));
        let bob = LimitCheck::new("svc", "op", &l, Some("bob"));
        let t = 60_000 * 1000 + 5_000;
        let counts: Vec<u64> = (0..3)
            .map(|i| counters.hit(&alice, t + i, CountedBy::Local).count)
            .collect();
        assert_eq!(counts, [1, 2, 3]);
        let third = counters.hit(&alice, t, CountedBy::Local);
        assert!(third.exceeds(&alice));
        assert_eq!(third.millis_left, 55_000);
        assert_eq!(third.retry_after_secs(), 55);
        assert_eq!(counters.hit(&bob, t, CountedBy::Local).count, 1);
        // The next window starts from zero.
        assert_eq!(counters.hit(&alice, t + 55_000, CountedBy::Local).count, 1);
    }

    #[test]
    fn distinct_operations_and_key_kinds_never_share_a_bucket() {
        let a = LimitCheck::new("svc", "op", &limit(1, 1), Some("x"));
        let b = LimitCheck::new("svc", "op2", &limit(1, 1), Some("x"));
        let mut ip = limit(1, 1);
        ip.key = LimitKey::Ip;
        let c = LimitCheck::new("svc", "op", &ip, Some("x"));
        let none = LimitCheck::new("svc", "op", &limit(1, 1), None);
        let buckets = [&a.bucket, &b.bucket, &c.bucket, &none.bucket];
        for (i, x) in buckets.iter().enumerate() {
            for y in &buckets[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }

    #[test]
    fn hostile_key_values_are_named_by_a_digest() {
        let long = "a".repeat(10_000);
        let check = LimitCheck::new("svc", "op", &limit(1, 1), Some(&long));
        assert!(check.value.as_deref().unwrap().starts_with("sha256:"));
        assert!(check.bucket.len() < 100);
        let control = LimitCheck::new("svc", "op", &limit(1, 1), Some("a\u{1f}b"));
        assert!(control.value.as_deref().unwrap().starts_with("sha256:"));
    }

    #[test]
    fn a_full_table_drops_dead_counters_and_never_lifts_a_limit() {
        let counters = LocalCounters::new(2);
        let l = limit(1, 1);
        let t = 1_000_000;
        for who in ["a", "b"] {
            counters.hit(
                &LimitCheck::new("s", "o", &l, Some(who)),
                t,
                CountedBy::Local,
            );
        }
        // Full of live counters: c and d share the overflow counter.
        let c = counters.hit(
            &LimitCheck::new("s", "o", &l, Some("c")),
            t,
            CountedBy::Local,
        );
        let d = counters.hit(
            &LimitCheck::new("s", "o", &l, Some("d")),
            t,
            CountedBy::Local,
        );
        assert_eq!((c.count, d.count), (1, 2));
        assert!(d.exceeds(&LimitCheck::new("s", "o", &l, Some("d"))));
        // Two seconds on, the old windows are dead and make room.
        let e = counters.hit(
            &LimitCheck::new("s", "o", &l, Some("e")),
            t + 2_000,
            CountedBy::Local,
        );
        assert_eq!(e.count, 1);
        assert!(counters.len() <= 2);
    }
}
