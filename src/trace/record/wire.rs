//! The compact form in which replicas share stored decisions (the Redis trace store): a batch
//! of records as one JSON object whose strings that repeat between decisions (names, rules,
//! locations, messages, header values: what the store interns) are written once, in a table,
//! and referred to by index. What a record rebuilds (audit sentence, time, ids in headers and
//! body) is left out as the memory store leaves it out. Writing it costs a fraction of the
//! decisions' §6b JSON, and it is a fraction of its size.
//!
//! Reading trusts nothing: an index out of range, a malformed value or an unknown version
//! makes the whole batch unreadable (`None`), and every record read is capped again as this
//! replica caps its own.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use foldhash::fast::FixedState;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use super::audit::{Audit, AuditSentence};
use super::value::{Encoded, write_value};
use super::{
    EntryNames, StoredBody, StoredDecision, StoredDetail, StoredEntry, StoredInputs, StoredToken,
    TextSpan,
};
use crate::decision::{Outcome, ShadowDecision, Step, TraceLink};

/// The version this build writes and reads.
const VERSION: u32 = 1;

/// A batch as read.
#[derive(Deserialize)]
struct Batch<'a> {
    v: u32,
    /// Shared strings.
    #[serde(borrow)]
    s: Vec<Cow<'a, str>>,
    /// Shared `expected` values of trace entries.
    x: Vec<Value>,
    /// Shared trace-entry names.
    n: Vec<Names>,
    #[serde(borrow)]
    d: Vec<Record<'a>>,
}

#[derive(Serialize, Deserialize)]
struct Names {
    step: Step,
    depth: u8,
    rule: Option<u32>,
    attribute: u32,
    operator: u32,
    location: Option<u32>,
}

/// One decision. Field names are short: they repeat in every record of a batch.
#[derive(Serialize, Deserialize)]
struct Record<'a> {
    #[serde(rename = "i", borrow)]
    id: Cow<'a, str>,
    #[serde(rename = "m")]
    ms: i64,
    #[serde(rename = "t", default, borrow, skip_serializing_if = "Option::is_none")]
    time: Option<Cow<'a, str>>,
    #[serde(rename = "u")]
    us: u64,
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    service: Option<u32>,
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    operation: Option<u32>,
    #[serde(rename = "r")]
    revision: u32,
    #[serde(rename = "me")]
    method: u32,
    #[serde(rename = "l", borrow)]
    url: Cow<'a, str>,
    #[serde(rename = "c", default, borrow, skip_serializing_if = "Option::is_none")]
    client: Option<Cow<'a, str>>,
    #[serde(rename = "oc")]
    outcome: Outcome,
    #[serde(rename = "st")]
    status: u16,
    #[serde(rename = "up", default, skip_serializing_if = "Option::is_none")]
    upstream_status: Option<u16>,
    /// Name and value; no value: the decision id.
    #[serde(rename = "h")]
    headers: Vec<(u32, Option<u32>)>,
    #[serde(rename = "uh", borrow)]
    upstream: Vec<(u32, Cow<'a, str>)>,
    #[serde(rename = "b", default, borrow, skip_serializing_if = "Option::is_none")]
    body: Option<Body<'a>>,
    #[serde(rename = "k", default, borrow, skip_serializing_if = "Option::is_none")]
    token: Option<Token<'a>>,
    #[serde(rename = "tr", borrow)]
    trace: Vec<Entry<'a>>,
    /// The engine's sentence (its place in [`AuditSentence::ALL`]) or the text.
    #[serde(rename = "se", default, skip_serializing_if = "Option::is_none")]
    sentence: Option<u8>,
    #[serde(
        rename = "au",
        default,
        borrow,
        skip_serializing_if = "Option::is_none"
    )]
    audit: Option<Cow<'a, str>>,
    /// Replicas that predate it ignore it, and a record without it has no trace link.
    #[serde(rename = "ot", default, skip_serializing_if = "Option::is_none")]
    trace_link: Option<TraceLink>,
    /// The replay inputs, as the record keeps them (JSON).
    #[serde(
        rename = "in",
        default,
        borrow,
        skip_serializing_if = "Option::is_none"
    )]
    inputs: Option<&'a RawValue>,
    #[serde(rename = "sh", default, skip_serializing_if = "Option::is_none")]
    shadow: Option<Shadow<'a>>,
}

