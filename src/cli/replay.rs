//! `portcullis replay`: decides recorded decisions again with a candidate policy set and
//! prints those that would change, so that a policy change is judged on real traffic before
//! it goes live. Exit 0: nothing of the kinds `--fail-on` names changed; 1: something did;
//! 2: the input or the candidate cannot be used.

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use portcullis::decision::{Decision, Engine, Outcome};
use serde::Serialize;

use super::PolicyFlags;

/// Decisions asked for per page of the decisions API (its own maximum).
const PAGE: usize = 1_000;

#[derive(clap::Args)]
pub(crate) struct ReplayArgs {
    /// The candidate policy directory.
    #[arg(long)]
    policies: PathBuf,
    /// Where the recorded decisions come from: a running Portcullis (`http://host:port`,
    /// its decisions API is paged through) or a file of decisions, one JSON object a line
    /// (`GET /v1/decisions?format=ndjson`); `-` reads standard input.
    #[arg(long)]
    from: String,
    /// `text` for people, `json` for machines.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
    /// Exit 1 when a change of these kinds is found: `allow-to-deny`, `deny-to-allow`,
    /// `any` (every change, not `not-replayable`), `not-replayable`; comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = ["allow-to-deny", "deny-to-allow", "any", "not-replayable"])]
    fail_on: Vec<String>,
    /// The admin token of the decisions API (a listener that is not on loopback needs it);
    /// else `PORTCULLIS_ADMIN_TOKEN`.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    #[command(flatten)]
    flags: PolicyFlags,
}

/// How a decision changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Change {
    AllowToDeny,
    DenyToAllow,
    /// The same outcome with another status or decisive rule.
    Other,
}

