//! `portcullis serve`: the decision point on the network (gRPC and HTTP).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use portcullis::server::{self, BindError, ServerConfig};

use super::PolicyFlags;

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// The policy directory.
    #[arg(long, env = "PORTCULLIS_POLICIES", default_value = "policies")]
    policies: PathBuf,
    /// A second policy directory (a candidate change) that decides every request too,
    /// without effect on the answer: decisions it would decide differently are marked
    /// (`?shadow=differs`) and counted (`portcullis_shadow_decisions_total`). Reloaded like
    /// the active set; one that does not compile is logged and never affects the answers.
    #[arg(long, env = "PORTCULLIS_SHADOW_POLICIES")]
    shadow_policies: Option<PathBuf>,
    /// Address of the gRPC listener (Envoy ext_authz, decision API, health, reflection).
    #[arg(
        long,
        env = "PORTCULLIS_GRPC_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    grpc_listen: SocketAddr,
    /// Address of the HTTP listener (/v1/authorize, decisions API, health, metrics).
    #[arg(long, env = "PORTCULLIS_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,
    /// Decisions kept in the recent-decisions store; the oldest are evicted first.
    #[arg(long, env = "PORTCULLIS_TRACE_CAPACITY", default_value_t = portcullis::trace::DEFAULT_CAPACITY)]
    trace_capacity: usize,
    /// Verified tokens kept in the token cache.
    #[arg(long, env = "PORTCULLIS_TOKEN_CACHE", default_value_t = portcullis::token::DEFAULT_CACHE_CAPACITY)]
    token_cache: usize,
    /// How long in-flight requests may take to finish after SIGTERM or SIGINT.
    #[arg(long, env = "PORTCULLIS_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// After SIGTERM or SIGINT, how long to keep serving while reporting not ready (gRPC
    /// health NOT_SERVING, /readyz 503) before stopping, so that load balancers and
    /// Kubernetes stop sending requests first; e.g. `5s` behind Envoy health checks.
    #[arg(long, env = "PORTCULLIS_SHUTDOWN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    shutdown_delay: Duration,
    /// Do not watch the policy files; reload only on SIGHUP.
    #[arg(long, env = "PORTCULLIS_NO_WATCH")]
    no_watch: bool,
    /// How often the policy files' metadata is compared, to catch changes that file events
    /// miss (such as a swapped directory symlink); `0s` turns it off.
    #[arg(long, env = "PORTCULLIS_RELOAD_POLL", default_value = "2s", value_parser = humantime::parse_duration)]
    reload_poll: Duration,
    /// How long to wait at start for remote key sets before reporting ready anyway; tokens
    /// of a key set still missing are refused (KEYS_UNAVAILABLE) until it loads.
    #[arg(long, env = "PORTCULLIS_JWKS_START_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    jwks_start_timeout: Duration,
    /// At most one fetch of a key set per this interval when tokens name unknown key ids.
    #[arg(long, env = "PORTCULLIS_JWKS_REFETCH_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    jwks_refetch_interval: Duration,
    /// A file holding the admin bearer token, required to read recent decisions and metrics
    /// (HTTP `/v1/decisions`, `/metrics`; gRPC `ListDecisions`, `GetDecision`,
    /// `ListServices`). Without a token these are served only on loopback listeners. The
    /// token may also come from the PORTCULLIS_ADMIN_TOKEN environment variable.
    #[arg(long, env = "PORTCULLIS_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Where recent decisions are kept: `memory` (this process only), or a Redis URL
    /// (`redis://127.0.0.1:6379/0`; TLS is not supported yet) whose stream every replica writes
    /// to and reads from; each replica's own memory store keeps serving too.
    #[arg(long, env = "PORTCULLIS_TRACE_STORE", default_value = "memory")]
    trace_store: String,
    /// Where rate limits are counted: `local` (per process), or a Redis URL shared by the
    /// replicas. Default: the trace store's Redis if it has one, else `local`.
    #[arg(long, env = "PORTCULLIS_RATE_LIMIT_STORE")]
    rate_limit_store: Option<String>,
    /// How long a Redis command may take; a rate limit Redis has not counted by then is
    /// counted by this process.
    #[arg(long, env = "PORTCULLIS_REDIS_TIMEOUT", default_value = "50ms", value_parser = humantime::parse_duration)]
    redis_timeout: Duration,
    /// Decisions the shared Redis stream keeps, about (all replicas together).
    #[arg(
        long,
        env = "PORTCULLIS_SHARED_TRACE_LENGTH",
        default_value_t = 100_000
    )]
    shared_trace_length: usize,
    /// Prefix of every Redis key, so that deployments can share one Redis.
    #[arg(long, env = "PORTCULLIS_REDIS_PREFIX", default_value = "portcullis:")]
    redis_prefix: String,
    /// Serve the Sideband API (`/sideband/request`, `/sideband/response`) for the PingOne
    /// Authorize gateway integration kits (Kong `ping-auth`, …): a file of shared secrets,
    /// one a line, any of them accepted (rotate by adding the new one, then removing the
    /// old). Re-read within a second of a change. Without it `/sideband/*` answers 404.
    #[arg(long, env = "PORTCULLIS_SIDEBAND_SECRET_FILE")]
    sideband_secret_file: Option<PathBuf>,
    /// The request header in which the kits send the shared secret (their
    /// `secret_header_name`; older gateways use `PDG-TOKEN`).
    #[arg(long, env = "PORTCULLIS_SIDEBAND_SECRET_HEADER", default_value = server::sideband::DEFAULT_SECRET_HEADER, value_parser = parse_header_name)]
    sideband_secret_header: http::HeaderName,
    /// For certificate-bound tokens through `/v1/authorize`: the request header in which the
    /// gateway passes the client certificate (nginx: `proxy_set_header X-Client-Cert
    /// $ssl_client_escaped_cert;`). Read only from `--trusted-gateways`; the TLS peer of
    /// this listener is the gateway, never the client.
    #[arg(long, env = "PORTCULLIS_CLIENT_CERT_HEADER", value_parser = parse_header_name, requires = "trusted_gateways")]
    client_cert_header: Option<http::HeaderName>,
    /// The addresses (`10.0.0.0/8`, `127.0.0.1`, comma-separated) of the gateways whose
    /// `--client-cert-header` is trusted; from any other peer the header is ignored.
    #[arg(long, env = "PORTCULLIS_TRUSTED_GATEWAYS", value_delimiter = ',', value_parser = parse_network)]
    trusted_gateways: Vec<ipnet::IpNet>,
    /// Export a span for every decision over OTLP to this collector URL
    /// (`http://127.0.0.1:4317` for gRPC; for HTTP/protobuf the base URL, `/v1/traces` is
    /// added when it has no path). Without it no span is exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// How spans reach the collector. Default: `http/protobuf` when the endpoint's path
    /// ends in `/v1/traces`, else `grpc`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", value_enum)]
    otlp_protocol: Option<server::otel::Protocol>,
    /// The share of calls without a trace context whose traces are sampled (0 to 1); calls
    /// with one follow their parent's sampling flag.
    #[arg(long, env = "PORTCULLIS_OTLP_SAMPLE", default_value_t = 1.0)]
    otlp_sample: f64,
    /// Export every denial's span, even when its parent was not sampled (then as a root
    /// span of its own trace, linked to the parent).
    #[arg(long, env = "PORTCULLIS_OTLP_ALWAYS_SAMPLE_DENIALS")]
    otlp_always_sample_denials: bool,
    /// The `service.name` of the exported spans.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "portcullis")]
    otlp_service_name: String,
    /// A trace UI's address for a trace, `{traceId}` standing for the trace id
    /// (`https://jaeger.example/trace/{traceId}`): the web page links decisions' trace ids
    /// to it.
    #[arg(long, env = "PORTCULLIS_TRACE_UI_URL", value_parser = parse_trace_ui_url)]
    trace_ui_url: Option<String>,
    #[command(flatten)]
    flags: PolicyFlags,
    #[command(flatten)]
    transport: super::transport::TransportArgs,
}

