//! Bounding and scrubbing a decision before it is stored: every field is cut to a readable
//! length with a visible marker, secrets are replaced, and the whole record is held to
//! [`MAX_RECORD_BYTES`] whatever the request, the token or the policy put into it.

use std::borrow::Cow;
use std::mem::size_of;
use std::sync::Arc;

use dashmap::DashMap;
use serde_json::Value;

use super::store::{
    AUDIENCE_INLINE, BODY_INLINE, DETAIL_INLINE, ENTRY_INLINE, EntryNames, HEADER_INLINE, NamesKey,
    RECORD_INLINE, StringValue, TOKEN_INLINE, encoded_len,
};
use crate::decision::{Decision, ErrorBody, Headers, Step, TokenSummary, TraceEntry};

/// Largest approximate heap footprint of one stored record, in bytes. With the default
/// capacity of 10,000 the records of a store never hold more than about 160 MiB, even if
/// every request is built to be as large as possible; typical records take 0.9 to 1.6 KiB.
pub const MAX_RECORD_BYTES: usize = 16 * 1024;

/// Request URLs: the engine already cuts shown URLs at 2 KiB; the store repeats the cap
/// because it is the last step before memory. 2 KiB keeps any real API path and query whole.
const MAX_URL_BYTES: usize = 2 * 1024;
/// The audit message quotes the URL; it is cut in the middle so that its verdict survives.
pub(super) const MAX_AUDIT_BYTES: usize = 2 * 1024;
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
/// Strings inside trace values (claims, URLs, expected lists): enough to recognise a value.
const MAX_VALUE_STRING_BYTES: usize = 256;
/// Items of an array or entries of an object inside a trace value (a token's groups).
const MAX_VALUE_ITEMS: usize = 32;
/// Nesting of a trace value; claims deeper than this are not what rules compare.
const MAX_VALUE_DEPTH: usize = 4;
/// Approximate heap bytes of one trace value, all its strings and items together: room for
/// a list of 32 group names.
const MAX_VALUE_BYTES: usize = 2 * 1024;
/// Strings an [`Interner`] holds before it starts again (so that the names of replaced policy
/// sets do not stay forever): far more than the names of any policy set.
const MAX_INTERNED: usize = 4096;
/// Longest text an [`Interner`] keeps: names, messages, base URLs and operation templates.
const MAX_INTERNED_BYTES: usize = 256;
/// What the URL and the audit message are cut to in the last resort of [`shed`].
const LAST_RESORT_BYTES: usize = 512;

/// Longest marker [`cut_text`] appends; a cut leaves room for it, so that the result,
/// marker included, stays within the cap.
const MARKER_RESERVE: usize = 48;
/// What replaces a value or a text dropped whole to keep the record within its budget.
const SHED: &str = "…(removed: record size limit)";
/// What replaces secret header values and token-shaped text.
const REDACTED: &str = "REDACTED";
/// Header names whose values are credentials (compared case-insensitively).
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Heap bytes assumed for the control block of an `Arc` (strong and weak counts).
pub(super) const ARC_HEADER: usize = 2 * size_of::<usize>();
/// Heap bytes assumed per entry of a JSON object: key, value and a share of the B-tree node.
const OBJECT_ENTRY: usize = size_of::<String>() + size_of::<Value>() + 3 * size_of::<usize>();

/// A decision ready to store: capped and scrubbed.
pub(crate) struct Capped {
    pub decision: Decision,
    /// Whether anything was cut, removed or redacted, other than secret header values.
    pub truncated: bool,
}

type Table<K, V> = DashMap<K, V, foldhash::fast::RandomState>;

/// Shares between records what the engine makes afresh for each decision although it
/// repeats: texts from the policy and the engine (trace attribute names, decision headers,
/// error messages and targets, the expected strings of the base URL, token and operation
/// steps), the names of each trace entry as one allocation, and a verified token's issuer,
/// audiences, client, key and algorithm. Never what varies with each request (URLs,
/// subjects, claim values, times): the tables would fill with values seen once. The first
/// record to hold a shared text counts its bytes; each table starts again when full, so that
/// the names of replaced policy sets do not stay forever.
#[derive(Default)]
pub(crate) struct Interner {
    texts: Table<Arc<str>, ()>,
    values: Table<StringValue, ()>,
    entries: Table<Arc<EntryNames>, ()>,
}

