//! Decision and matching benchmarks (see BENCHMARKS.md for targets and results).
//!
//! Run with `cargo bench --bench decision`.
//!
//! - `decide/cached_token`: a whole allow decision on the shipped example policies, with a
//!   token already in the verified-token cache.
//! - `decide/fresh_rs256_token`: the same, with a token whose RS256 signature is verified on
//!   every iteration (the tokens cycle through far more distinct tokens than the cache holds).
//! - `match/services_10`, `match/services_10000`: URL parsing, base-URL match and operation
//!   match against generated policy sets of 10 and 10,000 services with 10 operations each,
//!   requests going to 10 services of the set.
//! - `compile/services_10000`: compiling 10,000 services × 10 operations (100 files of YAML
//!   already in memory, key files served from memory), as a reload does.
//! - `match/services_10000_spread`: the same on 10,000 services with requests spread over
//!   1,000 of them (cache-cold lookups).
//! - `binding/unbound`, `binding/certificate_bound`: the cached-token allow decision with an
//!   unbound token, and with a token bound to the client certificate the gateway passed
//!   (URL-encoded PEM, its thumbprint cached): the difference is the certificate check.
//! - `binding/dpop_es256`: the same with a DPoP-bound token and a new ES256 proof each
//!   iteration (proofs made beforehand, untimed; a fresh replay cache per sample), and
//!   `binding/es256_verify`, one ES256 verification of a proof, to compare it with;
//!   `binding/verify_proof`, the proof checks alone (no replay cache, no trace);
//!   `binding/es256_verify_parsed`, the verification with the key parsed and the signature
//!   decoded beforehand; `binding/unbound_after_verify`, that verification then the unbound
//!   decision; `binding/dpop_over_floor`, a DPoP decision minus the one before, paired per
//!   iteration: what the DPoP check costs beyond one verification.

use std::cell::Cell;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::decision::Step;
use portcullis::route::OperationLookup;
use portcullis::{Decision, DecisionRequest, Engine, Outcome, PolicyOptions, PolicySet};

#[path = "support/generated.rs"]
mod generated;

use generated::OPERATIONS;

/// The allocator `portcullis serve` uses, so that figures match the server binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const POLICY_DIR: &str = "policies";
const PRIVATE_KEY: &str = "policies/keys/meme-game.dev-key.pem";
const JWKS: &str = "policies/keys/meme-game.jwks.json";
const KID: &str = "meme-game-dev-rsa-1";
const URL: &str = "https://localhost:8443/meme-game/api/v1/users/user.0/answers";

