//! The HTTP listener (SPEC §5): `/v1/authorize` for nginx `auth_request` and other HTTP
//! gateway kits, the Sideband API (`super::sideband`), the decisions API, the
//! recent-decisions page, health and Prometheus metrics.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use super::AppState;
use crate::decision::{Decision, DecisionRequest, Outcome, TraceLink};
use crate::trace::{DEFAULT_LIST_LIMIT, DecisionFilter, MAX_LIST_LIMIT};

pub fn router(state: Arc<AppState>) -> Router {
    // What can hold personal data: recent decisions and metrics (see `super::admin`).
    let admin = Router::new()
        .route("/v1/decisions", get(list_decisions))
        .route("/v1/decisions/{id}", get(get_decision))
        .route("/v1/overview", get(overview))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin_guard,
        ));
    Router::new()
        .route("/v1/authorize", any(authorize))
        .route("/v1/authorize/{*rest}", any(authorize))
        .route("/sideband/request", post(super::sideband::request))
        .route("/sideband/response", post(super::sideband::response))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(admin)
        .merge(super::ui::routes())
        .with_state(state)
}

async fn admin_guard(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match state.admin_http.check(authorization) {
        Ok(()) => next.run(request).await,
        Err(denial) => {
            let (status, code) = match denial {
                super::admin::AdminDenial::BadToken => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
                super::admin::AdminDenial::NotConfigured => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            };
            let mut response =
                api_error(status, code, "Authorization", denial.message().to_owned());
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
                );
            }
            response
        }
    }
}

pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    transport: Arc<super::transport::Transport>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = state.metrics.clone();
    super::transport::serve_http(listener, router(state), transport, metrics, shutdown).await
}

/// An API error in the shape of the SPEC §3 body (without a decision id: no decision was made).
fn api_error(status: StatusCode, code: &str, target: &str, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "code": code, "message": message, "target": target, "details": [] }).to_string(),
    )
        .into_response()
}

pub(super) fn json_response(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.into(),
    )
        .into_response()
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The URL of the original request: `X-Original-URL`, or the `X-Forwarded-Proto`, `-Host`
/// and `-Uri` triple. Empty when neither is there, which the engine refuses with 400.
fn original_url(headers: &HeaderMap) -> String {
    if let Some(url) = header_text(headers, "x-original-url") {
        return url.to_owned();
    }
    match (
        header_text(headers, "x-forwarded-proto"),
        header_text(headers, "x-forwarded-host"),
        header_text(headers, "x-forwarded-uri"),
    ) {
        (Some(proto), Some(host), Some(uri)) => format!("{proto}://{host}{uri}"),
        _ => String::new(),
    }
}

/// nginx `auth_request` and other HTTP gateway kits: the decision as the answer itself.
async fn authorize(
    State(state): State<Arc<AppState>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let original_method = header_text(&headers, "x-original-method")
        .or_else(|| header_text(&headers, "x-forwarded-method"))
        .unwrap_or(method.as_str())
        .to_owned();
    let url = original_url(&headers);
    // The gateway names the client; the TCP peer here is the gateway itself.
    let client = header_text(&headers, "x-real-ip").and_then(super::parse_client);
    let owned: Vec<(&str, String)> = headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let pairs: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (*n, v.as_str())).collect();
    // Never the TLS peer certificate of this listener: that is the gateway's own.
    let client_cert = state.client_cert.as_ref().and_then(|config| {
        let value = header_text(&headers, config.name.as_str())?;
        match peer {
            Some(axum::Extension(axum::extract::ConnectInfo(addr))) if config.trusts(addr.ip()) => {
                Some(value)
            }
            _ => {
                tracing::debug!(peer = ?peer.as_ref().map(|p| p.0.0), header = %config.name, "client certificate header ignored: the peer is not a trusted gateway");
                None
            }
        }
    });
    let decision = state
        .decide(
            &DecisionRequest {
                method: &original_method,
                url: &url,
                headers: &pairs,
                client,
                client_cert,
            },
            "http",
        )
        .await;
    decision_response(&decision)
}

