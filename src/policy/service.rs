//! Decoding one service document (SPEC §6a) into a compiled [`ApiService`], reporting every
//! problem of the document.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use jsonwebtoken::Algorithm;

use super::err::{ErrorKind, Errors, closest};
use super::yaml::{Node, NodeKind, Pos};
use super::{ApiService, Operation, PolicyOptions};
use crate::ratelimit::{self, LimitKey, RateLimit};
use crate::route::url::{Scheme, parse_authority};
use crate::route::{OperationIndex, Origin, TemplateSegment};
use crate::rule::{AccessRule, ClaimNames, ClaimTest, RuleKind, SetMode, Template};
use crate::token::jwks::parse_jwks;
use crate::token::remote::{KeySetLocation, RemoteKeySet};
use crate::token::{ClaimPath, KeySource, TokenRequirements};

pub(crate) const SERVICE_KEYS: &[&str] = &[
    "service",
    "description",
    "baseUrls",
    "token",
    "upstreamHeaders",
    "operations",
    "unmatchedStatus",
];
const TOKEN_KEYS: &[&str] = &[
    "issuer",
    "audiences",
    "algorithms",
    "leeway",
    "jwks",
    "groupsClaim",
    "scopeClaim",
];
const JWKS_KEYS: &[&str] = &["file", "url", "refresh", "discovery"];
const OPERATION_KEYS: &[&str] = &[
    "name",
    "description",
    "methods",
    "paths",
    "rules",
    "rateLimit",
];
const RATE_LIMIT_KEYS: &[&str] = &["key", "requests", "per"];
/// The conditions a rule may have; exactly one per rule.
const CONDITIONS: &[&str] = &[
    "delegated",
    "groups",
    "scopes",
    "claim",
    "clientIp",
    "any",
    "all",
    "not",
];
const CLAIM_TESTS: &[&str] = &["equals", "in", "contains", "exists"];
const SET_MODES: &[&str] = &["anyOf", "allOf"];

const MAX_LEEWAY: Duration = Duration::from_secs(300);
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
const DEFAULT_REFRESH: Duration = Duration::from_secs(600);
const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// Deepest nesting of `any`/`all`/`not`.
const MAX_RULE_DEPTH: usize = 16;

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

fn decode_token(
    node: &Node,
    errs: &mut Errors<'_>,
    ctx: &mut DocumentContext<'_>,
) -> Option<TokenRequirements> {
    let map = errs.map(node, "`token`", TOKEN_KEYS)?;
    let issuer = errs
        .required(
            &map,
            "issuer",
            "`token`",
            "set the `iss` value tokens must carry, e.g. `https://auth.example.com`",
        )
        .and_then(|n| errs.string(n, "`token.issuer`"));
    let audiences = errs
        .required(
            &map,
            "audiences",
            "`token`",
            "list the `aud` values this API accepts",
        )
        .and_then(|n| errs.strings(n, "`token.audiences`"));
    let algorithms = errs
        .required(
            &map,
            "algorithms",
            "`token`",
            "list the signing algorithms accepted, e.g. `[RS256, ES256]`",
        )
        .and_then(|n| decode_algorithms(n, errs));
    let leeway = match map.get("leeway") {
        Some(n) => errs.duration(n, "`token.leeway`", MAX_LEEWAY),
        None => Some(DEFAULT_LEEWAY),
    };
    let groups_claim = claim_name(
        map.get("groupsClaim"),
        "groups",
        "`token.groupsClaim`",
        errs,
    );
    let scope_claim = claim_name(map.get("scopeClaim"), "scope", "`token.scopeClaim`", errs);
    let keys = match (
        errs.required(
            &map,
            "jwks",
            "`token`",
            "say where the signing keys are: `jwks: {file: keys/x.jwks.json}`",
        ),
        &algorithms,
    ) {
        (Some(n), Some(algs)) => decode_jwks(n, algs, issuer, errs, ctx),
        _ => None,
    };
    Some(TokenRequirements {
        issuer: issuer?.into(),
        audiences: audiences?.into_iter().map(|(a, _)| a.into()).collect(),
        algorithms: algorithms?,
        leeway: leeway?.as_secs() as i64,
        groups_claim: groups_claim?,
        scope_claim: scope_claim?,
        keys: keys?,
    })
}

