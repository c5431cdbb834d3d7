//! Suite files decoded from the position-keeping YAML tree with the policy decoder's helpers:
//! every problem is reported at its place and decoding goes on, and an unknown key is an
//! error, so that a typo never silently drops a check. The file and its suites are decoded
//! here; signing keys in `key.rs`, defaults, tokens and requests in `request.rs`, cases and
//! their expectations in `case.rs`.

mod case;
mod key;
mod request;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;

use self::case::decode_case;
use self::key::decode_keys;
use self::request::decode_defaults;
use super::Suite;
use super::token::{ClaimValue, Overrides, SigningKey};
use crate::policy::err::{ErrorKind, Errors};
use crate::policy::yaml::{self, Key, Node, NodeKind, Pos};
use crate::policy::{PolicyError, SourceFile};

const ALGORITHMS: &str =
    "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384 or HS512";
const TIME_HELP: &str = "write a time relative to the suite's clock (`+1h`, `-5m`, `now`), an RFC 3339 time (`2026-11-21T10:00:00Z`) or Unix seconds";

struct Ctx<'a> {
    dir: &'a Path,
    read_file: &'a dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
}

/// The keys a suite declares by name; `None` for a key whose declaration is broken (already
/// reported), so that its uses are not reported again.
type Keys = Vec<(String, Option<Arc<SigningKey>>)>;

#[derive(Debug, Clone)]
enum KeyRef {
    Unset,
    Broken,
    Key(Arc<SigningKey>),
}

/// A token as a suite's defaults or a case write it, before the two are merged.
#[derive(Debug, Clone)]
struct TokenDraft {
    key: KeyRef,
    header: Overrides<Value>,
    claims: Overrides<ClaimValue>,
}

#[derive(Debug, Default)]
struct Defaults {
    base_url: Option<String>,
    headers: Vec<(String, Vec<String>)>,
    client: Option<IpAddr>,
    token: Option<TokenDraft>,
}

pub(super) fn decode_file(
    source: &SourceFile,
    read_file: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    problems: &mut Vec<PolicyError>,
) -> Vec<Suite> {
    let file = source.path.display().to_string();
    let shown: Arc<str> = file.as_str().into();
    let mut errs = Errors {
        file: &file,
        list: problems,
    };
    let documents = match yaml::parse_documents(&source.text) {
        Ok(docs) => docs,
        Err(e) => {
            errs.push(e.pos, ErrorKind::Syntax, e.message, e.help);
            return Vec::new();
        }
    };
    if documents.is_empty() {
        errs.push(
            Pos { line: 1, column: 1 },
            ErrorKind::MissingKey,
            "the file holds no test suite",
            "write a mapping with `cases:`; see `portcullis test --help`",
        );
        return Vec::new();
    }
    let ctx = Ctx {
        dir: source.path.parent().unwrap_or(Path::new(".")),
        read_file,
    };
    let mut names: Vec<(String, u32)> = Vec::new();
    documents
        .iter()
        .filter_map(|doc| decode_suite(doc, &shown, &mut errs, &ctx, &mut names))
        .collect()
}

fn decode_suite(
    doc: &Node,
    file: &Arc<str>,
    errs: &mut Errors<'_>,
    ctx: &Ctx<'_>,
    names: &mut Vec<(String, u32)>,
) -> Option<Suite> {
    let map = errs.map(doc, "a test suite", &["keys", "now", "defaults", "cases"])?;
    let keys = present(map.get("keys"))
        .map(|n| decode_keys(n, errs, ctx))
        .unwrap_or_default();
    let now = present(map.get("now")).and_then(|n| decode_now(n, errs));
    let defaults = present(map.get("defaults"))
        .map(|n| decode_defaults(n, &keys, errs))
        .unwrap_or_default();
    let cases = errs.required(
        &map,
        "cases",
        "a test suite",
        "list the cases: `cases: [{ name: …, request: …, expect: … }]`",
    )?;
    let items = errs.seq(cases, "`cases`")?;
    if items.is_empty() {
        errs.push(
            cases.pos,
            ErrorKind::InvalidValue,
            "`cases` is empty",
            "add at least one case",
        );
    }
    let cases = items
        .iter()
        .filter_map(|item| decode_case(item, &keys, &defaults, errs, names))
        .collect();
    Some(Suite {
        file: file.clone(),
        now,
        cases,
    })
}

fn present(node: Option<&Node>) -> Option<&Node> {
    node.filter(|n| !n.is_null())
}

