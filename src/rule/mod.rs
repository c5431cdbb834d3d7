//! Access rules: compiled conditions over the verified token and the request, evaluated in
//! order while the trace is written. No I/O.

pub mod template;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde_json::Value;

pub use self::template::Template;
use crate::token::{ClaimPath, VerifiedToken};
use crate::trace_entry::{Step, TraceEntry};

/// How a list of required values is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetMode {
    AnyOf,
    AllOf,
}

impl SetMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SetMode::AnyOf => "anyOf",
            SetMode::AllOf => "allOf",
        }
    }
}

#[derive(Debug, Clone)]
pub enum ClaimTest {
    Equals(Template),
    In(Box<[String]>),
    Contains(Template),
    Exists(bool),
}

impl ClaimTest {
    fn operator(&self) -> &'static str {
        match self {
            ClaimTest::Equals(_) => "equals",
            ClaimTest::In(_) => "in",
            ClaimTest::Contains(_) => "contains",
            ClaimTest::Exists(_) => "exists",
        }
    }
}

#[derive(Debug, Clone)]
pub enum RuleKind {
    /// `true`: the token was issued to a user; `false`: it is a client-credentials token.
    Delegated(bool),
    Groups {
        mode: SetMode,
        values: Box<[String]>,
    },
    Scopes {
        mode: SetMode,
        values: Box<[String]>,
    },
    Claim {
        claim: ClaimPath,
        test: ClaimTest,
    },
    ClientIp(Box<[IpNet]>),
    Any(Vec<AccessRule>),
    All(Vec<AccessRule>),
    Not(Box<AccessRule>),
}

#[derive(Debug, Clone)]
pub struct AccessRule {
    /// The operator's description, or one generated from the condition.
    pub description: Arc<str>,
    pub kind: RuleKind,
    /// `file:line` of the rule, for traces and coverage.
    pub location: Arc<str>,
    /// The trace's `attribute`, computed once.
    attribute: Arc<str>,
    /// The trace's `expected` when it does not depend on the request.
    expected: Option<Arc<Value>>,
}

impl AccessRule {
    pub fn new(
        description: Option<String>,
        kind: RuleKind,
        location: Arc<str>,
        ctx: &ClaimNames,
    ) -> Self {
        let attribute: Arc<str> = match &kind {
            RuleKind::Delegated(_) => "token.sub".into(),
            RuleKind::Groups { .. } => format!("token.{}", ctx.groups.as_str()).into(),
            RuleKind::Scopes { .. } => format!("token.{}", ctx.scopes.as_str()).into(),
            RuleKind::Claim { claim, .. } => format!("token.{}", claim.as_str()).into(),
            RuleKind::ClientIp(_) => "request.client".into(),
            RuleKind::Any(_) | RuleKind::All(_) | RuleKind::Not(_) => "".into(),
        };
        let expected = match &kind {
            RuleKind::Delegated(want) => Some(Value::Bool(*want)),
            RuleKind::Groups { values, .. } | RuleKind::Scopes { values, .. } => {
                Some(Value::from(values.to_vec()))
            }
            RuleKind::Claim { test, .. } => match test {
                ClaimTest::Equals(t) | ClaimTest::Contains(t) => t.literal().map(Value::from),
                ClaimTest::In(values) => Some(Value::from(values.to_vec())),
                ClaimTest::Exists(want) => Some(Value::Bool(*want)),
            },
            RuleKind::ClientIp(nets) => Some(Value::from(
                nets.iter().map(ToString::to_string).collect::<Vec<_>>(),
            )),
            _ => None,
        }
        .map(Arc::new);
        let description = description
            .map(Into::into)
            .unwrap_or_else(|| describe(&kind).into());
        Self {
            description,
            kind,
            location,
            attribute,
            expected,
        }
    }
}

impl AccessRule {
    /// Adds the token claims this rule reads (by path, as written) to `out`.
    pub fn claims_read<'r>(&'r self, names: &'r ClaimNames, out: &mut Vec<&'r ClaimPath>) {
        match &self.kind {
            // `sub` is a field of the verified token; whether it is the client's own id is
            // read from these two.
            RuleKind::Delegated(_) | RuleKind::ClientIp(_) => {}
            RuleKind::Groups { .. } => out.push(&names.groups),
            RuleKind::Scopes { .. } => out.push(&names.scopes),
            RuleKind::Claim { claim, test } => {
                out.push(claim);
                if let ClaimTest::Equals(t) | ClaimTest::Contains(t) = test {
                    out.extend(t.claims());
                }
            }
            RuleKind::Any(rules) | RuleKind::All(rules) => {
                for rule in rules {
                    rule.claims_read(names, out);
                }
            }
            RuleKind::Not(rule) => rule.claims_read(names, out),
        }
    }
}

