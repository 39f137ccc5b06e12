//! PROTOCOL.md §9.1: every scenario of the Go integration tests (`test/*_integration_test.go`), with the exact
//! expectations written there, in every configuration. Where Go observes something through its handler
//! API that a Rust `Stream` expresses differently (an unsubscribed handler, a cancelled context), the
//! scenario checks the equivalent on the server (its stream and subscription counts).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::{Either, join, join_all, select};
use streamkit::client::{ErrorKind, SubscribeOptions, WorkerOptions};
use streamkit::core::api::{Entry, Metadata, SegmentStatus, WorkerInventory};
use streamkit::core::lexkey::LexKey;
use streamkit::runtime::RuntimeExt;
use streamkit_tests::{Env, collect, collect_ok, consumer_records, high_volume_records};
use uuid::Uuid;

use super::common::*;

across_all!(
    multiplexed_peeks_of_a_fresh_store,
    produce_acknowledges_each_segment_once,
    concurrent_producers_leave_exactly_one_to_n,
    large_records_are_chunked_and_read_back,
    consume_segment_sequence_bounds_are_inclusive,
    consumer_operations,
    high_volume_read_write,
    fresh_store_inventory_is_empty,
    missing_segment_reads_are_empty,
    second_lease_holder_refused_until_release,
    lease_ends_when_the_caller_cancels,
    publish_persists_payload_and_metadata,
    consume_stops_when_cancelled,
    segment_subscription_snapshot_then_live,
    wildcard_subscription_sees_every_segment,
    sequential_produces_get_distinct_trx_ids,
    four_concurrent_producers_leave_exactly_one_to_twenty_five,
    trx_numbers_increase_per_batch,
    worker_presence_fans_out_to_observers,
    worker_presence_is_isolated_per_store,
);

/// core/TestShouldAllowMultiplexedCallsWhenUsingDifferentSegments: three concurrent peeks over one
/// client on a fresh store each return exactly `Entry{space, segment}`, every other field zero.
async fn multiplexed_peeks_of_a_fresh_store(env: Env) {
    let client = env.client();
    let store = env.store();
    let peeks =
        join_all(["segment0", "segment1", "segment2"].map(|segment| client.peek(store, "space0", segment)));
    for (entry, segment) in
        env.step("peeks", peeks).await.into_iter().zip(["segment0", "segment1", "segment2"])
    {
        let entry = entry.expect("peek");
        assert_eq!(entry, Entry::empty("space0", segment));
        assert_eq!((entry.sequence, entry.timestamp, entry.trx.number), (0, 0, 0));
        assert!(entry.trx.id.is_nil() && entry.trx.node.is_nil());
        assert!(entry.payload.is_none() && entry.metadata.is_empty());
    }
}

/// core/TestShouldProduceRecordsSuccessfullyWhenGivenValidInput: records 1..5 into segment0..2, exactly
/// one status each.
async fn produce_acknowledges_each_segment_once(env: Env) {
    for segment in ["segment0", "segment1", "segment2"] {
        let statuses = produce_ok(&env, env.client(), "space0", segment, 1..=5).await;
        assert_eq!(statuses.len(), 1, "{segment}: exactly one status");
        let status = &statuses[0];
        assert_eq!((status.space.as_str(), status.segment.as_str()), ("space0", segment));
        assert_eq!((status.first_sequence, status.last_sequence), (1, 5));
        assert!(status.first_timestamp > 0 && status.last_timestamp >= status.first_timestamp);
        assert!(!status.heartbeat);
    }
}

/// Produces `1..=n` with payload `{tag}-{seq}`; returns whether it succeeded.
async fn race_one(env: &Env, tag: String, space: &str, segment: &str, n: u64) -> (String, bool) {
    let payload = {
        let tag = tag.clone();
        move |seq| format!("{tag}-{seq}").into_bytes()
    };
    let stream = env.client().produce(env.store(), space, segment, records(1..=n, payload));
    let (statuses, error) = collect(env.runtime(), stream).await;
    if let Some(error) = &error {
        // Go only logs the loser's error; it must be the sequence conflict.
        eprintln!("producer {tag} lost the race: {error}");
        assert!(matches!(error.kind(), ErrorKind::SequenceConflict { .. }), "{error}");
        assert!(error.to_string().contains("sequence gap: expected"), "{error}");
        assert!(statuses.is_empty(), "a losing single-chunk produce acknowledges nothing");
    }
    (tag, error.is_none())
}

