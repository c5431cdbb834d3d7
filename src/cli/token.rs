//! `portcullis token`: signs a development token that a service of the policy set accepts,
//! with a private key kept beside the service's JWKS file (for local trial only).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::token::KeySource;
use portcullis::token::jwks::{KeyKind, KeySet};
use serde_json::{Map, Value};

use super::PolicyFlags;

#[derive(clap::Args)]
pub(crate) struct TokenArgs {
    /// The policy directory.
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
    /// The service the token is for: sets `iss`, `aud` and the claim names.
    #[arg(long, default_value = "meme-game")]
    service: String,
    /// The user (`sub`); without it the token is a client-credentials token.
    #[arg(long)]
    sub: Option<String>,
    /// The client (`client_id`).
    #[arg(long, default_value = "portcullis-cli")]
    client_id: String,
    /// Groups, comma-separated or repeated; stored in the service's groups claim.
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// Scopes, space-separated or repeated; stored in the service's scope claim.
    #[arg(long)]
    scope: Vec<String>,
    /// The audience; defaults to the service's first.
    #[arg(long)]
    aud: Option<String>,
    /// Another claim, `name=value` (the value is JSON if it parses, else a string).
    #[arg(long = "claim")]
    claims: Vec<String>,
    /// Lifetime of the token.
    #[arg(long, default_value = "1h")]
    expires_in: humantime::Duration,
    /// Make a token that expired an hour ago.
    #[arg(long, conflicts_with = "expires_in")]
    expired: bool,
    /// The private key (PEM) to sign with; defaults to `<name>.dev-key.pem` beside the
    /// service's `<name>.jwks.json`, or the shared secret of an HS service.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Bind the token to this client certificate (PEM or DER): `cnf.x5t#S256` (RFC 8705).
    #[arg(long)]
    bind_cert: Option<PathBuf>,
    /// Bind the token to this DPoP key (a private key, PEM): `cnf.jkt` (RFC 9449); make
    /// proofs with `portcullis dpop --key` the same file.
    #[arg(long)]
    dpop_key: Option<PathBuf>,
    #[command(flatten)]
    flags: PolicyFlags,
}

/// The `cnf` claim of a token bound to `cert` and/or `dpop_key`.
fn confirmation(cert: Option<&Path>, dpop_key: Option<&Path>) -> anyhow::Result<Option<Value>> {
    let mut cnf = Map::new();
    if let Some(path) = cert {
        let der = super::dpop::read_certificate(path)?;
        cnf.insert(
            "x5t#S256".into(),
            portcullis::token::binding::b64url(&portcullis::token::cert::thumbprint(&der)).into(),
        );
    }
    if let Some(path) = dpop_key {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let jkt = portcullis::token::dpop::key_thumbprint(&pem)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        cnf.insert("jkt".into(), jkt.into());
    }
    Ok((!cnf.is_empty()).then_some(Value::Object(cnf)))
}

