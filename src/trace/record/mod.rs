//! The compact record of a decision, which the store keeps: what the decision repeats of
//! itself (the id in the body and the `x-decision-id` header, the time the id carries, the
//! audit sentence that quotes the URL) is rebuilt when the record is read, and the names and
//! messages that every decision of a rule repeats are shared between records (see
//! [`Interner`]). This module owns the record's layout and its sizes; the files beside it cap
//! a decision to the record's limits (`cap.rs`, on `size.rs`'s estimate), pack it and rebuild
//! it (`pack.rs`), and write it in the form replicas share (`wire.rs`).

mod audit;
mod cap;
mod interner;
mod pack;
mod size;
mod text;
mod value;
pub mod wire;

use std::borrow::Cow;
use std::mem::size_of;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use serde::{Serialize, Serializer};
use serde_json::Value;

use self::audit::Audit;
pub use self::cap::MAX_RECORD_BYTES;
pub(super) use self::interner::Interner;
use super::revisions::Revision;
use crate::decision::{Outcome, Rebuild, ShadowDecision, Step, TraceEntry, TraceLink};

/// Heap bytes assumed for the control block of an `Arc` (strong and weak counts).
const ARC_HEADER: usize = 2 * size_of::<usize>();
/// Heap bytes of a record before anything it points to: the record behind its `Arc`.
const RECORD_INLINE: usize = ARC_HEADER + size_of::<StoredDecision>();
/// Heap bytes of one header in a record's list, before its name and value.
const HEADER_INLINE: usize = size_of::<DecisionHeader>();
/// Heap bytes of an error body, before its texts and details.
const BODY_INLINE: usize = size_of::<StoredBody>();
/// Heap bytes of one error detail, before its texts.
const DETAIL_INLINE: usize = size_of::<StoredDetail>();
/// Heap bytes of a token summary, before its texts.
const TOKEN_INLINE: usize = size_of::<StoredToken>();
/// Heap bytes of one trace entry with names of its own, before its texts and values.
const ENTRY_INLINE: usize = size_of::<StoredEntry>() + ARC_HEADER + size_of::<EntryNames>();

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
    /// header values aside, which are always redacted). A record of inputs keeps nothing
    /// cut; what it rebuilds is cut when read, as its whole record would have been.
    pub truncated: bool,
    /// In `text`, as the spans below.
    id: TextSpan,
    /// `None`: `unix_millis`, as the engine writes a time.
    time: Option<TextSpan>,
    duration_micros: u64,
    /// In `text`.
    service: Option<TextSpan>,
    operation: Option<TextSpan>,
    policy_revision: TextSpan,
    /// One of the standard methods, or as it came.
    method: Cow<'static, str>,
    url: TextSpan,
    client: Option<TextSpan>,
    pub(super) outcome: Outcome,
    pub(super) status: u16,
    upstream_status: UpstreamStatus,
    headers: Box<[DecisionHeader]>,
    upstream_headers: Box<[(Arc<str>, Box<str>)]>,
    body: Option<Box<StoredBody>>,
    token: Option<Box<StoredToken>>,
    trace: Box<[StoredEntry]>,
    /// The record's own texts one after the other: its id, time, service, operation and
    /// policy revision names, URL, client and inputs, then its trace entries' `actual`
    /// values and details (see [`StoredEntry`]). One allocation instead of one per text: a
    /// record's cost is mostly its pieces.
    text: Box<[u8]>,
    audit: Audit,
    /// Boxed: most calls come without a trace context, and every record pays its inline
    /// size (inline, this one field would be a tenth of it).
    pub(super) trace_link: Option<Box<TraceLink>>,
    inputs: StoredInputs,
    /// The shadow set's decision, when it differed.
    shadow: Option<Box<ShadowDecision>>,
    /// Set when the record keeps only what the decision was made on (no trace, upstream
    /// headers, nor an allow's headers): the decision is decided again when read.
    rebuild: Option<RebuildFrom>,
}

/// A record's replay inputs.
#[derive(Debug, Clone)]
enum StoredInputs {
    None,
    /// As JSON (see `encode_inputs` in `pack.rs`), at most `MAX_INPUT_BYTES`, in `text`.
    Json(TextSpan),
    /// As the decision had them, in a record of inputs whose inputs are known to fit and to
    /// hold nothing token-shaped: their verified facts shared with the token cache, written
    /// as JSON only when read.
    Kept(Box<crate::decision::ReplayInputs>),
}