/// core/TestShouldConcurrentProducersDetectConflict: two concurrent produces of 1..100 into one segment
/// leave exactly 1..100, all from the one producer that won.
async fn concurrent_producers_leave_exactly_one_to_n(env: Env) {
    let (a, b) = env
        .step(
            "racing producers",
            join(
                race_one(&env, "a".into(), "race", "seg", 100),
                race_one(&env, "b".into(), "race", "seg", 100),
            ),
        )
        .await;
    let winners: Vec<&String> = [&a, &b].into_iter().filter(|(_, ok)| *ok).map(|(tag, _)| tag).collect();
    assert_eq!(winners.len(), 1, "exactly one producer wins: {a:?} {b:?}");
    let mut request = segment_request("race", "seg");
    request.min_sequence = 1;
    let entries = consume_segment(&env, env.client(), request).await;
    assert_eq!(sequences(&entries), (1..=100).collect::<Vec<_>>());
    for entry in &entries {
        assert_eq!(entry.payload.as_deref(), Some(format!("{}-{}", winners[0], entry.sequence).as_bytes()));
    }
}

/// core/TestShouldProduceLargeRecordsChunking: 50 records of 8 KiB; all 50 read back intact.
async fn large_records_are_chunked_and_read_back(env: Env) {
    let payload = |seq: u64| {
        let mut bytes = vec![(seq % 251) as u8; 8 * 1024];
        bytes[..8].copy_from_slice(&seq.to_be_bytes());
        bytes
    };
    produce_with(&env, env.client(), "large", "seg", 1..=50, payload).await;
    let entries = consume_segment(&env, env.client(), segment_request("large", "seg")).await;
    assert_eq!(entries.len(), 50);
    for entry in &entries {
        assert_eq!(entry.payload.as_deref(), Some(&payload(entry.sequence)[..]), "record {}", entry.sequence);
    }
}

/// consume_boundaries/TestShouldApplySequenceBoundariesGivenSegmentDataWhenConsumeSegmentRuns.
async fn consume_segment_sequence_bounds_are_inclusive(env: Env) {
    produce_ok(&env, env.client(), "bounds", "seg", 1..=10).await;
    let cases: [(u64, u64, Vec<u64>); 6] = [
        (0, 0, (1..=10).collect()), // no bounds
        (0, 0, (1..=10).collect()), // MinSequence 0
        (3, 3, vec![3]),
        (3, 5, vec![3, 4, 5]),
        (11, 0, vec![]),
        (9, 15, vec![9, 10]),
    ];
    for (min, max, expected) in cases {
        let mut request = segment_request("bounds", "seg");
        request.min_sequence = min;
        request.max_sequence = max;
        let got = sequences(&consume_segment(&env, env.client(), request).await);
        assert_eq!(got, expected, "min {min} max {max}");
    }
    // max < min is raised to min (PROTOCOL.md §4.3).
    let mut request = segment_request("bounds", "seg");
    request.min_sequence = 5;
    request.max_sequence = 3;
    assert_eq!(sequences(&consume_segment(&env, env.client(), request).await), [5]);
}

const SPACES: [&str; 5] = ["space0", "space1", "space2", "space3", "space4"];
const SEGMENTS: [&str; 5] = ["segment0", "segment1", "segment2", "segment3", "segment4"];

/// Go `setupConsumerData`: space0..4 x segment0..4, records 1..N with payload `test data {seq}`.
async fn setup_consumer_data(env: &Env, n: u64) {
    let spaces = SPACES.map(|space| async move {
        for segment in SEGMENTS {
            produce_ok(env, env.client(), space, segment, 1..=n).await;
        }
    });
    env.step("consumer data", join_all(spaces)).await;
}

