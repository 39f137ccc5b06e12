//! Storage backends and their async front.
//!
//! * [`RedbKv`]: the embedded, durable backend (one redb file per store);
//! * [`SharedMemoryKv`]: the core's in-memory store, shareable between threads;
//! * [`StoreHandle`]: runs any [`OrderedKv`] on its own threads with group commit, for async callers
//!   on any runtime;
//! * [`StoreFactory`]: opens the store of a store UUID, embedded or in memory.
//!
//! [`OrderedKv`]: streamkit_core::storage::OrderedKv
#![warn(missing_docs)]

pub mod memory;
pub mod redb;
pub mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use streamkit_core::storage::KvError;
use uuid::Uuid;

pub use self::memory::SharedMemoryKv;
pub use self::redb::{CommitDurability, RedbKv, RedbOptions};
pub use self::worker::{CommitObserver, CommitReport, STORE_CLOSED, StoreConfig, StoreHandle, StoreStats};

/// File name of a store's database inside its directory.
pub const DATABASE_FILE: &str = "streams.redb";

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

    /// Sizes of the worker of every store opened afterwards.
    pub fn with_config(mut self, config: StoreConfig) -> Self {
        self.config = config;
        self
    }

    /// Reports every transaction of the stores opened afterwards to `observer` (replacing the one
    /// configured before, if any); the server feeds its commit metrics this way.
    pub fn with_observer(mut self, observer: CommitObserver) -> Self {
        self.config.observer = Some(observer);
        self
    }

    /// The database file of `store_id` (`None` for memory stores).
    pub fn store_path(&self, store_id: &Uuid) -> Option<PathBuf> {
        match &self.backend {
            Backend::Embedded { data_dir, .. } => Some(store_dir(data_dir, store_id).join(DATABASE_FILE)),
            Backend::Memory { .. } => None,
        }
    }

    /// Opens (creating when new) the store of `store_id` and starts its worker.
    pub fn open(&self, store_id: &Uuid) -> Result<StoreHandle, KvError> {
        match &self.backend {
            Backend::Embedded { data_dir, options } => {
                let dir = store_dir(data_dir, store_id);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| KvError(format!("cannot create store directory {}: {e}", dir.display())))?;
                let kv = RedbKv::open(dir.join(DATABASE_FILE), options)?;
                StoreHandle::spawn_redb(kv, self.config.clone())
            }
            Backend::Memory { .. } => {
                let kv = self.memory_store(store_id)?;
                StoreHandle::spawn_split(kv.clone(), kv, self.config.clone())
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
            Backend::Embedded { .. } => Err(KvError("not a memory store factory".to_owned())),
        }
    }
}

fn store_dir(data_dir: &Path, store_id: &Uuid) -> PathBuf {
    data_dir.join(store_id.hyphenated().to_string())
}

#[cfg(test)]
mod tests {
    use futures_lite::future::block_on;
    use streamkit_core::storage::{CommitOutcome, WriteBatch};

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
        assert_eq!(store.stats().fsyncs, 1, "Immediate durability counts one fsync per commit call");
        // The file is locked while the store is open.
        assert!(factory.open(&STORE).is_err());
        block_on(store.close());
        assert!(path.is_file());

        let store = factory.open(&STORE).unwrap();
        assert_eq!(block_on(store.get(b"k".to_vec())), Ok(Some(b"v".to_vec())));
        store.close_blocking();
    }

    #[test]
    fn non_durable_stores_count_no_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let options = RedbOptions { durability: CommitDurability::None, ..RedbOptions::default() };
        let factory = StoreFactory::embedded(dir.path(), options);
        let store = factory.open(&STORE).unwrap();
        assert_eq!(block_on(store.commit_one(put(b"k", b"v"))), Ok(CommitOutcome::Committed));
        assert_eq!((store.stats().fsyncs, store.stats().batches_committed), (0, 1));
        store.close_blocking();
    }

    #[test]
    fn unopenable_data_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = StoreFactory::embedded(&file, RedbOptions::default()).open(&STORE).unwrap_err();
        assert!(err.0.contains("cannot create store directory"), "{err}");
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
