//! Sender-constrained tokens: the token's `cnf` claim checked against what the request
//! proves, a client certificate (RFC 8705 `x5t#S256`) or a DPoP proof (RFC 9449 `jkt`, in
//! `dpop.rs`). Pure: the caller passes the clock, the certificate text and the caches.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::VerifiedToken;
use super::cert::{CertError, Thumbprint, ThumbprintCache};

/// What a service demands of token binding (`token.binding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BindingMode {
    /// `cnf` is ignored and `Authorization: DPoP` counts as no bearer token.
    #[default]
    None,
    /// A token with a binding must satisfy it; a token without passes.
    Allowed,
    /// A token without a binding is refused.
    Required,
}

impl BindingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BindingMode::None => "none",
            BindingMode::Allowed => "allowed",
            BindingMode::Required => "required",
        }
    }
}

/// The service's binding settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingPolicy {
    pub mode: BindingMode,
    /// How far a DPoP proof's `iat` may be from now, in seconds; also how long its `jti` is
    /// remembered.
    pub dpop_window: i64,
}

pub const DEFAULT_DPOP_WINDOW: i64 = 60;

impl Default for BindingPolicy {
    fn default() -> Self {
        Self {
            mode: BindingMode::None,
            dpop_window: DEFAULT_DPOP_WINDOW,
        }
    }
}

/// The confirmation methods a token's `cnf` claim names.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Confirmation<'t> {
    pub x5t_s256: Option<&'t str>,
    pub jkt: Option<&'t str>,
}

impl Confirmation<'_> {
    pub fn is_empty(&self) -> bool {
        self.x5t_s256.is_none() && self.jkt.is_none()
    }
}

/// The token's `cnf`. Fails on a `cnf` that is not an object of strings, or that names a
/// method this server cannot check (`jwk`, `kid`, …): such a token must not pass as if it
/// were unbound.
pub fn confirmation(token: &VerifiedToken) -> Result<Confirmation<'_>, BindingError> {
    let mut found = Confirmation::default();
    let Some(cnf) = token.claims.get("cnf") else {
        return Ok(found);
    };
    let Value::Object(members) = cnf else {
        return Err(BindingError::Unsupported {
            member: "(not an object)".into(),
        });
    };
    for (name, value) in members {
        let slot = match name.as_str() {
            "x5t#S256" => &mut found.x5t_s256,
            "jkt" => &mut found.jkt,
            other => {
                return Err(BindingError::Unsupported {
                    member: other.chars().take(64).collect(),
                });
            }
        };
        match value {
            Value::String(s) => *slot = Some(s),
            _ => {
                return Err(BindingError::Unsupported {
                    member: format!("{name} (not a string)"),
                });
            }
        }
    }
    Ok(found)
}

/// What the token's `cnf` names, as the token summary and replay inputs write it: `none`,
/// `x5t#S256`, `jkt`, `x5t#S256+jkt`, or `unsupported`.
pub fn kind(token: &VerifiedToken) -> &'static str {
    match confirmation(token) {
        Err(_) => "unsupported",
        Ok(c) => match (c.x5t_s256.is_some(), c.jkt.is_some()) {
            (true, true) => "x5t#S256+jkt",
            (true, false) => "x5t#S256",
            (false, true) => "jkt",
            (false, false) => "none",
        },
    }
}

/// Which binding was checked, and how it ended: the decision's token summary shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingMethod {
    Certificate,
    Dpop,
}

impl BindingMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            BindingMethod::Certificate => "x5t#S256",
            BindingMethod::Dpop => "jkt",
        }
    }
}

/// base64url, no padding, as thumbprints are written in `cnf`.
pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Checks `cnf.x5t#S256` against the client certificate of the request, in constant time.
/// Returns the presented thumbprint (for the trace).
///
/// Fails when there is no certificate, when it cannot be read, or when it is another one.
pub fn check_certificate(
    expected: &str,
    certificate: Option<&str>,
    cache: &ThumbprintCache,
) -> Result<Thumbprint, BindingError> {
    let Some(text) = certificate else {
        return Err(BindingError::CertificateRequired { unreadable: false });
    };
    let presented = cache.thumbprint(text).map_err(|e| match e {
        CertError::TooLarge | CertError::Unreadable => {
            BindingError::CertificateRequired { unreadable: true }
        }
    })?;
    let mut want = [0u8; 32];
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_slice(expected.as_bytes(), &mut want)
        .ok();
    let equal = decoded == Some(32) && super::same_secret(&want, &presented[..]);
    if equal {
        Ok(presented)
    } else {
        Err(BindingError::CertificateMismatch {
            presented: b64url(&presented),
        })
    }
}

