//! Packing a decision into its record, and rebuilding the decision from the record.

use std::borrow::Cow;
use std::fmt;
use std::mem::size_of;
use std::sync::{Arc, OnceLock};

use super::audit::Audit;
use super::cap::{Capped, cap_decision, kept_within_caps, within_caps};
use super::interner::Interner;
use super::text::has_jwt;
use super::value::{decode_value, encoded_len, write_value};
use super::{
    BODY_INLINE, DecisionHeader, RECORD_INLINE, RebuildFrom, StoredBody, StoredDecision,
    StoredDetail, StoredEntry, StoredInputs, StoredToken, TextSpan, UpstreamStatus,
};
use crate::decision::{
    Decision, Engine, ErrorBody, ErrorDetail, Headers, Outcome, ReplayInputs, RequestSummary, Step,
    TokenSummary, TraceEntry,
};
use crate::token::TokenError;

/// Request methods shared between records; any other is kept as it came.
const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
];

/// Builds a record from a decision, adding up the heap bytes the record takes. `holders`
/// counts the decisions that hold the decision's `Arc`s (the one being recorded, and its
/// capped copy if it needed one): an `Arc` held by more is shared (with the policy set).
struct Packer<'i> {
    interner: &'i Interner,
    holders: usize,
    bytes: usize,
}

impl Packer<'_> {
    fn boxed(&mut self, s: &str) -> Box<str> {
        self.bytes += s.len();
        Box::from(s)
    }

    fn text(&mut self, s: &str) -> Arc<str> {
        let (text, bytes) = self.interner.text(s);
        self.bytes += bytes;
        text
    }

    /// A code, copied: the engine's are static; others are kept as they came.
    fn code(&mut self, code: Cow<'static, str>) -> Cow<'static, str> {
        if let Cow::Owned(s) = &code {
            self.bytes += s.capacity();
        }
        code
    }

    fn slice<T>(&mut self, items: Vec<T>) -> Box<[T]> {
        self.bytes += items.len() * size_of::<T>();
        items.into_boxed_slice()
    }

    /// `e` as stored, its `actual` value and detail appended to `text`.
    fn entry(&mut self, e: &TraceEntry, text: &mut Vec<u8>) -> StoredEntry {
        let (names, bytes) = self.interner.entry(e, self.holders);
        self.bytes += bytes;
        // The expected strings of the base URL, token and operation steps come from the
        // policy but are made afresh per decision; a rule's are the policy set's own or
        // rendered from the request (`{path.userId}`), which would only fill the table.
        let expected = e.expected.as_ref().map(|v| {
            let (v, bytes) = self.interner.value(v, e.step != Step::Rule, self.holders);
            self.bytes += bytes;
            v
        });
        let start = text.len();
        let actual =
            (e.actual.as_ref()).map(|v| TextSpan::write(text, |text| write_value(v, text)));
        let detail = e
            .detail
            .as_deref()
            .map(|d| TextSpan::push(text, d.as_bytes()));
        self.bytes += text.len() - start;
        StoredEntry {
            names,
            expected,
            actual,
            detail,
            result: e.result,
            decisive: e.decisive,
        }
    }

    fn body(&mut self, b: &ErrorBody, id: &str, decisive_detail: Option<&str>) -> Box<StoredBody> {
        self.bytes += BODY_INLINE;
        let details: Vec<StoredDetail> = b
            .details
            .iter()
            .map(|d| StoredDetail {
                code: self.code(d.code.clone()),
                target: self.text(&d.target),
                message: (Some(d.message.as_str()) != decisive_detail)
                    .then(|| self.boxed(&d.message)),
            })
            .collect();
        Box::new(StoredBody {
            id: (b.id != id).then(|| self.boxed(&b.id)),
            code: self.code(b.code.clone()),
            message: self.text(&b.message),
            target: self.text(&b.target),
            details: self.slice(details),
        })
    }

    fn token(&mut self, t: &TokenSummary) -> Box<StoredToken> {
        let token = StoredToken::of(t);
        self.bytes += token.heap_bytes();
        Box::new(token)
    }
}

