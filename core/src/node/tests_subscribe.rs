//! Subscription and notification tests: the §9.2 subscription scenarios, the notification circuit
//! breaker, and ARCHITECTURE.md invariant 4 as a property.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::NodeConfig;
use super::harness::NodeHarness;
use super::tests::{produce, produce_req, record};
use crate::api::*;
use crate::storage::encoding::SegmentHead;
use crate::storage::{OrderedKv, keys};
use crate::stream::{EndReason, StreamEnd, StreamId};
use crate::time::Millis;

fn subscribe(space: &str, segment: &str, heartbeat_seconds: i64) -> Request {
    Request::SubscribeToSegmentStatus(SubscribeToSegmentStatus {
        space: space.into(),
        segment: segment.into(),
        heartbeat_interval_seconds: heartbeat_seconds,
    })
}

/// A status as another server instance would publish it.
fn remote(space: &str, segment: &str, last: u64) -> SegmentStatus {
    SegmentStatus {
        space: space.into(),
        segment: segment.into(),
        first_sequence: 1,
        first_timestamp: 1,
        last_sequence: last,
        last_timestamp: 1,
        heartbeat: false,
    }
}

/// `(segment, last_sequence)` of every non-heartbeat status a stream got.
fn lasts(h: &NodeHarness, s: StreamId) -> Vec<(String, u64)> {
    h.log(s).data_statuses().into_iter().map(|st| (st.segment, st.last_sequence)).collect()
}

fn seg(name: &str, last: u64) -> (String, u64) {
    (name.into(), last)
}

fn harness() -> NodeHarness {
    NodeHarness::new(NodeConfig::default())
}

fn subscribed_calls(h: &NodeHarness, space: &str) -> (usize, usize) {
    let route = h.route(space);
    let plus = h.bus_calls.iter().filter(|c| **c == format!("+{route}")).count();
    let minus = h.bus_calls.iter().filter(|c| **c == format!("-{route}")).count();
    (plus, minus)
}

#[test]
fn subscribe_without_a_bus_is_refused() {
    let mut h = NodeHarness::new(NodeConfig { bus_configured: false, ..NodeConfig::default() });
    let s = h.open(subscribe("s", "seg", 0));
    assert_eq!(h.log(s).close_error(), Some("the message bus was not configured"));
    assert!(h.bus_calls.is_empty());
}

#[test]
fn heartbeats_at_once_and_every_interval_then_one_unsubscribe() {
    let mut h = harness();
    let s = h.open(subscribe("s", "*", 1));
    assert_eq!(h.log(s).heartbeats(), [SegmentStatus::heartbeat("s", "*")]);
    // (The harness runs timers up to 2 ms early.)
    h.advance(990);
    assert_eq!(h.log(s).heartbeats().len(), 1);
    h.advance(10);
    assert_eq!(h.log(s).heartbeats().len(), 2);
    h.advance(3000);
    assert_eq!(h.log(s).heartbeats().len(), 5);
    // The client unsubscribes (Go sends `mux::close` with `context canceled`).
    h.end(s, StreamEnd::Failed("remote closed stream: context canceled".into()));
    assert_eq!(h.log(s).close_error(), None);
    assert_eq!(subscribed_calls(&h, "s"), (1, 1));
    h.advance(5000);
    assert_eq!(h.log(s).heartbeats().len(), 5, "no heartbeat after the end");
}

#[test]
fn heartbeat_interval_is_clamped() {
    use super::clamp_heartbeat_seconds as clamp;
    assert_eq!(
        [clamp(-5), clamp(0), clamp(1), clamp(300), clamp(301), clamp(3600)],
        [0, 0, 1, 300, 300, 300]
    );
    // Through a stream: 3600 s heartbeats come every 300 s.
    let mut h = harness();
    let s = h.open(subscribe("s", "seg", 3600));
    h.advance(300_000);
    assert_eq!(h.log(s).heartbeats().len(), 2);
    let quiet = h.open(subscribe("s", "seg", 0));
    h.advance(600_000);
    assert!(h.log(quiet).heartbeats().is_empty());
}

