//! Request limits at the node: every refusal is answered with its exact text before anything is stored,
//! and reported for metrics.

use alloc::string::{String, ToString};
use alloc::vec;

use super::harness::NodeHarness;
use super::tests::{produce_req, record};
use super::{NodeConfig, Refusal};
use crate::api::*;
use crate::lexkey::LexKey;
use crate::limits::{LimitKind, RequestLimits};
use crate::stream::StreamEnd;
use crate::wire::Message;

fn harness() -> NodeHarness {
    let limits = RequestLimits {
        max_name_bytes: 8,
        max_metadata_entries: 4,
        max_metadata_bytes: 64,
        max_worker_metadata_bytes: 16,
        max_consume_spaces: 2,
        max_inventory_bytes: 200,
    };
    NodeHarness::new(NodeConfig { limits, ..NodeConfig::default() })
}

fn long() -> String {
    "n".repeat(9)
}

#[test]
fn long_names_are_refused_before_anything_is_stored() {
    let mut h = harness();
    let s = h.open(produce_req(&long(), "seg"));
    h.send(s, record(1));
    h.end(s, StreamEnd::Finished);
    assert_eq!(h.log(s).close_error(), Some("space exceeds maximum of 8 bytes"));
    assert!(h.log(s).statuses().is_empty());
    let s = h.open(produce_req("space", &long()));
    assert_eq!(h.log(s).close_error(), Some("segment exceeds maximum of 8 bytes"));
    let peek = h.open(Request::Peek(Peek { space: long(), segment: "s".into() }));
    assert_eq!(h.log(peek).close_error(), Some("space exceeds maximum of 8 bytes"));
    let list = h.open(Request::GetSegments(GetSegments { space: long() }));
    assert_eq!(h.log(list).close_error(), Some("space exceeds maximum of 8 bytes"));
    let subscribe = h.open(Request::SubscribeToSegmentStatus(SubscribeToSegmentStatus {
        space: "space".into(),
        segment: long(),
        heartbeat_interval_seconds: 0,
    }));
    assert_eq!(h.log(subscribe).close_error(), Some("segment exceeds maximum of 8 bytes"));
    assert!(h.kv.is_empty(), "nothing was written");
    assert_eq!(h.refusals, vec![Refusal::Limit(LimitKind::Name); 5]);
}

#[test]
fn lease_fields_are_refused_like_go_validation_errors() {
    let mut h = harness();
    let s = h.open(Request::LeaseAcquire(LeaseAcquire { key: long(), holder: "h".into(), ttl_seconds: 5 }));
    assert_eq!(h.log(s).lease_results(), vec![LeaseResult::refused("lease key exceeds maximum of 8 bytes")]);
    assert_eq!(h.log(s).close_error(), None);
    let s = h.open(Request::LeaseRelease(LeaseRelease { key: "k".into(), holder: long() }));
    assert_eq!(
        h.log(s).lease_results(),
        vec![LeaseResult::refused("lease holder exceeds maximum of 8 bytes")]
    );
    assert!(h.node.leases().is_empty());
    assert_eq!(h.refusals, vec![Refusal::Limit(LimitKind::LeaseField); 2]);
}

#[test]
fn record_metadata_over_the_limit_fails_the_produce_and_keeps_earlier_chunks() {
    let mut h = NodeHarness::new(NodeConfig {
        produce_chunk_records: 2,
        limits: RequestLimits { max_metadata_entries: 4, max_metadata_bytes: 64, ..RequestLimits::default() },
        ..NodeConfig::default()
    });
    let s = h.open(produce_req("space", "seg"));
    h.send(s, record(1));
    h.send(s, record(2));
    let mut fat = Record::new(3, "x");
    for i in 0..5 {
        fat.metadata.insert(i.to_string(), "v".into());
    }
    h.send(s, Message::Record(fat));
    h.send(s, record(4));
    h.end(s, StreamEnd::Finished);
    assert_eq!(h.log(s).close_error(), Some("record metadata exceeds maximum of 4 entries"));
    let statuses = h.log(s).statuses();
    assert_eq!(statuses.last().map(|s| s.last_sequence), Some(2), "the first chunk stays committed");

    let s = h.open(produce_req("space", "seg"));
    h.send(s, Message::Record(Record::new(3, "x").with_metadata("k", "v".repeat(64))));
    h.end(s, StreamEnd::Finished);
    assert_eq!(h.log(s).close_error(), Some("record metadata exceeds maximum of 64 bytes"));
    assert_eq!(h.refusals, vec![Refusal::Limit(LimitKind::RecordMetadata); 2]);
}

#[test]
fn worker_metadata_and_consume_spaces_are_limited() {
    let mut h = harness();
    let mut metadata = Metadata::new();
    metadata.insert("host".into(), "a-rather-long-hostname".into());
    let worker = h.open(Request::SubscribeWorkers(SubscribeWorkers {
        worker_id: uuid::Uuid::from_u128(9),
        metadata,
        heartbeat_interval_seconds: 0,
    }));
    assert_eq!(h.log(worker).close_error(), Some("worker metadata exceeds maximum of 16 bytes"));
    assert!(h.log(worker).inventories().is_empty(), "a refused worker never joins the inventory");

    let offsets = ["a", "b", "c"].iter().map(|s| (s.to_string(), LexKey::default())).collect();
    let consume = h.open(Request::Consume(Consume { offsets, ..Consume::default() }));
    assert_eq!(h.log(consume).close_error(), Some("consume exceeds maximum of 2 spaces"));
    assert_eq!(
        h.refusals,
        vec![Refusal::Limit(LimitKind::WorkerMetadata), Refusal::Limit(LimitKind::ConsumeSpaces)]
    );
}

#[test]
fn the_workers_of_a_store_are_bounded_in_bytes() {
    let mut h = harness();
    let worker = |id: u128, value: &str| {
        let mut metadata = Metadata::new();
        metadata.insert("k".into(), value.into());
        Request::SubscribeWorkers(SubscribeWorkers {
            worker_id: uuid::Uuid::from_u128(id),
            metadata,
            heartbeat_interval_seconds: 0,
        })
    };
    // 64 + 3 bytes each: two fit in 200 bytes, a third does not.
    let first = h.open(worker(1, "ab"));
    let second = h.open(worker(2, "ab"));
    let third = h.open(worker(3, "ab"));
    assert!(h.log(first).closed.is_none() && h.log(second).closed.is_none());
    assert_eq!(h.log(third).close_error(), Some("worker inventory exceeds maximum of 200 bytes"));
    // Re-registering an id replaces its entry rather than adding one.
    let again = h.open(worker(2, "abc"));
    assert!(h.log(again).closed.is_none());
    // Once a worker left, there is room again.
    h.end(first, StreamEnd::Finished);
    let fourth = h.open(worker(4, "ab"));
    assert!(h.log(fourth).closed.is_none());
    assert_eq!(h.refusals, vec![Refusal::Limit(LimitKind::WorkerInventory)]);
}
