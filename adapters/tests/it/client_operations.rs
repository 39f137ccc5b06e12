//! Every client operation against a real server (memory store), on each runtime (tokio, smol,
//! async-std) and each transport (JSON over WebSocket, CBOR over WebSocket, in-process).
#![cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))]

use crate::client_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use client_support::*;
use futures_util::StreamExt;
use streamkit::client::{ErrorKind, SubscribeOptions, WorkerOptions};
use streamkit::core::api::{Consume, ConsumeSegment, ConsumeSpace, Metadata, Record};
use streamkit::core::lexkey::LexKey;
use streamkit::runtime::{Runtime, RuntimeExt};
use uuid::Uuid;

fn records(
    range: std::ops::RangeInclusive<u64>,
) -> impl futures_core::Stream<Item = Record> + Send + 'static {
    futures_util::stream::iter(range.map(|seq| Record::new(seq, format!("test data {seq}"))))
}

async fn every_operation(runtime: Arc<dyn Runtime>, via: Via) {
    let server = start_server(&runtime).await;
    let client = client(&runtime, &server, via).await;
    let store = Uuid::new_v4();
    let rt = &runtime;

    // Fresh store: empty inventory, empty peek that echoes its names.
    assert!(collect_ok(rt, client.get_spaces(store)).await.is_empty());
    assert!(collect_ok(rt, client.get_segments(store, "missing-space")).await.is_empty());
    let empty = step(rt, client.peek(store, "space0", "segment0")).await.unwrap();
    assert_eq!((empty.space.as_str(), empty.segment.as_str(), empty.sequence), ("space0", "segment0", 0));
    assert_eq!(empty.payload, None);

    // Subscriptions opened before the data: a space subscription and an exact-segment one.
    let mut space_sub =
        step(rt, client.subscribe_space(store, "space0", SubscribeOptions::default())).await.unwrap();
    let mut segment_sub =
        step(rt, client.subscribe_segment(store, "space0", "segment1", SubscribeOptions::default()))
            .await
            .unwrap();

    // Produce: one status per produce (one chunk), then a sequence gap with Go's exact text.
    for segment in ["segment0", "segment1"] {
        let statuses = collect_ok(rt, client.produce(store, "space0", segment, records(1..=10))).await;
        assert_eq!(statuses.len(), 1, "{statuses:?}");
        assert_eq!((statuses[0].first_sequence, statuses[0].last_sequence), (1, 10));
    }
    let (statuses, error) = collect(rt, client.produce(store, "space0", "segment0", records(12..=12))).await;
    assert!(statuses.is_empty());
    let error = error.expect("a sequence gap fails the produce");
    assert_eq!(error.to_string(), "remote closed stream: sequence gap: expected 11, got 12");
    assert_eq!(error.kind(), ErrorKind::SequenceConflict { expected: 11, got: 12 });
    collect_ok(rt, client.produce(store, "space1", "segment0", records(1..=3))).await;

    // Consume a segment with Go's boundary rules.
    let consume = |min: u64, max: u64| ConsumeSegment {
        space: "space0".into(),
        segment: "segment0".into(),
        min_sequence: min,
        max_sequence: max,
        ..Default::default()
    };
    let seqs =
        |entries: Vec<streamkit::core::api::Entry>| entries.iter().map(|e| e.sequence).collect::<Vec<_>>();
    assert_eq!(
        seqs(collect_ok(rt, client.consume_segment(store, consume(0, 0))).await),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(seqs(collect_ok(rt, client.consume_segment(store, consume(3, 5))).await), vec![3, 4, 5]);
    assert_eq!(seqs(collect_ok(rt, client.consume_segment(store, consume(9, 15))).await), vec![9, 10]);
    assert!(collect_ok(rt, client.consume_segment(store, consume(11, 0))).await.is_empty());
    let first = collect_ok(rt, client.consume_segment(store, consume(1, 1))).await.remove(0);
    assert_eq!(first.payload.as_deref(), Some(&b"test data 1"[..]));
    assert!(first.timestamp > 0 && !first.trx.id.is_nil());

    // Consume a space, then resume after an offset; consume several spaces merged.
    let request = ConsumeSpace { space: "space0".into(), ..Default::default() };
    let space = collect_ok(rt, client.consume_space(store, request)).await;
    assert_eq!(space.len(), 20);
    let request =
        ConsumeSpace { space: "space0".into(), offset: space[4].space_offset(), ..Default::default() };
    let rest = collect_ok(rt, client.consume_space(store, request)).await;
    assert_eq!(rest.len(), 15);
    assert_eq!(rest[0], space[5]);
    let offsets = [("space0".to_owned(), LexKey::default()), ("space1".to_owned(), LexKey::default())];
    let merged =
        collect_ok(rt, client.consume(store, Consume { offsets: offsets.into(), ..Default::default() }))
            .await;
    assert_eq!(merged.len(), 23);
    assert!(merged.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));

    // Inventory.
    assert_eq!(collect_ok(rt, client.get_spaces(store)).await, vec!["space0", "space1"]);
    assert_eq!(collect_ok(rt, client.get_segments(store, "space0")).await, vec!["segment0", "segment1"]);

    // Publish: payload and metadata persist at the next sequence.
    let metadata: Metadata = [("origin".to_owned(), "publish".to_owned())].into();
    let status =
        step(rt, client.publish(store, "space2", "fresh", b"published-payload".to_vec(), metadata.clone()))
            .await
            .unwrap();
    assert_eq!(status.last_sequence, 1);
    let status = step(rt, client.publish(store, "space0", "segment0", b"eleven".to_vec(), Metadata::new()))
        .await
        .unwrap();
    assert_eq!(status.last_sequence, 11);
    let request = ConsumeSegment { space: "space2".into(), segment: "fresh".into(), ..Default::default() };
    let published = collect_ok(rt, client.consume_segment(store, request)).await;
    assert_eq!(published.len(), 1);
    assert_eq!(
        (published[0].payload.as_deref(), &published[0].metadata),
        (Some(&b"published-payload"[..]), &metadata)
    );
    assert_eq!(step(rt, client.peek(store, "space2", "fresh")).await.unwrap().sequence, 1);

    // The subscriptions saw both segments reach 10 (space) and segment1 only (exact).
    let mut last = BTreeMap::new();
    step(rt, async {
        while last.get("segment0") != Some(&11) || last.get("segment1") != Some(&10) {
            let status = space_sub.next().await.unwrap().unwrap();
            assert!(!status.heartbeat);
            last.insert(status.segment.clone(), status.last_sequence);
        }
    })
    .await;
    let status = step(rt, segment_sub.next()).await.unwrap().unwrap();
    assert_eq!((status.segment.as_str(), status.last_sequence), ("segment1", 10));
    drop(segment_sub);
    // A new subscription starts with the current snapshot.
    let mut late =
        step(rt, client.subscribe_segment(store, "space0", "segment0", SubscribeOptions::default()))
            .await
            .unwrap();
    assert_eq!(step(rt, late.next()).await.unwrap().unwrap().last_sequence, 11);
    drop(late);
    drop(space_sub);

    // Leases: held → a second holder is refused; released → acquirable again.
    let (inside_tx, inside_rx) = futures_channel::oneshot::channel::<()>();
    let (leave_tx, leave_rx) = futures_channel::oneshot::channel::<()>();
    let holder = client.clone();
    let held = runtime.spawn(async move {
        holder
            .with_lease(store, "leader", Duration::from_secs(2), |lease| async move {
                assert_eq!(lease.ttl, Duration::from_secs(2));
                let _ = inside_tx.send(());
                let _ = leave_rx.await;
                7
            })
            .await
    });
    step(rt, inside_rx).await.unwrap();
    let refused =
        step(rt, client.with_lease(store, "leader", Duration::from_secs(2), |_| async {})).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::LeaseNotAcquired);
    assert_eq!(refused.to_string(), "lease not acquired");
    leave_tx.send(()).unwrap();
    assert_eq!(step(rt, held).await.unwrap().unwrap(), 7);
    assert_eq!(
        step(rt, client.with_lease(store, "leader", Duration::from_secs(1), |_| async { 8 })).await.unwrap(),
        8
    );

    // Worker presence: an observer sees a worker join and leave.
    let mut observer = step(rt, client.subscribe_workers(store, WorkerOptions::observer())).await.unwrap();
    assert!(step(rt, observer.next()).await.unwrap().unwrap().workers.is_empty());
    let worker_id = Uuid::parse_str("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa").unwrap();
    let worker = step(
        rt,
        client.subscribe_workers(store, WorkerOptions::worker(worker_id).with_metadata("role", "processor")),
    )
    .await
    .unwrap();
    step(rt, async {
        loop {
            let inventory = observer.next().await.unwrap().unwrap();
            if let Some(info) = inventory.workers.iter().find(|w| w.worker_id == worker_id) {
                assert_eq!(info.metadata.get("role").map(String::as_str), Some("processor"));
                break;
            }
        }
    })
    .await;
    drop(worker);
    step(rt, async {
        while observer.next().await.unwrap().unwrap().workers.iter().any(|w| w.worker_id == worker_id) {}
    })
    .await;
    drop(observer);

    // A store handle: the same operations without the store id; typed payloads through it.
    let orders = client.store(Uuid::new_v4());
    let order = BTreeMap::from([("id".to_owned(), 42u32)]);
    let status = step(rt, orders.append_json("orders", "order-42", &order, Metadata::new())).await.unwrap();
    assert_eq!(status.last_sequence, 1);
    let head = step(rt, orders.peek("orders", "order-42")).await.unwrap();
    assert_eq!(head.json::<BTreeMap<String, u32>>().unwrap(), order);
    let read = collect_ok(rt, orders.consume_segment(ConsumeSegment::new("orders", "order-42"))).await;
    assert_eq!(read.len(), 1);
    assert_eq!(collect_ok(rt, orders.get_spaces()).await, ["orders"]);
    assert!(collect_ok(rt, client.get_spaces(store)).await.iter().all(|space| space != "orders"));
    // A value JSON cannot hold (a map with non-string keys) is refused before anything is sent.
    let unwritable = BTreeMap::from([((1u8, 2u8), 3u8)]);
    let refused =
        step(rt, orders.append_json("orders", "order-42", &unwritable, Metadata::new())).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::InvalidArgument);
    assert!(refused.to_string().starts_with("JSON payload: "), "{refused}");
    assert_eq!(step(rt, orders.peek("orders", "order-42")).await.unwrap().sequence, 1);

    // Cancelling a consume mid-way ends it promptly.
    collect_ok(rt, client.produce(store, "big", "s", records(1..=300))).await;
    let mut entries = client.consume_segment(
        store,
        ConsumeSegment { space: "big".into(), segment: "s".into(), ..Default::default() },
    );
    assert_eq!(step(rt, entries.next()).await.unwrap().unwrap().sequence, 1);
    let started = Instant::now();
    drop(entries);
    // The connection stays healthy: the next operation works at once.
    assert_eq!(step(rt, client.peek(store, "big", "s")).await.unwrap().sequence, 300);
    assert!(started.elapsed() < Duration::from_secs(3));

    client.close().await;
    let closed = step(rt, client.peek(store, "big", "s")).await.unwrap_err();
    assert_eq!(closed.kind(), ErrorKind::Closed);
    server.shutdown().await;
}

async fn over_json(runtime: Arc<dyn Runtime>) {
    every_operation(runtime, Via::Json).await;
}

async fn over_cbor(runtime: Arc<dyn Runtime>) {
    every_operation(runtime, Via::Cbor).await;
}

async fn in_process(runtime: Arc<dyn Runtime>) {
    every_operation(runtime, Via::InProcess).await;
}

per_runtime!(over_json, over_cbor, in_process);
