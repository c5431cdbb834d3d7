//! The `portcullis` binary as an operator runs it: `check` on broken policy directories,
//! `token` + `decide` on the shipped example policies (the README's tour).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn fixture_keys() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policies/keys")
}

/// A policy directory with these files and the fixture key sets under `keys/`.
fn policy_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    for entry in std::fs::read_dir(fixture_keys()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(
            &path,
            dir.path().join("keys").join(path.file_name().unwrap()),
        )
        .unwrap();
    }
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    dir
}

/// A valid service document; `{extra}` lines are appended to its first operation.
fn service(name: &str, base_url: &str) -> String {
    format!(
        "service: {name}
baseUrls: [\"{base_url}\"]
token:
  issuer: https://issuer.test
  audiences: [{name}]
  algorithms: [RS256]
  jwks: {{ file: keys/single.jwks.json }}
operations:
  - name: read
    methods: [GET]
    paths: [\"/items/{{itemId}}\"]
"
    )
}

/// A broken policy directory and where `check` must point.
struct Broken {
    what: &'static str,
    files: Vec<(&'static str, String)>,
    file: &'static str,
    line: u32,
    contains: &'static str,
}

fn broken(
    what: &'static str,
    files: Vec<(&'static str, String)>,
    file: &'static str,
    line: u32,
    contains: &'static str,
) -> Broken {
    Broken {
        what,
        files,
        file,
        line,
        contains,
    }
}

fn broken_policies() -> Vec<Broken> {
    let base = service("one", "https://a.test/v1");
    vec![
        broken(
            "duplicate service names across files",
            vec![
                ("a.yaml", base.clone()),
                ("b.yaml", service("one", "https://b.test/v1")),
            ],
            "b.yaml",
            1,
            "service `one` is defined twice",
        ),
        broken(
            "the same base URL, spelled differently, in two services",
            vec![
                ("a.yaml", base.clone()),
                ("b.yaml", service("two", "HTTPS://A.test:443/v1/")),
            ],
            "b.yaml",
            2,
            "is already served by service `one`",
        ),
        broken(
            "an operation that can never match",
            vec![(
                "a.yaml",
                format!(
                    "{base}  - name: shadowed\n    methods: [GET]\n    paths: [\"/items/{{id}}\"]\n"
                ),
            )],
            "a.yaml",
            14,
            "operation `shadowed` can never match GET",
        ),
        broken(
            "a path parameter the paths do not have",
            vec![(
                "a.yaml",
                format!(
                    "{base}    rules:\n      - claim: {{ name: sub, equals: \"{{path.userId}}\" }}\n"
                ),
            )],
            "a.yaml",
            13,
            "`{path.userId}` is not a parameter",
        ),
        broken(
            "an unknown algorithm",
            vec![("a.yaml", base.replace("[RS256]", "[RS256, RS999]"))],
            "a.yaml",
            6,
            "unknown algorithm `RS999`",
        ),
        broken(
            "alg none in the allow-list",
            vec![("a.yaml", base.replace("[RS256]", "[none]"))],
            "a.yaml",
            6,
            "none",
        ),
        broken(
            "a bad duration",
            vec![(
                "a.yaml",
                base.replace("  algorithms", "  leeway: 30 parsecs\n  algorithms"),
            )],
            "a.yaml",
            6,
            "is not a duration",
        ),
        broken(
            "an unknown token binding",
            vec![(
                "a.yaml",
                base.replace("  algorithms", "  binding: sometimes\n  algorithms"),
            )],
            "a.yaml",
            6,
            "unknown `token.binding` `sometimes`",
        ),
        broken(
            "a DPoP window of zero",
            vec![(
                "a.yaml",
                base.replace("  algorithms", "  dpop: { window: 0s }\n  algorithms"),
            )],
            "a.yaml",
            6,
            "`token.dpop.window` is zero",
        ),
        broken(
            "a DPoP window over ten minutes",
            vec![(
                "a.yaml",
                base.replace("  algorithms", "  dpop: { window: 11m }\n  algorithms"),
            )],
            "a.yaml",
            6,
            "longer than 10m",
        ),
        broken(
            "a misspelt DPoP setting",
            vec![(
                "a.yaml",
                base.replace("  algorithms", "  dpop: { windw: 60s }\n  algorithms"),
            )],
            "a.yaml",
            6,
            "unknown key `windw` in `token.dpop`",
        ),
        broken(
            "a missing key file",
            vec![(
                "a.yaml",
                base.replace("keys/single.jwks.json", "keys/nowhere.json"),
            )],
            "a.yaml",
            7,
            "cannot read key file",
        ),
        broken(
            "a key file that is not a key set",
            vec![("a.yaml", base.replace("keys/single.jwks.json", "../a.yaml"))],
            "a.yaml",
            7,
            "key file",
        ),
        broken(
            "keys whose type fits none of the algorithms",
            vec![(
                "a.yaml",
                base.replace("keys/single.jwks.json", "keys/hs.jwks.json"),
            )],
            "a.yaml",
            7,
            "HS",
        ),
        broken(
            "an RSA key below 2048 bits",
            vec![(
                "a.yaml",
                base.replace("keys/single.jwks.json", "keys/weak.jwks.json"),
            )],
            "a.yaml",
            7,
            "2048",
        ),
        broken(
            "a misspelt key",
            vec![("a.yaml", base.replace("    paths:", "    pathz:"))],
            "a.yaml",
            11,
            "unknown key `pathz`",
        ),
        broken(
            "a rule with two conditions",
            vec![(
                "a.yaml",
                format!(
                    "{base}    rules:\n      - groups: {{ anyOf: [a] }}\n        delegated: true\n"
                ),
            )],
            "a.yaml",
            14,
            "has `groups` and `delegated`",
        ),
        broken(
            "a YAML syntax error",
            vec![("a.yaml", "service: [unclosed\n".to_owned())],
            "a.yaml",
            2,
            "YAML syntax error",
        ),
        broken(
            "an unmatchedStatus other than 403 or 404",
            vec![(
                "a.yaml",
                base.replace("operations:", "unmatchedStatus: 200\noperations:"),
            )],
            "a.yaml",
            8,
            "`unmatchedStatus` `200` is not supported",
        ),
    ]
}

#[test]
fn check_points_at_each_error_with_file_line_and_column() {
    let mut failures = Vec::new();
    for Broken {
        what,
        files,
        file,
        line,
        contains,
    } in broken_policies()
    {
        let files: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
        let dir = policy_dir(&files);
        let out = portcullis(&["check", dir.path().to_str().unwrap()]);
        let report = text(&out);
        let at = format!("{}:{line}:", dir.path().join(file).display());
        let pointed = report.lines().any(|l| {
            l.strip_prefix(&at).is_some_and(|rest| {
                // a column, then the message
                rest.split_once(": ")
                    .is_some_and(|(col, msg)| col.parse::<u32>().is_ok() && msg.contains(contains))
            })
        });
        if out.status.code() != Some(1) || !pointed || !report.contains("help: ") {
            failures.push(format!("{what}: exit {:?}, expected `{file}:{line}:<col>: …{contains}…` with help in:\n{report}", out.status.code()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn check_reports_every_error_of_a_directory_in_one_run() {
    let base = service("one", "https://a.test/v1");
    let dir = policy_dir(
        &[
            ("a.yaml", base.replace("[RS256]", "[RS999]")),
            ("b.yaml", service("one", "https://a.test/v1")),
            (
                "c.yaml",
                base.replace("service: one", "service: three")
                    .replace("    paths:", "    pathz:"),
            ),
        ]
        .iter()
        .map(|(n, c)| (*n, c.as_str()))
        .collect::<Vec<_>>(),
    );
    let out = portcullis(&["check", dir.path().to_str().unwrap()]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    for expected in [
        "unknown algorithm",
        "defined twice",
        "did you mean",
        "already served by service `one`",
    ] {
        assert!(
            report.contains(expected),
            "missing `{expected}` in:\n{report}"
        );
    }
    assert!(report.contains("5 errors"), "{report}");
}

#[test]
fn check_accepts_the_shipped_policies_and_the_fixtures() {
    for dir in ["policies", "tests/fixtures/policies"] {
        let out = portcullis(&["check", dir]);
        assert_eq!(out.status.code(), Some(0), "{dir}: {}", text(&out));
        assert!(text(&out).contains("valid"), "{}", text(&out));
    }
    let out = portcullis(&["check", "/nonexistent/portcullis-policies"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("cannot read the policy directory"),
        "{}",
        text(&out)
    );
}

const BASE: &str = "https://localhost:8443/meme-game/api/v1";

fn token(args: &[&str]) -> String {
    let out = portcullis(&[&["token"], args].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "{token}");
    token
}

fn decide(method: &str, url: &str, token: Option<&str>) -> (Option<i32>, Value) {
    let authorization = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec!["decide", "-X", method, "--url", url];
    if let Some(h) = &authorization {
        args.extend(["-H", h]);
    }
    let out = portcullis(&args);
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("decide prints JSON ({e}): {}", text(&out)));
    (out.status.code(), json)
}

#[test]
fn the_readme_tour_works_on_the_example_policies() {
    let player = token(&[
        "--sub",
        "user.0",
        "--groups",
        "players",
        "--scope",
        "answers:write",
    ]);
    let url = format!("{BASE}/users/user.0/answers");

    let (code, allow) = decide("POST", &url, Some(&player));
    assert_eq!(code, Some(0), "{allow}");
    assert_eq!(allow["outcome"], "allow");
    assert_eq!(allow["status"], 200);
    assert_eq!(allow["operation"], "submit-answer");
    assert!(allow["body"].is_null());
    assert!(
        !allow.to_string().contains(&player),
        "the decision shows the token"
    );

    let expired = token(&["--sub", "user.0", "--groups", "players", "--expired"]);
    let (code, deny) = decide("POST", &url, Some(&expired));
    assert_eq!(code, Some(1));
    assert_eq!(deny["status"], 401);
    assert_eq!(deny["body"]["details"][0]["code"], "TOKEN_EXPIRED");
    assert!(
        deny["headers"]["www-authenticate"]
            .as_str()
            .unwrap()
            .contains("invalid_token")
    );

    let (code, deny) = decide("GET", "https://localhost:8443/unknown/api", Some(&player));
    assert_eq!(code, Some(1));
    assert_eq!(deny["status"], 404);
    assert_eq!(deny["body"]["code"], "NOT_FOUND");

    let outsider = token(&["--sub", "user.0", "--scope", "answers:write"]);
    let (code, deny) = decide("POST", &url, Some(&outsider));
    assert_eq!(code, Some(1));
    assert_eq!(deny["status"], 403);
    assert_eq!(deny["body"]["details"][0]["code"], "GROUP_REQUIRED");

    let (code, deny) = decide("GET", &format!("{BASE}/leaderboard"), None);
    assert_eq!(code, Some(1));
    assert_eq!(deny["status"], 401);
    assert_eq!(
        deny["headers"]["www-authenticate"],
        "Bearer realm=\"meme-game\""
    );
}

#[test]
fn decide_exits_2_on_bad_arguments_and_broken_policies() {
    let out = portcullis(&["decide", "--url", "https://x.test/", "-H", "no colon here"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = portcullis(&[
        "decide",
        "--policies",
        "/nonexistent/portcullis",
        "--url",
        "https://x.test/",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = portcullis(&["decide", "--url", "https://x.test/", "--at", "yesterday"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn token_for_another_service_uses_its_settings() {
    let t = token(&[
        "--service",
        "partner-reports",
        "--groups",
        "report-readers",
        "--scope",
        "reports.read",
    ]);
    let payload = t.split('.').nth(1).unwrap();
    use base64::Engine as _;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert!(
        claims.get("sub").is_none(),
        "no --sub: a client-credentials token"
    );
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());
    let out = portcullis(&["token", "--service", "no-such-service"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out).contains("no-such-service"), "{}", text(&out));
}
