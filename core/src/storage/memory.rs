//! An in-memory [`OrderedKv`]: the reference backend for tests, the deterministic simulation and
//! embedding without persistence.
//!
//! It is the executable form of the contract in [`super::kv`]: the embedded backends are checked
//! against it by a model-based property test. Fault injection ([`MemoryKv::fail_next_commits`],
//! [`MemoryKv::lose_next_commit_acks`], [`MemoryKv::set_unavailable`]) lets the simulation exercise the
//! engine's error paths without a real disk.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;
use core::ops::Bound;

use super::kv::{CommitOutcome, KvError, KvPair, OrderedKv, ScanRange, WriteBatch};

/// Text of the error returned by every operation while the store is [unavailable](MemoryKv::set_unavailable).
pub const UNAVAILABLE: &str = "memory store unavailable (injected fault)";

/// A `BTreeMap`-backed ordered key-value store with optional fault injection.
///
/// Cloning takes a snapshot: the clone and the original evolve independently.
#[derive(Clone, Debug, Default)]
pub struct MemoryKv {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Commit calls still to fail before anything is applied.
    failing_commits: usize,
    /// Commit calls still to apply and then report as failed (an ambiguous outcome).
    lost_acks: usize,
    unavailable: bool,
    commit_calls: u64,
}

impl MemoryKv {
    /// An empty store without injected faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys stored.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// All pairs in key order (bypasses fault injection: it is for assertions, not for the engine).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.map.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Number of [`OrderedKv::commit`] calls received, failed ones included.
    pub fn commit_calls(&self) -> u64 {
        self.commit_calls
    }

    /// Makes the next `n` commit calls fail with a [`KvError`] without writing anything (a write that
    /// never reached the disk). Replaces any previous count.
    pub fn fail_next_commits(&mut self, n: usize) {
        self.failing_commits = n;
    }

    /// Makes the next `n` commit calls apply their batches and then fail with a [`KvError`]: the
    /// ambiguous outcome of a backend whose acknowledgement was lost (a timeout after the write took
    /// effect). Engines must not assume a failed commit wrote nothing. Replaces any previous count.
    pub fn lose_next_commit_acks(&mut self, n: usize) {
        self.lost_acks = n;
    }

    /// While `true`, every get, scan and commit fails with [`UNAVAILABLE`] and changes nothing.
    pub fn set_unavailable(&mut self, unavailable: bool) {
        self.unavailable = unavailable;
    }

    /// Whether [`MemoryKv::set_unavailable`] is in force.
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }

    fn check_available(&self) -> Result<(), KvError> {
        if self.unavailable { Err(KvError(UNAVAILABLE.into())) } else { Ok(()) }
    }

    /// Applies one batch if its preconditions hold against the current state (which includes the
    /// batches applied before it in the same commit call).
    fn apply(&mut self, batch: &WriteBatch) -> CommitOutcome {
        let failed =
            batch.preconditions.iter().position(|p| !p.holds(self.map.get(p.key()).map(Vec::as_slice)));
        if let Some(index) = failed {
            return CommitOutcome::Conflict { index };
        }
        for (key, value) in &batch.puts {
            self.map.insert(key.clone(), value.clone());
        }
        for key in &batch.deletes {
            self.map.remove(key);
        }
        CommitOutcome::Committed
    }
}

