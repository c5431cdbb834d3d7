//! The recent-decisions store: a fixed ring of slots written in turn, so that inserting is
//! O(1) and the oldest record is the one overwritten, with an index from decision id to slot.
//!
//! A record is a compact form of its decision: what the decision repeats of itself (the id in
//! the body and the `x-decision-id` header, the time the id carries, the audit sentence that
//! quotes the URL) is rebuilt when the record is read, and the names and messages that every
//! decision of a rule repeats are shared between records (see [`Interner`]).

use std::borrow::{Borrow, Cow};
use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use dashmap::DashMap;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;

pub mod wire;

use super::cap::{
    ARC_HEADER, Capped, Interner, MAX_AUDIT_BYTES, cap_decision, cut_middle, redact_jwts,
    within_caps,
};
use crate::decision::{
    Decision, ErrorBody, ErrorDetail, Headers, Outcome, RequestSummary, Step, TokenSummary,
    TraceEntry,
};

/// Records kept when no capacity is configured.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Records listed when the caller names no limit.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// Most records one list returns, whatever limit is asked for: a page stays a page.
pub const MAX_LIST_LIMIT: usize = 1_000;

/// Heap bytes of a record before anything it points to: the record behind its `Arc`.
pub(super) const RECORD_INLINE: usize = ARC_HEADER + size_of::<StoredDecision>();
/// Heap bytes of one header in a record's list, before its name and value.
pub(super) const HEADER_INLINE: usize = size_of::<DecisionHeader>();
/// Heap bytes of an error body, before its texts and details.
pub(super) const BODY_INLINE: usize = size_of::<StoredBody>();
/// Heap bytes of one error detail, before its texts.
pub(super) const DETAIL_INLINE: usize = size_of::<StoredDetail>();
/// Heap bytes of a token summary, before its texts.
pub(super) const TOKEN_INLINE: usize = size_of::<StoredToken>();
/// Heap bytes of one audience in a token summary's list, before its text.
pub(super) const AUDIENCE_INLINE: usize = size_of::<Arc<str>>();
/// Heap bytes of one trace entry with names of its own, before its texts and values.
pub(super) const ENTRY_INLINE: usize =
    size_of::<StoredEntry>() + ARC_HEADER + size_of::<EntryNames>();

/// Request methods shared between records; any other is kept as it came.
const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
];

/// A decision as stored: capped and scrubbed (see [`MAX_RECORD_BYTES`](super::MAX_RECORD_BYTES)),
/// with its time as a number for filtering. [`decision`](Self::decision) rebuilds the decision,
/// long values cut (marked `…(truncated, …)`) and secret header values replaced by `REDACTED`;
/// serialising a record writes that decision's JSON (SPEC §6b).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoredDecision {
    /// Milliseconds since the Unix epoch, from the id (a ULID), or else from `time`; 0 if
    /// neither can be read.
    pub unix_millis: i64,
    /// Approximate heap bytes the record takes: what it alone holds, and the shared names it
    /// was the first record to hold. Strings shared with the policy set are not counted.
    pub approx_bytes: usize,
    /// Whether anything of the decision was cut, removed or redacted to store it (secret
    /// header values aside, which are always redacted).
    pub truncated: bool,
    id: Box<str>,
    /// `None`: `unix_millis`, as the engine writes a time.
    time: Option<Box<str>>,
    duration_micros: u64,
    service: Option<Arc<str>>,
    operation: Option<Arc<str>>,
    policy_revision: Arc<str>,
    method: Arc<str>,
    url: Box<str>,
    client: Option<Box<str>>,
    outcome: Outcome,
    status: u16,
    upstream_status: UpstreamStatus,
    headers: Box<[DecisionHeader]>,
    upstream_headers: Box<[(Arc<str>, Box<str>)]>,
    body: Option<Box<StoredBody>>,
    token: Option<Box<StoredToken>>,
    trace: Box<[StoredEntry]>,
    audit: Audit,
}

/// The status the upstream answered with, reported after the record was made (the Sideband
/// API's response phase); 0 until then.
#[derive(Debug, Default)]
pub(super) struct UpstreamStatus(AtomicU16);

impl UpstreamStatus {
    pub(super) fn new(status: Option<u16>) -> Self {
        Self(AtomicU16::new(status.unwrap_or(0)))
    }

    pub(super) fn get(&self) -> Option<u16> {
        Some(self.0.load(Ordering::Relaxed)).filter(|s| *s != 0)
    }
}

impl Clone for UpstreamStatus {
    fn clone(&self) -> Self {
        Self::new(self.get())
    }
}

/// A header returned to the client on deny; a value of `None` is the decision id.
type DecisionHeader = (Arc<str>, Option<Arc<str>>);

/// The audit message: one of the engine's sentences, rebuilt from the URL, or its text.
#[derive(Debug, Clone)]
enum Audit {
    Rendered(AuditSentence),
    Text(Box<str>),
}

/// The audit sentences of the engine (`Denial::render` and the allow in `decision.rs`): the
/// URL quoted between two fixed parts. A decision whose message is none of them (another
/// version's, say) keeps its text.
#[derive(Debug, Clone, Copy)]
enum AuditSentence {
    Allowed,
    Denied,
    InvalidToken,
    NoService,
    InvalidUrl,
    Internal,
}

impl AuditSentence {
    const ALL: [Self; 6] = [
        Self::Allowed,
        Self::Denied,
        Self::InvalidToken,
        Self::NoService,
        Self::InvalidUrl,
        Self::Internal,
    ];

    /// The text before and after the URL; `Internal` goes on with the id and a full stop.
    fn parts(self) -> (&'static str, &'static str) {
        const REQUEST: &str = "Request to the URL \"";
        match self {
            Self::Allowed => (REQUEST, "\" allowed."),
            Self::Denied => (REQUEST, "\" denied by policy evaluation."),
            Self::InvalidToken => (REQUEST, "\" denied due to an invalid OAuth access token."),
            Self::NoService => ("No API server defines policy for the URL \"", "\"."),
            Self::InvalidUrl => (REQUEST, "\" denied: the URL is invalid."),
            Self::Internal => (REQUEST, "\" denied: internal error in decision "),
        }
    }

    /// Length of the sentence for `url` and `id` before any cut.
    fn full_len(self, url: &str, id: &str) -> usize {
        let (before, after) = self.parts();
        let id = match self {
            Self::Internal => id.len() + 1,
            _ => 0,
        };
        before.len() + url.len() + after.len() + id
    }

    /// Whether `audit` is the whole sentence for `url` and `id`.
    fn is(self, audit: &str, url: &str, id: &str) -> bool {
        let (before, after) = self.parts();
        let rest = audit
            .strip_prefix(before)
            .and_then(|r| r.strip_prefix(url))
            .and_then(|r| r.strip_prefix(after));
        match (self, rest) {
            (Self::Internal, Some(rest)) => rest.strip_prefix(id) == Some("."),
            (_, Some(rest)) => rest.is_empty(),
            (_, None) => false,
        }
    }

