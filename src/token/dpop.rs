//! DPoP proofs (RFC 9449): the one `DPoP` header of a request, its signature by the public
//! key it carries, and its claims (`htm`, `htu`, `iat`, `ath`, `jti`). Pure: the caller
//! passes the clock and how to compare URLs, and keeps the replay cache.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;

use aws_lc_rs::signature::{ParsedPublicKey, VerificationAlgorithm};
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, ThumbprintHash};
use serde_json::{Map, Value};

use super::binding::BindingError;
use super::cache::TextCache;
use super::replay::{ProofId, ReplayCache};

/// Longest proof accepted: a proof holds one public key and five claims.
pub const MAX_PROOF_LEN: usize = 8 * 1024;

/// The algorithms a proof may be signed with: asymmetric only (RFC 9449 §4.2), so never
/// `none` nor an HMAC, whose key would have to be shared.
pub const PROOF_ALGORITHMS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
];

/// The `algs` attribute of a `DPoP` challenge.
pub const PROOF_ALGORITHM_NAMES: &str = "ES256 ES384 EdDSA PS256 PS384 PS512 RS256 RS384 RS512";

/// The request a proof must be for.
pub struct ProofRequest<'a> {
    pub method: &'a str,
    /// Whether the proof's `htu` (query and fragment removed) names this request's URL.
    pub url_matches: &'a dyn Fn(&str) -> bool,
    /// SHA-256 of the access token sent with the proof ([`token_digest`]), which `ath` must
    /// encode.
    pub access_token_sha256: &'a [u8; 32],
    pub now: i64,
    pub window: i64,
    /// The replay cache the proof's id will be checked in, if any: its line is fetched while
    /// the signature is verified.
    pub replays: Option<&'a ReplayCache>,
}

/// A proof that passed every check but the key binding and replay, which the caller makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedProof {
    /// RFC 7638 SHA-256 thumbprint of the proof's key, base64url.
    pub jkt: Arc<str>,
    /// The replay cache's id of the proof's key and `jti`.
    pub id: ProofId,
    pub iat: i64,
}

/// The one `DPoP` header among `headers` (names compared case-insensitively).
///
/// Fails when there is none, or more than one (Envoy joins repeated headers with commas,
/// which a proof never contains).
pub fn extract_proof<'a>(headers: &[(&'a str, &'a str)]) -> Result<&'a str, BindingError> {
    let mut found = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("dpop") {
            if found.is_some() {
                return Err(invalid("the request carries more than one `DPoP` header"));
            }
            found = Some(value.trim());
        }
    }
    let proof = found.ok_or(BindingError::DpopProofRequired)?;
    if proof.contains(',') {
        return Err(invalid("the request carries more than one `DPoP` header"));
    }
    if proof.is_empty() {
        return Err(BindingError::DpopProofRequired);
    }
    Ok(proof)
}

fn invalid(reason: &'static str) -> BindingError {
    BindingError::DpopProofInvalid {
        reason: reason.into(),
    }
}

fn b64(part: &str) -> Result<Vec<u8>, BindingError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| invalid("a part of the proof is not base64url"))
}

/// Why a part of a proof did not decode into the space given.
enum Undecoded {
    NotBase64,
    TooLong,
}

/// Decodes base64url `part` (no padding, canonical last bits, as [`b64`]) into `out`. Each
/// proof's signature, claims and `ath` decode here, with SIMD: three times as fast as the
/// `base64` crate on a proof's few hundred bytes.
fn decode_part<'o>(part: &str, out: &'o mut [u8]) -> Result<&'o [u8], Undecoded> {
    let engine = base64_simd::URL_SAFE_NO_PAD;
    let len = engine
        .decoded_length(part.as_bytes())
        .map_err(|_| Undecoded::NotBase64)?;
    // `decode` panics on too small an output: checked first.
    let out = out.get_mut(..len).ok_or(Undecoded::TooLong)?;
    match engine.decode(part.as_bytes(), base64_simd::Out::from_slice(out)) {
        Ok(decoded) => Ok(decoded),
        Err(_) => Err(Undecoded::NotBase64),
    }
}

