//! The schema, embedded in the binary and applied in order at start and by
//! `usage-sync migrate`. Each dialect has its own list, its SQL in
//! `migrations/{sqlite,postgres}/`; versions must match across dialects so
//! `schema_migrations` means the same everywhere.
//!
//! The schema is documented for applications that read usage with plain SQL
//! in `docs/schema.md`.

/// One migration: a version number and the SQL that brings the schema from
/// `version - 1` to `version`.
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

/// SQLite schema. `period_start` and other times are RFC 3339 UTC text with
/// milliseconds (`2026-11-01T00:00:00.000Z`): fixed width, so they sort and
/// compare as the instants they name, and they read well in a SQL shell.
pub const SQLITE: &[Migration] = &[Migration {
    version: 1,
    description: "plans, users, usage counters and applied flush ids",
    sql: include_str!("../migrations/sqlite/0001_schema.sql"),
}];

/// PostgreSQL schema (same versions as SQLite). Times are `timestamptz`;
/// limits are `jsonb`.
pub const POSTGRES: &[Migration] = &[Migration {
    version: 1,
    description: "plans, users, usage counters and applied flush ids",
    sql: include_str!("../migrations/postgres/0001_schema.sql"),
}];
