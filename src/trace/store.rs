//! The recent-decisions store: a fixed ring of slots written in turn, so that inserting is
//! O(1) and the oldest record is the one overwritten, with an index from decision id to slot.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use dashmap::DashMap;

use super::cap::{Interner, cap_decision};
use crate::decision::{Decision, Outcome};

/// Records kept when no capacity is configured.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Records listed when the caller names no limit.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// Most records one list returns, whatever limit is asked for: a page stays a page.
pub const MAX_LIST_LIMIT: usize = 1_000;

/// A decision as stored: capped and scrubbed (see [`MAX_RECORD_BYTES`](super::MAX_RECORD_BYTES)),
/// with its time as a number for filtering.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoredDecision {
    /// The decision, with long values cut (marked `…(truncated, …)`) and secret header values
    /// replaced by `REDACTED`.
    pub decision: Decision,
    /// Milliseconds since the Unix epoch, from the id (a ULID), or else from `time`; 0 if
    /// neither can be read.
    pub unix_millis: i64,
    /// Approximate heap bytes the record takes.
    pub approx_bytes: usize,
    /// Whether anything of the decision was cut, removed or redacted to store it (secret
    /// header values aside, which are always redacted).
    pub truncated: bool,
}

impl StoredDecision {
    /// A capped, scrubbed copy of `decision`, as [`TraceStore::record`] stores it; for
    /// decisions that come from elsewhere (another replica), which get the same limits.
    pub fn of(decision: &Decision) -> Self {
        Self::capped(decision, &Interner::default())
    }

    fn capped(decision: &Decision, interner: &Interner) -> Self {
        let capped = cap_decision(decision, interner);
        let unix_millis = ulid::Ulid::from_string(&decision.id)
            .ok()
            .map(|u| i64::try_from(u.timestamp_ms()).unwrap_or(i64::MAX))
            .or_else(|| parse_millis(&decision.time))
            .unwrap_or(0);
        Self {
            decision: capped.decision,
            unix_millis,
            approx_bytes: capped.bytes,
            truncated: capped.truncated,
        }
    }
}

/// Which records [`TraceStore::list`] returns; every field that is set must match.
#[derive(Debug, Clone, Default)]
pub struct DecisionFilter {
    /// The API service's name, exactly.
    pub service: Option<String>,
    pub outcome: Option<Outcome>,
    /// The HTTP status of the decision.
    pub status: Option<u16>,
    /// The token's `sub` claim, exactly.
    pub subject: Option<String>,
    /// Only decisions at or after this time (milliseconds since the Unix epoch).
    pub since_millis: Option<i64>,
    /// A case-insensitive substring of the URL, service, operation, subject or decision id;
    /// empty matches everything.
    pub text: Option<String>,
}

impl DecisionFilter {
    /// Whether `record` passes every condition that is set.
    pub fn matches(&self, record: &StoredDecision) -> bool {
        Matcher::new(self).matches(record)
    }
}

/// A filter prepared for matching many records: the text needle lower-cased once.
struct Matcher<'f> {
    filter: &'f DecisionFilter,
    needle: Option<String>,
}

impl<'f> Matcher<'f> {
    fn new(filter: &'f DecisionFilter) -> Self {
        Self {
            filter,
            needle: filter
                .text
                .as_deref()
                .filter(|t| !t.is_empty())
                .map(str::to_lowercase),
        }
    }

    fn matches(&self, record: &StoredDecision) -> bool {
        let f = self.filter;
        let d = &record.decision;
        let subject = d.token.as_ref().and_then(|t| t.sub.as_deref());
        f.outcome.is_none_or(|o| o == d.outcome)
            && f.status.is_none_or(|s| s == d.status)
            && f.since_millis.is_none_or(|t| record.unix_millis >= t)
            && f.service
                .as_deref()
                .is_none_or(|s| d.service.as_deref() == Some(s))
            && f.subject.as_deref().is_none_or(|s| subject == Some(s))
            && self.needle.as_deref().is_none_or(|needle| {
                [
                    Some(d.request.url.as_str()),
                    d.service.as_deref(),
                    d.operation.as_deref(),
                    subject,
                    Some(d.id.as_str()),
                ]
                .into_iter()
                .flatten()
                .any(|hay| contains_lowercase(hay, needle))
            })
    }
}

