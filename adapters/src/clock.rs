//! The clock adapters hand to the core: Unix epoch milliseconds that never go backwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use streamkit_core::time::Millis;

/// Wall-clock milliseconds made non-decreasing (entry timestamps and lease expiries must not go back
/// when the system clock is stepped), shareable between tasks.
#[derive(Clone, Debug, Default)]
pub struct WallClock {
    last: Arc<AtomicU64>,
}

impl WallClock {
    /// Current time in Unix milliseconds, never less than a value this clock returned before.
    pub fn now(&self) -> Millis {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let previous = self.last.fetch_max(wall, Ordering::AcqRel);
        Millis(previous.max(wall))
    }

    /// The monotonic instant at which this clock will read `at` (now if `at` has passed).
    pub fn instant_of(&self, at: Millis) -> Instant {
        let now = self.now();
        Instant::now() + Duration::from_millis(at.saturating_since(now).as_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_backwards() {
        let clock = WallClock::default();
        let a = clock.now();
        clock.last.store(a.as_u64() + 10_000, Ordering::Release);
        assert_eq!(clock.now(), Millis(a.as_u64() + 10_000));
        assert!(clock.instant_of(Millis(0)) <= Instant::now());
    }
}
