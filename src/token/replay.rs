//! The DPoP replay cache: proof ids (`jti`) seen within the proof window, bounded in memory.
//! A full cache refuses new proofs (fails closed) rather than forgetting ids still in their
//! window.
//!
//! The table is our own rather than a general map because of one cache miss: a cache that
//! serves proofs fills up (ids are only dropped when it is full), so its table is larger than
//! the CPU's caches and every check of a new id misses them. Here an id's place is known
//! before its proof's signature is verified ([`ReplayCache::prefetch`]), so the line is
//! fetched while the signature is checked instead of after. Open addressing with linear
//! probing, at most half full, in shards of their own lock.

use std::hash::BuildHasher as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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

/// Ids a shard holds at most: large caches are split so that concurrent checks rarely wait
/// for one another, small ones are one shard (so that their capacity is exact).
const SHARD_IDS: usize = 2_048;

#[derive(Debug)]
pub struct ReplayCache {
    shards: Box<[Shard]>,
    /// Every shard's slot count less one (a power of two less one).
    slot_mask: usize,
    hasher: foldhash::fast::RandomState,
    /// How many ids the shards hold, expired or not (for `len`).
    held: AtomicUsize,
    full_refusals: AtomicU64,
}

#[derive(Debug)]
struct Shard {
    table: Mutex<Table>,
    /// Where `table`'s slots start, read without the lock to prefetch (they never move).
    slots_at: usize,
}

/// A slot: the id's 64 bits after the shard's (never 0: 0 is an empty slot), and the Unix
/// second after which the id may be forgotten. Ids are SHA-256 output, so 64 bits tell them
/// apart: a fresh proof is taken for a replayed one with odds of about one in 10^14 at a full
/// cache.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    fingerprint: u64,
    until: i64,
}

#[derive(Debug)]
struct Table {
    slots: Box<[Slot]>,
    /// Non-empty slots, expired or not.
    used: usize,
    /// Ids this shard may hold; its slots are at least twice as many.
    capacity: usize,
    /// When expired ids were last dropped, so that a full shard is swept at most once a second.
    last_sweep: i64,
}

impl Default for ReplayCache {
    fn default() -> Self {
        Self::new(DEFAULT_REPLAY_CAPACITY)
    }
}