/// A shadow decision, with what its JSON cannot say: which trace entries found a `null`
/// (the JSON of a trace entry writes it as no value).
#[derive(Serialize, Deserialize)]
struct Shadow<'a> {
    d: Cow<'a, ShadowDecision>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    nulls: Vec<u32>,
}

impl<'a> Shadow<'a> {
    fn of(shadow: &'a ShadowDecision) -> Self {
        let nulls = (shadow.trace.iter().enumerate())
            .filter(|(_, e)| e.actual == Some(Value::Null))
            .map(|(i, _)| i as u32)
            .collect();
        Self {
            d: Cow::Borrowed(shadow),
            nulls,
        }
    }

    /// The shadow decision; `None` for a null at an entry it does not have.
    fn read(self) -> Option<ShadowDecision> {
        let mut shadow = self.d.into_owned();
        for i in self.nulls {
            shadow.trace.get_mut(i as usize)?.actual = Some(Value::Null);
        }
        Some(shadow)
    }
}

#[derive(Serialize, Deserialize)]
struct Body<'a> {
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    id: Option<Cow<'a, str>>,
    code: u32,
    message: u32,
    target: u32,
    /// Code, target and message (none: the deciding entry's detail).
    #[serde(borrow)]
    details: Vec<(u32, u32, Option<Cow<'a, str>>)>,
}

#[derive(Serialize, Deserialize)]
struct Token<'a> {
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    sub: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<u32>,
    aud: Vec<u32>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    exp: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<u32>,
    alg: u32,
    delegated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    binding: Option<crate::decision::TokenBinding>,
}

#[derive(Serialize, Deserialize)]
struct Entry<'a> {
    n: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<u32>,
    /// The actual value as JSON in a one-item array, so that a `null` found is told from no
    /// value (written from the store's encoding, re-encoded on reading).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "actual_as_json"
    )]
    a: Option<ActualValue<'a>>,
    #[serde(
        rename = "dt",
        default,
        borrow,
        skip_serializing_if = "Option::is_none"
    )]
    detail: Option<Cow<'a, str>>,
    r: bool,
    #[serde(rename = "d", default, skip_serializing_if = "std::ops::Not::not")]
    decisive: bool,
}

/// An `actual` value: the store's encoding when writing, a JSON value when read.
enum ActualValue<'a> {
    Encoded(&'a [u8]),
    Read(Value),
}

impl<'de> Deserialize<'de> for ActualValue<'_> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <(Value,)>::deserialize(deserializer).map(|(value,)| ActualValue::Read(value))
    }
}

fn actual_as_json<S: Serializer>(
    value: &Option<ActualValue<'_>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(ActualValue::Encoded(bytes)) => (Encoded(bytes),).serialize(serializer),
        Some(ActualValue::Read(value)) => (value,).serialize(serializer),
        None => serializer.serialize_none(),
    }
}

/// Items a batch writes once, each found again by a key.
struct Table<K, T> {
    items: Vec<T>,
    index: HashMap<K, u32, FixedState>,
}

impl<K, T> Default for Table<K, T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            index: HashMap::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq, T> Table<K, T> {
    /// The index of the item under `key`, made by `item` the first time.
    fn intern(&mut self, key: K, item: impl FnOnce() -> T) -> u32 {
        *self.index.entry(key).or_insert_with(|| {
            self.items.push(item());
            (self.items.len() - 1) as u32
        })
    }
}

/// Interns what a batch writes once, by address: the store shares each repeated string,
/// value and set of names in one allocation.
#[derive(Default)]
struct Tables<'a> {
    strings: Table<(*const u8, usize), &'a str>,
    values: Table<*const Value, &'a Value>,
    names: Table<*const EntryNames, Names>,
}

impl<'a> Tables<'a> {
    fn string(&mut self, s: &'a str) -> u32 {
        self.strings.intern((s.as_ptr(), s.len()), || s)
    }

    fn value(&mut self, v: &'a Arc<Value>) -> u32 {
        self.values.intern(Arc::as_ptr(v), || &**v)
    }

