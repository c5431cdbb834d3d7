//! State shared by replicas through Redis: recent decisions in a bounded stream, and
//! rate-limit counters.
//!
//! Nothing here may slow a decision down or deny one: decisions are queued for a background
//! writer (dropped and counted when the queue is full or Redis fails), and a rate limit Redis
//! does not answer in time is counted by this process instead. A lost connection is dropped
//! and opened again on later use, at most once per [`RECONNECT_INTERVAL`], so that writing
//! resumes by itself when Redis is back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime};

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
/// Decisions in one stream entry, at most: one XADD carries many decisions, which is most of
/// what keeps Redis' share of the CPU small.
const PER_ENTRY: usize = 64;
/// Once a decision is queued, the writer waits this long for more before writing, unless a
/// whole batch is waiting: under load, full entries and few wake-ups; a decision reaches the
/// other replicas this much later at most.
const LINGER: Duration = Duration::from_millis(5);
/// Stream entries read per round trip when listing.
const PAGE: usize = 32;
/// Replicas' clocks may differ this much: a listing that starts at `since` reads back this
/// much further; rate-limit counters live this much past their window.
const CLOCK_SKEW_MILLIS: i64 = 5_000;
/// How long the writer waits for a batch to be written (it is off the decision path).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// With nothing to write for this long, the writer pings Redis, so that the connection and
/// `portcullis_shared_store_up` follow Redis even when traffic is idle.
const IDLE_PING: Duration = Duration::from_secs(2);
/// How often the writer measures the time the stream spans, for the id index's expiry.
const SPAN_CHECK: Duration = Duration::from_secs(10);
/// Bounds of an id index entry's lifetime.
const MIN_INDEX_TTL: Duration = Duration::from_secs(60);
const MAX_INDEX_TTL: Duration = Duration::from_secs(6 * 3600);
/// Longest stream entry read back (a batch of capped decisions); longer entries are skipped
/// (not ours, or hostile).
const MAX_ENTRY_BYTES: usize = 4 * 1024 * 1024;

