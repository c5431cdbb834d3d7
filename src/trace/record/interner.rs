//! Sharing between records what decisions repeat: texts, `expected` values and the names of
//! trace entries.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::mem::size_of;
use std::sync::Arc;

use dashmap::DashMap;
use serde_json::Value;

use super::value::value_bytes;
use super::{ARC_HEADER, EntryNames};
use crate::decision::TraceEntry;

/// Strings an [`Interner`] holds before it starts again (so that the names of replaced policy
/// sets do not stay forever): far more than the names of any policy set.
const MAX_INTERNED: usize = 4096;
/// Longest text an [`Interner`] keeps: names, messages, base URLs and operation templates.
const MAX_INTERNED_BYTES: usize = 256;

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
    pub(crate) fn table_bytes(&self) -> usize {
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
