//! Scale-out: three server instances (in this process, on loopback ports) sharing one PostgreSQL
//! schema and a bus (NATS, or PostgreSQL LISTEN/NOTIFY). Racing producers through different
//! instances, produce on one and consume/subscribe on another, a lease held through one instance
//! refused through another, worker presence across instances, a space cursor under concurrent
//! writers on two instances, a bus outage and a database restart. Skipped with a printed reason when
//! PostgreSQL or NATS is absent. (Instances in child processes, one of them killed, are in
//! `scaleout_processes.rs`.)
#![cfg(all(feature = "postgres", feature = "nats"))]

use crate::scaleout_support;
use crate::support;

use std::sync::Arc;
use std::time::Duration;

use scaleout_support::{PrivateNats, PrivatePostgres, TestSchema, nats_available, nats_url, pg_available};
use streamkit::bus::NatsConfig;
use streamkit::runtime::{Runtime, RuntimeExt, TokioRuntime};
use streamkit::server::{BusKind, RunningServer, ServerConfig};
use streamkit::store::PgConfig;
use streamkit_proto::Millis;
use streamkit_proto::api::{
    ConsumeSegment, ConsumeSpace, Entry, Envelope, LeaseAcquire, LeaseRelease, Peek, Record, Request,
    SubscribeToSegmentStatus, SubscribeWorkers,
};
use streamkit_proto::client::ClientItem;
use streamkit_proto::stream::StreamEnd;
use streamkit_proto::wire::{Codec, Message};
use support::*;
use uuid::Uuid;

fn runtime() -> Arc<dyn Runtime> {
    Arc::new(TokioRuntime::try_current().unwrap())
}

fn nats_bus() -> BusKind {
    // A subject prefix of its own: tests sharing the NATS server do not hear each other.
    let prefix = format!("t{}.", Uuid::new_v4().simple());
    BusKind::Nats(NatsConfig { subject_prefix: prefix, ..NatsConfig::new(nats_url()) })
}

fn instance_config(database: PgConfig, bus: BusKind) -> ServerConfig {
    let mut config = ServerConfig::postgres(any_port(), verifier(), database);
    config.bus_kind = bus;
    config.idle_eviction = None;
    config.shutdown_grace = Duration::from_secs(2);
    config.node.presence_announce_interval = Millis(200);
    config.node.presence_stale_floor = Millis(1_000);
    config.node.presence_sweep_interval = Millis(100);
    config
}

async fn start_instances(
    runtime: &Arc<dyn Runtime>,
    database: &PgConfig,
    bus: &BusKind,
    n: usize,
) -> Vec<RunningServer> {
    let mut servers = Vec::new();
    for _ in 0..n {
        servers.push(serve(runtime, instance_config(database.clone(), bus.clone())).await);
    }
    servers
}

async fn clients(runtime: &Arc<dyn Runtime>, servers: &[RunningServer]) -> Vec<TestClient> {
    let mut clients = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let codec = if i % 2 == 0 { Codec::Json } else { Codec::Cbor };
        clients.push(TestClient::connect(runtime, &url(server), &admin_token(), codec).await.unwrap());
    }
    clients
}

fn consume_segment(space: &str, segment: &str) -> Request {
    Request::ConsumeSegment(ConsumeSegment {
        space: space.into(),
        segment: segment.into(),
        ..Default::default()
    })
}

fn consume_space(space: &str, after: Option<&Entry>) -> Request {
    let offset = after.map(Entry::space_offset).unwrap_or_default();
    Request::ConsumeSpace(ConsumeSpace { space: space.into(), offset, ..Default::default() })
}

fn subscribe(space: &str, segment: &str) -> Request {
    Request::SubscribeToSegmentStatus(SubscribeToSegmentStatus {
        space: space.into(),
        segment: segment.into(),
        heartbeat_interval_seconds: 0,
    })
}

/// The last sequence of a segment, read through `client`.
async fn head(client: &TestClient, store: Uuid, space: &str, segment: &str) -> u64 {
    let peek = Request::Peek(Peek { space: space.into(), segment: segment.into() });
    client.call(store, peek).await.ok().entries().last().map_or(0, |e| e.sequence)
}

/// Appends `batches` batches of `batch` records to one segment through `client`, retrying with the
/// fresh head when another producer got there first. Returns the sequence errors met.
async fn append(
    client: &TestClient,
    store: Uuid,
    segment: &str,
    batches: usize,
    batch: u64,
    tag: &str,
) -> usize {
    let mut conflicts = 0;
    let mut written = 0;
    while written < batches {
        let last = head(client, store, "race", segment).await;
        let records = (last + 1..=last + batch).map(|seq| Record::new(seq, format!("{tag}-{seq}"))).collect();
        let outcome = client.produce(store, "race", segment, records).await;
        match outcome.end {
            Ok(()) => written += 1,
            Err(error) => {
                assert!(error.contains("sequence"), "only sequence conflicts are expected: {error}");
                conflicts += 1;
            }
        }
    }
    conflicts
}

