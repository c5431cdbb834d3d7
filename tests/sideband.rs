//! The Sideband API as the PingOne Authorize gateway integration kits call it: the real
//! server, a keep-alive HTTP/1.1 client, and the JSON a kit sends (headers as an array of
//! one-member objects in any case, repeated headers, the port always in the URL, `source_port`
//! as a string, `http_version` "1.1", a body or none).

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::server::Server;

const SECRET: &str = "kit-secret-0123456789";

/// The secret file of a test, and the server using it.
struct Sideband {
    dir: tempfile::TempDir,
    server: Server,
    http: reqwest::Client,
}

fn secret_file(dir: &Path, secrets: &str) -> std::path::PathBuf {
    let file = dir.join("sideband.secrets");
    std::fs::write(&file, secrets).unwrap();
    file
}

fn start_on(policies: &Path, extra: &[&str]) -> Sideband {
    let dir = tempfile::tempdir().unwrap();
    let file = secret_file(dir.path(), &format!("{SECRET}\n"));
    let mut args = vec![
        "--jwks-start-timeout",
        "0s",
        "--sideband-secret-file",
        file.to_str().unwrap(),
    ];
    args.extend(extra);
    Sideband {
        server: Server::start(policies, &args),
        dir,
        http: kit_client(),
    }
}

fn start(extra: &[&str]) -> Sideband {
    start_on(&support::fixtures().join("policies"), extra)
}

/// One connection reused for every call, as the kits keep theirs alive.
fn kit_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {}", self.text))
    }
}

impl Sideband {
    async fn call_with(&self, path: &str, body: String, secret: Option<(&str, &str)>) -> Answer {
        let mut request = self
            .http
            .post(self.server.http_url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some((name, value)) = secret {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            text: response.text().await.unwrap(),
        }
    }

    async fn call(&self, path: &str, body: &str) -> Answer {
        self.call_with(path, body.to_owned(), Some(("CLIENT-TOKEN", SECRET)))
            .await
    }

    async fn access(&self, request: &Value) -> Answer {
        self.call("/sideband/request", &request.to_string()).await
    }

    async fn decision(&self, id: &str) -> Value {
        let text = self.server.get_text(&format!("/v1/decisions/{id}")).await;
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("decision {id}: {text}"))
    }

    async fn decision_count(&self) -> usize {
        let text = self.server.get_text("/v1/decisions?limit=1000").await;
        let list: Value = serde_json::from_str(&text).unwrap();
        list["decisions"].as_array().unwrap().len()
    }
}

