//! The requests every engine decides on: token profiles (claim sets, each signed once as an
//! RS256 token of the shipped development key) and a deterministic mix of meme-game requests
//! over all six operations, allowed and denied.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};

pub const KID: &str = "meme-game-dev-rsa-1";
pub const ISSUER: &str = "https://auth.example.com";
pub const AUDIENCE: &str = "meme-game";
pub const BASE: &str = "https://localhost:8443/meme-game/api/v1";

/// The main crate's root (`benches/peers/../..`).
pub fn main_crate() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn policies_dir() -> PathBuf {
    main_crate().join("policies")
}

pub fn peer_policy(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("policies")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

pub fn encoding_key() -> EncodingKey {
    let path = policies_dir().join("keys/meme-game.dev-key.pem");
    let pem = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    EncodingKey::from_rsa_pem(&pem).expect("the development key is an RSA key")
}

/// Signs `claims` (plus iss, aud, iat, exp unless given) as an RS256 token of the dev key.
pub fn sign(key: &EncodingKey, claims: &Map<String, Value>, audience: &str) -> String {
    let now = unix_now();
    let mut full = Map::new();
    full.insert("iss".into(), ISSUER.into());
    full.insert("aud".into(), audience.into());
    full.insert("iat".into(), now.into());
    full.insert("exp".into(), (now + 6 * 3600).into());
    for (k, v) in claims {
        full.insert(k.clone(), v.clone());
    }
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.to_owned());
    jsonwebtoken::encode(&header, &Value::Object(full), key).expect("the token is signed")
}

/// One caller: its claims as the token carries them (all of them, `iss`/`aud`/`exp`/`iat`
/// included), and the signed token.
pub struct Profile {
    pub claims: Map<String, Value>,
    pub token: String,
}