/// Waits for a status of `segment` with `last_sequence >= last` on a subscription.
async fn wait_status(runtime: &Arc<dyn Runtime>, op: &Op, segment: &str, last: u64) {
    within(runtime, "status update through the bus", async {
        loop {
            match op.next().await {
                Some(ClientItem::Message(Message::Status(s)))
                    if s.segment == segment && s.last_sequence >= last =>
                {
                    return;
                }
                Some(ClientItem::Message(_)) => {}
                other => panic!("subscription ended: {other:?}"),
            }
        }
    })
    .await;
}

fn worker_ids(message: &Message) -> Option<Vec<Uuid>> {
    match message {
        Message::Envelope(Envelope::WorkerInventory(inventory)) => {
            Some(inventory.workers.iter().map(|w| w.worker_id).collect())
        }
        _ => None,
    }
}

/// Waits until an observer's latest inventory satisfies `want`.
async fn wait_inventory(
    runtime: &Arc<dyn Runtime>,
    observer: &Op,
    what: &str,
    want: impl Fn(&[Uuid]) -> bool,
) {
    within(runtime, what, async {
        loop {
            match observer.next().await {
                Some(ClientItem::Message(m)) => {
                    if let Some(ids) = worker_ids(&m)
                        && want(&ids)
                    {
                        return;
                    }
                }
                other => panic!("observer ended: {other:?}"),
            }
        }
    })
    .await;
}

fn worker(worker_id: Uuid) -> Request {
    Request::SubscribeWorkers(SubscribeWorkers {
        worker_id,
        heartbeat_interval_seconds: 0,
        ..Default::default()
    })
}

async fn racing_producers_leave_exactly_one_to_n(clients: &[TestClient], store: Uuid) {
    let (batches, batch) = (6, 5);
    let mut tasks = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let client = client.clone();
        tasks.push(
            runtime()
                .spawn(async move { append(&client, store, "seg", batches, batch, &format!("p{i}")).await }),
        );
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.unwrap();
    }
    let total = clients.len() as u64 * batches as u64 * batch;
    for client in clients {
        let entries = client.call(store, consume_segment("race", "seg")).await.ok().entries();
        let sequences: Vec<u64> = entries.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (1..=total).collect::<Vec<_>>(), "exactly 1..N through every instance");
    }
    eprintln!("racing producers: {total} records, {conflicts} sequence conflicts");
}

async fn produce_on_one_consume_and_subscribe_on_others(
    runtime: &Arc<dyn Runtime>,
    clients: &[TestClient],
    store: Uuid,
) {
    let one = clients[1].open(store, subscribe("sub", "a")).await;
    let every = clients[2].open(store, subscribe("sub", "*")).await;
    // The snapshot first (empty store: nothing, or zero statuses), then live updates: make sure the
    // subscriptions are active before producing by waiting for a produce to show up.
    clients[0].produce(store, "sub", "a", records(1, 3)).await.ok();
    wait_status(runtime, &one, "a", 3).await;
    wait_status(runtime, &every, "a", 3).await;
    clients[0].produce(store, "sub", "b", records(1, 2)).await.ok();
    clients[0].produce(store, "sub", "a", records(4, 5)).await.ok();
    wait_status(runtime, &every, "b", 2).await;
    wait_status(runtime, &one, "a", 5).await;
    wait_status(runtime, &every, "a", 5).await;
    let consumed = clients[2].call(store, consume_segment("sub", "a")).await.ok().sequences();
    assert_eq!(consumed, [1, 2, 3, 4, 5]);
    one.cancel().await;
    every.cancel().await;
}

async fn a_lease_is_cluster_wide(clients: &[TestClient], store: Uuid) {
    let acquire = |holder: &str| {
        Request::LeaseAcquire(LeaseAcquire { key: "leader".into(), holder: holder.into(), ttl_seconds: 30 })
    };
    let release =
        |holder: &str| Request::LeaseRelease(LeaseRelease { key: "leader".into(), holder: holder.into() });
    let ok = |outcome: Outcome| outcome.ok().leases()[0].ok;
    assert!(ok(clients[0].call(store, acquire("a")).await), "a acquires through instance 0");
    assert!(!ok(clients[1].call(store, acquire("b")).await), "b is refused through instance 1");
    assert!(!ok(clients[2].call(store, release("b")).await), "b cannot release a's lease");
    assert!(ok(clients[2].call(store, release("a")).await), "a releases through instance 2");
    assert!(ok(clients[1].call(store, acquire("b")).await), "then b acquires through instance 1");
    assert!(!ok(clients[0].call(store, acquire("a")).await));
}

