//! `portcullis serve` over HTTP with a real HTTP client: `/v1/authorize` as nginx and other
//! HTTP gateway kits call it, the decisions API, health, metrics, graceful shutdown, secrets
//! and a sustained concurrent load.

mod support;

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use support::server::Server;

fn server(extra: &[&str]) -> Server {
    // The fixture service `remote` names a key URL nobody serves: do not wait for it.
    let mut args = vec!["--jwks-start-timeout", "0s"];
    args.extend(extra);
    Server::start(&support::fixtures().join("policies"), &args)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn authorize_answers_nginx_style_subrequests() {
    let server = server(&[]);
    let http = client();
    let good = support::app_token(json!({"tenant": "acme"}));

    // nginx sends GET subrequests describing the original request.
    let allow = http
        .get(server.http_url("/v1/authorize"))
        .header("X-Original-Method", "GET")
        .header("X-Original-URL", "https://api.test/app/v1/items/7?q=1")
        .header("Authorization", format!("Bearer {good}"))
        .header("X-Real-IP", "10.0.0.9")
        .send()
        .await
        .unwrap();
    assert_eq!(allow.status(), 200);
    assert_eq!(allow.headers()["x-user-id"], "user.1");
    assert_eq!(allow.headers()["x-tenant"], "tenant-acme");
    let id = allow.headers()["x-decision-id"]
        .to_str()
        .unwrap()
        .to_owned();

    // The recorded decision, under the same id, with the client the gateway named.
    let stored: Value = http
        .get(server.http_url(&format!("/v1/decisions/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored["id"], id.as_str());
    assert_eq!(stored["request"]["client"], "10.0.0.9");
    assert_eq!(
        stored["request"]["url"],
        "https://api.test/app/v1/items/7?q=1"
    );

    // No token: 401 with the challenge and the §3 body.
    let deny = http
        .get(server.http_url("/v1/authorize"))
        .header("X-Original-Method", "GET")
        .header("X-Original-URL", "https://api.test/app/v1/items/7")
        .send()
        .await
        .unwrap();
    assert_eq!(deny.status(), 401);
    assert_eq!(deny.headers()["www-authenticate"], "Bearer realm=\"app\"");
    assert_eq!(deny.headers()["content-type"], "application/json");
    let id = deny.headers()["x-decision-id"].to_str().unwrap().to_owned();
    let body: Value = deny.json().await.unwrap();
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["details"][0]["code"], "REQUIRED_VALUE");

    // The X-Forwarded-* form, with the original method: 405 with allow.
    let deny = http
        .post(server.http_url("/v1/authorize"))
        .header("X-Forwarded-Method", "POST")
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "api.test")
        .header("X-Forwarded-Uri", "/app/v1/items/7")
        .header("Authorization", format!("Bearer {good}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deny.status(), 405);
    assert_eq!(deny.headers()["allow"], "DELETE, GET, PUT");

    // A missing group: 403 naming the rule.
    let viewer = support::app_token(json!({"groups": ["viewers"], "scope": "items:write"}));
    let deny = http
        .get(server.http_url("/v1/authorize"))
        .header("X-Original-Method", "PUT")
        .header("X-Original-URL", "https://api.test/app/v1/items/7")
        .header("Authorization", format!("Bearer {viewer}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deny.status(), 403);
    let body: Value = deny.json().await.unwrap();
    assert_eq!(body["details"][0]["code"], "GROUP_REQUIRED");

    // Nothing says what the original request was: 400.
    let bad = http
        .get(server.http_url("/v1/authorize"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["code"], "INVALID_REQUEST");
}

#[tokio::test]
async fn decisions_api_lists_with_filters_and_matches_the_grpc_content() {
    let server = server(&[]);
    let http = client();
    let authorize = |url: &'static str, token: Option<String>| {
        let mut request = http
            .get(server.http_url("/v1/authorize"))
            .header("X-Original-Method", "GET")
            .header("X-Original-URL", url);
        if let Some(t) = token {
            request = request.header("Authorization", format!("Bearer {t}"));
        }
        async move {
            request.send().await.unwrap().headers()["x-decision-id"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    let since =
        humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(5)).to_string();
    let first = authorize(
        "https://api.test/app/v1/items/1",
        Some(support::app_token(json!({"sub": "bob"}))),
    )
    .await;
    let second = authorize("https://api.test/app/v1/items/2", None).await;
    let third = authorize("https://nowhere.test/x", None).await;

    let list = |query: String| {
        let request = http.get(server.http_url(&format!("/v1/decisions{query}")));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, body)
        }
    };
    let ids = |body: &Value| -> Vec<String> {
        body["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, all) = list(String::new()).await;
    assert_eq!(status, 200);
    assert_eq!(
        ids(&all),
        [third.clone(), second.clone(), first.clone()],
        "newest first"
    );
    assert_eq!(
        ids(&list("?service=app&outcome=deny".into()).await.1),
        [second.as_str()]
    );
    assert_eq!(ids(&list("?status=404".into()).await.1), [third.as_str()]);
    assert_eq!(ids(&list("?subject=bob".into()).await.1), [first.as_str()]);
    assert_eq!(
        ids(&list("?outcome=allow&status=200&service=app".into()).await.1),
        [first.as_str()]
    );
    assert_eq!(
        ids(&list(format!("?since={since}&limit=1")).await.1),
        [third.as_str()]
    );
    assert_eq!(ids(&list("?q=NOWHERE".into()).await.1), [third.as_str()]);
    for bad in [
        "?status=abc",
        "?outcome=maybe",
        "?since=yesterday",
        "?limit=0",
    ] {
        let (status, body) = list(bad.into()).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("INVALID_REQUEST")),
            "{bad}: {body}"
        );
    }

    // One decision: the §6b JSON, with the trace that explains it.
    let one: Value = http
        .get(server.http_url(&format!("/v1/decisions/{second}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for field in [
        "id",
        "time",
        "durationMicros",
        "service",
        "operation",
        "policyRevision",
        "request",
        "outcome",
        "status",
        "headers",
        "upstreamHeaders",
        "body",
        "token",
        "trace",
        "audit",
    ] {
        assert!(one.get(field).is_some(), "no `{field}` in {one}");
    }
    assert_eq!(
        one["trace"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["decisive"] == true)
            .count(),
        1
    );

    // The same decision through gRPC has the same content.
    let mut grpc = portcullis::proto::decision_service_client::DecisionServiceClient::connect(
        server.grpc_url(),
    )
    .await
    .unwrap();
    let pb = grpc
        .get_decision(portcullis::proto::GetDecisionRequest { id: second.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pb.status, one["status"].as_u64().unwrap() as u32);
    assert_eq!(pb.audit, one["audit"].as_str().unwrap());
    assert_eq!(pb.trace.len(), one["trace"].as_array().unwrap().len());
    assert_eq!(
        pb.body.unwrap().details[0].code,
        one["body"]["details"][0]["code"].as_str().unwrap()
    );

    let missing = http
        .get(server.http_url("/v1/decisions/01ARZ3NDEKTSV4RRFFQ69G5FAV"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["code"], "NOT_FOUND");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = server(&[]);
    let http = client();
    assert_eq!(
        http.get(server.http_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = http.get(server.http_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    let revision = ready["policyRevision"].as_str().unwrap().to_owned();
    assert_eq!(revision.len(), 12);

    for url in [
        "https://api.test/app/v1/items/1",
        "https://api.test/app/v1/items/1",
        "https://nowhere.test/",
    ] {
        http.get(server.http_url("/v1/authorize"))
            .header("X-Original-URL", url)
            .send()
            .await
            .unwrap();
    }
    let text = server.get_text("/metrics").await;
    assert!(
        text.contains(r#"portcullis_decisions_total{service="app",outcome="deny",status="401"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"portcullis_decisions_total{service="",outcome="deny",status="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"portcullis_decision_duration_seconds_count{transport="http"} 3"#),
        "{text}"
    );
    assert!(text.contains("portcullis_trace_store_records 3"), "{text}");
    assert!(
        text.contains(&format!(
            r#"portcullis_policy_revision{{revision="{revision}"}} 1"#
        )),
        "{text}"
    );
}

#[tokio::test]
async fn the_audit_log_has_a_line_per_decision_and_no_secrets() {
    let mut server = server(&[]);
    let http = client();
    let secret = support::app_token(json!({"sub": "carol"}));
    let cookie = "session=cookie-secret-5f1e";
    let mut ids = Vec::new();
    for (url, auth) in [
        (
            "https://api.test/app/v1/items/1?access_token=query-secret-9a7b",
            Some(&secret),
        ),
        ("https://api.test/app/v1/items/1", None),
    ] {
        let mut request = http
            .get(server.http_url("/v1/authorize"))
            .header("X-Original-URL", url)
            .header("Cookie", cookie);
        if let Some(t) = auth {
            request = request.header("Authorization", format!("Bearer {t}"));
        }
        ids.push(
            request.send().await.unwrap().headers()["x-decision-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    let listed = server.get_text("/v1/decisions").await;
    let metrics = server.get_text("/metrics").await;
    assert!(server.terminate().success(), "SIGTERM exits 0");
    let log = server.log();
    let audit: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == "portcullis::audit")
        .collect();
    assert_eq!(audit.len(), 2, "{log}");
    for (line, id) in audit.iter().zip(&ids) {
        assert_eq!(line["fields"]["decision_id"], id.as_str(), "{line}");
        assert!(
            line["fields"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Request to the URL"),
            "{line}"
        );
    }
    assert_eq!(audit[0]["fields"]["subject"], "carol");
    assert_eq!(audit[1]["fields"]["status"], 401);
    let signature = secret.rsplit('.').next().unwrap();
    for (what, text) in [("log", &log), ("decisions", &listed), ("metrics", &metrics)] {
        for value in [
            secret.as_str(),
            signature,
            "cookie-secret-5f1e",
            "query-secret-9a7b",
        ] {
            assert!(
                !text.contains(value),
                "the {what} contain the secret `{value}`"
            );
        }
    }
}

#[tokio::test]
async fn sixty_four_connections_for_ten_seconds_without_errors() {
    let server = server(&["--trace-capacity", "500"]);
    let good = support::app_token(json!({}));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut workers = Vec::new();
    for worker in 0..64 {
        // One client per worker: its own connection pool, so 64 connections.
        let http = client();
        let url = server.http_url("/v1/authorize");
        let good = good.clone();
        workers.push(tokio::spawn(async move {
            let (mut done, mut errors, mut wrong) = (0u64, 0u64, 0u64);
            while tokio::time::Instant::now() < deadline {
                let (target, expected, auth) = match (worker + done) % 3 {
                    0 => ("https://api.test/app/v1/items/1", 200, true),
                    1 => ("https://api.test/app/v1/items/1", 401, false),
                    _ => ("https://nowhere.test/", 404, true),
                };
                let mut request = http.get(&url).header("X-Original-URL", target);
                if auth {
                    request = request.header("Authorization", format!("Bearer {good}"));
                }
                match request.send().await {
                    Ok(r) if r.status().as_u16() == expected => {}
                    Ok(_) => wrong += 1,
                    Err(_) => errors += 1,
                }
                done += 1;
            }
            (done, errors, wrong)
        }));
    }
    let (mut total, mut errors, mut wrong) = (0, 0, 0);
    for w in workers {
        let (d, e, x) = w.await.unwrap();
        total += d;
        errors += e;
        wrong += x;
    }
    assert_eq!(errors, 0, "transport errors in {total} requests");
    assert_eq!(wrong, 0, "wrong answers in {total} requests");
    assert!(total > 64, "only {total} requests in 10 s");
    let text = client()
        .get(server.http_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("portcullis_trace_store_records 500"),
        "the store is bounded by its capacity:\n{text}"
    );
    eprintln!("{total} requests in 10 s over 64 connections");
}
