//! A load run over loopback with the core's client over WebSocket (not a test: it asserts only that
//! the data is there, and prints rates). Run it by hand, in release:
//!
//! ```text
//! cargo test --release -p streamkit --test it server_load -- --ignored --nocapture
//! ```
//!
//! Per codec, against an embedded store with fsync durability:
//! * produce 100,000 records of 256 bytes in batches of 500 over 16 segments (16 concurrent producers
//!   on 4 connections);
//! * produce one record per produce (16 concurrent producers);
//! * consume the 16 segments concurrently;
//!
//! and, for each produce phase, store transactions and fsyncs per second against records per second
//! (group commit: many produces per fsync).

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use streamkit::runtime::{Runtime, TokioRuntime};
use streamkit::server::{RunningServer, ServerConfig};
use streamkit_proto::api::{ConsumeSegment, Record, Request};
use streamkit_proto::wire::Codec;
use support::*;
use uuid::Uuid;

const SEGMENTS: usize = 16;
const CONNECTIONS: usize = 4;
const RECORD_BYTES: usize = 256;

struct Counters {
    fsyncs: f64,
    transactions: f64,
    commit_seconds: f64,
    commits: f64,
}

fn counters(server: &RunningServer) -> Counters {
    let text = server.metrics().render();
    Counters {
        fsyncs: metric(&text, "streamkit_store_fsyncs_total").unwrap_or(0.0),
        transactions: metric(&text, "streamkit_store_transactions_total").unwrap_or(0.0),
        commit_seconds: metric(&text, "streamkit_commit_latency_seconds_sum").unwrap_or(0.0),
        commits: metric(&text, "streamkit_commit_latency_seconds_count").unwrap_or(0.0),
    }
}

fn report(phase: &str, codec: Codec, records: usize, elapsed: Duration, before: &Counters, after: &Counters) {
    let secs = elapsed.as_secs_f64();
    let fsyncs = after.fsyncs - before.fsyncs;
    let transactions = after.transactions - before.transactions;
    println!(
        "{codec:?} {phase}: {records} records in {secs:.2} s = {:.0} records/s, {:.1} MB/s; {transactions:.0} transactions, \
         {fsyncs:.0} fsyncs = {:.0} fsyncs/s, {:.1} records per fsync; mean commit latency {:.1} ms",
        records as f64 / secs,
        (records * RECORD_BYTES) as f64 / secs / 1e6,
        fsyncs / secs,
        records as f64 / fsyncs.max(1.0),
        (after.commit_seconds - before.commit_seconds) / (after.commits - before.commits).max(1.0) * 1e3,
    );
}

/// 16 producers (one per segment) spread over 4 connections, each producing `per_segment` records
/// in produces of `batch` records.
async fn produce_phase(clients: &[TestClient], store: Uuid, space: &str, per_segment: usize, batch: usize) {
    let payload = vec![0xA5u8; RECORD_BYTES];
    let mut tasks = Vec::new();
    for segment in 0..SEGMENTS {
        let client = clients[segment % clients.len()].clone();
        let payload = payload.clone();
        let space = space.to_owned();
        tasks.push(tokio::spawn(async move {
            let name = format!("seg-{segment:02}");
            let mut next = 1u64;
            while next <= per_segment as u64 {
                let last = (next + batch as u64 - 1).min(per_segment as u64);
                let records = (next..=last).map(|s| Record::new(s, payload.clone())).collect();
                let outcome = client.produce(store, &space, &name, records).await.ok();
                assert_eq!(outcome.statuses().last().map(|s| s.last_sequence), Some(last));
                next = last + 1;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn consume_phase(clients: &[TestClient], store: Uuid, space: &str, per_segment: usize) {
    let mut tasks = Vec::new();
    for segment in 0..SEGMENTS {
        let client = clients[segment % clients.len()].clone();
        let space = space.to_owned();
        tasks.push(tokio::spawn(async move {
            let consume = Request::ConsumeSegment(ConsumeSegment {
                space,
                segment: format!("seg-{segment:02}"),
                ..ConsumeSegment::default()
            });
            let got = client.call(store, consume).await.ok().entries().len();
            assert_eq!(got, per_segment);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load run: cargo test --release -p streamkit --test it server_load -- --ignored --nocapture"]
async fn load_over_loopback() {
    let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime::try_current().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::embedded(any_port(), verifier(), dir.path());
    // STREAMKIT_LOAD_DURABILITY=none measures without fsync (what the disk costs).
    if let Ok(durability) = std::env::var("STREAMKIT_LOAD_DURABILITY") {
        config.durability = durability.parse().unwrap();
    }
    println!("durability: {}", config.durability);
    let server = serve(&runtime, config).await;
    let store = Uuid::new_v4();
    for codec in CODECS {
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            clients.push(TestClient::connect(&runtime, &url(&server), &admin_token(), codec).await.unwrap());
        }
        let batched = format!("batched-{codec:?}");
        let per_segment = 100_000 / SEGMENTS;
        let before = counters(&server);
        let started = Instant::now();
        produce_phase(&clients, store, &batched, per_segment, 500).await;
        report(
            "produce, batches of 500",
            codec,
            per_segment * SEGMENTS,
            started.elapsed(),
            &before,
            &counters(&server),
        );

        let started = Instant::now();
        consume_phase(&clients, store, &batched, per_segment).await;
        let elapsed = started.elapsed();
        println!(
            "{codec:?} consume: {} records in {:.2} s = {:.0} records/s",
            per_segment * SEGMENTS,
            elapsed.as_secs_f64(),
            (per_segment * SEGMENTS) as f64 / elapsed.as_secs_f64()
        );

        let single = format!("single-{codec:?}");
        let per_segment = 1_250;
        let before = counters(&server);
        let started = Instant::now();
        produce_phase(&clients, store, &single, per_segment, 1).await;
        report(
            "produce, 1 record per produce",
            codec,
            per_segment * SEGMENTS,
            started.elapsed(),
            &before,
            &counters(&server),
        );
        for client in &clients {
            client.close().await;
        }
    }
    server.shutdown().await;
}