pub(crate) fn run(args: &TokenArgs) -> anyhow::Result<ExitCode> {
    let policies = portcullis::load_dir(&args.policies, &args.flags.options()).map_err(|e| {
        anyhow!(
            "the policies in {} are invalid:\n{e}",
            args.policies.display()
        )
    })?;
    let service = policies.service(&args.service).ok_or_else(|| {
        let names: Vec<&str> = policies.services.iter().map(|s| &*s.name).collect();
        anyhow!(
            "no service `{}`; the policies define {}",
            args.service,
            names.join(", ")
        )
    })?;
    let KeySource::Static { keys, file } = &service.token.keys else {
        bail!(
            "service `{}` fetches its keys from a URL; get tokens from its identity provider",
            service.name
        );
    };
    let (encoding, alg, kid) =
        signing_key(args.key.as_deref(), file, keys, &service.token.algorithms)?;

    let now = portcullis::time::unix_seconds(SystemTime::now());
    let (iat, exp) = if args.expired {
        (now - 7200, now - 3600)
    } else {
        (now, now + Duration::from(args.expires_in).as_secs() as i64)
    };
    let mut claims = Map::new();
    claims.insert("iss".into(), service.token.issuer.to_string().into());
    let aud = args
        .aud
        .clone()
        .unwrap_or_else(|| service.token.audiences[0].to_string());
    claims.insert("aud".into(), aud.into());
    if let Some(sub) = &args.sub {
        claims.insert("sub".into(), sub.clone().into());
    }
    claims.insert("client_id".into(), args.client_id.clone().into());
    claims.insert("iat".into(), iat.into());
    claims.insert("exp".into(), exp.into());
    if !args.groups.is_empty() {
        claims.insert(
            service.token.groups_claim.as_str().into(),
            args.groups.clone().into(),
        );
    }
    if !args.scope.is_empty() {
        claims.insert(
            service.token.scope_claim.as_str().into(),
            args.scope.join(" ").into(),
        );
    }
    for claim in &args.claims {
        let (name, value) = claim
            .split_once('=')
            .ok_or_else(|| anyhow!("claim `{claim}` is not `name=value`"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        claims.insert(name.to_owned(), value);
    }
    if let Some(cnf) = confirmation(args.bind_cert.as_deref(), args.dpop_key.as_deref())? {
        claims.insert("cnf".into(), cnf);
    }
    let mut header = Header::new(alg);
    header.kid = kid;
    let token = jsonwebtoken::encode(&header, &claims, &encoding).context("signing the token")?;
    eprintln!(
        "portcullis: a {alg:?} token for service `{}` (key `{}`), expiring {}; for local trial only",
        service.name,
        header.kid.as_deref().unwrap_or("-"),
        portcullis::time::format_unix(exp)
    );
    outln!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// The signing key, the algorithm to use and the `kid` of the trusted key that matches it.
fn signing_key(
    explicit: Option<&Path>,
    jwks_file: &Path,
    keys: &KeySet,
    allowed: &[Algorithm],
) -> anyhow::Result<(EncodingKey, Algorithm, Option<String>)> {
    let pem_path = match explicit {
        Some(path) => Some(path.to_owned()),
        None => {
            let name = jwks_file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let stem = name.strip_suffix(".jwks.json").unwrap_or(name);
            let candidate = jwks_file.with_file_name(format!("{stem}.dev-key.pem"));
            candidate.exists().then_some(candidate)
        }
    };
    if let Some(path) = pem_path {
        let pem = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if let Some((key, _)) = portcullis::token::signing_key_from_pem(&pem) {
            for alg in allowed {
                if let Some(kid) = trusted_kid(&key, *alg, keys) {
                    return Ok((key, *alg, kid));
                }
            }
        }
        bail!(
            "the key in {} matches no key of {} for the allowed algorithms",
            path.display(),
            jwks_file.display()
        );
    }
    // A service that trusts a shared secret: the secret is the signing key.
    for key in &keys.keys {
        if let KeyKind::Oct { .. } = key.kind
            && let Some(alg) = key.algorithms.first()
        {
            let secret = key.secret().context("reading the shared secret")?;
            return Ok((
                EncodingKey::from_secret(secret),
                *alg,
                key.kid.as_deref().map(str::to_owned),
            ));
        }
    }
    bail!(
        "no development key for {}: pass --key with the private key (PEM) of one of its keys",
        jwks_file.display()
    )
}

/// Signs a probe with `key` and returns the `kid` of the trusted key that verifies it.
fn trusted_kid(key: &EncodingKey, alg: Algorithm, keys: &KeySet) -> Option<Option<String>> {
    const PROBE: &[u8] = b"portcullis key probe";
    let signature = jsonwebtoken::crypto::sign(PROBE, key, alg).ok()?;
    keys.keys
        .iter()
        .filter(|k| k.fits(alg))
        .find(|k| k.verify(PROBE, &signature, alg))
        .map(|k| k.kid.as_deref().map(str::to_owned))
}
