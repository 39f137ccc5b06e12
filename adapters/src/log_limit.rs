//! Rate limits for log lines that a remote peer can trigger once per request or per socket.
//!
//! Metrics count every refused token, every failed stream and every refused upgrade; the log is for
//! a human, who needs to see *that* it happens and a sample of *what*, not one line per request at
//! the rate a client can send them. Without a bound, one client writing bad tokens as fast as it can
//! makes the server write log lines as fast as it can (disk, the log pipeline's quota, and the lines
//! of every other tenant drowned).
//!
//! A [`LogLimit`] lets through at most `max` lines per interval for one kind of line (one call site,
//! typically a `static` next to it) and counts the rest; the next line that gets through reports
//! that count, as a `suppressed` field:
//!
//! ```
//! use std::time::Duration;
//! use streamkit::log_limit::LogLimit;
//!
//! static REFUSED_LOG: LogLimit = LogLimit::per_second(10);
//!
//! fn on_refused(peer: std::net::SocketAddr) {
//!     if let Some(admitted) = REFUSED_LOG.admit() {
//!         tracing::info!(%peer, suppressed = admitted.suppressed(), "refused");
//!     }
//! }
//! ```
//!
//! `suppressed` is absent when nothing was dropped (a `None` field is not recorded). Suppressed lines
//! are reported by the next line of their kind that gets through; if none comes, the count stays
//! unreported (the metrics have it).
//!
//! Limits are per process, not per server or per tenant: what they protect is the one log the
//! process writes. The check is two atomic operations in the common case, allocates nothing, and uses
//! no timer (windows are compared on a monotonic clock read at each event), so it works the same on
//! every runtime and outside any.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lines per second that the server's rate-limited log lines let through, per kind of line.
pub const DEFAULT_LINES_PER_SECOND: u32 = 10;

/// Bits of the state word holding the count of lines let through in the current window; the rest
/// hold the window's number (wrapping).
const COUNT_BITS: u32 = 20;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const WINDOW_MASK: u64 = u64::MAX >> COUNT_BITS;
/// Window numbers are compared modulo 2^44: a difference below half of that is "later".
const WINDOW_HALF: u64 = 1 << (63 - COUNT_BITS);

/// At most `max` log lines of one kind per interval; see the [module docs](self).
#[derive(Debug)]
pub struct LogLimit {
    max: u64,
    interval_nanos: u64,
    /// `window << COUNT_BITS | lines let through in that window`, updated with compare-and-swap so
    /// that starting a new window and counting in it are one step.
    state: AtomicU64,
    /// Lines refused since the last line let through.
    suppressed: AtomicU64,
}

/// A line [`LogLimit::admit`] lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "the line should be logged, with the suppressed count"]
pub struct Admitted {
    suppressed: u64,
}

impl Admitted {
    /// Lines of this kind dropped since the previous line that got through; `None` when there were
    /// none, so that a `suppressed = admitted.suppressed()` field is only written when it says
    /// something.
    pub fn suppressed(self) -> Option<u64> {
        (self.suppressed > 0).then_some(self.suppressed)
    }
}

