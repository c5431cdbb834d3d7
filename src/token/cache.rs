//! A bounded cache of verified tokens, so that a repeated token skips the signature check.
//!
//! Entries are keyed by SHA-256 over the key set's fingerprint and the token: the token itself
//! is not kept, and a token verified with one key set is never taken as verified for another.
//! An entry is never used at or after the token's `exp`.

use std::sync::Arc;

use super::VerifiedToken;

pub type CacheKey = [u8; 32];

/// Verified tokens kept by default: each entry is the claims of one token, a few hundred bytes.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

pub struct TokenCache {
    entries: quick_cache::sync::Cache<CacheKey, Arc<VerifiedToken>>,
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
        }
    }

    pub fn key(fingerprint: &[u8], token: &str) -> CacheKey {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(fingerprint);
        ctx.update(token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        key
    }

    pub(crate) fn get(&self, key: &CacheKey, now: i64) -> Option<Arc<VerifiedToken>> {
        let entry = self.entries.get(key)?;
        if entry.exp.is_none_or(|exp| now >= exp) {
            self.entries.remove(key);
            return None;
        }
        Some(entry)
    }

    pub(crate) fn insert(&self, key: CacheKey, token: Arc<VerifiedToken>, now: i64) {
        if token.exp.is_some_and(|exp| now < exp) {
            self.entries.insert(key, token);
        }
    }

    /// Drops every entry whose token has expired at `now`; servers call this periodically so
    /// that expired claims do not linger in memory.
    pub fn purge_expired(&self, now: i64) {
        self.entries
            .retain(|_, token| token.exp.is_some_and(|exp| now < exp));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn token(exp: Option<i64>) -> Arc<VerifiedToken> {
        Arc::new(VerifiedToken {
            alg: jsonwebtoken::Algorithm::RS256,
            kid: None,
            claims: Default::default(),
            sub: None,
            client_id: None,
            iss: None,
            aud: vec![],
            exp,
            nbf: None,
            iat: None,
        })
    }

    #[test]
    fn entries_are_never_used_at_or_after_expiry() {
        let cache = TokenCache::new(10);
        let key = TokenCache::key(b"fp", "t");
        cache.insert(key, token(Some(100)), 50);
        assert!(cache.get(&key, 99).is_some());
        assert!(cache.get(&key, 100).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn expired_or_unexpiring_tokens_are_not_stored_and_purge_drops_expired() {
        let cache = TokenCache::new(10);
        cache.insert(TokenCache::key(b"fp", "a"), token(Some(10)), 10);
        cache.insert(TokenCache::key(b"fp", "b"), token(None), 10);
        assert!(cache.is_empty());
        cache.insert(TokenCache::key(b"fp", "c"), token(Some(20)), 10);
        cache.insert(TokenCache::key(b"fp", "d"), token(Some(30)), 10);
        cache.purge_expired(25);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn the_key_binds_the_key_set() {
        assert_ne!(TokenCache::key(b"one", "t"), TokenCache::key(b"two", "t"));
    }
}