fn decision_response(decision: &Decision) -> Response {
    let status = StatusCode::from_u16(decision.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match (&decision.body, decision.outcome) {
        (Some(body), Outcome::Deny) => {
            json_response(status, serde_json::to_string(body).unwrap_or_default())
        }
        _ => status.into_response(),
    };
    let headers = response.headers_mut();
    let pairs = match decision.outcome {
        Outcome::Allow => &decision.upstream_headers,
        Outcome::Deny => &decision.headers,
    };
    for (name, value) in pairs.iter() {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::from_str(value)) {
            headers.insert(n, v);
        }
    }
    if let Ok(id) = HeaderValue::from_str(&decision.id) {
        headers.insert("x-decision-id", id);
    }
    response
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    service: Option<String>,
    outcome: Option<String>,
    status: Option<String>,
    subject: Option<String>,
    since: Option<String>,
    limit: Option<String>,
    /// Free text: a case-insensitive part of the URL, service, operation, subject or id.
    q: Option<String>,
    #[serde(rename = "traceId")]
    trace_id: Option<String>,
    /// `differs`: only decisions the shadow policy set decided differently.
    shadow: Option<String>,
    /// Only decisions before this time (RFC 3339, or Unix milliseconds): the paging cursor.
    until: Option<String>,
    /// `json` (the default, one object) or `ndjson` (one decision a line).
    format: Option<String>,
}

/// A query parameter of the decisions API that cannot be used: (parameter, message).
type BadParameter = (&'static str, String);

fn parse_list_query(q: ListQuery) -> Result<(DecisionFilter, usize), BadParameter> {
    let bad = |target: &'static str, message: String| (target, message);
    let outcome = match q.outcome.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(Outcome::parse(text).ok_or_else(|| {
            bad(
                "outcome",
                format!("`outcome` must be `allow` or `deny`, not `{text}`"),
            )
        })?),
    };
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match s.parse::<u16>() {
            Ok(n) if (100..=599).contains(&n) => Some(n),
            _ => {
                return Err(bad(
                    "status",
                    format!("`status` must be an HTTP status such as 403, not `{s}`"),
                ));
            }
        },
    };
    let since_millis = match q.since.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match humantime::parse_rfc3339_weak(s) {
            Ok(t) => Some(crate::time::unix_millis(t)),
            Err(_) => {
                return Err(bad(
                    "since",
                    format!(
                        "`since` must be an RFC 3339 time such as 2026-11-21T10:00:00Z, not `{s}`"
                    ),
                ));
            }
        },
    };
    let until_millis = match q.until.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match (s.parse::<i64>(), humantime::parse_rfc3339_weak(s)) {
            (Ok(millis), _) => Some(millis),
            (_, Ok(t)) => Some(crate::time::unix_millis(t)),
            _ => {
                return Err(bad(
                    "until",
                    format!("`until` must be an RFC 3339 time or Unix milliseconds, not `{s}`"),
                ));
            }
        },
    };
    let shadow_differs = match q.shadow.as_deref().filter(|s| !s.is_empty()) {
        None => false,
        Some("differs") => true,
        Some(s) => {
            return Err(bad(
                "shadow",
                format!("`shadow` can only be `differs`, not `{s}`"),
            ));
        }
    };
    let limit = match q.limit.as_deref().filter(|s| !s.is_empty()) {
        None => DEFAULT_LIST_LIMIT,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n >= 1 => n.min(MAX_LIST_LIMIT),
            _ => {
                return Err(bad(
                    "limit",
                    format!("`limit` must be a number from 1 to {MAX_LIST_LIMIT}, not `{s}`"),
                ));
            }
        },
    };
    let trace_id = match q.trace_id.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match TraceLink::parse_trace_id(s) {
            Some(id) => Some(id),
            None => {
                return Err(bad(
                    "traceId",
                    format!("`traceId` must be a W3C trace id (32 hex digits), not `{s}`"),
                ));
            }
        },
    };
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Ok((
        DecisionFilter {
            service: non_empty(q.service),
            outcome,
            status,
            subject: non_empty(q.subject),
            since_millis,
            until_millis,
            shadow_differs,
            text: non_empty(q.q),
            trace_id,
        },
        limit,
    ))
}

