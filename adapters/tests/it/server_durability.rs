//! Invariant 2 (an acknowledged produce survives `kill -9`) and graceful shutdown, with the embedded
//! store and fsync durability.
//!
//! The kill test runs the server in a child process: this test binary re-executes itself with the
//! ignored helper test `child_server_process` selected, which starts a server on the given data
//! directory and prints its address. Producers stream into it, the child is killed with SIGKILL while
//! they are in flight, and a fresh server on the same directory must hold every acknowledged record,
//! with each segment still exactly 1..N.

use crate::support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use streamkit::runtime::{Runtime, RuntimeExt, TokioRuntime};
use streamkit::server::{Durability, RunningServer, ServerConfig};
use streamkit_proto::api::{ConsumeSegment, Request};
use streamkit_proto::wire::Codec;
use support::*;
use uuid::Uuid;

/// Environment variable naming the child server's data directory.
const CHILD_DATA: &str = "STREAMKIT_TEST_CHILD_DATA";
const STORE: Uuid = Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0001);
const PRODUCERS: usize = 4;

/// Kills the child server if the test fails before it does (a panicking test must not leave it
/// running, nor the reader of its output blocked).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tokio_runtime() -> Arc<dyn Runtime> {
    Arc::new(TokioRuntime::try_current().unwrap())
}

fn durable_config(data: &Path) -> ServerConfig {
    let mut config = ServerConfig::embedded(any_port(), verifier(), data);
    config.durability = Durability::Fsync;
    config.shutdown_grace = Duration::from_secs(2);
    config
}

/// Runs in the child process only (selected by the parent with `--ignored --exact`).
#[test]
#[ignore = "helper process of acknowledged_produces_survive_sigkill"]
fn child_server_process() {
    let data = std::env::var(CHILD_DATA).expect("run by acknowledged_produces_survive_sigkill");
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    tokio.block_on(async {
        let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime::try_current().unwrap());
        let server = serve(&runtime, durable_config(Path::new(&data))).await;
        println!("LISTENING {}", server.local_addr());
        std::future::pending::<()>().await;
    });
}

/// Producer `index` appends batches to its own segment until `stop` or an error; returns the last
/// acknowledged sequence. Odd producers send one record per produce, even ones batches of 25. Each
/// adds one to `started` at its first acknowledgement.
async fn produce_until_failure(
    client: TestClient,
    index: usize,
    stop: Arc<AtomicBool>,
    started: Arc<AtomicUsize>,
) -> u64 {
    let segment = format!("seg-{index}");
    let batch = if index.is_multiple_of(2) { 25 } else { 1 };
    let mut acknowledged = 0;
    while !stop.load(Ordering::Acquire) {
        let outcome =
            client.produce(STORE, "sp", &segment, records(acknowledged + 1, acknowledged + batch)).await;
        // Whatever the outcome, every status is an acknowledgement of records up to its sequence.
        if let Some(last) = outcome.statuses().last() {
            assert!(last.last_sequence > acknowledged && last.last_sequence <= acknowledged + batch);
            if acknowledged == 0 {
                started.fetch_add(1, Ordering::AcqRel);
            }
            acknowledged = last.last_sequence;
        }
        if outcome.end.is_err() {
            break;
        }
    }
    acknowledged
}

/// Waits until every producer has had records acknowledged.
async fn wait_for_every_producer(runtime: &Arc<dyn Runtime>, started: &AtomicUsize) {
    within(runtime, "every producer's first acknowledgement", async {
        while started.load(Ordering::Acquire) < PRODUCERS {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Every segment holds exactly 1..N with N at least what was acknowledged.
async fn check_stored(runtime: &Arc<dyn Runtime>, server: &RunningServer, acknowledged: &[u64]) -> u64 {
    let client = TestClient::connect(runtime, &url(server), &admin_token(), Codec::Cbor).await.unwrap();
    let mut total = 0;
    for (index, &acked) in acknowledged.iter().enumerate() {
        let consume = Request::ConsumeSegment(ConsumeSegment {
            space: "sp".into(),
            segment: format!("seg-{index}"),
            ..ConsumeSegment::default()
        });
        let stored = client.call(STORE, consume).await.ok().sequences();
        let n = stored.len() as u64;
        assert_eq!(stored, (1..=n).collect::<Vec<_>>(), "segment {index} is exactly 1..N");
        assert!(n >= acked, "segment {index}: {acked} acknowledged but only {n} stored");
        total += n;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_produces_survive_sigkill() {
    let runtime = tokio_runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "server_durability::child_server_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DATA, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let addr = within(
        &runtime,
        "the child server to listen",
        runtime.spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                // libtest prints `test child_server_process ... ` before the line, on the same line.
                .find_map(|line| line.split_once("LISTENING ").map(|(_, addr)| addr.trim().to_owned()))
        }),
    )
    .await
    .unwrap()
    .expect("the child printed its address");

    let (stop, started) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let mut producers = Vec::new();
    for index in 0..PRODUCERS {
        let client =
            TestClient::connect(&runtime, &format!("ws://{addr}"), &admin_token(), CODECS[index % 2])
                .await
                .unwrap();
        producers.push(tokio::spawn(produce_until_failure(client, index, stop.clone(), started.clone())));
    }
    // Once every producer has acknowledged records (a loaded machine can take a while), let them
    // write a little longer, then kill the server mid-flight.
    wait_for_every_producer(&runtime, &started).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let mut acknowledged = Vec::new();
    for producer in producers {
        acknowledged.push(within(&runtime, "producer to fail", producer).await.unwrap());
    }
    assert!(acknowledged.iter().all(|&n| n > 0), "every producer got acknowledgements: {acknowledged:?}");

    let server = serve(&runtime, durable_config(dir.path())).await;
    let stored = check_stored(&runtime, &server, &acknowledged).await;
    assert!(stored >= acknowledged.iter().sum());
    server.shutdown().await;
}

/// Producers in flight while the server shuts down gracefully: each produce gets its statuses or an
/// error, never a status for data that is not stored, and the clients get a close frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_keeps_every_acknowledged_produce() {
    let runtime = tokio_runtime();
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&runtime, durable_config(dir.path())).await;
    let (stop, started) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let mut producers = Vec::new();
    let mut clients = Vec::new();
    for index in 0..PRODUCERS {
        let client =
            TestClient::connect(&runtime, &url(&server), &admin_token(), CODECS[index % 2]).await.unwrap();
        clients.push(client.clone());
        producers.push(tokio::spawn(produce_until_failure(client, index, stop.clone(), started.clone())));
    }
    let metrics = server.metrics().clone();
    // Shut down while the producers are committing.
    wait_for_every_producer(&runtime, &started).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    within(&runtime, "shutdown", server.shutdown()).await;
    let mut acknowledged = Vec::new();
    for producer in producers {
        acknowledged.push(within(&runtime, "producer to end", producer).await.unwrap());
    }
    for client in &clients {
        assert_eq!(client.closed().await, "muxer closed", "a close frame, not a dropped socket");
    }
    let text = metrics.render();
    assert_eq!(metric(&text, "streamkit_stores_open"), Some(0.0), "stores closed");
    assert_eq!(metric(&text, "streamkit_connections_active"), Some(0.0));
    assert!(metric(&text, "streamkit_store_fsyncs_total").unwrap() > 0.0);

    let server = serve(&runtime, durable_config(dir.path())).await;
    check_stored(&runtime, &server, &acknowledged).await;
    server.shutdown().await;
}
