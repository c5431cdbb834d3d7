//! State shared by replicas through Redis: recent decisions in a bounded stream, and
//! rate-limit counters.
//!
//! Nothing here may slow a decision down or deny one: decisions are queued for a background
//! writer (dropped and counted when the queue is full or Redis fails), and a rate limit Redis
//! does not answer in time is counted by this process instead. A lost connection is dropped
//! and opened again on later use, at most once per [`RECONNECT_INTERVAL`], so that writing
//! resumes by itself when Redis is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;

use super::metrics::Metrics;
use crate::decision::Decision;
use crate::ratelimit::{Count, CountedBy, LimitCheck};
use crate::time::unix_millis;
use crate::trace::{DecisionFilter, MAX_LIST_LIMIT, StoredDecision};

/// Least time between two attempts to connect.
pub const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);
/// Decisions waiting for the writer; past it they are dropped (and counted).
const QUEUE: usize = 8192;
/// Most decisions written in one pipeline.
const BATCH: usize = 512;
/// Stream entries read per round trip when listing.
const PAGE: usize = 256;
/// Replicas' clocks may differ this much: a listing that starts at `since` reads back this
/// much further, and a lookup by id searches this far around the id's time.
const CLOCK_SKEW_MILLIS: i64 = 5_000;
/// Longest shared decision read back; longer entries are skipped (not ours, or hostile).
const MAX_ENTRY_BYTES: usize = 64 * 1024;

/// Where the shared state lives and how long Redis may take to answer.
#[derive(Debug, Clone)]
pub struct SharedConfig {
    /// `redis://host:port/db` (or `rediss://` for TLS).
    pub url: String,
    /// Each command's deadline; a rate limit that is not counted by then is counted locally.
    pub timeout: Duration,
    /// Decisions the shared stream keeps, about (all replicas together).
    pub stream_length: usize,
    /// Prefix of every key, so that several deployments can share one Redis.
    pub prefix: String,
}

/// One lazily opened, multiplexed connection to Redis, dropped when it fails.
pub struct RedisLink {
    client: redis::Client,
    config: redis::AsyncConnectionConfig,
    conn: ArcSwapOption<MultiplexedConnection>,
    connecting: tokio::sync::Mutex<()>,
    /// No connection attempt before this time (Unix milliseconds).
    next_attempt_millis: AtomicI64,
    up: AtomicBool,
    timeout: Duration,
    metrics: Arc<Metrics>,
    /// Shown in logs: the URL without its password.
    shown: String,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

/// Redis did not answer, or answered with an error.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("Redis is unavailable (next connection attempt within {RECONNECT_INTERVAL:?})")]
    Down,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected answer from Redis: {0}")]
    Answer(String),
}

impl RedisLink {
    /// A link to `url`; nothing is connected until first use. Fails only on a malformed URL.
    pub fn new(url: &str, timeout: Duration, metrics: Arc<Metrics>) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("`{}`: {e}", shown_url(url)))?;
        metrics.set_shared_up(false);
        Ok(Self {
            client,
            config: redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
                .set_response_timeout(Some(timeout)),
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            next_attempt_millis: AtomicI64::new(0),
            up: AtomicBool::new(false),
            timeout,
            metrics,
            shown: shown_url(url),
        })
    }

    /// Whether the last command (or connection attempt) succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    async fn connection(&self) -> Result<MultiplexedConnection, SharedError> {
        if let Some(conn) = self.conn.load_full() {
            return Ok((*conn).clone());
        }
        if now_millis() < self.next_attempt_millis.load(Ordering::Relaxed) {
            return Err(SharedError::Down);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(conn) = self.conn.load_full() {
            return Ok((*conn).clone());
        }
        if now_millis() < self.next_attempt_millis.load(Ordering::Relaxed) {
            return Err(SharedError::Down);
        }
        self.next_attempt_millis.store(
            now_millis() + RECONNECT_INTERVAL.as_millis() as i64,
            Ordering::Relaxed,
        );
        let connect = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config);
        match tokio::time::timeout(self.timeout.max(Duration::from_millis(500)), connect).await {
            Ok(Ok(conn)) => {
                tracing::info!(redis = %self.shown, "connected to the shared store");
                self.conn.store(Some(Arc::new(conn.clone())));
                Ok(conn)
            }
            Ok(Err(e)) => {
                self.mark(false);
                Err(e.into())
            }
            Err(_) => {
                self.mark(false);
                Err(SharedError::Timeout(self.timeout))
            }
        }
    }

    fn mark(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(redis = %self.shown, "the shared store answers again");
            } else {
                tracing::warn!(redis = %self.shown, "the shared store does not answer; counting rate limits locally and dropping shared trace records until it does");
            }
            self.metrics.set_shared_up(up);
        }
    }

    /// Runs `pipe` with the deadline; a failure drops the connection.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, SharedError> {
        let mut conn = self.connection().await?;
        let result = tokio::time::timeout(self.timeout, pipe.query_async::<T>(&mut conn)).await;
        match result {
            Ok(Ok(value)) => {
                self.mark(true);
                Ok(value)
            }
            Ok(Err(e)) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error()
                    || e.is_timeout()
                {
                    self.conn.store(None);
                }
                self.mark(false);
                Err(e.into())
            }
            Err(_) => {
                // Answers to a timed-out pipeline may still arrive; a new connection is simpler
                // than matching them up.
                self.conn.store(None);
                self.mark(false);
                Err(SharedError::Timeout(self.timeout))
            }
        }
    }
}

