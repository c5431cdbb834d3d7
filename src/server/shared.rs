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
const BATCH: usize = 1024;
/// Decisions in one stream entry, at most: one XADD carries many decisions, which is most of
/// what keeps Redis' share of the CPU small.
const PER_ENTRY: usize = 256;
/// Once a decision is queued, the writer waits this long for more before writing, unless a
/// whole batch is waiting: under load, full entries and few wake-ups; a decision reaches the
/// other replicas this much later at most.
const LINGER: Duration = Duration::from_millis(10);
/// A decision's usual size in an entry's compact form, to size the command once.
const ENTRY_BYTES_PER_DECISION: usize = 800;
/// Stream entries read per round trip when listing: about a thousand decisions, more than a
/// listing usually shows, without moving megabytes for a short one.
const PAGE: usize = 4;
/// Replicas' clocks may differ this much: a listing that starts at `since` reads back this
/// much further; rate-limit counters live this much past their window.
const CLOCK_SKEW_MILLIS: i64 = 5_000;
/// How long the writer waits for a batch to be written (it is off the decision path).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// With nothing to write for this long, the writer pings Redis, so that the connection and
/// `portcullis_shared_store_up` follow Redis even when traffic is idle.
const IDLE_PING: Duration = Duration::from_secs(2);
/// Index members read per round trip when looking a decision up, and most round trips: with
/// many replicas, or one writing a backlog, the entry holding a decision may come after
/// entries of other replicas that end later than the decision.
const LOOKUP_PAGE: usize = 64;
const LOOKUP_PAGES: usize = 8;
/// Longest stream entry read back (a batch of capped decisions); longer entries are skipped
/// (not ours, or hostile).
const MAX_ENTRY_BYTES: usize = PER_ENTRY * 2 * crate::trace::MAX_RECORD_BYTES;

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
/// up to `PER_ENTRY` decisions, trimmed to about [`SharedConfig::stream_length`]
/// decisions, and an index of the stream's entries by the times of the decisions they hold.
///
/// The index is a sorted set with one member per entry, `"{first} {last} {entry id}"` scored
/// by `last` (the ULID times, in milliseconds, of the entry's earliest and latest decision):
/// indexing costs one `ZADD` per entry, not one field per decision. A decision id carries its
/// time, so a lookup reads the entries whose span holds that time (about one per replica) and
/// picks the decision from them. It keeps about twice the stream's entries.
#[derive(Debug)]
pub struct SharedDecisions {
    link: Arc<RedisLink>,
    queue: mpsc::Sender<Arc<StoredDecision>>,
    stream: String,
    index: String,
    metrics: Arc<Metrics>,
}

