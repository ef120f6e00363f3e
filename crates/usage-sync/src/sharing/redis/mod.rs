//! The Redis side of the shared tier: one connection (a single server or a
//! cluster), the key layout, and the Lua scripts that make each decision in
//! one atomic step on the server.
//!
//! Key layout (`P` is the configured prefix, `U` the user id, `N` its byte
//! length in decimal):
//!
//! | key                            | holds                                       |
//! |--------------------------------|---------------------------------------------|
//! | `P:{N:U}:c:<kind>:<start_ms>`  | units admitted (or leased) in that period   |
//! | `P:{N:U}:v`                    | the user's version, bumped by admin changes |
//! | `P:{N:U}:r:<request_id>`       | the decision made under a request id (hash) |
//! | `P:rq:<request_id>`            | the user a request id belongs to (refunds)  |
//! | `P:plans:v`                    | the plan catalogue's version                |
//!
//! Unambiguous whatever bytes the ids hold: a reader takes the digits of
//! `N`, then exactly `N` bytes of user id, so a user id full of `}` and
//! `:` cannot end early; kinds are `[a-z0-9_-]` and periods numbers; the
//! request id is always last. (The length used to follow the user id,
//! which let a crafted request id spell another user's counter key.)
//! `decode_key` in the tests reads every key back to its parts.
//!
//! `{N:U...}` is a hash tag: Redis Cluster hashes the text from the first
//! `{` to the next `}`, the same for every key of one user, so a script may
//! touch all of them; starting with the length, it is never empty (an
//! empty tag would hash the whole key and scatter a user's keys).

// Without the `redis` feature the replies are never built and most keys
// never named: the stubs at the end fail every call.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

#[cfg(feature = "redis")]
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

#[cfg(feature = "redis")]
use usage_sync_core::Locked;

#[cfg(feature = "redis")]
use redis::aio::{ConnectionLike, ConnectionManager};
#[cfg(feature = "redis")]
use redis::cluster_async::ClusterConnection;
#[cfg(feature = "redis")]
use redis::{Cmd, FromRedisValue, RedisError, Script, ScriptInvocation};

/// A connection to a single server or a cluster. Both are multiplexed and
/// cheap to clone: one per call, no pool.
#[cfg(feature = "redis")]
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Why a Redis call did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisFailure {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[cfg(feature = "redis")]
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// This build has no Redis client (`Engine::open` refuses a sharing
    /// configuration first, so no call gets here).
    #[cfg(not(feature = "redis"))]
    #[error(
        "this build of usage-sync has no Redis client: enable the `redis` feature of the usage-sync crate"
    )]
    NotBuilt,
    #[error("redis is not connected")]
    NotConnected,
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
}

impl RedisFailure {
    /// Whether Redis as a whole could not be reached (connection refused
    /// or dropped, timeouts, a cluster without a node for the slot, a
    /// server still loading). The opposite is an error about one key or
    /// one reply (`WRONGTYPE`, a script error, an unexpected reply): that
    /// fails the request that met it, and must not degrade the instance
    /// for every other user.
    pub(crate) fn is_connectivity(&self) -> bool {
        #[cfg(feature = "redis")]
        use redis::{ErrorKind, ServerErrorKind};
        match self {
            RedisFailure::Timeout(_) | RedisFailure::NotConnected => true,
            RedisFailure::Protocol(_) => false,
            #[cfg(not(feature = "redis"))]
            RedisFailure::NotBuilt => false,
            #[cfg(feature = "redis")]
            RedisFailure::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || matches!(
                        e.kind(),
                        ErrorKind::Io
                            | ErrorKind::AuthenticationFailed
                            | ErrorKind::ClusterConnectionNotFound
                            | ErrorKind::Server(
                                ServerErrorKind::ClusterDown
                                    | ServerErrorKind::MasterDown
                                    | ServerErrorKind::BusyLoading
                                    | ServerErrorKind::TryAgain
                                    | ServerErrorKind::ReadOnly
                            )
                    )
            }
        }
    }
}

pub(crate) struct Redis {
    #[cfg(feature = "redis")]
    urls: Vec<String>,
    #[cfg(feature = "redis")]
    cluster: bool,
    #[cfg(feature = "redis")]
    timeout: Duration,
    prefix: String,
    #[cfg(feature = "redis")]
    conn: Mutex<Option<Conn>>,
}

