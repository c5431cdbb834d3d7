//! Sender-constrained tokens against the real server, with certificates and DPoP keys made
//! in the test (rcgen): certificate-bound tokens (RFC 8705) through a real Envoy terminating
//! mutual TLS with the shipped `examples/envoy/mtls.yaml`, through `/v1/authorize` with a
//! header from a trusted gateway, and through the Sideband API's `client_certificate`; DPoP
//! proofs (RFC 9449), each broken rule a 401 with its own detail code; replicas sharing the
//! proofs they saw through a real Redis; and the CLI's `token --bind-cert/--dpop-key`,
//! `dpop` and `decide --client-cert/--dpop`.
//!
//! Thumbprints, token hashes and proofs are computed here from the RFCs (SHA-256 over the
//! DER, RFC 7638 over the JWK members), not with Portcullis' own helpers, so that a wrong
//! thumbprint in Portcullis fails these tests. Envoy is looked for at `.venv-envoy/bin/envoy`
//! or on the PATH; without it the Envoy test says SKIPPED, or fails when
//! `PORTCULLIS_REQUIRE_GATEWAYS=1`. Redis likewise, with `PORTCULLIS_REQUIRE_REDIS=1`.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{CertifiedIssuer, ExtendedKeyUsagePurpose, KeyPair};
use serde_json::{Value, json};
use support::pki::{Leaf, ca, leaf};
use support::server::Server;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");
const HOST: &str = "api.example.com";
const LEADERBOARD: &str = "https://api.example.com/meme-game/api/v1/leaderboard";
const STARTUP: Duration = Duration::from_secs(60);

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

fn unix_now() -> i64 {
    support::unix_now()
}

// ---------------------------------------------------------------------------------------------
// Certificates

impl Leaf {
    /// RFC 8705 §3.1: base64url SHA-256 of the DER certificate.
    fn thumbprint(&self) -> String {
        b64url(&sha256(&self.der))
    }

    /// The PEM as nginx's `$ssl_client_escaped_cert` and Envoy's `source.certificate` carry it.
    fn escaped(&self) -> String {
        percent_encoding::utf8_percent_encode(&self.pem, percent_encoding::NON_ALPHANUMERIC)
            .to_string()
    }
}

fn client_cert(issuer: &CertifiedIssuer<'static, KeyPair>, name: &str) -> Leaf {
    leaf(issuer, name, &[], ExtendedKeyUsagePurpose::ClientAuth)
}

// ---------------------------------------------------------------------------------------------
// Tokens for the shipped `meme-game` service, bound or not

fn token(cnf: Option<Value>) -> String {
    let now = unix_now();
    let mut claims = json!({
        "iss": "https://auth.example.com", "aud": "meme-game", "sub": "user.0",
        "client_id": "meme-game-web", "groups": ["players"], "scope": "memes:read",
        "iat": now, "exp": now + 600,
    });
    if let Some(cnf) = cnf {
        claims["cnf"] = cnf;
    }
    let pem = std::fs::read(support::shipped().join("keys/meme-game.dev-key.pem")).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("meme-game-dev-rsa-1".into());
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

fn cert_bound_token(cert: &Leaf) -> String {
    token(Some(json!({ "x5t#S256": cert.thumbprint() })))
}

// ---------------------------------------------------------------------------------------------
// DPoP keys and proofs, made by hand

/// A P-256 key a DPoP client holds.
struct DpopKey {
    pem: String,
    signing: EncodingKey,
    jwk: Value,
}

impl DpopKey {
    fn new() -> DpopKey {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = key.public_key_raw();
        assert_eq!(point.len(), 65, "an uncompressed P-256 point");
        let pem = key.serialize_pem();
        DpopKey {
            signing: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            jwk: json!({
                "kty": "EC", "crv": "P-256",
                "x": b64url(&point[1..33]), "y": b64url(&point[33..]),
            }),
            pem,
        }
    }

    /// RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace.
    fn jkt(&self) -> String {
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":{},"y":{}}}"#,
            self.jwk["x"], self.jwk["y"]
        );
        b64url(&sha256(canonical.as_bytes()))
    }

    fn bound_token(&self) -> String {
        token(Some(json!({ "jkt": self.jkt() })))
    }
}

