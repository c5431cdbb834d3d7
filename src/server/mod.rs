//! The network side: the decision engine served over gRPC (Envoy ext_authz, Portcullis' own
//! API, health, reflection) and HTTP (nginx `auth_request`, decisions API, health, metrics),
//! every decision recorded in the recent-decisions store and written to the audit log.

pub mod admin;
pub mod audit;
mod convert;
mod ext_authz;
mod grpc;
mod http;
pub mod keys;
pub mod log;
pub mod metrics;
pub mod otel;
pub mod overview;
pub mod reload;
pub mod shared;
pub mod sideband;
pub mod transport;
mod ui;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::decision::{Decision, DecisionRequest, Engine};
use crate::policy::{PolicyErrors, PolicyOptions, PolicySet, load_dir};
use crate::trace::TraceStore;

use self::metrics::Metrics;

/// Largest gRPC message accepted: a Check request carries the request headers, which
/// gateways cap far below this (Envoy: 60 KiB by default).
pub const MAX_GRPC_MESSAGE: usize = 1024 * 1024;

/// How the server is set up; the `serve` command fills it from flags.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub policies: PathBuf,
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// Decisions kept in the recent-decisions store.
    pub trace_capacity: usize,
    /// Verified tokens kept in the token cache.
    pub token_cache_capacity: usize,
    /// How long in-flight requests may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// After a shutdown signal, how long to go on serving while reporting not ready (gRPC
    /// health NOT_SERVING, `/readyz` 503), so that load balancers stop sending requests first.
    pub shutdown_delay: Duration,
    pub policy_options: PolicyOptions,
    /// Reload on file events in the policy directory.
    pub watch_events: bool,
    /// Compare the policy files' metadata this often, to catch what events miss.
    pub reload_poll: Option<Duration>,
    /// How long the server waits for remote key sets before it reports ready anyway (tokens
    /// of a key set still missing are refused with `KEYS_UNAVAILABLE`).
    pub jwks_start_timeout: Duration,
    /// At most one fetch triggered by unknown key ids per key set per this interval.
    pub jwks_refetch_interval: Duration,
    /// Limits and TLS of both listeners.
    pub transport: transport::TransportConfig,
    /// The bearer token that opens recent decisions and metrics on a listener that is not
    /// on loopback (and then on loopback listeners too).
    pub admin_token: Option<String>,
    /// A URL containing this text makes the engine panic: a test hook, off by default.
    pub panic_marker: Option<String>,
    /// State shared with other replicas (Redis), if any.
    pub shared: SharedStores,
    /// The Sideband API's secrets; without them, `/sideband/*` answers 404.
    pub sideband: Option<sideband::SidebandConfig>,
    /// A second policy directory every request is also decided by, without effect on the
    /// answer; a decision records the shadow set's when the two differ.
    pub shadow_policies: Option<PathBuf>,
    /// Where `/v1/authorize` finds the client certificate (for certificate-bound tokens):
    /// a header the gateway sets, read only from the trusted gateways.
    pub client_cert: Option<ClientCertHeader>,
    /// What the decisions' spans and trace links need to know of the OTLP set-up.
    pub tracing: TracingOptions,
}

/// The request header carrying the client certificate to `/v1/authorize`, and the peers
/// trusted to set it. From any other peer the header is ignored: a client could write it.
#[derive(Debug, Clone)]
pub struct ClientCertHeader {
    pub name: ::http::HeaderName,
    pub trusted_gateways: Vec<ipnet::IpNet>,
}

impl ClientCertHeader {
    /// Whether the TCP peer `peer` may set the header.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        self.trusted_gateways.iter().any(|net| net.contains(&peer))
    }
}

/// The server's side of tracing; the OTLP exporter itself is the process' (see
/// [`otel::Telemetry`]).
#[derive(Debug, Clone)]
pub struct TracingOptions {
    /// The share of calls without a trace context whose spans are exported (the exporter's
    /// `--otlp-sample`); decided before a span is made, so an unsampled call costs nothing.
    pub sample_ratio: f64,
    /// Denials' spans are exported even when their parent was not sampled.
    pub always_sample_denials: bool,
    /// A trace UI's address with `{traceId}` in it, which the web page links trace ids to.
    pub trace_ui_url: Option<String>,
}

