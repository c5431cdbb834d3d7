//! The recent-decisions store: a fixed ring of slots written in turn, so that inserting is
//! O(1) and the oldest record is the one overwritten, with an index from decision id to slot.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use dashmap::DashMap;

use super::filter::{DecisionFilter, Matcher};
use super::record::{Interner, RebuildFrom, StoredDecision};
use super::revisions::Revisions;
use crate::decision::{Decision, Rebuild};
use crate::policy::PolicySet;

/// Records kept when no capacity is configured.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Records listed when the caller names no limit.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// Most records one list returns, whatever limit is asked for: a page stays a page.
pub const MAX_LIST_LIMIT: usize = 1_000;

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
    /// The policy sets records that keep only their inputs were decided with.
    revisions: Revisions,
    len: AtomicUsize,
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
            revisions: Revisions::default(),
            len: AtomicUsize::new(0),
        }
    }

    /// Stores a capped, scrubbed copy of `decision`, evicting the oldest record when full,
    /// and returns the copy. Never fails. Only decisions whose id is a ULID (as the engine
    /// makes them) can be found again by [`get`](Self::get); others are only listed.
    pub fn record(&self, decision: &Decision) -> Arc<StoredDecision> {
        self.insert(StoredDecision::capped(decision, &self.interner, None))
    }

    /// Stores `decision`, which the engine made with `policies`, as [`record`](Self::record)
    /// does; when the engine can decide it again exactly from its inputs ([`Rebuild::of`]),
    /// the record keeps only those, and the store holds `policies` (within
    /// [`HELD_REVISIONS`](super::HELD_REVISIONS)) to rebuild the rest when it is read.
    pub fn record_decided(
        &self,
        decision: &Decision,
        policies: &Arc<PolicySet>,
    ) -> Arc<StoredDecision> {
        let rebuild = Rebuild::of(decision).map(|how| RebuildFrom {
            revision: self.revisions.of(policies),
            how,
        });
        let record = StoredDecision::capped(decision, &self.interner, rebuild);
        // Every decision the tests make checks that the record reads back as its whole
        // record would.
        #[cfg(debug_assertions)]
        if record.rebuilds() {
            let whole = StoredDecision::of(decision).decision();
            assert_eq!(record.decision(), whole, "a rebuilt record differs");
        }
        self.insert(record)
    }

    fn insert(&self, record: StoredDecision) -> Arc<StoredDecision> {
        let record = Arc::new(record);
        let key = index_key(record.id());

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
                    if let Some(old_key) = index_key(old.record.id()) {
                        // The same id may have been recorded again since; keep that entry.
                        self.index.remove_if(&old_key, |_, s| *s == old.seq);
                    }
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
            .filter(|s| s.record.id().eq_ignore_ascii_case(id))
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

    /// Policy sets held to rebuild records (at most [`HELD_REVISIONS`](super::HELD_REVISIONS)).
    pub fn held_revisions(&self) -> usize {
        self.revisions.held()
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

    /// Approximate heap bytes of the store: its records plus its slot, index and interner
    /// tables. Strings shared with the policy set are not counted; `benches/store.rs` finds
    /// the figure within 1% of the bytes really allocated (before the allocator's own
    /// overhead). Adds up the records now (a metrics scrape's work, not every insert's: a
    /// running total was a count that both server threads wrote on every decision).
    pub fn approx_bytes(&self) -> usize {
        let slots = self.slots.len() * size_of::<RwLock<Option<Slot>>>();
        // One control byte per bucket besides the entry itself.
        let index = self.index.capacity() * (size_of::<(u64, u64)>() + 1);
        let records: usize = (self.slots.iter())
            .map(|slot| {
                let slot = slot.read().unwrap_or_else(PoisonError::into_inner);
                slot.as_ref().map_or(0, |s| s.record.approx_bytes)
            })
            .sum();
        slots + index + self.interner.table_bytes() + records
    }

    fn slot(&self, seq: u64) -> &RwLock<Option<Slot>> {
        // The remainder is below the slot count, which is a `usize`.
        &self.slots[(seq % self.slots.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::fixtures::{engine_made, ids, policy_set, unauthorised};

    #[test]
    fn a_record_of_its_inputs_reads_back_as_the_decision_and_is_smaller() {
        let set = policy_set();
        let (whole, inputs_only) = (TraceStore::new(100), TraceStore::new(100));
        for d in engine_made() {
            let kept = whole.record(&d);
            let rebuilds = inputs_only.record_decided(&d, &set);
            assert!(!kept.rebuilds() && rebuilds.rebuilds(), "{}", d.audit);
            let read = inputs_only.get(&d.id).expect("recorded");
            assert_eq!(read.decision(), d, "{}", d.audit);
            assert_eq!(read.decision(), kept.decision(), "{}", d.audit);
            assert!(
                rebuilds.approx_bytes < kept.approx_bytes,
                "{}: {} bytes, whole {}",
                d.audit,
                rebuilds.approx_bytes,
                kept.approx_bytes
            );
        }
        assert_eq!(inputs_only.held_revisions(), 1);
    }

    #[test]
    fn a_record_whose_policy_set_is_let_go_shows_what_it_kept() {
        let store = TraceStore::new(100);
        let decisions = engine_made();
        let old = policy_set();
        for d in &decisions {
            store.record_decided(d, &old);
        }
        // Newer sets push the old one out of the budget.
        let newer: Vec<_> = (0..crate::trace::HELD_REVISIONS)
            .map(|_| policy_set())
            .collect();
        for set in &newer {
            store.record_decided(&unauthorised(99), set);
        }
        assert_eq!(store.held_revisions(), crate::trace::HELD_REVISIONS);
        drop(old);
        for d in &decisions {
            let read = store.get(&d.id).expect("recorded").decision();
            let what = &d.audit;
            assert_eq!(
                (
                    read.outcome,
                    read.status,
                    &read.body,
                    &read.token,
                    &read.audit
                ),
                (d.outcome, d.status, &d.body, &d.token, &d.audit),
                "{what}"
            );
            assert_eq!(read.headers, d.headers, "{what}");
            assert_eq!(
                (&read.request, &read.inputs),
                (&d.request, &d.inputs),
                "{what}"
            );
            assert!(read.upstream_headers.0.is_empty(), "{what}");
            let [entry] = &read.trace[..] else {
                panic!("{what}: {:#?}", read.trace)
            };
            let detail = entry.detail.as_deref().unwrap_or_default();
            assert!(
                &*entry.operator == "notKept" && detail.contains("is no longer held"),
                "{what}: {entry:?}"
            );
            assert!(detail.contains(&*d.policy_revision), "{what}: {detail}");
        }
    }

    #[test]
    fn a_rebuilt_trace_over_a_cap_is_cut_when_read_as_its_whole_record_would_be() {
        let set = policy_set();
        let store = TraceStore::new(10);
        // A path longer than a trace value may be: the URL is kept, its trace values cut.
        let d = crate::trace::fixtures::real_allow_at(&"7".repeat(600));
        let record = store.record_decided(&d, &set);
        assert!(record.rebuilds());
        let whole = StoredDecision::of(&d);
        assert!(whole.truncated);
        let read = record.decision();
        assert_eq!(read, whole.decision());
        assert_ne!(read.trace, d.trace);
        assert!(
            serde_json::to_string(&read.trace)
                .unwrap()
                .contains("truncated"),
            "{:#?}",
            read.trace
        );
    }

    #[test]
    fn kept_facts_count_unless_the_token_cache_holds_them_too() {
        let set = policy_set();
        let store = TraceStore::new(10);
        let cached = crate::trace::fixtures::real_allow(1);
        let mut alone = cached.clone();
        let token = (alone.inputs.as_mut())
            .and_then(|i| i.token.as_mut())
            .expect("a verified token's inputs");
        let facts = (**token.verified.as_ref().expect("facts")).clone();
        let json_len = facts.json().expect("facts write as JSON").get().len();
        token.verified = Some(Arc::new(facts));
        let shared = store.record_decided(&cached, &set);
        let own = store.record_decided(&alone, &set);
        assert!(shared.keeps_inputs_unwritten() && own.keeps_inputs_unwritten());
        assert_eq!(own.approx_bytes, shared.approx_bytes + json_len);
    }

    #[test]
    fn inputs_holding_token_shaped_text_are_never_kept() {
        let set = policy_set();
        let store = TraceStore::new(10);
        let mut d = crate::trace::fixtures::real_allow(1);
        let token = (d.inputs.as_mut())
            .and_then(|i| i.token.as_mut())
            .expect("a verified token's inputs");
        let mut facts = (**token.verified.as_ref().expect("facts")).clone();
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
        facts
            .claims
            .insert("leak".into(), serde_json::Value::from(jwt));
        token.verified = Some(Arc::new(facts));
        let record = store.record_decided(&d, &set);
        assert!(!record.rebuilds());
        let json = serde_json::to_string(&record.decision()).unwrap();
        assert!(!json.contains("eyJ"), "{json}");
        assert!(json.contains("token-shaped text"), "{json}");
        // The same decision without it keeps its inputs as they are, unwritten; so does a
        // refusal that quotes nothing of the request, but not one that names its scheme.
        let clean = crate::trace::fixtures::real_allow(2);
        let record = store.record_decided(&clean, &set);
        assert!(record.rebuilds() && record.keeps_inputs_unwritten());
        let record = store.record_decided(&unauthorised(3), &set);
        assert!(record.rebuilds() && record.keeps_inputs_unwritten());
        let basic = crate::trace::fixtures::decide(
            "GET",
            "https://api.test/app/v1/items/4",
            &[("authorization", "Basic dXNlcjpwYXNz")],
        );
        let record = store.record_decided(&basic, &set);
        assert!(record.rebuilds() && !record.keeps_inputs_unwritten());
        assert_eq!(record.decision(), basic);
    }

    #[test]
    fn decisions_a_record_of_inputs_cannot_tell_whole_are_kept_whole() {
        let set = policy_set();
        let store = TraceStore::new(10);
        // Made by hand: no inputs, as another replica's decision or a refused input.
        let mut d = unauthorised(1);
        d.inputs = None;
        assert!(!store.record_decided(&d, &set).rebuilds());
        // The engine's, but over a cap: a rebuild would not cut what the record cut.
        let mut long = unauthorised(2);
        long.request.url = format!("https://api.test/app/v1/{}", "q".repeat(20_000));
        let record = store.record_decided(&long, &set);
        assert!(!record.rebuilds() && record.truncated);
        assert_eq!(store.held_revisions(), 1);
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
            assert_eq!(got.decision().request.url, d.request.url);
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
            let got = store.get(record.id()).expect("a listed record is found");
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
            vec![last.id()]
        );
    }
}
