//! An integrity check of one store's keys: every inventoried segment's entries decode, carry the
//! sequence of their key, run 1..N without a gap and end at the segment's head, and each has its
//! space-index twin with the same bytes; every space-index key points at a segment entry. Backends run
//! it offline (`streamkit verify --data DIR` for embedded stores).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use bytes::Bytes;

use super::encoding::{SegmentHead, decode_entry};
use super::keys::{self, KeyRange};
use super::{KvError, OrderedKv, ScanRange};

/// Problems kept in a report; beyond, they are only counted.
pub const MAX_PROBLEMS: usize = 100;
/// Pairs read per scan.
const SCAN_CHUNK: usize = 1024;

/// What [`verify_store`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreReport {
    /// Spaces in the inventory.
    pub spaces: u64,
    /// Segments in the inventory.
    pub segments: u64,
    /// Segment entries read.
    pub entries: u64,
    /// Problems found (all of them counted here, the first [`MAX_PROBLEMS`] described below).
    pub problem_count: u64,
    /// Descriptions of the first problems, e.g. `orders/order-42: sequence 4 missing`.
    pub problems: Vec<String>,
}

impl StoreReport {
    /// Whether nothing is wrong.
    pub fn is_intact(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(text);
        }
    }
}

/// Checks every key of the store behind `kv` (see the module docs). An `Err` is a failure of the
/// backend itself (it could not be read); damage is reported in the [`StoreReport`].
pub fn verify_store(kv: &impl OrderedKv) -> Result<StoreReport, KvError> {
    let mut report = StoreReport::default();
    let mut spaces = Vec::new();
    scan_all(kv, keys::spaces_range(), |key, _| {
        spaces.push(
            String::from_utf8_lossy(key.get(keys::spaces_prefix_len()..).unwrap_or_default()).into_owned(),
        );
        Ok(())
    })?;
    for space in &spaces {
        report.spaces += 1;
        let mut segments = Vec::new();
        let range = keys::segments_range(space);
        let prefix_len = range.0.len();
        scan_all(kv, range, |key, _| {
            segments.push(String::from_utf8_lossy(key.get(prefix_len..).unwrap_or_default()).into_owned());
            Ok(())
        })?;
        let mut space_entries = 0;
        for segment in &segments {
            report.segments += 1;
            space_entries += verify_segment(kv, space, segment, &mut report)?;
        }
        verify_space_index(kv, space, space_entries, &mut report)?;
    }
    Ok(report)
}

/// Checks one segment; returns how many entries it holds.
fn verify_segment(
    kv: &impl OrderedKv,
    space: &str,
    segment: &str,
    report: &mut StoreReport,
) -> Result<u64, KvError> {
    let name = format!("{space}/{segment}");
    let head = match kv.get(&keys::segment_status(space, segment))? {
        None => {
            report.problem(format!("{name}: no head (segment status)"));
            None
        }
        Some(value) => match SegmentHead::decode(&value) {
            Ok(head) => Some(head),
            Err(error) => {
                report.problem(format!("{name}: head does not decode: {error}"));
                None
            }
        },
    };
    let prefix = keys::segment_prefix(space, segment);
    let mut expected = 1u64;
    let mut count = 0u64;
    scan_all(kv, keys::segment_range(space, segment, 0, u64::MAX), |key, value| {
        count += 1;
        let Some(sequence) = keys::sequence_of_segment_key(key, prefix.len()) else {
            report.problem(format!("{name}: a key that is not an entry key"));
            return Ok(());
        };
        if sequence != expected {
            report.problem(format!("{name}: sequence {expected} missing (next is {sequence})"));
        }
        expected = sequence.saturating_add(1);
        let entry = match decode_entry(Bytes::copy_from_slice(value), space, segment) {
            Ok(entry) => entry,
            Err(error) => {
                report.problem(format!("{name}: the entry at sequence {sequence} does not decode: {error}"));
                return Ok(());
            }
        };
        if entry.sequence != sequence {
            report.problem(format!("{name}: the entry at sequence {sequence} says {}", entry.sequence));
            return Ok(());
        }
        let twin = keys::space_entry(space, entry.timestamp, segment, sequence);
        match kv.get(&twin)? {
            Some(indexed) if indexed == value => {}
            Some(_) => report
                .problem(format!("{name}: space-index copy differs from the entry ({})", key_text(&twin))),
            None => report.problem(format!("{name}: space-index key missing ({})", key_text(&twin))),
        }
        Ok(())
    })?;
    report.entries += count;
    if let Some(head) = head
        && head.last_sequence != expected - 1
    {
        report.problem(format!(
            "{name}: head says {} entries, the segment ends at {}",
            head.last_sequence,
            expected - 1
        ));
    }
    Ok(count)
}

