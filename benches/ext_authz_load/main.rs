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
//! 2. **HTTP load**: `LOAD_STREAMS` HTTP/1.1 keep-alive connections (one call at a time each,
//!    as HTTP/1.1 gateways keep them), looping the same mix for `LOAD_SECONDS`, against (a) an
//!    empty hyper server answering 200 (the HTTP ceiling, sent the sideband calls), (b)
//!    Portcullis' `/v1/authorize` as nginx's `auth_request` asks, and (c) its
//!    `/sideband/request` as the PingOne Authorize kits ask (issue 16).
//! 3. **Through Envoy** (when an Envoy binary is found): HTTP/1.1 keep-alive requests through
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
//! `LOAD_SKIP_ENVOY` [unset], `LOAD_TARGETS`
//! [`ceiling,replay,portcullis,shadow,redis,http-ceiling,authorize,sideband,tracing`] (e.g.
//! `portcullis` alone under `perf record`; `shadow` is Portcullis deciding every request with
//! a shadow set as large as the active one too, issue 19), `LOAD_REDIS` [unset]: a Redis URL, or `auto` to start a
//! `redis-server` on a free loopback port; with it, a second Portcullis with
//! `--trace-store` on that Redis is loaded too (target `redis`, issue 9), and its throughput
//! is compared with the memory store's; the targets `limit-local` and `limit-redis` load
//! Portcullis on the shipped policies with `send-reaction`'s limit raised, every call a
//! counted reaction, its limit counted in the process and (with `LOAD_REDIS`) in Redis
//! (issue 18, target 6); `REPLAY_BUSY_NS` [0]: CPU the replay burns per call
//! before answering (a busy wait), to see how throughput falls with work per call;
//! `LOAD_TRACING_BASELINE` [unset]: the path of another `portcullis` binary (e.g. built from
//! the commit before tracing came) that the `tracing` target loads first in each round;
//! `LOAD_TRACE_CAPACITY` [the server's default]: the recent-decisions store's capacity of the
//! in-process servers (to see what a full store's memory costs per call).
//!
//! The ceiling copies one transport setting from Portcullis at run time: whether the gRPC
//! server sets `TCP_NODELAY` on the connections it accepts (read from Portcullis' own sockets
//! and printed), so that the two servers differ only in what they do per call.
//!
//! The files: `settings.rs` reads the environment, `requests.rs` builds the mix, `targets.rs`
//! starts the servers, `load.rs` drives and measures the gRPC load, `cpu.rs` reads `/proc`,
//! `http.rs` drives and measures the HTTP load, `audit.rs` counts the audit log, `envoy.rs`
//! runs the Envoy part and `report.rs` prints the tables.

mod audit;
mod cpu;
mod envoy;
mod http;
mod load;
mod report;
mod requests;
mod settings;
mod targets;
mod tracing;

#[path = "../support/redis_server.rs"]
mod redis_server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use portcullis::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;

use crate::audit::install_audit_log;
use crate::cpu::clock_ticks;
use crate::envoy::through_envoy;
use crate::http::{HttpCall, HttpTarget, MakeCall, load_http, verify_http};
use crate::load::{connect, load, verify};
use crate::redis_server::RedisServer;
use crate::report::report;
use crate::requests::{Tokens, mix, probes, reaction_probes};
use crate::settings::Settings;
use crate::targets::{Servers, Target, accepted_nodelay};

/// The allocator `portcullis serve` uses, so that figures match the server binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const POLICY_DIR: &str = "policies";
const PRIVATE_KEY: &str = "policies/keys/meme-game.dev-key.pem";
const KID: &str = "meme-game-dev-rsa-1";
const AUTHORITY: &str = "localhost:8443";
const BASE_PATH: &str = "/meme-game/api/v1";
/// Bound on any single wait for a process or listener to come up.
const STARTUP: Duration = Duration::from_secs(30);

