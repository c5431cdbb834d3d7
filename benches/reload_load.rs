//! Decision latency while policies reload (issue 4): ext_authz `Check` load on a server with
//! 10,000 services × 10 operations, first with no reload, then while the policy directory is
//! edited and recompiled back to back. Prints p50/p99 of both phases and their ratio.
//!
//! Run with `cargo bench --bench reload_load` (env `LOAD_SECONDS`, default 10 per phase;
//! `LOAD_STREAMS`, default 64).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::proto::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use portcullis::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use portcullis::proto::envoy::service::auth::v3::check_response::HttpResponse;
use portcullis::proto::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use portcullis::server::{ServerConfig, bind};

/// The allocator `portcullis serve` uses, so that figures match the server binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SERVICES: usize = 10_000;
const FILES: usize = 100;
/// Services the load goes to (their tokens stay in the verified-token cache).
const TARGETS: usize = 16;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn service_yaml(i: usize) -> String {
    let mut yaml = format!(
        "service: svc-{i}\nbaseUrls: [\"https://api{i}.example.com/v1\"]\n\
         token:\n  issuer: https://auth.example.com\n  audiences: [svc-{i}]\n  algorithms: [RS256, ES256]\n  \
         jwks: {{ file: keys/meme-game.jwks.json }}\noperations:\n"
    );
    for j in 0..10 {
        yaml.push_str(&format!(
            "  - name: op-{j}\n    methods: [GET]\n    paths: [\"/r{j}/{{id}}\"]\n    rules:\n      - scopes: {{ anyOf: [\"read\"] }}\n"
        ));
    }
    yaml
}

fn write_policies(dir: &Path, edit: usize) {
    for f in 0..FILES {
        let text: Vec<String> = (f * (SERVICES / FILES)..(f + 1) * (SERVICES / FILES))
            .map(service_yaml)
            .collect();
        let mut text = text.join("---\n");
        if f == 0 {
            // Each edit changes the content, so each reload swaps in a new revision.
            text.push_str(&format!("# edit {edit}\n"));
        }
        std::fs::write(dir.join(format!("services-{f:03}.yaml")), text).unwrap();
    }
}

fn token(key: &EncodingKey, service: usize) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://auth.example.com", "aud": format!("svc-{service}"), "sub": "user.0",
        "scope": "read", "iat": now, "exp": now + 3600,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("meme-game-dev-rsa-1".into());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn check(service: usize, op: usize, token: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    method: "GET".into(),
                    scheme: "https".into(),
                    host: format!("api{service}.example.com"),
                    path: format!("/v1/r{op}/42"),
                    headers: [("authorization".to_owned(), format!("Bearer {token}"))].into(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

struct Phase {
    histogram: Histogram<u64>,
    answers: usize,
    seconds: f64,
}

async fn load(
    addr: std::net::SocketAddr,
    requests: Arc<Vec<CheckRequest>>,
    seconds: u64,
    streams: usize,
) -> Phase {
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(
            tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..streams {
        let mut client = AuthorizationClient::new(channels[s % channels.len()].clone());
        let (stop, next, requests) = (stop.clone(), next.clone(), requests.clone());
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed) % requests.len();
                let sent = Instant::now();
                let answer = client
                    .check(requests[i].clone())
                    .await
                    .expect("Check answers")
                    .into_inner();
                histogram.record(sent.elapsed().as_micros() as u64).unwrap();
                assert!(
                    matches!(answer.http_response, Some(HttpResponse::OkResponse(_))),
                    "every request is allowed"
                );
            }
            histogram
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for t in tasks {
        histogram.add(t.await.unwrap()).unwrap();
    }
    Phase {
        answers: histogram.len() as usize,
        histogram,
        seconds: started.elapsed().as_secs_f64(),
    }
}

fn main() {
    let seconds = env_or("LOAD_SECONDS", 10);
    let streams = env_or("LOAD_STREAMS", 64) as usize;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::copy(
        "policies/keys/meme-game.jwks.json",
        dir.path().join("keys/meme-game.jwks.json"),
    )
    .unwrap();
    write_policies(dir.path(), 0);

    // The server on its own runtime and threads, as in production.
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut config = ServerConfig::new(dir.path().to_path_buf());
    config.grpc_listen = "127.0.0.1:0".parse().unwrap();
    config.http_listen = "127.0.0.1:0".parse().unwrap();
    config.watch_events = false;
    config.reload_poll = None;
    let started = Instant::now();
    let bound = server_runtime
        .block_on(bind(config.clone()))
        .unwrap_or_else(|e| {
            panic!(
                "the server starts: {}",
                e.to_string().lines().next().unwrap_or("")
            )
        });
    eprintln!(
        "loaded {SERVICES} services x 10 operations in {:.2?}",
        started.elapsed()
    );
    let addr = bound.grpc_addr;
    let state = bound.state();
    server_runtime.spawn(bound.run(std::future::pending()));

    let key =
        EncodingKey::from_rsa_pem(&std::fs::read("policies/keys/meme-game.dev-key.pem").unwrap())
            .unwrap();
    let requests: Vec<CheckRequest> = (0..TARGETS)
        .flat_map(|t| {
            let service = t * (SERVICES / TARGETS);
            let token = token(&key, service);
            (0..10)
                .map(move |op| check(service, op, &token))
                .collect::<Vec<_>>()
        })
        .collect();
    let requests = Arc::new(requests);

    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Warm up: tokens into the cache, connections open.
    client_runtime.block_on(load(addr, requests.clone(), 2, streams));
    let quiet = client_runtime.block_on(load(addr, requests.clone(), seconds, streams));

    let reloading = Arc::new(AtomicBool::new(true));
    let reloads = Arc::new(AtomicUsize::new(0));
    let reloader = {
        let (reloading, reloads, state) = (reloading.clone(), reloads.clone(), state.clone());
        let dir = dir.path().to_path_buf();
        // The same options the server compiled with, remote key registry aside (none here).
        let options = config.policy_options.clone();
        std::thread::spawn(move || {
            let mut edit = 1;
            while reloading.load(Ordering::Relaxed) {
                write_policies(&dir, edit);
                let result = server_runtime.block_on(state.reload_in_background(&dir, &options));
                assert_eq!(result.label(), "success", "{result:?}");
                reloads.fetch_add(1, Ordering::Relaxed);
                edit += 1;
            }
            server_runtime
        })
    };
    let busy = client_runtime.block_on(load(addr, requests.clone(), seconds, streams));
    reloading.store(false, Ordering::Relaxed);
    let _server_runtime = reloader.join().unwrap();

    let row = |name: &str, p: &Phase| {
        format!(
            "| {name} | {:.0} | {} | {} | {} | {} |",
            p.answers as f64 / p.seconds,
            p.histogram.value_at_quantile(0.5),
            p.histogram.value_at_quantile(0.99),
            p.histogram.value_at_quantile(0.999),
            p.histogram.max()
        )
    };
    eprintln!("\n| phase | decisions/s | p50 µs | p99 µs | p99.9 µs | max µs |");
    eprintln!("|---|---|---|---|---|---|");
    eprintln!("{}", row("no reload", &quiet));
    eprintln!(
        "{}",
        row(
            &format!("{} reloads back to back", reloads.load(Ordering::Relaxed)),
            &busy
        )
    );
    eprintln!(
        "\np99 ratio (reloading / quiet): {:.2}",
        busy.histogram.value_at_quantile(0.99) as f64
            / quiet.histogram.value_at_quantile(0.99) as f64
    );
}