/// consumer/TestShouldConsumerOperations (after `setupConsumerData`).
async fn consumer_operations(env: Env) {
    let n = consumer_records();
    setup_consumer_data(&env, n).await;
    let client = env.client();
    let store = env.store();

    // should get spaces / should get segments: exactly these, in this order.
    assert_eq!(collect_ok(env.runtime(), client.get_spaces(store)).await, SPACES);
    assert_eq!(collect_ok(env.runtime(), client.get_segments(store, "space0")).await, SEGMENTS);

    // should peek: the head of space0/segment0 is N.
    let head = env.step("peek", client.peek(store, "space0", "segment0")).await.unwrap();
    assert_eq!((head.space.as_str(), head.segment.as_str(), head.sequence), ("space0", "segment0", n));
    assert_eq!(head.payload, Some(test_data(n).into()));

    // should consume segment: N entries, 1..N with their payloads.
    let entries = consume_segment(&env, client, segment_request("space0", "segment0")).await;
    assert_eq!(sequences(&entries), (1..=n).collect::<Vec<_>>());
    assert!(entries.iter().all(|e| e.payload == Some(test_data(e.sequence).into()) && e.timestamp > 0));

    // should consume segment with inclusive min: MinSequence N-20 (233 with the default 253) -> 21.
    let min = n.saturating_sub(20).max(1);
    let mut request = segment_request("space0", "segment0");
    request.min_sequence = min;
    let entries = consume_segment(&env, client, request).await;
    assert_eq!(sequences(&entries), (min..=n).collect::<Vec<_>>());

    // should consume space: 5N entries, merged by timestamp (Go retries up to 10 times; every produce
    // was acknowledged before, so the first read must already see all of them).
    let entries = consume_space(&env, client, "space0", LexKey::default()).await;
    assert_eq!(entries.len() as u64, 5 * n);
    assert!(entries.iter().all(|e| e.space == "space0"));
    assert_merged_order(&entries);

    // should consume interleaved spaces: Consume{space0..4: ""} -> 25N, merged by timestamp.
    let offsets: Vec<(&str, LexKey)> = SPACES.iter().map(|s| (*s, LexKey::default())).collect();
    let entries = consume(&env, client, &offsets).await;
    assert_eq!(entries.len() as u64, 25 * n);
    assert_merged_order(&entries);
    let per_segment: BTreeMap<(String, String), usize> = entries.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry((e.space.clone(), e.segment.clone())).or_default() += 1;
        m
    });
    assert_eq!(per_segment.len(), 25);
    assert!(per_segment.values().all(|&count| count as u64 == n));
}

/// high_volume/TestShouldHighVolumeReadWriteStream: 4 segments written concurrently in produces of 250
/// records; one merged read returns exactly 4N entries, each (segment, seq) once, every seq 1..N.
async fn high_volume_read_write(env: Env) {
    const SPACE: &str = "space-high-volume";
    let n = high_volume_records(env.transport());
    let writers = (0..4).map(|i| {
        let env = env.clone();
        async move {
            let segment = format!("segment-{i}");
            let mut next = 1;
            while next <= n {
                let last = (next + 249).min(n);
                let tag = segment.clone();
                let payload = move |seq| format!("high-volume-{SPACE}-{tag}-{seq}").into_bytes();
                produce_with(&env, env.client(), SPACE, &segment, next..=last, payload).await;
                next = last + 1;
            }
        }
    });
    env.step("high-volume writers", join_all(writers)).await;

    let entries = consume(&env, env.client(), &[(SPACE, LexKey::default())]).await;
    assert_eq!(entries.len() as u64, 4 * n);
    let mut seen: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for entry in &entries {
        assert_eq!(entry.space, SPACE);
        let expected = format!("high-volume-{SPACE}-{}-{}", entry.segment, entry.sequence);
        assert_eq!(entry.payload.as_deref(), Some(expected.as_bytes()));
        assert!(seen.entry(entry.segment.clone()).or_default().insert(entry.sequence), "duplicate {entry:?}");
    }
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["segment-0", "segment-1", "segment-2", "segment-3"]);
    for (segment, sequences) in &seen {
        assert_eq!(sequences.len() as u64, n, "{segment}");
        assert_eq!((sequences.first(), sequences.last()), (Some(&1), Some(&n)), "{segment}: no gap");
        let head = env.step("peek", env.client().peek(env.store(), SPACE, segment)).await.unwrap();
        assert_eq!(head.sequence, n);
    }
    assert_merged_order(&entries);
}

