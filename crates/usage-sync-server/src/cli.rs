//! The command line: `serve`, `check-config`, `migrate`, `status`, `bench`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::configuration::{self, Settings};
use crate::startup::{Application, open_store};
use crate::{shutdown, telemetry};

/// Meters per-user usage and enforces quotas, in memory, with batched and
/// exactly-once writes to the database.
#[derive(Parser, Debug)]
#[command(
    name = "usage-sync",
    version,
    about = "Meter per-user usage and enforce quotas: decides and counts in memory, writes batched, exactly-once deltas to SQLite or PostgreSQL",
    long_about = None
)]
pub struct Cli {
    /// TOML config file (layered between the preset and the environment).
    #[arg(long, global = true, env = "USAGE_SYNC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the service (HTTP API and sync engine) until SIGTERM or SIGINT.
    /// It listens on USAGE_SYNC_LISTEN (127.0.0.1:8080 by default) and keeps
    /// its log in USAGE_SYNC_DATA_DIR (./data); two instances need one of
    /// each of their own.
    Serve {
        /// Address to listen on, host:port [env: USAGE_SYNC_LISTEN; default
        /// 127.0.0.1:8080].
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
        /// Start even if the write-ahead log lost records it had made
        /// durable (a deleted, truncated or zeroed segment, a gap): the
        /// loss is written to the log output and the lost units are not
        /// counted. Without it such a start is refused (exit 2).
        #[arg(long)]
        accept_log_loss: bool,
    },
    /// Print the effective settings, where each came from, secrets
    /// redacted; exit non-zero if the configuration is invalid.
    CheckConfig,
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Exit 0 if the instance at URL answers GET /healthz, 1 otherwise:
    /// a container health check for images without curl.
    Healthcheck {
        /// Base URL of the instance [default: http:// + USAGE_SYNC_LISTEN].
        #[arg(long)]
        url: Option<String>,
    },
    /// Show the status of a running instance and its runtime checklist;
    /// exit 1 if a check fails, 2 if the instance cannot be reached.
    Status {
        /// Base URL of the instance [default: http:// + USAGE_SYNC_LISTEN].
        #[arg(long)]
        url: Option<String>,
        /// Admin token [default: USAGE_SYNC_ADMIN_TOKEN].
        #[arg(long)]
        token: Option<String>,
        /// Print the status document as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load-test a running instance with POST /v1/consume over keep-alive
    /// connections; print throughput, latency percentiles and the sync
    /// statistics before and after.
    Bench {
        /// Base URL of the instance [default: http:// + USAGE_SYNC_LISTEN].
        #[arg(long)]
        url: Option<String>,
        /// API token [default: USAGE_SYNC_API_TOKEN].
        #[arg(long)]
        token: Option<String>,
        /// Admin token, for the sync statistics [default: USAGE_SYNC_ADMIN_TOKEN].
        #[arg(long)]
        admin_token: Option<String>,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// How long to run: 10s, 1m, or milliseconds.
        #[arg(long, default_value = "10s", value_parser = parse_bench_duration)]
        duration: std::time::Duration,
        /// Distinct users, chosen at random per request.
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        /// Kinds, comma-separated, chosen at random per request.
        #[arg(long, default_value = "fast", value_delimiter = ',')]
        kinds: Vec<String>,
        /// Send a fresh request_id with every consume.
        #[arg(long)]
        request_ids: bool,
        /// Print the grade (A, B, C) and recommendations.
        #[arg(long)]
        grade: bool,
        /// Print one JSON document instead of the report.
        #[arg(long)]
        json: bool,
    },
}

fn parse_bench_duration(s: &str) -> Result<std::time::Duration, String> {
    configuration::parse_duration(s)
}

/// Runs the CLI; returns the process exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Healthcheck { url } = &cli.command {
        let settings = configuration::load(cli.config.as_deref()).ok();
        let url = url
            .clone()
            .or_else(|| {
                settings
                    .as_ref()
                    .map(|s| format!("http://127.0.0.1:{}", s.http.listen.port()))
            })
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        return crate::status::healthcheck(&url);
    }
    if let Command::Status { url, token, json } = &cli.command {
        // The local configuration only supplies defaults here; an invalid
        // one must not stop an operator from looking at a remote instance.
        let settings = configuration::load(cli.config.as_deref()).ok();
        return crate::status::run(settings.as_ref(), url.clone(), token.clone(), *json);
    }
    if let Command::Bench {
        url,
        token,
        admin_token,
        connections,
        duration,
        users,
        kinds,
        request_ids,
        grade,
        json,
    } = &cli.command
    {
        let settings = configuration::load(cli.config.as_deref()).ok();
        let secret = |s: Option<&configuration::Secret>| s.map(|t| t.expose().to_owned());
        let url = url
            .clone()
            .or_else(|| {
                settings
                    .as_ref()
                    .map(|s| format!("http://{}", s.http.listen))
            })
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        if *connections == 0 || *users == 0 || kinds.is_empty() {
            eprintln!("✗ --connections, --users and --kinds must not be zero or empty");
            return ExitCode::from(2);
        }
        return crate::bench::run(crate::bench::BenchArgs {
            url: url.trim_end_matches('/').to_owned(),
            api_token: token
                .clone()
                .or_else(|| secret(settings.as_ref().and_then(|s| s.http.api_token.as_ref()))),
            admin_token: admin_token
                .clone()
                .or_else(|| secret(settings.as_ref().and_then(|s| s.http.admin_token.as_ref()))),
            connections: *connections,
            duration: *duration,
            users: *users,
            kinds: kinds.clone(),
            request_ids: *request_ids,
            grade: *grade,
            json: *json,
        });
    }
    let mut settings = match configuration::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("✗ invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::CheckConfig => {
            print_config(&settings);
            let rt = match build_runtime(false, ExitCode::FAILURE) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let checks = rt.block_on(crate::checklist::pre_deploy(&settings));
            if print_checks(&checks) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Migrate => runtime(|| async {
            telemetry::init(&settings);
            if let Some(pid) =
                usage_sync_store::wal::lock::holder(&settings.store.data_dir.join("wal"))
            {
                eprintln!(
                    "note: data dir {} is in use{} by a running instance; migrate changes only the database schema, never the log",
                    settings.store.data_dir.display(),
                    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
                );
            }
            let store = open_store(&settings)?;
            store.migrate().await.with_context(|| {
                format!(
                    "migrating {}",
                    configuration::redact_url(&settings.store.database_url)
                )
            })?;
            println!(
                "✓ migrations applied to {} ({})",
                configuration::redact_url(&settings.store.database_url),
                store.backend()
            );
            Ok(())
        }),
        Command::Status { .. } | Command::Bench { .. } | Command::Healthcheck { .. } => {
            unreachable!("handled above")
        }
        Command::Serve {
            listen,
            accept_log_loss,
        } => runtime(|| async {
            settings.store.accept_log_loss = accept_log_loss;
            if let Some(l) = listen {
                settings.http.listen = configuration::parse_listen(&l).map_err(|m| {
                    anyhow::Error::msg(format!("--listen: {m}"))
                        .context(crate::startup::CannotStart)
                })?;
            }
            telemetry::init(&settings);
            telemetry::warn_about(&settings);
            let app = Application::build(settings).await?;
            let report = app.run_until_stopped(shutdown::signal()).await?;
            if report.remaining_units != 0 && !report.remaining_logged {
                anyhow::bail!(
                    "{} units could not be written to the database before the shutdown deadline, \
                     and the write-ahead log failed: units acknowledged since its last good sync may be lost",
                    report.remaining_units
                );
            }
            if let Some(why) = &report.log_stalled {
                eprintln!(
                    "! the write-ahead log could not write at shutdown ({why}). Every acknowledged \
                     unit is in the log and the next start recovers it ({} units not yet in the \
                     database); requests answered 503 while it could not write were not counted",
                    report.remaining_units
                );
            }
            Ok(())
        }),
    }
}