#[test]
fn snapshot_waits_until_visible_in_the_space() {
    let mut h = harness();
    produce(&mut h, "s", "seg", 1..=3);
    // An earlier-started write of the same space, in the same millisecond, is still committing.
    h.hold_storage = true;
    let other = h.open(produce_req("s", "seg-b"));
    h.release_storage();
    h.send(other, record(1));
    h.end(other, StreamEnd::Finished);
    assert_eq!(h.held(), 1);
    h.hold_storage = false;
    let s = h.open(subscribe("s", "seg", 0));
    h.advance(100);
    assert!(h.log(s).data_statuses().is_empty(), "the snapshot waits for the write in flight");
    h.release_all();
    let statuses = h.log(s).data_statuses();
    assert_eq!(statuses.len(), 1);
    assert_eq!((statuses[0].segment.as_str(), statuses[0].last_sequence), ("seg", 3));
    assert!(h.log(s).closed.is_none());
}

#[test]
fn snapshot_of_one_segment_has_its_head_and_tail() {
    let mut h = harness();
    produce(&mut h, "s", "seg", [1]);
    let first_ts = h.now.as_timestamp();
    h.advance(200);
    produce(&mut h, "s", "seg", 2..=3);
    let last_ts = h.now.as_timestamp();
    let s = h.open(subscribe("s", "seg", 0));
    let expected = SegmentStatus {
        space: "s".into(),
        segment: "seg".into(),
        first_sequence: 1,
        first_timestamp: first_ts,
        last_sequence: 3,
        last_timestamp: last_ts,
        heartbeat: false,
    };
    assert_eq!(h.log(s).statuses(), [expected]);
    // An empty segment has no snapshot.
    let empty = h.open(subscribe("s", "nothing", 0));
    assert!(h.log(empty).statuses().is_empty());
    assert!(h.log(empty).closed.is_none());
}

#[test]
fn space_snapshot_in_segment_name_order() {
    let mut h = harness();
    produce(&mut h, "s", "seg-b", 1..=7);
    produce(&mut h, "s", "seg-a", 1..=2);
    produce(&mut h, "s10", "seg-0", 1..=1);
    let s = h.open(subscribe("s", "*", 0));
    assert_eq!(lasts(&h, s), [seg("seg-a", 2), seg("seg-b", 7)]);
}

#[test]
fn notifications_during_the_snapshot_are_buffered_then_sent_in_name_order() {
    let mut h = harness();
    produce(&mut h, "s", "seg-a", 1..=2);
    produce(&mut h, "s", "seg-b", 1..=4);
    h.hold_storage = true;
    let s = h.open(subscribe("s", "*", 0));
    assert_eq!(h.held(), 1, "the inventory scan is held");
    h.notify(remote("s", "seg-b", 9));
    h.notify(remote("s", "seg-a", 6));
    h.notify(remote("s", "seg-a", 7));
    assert!(h.log(s).data_statuses().is_empty());
    h.release_all();
    assert_eq!(lasts(&h, s), [seg("seg-a", 2), seg("seg-b", 4), seg("seg-a", 7), seg("seg-b", 9)]);
}

#[test]
fn buffered_statuses_not_newer_than_the_snapshot_are_dropped() {
    let mut h = harness();
    produce(&mut h, "s", "seg-a", 1..=5);
    produce(&mut h, "s", "seg-b", 1..=2);
    h.hold_storage = true;
    let exact = h.open(subscribe("s", "seg-a", 0));
    let wild = h.open(subscribe("s", "*", 0));
    h.notify(remote("s", "seg-a", 3));
    h.notify(remote("s", "seg-a", 5));
    h.notify(remote("s", "seg-b", 1));
    h.notify(remote("s", "seg-b", 3));
    h.release_all();
    assert_eq!(lasts(&h, exact), [seg("seg-a", 5)]);
    assert_eq!(lasts(&h, wild), [seg("seg-a", 5), seg("seg-b", 2), seg("seg-b", 3)]);
}