    fn names(&mut self, names: &'a Arc<EntryNames>) -> u32 {
        let key = Arc::as_ptr(names);
        if let Some(&i) = self.names.index.get(&key) {
            return i;
        }
        let entry = Names {
            step: names.step,
            depth: names.depth,
            rule: names.rule.as_deref().map(|r| self.string(r)),
            attribute: self.string(&names.attribute),
            operator: self.string(&names.operator),
            location: names.location.as_deref().map(|l| self.string(l)),
        };
        self.names.intern(key, || entry)
    }
}

/// Writes `records` as one batch.
pub fn write(records: &[Arc<StoredDecision>], out: impl std::io::Write) -> serde_json::Result<()> {
    // Another replica has not the policy set to rebuild a record that keeps only its inputs:
    // it gets the whole decision.
    let whole: Vec<Option<StoredDecision>> = (records.iter())
        .map(|r| r.rebuilds().then(|| StoredDecision::of(&r.decision())))
        .collect();
    let mut t = Tables::default();
    let d: Vec<Record<'_>> = (records.iter().zip(&whole))
        .map(|(r, whole)| record(whole.as_ref().unwrap_or(r), &mut t))
        .collect();
    let batch = WriteBatch {
        v: VERSION,
        s: &t.strings.items,
        x: &t.values.items,
        n: &t.names.items,
        d: &d,
    };
    serde_json::to_writer(out, &batch)
}

/// [`Batch`] as written: borrowed tables.
#[derive(Serialize)]
struct WriteBatch<'t, 'a> {
    v: u32,
    s: &'t [&'a str],
    x: &'t [&'a Value],
    n: &'t [Names],
    d: &'t [Record<'a>],
}

fn record<'a>(r: &'a StoredDecision, t: &mut Tables<'a>) -> Record<'a> {
    let (sentence, audit) = match &r.audit {
        Audit::Rendered(s) => (
            AuditSentence::ALL
                .iter()
                .position(|a| std::mem::discriminant(a) == std::mem::discriminant(s))
                .map(|i| i as u8),
            None,
        ),
        Audit::Text(text) => (None, Some(Cow::Borrowed(&**text))),
    };
    Record {
        id: Cow::Borrowed(r.id()),
        ms: r.unix_millis,
        time: r.time.map(|t| Cow::Borrowed(t.str_of(&r.text))),
        us: r.duration_micros,
        service: r.service().map(|s| t.string(s)),
        operation: r.operation().map(|s| t.string(s)),
        revision: t.string(r.policy_revision()),
        method: t.string(&r.method),
        url: Cow::Borrowed(r.url()),
        client: r.client.map(|c| Cow::Borrowed(c.str_of(&r.text))),
        outcome: r.outcome,
        status: r.status,
        upstream_status: r.upstream_status.get(),
        headers: r
            .headers
            .iter()
            .map(|(name, value)| (t.string(name), value.as_deref().map(|v| t.string(v))))
            .collect(),
        upstream: r
            .upstream_headers
            .iter()
            .map(|(name, value)| (t.string(name), Cow::Borrowed(&**value)))
            .collect(),
        body: r.body.as_deref().map(|b| Body {
            id: b.id.as_deref().map(Cow::Borrowed),
            code: t.string(&b.code),
            message: t.string(&b.message),
            target: t.string(&b.target),
            details: b
                .details
                .iter()
                .map(|d| {
                    (
                        t.string(&d.code),
                        t.string(&d.target),
                        d.message.as_deref().map(Cow::Borrowed),
                    )
                })
                .collect(),
        }),
        token: r.token.as_deref().map(|k| Token {
            sub: k.sub().map(Cow::Borrowed),
            client_id: k.client_id().map(|s| t.string(s)),
            iss: k.iss().map(|s| t.string(s)),
            aud: k.aud().map(|a| t.string(a)).collect(),
            exp: k.exp().map(Cow::Borrowed),
            kid: k.kid().map(|s| t.string(s)),
            alg: t.string(k.alg()),
            delegated: k.delegated,
            binding: k.binding.clone(),
        }),
        trace: r
            .trace
            .iter()
            .map(|e| Entry {
                n: t.names(&e.names),
                x: e.expected.as_ref().map(|x| t.value(x)),
                a: e.actual(&r.text).map(ActualValue::Encoded),
                detail: e.detail(&r.text).map(Cow::Borrowed),
                r: e.result,
                decisive: e.decisive,
            })
            .collect(),
        sentence,
        audit,
        trace_link: r.trace_link.as_deref().copied(),
        // The store wrote these bytes from a `ReplayInputs`: JSON by construction.
        // A record that keeps its inputs unwritten is written whole (see `write`).
        inputs: (r.inputs.json(&r.text))
            .and_then(|json| serde_json::from_slice::<&RawValue>(json).ok()),
        shadow: r.shadow.as_deref().map(Shadow::of),
    }
}

