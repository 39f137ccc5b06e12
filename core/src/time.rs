//! Time as the core sees it: milliseconds handed in by the driver.
//!
//! The core never reads a clock. Every input carries `now`, a [`Millis`] value on the same scale as the
//! protocol's timestamps (Unix epoch milliseconds), so lease expiries and entry timestamps need no
//! conversion. Drivers that only care about relative time (tests) may start at any value.

use core::fmt;
use core::ops::{Add, Sub};

/// A point in time or a duration, in milliseconds.
///
/// As a point in time it is Unix epoch milliseconds in production drivers; the simulation harness uses a
/// virtual clock. Arithmetic saturates: time never wraps.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// The zero instant / the empty duration.
    pub const ZERO: Self = Self(0);
    /// A time so far away that it never arrives (used for "no deadline").
    pub const NEVER: Self = Self(u64::MAX);

    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(secs.saturating_mul(1000))
    }

    /// The raw millisecond count.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The value as a protocol timestamp (`int64` milliseconds), saturating at `i64::MAX`.
    pub const fn as_timestamp(self) -> i64 {
        if self.0 > i64::MAX as u64 { i64::MAX } else { self.0 as i64 }
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub const fn saturating_since(self, earlier: Self) -> Self {
        Self(self.0.saturating_sub(earlier.0))
    }
}

impl Add for Millis {
    type Output = Self;
    fn add(self, rhs: Self) -> Self {
        Self(self.0.saturating_add(rhs.0))
    }
}

impl Sub for Millis {
    type Output = Self;
    fn sub(self, rhs: Self) -> Self {
        Self(self.0.saturating_sub(rhs.0))
    }
}

impl fmt::Debug for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Formats a duration the way Go's `time.Duration.String()` does, for the millisecond durations the core
/// deals in: `0s`, `250ms`, `1.5s`, `59s`, `1m0s`, `1h0m0s`, `1m30.25s`. Error texts that Go peers or
/// operators match on (circuit breakers) carry durations in this form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoDuration(pub Millis);

impl GoDuration {
    /// `duration` rounded to whole seconds, half away from zero (Go `Duration.Round(time.Second)`).
    pub const fn rounded_to_seconds(duration: Millis) -> Self {
        Self(Millis(duration.0.saturating_add(500) / 1000 * 1000))
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.0;
        if ms == 0 {
            return f.write_str("0s");
        }
        if ms < 1000 {
            return write!(f, "{ms}ms");
        }
        let (hours, minutes) = (ms / 3_600_000, ms / 60_000 % 60);
        let (seconds, fraction) = (ms / 1000 % 60, ms % 1000);
        if hours > 0 {
            write!(f, "{hours}h{minutes}m")?;
        } else if minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        write!(f, "{seconds}")?;
        if fraction > 0 {
            // Go prints the fraction without trailing zeros: 1.5s, 1.05s, 1.005s.
            let digits = [fraction / 100, fraction / 10 % 10, fraction % 10];
            let len = if digits[2] != 0 {
                3
            } else if digits[1] != 0 {
                2
            } else {
                1
            };
            f.write_str(".")?;
            for digit in &digits[..len] {
                write!(f, "{digit}")?;
            }
        }
        f.write_str("s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Millis(5) - Millis(9), Millis::ZERO);
        assert_eq!(Millis::NEVER + Millis(1), Millis::NEVER);
        assert_eq!(Millis::from_secs(30), Millis(30_000));
        assert_eq!(Millis(u64::MAX).as_timestamp(), i64::MAX);
        assert_eq!(Millis(10).saturating_since(Millis(4)), Millis(6));
    }

    #[test]
    fn go_duration_strings() {
        use alloc::string::ToString;
        let cases = [
            (0, "0s"),
            (1, "1ms"),
            (999, "999ms"),
            (1000, "1s"),
            (1500, "1.5s"),
            (1050, "1.05s"),
            (1005, "1.005s"),
            (59_000, "59s"),
            (60_000, "1m0s"),
            (90_250, "1m30.25s"),
            (3_600_000, "1h0m0s"),
            (29_999, "29.999s"),
            (86_400_000, "24h0m0s"),
        ];
        for (ms, text) in cases {
            assert_eq!(GoDuration(Millis(ms)).to_string(), text, "{ms} ms");
        }
        assert_eq!(GoDuration::rounded_to_seconds(Millis(59_499)).to_string(), "59s");
        assert_eq!(GoDuration::rounded_to_seconds(Millis(59_500)).to_string(), "1m0s");
        assert_eq!(GoDuration::rounded_to_seconds(Millis(400)).to_string(), "0s");
    }
}
