//! Remote key sets against a local key server on 127.0.0.1: loading at start and readiness,
//! rotation, outages, garbage, oversized and slow answers, OpenID discovery, and the
//! unknown-`kid` refetch shared by concurrent requests.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use support::server::Server;

/// What the key server answers.
struct Behaviour {
    body: Vec<u8>,
    status: StatusCode,
    delay: Duration,
    cache_control: Option<String>,
}

struct KeyServer {
    addr: std::net::SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Clone)]
struct Shared {
    behaviour: Arc<Mutex<Behaviour>>,
    fetches: Arc<AtomicUsize>,
    origin: String,
}

async fn jwks(State(shared): State<Shared>) -> impl IntoResponse {
    shared.fetches.fetch_add(1, Ordering::SeqCst);
    let (body, status, delay, cache) = {
        let b = shared.behaviour.lock().unwrap();
        (b.body.clone(), b.status, b.delay, b.cache_control.clone())
    };
    tokio::time::sleep(delay).await;
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    if let Some(c) = cache {
        headers.insert("cache-control", c.parse().unwrap());
    }
    (status, headers, body)
}

async fn discovery(State(shared): State<Shared>) -> impl IntoResponse {
    axum::Json(json!({"issuer": shared.origin, "jwks_uri": format!("{}/jwks", shared.origin)}))
}

