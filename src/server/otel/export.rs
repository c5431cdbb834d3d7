//! Spans out: the sampler (parent-based, a ratio for roots, denials optionally forced in) and
//! the span processor that queues finished spans for the SDK's OTLP exporter.
//!
//! The SDK's own batch processor drops spans silently when its queue is full; this one
//! counts every span it does not export (queue full, export failed or timed out), so that
//! `portcullis_otlp_spans_dropped_total` tells the operator. A decision only pushes its
//! span into a bounded queue: a slow or dead collector never makes it wait.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use opentelemetry::trace::{
    Link, SamplingDecision, SamplingResult, SpanContext, SpanId, SpanKind, TraceFlags, TraceId,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, ShouldSample, Span, SpanData, SpanExporter,
    SpanProcessor,
};
use tokio::sync::{Notify, mpsc};

use super::{DECIDE_SPAN, DROPPED, OUTCOME_KEY};

/// Spans waiting to be exported; past this, finished spans are dropped and counted.
pub const QUEUE_CAPACITY: usize = 8192;
/// Most spans in one export call.
const MAX_BATCH: usize = 512;
/// Longest time a span waits in the queue when fewer than a batch are waiting.
const EXPORT_EVERY: Duration = Duration::from_millis(500);
/// Longest an export call may take before its spans count as dropped.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Parent-based sampling with `ratio` for root spans; with `always_denials`, the spans the
/// parent-based rule drops are still recorded, so that a denial's can be exported at its
/// end (see [`QueueProcessor`]).
#[derive(Debug, Clone)]
pub struct DecisionSampler {
    inner: Sampler,
    always_denials: bool,
}

impl DecisionSampler {
    pub fn new(ratio: f64, always_denials: bool) -> Self {
        // Without forced denials, `decide_span` has sampled roots at `ratio` already and
        // makes no span for the rest: the SDK keeps the roots it is given.
        let roots = if always_denials {
            Sampler::TraceIdRatioBased(ratio)
        } else {
            Sampler::AlwaysOn
        };
        Self {
            inner: Sampler::ParentBased(Box::new(roots)),
            always_denials,
        }
    }
}

impl ShouldSample for DecisionSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let mut result =
            self.inner
                .should_sample(parent_context, trace_id, name, span_kind, attributes, links);
        if self.always_denials
            && name == DECIDE_SPAN
            && matches!(result.decision, SamplingDecision::Drop)
        {
            result.decision = SamplingDecision::RecordOnly;
        }
        result
    }
}

/// A command to the export task; it answers on the channel once done.
enum Control {
    Flush(std::sync::mpsc::Sender<()>),
    Shutdown(std::sync::mpsc::Sender<()>),
}

/// Queues sampled spans (and, with `always_denials`, recorded denials) for export by a task
/// on the server's runtime.
#[derive(Debug)]
pub struct QueueProcessor {
    queue: mpsc::Sender<SpanData>,
    control: mpsc::UnboundedSender<Control>,
    wake: Arc<Notify>,
    always_denials: bool,
    ids: RandomIdGenerator,
}

impl QueueProcessor {
    /// Starts the export task on `runtime`.
    pub fn start<E: SpanExporter + 'static>(
        mut exporter: E,
        resource: &opentelemetry_sdk::Resource,
        always_denials: bool,
        runtime: &tokio::runtime::Handle,
    ) -> Self {
        // The SDK hands the resource to the processor; the exporter, which writes it into
        // every export, moves into the task below.
        exporter.set_resource(resource);
        let (queue, spans) = mpsc::channel(QUEUE_CAPACITY);
        let (control, commands) = mpsc::unbounded_channel();
        let wake = Arc::new(Notify::new());
        runtime.spawn(export_loop(exporter, spans, commands, wake.clone()));
        Self {
            queue,
            control,
            wake,
            always_denials,
            ids: RandomIdGenerator::default(),
        }
    }

    fn is_denial(span: &SpanData) -> bool {
        span.name == DECIDE_SPAN
            && span
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == OUTCOME_KEY && kv.value == Value::from("deny"))
    }

    /// A denial's span whose parent was not sampled, made a root span of its own trace that
    /// links to the parent: exported alone, it is never an orphan in the parent's trace.
    fn forced_root(&self, mut span: SpanData) -> SpanData {
        let old = span.span_context.clone();
        if span.parent_span_id != SpanId::INVALID {
            span.links.links.push(Link::with_context(SpanContext::new(
                old.trace_id(),
                span.parent_span_id,
                TraceFlags::default(),
                span.parent_span_is_remote,
                old.trace_state().clone(),
            )));
            span.parent_span_id = SpanId::INVALID;
            span.parent_span_is_remote = false;
            span.span_context = SpanContext::new(
                self.ids.new_trace_id(),
                old.span_id(),
                TraceFlags::SAMPLED,
                false,
                old.trace_state().clone(),
            );
        } else {
            // A root the ratio left out: its trace id is its own already.
            span.span_context = SpanContext::new(
                old.trace_id(),
                old.span_id(),
                TraceFlags::SAMPLED,
                false,
                old.trace_state().clone(),
            );
        }
        span
    }

    /// Sends `make`'s command to the export task and waits for it to be done. Blocks the
    /// calling thread: call it off the runtime's worker threads.
    fn command(
        &self,
        make: impl FnOnce(std::sync::mpsc::Sender<()>) -> Control,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (done, finished) = std::sync::mpsc::channel();
        self.control
            .send(make(done))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        match finished.recv_timeout(timeout) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(OTelSdkError::AlreadyShutdown)
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(timeout)),
        }
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let span = if span.span_context.is_sampled() {
            span
        } else if self.always_denials && Self::is_denial(&span) {
            self.forced_root(span)
        } else {
            return;
        };
        if self.queue.try_send(span).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        if self.queue.max_capacity() - self.queue.capacity() >= MAX_BATCH {
            self.wake.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.command(Control::Flush, EXPORT_TIMEOUT * 2)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.command(Control::Shutdown, timeout)
    }
}

async fn export_loop<E: SpanExporter>(
    mut exporter: E,
    mut spans: mpsc::Receiver<SpanData>,
    mut commands: mpsc::UnboundedReceiver<Control>,
    wake: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut open = true;
    loop {
        let command = tokio::select! {
            command = commands.recv(), if open => {
                // The processor is gone: export what is left, then stop.
                open = command.is_some();
                command
            }
            () = wake.notified() => None,
            () = tokio::time::sleep(EXPORT_EVERY) => None,
        };
        // Everything queued so far, a batch at a time.
        while let Ok(span) = spans.try_recv() {
            batch.push(span);
            if batch.len() == MAX_BATCH {
                export(&exporter, &mut batch).await;
            }
        }
        export(&exporter, &mut batch).await;
        match command {
            None if !open => {
                let _ = exporter.shutdown();
                return;
            }
            None => {}
            Some(Control::Flush(done)) => {
                let _ = done.send(());
            }
            Some(Control::Shutdown(done)) => {
                let _ = exporter.shutdown();
                let _ = done.send(());
                return;
            }
        }
    }
}

async fn export<E: SpanExporter>(exporter: &E, batch: &mut Vec<SpanData>) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    let spans = std::mem::replace(batch, Vec::with_capacity(MAX_BATCH));
    match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) | Err(_) => {
            DROPPED.fetch_add(n, Ordering::Relaxed);
        }
    }
}
