//! What a decision was made on, kept with its record so that another policy set can decide
//! the same request again (shadow sets, `portcullis replay`): beside what the decision shows
//! anyway (its request and token summary, which are not repeated here), the decision time, the
//! token's other verified facts and the claims the rules read, and the rate-limit count. The
//! token itself is never kept, so a replay that would need it (a changed key set, a claim
//! nobody recorded) says so instead of guessing.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::bind::BindingCheck;
use super::{Decision, TokenBinding, TokenSummary};
use crate::policy::ApiService;
pub use crate::token::VerifiedFacts;
use crate::token::binding::{BindingError, BindingMode};
use crate::token::{FactsMemo, TokenError, VerifiedToken};
use crate::trace_entry::{Step, TraceEntry};

/// The inputs of one decision, as its record keeps them: the method, URL (credentials in the
/// query redacted: routing never reads the query) and client are the decision's `request`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayInputs {
    /// When it was decided, in Unix milliseconds: a replay checks expiry at this time.
    pub at: i64,
    /// The token as the matched service checked it; `None` when no service matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<RecordedToken>,
    /// The operation's rate-limit count, when the decision counted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Why this decision cannot be replayed at all, when something it was made on was not
    /// kept (a URL cut to its shown length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreplayable: Option<String>,
}

impl ReplayInputs {
    /// The JSON `serde_json` writes of these inputs, with a verified token's facts copied
    /// from the JSON they keep (see [`VerifiedFacts::json`]): every record writes its
    /// decision's inputs, and a cached token's facts are the same in each.
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        let facts = (self.token.as_ref())
            .and_then(|t| t.verified.as_deref())
            .and_then(VerifiedFacts::json);
        // Room for the facts and the rest (about 200 bytes), so that it is written in one go.
        let mut json = Vec::with_capacity(facts.map_or(0, |f| f.get().len()) + 256);
        serde_json::to_writer(
            &mut json,
            &InputsJson {
                at: self.at,
                token: self.token.as_ref().map(|t| TokenJson {
                    keys: &t.keys,
                    refused: t.refused.as_ref(),
                    unread: t.unread,
                    verified: t.verified.as_deref().map(|f| match f.json() {
                        Some(json) => FactsJson::Written(json),
                        None => FactsJson::Facts(f),
                    }),
                    binding: t.binding.as_ref(),
                }),
                count: self.count,
                unreplayable: self.unreplayable.as_deref(),
            },
        )?;
        Ok(json)
    }
}

/// [`ReplayInputs`] as [`ReplayInputs::to_json`] writes it: the same members, skipped alike
/// (a unit test compares the two on every kind of decision).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InputsJson<'a> {
    at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<TokenJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unreplayable: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenJson<'a> {
    keys: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<&'a TokenError>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    unread: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    verified: Option<FactsJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    binding: Option<&'a RecordedBinding>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum FactsJson<'a> {
    Written(&'a serde_json::value::RawValue),
    Facts(&'a VerifiedFacts),
}

/// A bearer token as a service checked it: refused (and why), or verified with its facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedToken {
    /// The key set and accepted algorithms it was checked with (see
    /// [`keys_id`](crate::token::keys_id)).
    pub keys: Arc<str>,
    /// Refused before its claims were read: the cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<TokenError>,
    /// The refusal came from reading the `Authorization` header, before any key was used, so
    /// it holds for every service.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unread: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<Arc<VerifiedFacts>>,
    /// The sender-binding check of a verified token, when the service checked one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<RecordedBinding>,
}

/// A sender-binding check as it was made: under which settings, and how it ended. The
/// client certificate and the DPoP proof are never kept, so only a service with the same
/// settings can replay it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedBinding {
    pub mode: BindingMode,
    /// `token.dpop.window`, in seconds.
    pub window: i64,
    /// What the token's `cnf` names (see [`kind`](crate::token::binding::kind)).
    pub cnf: std::borrow::Cow<'static, str>,
    /// The token came as `Authorization: DPoP`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dpop_scheme: bool,
    /// What the token summary showed of the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<TokenBinding>,
    /// The failure; none when the binding held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<BindingError>,
}

/// How to decide a recorded decision again exactly as it was decided, with the policy set it
/// was decided with ([`Engine::rebuild`](super::Engine::rebuild)): what its trace says that
/// its inputs do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebuild {
    /// The token came from the verified-token cache.
    pub token_cached: bool,
}