impl KeyServer {
    async fn start(keys: &[&str]) -> KeyServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let behaviour = Arc::new(Mutex::new(Behaviour {
            body: jwks_of(keys),
            status: StatusCode::OK,
            delay: Duration::ZERO,
            cache_control: None,
        }));
        let fetches = Arc::new(AtomicUsize::new(0));
        let shared = Shared {
            behaviour: behaviour.clone(),
            fetches: fetches.clone(),
            origin: format!("http://{addr}"),
        };
        let app = axum::Router::new()
            .route("/jwks", axum::routing::get(jwks))
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(discovery),
            )
            .with_state(shared);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        KeyServer {
            addr,
            behaviour,
            fetches,
            task,
            stop: Some(stop),
        }
    }

    /// Stops listening and closes idle connections: from now on, connections are refused.
    async fn shut_down(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }

    fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.behaviour.lock().unwrap());
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A JWKS with these fixture keys (by kid).
fn jwks_of(kids: &[&str]) -> Vec<u8> {
    let app: Value = serde_json::from_slice(
        &std::fs::read(support::fixtures().join("policies/keys/app.jwks.json")).unwrap(),
    )
    .unwrap();
    let keys: Vec<Value> = kids
        .iter()
        .map(|kid| {
            app["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["kid"] == *kid)
                .unwrap()
                .clone()
        })
        .collect();
    json!({ "keys": keys }).to_string().into_bytes()
}

fn policy(jwks: &str, issuer: &str, refresh: &str) -> String {
    format!(
        "service: remote
baseUrls: [https://remote.test]
token:
  issuer: \"{issuer}\"
  audiences: [remote]
  algorithms: [RS256, PS512, EdDSA]
  jwks: {{ {jwks}, refresh: {refresh} }}
operations:
  - name: anything
    methods: [GET]
    paths: [\"/**\"]
"
    )
}

/// Starts the server on a policy naming the key server, and waits until it is ready.
async fn start(
    key_server: &KeyServer,
    refresh: &str,
    extra: &[&str],
) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let jwks = format!("url: \"{}/jwks\"", key_server.origin());
    std::fs::write(
        dir.path().join("remote.yaml"),
        policy(&jwks, "https://issuer.test", refresh),
    )
    .unwrap();
    let mut args = vec!["--allow-insecure-loopback-jwks"];
    args.extend(extra);
    let server = Server::start(dir.path(), &args);
    let http = client();
    eventually("ready", Duration::from_secs(10), || async {
        http.get(server.http_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    (dir, server)
}

fn token(key: &str, kid: &str, alg: Algorithm, issuer: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({"iss": issuer, "aud": "remote", "sub": "u", "iat": now, "exp": now + 600});
    support::jws(
        &json!({"alg": format!("{alg:?}"), "kid": kid}),
        &claims,
        Some((key, alg)),
    )
}

fn rsa(kid: &str) -> String {
    token(kid, kid, Algorithm::RS256, "https://issuer.test")
}

async fn decide(http: &reqwest::Client, server: &Server, token: &str) -> (u16, Value) {
    let response = http
        .get(server.http_url("/v1/authorize"))
        .header("X-Original-URL", "https://remote.test/x")
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn detail(body: &Value) -> &str {
    body["details"][0]["code"].as_str().unwrap_or("")
}

async fn eventually<F: FnMut() -> Fut, Fut: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut check: F,
) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

#[tokio::test]
async fn not_ready_until_the_keys_load_then_tokens_verify() {
    let keys = KeyServer::start(&["rsa-a", "ed-a"]).await;
    keys.set(|b| b.delay = Duration::from_millis(1500));
    let dir = tempfile::tempdir().unwrap();
    let jwks = format!("url: \"{}/jwks\"", keys.origin());
    std::fs::write(
        dir.path().join("remote.yaml"),
        policy(&jwks, "https://issuer.test", "10m"),
    )
    .unwrap();
    let server = Server::start(dir.path(), &["--allow-insecure-loopback-jwks"]);
    let http = client();
    let ready = http.get(server.http_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while the key set loads");
    let body: Value = ready.json().await.unwrap();
    assert!(
        body["waitingForKeySets"][0]
            .as_str()
            .unwrap()
            .ends_with("/jwks"),
        "{body}"
    );
    let (status, body) = decide(&http, &server, &rsa("rsa-a")).await;
    assert_eq!((status, detail(&body)), (401, "KEYS_UNAVAILABLE"));

    eventually("ready", Duration::from_secs(10), || async {
        http.get(server.http_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    assert_eq!(decide(&http, &server, &rsa("rsa-a")).await.0, 200);
    let ed = token("ed-a", "ed-a", Algorithm::EdDSA, "https://issuer.test");
    assert_eq!(decide(&http, &server, &ed).await.0, 200, "EdDSA");
    let text = server.get_text("/metrics").await;
    assert!(
        text.contains("portcullis_jwks_fetches_total{key_set=\""),
        "{text}"
    );
    assert!(text.contains("result=\"ok\"} 1"), "{text}");
    assert!(text.contains("portcullis_jwks_keys{key_set="), "{text}");
    assert!(
        text.contains("portcullis_jwks_age_seconds{key_set="),
        "{text}"
    );
}

#[tokio::test]
async fn a_new_kid_is_fetched_at_once_on_its_first_token() {
    let keys = KeyServer::start(&["rsa-a"]).await;
    // No scheduled refresh within the test: only the unknown kid can cause the fetch.
    let (_dir, server) = start(&keys, "10m", &[]).await;
    let http = client();
    assert_eq!(decide(&http, &server, &rsa("rsa-a")).await.0, 200);
    let before = keys.fetches();
    keys.set(|b| b.body = jwks_of(&["rsa-a", "rsa-b"]));
    let (status, body) = decide(&http, &server, &rsa("rsa-b")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys.fetches(), before + 1);
}

#[tokio::test]
async fn a_removed_key_stops_verifying_after_the_next_refresh() {
    let keys = KeyServer::start(&["rsa-a", "rsa-b"]).await;
    let (_dir, server) = start(&keys, "1s", &[]).await;
    let http = client();
    let old = rsa("rsa-a");
    assert_eq!(decide(&http, &server, &old).await.0, 200);
    keys.set(|b| b.body = jwks_of(&["rsa-b"]));
    // The same token, verified and cached before, is refused once the key set changes.
    eventually("rsa-a stops verifying", Duration::from_secs(10), || async {
        let (status, body) = decide(&http, &server, &old).await;
        status == 401 && detail(&body) == "UNKNOWN_KEY"
    })
    .await;
    assert_eq!(decide(&http, &server, &rsa("rsa-b")).await.0, 200);
}

#[tokio::test]
async fn an_outage_keeps_the_cached_keys_and_unknown_kids_are_401() {
    let keys = KeyServer::start(&["rsa-a"]).await;
    let (_dir, server) = start(&keys, "1s", &["--jwks-refetch-interval", "1s"]).await;
    let http = client();
    assert_eq!(decide(&http, &server, &rsa("rsa-a")).await.0, 200);
    keys.shut_down().await;
    // A few refresh intervals pass with the key server gone.
    eventually(
        "a failed fetch is counted",
        Duration::from_secs(10),
        || async {
            server
                .get_text("/metrics")
                .await
                .contains("result=\"error\"")
        },
    )
    .await;
    // A token never seen before, so not in the verified-token cache.
    let fresh = token("rsa-a", "rsa-a", Algorithm::PS512, "https://issuer.test");
    assert_eq!(
        decide(&http, &server, &fresh).await.0,
        200,
        "the last good keys still verify"
    );
    let (status, body) = decide(&http, &server, &rsa("rsa-b")).await;
    assert_eq!((status, detail(&body)), (401, "UNKNOWN_KEY"), "never a 500");
}

#[tokio::test]
async fn garbage_and_oversized_answers_keep_the_last_good_keys() {
    let keys = KeyServer::start(&["rsa-a"]).await;
    let (_dir, server) = start(&keys, "1s", &[]).await;
    let http = client();
    assert_eq!(decide(&http, &server, &rsa("rsa-a")).await.0, 200);

    keys.set(|b| b.body = b"<html>maintenance</html>".to_vec());
    eventually(
        "the garbage answer is refused",
        Duration::from_secs(10),
        || async {
            server
                .get_text("/metrics")
                .await
                .contains("result=\"invalid\"")
        },
    )
    .await;
    assert_eq!(decide(&http, &server, &rsa("rsa-a")).await.0, 200);

    let huge = format!(
        "{{\"keys\": [], \"pad\": \"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    keys.set(|b| b.body = huge.into_bytes());
    let before = keys.fetches();
    eventually(
        "the oversized answer is fetched",
        Duration::from_secs(10),
        || async { keys.fetches() > before + 1 },
    )
    .await;
    assert_eq!(decide(&http, &server, &rsa("rsa-a")).await.0, 200);

    keys.set(|b| {
        b.body = jwks_of(&["rsa-a"]);
        b.status = StatusCode::INTERNAL_SERVER_ERROR;
    });
    let before = keys.fetches();
    eventually(
        "a 500 answer is fetched",
        Duration::from_secs(10),
        || async { keys.fetches() > before + 1 },
    )
    .await;
    assert_eq!(decide(&http, &server, &rsa("rsa-a")).await.0, 200);
    server.wait_for_log("keeping the last good one").await;
}

#[tokio::test]
async fn a_slow_key_server_times_out_and_the_keys_stay() {
    let keys = KeyServer::start(&["rsa-a"]).await;
    let (_dir, server) = start(&keys, "1s", &[]).await;
    let http = client();
    assert_eq!(decide(&http, &server, &rsa("rsa-a")).await.0, 200);
    keys.set(|b| b.delay = Duration::from_secs(30));
    eventually(
        "the slow fetch times out",
        Duration::from_secs(15),
        || async {
            server
                .get_text("/metrics")
                .await
                .contains("result=\"error\"")
        },
    )
    .await;
    assert_eq!(decide(&http, &server, &rsa("rsa-a")).await.0, 200);
}

#[tokio::test]
async fn discovery_finds_the_key_set_through_the_issuer() {
    let keys = KeyServer::start(&["rsa-a"]).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("remote.yaml"),
        policy("discovery: true", &keys.origin(), "10m"),
    )
    .unwrap();
    let server = Server::start(dir.path(), &["--allow-insecure-loopback-jwks"]);
    let http = client();
    eventually("ready", Duration::from_secs(10), || async {
        http.get(server.http_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    let t = token("rsa-a", "rsa-a", Algorithm::RS256, &keys.origin());
    let (status, body) = decide(&http, &server, &t).await;
    assert_eq!(status, 200, "{body}");
}

/// `n` gRPC decisions of `https://remote.test/x` with `token`, all started at once.
fn concurrent_decisions(
    channel: &tonic::transport::Channel,
    token: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<portcullis::proto::Decision, tonic::Status>>> {
    (0..n)
        .map(|_| {
            let mut api = portcullis::proto::decision_service_client::DecisionServiceClient::new(
                channel.clone(),
            );
            let authorization = format!("Bearer {token}");
            tokio::spawn(async move {
                api.decide(portcullis::proto::DecideRequest {
                    method: "GET".into(),
                    url: "https://remote.test/x".into(),
                    headers: vec![portcullis::proto::Header {
                        name: "authorization".into(),
                        value: authorization,
                    }],
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
            })
        })
        .collect()
}

#[tokio::test]
async fn a_thousand_concurrent_unknown_kids_cause_at_most_one_fetch() {
    let keys = KeyServer::start(&["rsa-a"]).await;
    let (_dir, server) = start(&keys, "10m", &[]).await;
    let http = client();
    assert_eq!(decide(&http, &server, &rsa("rsa-a")).await.0, 200);
    let before = keys.fetches();
    let channel = tonic::transport::Channel::from_shared(server.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let calls = concurrent_decisions(&channel, &rsa("rsa-b"), 1000);
    for call in calls {
        let decision = call.await.unwrap().expect("every request is answered");
        assert_eq!(decision.status, 401);
        assert_eq!(decision.body.unwrap().details[0].code, "UNKNOWN_KEY");
    }
    let extra = keys.fetches() - before;
    assert!(extra <= 1, "{extra} fetches for 1000 unknown kids");
}

/// Requests for a key id that arrives with the next fetch all wait for that one fetch: none
/// is told "unknown key" because another request had just started it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_a_new_kid_all_wait_for_the_one_fetch() {
    let keys = KeyServer::start(&["rsa-a"]).await;
    let (_dir, server) = start(&keys, "10m", &[]).await;
    let http = client();
    assert_eq!(decide(&http, &server, &rsa("rsa-a")).await.0, 200);
    let before = keys.fetches();
    keys.set(|b| {
        b.body = jwks_of(&["rsa-a", "rsa-b"]);
        b.delay = Duration::from_millis(300);
    });
    let channel = tonic::transport::Channel::from_shared(server.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let calls = concurrent_decisions(&channel, &rsa("rsa-b"), 200);
    let mut refused = Vec::new();
    for call in calls {
        let decision = call.await.unwrap().expect("every request is answered");
        if decision.status != 200 {
            refused.push(decision.body.map(|b| b.details[0].code.clone()));
        }
    }
    assert!(refused.is_empty(), "refused: {refused:?}");
    assert_eq!(keys.fetches() - before, 1);
}

#[test]
fn key_urls_must_be_https_except_loopback_with_the_flag() {
    let check = |url: &str, flag: bool| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("remote.yaml"),
            policy(&format!("url: \"{url}\""), "https://issuer.test", "10m"),
        )
        .unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
        command.arg("check").arg(dir.path());
        if flag {
            command.arg("--allow-insecure-loopback-jwks");
        }
        let out = command.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(check("https://idp.test/jwks", false).0, Some(0));
    let (code, text) = check("http://idp.test/jwks", true);
    assert_eq!(
        code,
        Some(1),
        "plain http off loopback is refused even with the flag: {text}"
    );
    assert!(text.contains("remote.yaml:7:"), "{text}");
    assert_eq!(
        check("http://127.0.0.1:9/jwks", false).0,
        Some(1),
        "loopback http needs the flag"
    );
    assert_eq!(check("http://127.0.0.1:9/jwks", true).0, Some(0));
}