impl Change {
    fn of(recorded: Outcome, candidate: Outcome) -> Self {
        match (recorded, candidate) {
            (Outcome::Allow, Outcome::Deny) => Change::AllowToDeny,
            (Outcome::Deny, Outcome::Allow) => Change::DenyToAllow,
            _ => Change::Other,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Verdict {
    outcome: Outcome,
    status: u16,
    rule: Option<String>,
}

impl Verdict {
    fn of(d: &Decision) -> Self {
        Self {
            outcome: d.outcome,
            status: d.status,
            rule: d.decisive_rule().map(str::to_owned),
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.outcome, &self.rule) {
            (Outcome::Allow, _) => write!(f, "allow ({})", self.status),
            (Outcome::Deny, Some(rule)) => write!(f, "deny ({}, rule \"{rule}\")", self.status),
            (Outcome::Deny, None) => write!(f, "deny ({})", self.status),
        }
    }
}

/// What identifies a recorded decision in the report.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Recorded {
    id: String,
    time: String,
    service: Option<String>,
    operation: Option<String>,
    subject: Option<String>,
    method: String,
    url: String,
}

impl Recorded {
    fn of(d: &Decision) -> Self {
        Self {
            id: d.id.clone(),
            time: d.time.clone(),
            service: d.service.as_deref().map(str::to_owned),
            operation: d.operation.as_deref().map(str::to_owned),
            subject: d.token.as_ref().and_then(|t| t.sub.clone()),
            method: d.request.method.clone(),
            url: d.request.url.clone(),
        }
    }

    fn line(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.id,
            self.time,
            self.service.as_deref().unwrap_or("-"),
            self.operation.as_deref().unwrap_or("-"),
            self.subject.as_deref().unwrap_or("-"),
        )
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Changed {
    #[serde(flatten)]
    decision: Recorded,
    kind: Change,
    recorded: Verdict,
    candidate: Verdict,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Unreplayable {
    #[serde(flatten)]
    decision: Recorded,
    reason: String,
}

/// Counts per service.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Counts {
    replayed: usize,
    unchanged: usize,
    allow_to_deny: usize,
    deny_to_allow: usize,
    other: usize,
    not_replayable: usize,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    candidate_revision: String,
    changes: Vec<Changed>,
    not_replayable: Vec<Unreplayable>,
    /// By service (`-` for decisions no service matched), and `total`.
    summary: BTreeMap<String, Counts>,
}

impl Report {
    fn count(&mut self, service: Option<&str>, add: impl Fn(&mut Counts)) {
        add(self
            .summary
            .entry(service.unwrap_or("-").to_owned())
            .or_default());
        add(self.summary.entry("total".to_owned()).or_default());
    }

    fn add(&mut self, engine: &Engine, candidate: &portcullis::PolicySet, recorded: &Decision) {
        let service = recorded.service.as_deref();
        match engine.replay(candidate, recorded) {
            Err(reason) => {
                self.count(service, |c| c.not_replayable += 1);
                self.not_replayable.push(Unreplayable {
                    decision: Recorded::of(recorded),
                    reason: reason.to_string(),
                });
            }
            Ok(again) => {
                self.count(service, |c| c.replayed += 1);
                if !recorded.differs_from(again.outcome, again.status, again.decisive_rule()) {
                    self.count(service, |c| c.unchanged += 1);
                    return;
                }
                let kind = Change::of(recorded.outcome, again.outcome);
                self.count(service, |c| match kind {
                    Change::AllowToDeny => c.allow_to_deny += 1,
                    Change::DenyToAllow => c.deny_to_allow += 1,
                    Change::Other => c.other += 1,
                });
                self.changes.push(Changed {
                    decision: Recorded::of(recorded),
                    kind,
                    recorded: Verdict::of(recorded),
                    candidate: Verdict::of(&again),
                });
            }
        }
    }

    fn fails(&self, fail_on: &[String]) -> bool {
        let total = self.summary.get("total");
        let n = |f: fn(&Counts) -> usize| total.map_or(0, f);
        fail_on.iter().any(|kind| match kind.as_str() {
            "allow-to-deny" => n(|c| c.allow_to_deny) > 0,
            "deny-to-allow" => n(|c| c.deny_to_allow) > 0,
            "any" => !self.changes.is_empty(),
            "not-replayable" => n(|c| c.not_replayable) > 0,
            _ => false,
        })
    }

    fn print_text(&self) {
        for c in &self.changes {
            outln!("{}  {} → {}", c.decision.line(), c.recorded, c.candidate);
        }
        if !self.not_replayable.is_empty() {
            outln!("not replayable:");
            for u in &self.not_replayable {
                outln!("{}  {}", u.decision.line(), u.reason);
            }
        }
        outln!(
            "{:<24} {:>9} {:>9} {:>12} {:>12} {:>7} {:>15}",
            "service",
            "replayed",
            "unchanged",
            "allow→deny",
            "deny→allow",
            "other",
            "not replayable"
        );
        for (service, c) in &self.summary {
            outln!(
                "{:<24} {:>9} {:>9} {:>12} {:>12} {:>7} {:>15}",
                service,
                c.replayed,
                c.unchanged,
                c.allow_to_deny,
                c.deny_to_allow,
                c.other,
                c.not_replayable
            );
        }
    }
}

pub(crate) fn run(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let candidate = portcullis::load_dir(&args.policies, &args.flags.options()).map_err(|e| {
        anyhow::anyhow!(
            "the candidate policies in {} are invalid:\n{e}",
            args.policies.display()
        )
    })?;
    let engine = Engine::new(16);
    let mut report = Report {
        candidate_revision: candidate.revision().to_string(),
        ..Report::default()
    };
    let mut each = |d: Decision| report.add(&engine, &candidate, &d);
    if args.from.starts_with("http://") || args.from.starts_with("https://") {
        let token = portcullis::server::admin::load_token(args.admin_token_file.as_deref())?;
        page_through(&args.from, token.as_deref(), &mut each)?;
    } else {
        read_lines(&args.from, &mut each)?;
    }
    let failed = report.fails(&args.fail_on);
    if args.format == "json" {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print_text();
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Reads decisions from a file (or `-`), one JSON object a line; blank lines are skipped.
fn read_lines(path: &str, each: &mut dyn FnMut(Decision)) -> anyhow::Result<()> {
    let reader: Box<dyn BufRead> = if path == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(path).with_context(|| format!("cannot read {path}"))?,
        ))
    };
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {path}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let decision: Decision = serde_json::from_str(&line)
            .with_context(|| format!("{path}:{}: not a recorded decision", i + 1))?;
        each(decision);
    }
    Ok(())
}

/// Pages through a running Portcullis' decisions API, newest first, with `until` as the
/// cursor: each page asks for the decisions before the oldest of the last page plus one
/// millisecond, so that decisions of that millisecond are not missed, and skips those
/// already seen.
fn page_through(
    base: &str,
    token: Option<&str>,
    each: &mut dyn FnMut(Decision),
) -> anyhow::Result<()> {
    let base = base.trim_end_matches('/');
    let url = if base.ends_with("/v1/decisions") {
        base.to_owned()
    } else {
        format!("{base}/v1/decisions")
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let mut seen: HashSet<String> = HashSet::new();
    let mut until: Option<i64> = None;
    loop {
        let mut request = client
            .get(&url)
            .query(&[("format", "ndjson".to_owned()), ("limit", PAGE.to_string())]);
        if let Some(until) = until {
            request = request.query(&[("until", until.to_string())]);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let body = runtime.block_on(async {
            let response = request.send().await?;
            let status = response.status();
            let text = response.text().await?;
            anyhow::Ok((status, text))
        });
        let (status, body) = body.with_context(|| format!("cannot read {url}"))?;
        if !status.is_success() {
            let shown: String = body.chars().take(300).collect();
            bail!("{url} answered {status}: {shown}");
        }
        let mut oldest: Option<i64> = None;
        let (mut lines, mut new) = (0, 0);
        for (i, line) in body.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            lines += 1;
            let decision: Decision = serde_json::from_str(line)
                .with_context(|| format!("{url}: line {}: not a recorded decision", i + 1))?;
            let millis = humantime::parse_rfc3339_weak(&decision.time)
                .map(portcullis::time::unix_millis)
                .with_context(|| format!("{url}: decision {} has no usable time", decision.id))?;
            oldest = Some(oldest.map_or(millis, |o: i64| o.min(millis)));
            if seen.insert(decision.id.clone()) {
                new += 1;
                each(decision);
            }
        }
        match oldest {
            // A short page is the last; a page of only decisions already seen would repeat.
            Some(oldest) if lines >= PAGE && new > 0 => until = Some(oldest + 1),
            _ => return Ok(()),
        }
    }
}