/// Serves with the log of `filter` (JSON lines, the audit events among them, written in
/// batches off the decision path) and, with an OTLP endpoint, decisions' spans exported.
pub(crate) fn run(
    args: &ServeArgs,
    filter: tracing_subscriber::EnvFilter,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let telemetry = match args
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty())
    {
        None => None,
        Some(endpoint) => Some(server::otel::Telemetry::start(
            &server::otel::OtlpConfig {
                endpoint: endpoint.trim().to_owned(),
                protocol: args
                    .otlp_protocol
                    .unwrap_or_else(|| server::otel::Protocol::for_endpoint(endpoint.trim())),
                sample_ratio: args.otlp_sample,
                always_sample_denials: args.otlp_always_sample_denials,
                service_name: args.otlp_service_name.clone(),
            },
            runtime.handle(),
        )?),
    };
    let log = server::log::install_json_with(std::io::stderr(), filter, telemetry.as_ref());
    let result = runtime.block_on(serve(args));
    // Off the runtime's threads, which run the export: the spans still queued, within a
    // bound so that a dead collector does not hold the exit.
    if let Some(telemetry) = &telemetry {
        telemetry.shutdown(Duration::from_secs(5));
    }
    // Buffered log lines before the error that ends the process.
    drop(log);
    result
}