#[test]
fn live_updates_follow_produces() {
    let mut h = harness();
    let exact = h.open(subscribe("s", "seg-a", 0));
    let wild = h.open(subscribe("s", "*", 0));
    let other_space = h.open(subscribe("t", "*", 0));
    produce(&mut h, "s", "seg-a", 1..=2);
    produce(&mut h, "s", "seg-b", [1]);
    produce(&mut h, "s", "seg-a", [3]);
    assert_eq!(lasts(&h, exact), [seg("seg-a", 2), seg("seg-a", 3)]);
    assert_eq!(lasts(&h, wild), [seg("seg-a", 2), seg("seg-b", 1), seg("seg-a", 3)]);
    assert!(lasts(&h, other_space).is_empty());
}

#[test]
fn notifications_of_another_store_are_ignored() {
    let mut h = harness();
    let s = h.open(subscribe("s", "*", 0));
    let route = h.route("s");
    let notification =
        SegmentNotification { store_id: uuid::Uuid::from_u128(99), segment_status: remote("s", "x", 4) };
    let now = h.now;
    h.node.handle_bus(now, super::BusEvent::Notification { route, notification });
    h.run();
    assert!(lasts(&h, s).is_empty());
}

#[test]
fn a_subscriber_never_goes_backwards() {
    let mut h = harness();
    produce(&mut h, "s", "seg", 1..=5);
    let s = h.open(subscribe("s", "seg", 0));
    h.notify(remote("s", "seg", 4));
    h.notify(remote("s", "seg", 5));
    h.notify(remote("s", "seg", 7));
    h.notify(remote("s", "seg", 6));
    h.notify(remote("s", "seg", 7));
    h.notify(remote("s", "seg", 8));
    assert_eq!(lasts(&h, s), [seg("seg", 5), seg("seg", 7), seg("seg", 8)]);
}

#[test]
fn slow_subscriber_coalesces_without_blocking() {
    let mut h =
        NodeHarness::new(NodeConfig { subscription_queue: 1, stream_credit: 1, ..NodeConfig::default() });
    h.manual_credit = true;
    let s = h.open(subscribe("s", "seg", 0));
    for last in 1..=100 {
        h.notify(remote("s", "seg", last));
    }
    assert_eq!(lasts(&h, s), [seg("seg", 1)], "only what credit allowed went out");
    h.credit(s, 1);
    assert_eq!(lasts(&h, s), [seg("seg", 1), seg("seg", 100)]);
    assert!(h.log(s).closed.is_none());
}

#[test]
fn overloaded_subscriber_is_closed_with_the_reason() {
    let mut h =
        NodeHarness::new(NodeConfig { subscription_queue: 2, stream_credit: 1, ..NodeConfig::default() });
    h.manual_credit = true;
    let s = h.open(subscribe("s", "*", 0));
    h.notify(remote("s", "seg-a", 1)); // sent
    h.notify(remote("s", "seg-b", 1)); // queued
    h.notify(remote("s", "seg-c", 1)); // queued
    h.notify(remote("s", "seg-b", 2)); // coalesced
    assert!(h.log(s).closed.is_none());
    h.notify(remote("s", "seg-d", 1)); // nothing to coalesce with
    assert_eq!(h.log(s).close_error(), Some("subscription send queue overloaded"));
    assert_eq!(subscribed_calls(&h, "s"), (1, 1));
}

#[test]
fn overloaded_while_buffering_the_snapshot() {
    let mut h = NodeHarness::new(NodeConfig { subscription_queue: 2, ..NodeConfig::default() });
    h.hold_storage = true;
    let s = h.open(subscribe("s", "*", 0));
    h.notify(remote("s", "a", 1));
    h.notify(remote("s", "b", 1));
    h.notify(remote("s", "a", 2));
    assert!(h.log(s).closed.is_none());
    h.notify(remote("s", "c", 1));
    assert_eq!(h.log(s).close_error(), Some("subscription send queue overloaded"));
    h.release_all();
    assert_eq!(subscribed_calls(&h, "s"), (1, 1));
}

