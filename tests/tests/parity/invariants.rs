//! ARCHITECTURE.md invariants 1–4 over real sockets, with several connections of both codecs at once.
//!
//! 1. racing producers leave a segment exactly 1..N, and every stored record is the one whose produce
//!    was acknowledged;
//! 2. an acknowledged produce survives `kill -9` of the `streamkit serve` process;
//! 3. a space cursor advanced while writers run never skips an entry;
//! 4. a subscriber's `last_sequence` per segment never goes backwards and the last update is not lost.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use streamkit::client::{Client, ClientOptions, ErrorKind, StatusStream, SubscribeOptions, static_token};
use streamkit::core::api::Entry;
use streamkit::core::lexkey::LexKey;
use streamkit::runtime::{Runtime, RuntimeExt};
use streamkit_tests::process::ChildServer;
use streamkit_tests::{Config, Env, Transport, admin_token, collect, small};

use super::common::*;

across_all!(@one tokio_json, TOKIO_JSON, racing_producers_leave_one_to_n, space_cursor_never_skips, subscriber_sequences_never_go_backwards);
across_all!(@one smol_cbor, SMOL_CBOR, racing_producers_leave_one_to_n, space_cursor_never_skips, subscriber_sequences_never_go_backwards);
across_all!(@one async_std_json, ASYNC_STD_JSON, racing_producers_leave_one_to_n, space_cursor_never_skips);

/// Clients of both codecs, each with its own connection.
async fn mixed_clients(env: &Env, n: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for i in 0..n {
        let transport = if i.is_multiple_of(2) { Transport::Json } else { Transport::Cbor };
        clients.push(env.new_client_via(transport, ClientOptions::default()).await);
    }
    clients
}

/// Invariant 1: four writers on four connections race for the head of one segment (peek, then produce
/// the next 1–4 records). Whatever interleaving, the segment is exactly 1..N, the acknowledged ranges
/// are disjoint and cover it, and each stored record carries the payload of the writer whose produce
/// was acknowledged for it.
async fn racing_producers_leave_one_to_n(env: Env) {
    let target: u64 = if small() { 60 } else { 200 };
    let clients = mixed_clients(&env, 4).await;
    let writers = clients.iter().enumerate().map(|(id, client)| {
        let env = env.clone();
        async move {
            let mut acknowledged = Vec::new();
            let mut conflicts = 0;
            for round in 0u64.. {
                let head = client.peek(env.store(), "race", "seg").await.expect("peek").sequence;
                if head >= target {
                    break;
                }
                let batch = 1 + (round + id as u64) % 4;
                let range = head + 1..=head + batch;
                let tag = id;
                let stream = client.produce(
                    env.store(),
                    "race",
                    "seg",
                    records(range.clone(), move |seq| format!("w{tag}-{seq}").into_bytes()),
                );
                let (statuses, error) = collect(env.runtime(), stream).await;
                match error {
                    None => {
                        assert_eq!(statuses.len(), 1, "one chunk, one status");
                        assert_eq!(statuses[0].last_sequence, *range.end());
                        acknowledged.push(range);
                    }
                    Some(error) => {
                        assert!(matches!(error.kind(), ErrorKind::SequenceConflict { .. }), "{error}");
                        assert!(error.to_string().contains("sequence gap: expected"), "{error}");
                        assert!(statuses.is_empty());
                        conflicts += 1;
                    }
                }
            }
            (id, acknowledged, conflicts)
        }
    });
    let results = env.step("racing writers", join_all(writers)).await;
    let mut owner = BTreeMap::new();
    for (id, ranges, conflicts) in &results {
        eprintln!("writer {id}: {} produces acknowledged, {conflicts} conflicts", ranges.len());
        for range in ranges {
            for seq in range.clone() {
                assert!(owner.insert(seq, *id).is_none(), "sequence {seq} acknowledged twice");
            }
        }
    }
    let entries = consume_segment(&env, env.client(), segment_request("race", "seg")).await;
    let n = entries.len() as u64;
    assert!(n >= target);
    assert_eq!(sequences(&entries), (1..=n).collect::<Vec<_>>(), "exactly 1..N");
    assert_eq!(
        owner.keys().copied().collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>(),
        "every stored record was acknowledged"
    );
    for entry in &entries {
        let expected = format!("w{}-{}", owner[&entry.sequence], entry.sequence);
        assert_eq!(entry.payload.as_deref(), Some(expected.as_bytes()), "the acknowledged writer's record");
    }
}

