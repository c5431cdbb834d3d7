//! Decisions for the trace store's tests: each kind the engine makes on the fixture policies,
//! and kinds only another replica or version makes.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::StoredDecision;
use crate::decision::{Decision, DecisionRequest, Engine, Outcome, TokenSummary};
use crate::policy::PolicySet;

pub(super) fn fixtures() -> &'static (PolicySet, Engine) {
    static FIXTURES: OnceLock<(PolicySet, Engine)> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policies");
        let policies = crate::policy::load_dir(&dir, &Default::default())
            .unwrap_or_else(|e| panic!("fixture policies are invalid:\n{e}"));
        (policies, Engine::default())
    })
}

pub(super) fn decide(method: &str, url: &str, headers: &[(&str, &str)]) -> Decision {
    let (policies, engine) = fixtures();
    let client = Some("192.0.2.7".parse().unwrap());
    engine.decide(
        policies,
        &DecisionRequest {
            method,
            url,
            headers,
            client,
            client_cert: None,
        },
        SystemTime::now(),
    )
}

/// GET of item `n` of `app` without a token: a 401 deny.
pub(crate) fn unauthorised(n: usize) -> Decision {
    let d = decide("GET", &format!("https://api.test/app/v1/items/{n}"), &[]);
    assert_eq!((d.outcome, d.status), (Outcome::Deny, 401), "{}", d.audit);
    d
}

/// A URL no service covers: a 404 deny without a service.
pub(super) fn unknown_host(n: usize) -> Decision {
    let d = decide("GET", &format!("https://nowhere.test/x/{n}"), &[]);
    assert_eq!(
        (d.outcome, d.status, d.service.as_deref()),
        (Outcome::Deny, 404, None)
    );
    d
}

/// An allowed decision of `app` for subject `sub` (made from a 401 by hand).
pub(crate) fn allowed(n: usize, sub: &str) -> Decision {
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
        binding: None,
    });
    d
}

/// `Bearer` and a token of `user-17` (groups `staff`, `amr` `pwd`) signed with the fixture
/// key `rsa-a`, made once.
fn authorization() -> &'static str {
    static AUTHORIZATION: OnceLock<String> = OnceLock::new();
    AUTHORIZATION.get_or_init(|| {
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
    })
}

/// A real 403 of `app`'s `admin` operation with a signed token: base URL, token,
/// operation and nested rule entries in the trace.
pub(super) fn full_trace_deny(n: usize) -> Decision {
    let d = decide(
        "POST",
        &format!("https://api.test/app/v1/admin/jobs/{n}?dry-run=true"),
        &[("authorization", authorization())],
    );
    assert_eq!((d.outcome, d.status), (Outcome::Deny, 403), "{}", d.audit);
    assert!(d.trace.len() >= 5, "{:#?}", d.trace);
    d
}

/// A real allow of `app`'s `read-item` with a signed token, with upstream headers.
pub(super) fn real_allow(n: usize) -> Decision {
    real_allow_at(&n.to_string())
}

/// [`real_allow`] of item `item`.
pub(super) fn real_allow_at(item: &str) -> Decision {
    let d = decide(
        "GET",
        &format!("https://api.test/app/v1/items/{item}"),
        &[("authorization", authorization())],
    );
    assert_eq!((d.outcome, d.status), (Outcome::Allow, 200), "{}", d.audit);
    assert!(
        !d.upstream_headers.0.is_empty(),
        "{:#?}",
        d.upstream_headers
    );
    d
}

/// The fixture policy set as a server holds it, loaded afresh: the set `fixtures()`
/// decides with, for records that rebuild their decisions.
pub(super) fn policy_set() -> Arc<PolicySet> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policies");
    Arc::new(crate::policy::load_dir(&dir, &Default::default()).expect("fixtures load"))
}

/// Decisions of every kind the engine makes and a record of its inputs can rebuild: an
/// allow, a 403 with a full trace, a 401, an unknown host, a long URL, an invalid URL.
pub(super) fn engine_made() -> Vec<Decision> {
    let invalid_url = decide("GET", "https://api.test/app/v1/files/..%5Citems", &[]);
    vec![
        real_allow(1),
        full_trace_deny(2),
        unauthorised(3),
        unknown_host(4),
        long_url(5),
        invalid_url,
    ]
}

pub(super) fn ids(records: &[Arc<StoredDecision>]) -> Vec<&str> {
    records.iter().map(|r| r.id()).collect()
}

/// A 401 whose URL carries a long query (1 KiB), as search and filter endpoints do.
pub(super) fn long_url(n: usize) -> Decision {
    let url = format!(
        "https://api.test/app/v1/items/{n}?filter={}",
        "tag:x,".repeat(170)
    );
    let d = decide("GET", &url, &[]);
    assert_eq!(d.status, 401, "{}", d.audit);
    d
}

/// Decisions of every kind the store keeps differently: the engine's own (allow, each
/// denial, long URL, invalid URL, internal error) and others (read back from another
/// replica's JSON, a foreign id and time, an odd audit text and values, a URL past the
/// audit cap), the last one only over a cap.
pub(super) fn every_kind() -> (Vec<Decision>, Vec<Decision>) {
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
    // What a shadow set decided differently, kept with its trace.
    let mut shadowed = allowed(12, "carol");
    shadowed.shadow = Some(Box::new(crate::decision::ShadowDecision::of(
        full_trace_deny(13),
    )));
    (
        engine_made.to_vec(),
        vec![replica, other_id, odd, shadowed, near_limit],
    )
}