/// The claims of a valid proof for `method` `url` with `access_token`, made now.
fn proof_claims(method: &str, url: &str, access_token: &str) -> Value {
    json!({
        "jti": ulid::Ulid::new().to_string(),
        "htm": method,
        "htu": url,
        "iat": unix_now(),
        "ath": b64url(&sha256(access_token.as_bytes())),
    })
}

fn signed(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

fn proof_by(key: &DpopKey, claims: &Value) -> String {
    let header = json!({ "typ": "dpop+jwt", "alg": "ES256", "jwk": key.jwk });
    signed(&header, claims, &key.signing, Algorithm::ES256)
}

// ---------------------------------------------------------------------------------------------
// Answers

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    async fn of(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        Answer {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    fn header(&self, name: &str) -> String {
        (self.headers.get(name))
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    fn detail(&self) -> &str {
        self.body["details"][0]["code"].as_str().unwrap_or("")
    }

    fn id(&self) -> String {
        self.header("x-decision-id")
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `/v1/authorize` as nginx calls it, for `method url` with `headers`.
async fn authorize(server: &Server, method: &str, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = http()
        .get(server.http_url("/v1/authorize"))
        .header("x-original-method", method)
        .header("x-original-url", url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Answer::of(request.send().await.unwrap()).await
}

async fn decision(server: &Server, id: &str) -> Value {
    let text = server.get_text(&format!("/v1/decisions/{id}")).await;
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("decision {id}: {text}"))
}

fn token_entry<'d>(decision: &'d Value, attribute: &str) -> &'d Value {
    decision["trace"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["attribute"] == attribute)
        .unwrap_or_else(|| panic!("no `{attribute}` entry in {decision:#}"))
}

// ---------------------------------------------------------------------------------------------
// Certificate-bound tokens through /v1/authorize and the Sideband API

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_certificate_header_counts_only_from_trusted_gateways() {
    let issuer = ca("test CA");
    let (mine, other) = (client_cert(&issuer, "mine"), client_cert(&issuer, "other"));
    let bound = cert_bound_token(&mine);
    let bearer = format!("Bearer {bound}");
    let header = "x-client-cert";
    let trusted = Server::start(
        &support::shipped(),
        &[
            "--client-cert-header",
            header,
            "--trusted-gateways",
            "127.0.0.1",
        ],
    );

    let escaped = mine.escaped();
    let ok = authorize(
        &trusted,
        "GET",
        LEADERBOARD,
        &[("authorization", &bearer), (header, &escaped)],
    )
    .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let recorded = decision(&trusted, &ok.id()).await;
    assert_eq!(
        recorded["token"]["binding"],
        json!({"method": "x5t#S256", "result": "verified"})
    );
    let entry = token_entry(&recorded, "token.cnf.x5t#S256");
    assert_eq!(entry["expected"], mine.thumbprint());
    assert_eq!(entry["actual"], mine.thumbprint());

    let escaped_other = other.escaped();
    let wrong = authorize(
        &trusted,
        "GET",
        LEADERBOARD,
        &[("authorization", &bearer), (header, &escaped_other)],
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.detail(), "CERTIFICATE_MISMATCH");
    assert_eq!(
        wrong.header("www-authenticate"),
        "Bearer realm=\"meme-game\", error=\"invalid_token\", error_description=\"Client certificate mismatch\""
    );
    // Both thumbprints in the trace, never the certificate.
    let recorded = decision(&trusted, &wrong.id()).await;
    let entry = token_entry(&recorded, "token.cnf.x5t#S256");
    assert_eq!(entry["expected"], mine.thumbprint());
    assert_eq!(entry["actual"], other.thumbprint());
    assert_eq!(entry["result"], false);
    let listed = trusted.get_text("/v1/decisions").await;
    let der_b64 = base64::engine::general_purpose::STANDARD.encode(&other.der);
    for secret in [
        "BEGIN CERTIFICATE",
        "BEGIN%20CERTIFICATE",
        &der_b64[..40],
        &bound[..],
    ] {
        assert!(!listed.contains(secret), "`{secret}` in the decisions API");
        assert!(!trusted.log().contains(secret), "`{secret}` in the log");
    }

    let none = authorize(&trusted, "GET", LEADERBOARD, &[("authorization", &bearer)]).await;
    assert_eq!((none.status, none.detail()), (401, "CERTIFICATE_REQUIRED"));

    // An unbound token passes under the example's `binding: allowed`, certificate or not.
    let plain = format!("Bearer {}", token(None));
    let unbound = authorize(&trusted, "GET", LEADERBOARD, &[("authorization", &plain)]).await;
    assert_eq!(unbound.status, 200, "{:?}", unbound.body);

    // From a peer outside --trusted-gateways the header is ignored: a client reaching
    // Portcullis directly cannot claim a certificate.
    let untrusted = Server::start(
        &support::shipped(),
        &[
            "--client-cert-header",
            header,
            "--trusted-gateways",
            "10.0.0.0/8",
        ],
    );
    let ignored = authorize(
        &untrusted,
        "GET",
        LEADERBOARD,
        &[("authorization", &bearer), (header, &escaped)],
    )
    .await;
    assert_eq!(
        (ignored.status, ignored.detail()),
        (401, "CERTIFICATE_REQUIRED")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_required_refuses_unbound_tokens_and_unknown_confirmation_methods() {
    let policies = support::candidate(&[("binding: allowed", "binding: required")]);
    let server = Server::start(policies.path(), &[]);
    let plain = format!("Bearer {}", token(None));
    let unbound = authorize(&server, "GET", LEADERBOARD, &[("authorization", &plain)]).await;
    assert_eq!(
        (unbound.status, unbound.detail()),
        (401, "BINDING_REQUIRED")
    );
    assert!(
        unbound
            .header("www-authenticate")
            .contains("error=\"invalid_token\""),
        "{:?}",
        unbound.headers
    );
    let odd = format!("Bearer {}", token(Some(json!({"jwk": {"kty": "EC"}}))));
    let unknown = authorize(&server, "GET", LEADERBOARD, &[("authorization", &odd)]).await;
    assert_eq!(
        (unknown.status, unknown.detail()),
        (401, "BINDING_UNSUPPORTED")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sideband_client_certificate_is_the_certificate_checked() {
    let issuer = ca("test CA");
    let (mine, other) = (client_cert(&issuer, "mine"), client_cert(&issuer, "other"));
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("sideband.secrets");
    std::fs::write(&secrets, "kit-secret-0123456789abcdef\n").unwrap();
    let server = Server::start(
        &support::shipped(),
        &["--sideband-secret-file", secrets.to_str().unwrap()],
    );
    let bearer = format!("Bearer {}", cert_bound_token(&mine));
    let call = |cert: Option<&Leaf>| {
        let mut body = json!({
            "source_ip": "203.0.113.7", "source_port": "50000", "method": "GET",
            "url": "https://api.example.com:443/meme-game/api/v1/leaderboard",
            "headers": [{"host": HOST}, {"authorization": bearer}],
            "http_version": "1.1",
        });
        if let Some(cert) = cert {
            body["client_certificate"] = json!({
                "kty": "EC",
                "x5c": [base64::engine::general_purpose::STANDARD.encode(&cert.der)],
            });
        }
        http()
            .post(server.http_url("/sideband/request"))
            .header("CLIENT-TOKEN", "kit-secret-0123456789abcdef")
            .json(&body)
            .send()
    };
    let allowed = Answer::of(call(Some(&mine)).await.unwrap()).await;
    assert_eq!(allowed.status, 200);
    assert!(allowed.body.get("response").is_none(), "{:#}", allowed.body);
    for (cert, code) in [
        (Some(&other), "CERTIFICATE_MISMATCH"),
        (None, "CERTIFICATE_REQUIRED"),
    ] {
        let denied = Answer::of(call(cert).await.unwrap()).await;
        assert_eq!(denied.status, 200);
        let response = &denied.body["response"];
        assert_eq!(response["response_code"], "401", "{:#}", denied.body);
        let body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["details"][0]["code"], code);
    }
    // A `client_certificate` without a certificate in it is a 400 naming the member.
    let broken = http()
        .post(server.http_url("/sideband/request"))
        .header("CLIENT-TOKEN", "kit-secret-0123456789abcdef")
        .json(&json!({
            "source_ip": "203.0.113.7", "source_port": "50000", "method": "GET",
            "url": "https://api.example.com:443/meme-game/api/v1/leaderboard",
            "headers": [], "http_version": "1.1", "client_certificate": {"kty": "EC"},
        }))
        .send()
        .await
        .unwrap();
    let broken = Answer::of(broken).await;
    assert_eq!(broken.status, 400);
    assert_eq!(
        broken.body["details"][0]["target"],
        "client_certificate.x5c"
    );
}

// ---------------------------------------------------------------------------------------------
// DPoP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broken_dpop_rule_is_a_401_with_its_own_detail_code() {
    let server = Server::start(&support::shipped(), &[]);
    let key = DpopKey::new();
    let access = key.bound_token();
    let authz = format!("DPoP {access}");
    let send = |proofs: Vec<String>| {
        let authz = authz.clone();
        let server = &server;
        async move {
            let mut headers: Vec<(&str, &str)> = vec![("authorization", &authz)];
            for p in &proofs {
                headers.push(("dpop", p));
            }
            authorize(server, "GET", LEADERBOARD, &headers).await
        }
    };

    let good = proof_by(&key, &proof_claims("GET", LEADERBOARD, &access));
    let ok = send(vec![good.clone()]).await;
    assert_eq!(ok.status, 200, "{:#}", ok.body);
    let recorded = decision(&server, &ok.id()).await;
    assert_eq!(
        recorded["token"]["binding"],
        json!({"method": "jkt", "result": "verified"})
    );
    assert_eq!(token_entry(&recorded, "dpop")["actual"], key.jkt());

    // `htu` is compared as base URLs are: case, default port, dot segments; no query.
    let loose = "https://API.example.com:443/meme-game/api/v1/./leaderboard?page=2";
    let normalised = send(vec![proof_by(&key, &proof_claims("GET", loose, &access))]).await;
    assert_eq!(normalised.status, 200, "{:#}", normalised.body);

    let other_key = DpopKey::new();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = proof_claims("GET", LEADERBOARD, &access);
        change(&mut claims);
        proof_by(&key, &claims)
    };
    let none_alg = format!(
        "{}.{}.",
        b64url(
            json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk})
                .to_string()
                .as_bytes()
        ),
        b64url(
            proof_claims("GET", LEADERBOARD, &access)
                .to_string()
                .as_bytes()
        )
    );
    let hs256 = signed(
        &json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": b64url(b"shared")}}),
        &proof_claims("GET", LEADERBOARD, &access),
        &EncodingKey::from_secret(b"shared"),
        Algorithm::HS256,
    );
    let no_typ = signed(
        &json!({"alg": "ES256", "jwk": key.jwk}),
        &proof_claims("GET", LEADERBOARD, &access),
        &key.signing,
        Algorithm::ES256,
    );
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("no proof", vec![], "DPOP_PROOF_REQUIRED"),
        ("replayed jti", vec![good.clone()], "DPOP_REPLAYED"),
        (
            "wrong htm",
            vec![with(&|c| c["htm"] = json!("POST"))],
            "DPOP_METHOD_MISMATCH",
        ),
        (
            "wrong htu",
            vec![with(&|c| {
                c["htu"] = json!("https://api.example.com/meme-game/api/v1/memes")
            })],
            "DPOP_URL_MISMATCH",
        ),
        (
            "stale iat",
            vec![with(&|c| c["iat"] = json!(unix_now() - 600))],
            "DPOP_STALE",
        ),
        (
            "iat far ahead",
            vec![with(&|c| c["iat"] = json!(unix_now() + 600))],
            "DPOP_STALE",
        ),
        (
            "wrong ath",
            vec![with(&|c| {
                c["ath"] = json!(b64url(&sha256(b"another token")))
            })],
            "DPOP_TOKEN_HASH_MISMATCH",
        ),
        (
            "signed with another key",
            vec![proof_by(
                &other_key,
                &proof_claims("GET", LEADERBOARD, &access),
            )],
            "DPOP_KEY_MISMATCH",
        ),
        ("alg none", vec![none_alg], "DPOP_PROOF_INVALID"),
        ("HS256", vec![hs256], "DPOP_PROOF_INVALID"),
        ("no typ", vec![no_typ], "DPOP_PROOF_INVALID"),
        (
            "two DPoP headers",
            vec![
                proof_by(&key, &proof_claims("GET", LEADERBOARD, &access)),
                proof_by(&key, &proof_claims("GET", LEADERBOARD, &access)),
            ],
            "DPOP_PROOF_INVALID",
        ),
        ("garbage", vec!["not.a.proof".into()], "DPOP_PROOF_INVALID"),
    ];
    for (name, proofs, code) in cases {
        let denied = send(proofs.clone()).await;
        assert_eq!(
            (denied.status, denied.detail()),
            (401, code),
            "{name}: {:#}",
            denied.body
        );
        let challenge = denied.header("www-authenticate");
        assert!(
            challenge.starts_with("DPoP realm=\"meme-game\", error=\"invalid_dpop_proof\"")
                && challenge.contains("algs=\"ES256"),
            "{name}: {challenge}"
        );
        let body = denied.body.to_string();
        for p in &proofs {
            let signature = p.rsplit('.').next().unwrap();
            assert!(
                signature.len() < 8 || !body.contains(signature),
                "{name}: the proof in the body"
            );
        }
        let recorded = decision(&server, &denied.id()).await;
        assert_eq!(recorded["token"]["binding"]["result"], code, "{name}");
    }

    // The proof is a credential: never in the decisions API or the log.
    let listed = server.get_text("/v1/decisions?limit=100").await;
    let signature = good.rsplit('.').next().unwrap();
    assert!(!listed.contains(signature), "a proof in the decisions API");
    assert!(!server.log().contains(signature), "a proof in the log");
    assert!(!listed.contains(&access), "the token in the decisions API");

    // `Authorization: DPoP` under `binding: none` counts as no bearer token at all.
    let unbound = support::candidate(&[("binding: allowed", "binding: none")]);
    let plain = Server::start(unbound.path(), &[]);
    let fresh = proof_by(&key, &proof_claims("GET", LEADERBOARD, &access));
    let missing = authorize(
        &plain,
        "GET",
        LEADERBOARD,
        &[("authorization", &authz), ("dpop", &fresh)],
    )
    .await;
    assert_eq!((missing.status, missing.detail()), (401, "REQUIRED_VALUE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_dpop_proofs_they_saw_through_redis() {
    let Some(mut redis) = support::redis::Redis::start() else {
        return;
    };
    let url = redis.url();
    // As long as the other Redis tests allow: two Envoys starting beside this test on two
    // cores have held a round trip past 200 ms, and a proof checked locally then was not
    // shared (the replay below passed on the other replica).
    let flags = ["--trace-store", url.as_str(), "--redis-timeout", "2s"];
    let (a, b) = (
        Server::start(&support::shipped(), &flags),
        Server::start(&support::shipped(), &flags),
    );
    let key = DpopKey::new();
    let access = key.bound_token();
    let authz = format!("DPoP {access}");
    let proof = proof_by(&key, &proof_claims("GET", LEADERBOARD, &access));
    let headers = [("authorization", authz.as_str()), ("dpop", proof.as_str())];
    let first = authorize(&a, "GET", LEADERBOARD, &headers).await;
    assert_eq!(first.status, 200, "{:#}", first.body);
    // Checked in Redis, not in replica a's own cache: otherwise b cannot know the proof.
    let metrics = a.get_text("/metrics").await;
    assert!(
        metrics.contains("portcullis_dpop_replay_checks_total{counted_by=\"shared\"} 1"),
        "{metrics}\n{}",
        a.log()
    );
    let again = authorize(&b, "GET", LEADERBOARD, &headers).await;
    assert_eq!((again.status, again.detail()), (401, "DPOP_REPLAYED"));

    // Redis down: each replica falls back to its own cache, and counts it.
    redis.stop();
    let fresh = proof_by(&key, &proof_claims("GET", LEADERBOARD, &access));
    let headers = [("authorization", authz.as_str()), ("dpop", fresh.as_str())];
    let alone = authorize(&a, "GET", LEADERBOARD, &headers).await;
    assert_eq!(alone.status, 200, "{:#}", alone.body);
    let replayed = authorize(&a, "GET", LEADERBOARD, &headers).await;
    assert_eq!(replayed.detail(), "DPOP_REPLAYED");
    let metrics = a.get_text("/metrics").await;
    assert!(
        metrics.contains("portcullis_dpop_replay_checks_total{counted_by=\"local_fallback\"} 1"),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------------
// The CLI: a bound token, a proof and a decision in a minute

fn portcullis(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .current_dir(MANIFEST)
        .args(args)
        .output()
        .expect("portcullis runs")
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn the_cli_mints_bound_tokens_makes_proofs_and_decides_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = ca("test CA");
    let (mine, other) = (client_cert(&issuer, "mine"), client_cert(&issuer, "other"));
    let (mine_path, other_path) = (dir.path().join("mine.pem"), dir.path().join("other.pem"));
    std::fs::write(&mine_path, &mine.pem).unwrap();
    std::fs::write(&other_path, &other.pem).unwrap();
    let (mine_path, other_path) = (mine_path.to_str().unwrap(), other_path.to_str().unwrap());
    let url = "https://localhost:8443/meme-game/api/v1/leaderboard";

    let bound = stdout(&portcullis(&[
        "token",
        "--sub",
        "user.0",
        "--bind-cert",
        mine_path,
    ]));
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(bound.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["cnf"]["x5t#S256"], mine.thumbprint());
    let authz = format!("Authorization: Bearer {bound}");
    let decide = |extra: &[&str]| {
        let mut args = vec!["decide", "--url", url, "-H", &authz];
        args.extend_from_slice(extra);
        portcullis(&args)
    };
    let allowed = decide(&["--client-cert", mine_path]);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stdout)
    );
    let denied = decide(&["--client-cert", other_path]);
    assert_eq!(denied.status.code(), Some(1));
    let shown: Value = serde_json::from_slice(&denied.stdout).unwrap();
    assert_eq!(shown["body"]["details"][0]["code"], "CERTIFICATE_MISMATCH");

    let key = DpopKey::new();
    let key_path = dir.path().join("dpop.pem");
    std::fs::write(&key_path, &key.pem).unwrap();
    let key_path = key_path.to_str().unwrap();
    let dpop_bound = stdout(&portcullis(&[
        "token",
        "--sub",
        "user.0",
        "--dpop-key",
        key_path,
    ]));
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(dpop_bound.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["cnf"]["jkt"], key.jkt());
    let proof = stdout(&portcullis(&[
        "dpop",
        "--key",
        key_path,
        "-X",
        "GET",
        "--url",
        url,
        "--token",
        &dpop_bound,
    ]));
    let authz = format!("Authorization: DPoP {dpop_bound}");
    let with_proof = portcullis(&["decide", "--url", url, "-H", &authz, "--dpop", &proof]);
    assert!(
        with_proof.status.success(),
        "{}",
        String::from_utf8_lossy(&with_proof.stdout)
    );
    let shown: Value = serde_json::from_slice(&with_proof.stdout).unwrap();
    assert_eq!(shown["token"]["binding"]["result"], "verified");
    // The CLI decides with a fresh engine each time, so the proof can be shown to be for
    // this URL only: another URL is refused.
    let elsewhere = "https://localhost:8443/meme-game/api/v1/memes";
    let refused = portcullis(&["decide", "--url", elsewhere, "-H", &authz, "--dpop", &proof]);
    assert_eq!(refused.status.code(), Some(1));
    let shown: Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(shown["body"]["details"][0]["code"], "DPOP_URL_MISMATCH");
}

// ---------------------------------------------------------------------------------------------
// Envoy terminating mutual TLS, passing the peer certificate (examples/envoy/mtls.yaml)

/// A CA for client certificates, two client certificates from it, and a server certificate
/// for 127.0.0.1 from another CA, written as `certs/` under `dir` for the gateway.
struct GatewayPki {
    server_ca: CertifiedIssuer<'static, KeyPair>,
    mine: Leaf,
    other: Leaf,
}

impl GatewayPki {
    fn new(dir: &Path) -> GatewayPki {
        let issuer = ca("client CA");
        let server_ca = ca("server CA");
        let server_cert = leaf(
            &server_ca,
            "gateway",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::write(certs.join("server.pem"), &server_cert.pem).unwrap();
        std::fs::write(certs.join("server.key"), &server_cert.key).unwrap();
        std::fs::write(certs.join("client-ca.pem"), issuer.pem()).unwrap();
        GatewayPki {
            mine: client_cert(&issuer, "mine"),
            other: client_cert(&issuer, "other"),
            server_ca,
        }
    }

    /// An HTTPS client trusting the gateway, presenting `cert` if given.
    fn client(&self, cert: Option<&Leaf>) -> reqwest::Client {
        let root = reqwest::Certificate::from_pem(self.server_ca.pem().as_bytes()).unwrap();
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .add_root_certificate(root);
        if let Some(cert) = cert {
            let identity = format!("{}{}", cert.key, cert.pem);
            builder = builder.identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap());
        }
        builder.build().unwrap()
    }
}

/// GET `url` with `Host: api.example.com` and `Authorization: Bearer token`.
async fn get_as(client: reqwest::Client, url: &str, token: &str) -> Answer {
    let response = client
        .get(url)
        .header("host", HOST)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    Answer::of(response).await
}

/// Waits (bounded) until something accepts connections on `port`.
async fn wait_for_port(port: u16) {
    let deadline = Instant::now() + STARTUP;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listened on {port} in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An upstream that answers 200 to everything and counts what reached it.
async fn upstream() -> (Arc<AtomicUsize>, SocketAddr) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            "upstream"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (seen, addr)
}

fn replace_once(config: &mut String, from: &str, to: &str) {
    assert_eq!(
        config.matches(from).count(),
        1,
        "`{from}` once in the example"
    );
    *config = config.replace(from, to);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_with_mutual_tls_passes_the_certificate_a_bound_token_needs() {
    let Some(envoy) = support::gateway::envoy() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = GatewayPki::new(dir.path());
    let (mine, other) = (&pki.mine, &pki.other);

    let policies = support::candidate(&[("binding: allowed", "binding: required")]);
    let portcullis = Server::start(policies.path(), &[]);
    let (reached, upstream_addr) = upstream().await;
    let free = support::redis::free_port;
    let (listen, admin) = (free(), free());
    let mut config =
        std::fs::read_to_string(Path::new(MANIFEST).join("examples/envoy/mtls.yaml")).unwrap();
    for (from, to) in [
        ("port_value: 8443", listen),
        ("port_value: 9901", admin),
        ("port_value: 9000", upstream_addr.port()),
        ("port_value: 50051", portcullis.grpc.port()),
    ] {
        replace_once(&mut config, from, &format!("port_value: {to}"));
    }
    std::fs::write(dir.path().join("envoy.yaml"), &config).unwrap();
    let mut command = Command::new(&envoy);
    command
        .current_dir(dir.path())
        .args([
            "-c",
            "envoy.yaml",
            "--disable-hot-restart",
            "--concurrency",
            "1",
        ])
        .args(["--log-level", "info"])
        .stdout(Stdio::null());
    let _envoy = support::gateway::Proc::spawn("envoy", &mut command, dir.path().join("envoy.log"));
    let deadline = Instant::now() + STARTUP;
    loop {
        let ready = http()
            .get(format!("http://127.0.0.1:{admin}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready && TcpStream::connect(("127.0.0.1", listen)).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "envoy was not ready in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let client = |cert: Option<&Leaf>| pki.client(cert);
    let url = format!("https://127.0.0.1:{listen}/meme-game/api/v1/leaderboard");
    let call = |client: reqwest::Client, token: String| {
        let url = url.clone();
        async move { get_as(client, &url, &token).await }
    };

    let bound = cert_bound_token(mine);
    let ok = call(client(Some(mine)), bound.clone()).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(reached.load(Ordering::SeqCst), 1);

    let wrong = call(client(Some(other)), bound.clone()).await;
    assert_eq!(
        (wrong.status, wrong.detail()),
        (401, "CERTIFICATE_MISMATCH"),
        "{:?}",
        wrong.body
    );
    assert!(
        wrong
            .header("www-authenticate")
            .contains("error=\"invalid_token\""),
        "{:?}",
        wrong.headers
    );
    let recorded = decision(&portcullis, &wrong.id()).await;
    let entry = token_entry(&recorded, "token.cnf.x5t#S256");
    assert_eq!(entry["expected"], mine.thumbprint());
    assert_eq!(entry["actual"], other.thumbprint());

    let none = call(client(None), bound.clone()).await;
    assert_eq!(
        (none.status, none.detail()),
        (401, "CERTIFICATE_REQUIRED"),
        "{:?}",
        none.body
    );

    let unbound = call(client(Some(mine)), token(None)).await;
    assert_eq!(
        (unbound.status, unbound.detail()),
        (401, "BINDING_REQUIRED")
    );
    assert_eq!(
        reached.load(Ordering::SeqCst),
        1,
        "a denied request reached the upstream"
    );

    // DPoP through the same Envoy: the `DPoP` header reaches Portcullis untouched.
    let key = DpopKey::new();
    let access = key.bound_token();
    let proof = proof_by(&key, &proof_claims("GET", LEADERBOARD, &access));
    let dpop = client(Some(mine))
        .get(&url)
        .header("host", HOST)
        .header("authorization", format!("DPoP {access}"))
        .header("dpop", proof)
        .send()
        .await
        .unwrap();
    let dpop = Answer::of(dpop).await;
    assert_eq!(dpop.status, 200, "{:?}", dpop.body);
    assert_eq!(reached.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------------------------
// nginx terminating mutual TLS, passing the certificate to /v1/authorize (examples/nginx/mtls.conf)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_with_mutual_tls_passes_the_certificate_in_a_trusted_header() {
    let Some(nginx) = support::gateway::nginx() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("nginx");
    let pki = GatewayPki::new(&prefix);
    let portcullis = Server::start(
        &support::shipped(),
        &[
            "--client-cert-header",
            "X-Client-Cert",
            "--trusted-gateways",
            "127.0.0.1",
        ],
    );
    let (reached, upstream_addr) = upstream().await;
    let listen = support::redis::free_port();
    let mut config =
        std::fs::read_to_string(Path::new(MANIFEST).join("examples/nginx/mtls.conf")).unwrap();
    replace_once(
        &mut config,
        "listen 127.0.0.1:8443 ssl;",
        &format!("listen 127.0.0.1:{listen} ssl;"),
    );
    replace_once(
        &mut config,
        "server 127.0.0.1:8080;",
        &format!("server {};", portcullis.http),
    );
    replace_once(
        &mut config,
        "server 127.0.0.1:9000;",
        &format!("server {upstream_addr};"),
    );
    let config_path = prefix.join("nginx.conf");
    std::fs::write(&config_path, config).unwrap();
    let log = prefix.join("error.log");
    // One process that stays this user (see tests/gateways.rs), killed for good on drop.
    let mut command = Command::new(&nginx);
    command
        .arg("-p")
        .arg(&prefix)
        .arg("-e")
        .arg(&log)
        .arg("-c")
        .arg(&config_path)
        .args(["-g", "daemon off; master_process off;"])
        .stdout(Stdio::null());
    let mut nginx_proc =
        support::gateway::Proc::spawn("nginx", &mut command, prefix.join("nginx.stderr"));
    // nginx logs to its error.log; show that one if the test fails.
    nginx_proc.log = log;
    wait_for_port(listen).await;

    let url = format!("https://127.0.0.1:{listen}/meme-game/api/v1/leaderboard");
    let bound = cert_bound_token(&pki.mine);
    let ok = get_as(pki.client(Some(&pki.mine)), &url, &bound).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(reached.load(Ordering::SeqCst), 1);

    // nginx passes the subrequest's challenge on, not its body: the detail is in the record.
    let wrong = get_as(pki.client(Some(&pki.other)), &url, &bound).await;
    assert_eq!(wrong.status, 401);
    assert!(
        wrong
            .header("www-authenticate")
            .contains("Client certificate mismatch"),
        "{:?}",
        wrong.headers
    );
    let recorded = decision(&portcullis, &wrong.id()).await;
    assert_eq!(
        recorded["body"]["details"][0]["code"],
        "CERTIFICATE_MISMATCH"
    );
    assert_eq!(
        token_entry(&recorded, "token.cnf.x5t#S256")["actual"],
        pki.other.thumbprint()
    );

    // Without a certificate nginx drops the header, whatever the client put in it.
    let spoofed = pki
        .client(None)
        .get(&url)
        .header("host", HOST)
        .header("x-client-cert", pki.mine.escaped())
        .bearer_auth(&bound)
        .send()
        .await
        .unwrap();
    let spoofed = Answer::of(spoofed).await;
    assert_eq!(spoofed.status, 401);
    let recorded = decision(&portcullis, &spoofed.id()).await;
    assert_eq!(
        recorded["body"]["details"][0]["code"],
        "CERTIFICATE_REQUIRED"
    );
    assert_eq!(
        reached.load(Ordering::SeqCst),
        1,
        "a denied request reached the upstream"
    );
}
