//! Request ids: bound to their request, remembered within a bound, and
//! counted once however often and however concurrently they repeat.

use std::sync::Arc;
use std::thread;

use super::*;

#[test]
fn a_request_id_reused_for_another_request_conflicts_and_counts_nothing() {
    let l = ledger(1000);
    warm(&l, "alice", UserProfile::default(), &[], T0);
    warm(&l, "bob", UserProfile::default(), &[], T0);
    let (fast, premium) = (kind(&l, "fast"), kind(&l, "premium"));
    let rid = RequestId::parse("r-1").unwrap();
    let one = Units::ONE;
    l.consume("alice", &fast, one, Some(&rid), T0).unwrap();
    let conflict = |r: Result<ConsumeOutcome, CoreError>| match r {
        Err(CoreError::RequestIdConflict(m)) => m,
        other => panic!("expected a conflict, got {other:?}"),
    };
    // Another user: refused, and nothing of alice's request is told.
    let m = conflict(l.consume("bob", &fast, Units::parse(5).unwrap(), Some(&rid), T0));
    assert!(m.contains("another user_id") && !m.contains("alice"), "{m}");
    // The same user with another amount or kind: refused, naming it.
    let m = conflict(l.consume("alice", &fast, Units::parse(2).unwrap(), Some(&rid), T0));
    assert!(m.contains("amount 2 (first used for 1)"), "{m}");
    let m = conflict(l.consume("alice", &premium, one, Some(&rid), T0));
    assert!(m.contains("kind 'premium' (first used for 'fast')"), "{m}");
    assert!(matches!(
        l.request_conflict(&rid, "bob", &fast, one, T0),
        Err(CoreError::RequestIdConflict(_))
    ));
    assert_eq!(l.request_conflict(&rid, "alice", &fast, one, T0), Ok(()));
    // Nothing was counted for bob, alice counted once.
    assert_eq!(
        (pending(&l, "alice", "fast"), pending(&l, "bob", "fast")),
        (1, 0)
    );
    // bob cannot refund alice's request; alice can.
    assert!(matches!(
        l.refund("r-1", Some("bob"), T0),
        Err(CoreError::RequestIdConflict(_))
    ));
    assert_eq!(pending(&l, "alice", "fast"), 1);
    assert_eq!(l.refund("r-1", Some("alice"), T0).unwrap().refunded, 1);
    assert_eq!(pending(&l, "alice", "fast"), 0);
}

/// The table of remembered ids has a bound: past it, a consume with a
/// new id is refused and counts nothing; a repeat of a remembered id is
/// still answered (never counted twice); once ids leave the window, new
/// ones are taken again.
#[test]
fn remembered_request_ids_are_bounded_and_never_forgotten_early() {
    let l = ledger_with(LedgerConfig {
        shards: 1,
        max_request_ids: 3,
        dedup_window_ms: 1000,
        ..LedgerConfig::default()
    });
    warm(&l, "u", UserProfile::default(), &[], T0);
    let fast = kind(&l, "fast");
    let rid = |i: u32| RequestId::parse(&format!("r{i}")).unwrap();
    for i in 0..3 {
        assert!(
            !l.consume("u", &fast, Units::ONE, Some(&rid(i)), T0)
                .unwrap()
                .deduplicated
        );
    }
    assert_eq!(
        l.consume("u", &fast, Units::ONE, Some(&rid(3)), T0),
        Err(CoreError::RequestIdsFull)
    );
    assert_eq!(
        l.request_conflict(&rid(3), "u", &fast, Units::ONE, T0),
        Err(CoreError::RequestIdsFull)
    );
    assert!(
        l.consume("u", &fast, Units::ONE, Some(&rid(0)), T0)
            .unwrap()
            .deduplicated
    );
    // Without an id, consumes go on.
    assert!(consume(&l, "u", "fast", 1, T0).decision.allowed);
    assert_eq!(pending(&l, "u", "fast"), 4);
    let later = T0.saturating_add_ms(1000);
    assert!(
        !l.consume("u", &fast, Units::ONE, Some(&rid(3)), later)
            .unwrap()
            .deduplicated
    );
    assert_eq!(l.dedup_entries(), 1);
}

#[test]
fn request_id_dedups_within_window_and_refund_once() {
    let l = ledger(1000);
    warm(&l, "u", UserProfile::default(), &[], T0);
    let fast = kind(&l, "fast");
    let rid = RequestId::parse("r-1").unwrap();
    let a = l
        .consume("u", &fast, Units::parse(3).unwrap(), Some(&rid), T0)
        .unwrap();
    let b = l
        .consume("u", &fast, Units::parse(3).unwrap(), Some(&rid), T0)
        .unwrap();
    assert!(!a.deduplicated && b.deduplicated);
    assert_eq!(a.decision, b.decision);
    assert_eq!(pending(&l, "u", "fast"), 3);
    let r = l.refund("r-1", None, T0).unwrap();
    assert_eq!(r.refunded, 3);
    assert_eq!(pending(&l, "u", "fast"), 0);
    assert_eq!(l.refund("r-1", None, T0), Err(CoreError::AlreadyRefunded));
    assert_eq!(l.refund("nope", None, T0), Err(CoreError::UnknownRequest));
    // Still remembered at the last millisecond of the window; forgotten
    // within 1/512 of the window after it, and then it counts again.
    let window = 24 * 3600 * 1000;
    let last = T0.saturating_add_ms(window - 1);
    assert!(matches!(
        l.consume("u", &fast, Units::ONE, Some(&rid), last),
        Err(CoreError::RequestIdConflict(_))
    ));
    let later = T0.saturating_add_ms(window + window / 512);
    let c = l
        .consume("u", &fast, Units::ONE, Some(&rid), later)
        .unwrap();
    assert!(!c.deduplicated);
}

#[test]
fn concurrent_duplicates_count_once() {
    let l = Arc::new(ledger(1_000_000));
    warm(&l, "u", UserProfile::default(), &[], T0);
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let l = l.clone();
            thread::spawn(move || {
                let fast = *l.kinds().get("fast").unwrap();
                for i in 0..20 {
                    let rid = RequestId::parse(&format!("r{i}")).unwrap();
                    l.consume("u", &fast, Units::ONE, Some(&rid), T0).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(pending(&l, "u", "fast"), 20);
}
