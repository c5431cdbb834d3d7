//! `portcullis schema`: print the JSON Schema of a policy document, for editors.

use std::io::{ErrorKind, Write};
use std::process::ExitCode;

pub(crate) fn run() -> anyhow::Result<ExitCode> {
    let schema = portcullis::policy::schema::policy_schema();
    let mut text = serde_json::to_string_pretty(&schema)?;
    text.push('\n');
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        // `portcullis schema | head` is not an error.
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        other => {
            other?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
