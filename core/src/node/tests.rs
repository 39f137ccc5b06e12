//! Node tests: produce and read semantics of PROTOCOL.md §4–5 and the §9.1/§9.2 scenarios at the core level.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::NodeConfig;
use super::harness::NodeHarness;
use crate::api::*;
use crate::lexkey::LexKey;
use crate::stream::{EndReason, StreamEnd, StreamId};
use crate::wire::Message;

pub(super) fn produce_req(space: &str, segment: &str) -> Request {
    Request::Produce(Produce { space: space.into(), segment: segment.into() })
}

pub(super) fn record(seq: u64) -> Message {
    Message::Record(Record::new(seq, format!("test data {seq}")))
}

/// Produces `seqs` into space/segment in one produce stream, ending it cleanly.
pub(super) fn produce(
    h: &mut NodeHarness,
    space: &str,
    segment: &str,
    seqs: impl IntoIterator<Item = u64>,
) -> StreamId {
    let s = h.open(produce_req(space, segment));
    for seq in seqs {
        h.send(s, record(seq));
    }
    h.end(s, StreamEnd::Finished);
    s
}

fn consume_segment(h: &mut NodeHarness, req: ConsumeSegment) -> Vec<Entry> {
    let s = h.open(Request::ConsumeSegment(req));
    assert_eq!(h.log(s).close_error(), None);
    h.log(s).entries()
}

fn seg_req(space: &str, segment: &str) -> ConsumeSegment {
    ConsumeSegment { space: space.into(), segment: segment.into(), ..ConsumeSegment::default() }
}

fn seqs(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.sequence).collect()
}

fn harness() -> NodeHarness {
    NodeHarness::new(NodeConfig::default())
}

#[test]
fn produce_acknowledges_one_status_per_chunk() {
    let mut h = harness();
    for segment in ["segment0", "segment1", "segment2"] {
        let s = produce(&mut h, "space0", segment, 1..=5);
        let log = h.log(s);
        assert_eq!(log.close_error(), None);
        let statuses = log.statuses();
        assert_eq!(statuses.len(), 1);
        assert_eq!(statuses[0].first_sequence, 1);
        assert_eq!(statuses[0].last_sequence, 5);
        assert_eq!(statuses[0].segment, segment);
        assert!(!statuses[0].heartbeat);
    }
    // One notification per chunk, after the status.
    assert_eq!(h.published.len(), 3);
}

#[test]
fn produce_chunks_large_streams() {
    let mut h = NodeHarness::new(NodeConfig { produce_chunk_records: 4, ..NodeConfig::default() });
    let s = produce(&mut h, "sp", "sg", 1..=10);
    let statuses = h.log(s).statuses();
    assert_eq!(statuses.iter().map(|s| s.last_sequence).collect::<Vec<_>>(), [4, 8, 10]);
    assert!(statuses.iter().all(|s| s.first_sequence == 1));
    let entries = consume_segment(&mut h, seg_req("sp", "sg"));
    assert_eq!(seqs(&entries), (1..=10).collect::<Vec<_>>());
    // Each chunk is one TRX: numbers 1,1,1,1,2,2,2,2,3,3.
    let numbers: Vec<u64> = entries.iter().map(|e| e.trx.number).collect();
    assert_eq!(numbers, [1, 1, 1, 1, 2, 2, 2, 2, 3, 3]);
    // Every committed record is reported for the metrics, with its payload bytes.
    let payload: u64 = entries.iter().map(|e| e.payload.as_ref().map_or(0, |p| p.len()) as u64).sum();
    assert_eq!(h.produced, (10, payload));
}

#[test]
fn zero_records_zero_statuses() {
    let mut h = harness();
    let s = produce(&mut h, "sp", "sg", []);
    assert_eq!(h.log(s).close_error(), None);
    assert!(h.log(s).statuses().is_empty());
}

