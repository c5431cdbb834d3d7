//! The targets on their own runtime in their own thread: Portcullis in-process (its gRPC and
//! HTTP listeners, the Sideband API on), the gRPC ceiling (always OK), the replay
//! (Portcullis' answers, deciding nothing) and the HTTP ceiling (an empty 200).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portcullis::proto::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use portcullis::proto::envoy::service::auth::v3::check_response::HttpResponse;
use portcullis::proto::envoy::service::auth::v3::{CheckRequest, CheckResponse, OkHttpResponse};
use portcullis::proto::google::rpc;
use portcullis::server::{AppState, MAX_GRPC_MESSAGE, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::{POLICY_DIR, STARTUP};

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
pub(crate) fn accepted_nodelay(port: u16) -> Option<bool> {
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

/// A server on `policies`, listening on free loopback ports.
fn loopback_config(policies: &Path) -> ServerConfig {
    let mut config = ServerConfig::new(policies.to_path_buf());
    config.grpc_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.http_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.shutdown_grace = Duration::from_secs(2);
    if let Some(capacity) = std::env::var("LOAD_TRACE_CAPACITY")
        .ok()
        .and_then(|c| c.parse().ok())
    {
        config.trace_capacity = capacity;
    }
    config
}

/// The shared stores of `--trace-store trace_store --rate-limit-store rate_limits`, with the
/// bench's timeout and key prefix.
fn shared_stores(trace_store: &str, rate_limits: Option<&str>) -> portcullis::server::SharedStores {
    portcullis::server::SharedStores::from_flags(
        trace_store,
        rate_limits,
        Duration::from_millis(50),
        100_000,
        "bench:",
    )
    .expect("a usable Redis URL")
}

/// Binds Portcullis with `config` (`what` names it if it fails) and serves it on this
/// runtime until `stop` changes: its gRPC address and state, and its task.
async fn serve_until(
    config: ServerConfig,
    what: &str,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (
    (SocketAddr, Arc<AppState>),
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let bound = portcullis::server::bind(config)
        .await
        .unwrap_or_else(|e| panic!("Portcullis ({what}) does not start: {e}"));
    let served = (bound.grpc_addr, bound.state());
    let task = tokio::spawn(bound.run(async move {
        let _ = stop.changed().await;
    }));
    (served, task)
}

/// What a gRPC target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Ceiling,
    /// [`Replay`]: Portcullis' answers without deciding.
    Replay,
    /// Portcullis with the in-memory trace store.
    Memory,
    /// Portcullis writing its decisions to Redis too.
    Redis,
    /// Portcullis with a shadow set as large as the active one (the same policies).
    Shadow,
    /// Portcullis on the reaction mix, its rate limit counted in this process (issue 18).
    LimitLocal,
    /// Portcullis on the reaction mix, its rate limit counted in Redis (issue 18, target 6).
    LimitRedis,
}

/// The example's limit on `send-reaction`, and what the limit targets raise it to: every
/// reaction of a run is counted and allowed, none is a 429.
const EXAMPLE_LIMIT: &str = "rateLimit: { key: subject, requests: 30, per: 1m }";
const RAISED_LIMIT: &str = "rateLimit: { key: subject, requests: 1000000000, per: 1h }";

/// The shipped policies in a temporary directory, `send-reaction`'s limit raised.
fn raised_limit_policies() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let copy = |from: &Path, to: &Path| {
        for entry in std::fs::read_dir(from).expect("the policies are readable") {
            let entry = entry.expect("a directory entry");
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                std::fs::copy(entry.path(), to.join(entry.file_name())).expect("a copy");
            }
        }
    };
    copy(Path::new(POLICY_DIR), dir.path());
    std::fs::create_dir(dir.path().join("keys")).expect("a keys directory");
    copy(
        &Path::new(POLICY_DIR).join("keys"),
        &dir.path().join("keys"),
    );
    let policy = dir.path().join("meme-game.yaml");
    let text = std::fs::read_to_string(&policy).expect("the example policy");
    assert!(text.contains(EXAMPLE_LIMIT), "the example's limit changed");
    std::fs::write(policy, text.replace(EXAMPLE_LIMIT, RAISED_LIMIT)).expect("the policy");
    dir
}

pub(crate) struct Servers {
    pub(crate) portcullis: SocketAddr,
    /// Portcullis' HTTP listener (`/v1/authorize`, the Sideband API).
    pub(crate) portcullis_http: SocketAddr,
    /// The empty HTTP/1.1 server answering 200.
    pub(crate) http_ceiling: SocketAddr,
    /// Holds the Sideband API's secret file.
    _secrets: tempfile::TempDir,
    /// Portcullis with the Redis trace store, if one was asked for.
    pub(crate) portcullis_redis: Option<(SocketAddr, Arc<AppState>)>,
    /// Portcullis deciding every request with a shadow set too.
    pub(crate) portcullis_shadow: SocketAddr,
    /// Portcullis on the raised-limit policies, counting in this process.
    pub(crate) limit_local: SocketAddr,
    /// Portcullis on the raised-limit policies, counting in Redis, if one was asked for.
    pub(crate) limit_redis: Option<(SocketAddr, Arc<AppState>)>,
    /// Holds the raised-limit policies.
    _limit_policies: tempfile::TempDir,
    pub(crate) ceiling: SocketAddr,
    pub(crate) replay: SocketAddr,
    /// Portcullis' answers for [`Replay`], set by the first [`verify`] of Portcullis.
    pub(crate) answers: Answers,
    /// Whether the ceiling (and the replay) sets `TCP_NODELAY` on the connections it accepts from now on.
    pub(crate) ceiling_nodelay: Arc<AtomicBool>,
    pub(crate) state: Arc<AppState>,
    pub(crate) stop: Option<oneshot::Sender<()>>,
    pub(crate) thread: Option<std::thread::JoinHandle<()>>,
}