/// The records of a batch, each capped as this replica caps its own; `None` for anything
/// that is not a batch this version writes.
pub fn read(bytes: &[u8]) -> Option<Vec<StoredDecision>> {
    let batch: Batch<'_> = serde_json::from_slice(bytes).ok()?;
    if batch.v != VERSION {
        return None;
    }
    let strings: Vec<Arc<str>> = batch.s.iter().map(|s| Arc::from(&**s)).collect();
    let string = |i: u32| strings.get(i as usize).cloned();
    let values: Vec<Arc<Value>> = batch.x.into_iter().map(Arc::new).collect();
    let names: Vec<Arc<EntryNames>> = batch
        .n
        .iter()
        .map(|n| {
            Some(Arc::new(EntryNames {
                step: n.step,
                depth: n.depth,
                rule: opt(n.rule, string)?,
                attribute: string(n.attribute)?,
                operator: Cow::Owned(string(n.operator)?.to_string()),
                location: opt(n.location, string)?,
            }))
        })
        .collect::<Option<_>>()?;
    let mut out = Vec::with_capacity(batch.d.len());
    for r in batch.d {
        let mut text = Vec::new();
        let id = TextSpan::push_str(&mut text, &r.id);
        let time = r.time.as_deref().map(|t| TextSpan::push_str(&mut text, t));
        let url = TextSpan::push_str(&mut text, &r.url);
        let client = r
            .client
            .as_deref()
            .map(|c| TextSpan::push_str(&mut text, c));
        let inputs = (r.inputs).map_or(StoredInputs::None, |json| {
            StoredInputs::Json(TextSpan::push_str(&mut text, json.get()))
        });
        let trace: Box<[StoredEntry]> = r
            .trace
            .into_iter()
            .map(|e| {
                Some(StoredEntry {
                    names: names.get(e.n as usize)?.clone(),
                    expected: match e.x {
                        None => None,
                        Some(x) => Some(values.get(x as usize)?.clone()),
                    },
                    actual: match e.a {
                        None => None,
                        Some(ActualValue::Read(v)) => {
                            Some(TextSpan::write(&mut text, |text| write_value(&v, text)))
                        }
                        Some(ActualValue::Encoded(_)) => return None,
                    },
                    detail: (e.detail.as_deref()).map(|d| TextSpan::push_str(&mut text, d)),
                    result: e.r,
                    decisive: e.decisive,
                })
            })
            .collect::<Option<_>>()?;
        let mut name = |s: Arc<str>| TextSpan::push_str(&mut text, &s);
        let service = opt(r.service, string)?.map(&mut name);
        let operation = opt(r.operation, string)?.map(&mut name);
        let policy_revision = name(string(r.revision)?);
        let uncapped = StoredDecision {
            unix_millis: r.ms,
            approx_bytes: 0,
            truncated: false,
            id,
            time,
            duration_micros: r.us,
            service,
            operation,
            policy_revision,
            method: Cow::Owned(string(r.method)?.to_string()),
            url,
            client,
            outcome: r.outcome,
            status: r.status,
            upstream_status: super::UpstreamStatus::new(r.upstream_status),
            headers: r
                .headers
                .iter()
                .map(|&(name, value)| Some((string(name)?, opt(value, string)?)))
                .collect::<Option<_>>()?,
            upstream_headers: r
                .upstream
                .iter()
                .map(|(name, value)| Some((string(*name)?, Box::from(&**value))))
                .collect::<Option<_>>()?,
            body: match r.body {
                None => None,
                Some(b) => Some(Box::new(StoredBody {
                    id: b.id.as_deref().map(Box::from),
                    code: Cow::Owned(string(b.code)?.to_string()),
                    message: string(b.message)?,
                    target: string(b.target)?,
                    details: b
                        .details
                        .iter()
                        .map(|(code, target, message)| {
                            Some(StoredDetail {
                                code: Cow::Owned(string(*code)?.to_string()),
                                target: string(*target)?,
                                message: message.as_deref().map(Box::from),
                            })
                        })
                        .collect::<Option<_>>()?,
                })),
            },
            token: match r.token {
                None => None,
                Some(k) => {
                    let text = |s: Arc<str>| s.to_string();
                    Some(Box::new(StoredToken::of(&crate::decision::TokenSummary {
                        sub: k.sub.as_deref().map(str::to_owned),
                        client_id: opt(k.client_id, string)?.map(text),
                        iss: opt(k.iss, string)?.map(text),
                        aud: (k.aud.iter())
                            .map(|&a| string(a).map(text))
                            .collect::<Option<_>>()?,
                        exp: k.exp.as_deref().map(str::to_owned),
                        kid: opt(k.kid, string)?.map(text),
                        alg: text(string(k.alg)?),
                        delegated: k.delegated,
                        binding: k.binding,
                    })))
                }
            },
            trace,
            text: text.into_boxed_slice(),
            audit: match (r.sentence, r.audit) {
                (Some(i), None) => Audit::Rendered(*AuditSentence::ALL.get(i as usize)?),
                (None, Some(text)) => Audit::Text(Box::from(&*text)),
                _ => return None,
            },
            trace_link: r.trace_link.map(Box::new),
            inputs,
            shadow: match r.shadow {
                None => None,
                Some(s) => Some(Box::new(s.read()?)),
            },
            rebuild: None,
        };
        // Another replica's caps may differ from this one's.
        out.push(StoredDecision::of(&uncapped.decision()));
    }
    Some(out)
}

