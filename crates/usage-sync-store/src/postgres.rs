//! The PostgreSQL backend, for production and for several instances
//! sharing one database.
//!
//! A flush is one statement, so one implicit transaction and one round
//! trip: a data-modifying CTE inserts the flush id, and the multi-row
//! upsert of all deltas (built from `UNNEST` arrays, ordered by key) runs
//! only if that insert happened. An id already there applies nothing, and
//! a second statement then reads the current values. The ordering matters
//! with several instances: two flushes that lock the same rows lock them
//! in the same order, so they wait for each other instead of deadlocking.
//!
//! `statement_timeout` and `lock_timeout` are set on every pooled
//! connection when it is opened, so a stuck lock fails the flush (and it is
//! retried under the same id) instead of holding a connection forever.
//! The few statements that may legitimately run long (migrations, full
//! scans for the admin listing, pruning old flush ids) lift them with
//! `SET LOCAL` inside their own transaction.
//!
//! Times cross the wire as integer milliseconds and are converted in SQL
//! (`'epoch' + n * interval '1 millisecond'`), exactly, without a date-time
//! dependency.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime,
};
use tokio_postgres::NoTls;
use usage_sync_core::{FlushBatch, FlushId, Timestamp};

use crate::error::StoreError;
use crate::migrations::POSTGRES;
use crate::{
    FlushOutcome, Store, StoreFuture, StoredPlan, StoredUser, UsageRow, UserState,
    limits_from_json, limits_to_json,
};

/// Advisory lock key held while migrating, so instances starting together
/// do not run the same migration twice.
const MIGRATION_LOCK: i64 = 0x7573_6167_6573_796e; // "usagesyn"

const TS: &str = "(TIMESTAMPTZ 'epoch' + $N::bigint * INTERVAL '1 millisecond')";

fn ts(n: usize) -> String {
    TS.replace("$N", &format!("${n}"))
}

fn ms(col: &str) -> String {
    format!("(EXTRACT(EPOCH FROM {col}) * 1000)::bigint")
}

/// PostgreSQL store with a connection pool. Cloning shares the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// The URL with its password redacted, for error messages.
    url: String,
}

/// `url` with the password of its user info replaced.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((auth, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => url.to_owned(),
    }
}

/// An error and its causes, one after the other: tokio-postgres says
/// "db error" and keeps the server's words in its source.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        if !out.ends_with(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        src = s.source();
    }
    out
}

/// Lifts the connection's timeouts for the rest of a transaction.
const UNBOUNDED: &str = "SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0";

/// `statement_timeout` of pooled connections when none is given.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

impl PostgresStore {
    /// Builds the pool (connections are opened on first use), with
    /// [`DEFAULT_STATEMENT_TIMEOUT`].
    pub fn connect(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        Self::connect_with_timeout(url, pool_size, DEFAULT_STATEMENT_TIMEOUT)
    }

