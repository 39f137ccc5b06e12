//! Store quotas at the node: a producer over a rate keeps what it sent before the refusal, a store at
//! its storage quota takes nothing more, and the refusals are reported.

use alloc::vec;
use alloc::vec::Vec;

use super::harness::NodeHarness;
use super::quota::{QuotaConfig, QuotaKind, StoreQuotas};
use super::tests::{produce_req, record};
use super::{NodeConfig, Refusal};
use crate::api::*;
use crate::stream::StreamEnd;

fn harness(quotas: StoreQuotas) -> NodeHarness {
    let quotas = QuotaConfig { default: quotas, ..QuotaConfig::default() };
    NodeHarness::new(NodeConfig { quotas, ..NodeConfig::default() })
}

fn last_sequence(h: &NodeHarness, s: crate::stream::StreamId) -> Option<u64> {
    h.log(s).statuses().last().map(|s| s.last_sequence)
}

#[test]
fn a_producer_over_the_record_rate_keeps_what_it_sent_before() {
    let mut h = harness(StoreQuotas { max_records_per_second: Some(5), ..StoreQuotas::default() });
    let s = h.open(produce_req("space", "seg"));
    for seq in 1..=8 {
        h.send(s, record(seq));
    }
    h.end(s, StreamEnd::Finished);
    assert_eq!(last_sequence(&h, s), Some(5), "the five records within the rate are committed");
    assert_eq!(h.log(s).close_error(), Some("store produce rate exceeded (5 records/s)"));
    assert_eq!(h.refusals, vec![Refusal::Quota(QuotaKind::RecordRate)]);
    // A second later the rate has room again.
    h.advance(1_000);
    let s = h.open(produce_req("space", "seg"));
    for seq in 6..=10 {
        h.send(s, record(seq));
    }
    h.end(s, StreamEnd::Finished);
    assert_eq!((last_sequence(&h, s), h.log(s).close_error()), (Some(10), None));
}

#[test]
fn a_store_at_its_storage_quota_takes_nothing_more() {
    let mut h = harness(StoreQuotas { max_stored_bytes: Some(1), ..StoreQuotas::default() });
    // Empty when measured: the first produce goes through.
    let s = h.open(produce_req("space", "seg"));
    h.send(s, record(1));
    h.end(s, StreamEnd::Finished);
    assert_eq!((last_sequence(&h, s), h.log(s).close_error()), (Some(1), None));
    let stored = h.kv.len();
    let s = h.open(produce_req("space", "seg"));
    h.send(s, record(2));
    h.end(s, StreamEnd::Finished);
    assert_eq!(h.log(s).close_error(), Some("store storage quota exceeded (1 bytes)"));
    assert!(h.log(s).statuses().is_empty());
    assert_eq!(h.kv.len(), stored, "nothing more was written, nothing was removed");
    assert_eq!(h.refusals, vec![Refusal::Quota(QuotaKind::StoredBytes)]);
    // Reads still work.
    let request =
        ConsumeSegment { space: "space".into(), segment: "seg".into(), ..ConsumeSegment::default() };
    let read = h.open(Request::ConsumeSegment(request));
    assert_eq!(h.log(read).entries().iter().map(|e| e.sequence).collect::<Vec<_>>(), [1]);
}

#[test]
fn the_byte_rate_counts_payload_bytes_and_stores_may_have_their_own_quotas() {
    let limited = StoreQuotas { max_bytes_per_second: Some(25), ..StoreQuotas::default() };
    let mut h = harness(limited);
    let s = h.open(produce_req("space", "seg"));
    // `test data N` is 11 bytes: two fit in 25 bytes, the third does not.
    for seq in 1..=3 {
        h.send(s, record(seq));
    }
    h.end(s, StreamEnd::Finished);
    assert_eq!(last_sequence(&h, s), Some(2));
    assert_eq!(h.log(s).close_error(), Some("store produce rate exceeded (25 bytes/s)"));

    let store = h.node.store_id();
    let quotas = QuotaConfig { default: limited, stores: [(store, StoreQuotas::default())].into() };
    let mut h = NodeHarness::new(NodeConfig { quotas, ..NodeConfig::default() });
    let s = h.open(produce_req("space", "seg"));
    for seq in 1..=3 {
        h.send(s, record(seq));
    }
    h.end(s, StreamEnd::Finished);
    assert_eq!((last_sequence(&h, s), h.log(s).close_error()), (Some(3), None), "this store has no quota");
}
