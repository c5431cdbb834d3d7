//! Bearer token verification (SPEC §2 step 2): extraction from `Authorization`, header
//! checks, key selection, signature, and the time, issuer and audience claims. Pure: the
//! caller passes the clock and the key set.

pub mod binding;
pub mod cache;
pub mod cert;
pub mod dpop;
pub mod err;
pub mod jwks;
pub mod remote;
pub mod replay;

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use self::cache::{DEFAULT_CACHE_CAPACITY, TokenCache};
pub use self::err::TokenError;
use self::jwks::{KeySet, VerificationKey};

/// Longest token accepted; real access tokens are a few KiB at most.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A claim name, looked up as a top-level claim first (names like
/// `https://example.com/groups` contain dots) and then as a dotted path into nested objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    name: Box<str>,
    parts: Box<[Box<str>]>,
}

impl ClaimPath {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            parts: name.split('.').map(Into::into).collect(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        if let Some(v) = claims.get(&*self.name) {
            return Some(v);
        }
        if self.parts.len() < 2 {
            return None;
        }
        let mut current = claims.get(&*self.parts[0])?;
        for part in &self.parts[1..] {
            current = current.as_object()?.get(&**part)?;
        }
        Some(current)
    }
}

/// Where a service's signing keys come from.
#[derive(Debug)]
pub enum KeySource {
    /// A JWKS file, read when the policy set was compiled.
    Static {
        keys: KeySet,
        file: std::path::PathBuf,
    },
    /// A key set published at a URL; fetching it is not part of the decision engine, and
    /// until a key set was loaded tokens are refused with `KEYS_UNAVAILABLE`.
    Remote(Arc<remote::RemoteKeySet>),
}

/// What a service demands of its callers' tokens.
#[derive(Debug)]
pub struct TokenRequirements {
    pub issuer: Box<str>,
    pub audiences: Box<[Box<str>]>,
    pub algorithms: Vec<Algorithm>,
    pub leeway: i64,
    pub groups_claim: ClaimPath,
    pub scope_claim: ClaimPath,
    pub keys: KeySource,
    /// Names the key set and the accepted algorithms (see [`keys_id`]).
    pub keys_id: Arc<str>,
    /// Sender-constrained tokens: whether `cnf` is checked (`token.binding`).
    pub binding: binding::BindingPolicy,
}

/// Names a service's key set and accepted algorithms, for a decision's replay inputs: a
/// token's signature, checked once with them, holds for another policy set whose service
/// names the same. A key file by its content, a remote key set by where it is fetched from.
pub fn keys_id(keys: &KeySource, algorithms: &[Algorithm]) -> Arc<str> {
    use std::fmt::Write as _;
    let mut id = String::with_capacity(64);
    match keys {
        KeySource::Static { keys, .. } => {
            // Half the fingerprint tells key files apart well enough, in less of a record.
            id.push_str("file:");
            for b in &keys.fingerprint[..8] {
                let _ = write!(id, "{b:02x}");
            }
        }
        KeySource::Remote(remote) => {
            let _ = write!(id, "url:{}", remote.location);
        }
    }
    for (i, alg) in algorithms.iter().enumerate() {
        id.push(if i == 0 { '/' } else { ',' });
        let _ = write!(id, "{alg:?}");
    }
    id.into()
}

/// A token whose signature has been verified, with the claims decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    pub alg: Algorithm,
    pub kid: Option<Box<str>>,
    pub claims: Map<String, Value>,
    pub sub: Option<String>,
    pub client_id: Option<String>,
    pub iss: Option<String>,
    pub aud: Vec<String>,
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
    /// What every DPoP proof of this token is checked or shown against, worked out for its
    /// first proof and kept with the cached token for the next ones.
    pub dpop: OnceLock<DpopMemo>,
    /// The facts its decisions' replay inputs keep, worked out for its first decision.
    pub recorded: OnceLock<FactsMemo>,
}