/// inventory_edge/TestShouldReturnEmptyResultsGivenFreshStoreWhenQueryingInventory.
async fn fresh_store_inventory_is_empty(env: Env) {
    let client = env.client();
    assert!(collect_ok(env.runtime(), client.get_spaces(env.store())).await.is_empty());
    assert!(collect_ok(env.runtime(), client.get_segments(env.store(), "missing-space")).await.is_empty());
}

/// inventory_edge/TestShouldReturnDefaultPeekAndEmptyConsumesGivenMissingSegmentWhenReadOperationsRun.
async fn missing_segment_reads_are_empty(env: Env) {
    let client = env.client();
    let entry = env.step("peek", client.peek(env.store(), "missing-space", "missing-segment")).await.unwrap();
    assert_eq!(entry, Entry::empty("missing-space", "missing-segment"));
    let mut request = segment_request("missing-space", "missing-segment");
    request.min_sequence = 1;
    assert!(consume_segment(&env, client, request).await.is_empty());
    assert!(consume_space(&env, client, "missing-space", LexKey::default()).await.is_empty());
    assert!(consume(&env, client, &[("missing-space", LexKey::default())]).await.is_empty());
}

/// lease/TestShouldReturnLeaseNotAcquiredGivenActiveLeaseWhenSecondHolderRequestsSameKey: while holder A
/// runs inside its lease, a second `with_lease` on the key is refused (`lease not acquired`) without
/// running its body; once A returned, a third succeeds.
async fn second_lease_holder_refused_until_release(env: Env) {
    let client = env.client();
    let store = env.store();
    let (entered_tx, entered) = async_channel::bounded::<()>(1);
    let (release, release_rx) = async_channel::bounded::<()>(1);
    let holder = client.with_lease(store, "lease-key", Duration::from_secs(2), |lease| async move {
        assert_eq!((lease.key.as_str(), lease.ttl), ("lease-key", Duration::from_secs(2)));
        entered_tx.send(()).await.unwrap();
        release_rx.recv().await.unwrap();
        "a-done"
    });
    let contender = async {
        entered.recv().await.unwrap();
        let ran = AtomicBool::new(false);
        let second = client
            .with_lease(store, "lease-key", Duration::from_secs(2), |_| async {
                ran.store(true, Ordering::SeqCst)
            })
            .await;
        let error = second.expect_err("the key is held");
        assert_eq!(error.kind(), ErrorKind::LeaseNotAcquired);
        assert!(error.to_string().starts_with("lease not acquired"), "{error}");
        assert!(!ran.load(Ordering::SeqCst), "a refused lease does not run its body");
        // From another connection too.
        let other = env.new_client().await;
        let error =
            other.with_lease(store, "lease-key", Duration::from_secs(2), |_| async {}).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::LeaseNotAcquired);
        release.send(()).await.unwrap();
    };
    let (held, ()) = env.step("lease holders", join(holder, contender)).await;
    assert_eq!(held.unwrap(), "a-done");
    let third = env
        .step("third holder", client.with_lease(store, "lease-key", Duration::from_secs(2), |_| async { 3 }))
        .await;
    assert_eq!(third.unwrap(), 3);
}

/// Sets its flag when dropped: proves a future was cancelled.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// lease/TestShouldCancelLeaseContextGivenParentContextCanceledWhenWithLeaseRuns: ttl 3 s; the caller
/// cancels while the body waits. In Rust cancelling is dropping the `with_lease` future: the body is
/// dropped at once, and the lease is released (another holder gets it well before the 3 s TTL could
/// have expired it).
async fn lease_ends_when_the_caller_cancels(env: Env) {
    let client = env.client();
    let store = env.store();
    let dropped = Arc::new(AtomicBool::new(false));
    let (entered_tx, entered) = async_channel::bounded::<()>(1);
    let flag = dropped.clone();
    let acquired_at = Instant::now();
    let guarded = client.with_lease(store, "cancel-key", Duration::from_secs(3), |_| async move {
        let _flag = DropFlag(flag);
        entered_tx.send(()).await.unwrap();
        std::future::pending::<()>().await;
    });
    let cancel = async {
        entered.recv().await.unwrap();
        env.sleep(Duration::from_millis(100)).await;
    };
    let cancelled_at = match env.step("cancel", select(Box::pin(guarded), Box::pin(cancel))).await {
        Either::Left((result, _)) => panic!("the guarded body never returns: {result:?}"),
        Either::Right(((), guarded)) => {
            drop(guarded);
            Instant::now()
        }
    };
    assert!(dropped.load(Ordering::SeqCst), "the body is cancelled with its caller");
    // Released in the background: another holder gets the key within 2 s (the TTL would take 3 s).
    let other = env.new_client().await;
    loop {
        match other.with_lease(store, "cancel-key", Duration::from_secs(3), |_| async {}).await {
            Ok(()) => break,
            Err(error) => assert_eq!(error.kind(), ErrorKind::LeaseNotAcquired, "{error}"),
        }
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(2),
            "the lease is released on cancel, not expired"
        );
        env.sleep(Duration::from_millis(50)).await;
    }
    assert!(acquired_at.elapsed() < Duration::from_secs(3));
}