impl Default for TracingOptions {
    fn default() -> Self {
        Self {
            sample_ratio: 1.0,
            always_sample_denials: false,
            trace_ui_url: None,
        }
    }
}

/// Which state replicas share through Redis.
#[derive(Debug, Clone, Default)]
pub struct SharedStores {
    /// Recent decisions in a shared stream.
    pub decisions: Option<shared::SharedConfig>,
    /// Rate-limit counters.
    pub limits: Option<shared::SharedConfig>,
    /// DPoP proof ids seen (replay protection).
    pub proofs: Option<shared::SharedConfig>,
}

impl SharedStores {
    /// From the `serve` flags: `trace_store` is `memory` or a Redis URL; `rate_limits` is
    /// `local`, a Redis URL, or unset (then the trace store's Redis, if any).
    pub fn from_flags(
        trace_store: &str,
        rate_limits: Option<&str>,
        timeout: Duration,
        stream_length: usize,
        prefix: &str,
    ) -> anyhow::Result<Self> {
        let redis = |flag: &str, url: &str| -> anyhow::Result<shared::SharedConfig> {
            if url.starts_with("rediss://") {
                anyhow::bail!(
                    "`--{flag}`: TLS to Redis (`rediss://`) is not supported yet; reach Redis over a private network or a TLS tunnel (e.g. stunnel) with `redis://`"
                );
            }
            if !url.starts_with("redis://") {
                anyhow::bail!("`--{flag}` must be `memory`/`local` or `redis://host:port/db`");
            }
            Ok(shared::SharedConfig {
                url: url.to_owned(),
                timeout,
                stream_length,
                prefix: prefix.to_owned(),
            })
        };
        let decisions = match trace_store {
            "memory" => None,
            url => Some(redis("trace-store", url)?),
        };
        let limits = match rate_limits {
            None => decisions.clone(),
            Some("local") => None,
            Some(url) => Some(redis("rate-limit-store", url)?),
        };
        // Proofs are shared wherever anything is: a replayed proof must fail on every replica.
        let proofs = limits.clone().or_else(|| decisions.clone());
        Ok(Self {
            decisions,
            limits,
            proofs,
        })
    }
}

impl ServerConfig {
    pub fn new(policies: PathBuf) -> Self {
        Self {
            policies,
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            trace_capacity: crate::trace::DEFAULT_CAPACITY,
            token_cache_capacity: crate::token::DEFAULT_CACHE_CAPACITY,
            shutdown_grace: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            policy_options: PolicyOptions::default(),
            watch_events: true,
            reload_poll: Some(Duration::from_secs(2)),
            jwks_start_timeout: Duration::from_secs(10),
            jwks_refetch_interval: Duration::from_secs(30),
            transport: transport::TransportConfig::default(),
            admin_token: None,
            panic_marker: None,
            shared: SharedStores::default(),
            sideband: None,
            tracing: TracingOptions::default(),
            shadow_policies: None,
            client_cert: None,
        }
    }
}

/// What every request handler shares: the active policy set, the engine, the store.
#[derive(Debug)]
pub struct AppState {
    policies: ArcSwap<PolicySet>,
    /// The shadow set, once one compiled.
    shadow: arc_swap::ArcSwapOption<PolicySet>,
    /// What the last loads of the shadow set found.
    shadow_status: std::sync::Mutex<reload::ReloadStatus>,
    engine: Engine,
    pub store: TraceStore,
    pub metrics: Arc<Metrics>,
    reload_status: std::sync::Mutex<reload::ReloadStatus>,
    pub keys: Arc<keys::KeyFetchers>,
    /// False until policies and remote key sets are loaded (or the key wait timed out), and
    /// again once shutting down.
    ready: watch::Sender<bool>,
    /// Shutting down: never ready again.
    draining: std::sync::atomic::AtomicBool,
    /// Who may read decisions and metrics on each listener.
    pub admin_http: admin::AdminAccess,
    pub admin_grpc: admin::AdminAccess,
    /// Recent decisions of every replica (Redis), besides this process' own store.
    shared_decisions: Option<shared::SharedDecisions>,
    /// Rate-limit counters shared by replicas; without them the engine's local counters count.
    shared_limits: Option<shared::SharedLimits>,
    shared_proofs: Option<shared::SharedProofs>,
    /// The secrets that open the Sideband API, when it is on.
    pub(crate) sideband: Option<Arc<sideband::SidebandSecrets>>,
    /// Largest body of a Sideband API call.
    pub(crate) sideband_max_body: usize,
    /// The client-certificate header of `/v1/authorize`, when configured.
    pub(crate) client_cert: Option<ClientCertHeader>,
    pub(crate) tracing: TracingOptions,
    /// Decisions per second of the last minutes, for the web page's overview.
    pub overview: overview::Overview,
}

