//! Send credit in bytes: a stream of large entries holds about its byte credit in the transport, and a
//! scan never reads much more than the stream may send.

use alloc::vec;
use alloc::vec::Vec;

use super::NodeConfig;
use super::harness::NodeHarness;
use super::tests::produce_req;
use crate::api::*;
use crate::storage::StorageOp;
use crate::stream::StreamEnd;
use crate::wire::Message;

const ENTRY_BYTES: usize = 40_000;
const CREDIT_BYTES: usize = 100_000;

fn filled(entries: u64) -> NodeHarness {
    let mut h = NodeHarness::new(NodeConfig { stream_credit_bytes: CREDIT_BYTES, ..NodeConfig::default() });
    let s = h.open(produce_req("space", "seg"));
    for seq in 1..=entries {
        h.send(s, Message::Record(Record::new(seq, vec![7u8; ENTRY_BYTES])));
    }
    h.end(s, StreamEnd::Finished);
    assert_eq!(h.log(s).close_error(), None);
    h
}

#[test]
fn large_entries_are_sent_within_the_byte_credit() {
    let mut h = filled(20);
    h.manual_credit = true;
    let request =
        ConsumeSegment { space: "space".into(), segment: "seg".into(), ..ConsumeSegment::default() };
    let s = h.open(Request::ConsumeSegment(request));
    let one = Message::Entry(h.log(s).entries()[0].clone()).footprint() as u64;
    let mut received = 0;
    loop {
        let sent = h.log(s).entries().len();
        let outstanding = h.unacked_bytes(s);
        // The byte credit, plus at most the entry that crossed it.
        assert!(outstanding < CREDIT_BYTES as u64 + one, "{outstanding} bytes outstanding");
        assert!(sent - received <= 3, "{} entries outstanding", sent - received);
        if h.log(s).closed.is_some() || sent == 20 {
            break;
        }
        h.credit(s, (sent - received) as u32);
        received = sent;
    }
    assert_eq!(
        h.log(s).entries().iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
}

#[test]
fn scans_ask_for_no_more_than_the_byte_credit() {
    let mut h = filled(10);
    h.hold_storage = true;
    h.manual_credit = true;
    let request =
        ConsumeSegment { space: "space".into(), segment: "seg".into(), ..ConsumeSegment::default() };
    let s = h.open(Request::ConsumeSegment(request));
    let Some(StorageOp::Scan(range)) = h.held_requests().first().copied().cloned() else {
        panic!("a scan is requested")
    };
    assert_eq!(range.max_bytes, CREDIT_BYTES);
    h.release_storage();
    // 100,000 bytes of credit: three 40 KB entries (the third crosses it) in the first scan.
    assert_eq!(h.log(s).entries().len(), 3);
    assert_eq!(h.held(), 0, "no credit left: nothing more is read");
    h.credit(s, 1);
    let Some(StorageOp::Scan(range)) = h.held_requests().first().copied().cloned() else {
        panic!("credit resumes the read")
    };
    assert!(range.max_bytes < CREDIT_BYTES, "only the returned credit: {}", range.max_bytes);
}

#[test]
fn a_producer_releases_its_records_when_their_chunk_is_committed_and_commits_early_under_pressure() {
    let mut h = NodeHarness::new(NodeConfig::default());
    let s = h.open(produce_req("space", "seg"));
    let records: Vec<Message> =
        (1..=5).map(|seq| Message::Record(Record::new(seq, vec![1u8; 100]))).collect();
    let footprint: u64 = records.iter().map(|m| m.footprint() as u64).sum();
    for record in records {
        h.send(s, record);
    }
    assert!(h.log(s).statuses().is_empty(), "a chunk waits for 10,000 records or the end of the input");
    assert_eq!(h.released_input.get(&s), None, "the records are held");
    h.pressure(s);
    let statuses = h.log(s).statuses();
    assert_eq!(statuses.iter().map(|s| s.last_sequence).collect::<Vec<_>>(), [5], "committed early");
    assert_eq!(h.released_input.get(&s), Some(&footprint));
    assert!(h.log(s).closed.is_none(), "the stream goes on");
    h.send(s, Message::Record(Record::new(6, "x")));
    h.end(s, StreamEnd::Finished);
    assert_eq!(h.log(s).statuses().last().map(|s| s.last_sequence), Some(6));
    assert_eq!(h.log(s).close_error(), None);
}
