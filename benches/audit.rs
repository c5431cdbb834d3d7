//! The audit line of a decision (issue 18, target 4): what writing it into the server's log
//! buffer costs, through tracing-subscriber's JSON formatter (the `tracing` event) and through
//! Portcullis' own writer of the fixed audit schema (`portcullis serve`'s path).
//!
//! Run with `cargo bench --bench audit`. Both write into a real log buffer whose writer
//! thread writes to `io::sink()`; the decision is a 403 of the example policies with a
//! signed token, as in the load bench's mix.

use std::hint::black_box;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::server::{audit, log};
use portcullis::{Decision, DecisionRequest, Engine, PolicyOptions};
use tracing_subscriber::fmt::MakeWriter as _;

/// The allocator `portcullis serve` uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A viewer submitting an answer: a 403 naming the rule, with a subject and a long message.
fn denied() -> Decision {
    let policies = portcullis::load_dir("policies".as_ref(), &PolicyOptions::default())
        .expect("the example policies compile");
    let pem = std::fs::read("policies/keys/meme-game.dev-key.pem").expect("the development key");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://auth.example.com", "aud": "meme-game", "sub": "user.1",
        "client_id": "meme-game-web", "groups": ["viewers"], "scope": "memes:read",
        "iat": now, "exp": now + 3600,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("meme-game-dev-rsa-1".into());
    let token =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap();
    let authorization = format!("Bearer {token}");
    let decision = Engine::default().decide(
        &policies,
        &DecisionRequest {
            method: "POST",
            url: "https://localhost:8443/meme-game/api/v1/users/user.0/answers",
            headers: &[("authorization", &authorization)],
            client: Some("10.0.0.7".parse().unwrap()),
            client_cert: None,
        },
        SystemTime::now(),
    );
    assert_eq!(decision.status, 403, "{}", decision.audit);
    decision
}

fn benches(c: &mut Criterion) {
    let decision = denied();
    let (buffer, _guard) = log::start(std::io::sink());
    let mut group = c.benchmark_group("audit");
    let mut line = Vec::new();
    audit::write_line(&mut line, &decision, "ext_authz", SystemTime::now());
    eprintln!("audit line: {} bytes", line.len());

    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(buffer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        group.bench_function("tracing_json", |b| {
            b.iter(|| audit::event(black_box(&decision), "ext_authz"))
        });
    });
    group.bench_function("own_writer", |b| {
        b.iter(|| {
            line.clear();
            audit::write_line(
                &mut line,
                black_box(&decision),
                "ext_authz",
                SystemTime::now(),
            );
            buffer.make_writer().write_all(&line).unwrap();
        })
    });
    group.finish();
}

criterion_group!(audit_line, benches);
criterion_main!(audit_line);
