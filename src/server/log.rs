//! The server's log: JSON lines through `tracing` (the audit lines among them), handed to a
//! background thread that writes them out in batches.
//!
//! A decision only appends its line to a buffer: it never waits on a `write(2)` to stderr or
//! on a slow log reader (a full pipe to a container runtime), and one write carries many
//! lines. Lines at WARN and above wake the writer at once; the others are written within
//! [`FLUSH_EVERY`]. The buffer is bounded: past [`CAPACITY`], lines are dropped and counted,
//! and the writer says how many in a line of its own once it can write again.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Longest time a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(10);
/// Buffered bytes that wake the writer before [`FLUSH_EVERY`].
const WAKE_AT: usize = 64 * 1024;
/// Most bytes waiting to be written; lines beyond are dropped.
pub const CAPACITY: usize = 8 * 1024 * 1024;

/// Lines dropped because the buffer was full, since the process started.
static DROPPED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Log lines the buffer dropped since the process started (for `/metrics`).
pub fn dropped_lines() -> u64 {
    DROPPED_TOTAL.load(Ordering::Relaxed)
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// Set (with a notify) when the writer should not wait for the interval; kept under the
    /// lock, so that a wake-up sent while the writer is busy is not lost.
    wake: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Dropped since the writer last reported.
    dropped: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves whole lines behind: the buffer stays usable.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The `tracing` writer: appends each formatted line to the buffer.
#[derive(Clone)]
pub struct LogBuffer {
    shared: Arc<Shared>,
}

/// Owns the writer thread; dropping it writes out every buffered line and stops the thread.
pub struct LogGuard {
    shared: Arc<Shared>,
    /// Disconnects when the writer thread ends.
    finished: mpsc::Receiver<()>,
}

/// Longest wait for the buffered lines at the end: a reader that does not read (a full pipe)
/// must not keep the process from exiting.
const FINAL_WRITE: Duration = Duration::from_secs(2);

/// Starts the writer thread for `sink`.
pub fn start(sink: impl Write + Send + 'static) -> (LogBuffer, LogGuard) {
    start_with(sink, FLUSH_EVERY)
}

fn start_with(sink: impl Write + Send + 'static, interval: Duration) -> (LogBuffer, LogGuard) {
    let shared = Arc::new(Shared::default());
    let writer = shared.clone();
    let (running, finished) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            let _running = running;
            write_out(&writer, sink, interval);
        })
        .expect("the log writer thread starts");
    (
        LogBuffer {
            shared: shared.clone(),
        },
        LogGuard { shared, finished },
    )
}

/// The server's buffer, when audit lines are written into it directly (see
/// [`super::audit`]).
static AUDIT_BUFFER: std::sync::OnceLock<LogBuffer> = std::sync::OnceLock::new();

/// Where audit lines go, when [`install_json`] installed the server's log and its filter lets
/// them through.
pub(crate) fn audit_buffer() -> Option<&'static LogBuffer> {
    AUDIT_BUFFER.get()
}

/// Installs the server's subscriber: JSON lines filtered by `filter`, through a [`LogBuffer`]
/// on `sink`; audit lines, when the filter lets them through, go into the same buffer
/// without the subscriber. Keep the guard for as long as the process logs.
pub fn install_json(
    sink: impl Write + Send + 'static,
    filter: tracing_subscriber::EnvFilter,
) -> LogGuard {
    install_json_with(sink, filter, None)
}

/// [`install_json`], and decisions' spans exported through `telemetry` when it is given.
/// The log never shows those spans, whatever `filter` says.
pub fn install_json_with(
    sink: impl Write + Send + 'static,
    filter: tracing_subscriber::EnvFilter,
    telemetry: Option<&super::otel::Telemetry>,
) -> LogGuard {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let (buffer, guard) = start(sink);
    // No `Option` layer for "no telemetry": an absent layer's interest is `always`, which
    // would enable every call site of every library.
    match telemetry {
        Some(telemetry) => tracing_subscriber::registry()
            .with(telemetry.layer())
            .with(json_layer(buffer.clone(), filter))
            .init(),
        None => tracing_subscriber::registry()
            .with(json_layer(buffer.clone(), filter))
            .init(),
    }
    if tracing::enabled!(target: "portcullis::audit", tracing::Level::INFO) {
        let _ = AUDIT_BUFFER.set(buffer);
    }
    guard
}

/// The log's layer: JSON lines into `buffer`, filtered by `filter`, never the decisions' spans.
fn json_layer<S>(
    buffer: LogBuffer,
    filter: tracing_subscriber::EnvFilter,
) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::{FilterExt as _, LevelFilter, Targets};
    // A `Targets` filter, not a closure: its interest in a call site is decided once, and
    // with the level hint kept, the libraries' trace-level spans and events (h2's, per frame)
    // stay disabled where they are called instead of costing a registry lookup each.
    let not_spans = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target(super::otel::TARGET, LevelFilter::OFF);
    tracing_subscriber::fmt::layer()
        .json()
        .with_writer(buffer)
        .with_filter(filter.and(not_spans))
}