#[cfg(feature = "redis")]
impl Redis {
    pub(crate) fn new(urls: Vec<String>, cluster: bool, timeout: Duration, prefix: String) -> Self {
        Redis {
            urls,
            cluster,
            timeout,
            prefix,
            conn: Mutex::new(None),
        }
    }

    /// Connects (or reconnects after a failed start). A failure leaves the
    /// tier disconnected; the probe tries again.
    pub(crate) async fn connect(&self) -> Result<(), RedisFailure> {
        let conn = tokio::time::timeout(self.timeout * 4, async {
            if self.cluster {
                let client = redis::cluster::ClusterClient::builder(self.urls.clone())
                    .connection_timeout(self.timeout)
                    .response_timeout(self.timeout)
                    .build()?;
                Ok::<_, RedisError>(Conn::Cluster(client.get_async_connection().await?))
            } else {
                let client = redis::Client::open(self.urls[0].as_str())?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1);
                Ok(Conn::Single(
                    client.get_connection_manager_with_config(config).await?,
                ))
            }
        })
        .await
        .map_err(|_| RedisFailure::Timeout(self.timeout * 4))??;
        *self.conn.locked() = Some(conn);
        Ok(())
    }

    fn conn(&self) -> Result<Conn, RedisFailure> {
        self.conn.locked().clone().ok_or(RedisFailure::NotConnected)
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, RedisFailure> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(RedisFailure::Timeout(self.timeout)),
        }
    }

    async fn invoke<T: FromRedisValue>(
        &self,
        inv: &ScriptInvocation<'_>,
    ) -> Result<T, RedisFailure> {
        async fn go<T: FromRedisValue, C: ConnectionLike>(
            inv: &ScriptInvocation<'_>,
            mut c: C,
        ) -> Result<T, RedisError> {
            inv.invoke_async(&mut c).await
        }
        match self.conn()? {
            Conn::Single(c) => self.bounded(go(inv, c)).await,
            Conn::Cluster(c) => self.bounded(go(inv, c)).await,
        }
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RedisFailure> {
        match self.conn()? {
            Conn::Single(mut c) => self.bounded(cmd.query_async(&mut c)).await,
            Conn::Cluster(mut c) => self.bounded(cmd.query_async(&mut c)).await,
        }
    }

    pub(crate) async fn ping(&self) -> Result<(), RedisFailure> {
        let pong: String = self.query(&redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(RedisFailure::Protocol(pong))
        }
    }
}

impl Redis {
    // ---- keys ------------------------------------------------------------

    fn user_tag(&self, user: &str) -> String {
        format!("{}:{{{}:{}}}", self.prefix, user.len(), user)
    }

    pub(crate) fn counter_key(&self, user: &str, kind: &str, period_start_ms: i64) -> String {
        format!("{}:c:{}:{}", self.user_tag(user), kind, period_start_ms)
    }

    fn version_key(&self, user: &str) -> String {
        format!("{}:v", self.user_tag(user))
    }

    fn record_key(&self, user: &str, request_id: &str) -> String {
        format!("{}:r:{}", self.user_tag(user), request_id)
    }

    fn owner_key(&self, request_id: &str) -> String {
        format!("{}:rq:{}", self.prefix, request_id)
    }

    fn plans_key(&self) -> String {
        format!("{}:plans:v", self.prefix)
    }
}

#[cfg(feature = "redis")]
impl Redis {
    // ---- operations --------------------------------------------------------

