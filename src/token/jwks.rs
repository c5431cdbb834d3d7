//! JSON Web Key Sets: parsed once into verification keys that each know which algorithms they
//! may verify. Nothing here reads files or the network.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Smallest RSA modulus accepted (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;
/// Smallest HMAC secret accepted: RFC 7518 §3.2 asks for at least the hash size.
fn min_hmac_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa { bits: usize },
    EcP256,
    EcP384,
    Ed25519,
    Oct { len: usize },
}

/// What an RSA key signs and verifies: PKCS#1 v1.5 and PSS, each with SHA-256/384/512.
pub(crate) const RSA_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

impl KeyKind {
    fn name(self) -> &'static str {
        match self {
            KeyKind::Rsa { .. } => "RSA",
            KeyKind::EcP256 => "EC P-256",
            KeyKind::EcP384 => "EC P-384",
            KeyKind::Ed25519 => "OKP Ed25519",
            KeyKind::Oct { .. } => "oct",
        }
    }

    /// Algorithms this kind of key can verify at all.
    fn algorithms(self) -> &'static [Algorithm] {
        use Algorithm::*;
        match self {
            KeyKind::Rsa { .. } => RSA_ALGORITHMS,
            KeyKind::EcP256 => &[ES256],
            KeyKind::EcP384 => &[ES384],
            KeyKind::Ed25519 => &[EdDSA],
            KeyKind::Oct { .. } => &[HS256, HS384, HS512],
        }
    }
}

/// One trusted key.
pub struct VerificationKey {
    pub kid: Option<Box<str>>,
    pub kind: KeyKind,
    /// The allowed algorithms this key may verify (its kind, its `alg` and the service's
    /// allow-list intersected).
    pub algorithms: Vec<Algorithm>,
    pub(crate) decoding: DecodingKey,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The decoding key of an `oct` entry is a secret; keep it out of debug output.
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }

    /// Whether `signature` (base64url) over `message` verifies with this key.
    pub fn verify(&self, message: &[u8], signature: &str, alg: Algorithm) -> bool {
        self.fits(alg)
            && jsonwebtoken::crypto::verify(signature, message, &self.decoding, alg)
                .unwrap_or(false)
    }

    /// The shared secret of an `oct` key; `None` for public keys.
    pub fn secret(&self) -> Option<&[u8]> {
        match self.kind {
            KeyKind::Oct { .. } => self.decoding.try_get_as_bytes().ok(),
            _ => None,
        }
    }
}

/// The keys a service trusts.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<VerificationKey>,
    /// Identifies the key material; part of the token cache key, so that a token verified
    /// with one key set is never taken as verified for another.
    pub fingerprint: [u8; 16],
}

impl KeySet {
    pub fn by_kid(&self, kid: &str) -> Option<&VerificationKey> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }
}

/// A problem with one key of a set, or with the set as a whole (`key` is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksError {
    pub key: Option<String>,
    pub message: String,
    pub help: String,
}

impl JwksError {
    fn whole(message: impl Into<String>, help: impl Into<String>) -> Self {
        Self {
            key: None,
            message: message.into(),
            help: help.into(),
        }
    }
}

fn key_label(index: usize, kid: Option<&str>) -> String {
    match kid {
        Some(kid) => format!("key `{kid}`"),
        None => format!("key #{index}"),
    }
}