impl Servers {
    pub(crate) fn start(threads: usize, redis: Option<String>, replay_busy: Duration) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let ceiling_nodelay = Arc::new(AtomicBool::new(false));
        let nodelay = ceiling_nodelay.clone();
        let answers = Answers::default();
        let replay_answers = answers.clone();
        let secrets = tempfile::tempdir().expect("a temporary directory");
        let secret_file = secrets.path().join("sideband.secrets");
        let limit_policies = raised_limit_policies();
        let limit_dir = limit_policies.path().to_path_buf();
        std::fs::write(&secret_file, crate::http::SIDEBAND_SECRET).expect("the secret is written");
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
                    let mut config = loopback_config(POLICY_DIR.as_ref());
                    config.sideband = Some(portcullis::server::sideband::SidebandConfig {
                        secret_file,
                        secret_header: portcullis::server::sideband::DEFAULT_SECRET_HEADER
                            .parse()
                            .expect("a header name"),
                    });
                    let bound = portcullis::server::bind(config)
                        .await
                        .unwrap_or_else(|e| panic!("Portcullis does not start: {e}"));
                    let portcullis = bound.grpc_addr;
                    let portcullis_http = bound.http_addr;
                    let http_listener = TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("a loopback port");
                    let http_ceiling = http_listener.local_addr().expect("a bound address");
                    let http_ceiling_task =
                        AbortOnDrop(tokio::spawn(crate::http::serve_empty(http_listener)));
                    let state = bound.state();
                    let (p_stop_tx, p_stop_rx) = oneshot::channel::<()>();
                    let portcullis_task = tokio::spawn(bound.run(async {
                        let _ = p_stop_rx.await;
                    }));
                    let mut config = loopback_config(POLICY_DIR.as_ref());
                    config.shadow_policies = Some(POLICY_DIR.into());
                    let bound = portcullis::server::bind(config)
                        .await
                        .unwrap_or_else(|e| panic!("Portcullis (shadow) does not start: {e}"));
                    let shadow = bound.grpc_addr;
                    let (s_stop_tx, s_stop_rx) = oneshot::channel::<()>();
                    let shadow_task = tokio::spawn(bound.run(async {
                        let _ = s_stop_rx.await;
                    }));
                    // The Redis and rate-limit servers, stopped together.
                    let (more_stop_tx, more_stop) = tokio::sync::watch::channel(false);
                    let mut more_tasks = Vec::new();
                    let mut with_redis = None;
                    let mut limit_redis = None;
                    if let Some(url) = &redis {
                        let mut config = loopback_config(POLICY_DIR.as_ref());
                        config.shared = shared_stores(url, None);
                        let (served, task) = serve_until(config, "Redis", more_stop.clone()).await;
                        with_redis = Some(served);
                        more_tasks.push(task);
                        let mut config = loopback_config(&limit_dir);
                        config.shared = shared_stores("memory", Some(url));
                        let (served, task) =
                            serve_until(config, "limit in Redis", more_stop.clone()).await;
                        limit_redis = Some(served);
                        more_tasks.push(task);
                    }
                    let ((limit_local, _), task) =
                        serve_until(loopback_config(&limit_dir), "limit", more_stop).await;
                    more_tasks.push(task);
                    let (ceiling, c_stop_tx, ceiling_task) =
                        spawn_answering(AlwaysOk, nodelay.clone()).await;
                    let replay_service = Replay {
                        answers: replay_answers,
                        busy: replay_busy,
                    };
                    let (replay, rp_stop_tx, replay_task) =
                        spawn_answering(replay_service, nodelay).await;
                    ready_tx
                        .send((
                            [
                                portcullis,
                                portcullis_http,
                                http_ceiling,
                                ceiling,
                                replay,
                                shadow,
                            ],
                            state,
                            with_redis,
                            limit_local,
                            limit_redis,
                        ))
                        .expect("the bench waits for the servers");
                    let _ = stop_rx.await;
                    let _ = more_stop_tx.send(true);
                    let _ = p_stop_tx.send(());
                    let _ = c_stop_tx.send(());
                    let _ = rp_stop_tx.send(());
                    let _ = s_stop_tx.send(());
                    let stopped = async {
                        let _ = portcullis_task.await;
                        let _ = shadow_task.await;
                        let _ = ceiling_task.await;
                        let _ = replay_task.await;
                        for task in more_tasks {
                            let _ = task.await;
                        }
                    };
                    if tokio::time::timeout(Duration::from_secs(5), stopped)
                        .await
                        .is_err()
                    {
                        eprintln!("note: the servers did not stop within 5 s");
                    }
                    drop(http_ceiling_task);
                });
            })
            .expect("the servers' thread starts");
        let (
            [
                portcullis,
                portcullis_http,
                http_ceiling,
                ceiling,
                replay,
                portcullis_shadow,
            ],
            state,
            portcullis_redis,
            limit_local,
            limit_redis,
        ) = ready_rx
            .recv_timeout(STARTUP)
            .expect("the servers start within 30 s");
        Self {
            portcullis,
            portcullis_http,
            http_ceiling,
            _secrets: secrets,
            portcullis_redis,
            portcullis_shadow,
            limit_redis,
            limit_local,
            _limit_policies: limit_policies,
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

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