#[test]
fn invalid_produce_args() {
    let mut h = harness();
    for (space, segment) in [("", "g"), ("s", ""), ("a\0b", "g")] {
        let s = h.open(produce_req(space, segment));
        assert_eq!(h.log(s).close_error(), Some("invalid produce args"));
    }
}

#[test]
fn sequence_gap_discards_the_chunk() {
    let mut h = harness();
    produce(&mut h, "sp", "sg", 1..=2);
    let s = produce(&mut h, "sp", "sg", [3, 4, 6]);
    assert_eq!(h.log(s).close_error(), Some("sequence gap: expected 5, got 6"));
    assert!(h.log(s).statuses().is_empty());
    assert_eq!(seqs(&consume_segment(&mut h, seg_req("sp", "sg"))), [1, 2]);
    let s = produce(&mut h, "sp", "sg", [4]);
    assert_eq!(h.log(s).close_error(), Some("sequence gap: expected 3, got 4"));
    assert_eq!(h.produced.0, 2, "refused chunks are not reported produced");
}

#[test]
fn failed_record_stream_commits_nothing_of_its_chunk() {
    let mut h = harness();
    let s = h.open(produce_req("sp", "sg"));
    h.send(s, record(1));
    h.send(s, record(2));
    h.end(s, StreamEnd::Failed("remote closed stream: source failed".into()));
    assert!(h.log(s).closed.is_some());
    assert!(h.log(s).statuses().is_empty());
    assert!(consume_segment(&mut h, seg_req("sp", "sg")).is_empty());
}

#[test]
fn transactions_are_unique_and_monotonic() {
    let mut h = harness();
    produce(&mut h, "sp", "sg", 1..=3);
    produce(&mut h, "sp", "sg", 4..=6);
    h.advance(5);
    produce(&mut h, "sp", "sg", 7..=8);
    let entries = consume_segment(&mut h, seg_req("sp", "sg"));
    assert_eq!(seqs(&entries), (1..=8).collect::<Vec<_>>());
    let (a, b, c) = (entries[0].trx, entries[3].trx, entries[6].trx);
    assert!(!a.id.is_nil() && !b.id.is_nil() && a.id != b.id && b.id != c.id);
    assert!(entries[..3].iter().all(|e| e.trx == a));
    assert!(entries[3..6].iter().all(|e| e.trx == b));
    assert_eq!((a.number, b.number, c.number), (1, 2, 3));
    assert!(entries.iter().all(|e| e.trx.node.is_nil() && e.timestamp > 0));
    assert!(entries[6].timestamp > entries[0].timestamp);
}

#[test]
fn racing_producers_leave_exactly_one_to_n() {
    // Two (then four) concurrent producers of 1..N into one segment: exactly one wins each range.
    for producers in [2usize, 4] {
        let mut h = harness();
        h.hold_storage = true;
        let streams: Vec<StreamId> = (0..producers).map(|_| h.open(produce_req("sp", "sg"))).collect();
        h.release_all();
        h.hold_storage = true;
        for seq in 1..=25 {
            for s in &streams {
                h.send(*s, record(seq));
            }
        }
        for s in &streams {
            h.end(*s, StreamEnd::Finished);
        }
        h.release_all();
        h.hold_storage = false;
        let entries = consume_segment(&mut h, seg_req("sp", "sg"));
        assert_eq!(seqs(&entries), (1..=25).collect::<Vec<_>>(), "{producers} producers");
        let winners = streams.iter().filter(|s| h.log(**s).close_error().is_none()).count();
        assert_eq!(winners, 1);
        for s in &streams {
            if let Some(err) = h.log(*s).close_error() {
                assert_eq!(err, "sequence gap: expected 26, got 1");
            }
        }
    }
}

/// Swaps in a second node over the same store: another server instance writing the same segments.
fn other_instance(h: &mut NodeHarness, other: &mut super::Node) {
    core::mem::swap(&mut h.node, other);
}

