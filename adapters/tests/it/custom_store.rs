//! Pluggable storage: a backend written here, outside the adapters crate, against the public
//! `OrderedKv` contract only, passes the contract's conformance suite and serves a real client
//! through `StoreFactory::custom`. The built-in backends pass the same suite.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::StreamExt;
use streamkit::core::api::ConsumeSegment;
use streamkit::core::storage::conformance::Suite;
use streamkit::core::storage::{
    CommitOutcome, KvError, KvPair, OrderedKv, Precondition, ScanRange, WriteBatch,
};
use streamkit::runtime::Runtime;
use streamkit::server::ServerConfig;
use streamkit::store::{RedbKv, RedbOptions, SharedMemoryKv, StoreFactory};
use uuid::Uuid;

use crate::client_support::{Via, client, step};
use crate::support::{any_port, serve, verifier};

/// The backend: one ordered map per store, kept for the life of the process by a registry (so a
/// store opened again finds its data), with every commit group applied atomically under one lock.
#[derive(Clone, Default)]
struct MapStore(Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>);

impl MapStore {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn holds(map: &BTreeMap<Vec<u8>, Vec<u8>>, precondition: &Precondition) -> bool {
    match precondition {
        Precondition::Absent { key } => !map.contains_key(key),
        Precondition::Equals { key, value } => map.get(key) == Some(value),
    }
}

impl OrderedKv for MapStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.map().get(key).cloned())
    }

    fn scan(&self, range: &ScanRange) -> Result<Vec<KvPair>, KvError> {
        let map = self.map();
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        let bounds = (Bound::Included(range.start.clone()), Bound::Excluded(range.end.clone()));
        let pairs = map.range(bounds).map(|(key, value)| Ok::<_, KvError>((key.clone(), value.clone())));
        if range.reverse { range.collect(pairs.rev()) } else { range.collect(pairs) }
    }

    fn commit(&mut self, batches: &[WriteBatch]) -> Result<Vec<CommitOutcome>, KvError> {
        let mut map = self.map();
        let mut outcomes = Vec::with_capacity(batches.len());
        for batch in batches {
            if let Some(index) = batch.preconditions.iter().position(|p| !holds(&map, p)) {
                outcomes.push(CommitOutcome::Conflict { index });
                continue;
            }
            for (key, value) in &batch.puts {
                map.insert(key.clone(), value.clone());
            }
            for key in &batch.deletes {
                map.remove(key);
            }
            outcomes.push(CommitOutcome::Committed);
        }
        Ok(outcomes)
    }

    fn usage(&self) -> Result<u64, KvError> {
        Ok(self.map().iter().map(|(key, value)| (key.len() + value.len()) as u64).sum())
    }
}

/// The stores of the backend, by store id.
#[derive(Clone, Default)]
struct Registry(Arc<Mutex<HashMap<Uuid, MapStore>>>);

impl Registry {
    fn open(&self, store_id: &Uuid) -> MapStore {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).entry(*store_id).or_default().clone()
    }
}

#[test]
fn a_backend_written_against_the_contract_passes_the_conformance_suite() {
    let registry = Registry::default();
    let ids: Vec<Uuid> = (0..Suite::default().cases).map(|_| Uuid::new_v4()).collect();
    let result = Suite::default().check(|case, _reopen| registry.open(&ids[case as usize]));
    assert_eq!(result, Ok(()), "{}", result.as_ref().err().map(ToString::to_string).unwrap_or_default());
}

#[test]
fn the_built_in_backends_pass_the_conformance_suite() {
    // In memory: a fresh SharedMemoryKv per case; clones share the data, so a reopen keeps it.
    let mut memory: HashMap<u32, SharedMemoryKv> = HashMap::new();
    let result = Suite::default().check(|case, reopen| {
        if !reopen {
            memory.insert(case, SharedMemoryKv::default());
        }
        memory[&case].clone()
    });
    assert_eq!(result, Ok(()));

    // redb: one file per case, opened again from disk on a reopen.
    let dir = tempfile::tempdir().unwrap();
    let options = RedbOptions::default();
    let suite = Suite { cases: 16, ..Suite::default() };
    let result =
        suite.check(|case, _reopen| RedbKv::open(dir.path().join(format!("{case}.redb")), &options).unwrap());
    assert_eq!(result, Ok(()), "{}", result.as_ref().err().map(ToString::to_string).unwrap_or_default());
}

async fn the_custom_backend_serves_a_real_client(runtime: Arc<dyn Runtime>) {
    let registry = Registry::default();
    let opener = {
        let registry = registry.clone();
        move |store_id: &Uuid| -> Result<Box<dyn OrderedKv + Send>, KvError> {
            Ok(Box::new(registry.open(store_id)))
        }
    };
    let server =
        serve(&runtime, ServerConfig::new(any_port(), verifier(), StoreFactory::custom(opener))).await;
    let client = client(&runtime, &server, Via::Json).await;
    let store = Uuid::new_v4();
    for event in ["created", "paid", "shipped"] {
        step(&runtime, client.append(store, "orders", "order-1", event, Default::default())).await.unwrap();
    }
    let mut entries = client.consume_segment(store, ConsumeSegment::new("orders", "order-1"));
    let mut payloads = Vec::new();
    while let Some(entry) = step(&runtime, entries.next()).await {
        payloads.push(entry.unwrap().payload.unwrap_or_default());
    }
    assert_eq!(payloads, ["created", "paid", "shipped"]);
    // The entries are in the backend: its keys hold the payloads.
    let everything = ScanRange::new(Vec::new(), vec![0xff; 8], usize::MAX);
    let pairs = registry.open(&store).scan(&everything).unwrap();
    assert!(pairs.iter().any(|(_, value)| value.windows(7).any(|window| window == b"shipped")));
    client.close().await;
    server.shutdown().await;
}

per_runtime!(the_custom_backend_serves_a_real_client);
