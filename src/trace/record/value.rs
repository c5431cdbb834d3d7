//! Trace values (a trace entry's `expected` and `actual`) in a record: cut to the record's
//! caps, measured, and kept (`actual`) in a compact binary encoding.

use std::cell::RefCell;
use std::mem::size_of;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;

use super::text::{MARKER_RESERVE, cut_text, holds_jwt_start, redact_jwts};

/// Strings inside trace values (claims, URLs, expected lists): enough to recognise a value.
pub(super) const MAX_VALUE_STRING_BYTES: usize = 256;
/// Items of an array or entries of an object inside a trace value (a token's groups).
const MAX_VALUE_ITEMS: usize = 32;
/// Nesting of a trace value; claims deeper than this are not what rules compare.
const MAX_VALUE_DEPTH: usize = 4;
/// Approximate heap bytes of one trace value, all its strings and items together: room for
/// a list of 32 group names.
pub(super) const MAX_VALUE_BYTES: usize = 2 * 1024;
/// Heap bytes assumed per entry of a JSON object: key, value and a share of the B-tree node.
const OBJECT_ENTRY: usize = size_of::<String>() + size_of::<Value>() + 3 * size_of::<usize>();

/// Whether `value` is certainly within the value caps. May answer `false` for a value that
/// [`cap_value`] would leave as it is; never `true` for one it would change.
pub(super) fn value_within_caps(value: &Value, depth: usize, budget: &mut usize) -> bool {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => true,
        Value::String(s) => {
            *budget = budget.saturating_sub(s.len());
            s.len() <= MAX_VALUE_STRING_BYTES && *budget > MARKER_RESERVE && !holds_jwt_start(s)
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
                        && !holds_jwt_start(k)
                        && value_within_caps(v, depth + 1, budget)
                })
        }
    }
}

/// Cuts the strings, lists and nesting of `value` in place, spending `budget` bytes, and
/// redacts token-shaped strings. Returns whether anything changed.
pub(super) fn cap_value(value: &mut Value, depth: usize, budget: &mut usize) -> bool {
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

pub(super) fn write_value(v: &Value, out: &mut Vec<u8>) {
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
pub(super) fn decode_value(mut bytes: &[u8]) -> Value {
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
pub(super) struct Encoded<'a>(pub(super) &'a [u8]);

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

/// Heap bytes owned by a JSON value (not counting the value itself).
pub(super) fn value_bytes(v: &Value) -> usize {
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
    use serde_json::{Value, json};

    use super::*;

    /// `v` as a record keeps it, alone.
    fn encode_value(v: &Value) -> Vec<u8> {
        let mut out = Vec::with_capacity(encoded_len(v));
        write_value(v, &mut out);
        out
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
