//! The write-ahead log: every counted consume and refund, every batch
//! intent and completion, recorded before it is acknowledged.
//!
//! # Shape
//!
//! - Appends (through the core's [`Journal`] trait) encode a frame into an
//!   in-memory buffer under a mutex: no I/O on the request path. They are
//!   made while the ledger's locks are held, so the log's order is the
//!   ledger's order.
//! - One writer at a time drains the buffer: one `write` for everything
//!   appended since the last round (group commit), then, by durability
//!   mode, one `fdatasync`. It publishes the highest *written* and
//!   *durable* sequence numbers; requests wait on the one their mode needs.
//!   In `fsync` mode the writer is a dedicated thread, and it writes each
//!   segment over zeros it wrote ahead (`ZERO_STEP`), so an `fdatasync`
//!   rarely has a file-size change to commit. In `batched` mode a
//!   waiting request leads: after one yield (so the other requests its
//!   worker has ready append first) it takes the buffer and writes it
//!   itself, so no thread is woken per round; the thread then only writes
//!   what nobody waits for (within [`WRITER_LINGER`]), rotations and
//!   checkpoints. `none` leaves everything to the thread.
//! - The log is a series of segments `wal-<seq>.log`. Every segment starts
//!   with a checkpoint (the outstanding batch intents, then the units
//!   outside the store of every counter), written while records go on
//!   arriving: the ledger is copied a few users at a time, and each record
//!   says whether its change came before its user was copied
//!   ([`usage_sync_core::Cut`]). Recovery reads the units from the newest
//!   segment whose checkpoint is complete (and on through any later one
//!   whose checkpoint never finished). Request ids stay in the consume
//!   records that carry them: a segment is deleted once a newer checkpoint
//!   is on disk and its ids have left the dedup window.
//!
//! See `docs/durability.md` for the crash points and why each is covered.

mod checkpoint;
pub mod codec;
pub mod lock;
pub mod manifest;
pub mod replay;
mod scan;
mod writer;
use usage_sync_core::Locked;
use writer::LsnWaiters;

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use usage_sync_core::{FlushId, Journal, Lsn, Record, Timestamp};

pub use replay::{Recovered, RecoveredDedup};

use crate::error::StoreError;

/// When a consume is acknowledged relative to its log record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// After the record is on disk (`fdatasync`). Survives power loss.
    Fsync,
    /// After the record is written to the OS (survives a process crash);
    /// `fdatasync` every `fsync_interval`, so at most that window is lost on
    /// power loss.
    Batched,
    /// Immediately; the record is written in the background. A crash may
    /// lose the last records. For tests and benchmarks only.
    None,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Batched => "batched",
            Durability::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "fsync" => Some(Durability::Fsync),
            "batched" => Some(Durability::Batched),
            "none" => Some(Durability::None),
            _ => None,
        }
    }
}

/// Settings of the log.
#[derive(Clone, Debug)]
pub struct WalConfig {
    pub dir: PathBuf,
    pub durability: Durability,
    /// `batched` mode: how often written records are made durable.
    pub fsync_interval: Duration,
    /// A checkpoint (and a new segment) is requested when the current
    /// segment grows past this.
    pub max_segment_bytes: u64,
    /// Start even if the log lost records it had made durable (see
    /// [`manifest`]): report the loss and go on (`serve --accept-log-loss`).
    pub accept_loss: bool,
    /// How long request ids are remembered: a segment whose records name
    /// request ids is kept until the newest of them is this old (plus
    /// 1/256, past the ledger's own rounding), so recovery can read them.
    pub dedup_window: Duration,
    /// `Wal::checkpoint` rests this long after each [`CHECKPOINT_BUSY`] of
    /// work, so that it (with the writer taking its bytes) leaves the
    /// consumes beside it most of the machine's cores. Zero: no rest.
    pub checkpoint_rest: Duration,
}

