//! Backoff for opening operations (PROTOCOL.md §7.1) and for redialing (PROTOCOL.md §2.10).

use std::time::Duration;

/// How opening an operation is retried on transient failures (PROTOCOL.md §7.1). Established streams are never
/// retried: they fail, and the caller resumes from its cursor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
    /// Growth factor of the wait per attempt.
    pub multiplier: f64,
    /// Each wait is scaled by a random factor in `1 ± jitter` so clients do not retry in lock-step.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// Go's default: 5 attempts, 100 ms, ×2, at most 5 s, ±25 %.
    fn default() -> Self {
        Self {
            attempts: 5,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.25,
        }
    }
}

impl RetryPolicy {
    /// Go's "aggressive" policy: 8 attempts, 200 ms, ×1.5, at most 15 s.
    pub fn aggressive() -> Self {
        Self {
            attempts: 8,
            initial: Duration::from_millis(200),
            max: Duration::from_secs(15),
            multiplier: 1.5,
            ..Self::default()
        }
    }

    /// No retry: one attempt.
    pub fn none() -> Self {
        Self { attempts: 1, ..Self::default() }
    }

    /// The policy with invalid values fixed up the way Go does (attempts < 1 → 1, zero initial → 100 ms,
    /// max < initial → 10 s, multiplier ≤ 0 → 2, jitter clamped to 0..=1).
    pub fn normalized(mut self) -> Self {
        self.attempts = self.attempts.max(1);
        if self.initial.is_zero() {
            self.initial = Duration::from_millis(100);
        }
        if self.max < self.initial {
            self.max = Duration::from_secs(10);
        }
        if self.multiplier.is_nan() || self.multiplier <= 0.0 {
            self.multiplier = 2.0;
        }
        self.jitter = if self.jitter.is_finite() { self.jitter.clamp(0.0, 1.0) } else { 0.0 };
        self
    }

    /// The wait after failed attempt number `attempt` (0-based), before jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.powi(attempt.min(64) as i32);
        let secs = (self.initial.as_secs_f64() * factor).min(self.max.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// The jittered wait after failed attempt number `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        jittered(self.base_delay(attempt), self.jitter)
    }
}

/// A uniformly random number in `[0, 1)` from the OS generator (through UUID v4; no extra dependency).
pub(crate) fn random_unit() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64 >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// A random 64-bit seed.
pub(crate) fn random_seed() -> u64 {
    uuid::Uuid::new_v4().as_u128() as u64
}

/// `delay` scaled by a random factor in `1 ± jitter`.
pub(crate) fn jittered(delay: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return delay;
    }
    let factor = 1.0 + jitter * (2.0 * random_unit() - 1.0);
    Duration::from_secs_f64(delay.as_secs_f64() * factor.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_cap() {
        let policy = RetryPolicy { jitter: 0.0, ..RetryPolicy::default() };
        assert_eq!(policy.delay(0), Duration::from_millis(100));
        assert_eq!(policy.delay(1), Duration::from_millis(200));
        assert_eq!(policy.delay(10), Duration::from_secs(5));
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let policy = RetryPolicy::default();
        for _ in 0..200 {
            let d = policy.delay(0).as_secs_f64();
            assert!((0.075..=0.125).contains(&d), "{d}");
        }
    }

    #[test]
    fn invalid_values_are_fixed_up() {
        let fixed = RetryPolicy {
            attempts: 0,
            initial: Duration::ZERO,
            max: Duration::from_millis(1),
            multiplier: -1.0,
            jitter: f64::NAN,
        }
        .normalized();
        assert_eq!(fixed.attempts, 1);
        assert_eq!(fixed.initial, Duration::from_millis(100));
        assert_eq!(fixed.max, Duration::from_secs(10));
        assert_eq!(fixed.multiplier, 2.0);
        assert_eq!(fixed.jitter, 0.0);
    }
}
