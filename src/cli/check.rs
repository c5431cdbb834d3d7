//! `portcullis check DIR`: validate policies and print every problem.

use std::path::Path;
use std::process::ExitCode;

use super::PolicyFlags;

pub(crate) fn run(dir: &Path, flags: &PolicyFlags) -> anyhow::Result<ExitCode> {
    match portcullis::load_dir(dir, &flags.options()) {
        Ok(set) => {
            let operations: usize = set.services.iter().map(|s| s.operations.len()).sum();
            outln!(
                "{}: valid, {} services, {} operations (revision {})",
                dir.display(),
                set.services.len(),
                operations,
                set.revision()
            );
            for service in &set.services {
                outln!(
                    "  {} ({}): {}",
                    service.name,
                    service.source,
                    service.base_urls.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for error in &errors.0 {
                outln!("{error}");
            }
            let n = errors.0.len();
            outln!(
                "{}: {n} {}",
                dir.display(),
                if n == 1 { "error" } else { "errors" }
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