/// A listing of recent decisions, and whether the shared store could be read.
#[derive(Debug)]
pub struct Listing {
    pub decisions: Vec<Arc<crate::trace::StoredDecision>>,
    /// `Some(false)`: the shared store did not answer and only this replica's decisions are
    /// listed; `None`: there is no shared store.
    pub shared: Option<bool>,
}

impl AppState {
    /// Fails only on a shared store (Redis) URL that cannot be used: a replica must never
    /// keep to itself state it was told to share.
    pub fn new(
        policies: PolicySet,
        config: &ServerConfig,
        keys: Arc<keys::KeyFetchers>,
    ) -> Result<Self, BindError> {
        let metrics = Arc::new(Metrics::new());
        // One connection serves both uses when they name the same Redis.
        let mut links: Vec<(String, Arc<shared::RedisLink>)> = Vec::new();
        let mut link = |c: &shared::SharedConfig| -> Result<Arc<shared::RedisLink>, BindError> {
            if let Some((_, l)) = links.iter().find(|(url, _)| *url == c.url) {
                return Ok(l.clone());
            }
            let l = Arc::new(
                shared::RedisLink::new(&c.url, c.timeout, metrics.clone())
                    .map_err(BindError::Shared)?,
            );
            links.push((c.url.clone(), l.clone()));
            Ok(l)
        };
        let shared_decisions = match &config.shared.decisions {
            Some(c) => Some(shared::SharedDecisions::start(link(c)?, c, metrics.clone())),
            None => None,
        };
        let shared_limits = match &config.shared.limits {
            Some(c) => Some(shared::SharedLimits::new(link(c)?, &c.prefix)),
            None => None,
        };
        let shared_proofs = match &config.shared.proofs {
            Some(c) => Some(shared::SharedProofs::new(link(c)?, &c.prefix)),
            None => None,
        };
        let sideband = match &config.sideband {
            Some(c) => Some(Arc::new(
                sideband::SidebandSecrets::load(c).map_err(BindError::Sideband)?,
            )),
            None => None,
        };
        metrics.set_policy(policies.revision(), policies.services.len());
        let loaded = reload::unix_millis();
        metrics.count_reload("success", loaded);
        Ok(Self {
            policies: ArcSwap::from_pointee(policies),
            shadow: arc_swap::ArcSwapOption::empty(),
            shadow_status: std::sync::Mutex::new(reload::ReloadStatus::default()),
            engine: match &config.panic_marker {
                Some(marker) => Engine::new(config.token_cache_capacity).with_panic_marker(marker),
                None => Engine::new(config.token_cache_capacity),
            },
            store: TraceStore::new(config.trace_capacity),
            metrics,
            reload_status: std::sync::Mutex::new(reload::ReloadStatus {
                last_success_millis: loaded,
                failure: None,
            }),
            // Ready from the first request on when there is no remote key set to wait for, or
            // no wait at all.
            ready: watch::channel(
                keys.registry.all().is_empty() || config.jwks_start_timeout.is_zero(),
            )
            .0,
            keys,
            draining: std::sync::atomic::AtomicBool::new(false),
            admin_http: admin::AdminAccess::Loopback,
            admin_grpc: admin::AdminAccess::Loopback,
            shared_decisions,
            shared_limits,
            shared_proofs,
            sideband,
            sideband_max_body: config.transport.max_sideband_body_bytes,
            client_cert: config.client_cert.clone(),
            tracing: config.tracing.clone(),
            overview: overview::Overview::default(),
        })
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Whether the server is shutting down (and so reports not ready).
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reports not ready from now on, while requests are still served.
    fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.ready.send_replace(false);
    }

    /// Becomes ready, unless shutting down.
    fn become_ready(&self) {
        if !self.is_draining() {
            self.ready.send_replace(true);
        }
    }