impl Interner {
    /// `text` as a shared string, and the bytes newly allocated for it (0 if it was kept
    /// already).
    pub(super) fn text(&self, text: &str) -> (Arc<str>, usize) {
        if let Some(shared) = self.texts.get(text) {
            return (shared.key().clone(), 0);
        }
        let new = Arc::<str>::from(text);
        if text.len() <= MAX_INTERNED_BYTES {
            keep(&self.texts, new.clone(), ());
        }
        (new, ARC_HEADER + text.len())
    }

    /// `name` itself if something besides its `holders` (the decisions being recorded)
    /// holds it, as the policy set does; else as [`text`](Self::text), without a copy when
    /// it is new. With the bytes it adds to the record.
    pub(super) fn name(&self, name: &Arc<str>, holders: usize) -> (Arc<str>, usize) {
        if Arc::strong_count(name) > holders {
            return (name.clone(), 0);
        }
        if let Some(shared) = self.texts.get(&**name) {
            return (shared.key().clone(), 0);
        }
        if name.len() <= MAX_INTERNED_BYTES {
            keep(&self.texts, name.clone(), ());
        }
        (name.clone(), ARC_HEADER + name.len())
    }

    /// An entry's expected value, shared if something besides its `holders` holds it or
    /// (when `intern`) if it is a short string seen before; with the bytes it adds to the
    /// record.
    pub(super) fn value(
        &self,
        value: &Arc<Value>,
        intern: bool,
        holders: usize,
    ) -> (Arc<Value>, usize) {
        if Arc::strong_count(value) > holders {
            return (value.clone(), 0);
        }
        let bytes = ARC_HEADER + size_of::<Value>() + value_bytes(value);
        match &**value {
            Value::String(text) if intern && text.len() <= MAX_INTERNED_BYTES => {
                if let Some(shared) = self.values.get(text.as_str()) {
                    return (shared.key().0.clone(), 0);
                }
                keep(&self.values, StringValue(value.clone()), ());
                (value.clone(), bytes)
            }
            _ => (value.clone(), bytes),
        }
    }

    /// The names of `entry`, shared with the entries of the same check or rule; with the
    /// bytes newly allocated for them.
    pub(super) fn entry(&self, entry: &TraceEntry, holders: usize) -> (Arc<EntryNames>, usize) {
        if let Some(shared) = self.entries.get(entry as &dyn NamesKey) {
            return (shared.key().clone(), 0);
        }
        let mut bytes = 0;
        let mut name = |s: &Arc<str>| {
            let (name, new) = self.name(s, holders);
            bytes += new;
            name
        };
        let names = EntryNames::new(
            entry,
            entry.rule.as_ref().map(&mut name),
            name(&entry.attribute),
            entry.location.as_ref().map(&mut name),
        );
        let names = Arc::new(names);
        keep(&self.entries, names.clone(), ());
        bytes += names.own_bytes();
        (names, bytes)
    }

    /// Heap bytes of the tables themselves (the texts are counted by records).
    pub(super) fn table_bytes(&self) -> usize {
        // One control byte per bucket besides the entry itself.
        self.texts.capacity() * (size_of::<Arc<str>>() + 1)
            + self.values.capacity() * (size_of::<StringValue>() + 1)
            + self.entries.capacity() * (size_of::<Arc<EntryNames>>() + 1)
    }
}

/// Keeps `key` in `table`, which starts again when full.
fn keep<K: Eq + std::hash::Hash, V>(table: &Table<K, V>, key: K, value: V) {
    if table.len() >= MAX_INTERNED {
        table.clear();
    }
    table.insert(key, value);
}

/// Copies `decision`, cut and scrubbed so that its footprint is at most [`MAX_RECORD_BYTES`].
pub(crate) fn cap_decision(decision: &Decision) -> Capped {
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
    cut |= redact_jwts(&mut d.audit);
    cut |= cut_middle(&mut d.audit, MAX_AUDIT_BYTES);

    let bytes = record_bytes(&d);
    if bytes > MAX_RECORD_BYTES {
        cut = true;
        shed(&mut d, bytes);
    }
    Capped {
        decision: d,
        truncated: cut,
    }
}

