//! Every operation over a real WebSocket, in JSON and in CBOR, against a server on loopback: produce,
//! peek, consume (segment, space, multi-space), get spaces/segments, segment-status subscriptions
//! (one segment and `*`), leases and worker presence; concurrent producers on one segment; and the
//! metrics that those operations move.

use crate::support;

use std::collections::BTreeMap;
use std::sync::Arc;

use streamkit::runtime::{Runtime, TokioRuntime};
use streamkit_proto::api::{
    Consume, ConsumeSegment, ConsumeSpace, Envelope, GetSegments, GetSpaces, LeaseAcquire, LeaseRelease,
    LeaseRenew, Peek, Record, Request, SubscribeToSegmentStatus, SubscribeWorkers,
};
use streamkit_proto::client::ClientItem;
use streamkit_proto::lexkey::LexKey;
use streamkit_proto::stream::StreamEnd;
use streamkit_proto::wire::{Codec, Message};
use support::*;
use uuid::Uuid;

fn tokio_runtime() -> Arc<dyn Runtime> {
    Arc::new(TokioRuntime::try_current().unwrap())
}

fn consume_segment(space: &str, segment: &str, min_sequence: u64) -> Request {
    Request::ConsumeSegment(ConsumeSegment {
        space: space.into(),
        segment: segment.into(),
        min_sequence,
        ..ConsumeSegment::default()
    })
}

fn subscribe(space: &str, segment: &str) -> Request {
    Request::SubscribeToSegmentStatus(SubscribeToSegmentStatus {
        space: space.into(),
        segment: segment.into(),
        heartbeat_interval_seconds: 0,
    })
}

fn status_of(message: Message) -> (String, u64) {
    match message {
        Message::Status(s) => (s.segment, s.last_sequence),
        other => panic!("expected a status, got {other:?}"),
    }
}

fn inventory_of(message: Message) -> Vec<Uuid> {
    match message {
        Message::Envelope(Envelope::WorkerInventory(inventory)) => {
            inventory.workers.iter().map(|w| w.worker_id).collect()
        }
        other => panic!("expected an inventory, got {other:?}"),
    }
}

