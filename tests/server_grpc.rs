//! `portcullis serve` over gRPC, with real tonic clients: Envoy's ext_authz Check, the
//! decision and decisions API, health and reflection.

mod support;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use portcullis::proto;
use portcullis::proto::decision_service_client::DecisionServiceClient;
use portcullis::proto::envoy::config::core::v3::{
    Address, SocketAddress, address, header_value_option::HeaderAppendAction,
};
use portcullis::proto::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use portcullis::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use portcullis::proto::envoy::service::auth::v3::check_response::HttpResponse;
use portcullis::proto::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use serde_json::{Value, json};
use support::server::Server;
use tonic::transport::Channel;

fn server() -> Server {
    // The fixture service `remote` names a key URL nobody serves: do not wait for it.
    Server::start(
        &support::fixtures().join("policies"),
        &["--jwks-start-timeout", "0s"],
    )
}

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(server.grpc_url())
        .unwrap()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .expect("the gRPC listener accepts connections")
}

/// A Check as Envoy sends it: lower-case header names, the authority as host, the path
/// with its query.
fn check_request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    client: Option<&str>,
) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: client.map(|ip| Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: ip.to_owned(),
                        port_specifier: Some(portcullis::proto::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(40000)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    method: method.to_owned(),
                    scheme: "https".to_owned(),
                    host: host.to_owned(),
                    path: path.to_owned(),
                    protocol: "HTTP/1.1".to_owned(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

async fn check(client: &mut AuthorizationClient<Channel>, request: CheckRequest) -> CheckResponse {
    client
        .check(request)
        .await
        .expect("Check answers")
        .into_inner()
}

/// (status code, headers, body) of a denial; panics on an allow.
fn denied(response: &CheckResponse) -> (i32, HashMap<String, String>, Value) {
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(d)) => (
            d.status.as_ref().map_or(0, |s| s.code),
            d.headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect(),
            serde_json::from_str(&d.body).expect("the body is JSON"),
        ),
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn ext_authz_allows_with_upstream_headers_that_replace_the_clients() {
    let server = server();
    let mut client = AuthorizationClient::new(channel(&server).await);
    let bearer = format!("Bearer {}", support::app_token(json!({"tenant": "acme"})));
    let response = check(
        &mut client,
        check_request(
            "GET",
            "api.test",
            "/app/v1/items/7?x=1",
            &[("authorization", &bearer), ("x-user-id", "spoofed")],
            None,
        ),
    )
    .await;
    assert_eq!(response.status.as_ref().unwrap().code, 0, "OK allows");
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("expected ok_response, got {response:?}")
    };
    let headers: HashMap<&str, (&str, i32)> = ok
        .headers
        .iter()
        .map(|h| {
            let hv = h.header.as_ref().unwrap();
            (hv.key.as_str(), (hv.value.as_str(), h.append_action))
        })
        .collect();
    let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
    assert_eq!(headers["x-user-id"], ("user.1", overwrite));
    assert_eq!(headers["x-tenant"], ("tenant-acme", overwrite));
    let id = headers["x-decision-id"].0;
    assert_eq!(id.len(), 26, "a ULID");

    // The decision is in the store, under the id the gateway got.
    let mut decisions = DecisionServiceClient::new(channel(&server).await);
    let stored = decisions
        .get_decision(proto::GetDecisionRequest { id: id.to_owned() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.status, 200);
    assert_eq!(
        stored.request.clone().unwrap().url,
        "https://api.test/app/v1/items/7?x=1"
    );
    assert!(
        !format!("{stored:?}").contains(&bearer[7..]),
        "the store holds the token"
    );
}

#[tokio::test]
async fn ext_authz_denials_carry_status_headers_and_body() {
    let server = server();
    let mut client = AuthorizationClient::new(channel(&server).await);

    // No token: 401, UNAUTHENTICATED, a challenge without error=.
    let response = check(
        &mut client,
        check_request("GET", "api.test", "/app/v1/items/7", &[], None),
    )
    .await;
    assert_eq!(response.status.as_ref().unwrap().code, 16);
    let (status, headers, body) = denied(&response);
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"app\"");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-decision-id"], body["id"].as_str().unwrap());
    assert_eq!(body["details"][0]["code"], "REQUIRED_VALUE");

    // Missing group: 403, PERMISSION_DENIED, the §3 body.
    let bearer = format!(
        "Bearer {}",
        support::app_token(json!({"groups": ["viewers"], "scope": "items:write"}))
    );
    let response = check(
        &mut client,
        check_request(
            "PUT",
            "api.test",
            "/app/v1/items/7",
            &[("authorization", &bearer)],
            None,
        ),
    )
    .await;
    assert_eq!(response.status.as_ref().unwrap().code, 7);
    let (status, _, body) = denied(&response);
    assert_eq!(status, 403);
    assert_eq!(body["code"], "FORBIDDEN");
    assert_eq!(body["details"][0]["code"], "GROUP_REQUIRED");

    // Unknown host: 404, NOT_FOUND.
    let response = check(
        &mut client,
        check_request("GET", "nowhere.test", "/x", &[], None),
    )
    .await;
    assert_eq!(response.status.as_ref().unwrap().code, 5);
    assert_eq!(denied(&response).0, 404);

    // Wrong method with a valid token: 405 with allow.
    let bearer = format!("Bearer {}", support::app_token(json!({})));
    let response = check(
        &mut client,
        check_request(
            "POST",
            "api.test",
            "/app/v1/items/7",
            &[("authorization", &bearer)],
            None,
        ),
    )
    .await;
    let (status, headers, _) = denied(&response);
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "DELETE, GET, PUT");

    // Envoy merges repeated headers with a comma: two bearer tokens are an invalid request.
    let merged = format!("{bearer},{bearer}");
    let response = check(
        &mut client,
        check_request(
            "GET",
            "api.test",
            "/app/v1/items/7",
            &[("authorization", &merged)],
            None,
        ),
    )
    .await;
    let (status, _, body) = denied(&response);
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn ext_authz_uses_the_source_address_for_client_ip_rules() {
    let server = server();
    let mut client = AuthorizationClient::new(channel(&server).await);
    let bearer = format!("Bearer {}", support::app_token(json!({"amr": ["mfa"]})));
    let headers = [("authorization", bearer.as_str())];
    let inside = check(
        &mut client,
        check_request(
            "POST",
            "api.test",
            "/app/v1/admin/x",
            &headers,
            Some("10.1.2.3"),
        ),
    )
    .await;
    assert_eq!(inside.status.unwrap().code, 0);
    let outside = check(
        &mut client,
        check_request(
            "POST",
            "api.test",
            "/app/v1/admin/x",
            &headers,
            Some("192.0.2.9"),
        ),
    )
    .await;
    let (status, _, body) = denied(&outside);
    assert_eq!(status, 403);
    assert_eq!(body["details"][0]["code"], "CLIENT_ADDRESS_NOT_ALLOWED");
}

#[tokio::test]
async fn bad_check_requests_are_denied_with_400_not_errors() {
    let server = server();
    let mut client = AuthorizationClient::new(channel(&server).await);
    // No attributes at all.
    let response = check(&mut client, CheckRequest { attributes: None }).await;
    assert_eq!(response.status.as_ref().unwrap().code, 3);
    let (status, _, body) = denied(&response);
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("INVALID_REQUEST"))
    );
    // An empty path.
    let response = check(&mut client, check_request("GET", "api.test", "", &[], None)).await;
    assert_eq!(denied(&response).0, 400);
    // A 100 KiB path is capped: 400 URL_TOO_LONG.
    let long = format!("/app/v1/items/{}", "a".repeat(100 * 1024));
    let response = check(
        &mut client,
        check_request("GET", "api.test", &long, &[], None),
    )
    .await;
    let (status, _, body) = denied(&response);
    assert_eq!(
        (status, body["details"][0]["code"].as_str()),
        (400, Some("URL_TOO_LONG"))
    );
    // A message over the size cap is refused by gRPC, and the server goes on serving.
    let huge = "h".repeat(portcullis::server::MAX_GRPC_MESSAGE + 1);
    let error = client
        .check(check_request(
            "GET",
            "api.test",
            "/app/v1/items/1",
            &[("x-huge", &huge)],
            None,
        ))
        .await
        .expect_err("an oversized message is refused");
    assert_eq!(error.code(), tonic::Code::OutOfRange, "{error}");
    let response = check(
        &mut client,
        check_request("GET", "api.test", "/app/v1/items/7", &[], None),
    )
    .await;
    assert_eq!(denied(&response).0, 401);
}