async fn list_decisions(
    State(state): State<Arc<AppState>>,
    Query(q): Query<ListQuery>,
) -> Response {
    let ndjson = match q.format.as_deref().filter(|s| !s.is_empty()) {
        None | Some("json") => false,
        Some("ndjson") => true,
        Some(other) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                "format",
                format!("`format` must be `json` or `ndjson`, not `{other}`"),
            );
        }
    };
    let (filter, limit) = match parse_list_query(q) {
        Ok(parsed) => parsed,
        Err((target, message)) => {
            return api_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", target, message);
        }
    };
    let listing = state.list_decisions(&filter, limit).await;
    let decisions: Vec<Decision> = listing.decisions.iter().map(|d| d.decision()).collect();
    if ndjson {
        let mut body = String::with_capacity(decisions.len() * 2048);
        for d in &decisions {
            body.push_str(&serde_json::to_string(d).unwrap_or_default());
            body.push('\n');
        }
        let mut response = (StatusCode::OK, body).into_response();
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-ndjson"),
        );
        // Said in a header, as the body is only decisions.
        if listing.shared == Some(false) {
            response.headers_mut().insert(
                "x-shared-store",
                http::HeaderValue::from_static("unavailable"),
            );
        }
        return response;
    }
    let body = match listing.shared {
        // Said in the answer, so that a short list is not mistaken for all there is.
        Some(false) => json!({ "decisions": decisions, "sharedStore": "unavailable" }),
        _ => json!({ "decisions": decisions }),
    };
    json_response(
        StatusCode::OK,
        serde_json::to_string(&body).unwrap_or_default(),
    )
}

async fn get_decision(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match state.get_decision(&id).await {
        Some(d) => json_response(
            StatusCode::OK,
            serde_json::to_string(&d.decision()).unwrap_or_default(),
        ),
        None => api_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "id",
            format!(
                "No decision `{id}` in the recent-decisions store: the id is unknown, or the decision was evicted."
            ),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct OverviewQuery {
    seconds: Option<String>,
}

/// The web page's overview: decisions per second, the rules and services that deny most,
/// the latency distribution (see `super::overview`), and the trace UI to link trace ids to.
async fn overview(State(state): State<Arc<AppState>>, Query(q): Query<OverviewQuery>) -> Response {
    let max = super::overview::WINDOW_SECONDS;
    let seconds = match q.seconds.as_deref().filter(|s| !s.is_empty()) {
        None => 300,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST",
                    "seconds",
                    format!("`seconds` must be a number from 1 to {max}, not `{s}`"),
                );
            }
        },
    };
    let now = crate::time::unix_millis(std::time::SystemTime::now()).div_euclid(1000);
    let snapshot = state.overview.snapshot(now, seconds, 10);
    let mut body = serde_json::to_value(&snapshot).unwrap_or_default();
    body["traceUiUrl"] = json!(state.tracing.trace_ui_url);
    json_response(StatusCode::OK, body.to_string())
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready once policies are loaded (they are before the listeners open). A failed reload
/// does not make the server unready — the last good set serves — but is reported here.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.is_draining() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "ready": false, "draining": true }).to_string(),
        );
    }
    if !state.is_ready() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "ready": false, "waitingForKeySets": state.keys.missing() }).to_string(),
        );
    }
    let policies = state.policies();
    let status = state.reload_status();
    let failure = status.failure.as_ref().map(|f| {
        json!({
            "revision": &*f.revision,
            "at": crate::time::format_unix_millis(f.at_millis),
            "errors": f.errors,
        })
    });
    json_response(
        StatusCode::OK,
        json!({
            "ready": true,
            "policyRevision": policies.revision(),
            "services": policies.services.len(),
            "lastReloadSuccess": crate::time::format_unix_millis(status.last_success_millis),
            "failedReload": failure,
        })
        .to_string(),
    )
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.refresh_gauges();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
