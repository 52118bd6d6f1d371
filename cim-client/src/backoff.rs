//! Reconnect delays: exponential back-off with full jitter.

use std::time::Duration;

/// Attempt `n` (from 0) waits a uniformly random time in `[0, min(max, initial · 2ⁿ)]`, so that
/// many clients cut off at once do not come back at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The bound of the first attempt (default 500 ms).
    pub initial: Duration,
    /// The bound no delay exceeds (default 30 s).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The upper bound of attempt `attempt`'s delay.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A random delay for attempt `attempt`, within [`ceiling`](Self::ceiling).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_nanos();
        let ceiling = u64::try_from(ceiling).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_bound_and_delays_stay_below() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let ceilings: Vec<u128> = (0..6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
        for n in 0..40 {
            for _ in 0..50 {
                assert!(b.delay(n) <= b.ceiling(n));
            }
        }
        // Full jitter: the delays spread over the whole range.
        let small = (0..200)
            .filter(|_| b.delay(3) < Duration::from_millis(400))
            .count();
        assert!((20..180).contains(&small), "{small} of 200 below half");
    }
}
