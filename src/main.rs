//! The `portcullis` command: parses the command line and hands over to [`cli`].

mod cli;

/// A decision allocates and frees many small objects on whichever thread serves it; mimalloc
/// does that with far less contention and CPU than the system allocator (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::run()
}
