//! Data-driven decision cases: every `tests/cases/*.yaml` file lists requests against the
//! fixture policies with the decision expected for each. All failures of all files are
//! reported together, and every detail code the engine knows must be exercised by a case.

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use portcullis::decision::Rebuild;
use portcullis::policy::yaml::{parse_documents, to_json};
use portcullis::{DecisionRequest, Engine};
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    /// The decision clock, RFC 3339.
    now: String,
    #[serde(default)]
    defaults: Defaults,
    cases: Vec<Case>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Defaults {
    token: Option<TokenSpec>,
}

#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TokenSpec {
    /// Signing key: a test key name, or `none` for an unsigned token.
    key: Option<String>,
    /// Algorithm used to sign; defaults to the header's `alg`.
    sign: Option<String>,
    /// Header fields, merged over the defaults; `null` removes a field.
    header: Option<Map<String, Value>>,
    /// Claims, merged over the defaults; `null` removes a claim. Strings `now`, `now+N`,
    /// `now-N` become Unix times.
    claims: Option<Map<String, Value>>,
    /// Replace the token with this text.
    raw: Option<String>,
    /// Change one character of the signature.
    corrupt_signature: Option<bool>,
    /// Add a claim `pad` of this many characters (for oversized tokens).
    pad_claim: Option<usize>,
    /// Bind the token to this client certificate (`cnf.x5t#S256`; see [`Materials`]).
    bind_cert: Option<String>,
    /// Bind the token to this DPoP key (`cnf.jkt`).
    bind_dpop: Option<String>,
}

/// A `DPoP` header: a proof made at decision time, valid unless changed.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct ProofSpec {
    /// The DPoP key that signs it (and whose public key is its `jwk`).
    key: String,
    /// Header fields merged over `{typ: dpop+jwt, alg: ES256, jwk}`; `null` removes one.
    header: Option<Map<String, Value>>,
    /// Claims merged over `{jti, htm, htu, iat: now, ath}` of this request; `now±N` as for
    /// tokens.
    claims: Option<Map<String, Value>>,
    /// `none` (no signature) or `HS256` (signed with a shared secret) instead of ES256.
    sign: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default = "get")]
    method: String,
    url: String,
    /// Append this many `a` to the URL.
    #[serde(rename = "padUrl")]
    pad_url: Option<usize>,
    client: Option<IpAddr>,
    #[serde(default)]
    headers: Map<String, Value>,
    /// `false` for no token; a mapping merged over the default token.
    token: Option<Value>,
    /// The whole `Authorization` header value, instead of a bearer token.
    authorization: Option<String>,
    /// The scheme word sent before the token (default `Bearer`).
    scheme: Option<String>,
    /// The client certificate a gateway passed, by name (see [`Materials`]), or `garbage`.
    #[serde(rename = "clientCert")]
    client_cert: Option<String>,
    /// `DPoP` headers, one per proof.
    #[serde(default)]
    dpop: Vec<ProofSpec>,
    expect: Expect,
}

/// Certificates and DPoP keys made fresh for this run, by the names cases give them.
#[derive(Default)]
struct Materials {
    certs: std::collections::HashMap<String, Vec<u8>>,
    keys: std::collections::HashMap<String, (jsonwebtoken::EncodingKey, Value)>,
}

impl Materials {
    /// The DER of certificate `name`.
    fn cert(&mut self, name: &str) -> &[u8] {
        self.certs.entry(name.to_owned()).or_insert_with(|| {
            let made =
                rcgen::generate_simple_self_signed(vec![format!("{name}.client.test")]).unwrap();
            made.cert.der().to_vec()
        })
    }

