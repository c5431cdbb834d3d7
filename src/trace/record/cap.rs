//! Bounding and scrubbing a decision before it is stored: every field is cut to a readable
//! length with a visible marker, secrets are replaced, and the whole record is held to
//! [`MAX_RECORD_BYTES`] whatever the request, the token or the policy put into it.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::Value;

use super::audit::MAX_AUDIT_BYTES;
use super::size::{
    body_bytes, entry_bytes, entry_names_bytes, kept_bytes, record_bytes, shadow_bytes,
    token_bytes, trace_bytes,
};
use super::text::{REDACTED, cut_middle, cut_text, holds_jwt_start, redact_jwts};
use super::value::{MAX_VALUE_BYTES, MAX_VALUE_STRING_BYTES, cap_value, value_within_caps};
use crate::decision::{Decision, ErrorBody, Headers, Step, TokenSummary, TraceEntry};

/// Largest approximate heap footprint of one stored record, in bytes. With the default
/// capacity of 10,000 the records of a store never hold more than about 160 MiB, even if
/// every request is built to be as large as possible; typical records take 0.9 to 1.6 KiB.
pub const MAX_RECORD_BYTES: usize = 16 * 1024;

/// Request URLs: the engine already cuts shown URLs at 2 KiB; the store repeats the cap
/// because it is the last step before memory. 2 KiB keeps any real API path and query whole.
const MAX_URL_BYTES: usize = 2 * 1024;
/// Header values: decision headers are short (challenges, ids); only upstream headers
/// rendered from token claims (a user's many groups) can grow.
const MAX_HEADER_VALUE_BYTES: usize = 1024;
/// Header names: upstream header names come from the policy and are short.
const MAX_HEADER_NAME_BYTES: usize = 64;
/// Headers per list: the engine sends at most four on a denial, and a policy's upstream
/// headers are a handful.
const MAX_HEADERS: usize = 8;
/// Trace details and error messages: one or two sentences in practice.
const MAX_TEXT_BYTES: usize = 1024;
/// Ids, times, methods, client addresses and token claims: short by nature.
const MAX_SHORT_BYTES: usize = 128;
/// Names from the policy (service, operation, rule description, `file:line`).
const MAX_NAME_BYTES: usize = 256;
/// Error details per body: one per failed rule, and an operation has a few rules.
const MAX_DETAILS: usize = 8;
/// Audiences kept of a token summary.
const MAX_AUDIENCES: usize = 8;
/// Trace entries: one per check and rule evaluated; 64 is far beyond any readable policy.
const MAX_TRACE_ENTRIES: usize = 64;
/// What the URL and the audit message are cut to in the last resort of [`shed`].
const LAST_RESORT_BYTES: usize = 512;
/// What replaces a value or a text dropped whole to keep the record within its budget.
const SHED: &str = "…(removed: record size limit)";
/// Header names whose values are credentials (compared case-insensitively).
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// A decision ready to store: capped and scrubbed.
pub(crate) struct Capped {
    pub decision: Decision,
    /// Whether anything was cut, removed or redacted, other than secret header values.
    pub truncated: bool,
}

/// Copies `decision`, cut and scrubbed so that its footprint, with `extra` bytes the record
/// keeps beside it (the encoded replay inputs), is at most [`MAX_RECORD_BYTES`].
pub(crate) fn cap_decision(decision: &Decision, extra: usize) -> Capped {
    let mut d = decision.clone();
    let mut cut = false;

    cut |= cut_text(&mut d.id, MAX_SHORT_BYTES);
    cut |= cut_text(&mut d.time, MAX_SHORT_BYTES);
    cut |= cut_opt_arc(&mut d.service);
    cut |= cut_opt_arc(&mut d.operation);
    cut |= cut_arc(&mut d.policy_revision);
    cut |= cut_text(&mut d.request.method, MAX_SHORT_BYTES);
    cut |= redact_jwts(&mut d.request.url);
    cut |= cut_text(&mut d.request.url, MAX_URL_BYTES);
    if let Some(client) = &mut d.request.client {
        cut |= cut_text(client, MAX_SHORT_BYTES);
    }
    cut |= cap_headers(&mut d.headers);
    cut |= cap_headers(&mut d.upstream_headers);
    if let Some(body) = &mut d.body {
        cut |= cap_body(body);
    }
    if let Some(token) = &mut d.token {
        cut |= cap_token(token);
    }
    cut |= cap_trace(&mut d.trace);
    if let Some(shadow) = &mut d.shadow {
        cut |= cut_arc(&mut shadow.policy_revision);
        if let Some(rule) = &mut shadow.rule {
            cut |= cut_text(rule, MAX_NAME_BYTES);
        }
        cut |= cap_trace(&mut shadow.trace);
    }
    cut |= redact_jwts(&mut d.audit);
    cut |= cut_middle(&mut d.audit, MAX_AUDIT_BYTES);

    let bytes = record_bytes(&d) + extra;
    if bytes > MAX_RECORD_BYTES {
        cut = true;
        shed(&mut d, bytes, extra);
    }
    Capped {
        decision: d,
        truncated: cut,
    }
}

