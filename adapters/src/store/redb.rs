//! The embedded backend: [`OrderedKv`] on a redb database file (one file per store, one table of
//! bytes → bytes).
//!
//! redb is a copy-on-write B-tree with MVCC: any number of read transactions run concurrently with the
//! single write transaction, each on a consistent snapshot. A [`RedbKv`] is a cheap, clone-able handle
//! on one open database, so the worker gives clones to its reader threads and to its writer thread
//! (see [`super::worker`]).
//!
//! **Group commit**: one [`OrderedKv::commit`] call is one redb write transaction, so every batch of the
//! call shares one fsync. Preconditions are evaluated inside that transaction, after the batches before
//! them were applied, which is what makes the conflict check exact.
//!
//! **Errors**: every redb error becomes a [`KvError`] naming the operation and redb's reason, e.g.
//! `storage commit failed: I/O error: No space left on device (os error 28)`. That text reaches
//! clients, so it never holds the file's path (nor the source locations some redb errors carry); the
//! log gets the full error with the path, at `warn` where the error is created.
//!
//! **No panics**: redb
//! documents that opening a file corrupted outside redb may panic unless the integrity check is on
//! ([`RedbOptions::verify_on_open`]); as a last line of defence each call into redb runs under
//! `catch_unwind`, and a handle whose database panicked refuses every later operation with a
//! [`KvError`] instead of touching a database in an unknown state. (This relies on the default
//! `panic = "unwind"`; with `panic = "abort"` a redb panic ends the process.)

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use streamkit_proto::storage::{CommitOutcome, KvError, KvPair, OrderedKv, ScanRange, WriteBatch};

use crate::log_limit::limited_log;

/// The one table of a store database. Keys are the storage model's keys (PROTOCOL.md §5.2), values its
/// encodings; the table name is part of the file format.
const ENTRIES: TableDefinition<'static, &'static [u8], &'static [u8]> = TableDefinition::new("streamkit");

/// One key/value pair as a redb range yields it.
type Row<'a> = (redb::AccessGuard<'a, &'static [u8]>, redb::AccessGuard<'a, &'static [u8]>);

/// When a commit is on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CommitDurability {
    /// Every commit call fsyncs before it returns: an acknowledged write survives a process kill and
    /// a power loss. The default, and what the server promises its producers (invariant 2).
    #[default]
    Immediate,
    /// **Not durable.** Commits become visible to readers at once but are only written to disk by the
    /// next `Immediate` commit or a clean close. After a process kill, an OS crash or a power loss the
    /// database reopens at its last durable commit: every commit made in this mode since then is
    /// **lost, although it was acknowledged**. Only for tests, benchmarks and data that can be
    /// rebuilt.
    None,
}

impl From<CommitDurability> for redb::Durability {
    fn from(value: CommitDurability) -> Self {
        match value {
            CommitDurability::Immediate => redb::Durability::Immediate,
            CommitDurability::None => redb::Durability::None,
        }
    }
}

/// How a redb store is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedbOptions {
    /// Durability of every commit (default [`CommitDurability::Immediate`]).
    pub durability: CommitDurability,
    /// Verify the checksum of every page when opening, so a file altered outside redb fails to open
    /// with a "corrupted" error instead of being trusted. It reads the whole file, so opening takes
    /// time proportional to its size; off by default because the server opens stores on demand. After
    /// a crash redb checks and repairs the file on open regardless of this setting.
    pub verify_on_open: bool,
    /// Bytes of page cache for this database. redb's own default is 1 GiB per database, far too much
    /// for a server holding one database per store open, hence a smaller default (64 MiB).
    pub cache_size: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self { durability: CommitDurability::Immediate, verify_on_open: false, cache_size: 64 << 20 }
    }
}

/// An [`OrderedKv`] on one redb database file. Clones share the open database.
#[derive(Clone)]
pub struct RedbKv {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    durability: CommitDurability,
    /// Set, with the panic message, once a call into redb has panicked; shared by all clones.
    poisoned: Arc<OnceLock<String>>,
}

impl std::fmt::Debug for RedbKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbKv")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .field("poisoned", &self.poisoned.get())
            .finish()
    }
}