impl Rebuild {
    /// How to rebuild `d` from its inputs, request and token summary, or `None` when they do
    /// not tell it whole: no inputs or unreplayable ones, a counted rate limit (its window's
    /// time left), a sender-binding check or the DPoP scheme (the certificate and proof are
    /// not kept), an internal error.
    pub fn of(d: &Decision) -> Option<Self> {
        let inputs = d.inputs.as_deref()?;
        if inputs.unreplayable.is_some() || inputs.count.is_some() || d.status == 500 {
            return None;
        }
        // A token sent with the DPoP scheme gets a DPoP challenge, even when it failed
        // before its binding was checked and recorded.
        let dpop_challenge = (d.headers.get("www-authenticate"))
            .is_some_and(|h| h.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("dpop ")));
        if dpop_challenge {
            return None;
        }
        if let Some(token) = &inputs.token {
            if (token.binding.as_ref()).is_some_and(|b| b.cnf != "none" || b.dpop_scheme) {
                return None;
            }
            if let Some(TokenError::Missing {
                scheme: Some(scheme),
            }) = &token.refused
                && scheme.eq_ignore_ascii_case("dpop")
            {
                return None;
            }
        }
        Some(Self {
            token_cached: super::engine::read_from_cache(&d.trace),
        })
    }
}

/// Why a recorded decision cannot be decided again by a policy set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotReplayable(pub String);

impl RecordedToken {
    /// The binding check as `service` would make it, from the recorded one: the same when
    /// the settings are; an unbound token's fate follows from the settings alone. Fails
    /// when the answer would need the certificate or the proof, which are not kept.
    pub(super) fn replay_binding(
        &self,
        service: &ApiService,
        trace: &mut Vec<TraceEntry>,
    ) -> Result<BindingCheck, NotReplayable> {
        let policy = service.token.binding;
        // No record: `binding: none` and a token without `cnf`.
        let recorded = self.binding.as_ref();
        let cnf = recorded.map_or("none", |b| &*b.cnf);
        let dpop_scheme = recorded.is_some_and(|b| b.dpop_scheme);
        // Written as the check wrote it where the record tells (nothing for an unbound
        // token, the same refusal for an absent or unsupported `cnf`), else one entry.
        let replayed = |check: BindingCheck, trace: &mut Vec<TraceEntry>| {
            match (&check.summary, &check.result) {
                (None, _) | (Some(_), Ok(())) if cnf == "none" => {}
                (Some(_), Err(e @ (BindingError::Required | BindingError::Unsupported { .. }))) => {
                    trace.push(super::bind::cnf_entry(e));
                }
                (Some(summary), result) => {
                    let mut entry =
                        TraceEntry::step(Step::Token, "token.cnf", "bound", result.is_ok());
                    entry.detail = Some(match result {
                        Err(e) => format!("{e} (replayed)"),
                        Ok(()) => {
                            format!("binding `{}` {} (replayed)", summary.method, summary.result)
                        }
                    });
                    trace.push(entry);
                }
                (None, _) => {}
            }
            Ok(check)
        };
        let as_recorded = |b: &RecordedBinding| BindingCheck {
            summary: b.summary.clone(),
            result: b.refused.clone().map_or(Ok(()), Err),
            proof: None,
        };
        let settled = |method: &'static str, result: Result<(), BindingError>| BindingCheck {
            summary: Some(TokenBinding {
                method: method.into(),
                result: match &result {
                    Ok(()) => "unbound".into(),
                    Err(e) => e.code().into(),
                },
            }),
            result,
            proof: None,
        };
        match recorded {
            Some(b) if b.mode == policy.mode && b.window == policy.dpop_window => {
                return replayed(as_recorded(b), trace);
            }
            None if policy.mode == BindingMode::None => return Ok(BindingCheck::default()),
            _ => {}
        }
        let not_kept = || {
            Err(NotReplayable(format!(
                "service `{}` checks the token's binding (`cnf` {cnf}) with other settings (`token.binding`, `token.dpop.window`) than the decision was made with; the client certificate and DPoP proof are not kept",
                service.name
            )))
        };
        if dpop_scheme {
            return not_kept();
        }
        match (policy.mode, cnf) {
            (BindingMode::None, _) => Ok(BindingCheck::default()),
            (BindingMode::Required, "none") => {
                replayed(settled("none", Err(BindingError::Required)), trace)
            }
            (_, "none") => replayed(settled("none", Ok(())), trace),
            (_, "unsupported") => {
                let refused = (recorded.and_then(|b| b.refused.clone())).unwrap_or(
                    BindingError::Unsupported {
                        member: "(not kept)".into(),
                    },
                );
                replayed(settled("unsupported", Err(refused)), trace)
            }
            // A bound token is checked alike under `allowed` and `required`; the window
            // matters only to a DPoP proof.
            _ => match recorded {
                Some(b)
                    if b.mode != BindingMode::None
                        && (b.window == policy.dpop_window || !cnf.contains("jkt")) =>
                {
                    replayed(as_recorded(b), trace)
                }
                _ => not_kept(),
            },
        }
    }
}

