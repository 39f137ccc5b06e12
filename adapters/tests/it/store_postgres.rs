//! The PostgreSQL store: group commit across callers and stores, a batch the database refuses failing
//! alone rather than with its group, conflicts between two "instances" (two connected databases racing
//! on the same keys), store isolation, schema migration, and a database restart. Skipped with a printed reason when PostgreSQL is not reachable.
#![cfg(feature = "postgres")]

use crate::scaleout_support;
use crate::support::join_all;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use scaleout_support::{PrivatePostgres, TestSchema, pg_available, sql};
use streamkit::store::{PgConfig, PgDatabase, PgStore};
use streamkit_proto::storage::{CommitOutcome, Precondition, ScanRange, WriteBatch};
use uuid::Uuid;

fn put(key: &[u8], value: &[u8]) -> WriteBatch {
    WriteBatch { puts: vec![(key.to_vec(), value.to_vec())], ..WriteBatch::default() }
}

fn everything() -> ScanRange {
    ScanRange::new(Vec::new(), vec![0xff; 8], usize::MAX)
}

/// Runs `n` threads of `f` at once and collects their results.
fn in_parallel<T: Send + 'static>(n: usize, f: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let f = std::sync::Arc::new(f);
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let f = f.clone();
            std::thread::spawn(move || f(i))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn concurrent_commits_share_transactions_and_each_caller_gets_its_outcome() {
    if !pg_available("concurrent_commits_share_transactions") {
        return;
    }
    let schema = TestSchema::new("group");
    let db = schema.connect();
    let stores: Vec<PgStore> = (0..4).map(|_| db.store(Uuid::new_v4())).collect();
    // 400 callers over 4 stores and 20 keys per store: for each (store, key) exactly one
    // "absent"-guarded put wins.
    let callers = 400;
    let tasks = {
        let stores = stores.clone();
        in_parallel(callers, move |i| {
            let store = &stores[i % 4];
            let key = format!("k{}", (i / 4) % 20).into_bytes();
            let batch = WriteBatch {
                preconditions: vec![Precondition::Absent { key: key.clone() }],
                puts: vec![(key.clone(), (i as u32).to_be_bytes().to_vec())],
                deletes: vec![],
            };
            (i, key, block_on(store.commit_one(batch)))
        })
    };
    let mut winners = 0;
    for (i, key, outcome) in tasks {
        let stored = block_on(stores[i % 4].get(key)).unwrap().unwrap();
        match outcome.unwrap() {
            CommitOutcome::Committed => {
                winners += 1;
                assert_eq!(stored, (i as u32).to_be_bytes());
            }
            CommitOutcome::Conflict { index: 0 } => assert_ne!(stored, (i as u32).to_be_bytes()),
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(winners, 80);
    let stats = db.stats();
    assert_eq!((stats.commit_requests, stats.batches_committed, stats.batches_conflicted), (400, 80, 320));
    assert!(stats.transactions < 400, "no group commit: {stats:?}");
    for store in &stores {
        assert_eq!(block_on(store.scan(everything())).unwrap().len(), 20, "stores are isolated");
    }
}

#[test]
fn a_failed_batch_is_skipped_and_later_batches_see_earlier_ones() {
    if !pg_available("a_failed_batch_is_skipped") {
        return;
    }
    let schema = TestSchema::new("batches");
    let db = schema.connect();
    let store = db.store(Uuid::new_v4());
    let guarded = |pre: Precondition, key: &[u8], value: &[u8]| WriteBatch {
        preconditions: vec![pre],
        puts: vec![(key.to_vec(), value.to_vec())],
        deletes: vec![],
    };
    let batches = vec![
        put(b"a", b"1"),
        // Sees the put of the first batch.
        guarded(Precondition::Equals { key: b"a".to_vec(), value: b"1".to_vec() }, b"b", b"2"),
        // Fails: "a" exists; nothing of it is written.
        guarded(Precondition::Absent { key: b"a".to_vec() }, b"c", b"3"),
        // Put then delete of one key in one batch leaves it absent.
        WriteBatch {
            puts: vec![(b"d".to_vec(), b"4".to_vec())],
            deletes: vec![b"d".to_vec()],
            ..Default::default()
        },
    ];
    let outcomes = block_on(store.commit(batches)).unwrap();
    assert_eq!(
        outcomes,
        [
            CommitOutcome::Committed,
            CommitOutcome::Committed,
            CommitOutcome::Conflict { index: 0 },
            CommitOutcome::Committed
        ]
    );
    let keys: Vec<Vec<u8>> =
        block_on(store.scan(everything())).unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, [b"a".to_vec(), b"b".to_vec()]);
    // Equals on a missing key, and a delete guarded by the value it removes.
    let outcomes = block_on(store.commit(vec![
        guarded(Precondition::Equals { key: b"zz".to_vec(), value: vec![] }, b"x", b"x"),
        WriteBatch {
            preconditions: vec![Precondition::Equals { key: b"b".to_vec(), value: b"2".to_vec() }],
            deletes: vec![b"b".to_vec()],
            ..Default::default()
        },
    ]))
    .unwrap();
    assert_eq!(outcomes, [CommitOutcome::Conflict { index: 0 }, CommitOutcome::Committed]);
    assert_eq!(block_on(store.get(b"b".to_vec())).unwrap(), None);
}

/// What a client reads when its batch holds a key over PostgreSQL's btree index row limit (2704 bytes).
const KEY_TOO_LONG: &str = "database error: program limit exceeded (SQLSTATE 54000)";

/// `len` pseudo-random bytes: PostgreSQL compresses a long but repetitive key below the index limit.
fn incompressible(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_be_bytes()[0]
        })
        .collect()
}

