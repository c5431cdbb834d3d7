//! Which records a listing returns: [`DecisionFilter`], every set condition matched.

use super::StoredDecision;
use crate::decision::Outcome;

/// Which records [`TraceStore::list`](super::TraceStore::list) returns; every field that is set must match.
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
    /// Only decisions before this time (milliseconds since the Unix epoch): the cursor that
    /// pages back through the store.
    pub until_millis: Option<i64>,
    /// Only decisions the shadow policy set decided differently.
    pub shadow_differs: bool,
    /// A case-insensitive substring of the URL, service, operation, subject or decision id;
    /// empty matches everything.
    pub text: Option<String>,
    /// The W3C trace id the decision took part in.
    pub trace_id: Option<u128>,
}

impl DecisionFilter {
    /// Whether `record` passes every condition that is set.
    pub fn matches(&self, record: &StoredDecision) -> bool {
        Matcher::new(self).matches(record)
    }
}

/// A filter prepared for matching many records: the text needle lower-cased once.
pub(super) struct Matcher<'f> {
    filter: &'f DecisionFilter,
    needle: Option<String>,
}

impl<'f> Matcher<'f> {
    pub(super) fn new(filter: &'f DecisionFilter) -> Self {
        Self {
            filter,
            needle: filter
                .text
                .as_deref()
                .filter(|t| !t.is_empty())
                .map(str::to_lowercase),
        }
    }

    pub(super) fn matches(&self, record: &StoredDecision) -> bool {
        let f = self.filter;
        let d = record;
        let subject = d.subject();
        f.outcome.is_none_or(|o| o == d.outcome)
            && f.status.is_none_or(|s| s == d.status)
            && f.since_millis.is_none_or(|t| record.unix_millis >= t)
            && f.until_millis.is_none_or(|t| record.unix_millis < t)
            && (!f.shadow_differs || record.shadow_differs())
            && f.service.as_deref().is_none_or(|s| d.service() == Some(s))
            && f.subject.as_deref().is_none_or(|s| subject == Some(s))
            && f.trace_id
                .is_none_or(|t| d.trace_link.as_ref().is_some_and(|l| l.trace_id == t))
            && self.needle.as_deref().is_none_or(|needle| {
                [
                    Some(d.url()),
                    d.service(),
                    d.operation(),
                    subject,
                    Some(d.id()),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::trace::TraceStore;
    use crate::trace::fixtures::{allowed, ids, unauthorised, unknown_host};

    #[test]
    fn each_filter_selects_its_records_and_filters_combine_with_and() {
        let store = TraceStore::new(100);
        let alice = store.record(&allowed(1, "alice"));
        let bob = store.record(&allowed(2, "bob"));
        let denied = store.record(&unauthorised(3));
        let unknown = store.record(&unknown_host(4));
        let select = |f: DecisionFilter| {
            let mut found = store.list(&f, 100);
            found.sort_by(|a, b| a.id().cmp(b.id()));
            ids(&found)
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let id = |r: &Arc<StoredDecision>| r.id().to_owned();
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
        let only_alice = vec![alice.id()];
        assert_eq!(ids(&store.list(&text("ITEMS/41"), 10)), only_alice);
        assert_eq!(ids(&store.list(&text("alice@example"), 10)), only_alice);
        assert_eq!(ids(&store.list(&text("APP"), 10)), only_alice);
        let tail = &other.id()[20..].to_lowercase();
        assert_eq!(ids(&store.list(&text(tail), 10)), vec![other.id()]);
        assert_eq!(store.list(&text(""), 10).len(), 2);
        assert!(store.list(&text("zzz-nothing"), 10).is_empty());
        let mut d = unauthorised(43);
        d.request.url = "https://api.test/app/v1/Straße".into();
        store.record(&d);
        assert_eq!(store.list(&text("STRASSE"), 10).len(), 0);
        assert_eq!(store.list(&text("straße"), 10).len(), 1);
    }
}