#[test]
fn one_bus_subscription_per_space_unsubscribed_after_the_last_subscriber() {
    let mut h = harness();
    let a = h.open(subscribe("s", "seg-a", 0));
    let b = h.open(subscribe("s", "seg-b", 0));
    assert_eq!(subscribed_calls(&h, "s"), (1, 0));
    produce(&mut h, "s", "seg-a", [1]);
    produce(&mut h, "s", "seg-b", 1..=2);
    assert_eq!(lasts(&h, a), [seg("seg-a", 1)]);
    assert_eq!(lasts(&h, b), [seg("seg-b", 2)]);
    h.end(a, StreamEnd::Finished);
    assert_eq!(subscribed_calls(&h, "s"), (1, 0));
    h.end(b, StreamEnd::Finished);
    assert_eq!(subscribed_calls(&h, "s"), (1, 1));
    assert!(!h.is_subscribed("s"));
    // A new subscriber subscribes again.
    let c = h.open(subscribe("s", "seg-a", 0));
    assert_eq!(subscribed_calls(&h, "s"), (2, 1));
    assert_eq!(lasts(&h, c), [seg("seg-a", 1)]);
}

#[test]
fn notifications_reach_wildcard_and_exact_subscribers() {
    let mut h = harness();
    let exact = h.open(subscribe("s", "seg-a", 0));
    let wild = h.open(subscribe("s", "*", 0));
    h.notify(remote("s", "seg-a", 1));
    h.notify(remote("s", "seg-b", 2));
    assert_eq!(lasts(&h, exact), [seg("seg-a", 1)]);
    assert_eq!(lasts(&h, wild), [seg("seg-a", 1), seg("seg-b", 2)]);
    h.abort(exact);
    h.end(wild, StreamEnd::Finished);
    assert_eq!(subscribed_calls(&h, "s"), (1, 1));
}

#[test]
fn failed_bus_subscribe_closes_the_subscriber_and_the_next_one_retries() {
    let mut h = harness();
    h.subscribe_error = Some("nats: no servers available".into());
    let s = h.open(subscribe("s", "seg", 1));
    assert_eq!(h.log(s).close_error(), Some("failed to connect to the message bus"));
    assert!(h.log(s).statuses().is_empty(), "no heartbeat before the subscription exists");
    assert_eq!(subscribed_calls(&h, "s"), (1, 0), "nothing to unsubscribe");
    h.subscribe_error = None;
    let again = h.open(subscribe("s", "seg", 0));
    assert_eq!(subscribed_calls(&h, "s"), (2, 0));
    produce(&mut h, "s", "seg", [1]);
    assert_eq!(lasts(&h, again), [seg("seg", 1)]);
}

#[test]
fn subscribers_waiting_for_the_bus_share_its_answer() {
    let mut h = harness();
    produce(&mut h, "s", "seg", 1..=2);
    h.hold_subscribes = true;
    let a = h.open(subscribe("s", "seg", 0));
    let b = h.open(subscribe("s", "*", 0));
    assert_eq!(h.held_subscribes(), 1);
    assert!(h.log(a).statuses().is_empty() && h.log(b).statuses().is_empty());
    h.release_subscribes();
    assert_eq!(lasts(&h, a), [seg("seg", 2)]);
    assert_eq!(lasts(&h, b), [seg("seg", 2)]);
    h.subscribe_error = Some("down".into());
    let c = h.open(subscribe("t", "x", 0));
    let d = h.open(subscribe("t", "*", 0));
    h.release_subscribes();
    assert_eq!(h.log(c).close_error(), Some("failed to connect to the message bus"));
    assert_eq!(h.log(d).close_error(), Some("failed to connect to the message bus"));
}

