//! The conformance suite of the [`OrderedKv`] contract: any storage backend runs it from its own
//! tests to show that it answers exactly as the reference model, [`MemoryKv`], does.
//!
//! Each case is a seeded random sequence of point gets, bounded scans (forward and backward, with
//! item and byte limits, empty and inverted ranges), group commits of batches with `Absent` and
//! `Equals` preconditions, and reopenings of the store; keys and values come from a tiny alphabet so
//! that collisions, prefixes, the empty key and the 0x00/0xff edges come up all the time. After every
//! step the candidate's answer must equal the model's, and at the end of a case the whole key space
//! must hold the same pairs. Runs are deterministic: a failure names its seed, case and step, and the
//! same [`Suite`] finds it again.
//!
//! ```
//! use std::cell::RefCell;
//! use std::collections::BTreeMap;
//! use std::rc::Rc;
//!
//! use streamkit_proto::storage::conformance::Suite;
//! use streamkit_proto::storage::{CommitOutcome, KvError, KvPair, MemoryKv, OrderedKv, ScanRange, WriteBatch};
//!
//! /// The backend under test: here the model itself, shared so that reopening finds the data.
//! #[derive(Clone, Default)]
//! struct MyKv(Rc<RefCell<MemoryKv>>);
//!
//! impl OrderedKv for MyKv {
//!     fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> { self.0.borrow().get(key) }
//!     fn scan(&self, range: &ScanRange) -> Result<Vec<KvPair>, KvError> { self.0.borrow().scan(range) }
//!     fn commit(&mut self, batches: &[WriteBatch]) -> Result<Vec<CommitOutcome>, KvError> {
//!         self.0.borrow_mut().commit(batches)
//!     }
//! }
//!
//! // `open(case, reopen)`: a fresh store for each case, the same data when it is opened again.
//! let mut stores = BTreeMap::<u32, MyKv>::new();
//! let result = Suite::default().check(|case, reopen| {
//!     if !reopen {
//!         stores.insert(case, MyKv::default());
//!     }
//!     stores[&case].clone()
//! });
//! assert_eq!(result, Ok(()));
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::{MemoryKv, OrderedKv, Precondition, ScanRange, StorageOp, StorageResult, WriteBatch};
use crate::rand::Rng;

/// How much of the suite to run.
#[derive(Clone, Copy, Debug)]
pub struct Suite {
    /// Independent random sequences.
    pub cases: u32,
    /// Operations per sequence.
    pub steps: u32,
    /// The seed of the first case; each case derives its own.
    pub seed: u64,
}

impl Default for Suite {
    /// 64 cases of 40 steps: a few thousand operations, well under a second on an in-memory backend.
    fn default() -> Self {
        Self { cases: 64, steps: 40, seed: 0x5eed_5eed }
    }
}

/// The first difference between the candidate and the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The seed of the suite.
    pub seed: u64,
    /// The case (0-based).
    pub case: u32,
    /// The step within the case, or `None` for the comparison of the whole key space at its end.
    pub step: Option<u32>,
    /// The operation, as `Debug` prints it.
    pub operation: String,
    /// What the model answered.
    pub expected: String,
    /// What the candidate answered.
    pub got: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = match self.step {
            Some(step) => format!("step {step}"),
            None => String::from("the final comparison"),
        };
        write!(
            f,
            "seed {:#x}, case {}, {at}: {}\n  expected: {}\n  got:      {}",
            self.seed, self.case, self.operation, self.expected, self.got
        )
    }
}

/// One operation of a case.
#[derive(Clone, Debug)]
enum Operation {
    Get(Vec<u8>),
    Scan(ScanRange),
    Commit(Vec<WriteBatch>),
    /// Drop the candidate and open the same store again.
    Reopen,
}

impl Suite {
    /// Runs the suite. `open(case, reopen)` returns the candidate's store for case `case`: empty when
    /// `reopen` is false, and holding everything committed to that case's store so far when it is
    /// true (the previous handle has been dropped by then).
    pub fn check<K, F>(&self, mut open: F) -> Result<(), Failure>
    where
        K: OrderedKv,
        F: FnMut(u32, bool) -> K,
    {
        let mut seeds = Rng::new(self.seed);
        for case in 0..self.cases {
            let mut rng = seeds.fork();
            let mut model = MemoryKv::new();
            let mut candidate = Some(open(case, false));
            for step in 0..self.steps {
                let operation = random_operation(&mut rng);
                if let Operation::Reopen = operation {
                    drop(candidate.take());
                    candidate = Some(open(case, true));
                    continue;
                }
                let Some(kv) = candidate.as_mut() else { continue };
                let expected = run(&mut model, &operation);
                let got = run(kv, &operation);
                if got != expected {
                    return Err(self.failure(case, Some(step), &operation, &expected, &got));
                }
            }
            let everything = ScanRange::new(Vec::new(), vec![0xff; 8], usize::MAX);
            let expected = model.scan(&everything);
            let got = candidate.as_ref().map(|kv| kv.scan(&everything));
            if got.as_ref() != Some(&expected) {
                let operation = Operation::Scan(everything);
                return Err(self.failure(case, None, &operation, &expected, &got));
            }
        }
        Ok(())
    }

    fn failure(
        &self,
        case: u32,
        step: Option<u32>,
        operation: &Operation,
        expected: &dyn fmt::Debug,
        got: &dyn fmt::Debug,
    ) -> Failure {
        Failure {
            seed: self.seed,
            case,
            step,
            operation: format!("{operation:?}"),
            expected: format!("{expected:?}"),
            got: format!("{got:?}"),
        }
    }
}

