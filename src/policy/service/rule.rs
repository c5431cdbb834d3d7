//! Decoding an operation's access rules: one condition each, nested under `any`, `all` and
//! `not` to a bounded depth.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::policy::err::{ErrorKind, Errors};
use crate::policy::yaml::Node;
use crate::rule::{AccessRule, ClaimNames, ClaimTest, RuleKind, SetMode, Template};
use crate::token::ClaimPath;

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

/// Deepest nesting of `any`/`all`/`not`.
const MAX_RULE_DEPTH: usize = 16;

pub(super) fn decode_rules(
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