#[test]
fn leaving_before_the_bus_answers_unsubscribes_once_it_does() {
    let mut h = harness();
    h.hold_subscribes = true;
    let s = h.open(subscribe("s", "seg", 0));
    h.end(s, StreamEnd::Finished);
    assert_eq!(h.log(s).close_error(), None);
    assert_eq!(subscribed_calls(&h, "s"), (1, 0));
    h.release_subscribes();
    assert_eq!(subscribed_calls(&h, "s"), (1, 1));
    assert!(!h.is_subscribed("s"));
}

#[test]
fn a_lost_route_closes_its_subscribers_with_the_error() {
    let mut h = harness();
    let a = h.open(subscribe("s", "seg", 0));
    let b = h.open(subscribe("s", "*", 0));
    let other = h.open(subscribe("t", "*", 0));
    h.lose_route("s", "bus connection lost");
    assert_eq!(h.log(a).close_error(), Some("bus connection lost"));
    assert_eq!(h.log(b).close_error(), Some("bus connection lost"));
    assert!(h.log(other).closed.is_none());
    // The route counts as gone: nothing is unsubscribed, and the next subscriber subscribes again.
    assert_eq!(subscribed_calls(&h, "s"), (1, 0));
    let again = h.open(subscribe("s", "seg", 0));
    assert_eq!(subscribed_calls(&h, "s"), (2, 0));
    h.end(again, StreamEnd::Finished);
    assert_eq!(subscribed_calls(&h, "s"), (2, 1));
}

#[test]
fn snapshot_of_a_large_space_follows_send_credit() {
    let mut h = NodeHarness::new(NodeConfig { read_batch: 2, stream_credit: 3, ..NodeConfig::default() });
    for i in 0..10 {
        produce(&mut h, "s", &format!("seg-{i}"), 1..=(i + 1));
    }
    h.manual_credit = true;
    let s = h.open(subscribe("s", "*", 0));
    assert_eq!(lasts(&h, s).len(), 3);
    assert_eq!(h.node.sv.io.pending_effects(), 0, "no read ahead of the credit");
    h.credit(s, 1);
    assert_eq!(lasts(&h, s).len(), 4);
    h.credit(s, 100);
    let expected: Vec<(String, u64)> = (0..10).map(|i| (format!("seg-{i}"), i + 1)).collect();
    assert_eq!(lasts(&h, s), expected);
}

#[test]
fn aborted_and_shut_down_subscribers_leave_their_routers() {
    let mut h = harness();
    let a = h.open(subscribe("s", "seg", 0));
    h.abort(a);
    assert_eq!(subscribed_calls(&h, "s"), (1, 1));
    assert_eq!(h.node.sv.subscriptions.len(), 0);
    let b = h.open(subscribe("s", "*", 1));
    let c = h.open(subscribe("u", "x", 0));
    let now = h.now;
    h.node.shutdown(now, EndReason::StoreClosed);
    h.run();
    assert_eq!(h.log(b).close_error(), Some("store closed"));
    assert_eq!(h.log(c).close_error(), Some("store closed"));
    assert_eq!(subscribed_calls(&h, "s"), (2, 2));
    assert_eq!(subscribed_calls(&h, "u"), (1, 1));
    assert!(h.node.is_idle());
}

#[test]
fn messages_from_a_subscriber_are_dropped() {
    let mut h = harness();
    let s = h.open(subscribe("s", "seg", 0));
    h.send(s, record(1));
    h.send_undecodable(s, "invalid character 'x'");
    assert!(h.log(s).closed.is_none());
    h.notify(remote("s", "seg", 1));
    assert_eq!(lasts(&h, s), [seg("seg", 1)]);
}

