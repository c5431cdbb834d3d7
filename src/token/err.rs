//! Why a bearer token was refused: one variant per cause, each knowing its detail code, its
//! RFC 6750 `error_description` and a message that says how to fix it.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::time::format_unix;

/// A refused bearer token. Messages never contain the token itself. Serialised in a record's
/// replay inputs (a refusal that does not depend on the policy is replayed as it was).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
#[non_exhaustive]
pub enum TokenError {
    /// No `Authorization: Bearer …` header; `scheme` is the other scheme that was sent, if any.
    Missing {
        scheme: Option<String>,
    },
    /// Two `Authorization` headers, or more than one token in one.
    MultipleTokens,
    TooLarge {
        len: usize,
    },
    Malformed {
        reason: Cow<'static, str>,
    },
    AlgorithmNotAllowed {
        alg: String,
        allowed: Vec<String>,
    },
    UnknownKey {
        kid: String,
    },
    KeyIdRequired {
        candidates: usize,
    },
    KeyDoesNotFitAlgorithm {
        kid: String,
        alg: String,
    },
    InvalidSignature,
    MissingExpiry,
    Expired {
        exp: i64,
    },
    NotYetValid {
        nbf: i64,
    },
    IssuedInFuture {
        iat: i64,
    },
    InvalidIssuer {
        expected: String,
        actual: Option<String>,
    },
    InvalidAudience {
        expected: Vec<String>,
        actual: Vec<String>,
    },
    /// The service's key set could not be loaded (remote key sets).
    KeysUnavailable,
}

impl TokenError {
    /// HTTP status: 400 for a request that carries several tokens (RFC 6750 §3.1
    /// `invalid_request`), 401 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            TokenError::MultipleTokens => 400,
            _ => 401,
        }
    }

    /// The detail code of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing { .. } => "REQUIRED_VALUE",
            TokenError::MultipleTokens => "MULTIPLE_TOKENS",
            TokenError::TooLarge { .. } => "TOKEN_TOO_LARGE",
            TokenError::Malformed { .. } => "MALFORMED_TOKEN",
            TokenError::AlgorithmNotAllowed { .. } => "ALGORITHM_NOT_ALLOWED",
            TokenError::UnknownKey { .. } => "UNKNOWN_KEY",
            TokenError::KeyIdRequired { .. } => "KEY_ID_REQUIRED",
            TokenError::KeyDoesNotFitAlgorithm { .. } => "KEY_ALGORITHM_MISMATCH",
            TokenError::InvalidSignature => "INVALID_SIGNATURE",
            TokenError::MissingExpiry => "REQUIRED_CLAIM",
            TokenError::Expired { .. } => "TOKEN_EXPIRED",
            TokenError::NotYetValid { .. } => "TOKEN_NOT_YET_VALID",
            TokenError::IssuedInFuture { .. } => "TOKEN_ISSUED_IN_FUTURE",
            TokenError::InvalidIssuer { .. } => "INVALID_ISSUER",
            TokenError::InvalidAudience { .. } => "INVALID_AUDIENCE",
            TokenError::KeysUnavailable => "KEYS_UNAVAILABLE",
        }
    }

    /// What part of the request or token is wrong (the body's `target`).
    pub fn target(&self) -> &'static str {
        match self {
            TokenError::Missing { .. } | TokenError::MultipleTokens => "Authorization",
            TokenError::AlgorithmNotAllowed { .. } | TokenError::KeyDoesNotFitAlgorithm { .. } => {
                "alg"
            }
            TokenError::UnknownKey { .. } | TokenError::KeyIdRequired { .. } => "kid",
            TokenError::MissingExpiry | TokenError::Expired { .. } => "exp",
            TokenError::NotYetValid { .. } => "nbf",
            TokenError::IssuedInFuture { .. } => "iat",
            TokenError::InvalidIssuer { .. } => "iss",
            TokenError::InvalidAudience { .. } => "aud",
            _ => "token",
        }
    }

    /// The RFC 6750 `error` attribute; `None` when no token was sent at all.
    pub fn oauth_error(&self) -> Option<&'static str> {
        match self {
            TokenError::Missing { .. } => None,
            TokenError::MultipleTokens => Some("invalid_request"),
            _ => Some("invalid_token"),
        }
    }

    /// The short `error_description` of `WWW-Authenticate`.
    pub fn description(&self) -> &'static str {
        match self {
            TokenError::Missing { .. } => "Token required",
            TokenError::MultipleTokens => "Multiple tokens",
            TokenError::TooLarge { .. } => "Token too large",
            TokenError::Malformed { .. } => "Malformed token",
            TokenError::AlgorithmNotAllowed { .. } => "Algorithm not allowed",
            TokenError::UnknownKey { .. } => "Unknown signing key",
            TokenError::KeyIdRequired { .. } => "Key id required",
            TokenError::KeyDoesNotFitAlgorithm { .. } => "Algorithm does not fit the key",
            TokenError::InvalidSignature => "Invalid signature",
            TokenError::MissingExpiry => "Token has no expiry",
            TokenError::Expired { .. } => "Token expired",
            TokenError::NotYetValid { .. } => "Token not yet valid",
            TokenError::IssuedInFuture { .. } => "Token issued in the future",
            TokenError::InvalidIssuer { .. } => "Invalid issuer",
            TokenError::InvalidAudience { .. } => "Invalid audience",
            TokenError::KeysUnavailable => "Signing keys unavailable",
        }
    }

    /// The top-level message of the error body.
    pub fn summary(&self) -> &'static str {
        match self {
            TokenError::Missing { .. } => "An OAuth access token is required.",
            TokenError::MultipleTokens => "The request carries more than one access token.",
            TokenError::Expired { .. } => "The access token has expired.",
            TokenError::KeysUnavailable => {
                "The access token cannot be checked right now: the signing keys are unavailable."
            }
            _ => "The access token is not valid for this API.",
        }
    }
}