    /// The signing key and public JWK of DPoP key `name` (P-256).
    fn key(&mut self, name: &str) -> &(jsonwebtoken::EncodingKey, Value) {
        self.keys.entry(name.to_owned()).or_insert_with(|| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let point = key.public_key_raw();
            let jwk = serde_json::json!({
                "kty": "EC", "crv": "P-256",
                "x": support::b64(&point[1..33]), "y": support::b64(&point[33..]),
            });
            let signing =
                jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
            (signing, jwk)
        })
    }

    /// RFC 7638 thumbprint of DPoP key `name`.
    fn jkt(&mut self, name: &str) -> String {
        let jwk = &self.key(name).1;
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":{},"y":{}}}"#,
            jwk["x"], jwk["y"]
        );
        support::b64(&sha256(canonical.as_bytes()))
    }

    /// The `DPoP` header value `spec` describes, for a request `method url` with `token`.
    fn proof(
        &mut self,
        spec: &ProofSpec,
        method: &str,
        url: &str,
        token: &str,
        now: i64,
    ) -> String {
        let (signing, jwk) = self.key(&spec.key).clone();
        let mut header = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
        merge(
            header.as_object_mut().unwrap(),
            &spec.header.clone().unwrap_or_default(),
        );
        let mut claims = serde_json::json!({
            "jti": ulid::Ulid::new().to_string(),
            "htm": method,
            "htu": url.split('?').next().unwrap(),
            "iat": now,
            "ath": support::b64(&sha256(token.as_bytes())),
        });
        let claims_map = claims.as_object_mut().unwrap();
        merge(claims_map, &spec.claims.clone().unwrap_or_default());
        resolve_times(claims_map, now);
        match spec.sign.as_deref() {
            None => {
                let message = format!(
                    "{}.{}",
                    support::b64(header.to_string().as_bytes()),
                    support::b64(claims.to_string().as_bytes())
                );
                let signature =
                    jsonwebtoken::crypto::sign(message.as_bytes(), &signing, Algorithm::ES256)
                        .unwrap();
                format!("{message}.{signature}")
            }
            Some("none") => format!(
                "{}.{}.",
                support::b64(header.to_string().as_bytes()),
                support::b64(claims.to_string().as_bytes())
            ),
            Some("HS256") => {
                let message = format!(
                    "{}.{}",
                    support::b64(header.to_string().as_bytes()),
                    support::b64(claims.to_string().as_bytes())
                );
                let secret = jsonwebtoken::EncodingKey::from_secret(b"a shared secret");
                let signature =
                    jsonwebtoken::crypto::sign(message.as_bytes(), &secret, Algorithm::HS256)
                        .unwrap();
                format!("{message}.{signature}")
            }
            Some(other) => panic!("unknown proof signing `{other}`"),
        }
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

fn get() -> String {
    "GET".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Expect {
    outcome: String,
    status: u16,
    code: Option<String>,
    /// The first detail code.
    detail: Option<String>,
    /// All detail codes, in order.
    details: Option<Vec<String>>,
    /// Exact `www-authenticate`; `null` requires its absence.
    #[serde(default, deserialize_with = "present")]
    www_authenticate: Option<Option<String>>,
    allow: Option<String>,
    /// Exact `retry-after`.
    retry_after: Option<String>,
    service: Option<String>,
    operation: Option<String>,
    /// The description of the decisive rule.
    decisive: Option<String>,
    upstream: Option<Map<String, Value>>,
    /// Substrings the first detail message must contain.
    message_contains: Option<Vec<String>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn merge(base: &mut Map<String, Value>, over: &Map<String, Value>) {
    for (k, v) in over {
        if v.is_null() {
            base.remove(k);
        } else {
            base.insert(k.clone(), v.clone());
        }
    }
}

fn resolve_times(claims: &mut Map<String, Value>, now: i64) {
    for value in claims.values_mut() {
        if let Some(text) = value.as_str() {
            let offset = if text == "now" {
                Some(0)
            } else if let Some(n) = text.strip_prefix("now+") {
                n.parse::<i64>().ok()
            } else if let Some(n) = text.strip_prefix("now-") {
                n.parse::<i64>().ok().map(|n| -n)
            } else {
                None
            };
            if let Some(offset) = offset {
                *value = Value::from(now + offset);
            }
        }
    }
}

fn build_token(
    defaults: &TokenSpec,
    over: &TokenSpec,
    now: i64,
    materials: &mut Materials,
) -> String {
    if let Some(raw) = over.raw.as_ref().or(defaults.raw.as_ref()) {
        return raw.clone();
    }
    let mut header = defaults.header.clone().unwrap_or_default();
    merge(&mut header, &over.header.clone().unwrap_or_default());
    let mut claims = defaults.claims.clone().unwrap_or_default();
    merge(&mut claims, &over.claims.clone().unwrap_or_default());
    resolve_times(&mut claims, now);
    let mut cnf = Map::new();
    if let Some(cert) = over.bind_cert.as_ref().or(defaults.bind_cert.as_ref()) {
        // RFC 8705 §3.1: base64url SHA-256 of the DER certificate.
        cnf.insert(
            "x5t#S256".into(),
            support::b64(&sha256(materials.cert(cert))).into(),
        );
    }
    if let Some(key) = over.bind_dpop.as_ref().or(defaults.bind_dpop.as_ref()) {
        cnf.insert("jkt".into(), materials.jkt(key).into());
    }
    if !cnf.is_empty() {
        claims.insert("cnf".into(), Value::Object(cnf));
    }
    if let Some(n) = over.pad_claim {
        claims.insert("pad".into(), Value::from("x".repeat(n)));
    }
    let key = over
        .key
        .as_ref()
        .or(defaults.key.as_ref())
        .expect("a token needs `key`");
    let alg_name = over
        .sign
        .as_ref()
        .or(defaults.sign.as_ref())
        .cloned()
        .or_else(|| header.get("alg").and_then(Value::as_str).map(str::to_owned))
        .expect("a token needs `sign` or a header `alg`");
    let signer = (key != "none").then(|| {
        (
            key.as_str(),
            alg_name.parse::<Algorithm>().expect("known algorithm"),
        )
    });
    let mut token = support::jws(&Value::Object(header), &Value::Object(claims), signer);
    if over.corrupt_signature.unwrap_or(false) {
        // A character well inside the signature, so that the base64 stays canonical.
        let at = token.len() - 10;
        let flipped = if &token[at..=at] == "A" { "B" } else { "A" };
        token.replace_range(at..=at, flipped);
    }
    token
}

fn check(case: &Case, decision: &portcullis::Decision) -> Vec<String> {
    let e = &case.expect;
    let mut problems = Vec::new();
    let mut differ = |what: &str, want: &dyn std::fmt::Debug, got: &dyn std::fmt::Debug| {
        problems.push(format!("{what}: expected {want:?}, got {got:?}"));
    };
    if decision.outcome.as_str() != e.outcome {
        differ("outcome", &e.outcome, &decision.outcome.as_str());
    }
    if decision.status != e.status {
        differ("status", &e.status, &decision.status);
    }
    let body = decision.body.as_ref();
    if let Some(code) = &e.code
        && body.map(|b| b.code.as_ref()) != Some(code.as_str())
    {
        differ("code", code, &body.map(|b| b.code.as_ref()));
    }
    if let Some(detail) = &e.detail
        && decision.detail_code() != Some(detail.as_str())
    {
        differ("detail", detail, &decision.detail_code());
    }
    if let Some(details) = &e.details {
        let got: Vec<&str> = body
            .map(|b| b.details.iter().map(|d| d.code.as_ref()).collect())
            .unwrap_or_default();
        if got != *details {
            differ("details", details, &got);
        }
    }
    if let Some(want) = &e.www_authenticate {
        let got = decision.headers.get("www-authenticate");
        if got != want.as_deref() {
            differ("www-authenticate", want, &got);
        }
    }
    if let Some(allow) = &e.allow
        && decision.headers.get("allow") != Some(allow.as_str())
    {
        differ("allow", allow, &decision.headers.get("allow"));
    }
    if let Some(retry) = &e.retry_after
        && decision.headers.get("retry-after") != Some(retry.as_str())
    {
        differ("retry-after", retry, &decision.headers.get("retry-after"));
    }
    if let Some(service) = &e.service
        && decision.service.as_deref() != Some(service.as_str())
    {
        differ("service", service, &decision.service);
    }
    if let Some(operation) = &e.operation
        && decision.operation.as_deref() != Some(operation.as_str())
    {
        differ("operation", operation, &decision.operation);
    }
    if let Some(decisive) = &e.decisive {
        let got = decision.decisive().and_then(|t| t.rule.as_deref());
        if got != Some(decisive.as_str()) {
            differ("decisive rule", decisive, &got);
        }
    }
    if let Some(upstream) = &e.upstream {
        for (name, value) in upstream {
            let got = decision.upstream_headers.get(name);
            if got != value.as_str() {
                differ(&format!("upstream header {name}"), value, &got);
            }
        }
    }
    if let Some(parts) = &e.message_contains {
        let message = body
            .and_then(|b| b.details.first())
            .map(|d| d.message.as_str())
            .unwrap_or("");
        for part in parts {
            if !message.contains(part.as_str()) {
                differ("detail message containing", part, &message);
            }
        }
    }
    // Invariants of every decision (SPEC §2a): a deny carries JSON, and the same id in
    // header and body; an allow carries no body.
    match body {
        Some(b) => {
            if decision.headers.get("x-decision-id") != Some(b.id.as_str()) || b.id != decision.id {
                problems.push("x-decision-id differs from body.id".into());
            }
            if decision.headers.get("content-type") != Some("application/json") {
                problems.push("deny without content-type: application/json".into());
            }
        }
        None if decision.status != 200 => problems.push("deny without a body".into()),
        None => {}
    }
    problems
}

#[test]
fn decision_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no case files in {}", dir.display());
    let policies = support::policies();
    let mut failures = Vec::new();
    let mut codes_seen = BTreeSet::new();
    let mut count = 0;
    let mut rebuilt = 0;
    let rebuilder = Engine::default();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let docs = parse_documents(&text).unwrap_or_else(|e| panic!("{}: {e:?}", file.display()));
        let suite: CaseFile = serde_json::from_value(to_json(&docs[0]))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let now_time: SystemTime = humantime::parse_rfc3339(&suite.now).unwrap();
        let now = now_time.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let defaults = suite.defaults.token.clone().unwrap_or_default();
        // One engine per file: later cases may reuse tokens cached by earlier ones, as in a
        // running server.
        let engine = Engine::default();
        let mut materials = Materials::default();
        for case in &suite.cases {
            count += 1;
            let mut headers: Vec<(String, String)> = case
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                    )
                })
                .collect();
            let mut access_token = String::new();
            match (&case.authorization, &case.token) {
                (Some(authorization), _) => {
                    headers.push(("Authorization".into(), authorization.clone()))
                }
                (None, Some(Value::Bool(false))) => {}
                (None, token) => {
                    let over: TokenSpec = match token {
                        None => TokenSpec::default(),
                        Some(v) => serde_json::from_value(v.clone()).unwrap_or_else(|e| {
                            panic!("{}: case `{}`: token: {e}", file.display(), case.name)
                        }),
                    };
                    let scheme = case.scheme.as_deref().unwrap_or("Bearer");
                    access_token = build_token(&defaults, &over, now, &mut materials);
                    headers.push(("Authorization".into(), format!("{scheme} {access_token}")));
                }
            }
            let url = format!("{}{}", case.url, "a".repeat(case.pad_url.unwrap_or(0)));
            for spec in &case.dpop {
                let proof = materials.proof(spec, &case.method, &url, &access_token, now);
                headers.push(("DPoP".into(), proof));
            }
            let client_cert = case.client_cert.as_deref().map(|name| match name {
                "garbage" => {
                    "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----".to_owned()
                }
                name => base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    materials.cert(name),
                ),
            });
            let header_refs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let decision = engine.decide(
                policies,
                &DecisionRequest {
                    method: &case.method,
                    url: &url,
                    headers: &header_refs,
                    client: case.client,
                    client_cert: client_cert.as_deref(),
                },
                now_time + Duration::from_millis(1),
            );
            for detail in decision.body.iter().flat_map(|b| &b.details) {
                codes_seen.insert(detail.code.to_string());
            }
            let mut problems = check(case, &decision);
            // A record that keeps only what the decision was made on (SPEC §6b) rebuilds it
            // with the policy set: the rebuild must be the decision, byte for byte.
            if let Some(how) = Rebuild::of(&decision) {
                rebuilt += 1;
                match rebuilder.rebuild(policies, &support::rebuild_skeleton(&decision), how) {
                    Ok(again) if again == decision => {}
                    Ok(again) => problems.push(format!(
                        "rebuilt from its inputs differently: {}",
                        serde_json::to_string(&again).unwrap()
                    )),
                    Err(e) => problems.push(format!("not rebuilt from its inputs: {e}")),
                }
            }
            // Replicas share decisions as JSON: reading one back must give the same JSON.
            let json = serde_json::to_string(&decision).unwrap();
            match serde_json::from_str::<portcullis::Decision>(&json) {
                Ok(back) if serde_json::to_string(&back).unwrap() == json => {}
                Ok(back) => problems.push(format!(
                    "read back differently: {}",
                    serde_json::to_string(&back).unwrap()
                )),
                Err(e) => problems.push(format!("cannot be read back: {e}")),
            }
            if !problems.is_empty() {
                failures.push(format!(
                    "{} — {}\n    {}\n    decision: {}",
                    file.file_name().unwrap().to_string_lossy(),
                    case.name,
                    problems.join("\n    "),
                    serde_json::to_string(&decision).unwrap()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Most decisions are rebuilt; the rest (sender binding, rate limits) are kept whole.
    assert!(
        rebuilt * 10 >= count * 7,
        "only {rebuilt} of {count} decisions can be rebuilt from their inputs"
    );
    // The forced-panic unit test in src/decision/engine.rs covers INTERNAL_ERROR.
    let missing: Vec<&&str> = portcullis::decision::DETAIL_CODES
        .iter()
        .filter(|c| **c != "INTERNAL_ERROR" && !codes_seen.contains(**c))
        .collect();
    assert!(
        missing.is_empty(),
        "detail codes without a case: {missing:?}"
    );
}
