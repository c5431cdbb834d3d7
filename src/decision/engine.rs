//! The pipeline itself: base URL, token, operation, rules and rate limit, each check written
//! to the trace as it runs; a fault anywhere is a 500 deny. Pure: no I/O.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde_json::Value;

use super::bind::{BindingCaches, BindingCheck, Presented, Proofs};
use super::denial::Denial;
use super::replay::{NotReplayable, Rebuild, RecordedBinding, RecordedToken, ReplayInputs};
use super::{
    Decision, DecisionRequest, Headers, InvalidInput, Outcome, RequestSummary, TokenSummary,
};
use crate::policy::{ApiService, PolicySet};
use crate::ratelimit::{Count, CountedBy, LimitCheck, LimitKey, LocalCounters};
use crate::route::OperationLookup;
use crate::route::url::{RequestUrl, parse_request_url, redact_url};
use crate::rule::{RuleContext, evaluate};
use crate::time::{format_millis, format_unix, unix_millis, unix_seconds};
use crate::token::binding::{BindingError, BindingMode};
use crate::token::{self, TokenCache, TokenError, VerifiedToken};
use crate::trace_entry::{Step, TraceEntry};

/// Longest URL kept in a decision; longer ones are cut with a marker.
const MAX_SHOWN_URL: usize = 2048;
/// The marker that ends a cut URL.
const TRUNCATED: &str = "…[truncated]";

/// The decision engine: the pipeline with its token cache. Shared by all requests.
#[derive(Debug, Default)]
pub struct Engine {
    tokens: TokenCache,
    /// Client-certificate thumbprints and DPoP proof ids seen.
    binding: BindingCaches,
    /// Rate-limit counters of this process.
    limits: LocalCounters,
    /// Test hook: a request URL containing this text panics inside the pipeline.
    panic_marker: Option<Box<str>>,
}

/// What the pipeline learned before it allowed or denied.
struct Progress<'p> {
    service: Option<&'p ApiService>,
    operation: Option<Arc<str>>,
    token: Option<Arc<VerifiedToken>>,
    /// The token's sender binding as checked, for the token summary.
    binding: Option<super::TokenBinding>,
    trace: Vec<TraceEntry>,
    /// The rate limit still to count, once the rules allowed.
    limit: Option<LimitCheck>,
    /// A token refused before its claims were read, and whether it was refused before any
    /// key was used (for the replay inputs).
    refused: Option<(TokenError, bool)>,
    /// Replaying: what stopped the pipeline because the record lacks it.
    unreplayable: Option<NotReplayable>,
    /// The binding check as the service's `token.binding` made it (for the replay inputs).
    bound: Option<RecordedBinding>,
    /// A DPoP proof this engine saw first, for the caller to check against other replicas.
    proof: Option<ProofSeen>,
    /// The token came as `Authorization: DPoP`.
    dpop_scheme: bool,
}

/// A DPoP proof id this engine's replay cache saw for the first time, and until when it
/// must be remembered: with a shared store, other replicas must not have seen it either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProofSeen {
    pub id: crate::token::replay::ProofId,
    /// Unix seconds.
    pub until: i64,
}

/// Where the pipeline's token comes from.
#[derive(Clone, Copy)]
enum Credentials<'a> {
    /// The request itself: the token is read from its headers and verified, and its sender
    /// binding checked against the request's client certificate and DPoP proof.
    Request(Proofs),
    /// A recorded decision's token facts and token summary (replay, rebuild), and what the
    /// token step's trace says of how the token was read.
    Recorded(
        Option<&'a RecordedToken>,
        Option<&'a TokenSummary>,
        TokenRead,
    ),
}

/// How the token step says a token was read: what a replay says, or what the recorded
/// decision said (a rebuild).
#[derive(Clone, Copy)]
enum TokenRead {
    Replayed,
    Verified,
    Cached,
}

impl TokenRead {
    /// Written after "verified" in the token step's detail.
    fn as_str(self) -> &'static str {
        match self {
            TokenRead::Replayed => " (replayed)",
            TokenRead::Verified => "",
            TokenRead::Cached => CACHED,
        }
    }
}

/// What the token step's detail says of a token taken from the verified-token cache.
const CACHED: &str = " (cached)";
/// How the token step's detail of a verified token ends.
const ACCEPTED: &str = "; issuer, audience and validity period accepted";

/// Whether the token step of `trace` took its token from the verified-token cache.
pub(super) fn read_from_cache(trace: &[TraceEntry]) -> bool {
    trace.iter().any(|e| {
        e.step == Step::Token
            && &*e.attribute == "authorization"
            && (e.detail.as_deref())
                .and_then(|d| d.strip_suffix(ACCEPTED))
                .is_some_and(|d| d.ends_with(CACHED))
    })
}

/// A decision whose rules allowed, with the operation's rate limit still to count; the caller
/// counts (locally or in a shared store) and [`finish`](Self::finish)es it.
#[derive(Debug)]
pub struct PendingDecision {
    decision: Decision,
    limit: Option<LimitCheck>,
    proof: Option<ProofSeen>,
}

impl PendingDecision {
    /// The decision as it stands before the count (allowed, if there is one to make).
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// What to count, if the decision waits for a count.
    pub fn limit(&self) -> Option<&LimitCheck> {
        self.limit.as_ref()
    }