impl RedbKv {
    /// Opens the database file at `path`, creating it when it does not exist (its directory must
    /// exist). Fails with a [`KvError`] when the file is not a redb database, is corrupted (with
    /// [`RedbOptions::verify_on_open`]), is already open (in this or another process) or cannot be
    /// read.
    pub fn open(path: impl AsRef<Path>, options: &RedbOptions) -> Result<Self, KvError> {
        let path = path.as_ref().to_path_buf();
        let opened = catch_unwind(AssertUnwindSafe(|| {
            let mut builder = Database::builder();
            builder.set_cache_size(options.cache_size).set_check_integrity_on_open(options.verify_on_open);
            builder.create(&path)
        }));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(error("open", &path, e)),
            Err(panic) => {
                // The panic message is for the log: it may quote paths and debug dumps.
                tracing::warn!(
                    path = %path.display(),
                    panic = %panic_text(&panic),
                    "redb panicked opening a database (corrupted file?)"
                );
                return Err(KvError(
                    "storage open failed: the database file is unreadable (corrupted?)".to_owned(),
                ));
            }
        };
        Ok(Self {
            db: Arc::new(db),
            path: Arc::new(path),
            durability: options.durability,
            poisoned: Arc::new(OnceLock::new()),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The durability of this handle's commits.
    pub fn durability(&self) -> CommitDurability {
        self.durability
    }

    /// Runs `op` against the database unless an earlier call panicked; a panic is turned into an error
    /// and disables the database for every clone.
    fn guarded<T>(&self, what: &str, op: impl FnOnce(&Database) -> Result<T, KvError>) -> Result<T, KvError> {
        if let Some(reason) = self.poisoned.get() {
            return Err(self.disabled(reason));
        }
        match catch_unwind(AssertUnwindSafe(|| op(&self.db))) {
            Ok(result) => result,
            Err(panic) => {
                let reason = format!("redb {what} panicked: {}", panic_text(&panic));
                tracing::error!(path = %self.path.display(), %reason, "store disabled: redb panicked");
                let reason = self.poisoned.get_or_init(|| reason);
                Err(self.disabled(reason))
            }
        }
    }

    /// The error of every operation once the database panicked: the client learns that the store is
    /// out of service, the log why (the panic message may quote paths and debug dumps).
    fn disabled(&self, reason: &str) -> KvError {
        // Every later request of the store's clients ends here.
        limited_log!(warn, [path = %self.path.display(), %reason], "operation refused: the store is disabled");
        KvError("store disabled after an internal error".to_owned())
    }

    fn apply(&self, db: &Database, batches: &[WriteBatch]) -> Result<Vec<CommitOutcome>, KvError> {
        let path = self.path.as_path();
        let mut txn = db.begin_write().map_err(|e| error("begin write", path, e))?;
        txn.set_durability(self.durability.into()).map_err(|e| error("set durability", path, e))?;
        let mut outcomes = Vec::with_capacity(batches.len());
        {
            let mut table = txn.open_table(ENTRIES).map_err(|e| error("open table", path, e))?;
            for batch in batches {
                let mut outcome = CommitOutcome::Committed;
                for (index, precondition) in batch.preconditions.iter().enumerate() {
                    let current = table.get(precondition.key()).map_err(|e| error("get", path, e))?;
                    if !precondition.holds(current.as_ref().map(|guard| guard.value())) {
                        outcome = CommitOutcome::Conflict { index };
                        break;
                    }
                }
                if outcome == CommitOutcome::Committed {
                    for (key, value) in &batch.puts {
                        table
                            .insert(key.as_slice(), value.as_slice())
                            .map_err(|e| error("insert", path, e))?;
                    }
                    for key in &batch.deletes {
                        table.remove(key.as_slice()).map_err(|e| error("remove", path, e))?;
                    }
                }
                outcomes.push(outcome);
            }
        }
        // An early return above drops `txn`, which aborts it: a commit call is all or nothing.
        if outcomes.contains(&CommitOutcome::Committed) {
            txn.commit().map_err(|e| error("commit", path, e))?;
        } else {
            // Every batch conflicted: nothing to write, so spare the fsync.
            txn.abort().map_err(|e| error("abort", path, e))?;
        }
        Ok(outcomes)
    }
}

impl OrderedKv for RedbKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.guarded("get", |db| {
            let path = self.path.as_path();
            let txn = db.begin_read().map_err(|e| error("begin read", path, e))?;
            let table = match txn.open_table(ENTRIES) {
                Ok(table) => table,
                // Nothing was ever committed to this database.
                Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(error("open table", path, e)),
            };
            let value = table.get(key).map_err(|e| error("get", path, e))?;
            Ok(value.map(|guard| guard.value().to_vec()))
        })
    }

    fn scan(&self, range: &ScanRange) -> Result<Vec<KvPair>, KvError> {
        // An inverted range is empty by contract (and redb must not be asked for it).
        if range.limit == 0 || range.start >= range.end {
            return Ok(Vec::new());
        }
        self.guarded("scan", |db| {
            let path = self.path.as_path();
            let txn = db.begin_read().map_err(|e| error("begin read", path, e))?;
            let table = match txn.open_table(ENTRIES) {
                Ok(table) => table,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(error("open table", path, e)),
            };
            let iter = table
                .range::<&[u8]>(range.start.as_slice()..range.end.as_slice())
                .map_err(|e| error("scan", path, e))?;
            // The iterator is lazy: only the pairs returned are read and copied.
            let copy = |item: Result<Row<'_>, redb::StorageError>| {
                let (key, value) = item.map_err(|e| error("scan", path, e))?;
                Ok((key.value().to_vec(), value.value().to_vec()))
            };
            if range.reverse { range.collect(iter.rev().map(copy)) } else { range.collect(iter.map(copy)) }
        })
    }

    fn commit(&mut self, batches: &[WriteBatch]) -> Result<Vec<CommitOutcome>, KvError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        self.guarded("commit", |db| self.apply(db, batches))
    }

    /// The size of the database file: what the store takes on disk.
    fn usage(&self) -> Result<u64, KvError> {
        std::fs::metadata(self.path.as_path()).map(|meta| meta.len()).map_err(|e| {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot read the size of a store file");
            KvError(format!("storage usage failed: {}", e.kind()))
        })
    }
}

