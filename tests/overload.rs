//! Overload and size limits of `portcullis serve`, with real tonic and HTTP clients: past the
//! concurrency limit requests are refused at once on both listeners while health checks still
//! answer; slow requests end at their deadline; oversized headers, bodies and gRPC messages are
//! refused with a clear answer and the server goes on serving.
//!
//! Requests are made slow without any test hook: their token names a key id the remote key set
//! lacks, so the server fetches the key set again and waits for that fetch (up to 3 s, its
//! on-demand wait), which the local key server below answers only after 10 s.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use portcullis::proto;
use portcullis::proto::decision_service_client::DecisionServiceClient;
use serde_json::{Value, json};
use support::server::Server;
use tonic::transport::Channel;

/// How long the key server takes over every fetch after the first.
const SLOW_FETCH: Duration = Duration::from_secs(10);

/// A JWKS server on 127.0.0.1: the first fetch is answered at once with the `rsa-a` key,
/// every later one after [`SLOW_FETCH`].
struct KeyServer {
    origin: String,
    task: tokio::task::JoinHandle<()>,
}

impl KeyServer {
    async fn start() -> KeyServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let fetches = Arc::new(AtomicUsize::new(0));
        let jwks = jwks_with("rsa-a");
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let fetches = fetches.clone();
                let jwks = jwks.clone();
                async move {
                    if fetches.fetch_add(1, Ordering::SeqCst) > 0 {
                        tokio::time::sleep(SLOW_FETCH).await;
                    }
                    ([("content-type", "application/json")], jwks)
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        KeyServer { origin, task }
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn jwks_with(kid: &str) -> String {
    let all: Value = serde_json::from_slice(
        &std::fs::read(support::fixtures().join("policies/keys/app.jwks.json")).unwrap(),
    )
    .unwrap();
    let key = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap()
        .clone();
    json!({ "keys": [key] }).to_string()
}

/// Starts the server on one service whose keys come from `keys`, and waits until it is ready.
async fn start(keys: &KeyServer, extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slow.yaml"),
        format!(
            "service: slow
baseUrls: [https://slow.test]
token:
  issuer: https://issuer.test
  audiences: [slow]
  algorithms: [RS256]
  jwks: {{ url: \"{}/jwks\", refresh: 10m }}
operations:
  - name: anything
    methods: [GET]
    paths: [\"/**\"]
",
            keys.origin
        ),
    )
    .unwrap();
    let mut args = vec!["--allow-insecure-loopback-jwks"];
    args.extend(extra);
    let server = Server::start(dir.path(), &args);
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = http.get(server.http_url("/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready within 10 s:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (dir, server)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(server.grpc_url())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .expect("the gRPC listener accepts connections")
}

/// A token for the `slow` service; each call makes a different one (no cache hit).
fn token(kid: &str) -> String {
    static SERIAL: AtomicUsize = AtomicUsize::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({
        "iss": "https://issuer.test",
        "aud": "slow",
        "sub": "user.1",
        "jti": SERIAL.fetch_add(1, Ordering::Relaxed).to_string(),
        "iat": now - 10,
        "exp": now + 600,
    });
    support::jws(
        &json!({"alg": "RS256", "kid": kid, "typ": "JWT"}),
        &claims,
        Some(("rsa-a", Algorithm::RS256)),
    )
}

fn decide_request(token: &str) -> proto::DecideRequest {
    proto::DecideRequest {
        method: "GET".into(),
        url: "https://slow.test/things/1".into(),
        headers: vec![proto::Header {
            name: "authorization".into(),
            value: format!("Bearer {token}"),
        }],
        client_address: "10.0.0.7:1234".into(),
        client_certificate: String::new(),
    }
}

/// Requests whose token names an unknown key id: each waits for the slow key fetch.
fn slow_calls(channel: &Channel, n: usize) -> Vec<tokio::task::JoinHandle<tonic::Code>> {
    (0..n)
        .map(|_| {
            let mut client = DecisionServiceClient::new(channel.clone());
            let request = decide_request(&token("not-in-the-key-set"));
            tokio::spawn(async move {
                match client.decide(request).await {
                    Ok(_) => tonic::Code::Ok,
                    Err(status) => status.code(),
                }
            })
        })
        .collect()
}

fn rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// The value of a metric line starting with `prefix`, 0 when absent.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_limit_is_refused_at_once_on_both_listeners_while_health_answers() {
    let keys = KeyServer::start().await;
    let (_dir, server) = start(
        &keys,
        &["--max-concurrent-requests", "4", "--request-timeout", "8s"],
    )
    .await;
    let http = client();
    let grpc = channel(&server).await;
    let mut decisions = DecisionServiceClient::new(grpc.clone());
    let allowed = decisions
        .decide(decide_request(&token("rsa-a")))
        .await
        .expect("a decision before the burst");
    assert_eq!(allowed.get_ref().status, 200, "{:?}", allowed.get_ref());
    let rss_before = rss_kib(&server);
    let tokens: Vec<String> = (0..2000).map(|_| token("rsa-a")).collect();
    let http_tokens: Vec<String> = (0..300).map(|_| token("rsa-a")).collect();
    let started = Instant::now();

    // Four slow requests take every slot...
    let mut slow = slow_calls(&grpc, 4);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // A slow request that reached the server after a probe took the last slot was
        // refused: it is made again until all four hold a slot.
        for call in &mut slow {
            if call.is_finished() {
                *call = slow_calls(&grpc, 1).remove(0);
            }
        }
        let probe = decisions.decide(decide_request(&token("rsa-a"))).await;
        if probe
            .as_ref()
            .is_err_and(|s| s.code() == tonic::Code::ResourceExhausted)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow requests never filled the slots (last probe: {:?})\n{}",
            probe.map(|r| r.into_inner().status),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // ...so a burst far past the limit, over both listeners, is refused at once.
    // Eight connections, each under the server's 256 streams.
    let mut channels = vec![grpc.clone()];
    for _ in 1..8 {
        channels.push(channel(&server).await);
    }
    let mut grpc_calls = Vec::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let mut client = DecisionServiceClient::new(channels[i % channels.len()].clone());
        grpc_calls.push(tokio::spawn(async move {
            match client.decide(decide_request(&token)).await {
                Ok(r) => Ok(r.into_inner().status),
                Err(status) => Err(status.code()),
            }
        }));
        if i % 500 == 499 {
            tokio::task::yield_now().await;
        }
    }
    let mut http_calls = Vec::new();
    for (i, token) in http_tokens.into_iter().enumerate() {
        let http = http.clone();
        let url = server.http_url(if i % 10 == 0 {
            "/healthz"
        } else {
            "/v1/authorize"
        });
        let authorization = format!("Bearer {token}");
        http_calls.push(tokio::spawn(async move {
            let response = http
                .get(&url)
                .header("x-original-url", "https://slow.test/things/2")
                .header("authorization", authorization)
                .send()
                .await
                .expect("an HTTP answer");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (url, status, body)
        }));
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(grpc.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("gRPC health answers under overload")
        .into_inner()
        .status;
    assert_eq!(
        serving,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert_eq!(
        http.get(server.http_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "/readyz answers under overload"
    );

    let (mut refused, mut decided) = (0, 0);
    for call in grpc_calls {
        match call.await.unwrap() {
            Ok(200) => decided += 1,
            Ok(other) => panic!("unexpected decision status {other}"),
            Err(tonic::Code::ResourceExhausted) => refused += 1,
            Err(other) => panic!("unexpected gRPC status {other:?}\n{}", server.log()),
        }
    }
    // The burst was answered while the slow requests still held their slots: refused at
    // once, not queued behind them.
    assert!(
        slow.iter().any(|s| !s.is_finished()),
        "the burst outlasted the slow requests ({:?})",
        started.elapsed()
    );
    assert!(
        refused >= 1000,
        "only {refused} of 2000 gRPC calls refused ({decided} decided)"
    );
    let mut http_refused = 0;
    for call in http_calls {
        let (url, status, body) = call.await.unwrap();
        if url.ends_with("/healthz") {
            assert_eq!(status, 200, "/healthz is never shed");
            continue;
        }
        match status {
            200 => {}
            503 => {
                assert_eq!(body["code"], "SERVICE_UNAVAILABLE", "{body}");
                assert_eq!(body["details"][0]["code"], "OVERLOADED", "{body}");
                http_refused += 1;
            }
            other => panic!("unexpected HTTP status {other}: {body}"),
        }
    }
    assert!(http_refused >= 1, "no HTTP request was refused");

    let rss_after = rss_kib(&server);
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    for call in slow {
        let code = tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .expect("slow requests end")
            .unwrap();
        assert!(
            matches!(code, tonic::Code::Ok | tonic::Code::DeadlineExceeded),
            "{code:?}"
        );
    }

    // Afterwards the server serves normally.
    let after = decisions
        .decide(decide_request(&token("rsa-a")))
        .await
        .expect("a decision after the burst");
    assert_eq!(after.get_ref().status, 200);
    let metrics = server.get_text("/metrics").await;
    assert!(
        metric(
            &metrics,
            "portcullis_requests_refused_total{transport=\"grpc\",reason=\"OVERLOADED\"}"
        ) >= 1000.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_fresh_tokens_is_shed_past_the_limit_and_every_call_is_answered() {
    let keys = KeyServer::start().await;
    let (_dir, server) = start(&keys, &["--max-concurrent-requests", "4"]).await;
    // Fresh tokens: every call verifies an RS256 signature, nothing comes from the cache.
    let tokens: Vec<String> = (0..1000).map(|_| token("rsa-a")).collect();
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(channel(&server).await);
    }
    let calls: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            let mut client = DecisionServiceClient::new(channels[i % channels.len()].clone());
            tokio::spawn(async move {
                match client.decide(decide_request(&token)).await {
                    Ok(r) => Ok(r.into_inner().status),
                    Err(status) => Err(status.code()),
                }
            })
        })
        .collect();
    let (mut decided, mut refused) = (0, 0);
    for answer in futures_join(calls).await {
        match answer {
            Ok(200) => decided += 1,
            Err(tonic::Code::ResourceExhausted) => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(
        refused > 0,
        "none of 1000 calls was refused ({decided} decided)"
    );
    let mut client = DecisionServiceClient::new(channels[0].clone());
    let after = client
        .decide(decide_request(&token("rsa-a")))
        .await
        .unwrap();
    assert_eq!(after.get_ref().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_their_deadline_answer_deadline_exceeded_and_503() {
    let keys = KeyServer::start().await;
    let (_dir, server) = start(&keys, &["--request-timeout", "500ms"]).await;
    let grpc = channel(&server).await;
    let started = Instant::now();
    let codes: Vec<tonic::Code> = futures_join(slow_calls(&grpc, 3)).await;
    assert!(
        codes.iter().all(|c| *c == tonic::Code::DeadlineExceeded),
        "{codes:?}"
    );
    let http = client();
    let response = http
        .get(server.http_url("/v1/authorize"))
        .header("x-original-url", "https://slow.test/things/3")
        .header(
            "authorization",
            format!("Bearer {}", token("not-in-the-key-set")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "SERVICE_UNAVAILABLE", "{body}");
    assert_eq!(body["details"][0]["code"], "REQUEST_TIMEOUT", "{body}");
    assert!(
        started.elapsed() < SLOW_FETCH,
        "the deadline did not cut the requests short"
    );
    // A fast request still gets its decision.
    let mut decisions = DecisionServiceClient::new(grpc);
    let allowed = decisions
        .decide(decide_request(&token("rsa-a")))
        .await
        .unwrap();
    assert_eq!(allowed.get_ref().status, 200);
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(
            tokio::time::timeout(Duration::from_secs(20), handle)
                .await
                .expect("bounded")
                .unwrap(),
        );
    }
    out
}

fn json_refusal(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

#[tokio::test]
async fn too_many_or_too_large_headers_answer_431_with_a_json_body() {
    let server = Server::start(
        &support::fixtures().join("policies"),
        &["--jwks-start-timeout", "0s"],
    );
    let http = client();
    let authorize = || {
        http.get(server.http_url("/v1/authorize"))
            .header("x-original-url", "https://api.test/app/v1/items/1")
    };

    // Past --max-headers (100).
    let mut request = authorize();
    for i in 0..150 {
        request = request.header(format!("x-extra-{i}"), "1");
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 431);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = json_refusal(&response.text().await.unwrap());
    assert_eq!(body["code"], "INVALID_REQUEST", "{body}");
    assert_eq!(body["details"][0]["code"], "TOO_MANY_HEADERS", "{body}");
    assert!(
        body["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("--max-headers")
    );

    // Past --max-header-bytes (64 KiB).
    let response = authorize()
        .header("x-big", "b".repeat(100 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    let body = json_refusal(&response.text().await.unwrap());
    assert_eq!(body["details"][0]["code"], "HEADERS_TOO_LARGE", "{body}");

    // Far past both, the HTTP parser refuses by itself, still with 431.
    let mut request = authorize();
    for i in 0..300 {
        request = request.header(format!("x-extra-{i}"), "1");
    }
    assert_eq!(request.send().await.unwrap().status(), 431);
    let response = authorize()
        .header("x-huge", "h".repeat(1024 * 1024))
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status(), 431);
    }

    // A body past --max-body-bytes (16 KiB): 413; no endpoint reads one.
    let response = http
        .post(server.http_url("/v1/authorize"))
        .header("x-original-url", "https://api.test/app/v1/items/1")
        .body(vec![b'x'; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body = json_refusal(&response.text().await.unwrap());
    assert_eq!(body["details"][0]["code"], "BODY_TOO_LARGE", "{body}");

    // The server goes on: a normal request gets its decision (no token: 401).
    let response = authorize().send().await.unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn an_oversized_grpc_message_is_refused_and_the_server_goes_on() {
    let server = Server::start(
        &support::fixtures().join("policies"),
        &["--jwks-start-timeout", "0s", "--max-grpc-message", "4KiB"],
    );
    let mut client = DecisionServiceClient::new(channel(&server).await);
    let request = |value: String| proto::DecideRequest {
        method: "GET".into(),
        url: "https://api.test/app/v1/items/1".into(),
        headers: vec![proto::Header {
            name: "x-padding".into(),
            value,
        }],
        client_address: String::new(),
        client_certificate: String::new(),
    };
    let error = client
        .decide(request("p".repeat(8 * 1024)))
        .await
        .expect_err("a message past --max-grpc-message is refused");
    assert_eq!(error.code(), tonic::Code::OutOfRange, "{error}");
    // Metadata past the HTTP/2 header list size is refused too.
    let mut big = tonic::Request::new(request(String::new()));
    big.metadata_mut()
        .insert("x-big", "b".repeat(200 * 1024).parse().unwrap());
    assert!(client.decide(big).await.is_err());
    let decision = client
        .decide(request("small".into()))
        .await
        .expect("the server goes on serving")
        .into_inner();
    assert_eq!(decision.status, 401);
}
