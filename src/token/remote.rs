//! Key sets published at a URL (`jwks.url`, or found through OpenID discovery): the latest
//! good key set of each, shared by every service and every policy revision that names it.
//! Nothing here fetches; the server's key fetcher fills these in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::Algorithm;

use super::jwks::{KeySet, parse_jwks_lenient};

/// Where a remote key set is published.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeySetLocation {
    /// A JWKS document at this URL.
    Jwks(String),
    /// The `jwks_uri` of the issuer's `/.well-known/openid-configuration`.
    Discovery { issuer: String },
}

impl std::fmt::Display for KeySetLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySetLocation::Jwks(url) => f.write_str(url),
            KeySetLocation::Discovery { issuer } => {
                write!(
                    f,
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                )
            }
        }
    }
}

/// The algorithms a remote key set may serve: public-key ones only. A shared secret published
/// at a URL is no secret.
pub const REMOTE_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The current state of one remote key set.
#[derive(Debug)]
pub struct RemoteKeySet {
    pub location: KeySetLocation,
    /// The refresh interval the policies ask for (the shortest, when several do).
    refresh_millis: AtomicI64,
    current: ArcSwapOption<KeySet>,
    /// Unix milliseconds of the last successful fetch; 0 before the first.
    loaded_at: AtomicI64,
}

impl RemoteKeySet {
    pub fn new(location: KeySetLocation, refresh: Duration) -> Self {
        Self {
            location,
            refresh_millis: AtomicI64::new(refresh.as_millis() as i64),
            current: ArcSwapOption::empty(),
            loaded_at: AtomicI64::new(0),
        }
    }

    /// The latest good key set; `None` until one was loaded.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    pub fn refresh(&self) -> Duration {
        Duration::from_millis(self.refresh_millis.load(Ordering::Relaxed).max(0) as u64)
    }

    pub fn loaded_at_millis(&self) -> i64 {
        self.loaded_at.load(Ordering::Relaxed)
    }

    /// Parses a fetched JWKS document and makes it current. Keys that cannot be used are
    /// skipped; a document without a usable key is refused and the last good set stays.
    ///
    /// Returns whether the key material changed.
    pub fn install(&self, json: &[u8], now_millis: i64) -> Result<bool, String> {
        let set = parse_jwks_lenient(json, REMOTE_ALGORITHMS)?;
        let changed = self
            .current
            .load()
            .as_ref()
            .is_none_or(|old| old.fingerprint != set.fingerprint);
        self.current.store(Some(Arc::new(set)));
        self.loaded_at.store(now_millis, Ordering::Relaxed);
        Ok(changed)
    }
}

/// Every remote key set the policies name, by location; kept across policy reloads so that a
/// reload never forgets keys it already has.
#[derive(Debug, Default)]
pub struct RemoteKeyRegistry {
    sets: Mutex<HashMap<KeySetLocation, Arc<RemoteKeySet>>>,
}

impl RemoteKeyRegistry {
    /// The key set at `location`, created empty on first use.
    pub fn register(&self, location: KeySetLocation, refresh: Duration) -> Arc<RemoteKeySet> {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        let set = sets
            .entry(location.clone())
            .or_insert_with(|| Arc::new(RemoteKeySet::new(location, refresh)))
            .clone();
        let millis = refresh.as_millis() as i64;
        set.refresh_millis.fetch_min(millis, Ordering::Relaxed);
        set
    }

    /// Every registered key set, in a stable order.
    pub fn all(&self) -> Vec<Arc<RemoteKeySet>> {
        let sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = sets.values().cloned().collect();
        all.sort_by(|a, b| a.location.cmp(&b.location));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/policies/keys")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn a_key_set_is_shared_by_location_and_keeps_the_shortest_refresh() {
        let registry = RemoteKeyRegistry::default();
        let location = KeySetLocation::Jwks("https://idp.test/jwks".into());
        let a = registry.register(location.clone(), Duration::from_secs(600));
        let b = registry.register(location, Duration::from_secs(60));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.refresh(), Duration::from_secs(60));
        assert_eq!(registry.all().len(), 1);
    }

    #[test]
    fn garbage_keeps_the_last_good_set() {
        let set = RemoteKeySet::new(
            KeySetLocation::Jwks("https://idp.test/jwks".into()),
            Duration::from_secs(60),
        );
        assert!(set.current().is_none());
        assert_eq!(set.install(&fixture("app.jwks.json"), 1), Ok(true));
        assert_eq!(
            set.install(&fixture("app.jwks.json"), 2),
            Ok(false),
            "same keys"
        );
        let before = set.current().unwrap().fingerprint;
        assert!(set.install(b"<html>", 3).is_err());
        assert!(set.install(br#"{"keys": []}"#, 3).is_err());
        assert_eq!(set.current().unwrap().fingerprint, before);
        assert_eq!(set.loaded_at_millis(), 2);
    }

    #[test]
    fn shared_secrets_and_unusable_keys_are_skipped() {
        let set = RemoteKeySet::new(
            KeySetLocation::Jwks("https://idp.test/jwks".into()),
            Duration::from_secs(60),
        );
        // Only an `oct` key: nothing usable.
        assert!(set.install(&fixture("hs.jwks.json"), 1).is_err());
        // A weak RSA key next to good ones is skipped, not fatal.
        let mut doc: serde_json::Value = serde_json::from_slice(&fixture("app.jwks.json")).unwrap();
        let weak: serde_json::Value = serde_json::from_slice(&fixture("weak.jwks.json")).unwrap();
        doc["keys"]
            .as_array_mut()
            .unwrap()
            .push(weak["keys"][0].clone());
        assert_eq!(set.install(doc.to_string().as_bytes(), 2), Ok(true));
        let current = set.current().unwrap();
        assert!(current.by_kid("rsa-a").is_some());
        assert!(current.by_kid("rsa-1024").is_none());
    }
}
