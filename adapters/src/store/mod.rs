//! Storage backends and their async front.
//!
//! * [`RedbKv`]: the embedded, durable backend (one redb file per store);
//! * [`SharedMemoryKv`]: the core's in-memory store, shareable between threads;
//! * [`StoreHandle`]: runs any [`OrderedKv`] on its own threads with group commit, for async callers
//!   on any runtime;
//! * `PgDatabase` / `PgStore` (feature `postgres`): every store in one PostgreSQL table, shared by
//!   several server instances, with group commit across stores;
//! * [`Store`]: what the engine executes storage effects on, whichever backend holds the store;
//! * [`StoreFactory`]: opens the store of a store UUID, embedded, in memory, in PostgreSQL, or in a
//!   backend of the application's own ([`StoreFactory::custom`] with a [`StoreOpener`]).
//!
//! A backend of your own implements the core's [`OrderedKv`] contract (point gets, bounded scans,
//! group commits of batches guarded by preconditions) and proves it with the contract's conformance
//! suite, [`streamkit_proto::storage::conformance`], from its own tests.
//!
//! [`OrderedKv`]: streamkit_proto::storage::OrderedKv
#![warn(missing_docs)]

pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod redb;
pub mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use streamkit_proto::storage::{
    CommitOutcome, KvError, KvPair, OrderedKv, ScanRange, StorageOp, StorageResult, WriteBatch,
};
use uuid::Uuid;

use crate::log_limit::limited_log;

pub use self::memory::SharedMemoryKv;
#[cfg(feature = "postgres")]
pub use self::postgres::{PgConfig, PgDatabase, PgKv, PgStats, PgStore};
pub use self::redb::{CommitDurability, RedbKv, RedbOptions};
pub use self::worker::{CommitObserver, CommitReport, STORE_CLOSED, StoreConfig, StoreHandle, StoreStats};

/// File name of a store's database inside its directory.
pub const DATABASE_FILE: &str = "streams.redb";

/// An open store, on whichever backend holds it: what the engine runs storage effects on.
///
/// An enum rather than a trait object: the backends are few and known, and the engine's hot path
/// (one effect per call) stays free of boxing. Clones share the store.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Store {
    /// A store with its own worker threads (embedded redb or memory).
    Local(StoreHandle),
    /// A store in a shared PostgreSQL database.
    #[cfg(feature = "postgres")]
    Postgres(PgStore),
}

impl Store {
    /// Executes one storage effect of the engine.
    pub async fn execute(&self, op: StorageOp) -> StorageResult {
        match self {
            Store::Local(handle) => handle.execute(op).await,
            #[cfg(feature = "postgres")]
            Store::Postgres(store) => store.execute(op).await,
        }
    }

    /// Reads one key.
    pub async fn get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, KvError> {
        match self {
            Store::Local(handle) => handle.get(key).await,
            #[cfg(feature = "postgres")]
            Store::Postgres(store) => store.get(key).await,
        }
    }

    /// Reads up to `range.limit` pairs of `range`.
    pub async fn scan(&self, range: ScanRange) -> Result<Vec<KvPair>, KvError> {
        match self {
            Store::Local(handle) => handle.scan(range).await,
            #[cfg(feature = "postgres")]
            Store::Postgres(store) => store.scan(range).await,
        }
    }

    /// Commits `batches` atomically (group commit; one outcome per batch).
    pub async fn commit(&self, batches: Vec<WriteBatch>) -> Result<Vec<CommitOutcome>, KvError> {
        match self {
            Store::Local(handle) => handle.commit(batches).await,
            #[cfg(feature = "postgres")]
            Store::Postgres(store) => store.commit(batches).await,
        }
    }

    /// Commits one batch.
    pub async fn commit_one(&self, batch: WriteBatch) -> Result<CommitOutcome, KvError> {
        match self {
            Store::Local(handle) => handle.commit_one(batch).await,
            #[cfg(feature = "postgres")]
            Store::Postgres(store) => store.commit_one(batch).await,
        }
    }