/// The claims of a proof; others are ignored.
#[derive(serde::Deserialize)]
struct ProofClaims<'a> {
    #[serde(borrow)]
    htm: Option<Text<'a>>,
    #[serde(borrow)]
    htu: Option<Text<'a>>,
    iat: Option<f64>,
    #[serde(borrow)]
    ath: Option<Text<'a>>,
    #[serde(borrow)]
    jti: Option<Text<'a>>,
}

/// A claim's string, borrowed from the payload unless it has escapes. (serde borrows a
/// `Cow` only as a field of its own: an `Option<Cow<str>>` would always be a new `String`.)
#[derive(serde::Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

#[derive(serde::Deserialize)]
struct ProofHeader {
    typ: Option<String>,
    alg: Option<String>,
    jwk: Option<Map<String, Value>>,
    crit: Option<Value>,
}

/// JWK members that only a private or symmetric key has.
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Whether `jwk` is a key of the kind `alg` signs with.
fn fits(jwk: &Jwk, alg: Algorithm) -> bool {
    match (&jwk.algorithm, alg) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384) => p.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
            p.curve == EllipticCurve::Ed25519
        }
        _ => false,
    }
}

/// Proof keys read by default: one per DPoP client seen lately.
pub const DEFAULT_PROOF_KEY_CAPACITY: usize = 1_024;

/// Longest proof header kept in the cache (one EC or Ed25519 key fits in a few hundred
/// bytes, an RSA 4096 key in under 1.5 KiB): the cache stays within 2 MiB of headers.
const MAX_CACHED_HEADER: usize = 2 * 1024;

/// What a proof's header says, read and checked: the public key it carries, parsed once for
/// the algorithm it names, and that key's RFC 7638 thumbprint.
struct ProofKey {
    key: ParsedPublicKey,
    jkt: Arc<str>,
}

/// The proof headers seen lately (see [`TextCache`]). A client signs every proof with one
/// key and writes the same header each time, so its JSON, JWK and thumbprint are read once,
/// not per request; the signature is still checked on every proof.
#[derive(Debug)]
pub struct ProofKeys(TextCache<Arc<ProofKey>>);

impl Default for ProofKeys {
    fn default() -> Self {
        Self::new(DEFAULT_PROOF_KEY_CAPACITY)
    }
}

impl ProofKeys {
    pub fn new(capacity: usize) -> Self {
        Self(TextCache::new(capacity, MAX_CACHED_HEADER))
    }

    /// The key of header `header_b64`, read now or earlier.
    fn get(&self, header_b64: &str) -> Result<Arc<ProofKey>, BindingError> {
        self.0
            .get_or_read(header_b64, |h| read_header(h).map(Arc::new))
    }
}

/// Reads and checks a proof header: `typ`, no `crit`, an asymmetric `alg`, and a public
/// `jwk` of the kind `alg` signs with.
fn read_header(header_b64: &str) -> Result<ProofKey, BindingError> {
    let header: ProofHeader = serde_json::from_slice(&b64(header_b64)?)
        .map_err(|_| invalid("the proof's header is not a JSON object"))?;
    if header.typ.as_deref() != Some("dpop+jwt") {
        return Err(invalid("the proof's header must have `typ: dpop+jwt`"));
    }
    if header.crit.is_some() {
        return Err(invalid(
            "the proof's header lists critical extensions (`crit`)",
        ));
    }
    let alg = header
        .alg
        .as_deref()
        .and_then(|a| Algorithm::from_str(a).ok())
        .filter(|a| PROOF_ALGORITHMS.contains(a))
        .ok_or(invalid(
            "the proof must be signed with an asymmetric algorithm (ES256, ES384, EdDSA, PS*, RS*), never `none` or HMAC",
        ))?;
    let jwk_members = header
        .jwk
        .ok_or(invalid("the proof's header has no `jwk` public key"))?;
    if PRIVATE_MEMBERS.iter().any(|m| jwk_members.contains_key(*m)) {
        return Err(invalid(
            "the proof's `jwk` holds a private or symmetric key",
        ));
    }
    let jwk: Jwk = serde_json::from_value(Value::Object(jwk_members))
        .map_err(|_| invalid("the proof's `jwk` is not a public key this server reads"))?;
    if !fits(&jwk, alg) {
        return Err(invalid(
            "the proof's `jwk` is not a key of the kind its `alg` signs with",
        ));
    }
    let key = parse_key(&jwk, alg).ok_or(invalid(
        "the proof's `jwk` is not a public key this server reads",
    ))?;
    let jkt = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|_| invalid("the proof's `jwk` has no thumbprint"))?;
    Ok(ProofKey {
        key,
        jkt: jkt.into(),
    })
}

