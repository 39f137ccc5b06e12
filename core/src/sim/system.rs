//! The whole server in one deterministic simulation: client connections, server connections, the engine
//! with its nodes, an in-memory store per store id and an in-memory bus, wired by simulated links on
//! virtual time. Several server instances ([`SystemConfig::instances`]) may share the stores and the bus,
//! as stateless servers share a database and a message bus when scaled out.
//!
//! Storage effects complete after a random delay drawn from the seed (so concurrent operations interleave
//! differently per seed, and completions arrive out of order), the bus delivers synchronously, and
//! clients pull every item as soon as it is readable. Tests drive clients through [`SystemSim::open`],
//! [`SystemSim::send`], [`SystemSim::close_send`] and read what each operation received.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use uuid::Uuid;

use super::{Clock, Delivery, Link, LinkConfig, earliest};
use crate::api::{Entry, Request, SegmentStatus};
use crate::auth::StoreScopes;
use crate::client::{ClientConnection, ClientEvent, ClientItem};
use crate::mux::{MuxConfig, MuxSession, OverloadPolicy, Role};
use crate::node::{BusCommand, BusEvent, OpId};
use crate::rand::Rng;
use crate::server::{ConnectionConfig, Engine, EngineConfig, EngineEffect, ServerConnection, shard_of};
use crate::storage::{MemoryKv, OrderedKv, StorageOp};
use crate::stream::{EndReason, StreamEnd};
use crate::time::Millis;
use crate::wire::{Codec, Message};

/// Simulation settings.
#[derive(Clone, Debug)]
pub struct SystemConfig {
    /// Seed of everything random.
    pub seed: u64,
    /// Engine configuration (nodes, manager), the same for every instance.
    pub engine: EngineConfig,
    /// Server instances sharing the stores and the bus (1 = a single server).
    pub instances: usize,
    /// Engine shards of every instance: its stores are spread over that many independent engines
    /// ([`shard_of`]), as `serve --shards` does.
    pub shards: usize,
    /// Mux configuration of both ends (servers always use [`OverloadPolicy::Wait`], as the real one).
    pub mux: MuxConfig,
    /// Server connections' memory budget.
    pub connection: ConnectionConfig,
    /// Link behaviour.
    pub link: LinkConfig,
    /// Storage effects complete after a delay in `0..=max_storage_latency` milliseconds.
    pub max_storage_latency: u64,
    /// Step budget (livelock guard).
    pub max_steps: u64,
}

impl Default for SystemConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            engine: EngineConfig::default(),
            instances: 1,
            shards: 1,
            mux: MuxConfig::default(),
            connection: ConnectionConfig::default(),
            link: LinkConfig::default(),
            max_storage_latency: 2,
            max_steps: 5_000_000,
        }
    }
}

/// What one client operation received.
#[derive(Clone, Debug, Default)]
pub struct OpLog {
    /// Decoded messages, in order.
    pub messages: Vec<Message>,
    /// How the stream ended: `Ok(())` for a clean end, `Err(reason)` otherwise; `None` while open.
    pub end: Option<Result<(), EndReason>>,
}

impl OpLog {
    /// The entries received.
    pub fn entries(&self) -> Vec<Entry> {
        self.messages
            .iter()
            .filter_map(|m| if let Message::Entry(e) = m { Some(e.clone()) } else { None })
            .collect()
    }

    /// The statuses received.
    pub fn statuses(&self) -> Vec<SegmentStatus> {
        self.messages
            .iter()
            .filter_map(|m| if let Message::Status(s) = m { Some(s.clone()) } else { None })
            .collect()
    }

    /// The names received.
    pub fn names(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter_map(|m| if let Message::Name(n) = m { Some(n.clone()) } else { None })
            .collect()
    }

    /// Whether the stream ended.
    pub fn is_done(&self) -> bool {
        self.end.is_some()
    }

    /// Why the stream failed (`None` for a clean end); panics while the stream is open (tests only).
    pub fn error(&self) -> Option<&EndReason> {
        self.end.as_ref().expect("operation still running").as_ref().err()
    }

    /// The text of [`OpLog::error`], as the client sees it.
    pub fn error_text(&self) -> Option<String> {
        self.error().map(ToString::to_string)
    }
}