/// What the Kong kit sends for `method url` with these headers (names as given).
fn kit_request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Value {
    let mut request = json!({
        "source_ip": "10.0.0.7",
        "source_port": "51234",
        "method": method,
        "url": url,
        "headers": headers.iter().map(|(n, v)| json!({ *n: *v })).collect::<Vec<_>>(),
        "http_version": "1.1",
    });
    if let Some(body) = body {
        request["body"] = json!(body);
    }
    request
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The one-member objects of a `headers` array as (name, value) pairs.
fn pairs(headers: &Value) -> Vec<(String, String)> {
    headers
        .as_array()
        .unwrap_or_else(|| panic!("headers are an array: {headers}"))
        .iter()
        .map(|entry| {
            let object = entry.as_object().unwrap();
            assert_eq!(object.len(), 1, "one member per header: {entry}");
            let (name, value) = object.iter().next().unwrap();
            (name.clone(), value.as_str().unwrap().to_owned())
        })
        .collect()
}

fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn an_allow_echoes_the_request_with_spoofed_identity_headers_replaced() {
    let kit = start(&[]);
    let token = support::app_token(json!({"tenant": "acme"}));
    let auth = bearer(&token);
    let sent_headers = [
        ("host", "api.test"),
        ("Authorization", auth.as_str()),
        ("X-User-Id", "admin"),
        ("accept", "text/html"),
        ("x-user-id", "root"),
        ("Accept", "application/json"),
        ("X-Decision-Id", "forged"),
        ("user-agent", "curl/8.5"),
    ];
    for body in [None, Some("{\"answer\": 42}")] {
        let sent = kit_request(
            "GET",
            "https://api.test:443/app/v1/items/7?q=1",
            &sent_headers,
            body,
        );
        let answer = kit.access(&sent).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(answer.headers["content-type"], "application/json");
        let echo = answer.json();
        assert!(
            echo.get("response").is_none(),
            "an allow has no response: {echo}"
        );

        // Every member the kit sent comes back unchanged, except headers; state is added.
        let echoed = echo.as_object().unwrap();
        for (name, value) in sent.as_object().unwrap() {
            if name != "headers" {
                assert_eq!(&echoed[name], value, "member {name}");
            }
        }
        let extra: Vec<&String> = echoed
            .keys()
            .filter(|k| !sent.as_object().unwrap().contains_key(*k))
            .collect();
        assert_eq!(extra, ["state"], "only state is added");
        assert_eq!(echoed.contains_key("body"), body.is_some());

        let id = echo["state"]["decisionId"].as_str().unwrap().to_owned();
        assert_eq!(
            pairs(&echo["headers"]),
            owned(&[
                ("host", "api.test"),
                ("Authorization", auth.as_str()),
                ("accept", "text/html"),
                ("Accept", "application/json"),
                ("user-agent", "curl/8.5"),
                ("x-user-id", "user.1"),
                ("x-tenant", "tenant-acme"),
                ("x-decision-id", id.as_str()),
            ])
        );

        // Recorded like any decision, with the kit's source_ip as the client.
        let stored = kit.decision(&id).await;
        assert_eq!(stored["outcome"], "allow");
        assert_eq!(stored["request"]["client"], "10.0.0.7");
        assert_eq!(
            stored["request"]["url"],
            "https://api.test:443/app/v1/items/7?q=1"
        );
        assert!(
            !stored.to_string().contains(&token),
            "no token in the record"
        );
        kit.server
            .wait_for_log(&format!("\"decision_id\":\"{id}\""))
            .await;
    }
    let log = kit.server.log();
    let audit = log
        .lines()
        .find(|l| l.contains("portcullis::audit"))
        .unwrap();
    assert!(audit.contains("\"transport\":\"sideband\""), "{audit}");
    assert!(
        !log.contains(&token) && !log.contains(SECRET),
        "no token or secret logged"
    );
}

#[tokio::test]
async fn members_are_echoed_byte_for_byte_as_sent() {
    let kit = start(&[]);
    let token = support::app_token(json!({}));
    // Escapes, a number port, an unknown member and a client certificate, in the kit's order.
    let sent = format!(
        concat!(
            r#"{{"source_ip":"10.0.0.7","source_port":51234,"method":"GET","#,
            r#""url":"https://api.test:443/app/v1/items/7?name=caf%C3%A9","#,
            r#""headers":[{{"Authorization":"Bearer {}"}},{{"X-Note":"caf\u00e9 \"quoted\""}}],"#,
            r#""http_version":"1.1","body":"line\nnext \u2028","#,
            r#""client_certificate":{{"kty":"EC","x5c":["MIIB"]}},"future_member":[1,2.50,null]}}"#
        ),
        token
    );
    let answer = kit.call("/sideband/request", &sent).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    for fragment in [
        r#""source_port":51234"#,
        r#""url":"https://api.test:443/app/v1/items/7?name=caf%C3%A9""#,
        r#"{"X-Note":"caf\u00e9 \"quoted\""}"#,
        r#""body":"line\nnext \u2028""#,
        r#""client_certificate":{"kty":"EC","x5c":["MIIB"]}"#,
        r#""future_member":[1,2.50,null]"#,
    ] {
        assert!(
            answer.text.contains(fragment),
            "{fragment} in {}",
            answer.text
        );
    }
}

/// Each denial reaches the client through the kit with the status, headers and body of the
/// decision, exactly as Envoy's ext_authz would return them.
#[tokio::test]
async fn each_denial_is_a_response_member_with_the_decisions_status_headers_and_body() {
    let kit = start(&[]);
    let good = support::app_token(json!({"scope": "items:read"}));
    let expired = support::app_token(json!({"exp": support::unix_now() - 3600}));
    // (method, URL, token, status the client gets, its reason phrase, detail code)
    type Case<'a> = (&'a str, &'a str, Option<String>, u16, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "GET",
            "https://api.test:443/app/v1/items/7",
            None,
            401,
            "UNAUTHORIZED",
            "REQUIRED_VALUE",
        ),
        (
            "GET",
            "https://api.test:443/app/v1/items/7",
            Some(expired),
            401,
            "UNAUTHORIZED",
            "TOKEN_EXPIRED",
        ),
        (
            "PUT",
            "https://api.test:443/app/v1/items/7",
            Some(good.clone()),
            403,
            "FORBIDDEN",
            "GROUP_REQUIRED",
        ),
        (
            "POST",
            "https://api.test:443/app/v1/items/7",
            Some(good.clone()),
            405,
            "METHOD NOT ALLOWED",
            "METHOD_NOT_ALLOWED",
        ),
        (
            "GET",
            "https://api.test:443/app/v2/items/7",
            Some(good.clone()),
            404,
            "NOT FOUND",
            "NO_MATCHING_SERVICE",
        ),
        (
            "GET",
            "https://api.test:443/app/v1/items/%2e%2e%5cx",
            Some(good.clone()),
            400,
            "BAD REQUEST",
            "AMBIGUOUS_PATH",
        ),
        (
            "GET",
            "https://api.test:443/app/v1/quota",
            Some(good.clone()),
            200,
            "",
            "",
        ),
        (
            "GET",
            "https://api.test:443/app/v1/quota",
            Some(good.clone()),
            200,
            "",
            "",
        ),
        (
            "GET",
            "https://api.test:443/app/v1/quota",
            Some(good),
            429,
            "TOO MANY REQUESTS",
            "RATE_LIMIT_EXCEEDED",
        ),
    ];
    for (method, url, token, status, status_text, detail) in cases {
        let auth = token.as_deref().map(bearer);
        let mut headers = vec![("host", "api.test"), ("accept", "*/*")];
        if let Some(auth) = &auth {
            headers.push(("authorization", auth));
        }
        let answer = kit.access(&kit_request(method, url, &headers, None)).await;
        assert_eq!(answer.status, 200, "{method} {url}: {}", answer.text);
        let body = answer.json();
        if status == 200 {
            assert!(body.get("response").is_none(), "{method} {url} allowed");
            continue;
        }
        let response = &body["response"];
        assert_eq!(
            response["response_code"],
            status.to_string(),
            "{method} {url}"
        );
        assert_eq!(response["response_status"], status_text, "{method} {url}");
        assert_eq!(response["http_version"], "1.1");
        let client_body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
        assert_eq!(client_body["details"][0]["code"], detail, "{method} {url}");
        let id = client_body["id"].as_str().unwrap();

        // The same status, headers and body as the decision the other interfaces return.
        let stored = kit.decision(id).await;
        assert_eq!(stored["status"], status);
        let stored_headers: Vec<(String, String)> = stored["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        let sent_headers = pairs(&response["headers"]);
        // (The decision's JSON object lost its order: compare as sets.)
        let mut sorted = sent_headers.clone();
        sorted.sort();
        assert_eq!(sorted, stored_headers, "{method} {url}");
        assert!(sent_headers.contains(&("content-type".into(), "application/json".into())));
        assert!(sent_headers.contains(&("x-decision-id".into(), id.to_owned())));
        assert_eq!(client_body, stored["body"], "{method} {url}");
        match status {
            401 => assert!(sent_headers.iter().any(|(n, _)| n == "www-authenticate")),
            405 => assert!(
                sent_headers.contains(&("allow".into(), "DELETE, GET, PUT".into())),
                "{sent_headers:?}"
            ),
            429 => assert!(sent_headers.iter().any(|(n, _)| n == "retry-after")),
            _ => {}
        }
    }
}