impl StoredDecision {
    /// A capped, scrubbed copy of `decision`, as
    /// [`TraceStore::record`](crate::trace::TraceStore::record) stores it; for
    /// decisions that come from elsewhere (another replica), which get the same limits.
    pub fn of(decision: &Decision) -> Self {
        Self::capped(decision, &Interner::default(), None)
    }

    /// The record of `decision`; with `rebuild` (the engine made it, and [`Rebuild::of`]
    /// accepted it), a record that keeps only its inputs when nothing of it is cut.
    pub(crate) fn capped(
        decision: &Decision,
        interner: &Interner,
        rebuild: Option<RebuildFrom>,
    ) -> Self {
        if let Some(inputs) = decision.inputs.as_deref().filter(|_| rebuild.is_some())
            && let Some(bound) = kept_inputs_bound(inputs)
            && kept_within_caps(decision, bound)
        {
            let inputs = Inputs::Kept(Box::new(inputs.clone()));
            return Self::pack(decision, false, 1, interner, inputs, rebuild);
        }
        let (inputs, inputs_cut) = encode_inputs(decision);
        let extra = inputs.as_ref().map_or(0, |i| i.len());
        if !inputs_cut
            && let Some(rebuild) = rebuild
            && kept_within_caps(decision, extra)
        {
            return Self::pack(
                decision,
                false,
                1,
                interner,
                Inputs::Json(inputs),
                Some(rebuild),
            );
        }
        if !inputs_cut && within_caps(decision, extra) {
            return Self::pack(decision, false, 1, interner, Inputs::Json(inputs), None);
        }
        // Room for the note that may replace the inputs.
        let Capped {
            decision: capped,
            truncated,
        } = cap_decision(decision, extra.max(MAX_NOTE_BYTES));
        // Replay reads the request and token summary the record shows: cut, they would
        // decide another request.
        let inputs = match &decision.inputs {
            Some(i) if capped.request != decision.request || capped.token != decision.token => {
                inputs_note(
                    i.at,
                    "the request or token summary was cut to store it".into(),
                )
            }
            _ => inputs,
        };
        // A rebuild would not cut what was cut: the record keeps the capped decision whole.
        Self::pack(
            &capped,
            truncated || inputs_cut,
            2,
            interner,
            Inputs::Json(inputs),
            None,
        )
    }