    /// Strict admission: check the limit, add the units and record the
    /// request id, atomically (see `ADMIT`).
    pub(crate) async fn admit(&self, a: &Admission<'_>) -> Result<AdmitReply, RedisFailure> {
        let mut inv = ADMIT.key(self.counter_key(a.user, a.kind, a.period_start_ms));
        inv.key(self.version_key(a.user));
        inv.key(self.record_key(a.user, a.request_id.unwrap_or("")));
        inv.arg(a.amount)
            .arg(a.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX)))
            .arg(a.seed)
            .arg(a.expire_at_ms)
            .arg(a.version)
            .arg(a.dedup_ttl_ms)
            .arg(if a.request_id.is_some() { "1" } else { "0" })
            .arg(a.period_start_ms)
            .arg(a.kind);
        if let Some(rid) = a.request_id {
            // The owner index lives in another slot, so it cannot be part
            // of the script. It is claimed first (`SET NX GET`, Redis 7):
            // an id another user already holds, on any instance, must be
            // refused before anything is admitted, or those units would be
            // counted in Redis for a request that is answered 409. This
            // costs one round trip more per consume that carries an id.
            let mut set = redis::cmd("SET");
            set.arg(self.owner_key(rid))
                .arg(a.user)
                .arg("NX")
                .arg("PX")
                .arg(a.dedup_ttl_ms)
                .arg("GET");
            let owner: Option<String> = self.query(&set).await?;
            if owner.is_some_and(|o| o != a.user) {
                return Ok(AdmitReply::OtherOwner);
            }
        }
        let reply: Vec<String> = self.invoke(&inv).await?;
        parse_admit(&reply)
    }

    /// Takes a lease of up to `lease_size` units, giving back `returning`
    /// unused units of an earlier lease in the same step (see `LEASE`).
    pub(crate) async fn lease(
        &self,
        a: &Admission<'_>,
        lease_size: u64,
    ) -> Result<LeaseReply, RedisFailure> {
        let mut inv = LEASE.key(self.counter_key(a.user, a.kind, a.period_start_ms));
        inv.key(self.version_key(a.user));
        inv.arg(a.amount)
            .arg(lease_size)
            .arg(a.limit.unwrap_or(u64::MAX >> 12))
            .arg(a.seed)
            .arg(a.expire_at_ms)
            .arg(a.version);
        let reply: Vec<String> = self.invoke(&inv).await?;
        let n = |i: usize| -> Result<i64, RedisFailure> {
            reply
                .get(i)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| RedisFailure::Protocol(format!("{reply:?}")))
        };
        // Negative numbers other than the -1 marker are a protocol error,
        // never a huge grant.
        let unsigned =
            |v: i64| u64::try_from(v).map_err(|_| RedisFailure::Protocol(format!("{reply:?}")));
        Ok(match n(0)? {
            -1 => LeaseReply::Stale(unsigned(n(1)?)?),
            g => LeaseReply::Granted {
                units: unsigned(g)?,
                used: unsigned(n(1)?.max(0))?,
            },
        })
    }

    /// Gives unused leased units (or units admitted on top) back to a
    /// counter, if it still exists: an expired counter has nothing to give
    /// them back to.
    pub(crate) async fn give_back(
        &self,
        counter_key: &str,
        units: u64,
    ) -> Result<(), RedisFailure> {
        let mut inv = GIVE_BACK.key(counter_key);
        inv.arg(units);
        let _: i64 = self.invoke(&inv).await?;
        Ok(())
    }

    /// Adds units admitted while Redis was unreachable to a counter that
    /// survived the outage (a counter that did not is seeded afresh from
    /// the database and this instance's pending units, which include them).
    pub(crate) async fn add_debt(&self, counter_key: &str, units: u64) -> Result<(), RedisFailure> {
        let mut inv = ADD_IF_EXISTS.key(counter_key);
        inv.arg(units);
        let _: i64 = self.invoke(&inv).await?;
        Ok(())
    }

    /// The counter's current value, if it exists.
    pub(crate) async fn counter(&self, counter_key: &str) -> Result<Option<u64>, RedisFailure> {
        let mut get = redis::cmd("GET");
        get.arg(counter_key);
        self.query(&get).await
    }

    /// The user a request id was admitted for, by any instance.
    pub(crate) async fn owner(&self, request_id: &str) -> Result<Option<String>, RedisFailure> {
        let mut get = redis::cmd("GET");
        get.arg(self.owner_key(request_id));
        self.query(&get).await
    }

    /// Refunds a request id once across all instances (see `REFUND`).
    pub(crate) async fn refund(
        &self,
        user: &str,
        request_id: &str,
    ) -> Result<RefundReply, RedisFailure> {
        // The counter key depends on the record's kind and period: read
        // them first (they never change), then refund atomically.
        let record = self.record_key(user, request_id);
        let mut get = redis::cmd("HMGET");
        get.arg(&record).arg("k").arg("p");
        let found: Vec<Option<String>> = self.query(&get).await?;
        let (Some(kind), Some(period)) = (found[0].clone(), found[1].clone()) else {
            return Ok(RefundReply::Unknown);
        };
        let period: i64 = period
            .parse()
            .map_err(|_| RedisFailure::Protocol(period.clone()))?;
        let counter = self.counter_key(user, &kind, period);
        let mut inv = REFUND.key(record);
        inv.key(counter);
        let reply: Vec<String> = self.invoke(&inv).await?;
        Ok(match reply.first().map(String::as_str) {
            Some("unknown") => RefundReply::Unknown,
            Some("refunded") => RefundReply::AlreadyRefunded,
            Some("ok") if reply.len() == 3 => RefundReply::Refunded {
                kind,
                period_start_ms: period,
                units: if reply[1] == "1" {
                    reply[2]
                        .parse()
                        .map_err(|_| RedisFailure::Protocol(format!("{reply:?}")))?
                } else {
                    0
                },
            },
            _ => return Err(RedisFailure::Protocol(format!("{reply:?}"))),
        })
    }

    /// Bumps a user's version: every instance reloads the user's profile
    /// from the database before its next decision for that user.
    pub(crate) async fn bump_user(&self, user: &str) -> Result<u64, RedisFailure> {
        let mut incr = redis::cmd("INCR");
        incr.arg(self.version_key(user));
        self.query(&incr).await
    }

    pub(crate) async fn bump_plans(&self) -> Result<u64, RedisFailure> {
        let mut incr = redis::cmd("INCR");
        incr.arg(self.plans_key());
        self.query(&incr).await
    }

    pub(crate) async fn plans_version(&self) -> Result<u64, RedisFailure> {
        let mut get = redis::cmd("GET");
        get.arg(self.plans_key());
        Ok(self.query::<Option<u64>>(&get).await?.unwrap_or(0))
    }
}