/// `alg`'s JOSE name (`RS256`, `EdDSA`, …), as its `Debug` writes it, without formatting.
pub fn algorithm_name(alg: Algorithm) -> Cow<'static, str> {
    use Algorithm::*;
    Cow::Borrowed(match alg {
        HS256 => "HS256",
        HS384 => "HS384",
        HS512 => "HS512",
        ES256 => "ES256",
        ES384 => "ES384",
        RS256 => "RS256",
        RS384 => "RS384",
        RS512 => "RS512",
        PS256 => "PS256",
        PS384 => "PS384",
        PS512 => "PS512",
        EdDSA => "EdDSA",
        // The enum is non-exhaustive: a variant of a newer version is formatted.
        other => return Cow::Owned(format!("{other:?}")),
    })
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ (for
/// thumbprints and token hashes, which an attacker could otherwise guess byte by byte).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// A DPoP-bound token's facts that each of its proofs needs again.
#[derive(Debug, Clone, PartialEq)]
pub struct DpopMemo {
    /// SHA-256 of the token's text, which a proof's `ath` must encode.
    pub text_sha256: [u8; 32],
    /// The token's `cnf.jkt` as the trace entry's expected value (its first 64 characters).
    pub jkt_shown: Option<Arc<Value>>,
}

/// What a verified token said that a decision may read, beyond the decision's token summary
/// (algorithm, key id, issuer, audiences, subject, client). Claims are kept by the path a
/// rule names; `absent` lists the paths read that the token did not have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedFacts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub claims: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<String>,
    /// The JSON above, written once: a cached token's facts are shared by all its decisions,
    /// and each decision's record writes them.
    #[serde(skip)]
    json: FactsJson,
}

impl VerifiedFacts {
    pub(crate) fn new(exp: Option<i64>, nbf: Option<i64>, iat: Option<i64>) -> Self {
        Self {
            exp,
            nbf,
            iat,
            claims: Map::new(),
            absent: Vec::new(),
            json: FactsJson::default(),
        }
    }

    pub(crate) fn kept(&self, path: &str) -> bool {
        self.claims.contains_key(path) || self.absent.iter().any(|a| a == path)
    }

    /// These facts as JSON, as serialising them writes it; written on the first call, so the
    /// facts must be complete by then (they are shared behind an `Arc` once read). `None`
    /// only if serde_json could not write them, which string keys and JSON values rule out.
    pub fn json(&self) -> Option<&serde_json::value::RawValue> {
        (self.json.0)
            .get_or_init(|| serde_json::value::to_raw_value(self).ok())
            .as_deref()
    }
}

/// [`VerifiedFacts::json`]'s memo: no part of what the facts are (equal facts are equal
/// whether written yet or not), and not cloned with them, since a copy may be changed.
#[derive(Default)]
struct FactsJson(OnceLock<Option<Box<serde_json::value::RawValue>>>);

impl Clone for FactsJson {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for FactsJson {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for FactsJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FactsJson")
    }
}

/// The facts of a cached token that its decisions' replay inputs keep for one service (and
/// the shadow set's service of the same name), read for its first decision there.
#[derive(Debug, Clone, PartialEq)]
pub struct FactsMemo {
    /// The [`ApiService::id`](crate::policy::ApiService::id)s they were read for: ids are
    /// never reused, so a service of a reloaded set cannot be given another's facts.
    pub for_services: (u64, Option<u64>),
    pub facts: Arc<VerifiedFacts>,
}

impl VerifiedToken {
    /// For unit tests: an RS256 token with `claims` (a JSON object), its `sub` and
    /// `client_id` read from them, and no validity times.
    #[cfg(test)]
    pub(crate) fn of_claims(claims: Value) -> Self {
        let claims = claims.as_object().cloned().unwrap_or_default();
        let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
        Self {
            alg: Algorithm::RS256,
            kid: None,
            sub: text("sub"),
            client_id: text("client_id"),
            iss: None,
            aud: Vec::new(),
            exp: None,
            nbf: None,
            iat: None,
            dpop: OnceLock::new(),
            recorded: OnceLock::new(),
            claims,
        }
    }

    /// Issued to a user (SPEC §6a): has a `sub` that is not the client's own id.
    pub fn is_delegated(&self) -> bool {
        match &self.sub {
            None => false,
            Some(sub) => {
                let is_client =
                    |claim: &str| self.claims.get(claim).and_then(Value::as_str) == Some(sub);
                !is_client("client_id") && !is_client("azp")
            }
        }
    }
}

/// A private signing key from PEM (RSA, EC or Ed25519), with the algorithms a key of its
/// type signs, in order of preference. For development and test tokens; `None` when the PEM
/// holds no such key.
pub fn signing_key_from_pem(
    pem: &[u8],
) -> Option<(jsonwebtoken::EncodingKey, &'static [Algorithm])> {
    use jsonwebtoken::EncodingKey;
    if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
        return Some((key, jwks::RSA_ALGORITHMS));
    }
    if let Ok(key) = EncodingKey::from_ec_pem(pem) {
        return Some((key, &[Algorithm::ES256, Algorithm::ES384]));
    }
    EncodingKey::from_ed_pem(pem)
        .ok()
        .map(|key| (key, &[Algorithm::EdDSA][..]))
}

