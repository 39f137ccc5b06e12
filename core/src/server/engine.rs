//! The engine: every store's [`Node`], fed with typed stream inputs from any number of connections.
//!
//! It routes inputs to the node of the stream's store (asking the adapter to open the store first),
//! keeps each stream's not-yet-accepted messages in a bounded inbox (see [`INPUT_WINDOW`]), and turns
//! node outputs into [`EngineEffect`]s: messages for connections, storage operations and bus commands
//! tagged with their store.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use uuid::Uuid;

use super::{EngineInput, EngineOutput, INPUT_WINDOW};
use crate::api::Envelope;
use crate::node::{BusCommand, BusEvent, Node, NodeConfig, NodeOutput, OpId};
use crate::rand::Rng;
use crate::storage::{StorageOp, StorageResult};
use crate::stream::{StreamEnd, StreamId};
use crate::time::Millis;
use crate::wire::Message;

/// Text of the rejection when a store cannot be opened (spec §2.5.1).
pub const STORE_UNAVAILABLE: &str = "store unavailable";

/// Engine tunables.
#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    /// Configuration of every node.
    pub node: NodeConfig,
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
}

enum Inbound {
    Message(Message),
    Invalid(String),
    End(StreamEnd),
}

struct Slot {
    store: Uuid,
    /// Messages forwarded by the connection that the operation has not taken yet (at most INPUT_WINDOW).
    inbox: VecDeque<Inbound>,
}

enum Store {
    /// Waiting for the adapter; opens queued in arrival order.
    Opening(Vec<(StreamId, Result<Envelope, String>)>),
    Open(Node),
}

/// The engine; see the [module](self) docs.
pub struct Engine {
    config: EngineConfig,
    now: Millis,
    rng: Rng,
    stores: BTreeMap<Uuid, Store>,
    slots: BTreeMap<StreamId, Slot>,
    effects: VecDeque<EngineEffect>,
}

impl Engine {
    /// An engine with no open store; `seed` seeds every node's randomness.
    pub fn new(config: EngineConfig, now: Millis, seed: u64) -> Self {
        Self {
            config,
            now,
            rng: Rng::new(seed),
            stores: BTreeMap::new(),
            slots: BTreeMap::new(),
            effects: VecDeque::new(),
        }
    }

    fn advance(&mut self, now: Millis) {
        self.now = self.now.max(now);
    }

    /// Number of open streams.
    pub fn stream_count(&self) -> usize {
        self.slots.len()
    }

    /// The node of an open store (for inspection).
    pub fn node(&self, store: &Uuid) -> Option<&Node> {
        match self.stores.get(store) {
            Some(Store::Open(node)) => Some(node),
            _ => None,
        }
    }

    /// An input from a connection or an in-process client.
    pub fn handle_input(&mut self, now: Millis, input: EngineInput) {
        self.advance(now);
        match input {
            EngineInput::Open { stream, store, request } => self.open(stream, store, request),
            EngineInput::Message { stream, message } => self.enqueue(stream, Inbound::Message(message)),
            EngineInput::Invalid { stream, error } => self.enqueue(stream, Inbound::Invalid(error)),
            EngineInput::End { stream, end } => self.enqueue(stream, Inbound::End(end)),
            EngineInput::Aborted { stream } => {
                if let Some(slot) = self.slots.remove(&stream) {
                    match self.stores.get_mut(&slot.store) {
                        Some(Store::Open(node)) => node.handle_aborted(self.now, stream),
                        Some(Store::Opening(queued)) => queued.retain(|(s, _)| *s != stream),
                        None => {}
                    }
                    self.drain(slot.store);
                }
            }
            EngineInput::Credit { stream, frames } => {
                let Some(store) = self.slots.get(&stream).map(|s| s.store) else { return };
                if let Some(Store::Open(node)) = self.stores.get_mut(&store) {
                    node.handle_credit(self.now, stream, frames);
                }
                self.drain(store);
            }
        }
    }

    fn open(&mut self, stream: StreamId, store: Uuid, request: Result<Envelope, String>) {
        self.slots.insert(stream, Slot { store, inbox: VecDeque::new() });
        match self.stores.get_mut(&store) {
            Some(Store::Open(node)) => {
                Self::start(node, self.now, stream, request);
                self.drain(store);
            }
            Some(Store::Opening(queued)) => queued.push((stream, request)),
            None => {
                self.stores.insert(store, Store::Opening(alloc::vec![(stream, request)]));
                self.effects.push_back(EngineEffect::OpenStore { store });
            }
        }
    }

    fn start(node: &mut Node, now: Millis, stream: StreamId, request: Result<Envelope, String>) {
        match request {
            Ok(envelope) => node.handle_request(now, stream, envelope),
            Err(error) => node.handle_bad_request(now, stream, error),
        }
    }

