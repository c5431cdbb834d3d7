//! Test tokens: the signing keys a suite declares, claims merged over the suite's defaults,
//! and times relative to the suite's clock, resolved and signed when a case runs.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value};

/// Claims whose string values are times: `+1h`, `-5m`, `now` or an RFC 3339 time.
pub(crate) const TIME_CLAIMS: &[&str] = &["exp", "nbf", "iat", "auth_time"];

/// Largest offset of a relative time (about 100 years).
const MAX_OFFSET: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

/// A key that signs test tokens.
pub(crate) struct SigningKey {
    pub name: String,
    pub key: EncodingKey,
    pub alg: Algorithm,
    pub kid: Option<String>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key may be a shared secret; keep it out of debug output.
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Whether `key` can sign with `alg` (the family and, for EC keys, the curve fit).
pub(crate) fn can_sign(key: &EncodingKey, alg: Algorithm) -> bool {
    jsonwebtoken::crypto::sign(b"portcullis suite key probe", key, alg).is_ok()
}

/// A claim value as written: JSON, or a time relative to the suite's clock.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ClaimValue {
    Json(Value),
    /// Seconds after (or, negative, before) the clock.
    FromNow(i64),
}

/// Fields of a claims or header mapping as written: `None` (a `null`) removes the field of
/// the defaults.
pub(crate) type Overrides<T> = Vec<(String, Option<T>)>;

/// `base` with `over` applied: a field replaces the field of the same name, `null` removes it.
pub(crate) fn merge<T: Clone>(base: &[(String, T)], over: &Overrides<T>) -> Vec<(String, T)> {
    let mut merged: Vec<(String, T)> = base.to_vec();
    for (name, value) in over {
        match (merged.iter().position(|(n, _)| n == name), value) {
            (Some(i), Some(v)) => merged[i].1 = v.clone(),
            (Some(i), None) => {
                merged.remove(i);
            }
            (None, Some(v)) => merged.push((name.clone(), v.clone())),
            (None, None) => {}
        }
    }
    merged
}

/// A time claim's text: `now`, `+1h`, `-90s`, `+1h30m` (relative to the clock) or an RFC 3339
/// time such as `2026-11-21T10:00:00Z`.
///
/// Fails with a message when the text is none of these or the offset is beyond 100 years.
pub(crate) fn parse_time(text: &str) -> Result<ClaimValue, String> {
    let text = text.trim();
    if text == "now" {
        return Ok(ClaimValue::FromNow(0));
    }
    if let Some((sign, rest)) = text
        .strip_prefix('+')
        .map(|r| (1, r))
        .or_else(|| text.strip_prefix('-').map(|r| (-1, r)))
    {
        let offset = humantime::parse_duration(rest.trim())
            .map_err(|_| format!("`{text}` is not a relative time"))?;
        if offset > MAX_OFFSET {
            return Err(format!("`{text}` is more than 100 years away"));
        }
        return Ok(ClaimValue::FromNow(sign * offset.as_secs() as i64));
    }
    let at = humantime::parse_rfc3339_weak(text)
        .map_err(|_| format!("`{text}` is neither a relative time nor an RFC 3339 time"))?;
    Ok(ClaimValue::Json(Value::from(crate::time::unix_seconds(at))))
}

/// A token to sign when its case runs.
#[derive(Debug, Clone)]
pub(crate) struct TokenTemplate {
    pub key: Arc<SigningKey>,
    /// The JOSE header, final.
    pub header: Map<String, Value>,
    pub claims: Vec<(String, ClaimValue)>,
}

impl TokenTemplate {
    /// The claims with relative times resolved against `now` (Unix seconds).
    pub fn claims_at(&self, now: i64) -> Map<String, Value> {
        self.claims
            .iter()
            .map(|(name, value)| {
                let value = match value {
                    ClaimValue::Json(v) => v.clone(),
                    ClaimValue::FromNow(offset) => Value::from(now.saturating_add(*offset)),
                };
                (name.clone(), value)
            })
            .collect()
    }

