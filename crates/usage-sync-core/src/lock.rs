//! One policy for a mutex that another thread panicked while holding:
//! keep going with its data.
//!
//! Every critical section in these crates either finishes its writes
//! after the last check that can fail, or leaves state that the next
//! holder repairs (the log's writer re-reads its buffer; a flush that
//! never finished is retried under its id). A poisoned lock would turn
//! one panic into every later request failing; recovering the guard keeps
//! the service answering while the panic is logged and investigated.
//!
//! The standard library's mutex, not parking_lot's: measured with
//! `cargo bench -p usage-sync-core --bench consume`, four rounds each in
//! one run, parking_lot's took consumes over 100 000 users from
//! 3.98-4.40 M/s to 3.72-3.82 M/s on one thread (and 7.7-8.6 to 7.0-7.6
//! M/s on two). It did double two threads contending on one user (8-14
//! to 17-23 M/s), but spread users are what a service sees. On the log's
//! lock it made the p99 of consumes 1.5 times worse in the checkpoint
//! bench (docs/architecture.md).

use std::sync::{Mutex, MutexGuard, PoisonError};

/// [`Mutex::lock`] that recovers the guard of a poisoned lock (see the
/// module docs).
pub trait Locked<T: ?Sized> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Locked<T> for Mutex<T> {
    #[inline]
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_gives_its_data() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let mut g = m2.lock().unwrap();
            *g = 2;
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*m.locked(), 2);
    }
}
