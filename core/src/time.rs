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
}
