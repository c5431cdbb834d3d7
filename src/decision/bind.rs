//! Pipeline step 2, second half: a sender-constrained token's binding checked against the
//! request's client certificate and DPoP proof, each check written to the trace. Pure: the
//! caches are the engine's, the clock the caller's.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::Value;

use super::TokenBinding;
use super::engine::{ProofSeen, canonical_url};
use crate::policy::ApiService;
use crate::route::url::{RequestUrl, parse_request_url};
use crate::token::binding::{
    BindingError, BindingMethod, BindingMode, b64url, check_certificate, confirmation,
};
use crate::token::cert::ThumbprintCache;
use crate::token::dpop::{
    ProofKeys, ProofRequest, extract_proof, token_digest, verify_proof, without_query,
};
use crate::token::replay::{ReplayCache, Seen};
use crate::token::{DpopMemo, Scheme, VerifiedToken, same_secret};
use crate::trace_entry::{Step, TraceEntry};

/// What the binding checks remember between requests.
#[derive(Debug, Default)]
pub(super) struct BindingCaches {
    pub(super) thumbprints: ThumbprintCache,
    pub(super) proof_keys: ProofKeys,
    pub(super) replays: ReplayCache,
}

/// How a DPoP proof's `jti` is checked against replay.
#[derive(Debug, Clone, Copy)]
pub(super) enum Proofs {
    /// In the engine's replay cache, which remembers it (the active set's decision).
    Remember,
    /// Not remembered again: the proof is replayed exactly when the active set's decision of
    /// the same request found it so (the shadow set).
    AsActive { replayed: bool },
}

/// What a binding check found: the token summary's part, the outcome, and the proof first
/// seen here (for a replay cache shared with other replicas).
#[derive(Debug)]
pub(super) struct BindingCheck {
    pub(super) summary: Option<TokenBinding>,
    pub(super) result: Result<(), BindingError>,
    pub(super) proof: Option<ProofSeen>,
}

impl Default for BindingCheck {
    /// Nothing checked (`binding: none`).
    fn default() -> Self {
        Self {
            summary: None,
            result: Ok(()),
            proof: None,
        }
    }
}

/// What the request offers to prove it is the token's sender.
pub(super) struct Presented<'r> {
    pub(super) method: &'r str,
    /// The request URL as the interface gave it, and as parsed and normalised.
    pub(super) raw_url: &'r str,
    pub(super) url: &'r RequestUrl<'r>,
    pub(super) headers: &'r [(&'r str, &'r str)],
    pub(super) certificate: Option<&'r str>,
    pub(super) access_token: &'r str,
    pub(super) scheme: Scheme,
}

/// Checks the token's `cnf` as the service's `token.binding` demands. Returns what the token
/// summary shows (`None` under `binding: none`), and writes one trace entry per check.
///
/// Fails with the first binding the request does not satisfy.
pub(super) fn check(
    service: &ApiService,
    token: &VerifiedToken,
    presented: &Presented<'_>,
    (caches, proofs): (&BindingCaches, Proofs),
    now: i64,
    trace: &mut Vec<TraceEntry>,
) -> BindingCheck {
    let policy = service.token.binding;
    if policy.mode == BindingMode::None {
        return BindingCheck::default();
    }
    let summary = |method: &'static str, result: Cow<'static, str>| TokenBinding {
        method: Cow::Borrowed(method),
        result,
    };
    let ended = |summary: TokenBinding, result: Result<(), BindingError>| BindingCheck {
        summary: Some(summary),
        result,
        proof: None,
    };
    let failed = |e: &BindingError| Cow::Borrowed(e.code());
    let cnf = match confirmation(token) {
        Ok(cnf) => cnf,
        Err(e) => {
            trace.push(cnf_entry(&e));
            return ended(summary("unsupported", failed(&e)), Err(e));
        }
    };
    // The DPoP scheme claims a DPoP binding, whatever the token says.
    let dpop = cnf.jkt.is_some() || presented.scheme == Scheme::Dpop;
    if cnf.x5t_s256.is_none() && !dpop {
        if policy.mode == BindingMode::Required {
            let e = BindingError::Required;
            trace.push(cnf_entry(&e));
            return ended(summary("none", failed(&e)), Err(e));
        }
        // Nothing was checked: the token summary says so, the trace stays as without binding.
        return ended(summary("none", Cow::Borrowed("unbound")), Ok(()));
    }
    let method = match (cnf.x5t_s256.is_some(), dpop) {
        (true, true) => "x5t#S256+jkt",
        (true, false) => BindingMethod::Certificate.as_str(),
        _ => BindingMethod::Dpop.as_str(),
    };
    if let Some(bound) = cnf.x5t_s256 {
        let mut entry = TraceEntry::step(Step::Token, "token.cnf.x5t#S256", "equals", true);
        entry.expected = Some(Arc::new(Value::from(first_chars(bound, 64))));
        match check_certificate(bound, presented.certificate, &caches.thumbprints) {
            Ok(thumbprint) => {
                entry.actual = Some(Value::from(b64url(&thumbprint)));
                entry.detail =
                    Some("the client certificate is the one the token is bound to".into());
                trace.push(entry);
            }
            Err(e) => {
                entry.result = false;
                entry.decisive = true;
                entry.actual = Some(match &e {
                    BindingError::CertificateMismatch { presented } => {
                        Value::from(presented.as_str())
                    }
                    _ => Value::Null,
                });
                entry.detail = Some(e.to_string());
                trace.push(entry);
                return ended(summary(method, failed(&e)), Err(e));
            }
        }
    }
    let mut proof = None;
    if dpop {
        let mut entry = TraceEntry::step(Step::Token, "dpop", "validProof", true);
        let memo = token.dpop.get_or_init(|| DpopMemo {
            text_sha256: token_digest(presented.access_token),
            jkt_shown: cnf
                .jkt
                .map(|jkt| Arc::new(Value::from(first_chars(jkt, 64)))),
        });
        entry.expected = memo.jkt_shown.clone();
        match check_proof(
            cnf.jkt,
            presented,
            (caches, proofs),
            &memo.text_sha256,
            (policy.dpop_window, now),
            &mut entry,
        ) {
            Ok(seen) => {
                proof = seen;
                trace.push(entry);
            }
            Err(e) => {
                entry.result = false;
                entry.decisive = true;
                entry.detail = Some(e.to_string());
                trace.push(entry);
                return ended(summary(method, failed(&e)), Err(e));
            }
        }
    }
    BindingCheck {
        summary: Some(summary(method, Cow::Borrowed("verified"))),
        result: Ok(()),
        proof,
    }
}