#[tokio::test]
async fn default_ports_match_base_urls_written_without_them_and_the_other_way_round() {
    // A base URL written with its default port, beside the fixtures' ones written without.
    let dir = tempfile::tempdir().unwrap();
    let keys = support::fixtures().join("policies/keys/app.jwks.json");
    std::fs::write(
        dir.path().join("ported.yaml"),
        format!(
            "service: ported\nbaseUrls: [\"https://ported.test:443/api\", \"http://legacy.test:8080/app\"]\n\
             token:\n  issuer: https://issuer.test\n  audiences: [app]\n  algorithms: [RS256, ES256, ES384, EdDSA]\n  jwks: {{ file: {} }}\n\
             operations:\n  - name: anything\n    methods: [GET]\n    paths: [\"/**\"]\n",
            keys.display()
        ),
    )
    .unwrap();
    let kit = start_on(dir.path(), &[]);
    let auth = bearer(&support::app_token(json!({})));
    for (url, allowed) in [
        ("https://ported.test:443/api/x", true),
        ("https://ported.test/api/x", true),
        ("https://PORTED.test:443/api/x", true),
        ("https://ported.test:8443/api/x", false),
        ("http://ported.test:80/api/x", false),
        ("http://legacy.test:8080/app/x", true),
        ("http://legacy.test:80/app/x", false),
        ("http://legacy.test/app/x", false),
    ] {
        let answer = kit
            .access(&kit_request("GET", url, &[("authorization", &auth)], None))
            .await;
        assert_eq!(answer.status, 200, "{url}: {}", answer.text);
        let body = answer.json();
        if allowed {
            assert!(body.get("response").is_none(), "{url} allowed: {body}");
        } else {
            assert_eq!(body["response"]["response_code"], "404", "{url}");
        }
    }
}