    /// The adapter finished opening a store.
    pub fn handle_store_opened(&mut self, now: Millis, store: Uuid, result: Result<(), String>) {
        self.advance(now);
        let Some(Store::Opening(queued)) = self.stores.remove(&store) else { return };
        match result {
            Ok(()) => {
                let mut node = Node::new(store, self.config.node.clone(), self.now, self.rng.next_u64());
                for (stream, request) in queued {
                    Self::start(&mut node, self.now, stream, request);
                }
                self.stores.insert(store, Store::Open(node));
                let streams: Vec<StreamId> =
                    self.slots.iter().filter(|(_, s)| s.store == store).map(|(id, _)| *id).collect();
                self.drain(store);
                for stream in streams {
                    self.deliver(stream);
                }
            }
            Err(_) => {
                for (stream, _) in queued {
                    self.slots.remove(&stream);
                    let error = String::from(STORE_UNAVAILABLE);
                    self.effects.push_back(EngineEffect::Output(EngineOutput::Reject { stream, error }));
                }
            }
        }
    }

    fn enqueue(&mut self, stream: StreamId, item: Inbound) {
        let Some(slot) = self.slots.get_mut(&stream) else { return };
        if slot.inbox.len() >= INPUT_WINDOW as usize + 1 {
            // The connection forwarded more than its window: a driver bug, not a peer's. Refuse the excess.
            return;
        }
        slot.inbox.push_back(item);
        self.deliver(stream);
    }

    /// Hands a stream's queued items to its operation while it takes them.
    fn deliver(&mut self, stream: StreamId) {
        let Some(slot) = self.slots.get_mut(&stream) else { return };
        let store = slot.store;
        let Some(Store::Open(node)) = self.stores.get_mut(&store) else { return };
        let mut taken = 0u32;
        loop {
            match slot.inbox.front() {
                Some(Inbound::Message(_)) if node.accepts_input(&stream) => {
                    if let Some(Inbound::Message(message)) = slot.inbox.pop_front() {
                        node.handle_message(self.now, stream, message);
                        taken += 1;
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
            self.effects
                .push_back(EngineEffect::Output(EngineOutput::InputCredit { stream, messages: taken }));
        }
        self.drain(store);
    }

    /// Converts a node's outputs into effects.
    fn drain(&mut self, store: Uuid) {
        let mut ready = Vec::new();
        let Some(Store::Open(node)) = self.stores.get_mut(&store) else { return };
        while let Some(out) = node.poll_output() {
            let effect = match out {
                NodeOutput::Send { stream, message } => {
                    EngineEffect::Output(EngineOutput::Send { stream, message })
                }
                NodeOutput::Close { stream, error } => {
                    self.slots.remove(&stream);
                    EngineEffect::Output(EngineOutput::Close { stream, error })
                }
                NodeOutput::Ready { stream } => {
                    ready.push(stream);
                    continue;
                }
                NodeOutput::Storage { op, request } => EngineEffect::Storage { store, op, request },
                NodeOutput::Bus(command) => EngineEffect::Bus { store, command },
            };
            self.effects.push_back(effect);
        }
        for stream in ready {
            self.deliver(stream);
        }
    }

    /// A storage operation of `store` completed.
    pub fn handle_storage(&mut self, now: Millis, store: Uuid, op: OpId, result: StorageResult) {
        self.advance(now);
        if let Some(Store::Open(node)) = self.stores.get_mut(&store) {
            node.handle_storage(self.now, op, result);
            self.drain(store);
        }
    }

    /// A bus completion or delivery for `store`'s node.
    pub fn handle_bus(&mut self, now: Millis, store: Uuid, event: BusEvent) {
        self.advance(now);
        if let Some(Store::Open(node)) = self.stores.get_mut(&store) {
            node.handle_bus(self.now, event);
            self.drain(store);
        }
    }

    /// Timers due at `now` fire.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.advance(now);
        let due: Vec<Uuid> = self
            .stores
            .iter()
            .filter_map(|(id, s)| match s {
                Store::Open(node) => node.poll_timeout().filter(|(at, _)| *at <= self.now).map(|_| *id),
                Store::Opening(_) => None,
            })
            .collect();
        for store in due {
            if let Some(Store::Open(node)) = self.stores.get_mut(&store) {
                node.handle_timeout(self.now);
            }
            self.drain(store);
        }
    }

    /// The next effect; drain until `None` after every input.
    pub fn poll_effect(&mut self) -> Option<EngineEffect> {
        self.effects.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next, with the reason.
    pub fn poll_timeout(&self) -> Option<(Millis, &'static str)> {
        if !self.effects.is_empty() {
            return Some((self.now, "effects queued"));
        }
        self.stores
            .values()
            .filter_map(|s| match s {
                Store::Open(node) => node.poll_timeout(),
                Store::Opening(_) => None,
            })
            .min_by_key(|(at, _)| *at)
    }

    /// Shuts every node down (closing their streams with `reason`) and releases the stores.
    pub fn shutdown(&mut self, now: Millis, reason: &str) {
        self.advance(now);
        let stores: Vec<Uuid> = self.stores.keys().copied().collect();
        for store in stores {
            if let Some(Store::Open(node)) = self.stores.get_mut(&store) {
                node.shutdown(self.now, reason);
            }
            self.drain(store);
            self.stores.remove(&store);
            self.effects.push_back(EngineEffect::CloseStore { store });
        }
        self.slots.clear();
    }
}
