//! The schema checked against the decoder: the same keys, algorithms, reserved headers and
//! value formats.

use std::collections::BTreeSet;
use std::path::Path;

use super::*;
use crate::policy::service::{ALGORITHMS, RESERVED_HEADERS};
use crate::policy::{PolicyOptions, SourceFile, compile};

fn properties(schema: &Value) -> BTreeSet<String> {
    schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .cloned()
        .collect()
}

#[test]
fn top_level_keys_are_the_service_keys() {
    let schema = policy_schema();
    let decoder: BTreeSet<String> = crate::policy::service::SERVICE_KEYS
        .iter()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(properties(&schema), decoder);
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
}

const KEYS: &str = include_str!("../../../tests/fixtures/policies/keys/single.jwks.json");

/// Every problem `compile` finds in one policy document.
fn problems(text: &str) -> Vec<crate::PolicyError> {
    let sources = [SourceFile {
        path: "policies/p.yaml".into(),
        text: text.to_owned(),
    }];
    let read = |_: &Path| Ok(KEYS.as_bytes().to_vec());
    match compile(&sources, &read, &PolicyOptions::default()) {
        Ok(_) => Vec::new(),
        Err(e) => e.0,
    }
}

/// A valid document with `{extra}` inserted at a place; `{rule}` is the operation's rule.
fn document(token_extra: &str, jwks_extra: &str, rule: &str) -> String {
    format!(
        "service: s
baseUrls: [https://s.test]
token:
  issuer: https://issuer.test
  audiences: [s]
  algorithms: [RS256]
  jwks: {{ file: keys/single.jwks.json{jwks_extra} }}
{token_extra}
operations:
  - name: op
    methods: [GET]
    paths: [\"/items/{{id}}\"]
    rules:
      - {rule}
"
    )
}

/// The keys the decoder allows at a place, from the help of an unknown key that is close to
/// none of them.
fn decoder_keys(text: &str) -> BTreeSet<String> {
    let problems = problems(text);
    let help = problems
        .iter()
        .find(|p| p.message.contains("unknown key `zzzzzzzzzzzzzzzz`"))
        .and_then(|p| p.help.clone())
        .unwrap_or_else(|| panic!("no unknown-key error in {problems:?}"));
    let list = help
        .strip_prefix("the keys allowed here are ")
        .expect("a list of keys");
    list.split(", ")
        .map(|k| k.trim_matches('`').to_owned())
        .collect()
}

/// The keys of an object schema that is one of several (`oneOf`): their union.
fn union_of_keys(schema: &Value) -> BTreeSet<String> {
    schema["oneOf"]
        .as_array()
        .expect("oneOf")
        .iter()
        .flat_map(|branch| {
            assert_eq!(branch["additionalProperties"], false, "{branch}");
            properties(branch)
        })
        .collect()
}

#[test]
fn nested_keys_are_the_decoders() {
    let schema = policy_schema();
    let defs = &schema["$defs"];
    let z = "zzzzzzzzzzzzzzzz";
    let token = decoder_keys(&document(&format!("  {z}: 1"), "", "delegated: true"));
    assert_eq!(properties(&defs["Token"]), token);
    let jwks = decoder_keys(&document("", &format!(", {z}: 1"), "delegated: true"));
    assert_eq!(union_of_keys(&defs["Jwks"]), jwks);
    let operation = decoder_keys(&document("", "", "delegated: true").replace(
        "    methods: [GET]",
        &format!("    methods: [GET]\n    {z}: 1"),
    ));
    assert_eq!(properties(&defs["Operation"]), operation);
    let rule = decoder_keys(&document("", "", &format!("{{ delegated: true, {z}: 1 }}")));
    assert_eq!(union_of_keys(&defs["Rule"]), rule);

    let condition = |name: &str| {
        defs["Rule"]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|b| b["properties"].get(name).cloned())
            .unwrap()
    };
    let claim = decoder_keys(&document(
        "",
        "",
        &format!("claim: {{ name: sub, exists: true, {z}: 1 }}"),
    ));
    assert_eq!(union_of_keys(&condition("claim")), claim);
    for set in ["groups", "scopes"] {
        let modes = decoder_keys(&document(
            "",
            "",
            &format!("{set}: {{ anyOf: [a], {z}: 1 }}"),
        ));
        assert_eq!(union_of_keys(&condition(set)), modes);
    }
    let client_ip = decoder_keys(&document(
        "",
        "",
        &format!("clientIp: {{ in: [10.0.0.0/8], {z}: 1 }}"),
    ));
    assert_eq!(properties(&condition("clientIp")), client_ip);
}

#[test]
fn algorithms_are_the_decoders() {
    let problems =
        problems(&document("", "", "delegated: true").replace("[RS256]", "[zzzzzzzzzzzz]"));
    let help = problems
        .iter()
        .find_map(|p| p.help.as_deref()?.strip_prefix("supported: "))
        .expect("the supported algorithms");
    assert_eq!(help.split(", ").collect::<Vec<_>>(), ALGORITHMS);
}

#[test]
fn reserved_headers_are_refused_by_the_decoder() {
    for header in RESERVED_HEADERS {
        let text = document(
            &format!("upstreamHeaders:\n  {header}: x"),
            "",
            "delegated: true",
        );
        assert!(
            problems(&text)
                .iter()
                .any(|p| p.message.contains("cannot be set upstream")),
            "{header}"
        );
    }
    let text = document("upstreamHeaders:\n  x-host: x", "", "delegated: true");
    assert_eq!(problems(&text), Vec::new());
}

/// Whether the schema and the decoder agree on each document: both accept or both refuse.
fn assert_agree(cases: &[(&str, String)]) {
    let schema = policy_schema();
    let validator = jsonschema::draft202012::new(&schema).expect("the schema compiles");
    let options = PolicyOptions {
        allow_insecure_loopback_jwks: true,
        ..PolicyOptions::default()
    };
    let read = |_: &Path| Ok(KEYS.as_bytes().to_vec());
    for (value, text) in cases {
        let docs = crate::policy::yaml::parse_documents(text)
            .unwrap_or_else(|e| panic!("`{value}` is not YAML: {e:?}"));
        let json = crate::policy::yaml::to_json(&docs[0]);
        let by_schema = validator.is_valid(&json);
        let sources = [SourceFile {
            path: "policies/p.yaml".into(),
            text: text.clone(),
        }];
        let by_decoder = compile(&sources, &read, &options);
        assert_eq!(
            by_schema,
            by_decoder.is_ok(),
            "`{value}`: schema {}, decoder {:?}",
            if by_schema { "accepts" } else { "refuses" },
            by_decoder.err().map(|e| e.to_string())
        );
    }
}

/// A document for each value, written where `{}` is in `place` (of `document(...)`).
fn cases(values: &[&'static str], make: impl Fn(&str) -> String) -> Vec<(&'static str, String)> {
    values.iter().map(|v| (*v, make(v))).collect()
}

fn with_rule(rule: &str) -> String {
    document("", "", rule)
}

#[test]
fn formats_agree_with_the_decoder() {
    let base = with_rule("delegated: true");
    assert_agree(&cases(
        &[
            "a",
            "meme-game",
            "a-",
            "a1-2",
            "007",
            "Meme",
            "-a",
            "a_b",
            "a.b",
            "''",
            "~",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ],
        |v| base.replace("service: s", &format!("service: {v}")),
    ));
    assert_agree(&cases(
        &[
            "30s", "5m", "0", "0s", "1m30s", "1m 30s", "30 s", " 30s", "1.5s", "2min", "3 mins",
            "250ms", "30", "s", "30S", "1x", "-1s", "''", "1.s", "true",
        ],
        |v| document(&format!("  leeway: {v}"), "", "delegated: true"),
    ));
    assert_agree(&cases(
        &[
            "https://a.test",
            "https://a.test/",
            "HTTPS://A.test:8443/x",
            "http://a.test:80",
            "https://a.test./x",
            "https://[::1]:8080/x",
            "https://a//b/",
            "https://a/.x/..y",
            "https://a/x;y",
            "ftp://a",
            "https://a/x?y",
            "https://a/x#y",
            "https://a/./x",
            "https://a/x/..",
            "https://a/x/.;y",
            "https://a/%20",
            "https://u@a/x",
            "https://",
            "https://a b",
            "a.test/x",
            "https://a:x/",
            "https://[zz]/",
            "https://a/x\\\\y",
            "https://a/x\\ty",
        ],
        |v| base.replace("[https://s.test]", &format!("[\"{v}\"]")),
    ));
    assert_agree(&cases(
        &[
            "GET",
            "PROPFIND",
            "get",
            "G3T",
            "''",
            "ABCDEFGHIJKLMNOPQRSTU",
            "[GET, GET]",
            "[]",
        ],
        |v| base.replace("[GET]", &format!("[{v}]")),
    ));
    assert_agree(&cases(
        &[
            "/",
            "/a",
            "/a/{id}",
            "/a/**",
            "/**",
            "//a//",
            "/{id}/.x/..y/...",
            "/a/ b",
            "/a/{id}/**",
            "a",
            "''",
            "/a/**/b",
            "/a/x{y}",
            "/a/{y}z",
            "/a/../b",
            "/a/./b",
            "/a/%20",
            "/a/*",
            "/{}",
            "/{a.b}",
            "/a?b",
            "/a#b",
            "/a\\\\b",
            "/a\\tb",
        ],
        |v| base.replace("\"/items/{id}\"", &format!("\"{v}\"")),
    ));
    assert_agree(&cases(
        &[
            "\"{path.id}\"",
            "\"x{token.sub}y\"",
            "\"{{literal}}\"",
            "\"a}}b{{\"",
            "42",
            "\"{token.a{b}\"",
            "\"{nope}\"",
            "\"{token.}\"",
            "\"}\"",
            "\"{\"",
            "\"{path.}\"",
            "\"{path.a b}\"",
            "\"{{token.x}\"",
        ],
        |v| with_rule(&format!("claim: {{ name: sub, equals: {v} }}")),
    ));
    assert_agree(&cases(
        &[
            "x-user-id: \"{token.sub}\"",
            "X-Tenant: t-{token.tenant}",
            "x-n: 7",
            "x-id: \"{path.id}\"",
            "x-bad: \"{x}\"",
            "Host: h",
            "CONTENT-LENGTH: 1",
            "x y: 1",
            "\"x:y\": 1",
            "x-empty: ~",
            "\"\": x",
        ],
        |v| document(&format!("upstreamHeaders:\n  {v}"), "", "delegated: true"),
    ));
    assert_agree(&cases(
        &[
            "10.0.0.0/8",
            "127.0.0.1",
            "\"::1\"",
            "\"2001:db8::/32\"",
            "localhost",
            "10.0.0.0/8/8",
        ],
        |v| with_rule(&format!("clientIp: {{ in: [{v}] }}")),
    ));
    assert_agree(&cases(
        &["[a]", "[a, b]", "a", "[\"a b\"]", "[a, a]", "[]", "[~]"],
        |v| with_rule(&format!("scopes: {{ allOf: {v} }}")),
    ));
    assert_agree(&cases(
        &[
            "url: https://auth.test/jwks",
            "url: https://auth.test/jwks, refresh: 1h",
            "url: http://127.0.0.1:9000/jwks",
            "url: \"http://[::1]/jwks\"",
            "url: http://LocalHost/jwks",
            "url: http://auth.test/jwks",
            "url: ftp://auth.test",
            "url: auth.test/jwks",
            "discovery: true",
            "discovery: true, refresh: 5m",
            "discovery: false",
            "file: keys/single.jwks.json, refresh: 5m",
            "file: k, url: https://auth.test/jwks",
            "refresh: 5m",
        ],
        |v| base.replace("file: keys/single.jwks.json", v),
    ));
    assert_agree(&cases(&["403", "404", "\"404\"", "200", "abc", "~"], |v| {
        document(&format!("unmatchedStatus: {v}"), "", "delegated: true")
    }));
    assert_agree(&cases(
        &[
            "delegated: false",
            "delegated: \"true\"",
            "delegated: yes",
            "{ description: d, delegated: true }",
            "{ description: ~, delegated: true }",
            "{}",
            "description: only",
            "any: []",
            "all: [{ delegated: true }]",
            "not: { delegated: true }",
            "not: []",
            "groups: {}",
            "groups: { anyOf: [a], allOf: [b] }",
            "claim: { name: sub }",
            "claim: { equals: x }",
            "claim: { name: sub, in: [a], exists: true }",
            "claim: { name: sub, exists: 1 }",
            "claim: { name: 5, in: [1, 2] }",
            "clientIp: {}",
            "clientIp: [10.0.0.0/8]",
        ],
        with_rule,
    ));
    let no_rules = base.replace("    rules:\n      - delegated: true\n", "    rules: []\n");
    assert!(no_rules.contains("rules: []"));
    let no_operations = format!(
        "{}operations: []\n",
        &base[..base.find("operations:").unwrap()]
    );
    assert_agree(&[("rules: []", no_rules), ("operations: []", no_operations)]);
}
