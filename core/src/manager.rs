//! The node manager (PROTOCOL.md §6.1): the registry of [`Node`]s by store id, and the lifecycle of their stores.
//!
//! It is as sans-IO as the nodes it holds. Opening a store (creating its database, say) is an effect:
//! the manager emits [`ManagerOutput::OpenStore`] and the adapter answers with
//! [`NodeManager::handle_store_opened`]. Work for a store that is still opening is queued by the manager
//! and handed back once the store is open ([`ManagerOutput::StoreOpened`]) or could not be opened
//! ([`ManagerOutput::StoreFailed`]); the manager does not know what the work is (a request frame, a
//! stream to open): it is the caller's type `W`.
//!
//! * **Circuit breaker** per store: after `max_failures` (3) failed opens, each within `failure_window`
//!   (30 s) of the last, further requests fail fast with
//!   `store creation circuit open: too many recent failures (3), retry after <remaining>` and no open is
//!   attempted; once the window has passed since the last failure the record is forgotten and the next
//!   request tries again. A successful open forgets the record too. Records are pruned on every lookup and
//!   capped at `max_failure_records` (1024), the oldest evicted first.
//! * **Idle eviction** (on by default, unlike Go): every `check_interval`, nodes not accessed for `ttl` that
//!   are [idle](Node::is_idle) — no open stream (subscriptions and worker streams included), no effect in
//!   flight, no live lease — are closed: [`ManagerOutput::CloseStore`].
//! * [`NodeManager::remove`] closes one store; [`NodeManager::close`] closes them all, once.
//!
//! # Driving a manager
//!
//! ```text
//! match manager.get_or_create(now, store_id, work) {
//!     Access::Ready(node, work) => node.handle_request(now, stream, work.envelope),
//!     Access::Queued => {}                                   // comes back in StoreOpened / StoreFailed
//!     Access::Refused(work, error) => reject(work, error),   // Go's muxer answers `store unavailable`
//! }
//! manager.node_mut(now, store_id)                            // later inputs of that store's streams
//! manager.handle_store_opened(now, store_id, result)         // an OpenStore effect finished
//! manager.handle_timeout(now)                                // when poll_timeout says so
//! while let Some(out) = manager.poll_output() { ... }        // after every input, nodes' outputs included
//! ```

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use uuid::Uuid;

use crate::node::{Node, NodeConfig, NodeOutput};
use crate::rand::Rng;
use crate::stream::EndReason;
use crate::time::{GoDuration, Millis};

/// Failed opens of one store that open its circuit.
pub const DEFAULT_MAX_FAILURES: u32 = 3;
/// How long failures of a store are remembered (and its circuit stays open).
pub const DEFAULT_FAILURE_WINDOW: Millis = Millis::from_secs(30);
/// Stores whose failures are remembered at most.
pub const DEFAULT_MAX_FAILURE_RECORDS: usize = 1024;
/// Work items that may wait for one store to open.
pub const DEFAULT_MAX_WAITING_PER_STORE: usize = 8192;

/// When idle nodes are closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleEviction {
    /// A node not accessed for this long, and idle, is closed.
    pub ttl: Millis,
    /// How often nodes are checked.
    pub check_interval: Millis,
}

impl Default for IdleEviction {
    fn default() -> Self {
        Self { ttl: Millis::from_secs(600), check_interval: Millis::from_secs(60) }
    }
}

/// Tunables of a manager. `Default` gives the values of PROTOCOL.md, with idle eviction on.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Configuration of every node.
    pub node: NodeConfig,
    /// Failed opens that open a store's circuit.
    pub max_failures: u32,
    /// How long a store's failures are remembered.
    pub failure_window: Millis,
    /// Stores whose failures are remembered at most (oldest forgotten first).
    pub max_failure_records: usize,
    /// Work items that may wait for one store to open.
    pub max_waiting_per_store: usize,
    /// Idle eviction; `None` keeps nodes until removed.
    pub idle_eviction: Option<IdleEviction>,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            node: NodeConfig::default(),
            max_failures: DEFAULT_MAX_FAILURES,
            failure_window: DEFAULT_FAILURE_WINDOW,
            max_failure_records: DEFAULT_MAX_FAILURE_RECORDS,
            max_waiting_per_store: DEFAULT_MAX_WAITING_PER_STORE,
            idle_eviction: Some(IdleEviction::default()),
        }
    }
}