async fn every_operation(codec: Codec) {
    let runtime = tokio_runtime();
    let server = serve(&runtime, memory_config()).await;
    let client = TestClient::connect(&runtime, &url(&server), &admin_token(), codec).await.unwrap();
    let store = Uuid::new_v4();

    // Produce: one status per committed chunk, the last one naming the last sequence.
    let produced = client.produce(store, "sp", "sg1", records(1, 10)).await.ok();
    assert_eq!(produced.statuses().last().map(|s| s.last_sequence), Some(10), "{codec:?}");
    client.produce(store, "sp", "sg2", records(1, 5)).await.ok();
    client.produce(store, "sp2", "a", records(1, 3)).await.ok();

    // A sequence gap fails the produce with Go's text.
    let gap = client.produce(store, "sp", "sg1", vec![Record::new(12, "x")]).await;
    assert!(gap.end.as_ref().is_err_and(|e| e.starts_with("remote closed stream:")), "{gap:?}");

    // Peek: the last entry; a missing segment gives an empty entry.
    let peek = |segment: &str| Request::Peek(Peek { space: "sp".into(), segment: segment.into() });
    let last = client.call(store, peek("sg1")).await.ok();
    assert_eq!(last.sequences(), [10]);
    assert_eq!(last.entries()[0].payload.as_deref(), Some(&b"r10"[..]));
    assert_eq!(client.call(store, peek("missing")).await.ok().sequences(), [0]);

    // ConsumeSegment, from the start and from a sequence.
    let all = client.call(store, consume_segment("sp", "sg1", 0)).await.ok();
    assert_eq!(all.sequences(), (1..=10).collect::<Vec<_>>());
    assert!(all.entries().iter().all(|e| e.space == "sp" && e.segment == "sg1"));
    let tail = client.call(store, consume_segment("sp", "sg1", 7)).await.ok();
    assert_eq!(tail.sequences(), [7, 8, 9, 10]);

    // ConsumeSpace: both segments merged by space key; resuming after an offset yields the rest.
    let space = Request::ConsumeSpace(ConsumeSpace { space: "sp".into(), ..ConsumeSpace::default() });
    let whole = client.call(store, space).await.ok().entries();
    assert_eq!(whole.len(), 15);
    assert!(whole.windows(2).all(|w| w[0].space_offset() < w[1].space_offset()), "space-key order");
    let resume = Request::ConsumeSpace(ConsumeSpace {
        space: "sp".into(),
        offset: whole[6].space_offset(),
        ..ConsumeSpace::default()
    });
    assert_eq!(client.call(store, resume).await.ok().entries(), whole[7..]);

    // Consume over several spaces.
    let offsets: BTreeMap<String, LexKey> =
        [("sp".to_owned(), LexKey::default()), ("sp2".to_owned(), LexKey::default())].into();
    let multi = client.call(store, Request::Consume(Consume { offsets, ..Consume::default() })).await.ok();
    assert_eq!(multi.entries().len(), 18);
    assert!(multi.entries().windows(2).all(|w| w[0].timestamp <= w[1].timestamp), "merged by timestamp");

    // GetSpaces / GetSegments.
    assert_eq!(client.call(store, Request::GetSpaces(GetSpaces {})).await.ok().names(), ["sp", "sp2"]);
    let segments = Request::GetSegments(GetSegments { space: "sp".into() });
    assert_eq!(client.call(store, segments).await.ok().names(), ["sg1", "sg2"]);

    // Subscriptions: one segment, and every segment of the space; snapshot first, then live updates.
    let one = client.open(store, subscribe("sp", "sg1")).await;
    assert_eq!(status_of(one.message().await), ("sg1".to_owned(), 10));
    let every = client.open(store, subscribe("sp", "*")).await;
    assert_eq!(status_of(every.message().await), ("sg1".to_owned(), 10));
    assert_eq!(status_of(every.message().await), ("sg2".to_owned(), 5));
    client.produce(store, "sp", "sg1", records(11, 11)).await.ok();
    client.produce(store, "sp", "sg2", records(6, 7)).await.ok();
    assert_eq!(status_of(one.message().await), ("sg1".to_owned(), 11));
    assert_eq!(status_of(every.message().await), ("sg1".to_owned(), 11));
    assert_eq!(status_of(every.message().await), ("sg2".to_owned(), 7));

    // Metrics while the subscriptions are live.
    let (code, text) = http_get(&runtime, server.local_addr(), "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(metric(&text, "streamkit_subscriptions_active"), Some(2.0), "{text}");
    assert_eq!(metric(&text, "streamkit_connections_active"), Some(1.0));
    assert!(metric(&text, "streamkit_streams_active").unwrap() >= 2.0);
    assert_eq!(metric(&text, "streamkit_produce_records_total"), Some(21.0));
    // "r1".."r9" are 2 bytes, "r10" and "r11" 3: sg1 21 + 3, sg2 14, sp2/a 6.
    assert_eq!(metric(&text, "streamkit_produce_bytes_total"), Some(44.0));
    assert_eq!(metric(&text, "streamkit_operations_total{op=\"produce\",outcome=\"ok\"}"), Some(5.0));
    assert_eq!(metric(&text, "streamkit_operations_total{op=\"produce\",outcome=\"error\"}"), Some(1.0));
    assert_eq!(metric(&text, "streamkit_operations_total{op=\"consume_segment\",outcome=\"ok\"}"), Some(2.0));
    assert_eq!(metric(&text, "streamkit_stores_open"), Some(1.0));
    assert!(metric(&text, "streamkit_store_transactions_total").unwrap() >= 5.0);
    assert!(metric(&text, "streamkit_commit_latency_seconds_count").unwrap() >= 5.0);
    assert_eq!(metric(&text, "streamkit_store_fsyncs_total"), Some(0.0), "memory stores do not fsync");
    assert!(metric(&text, "streamkit_received_bytes_total").unwrap() > 0.0);
    assert!(metric(&text, "streamkit_sent_frames_total").unwrap() > 0.0);

    // Unsubscribing (the Go client's cancel) ends the subscription on the server.
    one.cancel().await;
    every.cancel().await;
    eventually(&runtime, "subscriptions to end", || {
        server.metrics().render().contains("streamkit_subscriptions_active 0\n")
    })
    .await;

    // Leases.
    let acquire = |holder: &str| {
        Request::LeaseAcquire(LeaseAcquire { key: "k".into(), holder: holder.into(), ttl_seconds: 30 })
    };
    let lease = |outcome: Outcome| outcome.ok().leases()[0].ok;
    assert!(lease(client.call(store, acquire("a")).await));
    assert!(!lease(client.call(store, acquire("b")).await));
    let renew = Request::LeaseRenew(LeaseRenew { key: "k".into(), holder: "a".into(), ttl_seconds: 30 });
    assert!(lease(client.call(store, renew).await));
    let release =
        |holder: &str| Request::LeaseRelease(LeaseRelease { key: "k".into(), holder: holder.into() });
    assert!(!lease(client.call(store, release("b")).await));
    assert!(lease(client.call(store, release("a")).await));
    assert!(lease(client.call(store, acquire("b")).await));
    let invalid =
        Request::LeaseAcquire(LeaseAcquire { key: String::new(), holder: "a".into(), ttl_seconds: 1 });
    assert_eq!(client.call(store, invalid).await.ok().leases()[0].message, "lease key must not be empty");

    // Worker presence: an observer sees a worker come and go.
    let observer = client.open(store, Request::SubscribeWorkers(SubscribeWorkers::default())).await;
    assert_eq!(inventory_of(observer.message().await), Vec::<Uuid>::new());
    let worker_id = Uuid::new_v4();
    let worker = client
        .open(
            store,
            Request::SubscribeWorkers(SubscribeWorkers {
                worker_id,
                metadata: [("role".to_owned(), "processor".to_owned())].into(),
                heartbeat_interval_seconds: 0,
            }),
        )
        .await;
    assert_eq!(inventory_of(worker.message().await), [worker_id]);
    assert_eq!(inventory_of(observer.message().await), [worker_id]);
    let text = server.metrics().render();
    assert_eq!(metric(&text, "streamkit_presence_workers"), Some(1.0));
    assert_eq!(metric(&text, "streamkit_subscriptions_active"), Some(1.0), "the observer");
    worker.close_send().await;
    assert_eq!(inventory_of(observer.message().await), Vec::<Uuid>::new());
    assert!(matches!(worker.next().await, Some(ClientItem::End(StreamEnd::Finished))));
    eventually(&runtime, "worker gauge to drop", || {
        server.metrics().render().contains("streamkit_presence_workers 0\n")
    })
    .await;
    observer.cancel().await;

    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_over_json() {
    every_operation(Codec::Json).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_over_cbor() {
    every_operation(Codec::Cbor).await;
}

/// Producers racing on one segment, each appending the next sequence it believes in and retrying on
/// conflict: the segment ends up exactly 1..N, and each sequence was acknowledged to exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_on_one_segment_make_exactly_one_to_n() {
    const PRODUCERS: usize = 8;
    const EACH: usize = 25;
    let runtime = tokio_runtime();
    let server = serve(&runtime, memory_config()).await;
    let store = Uuid::new_v4();
    let mut tasks = Vec::new();
    for index in 0..PRODUCERS {
        let codec = CODECS[index % 2];
        let client = TestClient::connect(&runtime, &url(&server), &admin_token(), codec).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut conflicts = 0;
            while acknowledged.len() < EACH {
                let peek = Request::Peek(Peek { space: "race".into(), segment: "s".into() });
                let next = client.call(store, peek).await.ok().sequences()[0] + 1;
                let outcome =
                    client.produce(store, "race", "s", vec![Record::new(next, format!("p{index}"))]).await;
                match outcome.end {
                    Ok(()) => {
                        assert_eq!(outcome.statuses().last().map(|s| s.last_sequence), Some(next));
                        acknowledged.push(next);
                    }
                    Err(_) => conflicts += 1,
                }
            }
            (acknowledged, conflicts)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let (acknowledged, _conflicts) = task.await.unwrap();
        all.extend(acknowledged);
    }
    all.sort_unstable();
    let total = (PRODUCERS * EACH) as u64;
    assert_eq!(all, (1..=total).collect::<Vec<_>>(), "each sequence acknowledged exactly once");
    let client = TestClient::connect(&runtime, &url(&server), &admin_token(), Codec::Cbor).await.unwrap();
    let stored = client.call(store, consume_segment("race", "s", 0)).await.ok();
    assert_eq!(stored.sequences(), (1..=total).collect::<Vec<_>>());
    server.shutdown().await;
}

/// A listen address that is taken fails `start` with a typed error naming the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_address_is_a_bind_error() {
    use streamkit::server::{ServerConfig, StartError, start};

    let runtime = tokio_runtime();
    let first = serve(&runtime, ServerConfig::memory(any_port(), verifier())).await;
    let taken = first.local_addr();
    let error = start(runtime.clone(), ServerConfig::memory(taken, verifier())).await.unwrap_err();
    assert!(error.to_string().starts_with(&format!("cannot listen on {taken}: ")), "{error}");
    match &error {
        StartError::Bind { addr, source } => {
            assert_eq!((*addr, source.kind()), (taken, std::io::ErrorKind::AddrInUse));
        }
        other => panic!("expected a bind error, got {other:?}"),
    }
    assert_eq!(std::io::Error::from(error).kind(), std::io::ErrorKind::AddrInUse);
    first.shutdown().await;
}

/// `shutdown_on` serves until its signal, then stops like `shutdown`: the port is closed afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_runs_until_its_shutdown_signal() {
    use streamkit::server::ServerConfig;

    let runtime = tokio_runtime();
    let server = serve(&runtime, ServerConfig::memory(any_port(), verifier())).await;
    let addr = server.local_addr();
    let (stop, stopped) = futures_channel::oneshot::channel::<()>();
    let serving = tokio::spawn(server.shutdown_on(stopped));
    tokio::net::TcpStream::connect(addr).await.expect("serving until the signal");
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(30), serving).await.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is gone");
}