fn runtime<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = match build_runtime(true, ExitCode::FAILURE) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(f()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("✗ {e:#}");
            // A failure waiting cannot heal is a configuration or operator
            // problem, like an invalid setting: exit 2.
            if e.downcast_ref::<crate::startup::CannotStart>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn print_config(s: &Settings) {
    use std::io::Write;
    // Write errors (a closed pipe, as in `check-config | head`) are ignored:
    // the exit code still tells whether the configuration is valid.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "usage-sync effective configuration\n");
    let rows = s.redacted();
    // Columns as wide as their longest entry, so long keys and values
    // (a database URL) do not push the sources out of line.
    let kw = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0).max(7);
    let vw = rows
        .iter()
        .map(|(_, v)| v.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(5, 60);
    let _ = writeln!(out, "  {:<kw$} {:<vw$} source", "setting", "value");
    for (key, value) in rows {
        let source = s
            .sources
            .get(key)
            .map_or_else(|| "default".to_owned(), |src| src.to_string());
        let _ = writeln!(out, "  {key:<kw$} {value:<vw$} {source}");
    }
}

/// Prints the checklist; returns whether every check passed.
fn print_checks(checks: &[crate::checklist::Check]) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\npre-deploy checks");
    for c in checks {
        let mark = if c.ok { "✓" } else { "✗" };
        let _ = writeln!(out, "  {mark} {:<14} {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            let _ = writeln!(out, "    fix: {fix}");
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        let _ = writeln!(out, "\n✓ all {} checks passed", checks.len());
    } else {
        let _ = writeln!(out, "\n✗ {failed} of {} checks failed", checks.len());
    }
    failed == 0
}

/// A Tokio runtime for a command, or `failure` after saying why there is
/// none.
pub(crate) fn build_runtime(
    multi_thread: bool,
    failure: ExitCode,
) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|e| {
        eprintln!("✗ cannot start the async runtime: {e}");
        failure
    })
}