    /// Completes once the server is ready.
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// Makes `policies` the active set; decisions already running keep the set they loaded.
    fn swap_policies(&self, policies: PolicySet) {
        self.policies.store(Arc::new(policies));
    }

    pub fn policies(&self) -> arc_swap::Guard<Arc<PolicySet>> {
        self.policies.load()
    }

    /// Decides, records the decision in the store, counts it and writes the audit event.
    /// `transport` names the interface the request came through, for metrics and the audit.
    ///
    /// A token whose key id the service's remote key set lacks makes the key set be fetched
    /// again (rate-limited); if that brings new keys, the request is decided again.
    ///
    /// The trace context comes from the request's headers; see [`decide_traced`](Self::decide_traced).
    pub async fn decide(&self, request: &DecisionRequest<'_>, transport: &'static str) -> Decision {
        self.decide_traced(request, transport, &[]).await
    }

    /// [`decide`](Self::decide), in the trace whose context `metadata` (the call's own
    /// metadata, such as gRPC's) or else the request's headers carry; a malformed context is
    /// ignored. The decision is one `decide` span there when spans are exported.
    pub async fn decide_traced(
        &self,
        request: &DecisionRequest<'_>,
        transport: &'static str,
        metadata: &[(&str, &str)],
    ) -> Decision {
        use tracing::Instrument as _;
        let parent = otel::incoming(metadata, request.headers);
        let span = otel::decide_span(request, transport, parent.as_ref(), &self.tracing);
        if span.is_disabled() {
            return self
                .decide_in(request, transport, parent.as_ref(), &span)
                .await;
        }
        self.decide_in(request, transport, parent.as_ref(), &span)
            .instrument(span.clone())
            .await
    }

    async fn decide_in(
        &self,
        request: &DecisionRequest<'_>,
        transport: &'static str,
        parent: Option<&opentelemetry::trace::SpanContext>,
        span: &tracing::Span,
    ) -> Decision {
        use tracing::Instrument as _;
        let started = Instant::now();
        let shadow = self.shadow.load_full();
        let mut now = SystemTime::now();
        let mut pending = self.engine.decide_pending_recording(
            &self.policies.load(),
            shadow.as_deref(),
            request,
            now,
        );
        if pending.decision().detail_code() == Some("UNKNOWN_KEY")
            && let Some(location) = self.remote_location(pending.decision().service.as_deref())
            && self
                .keys
                .refetch_for_unknown_key(&location)
                .instrument(otel::child_span(|| {
                    tracing::info_span!(
                        target: otel::TARGET,
                        "jwks fetch",
                        otel.kind = "client",
                        "url.full" = %otel::redact_query(&location.to_string())
                    )
                }))
                .await
        {
            now = SystemTime::now();
            pending = self.engine.decide_pending_recording(
                &self.policies.load(),
                shadow.as_deref(),
                request,
                now,
            );
        }
        if let Some(seen) = pending.proof()
            && !self.first_use_of_proof(seen).await
        {
            pending.refuse_replayed_proof();
        }
        let count = match pending.limit() {
            Some(check) => Some(self.count_request(check).await),
            None => None,
        };
        let mut decision = pending.finish(count);
        if decision.detail_code() == Some("INTERNAL_ERROR") {
            self.metrics.count_panic();
        }
        if let Some(shadow) = shadow {
            self.decide_shadow(&mut decision, &shadow, request, now, count);
        }
        decision.trace_link =
            otel::finish(span, &decision, parent, self.tracing.always_sample_denials);
        self.settle(&decision, transport, started);
        decision
    }

    /// Decides `request` with the shadow set too, counts how it compares with `decision`,
    /// and keeps the shadow decision in `decision` when they differ.
    fn decide_shadow(
        &self,
        decision: &mut Decision,
        shadow: &PolicySet,
        request: &DecisionRequest<'_>,
        now: SystemTime,
        count: Option<crate::ratelimit::Count>,
    ) {
        let theirs =
            (self.engine).decide_shadow(shadow, request, now, count, decision.detail_code());
        let differs = decision.differs_from(theirs.outcome, theirs.status, theirs.decisive_rule());
        self.metrics.observe_shadow(decision, &theirs, differs);
        if differs {
            decision.shadow = Some(Box::new(crate::decision::ShadowDecision::of(theirs)));
        }
    }