    /// Builds the pool with `statement_timeout` on every pooled connection
    /// and `lock_timeout` half of it. The server passes its sync timeout
    /// (`USAGE_SYNC_TIMEOUT`): a flush the engine stopped waiting for also
    /// stops on the server, instead of holding its row locks, and a flush
    /// the engine still waits for is not cancelled earlier.
    pub fn connect_with_timeout(
        url: &str,
        pool_size: usize,
        statement_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
            StoreError::InvalidUrl("a postgres:// URL that tokio-postgres can parse".into())
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // 0 would mean "no timeout" to PostgreSQL: keep at least 1 ms.
        let ms = statement_timeout.as_millis().max(1);
        let settings = format!(
            "SET statement_timeout = {ms}; SET lock_timeout = {}",
            (ms / 2).max(1)
        );
        let hook = Hook::async_fn(move |client, _| {
            let settings = settings.clone();
            Box::pin(async move {
                client
                    .batch_execute(&settings)
                    .await
                    .map_err(HookError::Backend)
            })
        });
        let pool = Pool::builder(manager)
            .post_create(hook)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Pool(format!("{}: {e}", redact_url(url))))?;
        Ok(PostgresStore {
            pool,
            url: redact_url(url),
        })
    }

    /// Pool size and connections currently checked out.
    pub fn pool_status(&self) -> (usize, usize) {
        let s = self.pool.status();
        (s.max_size, s.size.saturating_sub(s.available))
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| self.connect_error(e))
    }

    /// Runs a full scan (the admin listing) in a transaction of its own,
    /// not bounded by the connection's statement timeout.
    async fn full_scan(&self, sql: &str) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(UNBOUNDED).await?;
        let rows = tx.query(sql, &[]).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Why no connection could be had, with the server's own words and the
    /// URL: unreachable (may heal: retried), authentication refused or the
    /// database missing (cannot heal by waiting: the start exits 2).
    fn connect_error(&self, e: deadpool_postgres::PoolError) -> StoreError {
        use deadpool_postgres::PoolError;
        let url = &self.url;
        match &e {
            PoolError::Backend(pg) => {
                if let Some(db) = pg.as_db_error() {
                    let code = db.code().code();
                    let what = format!("{url}: {} (SQLSTATE {code})", db.message());
                    if code.starts_with("28") {
                        return StoreError::Auth(format!(
                            "{what}; check the user and password in DATABASE_URL"
                        ));
                    }
                    if code == "3D000" {
                        return StoreError::MissingDatabase(format!(
                            "{what}; create it (createdb) or fix the database name in DATABASE_URL"
                        ));
                    }
                    return StoreError::Unreachable(what);
                }
                StoreError::Unreachable(format!("{url}: {}", chain(pg)))
            }
            PoolError::Timeout(_) => StoreError::Unreachable(format!(
                "{url}: no connection within 5 s ({e}); is the server up and the address right?"
            )),
            _ => StoreError::Pool(format!("{url}: {}", chain(&e))),
        }
    }

    async fn apply(&self, batch: &FlushBatch) -> Result<FlushOutcome, StoreError> {
        let client = self.client().await?;
        let users: Vec<&str> = batch.deltas.iter().map(|d| d.user.as_str()).collect();
        let kinds: Vec<&str> = batch.deltas.iter().map(|d| d.kind.name()).collect();
        let periods: Vec<i64> = batch.deltas.iter().map(|d| d.period_start.0).collect();
        let deltas: Vec<i64> = batch.deltas.iter().map(|d| d.delta).collect();
        let id = batch.id.to_string();
        let (n_rows, units) = (
            i32::try_from(batch.rows()).unwrap_or(i32::MAX),
            batch.units(),
        );
        // One statement: the upsert reads `f`, so it runs after the id
        // insert and only if the id was new. A concurrent statement with
        // the same id waits on the id's unique index, then finds it.
        let applied = client
            .query(
                &format!(
                    "WITH f AS (
                       INSERT INTO flushes (flush_id, rows, units) VALUES ($5, $6, $7)
                       ON CONFLICT (flush_id) DO NOTHING
                       RETURNING 1
                     )
                     INSERT INTO usage (user_id, kind, period_start, used)
                     SELECT t.user_id, t.kind, TIMESTAMPTZ 'epoch' + t.p * INTERVAL '1 millisecond', t.d
                     FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS t(user_id, kind, p, d)
                     WHERE EXISTS (SELECT 1 FROM f)
                     ORDER BY t.user_id, t.kind, t.p
                     ON CONFLICT (user_id, kind, period_start)
                     DO UPDATE SET used = usage.used + EXCLUDED.used, updated_at = now()
                     RETURNING user_id, kind, {}, used",
                    ms("period_start")
                ),
                &[&users, &kinds, &periods, &deltas, &id, &n_rows, &units],
            )
            .await?;
        // A batch always has rows, so no row back means the id was there:
        // applied by an earlier attempt. Report the current values, read by
        // a new statement (a new snapshot, after that attempt committed).
        let already_applied = applied.is_empty() && !batch.deltas.is_empty();
        let rows = if already_applied {
            client
                .query(
                    &format!(
                        "SELECT u.user_id, u.kind, {}, u.used FROM usage u
                         JOIN UNNEST($1::text[], $2::text[], $3::bigint[]) AS t(user_id, kind, p)
                           ON u.user_id = t.user_id AND u.kind = t.kind
                          AND u.period_start = TIMESTAMPTZ 'epoch' + t.p * INTERVAL '1 millisecond'",
                        ms("u.period_start")
                    ),
                    &[&users, &kinds, &periods],
                )
                .await?
        } else {
            applied
        };
        let mut after: HashMap<(String, String, i64), i64> = HashMap::with_capacity(rows.len());
        for r in rows {
            after.insert((r.get(0), r.get(1), r.get(2)), r.get(3));
        }
        let used_after = batch
            .deltas
            .iter()
            .map(|d| {
                after
                    .get(&(
                        d.user.to_string(),
                        d.kind.name().to_owned(),
                        d.period_start.0,
                    ))
                    .copied()
                    // A row can only be missing on the already-applied path
                    // if it was deleted since; report 0.
                    .unwrap_or(0)
            })
            .collect();
        Ok(FlushOutcome {
            used_after,
            already_applied,
        })
    }
}

impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn migrate(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // Schema changes on a large table may take long, and so may the
            // wait for another instance's migration.
            tx.batch_execute(UNBOUNDED).await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version BIGINT PRIMARY KEY,
                    description TEXT NOT NULL,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                )",
            )
            .await?;
            for m in POSTGRES {
                let done = tx
                    .query_opt(
                        "SELECT 1 FROM schema_migrations WHERE version = $1",
                        &[&m.version],
                    )
                    .await?
                    .is_some();
                if !done {
                    tx.batch_execute(m.sql).await?;
                    tx.execute(
                        "INSERT INTO schema_migrations (version, description) VALUES ($1, $2)",
                        &[&m.version, &m.description],
                    )
                    .await?;
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.client().await?.query_one("SELECT 1", &[]).await?;
            Ok(())
        })
    }

    fn load_plans(&self) -> StoreFuture<'_, Vec<StoredPlan>> {
        Box::pin(async move {
            let rows = self
                .client()
                .await?
                .query(
                    "SELECT name, period, limits::text FROM plans ORDER BY name",
                    &[],
                )
                .await?;
            rows.into_iter()
                .map(|r| {
                    let period: String = r.get(1);
                    Ok(StoredPlan {
                        name: r.get(0),
                        period: period.parse().map_err(|e: usage_sync_core::CoreError| {
                            StoreError::Corrupt(e.to_string())
                        })?,
                        limits: limits_from_json(r.get(2))?,
                    })
                })
                .collect()
        })
    }

    fn save_plan(&self, plan: StoredPlan) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.client()
                .await?
                .execute(
                    "INSERT INTO plans (name, period, limits) VALUES ($1, $2, $3::text::jsonb)
                     ON CONFLICT (name) DO UPDATE SET period = EXCLUDED.period,
                       limits = EXCLUDED.limits, updated_at = now()",
                    &[
                        &plan.name,
                        &plan.period.as_str(),
                        &limits_to_json(&plan.limits),
                    ],
                )
                .await?;
            Ok(())
        })
    }

    fn load_users(&self, ids: Vec<String>, since: Timestamp) -> StoreFuture<'_, Vec<UserState>> {
        Box::pin(async move {
            let client = self.client().await?;
            // Two queries for the whole batch, whatever its size, both sent
            // before either answer is awaited (tokio-postgres pipelines
            // them on the connection): one round trip.
            let profile_sql = format!(
                "SELECT user_id, plan, limits::text, {} FROM users WHERE user_id = ANY($1)",
                ms("period_reset_at")
            );
            let usage_sql = format!(
                "SELECT user_id, kind, {}, used FROM usage WHERE user_id = ANY($1) AND period_start >= {}",
                ms("period_start"),
                ts(2)
            );
            let (profile_params, usage_params): (
                [&(dyn tokio_postgres::types::ToSql + Sync); 1],
                [&(dyn tokio_postgres::types::ToSql + Sync); 2],
            ) = ([&ids], [&ids, &since.0]);
            let (profiles, usage) = tokio::try_join!(
                client.query(&profile_sql, &profile_params),
                client.query(&usage_sql, &usage_params),
            )?;
            let index: HashMap<&str, usize> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.as_str(), i))
                .collect();
            let mut out = vec![UserState::default(); ids.len()];
            for r in profiles {
                if let Some(&i) = index.get(r.get::<_, &str>(0)) {
                    out[i].profile = Some(StoredUser {
                        plan: r.get(1),
                        overrides: limits_from_json(r.get(2))?,
                        reset_at: r.get::<_, Option<i64>>(3).map(Timestamp),
                    });
                }
            }
            for r in usage {
                let user_id: String = r.get(0);
                if let Some(&i) = index.get(user_id.as_str()) {
                    out[i].usage.push(UsageRow {
                        user_id,
                        kind: r.get(1),
                        period_start: Timestamp(r.get(2)),
                        used: r.get(3),
                    });
                }
            }
            Ok(out)
        })
    }

    fn save_user(&self, user_id: String, user: StoredUser) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.client()
                .await?
                .execute(
                    &format!(
                        "INSERT INTO users (user_id, plan, limits, period_reset_at)
                         VALUES ($1, $2, $3::text::jsonb, CASE WHEN $4::bigint IS NULL THEN NULL ELSE {} END)
                         ON CONFLICT (user_id) DO UPDATE SET plan = EXCLUDED.plan, limits = EXCLUDED.limits,
                           period_reset_at = EXCLUDED.period_reset_at, updated_at = now()",
                        ts(4)
                    ),
                    &[
                        &user_id,
                        &user.plan,
                        &limits_to_json(&user.overrides),
                        &user.reset_at.map(|t| t.0),
                    ],
                )
                .await?;
            Ok(())
        })
    }

    fn apply_flush(&self, batch: Arc<FlushBatch>) -> StoreFuture<'_, FlushOutcome> {
        Box::pin(async move { self.apply(&batch).await })
    }

    fn flush_applied(&self, id: FlushId) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            Ok(self
                .client()
                .await?
                .query_opt(
                    "SELECT 1 FROM flushes WHERE flush_id = $1",
                    &[&id.to_string()],
                )
                .await?
                .is_some())
        })
    }

    fn prune_flushes(&self, before: Timestamp) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            // After a long outage there may be many to delete.
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            tx.batch_execute(UNBOUNDED).await?;
            let n = tx
                .execute(
                    &format!("DELETE FROM flushes WHERE applied_at < {}", ts(1)),
                    &[&before.0],
                )
                .await?;
            tx.commit().await?;
            Ok(n)
        })
    }

    fn pool_status(&self) -> Option<(usize, usize)> {
        Some(PostgresStore::pool_status(self))
    }

    fn all_usage(&self) -> StoreFuture<'_, Vec<UsageRow>> {
        Box::pin(async move {
            let rows = self
                .full_scan(&format!(
                    "SELECT user_id, kind, {}, used FROM usage ORDER BY user_id, kind, period_start",
                    ms("period_start")
                ))
                .await?;
            Ok(rows
                .into_iter()
                .map(|r| UsageRow {
                    user_id: r.get(0),
                    kind: r.get(1),
                    period_start: Timestamp(r.get(2)),
                    used: r.get(3),
                })
                .collect())
        })
    }

    fn all_profiles(&self) -> StoreFuture<'_, Vec<(String, StoredUser)>> {
        Box::pin(async move {
            let rows = self
                .full_scan(&format!(
                    "SELECT user_id, plan, limits::text, {} FROM users ORDER BY user_id",
                    ms("period_reset_at")
                ))
                .await?;
            rows.into_iter()
                .map(|r| {
                    Ok((
                        r.get(0),
                        StoredUser {
                            plan: r.get(1),
                            overrides: limits_from_json(r.get(2))?,
                            reset_at: r.get::<_, Option<i64>>(3).map(Timestamp),
                        },
                    ))
                })
                .collect()
        })
    }
}