/// Parses a JWKS document and keeps the keys that may verify one of `allowed`.
///
/// Fails with every problem found: malformed keys, unsupported types, weak keys, keys that fit
/// none of the allowed algorithms, `oct` keys without an allowed HS algorithm, duplicate ids.
/// Keys marked `"use": "enc"` are encryption keys and are skipped.
pub fn parse_jwks(json: &[u8], allowed: &[Algorithm]) -> Result<KeySet, Vec<JwksError>> {
    let document: serde_json::Value = serde_json::from_slice(json).map_err(|e| {
        vec![JwksError::whole(
            format!("not valid JSON: {e}"),
            "a JWKS file is a JSON object `{\"keys\": [ … ]}`",
        )]
    })?;
    let Some(raw_keys) = document.get("keys").and_then(|k| k.as_array()) else {
        return Err(vec![JwksError::whole(
            "no `keys` array",
            "a JWKS file is a JSON object `{\"keys\": [ … ]}`",
        )]);
    };
    let mut errors = Vec::new();
    let mut keys: Vec<VerificationKey> = Vec::new();
    for (index, raw) in raw_keys.iter().enumerate() {
        let kid = raw.get("kid").and_then(|k| k.as_str());
        let label = key_label(index, kid);
        match parse_key(raw, allowed) {
            Ok(Some(key)) => {
                if let Some(kid) = &key.kid
                    && keys.iter().any(|k| k.kid.as_ref() == Some(kid))
                {
                    errors.push(JwksError {
                        key: Some(label),
                        message: "the key id is used by an earlier key too".into(),
                        help: "give every key a distinct `kid`".into(),
                    });
                    continue;
                }
                keys.push(key);
            }
            Ok(None) => {}
            Err((message, help)) => errors.push(JwksError {
                key: Some(label),
                message,
                help,
            }),
        }
    }
    if errors.is_empty() && keys.is_empty() {
        errors.push(JwksError::whole(
            "the key set has no signing key",
            "add the issuer's public signing keys",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, json);
    let mut fingerprint = [0u8; 16];
    fingerprint.copy_from_slice(&digest.as_ref()[..16]);
    Ok(KeySet { keys, fingerprint })
}

/// Parses a JWKS document fetched from a URL: keys that cannot be used with `allowed` (other
/// types, weak keys, encryption keys, repeated ids) are skipped, as identity providers
/// publish keys for other uses too.
///
/// Fails when the document is not a key set or has no usable key.
pub fn parse_jwks_lenient(json: &[u8], allowed: &[Algorithm]) -> Result<KeySet, String> {
    let document: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("not valid JSON: {e}"))?;
    let raw_keys = document
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("not a key set: no `keys` array")?;
    let mut keys: Vec<VerificationKey> = Vec::new();
    let mut skipped = Vec::new();
    for (index, raw) in raw_keys.iter().enumerate() {
        let label = key_label(index, raw.get("kid").and_then(|k| k.as_str()));
        match parse_key(raw, allowed) {
            Ok(Some(key)) if key.kid.is_some() && keys.iter().any(|k| k.kid == key.kid) => {
                skipped.push(format!("{label}: the key id is used by an earlier key too"));
            }
            Ok(Some(key)) => keys.push(key),
            Ok(None) => {}
            Err((message, _)) => skipped.push(format!("{label}: {message}")),
        }
    }
    if keys.is_empty() {
        return Err(match skipped.first() {
            Some(first) => format!("no usable signing key ({} skipped; {first})", skipped.len()),
            None => "no signing key".to_owned(),
        });
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, json);
    let mut fingerprint = [0u8; 16];
    fingerprint.copy_from_slice(&digest.as_ref()[..16]);
    Ok(KeySet { keys, fingerprint })
}

fn algorithm_names(algs: &[Algorithm]) -> String {
    algs.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_key(
    raw: &serde_json::Value,
    allowed: &[Algorithm],
) -> Result<Option<VerificationKey>, (String, String)> {
    let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| {
        (
            format!("not a valid JWK: {e}"),
            "each key needs `kty` and the parameters of its type (`n`/`e`, `crv`/`x`/`y`, `k`)"
                .to_owned(),
        )
    })?;
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Ok(None);
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let n = decode_base64url(&rsa.n).ok_or_else(|| bad_param("n"))?;
            KeyKind::Rsa {
                bits: significant_bits(&n),
            }
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => KeyKind::EcP256,
            EllipticCurve::P384 => KeyKind::EcP384,
            ref other => {
                return Err((
                    format!("the curve {other:?} is not supported"),
                    "use an EC key on P-256 (ES256) or P-384 (ES384)".into(),
                ));
            }
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            KeyKind::Ed25519
        }
        AlgorithmParameters::OctetKey(oct) => {
            let secret = decode_base64url(&oct.value).ok_or_else(|| bad_param("k"))?;
            KeyKind::Oct { len: secret.len() }
        }
        _ => {
            return Err((
                "the key type is not supported".into(),
                "use an RSA, EC (P-256, P-384), OKP (Ed25519) or oct key".into(),
            ));
        }
    };
    if let KeyKind::Rsa { bits } = kind
        && bits < MIN_RSA_BITS
    {
        return Err((
            format!("the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"),
            "replace it with a key of 2048 bits or more".into(),
        ));
    }
    let declared = match &jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::UNKNOWN_ALGORITHM) => {
            return Err((
                "the key's `alg` is not a signing algorithm Portcullis knows".into(),
                "remove `alg` or set it to one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512".into(),
            ));
        }
        Some(ka) => {
            let name = serde_json::to_value(ka)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            match name.parse::<Algorithm>() {
                Ok(alg) => Some(alg),
                // An encryption algorithm (RSA-OAEP …): not a signing key.
                Err(_) => return Ok(None),
            }
        }
    };
    if let Some(alg) = declared
        && !kind.algorithms().contains(&alg)
    {
        return Err((
            format!("an {} key cannot be used with `alg` {alg:?}", kind.name()),
            "fix the key's `alg` or remove it".into(),
        ));
    }
    if matches!(kind, KeyKind::Oct { .. })
        && !allowed
            .iter()
            .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
    {
        return Err((
            "an `oct` (shared secret) key is trusted only when an HS algorithm is allowed".into(),
            "add HS256, HS384 or HS512 to `token.algorithms` if a shared secret is intended, or remove the key".into(),
        ));
    }
    let algorithms: Vec<Algorithm> = kind
        .algorithms()
        .iter()
        .copied()
        .filter(|a| allowed.contains(a) && declared.is_none_or(|d| d == *a))
        .filter(|a| match kind {
            KeyKind::Oct { len } => len >= min_hmac_len(*a),
            _ => true,
        })
        .collect();
    if algorithms.is_empty() {
        let why = match kind {
            KeyKind::Oct { len } => format!(
                "the shared secret has {len} bytes, too short for the allowed HS algorithms (HS256 needs 32, HS384 48, HS512 64)"
            ),
            _ => format!(
                "an {} key{} fits none of the allowed algorithms ({})",
                kind.name(),
                declared.map(|d| format!(" for {d:?}")).unwrap_or_default(),
                algorithm_names(allowed)
            ),
        };
        return Err((
            why,
            format!(
                "allow an algorithm this key can verify ({}), or remove the key",
                algorithm_names(kind.algorithms())
            ),
        ));
    }
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| {
        (
            format!("the key material is not usable: {e}"),
            "check the key's parameters".into(),
        )
    })?;
    Ok(Some(VerificationKey {
        kid: jwk.common.key_id.map(Into::into),
        kind,
        algorithms,
        decoding,
    }))
}