#[test]
fn stale_cached_head_is_revalidated_before_refusing() {
    let mut h = harness();
    produce(&mut h, "sp", "sg", 1..=3); // this node caches head = 3
    let mut other = super::Node::new(h.node.store_id(), NodeConfig::default(), h.now, 7);
    other_instance(&mut h, &mut other);
    produce(&mut h, "sp", "sg", 4..=5); // another instance appends 4..5
    other_instance(&mut h, &mut other);
    // The client knows the real head (5): the stale cache must not refuse record 6.
    let s = produce(&mut h, "sp", "sg", 6..=7);
    assert_eq!(h.log(s).close_error(), None);
    assert_eq!(seqs(&consume_segment(&mut h, seg_req("sp", "sg"))), (1..=7).collect::<Vec<_>>());
}

#[test]
fn concurrent_writer_on_another_instance_fails_the_commit_precondition() {
    let mut h = harness();
    produce(&mut h, "sp", "sg", 1..=3);
    let mut other = super::Node::new(h.node.store_id(), NodeConfig::default(), h.now, 7);
    other_instance(&mut h, &mut other);
    produce(&mut h, "sp", "sg", 4..=5);
    other_instance(&mut h, &mut other);
    // Validated against the stale head (3), the chunk 4..5 passes validation but its commit conflicts;
    // the refreshed head (5) shows it no longer follows.
    let s = produce(&mut h, "sp", "sg", 4..=5);
    assert_eq!(h.log(s).close_error(), Some("sequence gap: expected 6, got 4"));
    assert_eq!(seqs(&consume_segment(&mut h, seg_req("sp", "sg"))), (1..=5).collect::<Vec<_>>());
}

#[test]
fn peek_returns_last_entry_or_the_empty_entry() {
    let mut h = harness();
    for segment in ["segment0", "segment1", "segment2"] {
        let s = h.open(Request::Peek(Peek { space: "space0".into(), segment: segment.into() }));
        let entries = h.log(s).entries();
        assert_eq!(entries, [Entry::empty("space0", segment)]);
        assert_eq!(h.log(s).close_error(), None);
    }
    produce(&mut h, "space0", "segment0", 1..=7);
    let s = h.open(Request::Peek(Peek { space: "space0".into(), segment: "segment0".into() }));
    let e = &h.log(s).entries()[0];
    assert_eq!(
        (e.sequence, e.space.as_str(), e.payload.as_deref()),
        (7, "space0", Some(&b"test data 7"[..]))
    );
}

#[test]
fn segment_bounds_are_inclusive() {
    let mut h = harness();
    produce(&mut h, "sp", "sg", 1..=10);
    let case = |h: &mut NodeHarness, min: u64, max: u64| {
        seqs(&consume_segment(
            h,
            ConsumeSegment { min_sequence: min, max_sequence: max, ..seg_req("sp", "sg") },
        ))
    };
    assert_eq!(case(&mut h, 0, 0), (1..=10).collect::<Vec<_>>());
    assert_eq!(case(&mut h, 3, 3), [3]);
    assert_eq!(case(&mut h, 3, 5), [3, 4, 5]);
    assert!(case(&mut h, 11, 0).is_empty());
    assert_eq!(case(&mut h, 9, 15), [9, 10]);
    assert_eq!(case(&mut h, 5, 3), [5]);
}

#[test]
fn consume_limits() {
    let mut h = harness();
    produce(&mut h, "sp", "sg", 1..=10);
    for (limit, expected) in [(3u64, 3usize), (0, 10), (u64::MAX, 10), (10_000_001, 10)] {
        let got = consume_segment(&mut h, ConsumeSegment { limit, ..seg_req("sp", "sg") });
        assert_eq!(got.len(), expected, "limit {limit}");
    }
    h.advance(2);
    let s = h.open(Request::ConsumeSpace(ConsumeSpace {
        space: "sp".into(),
        limit: 3,
        ..ConsumeSpace::default()
    }));
    assert_eq!(h.log(s).entries().len(), 3);
}

