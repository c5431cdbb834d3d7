//! What a rate limit adds to a decision (issue 9): the server's whole `decide` (engine, count,
//! store, metrics, audit) on `send-reaction` of the shipped policies, with the limit counted
//! in Redis (one pipelined INCR + PEXPIRE: one round trip), counted locally, and with the
//! `rateLimit` taken out of the policy, each as median time per decision.
//!
//! Run with `cargo bench --bench rate_limit`; needs `redis-server` and `redis-benchmark` (it
//! starts a Redis on a free loopback port without persistence). The limit is raised so that
//! every request is allowed and counted. Before timing, it checks that Redis counted exactly
//! one INCR per decision. It first prints issue 18's target 6 (see [`added_at_p50`]): the p50
//! the limit adds, beside bare round trips to the same Redis in the same run.

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
    let pinned = pin_to_cpu0();
    let redis = RedisServer::start_on(pinned.then_some("1"));
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

    added_at_p50(&rt, &redis, &shared, &none, &request, pinned);

    let mut group = c.benchmark_group("rate_limit");
    for (name, state) in [("redis", &shared), ("local", &local), ("none", &none)] {
        group.bench_function(name, |b| {
            b.iter(|| rt.block_on(black_box(state).decide(black_box(&request), "bench")))
        });
    }
    group.finish();
}

/// Pins this process (its threads to come too) to CPU 0, so that Redis can have CPU 1: on a
/// VM a loopback round trip is bimodal, about 10 µs when the scheduler puts both ends on one
/// CPU and about 80 µs across CPUs (a sleeping CPU woken each way), and which one a loop gets
/// changes from run to run. Pinned, every figure is the cross-CPU one, as `redis-benchmark`'s
/// usually is and as with Redis on another host. Needs two CPUs and `taskset`.
fn pin_to_cpu0() -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = cpus >= 2
        && std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", "0", &std::process::id().to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !pinned {
        eprintln!("note: not pinned to CPUs (needs 2 and `taskset`): round trips may be bimodal");
    }
    pinned
}

/// Issue 18's target 6: the p50 time a Redis-counted limit adds to a decision (p50 with the
/// limit in Redis minus p50 without it), beside two bare round trips to the same Redis in the
/// same run: `redis-benchmark -c 1 -t incr`'s p50, and ours (the same INCR and PEXPIRE the
/// server pipelines, written and read on a plain socket of this runtime). And the floor of
/// any client: a decision without the limit followed by that bare round trip. All are
/// sampled in turn, round after round, so that the machine's drift falls on all of them.
fn added_at_p50(
    rt: &tokio::runtime::Runtime,
    redis: &RedisServer,
    shared: &AppState,
    none: &AppState,
    request: &DecisionRequest<'_>,
    pinned: bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 1_000;
    let mut socket = rt
        .block_on(tokio::net::TcpStream::connect(("127.0.0.1", redis.port)))
        .unwrap();
    socket.set_nodelay(true).unwrap();
    let command =
        b"*2\r\n$4\r\nINCR\r\n$4\r\nbare\r\n*3\r\n$7\r\nPEXPIRE\r\n$4\r\nbare\r\n$5\r\n60000\r\n";
    // The decision's part of the floor, timed apart: right after a wake-up, not back to back.
    let mut after_wake = Vec::new();
    let mut round_trip = |decide_first: bool| {
        rt.block_on(async {
            if decide_first {
                let started = std::time::Instant::now();
                black_box(none.decide(request, "bench").await);
                after_wake.push(started.elapsed().as_secs_f64() * 1e6);
            }
            socket.write_all(command).await.unwrap();
            let (mut answer, mut read) = ([0u8; 64], 0);
            // Two integer replies, each ending in CRLF.
            while answer[..read].iter().filter(|&&b| b == b'\n').count() < 2 {
                read += socket.read(&mut answer[read..]).await.unwrap();
            }
        })
    };
    let (mut bare, mut floor) = (Vec::new(), Vec::new());
    let (mut limited, mut unlimited) = (Vec::new(), Vec::new());
    let timed = |samples: &mut Vec<f64>, f: &mut dyn FnMut()| {
        for _ in 0..PER_ROUND {
            let started = std::time::Instant::now();
            f();
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
    };
    let mut redis_benchmark = Vec::new();
    for _ in 0..ROUNDS {
        timed(&mut bare, &mut || round_trip(false));
        timed(&mut floor, &mut || round_trip(true));
        timed(&mut limited, &mut || {
            black_box(rt.block_on(shared.decide(request, "bench")));
        });
        timed(&mut unlimited, &mut || {
            black_box(rt.block_on(none.decide(request, "bench")));
        });
        redis_benchmark.push(redis.benchmark_incr_p50(2_000, pinned.then_some("0")));
    }
    let p50 = |samples: &mut Vec<f64>| {
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    };
    let (bare, floor) = (p50(&mut bare), p50(&mut floor));
    let after_wake = p50(&mut after_wake);
    let (limited, unlimited) = (p50(&mut limited), p50(&mut unlimited));
    let redis_benchmark = p50(&mut redis_benchmark);
    println!(
        "rate_limit p50 ({ROUNDS} rounds of {PER_ROUND}{}):\n  \
         decision without a limit {unlimited:.1} µs, with the limit in Redis {limited:.1} µs: \
         added {:.1} µs\n  bare INCR round trip: redis-benchmark -c 1 {redis_benchmark:.1} µs \
         (median of the rounds' p50s), ours {bare:.1} µs\n  \
         floor, a decision without the limit then our bare round trip: {floor:.1} µs, adding \
         {:.1} µs (its decision, timed apart: {after_wake:.1} µs)\n  added over redis-benchmark: {:+.1} µs (target ≤ +10); over the floor's: \
         {:+.1} µs",
        if pinned {
            ", pinned: this process on CPU 0, Redis on CPU 1"
        } else {
            ""
        },
        limited - unlimited,
        floor - unlimited,
        limited - unlimited - redis_benchmark,
        limited - floor,
    );
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