impl WalConfig {
    pub fn new(dir: impl Into<PathBuf>, durability: Durability) -> Self {
        WalConfig {
            dir: dir.into(),
            durability,
            fsync_interval: Duration::from_millis(10),
            max_segment_bytes: 64 << 20,
            accept_loss: false,
            dedup_window: Duration::from_secs(24 * 3600),
            checkpoint_rest: CHECKPOINT_BUSY,
        }
    }
}

/// In `batched` and `none` mode, how long the writer thread lets records
/// gather after the first one before writing them. Waiting requests write
/// their own records (they lead), so this only delays records nobody waits
/// for; it bounds the thread to about 1 000 wake-ups a second under load
/// instead of one per round (a profile showed the per-round wake-ups cost
/// about a fifth of the server's throughput).
pub const WRITER_LINGER: Duration = Duration::from_millis(1);

/// `fsync` mode: a segment grows in zero-filled steps of this size, ahead
/// of its records. Appending to a file changes its size, so every
/// `fdatasync` of an appended file also commits the inode (a second wait
/// on the disk); overwriting zeros already on disk does not. One round in
/// this many bytes pays for the growth (and writes the step's zeros);
/// measured on the 2-core VMs, a 1.5 KB write plus `fdatasync` took
/// ~160 µs appended against ~105 µs overwriting (AMD EPYC), 59 against
/// 46 µs (Intel Xeon). Recovery reads zeros after the last record as the
/// segment's end (`codec::scan`).
const ZERO_STEP: u64 = 1 << 20;

/// How often a stalled log (a write failed, typically a full disk)
/// tries its buffer again.
pub const STALL_RETRY: Duration = Duration::from_millis(500);

/// Checkpoint records appended per hold of the log's lock: about 8 µs of
/// encoding, so a consume appending meanwhile waits no longer than that.
const CHECKPOINT_RUN: usize = 32;

/// Bytes a checkpoint may have waiting in the buffer before it waits for
/// the writer to take them.
const CHECKPOINT_BACKLOG: usize = 256 << 10;

/// How long a checkpoint works before it rests (`WalConfig::checkpoint_rest`).
pub const CHECKPOINT_BUSY: Duration = Duration::from_millis(1);

/// How often, at most, the manifest records a new position within a
/// segment (see [`manifest`]).
const MANIFEST_INTERVAL: Duration = Duration::from_secs(1);

/// Largest buffer kept for reuse after a write (a checkpoint can make one
/// of many megabytes; that one is dropped).
const SPARE_CAPACITY: usize = 1 << 20;

/// A pending switch to a new segment, at a byte offset of the buffer.
struct Rotation {
    at: usize,
    seq: u64,
}

#[derive(Default)]
struct SyncerState {
    /// A caller waits for a sync (a flush about to send its batch).
    requested: bool,
    closing: bool,
}

struct Shared {
    buf: Vec<u8>,
    /// An emptied buffer to swap in at the next take (no allocation per
    /// write).
    spare: Vec<u8>,
    /// A write is in progress (by the thread or a leading request). Only
    /// one writer at a time, so the file receives the buffer in order.
    writing: bool,
    /// `batched`/`none`: the writer thread was woken for records and will
    /// write them after its linger; later appends need not wake it again.
    writer_armed: bool,
    /// Someone waits on a record only the thread may write (a rotation or
    /// checkpoint is pending): the thread skips its linger.
    urgent: bool,
    /// Sequence number the next appended record gets.
    next_lsn: Lsn,
    rotations: VecDeque<Rotation>,
    /// Record bytes (see `codec::record_body`) of batch intents without a
    /// `Done` yet, re-logged by every checkpoint, under new frame numbers,
    /// so a new segment is self-contained.
    outstanding: HashMap<FlushId, Vec<u8>>,
    /// Where the next frame goes: its number in the current segment, the
    /// units the segment's records counted so far (consumes admitted minus
    /// refunds, checkpoint excluded), and whether the segment's checkpoint
    /// is complete. Written to the manifest once durable.
    position: Position,
    /// Bytes appended to the current segment.
    segment_bytes: u64,
    /// Bytes of the checkpoint at the head of the current segment
    /// (`u64::MAX` while one is being written).
    checkpoint_bytes: u64,
    segment_seq: u64,
    /// Checkpoints whose end record is appended: once the record with that
    /// sequence number is on disk, segments older than `seq` may go.
    completed_checkpoints: Vec<Completed>,
    /// Whether a segment is open (after the first checkpoint).
    segment_open: bool,
    /// The time of the newest record of the current segment that names a
    /// request id.
    ids_until: Option<Timestamp>,
    /// The segments before the current one that are still on disk, with
    /// the same time: one is deleted once it has left the dedup window.
    kept: std::collections::BTreeMap<u64, Option<Timestamp>>,
    checkpoint_requested: bool,
    closing: bool,
}

