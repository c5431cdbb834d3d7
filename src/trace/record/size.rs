//! The estimate of a record's size that capping works on: an upper bound of what packing the
//! decision measures, taken before the record exists.

use std::borrow::Cow;
use std::mem::size_of;
use std::sync::Arc;

use serde_json::Value;

use super::value::{encoded_len, value_bytes};
use super::{
    ARC_HEADER, BODY_INLINE, DETAIL_INLINE, ENTRY_INLINE, HEADER_INLINE, RECORD_INLINE,
    TOKEN_INLINE,
};
use crate::decision::{
    Decision, ErrorBody, Headers, ShadowDecision, TokenSummary, TraceEntry, TraceLink,
};

/// At most the heap bytes of the record of `d` (which `StoredDecision::pack` measures
/// exactly): its layout, with nothing shared with other records and nothing rebuilt, every
/// string that may be shared counted as an allocation of its own. Called before the caller
/// drops its decision: strings and values behind an `Arc` held by more than that decision
/// and its copy (by the policy set) are not the record's own, and not counted.
pub(super) fn record_bytes(d: &Decision) -> usize {
    kept_bytes(d) + headers_bytes(&d.upstream_headers) + trace_bytes(&d.trace)
}

/// [`record_bytes`] of what a record of inputs keeps: neither the trace nor the upstream
/// headers, which it rebuilds.
pub(super) fn kept_bytes(d: &Decision) -> usize {
    RECORD_INLINE
        + d.id.len()
        + d.time.len()
        + d.audit.len()
        + d.service.as_ref().map_or(0, |s| s.len())
        + d.operation.as_ref().map_or(0, |s| s.len())
        + d.policy_revision.len()
        + text_bytes(&d.request.method)
        + d.request.url.len()
        + d.request.client.as_ref().map_or(0, String::len)
        + headers_bytes(&d.headers)
        + d.body.as_ref().map_or(0, body_bytes)
        + d.token.as_ref().map_or(0, token_bytes)
        + d.shadow.as_deref().map_or(0, shadow_bytes)
        + trace_link_bytes(d.trace_link.as_ref())
}

/// Heap bytes of a record's trace link (boxed when there is one).
pub(super) fn trace_link_bytes(link: Option<&TraceLink>) -> usize {
    link.map_or(0, |_| size_of::<TraceLink>())
}

/// Heap bytes of a shadow decision as the record keeps it (whole, not interned).
pub(super) fn shadow_bytes(s: &ShadowDecision) -> usize {
    size_of::<ShadowDecision>()
        + s.rule.as_ref().map_or(0, String::len)
        + arc_bytes(&s.policy_revision)
        + s.trace.len() * size_of::<TraceEntry>()
        + s.trace
            .iter()
            .map(|e| {
                text_bytes(&e.attribute)
                    + e.rule.as_deref().map_or(0, text_bytes)
                    + e.location.as_deref().map_or(0, text_bytes)
                    + e.operator.owned_bytes()
                    + e.expected
                        .as_deref()
                        .map_or(0, |v| ARC_HEADER + size_of::<Value>() + value_bytes(v))
                    + e.actual
                        .as_ref()
                        .map_or(0, |v| size_of::<Value>() + value_bytes(v))
                    + e.detail.as_ref().map_or(0, String::len)
            })
            .sum::<usize>()
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

pub(super) fn body_bytes(b: &ErrorBody) -> usize {
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

pub(super) fn token_bytes(t: &TokenSummary) -> usize {
    let opt_len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    TOKEN_INLINE
        + opt_len(&t.sub)
        + opt_len(&t.client_id)
        + opt_len(&t.iss)
        + opt_len(&t.exp)
        + opt_len(&t.kid)
        + t.alg.len()
        + t.aud.iter().map(|a| 4 + a.len()).sum::<usize>()
}

pub(super) fn trace_bytes(trace: &[TraceEntry]) -> usize {
    trace.len() * ENTRY_INLINE + trace.iter().map(entry_bytes).sum::<usize>()
}

/// Heap bytes of one entry, beyond its place in the trace and its names' own allocation.
pub(super) fn entry_bytes(e: &TraceEntry) -> usize {
    entry_names_bytes(e)
        + e.expected
            .as_ref()
            .filter(|v| !is_shared(v))
            .map_or(0, |v| ARC_HEADER + size_of::<Value>() + value_bytes(v))
        + e.actual.as_ref().map_or(0, encoded_len)
        + e.detail.as_ref().map_or(0, String::len)
}

/// Heap bytes of an entry's names: rule, attribute, operator and location.
pub(super) fn entry_names_bytes(e: &TraceEntry) -> usize {
    opt_arc_bytes(&e.rule)
        + arc_bytes(&e.attribute)
        + e.operator.owned_bytes()
        + opt_arc_bytes(&e.location)
}