    /// The DPoP proof the allowed decision accepted as first seen by this engine; the
    /// caller that shares a replay cache with other replicas checks it there too.
    pub fn proof(&self) -> Option<ProofSeen> {
        self.proof
    }

    /// Turns the decision into the 401 of a replayed DPoP proof: another replica saw it
    /// first. The rate limit is not counted then.
    pub fn refuse_replayed_proof(&mut self) {
        let error = BindingError::DpopReplayed { full: false };
        let decision = &mut self.decision;
        let mut entry = TraceEntry::step(Step::Token, "dpop.jti", "notReplayed", false);
        entry.detail = Some(format!("{error} (another replica saw it first)"));
        decision.trace.push(entry);
        if let Some(summary) = decision.token.as_mut().and_then(|t| t.binding.as_mut()) {
            summary.result = error.code().into();
        }
        let summary = decision.token.as_ref().and_then(|t| t.binding.clone());
        if let Some(bound) = (decision.inputs.as_mut())
            .and_then(|i| i.token.as_mut())
            .and_then(|t| t.binding.as_mut())
        {
            bound.refused = Some(error.clone());
            bound.summary = summary;
        }
        Denial::Token {
            error: TokenError::Binding(error),
            dpop: true,
        }
        .render(decision);
        self.limit = None;
        self.proof = None;
    }

    /// The decision, with the rate limit applied: past it, a 429 deny with `retry-after`.
    /// `count` is ignored when there is no limit to count.
    pub fn finish(self, count: Option<Count>) -> Decision {
        let mut decision = self.decision;
        let (Some(check), Some(count)) = (self.limit, count) else {
            return decision;
        };
        if let Some(inputs) = &mut decision.inputs {
            inputs.count = Some(count.count);
        }
        let within = !count.exceeds(&check);
        let mut entry = TraceEntry::step_of(
            Step::Rule,
            format!("rateLimit.{}", check.key.as_str()).into(),
            "atMost",
            within,
        );
        entry.rule = Some("rateLimit".into());
        entry.expected = Some(Arc::new(Value::from(check.requests)));
        entry.actual = Some(Value::from(count.count));
        entry.location = Some(check.location.clone());
        let by = match count.counted_by {
            CountedBy::Local => "counted by this process",
            CountedBy::Shared => "counted across replicas",
            CountedBy::LocalFallback => "counted by this process: the shared store did not answer",
        };
        entry.detail = Some(format!(
            "request {} of at most {} per {} for {} {}; the window ends in {} s ({by})",
            count.count,
            check.requests,
            humantime::format_duration(check.per),
            check.key.as_str(),
            check
                .value
                .as_deref()
                .map_or_else(|| "(none)".to_owned(), |v| format!("`{v}`")),
            count.retry_after_secs(),
        ));
        decision.trace.push(entry);
        if !within {
            Denial::RateLimited { check, count }.render(&mut decision);
        }
        decision
    }
}

impl Engine {
    /// An engine whose token cache holds at most `token_cache_capacity` verified tokens.
    pub fn new(token_cache_capacity: usize) -> Self {
        Self {
            tokens: TokenCache::new(token_cache_capacity),
            binding: BindingCaches::default(),
            limits: LocalCounters::default(),
            panic_marker: None,
        }
    }

    /// Makes every request whose URL contains `marker` panic inside the pipeline, to prove
    /// that a fault denies with 500 and the server goes on. For tests; never set it in
    /// production.
    pub fn with_panic_marker(mut self, marker: &str) -> Self {
        self.panic_marker = (!marker.is_empty()).then(|| marker.into());
        self
    }

    pub fn token_cache(&self) -> &TokenCache {
        &self.tokens
    }

    /// This process' rate-limit counters.
    pub fn local_limits(&self) -> &LocalCounters {
        &self.limits
    }

    /// The DPoP proof ids this engine remembers against replay.
    pub fn proof_replays(&self) -> &crate::token::replay::ReplayCache {
        &self.binding.replays
    }

    /// Decides on `request` with `policies` at `now`, counting rate limits with this
    /// process' counters. Never fails and never panics: any internal fault is a 500 deny.
    pub fn decide(
        &self,
        policies: &PolicySet,
        request: &DecisionRequest<'_>,
        now: SystemTime,
    ) -> Decision {
        let pending = self.decide_pending(policies, request, now);
        let count = pending.limit().map(|check| {
            self.limits
                .hit(check, unix_millis(now).max(0) as u64, CountedBy::Local)
        });
        pending.finish(count)
    }

    /// Decides on `request` up to its rate limit, which the caller counts. Never fails and
    /// never panics.
    pub fn decide_pending(
        &self,
        policies: &PolicySet,
        request: &DecisionRequest<'_>,
        now: SystemTime,
    ) -> PendingDecision {
        self.decide_pending_recording(policies, None, request, now)
    }

