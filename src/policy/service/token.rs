//! Decoding a service's `token` section: issuer, audiences, algorithms, leeway, claim names and
//! where the keys are (a file, a URL or the issuer's discovery document).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::DocumentContext;
use crate::policy::err::{ErrorKind, Errors};
use crate::policy::yaml::Node;
use crate::route::url::{Scheme, parse_authority};
use crate::token::jwks::parse_jwks;
use crate::token::remote::{KeySetLocation, RemoteKeySet};
use crate::token::{ClaimPath, KeySource, TokenRequirements};

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

const MAX_LEEWAY: Duration = Duration::from_secs(300);
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
const DEFAULT_REFRESH: Duration = Duration::from_secs(600);
const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);

pub(super) fn decode_token(
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
    let (keys, algorithms) = (keys?, algorithms?);
    Some(TokenRequirements {
        issuer: issuer?.into(),
        audiences: audiences?.into_iter().map(|(a, _)| a.into()).collect(),
        keys_id: crate::token::keys_id(&keys, &algorithms),
        algorithms,
        leeway: leeway?.as_secs() as i64,
        groups_claim: groups_claim?,
        scope_claim: scope_claim?,
        keys,
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
                let help = match crate::policy::err::closest(name, ALGORITHMS) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_urls_must_be_https_except_loopback_when_allowed() {
        assert!(check_key_url("https://auth.example.com/jwks", false).is_ok());
        assert!(check_key_url("http://127.0.0.1:9000/jwks", false).is_err());
        assert!(check_key_url("http://127.0.0.1:9000/jwks", true).is_ok());
        assert!(check_key_url("http://[::1]/jwks", true).is_ok());
        assert!(check_key_url("http://auth.example.com/jwks", true).is_err());
    }
}
