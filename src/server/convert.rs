//! Decisions as protobuf messages: the same content as the JSON of SPEC §6b.

use std::time::SystemTime;

use prost_types::{ListValue, Struct, Timestamp, Value as PbValue, value::Kind};
use serde_json::Value;

use crate::decision::{Decision, Outcome, Step, TraceEntry};
use crate::proto;

fn timestamp(rfc3339: &str) -> Option<Timestamp> {
    humantime::parse_rfc3339(rfc3339)
        .ok()
        .map(|t: SystemTime| Timestamp::from(t))
}

/// A JSON value as a `google.protobuf.Value`.
pub fn json_to_pb(value: &Value) -> PbValue {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_pb).collect(),
        }),
        Value::Object(map) => Kind::StructValue(Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_pb(v)))
                .collect(),
        }),
    };
    PbValue { kind: Some(kind) }
}

fn step_name(step: Step) -> &'static str {
    match step {
        Step::BaseUrl => "baseUrl",
        Step::Token => "token",
        Step::Operation => "operation",
        Step::Rule => "rule",
    }
}

fn trace_entry(e: &TraceEntry) -> proto::TraceEntry {
    proto::TraceEntry {
        step: step_name(e.step).to_owned(),
        rule: e.rule.as_deref().unwrap_or("").to_owned(),
        attribute: e.attribute.to_string(),
        operator: e.operator.to_string(),
        expected: e.expected.as_deref().map(json_to_pb),
        actual: e.actual.as_ref().map(json_to_pb),
        result: e.result,
        decisive: e.decisive,
        depth: u32::from(e.depth),
        detail: e.detail.clone().unwrap_or_default(),
    }
}

fn outcome_to_pb(outcome: Outcome) -> proto::Outcome {
    match outcome {
        Outcome::Allow => proto::Outcome::Allow,
        Outcome::Deny => proto::Outcome::Deny,
    }
}

pub fn decision_to_pb(d: &Decision) -> proto::Decision {
    proto::Decision {
        id: d.id.clone(),
        time: timestamp(&d.time),
        duration_micros: d.duration_micros,
        service: d.service.as_deref().unwrap_or("").to_owned(),
        operation: d.operation.as_deref().unwrap_or("").to_owned(),
        policy_revision: d.policy_revision.to_string(),
        request: Some(proto::RequestSummary {
            method: d.request.method.clone(),
            url: d.request.url.clone(),
            client: d.request.client.clone().unwrap_or_default(),
        }),
        outcome: outcome_to_pb(d.outcome) as i32,
        status: u32::from(d.status),
        headers: d
            .headers
            .iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect(),
        upstream_headers: d
            .upstream_headers
            .iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect(),
        body: d.body.as_ref().map(|b| proto::ErrorBody {
            id: b.id.clone(),
            code: b.code.to_string(),
            message: b.message.clone(),
            target: b.target.clone(),
            details: b
                .details
                .iter()
                .map(|x| proto::ErrorDetail {
                    code: x.code.to_string(),
                    target: x.target.clone(),
                    message: x.message.clone(),
                })
                .collect(),
        }),
        token: d.token.as_ref().map(|t| proto::TokenSummary {
            sub: t.sub.clone().unwrap_or_default(),
            client_id: t.client_id.clone().unwrap_or_default(),
            iss: t.iss.clone().unwrap_or_default(),
            aud: t.aud.clone(),
            exp: t.exp.as_deref().and_then(timestamp),
            kid: t.kid.clone().unwrap_or_default(),
            alg: t.alg.clone(),
            delegated: t.delegated,
            binding: t.binding.as_ref().map(|b| proto::TokenBinding {
                method: b.method.to_string(),
                result: b.result.to_string(),
            }),
        }),
        trace: d.trace.iter().map(trace_entry).collect(),
        audit: d.audit.clone(),
        upstream_status: d.upstream_status.map_or(0, u32::from),
        trace_id: d.trace_link.map(|l| l.trace_hex()).unwrap_or_default(),
        span_id: d.trace_link.and_then(|l| l.span_hex()).unwrap_or_default(),
        shadow: d.shadow.as_deref().map(|s| proto::ShadowDecision {
            outcome: outcome_to_pb(s.outcome) as i32,
            status: u32::from(s.status),
            rule: s.rule.clone().unwrap_or_default(),
            policy_revision: s.policy_revision.to_string(),
            trace: s.trace.iter().map(trace_entry).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_values_keep_their_shape() {
        let pb = json_to_pb(&json!({"groups": ["a", "b"], "n": 3, "ok": true, "none": null}));
        let Some(Kind::StructValue(s)) = pb.kind else {
            panic!("an object becomes a struct")
        };
        let Some(Kind::ListValue(list)) = &s.fields["groups"].kind else {
            panic!("an array becomes a list")
        };
        assert_eq!(list.values.len(), 2);
        assert_eq!(s.fields["n"].kind, Some(Kind::NumberValue(3.0)));
        assert_eq!(s.fields["ok"].kind, Some(Kind::BoolValue(true)));
        assert_eq!(s.fields["none"].kind, Some(Kind::NullValue(0)));
    }

    #[test]
    fn timestamps_parse_with_millis() {
        let t = timestamp("2026-11-21T10:00:00.123Z").unwrap();
        assert_eq!(t.nanos, 123_000_000);
        assert!(timestamp("not a time").is_none());
    }
}