    /// [`decide_pending`](Self::decide_pending), with replay inputs that also keep the claims
    /// `also` (the shadow set) reads, so that its decisions can be replayed too.
    pub fn decide_pending_recording(
        &self,
        policies: &PolicySet,
        also: Option<&PolicySet>,
        request: &DecisionRequest<'_>,
        now: SystemTime,
    ) -> PendingDecision {
        self.pipeline(
            policies,
            request,
            Credentials::Request(Proofs::Remember),
            (now, None),
            |progress, decision| {
                let token = progress.service.and_then(|service| {
                    if let Some((error, unread)) = &progress.refused {
                        return Some(RecordedToken::refused(service, error, *unread));
                    }
                    let also = also.and_then(|set| set.service(&service.name));
                    (progress.token.as_deref())
                        .map(|t| RecordedToken::verified(service, also, t, progress.bound.take()))
                });
                let unreplayable = decision.request.url.ends_with(TRUNCATED).then(|| {
                    format!("the URL was longer than {MAX_SHOWN_URL} bytes and is kept cut")
                });
                decision.inputs = Some(Box::new(ReplayInputs {
                    at: unix_millis(now),
                    token,
                    count: None,
                    unreplayable,
                }));
            },
        )
    }

    /// The shadow set's decision on `request`: no replay inputs, and the active decision's
    /// rate-limit `count` reused (a shadow set never counts), none meaning within the limit.
    /// A DPoP proof is not remembered again: it counts as replayed exactly when the active
    /// decision (`active_detail`, its detail code) found it so.
    pub fn decide_shadow(
        &self,
        policies: &PolicySet,
        request: &DecisionRequest<'_>,
        now: SystemTime,
        count: Option<Count>,
        active_detail: Option<&str>,
    ) -> Decision {
        let replayed = active_detail == Some("DPOP_REPLAYED");
        let pending = self.pipeline(
            policies,
            request,
            Credentials::Request(Proofs::AsActive { replayed }),
            (now, None),
            |_, _| {},
        );
        pending.finish(count)
    }

    /// Decides again, with `policies`, the request a recorded decision was made on, from
    /// what its record kept: its request, time, token facts and rate-limit count (nothing is
    /// counted). Fails when the answer depends on something the record does not keep.
    pub fn replay(
        &self,
        policies: &PolicySet,
        recorded: &Decision,
    ) -> Result<Decision, NotReplayable> {
        let (pending, inputs) =
            self.decide_recorded(policies, recorded, (TokenRead::Replayed, None))?;
        let count = pending.limit().map(|_| Count {
            count: inputs.count.unwrap_or(1),
            millis_left: 0,
            counted_by: CountedBy::Local,
        });
        Ok(pending.finish(count))
    }

    /// The decision `recorded` was, decided again with the policy set it was decided with,
    /// from what its record keeps: `recorded` holds the decision's id, time, duration,
    /// request, token summary, replay inputs, trace link and shadow decision, and
    /// [`Rebuild::of`] said how its token was read. Equal to the original decision for every
    /// decision `Rebuild::of` accepts (the tests decide every suite case and compare); fails
    /// when the policy set is not that one after all (its key set changed, a claim it reads
    /// is not kept).
    pub fn rebuild(
        &self,
        policies: &PolicySet,
        recorded: &Decision,
        how: Rebuild,
    ) -> Result<Decision, NotReplayable> {
        let read = if how.token_cached {
            TokenRead::Cached
        } else {
            TokenRead::Verified
        };
        let (pending, _) = self.decide_recorded(policies, recorded, (read, Some(&recorded.id)))?;
        // `Rebuild::of` accepts no decision that counted a rate limit.
        let mut decision = pending.finish(None);
        decision.time.clone_from(&recorded.time);
        decision.duration_micros = recorded.duration_micros;
        decision.upstream_status = recorded.upstream_status;
        decision.trace_link = recorded.trace_link;
        decision.inputs.clone_from(&recorded.inputs);
        decision.shadow.clone_from(&recorded.shadow);
        Ok(decision)
    }

