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