/// Whether [`cap_decision`] would return `d` as it is, so that it can be stored without a
/// copy (the common case). May answer `false` for a decision that capping leaves alone;
/// never `true` for one it would change.
pub(crate) fn within_caps(d: &Decision, extra: usize) -> bool {
    kept_within_caps(d, extra)
        && headers_within_caps(&d.upstream_headers)
        && trace_within_caps(&d.trace)
        && record_bytes(d) + extra <= MAX_RECORD_BYTES
}

/// [`within_caps`] of what a record of inputs keeps (it rebuilds the trace and upstream
/// headers, and caps them when read as a whole record would have): nothing it keeps has to
/// be cut or scrubbed.
pub(crate) fn kept_within_caps(d: &Decision, extra: usize) -> bool {
    let short = |s: &str| s.len() <= MAX_SHORT_BYTES;
    let name = |s: &Option<Arc<str>>| s.as_ref().is_none_or(|s| s.len() <= MAX_NAME_BYTES);
    short(&d.id)
        && short(&d.time)
        && name(&d.service)
        && name(&d.operation)
        && d.policy_revision.len() <= MAX_NAME_BYTES
        && short(&d.request.method)
        && plain_within(&d.request.url, MAX_URL_BYTES)
        && d.request.client.as_deref().is_none_or(short)
        && headers_within_caps(&d.headers)
        && d.body.as_ref().is_none_or(|b| {
            short(&b.id)
                && plain_within(&b.message, MAX_TEXT_BYTES)
                && short(&b.target)
                && b.details.len() <= MAX_DETAILS
                && b.details
                    .iter()
                    .all(|d| short(&d.target) && plain_within(&d.message, MAX_TEXT_BYTES))
        })
        && d.token.as_ref().is_none_or(|t| {
            [&t.sub, &t.client_id, &t.iss, &t.exp, &t.kid]
                .into_iter()
                .flatten()
                .all(|s| short(s))
                && short(&t.alg)
                && t.aud.len() <= MAX_AUDIENCES
                && t.aud.iter().all(|a| short(a))
        })
        && d.shadow.as_ref().is_none_or(|s| {
            s.policy_revision.len() <= MAX_NAME_BYTES
                && s.rule.as_ref().is_none_or(|r| r.len() <= MAX_NAME_BYTES)
                && trace_within_caps(&s.trace)
        })
        && plain_within(&d.audit, MAX_AUDIT_BYTES)
        && kept_bytes(d) + extra <= MAX_RECORD_BYTES
}

fn trace_within_caps(trace: &[TraceEntry]) -> bool {
    let name = |s: &Option<Arc<str>>| s.as_ref().is_none_or(|s| s.len() <= MAX_NAME_BYTES);
    trace.len() <= MAX_TRACE_ENTRIES
        && trace.iter().all(|e| {
            let value = |v: &Value| value_within_caps(v, 0, &mut MAX_VALUE_BYTES.to_owned());
            name(&e.rule)
                && e.attribute.len() <= MAX_NAME_BYTES
                && name(&e.location)
                && e.expected.as_deref().is_none_or(value)
                && e.actual.as_ref().is_none_or(value)
                && e.detail
                    .as_deref()
                    .is_none_or(|d| plain_within(d, MAX_TEXT_BYTES))
        })
}

/// Whether `s` is at most `max` bytes with nothing token-shaped in it.
fn plain_within(s: &str, max: usize) -> bool {
    s.len() <= max && !holds_jwt_start(s)
}