/// Distinct tokens cycled through by `decide/fresh_rs256_token`.
const FRESH_TOKENS: usize = 4096;
/// Token cache capacity for `decide/fresh_rs256_token`; far below `FRESH_TOKENS`, so a token
/// has always been evicted by the time it comes round again.
const FRESH_CACHE_CAPACITY: usize = 64;
/// Request URLs cycled through by the matching benchmarks.
const MATCH_URLS: usize = 1000;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// An RS256 token for `user.0` that `submit-answer` allows; `jti` makes it distinct.
fn sign_token(key: &EncodingKey, jti: usize) -> String {
    let now = unix_now();
    let claims = serde_json::json!({
        "iss": "https://auth.example.com",
        "aud": "meme-game",
        "sub": "user.0",
        "client_id": "meme-game-web",
        "groups": ["players"],
        "scope": "answers:write",
        "iat": now,
        "exp": now + 3600,
        "jti": format!("bench-{jti}"),
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.to_owned());
    jsonwebtoken::encode(&header, &claims, key).expect("the token is signed")
}

fn encoding_key() -> EncodingKey {
    let pem = std::fs::read(PRIVATE_KEY).expect("the development key is readable");
    EncodingKey::from_rsa_pem(&pem).expect("the development key is an RSA key")
}

fn decide(engine: &Engine, policies: &PolicySet, authorization: &str) -> Decision {
    decide_with(engine, policies, &[("authorization", authorization)], None)
}

fn decide_with(
    engine: &Engine,
    policies: &PolicySet,
    headers: &[(&str, &str)],
    client_cert: Option<&str>,
) -> Decision {
    engine.decide(
        policies,
        &DecisionRequest {
            method: "POST",
            url: URL,
            headers,
            client: None,
            client_cert,
        },
        SystemTime::now(),
    )
}

/// [`sign_token`] with a `cnf` claim.
fn sign_bound_token(key: &EncodingKey, cnf: serde_json::Value) -> String {
    let now = unix_now();
    let claims = serde_json::json!({
        "iss": "https://auth.example.com", "aud": "meme-game", "sub": "user.0",
        "client_id": "meme-game-web", "groups": ["players"], "scope": "answers:write",
        "iat": now, "exp": now + 3600, "cnf": cnf,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.to_owned());
    jsonwebtoken::encode(&header, &claims, key).expect("the token is signed")
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

/// A DPoP client's P-256 key: its signing key, public JWK and RFC 7638 thumbprint.
fn dpop_key() -> (EncodingKey, serde_json::Value, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = key.public_key_raw();
    let (x, y) = (b64url(&point[1..33]), b64url(&point[33..]));
    let jkt = b64url(&sha256(
        format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#).as_bytes(),
    ));
    let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
    let signing = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    (signing, jwk, jkt)
}

/// A proof for `POST URL` with `access_token`, id `jti`.
fn proof(signing: &EncodingKey, jwk: &serde_json::Value, access_token: &str, jti: u64) -> String {
    let header = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
    let claims = serde_json::json!({
        "jti": format!("bench-{jti}"), "htm": "POST", "htu": URL, "iat": unix_now(),
        "ath": b64url(&sha256(access_token.as_bytes())),
    });
    let message = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), signing, Algorithm::ES256).unwrap();
    format!("{message}.{signature}")
}

fn binding_result(decision: &Decision) -> Option<&str> {
    decision
        .token
        .as_ref()
        .and_then(|t| t.binding.as_ref())
        .map(|b| b.result.as_ref())
}

fn bench_binding(c: &mut Criterion) {
    let policies = portcullis::load_dir(POLICY_DIR.as_ref(), &PolicyOptions::default())
        .expect("the example policies compile");
    let key = encoding_key();
    let mut group = c.benchmark_group("binding");

    let engine = Engine::default();
    let unbound = format!("Bearer {}", sign_token(&key, 0));
    let first = decide(&engine, &policies, &unbound);
    assert_allowed(&first);
    assert_eq!(binding_result(&first), Some("unbound"));
    group.bench_function("unbound", |b| {
        b.iter(|| decide(&engine, &policies, black_box(&unbound)))
    });

    let cert = rcgen::generate_simple_self_signed(vec!["client.bench".into()]).unwrap();
    let escaped: String =
        percent_encoding::utf8_percent_encode(&cert.cert.pem(), percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    let bound = format!(
        "Bearer {}",
        sign_bound_token(
            &key,
            serde_json::json!({"x5t#S256": b64url(&sha256(cert.cert.der()))})
        )
    );
    let headers = [("authorization", bound.as_str())];
    let first = decide_with(&engine, &policies, &headers, Some(&escaped));
    assert_allowed(&first);
    assert_eq!(binding_result(&first), Some("verified"));
    group.bench_function("certificate_bound", |b| {
        b.iter(|| decide_with(&engine, &policies, black_box(&headers), Some(&escaped)))
    });

    let (signing, jwk, jkt) = dpop_key();
    let access = sign_bound_token(&key, serde_json::json!({ "jkt": jkt }));
    let authorization = format!("DPoP {access}");
    let jti = Cell::new(0u64);
    // `n` proofs with ids never used before.
    let fresh_proofs = |n: u64| -> Vec<String> {
        (0..n)
            .map(|_| {
                jti.set(jti.get() + 1);
                proof(&signing, &jwk, &access, jti.get())
            })
            .collect()
    };
    // An engine with a fresh replay cache and the token already cached (untimed).
    let dpop_engine = || {
        let engine = Engine::default();
        let warm = proof(&signing, &jwk, &access, u64::MAX);
        let headers = [("authorization", authorization.as_str()), ("dpop", &warm)];
        assert_allowed(&decide_with(&engine, &policies, &headers, None));
        engine
    };
    // Proofs one engine decides before it is replaced: all are within the window, so a
    // replay cache that held more would be full and refuse them (as a server's would).
    let per_engine = portcullis::token::replay::DEFAULT_REPLAY_CAPACITY as u64 - 1024;
    // Calls `each` with an engine and batches of up to 512 fresh proofs, `iters` in all: made
    // untimed, so that none is older than the window when it is decided on however slowly a
    // loaded machine signs them; the engine replaced before its replay cache fills.
    let in_batches = |iters: u64, each: &mut dyn FnMut(&Engine, &[String])| {
        let mut engine = dpop_engine();
        let mut decided = 0;
        let mut left = iters;
        while left > 0 {
            let batch = left.min(512);
            left -= batch;
            let proofs = fresh_proofs(batch);
            if decided + batch > per_engine {
                (engine, decided) = (dpop_engine(), 0);
            }
            decided += batch;
            each(&engine, &proofs);
        }
    };
    group.bench_function("dpop_es256", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            in_batches(iters, &mut |engine, proofs| {
                let started = Instant::now();
                let mut allowed = 0;
                for p in proofs {
                    let headers = [
                        ("authorization", authorization.as_str()),
                        ("dpop", p.as_str()),
                    ];
                    let decision = decide_with(engine, &policies, black_box(&headers), None);
                    allowed += usize::from(decision.is_allowed());
                }
                elapsed += started.elapsed();
                if allowed != proofs.len() {
                    let headers = [
                        ("authorization", authorization.as_str()),
                        ("dpop", &proofs[0]),
                    ];
                    let again = decide_with(engine, &policies, &headers, None);
                    panic!(
                        "{} of {} proofs refused, e.g. {:?}",
                        proofs.len() - allowed,
                        proofs.len(),
                        again.body
                    );
                }
            });
            elapsed
        })
    });

    // The proof alone, as `token::dpop::verify_proof` checks it (key from the header cache,
    // signature, claims), without the engine's replay cache and trace; `now` fixed, so the
    // same proofs serve every iteration.
    let proofs: Vec<String> = (0..512)
        .map(|i| proof(&signing, &jwk, &access, 1_000_000 + i))
        .collect();
    let keys = portcullis::token::dpop::ProofKeys::default();
    let url_matches = |htu: &str| htu == URL;
    let request = portcullis::token::dpop::ProofRequest {
        method: "POST",
        url_matches: &url_matches,
        access_token_sha256: &portcullis::token::dpop::token_digest(&access),
        now: unix_now() as i64,
        window: 60,
        replays: None,
    };
    let next = Cell::new(0usize);
    group.bench_function("verify_proof", |b| {
        b.iter(|| {
            let i = next.get();
            next.set((i + 1) % proofs.len());
            portcullis::token::dpop::verify_proof(black_box(&proofs[i]), &request, &keys)
                .expect("the proof verifies")
        })
    });

    // One ES256 verification of a proof, as the DPoP check makes it, cycling through the same
    // 512 proofs as `verify_proof`: verifying one signature over and over would let the
    // variable-time parts of ECDSA verification (the inverse of `s`, the wNAF multiplication)
    // run on well-predicted branches, which no real client's proofs give.
    let signed: Vec<(&str, &str)> = proofs.iter().map(|p| p.rsplit_once('.').unwrap()).collect();
    let decoding =
        jsonwebtoken::DecodingKey::from_jwk(&serde_json::from_value(jwk.clone()).unwrap()).unwrap();
    for (message, signature) in &signed {
        assert!(
            jsonwebtoken::crypto::verify(
                signature,
                message.as_bytes(),
                &decoding,
                Algorithm::ES256
            )
            .unwrap()
        );
    }
    let next = Cell::new(0usize);
    group.bench_function("es256_verify", |b| {
        b.iter(|| {
            let i = next.get();
            next.set((i + 1) % signed.len());
            let (message, signature) = signed[i];
            jsonwebtoken::crypto::verify(
                black_box(signature),
                black_box(message.as_bytes()),
                &decoding,
                Algorithm::ES256,
            )
        })
    });

    // The same verifications with the key parsed once (aws-lc's `ParsedPublicKey`, as the
    // proof check keeps it per client key) and the signature already decoded: the least one
    // ES256 verification costs, which the DPoP target is measured against.
    let point: Vec<u8> = [
        &[4u8][..],
        &b64url_decode(jwk["x"].as_str().unwrap()),
        &b64url_decode(jwk["y"].as_str().unwrap()),
    ]
    .concat();
    let parsed = aws_lc_rs::signature::ParsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        point,
    )
    .unwrap();
    let raw: Vec<(&str, Vec<u8>)> = signed
        .iter()
        .map(|(message, signature)| (*message, b64url_decode(signature)))
        .collect();
    for (message, signature) in &raw {
        parsed.verify_sig(message.as_bytes(), signature).unwrap();
    }
    let next = Cell::new(0usize);
    group.bench_function("es256_verify_parsed", |b| {
        b.iter(|| {
            let i = next.get();
            next.set((i + 1) % raw.len());
            let (message, signature) = &raw[i];
            parsed.verify_sig(black_box(message.as_bytes()), black_box(signature))
        })
    });

    // The unbound decision right after one such verification, in one loop: what a decision
    // costs with the caches as a verification leaves them (its tables and stack evict the
    // decision's memory), the floor under `dpop_es256` with no proof checked at all.
    let next = Cell::new(0usize);
    group.bench_function("unbound_after_verify", |b| {
        b.iter(|| {
            let i = next.get();
            next.set((i + 1) % raw.len());
            let (message, signature) = &raw[i];
            parsed
                .verify_sig(black_box(message.as_bytes()), black_box(signature))
                .unwrap();
            decide(&engine, &policies, black_box(&unbound))
        })
    });

    // The target's own measure, paired so that the machine's drift between benchmarks (±2 µs
    // between runs of the two above) cancels: each iteration times one `dpop_es256` decision
    // and, next to it, one `unbound_after_verify` (a verification and the unbound decision);
    // the benchmark's time is the first minus the second, what the DPoP check costs beyond
    // one verification.
    // Every sample as long as the others: in criterion's linear mode the first samples hold a
    // few dozen iterations, whose difference one interrupt in either half can turn negative.
    group.sampling_mode(criterion::SamplingMode::Flat);
    // `_proof_read`: the same with the proof's bytes read (untimed) just before, as a server's
    // request parsing has just read them; in `dpop_over_floor` they come from the batch made
    // before, and their first touch is timed as the DPoP check's.
    for (name, proof_read) in [
        ("dpop_over_floor", false),
        ("dpop_over_floor_proof_read", true),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut dpop = Duration::ZERO;
                let mut floor = Duration::ZERO;
                in_batches(iters, &mut |bound_engine, proofs| {
                    for (i, p) in proofs.iter().enumerate() {
                        let (message, signature) = &raw[i % raw.len()];
                        if proof_read {
                            black_box(p.bytes().fold(0u8, |sum, b| sum.wrapping_add(b)));
                        }
                        let started = Instant::now();
                        parsed
                            .verify_sig(black_box(message.as_bytes()), black_box(signature))
                            .unwrap();
                        // Each decision dropped inside its own time, as `iter` drops it.
                        let unbound_allowed =
                            decide(&engine, &policies, black_box(&unbound)).is_allowed();
                        let between = Instant::now();
                        let headers = [
                            ("authorization", authorization.as_str()),
                            ("dpop", p.as_str()),
                        ];
                        let bound_allowed =
                            decide_with(bound_engine, &policies, black_box(&headers), None)
                                .is_allowed();
                        let ended = Instant::now();
                        assert!(unbound_allowed && bound_allowed);
                        floor += between - started;
                        dpop += ended - between;
                    }
                });
                // A sample the machine's noise made negative counts as 1 ns (criterion refuses 0):
                // that can only raise the estimate.
                dpop.saturating_sub(floor).max(Duration::from_nanos(1))
            })
        });
    }
    group.finish();
}

