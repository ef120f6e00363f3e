//! The write-ahead log seen through the engine: a halted engine (as if the
//! process died) loses nothing, and recovery applies each unit once.
//! Real time here: the log writer is an OS thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use usage_sync::{Engine, SyncConfig, SystemClock};
use usage_sync_core::{RequestId, Units, UserId};
use usage_sync_store::wal::codec::{self, ScanEnd};
use usage_sync_store::wal::list_segments;
use usage_sync_store::{Durability, WalConfig};

use super::{Faulty, quiet};

struct Node {
    engine: Engine,
    store: Faulty,
}

fn wal_config(dir: &Path, durability: Durability) -> SyncConfig {
    SyncConfig {
        wal: Some(WalConfig::new(dir.join("wal"), durability)),
        ..quiet()
    }
}

async fn open(dir: &Path, config: SyncConfig) -> Node {
    let (engine, store) = super::open_engine(dir, config, Arc::new(SystemClock)).await;
    Node { engine, store }
}

impl Node {
    async fn consume(&self, user: &str, kind: &str, n: u64, rid: Option<&str>) -> (bool, bool) {
        let k = self.engine.kind(kind).unwrap();
        let rid = rid.map(|r| RequestId::parse(r).unwrap());
        let o = self
            .engine
            .consume(
                &UserId::parse(user).unwrap(),
                &k,
                Units::parse(n as i128).unwrap(),
                rid.as_ref(),
            )
            .await
            .unwrap();
        (o.decision.allowed, o.deduplicated)
    }

    async fn db(&self, user: &str, kind: &str) -> i64 {
        usage_sync_store::testing::used_by(&self.store, user, kind).await
    }

    async fn used(&self, user: &str, kind: &str) -> u64 {
        let u = self
            .engine
            .usage(&UserId::parse(user).unwrap())
            .await
            .unwrap();
        u.kinds[self.engine.kind(kind).unwrap().index()].used
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    list_segments(&dir.join("wal"))
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

#[tokio::test]
async fn a_halted_engine_loses_nothing_and_dedup_survives() {
    for durability in [Durability::Fsync, Durability::Batched] {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path(), wal_config(dir.path(), durability)).await;
        for i in 0..30 {
            a.consume(&format!("u{}", i % 3), "fast", 1, Some(&format!("r{i}")))
                .await;
        }
        a.consume("u0", "premium", 4, None).await;
        a.engine.refund("r0", None).await.unwrap();
        // Part of it reaches the database before the "crash".
        a.engine
            .sync_user(&UserId::parse("u1").unwrap())
            .await
            .unwrap();
        a.consume("u1", "fast", 2, None).await;
        a.engine.halt();

        let b = open(dir.path(), wal_config(dir.path(), durability)).await;
        let report = b.engine.recovery().unwrap().clone();
        assert_eq!(report.request_ids, 30, "{durability:?}");
        assert_eq!(
            b.used("u0", "fast").await,
            9,
            "{durability:?}: 10 consumed, 1 refunded"
        );
        assert_eq!(b.used("u1", "fast").await, 12);
        assert_eq!(b.used("u0", "premium").await, 4);
        // The same request id after the restart: recognised, not counted.
        assert_eq!(b.consume("u2", "fast", 1, Some("r2")).await, (true, true));
        assert!(
            b.engine.refund("r0", None).await.is_err(),
            "already refunded before the crash"
        );
        b.engine.sync_all().await.unwrap();
        assert_eq!(
            (
                b.db("u0", "fast").await,
                b.db("u1", "fast").await,
                b.db("u2", "fast").await
            ),
            (9, 12, 10)
        );
        assert_eq!(b.db("u0", "premium").await, 4);
        b.engine.shutdown(Duration::from_secs(5)).await;

        // A second restart reads the ids from b's checkpoint, where they
        // are fingerprints under the key that checkpoint recorded: still
        // recognised, still refundable once, with their owner known.
        let c = open(dir.path(), wal_config(dir.path(), durability)).await;
        assert_eq!(c.engine.recovery().unwrap().request_ids, 30);
        assert_eq!(c.consume("u2", "fast", 1, Some("r2")).await, (true, true));
        assert!(c.engine.refund("r0", None).await.is_err());
        let r = c.engine.refund("r5", None).await.unwrap();
        assert_eq!((r.user.as_str(), r.refunded), ("u2", 1));
        c.engine.sync_all().await.unwrap();
        assert_eq!(c.db("u2", "fast").await, 9);
        c.engine.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn crash_after_commit_is_recognised_and_not_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), wal_config(dir.path(), Durability::Fsync)).await;
    a.consume("u", "fast", 7, None).await;
    // The commit lands, the engine never learns it: then it dies.
    a.store.lose_next_acks(1);
    assert!(a.engine.sync_all().await.is_err());
    assert_eq!(a.db("u", "fast").await, 7);
    a.engine.halt();

