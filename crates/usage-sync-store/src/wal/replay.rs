//! Recovery: rebuild what the ledger held from the newest complete
//! segment.
//!
//! Every segment starts with a checkpoint, so one segment suffices. The
//! newest segment may hold an incomplete checkpoint (a crash while writing
//! it); it holds nothing else (no record is appended while a checkpoint is
//! written) and is ignored. Within the chosen segment, a torn final record
//! is dropped and reported; any other damage stops the start with the file
//! and offset.
//!
//! Replay is additive: unpersisted units per (user, kind, period) start at
//! the checkpoint's values, consumes add, refunds subtract, and a `Done`
//! subtracts the deltas of its intent. Intents without a `Done` are
//! returned as outstanding: the caller asks the store whether their flush
//! id was applied (then they are done) or re-sends them under that id.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use usage_sync_core::{FlushId, Timestamp};

use super::codec::{self, LogRecord, LoggedDecision, LoggedDelta, ScanEnd};
use super::list_segments;
use crate::error::StoreError;

/// A request id recovered from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredDedup {
    pub user: String,
    pub kind: String,
    pub amount: u64,
    pub period_start: Timestamp,
    pub decision: LoggedDecision,
    pub refunded: bool,
    pub at: Timestamp,
}

/// The state held by the log.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Segment replayed, if any.
    pub segment: Option<PathBuf>,
    /// Units not known to be in the store, per (user, kind, period),
    /// including those of outstanding intents.
    pub unpersisted: HashMap<(String, String, Timestamp), i64>,
    /// Batch intents without a `Done`, in log order.
    pub outstanding: Vec<(FlushId, Vec<LoggedDelta>)>,
    pub dedup: HashMap<String, RecoveredDedup>,
    pub records: u64,
    /// Bytes of valid records in the segment replayed (its zero-filled
    /// rest and a torn tail excluded).
    pub bytes: u64,
    /// A dropped torn tail: (file, offset, bytes dropped, reason).
    pub torn: Option<(PathBuf, u64, u64, String)>,
    /// The newest segment, ignored because its checkpoint was interrupted
    /// (it holds nothing else). The log's owner removes it before writing,
    /// or a second interrupted attempt would leave it in the middle.
    pub interrupted: Option<PathBuf>,
    pub elapsed: std::time::Duration,
}

/// Applies records to a [`Recovered`].
#[derive(Default)]
pub struct Replayer {
    state: Recovered,
    outstanding_index: HashMap<FlushId, usize>,
    outstanding: Vec<Option<(FlushId, Vec<LoggedDelta>)>>,
    checkpoint_started: bool,
    checkpoint_complete: bool,
    unknown_done: u64,
}

impl Replayer {
    pub fn apply(&mut self, rec: LogRecord) {
        let s = &mut self.state;
        s.records += 1;
        match rec {
            LogRecord::CheckpointStart { .. } => self.checkpoint_started = true,
            LogRecord::CheckpointEnd => self.checkpoint_complete = true,
            LogRecord::Unpersisted {
                user,
                kind,
                period_start,
                units,
            } => *s.unpersisted.entry((user, kind, period_start)).or_default() += units,
            LogRecord::Consume {
                user,
                kind,
                period_start,
                amount,
                request_id,
                decision,
                at,
            } => {
                if decision.allowed {
                    *s.unpersisted
                        .entry((user.clone(), kind.clone(), period_start))
                        .or_default() += amount as i64;
                }
                if let Some(rid) = request_id {
                    s.dedup.insert(
                        rid,
                        RecoveredDedup {
                            user,
                            kind,
                            amount,
                            period_start,
                            decision,
                            refunded: false,
                            at,
                        },
                    );
                }
            }
            LogRecord::Refund {
                request_id,
                user,
                kind,
                period_start,
                amount,
                ..
            } => {
                if amount > 0 {
                    *s.unpersisted.entry((user, kind, period_start)).or_default() -= amount as i64;
                }
                if let Some(d) = s.dedup.get_mut(&request_id) {
                    d.refunded = true;
                }
            }
            LogRecord::Intent { id, deltas } => {
                self.outstanding_index.insert(id, self.outstanding.len());
                self.outstanding.push(Some((id, deltas)));
            }
            LogRecord::Done { id } => match self.outstanding_index.remove(&id) {
                Some(i) => {
                    let (_, deltas) = self.outstanding[i]
                        .take()
                        .expect("indexed intents are present");
                    for (u, k, p, d) in deltas {
                        *s.unpersisted.entry((u, k, p)).or_default() -= d;
                    }
                }
                None => self.unknown_done += 1,
            },
            LogRecord::Dedup {
                request_id,
                user,
                kind,
                amount,
                period_start,
                decision,
                refunded,
                at,
            } => {
                s.dedup.insert(
                    request_id,
                    RecoveredDedup {
                        user,
                        kind,
                        amount,
                        period_start,
                        decision,
                        refunded,
                        at,
                    },
                );
            }
        }
    }

