//! Bounded resources and failure handling over real sockets: the connection limit, a flood of streams
//! on one connection, a peer that stops reading while others carry on, and stores that cannot be
//! opened (the `store unavailable` answer and the manager's circuit breaker).

use crate::support;

use std::sync::Arc;
use streamkit::clock::WallClock;
use streamkit::runtime::{Runtime, TokioRuntime};
use streamkit::server::ServerConfig;
use streamkit::store::{RedbOptions, StoreFactory};
use streamkit::ws::{DialError, DialOptions, dial};
use streamkit_proto::Millis;
use streamkit_proto::api::{ConsumeSegment, GetSpaces, Record, Request, SubscribeToSegmentStatus};
use streamkit_proto::client::ClientConnection;
use streamkit_proto::manager::IdleEviction;
use streamkit_proto::mux::MuxConfig;
use streamkit_proto::wire::Codec;
use support::*;
use uuid::Uuid;

fn tokio_runtime() -> Arc<dyn Runtime> {
    Arc::new(TokioRuntime::try_current().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_over_the_connection_limit_are_refused_with_503() {
    let runtime = tokio_runtime();
    let mut config = memory_config();
    config.max_connections = 1;
    let server = serve(&runtime, config).await;
    let store = Uuid::new_v4();
    let first = TestClient::connect(&runtime, &url(&server), &admin_token(), Codec::Json).await.unwrap();
    first.produce(store, "sp", "sg", records(1, 1)).await.ok();
    // Refused before the upgrade, with a status a client can tell from a broken server (and retry).
    let refused = TestClient::connect(&runtime, &url(&server), &admin_token(), Codec::Json).await;
    let error = refused.err().expect("the second connection must be refused");
    assert!(matches!(error, DialError::Status(503)), "{error:?}");
    assert!(!error.is_permanent());
    assert_eq!(server.connection_count(), 1);
    let text = server.metrics().render();
    assert_eq!(metric(&text, "streamkit_errors_total{kind=\"connection_limit\"}"), Some(1.0));
    // Once the first one leaves there is room again.
    first.close().await;
    first.closed().await;
    eventually(&runtime, "the first connection to be gone", || server.connection_count() == 0).await;
    let third = TestClient::connect(&runtime, &url(&server), &admin_token(), Codec::Json).await.unwrap();
    assert_eq!(third.call(store, Request::GetSpaces(GetSpaces {})).await.ok().names(), ["sp"]);
    server.shutdown().await;
}

/// One connection opens far more long-lived streams than allowed: the extra ones are refused with
/// `too many active streams`, the server holds at most the limit, another connection is unaffected,
/// and everything is released when the streams end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_streams_is_capped_per_connection() {
    const LIMIT: usize = 16;
    const FLOOD: usize = 500;
    let runtime = tokio_runtime();
    let mut config = memory_config();
    config.max_streams_per_connection = LIMIT;
    let server = serve(&runtime, config).await;
    let store = Uuid::new_v4();
    let flooder = TestClient::connect(&runtime, &url(&server), &admin_token(), Codec::Cbor).await.unwrap();
    let bystander = TestClient::connect(&runtime, &url(&server), &admin_token(), Codec::Json).await.unwrap();
    let subscribe = || {
        Request::SubscribeToSegmentStatus(SubscribeToSegmentStatus {
            space: "sp".into(),
            segment: "*".into(),
            heartbeat_interval_seconds: 0,
        })
    };
    let mut ops = Vec::new();
    for _ in 0..FLOOD {
        ops.push(flooder.open(store, subscribe()).await);
    }
    bystander.produce(store, "sp", "sg", records(1, 5)).await.ok();
    let mut live = Vec::new();
    let mut refused = 0;
    for op in ops {
        match within(&runtime, "first item", op.next()).await {
            Some(streamkit_proto::client::ClientItem::Message(_)) => live.push(op),
            Some(streamkit_proto::client::ClientItem::End(end)) => {
                assert_eq!(
                    end.error().map(ToString::to_string).as_deref(),
                    Some("remote error: too many active streams")
                );
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((live.len(), refused), (LIMIT, FLOOD - LIMIT));
    let text = server.metrics().render();
    assert_eq!(
        metric(&text, "streamkit_errors_total{kind=\"too_many_streams\"}"),
        Some((FLOOD - LIMIT) as f64)
    );
    assert_eq!(metric(&text, "streamkit_streams_active"), Some(LIMIT as f64));
    for op in &live {
        op.cancel().await;
    }
    eventually(&runtime, "streams to be released", || {
        server.metrics().render().contains("streamkit_streams_active 0\n")
    })
    .await;
    // The connection serves new streams again.
    assert_eq!(flooder.call(store, Request::GetSpaces(GetSpaces {})).await.ok().names(), ["sp"]);
    server.shutdown().await;
}

/// A peer that asks for a large consume and never reads its socket stalls only itself: the server
/// stops sending to it once the socket is full (flow control), and other connections, on the same
/// store, keep producing and consuming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_does_not_stall_the_others() {
    let runtime = tokio_runtime();
    let server = serve(&runtime, memory_config()).await;
    let store = Uuid::new_v4();
    let writer = TestClient::connect(&runtime, &url(&server), &admin_token(), Codec::Cbor).await.unwrap();
    let payload = vec![7u8; 4096];
    for chunk in 0..4u64 {
        let batch =
            (chunk * 2500 + 1..=(chunk + 1) * 2500).map(|s| Record::new(s, payload.clone())).collect();
        writer.produce(store, "big", "sg", batch).await.ok();
    }

    // The slow peer: sends a consume of ~40 MiB and never reads.
    let mut slow =
        dial(&*runtime, &url(&server), &DialOptions::new(admin_token()).with_cbor(true)).await.unwrap();
    let clock = WallClock::default();
    let mut conn = ClientConnection::new(Codec::Cbor, MuxConfig::default(), clock.now(), 1);
    let consume = Request::ConsumeSegment(ConsumeSegment {
        space: "big".into(),
        segment: "sg".into(),
        ..ConsumeSegment::default()
    });
    conn.open(clock.now(), store, consume).unwrap();
    while let Some(frame) = conn.poll_transmit() {
        slow.feed(frame).await.unwrap();
    }
    slow.flush().await.unwrap();
    eventually(&runtime, "the slow peer's socket to fill", || {
        metric(&server.metrics().render(), "streamkit_sent_bytes_total").unwrap_or(0.0) > 1e6
    })
    .await;

    // Everyone else carries on, on the same store.
    for codec in CODECS {
        let other = TestClient::connect(&runtime, &url(&server), &admin_token(), codec).await.unwrap();
        let segment = format!("other-{codec:?}");
        other.produce(store, "big", &segment, records(1, 200)).await.ok();
        let consume = Request::ConsumeSegment(ConsumeSegment {
            space: "big".into(),
            segment: segment.clone(),
            ..ConsumeSegment::default()
        });
        assert_eq!(other.call(store, consume).await.ok().sequences().len(), 200);
    }
    let text = server.metrics().render();
    assert!(
        metric(&text, "streamkit_sent_bytes_total").unwrap() < 38.0 * 1024.0 * 1024.0,
        "the slow consume is held back, not buffered in full"
    );
    assert!(server.engine().queued() < 16, "the engine inbox is not backed up");
    drop(slow);
    server.shutdown().await;
}

/// A store whose directory cannot be created: each request gets `store unavailable`; after three
/// failed opens the circuit is open and requests fail fast without another attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unopenable_store_is_unavailable_and_trips_the_circuit_breaker() {
    let runtime = tokio_runtime();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, b"a file where the data directory should be").unwrap();
    let factory = StoreFactory::embedded(&data, RedbOptions::default());
    let server = serve(&runtime, ServerConfig::new(any_port(), verifier(), factory)).await;
    let store = Uuid::new_v4();
    for codec in CODECS {
        let client = TestClient::connect(&runtime, &url(&server), &admin_token(), codec).await.unwrap();
        for _ in 0..3 {
            let outcome = client.call(store, Request::GetSpaces(GetSpaces {})).await;
            assert_eq!(outcome.end, Err("remote error: store unavailable".to_owned()), "{codec:?}");
            let produce = client.produce(store, "sp", "sg", records(1, 2)).await;
            assert_eq!(produce.end, Err("remote error: store unavailable".to_owned()));
        }
        client.close().await;
    }
    // The SDK names the condition, and calls it transient.
    let once = streamkit::client::RetryPolicy { attempts: 1, ..Default::default() };
    let client =
        streamkit::Client::builder().token(admin_token()).retry(once).connect(url(&server)).await.unwrap();
    let error = client.peek(store, "sp", "sg").await.unwrap_err();
    assert_eq!(error.kind(), streamkit::ErrorKind::StoreUnavailable, "{error}");
    assert_eq!(error.to_string(), "remote error: store unavailable");
    assert!(error.is_retryable());
    client.close().await;
    let text = server.metrics().render();
    assert_eq!(metric(&text, "streamkit_errors_total{kind=\"store_open\"}"), Some(3.0), "{text}");
    assert_eq!(metric(&text, "streamkit_errors_total{kind=\"store_unavailable\"}"), Some(13.0));
    assert_eq!(
        metric(&text, "streamkit_operations_total{op=\"get_spaces\",outcome=\"rejected\"}"),
        Some(6.0)
    );
    assert_eq!(metric(&text, "streamkit_stores_open"), Some(0.0));
    server.shutdown().await;
}

/// Idle eviction (on by default, here with short timers): a store nobody uses is closed, and opened
/// again, with its data, by the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stores_are_closed_and_reopened_on_demand() {
    let runtime = tokio_runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::embedded(any_port(), verifier(), dir.path());
    assert!(config.idle_eviction.is_some(), "on by default");
    config.idle_eviction = Some(IdleEviction { ttl: Millis(200), check_interval: Millis(50) });
    let server = serve(&runtime, config).await;
    let store = Uuid::new_v4();
    let client = TestClient::connect(&runtime, &url(&server), &admin_token(), Codec::Json).await.unwrap();
    client.produce(store, "sp", "sg", records(1, 3)).await.ok();
    assert_eq!(metric(&server.metrics().render(), "streamkit_stores_open"), Some(1.0));
    eventually(&runtime, "the idle store to be closed", || {
        metric(&server.metrics().render(), "streamkit_stores_open") == Some(0.0)
    })
    .await;
    let consume = Request::ConsumeSegment(ConsumeSegment {
        space: "sp".into(),
        segment: "sg".into(),
        ..ConsumeSegment::default()
    });
    assert_eq!(client.call(store, consume).await.ok().sequences(), [1, 2, 3]);
    client.produce(store, "sp", "sg", records(4, 4)).await.ok();
    server.shutdown().await;
}
