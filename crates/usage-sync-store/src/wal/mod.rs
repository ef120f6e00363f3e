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
//!   arriving: the ledger is taken one shard at a time, and each record
//!   says whether its change came before its shard was taken
//!   ([`usage_sync_core::Cut`]). Recovery reads the units from the newest
//!   segment whose checkpoint is complete (and on through any later one
//!   whose checkpoint never finished). Request ids stay in the consume
//!   records that carry them: a segment is deleted once a newer checkpoint
//!   is on disk and its ids have left the dedup window.
//!
//! See `docs/durability.md` for the crash points and why each is covered.

pub mod codec;
pub mod lock;
pub mod manifest;
pub mod replay;

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
use usage_sync_core::{Cut, FlushId, Journal, Ledger, Lsn, Record, Timestamp};

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

/// The segment the writer thread writes to.
struct Segment {
    file: Arc<File>,
    /// `fsync` mode: records are written at `pos`, into zeros written
    /// ahead up to `zeroed` (see [`ZERO_STEP`]). Only the writer thread
    /// writes in that mode, so the position is its own. In the other modes
    /// leading requests write too, so the file is opened for appending and
    /// these stay unused.
    positional: bool,
    pos: u64,
    zeroed: u64,
}

impl Segment {
    fn open(path: &Path, positional: bool) -> std::io::Result<Segment> {
        let file = if positional {
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(path)?
        } else {
            OpenOptions::new().create(true).append(true).open(path)?
        };
        // A new segment is empty; should one exist, write after its bytes
        // as appending would.
        let len = file.metadata()?.len();
        Ok(Segment {
            file: Arc::new(file),
            positional,
            pos: len,
            zeroed: len,
        })
    }

    /// Writes `bytes` after the segment's records. In `fsync` mode, zeros
    /// are written first up to the next [`ZERO_STEP`] boundary past the
    /// records when they would reach beyond what is zero-filled: the size
    /// change then lands in this round's `fdatasync`, and the rounds after
    /// it overwrite blocks already allocated and sized on disk.
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if !self.positional {
            return (&*self.file).write_all(bytes);
        }
        let end = self.pos + bytes.len() as u64;
        if end > self.zeroed {
            let target = end.div_ceil(ZERO_STEP) * ZERO_STEP;
            // From the end of the records, not of the old zeros: the bytes
            // up to `end` are this write's own.
            static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
            let mut at = end.max(self.zeroed);
            while at < target {
                let n = usize::try_from(target - at).map_or(ZEROS.len(), |n| n.min(ZEROS.len()));
                self.file.write_all_at(&ZEROS[..n], at)?;
                at += n as u64;
            }
            self.zeroed = target;
        }
        self.file.write_all_at(bytes, self.pos)?;
        self.pos = end;
        Ok(())
    }
}

/// Waits on `cv` until `done` holds or `deadline` passes.
fn wait_until<'a, T>(
    cv: &Condvar,
    mut g: MutexGuard<'a, T>,
    deadline: Instant,
    done: impl Fn(&T) -> bool,
) -> MutexGuard<'a, T> {
    while !done(&g) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        g = cv
            .wait_timeout(g, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    g
}

/// Tasks waiting for a sequence number, each woken once, when a publish
/// covers it. A watch channel wakes every receiver on every change: in
/// `fsync` mode the requests that appended while a sync was running were
/// woken by its publish only to wait again for the next one, about one
/// wasted wake-up (a task poll, often a worker unpark) per request.
///
/// No wake-up is lost because the publisher sets the value *before* it
/// takes the list, and a waiter checks the value *under* the list's lock
/// before registering: either the waiter registered first and the publish
/// finds it, or the publish came first and the waiter sees its value.
#[derive(Default)]
struct LsnWaiters {
    list: Mutex<Vec<(Lsn, Waker)>>,
}

impl LsnWaiters {
    /// Returns true if `done()` holds; otherwise registers `waker` for
    /// `lsn`. A task's first poll (`repoll` false) pushes without looking:
    /// the list holds every waiting request, and searching it on every
    /// registration would cost a full scan per request. A re-poll replaces
    /// the task's earlier entry, so each task stays in the list once.
    fn register(&self, lsn: Lsn, waker: &Waker, repoll: bool, done: impl Fn() -> bool) -> bool {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if done() {
            return true;
        }
        let earlier = if repoll {
            list.iter_mut()
                .find(|(l, w)| *l == lsn && w.will_wake(waker))
        } else {
            None
        };
        match earlier {
            Some(entry) => entry.1.clone_from(waker),
            None => list.push((lsn, waker.clone())),
        }
        false
    }

    /// Wakes every waiter for a sequence number up to `upto`.
    fn wake_upto(&self, upto: Lsn) {
        let woken: Vec<(Lsn, Waker)> = self
            .list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extract_if(.., |(l, _)| *l <= upto)
            .collect();
        for (_, w) in woken {
            w.wake();
        }
    }
}