/// The claims a service reads groups and scopes from.
#[derive(Debug, Clone)]
pub struct ClaimNames {
    pub groups: ClaimPath,
    pub scopes: ClaimPath,
}

fn quoted_list(values: &[String]) -> String {
    values.join(", ")
}

/// A description for a rule that has none, as it reads in traces.
fn describe(kind: &RuleKind) -> String {
    match kind {
        RuleKind::Delegated(true) => "the token was issued to a user".into(),
        RuleKind::Delegated(false) => "the token is a client-credentials token".into(),
        RuleKind::Groups { mode, values } => {
            format!("groups {} [{}]", mode.as_str(), quoted_list(values))
        }
        RuleKind::Scopes { mode, values } => {
            format!("scopes {} [{}]", mode.as_str(), quoted_list(values))
        }
        RuleKind::Claim { claim, test } => match test {
            ClaimTest::Equals(t) => format!("claim {} equals {}", claim.as_str(), t.source()),
            ClaimTest::In(values) => {
                format!("claim {} in [{}]", claim.as_str(), quoted_list(values))
            }
            ClaimTest::Contains(t) => format!("claim {} contains {}", claim.as_str(), t.source()),
            ClaimTest::Exists(true) => format!("claim {} is present", claim.as_str()),
            ClaimTest::Exists(false) => format!("claim {} is absent", claim.as_str()),
        },
        RuleKind::ClientIp(nets) => format!(
            "client address in [{}]",
            nets.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        RuleKind::Any(rules) => format!("any of {} rules", rules.len()),
        RuleKind::All(rules) => format!("all of {} rules", rules.len()),
        RuleKind::Not(rule) => format!("not ({})", rule.description),
    }
}

/// What a rule can see.
pub struct RuleContext<'a> {
    pub token: &'a VerifiedToken,
    pub params: &'a [(Box<str>, String)],
    pub client: Option<IpAddr>,
    pub claims: &'a ClaimNames,
}

/// A top-level rule that did not hold, for the error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFailure {
    pub code: &'static str,
    pub target: String,
    pub message: String,
    /// The scopes the rule asked for, when it is a scope rule (for `insufficient_scope`).
    pub scopes: Option<Vec<String>>,
}

/// Evaluates every top-level rule (all must hold) and appends one trace entry per rule
/// evaluated. The first failing top-level rule is marked decisive; every failure is
/// returned, so that the caller learns all that is missing at once.
pub fn evaluate(
    rules: &[AccessRule],
    ctx: &RuleContext<'_>,
    trace: &mut Vec<TraceEntry>,
) -> Vec<RuleFailure> {
    let mut failures = Vec::new();
    for rule in rules {
        let at = trace.len();
        if !eval(rule, ctx, trace, 0) {
            if failures.is_empty() {
                trace[at].decisive = true;
            }
            failures.push(failure(rule, &trace[at]));
        }
    }
    failures
}