fn headers_within_caps(headers: &Headers) -> bool {
    headers.0.len() <= MAX_HEADERS
        && headers.0.iter().all(|(name, value)| {
            if SECRET_HEADERS.iter().any(|s| name.eq_ignore_ascii_case(s)) {
                value == REDACTED
            } else {
                name.len() <= MAX_HEADER_NAME_BYTES && plain_within(value, MAX_HEADER_VALUE_BYTES)
            }
        })
}

fn cap_headers(headers: &mut Headers) -> bool {
    let mut cut = false;
    if headers.0.len() > MAX_HEADERS {
        let more = headers.0.len() - (MAX_HEADERS - 1);
        headers.0.truncate(MAX_HEADERS - 1);
        headers.0.push((
            Cow::Borrowed("x-portcullis-truncated"),
            format!("…(truncated, {more} more headers)"),
        ));
        cut = true;
    }
    for (name, value) in &mut headers.0 {
        if SECRET_HEADERS.iter().any(|s| name.eq_ignore_ascii_case(s)) {
            *value = REDACTED.to_owned();
            continue;
        }
        if name.len() > MAX_HEADER_NAME_BYTES {
            let mut owned = name.to_string();
            cut_text(&mut owned, MAX_HEADER_NAME_BYTES);
            *name = Cow::Owned(owned);
            cut = true;
        }
        cut |= redact_jwts(value);
        cut |= cut_text(value, MAX_HEADER_VALUE_BYTES);
    }
    cut
}

fn cap_body(body: &mut ErrorBody) -> bool {
    let mut cut = cut_text(&mut body.id, MAX_SHORT_BYTES);
    cut |= redact_jwts(&mut body.message);
    cut |= cut_text(&mut body.message, MAX_TEXT_BYTES);
    cut |= cut_text(&mut body.target, MAX_SHORT_BYTES);
    if body.details.len() > MAX_DETAILS {
        let more = body.details.len() - MAX_DETAILS;
        body.details.truncate(MAX_DETAILS);
        body.details.shrink_to_fit();
        append_note(
            &mut body.details[MAX_DETAILS - 1].message,
            &format!(" …(truncated, {more} more details)"),
        );
        cut = true;
    }
    for detail in &mut body.details {
        cut |= cut_text(&mut detail.target, MAX_SHORT_BYTES);
        cut |= redact_jwts(&mut detail.message);
        cut |= cut_text(&mut detail.message, MAX_TEXT_BYTES);
    }
    cut
}

fn cap_token(token: &mut TokenSummary) -> bool {
    let mut cut = false;
    let optional = [
        &mut token.sub,
        &mut token.client_id,
        &mut token.iss,
        &mut token.exp,
        &mut token.kid,
    ];
    for field in optional.into_iter().flatten() {
        cut |= cut_text(field, MAX_SHORT_BYTES);
    }
    cut |= cut_text(&mut token.alg, MAX_SHORT_BYTES);
    if token.aud.len() > MAX_AUDIENCES {
        let more = token.aud.len() - (MAX_AUDIENCES - 1);
        token.aud.truncate(MAX_AUDIENCES - 1);
        token
            .aud
            .push(format!("…(truncated, {more} more audiences)"));
        token.aud.shrink_to_fit();
        cut = true;
    }
    for aud in &mut token.aud {
        cut |= cut_text(aud, MAX_SHORT_BYTES);
    }
    cut
}

fn cap_trace(trace: &mut Vec<TraceEntry>) -> bool {
    let mut cut = false;
    if trace.len() > MAX_TRACE_ENTRIES {
        let total = trace.len();
        // The deciding entry answers "why"; keep it even when it lies past the cut.
        match trace.iter().position(|e| e.decisive) {
            Some(i) if i >= MAX_TRACE_ENTRIES - 1 => {
                let decisive = trace.swap_remove(i);
                trace.truncate(MAX_TRACE_ENTRIES - 2);
                trace.push(decisive);
            }
            _ => trace.truncate(MAX_TRACE_ENTRIES - 1),
        }
        let marker = removed_entries_marker(trace, total - trace.len());
        trace.push(marker);
        cut = true;
    }
    for entry in trace.iter_mut() {
        cut |= cap_entry(entry);
    }
    cut
}

