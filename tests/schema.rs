//! `portcullis schema` against the decoder: the JSON Schema it prints accepts every shipped and
//! fixture policy, and refuses the mistakes that `portcullis check` refuses.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use portcullis::policy::yaml::{parse_documents, to_json};
use serde_json::Value;

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs")
}

/// The schema as `portcullis schema` prints it.
fn schema() -> Value {
    let output = portcullis(&["schema"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the schema is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft202012::new(&schema()).expect("the schema compiles")
}

/// Every problem the schema finds in a document, with where it is.
fn schema_errors(validator: &jsonschema::Validator, document: &Value) -> Vec<String> {
    validator
        .iter_errors(document)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect()
}

/// The documents of a policy file, as JSON, read the way the decoder reads them.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    parse_documents(&text)
        .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()))
        .iter()
        .map(to_json)
        .collect()
}

/// The policy files of a directory, as `portcullis` picks them (test suites left out).
fn policy_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && portcullis::policy::is_policy_file(p))
        .collect();
    files.sort();
    files
}

#[test]
fn the_schema_is_a_draft_2020_12_schema_of_a_service() {
    let schema = schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    jsonschema::draft202012::meta::validate(&schema).expect("a valid draft 2020-12 schema");
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["additionalProperties"], false);
    let mut required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort_unstable();
    assert_eq!(required, ["baseUrls", "operations", "service", "token"]);
    // Editors show descriptions on hover: every property has one.
    for (name, property) in schema["properties"].as_object().unwrap() {
        assert!(property["description"].is_string(), "{name}");
    }
}