/// Whether [`cap_decision`] would return `d` as it is, so that it can be stored without a
/// copy (the common case). May answer `false` for a decision that capping leaves alone;
/// never `true` for one it would change.
pub(crate) fn within_caps(d: &Decision) -> bool {
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
        && headers_within_caps(&d.upstream_headers)
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
        && d.trace.len() <= MAX_TRACE_ENTRIES
        && d.trace.iter().all(|e| {
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
        && plain_within(&d.audit, MAX_AUDIT_BYTES)
        && record_bytes(d) <= MAX_RECORD_BYTES
}

/// Whether `s` is at most `max` bytes with nothing token-shaped in it.
fn plain_within(s: &str, max: usize) -> bool {
    s.len() <= max && !s.contains("eyJ")
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

/// Whether `value` is certainly within the value caps. May answer `false` for a value that
/// [`cap_value`] would leave as it is; never `true` for one it would change.
fn value_within_caps(value: &Value, depth: usize, budget: &mut usize) -> bool {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => true,
        Value::String(s) => {
            *budget = budget.saturating_sub(s.len());
            s.len() <= MAX_VALUE_STRING_BYTES && *budget > MARKER_RESERVE && !s.contains("eyJ")
        }
        Value::Array(items) => {
            *budget = budget.saturating_sub(items.len() * size_of::<Value>());
            depth < MAX_VALUE_DEPTH
                && items.len() <= MAX_VALUE_ITEMS
                && *budget > MARKER_RESERVE
                && items
                    .iter()
                    .all(|v| value_within_caps(v, depth + 1, budget))
        }
        Value::Object(map) => {
            *budget = budget.saturating_sub(map.len() * OBJECT_ENTRY);
            depth < MAX_VALUE_DEPTH
                && map.len() <= MAX_VALUE_ITEMS
                && *budget > MARKER_RESERVE
                && map.iter().all(|(k, v)| {
                    *budget = budget.saturating_sub(k.len());
                    k.len() <= MAX_VALUE_STRING_BYTES
                        && !k.contains("eyJ")
                        && value_within_caps(v, depth + 1, budget)
                })
        }
    }
}

/// Cuts the strings, lists and nesting of `value` in place, spending `budget` bytes, and
/// redacts token-shaped strings. Returns whether anything changed.
fn cap_value(value: &mut Value, depth: usize, budget: &mut usize) -> bool {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
        Value::String(s) => {
            let mut changed = redact_jwts(s);
            changed |= cut_text(s, MAX_VALUE_STRING_BYTES.min(*budget));
            *budget = budget.saturating_sub(s.len());
            changed
        }
        Value::Array(_) | Value::Object(_) if depth >= MAX_VALUE_DEPTH => {
            let kind = if value.is_array() { "array" } else { "object" };
            *value = Value::String(format!(
                "…(truncated: {kind} nested deeper than {MAX_VALUE_DEPTH} levels)"
            ));
            true
        }
        Value::Array(items) => {
            let mut changed = false;
            // More items than allowed: keep one fewer, to make room for the marker.
            let room = if items.len() > MAX_VALUE_ITEMS {
                MAX_VALUE_ITEMS - 1
            } else {
                items.len()
            };
            let mut kept = 0;
            for item in items.iter_mut().take(room) {
                if *budget < size_of::<Value>() + MARKER_RESERVE {
                    break;
                }
                *budget -= size_of::<Value>();
                changed |= cap_value(item, depth + 1, budget);
                kept += 1;
            }
            if kept < items.len() {
                let more = items.len() - kept;
                items.truncate(kept);
                items.push(Value::String(format!("…(truncated, {more} more items)")));
                items.shrink_to_fit();
                changed = true;
            }
            changed
        }
        Value::Object(map) => {
            let mut changed = false;
            let total = map.len();
            let room = if total > MAX_VALUE_ITEMS {
                MAX_VALUE_ITEMS - 1
            } else {
                total
            };
            let mut capped = serde_json::Map::new();
            for (mut key, mut item) in std::mem::take(map).into_iter().take(room) {
                if *budget < OBJECT_ENTRY + MARKER_RESERVE {
                    break;
                }
                *budget -= OBJECT_ENTRY;
                changed |= redact_jwts(&mut key);
                changed |= cut_text(&mut key, MAX_VALUE_STRING_BYTES.min(*budget));
                *budget = budget.saturating_sub(key.len());
                changed |= cap_value(&mut item, depth + 1, budget);
                capped.insert(key, item);
            }
            if capped.len() < total {
                let more = total - capped.len();
                // `…` sorts after every ASCII key, so the marker comes last.
                capped.insert(
                    "…".to_owned(),
                    Value::String(format!("(truncated, {more} more entries)")),
                );
                changed = true;
            }
            *map = capped;
            changed
        }
    }
}

/// Brings a record over [`MAX_RECORD_BYTES`] within it by dropping, least useful first:
/// values and details of the trace entries that did not decide, upstream header values,
/// those entries themselves (and deciding entries after the first), error details after the
/// first, audiences after the first, decision header values, the values of the deciding
/// entry; and in the last resort it cuts the URL and the audit message short. `bytes` is
/// the record's [`record_bytes`].
fn shed(d: &mut Decision, mut bytes: usize) {
    let over = |bytes: usize| bytes > MAX_RECORD_BYTES;

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
        let total = d.trace.len();
        let first_decisive = d.trace.iter().position(|e| e.decisive);
        let mut kept: Vec<TraceEntry> = first_decisive
            .map(|i| d.trace.swap_remove(i))
            .into_iter()
            .collect();
        if total > kept.len() {
            let marker = removed_entries_marker(&kept, total - kept.len());
            kept.push(marker);
        }
        d.trace = kept;
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
        !over(record_bytes(d)),
        "a record of {} bytes after shedding",
        record_bytes(d)
    );
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

/// Cuts `s` to at most `max` bytes on a char boundary, appending a marker that says how much
/// was cut; the marker is counted within `max` when `max` is at least [`MARKER_RESERVE`].
/// Returns whether it cut.
fn cut_text(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let keep = floor_boundary(s, max.saturating_sub(MARKER_RESERVE));
    let more = s.len() - keep;
    s.truncate(keep);
    s.push_str(&format!("…(truncated, {more} more bytes)"));
    s.shrink_to_fit();
    true
}

/// Like [`cut_text`], but keeps the start and the end and cuts the middle.
pub(super) fn cut_middle(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let room = max.saturating_sub(MARKER_RESERVE);
    let head = floor_boundary(s, room * 2 / 3);
    let mut tail = s.len() - (room - head);
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    let mut cut = String::with_capacity(room + MARKER_RESERVE);
    cut.push_str(&s[..head]);
    cut.push_str(&format!("…(truncated, {} bytes)…", tail - head));
    cut.push_str(&s[tail..]);
    cut.shrink_to_fit();
    *s = cut;
    true
}

/// The largest char boundary of `s` at or below `at`.
fn floor_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
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

/// Replaces every JWT-shaped run of `s` by `REDACTED` and says whether there was one. The
/// engine never puts a raw token into a decision; this makes sure none reaches the store if
/// it ever did (a token pasted into a URL path, say).
pub(super) fn redact_jwts(s: &mut String) -> bool {
    if !s.contains("eyJ") {
        return false;
    }
    let mut from = 0;
    let mut found = false;
    while let Some((start, end)) = find_jwt(s, from) {
        s.replace_range(start..end, REDACTED);
        from = start + REDACTED.len();
        found = true;
    }
    found
}

/// The next JWT-shaped run of `s` at or after `from`: `eyJ` and at least ten more base64url
/// characters, a dot, a base64url part, a dot, and an optional base64url part.
fn find_jwt(s: &str, from: usize) -> Option<(usize, usize)> {
    let bytes = s.as_bytes();
    let b64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    let run = |at: usize| {
        at + bytes
            .get(at..)
            .map_or(0, |r| r.iter().take_while(|b| b64(b)).count())
    };
    let mut search = from;
    while let Some(offset) = s.get(search..).and_then(|rest| rest.find("eyJ")) {
        let start = search + offset;
        let header_end = run(start);
        if header_end - start >= 13 && bytes.get(header_end) == Some(&b'.') {
            let payload_end = run(header_end + 1);
            if payload_end > header_end + 1 && bytes.get(payload_end) == Some(&b'.') {
                return Some((start, run(payload_end + 1)));
            }
        }
        search = start + 3;
    }
    None
}

/// At most the heap bytes of the record of `d` (which `StoredDecision::pack` measures
/// exactly): its layout, with nothing shared with other records and nothing rebuilt, every
/// string that may be shared counted as an allocation of its own. Called before the caller
/// drops its decision: strings and values behind an `Arc` held by more than that decision
/// and its copy (by the policy set) are not the record's own, and not counted.
pub(super) fn record_bytes(d: &Decision) -> usize {
    RECORD_INLINE
        + d.id.len()
        + d.time.len()
        + d.audit.len()
        + opt_arc_bytes(&d.service)
        + opt_arc_bytes(&d.operation)
        + arc_bytes(&d.policy_revision)
        + text_bytes(&d.request.method)
        + d.request.url.len()
        + d.request.client.as_ref().map_or(0, String::len)
        + headers_bytes(&d.headers)
        + headers_bytes(&d.upstream_headers)
        + d.body.as_ref().map_or(0, body_bytes)
        + d.token.as_ref().map_or(0, token_bytes)
        + trace_bytes(&d.trace)
}

/// A string the record may keep behind an `Arc` of its own.
fn text_bytes(s: &str) -> usize {
    ARC_HEADER + s.len()
}

/// Heap bytes of a code or operator: none for the engine's static ones. (A method, as
/// Clippy would have a function take `&str`, which cannot tell.)
trait OwnedBytes {
    fn owned_bytes(&self) -> usize;
}

impl OwnedBytes for Cow<'static, str> {
    fn owned_bytes(&self) -> usize {
        match self {
            Cow::Borrowed(_) => 0,
            Cow::Owned(s) => s.len(),
        }
    }
}