/// Whether `hay` contains `needle` (already lower-case), ignoring case.
fn contains_lowercase(hay: &str, needle: &str) -> bool {
    if needle.is_ascii() {
        // ASCII bytes never occur inside a multi-byte UTF-8 sequence: a byte-wise search is
        // exact, and needs no lower-cased copy of every URL.
        let needle = needle.as_bytes();
        hay.len() >= needle.len()
            && hay
                .as_bytes()
                .windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle))
    } else {
        hay.to_lowercase().contains(needle)
    }
}

/// What one slot of the ring holds: the record written with sequence number `seq`.
struct Slot {
    seq: u64,
    record: Arc<StoredDecision>,
}

/// The index key of a decision id, if it is a ULID: its two halves folded into one word.
/// Two live ids folding alike (odds near 2^-64 for 80 random bits) only makes the older one
/// unfindable by id; [`TraceStore::get`] compares the id itself before answering.
fn index_key(id: &str) -> Option<u64> {
    let n = u128::from(ulid::Ulid::from_string(id).ok()?);
    Some((n as u64) ^ ((n >> 64) as u64))
}

/// The recent decisions: at most `capacity` records, the oldest overwritten first. Safe to
/// share between threads; inserting takes one slot lock and one index shard lock.
pub struct TraceStore {
    slots: Box<[RwLock<Option<Slot>>]>,
    /// Sequence number of the next insert; insert `n` goes to slot `n % capacity`.
    next: AtomicU64,
    /// Decision id (see [`index_key`]) to the sequence number of its record.
    index: DashMap<u64, u64, foldhash::fast::RandomState>,
    interner: Interner,
    len: AtomicUsize,
    /// Sum of the records' `approx_bytes`.
    record_bytes: AtomicUsize,
}

impl fmt::Debug for TraceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceStore")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .field("approx_bytes", &self.approx_bytes())
            .finish_non_exhaustive()
    }
}

impl Default for TraceStore {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl TraceStore {
    /// An empty store that keeps the `capacity` most recent decisions (at least one). Its
    /// slot and index tables are allocated at once: about 60 bytes per unit of capacity
    /// before any record is stored.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            slots: (0..capacity).map(|_| RwLock::new(None)).collect(),
            next: AtomicU64::new(0),
            index: DashMap::with_capacity_and_hasher(capacity, Default::default()),
            interner: Interner::default(),
            len: AtomicUsize::new(0),
            record_bytes: AtomicUsize::new(0),
        }
    }

    /// Stores a capped, scrubbed copy of `decision`, evicting the oldest record when full,
    /// and returns the copy. Never fails. Only decisions whose id is a ULID (as the engine
    /// makes them) can be found again by [`get`](Self::get); others are only listed.
    pub fn record(&self, decision: &Decision) -> Arc<StoredDecision> {
        let record = Arc::new(StoredDecision::capped(decision, &self.interner));
        let key = index_key(&decision.id);

        let seq = self.next.fetch_add(1, Ordering::AcqRel);
        let evicted = {
            let mut slot = self
                .slot(seq)
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if slot.as_ref().is_some_and(|s| s.seq > seq) {
                // A whole lap of later inserts overtook this one: it is already the oldest.
                return record;
            }
            self.record_bytes
                .fetch_add(record.approx_bytes, Ordering::Relaxed);
            // Under the slot lock, so that an eviction of this slot cannot run between.
            if let Some(key) = key {
                self.index.insert(key, seq);
            }
            let evicted = slot.replace(Slot {
                seq,
                record: record.clone(),
            });
            match &evicted {
                Some(old) => {
                    // A ULID id is never cut, so the stored id gives the same key.
                    if let Some(old_key) = index_key(&old.record.decision.id) {
                        // The same id may have been recorded again since; keep that entry.
                        self.index.remove_if(&old_key, |_, s| *s == old.seq);
                    }
                    self.record_bytes
                        .fetch_sub(old.record.approx_bytes, Ordering::Relaxed);
                }
                None => {
                    self.len.fetch_add(1, Ordering::Relaxed);
                }
            }
            evicted
        };
        // The evicted record is freed here, outside the lock (unless a reader holds it).
        drop(evicted);
        record
    }

    /// The record of decision `id` (a ULID, in any case), or `None` if it is unknown, was
    /// evicted, or `id` is not a ULID.
    pub fn get(&self, id: &str) -> Option<Arc<StoredDecision>> {
        let key = index_key(id)?;
        let seq = self.index.get(&key).map(|entry| *entry)?;
        let slot = self
            .slot(seq)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        slot.as_ref()
            .filter(|s| s.seq == seq)
            // Distinct ids can share a key; answer only for the same id.
            .filter(|s| s.record.decision.id.eq_ignore_ascii_case(id))
            .map(|s| s.record.clone())
    }

    /// The most recent records that match `filter`, newest first, at most `limit` of them
    /// (and never more than [`MAX_LIST_LIMIT`]). Looks at each stored record at most once;
    /// records inserted while it runs may be left out.
    pub fn list(&self, filter: &DecisionFilter, limit: usize) -> Vec<Arc<StoredDecision>> {
        let limit = limit.min(MAX_LIST_LIMIT);
        let mut found = Vec::new();
        if limit == 0 {
            return found;
        }
        let matcher = Matcher::new(filter);
        let head = self.next.load(Ordering::Acquire);
        let oldest = head.saturating_sub(self.slots.len() as u64);
        for seq in (oldest..head).rev() {
            let slot = self
                .slot(seq)
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            // A slot still holding an older record (its insert is under way) or already a
            // newer one (written after `head` was read) is not part of this listing.
            if let Some(s) = slot.as_ref()
                && s.seq == seq
                && matcher.matches(&s.record)
            {
                found.push(s.record.clone());
                if found.len() == limit {
                    break;
                }
            }
        }
        found
    }

    /// Records stored now (at most the capacity).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most records the store keeps.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Approximate heap bytes of the store: its records plus its slot and index tables.
    /// Strings shared with the policy set are not counted; `benches/store.rs` finds the
    /// figure within 1% of the bytes really allocated (before the allocator's own overhead).
    pub fn approx_bytes(&self) -> usize {
        let slots = self.slots.len() * size_of::<RwLock<Option<Slot>>>();
        // One control byte per bucket besides the entry itself.
        let index = self.index.capacity() * (size_of::<(u64, u64)>() + 1);
        slots + index + self.record_bytes.load(Ordering::Relaxed)
    }

    fn slot(&self, seq: u64) -> &RwLock<Option<Slot>> {
        // The remainder is below the slot count, which is a `usize`.
        &self.slots[(seq % self.slots.len() as u64) as usize]
    }
}

