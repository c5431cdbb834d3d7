//! Portcullis behind the real gateways it is made for: Envoy (ext_authz, gRPC) and nginx
//! (`auth_request`, HTTP), each run from the shipped example config (`examples/envoy/envoy.yaml`,
//! `examples/nginx/nginx.conf`) with its ports replaced by free ones.
//!
//! Each test starts, all on 127.0.0.1:
//! - `portcullis serve` as a child process, on the shipped `policies/` (not a copy: the point is
//!   that the examples work with the policies a newcomer has; requests carry
//!   `Host: api.example.com`, so that the URL the gateway reports,
//!   `https://api.example.com/meme-game/api/v1/…`, falls under a base URL of `meme-game`
//!   whatever port the gateway listens on);
//! - an upstream (axum, in this process) that answers 200 with a JSON echo of the request
//!   headers it received, and counts requests;
//! - the gateway, as a child process.
//!
//! and then proves through the gateway: 404 for an unknown URL; 401 with `WWW-Authenticate` for
//! a missing, an expired and a wrong-audience token; 403 for a missing group; 405 with `Allow`;
//! 200 with the upstream headers Portcullis set, replacing the client's spoofed ones, also for
//! a second service (`partner-reports`, whose token comes from `portcullis token`) that sets
//! other upstream headers, where the gateway itself must drop the client's `x-user-id`; that
//! no denied request reached the upstream; that every decision is in Portcullis' decisions API
//! under the `x-decision-id` the client (or upstream) received; and a 502 once Portcullis is
//! down (fail closed, and distinguishable from a policy denial).
//!
//! `two_replicas_behind_envoy_share_decisions_and_rate_limits` runs
//! `examples/two-replicas/envoy.yaml` in front of two replicas sharing a real `redis-server`
//! (`--trace-store redis://…`), and proves through Envoy: every decision is in the decisions
//! API of both replicas, whichever decided it; a rate limit of 30 a minute holds across both;
//! with Redis down every request is still decided; with a replica down, the other answers.
//! Without `redis-server` it is skipped (a failure with `PORTCULLIS_REQUIRE_REDIS=1`).
//!
//! A missing gateway binary skips its test with a loud `SKIPPED:` line, or fails it when
//! `PORTCULLIS_REQUIRE_GATEWAYS=1` (as `.ci/run` sets, after installing both). Every child
//! process is killed when its guard drops, every wait has a deadline, and configs, logs and
//! pid files live in a temporary directory.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::gateway::Proc;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");
/// The authority every request names: a host of the `meme-game` base URLs (default port).
const HOST: &str = "api.example.com";
const API: &str = "/meme-game/api/v1";
/// How long a child process may take to come up.
const STARTUP: Duration = Duration::from_secs(60);

/// A free port on 127.0.0.1 (for the gateways, whose configs need one before they start).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Portcullis {
    proc: Proc,
    grpc: SocketAddr,
    http: SocketAddr,
}

/// `portcullis serve` on the shipped policies, both listeners on free ports; returns once it
/// printed its `listening …` line.
fn start_portcullis(dir: &Path) -> Portcullis {
    start_portcullis_with(dir, "portcullis", &[])
}

/// [`start_portcullis`] with `extra` arguments to `serve`; `name` names the process in
/// failures and its log file in `dir`.
fn start_portcullis_with(dir: &Path, name: &'static str, extra: &[&str]) -> Portcullis {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .current_dir(MANIFEST)
        .args(["serve", "--policies"])
        .arg(Path::new(MANIFEST).join("policies"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped());
    let mut proc = Proc::spawn(name, &mut command, dir.join(format!("{name}.log")));
    let stdout = proc.child.as_mut().unwrap().stdout.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Forward stdout lines; keep reading to the end so the child never blocks on a pipe.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = match lines_rx.recv_timeout(STARTUP) {
        Ok(line) => line,
        Err(e) => {
            proc.assert_running();
            panic!("portcullis printed no `listening` line within {STARTUP:?} ({e})");
        }
    };
    let addr = |key: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {key}ADDR in portcullis' first line {line:?}"))
    };
    assert!(
        line.starts_with("listening "),
        "first stdout line: {line:?}"
    );
    let (grpc, http) = (addr("grpc="), addr("http="));
    Portcullis { proc, grpc, http }
}

/// Replaces `from` (which must occur exactly once) in a gateway config template.
fn set_port(config: &mut String, from: &str, to: &str) {
    assert_eq!(
        config.matches(from).count(),
        1,
        "the example config should contain `{from}` exactly once"
    );
    *config = config.replace(from, to);
}