impl ReplayCache {
    /// A cache of `capacity` ids (about: the shards fill unevenly), its table allocated now
    /// (about 40 bytes an id): a cache that serves proofs fills up, and growing the table on
    /// the way would rehash it on a request's time.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let shards = capacity.div_ceil(SHARD_IDS).next_power_of_two();
        let per_shard = capacity.div_ceil(shards);
        let slot_count = (2 * per_shard).next_power_of_two();
        let shards = (0..shards)
            .map(|_| {
                let slots = vec![Slot::default(); slot_count];
                let slots = slots.into_boxed_slice();
                Shard {
                    slots_at: slots.as_ptr() as usize,
                    table: Mutex::new(Table {
                        slots,
                        used: 0,
                        capacity: per_shard,
                        last_sweep: i64::MIN,
                    }),
                }
            })
            .collect();
        Self {
            shards,
            slot_mask: slot_count - 1,
            hasher: foldhash::fast::RandomState::default(),
            held: AtomicUsize::new(0),
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

    /// The shard of `id` and its fingerprint, which is also where in the shard's slots the
    /// probe starts. The hash is seeded, so that no client can pile its ids onto one shard or
    /// one run of slots.
    fn place(&self, id: ProofId) -> (&Shard, u64) {
        let [a, b, c, d, e, f, g, h, ..] = id;
        let hash = self
            .hasher
            .hash_one(u64::from_le_bytes([a, b, c, d, e, f, g, h]));
        let shard = &self.shards[(hash >> 48) as usize & (self.shards.len() - 1)];
        (shard, hash.max(1))
    }

    /// Asks the CPU to fetch the line where `id` would be found, so that a [`check`] of it
    /// after the proof's signature is verified finds it in cache. A hint: nothing is read.
    ///
    /// [`check`]: Self::check
    pub fn prefetch(&self, id: ProofId) {
        let (shard, fingerprint) = self.place(id);
        let at = shard.slots_at + (fingerprint as usize & self.slot_mask) * size_of::<Slot>();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            // SAFETY: a prefetch never faults and loads nothing into the program, whatever the
            // address; this one is inside the shard's slots anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::with_exposed_provenance(at)) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = at;
    }

    /// Remembers `id` until `until` unless it was seen and is still remembered at `now`.
    pub fn check(&self, id: ProofId, until: i64, now: i64) -> Seen {
        let (shard, fingerprint) = self.place(id);
        let mut table = shard.table.lock().unwrap_or_else(|e| e.into_inner());
        let used = table.used;
        let seen = match table.check(fingerprint, until, now) {
            Some(seen) => seen,
            None => {
                table.sweep(now);
                table.check(fingerprint, until, now).unwrap_or(Seen::Full)
            }
        };
        if table.used > used {
            self.held.fetch_add(table.used - used, Ordering::Relaxed);
        } else if table.used < used {
            self.held.fetch_sub(used - table.used, Ordering::Relaxed);
        }
        if seen == Seen::Full {
            self.full_refusals.fetch_add(1, Ordering::Relaxed);
        }
        seen
    }

    /// Proofs refused because the cache was full, since start.
    pub fn full_refusals(&self) -> u64 {
        self.full_refusals.load(Ordering::Relaxed)
    }

    /// Ids held, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Table {
    /// Finds `fingerprint` in its run of slots (starting where the fingerprint points, ending
    /// at an empty slot): replayed when it is there and not expired at `now`; else remembered
    /// until `until`, in the first expired slot of the run or the empty slot that ends it.
    /// `None` when that would need an empty slot and the shard holds its capacity.
    fn check(&mut self, fingerprint: u64, until: i64, now: i64) -> Option<Seen> {
        let mask = self.slots.len() - 1;
        let mut expired = None;
        let mut i = fingerprint as usize & mask;
        // At most half the slots are used, so the run ends.
        loop {
            let slot = self.slots[i];
            if slot.fingerprint == 0 {
                break;
            }
            if slot.fingerprint == fingerprint {
                if slot.until >= now {
                    return Some(Seen::Replayed);
                }
                self.slots[i].until = until;
                return Some(Seen::New);
            }
            if slot.until < now && expired.is_none() {
                expired = Some(i);
            }
            i = (i + 1) & mask;
        }
        let taken = Slot { fingerprint, until };
        if let Some(expired) = expired {
            self.slots[expired] = taken;
            return Some(Seen::New);
        }
        if self.used >= self.capacity {
            return None;
        }
        self.slots[i] = taken;
        self.used += 1;
        Some(Seen::New)
    }

    /// Drops the ids expired at `now`, at most once a second: the live ones are put back in
    /// runs of their own, as if the dropped ones had never been.
    fn sweep(&mut self, now: i64) {
        if self.last_sweep == now {
            return;
        }
        self.last_sweep = now;
        let live: Vec<Slot> = (self.slots.iter())
            .filter(|s| s.fingerprint != 0 && s.until >= now)
            .copied()
            .collect();
        self.slots.fill(Slot::default());
        self.used = 0;
        for slot in live {
            self.check(slot.fingerprint, slot.until, now);
        }
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
        // Ids 1 and 2 expired at 150: one slot was reused or both swept.
        assert!(cache.len() <= 2);
        assert_eq!(cache.check([1; 16], 250, 151), Seen::New);
        assert_eq!(cache.check([3; 16], 250, 152), Seen::Replayed);
    }

    /// Ids as a busy server sees them: many live at once, windows ending at different times,
    /// expired ones reused and swept; every id is new exactly once within its window, as a
    /// plain map of id to expiry says, and the cache never holds more than its capacity.
    #[test]
    fn the_cache_agrees_with_a_map_of_ids_to_expiry() {
        let mut rng = fastrand::Rng::with_seed(11);
        for capacity in [1, 3, 100, 5_000] {
            let cache = ReplayCache::new(capacity);
            let mut model = std::collections::HashMap::<ProofId, i64>::new();
            let mut now = 1_000;
            for _ in 0..40_000 {
                now += i64::from(rng.u8(..4) == 0);
                // Ids from a small space, so that replays and reuse of expired ids happen.
                let id = ReplayCache::proof_id("k", &rng.u32(..(3 * capacity as u32)).to_string());
                let until = now + rng.i64(0..20);
                let replayed = model.get(&id).is_some_and(|u| *u >= now);
                let seen = cache.check(id, until, now);
                // A replay is always caught, and nothing else is taken for one.
                assert_eq!(
                    seen == Seen::Replayed,
                    replayed,
                    "capacity {capacity} at {now}"
                );
                if seen == Seen::Full {
                    // Refused only by a shard holding its capacity (swept this second).
                    let (shard, _) = cache.place(id);
                    let table = shard.table.lock().unwrap();
                    assert!(table.used >= table.capacity && table.last_sweep == now);
                }
                if seen == Seen::New {
                    model.insert(id, until);
                }
                if rng.u8(..64) == 0 {
                    assert!(model.values().filter(|u| **u >= now).count() <= capacity);
                }
            }
        }
    }

    #[test]
    fn of_threads_checking_one_id_at_once_exactly_one_is_first() {
        let cache = ReplayCache::new(DEFAULT_REPLAY_CAPACITY);
        for round in 0..200 {
            let id = ReplayCache::proof_id("k", &round.to_string());
            let barrier = std::sync::Barrier::new(4);
            let firsts: usize = std::thread::scope(|s| {
                let threads: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            cache.prefetch(id);
                            usize::from(cache.check(id, 160, 100) == Seen::New)
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).sum()
            });
            assert_eq!(firsts, 1, "round {round}");
        }
    }
}
