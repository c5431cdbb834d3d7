//! Policy test suites: requests with the decisions expected of them, run against a policy set.
//!
//! Suites are YAML (or JSON) files beside the policies, `*.test.yaml`, `*.test.yml` or
//! `*.test.json`. [`parse_suite`] decodes one file's text (key files are read through a
//! callback) and [`load_suites`] is the thin wrapper that reads files; [`run`] decides every
//! case with the real [`Engine`](crate::Engine) against a policy set and a clock, and does no
//! I/O. Its [`Report`] lists what differed for each case and, for coverage, the operations no
//! case matched and the top-level rules no case saw decide.
//!
//! ```yaml
//! keys:                      # signing keys; paths relative to this file
//!   dev: { file: keys/meme-game.dev-key.pem, kid: meme-game-dev-rsa-1 }
//! now: 2026-11-21T10:00:00Z  # optional fixed clock
//! defaults:
//!   baseUrl: https://localhost:8443/meme-game/api/v1
//!   token: { key: dev, claims: { iss: https://auth.example.com, aud: meme-game, exp: +1h } }
//! cases:
//!   - name: a viewer may not answer
//!     request: POST /users/user.0/answers
//!     token: { claims: { sub: user.0, groups: [viewers] } }
//!     expect: { status: 403, detail: GROUP_REQUIRED, rule: only players }
//! ```

mod decode;
mod expect;
mod run;
mod token;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

pub use self::run::{CaseReport, Coverage, Report, UncoveredOperation, UncoveredRule, run};
use crate::policy::{MAX_POLICY_FILE, PolicyError, PolicyErrors, SourceFile};

/// One suite: a document of a suite file.
#[derive(Debug)]
pub struct Suite {
    /// The file, as shown in reports.
    pub file: Arc<str>,
    /// The suite's fixed clock, if it has one.
    pub now: Option<SystemTime>,
    pub cases: Vec<Case>,
}

/// One request and what its decision must be.
#[derive(Debug)]
pub struct Case {
    pub name: String,
    /// Where the case starts in its file.
    pub line: u32,
    pub(crate) request: Request,
    pub(crate) token: TokenSpec,
    pub(crate) expect: expect::Expectation,
}

#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub client: Option<IpAddr>,
}

/// The bearer token a case sends.
#[derive(Debug, Clone)]
pub(crate) enum TokenSpec {
    None,
    /// Sent as written.
    Raw(String),
    /// Signed when the case runs, with times relative to the suite's clock.
    Signed(token::TokenTemplate),
}

/// Whether `path` names a test suite: `*.test.yaml`, `*.test.yml` or `*.test.json`.
pub fn is_suite_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|name| {
            !name.starts_with('.')
                && [".test.yaml", ".test.yml", ".test.json"]
                    .iter()
                    .any(|ext| name.ends_with(ext))
        })
}

/// Decodes the suites of one file; key files named in it are read through `read_file`, with
/// paths relative to the file's directory.
///
/// Fails with every problem of the file (`file:line:column`, what is wrong, how to fix it):
/// syntax, unknown or missing keys, values of the wrong kind, bad times, unusable keys.
pub fn parse_suite(
    source: &SourceFile,
    read_file: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
) -> Result<Vec<Suite>, PolicyErrors> {
    let mut problems = Vec::new();
    let suites = decode::decode_file(source, read_file, &mut problems);
    problems.sort_by_key(|p| p.pos);
    if problems.is_empty() {
        Ok(suites)
    } else {
        Err(PolicyErrors(problems))
    }
}

/// Reads and decodes the suite files directly in `path` (a directory), or the one suite
/// file `path` names.
///
/// Fails with every problem of every file; a directory without suite files, and a file that
/// is not named as a suite, are errors.
pub fn load_suites(path: &Path) -> Result<Vec<Suite>, PolicyErrors> {
    let paths: Vec<PathBuf> = if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| {
            PolicyErrors(vec![PolicyError::io(
                path,
                format!("cannot read the directory: {e}"),
            )])
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| is_suite_file(p) && p.is_file())
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(PolicyErrors(vec![PolicyError {
                help: Some("write cases in a `NAME.test.yaml` file beside the policies".to_owned()),
                ..PolicyError::io(
                    path,
                    "no test suites (`*.test.yaml`, `*.test.yml`, `*.test.json`) in this directory",
                )
            }]));
        }
        paths
    } else if is_suite_file(path) || !path.exists() {
        vec![path.to_owned()]
    } else {
        return Err(PolicyErrors(vec![PolicyError {
            help: Some("name test suites `NAME.test.yaml`; policies are not test suites".into()),
            ..PolicyError::io(
                path,
                "not a test suite file (`*.test.yaml`, `*.test.yml`, `*.test.json`)",
            )
        }]));
    };
    let mut suites = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        let text = match read_text(&path, MAX_POLICY_FILE) {
            Ok(text) => text,
            Err(message) => {
                problems.push(PolicyError::io(&path, message));
                continue;
            }
        };
        let source = SourceFile { path, text };
        let read_key = |p: &Path| read_bytes(p, MAX_KEY_FILE);
        match parse_suite(&source, &read_key) {
            Ok(mut more) => suites.append(&mut more),
            Err(PolicyErrors(mut more)) => problems.append(&mut more),
        }
    }
    if problems.is_empty() {
        Ok(suites)
    } else {
        Err(PolicyErrors(problems))
    }
}

/// Largest key file read.
const MAX_KEY_FILE: u64 = 1024 * 1024;

use crate::policy::read_limited as read_bytes;

fn read_text(path: &Path, max: u64) -> Result<String, String> {
    let bytes = read_bytes(path, max).map_err(|e| format!("cannot read: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "the file is not UTF-8 text".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_files_are_told_from_policies() {
        for yes in ["a.test.yaml", "dir/b.test.yml", "c.test.json"] {
            assert!(is_suite_file(Path::new(yes)), "{yes}");
        }
        for no in [
            "a.yaml",
            "test.yaml",
            ".x.test.yaml",
            "a.test.yaml.bak",
            "keys",
        ] {
            assert!(!is_suite_file(Path::new(no)), "{no}");
        }
    }
}