/// publish_compat/TestShouldPersistPayloadAndMetadataGivenPublishWhenConsumed.
async fn publish_persists_payload_and_metadata(env: Env) {
    let client = env.client();
    let metadata: Metadata =
        [("origin", "publish"), ("type", "edge")].map(|(k, v)| (k.to_owned(), v.to_owned())).into();
    let status = env
        .step(
            "publish",
            client.publish(
                env.store(),
                "publish-space",
                "publish-segment",
                b"published-payload".to_vec(),
                metadata.clone(),
            ),
        )
        .await
        .unwrap();
    assert_eq!((status.first_sequence, status.last_sequence), (1, 1));
    let entries = consume_segment(&env, client, segment_request("publish-space", "publish-segment")).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].sequence, 1);
    assert_eq!(entries[0].payload.as_deref(), Some(&b"published-payload"[..]));
    assert_eq!(entries[0].metadata, metadata);
    let head = env.step("peek", client.peek(env.store(), "publish-space", "publish-segment")).await.unwrap();
    assert_eq!(head.sequence, 1);
}

/// stream_lifecycle/TestShouldStopConsumeSegmentGivenContextCanceledWhenStreamIsActive: 300 records; read
/// one; cancel: the read ends within 3 s having yielded at most 300. The server side must stop too: its
/// stream is released and counted as cancelled.
async fn consume_stops_when_cancelled(env: Env) {
    produce_ok(&env, env.client(), "lifecycle", "seg", 1..=300).await;
    let (cancel, cancelled) = async_channel::bounded::<()>(1);
    let consume = env.client().consume_segment(env.store(), segment_request("lifecycle", "seg"));
    let mut consume = consume.take_until(Box::pin(async move {
        let _ = cancelled.recv().await;
    }));
    let first = env.step("first entry", consume.next()).await.unwrap().unwrap();
    assert_eq!(first.sequence, 1);
    cancel.send(()).await.unwrap();
    let started = Instant::now();
    let mut read = 1;
    while let Some(item) = env.step("cancelled consume to end", consume.next()).await {
        item.expect("a cancelled consume ends, it does not fail");
        read += 1;
    }
    assert!(started.elapsed() < Duration::from_secs(3), "ends within 3 s");
    assert!(read <= 300);
    drop(consume);
    env.eventually("the server to release the cancelled stream", || {
        env.metric("streamkit_streams_active") == 0.0
    })
    .await;
}

/// subscription/TestShouldDeliverSegmentUpdatesGivenSubscriptionWhenRecordsAreProduced: a segment
/// subscription sees LastSequence >= 3 after 1..3 are produced; after unsubscribing (dropping it) the
/// server forgets it, and a later produce reaches only subscriptions still open.
async fn segment_subscription_snapshot_then_live(env: Env) {
    const SPACE: &str = "space-sub-segment";
    let client = env.client();
    let store = env.store();
    let mut subscription = env
        .step("subscribe", client.subscribe_segment(store, SPACE, "segment-a", SubscribeOptions::default()))
        .await
        .unwrap();
    let mut keeper = env
        .step("subscribe", client.subscribe_segment(store, SPACE, "segment-a", SubscribeOptions::default()))
        .await
        .unwrap();
    produce_ok(&env, client, SPACE, "segment-a", 1..=3).await;
    let seen = wait_for_status(&env, &mut subscription, |s| s.last_sequence >= 3).await;
    assert_eq!((seen.space.as_str(), seen.segment.as_str()), (SPACE, "segment-a"));
    assert!(!seen.heartbeat);
    wait_for_status(&env, &mut keeper, |s| s.last_sequence >= 3).await;
    assert_eq!(env.metric("streamkit_subscriptions_active"), 2.0);

    drop(subscription);
    env.eventually("the server to drop the unsubscribed one", || {
        env.metric("streamkit_subscriptions_active") == 1.0
    })
    .await;
    produce_ok(&env, client, SPACE, "segment-a", 4..=4).await;
    let live = wait_for_status(&env, &mut keeper, |s| s.last_sequence >= 4).await;
    assert_eq!(live.last_sequence, 4);
    assert_eq!(live.first_sequence, 1);
}

