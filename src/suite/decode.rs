//! Suite files decoded from the position-keeping YAML tree with the policy decoder's helpers:
//! every problem is reported at its place and decoding goes on, and an unknown key is an
//! error, so that a typo never silently drops a check.

use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value};

use super::expect::{BODY_CODES, Expectation};
use super::token::{
    ClaimValue, Overrides, SigningKey, TIME_CLAIMS, TokenTemplate, can_sign, default_header, merge,
    parse_time,
};
use super::{Case, Request, Suite, TokenSpec};
use crate::decision::{DETAIL_CODES, Outcome};
use crate::policy::err::{ErrorKind, Errors, closest};
use crate::policy::yaml::{self, Key, Node, NodeKind, Pos};
use crate::policy::{PolicyError, SourceFile};

const ALGORITHMS: &str =
    "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384 or HS512";
const TIME_HELP: &str = "write a time relative to the suite's clock (`+1h`, `-5m`, `now`), an RFC 3339 time (`2026-11-21T10:00:00Z`) or Unix seconds";

struct Ctx<'a> {
    dir: &'a Path,
    read_file: &'a dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
}

/// The keys a suite declares by name; `None` for a key whose declaration is broken (already
/// reported), so that its uses are not reported again.
type Keys = Vec<(String, Option<Arc<SigningKey>>)>;

#[derive(Debug, Clone)]
enum KeyRef {
    Unset,
    Broken,
    Key(Arc<SigningKey>),
}

/// A token as a suite's defaults or a case write it, before the two are merged.
#[derive(Debug, Clone)]
struct TokenDraft {
    key: KeyRef,
    header: Overrides<Value>,
    claims: Overrides<ClaimValue>,
}

#[derive(Debug, Default)]
struct Defaults {
    base_url: Option<String>,
    headers: Vec<(String, Vec<String>)>,
    client: Option<IpAddr>,
    token: Option<TokenDraft>,
}

pub(super) fn decode_file(
    source: &SourceFile,
    read_file: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    problems: &mut Vec<PolicyError>,
) -> Vec<Suite> {
    let file = source.path.display().to_string();
    let shown: Arc<str> = file.as_str().into();
    let mut errs = Errors {
        file: &file,
        list: problems,
    };
    let documents = match yaml::parse_documents(&source.text) {
        Ok(docs) => docs,
        Err(e) => {
            errs.push(e.pos, ErrorKind::Syntax, e.message, e.help);
            return Vec::new();
        }
    };
    if documents.is_empty() {
        errs.push(
            Pos { line: 1, column: 1 },
            ErrorKind::MissingKey,
            "the file holds no test suite",
            "write a mapping with `cases:`; see `portcullis test --help`",
        );
        return Vec::new();
    }
    let ctx = Ctx {
        dir: source.path.parent().unwrap_or(Path::new(".")),
        read_file,
    };
    let mut names: Vec<(String, u32)> = Vec::new();
    documents
        .iter()
        .filter_map(|doc| decode_suite(doc, &shown, &mut errs, &ctx, &mut names))
        .collect()
}

fn decode_suite(
    doc: &Node,
    file: &Arc<str>,
    errs: &mut Errors<'_>,
    ctx: &Ctx<'_>,
    names: &mut Vec<(String, u32)>,
) -> Option<Suite> {
    let map = errs.map(doc, "a test suite", &["keys", "now", "defaults", "cases"])?;
    let keys = present(map.get("keys"))
        .map(|n| decode_keys(n, errs, ctx))
        .unwrap_or_default();
    let now = present(map.get("now")).and_then(|n| decode_now(n, errs));
    let defaults = present(map.get("defaults"))
        .map(|n| decode_defaults(n, &keys, errs))
        .unwrap_or_default();
    let cases = errs.required(
        &map,
        "cases",
        "a test suite",
        "list the cases: `cases: [{ name: …, request: …, expect: … }]`",
    )?;
    let items = errs.seq(cases, "`cases`")?;
    if items.is_empty() {
        errs.push(
            cases.pos,
            ErrorKind::InvalidValue,
            "`cases` is empty",
            "add at least one case",
        );
    }
    let cases = items
        .iter()
        .filter_map(|item| decode_case(item, &keys, &defaults, errs, names))
        .collect();
    Some(Suite {
        file: file.clone(),
        now,
        cases,
    })
}

