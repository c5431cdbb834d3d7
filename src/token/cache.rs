//! A bounded cache of verified tokens, so that a repeated token skips the signature check.
//!
//! Entries are found by a fast seeded hash of the key set's fingerprint and the token, and
//! hold both, compared in full on every hit: two tokens that hash alike only miss, so a
//! forged token can never be answered with another token's claims, and a token verified with
//! one key set is never taken as verified for another. (A cryptographic hash as the key would
//! need no comparison, but costs a fifth of a cached decision.) An entry is never used at or
//! after the token's `exp`.

use std::hash::BuildHasher;
use std::sync::Arc;

use super::VerifiedToken;

/// Where to look a token up: its hash, and what an entry must hold to be this token's.
#[derive(Debug, Clone, Copy)]
pub struct CacheKey<'a> {
    hash: u64,
    fingerprint: &'a [u8],
    token: &'a str,
}

/// Verified tokens kept by default: each entry is the claims of one token, a few hundred bytes.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

struct Entry {
    fingerprint: Box<[u8]>,
    token: Box<str>,
    verified: Arc<VerifiedToken>,
}

pub struct TokenCache {
    entries: quick_cache::sync::Cache<u64, Arc<Entry>>,
    hasher: foldhash::fast::RandomState,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("len", &self.entries.len())
            .field("capacity", &self.entries.capacity())
            .finish()
    }
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(capacity.max(1)),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    pub fn key<'a>(&self, fingerprint: &'a [u8], token: &'a str) -> CacheKey<'a> {
        CacheKey {
            hash: self.hasher.hash_one((fingerprint, token)),
            fingerprint,
            token,
        }
    }

    pub(crate) fn get(&self, key: &CacheKey<'_>, now: i64) -> Option<Arc<VerifiedToken>> {
        let entry = self.entries.get(&key.hash)?;
        if *entry.fingerprint != *key.fingerprint || *entry.token != *key.token {
            return None;
        }
        if entry.verified.exp.is_none_or(|exp| now >= exp) {
            self.entries.remove(&key.hash);
            return None;
        }
        Some(entry.verified.clone())
    }

    pub(crate) fn insert(&self, key: CacheKey<'_>, verified: Arc<VerifiedToken>, now: i64) {
        if verified.exp.is_some_and(|exp| now < exp) {
            self.entries.insert(
                key.hash,
                Arc::new(Entry {
                    fingerprint: key.fingerprint.into(),
                    token: key.token.into(),
                    verified,
                }),
            );
        }
    }

    /// Drops every entry whose token has expired at `now`; servers call this periodically so
    /// that expired claims do not linger in memory.
    pub fn purge_expired(&self, now: i64) {
        self.entries
            .retain(|_, entry| entry.verified.exp.is_some_and(|exp| now < exp));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(DEFAULT_CACHE_CAPACITY)
    }
}

/// What was read from a text a client sends again and again (a certificate, a DPoP proof's
/// header), kept for the texts seen lately. Found, as tokens are, by a seeded hash of the
/// text and compared with the text in full, so that two texts that hash alike only miss;
/// texts longer than `max_text` are read every time, which bounds the memory to about
/// `capacity × max_text`.
pub struct TextCache<V> {
    entries: quick_cache::sync::Cache<u64, Arc<(Box<str>, V)>>,
    hasher: foldhash::fast::RandomState,
    max_text: usize,
}

impl<V: Clone> TextCache<V> {
    pub fn new(capacity: usize, max_text: usize) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(capacity.max(1)),
            hasher: foldhash::fast::RandomState::default(),
            max_text,
        }
    }

    /// What `read` makes of `text`, from the cache when `text` was read before; an error is
    /// never kept.
    pub fn get_or_read<E>(
        &self,
        text: &str,
        read: impl FnOnce(&str) -> Result<V, E>,
    ) -> Result<V, E> {
        let hash = self.hasher.hash_one(text);
        if let Some(entry) = self.entries.get(&hash)
            && *entry.0 == *text
        {
            return Ok(entry.1.clone());
        }
        let value = read(text)?;
        if text.len() <= self.max_text {
            self.entries
                .insert(hash, Arc::new((text.into(), value.clone())));
        }
        Ok(value)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<V> std::fmt::Debug for TextCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextCache")
            .field("len", &self.entries.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_is_read_once_a_long_one_or_a_failing_one_every_time() {
        let cache = TextCache::<usize>::new(8, 4);
        let reads = std::cell::Cell::new(0);
        let read = |t: &str| -> Result<usize, ()> {
            reads.set(reads.get() + 1);
            if t == "bad" { Err(()) } else { Ok(t.len()) }
        };
        assert_eq!(cache.get_or_read("abcd", read), Ok(4));
        assert_eq!(cache.get_or_read("abcd", read), Ok(4));
        assert_eq!(reads.get(), 1, "read once");
        assert_eq!(cache.get_or_read("abcde", read), Ok(5));
        assert_eq!(cache.get_or_read("abcde", read), Ok(5));
        assert_eq!(reads.get(), 3, "longer than max_text: read each time");
        assert_eq!(cache.get_or_read("bad", read), Err(()));
        assert_eq!(cache.get_or_read("bad", read), Err(()));
        assert_eq!(reads.get(), 5, "an error is not kept");
        assert_eq!(cache.len(), 1);
    }

    fn token(exp: Option<i64>) -> Arc<VerifiedToken> {
        Arc::new(VerifiedToken {
            exp,
            ..VerifiedToken::of_claims(serde_json::json!({}))
        })
    }

    #[test]
    fn entries_are_never_used_at_or_after_expiry() {
        let cache = TokenCache::new(10);
        let key = cache.key(b"fp", "t");
        cache.insert(key, token(Some(100)), 50);
        assert!(cache.get(&key, 99).is_some());
        assert!(cache.get(&key, 100).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn expired_or_unexpiring_tokens_are_not_stored_and_purge_drops_expired() {
        let cache = TokenCache::new(10);
        cache.insert(cache.key(b"fp", "a"), token(Some(10)), 10);
        cache.insert(cache.key(b"fp", "b"), token(None), 10);
        assert!(cache.is_empty());
        cache.insert(cache.key(b"fp", "c"), token(Some(20)), 10);
        cache.insert(cache.key(b"fp", "d"), token(Some(30)), 10);
        cache.purge_expired(25);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn the_key_binds_the_key_set() {
        let cache = TokenCache::new(10);
        cache.insert(cache.key(b"one", "t"), token(Some(100)), 50);
        assert!(cache.get(&cache.key(b"one", "t"), 60).is_some());
        assert!(cache.get(&cache.key(b"two", "t"), 60).is_none());
    }

    #[test]
    fn a_hash_collision_is_a_miss_never_another_tokens_claims() {
        let cache = TokenCache::new(10);
        let key = cache.key(b"fp", "token-a");
        cache.insert(key, token(Some(100)), 50);
        // Another token (or key set) forced onto the same hash: not answered from the entry.
        let forged = CacheKey {
            token: "token-b",
            ..key
        };
        assert!(cache.get(&forged, 60).is_none());
        let other_keys = CacheKey {
            fingerprint: b"other",
            ..key
        };
        assert!(cache.get(&other_keys, 60).is_none());
        assert!(cache.get(&key, 60).is_some());
    }
}