fn arc_bytes(s: &Arc<str>) -> usize {
    if is_shared(s) {
        0
    } else {
        ARC_HEADER + s.len()
    }
}

/// Whether something besides the decision being recorded and its stored copy holds `arc`.
fn is_shared<T: ?Sized>(arc: &Arc<T>) -> bool {
    Arc::strong_count(arc) > 2
}

fn opt_arc_bytes(s: &Option<Arc<str>>) -> usize {
    s.as_ref().map_or(0, arc_bytes)
}

fn headers_bytes(h: &Headers) -> usize {
    h.0.iter()
        .map(|(name, value)| HEADER_INLINE + text_bytes(name) + text_bytes(value))
        .sum()
}

fn body_bytes(b: &ErrorBody) -> usize {
    let details: usize = b
        .details
        .iter()
        .map(|d| DETAIL_INLINE + d.code.owned_bytes() + text_bytes(&d.target) + d.message.len())
        .sum();
    BODY_INLINE
        + b.id.len()
        + b.code.owned_bytes()
        + text_bytes(&b.message)
        + text_bytes(&b.target)
        + details
}

fn token_bytes(t: &TokenSummary) -> usize {
    let shared: usize = [&t.client_id, &t.iss, &t.kid]
        .into_iter()
        .flatten()
        .map(|s| text_bytes(s))
        .sum();
    TOKEN_INLINE
        + t.sub.as_ref().map_or(0, String::len)
        + t.exp.as_ref().map_or(0, String::len)
        + shared
        + text_bytes(&t.alg)
        + t.aud
            .iter()
            .map(|a| AUDIENCE_INLINE + text_bytes(a))
            .sum::<usize>()
}

