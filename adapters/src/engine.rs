//! The engine shards: each drives a core [`Engine`] on its own task.
//!
//! Stores are spread over `shards` independent engine tasks ([`shard_of`]); each task owns the nodes
//! of its stores, its inbox, its deadlines and its bus queue, so the engine uses as many cores as
//! there are shards and stores of different shards never wait for each other. Connections and
//! in-process clients reach the shards through one [`EngineHandle`], which routes every input to the
//! shard of its stream's store; storage completions and bus deliveries go straight back to the shard
//! that asked. Every shard answers a connection through that connection's one outbox, one batch per
//! input handled (everything it produced for that connection meanwhile). Storage effects run on the
//! store's [`Store`] (a local store's worker threads with group commit, or the shared PostgreSQL
//! committers and pool); the shard polls the operations in flight itself (no task per operation)
//! and handles each completion as it lands. Bus effects go to a [`MessageBus`] (the in-process
//! [`MemoryBus`] by default) whose deliveries come back through a second bounded queue.
//!
//! Outboxes are unbounded channels, but what flows through them is bounded by the core's flow control:
//! the engine only sends on a stream while it has send credit (at most `stream_credit` messages per
//! stream, and streams per connection are capped by the mux), and only acknowledges input it took.
//!
//! The task also keeps a small record per stream (store, operation, space, segment) for metrics and
//! logs: operations by outcome, produced records and bytes, live subscriptions and workers. Nothing is
//! logged per record, and the lines a client can cause once per stream or per storage operation (a
//! stream closed with an error or rejected, a failed storage operation, a store that cannot be opened)
//! are rate limited ([`LogLimit`]): the metrics count every one.
//!
//! **Shutdown** ([`EngineHandle::drain_and_shutdown`]): new streams are refused with
//! [`EndReason::ShuttingDown`]; in-flight commits get up to the grace period to finish (their producers get
//! their statuses); then every node shuts down (open streams end with `store closed`), every store is
//! closed (queued commits are written first) and the task exits.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender, TrySendError};
use futures_util::future::poll_fn;
use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
use streamkit_proto::node::{BusCommand, BusEvent, BusMessage, OpId};
use streamkit_proto::server::{Engine, EngineConfig, EngineEffect, EngineInput, EngineOutput, shard_of};
use streamkit_proto::storage::{KvError, StorageOp, StorageResult};
use streamkit_proto::stream::{EndReason, StreamId};
use uuid::Uuid;

use crate::bus::{BusDelivery, MemoryBus, MessageBus};
use crate::clock::EngineClock;
use crate::log_limit::{DEFAULT_LINES_PER_SECOND, LogLimit, limited_log};
use crate::metrics::{EngineGauges, ErrorKind, GaugeGuard, Metrics, Operation, Outcome};
use crate::runtime::{BoxFuture, Runtime, RuntimeExt};
use crate::store::{Store, StoreFactory};

/// Messages an engine shard's inbox holds at most; senders wait beyond that (back-pressure). Each
/// message is a batch of a connection's inputs. The queue's slots are allocated (and touched) when the
/// shard starts, so this is memory every shard pays for: about 256 KiB.
pub const INBOX_CAPACITY: usize = 4096;

/// Bus deliveries and completions waiting for a shard at most; a bus delivering faster waits. As for
/// the inbox, the slots are allocated up front: about 600 KiB per shard.
pub const BUS_QUEUE_CAPACITY: usize = 4096;

/// An input for the engine with the store of its stream, which decides the shard it goes to.
pub type RoutedInput = (Uuid, EngineInput);

/// What an engine shard receives.
enum EngineMsg {
    Register {
        conn: u64,
        outbox: Sender<Vec<EngineOutput>>,
    },
    Unregister {
        conn: u64,
    },
    /// Inputs of streams whose stores this shard owns.
    Inputs(Vec<RoutedInput>),
    StoreOpened {
        store: Uuid,
        result: Result<Store, KvError>,
    },
    StoreClosed {
        store: Uuid,
    },
    Shutdown {
        grace: Duration,
        done: futures_channel::oneshot::Sender<()>,
    },
}

/// A storage operation that completed, for the shard that asked.
struct StorageDone {
    store: Uuid,
    op: OpId,
    result: StorageResult,
    /// How long a commit took (none for reads).
    commit_latency: Option<Duration>,
}

