//! The DPoP replay cache: proof ids (`jti`) seen within the proof window, bounded in memory.
//! A full cache refuses new proofs (fails closed) rather than forgetting ids still in their
//! window.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;

/// Proof ids kept by default; at 60 s windows, this covers about 1 600 proofs a second.
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;

/// A proof id as stored: 16 bytes of SHA-256 over the key thumbprint and the `jti`, so that
/// ids of different keys never meet and stored ids have a fixed size.
pub type ProofId = [u8; 16];

/// What the cache says of a proof id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First use: now remembered until the end of its window.
    New,
    Replayed,
    /// The cache is full of ids still in their window: the proof is refused.
    Full,
}

#[derive(Debug)]
pub struct ReplayCache {
    /// A proof id's first 8 bytes → the Unix second after which it may be forgotten. Ids are
    /// SHA-256 output, so 64 bits tell them apart (a fresh proof is taken for a replayed one
    /// with odds of one in 10^14 at a full cache) in a table two thirds the size: each check
    /// misses the cache once, and a smaller table misses less often.
    seen: DashMap<u64, i64, foldhash::fast::RandomState>,
    /// How many ids `seen` holds, kept here: `DashMap::len` locks every shard.
    held: AtomicUsize,
    capacity: usize,
    /// When expired ids were last dropped, so that a full cache is swept at most once a second.
    last_sweep: AtomicI64,
    full_refusals: AtomicU64,
}

impl Default for ReplayCache {
    fn default() -> Self {
        Self::new(DEFAULT_REPLAY_CAPACITY)
    }
}

impl ReplayCache {
    /// A cache of `capacity` ids, its table allocated now (about 30 bytes an id): ids are
    /// only dropped when it is full, so a cache that serves proofs fills up, and growing the
    /// table on the way would rehash it on a request's time.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            seen: DashMap::with_capacity_and_hasher(capacity, Default::default()),
            held: AtomicUsize::new(0),
            capacity,
            last_sweep: AtomicI64::new(i64::MIN),
            full_refusals: AtomicU64::new(0),
        }
    }

    /// The id of proof `jti` made with the key of thumbprint `jkt`.
    pub fn proof_id(jkt: &str, jti: &str) -> ProofId {
        use aws_lc_rs::digest::{SHA256, digest};
        // One-shot over a stack buffer: a digest `Context` allocates and frees an EVP context
        // on every proof. A thumbprint is 43 characters, a checked `jti` at most 256.
        let mut text = [0u8; 64 + 1 + 256];
        let len = jkt.len() + 1 + jti.len();
        let hash = match text.get_mut(..len) {
            Some(text) => {
                let (key, rest) = text.split_at_mut(jkt.len());
                key.copy_from_slice(jkt.as_bytes());
                rest[0] = b'.';
                rest[1..].copy_from_slice(jti.as_bytes());
                digest(&SHA256, text)
            }
            None => digest(&SHA256, [jkt, ".", jti].concat().as_bytes()),
        };
        let mut id = [0; 16];
        id.copy_from_slice(&hash.as_ref()[..16]);
        id
    }

    /// Remembers `id` until `until` unless it was seen and is still remembered at `now`.
    pub fn check(&self, id: ProofId, until: i64, now: i64) -> Seen {
        let [a, b, c, d, e, f, g, h, ..] = id;
        let id = u64::from_le_bytes([a, b, c, d, e, f, g, h]);
        if self.len() >= self.capacity && !self.seen.contains_key(&id) {
            self.sweep(now);
            if self.len() >= self.capacity {
                self.full_refusals.fetch_add(1, Ordering::Relaxed);
                return Seen::Full;
            }
        }
        match self.seen.entry(id) {
            dashmap::Entry::Occupied(mut e) => {
                if *e.get() >= now {
                    Seen::Replayed
                } else {
                    e.insert(until);
                    Seen::New
                }
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(until);
                self.held.fetch_add(1, Ordering::Relaxed);
                Seen::New
            }
        }
    }

    fn sweep(&self, now: i64) {
        let last = self.last_sweep.load(Ordering::Relaxed);
        if last == now
            || self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.seen.retain(|_, until| {
            let keep = *until >= now;
            if !keep {
                self.held.fetch_sub(1, Ordering::Relaxed);
            }
            keep
        });
    }

    /// Proofs refused because the cache was full, since start.
    pub fn full_refusals(&self) -> u64 {
        self.full_refusals.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_refused_within_its_window_and_accepted_after() {
        let cache = ReplayCache::new(10);
        let id = ReplayCache::proof_id("k", "1");
        assert_eq!(cache.check(id, 160, 100), Seen::New);
        assert_eq!(cache.check(id, 170, 110), Seen::Replayed);
        assert_eq!(cache.check(id, 260, 200), Seen::New);
        assert_ne!(id, ReplayCache::proof_id("other key", "1"));
        // The id replicas share through Redis: SHA-256 of `jkt.jti`, however long.
        let sha256 = |text: &str| crate::token::dpop::token_digest(text);
        assert_eq!(id[..], sha256("k.1")[..16]);
        let long = "j".repeat(400);
        assert_eq!(
            ReplayCache::proof_id("k", &long)[..],
            sha256(&format!("k.{long}"))[..16]
        );
    }

    #[test]
    fn a_full_cache_fails_closed_and_counts_until_ids_expire() {
        let cache = ReplayCache::new(2);
        assert_eq!(cache.check([1; 16], 150, 100), Seen::New);
        assert_eq!(cache.check([2; 16], 150, 100), Seen::New);
        assert_eq!(cache.check([3; 16], 150, 100), Seen::Full);
        assert_eq!(cache.check([1; 16], 150, 101), Seen::Replayed);
        assert_eq!(cache.full_refusals(), 1);
        assert_eq!(cache.check([3; 16], 250, 151), Seen::New);
        assert_eq!(cache.len(), 1);
    }
}