/// Invariant 3: while three writers append small batches to three segments of a space, a reader keeps
/// reading the space from its cursor (`offset = last.space_offset()`). After the writers stop and one
/// last read, the reader has seen every entry exactly once, in the order of a full read.
async fn space_cursor_never_skips(env: Env) {
    let batches: u64 = if small() { 20 } else { 60 };
    let clients = mixed_clients(&env, 3).await;
    let done = Arc::new(AtomicBool::new(false));
    let writers = clients.iter().enumerate().map(|(i, client)| {
        let env = env.clone();
        async move {
            let segment = format!("seg-{i}");
            let mut next = 1;
            for batch in 0..batches {
                let last = next + (batch + i as u64) % 3;
                produce_ok(&env, client, "cursor", &segment, next..=last).await;
                next = last + 1;
                env.sleep(Duration::from_millis(1 + (batch % 3))).await;
            }
            next - 1
        }
    });
    let reader = {
        let env = env.clone();
        let done = done.clone();
        async move {
            let mut seen: Vec<Entry> = Vec::new();
            let mut cursor = LexKey::default();
            let mut reads = 0;
            loop {
                // Read `done` before reading, so the last read starts after every write was acknowledged.
                let finished = done.load(Ordering::Acquire);
                let batch = consume_space(&env, env.client(), "cursor", cursor.clone()).await;
                reads += 1;
                if let Some(last) = batch.last() {
                    cursor = last.space_offset();
                }
                seen.extend(batch);
                if finished {
                    return (seen, reads);
                }
            }
        }
    };
    let writing = async {
        let heads = join_all(writers).await;
        done.store(true, Ordering::Release);
        heads
    };
    let (heads, (seen, reads)) =
        env.step("writers and the cursor reader", futures_util::future::join(writing, reader)).await;
    eprintln!("cursor reader: {reads} reads, {} entries", seen.len());
    assert!(reads > 3, "the reader ran while the writers wrote");
    let full = consume_space(&env, env.client(), "cursor", LexKey::default()).await;
    assert_eq!(full.len() as u64, heads.iter().sum::<u64>());
    assert_eq!(positions(&seen), positions(&full), "the cursor saw every entry once, in space order");
    assert_merged_order(&seen);
}

/// Invariant 4: a space subscriber (opened before the writes) and a segment subscriber (opened while
/// they run) see each segment's `last_sequence` only grow, and see the final one.
async fn subscriber_sequences_never_go_backwards(env: Env) {
    let batches: u64 = if small() { 15 } else { 40 };
    let clients = mixed_clients(&env, 3).await;
    let store = env.store();
    let mut space_sub = env
        .step("subscribe", env.client().subscribe_space(store, "subs", SubscribeOptions::default()))
        .await
        .unwrap();
    let writers = clients.iter().enumerate().map(|(i, client)| {
        let env = env.clone();
        async move {
            let segment = format!("seg-{i}");
            for batch in 0..batches {
                let first = batch * 3 + 1;
                produce_ok(&env, client, "subs", &segment, first..=first + 2).await;
            }
        }
    });
    let late = async {
        env.sleep(Duration::from_millis(20)).await;
        env.client().subscribe_segment(store, "subs", "seg-1", SubscribeOptions::default()).await.unwrap()
    };
    let (_, mut segment_sub) = env.step("writers", futures_util::future::join(join_all(writers), late)).await;
    let final_sequence = batches * 3;
    watch(&env, "space subscriber", &mut space_sub, 3, final_sequence).await;
    watch(&env, "segment subscriber", &mut segment_sub, 1, final_sequence).await;
}