fn claims(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

/// The claim sets of the callers: users with every combination of groups and scopes the
/// rules look at, client-credentials tokens (`sub` = `client_id`, `sub` = `azp`, no `sub`),
/// and a user token issued through an operators' client.
fn profile_claims() -> Vec<Map<String, Value>> {
    let mut out = Vec::new();
    for i in 0..24 {
        let sub = format!("user.{i}");
        let c = match i % 8 {
            0 => json!({"groups": ["players"], "scope": "answers:write memes:read"}),
            1 => json!({"groups": ["players"], "scope": "memes:read"}),
            2 => json!({"groups": ["moderators"], "scope": "memes:write"}),
            3 => json!({"groups": ["staff", "meme-editors"], "scope": "memes:write profile"}),
            4 => json!({"groups": ["staff", "meme-editors"], "scope": "memes:read",
                        "account_status": "suspended"}),
            5 => json!({"groups": ["staff"], "scope": "answers:write", "account_status": "active"}),
            // one group as a plain string
            6 => json!({"groups": "players", "scope": "answers:write memes:write"}),
            _ => json!({}),
        };
        let mut c = claims(c);
        c.insert("sub".into(), sub.into());
        c.insert("client_id".into(), "meme-game-web".into());
        c.insert("jti".into(), format!("profile-{i}").into());
        out.push(c);
    }
    let clients = [
        // client-credentials: sub == client_id
        json!({"sub": "ops-dashboard", "client_id": "ops-dashboard", "scope": "memes:read"}),
        json!({"sub": "ops-cli", "client_id": "ops-cli", "groups": ["staff", "meme-editors"]}),
        json!({"sub": "meme-game-web", "client_id": "meme-game-web", "scope": "memes:read"}),
        // client-credentials: no sub at all
        json!({"client_id": "ops-cli", "scope": "answers:write"}),
        json!({"client_id": "reporting", "groups": ["moderators"]}),
        // client-credentials: sub == azp (no client_id)
        json!({"sub": "ops-dashboard", "azp": "ops-dashboard", "groups": ["players"],
               "scope": "answers:write"}),
        // a user's token issued through an operators' client: delegated
        json!({"sub": "user.5", "client_id": "ops-dashboard", "groups": ["players"],
               "scope": "answers:write"}),
        json!({"sub": "user.7", "azp": "ops-cli", "groups": ["staff", "meme-editors"],
               "account_status": "suspended"}),
    ];
    for (i, c) in clients.into_iter().enumerate() {
        let mut c = claims(c);
        c.insert("jti".into(), format!("client-{i}").into());
        out.push(c);
    }
    out
}

pub fn profiles(key: &EncodingKey) -> Vec<Profile> {
    profile_claims()
        .into_iter()
        .map(|claims| {
            let token = sign(key, &claims, AUDIENCE);
            // The claims the peers see: exactly the token's payload.
            let payload = token.split('.').nth(1).expect("a JWT has a payload");
            let payload = base64_url_decode(payload);
            let claims: Map<String, Value> =
                serde_json::from_slice(&payload).expect("the payload is JSON");
            Profile { claims, token }
        })
        .collect()
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in s.bytes() {
        let v = ALPHABET.iter().position(|&a| a == b).expect("base64url") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

pub const OPERATIONS: [&str; 6] = [
    "submit-answer",
    "read-answers",
    "browse-memes",
    "manage-memes",
    "leaderboard",
    "game-internals",
];

/// One request of the mix.
#[derive(Debug, Clone)]
pub struct Request {
    pub operation: &'static str,
    pub method: &'static str,
    /// The full URL (a `?req=N` query makes each one distinct, as real traffic is).
    pub url: String,
    /// Path parameters of the matched template, as the operation match yields them.
    pub params: Vec<(&'static str, String)>,
    pub profile: usize,
    pub client: Option<IpAddr>,
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const CLIENTS: [Option<&str>; 7] = [
    Some("10.20.30.40"),
    Some("127.0.0.1"),
    Some("::1"),
    Some("203.0.113.9"),
    Some("2001:db8::7"),
    Some("11.0.0.1"),
    None,
];

/// `n` requests, the operations in turn, callers, path parameters and client addresses drawn
/// from a fixed seed. About half are allowed.
pub fn requests(profiles: &[Profile], n: usize) -> Vec<Request> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|k| {
            let operation = OPERATIONS[k % OPERATIONS.len()];
            // Half the time a caller the operation is meant for (who may still be refused,
            // e.g. for another user's id or a suspended account), else anyone.
            let likely: Vec<usize> = (0..profiles.len())
                .filter(|&p| meant_for(operation, &profiles[p].claims))
                .collect();
            let profile = if rng.below(2) == 0 && !likely.is_empty() {
                *rng.pick(&likely)
            } else {
                rng.below(profiles.len())
            };
            let claims = &profiles[profile].claims;
            // Mostly the caller's own id, else another user's.
            let user = match claims.get("sub").and_then(Value::as_str) {
                Some(sub) if rng.below(3) != 0 => sub.to_owned(),
                _ => format!("user.{}", rng.below(30)),
            };
            let client = if operation == "game-internals" && rng.below(2) == 0 {
                *rng.pick(&CLIENTS[..3])
            } else {
                *rng.pick(&CLIENTS)
            }
            .map(|c| c.parse().expect("an IP address"));
            let (method, path, params) = match operation {
                "submit-answer" => (
                    "POST",
                    format!("/users/{user}/answers"),
                    vec![("userId", user)],
                ),
                "read-answers" => {
                    if rng.below(2) == 0 {
                        (
                            "GET",
                            format!("/users/{user}/answers"),
                            vec![("userId", user)],
                        )
                    } else {
                        let answer = format!("a-{}", rng.below(1000));
                        (
                            "GET",
                            format!("/users/{user}/answers/{answer}"),
                            vec![("userId", user), ("answerId", answer)],
                        )
                    }
                }
                "browse-memes" => {
                    let method = *rng.pick(&["GET", "HEAD"]);
                    if rng.below(2) == 0 {
                        (method, "/memes".to_owned(), vec![])
                    } else {
                        let meme = format!("m-{}", rng.below(500));
                        (method, format!("/memes/{meme}"), vec![("memeId", meme)])
                    }
                }
                "manage-memes" => {
                    let method = *rng.pick(&["POST", "PUT", "DELETE"]);
                    let path = match rng.below(3) {
                        0 => "/memes".to_owned(),
                        1 => format!("/memes/m-{}", rng.below(500)),
                        _ => format!("/memes/m-{}/tags/t-{}", rng.below(500), rng.below(9)),
                    };
                    (method, path, vec![])
                }
                "leaderboard" => ("GET", "/leaderboard".to_owned(), vec![]),
                "game-internals" => (
                    "GET",
                    format!(
                        "/internal/{}",
                        rng.pick(&["metrics", "games/g-1/state", "health"])
                    ),
                    vec![],
                ),
                _ => unreachable!(),
            };
            Request {
                operation,
                method,
                url: format!("{BASE}{path}?req={k}"),
                params,
                profile,
                client,
            }
        })
        .collect()
}

/// Whether `claims` belong to the kind of caller an operation is for.
fn meant_for(operation: &str, claims: &Map<String, Value>) -> bool {
    let has = |name: &str, v: &str| match claims.get(name) {
        Some(Value::String(s)) => s.split_ascii_whitespace().any(|x| x == v),
        Some(Value::Array(items)) => items.iter().any(|x| x.as_str() == Some(v)),
        _ => false,
    };
    match operation {
        "submit-answer" => has("groups", "players"),
        "read-answers" => has("groups", "moderators") || claims.contains_key("sub"),
        "browse-memes" => has("scope", "memes:read") || has("scope", "memes:write"),
        "manage-memes" => has("groups", "meme-editors"),
        "game-internals" => {
            has("client_id", "ops-cli")
                || has("client_id", "ops-dashboard")
                || has("azp", "ops-dashboard")
        }
        _ => true,
    }
}

/// The Rego input document of a request.
pub fn rego_input(req: &Request, profiles: &[Profile]) -> Value {
    let mut input = json!({
        "operation": req.operation,
        "params": req.params.iter().map(|(k, v)| ((*k).to_owned(), Value::from(v.as_str())))
            .collect::<Map<_, _>>(),
        "claims": profiles[req.profile].claims,
    });
    if let Some(ip) = req.client {
        input["client_ip"] = ip.to_string().into();
    }
    input
}

/// The Cedar request of a request, as a JSON document a PEP would send: principal (the
/// token), action (the operation), resource, context, and the principal's entity. The
/// `scope` claim is split into a set here (Cedar has no string split), `groups` made a set.
pub fn cedar_request(req: &Request, profiles: &[Profile]) -> Value {
    let claims = &profiles[req.profile].claims;
    let principal = json!({"type": "Token", "id": format!("t{}", req.profile)});
    let mut attrs = Map::new();
    for name in ["sub", "client_id", "azp", "account_status"] {
        if let Some(Value::String(s)) = claims.get(name) {
            attrs.insert(name.into(), s.clone().into());
        }
    }
    let groups: Vec<Value> = match claims.get("groups") {
        Some(Value::Array(items)) => items.clone(),
        Some(Value::String(s)) => vec![s.clone().into()],
        _ => vec![],
    };
    let scopes: Vec<Value> = match claims.get("scope") {
        Some(Value::String(s)) => s.split_ascii_whitespace().map(Value::from).collect(),
        Some(Value::Array(items)) => items.clone(),
        _ => vec![],
    };
    attrs.insert("groups".into(), groups.into());
    attrs.insert("scopes".into(), scopes.into());
    let mut context = Map::new();
    if let Some((_, user)) = req.params.iter().find(|(k, _)| *k == "userId") {
        context.insert("userId".into(), user.clone().into());
    }
    if let Some(ip) = req.client {
        context.insert(
            "clientIp".into(),
            json!({"__extn": {"fn": "ip", "arg": ip.to_string()}}),
        );
    }
    json!({
        "principal": principal,
        "action": {"type": "Action", "id": req.operation},
        "resource": {"type": "Api", "id": "meme-game"},
        "context": context,
        "entities": [{"uid": principal, "attrs": attrs, "parents": []}],
    })
}
