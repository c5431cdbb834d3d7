//! Decoding an ext_authz `CheckRequest` (issue 18): the protobuf message Envoy sends for
//! every call, with the headers of a browser request and a bearer token.
//!
//! Run with `cargo bench --bench ext_authz`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::proto::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttributeRequest,
};
use portcullis::proto::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use prost::Message as _;

/// The allocator `portcullis serve` uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The headers Envoy puts in a Check for a browser's POST with a token (pseudo-headers
/// included), as in the load bench's mix.
fn check_request() -> CheckRequest {
    let token = format!(
        "eyJhbGciOiJSUzI1NiIsImtpZCI6Im1lbWUtZ2FtZS1kZXYtcnNhLTEifQ.{}.{}",
        "e".repeat(300),
        "s".repeat(342)
    );
    let headers = [
        (":authority", "localhost:8443"),
        (":method", "POST"),
        (":path", "/meme-game/api/v1/users/user.0/answers"),
        (":scheme", "https"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("authorization", &format!("Bearer {token}")),
        ("content-length", "29"),
        ("content-type", "application/json"),
        ("user-agent", "meme-game-web/2.3 (bench)"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "6d2f8f6e-3f55-4c2b-9a1e-1f0c2b7d9e10"),
    ];
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttributeRequest {
                time: None,
                http: Some(HttpRequest {
                    id: "1234567890123456789".into(),
                    method: "POST".into(),
                    scheme: "https".into(),
                    host: "localhost:8443".into(),
                    path: "/meme-game/api/v1/users/user.0/answers".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: headers
                        .iter()
                        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

fn benches(c: &mut Criterion) {
    let bytes = check_request().encode_to_vec();
    eprintln!("CheckRequest: {} bytes", bytes.len());
    c.bench_function("ext_authz/decode_check_request", |b| {
        b.iter(|| CheckRequest::decode(black_box(bytes.as_slice())).unwrap())
    });
}

criterion_group!(ext_authz, benches);
criterion_main!(ext_authz);