impl StoredInputs {
    /// The JSON of inputs kept as JSON.
    fn json<'t>(&self, text: &'t [u8]) -> Option<&'t [u8]> {
        match self {
            Self::Json(span) => Some(span.of(text)),
            Self::None | Self::Kept(_) => None,
        }
    }
}

/// What a record that keeps its decision's inputs needs to decide it again exactly: the
/// policy set it was decided with (while the store holds it), and what its trace said that
/// its inputs do not.
#[derive(Debug, Clone)]
pub(crate) struct RebuildFrom {
    pub(crate) revision: Arc<Revision>,
    pub(crate) how: Rebuild,
}

/// The status the upstream answered with, reported after the record was made (the Sideband
/// API's response phase); 0 until then.
#[derive(Debug, Default)]
struct UpstreamStatus(AtomicU16);

impl UpstreamStatus {
    fn new(status: Option<u16>) -> Self {
        Self(AtomicU16::new(status.unwrap_or(0)))
    }

    fn get(&self) -> Option<u16> {
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

/// The token summary, its texts one after the other in one buffer of its own: a summary is
/// read on every decision with a token, and copying its few short texts costs less than
/// sharing each (a lookup in the interner, and an `Arc` count that every thread touches).
#[derive(Debug, Clone)]
struct StoredToken {
    text: Box<[u8]>,
    sub: Option<TextSpan>,
    client_id: Option<TextSpan>,
    iss: Option<TextSpan>,
    exp: Option<TextSpan>,
    kid: Option<TextSpan>,
    alg: TextSpan,
    /// The audiences, each its length (4 bytes, little-endian) and its text.
    aud: TextSpan,
    delegated: bool,
    binding: Option<crate::decision::TokenBinding>,
}

impl StoredToken {
    fn of(t: &crate::decision::TokenSummary) -> Self {
        let opt_len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let mut text = Vec::with_capacity(
            opt_len(&t.sub)
                + opt_len(&t.client_id)
                + opt_len(&t.iss)
                + opt_len(&t.exp)
                + opt_len(&t.kid)
                + t.alg.len()
                + t.aud.iter().map(|a| 4 + a.len()).sum::<usize>(),
        );
        let mut opt = |s: &Option<String>| s.as_deref().map(|s| TextSpan::push_str(&mut text, s));
        let (sub, client_id, iss, exp, kid) = (
            opt(&t.sub),
            opt(&t.client_id),
            opt(&t.iss),
            opt(&t.exp),
            opt(&t.kid),
        );
        let alg = TextSpan::push_str(&mut text, &t.alg);
        let aud = TextSpan::write(&mut text, |text| {
            for a in &t.aud {
                // Capped far below 4 GiB.
                text.extend_from_slice(&u32::try_from(a.len()).unwrap_or(0).to_le_bytes());
                text.extend_from_slice(a.as_bytes());
            }
        });
        Self {
            text: text.into_boxed_slice(),
            sub,
            client_id,
            iss,
            exp,
            kid,
            alg,
            aud,
            delegated: t.delegated,
            binding: t.binding.clone(),
        }
    }

    fn get(&self, span: Option<TextSpan>) -> Option<&str> {
        span.map(|s| s.str_of(&self.text))
    }

    fn sub(&self) -> Option<&str> {
        self.get(self.sub)
    }

    fn client_id(&self) -> Option<&str> {
        self.get(self.client_id)
    }

    fn iss(&self) -> Option<&str> {
        self.get(self.iss)
    }

    fn exp(&self) -> Option<&str> {
        self.get(self.exp)
    }

    fn kid(&self) -> Option<&str> {
        self.get(self.kid)
    }

    fn alg(&self) -> &str {
        self.alg.str_of(&self.text)
    }

    fn aud(&self) -> impl Iterator<Item = &str> {
        let mut rest = self.aud.of(&self.text);
        std::iter::from_fn(move || {
            let (len, after) = rest.split_first_chunk::<4>()?;
            let len = u32::from_le_bytes(*len) as usize;
            let (aud, after) = after.split_at_checked(len)?;
            rest = after;
            Some(std::str::from_utf8(aud).unwrap_or_default())
        })
    }

    fn summary(&self) -> crate::decision::TokenSummary {
        crate::decision::TokenSummary {
            sub: self.sub().map(str::to_owned),
            client_id: self.client_id().map(str::to_owned),
            iss: self.iss().map(str::to_owned),
            aud: self.aud().map(str::to_owned).collect(),
            exp: self.exp().map(str::to_owned),
            kid: self.kid().map(str::to_owned),
            alg: self.alg().to_owned(),
            delegated: self.delegated,
            binding: self.binding.clone(),
        }
    }

    /// Heap bytes of the summary behind its box.
    fn heap_bytes(&self) -> usize {
        TOKEN_INLINE + self.text.len()
    }
}

/// One trace entry: its names shared with every other entry of the same check or rule, and
/// what this evaluation found.
#[derive(Debug, Clone)]
struct StoredEntry {
    names: Arc<EntryNames>,
    expected: Option<Arc<Value>>,
    /// The value as [`write_value`](value::write_value) writes it, in the record's
    /// `trace_text`.
    actual: Option<TextSpan>,
    /// In the record's `trace_text`, UTF-8.
    detail: Option<TextSpan>,
    result: bool,
    decisive: bool,
}

impl StoredEntry {
    fn actual<'t>(&self, text: &'t [u8]) -> Option<&'t [u8]> {
        self.actual.map(|span| span.of(text))
    }

