//! Prometheus metrics of the server: decisions by service, outcome and status, decision
//! latency, the recent-decisions store and the active policy revision.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
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
struct ShadowLabels {
    service: String,
    active: &'static str,
    shadow: &'static str,
    /// `true` when the two differ in outcome, status or decisive rule.
    differs: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevisionLabels {
    revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: &'static str,
}

/// An exemplar's labels: the trace of the decision observed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TraceLabels {
    trace_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    transport: &'static str,
    reason: &'static str,
}

/// The metrics registry and the handles the server updates.
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    latency: Family<TransportLabels, HistogramWithExemplars<TraceLabels>>,
    store_records: Gauge,
    store_bytes: Gauge,
    policy_revision: Family<RevisionLabels, Gauge>,
    policy_services: Gauge,
    reloads: Family<ResultLabels, Counter>,
    last_reload_success: Gauge,
    key_fetches: Family<KeyFetchLabels, Counter>,
    panics: Counter,
    refused: Family<RefusalLabels, Counter>,
    keys_loaded: Family<KeySetLabels, Gauge>,
    key_set_age: Family<KeySetLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    shared_records: Family<ResultLabels, Counter>,
    shared_up: Gauge,
    rate_limit_counts: Family<CountedByLabels, Counter>,
    log_lines_dropped: Counter,
    spans_dropped: Counter,
    shadow_decisions: Family<ShadowLabels, Counter>,
    dpop_replay_checks: Family<CountedByLabels, Counter>,
    dpop_replay_cache_full: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CountedByLabels {
    counted_by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyFetchLabels {
    key_set: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeySetLabels {
    key_set: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
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
        // Each bucket keeps the trace id of its latest decision that had one, as an exemplar.
        let latency =
            Family::<TransportLabels, HistogramWithExemplars<TraceLabels>>::new_with_constructor(
                || HistogramWithExemplars::new(exponential_buckets(2e-6, 2.0, 20)),
            );
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
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy loads by result: success (a new revision), unchanged, failure (the last good set keeps serving)",
            reloads.clone(),
        );
        let last_reload_success = Gauge::default();
        registry.register(
            "policy_last_reload_success_timestamp_seconds",
            "Unix time of the last load that compiled",
            last_reload_success.clone(),
        );
        let key_fetches = Family::<KeyFetchLabels, Counter>::default();
        registry.register(
            "jwks_fetches",
            "Fetches of remote key sets by result: ok, invalid (a garbage answer), error (unreachable, timeout, bad status, too large)",
            key_fetches.clone(),
        );
        let keys_loaded = Family::<KeySetLabels, Gauge>::default();
        registry.register(
            "jwks_keys",
            "Usable keys in each remote key set",
            keys_loaded.clone(),
        );
        let key_set_age =
            Family::<KeySetLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "jwks_age_seconds",
            "Time since each remote key set was last fetched successfully",
            key_set_age.clone(),
        );
        let panics = Counter::default();
        registry.register(
            "decision_panics",
            "Decisions whose evaluation panicked; each was denied with 500 UNEXPECTED_ERROR",
            panics.clone(),
        );
        let refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "requests_refused",
            "Requests answered without a decision: overload (OVERLOADED), deadline (REQUEST_TIMEOUT) or a size cap",
            refused.clone(),
        );
        let shared_records = Family::<ResultLabels, Counter>::default();
        registry.register(
            "shared_trace_records",
            "Decisions sent to the shared (Redis) trace store: written, dropped_queue_full (Redis too slow), dropped_unavailable (Redis down or failing)",
            shared_records.clone(),
        );
        let shared_up = Gauge::default();
        registry.register(
            "shared_store_up",
            "1 while the shared (Redis) store answers, 0 while it does not (or before it first answered); always 0 without one",
            shared_up.clone(),
        );
        let rate_limit_counts = Family::<CountedByLabels, Counter>::default();
        registry.register(
            "rate_limit_counts",
            "Requests counted against rate limits, by counter: local (no shared store), shared (Redis), local_fallback (Redis did not answer)",
            rate_limit_counts.clone(),
        );
        let log_lines_dropped = Counter::default();
        registry.register(
            "log_lines_dropped",
            "Log and audit lines dropped because the log reader did not keep up",
            log_lines_dropped.clone(),
        );
        let spans_dropped = Counter::default();
        registry.register(
            "otlp_spans_dropped",
            "Decision spans not exported: the export queue was full or the collector failed",
            spans_dropped.clone(),
        );
        let shadow_decisions = Family::<ShadowLabels, Counter>::default();
        registry.register(
            "shadow_decisions",
            "Decisions of the shadow policy set, by service, the active and the shadow outcome, and whether they differ (outcome, status or decisive rule)",
            shadow_decisions.clone(),
        );
        let dpop_replay_checks = Family::<CountedByLabels, Counter>::default();
        registry.register(
            "dpop_replay_checks",
            "DPoP proofs checked against replay, by cache: local (no shared store), shared (Redis), local_fallback (Redis did not answer: this process' cache alone)",
            dpop_replay_checks.clone(),
        );
        let dpop_replay_cache_full = Counter::default();
        registry.register(
            "dpop_replay_cache_full",
            "DPoP proofs refused (401 DPOP_REPLAYED) because the replay cache was full of proofs still in their window",
            dpop_replay_cache_full.clone(),
        );
        Self {
            dpop_replay_checks,
            dpop_replay_cache_full,
            spans_dropped,
            shadow_decisions,
            registry,
            shared_records,
            shared_up,
            rate_limit_counts,
            log_lines_dropped,
            panics,
            refused,
            key_fetches,
            keys_loaded,
            key_set_age,
            reloads,
            last_reload_success,
            decisions,
            latency,
            store_records,
            store_bytes,
            policy_revision,
            policy_services,
        }
    }

    /// Counts a decision and its latency; `transport` is `ext_authz`, `grpc` or `http`.
    /// Counts the shadow set's decision on a request `active` decided.
    pub fn observe_shadow(&self, active: &Decision, shadow: &Decision, differs: bool) {
        self.shadow_decisions
            .get_or_create(&ShadowLabels {
                service: active.service.as_deref().unwrap_or("").to_owned(),
                active: active.outcome.as_str(),
                shadow: shadow.outcome.as_str(),
                differs,
            })
            .inc();
    }

    pub fn observe(&self, decision: &Decision, transport: &'static str, seconds: f64) {
        self.decisions
            .get_or_create(&DecisionLabels {
                service: decision.service.as_deref().unwrap_or("").to_owned(),
                outcome: decision.outcome.as_str(),
                status: decision.status,
            })
            .inc();
        let exemplar = decision.trace_link.map(|l| TraceLabels {
            trace_id: l.trace_hex(),
        });
        self.latency
            .get_or_create(&TransportLabels { transport })
            .observe(seconds, exemplar, None);
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

    pub fn count_reload(&self, result: &'static str, last_success_millis: i64) {
        self.reloads.get_or_create(&ResultLabels { result }).inc();
        self.last_reload_success.set(last_success_millis / 1000);
    }

    pub fn count_panic(&self) {
        self.panics.inc();
    }

    /// Counts a request the transport refused; `reason` is the refusal's detail code.
    pub fn count_refusal(&self, transport: &'static str, reason: &'static str) {
        self.refused
            .get_or_create(&RefusalLabels { transport, reason })
            .inc();
    }

    pub fn count_key_fetch(&self, key_set: &str, result: &'static str) {
        self.key_fetches
            .get_or_create(&KeyFetchLabels {
                key_set: key_set.to_owned(),
                result,
            })
            .inc();
    }

    /// Keys and age (`None` before the first load) of a remote key set.
    pub fn set_key_set(&self, key_set: &str, keys: usize, age_seconds: Option<f64>) {
        let labels = KeySetLabels {
            key_set: key_set.to_owned(),
        };
        self.keys_loaded.get_or_create(&labels).set(keys as i64);
        if let Some(age) = age_seconds {
            self.key_set_age.get_or_create(&labels).set(age);
        }
    }

    /// Counts `n` decisions sent to the shared trace store with `result`.
    pub fn count_shared_records(&self, result: &'static str, n: u64) {
        self.shared_records
            .get_or_create(&ResultLabels { result })
            .inc_by(n);
    }

    pub fn set_shared_up(&self, up: bool) {
        self.shared_up.set(i64::from(up));
    }

    pub fn count_rate_limit(&self, counted_by: &'static str) {
        self.rate_limit_counts
            .get_or_create(&CountedByLabels { counted_by })
            .inc();
    }

    /// Counts a DPoP proof checked against replay; `counted_by` as for rate limits.
    pub fn count_dpop_replay_check(&self, counted_by: &'static str) {
        self.dpop_replay_checks
            .get_or_create(&CountedByLabels { counted_by })
            .inc();
    }

    /// Follows the replay cache's own count of proofs refused because it was full.
    pub fn set_dpop_replay_cache_full(&self, total: u64) {
        let counted = self.dpop_replay_cache_full.get();
        if total > counted {
            self.dpop_replay_cache_full.inc_by(total - counted);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        // The log buffer counts for the whole process; the counter catches up here.
        let dropped = super::log::dropped_lines();
        self.log_lines_dropped
            .inc_by(dropped.saturating_sub(self.log_lines_dropped.get()));
        let spans = super::otel::dropped_spans();
        self.spans_dropped
            .inc_by(spans.saturating_sub(self.spans_dropped.get()));
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
