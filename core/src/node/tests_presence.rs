//! Worker presence tests: the §9.2 worker-presence scenarios and the Go quirks we fix.

use alloc::vec::Vec;
use uuid::Uuid;

use super::NodeConfig;
use super::harness::NodeHarness;
use crate::api::*;
use crate::stream::{EndReason, StreamEnd, StreamId};
use crate::wire::{Codec, Message};

const A: Uuid = Uuid::from_u128(0xaaaa_aaaa_aaaa_4aaa_8aaa_aaaa_aaaa_aaaa);
const B: Uuid = Uuid::from_u128(0xbbbb_bbbb_bbbb_4bbb_8bbb_bbbb_bbbb_bbbb);

fn workers(worker_id: Uuid, heartbeat_seconds: i64) -> Request {
    Request::SubscribeWorkers(SubscribeWorkers {
        worker_id,
        metadata: Metadata::new(),
        heartbeat_interval_seconds: heartbeat_seconds,
    })
}

fn worker_with(worker_id: Uuid, role: &str) -> Request {
    let mut metadata = Metadata::new();
    metadata.insert("role".into(), role.into());
    Request::SubscribeWorkers(SubscribeWorkers { worker_id, metadata, heartbeat_interval_seconds: 0 })
}

fn observer(h: &mut NodeHarness) -> StreamId {
    h.open(workers(Uuid::nil(), 0))
}

fn renewal(worker_id: Uuid, timestamp: i64) -> Message {
    Message::Envelope(Envelope::Presence(Presence { worker_id, heartbeat: false, timestamp }))
}

/// The worker ids of each inventory a stream received.
fn inventories(h: &NodeHarness, s: StreamId) -> Vec<Vec<Uuid>> {
    h.log(s).inventories().iter().map(|i| i.workers.iter().map(|w| w.worker_id).collect()).collect()
}

fn latest(h: &NodeHarness, s: StreamId) -> WorkerInventory {
    h.log(s).inventories().pop().expect("an inventory")
}

fn harness() -> NodeHarness {
    NodeHarness::new(NodeConfig::default())
}

#[test]
fn observer_sees_a_worker_come_and_go() {
    let mut h = harness();
    let obs = observer(&mut h);
    assert_eq!(inventories(&h, obs), [Vec::<Uuid>::new()]);
    assert_eq!(latest(&h, obs).timestamp, h.now.as_timestamp());
    let w = h.open(workers(A, 0));
    assert_eq!(inventories(&h, obs), [vec![], vec![A]]);
    assert_eq!(inventories(&h, w), [vec![A]], "the worker gets the inventory too");
    h.advance(10);
    h.end(w, StreamEnd::Finished);
    assert_eq!(h.log(w).close_error(), None);
    assert_eq!(inventories(&h, obs), [vec![], vec![A], vec![]]);
    assert_eq!(latest(&h, obs).timestamp, h.now.as_timestamp());
    assert!(h.log(obs).closed.is_none());
}

#[test]
fn inventory_wire_shape() {
    let mut h = harness();
    let obs = observer(&mut h);
    let Message::Envelope(empty) = &h.log(obs).sent[0] else { panic!("not an envelope") };
    let json = Codec::Json.encode_value(empty);
    let expected = alloc::format!(
        r#"{{"$type":"streamkit://api/v1/worker_inventory","content":{{"workers":[],"timestamp":{}}}}}"#,
        h.now.as_timestamp()
    );
    assert_eq!(core::str::from_utf8(&json).unwrap(), expected);
}

#[test]
fn workers_are_sorted_by_raw_id_bytes() {
    let mut h = harness();
    let ids = [
        Uuid::from_u128(0xff << 120),
        Uuid::from_u128(1 << 120),
        Uuid::from_u128(0x80 << 120),
        Uuid::from_u128(7),
    ];
    for id in ids {
        h.open(workers(id, 0));
    }
    let obs = observer(&mut h);
    let mut sorted = ids.to_vec();
    sorted.sort_by_key(|id| *id.as_bytes());
    assert_eq!(inventories(&h, obs), [sorted]);
}

#[test]
fn late_observer_gets_the_current_inventory_then_changes() {
    let mut h = harness();
    h.open(workers(A, 0));
    let obs = observer(&mut h);
    assert_eq!(inventories(&h, obs), [vec![A]]);
    h.open(workers(B, 0));
    assert_eq!(inventories(&h, obs), [vec![A], vec![A, B]]);
}

