//! The schema, embedded in the binary and applied in order at start and by
//! `usage-sync migrate`. Each dialect has its own list; versions must match
//! across dialects so `schema_migrations` means the same everywhere.
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
    sql: r#"
CREATE TABLE IF NOT EXISTS plans (
    name        TEXT PRIMARY KEY,
    period      TEXT NOT NULL CHECK (period IN ('monthly', 'daily', 'none')),
    limits      TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS users (
    user_id          TEXT PRIMARY KEY,
    plan             TEXT,
    limits           TEXT NOT NULL DEFAULT '{}',
    period_reset_at  TEXT,
    updated_at       TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS usage (
    user_id       TEXT NOT NULL,
    kind          TEXT NOT NULL,
    period_start  TEXT NOT NULL,
    used          INTEGER NOT NULL,
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (user_id, kind, period_start)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS flushes (
    flush_id    TEXT PRIMARY KEY,
    applied_at  TEXT NOT NULL,
    rows        INTEGER NOT NULL,
    units       INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS flushes_applied_at ON flushes (applied_at);
"#,
}];

/// PostgreSQL schema (same versions as SQLite). Times are `timestamptz`;
/// limits are `jsonb`.
pub const POSTGRES: &[Migration] = &[Migration {
    version: 1,
    description: "plans, users, usage counters and applied flush ids",
    sql: r#"
CREATE TABLE IF NOT EXISTS plans (
    name        TEXT PRIMARY KEY,
    period      TEXT NOT NULL CHECK (period IN ('monthly', 'daily', 'none')),
    limits      JSONB NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS users (
    user_id          TEXT PRIMARY KEY,
    plan             TEXT,
    limits           JSONB NOT NULL DEFAULT '{}',
    period_reset_at  TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS usage (
    user_id       TEXT NOT NULL,
    kind          TEXT NOT NULL,
    period_start  TIMESTAMPTZ NOT NULL,
    used          BIGINT NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, kind, period_start)
);

CREATE TABLE IF NOT EXISTS flushes (
    flush_id    TEXT PRIMARY KEY,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    rows        INTEGER NOT NULL,
    units       BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS flushes_applied_at ON flushes (applied_at);
"#,
}];