/// An RFC 6750 b64token character, as range compares (see [`TOKEN_BYTE_CLASS`]).
#[inline(always)]
fn is_b64token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        | (b == b'-')
        | (b == b'.')
        | (b == b'_')
        | (b == b'~')
        | (b == b'+')
        | (b == b'/')
        | (b == b'=')
}

const OUTSIDE: u8 = 0;
const B64TOKEN: u8 = 1;
/// Space, tab or comma: several tokens in one header (Envoy joins repeated headers with `,`).
const SEPARATOR: u8 = 2;

/// The class of each byte in a bearer token.
const TOKEN_BYTE_CLASS: [u8; 256] = {
    let mut table = [OUTSIDE; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
        {
            table[b] = B64TOKEN;
        } else if matches!(c, b' ' | b'\t' | b',') {
            table[b] = SEPARATOR;
        }
        b += 1;
    }
    table
};

/// How the access token was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    /// `Authorization: DPoP <token>` (RFC 9449 §7.1).
    Dpop,
}

/// Takes the one bearer token out of the request headers (names compared case-insensitively).
///
/// Fails when there is none, when there are several, or when the credentials are not a
/// single token.
pub fn extract_bearer<'a>(headers: &[(&'a str, &'a str)]) -> Result<&'a str, TokenError> {
    extract_credentials(headers, false).map(|(token, _)| token)
}

/// Takes the one access token out of the request headers, sent with the `Bearer` scheme or,
/// when `accept_dpop`, the `DPoP` scheme (both case-insensitive).
///
/// Fails as [`extract_bearer`] does.
pub fn extract_credentials<'a>(
    headers: &[(&'a str, &'a str)],
    accept_dpop: bool,
) -> Result<(&'a str, Scheme), TokenError> {
    let (credentials, scheme) = read_credentials(headers, accept_dpop)?;
    check_token_text(credentials)?;
    Ok((credentials, scheme))
}

/// [`extract_credentials`] up to the token's own characters, which
/// [`verify_credentials_cached`] checks only when the token is not in the cache.
pub fn read_credentials<'a>(
    headers: &[(&'a str, &'a str)],
    accept_dpop: bool,
) -> Result<(&'a str, Scheme), TokenError> {
    let mut found = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("authorization") {
            if found.is_some() {
                return Err(TokenError::MultipleTokens);
            }
            found = Some(*value);
        }
    }
    let value = found.ok_or(TokenError::Missing { scheme: None })?.trim();
    let (scheme, credentials) = value
        .split_once([' ', '\t'])
        .map_or((value, ""), |(s, c)| (s, c.trim()));
    let used = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if accept_dpop && scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        let shown: String = scheme
            .chars()
            .take(20)
            .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
            .collect();
        return Err(TokenError::Missing {
            scheme: Some(shown),
        });
    };
    if credentials.is_empty() {
        return Err(TokenError::Malformed {
            reason: Cow::Borrowed("the Bearer credentials are empty"),
        });
    }
    Ok((credentials, used))
}

/// The token's characters and length: one token (no separators), at most
/// [`MAX_TOKEN_LEN`] bytes, RFC 6750 b64token characters only.
fn check_token_text(credentials: &str) -> Result<(), TokenError> {
    // A branch-free test of whole chunks (which the compiler turns into vector compares),
    // and the byte-class table only to say what is wrong with a token that fails it.
    let (mut separators, mut outside) = (false, false);
    if !credentials
        .as_bytes()
        .chunks(32)
        .all(|chunk| chunk.iter().fold(true, |all, &b| all & is_b64token_byte(b)))
    {
        for b in credentials.bytes() {
            match TOKEN_BYTE_CLASS[usize::from(b)] {
                B64TOKEN => {}
                SEPARATOR => separators = true,
                _ => outside = true,
            }
        }
    }
    if separators {
        return Err(TokenError::MultipleTokens);
    }
    if credentials.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLarge {
            len: credentials.len(),
        });
    }
    // RFC 6750 b64token characters.
    if outside {
        return Err(TokenError::Malformed {
            reason: Cow::Borrowed("the token contains characters outside the base64url alphabet"),
        });
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct JoseHeader {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<Value>,
}

fn b64(part: &str) -> Result<Vec<u8>, TokenError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed {
            reason: Cow::Borrowed("a part of the token is not base64url"),
        })
}