#[test]
fn slow_observer_keeps_only_the_latest_inventory() {
    let mut h = NodeHarness::new(NodeConfig { stream_credit: 1, ..NodeConfig::default() });
    h.manual_credit = true;
    let obs = observer(&mut h);
    h.open(workers(A, 0));
    h.open(workers(B, 0));
    assert_eq!(inventories(&h, obs), [Vec::<Uuid>::new()]);
    h.credit(obs, 5);
    assert_eq!(inventories(&h, obs), [vec![], vec![A, B]]);
}

#[test]
fn renewal_updates_last_seen_without_fan_out() {
    let mut h = harness();
    let obs = observer(&mut h);
    let w = h.open(workers(A, 10));
    let registered = latest(&h, obs).workers[0].last_seen_at;
    assert_eq!(registered, h.now.as_timestamp());
    h.send(w, renewal(A, 1_717_171_717_171));
    // Heartbeat-flagged presences from the client are ignored; a nil worker id means "this worker".
    h.send(
        w,
        Message::Envelope(Envelope::Presence(Presence { worker_id: A, heartbeat: true, timestamp: 5 })),
    );
    assert_eq!(inventories(&h, obs).len(), 2, "renewals are not fanned out");
    h.open(workers(B, 0));
    assert_eq!(latest(&h, obs).workers[0].last_seen_at, 1_717_171_717_171, "the worker's clock is kept");
    h.advance(50);
    h.send(w, renewal(Uuid::nil(), 0));
    h.end(obs, StreamEnd::Finished);
    let obs = observer(&mut h);
    assert_eq!(latest(&h, obs).workers[0].last_seen_at, h.now.as_timestamp(), "no timestamp means now");
    assert!(h.log(w).closed.is_none());
}

#[test]
fn stale_workers_are_evicted_and_told() {
    let mut h = harness();
    let obs = observer(&mut h);
    let stale = h.open(workers(A, 1)); // renews every second: evicted after 30 s of silence
    let alive = h.open(workers(B, 1));
    for _ in 0..6 {
        h.advance(5000);
        let now = h.now.as_timestamp();
        h.send(alive, renewal(B, now));
    }
    assert!(h.log(stale).closed.is_none(), "30 s is not more than the TTL");
    h.advance(5000);
    assert_eq!(h.log(stale).close_error(), Some("worker presence expired"));
    assert_eq!(inventories(&h, obs).last().unwrap(), &[B]);
    assert!(h.log(alive).closed.is_none());
    assert_eq!(h.node.sv.presence.worker_count(), 1);
    // Without renewals the default interval (30 s) allows 90 s.
    let quiet = h.open(workers(A, 0));
    h.end(alive, StreamEnd::Finished);
    h.advance(90_000);
    assert!(h.log(quiet).closed.is_none());
    h.advance(5000);
    assert_eq!(h.log(quiet).close_error(), Some("worker presence expired"));
    assert_eq!(inventories(&h, obs).last().unwrap(), &Vec::<Uuid>::new());
    // The sweeper stops with the last worker.
    assert_eq!(h.node.poll_timeout(), None);
}

#[test]
fn duplicate_worker_id_replaces_the_registration() {
    let mut h = harness();
    let obs = observer(&mut h);
    let first = h.open(worker_with(A, "v1"));
    let second = h.open(worker_with(A, "v2"));
    assert_eq!(h.log(first).close_error(), Some("worker_id registered by another stream"));
    let inv = latest(&h, obs);
    assert_eq!(inv.workers.len(), 1);
    assert_eq!(inv.workers[0].metadata["role"], "v2");
    let fan_outs = inventories(&h, obs).len();
    // The replaced stream's teardown left the new registration alone (and changed nothing).
    assert_eq!(h.node.sv.presence.worker_count(), 1);
    assert_eq!(inventories(&h, obs).len(), fan_outs);
    h.end(second, StreamEnd::Finished);
    assert_eq!(inventories(&h, obs).last().unwrap(), &Vec::<Uuid>::new());
}

#[test]
fn malformed_renewal_tears_the_worker_down() {
    let mut h = harness();
    let obs = observer(&mut h);
    let w = h.open(workers(A, 0));
    h.send(w, Message::Envelope(Envelope::SegmentStatus(SegmentStatus::default())));
    assert_eq!(
        h.log(w).close_error(),
        Some("unexpected worker presence stream message type: *api.SegmentStatus")
    );
    assert_eq!(inventories(&h, obs), [vec![], vec![A], vec![]]);
}

