//! The embedded SQLite backend: no server, one file under the data dir.
//!
//! SQLite allows one writer at a time, so there is exactly one write
//! connection, behind a mutex; user loads go through a separate read
//! connection and, thanks to WAL mode, never wait for a flush. rusqlite is
//! synchronous, so every call runs on tokio's blocking pool.
//!
//! Durability: `synchronous=FULL`. Flushes are batched, so the fsync per
//! commit costs little, and the exactly-once argument needs a committed
//! flush id to survive power loss.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use usage_sync_core::Locked;

use rusqlite::{Connection, OptionalExtension, params};
use usage_sync_core::{FlushBatch, FlushId, Timestamp};

use crate::error::StoreError;
use crate::migrations::SQLITE;
use crate::{
    FlushOutcome, Store, StoreFuture, StoredPlan, StoredUser, UsageRow, UserState,
    limits_from_json, limits_to_json,
};

/// Sizes of the multi-row upsert statements a batch is split into,
/// largest first. SQLite parses a statement's text before running it, and
/// for a statement of hundreds of rows the parse costs more than the
/// writes; with a handful of fixed sizes every statement text repeats and
/// comes from the prepared-statement cache (a 500-row batch is 8
/// statements: 256 + 3 × 64 + 3 × 16 + 4), parsed once per connection.
const STATEMENT_SIZES: [usize; 5] = [256, 64, 16, 4, 1];

/// The upsert text for `rows` rows (one of [`STATEMENT_SIZES`]).
fn upsert_sql(rows: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        STATEMENT_SIZES
            .iter()
            .map(|&n| {
                let mut sql = String::with_capacity(200 + n * 24);
                sql.push_str(
                    "INSERT INTO usage (user_id, kind, period_start, used, updated_at) VALUES ",
                );
                // Parameters: 4 per row, then the shared update time last.
                let now_idx = n * 4 + 1;
                for i in 0..n {
                    if i > 0 {
                        sql.push(',');
                    }
                    let b = i * 4;
                    sql.push_str(&format!(
                        "(?{}, ?{}, ?{}, ?{}, ?{now_idx})",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4
                    ));
                }
                sql.push_str(
                    " ON CONFLICT (user_id, kind, period_start) DO UPDATE SET
                       used = usage.used + excluded.used, updated_at = excluded.updated_at
                     RETURNING user_id, kind, period_start, used",
                );
                sql
            })
            .collect()
    });
    let i = STATEMENT_SIZES
        .iter()
        .position(|&n| n == rows)
        .expect("a statement size");
    &all[i]
}

/// Splits `n` rows into statement sizes, largest first.
fn statement_plan(mut n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for &size in &STATEMENT_SIZES {
        while n >= size {
            out.push(size);
            n -= size;
        }
    }
    out
}