fn present(node: Option<&Node>) -> Option<&Node> {
    node.filter(|n| !n.is_null())
}

/// The entries of a mapping whose keys are names of the user's choice.
fn entries<'n>(node: &'n Node, what: &str, errs: &mut Errors<'_>) -> Option<&'n [(Key, Node)]> {
    match &node.kind {
        NodeKind::Map(entries) => Some(entries),
        _ => {
            errs.push(
                node.pos,
                ErrorKind::WrongType,
                format!("{what} must be a mapping, not {}", node.kind_name()),
                "",
            );
            None
        }
    }
}

fn decode_now(node: &Node, errs: &mut Errors<'_>) -> Option<SystemTime> {
    let text = errs.string(node, "`now`")?;
    match humantime::parse_rfc3339_weak(text.trim()) {
        Ok(t) => Some(t),
        Err(_) => {
            errs.push(
                node.pos,
                ErrorKind::InvalidValue,
                format!("`now` `{text}` is not an RFC 3339 time"),
                "write a UTC time such as `2026-11-21T10:00:00Z`, or leave `now` out to use the real clock",
            );
            None
        }
    }
}

// ---- keys ----

fn decode_keys(node: &Node, errs: &mut Errors<'_>, ctx: &Ctx<'_>) -> Keys {
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

// ---- defaults, tokens, requests ----

fn decode_defaults(node: &Node, keys: &Keys, errs: &mut Errors<'_>) -> Defaults {
    let Some(map) = errs.map(
        node,
        "`defaults`",
        &["baseUrl", "headers", "client", "token"],
    ) else {
        return Defaults::default();
    };
    let base_url = present(map.get("baseUrl")).and_then(|n| {
        let text = errs.string(n, "`baseUrl`")?;
        if text.starts_with("https://") || text.starts_with("http://") {
            Some(text.trim_end_matches('/').to_owned())
        } else {
            errs.push(
                n.pos,
                ErrorKind::InvalidValue,
                format!("`baseUrl` `{text}` is not an http(s) URL"),
                "write the URL that case URLs starting with `/` continue, such as `https://localhost:8443/meme-game/api/v1`",
            );
            None
        }
    });
    let headers = present(map.get("headers"))
        .and_then(|n| decode_headers(n, errs))
        .map(|over| merge(&[], &over))
        .unwrap_or_default();
    let client = present(map.get("client")).and_then(|n| decode_ip(n, errs));
    let token = present(map.get("token")).and_then(|n| {
        let map = errs.map(n, "`defaults.token`", &["key", "claims", "header"])?;
        decode_draft(
            &map.get("key"),
            &map.get("claims"),
            &map.get("header"),
            keys,
            errs,
        )
    });
    Defaults {
        base_url,
        headers,
        client,
        token,
    }
}

fn decode_draft(
    key: &Option<&Node>,
    claims: &Option<&Node>,
    header: &Option<&Node>,
    keys: &Keys,
    errs: &mut Errors<'_>,
) -> Option<TokenDraft> {
    let key = match present(*key) {
        None => KeyRef::Unset,
        Some(n) => {
            let name = errs.string(n, "`key`")?;
            match keys.iter().find(|(k, _)| k == name) {
                Some((_, Some(key))) => KeyRef::Key(key.clone()),
                Some((_, None)) => KeyRef::Broken,
                None => {
                    let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
                    errs.push(
                        n.pos,
                        ErrorKind::InvalidValue,
                        format!("no key `{name}` is declared"),
                        match closest(name, &names) {
                            Some(near) => format!("did you mean `{near}`?"),
                            None if names.is_empty() => {
                                "declare it under `keys:` at the top of the suite".to_owned()
                            }
                            None => format!("the suite declares `{}`", names.join("`, `")),
                        },
                    );
                    KeyRef::Broken
                }
            }
        }
    };
    let claims = match present(*claims) {
        Some(n) => decode_claims(n, errs)?,
        None => Vec::new(),
    };
    let header = match present(*header) {
        Some(n) => entries(n, "`header`", errs)?
            .iter()
            .map(|(k, v)| (k.text.clone(), (!v.is_null()).then(|| yaml::to_json(v))))
            .collect(),
        None => Vec::new(),
    };
    Some(TokenDraft {
        key,
        header,
        claims,
    })
}

fn decode_claims(node: &Node, errs: &mut Errors<'_>) -> Option<Overrides<ClaimValue>> {
    let mut ok = true;
    let mut claims = Vec::new();
    for (name, value) in entries(node, "`claims`", errs)? {
        if value.is_null() {
            claims.push((name.text.clone(), None));
            continue;
        }
        let json = yaml::to_json(value);
        let claim = match (&json, TIME_CLAIMS.contains(&name.text.as_str())) {
            (Value::String(text), true) => match parse_time(text) {
                Ok(v) => v,
                Err(message) => {
                    errs.push(
                        value.pos,
                        ErrorKind::InvalidValue,
                        format!("claim `{}`: {message}", name.text),
                        TIME_HELP,
                    );
                    ok = false;
                    continue;
                }
            },
            _ => ClaimValue::Json(json),
        };
        claims.push((name.text.clone(), Some(claim)));
    }
    ok.then_some(claims)
}

/// Request headers: a mapping of names (any case) to a value or a list of values (the header
/// repeated); `null` removes a default header.
fn decode_headers(node: &Node, errs: &mut Errors<'_>) -> Option<Overrides<Vec<String>>> {
    let mut ok = true;
    let mut headers: Overrides<Vec<String>> = Vec::new();
    for (name, value) in entries(node, "`headers`", errs)? {
        let lower = name.text.to_ascii_lowercase();
        if headers.iter().any(|(n, _)| *n == lower) {
            errs.push(
                name.pos,
                ErrorKind::InvalidValue,
                format!(
                    "the header `{}` is set twice (names ignore case)",
                    name.text
                ),
                "give a list of values to send a header several times",
            );
            ok = false;
            continue;
        }
        if value.is_null() {
            headers.push((lower, None));
            continue;
        }
        let values: Option<Vec<String>> = match &value.kind {
            NodeKind::Seq(items) => items
                .iter()
                .map(|i| errs.string(i, "a header value").map(str::to_owned))
                .collect(),
            _ => errs
                .string(value, "a header value")
                .map(|v| vec![v.to_owned()]),
        };
        match values {
            Some(values) => headers.push((lower, Some(values))),
            None => ok = false,
        }
    }
    ok.then_some(headers)
}

fn decode_ip(node: &Node, errs: &mut Errors<'_>) -> Option<IpAddr> {
    let text = errs.string(node, "`client`")?;
    match text.trim().parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            errs.push(
                node.pos,
                ErrorKind::InvalidValue,
                format!("`client` `{text}` is not an IP address"),
                "write an IPv4 or IPv6 address, such as `10.0.0.7`",
            );
            None
        }
    }
}

