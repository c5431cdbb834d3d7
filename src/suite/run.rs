//! Running suites: each case decided by the real engine at the suite's clock, compared with
//! its expectation; and coverage of the policy set's operations and top-level rules. No I/O.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use super::{Case, Suite, TokenSpec};
use crate::decision::{Decision, DecisionRequest, Engine, Step};
use crate::policy::PolicySet;
use crate::time::unix_seconds;

/// The result of one case.
#[derive(Debug)]
pub struct CaseReport {
    pub file: Arc<str>,
    pub line: u32,
    pub name: String,
    /// What differed from the expectation, one phrase each; empty when the case passed.
    pub differences: Vec<String>,
    /// The decision; `None` when the case's token could not be signed.
    pub decision: Option<Decision>,
}

impl CaseReport {
    pub fn passed(&self) -> bool {
        self.differences.is_empty()
    }

    /// What decided: `allowed by operation x`, `rule "…" (file:line): …`, or the check that
    /// failed before the rules, with the error body's first detail message.
    pub fn decided_by(&self) -> String {
        let Some(decision) = &self.decision else {
            return "not decided".to_owned();
        };
        let message = decision
            .body
            .as_ref()
            .and_then(|b| b.details.first())
            .map(|d| d.message.as_str())
            .unwrap_or_default();
        if decision.is_allowed() {
            return match &decision.operation {
                Some(op) => format!("allowed by operation {op}"),
                None => "allowed".to_owned(),
            };
        }
        let by = match decision.decisive() {
            Some(entry) if entry.step == Step::Rule => {
                let rule = entry.rule.as_deref().unwrap_or_default();
                // Rule messages open with the rule's description, already named here.
                let message = message
                    .strip_prefix(rule)
                    .and_then(|m| m.strip_prefix(": "))
                    .unwrap_or(message);
                let location = entry.location.as_deref().unwrap_or("?");
                return format!("decided by rule {rule:?} ({location}): {message}");
            }
            Some(entry) if entry.step == Step::Token => {
                format!("the token check of `{}`", entry.attribute)
            }
            Some(entry) if entry.step == Step::BaseUrl => "the URL".to_owned(),
            Some(_) => "operation matching".to_owned(),
            None => "the engine".to_owned(),
        };
        format!("decided by {by}: {message}")
    }
}

/// `file:line: case "name": expected status 403, got 401 (TOKEN_EXPIRED); … — decided by …`,
/// always one line.
impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = format!(
            "{}:{}: case {:?}: {} — {}",
            self.file,
            self.line,
            self.name,
            if self.passed() {
                "passed".to_owned()
            } else {
                self.differences.join("; ")
            },
            self.decided_by()
        );
        f.write_str(&one_line(&line))
    }
}

/// Control characters (from hostile names or claims) escaped, so that a report line is one
/// line.
fn one_line(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// An operation no case matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UncoveredOperation {
    pub service: Arc<str>,
    pub operation: Arc<str>,
    /// `file:line` of the operation.
    pub location: Arc<str>,
}

impl fmt::Display for UncoveredOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ({})", self.service, self.operation, self.location)
    }
}

/// A top-level rule that decided no case: no case exercises its failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UncoveredRule {
    pub service: Arc<str>,
    pub operation: Arc<str>,
    pub description: Arc<str>,
    /// `file:line` of the rule.
    pub location: Arc<str>,
}

impl fmt::Display for UncoveredRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}: rule {:?} ({})",
            self.service, self.operation, self.description, self.location
        )
    }
}

/// What the cases run exercised of the policy set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    pub operations: usize,
    /// Top-level rules; rules nested under `any`/`all`/`not` never decide on their own.
    pub rules: usize,
    pub unmatched_operations: Vec<UncoveredOperation>,
    pub undecisive_rules: Vec<UncoveredRule>,
}

impl Coverage {
    pub fn is_complete(&self) -> bool {
        self.unmatched_operations.is_empty() && self.undecisive_rules.is_empty()
    }

