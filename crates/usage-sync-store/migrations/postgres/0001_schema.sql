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
