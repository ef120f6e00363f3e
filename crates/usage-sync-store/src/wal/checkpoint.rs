//! Checkpoints: the ledger's units outside the store, copied at the head
//! of a new segment while consumes go on (see `docs/durability.md`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use usage_sync_core::Locked;

use usage_sync_core::{Cut, Ledger, Lsn, Record, Timestamp};

use super::{CHECKPOINT_BACKLOG, CHECKPOINT_BUSY, CHECKPOINT_RUN, Position, Rotation, Wal, codec};

impl Wal {
    /// Writes a checkpoint of `ledger` at the head of a new segment, and
    /// returns the sequence number of its last record. Once that record is
    /// durable, older segments may be deleted by the writer.
    ///
    /// Nothing is stopped. The new segment starts at once (with the
    /// outstanding intents); then the ledger is copied a few users at a
    /// time ([`Ledger::cut_shards`]), each shard locked only while a run of
    /// its users is copied, and the copies are appended in short runs
    /// between the records that go on arriving, never more than
    /// `CHECKPOINT_BACKLOG` ahead of the writer. Records of changes made
    /// to a user before it was copied carry the older cut and are applied
    /// once by replay (see `replay`). One checkpoint at a time.
    pub fn checkpoint(&self, ledger: &Ledger, now: Timestamp) -> Lsn {
        self.checkpoint_paced(ledger, now, self.config.checkpoint_rest)
    }

    /// A checkpoint without rests, for when nothing runs beside it that
    /// could use the cores (at start-up, before requests are served; at
    /// shutdown, after they stopped): it takes half the time.
    /// A background checkpoint still running (at shutdown) stops resting,
    /// so this one does not wait out its rests.
    pub fn checkpoint_at_once(&self, ledger: &Ledger, now: Timestamp) -> Lsn {
        self.hurry.store(true, Ordering::Release);
        let end = self.checkpoint_paced(ledger, now, Duration::ZERO);
        self.hurry.store(false, Ordering::Release);
        end
    }

    fn checkpoint_paced(&self, ledger: &Ledger, now: Timestamp, rest: Duration) -> Lsn {
        let _one = self.checkpointing.locked();
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
        let mut busy = Instant::now();
        ledger.cut_shards(Cut(seq), &mut |units| {
            // Short runs: the log's lock is what every consume appends
            // under. The lock is not fair: re-taken at once, it would go
            // to this loop again and again while a consume waits, so the
            // thread steps aside between runs.
            for run in units.chunks(CHECKPOINT_RUN) {
                std::thread::yield_now();
                let mut g = self.shared();
                // Never more than a backlog ahead of the writer: a buffer
                // of tens of MiB grows (and faults its pages in) under the
                // lock every consume appends under. A stalled or closing
                // log is not waited for (its buffer is kept whole).
                while g.buf.len() >= CHECKPOINT_BACKLOG
                    && !g.closing
                    && !self.failed.load(Ordering::Acquire)
                {
                    g.urgent = true;
                    self.wake.notify_one();
                    drop(g);
                    std::thread::sleep(Duration::from_micros(200));
                    g = self.shared();
                    busy = Instant::now();
                }
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
                drop(g);
                if !rest.is_zero()
                    && busy.elapsed() >= CHECKPOINT_BUSY
                    && !self.hurry.load(Ordering::Acquire)
                {
                    std::thread::sleep(rest);
                    busy = Instant::now();
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
}