#[test]
fn every_shipped_and_fixture_policy_is_valid() {
    let validator = validator();
    let mut files = policy_files("policies");
    for shipped in ["meme-game.yaml", "partners.yaml"] {
        assert!(files.iter().any(|f| f.ends_with(shipped)), "{files:?}");
    }
    let fixtures = policy_files("tests/fixtures/policies");
    assert!(fixtures.iter().any(|p| p.extension().unwrap() == "json"));
    assert!(fixtures.iter().any(|p| p.extension().unwrap() == "yaml"));
    files.extend(fixtures);
    let mut checked = 0;
    for file in &files {
        for (i, document) in documents(file).iter().enumerate() {
            let errors = schema_errors(&validator, document);
            assert!(
                errors.is_empty(),
                "{} document {}:\n{}",
                file.display(),
                i + 1,
                errors.join("\n")
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} documents");
}

/// A valid service that uses every kind of rule; the cases below break it one way each.
const VALID: &str = r#"# yaml-language-server: $schema=../portcullis.schema.json
service: shop
description: A shop
baseUrls: [https://shop.test/api]
token:
  issuer: https://issuer.test
  audiences: [shop]
  algorithms: [RS256]
  leeway: 10s
  jwks: { file: keys/single.jwks.json }
upstreamHeaders:
  x-user-id: "{token.sub}"
unmatchedStatus: 404
operations:
  - name: orders
    methods: [GET]
    paths: ["/users/{userId}/orders", "/users/{userId}/orders/{orderId}"]
    rules:
      - description: customers
        groups: { anyOf: [customers] }
      - scopes: { allOf: ["orders:read"] }
      - claim: { name: sub, equals: "{path.userId}" }
      - any:
          - delegated: true
          - clientIp: { in: [10.0.0.0/8] }
      - not: { claim: { name: suspended, exists: true } }
    rateLimit: { key: subject, requests: 100, per: 1m }
"#;

/// `VALID` with `from` (which it contains) replaced by `to`.
fn broken(from: &str, to: &str) -> String {
    assert!(VALID.contains(from), "`{from}` is not in the valid policy");
    VALID.replacen(from, to, 1)
}

/// Whether `portcullis check` accepts a policy directory holding `text` and the key file.
fn check_accepts(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policies/keys/single.jwks.json"),
        dir.path().join("keys/single.jwks.json"),
    )
    .unwrap();
    std::fs::write(dir.path().join("shop.yaml"), text).unwrap();
    let output = portcullis(&["check", dir.path().to_str().unwrap()]);
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    match output.status.code() {
        Some(0) => (true, printed),
        Some(1) => (false, printed),
        other => panic!("check exited with {other:?}: {printed}"),
    }
}

#[test]
fn the_valid_policy_is_valid_for_both() {
    let validator = validator();
    let documents = parse_documents(VALID).unwrap();
    assert_eq!(schema_errors(&validator, &to_json(&documents[0])), [""; 0]);
    let (accepted, printed) = check_accepts(VALID);
    assert!(accepted, "{printed}");
}

#[test]
fn what_check_refuses_the_schema_refuses() {
    let validator = validator();
    let cases = [
        (
            "an unknown top-level key",
            broken("unmatchedStatus: 404", "unmatchedStatus: 404\ncolour: blue"),
        ),
        (
            "a misspelt operation key",
            broken("    paths: [", "    pathz: ["),
        ),
        (
            "a rule with two conditions",
            broken(
                "      - scopes: { allOf: [\"orders:read\"] }",
                "      - scopes: { allOf: [\"orders:read\"] }\n        delegated: true",
            ),
        ),
        (
            "an unknown algorithm",
            broken("algorithms: [RS256]", "algorithms: [RS256, XS256]"),
        ),
        (
            "the algorithm none",
            broken("algorithms: [RS256]", "algorithms: [RS256, none]"),
        ),
        (
            "an unsupported unmatchedStatus",
            broken("unmatchedStatus: 404", "unmatchedStatus: 200"),
        ),
        (
            "a service name with upper case",
            broken("service: shop", "service: Shop"),
        ),
        (
            "groups with neither anyOf nor allOf",
            broken(
                "groups: { anyOf: [customers] }",
                "groups: { oneOf: [customers] }",
            ),
        ),
        (
            "groups with nothing",
            broken("groups: { anyOf: [customers] }", "groups: {}"),
        ),
        (
            "a claim with no test",
            broken(
                "claim: { name: suspended, exists: true }",
                "claim: { name: suspended }",
            ),
        ),
        (
            "a claim with two tests",
            broken(
                "claim: { name: suspended, exists: true }",
                "claim: { name: suspended, exists: true, equals: \"yes\" }",
            ),
        ),
        (
            "a duration without a unit",
            broken("leeway: 10s", "leeway: 10"),
        ),
        (
            "two key sources",
            broken(
                "jwks: { file: keys/single.jwks.json }",
                "jwks: { file: keys/single.jwks.json, url: https://issuer.test/jwks }",
            ),
        ),
        (
            "a path template with `**` before the end",
            broken(
                "\"/users/{userId}/orders\",",
                "\"/users/{userId}/**/orders\",",
            ),
        ),
        (
            "a lower-case method",
            broken("methods: [GET]", "methods: [get]"),
        ),
        (
            "a rate limit by an unknown key",
            broken("key: subject, requests", "key: user, requests"),
        ),
        (
            "a rate limit of no requests",
            broken("requests: 100", "requests: 0"),
        ),
        ("a rate limit without a window", broken(", per: 1m }", " }")),
        (
            "a rate limit with an unknown key",
            broken("per: 1m }", "per: 1m, burst: 5 }"),
        ),
        (
            "a header that frames the request",
            broken("  x-user-id: \"{token.sub}\"", "  Host: \"{token.sub}\""),
        ),
    ];
    for (what, text) in &cases {
        let documents = parse_documents(text).unwrap_or_else(|e| panic!("{what}: {e:?}"));
        let errors = schema_errors(&validator, &to_json(&documents[0]));
        assert!(!errors.is_empty(), "the schema accepts {what}:\n{text}");
        let (accepted, printed) = check_accepts(text);
        assert!(!accepted, "check accepts {what}:\n{printed}");
    }
}