    /// The pipeline on a recorded decision's request and inputs (replay, rebuild), its token
    /// step saying `read`, the decision given id `id` (else a new one).
    fn decide_recorded<'r>(
        &self,
        policies: &PolicySet,
        recorded: &'r Decision,
        (read, id): (TokenRead, Option<&str>),
    ) -> Result<(PendingDecision, &'r ReplayInputs), NotReplayable> {
        let (inputs, client, now) = recorded_inputs(recorded)?;
        let request = DecisionRequest {
            method: &recorded.request.method,
            url: &recorded.request.url,
            headers: &[],
            client,
            client_cert: None,
        };
        let mut unreplayable = None;
        let pending = self.pipeline(
            policies,
            &request,
            Credentials::Recorded(inputs.token.as_ref(), recorded.token.as_ref(), read),
            (now, id),
            |progress, _| unreplayable = progress.unreplayable.take(),
        );
        match unreplayable {
            Some(reason) => Err(reason),
            None => Ok((pending, inputs)),
        }
    }

    /// The pipeline, with `done` to see what it learned before the decision is returned.
    fn pipeline<'p>(
        &self,
        policies: &'p PolicySet,
        request: &DecisionRequest<'_>,
        credentials: Credentials<'_>,
        (now, id): (SystemTime, Option<&str>),
        done: impl FnOnce(&mut Progress<'p>, &mut Decision),
    ) -> PendingDecision {
        let started = Instant::now();
        // A rebuild writes the recorded decision's id.
        let id = id.map_or_else(|| ulid::Ulid::from_datetime(now).to_string(), str::to_owned);
        let shown_url = shown_url(request.url);
        let mut progress = Progress {
            service: None,
            operation: None,
            token: None,
            binding: None,
            trace: Vec::with_capacity(8),
            limit: None,
            refused: None,
            unreplayable: None,
            bound: None,
            proof: None,
            dpop_scheme: false,
        };
        let verdict = catch_unwind(AssertUnwindSafe(|| {
            self.run(policies, request, credentials, now, &mut progress)
        }))
        .unwrap_or_else(|_| {
            tracing::error!(decision_id = %id, "panic while deciding; the request is denied");
            Err(Denial::Internal)
        });
        let mut decision = Decision {
            time: format_millis(now),
            duration_micros: 0,
            service: progress.service.map(|s| s.name.clone()),
            operation: progress.operation.clone(),
            policy_revision: policies.revision().clone(),
            request: RequestSummary {
                method: shown_method(request.method),
                url: shown_url,
                client: request.client.map(|ip| ip.to_string()),
            },
            outcome: Outcome::Allow,
            status: 200,
            upstream_status: None,
            headers: Headers::default(),
            upstream_headers: Headers::default(),
            body: None,
            token: (progress.token.as_deref())
                .map(|t| TokenSummary::of(t, progress.binding.take())),
            trace: std::mem::take(&mut progress.trace),
            audit: String::new(),
            trace_link: None,
            inputs: None,
            shadow: None,
            id,
        };
        match verdict {
            Ok(upstream) => {
                decision.headers.push("x-decision-id", decision.id.clone());
                decision.upstream_headers = upstream;
                let url = &decision.request.url;
                let mut audit = String::with_capacity(url.len() + 30);
                audit.push_str("Request to the URL \"");
                audit.push_str(url);
                audit.push_str("\" allowed.");
                decision.audit = audit;
            }
            Err(denial) => denial.render(&mut decision),
        }
        done(&mut progress, &mut decision);
        decision.duration_micros = started.elapsed().as_micros() as u64;
        PendingDecision {
            limit: progress.limit.filter(|_| decision.is_allowed()),
            proof: progress.proof.filter(|_| decision.is_allowed()),
            decision,
        }
    }

    /// The decision on a request the interface could not read (see [`InvalidInput`]): a 400
    /// deny that names the field, made without running the pipeline. `request` holds what
    /// could be read of the request.
    pub fn refuse_input(
        &self,
        policies: &PolicySet,
        request: &DecisionRequest<'_>,
        input: InvalidInput,
        now: SystemTime,
    ) -> Decision {
        let started = Instant::now();
        let mut decision = Decision {
            id: ulid::Ulid::from_datetime(now).to_string(),
            time: format_millis(now),
            duration_micros: 0,
            service: None,
            operation: None,
            policy_revision: policies.revision().clone(),
            request: RequestSummary {
                method: shown_method(request.method),
                url: shown_url(request.url),
                client: request.client.map(|ip| ip.to_string()),
            },
            outcome: Outcome::Deny,
            status: 400,
            upstream_status: None,
            headers: Headers::default(),
            upstream_headers: Headers::default(),
            body: None,
            token: None,
            trace: Vec::new(),
            audit: String::new(),
            trace_link: None,
            inputs: None,
            shadow: None,
        };
        Denial::BadInput(input).render(&mut decision);
        decision.duration_micros = started.elapsed().as_micros() as u64;
        decision
    }

    fn run<'p>(
        &self,
        policies: &'p PolicySet,
        request: &DecisionRequest<'_>,
        credentials: Credentials<'_>,
        now: SystemTime,
        progress: &mut Progress<'p>,
    ) -> Result<Headers, Denial> {
        #[cfg(test)]
        if tests::FORCE_PANIC.with(|f| f.get()) {
            panic!("forced by a test");
        }
        if let Some(marker) = &self.panic_marker
            && request.url.contains(&**marker)
        {
            panic!("fault injection: the request URL contains the panic marker");
        }
        // 1. Base URL.
        let url = match parse_request_url(request.url) {
            Ok(url) => url,
            Err(e) => {
                let mut entry = TraceEntry::step(Step::BaseUrl, "url", "parse", false);
                entry.detail = Some(e.to_string());
                progress.trace.push(entry);
                return Err(Denial::BadUrl(e));
            }
        };
        let Some(base) = policies.match_service(&url) else {
            let mut entry = TraceEntry::step(Step::BaseUrl, "url", "longestPrefix", false);
            entry.actual = Some(Value::String(canonical_url(&url)));
            entry.detail =
                Some("no API service has a base URL that is a prefix of this URL".into());
            progress.trace.push(entry);
            return Err(Denial::NoService);
        };
        let service = &policies.services[base.service];
        progress.service = Some(service);
        let mut entry = TraceEntry::step(Step::BaseUrl, "url", "longestPrefix", true);
        entry.expected = Some(Arc::new(Value::String(
            service.base_urls[base.base_url].clone(),
        )));
        entry.actual = Some(Value::String(canonical_url(&url)));
        entry.location = Some(service.source.clone());
        progress.trace.push(entry);

        // 2. Token.
        let token = match authenticate(
            service,
            request,
            &url,
            credentials,
            (&self.tokens, &self.binding),
            unix_seconds(now),
            progress,
        ) {
            Ok(token) => token,
            Err(error) => {
                return Err(Denial::Token {
                    error,
                    dpop: progress.dpop_scheme,
                });
            }
        };
        if progress.unreplayable.is_some() {
            // Replaying, and the record cannot tell: the caller reports why, not this deny.
            return Err(Denial::Internal);
        }

        // 3. Operation.
        let found = match service
            .operation_index
            .lookup(request.method, &url.path, base.consumed)
        {
            OperationLookup::Found(found) => found,
            other => {
                let path = url.path.path_string_from(base.consumed);
                let mut entry = TraceEntry::step(Step::Operation, "request", "match", false);
                entry.actual = Some(Value::String(format!(
                    "{} {path}",
                    shown_method(request.method)
                )));
                return Err(match other {
                    OperationLookup::MethodNotAllowed(allowed) => {
                        entry.expected = Some(Arc::new(Value::from(
                            allowed.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
                        )));
                        entry.detail =
                            Some("a path template matches, but not for this method".into());
                        progress.trace.push(entry);
                        Denial::MethodNotAllowed { path, allowed }
                    }
                    _ => {
                        entry.detail = Some("no operation's path template matches".into());
                        progress.trace.push(entry);
                        Denial::NoOperation {
                            path,
                            status: service.unmatched_status,
                        }
                    }
                });
            }
        };
        let operation = &service.operations[found.operation];
        progress.operation = Some(operation.name.clone());
        let mut entry = TraceEntry::step(Step::Operation, "request", "match", true);
        entry.rule = Some(operation.name.clone());
        // "METHOD path", each written into one string.
        let method = shown_method(request.method);
        let template = &operation.paths[found.path];
        let mut expected = String::with_capacity(method.len() + 1 + template.len());
        expected.push_str(&method);
        expected.push(' ');
        expected.push_str(template);
        entry.expected = Some(Arc::new(Value::String(expected)));
        let mut actual = method;
        actual.push(' ');
        url.path.push_path(&mut actual, base.consumed);
        entry.actual = Some(Value::String(actual));
        entry.location = Some(operation.location.clone());
        progress.trace.push(entry);

        // 4. Rules.
        let ctx = RuleContext {
            token: &token,
            params: &found.params,
            client: request.client,
            claims: &service.claim_names,
        };
        let failures = evaluate(&operation.rules, &ctx, &mut progress.trace);
        if !failures.is_empty() {
            return Err(Denial::Rules {
                operation: operation.name.clone(),
                failures,
            });
        }

        if let Some(limit) = &operation.rate_limit {
            let client;
            let value = match limit.key {
                LimitKey::Subject => token.sub.as_deref(),
                LimitKey::Client => token.client_id.as_deref(),
                LimitKey::Ip => {
                    client = request.client.map(|ip| ip.to_string());
                    client.as_deref()
                }
            };
            progress.limit = Some(LimitCheck::new(
                &service.name,
                &operation.name,
                limit,
                value,
            ));
        }

        // 5. Allow.
        let mut upstream = Headers::default();
        for (name, template) in &service.upstream_headers {
            upstream.push(
                name.to_string(),
                header_safe(template.render_header(&token)),
            );
        }
        Ok(upstream)
    }
}