    /// The shadow policy set, if one is loaded.
    pub fn shadow_policies(&self) -> Option<Arc<PolicySet>> {
        self.shadow.load_full()
    }

    /// Denies a request that `transport` could not read well enough to decide on (400
    /// `INVALID_REQUEST` naming the field), and records, counts and audits it as
    /// [`decide`](Self::decide) does, so that an operator finds why a gateway failed.
    pub fn refuse_input(
        &self,
        request: &DecisionRequest<'_>,
        input: crate::decision::InvalidInput,
        transport: &'static str,
    ) -> Decision {
        let started = Instant::now();
        let parent = otel::incoming(&[], request.headers);
        let span = otel::decide_span(request, transport, parent.as_ref(), &self.tracing);
        let _entered = span.enter();
        let mut decision =
            self.engine
                .refuse_input(&self.policies.load(), request, input, SystemTime::now());
        decision.trace_link = otel::finish(
            &span,
            &decision,
            parent.as_ref(),
            self.tracing.always_sample_denials,
        );
        self.settle(&decision, transport, started);
        decision
    }

    /// What every decision gets once made: its record, its metrics and its audit line.
    fn settle(&self, decision: &Decision, transport: &'static str, started: Instant) {
        match &self.shared_decisions {
            // Replicas read whole records: a record that rebuilds would be rebuilt to send it.
            Some(shared) => shared.record(self.store.record(decision)),
            None => {
                let policies = self.policies.load();
                // The set that decided, unless a reload came between (then kept whole).
                if **policies.revision() == *decision.policy_revision {
                    self.store.record_decided(decision, &policies);
                } else {
                    self.store.record(decision);
                }
            }
        }
        let elapsed = started.elapsed();
        self.metrics
            .observe(decision, transport, elapsed.as_secs_f64());
        let second = crate::time::unix_millis(SystemTime::now()).div_euclid(1000);
        self.overview
            .record(decision, second, elapsed.as_micros() as u64);
        audit::write(decision, transport);
    }

    /// Whether no replica saw the DPoP proof before (this process' replay cache already
    /// did not): asked of Redis when replicas share it, and taken as first use when Redis
    /// does not answer in time (counted, as rate limits are).
    async fn first_use_of_proof(&self, seen: crate::decision::ProofSeen) -> bool {
        let (first, counted_by) = match &self.shared_proofs {
            None => (true, "local"),
            Some(shared) => {
                let now = crate::time::unix_seconds(SystemTime::now());
                match shared.first_use(seen, now).await {
                    Ok(first) => (first, "shared"),
                    Err(e) => {
                        tracing::debug!(error = %e, "DPoP proof checked against this process' replay cache only: the shared store did not answer");
                        (true, "local_fallback")
                    }
                }
            }
        };
        self.metrics.count_dpop_replay_check(counted_by);
        first
    }

    /// Counts a request against its rate limit: in Redis when replicas share counters (this
    /// process' counters when Redis does not answer in time), else locally.
    async fn count_request(&self, check: &crate::ratelimit::LimitCheck) -> crate::ratelimit::Count {
        use crate::ratelimit::CountedBy;
        use tracing::Instrument as _;
        let now = crate::time::unix_millis(SystemTime::now()).max(0) as u64;
        let local = self.engine.local_limits();
        let count = match &self.shared_limits {
            None => local.hit(check, now, CountedBy::Local),
            Some(shared) => match shared
                .hit(check, now)
                .instrument(otel::child_span(|| {
                    tracing::info_span!(
                        target: otel::TARGET,
                        "redis rate limit",
                        otel.kind = "client",
                        "db.system.name" = "redis"
                    )
                }))
                .await
            {
                Ok(count) => count,
                Err(_) => local.hit(check, now, CountedBy::LocalFallback),
            },
        };
        self.metrics.count_rate_limit(count.counted_by.as_str());
        count
    }

