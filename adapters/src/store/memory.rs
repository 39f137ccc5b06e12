//! [`SharedMemoryKv`]: the core's [`MemoryKv`] behind a mutex, so the worker's writer and readers (and a
//! test injecting faults) can hold handles on the same data.

use std::sync::{Arc, Mutex, MutexGuard};

use streamkit_proto::storage::{CommitOutcome, KvError, KvPair, MemoryKv, OrderedKv, ScanRange, WriteBatch};

/// A clone-able handle on one in-memory store; clones share the data.
#[derive(Clone, Debug, Default)]
pub struct SharedMemoryKv(Arc<Mutex<MemoryKv>>);

impl SharedMemoryKv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` on the store, e.g. to inject faults ([`MemoryKv::fail_next_commits`],
    /// [`MemoryKv::set_unavailable`]) or inspect its content.
    pub fn with<T>(&self, f: impl FnOnce(&mut MemoryKv) -> T) -> Result<T, KvError> {
        Ok(f(&mut *self.lock()?))
    }

    fn lock(&self) -> Result<MutexGuard<'_, MemoryKv>, KvError> {
        // Only a panic inside `with` can poison the lock; MemoryKv itself does not panic.
        self.0
            .lock()
            .map_err(|_| KvError("memory store disabled: an earlier operation on it panicked".to_owned()))
    }
}

impl OrderedKv for SharedMemoryKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.lock()?.get(key)
    }

    fn scan(&self, range: &ScanRange) -> Result<Vec<KvPair>, KvError> {
        self.lock()?.scan(range)
    }

    fn commit(&mut self, batches: &[WriteBatch]) -> Result<Vec<CommitOutcome>, KvError> {
        self.lock()?.commit(batches)
    }

    fn usage(&self) -> Result<u64, KvError> {
        self.lock()?.usage()
    }
}
