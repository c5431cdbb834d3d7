//! Prometheus metrics of the server: decisions by service, outcome and status, decision
//! latency, the recent-decisions store and the active policy revision.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::decision::Decision;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    /// Empty when no service matched (404) or the URL was refused (400).
    service: String,
    outcome: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevisionLabels {
    revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: &'static str,
}

/// The metrics registry and the handles the server updates.
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    latency: Family<TransportLabels, Histogram>,
    store_records: Gauge,
    store_bytes: Gauge,
    policy_revision: Family<RevisionLabels, Gauge>,
    policy_services: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions made, by service, outcome and HTTP status",
            decisions.clone(),
        );
        // 2 µs to about 1 s: a cached-token decision is a few µs, a fresh RSA one ~25 µs; the
        // tail covers a loaded server.
        let latency = Family::<TransportLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(2e-6, 2.0, 20))
        });
        registry.register(
            "decision_duration_seconds",
            "Time to decide, from the request reaching Portcullis to the answer being built",
            latency.clone(),
        );
        let store_records = Gauge::default();
        registry.register(
            "trace_store_records",
            "Decisions held in the recent-decisions store",
            store_records.clone(),
        );
        let store_bytes = Gauge::default();
        registry.register(
            "trace_store_bytes",
            "Approximate memory held by the recent-decisions store",
            store_bytes.clone(),
        );
        let policy_revision = Family::<RevisionLabels, Gauge>::default();
        registry.register(
            "policy_revision",
            "The active policy revision (content hash), as a label; the value is 1",
            policy_revision.clone(),
        );
        let policy_services = Gauge::default();
        registry.register(
            "policy_services",
            "API services in the active policy set",
            policy_services.clone(),
        );
        Self {
            registry,
            decisions,
            latency,
            store_records,
            store_bytes,
            policy_revision,
            policy_services,
        }
    }

    /// Counts a decision and its latency; `transport` is `ext_authz`, `grpc` or `http`.
    pub fn observe(&self, decision: &Decision, transport: &'static str, seconds: f64) {
        self.decisions
            .get_or_create(&DecisionLabels {
                service: decision.service.as_deref().unwrap_or("").to_owned(),
                outcome: decision.outcome.as_str(),
                status: decision.status,
            })
            .inc();
        self.latency
            .get_or_create(&TransportLabels { transport })
            .observe(seconds);
    }

    pub fn set_store(&self, records: usize, bytes: usize) {
        self.store_records.set(records as i64);
        self.store_bytes.set(bytes as i64);
    }

    pub fn set_policy(&self, revision: &str, services: usize) {
        self.policy_revision.clear();
        self.policy_revision
            .get_or_create(&RevisionLabels {
                revision: revision.to_owned(),
            })
            .set(1);
        self.policy_services.set(services as i64);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