    /// The sentence for `url` and `id`, cut as the store cuts an audit message.
    fn render(self, url: &str, id: &str) -> String {
        let (before, after) = self.parts();
        let mut s = String::with_capacity(self.full_len(url, id));
        s.push_str(before);
        s.push_str(url);
        s.push_str(after);
        if let Self::Internal = self {
            s.push_str(id);
            s.push('.');
        }
        if s.len() > MAX_AUDIT_BYTES {
            redact_jwts(&mut s);
            cut_middle(&mut s, MAX_AUDIT_BYTES);
        }
        s
    }
}

impl Audit {
    /// `audit` as stored: a sentence when it rebuilds `audit` exactly from the stored `url`
    /// and `id`.
    fn of(audit: &str, url: &str, id: &str) -> Self {
        let found = AuditSentence::ALL.into_iter().find(|sentence| {
            if sentence.full_len(url, id) <= MAX_AUDIT_BYTES {
                sentence.is(audit, url, id)
            } else {
                // A long URL: the message was cut in the middle; only a whole rendering tells.
                audit.starts_with(sentence.parts().0) && sentence.render(url, id) == audit
            }
        });
        match found {
            Some(sentence) => Audit::Rendered(sentence),
            None => Audit::Text(Box::from(audit)),
        }
    }

    fn text(&self, url: &str, id: &str) -> String {
        match self {
            Audit::Rendered(sentence) => sentence.render(url, id),
            Audit::Text(text) => text.to_string(),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Audit::Rendered(_) => 0,
            Audit::Text(text) => text.len(),
        }
    }
}

/// The error body of a denial (SPEC §3).
#[derive(Debug, Clone)]
struct StoredBody {
    /// `None`: the decision id.
    id: Option<Box<str>>,
    code: Cow<'static, str>,
    message: Arc<str>,
    target: Arc<str>,
    details: Box<[StoredDetail]>,
}

#[derive(Debug, Clone)]
struct StoredDetail {
    code: Cow<'static, str>,
    target: Arc<str>,
    /// `None`: the detail of the first deciding trace entry, which a token error repeats.
    message: Option<Box<str>>,
}

/// The token summary; the texts that name the issuer, audiences, client, key and algorithm
/// repeat between decisions and are shared.
#[derive(Debug, Clone)]
struct StoredToken {
    sub: Option<Box<str>>,
    client_id: Option<Arc<str>>,
    iss: Option<Arc<str>>,
    aud: Box<[Arc<str>]>,
    exp: Option<Box<str>>,
    kid: Option<Arc<str>>,
    alg: Arc<str>,
    delegated: bool,
}

/// One trace entry: its names shared with every other entry of the same check or rule, and
/// what this evaluation found.
#[derive(Debug, Clone)]
struct StoredEntry {
    names: Arc<EntryNames>,
    expected: Option<Arc<Value>>,
    /// The value as [`encode_value`] writes it.
    actual: Option<Box<[u8]>>,
    detail: Option<Box<str>>,
    result: bool,
    decisive: bool,
}

/// What the entries of one check or rule have in common each time it is evaluated.
#[derive(Debug)]
pub(super) struct EntryNames {
    step: Step,
    depth: u8,
    rule: Option<Arc<str>>,
    attribute: Arc<str>,
    operator: Cow<'static, str>,
    location: Option<Arc<str>>,
}

impl EntryNames {
    /// The names of `entry`, with its strings as the interner shares them.
    pub(super) fn new(
        entry: &TraceEntry,
        rule: Option<Arc<str>>,
        attribute: Arc<str>,
        location: Option<Arc<str>>,
    ) -> Self {
        Self {
            step: entry.step,
            depth: entry.depth,
            rule,
            attribute,
            // A copy of an owned operator (from another replica) has no spare capacity.
            operator: entry.operator.clone(),
            location,
        }
    }

    /// Heap bytes of the names once the interner keeps them, beyond the strings.
    pub(super) fn own_bytes(&self) -> usize {
        ARC_HEADER
            + size_of::<Self>()
            + match &self.operator {
                Cow::Borrowed(_) => 0,
                Cow::Owned(s) => s.capacity(),
            }
    }
}

/// What tells the names of one check or rule from another's, borrowed from a trace entry
/// or from names the interner keeps, so that an entry is looked up without a copy.
pub(super) trait NamesKey {
    fn key(&self) -> (u8, u8, Option<&str>, &str, &str, Option<&str>);
}

/// Both kinds name their parts alike.
macro_rules! names_key {
    ($($kind:ty),*) => {$(
        impl NamesKey for $kind {
            fn key(&self) -> (u8, u8, Option<&str>, &str, &str, Option<&str>) {
                (
                    self.step as u8,
                    self.depth,
                    self.rule.as_deref(),
                    &self.attribute,
                    &self.operator,
                    self.location.as_deref(),
                )
            }
        }
    )*};
}

names_key!(EntryNames, TraceEntry);

impl<'a> Borrow<dyn NamesKey + 'a> for Arc<EntryNames> {
    fn borrow(&self) -> &(dyn NamesKey + 'a) {
        &**self
    }
}

impl PartialEq for dyn NamesKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for dyn NamesKey + '_ {}

impl Hash for dyn NamesKey + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

