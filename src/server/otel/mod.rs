//! Decisions as OpenTelemetry spans: the trace context a call came with (`context`), one
//! `decide` span per decision made through `tracing` and exported over OTLP by the
//! OpenTelemetry SDK (`export`), and the trace link a decision's record keeps.
//!
//! The spans are `tracing` spans on the [`TARGET`] target; only the layer [`Telemetry`]
//! makes turns them into OpenTelemetry spans, and the log never shows them. Without that
//! layer a span is disabled and costs a check.

mod context;
mod export;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub use self::context::incoming;
pub use self::export::{EXPORT_TIMEOUT, QUEUE_CAPACITY};
use crate::decision::{Decision, DecisionRequest, Outcome, TraceLink};

/// The `tracing` target of the spans exported over OTLP.
pub const TARGET: &str = "portcullis::otel";
/// The name of a decision's span.
pub(crate) const DECIDE_SPAN: &str = "decide";
/// The attribute that says a decision's outcome.
pub(crate) const OUTCOME_KEY: &str = "portcullis.decision.outcome";

/// Spans not exported since the process started: the queue was full, or the export failed.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Spans dropped since the process started (for `/metrics`).
pub fn dropped_spans() -> u64 {
    DROPPED.load(std::sync::atomic::Ordering::Relaxed)
}

/// How spans reach the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    #[value(name = "grpc")]
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    /// The protocol an endpoint URL says: OTLP/HTTP's path for traces, `/v1/traces`, means
    /// HTTP/protobuf; anything else gRPC.
    pub fn for_endpoint(endpoint: &str) -> Self {
        let path = endpoint.split(['?', '#']).next().unwrap_or("");
        if path.trim_end_matches('/').ends_with("/v1/traces") {
            Protocol::HttpProtobuf
        } else {
            Protocol::Grpc
        }
    }
}

/// Where and how decisions' spans are exported.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// The collector's URL (`http://collector:4317`; for HTTP/protobuf the base URL, to
    /// which `/v1/traces` is added when it has no path).
    pub endpoint: String,
    pub protocol: Protocol,
    /// The share of root traces sampled (a call without a trace context); calls with one
    /// follow their parent's sampling flag.
    pub sample_ratio: f64,
    /// Record every decision's span and export a denial's even when its parent was not
    /// sampled (as a root span linked to the parent).
    pub always_sample_denials: bool,
    pub service_name: String,
}

/// The running OTLP pipeline; [`shutdown`](Self::shutdown) exports what is queued.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

/// Why the pipeline cannot start.
#[derive(Debug, thiserror::Error)]
#[error("cannot export spans to `{endpoint}`: {reason}")]
pub struct TelemetryError {
    endpoint: String,
    reason: String,
}

impl Telemetry {
    /// Builds the exporter and starts its task on `runtime`. Fails on an endpoint the
    /// exporter cannot use (not a URL); a collector that does not answer is no error: its
    /// spans are dropped and counted.
    pub fn start(
        config: &OtlpConfig,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self, TelemetryError> {
        let fail = |reason: String| TelemetryError {
            endpoint: config.endpoint.clone(),
            reason,
        };
        if !(0.0..=1.0).contains(&config.sample_ratio) {
            return Err(fail(format!(
                "the sampling ratio must be from 0 to 1, not {}",
                config.sample_ratio
            )));
        }
        let url = http::Uri::try_from(config.endpoint.as_str())
            .map_err(|e| fail(format!("not a URL: {e}")))?;
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            return Err(fail(
                "the URL must be http:// or https:// with a host".into(),
            ));
        }
        // Building a tonic channel needs the runtime it will run on.
        let _entered = runtime.enter();
        let exporter = match config.protocol {
            Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .build(),
            Protocol::HttpProtobuf => {
                let endpoint = if matches!(url.path(), "" | "/") {
                    format!("{}/v1/traces", config.endpoint.trim_end_matches('/'))
                } else {
                    config.endpoint.clone()
                };
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_http_client(reqwest::Client::new())
                    .with_endpoint(endpoint)
                    .with_timeout(EXPORT_TIMEOUT)
                    .build()
            }
        }
        .map_err(|e| fail(e.to_string()))?;
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_sampler(export::DecisionSampler::new(
                config.sample_ratio,
                config.always_sample_denials,
            ))
            .with_span_processor(export::QueueProcessor::start(
                exporter,
                &resource,
                config.always_sample_denials,
                runtime,
            ))
            .with_resource(resource)
            .build();
        Ok(Self { provider })
    }

    /// The `tracing` layer that turns the [`TARGET`] spans into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        use tracing_subscriber::Layer as _;
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("portcullis"))
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(TARGET, tracing::Level::INFO),
            )
    }

    /// Exports what is queued, waiting at most `timeout`. Call it off the runtime's worker
    /// threads (the export runs on them).
    pub fn shutdown(&self, timeout: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(error = %e, "spans still queued at exit were not exported");
        }
    }
}

/// The trace context headers of a gRPC call's metadata, as name and value.
pub(crate) fn metadata_context(
    metadata: &tonic::metadata::MetadataMap,
) -> Vec<(&'static str, &str)> {
    ["traceparent", "tracestate", "b3"]
        .into_iter()
        .filter_map(|name| Some((name, metadata.get(name)?.to_str().ok()?)))
        .collect()
}