/// Raises a published sequence number, never lowers it; waiters are woken
/// only when it rises.
fn publish_max(tx: &watch::Sender<Lsn>, upto: Lsn) {
    tx.send_if_modified(|v| {
        let rises = upto > *v;
        if rises {
            *v = upto;
        }
        rises
    });
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal-{seq:016}.log"))
}

/// Segment files in `dir`, sorted by sequence number.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(StoreError::Open {
                path: dir.display().to_string(),
                source,
            });
        }
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
        });
        let w = wal.clone();
        let handle = std::thread::Builder::new()
            .name("usage-sync-wal".into())
            .spawn(move || w.writer_loop())
            .map_err(|e| io_err(Path::new("wal writer thread"), e))?;
        *wal.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
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
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers intents recovered from the log that are still to be
    /// re-sent, so the next checkpoint re-logs them.
    pub fn restore_outstanding(&self, intents: &[(FlushId, Vec<codec::LoggedDelta>)]) {
        let mut g = self.shared();
        for (id, deltas) in intents {
            let mut frame = Vec::new();
            codec::encode_owned(
                &codec::LogRecord::Intent {
                    id: *id,
                    deltas: deltas.clone(),
                },
                &mut frame,
            );
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

    /// Writes a checkpoint of `ledger` at the head of a new segment, and
    /// returns the sequence number of its last record. Once that record is
    /// durable, older segments may be deleted by the writer.
    ///
    /// Nothing is stopped. The new segment starts at once (with the
    /// outstanding intents); then the ledger's shards are taken one at a
    /// time ([`Ledger::cut_shards`]), each locked only while its counters
    /// are copied, and the copies are appended in short runs between the
    /// records that go on arriving. Records of changes made in a shard
    /// before it was taken carry the older cut and are applied once by
    /// replay (see `replay`). One checkpoint at a time.
    pub fn checkpoint(&self, ledger: &Ledger, now: Timestamp) -> Lsn {
        let _one = self.checkpointing.lock().unwrap_or_else(|e| e.into_inner());
        let seq = {
            let mut g = self.shared();
            let seq = g.segment_seq + 1;
            if std::mem::replace(&mut g.segment_open, true) {
                let (old, ids) = (g.segment_seq, g.ids_until.take());
                g.kept.insert(old, ids);
            }
            g.segment_seq = seq;
            let at = g.buf.len();
            g.rotations.push_back(Rotation { at, seq });
            g.segment_bytes = 0;
            g.checkpoint_bytes = u64::MAX;
            g.checkpoint_requested = false;
            g.position = Position {
                segment: seq,
                ..Position::default()
            };
            let n = codec::encode_marker(Some(seq), 0, &mut g.buf);
            self.push(&mut g, n);
            let bodies: Vec<Vec<u8>> = g.outstanding.values().cloned().collect();
            for body in bodies {
                let frame_seq = g.position.frames;
                let n = codec::encode_body(&body, frame_seq, &mut g.buf);
                self.push(&mut g, n);
            }
            seq
        };
        ledger.cut_shards(Cut(seq), &mut |units| {
            // Short runs: the log's lock is what every consume appends
            // under. The lock is not fair: re-taken at once, it would go
            // to this loop again and again while a consume waits, so the
            // thread steps aside between runs.
            for run in units.chunks(CHECKPOINT_RUN) {
                std::thread::yield_now();
                let mut g = self.shared();
                for u in run {
                    let frame_seq = g.position.frames;
                    let rec = Record::Unpersisted {
                        user: &u.user,
                        kind: &u.kind,
                        period_start: u.period_start,
                        units: u.units,
                    };
                    let n = codec::encode_frame(&rec, frame_seq, seq, &mut g.buf);
                    self.push(&mut g, n);
                }
            }
        });
        let mut g = self.shared();
        let frame_seq = g.position.frames;
        let n = codec::encode_marker(None, frame_seq, &mut g.buf);
        let end = self.push(&mut g, n);
        g.position.checkpointed = true;
        g.checkpoint_bytes = g.segment_bytes;
        g.completed_checkpoints.push((seq, end, now));
        end
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

    /// Writes the buffer from the calling task if no write is in progress
    /// and nothing in it needs the thread. Returns whether it wrote.
    fn lead_write(&self) -> Result<bool, StoreError> {
        let (bytes, upto, file, pos) = {
            let mut g = self.shared();
            if self.failed.load(Ordering::Acquire) {
                return Err(self.failure_error());
            }
            if g.writing || g.buf.is_empty() {
                return Ok(false);
            }
            // Segment switches and completed checkpoints (sync, then delete
            // old segments) are the thread's: hand over without a linger.
            let file =
                if g.closing || !g.rotations.is_empty() || !g.completed_checkpoints.is_empty() {
                    None
                } else {
                    self.current
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone()
                };
            let Some(file) = file else {
                g.urgent = true;
                self.wake.notify_one();
                return Ok(false);
            };
            (g.start_write(), g.next_lsn - 1, file, g.position)
        };
        let res = (&*file).write_all(&bytes);
        if let Err(e) = res {
            // Nothing is published past the failed bytes: they go back to
            // the head of the buffer (still under `writing`, so nobody else
            // writes meanwhile) and the writer thread retries them.
            self.stall(Some(&file), e, bytes, Vec::new(), Vec::new());
            return Err(self.failure_error());
        }
        self.segment_end
            .fetch_add(bytes.len() as u64, Ordering::AcqRel);
        *self.written_pos.lock().unwrap_or_else(|e| e.into_inner()) = pos;
        self.end_write(bytes);
        self.publish_written(upto);
        Ok(true)
    }

    /// Waits until everything appended so far is on disk, whatever the mode.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let target = self.shared().next_lsn - 1;
        if self.config.durability != Durability::Fsync {
            // The syncer covers what is written: wait for the write, then
            // ask for a sync.
            self.wait_written(target).await?;
            let mut s = self.syncer.lock().unwrap_or_else(|e| e.into_inner());
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
            .lock()
            .unwrap_or_else(|e| e.into_inner())
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
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
        // Nothing more is written: the directory may have a new owner.
        self.dir_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// Fails the log for good (see `failed`).
    fn fail(&self, what: &str, e: std::io::Error) {
        let msg = format!(
            "write-ahead log {what} failed in {}: {e}; restart the service once the cause is fixed",
            self.config.dir.display()
        );
        tracing::error!(target: "flush", "{msg}; no further request can be acknowledged");
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
        self.permanent.store(true, Ordering::Release);
        self.failed.store(true, Ordering::Release);
        self.wake_all_waiters();
    }

    fn wake_all_waiters(&self) {
        // Wake waiters so they see the failure.
        self.written.send_modify(|_| {});
        self.durable.send_modify(|_| {});
        self.durable_waiters.wake_upto(Lsn::MAX);
    }

    /// A write failed: the log stalls instead of losing `bytes`.
    ///
    /// `bytes` (what the failed round took, from its first unwritten byte)
    /// go back in front of the buffer, with `rotations` (offsets into
    /// `bytes`) and the checkpoints that round was to complete; rotations
    /// appended meanwhile shift behind them. In append mode the file is
    /// cut back to its last good length, so the retry does not leave the
    /// failed write's partial frame in front of its own (in `fsync` mode
    /// the retry overwrites at the same position). Waiters are woken with
    /// the failure (their requests answer 503); the writer thread retries.
    /// Called while `writing` is set; clears it.
    fn stall(
        &self,
        file: Option<&File>,
        e: std::io::Error,
        bytes: Vec<u8>,
        rotations: Vec<Rotation>,
        checkpoints: Vec<Completed>,
    ) {
        let positional = self.config.durability == Durability::Fsync;
        if !positional
            && let Some(file) = file
            && let Err(t) = file.set_len(self.segment_end.load(Ordering::Acquire))
        {
            // Cannot remove the partial frame: a retry would append after
            // it, and replay would call it corruption. Give up for good.
            return self.fail(&format!("write ({e}), then truncation"), t);
        }
        let msg = format!(
            "write-ahead log cannot write in {}: {e}; consumes answer 503 until it can \
             (retried every {} ms; free space or raise the volume's quota)",
            self.config.dir.display(),
            STALL_RETRY.as_millis()
        );
        let first = !self.failed.swap(true, Ordering::AcqRel);
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg.clone());
        if first {
            tracing::error!(target: "flush", "{msg}");
        }
        {
            let mut g = self.shared();
            let n = bytes.len();
            let mut buf = bytes;
            buf.extend_from_slice(&g.buf);
            g.buf = buf;
            let later: Vec<Rotation> = g.rotations.drain(..).collect();
            g.rotations.extend(rotations);
            g.rotations.extend(later.into_iter().map(|r| Rotation {
                at: r.at + n,
                seq: r.seq,
            }));
            g.completed_checkpoints.extend(checkpoints);
            g.writing = false;
        }
        self.wake_all_waiters();
        // The thread retries (it may be waiting for an append).
        self.wake.notify_one();
    }

    /// Records `pos`, now on disk, in the manifest: at most about once a
    /// second within a segment (the manifest costs two syncs), at once for
    /// a new segment or when `force`d (close). Never a position inside an
    /// unfinished checkpoint, and never backwards. A failed manifest write
    /// is logged and leaves the older manifest, which stays true (it only
    /// claims less).
    fn record_durable(&self, pos: Position, force: bool) {
        if !pos.checkpointed {
            return;
        }
        let mut m = self.manifest.lock().unwrap_or_else(|e| e.into_inner());
        let (last, at) = &mut *m;
        if (pos.segment, pos.frames) <= (last.segment, last.frames) {
            return;
        }
        if !force && pos.segment == last.segment && at.elapsed() < MANIFEST_INTERVAL {
            return;
        }
        match manifest::write(&self.config.dir, &pos) {
            Ok(()) => {
                *last = pos;
                *at = Instant::now();
            }
            Err(e) => {
                // Retried at the next durable write, so not before a second.
                *at = Instant::now();
                tracing::warn!(target: "flush", error = %e, dir = %self.config.dir.display(), "could not update the write-ahead log manifest; it keeps an older position");
            }
        }
    }

    /// A write succeeded after a stall: acknowledgements resume.
    fn heal(&self) {
        if self.failed.load(Ordering::Acquire) && !self.permanent.load(Ordering::Acquire) {
            self.failed.store(false, Ordering::Release);
            tracing::warn!(target: "flush", dir = %self.config.dir.display(), "write-ahead log writes again; consumes are acknowledged again");
        }
    }

    /// The writer thread: drain, write, publish, repeat. In `fsync` mode it
    /// also syncs each round before publishing durability (group commit);
    /// in the other modes the syncer thread syncs, so a write never waits
    /// behind an `fdatasync`.
    fn writer_loop(self: Arc<Self>) {
        let mut file: Option<Segment> = None;
        let linger = self.config.durability != Durability::Fsync;
        let positional = self.config.durability == Durability::Fsync;
        loop {
            let (bytes, rotations, upto, closing, checkpoints, position) = {
                let mut g = self.shared();
                while g.buf.is_empty() && !g.closing {
                    g = self.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                if self.failed.load(Ordering::Acquire) && !self.permanent.load(Ordering::Acquire) {
                    // Stalled: try the buffer again after a pause, or at
                    // once when closing (a last chance to keep it).
                    let deadline = Instant::now() + STALL_RETRY;
                    g = wait_until(&self.wake, g, deadline, |g| g.closing);
                } else if linger {
                    // Let records gather (waiting requests write their own
                    // meanwhile); skipped when closing or someone needs us.
                    let deadline = Instant::now() + WRITER_LINGER;
                    g = wait_until(&self.wake, g, deadline, |g| g.closing || g.urgent);
                }
                // One writer at a time: a leading request's write is short
                // (it never includes a rotation), so poll for its end.
                while g.writing && !self.permanent.load(Ordering::Acquire) {
                    g = self
                        .wake
                        .wait_timeout(g, Duration::from_micros(100))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                g.writer_armed = false;
                g.urgent = false;
                if g.buf.is_empty() && !g.closing && g.completed_checkpoints.is_empty() {
                    // A leading request wrote everything.
                    continue;
                }
                let bytes = g.start_write();
                let rotations: Vec<Rotation> = g.rotations.drain(..).collect();
                // Checkpoints complete within what this round writes.
                let upto = g.next_lsn - 1;
                let (done, later): (Vec<_>, Vec<_>) = g
                    .completed_checkpoints
                    .drain(..)
                    .partition(|&(_, end, _)| end <= upto);
                g.completed_checkpoints = later;
                (bytes, rotations, upto, g.closing, done, g.position)
            };
            if self.permanent.load(Ordering::Acquire) {
                self.shared().writing = false;
                if closing {
                    self.stop_syncer();
                    return;
                }
                continue;
            }
            // Write, switching segment at each rotation point. The old
            // segment is synced before the new one receives a byte, so a
            // newer segment existing implies the older one is complete.
            // A failed write or segment creation stalls the log with
            // everything from the first unwritten byte (`stall`); a failed
            // sync fails it for good.
            let mut pos = 0;
            let mut rotations = rotations.into_iter().peekable();
            let mut failure = None;
            while let Some(r) = rotations.peek() {
                let (at, seq) = (r.at, r.seq);
                if let Some(seg) = file.as_mut() {
                    if let Err(e) = seg.write(&bytes[pos..at]) {
                        failure = Some(e);
                        break;
                    }
                    self.segment_end
                        .fetch_add((at - pos) as u64, Ordering::AcqRel);
                    if let Err(e) = seg.file.sync_data() {
                        return self.fail("fdatasync", e);
                    }
                }
                pos = at;
                let path = segment_path(&self.config.dir, seq);
                match Segment::open(&path, positional) {
                    Ok(seg) => {
                        *self.current.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(seg.file.clone());
                        self.segment_end.store(seg.pos, Ordering::Release);
                        file = Some(seg);
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
                sync_dir(&self.config.dir);
                rotations.next();
            }
            if failure.is_none() && pos < bytes.len() {
                let Some(seg) = file.as_mut() else {
                    // Appends before the first checkpoint are a bug in the
                    // caller; refuse rather than lose them silently.
                    return self.fail(
                        "write",
                        std::io::Error::other("record appended before the first checkpoint"),
                    );
                };
                match seg.write(&bytes[pos..]) {
                    Ok(()) => {
                        self.segment_end
                            .fetch_add((bytes.len() - pos) as u64, Ordering::AcqRel);
                    }
                    Err(e) => failure = Some(e),
                }
            }
            if let Some(e) = failure {
                let rest: Vec<Rotation> = rotations
                    .map(|r| Rotation {
                        at: r.at - pos,
                        seq: r.seq,
                    })
                    .collect();
                let unwritten = bytes[pos..].to_vec();
                self.stall(
                    file.as_ref().map(|s| &*s.file),
                    e,
                    unwritten,
                    rest,
                    checkpoints,
                );
                if closing {
                    // The stall is final: what never reached the log was
                    // never acknowledged (its requests answered 503).
                    self.stop_syncer();
                    return;
                }
                continue;
            }
            self.heal();
            // In fsync mode nothing is acknowledged before it is synced; a
            // completed checkpoint and closing are synced in every mode.
            let sync_now =
                self.config.durability == Durability::Fsync || closing || !checkpoints.is_empty();
            if sync_now
                && let Some(seg) = file.as_ref()
                && let Err(e) = seg.file.sync_data()
            {
                return self.fail("fdatasync", e);
            }
            *self.written_pos.lock().unwrap_or_else(|e| e.into_inner()) = position;
            // Clear `writing` before publishing (see `wait_written`).
            self.end_write(bytes);
            self.publish_written(upto);
            if sync_now {
                self.publish_durable(upto);
                self.record_durable(position, closing || !checkpoints.is_empty());
            }
            // A checkpoint whose end record is now on disk makes the older
            // segments redundant for units. (Not at rotation time: the
            // checkpoint may still be partly in the buffer, and an
            // incomplete checkpoint is ignored by recovery.) A segment
            // whose request ids may still be inside the dedup window stays
            // for them, and so do the ones after it: recovery reads an
            // unbroken run of segments.
            if let Some(&(newest, _, now)) = checkpoints.iter().max() {
                let keep_from = self.retire(newest, now);
                if let Ok(list) = list_segments(&self.config.dir) {
                    for (seq, path) in list {
                        if seq < keep_from {
                            let _ = std::fs::remove_file(path);
                        }
                    }
                }
                sync_dir(&self.config.dir);
            }
            if closing {
                self.stop_syncer();
                return;
            }
        }
    }

    /// The oldest segment to keep once the checkpoint of `newest` is on
    /// disk, at `now`: the first, oldest first, whose newest request id
    /// may still be inside the dedup window (its refunds included), or
    /// `newest`. Forgets the segments before it.
    fn retire(&self, newest: u64, now: Timestamp) -> u64 {
        let window = i64::try_from(self.config.dedup_window.as_millis()).unwrap_or(i64::MAX);
        let keep_for = window.saturating_add(window / 256);
        let mut g = self.shared();
        let keep_from = g
            .kept
            .range(..newest)
            .find(|(_, ids)| ids.is_some_and(|t| now.since(t) < keep_for))
            .map_or(newest, |(&seq, _)| seq);
        g.kept = g.kept.split_off(&keep_from);
        keep_from
    }

    /// Segments kept for the request ids they hold (the current one
    /// excluded).
    pub fn kept_segments(&self) -> usize {
        self.shared().kept.len()
    }

    /// Ends a write: clears `writing` and keeps the emptied buffer for the
    /// next take. Call before publishing what was written.
    fn end_write(&self, mut bytes: Vec<u8>) {
        let mut g = self.shared();
        g.writing = false;
        bytes.clear();
        if g.spare.capacity() == 0 && bytes.capacity() <= SPARE_CAPACITY {
            g.spare = bytes;
        }
    }

    /// Monotonic: two writers may publish out of order (the one that took
    /// the earlier records can publish after the later one).
    fn publish_written(&self, upto: Lsn) {
        publish_max(&self.written, upto);
    }

    fn publish_durable(&self, upto: Lsn) {
        // The value first, then the waiters: see `LsnWaiters`.
        publish_max(&self.durable, upto);
        self.durable_waiters.wake_upto(upto);
    }

    fn stop_syncer(&self) {
        let mut s = self.syncer.lock().unwrap_or_else(|e| e.into_inner());
        s.closing = true;
        self.syncer_wake.notify_one();
    }

    /// The syncer thread (`batched` and `none` modes): `fdatasync`s the
    /// current segment every `fsync_interval` (batched) and whenever a
    /// sync is requested, then publishes everything written before it as
    /// durable. Records in older segments were synced at rotation.
    fn syncer_loop(self: Arc<Self>) {
        let interval = self.config.fsync_interval;
        let periodic = self.config.durability == Durability::Batched;
        loop {
            {
                let mut s = self.syncer.lock().unwrap_or_else(|e| e.into_inner());
                let deadline = Instant::now() + interval;
                if periodic {
                    s = wait_until(&self.syncer_wake, s, deadline, |s| s.requested || s.closing);
                } else {
                    while !s.requested && !s.closing {
                        s = self.syncer_wake.wait(s).unwrap_or_else(|e| e.into_inner());
                    }
                }
                if s.closing {
                    return;
                }
                s.requested = false;
            }
            // Read what is written *before* syncing: all of it is in the
            // current file or in an older, already synced segment.
            let target = *self.written.borrow();
            if target <= *self.durable.borrow() {
                continue;
            }
            let pos = *self.written_pos.lock().unwrap_or_else(|e| e.into_inner());
            let f = self
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(f) = f
                && let Err(e) = f.sync_data()
            {
                return self.fail("fdatasync", e);
            }
            self.publish_durable(target);
            self.record_durable(pos, false);
        }
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
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    /// Counts its wake-ups.
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Counter>, Waker) {
        let c = Arc::new(Counter(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn lsn_waiters_wake_each_task_once_when_its_record_is_covered() {
        let waiters = LsnWaiters::default();
        let tasks: Vec<_> = (1..=3).map(|_| waker()).collect();
        for (lsn, (_, w)) in (1..).zip(&tasks) {
            assert!(!waiters.register(lsn, w, false, || false));
        }
        // A re-poll of the third task replaces its entry.
        assert!(!waiters.register(3, &tasks[2].1, true, || false));
        assert_eq!(waiters.list.lock().unwrap().len(), 3);
        waiters.wake_upto(2);
        let counts = |t: &[(Arc<Counter>, Waker)]| {
            t.iter()
                .map(|(c, _)| c.0.load(Ordering::SeqCst))
                .collect::<Vec<_>>()
        };
        assert_eq!(counts(&tasks), [1, 1, 0]);
        // Already covered when it registers: ready, nothing kept.
        let (late, w) = waker();
        assert!(waiters.register(2, &w, false, || true));
        assert_eq!(late.0.load(Ordering::SeqCst), 0);
        assert_eq!(waiters.list.lock().unwrap().len(), 1);
        waiters.wake_upto(Lsn::MAX);
        assert_eq!(counts(&tasks), [1, 1, 1]);
        assert!(waiters.list.lock().unwrap().is_empty());
    }

    /// A checkpoint larger than the segment size does not ask for the
    /// next one at once: only the records appended after it count, and
    /// they must pass the checkpoint's own size too.
    #[test]
    fn a_large_checkpoint_is_never_followed_by_another_back_to_back() {
        use usage_sync_core::{LedgerConfig, RequestId, Units, UserId, default_catalogue};
        let dir = tempfile::tempdir().unwrap();
        let mut config = WalConfig::new(dir.path(), Durability::Batched);
        config.max_segment_bytes = 4096;
        let (wal, _) = Wal::open(config).unwrap();
        let (kinds, plans) = default_catalogue();
        let fast = *kinds.get("fast").unwrap();
        let ledger = Ledger::new(kinds, plans, LedgerConfig::default());
        let now = Timestamp::from_millis(1_795_000_000_000);
        for i in 0..200 {
            let user = UserId::parse(&format!("user-{i:04}")).unwrap();
            let epoch = ledger.load_epoch(user.as_str());
            ledger
                .warm(&user, Default::default(), &[], epoch, now)
                .unwrap();
        }
        wal.checkpoint(&ledger, now);
        ledger.attach_journal(wal.clone());
        let mut n = 0;
        let mut consume = |user: &str| {
            // With a request id, so a denied consume is logged too.
            n += 1;
            let rid = RequestId::parse(&format!("r-{n:08}")).unwrap();
            ledger
                .consume(user, &fast, Units::ONE, Some(&rid), now)
                .unwrap();
        };
        // 200 users with pending units at about 50 bytes each: the
        // checkpoint that holds them is over twice the segment size.
        for i in 0..200 {
            consume(&format!("user-{i:04}"));
        }
        wal.checkpoint(&ledger, now);
        let checkpoint = wal.segment().1;
        assert!(checkpoint > 2 * 4096, "checkpoint of {checkpoint} bytes");
        assert!(!wal.checkpoint_due(), "no checkpoint right after one");
        while !wal.checkpoint_due() {
            consume("user-0000");
        }
        let since = wal.segment().1 - checkpoint;
        assert!(
            since > checkpoint && since < checkpoint + 100,
            "due after {since} bytes of records behind a {checkpoint}-byte checkpoint"
        );
        wal.close();
    }

    /// Request ids are not in checkpoints: the segments whose consumes
    /// carry them stay until the newest id has left the dedup window, and
    /// recovery reads them there, refunds in later segments included.
    #[test]
    fn segments_holding_request_ids_stay_for_the_window_and_are_read_back() {
        use usage_sync_core::{LedgerConfig, RequestId, Units, UserId, default_catalogue};
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig::new(dir.path(), Durability::Batched);
        let hour = 3_600_000;
        let t0 = Timestamp::from_millis(1_795_000_000_000);
        let at = |h: i64| t0.saturating_add_ms(h * hour);
        let rid = |s: &str| RequestId::parse(s).unwrap();
        let open = |now: Timestamp| {
            let (wal, rec) = Wal::open(config.clone()).unwrap();
            let (kinds, plans) = default_catalogue();
            let ledger = Ledger::new(
                kinds,
                plans,
                LedgerConfig {
                    dedup_key: rec.dedup_key,
                    ..LedgerConfig::default()
                },
            );
            let user = UserId::parse("u").unwrap();
            let epoch = ledger.load_epoch("u");
            ledger
                .warm(&user, Default::default(), &[], epoch, now)
                .unwrap();
            for (fp, d) in &rec.dedup {
                let kind = *ledger.kinds().get(&d.kind).unwrap();
                ledger.recover_request(
                    *fp,
                    &user,
                    kind,
                    d.amount,
                    &d.decision.to_decision(d.period_start),
                    d.refunded,
                    d.at,
                    now,
                );
            }
            wal.checkpoint(&ledger, now);
            ledger.attach_journal(wal.clone());
            (wal, ledger, rec)
        };
        let seqs = || -> Vec<u64> {
            list_segments(dir.path())
                .unwrap()
                .into_iter()
                .map(|(s, _)| s)
                .collect()
        };

        let (wal, ledger, _) = open(t0);
        let fast = *ledger.kinds().get("fast").unwrap();
        for r in ["r1", "r2", "r3"] {
            ledger
                .consume("u", &fast, Units::ONE, Some(&rid(r)), t0)
                .unwrap();
        }
        wal.checkpoint(&ledger, at(1));
        ledger
            .consume("u", &fast, Units::ONE, Some(&rid("r4")), at(1))
            .unwrap();
        ledger.refund("r2", None, at(1)).unwrap();
        wal.close();
        assert_eq!(seqs(), vec![1, 2], "segment 1 holds ids of the window");

        // Restarted an hour later: all four ids are known, r2 refunded.
        let (wal, ledger, rec) = open(at(2));
        assert_eq!(rec.id_segments, vec![(1, Some(t0)), (2, Some(at(1)))]);
        assert_eq!(rec.dedup.len(), 4);
        assert_eq!(ledger.dedup_entries(), 4);
        assert!(
            ledger
                .consume("u", &fast, Units::ONE, Some(&rid("r1")), at(2))
                .unwrap()
                .deduplicated
        );
        assert_eq!(
            ledger.refund("r2", None, at(2)),
            Err(usage_sync_core::CoreError::AlreadyRefunded)
        );
        wal.close();
        assert_eq!(seqs(), vec![1, 2, 3]);

        // Past the window of segment 1's ids (not yet of r4, an hour
        // younger): segment 1 goes, segment 2 stays.
        let (wal, ledger, rec) = open(at(24).saturating_add_ms(hour / 2));
        assert_eq!(rec.dedup.len(), 4, "read back; the ledger drops the old");
        assert_eq!(ledger.dedup_entries(), 1, "r4 only");
        wal.close();
        assert_eq!(seqs(), vec![2, 3, 4]);

        // Past r4's window too: only the newest segment is left.
        let (wal, _, _) = open(at(26));
        wal.close();
        assert_eq!(seqs(), vec![5]);
    }

    /// Soak in compressed time, small enough for every test run (the
    /// 10 M-id version is `cargo bench -p usage-sync-store --bench soak`):
    /// 200 000 ids over ten windows of 20 000, checkpoints whenever the
    /// log asks. Once the first window is full, the ids remembered and the
    /// segments on disk stay flat.
    #[test]
    fn ids_and_segments_stay_flat_over_ten_windows() {
        use usage_sync_core::{LedgerConfig, RequestId, Trigger, Units, UserId, default_catalogue};
        let dir = tempfile::tempdir().unwrap();
        let mut config = WalConfig::new(dir.path(), Durability::None);
        config.max_segment_bytes = 256 << 10;
        config.dedup_window = Duration::from_secs(20);
        let (wal, _) = Wal::open(config).unwrap();
        let (kinds, plans) = default_catalogue();
        let t0 = Timestamp::from_millis(1_795_000_000_000);
        let l = Ledger::new(
            kinds,
            plans,
            LedgerConfig {
                dedup_window_ms: 20_000,
                threshold: u64::MAX,
                ..LedgerConfig::default()
            },
        );
        let premium = *l.kinds().get("premium").unwrap();
        let users: Vec<UserId> = (0..100)
            .map(|i| UserId::parse(&format!("u{i}")).unwrap())
            .collect();
        for u in &users {
            l.warm(u, Default::default(), &[], l.load_epoch(u.as_str()), t0)
                .unwrap();
        }
        wal.checkpoint(&l, t0);
        l.attach_journal(wal.clone());
        // The most segments kept during the second window, and after it.
        let (mut most_ids, mut second, mut most_segments) = (0, 0, 0);
        // One id a millisecond: a window holds 20 000.
        for i in 0..200_000i64 {
            let now = t0.saturating_add_ms(i);
            let rid = RequestId::parse(&format!("id-{i}")).unwrap();
            let user = users[usize::try_from(i).unwrap() % users.len()].as_str();
            l.consume(user, &premium, Units::ONE, Some(&rid), now)
                .unwrap();
            if wal.checkpoint_due() {
                let (batches, _) = l.take_all(10_000, Trigger::Guarantee);
                for b in &batches {
                    l.complete(b, &vec![0; b.deltas.len()], now);
                }
                wal.checkpoint(&l, now);
            }
            if i >= 20_000 {
                most_ids = most_ids.max(l.dedup_entries());
                if i < 40_000 {
                    second = second.max(wal.kept_segments());
                } else {
                    most_segments = most_segments.max(wal.kept_segments());
                }
            }
        }
        wal.close();
        // The window plus at most 1/512 of it, and what a shard holds
        // until its next operation pops it (each of the 64 is touched
        // about every 64 ms here): 1 %. The segments kept (256 KiB each,
        // a few thousand ids) stay as many as a full window needed.
        assert!(most_ids <= 20_200, "{most_ids} ids remembered");
        assert!(
            most_segments <= second + 1 && second <= 10,
            "{second} segments kept in the second window, up to {most_segments} after"
        );
        let on_disk = list_segments(dir.path()).unwrap().len();
        assert!(on_disk <= 9, "{on_disk} segments on disk");
    }

    /// Checkpoints run while another thread consumes, refunds, and takes
    /// and completes batches: afterwards the log replays to exactly the
    /// ledger's units outside the store, from the newest checkpoint, and
    /// also from the one before it read on through the newest as if that
    /// one had never finished (a crash in the middle of a checkpoint).
    #[test]
    fn checkpoints_beside_concurrent_changes_replay_exactly() {
        use std::collections::HashMap;
        use std::sync::atomic::AtomicBool;
        use usage_sync_core::{LedgerConfig, RequestId, Trigger, Units, UserId, open_catalogue};
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(WalConfig::new(dir.path(), Durability::None)).unwrap();
        let (kinds, plans) = open_catalogue();
        let now = Timestamp::from_millis(1_795_000_000_000);
        let l = Ledger::new(
            kinds,
            plans,
            LedgerConfig {
                threshold: u64::MAX,
                ..LedgerConfig::default()
            },
        );
        let users: Vec<UserId> = (0..300)
            .map(|i| UserId::parse(&format!("u{i}")).unwrap())
            .collect();
        for u in &users {
            l.warm(u, Default::default(), &[], l.load_epoch(u.as_str()), now)
                .unwrap();
        }
        wal.checkpoint(&l, now);
        l.attach_journal(wal.clone());
        let kinds: Vec<_> = ["fast", "premium"]
            .iter()
            .map(|k| *l.kinds().get(k).unwrap())
            .collect();
        let stop = AtomicBool::new(false);
        let done = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut rng = fastrand::Rng::with_seed(11);
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    n += 1;
                    done.store(n, Ordering::Release);
                    let user = users[rng.usize(..users.len())].as_str();
                    let kind = &kinds[rng.usize(..2)];
                    let amount = Units::parse(i128::from(rng.u8(1..5))).unwrap();
                    match rng.u8(..20) {
                        0..=11 => {
                            l.consume(user, kind, amount, None, now).unwrap();
                        }
                        12..=15 => {
                            let rid = RequestId::parse(&format!("r{n}")).unwrap();
                            l.consume(user, kind, amount, Some(&rid), now).unwrap();
                        }
                        16 => {
                            let _ = l.refund(&format!("r{}", rng.u64(1..=n)), None, now);
                        }
                        _ => {
                            let (batches, _) = l.take_oldest(rng.usize(1..50), 64, Trigger::Check);
                            // Some land, some stay in flight.
                            for b in batches {
                                if rng.bool() {
                                    l.complete(&b, &vec![0; b.deltas.len()], now);
                                }
                            }
                        }
                    }
                }
            });
            // Checkpoints back to back until 10 000 changes went on
            // beside them.
            let mut checkpoints = 0;
            while done.load(Ordering::Acquire) < 10_000 || checkpoints < 5 {
                wal.checkpoint(&l, now);
                checkpoints += 1;
            }
            stop.store(true, Ordering::Release);
        });
        // The ledger's own figures, and the log's.
        let mut truth = HashMap::new();
        l.cut_shards(Cut(u64::MAX - 1), &mut |units| {
            for u in units {
                truth.insert(
                    (
                        u.user.as_str().to_owned(),
                        u.kind.name().to_owned(),
                        u.period_start,
                    ),
                    u.units,
                );
            }
        });
        assert!(truth.len() > 100, "the run left units outside the store");
        wal.close();
        drop(wal);
        let segments = list_segments(dir.path()).unwrap();
        assert!(segments.len() >= 2, "{segments:?}");
        let (newest, before) = (
            &segments[segments.len() - 1].1,
            &segments[segments.len() - 2].1,
        );
        let fresh = replay::replay_for_test(None, newest);
        let chained = replay::replay_for_test(Some(before), newest);
        // The counters whose figure differs from the ledger's, if any.
        let wrong = |r: &Recovered| -> Vec<_> {
            let mut keys: Vec<_> = truth.keys().chain(r.unpersisted.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .filter(|k| truth.get(*k) != r.unpersisted.get(*k))
                .map(|k| {
                    (
                        k.clone(),
                        truth.get(k).copied(),
                        r.unpersisted.get(k).copied(),
                    )
                })
                .take(5)
                .collect()
        };
        assert_eq!(wrong(&fresh), vec![], "from the newest checkpoint");
        assert_eq!(wrong(&chained), vec![], "from the one before it");
        let ids = |r: &Recovered| {
            let mut v: Vec<_> = r.outstanding.iter().map(|(id, _)| *id).collect();
            v.sort();
            v
        };
        assert_eq!(ids(&fresh), ids(&chained));
        let (_, rec) = Wal::open(WalConfig::new(dir.path(), Durability::None)).unwrap();
        assert_eq!(wrong(&rec), vec![], "through recovery");
    }
}