fn decode_request(node: &Node, defaults: &Defaults, errs: &mut Errors<'_>) -> Option<Request> {
    let (method, url_node, url, header_overrides, client) = match &node.kind {
        NodeKind::Scalar { text, .. } if !node.is_null() => {
            let parts: Vec<&str> = text.split_whitespace().collect();
            let (method, url) = match parts.as_slice() {
                [url] => ("GET", *url),
                [method, url] => (*method, *url),
                _ => {
                    errs.push(
                        node.pos,
                        ErrorKind::InvalidValue,
                        format!("`request` `{text}` is not `METHOD URL`"),
                        "write `GET /path`, `POST https://host/path`, or a mapping with `method`, `url`, `headers` and `client`",
                    );
                    return None;
                }
            };
            (
                method.to_owned(),
                node,
                url.to_owned(),
                Vec::new(),
                defaults.client,
            )
        }
        _ => {
            let map = errs.map(node, "`request`", &["method", "url", "headers", "client"])?;
            let url_node = errs.required(
                &map,
                "url",
                "`request`",
                "give the full URL, or a path after `defaults.baseUrl`",
            )?;
            let url = errs.string(url_node, "`url`")?.to_owned();
            let method = match present(map.get("method")) {
                Some(n) => errs.string(n, "`method`")?.to_owned(),
                None => "GET".to_owned(),
            };
            let headers = match present(map.get("headers")) {
                Some(n) => decode_headers(n, errs)?,
                None => Vec::new(),
            };
            let client = match map.get("client") {
                Some(n) if n.is_null() => None,
                Some(n) => Some(decode_ip(n, errs)?),
                None => defaults.client,
            };
            (method, url_node, url, headers, client)
        }
    };
    let url = if url.starts_with('/') {
        match &defaults.base_url {
            Some(base) => format!("{base}{url}"),
            None => {
                errs.push(
                    url_node.pos,
                    ErrorKind::MissingKey,
                    format!("the URL `{url}` is a path, but the suite has no `defaults.baseUrl`"),
                    "give the full URL, or set `defaults: { baseUrl: https://… }`",
                );
                return None;
            }
        }
    } else {
        url
    };
    let headers = merge(&defaults.headers, &header_overrides)
        .into_iter()
        .flat_map(|(name, values)| values.into_iter().map(move |v| (name.clone(), v)))
        .collect();
    Some(Request {
        method,
        url,
        headers,
        client,
    })
}