    /// Recent decisions matching `filter`, newest first: this replica's and, with a shared
    /// store, every replica's (this replica's own alone when the shared store fails).
    pub async fn list_decisions(
        &self,
        filter: &crate::trace::DecisionFilter,
        limit: usize,
    ) -> Listing {
        let local = self.store.list(filter, limit);
        let Some(shared) = &self.shared_decisions else {
            return Listing {
                decisions: local,
                shared: None,
            };
        };
        match shared.list(filter, limit).await {
            Ok(mut all) => {
                // This replica's newest decisions may not be written yet.
                all.extend(local);
                all.sort_by(|a, b| (b.unix_millis, b.id()).cmp(&(a.unix_millis, a.id())));
                all.dedup_by(|a, b| a.id() == b.id());
                all.truncate(limit.min(crate::trace::MAX_LIST_LIMIT));
                Listing {
                    decisions: all,
                    shared: Some(true),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "listing this replica's decisions only: the shared store did not answer");
                Listing {
                    decisions: local,
                    shared: Some(false),
                }
            }
        }
    }

    /// Decision `id`, from this replica's store or else the shared one.
    pub async fn get_decision(&self, id: &str) -> Option<Arc<crate::trace::StoredDecision>> {
        if let Some(found) = self.store.get(id) {
            return Some(found);
        }
        match self.shared_decisions.as_ref()?.get(id).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "decision looked up in this replica's store only: the shared store did not answer");
                None
            }
        }
    }

    /// Where the remote key set of service `name` is published, if it has one.
    fn remote_location(&self, name: Option<&str>) -> Option<crate::token::remote::KeySetLocation> {
        let policies = self.policies.load();
        match &policies.service(name?)?.token.keys {
            crate::token::KeySource::Remote(set) => Some(set.location.clone()),
            crate::token::KeySource::Static { .. } => None,
        }
    }

    /// Records the status the upstream answered decision `id`'s request with, if this
    /// replica still holds the decision. Returns whether it did.
    pub fn set_upstream_status(&self, id: &str, status: u16) -> bool {
        match self.store.get(id) {
            Some(record) => {
                record.set_upstream_status(status);
                true
            }
            None => false,
        }
    }

    /// Refreshes the gauges that are read rather than counted.
    pub fn refresh_gauges(&self) {
        (self.metrics).set_dpop_replay_cache_full(self.engine.proof_replays().full_refusals());
        self.metrics
            .set_store(self.store.len(), self.store.approx_bytes());
        let now = reload::unix_millis();
        for set in self.keys.registry.all() {
            let loaded = set.loaded_at_millis();
            self.metrics.set_key_set(
                &set.location.to_string(),
                set.current().map_or(0, |s| s.keys.len()),
                (loaded > 0).then(|| (now - loaded) as f64 / 1000.0),
            );
        }
    }
}

/// Loads the policies, binds both listeners and returns the bound server; nothing is served
/// until [`BoundServer::run`].
///
/// Fails when the policies do not compile (with every error) or a listener cannot be bound.
pub async fn bind(mut config: ServerConfig) -> Result<BoundServer, BindError> {
    let registry = Arc::new(crate::token::remote::RemoteKeyRegistry::default());
    config.policy_options.remote_keys = Some(registry.clone());
    let policies =
        load_dir(&config.policies, &config.policy_options).map_err(BindError::Policies)?;
    let fetchers = keys::KeyFetchers::new(
        registry,
        keys::FetchConfig {
            allow_insecure_loopback: config.policy_options.allow_insecure_loopback_jwks,
            on_demand_interval: config.jwks_refetch_interval,
        },
    )
    .map_err(BindError::Client)?;
    let transport =
        Arc::new(transport::Transport::new(config.transport.clone()).map_err(BindError::Tls)?);
    let grpc = TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|e| BindError::Listen(config.grpc_listen, e))?;
    let http = TcpListener::bind(config.http_listen)
        .await
        .map_err(|e| BindError::Listen(config.http_listen, e))?;
    let mut state = AppState::new(policies, &config, Arc::new(fetchers))?;
    if let Some(dir) = &config.shadow_policies {
        // A shadow set that does not compile is reported, and never stops the server.
        state.reload_shadow(dir, &config.policy_options);
    }
    let grpc_addr = grpc
        .local_addr()
        .map_err(|e| BindError::Listen(config.grpc_listen, e))?;
    let http_addr = http
        .local_addr()
        .map_err(|e| BindError::Listen(config.http_listen, e))?;
    state.admin_http = admin::AdminAccess::for_listener(http_addr, config.admin_token.as_deref());
    state.admin_grpc = admin::AdminAccess::for_listener(grpc_addr, config.admin_token.as_deref());
    let state = Arc::new(state);
    Ok(BoundServer {
        grpc_addr,
        http_addr,
        grpc,
        http,
        state,
        transport,
        config,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("the policies do not compile:\n{0}")]
    Policies(PolicyErrors),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("cannot set up the key set client: {0}")]
    Client(anyhow::Error),
    #[error("cannot set up TLS: {0}")]
    Tls(transport::TlsError),
    #[error("cannot use the shared store: {0}")]
    Shared(String),
    #[error("cannot serve the Sideband API: {0}")]
    Sideband(String),
}

