//! What a rate limit adds to a decision (issue 9): the server's whole `decide` (engine, count,
//! store, metrics, audit) on `send-reaction` of the shipped policies, with the limit counted
//! in Redis (one pipelined INCR + PEXPIRE: one round trip), counted locally, and with the
//! `rateLimit` taken out of the policy, each as median time per decision.
//!
//! Run with `cargo bench --bench rate_limit`; needs `redis-server` (it starts one on a free
//! loopback port without persistence). The limit is raised so that every request is allowed
//! and counted. Before timing, it checks that Redis counted exactly one INCR per decision.

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::DecisionRequest;
use portcullis::server::{AppState, ServerConfig, SharedStores};

/// The allocator `portcullis serve` uses, so that figures match the server binary.
#[path = "support/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const URL: &str = "https://localhost:8443/meme-game/api/v1/users/user.0/reactions";
const LIMIT_LINE: &str = "rateLimit: { key: subject, requests: 30, per: 1m }";

/// The shipped policies in a temporary directory, with `send-reaction`'s limit replaced by
/// `limit` (`None`: no `rateLimit` at all).
fn policies(limit: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    for entry in std::fs::read_dir(from.join("keys")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            dir.path().join("keys").join(entry.file_name()),
        )
        .unwrap();
    }
    for name in ["meme-game.yaml", "partners.yaml"] {
        let text = std::fs::read_to_string(from.join(name)).unwrap();
        let text = if name == "meme-game.yaml" {
            assert!(text.contains(LIMIT_LINE), "the example limit changed");
            text.replace(LIMIT_LINE, limit.unwrap_or(""))
        } else {
            text
        };
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn token() -> String {
    let pem = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/keys/meme-game.dev-key.pem"),
    )
    .unwrap();
    let key = EncodingKey::from_rsa_pem(&pem).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("meme-game-dev-rsa-1".into());
    let claims = serde_json::json!({
        "iss": "https://auth.example.com", "aud": "meme-game", "sub": "user.0",
        "client_id": "meme-web", "groups": ["players"], "iat": now, "exp": now + 3600,
    });
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// A server state (listeners bound, nothing served) on `dir`, counting in `redis` if given.
fn state(rt: &tokio::runtime::Runtime, dir: &Path, redis: Option<&RedisServer>) -> Arc<AppState> {
    rt.block_on(async {
        let mut config = ServerConfig::new(dir.to_path_buf());
        config.grpc_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.http_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        if let Some(redis) = redis {
            config.shared = SharedStores::from_flags(
                "memory",
                Some(&redis.url()),
                Duration::from_secs(1),
                100_000,
                "bench:",
            )
            .unwrap();
        }
        portcullis::server::bind(config).await.unwrap().state()
    })
}

fn bench_rate_limit(c: &mut Criterion) {
    // One thread, as one request's path is: the figure is latency, not throughput.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = RedisServer::start();
    let high = "rateLimit: { key: subject, requests: 1000000000, per: 1h }";
    let limited = policies(Some(high));
    let unlimited = policies(None);
    let bearer = format!("Bearer {}", token());
    let headers = [("authorization", bearer.as_str())];
    let request = DecisionRequest {
        method: "POST",
        url: URL,
        headers: &headers,
        client: None,
        client_cert: None,
    };
    let shared = state(&rt, limited.path(), Some(&redis));
    let local = state(&rt, limited.path(), None);
    let none = state(&rt, unlimited.path(), None);

    // One INCR per counted decision, each sent with its PEXPIRE in one pipeline.
    let before = redis.calls("incr");
    for _ in 0..100 {
        let d = rt.block_on(shared.decide(&request, "bench"));
        assert_eq!(d.status, 200, "{:?}", d.body);
        assert!(
            d.trace.iter().any(|e| e
                .detail
                .as_deref()
                .is_some_and(|t| t.contains("across replicas"))),
            "not counted in Redis"
        );
    }
    assert_eq!(redis.calls("incr") - before, 100);

    let mut group = c.benchmark_group("rate_limit");
    for (name, state) in [("redis", &shared), ("local", &local), ("none", &none)] {
        group.bench_function(name, |b| {
            b.iter(|| rt.block_on(black_box(state).decide(black_box(&request), "bench")))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    targets = bench_rate_limit
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
