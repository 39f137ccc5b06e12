//! The segment-notification circuit breaker (PROTOCOL.md §6.2), one per node.
//!
//! A failed bus publish is tolerated (the produce continues) until `threshold` consecutive publishes have
//! failed: the failure that reaches it opens the circuit for `window` and fails its produce. While the
//! circuit is open, produces fail before publishing (their data is committed and their status sent
//! already). The first check after the window closes the circuit and forgets the failures; any successful
//! publish does too. The texts are Go's, so operators and clients that match on them keep working.

use alloc::format;
use alloc::string::String;

use crate::time::{GoDuration, Millis};

/// Consecutive publish failures that open the circuit by default.
pub const DEFAULT_NOTIFY_FAILURE_THRESHOLD: u32 = 5;
/// How long an opened circuit stays open by default.
pub const DEFAULT_NOTIFY_OPEN_WINDOW: Millis = Millis::from_secs(60);

/// The configured failure threshold; as in Go, 0 means the default rather than "never" or "always".
fn effective_threshold(threshold: u32) -> u32 {
    if threshold == 0 { DEFAULT_NOTIFY_FAILURE_THRESHOLD } else { threshold }
}

/// State of the breaker.
#[derive(Debug, Default)]
pub(crate) struct NotifyCircuit {
    failures: u32,
    open_until: Option<Millis>,
}

impl NotifyCircuit {
    /// Whether a publish may be attempted at `now`; the error text otherwise. Past the window, the circuit
    /// closes and the failure count starts again from zero.
    pub fn check(&mut self, now: Millis) -> Result<(), String> {
        match self.open_until {
            Some(until) if until > now => {
                let remaining = GoDuration::rounded_to_seconds(until - now);
                Err(format!("segment notification circuit open: retry after {remaining}"))
            }
            Some(_) => {
                self.open_until = None;
                self.failures = 0;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Whether the next publish could fail its produce: the circuit is open at `now`, or one more
    /// failure would open it.
    pub fn could_fail_next(&self, now: Millis, threshold: u32) -> bool {
        let threshold = effective_threshold(threshold);
        self.open_until.is_some_and(|until| until > now) || self.failures.saturating_add(1) >= threshold
    }

    /// Records a failed publish; returns the produce's error when this failure opens the circuit.
    pub fn record_failure(
        &mut self,
        now: Millis,
        threshold: u32,
        window: Millis,
        bus_error: &str,
    ) -> Option<String> {
        let threshold = effective_threshold(threshold);
        // As in Go, a zero setting means the default rather than "never" or "always".
        let window = if window == Millis::ZERO { DEFAULT_NOTIFY_OPEN_WINDOW } else { window };
        self.failures = self.failures.saturating_add(1);
        if self.failures < threshold {
            return None;
        }
        self.open_until = Some(now + window);
        let retry = GoDuration::rounded_to_seconds(window);
        Some(format!(
            "segment notification circuit open after {} consecutive failures; retry after {retry}: {bus_error}",
            self.failures
        ))
    }

    /// Records a successful publish: the circuit is closed and the failures forgotten.
    pub fn record_success(&mut self) {
        self.failures = 0;
        self.open_until = None;
    }

    /// Consecutive failures recorded so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_at_the_threshold_and_closes_after_the_window() {
        let mut c = NotifyCircuit::default();
        let window = Millis::from_secs(60);
        let t0 = Millis(1_000_000);
        for _ in 0..4 {
            assert_eq!(c.check(t0), Ok(()));
            assert_eq!(c.record_failure(t0, 5, window, "boom"), None);
        }
        assert_eq!(
            c.record_failure(t0, 5, window, "boom").as_deref(),
            Some("segment notification circuit open after 5 consecutive failures; retry after 1m0s: boom")
        );
        assert_eq!(
            c.check(t0 + Millis(500)).unwrap_err(),
            "segment notification circuit open: retry after 1m0s"
        );
        assert_eq!(
            c.check(t0 + Millis(30_400)).unwrap_err(),
            "segment notification circuit open: retry after 30s"
        );
        // The first check after the window resets the count.
        assert_eq!(c.check(t0 + window), Ok(()));
        assert_eq!(c.failures(), 0);
        assert_eq!(c.record_failure(t0 + window, 5, window, "boom"), None);
        c.record_success();
        assert_eq!(c.failures(), 0);
    }

    #[test]
    fn zero_settings_mean_the_defaults() {
        let mut c = NotifyCircuit::default();
        for _ in 0..4 {
            assert_eq!(c.record_failure(Millis(0), 0, Millis::ZERO, "x"), None);
        }
        let opened = c.record_failure(Millis(0), 0, Millis::ZERO, "x").unwrap();
        assert!(opened.contains("after 5 consecutive failures; retry after 1m0s"), "{opened}");
    }
}
