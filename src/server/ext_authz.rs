//! Envoy's external authorization API (ext_authz v3, gRPC): a Check call becomes a decision,
//! the decision becomes Envoy's allow (`OkHttpResponse`) or deny (`DeniedHttpResponse`).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::AppState;
use crate::decision::{Decision, DecisionRequest};
use crate::proto::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use crate::proto::envoy::service::auth::v3::attribute_context::HttpRequest;
use crate::proto::envoy::service::auth::v3::authorization_server::Authorization;
use crate::proto::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response::HttpResponse,
};
use crate::proto::envoy::r#type::v3::HttpStatus;
use crate::proto::google::rpc;

pub struct ExtAuthz {
    pub state: Arc<AppState>,
}

/// `google.rpc.Code` values.
mod code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// The `google.rpc.Code` that fits a decision's HTTP status.
fn rpc_code(status: u16) -> i32 {
    match status {
        200..=299 => code::OK,
        400 => code::INVALID_ARGUMENT,
        401 => code::UNAUTHENTICATED,
        404 => code::NOT_FOUND,
        429 => code::RESOURCE_EXHAUSTED,
        503 => code::UNAVAILABLE,
        500..=599 => code::INTERNAL,
        _ => code::PERMISSION_DENIED,
    }
}

fn header(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        append: None,
        // Replace what the client sent under the same name (SPEC §2a: a client must not be
        // able to spoof `x-user-id`).
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: true,
    }
}

/// The request's headers, from the map or, when Envoy sends raw header lists, the list.
fn headers_of(http: &HttpRequest) -> Vec<(&str, &str)> {
    let mut headers: Vec<(&str, &str)> = http
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if let Some(map) = &http.header_map {
        for h in &map.headers {
            let value = if h.value.is_empty() {
                std::str::from_utf8(&h.raw_value).unwrap_or("")
            } else {
                h.value.as_str()
            };
            headers.push((h.key.as_str(), value));
        }
    }
    headers
}

/// The full URL of the checked request: `scheme://authority` and the path with its query.
/// A path that is not absolute (empty included) gives an empty URL, which the engine refuses
/// with 400 INVALID_REQUEST.
fn url_of(http: &HttpRequest) -> String {
    if !http.path.starts_with('/') {
        return String::new();
    }
    let scheme = if http.scheme.is_empty() {
        "http"
    } else {
        &http.scheme
    };
    format!("{scheme}://{}{}", http.host, http.path)
}

pub fn check_response(decision: &Decision) -> CheckResponse {
    let http_response = if decision.is_allowed() {
        let mut headers: Vec<HeaderValueOption> = decision
            .upstream_headers
            .iter()
            .map(|(n, v)| header(n, v))
            .collect();
        headers.push(header("x-decision-id", &decision.id));
        HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove: Vec::new(),
            response_headers_to_add: vec![header("x-decision-id", &decision.id)],
        })
    } else {
        HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(decision.status),
            }),
            headers: decision.headers.iter().map(|(n, v)| header(n, v)).collect(),
            body: decision
                .body
                .as_ref()
                .and_then(|b| serde_json::to_string(b).ok())
                .unwrap_or_default(),
        })
    };
    CheckResponse {
        // The gateway needs only the code; the reason is in the denial's body and the
        // decision, so the message stays short on every answer Envoy has to decode.
        status: Some(rpc::Status {
            code: rpc_code(decision.status),
            message: decision.detail_code().unwrap_or_default().to_owned(),
            details: Vec::new(),
        }),
        http_response: Some(http_response),
        dynamic_metadata: None,
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        // Envoy's tracer puts its ext_authz span's context in the call's metadata.
        let metadata = super::otel::metadata_context(request.metadata());
        let check = request.get_ref();
        let no_attributes = Default::default();
        let attributes = check.attributes.as_ref().unwrap_or(&no_attributes);
        let client = attributes
            .source
            .as_ref()
            .and_then(|peer| peer.address.as_ref())
            .and_then(|address| match &address.address {
                Some(crate::proto::envoy::config::core::v3::address::Address::SocketAddress(s)) => {
                    super::parse_client(&s.address)
                }
                _ => None,
            });
        let empty = HttpRequest::default();
        let http = attributes
            .request
            .as_ref()
            .and_then(|r| r.http.as_ref())
            .unwrap_or(&empty);
        let url = url_of(http);
        let headers = headers_of(http);
        // Envoy fills `source.certificate` (URL-encoded PEM) only with
        // `include_peer_certificate: true` and a client that presented one over mutual TLS.
        let client_cert = attributes
            .source
            .as_ref()
            .map(|peer| peer.certificate.as_str())
            .filter(|c| !c.is_empty());
        let decision = self
            .state
            .decide_traced(
                &DecisionRequest {
                    method: &http.method,
                    url: &url,
                    headers: &headers,
                    client,
                    client_cert,
                },
                "ext_authz",
                &metadata,
            )
            .await;
        Ok(Response::new(check_response(&decision)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_fitting_rpc_codes() {
        assert_eq!(rpc_code(200), code::OK);
        assert_eq!(rpc_code(400), code::INVALID_ARGUMENT);
        assert_eq!(rpc_code(401), code::UNAUTHENTICATED);
        assert_eq!(rpc_code(403), code::PERMISSION_DENIED);
        assert_eq!(rpc_code(404), code::NOT_FOUND);
        assert_eq!(rpc_code(405), code::PERMISSION_DENIED);
        assert_eq!(rpc_code(429), code::RESOURCE_EXHAUSTED);
        assert_eq!(rpc_code(500), code::INTERNAL);
        assert_eq!(rpc_code(503), code::UNAVAILABLE);
    }

    #[test]
    fn a_relative_or_empty_path_gives_no_url() {
        let mut http = HttpRequest {
            scheme: "https".into(),
            host: "api.test".into(),
            path: String::new(),
            ..Default::default()
        };
        assert_eq!(url_of(&http), "");
        http.path = "items".into();
        assert_eq!(url_of(&http), "");
        http.path = "/items?x=1".into();
        assert_eq!(url_of(&http), "https://api.test/items?x=1");
    }
}