fn list(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
    if quoted.is_empty() {
        "none".to_owned()
    } else {
        quoted.join(", ")
    }
}

/// The detail message: what is wrong and how to fix it.
impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Missing { scheme: None } => f.write_str(
                "No access token was sent; send it as `Authorization: Bearer <token>`.",
            ),
            TokenError::Missing {
                scheme: Some(scheme),
            } => write!(
                f,
                "The Authorization header uses the `{scheme}` scheme; send the access token as `Authorization: Bearer <token>`."
            ),
            TokenError::MultipleTokens => f.write_str(
                "Send exactly one access token, in one `Authorization: Bearer <token>` header.",
            ),
            TokenError::TooLarge { len } => write!(
                f,
                "The token is {len} bytes long; at most {} bytes are accepted.",
                super::MAX_TOKEN_LEN
            ),
            TokenError::Malformed { reason } => write!(
                f,
                "The token is not a well-formed signed JWT: {reason}."
            ),
            TokenError::AlgorithmNotAllowed { alg, allowed } => write!(
                f,
                "The token is signed with `{alg}`; this API accepts {}.",
                list(allowed)
            ),
            TokenError::UnknownKey { kid } if kid.is_empty() => f.write_str(
                "The token has no `kid` header and no trusted key fits its algorithm; the token may come from another issuer.",
            ),
            TokenError::UnknownKey { kid } => write!(
                f,
                "No signing key with id `{kid}` is trusted by this API; the token may come from another issuer or a rotated key."
            ),
            TokenError::KeyIdRequired { candidates } => write!(
                f,
                "The token has no `kid` header and {candidates} trusted keys fit its algorithm; tokens must name their key."
            ),
            TokenError::KeyDoesNotFitAlgorithm { kid, alg } => write!(
                f,
                "The key `{kid}` cannot verify `{alg}` signatures."
            ),
            TokenError::InvalidSignature => {
                f.write_str("The token's signature does not verify with the key it names.")
            }
            TokenError::MissingExpiry => {
                f.write_str("The token has no `exp` claim; access tokens must expire.")
            }
            TokenError::Expired { exp } => write!(
                f,
                "Token expired at {}; get a new access token.",
                format_unix(*exp)
            ),
            TokenError::NotYetValid { nbf } => write!(
                f,
                "Token is not valid before {}; check the clocks of the issuer and this server.",
                format_unix(*nbf)
            ),
            TokenError::IssuedInFuture { iat } => write!(
                f,
                "Token claims to be issued at {}, in the future; check the clocks of the issuer and this server.",
                format_unix(*iat)
            ),
            TokenError::InvalidIssuer { expected, actual } => match actual {
                Some(actual) => write!(
                    f,
                    "The token was issued by `{actual}`; this API accepts tokens from `{expected}`."
                ),
                None => write!(
                    f,
                    "The token has no `iss` claim; this API accepts tokens from `{expected}`."
                ),
            },
            TokenError::InvalidAudience { expected, actual } => write!(
                f,
                "The token is for audience {}; this API needs one of {}. Request a token for this API.",
                list(actual),
                list(expected)
            ),
            TokenError::KeysUnavailable => f.write_str(
                "The signing keys of this API's issuer have not been loaded yet; retry shortly.",
            ),
        }
    }
}

impl std::error::Error for TokenError {}