/// An output of the manager; drain with [`NodeManager::poll_output`] after every input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManagerOutput<W> {
    /// Open the store and answer with [`NodeManager::handle_store_opened`].
    OpenStore {
        /// The store.
        store_id: Uuid,
    },
    /// The store is open and its node available: perform the work that waited for it.
    StoreOpened {
        /// The store.
        store_id: Uuid,
        /// Work queued while it opened, in arrival order.
        work: Vec<W>,
    },
    /// The store could not be opened (or was removed while opening): the waiting work fails with `error`.
    StoreFailed {
        /// The store.
        store_id: Uuid,
        /// The factory's error ([`EndReason::Failed`], its text as is) or the removal reason.
        error: EndReason,
        /// Work queued while it opened.
        work: Vec<W>,
    },
    /// An output of a store's node.
    Node {
        /// The store.
        store_id: Uuid,
        /// The output.
        output: NodeOutput,
    },
    /// Release the store (its node is gone).
    CloseStore {
        /// The store.
        store_id: Uuid,
    },
}

/// The answer to [`NodeManager::get_or_create`].
#[derive(Debug)]
pub enum Access<'a, W> {
    /// The node is open: do the work now.
    Ready(&'a mut Node, W),
    /// The store is opening; the work comes back with [`ManagerOutput::StoreOpened`] or
    /// [`ManagerOutput::StoreFailed`].
    Queued,
    /// The work cannot be done: circuit open, too much work waiting, or the manager is closed.
    Refused(W, EndReason),
}

#[derive(Debug)]
struct Managed {
    node: Node,
    last_access: Millis,
    /// The node's next timer as entered in [`NodeManager`]'s deadline index.
    indexed: Option<Millis>,
}

#[derive(Debug)]
struct Opening<W> {
    waiting: Vec<W>,
    /// Removed (or the manager closed) while opening: a successful open is closed again at once.
    cancelled: bool,
}

#[derive(Clone, Copy, Debug)]
struct Failure {
    count: u32,
    last_failed: Millis,
}

/// The registry of nodes. `W` is the caller's unit of work waiting for a store to open.
#[derive(Debug)]
pub struct NodeManager<W> {
    config: ManagerConfig,
    now: Millis,
    nodes: BTreeMap<Uuid, Managed>,
    opening: BTreeMap<Uuid, Opening<W>>,
    failures: BTreeMap<Uuid, Failure>,
    /// `failures` by time of the last failure, for pruning and eviction in order.
    failures_by_time: BTreeSet<(Millis, Uuid)>,
    out: VecDeque<ManagerOutput<W>>,
    /// Nodes that may have output (handed out or driven since their outputs were last drained). Their
    /// timers may have changed too: they are re-indexed when drained.
    dirty: BTreeSet<Uuid>,
    /// The next timer of every clean node that has one, in order: finding the due nodes never scans
    /// every node.
    deadlines: BTreeSet<(Millis, Uuid)>,
    next_check: Option<Millis>,
    rng: Rng,
    closed: bool,
    /// Wall clock minus the monotonic `now` the manager is driven with (see
    /// [`Node::set_wall_offset`]); handed to every node before it is driven.
    wall_offset: i64,
}

impl<W> NodeManager<W> {
    /// A manager; `seed` drives every node's randomness.
    pub fn new(config: ManagerConfig, now: Millis, seed: u64) -> Self {
        Self {
            config,
            now,
            nodes: BTreeMap::new(),
            opening: BTreeMap::new(),
            failures: BTreeMap::new(),
            failures_by_time: BTreeSet::new(),
            out: VecDeque::new(),
            dirty: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            next_check: None,
            rng: Rng::new(seed),
            closed: false,
            wall_offset: 0,
        }
    }

    /// Sets how far the wall clock is ahead of the monotonic `now` of the inputs (every node gets it
    /// before it is driven; see [`Node::set_wall_offset`]).
    pub fn set_wall_offset(&mut self, offset: i64) {
        self.wall_offset = offset;
    }

    fn advance(&mut self, now: Millis) {
        self.now = self.now.max(now);
    }

