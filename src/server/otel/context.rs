//! The trace context a call came with: W3C `traceparent`/`tracestate` (read by the
//! OpenTelemetry SDK's propagator) or B3 single-header `b3`. Malformed context is no context.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// Header names and values as a propagator reads them; names compared ignoring case.
struct Carrier<'a>(&'a [(&'a str, &'a str)]);

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        find(self.0, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(n, _)| *n).collect()
    }
}

fn find<'a>(headers: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// The remote parent of a decision's span: from `metadata` (the gRPC call's own metadata,
/// where Envoy's tracer puts its ext_authz span) before `headers` (the checked request's),
/// and within each `traceparent` before `b3`. `None` when neither holds a valid context.
pub fn incoming(metadata: &[(&str, &str)], headers: &[(&str, &str)]) -> Option<SpanContext> {
    [metadata, headers]
        .into_iter()
        .find_map(|carrier| traceparent(carrier).or_else(|| b3(carrier)))
}

fn traceparent(headers: &[(&str, &str)]) -> Option<SpanContext> {
    // Most calls carry no context: skip the propagator's work for them. The propagator
    // takes ids shorter than W3C's fixed widths; the shape is checked here first.
    if !well_formed(find(headers, "traceparent")?) {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&Carrier(headers));
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| context.clone())
}

/// B3 single header: `{trace id}-{span id}[-{sampling}[-{parent span id}]]`, the trace id
/// 16 or 32 hex digits. A bare sampling flag (`0`, `1`, `d`) carries no parent. When the
/// sampling flag is absent the decision is deferred to the receiver, which samples it.
fn b3(headers: &[(&str, &str)]) -> Option<SpanContext> {
    let value = find(headers, "b3")?.trim();
    let mut parts = value.split('-');
    let trace = parts.next()?;
    let span = parts.next()?;
    let sampled = match parts.next() {
        None | Some("1") | Some("d") => true,
        Some("0") => false,
        Some(_) => return None,
    };
    if let Some(parent) = parts.next()
        && !is_hex(parent, 16)
    {
        return None;
    }
    if parts.next().is_some() || !(is_hex(trace, 16) || is_hex(trace, 32)) || !is_hex(span, 16) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let context = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    context.is_valid().then_some(context)
}

/// W3C Trace Context's `version-traceid-parentid-flags`, lower-case hex of fixed widths;
/// a later version may append fields.
fn well_formed(value: &str) -> bool {
    let lower = |s: &str, len: usize| is_hex(s, len) && !s.bytes().any(|b| b.is_ascii_uppercase());
    let mut parts = value.trim().split('-');
    let (Some(version), Some(trace), Some(span), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    lower(version, 2)
        && version != "ff"
        && lower(trace, 32)
        && lower(span, 16)
        && lower(flags, 2)
        && (version != "00" || parts.next().is_none())
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn trace_hex(c: &SpanContext) -> String {
        c.trace_id().to_string()
    }

    #[test]
    fn a_valid_traceparent_with_tracestate_is_the_parent() {
        let c = incoming(
            &[],
            &[("TraceParent", PARENT), ("tracestate", "vendor=abc")],
        )
        .unwrap();
        assert_eq!(trace_hex(&c), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id().to_string(), "00f067aa0ba902b7");
        assert!(c.is_sampled() && c.is_remote());
        assert_eq!(c.trace_state().get("vendor"), Some("abc"));
    }

    #[test]
    fn malformed_traceparents_are_no_context() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\u{e9}",
        ] {
            assert!(
                incoming(&[], &[("traceparent", bad)]).is_none(),
                "{bad:?} taken as a context"
            );
        }
    }

    #[test]
    fn metadata_comes_before_headers_and_traceparent_before_b3() {
        let other = "00-11111111111111111111111111111111-2222222222222222-01";
        let b3 = "33333333333333333333333333333333-4444444444444444-1";
        let c = incoming(&[("traceparent", PARENT)], &[("traceparent", other)]).unwrap();
        assert_eq!(trace_hex(&c), "4bf92f3577b34da6a3ce929d0e0e4736");
        let c = incoming(&[], &[("b3", b3), ("traceparent", other)]).unwrap();
        assert_eq!(trace_hex(&c), "11111111111111111111111111111111");
        // A malformed traceparent in the metadata falls through to what else came.
        let c = incoming(&[("traceparent", "junk")], &[("b3", b3)]).unwrap();
        assert_eq!(trace_hex(&c), "33333333333333333333333333333333");
    }

    #[test]
    fn b3_single_headers_are_read_and_malformed_ones_ignored() {
        let c = incoming(
            &[],
            &[(
                "b3",
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0-05e3ac9a4f6e3b90",
            )],
        )
        .unwrap();
        assert_eq!(trace_hex(&c), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(c.span_id().to_string(), "e457b5a2e4d86bd1");
        assert!(!c.is_sampled());
        let c = incoming(&[], &[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1")]).unwrap();
        assert_eq!(trace_hex(&c), "000000000000000064fe8b2a57d3eff7");
        assert!(c.is_sampled(), "an absent flag defers the decision to us");
        for bad in [
            "0",
            "1",
            "d",
            "64fe8b2a57d3eff7",
            "64fe8b2a57d3eff7-e457b5a2e4d86bd1-x",
            "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-zz",
            "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-9",
            "0000000000000000-e457b5a2e4d86bd1-1",
            "64fe8b2a57d3eff7-0000000000000000",
            "64fe8b2a57d3eff-e457b5a2e4d86bd1",
        ] {
            assert!(incoming(&[], &[("b3", bad)]).is_none(), "{bad:?}");
        }
    }
}