/// A case's token, merged over the defaults.
fn decode_token(
    node: Option<&Node>,
    at: Pos,
    keys: &Keys,
    defaults: &Defaults,
    errs: &mut Errors<'_>,
) -> Option<TokenSpec> {
    let Some(node) = node else {
        return match &defaults.token {
            Some(draft) => resolve(draft, None, keys, at, errs).map(TokenSpec::Signed),
            None => Some(TokenSpec::None),
        };
    };
    match &node.kind {
        _ if node.is_null() => Some(TokenSpec::None),
        NodeKind::Scalar { text, .. } if text == "none" => Some(TokenSpec::None),
        NodeKind::Map(_) => {
            let map = errs.map(node, "`token`", &["key", "claims", "header", "raw"])?;
            if let Some(raw) = map.get("raw") {
                let others = map.present(&["key", "claims", "header"]);
                if let Some(other) = others.first() {
                    errs.push(
                        map.key_pos(other).unwrap_or(map.pos),
                        ErrorKind::InvalidValue,
                        format!("a `raw` token is sent as written; `{other}` does not apply"),
                        "remove it, or drop `raw` to sign a token from claims",
                    );
                    return None;
                }
                return Some(TokenSpec::Raw(errs.string(raw, "`raw`")?.to_owned()));
            }
            let draft = decode_draft(
                &map.get("key"),
                &map.get("claims"),
                &map.get("header"),
                keys,
                errs,
            )?;
            resolve(&draft, defaults.token.as_ref(), keys, node.pos, errs).map(TokenSpec::Signed)
        }
        _ => {
            errs.push(
                node.pos,
                ErrorKind::InvalidValue,
                "`token` must be `none` or a mapping with `claims` (and `key`, `header`) or `raw`",
                "write `token: none` for no token, `token: { claims: { … } }` to sign one, `token: { raw: eyJ… }` to send one as written",
            );
            None
        }
    }
}

