//! The engine: every store's [`Node`], fed with typed stream inputs from any number of connections.
//!
//! It routes inputs to the node of the stream's store (asking the adapter to open the store first),
//! keeps each stream's not-yet-accepted messages in a bounded inbox (see [`INPUT_WINDOW`]), and turns
//! node outputs into [`EngineEffect`]s: messages for connections, storage operations and bus commands
//! tagged with their store.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use uuid::Uuid;

use super::activity::{EngineStats, Operation, Outcome, StreamKind};
use super::{EngineInput, EngineOutput, INPUT_WINDOW};
use crate::api::Envelope;
use crate::manager::{Access, ManagerConfig, ManagerOutput, NodeManager};
use crate::node::{BusCommand, BusEvent, Node, NodeOutput, OpId, Refusal};
use crate::storage::{StorageOp, StorageResult};
use crate::stream::{EndReason, StreamEnd, StreamId};
use crate::time::Millis;
use crate::wire::Message;

/// Engine tunables.
#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    /// The node manager: node configuration, store circuit breaker, idle eviction.
    pub manager: ManagerConfig,
}

/// An effect for the adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineEffect {
    /// Deliver to the connection `output.stream().conn`.
    Output(EngineOutput),
    /// Open the store's storage (and anything else it needs); answer with
    /// [`Engine::handle_store_opened`].
    OpenStore {
        /// The store.
        store: Uuid,
    },
    /// Release the store's storage (after its node shut down).
    CloseStore {
        /// The store.
        store: Uuid,
    },
    /// Run a storage operation on the store; answer with [`Engine::handle_storage`].
    Storage {
        /// The store.
        store: Uuid,
        /// Correlation id (unique per store).
        op: OpId,
        /// The operation.
        request: StorageOp,
    },
    /// Run a bus command for the store's node; answer with [`Engine::handle_bus`].
    Bus {
        /// The store.
        store: Uuid,
        /// The command.
        command: BusCommand,
    },
    /// A chunk of `store` was committed and acknowledged: count it.
    Produced {
        /// The store.
        store: Uuid,
        /// Records committed.
        records: u64,
        /// Their payload bytes.
        bytes: u64,
    },
    /// A request or record of `store` was refused by a limit or quota (already answered): count it.
    Refused {
        /// The store.
        store: Uuid,
        /// Why.
        refusal: Refusal,
    },
    /// A stream ended (after the output that ended it, if any): count and log it.
    Ended {
        /// The store.
        store: Uuid,
        /// The stream.
        stream: StreamId,
        /// Its operation.
        op: Operation,
        /// The space and segment its request named (empty when none).
        target: (String, String),
        /// How it ended.
        outcome: Outcome,
        /// Why, when it failed or was refused.
        error: Option<EndReason>,
    },
}

enum Inbound {
    /// A message and what the connection charged for it.
    Message(Message, u64),
    Invalid(String),
    End(StreamEnd),
}

struct Slot {
    store: Uuid,
    op: Operation,
    kind: StreamKind,
    /// The space and segment of the request, for the report of its end.
    target: (String, String),
    /// What the connection charged for the request, given back when it starts.
    request_charge: u64,
    /// Messages forwarded by the connection that the operation has not taken yet (at most INPUT_WINDOW).
    inbox: VecDeque<Inbound>,
    /// The request, held while the operation of an earlier stream with the same id still finishes on
    /// the node (a producer publishing its last notification after its stream ended): the peer may
    /// reuse a channel id as soon as it has the close.
    held: Option<Result<Envelope, String>>,
}

/// A stream's first message, waiting for its store to open.
type PendingOpen = (StreamId, Result<Envelope, String>);

/// The engine: every store's [`Node`], fed with typed stream inputs from any number of connections.
///
/// It routes inputs to the node of the stream's store (asking the adapter to open the store first),
/// keeps each stream's not-yet-accepted messages in a bounded inbox (see [`INPUT_WINDOW`]), and turns
/// node outputs into [`EngineEffect`]s: messages for connections, storage operations and bus commands
/// tagged with their store.
pub struct Engine {
    now: Millis,
    manager: NodeManager<PendingOpen>,
    slots: BTreeMap<StreamId, Slot>,
    effects: VecDeque<EngineEffect>,
    /// New streams are refused with [`EndReason::ShuttingDown`].
    refusing: bool,
    /// Streams whose slot holds its request (see `Slot::held`).
    held: BTreeSet<StreamId>,
    stats: EngineStats,
}

impl Engine {
    /// An engine with no open store; `seed` seeds every node's randomness.
    pub fn new(config: EngineConfig, now: Millis, seed: u64) -> Self {
        Self {
            now,
            manager: NodeManager::new(config.manager, now, seed),
            slots: BTreeMap::new(),
            effects: VecDeque::new(),
            refusing: false,
            held: BTreeSet::new(),
            stats: EngineStats::default(),
        }
    }