/// What woke a shard's task.
enum Wake {
    Message(Option<EngineMsg>),
    Bus(Option<(Uuid, BusEvent)>),
    Storage(StorageDone),
    Timer,
}

/// A cheap, cloneable handle to the engine shards: how connections and in-process clients reach them.
#[derive(Clone)]
pub struct EngineHandle {
    /// The inbox of every shard; shard `i` owns the stores `s` with `shard_of(s, shards.len()) == i`.
    shards: Arc<[Sender<EngineMsg>]>,
    next_conn: Arc<AtomicU64>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("shards", &self.shards.len())
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

/// Why [`EngineHandle::try_send`] did not deliver everything.
#[derive(Debug)]
pub enum TrySendInputs {
    /// The inboxes of some shards are full: their inputs, to send again (and wait) later. The inputs
    /// of the other shards were delivered.
    Full(Vec<RoutedInput>),
    /// An engine shard is gone.
    Stopped,
}

/// The engine task is gone (server shut down).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("engine stopped")]
pub struct EngineStopped;

impl EngineHandle {
    /// Number of engine shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Registers a new connection with every shard; returns its id and the receiver of its outputs
    /// (from all shards).
    /// Outputs arrive in batches: everything a shard produced for the connection while handling one
    /// input (a read's entries, a produce's statuses) is one message of the outbox.
    pub async fn register(&self) -> Result<(u64, Receiver<Vec<EngineOutput>>), EngineStopped> {
        let (conn, outbox, rx) = self.new_connection();
        self.register_outbox(conn, outbox).await?;
        Ok((conn, rx))
    }

    /// The first half of [`register`](Self::register), done without waiting: a new connection id and
    /// its outbox. Nothing reaches the outbox until [`register_outbox`](Self::register_outbox).
    pub fn new_connection(&self) -> (u64, Sender<Vec<EngineOutput>>, Receiver<Vec<EngineOutput>>) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (outbox, rx) = async_channel::unbounded();
        (conn, outbox, rx)
    }

    /// The second half of [`register`](Self::register): every shard learns where `conn`'s outputs go.
    pub async fn register_outbox(
        &self,
        conn: u64,
        outbox: Sender<Vec<EngineOutput>>,
    ) -> Result<(), EngineStopped> {
        for shard in self.shards.iter() {
            let register = EngineMsg::Register { conn, outbox: outbox.clone() };
            shard.send(register).await.map_err(|_| EngineStopped)?;
        }
        Ok(())
    }

    /// Forgets a connection (after its streams were reported aborted).
    pub async fn unregister(&self, conn: u64) {
        for shard in self.shards.iter() {
            let _ = shard.send(EngineMsg::Unregister { conn }).await;
        }
    }

    /// Splits inputs by the shard of their store, keeping their order within each shard.
    fn split(&self, inputs: Vec<RoutedInput>) -> Vec<(usize, Vec<RoutedInput>)> {
        let shards = self.shards.len();
        let first = inputs.first().map_or(0, |input| shard_of(&input.0, shards));
        // Usual case: a connection's batch is for one store (or stores of one shard) and moves as is.
        if inputs.iter().all(|input| shard_of(&input.0, shards) == first) {
            return vec![(first, inputs)];
        }
        let mut batches: Vec<Vec<RoutedInput>> = (0..shards).map(|_| Vec::new()).collect();
        for input in inputs {
            batches[shard_of(&input.0, shards)].push(input);
        }
        batches.into_iter().enumerate().filter(|(_, batch)| !batch.is_empty()).collect()
    }

    /// Delivers inputs to their shards, waiting while an inbox is full.
    pub async fn send(&self, inputs: Vec<RoutedInput>) -> Result<(), EngineStopped> {
        if inputs.is_empty() {
            return Ok(());
        }
        for (shard, batch) in self.split(inputs) {
            self.shards[shard].send(EngineMsg::Inputs(batch)).await.map_err(|_| EngineStopped)?;
        }
        Ok(())
    }

    /// Delivers inputs to the shards whose inboxes have room; gives back those of the others.
    pub fn try_send(&self, inputs: Vec<RoutedInput>) -> Result<(), TrySendInputs> {
        let mut full = Vec::new();
        for (shard, batch) in self.split(inputs) {
            match self.shards[shard].try_send(EngineMsg::Inputs(batch)) {
                Ok(()) => {}
                Err(TrySendError::Full(EngineMsg::Inputs(batch))) => full.extend(batch),
                Err(_) => return Err(TrySendInputs::Stopped),
            }
        }
        if full.is_empty() { Ok(()) } else { Err(TrySendInputs::Full(full)) }
    }

