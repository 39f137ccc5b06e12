//! The clocks adapters hand to the core: wall-clock Unix milliseconds that never go backwards, for
//! what must be wall time (entry timestamps, lease expiries, token expiry), and monotonic
//! milliseconds for connection timers (heartbeats, idle timeouts), which a step of the system clock
//! must not move.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use streamkit_proto::time::Millis;

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

/// Milliseconds of a monotonic clock, counted from when this clock was made (plus one second, so that
/// no deadline is ever zero). A step of the system clock (an NTP correction, an operator's `date`)
/// neither fires timers on this clock early nor holds them back.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl MonotonicClock {
    /// A clock reading about one second now.
    pub fn new() -> Self {
        Self { origin: Instant::now() }
    }

    /// Milliseconds since this clock was made, plus 1,000.
    pub fn now(&self) -> Millis {
        Millis(self.origin.elapsed().as_millis() as u64 + 1_000)
    }

    /// The instant at which this clock reads `at` (a day from now for a deadline too far to
    /// represent: timers are re-armed long before).
    pub fn instant_of(&self, at: Millis) -> Instant {
        let since_origin = Duration::from_millis(at.as_u64().saturating_sub(1_000));
        self.origin.checked_add(since_origin).unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400))
    }

    /// When this clock will read what `wall` reads at `deadline` (e.g. a token's expiry), from the two
    /// clocks' readings now; `None` for `Millis(u64::MAX)`, which means "never".
    pub fn from_wall(&self, wall: &WallClock, deadline: Millis) -> Option<Millis> {
        (deadline.as_u64() != u64::MAX).then(|| self.now() + deadline.saturating_since(wall.now()))
    }
}

/// The clocks of an engine: it is driven with monotonic milliseconds (every timer ignores steps of
/// the system clock) and learns the wall clock as an offset
/// ([`Engine::set_wall_offset`](streamkit_proto::server::Engine::set_wall_offset)).
#[derive(Clone, Debug, Default)]
pub struct EngineClock {
    mono: MonotonicClock,
    wall: WallClock,
}

impl EngineClock {
    /// Monotonic milliseconds: the engine's `now`.
    pub fn now(&self) -> Millis {
        self.mono.now()
    }

    /// The wall clock (non-decreasing) minus [`now`](Self::now), in milliseconds.
    pub fn wall_offset(&self) -> i64 {
        let mono = self.mono.now().as_u64();
        let wall = self.wall.now().as_u64();
        i64::try_from(wall).unwrap_or(i64::MAX).saturating_sub(i64::try_from(mono).unwrap_or(i64::MAX))
    }

    /// The instant at which [`now`](Self::now) reads `at`.
    pub fn instant_of(&self, at: Millis) -> Instant {
        self.mono.instant_of(at)
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

    #[test]
    fn the_monotonic_clock_maps_to_instants_and_wall_deadlines() {
        let clock = MonotonicClock::new();
        // Bounds from instants read around the clock, so a descheduled thread cannot fail the test.
        let before = Instant::now();
        let now = clock.now();
        let after = Instant::now();
        assert!(now >= Millis(1_000));
        // `now` is whole milliseconds: it maps back to at most 1 ms before it was read.
        let at = clock.instant_of(now + Millis(500));
        let half_second = Duration::from_millis(500);
        assert!(at + Duration::from_millis(1) >= before + half_second && at <= after + half_second);
        let wall = WallClock::default();
        let in_an_hour = clock.from_wall(&wall, wall.now() + Millis(3_600_000)).unwrap();
        assert!(in_an_hour.saturating_since(clock.now()) > Millis(3_500_000));
        assert_eq!(clock.from_wall(&wall, Millis(u64::MAX)), None, "never stays never");
        let past = clock.from_wall(&wall, Millis(5)).unwrap();
        assert!(past <= clock.now(), "a past deadline is due now");
    }
}
