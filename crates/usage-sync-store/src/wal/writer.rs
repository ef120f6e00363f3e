//! The log's writing side: the writer thread (group commit, segment
//! switches, deletion of segments no longer needed), the syncer thread,
//! a waiting request's own write, and what happens when a write fails
//! (the log stalls and heals) or a sync fails (for good).

use super::*;
use usage_sync_core::Locked;

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
pub(super) struct LsnWaiters {
    pub(super) list: Mutex<Vec<(Lsn, Waker)>>,
}

impl LsnWaiters {
    /// Returns true if `done()` holds; otherwise registers `waker` for
    /// `lsn`. A task's first poll (`repoll` false) pushes without looking:
    /// the list holds every waiting request, and searching it on every
    /// registration would cost a full scan per request. A re-poll replaces
    /// the task's earlier entry, so each task stays in the list once.
    pub(super) fn register(
        &self,
        lsn: Lsn,
        waker: &Waker,
        repoll: bool,
        done: impl Fn() -> bool,
    ) -> bool {
        let mut list = self.list.locked();
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
    pub(super) fn wake_upto(&self, upto: Lsn) {
        let woken: Vec<(Lsn, Waker)> = self
            .list
            .locked()
            .extract_if(.., |(l, _)| *l <= upto)
            .collect();
        for (_, w) in woken {
            w.wake();
        }
    }
}

/// Raises a published sequence number, never lowers it; waiters are woken
/// only when it rises.
pub(super) fn publish_max(tx: &watch::Sender<Lsn>, upto: Lsn) {
    tx.send_if_modified(|v| {
        let rises = upto > *v;
        if rises {
            *v = upto;
        }
        rises
    });
}

/// The segment the writer thread writes to.
pub(super) struct Segment {
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
    pub(super) fn open(path: &Path, positional: bool) -> std::io::Result<Segment> {
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
    pub(super) fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
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
pub(super) fn wait_until<'a, T>(
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

impl Wal {
    /// Writes the buffer from the calling task if no write is in progress
    /// and nothing in it needs the thread. Returns whether it wrote.
    pub(super) fn lead_write(&self) -> Result<bool, StoreError> {
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
                    self.current.locked().clone()
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
        *self.written_pos.locked() = pos;
        self.end_write(bytes);
        self.publish_written(upto);
        Ok(true)
    }

    /// Fails the log for good (see `failed`).
    pub(super) fn fail(&self, what: &str, e: std::io::Error) {
        let msg = format!(
            "write-ahead log {what} failed in {}: {e}; restart the service once the cause is fixed",
            self.config.dir.display()
        );
        tracing::error!(target: "flush", "{msg}; no further request can be acknowledged");
        *self.failure.locked() = Some(msg);
        self.permanent.store(true, Ordering::Release);
        self.failed.store(true, Ordering::Release);
        self.wake_all_waiters();
    }

    pub(super) fn wake_all_waiters(&self) {
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
    pub(super) fn stall(
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
        *self.failure.locked() = Some(msg.clone());
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
    pub(super) fn record_durable(&self, pos: Position, force: bool) {
        if !pos.checkpointed {
            return;
        }
        let mut m = self.manifest.locked();
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
    pub(super) fn heal(&self) {
        if self.failed.load(Ordering::Acquire) && !self.permanent.load(Ordering::Acquire) {
            self.failed.store(false, Ordering::Release);
            tracing::warn!(target: "flush", dir = %self.config.dir.display(), "write-ahead log writes again; consumes are acknowledged again");
        }
    }

    /// The writer thread: drain, write, publish, repeat. In `fsync` mode it
    /// also syncs each round before publishing durability (group commit);
    /// in the other modes the syncer thread syncs, so a write never waits
    /// behind an `fdatasync`.
    pub(super) fn writer_loop(self: Arc<Self>) {
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
                        *self.current.locked() = Some(seg.file.clone());
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
            // A checkpoint whose end record is now on disk makes the older
            // segments redundant for units. (Not at rotation time: the
            // checkpoint may still be partly in the buffer, and an
            // incomplete checkpoint is ignored by recovery.) A segment
            // whose request ids may still be inside the dedup window stays
            // for them, and so do the ones after it: recovery reads an
            // unbroken run of segments. The bookkeeping is done before the
            // checkpoint is published as durable, so whoever waited for it
            // (`sync`) sees the segments kept after it; the files go after.
            let retired = checkpoints
                .iter()
                .max()
                .map(|&(newest, _, now)| self.retire(newest, now));
            *self.written_pos.locked() = position;
            // Clear `writing` before publishing (see `wait_written`).
            self.end_write(bytes);
            self.publish_written(upto);
            if sync_now {
                self.publish_durable(upto);
                self.record_durable(position, closing || !checkpoints.is_empty());
            }
            if let Some(keep_from) = retired {
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
    pub(super) fn retire(&self, newest: u64, now: Timestamp) -> u64 {
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

    /// Ends a write: clears `writing` and keeps the emptied buffer for the
    /// next take. Call before publishing what was written.
    pub(super) fn end_write(&self, mut bytes: Vec<u8>) {
        let mut g = self.shared();
        g.writing = false;
        bytes.clear();
        if g.spare.capacity() == 0 && bytes.capacity() <= SPARE_CAPACITY {
            g.spare = bytes;
        }
    }

    /// Monotonic: two writers may publish out of order (the one that took
    /// the earlier records can publish after the later one).
    pub(super) fn publish_written(&self, upto: Lsn) {
        publish_max(&self.written, upto);
    }

    pub(super) fn publish_durable(&self, upto: Lsn) {
        // The value first, then the waiters: see `LsnWaiters`.
        publish_max(&self.durable, upto);
        self.durable_waiters.wake_upto(upto);
    }

    pub(super) fn stop_syncer(&self) {
        let mut s = self.syncer.locked();
        s.closing = true;
        self.syncer_wake.notify_one();
    }

    /// The syncer thread (`batched` and `none` modes): `fdatasync`s the
    /// current segment every `fsync_interval` (batched) and whenever a
    /// sync is requested, then publishes everything written before it as
    /// durable. Records in older segments were synced at rotation.
    pub(super) fn syncer_loop(self: Arc<Self>) {
        let interval = self.config.fsync_interval;
        let periodic = self.config.durability == Durability::Batched;
        loop {
            {
                let mut s = self.syncer.locked();
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
            let pos = *self.written_pos.locked();
            let f = self.current.locked().clone();
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
