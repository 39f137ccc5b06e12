//! Three `streamkit serve` child processes on loopback ports sharing PostgreSQL and NATS: worker
//! presence across them, then one of them killed (`kill -9`) while a producer writes through it: no
//! acknowledged record is lost (read back through another instance), and its worker disappears from
//! the other instances' inventories once its announcements are stale. Skipped with a printed reason
//! when PostgreSQL or NATS is absent.
#![cfg(all(feature = "cli", feature = "postgres", feature = "nats"))]

use crate::scaleout_support;
use crate::support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use scaleout_support::{TestSchema, nats_available, nats_url, pg_available};
use streamkit::runtime::{Runtime, RuntimeExt, TokioRuntime};
use streamkit_proto::api::{ConsumeSegment, Envelope, Record, Request, SubscribeWorkers};
use streamkit_proto::client::ClientItem;
use streamkit_proto::wire::{Codec, Message};
use support::{PATIENCE, SECRET, TestClient, admin_token, within};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_streamkit");

/// A `streamkit serve` child, killed when dropped.
struct Instance {
    child: Child,
    url: String,
    /// Its stdout, drained by a thread.
    stdout: std::sync::mpsc::Receiver<String>,
}

impl Instance {
    fn start(schema: &TestSchema, nats_prefix: &str) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--store", &schema.url, "--pg-schema", &schema.name])
            .args(["--bus", &nats_url(), "--nats-prefix", nats_prefix])
            .args(["--presence-interval-ms", "200", "--presence-stale-floor-ms", "1000"])
            .args(["--presence-sweep-ms", "100"])
            .env("STREAMKIT_JWT_SECRET", std::str::from_utf8(SECRET).unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = support::stdout_lines(&mut child);
        // Owned from here on: dropped (killed and reaped) on every path, a failed start included.
        let mut instance = Self { child, url: String::new(), stdout: lines };
        let (addr, _) = support::announced_address(&instance.stdout);
        instance.url = format!("ws://{addr}");
        instance
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

fn worker_ids(message: &Message) -> Option<Vec<Uuid>> {
    match message {
        Message::Envelope(Envelope::WorkerInventory(inventory)) => {
            Some(inventory.workers.iter().map(|w| w.worker_id).collect())
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_load_loses_no_acknowledged_record() {
    if !pg_available("an_instance_killed_mid_load") || !nats_available("an_instance_killed_mid_load") {
        return;
    }
    let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime::try_current().unwrap());
    let schema = TestSchema::new("killed");
    let prefix = format!("t{}.", Uuid::new_v4().simple());
    let mut instances: Vec<Instance> = (0..3).map(|_| Instance::start(&schema, &prefix)).collect();
    let mut clients = Vec::new();
    for instance in &instances {
        clients
            .push(TestClient::connect(&runtime, &instance.url, &admin_token(), Codec::Json).await.unwrap());
    }
    let store = Uuid::new_v4();

    // A worker on instance 0, observed from instance 1.
    let worker_id = Uuid::new_v4();
    let _worker = clients[0]
        .open(
            store,
            Request::SubscribeWorkers(SubscribeWorkers {
                worker_id,
                heartbeat_interval_seconds: 0,
                ..Default::default()
            }),
        )
        .await;
    let observer = clients[1].open(store, Request::SubscribeWorkers(SubscribeWorkers::default())).await;
    let mut latest: Vec<Uuid> = Vec::new();
    within(&runtime, "the worker seen on another instance", async {
        while !latest.contains(&worker_id) {
            match observer.next().await {
                Some(ClientItem::Message(m)) => {
                    if let Some(ids) = worker_ids(&m) {
                        latest = ids;
                    }
                }
                other => panic!("observer ended: {other:?}"),
            }
        }
    })
    .await;

    // A producer writes batches through instance 0 and remembers the highest acknowledged sequence.
    let acknowledged = Arc::new(AtomicU64::new(0));
    let producer = {
        let client = clients[0].clone();
        let acknowledged = acknowledged.clone();
        runtime.spawn(async move {
            let mut next = 1u64;
            loop {
                let batch: Vec<Record> =
                    (next..next + 20).map(|seq| Record::new(seq, format!("r{seq}"))).collect();
                let outcome = client.produce(store, "load", "seg", batch).await;
                for status in outcome.statuses() {
                    acknowledged.fetch_max(status.last_sequence, Ordering::SeqCst);
                }
                if outcome.end.is_err() {
                    return;
                }
                next += 20;
            }
        })
    };
    let deadline = Instant::now() + PATIENCE;
    while acknowledged.load(Ordering::SeqCst) < 200 {
        assert!(Instant::now() < deadline, "the producer made no progress");
        runtime.sleep(Duration::from_millis(5)).await;
    }
    instances[0].kill();
    within(&runtime, "the producer to notice the dead instance", producer).await.unwrap();
    let acked = acknowledged.load(Ordering::SeqCst);

    // Every acknowledged record is there, read through another instance, with no gap.
    let request = Request::ConsumeSegment(ConsumeSegment {
        space: "load".into(),
        segment: "seg".into(),
        ..Default::default()
    });
    let sequences = clients[2].call(store, request).await.ok().sequences();
    assert!(sequences.len() as u64 >= acked, "{} records stored, {acked} acknowledged", sequences.len());
    assert_eq!(sequences, (1..=sequences.len() as u64).collect::<Vec<_>>());
    eprintln!("killed mid-load: {acked} acknowledged, {} stored", sequences.len());

    // The dead instance's worker disappears from the other instances once its announcements are stale
    // (max(1 s floor, 3 x 200 ms) here).
    let killed_at = Instant::now();
    within(&runtime, "the dead instance's worker to disappear", async {
        while latest.contains(&worker_id) {
            match observer.next().await {
                Some(ClientItem::Message(m)) => {
                    if let Some(ids) = worker_ids(&m) {
                        latest = ids;
                    }
                }
                other => panic!("observer ended: {other:?}"),
            }
        }
    })
    .await;
    let gone_after = killed_at.elapsed();
    assert!(gone_after < Duration::from_secs(5), "took {gone_after:?}");
    drop(clients);
    instances.clear();
}
