//! The recent-decisions page (issue 7): its assets over plain HTTP (content types, CSP,
//! nothing external), and an end-to-end run in a real headless Chromium driven through
//! chromedriver's WebDriver API: rows appear live, a denial is explained, hostile data stays
//! text.
//!
//! Without Chromium and chromedriver the browser test prints `SKIPPED:` and passes, unless
//! `PORTCULLIS_REQUIRE_BROWSER=1` (CI) makes it fail.

mod support;

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::server::Server;

fn server() -> Server {
    Server::start(&support::fixtures().join("policies"), &[])
}

/// Written straight to the process' stderr, so that it shows even when the test harness
/// captures the test's output.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Asks the server for a decision as nginx would; returns the decision id.
async fn decide(server: &Server, method: &str, url: &str, token: Option<&str>) -> String {
    let mut request = reqwest::Client::new()
        .get(server.http_url("/v1/authorize"))
        .timeout(Duration::from_secs(10))
        .header("X-Original-Method", method)
        .header("X-Original-URL", url);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let response = request
        .send()
        .await
        .expect("the server answers /v1/authorize");
    response.headers()["x-decision-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

// ---- plain HTTP ----

/// `src`/`href` values of the page, in order.
fn references(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attr in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(at) = rest.find(attr) {
            rest = &rest[at + attr.len()..];
            let end = rest.find('"').unwrap();
            found.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    found
}

/// Anything in an asset that would make the browser fetch from elsewhere. The SVG namespace
/// is a name, never fetched.
fn external_references(text: &str) -> Vec<String> {
    let text = text.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    let patterns = [
        "http://", "https://", "\"//", "'//", "`//", "(//", "=//", "url(", "@import",
    ];
    patterns
        .iter()
        .filter(|p| text.contains(*p))
        .map(|p| p.to_string())
        .collect()
}

#[tokio::test]
async fn page_and_assets_are_served_embedded_with_types_and_a_strict_csp() {
    let server = server();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    for from in ["/", "/ui"] {
        let response = http.get(server.http_url(from)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT, "{from}");
        assert_eq!(response.headers()["location"], "/ui/", "{from}");
    }

    let page = http.get(server.http_url("/ui/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let csp = headers["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
    ] {
        assert!(csp.contains(directive), "CSP `{csp}` lacks `{directive}`");
    }
    assert!(!csp.contains("unsafe-"), "CSP `{csp}` allows unsafe code");
    let html = page.text().await.unwrap();
    assert!(html.contains("<table id=\"decisions\""));
    assert!(
        !html.contains(" style=\""),
        "inline styles would need 'unsafe-inline'"
    );
    assert!(
        !html.contains("<script>"),
        "inline scripts would need 'unsafe-inline'"
    );

    // A decision's address serves the same page, which then reads its own path.
    let detail = http
        .get(server.http_url("/ui/decisions/01JDAAAAAAAAAAAAAAAAAAAAAA"))
        .send()
        .await
        .unwrap();
    assert_eq!(detail.status(), 200);
    assert_eq!(detail.text().await.unwrap(), html);

    let mut assets = vec![("/ui/".to_owned(), html.clone())];
    for reference in references(&html) {
        if reference.starts_with('#') || reference == "/ui/" {
            continue;
        }
        assert!(
            reference.starts_with("/ui/"),
            "the page references `{reference}`, outside its own assets"
        );
        let response = http.get(server.http_url(&reference)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{reference}");
        let want = match reference.rsplit('.').next().unwrap() {
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "svg" => "image/svg+xml",
            other => panic!("unexpected asset type `{other}` in `{reference}`"),
        };
        assert_eq!(response.headers()["content-type"], want, "{reference}");
        assert_eq!(
            response.headers()["x-content-type-options"],
            "nosniff",
            "{reference}"
        );
        assert_eq!(
            response.headers()["content-security-policy"]
                .to_str()
                .unwrap(),
            csp,
            "{reference}"
        );

        // Revalidation is cheap: the same version answers 304.
        let etag = response.headers()["etag"].clone();
        let again = http
            .get(server.http_url(&reference))
            .header("If-None-Match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{reference}");
        assets.push((reference, response.text().await.unwrap()));
    }
    let names: Vec<&str> = assets.iter().map(|(n, _)| n.as_str()).collect();
    for needed in ["/ui/app.js", "/ui/app.css"] {
        assert!(names.contains(&needed), "the page does not load {needed}");
    }

    for (name, text) in &assets {
        let external = external_references(text);
        assert!(
            external.is_empty(),
            "{name} references something external: {external:?}"
        );
    }
    let script = &assets.iter().find(|(n, _)| n == "/ui/app.js").unwrap().1;
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
    ] {
        assert!(
            !script.contains(sink),
            "app.js uses `{sink}`: decision data must enter the page as text"
        );
    }

    let missing = http
        .get(server.http_url("/ui/missing.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

// ---- the browser ----

fn find_program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const WAIT: Duration = Duration::from_secs(15);

/// A headless Chromium session through chromedriver; both end when it is dropped.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    /// `None` when Chromium or chromedriver is not installed.
    async fn start() -> Option<Browser> {
        let chromium = find_program(
            "PORTCULLIS_CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        )?;
        let chromedriver = find_program("PORTCULLIS_CHROMEDRIVER", &["chromedriver"])?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={}", addr.port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", chromedriver.display()));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            http,
        };
        let started = Instant::now();
        loop {
            let ready = browser
                .http
                .get(format!("http://{addr}/status"))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(
                started.elapsed() < WAIT,
                "chromedriver did not answer on {addr} within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-dev-shm-usage",
                    "--disable-extensions", "--no-first-run", "--window-size=1280,1000",
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
            "timeouts": {"pageLoad": 20_000, "script": 10_000},
        }}});
        let created = browser.command("POST", "/session", capabilities).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {created}"))
            .to_owned();
        Some(browser)
    }

    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = if path == "/session" {
            format!("http://{}/session", self.addr)
        } else {
            format!("http://{}/session/{}{path}", self.addr, self.session)
        };
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "WebDriver {method} {path} failed with {status}: {answer}"
        );
        answer["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url })).await;
    }

    async fn script(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// Evaluates `script` until it returns something truthy; returns that.
    async fn wait_for(&self, what: &str, script: &str, args: Value) -> Value {
        let started = Instant::now();
        loop {
            let value = self.script(script, args.clone()).await;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            if started.elapsed() > WAIT {
                let page = self
                    .script("return document.body.innerText", json!([]))
                    .await;
                panic!(
                    "timed out after {WAIT:?} waiting for {what}; the page shows:\n{}",
                    page.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .command(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element `{css}`: {found}"))
            .to_owned()
    }

    async fn send_keys(&self, element: &str, text: &str) {
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    async fn click(&self, element: &str) {
        self.command("POST", &format!("/element/{element}/click"), json!({}))
            .await;
    }

    async fn path(&self) -> String {
        self.script("return location.pathname + location.search", json!([]))
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn resize(&self, width: u32, height: u32) {
        self.command(
            "POST",
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }

    async fn screenshot(&self, path: &Path) {
        let png = self.command("GET", "/screenshot", Value::Null).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        say(&format!("screenshot: {}", path.display()));
    }

    /// The browser console so far (chromedriver's log extension), as `LEVEL message` lines.
    async fn console(&self) -> Vec<String> {
        let Ok(response) = self
            .http
            .post(format!(
                "http://{}/session/{}/se/log",
                self.addr, self.session
            ))
            .json(&json!({"type": "browser"}))
            .send()
            .await
        else {
            return Vec::new();
        };
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        answer["value"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| format!("{} {}", e["level"], e["message"]))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session closes Chromium; a blocking request works while unwinding too.
        if !self.session.is_empty()
            && let Ok(mut stream) = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
        {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                stream,
                "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.session, self.addr
            );
            let _ = std::io::Read::read(&mut stream, &mut [0; 512]);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn screenshot_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`: keep the pictures beside it, under `ui-test`.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("ui-test")
}

/// The trimmed text of each cell of a decision's row.
async fn row_cells(browser: &Browser, id: &str) -> Value {
    browser
        .script(
            "return [...document.querySelector(`#decision-rows tr[data-id='${arguments[0]}']`).cells]
                .map(c => c.textContent.trim())",
            json!([id]),
        )
        .await
}

const HOSTILE_URL: &str = "https://api.test/app/v1/items/<script>window.__pwned=1</script>\"><img src=x onerror=\"window.__pwned=2\">";
const HOSTILE_SUB: &str = "<img src=x onerror=\"window.__pwned=3\">";

/// A browser, or `None` (said on stderr) when none is installed and none is required.
async fn browser_or_skip() -> Option<Browser> {
    let browser = Browser::start().await;
    if browser.is_none() {
        let message = "chromium or chromedriver is not installed (apt-get install -y chromium chromium-driver)";
        assert!(
            std::env::var("PORTCULLIS_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "PORTCULLIS_REQUIRE_BROWSER=1 but {message}"
        );
        say(&format!(
            "SKIPPED: ui browser test: {message}; set PORTCULLIS_REQUIRE_BROWSER=1 to make this a failure"
        ));
    }
    browser
}

#[tokio::test]
async fn a_decision_page_shows_what_the_upstream_answered_through_the_sideband_api() {
    let Some(browser) = browser_or_skip().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, "ui-test-secret\n").unwrap();
    let server = Server::start(
        &support::fixtures().join("policies"),
        &["--sideband-secret-file", secrets.to_str().unwrap()],
    );
    let http = reqwest::Client::new();
    let token = support::app_token(json!({}));
    let call = |path: &str, body: Value| {
        http.post(server.http_url(path))
            .timeout(Duration::from_secs(10))
            .header("CLIENT-TOKEN", "ui-test-secret")
            .body(body.to_string())
            .send()
    };
    let allowed: Value = call(
        "/sideband/request",
        json!({
            "method": "GET",
            "url": "https://api.test:443/app/v1/items/7",
            "headers": [{"authorization": format!("Bearer {token}")}],
            "source_ip": "10.0.0.7",
            "source_port": "5000",
            "http_version": "1.1",
        }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let id = allowed["state"]["decisionId"].as_str().unwrap().to_owned();
    let answered = call(
        "/sideband/response",
        json!({
            "method": "GET",
            "url": "https://api.test:443/app/v1/items/7",
            "response_code": "502",
            "response_status": "BAD GATEWAY",
            "headers": [],
            "http_version": "1.1",
            "state": allowed["state"],
        }),
    )
    .await
    .unwrap();
    assert_eq!(answered.status(), 200);

    browser
        .goto(&server.http_url(&format!("/ui/decisions/{id}")))
        .await;
    let shown = browser
        .wait_for(
            "the upstream's status in the request section",
            "const terms = [...document.querySelectorAll('#detail-body dt')];
             const term = terms.find(t => t.textContent === 'Upstream answered');
             return term && term.nextElementSibling.textContent;",
            json!([]),
        )
        .await;
    assert_eq!(shown, "502");
}

#[tokio::test]
async fn a_decision_the_shadow_set_decided_differently_is_marked_with_both_traces_side_by_side() {
    let Some(browser) = browser_or_skip().await else {
        return;
    };
    let shadow = support::candidate(&[(
        "    paths: [\"/leaderboard\"]\n",
        "    paths: [\"/leaderboard\"]\n    rules:\n      - description: only players\n        groups: { anyOf: [players] }\n",
    )]);
    let server = Server::start(
        &support::shipped(),
        &["--shadow-policies", shadow.path().to_str().unwrap()],
    );
    let viewer = support::meme_game_token("user.1", &["viewers"]);
    let url = "https://localhost:8443/meme-game/api/v1/leaderboard";
    let differs = decide(&server, "GET", url, Some(&viewer)).await;
    let agrees = decide(&server, "GET", url, None).await;

    browser.goto(&server.http_url("/ui/?shadow=differs")).await;
    let marked = browser
        .wait_for(
            "the decision the shadow set denied, marked in the list",
            "const row = document.querySelector(`#decision-rows tr[data-id='${arguments[0]}']`);
             return row && row.querySelector('.badge-shadow') && row.querySelector('.badge-shadow').textContent;",
            json!([differs]),
        )
        .await;
    assert_eq!(marked, "shadow: deny");
    let listed = browser
        .script(
            "return [...document.querySelectorAll('#decision-rows tr[data-id]')].map(r => r.dataset.id)",
            json!([]),
        )
        .await;
    assert_eq!(
        listed,
        json!([differs]),
        "only the decision that differs is listed"
    );

    browser
        .goto(&server.http_url(&format!("/ui/decisions/{differs}")))
        .await;
    let columns = browser
        .wait_for(
            "the active and the shadow trace side by side",
            "const cols = [...document.querySelectorAll('.shadow-compare .shadow-column')];
             if (cols.length !== 2) return null;
             return cols.map(c => ({
               title: c.querySelector('h3').textContent,
               verdict: c.querySelector('p').textContent,
               rows: c.querySelectorAll('tbody tr').length,
               decisive: [...c.querySelectorAll('tbody tr.decisive .rule-name')].map(e => e.textContent),
             }));",
            json!([]),
        )
        .await;
    assert!(
        columns[0]["title"].as_str().unwrap().starts_with("Active"),
        "{columns}"
    );
    assert!(
        columns[1]["title"].as_str().unwrap().starts_with("Shadow"),
        "{columns}"
    );
    assert!(
        columns[0]["verdict"].as_str().unwrap().contains("200"),
        "{columns}"
    );
    assert!(
        columns[1]["verdict"].as_str().unwrap().contains("403"),
        "{columns}"
    );
    assert_eq!(columns[1]["decisive"], json!(["only players"]), "{columns}");
    assert!(columns[0]["rows"].as_u64().unwrap() >= 3, "{columns}");

    // A decision both sets agree on has no shadow section.
    browser
        .goto(&server.http_url(&format!("/ui/decisions/{agrees}")))
        .await;
    browser
        .wait_for(
            "the page of a decision both sets agree on",
            "return document.querySelector('#pipeline-heading') !== null",
            json!([]),
        )
        .await;
    let shadow_section = browser
        .script(
            "return document.querySelector('#shadow-heading') !== null",
            json!([]),
        )
        .await;
    assert_eq!(shadow_section, json!(false));
}

#[tokio::test]
async fn operator_sees_decisions_live_and_why_one_was_denied_in_a_real_browser() {
    let Some(browser) = browser_or_skip().await else {
        return;
    };
    let server = server();
    let shots = screenshot_dir();

    let allowed = decide(
        &server,
        "GET",
        "https://api.test/app/v1/items/7",
        Some(&support::app_token(json!({}))),
    )
    .await;
    let viewer = support::app_token(json!({"groups": ["viewers"], "scope": "items:write"}));
    let denied = decide(
        &server,
        "PUT",
        "https://api.test/app/v1/items/7",
        Some(&viewer),
    )
    .await;
    let hostile = decide(
        &server,
        "GET",
        HOSTILE_URL,
        Some(&support::app_token(json!({ "sub": HOSTILE_SUB }))),
    )
    .await;

    // `/` leads to the list; every decision is a row, newest first.
    browser.goto(&server.http_url("/")).await;
    let row_ids = browser
        .wait_for(
            "the three decisions as rows",
            "const ids = [...document.querySelectorAll('#decision-rows tr')].map(r => r.dataset.id);
             return [...arguments].every(id => ids.includes(id)) && ids;",
            json!([allowed, denied, hostile]),
        )
        .await;
    assert_eq!(browser.path().await, "/ui/");
    assert_eq!(row_ids, json!([hostile, denied, allowed]), "newest first");
    let row = row_cells(&browser, &denied).await;
    assert_eq!(row[1], "PUT");
    assert_eq!(row[2], "https://api.test/app/v1/items/7");
    assert_eq!(row[3], "app");
    assert_eq!(row[4], "write-item");
    assert!(row[5].as_str().unwrap().ends_with("deny"), "{row}");
    assert_eq!(row[6], "403");
    assert_eq!(row[7], "user.1");
    assert!(row[8].as_str().unwrap().ends_with("s"), "a duration: {row}");
    let row = row_cells(&browser, &allowed).await;
    assert!(row[5].as_str().unwrap().ends_with("allow"), "{row}");
    assert_eq!(row[6], "200");

    // Attacker-controlled URL and claims show as text; nothing of them runs or renders.
    let row = row_cells(&browser, &hostile).await;
    assert_eq!(row[2], HOSTILE_URL);
    assert_eq!(row[7], HOSTILE_SUB);
    let injected = browser
        .script(
            "return [document.querySelectorAll('main script, main img').length, window.__pwned ?? null]",
            json!([]),
        )
        .await;
    assert_eq!(injected, json!([0, null]), "hostile data became markup");

    // Keyboard: the arrow keys move between rows.
    let first = browser.element("#decision-rows tr").await;
    browser.send_keys(&first, "\u{E015}").await; // ArrowDown
    let focused = browser
        .script("return document.activeElement.dataset.id", json!([]))
        .await;
    assert_eq!(focused, json!(denied), "ArrowDown focuses the next row");

    // The free-text filter narrows the list, and the address keeps the filter.
    let search = browser.element("#f-q").await;
    browser.send_keys(&search, &denied).await;
    // A prefix of the id may already leave one row: wait for the whole id in the address too.
    browser
        .wait_for(
            "only the denied row, for the whole id",
            "const ids = [...document.querySelectorAll('#decision-rows tr')].map(r => r.dataset.id);
             return ids.length === 1 && ids[0] === arguments[0]
                 && location.search === '?q=' + arguments[0];",
            json!([denied]),
        )
        .await;
    assert_eq!(browser.path().await, format!("/ui/?q={denied}"));

    // A filter the API refuses is marked, with the API's reason.
    let status = browser.element("#f-status").await;
    browser.send_keys(&status, "4x").await;
    let reason = browser
        .wait_for(
            "the refused status filter",
            "return document.querySelector('#f-status[aria-invalid=true]') !== null
                && document.querySelector('#list-message').textContent;",
            json!([]),
        )
        .await;
    assert!(reason.as_str().unwrap().contains("`status`"), "{reason}");

    let clear = browser.element("#f-clear").await;
    browser.click(&clear).await;
    browser
        .wait_for(
            "every row back",
            "return document.querySelectorAll('#decision-rows tr').length === 3",
            json!([]),
        )
        .await;

    // Enter on the denied row opens its detail at its own address.
    let row = browser
        .element(&format!("#decision-rows tr[data-id='{denied}']"))
        .await;
    browser.send_keys(&row, "\u{E007}").await; // Enter
    browser
        .wait_for(
            "the decisive rule",
            "return document.querySelector('#detail-body tr.decisive') !== null",
            json!([]),
        )
        .await;
    assert_eq!(browser.path().await, format!("/ui/decisions/{denied}"));
    let explained = browser
        .script(
            "const row = document.querySelector('#detail-body tr.decisive');
             const why = document.querySelector('#detail-body .failure');
             return {
               heading: document.querySelector('#detail-heading').textContent,
               rule: row.querySelector('.rule-name').textContent,
               expected: row.querySelector('.expected').textContent,
               actual: row.querySelector('.actual').textContent,
               result: row.querySelector('.result').textContent,
               whyRule: why.querySelector('.rule-name').textContent,
               whyExpected: why.querySelector('.expected').textContent,
               whyActual: why.querySelector('.actual').textContent,
               decisiveRows: document.querySelectorAll('#detail-body tr.decisive').length,
               text: document.querySelector('#detail-body').textContent,
             };",
            json!([]),
        )
        .await;
    assert_eq!(explained["rule"], "editors only");
    assert_eq!(explained["expected"], r#"["editors","admins"]"#);
    assert_eq!(explained["actual"], r#"["viewers"]"#);
    assert!(
        explained["result"].as_str().unwrap().contains("fail"),
        "{explained}"
    );
    assert_eq!(explained["whyRule"], "editors only");
    assert_eq!(explained["whyExpected"], r#"["editors","admins"]"#);
    assert_eq!(explained["whyActual"], r#"["viewers"]"#);
    assert_eq!(explained["decisiveRows"], 1);
    assert!(
        explained["heading"].as_str().unwrap().contains("403"),
        "{explained}"
    );
    let text = explained["text"].as_str().unwrap();
    for shown in [
        "Base URL match",
        "Token checks",
        "Operation match",
        "Access rules",
        "GROUP_REQUIRED",      // the body returned
        "x-decision-id",       // the headers returned
        "https://issuer.test", // the token summary
        "Policy revision",
        "app.yaml:", // where the rule is written
    ] {
        assert!(text.contains(shown), "the detail lacks `{shown}`:\n{text}");
    }
    browser.resize(1280, 1900).await;
    browser.screenshot(&shots.join("decision-denied.png")).await;
    browser.resize(1280, 1000).await;

    // Escape goes back to the list, where a new decision appears without a reload.
    let heading = browser.element("#detail-heading").await;
    browser.send_keys(&heading, "\u{E00C}").await; // Escape
    browser
        .wait_for(
            "the list again",
            "return !document.querySelector('#list-view').hidden && location.pathname === '/ui/'",
            json!([]),
        )
        .await;
    browser
        .script("window.__sameDocument = 'yes'", json!([]))
        .await;
    let third = decide(
        &server,
        "DELETE",
        "https://api.test/app/v1/items/8",
        Some(&support::app_token(
            json!({"groups": ["admins"], "scope": "items:write"}),
        )),
    )
    .await;
    browser
        .wait_for(
            "the third decision on top of the list",
            "const row = document.querySelector('#decision-rows tr');
             return row !== null && row.dataset.id === arguments[0];",
            json!([third]),
        )
        .await;
    assert_eq!(
        browser
            .script("return window.__sameDocument ?? null", json!([]))
            .await,
        "yes",
        "the page reloaded instead of updating"
    );
    browser.screenshot(&shots.join("decisions.png")).await;

    // A pasted detail address works on its own; hostile data stays text there too.
    browser
        .goto(&server.http_url(&format!("/ui/decisions/{hostile}")))
        .await;
    let url_text = browser
        .wait_for(
            "the hostile decision's URL",
            "const url = document.querySelector('#detail-body .url-full');
             return url && url.textContent;",
            json!([]),
        )
        .await;
    assert_eq!(url_text, HOSTILE_URL);
    let injected = browser
        .script(
            "return [document.querySelectorAll('main script, main img').length, window.__pwned ?? null,
                     document.querySelector('#detail-body').textContent.includes(arguments[0])]",
            json!([HOSTILE_SUB]),
        )
        .await;
    assert_eq!(
        injected,
        json!([0, null, true]),
        "hostile data became markup"
    );

    // An unknown (or evicted) id says so.
    browser
        .goto(&server.http_url("/ui/decisions/01JDNOSUCHDECISION000000000"))
        .await;
    let notice = browser
        .wait_for(
            "the not-found notice",
            "const n = document.querySelector('#detail-body [role=alert]'); return n && n.textContent;",
            json!([]),
        )
        .await;
    assert!(
        notice
            .as_str()
            .unwrap()
            .contains("Not found (unknown or evicted)"),
        "{notice}"
    );

    // Narrow screens: no sideways scrolling, in the list and in a detail.
    browser.resize(390, 900).await;
    for (path, shot) in [
        ("/ui/".to_owned(), "decisions-narrow.png"),
        (
            format!("/ui/decisions/{denied}"),
            "decision-denied-narrow.png",
        ),
    ] {
        browser.goto(&server.http_url(&path)).await;
        browser
            .wait_for(
                "the content",
                "return document.querySelector('#decision-rows tr, #detail-body tr.decisive') !== null",
                json!([]),
            )
            .await;
        let widths = browser
            .script(
                "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]",
                json!([]),
            )
            .await;
        assert!(
            widths[0].as_i64() <= widths[1].as_i64(),
            "{path} scrolls sideways at 390 px: {widths}"
        );
        browser.screenshot(&shots.join(shot)).await;
    }

    // No script error, CSP or Trusted Types violation on the way: the only console errors are
    // the refused filter's 400 and the unknown id's 404.
    let console = browser.console().await;
    let errors: Vec<&String> = console
        .iter()
        .filter(|l| {
            l.contains("SEVERE") && !l.contains("01JDNOSUCHDECISION") && !l.contains("status=4x")
        })
        .collect();
    assert!(errors.is_empty(), "console errors:\n{console:#?}");
}

/// Asks the server for a decision as nginx would, in the trace `traceparent`; returns the id.
async fn decide_in_trace(server: &Server, url: &str, traceparent: &str) -> String {
    let response = reqwest::Client::new()
        .get(server.http_url("/v1/authorize"))
        .timeout(Duration::from_secs(10))
        .header("X-Original-Method", "GET")
        .header("X-Original-URL", url)
        .header("traceparent", traceparent)
        .send()
        .await
        .expect("the server answers /v1/authorize");
    response.headers()["x-decision-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_overview_charts_the_decisions_just_made_and_leads_to_the_filtered_list() {
    let Some(browser) = browser_or_skip().await else {
        return;
    };
    let server = Server::start(
        &support::fixtures().join("policies"),
        &["--trace-ui-url", "https://jaeger.example/trace/{traceId}"],
    );
    let token = support::app_token(json!({}));
    let viewer = support::app_token(json!({"groups": ["viewers"], "scope": "items:write"}));
    for _ in 0..3 {
        decide(
            &server,
            "GET",
            "https://api.test/app/v1/items/7",
            Some(&token),
        )
        .await;
    }
    for _ in 0..3 {
        decide(
            &server,
            "PUT",
            "https://api.test/app/v1/items/7",
            Some(&viewer),
        )
        .await;
    }
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traced = decide_in_trace(
        &server,
        "https://api.test/app/v1/items/7",
        &format!("00-{trace}-00f067aa0ba902b7-01"),
    )
    .await;
    // The rule that decided the PUT denials, as the decisions API says.
    let listing: Value =
        serde_json::from_str(&server.get_text("/v1/decisions?status=403&limit=1").await).unwrap();
    let rule = listing["decisions"][0]["trace"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["decisive"] == true)
        .and_then(|e| e["rule"].as_str())
        .expect("a decisive rule")
        .to_owned();

    browser.goto(&server.http_url("/ui/")).await;
    let totals = browser
        .wait_for(
            "the chart with the decisions just made",
            "const s = document.getElementById('rate-svg');
             const sum = (o) => [...s.querySelectorAll('rect[data-outcome=' + o + ']')]
               .reduce((n, r) => n + Number(r.dataset.count), 0);
             return sum('allow') + sum('deny') >= 7 && [sum('allow'), sum('deny')];",
            json!([]),
        )
        .await;
    assert_eq!(
        totals,
        json!([3, 4]),
        "3 allowed, 3 forbidden and 1 without a token"
    );
    let top = browser
        .script(
            "return [...document.querySelectorAll('#top-rules li')].map(li => [li.querySelector('a').textContent, li.dataset.count]);",
            json!([]),
        )
        .await;
    assert_eq!(top[0], json!([rule, "3"]), "{top}");
    let services = browser
        .script(
            "return [...document.querySelectorAll('#top-services li')].map(li => [li.querySelector('a').textContent, li.dataset.count]);",
            json!([]),
        )
        .await;
    assert_eq!(services[0], json!(["app", "4"]), "{services}");
    let latency = browser
        .script(
            "return [...document.querySelectorAll('#latency-svg rect')].reduce((n, r) => n + Number(r.dataset.count), 0);",
            json!([]),
        )
        .await;
    assert_eq!(latency, json!(7));
    browser
        .screenshot(&screenshot_dir().join("overview.png"))
        .await;

    // A deny bar leads to the denials from its second on.
    let bar = browser
        .element("#rate-svg a:has(rect[data-outcome=deny])")
        .await;
    browser.click(&bar).await;
    let path = browser.path().await;
    assert!(path.starts_with("/ui/?outcome=deny&since="), "{path}");
    let outcomes = browser
        .wait_for(
            "the denials listed",
            "const rows = [...document.querySelectorAll('#decision-rows tr')];
             return rows.length > 0 && document.getElementById('f-outcome').value === 'deny'
               && rows.map(r => r.querySelector('td:nth-child(6)').textContent);",
            json!([]),
        )
        .await;
    for outcome in outcomes.as_array().unwrap() {
        assert!(outcome.as_str().unwrap().ends_with("deny"), "{outcomes}");
    }

    // The decision in a trace shows its trace id, linked to the trace UI.
    browser
        .goto(&server.http_url(&format!("/ui/decisions/{traced}")))
        .await;
    let link = browser
        .wait_for(
            "the trace link",
            "const a = document.querySelector('a.trace-link');
             return a && [a.getAttribute('href'), a.textContent];",
            json!([]),
        )
        .await;
    assert_eq!(
        link,
        json!([format!("https://jaeger.example/trace/{trace}"), trace])
    );
}
