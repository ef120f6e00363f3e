//! The log's byte format: frames and records.
//!
//! A frame is `len: u32 LE | !len: u32 LE | crc32: u32 LE | payload (len
//! bytes)`; the CRC covers the payload. The length is stored twice (the
//! second time bitwise inverted) because a damaged length in the middle of
//! the log would otherwise claim to run past the end of the file and look
//! exactly like a torn tail, silently hiding every record after it. A payload is a tag byte and fixed-order fields:
//! integers little-endian, strings as one length byte and UTF-8 bytes (ids
//! are at most 128 bytes, kinds 64).
//!
//! **Sequenced segments.** Every segment this version writes starts with a
//! `CheckpointStart` of tag 9, and every payload in it starts with the
//! frame's sequence number in the segment (`u64` LE, 0 for that first
//! frame), then the record. Replay applies them strictly in order: a
//! repeated number (a frame written twice) is skipped, never applied
//! twice; a missing number refuses the start. Segments of earlier versions
//! (tag 7, no numbers) are still read.
//!
//! Reading distinguishes a *torn tail* (the last frame of the file was cut
//! short by a crash or power loss: dropped, reported, never acknowledged)
//! from *corruption* (a bad frame followed by more data: the start stops
//! with the file and offset, never a silent skip).

use usage_sync_core::{Cut, Decision, FlushId, Record, Timestamp};

/// Largest payload accepted when reading. A batch intent of 10 000 rows
/// of 128-byte ids is about 1.5 MiB.
pub const MAX_PAYLOAD: usize = 16 << 20;
pub const HEADER: usize = 12;

pub use super::scan::{ScanEnd, scan};

const T_CONSUME: u8 = 1;
const T_REFUND: u8 = 2;
const T_INTENT: u8 = 3;
const T_DONE: u8 = 4;
const T_UNPERSISTED: u8 = 5;
const T_DEDUP: u8 = 6;
const T_CHECKPOINT_START: u8 = 7;
const T_CHECKPOINT_END: u8 = 8;
/// `CheckpointStart` of a sequenced segment (see the module docs).
pub(super) const T_CHECKPOINT_START_SEQUENCED: u8 = 9;
/// A `Done` some of whose deltas were taken before their user's cut.
const T_DONE_PRECUT: u8 = 12;
/// On a `Consume` or `Refund` tag: the change was made before its shard's
/// cut in this segment's checkpoint, whose figures hold it already.
const PRECUT: u8 = 0x80;

/// The decision stored with a consume (for deduplication after a restart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedDecision {
    pub allowed: bool,
    pub used: u64,
    pub limit: Option<u64>,
}

impl LoggedDecision {
    pub fn to_decision(&self, period_start: Timestamp) -> Decision {
        Decision {
            allowed: self.allowed,
            used: self.used,
            limit: self.limit,
            remaining: self.limit.map(|l| l.saturating_sub(self.used)),
            period_start,
        }
    }
}

/// One delta of a logged batch intent: (user, kind, period, delta).
pub type LoggedDelta = (String, String, Timestamp, i64);

/// A decoded record (owned).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogRecord {
    Consume {
        user: String,
        kind: String,
        period_start: Timestamp,
        amount: u64,
        request_id: Option<String>,
        decision: LoggedDecision,
        at: Timestamp,
        /// Made before its user's cut: the segment's checkpoint holds it.
        precut: bool,
    },
    Refund {
        request_id: String,
        user: String,
        kind: String,
        period_start: Timestamp,
        amount: u64,
        at: Timestamp,
        precut: bool,
    },
    Intent {
        id: FlushId,
        deltas: Vec<LoggedDelta>,
    },
    Done {
        id: FlushId,
        /// Indexes of the intent's deltas whose counters took the
        /// completion before their user's cut.
        precut: Vec<u32>,
    },
    Unpersisted {
        user: String,
        kind: String,
        period_start: Timestamp,
        units: i64,
    },
    /// Checkpoint of an earlier version: a remembered request id. (This
    /// version leaves request ids in the consume records of the segments
    /// that hold them; see `replay`.)
    Dedup {
        request_id: String,
        user: String,
        kind: String,
        amount: u64,
        period_start: Timestamp,
        decision: LoggedDecision,
        refunded: bool,
        at: Timestamp,
    },
    /// First record of every segment: the checkpoint of segment `seq`.
    CheckpointStart { seq: u64 },
    /// The checkpoint is complete.
    CheckpointEnd,
}