    let b = open(dir.path(), wal_config(dir.path(), Durability::Fsync)).await;
    let r = b.engine.recovery().unwrap();
    assert_eq!((r.intents_applied, r.intents_resent), (1, 0));
    assert_eq!(b.used("u", "fast").await, 7);
    b.engine.sync_all().await.unwrap();
    assert_eq!(b.db("u", "fast").await, 7);
}

#[tokio::test]
async fn an_intent_that_never_reached_the_database_is_resent_under_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), wal_config(dir.path(), Durability::Fsync)).await;
    a.consume("u", "premium", 3, None).await;
    a.store.set_down(true);
    assert!(a.engine.sync_all().await.is_err());
    a.engine.halt();

    let b = open(dir.path(), wal_config(dir.path(), Durability::Fsync)).await;
    let r = b.engine.recovery().unwrap();
    assert_eq!(
        (r.intents_applied, r.intents_resent, r.unpersisted_units),
        (0, 1, 3)
    );
    assert_eq!(b.engine.retry_backlog(), (1, 3));
    b.engine.sync_all().await.unwrap();
    assert_eq!(b.db("u", "premium").await, 3);
    assert_eq!(b.used("u", "premium").await, 3);
}

#[tokio::test]
async fn segments_rotate_and_old_ones_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = wal_config(dir.path(), Durability::Batched);
    config.wal.as_mut().unwrap().max_segment_bytes = 4096;
    config.check_interval = Duration::from_millis(50);
    config.max_active_users_check = 1000;
    let a = open(dir.path(), config.clone()).await;
    for i in 0..2000 {
        a.consume(&format!("u{}", i % 50), "fast", 1, None).await;
    }
    // Checkpoints run on the scheduler; wait until the log was rotated.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while segments(dir.path())
        .first()
        .is_some_and(|p| p.ends_with("wal-0000000000000001.log"))
    {
        assert!(std::time::Instant::now() < deadline, "no rotation happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        segments(dir.path()).len() <= 2,
        "{:?}",
        segments(dir.path())
    );
    a.engine.halt();
    let b = open(dir.path(), config).await;
    b.engine.sync_all().await.unwrap();
    let total = usage_sync_store::testing::total_used(&b.store).await;
    assert_eq!(total, 2000);
}

#[tokio::test]
async fn shutdown_with_the_store_down_keeps_units_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), wal_config(dir.path(), Durability::Fsync)).await;
    a.consume("u", "fast", 5, None).await;
    a.store.set_down(true);
    let report = a.engine.shutdown(Duration::from_millis(500)).await;
    assert_eq!((report.remaining_units, report.remaining_logged), (5, true));

    let b = open(dir.path(), wal_config(dir.path(), Durability::Fsync)).await;
    assert_eq!(b.engine.recovery().unwrap().unpersisted_units, 5);
    b.engine.sync_all().await.unwrap();
    assert_eq!(b.db("u", "fast").await, 5);
}

