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

use std::borrow::Cow;

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

/// A remembered request as the log holds it (and as replay returns it,
/// owned): everything a repeat of the request needs to get the original
/// answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DedupEntry<'a> {
    pub user: Cow<'a, str>,
    pub kind: Cow<'a, str>,
    pub amount: u64,
    pub period_start: Timestamp,
    pub decision: LoggedDecision,
    pub refunded: bool,
    pub at: Timestamp,
}

impl DedupEntry<'_> {
    pub fn into_owned(self) -> DedupEntry<'static> {
        DedupEntry {
            user: Cow::Owned(self.user.into_owned()),
            kind: Cow::Owned(self.kind.into_owned()),
            ..self
        }
    }
}

/// A batch intent's deltas: as the ledger holds them (written on the
/// request path, no copy), or as logged (read back, or re-logged at start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deltas<'a> {
    Batch(&'a [usage_sync_core::Delta]),
    Logged(Cow<'a, [LoggedDelta]>),
}

impl Deltas<'_> {
    /// The deltas as logged, owned.
    pub fn into_logged(self) -> Vec<LoggedDelta> {
        match self {
            Deltas::Batch(ds) => ds
                .iter()
                .map(|d| {
                    let user = d.user.as_str().to_owned();
                    (user, d.kind.name().to_owned(), d.period_start, d.delta)
                })
                .collect(),
            Deltas::Logged(ds) => ds.into_owned(),
        }
    }
}

/// One record of the log: the single description of its bytes, used to
/// write and to read. Strings borrow: from the ledger when a record is
/// written (through [`encode_frame`]), from the frame's bytes when it is
/// read ([`decode`]); replay copies what it keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogRecord<'a> {
    Consume {
        user: Cow<'a, str>,
        kind: Cow<'a, str>,
        period_start: Timestamp,
        amount: u64,
        request_id: Option<Cow<'a, str>>,
        decision: LoggedDecision,
        at: Timestamp,
        /// Made before its user's cut: the segment's checkpoint holds it.
        precut: bool,
    },
    Refund {
        request_id: Cow<'a, str>,
        user: Cow<'a, str>,
        kind: Cow<'a, str>,
        period_start: Timestamp,
        amount: u64,
        at: Timestamp,
        precut: bool,
    },
    Intent {
        id: FlushId,
        deltas: Deltas<'a>,
    },
    Done {
        id: FlushId,
        /// Indexes of the intent's deltas whose counters took the
        /// completion before their user's cut.
        precut: Vec<u32>,
    },
    Unpersisted {
        user: Cow<'a, str>,
        kind: Cow<'a, str>,
        period_start: Timestamp,
        units: i64,
    },
    /// Checkpoint of an earlier version: a remembered request id. (This
    /// version leaves request ids in the consume records of the segments
    /// that hold them; see `replay`.)
    Dedup {
        request_id: Cow<'a, str>,
        entry: DedupEntry<'a>,
    },
    /// First record of every segment: the checkpoint of segment `seq`.
    CheckpointStart {
        seq: u64,
    },
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
    fn decision(&mut self, d: &LoggedDecision) {
        self.u8(d.allowed as u8);
        self.u64(d.used);
        self.u64(d.limit.unwrap_or(u64::MAX));
    }
    fn delta(&mut self, user: &str, kind: &str, period_start: Timestamp, delta: i64) {
        self.str(user);
        self.str(kind);
        self.i64(period_start.0);
        self.i64(delta);
    }
}

/// Appends `rec` as frame `seq` of a numbered segment (`None`: unnumbered,
/// the format of segments written before frames were numbered; intents
/// restored at start-up; tests). Returns the frame's length.
pub fn encode(rec: &LogRecord<'_>, seq: Option<u64>, out: &mut Vec<u8>) -> usize {
    frame(out, seq, |e| match rec {
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
            e.u8(T_CONSUME | if *precut { PRECUT } else { 0 });
            e.str(user);
            e.str(kind);
            e.i64(period_start.0);
            e.u64(*amount);
            e.str(request_id.as_deref().unwrap_or(""));
            e.decision(decision);
            e.i64(at.0);
        }
        LogRecord::Refund {
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
            e.i64(period_start.0);
            e.u64(*amount);
            e.i64(at.0);
        }
        LogRecord::Intent { id, deltas } => {
            e.u8(T_INTENT);
            e.0.extend_from_slice(&id.0.to_le_bytes());
            match deltas {
                Deltas::Batch(ds) => {
                    e.u64(ds.len() as u64);
                    for d in ds.iter() {
                        e.delta(d.user.as_str(), d.kind.name(), d.period_start, d.delta);
                    }
                }
                Deltas::Logged(ds) => {
                    e.u64(ds.len() as u64);
                    for (u, k, p, d) in ds.iter() {
                        e.delta(u, k, *p, *d);
                    }
                }
            }
        }
        LogRecord::Done { id, precut } => {
            e.u8(if precut.is_empty() {
                T_DONE
            } else {
                T_DONE_PRECUT
            });
            e.0.extend_from_slice(&id.0.to_le_bytes());
            if !precut.is_empty() {
                e.u64(precut.len() as u64);
                for i in precut.iter() {
                    e.0.extend_from_slice(&i.to_le_bytes());
                }
            }
        }
        LogRecord::Unpersisted {
            user,
            kind,
            period_start,
            units,
        } => {
            e.u8(T_UNPERSISTED);
            e.str(user);
            e.str(kind);
            e.i64(period_start.0);
            e.i64(*units);
        }
        LogRecord::Dedup { request_id, entry } => {
            e.u8(T_DEDUP);
            e.str(request_id);
            e.str(&entry.user);
            e.str(&entry.kind);
            e.u64(entry.amount);
            e.i64(entry.period_start.0);
            e.decision(&entry.decision);
            e.u8(entry.refunded as u8);
            e.i64(entry.at.0);
        }
        LogRecord::CheckpointStart { seq: segment } => {
            e.u8(if seq.is_some() {
                T_CHECKPOINT_START_SEQUENCED
            } else {
                T_CHECKPOINT_START
            });
            e.u64(*segment);
        }
        LogRecord::CheckpointEnd => e.u8(T_CHECKPOINT_END),
    })
}

