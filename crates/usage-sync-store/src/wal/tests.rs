use std::sync::atomic::AtomicUsize;
use std::task::Wake;

use super::*;
use usage_sync_core::{Cut, Ledger};

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
    use usage_sync_core::{LedgerConfig, RequestId, Units, default_catalogue};
    let dir = tempfile::tempdir().unwrap();
    let mut config = WalConfig::new(dir.path(), Durability::Batched);
    config.max_segment_bytes = 4096;
    let (wal, _) = Wal::open(config).unwrap();
    let (kinds, plans) = default_catalogue();
    let fast = *kinds.get("fast").unwrap();
    let ledger = Ledger::new(kinds, plans, LedgerConfig::default());
    let now = Timestamp::from_millis(1_795_000_000_000);
    let users = crate::testing::journaled_users(&ledger, &wal, 200, now);
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
    for u in &users {
        consume(u.as_str());
    }
    wal.checkpoint(&ledger, now);
    let checkpoint = wal.segment().1;
    assert!(checkpoint > 2 * 4096, "checkpoint of {checkpoint} bytes");
    assert!(!wal.checkpoint_due(), "no checkpoint right after one");
    while !wal.checkpoint_due() {
        consume(users[0].as_str());
    }
    let since = wal.segment().1 - checkpoint;
    assert!(
        since > checkpoint && since < checkpoint + 100,
        "due after {since} bytes of records behind a {checkpoint}-byte checkpoint"
    );
    wal.close();
}

/// A checkpoint larger than the backlog it may run ahead of the writer
/// (30 000 users holding units, about 1.5 MiB) waits for the writer as it
/// goes, and is whole: a restart recovers every unit from it. A checkpoint
/// after the log is closed does not wait for a writer that is gone.
#[test]
fn a_checkpoint_larger_than_its_backlog_waits_for_the_writer_and_is_whole() {
    use usage_sync_core::{LedgerConfig, Units, UserId, default_catalogue};
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalConfig::new(dir.path(), Durability::Batched)).unwrap();
    let (kinds, plans) = default_catalogue();
    let fast = *kinds.get("fast").unwrap();
    let ledger = Ledger::new(kinds, plans, LedgerConfig::default());
    let now = Timestamp::from_millis(1_795_000_000_000);
    wal.checkpoint(&ledger, now);
    ledger.attach_journal(wal.clone());
    for i in 0..30_000 {
        let user = UserId::parse(&format!("user-{i:05}")).unwrap();
        let epoch = ledger.load_epoch(user.as_str());
        ledger
            .warm(&user, Default::default(), &[], epoch, now)
            .unwrap();
        ledger
            .consume(user.as_str(), &fast, Units::ONE, None, now)
            .unwrap();
    }
    wal.checkpoint(&ledger, now);
    let checkpoint = wal.segment().1;
    assert!(
        checkpoint > 4 * CHECKPOINT_BACKLOG as u64,
        "checkpoint of {checkpoint} bytes"
    );
    wal.close();
    // Closed: the buffer no longer drains, and the checkpoint returns.
    wal.checkpoint(&ledger, now);
    drop(wal);
    let (_, rec) = Wal::open(WalConfig::new(dir.path(), Durability::Batched)).unwrap();
    assert_eq!(rec.unpersisted.len(), 30_000);
    assert_eq!(rec.unpersisted.values().sum::<i64>(), 30_000);
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
    use usage_sync_core::{LedgerConfig, RequestId, Trigger, Units, default_catalogue};
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
    let users = crate::testing::journaled_users(&l, &wal, 100, t0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
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
            // The writer retires segments once the checkpoint is on disk:
            // wait for that, so a writer slowed by a busy machine does not
            // show as segments kept.
            rt.block_on(wal.sync()).unwrap();
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
        most_segments <= second + 1 && second <= 8,
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
    use usage_sync_core::{LedgerConfig, RequestId, Trigger, Units, open_catalogue};
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalConfig::new(dir.path(), Durability::None)).unwrap();
    let (kinds, plans) = open_catalogue();
    let now = Timestamp::from_millis(1_795_000_000_000);
    let l = Ledger::new(
        kinds,
        plans,
        LedgerConfig {
            threshold: u64::MAX,
            // One shard: its 300 users are copied in several runs, with
            // the changes going on between them.
            shards: 1,
            ..LedgerConfig::default()
        },
    );
    let users = crate::testing::journaled_users(&l, &wal, 300, now);
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
                    17 => {
                        // A user flushed whole: clean, it leaves the list
                        // at the next checkpoint and joins it again with
                        // its next consume, maybe in the middle of one.
                        for b in l.take_user(user, 64) {
                            l.complete(&b, &vec![0; b.deltas.len()], now);
                        }
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