struct Enc<'a>(&'a mut Vec<u8>);

impl Enc<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        // Ids are ≤ 128 bytes and kinds ≤ 64 by construction; clamp anyway
        // so a length can never wrap.
        let b = &s.as_bytes()[..s.len().min(255)];
        self.0.push(u8::try_from(b.len()).unwrap_or(u8::MAX));
        self.0.extend_from_slice(b);
    }
    fn decision(&mut self, allowed: bool, used: u64, limit: Option<u64>) {
        self.u8(allowed as u8);
        self.u64(used);
        self.u64(limit.unwrap_or(u64::MAX));
    }
    fn delta(&mut self, user: &str, kind: &str, period_start: i64, delta: i64) {
        self.str(user);
        self.str(kind);
        self.i64(period_start);
        self.i64(delta);
    }
}

/// The single description of a record's bytes. Records borrowed from the
/// ledger (written on the request path) and decoded records (re-logged by
/// checkpoints, and used in tests) are both encoded through this view, so
/// the format is written down exactly once.
enum View<'a> {
    Consume {
        user: &'a str,
        kind: &'a str,
        period_start: i64,
        amount: u64,
        request_id: &'a str,
        allowed: bool,
        used: u64,
        limit: Option<u64>,
        at: i64,
        precut: bool,
    },
    Refund {
        request_id: &'a str,
        user: &'a str,
        kind: &'a str,
        period_start: i64,
        amount: u64,
        at: i64,
        precut: bool,
    },
    Intent {
        id: u128,
        deltas: Deltas<'a>,
    },
    Done {
        id: u128,
        precut: &'a [u32],
    },
    Unpersisted {
        user: &'a str,
        kind: &'a str,
        period_start: i64,
        units: i64,
    },
    Dedup {
        request_id: &'a str,
        user: &'a str,
        kind: &'a str,
        amount: u64,
        period_start: i64,
        allowed: bool,
        used: u64,
        limit: Option<u64>,
        refunded: bool,
        at: i64,
    },
    CheckpointStart {
        seq: u64,
    },
    CheckpointEnd,
}

