//! The engine task: drives the core's [`Engine`] on a runtime.
//!
//! One task owns the engine (every store's node). Connections, in-process clients, storage completions
//! and the bus talk to it through one bounded inbox ([`EngineHandle`]); it answers each connection
//! through that connection's outbox. Storage effects run on the store's [`StoreHandle`] (group commit,
//! reader threads) and come back as completions; the in-memory bus is served inside the task.
//!
//! Outboxes are unbounded channels, but what flows through them is bounded by the core's flow control:
//! the engine only sends on a stream while it has send credit, and only acknowledges input it took.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender, TrySendError};
use futures_util::future::{Either, select};
use streamkit_core::node::{BusCommand, BusEvent, OpId};
use streamkit_core::server::{Engine, EngineConfig, EngineEffect, EngineInput, EngineOutput};
use streamkit_core::storage::{KvError, StorageOp, StorageResult};
use uuid::Uuid;

use crate::clock::WallClock;
use crate::metrics::Metrics;
use crate::runtime::{Runtime, RuntimeExt};
use crate::store::{StoreFactory, StoreHandle};

/// Messages the engine task's inbox holds at most; senders wait beyond that (back-pressure).
pub const INBOX_CAPACITY: usize = 65_536;

/// What the engine task receives.
enum EngineMsg {
    Register { conn: u64, outbox: Sender<EngineOutput> },
    Unregister { conn: u64 },
    Inputs(Vec<EngineInput>),
    StoreOpened { store: Uuid, result: Result<StoreHandle, KvError> },
    StorageDone { store: Uuid, op: OpId, result: StorageResult, is_commit: bool, elapsed: Duration },
    StoreClosed,
    Shutdown { done: futures_channel::oneshot::Sender<()> },
}

/// A cheap, cloneable handle to the engine task: how connections and in-process clients reach it.
#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<EngineMsg>,
    next_conn: Arc<AtomicU64>,
}

/// The engine task is gone (server shut down).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("engine stopped")]
pub struct EngineStopped;

impl EngineHandle {
    /// Registers a new connection; returns its id and the receiver of its outputs.
    pub async fn register(&self) -> Result<(u64, Receiver<EngineOutput>), EngineStopped> {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (outbox, rx) = async_channel::unbounded();
        self.tx.send(EngineMsg::Register { conn, outbox }).await.map_err(|_| EngineStopped)?;
        Ok((conn, rx))
    }

    /// Forgets a connection (after its streams were reported aborted).
    pub async fn unregister(&self, conn: u64) {
        let _ = self.tx.send(EngineMsg::Unregister { conn }).await;
    }

    /// Delivers inputs, waiting while the inbox is full.
    pub async fn send(&self, inputs: Vec<EngineInput>) -> Result<(), EngineStopped> {
        if inputs.is_empty() {
            return Ok(());
        }
        self.tx.send(EngineMsg::Inputs(inputs)).await.map_err(|_| EngineStopped)
    }