/// One tenant's batches that the database refuses (a 3,000-byte key, as a segment name or a lease key
/// could make) share transactions with another tenant's commits, because the committer groups
/// whatever is queued: the refused ones fail alone, every other commit goes through, and a request
/// committed alone still sees the effects of the requests queued before it.
#[test]
fn a_batch_the_database_refuses_fails_alone_not_with_its_group() {
    if !pg_available("a_batch_the_database_refuses_fails_alone") {
        return;
    }
    let schema = TestSchema::new("isolation");
    // One committer: everything queued behind a transaction in progress forms the next group.
    let config = PgConfig { committers: 1, ..schema.config() };
    let db = PgDatabase::connect_blocking(config).unwrap();
    let (good, bad) = (db.store(Uuid::new_v4()), db.store(Uuid::new_v4()));
    let long_key = incompressible(3000);
    let head = |n: u32| n.to_be_bytes().to_vec();

    // The good tenant appends 1..=200, each append guarded by the head the previous one wrote: they
    // only all commit if their order is kept. Every 10th request is the bad tenant's, alternately a
    // plain put of the long key and a lease-like put guarded by its absence.
    enum Request {
        Good(u32, WriteBatch),
        Bad(WriteBatch),
    }
    let mut requests = Vec::new();
    for n in 1..=200u32 {
        let guard = match n {
            1 => Precondition::Absent { key: b"head".to_vec() },
            _ => Precondition::Equals { key: b"head".to_vec(), value: head(n - 1) },
        };
        let mut entry = b"entry/".to_vec();
        entry.extend_from_slice(&head(n));
        let batch = WriteBatch {
            preconditions: vec![guard],
            puts: vec![(entry, b"v".to_vec()), (b"head".to_vec(), head(n))],
            deletes: vec![],
        };
        requests.push(Request::Good(n, batch));
        if n % 10 == 5 {
            let preconditions = match n % 20 {
                5 => Vec::new(),
                _ => vec![Precondition::Absent { key: long_key.clone() }],
            };
            requests.push(Request::Bad(WriteBatch {
                preconditions,
                puts: vec![(long_key.clone(), b"lease".to_vec())],
                deletes: vec![],
            }));
        }
    }
    let started = Instant::now();
    // Sent in this order on the first poll: the queue holds them in order.
    let results = join_all(
        requests
            .into_iter()
            .map(|request| {
                let (good, bad) = (good.clone(), bad.clone());
                async move {
                    match request {
                        Request::Good(n, batch) => (Some(n), good.commit_one(batch).await),
                        Request::Bad(batch) => (None, bad.commit_one(batch).await),
                    }
                }
            })
            .collect(),
    );
    let elapsed = started.elapsed();
    let mut failed = 0;
    for (good_one, result) in results {
        match good_one {
            Some(n) => assert_eq!(result, Ok(CommitOutcome::Committed), "good append {n}"),
            None => {
                assert_eq!(result.unwrap_err().0, KEY_TOO_LONG);
                failed += 1;
            }
        }
    }
    assert_eq!(failed, 20);
    assert_eq!(block_on(good.get(b"head".to_vec())).unwrap(), Some(head(200)));
    assert_eq!(block_on(good.scan(everything())).unwrap().len(), 201, "200 entries and the head");
    assert_eq!(block_on(bad.scan(everything())).unwrap(), Vec::new());
    let stats = db.stats();
    assert!(stats.isolation_retries >= 1, "no group was retried one by one: {stats:?}");
    // Each refused request failed once more alone, after its group.
    assert!(stats.failed_transactions >= 20 + stats.isolation_retries, "{stats:?}");
    assert_eq!((stats.commit_requests, stats.batches_committed), (220, 200), "{stats:?}");
    eprintln!("isolation: 220 requests in {elapsed:?}: {stats:?}");

    // Alone from the start, a refused batch gets the same text.
    let err = block_on(bad.commit_one(put(&long_key, b"v"))).unwrap_err();
    assert_eq!(err.0, KEY_TOO_LONG);
}