#[tokio::test]
async fn a_torn_tail_is_dropped_and_corruption_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), wal_config(dir.path(), Durability::Fsync)).await;
    for i in 0..10 {
        a.consume("u", "fast", 1, Some(&format!("r{i}"))).await;
    }
    a.engine.halt();
    let seg = segments(dir.path()).pop().unwrap();
    let good = std::fs::read(&seg).unwrap();
    // In `fsync` mode the segment is zero-filled ahead of its records, in
    // whole steps of 1 MiB; the records end where the zeros start.
    assert_eq!(good.len() % (1 << 20), 0);
    let ScanEnd::Clean { end } = codec::scan(&good, |_, _, _| {}) else {
        panic!("a cleanly halted log ends cleanly");
    };
    let end = usize::try_from(end).unwrap();
    assert!(end > 0 && good[end..].iter().all(|&b| b == 0));

    // A torn write where the next record goes: the start of a frame (a
    // copy of the segment's last, a consume, cut after a non-zero byte so
    // the reported length is exact, and before bytes that are not zero so
    // the zeros after it cannot complete it).
    let mut last = 0;
    codec::scan(&good, |offset, _, _| {
        last = usize::try_from(offset).unwrap()
    });
    let frame = &good[last..end];
    let cut = frame[..20].iter().rposition(|&b| b != 0).unwrap() + 1;
    assert!(frame[cut..].iter().any(|&b| b != 0));
    let mut torn = good.clone();
    torn.resize(torn.len().max(end + cut), 0);
    torn[end..end + cut].copy_from_slice(&frame[..cut]);
    std::fs::write(&seg, &torn).unwrap();
    let b = open(dir.path(), wal_config(dir.path(), Durability::Fsync)).await;
    assert_eq!(b.engine.recovery().unwrap().torn_tail_bytes, cut as u64);
    assert_eq!(b.used("u", "fast").await, 10);
    b.engine.halt();

    // A flipped byte in the middle of the newest segment's records.
    let seg = segments(dir.path()).pop().unwrap();
    let mut bad = std::fs::read(&seg).unwrap();
    let ScanEnd::Clean { end } = codec::scan(&bad, |_, _, _| {}) else {
        panic!("a cleanly halted log ends cleanly");
    };
    let mid = usize::try_from(end).unwrap() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(&seg, &bad).unwrap();
    let err = super::try_open_engine(
        dir.path(),
        wal_config(dir.path(), Durability::Fsync),
        Arc::new(SystemClock),
    )
    .await
    .err()
    .expect("corruption must stop the start")
    .to_string();
    assert!(
        err.contains(&seg.display().to_string()) && err.contains("at offset"),
        "{err}"
    );
}

/// What a start after a damage must do.
enum Expect {
    /// Refused, with these words in the error.
    Refused(&'static [&'static str]),
    /// Started, with exactly this many units of user `u`.
    Units(u64),
}

/// The log a halted engine left after 10 acknowledged units (request ids
/// `r0`..`r9`), in `batched` mode: the segment, its bytes, and where each
/// frame starts.
async fn damaged_log_fixture(dir: &Path) -> (PathBuf, Vec<u8>, Vec<usize>) {
    let a = open(dir, wal_config(dir, Durability::Batched)).await;
    for i in 0..10 {
        a.consume("u", "fast", 1, Some(&format!("r{i}"))).await;
    }
    a.engine.halt();
    let seg = segments(dir).pop().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let mut frames = Vec::new();
    let end = codec::scan(&bytes, |offset, seq, _| {
        assert_eq!(seq, Some(frames.len() as u64), "a sequenced segment");
        frames.push(usize::try_from(offset).unwrap());
    });
    assert_eq!(
        end,
        ScanEnd::Clean {
            end: bytes.len() as u64
        }
    );
    (seg, bytes, frames)
}