    fn detail<'t>(&self, text: &'t [u8]) -> Option<&'t str> {
        self.detail.map(|span| span.str_of(text))
    }
}

/// Where an entry's bytes are in its record's `trace_text`.
#[derive(Debug, Clone, Copy)]
struct TextSpan {
    start: u32,
    end: u32,
}

impl TextSpan {
    /// Appends what `write` writes to `text`, and says where it is.
    fn write(text: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) -> Self {
        // A record is capped far below 4 GiB.
        let start = u32::try_from(text.len()).unwrap_or(u32::MAX);
        write(text);
        let end = u32::try_from(text.len()).unwrap_or(u32::MAX);
        Self { start, end }
    }

    fn push(text: &mut Vec<u8>, bytes: &[u8]) -> Self {
        Self::write(text, |text| text.extend_from_slice(bytes))
    }

    fn push_str(text: &mut Vec<u8>, s: &str) -> Self {
        Self::push(text, s.as_bytes())
    }

    fn of(self, text: &[u8]) -> &[u8] {
        text.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    /// The text of a span written by [`push_str`](Self::push_str), so always UTF-8.
    fn str_of(self, text: &[u8]) -> &str {
        std::str::from_utf8(self.of(text)).unwrap_or_default()
    }
}

/// What the entries of one check or rule have in common each time it is evaluated.
#[derive(Debug)]
struct EntryNames {
    step: Step,
    depth: u8,
    rule: Option<Arc<str>>,
    attribute: Arc<str>,
    operator: Cow<'static, str>,
    location: Option<Arc<str>>,
}

impl EntryNames {
    /// The names of `entry`, with its strings as the interner shares them.
    fn new(
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
    fn own_bytes(&self) -> usize {
        ARC_HEADER
            + size_of::<Self>()
            + match &self.operator {
                Cow::Borrowed(_) => 0,
                Cow::Owned(s) => s.capacity(),
            }
    }
}

impl StoredDecision {
    /// Whether the record keeps only what its decision was made on, and rebuilds the rest
    /// when read.
    pub fn rebuilds(&self) -> bool {
        self.rebuild.is_some()
    }

    /// Whether the record keeps its replay inputs as the decision had them, not as JSON.
    pub fn keeps_inputs_unwritten(&self) -> bool {
        matches!(self.inputs, StoredInputs::Kept(_))
    }

    /// Whether the shadow policy set decided this request differently.
    pub fn shadow_differs(&self) -> bool {
        self.shadow.is_some()
    }

    /// The decision id.
    pub fn id(&self) -> &str {
        self.id.str_of(&self.text)
    }

    /// The request's URL, as stored.
    pub(super) fn url(&self) -> &str {
        self.url.str_of(&self.text)
    }

    /// The matched service's name.
    pub fn service(&self) -> Option<&str> {
        self.service.map(|s| s.str_of(&self.text))
    }

    /// The matched operation's name.
    pub fn operation(&self) -> Option<&str> {
        self.operation.map(|s| s.str_of(&self.text))
    }

    /// The revision of the policy set that decided.
    pub fn policy_revision(&self) -> &str {
        self.policy_revision.str_of(&self.text)
    }

    /// Records the status the upstream answered the decided request with (0: none). Best
    /// effort with a shared store: a record already written there keeps what it had.
    pub fn set_upstream_status(&self, status: u16) {
        self.upstream_status.0.store(status, Ordering::Relaxed);
    }

    pub(super) fn subject(&self) -> Option<&str> {
        self.token.as_ref().and_then(|t| t.sub())
    }
}

/// The JSON of the decision the record keeps (SPEC §6b).
impl Serialize for StoredDecision {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.decision().serialize(serializer)
    }
}