/// What `recorded`'s record kept to decide it again: its inputs, client address and time.
fn recorded_inputs(
    recorded: &Decision,
) -> Result<(&ReplayInputs, Option<std::net::IpAddr>, SystemTime), NotReplayable> {
    let Some(inputs) = recorded.inputs.as_deref() else {
        return Err(NotReplayable(
            "the record keeps no inputs (the interface could not read the request)".into(),
        ));
    };
    if let Some(reason) = &inputs.unreplayable {
        return Err(NotReplayable(reason.clone()));
    }
    let client = match recorded.request.client.as_deref().map(str::parse) {
        None => None,
        Some(Ok(ip)) => Some(ip),
        Some(Err(_)) => {
            return Err(NotReplayable(
                "the recorded client address is not an IP address".into(),
            ));
        }
    };
    let now = std::time::UNIX_EPOCH
        + std::time::Duration::from_millis(u64::try_from(inputs.at).unwrap_or(0));
    Ok((inputs, client, now))
}

fn authenticate(
    service: &ApiService,
    request: &DecisionRequest<'_>,
    url: &RequestUrl<'_>,
    credentials: Credentials<'_>,
    (cache, binding): (&TokenCache, &BindingCaches),
    now: i64,
    progress: &mut Progress<'_>,
) -> Result<Arc<VerifiedToken>, TokenError> {
    let mut recorded_token = None;
    let verified = match credentials {
        Credentials::Request(_) => {
            let accept_dpop = service.token.binding.mode != BindingMode::None;
            token::read_credentials(request.headers, accept_dpop)
                .map_err(|e| (e, true))
                .and_then(|(raw, scheme)| {
                    let verified =
                        token::verify_credentials_cached(raw, &service.token, cache, now);
                    // A token refused for its characters was never read as one of this scheme.
                    if !matches!(verified, Err((_, true))) {
                        progress.dpop_scheme = scheme == token::Scheme::Dpop;
                    }
                    verified.map(|(verified, cached)| {
                        let how = if cached { CACHED } else { "" };
                        (verified, how, Some((raw, scheme)))
                    })
                })
        }
        Credentials::Recorded(None, ..) => {
            progress.unreplayable = Some(NotReplayable(format!(
                "the request now matches service `{}`, and the record keeps no token for it",
                service.name
            )));
            return Err(TokenError::KeysUnavailable);
        }
        Credentials::Recorded(Some(recorded), summary, read) => {
            match recorded.replay(service, summary) {
                Ok(result) => {
                    recorded_token = Some(recorded);
                    result
                        .map(|verified| (verified, read.as_str(), None))
                        .map_err(|e| (e, true))
                }
                Err(reason) => {
                    progress.unreplayable = Some(reason);
                    return Err(TokenError::KeysUnavailable);
                }
            }
        }
    };
    let result = match verified {
        Ok((verified, how, sent)) => {
            progress.token = Some(verified.clone());
            token::check_claims(&verified, &service.token, now).map(|()| (verified, how, sent))
        }
        Err((e, unread)) => {
            progress.refused = Some((e.clone(), unread));
            Err(e)
        }
    };
    match result {
        Ok((verified, how, sent)) => {
            let mut entry =
                TraceEntry::step(Step::Token, "authorization", "validBearerToken", true);
            // Written in place, not with `format!`: it is on every allowed request's path.
            let alg = token::algorithm_name(verified.alg);
            let kid = verified.kid.as_deref();
            let mut detail = String::with_capacity(
                alg.len() + 40 + kid.map_or(0, str::len) + how.len() + ACCEPTED.len(),
            );
            detail.push_str(&alg);
            detail.push_str(" signature");
            if let Some(kid) = kid {
                detail.push_str(" by key `");
                detail.push_str(kid);
                detail.push('`');
            }
            detail.push_str(" verified");
            detail.push_str(how);
            detail.push_str(ACCEPTED);
            entry.detail = Some(detail);
            progress.trace.push(entry);
            let checked = match (sent, credentials) {
                (Some((raw, scheme)), Credentials::Request(proofs)) => {
                    let presented = Presented {
                        method: request.method,
                        raw_url: request.url,
                        url,
                        headers: request.headers,
                        certificate: request.client_cert,
                        access_token: raw,
                        scheme,
                    };
                    super::bind::check(
                        service,
                        &verified,
                        &presented,
                        (binding, proofs),
                        now,
                        &mut progress.trace,
                    )
                }
                _ => match recorded_token.map(|r| r.replay_binding(service, &mut progress.trace)) {
                    Some(Ok(checked)) => checked,
                    Some(Err(reason)) => {
                        progress.unreplayable = Some(reason);
                        return Err(TokenError::KeysUnavailable);
                    }
                    None => BindingCheck::default(),
                },
            };
            // Kept for replay unless there is nothing to tell: `binding: none` and no `cnf`.
            let policy = service.token.binding;
            let cnf = crate::token::binding::kind(&verified);
            if let Some((_, scheme)) = sent
                && (policy.mode != BindingMode::None || cnf != "none")
            {
                progress.bound = Some(RecordedBinding {
                    mode: policy.mode,
                    window: policy.dpop_window,
                    cnf: cnf.into(),
                    dpop_scheme: scheme == token::Scheme::Dpop,
                    summary: checked.summary.clone(),
                    refused: checked.result.clone().err(),
                });
            }
            progress.binding = checked.summary;
            progress.proof = checked.proof;
            checked.result.map_err(TokenError::Binding)?;
            Ok(verified)
        }
        Err(e) => {
            let mut entry = TraceEntry::step_of(
                Step::Token,
                format!("token.{}", e.target()).into(),
                token_check(&e),
                false,
            );
            match &e {
                TokenError::InvalidIssuer { expected, actual } => {
                    entry.expected = Some(Arc::new(Value::from(expected.as_str())));
                    entry.actual = Some(actual.as_deref().map_or(Value::Null, Value::from));
                }
                TokenError::InvalidAudience { expected, actual } => {
                    entry.expected = Some(Arc::new(Value::from(expected.clone())));
                    entry.actual = Some(Value::from(actual.clone()));
                }
                TokenError::AlgorithmNotAllowed { alg, allowed } => {
                    entry.expected = Some(Arc::new(Value::from(allowed.clone())));
                    entry.actual = Some(Value::from(alg.as_str()));
                }
                TokenError::Expired { exp } => entry.actual = Some(Value::from(format_unix(*exp))),
                TokenError::NotYetValid { nbf } => {
                    entry.actual = Some(Value::from(format_unix(*nbf)))
                }
                TokenError::IssuedInFuture { iat } => {
                    entry.actual = Some(Value::from(format_unix(*iat)))
                }
                _ => {}
            }
            entry.detail = Some(e.to_string());
            progress.trace.push(entry);
            Err(e)
        }
    }
}