/// Every kind of damage a log can suffer, one case each: the ones that
/// lose records the log had made durable refuse the start and say where
/// and how much (the manifest records the durable position outside the
/// segment); the ones that lose nothing (a frame or a run of frames
/// written twice, garbage appended) start with exactly the acknowledged
/// units, each counted once.
#[tokio::test]
async fn log_damage_is_refused_or_harmless_case_by_case() {
    type Damage = fn(&Path, &[u8], &[usize]);
    let cases: Vec<(&str, Damage, Expect)> = vec![
        (
            "truncate inside the last record",
            |seg, b, f| std::fs::write(seg, &b[..f[f.len() - 1] + 5]).unwrap(),
            Expect::Refused(&[
                "records",
                "units cannot be accounted for",
                "--accept-log-loss",
            ]),
        ),
        (
            "truncate in the middle",
            |seg, b, f| std::fs::write(seg, &b[..f[f.len() / 2]]).unwrap(),
            Expect::Refused(&["ends at offset", "units cannot be accounted for"]),
        ),
        (
            "flip a byte in the last record",
            |seg, b, f| {
                let mut b = b.to_vec();
                b[f[f.len() - 1] + 14] ^= 0x10;
                std::fs::write(seg, b).unwrap()
            },
            Expect::Refused(&["units cannot be accounted for"]),
        ),
        (
            "flip a byte in the middle",
            |seg, b, f| {
                let mut b = b.to_vec();
                b[f[f.len() / 2] + 14] ^= 0x10;
                std::fs::write(seg, b).unwrap()
            },
            Expect::Refused(&["at offset", "checksum mismatch"]),
        ),
        (
            "zeros from the middle to the end",
            |seg, b, f| {
                let mut b = b.to_vec();
                let mid = f[f.len() / 2];
                b[mid..].fill(0);
                std::fs::write(seg, b).unwrap()
            },
            Expect::Refused(&["ends at offset", "units cannot be accounted for"]),
        ),
        (
            "delete the segment",
            |seg, _, _| std::fs::remove_file(seg).unwrap(),
            Expect::Refused(&["no complete segment", "--accept-log-loss"]),
        ),
        (
            "truncate the checkpoint",
            |seg, b, f| std::fs::write(seg, &b[..f[1]]).unwrap(),
            Expect::Refused(&["no complete segment"]),
        ),
        (
            "duplicate the last frame",
            |seg, b, f| {
                let mut b = b.to_vec();
                let last = b[f[f.len() - 1]..].to_vec();
                b.extend_from_slice(&last);
                std::fs::write(seg, b).unwrap()
            },
            Expect::Units(10),
        ),
        (
            "duplicate a run of frames",
            |seg, b, f| {
                let n = f.len();
                let run = b[f[n - 6]..f[n - 3]].to_vec();
                let mut out = b[..f[n - 3]].to_vec();
                out.extend_from_slice(&run);
                out.extend_from_slice(&b[f[n - 3]..]);
                std::fs::write(seg, out).unwrap()
            },
            Expect::Units(10),
        ),
        (
            "append garbage",
            |seg, b, _| {
                let mut b = b.to_vec();
                b.extend_from_slice(b"\x17garbage that is no frame\xff\x01");
                std::fs::write(seg, b).unwrap()
            },
            Expect::Units(10),
        ),
    ];
    for (name, damage, expect) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (seg, bytes, frames) = damaged_log_fixture(dir.path()).await;
        damage(&seg, &bytes, &frames);
        let opened = super::try_open_engine(
            dir.path(),
            wal_config(dir.path(), Durability::Batched),
            Arc::new(SystemClock),
        )
        .await;
        match (expect, opened) {
            (Expect::Refused(words), Err(e)) => {
                let e = e.to_string();
                for w in words {
                    assert!(e.contains(w), "{name}: missing '{w}' in: {e}");
                }
                assert!(!e.contains("store unavailable: store task"), "{name}: {e}");
            }
            (Expect::Units(n), Ok((engine, store))) => {
                engine.start();
                let node = Node { engine, store };
                assert_eq!(node.used("u", "fast").await, n, "{name}");
                // Each request id is remembered once: a retry counts nothing.
                assert_eq!(
                    node.consume("u", "fast", 1, Some("r9")).await,
                    (true, true),
                    "{name}"
                );
                node.engine.sync_all().await.unwrap();
                assert_eq!(node.db("u", "fast").await, n.cast_signed(), "{name}");
                node.engine.halt();
            }
            (Expect::Refused(_), Ok(_)) => panic!("{name}: the start must be refused"),
            (Expect::Units(_), Err(e)) => panic!("{name}: the start must succeed: {e}"),
        }
    }
}

/// With `--accept-log-loss` a damaged log starts with what it still holds,
/// and the next start (the damage is now behind a new checkpoint) is clean.
#[tokio::test]
async fn accepting_the_loss_starts_with_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, bytes, frames) = damaged_log_fixture(dir.path()).await;
    // Keep the checkpoint and the first four consumes.
    let kept = frames.len() - 10 + 4;
    std::fs::write(&seg, &bytes[..frames[kept]]).unwrap();
    let mut config = wal_config(dir.path(), Durability::Batched);
    config.wal.as_mut().unwrap().accept_loss = true;
    let b = open(dir.path(), config).await;
    assert_eq!(b.used("u", "fast").await, 4);
    b.engine.halt();
    let c = open(dir.path(), wal_config(dir.path(), Durability::Batched)).await;
    assert_eq!(c.used("u", "fast").await, 4);
    c.engine.sync_all().await.unwrap();
    assert_eq!(c.db("u", "fast").await, 4);
    c.engine.halt();
}
