//! The Sideband API's shared secrets: read from their file (one a line), kept as SHA-256
//! digests, checked in constant time, and read again when the file changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::http::{HeaderMap, HeaderName};

use super::SidebandConfig;
use crate::server::admin::digest;

/// How often the secret file is read again to pick up a rotation.
const SECRET_POLL: Duration = Duration::from_secs(1);

/// Why a call was refused before its body was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretDenial {
    /// No secret header.
    Required,
    /// A secret that is none of the configured ones.
    Invalid,
}

impl SecretDenial {
    pub fn code(self) -> &'static str {
        match self {
            SecretDenial::Required => "SECRET_REQUIRED",
            SecretDenial::Invalid => "SECRET_INVALID",
        }
    }
}

/// The accepted secrets (as SHA-256 digests, never the secrets themselves), re-read from
/// their file when it changes.
pub struct SidebandSecrets {
    header: HeaderName,
    file: PathBuf,
    digests: ArcSwap<Vec<[u8; 32]>>,
    /// The file's content last read, to notice a change (a digest, like the secrets).
    read: std::sync::Mutex<[u8; 32]>,
}

impl std::fmt::Debug for SidebandSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidebandSecrets")
            .field("header", &self.header)
            .field("file", &self.file)
            .field("secrets", &self.digests.load().len())
            .finish()
    }
}

/// The digests of the secrets in `text`: one a line, surrounding white space trimmed, blank
/// lines skipped. Fails when there is none.
fn parse_secrets(text: &[u8]) -> Result<Vec<[u8; 32]>, String> {
    let digests: Vec<[u8; 32]> = text
        .split(|b| *b == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|line| !line.is_empty())
        .map(digest)
        .collect();
    if digests.is_empty() {
        return Err("it holds no secret (one secret a line)".into());
    }
    Ok(digests)
}

impl SidebandSecrets {
    /// Fails when the file cannot be read or holds no secret.
    pub fn load(config: &SidebandConfig) -> Result<Self, String> {
        let file = &config.secret_file;
        let text = std::fs::read(file).map_err(|e| {
            format!(
                "cannot read the sideband secret file {}: {e}",
                file.display()
            )
        })?;
        let digests = parse_secrets(&text)
            .map_err(|e| format!("the sideband secret file {}: {e}", file.display()))?;
        Ok(Self {
            header: config.secret_header.clone(),
            file: file.clone(),
            digests: ArcSwap::from_pointee(digests),
            read: std::sync::Mutex::new(digest(&text)),
        })
    }

    /// The header that carries the secret.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// Checks the secret header of a call. Every configured secret is compared, in constant
    /// time, whichever matches: the time taken says nothing about the secrets.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), SecretDenial> {
        let presented = headers
            .get(&self.header)
            .map(|v| v.as_bytes().trim_ascii())
            .filter(|v| !v.is_empty())
            .ok_or(SecretDenial::Required)?;
        let presented = digest(presented);
        let mut matched = false;
        for digest in self.digests.load().iter() {
            matched |=
                aws_lc_rs::constant_time::verify_slices_are_equal(&presented, digest).is_ok();
        }
        if matched {
            Ok(())
        } else {
            Err(SecretDenial::Invalid)
        }
    }

    /// Reads the file again; a changed, usable one replaces the secrets. A file that cannot
    /// be read, or holds no secret, keeps the last good secrets (and is logged).
    fn reread(&self) {
        let path: &Path = &self.file;
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(file = %path.display(), "cannot read the sideband secret file ({e}); the last secrets read stay in force");
                return;
            }
        };
        let digest = digest(&text);
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        if *read == digest {
            return;
        }
        *read = digest;
        match parse_secrets(&text) {
            Ok(digests) => {
                let count = digests.len();
                self.digests.store(Arc::new(digests));
                tracing::info!(file = %path.display(), secrets = count, "sideband secrets reloaded");
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), "sideband secret file not used: {e}; the last secrets read stay in force");
            }
        }
    }

    /// Re-reads the secret file every second, for as long as the server runs.
    pub(crate) async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SECRET_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let secrets = self.clone();
            // File I/O off the request threads.
            let _ = tokio::task::spawn_blocking(move || secrets.reread()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn secrets_are_one_a_line_and_blank_lines_do_not_count() {
        assert_eq!(parse_secrets(b"a\n\n  b \r\n").unwrap().len(), 2);
        assert!(parse_secrets(b" \n\n").is_err());
    }

    #[test]
    fn any_configured_secret_is_accepted_in_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets");
        std::fs::write(&file, "old-secret\nnew-secret\n").unwrap();
        let secrets = SidebandSecrets::load(&SidebandConfig {
            secret_file: file,
            secret_header: HeaderName::from_static("client-token"),
        })
        .unwrap();
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("CLIENT-TOKEN", HeaderValue::from_str(value).unwrap());
            headers
        };
        assert_eq!(secrets.check(&with("old-secret")), Ok(()));
        assert_eq!(secrets.check(&with("new-secret")), Ok(()));
        assert_eq!(
            secrets.check(&with("new-secre")),
            Err(SecretDenial::Invalid)
        );
        assert_eq!(
            secrets.check(&HeaderMap::new()),
            Err(SecretDenial::Required)
        );
        assert!(!format!("{secrets:?}").contains("secret\""));
    }
}