/// A checkpoint whose end record is appended: its segment, the end
/// record's sequence number, and the time it was taken.
type Completed = (u64, Lsn, Timestamp);

/// The write-ahead log. Shared as `Arc<Wal>`; also the ledger's journal.
pub struct Wal {
    config: WalConfig,
    shared: Mutex<Shared>,
    wake: Condvar,
    written: watch::Sender<Lsn>,
    durable: watch::Sender<Lsn>,
    /// `fsync` mode: requests waiting for their record to be on disk.
    durable_waiters: LsnWaiters,
    /// Set while the log cannot write: nothing may be acknowledged. A
    /// failed `write` (a full disk, a quota) *stalls* the log: the bytes
    /// go back to the head of the buffer, a partial write is cut off the
    /// file, and the writer retries every [`STALL_RETRY`] until a write
    /// succeeds, which clears this flag. A failed `fdatasync` is
    /// permanent (`permanent`): after it, the kernel may have dropped the
    /// pages it could not write, so a later successful sync proves
    /// nothing about them.
    failed: AtomicBool,
    permanent: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Append mode: the length of the current segment after the last
    /// successful write, so a partial write can be cut off before the
    /// retry (writes are serialised by `Shared::writing`).
    segment_end: std::sync::atomic::AtomicU64,
    /// The segment being written, for the syncer thread.
    current: Mutex<Option<Arc<File>>>,
    syncer: Mutex<SyncerState>,
    syncer_wake: Condvar,
    /// Notified when the current segment is large enough for a checkpoint.
    pub checkpoint_wanted: Notify,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The directory's lock (see [`lock`]), held from before the log is
    /// read until [`Wal::close`].
    dir_lock: Mutex<Option<lock::DirLock>>,
    /// The position after the last successful write (writes are
    /// serialised), for the syncer to record once it has synced.
    written_pos: Mutex<Position>,
    /// The position last recorded in the manifest, and when.
    manifest: Mutex<(Position, Instant)>,
    /// Held by the checkpoint being written: one at a time.
    checkpointing: Mutex<()>,
    /// A checkpoint that must not rest waits for the one running: that one
    /// stops resting too (see `checkpoint::checkpoint_at_once`).
    hurry: AtomicBool,
}

impl Shared {
    /// Starts a write: marks it in progress and takes the buffer, swapping
    /// in the spare one (no allocation per write).
    fn start_write(&mut self) -> Vec<u8> {
        self.writing = true;
        let spare = std::mem::take(&mut self.spare);
        std::mem::replace(&mut self.buf, spare)
    }
}

/// A point in the log: segment, frames in it, the units its records
/// counted (consumes admitted minus refunds, checkpoint excluded), and
/// whether its checkpoint is complete. What the manifest records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub segment: u64,
    pub frames: u64,
    pub units: i64,
    pub checkpointed: bool,
}

/// Units a record counts, as a signed number (amounts are at most 10^9).
pub(crate) fn units(amount: u64) -> i64 {
    i64::try_from(amount).unwrap_or(i64::MAX)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal-{seq:016}.log"))
}