impl OrderedKv for MemoryKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.check_available()?;
        Ok(self.map.get(key).cloned())
    }

    fn scan(&self, range: &ScanRange) -> Result<Vec<KvPair>, KvError> {
        self.check_available()?;
        // BTreeMap::range panics on an inverted range, and an empty one has nothing to return.
        if range.limit == 0 || range.start >= range.end {
            return Ok(Vec::new());
        }
        let bounds = (Bound::Included(range.start.as_slice()), Bound::Excluded(range.end.as_slice()));
        let pairs = self.map.range::<[u8], _>(bounds).map(|(k, v)| Ok((k.clone(), v.clone())));
        if range.reverse { range.collect(pairs.rev()) } else { range.collect(pairs) }
    }

    fn usage(&self) -> Result<u64, KvError> {
        self.check_available()?;
        Ok(self.map.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum())
    }

    fn commit(&mut self, batches: &[WriteBatch]) -> Result<Vec<CommitOutcome>, KvError> {
        self.commit_calls += 1;
        self.check_available()?;
        if self.failing_commits > 0 {
            self.failing_commits -= 1;
            return Err(KvError("memory store commit failed (injected fault)".into()));
        }
        // Atomicity across batches comes for free: nothing below can fail half-way.
        let outcomes: Vec<CommitOutcome> = batches.iter().map(|batch| self.apply(batch)).collect();
        if self.lost_acks > 0 {
            self.lost_acks -= 1;
            let written = outcomes.iter().filter(|o| **o == CommitOutcome::Committed).count();
            return Err(KvError(format!(
                "memory store commit acknowledgement lost (injected fault; {written} batches were written)"
            )));
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;
    use crate::storage::kv::{Precondition, StorageOp, StorageResult};

    fn put(key: &[u8], value: &[u8]) -> WriteBatch {
        WriteBatch { puts: vec![(key.to_vec(), value.to_vec())], ..WriteBatch::default() }
    }

    fn range(start: &[u8], end: &[u8], reverse: bool, limit: usize) -> ScanRange {
        ScanRange { start: start.to_vec(), end: end.to_vec(), reverse, limit, max_bytes: usize::MAX }
    }

    fn keys(pairs: &[KvPair]) -> Vec<&[u8]> {
        pairs.iter().map(|(k, _)| k.as_slice()).collect()
    }

    fn filled() -> MemoryKv {
        let mut kv = MemoryKv::new();
        let batches: Vec<WriteBatch> =
            [&b"a"[..], b"b", b"b\0", b"c", b"d"].iter().map(|k| put(k, k)).collect();
        kv.commit(&batches).unwrap();
        kv
    }

    #[test]
    fn scans_are_half_open_ordered_and_limited() {
        let kv = filled();
        assert_eq!(keys(&kv.scan(&range(b"b", b"d", false, 10)).unwrap()), [&b"b"[..], b"b\0", b"c"]);
        assert_eq!(keys(&kv.scan(&range(b"b", b"d", true, 10)).unwrap()), [&b"c"[..], b"b\0", b"b"]);
        assert_eq!(keys(&kv.scan(&range(b"a", b"z", false, 2)).unwrap()), [&b"a"[..], b"b"]);
        assert_eq!(keys(&kv.scan(&range(b"a", b"z", true, 2)).unwrap()), [&b"d"[..], b"c"]);
        assert!(kv.scan(&range(b"a", b"z", false, 0)).unwrap().is_empty());
        assert!(kv.scan(&range(b"c", b"c", false, 10)).unwrap().is_empty());
        assert!(kv.scan(&range(b"d", b"a", true, 10)).unwrap().is_empty());
        assert_eq!(keys(&kv.scan(&range(b"", b"\xff", false, 10)).unwrap()).len(), 5);
    }

    #[test]
    fn later_batches_see_earlier_batches_and_conflicts_are_skipped() {
        let mut kv = MemoryKv::new();
        let guarded = |key: &[u8], value: &[u8], pre: Vec<Precondition>| WriteBatch {
            preconditions: pre,
            puts: vec![(key.to_vec(), value.to_vec())],
            deletes: vec![],
        };
        let absent = |k: &[u8]| Precondition::Absent { key: k.to_vec() };
        let equals = |k: &[u8], v: &[u8]| Precondition::Equals { key: k.to_vec(), value: v.to_vec() };
        let outcomes = kv
            .commit(&[
                guarded(b"seq", b"1", vec![absent(b"seq")]),
                // Loses: the first batch created the key.
                guarded(b"seq", b"x", vec![absent(b"other"), absent(b"seq")]),
                guarded(b"seq", b"2", vec![equals(b"seq", b"1")]),
                // Loses: the value moved on to 2 in the previous batch.
                guarded(b"seq", b"y", vec![equals(b"seq", b"1")]),
            ])
            .unwrap();
        assert_eq!(
            outcomes,
            [
                CommitOutcome::Committed,
                CommitOutcome::Conflict { index: 1 },
                CommitOutcome::Committed,
                CommitOutcome::Conflict { index: 0 }
            ]
        );
        assert_eq!(kv.get(b"seq").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(kv.len(), 1);
    }

    #[test]
    fn deletes_apply_after_puts_of_the_same_batch() {
        let mut kv = MemoryKv::new();
        let batch = WriteBatch {
            puts: vec![(b"k".to_vec(), b"v".to_vec())],
            deletes: vec![b"k".to_vec()],
            ..WriteBatch::default()
        };
        kv.commit(&[batch, put(b"j", b"1"), put(b"j", b"2")]).unwrap();
        assert_eq!(kv.get(b"k").unwrap(), None);
        assert_eq!(kv.get(b"j").unwrap().as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn injected_commit_failures_write_nothing() {
        let mut kv = MemoryKv::new();
        kv.fail_next_commits(2);
        assert!(kv.commit(&[put(b"a", b"1")]).is_err());
        assert!(kv.commit(&[put(b"a", b"1")]).is_err());
        assert!(kv.is_empty());
        assert_eq!(kv.commit(&[put(b"a", b"1")]).unwrap(), [CommitOutcome::Committed]);
        assert_eq!(kv.commit_calls(), 3);
    }

    #[test]
    fn lost_acknowledgements_still_write() {
        let mut kv = MemoryKv::new();
        kv.lose_next_commit_acks(1);
        let err = kv.commit(&[put(b"a", b"1")]).unwrap_err();
        assert!(err.0.contains("1 batches were written"), "{err}");
        assert_eq!(kv.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
        assert!(kv.commit(&[put(b"b", b"1")]).is_ok());
    }

    #[test]
    fn unavailable_store_fails_everything_and_recovers() {
        let mut kv = filled();
        kv.set_unavailable(true);
        assert!(kv.is_unavailable());
        assert_eq!(kv.get(b"a"), Err(KvError(UNAVAILABLE.into())));
        assert!(kv.scan(&range(b"a", b"z", false, 10)).is_err());
        assert!(kv.commit(&[put(b"z", b"1")]).is_err());
        assert_eq!(
            kv.execute(&StorageOp::Get { key: b"a".to_vec() }),
            StorageResult::Failed(KvError(UNAVAILABLE.into()))
        );
        kv.set_unavailable(false);
        assert_eq!(kv.get(b"z").unwrap(), None);
        assert_eq!(kv.get(b"a").unwrap().as_deref(), Some(&b"a"[..]));
    }

    #[test]
    fn execute_maps_each_operation() {
        let mut kv = MemoryKv::new();
        let op = StorageOp::Commit(WriteBatch {
            preconditions: vec![Precondition::Absent { key: b"k".to_vec() }],
            puts: vec![(b"k".to_vec(), b"v".to_vec())],
            deletes: vec![],
        });
        assert_eq!(kv.execute(&op), StorageResult::Commit(CommitOutcome::Committed));
        assert_eq!(kv.execute(&op), StorageResult::Commit(CommitOutcome::Conflict { index: 0 }));
        assert_eq!(
            kv.execute(&StorageOp::Get { key: b"k".to_vec() }),
            StorageResult::Value(Some(b"v".to_vec()))
        );
        assert_eq!(
            kv.execute(&StorageOp::Scan(range(b"a", b"z", false, 5))),
            StorageResult::Pairs(vec![(b"k".to_vec(), b"v".to_vec())])
        );
    }
}
