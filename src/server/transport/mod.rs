//! How requests reach the handlers, for both listeners: TLS (rustls, optionally verifying
//! client certificates), the global concurrency limit that sheds load past it, the
//! per-request deadline, and the caps on headers, bodies and gRPC messages.
//!
//! Every refusal made here is a `Refusal`, which knows its HTTP status, its gRPC status and
//! its SPEC §3 body.

mod admission;
mod listen;
mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use serde_json::json;

pub(crate) use self::admission::Gate;
pub(crate) use self::listen::{serve_grpc, serve_http};
pub use self::tls::TlsError;

/// Limits and TLS of both listeners; the `serve` command fills it from flags.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Requests in progress at once over both listeners (health checks and metrics aside);
    /// past it, requests are refused at once (gRPC `RESOURCE_EXHAUSTED`, HTTP 503).
    pub max_concurrent_requests: usize,
    /// How long one request may take (gRPC `DEADLINE_EXCEEDED`, HTTP 503). A shorter
    /// `grpc-timeout` sent by the client applies instead.
    pub request_timeout: Duration,
    /// Total size of a request's header names and values.
    pub max_header_bytes: usize,
    /// Header fields in one request.
    pub max_headers: usize,
    /// Size of an HTTP request body (no endpoint but the Sideband API's reads one).
    pub max_body_bytes: usize,
    /// Size of a Sideband API call's body (`/sideband/*`, instead of `max_body_bytes`).
    pub max_sideband_body_bytes: usize,
    /// Size of one decoded gRPC request message.
    pub max_grpc_message: usize,
    /// Streams open at once on one HTTP/2 connection (both listeners).
    pub max_concurrent_streams: u32,
    /// Serve both listeners over TLS with these files.
    pub tls: Option<TlsFiles>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 1024,
            request_timeout: Duration::from_secs(5),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_body_bytes: 16 * 1024,
            max_sideband_body_bytes: 1024 * 1024,
            max_grpc_message: super::MAX_GRPC_MESSAGE,
            max_concurrent_streams: 256,
            tls: None,
        }
    }
}

/// PEM files of the server's TLS identity and, for mutual TLS, of the client CA.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

/// What [`TransportConfig`] becomes at bind time: TLS files loaded and checked, the
/// concurrency slots shared by both listeners.
#[derive(Debug)]
pub(crate) struct Transport {
    pub(crate) config: TransportConfig,
    pub(crate) gate: Arc<Gate>,
    pub(crate) tls: Option<tls::ServerTls>,
}

impl Transport {
    /// Fails when a TLS file cannot be read or does not hold a usable certificate or key.
    pub(crate) fn new(config: TransportConfig) -> Result<Self, TlsError> {
        let tls = config.tls.as_ref().map(tls::ServerTls::load).transpose()?;
        Ok(Self {
            gate: Arc::new(Gate::new(
                config.max_concurrent_requests,
                config.request_timeout,
            )),
            tls,
            config,
        })
    }
}

/// A request the transport refuses without deciding on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum Refusal {
    /// All `limit` concurrency slots are taken.
    Overloaded {
        limit: usize,
    },
    /// The request ran past its deadline.
    TimedOut {
        after: Duration,
    },
    TooManyHeaders {
        count: usize,
        limit: usize,
    },
    HeadersTooLarge {
        bytes: usize,
        limit: usize,
    },
    BodyTooLarge {
        bytes: u64,
        limit: usize,
    },
    /// A Sideband API call's body is past `--sideband-max-body`; `bytes` is 0 when the body
    /// was cut off while read (no `content-length`).
    SidebandBodyTooLarge {
        bytes: u64,
        limit: usize,
    },
}

/// Paths of the Sideband API, whose calls carry a body of their own limit and whose kits
/// expect 429 with `Retry-After` when Portcullis is busy.
pub(crate) fn is_sideband(path: &str) -> bool {
    path.starts_with("/sideband/")
}

/// The 413 of a Sideband API call whose body went past `limit` while it was read.
pub(crate) fn sideband_body_too_large(limit: usize) -> axum::response::Response {
    Refusal::SidebandBodyTooLarge { bytes: 0, limit }.http_response(true)
}

