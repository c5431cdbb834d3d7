//! Decoding one service document (SPEC §6a) into a compiled [`ApiService`], reporting every
//! problem of the document: the service's own keys, base URLs and upstream headers here; its
//! token (`token.rs`), operations (`operation.rs`) and access rules (`rule.rs`) beside it.

mod operation;
mod rule;
mod token;

use std::path::Path;

use self::operation::decode_operations;
use self::token::decode_token;
pub(crate) use self::token::{ALGORITHMS, check_key_url};
use super::err::{ErrorKind, Errors};
use super::yaml::{Node, NodeKind, Pos};
use super::{ApiService, Operation, PolicyOptions};
use crate::route::Origin;
use crate::route::url::{Scheme, parse_authority};
use crate::rule::{ClaimNames, Template};
use crate::token::ClaimPath;

pub(crate) const SERVICE_KEYS: &[&str] = &[
    "service",
    "description",
    "baseUrls",
    "token",
    "upstreamHeaders",
    "operations",
    "unmatchedStatus",
];

/// Headers a policy may not set upstream: they frame the HTTP message itself.
pub(crate) const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

pub(crate) struct DocumentContext<'a> {
    /// The policy file's directory, against which key file paths are resolved.
    pub dir: &'a Path,
    pub read_file: &'a dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    pub options: &'a PolicyOptions,
    /// Key file contents, for the policy revision.
    pub key_material: &'a mut Vec<(String, Vec<u8>)>,
}

/// A compiled service with the places of its parts, for cross-document checks.
pub(crate) struct DecodedService {
    pub name: String,
    /// `None` when the document has errors; its name and base URLs are still checked for
    /// conflicts with other services, so that one run reports every problem.
    pub service: Option<ApiService>,
    pub name_pos: Pos,
    pub base_urls: Vec<(Origin, crate::route::url::NormalizedPath, Pos)>,
}

pub(crate) fn decode_service(
    doc: &Node,
    errs: &mut Errors<'_>,
    ctx: &mut DocumentContext<'_>,
) -> Option<DecodedService> {
    let before = errs.list.len();
    let map = errs.map(doc, "a service document", SERVICE_KEYS)?;
    let name_node = errs.required(
        &map,
        "service",
        "a service document",
        "name the service, e.g. `service: meme-game`",
    );
    let name = name_node.and_then(|n| service_name(n, errs));
    let description = map
        .get("description")
        .and_then(|n| errs.string(n, "`description`"))
        .map(str::to_owned);
    let base_urls = errs
        .required(
            &map,
            "baseUrls",
            "a service",
            "list the URLs the API is served at",
        )
        .map(|n| decode_base_urls(n, errs))
        .unwrap_or_default();
    let token = errs
        .required(
            &map,
            "token",
            "a service",
            "say which tokens are accepted: issuer, audiences, algorithms, jwks",
        )
        .and_then(|n| decode_token(n, errs, ctx));
    let claim_names = token.as_ref().map_or_else(
        || ClaimNames {
            groups: ClaimPath::new("groups"),
            scopes: ClaimPath::new("scope"),
        },
        |t| ClaimNames {
            groups: t.groups_claim.clone(),
            scopes: t.scope_claim.clone(),
        },
    );
    let upstream_headers = map
        .get("upstreamHeaders")
        .map(|n| decode_upstream_headers(n, errs))
        .unwrap_or_default();
    let unmatched_status = match map.get("unmatchedStatus") {
        None => 403,
        Some(n) => match errs.string(n, "`unmatchedStatus`") {
            Some("403") => 403,
            Some("404") => 404,
            Some(other) => {
                errs.push(
                    n.pos,
                    ErrorKind::InvalidValue,
                    format!("`unmatchedStatus` `{other}` is not supported"),
                    "use 403 (the default) or 404",
                );
                403
            }
            None => 403,
        },
    };
    let service_label = name.clone().unwrap_or_else(|| "?".into());
    let (operations, operation_index) = errs
        .required(
            &map,
            "operations",
            "a service",
            "list the API operations and their access rules",
        )
        .map(|n| decode_operations(n, errs, &service_label, &claim_names))
        .unwrap_or_default();

    let name = name?;
    let name_pos = name_node.map_or(map.pos, |n| n.pos);
    let service = match token {
        Some(token) if errs.list.len() == before => Some(ApiService {
            recorded_claims: claims_read(&operations, &upstream_headers, &claim_names),
            id: crate::policy::next_service_id(),
            name: name.as_str().into(),
            description,
            base_urls: base_urls
                .iter()
                .map(|(o, p, _)| display_base_url(o, p))
                .collect(),
            source: format!("{}:{}", errs.file, map.pos.line).into(),
            token,
            claim_names,
            upstream_headers,
            operations,
            operation_index,
            unmatched_status,
        }),
        _ => None,
    };
    Some(DecodedService {
        name,
        service,
        name_pos,
        base_urls,
    })
}