/// One client: its connection, links and operations.
struct SimClient {
    conn: ClientConnection,
    server_conn: u64,
    instance: usize,
    up: Link,
    down: Link,
    ops: BTreeMap<Uuid, OpLog>,
    closed: bool,
}

struct PendingStorage {
    ready_at: Millis,
    seq: u64,
    /// Index of the engine (instance and shard) that asked.
    engine: usize,
    store: Uuid,
    op: OpId,
    request: StorageOp,
}

/// The simulated system; see the [module](self) docs.
pub struct SystemSim {
    config: SystemConfig,
    clock: Clock,
    rng: Rng,
    /// Every instance's shards: instance `i`, shard `s` is `engines[i * shards + s]`.
    engines: Vec<Engine>,
    servers: BTreeMap<u64, ServerConnection>,
    clients: Vec<SimClient>,
    stores: BTreeMap<Uuid, MemoryKv>,
    /// Stores whose opening fails.
    pub failing_stores: BTreeSet<Uuid>,
    storage: Vec<PendingStorage>,
    storage_seq: u64,
    /// Bus routes → (engine index, store) subscribed.
    routes: BTreeMap<String, BTreeSet<(usize, Uuid)>>,
    /// Every notification published on the bus.
    pub published: u64,
    /// Records the engines reported committed and acknowledged.
    pub produced: u64,
    /// Instances that died: they process nothing any more.
    halted: BTreeSet<usize>,
    /// The servers' wall clock minus the virtual (monotonic) time that drives everything.
    wall_offset: i64,
}

impl SystemSim {
    /// A system with no client yet.
    pub fn new(config: SystemConfig) -> Self {
        let start = Millis(1_700_000_000_000);
        let mut rng = Rng::new(config.seed);
        let engines = (0..config.instances.max(1) * config.shards.max(1))
            .map(|_| Engine::new(config.engine.clone(), start, rng.next_u64()))
            .collect();
        Self {
            clock: Clock::new(start, config.max_steps),
            rng,
            engines,
            servers: BTreeMap::new(),
            clients: Vec::new(),
            stores: BTreeMap::new(),
            failing_stores: BTreeSet::new(),
            storage: Vec::new(),
            storage_seq: 0,
            routes: BTreeMap::new(),
            published: 0,
            produced: 0,
            halted: BTreeSet::new(),
            wall_offset: 0,
            config,
        }
    }

    /// Virtual time.
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// The engine of the first instance (its first shard), for inspection.
    pub fn engine(&self) -> &Engine {
        &self.engines[0]
    }

    /// The engine of `instance` (its first shard).
    pub fn instance(&self, instance: usize) -> &Engine {
        &self.engines[instance * self.shards()]
    }

    fn shards(&self) -> usize {
        self.config.shards.max(1)
    }

    /// Whether the instance of engine `index` was halted.
    fn is_halted(&self, index: usize) -> bool {
        self.halted.contains(&(index / self.shards()))
    }

    /// The store of `store` (for inspection).
    pub fn kv(&mut self, store: Uuid) -> &mut MemoryKv {
        self.stores.entry(store).or_default()
    }

    /// Connects a client speaking `codec` whose token grants `scopes` to the first instance; returns its
    /// index.
    pub fn connect(&mut self, codec: Codec, scopes: StoreScopes) -> usize {
        self.connect_to(0, codec, scopes)
    }

    /// Connects a client to server `instance`.
    pub fn connect_to(&mut self, instance: usize, codec: Codec, scopes: StoreScopes) -> usize {
        let now = self.now();
        let id = self.clients.len() as u64 + 1;
        let server_config = MuxConfig { overload: OverloadPolicy::Wait, ..self.config.mux.clone() };
        let server_mux =
            MuxSession::new(Role::Server { scopes }, codec, server_config, now, self.rng.next_u64());
        self.servers
            .insert(id, ServerConnection::with_config(id, server_mux, self.config.connection.clone()));
        let conn = ClientConnection::new(codec, self.config.mux.clone(), now, self.rng.next_u64());
        self.clients.push(SimClient {
            conn,
            server_conn: id,
            instance,
            up: Link::new(self.config.link, self.rng.next_u64()),
            down: Link::new(self.config.link, self.rng.next_u64()),
            ops: BTreeMap::new(),
            closed: false,
        });
        self.clients.len() - 1
    }