/// Verifies the signature of `token` with the service's keys, or finds it verified in
/// `cache`; returns the token and whether it came from the cache. The claims are checked
/// separately, by [`check_claims`], on every use.
///
/// Fails with the first problem found, in this order: structure, algorithm, key, signature.
pub fn verify_signature_cached(
    token: &str,
    reqs: &TokenRequirements,
    cache: &TokenCache,
    now: i64,
) -> Result<(Arc<VerifiedToken>, bool), TokenError> {
    verify_cached(token, reqs, cache, now, false).map_err(|(e, _)| e)
}

/// [`verify_signature_cached`] for a token as [`read_credentials`] found it, its characters
/// not checked yet. A token found in the cache has text equal to one that verified (the
/// cache compares the whole text), which is base64url parts and dots, all b64token
/// characters; so only a token not found is read byte by byte, before any key is used, and
/// a bad one fails as [`extract_credentials`] would have. Length is checked first. The error's flag says
/// that it came from reading the header, and so holds for every service.
pub fn verify_credentials_cached(
    token: &str,
    reqs: &TokenRequirements,
    cache: &TokenCache,
    now: i64,
) -> Result<(Arc<VerifiedToken>, bool), (TokenError, bool)> {
    verify_cached(token, reqs, cache, now, true)
}

fn verify_cached(
    token: &str,
    reqs: &TokenRequirements,
    cache: &TokenCache,
    now: i64,
    unchecked: bool,
) -> Result<(Arc<VerifiedToken>, bool), (TokenError, bool)> {
    let check_text = || {
        if unchecked {
            check_token_text(token).map_err(|e| (e, true))
        } else {
            Ok(())
        }
    };
    if token.len() > MAX_TOKEN_LEN {
        // Fails; not worth hashing.
        check_text()?;
    }
    let remote;
    let keys = match &reqs.keys {
        KeySource::Static { keys, .. } => keys,
        KeySource::Remote(set) => match set.current() {
            Some(current) => {
                remote = current;
                &*remote
            }
            None => {
                check_text()?;
                return Err((TokenError::KeysUnavailable, false));
            }
        },
    };
    let cache_key = cache.key(&keys.fingerprint, token);
    if let Some(verified) = cache.get(&cache_key, now) {
        // The key set is the same, but the algorithm allow-list is the service's own.
        if !reqs.algorithms.contains(&verified.alg) {
            let alg = format!("{:?}", verified.alg);
            return Err((algorithm_not_allowed(&alg, reqs), false));
        }
        return Ok((verified, true));
    }
    check_text()?;
    let verified = Arc::new(verify_signature(token, reqs, keys).map_err(|e| (e, false))?);
    cache.insert(cache_key, verified.clone(), now);
    Ok((verified, false))
}

fn algorithm_not_allowed(alg: &str, reqs: &TokenRequirements) -> TokenError {
    TokenError::AlgorithmNotAllowed {
        alg: alg.chars().take(32).collect(),
        allowed: reqs.algorithms.iter().map(|a| format!("{a:?}")).collect(),
    }
}

fn verify_signature(
    token: &str,
    reqs: &TokenRequirements,
    keys: &KeySet,
) -> Result<VerifiedToken, TokenError> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed {
            reason: Cow::Borrowed(if token.split('.').count() == 5 {
                "encrypted tokens (JWE) are not accepted"
            } else {
                "a signed JWT has three dot-separated parts"
            }),
        });
    };
    let header: JoseHeader =
        serde_json::from_slice(&b64(header_b64)?).map_err(|_| TokenError::Malformed {
            reason: Cow::Borrowed("the header is not a JSON object"),
        })?;
    if header.crit.is_some() {
        return Err(TokenError::Malformed {
            reason: Cow::Borrowed(
                "the header lists critical extensions (`crit`), none of which are supported",
            ),
        });
    }
    let alg_name = header.alg.ok_or(TokenError::Malformed {
        reason: Cow::Borrowed("the header has no `alg`"),
    })?;
    let alg = Algorithm::from_str(&alg_name)
        .ok()
        .filter(|a| reqs.algorithms.contains(a))
        .ok_or_else(|| algorithm_not_allowed(&alg_name, reqs))?;
    let key = select_key(keys, header.kid.as_deref(), alg)?;
    let message_len = header_b64.len() + 1 + payload_b64.len();
    let message = &token.as_bytes()[..message_len];
    match jsonwebtoken::crypto::verify(signature_b64, message, &key.decoding, alg) {
        Ok(true) => {}
        Ok(false) => return Err(TokenError::InvalidSignature),
        Err(e) => {
            return Err(match e.kind() {
                jsonwebtoken::errors::ErrorKind::Base64(_) => TokenError::Malformed {
                    reason: Cow::Borrowed("the signature is not base64url"),
                },
                _ => TokenError::InvalidSignature,
            });
        }
    }
    let claims: Map<String, Value> =
        serde_json::from_slice(&b64(payload_b64)?).map_err(|_| TokenError::Malformed {
            reason: Cow::Borrowed("the payload is not a JSON object"),
        })?;
    decode_claims(claims, alg, header.kid)
}