    /// The node of `store_id` with `work` when it is open; otherwise the work is queued until the store
    /// opens (the first request emits [`ManagerOutput::OpenStore`]), or refused.
    pub fn get_or_create(&mut self, now: Millis, store_id: Uuid, work: W) -> Access<'_, W> {
        self.advance(now);
        if self.closed {
            return Access::Refused(work, EndReason::ManagerClosed);
        }
        self.prune_failures();
        if self.nodes.contains_key(&store_id) {
            return match self.access(store_id) {
                Some(node) => Access::Ready(node, work),
                None => Access::Refused(work, EndReason::ManagerClosed),
            };
        }
        if let Some(opening) = self.opening.get_mut(&store_id) {
            if opening.waiting.len() >= self.config.max_waiting_per_store {
                return Access::Refused(
                    work,
                    format!("too many requests waiting for store {store_id} to open").into(),
                );
            }
            // Someone wants the store again: a removal during the open no longer applies.
            opening.cancelled = false;
            opening.waiting.push(work);
            return Access::Queued;
        }
        if let Some(failure) = self.failures.get(&store_id)
            && failure.count >= self.config.max_failures
        {
            // Expired records were pruned above, so this one is within the window.
            let remaining =
                self.config.failure_window.saturating_since(self.now.saturating_since(failure.last_failed));
            let error = format!(
                "store creation circuit open: too many recent failures ({}), retry after {}",
                failure.count,
                GoDuration(remaining)
            );
            return Access::Refused(work, error.into());
        }
        self.opening.insert(store_id, Opening { waiting: alloc::vec![work], cancelled: false });
        self.out.push_back(ManagerOutput::OpenStore { store_id });
        Access::Queued
    }

    fn access(&mut self, store_id: Uuid) -> Option<&mut Node> {
        let managed = self.nodes.get_mut(&store_id)?;
        managed.last_access = self.now;
        managed.node.set_wall_offset(self.wall_offset);
        self.dirty.insert(store_id);
        Some(&mut managed.node)
    }

    /// The open node of `store_id`, for later inputs of its streams and effects (counts as an access).
    pub fn node_mut(&mut self, now: Millis, store_id: Uuid) -> Option<&mut Node> {
        self.advance(now);
        self.access(store_id)
    }

    /// The open node of `store_id`, read-only.
    pub fn node(&self, store_id: &Uuid) -> Option<&Node> {
        self.nodes.get(store_id).map(|m| &m.node)
    }

    /// Number of open nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is open.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether `store_id` is being opened.
    pub fn is_opening(&self, store_id: &Uuid) -> bool {
        self.opening.contains_key(store_id)
    }

    /// Failed opens remembered for `store_id`.
    pub fn failure_count(&self, store_id: &Uuid) -> Option<u32> {
        self.failures.get(store_id).map(|f| f.count)
    }

    /// Number of stores whose failures are remembered.
    pub fn failure_records(&self) -> usize {
        self.failures.len()
    }

    /// The adapter finished opening `store_id`: on success its node is created and the waiting work handed
    /// back; on failure the failure is counted and the waiting work fails with the error.
    pub fn handle_store_opened(&mut self, now: Millis, store_id: Uuid, result: Result<(), String>) {
        self.advance(now);
        let opening = self.opening.remove(&store_id);
        match result {
            Ok(()) => {
                self.forget_failures(&store_id);
                match opening {
                    Some(opening) if !opening.cancelled && !self.closed => {
                        let mut node =
                            Node::new(store_id, self.config.node.clone(), self.now, self.rng.next_u64());
                        node.set_wall_offset(self.wall_offset);
                        let managed = Managed { node, last_access: self.now, indexed: None };
                        self.nodes.insert(store_id, managed);
                        self.arm_check();
                        self.out.push_back(ManagerOutput::StoreOpened { store_id, work: opening.waiting });
                    }
                    // Nobody wants it any more (or nobody asked): release what the adapter opened.
                    _ => self.out.push_back(ManagerOutput::CloseStore { store_id }),
                }
            }
            Err(error) => {
                if opening.is_none() {
                    return;
                }
                self.record_failure(store_id);
                if let Some(opening) = opening.filter(|o| !o.waiting.is_empty()) {
                    self.out.push_back(ManagerOutput::StoreFailed {
                        store_id,
                        error: error.into(),
                        work: opening.waiting,
                    });
                }
            }
        }
    }

    /// Closes and drops the node of `store_id` (its streams are closed with [`EndReason::StoreClosed`])
    /// and forgets its failures. Work waiting for it to open fails with [`EndReason::StoreRemoved`].
    pub fn remove(&mut self, now: Millis, store_id: Uuid) {
        self.advance(now);
        self.forget_failures(&store_id);
        self.close_node(store_id);
        if let Some(opening) = self.opening.get_mut(&store_id) {
            opening.cancelled = true;
            let work = core::mem::take(&mut opening.waiting);
            if !work.is_empty() {
                self.out.push_back(ManagerOutput::StoreFailed {
                    store_id,
                    error: EndReason::StoreRemoved,
                    work,
                });
            }
        }
    }

    /// Closes every node once and stops idle eviction; later requests are refused. Idempotent.
    pub fn close(&mut self, now: Millis) {
        self.advance(now);
        if self.closed {
            return;
        }
        self.closed = true;
        self.next_check = None;
        let stores: Vec<Uuid> = self.nodes.keys().copied().collect();
        for store_id in stores {
            self.close_node(store_id);
        }
        for (store_id, opening) in &mut self.opening {
            opening.cancelled = true;
            let work = core::mem::take(&mut opening.waiting);
            if !work.is_empty() {
                let store_id = *store_id;
                self.out.push_back(ManagerOutput::StoreFailed {
                    store_id,
                    error: EndReason::ManagerClosed,
                    work,
                });
            }
        }
        self.failures.clear();
        self.failures_by_time.clear();
    }

    /// Shuts a node down, keeping its last outputs (the close of its streams) for the adapter.
    fn close_node(&mut self, store_id: Uuid) {
        let Some(mut managed) = self.nodes.remove(&store_id) else { return };
        self.dirty.remove(&store_id);
        if let Some(at) = managed.indexed {
            self.deadlines.remove(&(at, store_id));
        }
        managed.node.shutdown(self.now, EndReason::StoreClosed);
        while let Some(output) = managed.node.poll_output() {
            self.out.push_back(ManagerOutput::Node { store_id, output });
        }
        self.out.push_back(ManagerOutput::CloseStore { store_id });
    }

    /// Fires the timers of nodes that are due, and idle eviction.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.advance(now);
        // Nodes driven since their last drain are not in the index yet.
        let dirty: Vec<Uuid> = self.dirty.iter().copied().collect();
        for store_id in dirty {
            self.reindex(store_id);
        }
        while let Some(&(at, store_id)) = self.deadlines.first() {
            if at > self.now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(managed) = self.nodes.get_mut(&store_id) {
                managed.indexed = None;
                managed.node.set_wall_offset(self.wall_offset);
                managed.node.handle_timeout(self.now);
                // Re-indexed when its outputs are drained.
                self.dirty.insert(store_id);
            }
        }
        if self.next_check.is_some_and(|at| at <= self.now) {
            self.next_check = None;
            self.evict_idle();
            self.arm_check();
        }
    }

    /// Puts a node's next timer in the deadline index (replacing its previous entry).
    fn reindex(&mut self, store_id: Uuid) {
        let Some(managed) = self.nodes.get_mut(&store_id) else { return };
        let next = managed.node.poll_timeout().map(|(at, _)| at);
        if next == managed.indexed {
            return;
        }
        if let Some(at) = managed.indexed {
            self.deadlines.remove(&(at, store_id));
        }
        if let Some(at) = next {
            self.deadlines.insert((at, store_id));
        }
        managed.indexed = next;
    }

    fn arm_check(&mut self) {
        if let (None, Some(idle), false) = (self.next_check, self.config.idle_eviction, self.nodes.is_empty())
        {
            self.next_check = Some(self.now + idle.check_interval.max(Millis(1)));
        }
    }

    fn evict_idle(&mut self) {
        let Some(idle) = self.config.idle_eviction else { return };
        let now = self.now;
        let idle_nodes: Vec<Uuid> = self
            .nodes
            .iter()
            .filter(|(_, m)| now.saturating_since(m.last_access) >= idle.ttl && m.node.is_idle())
            .map(|(id, _)| *id)
            .collect();
        for store_id in idle_nodes {
            self.close_node(store_id);
        }
    }

    /// When [`NodeManager::handle_timeout`] must be called next: the earliest node timer or eviction
    /// check, or the current time while output is queued. Node timers come from an ordered index
    /// (plus the few nodes driven since the last drain), so this does not depend on how many nodes are
    /// open.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let pending = !self.out.is_empty()
            || self.dirty.iter().any(|id| self.nodes.get(id).is_some_and(|m| m.node.has_output()));
        if pending {
            return Some(self.now);
        }
        let driven =
            self.dirty.iter().filter_map(|id| self.nodes.get(id)?.node.poll_timeout().map(|(at, _)| at));
        self.deadlines.first().map(|(at, _)| *at).into_iter().chain(driven).chain(self.next_check).min()
    }

    /// The next output: the manager's own, then those of nodes it handed out or drove.
    pub fn poll_output(&mut self) -> Option<ManagerOutput<W>> {
        if let Some(output) = self.out.pop_front() {
            return Some(output);
        }
        while let Some(&store_id) = self.dirty.first() {
            if let Some(output) = self.nodes.get_mut(&store_id).and_then(|m| m.node.poll_output()) {
                return Some(ManagerOutput::Node { store_id, output });
            }
            self.dirty.remove(&store_id);
            self.reindex(store_id);
        }
        None
    }

    fn prune_failures(&mut self) {
        let window = self.config.failure_window;
        while let Some(&(at, store_id)) = self.failures_by_time.first() {
            if self.now.saturating_since(at) < window {
                break;
            }
            self.failures_by_time.remove(&(at, store_id));
            self.failures.remove(&store_id);
        }
    }

    fn forget_failures(&mut self, store_id: &Uuid) {
        if let Some(failure) = self.failures.remove(store_id) {
            self.failures_by_time.remove(&(failure.last_failed, *store_id));
        }
    }

    fn record_failure(&mut self, store_id: Uuid) {
        let count = match self.failures.remove(&store_id) {
            Some(previous) => {
                self.failures_by_time.remove(&(previous.last_failed, store_id));
                previous.count.saturating_add(1)
            }
            None => {
                if self.failures.len() >= self.config.max_failure_records.max(1)
                    && let Some((_, oldest)) = self.failures_by_time.pop_first()
                {
                    self.failures.remove(&oldest);
                }
                1
            }
        };
        self.failures.insert(store_id, Failure { count, last_failed: self.now });
        self.failures_by_time.insert((self.now, store_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Request, SubscribeWorkers};
    use crate::stream::{StreamEnd, StreamId};

    const START: Millis = Millis(1_000_000);

    /// A synchronous adapter: opens stores with a scripted factory, records what the manager asks.
    struct Adapter {
        manager: NodeManager<u32>,
        now: Millis,
        /// `Some(error)`: the factory fails with it.
        factory_error: Option<String>,
        /// Do not answer OpenStore until [`Adapter::answer`].
        hold_opens: bool,
        held: Vec<Uuid>,
        factory_calls: usize,
        closed: Vec<Uuid>,
        opened: Vec<(Uuid, Vec<u32>)>,
        failed: Vec<(Uuid, String, Vec<u32>)>,
        node_outputs: Vec<(Uuid, NodeOutput)>,
    }

    impl Adapter {
        fn new(config: ManagerConfig) -> Self {
            Self {
                manager: NodeManager::new(config, START, 1),
                now: START,
                factory_error: None,
                hold_opens: false,
                held: Vec::new(),
                factory_calls: 0,
                closed: Vec::new(),
                opened: Vec::new(),
                failed: Vec::new(),
                node_outputs: Vec::new(),
            }
        }

        fn drain(&mut self) {
            while let Some(output) = self.manager.poll_output() {
                match output {
                    ManagerOutput::OpenStore { store_id } => {
                        self.factory_calls += 1;
                        if self.hold_opens {
                            self.held.push(store_id);
                        } else {
                            let result = self.factory_error.clone().map_or(Ok(()), Err);
                            self.manager.handle_store_opened(self.now, store_id, result);
                        }
                    }
                    ManagerOutput::StoreOpened { store_id, work } => self.opened.push((store_id, work)),
                    ManagerOutput::StoreFailed { store_id, error, work } => {
                        self.failed.push((store_id, error.to_string(), work))
                    }
                    ManagerOutput::Node { store_id, output } => self.node_outputs.push((store_id, output)),
                    ManagerOutput::CloseStore { store_id } => self.closed.push(store_id),
                }
            }
        }

        /// Answers the held opens.
        fn answer(&mut self, result: Result<(), String>) {
            for store_id in core::mem::take(&mut self.held) {
                self.manager.handle_store_opened(self.now, store_id, result.clone());
            }
            self.drain();
        }

        /// Gets the node of a store for `work`: `Ok(true)` at once, `Ok(false)` after opening it.
        fn get(&mut self, store_id: Uuid, work: u32) -> Result<bool, String> {
            let result = match self.manager.get_or_create(self.now, store_id, work) {
                Access::Ready(_, w) => {
                    assert_eq!(w, work);
                    Ok(true)
                }
                Access::Queued => Ok(false),
                Access::Refused(w, error) => {
                    assert_eq!(w, work);
                    Err(error.to_string())
                }
            };
            self.drain();
            match result {
                Ok(false) => {
                    if let Some((_, error, _)) =
                        self.failed.iter().rev().find(|(id, _, w)| *id == store_id && w.contains(&work))
                    {
                        return Err(error.clone());
                    }
                    Ok(false)
                }
                other => other,
            }
        }

        fn advance(&mut self, ms: u64) {
            let target = self.now + Millis(ms);
            while let Some(at) = self.manager.poll_timeout().filter(|at| *at <= target) {
                self.now = self.now.max(at);
                self.manager.handle_timeout(self.now);
                self.drain();
            }
            self.now = target;
            self.manager.handle_timeout(self.now);
            self.drain();
        }
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn eviction(ttl: u64, check: u64) -> ManagerConfig {
        ManagerConfig {
            idle_eviction: Some(IdleEviction { ttl: Millis(ttl), check_interval: Millis(check) }),
            ..ManagerConfig::default()
        }
    }

    #[test]
    fn get_or_create_then_remove() {
        let mut a = Adapter::new(ManagerConfig::default());
        assert_eq!(a.get(id(1), 1), Ok(false));
        assert_eq!(a.opened, [(id(1), vec![1])]);
        assert_eq!(a.get(id(1), 2), Ok(true), "the same node is returned");
        assert_eq!(a.factory_calls, 1);
        assert_eq!(a.manager.node(&id(1)).map(Node::store_id), Some(id(1)));
        a.manager.remove(a.now, id(1));
        a.drain();
        assert_eq!(a.closed, [id(1)]);
        assert!(a.manager.is_empty());
        assert_eq!(a.get(id(1), 3), Ok(false));
        assert_eq!(a.factory_calls, 2, "a removed store is opened again");
    }

    #[test]
    fn circuit_opens_after_consecutive_failures() {
        let mut a = Adapter::new(ManagerConfig::default());
        a.factory_error = Some("disk full".into());
        for work in 0..3 {
            assert_eq!(a.get(id(1), work), Err("disk full".into()), "factory errors are returned as-is");
        }
        assert_eq!(a.manager.failure_count(&id(1)), Some(3));
        assert_eq!(
            a.get(id(1), 3),
            Err("store creation circuit open: too many recent failures (3), retry after 30s".into())
        );
        a.advance(10_500);
        assert_eq!(
            a.get(id(1), 4),
            Err("store creation circuit open: too many recent failures (3), retry after 19.5s".into())
        );
        assert_eq!(a.factory_calls, 3, "an open circuit does not call the factory");
        // Other stores are unaffected.
        a.factory_error = None;
        assert_eq!(a.get(id(2), 5), Ok(false));
    }

    #[test]
    fn retry_after_the_failure_window() {
        let mut a = Adapter::new(ManagerConfig::default());
        a.factory_error = Some("unavailable".into());
        for work in 0..3 {
            assert!(a.get(id(1), work).is_err());
        }
        a.advance(29_999);
        assert!(a.get(id(1), 3).unwrap_err().contains("retry after 1ms"));
        a.advance(1);
        a.factory_error = None;
        assert_eq!(a.get(id(1), 4), Ok(false));
        assert_eq!(a.factory_calls, 4);
        assert_eq!(a.manager.failure_count(&id(1)), None);
    }

    #[test]
    fn success_clears_the_failure_record() {
        let mut a = Adapter::new(ManagerConfig::default());
        a.factory_error = Some("flaky".into());
        assert!(a.get(id(1), 0).is_err());
        assert!(a.get(id(1), 1).is_err());
        a.factory_error = None;
        assert_eq!(a.get(id(1), 2), Ok(false));
        assert_eq!(a.manager.failure_count(&id(1)), None);
        a.manager.remove(a.now, id(1));
        a.factory_error = Some("flaky".into());
        assert!(a.get(id(1), 3).is_err());
        assert_eq!(a.manager.failure_count(&id(1)), Some(1), "counting starts again");
    }

    #[test]
    fn expired_failure_records_are_pruned_on_lookup() {
        let mut a = Adapter::new(ManagerConfig::default());
        a.factory_error = Some("down".into());
        assert!(a.get(id(1), 0).is_err());
        a.advance(10_000);
        assert!(a.get(id(2), 1).is_err());
        assert_eq!(a.manager.failure_records(), 2);
        a.advance(20_000);
        a.factory_error = None;
        assert_eq!(a.get(id(3), 2), Ok(false));
        assert_eq!(a.manager.failure_records(), 1, "only the record older than the window is gone");
        assert_eq!(a.manager.failure_count(&id(1)), None);
        assert_eq!(a.manager.failure_count(&id(2)), Some(1));
    }

    #[test]
    fn failure_records_are_capped() {
        let mut a = Adapter::new(ManagerConfig { max_failure_records: 32, ..ManagerConfig::default() });
        a.factory_error = Some("down".into());
        for n in 0..200 {
            assert!(a.get(id(n), 0).is_err());
        }
        assert_eq!(a.manager.failure_records(), 32);
    }

    #[test]
    fn the_oldest_failure_record_is_evicted_first() {
        let mut a = Adapter::new(ManagerConfig { max_failure_records: 2, ..ManagerConfig::default() });
        a.factory_error = Some("down".into());
        for n in 1..=3 {
            assert!(a.get(id(n), 0).is_err());
            a.advance(10);
        }
        assert_eq!(a.manager.failure_count(&id(1)), None);
        assert_eq!(a.manager.failure_count(&id(2)), Some(1));
        assert_eq!(a.manager.failure_count(&id(3)), Some(1));
        // A repeated failure refreshes a record, so it outlives older ones.
        assert!(a.get(id(2), 0).is_err());
        assert!(a.get(id(4), 0).is_err());
        assert_eq!(a.manager.failure_count(&id(2)), Some(2));
        assert_eq!(a.manager.failure_count(&id(3)), None);
    }

    #[test]
    fn close_closes_every_node_once() {
        let mut a = Adapter::new(ManagerConfig::default());
        a.get(id(1), 0).unwrap();
        a.get(id(2), 1).unwrap();
        a.manager.close(a.now);
        a.manager.close(a.now);
        a.drain();
        assert_eq!(a.closed, [id(1), id(2)]);
        assert!(a.manager.is_empty());
        assert_eq!(a.manager.failure_records(), 0);
        assert_eq!(a.get(id(1), 2), Err("node manager closed".into()));
        assert_eq!(a.manager.poll_timeout(), None);
    }

    #[test]
    fn idle_nodes_are_evicted_after_the_ttl() {
        let mut a = Adapter::new(eviction(20, 5));
        a.get(id(1), 0).unwrap();
        a.advance(15);
        assert_eq!(a.manager.len(), 1);
        a.advance(10);
        assert!(a.manager.is_empty());
        assert_eq!(a.closed, [id(1)]);
        assert_eq!(a.manager.poll_timeout(), None, "no check while no node is open");
    }

    fn observer() -> Request {
        Request::SubscribeWorkers(SubscribeWorkers::default())
    }

    #[test]
    fn a_node_with_an_open_stream_is_not_evicted() {
        let mut a = Adapter::new(eviction(20, 5));
        a.get(id(1), 0).unwrap();
        let stream = StreamId { conn: 1, channel: id(77) };
        let now = a.now;
        let node = a.manager.node_mut(now, id(1)).unwrap();
        node.handle_request(now, stream, observer().into_envelope());
        a.drain();
        assert!(matches!(a.node_outputs.as_slice(), [(store, NodeOutput::Send { .. })] if *store == id(1)));
        a.advance(80);
        assert_eq!(a.manager.len(), 1, "an open stream keeps the node");
        let now = a.now;
        a.manager.node_mut(now, id(1)).unwrap().handle_end(now, stream, StreamEnd::Finished);
        a.drain();
        a.advance(15);
        assert_eq!(a.manager.len(), 1, "the stream's end was an access");
        a.advance(10);
        assert!(a.manager.is_empty());
    }

    #[test]
    fn access_refreshes_the_idle_clock() {
        let mut a = Adapter::new(eviction(50, 5));
        a.get(id(1), 0).unwrap();
        for work in 1..=13 {
            a.advance(15);
            assert_eq!(a.get(id(1), work), Ok(true));
        }
        assert_eq!(a.manager.len(), 1);
        assert_eq!(a.factory_calls, 1);
    }

    #[test]
    fn idle_eviction_can_be_disabled() {
        let mut a = Adapter::new(ManagerConfig { idle_eviction: None, ..ManagerConfig::default() });
        a.get(id(1), 0).unwrap();
        assert_eq!(a.manager.poll_timeout(), None);
        a.advance(3_600_000);
        assert_eq!(a.manager.len(), 1);
        assert!(a.closed.is_empty());
    }

    #[test]
    fn work_waits_for_the_store_to_open() {
        let mut a = Adapter::new(ManagerConfig { max_waiting_per_store: 2, ..ManagerConfig::default() });
        a.hold_opens = true;
        assert_eq!(a.get(id(1), 1), Ok(false));
        assert_eq!(a.get(id(1), 2), Ok(false));
        assert_eq!(a.get(id(1), 3), Err(format!("too many requests waiting for store {} to open", id(1))));
        assert!(a.manager.is_opening(&id(1)));
        assert_eq!(a.factory_calls, 1, "one open for every waiting request");
        a.answer(Ok(()));
        assert_eq!(a.opened, [(id(1), vec![1, 2])]);
        // A failed open hands the work back with the factory's error.
        assert_eq!(a.get(id(2), 4), Ok(false));
        assert_eq!(a.get(id(2), 5), Ok(false));
        a.answer(Err("permission denied".into()));
        assert_eq!(a.failed, [(id(2), "permission denied".into(), vec![4, 5])]);
        assert_eq!(a.manager.failure_count(&id(2)), Some(1));
    }

    #[test]
    fn removal_while_opening_fails_the_work_and_releases_the_store() {
        let mut a = Adapter::new(ManagerConfig::default());
        a.hold_opens = true;
        assert_eq!(a.get(id(1), 1), Ok(false));
        a.manager.remove(a.now, id(1));
        a.drain();
        assert_eq!(a.failed, [(id(1), "store removed".into(), vec![1])]);
        a.answer(Ok(()));
        assert_eq!(a.closed, [id(1)], "what was opened for nobody is released");
        assert!(a.manager.is_empty());
        // Closing the manager while a store opens does the same.
        assert_eq!(a.get(id(2), 2), Ok(false));
        a.manager.close(a.now);
        a.drain();
        assert_eq!(a.failed.last(), Some(&(id(2), "node manager closed".into(), vec![2])));
        a.answer(Ok(()));
        assert_eq!(a.closed, [id(1), id(2)]);
    }

    #[test]
    fn node_timers_run_through_the_manager() {
        let mut a = Adapter::new(ManagerConfig { idle_eviction: None, ..ManagerConfig::default() });
        a.get(id(1), 0).unwrap();
        let stream = StreamId { conn: 1, channel: id(5) };
        let request = Request::SubscribeWorkers(SubscribeWorkers {
            worker_id: id(9),
            heartbeat_interval_seconds: 1,
            ..SubscribeWorkers::default()
        });
        let now = a.now;
        a.manager.node_mut(now, id(1)).unwrap().handle_request(now, stream, request.into_envelope());
        a.drain();
        let sent = a.node_outputs.len();
        assert_eq!(a.manager.poll_timeout(), Some(a.now + Millis(1000)));
        a.advance(1000);
        assert_eq!(a.node_outputs.len(), sent + 1, "the heartbeat went out through the manager");
        // Removing the store closes its streams; their close reaches the adapter before the store closes.
        a.manager.remove(a.now, id(1));
        a.drain();
        assert!(matches!(
            a.node_outputs.last(),
            Some((_, NodeOutput::Close { error: Some(EndReason::StoreClosed), .. }))
        ));
        assert_eq!(a.closed, [id(1)]);
    }

    #[test]
    fn the_deadline_index_fires_each_node_at_its_own_time() {
        let mut a = Adapter::new(ManagerConfig { idle_eviction: None, ..ManagerConfig::default() });
        // Stores 1..=5 have workers whose heartbeats are 5, 4, 3, 2, 1 seconds apart.
        for n in 1..=5u128 {
            a.get(id(n), 0).unwrap();
            let stream = StreamId { conn: 1, channel: id(100 + n) };
            let request = Request::SubscribeWorkers(SubscribeWorkers {
                worker_id: id(200 + n),
                heartbeat_interval_seconds: 6 - n as i64,
                ..SubscribeWorkers::default()
            });
            let now = a.now;
            a.manager.node_mut(now, id(n)).unwrap().handle_request(now, stream, request.into_envelope());
            a.drain();
        }
        assert_eq!(a.manager.poll_timeout(), Some(a.now + Millis(1000)), "the earliest of five nodes");
        let beats = |a: &Adapter, store: u128| {
            a.node_outputs
                .iter()
                .filter(|(s, o)| *s == id(store) && matches!(o, NodeOutput::Send { .. }))
                .count()
        };
        let before: Vec<usize> = (1..=5).map(|n| beats(&a, n)).collect();
        a.advance(12_000);
        let after: Vec<usize> = (1..=5).map(|n| beats(&a, n) - before[(n - 1) as usize]).collect();
        // In 12 s: every 5 s twice, every 4 s three times, every 3 s four, every 2 s six, every 1 s 12.
        assert_eq!(after, [2, 3, 4, 6, 12]);
        // A removed node leaves the index: the next deadline is another node's.
        a.manager.remove(a.now, id(5));
        a.drain();
        let next = a.manager.poll_timeout().unwrap();
        assert!(next > a.now, "no stale deadline of the removed node");
    }
}