impl SharedDecisions {
    /// The shared store and its writer task (spawned on the current runtime).
    pub fn start(link: Arc<RedisLink>, config: &SharedConfig, metrics: Arc<Metrics>) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let stream = format!("{}decisions", config.prefix);
        let index = format!("{}entries", config.prefix);
        tokio::spawn(
            Writer {
                link: link.clone(),
                stream: stream.clone(),
                index: index.clone(),
                stream_length: config.stream_length.max(1),
                metrics: metrics.clone(),
            }
            .run(rx),
        );
        Self {
            link,
            queue,
            stream,
            index,
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
            let Some((last_id, _, _)) = entries.last() else {
                break;
            };
            end = format!("({last_id}");
            let full = entries.len() == PAGE;
            // Within an entry, decisions are oldest first.
            let newest_first = entries
                .iter()
                .flat_map(|(_, form, data)| read_entry(*form, data).into_iter().rev());
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
        let time = ulid.timestamp_ms();
        // As written in the entries' JSON.
        let id = ulid.to_string();
        // Entries whose span ends at or after the decision, earliest first; those whose span
        // starts after it are passed over. Bounded: a decision not in the first pages is gone.
        for page in 0..LOOKUP_PAGES {
            let mut pipe = redis::pipe();
            pipe.cmd("ZRANGEBYSCORE")
                .arg(&self.index)
                .arg(time)
                .arg("+inf")
                .arg("LIMIT")
                .arg(page * LOOKUP_PAGE)
                .arg(LOOKUP_PAGE);
            let (members,): (Vec<String>,) = self.link.query(&pipe).await?;
            let holding: Vec<&str> = members
                .iter()
                .filter_map(|member| {
                    let mut parts = member.splitn(3, ' ');
                    let first: u64 = parts.next()?.parse().ok()?;
                    let last: u64 = parts.next()?.parse().ok()?;
                    (first <= time && time <= last).then_some(parts.next()?)
                })
                .collect();
            if !holding.is_empty() {
                let mut pipe = redis::pipe();
                for entry in &holding {
                    pipe.cmd("XRANGE").arg(&self.stream).arg(*entry).arg(*entry);
                }
                let pages: Vec<redis::Value> = self.link.query(&pipe).await?;
                for page in pages {
                    for (_, form, data) in stream_entries(page)? {
                        // Most entries do not hold the id: look for it before parsing.
                        if memchr::memmem::find(&data, id.as_bytes()).is_none() {
                            continue;
                        }
                        if let Some(record) =
                            read_entry(form, &data).into_iter().find(|r| r.id() == id)
                        {
                            return Ok(Some(Arc::new(record)));
                        }
                    }
                }
            }
            if members.len() < LOOKUP_PAGE {
                break;
            }
        }
        Ok(None)
    }
}

/// How a stream entry holds its decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Field `c`: a batch in the compact form of [`crate::trace::wire`] (this version).
    Compact,
    /// Field `d`: a JSON array of decisions as the API shows them (earlier versions, still
    /// read while replicas are upgraded one by one).
    Decisions,
}

/// The decisions of a stream entry, each capped as this replica caps its own; none for an
/// entry that is not what its field says.
fn read_entry(form: Form, data: &[u8]) -> Vec<StoredDecision> {
    if data.len() > MAX_ENTRY_BYTES {
        return Vec::new();
    }
    match form {
        Form::Compact => crate::trace::wire::read(data).unwrap_or_default(),
        Form::Decisions => serde_json::from_slice::<Vec<Decision>>(data)
            .map(|decisions| decisions.iter().map(StoredDecision::of).collect())
            .unwrap_or_default(),
    }
}

/// The entries of an XRANGE/XREVRANGE answer: id, form and data.
fn stream_entries(value: redis::Value) -> Result<Vec<(String, Form, Vec<u8>)>, SharedError> {
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
            if let [redis::Value::BulkString(k), redis::Value::BulkString(v)] = kv {
                match k.as_slice() {
                    b"c" => data = Some((Form::Compact, v.clone())),
                    b"d" => data = Some((Form::Decisions, v.clone())),
                    _ => {}
                }
            }
        }
        if let (Ok(id), Some((form, data))) = (String::from_utf8(id), data) {
            out.push((id, form, data));
        }
    }
    Ok(out)
}

/// The `XADD` that appends `chunk` to `stream` as one entry (field `c`, the batch in the
/// compact form), trimming the stream to about `max_entries` entries.
pub fn append_command(stream: &str, max_entries: u64, chunk: &[Arc<StoredDecision>]) -> redis::Cmd {
    // Sized for the whole entry up front: the batch is written into the command itself.
    let mut xadd = redis::Cmd::with_capacity(8, 256 + chunk.len() * ENTRY_BYTES_PER_DECISION);
    xadd.arg("XADD")
        .arg(stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(max_entries)
        .arg("*")
        .arg("c")
        .arg(CompactBatch(chunk));
    xadd
}

/// Decisions as one Redis argument: their compact batch, serialised straight into the
/// command (no intermediate buffer to copy from).
struct CompactBatch<'a>(&'a [Arc<StoredDecision>]);

impl redis::ToRedisArgs for CompactBatch<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        // Stored records always serialise; were one not to, the entry would not parse and
        // readers would skip it.
        let _ = crate::trace::wire::write(self.0, out.writer_for_next_arg());
    }
}