fn token_check(e: &TokenError) -> &'static str {
    match e {
        TokenError::Missing { .. } | TokenError::MultipleTokens => "present",
        TokenError::TooLarge { .. } | TokenError::Malformed { .. } => "wellFormed",
        TokenError::AlgorithmNotAllowed { .. } | TokenError::KeyDoesNotFitAlgorithm { .. } => {
            "algorithmAllowed"
        }
        TokenError::UnknownKey { .. }
        | TokenError::KeyIdRequired { .. }
        | TokenError::KeysUnavailable => "keyKnown",
        TokenError::InvalidSignature => "signatureValid",
        TokenError::MissingExpiry | TokenError::Expired { .. } => "notExpired",
        TokenError::NotYetValid { .. } | TokenError::IssuedInFuture { .. } => "alreadyValid",
        TokenError::InvalidIssuer { .. } => "equals",
        TokenError::InvalidAudience { .. } => "anyOf",
        TokenError::Binding(_) => "bound",
    }
}

/// The URL as decisions show it: credentials in the query redacted, length capped.
fn shown_url(url: &str) -> String {
    let redacted = redact_url(url);
    if redacted.len() <= MAX_SHOWN_URL {
        return redacted.into_owned();
    }
    let mut cut = MAX_SHOWN_URL;
    while !redacted.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{TRUNCATED}", &redacted[..cut])
}

