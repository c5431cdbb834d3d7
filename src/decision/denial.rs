//! The one place where a denial becomes its status, headers, error body (SPEC §3) and audit
//! message.

use std::borrow::Cow;
use std::sync::Arc;

use super::{Decision, ErrorBody, ErrorDetail, Headers, InvalidInput, Outcome};
use crate::ratelimit::{Count, LimitCheck};
use crate::route::url::UrlError;
use crate::rule::RuleFailure;
use crate::token::TokenError;

/// Why a request is denied; mapped to status, headers and body in [`Denial::render`].
#[derive(Debug)]
pub(super) enum Denial {
    BadUrl(UrlError),
    NoService,
    /// A refused token; `dpop` when it came as `Authorization: DPoP`, whose challenge is
    /// then `DPoP` too (RFC 9449 §7.1).
    Token {
        error: TokenError,
        dpop: bool,
    },
    NoOperation {
        path: String,
        status: u16,
    },
    MethodNotAllowed {
        path: String,
        allowed: Vec<Box<str>>,
    },
    Rules {
        operation: Arc<str>,
        failures: Vec<RuleFailure>,
    },
    RateLimited {
        check: LimitCheck,
        count: Count,
    },
    /// The interface could not read the request well enough to decide on it.
    BadInput(InvalidInput),
    Internal,
}

