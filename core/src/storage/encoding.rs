//! Stored value encodings: entries and segment heads. Our own, versioned (PROTOCOL.md §5.2 says only the space
//! key layout must match Go, not the values).
//!
//! Entry, version 1 (little-endian):
//! `0x01 | seq u64 | ts i64 | trx.id [16] | trx.number u64 | payload_len u32 | payload | meta_count u32 |
//! (key_len u32 | key | value_len u32 | value)*`. Space and segment are not stored: they are in the key.
//!
//! Segment head, version 1: `0x01 | first_seq u64 | first_ts i64 | last_seq u64 | last_ts i64 |
//! last_trx_number u64`. Its bytes double as the optimistic-concurrency token of a segment: a produce
//! commit requires the head to still equal what it was validated against.

use alloc::string::String;
use alloc::vec::Vec;
use bytes::Bytes;
use uuid::Uuid;

use crate::api::{Entry, Metadata, SegmentStatus, Trx};

const ENTRY_V1: u8 = 1;
const HEAD_V1: u8 = 1;
const HEAD_LEN: usize = 1 + 8 * 5;

/// A stored value that cannot be decoded (corruption or an unknown version).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The value ended early or has trailing bytes.
    #[error("corrupt stored value: bad length")]
    Length,
    /// The version byte is not one this build knows.
    #[error("corrupt stored value: unknown version {0}")]
    Version(u8),
    /// A string is not UTF-8.
    #[error("corrupt stored value: invalid utf-8")]
    Utf8,
}

/// Appends the stored form of an entry's fields (not its space and segment).
pub fn encode_entry(
    out: &mut Vec<u8>,
    sequence: u64,
    timestamp: i64,
    trx: &Trx,
    payload: &[u8],
    metadata: &Metadata,
) {
    out.reserve(1 + 8 + 8 + 16 + 8 + 4 + payload.len() + 4);
    out.push(ENTRY_V1);
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(&timestamp.to_le_bytes());
    out.extend_from_slice(trx.id.as_bytes());
    out.extend_from_slice(&trx.number.to_le_bytes());
    write_bytes(out, payload);
    out.extend_from_slice(&(metadata.len() as u32).to_le_bytes());
    for (k, v) in metadata {
        write_bytes(out, k.as_bytes());
        write_bytes(out, v.as_bytes());
    }
}

fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Length);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| DecodeError::Length)?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| DecodeError::Length)?))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.u64()? as i64)
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        core::str::from_utf8(self.bytes()?).map(String::from).map_err(|_| DecodeError::Utf8)
    }
}

/// Decodes a stored entry; `space` and `segment` come from its key. The payload is a slice of
/// `value`, not a copy: it leaves in the frame that answers the read without being copied before.
pub fn decode_entry(value: Bytes, space: &str, segment: &str) -> Result<Entry, DecodeError> {
    let mut r = Reader(&value);
    let version = r.u8()?;
    if version != ENTRY_V1 {
        return Err(DecodeError::Version(version));
    }
    let sequence = r.u64()?;
    let timestamp = r.i64()?;
    let id = Uuid::from_slice(r.take(16)?).map_err(|_| DecodeError::Length)?;
    let number = r.u64()?;
    let payload = value.slice_ref(r.bytes()?);
    let count = r.u32()?;
    let mut metadata = Metadata::new();
    for _ in 0..count {
        let k = r.string()?;
        let v = r.string()?;
        metadata.insert(k, v);
    }
    if !r.0.is_empty() {
        return Err(DecodeError::Length);
    }
    Ok(Entry {
        sequence,
        timestamp,
        trx: Trx { id, node: Uuid::nil(), number },
        payload: Some(payload),
        metadata,
        space: space.into(),
        segment: segment.into(),
    })
}

/// The persisted head of a segment: its first and last entries and the last commit number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentHead {
    /// Sequence of the first entry.
    pub first_sequence: u64,
    /// Timestamp of the first entry.
    pub first_timestamp: i64,
    /// Sequence of the last entry (the segment's length).
    pub last_sequence: u64,
    /// Timestamp of the last entry.
    pub last_timestamp: i64,
    /// TRX number of the last commit.
    pub last_trx_number: u64,
}