    /// Opens an operation; returns its channel. The simulation is not run.
    pub fn open(&mut self, client: usize, store: Uuid, request: Request) -> Uuid {
        let now = self.now();
        let c = &mut self.clients[client];
        let channel = c.conn.open(now, store, request).expect("open on a live client connection");
        c.ops.insert(channel, OpLog::default());
        channel
    }

    /// Sends a later message of an operation (not run).
    pub fn send(&mut self, client: usize, channel: Uuid, message: Message) {
        let now = self.now();
        let _ = self.clients[client].conn.send(now, channel, &message);
    }

    /// Ends what the client sends on an operation (not run).
    pub fn close_send(&mut self, client: usize, channel: Uuid, err: Option<&str>) {
        let now = self.now();
        let _ = self.clients[client].conn.close_send(now, channel, err);
    }

    /// Cancels an operation like the Go client (`mux::close` with `context canceled`) and forgets it.
    pub fn cancel(&mut self, client: usize, channel: Uuid) {
        let now = self.now();
        let c = &mut self.clients[client];
        c.conn.cancel(now, channel, &EndReason::Canceled);
        if let Some(op) = c.ops.get_mut(&channel)
            && op.end.is_none()
        {
            op.end = Some(Err(EndReason::Canceled));
        }
    }

    /// What an operation received.
    pub fn op(&self, client: usize, channel: Uuid) -> &OpLog {
        &self.clients[client].ops[&channel]
    }

    /// Opens an operation, closes its sending side at once and runs until it ends.
    pub fn call(&mut self, client: usize, store: Uuid, request: Request) -> OpLog {
        let channel = self.open(client, store, request);
        self.run_until(|sim| sim.op(client, channel).is_done());
        self.op(client, channel).clone()
    }

    /// Produces `records` in one operation and runs until it ends.
    pub fn produce(
        &mut self,
        client: usize,
        store: Uuid,
        space: &str,
        segment: &str,
        records: Vec<crate::api::Record>,
    ) -> OpLog {
        let request = Request::Produce(crate::api::Produce { space: space.into(), segment: segment.into() });
        let channel = self.open(client, store, request);
        for record in records {
            self.send(client, channel, Message::Record(record));
        }
        self.close_send(client, channel, None);
        self.run_until(|sim| sim.op(client, channel).is_done());
        self.op(client, channel).clone()
    }

    /// Steps the servers' wall clock by `delta` milliseconds (an NTP correction, an operator's `date`),
    /// leaving the monotonic time that drives timers as it is.
    pub fn step_wall_clock(&mut self, delta: i64) {
        self.wall_offset = self.wall_offset.saturating_add(delta);
        for engine in &mut self.engines {
            engine.set_wall_offset(self.wall_offset);
        }
    }

    /// Kills server `instance` (as `kill -9` would): its clients' connections break, and it never runs,
    /// answers or announces anything again.
    pub fn halt_instance(&mut self, instance: usize) {
        self.halted.insert(instance);
        for index in 0..self.clients.len() {
            if self.clients[index].instance == instance {
                self.sever(index);
            }
        }
    }

    /// Breaks a client's connection (both directions fail at once).
    pub fn sever(&mut self, client: usize) {
        let now = self.now();
        let c = &mut self.clients[client];
        c.up.sever(now);
        c.down.sever(now);
    }

    /// Runs until `done` holds (checked after every step), failing on livelock or when the system
    /// goes idle first.
    pub fn run_until(&mut self, mut done: impl FnMut(&Self) -> bool) {
        loop {
            if done(self) {
                return;
            }
            assert!(self.step(), "system went idle before the condition held (time {:?})", self.now());
        }
    }

    /// Runs until nothing is left to do, or until `limit` of virtual time passed.
    pub fn run_for(&mut self, limit: Millis) {
        self.pump();
        let end = self.now() + limit;
        while self.next_time().is_some_and(|t| t <= end) {
            self.step();
        }
        self.clock.advance_to(end);
        self.pump();
    }

    /// Runs until no more work is pending within a short horizon (timers further away than `horizon`
    /// are not waited for: heartbeats would otherwise run forever).
    pub fn settle(&mut self) {
        self.pump();
        let horizon = Millis(1_000);
        let end = self.now() + horizon;
        while self.next_time().is_some_and(|t| t <= end) {
            self.step();
        }
    }

