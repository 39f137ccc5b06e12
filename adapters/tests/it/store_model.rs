//! Model-based property test: random sequences of gets, scans and conditional commits give identical
//! results on [`MemoryKv`] (the model), on [`RedbKv`] directly, and on a redb store behind a
//! [`StoreHandle`] (the async, group-committing path), including across reopening the database; and
//! the same on the PostgreSQL store (synchronous [`PgKv`] and async [`PgStore`]), when PostgreSQL is
//! reachable.
//!
//! [`PgKv`]: streamkit::store::PgKv
//! [`PgStore`]: streamkit::store::PgStore

#[cfg(feature = "postgres")]
use crate::scaleout_support;

use futures_lite::future::block_on;
use proptest::prelude::*;
use streamkit::store::{RedbKv, RedbOptions, StoreConfig, StoreHandle};
use streamkit_proto::storage::{
    MemoryKv, OrderedKv, Precondition, ScanRange, StorageOp, StorageResult, WriteBatch,
};

#[derive(Clone, Debug)]
enum Op {
    Get(Vec<u8>),
    Scan(ScanRange),
    Commit(Vec<WriteBatch>),
    /// Close every redb handle and open the file again.
    Reopen,
}

/// Few distinct bytes, short keys: collisions, prefixes, the empty key and 0x00/0xff edges are common.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![0x00u8, 0x01, 0x7f, 0xff]), 0..4)
}

/// Few distinct values, so `Equals` preconditions hold often enough to matter.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![vec![], vec![1], vec![2, 3]])
}

fn precondition() -> impl Strategy<Value = Precondition> {
    prop_oneof![
        key().prop_map(|key| Precondition::Absent { key }),
        (key(), value()).prop_map(|(key, value)| Precondition::Equals { key, value }),
    ]
}

fn batch() -> impl Strategy<Value = WriteBatch> {
    (
        prop::collection::vec(precondition(), 0..3),
        prop::collection::vec((key(), value()), 0..4),
        prop::collection::vec(key(), 0..3),
    )
        .prop_map(|(preconditions, puts, deletes)| WriteBatch { preconditions, puts, deletes })
}