/// Milliseconds since the epoch of an RFC 3339 time, if it is one.
fn parse_millis(time: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339(time).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::OnceLock;
    use std::time::{SystemTime, UNIX_EPOCH};

    use serde_json::{Value, json};

    use super::*;
    use crate::decision::{DecisionRequest, Engine, Step, TokenSummary, TraceEntry};
    use crate::policy::PolicySet;
    use crate::trace::MAX_RECORD_BYTES;

    /// Average footprint a typical record must stay under (the store's own accounting).
    const TYPICAL_RECORD_TARGET: usize = 2 * 1024;

    fn fixtures() -> &'static (PolicySet, Engine) {
        static FIXTURES: OnceLock<(PolicySet, Engine)> = OnceLock::new();
        FIXTURES.get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policies");
            let policies = crate::policy::load_dir(&dir, &Default::default())
                .unwrap_or_else(|e| panic!("fixture policies are invalid:\n{e}"));
            (policies, Engine::default())
        })
    }

    fn decide(method: &str, url: &str, headers: &[(&str, &str)]) -> Decision {
        let (policies, engine) = fixtures();
        let client = Some("192.0.2.7".parse().unwrap());
        engine.decide(
            policies,
            &DecisionRequest {
                method,
                url,
                headers,
                client,
            },
            SystemTime::now(),
        )
    }

    /// GET of item `n` of `app` without a token: a 401 deny.
    fn unauthorised(n: usize) -> Decision {
        let d = decide("GET", &format!("https://api.test/app/v1/items/{n}"), &[]);
        assert_eq!((d.outcome, d.status), (Outcome::Deny, 401), "{}", d.audit);
        d
    }

    /// A URL no service covers: a 404 deny without a service.
    fn unknown_host(n: usize) -> Decision {
        let d = decide("GET", &format!("https://nowhere.test/x/{n}"), &[]);
        assert_eq!(
            (d.outcome, d.status, d.service.as_deref()),
            (Outcome::Deny, 404, None)
        );
        d
    }

    /// An allowed decision of `app` for subject `sub` (made from a 401 by hand).
    fn allowed(n: usize, sub: &str) -> Decision {
        let mut d = unauthorised(n);
        d.outcome = Outcome::Allow;
        d.status = 200;
        d.body = None;
        d.token = Some(TokenSummary {
            sub: Some(sub.to_owned()),
            client_id: Some("web".into()),
            iss: Some("https://issuer.test".into()),
            aud: vec!["app".into()],
            exp: None,
            kid: Some("rsa-a".into()),
            alg: "RS256".into(),
            delegated: true,
        });
        d
    }

    /// A real 403 of `app`'s `admin` operation with a signed token: base URL, token,
    /// operation and nested rule entries in the trace.
    fn full_trace_deny(n: usize) -> Decision {
        static AUTHORIZATION: OnceLock<String> = OnceLock::new();
        let authorization = AUTHORIZATION.get_or_init(|| {
            let pem = std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/rsa-a.pem"),
            )
            .unwrap();
            let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let claims = json!({
                "iss": "https://issuer.test", "aud": "app", "sub": "user-17",
                "client_id": "web", "groups": ["staff"], "amr": ["pwd"],
                "iat": now, "exp": now + 3600,
            });
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
            header.kid = Some("rsa-a".into());
            format!(
                "Bearer {}",
                jsonwebtoken::encode(&header, &claims, &key).unwrap()
            )
        });
        let d = decide(
            "POST",
            &format!("https://api.test/app/v1/admin/jobs/{n}?dry-run=true"),
            &[("authorization", authorization)],
        );
        assert_eq!((d.outcome, d.status), (Outcome::Deny, 403), "{}", d.audit);
        assert!(d.trace.len() >= 5, "{:#?}", d.trace);
        d
    }

    fn ids(records: &[Arc<StoredDecision>]) -> Vec<&str> {
        records.iter().map(|r| r.decision.id.as_str()).collect()
    }

    #[test]
    fn oldest_decisions_are_evicted_first_at_capacity() {
        let store = TraceStore::new(3);
        let decisions: Vec<Decision> = (0..5).map(unauthorised).collect();
        for d in &decisions {
            store.record(d);
        }
        assert_eq!((store.len(), store.capacity()), (3, 3));
        assert!(store.get(&decisions[0].id).is_none());
        assert!(store.get(&decisions[1].id).is_none());
        for d in &decisions[2..] {
            let got = store.get(&d.id).expect("a recent decision is kept");
            assert_eq!(got.decision.request.url, d.request.url);
        }
        assert_eq!(store.index.len(), 3);
    }

    #[test]
    fn list_is_newest_first_and_respects_the_limit() {
        let store = TraceStore::new(10);
        let decisions: Vec<Decision> = (0..6).map(unauthorised).collect();
        for d in &decisions {
            store.record(d);
        }
        let all = store.list(&DecisionFilter::default(), 100);
        let newest_first: Vec<&str> = decisions.iter().rev().map(|d| d.id.as_str()).collect();
        assert_eq!(ids(&all), newest_first);
        assert_eq!(
            ids(&store.list(&DecisionFilter::default(), 2)),
            newest_first[..2]
        );
        assert!(store.list(&DecisionFilter::default(), 0).is_empty());
    }

    #[test]
    fn list_never_returns_more_than_the_maximum_limit() {
        let store = TraceStore::new(MAX_LIST_LIMIT + 10);
        let d = unauthorised(0);
        for _ in 0..MAX_LIST_LIMIT + 10 {
            store.record(&d);
        }
        assert_eq!(
            store.list(&DecisionFilter::default(), usize::MAX).len(),
            MAX_LIST_LIMIT
        );
    }

    #[test]
    fn each_filter_selects_its_records_and_filters_combine_with_and() {
        let store = TraceStore::new(100);
        let alice = store.record(&allowed(1, "alice"));
        let bob = store.record(&allowed(2, "bob"));
        let denied = store.record(&unauthorised(3));
        let unknown = store.record(&unknown_host(4));
        let select = |f: DecisionFilter| {
            let mut found = store.list(&f, 100);
            found.sort_by(|a, b| a.decision.id.cmp(&b.decision.id));
            ids(&found)
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let id = |r: &Arc<StoredDecision>| r.decision.id.clone();
        let mut app = vec![id(&alice), id(&bob), id(&denied)];
        app.sort();

        let service = |s: &str| DecisionFilter {
            service: Some(s.into()),
            ..Default::default()
        };
        assert_eq!(select(service("app")), app);
        assert!(select(service("ap")).is_empty());
        let outcome = DecisionFilter {
            outcome: Some(Outcome::Deny),
            ..Default::default()
        };
        let mut denials = vec![id(&denied), id(&unknown)];
        denials.sort();
        assert_eq!(select(outcome.clone()), denials);
        let status = DecisionFilter {
            status: Some(404),
            ..Default::default()
        };
        assert_eq!(select(status), vec![id(&unknown)]);
        let subject = DecisionFilter {
            subject: Some("bob".into()),
            ..Default::default()
        };
        assert_eq!(select(subject), vec![id(&bob)]);

        // AND: service `app` and outcome deny is only the 401.
        let both = DecisionFilter {
            service: Some("app".into()),
            ..outcome
        };
        assert_eq!(select(both.clone()), vec![id(&denied)]);
        let none = DecisionFilter {
            status: Some(200),
            ..both
        };
        assert!(select(none).is_empty());
    }

    #[test]
    fn since_keeps_decisions_at_or_after_the_time_of_their_id() {
        let store = TraceStore::new(10);
        let base = 1_795_000_000_000u64;
        for (i, offset) in [0u64, 1_000, 2_000].into_iter().enumerate() {
            let mut d = unauthorised(i);
            d.id = ulid::Ulid::from_parts(base + offset, i as u128).to_string();
            let stored = store.record(&d);
            assert_eq!(stored.unix_millis, (base + offset) as i64);
        }
        let since = |millis: u64| DecisionFilter {
            since_millis: Some(millis as i64),
            ..Default::default()
        };
        assert_eq!(store.list(&since(base + 1_000), 10).len(), 2);
        assert_eq!(store.list(&since(base + 2_001), 10).len(), 0);

        // Without a ULID id, the time field is used.
        let mut d = unauthorised(9);
        d.id = "not-a-ulid".into();
        d.time = "2026-11-18T11:06:40.123Z".into();
        assert_eq!(store.record(&d).unix_millis, 1_795_000_000_123);
    }

    #[test]
    fn text_matches_url_service_operation_subject_and_id_ignoring_case() {
        let store = TraceStore::new(10);
        let alice = store.record(&allowed(41, "Alice@Example.com"));
        let other = store.record(&unknown_host(42));
        let text = |t: &str| DecisionFilter {
            text: Some(t.into()),
            ..Default::default()
        };
        let only_alice = vec![alice.decision.id.as_str()];
        assert_eq!(ids(&store.list(&text("ITEMS/41"), 10)), only_alice);
        assert_eq!(ids(&store.list(&text("alice@example"), 10)), only_alice);
        assert_eq!(ids(&store.list(&text("APP"), 10)), only_alice);
        let tail = &other.decision.id[20..].to_lowercase();
        assert_eq!(
            ids(&store.list(&text(tail), 10)),
            vec![other.decision.id.as_str()]
        );
        assert_eq!(store.list(&text(""), 10).len(), 2);
        assert!(store.list(&text("zzz-nothing"), 10).is_empty());
        let mut d = unauthorised(43);
        d.request.url = "https://api.test/app/v1/Straße".into();
        store.record(&d);
        assert_eq!(store.list(&text("STRASSE"), 10).len(), 0);
        assert_eq!(store.list(&text("straße"), 10).len(), 1);
    }

    #[test]
    fn get_answers_none_for_unknown_malformed_or_lookalike_ids() {
        let store = TraceStore::new(10);
        let d = unauthorised(7);
        store.record(&d);
        assert!(store.get(&d.id.to_lowercase()).is_some());
        assert!(store.get(&ulid::Ulid::new().to_string()).is_none());
        for hostile in [
            "",
            "x",
            "../../etc/passwd",
            &"Z".repeat(26),
            &"é".repeat(13),
        ] {
            assert!(store.get(hostile).is_none(), "{hostile}");
        }
        // The first character only carries 3 bits: `8…` decodes like `0…`.
        let mut lookalike = d.id.clone();
        let first = lookalike.remove(0);
        let aliased = char::from_digit(first.to_digit(10).unwrap() + 8, 36).unwrap();
        lookalike.insert(0, aliased.to_ascii_uppercase());
        assert!(store.get(&lookalike).is_none(), "{lookalike}");
    }

    #[test]
    fn a_huge_url_and_trace_value_are_cut_with_a_visible_marker() {
        let store = TraceStore::new(10);
        let mut d = full_trace_deny(1);
        d.request.url = format!("https://api.test/app/v1/{}", "a".repeat(100 * 1024));
        d.audit = format!(
            "Request to the URL \"{}\" denied by policy evaluation.",
            d.request.url
        );
        d.trace[0].actual = Some(Value::String("b".repeat(1024 * 1024)));
        d.trace[1].actual = Some(json!(
            (0..10_000)
                .map(|i| format!("group-{i}"))
                .collect::<Vec<_>>()
        ));
        d.trace[2].detail = Some("c".repeat(50_000));
        let stored = store.record(&d);
        let s = &stored.decision;

        assert!(stored.truncated);
        assert!(s.request.url.len() <= 2048 && s.request.url.contains("…(truncated"));
        assert!(s.audit.len() <= 2048 && s.audit.ends_with("denied by policy evaluation."));
        assert!(s.audit.contains("…(truncated"), "{}", s.audit);
        let actual = s.trace[0].actual.as_ref().unwrap().as_str().unwrap();
        assert!(
            actual.len() <= 256 && actual.ends_with("more bytes)"),
            "{actual}"
        );
        let groups = s.trace[1].actual.as_ref().unwrap().as_array().unwrap();
        assert!(groups.len() <= 32);
        assert!(
            groups
                .last()
                .unwrap()
                .as_str()
                .unwrap()
                .contains("more items)")
        );
        let detail = s.trace[2].detail.as_deref().unwrap();
        assert!(detail.len() <= 1024 && detail.contains("…(truncated"));
        assert!(
            stored.approx_bytes <= MAX_RECORD_BYTES,
            "{}",
            stored.approx_bytes
        );
        // The original decision is untouched.
        assert_eq!(d.request.url.len(), 24 + 100 * 1024);
    }

    #[test]
    fn a_record_built_to_be_as_large_as_possible_stays_within_the_record_budget() {
        let store = TraceStore::new(10);
        let mut d = full_trace_deny(2);
        let big = |n: usize| "é".repeat(n);
        let huge_value = json!({
            "k": (0..100).map(|i| json!({format!("key-{i}-{}", big(300)): [big(400), [[[[1]]]]]})).collect::<Vec<_>>(),
        });
        d.id = big(1000);
        d.time = big(1000);
        d.service = Some(big(5000).into());
        d.operation = Some(big(5000).into());
        d.policy_revision = big(5000).into();
        d.request.method = big(1000);
        d.request.url = big(100_000);
        d.request.client = Some(big(1000));
        for i in 0..100 {
            d.headers
                .0
                .push((format!("x-{i}-{}", big(100)).into(), big(10_000)));
            d.upstream_headers
                .0
                .push((format!("y-{i}").into(), big(10_000)));
        }
        let body = d.body.as_mut().unwrap();
        body.message = big(10_000);
        body.target = big(10_000);
        for detail in body.details.iter_mut().chain([].iter_mut()) {
            detail.message = big(10_000);
        }
        let template = body.details[0].clone();
        body.details.extend((0..100).map(|_| template.clone()));
        let token = d.token.as_mut().unwrap();
        token.sub = Some(big(10_000));
        token.iss = Some(big(10_000));
        token.client_id = Some(big(10_000));
        token.kid = Some(big(10_000));
        token.exp = Some(big(10_000));
        token.alg = big(10_000);
        token.aud = (0..100).map(|_| big(10_000)).collect();
        let entry = TraceEntry {
            step: Step::Rule,
            rule: Some(big(5000).into()),
            attribute: big(5000).into(),
            operator: "equals".into(),
            expected: Some(Arc::new(huge_value.clone())),
            actual: Some(huge_value),
            result: false,
            decisive: true,
            depth: 0,
            detail: Some(big(10_000)),
            location: Some(big(5000).into()),
        };
        d.trace = (0..1000).map(|_| entry.clone()).collect();
        d.audit = big(100_000);

        let stored = store.record(&d);
        assert!(stored.truncated);
        assert!(
            stored.approx_bytes <= MAX_RECORD_BYTES,
            "{} bytes",
            stored.approx_bytes
        );
        assert!(stored.decision.trace.iter().any(|e| e.decisive));
        let json = serde_json::to_string(&stored.decision).unwrap();
        assert!(json.contains("record size limit"), "{json}");
        assert!(json.len() < 2 * MAX_RECORD_BYTES, "{}", json.len());
    }

    #[test]
    fn secret_header_values_and_token_shaped_text_are_never_stored() {
        let store = TraceStore::new(10);
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLjAifQ.c2lnbmF0dXJl";
        let mut d = allowed(5, "alice");
        d.headers
            .0
            .push(("Set-Cookie".into(), "session=secret-1".into()));
        d.upstream_headers
            .0
            .push(("authorization".into(), format!("Bearer {jwt}")));
        d.upstream_headers
            .0
            .push(("Cookie".into(), "session=secret-2".into()));
        d.upstream_headers
            .0
            .push(("proxy-authorization".into(), "Basic c2VjcmV0LTM=".into()));
        d.request.url = format!("https://api.test/app/v1/callback/{jwt}");
        d.trace[0].actual = Some(json!({"token": jwt}));
        let stored = store.record(&d);
        let json = serde_json::to_string(&stored.decision).unwrap();
        for secret in ["secret-1", "secret-2", "c2VjcmV0LTM=", jwt] {
            assert!(!json.contains(secret), "{secret} stored: {json}");
        }
        let s = &stored.decision;
        assert_eq!(s.headers.get("Set-Cookie"), Some("REDACTED"));
        assert_eq!(s.upstream_headers.get("authorization"), Some("REDACTED"));
        assert_eq!(s.request.url, "https://api.test/app/v1/callback/REDACTED");
    }

    #[test]
    fn concurrent_inserts_keep_exactly_capacity_records_all_findable() {
        const THREADS: usize = 4;
        const PER_THREAD: usize = 10_000;
        let store = TraceStore::new(1_000);
        let template = unauthorised(0);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let store = &store;
                let template = &template;
                s.spawn(move || {
                    let mut d = template.clone();
                    for i in 0..PER_THREAD {
                        d.id =
                            ulid::Ulid::from_parts(1_795_000_000_000, (t * PER_THREAD + i) as u128)
                                .to_string();
                        store.record(&d);
                        if i % 1000 == 0 {
                            let listed = store.list(&DecisionFilter::default(), MAX_LIST_LIMIT);
                            assert!(listed.len() <= store.capacity());
                        }
                    }
                });
            }
        });
        assert_eq!(store.len(), store.capacity());
        assert_eq!(store.index.len(), store.len());
        let listed = store.list(&DecisionFilter::default(), MAX_LIST_LIMIT);
        assert_eq!(listed.len(), store.capacity());
        for record in &listed {
            let got = store
                .get(&record.decision.id)
                .expect("a listed record is found");
            assert!(Arc::ptr_eq(&got, record));
        }
        let records: usize = listed.iter().map(|r| r.approx_bytes).sum();
        let slots_and_index = store.approx_bytes() - records;
        assert!(
            slots_and_index < 100 * store.capacity(),
            "{slots_and_index}"
        );
    }

    #[test]
    fn recording_the_same_id_again_keeps_it_findable() {
        let store = TraceStore::new(2);
        let d = unauthorised(8);
        store.record(&d);
        store.record(&d);
        store.record(&unauthorised(9));
        // The first copy is evicted; the second still answers for the id.
        assert!(store.get(&d.id).is_some());
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn a_capacity_of_zero_keeps_one_record() {
        let store = TraceStore::new(0);
        assert!(store.is_empty());
        store.record(&unauthorised(1));
        let last = store.record(&unauthorised(2));
        assert_eq!((store.capacity(), store.len()), (1, 1));
        assert_eq!(
            ids(&store.list(&DecisionFilter::default(), 10)),
            vec![last.decision.id.as_str()]
        );
    }

    #[test]
    fn typical_records_average_under_the_target_size() {
        let store = TraceStore::new(1_000);
        for i in 0..1_000 {
            let d = match i % 4 {
                0 => full_trace_deny(i),
                1 => unauthorised(i),
                2 => allowed(i, "alice"),
                _ => unknown_host(i),
            };
            store.record(&d);
        }
        let average = store.approx_bytes() / store.len();
        let deny = store.record(&full_trace_deny(9999));
        eprintln!(
            "average {average} bytes per record; a full-trace deny of {} entries takes {}",
            deny.decision.trace.len(),
            deny.approx_bytes
        );
        assert!(!deny.truncated);
        assert!(
            average <= TYPICAL_RECORD_TARGET,
            "{average} bytes per record on average"
        );
    }
}