/// Two connected databases stand for two server instances. Each writer appends to one "segment":
/// read the head, write sequence head+1 guarded by the head it read, retry on conflict. Whatever the
/// interleaving, the segment ends as exactly 1..N.
#[test]
fn two_instances_racing_on_one_segment_leave_exactly_one_to_n() {
    if !pg_available("two_instances_racing") {
        return;
    }
    let schema = TestSchema::new("race");
    let instances = [schema.connect(), schema.connect()];
    let store_id = Uuid::new_v4();
    let per_writer = 25u64;
    let writers = 6;
    let conflicts = in_parallel(writers, {
        let stores: Vec<PgStore> = instances.iter().map(|db| db.store(store_id)).collect();
        move |w| {
            let store = &stores[w % 2];
            let mut conflicts = 0;
            let mut written = 0;
            while written < per_writer {
                let head = block_on(store.get(b"head".to_vec())).unwrap();
                let last = head.as_ref().map_or(0, |h| u64::from_be_bytes(h.as_slice().try_into().unwrap()));
                let next = last + 1;
                let precondition = match head {
                    None => Precondition::Absent { key: b"head".to_vec() },
                    Some(value) => Precondition::Equals { key: b"head".to_vec(), value },
                };
                let mut entry = b"entry/".to_vec();
                entry.extend_from_slice(&next.to_be_bytes());
                let batch = WriteBatch {
                    preconditions: vec![precondition],
                    puts: vec![
                        (entry, (w as u64).to_be_bytes().to_vec()),
                        (b"head".to_vec(), next.to_be_bytes().to_vec()),
                    ],
                    deletes: vec![],
                };
                match block_on(store.commit_one(batch)).unwrap() {
                    CommitOutcome::Committed => written += 1,
                    CommitOutcome::Conflict { index: 0 } => conflicts += 1,
                    other => panic!("{other:?}"),
                }
            }
            conflicts
        }
    });
    let store = instances[0].store(store_id);
    let range = ScanRange::new(b"entry/".to_vec(), b"entry0".to_vec(), usize::MAX);
    let sequences: Vec<u64> = block_on(store.scan(range))
        .unwrap()
        .into_iter()
        .map(|(k, _)| u64::from_be_bytes(k[6..].try_into().unwrap()))
        .collect();
    let total = per_writer * writers as u64;
    assert_eq!(sequences, (1..=total).collect::<Vec<_>>(), "exactly 1..N");
    assert!(conflicts.iter().sum::<u64>() > 0, "the writers really raced");
    let retries = instances.iter().map(|db| db.stats().retries).sum::<u64>();
    eprintln!("race: {total} appends, {} conflicts, {retries} group retries", conflicts.iter().sum::<u64>());
}

