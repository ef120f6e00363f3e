//! `usage-sync`: see `cli.rs` for the commands.

fn main() -> std::process::ExitCode {
    usage_sync_server::cli::run()
}