    fn advance(&mut self, now: Millis) {
        self.now = self.now.max(now);
    }

    /// Sets how far the wall clock is ahead of the monotonic `now` of the inputs, in milliseconds.
    ///
    /// Adapters drive the engine with monotonic time, so that every timer (heartbeats, stalls,
    /// presence sweeps, idle eviction, in-memory leases) ignores steps of the system clock, and call
    /// this with the latest wall-minus-monotonic offset before each input; the nodes derive wall time
    /// from it for what must be wall time (entry timestamps, leases in shared storage). 0 by default:
    /// `now` is then wall time itself.
    pub fn set_wall_offset(&mut self, offset: i64) {
        self.manager.set_wall_offset(offset);
    }

    /// Refuses every new stream from now on with [`EndReason::ShuttingDown`] (an `error` frame), while the
    /// streams already open go on: the first step of a graceful shutdown, which lets in-flight
    /// produces finish before [`shutdown`](Self::shutdown).
    pub fn refuse_new_streams(&mut self) {
        self.refusing = true;
    }

    /// Number of open streams.
    pub fn stream_count(&self) -> usize {
        self.slots.len()
    }

    /// The streams served now, by kind.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// The node of an open store (for inspection).
    pub fn node(&self, store: &Uuid) -> Option<&Node> {
        self.manager.node(store)
    }

    /// The node manager (for inspection).
    pub fn manager(&self) -> &NodeManager<PendingOpen> {
        &self.manager
    }

    /// An input from a connection or an in-process client.
    pub fn handle_input(&mut self, now: Millis, input: EngineInput) {
        self.advance(now);
        match input {
            EngineInput::Open { stream, store, request, charge } => self.open(stream, store, request, charge),
            EngineInput::Message { stream, message, charge } => {
                self.enqueue(stream, Inbound::Message(message, charge));
            }
            EngineInput::Invalid { stream, error } => self.enqueue(stream, Inbound::Invalid(error)),
            EngineInput::End { stream, end } => self.enqueue(stream, Inbound::End(end)),
            EngineInput::Aborted { stream } => {
                if let Some(slot) = self.remove_slot(&stream) {
                    // A held request never started: the operation on the node is the earlier stream's.
                    if slot.held.is_none()
                        && let Some(node) = self.manager.node_mut(self.now, slot.store)
                    {
                        node.handle_aborted(self.now, stream);
                    }
                    self.ended(slot, stream, Outcome::Cancelled, None);
                }
                // A stream still waiting for its store is dropped when the store opens (its slot is gone).
            }
            EngineInput::Pressure { stream } => {
                let Some(store) = self.started_store(&stream) else { return };
                if let Some(node) = self.manager.node_mut(self.now, store) {
                    node.handle_pressure(self.now, stream);
                }
            }
            EngineInput::Credit { stream, frames, bytes } => {
                let Some(store) = self.started_store(&stream) else { return };
                if let Some(node) = self.manager.node_mut(self.now, store) {
                    node.handle_credit(self.now, stream, frames, bytes);
                }
            }
        }
        self.drain();
    }

    fn open(&mut self, stream: StreamId, store: Uuid, request: Result<Envelope, String>, charge: u64) {
        let (op, kind) = Operation::of(&request);
        let (space, segment) = Operation::target(&request);
        let target = (String::from(space), String::from(segment));
        let inbox = VecDeque::new();
        let slot = Slot { store, op, kind, target, request_charge: charge, inbox, held: None };
        if self.refusing {
            let error = EndReason::ShuttingDown;
            self.effects
                .push_back(EngineEffect::Output(EngineOutput::Reject { stream, error: error.clone() }));
            self.ended(slot, stream, Outcome::Rejected, Some(error));
            return;
        }
        self.stats.add(kind);
        self.slots.insert(stream, slot);
        match self.manager.get_or_create(self.now, store, (stream, request)) {
            Access::Ready(node, (stream, request)) if node.is_busy(&stream) => {
                if let Some(slot) = self.slots.get_mut(&stream) {
                    slot.held = Some(request);
                    self.held.insert(stream);
                }
            }
            Access::Ready(node, (stream, request)) => {
                Self::start(node, &mut self.effects, self.now, stream, request, charge);
            }
            Access::Queued => {}
            // Go turns every failure to get the store's node into "store unavailable" (PROTOCOL.md §2.5.1).
            Access::Refused((stream, _), _) => self.reject(stream),
        }
    }

