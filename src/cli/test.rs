//! `portcullis test DIR`: run the policy test suites beside the policies and print what failed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::anyhow;

use super::PolicyFlags;

#[derive(clap::Args)]
#[command(after_help = "\
Suites are `*.test.yaml` (`.yml`, `.json`) files beside the policies. Each case sends a
request, with a token signed from claims, a raw token or none, to the real decision engine
and checks only what its `expect` gives: outcome, status, code, detail, rule, service,
operation, headers, upstreamHeaders.

Exit status: 0 when every case passes, 1 when any fails, 2 when the policies or the suites
cannot be used (every problem is printed with file:line:column).

Coverage (--coverage) lists the operations no case matched and the top-level rules that
decided no case, i.e. rules whose failure no case exercises. Rules nested under
`any`/`all`/`not` never decide on their own and are not listed; their top-level rule is.")]
pub(crate) struct TestArgs {
    /// The policy directory with its suites, or one suite file (the policies are then the
    /// files beside it).
    #[arg(default_value = "policies")]
    path: PathBuf,
    /// The policy directory, when it is not PATH (or the directory of the suite file PATH).
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// Run only the cases whose name, or `FILE: NAME`, contains TEXT.
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    /// Also list the operations no case matched and the top-level rules that decided no case
    /// (rules nested under any/all/not never decide on their own).
    #[arg(long)]
    coverage: bool,
    #[command(flatten)]
    flags: PolicyFlags,
}

pub(crate) fn run(args: &TestArgs) -> anyhow::Result<ExitCode> {
    let dir = if let Some(dir) = &args.policies {
        dir.as_path()
    } else if args.path.is_file() {
        args.path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    } else {
        args.path.as_path()
    };
    let policies = portcullis::load_dir(dir, &args.flags.options());
    let suites = portcullis::suite::load_suites(&args.path);
    let (policies, suites) = match (policies, suites) {
        (Ok(p), Ok(s)) => (p, s),
        (policies, suites) => {
            let mut problems = String::new();
            if let Err(e) = policies {
                problems.push_str(&format!(
                    "\nthe policies in {} are invalid:\n{e}",
                    dir.display()
                ));
            }
            if let Err(e) = suites {
                problems.push_str(&format!("\nthe test suites are invalid:\n{e}"));
            }
            return Err(anyhow!("cannot run the tests:{problems}"));
        }
    };
    let report = portcullis::suite::run(
        &policies,
        &suites,
        SystemTime::now(),
        args.filter.as_deref(),
    );
    for case in report.cases.iter().filter(|c| !c.passed()) {
        outln!("{case}");
    }
    if args.coverage {
        let coverage = &report.coverage;
        if !coverage.unmatched_operations.is_empty() {
            outln!("operations no case matched:");
            for operation in &coverage.unmatched_operations {
                outln!("  {operation}");
            }
        }
        if !coverage.undecisive_rules.is_empty() {
            outln!("top-level rules that decided no case:");
            for rule in &coverage.undecisive_rules {
                outln!("  {rule}");
            }
        }
        outln!(
            "coverage: {} of {} operations matched, {} of {} top-level rules decisive",
            coverage.operations - coverage.unmatched_operations.len(),
            coverage.operations,
            coverage.rules - coverage.undecisive_rules.len(),
            coverage.rules
        );
    }
    outln!("{}", report.summary());
    if let Some(filter) = &args.filter
        && report.cases.is_empty()
    {
        eprintln!("no case matches --filter {filter:?}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(if report.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