/// A scan's byte bound: none, or small enough to cut scans short (0 still returns one pair).
fn max_bytes() -> impl Strategy<Value = usize> {
    prop_oneof![Just(usize::MAX), 0usize..24]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => key().prop_map(Op::Get),
        3 => (key(), key(), any::<bool>(), 0usize..6, max_bytes()).prop_map(
            |(start, end, reverse, limit, max_bytes)| Op::Scan(ScanRange { start, end, reverse, limit, max_bytes })
        ),
        // A prefix of the full key space, the full space itself, and inverted ranges all come up.
        1 => (any::<bool>(), 0usize..20, max_bytes()).prop_map(|(reverse, limit, max_bytes)| {
            Op::Scan(ScanRange { start: Vec::new(), end: vec![0xff; 4], reverse, limit, max_bytes })
        }),
        4 => prop::collection::vec(batch(), 0..4).prop_map(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

/// Runs one operation on a synchronous store and returns its result in the engine's terms.
fn run_sync(kv: &mut impl OrderedKv, op: &Op) -> StorageResult {
    match op {
        Op::Get(key) => kv.execute(&StorageOp::Get { key: key.clone() }),
        Op::Scan(range) => kv.execute(&StorageOp::Scan(range.clone())),
        Op::Commit(batches) => match kv.commit(batches) {
            Ok(outcomes) => StorageResult::Pairs(
                // Outcomes encoded as pairs only to share the comparison type.
                outcomes.iter().map(|o| (format!("{o:?}").into_bytes(), Vec::new())).collect(),
            ),
            Err(e) => StorageResult::Failed(e),
        },
        Op::Reopen => StorageResult::Value(None),
    }
}

fn run_async(store: &StoreHandle, op: &Op) -> StorageResult {
    match op {
        Op::Get(key) => block_on(store.execute(StorageOp::Get { key: key.clone() })),
        Op::Scan(range) => block_on(store.execute(StorageOp::Scan(range.clone()))),
        Op::Commit(batches) => match block_on(store.commit(batches.clone())) {
            Ok(outcomes) => StorageResult::Pairs(
                outcomes.iter().map(|o| (format!("{o:?}").into_bytes(), Vec::new())).collect(),
            ),
            Err(e) => StorageResult::Failed(e),
        },
        Op::Reopen => StorageResult::Value(None),
    }
}

/// A directory in memory when the machine has one: this test is about what the stores answer, not
/// about the disk, and on a slow disk the fsyncs of creating databases and committing would dominate.
/// (Durability is covered by `store_durability.rs` on the real disk.)
fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

fn everything() -> ScanRange {
    ScanRange::new(Vec::new(), vec![0xff; 8], usize::MAX)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn redb_and_the_worker_behave_like_the_memory_model(ops in prop::collection::vec(op(), 1..40)) {
        let dir = scratch_dir();
        let direct_path = dir.path().join("direct.redb");
        let worker_path = dir.path().join("worker.redb");
        let options = RedbOptions::default();
        let config = StoreConfig { reader_threads: 1, ..StoreConfig::default() };

        let mut model = MemoryKv::new();
        let mut direct = RedbKv::open(&direct_path, &options).unwrap();
        let mut store = StoreHandle::spawn_redb(RedbKv::open(&worker_path, &options).unwrap(), config.clone()).unwrap();

        for (step, op) in ops.iter().enumerate() {
            if let Op::Reopen = op {
                drop(direct);
                direct = RedbKv::open(&direct_path, &options).unwrap();
                store.close_blocking();
                store = StoreHandle::spawn_redb(RedbKv::open(&worker_path, &options).unwrap(), config.clone()).unwrap();
                continue;
            }
            let expected = run_sync(&mut model, op);
            prop_assert!(!matches!(expected, StorageResult::Failed(_)), "the model failed at step {}", step);
            prop_assert_eq!(&run_sync(&mut direct, op), &expected, "RedbKv, step {}: {:?}", step, op);
            prop_assert_eq!(&run_async(&store, op), &expected, "StoreHandle, step {}: {:?}", step, op);
        }

        let expected = model.scan(&everything()).unwrap();
        prop_assert_eq!(&direct.scan(&everything()).unwrap(), &expected);
        prop_assert_eq!(&block_on(store.scan(everything())).unwrap(), &expected);
        store.close_blocking();
    }
}

/// One schema for every case (and run) of the PostgreSQL property test; each case uses fresh store
/// ids, so cases and concurrent runs are isolated from each other exactly as stores are, and each case
/// deletes its keys at the end.
#[cfg(feature = "postgres")]
fn shared_pg() -> Option<&'static streamkit::store::PgDatabase> {
    static DB: std::sync::OnceLock<Option<streamkit::store::PgDatabase>> = std::sync::OnceLock::new();
    DB.get_or_init(|| {
        if !scaleout_support::pg_available("postgres_behaves_like_the_memory_model") {
            return None;
        }
        let config = streamkit::store::PgConfig::new(scaleout_support::pg_url()).with_schema("sk_test_model");
        Some(streamkit::store::PgDatabase::connect_blocking(config).expect("PostgreSQL connects"))
    })
    .as_ref()
}

/// Deletes every key of a store (test clean-up).
#[cfg(feature = "postgres")]
fn wipe(kv: &mut impl OrderedKv) {
    let keys = kv.scan(&everything()).unwrap().into_iter().map(|(k, _)| k).collect();
    kv.commit(&[WriteBatch { deletes: keys, ..WriteBatch::default() }]).unwrap();
    assert!(kv.scan(&everything()).unwrap().is_empty());
}

#[cfg(feature = "postgres")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn postgres_behaves_like_the_memory_model(ops in prop::collection::vec(op(), 1..40)) {
        let Some(db) = shared_pg() else { return Ok(()) };
        let mut model = MemoryKv::new();
        // Two stores: the synchronous PgKv and the async handle must not see each other's keys.
        let mut direct = streamkit::store::PgKv::new(db, uuid::Uuid::new_v4());
        let store_id = uuid::Uuid::new_v4();
        let store = db.store(store_id);
        for (step, op) in ops.iter().enumerate() {
            if let Op::Reopen = op {
                continue;
            }
            let expected = run_sync(&mut model, op);
            prop_assert_eq!(&run_sync(&mut direct, op), &expected, "PgKv, step {}: {:?}", step, op);
            let got = match op {
                Op::Get(key) => block_on(store.execute(StorageOp::Get { key: key.clone() })),
                Op::Scan(range) => block_on(store.execute(StorageOp::Scan(range.clone()))),
                Op::Commit(batches) => match block_on(store.commit(batches.clone())) {
                    Ok(outcomes) => StorageResult::Pairs(
                        outcomes.iter().map(|o| (format!("{o:?}").into_bytes(), Vec::new())).collect(),
                    ),
                    Err(e) => StorageResult::Failed(e),
                },
                Op::Reopen => unreachable!(),
            };
            prop_assert_eq!(&got, &expected, "PgStore, step {}: {:?}", step, op);
        }
        let expected = model.scan(&everything()).unwrap();
        prop_assert_eq!(&direct.scan(&everything()).unwrap(), &expected);
        prop_assert_eq!(&block_on(store.scan(everything())).unwrap(), &expected);
        block_on(store.close());
        wipe(&mut direct);
        wipe(&mut streamkit::store::PgKv::new(db, store_id));
    }
}