/// Reads statuses until one matches (at most 10 s, Go's wait); returns it.
async fn wait_for_status(
    env: &Env,
    stream: &mut streamkit::client::StatusStream,
    mut matches: impl FnMut(&SegmentStatus) -> bool,
) -> SegmentStatus {
    let deadline = Duration::from_secs(10);
    let found = env.runtime().timeout(deadline, async {
        while let Some(status) = stream.next().await {
            let status = status.expect("subscription stays open");
            if matches(&status) {
                return status;
            }
        }
        panic!("subscription ended");
    });
    found.await.expect("a matching status within 10 s")
}

/// subscription/TestShouldDeliverSpaceUpdatesGivenWildcardSubscriptionWhenMultipleSegmentsChange.
async fn wildcard_subscription_sees_every_segment(env: Env) {
    const SPACE: &str = "space-sub-space";
    let client = env.client();
    let mut subscription = env
        .step("subscribe", client.subscribe_space(env.store(), SPACE, SubscribeOptions::default()))
        .await
        .unwrap();
    produce_ok(&env, client, SPACE, "segment-a", 1..=2).await;
    produce_ok(&env, client, SPACE, "segment-b", 1..=2).await;
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let done = |last: &BTreeMap<String, u64>| {
        ["segment-a", "segment-b"].iter().all(|s| last.get(*s).is_some_and(|&n| n >= 2))
    };
    while !done(&last) {
        let status = wait_for_status(&env, &mut subscription, |_| true).await;
        assert_eq!(status.space, SPACE);
        last.insert(status.segment.clone(), status.last_sequence);
    }
}

/// transaction_edge/TestShouldAssignUniqueTransactionIDsGivenSequentialProducesWhenSameSegment.
async fn sequential_produces_get_distinct_trx_ids(env: Env) {
    produce_ok(&env, env.client(), "trx", "seg", 1..=3).await;
    produce_ok(&env, env.client(), "trx", "seg", 4..=6).await;
    let entries = consume_segment(&env, env.client(), segment_request("trx", "seg")).await;
    assert_eq!(sequences(&entries), [1, 2, 3, 4, 5, 6]);
    let first = entries[0].trx.id;
    let second = entries[3].trx.id;
    assert!(!first.is_nil() && !second.is_nil());
    assert!(entries[..3].iter().all(|e| e.trx.id == first));
    assert!(entries[3..].iter().all(|e| e.trx.id == second));
    assert_ne!(first, second);
    assert!(entries.iter().all(|e| e.trx.node == nil()), "no backend sets trx.node");
}

/// transaction_edge/TestShouldMaintainStrictSequenceContiguityGivenConcurrentProducersWhenSameSegment.
async fn four_concurrent_producers_leave_exactly_one_to_twenty_five(env: Env) {
    let races = (0..4).map(|i| race_one(&env, format!("p{i}"), "contiguity", "seg", 25));
    let outcomes = env.step("four producers", join_all(races)).await;
    let winners: Vec<_> = outcomes.iter().filter(|(_, ok)| *ok).collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let entries = consume_segment(&env, env.client(), segment_request("contiguity", "seg")).await;
    assert_eq!(sequences(&entries), (1..=25).collect::<Vec<_>>());
    assert!(
        entries
            .iter()
            .all(|e| e.payload == Some(format!("{}-{}", winners[0].0, e.sequence).into_bytes().into()))
    );
}