fn eval(rule: &AccessRule, ctx: &RuleContext<'_>, trace: &mut Vec<TraceEntry>, depth: u8) -> bool {
    let at = trace.len();
    trace.push(TraceEntry {
        step: Step::Rule,
        rule: Some(rule.description.clone()),
        attribute: rule.attribute.clone(),
        operator: Cow::Borrowed(""),
        expected: rule.expected.clone(),
        actual: None,
        result: false,
        decisive: false,
        depth,
        detail: None,
        location: Some(rule.location.clone()),
    });
    let token = ctx.token;
    let (operator, result, actual, detail): (&'static str, bool, Option<Value>, Option<String>) =
        match &rule.kind {
            RuleKind::Delegated(want) => {
                let delegated = token.is_delegated();
                let detail = (!delegated).then(|| match &token.sub {
                    None => "the token has no `sub` claim".to_owned(),
                    Some(_) => "`sub` equals the token's `client_id`/`azp`".to_owned(),
                });
                (
                    "delegated",
                    delegated == *want,
                    Some(Value::Bool(delegated)),
                    detail,
                )
            }
            RuleKind::Groups { mode, values } => {
                let groups = string_set(ctx.claims.groups.lookup(&token.claims), false);
                let result = set_holds(*mode, values, &groups);
                (mode.as_str(), result, Some(Value::Array(groups)), None)
            }
            RuleKind::Scopes { mode, values } => {
                let scopes = string_set(ctx.claims.scopes.lookup(&token.claims), true);
                let result = set_holds(*mode, values, &scopes);
                (mode.as_str(), result, Some(Value::Array(scopes)), None)
            }
            RuleKind::Claim { claim, test } => {
                let value = claim.lookup(&token.claims);
                let (result, expected) = claim_holds(test, value, ctx);
                if let Some(expected) = expected {
                    trace[at].expected = Some(Arc::new(expected));
                }
                (
                    test.operator(),
                    result,
                    Some(value.cloned().unwrap_or(Value::Null)),
                    None,
                )
            }
            RuleKind::ClientIp(nets) => {
                let result = ctx
                    .client
                    .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip)));
                let actual = ctx
                    .client
                    .map_or(Value::Null, |ip| Value::from(ip.to_string()));
                let detail = ctx
                    .client
                    .is_none()
                    .then(|| "the client address is unknown".to_owned());
                ("inRanges", result, Some(actual), detail)
            }
            RuleKind::Any(rules) => {
                let result = rules.iter().any(|r| eval(r, ctx, trace, depth + 1));
                ("any", result, None, None)
            }
            RuleKind::All(rules) => {
                let result = rules.iter().all(|r| eval(r, ctx, trace, depth + 1));
                ("all", result, None, None)
            }
            RuleKind::Not(inner) => {
                let result = !eval(inner, ctx, trace, depth + 1);
                ("not", result, None, None)
            }
        };
    let entry = &mut trace[at];
    entry.operator = Cow::Borrowed(operator);
    entry.result = result;
    entry.actual = actual;
    entry.detail = detail;
    result
}

/// Group and scope claims as a list of strings: an array of strings, or a string that is
/// one group, or (for scopes) space-separated scopes. Made as the trace entry's values
/// straight away: one vector, not one of `String`s and then one of `Value`s.
fn string_set(value: Option<&Value>, split_spaces: bool) -> Vec<Value> {
    match value {
        Some(Value::String(s)) if split_spaces => {
            s.split_ascii_whitespace().map(Value::from).collect()
        }
        Some(Value::String(s)) => vec![Value::from(s.as_str())],
        Some(Value::Array(items)) => items.iter().filter(|v| v.is_string()).cloned().collect(),
        _ => Vec::new(),
    }
}

fn set_holds(mode: SetMode, required: &[String], have: &[Value]) -> bool {
    let has = |r: &String| have.iter().any(|h| h.as_str() == Some(r));
    match mode {
        SetMode::AnyOf => required.iter().any(has),
        SetMode::AllOf => required.iter().all(has),
    }
}

/// Scalars compare by their text: `"42"` and `42` are the same claim value, since path
/// parameters are always text.
pub(crate) fn scalar_text(value: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match value {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into()),
        Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
        _ => None,
    }
}

/// Whether the test holds, and the expected value when it had to be computed.
fn claim_holds(
    test: &ClaimTest,
    value: Option<&Value>,
    ctx: &RuleContext<'_>,
) -> (bool, Option<Value>) {
    match test {
        ClaimTest::Equals(template) => {
            let want = template.render(ctx.token, ctx.params);
            let result = match (&want, value.and_then(scalar_text)) {
                (Some(want), Some(have)) => *want == *have,
                _ => false,
            };
            (result, dynamic(template, want))
        }
        ClaimTest::Contains(template) => {
            let want = template.render(ctx.token, ctx.params);
            let result = match (&want, value) {
                (Some(want), Some(Value::Array(items))) => items
                    .iter()
                    .any(|i| scalar_text(i).is_some_and(|t| t == want.as_str())),
                (Some(want), Some(Value::String(s))) => {
                    s.split_ascii_whitespace().any(|t| t == want)
                }
                _ => false,
            };
            (result, dynamic(template, want))
        }
        ClaimTest::In(values) => {
            let result = value
                .and_then(scalar_text)
                .is_some_and(|have| values.iter().any(|v| *v == have));
            (result, None)
        }
        ClaimTest::Exists(want) => (value.is_some_and(|v| !v.is_null()) == *want, None),
    }
}