impl LogLimit {
    /// At most `max` lines per `interval` (a zero interval counts as one nanosecond; `max` is capped
    /// at about a million). `max == 0` suppresses every line.
    pub const fn new(max: u32, interval: Duration) -> Self {
        let nanos = interval.as_nanos();
        let interval_nanos = if nanos == 0 {
            1
        } else if nanos > u64::MAX as u128 {
            u64::MAX
        } else {
            nanos as u64
        };
        let max = if max as u64 > COUNT_MASK { COUNT_MASK } else { max as u64 };
        Self { max, interval_nanos, state: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// At most `max` lines per second.
    pub const fn per_second(max: u32) -> Self {
        Self::new(max, Duration::from_secs(1))
    }

    /// Whether a line may be written now: `Some` with the count of lines dropped before it, or `None`
    /// (the line is counted as suppressed).
    pub fn admit(&self) -> Option<Admitted> {
        self.admit_at(process_elapsed())
    }

    /// [`admit`](Self::admit) at `now`, a time since any fixed origin that never goes backwards by
    /// more than an interval (tests inject it; [`admit`](Self::admit) uses a monotonic clock).
    pub fn admit_at(&self, now: Duration) -> Option<Admitted> {
        let nanos = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let window = (nanos / self.interval_nanos) & WINDOW_MASK;
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            let (current, count) = (state >> COUNT_BITS, state & COUNT_MASK);
            let ahead = window.wrapping_sub(current) & WINDOW_MASK;
            let next = if ahead != 0 && ahead < WINDOW_HALF && self.max > 0 {
                // A later window: its first line. (A thread that read the clock just before another
                // started the window lands here with an earlier window: counted in the current one.)
                window << COUNT_BITS | 1
            } else if count < self.max {
                state + 1
            } else {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            match self.state.compare_exchange_weak(state, next, Ordering::Relaxed, Ordering::Relaxed) {
                // A line refused between the swap above and this one is reported by the next line.
                Ok(_) => return Some(Admitted { suppressed: self.suppressed.swap(0, Ordering::Relaxed) }),
                Err(actual) => state = actual,
            }
        }
    }
}

/// Writes a `tracing` event at `level` when `limit` admits it (by default a [`LogLimit`] of
/// [`DEFAULT_LINES_PER_SECOND`] of the call site's own), adding the `suppressed` field after the
/// bracketed fields:
///
/// ```text
/// limited_log!(warn, [%route, error = %e], "undecodable message skipped");
/// limited_log!(SHARED_LIMIT => info, [%peer], "refused");
/// ```
macro_rules! limited_log {
    ($level:ident, [$($field:tt)+], $($message:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit =
            $crate::log_limit::LogLimit::per_second($crate::log_limit::DEFAULT_LINES_PER_SECOND);
        $crate::log_limit::limited_log!(LIMIT => $level, [$($field)+], $($message)+)
    }};
    ($limit:path => $level:ident, [$($field:tt)+], $($message:tt)+) => {
        if let Some(admitted) = $limit.admit() {
            tracing::$level!($($field)+, suppressed = admitted.suppressed(), $($message)+);
        }
    };
}
pub(crate) use limited_log;

/// Time since the first rate-limited line of the process, on the monotonic clock.
fn process_elapsed() -> Duration {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// What `limit` does with one event at each of `times`: the suppressed counts of the lines let
    /// through (`Some(0)` for a line with nothing suppressed before it), `None` for a dropped one.
    fn run(limit: &LogLimit, times: impl IntoIterator<Item = Duration>) -> Vec<Option<u64>> {
        times.into_iter().map(|t| limit.admit_at(t).map(|a| a.suppressed().unwrap_or(0))).collect()
    }

    #[test]
    fn lets_max_lines_through_per_interval_and_reports_the_rest() {
        let limit = LogLimit::per_second(3);
        // Five events in the first second: three lines, two dropped.
        let first = run(&limit, [0, 100, 200, 300, 999].map(|ms| ms * MS));
        assert_eq!(first, [Some(0), Some(0), Some(0), None, None]);
        // The next second's first line reports the two.
        let second = run(&limit, [1000, 1001, 1002, 1003].map(|ms| ms * MS));
        assert_eq!(second, [Some(2), Some(0), Some(0), None]);
        // A quiet second, then the one dropped at 1003 ms is reported.
        assert_eq!(run(&limit, [3500 * MS]), [Some(1)]);
    }

    #[test]
    fn a_flood_is_reported_exactly() {
        let limit = LogLimit::per_second(10);
        let mut lines = 0;
        let mut reported = 0;
        // 10 000 events over 2 s (every 200 µs), then one a second later to flush the count.
        let times = (0..10_000u64).map(|i| Duration::from_micros(i * 200)).chain([Duration::from_secs(3)]);
        for outcome in run(&limit, times).into_iter().flatten() {
            lines += 1;
            reported += outcome;
        }
        assert_eq!(lines, 21, "10 per second for two seconds, then the flushing one");
        assert_eq!(lines + reported, 10_001, "every event is a line or counted in one");
    }

    #[test]
    fn an_earlier_reading_counts_in_the_current_window() {
        let limit = LogLimit::per_second(1);
        assert_eq!(run(&limit, [5000 * MS]), [Some(0)]);
        // A thread that read the clock before the window changed must not open a fresh one.
        assert_eq!(run(&limit, [4999 * MS, 5001 * MS]), [None, None]);
        assert_eq!(run(&limit, [6000 * MS]), [Some(2)]);
    }

    #[test]
    fn zero_max_suppresses_everything_and_zero_interval_is_safe() {
        let off = LogLimit::new(0, Duration::from_secs(1));
        assert_eq!(run(&off, [0, 1, 2000].map(|ms| ms * MS)), [None, None, None]);
        let tiny = LogLimit::new(1, Duration::ZERO);
        assert_eq!(run(&tiny, [Duration::from_nanos(1), Duration::from_nanos(1)]), [Some(0), None]);
        assert_eq!(run(&tiny, [Duration::from_nanos(1000)]), [Some(1)]);
    }

    #[test]
    fn window_numbers_wrap_without_stalling() {
        // One-nanosecond windows run through the 44-bit window numbers after about five hours.
        let limit = LogLimit::new(1, Duration::from_nanos(1));
        let ns = Duration::from_nanos;
        let step = WINDOW_HALF - 1;
        assert_eq!(run(&limit, [ns(step), ns(2 * step), ns(2 * step)]), [Some(0), Some(0), None]);
        // 2 * step + 1 is the last window number, 2 * step + 2 wraps to 0: both later windows.
        assert_eq!(
            run(&limit, [ns(2 * step + 1), ns(2 * step + 2), ns(2 * step + 2)]),
            [Some(1), Some(0), None]
        );
    }

    #[test]
    fn concurrent_callers_lose_nothing() {
        let limit = LogLimit::per_second(100);
        let now = Duration::from_secs(1);
        let counts: Vec<(u64, u64)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let (mut lines, mut reported) = (0, 0);
                        for _ in 0..10_000 {
                            if let Some(admitted) = limit.admit_at(now) {
                                lines += 1;
                                reported += admitted.suppressed().unwrap_or(0);
                            }
                        }
                        (lines, reported)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let lines: u64 = counts.iter().map(|c| c.0).sum();
        assert_eq!(lines, 100, "exactly max lines in one window, whatever the interleaving");
        let flush = limit.admit_at(now + Duration::from_secs(1)).unwrap().suppressed().unwrap_or(0);
        let reported: u64 = counts.iter().map(|c| c.1).sum::<u64>() + flush;
        assert_eq!(lines + reported, 40_000);
    }

    #[test]
    fn the_process_clock_lets_a_line_through() {
        let limit = LogLimit::per_second(1);
        assert_eq!(limit.admit().map(Admitted::suppressed), Some(None));
    }
}