    pub fn finish(mut self) -> Recovered {
        self.state.outstanding = self.outstanding.into_iter().flatten().collect();
        self.state.unpersisted.retain(|_, v| *v != 0);
        if self.unknown_done > 0 {
            tracing::warn!(
                count = self.unknown_done,
                "log holds completions of batches it has no intent for; ignored"
            );
        }
        self.state
    }
}

/// Reads the newest complete segment of `dir`.
pub fn recover(dir: &Path) -> Result<Recovered, StoreError> {
    let started = Instant::now();
    let segments = list_segments(dir)?;
    let mut interrupted = None;
    for (i, (_, path)) in segments.iter().enumerate().rev() {
        let bytes = std::fs::read(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let mut r = Replayer::default();
        let mut first = true;
        let mut bad_start = false;
        let mut last_progress = Instant::now();
        let end = codec::scan(&bytes, |offset, rec| {
            if first {
                first = false;
                bad_start = !matches!(rec, LogRecord::CheckpointStart { .. });
            }
            r.apply(rec);
            if r.state.records.is_multiple_of(1_000_000) && last_progress.elapsed().as_secs() >= 1 {
                last_progress = Instant::now();
                tracing::info!(
                    records = r.state.records,
                    offset,
                    size = bytes.len(),
                    "replaying the write-ahead log"
                );
            }
        });
        let newest = i == segments.len() - 1;
        if bad_start {
            return Err(StoreError::Corrupt(format!(
                "{}: does not start with a checkpoint",
                path.display()
            )));
        }
        match &end {
            ScanEnd::Corrupt { offset, reason } => {
                return Err(StoreError::Corrupt(format!(
                    "{} at offset {offset}: {reason}; refusing to start (move the file away only if its records are known to be in the database)",
                    path.display()
                )));
            }
            ScanEnd::Torn { .. } | ScanEnd::Clean { .. } => {}
        }
        if !r.checkpoint_complete {
            // Only the newest segment may be an interrupted checkpoint;
            // such a segment holds nothing else.
            if newest {
                tracing::warn!(file = %path.display(), "ignoring a segment whose checkpoint was interrupted");
                interrupted = Some(path.clone());
                continue;
            }
            return Err(StoreError::Corrupt(format!(
                "{}: checkpoint incomplete in a segment that is not the newest",
                path.display()
            )));
        }
        let mut state = r.finish();
        let valid_end = match &end {
            ScanEnd::Clean { end } => *end,
            ScanEnd::Torn { offset, .. } | ScanEnd::Corrupt { offset, .. } => *offset,
        };
        if let ScanEnd::Torn { offset, reason } = end {
            // What the interrupted write left, up to the zero-filled rest.
            let tail = &bytes[offset as usize..];
            let dropped = tail.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1) as u64;
            tracing::warn!(
                file = %path.display(),
                offset,
                dropped_bytes = dropped,
                reason = %reason,
                "dropped a torn record at the end of the write-ahead log (it was never acknowledged)"
            );
            state.torn = Some((path.clone(), offset, dropped, reason));
        }
        state.segment = Some(path.clone());
        state.bytes = valid_end;
        state.interrupted = interrupted;
        state.elapsed = started.elapsed();
        return Ok(state);
    }
    Ok(Recovered {
        interrupted,
        elapsed: started.elapsed(),
        ..Recovered::default()
    })
}