fn select_key<'k>(
    keys: &'k KeySet,
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<&'k VerificationKey, TokenError> {
    match kid {
        Some(kid) => {
            let key = keys.by_kid(kid).ok_or_else(|| TokenError::UnknownKey {
                kid: kid.chars().take(128).collect(),
            })?;
            if !key.fits(alg) {
                return Err(TokenError::KeyDoesNotFitAlgorithm {
                    kid: kid.to_owned(),
                    alg: format!("{alg:?}"),
                });
            }
            Ok(key)
        }
        None => {
            let mut fitting = keys.keys.iter().filter(|k| k.fits(alg));
            match (fitting.next(), fitting.count()) {
                (Some(key), 0) => Ok(key),
                (None, _) => Err(TokenError::UnknownKey { kid: String::new() }),
                (Some(_), more) => Err(TokenError::KeyIdRequired {
                    candidates: more + 1,
                }),
            }
        }
    }
}

fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
    round_up: bool,
) -> Result<Option<i64>, TokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let value = n
                .as_i64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.is_finite() && f.abs() < 1e15)
                        .map(|f| {
                            // Round towards the stricter side: an earlier expiry, a later start.
                            if round_up {
                                f.ceil() as i64
                            } else {
                                f.floor() as i64
                            }
                        })
                })
                .ok_or(TokenError::Malformed {
                    reason: Cow::Borrowed("a time claim is out of range"),
                })?;
            Ok(Some(value))
        }
        Some(_) => Err(TokenError::Malformed {
            reason: Cow::Borrowed("a time claim (`exp`, `nbf`, `iat`) is not a number"),
        }),
    }
}

fn string_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, TokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::Malformed {
            reason: Cow::Borrowed(
                "a string claim (`sub`, `iss`, `client_id`, `azp`) is not a string",
            ),
        }),
    }
}

fn decode_claims(
    claims: Map<String, Value>,
    alg: Algorithm,
    kid: Option<String>,
) -> Result<VerifiedToken, TokenError> {
    let aud = match claims.get("aud") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(TokenError::Malformed {
                reason: Cow::Borrowed("`aud` is neither a string nor an array of strings"),
            })?,
        Some(_) => {
            return Err(TokenError::Malformed {
                reason: Cow::Borrowed("`aud` is neither a string nor an array of strings"),
            });
        }
    };
    let client_id = match string_claim(&claims, "client_id")? {
        Some(id) => Some(id),
        None => string_claim(&claims, "azp")?,
    };
    Ok(VerifiedToken {
        alg,
        kid: kid.map(Into::into),
        sub: string_claim(&claims, "sub")?,
        iss: string_claim(&claims, "iss")?,
        client_id,
        aud,
        exp: numeric_date(&claims, "exp", false)?,
        nbf: numeric_date(&claims, "nbf", true)?,
        iat: numeric_date(&claims, "iat", true)?,
        dpop: OnceLock::new(),
        recorded: OnceLock::new(),
        claims,
    })
}

