//! Writing the Sideband API's answers: the kit's members echoed from its own JSON bytes
//! with the headers rebuilt, and a denial's `response` member.

use std::borrow::Cow;

use axum::http::StatusCode;

use super::read::{AccessRequest, HeaderEntry, Members, ResponsePhase};
use crate::decision::Decision;

/// Appends `text` as a JSON string.
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // Writing a `str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

fn push_header(out: &mut Vec<u8>, first: &mut bool, name: &str, value: &str) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    out.push(b'{');
    push_json_string(out, name);
    out.push(b':');
    push_json_string(out, value);
    out.push(b'}');
}

/// The reason phrase the kits use for a status, upper-cased.
fn status_text(status: u16) -> Cow<'static, str> {
    match status {
        200 => "OK".into(),
        400 => "BAD REQUEST".into(),
        401 => "UNAUTHORIZED".into(),
        404 => "NOT FOUND".into(),
        413 => "PAYLOAD TOO LARGE".into(),
        429 => "TOO MANY REQUESTS".into(),
        500 => "INTERNAL SERVER ERROR".into(),
        503 => "SERVICE UNAVAILABLE".into(),
        other => StatusCode::from_u16(other)
            .ok()
            .and_then(|s| s.canonical_reason())
            .map_or(Cow::Borrowed(""), |r| Cow::Owned(r.to_ascii_uppercase())),
    }
}

/// Writes the members of a call as sent, but those named in `skip`, and for `headers` the
/// entries of `kept` as sent followed by `added`; leaves the object open for more members.
fn echo_members<'h>(
    out: &mut Vec<u8>,
    members: &Members<'_>,
    skip: &[&str],
    kept: impl Iterator<Item = &'h HeaderEntry<'h>>,
    added: impl Iterator<Item = (&'h str, &'h str)>,
) {
    out.push(b'{');
    let mut headers = Some((kept, added));
    let mut first_member = true;
    for (name, raw) in &members.0 {
        if skip.contains(&&**name) {
            continue;
        }
        if !std::mem::take(&mut first_member) {
            out.push(b',');
        }
        push_json_string(out, name);
        out.push(b':');
        let rebuilt = if name == "headers" {
            headers.take()
        } else {
            None
        };
        match rebuilt {
            Some((kept, added)) => {
                out.push(b'[');
                let mut first = true;
                for entry in kept {
                    if !std::mem::take(&mut first) {
                        out.push(b',');
                    }
                    out.extend_from_slice(entry.json.get().as_bytes());
                }
                for (name, value) in added {
                    push_header(out, &mut first, name, value);
                }
                out.push(b']');
            }
            None => out.extend_from_slice(raw.get().as_bytes()),
        }
    }
}

