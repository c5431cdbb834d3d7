//! Decoding a suite's `keys`: named signing keys from PEM files or inline secrets, each checked
//! against the algorithm it signs with.

use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::Value;

use super::{ALGORITHMS, Ctx, Keys, entries, present};
use crate::policy::err::{ErrorKind, Errors};
use crate::policy::yaml::{Node, Pos};
use crate::suite::token::{SigningKey, can_sign};

pub(super) fn decode_keys(node: &Node, errs: &mut Errors<'_>, ctx: &Ctx<'_>) -> Keys {
    let Some(entries) = entries(node, "`keys`", errs) else {
        return Vec::new();
    };
    entries
        .iter()
        .map(|(name, spec)| {
            let key = decode_key(&name.text, spec, errs, ctx).map(Arc::new);
            (name.text.clone(), key)
        })
        .collect()
}

fn decode_key(name: &str, node: &Node, errs: &mut Errors<'_>, ctx: &Ctx<'_>) -> Option<SigningKey> {
    let what = format!("key `{name}`");
    let map = errs.map(node, &what, &["file", "jwks", "secret", "kid", "alg"])?;
    let sources = map.present(&["file", "jwks", "secret"]);
    if sources.len() != 1 {
        errs.push(
            map.pos,
            ErrorKind::InvalidValue,
            format!("{what} needs exactly one of `file`, `jwks` or `secret`"),
            "`file:` a PEM private key, `jwks:` a JWKS file with a shared (`oct`) key, `secret:` a shared secret as text",
        );
        return None;
    }
    let mut kid = match present(map.get("kid")) {
        Some(n) => Some(errs.string(n, "`kid`")?.to_owned()),
        None => None,
    };
    let alg_node = present(map.get("alg"));
    let mut alg = match alg_node {
        Some(n) => Some(decode_alg(n, errs)?),
        None => None,
    };
    let source_node = map.get(sources[0])?;
    let text = errs.string(source_node, &format!("`{}`", sources[0]))?;
    let key = match sources[0] {
        "secret" => EncodingKey::from_secret(text.as_bytes()),
        "jwks" => {
            let bytes = read_key_file(text, source_node.pos, errs, ctx)?;
            let (secret, jwk_kid, jwk_alg) =
                oct_key(&bytes, kid.as_deref(), text, source_node.pos, errs)?;
            kid = kid.or(jwk_kid);
            if alg.is_none() {
                alg = jwk_alg.and_then(|a| Algorithm::from_str(&a).ok());
            }
            EncodingKey::from_secret(&secret)
        }
        _ => {
            let bytes = read_key_file(text, source_node.pos, errs, ctx)?;
            let Some((key, inferred)) = crate::token::signing_key_from_pem(&bytes) else {
                errs.push(
                    source_node.pos,
                    ErrorKind::KeyFile,
                    format!("`{text}` holds no PEM private key (RSA, EC or Ed25519)"),
                    "point `file` at a private key; for a shared secret use `secret` or `jwks`",
                );
                return None;
            };
            if alg.is_none() {
                alg = inferred.iter().copied().find(|a| can_sign(&key, *a));
            }
            key
        }
    };
    let alg = alg.unwrap_or(Algorithm::HS256);
    if !can_sign(&key, alg) {
        errs.push(
            alg_node.map_or(source_node.pos, |n| n.pos),
            ErrorKind::KeyFile,
            format!("{what} cannot sign {alg:?}"),
            "RSA keys sign RS* and PS*, EC P-256 keys ES256, P-384 keys ES384, Ed25519 keys EdDSA, shared secrets HS*",
        );
        return None;
    }
    Some(SigningKey {
        name: name.to_owned(),
        key,
        alg,
        kid,
    })
}

fn decode_alg(node: &Node, errs: &mut Errors<'_>) -> Option<Algorithm> {
    let text = errs.string(node, "`alg`")?;
    match Algorithm::from_str(text) {
        Ok(alg) => Some(alg),
        Err(_) => {
            errs.push(
                node.pos,
                ErrorKind::InvalidValue,
                format!("unknown algorithm `{text}`"),
                format!("use {ALGORITHMS}"),
            );
            None
        }
    }
}

fn read_key_file(path: &str, pos: Pos, errs: &mut Errors<'_>, ctx: &Ctx<'_>) -> Option<Vec<u8>> {
    match (ctx.read_file)(&ctx.dir.join(path)) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            errs.push(
                pos,
                ErrorKind::KeyFile,
                format!("cannot read `{path}`: {e}"),
                "key paths are relative to the suite file",
            );
            None
        }
    }
}

/// The secret, `kid` and `alg` of the `oct` key of a JWKS file (the one with `kid`, if given).
#[allow(clippy::type_complexity)]
fn oct_key(
    bytes: &[u8],
    kid: Option<&str>,
    path: &str,
    pos: Pos,
    errs: &mut Errors<'_>,
) -> Option<(Vec<u8>, Option<String>, Option<String>)> {
    let document: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let found = document
        .get("keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|k| k.get("kty").and_then(Value::as_str) == Some("oct"))
        .find(|k| kid.is_none() || k.get("kid").and_then(Value::as_str) == kid);
    let secret = found
        .and_then(|k| k.get("k"))
        .and_then(Value::as_str)
        .and_then(|k| {
            let k = k.trim_end_matches('=');
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(k)
                .ok()
        });
    match (found, secret) {
        (Some(jwk), Some(secret)) => {
            let text = |name: &str| jwk.get(name).and_then(Value::as_str).map(str::to_owned);
            Some((secret, text("kid"), text("alg")))
        }
        _ => {
            errs.push(
                pos,
                ErrorKind::KeyFile,
                match kid {
                    Some(kid) => format!("`{path}` has no `oct` key `{kid}` with a base64url `k`"),
                    None => format!("`{path}` has no `oct` key with a base64url `k`"),
                },
                "a JWKS file is `{\"keys\": [{\"kty\": \"oct\", \"k\": \"…\"}]}`; for a private key use `file` with a PEM file",
            );
            None
        }
    }
}
