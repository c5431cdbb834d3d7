//! Fetching remote key sets (`jwks.url`, OpenID discovery): at start, on a refresh interval,
//! and at once when a token names a key id the set lacks (rate-limited, one fetch shared by
//! every waiting request). A failed fetch or a garbage answer keeps the last good key set.

use std::collections::HashMap;
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
    /// The number of the last finished fetch, so waiters know when theirs is done.
    fetches: watch::Sender<u64>,
    on_demand: OnDemand,
}

/// The fetches asked for by unknown key ids, under one lock: requests arriving together
/// must agree on which of them starts a fetch and which fetch the others wait for (with a
/// flag and a timestamp apart, a request could see no fetch asked for, then find the
/// timestamp another request had just set, and answer "unknown key" at once).
#[derive(Debug, Default)]
struct OnDemand(Mutex<OnDemandState>);

#[derive(Debug, Default)]
struct OnDemandState {
    /// A fetch was asked for and has not started.
    asked: bool,
    /// The running fetch was asked for.
    running: bool,
    /// Fetches started so far; the number of the running one.
    started: u64,
    /// When the last fetch was asked for.
    last: Option<Instant>,
}

/// What a request with an unknown key id does.
#[derive(Debug, PartialEq, Eq)]
enum Claim {
    /// Ask for a fetch, then wait until that fetch (this number) has finished.
    Start(u64),
    /// Wait until the fetch of this number, already asked for, has finished.
    Wait(u64),
    /// The last fetch asked for was within the interval: answer with the keys held.
    TooSoon,
}

impl OnDemand {
    fn state(&self) -> std::sync::MutexGuard<'_, OnDemandState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn claim(&self, now: Instant, interval: Duration) -> Claim {
        let mut state = self.state();
        if state.asked {
            return Claim::Wait(state.started + 1);
        }
        if state.running {
            return Claim::Wait(state.started);
        }
        if state
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < interval)
        {
            return Claim::TooSoon;
        }
        state.last = Some(now);
        state.asked = true;
        Claim::Start(state.started + 1)
    }

    /// A fetch starts, scheduled or asked for; returns its number.
    fn begin(&self) -> u64 {
        let mut state = self.state();
        state.started += 1;
        state.running = std::mem::take(&mut state.asked);
        state.started
    }

    fn end(&self) {
        self.state().running = false;
    }
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
                on_demand: OnDemand::default(),
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
            let number = handle.on_demand.begin();
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
            handle.on_demand.end();
            handle.fetches.send_replace(number);
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
    /// for the same fetch) and says whether the key material changed since the call began.
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
        let awaited = match handle
            .on_demand
            .claim(Instant::now(), self.config.on_demand_interval)
        {
            Claim::Start(number) => {
                handle.wake.notify_one();
                Some(number)
            }
            Claim::Wait(number) => Some(number),
            Claim::TooSoon => None,
        };
        if let Some(number) = awaited {
            let _ = tokio::time::timeout(ON_DEMAND_WAIT, fetches.wait_for(|n| *n >= number)).await;
        }
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
    fn requests_for_unknown_keys_share_one_fetch_per_interval() {
        let on_demand = OnDemand::default();
        let interval = Duration::from_secs(30);
        let t0 = Instant::now();
        assert_eq!(on_demand.claim(t0, interval), Claim::Start(1));
        // Asked for, not started: later requests wait for that fetch, none is refused.
        assert_eq!(on_demand.claim(t0, interval), Claim::Wait(1));
        assert_eq!(on_demand.begin(), 1);
        assert_eq!(on_demand.claim(t0, interval), Claim::Wait(1));
        on_demand.end();
        // Done: within the interval requests answer with the keys held.
        assert_eq!(on_demand.claim(t0 + interval / 2, interval), Claim::TooSoon);
        assert_eq!(on_demand.claim(t0 + interval, interval), Claim::Start(2));
    }

    #[test]
    fn a_fetch_asked_for_during_a_scheduled_one_is_the_next_one() {
        let on_demand = OnDemand::default();
        let interval = Duration::from_secs(30);
        let t0 = Instant::now();
        assert_eq!(on_demand.begin(), 1, "a scheduled fetch");
        // It may have started before the new key was published: waiters need the next one.
        assert_eq!(on_demand.claim(t0, interval), Claim::Start(2));
        assert_eq!(on_demand.claim(t0, interval), Claim::Wait(2));
        on_demand.end();
        assert_eq!(on_demand.claim(t0, interval), Claim::Wait(2));
        assert_eq!(on_demand.begin(), 2);
        on_demand.end();
        assert_eq!(on_demand.claim(t0, interval), Claim::TooSoon);
    }

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