/// Where the shared state lives and how long Redis may take to answer.
#[derive(Debug, Clone)]
pub struct SharedConfig {
    /// `redis://[:password@]host:port/db`.
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
        Ok(Self {
            client,
            config: redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
                // Each query sets its own deadline (the writer's is longer).
                .set_response_timeout(None),
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

    /// Runs `pipe` within the configured timeout.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, SharedError> {
        self.query_within(pipe, self.timeout).await
    }

    /// Runs `pipe` within `timeout`. A lost connection or a timeout drops the connection and
    /// marks the store down; an error reply (Redis answered) does neither.
    pub async fn query_within<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
        timeout: Duration,
    ) -> Result<T, SharedError> {
        let mut conn = self.connection().await?;
        match tokio::time::timeout(timeout, pipe.query_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => {
                self.mark(true);
                Ok(value)
            }
            Ok(Err(e)) => {
                let lost = e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error()
                    || e.is_timeout();
                if lost {
                    self.conn.store(None);
                }
                self.mark(!lost);
                Err(e.into())
            }
            Err(_) => {
                // Answers to a timed-out pipeline may still arrive; a new connection is simpler
                // than matching them up.
                self.conn.store(None);
                self.mark(false);
                Err(SharedError::Timeout(timeout))
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

/// Recent decisions of every replica: a Redis stream whose entries each hold a JSON array of
/// up to [`PER_ENTRY`] decisions, trimmed to about [`SharedConfig::stream_length`]
/// decisions, and an index from decision id to stream entry for lookups in two commands: one
/// hash per minute of decision ids (the minute of the id's ULID time), so that a batch is
/// indexed with one command per minute it spans.
///
/// The index hashes expire once the stream no longer reaches back to them: their lifetime
/// follows the time the stream spans (measured by the writer), so that they hold about the
/// stream's length of ids whatever the request rate.
#[derive(Debug)]
pub struct SharedDecisions {
    link: Arc<RedisLink>,
    queue: mpsc::Sender<Arc<StoredDecision>>,
    stream: String,
    index_prefix: String,
    metrics: Arc<Metrics>,
}

impl SharedDecisions {
    /// The shared store and its writer task (spawned on the current runtime).
    pub fn start(link: Arc<RedisLink>, config: &SharedConfig, metrics: Arc<Metrics>) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let stream = format!("{}decisions", config.prefix);
        let index_prefix = format!("{}ids:", config.prefix);
        tokio::spawn(
            Writer {
                link: link.clone(),
                stream: stream.clone(),
                index_prefix: index_prefix.clone(),
                stream_length: config.stream_length.max(1),
                metrics: metrics.clone(),
            }
            .run(rx),
        );
        Self {
            link,
            queue,
            stream,
            index_prefix,
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
            // Within an entry, decisions are oldest first.
            let newest_first = entries
                .iter()
                .flat_map(|(_, json)| read_entry(json).into_iter().rev());
            for record in newest_first {
                if filter.matches(&record) {
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
        let minute = ulid.timestamp_ms() / 60_000;
        let mut pipe = redis::pipe();
        pipe.cmd("HGET")
            .arg(format!("{}{minute}", self.index_prefix))
            .arg(ulid.to_string());
        let (entry,): (Option<String>,) = self.link.query(&pipe).await?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        let mut pipe = redis::pipe();
        pipe.cmd("XRANGE").arg(&self.stream).arg(&entry).arg(&entry);
        let (page,): (redis::Value,) = self.link.query(&pipe).await?;
        Ok(stream_entries(page)?
            .iter()
            .flat_map(|(_, json)| read_entry(json))
            .find(|record| record.id().eq_ignore_ascii_case(id))
            .map(Arc::new))
    }
}

/// The decisions of a stream entry (a JSON array of decisions), each capped as this replica
/// caps its own; none for an entry that is not such an array.
fn read_entry(json: &[u8]) -> Vec<StoredDecision> {
    if json.len() > MAX_ENTRY_BYTES {
        return Vec::new();
    }
    serde_json::from_slice::<Vec<Decision>>(json)
        .map(|decisions| decisions.iter().map(StoredDecision::of).collect())
        .unwrap_or_default()
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

/// The background writer of [`SharedDecisions`].
struct Writer {
    link: Arc<RedisLink>,
    stream: String,
    index_prefix: String,
    stream_length: usize,
    metrics: Arc<Metrics>,
}

impl Writer {
    /// Sends queued decisions in pipelines of up to [`BATCH`]; a failed batch is dropped and
    /// counted, with a warning at most every ten seconds. Ends when the queue closes.
    async fn run(self, mut rx: mpsc::Receiver<Arc<StoredDecision>>) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut dropped_since_warning = 0u64;
        let mut last_warning: Option<Instant> = None;
        let mut index_ttl = MIN_INDEX_TTL;
        // Running average of decisions per stream entry (0.9 of the last value each batch).
        let mut per_entry = 1.0f64;
        let mut span_checked: Option<Instant> = None;
        self.ping().await;
        loop {
            match tokio::time::timeout(IDLE_PING, rx.recv_many(&mut batch, BATCH)).await {
                Ok(0) => return,
                Ok(_) => {
                    if batch.len() < BATCH {
                        tokio::time::sleep(LINGER).await;
                        // Closed or not, what is queued is written; an empty, closed queue
                        // ends the loop at the next receive.
                        while batch.len() < BATCH {
                            let Ok(record) = rx.try_recv() else { break };
                            batch.push(record);
                        }
                    }
                }
                Err(_) => {
                    self.ping().await;
                    continue;
                }
            }
            let n = batch.len() as u64;
            let entries = batch.len().div_ceil(PER_ENTRY);
            per_entry = 0.9 * per_entry + 0.1 * (batch.len() as f64 / entries as f64);
            let result = self.write(&batch, index_ttl, per_entry).await;
            batch.clear();
            match result {
                Ok(()) => self.metrics.count_shared_records("written", n),
                Err(e) => {
                    self.metrics.count_shared_records("dropped_unavailable", n);
                    dropped_since_warning += n;
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(
                            dropped = dropped_since_warning,
                            error = %e,
                            "decisions not written to the shared store (the replica's own store keeps them)"
                        );
                        dropped_since_warning = 0;
                        last_warning = Some(Instant::now());
                    }
                    continue;
                }
            }
            if span_checked.is_none_or(|t| t.elapsed() >= SPAN_CHECK) {
                span_checked = Some(Instant::now());
                if let Ok(span) = self.stream_span().await {
                    index_ttl = (span + MIN_INDEX_TTL).clamp(MIN_INDEX_TTL, MAX_INDEX_TTL);
                }
            }
        }
    }

    /// Appends `batch` to the stream in entries of up to [`PER_ENTRY`] decisions, then indexes
    /// them by decision id: two round trips per batch. `per_entry` is the running average of
    /// decisions per entry, which turns the stream's length in decisions into entries.
    async fn write(
        &self,
        batch: &[Arc<StoredDecision>],
        index_ttl: Duration,
        per_entry: f64,
    ) -> Result<(), SharedError> {
        let max_entries = (self.stream_length as f64 / per_entry.max(1.0)).ceil() as u64;
        let mut pipe = redis::pipe();
        let mut chunks = Vec::new();
        for chunk in batch.chunks(PER_ENTRY) {
            let Ok(json) = serde_json::to_vec(chunk) else {
                continue;
            };
            pipe.cmd("XADD")
                .arg(&self.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(max_entries.max(1))
                .arg("*")
                .arg("d")
                .arg(json);
            chunks.push(chunk);
        }
        let entries: Vec<String> = self.link.query_within(&pipe, WRITE_TIMEOUT).await?;
        // One HSET per index hash: ids grouped by the minute of their time.
        let mut by_minute: BTreeMap<u64, Vec<(String, &str)>> = BTreeMap::new();
        for (chunk, entry) in chunks.iter().zip(&entries) {
            for record in *chunk {
                if let Ok(ulid) = ulid::Ulid::from_string(record.id()) {
                    by_minute
                        .entry(ulid.timestamp_ms() / 60_000)
                        .or_default()
                        .push((ulid.to_string(), entry));
                }
            }
        }
        let mut pipe = redis::pipe();
        // The hash of a minute lives until its last id is older than the stream's span.
        let ttl = (index_ttl + Duration::from_secs(60)).as_millis() as u64;
        for (minute, ids) in &by_minute {
            let key = format!("{}{minute}", self.index_prefix);
            let cmd = pipe.cmd("HSET").arg(&key);
            for (id, entry) in ids {
                cmd.arg(id).arg(*entry);
            }
            cmd.ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(ttl).ignore();
        }
        self.link.query_within(&pipe, WRITE_TIMEOUT).await
    }

    /// How far back the stream reaches: now minus its oldest entry's time.
    async fn stream_span(&self) -> Result<Duration, SharedError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XRANGE")
            .arg(&self.stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        let (page,): (redis::Value,) = self.link.query_within(&pipe, WRITE_TIMEOUT).await?;
        let oldest = stream_entries(page)?
            .first()
            .and_then(|(id, _)| id.split('-').next()?.parse::<i64>().ok())
            .unwrap_or_else(now_millis);
        Ok(Duration::from_millis(
            now_millis().saturating_sub(oldest).max(0) as u64,
        ))
    }

    async fn ping(&self) {
        let mut pipe = redis::pipe();
        pipe.cmd("PING").ignore();
        let _ = self.link.query_within::<()>(&pipe, WRITE_TIMEOUT).await;
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
        // Not an array of decisions: nothing, never a half-read record.
        assert!(read_entry(b"{}").is_empty());
        assert!(read_entry(b"[{\"id\": 1}]").is_empty());
        assert!(read_entry(&vec![b' '; MAX_ENTRY_BYTES + 1]).is_empty());
    }
}