// As their key, so that the interner's table finds names by a borrowed entry.
impl PartialEq for EntryNames {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for EntryNames {}

impl Hash for EntryNames {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

/// A string value of an entry's `expected`, found by its text in the interner.
#[derive(Debug, Clone)]
pub(super) struct StringValue(pub(super) Arc<Value>);

impl Borrow<str> for StringValue {
    fn borrow(&self) -> &str {
        self.0.as_str().unwrap_or_default()
    }
}

impl PartialEq for StringValue {
    fn eq(&self, other: &Self) -> bool {
        <Self as Borrow<str>>::borrow(self) == <Self as Borrow<str>>::borrow(other)
    }
}

impl Eq for StringValue {}

impl Hash for StringValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        <Self as Borrow<str>>::borrow(self).hash(state);
    }
}

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

    fn name(&mut self, name: &Arc<str>) -> Arc<str> {
        let (name, bytes) = self.interner.name(name, self.holders);
        self.bytes += bytes;
        name
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

    fn entry(&mut self, e: &TraceEntry) -> StoredEntry {
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
        let actual = e.actual.as_ref().map(|v| {
            let encoded = encode_value(v);
            self.bytes += encoded.len();
            encoded
        });
        StoredEntry {
            names,
            expected,
            actual,
            detail: e.detail.as_deref().map(|d| self.boxed(d)),
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
        self.bytes += TOKEN_INLINE;
        let aud: Vec<Arc<str>> = t.aud.iter().map(|a| self.text(a)).collect();
        Box::new(StoredToken {
            sub: t.sub.as_deref().map(|s| self.boxed(s)),
            client_id: t.client_id.as_deref().map(|s| self.text(s)),
            iss: t.iss.as_deref().map(|s| self.text(s)),
            aud: self.slice(aud),
            exp: t.exp.as_deref().map(|s| self.boxed(s)),
            kid: t.kid.as_deref().map(|s| self.text(s)),
            alg: self.text(&t.alg),
            delegated: t.delegated,
        })
    }
}

impl StoredDecision {
    /// A capped, scrubbed copy of `decision`, as [`TraceStore::record`] stores it; for
    /// decisions that come from elsewhere (another replica), which get the same limits.
    pub fn of(decision: &Decision) -> Self {
        Self::capped(decision, &Interner::default())
    }

    fn capped(decision: &Decision, interner: &Interner) -> Self {
        if within_caps(decision) {
            return Self::pack(decision, false, 1, interner);
        }
        let Capped {
            decision: capped,
            truncated,
        } = cap_decision(decision);
        Self::pack(&capped, truncated, 2, interner)
    }

    /// The record of `d`, which is capped already and held by `holders` decisions (see
    /// [`Packer`]); strings and values behind an `Arc` that something else holds too (the
    /// policy set) are shared, and not counted.
    fn pack(d: &Decision, truncated: bool, holders: usize, interner: &Interner) -> Self {
        // Before packing: the interner's own references would make texts look shared.
        #[cfg(debug_assertions)]
        let bound = super::cap::record_bytes(d);
        let mut p = Packer {
            interner,
            holders,
            bytes: RECORD_INLINE,
        };
        let url = &d.request.url;
        let audit = Audit::of(&d.audit, url, &d.id);
        p.bytes += audit.heap_bytes();
        let headers: Vec<DecisionHeader> = (d.headers.0.iter())
            .map(|(name, value)| (p.text(name), (*value != d.id).then(|| p.text(value))))
            .collect();
        let upstream_headers: Vec<(Arc<str>, Box<str>)> = (d.upstream_headers.0.iter())
            .map(|(name, value)| (p.text(name), p.boxed(value)))
            .collect();
        let decisive_detail = d
            .trace
            .iter()
            .find(|e| e.decisive)
            .and_then(|e| e.detail.as_deref());
        let trace: Vec<StoredEntry> = d.trace.iter().map(|e| p.entry(e)).collect();

        let unix_millis = ulid::Ulid::from_string(&d.id)
            .ok()
            .map(|u| i64::try_from(u.timestamp_ms()).unwrap_or(i64::MAX))
            .or_else(|| parse_millis(&d.time))
            .unwrap_or(0);
        let method = &d.request.method;
        let method = if METHODS.contains(&method.as_str()) {
            p.text(method)
        } else {
            p.bytes += ARC_HEADER + method.len();
            Arc::from(method.as_str())
        };
        let record = Self {
            unix_millis,
            approx_bytes: 0,
            truncated,
            id: p.boxed(&d.id),
            time: (!displays_as(engine_time(unix_millis), &d.time)).then(|| p.boxed(&d.time)),
            duration_micros: d.duration_micros,
            service: d.service.as_ref().map(|s| p.name(s)),
            operation: d.operation.as_ref().map(|s| p.name(s)),
            policy_revision: p.name(&d.policy_revision),
            method,
            url: p.boxed(url),
            client: d.request.client.as_deref().map(|c| p.boxed(c)),
            outcome: d.outcome,
            status: d.status,
            upstream_status: UpstreamStatus::new(d.upstream_status),
            headers: p.slice(headers),
            upstream_headers: p.slice(upstream_headers),
            body: d.body.as_ref().map(|b| p.body(b, &d.id, decisive_detail)),
            token: d.token.as_ref().map(|t| p.token(t)),
            trace: p.slice(trace),
            audit,
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

    /// The decision this record keeps, rebuilt: what the store cut stays cut.
    pub fn decision(&self) -> Decision {
        let id = &*self.id;
        let decisive_detail = self
            .trace
            .iter()
            .find(|e| e.decisive)
            .and_then(|e| e.detail.as_deref());
        Decision {
            id: id.to_owned(),
            time: match &self.time {
                Some(time) => time.to_string(),
                None => engine_time(self.unix_millis).to_string(),
            },
            duration_micros: self.duration_micros,
            service: self.service.clone(),
            operation: self.operation.clone(),
            policy_revision: self.policy_revision.clone(),
            request: RequestSummary {
                method: self.method.to_string(),
                url: self.url.to_string(),
                client: self.client.as_deref().map(str::to_owned),
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
            token: self.token.as_deref().map(|t| TokenSummary {
                sub: t.sub.as_deref().map(str::to_owned),
                client_id: t.client_id.as_deref().map(str::to_owned),
                iss: t.iss.as_deref().map(str::to_owned),
                aud: t.aud.iter().map(|a| a.to_string()).collect(),
                exp: t.exp.as_deref().map(str::to_owned),
                kid: t.kid.as_deref().map(str::to_owned),
                alg: t.alg.to_string(),
                delegated: t.delegated,
            }),
            trace: self.trace.iter().map(StoredEntry::unpack).collect(),
            audit: self.audit.text(&self.url, id),
        }
    }

    /// The decision id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Records the status the upstream answered the decided request with (0: none). Best
    /// effort with a shared store: a record already written there keeps what
    /// it had.
    pub fn set_upstream_status(&self, status: u16) {
        self.upstream_status.0.store(status, Ordering::Relaxed);
    }

    fn subject(&self) -> Option<&str> {
        self.token.as_ref().and_then(|t| t.sub.as_deref())
    }
}

/// The JSON of the decision the record keeps (SPEC §6b).
impl Serialize for StoredDecision {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.decision().serialize(serializer)
    }
}

impl StoredEntry {
    fn unpack(&self) -> TraceEntry {
        let names = &*self.names;
        TraceEntry {
            step: names.step,
            rule: names.rule.clone(),
            attribute: names.attribute.clone(),
            operator: names.operator.clone(),
            expected: self.expected.clone(),
            actual: self.actual.as_deref().map(decode_value),
            result: self.result,
            decisive: self.decisive,
            depth: names.depth,
            detail: self.detail.as_deref().map(str::to_owned),
            location: names.location.clone(),
        }
    }
}

/// Tags of the compact encoding of JSON values in trace entries: a tag byte; then for
/// numbers their 8 bytes, little-endian; for strings their length (LEB128) and UTF-8 bytes;
/// for arrays their length and items; for objects their length and key-value pairs. Smaller
/// than a `Value` tree, and exact (serde_json's default parser does not read every float
/// back as written).
mod tag {
    pub(super) const NULL: u8 = 0;
    pub(super) const FALSE: u8 = 1;
    pub(super) const TRUE: u8 = 2;
    pub(super) const UNSIGNED: u8 = 3;
    pub(super) const SIGNED: u8 = 4;
    pub(super) const FLOAT: u8 = 5;
    pub(super) const STRING: u8 = 6;
    pub(super) const ARRAY: u8 = 7;
    pub(super) const OBJECT: u8 = 8;
}

/// Bytes of `v` in the encoding of [`encode_value`].
pub(super) fn encoded_len(v: &Value) -> usize {
    1 + match v {
        Value::Null | Value::Bool(_) => 0,
        Value::Number(_) => 8,
        Value::String(s) => len_len(s.len()) + s.len(),
        Value::Array(items) => len_len(items.len()) + items.iter().map(encoded_len).sum::<usize>(),
        Value::Object(map) => {
            len_len(map.len())
                + map
                    .iter()
                    .map(|(k, v)| len_len(k.len()) + k.len() + encoded_len(v))
                    .sum::<usize>()
        }
    }
}

fn len_len(mut n: usize) -> usize {
    let mut bytes = 1;
    while n >= 0x80 {
        n >>= 7;
        bytes += 1;
    }
    bytes
}

fn encode_value(v: &Value) -> Box<[u8]> {
    let mut out = Vec::with_capacity(encoded_len(v));
    write_value(v, &mut out);
    out.into_boxed_slice()
}

fn write_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(tag::NULL),
        Value::Bool(false) => out.push(tag::FALSE),
        Value::Bool(true) => out.push(tag::TRUE),
        Value::Number(n) => {
            let (tag, bits) = match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => (tag::UNSIGNED, u),
                (None, Some(i)) => (tag::SIGNED, i as u64),
                (None, None) => (tag::FLOAT, n.as_f64().unwrap_or_default().to_bits()),
            };
            out.push(tag);
            out.extend_from_slice(&bits.to_le_bytes());
        }
        Value::String(s) => {
            out.push(tag::STRING);
            write_str(s, out);
        }
        Value::Array(items) => {
            out.push(tag::ARRAY);
            write_len(items.len(), out);
            for item in items {
                write_value(item, out);
            }
        }
        Value::Object(map) => {
            out.push(tag::OBJECT);
            write_len(map.len(), out);
            for (k, v) in map {
                write_str(k, out);
                write_value(v, out);
            }
        }
    }
}