fn write_out(shared: &Shared, mut sink: impl Write, interval: Duration) {
    let mut batch = Vec::new();
    loop {
        let stopping = {
            let pending = shared.lock();
            let (mut pending, _) = shared
                .wake
                .wait_timeout_while(pending, interval, |p| {
                    !p.wake && !shared.stop.load(Ordering::Relaxed)
                })
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            pending.wake = false;
            std::mem::swap(&mut pending.lines, &mut batch);
            shared.stop.load(Ordering::Relaxed)
        };
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            batch.extend_from_slice(&dropped_line(dropped));
        }
        if !batch.is_empty() {
            // Nowhere to report a failing log; the lines are lost, decisions go on.
            let _ = sink.write_all(&batch).and_then(|()| sink.flush());
            batch.clear();
            if batch.capacity() > 4 * WAKE_AT {
                batch.shrink_to(4 * WAKE_AT);
            }
        }
        if stopping && shared.lock().lines.is_empty() {
            return;
        }
    }
}

/// The writer's own line saying how many lines were dropped, in the subscriber's shape.
fn dropped_line(dropped: u64) -> Vec<u8> {
    let line = serde_json::json!({
        "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
        "level": "WARN",
        "fields": {
            "message": "log lines dropped: the log reader does not keep up",
            "dropped": dropped,
        },
        "target": "portcullis::server::log",
    });
    let mut bytes = line.to_string().into_bytes();
    bytes.push(b'\n');
    bytes
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
        // Ends when the writer has written everything and returned, or gives up.
        let _ = self.finished.recv_timeout(FINAL_WRITE);
    }
}

/// One formatted event, appended whole.
pub struct LineWriter<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut pending = self.shared.lock();
        let wake = if pending.lines.len() + line.len() > CAPACITY {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            DROPPED_TOTAL.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            pending.lines.extend_from_slice(line);
            self.urgent || pending.lines.len() >= WAKE_AT
        };
        // Only the first wake-up of a batch pays for a notify.
        let notify = wake && !pending.wake;
        pending.wake |= wake;
        drop(pending);
        if notify {
            self.shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogBuffer {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that keeps what it is given.
    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<u8>>>);

    impl Write for Collect {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_whole_in_order_and_all_by_the_guard() {
        let sink = Collect::default();
        let (buffer, guard) = start(sink.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let buffer = buffer.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        let mut w = buffer.make_writer();
                        w.write_all(format!("{{\"t\":{t},\"i\":{i}}}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let mut next = [0u64; 4];
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("a whole line");
            let t = v["t"].as_u64().unwrap() as usize;
            assert_eq!(
                v["i"].as_u64().unwrap(),
                next[t],
                "thread {t}'s lines in order"
            );
            next[t] += 1;
        }
        assert_eq!(next, [1000; 4]);
    }

    #[test]
    fn a_warning_is_written_at_once_other_lines_at_the_interval() {
        let sink = Collect::default();
        // An interval no test waits for: only the warning's wake-up writes before the end.
        let (buffer, guard) = start_with(sink.clone(), Duration::from_secs(3600));
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(buffer)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("routine");
            tracing::warn!("urgent");
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the warning waited");
            std::thread::sleep(Duration::from_millis(1));
        }
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let messages: Vec<String> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["fields"]["message"].as_str().unwrap().to_owned()
            })
            .collect();
        // The line before it goes out with it, in order.
        assert_eq!(messages, ["routine", "urgent"]);
        drop(guard);
    }

    /// A sink that blocks until told to go on, like a full pipe.
    struct Stuck(Arc<(Mutex<bool>, Condvar)>, Collect);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, cv) = &*self.0;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.1.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_reader_costs_lines_not_memory_or_waiting_and_the_loss_is_reported() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let sink = Collect::default();
        let (buffer, guard) = start(Stuck(gate.clone(), sink.clone()));
        let line = vec![b'x'; 1023]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        // Far more than the buffer holds, written while the sink does not move.
        let lines = 3 * CAPACITY / line.len();
        for _ in 0..lines {
            buffer.make_writer().write_all(&line).unwrap();
        }
        assert!(buffer.shared.lock().lines.len() <= CAPACITY);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(guard);
        // Every line is written or counted in a report: the buffer, and at most one batch
        // the writer took before the sink stuck, were written; the rest was dropped.
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let written = text.lines().filter(|l| l.starts_with('x')).count();
        let mut dropped = 0;
        for report in text.lines().filter(|l| l.contains("log lines dropped")) {
            let v: serde_json::Value = serde_json::from_str(report).unwrap();
            assert_eq!(v["level"], "WARN");
            dropped += v["fields"]["dropped"].as_u64().unwrap() as usize;
        }
        assert_eq!(written + dropped, lines);
        assert!(written <= 2 * CAPACITY / line.len(), "{written} written");
        assert!(dropped_lines() as usize >= dropped);
    }

    #[test]
    fn a_reader_that_never_reads_does_not_keep_the_process_from_ending() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (buffer, guard) = start(Stuck(gate, Collect::default()));
        buffer.make_writer().write_all(b"stuck\n").unwrap();
        let started = std::time::Instant::now();
        drop(guard);
        assert!(started.elapsed() < FINAL_WRITE + Duration::from_secs(5));
    }
}
