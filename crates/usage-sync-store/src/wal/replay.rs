//! Recovery: rebuild what the ledger held from the newest complete
//! segment, and the request ids it remembered from the segments before it.
//!
//! Every segment starts with a checkpoint of the units outside the store,
//! so one segment suffices for those (read on through any later one whose
//! checkpoint never finished). Request ids are not in checkpoints:
//! a segment whose consumes carried ids is kept until the newest of them
//! has left the dedup window (see [`super::Wal`]), and recovery reads the
//! ids, and the refunds of them, from every segment still there. A torn
//! final record of the newest segment is dropped and reported; any other
//! damage stops the start with the file and offset.
//!
//! Replay is additive: unpersisted units per (user, kind, period) start at
//! the checkpoint's values, consumes add, refunds subtract, and a `Done`
//! subtracts the deltas of its intent. Intents without a `Done` are
//! returned as outstanding: the caller asks the store whether their flush
//! id was applied (then they are done) or re-sends them under that id.
//!
//! Records keep arriving while a checkpoint is written (it takes the
//! ledger one shard at a time), so a segment holds, after its own
//! checkpoint started, changes from before their shard was taken. Those
//! are marked (`precut`, per delta for a `Done`): the checkpoint's figure
//! for their counter holds them already, and replay from that checkpoint
//! skips their units (never their request ids). A crash before the
//! checkpoint finished leaves a newest segment whose checkpoint is
//! incomplete: recovery then replays the segment before it and reads on
//! through the newer one, applying every change and none of its
//! checkpoint's figures. Both ways give the same units (a test checks it
//! after checkpoints written beside concurrent changes).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use usage_sync_core::{DedupKey, Fingerprint, FlushId, Timestamp};

use super::codec::{self, DedupEntry, LogRecord, LoggedDelta, ScanEnd};
use super::{list_segments, units};
use crate::error::StoreError;

/// A request id recovered from the log: the log's own entry, owned.
pub type RecoveredDedup = DedupEntry<'static>;

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
    /// Remembered requests, by the fingerprint of their id under
    /// `dedup_key`.
    pub dedup: HashMap<Fingerprint, RecoveredDedup>,
    /// The key the ids were fingerprinted with: the ledger must use it.
    pub dedup_key: Option<DedupKey>,
    /// Each segment kept (the one replayed and those before it), with the
    /// time of the newest record in it that names a request id: the log
    /// deletes it once that has left the dedup window.
    pub id_segments: Vec<(u64, Option<Timestamp>)>,
    pub records: u64,
    /// Bytes of valid records in the segment replayed (its zero-filled
    /// rest and a torn tail excluded).
    pub bytes: u64,
    /// A dropped torn tail: (file, offset, bytes dropped, reason).
    pub torn: Option<(PathBuf, u64, u64, String)>,
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
    /// Units the segment's own records counted (consumes admitted minus
    /// refunds, checkpoint excluded), as the writer counts them for the
    /// manifest.
    units: i64,
    /// Every refunded request: a refund may be in a later segment than
    /// its consume, so the flags are applied once all are read.
    refunds: HashSet<Fingerprint>,
    /// The newest record naming a request id.
    ids_until: Option<Timestamp>,
    /// Continuing from an earlier segment's complete checkpoint through a
    /// later one whose checkpoint never finished: every change counts,
    /// whichever side of a cut it was made on, and that checkpoint's own
    /// figures are ignored.
    chain: bool,
}

impl Replayer {
    fn with_key(key: DedupKey) -> Self {
        let mut r = Replayer::default();
        r.state.dedup_key = Some(key);
        r
    }

    /// The fingerprint of a request id under the replay's key.
    fn fingerprint(&mut self, request_id: &str) -> Fingerprint {
        self.state
            .dedup_key
            .get_or_insert_with(DedupKey::random)
            .fingerprint(request_id)
    }