fn write_len(mut n: usize, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    write_len(s.len(), out);
    out.extend_from_slice(s.as_bytes());
}

/// The value [`encode_value`] wrote.
fn decode_value(mut bytes: &[u8]) -> Value {
    let value = serialize_encoded(&mut bytes, serde_json::value::Serializer);
    debug_assert!(
        value.is_ok() && bytes.is_empty(),
        "a malformed stored value"
    );
    value.unwrap_or_default()
}

/// A value of the store's encoding, serialised by reading the encoding: into a `Value`
/// ([`decode_value`]) or straight to JSON text without building one (the shared form,
/// [`wire`]). A malformed one is an error, not a panic.
struct Encoded<'a>(&'a [u8]);

impl Serialize for Encoded<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_encoded(&mut &*self.0, serializer)
    }
}

fn malformed<E: serde::ser::Error>() -> E {
    E::custom("a malformed stored value")
}

fn serialize_encoded<S: Serializer>(r: &mut &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    let (&tag, rest) = r.split_first().ok_or_else(malformed::<S::Error>)?;
    *r = rest;
    match tag {
        tag::NULL => serializer.serialize_unit(),
        tag::FALSE => serializer.serialize_bool(false),
        tag::TRUE => serializer.serialize_bool(true),
        tag::UNSIGNED | tag::SIGNED | tag::FLOAT => {
            let (bits, rest) = r
                .split_first_chunk::<8>()
                .ok_or_else(malformed::<S::Error>)?;
            *r = rest;
            let bits = u64::from_le_bytes(*bits);
            match tag {
                tag::UNSIGNED => serializer.serialize_u64(bits),
                tag::SIGNED => serializer.serialize_i64(bits as i64),
                _ => match serde_json::Number::from_f64(f64::from_bits(bits)) {
                    Some(n) => n.serialize(serializer),
                    None => serializer.serialize_unit(),
                },
            }
        }
        tag::STRING => serializer.serialize_str(read_str(r).ok_or_else(malformed::<S::Error>)?),
        tag::ARRAY => {
            let len = read_len(r).ok_or_else(malformed::<S::Error>)?;
            let mut seq = serializer.serialize_seq(Some(len))?;
            for _ in 0..len {
                seq.serialize_element(&Element(RefCell::new(&mut *r)))?;
            }
            seq.end()
        }
        tag::OBJECT => {
            let len = read_len(r).ok_or_else(malformed::<S::Error>)?;
            let mut map = serializer.serialize_map(Some(len))?;
            for _ in 0..len {
                let key = read_str(r).ok_or_else(malformed::<S::Error>)?;
                map.serialize_key(key)?;
                map.serialize_value(&Element(RefCell::new(&mut *r)))?;
            }
            map.end()
        }
        _ => Err(malformed()),
    }
}

/// A string of the store's encoding, borrowed.
fn read_str<'b>(r: &mut &'b [u8]) -> Option<&'b str> {
    let len = read_len(r)?;
    if r.len() < len {
        return None;
    }
    let (text, rest) = r.split_at(len);
    *r = rest;
    std::str::from_utf8(text).ok()
}

/// The next value of an array or object, read from the cursor they share (`Serialize` only
/// lends `&self`).
struct Element<'r, 'b>(RefCell<&'r mut &'b [u8]>);

impl Serialize for Element<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut cursor = self.0.borrow_mut();
        serialize_encoded(&mut cursor, serializer)
    }
}

fn read_len(r: &mut &[u8]) -> Option<usize> {
    let mut n = 0usize;
    for shift in (0..usize::BITS).step_by(7) {
        let (&byte, rest) = r.split_first()?;
        *r = rest;
        n |= usize::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(n);
        }
    }
    None
}

/// Which records [`TraceStore::list`] returns; every field that is set must match.
#[derive(Debug, Clone, Default)]
pub struct DecisionFilter {
    /// The API service's name, exactly.
    pub service: Option<String>,
    pub outcome: Option<Outcome>,
    /// The HTTP status of the decision.
    pub status: Option<u16>,
    /// The token's `sub` claim, exactly.
    pub subject: Option<String>,
    /// Only decisions at or after this time (milliseconds since the Unix epoch).
    pub since_millis: Option<i64>,
    /// A case-insensitive substring of the URL, service, operation, subject or decision id;
    /// empty matches everything.
    pub text: Option<String>,
}

impl DecisionFilter {
    /// Whether `record` passes every condition that is set.
    pub fn matches(&self, record: &StoredDecision) -> bool {
        Matcher::new(self).matches(record)
    }
}

/// A filter prepared for matching many records: the text needle lower-cased once.
struct Matcher<'f> {
    filter: &'f DecisionFilter,
    needle: Option<String>,
}

impl<'f> Matcher<'f> {
    fn new(filter: &'f DecisionFilter) -> Self {
        Self {
            filter,
            needle: filter
                .text
                .as_deref()
                .filter(|t| !t.is_empty())
                .map(str::to_lowercase),
        }
    }

