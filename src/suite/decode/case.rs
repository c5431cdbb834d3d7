//! Decoding a case and its expectation: what the decision must be.

use super::request::{decode_request, decode_token};
use super::{Defaults, Keys, entries, present};
use crate::decision::{DETAIL_CODES, Outcome};
use crate::policy::err::{ErrorKind, Errors, closest};
use crate::policy::yaml::{Node, NodeKind};
use crate::suite::Case;
use crate::suite::expect::{BODY_CODES, Expectation};

pub(super) fn decode_case(
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
