//! The ordered key-value model every storage backend implements.
//!
//! The node engine never talks to a database: it emits [`StorageOp`] effects and receives
//! [`StorageResult`]s. A backend only has to provide point gets, bounded scans in either direction and
//! an atomic commit of write batches guarded by preconditions. Sequence conflicts between concurrent
//! producers surface as failed preconditions, so the same engine logic is correct on one node and on
//! many.
//!
//! **Group commit**: [`OrderedKv::commit`] takes several independent batches. A backend applies them in
//! order inside one atomic, durable transaction; a batch whose preconditions fail is skipped (and
//! reported) without affecting the others, and preconditions see the effects of earlier batches of the
//! same call. Adapters gather the commits of concurrent produces into one call, so one fsync
//! acknowledges many produces.

use alloc::string::String;
use alloc::vec::Vec;

/// One key and its value, as scans return them.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// A half-open key range `[start, end)` in byte order, read forward or backward, at most `limit` pairs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanRange {
    /// First key of the range (inclusive).
    pub start: Vec<u8>,
    /// End of the range (exclusive).
    pub end: Vec<u8>,
    /// Read from the end of the range towards the start.
    pub reverse: bool,
    /// Maximum number of pairs to return (0 returns none).
    pub limit: usize,
    /// Stop once the pairs returned hold this many key and value bytes: the pair that reaches it is
    /// the last one (so a scan that finds anything returns at least one pair, however large).
    /// `usize::MAX` for no byte bound. Readers of large entries use it to bound what one scan holds.
    pub max_bytes: usize,
}

impl ScanRange {
    /// The range `[start, end)`, forward, at most `limit` pairs, no byte bound.
    pub fn new(start: Vec<u8>, end: Vec<u8>, limit: usize) -> Self {
        Self { start, end, reverse: false, limit, max_bytes: usize::MAX }
    }

    /// Collects pairs from `pairs` (in scan order) within `limit` and `max_bytes`, stopping at the first
    /// error: the common loop of every backend.
    pub fn collect<E>(&self, pairs: impl Iterator<Item = Result<KvPair, E>>) -> Result<Vec<KvPair>, E> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for pair in pairs.take(self.limit) {
            let pair = pair?;
            bytes = bytes.saturating_add(pair.0.len() + pair.1.len());
            out.push(pair);
            if bytes >= self.max_bytes {
                break;
            }
        }
        Ok(out)
    }
}

/// A condition a batch needs to hold at commit time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// `key` must not exist.
    Absent {
        /// The key.
        key: Vec<u8>,
    },
    /// `key` must exist with exactly `value`.
    Equals {
        /// The key.
        key: Vec<u8>,
        /// The expected value.
        value: Vec<u8>,
    },
}

impl Precondition {
    /// The key the condition is about.
    pub fn key(&self) -> &[u8] {
        match self {
            Precondition::Absent { key } | Precondition::Equals { key, .. } => key,
        }
    }

    /// Whether the condition holds for the current value of its key.
    pub fn holds(&self, current: Option<&[u8]>) -> bool {
        match self {
            Precondition::Absent { .. } => current.is_none(),
            Precondition::Equals { value, .. } => current == Some(value.as_slice()),
        }
    }
}

/// An atomic unit of writes: all or nothing, and only if every precondition holds.
///
/// Backends apply `puts` in order (the last put of a key wins) and then `deletes`, so a key that is
/// both put and deleted in one batch ends up absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// Conditions checked before anything is written.
    pub preconditions: Vec<Precondition>,
    /// Keys to set.
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
    /// Keys to remove.
    pub deletes: Vec<Vec<u8>>,
}

impl WriteBatch {
    /// Total bytes of keys and values written (for metrics and size limits).
    pub fn byte_size(&self) -> usize {
        self.puts.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            + self.deletes.iter().map(Vec::len).sum::<usize>()
    }
}

/// What happened to one batch of a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Written (durably, once the commit call returns).
    Committed,
    /// Not written: the precondition at `index` did not hold.
    Conflict {
        /// Index into [`WriteBatch::preconditions`].
        index: usize,
    },
}

/// A backend failure (I/O error, corruption, unavailable database). Texts are for logs and clients.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KvError(pub String);

/// A storage effect emitted by the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageOp {
    /// Read one key.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Read a range.
    Scan(ScanRange),
    /// Commit one batch (adapters may merge concurrent commits of a store into one transaction).
    Commit(WriteBatch),
    /// Measure how many bytes the store holds (for storage quotas).
    Usage,
}

/// The completion of a [`StorageOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageResult {
    /// Answer to [`StorageOp::Get`].
    Value(Option<Vec<u8>>),
    /// Answer to [`StorageOp::Scan`], in scan order.
    Pairs(Vec<(Vec<u8>, Vec<u8>)>),
    /// Answer to [`StorageOp::Commit`].
    Commit(CommitOutcome),
    /// Answer to [`StorageOp::Usage`]: bytes the store holds.
    Usage(u64),
    /// The backend failed.
    Failed(KvError),
}

/// A synchronous ordered key-value store (the in-memory store and embedded databases).
pub trait OrderedKv {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// Reads up to `range.limit` pairs of `range`, in key order (descending when `range.reverse`).
    fn scan(&self, range: &ScanRange) -> Result<Vec<KvPair>, KvError>;
    /// Applies `batches` in order in one atomic (and, for durable backends, durable) transaction; see the
    /// module documentation for the group-commit semantics. Returns one outcome per batch.
    fn commit(&mut self, batches: &[WriteBatch]) -> Result<Vec<CommitOutcome>, KvError>;
    /// Bytes the store holds, as this backend counts them (its keys and values, or its file): what
    /// storage quotas are checked against. It may be approximate, and is asked for rarely. Backends
    /// that cannot tell keep this default, and storage quotas cannot be enforced on them.
    fn usage(&self) -> Result<u64, KvError> {
        Err(KvError(String::from("this storage backend does not report its usage")))
    }

    /// Executes one effect (convenience for synchronous drivers).
    fn execute(&mut self, op: &StorageOp) -> StorageResult {
        let result = match op {
            StorageOp::Get { key } => self.get(key).map(StorageResult::Value),
            StorageOp::Scan(range) => self.scan(range).map(StorageResult::Pairs),
            StorageOp::Commit(batch) => self.commit(core::slice::from_ref(batch)).map(|mut outcomes| {
                StorageResult::Commit(outcomes.pop().unwrap_or(CommitOutcome::Committed))
            }),
            StorageOp::Usage => self.usage().map(StorageResult::Usage),
        };
        result.unwrap_or_else(StorageResult::Failed)
    }
}
