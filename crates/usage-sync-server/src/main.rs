//! `usage-sync`: see `cli.rs` for the commands.

/// mimalloc instead of the system allocator: under load glibc's malloc and
/// free took about 10 % of the server's CPU (perf, docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    usage_sync_server::cli::run()
}
