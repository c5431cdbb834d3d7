//! Helpers shared by the integration tests: the fixture policies and test keys, and
//! tokens built piece by piece (so that hostile ones can be built too).

#![allow(dead_code)]

pub mod gateway;
pub mod pki;
pub mod redis;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use portcullis::{PolicyOptions, PolicySet};
use serde_json::{Value, json};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The policies of `tests/fixtures/policies`, compiled once per test binary.
pub fn policies() -> &'static PolicySet {
    static SET: OnceLock<PolicySet> = OnceLock::new();
    SET.get_or_init(|| {
        portcullis::load_dir(&fixtures().join("policies"), &PolicyOptions::default())
            .unwrap_or_else(|e| panic!("fixture policies are invalid:\n{e}"))
    })
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The PEM of a test key (`rsa-a`, `ec-a`, …).
pub fn key_pem(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("keys").join(format!("{name}.pem")))
        .unwrap_or_else(|e| panic!("test key {name}: {e}"))
}

pub fn hs_secret() -> Vec<u8> {
    let text = std::fs::read_to_string(fixtures().join("keys/hs-a.secret")).unwrap();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim())
        .unwrap()
}

/// The signing key named `name` for `alg`: a PEM key, or `hs-a` for the shared secret.
pub fn encoding_key(name: &str, alg: Algorithm) -> EncodingKey {
    if name == "hs-a" {
        return EncodingKey::from_secret(&hs_secret());
    }
    let pem = key_pem(name);
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .unwrap_or_else(|e| panic!("test key {name} for {alg:?}: {e}"))
}

/// A JWS with exactly this header and these claims, signed with `key` using `alg`
/// (`None`: no signature, as `alg: none` tokens have).
pub fn jws(header: &Value, claims: &Value, key: Option<(&str, Algorithm)>) -> String {
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = match key {
        Some((name, alg)) => {
            jsonwebtoken::crypto::sign(message.as_bytes(), &encoding_key(name, alg), alg).unwrap()
        }
        None => String::new(),
    };
    format!("{message}.{signature}")
}

/// Claims of a valid token for the `app` fixture service at `now`.
pub fn app_claims(now: i64) -> Value {
    json!({
        "iss": "https://issuer.test",
        "aud": "app",
        "sub": "user.1",
        "client_id": "web",
        "iat": now - 10,
        "exp": now + 3600,
    })
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64
}

/// A valid RS256 token for the `app` fixture service now, with `changes` to its claims.
pub fn app_token(changes: Value) -> String {
    let mut claims = app_claims(unix_now());
    for (k, v) in changes.as_object().expect("changes are an object") {
        claims[k] = v.clone();
    }
    rs256(&claims)
}

/// A valid RS256 token with `kid: rsa-a` for these claims.
pub fn rs256(claims: &Value) -> String {
    jws(
        &json!({"alg": "RS256", "kid": "rsa-a", "typ": "JWT"}),
        claims,
        Some(("rsa-a", Algorithm::RS256)),
    )
}

/// The shipped example policies.
pub fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// A copy of the shipped policies (with their keys) in which each `(from, to)` replaces
/// text of `meme-game.yaml`.
pub fn candidate(edits: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(shipped()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if path.is_dir() {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            for key in std::fs::read_dir(&path).unwrap() {
                let key = key.unwrap().path();
                std::fs::copy(&key, dir.path().join(name).join(key.file_name().unwrap())).unwrap();
            }
        } else if !name.to_string_lossy().ends_with(".test.yaml") {
            std::fs::copy(&path, dir.path().join(name)).unwrap();
        }
    }
    let file = dir.path().join("meme-game.yaml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "meme-game.yaml has no `{from}`");
        text = text.replacen(from, to, 1);
    }
    std::fs::write(&file, text).unwrap();
    dir
}

/// A valid token for the shipped `meme-game` service, signed with its development key.
pub fn meme_game_token(sub: &str, groups: &[&str]) -> String {
    let pem = std::fs::read(shipped().join("keys/meme-game.dev-key.pem")).unwrap();
    let now = unix_now();
    let claims = json!({
        "iss": "https://auth.example.com", "aud": "meme-game", "sub": sub,
        "groups": groups, "scope": "memes:read", "iat": now, "exp": now + 600,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("meme-game-dev-rsa-1".into());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// What a record of inputs keeps of `d` (see `Engine::rebuild`): no trace, headers, body,
/// audit, outcome or status, which a rebuild must write again.
pub fn rebuild_skeleton(d: &portcullis::Decision) -> portcullis::Decision {
    let mut kept = d.clone();
    kept.trace.clear();
    kept.headers = Default::default();
    kept.upstream_headers = Default::default();
    kept.body = None;
    kept.audit.clear();
    kept.outcome = portcullis::Outcome::Allow;
    kept.status = 0;
    kept
}