impl Refusal {
    /// The label of the refusal in metrics and the detail code of its body.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Refusal::Overloaded { .. } => "OVERLOADED",
            Refusal::TimedOut { .. } => "REQUEST_TIMEOUT",
            Refusal::TooManyHeaders { .. } => "TOO_MANY_HEADERS",
            Refusal::HeadersTooLarge { .. } => "HEADERS_TOO_LARGE",
            Refusal::BodyTooLarge { .. } | Refusal::SidebandBodyTooLarge { .. } => "BODY_TOO_LARGE",
        }
    }

    fn http_status(&self) -> StatusCode {
        match self {
            Refusal::Overloaded { .. } | Refusal::TimedOut { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Refusal::TooManyHeaders { .. } | Refusal::HeadersTooLarge { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Refusal::BodyTooLarge { .. } | Refusal::SidebandBodyTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
        }
    }

    /// (top-level code, target, top-level message, detail message)
    fn texts(&self) -> (&'static str, &'static str, &'static str, String) {
        const BUSY: &str = "Portcullis could not decide on this request in time; retry later.";
        const BAD: &str = "The request is too large for Portcullis to decide on.";
        match *self {
            Refusal::Overloaded { limit } => (
                "SERVICE_UNAVAILABLE",
                "request",
                BUSY,
                format!(
                    "All {limit} concurrency slots are taken, so the request was refused at once \
                     instead of queued; retry with backoff, add replicas, or raise \
                     `--max-concurrent-requests`."
                ),
            ),
            Refusal::TimedOut { after } => (
                "SERVICE_UNAVAILABLE",
                "request",
                BUSY,
                format!(
                    "The request did not finish within {} (`--request-timeout`); retry later.",
                    humantime::format_duration(after)
                ),
            ),
            Refusal::TooManyHeaders { count, limit } => (
                "INVALID_REQUEST",
                "headers",
                BAD,
                format!(
                    "The request has {count} header fields; at most {limit} are accepted \
                     (`--max-headers`). Drop headers the decision does not need."
                ),
            ),
            Refusal::HeadersTooLarge { bytes, limit } => (
                "INVALID_REQUEST",
                "headers",
                BAD,
                format!(
                    "The request's header fields take {bytes} bytes; at most {limit} are \
                     accepted (`--max-header-bytes`). Drop headers the decision does not need."
                ),
            ),
            Refusal::BodyTooLarge { bytes, limit } => (
                "INVALID_REQUEST",
                "body",
                BAD,
                format!(
                    "The request body has {bytes} bytes; at most {limit} are accepted \
                     (`--max-body-bytes`). No endpoint needs a body: gateways should not \
                     forward it."
                ),
            ),
            Refusal::SidebandBodyTooLarge { bytes, limit } => (
                "INVALID_REQUEST",
                "body",
                BAD,
                match bytes {
                    0 => format!(
                        "The Sideband API call's body is over {limit} bytes, the most accepted \
                         (`--sideband-max-body`); raise it for requests with large bodies."
                    ),
                    bytes => format!(
                        "The Sideband API call's body has {bytes} bytes; at most {limit} are \
                         accepted (`--sideband-max-body`); raise it for requests with large \
                         bodies."
                    ),
                },
            ),
        }
    }

    /// The SPEC §3 body (without a decision id: no decision was made). A busy Sideband API
    /// answers 429 `TOO_MANY_REQUESTS` instead of 503.
    fn body(&self, sideband: bool) -> String {
        let (mut code, target, message, detail) = self.texts();
        if sideband && self.is_busy() {
            code = "TOO_MANY_REQUESTS";
        }
        json!({
            "code": code,
            "message": message,
            "target": target,
            "details": [{ "code": self.reason(), "target": target, "message": detail }],
        })
        .to_string()
    }

    fn is_busy(&self) -> bool {
        matches!(self, Refusal::Overloaded { .. } | Refusal::TimedOut { .. })
    }

    /// The answer on the HTTP listener. For a Sideband API call (`sideband`), being busy
    /// is 429 with `Retry-After: 1`: the kits then pause calling for that long instead of
    /// failing the client's request with a 502.
    pub(crate) fn http_response(&self, sideband: bool) -> axum::response::Response {
        let mut response =
            axum::response::Response::new(axum::body::Body::from(self.body(sideband)));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if sideband && self.is_busy() {
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        } else {
            *response.status_mut() = self.http_status();
        }
        response
    }

    /// For Envoy's ext_authz, any gRPC error status (these included) makes Envoy answer
    /// with its `status_on_error` when `failure_mode_allow` is false: it fails closed.
    pub(crate) fn grpc_status(&self) -> tonic::Status {
        let (_, _, _, detail) = self.texts();
        match self {
            Refusal::Overloaded { .. } => tonic::Status::resource_exhausted(detail),
            Refusal::TimedOut { .. } => tonic::Status::deadline_exceeded(detail),
            Refusal::TooManyHeaders { .. }
            | Refusal::HeadersTooLarge { .. }
            | Refusal::BodyTooLarge { .. }
            | Refusal::SidebandBodyTooLarge { .. } => tonic::Status::resource_exhausted(detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_answers_503_with_the_spec_body() {
        let response = Refusal::Overloaded { limit: 4 }.http_response(false);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value =
            serde_json::from_str(&Refusal::Overloaded { limit: 4 }.body(false)).unwrap();
        assert_eq!(body["code"], "SERVICE_UNAVAILABLE");
        assert_eq!(body["details"][0]["code"], "OVERLOADED");
        assert!(
            body["details"][0]["message"]
                .as_str()
                .unwrap()
                .contains("--max-concurrent-requests")
        );
    }

    #[test]
    fn grpc_statuses_fit_the_refusal() {
        assert_eq!(
            Refusal::Overloaded { limit: 1 }.grpc_status().code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(
            Refusal::TimedOut {
                after: Duration::from_secs(1)
            }
            .grpc_status()
            .code(),
            tonic::Code::DeadlineExceeded
        );
    }

    #[test]
    fn oversized_headers_answer_431() {
        let refusal = Refusal::TooManyHeaders {
            count: 300,
            limit: 100,
        };
        assert_eq!(
            refusal.http_response(false).status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn a_busy_sideband_api_answers_429_with_retry_after() {
        for refusal in [
            Refusal::Overloaded { limit: 4 },
            Refusal::TimedOut {
                after: Duration::from_secs(5),
            },
        ] {
            let response = refusal.http_response(true);
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(response.headers()[header::RETRY_AFTER], "1");
            let body: serde_json::Value = serde_json::from_str(&refusal.body(true)).unwrap();
            assert_eq!(body["code"], "TOO_MANY_REQUESTS");
            assert_eq!(body["details"][0]["code"], refusal.reason());
        }
        // Too large stays too large.
        let large = Refusal::SidebandBodyTooLarge { bytes: 5, limit: 4 };
        assert_eq!(
            large.http_response(true).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert!(large.body(true).contains("--sideband-max-body"));
    }
}