/// Methods are tokens; anything else is shown escaped and short.
fn shown_method(method: &str) -> String {
    if !method.is_empty() && method.len() <= 32 && method.bytes().all(|b| b.is_ascii_graphic()) {
        method.to_owned()
    } else {
        method
            .chars()
            .take(32)
            .flat_map(char::escape_default)
            .collect()
    }
}

/// The URL as matched: scheme, host, port when not the default, and the normalised path;
/// no query. DPoP proofs' `htu` are compared in this form too.
pub(super) fn canonical_url(url: &RequestUrl<'_>) -> String {
    use std::fmt::Write as _;
    // One string, written in place: this runs for every decision that matched a base URL.
    let mut out = String::with_capacity(16 + url.host.len() + url.path.text_len() + url.path.len());
    out.push_str(url.scheme.as_str());
    out.push_str("://");
    out.push_str(&url.host);
    if url.port != url.scheme.default_port() {
        let _ = write!(out, ":{}", url.port);
    }
    url.path.push_path(&mut out, 0);
    out
}

/// Header values must not carry control characters (no header injection through claims).
fn header_safe(value: String) -> String {
    if !value.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return value;
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if (c as u32) < 0x20 || c as u32 == 0x7f {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        pub(super) static FORCE_PANIC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn a_panic_while_deciding_is_a_500_deny_and_the_next_decision_works() {
        let policies = crate::policy::load_dir("policies".as_ref(), &Default::default()).unwrap();
        let engine = Engine::default();
        let request = DecisionRequest {
            method: "GET",
            url: "https://localhost:8443/meme-game/api/v1/leaderboard",
            headers: &[],
            client: None,
            client_cert: None,
        };
        FORCE_PANIC.with(|f| f.set(true));
        let decision = engine.decide(&policies, &request, SystemTime::now());
        FORCE_PANIC.with(|f| f.set(false));
        assert_eq!((decision.outcome, decision.status), (Outcome::Deny, 500));
        let body = decision.body.as_ref().unwrap();
        assert_eq!(
            (body.code.as_ref(), decision.detail_code()),
            ("UNEXPECTED_ERROR", Some("INTERNAL_ERROR"))
        );
        assert_eq!(
            decision.headers.get("x-decision-id"),
            Some(decision.id.as_str())
        );
        assert!(body.details[0].message.contains(&decision.id));
        let next = engine.decide(&policies, &request, SystemTime::now());
        assert_eq!(next.status, 401);
    }

    /// `Bearer` and a token of the shipped `meme-game` issuer, valid for 10 minutes, with
    /// `claims` (an object) added.
    fn meme_game_bearer(claims: Value) -> String {
        let pem = std::fs::read("policies/keys/meme-game.dev-key.pem").unwrap();
        let now = crate::time::unix_seconds(SystemTime::now());
        let mut all = serde_json::json!({
            "iss": "https://auth.example.com", "aud": "meme-game", "iat": now, "exp": now + 600,
        });
        all.as_object_mut()
            .unwrap()
            .extend(claims.as_object().unwrap().clone());
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("meme-game-dev-rsa-1".into());
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
        format!(
            "Bearer {}",
            jsonwebtoken::encode(&header, &all, &key).unwrap()
        )
    }

    #[test]
    fn a_token_refused_for_its_text_is_refused_so_with_a_valid_one_cached() {
        let policies = crate::policy::load_dir("policies".as_ref(), &Default::default()).unwrap();
        let engine = Engine::default();
        let valid = meme_game_bearer(serde_json::json!({"sub": "user.1", "groups": ["viewers"]}));
        let token = valid.strip_prefix("Bearer ").unwrap();
        let long = "A".repeat(token::MAX_TOKEN_LEN);
        let hostile = [
            format!("{token}!"),
            format!("{token}, Bearer {token}"),
            format!("{token} x"),
            format!("{long}.{long}"),
            format!("{long}.{long},"),
            format!("{long}.{long}@"),
            "@".into(),
        ];
        let decide = |authorization: &str| {
            let request = DecisionRequest {
                method: "GET",
                url: "https://localhost:8443/meme-game/api/v1/leaderboard",
                headers: &[("authorization", authorization)],
                client: None,
                client_cert: None,
            };
            engine.decide(&policies, &request, SystemTime::now())
        };
        for _ in 0..2 {
            assert_eq!(decide(&valid).status, 200);
        }
        for credentials in hostile {
            let authorization = format!("Bearer {credentials}");
            let expected = token::extract_credentials(&[("authorization", &authorization)], false)
                .expect_err("a hostile token");
            let d = decide(&authorization);
            let shown: String = credentials.chars().take(40).collect();
            assert_eq!(
                (d.status, d.detail_code()),
                (expected.status(), Some(expected.code())),
                "{shown}…"
            );
        }
    }

    #[test]
    fn a_cached_tokens_recorded_facts_are_those_of_the_service_deciding() {
        let active = crate::policy::load_dir("policies".as_ref(), &Default::default()).unwrap();
        // A reloaded set whose `send-reaction` reads `department` too.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        for name in ["meme-game.yaml", "keys/meme-game.jwks.json"] {
            let text =
                std::fs::read_to_string(std::path::Path::new("policies").join(name)).unwrap();
            let text = text.replace(
                "- claim: { name: sub, equals: \"{path.userId}\" }",
                "- claim: { name: department, equals: games }",
            );
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let reloaded = crate::policy::load_dir(dir.path(), &Default::default()).unwrap();
        let authorization = meme_game_bearer(serde_json::json!({
            "sub": "user.0", "groups": ["players"], "department": "games",
        }));
        let request = DecisionRequest {
            method: "POST",
            url: "https://localhost:8443/meme-game/api/v1/users/user.0/reactions",
            headers: &[("authorization", &authorization)],
            client: None,
            client_cert: None,
        };
        let engine = Engine::default();
        let recorded = |set: &PolicySet| {
            let d = engine
                .decide_pending_recording(set, None, &request, SystemTime::now())
                .finish(None);
            assert_eq!(d.outcome, Outcome::Allow, "{}", d.audit);
            let token_entry = d.trace.iter().find(|e| e.step == Step::Token).unwrap();
            let cached = token_entry.detail.as_deref().unwrap().contains("(cached)");
            let inputs = d.inputs.unwrap();
            let facts = inputs.token.unwrap().verified.unwrap();
            let mut names: Vec<String> = facts.claims.keys().cloned().collect();
            names.sort();
            (names, cached)
        };
        let (first, cached) = recorded(&active);
        assert!(!cached);
        assert!(first.contains(&"sub".to_owned()) && !first.contains(&"department".to_owned()));
        // The same cached token decided by the reloaded service: its own claims, not the
        // facts kept with the token for the first service.
        let (second, cached) = recorded(&reloaded);
        assert!(cached, "the token came from the cache");
        assert!(second.contains(&"department".to_owned()), "{second:?}");
        assert_eq!(recorded(&active), (first, true));
    }

    #[test]
    fn the_trace_words_what_was_checked_the_same_way_on_every_decision() {
        let policies = crate::policy::load_dir("policies".as_ref(), &Default::default()).unwrap();
        let authorization =
            meme_game_bearer(serde_json::json!({"sub": "user.1", "groups": ["viewers"]}));
        let request = DecisionRequest {
            method: "GET",
            url: "https://LOCALHOST:8443/meme-game/api/v1/./leaderboard?page=2",
            headers: &[("authorization", &authorization)],
            client: None,
            client_cert: None,
        };
        let engine = Engine::default();
        let entry =
            |d: &Decision, step: Step| d.trace.iter().find(|e| e.step == step).unwrap().clone();
        for (round, cached) in [(1, ""), (2, " (cached)")] {
            let d = engine.decide(&policies, &request, SystemTime::now());
            assert_eq!(d.outcome, Outcome::Allow, "round {round}: {}", d.audit);
            assert_eq!(
                entry(&d, Step::BaseUrl).actual,
                Some(Value::from(
                    "https://localhost:8443/meme-game/api/v1/leaderboard"
                ))
            );
            assert_eq!(
                entry(&d, Step::Token).detail.unwrap(),
                format!(
                    "RS256 signature by key `meme-game-dev-rsa-1` verified{cached}; issuer, audience and validity period accepted"
                )
            );
            let operation = entry(&d, Step::Operation);
            assert_eq!(
                operation.expected.as_deref(),
                Some(&Value::from("GET /leaderboard"))
            );
            assert_eq!(operation.actual, Some(Value::from("GET /leaderboard")));
        }
        // A path under the base URL that no operation has: the rest of the path, shown.
        let d = engine.decide(
            &policies,
            &DecisionRequest {
                url: "https://localhost:8443/meme-game/api/v1/no/such%2Fthing",
                ..request
            },
            SystemTime::now(),
        );
        assert_eq!(
            entry(&d, Step::Operation).actual,
            Some(Value::from("GET /no/such/thing"))
        );
    }

    #[test]
    fn upstream_header_values_cannot_inject_lines() {
        assert_eq!(header_safe("a\r\nx-admin: 1".into()), "a%0D%0Ax-admin: 1");
        assert_eq!(header_safe("plain é".into()), "plain é");
    }

    #[test]
    fn long_urls_are_cut_and_methods_escaped() {
        let long = format!("https://h/{}", "a".repeat(5000));
        let shown = shown_url(&long);
        assert!(shown.len() < 2100 && shown.ends_with("[truncated]"));
        assert_eq!(shown_method("GET"), "GET");
        assert_eq!(shown_method("G\nT"), "G\\nT");
    }
}
