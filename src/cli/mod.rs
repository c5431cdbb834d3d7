//! Subcommands of the `portcullis` command line (SPEC §6b).

mod check;
mod decide;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A policy decision point for API access management"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags about policy loading shared by the subcommands that read policies.
#[derive(clap::Args, Clone)]
pub(crate) struct PolicyFlags {
    /// Let `jwks.url` use plain http when its host is a loopback address.
    #[arg(long, env = "PORTCULLIS_ALLOW_INSECURE_LOOPBACK_JWKS")]
    allow_insecure_loopback_jwks: bool,
}

impl PolicyFlags {
    pub(crate) fn options(&self) -> portcullis::PolicyOptions {
        portcullis::PolicyOptions {
            allow_insecure_loopback_jwks: self.allow_insecure_loopback_jwks,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Validate a policy directory: every problem with file:line:column; exit 1 if any.
    Check {
        /// The policy directory.
        dir: PathBuf,
        #[command(flatten)]
        flags: PolicyFlags,
    },
    /// Decide on one request and print the decision as JSON; exit 0 allow, 1 deny.
    Decide(decide::DecideArgs),
    /// Sign a development token that the example policies accept (local trial only).
    Token(token::TokenArgs),
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let result = match cli.command {
        Command::Check { dir, flags } => check::run(&dir, &flags),
        Command::Decide(args) => decide::run(&args),
        Command::Token(args) => token::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