fn dynamic(template: &Template, rendered: Option<String>) -> Option<Value> {
    if template.literal().is_some() {
        return None;
    }
    Some(rendered.map_or(Value::Null, Value::String))
}

fn show(value: &Option<Value>) -> String {
    match value {
        None | Some(Value::Null) => "missing".to_owned(),
        Some(Value::Array(items)) if items.is_empty() => "none".to_owned(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| scalar_text(i).map_or_else(|| i.to_string(), |t| t.into_owned()))
            .collect::<Vec<_>>()
            .join(", "),
        Some(v) => scalar_text(v).map_or_else(|| v.to_string(), |t| format!("`{t}`")),
    }
}

fn failure(rule: &AccessRule, entry: &TraceEntry) -> RuleFailure {
    let desc = &rule.description;
    let expected = entry.expected.as_deref().cloned();
    let target = entry
        .attribute
        .strip_prefix("token.")
        .unwrap_or(&entry.attribute)
        .to_owned();
    let (code, message, scopes) = match &rule.kind {
        RuleKind::Delegated(true) => (
            "USER_REQUIRED",
            format!(
                "{desc}: the token must be issued to a user, but it is a client-credentials token ({}). Get a token through a user sign-in flow, such as the authorization code flow.",
                entry.detail.as_deref().unwrap_or("no user")
            ),
            None,
        ),
        RuleKind::Delegated(false) => (
            "CLIENT_REQUIRED",
            format!(
                "{desc}: the token must be a client-credentials token, but it was issued to a user."
            ),
            None,
        ),
        RuleKind::Groups { mode, values } => (
            "GROUP_REQUIRED",
            format!(
                "{desc}: the user must be in {} of the groups [{}]; the token's `{target}` claim has {}.",
                if *mode == SetMode::AnyOf {
                    "one"
                } else {
                    "all"
                },
                quoted_list(values),
                show(&entry.actual)
            ),
            None,
        ),
        RuleKind::Scopes { mode, values } => (
            "SCOPE_REQUIRED",
            format!(
                "{desc}: the token needs {} of the scopes [{}]; it has {}. Request the scope when getting the token.",
                if *mode == SetMode::AnyOf {
                    "one"
                } else {
                    "all"
                },
                quoted_list(values),
                show(&entry.actual)
            ),
            Some(values.to_vec()),
        ),
        RuleKind::Claim { claim, test } => {
            let name = claim.as_str();
            let actual = show(&entry.actual);
            let message = match test {
                ClaimTest::Equals(_) => format!(
                    "{desc}: claim `{name}` must equal {}; it is {actual}.",
                    show(&expected)
                ),
                ClaimTest::Contains(_) => {
                    format!(
                        "{desc}: claim `{name}` must contain {}; it is {actual}.",
                        show(&expected)
                    )
                }
                ClaimTest::In(_) => format!(
                    "{desc}: claim `{name}` must be one of [{}]; it is {actual}.",
                    show(&expected)
                ),
                ClaimTest::Exists(true) => {
                    format!("{desc}: the token must have the claim `{name}`.")
                }
                ClaimTest::Exists(false) => {
                    format!("{desc}: the token must not have the claim `{name}`.")
                }
            };
            ("CLAIM_MISMATCH", message, None)
        }
        RuleKind::ClientIp(_) => (
            "CLIENT_ADDRESS_NOT_ALLOWED",
            format!(
                "{desc}: the client address {} is not in [{}].",
                show(&entry.actual),
                show(&expected)
            ),
            None,
        ),
        RuleKind::Any(_) => (
            "RULE_NOT_SATISFIED",
            format!("{desc}: none of its alternatives holds; the decision trace shows each."),
            None,
        ),
        RuleKind::All(_) => (
            "RULE_NOT_SATISFIED",
            format!("{desc}: not all of its conditions hold; the decision trace shows which."),
            None,
        ),
        RuleKind::Not(_) => (
            "RULE_NOT_SATISFIED",
            format!("{desc}: the condition it excludes holds."),
            None,
        ),
    };
    RuleFailure {
        code,
        target: if target.is_empty() {
            "rules".to_owned()
        } else {
            target
        },
        message,
        scopes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(claims: Value) -> VerifiedToken {
        VerifiedToken {
            exp: Some(i64::MAX),
            ..VerifiedToken::of_claims(claims)
        }
    }

    fn names() -> ClaimNames {
        ClaimNames {
            groups: ClaimPath::new("groups"),
            scopes: ClaimPath::new("scope"),
        }
    }

    fn rule(kind: RuleKind) -> AccessRule {
        AccessRule::new(None, kind, "test.yaml:1".into(), &names())
    }

    fn run(
        rules: &[AccessRule],
        claims: Value,
        params: &[(Box<str>, String)],
    ) -> (Vec<RuleFailure>, Vec<TraceEntry>) {
        let token = token(claims);
        let names = names();
        let ctx = RuleContext {
            token: &token,
            params,
            client: None,
            claims: &names,
        };
        let mut trace = Vec::new();
        let failures = evaluate(rules, &ctx, &mut trace);
        (failures, trace)
    }

    fn groups(mode: SetMode, values: &[&str]) -> RuleKind {
        RuleKind::Groups {
            mode,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    #[test]
    fn every_rule_is_evaluated_and_the_first_failure_decides() {
        let rules = [
            rule(groups(SetMode::AnyOf, &["admins"])),
            rule(RuleKind::Scopes {
                mode: SetMode::AllOf,
                values: vec!["a".to_owned(), "b".to_owned()].into(),
            }),
        ];
        let (failures, trace) = run(
            &rules,
            json!({"sub": "u", "groups": ["users"], "scope": "a"}),
            &[],
        );
        assert_eq!(
            failures.iter().map(|f| f.code).collect::<Vec<_>>(),
            ["GROUP_REQUIRED", "SCOPE_REQUIRED"]
        );
        assert_eq!(
            failures[1].scopes.as_deref(),
            Some(&["a".to_owned(), "b".to_owned()][..])
        );
        assert_eq!(trace.len(), 2);
        assert!(trace[0].decisive && !trace[1].decisive);
        assert_eq!(trace[0].actual, Some(json!(["users"])));
        assert_eq!(
            trace[1].actual,
            Some(json!(["a"])),
            "a space-separated scope string is a list"
        );
    }

    #[test]
    fn any_of_and_all_of_differ() {
        let claims = json!({"groups": ["a"]});
        assert!(
            run(
                &[rule(groups(SetMode::AnyOf, &["a", "b"]))],
                claims.clone(),
                &[]
            )
            .0
            .is_empty()
        );
        assert_eq!(
            run(&[rule(groups(SetMode::AllOf, &["a", "b"]))], claims, &[])
                .0
                .len(),
            1
        );
    }

    #[test]
    fn claims_compare_as_text_with_path_parameters() {
        let equals = rule(RuleKind::Claim {
            claim: ClaimPath::new("account"),
            test: ClaimTest::Equals(template::Template::parse("{path.id}").unwrap()),
        });
        let params = [("id".into(), "42".to_owned())];
        assert!(
            run(
                std::slice::from_ref(&equals),
                json!({"account": 42}),
                &params
            )
            .0
            .is_empty()
        );
        let (failures, trace) = run(&[equals], json!({"account": 7}), &params);
        assert_eq!(failures[0].code, "CLAIM_MISMATCH");
        assert_eq!(
            trace[0].expected.as_deref(),
            Some(&json!("42")),
            "the rendered expectation is traced"
        );
        assert_eq!(scalar_text(&json!(true)).as_deref(), Some("true"));
        assert_eq!(scalar_text(&json!([1])), None);
    }

    #[test]
    fn nested_rules_trace_their_children_at_depth() {
        let any = rule(RuleKind::Any(vec![
            rule(RuleKind::Delegated(false)),
            rule(RuleKind::Claim {
                claim: ClaimPath::new("amr"),
                test: ClaimTest::Contains(template::Template::parse("mfa").unwrap()),
            }),
        ]));
        let (failures, trace) = run(
            std::slice::from_ref(&any),
            json!({"sub": "u", "amr": ["pwd"]}),
            &[],
        );
        assert_eq!(failures[0].code, "RULE_NOT_SATISFIED");
        assert_eq!(trace.iter().map(|t| t.depth).collect::<Vec<_>>(), [0, 1, 1]);
        assert!(trace[0].decisive && !trace[1].decisive && !trace[2].decisive);
        let not = rule(RuleKind::Not(Box::new(any)));
        assert!(
            run(&[not], json!({"sub": "u", "amr": ["pwd"]}), &[])
                .0
                .is_empty()
        );
    }
}
