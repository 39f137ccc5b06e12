//! A producer faster than its commits is slowed down through its socket, never cut off (Go's default
//! `wait` overload policy): a client writing 200,000 records on one produce stream as fast as the
//! socket takes them, against storage that is deliberately slow, gets every record committed, while
//! another stream of the same connection and another connection are still served. With Go's `close`
//! policy instead, a stream whose input stays stuck over its bound is closed, and only that stream.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use streamkit::runtime::{Runtime, RuntimeExt, TokioRuntime};
use streamkit::server::ServerConfig;
use streamkit::store::StoreFactory;
use streamkit_proto::api::{Peek, Record, Request};
use streamkit_proto::mux::OverloadPolicy;
use streamkit_proto::wire::Codec;
use support::*;
use uuid::Uuid;

const RECORDS: u64 = 200_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_producer_is_slowed_down_not_aborted() {
    let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime::try_current().unwrap());
    let store = Uuid::new_v4();
    let factory = StoreFactory::memory();
    // The store's data, shared with the server: holding its lock stalls every commit.
    let data = factory.memory_store(&store).unwrap();
    let stalling = Arc::new(AtomicBool::new(true));
    let staller = {
        let stalling = stalling.clone();
        std::thread::spawn(move || {
            while stalling.load(Ordering::Acquire) {
                let _ = data.with(|_| std::thread::sleep(Duration::from_millis(20)));
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut config = ServerConfig::new(any_port(), verifier(), factory);
    config.shutdown_grace = Duration::from_secs(2);
    let server = serve(&runtime, config).await;
    let producer = TestClient::connect(&runtime, &url(&server), &admin_token(), Codec::Json).await.unwrap();

    let records: Vec<Record> = (1..=RECORDS).map(|seq| Record::new(seq, vec![b'r'; 64])).collect();
    let produce = runtime.spawn({
        let producer = producer.clone();
        async move { producer.produce(store, "fast", "seg", records).await }
    });
    // While it runs: another stream of the producer's connection, and another connection.
    let bystander = TestClient::connect(&runtime, &url(&server), &admin_token(), Codec::Cbor).await.unwrap();
    let peek = || Request::Peek(Peek { space: "fast".into(), segment: "seg".into() });
    for _ in 0..5 {
        runtime.sleep(Duration::from_millis(300)).await;
        bystander.call(store, peek()).await.ok();
        producer.call(store, peek()).await.ok();
    }

    // About 5 s here; commits are stalled on purpose, so a loaded machine may take several times
    // that: the deadline only catches a producer that hangs.
    let outcome = match runtime.timeout(3 * PATIENCE, produce).await {
        Ok(outcome) => outcome.expect("produce task"),
        Err(_) => panic!("timed out: the produce to end"),
    };
    assert_eq!(outcome.end, Ok(()), "every record is taken, none refused");
    assert_eq!(outcome.statuses().last().map(|s| s.last_sequence), Some(RECORDS));
    stalling.store(false, Ordering::Release);
    staller.join().unwrap();
    let head = bystander.call(store, peek()).await.ok().entries();
    assert_eq!(head[0].sequence, RECORDS);
    let text = server.metrics().render();
    assert_eq!(metric(&text, "streamkit_errors_total{kind=\"stream_overload\"}"), None);
    server.shutdown().await;
}

/// `--overload-policy close` (Go's): a producer whose store does not commit anything fills its stream's
/// inbound queue; after 400 ms over its bound the stream is closed with
/// `stream receive buffer overloaded`, while another stream of the connection keeps being served and
/// the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_close_policy_a_stream_stuck_over_its_bound_is_closed() {
    let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime::try_current().unwrap());
    let (stuck, other) = (Uuid::new_v4(), Uuid::new_v4());
    let factory = StoreFactory::memory();
    let data = factory.memory_store(&stuck).unwrap();
    // Holding the store's lock until told to stalls every storage operation of that store.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _ = data.with(|_| released.recv_timeout(Duration::from_secs(120)));
    });
    let mut config = ServerConfig::new(any_port(), verifier(), factory);
    config.overload_policy = OverloadPolicy::GO_CLOSE;
    config.shutdown_grace = Duration::from_secs(1);
    let server = serve(&runtime, config).await;
    let client = TestClient::connect(&runtime, &url(&server), &admin_token(), Codec::Json).await.unwrap();
    // More records than the engine's window and the stream's queue (8,192) hold.
    let records: Vec<Record> = (1..=20_000).map(|seq| Record::new(seq, vec![b'r'; 64])).collect();
    let outcome =
        within(&runtime, "the stuck produce to be closed", client.produce(stuck, "sp", "seg", records)).await;
    let error = outcome.end.expect_err("the stuck stream is closed");
    assert!(error.contains("stream receive buffer overloaded"), "{error}");
    // The connection is still open and serves its other streams.
    assert!(client.is_closed().is_none());
    let produced =
        client.produce(other, "sp", "seg", (1..=10).map(|seq| Record::new(seq, "x")).collect()).await.ok();
    assert_eq!(produced.statuses().last().map(|s| s.last_sequence), Some(10));
    let text = server.metrics().render();
    assert_eq!(metric(&text, "streamkit_errors_total{kind=\"stream_overload\"}"), Some(1.0), "{text}");
    release.send(()).unwrap();
    holder.join().unwrap();
    server.shutdown().await;
}