#[test]
fn notification_circuit_opens_after_repeated_bus_failures() {
    let mut h = NodeHarness::new(NodeConfig {
        notify_failure_threshold: 2,
        notify_open_window: Millis::from_secs(3600),
        ..NodeConfig::default()
    });
    h.bus_error = Some("notify failed".into());
    let first = produce(&mut h, "s", "seg", [1]);
    assert_eq!(h.log(first).close_error(), None, "a failure below the threshold is tolerated");
    assert_eq!((h.publish_attempts, h.node.notify_failures()), (1, 1));
    let second = produce(&mut h, "s", "seg", [2]);
    assert_eq!(
        h.log(second).close_error(),
        Some(
            "segment notification circuit open after 2 consecutive failures; retry after 1h0m0s: notify failed"
        )
    );
    assert_eq!(h.log(second).statuses().len(), 1, "the status was sent before the failure");
    assert_eq!(h.publish_attempts, 2);
    h.bus_error = None;
    h.advance(1000);
    let third = produce(&mut h, "s", "seg", [3]);
    assert_eq!(h.log(third).close_error(), Some("segment notification circuit open: retry after 59m59s"));
    assert_eq!(h.publish_attempts, 2, "an open circuit fails fast without publishing");
    assert_eq!(h.log(third).statuses().len(), 1);
    h.advance(3_600_000);
    let fourth = produce(&mut h, "s", "seg", [4]);
    assert_eq!(h.log(fourth).close_error(), None);
    assert_eq!((h.publish_attempts, h.node.notify_failures()), (3, 0));
    assert_eq!(h.published.len(), 1);
    // Every record was committed regardless.
    let s = h.open(Request::ConsumeSegment(ConsumeSegment {
        space: "s".into(),
        segment: "seg".into(),
        ..ConsumeSegment::default()
    }));
    assert_eq!(h.log(s).entries().len(), 4);
}

#[test]
fn a_successful_publish_resets_the_failure_count() {
    let mut h = NodeHarness::new(NodeConfig { notify_failure_threshold: 2, ..NodeConfig::default() });
    h.bus_error = Some("flaky".into());
    produce(&mut h, "s", "seg", [1]);
    h.bus_error = None;
    produce(&mut h, "s", "seg", [2]);
    assert_eq!(h.node.notify_failures(), 0);
    h.bus_error = Some("flaky".into());
    let s = produce(&mut h, "s", "seg", [3]);
    assert_eq!(h.log(s).close_error(), None);
}

// ---------------------------------------------------------------------------------------------------
// Invariant 4 under random interleavings.

mod invariant {
    use super::*;
    use proptest::prelude::*;

    const SEGMENTS: [&str; 3] = ["a", "b", "c"];