/// The arguments of one admission (strict or lease).
pub(crate) struct Admission<'a> {
    pub user: &'a str,
    pub kind: &'a str,
    pub period_start_ms: i64,
    pub amount: u64,
    pub limit: Option<u64>,
    /// The counter's value if it must be created: the database's count plus
    /// this instance's pending units. Set only if absent, so several
    /// instances seeding at once never add up.
    pub seed: u64,
    /// When the counter expires (the period's end plus a day), 0 for never.
    pub expire_at_ms: i64,
    /// The user's version this instance's profile reflects.
    pub version: u64,
    pub request_id: Option<&'a str>,
    pub dedup_ttl_ms: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AdmitReply {
    Decided {
        allowed: bool,
        used: u64,
    },
    /// The request id was decided before (by any instance).
    Duplicate {
        allowed: bool,
        used: u64,
        kind: String,
        amount: u64,
    },
    /// The user changed (admin); reload the profile and retry.
    Stale(u64),
    /// The request id belongs to another user: nothing was admitted.
    OtherOwner,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LeaseReply {
    /// `units` were granted (0: the quota is spent); `used` is the counter
    /// after the grant.
    Granted {
        units: u64,
        used: u64,
    },
    Stale(u64),
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RefundReply {
    Unknown,
    AlreadyRefunded,
    Refunded {
        kind: String,
        period_start_ms: i64,
        units: u64,
    },
}

#[cfg(feature = "redis")]
fn parse_admit(reply: &[String]) -> Result<AdmitReply, RedisFailure> {
    let bad = || RedisFailure::Protocol(format!("{reply:?}"));
    let n = |i: usize| -> Result<u64, RedisFailure> {
        reply.get(i).and_then(|s| s.parse().ok()).ok_or_else(bad)
    };
    match reply.first().map(String::as_str) {
        Some("stale") => Ok(AdmitReply::Stale(n(1)?)),
        Some("dup") if reply.len() == 5 => Ok(AdmitReply::Duplicate {
            allowed: reply[1] == "1",
            used: n(2)?,
            kind: reply[3].clone(),
            amount: n(4)?,
        }),
        Some(a @ ("0" | "1")) => Ok(AdmitReply::Decided {
            allowed: a == "1",
            used: n(1)?,
        }),
        _ => Err(bad()),
    }
}

// Scripts. Every value goes back as a string (`tostring`), so the reply is
// always a flat array of strings whatever Lua's number formatting does.
// Numbers stay below 2^53 (amounts are at most 10^9 per consume), exact in
// Lua's doubles.

/// The counter (`KEYS[1]`) as a number, set to `seed` (with an expiry
/// at `expire_at` ms, unless it is '0') if Redis does not hold it: every
/// script that admits starts from it.
#[cfg(feature = "redis")]
const SEEDED: &str = r#"
local function seeded(seed, expire_at)
  local used = redis.call('GET', KEYS[1])
  if not used then
    redis.call('SET', KEYS[1], seed)
    if expire_at ~= '0' then redis.call('PEXPIREAT', KEYS[1], expire_at) end
    used = seed
  end
  return tonumber(used)
end
"#;

/// A script that starts with [`SEEDED`].
#[cfg(feature = "redis")]
fn seeded_script(body: &str) -> Script {
    Script::new(&format!("{SEEDED}{body}"))
}

/// KEYS: counter, user version, request record. ARGV: amount, limit (-1 for
/// none), seed, expire-at ms (0 never), expected version, dedup ttl ms,
/// has-request-id, period start ms, kind.
#[cfg(feature = "redis")]
static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    seeded_script(
        r#"
local v = redis.call('GET', KEYS[2]) or '0'
if v ~= ARGV[5] then return {'stale', v} end
if ARGV[7] == '1' then
  local r = redis.call('HMGET', KEYS[3], 'a', 'u', 'k', 'n')
  if r[1] then return {'dup', r[1], r[2], r[3], r[4]} end
end
local used = seeded(ARGV[3], ARGV[4])
local amount = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local allowed = '0'
if limit < 0 or used + amount <= limit then
  used = redis.call('INCRBY', KEYS[1], amount)
  allowed = '1'
end
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[3], 'a', allowed, 'u', used, 'k', ARGV[9], 'p', ARGV[8], 'n', ARGV[1])
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
end
return {allowed, tostring(used)}
"#,
    )
});