#[tokio::test]
async fn decision_api_decides_lists_filters_and_gets() {
    let server = server();
    let mut api = DecisionServiceClient::new(channel(&server).await);
    let decide = |url: &str, token: Option<String>| proto::DecideRequest {
        method: "GET".into(),
        url: url.into(),
        headers: token
            .map(|t| {
                vec![proto::Header {
                    name: "Authorization".into(),
                    value: format!("Bearer {t}"),
                }]
            })
            .unwrap_or_default(),
        client_address: "10.0.0.7:1234".into(),
        ..Default::default()
    };
    let allowed = api
        .decide(decide(
            "https://api.test/app/v1/items/1",
            Some(support::app_token(json!({"sub": "alice"}))),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (allowed.status, allowed.outcome),
        (200, proto::Outcome::Allow as i32)
    );
    assert_eq!(allowed.token.as_ref().unwrap().sub, "alice");
    assert_eq!(allowed.request.as_ref().unwrap().client, "10.0.0.7");
    assert!(allowed.trace.len() >= 3);
    let since =
        prost_types::Timestamp::from(SystemTime::now() - std::time::Duration::from_secs(60));
    let denied = api
        .decide(decide("https://api.test/app/v1/items/2", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied.status, 401);
    let not_found = api
        .decide(decide("https://else.test/", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(not_found.status, 404);

    let list = |req: proto::ListDecisionsRequest| {
        let mut api = api.clone();
        async move {
            api.list_decisions(req)
                .await
                .unwrap()
                .into_inner()
                .decisions
        }
    };
    let all = list(proto::ListDecisionsRequest::default()).await;
    let ids: Vec<&str> = all.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        [&not_found.id, &denied.id, &allowed.id],
        "newest first"
    );
    let app_denials = list(proto::ListDecisionsRequest {
        service: "app".into(),
        outcome: "deny".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(
        app_denials.iter().map(|d| &d.id).collect::<Vec<_>>(),
        [&denied.id]
    );
    let by_status = list(proto::ListDecisionsRequest {
        status: 404,
        ..Default::default()
    })
    .await;
    assert_eq!(by_status.len(), 1);
    let by_subject = list(proto::ListDecisionsRequest {
        subject: "alice".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(
        by_subject.iter().map(|d| &d.id).collect::<Vec<_>>(),
        [&allowed.id]
    );
    let limited = list(proto::ListDecisionsRequest {
        limit: 2,
        since: Some(since),
        ..Default::default()
    })
    .await;
    assert_eq!(limited.len(), 2);
    let future =
        prost_types::Timestamp::from(SystemTime::now() + std::time::Duration::from_secs(3600));
    assert!(
        list(proto::ListDecisionsRequest {
            since: Some(future),
            ..Default::default()
        })
        .await
        .is_empty()
    );

    let bad = api
        .list_decisions(proto::ListDecisionsRequest {
            outcome: "maybe".into(),
            ..Default::default()
        })
        .await
        .expect_err("an unknown outcome is refused");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    let got = api
        .get_decision(proto::GetDecisionRequest {
            id: denied.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.body.unwrap().details[0].code, "REQUIRED_VALUE");
    let missing = api
        .get_decision(proto::GetDecisionRequest {
            id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
        })
        .await
        .expect_err("unknown id");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let services = api
        .list_services(proto::ListServicesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(services.policy_revision, allowed.policy_revision);
    assert_eq!(services.policy_revision.len(), 12);
    let app = services
        .services
        .iter()
        .find(|s| s.name == "app")
        .expect("app is listed");
    assert!(app.operations.contains(&"read-item".to_owned()));
    assert!(
        app.base_urls
            .contains(&"https://api.test/app/v1".to_owned())
    );
}

/// Polls the health of `service` until it is `wanted` (1 SERVING, 2 NOT_SERVING), for at
/// most `within`.
async fn wait_for_health(channel: &Channel, service: &str, wanted: i32, within: Duration) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut health = HealthClient::new(channel.clone());
    let deadline = std::time::Instant::now() + within;
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health of `{service}`: {e}"))
            .into_inner()
            .status;
        if status == wanted {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`{service}` is {status}, not {wanted}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_reports_serving() {
    let server = server();
    let channel = channel(&server).await;
    for service in [
        "",
        "envoy.service.auth.v3.Authorization",
        "portcullis.v1.DecisionService",
    ] {
        // SERVING once the (zero-second) wait for the unreachable remote key set is over.
        wait_for_health(&channel, service, 1, Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn reflection_lists_every_service_in_v1_and_v1alpha() {
    let server = server();
    let expected = [
        "envoy.service.auth.v3.Authorization",
        "portcullis.v1.DecisionService",
        "grpc.health.v1.Health",
    ];
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel(&server).await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let answer = stream.message().await.unwrap().expect("an answer");
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("{answer:?}")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for name in expected {
            assert!(
                names.iter().any(|n| n == name),
                "v1 lacks {name}: {names:?}"
            );
        }
        // The descriptor of ext_authz is there, so grpcurl can build a Check.
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "envoy.service.auth.v3.Authorization".into(),
            )),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let answer = stream.message().await.unwrap().expect("an answer");
        assert!(
            matches!(answer.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
            "{answer:?}"
        );
    }
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel(&server).await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let answer = stream.message().await.unwrap().expect("an answer");
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("{answer:?}")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for name in expected {
            assert!(
                names.iter().any(|n| n == name),
                "v1alpha lacks {name}: {names:?}"
            );
        }
    }
}

#[tokio::test]
async fn with_a_shutdown_delay_sigterm_reports_not_serving_while_still_deciding() {
    const EXT_AUTHZ: &str = "envoy.service.auth.v3.Authorization";
    let mut server = Server::start(
        &support::fixtures().join("policies"),
        &["--jwks-start-timeout", "0s", "--shutdown-delay", "3s"],
    );
    let channel = channel(&server).await;
    let mut authz = AuthorizationClient::new(channel.clone());
    wait_for_health(&channel, EXT_AUTHZ, 1, Duration::from_secs(5)).await;

    server.send_sigterm();
    // Within the delay: NOT_SERVING (2) on gRPC, 503 draining on HTTP, and still deciding.
    wait_for_health(&channel, EXT_AUTHZ, 2, Duration::from_secs(2)).await;
    let readyz = reqwest::get(server.http_url("/readyz")).await.unwrap();
    assert_eq!(readyz.status(), 503);
    let body: serde_json::Value = readyz.json().await.unwrap();
    assert_eq!(body["draining"], true);
    let answer = authz
        .check(check_request(
            "GET",
            "api.test",
            "/app/v1/items/1",
            &[],
            None,
        ))
        .await
        .expect("a Check is still decided while draining")
        .into_inner();
    assert_eq!(answer.status.unwrap().code, 16, "401 → UNAUTHENTICATED");

    // Then it stops by itself, with exit status 0. (Waiting without blocking the runtime:
    // this test's connections must be able to see the server's GOAWAY.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not stop after the delay"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");
}
