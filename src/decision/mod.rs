//! The decision pipeline (SPEC §2): what a request to decide on and a decision are (here), the
//! pipeline that decides ([`Engine`], in `engine.rs`: base URL → token → operation → rules),
//! and the one place where a denial becomes its status, headers, error body (§3) and audit
//! message (`denial.rs`). Pure: the caller passes the policy set and the clock.

mod bind;
mod denial;
mod engine;
pub mod replay;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};

pub use self::engine::{Engine, PendingDecision, ProofSeen};
pub use self::replay::{NotReplayable, Rebuild, ReplayInputs};
use crate::time::format_unix;
use crate::token::VerifiedToken;
pub use crate::trace_entry::{Step, TraceEntry};

/// Every detail code the pipeline can give a decision's error body. An interface that cannot
/// read a request adds those of [`InvalidInput`] (`MALFORMED_JSON`, `INVALID_VALUE`, …),
/// which policy test suites never see.
pub const DETAIL_CODES: &[&str] = &[
    "URL_TOO_LONG",
    "INVALID_URL",
    "AMBIGUOUS_PATH",
    "NO_MATCHING_SERVICE",
    "REQUIRED_VALUE",
    "MULTIPLE_TOKENS",
    "TOKEN_TOO_LARGE",
    "MALFORMED_TOKEN",
    "ALGORITHM_NOT_ALLOWED",
    "UNKNOWN_KEY",
    "KEY_ID_REQUIRED",
    "KEY_ALGORITHM_MISMATCH",
    "INVALID_SIGNATURE",
    "REQUIRED_CLAIM",
    "TOKEN_EXPIRED",
    "TOKEN_NOT_YET_VALID",
    "TOKEN_ISSUED_IN_FUTURE",
    "INVALID_ISSUER",
    "INVALID_AUDIENCE",
    "KEYS_UNAVAILABLE",
    "BINDING_REQUIRED",
    "BINDING_UNSUPPORTED",
    "CERTIFICATE_REQUIRED",
    "CERTIFICATE_MISMATCH",
    "DPOP_PROOF_REQUIRED",
    "DPOP_PROOF_INVALID",
    "DPOP_KEY_MISMATCH",
    "DPOP_METHOD_MISMATCH",
    "DPOP_URL_MISMATCH",
    "DPOP_STALE",
    "DPOP_TOKEN_HASH_MISMATCH",
    "DPOP_REPLAYED",
    "OPERATION_NOT_FOUND",
    "METHOD_NOT_ALLOWED",
    "USER_REQUIRED",
    "CLIENT_REQUIRED",
    "GROUP_REQUIRED",
    "SCOPE_REQUIRED",
    "CLAIM_MISMATCH",
    "CLIENT_ADDRESS_NOT_ALLOWED",
    "RULE_NOT_SATISFIED",
    "RATE_LIMIT_EXCEEDED",
    "INTERNAL_ERROR",
];

/// One request to decide on, as the gateway saw it.
#[derive(Debug, Clone, Copy)]
pub struct DecisionRequest<'a> {
    pub method: &'a str,
    /// The full URL: `scheme://host[:port]/path[?query]`.
    pub url: &'a str,
    /// The request headers; names in any case, a name may repeat.
    pub headers: &'a [(&'a str, &'a str)],
    pub client: Option<IpAddr>,
    /// The client certificate of the request, as a trusted gateway passed it (URL-encoded or
    /// plain PEM, RFC 9440 `:base64:`, or base64 DER), for certificate-bound tokens. Never
    /// stored or shown.
    pub client_cert: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allow,
    Deny,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
        }
    }

    /// The outcome named `allow` or `deny`, as [`Outcome::as_str`] writes it.
    pub fn parse(text: &str) -> Option<Self> {
        [Outcome::Allow, Outcome::Deny]
            .into_iter()
            .find(|o| o.as_str() == text)
    }
}

/// Header names and values, serialised as a JSON object in insertion order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(Cow<'static, str>, String)>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn push(&mut self, name: impl Into<Cow<'static, str>>, value: String) {
        self.0.push((name.into(), value));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_ref(), v.as_str()))
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> serde::de::Visitor<'de> for InOrder {
            type Value = Headers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of header names to values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Headers, A::Error> {
                let mut headers = Headers::default();
                while let Some((name, value)) = map.next_entry::<String, String>()? {
                    headers.push(name, value);
                }
                Ok(headers)
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

impl Serialize for Headers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: Cow<'static, str>,
    pub target: String,
    pub message: String,
}

/// The error body of SPEC §3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub id: String,
    pub code: Cow<'static, str>,
    pub message: String,
    pub target: String,
    pub details: Vec<ErrorDetail>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSummary {
    pub method: String,
    pub url: String,
    pub client: Option<String>,
}

/// The token's non-secret summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenSummary {
    pub sub: Option<String>,
    pub client_id: Option<String>,
    pub iss: Option<String>,
    pub aud: Vec<String>,
    pub exp: Option<String>,
    pub kid: Option<String>,
    pub alg: String,
    pub delegated: bool,
    /// Which sender binding was checked and how it ended; absent under `binding: none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<TokenBinding>,
}

/// A token's sender binding as checked: `method` is `x5t#S256`, `jkt`, `x5t#S256+jkt`,
/// `none` (no `cnf`) or `unsupported`; `result` is `verified`, `unbound`, or the detail code
/// of the failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBinding {
    pub method: Cow<'static, str>,
    pub result: Cow<'static, str>,
}