    fn of<'d>(policies: &PolicySet, decisions: impl Iterator<Item = &'d Decision>) -> Self {
        let mut matched: Vec<Vec<bool>> = Vec::new();
        let mut decided: Vec<Vec<Vec<bool>>> = Vec::new();
        for service in &policies.services {
            matched.push(vec![false; service.operations.len()]);
            decided.push(
                service
                    .operations
                    .iter()
                    .map(|op| vec![false; op.rules.len()])
                    .collect(),
            );
        }
        for decision in decisions {
            let Some(s) = policies
                .services
                .iter()
                .position(|s| Some(&s.name) == decision.service.as_ref())
            else {
                continue;
            };
            let Some(o) = policies.services[s]
                .operations
                .iter()
                .position(|op| Some(&op.name) == decision.operation.as_ref())
            else {
                continue;
            };
            matched[s][o] = true;
            // Top-level rules are traced in order, every one of them, each at depth 0.
            let top_level = decision
                .trace
                .iter()
                .filter(|e| e.step == Step::Rule && e.depth == 0);
            for (r, entry) in top_level.enumerate() {
                if entry.decisive
                    && let Some(seen) = decided[s][o].get_mut(r)
                {
                    *seen = true;
                }
            }
        }
        let mut coverage = Coverage::default();
        for (s, service) in policies.services.iter().enumerate() {
            for (o, op) in service.operations.iter().enumerate() {
                coverage.operations += 1;
                coverage.rules += op.rules.len();
                if !matched[s][o] {
                    coverage.unmatched_operations.push(UncoveredOperation {
                        service: service.name.clone(),
                        operation: op.name.clone(),
                        location: op.location.clone(),
                    });
                }
                for (r, rule) in op.rules.iter().enumerate() {
                    if !decided[s][o][r] {
                        coverage.undecisive_rules.push(UncoveredRule {
                            service: service.name.clone(),
                            operation: op.name.clone(),
                            description: rule.description.clone(),
                            location: rule.location.clone(),
                        });
                    }
                }
            }
        }
        coverage
    }
}

/// The results of a run.
#[derive(Debug)]
pub struct Report {
    pub cases: Vec<CaseReport>,
    pub coverage: Coverage,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.passed()).count()
    }

    pub fn failed(&self) -> usize {
        self.cases.len() - self.passed()
    }

    /// `N passed, N failed`
    pub fn summary(&self) -> String {
        format!("{} passed, {} failed", self.passed(), self.failed())
    }
}

/// Decides every case of `suites` (those whose name, or `file: name`, contains `filter`)
/// against `policies`, at each suite's `now` or else at `clock`.
pub fn run(
    policies: &PolicySet,
    suites: &[Suite],
    clock: SystemTime,
    filter: Option<&str>,
) -> Report {
    let engine = Engine::new(1024);
    let mut cases = Vec::new();
    for suite in suites {
        let now = suite.now.unwrap_or(clock);
        for case in &suite.cases {
            let selected = filter.is_none_or(|f| {
                case.name.contains(f) || format!("{}: {}", suite.file, case.name).contains(f)
            });
            if selected {
                cases.push(run_case(&engine, policies, &suite.file, case, now));
            }
        }
    }
    let coverage = Coverage::of(policies, cases.iter().filter_map(|c| c.decision.as_ref()));
    Report { cases, coverage }
}

