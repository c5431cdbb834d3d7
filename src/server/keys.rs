//! Fetching remote key sets (`jwks.url`, OpenID discovery): at start, on a refresh interval,
//! and at once when a token names a key id the set lacks (rate-limited, one fetch shared by
//! every waiting request). A failed fetch or a garbage answer keeps the last good key set.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::metrics::Metrics;
use super::reload::unix_millis;
use crate::token::remote::{KeySetLocation, RemoteKeyRegistry, RemoteKeySet};

/// Largest key set or discovery document read; identity providers publish a few KiB.
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;
/// Time to connect to a key server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for a whole fetch (connect, request, answer).
const TOTAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest interval between scheduled fetches, whatever `Cache-Control` says.
const MIN_REFRESH: Duration = Duration::from_secs(30);
/// Longest wait between retries after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a request with an unknown `kid` waits for the refetch it triggered.
const ON_DEMAND_WAIT: Duration = Duration::from_secs(3);

/// Fetch settings.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Allow `http` key URLs on loopback addresses (tests, local identity providers).
    pub allow_insecure_loopback: bool,
    /// At most one fetch triggered by unknown key ids per key set per this interval.
    pub on_demand_interval: Duration,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            allow_insecure_loopback: false,
            on_demand_interval: Duration::from_secs(30),
        }
    }
}

/// One key set's fetch task and the requests waiting on it.
#[derive(Debug)]
struct FetchHandle {
    set: Arc<RemoteKeySet>,
    wake: Notify,
    /// Counts finished fetches, so waiters know when the one they asked for is done.
    fetches: watch::Sender<u64>,
    /// A fetch asked for by an unknown `kid` is pending or running.
    on_demand: AtomicBool,
    last_on_demand: Mutex<Option<Instant>>,
}

/// The fetch tasks of every remote key set in the registry.
#[derive(Debug)]
pub struct KeyFetchers {
    pub registry: Arc<RemoteKeyRegistry>,
    client: reqwest::Client,
    config: FetchConfig,
    handles: Mutex<HashMap<KeySetLocation, Arc<FetchHandle>>>,
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{0}")]
    Http(String),
    #[error("answered {0}")]
    Status(u16),
    #[error("the answer is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("the discovery document has no usable `jwks_uri`: {0}")]
    Discovery(String),
}

/// `max-age` of a `Cache-Control` header.
fn max_age(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::CACHE_CONTROL)?.to_str().ok()?;
    value.split(',').find_map(|directive| {
        let (name, seconds) = directive.trim().split_once('=')?;
        name.eq_ignore_ascii_case("max-age")
            .then(|| seconds.trim().trim_matches('"').parse::<u64>().ok())
            .flatten()
            .map(Duration::from_secs)
    })
}