/// `Some(None)` for no index, `Some(Some(_))` for a valid one, `None` for one out of range.
fn opt<T>(index: Option<u32>, get: impl Fn(u32) -> Option<T>) -> Option<Option<T>> {
    match index {
        None => Some(None),
        Some(i) => get(i).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::trace::TraceStore;
    use crate::trace::fixtures::{every_kind, full_trace_deny};

    use crate::trace::wire;

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
    fn a_record_of_inputs_is_shared_whole() {
        let set = crate::trace::fixtures::policy_set();
        let store = TraceStore::new(100);
        let decisions = crate::trace::fixtures::engine_made();
        let records: Vec<Arc<StoredDecision>> = decisions
            .iter()
            .map(|d| store.record_decided(d, &set))
            .collect();
        assert!(records.iter().all(|r| r.rebuilds()));
        let mut compact = Vec::new();
        wire::write(&records, &mut compact).unwrap();
        // The replica that reads them holds no policy set: they read as whole records.
        let read = wire::read(&compact).expect("a batch");
        assert_eq!(read.len(), decisions.len());
        for (read, d) in read.iter().zip(&decisions) {
            assert!(!read.rebuilds());
            assert_eq!(&read.decision(), d, "{}", d.audit);
        }
    }

    #[test]
    fn a_trace_link_is_kept_shown_and_shared_and_a_record_without_one_reads_as_before() {
        let store = TraceStore::new(10);
        let mut d = full_trace_deny(1);
        d.trace_link = Some(crate::decision::TraceLink {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: Some(0x00f067aa0ba902b7),
        });
        let record = store.record(&d);
        let json = serde_json::to_value(&*record).unwrap();
        assert_eq!(json["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(json["spanId"], "00f067aa0ba902b7");
        let mut compact = Vec::new();
        wire::write(std::slice::from_ref(&record), &mut compact).unwrap();
        let read = wire::read(&compact).expect("a batch");
        assert_eq!(read[0].decision().trace_link, d.trace_link);
        // What a replica without trace links writes: no `ot` member.
        let mut old: serde_json::Value = serde_json::from_slice(&compact).unwrap();
        old["d"][0].as_object_mut().unwrap().remove("ot");
        let read = wire::read(old.to_string().as_bytes()).expect("a batch");
        assert_eq!(read[0].decision().trace_link, None);
        // A malformed trace id makes the batch unreadable, as any malformed value does.
        old["d"][0]["ot"] = serde_json::json!({"traceId": "xyz"});
        assert!(wire::read(old.to_string().as_bytes()).is_none());
    }

    #[test]
    fn an_upstream_status_reported_later_is_kept_shown_and_shared() {
        let store = TraceStore::new(10);
        let d = full_trace_deny(1);
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
}