/// SQLite store. Cloning shares the connections.
#[derive(Clone)]
pub struct SqliteStore {
    path: Arc<PathBuf>,
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Parses `sqlite://path`, `sqlite:path` or `sqlite:///absolute/path`.
    pub fn path_from_url(url: &str) -> Result<PathBuf, StoreError> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| StoreError::InvalidUrl(url.to_owned()))?;
        if rest.is_empty() {
            return Err(StoreError::InvalidUrl(url.to_owned()));
        }
        Ok(PathBuf::from(rest))
    }

    /// Opens (creating if needed) the database file and its directory.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Open {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let writer = Self::connect(path)?;
        let reader = Self::connect(path)?;
        Ok(SqliteStore {
            path: Arc::new(path.to_owned()),
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    fn connect(path: &Path) -> Result<Connection, StoreError> {
        let conn = Connection::open(path)?;
        // WAL: readers do not block the writer. FULL: a commit is on disk.
        // busy_timeout: another process (an operator's sqlite3 shell, a
        // second connection) holding the lock makes us wait, then fail with
        // a transient error the engine retries.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // A multi-row upsert inside a transaction keeps a statement journal
        // (to undo just that statement if it fails half-way). By default it
        // spills to a temporary file past 64 KiB, so a 10 000-row flush
        // wrote every touched page twice through the file system. In memory
        // it is at most a few MiB, and it is not needed after a crash: the
        // database's own WAL decides what committed.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.busy_timeout(std::time::Duration::from_millis(2000))?;
        // Room for the upsert sizes and the other statements together.
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the write connection on the blocking pool.
    fn write<T, F>(&self, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        on_blocking_pool(self.writer.clone(), f)
    }

    /// Runs `f` with the read connection (WAL mode: never waits for a
    /// flush in progress).
    fn read<T, F>(&self, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        on_blocking_pool(self.reader.clone(), f)
    }
}

fn on_blocking_pool<'a, T, F>(conn: Arc<Mutex<Connection>>, f: F) -> StoreFuture<'a, T>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
{
    Box::pin(async move {
        tokio::task::spawn_blocking(move || {
            let mut c = conn.locked();
            f(&mut c)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    })
}

/// Column `i` of `r` as borrowed text.
fn text<'r>(r: &'r rusqlite::Row<'_>, i: usize) -> Result<&'r str, StoreError> {
    r.get_ref(i)?
        .as_str()
        .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

fn now_text() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Timestamp(ms).to_rfc3339()
}

fn parse_ts(s: &str) -> Result<Timestamp, StoreError> {
    Timestamp::parse_rfc3339(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Applies pending migrations in one transaction each.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            description TEXT NOT NULL,
            applied_at TEXT NOT NULL
        )",
    )?;
    for m in SQLITE {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let done: Option<i64> = tx
            .query_row(
                "SELECT version FROM schema_migrations WHERE version = ?1",
                [m.version],
                |r| r.get(0),
            )
            .optional()?;
        if done.is_none() {
            tx.execute_batch(m.sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?1, ?2, ?3)",
                params![m.version, m.description, now_text()],
            )?;
        }
        tx.commit()?;
    }
    Ok(())
}

fn apply_flush(conn: &mut Connection, batch: &FlushBatch) -> Result<FlushOutcome, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let now = now_text();
    let id = batch.id.to_string();
    // The flush id goes in first, in the same transaction as the deltas: if
    // it is already there, this batch committed before (its acknowledgement
    // was lost) and must not be applied again.
    let inserted = tx.execute(
        "INSERT INTO flushes (flush_id, applied_at, rows, units) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (flush_id) DO NOTHING",
        params![
            id,
            now,
            i64::try_from(batch.rows()).unwrap_or(i64::MAX),
            batch.units()
        ],
    )?;
    if inserted == 0 {
        let mut stmt = tx.prepare_cached(
            "SELECT used FROM usage WHERE user_id = ?1 AND kind = ?2 AND period_start = ?3",
        )?;
        let mut used_after = Vec::with_capacity(batch.rows());
        for d in &batch.deltas {
            let v: Option<i64> = stmt
                .query_row(
                    params![d.user.as_str(), d.kind.name(), d.period_start.to_rfc3339()],
                    |r| r.get(0),
                )
                .optional()?;
            used_after.push(v.unwrap_or(0));
        }
        drop(stmt);
        tx.commit()?;
        return Ok(FlushOutcome {
            used_after,
            already_applied: true,
        });
    }
    // RETURNING gives rows in no promised order: find each row's counter
    // by its key. The key borrows the batch's strings, so matching a
    // returned row allocates nothing. A key is numbered by its first delta
    // (`first[i]`), so deltas of one key, which the ledger never sends but
    // a caller could, all get the counter's final value.
    let period_texts: Vec<String> = batch
        .deltas
        .iter()
        .map(|d| d.period_start.to_rfc3339())
        .collect();
    let mut index: HashMap<(&str, &str, &str), usize> = HashMap::with_capacity(batch.rows());
    let first: Vec<usize> = batch
        .deltas
        .iter()
        .enumerate()
        .map(|(i, d)| {
            *index
                .entry((d.user.as_str(), d.kind.name(), &period_texts[i]))
                .or_insert(i)
        })
        .collect();
    let mut value: Vec<Option<i64>> = vec![None; batch.rows()];
    let mut start = 0;
    for size in statement_plan(batch.rows()) {
        let chunk = &batch.deltas[start..start + size];
        let mut stmt = tx.prepare_cached(upsert_sql(size))?;
        for (i, d) in chunk.iter().enumerate() {
            let b = i * 4;
            stmt.raw_bind_parameter(b + 1, d.user.as_str())?;
            stmt.raw_bind_parameter(b + 2, d.kind.name())?;
            stmt.raw_bind_parameter(b + 3, &period_texts[start + i])?;
            stmt.raw_bind_parameter(b + 4, d.delta)?;
        }
        stmt.raw_bind_parameter(size * 4 + 1, &now)?;
        start += size;
        let mut rows = stmt.raw_query();
        while let Some(r) = rows.next()? {
            let key = (text(r, 0)?, text(r, 1)?, text(r, 2)?);
            let i = *index
                .get(&key)
                .ok_or_else(|| StoreError::Corrupt("upsert returned a row of no delta".into()))?;
            value[i] = Some(r.get(3)?);
        }
    }
    let used_after = first
        .iter()
        .map(|&i| {
            value[i].ok_or_else(|| StoreError::Corrupt("upsert returned no row for a delta".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    tx.commit()?;
    Ok(FlushOutcome {
        used_after,
        already_applied: false,
    })
}

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn migrate(&self) -> StoreFuture<'_, ()> {
        self.write(migrate)
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.read(|c| {
            c.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
    }

    fn load_plans(&self) -> StoreFuture<'_, Vec<StoredPlan>> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT name, period, limits FROM plans ORDER BY name")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, period, limits) = row?;
                out.push(StoredPlan {
                    name,
                    period: period.parse().map_err(|e: usage_sync_core::CoreError| {
                        StoreError::Corrupt(e.to_string())
                    })?,
                    limits: limits_from_json(&limits)?,
                });
            }
            Ok(out)
        })
    }

    fn save_plan(&self, plan: StoredPlan) -> StoreFuture<'_, ()> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO plans (name, period, limits, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET period = excluded.period,
                   limits = excluded.limits, updated_at = excluded.updated_at",
                params![
                    plan.name,
                    plan.period.as_str(),
                    limits_to_json(&plan.limits),
                    now_text()
                ],
            )?;
            Ok(())
        })
    }

    fn load_users(&self, ids: Vec<String>, since: Timestamp) -> StoreFuture<'_, Vec<UserState>> {
        // One trip to the blocking pool for the whole batch.
        self.read(move |c| ids.into_iter().map(|id| load_one(c, id, since)).collect())
    }

    fn save_user(&self, user_id: String, user: StoredUser) -> StoreFuture<'_, ()> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO users (user_id, plan, limits, period_reset_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (user_id) DO UPDATE SET plan = excluded.plan,
                   limits = excluded.limits, period_reset_at = excluded.period_reset_at,
                   updated_at = excluded.updated_at",
                params![
                    user_id,
                    user.plan,
                    limits_to_json(&user.overrides),
                    user.reset_at.map(|t| t.to_rfc3339()),
                    now_text()
                ],
            )?;
            Ok(())
        })
    }

    fn apply_flush(&self, batch: Arc<FlushBatch>) -> StoreFuture<'_, FlushOutcome> {
        self.write(move |c| apply_flush(c, &batch))
    }

    fn flush_applied(&self, id: FlushId) -> StoreFuture<'_, bool> {
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT 1 FROM flushes WHERE flush_id = ?1")?
                    .query_row([id.to_string()], |_| Ok(()))
                    .optional()?
                    .is_some(),
            )
        })
    }

    fn prune_flushes(&self, before: Timestamp) -> StoreFuture<'_, u64> {
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM flushes WHERE applied_at < ?1",
                [before.to_rfc3339()],
            )? as u64)
        })
    }

    fn all_usage(&self) -> StoreFuture<'_, Vec<UsageRow>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT user_id, kind, period_start, used FROM usage ORDER BY user_id, kind, period_start",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (user_id, kind, p, used) = row?;
                out.push(UsageRow {
                    user_id,
                    kind,
                    period_start: parse_ts(&p)?,
                    used,
                });
            }
            Ok(out)
        })
    }

    fn all_profiles(&self) -> StoreFuture<'_, Vec<(String, StoredUser)>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT user_id, plan, limits, period_reset_at FROM users ORDER BY user_id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (user_id, plan, limits, reset) = row?;
                out.push((
                    user_id,
                    StoredUser {
                        plan,
                        overrides: limits_from_json(&limits)?,
                        reset_at: reset.as_deref().map(parse_ts).transpose()?,
                    },
                ));
            }
            Ok(out)
        })
    }
}