/// A failed binding check: one variant per detail code. Serialised in a record's replay
/// inputs; messages never hold the certificate, the proof or the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "binding",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
#[non_exhaustive]
pub enum BindingError {
    /// `binding: required` and the token has no `cnf`.
    Required,
    /// `cnf` names a method that cannot be checked.
    Unsupported {
        member: String,
    },
    CertificateRequired {
        unreadable: bool,
    },
    CertificateMismatch {
        presented: String,
    },
    DpopProofRequired,
    /// The proof is not a valid DPoP proof: `reason` says which rule it breaks.
    DpopProofInvalid {
        reason: Cow<'static, str>,
    },
    /// The proof's key is not the one the token is bound to (or the token is bound to none).
    DpopKeyMismatch {
        bound: bool,
    },
    DpopMethodMismatch {
        htm: String,
    },
    DpopUrlMismatch {
        htu: String,
    },
    DpopStale {
        iat: i64,
        window: i64,
    },
    DpopTokenHashMismatch,
    /// The proof id was seen within the window, or (`full`) the replay cache cannot take it.
    DpopReplayed {
        full: bool,
    },
}

impl BindingError {
    pub fn code(&self) -> &'static str {
        match self {
            BindingError::Required => "BINDING_REQUIRED",
            BindingError::Unsupported { .. } => "BINDING_UNSUPPORTED",
            BindingError::CertificateRequired { .. } => "CERTIFICATE_REQUIRED",
            BindingError::CertificateMismatch { .. } => "CERTIFICATE_MISMATCH",
            BindingError::DpopProofRequired => "DPOP_PROOF_REQUIRED",
            BindingError::DpopProofInvalid { .. } => "DPOP_PROOF_INVALID",
            BindingError::DpopKeyMismatch { .. } => "DPOP_KEY_MISMATCH",
            BindingError::DpopMethodMismatch { .. } => "DPOP_METHOD_MISMATCH",
            BindingError::DpopUrlMismatch { .. } => "DPOP_URL_MISMATCH",
            BindingError::DpopStale { .. } => "DPOP_STALE",
            BindingError::DpopTokenHashMismatch => "DPOP_TOKEN_HASH_MISMATCH",
            BindingError::DpopReplayed { .. } => "DPOP_REPLAYED",
        }
    }

    /// Whether the failure is about the DPoP proof (answered with a `DPoP` challenge and
    /// `invalid_dpop_proof`) rather than the token (a `Bearer` challenge, `invalid_token`).
    pub fn is_dpop(&self) -> bool {
        self.method() == Some(BindingMethod::Dpop)
    }

    /// The binding the failed check was about.
    pub fn method(&self) -> Option<BindingMethod> {
        match self {
            BindingError::Required | BindingError::Unsupported { .. } => None,
            BindingError::CertificateRequired { .. } | BindingError::CertificateMismatch { .. } => {
                Some(BindingMethod::Certificate)
            }
            _ => Some(BindingMethod::Dpop),
        }
    }

    pub fn target(&self) -> &'static str {
        match self {
            BindingError::Required | BindingError::Unsupported { .. } => "cnf",
            BindingError::CertificateRequired { .. } | BindingError::CertificateMismatch { .. } => {
                "cnf.x5t#S256"
            }
            BindingError::DpopKeyMismatch { .. } => "cnf.jkt",
            _ => "DPoP",
        }
    }

    /// The short `error_description` of `WWW-Authenticate`.
    pub fn description(&self) -> &'static str {
        match self {
            BindingError::Required => "Sender-constrained token required",
            BindingError::Unsupported { .. } => "Unsupported token binding",
            BindingError::CertificateRequired { .. } => "Client certificate required",
            BindingError::CertificateMismatch { .. } => "Client certificate mismatch",
            BindingError::DpopProofRequired => "DPoP proof required",
            BindingError::DpopProofInvalid { .. } => "Invalid DPoP proof",
            BindingError::DpopKeyMismatch { .. } => "DPoP key mismatch",
            BindingError::DpopMethodMismatch { .. } => "DPoP method mismatch",
            BindingError::DpopUrlMismatch { .. } => "DPoP URL mismatch",
            BindingError::DpopStale { .. } => "DPoP proof too old or too new",
            BindingError::DpopTokenHashMismatch => "DPoP access token hash mismatch",
            BindingError::DpopReplayed { .. } => "DPoP proof replayed",
        }
    }
}

