//! Value templates: literal text with `{path.name}` and `{token.claim}` references, used by
//! claim rules and upstream headers. `{{` and `}}` write literal braces.

use serde_json::Value;

use super::scalar_text;
use crate::token::{ClaimPath, VerifiedToken};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    PathParam(Box<str>),
    Claim(ClaimPath),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    source: Box<str>,
}

impl Template {
    /// Parses a template; fails with a message naming the bad reference.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            literal.push_str(&rest[..i]);
            let tail = &rest[i..];
            if let Some(after) = tail.strip_prefix("{{") {
                literal.push('{');
                rest = after;
                continue;
            }
            if let Some(after) = tail.strip_prefix("}}") {
                literal.push('}');
                rest = after;
                continue;
            }
            if tail.starts_with('}') {
                return Err("a `}` without its `{`; write `}}` for a literal brace".into());
            }
            let close = tail
                .find('}')
                .ok_or("a `{` without its `}`; write `{{` for a literal brace")?;
            let reference = &tail[1..close];
            let part = if let Some(name) = reference.strip_prefix("path.") {
                if !is_identifier(name) {
                    return Err(format!(
                        "`{{{reference}}}` is not a valid path parameter reference"
                    ));
                }
                Part::PathParam(name.into())
            } else if let Some(name) = reference.strip_prefix("token.") {
                if name.is_empty() {
                    return Err("`{token.}` names no claim".into());
                }
                Part::Claim(ClaimPath::new(name))
            } else {
                return Err(format!(
                    "unknown reference `{{{reference}}}`; use `{{path.<parameter>}}` or `{{token.<claim>}}`"
                ));
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(part);
            rest = &tail[close + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() || parts.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self {
            parts,
            source: text.into(),
        })
    }

    /// The text as written in the policy.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The value when the template references nothing.
    pub fn literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// The claims the template reads.
    pub fn claims(&self) -> impl Iterator<Item = &ClaimPath> {
        self.parts.iter().filter_map(|p| match p {
            Part::Claim(claim) => Some(claim),
            _ => None,
        })
    }

    pub fn path_params(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::PathParam(name) => Some(&**name),
            _ => None,
        })
    }

    /// The text with references filled in; `None` when a referenced value is missing or is
    /// not a scalar.
    pub fn render(&self, token: &VerifiedToken, params: &[(Box<str>, String)]) -> Option<String> {
        if let Some(literal) = self.literal() {
            return Some(literal.to_owned());
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::PathParam(name) => {
                    out.push_str(&params.iter().find(|(n, _)| n == name)?.1);
                }
                Part::Claim(claim) => out.push_str(&scalar_text(claim.lookup(&token.claims)?)?),
            }
        }
        Some(out)
    }

    /// Like [`Template::render`] for header values: list claims are joined with commas and
    /// missing values are empty.
    pub fn render_header(&self, token: &VerifiedToken) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::PathParam(_) => {}
                Part::Claim(claim) => match claim.lookup(&token.claims) {
                    // Written in place, not joined: it is on every allowed request's path.
                    Some(Value::Array(items)) => {
                        let mut texts = items.iter().filter_map(scalar_text);
                        if let Some(first) = texts.next() {
                            out.push_str(&first);
                        }
                        for text in texts {
                            out.push(',');
                            out.push_str(&text);
                        }
                    }
                    Some(v) => out.push_str(&scalar_text(v).unwrap_or_default()),
                    None => {}
                },
            }
        }
        out
    }
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(claims: Value) -> VerifiedToken {
        VerifiedToken::of_claims(claims)
    }

    #[test]
    fn references_are_filled_in() {
        let t = Template::parse("user:{token.sub}/{path.id}{{x}}").unwrap();
        let token = token(serde_json::json!({"sub": "u1", "groups": ["a", "b"], "n": 7}));
        let params = [("id".into(), "42".to_owned())];
        assert_eq!(t.render(&token, &params).as_deref(), Some("user:u1/42{x}"));
        assert_eq!(t.path_params().collect::<Vec<_>>(), vec!["id"]);
        assert_eq!(
            Template::parse("{token.n}")
                .unwrap()
                .render(&token, &[])
                .as_deref(),
            Some("7")
        );
        assert_eq!(
            Template::parse("{token.missing}")
                .unwrap()
                .render(&token, &[]),
            None
        );
        assert_eq!(
            Template::parse("{token.groups}")
                .unwrap()
                .render(&token, &[]),
            None
        );
        assert_eq!(
            Template::parse("{token.groups}")
                .unwrap()
                .render_header(&token),
            "a,b"
        );
        // Lists keep their scalars only, numbers and booleans as JSON writes them.
        let mixed = self::token(serde_json::json!({"l": [{"x": 1}, "a", 2.5, [3], true, null]}));
        assert_eq!(
            Template::parse("<{token.l}>")
                .unwrap()
                .render_header(&mixed),
            "<a,2.5,true>"
        );
        let none = self::token(serde_json::json!({"l": [{"x": 1}], "e": []}));
        assert_eq!(
            Template::parse("{token.l}|{token.e}|{token.missing}")
                .unwrap()
                .render_header(&none),
            "||"
        );
        assert_eq!(Template::parse("plain").unwrap().literal(), Some("plain"));
        assert_eq!(Template::parse("").unwrap().literal(), Some(""));
    }

    #[test]
    fn bad_references_are_refused() {
        assert!(
            Template::parse("{user.x}")
                .unwrap_err()
                .contains("unknown reference")
        );
        assert!(Template::parse("{path.}").is_err());
        assert!(Template::parse("{token.sub").is_err());
        assert!(Template::parse("a}b").is_err());
    }
}
