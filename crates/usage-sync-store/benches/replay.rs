//! Replay speed of the write-ahead log: one segment holding a checkpoint
//! and 1 000 000 consume records (100 000 users, two kinds, half with a
//! request id, plus batch intents and completions), read and rebuilt by
//! recovery. Target: ≤ 2 s. `cargo bench -p usage-sync-store --bench replay`

use std::time::Instant;

use usage_sync_core::{FlushId, Timestamp};
use usage_sync_store::wal::codec::{Deltas, LogRecord, LoggedDecision, encode};
use usage_sync_store::wal::replay;

fn main() {
    const RECORDS: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let period = Timestamp(1_793_491_200_000);
    let mut buf = Vec::with_capacity(80 << 20);
    // Numbered frames, as the log writes them.
    let mut frame = 0u64;
    let mut encode_owned = |rec: &LogRecord<'_>, buf: &mut Vec<u8>| {
        encode(rec, Some(frame), buf);
        frame += 1;
    };
    encode_owned(&LogRecord::CheckpointStart { seq: 1 }, &mut buf);
    encode_owned(&LogRecord::CheckpointEnd, &mut buf);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut n = 0u64;
    let mut flush = 0u128;
    while n < RECORDS {
        let user = format!("user-{:06}", rng.u32(0..100_000));
        let kind = if rng.bool() { "fast" } else { "premium" };
        let request_id = rng.bool().then(|| format!("req-{n:012}"));
        encode_owned(
            &LogRecord::Consume {
                user: user.into(),
                kind: kind.into(),
                period_start: period,
                amount: 1,
                request_id: request_id.map(Into::into),
                decision: LoggedDecision {
                    allowed: true,
                    used: 1,
                    limit: None,
                },
                at: Timestamp(1_795_000_000_000 + n.cast_signed()),
                precut: false,
            },
            &mut buf,
        );
        n += 1;
        // A batch of 500 counters every 5 000 records, completed at once.
        if n.is_multiple_of(5_000) && n < RECORDS {
            flush += 1;
            let deltas: Vec<_> = (0..500)
                .map(|i| (format!("user-{i:06}"), "fast".to_owned(), period, 1))
                .collect();
            encode_owned(
                &LogRecord::Intent {
                    id: FlushId(flush),
                    deltas: Deltas::Logged(deltas.into()),
                },
                &mut buf,
            );
            encode_owned(
                &LogRecord::Done {
                    id: FlushId(flush),
                    precut: Vec::new(),
                },
                &mut buf,
            );
            n += 2;
        }
    }
    let path = dir.path().join("wal-0000000000000001.log");
    std::fs::write(&path, &buf).unwrap();
    // Warm the page cache, as a restart right after a crash would find it.
    let _ = std::fs::read(&path).unwrap();
    let start = Instant::now();
    let rec = replay::recover(dir.path(), false).unwrap();
    let took = start.elapsed();
    println!(
        "replay: {} records, {:.1} MiB, {} counters, {} request ids: {:.3} s ({:.2} M records/s)",
        rec.records,
        buf.len() as f64 / 1048576.0,
        rec.unpersisted.len(),
        rec.dedup.len(),
        took.as_secs_f64(),
        rec.records as f64 / took.as_secs_f64() / 1e6
    );
}