impl SegmentHead {
    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEAD_LEN);
        out.push(HEAD_V1);
        out.extend_from_slice(&self.first_sequence.to_le_bytes());
        out.extend_from_slice(&self.first_timestamp.to_le_bytes());
        out.extend_from_slice(&self.last_sequence.to_le_bytes());
        out.extend_from_slice(&self.last_timestamp.to_le_bytes());
        out.extend_from_slice(&self.last_trx_number.to_le_bytes());
        out
    }

    /// Decodes stored bytes.
    pub fn decode(value: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(value);
        let version = r.u8()?;
        if version != HEAD_V1 {
            return Err(DecodeError::Version(version));
        }
        let head = Self {
            first_sequence: r.u64()?,
            first_timestamp: r.i64()?,
            last_sequence: r.u64()?,
            last_timestamp: r.i64()?,
            last_trx_number: r.u64()?,
        };
        if !r.0.is_empty() {
            return Err(DecodeError::Length);
        }
        Ok(head)
    }

    /// The wire status of this head.
    pub fn status(&self, space: &str, segment: &str) -> SegmentStatus {
        SegmentStatus {
            space: space.into(),
            segment: segment.into(),
            first_sequence: self.first_sequence,
            first_timestamp: self.first_timestamp,
            last_sequence: self.last_sequence,
            last_timestamp: self.last_timestamp,
            heartbeat: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trip_and_corruption() {
        let mut meta = Metadata::new();
        meta.insert("".into(), "e".into());
        meta.insert("k".into(), "v\u{e9}".into());
        let trx = Trx { id: Uuid::from_u128(7), node: Uuid::nil(), number: 3 };
        let mut bytes = Vec::new();
        encode_entry(&mut bytes, 9, -5, &trx, b"payload", &meta);
        let entry = decode_entry(Bytes::copy_from_slice(&bytes), "sp", "sg").unwrap();
        assert_eq!(entry.sequence, 9);
        assert_eq!(entry.timestamp, -5);
        assert_eq!(entry.trx, trx);
        assert_eq!(entry.payload.as_deref(), Some(&b"payload"[..]));
        assert_eq!(entry.metadata, meta);
        assert_eq!((entry.space.as_str(), entry.segment.as_str()), ("sp", "sg"));
        for cut in 0..bytes.len() {
            assert!(
                decode_entry(Bytes::copy_from_slice(&bytes[..cut]), "s", "g").is_err(),
                "truncated at {cut}"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(decode_entry(extra.into(), "s", "g"), Err(DecodeError::Length));
        bytes[0] = 9;
        assert_eq!(decode_entry(bytes.into(), "s", "g"), Err(DecodeError::Version(9)));
    }

    #[test]
    fn a_decoded_payload_is_a_slice_of_the_stored_value() {
        let mut value = Vec::new();
        encode_entry(&mut value, 1, 1, &Trx::default(), &[5; 80], &Metadata::new());
        let value = Bytes::from(value);
        let payload = decode_entry(value.clone(), "s", "g").unwrap().payload.unwrap();
        assert_eq!(payload, [5; 80][..]);
        assert!(value.as_ptr_range().contains(&payload.as_ptr()), "copied");
    }

    #[test]
    fn empty_payload_reads_back_as_empty_not_nil() {
        let mut bytes = Vec::new();
        encode_entry(&mut bytes, 1, 1, &Trx::default(), b"", &Metadata::new());
        assert_eq!(decode_entry(bytes.into(), "s", "g").unwrap().payload, Some(Bytes::new()));
    }

    #[test]
    fn head_round_trip() {
        let head = SegmentHead {
            first_sequence: 1,
            first_timestamp: 10,
            last_sequence: 5,
            last_timestamp: 50,
            last_trx_number: 2,
        };
        assert_eq!(SegmentHead::decode(&head.encode()), Ok(head));
        assert!(SegmentHead::decode(&head.encode()[..10]).is_err());
        let status = head.status("s", "g");
        assert_eq!((status.first_sequence, status.last_sequence, status.heartbeat), (1, 5, false));
    }
}
