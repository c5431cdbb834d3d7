//! Hostile bearer tokens: each is refused with 401 and the detail code that names its fault,
//! before and after a valid token for the same service has filled the verified-token cache.
//! Random and mutated tokens never allow and never panic.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use portcullis::{Decision, DecisionRequest, Engine};
use proptest::prelude::*;
use serde_json::{Value, json};

const NOW: i64 = 1_790_000_000;
const URL: &str = "https://api.test/app/v1/items/7";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW as u64)
}

fn decide_at(engine: &Engine, url: &str, authorization: &str) -> Decision {
    let headers = [("authorization", authorization)];
    engine.decide(
        support::policies(),
        &DecisionRequest {
            method: "GET",
            url,
            headers: &headers,
            client: None,
            client_cert: None,
        },
        now(),
    )
}

fn claims_with(changes: Value) -> Value {
    let mut claims = support::app_claims(NOW);
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

/// `header.claims.signature` with an HMAC-SHA256 signature under `secret`.
fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        support::b64(header.to_string().as_bytes()),
        support::b64(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{signature}")
}

/// (what the token is, the token, the URL it is sent to, the detail code expected)
fn hostile_tokens() -> Vec<(&'static str, String, &'static str, &'static str)> {
    let rs = json!({"alg": "RS256", "kid": "rsa-a", "typ": "JWT"});
    let valid = support::app_claims(NOW);
    let public_pem = std::fs::read(support::fixtures().join("keys/rsa-a.pub.pem")).unwrap();
    let jwks_text = std::fs::read(support::fixtures().join("policies/keys/app.jwks.json")).unwrap();
    let signed = support::rs256(&valid);
    let (head, rest) = signed.split_once('.').unwrap();
    let payload = rest.split_once('.').unwrap().0;
    vec![
        (
            "signed by a key nobody trusts, claiming a trusted kid",
            support::jws(&rs, &valid, Some(("rsa-untrusted", Algorithm::RS256))),
            URL,
            "INVALID_SIGNATURE",
        ),
        (
            "signed by the other trusted RSA key under rsa-a's kid",
            support::jws(&rs, &valid, Some(("rsa-b", Algorithm::RS256))),
            URL,
            "INVALID_SIGNATURE",
        ),
        (
            "alg none without a signature",
            support::jws(&json!({"alg": "none", "kid": "rsa-a"}), &valid, None),
            URL,
            "ALGORITHM_NOT_ALLOWED",
        ),
        (
            "alg None in another case",
            support::jws(&json!({"alg": "None", "kid": "rsa-a"}), &valid, None),
            URL,
            "ALGORITHM_NOT_ALLOWED",
        ),
        (
            "alg none with a copied RS256 signature",
            format!(
                "{}.{payload}.{}",
                support::b64(br#"{"alg":"none","kid":"rsa-a"}"#),
                signed.rsplit_once('.').unwrap().1
            ),
            URL,
            "ALGORITHM_NOT_ALLOWED",
        ),
        (
            "HS256 signed with the RSA public key PEM as the secret",
            hs256(
                &json!({"alg": "HS256", "kid": "rsa-a"}),
                &valid,
                &public_pem,
            ),
            URL,
            "ALGORITHM_NOT_ALLOWED",
        ),
        (
            "HS256 signed with the JWKS text as the secret, where HS256 is allowed",
            hs256(
                &json!({"alg": "HS256", "kid": "hs-a"}),
                &claims_with(json!({"aud": "hs"})),
                &jwks_text,
            ),
            "https://hs.test/api/x",
            "INVALID_SIGNATURE",
        ),
        (
            "HS256 naming an RSA key where HS256 is allowed",
            hs256(
                &json!({"alg": "HS256", "kid": "rsa-a"}),
                &claims_with(json!({"aud": "hs"})),
                &public_pem,
            ),
            "https://hs.test/api/x",
            "UNKNOWN_KEY",
        ),
        (
            "expired one second beyond the 30 s leeway",
            support::rs256(&claims_with(json!({"exp": NOW - 31}))),
            URL,
            "TOKEN_EXPIRED",
        ),
        (
            "not valid until after the leeway",
            support::rs256(&claims_with(json!({"nbf": NOW + 31}))),
            URL,
            "TOKEN_NOT_YET_VALID",
        ),
        (
            "issued in the future",
            support::rs256(&claims_with(json!({"iat": NOW + 3600}))),
            URL,
            "TOKEN_ISSUED_IN_FUTURE",
        ),
        (
            "another issuer",
            support::rs256(&claims_with(json!({"iss": "https://issuer.test.evil"}))),
            URL,
            "INVALID_ISSUER",
        ),
        (
            "the issuer with a trailing slash",
            support::rs256(&claims_with(json!({"iss": "https://issuer.test/"}))),
            URL,
            "INVALID_ISSUER",
        ),
        (
            "an audience array without ours",
            support::rs256(&claims_with(json!({"aud": ["api", "apps", "APP"]}))),
            URL,
            "INVALID_AUDIENCE",
        ),
        (
            "no kid while the key set has several keys",
            support::jws(
                &json!({"alg": "RS256"}),
                &valid,
                Some(("rsa-a", Algorithm::RS256)),
            ),
            URL,
            "KEY_ID_REQUIRED",
        ),
        (
            "garbage base64 in the header",
            format!("!!!.{payload}.AAAA"),
            URL,
            "MALFORMED_TOKEN",
        ),
        (
            "garbage base64 in the payload",
            format!("{head}.@@@@.AAAA"),
            URL,
            "MALFORMED_TOKEN",
        ),
        (
            "padded base64",
            format!("{head}=.{payload}.AAAA"),
            URL,
            "MALFORMED_TOKEN",
        ),
        (
            "two parts",
            format!("{head}.{payload}"),
            URL,
            "MALFORMED_TOKEN",
        ),
        (
            "four parts (a JWE-like shape)",
            format!("{signed}.AAAA"),
            URL,
            "MALFORMED_TOKEN",
        ),
        (
            // Claims are read only once the signature holds.
            "an unsigned payload that is a JSON array",
            format!("{head}.{}.AAAA", support::b64(b"[1,2,3]")),
            URL,
            "INVALID_SIGNATURE",
        ),
        (
            "a signed payload with exp as a string",
            support::rs256(&claims_with(json!({"exp": "tomorrow"}))),
            URL,
            "MALFORMED_TOKEN",
        ),
        (
            "a 1 MB token",
            format!("{head}.{}.AAAA", "A".repeat(1 << 20)),
            URL,
            "TOKEN_TOO_LARGE",
        ),
    ]
}

#[test]
fn hostile_tokens_are_refused_with_their_own_detail_code() {
    let engine = Engine::default();
    let good = format!("Bearer {}", support::rs256(&support::app_claims(NOW)));
    let mut failures = Vec::new();
    // Twice: the second pass runs with the valid token and any earlier answer cached.
    for pass in 0..2 {
        assert_eq!(
            decide_at(&engine, URL, &good).status,
            200,
            "the valid token is accepted"
        );
        for (what, token, url, code) in hostile_tokens() {
            let decision = decide_at(&engine, url, &format!("Bearer {token}"));
            let got = (decision.status, decision.detail_code());
            if got != (401, Some(code)) {
                failures.push(format!(
                    "pass {pass}, {what}: expected 401 {code}, got {got:?}"
                ));
            }
            let challenge = decision.headers.get("www-authenticate").unwrap_or_default();
            if !challenge.contains(r#"error="invalid_token""#) {
                failures.push(format!("pass {pass}, {what}: challenge {challenge:?}"));
            }
            // The decision never echoes the token.
            let json = serde_json::to_string(&decision).unwrap();
            let signature = token.rsplit('.').next().unwrap_or_default();
            if signature.len() > 8 && json.contains(signature) {
                failures.push(format!(
                    "pass {pass}, {what}: the decision contains the token"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any text as a token is refused with 401 (or 400 when it holds several tokens).
    #[test]
    fn arbitrary_text_never_allows(text in "\\PC{0,300}") {
        let engine = Engine::default();
        let decision = decide_at(&engine, URL, &format!("Bearer {text}"));
        prop_assert!(decision.status == 401 || decision.status == 400, "{}", decision.status);
    }

    /// Arbitrary JSON-ish header and payload around a real signature never allow.
    #[test]
    fn forged_parts_never_allow(header in "\\PC{0,60}", payload in "\\PC{0,120}") {
        let engine = Engine::default();
        let signed = support::rs256(&support::app_claims(NOW));
        let signature = signed.rsplit_once('.').unwrap().1;
        let token = format!("{}.{}.{signature}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let decision = decide_at(&engine, URL, &format!("Bearer {token}"));
        prop_assert_eq!(decision.status, 401);
    }

    /// Changing any one character of a valid token makes it invalid.
    #[test]
    fn a_changed_character_never_allows(at in 0usize..10_000, replacement in "[A-Za-z0-9_.-]") {
        let engine = Engine::default();
        let mut token = support::rs256(&support::app_claims(NOW));
        let at = at % token.len();
        prop_assume!(token[at..=at] != replacement);
        token.replace_range(at..=at, &replacement);
        let decision = decide_at(&engine, URL, &format!("Bearer {token}"));
        // A change in the unused low bits of the last base64 character can decode to the same
        // bytes; any other change must be caught.
        let same_bytes = {
            let original = support::rs256(&support::app_claims(NOW));
            let decode = |t: &str| t.split('.').map(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok()).collect::<Vec<_>>();
            decode(&original) == decode(&token)
        };
        if !same_bytes {
            prop_assert_eq!(decision.status, 401);
        }
    }
}