    /// The record of `d`, which is capped already and held by `holders` decisions (see
    /// [`Packer`]); strings and values behind an `Arc` that something else holds too (the
    /// policy set) are shared, and not counted.
    fn pack(
        d: &Decision,
        truncated: bool,
        holders: usize,
        interner: &Interner,
        inputs: Inputs,
        rebuild: Option<RebuildFrom>,
    ) -> Self {
        // Before packing: the interner's own references would make texts look shared.
        #[cfg(debug_assertions)]
        let bound = super::size::record_bytes(d) + inputs.heap_bytes();
        let mut p = Packer {
            interner,
            holders,
            bytes: RECORD_INLINE,
        };
        let url = &d.request.url;
        let audit = Audit::of(&d.audit, url, &d.id);
        p.bytes += audit.heap_bytes();
        p.bytes += d.shadow.as_deref().map_or(0, super::size::shadow_bytes);
        p.bytes += super::size::trace_link_bytes(d.trace_link.as_ref());
        // Rebuilt when read: the trace and upstream headers; an allow's headers. A denial
        // keeps its headers and body, which a record whose policy set is gone still shows.
        let inputs_only = rebuild.is_some();
        let kept_trace = if inputs_only { &[][..] } else { &d.trace[..] };
        let kept_upstream = if inputs_only {
            &[][..]
        } else {
            &d.upstream_headers.0[..]
        };
        let kept_headers = match d.outcome {
            Outcome::Allow if inputs_only => &[][..],
            _ => &d.headers.0[..],
        };
        let headers: Vec<DecisionHeader> = (kept_headers.iter())
            .map(|(name, value)| (p.text(name), (*value != d.id).then(|| p.text(value))))
            .collect();
        let upstream_headers: Vec<(Arc<str>, Box<str>)> = (kept_upstream.iter())
            .map(|(name, value)| (p.text(name), p.boxed(value)))
            .collect();
        let decisive_detail = kept_trace
            .iter()
            .find(|e| e.decisive)
            .and_then(|e| e.detail.as_deref());
        // The engine made a decision a record of inputs keeps: its id and time are of the
        // instant its inputs name, the time written as `engine_time` writes it.
        let decided_at = (d.inputs.as_deref()).map(|i| i.at).filter(|_| inputs_only);
        let unix_millis = decided_at.unwrap_or_else(|| {
            ulid::Ulid::from_string(&d.id)
                .ok()
                .map(|u| i64::try_from(u.timestamp_ms()).unwrap_or(i64::MAX))
                .or_else(|| parse_millis(&d.time))
                .unwrap_or(0)
        });
        let time = (decided_at.is_none() && !displays_as(engine_time(unix_millis), &d.time))
            .then_some(&d.time);
        let client = d.request.client.as_deref();
        // Sized to what is written into it, so that it is allocated once.
        let mut text = Vec::with_capacity(
            d.id.len()
                + time.map_or(0, String::len)
                + d.service.as_ref().map_or(0, |s| s.len())
                + d.operation.as_ref().map_or(0, |s| s.len())
                + d.policy_revision.len()
                + url.len()
                + client.map_or(0, str::len)
                + inputs.json_len()
                + (kept_trace.iter())
                    .map(|e| {
                        e.actual.as_ref().map_or(0, encoded_len)
                            + e.detail.as_ref().map_or(0, String::len)
                    })
                    .sum::<usize>(),
        );
        let id = TextSpan::push_str(&mut text, &d.id);
        let time = time.map(|t| TextSpan::push_str(&mut text, t));
        // Copied, not shared: a shared name's count is touched by every thread.
        let service = (d.service.as_deref()).map(|s| TextSpan::push_str(&mut text, s));
        let operation = (d.operation.as_deref()).map(|s| TextSpan::push_str(&mut text, s));
        let policy_revision = TextSpan::push_str(&mut text, &d.policy_revision);
        let url_span = TextSpan::push_str(&mut text, url);
        let client = client.map(|c| TextSpan::push_str(&mut text, c));
        let inputs = match inputs {
            Inputs::Json(Some(json)) => StoredInputs::Json(TextSpan::push(&mut text, &json)),
            Inputs::Json(None) => StoredInputs::None,
            Inputs::Kept(kept) => {
                p.bytes += kept_inputs_bytes(&kept);
                StoredInputs::Kept(kept)
            }
        };
        // The entries count what they add.
        p.bytes += text.len();
        let trace: Vec<StoredEntry> = (kept_trace.iter()).map(|e| p.entry(e, &mut text)).collect();

        let method = &d.request.method;
        let method = match METHODS.iter().find(|m| **m == method.as_str()) {
            Some(known) => Cow::Borrowed(*known),
            None => {
                p.bytes += method.len();
                Cow::Owned(method.clone())
            }
        };
        let record = Self {
            unix_millis,
            approx_bytes: 0,
            truncated,
            id,
            time,
            duration_micros: d.duration_micros,
            service,
            operation,
            policy_revision,
            method,
            url: url_span,
            client,
            outcome: d.outcome,
            status: d.status,
            upstream_status: UpstreamStatus::new(d.upstream_status),
            headers: p.slice(headers),
            upstream_headers: p.slice(upstream_headers),
            body: d.body.as_ref().map(|b| p.body(b, &d.id, decisive_detail)),
            token: d.token.as_ref().map(|t| p.token(t)),
            trace: p.slice(trace),
            text: text.into_boxed_slice(),
            audit,
            trace_link: d.trace_link.map(Box::new),
            inputs,
            shadow: d.shadow.clone(),
            rebuild,
        };
        #[cfg(debug_assertions)]
        assert!(
            p.bytes <= bound,
            "a record of {} bytes, estimated at most {bound}",
            p.bytes
        );
        Self {
            approx_bytes: p.bytes,
            ..record
        }
    }