/// `jwk` (of the kind `alg` signs with) as the key aws-lc verifies `alg` signatures with,
/// parsed here once rather than on every proof (the EC point's checks, the RSA key's
/// numbers), which is what verifying through a `jsonwebtoken::DecodingKey` would do.
fn parse_key(jwk: &Jwk, alg: Algorithm) -> Option<ParsedPublicKey> {
    use aws_lc_rs::signature as s;
    let bytes = |text: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()
    };
    match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => {
            let (verification, size): (&'static dyn VerificationAlgorithm, usize) = match alg {
                Algorithm::ES256 => (&s::ECDSA_P256_SHA256_FIXED, 32),
                Algorithm::ES384 => (&s::ECDSA_P384_SHA384_FIXED, 48),
                _ => return None,
            };
            let (x, y) = (bytes(&p.x)?, bytes(&p.y)?);
            if x.len() != size || y.len() != size {
                return None;
            }
            // SEC 1 uncompressed point: 0x04, then x and y.
            let point = [&[4][..], &x, &y].concat();
            ParsedPublicKey::new(verification, point).ok()
        }
        AlgorithmParameters::OctetKeyPair(p) if alg == Algorithm::EdDSA => {
            ParsedPublicKey::new(&s::ED25519, bytes(&p.x)?).ok()
        }
        AlgorithmParameters::RSA(p) => {
            let params: &'static s::RsaParameters = match alg {
                Algorithm::RS256 => &s::RSA_PKCS1_2048_8192_SHA256,
                Algorithm::RS384 => &s::RSA_PKCS1_2048_8192_SHA384,
                Algorithm::RS512 => &s::RSA_PKCS1_2048_8192_SHA512,
                Algorithm::PS256 => &s::RSA_PSS_2048_8192_SHA256,
                Algorithm::PS384 => &s::RSA_PSS_2048_8192_SHA384,
                Algorithm::PS512 => &s::RSA_PSS_2048_8192_SHA512,
                _ => return None,
            };
            let (n, e) = (bytes(&p.n)?, bytes(&p.e)?);
            // aws-lc takes the numbers without leading zero bytes, which RFC 7518 forbids
            // but some encoders write.
            let unpadded = |b: &[u8]| b[b.iter().take_while(|&&x| x == 0).count()..].to_vec();
            s::RsaPublicKeyComponents {
                n: unpadded(&n),
                e: unpadded(&e),
            }
            .to_parsed_public_key(params)
            .ok()
        }
        _ => None,
    }
}

/// Longest signature decoded: an RSA 8192 signature (the largest key aws-lc verifies).
const MAX_SIGNATURE_LEN: usize = 1024;

