//! Settings of a run, read from the environment (see the bench's opening comment).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

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
pub(crate) struct Settings {
    pub(crate) seconds: f64,
    pub(crate) warmup: f64,
    pub(crate) streams: usize,
    pub(crate) connections: usize,
    pub(crate) rounds: usize,
    pub(crate) server_threads: usize,
    pub(crate) client_threads: usize,
    pub(crate) audit: String,
    pub(crate) envoy: Option<PathBuf>,
    pub(crate) envoy_seconds: f64,
    pub(crate) envoy_concurrency: Vec<usize>,
    pub(crate) envoy_workers: usize,
    /// Which targets to load: gRPC `ceiling`, `replay`, `portcullis`, `shadow`, `redis`,
    /// `limit-local`, `limit-redis`, HTTP `http-ceiling`, `authorize`, `sideband`, and
    /// `tracing` (the `portcullis serve` binary with tracing off, 100% and 1%) (all by
    /// default; `redis` and `limit-redis` only with `LOAD_REDIS`).
    pub(crate) targets: String,
    /// `LOAD_REDIS`: a Redis URL or `auto`.
    pub(crate) redis: Option<String>,
    pub(crate) replay_busy: Duration,
    /// `LOAD_TRACING_BASELINE`: another `portcullis` binary (the build before tracing) the
    /// tracing comparison loads too, to show what tracing off costs against none at all.
    pub(crate) tracing_baseline: Option<String>,
}

impl Settings {
    pub(crate) fn from_env() -> Self {
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
            targets: env_or(
                "LOAD_TARGETS",
                "ceiling,replay,portcullis,shadow,redis,limit-local,limit-redis,http-ceiling,\
                 authorize,sideband,tracing"
                    .to_owned(),
            ),
            redis: std::env::var("LOAD_REDIS").ok().filter(|r| !r.is_empty()),
            replay_busy: Duration::from_nanos(env_or("REPLAY_BUSY_NS", 0)),
            tracing_baseline: std::env::var("LOAD_TRACING_BASELINE")
                .ok()
                .filter(|b| !b.is_empty()),
        }
    }
}