#[test]
fn names_match_exactly() {
    let mut h = harness();
    produce(&mut h, "sp1", "seg1", 1..=2);
    produce(&mut h, "sp1", "seg10", 1..=3);
    produce(&mut h, "sp10", "seg1", 1..=4);
    assert_eq!(seqs(&consume_segment(&mut h, seg_req("sp1", "seg1"))), [1, 2]);
    let s = h.open(Request::GetSegments(GetSegments { space: "sp1".into() }));
    assert_eq!(h.log(s).names(), ["seg1", "seg10"]);
    let s = h.open(Request::Peek(Peek { space: "sp1".into(), segment: "seg1".into() }));
    assert_eq!(h.log(s).entries()[0].sequence, 2);
    let s = h.open(Request::GetSpaces(GetSpaces {}));
    assert_eq!(h.log(s).names(), ["sp1", "sp10"]);
}

#[test]
fn inventory_of_a_fresh_store_is_empty() {
    let mut h = harness();
    let s = h.open(Request::GetSpaces(GetSpaces {}));
    assert!(h.log(s).names().is_empty());
    assert_eq!(h.log(s).close_error(), None);
    let s = h.open(Request::GetSegments(GetSegments { space: "missing-space".into() }));
    assert!(h.log(s).names().is_empty());
    assert!(
        consume_segment(&mut h, ConsumeSegment { min_sequence: 1, ..seg_req("sp", "missing") }).is_empty()
    );
    let s =
        h.open(Request::ConsumeSpace(ConsumeSpace { space: "missing-space".into(), ..Default::default() }));
    assert!(h.log(s).entries().is_empty());
    let mut offsets = BTreeMap::new();
    offsets.insert(String::from("missing-space"), LexKey::empty());
    let s = h.open(Request::Consume(Consume { offsets, ..Default::default() }));
    assert!(h.log(s).entries().is_empty());
    assert_eq!(h.log(s).close_error(), None);
    let s = h.open(Request::Consume(Consume::default()));
    assert!(h.log(s).entries().is_empty());
}

fn setup_consumer_data(h: &mut NodeHarness, n: u64) {
    for space in 0..5 {
        for segment in 0..5 {
            let s = produce(h, &format!("space{space}"), &format!("segment{segment}"), 1..=n);
            assert_eq!(h.log(s).statuses().len(), 1);
        }
        h.advance(1);
    }
}

