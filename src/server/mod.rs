//! The network side: the decision engine served over gRPC (Envoy ext_authz, Portcullis' own
//! API, health, reflection) and HTTP (nginx `auth_request`, decisions API, health, metrics),
//! every decision recorded in the recent-decisions store and written to the audit log.

mod convert;
mod ext_authz;
mod grpc;
mod http;
pub mod metrics;

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
    pub policy_options: PolicyOptions,
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
            policy_options: PolicyOptions::default(),
        }
    }
}

/// What every request handler shares: the active policy set, the engine, the store.
#[derive(Debug)]
pub struct AppState {
    policies: ArcSwap<PolicySet>,
    engine: Engine,
    pub store: TraceStore,
    pub metrics: Metrics,
}

impl AppState {
    pub fn new(policies: PolicySet, config: &ServerConfig) -> Self {
        let metrics = Metrics::new();
        metrics.set_policy(policies.revision(), policies.services.len());
        Self {
            policies: ArcSwap::from_pointee(policies),
            engine: Engine::new(config.token_cache_capacity),
            store: TraceStore::new(config.trace_capacity),
            metrics,
        }
    }

    pub fn policies(&self) -> arc_swap::Guard<Arc<PolicySet>> {
        self.policies.load()
    }

    /// Decides, records the decision in the store, counts it and writes the audit event.
    /// `transport` names the interface the request came through, for metrics and the audit.
    pub fn decide(&self, request: &DecisionRequest<'_>, transport: &'static str) -> Decision {
        let started = Instant::now();
        let policies = self.policies.load();
        let decision = self.engine.decide(&policies, request, SystemTime::now());
        self.store.record(&decision);
        self.metrics
            .observe(&decision, transport, started.elapsed().as_secs_f64());
        audit(&decision, transport);
        decision
    }

    /// Refreshes the gauges that are read rather than counted.
    pub fn refresh_gauges(&self) {
        self.metrics
            .set_store(self.store.len(), self.store.approx_bytes());
    }
}

/// One JSON line per decision on the `portcullis::audit` target (SPEC §4).
fn audit(decision: &Decision, transport: &'static str) {
    tracing::info!(
        target: "portcullis::audit",
        decision_id = %decision.id,
        service = decision.service.as_deref().unwrap_or(""),
        operation = decision.operation.as_deref().unwrap_or(""),
        outcome = decision.outcome.as_str(),
        status = decision.status,
        detail = decision.detail_code().unwrap_or(""),
        subject = decision.token.as_ref().and_then(|t| t.sub.as_deref()).unwrap_or(""),
        method = %decision.request.method,
        url = %decision.request.url,
        transport,
        "{}",
        decision.audit
    );
}

/// Loads the policies, binds both listeners and returns the bound server; nothing is served
/// until [`BoundServer::run`].
///
/// Fails when the policies do not compile (with every error) or a listener cannot be bound.
pub async fn bind(config: ServerConfig) -> Result<BoundServer, BindError> {
    let policies =
        load_dir(&config.policies, &config.policy_options).map_err(BindError::Policies)?;
    let grpc = TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|e| BindError::Listen(config.grpc_listen, e))?;
    let http = TcpListener::bind(config.http_listen)
        .await
        .map_err(|e| BindError::Listen(config.http_listen, e))?;
    let state = Arc::new(AppState::new(policies, &config));
    Ok(BoundServer {
        grpc_addr: grpc
            .local_addr()
            .map_err(|e| BindError::Listen(config.grpc_listen, e))?,
        http_addr: http
            .local_addr()
            .map_err(|e| BindError::Listen(config.http_listen, e))?,
        grpc,
        http,
        state,
        config,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("the policies do not compile:\n{0}")]
    Policies(PolicyErrors),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// A server with its listeners bound and policies loaded.
#[derive(Debug)]
pub struct BoundServer {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    grpc: TcpListener,
    http: TcpListener,
    state: Arc<AppState>,
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
        let grpc = tokio::spawn(grpc::serve(
            self.grpc,
            self.state.clone(),
            stopped(stop_rx.clone()),
        ));
        let http = tokio::spawn(http::serve(self.http, self.state.clone(), stopped(stop_rx)));
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
                tracing::info!(grace_seconds = grace.as_secs_f64(), "shutting down; finishing in-flight requests");
                let _ = stop_tx.send(true);
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

/// The client address a gateway reports: an IP, optionally with a port (`10.0.0.7:5123`,
/// `[2001:db8::1]:443`).
pub(crate) fn parse_client(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|a| a.ip()))
}