/// Runs one operation and returns its answer in comparable form.
fn run(kv: &mut impl OrderedKv, operation: &Operation) -> StorageResult {
    match operation {
        Operation::Get(key) => kv.execute(&StorageOp::Get { key: key.clone() }),
        Operation::Scan(range) => kv.execute(&StorageOp::Scan(range.clone())),
        Operation::Commit(batches) => match kv.commit(batches) {
            // Outcomes as pairs only to share the comparison type.
            Ok(outcomes) => StorageResult::Pairs(
                outcomes.iter().map(|o| (format!("{o:?}").into_bytes(), Vec::new())).collect(),
            ),
            Err(error) => StorageResult::Failed(error),
        },
        Operation::Reopen => StorageResult::Value(None),
    }
}

fn pick<T: Clone>(rng: &mut Rng, items: &[T]) -> T {
    items[rng.below(items.len() as u64) as usize].clone()
}

/// Few distinct bytes, short keys (0 to 3 bytes).
fn key(rng: &mut Rng) -> Vec<u8> {
    (0..rng.below(4)).map(|_| pick(rng, &[0x00u8, 0x01, 0x7f, 0xff])).collect()
}

/// Few distinct values, so `Equals` preconditions hold often enough to matter.
fn value(rng: &mut Rng) -> Vec<u8> {
    pick(rng, &[vec![], vec![1], vec![2, 3]])
}

/// No byte bound, or one small enough to cut scans short.
fn max_bytes(rng: &mut Rng) -> usize {
    if rng.below(2) == 0 { usize::MAX } else { rng.below(24) as usize }
}

fn batch(rng: &mut Rng) -> WriteBatch {
    let preconditions = (0..rng.below(3))
        .map(|_| {
            if rng.below(2) == 0 {
                Precondition::Absent { key: key(rng) }
            } else {
                Precondition::Equals { key: key(rng), value: value(rng) }
            }
        })
        .collect();
    let puts = (0..rng.below(4)).map(|_| (key(rng), value(rng))).collect();
    let deletes = (0..rng.below(3)).map(|_| key(rng)).collect();
    WriteBatch { preconditions, puts, deletes }
}

/// Weights: get 2, bounded scan 3, whole-space scan 1, commit 4, reopen 1.
fn random_operation(rng: &mut Rng) -> Operation {
    match rng.below(11) {
        0..=1 => Operation::Get(key(rng)),
        2..=4 => Operation::Scan(ScanRange {
            start: key(rng),
            end: key(rng),
            reverse: rng.below(2) == 0,
            limit: rng.below(6) as usize,
            max_bytes: max_bytes(rng),
        }),
        5 => Operation::Scan(ScanRange {
            start: Vec::new(),
            end: vec![0xff; 4],
            reverse: rng.below(2) == 0,
            limit: rng.below(20) as usize,
            max_bytes: max_bytes(rng),
        }),
        6..=9 => Operation::Commit((0..rng.below(4)).map(|_| batch(rng)).collect()),
        _ => Operation::Reopen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{CommitOutcome, KvError, KvPair};

    /// A backend that forgets `Equals` preconditions: the suite must notice.
    struct Careless(MemoryKv);

    impl OrderedKv for Careless {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
            self.0.get(key)
        }
        fn scan(&self, range: &ScanRange) -> Result<Vec<KvPair>, KvError> {
            self.0.scan(range)
        }
        fn commit(&mut self, batches: &[WriteBatch]) -> Result<Vec<CommitOutcome>, KvError> {
            let relaxed: Vec<WriteBatch> = batches
                .iter()
                .map(|batch| WriteBatch {
                    preconditions: batch
                        .preconditions
                        .iter()
                        .filter(|p| matches!(p, Precondition::Absent { .. }))
                        .cloned()
                        .collect(),
                    ..batch.clone()
                })
                .collect();
            self.0.commit(&relaxed)
        }
    }

    /// The model, shared so that reopening a case's store finds its data.
    #[derive(Clone, Default)]
    struct Shared(alloc::rc::Rc<core::cell::RefCell<MemoryKv>>);

    impl OrderedKv for Shared {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
            self.0.borrow().get(key)
        }
        fn scan(&self, range: &ScanRange) -> Result<Vec<KvPair>, KvError> {
            self.0.borrow().scan(range)
        }
        fn commit(&mut self, batches: &[WriteBatch]) -> Result<Vec<CommitOutcome>, KvError> {
            self.0.borrow_mut().commit(batches)
        }
    }

    #[test]
    fn the_model_passes_and_a_careless_backend_fails() {
        let mut stores = alloc::collections::BTreeMap::<u32, Shared>::new();
        let passed = Suite::default().check(|case: u32, reopen: bool| {
            if !reopen {
                stores.insert(case, Shared::default());
            }
            stores[&case].clone()
        });
        assert_eq!(passed, Ok(()));
        let failure = Suite::default().check(|_, _| Careless(MemoryKv::new())).unwrap_err();
        assert!(failure.to_string().starts_with("seed 0x5eed5eed, case "), "{failure}");
    }

    #[test]
    fn a_store_that_loses_its_data_on_reopen_fails() {
        let failure = Suite::default().check(|_, _| MemoryKv::new()).unwrap_err();
        assert_ne!(failure.expected, failure.got);
    }
}