    pub fn apply(&mut self, rec: LogRecord<'_>) {
        let (fp, at) = match &rec {
            LogRecord::Consume {
                request_id: Some(rid),
                at,
                ..
            }
            | LogRecord::Refund {
                request_id: rid,
                at,
                ..
            }
            | LogRecord::Dedup {
                request_id: rid,
                entry: DedupEntry { at, .. },
            } => (Some(self.fingerprint(rid)), Some(*at)),
            _ => (None, None),
        };
        if let Some(at) = at {
            self.ids_until = self.ids_until.max(Some(at));
        }
        let s = &mut self.state;
        s.records += 1;
        match rec {
            LogRecord::CheckpointStart { .. } => self.checkpoint_started = true,
            LogRecord::CheckpointEnd => self.checkpoint_complete = true,
            // Continuing from an earlier segment, the figures of this
            // one's (unfinished) checkpoint are already counted.
            LogRecord::Unpersisted { .. } if self.chain => {}
            LogRecord::Unpersisted {
                user,
                kind,
                period_start,
                units,
            } => {
                let key = (user.into_owned(), kind.into_owned(), period_start);
                *s.unpersisted.entry(key).or_default() += units;
            }
            LogRecord::Consume {
                user,
                kind,
                period_start,
                amount,
                request_id,
                decision,
                at,
                precut,
            } => {
                if decision.allowed {
                    // Made before its shard's cut: this segment's
                    // checkpoint figure holds it already.
                    if self.chain || !precut {
                        *s.unpersisted
                            .entry((user.to_string(), kind.to_string(), period_start))
                            .or_default() += units(amount);
                    }
                    self.units += units(amount);
                }
                if let (Some(_), Some(fp)) = (request_id, fp) {
                    s.dedup.insert(
                        fp,
                        DedupEntry {
                            user: Cow::Owned(user.into_owned()),
                            kind: Cow::Owned(kind.into_owned()),
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
                user,
                kind,
                period_start,
                amount,
                precut,
                ..
            } => {
                if amount > 0 && (self.chain || !precut) {
                    let key = (user.into_owned(), kind.into_owned(), period_start);
                    *s.unpersisted.entry(key).or_default() -= units(amount);
                }
                self.units -= units(amount);
                if let Some(fp) = fp {
                    self.refunds.insert(fp);
                }
            }
            // A checkpoint re-logs the intents still outstanding: known
            // already when continuing from an earlier segment.
            LogRecord::Intent { id, .. } if self.outstanding_index.contains_key(&id) => {}
            LogRecord::Intent { id, deltas } => {
                self.outstanding_index.insert(id, self.outstanding.len());
                self.outstanding.push(Some((id, deltas.into_logged())));
            }
            LogRecord::Done { id, precut } => match self.outstanding_index.remove(&id) {
                Some(i) => {
                    let (_, deltas) = self.outstanding[i]
                        .take()
                        .expect("indexed intents are present");
                    // Deltas whose counters took the completion before
                    // their shard's cut: the checkpoint's figures hold it.
                    let skip: HashSet<u32> = if self.chain {
                        HashSet::new()
                    } else {
                        precut.into_iter().collect()
                    };
                    for ((u, k, p, d), i) in deltas.into_iter().zip(0u32..) {
                        if !skip.contains(&i) {
                            *s.unpersisted.entry((u, k, p)).or_default() -= d;
                        }
                    }
                }
                None => self.unknown_done += 1,
            },
            LogRecord::Dedup { entry, .. } => {
                s.dedup.insert(
                    fp.expect("a dedup record names its request"),
                    entry.into_owned(),
                );
            }
        }
    }

    pub fn finish(mut self) -> Recovered {
        for fp in &self.refunds {
            if let Some(d) = self.state.dedup.get_mut(fp) {
                d.refunded = true;
            }
        }
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

/// Reads the newest complete segment of `dir`, and checks it against the
/// manifest (see [`super::manifest`]): a log that ends before the last
/// position recorded as durable lost acknowledged records, and the start
/// is refused unless `accept_loss`, which reports the loss and goes on.
pub fn recover(dir: &Path, accept_loss: bool) -> Result<Recovered, StoreError> {
    let manifest = super::manifest::read(dir)?;
    let (rec, replayed) = recover_segments(dir, accept_loss)?;
    let Some(m) = manifest else {
        return Ok(rec);
    };
    let loss = match &replayed {
        None => Some(format!(
            "{}: no complete segment, but the manifest records segment {} with {} records ({} units) on disk",
            dir.display(),
            m.segment,
            m.frames,
            m.units
        )),
        Some(r) if r.segment < m.segment => Some(format!(
            "{}: segment {} is missing (the manifest records it with {} records, {} units, on disk); \
             the newest complete segment is {}",
            dir.display(),
            m.segment,
            m.frames,
            m.units,
            r.segment
        )),
        Some(r) if r.segment == m.segment && r.frames < m.frames => Some(format!(
            "{} ends at offset {} after {} records, but the manifest records {} on disk: {} records \
             and {} units cannot be accounted for",
            rec.segment
                .as_ref()
                .map_or_else(String::new, |p| p.display().to_string()),
            rec.bytes,
            r.frames,
            m.frames,
            m.frames - r.frames,
            m.units - r.units
        )),
        _ => None,
    };
    match loss {
        None => Ok(rec),
        Some(what) if accept_loss => {
            tracing::error!(target: "flush", loss = %what, "write-ahead log damage accepted (--accept-log-loss): starting with what the log still holds; the lost units are not in the database and are not counted");
            Ok(rec)
        }
        Some(what) => Err(StoreError::LogDamage(format!(
            "{what}; refusing to start. Restore the log from a backup, or start with \
             `usage-sync serve --accept-log-loss` to go on without the lost records"
        ))),
    }
}

/// How far a replay got in the segment it chose.
struct Replayed {
    segment: u64,
    frames: u64,
    units: i64,
}

/// How the scan of one segment ended (its damage already judged).
struct Scanned {
    end: ScanEnd,
    /// Frames applied (the next number expected, in a sequenced segment).
    expected: u64,
}

/// Reads `path` into `r`: frames in order, each applied once, refusing a
/// gap, a segment that does not open with a checkpoint, or corruption
/// (unless `accept_loss`, for a gap).
fn scan_segment(
    path: &Path,
    bytes: &[u8],
    r: &mut Replayer,
    accept_loss: bool,
) -> Result<Scanned, StoreError> {
    let mut first = true;
    let mut bad_start = false;
    let mut last_progress = Instant::now();
    // Frame numbers (sequenced segments): the next one expected, the
    // repeats skipped, and the first gap.
    let mut expected = 0u64;
    let mut repeats = 0u64;
    let mut gap: Option<(u64, u64, u64)> = None;
    let end = codec::scan(bytes, |offset, seq, rec| {
        if gap.is_some() {
            return;
        }
        if let Some(seq) = seq {
            if seq < expected {
                // Written twice (a frame, or a run of frames): applied
                // once.
                repeats += 1;
                return;
            }
            if seq > expected {
                gap = Some((offset, expected, seq));
                return;
            }
            expected += 1;
        }
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
    if repeats > 0 {
        tracing::warn!(file = %path.display(), frames = repeats, "frames written twice were skipped (each applied once)");
    }
    if let Some((offset, want, got)) = gap {
        let what = format!(
            "{} at offset {offset}: records {want} to {} are missing (the next record is number {got})",
            path.display(),
            got - 1
        );
        if !accept_loss {
            return Err(StoreError::LogDamage(format!(
                "{what}; refusing to start. Restore the log from a backup, or start with \
                 `usage-sync serve --accept-log-loss` to go on without them"
            )));
        }
        tracing::error!(target: "flush", loss = %what, "write-ahead log damage accepted (--accept-log-loss): records after the gap are ignored");
    }
    if bad_start {
        return Err(StoreError::LogDamage(format!(
            "{}: does not start with a checkpoint",
            path.display()
        )));
    }
    if let ScanEnd::Corrupt { offset, reason } = &end {
        return Err(StoreError::LogDamage(format!(
            "{} at offset {offset}: {reason}; refusing to start (move the file away only if its records are known to be in the database)",
            path.display()
        )));
    }
    Ok(Scanned { end, expected })
}

fn read_segment(path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        source,
    })
}

/// Reads the request ids of the segments before the one replayed (kept
/// because their ids may still be inside the dedup window) into `r`, and
/// returns each one's newest id time. Its units are not read: the
/// replayed segment's checkpoint holds them. They were synced before the
/// next segment got a byte, so any damage is refused (unless
/// `accept_loss`: their ids are then forgotten, which only risks counting
/// a retry of one of them twice).
fn read_older_ids(
    older: &[(u64, PathBuf)],
    replayed: u64,
    r: &mut Replayer,
    accept_loss: bool,
) -> Result<Vec<(u64, Option<Timestamp>)>, StoreError> {
    let key = *r.state.dedup_key.get_or_insert_with(DedupKey::random);
    let mut kept = Vec::new();
    let mut dedup = HashMap::new();
    for (k, (seq, path)) in older.iter().enumerate() {
        let next = older.get(k + 1).map_or(replayed, |(s, _)| *s);
        let read = || -> Result<Replayer, StoreError> {
            let mut one = Replayer::with_key(key);
            let scanned = scan_segment(path, &read_segment(path)?, &mut one, accept_loss)?;
            if let ScanEnd::Torn { offset, reason } = scanned.end {
                return Err(StoreError::LogDamage(format!(
                    "{} at offset {offset}: {reason} in a segment that is not the newest",
                    path.display()
                )));
            }
            // An unfinished checkpoint is fine here: its records were
            // carried into a later segment's checkpoint, and only the ids
            // are read.
            if next != seq + 1 {
                return Err(StoreError::LogDamage(format!(
                    "{}: segments {} to {} are missing",
                    path.display(),
                    seq + 1,
                    next - 1
                )));
            }
            Ok(one)
        };
        match read() {
            Ok(one) => {
                kept.push((*seq, one.ids_until));
                r.refunds.extend(one.refunds);
                dedup.extend(one.state.dedup);
            }
            Err(e) if accept_loss => {
                tracing::error!(target: "flush", loss = %e, "write-ahead log damage accepted (--accept-log-loss): request ids this segment held may be forgotten");
                kept.push((*seq, None));
            }
            Err(StoreError::LogDamage(what)) => {
                return Err(StoreError::LogDamage(format!(
                    "{what}: the request ids it held would be forgotten, so a retry of one \
                     could count twice; refusing to start. Restore the log from a backup, or \
                     start with `usage-sync serve --accept-log-loss`"
                )));
            }
            Err(e) => return Err(e),
        }
    }
    // The replayed segment's own records are newer.
    for (fp, d) in dedup {
        r.state.dedup.entry(fp).or_insert(d);
    }
    Ok(kept)
}

fn recover_segments(
    dir: &Path,
    accept_loss: bool,
) -> Result<(Recovered, Option<Replayed>), StoreError> {
    let started = Instant::now();
    let segments = list_segments(dir)?;
    // The newest segment whose checkpoint is complete. Any after it have
    // a checkpoint that never finished (a crash, or a full disk, while it
    // was written); records kept arriving meanwhile, so they are read on
    // from it.
    let mut chosen = None;
    for (i, (_, path)) in segments.iter().enumerate().rev() {
        let bytes = read_segment(path)?;
        let mut r = Replayer::default();
        let scanned = scan_segment(path, &bytes, &mut r, accept_loss)?;
        if r.checkpoint_complete {
            chosen = Some((i, bytes, r, scanned));
            break;
        }
        tracing::warn!(file = %path.display(), "a segment whose checkpoint never finished: its records are read on from the segment before it");
    }
    let Some((i, mut bytes, mut r, Scanned { mut end, expected })) = chosen else {
        return Ok((
            Recovered {
                elapsed: started.elapsed(),
                ..Recovered::default()
            },
            None,
        ));
    };
    let (segment, mut path) = (segments[i].0, segments[i].1.clone());
    let replayed = Replayed {
        segment,
        frames: if expected > 0 {
            expected
        } else {
            r.state.records
        },
        units: r.units,
    };
    let mut id_segments = read_older_ids(&segments[..i], segment, &mut r, accept_loss)?;
    id_segments.push((segment, r.ids_until));
    let mut prev = segment;
    for (seq, next) in &segments[i + 1..] {
        if *seq != prev + 1 {
            return Err(StoreError::LogDamage(format!(
                "{}: segments {} to {} are missing; refusing to start",
                next.display(),
                prev + 1,
                seq - 1
            )));
        }
        prev = *seq;
        // Only the newest may end torn: each segment is synced before the
        // next one gets a byte.
        if let ScanEnd::Torn { offset, reason } = &end {
            return Err(StoreError::LogDamage(format!(
                "{} at offset {offset}: {reason} in a segment that is not the newest",
                path.display()
            )));
        }
        r.chain = true;
        r.ids_until = None;
        bytes = read_segment(next)?;
        end = scan_segment(next, &bytes, &mut r, accept_loss)?.end;
        id_segments.push((*seq, r.ids_until));
        path = next.clone();
    }
    let mut state = r.finish();
    state.id_segments = id_segments;
    let valid_end = match &end {
        ScanEnd::Clean { end } => *end,
        ScanEnd::Torn { offset, .. } | ScanEnd::Corrupt { offset, .. } => *offset,
    };
    if let ScanEnd::Torn { offset, reason } = end {
        // What the interrupted write left, up to the zero-filled rest.
        let tail = &bytes[usize::try_from(offset).unwrap_or(bytes.len())..];
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
    state.segment = Some(path);
    state.bytes = valid_end;
    state.elapsed = started.elapsed();
    Ok((state, Some(replayed)))
}

/// One segment replayed from its own checkpoint (`prev: None`), or
/// replayed on from `prev`'s as if its own checkpoint had never finished:
/// the two must agree (see the log's tests).
#[cfg(test)]
pub(crate) fn replay_for_test(prev: Option<&Path>, path: &Path) -> Recovered {
    let mut r = Replayer::default();
    if let Some(prev) = prev {
        scan_segment(prev, &read_segment(prev).unwrap(), &mut r, false).unwrap();
        r.chain = true;
    }
    scan_segment(path, &read_segment(path).unwrap(), &mut r, false).unwrap();
    r.finish()
}
