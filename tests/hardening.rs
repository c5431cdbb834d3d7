//! Failing closed and keeping secrets, against the real server: the admin token that guards
//! recent decisions and metrics, a panic inside the pipeline, and a sweep for secret values
//! in everything an operator or client can read.

mod support;

use std::time::Duration;

use portcullis::proto;
use portcullis::proto::decision_service_client::DecisionServiceClient;
use portcullis::proto::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use portcullis::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use portcullis::proto::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use serde_json::{Value, json};
use support::server::Server;

fn fixtures() -> std::path::PathBuf {
    support::fixtures().join("policies")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn with_auth<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test]
async fn the_admin_token_guards_decisions_and_metrics_but_never_decisions_for_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let admin = "admin-token-4c1d9e";
    std::fs::write(dir.path().join("admin-token"), format!("{admin}\n")).unwrap();
    let token_file = dir.path().join("admin-token");
    let server = Server::start(
        &fixtures(),
        &[
            "--jwks-start-timeout",
            "0s",
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let http = client();

    // Gateways need no admin token.
    let decided = http
        .get(server.http_url("/v1/authorize"))
        .header("X-Original-URL", "https://api.test/app/v1/items/1")
        .send()
        .await
        .unwrap();
    assert_eq!(decided.status(), 401, "decided, as a gateway asked");
    assert_eq!(
        http.get(server.http_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    for path in ["/v1/decisions", "/metrics"] {
        let missing = http.get(server.http_url(path)).send().await.unwrap();
        assert_eq!(missing.status(), 401, "{path} without the token");
        assert_eq!(
            missing.headers()["www-authenticate"],
            "Bearer realm=\"portcullis-admin\""
        );
        let body: Value = missing.json().await.unwrap();
        assert_eq!(body["code"], "UNAUTHORIZED");
        let wrong = http
            .get(server.http_url(path))
            .bearer_auth("admin-token-4c1d9f")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
        let right = http
            .get(server.http_url(path))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), 200, "{path} with the token");
    }

    let channel = tonic::transport::Channel::from_shared(server.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut api = DecisionServiceClient::new(channel.clone());
    let refused = api
        .list_decisions(proto::ListDecisionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refused = api
        .list_services(proto::ListServicesRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let listed = api
        .list_decisions(with_auth(proto::ListDecisionsRequest::default(), admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.decisions.len(), 1);
    // Deciding stays open to gateway kits and Envoy.
    let decided = api
        .decide(proto::DecideRequest {
            method: "GET".into(),
            url: "https://api.test/app/v1/items/1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(decided.status, 401);
    let mut envoy = AuthorizationClient::new(channel);
    assert!(envoy.check(CheckRequest::default()).await.is_ok());

    assert!(!server.log().contains(admin), "the admin token is logged");
}

#[tokio::test]
async fn a_panic_in_the_pipeline_is_a_500_deny_and_the_next_request_succeeds() {
    let server = Server::start_with_env(
        &fixtures(),
        &["--jwks-start-timeout", "0s"],
        &[("PORTCULLIS_TEST_PANIC_MARKER", "__boom__")],
    );
    let http = client();
    let good = support::app_token(json!({}));
    let panicked = http
        .get(server.http_url("/v1/authorize"))
        .header("X-Original-URL", "https://api.test/app/v1/items/__boom__")
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(panicked.status(), 500);
    let id = panicked.headers()["x-decision-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = panicked.json().await.unwrap();
    assert_eq!(body["code"], "UNEXPECTED_ERROR");
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["details"][0]["code"], "INTERNAL_ERROR");

    let next = http
        .get(server.http_url("/v1/authorize"))
        .header("X-Original-URL", "https://api.test/app/v1/items/7")
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(next.status(), 200, "the server goes on serving");

    // Through ext_authz too: a deny, never a transport error.
    let mut envoy = AuthorizationClient::connect(server.grpc_url())
        .await
        .unwrap();
    let check = envoy
        .check(CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    time: None,
                    http: Some(HttpRequest {
                        method: "GET".into(),
                        scheme: "https".into(),
                        host: "api.test".into(),
                        path: "/app/v1/__boom__".into(),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(check.status.unwrap().code, 13, "INTERNAL");

    let metrics = server.get_text("/metrics").await;
    assert!(
        metrics.contains("portcullis_decision_panics_total 2"),
        "{metrics}"
    );
    // The panic is logged with the decision id.
    server.wait_for_log(&id).await;
}

#[tokio::test]
async fn no_secret_value_reaches_logs_stores_apis_bodies_or_metrics() {
    let server = Server::start(&fixtures(), &["--jwks-start-timeout", "0s"]);
    let http = client();
    let channel = tonic::transport::Channel::from_shared(server.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut api = DecisionServiceClient::new(channel.clone());
    let mut envoy = AuthorizationClient::new(channel);

    // Distinctive values: valid, expired and wrong-audience tokens, garbage "tokens",
    // cookies, API keys in headers and in the query.
    let tokens = [
        support::app_token(json!({"jti": "jti-secret-a1"})),
        support::app_token(json!({"exp": support::unix_now() - 3600, "jti": "jti-secret-b2"})),
        support::app_token(json!({"aud": "other", "jti": "jti-secret-c3"})),
        support::app_token(json!({"groups": ["viewers"], "jti": "jti-secret-d4"})),
    ];
    let garbage = "garbage-token-secret-e5f6";
    let cookie = "session=cookie-secret-7a8b";
    let api_key = "apikey-secret-9c0d";
    let query_secret = "query-secret-1e2f";
    let mut bodies = String::new();
    for round in 0..25 {
        for t in tokens.iter().map(String::as_str).chain([garbage]) {
            let url = format!(
                "https://api.test/app/v1/items/{round}?access_token={query_secret}&api_key={query_secret}"
            );
            let answer = http
                .get(server.http_url("/v1/authorize"))
                .header(
                    "X-Original-Method",
                    if round % 2 == 0 { "GET" } else { "PUT" },
                )
                .header("X-Original-URL", &url)
                .header("Authorization", format!("Bearer {t}"))
                .header("Cookie", cookie)
                .header("X-API-Key", api_key)
                .send()
                .await
                .unwrap();
            bodies.push_str(&format!("{:?}", answer.headers()));
            bodies.push_str(&answer.text().await.unwrap());
            let decided = api
                .decide(proto::DecideRequest {
                    method: "GET".into(),
                    url: url.clone(),
                    headers: vec![
                        proto::Header {
                            name: "authorization".into(),
                            value: format!("Bearer {t}"),
                        },
                        proto::Header {
                            name: "cookie".into(),
                            value: cookie.into(),
                        },
                        proto::Header {
                            name: "x-api-key".into(),
                            value: api_key.into(),
                        },
                    ],
                    client_address: "10.0.0.1".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            bodies.push_str(&format!("{decided:?}"));
            let checked = envoy
                .check(CheckRequest {
                    attributes: Some(AttributeContext {
                        request: Some(Request {
                            time: None,
                            http: Some(HttpRequest {
                                method: "GET".into(),
                                scheme: "https".into(),
                                host: "api.test".into(),
                                path: format!("/app/v1/items/{round}?token={query_secret}"),
                                headers: [
                                    ("authorization".to_owned(), format!("Bearer {t}")),
                                    ("cookie".to_owned(), cookie.to_owned()),
                                    ("x-api-key".to_owned(), api_key.to_owned()),
                                ]
                                .into(),
                                ..Default::default()
                            }),
                        }),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap()
                .into_inner();
            bodies.push_str(&format!("{checked:?}"));
        }
    }

    let listed = server.get_text("/v1/decisions?limit=1000").await;
    let ids: Vec<String> = serde_json::from_str::<Value>(&listed).unwrap()["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 375, "every decision is recorded");
    let mut one_by_one = String::new();
    for id in ids.iter().step_by(7) {
        one_by_one.push_str(&server.get_text(&format!("/v1/decisions/{id}")).await);
        let pb = api
            .get_decision(proto::GetDecisionRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner();
        one_by_one.push_str(&format!("{pb:?}"));
    }
    let grpc_listed = format!(
        "{:?}",
        api.list_decisions(proto::ListDecisionsRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
    );
    let metrics = server.get_text("/metrics").await;
    // The newest decision's audit line, and so every earlier one.
    let log = server.wait_for_log(&ids[0]).await;
    assert!(log.contains("portcullis::audit"));

    let mut secrets: Vec<String> = vec![
        garbage.into(),
        "cookie-secret-7a8b".into(),
        api_key.into(),
        query_secret.into(),
    ];
    for t in &tokens {
        secrets.push(t.clone());
        let parts: Vec<&str> = t.split('.').collect();
        secrets.push(parts[2].to_owned());
        secrets.push(format!("{}.{}", parts[0], parts[1]));
        secrets.push(parts[1].to_owned());
    }
    for (what, text) in [
        ("answers to clients", &bodies),
        ("HTTP decisions list", &listed),
        ("HTTP and gRPC single decisions", &one_by_one),
        ("gRPC decisions list", &grpc_listed),
        ("metrics", &metrics),
        ("log and audit lines", &log),
    ] {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "the {what} contain the secret `{secret}`"
            );
        }
    }
    // What is not secret is still there for the operator: the redacted URL.
    assert!(
        listed.contains("access_token=REDACTED"),
        "the URL is kept, redacted"
    );
}