/// The detail message: what is wrong and how to fix it. Never the proof or the token.
impl fmt::Display for BindingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindingError::Required => f.write_str(
                "This API accepts only sender-constrained tokens: get a token bound to your client certificate (`cnf.x5t#S256`) or to a DPoP key (`cnf.jkt`).",
            ),
            BindingError::Unsupported { member } => write!(
                f,
                "The token's `cnf` claim has `{member}`, which this API cannot check; only `x5t#S256` and `jkt` are supported."
            ),
            BindingError::CertificateRequired { unreadable: false } => f.write_str(
                "The token is bound to a client certificate, but no certificate reached the authorization point; connect with mutual TLS, using the certificate the token was issued for.",
            ),
            BindingError::CertificateRequired { unreadable: true } => f.write_str(
                "The token is bound to a client certificate, but the certificate the gateway passed cannot be read; check the gateway's certificate forwarding.",
            ),
            BindingError::CertificateMismatch { presented } => write!(
                f,
                "The token is bound to another client certificate than the one presented (thumbprint `{presented}`); use the certificate the token was issued for."
            ),
            BindingError::DpopProofRequired => f.write_str(
                "The token is DPoP-bound: send exactly one `DPoP` header with a proof signed by the token's key.",
            ),
            BindingError::DpopProofInvalid { reason } => {
                write!(f, "The DPoP proof is not valid: {reason}.")
            }
            BindingError::DpopKeyMismatch { bound: true } => f.write_str(
                "The DPoP proof is signed with another key than the one the token is bound to (`cnf.jkt`).",
            ),
            BindingError::DpopKeyMismatch { bound: false } => f.write_str(
                "The token is sent with the DPoP scheme but is not bound to a DPoP key (`cnf.jkt`); use `Authorization: Bearer`, or get a DPoP-bound token.",
            ),
            BindingError::DpopMethodMismatch { htm } => write!(
                f,
                "The DPoP proof is for method `{htm}`, not this request's; make a proof for each request."
            ),
            BindingError::DpopUrlMismatch { htu } => write!(
                f,
                "The DPoP proof is for `{htu}`, not this request's URL; make a proof for each request."
            ),
            BindingError::DpopStale { iat, window } => write!(
                f,
                "The DPoP proof was made at {}, more than {window} s from now; make a fresh proof for each request, and check the client's clock.",
                crate::time::format_unix(*iat)
            ),
            BindingError::DpopTokenHashMismatch => f.write_str(
                "The DPoP proof's `ath` is not the hash of this access token; make the proof for the token sent.",
            ),
            BindingError::DpopReplayed { full: false } => f.write_str(
                "The DPoP proof's `jti` was already used; make a fresh proof for each request.",
            ),
            BindingError::DpopReplayed { full: true } => f.write_str(
                "The DPoP proof cannot be checked for replay right now (the replay cache is full); retry with a fresh proof shortly.",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(cnf: Value) -> VerifiedToken {
        VerifiedToken::of_claims(serde_json::json!({ "cnf": cnf }))
    }

    #[test]
    fn cnf_members_other_than_x5t_and_jkt_are_refused() {
        let t = token(serde_json::json!({"x5t#S256": "a", "jkt": "b"}));
        assert_eq!(
            confirmation(&t),
            Ok(Confirmation {
                x5t_s256: Some("a"),
                jkt: Some("b")
            })
        );
        for cnf in [
            serde_json::json!({"jwk": {}}),
            serde_json::json!("x"),
            serde_json::json!({"jkt": 5}),
        ] {
            assert_eq!(
                confirmation(&token(cnf)).unwrap_err().code(),
                "BINDING_UNSUPPORTED"
            );
        }
    }

    #[test]
    fn the_certificate_must_be_the_bound_one() {
        let cache = ThumbprintCache::new(4);
        let c = rcgen::generate_simple_self_signed(vec!["c".into()]).unwrap();
        let pem = c.cert.pem();
        let bound = b64url(&super::super::cert::thumbprint(c.cert.der()));
        assert!(check_certificate(&bound, Some(&pem), &cache).is_ok());
        let other = rcgen::generate_simple_self_signed(vec!["o".into()]).unwrap();
        assert_eq!(
            check_certificate(&bound, Some(&other.cert.pem()), &cache)
                .unwrap_err()
                .code(),
            "CERTIFICATE_MISMATCH"
        );
        assert_eq!(
            check_certificate(&bound, None, &cache).unwrap_err(),
            BindingError::CertificateRequired { unreadable: false }
        );
        assert_eq!(
            check_certificate("not-a-thumbprint", Some(&pem), &cache)
                .unwrap_err()
                .code(),
            "CERTIFICATE_MISMATCH"
        );
    }
}
