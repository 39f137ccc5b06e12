//! Group commit on the durable redb store: concurrent commits share transactions, every caller gets
//! its own outcome, and racing sequence writers never leave a gap or a duplicate.

use std::thread;
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use streamkit::store::{RedbKv, RedbOptions, StoreConfig, StoreHandle, StoreStats};
use streamkit_proto::storage::{CommitOutcome, OrderedKv, Precondition, ScanRange, WriteBatch};

use crate::support::join_all;

fn durable_store(dir: &tempfile::TempDir) -> StoreHandle {
    let kv = RedbKv::open(dir.path().join("streams.redb"), &RedbOptions::default()).unwrap();
    StoreHandle::spawn_redb(kv, StoreConfig::default()).unwrap()
}

fn put(key: &[u8], value: &[u8]) -> WriteBatch {
    WriteBatch { puts: vec![(key.to_vec(), value.to_vec())], ..WriteBatch::default() }
}

#[test]
fn concurrent_tasks_share_durable_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let store = durable_store(&dir);
    // 200 tasks, 20 keys: for each key exactly one "absent"-guarded put can win.
    let tasks: Vec<_> = (0..200u32)
        .map(|i| {
            let store = store.clone();
            async move {
                let key = format!("k{}", i % 20).into_bytes();
                let batch = WriteBatch {
                    preconditions: vec![Precondition::Absent { key: key.clone() }],
                    puts: vec![(key.clone(), i.to_be_bytes().to_vec())],
                    deletes: vec![],
                };
                (key, i, store.commit_one(batch).await)
            }
        })
        .collect();
    let results = join_all(tasks);

    let mut winners = 0;
    for (key, i, outcome) in results {
        let stored = block_on(store.get(key)).unwrap().unwrap();
        match outcome.unwrap() {
            CommitOutcome::Committed => {
                winners += 1;
                assert_eq!(stored, i.to_be_bytes());
            }
            CommitOutcome::Conflict { index: 0 } => assert_ne!(stored, i.to_be_bytes()),
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(winners, 20);
    let stats = store.stats();
    assert_eq!((stats.commit_requests, stats.batches_committed, stats.batches_conflicted), (200, 20, 180));
    // All 200 requests were queued at once, behind at most one commit in progress.
    assert!(stats.commit_calls < 200 && stats.largest_group > 1, "no group commit: {stats:?}");
    assert!(stats.fsyncs <= stats.commit_calls, "{stats:?}");
    block_on(store.close());
}

/// Store-level form of invariant 1: producers racing on the same segments, each appending "head + 1"
/// guarded by the head they read, end with every segment holding exactly 1..N.
#[test]
fn racing_producers_keep_sequences_gapless() {
    const SEGMENTS: u32 = 4;
    const PRODUCERS: u32 = 6;
    const APPENDS: u32 = 30;
    let dir = tempfile::tempdir().unwrap();
    let store = durable_store(&dir);
    let head_key = |segment: u32| format!("head/{segment}").into_bytes();
    let entry_key = |segment: u32, seq: u64| {
        let mut key = format!("entry/{segment}/").into_bytes();
        key.extend_from_slice(&seq.to_be_bytes());
        key
    };

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|producer| {
            let store = store.clone();
            thread::spawn(move || {
                let mut conflicts = 0u64;
                for append in 0..APPENDS {
                    let segment = (producer + append) % SEGMENTS;
                    loop {
                        let head = block_on(store.get(head_key(segment))).unwrap();
                        let seq = head.as_deref().map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
                        let guard = match head {
                            None => Precondition::Absent { key: head_key(segment) },
                            Some(value) => Precondition::Equals { key: head_key(segment), value },
                        };
                        let next = (seq + 1).to_be_bytes().to_vec();
                        let batch = WriteBatch {
                            preconditions: vec![guard],
                            puts: vec![
                                (head_key(segment), next),
                                (entry_key(segment, seq + 1), vec![producer as u8]),
                            ],
                            deletes: vec![],
                        };
                        match block_on(store.commit_one(batch)).unwrap() {
                            CommitOutcome::Committed => break,
                            CommitOutcome::Conflict { .. } => conflicts += 1,
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    let conflicts: u64 = producers.into_iter().map(|p| p.join().unwrap()).sum();

    let mut total = 0;
    for segment in 0..SEGMENTS {
        let range = ScanRange::new(
            format!("entry/{segment}/").into_bytes(),
            format!("entry/{segment}0").into_bytes(),
            usize::MAX,
        );
        let entries = block_on(store.scan(range)).unwrap();
        let sequences: Vec<u64> =
            entries.iter().map(|(k, _)| u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap())).collect();
        let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
        assert_eq!(sequences, expected, "segment {segment}");
        let head = block_on(store.get(head_key(segment))).unwrap().unwrap();
        assert_eq!(u64::from_be_bytes(head.try_into().unwrap()), sequences.len() as u64);
        total += sequences.len();
    }
    assert_eq!(total, (PRODUCERS * APPENDS) as usize);
    let stats = store.stats();
    assert_eq!(stats.batches_committed, u64::from(PRODUCERS * APPENDS));
    assert_eq!(stats.batches_conflicted, conflicts);
    assert_eq!(stats.commit_requests, stats.batches_committed + stats.batches_conflicted);
    eprintln!("racing producers: {stats:?}");
    block_on(store.close());
}

fn report(label: &str, batches: u64, elapsed: Duration, before: StoreStats, after: StoreStats) {
    let calls = after.commit_calls - before.commit_calls;
    let fsyncs = after.fsyncs - before.fsyncs;
    println!(
        "{label:<44} {:>8.0} batches/s  {batches} batches in {calls} commit calls ({fsyncs} fsyncs, {:.1} batches/call)",
        batches as f64 / elapsed.as_secs_f64(),
        batches as f64 / calls.max(1) as f64,
    );
}

/// Durable commit throughput on this machine: one batch per commit versus group commit. Run by hand:
/// `cargo test --release -p streamkit --test it store_group_commit -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, run by hand"]
fn measure_durable_commit_rate() {
    let dir = tempfile::tempdir().unwrap();
    let value = vec![7u8; 200];

    // Baseline: the backend alone, one fsync per batch.
    let mut kv = RedbKv::open(dir.path().join("direct.redb"), &RedbOptions::default()).unwrap();
    let n = 300u32;
    let start = Instant::now();
    for i in 0..n {
        kv.commit(&[put(&i.to_be_bytes(), &value)]).unwrap();
    }
    let elapsed = start.elapsed();
    println!(
        "{:<44} {:>8.0} batches/s",
        "RedbKv::commit, 1 batch per call",
        f64::from(n) / elapsed.as_secs_f64()
    );
    drop(kv);

    let store = durable_store(&dir);
    // One caller waiting for each commit: nothing to group.
    let before = store.stats();
    let start = Instant::now();
    for i in 0..n {
        block_on(store.commit_one(put(&i.to_be_bytes(), &value))).unwrap();
    }
    report("StoreHandle, 1 sequential caller", u64::from(n), start.elapsed(), before, store.stats());

    for callers in [4u32, 16, 64, 256] {
        let per_caller = 4000 / callers;
        let before = store.stats();
        let start = Instant::now();
        // Callers are tasks on 4 threads, each thread polling callers/4 of them concurrently.
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let store = store.clone();
                let value = value.clone();
                thread::spawn(move || {
                    let tasks: Vec<_> = (0..callers / 4)
                        .map(|c| {
                            let store = store.clone();
                            let value = value.clone();
                            async move {
                                for i in 0..per_caller {
                                    let key = format!("c{callers}-{t}-{c}-{i}");
                                    store.commit_one(put(key.as_bytes(), &value)).await.unwrap();
                                }
                            }
                        })
                        .collect();
                    join_all(tasks);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let label = format!("StoreHandle, {callers} concurrent callers");
        report(&label, u64::from(callers * per_caller), start.elapsed(), before, store.stats());
    }
    block_on(store.close());
}