    /// Shuts the engine down at once: every stream is closed, every store flushed and closed.
    /// Resolves when done.
    pub async fn shutdown(&self) {
        self.drain_and_shutdown(Duration::ZERO).await;
    }

    /// Refuses new streams, waits up to `grace` for in-flight commits to finish (so their producers
    /// get their statuses), then shuts down like [`shutdown`](Self::shutdown). Resolves when done.
    pub async fn drain_and_shutdown(&self, grace: Duration) {
        // Every shard drains at the same time; the call resolves when the last is done.
        let mut waits = Vec::with_capacity(self.shards.len());
        for shard in self.shards.iter() {
            let (done, wait) = futures_channel::oneshot::channel();
            if shard.send(EngineMsg::Shutdown { grace, done }).await.is_ok() {
                waits.push(wait);
            }
        }
        for wait in waits {
            let _ = wait.await;
        }
    }

    /// Messages waiting in the shards' inboxes (a queue-depth gauge for tests and diagnostics).
    pub fn queued(&self) -> usize {
        self.shards.iter().map(Sender::len).sum()
    }
}

/// What the engine shards need besides the core engine.
pub struct EngineTaskConfig {
    /// Number of engine shards (tasks), at least 1: each owns the stores [`shard_of`] gives it.
    pub shards: usize,
    /// Core engine configuration of every shard (nodes, manager, idle eviction).
    pub engine: EngineConfig,
    /// Where stores live.
    pub stores: StoreFactory,
    /// The message bus for segment notifications.
    pub bus: Arc<dyn MessageBus>,
    /// Metrics to record into.
    pub metrics: Arc<Metrics>,
    /// Seed of the engine's randomness (TRX ids); each shard derives its own from it.
    pub seed: u64,
}

impl EngineTaskConfig {
    /// A configuration of one shard with the in-memory bus and a fresh metrics registry.
    pub fn new(engine: EngineConfig, stores: StoreFactory, seed: u64) -> Self {
        let (bus, metrics) = (Arc::new(MemoryBus::new()), Arc::new(Metrics::new()));
        Self { shards: 1, engine, stores, bus, metrics, seed }
    }
}

/// One rate limit for both lines of a store that cannot be opened (it failed, or its opening
/// panicked): every request for such a store tries again (see the module docs).
static STORE_OPEN_FAILED_LOG: LogLimit = LogLimit::per_second(DEFAULT_LINES_PER_SECOND);

/// Distinguishes the engines of one process on a shared bus.
static NEXT_ENGINE_ID: AtomicU64 = AtomicU64::new(1);