impl Denial {
    /// The one mapping from a denial to what the gateway returns.
    /// The realm of a challenge is the decision's service.
    pub(super) fn render(self, decision: &mut Decision) {
        // A denial's headers are exactly those set here, even on a decision that was allowed
        // until its rate limit was counted.
        decision.headers = Headers::default();
        let service = decision.service.clone();
        let realm = service.as_deref().unwrap_or("portcullis");
        let url = decision.request.url.clone();
        let (status, code, message, target, details, audit): (u16, &'static str, String, String, Vec<ErrorDetail>, String) = match self {
            Denial::BadUrl(e) => (
                400,
                "INVALID_REQUEST",
                "The request URL cannot be decided on safely.".into(),
                "url".into(),
                vec![ErrorDetail {
                    code: Cow::Borrowed(e.code()),
                    target: "url".into(),
                    message: format!("{}; send the URL in plain, normalised form.", capitalise(&e.to_string())),
                }],
                format!("Request to the URL \"{url}\" denied: the URL is invalid."),
            ),
            Denial::NoService => (
                404,
                "NOT_FOUND",
                "No API service is defined for this URL.".into(),
                "url".into(),
                vec![ErrorDetail {
                    code: Cow::Borrowed("NO_MATCHING_SERVICE"),
                    target: "url".into(),
                    message: "No API service's base URL is a prefix of the request URL; check the URL, or the base URLs of the API services.".into(),
                }],
                format!("No API server defines policy for the URL \"{url}\"."),
            ),
            Denial::Token { error: e, dpop } => {
                let scheme = if dpop { "DPoP" } else { e.challenge_scheme() };
                let mut challenge = format!("{scheme} realm=\"{realm}\"");
                if let Some(error) = e.oauth_error() {
                    challenge.push_str(&format!(", error=\"{error}\", error_description=\"{}\"", e.description()));
                }
                if scheme == "DPoP" {
                    challenge.push_str(&format!(", algs=\"{}\"", crate::token::dpop::PROOF_ALGORITHM_NAMES));
                }
                decision.headers.push("www-authenticate", challenge);
                (
                    e.status(),
                    if e.status() == 400 { "INVALID_REQUEST" } else { "UNAUTHORIZED" },
                    e.summary().into(),
                    "Authorization".into(),
                    vec![ErrorDetail {
                        code: Cow::Borrowed(e.code()),
                        target: e.target().into(),
                        message: e.to_string(),
                    }],
                    format!("Request to the URL \"{url}\" denied due to an invalid OAuth access token."),
                )
            }
            Denial::NoOperation { path, status } => (
                status,
                if status == 404 { "NOT_FOUND" } else { "FORBIDDEN" },
                "No operation of this API matches the request.".into(),
                "path".into(),
                vec![ErrorDetail {
                    code: Cow::Borrowed("OPERATION_NOT_FOUND"),
                    target: "path".into(),
                    message: format!(
                        "No operation of API service `{realm}` matches {} {path}; check the path, or add an operation for it.",
                        decision.request.method
                    ),
                }],
                format!("Request to the URL \"{url}\" denied by policy evaluation."),
            ),
            Denial::MethodNotAllowed { path, allowed } => {
                let allowed = allowed.join(", ");
                decision.headers.push("allow", allowed.clone());
                (
                    405,
                    "METHOD_NOT_ALLOWED",
                    "The method is not allowed for this path.".into(),
                    "method".into(),
                    vec![ErrorDetail {
                        code: Cow::Borrowed("METHOD_NOT_ALLOWED"),
                        target: "method".into(),
                        message: format!("{} is not allowed on {path}; allowed: {allowed}.", decision.request.method),
                    }],
                    format!("Request to the URL \"{url}\" denied by policy evaluation."),
                )
            }
            Denial::Rules { operation, failures } => {
                let scopes: Vec<String> = failures.iter().filter_map(|f| f.scopes.clone()).flatten().collect();
                if !scopes.is_empty() {
                    decision.headers.push(
                        "www-authenticate",
                        format!(
                            "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"Insufficient scope\", scope=\"{}\"",
                            scopes.join(" ").replace(['"', '\\'], "")
                        ),
                    );
                }
                (
                    403,
                    "FORBIDDEN",
                    format!("The request does not satisfy the access rules of operation `{operation}`."),
                    "rules".into(),
                    failures
                        .into_iter()
                        .map(|f| ErrorDetail {
                            code: Cow::Borrowed(f.code),
                            target: f.target,
                            message: f.message,
                        })
                        .collect(),
                    format!("Request to the URL \"{url}\" denied by policy evaluation."),
                )
            }
            Denial::RateLimited { check, count } => {
                let retry = count.retry_after_secs();
                decision.headers.push("retry-after", retry.to_string());
                let per = humantime::format_duration(check.per);
                (
                    429,
                    "TOO_MANY_REQUESTS",
                    "Too many requests: the rate limit of this operation is exceeded.".into(),
                    "rateLimit".into(),
                    vec![ErrorDetail {
                        code: Cow::Borrowed("RATE_LIMIT_EXCEEDED"),
                        target: format!("rateLimit.{}", check.key.as_str()),
                        message: format!(
                            "At most {} request{} per {per} {} allowed for each {}; retry after {retry} s, or spread requests out.",
                            check.requests,
                            if check.requests == 1 { "" } else { "s" },
                            if check.requests == 1 { "is" } else { "are" },
                            check.key.described(),
                        ),
                    }],
                    format!("Request to the URL \"{url}\" denied: rate limit exceeded."),
                )
            }
            Denial::BadInput(input) => (
                400,
                "INVALID_REQUEST",
                "The request cannot be decided on: a field of it is missing or malformed.".into(),
                input.target.clone(),
                vec![ErrorDetail {
                    code: Cow::Borrowed(input.code),
                    target: input.target,
                    message: input.message,
                }],
                format!("Request to the URL \"{url}\" denied: the request is malformed."),
            ),
            Denial::Internal => (
                500,
                "UNEXPECTED_ERROR",
                "Portcullis failed to decide; the request is denied.".into(),
                "request".into(),
                vec![ErrorDetail {
                    code: Cow::Borrowed("INTERNAL_ERROR"),
                    target: "request".into(),
                    message: format!("Report decision id {} to the operator.", decision.id),
                }],
                format!("Request to the URL \"{url}\" denied: internal error in decision {}.", decision.id),
            ),
        };
        decision.outcome = Outcome::Deny;
        decision.status = status;
        decision
            .headers
            .push("content-type", "application/json".to_owned());
        decision.headers.push("x-decision-id", decision.id.clone());
        decision.upstream_headers = Headers::default();
        decision.body = Some(ErrorBody {
            id: decision.id.clone(),
            code: Cow::Borrowed(code),
            message,
            target,
            details,
        });
        decision.audit = audit;
    }
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
