//! The Sideband API of the PingOne Authorize gateway integration kits (SPEC §5a):
//! `POST /sideband/request` decides on the request a kit describes in JSON and answers with
//! the request to forward (allow) or the response to send (deny, in a `response` member);
//! `POST /sideband/response` hands back the upstream's response for the kit to send.
//!
//! Kits apply what they get back: a header missing from an allow's echo is removed upstream,
//! a changed `method`, `url` or `body` is applied. So every member the kit sent is echoed
//! byte for byte from its own JSON (never re-serialised), and only `headers` is rebuilt.
//! Every call needs one of the shared secrets, checked before the body is read.
//!
//! The files: `secrets.rs` holds and checks the shared secrets, `read.rs` reads a call's JSON
//! (and says which member is wrong), `echo.rs` writes the answers; this file serves the two
//! endpoints.

mod echo;
mod read;
mod secrets;

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;

use self::echo::{allow_body, deny_body, response_body};
use self::read::{Unreadable, read_access, read_response};
pub use self::secrets::{SecretDenial, SidebandSecrets};
use super::AppState;
use super::http::json_response;
use crate::decision::{Decision, DecisionRequest, Outcome};

/// The secret header the kits use unless configured otherwise.
pub const DEFAULT_SECRET_HEADER: &str = "CLIENT-TOKEN";

/// The `transport` label of sideband decisions in metrics and the audit log.
const TRANSPORT: &str = "sideband";

/// How the Sideband API is set up; the `serve` command fills it from flags.
#[derive(Debug, Clone)]
pub struct SidebandConfig {
    /// One secret a line; any of them is accepted.
    pub secret_file: PathBuf,
    /// The request header that carries the secret.
    pub secret_header: HeaderName,
}

/// A call Portcullis cannot use, answered with the decision's status and SPEC §3 body
/// (the kit turns it into a 502 for the client and logs the body's `message` and `id`).
fn refusal_response(decision: &Decision) -> Response {
    let status = StatusCode::from_u16(decision.status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = decision
        .body
        .as_ref()
        .and_then(|b| serde_json::to_string(b).ok())
        .unwrap_or_default();
    let mut response = json_response(status, body);
    if let Ok(id) = HeaderValue::from_str(&decision.id) {
        response.headers_mut().insert("x-decision-id", id);
    }
    response
}

/// An error with the SPEC §3 body and no decision id: no decision was made.
fn api_error(
    status: StatusCode,
    code: &str,
    detail: &str,
    target: &str,
    message: &str,
) -> Response {
    let body = serde_json::json!({
        "code": code,
        "message": message,
        "target": target,
        "details": [{ "code": detail, "target": target, "message": message }],
    });
    json_response(status, body.to_string())
}

/// The answer to a call that cannot go on, if it cannot: 404 when the Sideband API is off,
/// 401 when the secret is missing or wrong (counted, never recorded).
fn unadmitted(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let Some(secrets) = &state.sideband else {
        return Some(api_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "SIDEBAND_DISABLED",
            "url",
            "The Sideband API is off: start `portcullis serve` with `--sideband-secret-file FILE` to serve it.",
        ));
    };
    let denial = secrets.check(headers).err()?;
    state.metrics.count_refusal("http", denial.code());
    let name = secrets.header().as_str();
    let message = match denial {
        SecretDenial::Required => format!(
            "The call carries no shared secret: the gateway integration kit must send one of the secrets of `--sideband-secret-file` in the `{name}` header (its `secret_header_name`)."
        ),
        SecretDenial::Invalid => format!(
            "The shared secret in the `{name}` header is not one of those in `--sideband-secret-file`; check the kit's `shared_secret`."
        ),
    };
    Some(api_error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        denial.code(),
        name,
        &message,
    ))
}

/// Reads the body within the `--sideband-max-body` limit the listener applies.
async fn read_body(state: &AppState, body: Body) -> Result<axum::body::Bytes, Response> {
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => Ok(bytes),
        Err(e) => {
            // The listener's limit error, under the layers of body wrappers.
            let too_large =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| e.is::<http_body_util::LengthLimitError>());
            if too_large {
                state.metrics.count_refusal("http", "BODY_TOO_LARGE");
                Err(super::transport::sideband_body_too_large(
                    state.sideband_max_body,
                ))
            } else {
                Err(api_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST",
                    "MALFORMED_BODY",
                    "body",
                    "The request body could not be read to its end.",
                ))
            }
        }
    }
}

/// The body of a call that may go on, or the answer to one that may not.
async fn admitted_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, Response> {
    if let Some(answer) = unadmitted(state, headers) {
        return Err(answer);
    }
    read_body(state, body).await
}

/// The 400 of a call that cannot be used, recorded as a decision.
fn refuse(state: &AppState, (input, method, url): Unreadable) -> Response {
    let decision = state.refuse_input(
        &DecisionRequest {
            method: &method,
            url: &url,
            headers: &[],
            client: None,
            client_cert: None,
        },
        input,
        TRANSPORT,
    );
    refusal_response(&decision)
}

/// `POST /sideband/request`: the access phase.
pub(super) async fn request(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match admitted_body(&state, &headers, body).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let request = match read_access(&body) {
        Ok(request) => request,
        Err(unreadable) => return refuse(&state, unreadable),
    };
    let pairs: Vec<(&str, &str)> = request
        .headers
        .iter()
        .map(|h| (&*h.name, &*h.value))
        .collect();
    let decision = state
        .decide(
            &DecisionRequest {
                method: &request.method,
                url: &request.url,
                headers: &pairs,
                client: request.client,
                client_cert: request.client_cert.as_deref(),
            },
            TRANSPORT,
        )
        .await;
    // A URL that is no absolute http(s) URL is the kit's mistake, not the client's.
    if decision.detail_code() == Some("INVALID_URL") {
        return refusal_response(&decision);
    }
    let answer = match decision.outcome {
        Outcome::Allow => allow_body(&request, &decision),
        Outcome::Deny => deny_body(&request, &decision),
    };
    json_response(StatusCode::OK, answer)
}

/// `POST /sideband/response`: the upstream's response, echoed for the kit to send, with the
/// decision's id added; the decision's record gains the upstream's status.
pub(super) async fn response(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match admitted_body(&state, &headers, body).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    match read_response(&body) {
        Ok(read) => {
            if let Some(id) = &read.decision_id {
                state.set_upstream_status(id, read.status);
            }
            json_response(StatusCode::OK, response_body(&read))
        }
        Err(unreadable) => refuse(&state, unreadable),
    }
}