/// Reads statuses until each of `segments` segments reached `final_sequence`, checking that no
/// segment's `last_sequence` ever decreases.
async fn watch(env: &Env, name: &str, stream: &mut StatusStream, segments: usize, final_sequence: u64) {
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut updates = 0;
    while last.len() < segments || last.values().any(|&n| n < final_sequence) {
        let status = env.step("the final update", stream.next()).await.expect("open").expect("no error");
        updates += 1;
        let previous = last.insert(status.segment.clone(), status.last_sequence).unwrap_or(0);
        assert!(
            status.last_sequence >= previous,
            "{name}: {} went from {previous} to {}",
            status.segment,
            status.last_sequence
        );
        assert_eq!(status.first_sequence, 1);
    }
    eprintln!("{name}: {updates} updates");
}

// -------------------------------------------------------------------------------------------------
// Invariant 2: kill -9

#[test]
fn acknowledged_produces_survive_kill_9() {
    streamkit_tests::block_on(streamkit_tests::RuntimeKind::Tokio, |runtime| async move {
        let data = tempfile::tempdir().unwrap();
        let bin = Path::new(env!("CARGO_BIN_EXE_streamkit-parity-cli"));
        let child = ChildServer::spawn(bin, data.path());
        let url = format!("ws://{}", child.addr);
        let store = uuid::Uuid::new_v4();
        let stop = Arc::new(AtomicBool::new(false));
        let mut producers = Vec::new();
        for index in 0..4usize {
            let transport = if index.is_multiple_of(2) { Transport::Json } else { Transport::Cbor };
            let options = ClientOptions::default().with_codec(transport.codec());
            let client = Client::connect(runtime.clone(), url.clone(), static_token(admin_token()), options)
                .await
                .unwrap();
            producers.push(runtime.spawn(produce_until_failure(
                runtime.clone(),
                client,
                store,
                index,
                stop.clone(),
            )));
        }
        // Let them write for a while, then kill the server while produces are in flight.
        runtime.sleep(Duration::from_millis(500)).await;
        child.kill();
        let mut acknowledged = Vec::new();
        for producer in producers {
            acknowledged.push(streamkit_tests::step(&runtime, "producer to fail", producer).await.unwrap());
        }
        eprintln!("acknowledged before kill -9: {acknowledged:?}");
        assert!(acknowledged.iter().all(|&n| n > 0), "every producer got acknowledgements");

        // A server on the same data directory holds every acknowledged record, each segment 1..N.
        let env = Env::start_with(runtime.clone(), Config::TOKIO_CBOR, {
            let dir = data.path().to_owned();
            move |config| config.data_dir = dir.clone()
        })
        .await;
        for (index, &acked) in acknowledged.iter().enumerate() {
            let entries = streamkit_tests::collect_ok(
                &runtime,
                env.client().consume_segment(store, segment_request("durable", &format!("seg-{index}"))),
            )
            .await;
            let n = entries.len() as u64;
            assert_eq!(sequences(&entries), (1..=n).collect::<Vec<_>>(), "segment {index} is exactly 1..N");
            assert!(n >= acked, "segment {index}: {acked} acknowledged, {n} stored");
            assert!(entries.iter().all(|e| e.payload == Some(test_data(e.sequence).into())));
        }
        env.shutdown().await;
        drop(data);
    });
}

/// Appends batches to `seg-<index>` until an error; returns the last acknowledged sequence. Odd
/// producers send one record per produce, even ones batches of 25.
async fn produce_until_failure(
    runtime: Arc<dyn Runtime>,
    client: Client,
    store: uuid::Uuid,
    index: usize,
    stop: Arc<AtomicBool>,
) -> u64 {
    let segment = format!("seg-{index}");
    let batch = if index.is_multiple_of(2) { 25 } else { 1 };
    let mut acknowledged = 0;
    while !stop.load(Ordering::Acquire) {
        let range = acknowledged + 1..=acknowledged + batch;
        let stream = client.produce(store, "durable", &segment, records(range, test_data));
        let (statuses, error) = collect(&runtime, stream).await;
        // Every status acknowledges the records up to its sequence, whatever happens next.
        if let Some(last) = statuses.last() {
            assert!(last.last_sequence > acknowledged && last.last_sequence <= acknowledged + batch);
            acknowledged = last.last_sequence;
        }
        if error.is_some() {
            break;
        }
    }
    client.close().await;
    acknowledged
}