/// The span of one decision, child of `parent` (the gateway's span) if there is one.
/// Disabled (and nothing computed) when no OTLP layer is installed.
pub(crate) fn decide_span(
    request: &DecisionRequest<'_>,
    transport: &'static str,
    parent: Option<&SpanContext>,
    options: &super::TracingOptions,
) -> tracing::Span {
    if !tracing::span_enabled!(target: TARGET, tracing::Level::INFO) {
        return tracing::Span::none();
    }
    // Head sampling here rather than only in the SDK's sampler: a span the sampler drops
    // has already cost its attributes and the layer's bookkeeping (at 1% sampling, most of
    // what tracing at 100% costs). With denials forced in, every span is recorded, and the
    // sampler decides (see `export::DecisionSampler`).
    if !options.always_sample_denials {
        let sampled = match parent {
            Some(parent) => parent.is_sampled(),
            None => fastrand::f64() < options.sample_ratio,
        };
        if !sampled {
            return tracing::Span::none();
        }
    }
    let span = tracing::info_span!(
        target: TARGET,
        "decide",
        otel.kind = "server",
        otel.status_code = Empty,
        "http.request.method" = Empty,
        "url.full" = Empty,
        "client.address" = Empty,
        "portcullis.transport" = transport,
        "portcullis.decision.id" = Empty,
        "portcullis.decision.service" = Empty,
        "portcullis.decision.operation" = Empty,
        "portcullis.decision.outcome" = Empty,
        "portcullis.decision.status" = Empty,
        "portcullis.decision.rule" = Empty,
        "portcullis.decision.policy_revision" = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    if let Some(parent) = parent {
        let _ =
            span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent.clone()));
    }
    span.record("http.request.method", request.method);
    span.record("url.full", redact_query(request.url).as_ref());
    if let Some(client) = request.client {
        span.record("client.address", tracing::field::display(client));
    }
    span
}

/// A child span of the decision being made, from `make`; none when the decision has no span
/// (not sampled, or no exporter), where `make`'s span would become a root of its own.
pub(crate) fn child_span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if tracing::Span::current().is_none() {
        tracing::Span::none()
    } else {
        make()
    }
}

/// Records `decision` on its span and returns the trace link its record keeps: the
/// incoming context's trace (exported or not), else the span's own when it is exported.
pub(crate) fn finish(
    span: &tracing::Span,
    decision: &Decision,
    parent: Option<&SpanContext>,
    always_sample_denials: bool,
) -> Option<TraceLink> {
    let from_parent = |p: &SpanContext| TraceLink {
        trace_id: u128::from_be_bytes(p.trace_id().to_bytes()),
        span_id: None,
    };
    if span.is_disabled() {
        return parent.map(from_parent);
    }
    span.record("portcullis.decision.id", decision.id.as_str());
    if let Some(service) = &decision.service {
        span.record("portcullis.decision.service", &**service);
    }
    if let Some(operation) = &decision.operation {
        span.record("portcullis.decision.operation", &**operation);
    }
    span.record(OUTCOME_KEY, decision.outcome.as_str());
    span.record("portcullis.decision.status", decision.status);
    if let Some(rule) = decision.decisive().and_then(|e| e.rule.as_deref()) {
        span.record("portcullis.decision.rule", rule);
    }
    span.record(
        "portcullis.decision.policy_revision",
        &*decision.policy_revision,
    );
    if decision.status >= 500 {
        span.record("otel.status_code", "error");
    }
    let cx = span.context();
    let own = cx.span();
    let own = own.span_context();
    if !own.is_valid() {
        return parent.map(from_parent);
    }
    let exported = own.is_sampled() || (always_sample_denials && decision.outcome == Outcome::Deny);
    let link = TraceLink {
        trace_id: u128::from_be_bytes(own.trace_id().to_bytes()),
        span_id: Some(u64::from_be_bytes(own.span_id().to_bytes())),
    };
    match (parent, exported) {
        (_, true) => Some(link),
        (Some(p), false) => Some(from_parent(p)),
        (None, false) => None,
    }
}

/// `url` with every query value replaced by `REDACTED` (names kept): query values carry
/// tokens and personal data.
pub(crate) fn redact_query(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((base, rest)) = url.split_once('?') else {
        return url.into();
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (rest, None),
    };
    let mut out = crate::route::url::redact_pairs(base, query, |_| true);
    if fragment.is_some() {
        // A fragment never reaches a server; one that does is not shown.
        out.push_str("#REDACTED");
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_whose_path_is_otlp_https_says_http_protobuf() {
        assert_eq!(
            Protocol::for_endpoint("http://collector:4318/v1/traces"),
            Protocol::HttpProtobuf
        );
        assert_eq!(
            Protocol::for_endpoint("http://collector:4317"),
            Protocol::Grpc
        );
        assert_eq!(
            Protocol::for_endpoint("http://collector:4317/"),
            Protocol::Grpc
        );
    }

    #[test]
    fn query_values_are_redacted_and_names_kept() {
        assert_eq!(redact_query("https://a.test/x"), "https://a.test/x");
        assert_eq!(
            redact_query("https://a.test/x?access_token=eyJ.a.b&debug&page=2"),
            "https://a.test/x?access_token=REDACTED&debug&page=REDACTED"
        );
        assert_eq!(
            redact_query("https://a.test/x?q=1#frag"),
            "https://a.test/x?q=REDACTED#REDACTED"
        );
    }
}