/// The claims a decision's record keeps for replay: those the service's rules and upstream
/// headers read and the two a delegation check compares `sub` with; each once, in name order.
fn claims_read(
    operations: &[Operation],
    upstream_headers: &[(Box<str>, Template)],
    names: &ClaimNames,
) -> Box<[ClaimPath]> {
    let always = [ClaimPath::new("client_id"), ClaimPath::new("azp")];
    let mut read: Vec<&ClaimPath> = always.iter().collect();
    for operation in operations {
        for rule in &operation.rules {
            rule.claims_read(names, &mut read);
        }
    }
    for (_, template) in upstream_headers {
        read.extend(template.claims());
    }
    read.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    read.dedup_by(|a, b| a.as_str() == b.as_str());
    read.into_iter().cloned().collect()
}

fn service_name(node: &Node, errs: &mut Errors<'_>) -> Option<String> {
    let name = errs.string(node, "`service`")?;
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if !valid {
        errs.push(
            node.pos,
            ErrorKind::InvalidValue,
            format!("service name `{name}` is not valid"),
            "use lower-case letters, digits and `-`, at most 63 characters, e.g. `meme-game`",
        );
        return None;
    }
    Some(name.to_owned())
}

pub(crate) fn display_base_url(
    origin: &Origin,
    path: &crate::route::url::NormalizedPath,
) -> String {
    let port = if origin.port == origin.scheme.default_port() {
        String::new()
    } else {
        format!(":{}", origin.port)
    };
    let path = if path.is_empty() {
        String::new()
    } else {
        path.to_path_string()
    };
    format!(
        "{}://{}{}{}",
        origin.scheme.as_str(),
        origin.host,
        port,
        path
    )
}

fn decode_base_urls(
    node: &Node,
    errs: &mut Errors<'_>,
) -> Vec<(Origin, crate::route::url::NormalizedPath, Pos)> {
    let Some(urls) = errs.strings(node, "`baseUrls`") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (url, pos) in urls {
        match parse_base_url(url) {
            Ok((origin, path)) => out.push((origin, path, pos)),
            Err(message) => errs.push(
                pos,
                ErrorKind::InvalidValue,
                format!("base URL `{url}` {message}"),
                "write it as `https://host[:port]/path-prefix`, without query, fragment, `.` or `..` segments or percent-encoding",
            ),
        }
    }
    out
}

fn parse_base_url(url: &str) -> Result<(Origin, crate::route::url::NormalizedPath), String> {
    let (scheme_text, rest) = url.split_once("://").ok_or("has no scheme")?;
    let scheme = match scheme_text.to_ascii_lowercase().as_str() {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        other => {
            return Err(format!(
                "has the scheme `{other}`; only https and http are served"
            ));
        }
    };
    if rest.contains(['?', '#']) {
        return Err("has a query or a fragment".into());
    }
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let (host, port) =
        parse_authority(authority, scheme).map_err(|e| format!("has a bad host: {e}"))?;
    if path.contains('%') {
        return Err("is percent-encoded".into());
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return Err("has `.` or `..` segments".into());
    }
    let path = crate::route::url::normalize_path(path).map_err(|e| e.to_string())?;
    Ok((
        Origin {
            scheme,
            host: host.as_ref().into(),
            port,
        },
        path,
    ))
}

fn decode_upstream_headers(node: &Node, errs: &mut Errors<'_>) -> Vec<(Box<str>, Template)> {
    let NodeKind::Map(entries) = &node.kind else {
        errs.push(
            node.pos,
            ErrorKind::WrongType,
            format!(
                "`upstreamHeaders` must be a mapping, not {}",
                node.kind_name()
            ),
            "map header names to values, e.g. `x-user-id: \"{token.sub}\"`",
        );
        return Vec::new();
    };
    let mut out: Vec<(Box<str>, Template)> = Vec::new();
    for (key, value) in entries {
        let name = key.text.to_ascii_lowercase();
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid_name {
            errs.push(
                key.pos,
                ErrorKind::InvalidValue,
                format!("`{}` is not a valid header name", key.text),
                "use letters, digits and `-`",
            );
            continue;
        }
        if RESERVED_HEADERS.contains(&name.as_str()) {
            errs.push(
                key.pos,
                ErrorKind::InvalidValue,
                format!("the header `{name}` cannot be set upstream"),
                "it frames the HTTP message; choose another name",
            );
            continue;
        }
        if out.iter().any(|(n, _)| **n == *name) {
            errs.push(
                key.pos,
                ErrorKind::Conflict,
                format!("the header `{name}` is set twice (names ignore case)"),
                "keep one",
            );
            continue;
        }
        let Some(text) = errs.string(value, &format!("the value of upstream header `{name}`"))
        else {
            continue;
        };
        match Template::parse(text) {
            Ok(t) if t.path_params().next().is_some() => errs.push(
                value.pos,
                ErrorKind::InvalidValue,
                "upstream headers are set for every operation, so they cannot use `{path.…}`",
                "use `{token.<claim>}` references only",
            ),
            Ok(t) => out.push((name.into(), t)),
            Err(message) => errs.push(value.pos, ErrorKind::InvalidValue, message, ""),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_normalise_and_refuse_queries() {
        let (origin, path) = parse_base_url("HTTPS://Example.COM:443/api/v1/").unwrap();
        assert_eq!(
            display_base_url(&origin, &path),
            "https://example.com/api/v1"
        );
        assert!(parse_base_url("https://h/api?x=1").is_err());
        assert!(parse_base_url("ftp://h/api").is_err());
        assert!(parse_base_url("https://h/a/../b").is_err());
    }
}