/// Starts the engine shards on `runtime`; returns the handle that routes to them.
pub fn spawn_engine(runtime: Arc<dyn Runtime>, config: EngineTaskConfig) -> EngineHandle {
    let factory = Arc::new(config.stores);
    let shards: Vec<Sender<EngineMsg>> = (0..config.shards.max(1) as u64)
        .map(|index| {
            // Distinct seeds, so that the shards' TRX ids do not repeat each other's.
            let seed = config.seed.wrapping_add(index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let shard = Shard {
                engine: config.engine.clone(),
                factory: factory.clone(),
                bus: config.bus.clone(),
                metrics: config.metrics.clone(),
                seed,
            };
            spawn_shard(&runtime, shard)
        })
        .collect();
    EngineHandle { shards: shards.into(), next_conn: Arc::new(AtomicU64::new(1)) }
}

/// What one shard's task is made of.
struct Shard {
    engine: EngineConfig,
    factory: Arc<StoreFactory>,
    bus: Arc<dyn MessageBus>,
    metrics: Arc<Metrics>,
    seed: u64,
}

/// Starts one engine shard; returns its inbox.
fn spawn_shard(runtime: &Arc<dyn Runtime>, shard: Shard) -> Sender<EngineMsg> {
    let (tx, rx) = async_channel::bounded(INBOX_CAPACITY);
    let (bus_tx, bus_rx) = async_channel::bounded(BUS_QUEUE_CAPACITY);
    let clock = EngineClock::default();
    let mut engine = Engine::new(shard.engine, clock.now(), shard.seed);
    engine.set_wall_offset(clock.wall_offset());
    let task = EngineTask {
        engine,
        clock,
        runtime: runtime.clone(),
        factory: shard.factory,
        bus: shard.bus,
        engine_id: NEXT_ENGINE_ID.fetch_add(1, Ordering::Relaxed),
        gauges: shard.metrics.engine_gauges(),
        metrics: shard.metrics,
        tx: tx.clone(),
        bus_tx,
        outboxes: BTreeMap::new(),
        pending_outputs: BTreeMap::new(),
        stores: BTreeMap::new(),
        local_bus: VecDeque::new(),
        closing_stores: BTreeMap::new(),
        storage: FuturesUnordered::new(),
        commits_in_flight: 0,
        opening: 0,
        closing: 0,
        phase: Phase::Running,
    };
    runtime.spawn(task.run(rx, bus_rx)).detach();
    tx
}

/// An open store and its share of the `stores_open` gauge.
struct OpenStore {
    handle: Store,
    _gauge: GaugeGuard,
}

enum Phase {
    Running,
    /// New streams are refused; waiting for in-flight commits until `deadline`.
    Draining {
        deadline: Instant,
        done: futures_channel::oneshot::Sender<()>,
    },
    /// Nodes are shut down; waiting for stores to close.
    Closing {
        done: futures_channel::oneshot::Sender<()>,
    },
}

struct EngineTask {
    engine: Engine,
    /// Monotonic time drives the engine; the wall clock enters as an offset, refreshed every round.
    clock: EngineClock,
    runtime: Arc<dyn Runtime>,
    factory: Arc<StoreFactory>,
    bus: Arc<dyn MessageBus>,
    engine_id: u64,
    metrics: Arc<Metrics>,
    tx: Sender<EngineMsg>,
    bus_tx: Sender<(Uuid, BusEvent)>,
    outboxes: BTreeMap<u64, Sender<Vec<EngineOutput>>>,
    /// Outputs produced since the last flush, by connection: each connection gets them as one batch
    /// once the input that produced them is handled (`flush_outputs`).
    pending_outputs: BTreeMap<u64, Vec<EngineOutput>>,
    stores: BTreeMap<Uuid, OpenStore>,
    /// This shard's part of the stream gauges, following the engine's counts.
    gauges: EngineGauges,
    /// Bus completions that were ready at once, handled before anything else the bus sends.
    local_bus: VecDeque<(Uuid, BusEvent)>,
    /// Stores whose close is in progress; the receiver reports closed once the database is released.
    /// A store evicted while idle and requested again at once must not be reopened before that:
    /// redb locks its file until the close finished.
    closing_stores: BTreeMap<Uuid, Receiver<()>>,
    /// Storage operations in flight, polled by the shard's own task: no task is spawned per
    /// operation, and a completion is handled where it lands, without crossing a channel.
    storage: FuturesUnordered<BoxFuture<'static, StorageDone>>,
    commits_in_flight: usize,
    opening: usize,
    closing: usize,
    phase: Phase,
}

impl EngineTask {
    async fn run(mut self, rx: Receiver<EngineMsg>, bus_rx: Receiver<(Uuid, BusEvent)>) {
        let mut timer = self.runtime.sleep(Duration::from_secs(3600));
        // Pinned once: a receiver that is polled registers a listener inside it.
        let (mut inbox, mut bus) = (Box::pin(rx), Box::pin(bus_rx));
        loop {
            let mut deadline = self.engine.poll_timeout().map(|at| self.clock.instant_of(at));
            if let Phase::Draining { deadline: drain, .. } = &self.phase {
                deadline = Some(deadline.map_or(*drain, |d| d.min(*drain)));
            }
            timer.as_mut().reset(deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)));
            let storage = &mut self.storage;
            // Completions first: they release what the inputs wait for.
            let woken = poll_fn(|cx| {
                if let Poll::Ready(Some(done)) = storage.poll_next_unpin(cx) {
                    return Poll::Ready(Wake::Storage(done));
                }
                if let Poll::Ready(msg) = inbox.as_mut().poll_next(cx) {
                    return Poll::Ready(Wake::Message(msg));
                }
                if let Poll::Ready(event) = bus.as_mut().poll_next(cx) {
                    return Poll::Ready(Wake::Bus(event));
                }
                timer.as_mut().poll_elapsed(cx).map(|()| Wake::Timer)
            })
            .await;
            self.engine.set_wall_offset(self.clock.wall_offset());
            match woken {
                Wake::Message(Some(msg)) => {
                    self.handle(msg);
                    // Take whatever else is already waiting, applying the effects of each message before
                    // the next: what the engine produced reaches its connections (and their memory
                    // budgets) at once, instead of piling up behind a thousand inputs.
                    for _ in 0..1024 {
                        let Ok(msg) = inbox.try_recv() else { break };
                        self.drain(&bus);
                        self.handle(msg);
                    }
                }
                Wake::Message(None) => break,
                Wake::Bus(Some((store, event))) => {
                    let now = self.clock.now();
                    self.engine.handle_bus(now, store, event);
                }
                // The task holds a sender of the bus queue: it cannot close while the task runs.
                Wake::Bus(None) | Wake::Timer => {}
                Wake::Storage(done) => self.storage_done(done),
            }
            let now = self.clock.now();
            if self.engine.poll_timeout().is_some_and(|at| at <= now) {
                self.engine.handle_timeout(now);
            }
            self.drain(&bus);
            if self.advance_shutdown() {
                break;
            }
        }
    }

    /// Moves the shutdown along; true once the task must exit.
    fn advance_shutdown(&mut self) -> bool {
        match std::mem::replace(&mut self.phase, Phase::Running) {
            Phase::Running => false,
            Phase::Draining { deadline, done } => {
                if self.commits_in_flight > 0 && Instant::now() < deadline {
                    self.phase = Phase::Draining { deadline, done };
                    return false;
                }
                if self.commits_in_flight > 0 {
                    tracing::warn!(
                        commits = self.commits_in_flight,
                        "shutdown grace over with commits in flight"
                    );
                }
                self.phase = Phase::Closing { done };
                let now = self.clock.now();
                self.engine.shutdown(now);
                while let Some(effect) = self.engine.poll_effect() {
                    self.apply(effect);
                }
                self.flush_outputs();
                self.advance_shutdown()
            }
            Phase::Closing { done } => {
                if self.closing > 0 || self.opening > 0 {
                    self.phase = Phase::Closing { done };
                    return false;
                }
                let _ = done.send(());
                true
            }
        }
    }

    fn handle(&mut self, msg: EngineMsg) {
        let now = self.clock.now();
        match msg {
            EngineMsg::Register { conn, outbox } => {
                self.outboxes.insert(conn, outbox);
            }
            EngineMsg::Unregister { conn } => {
                self.outboxes.remove(&conn);
            }
            EngineMsg::Inputs(inputs) => {
                for (_, input) in inputs {
                    self.input(now, input);
                }
            }
            EngineMsg::StoreOpened { store, result } => {
                self.opening = self.opening.saturating_sub(1);
                match result {
                    Ok(handle) => {
                        if matches!(self.phase, Phase::Closing { .. }) {
                            self.close_store(store, handle);
                        } else {
                            tracing::debug!(store_id = %store, "store opened");
                            let gauge = self.metrics.store_opened();
                            self.stores.insert(store, OpenStore { handle, _gauge: gauge });
                            self.engine.handle_store_opened(now, store, Ok(()));
                        }
                    }
                    Err(e) => {
                        limited_log!(STORE_OPEN_FAILED_LOG => warn, [store_id = %store, error = %e], "store cannot be opened");
                        self.metrics.error(ErrorKind::StoreOpen);
                        self.engine.handle_store_opened(now, store, Err(e.0));
                    }
                }
            }
            EngineMsg::StoreClosed { store } => {
                self.closing = self.closing.saturating_sub(1);
                // Only if no later close of the same store is still running.
                if self.closing_stores.get(&store).is_some_and(Receiver::is_closed) {
                    self.closing_stores.remove(&store);
                }
            }
            EngineMsg::Shutdown { grace, done } => {
                if matches!(self.phase, Phase::Running) {
                    tracing::info!(
                        streams = self.engine.stream_count(),
                        commits = self.commits_in_flight,
                        "engine draining"
                    );
                    self.phase = Phase::Draining { deadline: Instant::now() + grace, done };
                    self.engine.refuse_new_streams();
                }
                // A second shutdown request while one is in progress: dropping its sender here
                // answers it at once; the first caller is the one that waits for the end.
            }
        }
    }

    /// One input from a connection.
    fn input(&mut self, now: streamkit_proto::Millis, input: EngineInput) {
        if let EngineInput::Open { stream, store, request, .. } = &input
            && tracing::enabled!(tracing::Level::DEBUG)
        {
            let (op, _) = Operation::of(request);
            tracing::debug!(
                store_id = %store,
                channel_id = %stream.channel,
                conn = stream.conn,
                op = op.as_str(),
                "stream opened"
            );
        }
        self.engine.handle_input(now, input);
    }

    /// A storage operation completed: metrics, then the engine.
    fn storage_done(&mut self, done: StorageDone) {
        let StorageDone { store, op, result, commit_latency } = done;
        if let Some(latency) = commit_latency {
            self.commits_in_flight = self.commits_in_flight.saturating_sub(1);
            self.metrics.commit_latency(latency);
        }
        if let StorageResult::Failed(e) = &result {
            limited_log!(warn, [store_id = %store, error = %e], "storage operation failed");
            self.metrics.error(ErrorKind::Storage);
        }
        let now = self.clock.now();
        self.engine.handle_storage(now, store, op, result);
    }

    /// Executes every effect the engine has queued, hands it the storage operations that completed
    /// and what the bus delivered, until none has anything left.
    fn drain(&mut self, bus_rx: &Receiver<(Uuid, BusEvent)>) {
        loop {
            while let Some(effect) = self.engine.poll_effect() {
                self.apply(effect);
            }
            // Polling the operations just queued submits them to their stores now rather than after
            // the rest of this round. The no-op waker is fine: the task polls the set with its own
            // waker before it sleeps, and that poll registers it.
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(Some(done)) = self.storage.poll_next_unpin(&mut cx) {
                self.storage_done(done);
                continue;
            }
            let next = self.local_bus.pop_front().or_else(|| bus_rx.try_recv().ok());
            let Some((store, event)) = next else { break };
            let now = self.clock.now();
            self.engine.handle_bus(now, store, event);
        }
        self.gauges.update(self.engine.stats());
        self.flush_outputs();
    }

    /// Hands every connection the outputs produced for it since the last flush, as one batch.
    fn flush_outputs(&mut self) {
        while let Some((conn, batch)) = self.pending_outputs.pop_first() {
            let Some(outbox) = self.outboxes.get(&conn) else { continue };
            // Unbounded: only fails once the connection dropped its receiver.
            if outbox.try_send(batch).is_err() {
                self.outboxes.remove(&conn);
            }
        }
    }

    fn apply(&mut self, effect: EngineEffect) {
        match effect {
            EngineEffect::Output(output) => self.output(output),
            EngineEffect::OpenStore { store } => {
                self.opening += 1;
                let factory = self.factory.clone();
                let tx = self.tx.clone();
                let closed = self.closing_stores.get(&store).cloned();
                let runtime = self.runtime.clone();
                self.runtime
                    .spawn(async move {
                        if let Some(closed) = closed {
                            // Err(closed) once the previous close finished: that is the signal.
                            let _ = closed.recv().await;
                        }
                        // Opening a database touches the disk: blocking work.
                        let job = runtime.spawn_blocking(move || factory.open(&store));
                        let result = match job.await {
                            Ok(result) => result,
                            // A panic message may quote paths and debug dumps: the log's, not clients'.
                            Err(e) => {
                                limited_log!(
                                    STORE_OPEN_FAILED_LOG => warn,
                                    [store_id = %store, error = %e],
                                    "opening a store panicked"
                                );
                                Err(KvError("store open failed: internal error".to_owned()))
                            }
                        };
                        let _ = tx.send(EngineMsg::StoreOpened { store, result }).await;
                    })
                    .detach();
            }
            EngineEffect::CloseStore { store } => {
                if let Some(open) = self.stores.remove(&store) {
                    tracing::debug!(store_id = %store, "closing store");
                    self.close_store(store, open.handle);
                }
            }
            EngineEffect::Storage { store, op, request } => {
                let Some(handle) = self.stores.get(&store).map(|s| s.handle.clone()) else {
                    let now = self.clock.now();
                    let result = StorageResult::Failed(KvError("store closed".into()));
                    self.engine.handle_storage(now, store, op, result);
                    return;
                };
                let is_commit = matches!(request, StorageOp::Commit(_));
                if is_commit {
                    self.commits_in_flight += 1;
                }
                self.storage.push(Box::pin(async move {
                    let started = Instant::now();
                    let result = handle.execute(request).await;
                    let commit_latency = is_commit.then(|| started.elapsed());
                    StorageDone { store, op, result, commit_latency }
                }));
            }
            EngineEffect::Bus { store, command } => self.bus(store, command),
            EngineEffect::Refused { refusal, .. } => self.metrics.refused(refusal),
            EngineEffect::Produced { records, bytes, .. } => self.metrics.produced(records, bytes),
            EngineEffect::Ended { store, stream, op, target, outcome, error } => {
                self.ended(store, stream, op, &target, outcome, error)
            }
        }
    }

    /// A stream ended: its count, and a log line when it failed or was refused.
    fn ended(
        &self,
        store: Uuid,
        stream: StreamId,
        op: Operation,
        (space, segment): &(String, String),
        outcome: Outcome,
        error: Option<EndReason>,
    ) {
        self.metrics.operation(op, outcome);
        let Some(error) = error else { return };
        match outcome {
            Outcome::Error => limited_log!(
                info,
                [
                    store_id = %store,
                    channel_id = %stream.channel,
                    op = op.as_str(),
                    space = %space,
                    segment = %segment,
                    %error
                ],
                "stream closed with error"
            ),
            Outcome::Rejected => {
                if error == EndReason::StoreUnavailable {
                    self.metrics.error(ErrorKind::StoreUnavailable);
                }
                // Refusals while the server drains are expected, not worth a line each.
                if error != EndReason::ShuttingDown {
                    limited_log!(
                        warn,
                        [store_id = %store, channel_id = %stream.channel, op = op.as_str(), %error],
                        "stream rejected"
                    );
                }
            }
            Outcome::Ok | Outcome::Cancelled => {}
        }
    }

    /// Routes an output to its connection.
    fn output(&mut self, output: EngineOutput) {
        let conn = output.stream().conn;
        if self.outboxes.contains_key(&conn) {
            self.pending_outputs.entry(conn).or_default().push(output);
        }
    }

    /// Closes a store in the background (queued commits finish first); during shutdown the task waits
    /// for every close.
    fn close_store(&mut self, store: Uuid, handle: Store) {
        self.closing += 1;
        let (done, closed) = async_channel::bounded::<()>(1);
        self.closing_stores.insert(store, closed);
        let tx = self.tx.clone();
        self.runtime
            .spawn(async move {
                handle.close().await;
                drop(done);
                let _ = tx.send(EngineMsg::StoreClosed { store }).await;
            })
            .detach();
    }

    fn delivery(&self, store: Uuid) -> BusDelivery {
        BusDelivery::new(self.engine_id, store, self.bus_tx.clone())
    }

    /// Hands a bus command to the bus; its completion comes back to the node.
    fn bus(&mut self, store: Uuid, command: BusCommand) {
        match command {
            BusCommand::Subscribe { op, route } => {
                let future = self.bus.subscribe(&route, self.delivery(store));
                self.run_bus(store, future, move |result| Some(BusEvent::Subscribed { op, result }));
            }
            BusCommand::Unsubscribe { route } => {
                let future = self.bus.unsubscribe(&route, &self.delivery(store));
                self.run_bus(store, future, |()| None);
            }
            BusCommand::Publish { op, route, notification } => {
                let future = self.bus.publish(&route, BusMessage::Segment(notification));
                self.run_bus(store, future, move |result| Some(BusEvent::Published { op, result }));
            }
            BusCommand::Announce { op, route, announcement } => {
                let future = self.bus.publish(&route, BusMessage::Presence(announcement));
                self.run_bus(store, future, move |result| Some(BusEvent::Published { op, result }));
            }
        }
    }

    /// Polls a bus future once; if it is not ready, it finishes on its own task. Either way its
    /// completion (if any) reaches the engine.
    fn run_bus<T: Send + 'static>(
        &mut self,
        store: Uuid,
        mut future: BoxFuture<'static, T>,
        completion: impl FnOnce(T) -> Option<BusEvent> + Send + 'static,
    ) {
        let mut cx = Context::from_waker(Waker::noop());
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => {
                if let Some(event) = completion(output) {
                    self.local_bus.push_back((store, event));
                }
            }
            Poll::Pending => {
                let tx = self.bus_tx.clone();
                self.runtime
                    .spawn(async move {
                        if let Some(event) = completion(future.await) {
                            let _ = tx.send((store, event)).await;
                        }
                    })
                    .detach();
            }
        }
    }
}