#[test]
fn consumer_operations() {
    let n = 53;
    let mut h = harness();
    setup_consumer_data(&mut h, n);
    let s = h.open(Request::GetSpaces(GetSpaces {}));
    assert_eq!(h.log(s).names(), ["space0", "space1", "space2", "space3", "space4"]);
    let s = h.open(Request::GetSegments(GetSegments { space: "space0".into() }));
    assert_eq!(h.log(s).names(), ["segment0", "segment1", "segment2", "segment3", "segment4"]);
    let s = h.open(Request::Peek(Peek { space: "space0".into(), segment: "segment0".into() }));
    assert_eq!(h.log(s).entries()[0].sequence, n);
    assert_eq!(consume_segment(&mut h, seg_req("space0", "segment0")).len() as u64, n);
    let got =
        consume_segment(&mut h, ConsumeSegment { min_sequence: n - 20, ..seg_req("space0", "segment0") });
    assert_eq!(got.len(), 21);
    let s = h.open(Request::ConsumeSpace(ConsumeSpace { space: "space0".into(), ..Default::default() }));
    assert_eq!(h.log(s).entries().len() as u64, 5 * n);
    // Interleaved: all five spaces from the beginning, merged by timestamp.
    let offsets = (0..5).map(|i| (format!("space{i}"), LexKey::empty())).collect();
    let s = h.open(Request::Consume(Consume { offsets, ..Default::default() }));
    let entries = h.log(s).entries();
    assert_eq!(entries.len() as u64, 25 * n);
    assert!(entries.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
}

#[test]
fn space_order_and_resume_from_offset() {
    let mut h = harness();
    produce(&mut h, "sp", "seg-b", 1..=1);
    h.advance(3);
    produce(&mut h, "sp", "seg-a", 1..=2);
    h.advance(3);
    produce(&mut h, "sp", "seg-b", 2..=2);
    h.advance(3);
    let s = h.open(Request::ConsumeSpace(ConsumeSpace { space: "sp".into(), ..Default::default() }));
    let entries = h.log(s).entries();
    let order: Vec<(String, u64)> = entries.iter().map(|e| (e.segment.clone(), e.sequence)).collect();
    assert_eq!(order, [("seg-b".into(), 1), ("seg-a".into(), 1), ("seg-a".into(), 2), ("seg-b".into(), 2)]);
    // Resume strictly after the second entry.
    let offset = entries[1].space_offset();
    let s = h.open(Request::ConsumeSpace(ConsumeSpace { space: "sp".into(), offset, ..Default::default() }));
    assert_eq!(h.log(s).entries(), entries[2..].to_vec());
    // The same through Consume's offsets map.
    let mut offsets = BTreeMap::new();
    offsets.insert(String::from("sp"), entries[2].space_offset());
    let s = h.open(Request::Consume(Consume { offsets, ..Default::default() }));
    assert_eq!(h.log(s).entries(), entries[3..].to_vec());
}

#[test]
fn timestamp_bounds() {
    let mut h = harness();
    produce(&mut h, "sp", "sg", 1..=1);
    let t1 = h.now.as_timestamp();
    h.advance(10);
    produce(&mut h, "sp", "sg", 2..=2);
    let t2 = h.now.as_timestamp();
    h.advance(10);
    // min_timestamp is exclusive, max_timestamp inclusive.
    let got = consume_segment(&mut h, ConsumeSegment { min_timestamp: t1, ..seg_req("sp", "sg") });
    assert_eq!(seqs(&got), [2]);
    let got = consume_segment(&mut h, ConsumeSegment { max_timestamp: t1, ..seg_req("sp", "sg") });
    assert_eq!(seqs(&got), [1]);
    let req =
        ConsumeSpace { space: "sp".into(), min_timestamp: t1 - 1, max_timestamp: t2, ..Default::default() };
    let s = h.open(Request::ConsumeSpace(req));
    assert_eq!(seqs(&h.log(s).entries()), [1, 2]);
    let req =
        ConsumeSpace { space: "sp".into(), min_timestamp: t1, max_timestamp: t2 - 1, ..Default::default() };
    let s = h.open(Request::ConsumeSpace(req));
    assert!(h.log(s).entries().is_empty());
}

#[test]
fn watermark_hides_entries_behind_an_in_flight_write() {
    // seg-a's commit is in flight (fence at t); seg-b commits later with a higher timestamp.
    let mut h = harness();
    h.hold_storage = true;
    let a = h.open(produce_req("sp", "seg-a"));
    h.release_storage(); // head read
    h.send(a, record(1));
    h.end(a, StreamEnd::Finished);
    assert_eq!(h.held(), 1, "seg-a's commit is held");
    h.advance(5);
    let b = h.open(produce_req("sp", "seg-b"));
    h.release_newest_storage();
    h.send(b, record(1));
    h.end(b, StreamEnd::Finished);
    h.release_newest_storage(); // seg-b commits; seg-a still in flight
    assert_eq!(h.log(b).statuses().len(), 1, "the later write acknowledges at once");
    assert!(h.published.is_empty(), "but its notification waits for the earlier write");
    h.hold_storage = false;
    // Peek of seg-b hides its head; space reads stop before seg-a's fence; segment reads too.
    let s = h.open(Request::Peek(Peek { space: "sp".into(), segment: "seg-b".into() }));
    assert_eq!(h.log(s).entries()[0].sequence, 0);
    let s = h.open(Request::ConsumeSpace(ConsumeSpace { space: "sp".into(), ..Default::default() }));
    assert!(h.log(s).entries().is_empty());
    assert!(consume_segment(&mut h, seg_req("sp", "seg-b")).is_empty());
    // Release seg-a: both notifications go out, in order, and everything is visible.
    h.hold_storage = false;
    h.release_all();
    assert_eq!(h.published.len(), 2);
    assert_eq!(h.published[0].segment_status.segment, "seg-a");
    let s = h.open(Request::ConsumeSpace(ConsumeSpace { space: "sp".into(), ..Default::default() }));
    let segs: Vec<String> = h.log(s).entries().iter().map(|e| e.segment.clone()).collect();
    assert_eq!(segs, ["seg-a", "seg-b"]);
}

#[test]
fn space_read_in_the_same_millisecond_as_a_write_waits_for_it_to_close() {
    // The "now" edge of invariant 3. A read whose bound reaches the current millisecond starts when that
    // millisecond is over, and stops before the millisecond it starts in: writes of that millisecond,
    // committed before or after the read's scan, can never fall behind the read's cursor.
    let mut h = harness();
    let t = h.now.as_timestamp();
    produce(&mut h, "sp", "b", 1..=1); // (t, b)
    h.hold_storage = true;
    let read = h.open(Request::ConsumeSpace(ConsumeSpace { space: "sp".into(), ..Default::default() }));
    assert_eq!(h.now.as_timestamp(), t + 1, "the read started one millisecond later");
    assert_eq!(h.held(), 1, "its scan is in flight");
    // A write of millisecond t+1 commits before the scan runs...
    let z = h.open(produce_req("sp", "z"));
    h.release_newest_storage();
    h.send(z, record(1));
    h.end(z, StreamEnd::Finished);
    h.release_newest_storage();
    assert_eq!(h.log(z).statuses()[0].last_timestamp, t + 1);
    h.release_storage();
    let first = h.log(read).entries();
    assert_eq!(
        first.iter().map(|e| e.segment.as_str()).collect::<Vec<_>>(),
        ["b"],
        "the read stops before t+1"
    );
    // ...and another one after it, in the same millisecond, sorting before it.
    h.hold_storage = false;
    produce(&mut h, "sp", "a", 1..=1);
    h.advance(2);
    let offset = first.last().unwrap().space_offset();
    let resumed =
        h.open(Request::ConsumeSpace(ConsumeSpace { space: "sp".into(), offset, ..Default::default() }));
    let segments: Vec<String> = h.log(resumed).entries().iter().map(|e| e.segment.clone()).collect();
    assert_eq!(segments, ["a", "z"], "nothing is skipped after the cursor");
}

#[test]
fn streaming_reads_respect_credit() {
    let mut h = NodeHarness::new(NodeConfig { stream_credit: 4, read_batch: 3, ..NodeConfig::default() });
    produce(&mut h, "sp", "sg", 1..=20);
    h.manual_credit = true;
    let s = h.open(Request::ConsumeSegment(seg_req("sp", "sg")));
    assert!(h.log(s).entries().len() <= 4);
    assert!(h.log(s).closed.is_none());
    for _ in 0..10 {
        let before = h.log(s).entries().len();
        h.credit(s, 2);
        assert!(h.log(s).entries().len() <= before + 3);
    }
    h.manual_credit = false;
    h.credit(s, 100);
    assert_eq!(seqs(&h.log(s).entries()), (1..=20).collect::<Vec<_>>());
    assert_eq!(h.log(s).close_error(), None);
}

/// A peer that cancels a read (`mux::close` with an error, what a dropped client consume sends) stops
/// it: nothing more is read or sent and the stream is released at once, for every kind of read. A clean
/// half-close only ends what the peer sends: the read goes on to the end.
#[test]
fn reads_stop_when_the_peer_cancels() {
    let mut h = NodeHarness::new(NodeConfig { stream_credit: 4, read_batch: 3, ..NodeConfig::default() });
    produce(&mut h, "sp", "sg", 1..=50);
    h.manual_credit = true;
    let requests = [
        Request::ConsumeSegment(seg_req("sp", "sg")),
        Request::ConsumeSpace(ConsumeSpace { space: "sp".into(), ..ConsumeSpace::default() }),
        Request::Consume(Consume {
            offsets: [("sp".to_owned(), LexKey::default())].into_iter().collect(),
            ..Consume::default()
        }),
    ];
    for request in requests {
        let s = h.open(request.clone());
        let sent = h.log(s).entries().len();
        assert!(sent > 0 && sent <= 4, "{request:?}: {sent}");
        h.end(s, StreamEnd::Failed("remote closed stream: context canceled".into()));
        assert_eq!(h.log(s).close_reason(), Some(&EndReason::Canceled), "{request:?}");
        assert_eq!(h.node.stream_count(), 0, "{request:?}: the stream is released");
        h.credit(s, 100);
        assert_eq!(h.log(s).entries().len(), sent, "{request:?}: nothing sent after the cancel");
        assert_eq!(h.node.sv.io.pending_effects(), 0, "{request:?}: no read left in flight");

        // A clean half-close is not a cancel.
        let s = h.open(request.clone());
        h.end(s, StreamEnd::Finished);
        h.manual_credit = false;
        h.credit(s, 100);
        assert_eq!(h.log(s).entries().len(), 50, "{request:?}");
        assert_eq!(h.log(s).close_error(), None);
        h.manual_credit = true;
    }
}

#[test]
fn non_requests_are_refused_with_the_go_text() {
    let mut h = harness();
    let s = h.open_envelope(Envelope::GetStatus(GetStatus {}));
    assert_eq!(h.log(s).close_error(), Some("invalid request msg type: *api.GetStatus"));
    let s = h.open_envelope(Envelope::Presence(Presence::default()));
    assert_eq!(h.log(s).close_error(), Some("invalid request msg type: *api.Presence"));
}

#[test]
fn storage_failures_close_with_the_error() {
    let mut h = harness();
    produce(&mut h, "sp", "sg", 1..=2);
    h.kv.set_unavailable(true);
    let s = h.open(Request::ConsumeSegment(seg_req("sp", "sg")));
    assert!(h.log(s).close_error().is_some());
    let s = produce(&mut h, "sp", "other", 1..=2);
    assert!(h.log(s).close_error().is_some());
    h.kv.set_unavailable(false);
    assert_eq!(seqs(&consume_segment(&mut h, seg_req("sp", "sg"))), [1, 2]);
}

#[test]
fn aborted_producer_still_finishes_its_commit_and_notifies() {
    let mut h = harness();
    h.hold_storage = true;
    let s = h.open(produce_req("sp", "sg"));
    h.release_storage();
    h.send(s, record(1));
    h.end(s, StreamEnd::Finished);
    assert_eq!(h.held(), 1);
    h.abort(s);
    h.release_all();
    assert_eq!(h.published.len(), 1);
    assert_eq!(h.node.stream_count(), 0);
    h.hold_storage = false;
    assert_eq!(seqs(&consume_segment(&mut h, seg_req("sp", "sg"))), [1]);
}

#[test]
fn undecodable_record_closes_the_produce_with_the_decoder_error() {
    let mut h = harness();
    let s = h.open(produce_req("sp", "sg"));
    h.send(s, record(1));
    h.send_undecodable(s, "invalid character 'x' looking for beginning of value");
    assert_eq!(h.log(s).close_error(), Some("invalid character 'x' looking for beginning of value"));
    assert!(h.log(s).statuses().is_empty(), "the unfinished chunk is not committed");
    assert_eq!(h.node.stream_count(), 0);
    assert!(consume_segment(&mut h, seg_req("sp", "sg")).is_empty());
}