/// The checks that depend on the clock and on the service, done on every use, cached or not.
///
/// Fails with the first problem, in this order: expiry, not-before, issued-at, issuer,
/// audience.
pub fn check_claims(
    token: &VerifiedToken,
    reqs: &TokenRequirements,
    now: i64,
) -> Result<(), TokenError> {
    let exp = token.exp.ok_or(TokenError::MissingExpiry)?;
    if now >= exp.saturating_add(reqs.leeway) {
        return Err(TokenError::Expired { exp });
    }
    if let Some(nbf) = token.nbf
        && now.saturating_add(reqs.leeway) < nbf
    {
        return Err(TokenError::NotYetValid { nbf });
    }
    if let Some(iat) = token.iat
        && now.saturating_add(reqs.leeway) < iat
    {
        return Err(TokenError::IssuedInFuture { iat });
    }
    if token.iss.as_deref() != Some(&*reqs.issuer) {
        return Err(TokenError::InvalidIssuer {
            expected: reqs.issuer.to_string(),
            actual: token.iss.as_ref().map(|s| s.chars().take(256).collect()),
        });
    }
    if !token
        .aud
        .iter()
        .any(|a| reqs.audiences.iter().any(|want| **want == **a))
    {
        return Err(TokenError::InvalidAudience {
            expected: reqs.audiences.iter().map(|a| a.to_string()).collect(),
            actual: token
                .aud
                .iter()
                .take(16)
                .map(|a| a.chars().take(256).collect())
                .collect(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kept JSON is the facts' own: a copy changed after the original was written
    /// writes what it holds.
    #[test]
    fn facts_json_is_serdes_and_a_changed_copy_writes_its_own() {
        let mut facts = VerifiedFacts::new(Some(2_000_000_000), None, Some(1_000));
        facts
            .claims
            .insert("scope".into(), Value::from("read write"));
        facts.absent.push("groups".into());
        let written = facts.json().map(|j| j.get().to_owned());
        assert_eq!(written, serde_json::to_string(&facts).ok());
        let mut copy = facts.clone();
        copy.claims.insert("sub".into(), Value::from("alice"));
        assert_eq!(
            copy.json().map(|j| j.get().to_owned()),
            serde_json::to_string(&copy).ok()
        );
        assert_ne!(copy.json().map(|j| j.get()), written.as_deref());
        assert_eq!(copy, copy.clone(), "the memo is no part of what facts are");
    }

    #[test]
    fn algorithm_names_are_what_debug_writes() {
        for family in [
            jsonwebtoken::AlgorithmFamily::Hmac,
            jsonwebtoken::AlgorithmFamily::Rsa,
            jsonwebtoken::AlgorithmFamily::Ec,
            jsonwebtoken::AlgorithmFamily::Ed,
        ] {
            for alg in family.algorithms() {
                assert_eq!(algorithm_name(*alg), format!("{alg:?}"));
            }
        }
    }

    #[test]
    fn the_range_test_and_the_byte_class_table_agree_on_every_byte() {
        for b in 0..=255u8 {
            assert_eq!(
                is_b64token_byte(b),
                TOKEN_BYTE_CLASS[usize::from(b)] == B64TOKEN,
                "byte {b}"
            );
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_exactly_one_token() {
        assert_eq!(
            extract_bearer(&[("Authorization", "bearer abc.def.ghi")]),
            Ok("abc.def.ghi")
        );
        assert_eq!(extract_bearer(&[("authorization", "BEARER  x ")]), Ok("x"));
        assert_eq!(
            extract_bearer(&[]),
            Err(TokenError::Missing { scheme: None })
        );
        assert_eq!(
            extract_bearer(&[("authorization", "Basic dXNlcjpwYXNz")]),
            Err(TokenError::Missing {
                scheme: Some("Basic".into())
            })
        );
        assert_eq!(
            extract_bearer(&[("authorization", "Bearer a"), ("Authorization", "Bearer b")]),
            Err(TokenError::MultipleTokens)
        );
        assert_eq!(
            extract_bearer(&[("authorization", "Bearer a, Bearer b")]),
            Err(TokenError::MultipleTokens)
        );
        assert!(matches!(
            extract_bearer(&[("authorization", "Bearer")]),
            Err(TokenError::Malformed { .. })
        ));
        assert!(matches!(
            extract_bearer(&[("authorization", "Bearer a\"b")]),
            Err(TokenError::Malformed { .. })
        ));
    }

    #[test]
    fn claim_paths_prefer_whole_names_then_nested_objects() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"https://x.example/groups": ["a"], "realm_access": {"roles": ["r"]}}"#,
        )
        .unwrap();
        assert_eq!(
            ClaimPath::new("https://x.example/groups").lookup(&claims),
            Some(&serde_json::json!(["a"]))
        );
        assert_eq!(
            ClaimPath::new("realm_access.roles").lookup(&claims),
            Some(&serde_json::json!(["r"]))
        );
        assert_eq!(ClaimPath::new("realm_access.none").lookup(&claims), None);
    }
}