    /// The decision this record keeps, rebuilt: what the store cut stays cut. A record that
    /// keeps only what its decision was made on decides it again with the policy set it was
    /// decided with; if the store no longer holds that set, the decision shows what the
    /// record kept (outcome, status, headers, body, token, inputs) and a trace entry saying
    /// why the rest is not shown.
    pub fn decision(&self) -> Decision {
        let kept = self.kept();
        let Some(from) = &self.rebuild else {
            return kept;
        };
        let rebuilt = match from.revision.set() {
            Some(set) => (rebuilder().rebuild(&set, &kept, from.how))
                .map(as_stored)
                .map_err(|e| e.0),
            None => Err(format!(
                "the policy set it was decided with (revision `{}`) is no longer held",
                kept.policy_revision
            )),
        };
        rebuilt.unwrap_or_else(|why| not_rebuilt(kept, &why))
    }

    /// The decision as the record keeps it, without deciding anything again.
    fn kept(&self) -> Decision {
        let id = self.id();
        let decisive_detail = self
            .trace
            .iter()
            .find(|e| e.decisive)
            .and_then(|e| e.detail(&self.text));
        Decision {
            id: id.to_owned(),
            time: match self.time {
                Some(time) => time.str_of(&self.text).to_owned(),
                None => engine_time(self.unix_millis).to_string(),
            },
            duration_micros: self.duration_micros,
            service: self.service().map(Arc::from),
            operation: self.operation().map(Arc::from),
            policy_revision: Arc::from(self.policy_revision()),
            request: RequestSummary {
                method: self.method.to_string(),
                url: self.url().to_owned(),
                client: self.client.map(|c| c.str_of(&self.text).to_owned()),
            },
            outcome: self.outcome,
            status: self.status,
            upstream_status: self.upstream_status.get(),
            headers: Headers(
                self.headers
                    .iter()
                    .map(|(name, value)| {
                        let value = value.as_deref().unwrap_or(id);
                        (Cow::Owned(name.to_string()), value.to_owned())
                    })
                    .collect(),
            ),
            upstream_headers: Headers(
                self.upstream_headers
                    .iter()
                    .map(|(name, value)| (Cow::Owned(name.to_string()), value.to_string()))
                    .collect(),
            ),
            body: self.body.as_deref().map(|b| ErrorBody {
                id: b.id.as_deref().unwrap_or(id).to_owned(),
                code: b.code.clone(),
                message: b.message.to_string(),
                target: b.target.to_string(),
                details: b
                    .details
                    .iter()
                    .map(|d| ErrorDetail {
                        code: d.code.clone(),
                        target: d.target.to_string(),
                        message: d
                            .message
                            .as_deref()
                            .or(decisive_detail)
                            .unwrap_or_default()
                            .to_owned(),
                    })
                    .collect(),
            }),
            token: self.token.as_deref().map(StoredToken::summary),
            trace: (self.trace.iter()).map(|e| e.unpack(&self.text)).collect(),
            audit: self.audit.text(self.url(), id),
            trace_link: self.trace_link.as_deref().copied(),
            inputs: match &self.inputs {
                StoredInputs::Kept(kept) => Some(kept.clone()),
                inputs => {
                    (inputs.json(&self.text)).and_then(|json| serde_json::from_slice(json).ok())
                }
            },
            shadow: self.shadow.clone(),
        }
    }
}

/// `d` as the store shows it: cut and scrubbed as its whole record would be. A record of
/// inputs checked only what it keeps; what it rebuilt is checked here.
fn as_stored(d: Decision) -> Decision {
    let (inputs, inputs_cut) = encode_inputs(&d);
    if !inputs_cut && within_caps(&d, inputs.map_or(0, |i| i.len())) {
        return d;
    }
    StoredDecision::of(&d).decision()
}

/// The engine that decides records again: rebuilding touches no cache and counts nothing.
fn rebuilder() -> &'static Engine {
    static REBUILDER: OnceLock<Engine> = OnceLock::new();
    REBUILDER.get_or_init(Engine::default)
}