/// The first `n` characters of `text` (a claim shown in the trace, whose length is the
/// token's issuer's choice).
fn first_chars(text: &str, n: usize) -> &str {
    text.char_indices()
        .nth(n)
        .map_or(text, |(end, _)| &text[..end])
}

/// The trace entry of a token refused for its `cnf` alone (absent, or unsupported), which
/// a replay writes the same.
pub(super) fn cnf_entry(e: &BindingError) -> TraceEntry {
    let mut entry = match e {
        BindingError::Required => {
            let mut entry = TraceEntry::step(Step::Token, "token.cnf", "present", false);
            entry.expected = Some(Arc::new(Value::from("x5t#S256 or jkt")));
            entry
        }
        _ => TraceEntry::step(Step::Token, "token.cnf", "supported", false),
    };
    entry.detail = Some(e.to_string());
    entry
}

/// Checks the request's one DPoP proof; returns its id when this engine saw it first.
fn check_proof(
    jkt: Option<&str>,
    presented: &Presented<'_>,
    (caches, proofs): (&BindingCaches, Proofs),
    access_token_sha256: &[u8; 32],
    (window, now): (i64, i64),
    entry: &mut TraceEntry,
) -> Result<Option<ProofSeen>, BindingError> {
    let proof = extract_proof(presented.headers)?;
    // The same text as the request's URL (query aside) normalises the same: no parsing then.
    let raw = without_query(presented.raw_url);
    let url_matches = |htu: &str| {
        htu == raw
            || parse_request_url(htu)
                .is_ok_and(|u| canonical_url(&u) == canonical_url(presented.url))
    };
    let checked = verify_proof(
        proof,
        &ProofRequest {
            method: presented.method,
            url_matches: &url_matches,
            access_token_sha256,
            now,
            window,
            replays: matches!(proofs, Proofs::Remember).then_some(&caches.replays),
        },
        &caches.proof_keys,
    )?;
    entry.actual = Some(Value::from(&*checked.jkt));
    let Some(jkt) = jkt else {
        return Err(BindingError::DpopKeyMismatch { bound: false });
    };
    if !same_secret(jkt.as_bytes(), checked.jkt.as_bytes()) {
        return Err(BindingError::DpopKeyMismatch { bound: true });
    }
    let id = checked.id;
    // Remembered until no proof with this `iat` can be accepted any more.
    let until = checked.iat + window;
    let seen = match proofs {
        Proofs::Remember => caches.replays.check(id, until, now),
        Proofs::AsActive { replayed: true } => Seen::Replayed,
        Proofs::AsActive { replayed: false } => Seen::New,
    };
    match seen {
        Seen::New => {}
        Seen::Replayed => return Err(BindingError::DpopReplayed { full: false }),
        Seen::Full => return Err(BindingError::DpopReplayed { full: true }),
    }
    // Written without `format!`: its machinery cost a tenth of the proof check's budget.
    const BEFORE: &str = "proof signed by the token's key, for this method and URL, made ";
    const AFTER: &str = " s ago, for this token, first use of its `jti`";
    let mut age = itoa::Buffer::new();
    let age = age.format(now - checked.iat);
    let mut detail = String::with_capacity(BEFORE.len() + age.len() + AFTER.len());
    detail.push_str(BEFORE);
    detail.push_str(age);
    detail.push_str(AFTER);
    entry.detail = Some(detail);
    Ok(matches!(proofs, Proofs::Remember).then_some(ProofSeen { id, until }))
}