impl TokenSummary {
    fn of(token: &VerifiedToken, binding: Option<TokenBinding>) -> Self {
        Self {
            sub: token.sub.clone(),
            client_id: token.client_id.clone(),
            iss: token.iss.clone(),
            aud: token.aud.clone(),
            exp: token.exp.map(format_unix),
            kid: token.kid.as_deref().map(str::to_owned),
            alg: crate::token::algorithm_name(token.alg).into_owned(),
            delegated: token.is_delegated(),
            binding,
        }
    }
}

/// A decision: what the gateway does with the request, and why (SPEC §6b). Deserialising
/// reads what serialising wrote (replicas share decisions as this JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub id: String,
    pub time: String,
    pub duration_micros: u64,
    pub service: Option<Arc<str>>,
    pub operation: Option<Arc<str>>,
    pub policy_revision: Arc<str>,
    pub request: RequestSummary,
    pub outcome: Outcome,
    pub status: u16,
    /// The status the upstream answered an allowed request with, when the gateway reported
    /// it (the Sideband API's response phase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// Returned to the client on deny (names lower-case).
    pub headers: Headers,
    /// Added to the forwarded request on allow, replacing headers of the same name.
    pub upstream_headers: Headers,
    pub body: Option<ErrorBody>,
    pub token: Option<TokenSummary>,
    pub trace: Vec<TraceEntry>,
    pub audit: String,
    /// The trace the decision took part in: the gateway's trace context when a valid one came
    /// in (exported or not), else the trace of the span this decision exported, if any.
    #[serde(flatten)]
    pub trace_link: Option<TraceLink>,
    /// What the decision was made on, for replay (see [`ReplayInputs`]); `None` for a request
    /// an interface could not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Box<ReplayInputs>>,
    /// The shadow set's decision, when it differs from this one (outcome, status or
    /// decisive rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Box<ShadowDecision>>,
}

/// What the shadow policy set decided on the same request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowDecision {
    pub outcome: Outcome,
    pub status: u16,
    /// The decisive rule or check (see [`Decision::decisive_rule`]).
    pub rule: Option<String>,
    pub policy_revision: Arc<str>,
    pub trace: Vec<TraceEntry>,
}

impl ShadowDecision {
    /// The shadow view of `decision`, the shadow set's own.
    pub fn of(decision: Decision) -> Self {
        Self {
            outcome: decision.outcome,
            status: decision.status,
            rule: decision.decisive_rule().map(str::to_owned),
            policy_revision: decision.policy_revision,
            trace: decision.trace,
        }
    }
}

/// The W3C trace id of a decision's trace and, when Portcullis made a span for it, that
/// span's id (lower-case hex, as tracing backends show them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceLink {
    #[serde(with = "hex_u128")]
    pub trace_id: u128,
    #[serde(default, with = "hex_u64", skip_serializing_if = "Option::is_none")]
    pub span_id: Option<u64>,
}

impl TraceLink {
    /// The trace id as 32 lower-case hex digits.
    pub fn trace_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_hex(&self) -> Option<String> {
        self.span_id.map(|s| format!("{s:016x}"))
    }

    /// A trace id written as 32 hex digits (any case), not all zero.
    pub fn parse_trace_id(text: &str) -> Option<u128> {
        (text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u128::from_str_radix(text, 16).ok())
            .flatten()
            .filter(|id| *id != 0)
    }
}

mod hex_u128 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{id:032x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        super::TraceLink::parse_trace_id(&text)
            .ok_or_else(|| serde::de::Error::custom("a trace id is 32 hex digits, not all zero"))
    }
}

mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => s.collect_str(&format_args!("{id:016x}")),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        (text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u64::from_str_radix(&text, 16).ok())
            .flatten()
            .filter(|id| *id != 0)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("a span id is 16 hex digits, not all zero"))
    }
}

/// A request an interface could not read: a field of its message missing or malformed. It is
/// denied with 400 `INVALID_REQUEST` naming the field, and recorded like any decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidInput {
    /// The detail code: `MALFORMED_JSON`, `REQUIRED_VALUE` or `INVALID_VALUE`.
    pub code: &'static str,
    /// The field as the interface names it (`headers[2]`, `source_port`).
    pub target: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        self.outcome == Outcome::Allow
    }

    /// The first detail code of the error body, if denied.
    pub fn detail_code(&self) -> Option<&str> {
        self.body.as_ref()?.details.first().map(|d| d.code.as_ref())
    }

    /// The rule or check that decided a denial.
    pub fn decisive(&self) -> Option<&TraceEntry> {
        self.trace.iter().find(|e| e.decisive)
    }

    /// The name of what decided a denial: its rule, or else the attribute its check read
    /// (`token.exp`, `url`); `None` for an allow.
    pub fn decisive_rule(&self) -> Option<&str> {
        self.decisive()
            .map(|e| e.rule.as_deref().unwrap_or(&e.attribute))
    }

    /// Whether `other` decided differently: another outcome, status or decisive rule.
    pub fn differs_from(&self, outcome: Outcome, status: u16, rule: Option<&str>) -> bool {
        self.outcome != outcome || self.status != status || self.decisive_rule() != rule
    }
}