/// Waits until something accepts TCP connections on `port`.
fn wait_for_port(proc: &mut Proc, port: u16) {
    let deadline = Instant::now() + STARTUP;
    loop {
        proc.assert_running();
        if TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(200),
        )
        .is_ok()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not listen on port {port} within {STARTUP:?}",
            proc.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// The upstream: echoes the request headers it got, and counts requests

#[derive(Clone, Default)]
struct Upstream {
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Upstream {
    async fn start() -> (Upstream, SocketAddr) {
        let upstream = Upstream::default();
        let state = upstream.clone();
        let app = axum::Router::new().fallback(
            move |method: axum::http::Method, uri: axum::http::Uri, headers: HeaderMap| {
                let state = state.clone();
                async move {
                    let mut echoed: BTreeMap<String, Vec<String>> = BTreeMap::new();
                    for (name, value) in &headers {
                        echoed
                            .entry(name.as_str().to_owned())
                            .or_default()
                            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
                    }
                    let seen = json!({
                        "method": method.as_str(),
                        "uri": uri.to_string(),
                        "headers": echoed,
                    });
                    state.seen.lock().unwrap().push(seen.clone());
                    axum::Json(seen)
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (upstream, addr)
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens, signed with the dev key of the shipped policies (policies/keys/README.md)

struct Claims<'a> {
    sub: &'a str,
    groups: &'a [&'a str],
    scope: &'a str,
    aud: &'a str,
    expired: bool,
}

const GOOD: Claims<'static> = Claims {
    sub: "user.0",
    groups: &["players"],
    scope: "answers:write memes:read",
    aud: "meme-game",
    expired: false,
};

fn token(claims: &Claims<'_>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (iat, exp) = if claims.expired {
        (now - 7200, now - 3600)
    } else {
        (now, now + 3600)
    };
    let mut body = json!({
        "iss": "https://auth.example.com",
        "aud": claims.aud,
        "sub": claims.sub,
        "client_id": "meme-game-web",
        "scope": claims.scope,
        "iat": iat,
        "exp": exp,
    });
    if !claims.groups.is_empty() {
        body["groups"] = json!(claims.groups);
    }
    let pem = std::fs::read(Path::new(MANIFEST).join("policies/keys/meme-game.dev-key.pem"))
        .expect("the dev key of the shipped policies");
    let key = EncodingKey::from_rsa_pem(&pem).expect("an RSA PEM key");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("meme-game-dev-rsa-1".into());
    jsonwebtoken::encode(&header, &body, &key).unwrap()
}

/// A development token from `portcullis token` for the shipped policies.
fn dev_token(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .current_dir(MANIFEST)
        .arg("token")
        .arg("--policies")
        .arg(Path::new(MANIFEST).join("policies"))
        .args(args)
        .output()
        .expect("portcullis token runs");
    assert!(
        output.status.success(),
        "portcullis token {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

// ---------------------------------------------------------------------------------------------
// Talking to the gateway and to Portcullis

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        let mut all = self.headers.get_all(name).iter();
        let first = all.next()?;
        assert!(
            all.next().is_none(),
            "more than one `{name}` header in {:?}",
            self.headers
        );
        Some(first.to_str().expect("an ASCII header"))
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} {:?}", self.status, self.text))
    }

    fn describe(&self) -> String {
        format!("{} {:?} {}", self.status, self.headers, self.text)
    }
}

struct Client {
    http: reqwest::Client,
    gateway: SocketAddr,
    portcullis: SocketAddr,
}

impl Client {
    fn new(gateway_port: u16, portcullis: SocketAddr) -> Client {
        Client {
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            gateway: SocketAddr::from(([127, 0, 0, 1], gateway_port)),
            portcullis,
        }
    }

    /// A request to the gateway, for `https://api.example.com{path}` as the gateway reports it.
    async fn call(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Answer {
        let url = format!("http://{}{path}", self.gateway);
        let mut request = self
            .http
            .request(method.parse().unwrap(), &url)
            .header(reqwest::header::HOST, HOST);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        if method == "POST" {
            request = request
                .header("content-type", "application/json")
                .body(r#"{"answer":"a cat"}"#);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url} through the gateway: {e}"));
        Answer {
            status: response.status(),
            headers: response.headers().clone(),
            text: response.text().await.unwrap(),
        }
    }

    /// The decision recorded under `id`, from Portcullis' decisions API.
    async fn decision(&self, id: &str) -> Value {
        let url = format!("http://{}/v1/decisions/{id}", self.portcullis);
        let response = self.http.get(&url).send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "GET {url}: {text}");
        let decision: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(decision["id"], id, "{decision}");
        decision
    }
}

fn detail_codes(body: &Value) -> Vec<String> {
    body["details"]
        .as_array()
        .map(|details| {
            details
                .iter()
                .filter_map(|d| d["code"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// Envoy returns Portcullis' denial as it is: status, headers, the full §3 body.
    Envoy,
    /// nginx returns the status (mapped back by the example's error_page handlers), the
    /// headers the config copies, and a short JSON body made by nginx: `id` and `code`.
    Nginx,
}

/// One denial through the gateway, checked against the client's view and the decision
/// recorded in Portcullis.
struct Deny<'a> {
    what: &'a str,
    method: &'a str,
    path: &'a str,
    bearer: Option<String>,
    status: u16,
    code: &'a str,
    /// The detail code (SPEC §2a) the decision must carry, if this test pins one down.
    detail: Option<&'a str>,
}

async fn expect_deny(client: &Client, kind: Kind, deny: Deny<'_>) -> (Answer, Value) {
    let answer = client
        .call(deny.method, deny.path, deny.bearer.as_deref(), &[])
        .await;
    let what = deny.what;
    assert_eq!(
        answer.status.as_u16(),
        deny.status,
        "{kind:?}, {what}: {}",
        answer.describe()
    );
    assert!(
        answer
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{kind:?}, {what}: a JSON body: {}",
        answer.describe()
    );
    let body = answer.json();
    let id = answer
        .header("x-decision-id")
        .unwrap_or_else(|| panic!("{kind:?}, {what}: no x-decision-id: {}", answer.describe()))
        .to_owned();
    assert_eq!(body["id"], id, "{kind:?}, {what}: x-decision-id == body.id");
    assert_eq!(body["code"], deny.code, "{kind:?}, {what}: {body}");
    if kind == Kind::Envoy {
        if let Some(detail) = deny.detail {
            assert!(
                detail_codes(&body).iter().any(|c| c == detail),
                "{kind:?}, {what}: detail {detail} in {body}"
            );
        }
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    // The decision is in the store under the id the client got, for the URL the gateway
    // reported, with the reason in full (also for nginx, whose client saw only the id).
    let decision = client.decision(&id).await;
    let url = format!("https://{HOST}{}", deny.path);
    assert_eq!(
        decision["request"]["url"], url,
        "{kind:?}, {what}: {decision}"
    );
    assert_eq!(
        decision["request"]["method"], deny.method,
        "{kind:?}, {what}: {decision}"
    );
    assert_eq!(decision["outcome"], "deny", "{kind:?}, {what}: {decision}");
    assert_eq!(
        decision["status"], deny.status,
        "{kind:?}, {what}: {decision}"
    );
    if let Some(detail) = deny.detail {
        assert!(
            detail_codes(&decision["body"]).iter().any(|c| c == detail),
            "{kind:?}, {what}: detail {detail} in the recorded decision {decision}"
        );
    }
    if kind == Kind::Envoy {
        assert_eq!(
            decision["body"], body,
            "{kind:?}, {what}: the client got the recorded body"
        );
    }
    (answer, decision)
}

/// Everything both gateways must do, against a running gateway on `gateway_port`.
async fn exercise(kind: Kind, client: &Client, upstream: &Upstream, portcullis: &mut Portcullis) {
    // 404: no API service at this URL.
    expect_deny(
        client,
        kind,
        Deny {
            what: "unknown URL",
            method: "GET",
            path: "/no-such-api/things",
            bearer: Some(token(&GOOD)),
            status: 404,
            code: "NOT_FOUND",
            detail: None,
        },
    )
    .await;

    // 401 without a token: a challenge without an `error` attribute (RFC 6750 §3.1).
    let (answer, _) = expect_deny(
        client,
        kind,
        Deny {
            what: "no token",
            method: "GET",
            path: &format!("{API}/leaderboard"),
            bearer: None,
            status: 401,
            code: "UNAUTHORIZED",
            detail: Some("REQUIRED_VALUE"),
        },
    )
    .await;
    let challenge = answer.header("www-authenticate").expect("a challenge");
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(challenge.contains("realm="), "{challenge}");
    assert!(!challenge.contains("error="), "{challenge}");

    // 401 for an expired token and for one made for another API.
    for (what, claims, detail, description) in [
        (
            "expired token",
            Claims {
                expired: true,
                ..GOOD
            },
            "TOKEN_EXPIRED",
            "Token expired",
        ),
        (
            "wrong audience",
            Claims {
                aud: "some-other-api",
                ..GOOD
            },
            "INVALID_AUDIENCE",
            "Invalid audience",
        ),
    ] {
        let (answer, _) = expect_deny(
            client,
            kind,
            Deny {
                what,
                method: "GET",
                path: &format!("{API}/leaderboard"),
                bearer: Some(token(&claims)),
                status: 401,
                code: "UNAUTHORIZED",
                detail: Some(detail),
            },
        )
        .await;
        let challenge = answer.header("www-authenticate").expect("a challenge");
        assert!(challenge.starts_with("Bearer "), "{what}: {challenge}");
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{what}: {challenge}"
        );
        assert!(
            challenge.contains(&format!(r#"error_description="{description}""#)),
            "{what}: {challenge}"
        );
    }

    // 403: a user who is not a player may not submit an answer (a POST: the gateway must
    // report the original method, not its subrequest's).
    let (_, decision) = expect_deny(
        client,
        kind,
        Deny {
            what: "missing group",
            method: "POST",
            path: &format!("{API}/users/user.0/answers"),
            bearer: Some(token(&Claims {
                groups: &["viewers"],
                ..GOOD
            })),
            status: 403,
            code: "FORBIDDEN",
            detail: Some("GROUP_REQUIRED"),
        },
    )
    .await;
    assert_eq!(decision["operation"], "submit-answer", "{decision}");

    // 403 for a missing scope, with `insufficient_scope` in the challenge (RFC 6750 §3.1),
    // which nginx passes on only because the example copies it (auth_request does on 401).
    let (answer, _) = expect_deny(
        client,
        kind,
        Deny {
            what: "missing scope",
            method: "POST",
            path: &format!("{API}/users/user.0/answers"),
            bearer: Some(token(&Claims {
                scope: "memes:read",
                ..GOOD
            })),
            status: 403,
            code: "FORBIDDEN",
            detail: Some("SCOPE_REQUIRED"),
        },
    )
    .await;
    let challenge = answer.header("www-authenticate").expect("a challenge");
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains(r#"error="insufficient_scope""#),
        "{kind:?}: {challenge}"
    );

    // 405 with `Allow` when only the method is wrong.
    let (answer, _) = expect_deny(
        client,
        kind,
        Deny {
            what: "wrong method",
            method: "DELETE",
            path: &format!("{API}/leaderboard"),
            bearer: Some(token(&GOOD)),
            status: 405,
            code: "METHOD_NOT_ALLOWED",
            detail: None,
        },
    )
    .await;
    let allow = answer.header("allow").expect("an Allow header");
    assert!(allow.split(',').any(|m| m.trim() == "GET"), "{allow}");

    assert_eq!(
        upstream.count(),
        0,
        "{kind:?}: a denied request reached the upstream"
    );

    // 200: the upstream gets the request with the headers Portcullis set, which replace the
    // client's own.
    let spoofed = [
        ("x-user-id", "admin"),
        ("x-user-groups", "moderators"),
        ("x-decision-id", "forged"),
    ];
    let answer = client
        .call(
            "POST",
            &format!("{API}/users/user.0/answers?lang=en"),
            Some(&token(&GOOD)),
            &spoofed,
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{kind:?}: {}",
        answer.describe()
    );
    let seen = answer.json();
    assert_eq!(seen["method"], "POST", "{seen}");
    assert_eq!(
        seen["uri"],
        format!("{API}/users/user.0/answers?lang=en"),
        "{seen}"
    );
    let headers = &seen["headers"];
    assert_eq!(headers["x-user-id"], json!(["user.0"]), "{kind:?}: {seen}");
    assert_eq!(
        headers["x-user-groups"],
        json!(["players"]),
        "{kind:?}: {seen}"
    );
    let ids = headers["x-decision-id"]
        .as_array()
        .expect("x-decision-id upstream");
    assert_eq!(ids.len(), 1, "{seen}");
    let id = ids[0].as_str().unwrap();
    assert_ne!(id, "forged");
    let decision = client.decision(id).await;
    assert_eq!(decision["outcome"], "allow", "{decision}");
    assert_eq!(decision["operation"], "submit-answer", "{decision}");
    assert_eq!(decision["request"]["method"], "POST", "{decision}");
    assert_eq!(
        decision["request"]["url"],
        format!("https://{HOST}{API}/users/user.0/answers?lang=en"),
        "{decision}"
    );
    assert_eq!(
        decision["upstreamHeaders"]["x-user-id"], "user.0",
        "{decision}"
    );
    if let Some(client_id) = answer.header("x-decision-id") {
        assert_eq!(
            client_id, id,
            "the client and the upstream see the same decision"
        );
    }

    // A token without a `groups` claim: whatever Portcullis sets for `x-user-groups`, the
    // client's own value must not reach the upstream.
    let answer = client
        .call(
            "GET",
            &format!("{API}/leaderboard"),
            Some(&token(&Claims {
                groups: &[],
                ..GOOD
            })),
            &spoofed,
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{kind:?}: {}",
        answer.describe()
    );
    let seen = answer.json();
    assert_eq!(
        seen["headers"]["x-user-id"],
        json!(["user.0"]),
        "{kind:?}: {seen}"
    );
    let groups = seen["headers"]["x-user-groups"].to_string();
    assert!(
        !groups.contains("moderators"),
        "{kind:?}: spoofed groups upstream: {seen}"
    );

    // Another service, whose policy sets other upstream headers (x-partner-id, x-client-id):
    // the gateway must drop the client's x-user-id and x-user-groups itself, since Portcullis
    // does not set them for this service. The token comes from `portcullis token`, as a
    // newcomer would get it.
    let partner = dev_token(&[
        "--service",
        "partner-reports",
        "--client-id",
        "acme-sync",
        "--claim",
        "partner_id=acme",
        "--scope",
        "reports.read",
    ]);
    let answer = client
        .call(
            "GET",
            "/partners/v2/partners/acme/reports/2026-q3",
            Some(&partner),
            &spoofed,
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{kind:?}: {}",
        answer.describe()
    );
    let seen = &answer.json()["headers"];
    assert_eq!(seen["x-partner-id"], json!(["acme"]), "{kind:?}: {seen}");
    assert_eq!(
        seen["x-client-id"],
        json!(["acme-sync"]),
        "{kind:?}: {seen}"
    );
    assert_eq!(
        seen["x-user-id"],
        Value::Null,
        "{kind:?}: spoofed x-user-id upstream: {seen}"
    );
    assert_eq!(
        seen["x-user-groups"],
        Value::Null,
        "{kind:?}: spoofed x-user-groups upstream: {seen}"
    );
    assert_eq!(upstream.count(), 3);

    // Portcullis down: the gateway refuses with 502 (not an allow, and not a 401/403 that
    // would look like a policy decision).
    portcullis.proc.kill();
    let answer = client
        .call(
            "GET",
            &format!("{API}/leaderboard"),
            Some(&token(&GOOD)),
            &[],
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::BAD_GATEWAY,
        "{kind:?}, Portcullis down: {}",
        answer.describe()
    );
    assert_eq!(
        answer.header("x-decision-id"),
        None,
        "{}",
        answer.describe()
    );
    if kind == Kind::Nginx {
        // The example's error_page handler says it is the authorization service, in JSON.
        assert_eq!(
            answer.json()["code"],
            "SERVICE_UNAVAILABLE",
            "{}",
            answer.describe()
        );
    }
    assert_eq!(
        upstream.count(),
        3,
        "{kind:?}: a request passed while Portcullis was down"
    );
}

// ---------------------------------------------------------------------------------------------
// The gateways

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_in_front_of_portcullis() {
    let Some(envoy) = support::gateway::envoy() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut portcullis = start_portcullis(dir.path());
    let (upstream, upstream_addr) = Upstream::start().await;

    let (listen, admin) = (free_port(), free_port());
    let mut config =
        std::fs::read_to_string(Path::new(MANIFEST).join("examples/envoy/envoy.yaml")).unwrap();
    set_port(
        &mut config,
        "port_value: 8443",
        &format!("port_value: {listen}"),
    );
    set_port(
        &mut config,
        "port_value: 9901",
        &format!("port_value: {admin}"),
    );
    set_port(
        &mut config,
        "port_value: 9000",
        &format!("port_value: {}", upstream_addr.port()),
    );
    set_port(
        &mut config,
        "port_value: 50051",
        &format!("port_value: {}", portcullis.grpc.port()),
    );
    let gateway = start_envoy(&envoy, dir.path(), &config, admin).await;

    let client = Client::new(listen, portcullis.http);
    exercise(Kind::Envoy, &client, &upstream, &mut portcullis).await;
    drop(gateway);
}

/// Envoy (one worker) on `config`, written into `dir`; returns once its admin port on
/// `admin` says it is ready.
async fn start_envoy(envoy: &Path, dir: &Path, config: &str, admin: u16) -> Proc {
    let config_path = dir.join("envoy.yaml");
    std::fs::write(&config_path, config).unwrap();
    let mut command = Command::new(envoy);
    command
        .arg("-c")
        .arg(&config_path)
        .args(["--disable-hot-restart", "--concurrency", "1"])
        .args(["--log-level", "info"])
        .stdout(Stdio::null());
    let mut gateway = Proc::spawn("envoy", &mut command, dir.join("envoy.log"));
    wait_for_envoy(&mut gateway, admin).await;
    gateway
}

/// Envoy's admin `/ready` answers 200 once the listeners are up.
async fn wait_for_envoy(gateway: &mut Proc, admin: u16) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + STARTUP;
    loop {
        gateway.assert_running();
        if let Ok(response) = http
            .get(format!("http://127.0.0.1:{admin}/ready"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            && response.status() == StatusCode::OK
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "envoy was not ready within {STARTUP:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_in_front_of_portcullis() {
    let Some(nginx) = support::gateway::nginx() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut portcullis = start_portcullis(dir.path());
    let (upstream, upstream_addr) = Upstream::start().await;

    let listen = free_port();
    let mut config =
        std::fs::read_to_string(Path::new(MANIFEST).join("examples/nginx/nginx.conf")).unwrap();
    let listen_at = format!("listen 127.0.0.1:{listen};");
    set_port(&mut config, "listen 127.0.0.1:8443;", &listen_at);
    let portcullis_at = format!("server {};", portcullis.http);
    set_port(&mut config, "server 127.0.0.1:8080;", &portcullis_at);
    let upstream_at = format!("server {upstream_addr};");
    set_port(&mut config, "server 127.0.0.1:9000;", &upstream_at);
    let prefix = dir.path().join("nginx");
    std::fs::create_dir(&prefix).unwrap();
    let config_path = prefix.join("nginx.conf");
    std::fs::write(&config_path, config).unwrap();

    // Relative paths of the config (pid, logs, temp directories) land under the prefix.
    // `master_process off`: one process, which the guard kills for good (a killed master
    // would leave its workers serving), and which stays the user that runs the test (as
    // root, workers would switch to `nobody`, who cannot write into the private temp dir).
    let mut command = Command::new(&nginx);
    command
        .arg("-p")
        .arg(&prefix)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .arg("-c")
        .arg(&config_path)
        .args(["-g", "daemon off; master_process off;"])
        .stdout(Stdio::null());
    let mut gateway = Proc::spawn("nginx", &mut command, dir.path().join("nginx.stderr"));
    // nginx logs to its error.log; show that one if the test fails.
    gateway.log = prefix.join("error.log");
    wait_for_port(&mut gateway, listen);

    let client = Client::new(listen, portcullis.http);
    exercise(Kind::Nginx, &client, &upstream, &mut portcullis).await;
    drop(gateway);
}

// ---------------------------------------------------------------------------------------------
// Two replicas behind Envoy, sharing decisions and rate limits through Redis

/// Replica `at`'s record of decision `id`, or `None` while it answers 404.
async fn replica_decision(http: &reqwest::Client, at: SocketAddr, id: &str) -> Option<Value> {
    let url = format!("http://{at}/v1/decisions/{id}");
    let response = http.get(&url).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    match status {
        StatusCode::OK => {
            let decision: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(decision["id"], id, "GET {url}: {decision}");
            Some(decision)
        }
        StatusCode::NOT_FOUND => None,
        other => panic!("GET {url}: {other} {text}"),
    }
}

/// Waits until replica `at` has decision `id` (writing to the shared store is asynchronous).
async fn wait_for_decision(http: &reqwest::Client, name: &str, at: SocketAddr, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(decision) = replica_decision(http, at, id).await {
            return decision;
        }
        assert!(
            Instant::now() < deadline,
            "replica {name} ({at}) did not get decision {id} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /v1/decisions{query}` of replica `at`.
async fn replica_listing(http: &reqwest::Client, at: SocketAddr, query: &str) -> Value {
    let url = format!("http://{at}/v1/decisions{query}");
    let response = http.get(&url).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "GET {url}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn listed_ids(listing: &Value) -> Vec<String> {
    listing["decisions"]
        .as_array()
        .unwrap_or_else(|| panic!("no `decisions` list in {listing}"))
        .iter()
        .map(|d| d["id"].as_str().expect("a decision id").to_owned())
        .collect()
}

/// The sum of the samples of metric `name` on replica `at` whose labels contain `label`.
async fn metric(http: &reqwest::Client, at: SocketAddr, name: &str, label: &str) -> f64 {
    let url = format!("http://{at}/metrics");
    let text = http.get(&url).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .contains(label)
                .then(|| value.trim().parse::<f64>().unwrap())
        })
        .sum()
}

/// Waits until Envoy's active gRPC health checks found every port of `ports` healthy.
async fn wait_for_healthy_endpoints(gateway: &mut Proc, admin: u16, ports: &[u16]) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + STARTUP;
    loop {
        gateway.assert_running();
        let clusters = match http
            .get(format!("http://127.0.0.1:{admin}/clusters"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
        {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let healthy = |port: &u16| {
            clusters
                .lines()
                .any(|l| l == format!("portcullis::127.0.0.1:{port}::health_flags::healthy"))
        };
        if ports.iter().all(healthy) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Envoy's health checks did not find every replica healthy within {STARTUP:?}:\n{clusters}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The decision id of an answer through Envoy: the upstream's on allow, the client's on deny.
fn decision_id(answer: &Answer) -> String {
    if answer.status == StatusCode::OK {
        let ids = &answer.json()["headers"]["x-decision-id"];
        assert_eq!(
            ids.as_array().map(Vec::len),
            Some(1),
            "{}",
            answer.describe()
        );
        ids[0].as_str().unwrap().to_owned()
    } else {
        answer
            .header("x-decision-id")
            .unwrap_or_else(|| panic!("no x-decision-id: {}", answer.describe()))
            .to_owned()
    }
}

fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_behind_envoy_share_decisions_and_rate_limits() {
    let Some(envoy) = support::gateway::envoy() else {
        return;
    };
    let Some(mut redis) = support::redis::Redis::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = redis.url();
    // A generous Redis timeout: on a busy machine the default 50 ms could make a count fall
    // back to local counters, and this test is about counters being shared.
    let shared = ["--trace-store", url.as_str(), "--redis-timeout", "2s"];
    let a = start_portcullis_with(dir.path(), "portcullis-a", &shared);
    let mut b = start_portcullis_with(dir.path(), "portcullis-b", &shared);
    let replicas = [("A", a.http), ("B", b.http)];
    let (upstream, upstream_addr) = Upstream::start().await;

    let (listen, admin) = (free_port(), free_port());
    let mut config =
        std::fs::read_to_string(Path::new(MANIFEST).join("examples/two-replicas/envoy.yaml"))
            .unwrap();
    for (from, to) in [
        (8443, listen),
        (9901, admin),
        (9000, upstream_addr.port()),
        (50051, a.grpc.port()),
        (50052, b.grpc.port()),
    ] {
        set_port(
            &mut config,
            &format!("port_value: {from} "),
            &format!("port_value: {to} "),
        );
    }
    let mut gateway = start_envoy(&envoy, dir.path(), &config, admin).await;
    wait_for_healthy_endpoints(&mut gateway, admin, &[a.grpc.port(), b.grpc.port()]).await;

    let client = Client::new(listen, a.http);
    let http = &client.http;

    // (a) Decisions made through Envoy, allowed and denied, spread over both replicas by
    // round robin: each one is in the decisions API of both replicas, under the id the client
    // (or the upstream) got.
    let player = token(&GOOD);
    let viewer = token(&Claims {
        groups: &["viewers"],
        ..GOOD
    });
    let leaderboard = format!("{API}/leaderboard");
    let answers = format!("{API}/users/user.0/answers");
    let memes = format!("{API}/memes");
    let kinds: [(&str, &str, Option<&str>, u16); 6] = [
        ("GET", &leaderboard, Some(&player), 200),
        ("GET", &leaderboard, None, 401),
        ("POST", &answers, Some(&viewer), 403),
        ("DELETE", &leaderboard, Some(&player), 405),
        ("GET", "/no-such-api/things", Some(&player), 404),
        ("GET", &memes, Some(&player), 200),
    ];
    let mut made = Vec::new();
    for (method, path, bearer, status) in kinds.iter().chain(kinds.iter()) {
        let answer = client.call(method, path, *bearer, &[]).await;
        assert_eq!(
            answer.status.as_u16(),
            *status,
            "{method} {path}: {}",
            answer.describe()
        );
        made.push((decision_id(&answer), *method, *path, *status));
    }
    for (id, method, path, status) in &made {
        for (name, at) in replicas {
            let decision = wait_for_decision(http, name, at, id).await;
            assert_eq!(decision["status"], *status, "replica {name}: {decision}");
            assert_eq!(
                decision["request"]["method"], *method,
                "replica {name}: {decision}"
            );
            assert_eq!(
                decision["request"]["url"],
                format!("https://{HOST}{path}"),
                "replica {name}: {decision}"
            );
        }
    }
    // Both replicas decided some (so each fetched the other's from Redis), and each lists all.
    let mut decided = Vec::new();
    for (name, at) in replicas {
        decided.push(metric(http, at, "portcullis_decisions_total", "").await);
        let listing = replica_listing(http, at, "?limit=100").await;
        assert_eq!(
            listing.get("sharedStore"),
            None,
            "replica {name}: {listing}"
        );
        let listed = listed_ids(&listing);
        for (id, ..) in &made {
            assert!(
                listed.contains(id),
                "replica {name} does not list {id}: {listed:?}"
            );
        }
    }
    assert_eq!(
        decided.iter().sum::<f64>(),
        made.len() as f64,
        "decisions by replica: {decided:?}"
    );
    assert!(
        decided.iter().all(|&n| n > 0.0),
        "Envoy sent every request to one replica (decisions by replica: {decided:?})"
    );

    // (b) `send-reaction` allows 30 requests a minute per subject, whichever replica counts
    // them: the 31st and later are 429 with Retry-After. Windows are aligned to the clock; a
    // run that crosses into the next minute starts over with a fresh subject.
    let rate_limit_counts = |label: &'static str| async move {
        let mut counts = Vec::new();
        for (_, at) in replicas {
            counts.push(metric(http, at, "portcullis_rate_limit_counts_total", label).await);
        }
        counts
    };
    let shared_before = rate_limit_counts(r#"counted_by="shared""#).await;
    let upstream_before = upstream.count();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let into_minute = unix_millis_now() % 60_000;
        if into_minute > 55_000 {
            tokio::time::sleep(Duration::from_millis(60_100 - into_minute)).await;
        }
        let window = unix_millis_now() / 60_000;
        let subject = format!("rl.{}.{}", std::process::id(), unix_millis_now());
        let bearer = token(&Claims {
            sub: &subject,
            ..GOOD
        });
        let path = format!("{API}/users/{subject}/reactions");
        let mut statuses = Vec::new();
        let mut refusals = Vec::new();
        for _ in 0..34 {
            let answer = client.call("POST", &path, Some(&bearer), &[]).await;
            statuses.push(answer.status.as_u16());
            if answer.status == StatusCode::TOO_MANY_REQUESTS {
                refusals.push(answer);
            }
        }
        if unix_millis_now() / 60_000 != window && attempts < 3 {
            continue;
        }
        assert_eq!(
            statuses,
            [[200; 30].as_slice(), [429; 4].as_slice()].concat(),
            "30 allowed, then 429, across both replicas"
        );
        for answer in &refusals {
            let retry: u64 = answer
                .header("retry-after")
                .unwrap_or_else(|| panic!("no Retry-After: {}", answer.describe()))
                .parse()
                .expect("Retry-After in seconds");
            assert!((1..=60).contains(&retry), "Retry-After: {retry}");
            let body = answer.json();
            assert_eq!(body["code"], "TOO_MANY_REQUESTS", "{body}");
            assert!(
                detail_codes(&body)
                    .iter()
                    .any(|c| c == "RATE_LIMIT_EXCEEDED"),
                "{body}"
            );
            assert_eq!(body["id"], decision_id(answer), "{body}");
        }
        break;
    }
    assert_eq!(
        upstream.count() - upstream_before,
        30,
        "only allowed answers reached the upstream"
    );
    let shared_after = rate_limit_counts(r#"counted_by="shared""#).await;
    for (i, (name, _)) in replicas.iter().enumerate() {
        assert!(
            shared_after[i] > shared_before[i],
            "replica {name} counted none of the requests in Redis: {shared_before:?} -> {shared_after:?}"
        );
    }
    let fallbacks = rate_limit_counts(r#"counted_by="local_fallback""#).await;
    assert_eq!(fallbacks, [0.0, 0.0], "counts that missed Redis");

    // (c) Redis down: every request is still decided (no 502 from Envoy), with the drops
    // and the local counting in the metrics, and each replica's decisions API answers.
    redis.stop();
    let subject = format!("down.{}.{}", std::process::id(), unix_millis_now());
    let writer = token(&Claims {
        sub: &subject,
        ..GOOD
    });
    let path = format!("{API}/users/{subject}/reactions");
    let mut during = Vec::new();
    for i in 0..8 {
        let answer = if i % 2 == 0 {
            client.call("GET", &leaderboard, Some(&player), &[]).await
        } else {
            client.call("POST", &path, Some(&writer), &[]).await
        };
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "Redis down, request {i}: {}",
            answer.describe()
        );
        during.push(decision_id(&answer));
    }
    assert_eq!(
        rate_limit_counts(r#"counted_by="local_fallback""#)
            .await
            .iter()
            .sum::<f64>(),
        4.0
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut dropped = 0.0;
        for (_, at) in replicas {
            dropped += metric(
                http,
                at,
                "portcullis_shared_trace_records_total",
                r#"result="dropped_unavailable""#,
            )
            .await;
        }
        if dropped > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no dropped shared trace records counted while Redis is down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (name, at) in replicas {
        let listing = replica_listing(http, at, "?limit=100").await;
        assert_eq!(
            listing["sharedStore"], "unavailable",
            "replica {name}: {listing}"
        );
        assert_eq!(
            metric(http, at, "portcullis_shared_store_up", "").await,
            0.0,
            "replica {name}"
        );
    }
    // A replica still finds its own decisions.
    for id in &during {
        let mut found = false;
        for (_, at) in replicas {
            found |= replica_decision(http, at, id).await.is_some();
        }
        assert!(
            found,
            "decision {id}, made while Redis was down, is in no replica"
        );
    }

    // (d) A replica down: Envoy sends every request to the other one (no 502).
    b.proc.kill();
    for i in 0..6 {
        let answer = client.call("GET", &leaderboard, Some(&player), &[]).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "replica B down, request {i}: {}",
            answer.describe()
        );
    }
    drop(gateway);
    drop(a);
}