/// Appends one framed record from the ledger, as frame `seq` of its
/// segment. Returns the frame's length.
pub fn encode_frame(rec: &Record<'_>, seq: u64, segment: u64, out: &mut Vec<u8>) -> usize {
    // A change made before its user's cut in this segment's checkpoint.
    let precut = |cut: &Cut| *cut != Cut::NONE && *cut < Cut(segment);
    let logged = |d: &Decision| LoggedDecision {
        allowed: d.allowed,
        used: d.used,
        limit: d.limit,
    };
    let rec = match rec {
        Record::Consume {
            user,
            kind,
            period_start,
            amount,
            request_id,
            decision,
            at,
            cut,
        } => LogRecord::Consume {
            user: Cow::Borrowed(user.as_str()),
            kind: Cow::Borrowed(kind.name()),
            period_start: *period_start,
            amount: *amount,
            request_id: request_id.map(|r| Cow::Borrowed(r.as_str())),
            decision: logged(decision),
            at: *at,
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
        } => LogRecord::Refund {
            request_id: Cow::Borrowed(request_id),
            user: Cow::Borrowed(user.as_str()),
            kind: Cow::Borrowed(kind.name()),
            period_start: *period_start,
            amount: *amount,
            at: *at,
            precut: precut(cut),
        },
        Record::Intent { batch } => LogRecord::Intent {
            id: batch.id,
            deltas: Deltas::Batch(&batch.deltas),
        },
        Record::Done { id, cuts } => LogRecord::Done {
            id: *id,
            precut: (0u32..)
                .zip(cuts.iter())
                .filter(|(_, c)| precut(c))
                .map(|(i, _)| i)
                .collect(),
        },
        Record::Unpersisted {
            user,
            kind,
            period_start,
            units,
        } => LogRecord::Unpersisted {
            user: Cow::Borrowed(user.as_str()),
            kind: Cow::Borrowed(kind.name()),
            period_start: *period_start,
            units: *units,
        },
    };
    encode(&rec, Some(seq), out)
}

/// Appends a checkpoint marker frame, as frame `seq` of its segment: the
/// start of the checkpoint of segment `segment`, or (`None`) its end.
pub fn encode_marker(start: Option<u64>, seq: u64, out: &mut Vec<u8>) -> usize {
    match start {
        Some(segment) => encode(&LogRecord::CheckpointStart { seq: segment }, Some(seq), out),
        None => encode(&LogRecord::CheckpointEnd, Some(seq), out),
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

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
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
    fn time(&mut self) -> Result<Timestamp, String> {
        self.i64().map(Timestamp)
    }
    /// A string borrowed from the payload: replay copies only what it keeps.
    fn str(&mut self) -> Result<Cow<'a, str>, String> {
        let n = self.u8()? as usize;
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(Cow::Borrowed)
            .map_err(|_| "string is not UTF-8".to_owned())
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

/// Decodes one payload (without the frame header), borrowing its strings.
pub fn decode(payload: &[u8]) -> Result<LogRecord<'_>, String> {
    let mut d = Dec { b: payload, pos: 0 };
    let tag = d.u8()?;
    let precut = tag & PRECUT != 0 && matches!(tag & !PRECUT, T_CONSUME | T_REFUND);
    let rec = match if precut { tag & !PRECUT } else { tag } {
        T_CONSUME => LogRecord::Consume {
            user: d.str()?,
            kind: d.str()?,
            period_start: d.time()?,
            amount: d.u64()?,
            request_id: Some(d.str()?).filter(|r| !r.is_empty()),
            decision: d.decision()?,
            at: d.time()?,
            precut,
        },
        T_REFUND => LogRecord::Refund {
            request_id: d.str()?,
            user: d.str()?,
            kind: d.str()?,
            period_start: d.time()?,
            amount: d.u64()?,
            at: d.time()?,
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
                let (user, kind) = (d.str()?.into_owned(), d.str()?.into_owned());
                deltas.push((user, kind, d.time()?, d.i64()?));
            }
            LogRecord::Intent {
                id,
                deltas: Deltas::Logged(Cow::Owned(deltas)),
            }
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
            period_start: d.time()?,
            units: d.i64()?,
        },
        T_DEDUP => LogRecord::Dedup {
            request_id: d.str()?,
            entry: DedupEntry {
                user: d.str()?,
                kind: d.str()?,
                amount: d.u64()?,
                period_start: d.time()?,
                decision: d.decision()?,
                refunded: d.bool()?,
                at: d.time()?,
            },
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