/// `case` merged over `base` (the defaults): key, header fields and claims.
fn resolve(
    case: &TokenDraft,
    base: Option<&TokenDraft>,
    keys: &Keys,
    at: Pos,
    errs: &mut Errors<'_>,
) -> Option<TokenTemplate> {
    let key = match (&case.key, base.map(|b| &b.key)) {
        (KeyRef::Key(k), _) | (KeyRef::Unset, Some(KeyRef::Key(k))) => k.clone(),
        (KeyRef::Broken, _) | (KeyRef::Unset, Some(KeyRef::Broken)) => return None,
        (KeyRef::Unset, _) => match keys.as_slice() {
            [(_, Some(only))] => only.clone(),
            [(_, None)] => return None,
            [] => {
                errs.push(
                    at,
                    ErrorKind::MissingKey,
                    "the suite declares no key to sign this token with",
                    "declare one: `keys: { dev: { file: keys/NAME.dev-key.pem, kid: … } }`",
                );
                return None;
            }
            _ => {
                errs.push(
                    at,
                    ErrorKind::MissingKey,
                    "the suite declares several keys; which signs this token?",
                    "name it with `key:` in the token or in `defaults.token`",
                );
                return None;
            }
        },
    };
    let (no_header, no_claims) = (Vec::new(), Vec::new());
    let (base_header, base_claims) =
        base.map_or((&no_header, &no_claims), |b| (&b.header, &b.claims));
    let header = merge(&merge(&default_header(&key), base_header), &case.header);
    let claims = merge(&merge(&[], base_claims), &case.claims);
    Some(TokenTemplate {
        key,
        header: header.into_iter().collect::<Map<String, Value>>(),
        claims,
    })
}

// ---- cases and expectations ----

fn decode_case(
    node: &Node,
    keys: &Keys,
    defaults: &Defaults,
    errs: &mut Errors<'_>,
    names: &mut Vec<(String, u32)>,
) -> Option<Case> {
    let map = errs.map(node, "a case", &["name", "request", "token", "expect"])?;
    let before = errs.list.len();
    let name_node = errs.required(
        &map,
        "name",
        "a case",
        "name the case; reports and `--filter` use the name",
    );
    let name = name_node.and_then(|n| errs.string(n, "`name`"));
    if let (Some(n), Some(name)) = (name_node, name) {
        if let Some((_, first)) = names.iter().find(|(seen, _)| seen == name) {
            errs.push(
                n.pos,
                ErrorKind::Conflict,
                format!(
                    "the case name `{name}` is used twice in this file (first at line {first})"
                ),
                "give each case a distinct name",
            );
        } else {
            names.push((name.to_owned(), map.pos.line));
        }
    }
    let request = errs
        .required(
            &map,
            "request",
            "a case",
            "give the request: `request: GET /path` or `{ method, url, headers, client }`",
        )
        .and_then(|n| decode_request(n, defaults, errs));
    let token = decode_token(map.get("token"), map.pos, keys, defaults, errs);
    let expect = errs
        .required(
            &map,
            "expect",
            "a case",
            "say what the decision must be: `expect: { status: 403, detail: GROUP_REQUIRED }`",
        )
        .and_then(|n| decode_expect(n, errs));
    if errs.list.len() > before {
        return None;
    }
    Some(Case {
        name: name?.to_owned(),
        line: map.pos.line,
        request: request?,
        token: token?,
        expect: expect?,
    })
}

