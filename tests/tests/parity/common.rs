//! Helpers shared by the scenarios.

use std::collections::BTreeSet;

use futures_core::Stream;
use streamkit::client::Client;
use streamkit::core::api::{Consume, ConsumeSegment, ConsumeSpace, Entry, Record, SegmentStatus};
use streamkit::core::lexkey::LexKey;
use streamkit_tests::{Env, collect_ok};
use uuid::Uuid;

/// Records `range` with payload `payload(seq)`.
pub fn records(
    range: std::ops::RangeInclusive<u64>,
    payload: impl Fn(u64) -> Vec<u8> + Send + 'static,
) -> impl Stream<Item = Record> + Send + 'static {
    futures_util::stream::iter(range.map(move |seq| Record::new(seq, payload(seq))))
}

/// Go's `test data {seq}` payload.
pub fn test_data(seq: u64) -> Vec<u8> {
    format!("test data {seq}").into_bytes()
}

/// Produces `range` (payload `test data {seq}`) in one produce; it must succeed. Returns the statuses.
pub async fn produce_ok(
    env: &Env,
    client: &Client,
    space: &str,
    segment: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Vec<SegmentStatus> {
    produce_with(env, client, space, segment, range, test_data).await
}

/// Produces `range` with `payload` in one produce; it must succeed. Returns the statuses.
pub async fn produce_with(
    env: &Env,
    client: &Client,
    space: &str,
    segment: &str,
    range: std::ops::RangeInclusive<u64>,
    payload: impl Fn(u64) -> Vec<u8> + Send + 'static,
) -> Vec<SegmentStatus> {
    let last = *range.end();
    let statuses =
        collect_ok(env.runtime(), client.produce(env.store(), space, segment, records(range, payload))).await;
    assert!(!statuses.is_empty(), "{space}/{segment}: at least one status");
    assert_eq!(statuses.last().unwrap().last_sequence, last, "{space}/{segment}: acknowledged up to {last}");
    statuses
}

/// A ConsumeSegment request.
pub fn segment_request(space: &str, segment: &str) -> ConsumeSegment {
    ConsumeSegment { space: space.into(), segment: segment.into(), ..ConsumeSegment::default() }
}

/// Reads a segment; the read must end cleanly.
pub async fn consume_segment(env: &Env, client: &Client, request: ConsumeSegment) -> Vec<Entry> {
    collect_ok(env.runtime(), client.consume_segment(env.store(), request)).await
}

/// Reads a space from `offset` (empty = from the start); the read must end cleanly.
pub async fn consume_space(env: &Env, client: &Client, space: &str, offset: LexKey) -> Vec<Entry> {
    let request = ConsumeSpace { space: space.into(), offset, ..ConsumeSpace::default() };
    collect_ok(env.runtime(), client.consume_space(env.store(), request)).await
}

/// Reads several spaces merged, each from its offset; the read must end cleanly.
pub async fn consume(env: &Env, client: &Client, offsets: &[(&str, LexKey)]) -> Vec<Entry> {
    let request = Consume {
        offsets: offsets.iter().map(|(space, offset)| (space.to_string(), offset.clone())).collect(),
        ..Consume::default()
    };
    collect_ok(env.runtime(), client.consume(env.store(), request)).await
}

/// The sequences of `entries`.
pub fn sequences(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.sequence).collect()
}

/// `(segment, sequence)` of each entry.
pub fn positions(entries: &[Entry]) -> Vec<(String, u64)> {
    entries.iter().map(|e| (e.segment.clone(), e.sequence)).collect()
}

/// Checks a merged read: no entry twice, timestamps never decrease, and every segment in sequence order.
pub fn assert_merged_order(entries: &[Entry]) {
    let mut seen = BTreeSet::new();
    let mut last_per_segment = std::collections::BTreeMap::new();
    for pair in entries.windows(2) {
        assert!(
            pair[0].timestamp <= pair[1].timestamp,
            "timestamps never decrease: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    for entry in entries {
        let key = (entry.space.clone(), entry.segment.clone());
        assert!(seen.insert((key.clone(), entry.sequence)), "duplicate {key:?}:{}", entry.sequence);
        let previous = last_per_segment.insert(key.clone(), entry.sequence).unwrap_or(0);
        assert!(entry.sequence > previous, "{key:?}: {} after {previous}", entry.sequence);
    }
}

/// The nil UUID.
pub fn nil() -> Uuid {
    Uuid::nil()
}
