//! Where the engine gets "now" from.
//!
//! The core takes time as an argument; the engine reads it from a [`Clock`].
//! Production uses the system clock. Tests use [`TokioClock`], which starts
//! at the real wall time and then advances with tokio's clock, so
//! `tokio::time::pause()` and `advance()` move the session timeout, the
//! dedup window and period boundaries together with the sync timers.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use usage_sync_core::Timestamp;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }
}

/// Wall time anchored once, then advanced by tokio's (pausable) clock.
#[derive(Clone, Debug)]
pub struct TokioClock {
    anchor_wall: Timestamp,
    anchor: tokio::time::Instant,
}

impl TokioClock {
    /// Anchors at the current system time.
    pub fn new() -> Self {
        Self::starting_at(SystemClock.now())
    }

    /// Anchors at a chosen wall time (to test period boundaries).
    pub fn starting_at(wall: Timestamp) -> Self {
        TokioClock {
            anchor_wall: wall,
            anchor: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        let elapsed = i64::try_from(self.anchor.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.anchor_wall.saturating_add_ms(elapsed)
    }
}

/// The clock type the engine stores.
pub type SharedClock = Arc<dyn Clock>;