fn decode_expect(node: &Node, errs: &mut Errors<'_>) -> Option<Expectation> {
    if let NodeKind::Scalar { text, .. } = &node.kind
        && !node.is_null()
    {
        let mut expect = Expectation::default();
        match Outcome::parse(text) {
            Some(outcome) => expect.outcome = Some(outcome),
            None => expect.status = Some(decode_status(node, errs)?),
        }
        return Some(expect);
    }
    let map = errs.map(
        node,
        "`expect`",
        &[
            "outcome",
            "status",
            "code",
            "detail",
            "rule",
            "service",
            "operation",
            "headers",
            "upstreamHeaders",
        ],
    )?;
    let before = errs.list.len();
    let mut expect = Expectation::default();
    if let Some(n) = present(map.get("outcome")) {
        expect.outcome = errs.string(n, "`outcome`").and_then(|text| {
            let outcome = Outcome::parse(text);
            if outcome.is_none() {
                errs.push(
                    n.pos,
                    ErrorKind::InvalidValue,
                    format!("`outcome` `{text}` is neither `allow` nor `deny`"),
                    "write `allow` or `deny`",
                );
            }
            outcome
        });
    }
    if let Some(n) = present(map.get("status")) {
        expect.status = decode_status(n, errs);
    }
    expect.code = present(map.get("code")).and_then(|n| one_of(n, "`code`", BODY_CODES, errs));
    expect.detail =
        present(map.get("detail")).and_then(|n| one_of(n, "`detail`", DETAIL_CODES, errs));
    let text = |key: &str, errs: &mut Errors<'_>| {
        present(map.get(key)).and_then(|n| errs.string(n, &format!("`{key}`")).map(str::to_owned))
    };
    expect.rule = text("rule", errs);
    expect.service = text("service", errs);
    expect.operation = text("operation", errs);
    for (key, out) in [
        ("headers", &mut expect.headers),
        ("upstreamHeaders", &mut expect.upstream_headers),
    ] {
        let Some(n) = present(map.get(key)) else {
            continue;
        };
        for (name, value) in entries(n, &format!("`{key}`"), errs).unwrap_or_default() {
            if let Some(v) = errs.string(value, "a header value") {
                out.push((name.text.to_ascii_lowercase(), v.to_owned()));
            }
        }
    }
    if map.get("outcome").is_none() && map.get("status").is_none() {
        errs.push(
            map.pos,
            ErrorKind::MissingKey,
            "`expect` needs `outcome` or `status`",
            "add `outcome: allow`, `outcome: deny` or the status, such as `status: 403`",
        );
    }
    let allowed = expect.outcome == Some(Outcome::Allow) || expect.status == Some(200);
    let denied = expect.outcome == Some(Outcome::Deny) || expect.status.is_some_and(|s| s != 200);
    if allowed && denied {
        errs.push(
            map.pos,
            ErrorKind::Conflict,
            "`expect` says both allow and deny",
            "an allowed request has status 200; a denied one any other",
        );
    } else if allowed && let Some(key) = map.present(&["code", "detail", "rule"]).first() {
        errs.push(
            map.key_pos(key).unwrap_or(map.pos),
            ErrorKind::Conflict,
            format!("an allowed request has no `{key}`"),
            "remove it, or expect a denial",
        );
    }
    (errs.list.len() == before).then_some(expect)
}

fn decode_status(node: &Node, errs: &mut Errors<'_>) -> Option<u16> {
    let text = errs.string(node, "`status`")?;
    match text.parse::<u16>() {
        Ok(s) if (100..=599).contains(&s) => Some(s),
        _ => {
            errs.push(
                node.pos,
                ErrorKind::InvalidValue,
                format!("`{text}` is not an HTTP status, `allow` or `deny`"),
                "write a status such as `403`",
            );
            None
        }
    }
}