fn cap_entry(entry: &mut TraceEntry) -> bool {
    let mut cut = cut_opt_arc(&mut entry.rule);
    cut |= cut_arc(&mut entry.attribute);
    cut |= cut_opt_arc(&mut entry.location);
    // Expected values are usually shared with the policy set: copy only those that change.
    if let Some(expected) = &mut entry.expected
        && !value_within_caps(expected, 0, &mut MAX_VALUE_BYTES.to_owned())
    {
        let mut owned = Value::clone(expected);
        if cap_value(&mut owned, 0, &mut MAX_VALUE_BYTES.to_owned()) {
            *expected = Arc::new(owned);
            cut = true;
        }
    }
    if let Some(actual) = &mut entry.actual {
        cut |= cap_value(actual, 0, &mut MAX_VALUE_BYTES.to_owned());
    }
    if let Some(detail) = &mut entry.detail {
        cut |= redact_jwts(detail);
        cut |= cut_text(detail, MAX_TEXT_BYTES);
    }
    cut
}

/// The entry that stands for `more` trace entries removed after `kept`.
fn removed_entries_marker(kept: &[TraceEntry], more: usize) -> TraceEntry {
    TraceEntry {
        step: kept.last().map_or(Step::Rule, |e| e.step),
        rule: None,
        attribute: Arc::from("trace"),
        operator: "truncated".into(),
        expected: None,
        actual: None,
        result: true,
        decisive: false,
        depth: 0,
        detail: Some(format!(
            "…(truncated, {more} more trace entries: record size limit)"
        )),
        location: None,
    }
}

/// Brings a record over [`MAX_RECORD_BYTES`] within it by dropping, least useful first:
/// values and details of the trace entries that did not decide, upstream header values,
/// those entries themselves (and deciding entries after the first), error details after the
/// first, audiences after the first, decision header values, the values of the deciding
/// entry; and in the last resort it cuts the URL and the audit message short. `bytes` is
/// the record's [`record_bytes`] and `extra`. A shadow decision's trace goes first, down to
/// its deciding entry.
fn shed(d: &mut Decision, mut bytes: usize, extra: usize) {
    let over = |bytes: usize| bytes > MAX_RECORD_BYTES;

    // 0. The shadow decision's trace but its deciding entry.
    if over(bytes)
        && let Some(shadow) = &mut d.shadow
    {
        let before = shadow_bytes(shadow);
        keep_first_decisive(&mut shadow.trace);
        bytes = replaced(bytes, before, shadow_bytes(shadow));
    }

    // 1. Values and details of entries that did not decide, last first.
    for entry in d.trace.iter_mut().rev().filter(|e| !e.decisive) {
        if !over(bytes) {
            break;
        }
        let before = entry_bytes(entry);
        let payload = before.saturating_sub(entry_names_bytes(entry));
        if payload > SHED.len() {
            entry.expected = None;
            entry.actual = None;
            entry.detail = Some(SHED.to_owned());
            bytes = replaced(bytes, before, entry_bytes(entry));
        }
    }
    // 2. Upstream header values: least needed to explain a decision.
    bytes = shed_header_values(&mut d.upstream_headers, bytes, |_| true);
    // 3. All entries but the first deciding one, with one marker for them.
    if over(bytes) {
        let before = trace_bytes(&d.trace);
        keep_first_decisive(&mut d.trace);
        bytes = replaced(bytes, before, trace_bytes(&d.trace));
    }
    // 4. Error details after the first.
    if over(bytes)
        && let Some(body) = &mut d.body
        && body.details.len() > 1
    {
        let before = body_bytes(body);
        let more = body.details.len() - 1;
        body.details.truncate(1);
        body.details.shrink_to_fit();
        append_note(
            &mut body.details[0].message,
            &format!(" …(removed {more} more details: record size limit)"),
        );
        bytes = replaced(bytes, before, body_bytes(body));
    }
    // 5. Audiences after the first.
    if over(bytes)
        && let Some(token) = &mut d.token
        && token.aud.len() > 1
    {
        let before = token_bytes(token);
        let more = token.aud.len() - 1;
        token.aud.truncate(1);
        token.aud.push(format!(
            "…(removed {more} more audiences: record size limit)"
        ));
        token.aud.shrink_to_fit();
        bytes = replaced(bytes, before, token_bytes(token));
    }
    // 6. Decision header values, except a short decision id.
    bytes = shed_header_values(&mut d.headers, bytes, |name| name != "x-decision-id");
    // 7. Values of the deciding entry; its detail stays, shortened.
    for entry in d.trace.iter_mut().filter(|e| e.decisive) {
        if !over(bytes) {
            break;
        }
        let before = entry_bytes(entry);
        entry.expected = None;
        entry.actual = Some(Value::String(SHED.to_owned()));
        if let Some(detail) = &mut entry.detail {
            cut_text(detail, MAX_VALUE_STRING_BYTES);
        }
        bytes = replaced(bytes, before, entry_bytes(entry));
    }
    // 8. The last resort: the URL and the audit message.
    if over(bytes) {
        cut_text(&mut d.request.url, LAST_RESORT_BYTES);
        cut_middle(&mut d.audit, LAST_RESORT_BYTES);
    }
    // The steps above kept a running estimate; measure once more to check it.
    debug_assert!(
        !over(record_bytes(d) + extra),
        "a record of {} bytes after shedding",
        record_bytes(d) + extra
    );
}