    fn matches(&self, record: &StoredDecision) -> bool {
        let f = self.filter;
        let d = record;
        let subject = d.subject();
        f.outcome.is_none_or(|o| o == d.outcome)
            && f.status.is_none_or(|s| s == d.status)
            && f.since_millis.is_none_or(|t| record.unix_millis >= t)
            && f.service
                .as_deref()
                .is_none_or(|s| d.service.as_deref() == Some(s))
            && f.subject.as_deref().is_none_or(|s| subject == Some(s))
            && self.needle.as_deref().is_none_or(|needle| {
                [
                    Some(&*d.url),
                    d.service.as_deref(),
                    d.operation.as_deref(),
                    subject,
                    Some(&*d.id),
                ]
                .into_iter()
                .flatten()
                .any(|hay| contains_lowercase(hay, needle))
            })
    }
}

/// Whether `hay` contains `needle` (already lower-case), ignoring case.
fn contains_lowercase(hay: &str, needle: &str) -> bool {
    if needle.is_ascii() {
        // ASCII bytes never occur inside a multi-byte UTF-8 sequence: a byte-wise search is
        // exact, and needs no lower-cased copy of every URL.
        let needle = needle.as_bytes();
        hay.len() >= needle.len()
            && hay
                .as_bytes()
                .windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle))
    } else {
        hay.to_lowercase().contains(needle)
    }
}

/// What one slot of the ring holds: the record written with sequence number `seq`.
struct Slot {
    seq: u64,
    record: Arc<StoredDecision>,
}

/// The index key of a decision id, if it is a ULID: its two halves folded into one word.
/// Two live ids folding alike (odds near 2^-64 for 80 random bits) only makes the older one
/// unfindable by id; [`TraceStore::get`] compares the id itself before answering.
fn index_key(id: &str) -> Option<u64> {
    let n = u128::from(ulid::Ulid::from_string(id).ok()?);
    Some((n as u64) ^ ((n >> 64) as u64))
}

/// The recent decisions: at most `capacity` records, the oldest overwritten first. Safe to
/// share between threads; inserting takes one slot lock and one index shard lock.
pub struct TraceStore {
    slots: Box<[RwLock<Option<Slot>>]>,
    /// Sequence number of the next insert; insert `n` goes to slot `n % capacity`.
    next: AtomicU64,
    /// Decision id (see [`index_key`]) to the sequence number of its record.
    index: DashMap<u64, u64, foldhash::fast::RandomState>,
    interner: Interner,
    len: AtomicUsize,
    /// Sum of the records' `approx_bytes`.
    record_bytes: AtomicUsize,
}

impl fmt::Debug for TraceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceStore")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .field("approx_bytes", &self.approx_bytes())
            .finish_non_exhaustive()
    }
}

