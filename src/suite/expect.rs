//! What a case expects of its decision, and the differences between the two in words.

use crate::decision::{Decision, Outcome, Step};

/// Codes of the error body (SPEC §3).
pub(crate) const BODY_CODES: &[&str] = &[
    "INVALID_REQUEST",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "NOT_FOUND",
    "METHOD_NOT_ALLOWED",
    "UNEXPECTED_ERROR",
];

/// The parts of a decision a case checks; what is not given is not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Expectation {
    pub outcome: Option<Outcome>,
    pub status: Option<u16>,
    /// The error body's `code`.
    pub code: Option<String>,
    /// The first (decisive) detail code of the error body.
    pub detail: Option<String>,
    /// The description of the top-level rule that decided the denial.
    pub rule: Option<String>,
    pub service: Option<String>,
    pub operation: Option<String>,
    /// Response headers (names lower-case) and their exact values.
    pub headers: Vec<(String, String)>,
    /// Headers added to the forwarded request on allow (names lower-case).
    pub upstream_headers: Vec<(String, String)>,
}

impl Expectation {
    /// One phrase per checked part that differs: `expected status 403, got 401 (TOKEN_EXPIRED)`.
    pub fn differences(&self, decision: &Decision) -> Vec<String> {
        let mut out = Vec::new();
        let detail = decision.detail_code();
        if let Some(want) = self.outcome
            && want != decision.outcome
        {
            out.push(format!(
                "expected outcome {}, got {}",
                want.as_str(),
                decision.outcome.as_str()
            ));
        }
        if let Some(want) = self.status
            && want != decision.status
        {
            out.push(format!(
                "expected status {want}, got {}{}",
                decision.status,
                detail.map(|d| format!(" ({d})")).unwrap_or_default()
            ));
        }
        let code = decision.body.as_ref().map(|b| b.code.as_ref());
        compare(&mut out, "code", self.code.as_deref(), code);
        compare(&mut out, "detail", self.detail.as_deref(), detail);
        if let Some(want) = &self.rule {
            let got = decisive_rule(decision);
            if got != Some(want.as_str()) {
                out.push(format!(
                    "expected rule {want:?}, got {}",
                    got.map_or_else(
                        || match decision.outcome {
                            Outcome::Allow => "no deciding rule (allowed)".to_owned(),
                            Outcome::Deny => "no deciding rule (denied before the rules)".into(),
                        },
                        |r| format!("rule {r:?}")
                    )
                ));
            }
        }
        compare(
            &mut out,
            "service",
            self.service.as_deref(),
            decision.service.as_deref(),
        );
        compare(
            &mut out,
            "operation",
            self.operation.as_deref(),
            decision.operation.as_deref(),
        );
        for (name, want) in &self.headers {
            header(&mut out, "header", name, want, decision.headers.get(name));
        }
        for (name, want) in &self.upstream_headers {
            header(
                &mut out,
                "upstream header",
                name,
                want,
                decision.upstream_headers.get(name),
            );
        }
        out
    }
}

/// The description of the top-level rule that decided a denial.
pub(crate) fn decisive_rule(decision: &Decision) -> Option<&str> {
    decision
        .decisive()
        .filter(|e| e.step == Step::Rule)
        .and_then(|e| e.rule.as_deref())
}

fn compare(out: &mut Vec<String>, what: &str, want: Option<&str>, got: Option<&str>) {
    if let Some(want) = want
        && got != Some(want)
    {
        out.push(format!(
            "expected {what} {want}, got {}",
            got.unwrap_or("none")
        ));
    }
}

fn header(out: &mut Vec<String>, what: &str, name: &str, want: &str, got: Option<&str>) {
    if got != Some(want) {
        out.push(match got {
            Some(got) => format!("expected {what} {name}: {want:?}, got {got:?}"),
            None => format!("expected {what} {name}: {want:?}, got no such header"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{DecisionRequest, Engine};
    use std::time::SystemTime;

    fn decision(url: &str, headers: &[(&str, &str)]) -> Decision {
        let policies = crate::policy::load_dir("policies".as_ref(), &Default::default()).unwrap();
        Engine::default().decide(
            &policies,
            &DecisionRequest {
                method: "GET",
                url,
                headers,
                client: None,
                client_cert: None,
            },
            SystemTime::now(),
        )
    }

    #[test]
    fn only_the_given_parts_are_compared() {
        let d = decision("https://localhost:8443/meme-game/api/v1/leaderboard", &[]);
        assert_eq!((d.status, d.detail_code()), (401, Some("REQUIRED_VALUE")));
        assert!(Expectation::default().differences(&d).is_empty());
        let matching = Expectation {
            outcome: Some(Outcome::Deny),
            status: Some(401),
            code: Some("UNAUTHORIZED".into()),
            detail: Some("REQUIRED_VALUE".into()),
            service: Some("meme-game".into()),
            headers: vec![(
                "www-authenticate".into(),
                "Bearer realm=\"meme-game\"".into(),
            )],
            ..Default::default()
        };
        assert_eq!(matching.differences(&d), Vec::<String>::new());
    }

    #[test]
    fn each_difference_is_one_phrase_with_what_was_got() {
        let d = decision("https://localhost:8443/meme-game/api/v1/leaderboard", &[]);
        let wrong = Expectation {
            outcome: Some(Outcome::Allow),
            status: Some(403),
            code: Some("FORBIDDEN".into()),
            detail: Some("GROUP_REQUIRED".into()),
            rule: Some("only players".into()),
            operation: Some("leaderboard".into()),
            headers: vec![("allow".into(), "GET".into())],
            upstream_headers: vec![("x-user-id".into(), "user.0".into())],
            ..Default::default()
        };
        assert_eq!(
            wrong.differences(&d),
            vec![
                "expected outcome allow, got deny",
                "expected status 403, got 401 (REQUIRED_VALUE)",
                "expected code FORBIDDEN, got UNAUTHORIZED",
                "expected detail GROUP_REQUIRED, got REQUIRED_VALUE",
                "expected rule \"only players\", got no deciding rule (denied before the rules)",
                "expected operation leaderboard, got none",
                "expected header allow: \"GET\", got no such header",
                "expected upstream header x-user-id: \"user.0\", got no such header",
            ]
        );
    }

    #[test]
    fn another_detail_is_named_as_got() {
        let d = decision("https://elsewhere.example/", &[]);
        assert_eq!(d.status, 404);
        let e = Expectation {
            status: Some(404),
            detail: Some("OPERATION_NOT_FOUND".into()),
            ..Default::default()
        };
        assert_eq!(
            e.differences(&d),
            vec!["expected detail OPERATION_NOT_FOUND, got NO_MATCHING_SERVICE"]
        );
    }
}