/// KEYS: counter, user version. ARGV: amount, lease size, limit, seed,
/// expire-at ms, expected version. Grants half of what remains, capped by
/// the lease size and at least the amount asked for: leases shrink near the
/// limit so no idle instance strands the last units.
#[cfg(feature = "redis")]
static LEASE: LazyLock<Script> = LazyLock::new(|| {
    seeded_script(
        r#"
local v = redis.call('GET', KEYS[2]) or '0'
if v ~= ARGV[6] then return {'-1', v} end
local used = seeded(ARGV[4], ARGV[5])
local amount = tonumber(ARGV[1])
local remaining = tonumber(ARGV[3]) - used
if remaining < amount then return {'0', tostring(used)} end
local grant = math.floor(remaining / 2)
if grant > tonumber(ARGV[2]) then grant = tonumber(ARGV[2]) end
if grant < amount then grant = amount end
used = redis.call('INCRBY', KEYS[1], grant)
return {tostring(grant), tostring(used)}
"#,
    )
});

/// KEYS: counter. ARGV: units. Never below zero (a counter re-seeded after
/// Redis lost its data may be lower than the units handed out before).
#[cfg(feature = "redis")]
static GIVE_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local u = redis.call('GET', KEYS[1])
if not u then return -1 end
local n = tonumber(u) - tonumber(ARGV[1])
if n < 0 then n = 0 end
redis.call('SET', KEYS[1], n, 'KEEPTTL')
return n
"#,
    )
});

/// KEYS: counter. ARGV: units.
#[cfg(feature = "redis")]
static ADD_IF_EXISTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCRBY', KEYS[1], ARGV[1]) end
return -1
"#,
    )
});

/// KEYS: request record, counter. Marks the record refunded and takes its
/// units off the counter, once.
#[cfg(feature = "redis")]
static REFUND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local r = redis.call('HMGET', KEYS[1], 'a', 'r', 'n')
if not r[1] then return {'unknown'} end
if r[2] then return {'refunded'} end
redis.call('HSET', KEYS[1], 'r', '1')
if r[1] == '1' then
  local u = redis.call('GET', KEYS[2])
  if u then
    local n = tonumber(u) - tonumber(r[3])
    if n < 0 then n = 0 end
    redis.call('SET', KEYS[2], n, 'KEEPTTL')
  end
end
return {'ok', r[1], r[3]}
"#,
    )
});

#[cfg(all(test, feature = "redis"))]
mod tests;

#[cfg(not(feature = "redis"))]
mod not_built;
