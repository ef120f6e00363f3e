//! The usage-sync service.
//!
//! Modules:
//! - [`cli`]: the `usage-sync` command line (`serve`, `check-config`,
//!   `migrate`);
//! - [`configuration`]: layered, validated [`configuration::Settings`];
//! - [`checklist`]: the pre-deploy checks of `check-config`;
//! - [`alerts`]: alerts on a sliding window, and their actions;
//! - [`cadence`]: the adaptive interval controller (`optimized` mode);
//! - [`startup`]: builds store, engine and HTTP server ([`startup::Application`]);
//! - [`status`]: the `status` command (a running instance as a table);
//! - [`http`]: routes, auth, request parsing, the error shape;
//! - [`metrics`]: the Prometheus text of `GET /metrics`;
//! - [`telemetry`]: logging setup;
//! - [`shutdown`]: the SIGTERM / SIGINT signal.

#![forbid(unsafe_code)]
// Casts that can wrap are denied in the whole workspace (Cargo.toml).

pub mod alerts;
pub mod bench;
pub mod cadence;
pub mod checklist;
pub mod cli;
pub mod configuration;
pub mod http;
pub mod metrics;
pub mod shutdown;
pub mod startup;
pub mod status;
pub mod telemetry;