#[test]
fn schema_is_migrated_once_and_a_newer_schema_is_refused() {
    if !pg_available("schema_is_migrated_once") {
        return;
    }
    let schema = TestSchema::new("migrate");
    // Instances starting at once migrate one after the other.
    let results = in_parallel(4, {
        let config = schema.config();
        move |_| PgDatabase::connect_blocking(config.clone()).map(|_| ())
    });
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let db = schema.connect();
    let store = db.store(Uuid::new_v4());
    assert_eq!(block_on(store.commit_one(put(b"k", b"v"))), Ok(CommitOutcome::Committed));
    drop(db);
    // Data survives reconnecting.
    let db = schema.connect();
    assert_eq!(block_on(db.store(store.store_id()).get(b"k".to_vec())), Ok(Some(b"v".to_vec())));
    sql(
        &schema.url,
        &format!(
            "INSERT INTO \"{}\".streamkit_migrations (version, description) VALUES (99, 'future')",
            schema.name
        ),
    )
    .unwrap();
    let err = PgDatabase::connect_blocking(schema.config()).unwrap_err();
    assert!(err.0.contains("version 99, newer than this server"), "{err}");
}

#[test]
fn an_unreachable_database_is_a_clear_error() {
    let port = scaleout_support::free_port();
    let mut config = PgConfig::new(format!("postgres://postgres@127.0.0.1:{port}/none"));
    config.connect_timeout = Duration::from_secs(2);
    let err = PgDatabase::connect_blocking(config).unwrap_err();
    assert!(err.0.starts_with("database unavailable"), "{err}");
}

#[test]
fn a_database_restart_fails_operations_in_flight_then_later_ones_work() {
    let Some(pg) = PrivatePostgres::start("a_database_restart") else { return };
    let mut config = PgConfig::new(pg.url());
    config.connect_timeout = Duration::from_secs(2);
    let db = PgDatabase::connect_blocking(config).unwrap();
    let store = db.store(Uuid::new_v4());
    // Use several pooled connections so the pool holds some that the restart breaks.
    let stores: Vec<PgStore> = (0..8).map(|_| store.clone()).collect();
    let results =
        in_parallel(8, move |i| block_on(stores[i].commit_one(put(format!("before{i}").as_bytes(), b"v"))));
    assert!(results.iter().all(|r| r == &Ok(CommitOutcome::Committed)), "{results:?}");

    pg.stop();
    let err = block_on(store.commit_one(put(b"during", b"v"))).unwrap_err();
    assert!(err.0.starts_with("database unavailable"), "{err}");
    let err = block_on(store.get(b"before0".to_vec())).unwrap_err();
    assert!(err.0.starts_with("database unavailable"), "{err}");

    pg.restart();
    // Broken connections are replaced: every later operation works, on all pooled connections.
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0..20 {
        let key = format!("after{i}").into_bytes();
        loop {
            match block_on(store.commit_one(put(&key, b"v"))) {
                Ok(outcome) => {
                    assert_eq!(outcome, CommitOutcome::Committed);
                    break;
                }
                // Only the first operations after the restart may still meet a broken connection.
                Err(e) if i == 0 && Instant::now() < deadline => {
                    eprintln!("after restart: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("operation {i} after the restart failed: {e}"),
            }
        }
    }
    let keys: BTreeSet<Vec<u8>> =
        block_on(store.scan(everything())).unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 28, "8 before, none during, 20 after");
    assert!(!keys.contains(b"during".as_slice()));
}
