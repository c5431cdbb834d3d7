//! Subcommands of the `portcullis` command line (SPEC §6b).

/// `println!` for command output: when stdout is closed early (`portcullis check | head`),
/// the process ends quietly with the shell's broken-pipe status instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout_line(format_args!($($arg)*))
    };
}

mod check;
mod decide;
mod dpop;
mod replay;
mod schema;
mod serve;
mod test;
mod token;
mod transport;

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
            remote_keys: None,
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
    /// Serve decisions over gRPC (Envoy ext_authz, own API) and HTTP (nginx, decisions API).
    Serve(Box<serve::ServeArgs>),
    /// Decide on one request and print the decision as JSON; exit 0 allow, 1 deny.
    Decide(decide::DecideArgs),
    /// Decide recorded decisions again with candidate policies and print what would change;
    /// exit 1 when `--fail-on` kinds changed, 2 when the input cannot be used.
    Replay(replay::ReplayArgs),
    /// Sign a development token that the example policies accept (local trial only).
    Token(token::TokenArgs),
    /// Make a DPoP proof (RFC 9449) for one request, to send as its `DPoP` header.
    Dpop(dpop::DpopArgs),
    /// Run the test suites (`*.test.yaml`) beside the policies; exit 0 all pass, 1 any fail.
    Test(test::TestArgs),
    /// Print the JSON Schema of a policy document, for editors that check policy files as typed.
    Schema,
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let filter = |default: &str| {
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into())
    };
    // The server installs its own log (JSON lines, with its span exporter): see `serve::run`.
    if !matches!(cli.command, Command::Serve(_)) {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter("warn"))
            .init();
    }
    let result = match cli.command {
        Command::Serve(args) => serve::run(&args, filter("info")),
        Command::Check { dir, flags } => check::run(&dir, &flags),
        Command::Decide(args) => decide::run(&args),
        Command::Replay(args) => replay::run(&args),
        Command::Token(args) => token::run(&args),
        Command::Dpop(args) => dpop::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Schema => schema::run(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

pub(crate) fn write_stdout_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{args}").and_then(|()| out.flush()).is_err() {
        // 128 + SIGPIPE, as a shell reports a process ended by a closed pipe.
        std::process::exit(141);
    }
}