fn claim_name(
    node: Option<&Node>,
    default: &str,
    what: &str,
    errs: &mut Errors<'_>,
) -> Option<ClaimPath> {
    match node {
        None => Some(ClaimPath::new(default)),
        Some(n) => errs.string(n, what).map(ClaimPath::new),
    }
}

pub(crate) const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
    "HS384", "HS512",
];

fn decode_algorithms(node: &Node, errs: &mut Errors<'_>) -> Option<Vec<Algorithm>> {
    let names = errs.strings(node, "`token.algorithms`")?;
    let mut out = Vec::new();
    let mut ok = true;
    for (name, pos) in names {
        if name.eq_ignore_ascii_case("none") {
            errs.push(
                pos,
                ErrorKind::InvalidValue,
                "the algorithm `none` is never accepted: unsigned tokens prove nothing",
                "remove `none`",
            );
            ok = false;
            continue;
        }
        match ALGORITHMS.iter().find(|a| **a == name) {
            Some(a) => out.push(a.parse::<Algorithm>().expect("listed algorithms parse")),
            None => {
                let help = match super::err::closest(name, ALGORITHMS) {
                    Some(near) => format!("did you mean `{near}`?"),
                    None => format!("supported: {}", ALGORITHMS.join(", ")),
                };
                errs.push(
                    pos,
                    ErrorKind::InvalidValue,
                    format!("unknown algorithm `{name}`"),
                    help,
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn decode_jwks(
    node: &Node,
    algorithms: &[Algorithm],
    issuer: Option<&str>,
    errs: &mut Errors<'_>,
    ctx: &mut DocumentContext<'_>,
) -> Option<KeySource> {
    let map = errs.map(node, "`token.jwks`", JWKS_KEYS)?;
    let present = map.present(&["file", "url", "discovery"]);
    if present.len() != 1 {
        errs.push(
            map.pos,
            ErrorKind::InvalidValue,
            if present.is_empty() {
                "`token.jwks` names no key source".to_owned()
            } else {
                format!(
                    "`token.jwks` has both `{}` and `{}`",
                    present[0], present[1]
                )
            },
            "use exactly one of `file: <path>`, `url: <https URL>` or `discovery: true`",
        );
        return None;
    }
    let refresh = match map.get("refresh") {
        Some(n) if present[0] == "file" => {
            errs.push(
                n.pos,
                ErrorKind::InvalidValue,
                "`refresh` applies to key sets fetched from a URL",
                "remove `refresh`; key files are re-read when policies reload",
            );
            None
        }
        Some(n) => errs.duration(n, "`token.jwks.refresh`", MAX_REFRESH),
        None => Some(DEFAULT_REFRESH),
    };
    match present[0] {
        "file" => {
            let node = map.get("file")?;
            let relative = errs.string(node, "`token.jwks.file`")?;
            let path = ctx.dir.join(relative);
            let bytes = match (ctx.read_file)(&path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    errs.push(
                        node.pos,
                        ErrorKind::KeyFile,
                        format!("cannot read key file `{}`: {e}", path.display()),
                        "key file paths are relative to the policy file",
                    );
                    return None;
                }
            };
            let keys = match parse_jwks(&bytes, algorithms) {
                Ok(keys) => keys,
                Err(problems) => {
                    for p in problems {
                        let what = p.key.map(|k| format!("{k}: ")).unwrap_or_default();
                        errs.push(
                            node.pos,
                            ErrorKind::KeyFile,
                            format!("key file `{relative}`: {what}{}", p.message),
                            p.help,
                        );
                    }
                    return None;
                }
            };
            ctx.key_material.push((path.display().to_string(), bytes));
            Some(KeySource::Static { keys, file: path })
        }
        "url" => {
            let node = map.get("url")?;
            let url = errs.string(node, "`token.jwks.url`")?;
            if let Err(message) = check_key_url(url, ctx.options.allow_insecure_loopback_jwks) {
                errs.push(node.pos, ErrorKind::InvalidValue, format!("key set URL `{url}` {message}"), "use an `https://` URL (plain `http` only to a loopback address, with `--allow-insecure-loopback-jwks`)");
                return None;
            }
            Some(remote_source(
                KeySetLocation::Jwks(url.to_owned()),
                refresh?,
                ctx,
            ))
        }
        _ => {
            let node = map.get("discovery")?;
            if !errs.bool(node, "`token.jwks.discovery`")? {
                errs.push(
                    node.pos,
                    ErrorKind::InvalidValue,
                    "`discovery: false` names no key source",
                    "set `discovery: true`, or use `file` or `url`",
                );
                return None;
            }
            let issuer = issuer?;
            if let Err(message) = check_key_url(issuer, ctx.options.allow_insecure_loopback_jwks) {
                errs.push(
                    node.pos,
                    ErrorKind::InvalidValue,
                    format!("discovery needs an `https://` issuer, but `{issuer}` {message}"),
                    "keys are found at `<issuer>/.well-known/openid-configuration`; use `url:` for other issuers",
                );
                return None;
            }
            Some(remote_source(
                KeySetLocation::Discovery {
                    issuer: issuer.to_owned(),
                },
                refresh?,
                ctx,
            ))
        }
    }
}

/// A remote key source, shared through the registry when there is one.
fn remote_source(
    location: KeySetLocation,
    refresh: Duration,
    ctx: &DocumentContext<'_>,
) -> KeySource {
    let set = match &ctx.options.remote_keys {
        Some(registry) => registry.register(location, refresh),
        None => Arc::new(RemoteKeySet::new(location, refresh)),
    };
    KeySource::Remote(set)
}

pub(crate) fn check_key_url(url: &str, allow_loopback_http: bool) -> Result<(), String> {
    let (scheme, rest) = url.split_once("://").ok_or("is not an absolute URL")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    match scheme.to_ascii_lowercase().as_str() {
        "https" => parse_authority(authority, Scheme::Https)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        "http" => {
            let (host, _) = parse_authority(authority, Scheme::Http).map_err(|e| e.to_string())?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback =
                host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            match (loopback, allow_loopback_http) {
                (true, true) => Ok(()),
                (true, false) => Err("uses plain http".into()),
                (false, _) => Err("uses plain http to a host that is not loopback".into()),
            }
        }
        other => Err(format!("has the scheme `{other}`")),
    }
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

fn decode_operations(
    node: &Node,
    errs: &mut Errors<'_>,
    service: &str,
    claims: &ClaimNames,
) -> (Vec<Operation>, OperationIndex) {
    let mut operations = Vec::new();
    let mut index = OperationIndex::default();
    let Some(items) = errs.seq(node, "`operations`") else {
        return (operations, index);
    };
    if items.is_empty() {
        errs.push(
            node.pos,
            ErrorKind::InvalidValue,
            format!("service `{service}` has no operations"),
            "list at least one operation; requests that match none are denied",
        );
    }
    let mut names: Vec<(String, Pos)> = Vec::new();
    // Where each operation was written, for conflict messages.
    let mut positions: Vec<Pos> = Vec::new();
    for item in items {
        let Some(map) = errs.map(item, "an operation", OPERATION_KEYS) else {
            continue;
        };
        let Some(name) = errs
            .required(
                &map,
                "name",
                "an operation",
                "name it, e.g. `name: submit-answer`",
            )
            .and_then(|n| errs.string(n, "`name`"))
        else {
            continue;
        };
        if let Some((_, first)) = names.iter().find(|(n, _)| n == name) {
            errs.push(map.pos, ErrorKind::Conflict, format!("operation name `{name}` is used twice in service `{service}` (first at line {})", first.line), "give each operation a distinct name");
            continue;
        }
        names.push((name.to_owned(), map.pos));
        let label = format!("operation `{name}`");
        let description = map
            .get("description")
            .and_then(|n| errs.string(n, "`description`"))
            .map(str::to_owned);
        let methods = errs
            .required(
                &map,
                "methods",
                &label,
                "list the HTTP methods, e.g. `methods: [GET]`",
            )
            .and_then(|n| decode_methods(n, errs, &label));
        let paths = errs
            .required(
                &map,
                "paths",
                &label,
                "list path templates relative to the base URL, e.g. `paths: [\"/users/{userId}\"]`",
            )
            .and_then(|n| decode_paths(n, errs, &label));
        let rules = match (map.get("rules"), &paths) {
            (Some(n), Some(paths)) => {
                let params = common_params(paths);
                decode_rules(n, errs, claims, &params, &label, 0)
            }
            (Some(_), None) => None,
            (None, _) => Some(Vec::new()),
        };
        let rate_limit = match map.get("rateLimit") {
            Some(n) => decode_rate_limit(n, errs, &label).map(Some),
            None => Some(None),
        };
        let (Some(methods), Some(paths), Some(rules), Some(rate_limit)) =
            (methods, paths, rules, rate_limit)
        else {
            continue;
        };
        let operation = operations.len();
        for (path_index, (path, segments, path_pos)) in paths.iter().enumerate() {
            for (method, _) in &methods {
                if let Some(owner) = index.insert(segments, method, operation, path_index) {
                    let (owner_name, owner_pos) = match operations.get(owner) {
                        Some(o) => (o.name.to_string(), positions[owner]),
                        None => (name.to_owned(), map.pos),
                    };
                    errs.push(
                        *path_pos,
                        ErrorKind::Conflict,
                        format!(
                            "{label} can never match {method} `{path}`: operation `{owner_name}` (line {}) already matches it",
                            owner_pos.line
                        ),
                        "remove the overlap, or merge the two operations",
                    );
                }
            }
        }
        positions.push(map.pos);
        operations.push(Operation {
            name: name.into(),
            description,
            methods: methods.into_iter().map(|(m, _)| m.into()).collect(),
            paths: paths.into_iter().map(|(p, _, _)| p).collect(),
            rules,
            rate_limit,
            location: format!("{}:{}", errs.file, map.pos.line).into(),
        });
    }
    (operations, index)
}

fn decode_rate_limit(node: &Node, errs: &mut Errors<'_>, label: &str) -> Option<RateLimit> {
    let what = format!("the `rateLimit` of {label}");
    let map = errs.map(node, &what, RATE_LIMIT_KEYS)?;
    let key = errs
        .required(&map, "key", &what, "count by `subject`, `client` or `ip`, e.g. `key: subject`")
        .and_then(|n| {
            let text = errs.string(n, "`rateLimit.key`")?;
            let key = LimitKey::parse(text);
            if key.is_none() {
                errs.push(
                    n.pos,
                    ErrorKind::InvalidValue,
                    format!("`rateLimit.key` `{text}` is not a key to count by"),
                    match closest(text, LimitKey::NAMES) {
                        Some(near) => format!("did you mean `{near}`?"),
                        None => "write `subject` (the token's `sub`), `client` (its client id) or `ip` (the client address)".to_owned(),
                    },
                );
            }
            key
        });
    let requests = errs
        .required(
            &map,
            "requests",
            &what,
            "say how many requests a window allows, e.g. `requests: 100`",
        )
        .and_then(|n| {
            let text = errs.string(n, "`rateLimit.requests`")?;
            match text.parse::<u64>() {
                Ok(r) if (1..=ratelimit::MAX_REQUESTS).contains(&r) => Some(r),
                _ => {
                    errs.push(
                        n.pos,
                        ErrorKind::InvalidValue,
                        format!(
                            "`rateLimit.requests` `{text}` is not a whole number from 1 to {}",
                            ratelimit::MAX_REQUESTS
                        ),
                        "write how many requests a window allows, e.g. `requests: 100`",
                    );
                    None
                }
            }
        });
    let per = errs
        .required(
            &map,
            "per",
            &what,
            "say how long a window lasts, e.g. `per: 1m`",
        )
        .and_then(|n| {
            let per = errs.duration(n, "`rateLimit.per`", ratelimit::MAX_WINDOW)?;
            if per < ratelimit::MIN_WINDOW || per.subsec_nanos() != 0 {
                errs.push(
                    n.pos,
                    ErrorKind::InvalidValue,
                    "`rateLimit.per` must be a whole number of seconds, at least `1s`".to_owned(),
                    "write a window such as `1s`, `1m`, `1h` or `1day`",
                );
                return None;
            }
            Some(per)
        });
    Some(RateLimit {
        key: key?,
        requests: requests?,
        per: per?,
        location: format!("{}:{}", errs.file, map.pos.line).into(),
    })
}

fn decode_methods<'n>(
    node: &'n Node,
    errs: &mut Errors<'_>,
    label: &str,
) -> Option<Vec<(&'n str, Pos)>> {
    let methods = errs.strings(node, &format!("the methods of {label}"))?;
    let mut ok = true;
    for (method, pos) in &methods {
        let valid = method.bytes().all(|b| b.is_ascii_uppercase())
            && !method.is_empty()
            && method.len() <= 20;
        if !valid {
            let help = if method.bytes().all(|b| b.is_ascii_alphabetic()) {
                format!(
                    "methods are case-sensitive; write `{}`",
                    method.to_ascii_uppercase()
                )
            } else {
                "write an HTTP method such as GET, POST, PUT, PATCH or DELETE".to_owned()
            };
            errs.push(
                *pos,
                ErrorKind::InvalidValue,
                format!("`{method}` is not an HTTP method"),
                help,
            );
            ok = false;
        }
    }
    ok.then_some(methods)
}

type DecodedPath = (String, Vec<TemplateSegment>, Pos);

fn decode_paths(node: &Node, errs: &mut Errors<'_>, label: &str) -> Option<Vec<DecodedPath>> {
    let paths = errs.strings(node, &format!("the paths of {label}"))?;
    let mut out = Vec::new();
    let mut ok = true;
    for (path, pos) in paths {
        match parse_template(path) {
            Ok(segments) => out.push((path.to_owned(), segments, pos)),
            Err(message) => {
                errs.push(pos, ErrorKind::InvalidValue, format!("path template `{path}` {message}"), "write `/literal/{param}/**`: `{name}` is one segment, `**` (last only) any rest");
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn parse_template(path: &str) -> Result<Vec<TemplateSegment>, String> {
    if !path.starts_with('/') {
        return Err("does not start with `/`".into());
    }
    let raw: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut out = Vec::with_capacity(raw.len());
    let mut names = HashSet::new();
    for (i, segment) in raw.iter().enumerate() {
        if *segment == "**" {
            if i + 1 != raw.len() {
                return Err("has `**` before the last segment".into());
            }
            out.push(TemplateSegment::Rest);
        } else if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(format!("has a bad parameter `{segment}`"));
            }
            if !names.insert(name) {
                return Err(format!("names the parameter `{name}` twice"));
            }
            out.push(TemplateSegment::Param(name.into()));
        } else if segment.contains(['{', '}', '*', '%', '\\', '?', '#']) {
            return Err(format!(
                "has `{segment}`, which is neither a literal, `{{name}}` nor `**`"
            ));
        } else if *segment == "." || *segment == ".." {
            return Err("has a `.` or `..` segment".into());
        } else {
            out.push(TemplateSegment::Literal((*segment).into()));
        }
    }
    Ok(out)
}

/// Parameters present in every path of an operation; only those may be referenced.
fn common_params(paths: &[DecodedPath]) -> Vec<String> {
    let params_of = |segments: &[TemplateSegment]| -> Vec<String> {
        segments
            .iter()
            .filter_map(|s| match s {
                TemplateSegment::Param(n) => Some(n.to_string()),
                _ => None,
            })
            .collect()
    };
    let mut common = paths
        .first()
        .map(|(_, s, _)| params_of(s))
        .unwrap_or_default();
    for (_, segments, _) in paths.iter().skip(1) {
        let these = params_of(segments);
        common.retain(|p| these.contains(p));
    }
    common
}

fn decode_rules(
    node: &Node,
    errs: &mut Errors<'_>,
    claims: &ClaimNames,
    params: &[String],
    label: &str,
    depth: usize,
) -> Option<Vec<AccessRule>> {
    let items = errs.seq(node, &format!("the rules of {label}"))?;
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in items {
        match decode_rule(item, errs, claims, params, label, depth) {
            Some(rule) => out.push(rule),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn decode_rule(
    node: &Node,
    errs: &mut Errors<'_>,
    claims: &ClaimNames,
    params: &[String],
    label: &str,
    depth: usize,
) -> Option<AccessRule> {
    if depth > MAX_RULE_DEPTH {
        errs.push(
            node.pos,
            ErrorKind::InvalidValue,
            format!("rules are nested more than {MAX_RULE_DEPTH} levels deep"),
            "flatten the rule",
        );
        return None;
    }
    let mut allowed = vec!["description"];
    allowed.extend_from_slice(CONDITIONS);
    let map = errs.map(node, "a rule", &allowed)?;
    let description = map
        .get("description")
        .and_then(|n| errs.string(n, "`description`"))
        .map(str::to_owned);
    let present = map.present(CONDITIONS);
    let condition = match present.as_slice() {
        [one] => *one,
        [] => {
            errs.push(
                map.pos,
                ErrorKind::MissingKey,
                "a rule needs a condition",
                format!(
                    "use one of {}",
                    CONDITIONS
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            return None;
        }
        [first, second, ..] => {
            errs.push(
                map.key_pos(second).unwrap_or(map.pos),
                ErrorKind::InvalidValue,
                format!("a rule has one condition, but this one has `{first}` and `{second}`"),
                "split it into two rules (all rules of an operation must hold), or combine them with `any:`/`all:`",
            );
            return None;
        }
    };
    let value = map.get(condition)?;
    let what = format!("`{condition}`");
    let kind = match condition {
        "delegated" => RuleKind::Delegated(errs.bool(value, &what)?),
        "groups" | "scopes" => {
            let (mode, values) = decode_set(value, errs, &what)?;
            if condition == "groups" {
                RuleKind::Groups { mode, values }
            } else {
                if let Some(bad) = values.iter().find(|s| s.contains(char::is_whitespace)) {
                    errs.push(
                        value.pos,
                        ErrorKind::InvalidValue,
                        format!("the scope `{bad}` contains a space"),
                        "list each scope separately",
                    );
                    return None;
                }
                RuleKind::Scopes { mode, values }
            }
        }
        "claim" => decode_claim(value, errs, params, label)?,
        "clientIp" => {
            let map = errs.map(value, "`clientIp`", &["in"])?;
            let ranges = errs.required(
                &map,
                "in",
                "`clientIp`",
                "list addresses or CIDR ranges, e.g. `in: [10.0.0.0/8]`",
            )?;
            let ranges = errs.strings(ranges, "`clientIp.in`")?;
            let mut nets = Vec::new();
            for (text, pos) in ranges {
                match text
                    .parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                {
                    Ok(net) => nets.push(net.trunc()),
                    Err(_) => {
                        errs.push(
                            pos,
                            ErrorKind::InvalidValue,
                            format!("`{text}` is not an IP address or CIDR range"),
                            "write e.g. `10.0.0.0/8`, `192.168.1.7` or `::1/128`",
                        );
                        return None;
                    }
                }
            }
            RuleKind::ClientIp(nets.into())
        }
        "any" | "all" => {
            let rules = decode_rules(value, errs, claims, params, label, depth + 1)?;
            if rules.is_empty() {
                errs.push(
                    value.pos,
                    ErrorKind::InvalidValue,
                    format!("`{condition}` lists no rules"),
                    "list at least one rule",
                );
                return None;
            }
            if condition == "any" {
                RuleKind::Any(rules)
            } else {
                RuleKind::All(rules)
            }
        }
        _ => RuleKind::Not(Box::new(decode_rule(
            value,
            errs,
            claims,
            params,
            label,
            depth + 1,
        )?)),
    };
    let location = format!("{}:{}", errs.file, map.pos.line).into();
    Some(AccessRule::new(description, kind, location, claims))
}

fn decode_set(node: &Node, errs: &mut Errors<'_>, what: &str) -> Option<(SetMode, Box<[String]>)> {
    let map = errs.map(node, what, SET_MODES)?;
    let present = map.present(SET_MODES);
    let [mode] = present.as_slice() else {
        errs.push(
            map.pos,
            ErrorKind::InvalidValue,
            format!("{what} needs exactly one of `anyOf` or `allOf`"),
            "write e.g. `{ anyOf: [players] }`; combine both with `all:`",
        );
        return None;
    };
    let values = errs.strings(map.get(mode)?, &format!("{what}.{mode}"))?;
    let mode = if *mode == "anyOf" {
        SetMode::AnyOf
    } else {
        SetMode::AllOf
    };
    Some((
        mode,
        values.into_iter().map(|(v, _)| v.to_owned()).collect(),
    ))
}

fn decode_claim(
    node: &Node,
    errs: &mut Errors<'_>,
    params: &[String],
    label: &str,
) -> Option<RuleKind> {
    let mut allowed = vec!["name"];
    allowed.extend_from_slice(CLAIM_TESTS);
    let map = errs.map(node, "`claim`", &allowed)?;
    let name = errs
        .required(&map, "name", "`claim`", "name the claim, e.g. `name: sub`")
        .and_then(|n| errs.string(n, "`claim.name`"));
    let present = map.present(CLAIM_TESTS);
    let [test_name] = present.as_slice() else {
        errs.push(
            map.pos,
            ErrorKind::InvalidValue,
            "`claim` needs exactly one test",
            format!(
                "use one of {}",
                CLAIM_TESTS
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        return None;
    };
    let value = map.get(test_name)?;
    let template = |errs: &mut Errors<'_>| -> Option<Template> {
        let text = errs.string(value, &format!("`claim.{test_name}`"))?;
        let template = match Template::parse(text) {
            Ok(t) => t,
            Err(message) => {
                errs.push(value.pos, ErrorKind::InvalidValue, message, "");
                return None;
            }
        };
        for param in template.path_params() {
            if !params.iter().any(|p| p == param) {
                errs.push(
                    value.pos,
                    ErrorKind::InvalidValue,
                    format!("`{{path.{param}}}` is not a parameter of every path of {label}"),
                    if params.is_empty() {
                        "the operation's paths have no parameters in common".to_owned()
                    } else {
                        format!("parameters available: {}", params.join(", "))
                    },
                );
                return None;
            }
        }
        Some(template)
    };
    let test = match *test_name {
        "equals" => ClaimTest::Equals(template(errs)?),
        "contains" => ClaimTest::Contains(template(errs)?),
        "in" => ClaimTest::In(
            errs.strings(value, "`claim.in`")?
                .into_iter()
                .map(|(v, _)| v.to_owned())
                .collect(),
        ),
        _ => ClaimTest::Exists(errs.bool(value, "`claim.exists`")?),
    };
    Some(RuleKind::Claim {
        claim: ClaimPath::new(name?),
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_and_refuse_nonsense() {
        assert_eq!(
            parse_template("/users/{id}/**").unwrap(),
            vec![
                TemplateSegment::Literal("users".into()),
                TemplateSegment::Param("id".into()),
                TemplateSegment::Rest
            ]
        );
        assert!(parse_template("users").is_err());
        assert!(parse_template("/a/**/b").is_err());
        assert!(parse_template("/a/{x}/{x}").is_err());
        assert!(parse_template("/a/x{y}").is_err());
        assert!(parse_template("/a/../b").is_err());
    }

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

    #[test]
    fn key_urls_must_be_https_except_loopback_when_allowed() {
        assert!(check_key_url("https://auth.example.com/jwks", false).is_ok());
        assert!(check_key_url("http://127.0.0.1:9000/jwks", false).is_err());
        assert!(check_key_url("http://127.0.0.1:9000/jwks", true).is_ok());
        assert!(check_key_url("http://[::1]/jwks", true).is_ok());
        assert!(check_key_url("http://auth.example.com/jwks", true).is_err());
    }
}
