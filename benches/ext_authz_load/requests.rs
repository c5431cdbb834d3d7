//! The requests of the mix: signed tokens, Checks shaped like Envoy's, and the answer each must get.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::proto::envoy::config::core::v3::socket_address::PortSpecifier;
use portcullis::proto::envoy::config::core::v3::{Address, SocketAddress, address};
use portcullis::proto::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttributeRequest,
};
use portcullis::proto::envoy::service::auth::v3::check_response::HttpResponse;
use portcullis::proto::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};

use crate::{AUTHORITY, BASE_PATH, KID, PRIVATE_KEY};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

fn sign(key: &EncodingKey, sub: &str, groups: &[&str], scope: &str) -> String {
    let now = unix_now();
    let claims = serde_json::json!({
        "iss": "https://auth.example.com",
        "aud": "meme-game",
        "sub": sub,
        "client_id": "meme-game-web",
        "groups": groups,
        "scope": scope,
        "iat": now,
        "exp": now + 3 * 3600,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.to_owned());
    jsonwebtoken::encode(&header, &claims, key).expect("the token is signed")
}

pub(crate) struct Tokens {
    /// `user.0`, a player with `answers:write`: may submit its own answers.
    pub(crate) player: String,
    /// `user.1`, a viewer with `memes:read`: may read the leaderboard, not submit.
    pub(crate) viewer: String,
}

impl Tokens {
    pub(crate) fn new() -> Self {
        let pem = std::fs::read(PRIVATE_KEY).expect("the development key is readable");
        let key = EncodingKey::from_rsa_pem(&pem).expect("the development key is an RSA key");
        Self {
            player: sign(&key, "user.0", &["players"], "answers:write"),
            viewer: sign(&key, "user.1", &["viewers"], "memes:read"),
        }
    }
}

/// What a request must be answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    Allow,
    Deny(i32),
    /// Neither an `ok_response` with status OK nor a `denied_response` with a non-OK status.
    Malformed,
}

pub(crate) fn answer_of(response: &CheckResponse) -> Answer {
    let code = response.status.as_ref().map_or(-1, |s| s.code);
    match &response.http_response {
        Some(HttpResponse::OkResponse(_)) if code == 0 => Answer::Allow,
        Some(HttpResponse::DeniedResponse(d)) if code != 0 => {
            Answer::Deny(d.status.as_ref().map_or(0, |s| s.code))
        }
        _ => Answer::Malformed,
    }
}

#[derive(Clone)]
pub(crate) struct Probe {
    pub(crate) label: &'static str,
    pub(crate) request: CheckRequest,
    pub(crate) expect: Answer,
}

/// A Check as Envoy sends it for a plaintext listener that claims `https`: lower-case header
/// names with the pseudo-headers, the authority as host, the client as source address.
fn check_request(method: &str, host: &str, path: &str, token: Option<&str>) -> CheckRequest {
    let mut headers: Vec<(String, String)> = vec![
        (":authority".into(), host.into()),
        (":method".into(), method.into()),
        (":path".into(), path.into()),
        (":scheme".into(), "https".into()),
        ("accept".into(), "application/json".into()),
        ("user-agent".into(), "meme-game-web/2.3 (bench)".into()),
        ("x-forwarded-proto".into(), "https".into()),
        (
            "x-request-id".into(),
            "6d2f8f6e-3f55-4c2b-9a1e-1f0c2b7d9e10".into(),
        ),
    ];
    if let Some(token) = token {
        headers.push(("authorization".into(), format!("Bearer {token}")));
    }
    if method == "POST" {
        headers.push(("content-type".into(), "application/json".into()));
        headers.push(("content-length".into(), "29".into()));
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "127.0.0.1".into(),
                        port_specifier: Some(PortSpecifier::PortValue(41234)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(AttributeRequest {
                time: None,
                http: Some(HttpRequest {
                    id: "1234567890123456789".into(),
                    method: method.into(),
                    scheme: "https".into(),
                    host: host.into(),
                    path: path.into(),
                    protocol: "HTTP/1.1".into(),
                    headers: headers.into_iter().collect(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

/// The five kinds of request of the mix, each with its expected answer and weight.
pub(crate) fn probes(tokens: &Tokens) -> Vec<(Probe, usize)> {
    let submit = format!("{BASE_PATH}/users/user.0/answers");
    let leaderboard = format!("{BASE_PATH}/leaderboard");
    vec![
        (
            Probe {
                label: "allow: player submits an answer",
                request: check_request("POST", AUTHORITY, &submit, Some(&tokens.player)),
                expect: Answer::Allow,
            },
            4,
        ),
        (
            Probe {
                label: "allow: viewer reads the leaderboard",
                request: check_request("GET", AUTHORITY, &leaderboard, Some(&tokens.viewer)),
                expect: Answer::Allow,
            },
            2,
        ),
        (
            Probe {
                label: "403: viewer submits an answer",
                request: check_request("POST", AUTHORITY, &submit, Some(&tokens.viewer)),
                expect: Answer::Deny(403),
            },
            2,
        ),
        (
            Probe {
                label: "401: no token",
                request: check_request("POST", AUTHORITY, &submit, None),
                expect: Answer::Deny(401),
            },
            1,
        ),
        (
            Probe {
                label: "404: unknown host",
                request: check_request(
                    "GET",
                    "unknown.example.net:8443",
                    &leaderboard,
                    Some(&tokens.player),
                ),
                expect: Answer::Deny(404),
            },
            1,
        ),
    ]
}

/// The rate-limited targets' one request: a player reacts as itself, allowed by the rules
/// and counted against its limit (raised so that it is never reached).
pub(crate) fn reaction_probes(tokens: &Tokens) -> Vec<(Probe, usize)> {
    let reactions = format!("{BASE_PATH}/users/user.0/reactions");
    vec![(
        Probe {
            label: "allow: player reacts, counted",
            request: check_request("POST", AUTHORITY, &reactions, Some(&tokens.player)),
            expect: Answer::Allow,
        },
        1,
    )]
}

/// The probes repeated by weight (10 copies of the weighted set) in a fixed shuffled order.
pub(crate) fn mix(probes: &[(Probe, usize)]) -> Vec<Probe> {
    let mut mix: Vec<Probe> = Vec::new();
    for _ in 0..10 {
        for (probe, weight) in probes {
            mix.extend(std::iter::repeat_n(probe.clone(), *weight));
        }
    }
    // Fisher–Yates with a fixed xorshift seed: the same order on every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..mix.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        mix.swap(i, (state % (i as u64 + 1)) as usize);
    }
    mix
}