    fn reject(&mut self, stream: StreamId) {
        let Some(slot) = self.remove_slot(&stream) else { return };
        let error = EndReason::StoreUnavailable;
        self.effects.push_back(EngineEffect::Output(EngineOutput::Reject { stream, error: error.clone() }));
        self.ended(slot, stream, Outcome::Rejected, Some(error));
    }

    /// Forgets a stream's slot.
    fn remove_slot(&mut self, stream: &StreamId) -> Option<Slot> {
        let slot = self.slots.remove(stream)?;
        self.stats.remove(slot.kind);
        if slot.held.is_some() {
            self.held.remove(stream);
        }
        Some(slot)
    }

    /// Reports the end of a stream.
    fn ended(&mut self, slot: Slot, stream: StreamId, outcome: Outcome, error: Option<EndReason>) {
        let Slot { store, op, target, .. } = slot;
        self.effects.push_back(EngineEffect::Ended { store, stream, op, target, outcome, error });
    }

    /// Starts a stream's request on its node; its `charge` goes back to the connection, which held it
    /// against its memory budget until now.
    fn start(
        node: &mut Node,
        effects: &mut VecDeque<EngineEffect>,
        now: Millis,
        stream: StreamId,
        request: Result<Envelope, String>,
        charge: u64,
    ) {
        match request {
            Ok(envelope) => {
                node.handle_request(now, stream, envelope);
                let credit = EngineOutput::InputCredit { stream, messages: 0, bytes: charge };
                effects.push_back(EngineEffect::Output(credit));
            }
            Err(error) => node.handle_bad_request(now, stream, error),
        }
    }

    /// The adapter finished opening a store.
    pub fn handle_store_opened(&mut self, now: Millis, store: Uuid, result: Result<(), String>) {
        self.advance(now);
        self.manager.handle_store_opened(self.now, store, result);
        self.drain();
    }

    fn enqueue(&mut self, stream: StreamId, item: Inbound) {
        let Some(slot) = self.slots.get_mut(&stream) else { return };
        if slot.inbox.len() > INPUT_WINDOW as usize {
            // The connection forwarded more than its window: a driver bug, not a peer's. Drop the excess.
            return;
        }
        slot.inbox.push_back(item);
        self.deliver(stream);
    }

    /// The store of a stream whose request has started on its node.
    fn started_store(&self, stream: &StreamId) -> Option<Uuid> {
        self.slots.get(stream).filter(|s| s.held.is_none()).map(|s| s.store)
    }

    /// Starts the held requests whose earlier operation has finished; whether any did.
    fn start_held(&mut self) -> bool {
        let mut started = false;
        for stream in self.held.clone() {
            let Some(slot) = self.slots.get_mut(&stream) else {
                self.held.remove(&stream);
                continue;
            };
            let (store, charge) = (slot.store, slot.request_charge);
            let Some(node) = self.manager.node_mut(self.now, store) else {
                // The node closed meanwhile (the engine shuts down): open the store again, keeping
                // what the stream sent after its request.
                let request = slot.held.take();
                let inbox = core::mem::take(&mut slot.inbox);
                self.remove_slot(&stream);
                if let Some(request) = request {
                    self.open(stream, store, request, charge);
                    if let Some(slot) = self.slots.get_mut(&stream) {
                        slot.inbox = inbox;
                    }
                }
                started = true;
                continue;
            };
            if node.is_busy(&stream) {
                continue;
            }
            self.held.remove(&stream);
            if let Some(request) = slot.held.take() {
                Self::start(node, &mut self.effects, self.now, stream, request, charge);
            }
            self.deliver(stream);
            started = true;
        }
        started
    }

    /// Hands a stream's queued items to its operation while it takes them.
    fn deliver(&mut self, stream: StreamId) {
        let Some(slot) = self.slots.get_mut(&stream) else { return };
        if slot.held.is_some() {
            return;
        }
        let Some(node) = self.manager.node_mut(self.now, slot.store) else { return };
        let (mut taken, mut released) = (0u32, 0u64);
        loop {
            match slot.inbox.front() {
                Some(Inbound::Message(..)) if node.accepts_input(&stream) => {
                    if let Some(Inbound::Message(message, charge)) = slot.inbox.pop_front() {
                        node.handle_message(self.now, stream, message);
                        taken += 1;
                        // An operation that keeps its input (a producer) releases it itself.
                        if !node.holds_input(&stream) {
                            released += charge;
                        }
                    }
                }
                Some(Inbound::Invalid(_)) => {
                    if let Some(Inbound::Invalid(error)) = slot.inbox.pop_front() {
                        node.handle_bad_message(self.now, stream, error);
                        taken += 1;
                    }
                }
                Some(Inbound::End(_)) => {
                    if let Some(Inbound::End(end)) = slot.inbox.pop_front() {
                        node.handle_end(self.now, stream, end);
                    }
                }
                _ => break,
            }
        }
        if taken > 0 {
            let credit = EngineOutput::InputCredit { stream, messages: taken, bytes: released };
            self.effects.push_back(EngineEffect::Output(credit));
        }
    }