fn bad_param(name: &str) -> (String, String) {
    (
        format!("the key parameter `{name}` is not base64url"),
        "encode key parameters as unpadded base64url".into(),
    )
}

fn decode_base64url(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()
}

/// Bits of a big-endian unsigned integer, leading zeros aside.
fn significant_bits(bytes: &[u8]) -> usize {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let significant = &bytes[first..];
    match significant.first() {
        Some(top) => (significant.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/policies/keys")
            .join(name);
        std::fs::read(path).unwrap()
    }

    fn messages(errors: &[JwksError]) -> String {
        errors
            .iter()
            .map(|e| format!("{:?}: {}", e.key, e.message))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn keys_fitting_the_allowed_algorithms_are_kept() {
        let set = parse_jwks(
            &fixture("app.jwks.json"),
            &[
                Algorithm::RS256,
                Algorithm::ES256,
                Algorithm::ES384,
                Algorithm::EdDSA,
            ],
        )
        .unwrap();
        assert_eq!(set.keys.len(), 5);
        let rsa = set.by_kid("rsa-a").unwrap();
        assert!(rsa.fits(Algorithm::RS256));
        assert!(
            !rsa.fits(Algorithm::PS256),
            "PS256 is a fitting algorithm, but not allowed"
        );
        assert!(!rsa.fits(Algorithm::ES256) && !rsa.fits(Algorithm::HS256));
        assert!(set.by_kid("ec-a").unwrap().fits(Algorithm::ES256));
        assert!(!set.by_kid("ec-a").unwrap().fits(Algorithm::ES384));
        assert!(set.by_kid("nope").is_none());
    }

    #[test]
    fn a_key_that_fits_no_allowed_algorithm_is_an_error() {
        let errors = parse_jwks(&fixture("app.jwks.json"), &[Algorithm::RS256]).unwrap_err();
        let text = messages(&errors);
        for kid in ["ec-a", "ec-384", "ed-a"] {
            assert!(text.contains(kid), "{text}");
        }
    }

    #[test]
    fn a_shared_secret_needs_an_hs_algorithm() {
        assert!(parse_jwks(&fixture("hs.jwks.json"), &[Algorithm::HS256]).is_ok());
        let errors = parse_jwks(&fixture("hs.jwks.json"), &[Algorithm::RS256]).unwrap_err();
        assert!(messages(&errors).contains("HS"), "{}", messages(&errors));
    }

    #[test]
    fn short_secrets_and_weak_rsa_keys_are_refused() {
        let short = br#"{"keys":[{"kty":"oct","kid":"s","k":"c2hvcnQ"}]}"#;
        assert!(parse_jwks(short, &[Algorithm::HS256]).is_err());
        let errors = parse_jwks(&fixture("weak.jwks.json"), &[Algorithm::RS256]).unwrap_err();
        assert!(messages(&errors).contains("2048"), "{}", messages(&errors));
    }

    #[test]
    fn encryption_keys_are_skipped_and_duplicate_ids_refused() {
        let app: serde_json::Value = serde_json::from_slice(&fixture("app.jwks.json")).unwrap();
        let rsa = app["keys"][0].clone();
        let mut enc = app["keys"][1].clone();
        enc["use"] = "enc".into();
        let doc = serde_json::json!({"keys": [rsa, enc]});
        let set = parse_jwks(doc.to_string().as_bytes(), &[Algorithm::RS256]).unwrap();
        assert_eq!(set.keys.len(), 1);

        let doc = serde_json::json!({"keys": [rsa, rsa]});
        let errors = parse_jwks(doc.to_string().as_bytes(), &[Algorithm::RS256]).unwrap_err();
        assert!(
            messages(&errors).contains("earlier key"),
            "{}",
            messages(&errors)
        );
    }

    #[test]
    fn malformed_documents_say_what_a_jwks_is() {
        for doc in [
            &b"not json"[..],
            b"{}",
            br#"{"keys": []}"#,
            br#"{"keys": [{"kty": "RSA"}]}"#,
        ] {
            let errors = parse_jwks(doc, &[Algorithm::RS256]).unwrap_err();
            assert!(!errors.is_empty());
        }
    }

    #[test]
    fn the_fingerprint_follows_the_content() {
        let a = parse_jwks(&fixture("single.jwks.json"), &[Algorithm::RS256]).unwrap();
        let b = parse_jwks(&fixture("single.jwks.json"), &[Algorithm::RS256]).unwrap();
        let c = parse_jwks(&fixture("weak.jwks.json"), &[Algorithm::RS256]);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert!(c.is_err());
        let mut other: serde_json::Value =
            serde_json::from_slice(&fixture("single.jwks.json")).unwrap();
        other["keys"][0]["kid"] = "x".into();
        let d = parse_jwks(other.to_string().as_bytes(), &[Algorithm::RS256]).unwrap();
        assert_ne!(a.fingerprint, d.fingerprint);
    }
}