    /// Asks the engine to shut down: every stream is closed, every store flushed and closed. Resolves
    /// when done.
    pub async fn shutdown(&self) {
        let (done, wait) = futures_channel::oneshot::channel();
        if self.tx.send(EngineMsg::Shutdown { done }).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// What the engine task needs besides the core engine.
pub struct EngineTaskConfig {
    /// Core engine configuration (nodes, manager, idle eviction).
    pub engine: EngineConfig,
    /// Where stores live.
    pub stores: StoreFactory,
    /// Metrics to record into.
    pub metrics: Arc<Metrics>,
    /// Seed of the engine's randomness (TRX ids).
    pub seed: u64,
}

/// Starts the engine task on `runtime`; returns its handle.
pub fn spawn_engine(runtime: Arc<dyn Runtime>, config: EngineTaskConfig) -> EngineHandle {
    let (tx, rx) = async_channel::bounded(INBOX_CAPACITY);
    let clock = WallClock::default();
    let engine = Engine::new(config.engine, clock.now(), config.seed);
    let task = EngineTask {
        engine,
        clock,
        runtime: runtime.clone(),
        factory: Arc::new(config.stores),
        metrics: config.metrics,
        tx: tx.clone(),
        outboxes: BTreeMap::new(),
        stores: BTreeMap::new(),
        bus_routes: BTreeMap::new(),
        bus_events: VecDeque::new(),
        shutdown: None,
        closing: 0,
    };
    runtime.spawn(task.run(rx)).detach();
    EngineHandle { tx, next_conn: Arc::new(AtomicU64::new(1)) }
}

struct EngineTask {
    engine: Engine,
    clock: WallClock,
    runtime: Arc<dyn Runtime>,
    factory: Arc<StoreFactory>,
    metrics: Arc<Metrics>,
    tx: Sender<EngineMsg>,
    outboxes: BTreeMap<u64, Sender<EngineOutput>>,
    stores: BTreeMap<Uuid, StoreHandle>,
    /// In-memory bus: route → stores subscribed to it.
    bus_routes: BTreeMap<String, BTreeSet<Uuid>>,
    bus_events: VecDeque<(Uuid, BusEvent)>,
    shutdown: Option<futures_channel::oneshot::Sender<()>>,
    closing: usize,
}

impl EngineTask {
    async fn run(mut self, rx: Receiver<EngineMsg>) {
        let mut timer = self.runtime.sleep(Duration::from_secs(3600));
        loop {
            let deadline = self.engine.poll_timeout();
            if let Some(at) = deadline {
                timer.as_mut().reset(self.clock.instant_of(at));
            } else {
                timer.as_mut().reset(Instant::now() + Duration::from_secs(3600));
            }
            let next = select(Box::pin(rx.recv()), timer.as_mut()).await;
            match next {
                Either::Left((Ok(msg), _)) => {
                    if !self.handle(msg) {
                        break;
                    }
                    // Take whatever else is already waiting before flushing effects: batching.
                    let mut more = 0;
                    while more < 1024 {
                        let Ok(msg) = rx.try_recv() else { break };
                        if !self.handle(msg) {
                            return;
                        }
                        more += 1;
                    }
                }
                Either::Left((Err(_), _)) => break,
                Either::Right(_) => {}
            }
            let now = self.clock.now();
            if self.engine.poll_timeout().is_some_and(|at| at <= now) {
                self.engine.handle_timeout(now);
            }
            self.drain();
            if self.shutdown.is_some() && self.closing == 0 {
                if let Some(done) = self.shutdown.take() {
                    let _ = done.send(());
                }
                break;
            }
        }
    }

    /// Handles one message; false when the task must stop at once.
    fn handle(&mut self, msg: EngineMsg) -> bool {
        let now = self.clock.now();
        match msg {
            EngineMsg::Register { conn, outbox } => {
                self.outboxes.insert(conn, outbox);
            }
            EngineMsg::Unregister { conn } => {
                self.outboxes.remove(&conn);
            }
            EngineMsg::Inputs(inputs) => {
                for input in inputs {
                    self.engine.handle_input(now, input);
                }
            }
            EngineMsg::StoreOpened { store, result } => match result {
                Ok(handle) => {
                    if self.shutdown.is_some() {
                        self.close_store(handle);
                    } else {
                        self.stores.insert(store, handle);
                        self.engine.handle_store_opened(now, store, Ok(()));
                    }
                }
                Err(e) => {
                    tracing::warn!(store_id = %store, error = %e, "store cannot be opened");
                    self.metrics.error("store_open");
                    self.engine.handle_store_opened(now, store, Err(e.0));
                }
            },
            EngineMsg::StorageDone { store, op, result, is_commit, elapsed } => {
                if is_commit {
                    self.metrics.commit(elapsed, 1);
                }
                if let StorageResult::Failed(e) = &result {
                    tracing::warn!(store_id = %store, error = %e, "storage operation failed");
                    self.metrics.error("storage");
                }
                self.engine.handle_storage(now, store, op, result);
            }
            EngineMsg::StoreClosed => self.closing = self.closing.saturating_sub(1),
            EngineMsg::Shutdown { done } => {
                self.shutdown = Some(done);
                self.engine.shutdown(now);
            }
        }
        true
    }

    /// Executes every effect the engine has queued (and the bus events they cause).
    fn drain(&mut self) {
        loop {
            while let Some(effect) = self.engine.poll_effect() {
                self.apply(effect);
            }
            let Some((store, event)) = self.bus_events.pop_front() else { break };
            let now = self.clock.now();
            self.engine.handle_bus(now, store, event);
        }
    }

    fn apply(&mut self, effect: EngineEffect) {
        match effect {
            EngineEffect::Output(output) => {
                let conn = output.stream().conn;
                if let Some(outbox) = self.outboxes.get(&conn) {
                    match outbox.try_send(output) {
                        Ok(()) => {}
                        // Unbounded: only fails once the connection dropped its receiver.
                        Err(TrySendError::Closed(_) | TrySendError::Full(_)) => {
                            self.outboxes.remove(&conn);
                        }
                    }
                }
            }
            EngineEffect::OpenStore { store } => {
                let factory = self.factory.clone();
                let tx = self.tx.clone();
                // Opening a database touches the disk: blocking work.
                let job = self.runtime.spawn_blocking(move || factory.open(&store));
                self.runtime
                    .spawn(async move {
                        let result = match job.await {
                            Ok(result) => result,
                            Err(e) => Err(KvError(format!("store open failed: {e}"))),
                        };
                        let _ = tx.send(EngineMsg::StoreOpened { store, result }).await;
                    })
                    .detach();
            }
            EngineEffect::CloseStore { store } => {
                if let Some(handle) = self.stores.remove(&store) {
                    self.close_store(handle);
                }
            }
            EngineEffect::Storage { store, op, request } => {
                let Some(handle) = self.stores.get(&store).cloned() else {
                    let now = self.clock.now();
                    let result = StorageResult::Failed(KvError("store closed".into()));
                    self.engine.handle_storage(now, store, op, result);
                    return;
                };
                let tx = self.tx.clone();
                let is_commit = matches!(request, StorageOp::Commit(_));
                self.runtime
                    .spawn(async move {
                        let started = Instant::now();
                        let result = handle.execute(request).await;
                        let elapsed = started.elapsed();
                        let _ =
                            tx.send(EngineMsg::StorageDone { store, op, result, is_commit, elapsed }).await;
                    })
                    .detach();
            }
            EngineEffect::Bus { store, command } => self.bus(store, command),
        }
    }

    /// Closes a store in the background (queued commits finish first); during shutdown the task waits
    /// for every close.
    fn close_store(&mut self, handle: StoreHandle) {
        self.closing += 1;
        let tx = self.tx.clone();
        self.runtime
            .spawn(async move {
                handle.close().await;
                let _ = tx.send(EngineMsg::StoreClosed).await;
            })
            .detach();
    }

    /// The in-memory bus: routes live in this task, deliveries loop back to subscribed stores.
    fn bus(&mut self, store: Uuid, command: BusCommand) {
        match command {
            BusCommand::Subscribe { op, route } => {
                self.bus_routes.entry(route).or_default().insert(store);
                self.bus_events.push_back((store, BusEvent::Subscribed { op, result: Ok(()) }));
            }
            BusCommand::Unsubscribe { route } => {
                if let Some(stores) = self.bus_routes.get_mut(&route) {
                    stores.remove(&store);
                    if stores.is_empty() {
                        self.bus_routes.remove(&route);
                    }
                }
            }
            BusCommand::Publish { op, route, notification } => {
                for subscriber in self.bus_routes.get(&route).into_iter().flatten() {
                    let event =
                        BusEvent::Notification { route: route.clone(), notification: notification.clone() };
                    self.bus_events.push_back((*subscriber, event));
                }
                self.bus_events.push_back((store, BusEvent::Published { op, result: Ok(()) }));
            }
            BusCommand::Announce { op, route, announcement } => {
                for subscriber in self.bus_routes.get(&route).into_iter().flatten() {
                    let event =
                        BusEvent::Announcement { route: route.clone(), announcement: announcement.clone() };
                    self.bus_events.push_back((*subscriber, event));
                }
                self.bus_events.push_back((store, BusEvent::Published { op, result: Ok(()) }));
            }
        }
    }
}