/// One user's profile and current counters, on the reader connection.
fn load_one(
    c: &mut Connection,
    user_id: String,
    since: Timestamp,
) -> Result<UserState, StoreError> {
    let profile = c
        .prepare_cached("SELECT plan, limits, period_reset_at FROM users WHERE user_id = ?1")?
        .query_row([&user_id], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })
        .optional()?
        .map(|(plan, limits, reset)| -> Result<StoredUser, StoreError> {
            Ok(StoredUser {
                plan,
                overrides: limits_from_json(&limits)?,
                reset_at: reset.as_deref().map(parse_ts).transpose()?,
            })
        })
        .transpose()?;
    let mut stmt = c.prepare_cached(
        "SELECT kind, period_start, used FROM usage WHERE user_id = ?1 AND period_start >= ?2",
    )?;
    let rows = stmt.query_map(params![user_id, since.to_rfc3339()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut usage = Vec::new();
    for row in rows {
        let (kind, period, used) = row?;
        usage.push(UsageRow {
            user_id: user_id.clone(),
            kind,
            period_start: parse_ts(&period)?,
            used,
        });
    }
    Ok(UserState { profile, usage })
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    #[test]
    fn batches_split_into_cached_statement_sizes() {
        assert_eq!(statement_plan(500), [256, 64, 64, 64, 16, 16, 16, 4]);
        assert_eq!(statement_plan(7), [4, 1, 1, 1]);
        assert_eq!(statement_plan(0), Vec::<usize>::new());
        for n in 0..2000 {
            assert_eq!(statement_plan(n).iter().sum::<usize>(), n);
        }
        assert!(upsert_sql(4).contains("?17"));
    }
}
