//! Decisions as OpenTelemetry spans (issue 20), against a real OTLP receiver started here
//! (the `opentelemetry-proto` TraceService over tonic, or OTLP/HTTP protobuf over axum) and
//! the real `portcullis serve`; the Envoy test runs the shipped `examples/tracing/envoy.yaml`
//! with Envoy's own OpenTelemetry tracer.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use portcullis::proto::decision_service_client::DecisionServiceClient;
use portcullis::proto::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use portcullis::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use portcullis::proto::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use serde_json::Value;
use support::server::Server;

/// Longest wait for spans to arrive (Envoy's tracer flushes every 5 s).
const SPAN_WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The OTLP receiver

/// A span as received, with the `service.name` of its resource.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    span: Span,
}

impl Got {
    fn trace(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    fn attr(&self, key: &str) -> Option<String> {
        let kv = self.span.attributes.iter().find(|kv| kv.key == key)?;
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            any_value::Value::IntValue(i) => Some(i.to_string()),
            any_value::Value::BoolValue(b) => Some(b.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

type Spans = Arc<Mutex<Vec<Got>>>;

fn collect(spans: &Spans, request: ExportTraceServiceRequest) {
    let mut all = spans.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                all.push(Got {
                    service: service.clone(),
                    span,
                });
            }
        }
    }
}

struct Collector(Spans);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        collect(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP receiver on a loopback port: gRPC, or HTTP/protobuf at `/v1/traces`.
struct Receiver {
    addr: SocketAddr,
    spans: Spans,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    async fn grpc() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Spans::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = TraceServiceServer::new(Collector(spans.clone()));
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await;
        });
        Receiver {
            addr,
            spans,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn http() -> Receiver {
        use prost::Message as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Spans::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let sink = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(request) => {
                            collect(&sink, request);
                            (
                                axum::http::StatusCode::OK,
                                ExportTraceServiceResponse::default().encode_to_vec(),
                            )
                        }
                        Err(_) => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
                    }
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Receiver {
            addr,
            spans,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans once `done` holds for them; panics with what arrived after [`SPAN_WAIT`].
    async fn wait_for(&self, what: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let deadline = Instant::now() + SPAN_WAIT;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not received within {SPAN_WAIT:?}; received: {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `decide` span of decision `id`, once it arrived.
    async fn decide_span(&self, id: &str) -> Got {
        let spans = self
            .wait_for(&format!("the span of decision {id}"), |s| {
                s.iter().any(|g| is_decision(g, id))
            })
            .await;
        spans.into_iter().find(|g| is_decision(g, id)).unwrap()
    }

    /// Stops listening; the port refuses connections from then on.
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn is_decision(g: &Got, id: &str) -> bool {
    g.span.name == "decide" && g.attr("portcullis.decision.id").as_deref() == Some(id)
}

// ---------------------------------------------------------------------------------------------
// Portcullis and its clients

fn portcullis(extra: &[&str]) -> Server {
    let mut args = vec!["--jwks-start-timeout", "0s"];
    args.extend_from_slice(extra);
    Server::start(&support::fixtures().join("policies"), &args)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `/v1/authorize` for `url` with `headers`; the status and the decision id.
async fn authorize(server: &Server, url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = http()
        .get(server.http_url("/v1/authorize"))
        .header("x-original-method", "GET")
        .header("x-original-url", url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let id = response
        .headers()
        .get("x-decision-id")
        .expect("every decision has an id")
        .to_str()
        .unwrap()
        .to_owned();
    (response.status().as_u16(), id)
}

/// An ext_authz Check for `https://api.test{path}` with `headers` in the checked request and
/// `metadata` on the gRPC call; the HTTP status and the decision id.
async fn check(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
    metadata: &[(&'static str, &str)],
) -> (i32, String) {
    let channel = tonic::transport::Channel::from_shared(server.grpc_url())
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    scheme: "https".into(),
                    host: "api.test".into(),
                    path: path.into(),
                    headers: headers
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    });
    for (name, value) in metadata {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    let response = AuthorizationClient::new(channel)
        .check(request)
        .await
        .unwrap()
        .into_inner();
    use portcullis::proto::envoy::service::auth::v3::check_response::HttpResponse;
    match response.http_response.unwrap() {
        HttpResponse::DeniedResponse(d) => {
            let id = d
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == "x-decision-id")
                .unwrap()
                .value
                .clone();
            (d.status.unwrap().code, id)
        }
        HttpResponse::OkResponse(ok) => {
            let id = ok
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == "x-decision-id")
                .unwrap()
                .value
                .clone();
            (200, id)
        }
    }
}

async fn record(server: &Server, id: &str) -> Value {
    serde_json::from_str(&server.get_text(&format!("/v1/decisions/{id}")).await).unwrap()
}

async fn listed(server: &Server, query: &str) -> Vec<String> {
    let listing: Value =
        serde_json::from_str(&server.get_text(&format!("/v1/decisions?{query}")).await).unwrap();
    listing["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A W3C traceparent for a fresh trace; `sampled` sets the flag.
fn traceparent(trace: &str, span: &str, sampled: bool) -> String {
    format!("00-{trace}-{span}-{}", if sampled { "01" } else { "00" })
}

/// A distinct trace id per call within a test run.
fn trace_id(n: u8) -> String {
    let pid = std::process::id();
    format!("{pid:08x}{:024x}", u128::from(n) << 64 | 0xabc)
}

const ITEM: &str = "https://api.test/app/v1/items/7";

// ---------------------------------------------------------------------------------------------
// Context in, spans out, links both ways

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calls_trace_context_is_the_parent_wherever_the_gateway_puts_it() {
    let receiver = Receiver::grpc().await;
    let server = portcullis(&["--otlp-endpoint", &receiver.url()]);
    let (t1, t2, t3, t4) = (trace_id(1), trace_id(2), trace_id(3), trace_id(4));
    let s1 = "00f067aa0ba902b7";

    // gRPC metadata (Envoy's tracer) over the checked request's headers.
    let tp1 = traceparent(&t1, s1, true);
    let tp2 = traceparent(&t2, "1111111111111111", true);
    let (status, by_metadata) = check(
        &server,
        "/app/v1/items/7",
        &[("traceparent", &tp2)],
        &[("traceparent", &tp1), ("tracestate", "vendor=x")],
    )
    .await;
    assert_eq!(status, 401);
    let span = receiver.decide_span(&by_metadata).await;
    assert_eq!((span.trace(), span.parent()), (t1.clone(), s1.to_owned()));
    assert_eq!(span.service, "portcullis");
    assert_eq!(span.span.trace_state, "vendor=x");

    // The checked request's headers, when the metadata has none.
    let (_, by_header) = check(&server, "/app/v1/items/7", &[("traceparent", &tp2)], &[]).await;
    let span = receiver.decide_span(&by_header).await;
    assert_eq!(
        (span.trace(), span.parent()),
        (t2.clone(), "1111111111111111".into())
    );

    // /v1/authorize with B3 single-header.
    let b3 = format!("{t3}-2222222222222222-1");
    let (_, by_b3) = authorize(&server, ITEM, &[("b3", &b3)]).await;
    let span = receiver.decide_span(&by_b3).await;
    assert_eq!(
        (span.trace(), span.parent()),
        (t3.clone(), "2222222222222222".into())
    );

    // traceparent over b3 in the same headers.
    let tp4 = traceparent(&t4, "3333333333333333", true);
    let (_, both) = authorize(&server, ITEM, &[("b3", &b3), ("traceparent", &tp4)]).await;
    assert_eq!(receiver.decide_span(&both).await.trace(), t4);

    // The decision's attributes; the query's values redacted.
    let token = support::app_token(serde_json::json!({}));
    let bearer = format!("Bearer {token}");
    let (status, allowed) = authorize(
        &server,
        &format!("{ITEM}?access_token=s3cr3t-value&page=2"),
        &[("authorization", &bearer), ("traceparent", &tp4)],
    )
    .await;
    assert_eq!(status, 200);
    let span = receiver.decide_span(&allowed).await;
    let attr = |k: &str| {
        span.attr(k)
            .unwrap_or_else(|| panic!("no {k} in {span:#?}"))
    };
    assert_eq!(attr("http.request.method"), "GET");
    assert_eq!(
        attr("url.full"),
        format!("{ITEM}?access_token=REDACTED&page=REDACTED")
    );
    assert_eq!(attr("portcullis.decision.outcome"), "allow");
    assert_eq!(attr("portcullis.decision.status"), "200");
    assert_eq!(attr("portcullis.decision.service"), "app");
    assert_eq!(attr("portcullis.transport"), "http");
    assert!(span.attr("portcullis.decision.operation").is_some());
    assert!(span.attr("portcullis.decision.policy_revision").is_some());
    assert_eq!(span.span.kind, 2, "a server span");
    for got in receiver.spans() {
        let text = format!("{:?}", got.span);
        assert!(
            !text.contains("s3cr3t-value") && !text.contains(&token),
            "a secret in {text}"
        );
    }

    // The record keeps the trace and span ids, and the trace id finds it.
    let kept = record(&server, &by_metadata).await;
    let span = receiver.decide_span(&by_metadata).await;
    assert_eq!(kept["traceId"], t1.as_str());
    assert_eq!(kept["spanId"], span.id().as_str());
    assert_eq!(
        listed(&server, &format!("traceId={t1}")).await,
        vec![by_metadata.clone()]
    );
    assert_eq!(
        listed(&server, &format!("traceId={t2}")).await,
        vec![by_header.clone()]
    );
    let bad = http()
        .get(server.http_url("/v1/decisions?traceId=xyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // And through gRPC's ListDecisions.
    let channel = tonic::transport::Channel::from_shared(server.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let found = DecisionServiceClient::new(channel)
        .list_decisions(portcullis::proto::ListDecisionsRequest {
            trace_id: t3.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .decisions;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, by_b3);
    assert_eq!(found[0].trace_id, t3);
    assert_eq!(found[0].span_id.len(), 16);

    // The audit line joins logs and traces.
    let log = server
        .wait_for_log(&format!("\"decision_id\":\"{by_metadata}\""))
        .await;
    let line = log.lines().find(|l| l.contains(&by_metadata)).unwrap();
    let line: Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["fields"]["trace_id"], t1.as_str());

    // The latency histogram offers the trace ids as exemplars.
    let metrics = server.get_text("/metrics").await;
    let exemplar = metrics
        .lines()
        .find(|l| {
            l.starts_with("portcullis_decision_duration_seconds_bucket")
                && l.contains(" # {trace_id=\"")
        })
        .unwrap_or_else(|| panic!("no exemplar in:\n{metrics}"));
    let id = exemplar.split("trace_id=\"").nth(1).unwrap();
    assert!(
        [&t1, &t2, &t3, &t4]
            .iter()
            .any(|t| id.starts_with(t.as_str())),
        "{exemplar}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_context_is_ignored_and_the_decision_is_a_root_span() {
    let receiver = Receiver::grpc().await;
    let server = portcullis(&["--otlp-endpoint", &receiver.url()]);
    let (plain, _) = authorize(&server, ITEM, &[]).await;
    for bad in [
        "00-not-a-trace-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    ] {
        let (status, id) = authorize(&server, ITEM, &[("traceparent", bad), ("b3", "junk")]).await;
        assert_eq!(status, plain, "{bad:?} changed the decision");
        let span = receiver.decide_span(&id).await;
        assert_eq!(span.parent(), "", "{bad:?}: a root span");
        assert_eq!(span.trace().len(), 32);
        assert!(!bad.contains(&span.trace()[..8]));
        // A sampled root span: the record leads to it.
        assert_eq!(record(&server, &id).await["traceId"], span.trace().as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_parent_is_followed_and_denials_can_be_forced_in() {
    let receiver = Receiver::grpc().await;
    let plain = portcullis(&["--otlp-endpoint", &receiver.url()]);
    let forcing = portcullis(&[
        "--otlp-endpoint",
        &receiver.url(),
        "--otlp-always-sample-denials",
    ]);
    let unsampled = |n| traceparent(&trace_id(n), "4444444444444444", false);
    let token = support::app_token(serde_json::json!({}));
    let bearer = format!("Bearer {token}");

    let (_, plain_deny) = authorize(&plain, ITEM, &[("traceparent", &unsampled(10))]).await;
    let (status, forced_deny) = authorize(&forcing, ITEM, &[("traceparent", &unsampled(11))]).await;
    assert_eq!(status, 401);
    let (status, forced_allow) = authorize(
        &forcing,
        ITEM,
        &[("traceparent", &unsampled(12)), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(status, 200);
    // Spans are exported in order: once these markers arrive, the others would have too.
    let sampled = traceparent(&trace_id(13), "5555555555555555", true);
    let (_, mark_plain) = authorize(&plain, ITEM, &[("traceparent", &sampled)]).await;
    let (_, mark_forcing) = authorize(&forcing, ITEM, &[("traceparent", &sampled)]).await;
    receiver.decide_span(&mark_plain).await;
    receiver.decide_span(&mark_forcing).await;

    let spans = receiver.spans();
    assert!(!spans.iter().any(|g| is_decision(g, &plain_deny)));
    assert!(!spans.iter().any(|g| is_decision(g, &forced_allow)));
    // The forced denial: a root span of its own trace, linked to the unsampled parent.
    let forced = spans.iter().find(|g| is_decision(g, &forced_deny)).unwrap();
    assert_eq!(forced.parent(), "");
    assert_ne!(forced.trace(), trace_id(11));
    assert_eq!(forced.span.links.len(), 1);
    assert_eq!(hex(&forced.span.links[0].trace_id), trace_id(11));
    assert_eq!(hex(&forced.span.links[0].span_id), "4444444444444444");
    // Records keep the incoming trace id, exported or not.
    assert_eq!(
        record(&plain, &plain_deny).await["traceId"],
        trace_id(10).as_str()
    );
    assert_eq!(record(&plain, &plain_deny).await.get("spanId"), None);
    assert_eq!(
        record(&forcing, &forced_allow).await["traceId"],
        trace_id(12).as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_trace_context_are_sampled_at_the_ratio() {
    let receiver = Receiver::grpc().await;
    let half = portcullis(&["--otlp-endpoint", &receiver.url(), "--otlp-sample", "0.5"]);
    let none = portcullis(&["--otlp-endpoint", &receiver.url(), "--otlp-sample", "0"]);
    const CALLS: usize = 200;
    let mut halves = Vec::new();
    for _ in 0..CALLS {
        halves.push(authorize(&half, ITEM, &[]).await.1);
    }
    let mut nones = Vec::new();
    for _ in 0..20 {
        nones.push(authorize(&none, ITEM, &[]).await.1);
    }
    // A caller's sampled context is followed whatever the ratio; spans are exported in
    // order, so once these markers arrive the others would have too.
    let sampled = traceparent(&trace_id(20), "6666666666666666", true);
    let (_, mark_half) = authorize(&half, ITEM, &[("traceparent", &sampled)]).await;
    let (_, mark_none) = authorize(&none, ITEM, &[("traceparent", &sampled)]).await;
    receiver.decide_span(&mark_half).await;
    receiver.decide_span(&mark_none).await;

    let spans = receiver.spans();
    let exported = |ids: &[String]| {
        ids.iter()
            .filter(|id| spans.iter().any(|g| is_decision(g, id)))
            .cloned()
            .collect::<Vec<_>>()
    };
    let half_exported = exported(&halves);
    // Binomial(200, 0.5): outside 60..=140 once in about 10^8 runs.
    assert!(
        (60..=140).contains(&half_exported.len()),
        "{} of {CALLS} exported at ratio 0.5",
        half_exported.len()
    );
    assert_eq!(
        exported(&nones),
        Vec::<String>::new(),
        "ratio 0 exports no root"
    );
    // An exported root's record keeps its trace; an unsampled root's has none.
    let kept = record(&half, &half_exported[0]).await;
    assert_eq!(kept["traceId"].as_str().map(str::len), Some(32));
    let dropped = halves
        .iter()
        .find(|id| !half_exported.contains(id))
        .unwrap();
    assert_eq!(record(&half, dropped).await.get("traceId"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_round_trip_of_a_rate_limit_is_a_child_of_the_decision_only_when_sampled() {
    let Some(redis) = support::redis::Redis::start() else {
        return;
    };
    let receiver = Receiver::grpc().await;
    let url = redis.url();
    let server = portcullis(&[
        "--otlp-endpoint",
        &receiver.url(),
        "--trace-store",
        &url,
        "--redis-timeout",
        "2s",
    ]);
    // `quota` is limited per subject (2 a minute): one call each, far from the limit.
    let quota = "https://api.test/app/v1/quota";
    let bearer = |sub: &str| {
        let claims = serde_json::json!({"sub": sub, "scope": "items:read"});
        format!("Bearer {}", support::app_token(claims))
    };
    let sampled = traceparent(&trace_id(30), "7777777777777777", true);
    let unsampled = traceparent(&trace_id(31), "8888888888888888", false);
    let (status, counted) = authorize(
        &server,
        quota,
        &[
            ("traceparent", &sampled),
            ("authorization", &bearer("traced.ann")),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = authorize(
        &server,
        quota,
        &[
            ("traceparent", &unsampled),
            ("authorization", &bearer("untraced.bo")),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let marker = traceparent(&trace_id(32), "9999999999999999", true);
    let (_, mark) = authorize(&server, ITEM, &[("traceparent", &marker)]).await;
    let decide = receiver.decide_span(&counted).await;
    receiver.decide_span(&mark).await;

    let round_trips: Vec<Got> = (receiver.spans().into_iter())
        .filter(|g| g.span.name == "redis rate limit")
        .collect();
    // The unsampled decision's round trip is not a root span of its own.
    assert_eq!(round_trips.len(), 1, "{round_trips:#?}");
    assert_eq!(round_trips[0].trace(), trace_id(30));
    assert_eq!(round_trips[0].parent(), decide.id());
    assert_eq!(
        round_trips[0].attr("db.system.name").as_deref(),
        Some("redis")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_receiver_stopped_decisions_keep_flowing_and_drops_are_counted() {
    let mut receiver = Receiver::grpc().await;
    let server = portcullis(&["--otlp-endpoint", &receiver.url()]);
    let (_, first) = authorize(&server, ITEM, &[]).await;
    receiver.decide_span(&first).await;
    receiver.stop().await;

    let mut failures = 0;
    for _ in 0..300 {
        match http()
            .get(server.http_url("/v1/authorize"))
            .header("x-original-method", "GET")
            .header("x-original-url", ITEM)
            .send()
            .await
        {
            Ok(r) if r.status() == 401 => {}
            _ => failures += 1,
        }
    }
    assert_eq!(failures, 0);
    let deadline = Instant::now() + SPAN_WAIT;
    loop {
        let metrics = server.get_text("/metrics").await;
        let dropped: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("portcullis_otlp_spans_dropped_total "))
            .unwrap_or_else(|| panic!("no drop counter in:\n{metrics}"))
            .trim()
            .parse()
            .unwrap();
        if dropped > 0.0 {
            assert!(dropped <= 300.0, "{dropped} dropped of 300");
            break;
        }
        assert!(Instant::now() < deadline, "no drop counted:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Still deciding.
    assert_eq!(authorize(&server, ITEM, &[]).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported_and_the_record_keeps_the_trace_id() {
    let receiver = Receiver::grpc().await;
    // The receiver's address in an unrelated variable: nothing may find it but the flag.
    let server = support::server::Server::start_with_env(
        &support::fixtures().join("policies"),
        &["--jwks-start-timeout", "0s"],
        &[("PORTCULLIS_UNRELATED_COLLECTOR", &receiver.url())],
    );
    let t = trace_id(20);
    let (_, id) = authorize(
        &server,
        ITEM,
        &[("traceparent", &traceparent(&t, "6666666666666666", true))],
    )
    .await;
    let kept = record(&server, &id).await;
    assert_eq!(kept["traceId"], t.as_str());
    assert_eq!(kept.get("spanId"), None, "no span was made");
    assert_eq!(
        listed(&server, &format!("traceId={t}")).await,
        vec![id.clone()]
    );
    let metrics = server.get_text("/metrics").await;
    assert!(metrics.contains(&format!("trace_id=\"{t}\"")), "{metrics}");
    // Longer than the export interval (500 ms) several times over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(receiver.spans().is_empty(), "{:#?}", receiver.spans());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_over_http_protobuf_when_asked() {
    let receiver = Receiver::http().await;
    let server = portcullis(&[
        "--otlp-endpoint",
        &receiver.url(),
        "--otlp-protocol",
        "http/protobuf",
        "--otlp-service-name",
        "pdp-eu",
    ]);
    // The URL alone says so too, through the standard variables.
    let by_url = Server::start_with_env(
        &support::fixtures().join("policies"),
        &["--jwks-start-timeout", "0s"],
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("{}/v1/traces", receiver.url()),
            ),
            ("OTEL_SERVICE_NAME", "pdp-us"),
        ],
    );
    let (_, id) = authorize(&by_url, ITEM, &[]).await;
    assert_eq!(receiver.decide_span(&id).await.service, "pdp-us");
    let t = trace_id(30);
    let (_, id) = authorize(
        &server,
        ITEM,
        &[("traceparent", &traceparent(&t, "7777777777777777", true))],
    )
    .await;
    let span = receiver.decide_span(&id).await;
    assert_eq!(span.trace(), t);
    assert_eq!(span.service, "pdp-eu");
}

// ---------------------------------------------------------------------------------------------
// Through a real Envoy with its OpenTelemetry tracer

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_envoy_is_one_trace_with_the_decision_inside_envoys_ext_authz_span() {
    let Some(envoy) = support::gateway::envoy() else {
        return;
    };
    let receiver = Receiver::grpc().await;
    let server = portcullis(&["--otlp-endpoint", &receiver.url()]);
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = (free_port(), free_port());
    let mut config = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tracing/envoy.yaml"),
    )
    .unwrap();
    for (from, to) in [
        (8443, listen),
        (9901, admin),
        (9000, free_port()),
        (50051, server.grpc.port()),
        (4317, receiver.addr.port()),
    ] {
        let from = format!("port_value: {from}");
        assert!(config.contains(&from), "{from} in the example");
        config = config.replace(&from, &format!("port_value: {to}"));
    }
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(envoy);
    command
        .arg("-c")
        .arg(&path)
        .args(["--disable-hot-restart", "--concurrency", "1"])
        .args(["--log-level", "info"])
        .stdout(Stdio::null());
    let _envoy = support::gateway::Proc::spawn("envoy", &mut command, dir.path().join("envoy.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http()
            .get(format!("http://127.0.0.1:{admin}/ready"))
            .send()
            .await
            && r.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "envoy not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // No token: Portcullis denies with 401, and Envoy returns it.
    let response = http()
        .get(format!("http://127.0.0.1:{listen}/app/v1/items/7"))
        .header("host", "api.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let id = response.headers()["x-decision-id"]
        .to_str()
        .unwrap()
        .to_owned();

    let decide = receiver.decide_span(&id).await;
    let trace = decide.trace();
    let spans = receiver
        .wait_for("Envoy's spans of the same trace", |s| {
            s.iter()
                .any(|g| g.service == "envoy" && g.id() == decide.parent())
                && s.iter()
                    .any(|g| g.service == "envoy" && g.trace() == trace && g.parent().is_empty())
        })
        .await;
    let ext_authz = spans
        .iter()
        .find(|g| g.service == "envoy" && g.id() == decide.parent())
        .unwrap();
    assert_eq!(ext_authz.trace(), trace);
    assert!(
        ext_authz.span.name.contains("Authorization"),
        "the parent is Envoy's ext_authz call: {:#?}",
        ext_authz.span
    );
    assert_eq!(ext_authz.span.kind, 3, "a client span");
    let ingress = spans
        .iter()
        .find(|g| g.service == "envoy" && g.trace() == trace && g.parent().is_empty())
        .unwrap();
    assert_eq!(
        ext_authz.parent(),
        ingress.id(),
        "ext_authz inside the request's span"
    );
    assert_eq!(decide.attr("url.full").as_deref(), Some(ITEM));
    assert_eq!(
        decide.attr("portcullis.transport").as_deref(),
        Some("ext_authz")
    );
    assert_eq!(
        decide.attr("portcullis.decision.outcome").as_deref(),
        Some("deny")
    );

    let kept = record(&server, &id).await;
    assert_eq!(kept["traceId"], trace.as_str());
    assert_eq!(kept["spanId"], decide.id().as_str());
    assert_eq!(listed(&server, &format!("traceId={trace}")).await, vec![id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sideband_calls_headers_carry_its_trace_context() {
    let receiver = Receiver::grpc().await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("sideband.secrets");
    std::fs::write(&secrets, "kit-secret-0123456789abcdef\n").unwrap();
    let server = portcullis(&[
        "--otlp-endpoint",
        &receiver.url(),
        "--sideband-secret-file",
        secrets.to_str().unwrap(),
    ]);
    let t = trace_id(40);
    let body = serde_json::json!({
        "source_ip": "10.0.0.7",
        "source_port": "40000",
        "method": "GET",
        "url": "https://api.test:443/app/v1/items/7",
        "headers": [{"host": "api.test"}, {"traceparent": traceparent(&t, "8888888888888888", true)}],
        "http_version": "1.1",
    });
    let answer: Value = http()
        .post(server.http_url("/sideband/request"))
        .header("CLIENT-TOKEN", "kit-secret-0123456789abcdef")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let denial: Value =
        serde_json::from_str(answer["response"]["body"].as_str().expect("a denial")).unwrap();
    let id = denial["id"].as_str().unwrap();
    let span = receiver.decide_span(id).await;
    assert_eq!(
        (span.trace(), span.parent()),
        (t.clone(), "8888888888888888".into())
    );
    assert_eq!(
        span.attr("portcullis.transport").as_deref(),
        Some("sideband")
    );
    assert_eq!(record(&server, id).await["traceId"], t.as_str());
}
