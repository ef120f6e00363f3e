//! How long to wait before the next attempt of something that failed: a
//! flush to the store, an alert to its webhook.

use std::time::Duration;

/// Capped exponential backoff with "equal jitter": attempt `n` (from 0)
/// waits between half and all of `min(base · 2ⁿ, cap)`, so retries from
/// many callers spread out after an outage instead of arriving together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The wait before attempt `attempt + 1`; `random` in `[0, 1]` places
    /// it in its range (the caller draws it: this crate has no source of
    /// randomness, and a test can pass 0 or 1).
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let full = self
            .base
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.cap)
            .max(Duration::from_millis(1));
        full / 2 + (full / 2).mul_f64(random.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_half_of_it_jittered() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let ms = |attempt, random| b.delay(attempt, random).as_millis();
        assert_eq!((ms(0, 0.0), ms(0, 1.0)), (50, 100));
        assert_eq!((ms(1, 0.0), ms(1, 1.0)), (100, 200));
        assert_eq!((ms(3, 0.0), ms(3, 1.0)), (400, 800));
        assert_eq!((ms(4, 0.0), ms(4, 1.0)), (500, 1000), "capped");
        assert_eq!(ms(u32::MAX, 1.0), 1000, "no overflow");
    }
}
