//! Lexicographic keys (fgrzl/lexkey v0.1.1, PROTOCOL.md §5.1) and the hex form they take on the wire.
//!
//! A key is the concatenation of encoded parts separated by one `0x00` byte. Strings and byte strings are
//! written raw (no escaping, so names must not contain `0x00`), `i64` as big-endian with the sign bit
//! flipped (so negative numbers sort first), `u64` as big-endian. [`LexKey::encode_first`] keys append
//! `0x00` and [`LexKey::encode_last`] keys append `0xFF`, which makes them bound ranges of keys sharing a
//! prefix. On the wire a key is a lowercase hex string; JSON `null` and `""` are the empty key.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Separator between key parts.
pub const SEPARATOR: u8 = 0x00;
/// Suffix that turns a key into the greatest key with that prefix (`EncodeLast`).
pub const LAST: u8 = 0xFF;

/// An encoded lexicographic key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LexKey(pub Vec<u8>);

/// One part of a key.
#[derive(Clone, Copy, Debug)]
pub enum Part<'a> {
    /// Raw bytes (strings, byte slices, nested keys, UUIDs as 16 raw bytes).
    Bytes(&'a [u8]),
    /// A signed integer: 8 bytes big-endian of `v XOR 0x8000_0000_0000_0000`.
    I64(i64),
    /// An unsigned integer: 8 bytes big-endian.
    U64(u64),
}

impl<'a> From<&'a str> for Part<'a> {
    fn from(s: &'a str) -> Self {
        Part::Bytes(s.as_bytes())
    }
}

impl<'a> From<&'a [u8]> for Part<'a> {
    fn from(b: &'a [u8]) -> Self {
        Part::Bytes(b)
    }
}

/// Why a hex key could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LexKeyError {
    /// The hex string has an odd number of digits.
    #[error("invalid lexkey hex: odd length")]
    OddLength,
    /// A character that is not a hex digit.
    #[error("invalid lexkey hex: bad digit")]
    BadDigit,
}

impl LexKey {
    /// The empty key.
    pub const fn empty() -> Self {
        Self(Vec::new())
    }

    /// `Encode(parts...)`: parts joined with `0x00`, no trailing separator.
    pub fn encode(parts: &[Part<'_>]) -> Self {
        let mut out = Vec::with_capacity(encoded_len(parts));
        write_parts(&mut out, parts);
        Self(out)
    }

    /// `EncodeFirst(parts...)`: [`LexKey::encode`] followed by `0x00`.
    pub fn encode_first(parts: &[Part<'_>]) -> Self {
        let mut key = Self::encode(parts);
        key.0.push(SEPARATOR);
        key
    }

    /// `EncodeLast(parts...)`: [`LexKey::encode`] followed by `0xFF`.
    pub fn encode_last(parts: &[Part<'_>]) -> Self {
        let mut key = Self::encode(parts);
        key.0.push(LAST);
        key
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether the key has no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Lowercase hex form (what goes on the wire).
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(self.0.len() * 2);
        for b in &self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 0xF) as usize] as char);
        }
        s
    }

    /// Parses the hex form; upper-case digits are accepted too (Go's `hex.DecodeString` accepts them).
    pub fn from_hex(s: &str) -> Result<Self, LexKeyError> {
        let bytes = s.as_bytes();
        if !bytes.len().is_multiple_of(2) {
            return Err(LexKeyError::OddLength);
        }
        let mut out = Vec::with_capacity(bytes.len() / 2);
        for pair in bytes.chunks_exact(2) {
            out.push((hex_val(pair[0])? << 4) | hex_val(pair[1])?);
        }
        Ok(Self(out))
    }
}

fn hex_val(c: u8) -> Result<u8, LexKeyError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(LexKeyError::BadDigit),
    }
}

fn part_len(part: &Part<'_>) -> usize {
    match part {
        Part::Bytes(b) => b.len(),
        Part::I64(_) | Part::U64(_) => 8,
    }
}

/// Number of bytes [`write_parts`] appends for `parts`.
pub fn encoded_len(parts: &[Part<'_>]) -> usize {
    parts.iter().map(part_len).sum::<usize>() + parts.len().saturating_sub(1)
}

/// Appends the encoding of `parts` (joined by `0x00`) to `out`.
pub fn write_parts(out: &mut Vec<u8>, parts: &[Part<'_>]) {
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        match part {
            Part::Bytes(b) => out.extend_from_slice(b),
            Part::I64(v) => out.extend_from_slice(&((*v as u64) ^ 0x8000_0000_0000_0000).to_be_bytes()),
            Part::U64(v) => out.extend_from_slice(&v.to_be_bytes()),
        }
    }
}

/// Decodes an `i64` written by [`Part::I64`].
pub fn decode_i64(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ 0x8000_0000_0000_0000) as i64
}

impl fmt::Debug for LexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LexKey({})", self.to_hex())
    }
}

impl fmt::Display for LexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl From<Vec<u8>> for LexKey {
    fn from(v: Vec<u8>) -> Self {
        Self(v)
    }
}

impl serde::Serialize for LexKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_hex())
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for LexKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = LexKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a hex string, a byte string or null")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<LexKey, E> {
                LexKey::from_hex(v).map_err(E::custom)
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<LexKey, E> {
                Ok(LexKey(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<LexKey, E> {
                Ok(LexKey(v))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<LexKey, E> {
                Ok(LexKey::empty())
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<LexKey, E> {
                Ok(LexKey::empty())
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<LexKey, D::Error> {
                d.deserialize_any(Visitor)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_offset_matches_the_spec_example() {
        let key = LexKey::encode(&[
            "DAT".into(),
            "SPACES".into(),
            "space0".into(),
            Part::I64(1_717_171_717_171),
            "segment0".into(),
            Part::U64(1),
        ]);
        assert_eq!(
            key.to_hex(),
            "4441540053504143455300737061636530008000018fcf690433007365676d656e7430000000000000000001"
        );
    }

    #[test]
    fn first_and_last_bound_the_prefix() {
        let parts: [Part<'_>; 2] = ["a".into(), "b".into()];
        let first = LexKey::encode_first(&parts);
        let last = LexKey::encode_last(&parts);
        let inside = LexKey::encode(&["a".into(), "b".into(), Part::U64(7)]);
        assert!(first < inside && inside < last);
        assert_eq!(first.0.last(), Some(&0x00));
        assert_eq!(last.0.last(), Some(&0xFF));
    }

    #[test]
    fn signed_integers_sort_numerically() {
        let k = |v: i64| LexKey::encode(&[Part::I64(v)]);
        assert!(k(-5) < k(-1) && k(-1) < k(0) && k(0) < k(7) && k(7) < k(i64::MAX));
        assert_eq!(decode_i64(k(-42).0.try_into().unwrap()), -42);
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let key = LexKey(alloc::vec![0, 1, 0xab, 0xff]);
        assert_eq!(key.to_hex(), "0001abff");
        assert_eq!(LexKey::from_hex("0001ABff").unwrap(), key);
        assert_eq!(LexKey::from_hex("abc"), Err(LexKeyError::OddLength));
        assert_eq!(LexKey::from_hex("zz"), Err(LexKeyError::BadDigit));
        assert!(LexKey::from_hex("").unwrap().is_empty());
    }
}