    #[derive(Clone, Debug)]
    enum Action {
        /// A producer appends `records` records to a segment (from what storage says its head is).
        Produce { segment: usize, records: u64 },
        /// A subscriber to one segment, or to `*`.
        Subscribe { segment: Option<usize>, heartbeat: bool },
        /// Gives send credit to a subscriber.
        Credit { subscriber: usize, frames: u32 },
        /// Starts or stops holding storage effects.
        Hold(bool),
        /// Completes the oldest held storage effect.
        ReleaseOldest,
        /// Completes the newest held storage effect.
        ReleaseNewest,
        /// Lets time pass.
        Advance(u64),
        /// Another server instance republishes a segment's status, `behind` sequences old.
        Remote { segment: usize, behind: u64 },
        /// A subscriber leaves.
        Leave { subscriber: usize },
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            4 => (0..SEGMENTS.len(), 1..4u64).prop_map(|(segment, records)| Action::Produce { segment, records }),
            2 => (proptest::option::of(0..SEGMENTS.len()), any::<bool>())
                .prop_map(|(segment, heartbeat)| Action::Subscribe { segment, heartbeat }),
            3 => (0..8usize, 1..4u32).prop_map(|(subscriber, frames)| Action::Credit { subscriber, frames }),
            1 => any::<bool>().prop_map(Action::Hold),
            3 => Just(Action::ReleaseOldest),
            1 => Just(Action::ReleaseNewest),
            1 => (0..1500u64).prop_map(Action::Advance),
            1 => (0..SEGMENTS.len(), 0..3u64).prop_map(|(segment, behind)| Action::Remote { segment, behind }),
            1 => (0..8usize).prop_map(|subscriber| Action::Leave { subscriber }),
        ]
    }

    fn head(h: &NodeHarness, segment: &str) -> Option<SegmentHead> {
        let bytes = h.kv.get(&keys::segment_status("sp", segment)).ok()??;
        SegmentHead::decode(&bytes).ok()
    }

    struct Subscriber {
        stream: StreamId,
        segment: Option<usize>,
        left: bool,
    }

    fn run(actions: Vec<Action>) -> Result<(), TestCaseError> {
        let mut h = NodeHarness::new(NodeConfig { stream_credit: 2, read_batch: 2, ..NodeConfig::default() });
        h.manual_credit = true;
        let mut subscribers: Vec<Subscriber> = Vec::new();
        for action in actions {
            match action {
                Action::Produce { segment, records } => {
                    let name = SEGMENTS[segment];
                    let next = head(&h, name).map_or(0, |hd| hd.last_sequence) + 1;
                    produce(&mut h, "sp", name, next..next + records);
                }
                Action::Subscribe { segment, heartbeat } => {
                    let name = segment.map_or("*", |i| SEGMENTS[i]);
                    let stream = h.open(subscribe("sp", name, i64::from(heartbeat)));
                    subscribers.push(Subscriber { stream, segment, left: false });
                }
                Action::Credit { subscriber, frames } => {
                    if let Some(sub) = subscribers.get(subscriber) {
                        h.credit(sub.stream, frames);
                    }
                }
                Action::Hold(hold) => h.hold_storage = hold,
                Action::ReleaseOldest => h.release_storage(),
                Action::ReleaseNewest => h.release_newest_storage(),
                Action::Advance(ms) => h.advance(ms),
                Action::Remote { segment, behind } => {
                    let name = SEGMENTS[segment];
                    if let Some(hd) = head(&h, name) {
                        let last = hd.last_sequence.saturating_sub(behind).max(1);
                        h.notify(remote("sp", name, last));
                    }
                }
                Action::Leave { subscriber } => {
                    if let Some(sub) = subscribers.get_mut(subscriber) {
                        if !sub.left && h.log(sub.stream).closed.is_none() {
                            h.end(sub.stream, StreamEnd::Finished);
                        }
                        sub.left = true;
                    }
                }
            }
        }
        // Let everything finish and every subscriber drain.
        h.hold_storage = false;
        h.release_all();
        h.advance(10);
        for _ in 0..4 {
            for sub in &subscribers {
                h.credit(sub.stream, 10_000);
            }
        }
        let finals: BTreeMap<&str, u64> =
            SEGMENTS.iter().filter_map(|s| head(&h, s).map(|hd| (*s, hd.last_sequence))).collect();
        for sub in &subscribers {
            let log = h.log(sub.stream);
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            for status in log.data_statuses() {
                let previous = seen.insert(status.segment.clone(), status.last_sequence);
                prop_assert!(
                    previous.is_none_or(|p| p < status.last_sequence),
                    "{:?} went from {previous:?} to {} on {}",
                    sub.stream,
                    status.last_sequence,
                    status.segment
                );
                if let Some(i) = sub.segment {
                    prop_assert_eq!(status.segment.as_str(), SEGMENTS[i]);
                }
            }
            if sub.left {
                continue;
            }
            prop_assert!(log.closed.is_none(), "{:?} was dropped: {:?}", sub.stream, log.closed);
            for (segment, last) in &finals {
                if sub.segment.is_some_and(|i| SEGMENTS[i] != *segment) {
                    continue;
                }
                prop_assert_eq!(
                    seen.get(*segment),
                    Some(last),
                    "{:?} missed the end of {}",
                    sub.stream,
                    segment
                );
            }
        }
        prop_assert_eq!(h.node.sv.io.pending_effects(), 0);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn subscribers_never_go_backwards_and_never_miss_the_end(
            actions in proptest::collection::vec(action(), 1..60)
        ) {
            run(actions)?;
        }
    }
}
