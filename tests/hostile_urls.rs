//! Hostile request URLs (SPEC §2a): every URL either gets exactly the decision of the plain
//! URL it means once decoded and normalised, or is refused with 400 INVALID_REQUEST. A URL
//! never reaches an operation or service it does not mean.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use portcullis::route::url::normalize_path;
use portcullis::{Decision, DecisionRequest, Engine};
use proptest::prelude::*;
use serde_json::json;

/// Characters escaped when a normalised segment is written back into a URL path.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'%')
    .add(b'/')
    .add(b'?')
    .add(b'#')
    .add(b'\\');

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_790_000_000)
}

fn token() -> String {
    let now = 1_790_000_000;
    let mut claims = support::app_claims(now);
    claims["groups"] = json!(["staff", "auditors", "editors"]);
    claims["scope"] = json!("items:write");
    claims["tenant"] = json!("acme");
    claims["plan"] = json!("pro");
    support::rs256(&claims)
}

fn decide(engine: &Engine, method: &str, url: &str, authorization: &str) -> Decision {
    let headers = [("authorization", authorization)];
    engine.decide(
        support::policies(),
        &DecisionRequest {
            method,
            url,
            headers: &headers,
            client: None,
            client_cert: None,
        },
        now(),
    )
}

/// What two decisions must agree on for the hostile URL to mean the plain one.
fn essence(d: &Decision) -> (u16, Option<String>, Option<String>, Option<&str>) {
    (
        d.status,
        d.service.as_deref().map(str::to_owned),
        d.operation.as_deref().map(str::to_owned),
        d.detail_code(),
    )
}