#[tokio::test]
async fn source_ip_is_the_client_address_that_client_address_rules_read() {
    let kit = start(&[]);
    let auth = bearer(&support::app_token(json!({"amr": ["mfa"]})));
    for (ip, code) in [
        ("10.1.2.3", None),
        ("2001:db8::7", None),
        ("192.0.2.1", Some("403")),
    ] {
        let mut request = kit_request(
            "POST",
            "https://api.test:443/app/v1/admin/reindex",
            &[("authorization", &auth)],
            Some(""),
        );
        request["source_ip"] = json!(ip);
        let body = kit.access(&request).await.json();
        assert_eq!(
            body["response"]["response_code"].as_str(),
            code,
            "{ip}: {body}"
        );
        if code.is_some() {
            let client: Value =
                serde_json::from_str(body["response"]["body"].as_str().unwrap()).unwrap();
            assert_eq!(client["details"][0]["code"], "CLIENT_ADDRESS_NOT_ALLOWED");
        }
    }
}

#[tokio::test]
async fn secrets_are_required_checked_and_rotated_without_a_restart() {
    let kit = start(&[]);
    let request = kit_request("GET", "https://api.test:443/app/v1/items/7", &[], None).to_string();
    let before = kit.decision_count().await;
    for (secret, code) in [
        (None, "SECRET_REQUIRED"),
        (Some(("CLIENT-TOKEN", "")), "SECRET_REQUIRED"),
        (
            Some(("CLIENT-TOKEN", "kit-secret-012345678")),
            "SECRET_INVALID",
        ),
        (Some(("PDG-TOKEN", SECRET)), "SECRET_REQUIRED"),
    ] {
        for path in ["/sideband/request", "/sideband/response"] {
            let answer = kit.call_with(path, request.clone(), secret).await;
            assert_eq!(answer.status, 401, "{path} {secret:?}");
            let body = answer.json();
            assert_eq!(body["code"], "UNAUTHORIZED");
            assert_eq!(body["details"][0]["code"], code, "{secret:?}");
            assert_eq!(body["target"], "client-token");
            assert!(!answer.text.contains(SECRET));
        }
    }
    // Refused calls are counted, never recorded.
    assert_eq!(kit.decision_count().await, before);
    let metrics = kit.server.get_text("/metrics").await;
    assert!(
        metrics.contains(
            r#"portcullis_requests_refused_total{transport="http",reason="SECRET_INVALID"} 2"#
        ),
        "{metrics}"
    );

    // Rotation: add the new secret, move the kit over, remove the old one.
    let call = |secret: &'static str| {
        let request = request.clone();
        let kit = &kit;
        async move {
            kit.call_with("/sideband/request", request, Some(("client-token", secret)))
                .await
                .status
        }
    };
    assert_eq!(call(SECRET).await, 200);
    assert_eq!(call("kit-secret-next").await, 401);
    secret_file(kit.dir.path(), &format!("{SECRET}\nkit-secret-next\n"));
    wait_until(|| async { call("kit-secret-next").await == 200 }).await;
    assert_eq!(call(SECRET).await, 200);
    secret_file(kit.dir.path(), "  kit-secret-next  \n\n");
    wait_until(|| async { call(SECRET).await == 401 }).await;
    assert_eq!(call("kit-secret-next").await, 200);
    // A file emptied by mistake keeps the last secrets.
    secret_file(kit.dir.path(), "\n");
    kit.server
        .wait_for_log("sideband secret file not used")
        .await;
    assert_eq!(call("kit-secret-next").await, 200);

    let log = kit.server.log();
    assert!(
        !log.contains(SECRET) && !log.contains("kit-secret-next"),
        "{log}"
    );
    let metrics = kit.server.get_text("/metrics").await;
    assert!(!metrics.contains(SECRET));
}