/// A redb error as a [`KvError`] for clients (the operation and redb's reason, no path), logged in
/// full with the file's path.
fn error(what: &str, path: &Path, e: impl Into<redb::Error>) -> KvError {
    let e = e.into();
    // A failing disk fails every request: one line per request would follow.
    limited_log!(warn, [path = %path.display(), operation = what, error = %e], "redb operation failed");
    KvError(format!("storage {what} failed: {}", client_text(&e)))
}

/// redb's text of `e`, without the source location (a path on the build machine) that two of its
/// variants print. No redb error prints the database's path.
fn client_text(e: &redb::Error) -> String {
    match e {
        redb::Error::TableAlreadyOpen(name, _) => format!("Table '{name}' already opened"),
        redb::Error::LockPoisoned(_) => "Poisoned internal lock".to_owned(),
        other => other.to_string(),
    }
}

fn panic_text(panic: &Box<dyn Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-text panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use streamkit_proto::storage::Precondition;

    use super::*;

    fn put(key: &[u8], value: &[u8]) -> WriteBatch {
        WriteBatch { puts: vec![(key.to_vec(), value.to_vec())], ..WriteBatch::default() }
    }

    fn options(durability: CommitDurability) -> RedbOptions {
        RedbOptions { durability, ..RedbOptions::default() }
    }

    #[test]
    fn fresh_database_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        let kv = RedbKv::open(dir.path().join("s.redb"), &RedbOptions::default()).unwrap();
        assert_eq!(kv.get(b"k").unwrap(), None);
        let all = ScanRange::new(vec![], vec![0xff], 10);
        assert!(kv.scan(&all).unwrap().is_empty());
        assert_eq!(kv.durability(), CommitDurability::Immediate);
    }

    #[test]
    fn committed_data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        for durability in [CommitDurability::Immediate, CommitDurability::None] {
            let mut kv = RedbKv::open(&path, &options(durability)).unwrap();
            let key = format!("{durability:?}");
            kv.commit(&[put(key.as_bytes(), b"v")]).unwrap();
            // A clean close persists even non-durable commits; the crash case is in tests/.
            drop(kv);
            let kv = RedbKv::open(&path, &RedbOptions::default()).unwrap();
            assert_eq!(kv.get(key.as_bytes()).unwrap().as_deref(), Some(&b"v"[..]));
        }
    }

    #[test]
    fn all_conflicting_commit_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut kv = RedbKv::open(dir.path().join("s.redb"), &RedbOptions::default()).unwrap();
        let guarded = WriteBatch {
            preconditions: vec![Precondition::Equals { key: b"k".to_vec(), value: b"old".to_vec() }],
            puts: vec![(b"k".to_vec(), b"new".to_vec())],
            deletes: vec![],
        };
        assert_eq!(kv.commit(&[guarded]).unwrap(), [CommitOutcome::Conflict { index: 0 }]);
        assert_eq!(kv.get(b"k").unwrap(), None);
    }

    #[test]
    fn second_open_of_the_same_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let _first = RedbKv::open(&path, &RedbOptions::default()).unwrap();
        let err = RedbKv::open(&path, &RedbOptions::default()).unwrap_err();
        assert_eq!(err.0, "storage open failed: Database already open. Cannot acquire lock.");
    }

    #[test]
    fn error_texts_hold_no_source_locations() {
        let location = std::panic::Location::caller();
        for (e, text) in [
            (redb::Error::LockPoisoned(location), "Poisoned internal lock"),
            (redb::Error::TableAlreadyOpen("t".to_owned(), location), "Table 't' already opened"),
            (redb::Error::PreviousIo, "Previous I/O error occurred. Please close and re-open the database."),
        ] {
            assert_eq!(client_text(&e), text);
        }
        let io = std::io::Error::from_raw_os_error(28);
        let err = error("commit", Path::new("/var/lib/streamkit/s/streams.redb"), redb::StorageError::Io(io));
        assert_eq!(err.0, "storage commit failed: I/O error: No space left on device (os error 28)");
    }

    #[test]
    fn poisoned_handle_refuses_operations() {
        let dir = tempfile::tempdir().unwrap();
        let kv = RedbKv::open(dir.path().join("s.redb"), &RedbOptions::default()).unwrap();
        let err = kv.guarded("test", |_| -> Result<(), KvError> { panic!("boom") }).unwrap_err();
        // The panic message is for the log only.
        assert_eq!(err.0, "store disabled after an internal error");
        assert_eq!(kv.poisoned.get().map(String::as_str), Some("redb test panicked: boom"));
        // Clones share the state: the database is never touched again through any handle.
        let clone = kv.clone();
        let err = clone.get(b"k").unwrap_err();
        assert_eq!(err.0, "store disabled after an internal error");
    }
}
