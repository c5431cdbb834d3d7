//! `portcullis dpop`: a DPoP proof (RFC 9449) for one request, made with a private key, so
//! that a newcomer can try DPoP-bound tokens with curl; and the certificate files that
//! `token --bind-cert` and `decide --client-cert` read.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, anyhow};

#[derive(clap::Args)]
pub(crate) struct DpopArgs {
    /// The private key (PEM: EC P-256/P-384, Ed25519 or RSA) the token is bound to
    /// (`portcullis token --dpop-key` the same file).
    #[arg(long)]
    key: PathBuf,
    /// The request's HTTP method.
    #[arg(long, short = 'X', default_value = "GET")]
    method: String,
    /// The request URL (the query is left out of the proof).
    #[arg(long)]
    url: String,
    /// The access token the proof goes with (its hash is the proof's `ath`).
    #[arg(long)]
    token: String,
}

pub(crate) fn run(args: &DpopArgs) -> anyhow::Result<ExitCode> {
    let now = portcullis::time::unix_seconds(SystemTime::now());
    let proof = proof(&args.key, &args.method, &args.url, &args.token, now)?;
    outln!("{proof}");
    Ok(ExitCode::SUCCESS)
}

/// A fresh proof (a new random `jti`) made at `iat`.
pub(crate) fn proof(
    key: &Path,
    method: &str,
    url: &str,
    token: &str,
    iat: i64,
) -> anyhow::Result<String> {
    let pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let htu = portcullis::token::dpop::without_query(url);
    let jti = ulid::Ulid::new().to_string();
    portcullis::token::dpop::sign_proof(&pem, method, htu, token, iat, &jti)
        .map_err(|e| anyhow!("{}: {e}", key.display()))
}

/// The DER certificate of a PEM or DER file.
pub(crate) fn read_certificate(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    match std::str::from_utf8(&bytes) {
        Ok(text) if text.contains("-----BEGIN") => portcullis::token::cert::certificate_der(text)
            .map_err(|_| anyhow!("{}: no CERTIFICATE block in the PEM", path.display())),
        _ => Ok(bytes),
    }
}

/// The certificate as a gateway passes it: base64 DER.
pub(crate) fn certificate_text(path: &Path) -> anyhow::Result<String> {
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::STANDARD.encode(read_certificate(path)?))
}