/// What reading `path` gave: `None` if there is nothing there (a log not
/// created yet), any other error with the path it concerns.
pub(super) fn unless_absent<T>(
    path: &Path,
    read: std::io::Result<T>,
) -> Result<Option<T>, StoreError> {
    match read {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Open {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Segment files in `dir`, sorted by sequence number.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    let Some(rd) = unless_absent(dir, std::fs::read_dir(dir))? else {
        return Ok(out);
    };
    for entry in rd.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name
            .strip_prefix("wal-")
            .and_then(|r| r.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Open {
        path: path.display().to_string(),
        source,
    }
}

fn sync_dir(dir: &Path) {
    // Makes file creation and deletion durable; best effort on platforms
    // where directories cannot be opened.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Wal {
    /// Opens the log in `config.dir`: reads the newest complete segment
    /// and returns what it holds, and starts the writer. Nothing is
    /// appended until the caller has installed the recovered state and
    /// called [`Wal::checkpoint`], which starts a new segment.
    pub fn open(config: WalConfig) -> Result<(Arc<Wal>, Recovered), StoreError> {
        std::fs::create_dir_all(&config.dir).map_err(|e| io_err(&config.dir, e))?;
        // Before anything is read: another live owner's segments must not
        // be replayed, let alone deleted.
        let dir_lock = lock::DirLock::acquire(&config.dir)?;
        let recovered = replay::recover(&config.dir, config.accept_loss)?;
        if let Some((path, offset, _, _)) = &recovered.torn {
            // The torn last record was never acknowledged. Cut it off now:
            // the segment may be kept for its request ids, and a later
            // start reads it as an older segment, where a torn tail would
            // be damage.
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| io_err(path, e))?;
            f.set_len(*offset).map_err(|e| io_err(path, e))?;
            f.sync_all().map_err(|e| io_err(path, e))?;
        }
        let last_seq = list_segments(&config.dir)?.last().map_or(0, |(s, _)| *s);
        let (written, _) = watch::channel(0);
        let (durable, _) = watch::channel(0);
        let wal = Arc::new(Wal {
            config,
            shared: Mutex::new(Shared {
                buf: Vec::with_capacity(1 << 16),
                spare: Vec::with_capacity(1 << 16),
                writing: false,
                writer_armed: false,
                urgent: false,
                next_lsn: 1,
                rotations: VecDeque::new(),
                outstanding: HashMap::new(),
                position: Position::default(),
                segment_bytes: 0,
                checkpoint_bytes: 0,
                segment_seq: last_seq,
                completed_checkpoints: Vec::new(),
                segment_open: false,
                ids_until: None,
                kept: recovered.id_segments.iter().copied().collect(),
                checkpoint_requested: false,
                closing: false,
            }),
            wake: Condvar::new(),
            written,
            durable,
            durable_waiters: LsnWaiters::default(),
            failed: AtomicBool::new(false),
            permanent: AtomicBool::new(false),
            failure: Mutex::new(None),
            segment_end: std::sync::atomic::AtomicU64::new(0),
            current: Mutex::new(None),
            syncer: Mutex::new(SyncerState::default()),
            syncer_wake: Condvar::new(),
            checkpoint_wanted: Notify::new(),
            writer: Mutex::new(None),
            dir_lock: Mutex::new(Some(dir_lock)),
            written_pos: Mutex::new(Position::default()),
            manifest: Mutex::new((Position::default(), Instant::now())),
            checkpointing: Mutex::new(()),
            hurry: AtomicBool::new(false),
        });
        let w = wal.clone();
        let handle = std::thread::Builder::new()
            .name("usage-sync-wal".into())
            .spawn(move || w.writer_loop())
            .map_err(|e| io_err(Path::new("wal writer thread"), e))?;
        *wal.writer.locked() = Some(handle);
        if wal.config.durability != Durability::Fsync {
            let w = wal.clone();
            std::thread::Builder::new()
                .name("usage-sync-wal-sync".into())
                .spawn(move || w.syncer_loop())
                .map_err(|e| io_err(Path::new("wal syncer thread"), e))?;
        }
        Ok((wal, recovered))
    }

    pub fn config(&self) -> &WalConfig {
        &self.config
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.locked()
    }

    /// Registers intents recovered from the log that are still to be
    /// re-sent, so the next checkpoint re-logs them.
    pub fn restore_outstanding(&self, intents: &[(FlushId, Vec<codec::LoggedDelta>)]) {
        let mut g = self.shared();
        for (id, deltas) in intents {
            let mut frame = Vec::new();
            let intent = codec::LogRecord::Intent {
                id: *id,
                deltas: codec::Deltas::Logged(deltas.into()),
            };
            codec::encode(&intent, None, &mut frame);
            g.outstanding
                .insert(*id, codec::record_body(&frame, false).to_vec());
        }
    }

    fn push(&self, g: &mut Shared, frame_len: usize) -> Lsn {
        let lsn = g.next_lsn;
        g.next_lsn += 1;
        g.position.frames += 1;
        g.segment_bytes += frame_len as u64;
        if g.buf.len() == frame_len {
            // The buffer was empty: the writer may be asleep. In `fsync`
            // mode it is the only writer and every round is a sync, so wake
            // it now; otherwise once per linger is enough (waiters lead).
            if self.config.durability == Durability::Fsync {
                self.wake.notify_one();
            } else if !g.writer_armed {
                g.writer_armed = true;
                self.wake.notify_one();
            }
        }
        // A checkpoint is due once the records appended *after* the
        // current one pass both the configured size and the checkpoint's
        // own size. Counting the checkpoint itself made one larger than
        // the segment size request the next at once, back to back, for
        // good (a day of request ids is tens of MiB of checkpoint); with
        // this rule checkpoints at most double the bytes written.
        let since = g.segment_bytes.saturating_sub(g.checkpoint_bytes);
        if g.checkpoint_bytes != u64::MAX
            && since > self.config.max_segment_bytes.max(g.checkpoint_bytes)
            && !g.checkpoint_requested
        {
            g.checkpoint_requested = true;
            self.checkpoint_wanted.notify_one();
        }
        lsn
    }

    /// Waits until the record `lsn` is as safe as the durability mode
    /// promises (written for `batched`, on disk for `fsync`).
    pub async fn wait(&self, lsn: Lsn) -> Result<(), StoreError> {
        match self.config.durability {
            Durability::None => return Ok(()),
            Durability::Batched => return self.wait_written(lsn).await,
            Durability::Fsync => {}
        }
        let done = || self.failed.load(Ordering::Acquire) || *self.durable.borrow() >= lsn;
        if !done() {
            let mut polled = false;
            std::future::poll_fn(|cx| {
                let repoll = std::mem::replace(&mut polled, true);
                if self.durable_waiters.register(lsn, cx.waker(), repoll, done) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(self.failure_error());
        }
        Ok(())
    }

    /// `batched`/`none`: waits until record `lsn` is written, writing the
    /// buffer itself when no one else is (group commit led by a waiter).
    ///
    /// Lost wake-ups are impossible because of two orders: a waiter marks
    /// the current `written` as seen *before* it looks at `writing`, and a
    /// writer clears `writing` *before* it publishes. So either the waiter
    /// sees `writing` clear (and leads, or finds its record taken by a
    /// writer whose publish is still to come), or the publish happens after
    /// the waiter's mark and `changed()` returns.
    async fn wait_written(&self, lsn: Lsn) -> Result<(), StoreError> {
        if *self.written.borrow() >= lsn {
            return Ok(());
        }
        let mut rx = self.written.subscribe();
        let mut yielded = false;
        loop {
            if self.failed.load(Ordering::Acquire) {
                return Err(self.failure_error());
            }
            if *rx.borrow_and_update() >= lsn {
                return Ok(());
            }
            if !yielded {
                // Let the requests this worker already has ready append
                // theirs first: one write then carries all of them.
                yielded = true;
                tokio::task::yield_now().await;
                continue;
            }
            if self.lead_write()? {
                continue;
            }
            if rx.changed().await.is_err() {
                return Err(StoreError::Task("write-ahead log closed".into()));
            }
        }
    }

    /// Waits until everything appended so far is on disk, whatever the mode.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let target = self.shared().next_lsn - 1;
        if self.config.durability != Durability::Fsync {
            // The syncer covers what is written: wait for the write, then
            // ask for a sync.
            self.wait_written(target).await?;
            let mut s = self.syncer.locked();
            s.requested = true;
            self.syncer_wake.notify_one();
        }
        let mut rx = self.durable.subscribe();
        loop {
            if self.failed.load(Ordering::Acquire) {
                return Err(self.failure_error());
            }
            if *rx.borrow_and_update() >= target {
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return Err(StoreError::Task("write-ahead log closed".into()));
            }
        }
    }

    fn failure_error(&self) -> StoreError {
        let msg = self
            .failure
            .locked()
            .clone()
            .unwrap_or_else(|| "write-ahead log failed".into());
        StoreError::Task(msg)
    }

    /// Whether the log cannot write now (nothing is acknowledged then):
    /// stalled on a write error, or failed for good.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Whether the log failed for good (an `fdatasync` error): it will not
    /// heal, and records written since the last good sync may be lost.
    pub fn failed_permanently(&self) -> bool {
        self.permanent.load(Ordering::Acquire)
    }

    /// Why the log cannot write, while it cannot.
    pub fn failure(&self) -> Option<String> {
        if !self.failed() {
            return None;
        }
        self.failure.locked().clone()
    }

    /// Whether enough was appended since the last checkpoint for the next
    /// one (see `push`); the engine is told through `checkpoint_wanted`.
    pub fn checkpoint_due(&self) -> bool {
        self.shared().checkpoint_requested
    }

    /// Bytes in the current segment, and its sequence number.
    pub fn segment(&self) -> (u64, u64) {
        let g = self.shared();
        (g.segment_seq, g.segment_bytes)
    }

    /// Stops the writer after it has written and synced everything
    /// appended so far.
    pub fn close(&self) {
        let mut g = self.shared();
        g.closing = true;
        self.wake.notify_one();
        drop(g);
        if let Some(h) = self.writer.locked().take() {
            let _ = h.join();
        }
        // Nothing more is written: the directory may have a new owner.
        self.dir_lock.locked().take();
    }

    /// Segments kept for the request ids they hold (the current one
    /// excluded).
    pub fn kept_segments(&self) -> usize {
        self.shared().kept.len()
    }
}

impl Journal for Wal {
    fn append(&self, record: Record<'_>) -> Lsn {
        let mut g = self.shared();
        let start = g.buf.len();
        let seq = g.position.frames;
        let segment = g.segment_seq;
        let n = codec::encode_frame(&record, seq, segment, &mut g.buf);
        match &record {
            Record::Intent { batch } => {
                let body = codec::record_body(&g.buf[start..], true).to_vec();
                g.outstanding.insert(batch.id, body);
            }
            Record::Done { id, .. } => {
                g.outstanding.remove(id);
            }
            Record::Consume {
                amount,
                decision,
                request_id,
                at,
                ..
            } => {
                if decision.allowed {
                    g.position.units += units(*amount);
                }
                if request_id.is_some() {
                    g.ids_until = g.ids_until.max(Some(*at));
                }
            }
            Record::Refund { amount, at, .. } => {
                g.position.units -= units(*amount);
                g.ids_until = g.ids_until.max(Some(*at));
            }
            _ => {}
        }
        self.push(&mut g, n)
    }

    fn head(&self) -> Lsn {
        self.shared().next_lsn - 1
    }
}

#[cfg(test)]
mod tests;