/// Checks that every space-index key of `space` points at a segment entry, and that there are as many
/// as the segments hold.
fn verify_space_index(
    kv: &impl OrderedKv,
    space: &str,
    expected: u64,
    report: &mut StoreReport,
) -> Result<(), KvError> {
    let prefix = keys::space_prefix(space);
    let end = {
        let mut end = prefix.clone();
        if let Some(last) = end.last_mut() {
            *last = 0x01;
        }
        end
    };
    let mut indexed = 0u64;
    scan_all(kv, (prefix.clone(), end), |key, _| {
        indexed += 1;
        match keys::parse_space_entry(key, prefix.len()) {
            None => report.problem(format!("{space}: a space-index key that does not parse")),
            Some((_, segment, sequence)) => {
                if kv.get(&keys::segment_entry(space, segment, sequence))?.is_none() {
                    report.problem(format!(
                        "{space}: space-index key for {segment}:{sequence}, which is not in the segment"
                    ));
                }
            }
        }
        Ok(())
    })?;
    if indexed != expected {
        report.problem(format!("{space}: {indexed} space-index keys for {expected} segment entries"));
    }
    Ok(())
}

/// Calls `visit` with every pair of `range`, in key order, reading it in chunks (so a segment of any
/// size costs one chunk of memory).
fn scan_all(
    kv: &impl OrderedKv,
    range: KeyRange,
    mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), KvError>,
) -> Result<(), KvError> {
    let (mut start, end) = range;
    loop {
        let pairs = kv.scan(&ScanRange::new(start.clone(), end.clone(), SCAN_CHUNK))?;
        let Some((last, _)) = pairs.last() else { return Ok(()) };
        // The first key after `last`.
        start = last.clone();
        start.push(0);
        let full = pairs.len() == SCAN_CHUNK;
        for (key, value) in &pairs {
            visit(key, value)?;
        }
        if !full {
            return Ok(());
        }
    }
}

/// A key for a report: printable bytes as they are, the others as `\xNN`.
fn key_text(key: &[u8]) -> String {
    key.iter()
        .map(|&b| if b.is_ascii_graphic() { (b as char).to_string() } else { format!("\\x{b:02x}") })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Trx;
    use crate::storage::encoding::encode_entry;
    use crate::storage::{MemoryKv, WriteBatch};

    /// A store holding `entries` of `orders/o-1`, written as the engine writes them.
    fn store_with(entries: u64) -> MemoryKv {
        let mut kv = MemoryKv::new();
        let mut batch = WriteBatch::default();
        batch.puts.push((keys::space_inventory("orders"), b"orders".to_vec()));
        batch.puts.push((keys::segment_inventory("orders", "o-1"), b"o-1".to_vec()));
        for sequence in 1..=entries {
            let ts = 1_000 + sequence as i64;
            let mut value = Vec::new();
            let trx = Trx { number: sequence, ..Trx::default() };
            encode_entry(&mut value, sequence, ts, &trx, b"payload", &Default::default());
            batch.puts.push((keys::segment_entry("orders", "o-1", sequence), value.clone()));
            batch.puts.push((keys::space_entry("orders", ts, "o-1", sequence), value));
        }
        let head = SegmentHead {
            first_sequence: 1,
            first_timestamp: 1_001,
            last_sequence: entries,
            last_timestamp: 1_000 + entries as i64,
            last_trx_number: entries,
        };
        batch.puts.push((keys::segment_status("orders", "o-1"), head.encode()));
        kv.commit(&[batch]).unwrap();
        kv
    }

    #[test]
    fn an_intact_store_passes() {
        let report = verify_store(&store_with(3000)).unwrap();
        assert!(report.is_intact(), "{report:?}");
        assert_eq!((report.spaces, report.segments, report.entries), (1, 1, 3000));
    }

    #[test]
    fn damage_is_reported() {
        let mut kv = store_with(5);
        let delete = |key: Vec<u8>| WriteBatch { deletes: alloc::vec![key], ..WriteBatch::default() };
        kv.commit(&[
            delete(keys::segment_entry("orders", "o-1", 3)),
            delete(keys::space_entry("orders", 1_005, "o-1", 5)),
        ])
        .unwrap();
        let report = verify_store(&kv).unwrap();
        assert!(!report.is_intact());
        let text = report.problems.join("\n");
        assert!(text.contains("orders/o-1: sequence 3 missing (next is 4)"), "{text}");
        assert!(text.contains("orders/o-1: space-index key missing"), "{text}");
        assert!(text.contains("space-index key for o-1:3, which is not in the segment"), "{text}");
    }
}
