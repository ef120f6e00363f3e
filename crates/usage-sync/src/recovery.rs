//! Start-up recovery from the write-ahead log.
//!
//! Order matters, and each step is safe to repeat if the process dies in
//! the middle (recovery writes nothing to the old segment; the new state
//! only becomes authoritative once its checkpoint is on disk):
//!
//! 1. replay the newest complete segment (in `Wal::open`);
//! 2. for each batch intent without a completion, ask the store whether its
//!    flush id was applied: if so, its deltas are persisted; if not, it
//!    will be re-sent under the same id (a timed-out commit that did land
//!    is caught by the same check on the next attempt);
//! 3. make every user with unpersisted units resident, from its persisted
//!    state in the store plus the recovered pending and in-flight units;
//! 4. restore request ids still inside the dedup window;
//! 5. attach the log to the ledger and write a checkpoint into a new
//!    segment; once it is durable, the old segments are deleted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};
use usage_sync_core::{Delta, FlushBatch, RecoveredSlot, Timestamp, Trigger, UserId};
use usage_sync_store::wal::{Recovered, Wal};

use crate::engine::Engine;
use crate::error::Error;

/// What recovery found, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub records: u64,
    pub users: usize,
    /// Units not in the store when the process stopped.
    pub unpersisted_units: i64,
    /// Intents found already applied in the store (crash after commit).
    pub intents_applied: usize,
    /// Intents re-sent under their original flush id.
    pub intents_resent: usize,
    pub request_ids: usize,
    pub torn_tail_bytes: u64,
    pub millis: u64,
}

impl Engine {
    pub(crate) async fn recover(
        &self,
        wal: &Arc<Wal>,
        rec: Recovered,
    ) -> Result<RecoveryReport, Error> {
        let started = Instant::now();
        let inner = &self.inner;
        let kinds = self.kinds().clone();
        let now = self.now();
        let mut report = RecoveryReport {
            records: rec.records,
            torn_tail_bytes: rec.torn.as_ref().map_or(0, |t| t.2),
            ..Default::default()
        };

        // 2. Outstanding intents: applied or to be re-sent.
        let mut unpersisted = rec.unpersisted;
        let mut resend = Vec::new();
        for (id, deltas) in rec.outstanding {
            if inner.store.flush_applied(id).await? {
                for (u, k, p, d) in &deltas {
                    *unpersisted.entry((u.clone(), k.clone(), *p)).or_default() -= d;
                }
                report.intents_applied += 1;
            } else {
                resend.push((id, deltas));
            }
        }
        report.intents_resent = resend.len();
        let mut in_flight: HashMap<(String, String, Timestamp), i64> = HashMap::new();
        for (_, deltas) in &resend {
            for (u, k, p, d) in deltas {
                *in_flight.entry((u.clone(), k.clone(), *p)).or_default() += d;
            }
        }

        // 3. Users with unpersisted units.
        let kind_index = |name: &str| -> Result<usize, Error> {
            kinds.get(name).map(|k| k.index()).map_err(|_| {
                Error::Invalid(format!(
                    "the write-ahead log holds units of kind '{name}', which is not configured; add it back to recover them"
                ))
            })
        };
        let mut per_user: HashMap<String, Vec<RecoveredSlot>> = HashMap::new();
        let mut keys: Vec<_> = unpersisted
            .keys()
            .chain(in_flight.keys())
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let units = unpersisted.get(&key).copied().unwrap_or(0);
            let fl = in_flight.get(&key).copied().unwrap_or(0);
            if units == 0 && fl == 0 {
                continue;
            }
            report.unpersisted_units += units;
            let (user, kind, period_start) = key;
            per_user.entry(user).or_default().push(RecoveredSlot {
                kind: kind_index(&kind)?,
                period_start,
                pending: units - fl,
                in_flight: fl,
            });
        }
        report.users = per_user.len();
        let mut loaded = 0usize;
        let mut last_progress = Instant::now();
        for (user, slots) in per_user {
            let user = UserId::parse(&user)
                .map_err(|e| Error::Invalid(format!("log holds an invalid user id: {e}")))?;
            let (profile, rows) = self.read_user(&user).await?;
            inner
                .ledger
                .recover_user(&user, profile, &rows, &slots, now);
            loaded += 1;
            if last_progress.elapsed().as_secs() >= 2 {
                last_progress = Instant::now();
                info!(
                    loaded,
                    total = report.users,
                    "recovery: loading users with unpersisted units"
                );
            }
        }

        // 4. Request ids still inside the window (the ledger decides).
        // Oldest first: the ledger keeps ids in first-seen order.
        let mut ids: Vec<_> = rec.dedup.into_iter().collect();
        ids.sort_by_key(|(_, d)| d.at);
        for (fp, d) in ids {
            let (Ok(user), Ok(kind)) = (UserId::parse(&d.user), kinds.get(&d.kind)) else {
                warn!("skipping an unreadable request id record in the log");
                continue;
            };
            if inner.ledger.recover_request(
                fp,
                &user,
                *kind,
                d.amount,
                &d.decision.to_decision(d.period_start),
                d.refunded,
                d.at,
                now,
            ) {
                report.request_ids += 1;
            }
        }

        // Re-send unfinished batches under their own ids.
        for (id, deltas) in &resend {
            let mut ds = Vec::with_capacity(deltas.len());
            for (u, k, p, d) in deltas {
                ds.push(Delta {
                    user: UserId::parse(u).map_err(|e| {
                        Error::Invalid(format!("log holds an invalid user id: {e}"))
                    })?,
                    kind: *kinds
                        .get(k)
                        .map_err(|_| Error::Invalid(format!("log holds unknown kind '{k}'")))?,
                    period_start: *p,
                    delta: *d,
                });
            }
            inner.requeue(FlushBatch {
                id: *id,
                trigger: Trigger::Recovery,
                deltas: ds,
            });
        }
        wal.restore_outstanding(&resend);

        if inner.config.crash_in_recovery {
            eprintln!("usage-sync: fault injection: aborting in the middle of recovery");
            std::process::abort();
        }

        // 5. From now on every change is logged; the checkpoint makes the
        // recovered state the new starting point.
        inner.ledger.attach_journal(wal.clone());
        wal.checkpoint_at_once(&inner.ledger, now);
        wal.sync().await?;
        report.millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        info!(
            records = report.records,
            users = report.users,
            unpersisted_units = report.unpersisted_units,
            intents_applied = report.intents_applied,
            intents_resent = report.intents_resent,
            request_ids = report.request_ids,
            torn_tail_bytes = report.torn_tail_bytes,
            ms = report.millis,
            "recovered from the write-ahead log"
        );
        Ok(report)
    }
}