    /// Stops accepting operations and resolves once those queued finished and the store released
    /// what it holds (a redb file can be reopened right after).
    pub async fn close(&self) {
        match self {
            Store::Local(handle) => handle.close().await,
            #[cfg(feature = "postgres")]
            Store::Postgres(store) => store.close().await,
        }
    }

    /// The worker handle of a local store (`None` for PostgreSQL stores).
    pub fn as_local(&self) -> Option<&StoreHandle> {
        match self {
            Store::Local(handle) => Some(handle),
            #[cfg(feature = "postgres")]
            Store::Postgres(_) => None,
        }
    }
}

/// Opens stores by UUID.
///
/// Embedded stores live at `{data_dir}/{store_uuid}/streams.redb` (lowercase hyphenated UUID). This
/// mirrors the Go layout `{Path}/{storeUUID}/streams` and gives each store a directory of its own, so
/// that files belonging to one store (a later second database, exports) stay together and deleting a
/// store is deleting its directory.
///
/// A store must not be opened twice at once: redb locks its file, so the second open of an embedded
/// store fails until the first [`StoreHandle`] is closed. The node manager keeps one handle per store.
#[derive(Debug)]
pub struct StoreFactory {
    backend: Backend,
    config: StoreConfig,
}

#[derive(Debug)]
enum Backend {
    Embedded {
        data_dir: PathBuf,
        options: RedbOptions,
    },
    /// Stores outlive their handles (as files do): reopening a store id finds its data.
    Memory {
        stores: Mutex<HashMap<Uuid, SharedMemoryKv>>,
    },
    /// Every store in one PostgreSQL database.
    #[cfg(feature = "postgres")]
    Postgres {
        db: PgDatabase,
    },
    /// A backend of the application's.
    Custom {
        opener: CustomOpener,
    },
}

/// Opens the stores of a storage backend of the application's own ([`StoreFactory::custom`]).
///
/// Implemented for closures `Fn(&Uuid) -> Result<Box<dyn OrderedKv + Send>, KvError>`.
pub trait StoreOpener: Send + Sync + 'static {
    /// Opens the store of `store_id`, creating it empty when new; a store opened again (after the
    /// server closed it, say when idle) must hold everything committed to it before. Each open store
    /// runs on worker threads of its own, so its [`OrderedKv`] calls may block (disk, network); commits
    /// come one group at a time.
    fn open(&self, store_id: &Uuid) -> Result<Box<dyn OrderedKv + Send>, KvError>;
}

impl<F> StoreOpener for F
where
    F: Fn(&Uuid) -> Result<Box<dyn OrderedKv + Send>, KvError> + Send + Sync + 'static,
{
    fn open(&self, store_id: &Uuid) -> Result<Box<dyn OrderedKv + Send>, KvError> {
        self(store_id)
    }
}

/// The opener of a custom backend (no `Debug` of its own).
struct CustomOpener(Box<dyn StoreOpener>);

impl std::fmt::Debug for CustomOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreOpener")
    }
}

/// A store of a custom backend, as the worker threads run it.
struct CustomKv(Box<dyn OrderedKv + Send>);

impl OrderedKv for CustomKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.0.get(key)
    }

    fn scan(&self, range: &ScanRange) -> Result<Vec<KvPair>, KvError> {
        self.0.scan(range)
    }

    fn commit(&mut self, batches: &[WriteBatch]) -> Result<Vec<CommitOutcome>, KvError> {
        self.0.commit(batches)
    }

    fn usage(&self) -> Result<u64, KvError> {
        self.0.usage()
    }
}

impl StoreFactory {
    /// Embedded redb stores under `data_dir` (created when needed).
    pub fn embedded(data_dir: impl Into<PathBuf>, options: RedbOptions) -> Self {
        Self {
            backend: Backend::Embedded { data_dir: data_dir.into(), options },
            config: StoreConfig::default(),
        }
    }

    /// In-memory stores that live as long as the factory.
    pub fn memory() -> Self {
        Self {
            backend: Backend::Memory { stores: Mutex::new(HashMap::new()) },
            config: StoreConfig::default(),
        }
    }