fn now_millis() -> i64 {
    unix_millis(SystemTime::now())
}

/// `url` with any password replaced, for logs and errors.
pub(crate) fn shown_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Recent decisions of every replica: a Redis stream capped at about
/// [`SharedConfig::stream_length`] entries, each holding a decision's id and JSON.
///
/// Lookups by id search the stream around the id's time rather than keep a key per decision:
/// memory then stays bounded by the stream's length whatever the request rate.
#[derive(Debug)]
pub struct SharedDecisions {
    link: Arc<RedisLink>,
    queue: mpsc::Sender<Arc<StoredDecision>>,
    stream: String,
    metrics: Arc<Metrics>,
}

impl SharedDecisions {
    /// The shared store and its writer task (spawned on the current runtime).
    pub fn start(link: Arc<RedisLink>, config: &SharedConfig, metrics: Arc<Metrics>) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let stream = format!("{}decisions", config.prefix);
        tokio::spawn(write_batches(
            rx,
            link.clone(),
            stream.clone(),
            config.stream_length.max(1),
            metrics.clone(),
        ));
        Self {
            link,
            queue,
            stream,
            metrics,
        }
    }

    /// Queues a stored decision for the shared stream; never waits.
    pub fn record(&self, record: Arc<StoredDecision>) {
        if self.queue.try_send(record).is_err() {
            self.metrics.count_shared_records("dropped_queue_full", 1);
        }
    }

    /// The most recent shared decisions that match `filter`, newest first. Reads at most the
    /// stream's length of entries.
    pub async fn list(
        &self,
        filter: &DecisionFilter,
        limit: usize,
    ) -> Result<Vec<Arc<StoredDecision>>, SharedError> {
        let limit = limit.min(MAX_LIST_LIMIT);
        let mut found = Vec::new();
        let mut end = "+".to_owned();
        // Entries older than this cannot match `since`, even with another replica's clock.
        let oldest = filter
            .since_millis
            .map(|t| t.saturating_sub(CLOCK_SKEW_MILLIS));
        while found.len() < limit {
            let mut pipe = redis::pipe();
            pipe.cmd("XREVRANGE")
                .arg(&self.stream)
                .arg(&end)
                .arg(oldest.map_or_else(|| "-".to_owned(), |t| t.max(0).to_string()))
                .arg("COUNT")
                .arg(PAGE);
            let (page,): (redis::Value,) = self.link.query(&pipe).await?;
            let entries = stream_entries(page)?;
            let Some((last_id, _)) = entries.last() else {
                break;
            };
            end = format!("({last_id}");
            let full = entries.len() == PAGE;
            for (_, json) in entries {
                if let Some(record) = read_entry(&json)
                    && filter.matches(&record)
                {
                    found.push(Arc::new(record));
                    if found.len() == limit {
                        break;
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok(found)
    }

    /// The shared decision `id` (a ULID), if the stream still holds it.
    pub async fn get(&self, id: &str) -> Result<Option<Arc<StoredDecision>>, SharedError> {
        let Ok(ulid) = ulid::Ulid::from_string(id) else {
            return Ok(None);
        };
        let at = i64::try_from(ulid.timestamp_ms()).unwrap_or(i64::MAX);
        let mut start = (at - CLOCK_SKEW_MILLIS).max(0).to_string();
        let end = at.saturating_add(CLOCK_SKEW_MILLIS).to_string();
        loop {
            let mut pipe = redis::pipe();
            pipe.cmd("XRANGE")
                .arg(&self.stream)
                .arg(&start)
                .arg(&end)
                .arg("COUNT")
                .arg(PAGE);
            let (page,): (redis::Value,) = self.link.query(&pipe).await?;
            let entries = stream_entries(page)?;
            let full = entries.len() == PAGE;
            for (_, json) in &entries {
                if let Some(record) = read_entry(json)
                    && record.id().eq_ignore_ascii_case(id)
                {
                    return Ok(Some(Arc::new(record)));
                }
            }
            match entries.last() {
                Some((last_id, _)) if full => start = format!("({last_id}"),
                _ => return Ok(None),
            }
        }
    }
}

/// A shared entry as a stored decision, capped as this replica caps its own; `None` for an
/// entry that is not a decision.
fn read_entry(json: &[u8]) -> Option<StoredDecision> {
    if json.len() > MAX_ENTRY_BYTES {
        return None;
    }
    let decision: Decision = serde_json::from_slice(json).ok()?;
    Some(StoredDecision::of(&decision))
}

/// The `(entry id, field d)` pairs of an XRANGE/XREVRANGE answer.
fn stream_entries(value: redis::Value) -> Result<Vec<(String, Vec<u8>)>, SharedError> {
    let redis::Value::Array(items) = value else {
        return Err(SharedError::Answer(format!("{value:?}")));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let redis::Value::Array(mut pair) = item else {
            continue;
        };
        if pair.len() != 2 {
            continue;
        }
        let fields = pair.pop();
        let id = pair.pop();
        let (Some(redis::Value::BulkString(id)), Some(redis::Value::Array(fields))) = (id, fields)
        else {
            continue;
        };
        let mut data = None;
        for kv in fields.chunks(2) {
            if let [redis::Value::BulkString(k), redis::Value::BulkString(v)] = kv
                && k == b"d"
            {
                data = Some(v.clone());
            }
        }
        if let (Ok(id), Some(data)) = (String::from_utf8(id), data) {
            out.push((id, data));
        }
    }
    Ok(out)
}

/// The writer: sends queued decisions in pipelines of up to [`BATCH`]; a failed batch is
/// dropped and counted, with a warning at most every ten seconds.
async fn write_batches(
    mut rx: mpsc::Receiver<Arc<StoredDecision>>,
    link: Arc<RedisLink>,
    stream: String,
    stream_length: usize,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut dropped_since_warning = 0u64;
    let mut last_warning: Option<std::time::Instant> = None;
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for record in &batch {
            let Ok(json) = serde_json::to_vec(&record.decision()) else {
                continue;
            };
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(stream_length)
                .arg("*")
                .arg("d")
                .arg(json)
                .ignore();
        }
        let n = batch.len() as u64;
        batch.clear();
        match link.query::<()>(&pipe).await {
            Ok(()) => metrics.count_shared_records("written", n),
            Err(e) => {
                metrics.count_shared_records("dropped_unavailable", n);
                dropped_since_warning += n;
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(
                        dropped = dropped_since_warning,
                        error = %e,
                        "decisions not written to the shared store (the replica's own store keeps them)"
                    );
                    dropped_since_warning = 0;
                    last_warning = Some(std::time::Instant::now());
                }
            }
        }
    }
}

/// Rate-limit counters shared by replicas: one Redis key per bucket and window, counted with
/// INCR and expiring after its window (one round trip).
#[derive(Debug)]
pub struct SharedLimits {
    link: Arc<RedisLink>,
    prefix: String,
}

impl SharedLimits {
    pub fn new(link: Arc<RedisLink>, prefix: &str) -> Self {
        Self {
            link,
            prefix: format!("{prefix}rl:"),
        }
    }

    /// Counts one request against `check` at `now_millis`.
    pub async fn hit(&self, check: &LimitCheck, now_millis: u64) -> Result<Count, SharedError> {
        let window = check.window(now_millis);
        let key = format!("{}{window}:{}", self.prefix, check.bucket);
        let millis_left = check.millis_left(now_millis);
        // Kept past its window by the clock skew replicas may have.
        let ttl = millis_left + CLOCK_SKEW_MILLIS as u64;
        let mut pipe = redis::pipe();
        pipe.cmd("INCR")
            .arg(&key)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl)
            .ignore();
        let (count,): (u64,) = self.link.query(&pipe).await?;
        Ok(Count {
            count,
            millis_left,
            counted_by: CountedBy::Shared,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            shown_url("redis://user:s3cret@10.0.0.5:6379/0"),
            "redis://…@10.0.0.5:6379/0"
        );
        assert_eq!(
            shown_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }

    #[test]
    fn stream_answers_are_read_defensively() {
        use redis::Value::{Array, BulkString, Int};
        let answer = Array(vec![
            Array(vec![
                BulkString(b"1-0".to_vec()),
                Array(vec![BulkString(b"d".to_vec()), BulkString(b"{}".to_vec())]),
            ]),
            // Wrong shapes are skipped, not trusted.
            Array(vec![BulkString(b"2-0".to_vec())]),
            Int(7),
            Array(vec![
                BulkString(b"3-0".to_vec()),
                Array(vec![BulkString(b"x".to_vec()), BulkString(b"{}".to_vec())]),
            ]),
        ]);
        assert_eq!(
            stream_entries(answer).unwrap(),
            [("1-0".to_owned(), b"{}".to_vec())]
        );
        assert!(stream_entries(Int(1)).is_err());
        assert!(read_entry(b"{}").is_none());
        assert!(read_entry(&vec![b' '; MAX_ENTRY_BYTES + 1]).is_none());
    }
}
