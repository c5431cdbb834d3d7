//! `portcullis test` as an operator runs it: the shipped suites pass and cover the shipped
//! policies; on the fixture suites (tests/fixtures/suites) failures, `--filter`, malformed
//! suites and coverage gaps are reported as documented.

use std::process::{Command, Output};

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Everything the command printed, for assertion messages.
fn shown(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The `N passed, N failed` summary, which is the last line of stdout.
fn counts(output: &Output) -> (usize, usize) {
    let out = stdout(output);
    let last = out.lines().last().unwrap_or_default();
    let numbers: Vec<usize> = last
        .strip_suffix(" failed")
        .and_then(|l| l.split_once(" passed, "))
        .map(|(p, f)| vec![p.parse().unwrap(), f.parse().unwrap()])
        .unwrap_or_else(|| panic!("no summary line in\n{}", shown(output)));
    (numbers[0], numbers[1])
}

const FIXTURES: &str = "tests/fixtures/suites";

#[test]
fn the_shipped_policies_pass_their_suites() {
    let output = portcullis(&["test", "policies"]);
    assert_eq!(output.status.code(), Some(0), "{}", shown(&output));
    let (passed, failed) = counts(&output);
    assert!(passed >= 20 && failed == 0, "{}", shown(&output));
    assert_eq!(stdout(&output).lines().count(), 1, "{}", shown(&output));
}

#[test]
fn the_shipped_suites_cover_every_operation_and_top_level_rule() {
    let output = portcullis(&["test", "--coverage", "policies"]);
    assert_eq!(output.status.code(), Some(0), "{}", shown(&output));
    let out = stdout(&output);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{}", shown(&output));
    // `coverage: 9 of 9 operations matched, 18 of 18 top-level rules decisive`
    let words: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(words[0], "coverage:", "{}", shown(&output));
    assert_eq!(words[1], words[3], "{}", shown(&output));
    assert_eq!(words[6], words[8], "{}", shown(&output));
}

#[test]
fn a_failing_case_is_one_line_naming_file_case_and_difference() {
    let output = portcullis(&["test", FIXTURES]);
    assert_eq!(output.status.code(), Some(1), "{}", shown(&output));
    assert_eq!(counts(&output), (7, 2), "{}", shown(&output));
    let out = stdout(&output);
    let failures: Vec<&str> = out.lines().filter(|l| l.contains(": case ")).collect();
    assert_eq!(failures.len(), 2, "{}", shown(&output));
    assert!(
        failures[0].starts_with(
            "tests/fixtures/suites/shop.test.yaml:39: case \"an expired token is wrongly expected to be forbidden\": expected status 403, got 401 (TOKEN_EXPIRED) — decided by the token check of `token.exp`"
        ),
        "{}",
        shown(&output)
    );
    assert!(
        failures[1].starts_with(
            "tests/fixtures/suites/shop.test.yaml:44: case \"support without the scope is wrongly expected to fail the group rule\": expected rule \"support staff only\", got rule \"with the cancel scope\" — decided by rule \"with the cancel scope\" (tests/fixtures/suites/shop.yaml:23)"
        ),
        "{}",
        shown(&output)
    );
}

#[test]
fn the_filter_selects_cases_by_name_or_by_file_and_name() {
    let output = portcullis(&["test", FIXTURES, "--filter", "expired"]);
    assert_eq!(output.status.code(), Some(1), "{}", shown(&output));
    assert_eq!(counts(&output), (0, 1), "{}", shown(&output));

    let output = portcullis(&[
        "test",
        FIXTURES,
        "--filter",
        "shop.test.yaml: customers list",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", shown(&output));
    assert_eq!(counts(&output), (3, 0), "{}", shown(&output));

    let output = portcullis(&["test", FIXTURES, "--filter", "no such case"]);
    assert_eq!(output.status.code(), Some(1), "{}", shown(&output));
    assert_eq!(counts(&output), (0, 0), "{}", shown(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no case matches --filter"),
        "{}",
        shown(&output)
    );
}

#[test]
fn one_suite_file_can_be_run_with_the_policies_beside_it() {
    let output = portcullis(&["test", "policies/partners.test.yaml"]);
    assert_eq!(output.status.code(), Some(0), "{}", shown(&output));
    assert!(counts(&output).0 >= 20, "{}", shown(&output));
}

#[test]
fn malformed_suites_are_refused_with_file_line_and_column() {
    let output = portcullis(&[
        "test",
        "--policies",
        FIXTURES,
        "tests/fixtures/suites/malformed",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", shown(&output));
    let err = String::from_utf8_lossy(&output.stderr);
    for want in [
        "tests/fixtures/suites/malformed/typo.test.yaml:8:28: unknown key `detial` in `expect`",
        "help: did you mean `detail`?",
        "tests/fixtures/suites/malformed/bad-time.test.yaml:1:6: `now` `21/11/2026 10:00` is not an RFC 3339 time",
    ] {
        assert!(
            err.contains(want),
            "missing {want:?} in\n{}",
            shown(&output)
        );
    }
    assert!(!stdout(&output).contains("passed"), "{}", shown(&output));
}

#[test]
fn a_directory_without_policies_or_suites_cannot_be_tested() {
    let empty = tempfile::tempdir().unwrap();
    let output = portcullis(&["test", empty.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", shown(&output));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("no test suites"), "{}", shown(&output));
    assert!(err.contains("no policy files"), "{}", shown(&output));
}

#[test]
fn coverage_lists_the_operation_and_the_rule_no_case_exercises() {
    let output = portcullis(&["test", "--coverage", FIXTURES]);
    assert_eq!(output.status.code(), Some(1), "{}", shown(&output));
    let out = stdout(&output);
    for want in [
        "operations no case matched:\n  shop/refunds (tests/fixtures/suites/shop.yaml:25)\n",
        "top-level rules that decided no case:\n  shop/cancel-order: rule \"support staff only\" (tests/fixtures/suites/shop.yaml:21)\n",
        "coverage: 3 of 4 operations matched, 3 of 4 top-level rules decisive\n",
    ] {
        assert!(
            out.contains(want),
            "missing {want:?} in\n{}",
            shown(&output)
        );
    }
    assert!(out.ends_with("7 passed, 2 failed\n"), "{}", shown(&output));
}