/// A batch's deltas, as the ledger holds them or as decoded.
enum Deltas<'a> {
    Batch(&'a [usage_sync_core::Delta]),
    Logged(&'a [LoggedDelta]),
}

fn encode_view(v: &View<'_>, seq: Option<u64>, out: &mut Vec<u8>) -> usize {
    frame(out, seq, |e| match v {
        View::Consume {
            user,
            kind,
            period_start,
            amount,
            request_id,
            allowed,
            used,
            limit,
            at,
            precut,
        } => {
            e.u8(T_CONSUME | if *precut { PRECUT } else { 0 });
            e.str(user);
            e.str(kind);
            e.i64(*period_start);
            e.u64(*amount);
            e.str(request_id);
            e.decision(*allowed, *used, *limit);
            e.i64(*at);
        }
        View::Refund {
            request_id,
            user,
            kind,
            period_start,
            amount,
            at,
            precut,
        } => {
            e.u8(T_REFUND | if *precut { PRECUT } else { 0 });
            e.str(request_id);
            e.str(user);
            e.str(kind);
            e.i64(*period_start);
            e.u64(*amount);
            e.i64(*at);
        }
        View::Intent { id, deltas } => {
            e.u8(T_INTENT);
            e.0.extend_from_slice(&id.to_le_bytes());
            match deltas {
                Deltas::Batch(ds) => {
                    e.u64(ds.len() as u64);
                    for d in ds.iter() {
                        e.delta(d.user.as_str(), d.kind.name(), d.period_start.0, d.delta);
                    }
                }
                Deltas::Logged(ds) => {
                    e.u64(ds.len() as u64);
                    for (u, k, p, d) in ds.iter() {
                        e.delta(u, k, p.0, *d);
                    }
                }
            }
        }
        View::Done { id, precut } => {
            e.u8(if precut.is_empty() {
                T_DONE
            } else {
                T_DONE_PRECUT
            });
            e.0.extend_from_slice(&id.to_le_bytes());
            if !precut.is_empty() {
                e.u64(precut.len() as u64);
                for i in precut.iter() {
                    e.0.extend_from_slice(&i.to_le_bytes());
                }
            }
        }
        View::Unpersisted {
            user,
            kind,
            period_start,
            units,
        } => {
            e.u8(T_UNPERSISTED);
            e.str(user);
            e.str(kind);
            e.i64(*period_start);
            e.i64(*units);
        }
        View::Dedup {
            request_id,
            user,
            kind,
            amount,
            period_start,
            allowed,
            used,
            limit,
            refunded,
            at,
        } => {
            e.u8(T_DEDUP);
            e.str(request_id);
            e.str(user);
            e.str(kind);
            e.u64(*amount);
            e.i64(*period_start);
            e.decision(*allowed, *used, *limit);
            e.u8(*refunded as u8);
            e.i64(*at);
        }
        View::CheckpointStart { seq: segment } => {
            e.u8(if seq.is_some() {
                T_CHECKPOINT_START_SEQUENCED
            } else {
                T_CHECKPOINT_START
            });
            e.u64(*segment);
        }
        View::CheckpointEnd => e.u8(T_CHECKPOINT_END),
    })
}

/// Appends one framed record from the ledger, as frame `seq` of its
/// segment. Returns the frame's length.
pub fn encode_frame(rec: &Record<'_>, seq: u64, segment: u64, out: &mut Vec<u8>) -> usize {
    // A change made before its user's cut in this segment's checkpoint.
    let precut = |cut: &Cut| *cut != Cut::NONE && *cut < Cut(segment);
    let done_precut: Vec<u32>;
    let view = match rec {
        Record::Consume {
            user,
            kind,
            period_start,
            amount,
            request_id,
            decision,
            at,
            cut,
        } => View::Consume {
            user: user.as_str(),
            kind: kind.name(),
            period_start: period_start.0,
            amount: *amount,
            request_id: request_id.map_or("", |r| r.as_str()),
            allowed: decision.allowed,
            used: decision.used,
            limit: decision.limit,
            at: at.0,
            precut: precut(cut),
        },
        Record::Refund {
            request_id,
            user,
            kind,
            period_start,
            amount,
            at,
            cut,
        } => View::Refund {
            request_id,
            user: user.as_str(),
            kind: kind.name(),
            period_start: period_start.0,
            amount: *amount,
            at: at.0,
            precut: precut(cut),
        },
        Record::Intent { batch } => View::Intent {
            id: batch.id.0,
            deltas: Deltas::Batch(&batch.deltas),
        },
        Record::Done { id, cuts } => {
            done_precut = (0u32..)
                .zip(cuts.iter())
                .filter(|(_, c)| precut(c))
                .map(|(i, _)| i)
                .collect();
            View::Done {
                id: id.0,
                precut: &done_precut,
            }
        }
        Record::Unpersisted {
            user,
            kind,
            period_start,
            units,
        } => View::Unpersisted {
            user: user.as_str(),
            kind: kind.name(),
            period_start: period_start.0,
            units: *units,
        },
    };
    encode_view(&view, Some(seq), out)
}

/// Appends a checkpoint marker frame, as frame `seq` of its segment: the
/// start of the checkpoint of segment `segment`, or (`None`) its end.
pub fn encode_marker(start: Option<u64>, seq: u64, out: &mut Vec<u8>) -> usize {
    match start {
        Some(segment) => encode_view(&View::CheckpointStart { seq: segment }, Some(seq), out),
        None => encode_view(&View::CheckpointEnd, Some(seq), out),
    }
}

/// The record bytes of a frame (its payload without the sequence number):
/// what a checkpoint re-logs, under a new number, for an intent.
pub fn record_body(frame: &[u8], sequenced: bool) -> &[u8] {
    &frame[HEADER + if sequenced { 8 } else { 0 }..]
}

/// Appends `body` (see [`record_body`]) as frame `seq`.
pub fn encode_body(body: &[u8], seq: u64, out: &mut Vec<u8>) -> usize {
    frame(out, Some(seq), |e| e.0.extend_from_slice(body))
}

/// Appends a decoded record, unnumbered (the format of segments written
/// before frames were numbered; intents restored at start-up; tests).
pub fn encode_owned(rec: &LogRecord, out: &mut Vec<u8>) -> usize {
    encode_owned_numbered(rec, None, out)
}

/// Appends a decoded record as frame `seq` of a numbered segment (`None`:
/// unnumbered).
pub fn encode_owned_numbered(rec: &LogRecord, seq: Option<u64>, out: &mut Vec<u8>) -> usize {
    let view = match rec {
        LogRecord::Consume {
            user,
            kind,
            period_start,
            amount,
            request_id,
            decision,
            at,
            precut,
        } => View::Consume {
            user,
            kind,
            period_start: period_start.0,
            amount: *amount,
            request_id: request_id.as_deref().unwrap_or(""),
            allowed: decision.allowed,
            used: decision.used,
            limit: decision.limit,
            at: at.0,
            precut: *precut,
        },
        LogRecord::Refund {
            request_id,
            user,
            kind,
            period_start,
            amount,
            at,
            precut,
        } => View::Refund {
            request_id,
            user,
            kind,
            period_start: period_start.0,
            amount: *amount,
            at: at.0,
            precut: *precut,
        },
        LogRecord::Intent { id, deltas } => View::Intent {
            id: id.0,
            deltas: Deltas::Logged(deltas),
        },
        LogRecord::Done { id, precut } => View::Done { id: id.0, precut },
        LogRecord::Unpersisted {
            user,
            kind,
            period_start,
            units,
        } => View::Unpersisted {
            user,
            kind,
            period_start: period_start.0,
            units: *units,
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
        } => View::Dedup {
            request_id,
            user,
            kind,
            amount: *amount,
            period_start: period_start.0,
            allowed: decision.allowed,
            used: decision.used,
            limit: decision.limit,
            refunded: *refunded,
            at: at.0,
        },
        LogRecord::CheckpointStart { seq } => View::CheckpointStart { seq: *seq },
        LogRecord::CheckpointEnd => View::CheckpointEnd,
    };
    encode_view(&view, seq, out)
}

fn frame(out: &mut Vec<u8>, seq: Option<u64>, body: impl FnOnce(&mut Enc<'_>)) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER]);
    if let Some(seq) = seq {
        out.extend_from_slice(&seq.to_le_bytes());
    }
    body(&mut Enc(out));
    let len = out.len() - start - HEADER;
    let crc = crc32fast::hash(&out[start + HEADER..]);
    // Frames are at most a batch intent (about 1.5 MiB).
    let len = u32::try_from(len).expect("a frame is under 4 GiB");
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&(!len).to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

struct Dec<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Dec<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or("record ends early")?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn u128(&mut self) -> Result<u128, String> {
        Ok(u128::from_le_bytes(
            self.take(16)?.try_into().expect("16 bytes"),
        ))
    }
    fn str(&mut self) -> Result<String, String> {
        let n = self.u8()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| "string is not UTF-8".to_owned())
    }
    fn bool(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(format!("invalid boolean {v}")),
        }
    }
    fn decision(&mut self) -> Result<LoggedDecision, String> {
        let allowed = self.bool()?;
        let used = self.u64()?;
        let limit = self.u64()?;
        Ok(LoggedDecision {
            allowed,
            used,
            limit: (limit != u64::MAX).then_some(limit),
        })
    }
}