fn run_case(
    engine: &Engine,
    policies: &PolicySet,
    file: &Arc<str>,
    case: &Case,
    now: SystemTime,
) -> CaseReport {
    let mut report = CaseReport {
        file: file.clone(),
        line: case.line,
        name: case.name.clone(),
        differences: Vec::new(),
        decision: None,
    };
    let token = match &case.token {
        TokenSpec::None => None,
        TokenSpec::Raw(raw) => Some(raw.clone()),
        TokenSpec::Signed(template) => match template.sign(unix_seconds(now)) {
            Ok(token) => Some(token),
            Err(e) => {
                report
                    .differences
                    .push(format!("cannot sign the token: {e}"));
                return report;
            }
        },
    };
    let authorization = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = case
        .request
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    if let Some(value) = &authorization {
        headers.push(("authorization", value));
    }
    let decision = engine.decide(
        policies,
        &DecisionRequest {
            method: &case.request.method,
            url: &case.request.url,
            headers: &headers,
            client: case.request.client,
            client_cert: None,
        },
        now,
    );
    report.differences = case.expect.differences(&decision);
    report.decision = Some(decision);
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::SourceFile;

    const SUITE: &str = r#"
keys:
  dev: { file: keys/meme-game.dev-key.pem, kid: meme-game-dev-rsa-1 }
now: 2026-11-21T10:00:00Z
defaults:
  baseUrl: https://localhost:8443/meme-game/api/v1
  token: { claims: { iss: https://auth.example.com, aud: meme-game, exp: +1h, sub: user.0 } }
cases:
  - name: the leaderboard is open to any token
    request: /leaderboard
    expect: { status: 200, operation: leaderboard, upstreamHeaders: { x-user-id: user.0 } }
  - name: an expired token
    request: /leaderboard
    token: { claims: { exp: -1h } }
    expect: { status: 403 }
  - name: viewers may not answer
    request: POST /users/user.0/answers
    token: { claims: { groups: [viewers] } }
    expect: { status: 403, rule: only players }
"#;

    fn suites() -> Vec<Suite> {
        let source = SourceFile {
            path: "policies/t.test.yaml".into(),
            text: SUITE.into(),
        };
        super::super::parse_suite(&source, &|p| std::fs::read(p)).unwrap()
    }

    fn policies() -> PolicySet {
        crate::policy::load_dir("policies".as_ref(), &Default::default()).unwrap()
    }

    #[test]
    fn cases_pass_fail_and_say_what_differed() {
        let report = run(&policies(), &suites(), SystemTime::UNIX_EPOCH, None);
        assert_eq!(report.summary(), "2 passed, 1 failed");
        let failed: Vec<String> = report
            .cases
            .iter()
            .filter(|c| !c.passed())
            .map(ToString::to_string)
            .collect();
        assert_eq!(failed.len(), 1);
        assert!(
            failed[0].starts_with(
                "policies/t.test.yaml:12: case \"an expired token\": expected status 403, got 401 (TOKEN_EXPIRED) — decided by the token check of `token.exp`: "
            ),
            "{}",
            failed[0]
        );
    }

    #[test]
    fn the_filter_selects_by_name_or_file_and_name() {
        let (policies, suites) = (policies(), suites());
        let by_name = run(&policies, &suites, SystemTime::UNIX_EPOCH, Some("expired"));
        assert_eq!(by_name.cases.len(), 1);
        let by_file = run(
            &policies,
            &suites,
            SystemTime::UNIX_EPOCH,
            Some("t.test.yaml: viewers"),
        );
        assert_eq!(by_file.cases[0].name, "viewers may not answer");
        assert!(
            run(&policies, &suites, SystemTime::UNIX_EPOCH, Some("nothing"))
                .cases
                .is_empty()
        );
    }

    #[test]
    fn coverage_counts_matched_operations_and_decisive_top_level_rules() {
        let report = run(&policies(), &suites(), SystemTime::UNIX_EPOCH, None);
        let coverage = &report.coverage;
        let unmatched: Vec<String> = coverage
            .unmatched_operations
            .iter()
            .map(|o| o.operation.to_string())
            .collect();
        assert!(!unmatched.contains(&"leaderboard".to_owned()));
        assert!(!unmatched.contains(&"submit-answer".to_owned()));
        assert!(unmatched.contains(&"browse-memes".to_owned()));
        let undecided: Vec<String> = coverage
            .undecisive_rules
            .iter()
            .filter(|r| &*r.operation == "submit-answer")
            .map(ToString::to_string)
            .collect();
        assert_eq!(undecided.len(), 3, "{undecided:?}");
        assert!(
            undecided[0].starts_with(
                "meme-game/submit-answer: rule \"the token was issued to a user\" (policies/meme-game.yaml:"
            ),
            "{undecided:?}"
        );
        assert!(!undecided.iter().any(|r| r.contains("only players")));
    }

    #[test]
    fn report_lines_stay_on_one_line() {
        assert_eq!(one_line("a\nb\u{7}c"), "a\\nb\\u{7}c");
    }
}