async fn worker_presence_across_instances(runtime: &Arc<dyn Runtime>, clients: &[TestClient], store: Uuid) {
    let observer = clients[2].open(store, Request::SubscribeWorkers(SubscribeWorkers::default())).await;
    let (w0, w1) = (Uuid::new_v4(), Uuid::new_v4());
    let worker0 = clients[0].open(store, worker(w0)).await;
    let worker1 = clients[1].open(store, worker(w1)).await;
    wait_inventory(runtime, &observer, "both workers on the observer's instance", |ids| {
        ids.contains(&w0) && ids.contains(&w1)
    })
    .await;
    // A late observer on another instance gets the whole inventory at once.
    let late = clients[0].open(store, Request::SubscribeWorkers(SubscribeWorkers::default())).await;
    wait_inventory(runtime, &late, "full inventory for a late observer", |ids| {
        ids.contains(&w0) && ids.contains(&w1)
    })
    .await;
    worker1.cancel().await;
    wait_inventory(runtime, &observer, "a worker that left disappears everywhere", |ids| {
        ids.contains(&w0) && !ids.contains(&w1)
    })
    .await;
    worker0.cancel().await;
    observer.cancel().await;
    late.cancel().await;
}

/// Writers on two instances append to one space while a reader on the third follows it with a
/// cursor: what the reader collected, resuming after its last entry each time, must be exactly the
/// space read in one go at the end (nothing skipped, nothing twice).
async fn a_space_cursor_never_skips(clients: &[TestClient], store: Uuid) {
    let mut writers = Vec::new();
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for (i, client) in clients[..2].iter().enumerate() {
        let client = client.clone();
        let finished = finished.clone();
        writers.push(runtime().spawn(async move {
            for seq in 1..=40u64 {
                let segment = format!("w{i}-{}", seq % 3);
                let last = head(&client, store, "cursor", &segment).await;
                client
                    .produce(store, "cursor", &segment, vec![Record::new(last + 1, format!("{seq}"))])
                    .await
                    .ok();
            }
            finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
    }
    let reader = &clients[2];
    let mut collected: Vec<Entry> = Vec::new();
    let mut done = false;
    while !done {
        done = finished.load(std::sync::atomic::Ordering::SeqCst) == writers.len();
        let batch = reader.call(store, consume_space("cursor", collected.last())).await.ok().entries();
        collected.extend(batch);
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let batch = reader.call(store, consume_space("cursor", collected.last())).await.ok().entries();
    collected.extend(batch);
    let whole = reader.call(store, consume_space("cursor", None)).await.ok().entries();
    assert_eq!(whole.len(), 80);
    let key = |e: &Entry| (e.segment.clone(), e.sequence);
    assert_eq!(
        collected.iter().map(key).collect::<Vec<_>>(),
        whole.iter().map(key).collect::<Vec<_>>(),
        "the cursor skipped or repeated entries"
    );
    assert!(whole.windows(2).all(|w| w[0].timestamp < w[1].timestamp), "the shared clock orders the space");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_postgres_and_nats() {
    if !pg_available("three_instances_on_postgres_and_nats")
        || !nats_available("three_instances_on_postgres_and_nats")
    {
        return;
    }
    let runtime = runtime();
    let schema = TestSchema::new("three_nats");
    let servers = start_instances(&runtime, &schema.config(), &nats_bus(), 3).await;
    let clients = clients(&runtime, &servers).await;
    let store = Uuid::new_v4();
    racing_producers_leave_exactly_one_to_n(&clients, store).await;
    produce_on_one_consume_and_subscribe_on_others(&runtime, &clients, store).await;
    a_lease_is_cluster_wide(&clients, store).await;
    worker_presence_across_instances(&runtime, &clients, store).await;
    a_space_cursor_never_skips(&clients, store).await;
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_the_postgres_bus() {
    if !pg_available("three_instances_on_the_postgres_bus") {
        return;
    }
    let runtime = runtime();
    let schema = TestSchema::new("three_pgbus");
    let servers = start_instances(&runtime, &schema.config(), &BusKind::Postgres, 3).await;
    let clients = clients(&runtime, &servers).await;
    let store = Uuid::new_v4();
    produce_on_one_consume_and_subscribe_on_others(&runtime, &clients, store).await;
    worker_presence_across_instances(&runtime, &clients, store).await;
    a_lease_is_cluster_wide(&clients, store).await;
    for server in servers {
        server.shutdown().await;
    }
}

/// Reads a subscription until it ends; its error.
async fn ended(runtime: &Arc<dyn Runtime>, op: &Op) -> String {
    within(runtime, "the subscription to be closed", async {
        loop {
            match op.next().await {
                Some(ClientItem::Message(_)) => {}
                Some(ClientItem::End(StreamEnd::Failed(error))) => return error.to_string(),
                other => panic!("unexpected end {other:?}"),
            }
        }
    })
    .await
}

/// Subscribes on `client` until the bus takes it (it refuses while reconnecting); the subscription,
/// proven live by a produce through `producer` reaching it.
async fn resubscribe(
    runtime: &Arc<dyn Runtime>,
    client: &TestClient,
    producer: &TestClient,
    store: Uuid,
    segment: &str,
) -> Op {
    within(runtime, "a subscription after the bus came back", async {
        loop {
            let op = client.open(store, subscribe("sub", segment)).await;
            runtime.sleep(Duration::from_millis(200)).await;
            let last = head(producer, store, "sub", segment).await;
            producer.produce(store, "sub", segment, records(last + 1, last + 1)).await.ok();
            let got = runtime
                .timeout(Duration::from_secs(2), async {
                    loop {
                        match op.next().await {
                            Some(ClientItem::Message(Message::Status(s))) if s.last_sequence == last + 1 => {
                                return true;
                            }
                            Some(ClientItem::Message(_)) => {}
                            _ => return false,
                        }
                    }
                })
                .await;
            if got == Ok(true) {
                return op;
            }
            op.cancel().await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_closes_subscribers_and_produce_keeps_working() {
    if !pg_available("a_nats_outage") {
        return;
    }
    let Some(mut nats) = PrivateNats::start("a_nats_outage") else { return };
    let runtime = runtime();
    let schema = TestSchema::new("nats_outage");
    let bus = BusKind::Nats(NatsConfig::new(nats.url()));
    let servers = start_instances(&runtime, &schema.config(), &bus, 2).await;
    let clients = clients(&runtime, &servers).await;
    let store = Uuid::new_v4();
    let sub = resubscribe(&runtime, &clients[1], &clients[0], store, "a").await;

    nats.stop();
    let error = ended(&runtime, &sub).await;
    assert!(error.contains("nats bus"), "subscribers are told why: {error}");
    // Produce keeps working without the bus (the notification circuit breaker counts the failures).
    let last = head(&clients[0], store, "sub", "a").await;
    let outcome = clients[0].produce(store, "sub", "a", records(last + 1, last + 3)).await.ok();
    assert_eq!(outcome.statuses().last().map(|s| s.last_sequence), Some(last + 3));

    nats.restart();
    let sub = resubscribe(&runtime, &clients[1], &clients[0], store, "a").await;
    sub.cancel().await;
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_is_survived() {
    let Some(pg) = PrivatePostgres::start("a_database_restart_is_survived") else { return };
    let runtime = runtime();
    let mut database = PgConfig::new(pg.url());
    database.connect_timeout = Duration::from_secs(2);
    let servers = start_instances(&runtime, &database, &BusKind::Postgres, 2).await;
    let clients = clients(&runtime, &servers).await;
    let store = Uuid::new_v4();
    clients[0].produce(store, "sub", "a", records(1, 5)).await.ok();
    let sub = resubscribe(&runtime, &clients[1], &clients[0], store, "a").await;

    pg.stop();
    let error = ended(&runtime, &sub).await;
    assert!(error.contains("postgres bus"), "subscribers are told why: {error}");
    let failed = clients[0].produce(store, "sub", "a", records(7, 7)).await;
    let error = failed.end.unwrap_err();
    assert!(error.contains("unavailable"), "{error}");

    pg.restart();
    // Later produces work (the store's circuit breaker may refuse for a moment after the failures).
    within(&runtime, "a produce after the restart", async {
        loop {
            let peek = Request::Peek(Peek { space: "sub".into(), segment: "a".into() });
            let peeked = clients[0].call(store, peek).await;
            if peeked.end.is_ok() {
                let last = peeked.entries().last().map_or(0, |e| e.sequence);
                if clients[0].produce(store, "sub", "a", records(last + 1, last + 1)).await.end.is_ok() {
                    return;
                }
            }
            runtime.sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let sub = resubscribe(&runtime, &clients[1], &clients[0], store, "a").await;
    sub.cancel().await;
    let sequences = clients[1].call(store, consume_segment("sub", "a")).await.ok().sequences();
    assert_eq!(sequences, (1..=sequences.len() as u64).collect::<Vec<_>>());
    assert!(sequences.len() >= 7);
    for server in servers {
        server.shutdown().await;
    }
}