/// Decodes one payload (without the frame header).
pub fn decode(payload: &[u8]) -> Result<LogRecord, String> {
    let mut d = Dec { b: payload, pos: 0 };
    let tag = d.u8()?;
    let precut = tag & PRECUT != 0 && matches!(tag & !PRECUT, T_CONSUME | T_REFUND);
    let rec = match if precut { tag & !PRECUT } else { tag } {
        T_CONSUME => {
            let user = d.str()?;
            let kind = d.str()?;
            let period_start = Timestamp(d.i64()?);
            let amount = d.u64()?;
            let rid = d.str()?;
            let decision = d.decision()?;
            let at = Timestamp(d.i64()?);
            LogRecord::Consume {
                user,
                kind,
                period_start,
                amount,
                request_id: (!rid.is_empty()).then_some(rid),
                decision,
                at,
                precut,
            }
        }
        T_REFUND => LogRecord::Refund {
            request_id: d.str()?,
            user: d.str()?,
            kind: d.str()?,
            period_start: Timestamp(d.i64()?),
            amount: d.u64()?,
            at: Timestamp(d.i64()?),
            precut,
        },
        T_INTENT => {
            let id = FlushId(d.u128()?);
            let n = usize::try_from(d.u64()?).map_err(|_| "count out of range".to_owned())?;
            if n > MAX_PAYLOAD / 18 {
                return Err(format!("intent claims {n} deltas"));
            }
            let mut deltas = Vec::with_capacity(n);
            for _ in 0..n {
                deltas.push((d.str()?, d.str()?, Timestamp(d.i64()?), d.i64()?));
            }
            LogRecord::Intent { id, deltas }
        }
        T_DONE => LogRecord::Done {
            id: FlushId(d.u128()?),
            precut: Vec::new(),
        },
        T_DONE_PRECUT => {
            let id = FlushId(d.u128()?);
            let n = usize::try_from(d.u64()?).map_err(|_| "count out of range".to_owned())?;
            if n > MAX_PAYLOAD / 4 {
                return Err(format!("completion claims {n} deltas"));
            }
            let mut precut = Vec::with_capacity(n);
            for _ in 0..n {
                precut.push(u32::from_le_bytes(d.take(4)?.try_into().expect("4 bytes")));
            }
            LogRecord::Done { id, precut }
        }
        T_UNPERSISTED => LogRecord::Unpersisted {
            user: d.str()?,
            kind: d.str()?,
            period_start: Timestamp(d.i64()?),
            units: d.i64()?,
        },
        T_DEDUP => LogRecord::Dedup {
            request_id: d.str()?,
            user: d.str()?,
            kind: d.str()?,
            amount: d.u64()?,
            period_start: Timestamp(d.i64()?),
            decision: d.decision()?,
            refunded: d.bool()?,
            at: Timestamp(d.i64()?),
        },
        T_CHECKPOINT_START | T_CHECKPOINT_START_SEQUENCED => {
            LogRecord::CheckpointStart { seq: d.u64()? }
        }
        T_CHECKPOINT_END => LogRecord::CheckpointEnd,
        t => return Err(format!("unknown record type {t}")),
    };
    if d.pos != payload.len() {
        return Err(format!(
            "{} trailing bytes after the record",
            payload.len() - d.pos
        ));
    }
    Ok(rec)
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