    /// Converts the manager's outputs (and its nodes') into effects, and starts the held requests that
    /// may start, until neither is left.
    fn drain(&mut self) {
        loop {
            self.drain_outputs();
            if self.held.is_empty() || !self.start_held() {
                break;
            }
        }
    }

    fn drain_outputs(&mut self) {
        while let Some(out) = self.manager.poll_output() {
            match out {
                ManagerOutput::OpenStore { store_id } => {
                    self.effects.push_back(EngineEffect::OpenStore { store: store_id });
                }
                ManagerOutput::CloseStore { store_id } => {
                    self.effects.push_back(EngineEffect::CloseStore { store: store_id });
                }
                ManagerOutput::StoreOpened { store_id, work } => {
                    for (stream, request) in work {
                        // Streams aborted while their store opened have no slot any more.
                        let Some(charge) = self.slots.get(&stream).map(|s| s.request_charge) else {
                            continue;
                        };
                        if let Some(node) = self.manager.node_mut(self.now, store_id) {
                            Self::start(node, &mut self.effects, self.now, stream, request, charge);
                        }
                        self.deliver(stream);
                    }
                }
                ManagerOutput::StoreFailed { work, .. } => {
                    for (stream, _) in work {
                        if self.slots.contains_key(&stream) {
                            self.reject(stream);
                        }
                    }
                }
                ManagerOutput::Node { store_id: store, output } => {
                    let effect = match output {
                        NodeOutput::Send { stream, message, charge } => {
                            EngineEffect::Output(EngineOutput::Send { stream, message, charge })
                        }
                        NodeOutput::Close { stream, error } => {
                            let slot = self.remove_slot(&stream);
                            let outcome = match &error {
                                None => Outcome::Ok,
                                // A read the peer cancelled stopped on purpose; a draining server's
                                // streams end with it.
                                Some(EndReason::Canceled) => Outcome::Cancelled,
                                Some(_) if self.refusing => Outcome::Cancelled,
                                Some(_) => Outcome::Error,
                            };
                            let reported = error.clone();
                            self.effects
                                .push_back(EngineEffect::Output(EngineOutput::Close { stream, error }));
                            if let Some(slot) = slot {
                                self.ended(slot, stream, outcome, reported);
                            }
                            continue;
                        }
                        NodeOutput::Ready { stream } => {
                            self.deliver(stream);
                            continue;
                        }
                        NodeOutput::InputReleased { stream, bytes } => {
                            EngineEffect::Output(EngineOutput::InputCredit { stream, messages: 0, bytes })
                        }
                        NodeOutput::Storage { op, request } => EngineEffect::Storage { store, op, request },
                        NodeOutput::Bus(command) => EngineEffect::Bus { store, command },
                        NodeOutput::Refused(refusal) => EngineEffect::Refused { store, refusal },
                        NodeOutput::Produced { records, bytes } => {
                            EngineEffect::Produced { store, records, bytes }
                        }
                    };
                    self.effects.push_back(effect);
                }
            }
        }
    }

    /// A storage operation of `store` completed.
    pub fn handle_storage(&mut self, now: Millis, store: Uuid, op: OpId, result: StorageResult) {
        self.advance(now);
        if let Some(node) = self.manager.node_mut(self.now, store) {
            node.handle_storage(self.now, op, result);
        }
        self.drain();
    }

    /// A bus completion or delivery for `store`'s node.
    pub fn handle_bus(&mut self, now: Millis, store: Uuid, event: BusEvent) {
        self.advance(now);
        if let Some(node) = self.manager.node_mut(self.now, store) {
            node.handle_bus(self.now, event);
        }
        self.drain();
    }

    /// Timers due at `now` fire (node timers, idle eviction).
    pub fn handle_timeout(&mut self, now: Millis) {
        self.advance(now);
        self.manager.handle_timeout(self.now);
        self.drain();
    }

    /// The next effect; drain until `None` after every input.
    pub fn poll_effect(&mut self) -> Option<EngineEffect> {
        self.effects.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next.
    pub fn poll_timeout(&self) -> Option<Millis> {
        if !self.effects.is_empty() {
            return Some(self.now);
        }
        self.manager.poll_timeout()
    }

    /// Shuts every node down (closing their streams) and releases the stores.
    pub fn shutdown(&mut self, now: Millis) {
        self.advance(now);
        self.manager.close(self.now);
        self.drain();
        self.slots.clear();
        self.held.clear();
        self.stats = EngineStats::default();
    }
}
