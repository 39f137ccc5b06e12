//! A producer faster than its commits is slowed down through its socket, never cut off (Go's default
//! `wait` overload policy): a client writing 200,000 records on one produce stream as fast as the
//! socket takes them, against storage that is deliberately slow, gets every record committed, while
//! another stream of the same connection and another connection are still served.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use streamkit::runtime::{Runtime, RuntimeExt, TokioRuntime};
use streamkit::server::ServerConfig;
use streamkit::store::StoreFactory;
use streamkit_core::api::{Peek, Record, Request};
use streamkit_core::wire::Codec;
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