    /// Stores in a connected PostgreSQL database (see [`PgDatabase::connect`]).
    #[cfg(feature = "postgres")]
    pub fn postgres(db: PgDatabase) -> Self {
        Self { backend: Backend::Postgres { db }, config: StoreConfig::default() }
    }

    /// Stores of a backend of the application's own, opened by `opener` (see [`StoreOpener`]). Each
    /// store runs on worker threads of its own with group commit, like an embedded store; the cluster
    /// features stay off (the stores are taken to belong to this instance alone).
    pub fn custom(opener: impl StoreOpener) -> Self {
        Self {
            backend: Backend::Custom { opener: CustomOpener(Box::new(opener)) },
            config: StoreConfig::default(),
        }
    }

    /// Whether the stores live in storage that other server instances may share (PostgreSQL), so
    /// the cluster features (shared space clock, leases in storage, cluster presence) are needed.
    pub fn is_shared(&self) -> bool {
        match &self.backend {
            Backend::Embedded { .. } | Backend::Memory { .. } | Backend::Custom { .. } => false,
            #[cfg(feature = "postgres")]
            Backend::Postgres { .. } => true,
        }
    }

    /// The PostgreSQL database of a PostgreSQL factory.
    #[cfg(feature = "postgres")]
    pub fn postgres_database(&self) -> Option<&PgDatabase> {
        match &self.backend {
            Backend::Postgres { db } => Some(db),
            _ => None,
        }
    }

    /// Sizes of the worker of every store opened afterwards.
    pub fn with_config(mut self, config: StoreConfig) -> Self {
        self.config = config;
        self
    }

    /// Reports every transaction of the stores opened afterwards to `observer` (replacing the one
    /// configured before, if any); the server feeds its commit metrics this way.
    pub fn with_observer(mut self, observer: CommitObserver) -> Self {
        #[cfg(feature = "postgres")]
        if let Backend::Postgres { db } = &self.backend {
            // One database serves every store: its committers report for all of them.
            db.set_observer(Some(observer.clone()));
        }
        self.config.observer = Some(observer);
        self
    }

    /// The database file of `store_id` (`None` for memory stores).
    pub fn store_path(&self, store_id: &Uuid) -> Option<PathBuf> {
        match &self.backend {
            Backend::Embedded { data_dir, .. } => Some(store_dir(data_dir, store_id).join(DATABASE_FILE)),
            Backend::Memory { .. } | Backend::Custom { .. } => None,
            #[cfg(feature = "postgres")]
            Backend::Postgres { .. } => None,
        }
    }

    /// Opens (creating when new) the store of `store_id` and starts its worker (local stores); a
    /// PostgreSQL store only needs a handle.
    pub fn open(&self, store_id: &Uuid) -> Result<Store, KvError> {
        let config = StoreConfig { store_id: Some(*store_id), ..self.config.clone() };
        match &self.backend {
            Backend::Embedded { data_dir, options } => {
                let dir = store_dir(data_dir, store_id);
                std::fs::create_dir_all(&dir).map_err(|e| {
                    // The client reads what failed; the server's paths are for its log only. Every
                    // request for a store that cannot be opened tries again: rate limited.
                    limited_log!(
                        warn,
                        [%store_id, dir = %dir.display(), error = %e],
                        "cannot create store directory"
                    );
                    KvError(format!("cannot create store directory: {e}"))
                })?;
                let kv = RedbKv::open(dir.join(DATABASE_FILE), options)?;
                StoreHandle::spawn_redb(kv, config).map(Store::Local)
            }
            Backend::Memory { .. } => {
                let kv = self.memory_store(store_id)?;
                StoreHandle::spawn_split(kv.clone(), kv, config).map(Store::Local)
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres { db } => Ok(Store::Postgres(db.store(*store_id))),
            Backend::Custom { opener } => {
                StoreHandle::spawn(CustomKv(opener.0.open(store_id)?), config).map(Store::Local)
            }
        }
    }

    /// The in-memory data of `store_id`, created empty when new, for inspection and fault injection in
    /// tests; an error for embedded factories.
    pub fn memory_store(&self, store_id: &Uuid) -> Result<SharedMemoryKv, KvError> {
        match &self.backend {
            Backend::Memory { stores } => {
                let mut stores =
                    stores.lock().map_err(|_| KvError("memory store registry poisoned".to_owned()))?;
                Ok(stores.entry(*store_id).or_default().clone())
            }
            _ => Err(KvError("not a memory store factory".to_owned())),
        }
    }
}

fn store_dir(data_dir: &Path, store_id: &Uuid) -> PathBuf {
    data_dir.join(store_id.hyphenated().to_string())
}

#[cfg(test)]
mod tests {
    use futures_lite::future::block_on;
    use streamkit_proto::storage::{CommitOutcome, WriteBatch};