fn parse_trace_ui_url(text: &str) -> Result<String, String> {
    let text = text.trim();
    if !text.contains("{traceId}") {
        return Err("the trace UI URL must contain `{traceId}`, e.g. `https://jaeger.example/trace/{traceId}`".into());
    }
    if !(text.starts_with("https://") || text.starts_with("http://")) {
        return Err("the trace UI URL must start with `https://` or `http://`".into());
    }
    Ok(text.to_owned())
}

async fn serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = ServerConfig::new(args.policies.clone());
    config.grpc_listen = args.grpc_listen;
    config.http_listen = args.http_listen;
    config.trace_capacity = args.trace_capacity;
    config.shared = server::SharedStores::from_flags(
        &args.trace_store,
        args.rate_limit_store.as_deref(),
        args.redis_timeout,
        args.shared_trace_length,
        &args.redis_prefix,
    )?;
    config.token_cache_capacity = args.token_cache;
    config.shutdown_grace = args.shutdown_grace;
    config.shutdown_delay = args.shutdown_delay;
    config.policy_options = args.flags.options();
    config.watch_events = !args.no_watch;
    config.jwks_start_timeout = args.jwks_start_timeout;
    config.jwks_refetch_interval = args.jwks_refetch_interval;
    config.transport = args.transport.config();
    config.shadow_policies = args.shadow_policies.clone();
    config.admin_token = portcullis::server::admin::load_token(args.admin_token_file.as_deref())?;
    config.sideband =
        args.sideband_secret_file
            .clone()
            .map(|secret_file| server::sideband::SidebandConfig {
                secret_file,
                secret_header: args.sideband_secret_header.clone(),
            });
    config.client_cert = args
        .client_cert_header
        .clone()
        .map(|name| server::ClientCertHeader {
            name,
            trusted_gateways: args.trusted_gateways.clone(),
        });
    if let Ok(marker) = std::env::var("PORTCULLIS_TEST_PANIC_MARKER") {
        tracing::warn!(
            "PORTCULLIS_TEST_PANIC_MARKER is set: requests whose URL contains it panic (a test hook; never set it in production)"
        );
        config.panic_marker = Some(marker);
    }
    config.tracing = server::TracingOptions {
        sample_ratio: args.otlp_sample,
        always_sample_denials: args.otlp_always_sample_denials,
        trace_ui_url: args.trace_ui_url.clone(),
    };
    config.reload_poll =
        (!args.no_watch && !args.reload_poll.is_zero()).then_some(args.reload_poll);
    let bound = match server::bind(config).await {
        Ok(bound) => bound,
        Err(BindError::Policies(errors)) => {
            eprintln!("{errors}");
            eprintln!(
                "portcullis: not serving: the policies in {} do not compile",
                args.policies.display()
            );
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    let state = bound.state();
    let policies = state.policies();
    tracing::info!(
        grpc = %bound.grpc_addr,
        http = %bound.http_addr,
        revision = %policies.revision(),
        services = policies.services.len(),
        "serving"
    );
    // The one line on stdout: scripts and tests wait for it to learn the bound ports.
    outln!(
        "listening grpc={} http={}",
        bound.grpc_addr,
        bound.http_addr
    );
    drop(policies);
    bound.run(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn parse_header_name(text: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::try_from(text.trim())
        .map_err(|_| format!("`{text}` is not an HTTP header name"))
}

/// A network (`10.0.0.0/8`) or one address (`10.0.0.7`).
fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{text}` is neither an address nor a network such as `10.0.0.0/8`"))
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
