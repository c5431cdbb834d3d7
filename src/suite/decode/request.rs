//! Decoding a suite's `defaults` and each case's request and token: what a case sends, merged
//! over the defaults.

use std::net::IpAddr;

use serde_json::{Map, Value};

use super::{Defaults, KeyRef, Keys, TIME_HELP, TokenDraft, entries, present};
use crate::policy::err::{ErrorKind, Errors, closest};
use crate::policy::yaml::{self, Node, NodeKind, Pos};
use crate::suite::token::{
    ClaimValue, Overrides, TIME_CLAIMS, TokenTemplate, default_header, merge, parse_time,
};
use crate::suite::{Request, TokenSpec};

pub(super) fn decode_defaults(node: &Node, keys: &Keys, errs: &mut Errors<'_>) -> Defaults {
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

pub(super) fn decode_request(
    node: &Node,
    defaults: &Defaults,
    errs: &mut Errors<'_>,
) -> Option<Request> {
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
pub(super) fn decode_token(
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