/// When to fetch again after a success: the policy's `refresh`, shortened by the server's
/// `Cache-Control: max-age` but never below `MIN_REFRESH` (30 s).
pub fn next_refresh(refresh: Duration, max_age: Option<Duration>) -> Duration {
    let floor = MIN_REFRESH.min(refresh);
    match max_age {
        Some(age) => age.clamp(floor, refresh.max(floor)),
        None => refresh,
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(MAX_BACKOFF)
}

impl KeyFetchers {
    pub fn new(registry: Arc<RemoteKeyRegistry>, config: FetchConfig) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(TOTAL_TIMEOUT)
            // A redirect could lead to plain http or elsewhere; key URLs are exact.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            registry,
            client,
            config,
            handles: Mutex::new(HashMap::new()),
        })
    }

    /// Starts a fetch task for every registered key set that has none yet. Needs a tokio
    /// runtime; without one it does nothing.
    pub fn start_new(self: &Arc<Self>, metrics: &Arc<Metrics>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        for set in self.registry.all() {
            if handles.contains_key(&set.location) {
                continue;
            }
            let handle = Arc::new(FetchHandle {
                set: set.clone(),
                wake: Notify::new(),
                fetches: watch::channel(0).0,
                on_demand: AtomicBool::new(false),
                last_on_demand: Mutex::new(None),
            });
            handles.insert(set.location.clone(), handle.clone());
            runtime.spawn(self.clone().run(handle, metrics.clone()));
        }
    }

    async fn run(self: Arc<Self>, handle: Arc<FetchHandle>, metrics: Arc<Metrics>) {
        let set = &handle.set;
        let label = set.location.to_string();
        let mut failures = 0u32;
        let mut delay = Duration::ZERO;
        loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = handle.wake.notified() => {}
            }
            let result = match self.fetch(&set.location).await {
                Ok((body, age)) => match set.install(&body, unix_millis()) {
                    Ok(changed) => {
                        failures = 0;
                        delay = next_refresh(set.refresh(), age);
                        if changed {
                            tracing::info!(key_set = %label, keys = set.current().map_or(0, |s| s.keys.len()), "key set loaded");
                        }
                        "ok"
                    }
                    Err(e) => {
                        tracing::warn!(key_set = %label, "key set refused, keeping the last good one: {e}");
                        "invalid"
                    }
                },
                Err(e) => {
                    tracing::warn!(key_set = %label, "key set fetch failed, keeping the last good one: {e}");
                    "error"
                }
            };
            if result != "ok" {
                failures += 1;
                delay = backoff(failures).min(set.refresh().max(Duration::from_secs(1)));
            }
            metrics.count_key_fetch(&label, result);
            handle.on_demand.store(false, Ordering::Release);
            handle.fetches.send_modify(|n| *n += 1);
        }
    }

    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
        let mut response = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| FetchError::Http(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(FetchError::TooLarge);
        }
        let age = max_age(response.headers());
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| FetchError::Http(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, age))
    }

    async fn fetch(
        &self,
        location: &KeySetLocation,
    ) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
        match location {
            KeySetLocation::Jwks(url) => self.get(url).await,
            KeySetLocation::Discovery { issuer } => {
                let (body, _) = self.get(&location.to_string()).await?;
                let document: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| FetchError::Discovery(format!("not JSON: {e}")))?;
                let jwks_uri = document
                    .get("jwks_uri")
                    .and_then(|u| u.as_str())
                    .ok_or_else(|| FetchError::Discovery("missing".into()))?;
                if document.get("issuer").and_then(|i| i.as_str()) != Some(issuer.as_str()) {
                    return Err(FetchError::Discovery(format!(
                        "the document's `issuer` is not `{issuer}`"
                    )));
                }
                crate::policy::check_key_url(jwks_uri, self.config.allow_insecure_loopback)
                    .map_err(|e| FetchError::Discovery(format!("`{jwks_uri}` {e}")))?;
                self.get(jwks_uri).await
            }
        }
    }

    /// After a token named a key id that the key set at `location` lacks: fetches the set
    /// again at once (at most once per `on_demand_interval`; requests arriving meanwhile wait
    /// for the same fetch) and says whether the key material changed.
    pub async fn refetch_for_unknown_key(&self, location: &KeySetLocation) -> bool {
        let Some(handle) = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(location)
            .cloned()
        else {
            return false;
        };
        let before = handle.set.current().map(|s| s.fingerprint);
        let mut fetches = handle.fetches.subscribe();
        let seen = *fetches.borrow_and_update();
        if !handle.on_demand.load(Ordering::Acquire) {
            let mut last = handle
                .last_on_demand
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < self.config.on_demand_interval) {
                return false;
            }
            *last = Some(Instant::now());
            handle.on_demand.store(true, Ordering::Release);
            handle.wake.notify_one();
        }
        let _ = tokio::time::timeout(ON_DEMAND_WAIT, fetches.wait_for(|n| *n > seen)).await;
        handle.set.current().map(|s| s.fingerprint) != before
    }

    /// Waits until every key set has been loaded once (or forever, if one never is).
    pub async fn loaded(&self) {
        loop {
            if self.registry.all().iter().all(|s| s.current().is_some()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The key sets not loaded yet.
    pub fn missing(&self) -> Vec<String> {
        self.registry
            .all()
            .iter()
            .filter(|s| s.current().is_none())
            .map(|s| s.location.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_shortens_the_refresh_within_bounds() {
        let ten_minutes = Duration::from_secs(600);
        assert_eq!(next_refresh(ten_minutes, None), ten_minutes);
        assert_eq!(
            next_refresh(ten_minutes, Some(Duration::from_secs(120))),
            Duration::from_secs(120)
        );
        assert_eq!(
            next_refresh(ten_minutes, Some(Duration::from_secs(3600))),
            ten_minutes
        );
        assert_eq!(next_refresh(ten_minutes, Some(Duration::ZERO)), MIN_REFRESH);
        // A policy asking for faster refreshes than the floor gets them.
        assert_eq!(
            next_refresh(Duration::from_secs(5), Some(Duration::ZERO)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn cache_control_is_read() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::CACHE_CONTROL,
            "public, max-age=300, must-revalidate".parse().unwrap(),
        );
        assert_eq!(max_age(&headers), Some(Duration::from_secs(300)));
        headers.insert(reqwest::header::CACHE_CONTROL, "no-cache".parse().unwrap());
        assert_eq!(max_age(&headers), None);
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