/// transaction_edge/TestShouldAssignMonotonicallyIncreasingTRXNumbersGivenSuccessiveProducesWhenSameSegment.
async fn trx_numbers_increase_per_batch(env: Env) {
    for batch in [1..=2, 3..=4, 5..=6] {
        produce_ok(&env, env.client(), "trx-numbers", "seg", batch).await;
    }
    let entries = consume_segment(&env, env.client(), segment_request("trx-numbers", "seg")).await;
    assert_eq!(sequences(&entries), [1, 2, 3, 4, 5, 6]);
    let mut previous = 0;
    for batch in entries.chunks(2) {
        assert_eq!(batch[0].trx.number, batch[1].trx.number, "one number per batch");
        assert_eq!(batch[0].trx.id, batch[1].trx.id);
        assert!(
            batch[0].trx.number > previous,
            "strictly increasing: {} after {previous}",
            batch[0].trx.number
        );
        previous = batch[0].trx.number;
    }
}

const WORKER_A: Uuid = Uuid::from_u128(0xaaaaaaaa_aaaa_4aaa_8aaa_aaaaaaaaaaaa);

/// Reads inventories until one satisfies `matches` (at most 5 s, Go's wait).
async fn wait_for_inventory(
    env: &Env,
    stream: &mut streamkit::client::InventoryStream,
    mut matches: impl FnMut(&WorkerInventory) -> bool,
) -> WorkerInventory {
    let found = env.runtime().timeout(Duration::from_secs(5), async {
        while let Some(inventory) = stream.next().await {
            let inventory = inventory.expect("inventory stream stays open");
            if matches(&inventory) {
                return inventory;
            }
        }
        panic!("inventory stream ended");
    });
    found.await.expect("a matching inventory within 5 s")
}

/// worker_presence/TestShouldDeliverInventoryGivenSubscribeWithWorkerID: an observer sees worker A (with
/// its metadata) join, then leave when the worker's stream ends.
async fn worker_presence_fans_out_to_observers(env: Env) {
    let client = env.client();
    let store = env.store();
    let mut observer =
        env.step("observe", client.subscribe_workers(store, WorkerOptions::observer())).await.unwrap();
    let first = wait_for_inventory(&env, &mut observer, |_| true).await;
    assert!(first.workers.is_empty(), "an empty store has no workers: {first:?}");
    let options = WorkerOptions::worker(WORKER_A).with_metadata("role", "processor");
    let mut worker = env.step("register", client.subscribe_workers(store, options)).await.unwrap();
    let joined =
        wait_for_inventory(&env, &mut observer, |i| i.workers.iter().any(|w| w.worker_id == WORKER_A)).await;
    let info = joined.workers.iter().find(|w| w.worker_id == WORKER_A).unwrap();
    assert_eq!(info.metadata.get("role").map(String::as_str), Some("processor"));
    assert!(info.last_seen_at > 0 && joined.timestamp > 0);
    // The worker gets the inventory containing itself.
    wait_for_inventory(&env, &mut worker, |i| i.workers.iter().any(|w| w.worker_id == WORKER_A)).await;
    drop(worker);
    wait_for_inventory(&env, &mut observer, |i| i.workers.iter().all(|w| w.worker_id != WORKER_A)).await;
}

/// worker_presence/TestShouldIsolateInventoryByStoreID: an observer of store B never sees a worker of
/// store A.
async fn worker_presence_is_isolated_per_store(env: Env) {
    let client = env.client();
    let store_a = env.store();
    let store_b = Uuid::new_v4();
    let mut observer =
        env.step("observe", client.subscribe_workers(store_b, WorkerOptions::observer())).await.unwrap();
    let mut worker = env
        .step("register", client.subscribe_workers(store_a, WorkerOptions::worker(WORKER_A)))
        .await
        .unwrap();
    wait_for_inventory(&env, &mut worker, |i| i.workers.iter().any(|w| w.worker_id == WORKER_A)).await;
    let window = env.runtime().timeout(Duration::from_millis(300), async {
        while let Some(inventory) = observer.next().await {
            let inventory = inventory.expect("observer stays open");
            assert!(
                inventory.workers.iter().all(|w| w.worker_id != WORKER_A),
                "store B sees a worker of store A: {inventory:?}"
            );
        }
    });
    assert!(window.await.is_err(), "the observer stays open for the whole window");
}