    use super::*;

    fn put(key: &[u8], value: &[u8]) -> WriteBatch {
        WriteBatch { puts: vec![(key.to_vec(), value.to_vec())], ..WriteBatch::default() }
    }

    const STORE: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);

    #[test]
    fn embedded_store_layout_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let factory = StoreFactory::embedded(dir.path().join("data"), RedbOptions::default());
        let path = factory.store_path(&STORE).unwrap();
        assert_eq!(path, dir.path().join("data/01234567-89ab-cdef-0123-456789abcdef/streams.redb"));

        let store = factory.open(&STORE).unwrap();
        assert_eq!(block_on(store.commit_one(put(b"k", b"v"))), Ok(CommitOutcome::Committed));
        let store = store.as_local().unwrap().clone();
        assert_eq!(store.stats().fsyncs, 1, "Immediate durability counts one fsync per commit call");
        // The file is locked while the store is open.
        assert!(factory.open(&STORE).is_err());
        block_on(store.close());
        assert!(path.is_file());

        let store = factory.open(&STORE).unwrap();
        assert_eq!(block_on(store.get(b"k".to_vec())), Ok(Some(b"v".to_vec())));
        block_on(store.close());
        assert!(!factory.is_shared());
    }

    #[test]
    fn non_durable_stores_count_no_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let options = RedbOptions { durability: CommitDurability::None, ..RedbOptions::default() };
        let factory = StoreFactory::embedded(dir.path(), options);
        let store = factory.open(&STORE).unwrap();
        assert_eq!(block_on(store.commit_one(put(b"k", b"v"))), Ok(CommitOutcome::Committed));
        let stats = store.as_local().unwrap().stats();
        assert_eq!((stats.fsyncs, stats.batches_committed), (0, 1));
        block_on(store.close());
    }

    #[test]
    fn unopenable_data_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = StoreFactory::embedded(&file, RedbOptions::default()).open(&STORE).unwrap_err();
        // What failed and why, but not where: clients must not learn the server's paths.
        assert!(err.0.starts_with("cannot create store directory: ") && err.0.contains("os error"), "{err}");
        let dir = dir.path().to_str().unwrap();
        assert!(!err.0.contains(dir) && !err.0.contains("not-a-dir") && !err.0.contains('/'), "{err}");
    }

    #[test]
    fn memory_stores_keep_their_data_across_handles() {
        let factory = StoreFactory::memory();
        assert_eq!(factory.store_path(&STORE), None);
        let store = factory.open(&STORE).unwrap();
        block_on(store.commit_one(put(b"k", b"v"))).unwrap();
        block_on(store.close());
        let store = factory.open(&STORE).unwrap();
        assert_eq!(block_on(store.get(b"k".to_vec())), Ok(Some(b"v".to_vec())));

        // Faults injected through the registry reach the open handle.
        factory.memory_store(&STORE).unwrap().with(|kv| kv.set_unavailable(true)).unwrap();
        assert!(block_on(store.get(b"k".to_vec())).is_err());
        let other = factory.open(&Uuid::nil()).unwrap();
        assert_eq!(block_on(other.get(b"k".to_vec())), Ok(None));
        assert!(StoreFactory::embedded("/nonexistent", RedbOptions::default()).memory_store(&STORE).is_err());
    }
}