/// Verifies `proof` for `request`: its form, its signature by its own `jwk` (read through
/// `keys`), `htm`, `htu`, `iat` and `ath`, in that order.
///
/// Fails with the first rule broken, each with its own detail code.
pub fn verify_proof(
    proof: &str,
    request: &ProofRequest<'_>,
    keys: &ProofKeys,
) -> Result<CheckedProof, BindingError> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(invalid("the proof is longer than 8 KiB"));
    }
    let mut parts = proof.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(
            "a proof is a signed JWT of three dot-separated parts",
        ));
    };
    let read = keys.get(header_b64)?;
    // The claims are read before the signature is checked (their errors still reported after
    // its), so that the replay cache's line for the proof's id is fetched while the signature
    // is verified: a check of a new id otherwise waits for memory once the signature is done.
    // Decoded on the stack: a proof's claims are a few hundred bytes.
    let mut small = [0; 1024];
    let mut large: Option<Vec<u8>> = None;
    // Too long for the stack, or not base64: `b64` decodes the one and names the other.
    let payload = match decode_part(payload_b64, &mut small) {
        Ok(payload) => Ok(payload),
        Err(_) => b64(payload_b64).map(|decoded| large.insert(decoded).as_slice()),
    };
    let claims = payload.and_then(|payload| {
        serde_json::from_slice::<ProofClaims<'_>>(payload).map_err(|_| {
            invalid("the proof's payload is not a JSON object of DPoP claims (strings `htm`, `htu`, `ath`, `jti`, each once; a number `iat`)")
        })
    });
    let jti = claims.as_ref().ok().and_then(|c| c.jti.as_deref());
    let jti = jti.filter(|j| !j.is_empty() && j.len() <= 256);
    let id = jti.map(|jti| ReplayCache::proof_id(&read.jkt, jti));
    if let (Some(replays), Some(id)) = (request.replays, id) {
        replays.prefetch(id);
    }
    let message = &proof.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    let mut signature = [0; MAX_SIGNATURE_LEN];
    let verified = decode_part(signature_b64, &mut signature)
        .is_ok_and(|signature| read.key.verify_sig(message, signature).is_ok());
    if !verified {
        return Err(invalid(
            "the proof's signature does not verify with its `jwk`",
        ));
    }
    let jkt = Arc::clone(&read.jkt);
    let claims = claims?;
    let htm = (claims.htm.as_deref()).ok_or(invalid("the proof has no `htm` (method) claim"))?;
    if htm != request.method {
        return Err(BindingError::DpopMethodMismatch {
            htm: htm.chars().take(32).collect(),
        });
    }
    let htu = (claims.htu.as_deref()).ok_or(invalid("the proof has no `htu` (URL) claim"))?;
    let htu_bare = without_query(htu);
    if !(request.url_matches)(htu_bare) {
        return Err(BindingError::DpopUrlMismatch {
            htu: htu_bare.chars().take(256).collect(),
        });
    }
    let iat = (claims.iat)
        .filter(|f| f.is_finite() && f.abs() < 1e15)
        .ok_or(invalid("the proof has no numeric `iat` claim"))? as i64;
    if (request.now - iat).abs() > request.window {
        return Err(BindingError::DpopStale {
            iat,
            window: request.window,
        });
    }
    let ath = (claims.ath.as_deref()).ok_or(BindingError::DpopTokenHashMismatch)?;
    let mut want = [0u8; 32];
    let ath_ok = decode_part(ath, &mut want)
        .is_ok_and(|hash| super::same_secret(hash, request.access_token_sha256));
    if !ath_ok {
        return Err(BindingError::DpopTokenHashMismatch);
    }
    let id = id.ok_or(invalid("the proof has no `jti` of 1 to 256 characters"))?;
    Ok(CheckedProof { id, jkt, iat })
}

/// `url` without its query and fragment, as `htu` is compared.
pub fn without_query(url: &str) -> &str {
    memchr::memchr2(b'?', b'#', url.as_bytes()).map_or(url, |end| &url[..end])
}

/// SHA-256 of `access_token`'s text.
pub fn token_digest(access_token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, access_token.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The `ath` of `access_token`: base64url SHA-256 of its text.
pub fn token_hash(access_token: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token_digest(access_token))
}

/// Signs a DPoP proof for `method` and `url` with `key` (PEM, EC or Ed25519 or RSA), for
/// `access_token`, made at `iat` with id `jti`. For the CLI and tests: clients make their own.
///
/// Fails when the PEM holds no usable private key.
pub fn sign_proof(
    pem: &[u8],
    method: &str,
    url: &str,
    access_token: &str,
    iat: i64,
    jti: &str,
) -> Result<String, String> {
    let (encoding, algs, jwk) = proof_key(pem)?;
    let mut header = jsonwebtoken::Header::new(algs);
    header.typ = Some("dpop+jwt".into());
    header.jwk = Some(jwk);
    let claims = serde_json::json!({
        "jti": jti, "htm": method, "htu": url, "iat": iat, "ath": token_hash(access_token),
    });
    jsonwebtoken::encode(&header, &claims, &encoding).map_err(|e| e.to_string())
}