/// A record's decision that could not be decided again (`why`): what it kept, an allow's
/// decision id header, and one trace entry that says why the trace is missing.
fn not_rebuilt(mut kept: Decision, why: &str) -> Decision {
    if kept.outcome == Outcome::Allow && kept.headers.get("x-decision-id").is_none() {
        let id = kept.id.clone();
        kept.headers.0.push(("x-decision-id".into(), id));
    }
    kept.trace = vec![TraceEntry {
        step: Step::BaseUrl,
        rule: None,
        attribute: Arc::from("trace"),
        operator: "notKept".into(),
        expected: None,
        actual: None,
        result: kept.outcome == Outcome::Allow,
        decisive: false,
        depth: 0,
        detail: Some(format!(
            "the record keeps what the decision was made on, not its trace or upstream headers, and cannot rebuild them: {why}"
        )),
        location: None,
    }];
    kept
}

/// The most a record keeps of a decision's replay inputs, encoded; the claims a policy reads
/// are a few short values, so more means a claim no rule should read whole.
const MAX_INPUT_BYTES: usize = 4 * 1024;

/// The inputs [`StoredDecision::pack`] is given: as JSON (or none), or as the decision had
/// them.
enum Inputs {
    Json(Option<Box<[u8]>>),
    Kept(Box<ReplayInputs>),
}

impl Inputs {
    /// Bytes they add to the record's text.
    fn json_len(&self) -> usize {
        match self {
            Inputs::Json(json) => json.as_ref().map_or(0, |j| j.len()),
            Inputs::Kept(_) => 0,
        }
    }

    /// Heap bytes they add to the record.
    #[cfg(debug_assertions)]
    fn heap_bytes(&self) -> usize {
        match self {
            Inputs::Json(_) => self.json_len(),
            Inputs::Kept(kept) => kept_inputs_bytes(kept),
        }
    }
}

/// Most bytes the JSON of `inputs` can take, when a record of inputs may keep them as they
/// are: those of a token, whose verified facts' JSON (written once per cached token) and the
/// key set's name hold no token-shaped text, and nothing else in them is of the token's
/// making (a refusal that quotes the request's texts is written and checked as JSON instead).
fn kept_inputs_bound(inputs: &ReplayInputs) -> Option<usize> {
    // `at`, the members' names, a binding check's settings and summary (static words).
    const REST: usize = 512;
    // Without a token the JSON is a few bytes, fewer than the inputs' own struct.
    let token = inputs.token.as_ref()?;
    if !(token.refused.as_ref()).is_none_or(quotes_nothing)
        || (token.binding.as_ref()).is_some_and(|b| b.refused.is_some())
    {
        return None;
    }
    let facts = match token.verified.as_deref() {
        Some(facts) => facts.json()?.get(),
        None => "",
    };
    let bound = REST + token.keys.len() + facts.len();
    (bound <= MAX_INPUT_BYTES && !has_jwt(facts) && !has_jwt(&token.keys)).then_some(bound)
}

/// Whether a token refusal holds only numbers and the engine's words, nothing of the request.
fn quotes_nothing(e: &TokenError) -> bool {
    matches!(
        e,
        TokenError::Missing { scheme: None }
            | TokenError::MultipleTokens
            | TokenError::TooLarge { .. }
            | TokenError::KeyIdRequired { .. }
            | TokenError::InvalidSignature
            | TokenError::MissingExpiry
            | TokenError::Expired { .. }
            | TokenError::NotYetValid { .. }
            | TokenError::IssuedInFuture { .. }
            | TokenError::KeysUnavailable
    )
}

/// Heap bytes of inputs a record keeps as they are, while the decision they were copied from
/// still holds them: facts shared with the token cache too are not counted, as texts shared
/// with the policy set are not.
fn kept_inputs_bytes(inputs: &ReplayInputs) -> usize {
    size_of::<ReplayInputs>()
        + (inputs.token.as_ref())
            .and_then(|t| t.verified.as_ref())
            // The decision's and the record's own.
            .filter(|facts| Arc::strong_count(facts) <= 2)
            .and_then(|facts| facts.json())
            .map_or(0, |json| json.get().len())
}

