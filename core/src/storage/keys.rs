//! The key layout of PROTOCOL.md §5.2, with exact name matching.
//!
//! | key | value |
//! |---|---|
//! | `DAT\0SEGMENTS\0{space}\0{segment}\0{seq:u64be}` | encoded entry |
//! | `DAT\0SPACES\0{space}\0{ts:i64 sign-flipped be}\0{segment}\0{seq:u64be}` | encoded entry (the space index) |
//! | `INV\0SPACES\0{space}` | space name |
//! | `INV\0SEGMENTS\0{space}\0{segment}` | segment name |
//! | `INV\0SEGMENT_STATUSES\0{space}\0{segment}` | encoded [`SegmentHead`](super::encoding::SegmentHead) |
//!
//! The space-index key is exactly Go's, so a cursor a Go client computed (`GetSpaceOffset`) resumes
//! correctly here. Ranges always end a name with the `0x00` separator before bounding it, so `seg1` never
//! matches keys of `seg10` (the Go prefix bug of §5.2). Names are therefore required to be non-empty and
//! free of `0x00` ([`is_valid_name`]).

use alloc::vec::Vec;

use crate::lexkey::{self, Part};

const DAT: &str = "DAT";
const INV: &str = "INV";
const SEGMENTS: &str = "SEGMENTS";
const SPACES: &str = "SPACES";
const SEGMENT_STATUSES: &str = "SEGMENT_STATUSES";
const SPACE_CLOCKS: &str = "SPACE_CLOCKS";
const LEASES: &str = "LEASES";

/// A key range `[start, end)`.
pub type KeyRange = (Vec<u8>, Vec<u8>);

/// Whether `name` can be a space or segment name: non-empty, no `0x00` byte.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && !name.as_bytes().contains(&0)
}

fn key(parts: &[Part<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lexkey::encoded_len(parts));
    lexkey::write_parts(&mut out, parts);
    out
}

/// `parts` joined and terminated by the separator: the prefix of every key below them.
fn prefix(parts: &[Part<'_>]) -> Vec<u8> {
    let mut out = key(parts);
    out.push(lexkey::SEPARATOR);
    out
}

/// The first key after every key starting with `prefix` (which ends with the `0x00` separator).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last = 0x01;
    }
    end
}

/// Key of an entry in its segment.
pub fn segment_entry(space: &str, segment: &str, sequence: u64) -> Vec<u8> {
    key(&[DAT.into(), SEGMENTS.into(), space.into(), segment.into(), Part::U64(sequence)])
}

/// Prefix of every entry key of one segment.
pub fn segment_prefix(space: &str, segment: &str) -> Vec<u8> {
    prefix(&[DAT.into(), SEGMENTS.into(), space.into(), segment.into()])
}

/// Entries of one segment with `min <= sequence <= max`.
pub fn segment_range(space: &str, segment: &str, min: u64, max: u64) -> KeyRange {
    let base = segment_prefix(space, segment);
    let mut start = base.clone();
    start.extend_from_slice(&min.to_be_bytes());
    let end = match max.checked_add(1) {
        Some(next) => {
            let mut end = base;
            end.extend_from_slice(&next.to_be_bytes());
            end
        }
        None => prefix_end(&base),
    };
    (start, end)
}