impl Default for TraceStore {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl TraceStore {
    /// An empty store that keeps the `capacity` most recent decisions (at least one). Its
    /// slot and index tables are allocated at once: about 60 bytes per unit of capacity
    /// before any record is stored.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            slots: (0..capacity).map(|_| RwLock::new(None)).collect(),
            next: AtomicU64::new(0),
            index: DashMap::with_capacity_and_hasher(capacity, Default::default()),
            interner: Interner::default(),
            len: AtomicUsize::new(0),
            record_bytes: AtomicUsize::new(0),
        }
    }

    /// Stores a capped, scrubbed copy of `decision`, evicting the oldest record when full,
    /// and returns the copy. Never fails. Only decisions whose id is a ULID (as the engine
    /// makes them) can be found again by [`get`](Self::get); others are only listed.
    pub fn record(&self, decision: &Decision) -> Arc<StoredDecision> {
        let record = Arc::new(StoredDecision::capped(decision, &self.interner));
        let key = index_key(&decision.id);

        let seq = self.next.fetch_add(1, Ordering::AcqRel);
        let evicted = {
            let mut slot = self
                .slot(seq)
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if slot.as_ref().is_some_and(|s| s.seq > seq) {
                // A whole lap of later inserts overtook this one: it is already the oldest.
                return record;
            }
            self.record_bytes
                .fetch_add(record.approx_bytes, Ordering::Relaxed);
            // Under the slot lock, so that an eviction of this slot cannot run between.
            if let Some(key) = key {
                self.index.insert(key, seq);
            }
            let evicted = slot.replace(Slot {
                seq,
                record: record.clone(),
            });
            match &evicted {
                Some(old) => {
                    // A ULID id is never cut, so the stored id gives the same key.
                    if let Some(old_key) = index_key(&old.record.id) {
                        // The same id may have been recorded again since; keep that entry.
                        self.index.remove_if(&old_key, |_, s| *s == old.seq);
                    }
                    self.record_bytes
                        .fetch_sub(old.record.approx_bytes, Ordering::Relaxed);
                }
                None => {
                    self.len.fetch_add(1, Ordering::Relaxed);
                }
            }
            evicted
        };
        // The evicted record is freed here, outside the lock (unless a reader holds it).
        drop(evicted);
        record
    }

    /// The record of decision `id` (a ULID, in any case), or `None` if it is unknown, was
    /// evicted, or `id` is not a ULID.
    pub fn get(&self, id: &str) -> Option<Arc<StoredDecision>> {
        let key = index_key(id)?;
        let seq = self.index.get(&key).map(|entry| *entry)?;
        let slot = self
            .slot(seq)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        slot.as_ref()
            .filter(|s| s.seq == seq)
            // Distinct ids can share a key; answer only for the same id.
            .filter(|s| s.record.id.eq_ignore_ascii_case(id))
            .map(|s| s.record.clone())
    }

    /// The most recent records that match `filter`, newest first, at most `limit` of them
    /// (and never more than [`MAX_LIST_LIMIT`]). Looks at each stored record at most once;
    /// records inserted while it runs may be left out.
    pub fn list(&self, filter: &DecisionFilter, limit: usize) -> Vec<Arc<StoredDecision>> {
        let limit = limit.min(MAX_LIST_LIMIT);
        let mut found = Vec::new();
        if limit == 0 {
            return found;
        }
        let matcher = Matcher::new(filter);
        let head = self.next.load(Ordering::Acquire);
        let oldest = head.saturating_sub(self.slots.len() as u64);
        for seq in (oldest..head).rev() {
            let slot = self
                .slot(seq)
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            // A slot still holding an older record (its insert is under way) or already a
            // newer one (written after `head` was read) is not part of this listing.
            if let Some(s) = slot.as_ref()
                && s.seq == seq
                && matcher.matches(&s.record)
            {
                found.push(s.record.clone());
                if found.len() == limit {
                    break;
                }
            }
        }
        found
    }

    /// Records stored now (at most the capacity).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most records the store keeps.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Approximate heap bytes of the store: its records plus its slot, index and interner
    /// tables. Strings shared with the policy set are not counted; `benches/store.rs` finds
    /// the figure within 1% of the bytes really allocated (before the allocator's own
    /// overhead).
    pub fn approx_bytes(&self) -> usize {
        let slots = self.slots.len() * size_of::<RwLock<Option<Slot>>>();
        // One control byte per bucket besides the entry itself.
        let index = self.index.capacity() * (size_of::<(u64, u64)>() + 1);
        slots + index + self.interner.table_bytes() + self.record_bytes.load(Ordering::Relaxed)
    }

    fn slot(&self, seq: u64) -> &RwLock<Option<Slot>> {
        // The remainder is below the slot count, which is a `usize`.
        &self.slots[(seq % self.slots.len() as u64) as usize]
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
    use std::path::Path;
    use std::sync::OnceLock;
    use std::time::{SystemTime, UNIX_EPOCH};

    use serde_json::{Value, json};

    use super::*;
    use crate::decision::{DecisionRequest, Engine, Step, TokenSummary, TraceEntry};
    use crate::policy::PolicySet;
    use crate::trace::MAX_RECORD_BYTES;

    /// Average footprint a typical record must stay under (the store's own accounting).
    const TYPICAL_RECORD_TARGET: usize = 2 * 1024;

    fn fixtures() -> &'static (PolicySet, Engine) {
        static FIXTURES: OnceLock<(PolicySet, Engine)> = OnceLock::new();
        FIXTURES.get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policies");
            let policies = crate::policy::load_dir(&dir, &Default::default())
                .unwrap_or_else(|e| panic!("fixture policies are invalid:\n{e}"));
            (policies, Engine::default())
        })
    }

    fn decide(method: &str, url: &str, headers: &[(&str, &str)]) -> Decision {
        let (policies, engine) = fixtures();
        let client = Some("192.0.2.7".parse().unwrap());
        engine.decide(
            policies,
            &DecisionRequest {
                method,
                url,
                headers,
                client,
            },
            SystemTime::now(),
        )
    }

    /// GET of item `n` of `app` without a token: a 401 deny.
    fn unauthorised(n: usize) -> Decision {
        let d = decide("GET", &format!("https://api.test/app/v1/items/{n}"), &[]);
        assert_eq!((d.outcome, d.status), (Outcome::Deny, 401), "{}", d.audit);
        d
    }

    /// A URL no service covers: a 404 deny without a service.
    fn unknown_host(n: usize) -> Decision {
        let d = decide("GET", &format!("https://nowhere.test/x/{n}"), &[]);
        assert_eq!(
            (d.outcome, d.status, d.service.as_deref()),
            (Outcome::Deny, 404, None)
        );
        d
    }

    /// An allowed decision of `app` for subject `sub` (made from a 401 by hand).
    fn allowed(n: usize, sub: &str) -> Decision {
        let mut d = unauthorised(n);
        d.outcome = Outcome::Allow;
        d.status = 200;
        d.body = None;
        d.token = Some(TokenSummary {
            sub: Some(sub.to_owned()),
            client_id: Some("web".into()),
            iss: Some("https://issuer.test".into()),
            aud: vec!["app".into()],
            exp: None,
            kid: Some("rsa-a".into()),
            alg: "RS256".into(),
            delegated: true,
        });
        d
    }

    /// A real 403 of `app`'s `admin` operation with a signed token: base URL, token,
    /// operation and nested rule entries in the trace.
    fn full_trace_deny(n: usize) -> Decision {
        static AUTHORIZATION: OnceLock<String> = OnceLock::new();
        let authorization = AUTHORIZATION.get_or_init(|| {
            let pem = std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/rsa-a.pem"),
            )
            .unwrap();
            let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let claims = json!({
                "iss": "https://issuer.test", "aud": "app", "sub": "user-17",
                "client_id": "web", "groups": ["staff"], "amr": ["pwd"],
                "iat": now, "exp": now + 3600,
            });
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
            header.kid = Some("rsa-a".into());
            format!(
                "Bearer {}",
                jsonwebtoken::encode(&header, &claims, &key).unwrap()
            )
        });
        let d = decide(
            "POST",
            &format!("https://api.test/app/v1/admin/jobs/{n}?dry-run=true"),
            &[("authorization", authorization)],
        );
        assert_eq!((d.outcome, d.status), (Outcome::Deny, 403), "{}", d.audit);
        assert!(d.trace.len() >= 5, "{:#?}", d.trace);
        d
    }

    fn ids(records: &[Arc<StoredDecision>]) -> Vec<&str> {
        records.iter().map(|r| r.id()).collect()
    }

    #[test]
    fn oldest_decisions_are_evicted_first_at_capacity() {
        let store = TraceStore::new(3);
        let decisions: Vec<Decision> = (0..5).map(unauthorised).collect();
        for d in &decisions {
            store.record(d);
        }
        assert_eq!((store.len(), store.capacity()), (3, 3));
        assert!(store.get(&decisions[0].id).is_none());
        assert!(store.get(&decisions[1].id).is_none());
        for d in &decisions[2..] {
            let got = store.get(&d.id).expect("a recent decision is kept");
            assert_eq!(got.decision().request.url, d.request.url);
        }
        assert_eq!(store.index.len(), 3);
    }

    #[test]
    fn list_is_newest_first_and_respects_the_limit() {
        let store = TraceStore::new(10);
        let decisions: Vec<Decision> = (0..6).map(unauthorised).collect();
        for d in &decisions {
            store.record(d);
        }
        let all = store.list(&DecisionFilter::default(), 100);
        let newest_first: Vec<&str> = decisions.iter().rev().map(|d| d.id.as_str()).collect();
        assert_eq!(ids(&all), newest_first);
        assert_eq!(
            ids(&store.list(&DecisionFilter::default(), 2)),
            newest_first[..2]
        );
        assert!(store.list(&DecisionFilter::default(), 0).is_empty());
    }

    #[test]
    fn list_never_returns_more_than_the_maximum_limit() {
        let store = TraceStore::new(MAX_LIST_LIMIT + 10);
        let d = unauthorised(0);
        for _ in 0..MAX_LIST_LIMIT + 10 {
            store.record(&d);
        }
        assert_eq!(
            store.list(&DecisionFilter::default(), usize::MAX).len(),
            MAX_LIST_LIMIT
        );
    }

    #[test]
    fn each_filter_selects_its_records_and_filters_combine_with_and() {
        let store = TraceStore::new(100);
        let alice = store.record(&allowed(1, "alice"));
        let bob = store.record(&allowed(2, "bob"));
        let denied = store.record(&unauthorised(3));
        let unknown = store.record(&unknown_host(4));
        let select = |f: DecisionFilter| {
            let mut found = store.list(&f, 100);
            found.sort_by(|a, b| a.id().cmp(b.id()));
            ids(&found)
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let id = |r: &Arc<StoredDecision>| r.id().to_owned();
        let mut app = vec![id(&alice), id(&bob), id(&denied)];
        app.sort();

        let service = |s: &str| DecisionFilter {
            service: Some(s.into()),
            ..Default::default()
        };
        assert_eq!(select(service("app")), app);
        assert!(select(service("ap")).is_empty());
        let outcome = DecisionFilter {
            outcome: Some(Outcome::Deny),
            ..Default::default()
        };
        let mut denials = vec![id(&denied), id(&unknown)];
        denials.sort();
        assert_eq!(select(outcome.clone()), denials);
        let status = DecisionFilter {
            status: Some(404),
            ..Default::default()
        };
        assert_eq!(select(status), vec![id(&unknown)]);
        let subject = DecisionFilter {
            subject: Some("bob".into()),
            ..Default::default()
        };
        assert_eq!(select(subject), vec![id(&bob)]);

        // AND: service `app` and outcome deny is only the 401.
        let both = DecisionFilter {
            service: Some("app".into()),
            ..outcome
        };
        assert_eq!(select(both.clone()), vec![id(&denied)]);
        let none = DecisionFilter {
            status: Some(200),
            ..both
        };
        assert!(select(none).is_empty());
    }

    #[test]
    fn since_keeps_decisions_at_or_after_the_time_of_their_id() {
        let store = TraceStore::new(10);
        let base = 1_795_000_000_000u64;
        for (i, offset) in [0u64, 1_000, 2_000].into_iter().enumerate() {
            let mut d = unauthorised(i);
            d.id = ulid::Ulid::from_parts(base + offset, i as u128).to_string();
            let stored = store.record(&d);
            assert_eq!(stored.unix_millis, (base + offset) as i64);
        }
        let since = |millis: u64| DecisionFilter {
            since_millis: Some(millis as i64),
            ..Default::default()
        };
        assert_eq!(store.list(&since(base + 1_000), 10).len(), 2);
        assert_eq!(store.list(&since(base + 2_001), 10).len(), 0);

        // Without a ULID id, the time field is used.
        let mut d = unauthorised(9);
        d.id = "not-a-ulid".into();
        d.time = "2026-11-18T11:06:40.123Z".into();
        assert_eq!(store.record(&d).unix_millis, 1_795_000_000_123);
    }

    #[test]
    fn text_matches_url_service_operation_subject_and_id_ignoring_case() {
        let store = TraceStore::new(10);
        let alice = store.record(&allowed(41, "Alice@Example.com"));
        let other = store.record(&unknown_host(42));
        let text = |t: &str| DecisionFilter {
            text: Some(t.into()),
            ..Default::default()
        };
        let only_alice = vec![alice.id()];
        assert_eq!(ids(&store.list(&text("ITEMS/41"), 10)), only_alice);
        assert_eq!(ids(&store.list(&text("alice@example"), 10)), only_alice);
        assert_eq!(ids(&store.list(&text("APP"), 10)), only_alice);
        let tail = &other.id()[20..].to_lowercase();
        assert_eq!(ids(&store.list(&text(tail), 10)), vec![other.id()]);
        assert_eq!(store.list(&text(""), 10).len(), 2);
        assert!(store.list(&text("zzz-nothing"), 10).is_empty());
        let mut d = unauthorised(43);
        d.request.url = "https://api.test/app/v1/Straße".into();
        store.record(&d);
        assert_eq!(store.list(&text("STRASSE"), 10).len(), 0);
        assert_eq!(store.list(&text("straße"), 10).len(), 1);
    }

    #[test]
    fn get_answers_none_for_unknown_malformed_or_lookalike_ids() {
        let store = TraceStore::new(10);
        let d = unauthorised(7);
        store.record(&d);
        assert!(store.get(&d.id.to_lowercase()).is_some());
        assert!(store.get(&ulid::Ulid::new().to_string()).is_none());
        for hostile in [
            "",
            "x",
            "../../etc/passwd",
            &"Z".repeat(26),
            &"é".repeat(13),
        ] {
            assert!(store.get(hostile).is_none(), "{hostile}");
        }
        // The first character only carries 3 bits: `8…` decodes like `0…`.
        let mut lookalike = d.id.clone();
        let first = lookalike.remove(0);
        let aliased = char::from_digit(first.to_digit(10).unwrap() + 8, 36).unwrap();
        lookalike.insert(0, aliased.to_ascii_uppercase());
        assert!(store.get(&lookalike).is_none(), "{lookalike}");
    }

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

    #[test]
    fn concurrent_inserts_keep_exactly_capacity_records_all_findable() {
        const THREADS: usize = 4;
        const PER_THREAD: usize = 10_000;
        let store = TraceStore::new(1_000);
        let template = unauthorised(0);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let store = &store;
                let template = &template;
                s.spawn(move || {
                    let mut d = template.clone();
                    for i in 0..PER_THREAD {
                        d.id =
                            ulid::Ulid::from_parts(1_795_000_000_000, (t * PER_THREAD + i) as u128)
                                .to_string();
                        store.record(&d);
                        if i % 1000 == 0 {
                            let listed = store.list(&DecisionFilter::default(), MAX_LIST_LIMIT);
                            assert!(listed.len() <= store.capacity());
                        }
                    }
                });
            }
        });
        assert_eq!(store.len(), store.capacity());
        assert_eq!(store.index.len(), store.len());
        let listed = store.list(&DecisionFilter::default(), MAX_LIST_LIMIT);
        assert_eq!(listed.len(), store.capacity());
        for record in &listed {
            let got = store.get(record.id()).expect("a listed record is found");
            assert!(Arc::ptr_eq(&got, record));
        }
        let records: usize = listed.iter().map(|r| r.approx_bytes).sum();
        let slots_and_index = store.approx_bytes() - records;
        assert!(
            slots_and_index < 100 * store.capacity(),
            "{slots_and_index}"
        );
    }

    #[test]
    fn recording_the_same_id_again_keeps_it_findable() {
        let store = TraceStore::new(2);
        let d = unauthorised(8);
        store.record(&d);
        store.record(&d);
        store.record(&unauthorised(9));
        // The first copy is evicted; the second still answers for the id.
        assert!(store.get(&d.id).is_some());
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn a_capacity_of_zero_keeps_one_record() {
        let store = TraceStore::new(0);
        assert!(store.is_empty());
        store.record(&unauthorised(1));
        let last = store.record(&unauthorised(2));
        assert_eq!((store.capacity(), store.len()), (1, 1));
        assert_eq!(
            ids(&store.list(&DecisionFilter::default(), 10)),
            vec![last.id()]
        );
    }

    /// A 401 whose URL carries a long query (1 KiB), as search and filter endpoints do.
    fn long_url(n: usize) -> Decision {
        let url = format!(
            "https://api.test/app/v1/items/{n}?filter={}",
            "tag:x,".repeat(170)
        );
        let d = decide("GET", &url, &[]);
        assert_eq!(d.status, 401, "{}", d.audit);
        d
    }

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
            let capped = cap_decision(d).decision;
            if i < engine_made.len() + 3 {
                assert!(within_caps(d), "decision {i}");
                assert_eq!(capped, *d, "nothing of decision {i} is over a cap");
            } else {
                assert!(!within_caps(d), "decision {i}");
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
        let near_limit = &others[3];
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

    #[test]
    fn the_shared_compact_form_reads_back_every_kind_exactly_and_is_smaller() {
        let (engine_made, others) = every_kind();
        let store = TraceStore::new(100);
        // Recorded twice over: a batch repeats names, as a writer's batches do.
        let records: Vec<Arc<StoredDecision>> = engine_made
            .iter()
            .chain(&others)
            .chain(&engine_made)
            .map(|d| store.record(d))
            .collect();
        let mut compact = Vec::new();
        wire::write(&records, &mut compact).unwrap();
        let full = serde_json::to_vec(&records).unwrap();
        // Unique long URLs (2,000 bytes and more) are much of this set, and are written whole.
        assert!(
            compact.len() * 10 < full.len() * 6,
            "compact {} bytes, decisions' JSON {}",
            compact.len(),
            full.len()
        );
        let read = wire::read(&compact).expect("a batch");
        assert_eq!(read.len(), records.len());
        for (i, (read, record)) in read.iter().zip(&records).enumerate() {
            assert_eq!(read.decision(), record.decision(), "decision {i}");
            assert_eq!(read.id(), record.id());
            assert_eq!(read.unix_millis, record.unix_millis);
        }
    }

    #[test]
    fn an_upstream_status_reported_later_is_kept_shown_and_shared() {
        let store = TraceStore::new(10);
        let d = allowed(1, "user.1");
        let record = store.record(&d);
        assert_eq!(record.decision().upstream_status, None);
        let json = serde_json::to_value(&*record).unwrap();
        assert!(
            json.get("upstreamStatus").is_none(),
            "absent until reported"
        );
        store.get(&d.id).unwrap().set_upstream_status(201);
        let shown = record.decision();
        assert_eq!(shown.upstream_status, Some(201));
        assert_eq!(
            serde_json::to_value(&*record).unwrap()["upstreamStatus"],
            201
        );
        // A record written to the shared store after the report carries it.
        let mut compact = Vec::new();
        wire::write(std::slice::from_ref(&record), &mut compact).unwrap();
        let read = wire::read(&compact).expect("a batch");
        assert_eq!(read[0].decision(), shown);
    }

    #[test]
    fn a_malformed_compact_batch_is_refused_whole() {
        let records: Vec<Arc<StoredDecision>> =
            vec![Arc::new(StoredDecision::of(&full_trace_deny(1)))];
        let mut compact = Vec::new();
        wire::write(&records, &mut compact).unwrap();
        let batch: Value = serde_json::from_slice(&compact).unwrap();
        let tampered = |change: &dyn Fn(&mut Value)| {
            let mut b = batch.clone();
            change(&mut b);
            wire::read(&serde_json::to_vec(&b).unwrap())
        };
        assert!(tampered(&|_| {}).is_some());
        assert!(
            tampered(&|b| b["v"] = json!(2)).is_none(),
            "another version"
        );
        assert!(tampered(&|b| b["d"][0]["me"] = json!(10_000)).is_none());
        assert!(tampered(&|b| b["d"][0]["tr"][0]["n"] = json!(10_000)).is_none());
        assert!(tampered(&|b| b["n"][0]["attribute"] = json!(10_000)).is_none());
        assert!(tampered(&|b| b["d"][0]["se"] = json!(99)).is_none());
        assert!(tampered(&|b| b["d"][0]["au"] = json!("both")).is_none());
        assert!(wire::read(b"[]").is_none());
        assert!(wire::read(b"{\"v\":1}").is_none());
        // A value nested far past serde_json's limit: refused, not a stack overflow.
        let mut b = batch.clone();
        b["d"][0]["tr"][0]["a"] = json!("DEEP");
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let raw = b.to_string().replace("\"DEEP\"", &deep);
        assert!(raw.len() > 200_000);
        assert!(wire::read(raw.as_bytes()).is_none());
    }

    /// Decisions of every kind the store keeps differently: the engine's own (allow, each
    /// denial, long URL, invalid URL, internal error) and others (read back from another
    /// replica's JSON, a foreign id and time, an odd audit text and values, a URL past the
    /// audit cap).
    fn every_kind() -> (Vec<Decision>, Vec<Decision>) {
        let invalid_url = decide("GET", "https://api.test/app/v1/files/..%5Citems", &[]);
        assert_eq!(invalid_url.status, 400, "{}", invalid_url.audit);
        let mut internal = unauthorised(5);
        internal.status = 500;
        internal.audit = format!(
            "Request to the URL \"{}\" denied: internal error in decision {}.",
            internal.request.url, internal.id
        );
        let engine_made = [
            full_trace_deny(1),
            unauthorised(2),
            allowed(3, "alice"),
            unknown_host(4),
            long_url(6),
            invalid_url,
            internal,
        ];
        // Read back from JSON, as replicas share decisions: owned codes and operators, names
        // not shared with this replica's policy set.
        let replica: Decision =
            serde_json::from_str(&serde_json::to_string(&full_trace_deny(7)).unwrap()).unwrap();
        let mut other_id = unauthorised(8);
        other_id.id = "req-42".into();
        other_id.time = "2026-11-21T10:00:00Z".into();
        let mut odd = allowed(9, "bob");
        odd.audit = "Written by another version.".into();
        odd.headers.0.push(("x-other".into(), odd.id.clone()));
        odd.headers.0.push(("x-more".into(), "value".into()));
        odd.upstream_headers
            .0
            .push(("x-user-id".into(), "bob".into()));
        odd.body = unauthorised(10).body;
        odd.trace[0].actual = Some(json!({
            "float": 0.1, "negativeZero": -0.0, "max": u64::MAX, "min": i64::MIN,
            "text": "é\"\\\n".repeat(30), "nested": [null, true, false, [1.5e300]], "empty": {},
        }));
        let mut near_limit = unauthorised(11);
        near_limit.request.url = format!("https://api.test/app/v1/{}", "q".repeat(2000));
        near_limit.audit = format!(
            "Request to the URL \"{}\" denied due to an invalid OAuth access token.",
            near_limit.request.url
        );
        (
            engine_made.to_vec(),
            vec![replica, other_id, odd, near_limit],
        )
    }

    #[test]
    fn trace_values_are_stored_compactly_and_read_back_exactly() {
        let groups = json!(["players", "moderators", "meme-editors"]);
        // A `Value` tree: the array and one `Value` per item, besides the text.
        let tree = 4 * size_of::<Value>() + 27;
        assert!(encoded_len(&groups) < tree / 3, "{}", encoded_len(&groups));
        for v in [
            json!(null),
            json!(f64::MIN_POSITIVE),
            json!("x".repeat(300)),
            json!({"a": {"b": [{"c": [1, -1, 2.5]}]}}),
            groups,
        ] {
            let encoded = encode_value(&v);
            assert_eq!(encoded.len(), encoded_len(&v));
            assert_eq!(decode_value(&encoded).to_string(), v.to_string());
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,200}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
                proptest::collection::btree_map("\\PC{0,20}", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn any_value_reads_back_as_written(v in json_value()) {
            let encoded = encode_value(&v);
            proptest::prop_assert_eq!(encoded.len(), encoded_len(&v));
            let back = decode_value(&encoded);
            proptest::prop_assert_eq!(back.to_string(), v.to_string());
        }
    }
}