/// The RFC 7638 thumbprint of the public key of private key `pem`: the `cnf.jkt` of tokens
/// bound to it.
///
/// Fails when the PEM holds no usable private key.
pub fn key_thumbprint(pem: &[u8]) -> Result<String, String> {
    let (_, _, jwk) = proof_key(pem)?;
    jwk.thumbprint(ThumbprintHash::SHA256)
        .map_err(|e| e.to_string())
}

fn proof_key(pem: &[u8]) -> Result<(jsonwebtoken::EncodingKey, Algorithm, Jwk), String> {
    let (encoding, algs) = super::signing_key_from_pem(pem)
        .ok_or("the file holds no RSA, EC or Ed25519 private key in PEM")?;
    // An EC key's curve, not the first algorithm of its family, says how it signs: the
    // first of the family that reads the key is its own.
    let (mut jwk, alg) = algs
        .iter()
        .find_map(|&alg| Some((Jwk::from_encoding_key(&encoding, alg).ok()?, alg)))
        .ok_or("the key's public half cannot be written as a JWK")?;
    jwk.common.key_algorithm = None;
    Ok((encoding, alg, jwk))
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://api.test/x";
    static TOK_SHA256: std::sync::LazyLock<[u8; 32]> =
        std::sync::LazyLock::new(|| token_digest("tok"));

    #[test]
    fn proof_parts_decode_as_strictly_as_the_base64_crate() {
        let parts = [
            "",
            "QQ",
            "QR",
            "QQ==",
            "Q",
            "QUJD",
            "QU+D",
            "QU/D",
            "QU-D",
            "QU_D",
            " QUJD",
            "QUJD\n",
            "QUJDRA",
            "QUJDRB",
            "QU JD",
            "é",
            "QUJD.QUJD",
        ];
        for part in parts {
            let mut out = [0; 16];
            let ours = decode_part(part, &mut out).ok().map(<[u8]>::to_vec);
            assert_eq!(ours, b64(part).ok(), "{part:?}");
        }
        // Too long for the space given: told apart from bad base64, and no panic.
        let mut two = [0; 2];
        assert!(matches!(
            decode_part("QUJD", &mut two),
            Err(Undecoded::TooLong)
        ));
        let mut three = [0; 3];
        assert!(matches!(
            decode_part("QU*D", &mut three),
            Err(Undecoded::NotBase64)
        ));
    }

    fn key_pem() -> String {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem()
    }

    fn request<'a>(url_matches: &'a dyn Fn(&str) -> bool) -> ProofRequest<'a> {
        ProofRequest {
            method: "GET",
            url_matches,
            access_token_sha256: &TOK_SHA256,
            now: 1_000,
            window: 60,
            replays: None,
        }
    }

    /// `proof` with its header replaced by `header` (the signature then no longer fits,
    /// which the checks before the signature must not need).
    fn with_header(proof: &str, header: serde_json::Value) -> String {
        let (_, rest) = proof.split_once('.').unwrap();
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(header.to_string());
        format!("{encoded}.{rest}")
    }

    #[test]
    fn a_proof_made_with_a_key_verifies_and_names_that_keys_thumbprint() {
        let pem = key_pem();
        let proof = sign_proof(pem.as_bytes(), "GET", URL, "tok", 1_000, "j1").unwrap();
        let matches = |htu: &str| htu == URL;
        let checked = verify_proof(&proof, &request(&matches), &ProofKeys::default()).unwrap();
        assert_eq!(*checked.jkt, key_thumbprint(pem.as_bytes()).unwrap());
        assert_eq!(
            (checked.id, checked.iat),
            (ReplayCache::proof_id(&checked.jkt, "j1"), 1_000)
        );
        // Another token's hash, another time.
        let other = sign_proof(pem.as_bytes(), "GET", URL, "other", 1_000, "j2").unwrap();
        assert_eq!(
            verify_proof(&other, &request(&matches), &ProofKeys::default()),
            Err(BindingError::DpopTokenHashMismatch)
        );
        let old = sign_proof(pem.as_bytes(), "GET", URL, "tok", 900, "j3").unwrap();
        assert!(matches!(
            verify_proof(&old, &request(&matches), &ProofKeys::default()),
            Err(BindingError::DpopStale { iat: 900, .. })
        ));
    }

    #[test]
    fn malformed_headers_are_refused_before_any_signature_check() {
        let pem = key_pem();
        let proof = sign_proof(pem.as_bytes(), "GET", URL, "tok", 1_000, "j").unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(proof.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        let jwk = header["jwk"].clone();
        let matches = |_: &str| true;
        for (what, bad) in [
            (
                "crit",
                serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk, "crit": ["x"]}),
            ),
            (
                "a P-256 key for ES384",
                serde_json::json!({"typ": "dpop+jwt", "alg": "ES384", "jwk": jwk}),
            ),
            (
                "no jwk",
                serde_json::json!({"typ": "dpop+jwt", "alg": "ES256"}),
            ),
            (
                "RS256 with an EC key",
                serde_json::json!({"typ": "dpop+jwt", "alg": "RS256", "jwk": jwk}),
            ),
            (
                "an unknown alg",
                serde_json::json!({"typ": "dpop+jwt", "alg": "XS256", "jwk": jwk}),
            ),
        ] {
            let err = verify_proof(
                &with_header(&proof, bad),
                &request(&matches),
                &ProofKeys::default(),
            )
            .unwrap_err();
            assert_eq!(err.code(), "DPOP_PROOF_INVALID", "{what}: {err}");
        }
        for garbage in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.??.**",
            &"A".repeat(MAX_PROOF_LEN + 1),
        ] {
            assert_eq!(
                verify_proof(garbage, &request(&matches), &ProofKeys::default())
                    .unwrap_err()
                    .code(),
                "DPOP_PROOF_INVALID",
                "{garbage:.20}"
            );
        }
    }

    #[test]
    fn a_header_is_read_once_and_its_key_reused() {
        let pem = key_pem();
        let keys = ProofKeys::new(8);
        let one = sign_proof(pem.as_bytes(), "GET", URL, "tok", 1_000, "a").unwrap();
        let two = sign_proof(pem.as_bytes(), "GET", URL, "tok", 1_000, "b").unwrap();
        let header = |p: &str| p.split('.').next().unwrap().to_owned();
        assert_eq!(header(&one), header(&two), "one key, one header");
        let first = keys.get(&header(&one)).unwrap();
        let again = keys.get(&header(&two)).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second proof's key came from the cache"
        );
        let matches = |_: &str| true;
        assert!(verify_proof(&two, &request(&matches), &keys).is_ok());
    }

    #[test]
    fn proofs_of_every_key_kind_verify_and_a_changed_byte_does_not() {
        let fixture = |name: &str| {
            std::fs::read(format!(
                "{}/tests/fixtures/keys/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let generated = |alg| rcgen::KeyPair::generate_for(alg).unwrap().serialize_pem();
        let rsa = fixture("rsa-a.pem");
        let mut proofs: Vec<(&str, String)> = [
            (
                "ES256",
                generated(&rcgen::PKCS_ECDSA_P256_SHA256).into_bytes(),
            ),
            (
                "ES384",
                generated(&rcgen::PKCS_ECDSA_P384_SHA384).into_bytes(),
            ),
            ("EdDSA", fixture("ed-a.pem")),
            ("RS256", rsa.clone()),
        ]
        .into_iter()
        .map(|(alg, pem)| {
            (
                alg,
                sign_proof(&pem, "GET", URL, "tok", 1_000, "j").unwrap(),
            )
        })
        .collect();
        // PS256: the same RSA key, signed as a client choosing PSS would.
        let (encoding, _, jwk) = proof_key(&rsa).unwrap();
        let mut header = jsonwebtoken::Header::new(Algorithm::PS256);
        header.typ = Some("dpop+jwt".into());
        header.jwk = Some(jwk);
        let claims = serde_json::json!({
            "jti": "j", "htm": "GET", "htu": URL, "iat": 1_000, "ath": token_hash("tok"),
        });
        proofs.push((
            "PS256",
            jsonwebtoken::encode(&header, &claims, &encoding).unwrap(),
        ));
        let matches = |htu: &str| htu == URL;
        for (alg, proof) in &proofs {
            let header_alg = serde_json::from_slice::<serde_json::Value>(
                &b64(proof.split('.').next().unwrap()).unwrap(),
            )
            .unwrap()["alg"]
                .clone();
            assert_eq!(header_alg, *alg);
            assert!(
                verify_proof(proof, &request(&matches), &ProofKeys::default()).is_ok(),
                "{alg}"
            );
            // The signature's last byte changed.
            let mut bad = proof.clone();
            let last = bad.pop().unwrap();
            bad.push(if last == 'A' { 'Q' } else { 'A' });
            assert_eq!(
                verify_proof(&bad, &request(&matches), &ProofKeys::default())
                    .unwrap_err()
                    .code(),
                "DPOP_PROOF_INVALID",
                "{alg}"
            );
        }
    }

    /// The claims are read before the signature is verified (to warm the replay cache), but
    /// a proof with a forged payload is still refused for its signature, whatever the payload.
    #[test]
    fn the_signature_is_judged_before_the_claims_read_first() {
        let pem = key_pem();
        let proof = sign_proof(pem.as_bytes(), "GET", URL, "tok", 1_000, "j1").unwrap();
        let matches = |htu: &str| htu == URL;
        let replays = ReplayCache::new(16);
        let warmed = ProofRequest {
            replays: Some(&replays),
            ..request(&matches)
        };
        assert!(verify_proof(&proof, &warmed, &ProofKeys::default()).is_ok());
        assert!(replays.is_empty(), "warming remembers nothing");
        let parts: Vec<&str> = proof.split('.').collect();
        let encode = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        let stale =
            encode(r#"{"htm":"GET","htu":"https://api.test/x","iat":1,"ath":"x","jti":"j"}"#);
        let not_json = encode("{");
        for payload in ["@@@", &not_json, &stale, &"QUJD".repeat(400)] {
            let forged = format!("{}.{payload}.{}", parts[0], parts[2]);
            let refused = verify_proof(&forged, &warmed, &ProofKeys::default()).unwrap_err();
            assert!(
                refused.to_string().contains("signature does not verify"),
                "{payload:.20}: {refused}"
            );
        }
    }

    #[test]
    fn claims_are_borrowed_from_the_payload_unless_escaped() {
        let payload = br#"{"htm":"GET","htu":"https://a.test/x","iat":1,"ath":"h","jti":"a\"b"}"#;
        let claims: ProofClaims<'_> = serde_json::from_slice(payload).unwrap();
        let borrowed = |t: &Option<Text<'_>>| matches!(t, Some(Text(Cow::Borrowed(_))));
        assert!(borrowed(&claims.htm) && borrowed(&claims.htu) && borrowed(&claims.ath));
        assert_eq!(
            claims.jti.as_deref(),
            Some("a\"b"),
            "an escaped claim is read whole"
        );
        assert_eq!(claims.iat, Some(1.0));
    }

    #[test]
    fn exactly_one_dpop_header_is_taken() {
        assert_eq!(extract_proof(&[]), Err(BindingError::DpopProofRequired));
        assert_eq!(extract_proof(&[("DPoP", " a.b.c ")]), Ok("a.b.c"));
        for two in [
            &[("dpop", "a.b.c"), ("DPOP", "d.e.f")][..],
            &[("dpop", "a.b.c, d.e.f")][..],
        ] {
            assert_eq!(extract_proof(two).unwrap_err().code(), "DPOP_PROOF_INVALID");
        }
    }
}