    fn next_time(&self) -> Option<Millis> {
        let mut times = alloc::vec![self.storage.iter().map(|p| p.ready_at).min()];
        times.extend(
            self.engines
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.is_halted(*i))
                .map(|(_, e)| e.poll_timeout()),
        );
        for c in &self.clients {
            // A server that does not read (its memory budget) leaves its frames in the link, like TCP.
            if self.servers.get(&c.server_conn).is_none_or(ServerConnection::wants_input) {
                times.push(c.up.next_delivery());
            }
            times.push(c.down.next_delivery());
            times.push(c.conn.poll_timeout().map(|(t, _)| t));
        }
        for s in self.servers.values() {
            times.push(s.poll_timeout().map(|(t, _)| t));
        }
        earliest(times)
    }

    /// Advances to the next event and processes everything due then. False when nothing is pending.
    pub fn step(&mut self) -> bool {
        self.clock.step();
        self.pump();
        let Some(next) = self.next_time() else { return false };
        self.clock.advance_to(next);
        let now = self.now();
        // Storage completions due now, in completion order.
        let mut due: Vec<PendingStorage> = Vec::new();
        let mut i = 0;
        while i < self.storage.len() {
            if self.storage[i].ready_at <= now {
                due.push(self.storage.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|p| (p.ready_at, p.seq));
        for p in due {
            if self.is_halted(p.engine) {
                continue;
            }
            let result = self.stores.entry(p.store).or_default().execute(&p.request);
            self.engines[p.engine].handle_storage(now, p.store, p.op, result);
            self.pump();
        }
        // Link deliveries.
        for index in 0..self.clients.len() {
            loop {
                let id = self.clients[index].server_conn;
                if self.servers.get(&id).is_some_and(|s| !s.wants_input()) {
                    break;
                }
                let Some(delivery) = self.clients[index].up.poll_delivery(now) else { break };
                if let Some(server) = self.servers.get_mut(&id) {
                    match delivery {
                        Delivery::Frame(bytes) => server.handle_frame(now, &bytes),
                        Delivery::Closed => server.handle_transport_closed(now, EndReason::MuxerClosed),
                    }
                }
                self.pump();
            }
            while let Some(delivery) = self.clients[index].down.poll_delivery(now) {
                let c = &mut self.clients[index];
                match delivery {
                    Delivery::Frame(bytes) => c.conn.handle_frame(now, &bytes),
                    Delivery::Closed => c.conn.handle_transport_closed(now, EndReason::MuxerClosed),
                }
                self.pump();
            }
        }
        // Timers.
        for index in 0..self.engines.len() {
            if !self.is_halted(index) && self.engines[index].poll_timeout().is_some_and(|t| t <= now) {
                self.engines[index].handle_timeout(now);
            }
        }
        for server in self.servers.values_mut() {
            if server.poll_timeout().is_some_and(|(t, _)| t <= now) {
                server.handle_timeout(now);
            }
        }
        for c in &mut self.clients {
            if c.conn.poll_timeout().is_some_and(|(t, _)| t <= now) {
                c.conn.handle_timeout(now);
            }
        }
        self.pump();
        true
    }

    /// Moves everything that can move at the current time: client events and transmits, server
    /// connection inputs to the engine, engine effects to connections, stores and the bus.
    fn pump(&mut self) {
        let now = self.now();
        loop {
            let mut moved = false;
            for c in &mut self.clients {
                while let Some(event) = c.conn.poll_event() {
                    moved = true;
                    match event {
                        ClientEvent::Readable { channel } => {
                            while let Some(item) = c.conn.recv(channel) {
                                let Some(op) = c.ops.get_mut(&channel) else { continue };
                                match item {
                                    ClientItem::Message(m) => op.messages.push(m),
                                    ClientItem::Invalid(e) => op.end = Some(Err(EndReason::Malformed(e))),
                                    ClientItem::End(StreamEnd::Finished) => op.end = Some(Ok(())),
                                    ClientItem::End(StreamEnd::Failed(e)) => op.end = Some(Err(e)),
                                }
                            }
                            if c.ops.get(&channel).is_some_and(OpLog::is_done) {
                                c.conn.release(channel);
                            }
                        }
                        ClientEvent::Aborted { channel, reason } => {
                            if let Some(op) = c.ops.get_mut(&channel)
                                && op.end.is_none()
                            {
                                op.end = Some(Err(reason));
                            }
                        }
                        ClientEvent::Sent { .. } => {}
                        ClientEvent::Shutdown { .. } => c.closed = true,
                    }
                }
                while let Some(frame) = c.conn.poll_transmit() {
                    moved = true;
                    c.up.send(now, frame);
                }
                if c.conn.is_shut_down() && !c.conn.has_transmit() {
                    c.up.close(now);
                }
            }
            let shards = self.shards();
            for c in &mut self.clients {
                let Some(server) = self.servers.get_mut(&c.server_conn) else { continue };
                let engines = &mut self.engines[c.instance * shards..(c.instance + 1) * shards];
                while let Some((store, input)) = server.poll_engine_input() {
                    moved = true;
                    engines[shard_of(&store, shards)].handle_input(now, input);
                }
                while let Some(frame) = server.poll_transmit() {
                    moved = true;
                    c.down.send(now, frame);
                }
                if server.shutdown_reason().is_some() && !server.has_transmit() {
                    c.down.close(now);
                }
                while let Some((store, input)) = server.poll_engine_input() {
                    moved = true;
                    engines[shard_of(&store, shards)].handle_input(now, input);
                }
            }
            for index in 0..self.engines.len() {
                if self.is_halted(index) {
                    continue;
                }
                while let Some(effect) = self.engines[index].poll_effect() {
                    moved = true;
                    self.apply(now, index, effect);
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// Applies an effect of engine `engine` (an index into `engines`).
    fn apply(&mut self, now: Millis, engine: usize, effect: EngineEffect) {
        #[cfg(test)]
        if std::env::var("SIM_TRACE").is_ok() {
            std::println!("{now:?} {effect:?}");
        }
        match effect {
            EngineEffect::Output(output) => {
                if let Some(server) = self.servers.get_mut(&output.stream().conn) {
                    server.handle_engine(now, output);
                }
            }
            EngineEffect::OpenStore { store } => {
                let result = if self.failing_stores.contains(&store) {
                    Err(String::from("simulated open failure"))
                } else {
                    self.stores.entry(store).or_default();
                    Ok(())
                };
                self.engines[engine].handle_store_opened(now, store, result);
            }
            EngineEffect::Produced { records, .. } => self.produced += records,
            EngineEffect::CloseStore { .. } | EngineEffect::Refused { .. } | EngineEffect::Ended { .. } => {}
            EngineEffect::Storage { store, op, request } => {
                let delay = self.rng.below(self.config.max_storage_latency + 1);
                self.storage_seq += 1;
                self.storage.push(PendingStorage {
                    ready_at: now + Millis(delay),
                    seq: self.storage_seq,
                    engine,
                    store,
                    op,
                    request,
                });
            }
            EngineEffect::Bus { store, command } => match command {
                BusCommand::Subscribe { op, route } => {
                    self.routes.entry(route).or_default().insert((engine, store));
                    self.engines[engine].handle_bus(now, store, BusEvent::Subscribed { op, result: Ok(()) });
                }
                BusCommand::Unsubscribe { route } => {
                    if let Some(stores) = self.routes.get_mut(&route) {
                        stores.remove(&(engine, store));
                    }
                }
                BusCommand::Publish { op, route, notification } => {
                    self.published += 1;
                    let subscribers: Vec<(usize, Uuid)> =
                        self.routes.get(&route).map(|s| s.iter().copied().collect()).unwrap_or_default();
                    for (target, subscriber) in subscribers {
                        if self.is_halted(target) {
                            continue;
                        }
                        let event = BusEvent::Notification {
                            route: route.clone(),
                            notification: notification.clone(),
                        };
                        self.engines[target].handle_bus(now, subscriber, event);
                    }
                    self.engines[engine].handle_bus(now, store, BusEvent::Published { op, result: Ok(()) });
                }
                BusCommand::Announce { op, route, announcement } => {
                    let subscribers: Vec<(usize, Uuid)> =
                        self.routes.get(&route).map(|s| s.iter().copied().collect()).unwrap_or_default();
                    for (target, subscriber) in subscribers {
                        if self.is_halted(target) {
                            continue;
                        }
                        let event = BusEvent::Announcement {
                            route: route.clone(),
                            announcement: announcement.clone(),
                        };
                        self.engines[target].handle_bus(now, subscriber, event);
                    }
                    self.engines[engine].handle_bus(now, store, BusEvent::Published { op, result: Ok(()) });
                }
            },
        }
    }
}