/// The decision's replay inputs as the record keeps them (JSON), and whether they had to be
/// replaced by a note saying why they are not kept: too large, or holding something shaped
/// like a token, which no record keeps.
fn encode_inputs(d: &Decision) -> (Option<Box<[u8]>>, bool) {
    let Some(inputs) = d.inputs.as_deref() else {
        return (None, false);
    };
    let json = inputs.to_json().unwrap_or_default();
    let why = if json.len() > MAX_INPUT_BYTES {
        format!("its inputs took more than {MAX_INPUT_BYTES} bytes and were not kept")
    } else if has_jwt(std::str::from_utf8(&json).unwrap_or_default()) {
        "its inputs held token-shaped text, which records never keep".to_owned()
    } else {
        return (Some(json.into_boxed_slice()), false);
    };
    (inputs_note(inputs.at, why), true)
}

/// Longest [`inputs_note`].
const MAX_NOTE_BYTES: usize = 160;

/// Inputs that say only why the decision cannot be replayed.
fn inputs_note(at: i64, why: String) -> Option<Box<[u8]>> {
    let note = ReplayInputs {
        at,
        token: None,
        count: None,
        unreplayable: Some(why),
    };
    let json = serde_json::to_vec(&note).ok()?;
    debug_assert!(json.len() <= MAX_NOTE_BYTES, "{} bytes", json.len());
    Some(json.into_boxed_slice())
}

impl StoredEntry {
    fn unpack(&self, trace_text: &[u8]) -> TraceEntry {
        let names = &*self.names;
        TraceEntry {
            step: names.step,
            rule: names.rule.clone(),
            attribute: names.attribute.clone(),
            operator: names.operator.clone(),
            expected: self.expected.clone(),
            actual: self.actual(trace_text).map(decode_value),
            result: self.result,
            decisive: self.decisive,
            depth: names.depth,
            detail: self.detail(trace_text).map(str::to_owned),
            location: names.location.clone(),
        }
    }
}

/// A time as the engine writes it (`crate::time::format_unix_millis`), without a copy.
fn engine_time(millis: i64) -> humantime::Rfc3339Timestamp {
    let millis = u64::try_from(millis).unwrap_or(0);
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis),
    )
}

/// Whether `value` displays as exactly `text`, without writing it out.
fn displays_as(value: impl fmt::Display, text: &str) -> bool {
    struct Rest<'t>(&'t str);
    impl fmt::Write for Rest<'_> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0 = self.0.strip_prefix(s).ok_or(fmt::Error)?;
            Ok(())
        }
    }
    let mut rest = Rest(text);
    fmt::write(&mut rest, format_args!("{value}")).is_ok() && rest.0.is_empty()
}