impl RecordedToken {
    /// The record of a token `service` refused before reading its claims.
    pub(super) fn refused(service: &ApiService, error: &TokenError, unread: bool) -> Self {
        Self {
            keys: service.token.keys_id.clone(),
            refused: Some(error.clone()),
            unread,
            verified: None,
            binding: None,
        }
    }

    /// The record of a token whose signature `service` verified, keeping the claims that
    /// service reads and those `also` (the shadow set's service of the same name) reads.
    pub(super) fn verified(
        service: &ApiService,
        also: Option<&ApiService>,
        token: &VerifiedToken,
        binding: Option<RecordedBinding>,
    ) -> Self {
        let for_services = (service.id, also.map(|s| s.id));
        let facts = match token.recorded.get() {
            Some(memo) if memo.for_services == for_services => memo.facts.clone(),
            _ => {
                let facts = Arc::new(Self::facts(service, also, token));
                // The first service to ask keeps its facts with the cached token.
                let _ = token.recorded.set(FactsMemo {
                    for_services,
                    facts: facts.clone(),
                });
                facts
            }
        };
        Self {
            keys: service.token.keys_id.clone(),
            refused: None,
            unread: false,
            verified: Some(facts),
            binding,
        }
    }

    /// The facts of `token` that `service` and `also` read.
    fn facts(
        service: &ApiService,
        also: Option<&ApiService>,
        token: &VerifiedToken,
    ) -> VerifiedFacts {
        let also = also.map_or(&[][..], |s| &s.recorded_claims);
        let mut facts = VerifiedFacts::new(token.exp, token.nbf, token.iat);
        for path in service.recorded_claims.iter().chain(also) {
            let name = path.as_str();
            if facts.kept(name) {
                continue;
            }
            match path.lookup(&token.claims) {
                Some(value) => {
                    facts.claims.insert(name.to_owned(), value.clone());
                }
                None => facts.absent.push(name.to_owned()),
            }
        }
        facts
    }

    /// The token as `service` would see it: the same refusal, or the verified token rebuilt
    /// from its facts. Fails when the answer depends on what was not kept.
    /// `summary` is the recorded decision's token summary.
    pub(super) fn replay(
        &self,
        service: &ApiService,
        summary: Option<&TokenSummary>,
    ) -> Result<Result<Arc<VerifiedToken>, TokenError>, NotReplayable> {
        let same_keys = self.keys == service.token.keys_id;
        if let Some(error) = &self.refused {
            if let TokenError::Missing {
                scheme: Some(scheme),
            } = error
                && scheme.eq_ignore_ascii_case("dpop")
                && service.token.binding.mode != BindingMode::None
            {
                return Err(NotReplayable(format!(
                    "the token was sent with the DPoP scheme, which service `{}` accepts (`token.binding`), and the token itself is not kept",
                    service.name
                )));
            }
            if self.unread || same_keys {
                return Ok(Err(error.clone()));
            }
            return Err(NotReplayable(format!(
                "the token was refused ({}) with other keys or algorithms than service `{}` has; the token itself is not kept",
                error.code(),
                service.name
            )));
        }
        let (Some(facts), Some(summary)) = (&self.verified, summary) else {
            return Err(NotReplayable("the record keeps no token facts".into()));
        };
        let alg = summary
            .alg
            .parse::<jsonwebtoken::Algorithm>()
            .map_err(|_| {
                NotReplayable(format!(
                    "the recorded algorithm `{}` is unknown",
                    summary.alg
                ))
            })?;
        if !service.token.algorithms.contains(&alg) {
            return Ok(Err(TokenError::AlgorithmNotAllowed {
                alg: summary.alg.clone(),
                allowed: (service.token.algorithms.iter())
                    .map(|a| format!("{a:?}"))
                    .collect(),
            }));
        }
        if !same_keys {
            return Err(NotReplayable(format!(
                "service `{}` checks signatures with another key set than the one that verified the token; the token itself is not kept",
                service.name
            )));
        }
        if let Some(missing) = service
            .recorded_claims
            .iter()
            .find(|p| !facts.kept(p.as_str()))
        {
            return Err(NotReplayable(format!(
                "service `{}` reads the claim `{}`, which the record does not keep",
                service.name,
                missing.as_str()
            )));
        }
        Ok(Ok(Arc::new(VerifiedToken {
            alg,
            kid: summary.kid.as_deref().map(Into::into),
            claims: facts.claims.clone(),
            sub: summary.sub.clone(),
            client_id: summary.client_id.clone(),
            iss: summary.iss.clone(),
            aud: summary.aud.clone(),
            exp: facts.exp,
            nbf: facts.nbf,
            iat: facts.iat,
            dpop: std::sync::OnceLock::new(),
            recorded: std::sync::OnceLock::new(),
        })))
    }
}