#[test]
fn renewal_for_another_worker_tears_the_worker_down() {
    let mut h = harness();
    let obs = observer(&mut h);
    let w = h.open(workers(A, 0));
    h.send(w, renewal(B, 5));
    assert_eq!(
        h.log(w).close_error(),
        Some(
            "worker presence renew worker_id mismatch: expected aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa \
             got bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
        )
    );
    assert_eq!(inventories(&h, obs).last().unwrap(), &Vec::<Uuid>::new());
}

#[test]
fn undecodable_renewal_tears_the_worker_down() {
    let mut h = harness();
    let obs = observer(&mut h);
    let w = h.open(workers(A, 0));
    h.send_undecodable(w, "missing $type field in envelope");
    assert_eq!(h.log(w).close_error(), Some("missing $type field in envelope"));
    assert_eq!(inventories(&h, obs).last().unwrap(), &Vec::<Uuid>::new());
    // Observers send nothing; whatever they send is dropped.
    h.send_undecodable(obs, "garbage");
    h.send(obs, renewal(A, 1));
    assert!(h.log(obs).closed.is_none());
}

#[test]
fn non_envelope_message_tears_the_worker_down() {
    let mut h = harness();
    let w = h.open(workers(A, 0));
    h.send(w, Message::Name("x".into()));
    assert_eq!(h.log(w).close_error(), Some("unexpected worker presence stream message type: Name"));
}

#[test]
fn aborted_worker_stream_is_removed() {
    let mut h = harness();
    let obs = observer(&mut h);
    let w = h.open(workers(A, 0));
    h.abort(w);
    assert_eq!(inventories(&h, obs), [vec![], vec![A], vec![]]);
    assert!(h.log(w).closed.is_none(), "nothing is sent on a lost stream");
}

#[test]
fn server_heartbeats_for_workers_that_ask() {
    let mut h = harness();
    let w = h.open(workers(A, 2));
    let beat = Presence { worker_id: A, heartbeat: true, timestamp: h.now.as_timestamp() };
    assert_eq!(h.log(w).presences(), [beat]);
    h.advance(2000);
    h.advance(2000);
    let beats = h.log(w).presences();
    assert_eq!(beats.len(), 3);
    assert_eq!(beats[2].timestamp, h.now.as_timestamp());
    // No heartbeats when not asked for, nor for observers; none after the stream ends.
    let quiet = h.open(workers(B, 0));
    let obs = h.open(workers(Uuid::nil(), 5));
    h.advance(10_000);
    assert!(h.log(quiet).presences().is_empty());
    assert!(h.log(obs).presences().is_empty());
    h.end(w, StreamEnd::Finished);
    let sent = h.log(w).presences().len();
    h.advance(10_000);
    assert_eq!(h.log(w).presences().len(), sent);
}

#[test]
fn shutdown_closes_presence_streams() {
    let mut h = harness();
    let obs = observer(&mut h);
    let w = h.open(workers(A, 1));
    let now = h.now;
    h.node.shutdown(now, EndReason::StoreClosed);
    h.run();
    assert_eq!(h.log(obs).close_error(), Some("store closed"));
    assert_eq!(h.log(w).close_error(), Some("store closed"));
    assert_eq!(h.node.sv.presence.worker_count(), 0);
    assert!(h.node.is_idle());
}

#[test]
fn a_subscriber_that_does_not_read_holds_one_inventory_whatever_the_churn() {
    let mut h = harness();
    h.manual_credit = true;
    let obs = observer(&mut h);
    let ids: Vec<Uuid> = (1..=50u128).map(Uuid::from_u128).collect();
    let streams: Vec<StreamId> = ids.iter().map(|id| h.open(worker_with(*id, "x"))).collect();
    for s in &streams[..10] {
        h.end(*s, StreamEnd::Finished);
    }
    // Sixty changes later, the observer still has only its first inventory in the transport, and every
    // worker stream at most one.
    assert_eq!(inventories(&h, obs), [Vec::<Uuid>::new()]);
    for s in &streams[10..] {
        assert_eq!(h.log(*s).inventories().len(), 1);
    }
    // Once it has left, the next one is the latest: the 40 workers still registered.
    h.credit(obs, 1);
    assert_eq!(inventories(&h, obs).len(), 2);
    assert_eq!(inventories(&h, obs)[1], ids[10..].to_vec());
    h.credit(obs, 1);
    assert_eq!(inventories(&h, obs).len(), 2, "nothing new: nothing sent");
}