enum Expect {
    /// The decision of this plain URL.
    Same(&'static str),
    /// Refused with 400 and this detail code.
    Refused(&'static str),
    /// No service: 404.
    NoService,
}
use Expect::*;

const BASE: &str = "https://api.test/app/v1";

/// (hostile URL, what it must be decided as).
const HOSTILE: &[(&str, Expect)] = &[
    // Dot segments.
    (
        "https://api.test/app/v1/./items/7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test/app/v1/items/./7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test/app/v1/files/../items/7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test/app/v1/files/a/b/../../../items/7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test/app/v1/items/7/..",
        Same("https://api.test/app/v1/items"),
    ),
    (
        "https://api.test/app/v1/../v1/items/7",
        Same("https://api.test/app/v1/items/7"),
    ),
    ("https://api.test/app/v1/../v10/items/7", NoService),
    ("https://api.test/app/v1/../../../../items/7", NoService),
    (
        "https://api.test/app/v1/internal/../items/7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test/app/v1/items/../internal/status",
        Same("https://api.test/app/v1/internal/status"),
    ),
    // Percent-encoded dots and slashes are decoded before matching.
    (
        "https://api.test/app/v1/files/%2e%2e/items/7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test/app/v1/files/%2E%2E/items/7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test/app/v1/files/.%2e/items/7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test/app/v1/%2e/items/7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test/app/v1/items%2F7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test/app/v1/items%2f7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test/app/v1/files%2F..%2Fitems%2F7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test/app%2Fv1/items/7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test/%61pp/v1/items/7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test/app/v1/items/%6de",
        Same("https://api.test/app/v1/items/me"),
    ),
    // Double slashes and empty segments.
    (
        "https://api.test/app/v1//items/7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test//app//v1//items//7//",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test/app/v1/items/7/",
        Same("https://api.test/app/v1/items/7"),
    ),
    // Hosts, schemes and ports.
    (
        "https://API.TEST/app/v1/items/7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "HTTPS://Api.Test/app/v1/items/7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test./app/v1/items/7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test:443/app/v1/items/7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test:0443/app/v1/items/7",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "http://legacy.test:8080/app/items/7",
        Same("https://api.test/app/v1/items/7"),
    ),
    ("http://api.test:443/app/v1/items/7", NoService),
    ("https://api.test:80/app/v1/items/7", NoService),
    ("https://api.test:8443/app/v1/items/7", NoService),
    ("https://api.test.evil.test/app/v1/items/7", NoService),
    ("https://evil.test/api.test/app/v1/items/7", NoService),
    (
        "https://user@api.test/app/v1/items/7",
        Refused("INVALID_URL"),
    ),
    (
        "https://api.test:99999/app/v1/items/7",
        Refused("INVALID_URL"),
    ),
    ("https:///app/v1/items/7", Refused("INVALID_URL")),
    ("ftp://api.test/app/v1/items/7", Refused("INVALID_URL")),
    // Sibling prefixes are not under the base URL.
    ("https://api.test/app/v10/items/7", NoService),
    ("https://api.test/app/v1x/items/7", NoService),
    ("https://api.test/app/v1.0/items/7", NoService),
    ("https://api.test/app/v1%20/items/7", NoService),
    // Queries and fragments do not take part in matching.
    (
        "https://api.test/app/v1/items/7?/../../admin",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test/app/v1/items/7#/../admin",
        Same("https://api.test/app/v1/items/7"),
    ),
    (
        "https://api.test/app/v1/items/7%3F/../x",
        Same("https://api.test/app/v1/items/x"),
    ),
    // Encodings an upstream could decode differently are refused.
    (
        "https://api.test/app/v1/files/..%5Citems/7",
        Refused("AMBIGUOUS_PATH"),
    ),
    (
        "https://api.test/app/v1/files\\..\\items/7",
        Refused("AMBIGUOUS_PATH"),
    ),
    (
        "https://api.test/app/v1/files/%252e%252e/items/7",
        Refused("AMBIGUOUS_PATH"),
    ),
    (
        "https://api.test/app/v1/items%252F7",
        Refused("AMBIGUOUS_PATH"),
    ),
    (
        "https://api.test/app/v1/files/..;/items/7",
        Refused("AMBIGUOUS_PATH"),
    ),
    (
        "https://api.test/app/v1/files/.;x/items/7",
        Refused("AMBIGUOUS_PATH"),
    ),
    (
        "https://api.test/app/v1/items/%00",
        Refused("AMBIGUOUS_PATH"),
    ),
    (
        "https://api.test/app/v1/items/%0d%0aX-Evil:1",
        Refused("AMBIGUOUS_PATH"),
    ),
    (
        "https://api.test/app/v1/items/%zz",
        Refused("AMBIGUOUS_PATH"),
    ),
    (
        "https://api.test/app/v1/items/%e",
        Refused("AMBIGUOUS_PATH"),
    ),
    (
        "https://api.test/app/v1/items/%ff%fe",
        Refused("AMBIGUOUS_PATH"),
    ),
    ("app/v1/items/7", Refused("INVALID_URL")),
    ("", Refused("INVALID_URL")),
];

#[test]
fn hostile_urls_mean_their_normalised_form_or_are_refused() {
    assert!(HOSTILE.len() >= 30);
    let engine = Engine::default();
    let authorization = format!("Bearer {}", token());
    let mut failures = Vec::new();
    for (url, expect) in HOSTILE {
        let got = decide(&engine, "GET", url, &authorization);
        let problem = match expect {
            Same(plain) => {
                let want = decide(&engine, "GET", plain, &authorization);
                assert_ne!(want.status, 400, "{plain} is not a plain URL");
                (essence(&got) != essence(&want)).then(|| {
                    format!(
                        "decided as {:?}, but {plain} is {:?}",
                        essence(&got),
                        essence(&want)
                    )
                })
            }
            NoService => (essence(&got) != (404, None, None, Some("NO_MATCHING_SERVICE")))
                .then(|| format!("expected 404 NO_MATCHING_SERVICE, got {:?}", essence(&got))),
            Refused(code) => (essence(&got) != (400, None, None, Some(code)))
                .then(|| format!("expected 400 {code}, got {:?}", essence(&got))),
        };
        if let Some(problem) = problem {
            failures.push(format!("{url}: {problem}"));
        }
        // A refused URL is answered as a bad request, never challenged for a token.
        if got.status == 400 {
            assert_eq!(
                got.body.as_ref().map(|b| b.code.as_ref()),
                Some("INVALID_REQUEST"),
                "{url}"
            );
            assert!(got.headers.get("www-authenticate").is_none(), "{url}");
        }
    }
    assert!(
        failures.is_empty(),
        "{} hostile URLs misjudged:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Writes a normalised path back as a URL path that means exactly it.
fn encode(segments: &[String]) -> String {
    segments
        .iter()
        .map(|s| format!("/{}", utf8_percent_encode(s, SEGMENT)))
        .collect()
}

fn segments_of(raw: &str) -> Option<Vec<String>> {
    normalize_path(raw)
        .ok()
        .map(|p| p.segments().map(str::to_owned).collect())
}

/// Path pieces that exercise normalisation: plain and parameter segments of the fixture
/// operations, dot segments in every spelling, encoded separators, empty segments.
fn piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "items",
        "7",
        "me",
        "files",
        "users",
        "user.1",
        "profile",
        "internal",
        "status",
        "admin",
        "tenants",
        "acme",
        "report",
        "v1",
        "app",
        "",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        ".%2e",
        "%2F",
        "items%2F7",
        "a%20b",
        "%25",
        "%7e",
        "x;y",
        "%c3%a9",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Normalising a normalised path (written back as a URL path) changes nothing.
    #[test]
    fn normalisation_is_idempotent(pieces in prop::collection::vec(piece(), 0..10)) {
        let raw = format!("/{}", pieces.join("/"));
        if let Some(once) = segments_of(&raw) {
            let twice = segments_of(&encode(&once));
            prop_assert_eq!(Some(once), twice);
        }
    }

    /// Any path under the base URL is decided exactly as its normalised form, or refused.
    #[test]
    fn a_path_is_decided_as_its_normalised_form(
        pieces in prop::collection::vec(piece(), 0..8),
        method in prop::sample::select(vec!["GET", "PUT", "POST"]),
    ) {
        let engine = Engine::default();
        let authorization = format!("Bearer {}", token());
        let raw = format!("/app/v1/{}", pieces.join("/"));
        let hostile = format!("https://api.test{raw}");
        let got = decide(&engine, method, &hostile, &authorization);
        match segments_of(&raw) {
            None => prop_assert_eq!(got.status, 400),
            Some(segments) => {
                let plain = format!("https://api.test{}", encode(&segments));
                let want = decide(&engine, method, &plain, &authorization);
                prop_assert_eq!(essence(&got), essence(&want), "{} vs {}", hostile, plain);
            }
        }
    }

    /// No input makes URL parsing panic.
    #[test]
    fn any_text_is_parsed_or_refused(url in "\\PC{0,80}") {
        let _ = portcullis::parse_request_url(&url);
        let _ = portcullis::parse_request_url(&format!("{BASE}/{url}"));
    }
}