/// The entries of a mapping whose keys are names of the user's choice.
fn entries<'n>(node: &'n Node, what: &str, errs: &mut Errors<'_>) -> Option<&'n [(Key, Node)]> {
    match &node.kind {
        NodeKind::Map(entries) => Some(entries),
        _ => {
            errs.push(
                node.pos,
                ErrorKind::WrongType,
                format!("{what} must be a mapping, not {}", node.kind_name()),
                "",
            );
            None
        }
    }
}

fn decode_now(node: &Node, errs: &mut Errors<'_>) -> Option<SystemTime> {
    let text = errs.string(node, "`now`")?;
    match humantime::parse_rfc3339_weak(text.trim()) {
        Ok(t) => Some(t),
        Err(_) => {
            errs.push(
                node.pos,
                ErrorKind::InvalidValue,
                format!("`now` `{text}` is not an RFC 3339 time"),
                "write a UTC time such as `2026-11-21T10:00:00Z`, or leave `now` out to use the real clock",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use crate::decision::Outcome;
    use crate::suite::token::TokenTemplate;
    use crate::suite::{Case, TokenSpec};

    fn parse(text: &str) -> Result<Vec<Suite>, String> {
        let source = SourceFile {
            path: PathBuf::from("policies/x.test.yaml"),
            text: text.to_owned(),
        };
        let read = |p: &Path| std::fs::read(p);
        super::super::parse_suite(&source, &read).map_err(|e| e.to_string())
    }

    const HEAD: &str = "keys:\n  hs: { secret: 0123456789abcdef0123456789abcdef }\ndefaults:\n  baseUrl: https://h/api/\n  token: { claims: { iss: i, aud: a, exp: +1h, sub: u } }\n";

    fn template(case: &Case) -> &TokenTemplate {
        match &case.token {
            TokenSpec::Signed(t) => t,
            other => panic!("not signed: {other:?}"),
        }
    }

    #[test]
    fn case_claims_merge_over_the_defaults() {
        let suites = parse(&format!(
            "{HEAD}cases:\n  - name: a\n    request: POST /x\n    token: {{ claims: {{ sub: null, groups: [g], exp: -5m }}, header: {{ kid: other, typ: null }} }}\n    expect: 401\n  - name: b\n    request: {{ url: https://other/y, headers: {{ X-A: [1, 2] }}, client: 10.0.0.1 }}\n    expect: allow\n  - name: c\n    request: /z\n    token: none\n    expect: deny\n"
        ))
        .unwrap();
        let cases = &suites[0].cases;
        let a = template(&cases[0]);
        let claims = a.claims_at(1000);
        assert_eq!(
            serde_json::Value::Object(claims),
            serde_json::json!({"iss": "i", "aud": "a", "exp": 700, "groups": ["g"]})
        );
        assert_eq!(
            serde_json::Value::Object(a.header.clone()),
            serde_json::json!({"alg": "HS256", "kid": "other"})
        );
        assert_eq!(
            (
                cases[0].request.method.as_str(),
                cases[0].request.url.as_str()
            ),
            ("POST", "https://h/api/x")
        );
        assert_eq!(cases[0].expect.status, Some(401));
        assert_eq!(template(&cases[1]).claims_at(0)["sub"], "u");
        assert_eq!(
            cases[1].request.headers,
            vec![
                ("x-a".to_owned(), "1".to_owned()),
                ("x-a".into(), "2".into())
            ]
        );
        assert_eq!(cases[1].request.client, "10.0.0.1".parse().ok());
        assert!(matches!(cases[2].token, TokenSpec::None));
        assert_eq!(cases[2].request.url, "https://h/api/z");
    }

    #[test]
    fn typos_and_bad_values_are_errors_with_their_place() {
        let err = parse(&format!(
            "{HEAD}cases:\n  - name: a\n    request: GET /x\n    expect: {{ stauts: 403 }}\n  - name: a\n    request: GET /x\n    token: {{ claims: {{ exp: +1 hour and a bit }} }}\n    expect: {{ status: 403, detail: GROUP_REQUIRD }}\n"
        ))
        .unwrap_err();
        assert!(
            err.contains("policies/x.test.yaml:9:15: unknown key `stauts` in `expect`"),
            "{err}"
        );
        assert!(err.contains("help: did you mean `status`?"), "{err}");
        assert!(
            err.contains("x.test.yaml:9:13: `expect` needs `outcome` or `status`"),
            "{err}"
        );
        assert!(
            err.contains(":10:11: the case name `a` is used twice"),
            "{err}"
        );
        assert!(
            err.contains(":12:29: claim `exp`: `+1 hour and a bit`"),
            "{err}"
        );
        assert!(
            err.contains(":13:36: unknown `detail` `GROUP_REQUIRD`"),
            "{err}"
        );
        assert!(err.contains("did you mean `GROUP_REQUIRED`?"), "{err}");
    }

    #[test]
    fn keys_and_tokens_that_cannot_work_are_refused() {
        let err = parse(
            "now: yesterday\nkeys:\n  a: { file: nope.pem }\n  b: { secret: s, alg: RS256 }\n  c: { secret: s, file: x }\ndefaults: { token: { key: d } }\ncases:\n  - { name: n, request: /x, expect: allow }\n",
        )
        .unwrap_err();
        for want in [
            "x.test.yaml:1:6: `now` `yesterday` is not an RFC 3339 time",
            "x.test.yaml:3:14: cannot read `nope.pem`",
            "x.test.yaml:4:24: key `b` cannot sign RS256",
            "x.test.yaml:5:6: key `c` needs exactly one of",
            "x.test.yaml:6:27: no key `d` is declared",
            "x.test.yaml:8:25: the URL `/x` is a path, but the suite has no `defaults.baseUrl`",
        ] {
            assert!(err.contains(want), "missing {want:?} in\n{err}");
        }
    }

    #[test]
    fn contradictory_and_empty_expectations_are_refused() {
        let err = parse(&format!(
            "{HEAD}cases:\n  - {{ name: a, request: /x, expect: {{ outcome: allow, status: 403 }} }}\n  - {{ name: b, request: /x, expect: {{ status: 200, rule: r }} }}\n  - {{ name: c, request: /x, expect: 42 }}\n  - {{ name: d, request: /x, expect: maybe }}\n"
        ))
        .unwrap_err();
        assert!(err.contains("says both allow and deny"), "{err}");
        assert!(err.contains("an allowed request has no `rule`"), "{err}");
        assert!(err.contains("`42` is not an HTTP status"), "{err}");
        assert!(
            err.contains("`maybe` is not an HTTP status, `allow` or `deny`"),
            "{err}"
        );
    }

    #[test]
    fn json_suites_read_like_yaml() {
        let suites = parse(
            r#"{"cases": [{"name": "n", "request": {"method": "PUT", "url": "https://h/x", "client": "::1"}, "token": {"raw": "a.b.c"}, "expect": {"outcome": "deny", "code": "UNAUTHORIZED"}}]}"#,
        )
        .unwrap();
        let case = &suites[0].cases[0];
        assert_eq!(case.request.method, "PUT");
        assert!(matches!(&case.token, TokenSpec::Raw(raw) if raw == "a.b.c"));
        assert_eq!(case.expect.outcome, Some(Outcome::Deny));
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        for text in [
            "",
            "[1, 2]",
            "cases: 3",
            "cases: []",
            "cases: [[]]",
            "cases: [{ name: [x], request: { url: [] }, token: 7, expect: { headers: [] } }]",
            "keys: [a]\ncases: [{ name: x, request: 'a b c', expect: { status: 99999999999 } }]",
            "keys: { k: { jwks: /dev/null } }\ncases: [{ name: x, request: GET http://h, expect: allow }]",
            "defaults: { token: { claims: { exp: '-99999999999999999999h' } } }\ncases: []",
            "a: !tag x",
            &"[".repeat(10_000),
        ] {
            assert!(parse(text).is_err(), "{text:?} was accepted");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any edit of a valid suite decodes or fails with errors, and runs without a panic.
        #[test]
        fn mangled_suites_never_panic(
            at in 0usize..1000,
            cut in 0usize..40,
            insert in "[ -~\n]{0,12}",
        ) {
            let text = format!(
                "{HEAD}now: 2026-11-21T10:00:00Z\ncases:\n  - name: a\n    request: {{ method: POST, url: /x, headers: {{ A: [1, 2] }}, client: 10.0.0.1 }}\n    token: {{ claims: {{ exp: -5m, nbf: +1m, groups: [g] }}, header: {{ kid: k }} }}\n    expect: {{ status: 403, detail: GROUP_REQUIRED, rule: r, headers: {{ allow: GET }} }}\n"
            );
            proptest::prop_assert!(parse(&text).is_ok());
            let mut at = at.min(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let end = (at + cut).min(text.len());
            let mangled = format!("{}{insert}{}", &text[..at], &text[end..]);
            if let Ok(suites) = parse(&mangled) {
                let policies =
                    crate::policy::load_dir("policies".as_ref(), &Default::default()).unwrap();
                super::super::run(&policies, &suites, SystemTime::now(), None);
            }
        }
    }
}