/// Keeps of `trace` only its first deciding entry, and one marker for the entries removed.
fn keep_first_decisive(trace: &mut Vec<TraceEntry>) {
    let total = trace.len();
    let mut kept: Vec<TraceEntry> = (trace.iter().position(|e| e.decisive))
        .map(|i| trace.swap_remove(i))
        .into_iter()
        .collect();
    if total > kept.len() {
        let marker = removed_entries_marker(&kept, total - kept.len());
        kept.push(marker);
    }
    *trace = kept;
}

/// `total` after a part of it measuring `before` came to measure `after`.
fn replaced(total: usize, before: usize, after: usize) -> usize {
    // Saturating: an `Arc` shared by another thread meanwhile may have changed a measure.
    total.saturating_sub(before) + after
}

/// Replaces header values longer than the marker by [`SHED`], last first, while the record
/// is over its budget; `sheddable` says which names may be shed.
fn shed_header_values(
    headers: &mut Headers,
    mut bytes: usize,
    sheddable: impl Fn(&str) -> bool,
) -> usize {
    for (name, value) in headers.0.iter_mut().rev() {
        if bytes <= MAX_RECORD_BYTES {
            break;
        }
        if (sheddable(name) || value.len() > MAX_SHORT_BYTES) && value.len() > SHED.len() {
            bytes = replaced(bytes, value.len(), SHED.len());
            *value = SHED.to_owned();
        }
    }
    bytes
}

/// Appends `note` to `text`, cutting `text` first if both would not fit [`MAX_TEXT_BYTES`].
fn append_note(text: &mut String, note: &str) {
    cut_text(text, MAX_TEXT_BYTES.saturating_sub(note.len()));
    text.push_str(note);
    text.shrink_to_fit();
}

fn cut_opt_arc(s: &mut Option<Arc<str>>) -> bool {
    s.as_mut().is_some_and(cut_arc)
}