    /// The compact JWS for `now` (Unix seconds), signed with the key's algorithm whatever the
    /// header says, so that suites can test lying headers.
    ///
    /// Fails when the crypto library refuses the key for its algorithm.
    pub fn sign(&self, now: i64) -> Result<String, String> {
        let b64 = |json: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string().as_bytes())
        };
        let message = format!(
            "{}.{}",
            b64(&Value::Object(self.header.clone())),
            b64(&Value::Object(self.claims_at(now)))
        );
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &self.key.key, self.key.alg)
            .map_err(|e| format!("key `{}` cannot sign: {e}", self.key.name))?;
        Ok(format!("{message}.{signature}"))
    }
}

/// The default JOSE header of a key: `alg`, `typ` and, when the key has one, `kid`.
pub(crate) fn default_header(key: &SigningKey) -> Vec<(String, Value)> {
    let mut header = vec![
        ("alg".to_owned(), Value::from(format!("{:?}", key.alg))),
        ("typ".to_owned(), Value::from("JWT")),
    ];
    if let Some(kid) = &key.kid {
        header.push(("kid".to_owned(), Value::from(kid.as_str())));
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn o<T>(fields: Vec<(&str, Option<T>)>) -> Overrides<T> {
        fields.into_iter().map(|(n, v)| (n.to_owned(), v)).collect()
    }

    #[test]
    fn claims_merge_over_defaults_and_null_removes_one() {
        let defaults = vec![
            ("iss".to_owned(), 1),
            ("aud".to_owned(), 2),
            ("exp".to_owned(), 3),
        ];
        let merged = merge(
            &defaults,
            &o(vec![("aud", Some(20)), ("exp", None), ("sub", Some(4))]),
        );
        assert_eq!(
            merged,
            vec![
                ("iss".to_owned(), 1),
                ("aud".to_owned(), 20),
                ("sub".to_owned(), 4)
            ]
        );
        // Removing a claim the defaults lack is no error.
        assert_eq!(merge(&defaults, &o(vec![("nbf", None)])), defaults);
        assert!(merge::<i32>(&[], &o(vec![("x", None)])).is_empty());
    }

    #[test]
    fn relative_and_absolute_times_resolve_against_the_clock() {
        assert_eq!(parse_time("+1h"), Ok(ClaimValue::FromNow(3600)));
        assert_eq!(parse_time("-1m"), Ok(ClaimValue::FromNow(-60)));
        assert_eq!(parse_time("+1h30m"), Ok(ClaimValue::FromNow(5400)));
        assert_eq!(parse_time(" now "), Ok(ClaimValue::FromNow(0)));
        assert_eq!(
            parse_time("2026-11-21T10:00:00Z"),
            Ok(ClaimValue::Json(json!(1_795_255_200)))
        );
        for bad in ["+1", "+", "-soon", "tomorrow", "+999999999y", "", "1h"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signed_tokens_carry_resolved_times_and_verify() {
        let key = SigningKey {
            name: "k".into(),
            key: EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            alg: Algorithm::HS256,
            kid: Some("k1".into()),
        };
        let template = TokenTemplate {
            header: default_header(&key).into_iter().collect(),
            key: Arc::new(key),
            claims: vec![
                ("sub".into(), ClaimValue::Json(json!("user.0"))),
                ("exp".into(), ClaimValue::FromNow(3600)),
                ("iat".into(), ClaimValue::FromNow(i64::MIN)),
            ],
        };
        let claims = template.claims_at(1000);
        assert_eq!(claims["exp"], json!(4600));
        assert_eq!(claims["iat"], json!(i64::MIN + 1000));
        let token = template.sign(1000).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[0])
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header, json!({"alg": "HS256", "typ": "JWT", "kid": "k1"}));
        assert!(
            jsonwebtoken::crypto::verify(
                parts[2],
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &jsonwebtoken::DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
                Algorithm::HS256
            )
            .unwrap()
        );
    }
}
