//! The audit event of every decision (SPEC §4): one JSON line on the `portcullis::audit`
//! target. Under `portcullis serve` the line is written by [`write_line`] straight into the
//! log buffer: the JSON object tracing-subscriber's formatter makes of the event (timestamp,
//! level, fields, target), without its generic, field-by-field visiting. Elsewhere (a
//! library user's own subscriber) it is the `tracing` event of [`event`].

use std::cell::RefCell;
use std::io::Write as _;
use std::time::SystemTime;

use tracing_subscriber::fmt::MakeWriter as _;

use crate::decision::Decision;

/// The target of audit events, which log filters name.
pub const TARGET: &str = "portcullis::audit";

thread_local! {
    /// The line being written: one buffer per thread, kept between decisions.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

/// Writes the audit line of `decision`, made through `transport`.
pub fn write(decision: &Decision, transport: &'static str) {
    let Some(buffer) = super::log::audit_buffer() else {
        event(decision, transport);
        return;
    };
    LINE.with_borrow_mut(|line| {
        line.clear();
        write_line(line, decision, transport, SystemTime::now());
        // The buffer takes whole lines and never fails; a full buffer counts a dropped line.
        let _ = buffer.make_writer().write_all(line);
    });
}

/// The audit event through `tracing`, for whatever subscriber is installed.
pub fn event(decision: &Decision, transport: &'static str) {
    // Every value is a `&str` (none formatted with `%`): the JSON formatter writes it as it
    // is, without formatting it into a string of its own first.
    let trace_id = decision.trace_link.map(|l| l.trace_hex());
    tracing::info!(
        target: "portcullis::audit",
        decision_id = decision.id.as_str(),
        service = decision.service.as_deref().unwrap_or(""),
        operation = decision.operation.as_deref().unwrap_or(""),
        outcome = decision.outcome.as_str(),
        status = decision.status,
        detail = decision.detail_code().unwrap_or(""),
        subject = decision.token.as_ref().and_then(|t| t.sub.as_deref()).unwrap_or(""),
        method = decision.request.method.as_str(),
        url = decision.request.url.as_str(),
        transport,
        trace_id = trace_id.as_deref().unwrap_or(""),
        message = decision.audit.as_str(),
    );
}

fn string(out: &mut Vec<u8>, text: &str) {
    // Serialising a `str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// Appends the audit line of `decision` at `now`, newline included: the fields of [`event`]
/// in its order, in the object tracing-subscriber's JSON formatter writes.
pub fn write_line(out: &mut Vec<u8>, decision: &Decision, transport: &str, now: SystemTime) {
    let field = |out: &mut Vec<u8>, name: &str, value: &str| {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        string(out, value);
    };
    out.extend_from_slice(b"{\"timestamp\":\"");
    let _ = write!(out, "{}", humantime::format_rfc3339_micros(now));
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"fields\":{\"decision_id\":");
    string(out, &decision.id);
    field(out, "service", decision.service.as_deref().unwrap_or(""));
    field(
        out,
        "operation",
        decision.operation.as_deref().unwrap_or(""),
    );
    field(out, "outcome", decision.outcome.as_str());
    let _ = write!(out, ",\"status\":{}", decision.status);
    field(out, "detail", decision.detail_code().unwrap_or(""));
    let subject = decision.token.as_ref().and_then(|t| t.sub.as_deref());
    field(out, "subject", subject.unwrap_or(""));
    field(out, "method", &decision.request.method);
    field(out, "url", &decision.request.url);
    field(out, "transport", transport);
    out.extend_from_slice(b",\"trace_id\":\"");
    if let Some(link) = decision.trace_link {
        let _ = write!(out, "{:032x}", link.trace_id);
    }
    out.push(b'"');
    field(out, "message", &decision.audit);
    out.extend_from_slice(b"},\"target\":\"");
    out.extend_from_slice(TARGET.as_bytes());
    out.extend_from_slice(b"\"}\n");
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::Value;

    use super::*;
    use crate::decision::{DecisionRequest, Engine, InvalidInput};

    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Collect {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Decisions of every kind the pipeline makes, and a refused input.
    fn every_kind() -> Vec<Decision> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policies");
        let policies = crate::load_dir(&dir, &crate::PolicyOptions::default()).unwrap();
        let engine = Engine::default();
        let now = SystemTime::now();
        let decide = |method: &str, url: &str, headers: &[(&str, &str)]| {
            engine.decide(
                &policies,
                &DecisionRequest {
                    method,
                    url,
                    headers,
                    client: Some("10.0.0.7".parse().unwrap()),
                    client_cert: None,
                },
                now,
            )
        };
        let mut decisions = vec![
            decide("GET", "https://api.test/app/v1/items/7", &[]),
            decide("GET", "https://nowhere.test/\u{e9}?q=\"x\"\\", &[]),
            decide("GET", "https://api.test/app/v1/items/%2e%2e%5c", &[]),
            decide("GET", "not a url\n\u{1}", &[]),
            decide(
                "BREW\u{7f}",
                "https://api.test/app/v1/items/7",
                &[("authorization", "Bearer not.a.token")],
            ),
            engine.refuse_input(
                &policies,
                &DecisionRequest {
                    method: "",
                    url: "",
                    headers: &[],
                    client: None,
                    client_cert: None,
                },
                InvalidInput {
                    code: "MALFORMED_JSON",
                    target: "body".into(),
                    message: "The body is \"not\" JSON.".into(),
                },
                now,
            ),
        ];
        // An allow with a subject, as the engine makes from a valid token.
        let mut allowed = decisions[0].clone();
        allowed.outcome = crate::decision::Outcome::Allow;
        allowed.status = 200;
        allowed.body = None;
        allowed.audit = "Request to the URL \"x\" allowed.".into();
        decisions.push(allowed.clone());
        // One in a trace: the gateway's context came with it.
        allowed.trace_link = Some(crate::decision::TraceLink {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: Some(0x00f067aa0ba902b7),
        });
        decisions.push(allowed);
        decisions
    }

    /// The line tracing-subscriber's JSON formatter writes for the event.
    fn through_tracing(decision: &Decision, transport: &'static str) -> Vec<u8> {
        let sink = Collect::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || event(decision, transport));
        sink.0.lock().unwrap().clone()
    }

    /// A line without its timestamp's value.
    fn untimed(line: &[u8]) -> &[u8] {
        let after = line
            .windows(3)
            .position(|w| w == b"\",\"")
            .expect("a timestamp first");
        &line[after..]
    }

    #[test]
    fn the_line_is_the_object_tracing_subscriber_writes_for_every_kind_of_decision() {
        for decision in every_kind() {
            let expected = through_tracing(&decision, "ext_authz");
            let mut line = Vec::new();
            write_line(&mut line, &decision, "ext_authz", SystemTime::now());
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1, "one line");
            assert_eq!(line.last(), Some(&b'\n'));
            // The same bytes, but for the time.
            assert_eq!(
                String::from_utf8_lossy(untimed(&line)),
                String::from_utf8_lossy(untimed(&expected)),
                "{}",
                decision.audit
            );
            let written: Value = serde_json::from_slice(&line).unwrap();
            humantime::parse_rfc3339(written["timestamp"].as_str().unwrap())
                .expect("an RFC 3339 time");
        }
    }
}