fn cut_arc(s: &mut Arc<str>) -> bool {
    if s.len() <= MAX_NAME_BYTES {
        return false;
    }
    let mut owned = s.to_string();
    cut_text(&mut owned, MAX_NAME_BYTES);
    *s = Arc::from(owned);
    true
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::trace::TraceStore;
    use crate::trace::fixtures::{allowed, full_trace_deny};

    #[test]
    fn a_huge_url_and_trace_value_are_cut_with_a_visible_marker() {
        let store = TraceStore::new(10);
        let mut d = full_trace_deny(1);
        d.request.url = format!("https://api.test/app/v1/{}", "a".repeat(100 * 1024));
        d.audit = format!(
            "Request to the URL \"{}\" denied by policy evaluation.",
            d.request.url
        );
        d.trace[0].actual = Some(Value::String("b".repeat(1024 * 1024)));
        d.trace[1].actual = Some(json!(
            (0..10_000)
                .map(|i| format!("group-{i}"))
                .collect::<Vec<_>>()
        ));
        d.trace[2].detail = Some("c".repeat(50_000));
        let stored = store.record(&d);
        let s = &stored.decision();

        assert!(stored.truncated);
        assert!(s.request.url.len() <= 2048 && s.request.url.contains("…(truncated"));
        assert!(s.audit.len() <= 2048 && s.audit.ends_with("denied by policy evaluation."));
        assert!(s.audit.contains("…(truncated"), "{}", s.audit);
        let actual = s.trace[0].actual.as_ref().unwrap().as_str().unwrap();
        assert!(
            actual.len() <= 256 && actual.ends_with("more bytes)"),
            "{actual}"
        );
        let groups = s.trace[1].actual.as_ref().unwrap().as_array().unwrap();
        assert!(groups.len() <= 32);
        assert!(
            groups
                .last()
                .unwrap()
                .as_str()
                .unwrap()
                .contains("more items)")
        );
        let detail = s.trace[2].detail.as_deref().unwrap();
        assert!(detail.len() <= 1024 && detail.contains("…(truncated"));
        assert!(
            stored.approx_bytes <= MAX_RECORD_BYTES,
            "{}",
            stored.approx_bytes
        );
        // The original decision is untouched.
        assert_eq!(d.request.url.len(), 24 + 100 * 1024);
    }

    #[test]
    fn a_record_built_to_be_as_large_as_possible_stays_within_the_record_budget() {
        let store = TraceStore::new(10);
        let mut d = full_trace_deny(2);
        let big = |n: usize| "é".repeat(n);
        let huge_value = json!({
            "k": (0..100).map(|i| json!({format!("key-{i}-{}", big(300)): [big(400), [[[[1]]]]]})).collect::<Vec<_>>(),
        });
        d.id = big(1000);
        d.time = big(1000);
        d.service = Some(big(5000).into());
        d.operation = Some(big(5000).into());
        d.policy_revision = big(5000).into();
        d.request.method = big(1000);
        d.request.url = big(100_000);
        d.request.client = Some(big(1000));
        for i in 0..100 {
            d.headers
                .0
                .push((format!("x-{i}-{}", big(100)).into(), big(10_000)));
            d.upstream_headers
                .0
                .push((format!("y-{i}").into(), big(10_000)));
        }
        let body = d.body.as_mut().unwrap();
        body.message = big(10_000);
        body.target = big(10_000);
        for detail in body.details.iter_mut().chain([].iter_mut()) {
            detail.message = big(10_000);
        }
        let template = body.details[0].clone();
        body.details.extend((0..100).map(|_| template.clone()));
        let token = d.token.as_mut().unwrap();
        token.sub = Some(big(10_000));
        token.iss = Some(big(10_000));
        token.client_id = Some(big(10_000));
        token.kid = Some(big(10_000));
        token.exp = Some(big(10_000));
        token.alg = big(10_000);
        token.aud = (0..100).map(|_| big(10_000)).collect();
        let entry = TraceEntry {
            step: Step::Rule,
            rule: Some(big(5000).into()),
            attribute: big(5000).into(),
            operator: "equals".into(),
            expected: Some(Arc::new(huge_value.clone())),
            actual: Some(huge_value),
            result: false,
            decisive: true,
            depth: 0,
            detail: Some(big(10_000)),
            location: Some(big(5000).into()),
        };
        d.trace = (0..1000).map(|_| entry.clone()).collect();
        d.audit = big(100_000);

        let stored = store.record(&d);
        assert!(stored.truncated);
        assert!(
            stored.approx_bytes <= MAX_RECORD_BYTES,
            "{} bytes",
            stored.approx_bytes
        );
        assert!(stored.decision().trace.iter().any(|e| e.decisive));
        let json = serde_json::to_string(&stored).unwrap();
        assert!(json.contains("record size limit"), "{json}");
        assert!(json.len() < 2 * MAX_RECORD_BYTES, "{}", json.len());
    }

    #[test]
    fn secret_header_values_and_token_shaped_text_are_never_stored() {
        let store = TraceStore::new(10);
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLjAifQ.c2lnbmF0dXJl";
        let mut d = allowed(5, "alice");
        d.headers
            .0
            .push(("Set-Cookie".into(), "session=secret-1".into()));
        d.upstream_headers
            .0
            .push(("authorization".into(), format!("Bearer {jwt}")));
        d.upstream_headers
            .0
            .push(("Cookie".into(), "session=secret-2".into()));
        d.upstream_headers
            .0
            .push(("proxy-authorization".into(), "Basic c2VjcmV0LTM=".into()));
        d.request.url = format!("https://api.test/app/v1/callback/{jwt}");
        d.trace[0].actual = Some(json!({"token": jwt}));
        let stored = store.record(&d);
        let json = serde_json::to_string(&stored).unwrap();
        for secret in ["secret-1", "secret-2", "c2VjcmV0LTM=", jwt] {
            assert!(!json.contains(secret), "{secret} stored: {json}");
        }
        let s = &stored.decision();
        assert_eq!(s.headers.get("Set-Cookie"), Some("REDACTED"));
        assert_eq!(s.upstream_headers.get("authorization"), Some("REDACTED"));
        assert_eq!(s.request.url, "https://api.test/app/v1/callback/REDACTED");
    }
}