fn b64url_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

/// Whether the decision took the token from the verified-token cache.
fn token_was_cached(decision: &Decision) -> bool {
    decision
        .trace
        .iter()
        .find(|e| e.step == Step::Token)
        .and_then(|e| e.detail.as_deref())
        .expect("the decision has a token trace entry")
        .contains("(cached)")
}

fn assert_allowed(decision: &Decision) {
    assert!(
        decision.outcome == Outcome::Allow && decision.status == 200,
        "the benchmark request must be allowed, got {} {:?}: {}",
        decision.status,
        decision.detail_code(),
        decision.audit
    );
    assert_eq!(decision.operation.as_deref(), Some("submit-answer"));
    // base URL + token + 4 rules of `submit-answer`
    assert!(
        decision.trace.len() >= 6,
        "the trace has {} entries",
        decision.trace.len()
    );
}

fn bench_decide(c: &mut Criterion) {
    let policies = portcullis::load_dir(POLICY_DIR.as_ref(), &PolicyOptions::default())
        .expect("the example policies compile");
    let key = encoding_key();
    let mut group = c.benchmark_group("decide");

    // 1. Cached token.
    let engine = Engine::default();
    let authorization = format!("Bearer {}", sign_token(&key, 0));
    let first = decide(&engine, &policies, &authorization);
    assert_allowed(&first);
    assert!(!token_was_cached(&first));
    let second = decide(&engine, &policies, &authorization);
    assert_allowed(&second);
    assert!(
        token_was_cached(&second),
        "the warmed token must hit the cache"
    );
    group.bench_function("cached_token", |b| {
        b.iter(|| decide(&engine, &policies, black_box(&authorization)))
    });

    // 2. A token never seen before (as far as the cache knows): the signature is verified on
    // every iteration. Signing 4096 RSA tokens takes a few seconds; use both cores.
    let started = Instant::now();
    let authorizations: Vec<String> = std::thread::scope(|s| {
        let halves: Vec<_> = [0..FRESH_TOKENS / 2, FRESH_TOKENS / 2..FRESH_TOKENS]
            .into_iter()
            .map(|range| {
                let key = &key;
                s.spawn(move || {
                    range
                        .map(|i| format!("Bearer {}", sign_token(key, i + 1)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        halves
            .into_iter()
            .flat_map(|h| h.join().expect("signing does not panic"))
            .collect()
    });
    eprintln!(
        "signed {} RS256 tokens in {:.2?}",
        authorizations.len(),
        started.elapsed()
    );
    // The token cache is scan-resistant: the tokens that first fill an empty cache stay in
    // its "hot" part until a re-used token displaces them, while tokens seen once pass through
    // its small "cold" part. Fill it with tokens the benchmark never sends, so that no
    // benchmark token becomes hot.
    let engine = Engine::new(FRESH_CACHE_CAPACITY);
    for i in 0..2 * FRESH_CACHE_CAPACITY {
        let filler = format!("Bearer {}", sign_token(&key, FRESH_TOKENS + 1 + i));
        assert_allowed(&decide(&engine, &policies, &filler));
    }
    // Two passes: the second proves that a token is evicted before it comes round again.
    for pass in 0..2 {
        for authorization in &authorizations {
            let decision = decide(&engine, &policies, authorization);
            assert_allowed(&decision);
            assert!(
                !token_was_cached(&decision),
                "pass {pass}: a token came from the cache"
            );
        }
    }
    let next = Cell::new(0usize);
    let cache_hits = Cell::new(0usize);
    group.bench_function("fresh_rs256_token", |b| {
        b.iter(|| {
            let i = next.get();
            next.set((i + 1) % authorizations.len());
            let decision = decide(&engine, &policies, black_box(&authorizations[i]));
            // A substring search of ~100 bytes: noise next to an RSA verification.
            cache_hits.set(cache_hits.get() + usize::from(token_was_cached(&decision)));
            decision
        })
    });
    assert_eq!(
        cache_hits.get(),
        0,
        "every iteration of decide/fresh_rs256_token must verify a signature"
    );
    group.finish();
}

fn compile_generated(services: usize) -> PolicySet {
    let sources = generated::sources(services);
    let (set, elapsed) = generated::compile(&sources, Path::new(JWKS));
    let bytes: usize = sources.iter().map(|s| s.text.len()).sum();
    eprintln!(
        "compiled {services} services x {OPERATIONS} operations ({} files, {:.1} MiB of YAML) in {elapsed:.2?}",
        sources.len(),
        bytes as f64 / (1024.0 * 1024.0)
    );
    assert_eq!(set.services.len(), services);
    set
}

fn match_one(set: &PolicySet, url: &str, method: &str) -> OperationLookup {
    let url = portcullis::parse_request_url(url).expect("the URL parses");
    let base = set.match_service(&url).expect("a service matches");
    set.match_operation(base, method, &url)
}

fn bench_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("match");
    // (services in the set, services the requests go to): the first two compare the same
    // work on a small and a large set; the third spreads requests over a thousand services,
    // so that most lookups miss the CPU caches.
    let mut sets = std::collections::HashMap::new();
    for (services, targets, id) in [
        (10, 10, "services_10"),
        (10_000, 10, "services_10000"),
        (10_000, 1000, "services_10000_spread"),
    ] {
        let set = sets
            .entry(services)
            .or_insert_with(|| compile_generated(services));
        let set = &*set;
        let urls = generated::requests(services, targets, MATCH_URLS);
        for r in &urls {
            let parsed = portcullis::parse_request_url(&r.url).expect("the URL parses");
            let base = set.match_service(&parsed).expect("a service matches");
            assert_eq!(
                &*set.services[base.service].name,
                format!("svc-{}", r.service)
            );
            match set.match_operation(base, r.method, &parsed) {
                OperationLookup::Found(found) => {
                    assert_eq!(found.operation, r.operation, "{}", r.url)
                }
                other => panic!("{} {}: {other:?}", r.method, r.url),
            }
        }
        let next = Cell::new(0usize);
        group.bench_function(id, |b| {
            b.iter(|| {
                let i = next.get();
                next.set((i + 1) % urls.len());
                let r = &urls[i];
                match_one(set, black_box(&r.url), black_box(r.method))
            })
        });
    }
    group.finish();
}

/// Compiling a large policy set: what a reload costs (issue 4: ≤ 1 s for 10,000 × 10).
fn bench_compile(c: &mut Criterion) {
    let sources = generated::sources(10_000);
    let read_file = generated::key_file_reader(Path::new(JWKS));
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function("services_10000", |b| {
        b.iter(|| {
            portcullis::compile(black_box(&sources), &read_file, &PolicyOptions::default())
                .expect("the generated policies compile")
        })
    });
    group.finish();
}

criterion_group! {
    name = compile;
    config = Criterion::default().measurement_time(Duration::from_secs(15));
    targets = bench_compile
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(60)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    targets = bench_decide, bench_match, bench_binding
}
criterion_main!(benches, compile);
