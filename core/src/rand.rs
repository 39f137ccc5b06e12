//! Deterministic randomness for the core: a small seeded generator.
//!
//! The core never reads an entropy source. Drivers hand in a seed (from the OS in production, fixed in
//! tests), and everything random — channel ids, TRX ids, heartbeat jitter — derives from it, so a
//! simulation replays exactly from its seed.

use uuid::Uuid;

/// SplitMix64's finaliser: spreads the bits of `z` over the whole word (for generators and hashes).
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64: tiny, fast, statistically good enough for ids and jitter (not for secrets).
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator seeded with `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// A value in `0..bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 { 0 } else { self.next_u64() % bound }
    }

    /// A random version-4 UUID.
    pub fn uuid_v4(&mut self) -> Uuid {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    /// A new generator whose sequence is independent of this one's (for sub-components).
    pub fn fork(&mut self) -> Self {
        Self::new(self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_valid_uuids() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        assert_eq!(a.next_u64(), b.next_u64());
        let id = a.uuid_v4();
        assert_eq!(id.get_version_num(), 4);
        assert_ne!(id, a.uuid_v4());
        assert_eq!(b.uuid_v4().get_version_num(), 4);
        assert!(a.below(10) < 10);
        assert_eq!(a.below(0), 0);
    }
}