/// The times (ms) of the earliest and latest decision of `chunk` (its ids' ULID times, which
/// the records keep as `unix_millis`); `None` for none.
fn time_span(chunk: &[Arc<StoredDecision>]) -> Option<(u64, u64)> {
    let times = chunk.iter().map(|record| record.unix_millis.max(0) as u64);
    Some((times.clone().min()?, times.max()?))
}

/// The background writer of [`SharedDecisions`].
struct Writer {
    link: Arc<RedisLink>,
    stream: String,
    index: String,
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
        // Running average of decisions per stream entry (0.9 of the last value each batch).
        let mut per_entry = 1.0f64;
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
            let result = self.write(&batch, per_entry).await;
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
                }
            }
        }
    }

    /// Appends `batch` to the stream in entries of up to `PER_ENTRY` decisions, then indexes
    /// the entries: two round trips per batch. `per_entry` is the running average of decisions
    /// per entry, which turns the stream's length in decisions into entries.
    async fn write(
        &self,
        batch: &[Arc<StoredDecision>],
        per_entry: f64,
    ) -> Result<(), SharedError> {
        let max_entries = (self.stream_length as f64 / per_entry.max(1.0)).ceil() as u64;
        let mut pipe = redis::pipe();
        let mut spans = Vec::new();
        for chunk in batch.chunks(PER_ENTRY) {
            let Some(span) = time_span(chunk) else {
                continue;
            };
            pipe.add_command(append_command(&self.stream, max_entries.max(1), chunk));
            spans.push(span);
        }
        let entries: Vec<String> = self.link.query_within(&pipe, WRITE_TIMEOUT).await?;
        let mut pipe = redis::pipe();
        for ((first, last), entry) in spans.iter().zip(&entries) {
            pipe.cmd("ZADD")
                .arg(&self.index)
                .arg(*last)
                .arg(format!("{first} {last} {entry}"))
                .ignore();
        }
        // The stream's trimming is approximate: the index keeps twice its entries.
        let keep = 2 * max_entries.max(1) + 16;
        pipe.cmd("ZREMRANGEBYRANK")
            .arg(&self.index)
            .arg(0)
            .arg(-(keep as i64) - 1)
            .ignore();
        self.link.query_within(&pipe, WRITE_TIMEOUT).await
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

/// DPoP proof ids shared by replicas: one Redis key per proof, set only when absent and
/// expiring once the proof's window is over (one round trip).
#[derive(Debug)]
pub struct SharedProofs {
    link: Arc<RedisLink>,
    prefix: String,
}

impl SharedProofs {
    pub fn new(link: Arc<RedisLink>, prefix: &str) -> Self {
        Self {
            link,
            prefix: format!("{prefix}dpop:"),
        }
    }

    /// Remembers `seen` across replicas; returns whether no replica had seen it before.
    pub async fn first_use(
        &self,
        seen: crate::decision::ProofSeen,
        now_secs: i64,
    ) -> Result<bool, SharedError> {
        use std::fmt::Write as _;
        let mut key = String::with_capacity(self.prefix.len() + 32);
        key.push_str(&self.prefix);
        for b in seen.id {
            let _ = write!(key, "{b:02x}");
        }
        let ttl = (seen.until - now_secs).max(1) as u64 * 1000 + CLOCK_SKEW_MILLIS as u64;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl);
        let (set,): (Option<String>,) = self.link.query(&pipe).await?;
        Ok(set.is_some())
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
            [("1-0".to_owned(), Form::Decisions, b"{}".to_vec())]
        );
        assert!(stream_entries(Int(1)).is_err());
        // Not what the field says: nothing, never a half-read record.
        for form in [Form::Compact, Form::Decisions] {
            assert!(read_entry(form, b"{}").is_empty());
            assert!(read_entry(form, b"[{\"id\": 1}]").is_empty());
            assert!(read_entry(form, &vec![b' '; MAX_ENTRY_BYTES + 1]).is_empty());
        }
    }
}