/// Milliseconds since the epoch of an RFC 3339 time, if it is one.
fn parse_millis(time: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339(time).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceStore;
    use crate::trace::fixtures::{
        allowed, every_kind, full_trace_deny, long_url, unauthorised, unknown_host,
    };
    use crate::trace::record::audit::MAX_AUDIT_BYTES;

    /// Average footprint a typical record must stay under (the store's own accounting).
    const TYPICAL_RECORD_TARGET: usize = 2 * 1024;

    #[test]
    fn a_realistic_mix_averages_under_the_target_size_and_no_kind_exceeds_it() {
        let store = TraceStore::new(1_000);
        for i in 0..1_000 {
            let d = match i % 5 {
                0 => full_trace_deny(i),
                1 => unauthorised(i),
                2 => allowed(i, "alice"),
                3 => unknown_host(i),
                _ => long_url(i),
            };
            store.record(&d);
        }
        let average = store.approx_bytes() / store.len();
        let deny = store.record(&full_trace_deny(9999));
        let long = store.record(&long_url(9999));
        eprintln!(
            "average {average} bytes per record; a full-trace deny of {} entries takes {}, \
             a 401 with a URL of {} bytes {}",
            deny.decision().trace.len(),
            deny.approx_bytes,
            long.decision().request.url.len(),
            long.approx_bytes
        );
        assert!(!deny.truncated && !long.truncated);
        assert!(
            average <= TYPICAL_RECORD_TARGET,
            "{average} bytes per record on average"
        );
        for record in [&deny, &long] {
            assert!(
                record.approx_bytes <= TYPICAL_RECORD_TARGET,
                "{} bytes: {}",
                record.approx_bytes,
                record.decision().audit
            );
        }
    }

    /// The decisions the engine makes, and ones only another replica (or version) makes: a
    /// record gives back exactly what capping left of its decision, which is the decision
    /// itself when nothing was over a cap.
    #[test]
    fn a_record_rebuilds_its_decision_exactly() {
        let (engine_made, others) = every_kind();
        let store = TraceStore::new(100);
        for (i, d) in engine_made.iter().chain(&others).enumerate() {
            let capped = cap_decision(d, 0).decision;
            if i < engine_made.len() + others.len() - 1 {
                assert!(within_caps(d, 0), "decision {i}");
                assert_eq!(capped, *d, "nothing of decision {i} is over a cap");
            } else {
                assert!(!within_caps(d, 0), "decision {i}");
            }
            let first = store.record(d);
            // The second record of a decision shares names with the first.
            let again = store.record(d);
            for stored in [&StoredDecision::of(d), &*first, &*again] {
                assert_eq!(stored.decision(), capped, "decision {i}");
                assert_eq!(
                    serde_json::to_value(stored).unwrap(),
                    serde_json::to_value(&capped).unwrap(),
                    "decision {i}"
                );
            }
            assert!(again.approx_bytes <= first.approx_bytes, "decision {i}");
        }
        // What the engine's decisions repeat of themselves is not stored.
        let near_limit = others.last().unwrap();
        for d in engine_made.iter().chain([near_limit]) {
            let stored = store.get(&d.id).unwrap();
            assert!(matches!(stored.audit, Audit::Rendered(_)), "{}", d.audit);
            assert!(stored.time.is_none(), "{}", d.time);
            assert!(stored.headers.iter().any(|(_, value)| value.is_none()));
            assert!(stored.body.as_ref().is_none_or(|b| b.id.is_none()));
        }
        assert!(near_limit.audit.len() > MAX_AUDIT_BYTES);
        assert!(
            store
                .get(&near_limit.id)
                .unwrap()
                .decision()
                .audit
                .contains("…(truncated"),
            "the audit message of a long URL is rebuilt cut"
        );
    }

    /// The record writes its inputs with the facts' kept JSON: the same bytes as serde's, on
    /// the decisions of every kind and with every member of the inputs set, before and after
    /// the facts' JSON is kept.
    #[test]
    fn inputs_are_written_as_serde_writes_them() {
        use crate::decision::replay::RecordedBinding;
        use crate::decision::{ReplayInputs, TokenBinding};
        use crate::token::TokenError;
        use crate::token::binding::{BindingError, BindingMode};

        let (engine_made, others) = every_kind();
        let mut inputs: Vec<ReplayInputs> = (engine_made.iter().chain(&others))
            .filter_map(|d| d.inputs.as_deref().cloned())
            .collect();
        let verified = inputs
            .iter()
            .find(|i| i.token.as_ref().is_some_and(|t| t.verified.is_some()))
            .expect("an allowed decision has a verified token's facts")
            .clone();
        let mut every_member = verified.clone();
        every_member.count = Some(7);
        every_member.unreplayable = Some("a \"quoted\" reason".into());
        let token = every_member.token.as_mut().unwrap();
        token.refused = Some(TokenError::Malformed {
            reason: "bad \u{e9}".into(),
        });
        token.unread = true;
        token.binding = Some(RecordedBinding {
            mode: BindingMode::Required,
            window: 60,
            cnf: "jkt".into(),
            dpop_scheme: true,
            summary: Some(TokenBinding {
                method: "dpop".into(),
                result: "DPOP_REPLAYED".into(),
            }),
            refused: Some(BindingError::Required),
        });
        inputs.push(every_member);
        for (i, inputs) in inputs.iter().enumerate() {
            let serde = serde_json::to_vec(inputs).unwrap();
            // The first call writes the facts' JSON, the second copies it.
            for _ in 0..2 {
                assert_eq!(
                    String::from_utf8(inputs.to_json().unwrap()).unwrap(),
                    String::from_utf8(serde.clone()).unwrap(),
                    "inputs {i}"
                );
            }
        }
        assert!(inputs.len() > 3, "{} decisions with inputs", inputs.len());
    }
}