fn one_of(node: &Node, what: &str, codes: &[&str], errs: &mut Errors<'_>) -> Option<String> {
    let text = errs.string(node, what)?;
    if codes.contains(&text) {
        return Some(text.to_owned());
    }
    errs.push(
        node.pos,
        ErrorKind::InvalidValue,
        format!("unknown {what} `{text}`"),
        match closest(text, codes) {
            Some(near) => format!("did you mean `{near}`?"),
            None => format!("use one of {}", codes.join(", ")),
        },
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn parse(text: &str) -> Result<Vec<Suite>, String> {
        let source = SourceFile {
            path: PathBuf::from("policies/x.test.yaml"),
            text: text.to_owned(),
        };
        let read = |p: &Path| std::fs::read(p);
        super::super::parse_suite(&source, &read).map_err(|e| e.to_string())
    }

    const HEAD: &str = "keys:\n  hs: { secret: 0123456789abcdef0123456789abcdef }\ndefaults:\n  baseUrl: https://h/api/\n  token: { claims: { iss: i, aud: a, exp: +1h, sub: u } }\n";

    fn template(case: &Case) -> &TokenTemplate {
        match &case.token {
            TokenSpec::Signed(t) => t,
            other => panic!("not signed: {other:?}"),
        }
    }

    #[test]
    fn case_claims_merge_over_the_defaults() {
        let suites = parse(&format!(
            "{HEAD}cases:\n  - name: a\n    request: POST /x\n    token: {{ claims: {{ sub: null, groups: [g], exp: -5m }}, header: {{ kid: other, typ: null }} }}\n    expect: 401\n  - name: b\n    request: {{ url: https://other/y, headers: {{ X-A: [1, 2] }}, client: 10.0.0.1 }}\n    expect: allow\n  - name: c\n    request: /z\n    token: none\n    expect: deny\n"
        ))
        .unwrap();
        let cases = &suites[0].cases;
        let a = template(&cases[0]);
        let claims = a.claims_at(1000);
        assert_eq!(
            serde_json::Value::Object(claims),
            serde_json::json!({"iss": "i", "aud": "a", "exp": 700, "groups": ["g"]})
        );
        assert_eq!(
            serde_json::Value::Object(a.header.clone()),
            serde_json::json!({"alg": "HS256", "kid": "other"})
        );
        assert_eq!(
            (
                cases[0].request.method.as_str(),
                cases[0].request.url.as_str()
            ),
            ("POST", "https://h/api/x")
        );
        assert_eq!(cases[0].expect.status, Some(401));
        assert_eq!(template(&cases[1]).claims_at(0)["sub"], "u");
        assert_eq!(
            cases[1].request.headers,
            vec![
                ("x-a".to_owned(), "1".to_owned()),
                ("x-a".into(), "2".into())
            ]
        );
        assert_eq!(cases[1].request.client, "10.0.0.1".parse().ok());
        assert!(matches!(cases[2].token, TokenSpec::None));
        assert_eq!(cases[2].request.url, "https://h/api/z");
    }

    #[test]
    fn typos_and_bad_values_are_errors_with_their_place() {
        let err = parse(&format!(
            "{HEAD}cases:\n  - name: a\n    request: GET /x\n    expect: {{ stauts: 403 }}\n  - name: a\n    request: GET /x\n    token: {{ claims: {{ exp: +1 hour and a bit }} }}\n    expect: {{ status: 403, detail: GROUP_REQUIRD }}\n"
        ))
        .unwrap_err();
        assert!(
            err.contains("policies/x.test.yaml:9:15: unknown key `stauts` in `expect`"),
            "{err}"
        );
        assert!(err.contains("help: did you mean `status`?"), "{err}");
        assert!(
            err.contains("x.test.yaml:9:13: `expect` needs `outcome` or `status`"),
            "{err}"
        );
        assert!(
            err.contains(":10:11: the case name `a` is used twice"),
            "{err}"
        );
        assert!(
            err.contains(":12:29: claim `exp`: `+1 hour and a bit`"),
            "{err}"
        );
        assert!(
            err.contains(":13:36: unknown `detail` `GROUP_REQUIRD`"),
            "{err}"
        );
        assert!(err.contains("did you mean `GROUP_REQUIRED`?"), "{err}");
    }

    #[test]
    fn keys_and_tokens_that_cannot_work_are_refused() {
        let err = parse(
            "now: yesterday\nkeys:\n  a: { file: nope.pem }\n  b: { secret: s, alg: RS256 }\n  c: { secret: s, file: x }\ndefaults: { token: { key: d } }\ncases:\n  - { name: n, request: /x, expect: allow }\n",
        )
        .unwrap_err();
        for want in [
            "x.test.yaml:1:6: `now` `yesterday` is not an RFC 3339 time",
            "x.test.yaml:3:14: cannot read `nope.pem`",
            "x.test.yaml:4:24: key `b` cannot sign RS256",
            "x.test.yaml:5:6: key `c` needs exactly one of",
            "x.test.yaml:6:27: no key `d` is declared",
            "x.test.yaml:8:25: the URL `/x` is a path, but the suite has no `defaults.baseUrl`",
        ] {
            assert!(err.contains(want), "missing {want:?} in\n{err}");
        }
    }

    #[test]
    fn contradictory_and_empty_expectations_are_refused() {
        let err = parse(&format!(
            "{HEAD}cases:\n  - {{ name: a, request: /x, expect: {{ outcome: allow, status: 403 }} }}\n  - {{ name: b, request: /x, expect: {{ status: 200, rule: r }} }}\n  - {{ name: c, request: /x, expect: 42 }}\n  - {{ name: d, request: /x, expect: maybe }}\n"
        ))
        .unwrap_err();
        assert!(err.contains("says both allow and deny"), "{err}");
        assert!(err.contains("an allowed request has no `rule`"), "{err}");
        assert!(err.contains("`42` is not an HTTP status"), "{err}");
        assert!(
            err.contains("`maybe` is not an HTTP status, `allow` or `deny`"),
            "{err}"
        );
    }

    #[test]
    fn json_suites_read_like_yaml() {
        let suites = parse(
            r#"{"cases": [{"name": "n", "request": {"method": "PUT", "url": "https://h/x", "client": "::1"}, "token": {"raw": "a.b.c"}, "expect": {"outcome": "deny", "code": "UNAUTHORIZED"}}]}"#,
        )
        .unwrap();
        let case = &suites[0].cases[0];
        assert_eq!(case.request.method, "PUT");
        assert!(matches!(&case.token, TokenSpec::Raw(raw) if raw == "a.b.c"));
        assert_eq!(case.expect.outcome, Some(Outcome::Deny));
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        for text in [
            "",
            "[1, 2]",
            "cases: 3",
            "cases: []",
            "cases: [[]]",
            "cases: [{ name: [x], request: { url: [] }, token: 7, expect: { headers: [] } }]",
            "keys: [a]\ncases: [{ name: x, request: 'a b c', expect: { status: 99999999999 } }]",
            "keys: { k: { jwks: /dev/null } }\ncases: [{ name: x, request: GET http://h, expect: allow }]",
            "defaults: { token: { claims: { exp: '-99999999999999999999h' } } }\ncases: []",
            "a: !tag x",
            &"[".repeat(10_000),
        ] {
            assert!(parse(text).is_err(), "{text:?} was accepted");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any edit of a valid suite decodes or fails with errors, and runs without a panic.
        #[test]
        fn mangled_suites_never_panic(
            at in 0usize..1000,
            cut in 0usize..40,
            insert in "[ -~\n]{0,12}",
        ) {
            let text = format!(
                "{HEAD}now: 2026-11-21T10:00:00Z\ncases:\n  - name: a\n    request: {{ method: POST, url: /x, headers: {{ A: [1, 2] }}, client: 10.0.0.1 }}\n    token: {{ claims: {{ exp: -5m, nbf: +1m, groups: [g] }}, header: {{ kid: k }} }}\n    expect: {{ status: 403, detail: GROUP_REQUIRED, rule: r, headers: {{ allow: GET }} }}\n"
            );
            proptest::prop_assert!(parse(&text).is_ok());
            let mut at = at.min(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let end = (at + cut).min(text.len());
            let mangled = format!("{}{insert}{}", &text[..at], &text[end..]);
            if let Ok(suites) = parse(&mangled) {
                let policies =
                    crate::policy::load_dir("policies".as_ref(), &Default::default()).unwrap();
                super::super::run(&policies, &suites, SystemTime::now(), None);
            }
        }
    }
}