fn main() {
    let settings = Settings::from_env();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let ticks = clock_ticks();
    let audit = install_audit_log(&settings.audit);
    let tokens = Tokens::new();
    let probes = probes(&tokens);
    let mix = Arc::new(mix(&probes));
    let reactions = reaction_probes(&tokens);
    let reaction_mix = Arc::new(crate::requests::mix(&reactions));

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
            "Portcullis with a shadow set",
            Some(servers.portcullis_shadow),
            Target::Shadow,
        ),
        (
            "Portcullis, Redis trace store",
            servers.portcullis_redis.as_ref().map(|(addr, _)| *addr),
            Target::Redis,
        ),
        (
            "Portcullis, limit counted locally",
            Some(servers.limit_local),
            Target::LimitLocal,
        ),
        (
            "Portcullis, limit counted in Redis",
            servers.limit_redis.as_ref().map(|(addr, _)| *addr),
            Target::LimitRedis,
        ),
    ]
    .into_iter()
    .filter_map(|(label, addr, target)| {
        let name = match target {
            Target::Ceiling => "ceiling",
            Target::Replay => "replay",
            Target::Memory => "portcullis",
            Target::Redis => "redis",
            Target::Shadow => "shadow",
            Target::LimitLocal => "limit-local",
            Target::LimitRedis => "limit-redis",
        };
        let wanted = settings.targets.split(',').any(|t| t.trim() == name);
        Some((label, addr.filter(|_| wanted)?, target))
    })
    .collect();

    let wanted = |name: &str| settings.targets.split(',').any(|t| t.trim() == name);
    let http_targets: Vec<(&str, SocketAddr, HttpTarget, MakeCall)> = [
        (
            "HTTP ceiling (empty 200)",
            servers.http_ceiling,
            HttpTarget::Ceiling,
            HttpCall::sideband as MakeCall,
            "http-ceiling",
        ),
        (
            "Portcullis /v1/authorize",
            servers.portcullis_http,
            HttpTarget::Authorize,
            HttpCall::authorize,
            "authorize",
        ),
        (
            "Portcullis /sideband/request",
            servers.portcullis_http,
            HttpTarget::Sideband,
            HttpCall::sideband,
            "sideband",
        ),
    ]
    .into_iter()
    .filter(|(.., name)| wanted(name))
    .map(|(label, addr, target, call, _)| (label, addr, target, call))
    .collect();

    let (grpc_runs, http_runs, envoy_runs, tracing_runs) = runtime.block_on(async {
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
        verify(servers.portcullis_shadow, &probes, false).await;
        verify(servers.limit_local, &reactions, false).await;
        if let Some((addr, _)) = &servers.limit_redis {
            verify(*addr, &reactions, false).await;
        }
        for &(_, addr, target, call) in &http_targets {
            verify_http(addr, &probes, target, call).await;
        }
        let http_calls: Vec<Arc<Vec<HttpCall>>> = http_targets
            .iter()
            .map(|&(.., call)| Arc::new(mix.iter().map(call).collect()))
            .collect();
        let mut runs = Vec::new();
        let mut http_runs = Vec::new();
        for round in 1..=settings.rounds {
            let suffix = if settings.rounds > 1 {
                format!(" (round {round})")
            } else {
                String::new()
            };
            for &(label, addr, target) in &targets {
                let ceiling = target == Target::Ceiling;
                let audit_before = audit.as_ref().map(|(a, _)| a.snapshot());
                let limited = matches!(target, Target::LimitLocal | Target::LimitRedis);
                let run = load(
                    &format!("{label}{suffix}"),
                    addr,
                    if limited { &reaction_mix } else { &mix },
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
            for (&(label, addr, target, _), calls) in http_targets.iter().zip(&http_calls) {
                let run =
                    load_http(&format!("{label}{suffix}"), addr, calls, target, &settings, ticks)
                        .await;
                eprintln!("  {}   [cores: {}]", run.row(), run.cores);
                http_runs.push((target, run));
            }
        }
        let tracing_runs = if wanted("tracing") {
            tracing::tracing_runs(&settings, &mix, &probes, ticks).await
        } else {
            Vec::new()
        };
        let envoy_runs = through_envoy(&settings, &servers, &tokens, ticks).await;
        (runs, http_runs, envoy_runs, tracing_runs)
    });

    report(
        &settings,
        &servers,
        cores,
        &grpc_runs,
        &http_runs,
        &envoy_runs,
    );
    report::tracing_report(&tracing_runs);

    drop(runtime);
    drop(servers);

    let failures: Vec<String> = grpc_runs
        .iter()
        .map(|(_, r)| r)
        .chain(http_runs.iter().map(|(_, r)| r))
        .chain(&envoy_runs)
        .chain(tracing_runs.iter().map(|r| &r.measurement))
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