/// The sequence of a key built by [`segment_entry`], given the length of its segment prefix.
pub fn sequence_of_segment_key(key: &[u8], prefix_len: usize) -> Option<u64> {
    let tail: [u8; 8] = key.get(prefix_len..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// Key of an entry in the space index (Go `GetSpaceOffset`).
pub fn space_entry(space: &str, timestamp: i64, segment: &str, sequence: u64) -> Vec<u8> {
    key(&[DAT.into(), SPACES.into(), space.into(), Part::I64(timestamp), segment.into(), Part::U64(sequence)])
}

/// Prefix of every space-index key of one space.
pub fn space_prefix(space: &str) -> Vec<u8> {
    prefix(&[DAT.into(), SPACES.into(), space.into()])
}

/// Space-index keys of `space` with `min_exclusive < timestamp <= max_inclusive`, starting strictly after
/// `after` when given (a resume offset). An offset outside the space cannot widen the range.
pub fn space_range(space: &str, after: Option<&[u8]>, min_exclusive: i64, max_inclusive: i64) -> KeyRange {
    let base = space_prefix(space);
    let mut start = base.clone();
    match min_exclusive.checked_add(1) {
        Some(min) => start.extend_from_slice(&timestamp_bytes(min)),
        None => return (start.clone(), start),
    }
    if let Some(after) = after {
        let mut resume = after.to_vec();
        resume.push(lexkey::SEPARATOR);
        if resume > start {
            start = resume;
        }
    }
    let mut end = base;
    end.extend_from_slice(&timestamp_bytes(max_inclusive));
    end.push(0x01);
    (start, end)
}

/// The sortable form of a timestamp inside a key.
fn timestamp_bytes(v: i64) -> [u8; 8] {
    ((v as u64) ^ 0x8000_0000_0000_0000).to_be_bytes()
}

/// The parts of a space-index key after its space prefix: `(timestamp, segment, sequence)`.
pub fn parse_space_entry(key: &[u8], prefix_len: usize) -> Option<(i64, &str, u64)> {
    let rest = key.get(prefix_len..)?;
    if rest.len() < 8 + 1 + 8 + 1 {
        return None;
    }
    let ts = lexkey::decode_i64(rest[..8].try_into().ok()?);
    if rest[8] != lexkey::SEPARATOR {
        return None;
    }
    let seg_end = rest.len() - 9;
    if rest[seg_end] != lexkey::SEPARATOR {
        return None;
    }
    let segment = core::str::from_utf8(&rest[9..seg_end]).ok()?;
    let seq = u64::from_be_bytes(rest[seg_end + 1..].try_into().ok()?);
    Some((ts, segment, seq))
}

/// Inventory key of a space.
pub fn space_inventory(space: &str) -> Vec<u8> {
    key(&[INV.into(), SPACES.into(), space.into()])
}

/// All space inventory keys.
pub fn spaces_range() -> KeyRange {
    let base = prefix(&[INV.into(), SPACES.into()]);
    let end = prefix_end(&base);
    (base, end)
}

/// Length of the prefix before the name in a space inventory key.
pub fn spaces_prefix_len() -> usize {
    INV.len() + 1 + SPACES.len() + 1
}

/// Inventory key of a segment.
pub fn segment_inventory(space: &str, segment: &str) -> Vec<u8> {
    key(&[INV.into(), SEGMENTS.into(), space.into(), segment.into()])
}

/// All segment inventory keys of one space (exactly that space).
pub fn segments_range(space: &str) -> KeyRange {
    let base = prefix(&[INV.into(), SEGMENTS.into(), space.into()]);
    let end = prefix_end(&base);
    (base, end)
}

/// Key of a segment's persisted head/status.
pub fn segment_status(space: &str, segment: &str) -> Vec<u8> {
    key(&[INV.into(), SEGMENT_STATUSES.into(), space.into(), segment.into()])
}

/// Key of a space's shared clock: the timestamp of its last commit (used when several server instances
/// write one store, see [`crate::node::NodeConfig::shared_space_clock`]).
pub fn space_clock(space: &str) -> Vec<u8> {
    key(&[INV.into(), SPACE_CLOCKS.into(), space.into()])
}

/// Key of a lease kept in the store (see [`crate::node::NodeConfig::leases_in_storage`]).
pub fn lease(name: &str) -> Vec<u8> {
    key(&[INV.into(), LEASES.into(), name.into()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Entry;

    fn within(range: &KeyRange, key: &[u8]) -> bool {
        range.0.as_slice() <= key && key < range.1.as_slice()
    }

    #[test]
    fn space_key_is_go_compatible() {
        let entry = Entry {
            sequence: 1,
            timestamp: 1_717_171_717_171,
            space: "space0".into(),
            segment: "segment0".into(),
            ..Entry::default()
        };
        assert_eq!(space_entry("space0", 1_717_171_717_171, "segment0", 1), entry.space_offset().0);
        assert_eq!(segment_entry("space0", "segment0", 1), entry.segment_offset().0);
    }

    #[test]
    fn names_match_exactly() {
        let seg1 = segment_range("sp", "seg1", 0, u64::MAX);
        assert!(within(&seg1, &segment_entry("sp", "seg1", 5)));
        assert!(!within(&seg1, &segment_entry("sp", "seg10", 5)));
        let segs = segments_range("sp1");
        assert!(within(&segs, &segment_inventory("sp1", "a")));
        assert!(!within(&segs, &segment_inventory("sp10", "a")));
        let space = space_range("sp1", None, i64::MIN, i64::MAX);
        assert!(within(&space, &space_entry("sp1", 5, "a", 1)));
        assert!(!within(&space, &space_entry("sp10", 5, "a", 1)));
        assert!(within(&spaces_range(), &space_inventory("x")));
        assert!(is_valid_name("a") && !is_valid_name("") && !is_valid_name("a\0b"));
    }

    #[test]
    fn sequence_bounds_are_inclusive() {
        let r = segment_range("s", "g", 3, 5);
        for (seq, inside) in [(2, false), (3, true), (5, true), (6, false)] {
            assert_eq!(within(&r, &segment_entry("s", "g", seq)), inside, "seq {seq}");
        }
        let all = segment_range("s", "g", 0, u64::MAX);
        assert!(within(&all, &segment_entry("s", "g", u64::MAX)));
        let prefix = segment_prefix("s", "g");
        assert_eq!(sequence_of_segment_key(&segment_entry("s", "g", 42), prefix.len()), Some(42));
    }

    #[test]
    fn timestamp_bounds_and_offsets() {
        let r = space_range("s", None, 100, 200);
        for (ts, inside) in [(100, false), (101, true), (200, true), (201, false)] {
            assert_eq!(within(&r, &space_entry("s", ts, "g", 1)), inside, "ts {ts}");
        }
        let offset = space_entry("s", 150, "g", 2);
        let r = space_range("s", Some(&offset), 100, 200);
        assert!(!within(&r, &offset));
        assert!(within(&r, &space_entry("s", 150, "g", 3)));
        assert!(within(&r, &space_entry("s", 150, "h", 1)));
        assert!(!within(&r, &space_entry("s", 150, "f", 9)));
        // An offset below the space cannot widen the range; one above empties it.
        let r = space_range("s", Some(b"A"), 100, 200);
        assert!(!within(&r, &space_entry("s", 100, "g", 1)));
        let r = space_range("s", Some(b"Z"), 100, 200);
        assert!(r.0 >= r.1);
        let r = space_range("s", None, i64::MAX, i64::MAX);
        assert!(r.0 >= r.1);
    }

    #[test]
    fn parse_space_keys() {
        let prefix = space_prefix("sp");
        let key = space_entry("sp", -7, "se\u{e9}g", 9);
        assert_eq!(parse_space_entry(&key, prefix.len()), Some((-7, "se\u{e9}g", 9)));
        assert_eq!(parse_space_entry(&key[..key.len() - 1], prefix.len()), None);
        assert_eq!(parse_space_entry(b"short", 2), None);
    }
}