async fn wait_until<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within 10 s");
}

#[tokio::test]
async fn another_secret_header_can_be_configured_and_no_secret_file_turns_the_api_off() {
    let kit = start(&["--sideband-secret-header", "PDG-TOKEN"]);
    let request = kit_request("GET", "https://api.test:443/app/v1/items/7", &[], None).to_string();
    let answer = kit
        .call_with(
            "/sideband/request",
            request.clone(),
            Some(("pdg-token", SECRET)),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(kit.call("/sideband/request", &request).await.status, 401);

    let off = Server::start(
        &support::fixtures().join("policies"),
        &["--jwks-start-timeout", "0s"],
    );
    for path in ["/sideband/request", "/sideband/response"] {
        let response = kit_client()
            .post(off.http_url(path))
            .header("CLIENT-TOKEN", SECRET)
            .body(request.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["details"][0]["code"], "SIDEBAND_DISABLED");
    }
    // A missing secret file stops the server with a clear error, never an open API.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--policies"])
        .arg(support::fixtures().join("policies"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--sideband-secret-file", "/nonexistent/sideband.secrets"])
        .output()
        .unwrap();
    assert!(!status.status.success());
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(stderr.contains("sideband secret file"), "{stderr}");
}

/// Bad input is the seed's 502 case: the kit gets a 400 naming the field and logs its
/// message and id, and the operator finds the same in recent decisions.
#[tokio::test]
async fn bad_input_is_a_400_naming_the_field_and_is_recorded() {
    let kit = start(&[]);
    let good = |change: &dyn Fn(&mut Value)| {
        let mut request = kit_request(
            "GET",
            "https://api.test:443/app/v1/items/7",
            &[("accept", "*/*")],
            None,
        );
        change(&mut request);
        request.to_string()
    };
    let cases: Vec<(String, &str, &str)> = vec![
        ("{\"method\": \"GET\",".into(), "MALFORMED_JSON", "body"),
        ("[1, 2]".into(), "MALFORMED_JSON", "body"),
        (
            r#"{"method":"GET","method":"POST","url":"https://api.test:443/","headers":[]}"#.into(),
            "MALFORMED_JSON",
            "body",
        ),
        (
            good(&|r| drop(r.as_object_mut().unwrap().remove("method"))),
            "REQUIRED_VALUE",
            "method",
        ),
        (
            good(&|r| drop(r.as_object_mut().unwrap().remove("url"))),
            "REQUIRED_VALUE",
            "url",
        ),
        (
            good(&|r| drop(r.as_object_mut().unwrap().remove("headers"))),
            "REQUIRED_VALUE",
            "headers",
        ),
        (good(&|r| r["url"] = json!(443)), "INVALID_VALUE", "url"),
        (
            good(&|r| r["method"] = json!(["GET"])),
            "INVALID_VALUE",
            "method",
        ),
        (
            good(&|r| r["headers"] = json!({"accept": "*/*"})),
            "INVALID_VALUE",
            "headers",
        ),
        (
            good(&|r| r["headers"] = json!([{"accept": "*/*"}, {"a": "1", "b": "2"}])),
            "INVALID_VALUE",
            "headers[1]",
        ),
        (
            good(&|r| r["headers"] = json!([{"accept": 1}])),
            "INVALID_VALUE",
            "headers[0]",
        ),
        (
            good(&|r| r["source_port"] = json!("http")),
            "INVALID_VALUE",
            "source_port",
        ),
        (
            good(&|r| r["source_ip"] = json!("not-an-ip")),
            "INVALID_VALUE",
            "source_ip",
        ),
        (
            good(&|r| r["body"] = json!({"a": 1})),
            "INVALID_VALUE",
            "body",
        ),
        (
            good(&|r| r["url"] = json!("/app/v1/items/7")),
            "INVALID_URL",
            "url",
        ),
        (
            good(&|r| r["url"] = json!("ftp://api.test:21/app/v1/items/7")),
            "INVALID_URL",
            "url",
        ),
        (
            good(&|r| r["url"] = json!("https://")),
            "INVALID_URL",
            "url",
        ),
    ];
    for (body, code, target) in cases {
        let answer = kit.call("/sideband/request", &body).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.text);
        let error = answer.json();
        assert_eq!(error["code"], "INVALID_REQUEST", "{body}");
        assert_eq!(error["details"][0]["code"], code, "{body}: {error}");
        assert_eq!(error["target"], target, "{body}: {error}");
        assert_eq!(error["details"][0]["target"], target, "{body}");
        let id = error["id"].as_str().unwrap();
        assert_eq!(answer.headers["x-decision-id"], id);
        // The operator finds it among recent decisions: a 400 deny with the reason.
        let stored = kit.decision(id).await;
        assert_eq!(stored["outcome"], "deny");
        assert_eq!(stored["status"], 400);
        assert_eq!(stored["body"], error, "{body}");
    }
    // The response phase's bad input too.
    for (body, code, target) in [
        (r#"{"headers":[]}"#, "REQUIRED_VALUE", "response_code"),
        (
            r#"{"response_code":"OK","headers":[]}"#,
            "INVALID_VALUE",
            "response_code",
        ),
        (r#"{"response_code":"200"}"#, "REQUIRED_VALUE", "headers"),
    ] {
        let answer = kit.call("/sideband/response", body).await;
        assert_eq!(answer.status, 400, "{body}");
        let error = answer.json();
        assert_eq!(error["details"][0]["code"], code, "{body}");
        assert_eq!(error["target"], target, "{body}");
    }
    let metrics = kit.server.get_text("/metrics").await;
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_decisions_total{") && l.contains("status=\"400\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, 20.0, "{metrics}");
}

#[tokio::test]
async fn a_body_over_the_sideband_limit_is_a_413_with_a_json_body() {
    let kit = start(&["--sideband-max-body", "2KiB"]);
    let big = "x".repeat(4096);
    let request =
        kit_request("POST", "https://api.test:443/app/v1/jobs", &[], Some(&big)).to_string();
    // With a content-length, refused from the head.
    let answer = kit.call("/sideband/request", &request).await;
    assert_eq!(answer.status, 413, "{}", answer.text);
    assert_eq!(answer.headers["content-type"], "application/json");
    let body = answer.json();
    assert_eq!(body["details"][0]["code"], "BODY_TOO_LARGE");
    assert!(
        body["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("--sideband-max-body")
    );

    // Chunked, without a content-length: refused once the limit is passed.
    let chunks: Vec<Result<hyper::body::Frame<hyper::body::Bytes>, std::io::Error>> = request
        .as_bytes()
        .chunks(512)
        .map(|c| {
            Ok(hyper::body::Frame::data(
                hyper::body::Bytes::copy_from_slice(c),
            ))
        })
        .collect();
    let response = kit
        .http
        .post(kit.server.http_url("/sideband/request"))
        .header("CLIENT-TOKEN", SECRET)
        .body(reqwest::Body::wrap(http_body_util::StreamBody::new(
            tokio_stream::iter(chunks),
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["details"][0]["code"], "BODY_TOO_LARGE");

    // Under the limit (bigger than --max-body-bytes' 16 KiB elsewhere) it is decided.
    let kit = start(&[]);
    let big = "y".repeat(100 * 1024);
    let request =
        kit_request("POST", "https://api.test:443/app/v1/jobs", &[], Some(&big)).to_string();
    let answer = kit.call("/sideband/request", &request).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["response"]["response_code"], "401");
}

/// Whether the server has answered (or closed) `stalled` already.
fn was_answered(stalled: &std::net::TcpStream) -> bool {
    stalled.set_nonblocking(true).unwrap();
    let answered = !matches!(stalled.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    stalled.set_nonblocking(false).unwrap();
    answered
}

/// Opens a connection that sends a sideband call's head but not its body, so that the call
/// holds its concurrency slot.
fn stalled_call(server: &Server) -> std::net::TcpStream {
    let mut tcp = std::net::TcpStream::connect(server.http).unwrap();
    write!(
        tcp,
        "POST /sideband/request HTTP/1.1\r\nhost: pdp\r\nclient-token: {SECRET}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
    )
    .unwrap();
    tcp
}

#[tokio::test]
async fn a_busy_server_answers_429_with_retry_after_so_kits_pause() {
    // The stalled call holds the one slot until its 3 s deadline: time for a loaded machine to
    // make the calls that find the server busy.
    let kit = start(&["--max-concurrent-requests", "1", "--request-timeout", "3s"]);
    let request = kit_request("GET", "https://api.test:443/app/v1/items/7", &[], None).to_string();
    // Nothing else is sent until the server has read the stalled call's head: a kit call in
    // flight then would take the slot first and have the stalled call refused (seen on a
    // loaded machine). Should it still be refused, it is made again.
    let mut stalled = stalled_call(&kit.server);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Past the limit: refused at once, the kit's way.
    let mut refused = None;
    for _ in 0..100 {
        let answer = kit.call("/sideband/request", &request).await;
        if answer.status == 429 {
            refused = Some(answer);
            break;
        }
        if was_answered(&stalled) {
            stalled = stalled_call(&kit.server);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused.expect("a call past the limit is refused with 429");
    assert_eq!(refused.headers["retry-after"], "1");
    let body = refused.json();
    assert_eq!(body["code"], "TOO_MANY_REQUESTS");
    assert_eq!(body["details"][0]["code"], "OVERLOADED");
    // The stalled call itself runs past its deadline: 429 too.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = [0u8; 512];
    let n = stalled.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 429"), "{head}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(head.contains("request_timeout"), "{head}");
    // /v1/authorize keeps its 503.
    let _stalled = stalled_call(&kit.server);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = kit
        .http
        .get(kit.server.http_url("/v1/authorize"))
        .header("x-original-url", "https://api.test/app/v1/items/7")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
}

#[tokio::test]
async fn the_response_phase_echoes_the_response_and_records_the_upstream_status() {
    let kit = start(&[]);
    let auth = bearer(&support::app_token(json!({"tenant": "acme"})));
    let access = kit_request(
        "GET",
        "https://api.test:443/app/v1/items/7",
        &[("authorization", &auth)],
        None,
    );
    let allowed = kit.access(&access).await.json();
    let state = allowed["state"].clone();
    let id = state["decisionId"].as_str().unwrap().to_owned();

    let upstream_headers = json!([
        {"Content-Type": "application/json"},
        {"set-cookie": "a=1"},
        {"set-cookie": "b=2"},
        {"x-decision-id": "from-upstream"},
        {"Date": "Thu, 03 Dec 2026 10:00:00 GMT"}
    ]);
    let phase = json!({
        "method": "GET",
        "url": "https://api.test:443/app/v1/items/7",
        "body": "{\"item\": 7}",
        "response_code": "201",
        "response_status": "CREATED",
        "headers": upstream_headers,
        "http_version": "1.1",
        "state": state,
    });
    let answer = kit.call("/sideband/response", &phase.to_string()).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let echo = answer.json();
    for member in [
        "method",
        "url",
        "body",
        "response_code",
        "response_status",
        "http_version",
    ] {
        assert_eq!(echo[member], phase[member], "{member}");
    }
    assert!(echo.get("state").is_none());
    assert_eq!(
        pairs(&echo["headers"]),
        owned(&[
            ("Content-Type", "application/json"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("Date", "Thu, 03 Dec 2026 10:00:00 GMT"),
            ("x-decision-id", id.as_str()),
        ])
    );
    // The decision now says what the upstream answered, in the API and over gRPC.
    assert_eq!(kit.decision(&id).await["upstreamStatus"], 201);
    let mut client = portcullis::proto::decision_service_client::DecisionServiceClient::connect(
        kit.server.grpc_url(),
    )
    .await
    .unwrap();
    let got = client
        .get_decision(portcullis::proto::GetDecisionRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.upstream_status, 201);

    // Without state (PingAccess sends the original request instead): echoed, nothing added,
    // no record touched. A numeric response_code (PingGateway) is accepted.
    let phase = json!({
        "method": "GET",
        "url": "https://api.test:443/app/v1/items/7",
        "response_code": 503,
        "response_status": "SERVICE UNAVAILABLE",
        "headers": [{"retry-after": "5"}, {"x-decision-id": "from-upstream"}],
        "http_version": "1.1",
        "request": access,
    });
    let echo = kit
        .call("/sideband/response", &phase.to_string())
        .await
        .json();
    assert_eq!(echo["response_code"], 503);
    assert!(echo.get("request").is_none() && echo.get("body").is_none());
    assert_eq!(
        pairs(&echo["headers"]),
        owned(&[("retry-after", "5"), ("x-decision-id", "from-upstream")])
    );
    assert_eq!(kit.decision(&id).await["upstreamStatus"], 201);
}

/// `examples/kong/kong.yml` cannot run here (Kong is not packaged); what it tells the kit must
/// still reach Portcullis: its secret (a line of the example's secret file), its header (the
/// default) and its service URL (the default HTTP listener), for a URL its route sends.
#[tokio::test]
async fn the_kong_example_configures_the_kit_the_way_portcullis_serves_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("examples/kong/kong.yml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
    let service = &docs[0]["services"][0];
    let plugin = &service["plugins"][0];
    assert_eq!(plugin["name"].as_str(), Some("ping-auth"));
    let config = &plugin["config"];
    let (url, secret, header) = (
        config["service_url"].as_str().unwrap(),
        config["shared_secret"].as_str().unwrap(),
        config["secret_header_name"].as_str().unwrap(),
    );
    assert_eq!(url, "http://127.0.0.1:8080/", "the default --http-listen");
    let route = service["routes"][0]["paths"][0].as_str().unwrap();

    let server = Server::start(
        &root.join("policies"),
        &[
            "--sideband-secret-file",
            root.join("examples/kong/sideband.secrets")
                .to_str()
                .unwrap(),
        ],
    );
    // The URL the kit builds behind Kong's TLS listener on 8443, for a path of the route.
    let request = kit_request(
        "GET",
        &format!("https://localhost:8443{route}/leaderboard"),
        &[("host", "localhost:8443")],
        None,
    );
    let answer = kit_client()
        .post(server.http_url("/sideband/request"))
        .header(header, secret)
        .body(request.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["response"]["response_code"], "401", "{body}");
    let challenge = pairs(&body["response"]["headers"]);
    assert!(
        challenge.contains(&(
            "www-authenticate".into(),
            "Bearer realm=\"meme-game\"".into()
        )),
        "the meme-game service decided: {challenge:?}"
    );
}
