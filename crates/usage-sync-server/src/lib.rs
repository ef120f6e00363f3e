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
//! - [`telemetry`]: logging setup;
//! - [`shutdown`]: the SIGTERM / SIGINT signal.

#![forbid(unsafe_code)]
// Amounts, limits, ids and query numbers come from clients and operators:
// converted with checked or saturating conversions, never `as`, which can
// wrap silently (a limit of 2^64-1 once read as "unlimited"). The crate's
// tests may cast freely.
#![cfg_attr(
    not(test),
    deny(
        clippy::cast_possible_wrap,
        clippy::cast_sign_loss,
        clippy::cast_possible_truncation
    )
)]

pub mod alerts;
pub mod bench;
pub mod cadence;
pub mod checklist;
pub mod cli;
pub mod configuration;
pub mod http;
pub mod shutdown;
pub mod startup;
pub mod status;
pub mod telemetry;
