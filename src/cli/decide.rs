//! `portcullis decide`: one decision from the command line, printed as JSON.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, bail};

use super::PolicyFlags;

#[derive(clap::Args)]
pub(crate) struct DecideArgs {
    /// The policy directory.
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
    /// The request's HTTP method.
    #[arg(long, short = 'X', default_value = "GET")]
    method: String,
    /// The full request URL, e.g. https://localhost:8443/meme-game/api/v1/leaderboard
    #[arg(long)]
    url: String,
    /// A request header, `Name: value`; repeat for more.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// The client's IP address.
    #[arg(long)]
    client: Option<IpAddr>,
    /// Decide as if it were this time (RFC 3339), instead of now.
    #[arg(long)]
    at: Option<humantime::Timestamp>,
    /// The client certificate of the request (PEM or DER), as a gateway would pass it, for
    /// certificate-bound tokens.
    #[arg(long)]
    client_cert: Option<PathBuf>,
    /// A DPoP proof to send in the `DPoP` header (the header's value; see `portcullis dpop`).
    #[arg(long, conflicts_with = "dpop_key")]
    dpop: Option<String>,
    /// Make the DPoP proof for this request with this private key (PEM): the method, the URL
    /// and the access token of `-H 'Authorization: …'`.
    #[arg(long)]
    dpop_key: Option<PathBuf>,
    #[command(flatten)]
    flags: PolicyFlags,
}

pub(crate) fn run(args: &DecideArgs) -> anyhow::Result<ExitCode> {
    let policies = portcullis::load_dir(&args.policies, &args.flags.options()).map_err(|e| {
        anyhow::anyhow!(
            "the policies in {} are invalid:\n{e}",
            args.policies.display()
        )
    })?;
    let mut headers = Vec::with_capacity(args.headers.len());
    for header in &args.headers {
        let Some((name, value)) = header.split_once(':') else {
            bail!("header `{header}` is not `Name: value`");
        };
        headers.push((name.trim(), value.trim()));
    }
    let now = args.at.map_or_else(SystemTime::now, SystemTime::from);
    let client_cert = match &args.client_cert {
        Some(path) => Some(super::dpop::certificate_text(path)?),
        None => None,
    };
    let proof = match (&args.dpop, &args.dpop_key) {
        (Some(proof), _) => Some(proof.clone()),
        (None, Some(key)) => {
            let token = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
                .and_then(|(_, v)| v.split_once(' '))
                .map(|(_, t)| t.trim())
                .context("`--dpop-key` makes a proof for the access token: pass it with -H 'Authorization: DPoP <token>'")?;
            Some(super::dpop::proof(
                key,
                &args.method,
                &args.url,
                token,
                portcullis::time::unix_seconds(now),
            )?)
        }
        (None, None) => None,
    };
    if let Some(proof) = &proof {
        headers.push(("dpop", proof.as_str()));
    }
    let engine = portcullis::Engine::default();
    let decision = engine.decide(
        &policies,
        &portcullis::DecisionRequest {
            method: &args.method,
            url: &args.url,
            headers: &headers,
            client: args.client,
            client_cert: client_cert.as_deref(),
        },
        now,
    );
    let json = serde_json::to_string_pretty(&decision).context("serialising the decision")?;
    outln!("{json}");
    Ok(if decision.is_allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