/// The allow: every member the kit sent, as it sent it, except `headers` — the client's
/// headers in order without those the decision sets (a client must not spoof them), then
/// the decision's upstream headers and `x-decision-id` — and `state`, which leads the
/// response phase back to the decision.
pub(super) fn allow_body(request: &AccessRequest<'_>, decision: &Decision) -> Vec<u8> {
    let set_here = |name: &str| {
        name.eq_ignore_ascii_case("x-decision-id")
            || decision
                .upstream_headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    let mut out = Vec::with_capacity(512);
    echo_members(
        &mut out,
        &request.members,
        &["state"],
        request.headers.iter().filter(|e| !set_here(&e.name)),
        decision
            .upstream_headers
            .iter()
            .chain([("x-decision-id", decision.id.as_str())]),
    );
    // `headers` is always there, so a member came before.
    out.extend_from_slice(b",\"state\":{\"decisionId\":");
    push_json_string(&mut out, &decision.id);
    out.extend_from_slice(b"}}");
    out
}

/// The deny: the response for the kit to send, with the status, headers and body the client
/// gets through Envoy.
pub(super) fn deny_body(request: &AccessRequest<'_>, decision: &Decision) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(b"{\"response\":{\"response_code\":\"");
    out.extend_from_slice(decision.status.to_string().as_bytes());
    out.extend_from_slice(b"\",\"response_status\":");
    push_json_string(&mut out, &status_text(decision.status));
    out.extend_from_slice(b",\"http_version\":");
    match request.members.get("http_version") {
        Some(raw) if raw.get() != "null" => out.extend_from_slice(raw.get().as_bytes()),
        _ => out.extend_from_slice(b"\"1.1\""),
    }
    out.extend_from_slice(b",\"headers\":[");
    let mut first = true;
    for (name, value) in decision.headers.iter() {
        push_header(&mut out, &mut first, name, value);
    }
    out.extend_from_slice(b"],\"body\":");
    let body = decision
        .body
        .as_ref()
        .and_then(|b| serde_json::to_string(b).ok())
        .unwrap_or_default();
    push_json_string(&mut out, &body);
    out.extend_from_slice(b"}}");
    out
}

/// The response for the kit to send: every member as sent, except `state` and `request`,
/// which were for Portcullis; the upstream's headers gain `x-decision-id` (replacing one
/// the upstream set), as Envoy's clients get it.
pub(super) fn response_body(read: &ResponsePhase<'_>) -> Vec<u8> {
    let id = read.decision_id.as_deref();
    let mut out = Vec::with_capacity(
        256 + read
            .members
            .0
            .iter()
            .map(|(_, v)| v.get().len())
            .sum::<usize>(),
    );
    echo_members(
        &mut out,
        &read.members,
        &["state", "request"],
        read.headers
            .iter()
            .filter(|e| id.is_none() || !e.name.eq_ignore_ascii_case("x-decision-id")),
        id.map(|id| ("x-decision-id", id)).into_iter(),
    );
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::decision::{Headers, Outcome, RequestSummary};
    use crate::server::sideband::read::{members_of, read_access};

    /// An allow that sets `x-user-id` upstream.
    fn allowed() -> Decision {
        Decision {
            id: "01JD0000000000000000000000".into(),
            time: String::new(),
            duration_micros: 0,
            service: None,
            operation: None,
            policy_revision: "r".into(),
            request: RequestSummary {
                method: "GET".into(),
                url: String::new(),
                client: None,
            },
            outcome: Outcome::Allow,
            status: 200,
            upstream_status: None,
            headers: Headers::default(),
            upstream_headers: Headers(vec![("x-user-id".into(), "user.\"1\"".into())]),
            body: None,
            token: None,
            trace: Vec::new(),
            audit: String::new(),
            trace_link: None,
            inputs: None,
            shadow: None,
        }
    }

    /// Any JSON value a kit (or anything else) might put in a member.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,12}|[\"\\\\\\n\\u{0}-\\u{1f}\\u{2028}é]{0,4}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("\\PC{0,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A call shaped like a kit's, with any headers and extra members.
    fn kit_call() -> impl Strategy<Value = Value> {
        (
            proptest::collection::vec(("[A-Za-z-]{1,12}", "\\PC{0,16}"), 0..6),
            proptest::collection::btree_map("[a-z_]{1,10}", any_json(), 0..4),
        )
            .prop_map(|(headers, extra)| {
                let mut call = json!({
                    "method": "GET",
                    "url": "https://api.test:443/app/v1/items/7",
                    "headers": headers.iter().map(|(n, v)| json!({ n.as_str(): v })).collect::<Vec<_>>(),
                });
                for (name, value) in extra {
                    if !["method", "url", "headers"].contains(&name.as_str()) {
                        call[name] = value;
                    }
                }
                call
            })
    }

    proptest! {
        /// Whatever a call holds, reading it never panics; a readable one is echoed as JSON
        /// whose members are the call's, `headers` rebuilt and `state` added.
        #[test]
        fn readable_calls_are_echoed_member_for_member(call in kit_call()) {
            let text = call.to_string();
            let Ok(request) = read_access(text.as_bytes()) else {
                return Ok(());
            };
            let bytes = allow_body(&request, &allowed());
            // Member for member, byte for byte.
            let sent = members_of(text.as_bytes()).unwrap();
            let echoed = members_of(&bytes).expect("the echo is a JSON object");
            for (name, raw) in &sent.0 {
                if name != "headers" && name != "state" {
                    prop_assert_eq!(echoed.get(name).map(|r| r.get()), Some(raw.get()), "member {}", name);
                }
            }
            let echo: Value = serde_json::from_slice(&bytes).expect("the echo is JSON");
            let echoed = echo["headers"].as_array().unwrap();
            let last = echoed.last().unwrap();
            prop_assert_eq!(last, &json!({"x-decision-id": "01JD0000000000000000000000"}));
            prop_assert!(echoed.iter().all(|h| h.as_object().unwrap().len() == 1));
            prop_assert!(!echoed.iter().any(|h| h.get("X-User-Id").is_some()));
            prop_assert_eq!(&echo["state"]["decisionId"], "01JD0000000000000000000000");
            let denied: Value = serde_json::from_slice(&deny_body(&request, &allowed()))
                .expect("a denial is JSON");
            prop_assert_eq!(&denied["response"]["response_code"], "200");
        }

        /// Bytes that are not a kit's JSON are refused, never a panic.
        #[test]
        fn any_bytes_are_read_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = read_access(&bytes);
        }
    }

    #[test]
    fn statuses_have_the_kits_reason_phrases() {
        assert_eq!(status_text(401), "UNAUTHORIZED");
        assert_eq!(status_text(403), "FORBIDDEN");
        assert_eq!(status_text(405), "METHOD NOT ALLOWED");
        assert_eq!(status_text(429), "TOO MANY REQUESTS");
    }
}
