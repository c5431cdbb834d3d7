//! The audit log: the same JSON subscriber as `portcullis serve`, into a counting writer.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use portcullis::server::log::LogGuard;

#[derive(Default)]
pub(crate) struct AuditCounter {
    bytes: AtomicU64,
    lines: AtomicU64,
    writes: AtomicU64,
}

struct AuditWriter {
    file: File,
    counter: Arc<AuditCounter>,
}

impl AuditCounter {
    /// Lines, bytes and writes so far.
    pub(crate) fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.lines.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
        )
    }
}

impl std::io::Write for AuditWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        let lines = buf[..n].iter().filter(|b| **b == b'\n').count();
        self.counter.bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.counter
            .lines
            .fetch_add(lines as u64, Ordering::Relaxed);
        self.counter.writes.fetch_add(1, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Installs the server's log subscriber (`portcullis serve`'s: JSON lines at `info`, the audit
/// events among them, written in batches by a background thread) writing to `/dev/null` or a
/// file; `None` with `off`.
pub(crate) fn install_audit_log(setting: &str) -> Option<(Arc<AuditCounter>, LogGuard)> {
    let path = match setting {
        "off" => return None,
        "devnull" => PathBuf::from("/dev/null"),
        path => PathBuf::from(path),
    };
    let file = File::create(&path)
        .unwrap_or_else(|e| panic!("cannot open {} for the audit log: {e}", path.display()));
    let counter = Arc::new(AuditCounter::default());
    let writer = AuditWriter {
        file,
        counter: counter.clone(),
    };
    let guard =
        portcullis::server::log::install_json(writer, tracing_subscriber::EnvFilter::new("info"));
    Some((counter, guard))
}