fn trace_bytes(trace: &[TraceEntry]) -> usize {
    trace.len() * ENTRY_INLINE + trace.iter().map(entry_bytes).sum::<usize>()
}

/// Heap bytes of one entry, beyond its place in the trace and its names' own allocation.
fn entry_bytes(e: &TraceEntry) -> usize {
    entry_names_bytes(e)
        + e.expected
            .as_ref()
            .filter(|v| !is_shared(v))
            .map_or(0, |v| ARC_HEADER + size_of::<Value>() + value_bytes(v))
        + e.actual.as_ref().map_or(0, encoded_len)
        + e.detail.as_ref().map_or(0, String::len)
}

/// Heap bytes of an entry's names: rule, attribute, operator and location.
fn entry_names_bytes(e: &TraceEntry) -> usize {
    opt_arc_bytes(&e.rule)
        + arc_bytes(&e.attribute)
        + e.operator.owned_bytes()
        + opt_arc_bytes(&e.location)
}

/// Heap bytes owned by a JSON value (not counting the value itself).
fn value_bytes(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => s.capacity(),
        Value::Array(items) => {
            items.capacity() * size_of::<Value>() + items.iter().map(value_bytes).sum::<usize>()
        }
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| OBJECT_ENTRY + k.capacity() + value_bytes(v))
            .sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_char_boundaries_with_a_marker_within_the_cap() {
        let mut s = "é".repeat(1000);
        assert!(cut_text(&mut s, 301));
        assert!(s.len() <= 301, "{}", s.len());
        assert!(s.ends_with("more bytes)"), "{s}");
        let mut m = format!("start{}end", "ü".repeat(3000));
        assert!(cut_middle(&mut m, 500));
        assert!(
            m.len() <= 500 && m.starts_with("start") && m.ends_with("end"),
            "{m}"
        );
        let mut short = "short".to_owned();
        assert!(!cut_text(&mut short, 5) && !cut_middle(&mut short, 5));
    }

    proptest::proptest! {
        #[test]
        fn cuts_stay_within_the_cap_for_any_text(s in "\\PC{0,600}", max in 48usize..700) {
            let mut cut = s.clone();
            let was_cut = cut_text(&mut cut, max);
            proptest::prop_assert!(cut.len() <= max);
            proptest::prop_assert_eq!(was_cut, s.len() > max);
            let mut middle = s.clone();
            cut_middle(&mut middle, max);
            proptest::prop_assert!(middle.len() <= max);
            let mut redacted = s;
            redact_jwts(&mut redacted);
        }
    }

    #[test]
    fn token_shaped_text_is_redacted_wherever_it_appears() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLjAifQ.c2lnbmF0dXJl";
        let mut s = format!("/callback/{jwt}/next?x={jwt}");
        assert!(redact_jwts(&mut s));
        assert_eq!(s, "/callback/REDACTED/next?x=REDACTED");
        let mut harmless = "eyJ but not a token. eyJshort.a.b".to_owned();
        assert!(!redact_jwts(&mut harmless));
    }

    #[test]
    fn values_are_cut_in_length_items_and_depth() {
        let mut v = serde_json::json!({
            "groups": (0..100).map(|i| format!("group-{i}")).collect::<Vec<_>>(),
            "long": "x".repeat(10_000),
            "deep": [[[[["five levels"]]]]],
        });
        assert!(!value_within_caps(&v, 0, &mut MAX_VALUE_BYTES.to_owned()));
        assert!(cap_value(&mut v, 0, &mut MAX_VALUE_BYTES.to_owned()));
        let text = v.to_string();
        assert!(text.contains("more items)"), "{text}");
        assert!(text.contains("more bytes)"), "{text}");
        assert!(text.contains("nested deeper than 4 levels"), "{text}");
        let mut wide: Value = (0..100)
            .map(|i| (format!("k{i}"), Value::from(i)))
            .collect();
        assert!(cap_value(&mut wide, 0, &mut MAX_VALUE_BYTES.to_owned()));
        let wide = wide.as_object().unwrap();
        assert!(wide.len() <= MAX_VALUE_ITEMS);
        let marker = wide["…"].as_str().unwrap();
        assert!(marker.ends_with("more entries)"), "{marker}");
        assert!(
            value_bytes(&v) <= 2 * MAX_VALUE_BYTES,
            "{}",
            value_bytes(&v)
        );
        let small = serde_json::json!(["players", {"a": 1}]);
        assert!(value_within_caps(
            &small,
            0,
            &mut MAX_VALUE_BYTES.to_owned()
        ));
        assert!(!cap_value(
            &mut small.clone(),
            0,
            &mut MAX_VALUE_BYTES.to_owned()
        ));
    }
}