/// A server with its listeners bound and policies loaded.
#[derive(Debug)]
pub struct BoundServer {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    grpc: TcpListener,
    http: TcpListener,
    state: Arc<AppState>,
    transport: Arc<transport::Transport>,
    config: ServerConfig,
}

impl BoundServer {
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish for at most
    /// the configured grace period.
    ///
    /// Fails when a listener fails.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        self.state.keys.start_new(&self.state.metrics);
        let readiness = {
            let state = self.state.clone();
            let wait = self.config.jwks_start_timeout;
            tokio::spawn(async move {
                if tokio::time::timeout(wait, state.keys.loaded())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        missing = ?state.keys.missing(),
                        "key sets not loaded within {wait:?}; serving anyway, tokens they sign are refused until they load"
                    );
                }
                state.become_ready();
            })
        };
        let _abort_readiness = AbortOnDrop(readiness);
        let watcher = tokio::spawn(reload::watch(
            self.state.clone(),
            reload::WatchConfig {
                dir: self.config.policies.clone(),
                options: self.config.policy_options.clone(),
                events: self.config.watch_events,
                poll: self.config.reload_poll,
                slot: reload::PolicySlot::Active,
            },
        ));
        let _abort_watcher = AbortOnDrop(watcher);
        let _abort_shadow_watcher = self.config.shadow_policies.clone().map(|dir| {
            AbortOnDrop(tokio::spawn(reload::watch(
                self.state.clone(),
                reload::WatchConfig {
                    dir,
                    options: self.config.policy_options.clone(),
                    events: self.config.watch_events,
                    poll: self.config.reload_poll,
                    slot: reload::PolicySlot::Shadow,
                },
            )))
        });
        let _abort_secrets = self
            .state
            .sideband
            .clone()
            .map(|secrets| AbortOnDrop(tokio::spawn(secrets.watch())));
        let grpc = tokio::spawn(grpc::serve(
            self.grpc,
            self.state.clone(),
            self.transport.clone(),
            stopped(stop_rx.clone()),
        ));
        let http = tokio::spawn(http::serve(
            self.http,
            self.state.clone(),
            self.transport.clone(),
            stopped(stop_rx),
        ));
        let grace = self.config.shutdown_grace;
        let servers = async { tokio::try_join!(grpc, http) };
        tokio::pin!(servers);
        tokio::select! {
            result = &mut servers => {
                // A server ended without a signal: a listener failed.
                let (g, h) = result?;
                g?;
                h?;
                return Ok(());
            }
            () = shutdown => {
                let delay = self.config.shutdown_delay;
                if !delay.is_zero() {
                    tracing::info!(delay_seconds = delay.as_secs_f64(), "shutting down: reporting not ready, still serving");
                    self.state.start_draining();
                    if let Ok(result) = tokio::time::timeout(delay, &mut servers).await {
                        // A listener failed meanwhile.
                        let (g, h) = result?;
                        g?;
                        h?;
                        return Ok(());
                    }
                }
                tracing::info!(grace_seconds = grace.as_secs_f64(), "shutting down; finishing in-flight requests");
                stop_tx.send_replace(true);
            }
        }
        match tokio::time::timeout(grace, servers).await {
            Ok(result) => {
                let (g, h) = result?;
                g?;
                h?;
            }
            Err(_) => {
                tracing::warn!("in-flight requests did not finish within the grace period; exiting")
            }
        }
        Ok(())
    }
}

pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The client address a gateway reports: an IP, optionally with a port (`10.0.0.7:5123`,
/// `[2001:db8::1]:443`).
pub(crate) fn parse_client(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|a| a.ip()))
}
