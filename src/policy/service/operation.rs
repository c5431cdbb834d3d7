//! Decoding a service's operations: names, methods, path templates and rate limits, and the
//! operation index built from them.

use std::collections::HashSet;

use super::rule::decode_rules;
use crate::policy::Operation;
use crate::policy::err::{ErrorKind, Errors, closest};
use crate::policy::yaml::{Node, Pos};
use crate::ratelimit::{self, LimitKey, RateLimit};
use crate::route::{OperationIndex, TemplateSegment};
use crate::rule::ClaimNames;

const OPERATION_KEYS: &[&str] = &[
    "name",
    "description",
    "methods",
    "paths",
    "rules",
    "rateLimit",
];
const RATE_LIMIT_KEYS: &[&str] = &["key", "requests", "per"];

pub(super) fn decode_operations(
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
}
