//! [`StoreHandle`]: a runtime-agnostic async front for a blocking [`OrderedKv`], with group commit.
//!
//! Storage engines block (disk reads, fsync), so they must never run on an async executor's threads.
//! Each store gets its own threads instead, fed through bounded `async-channel` queues and answering
//! through `futures-channel` oneshots. Both are executor-independent futures, so the same handle works
//! under tokio, smol and async-std, and no runtime is a dependency of this module.
//!
//! * **One writer thread** takes the first waiting commit request, then every request already queued
//!   behind it (up to [`StoreConfig::max_group_batches`] / [`StoreConfig::max_group_bytes`]), and hands
//!   all their batches to one [`OrderedKv::commit`] call: one transaction and one fsync for the whole
//!   group. While that fsync runs, new requests pile up and form the next group, so under load the
//!   throughput is bounded by commits per fsync rather than fsyncs per produce, and an idle store adds
//!   no latency (a lone request is committed at once). Each caller gets exactly the outcomes of its
//!   own batches. When the backend call of a group of several requests fails, each request is
//!   committed again alone, in order, so that one producer's unwritable batch fails that producer
//!   only, not every producer whose commit happened to share its transaction.
//! * **A small pool of reader threads** serves gets and scans concurrently with the writer. A reader
//!   pool rather than reads on the caller's thread, because a read does blocking file I/O too; a pool
//!   rather than a thread per read, because it bounds threads and in-flight reads per store while a
//!   long scan still cannot delay a commit (or the reverse). With [`StoreHandle::spawn_split`] the
//!   readers use their own handle on the backend (redb read transactions are MVCC snapshots that never
//!   wait for the writer); with [`StoreHandle::spawn`] a backend that cannot be split is shared behind
//!   a mutex, so reads wait for an in-progress commit (fine for [`MemoryKv`], whose commits are
//!   microseconds).
//! * **Bounded queues**: callers wait (asynchronously) for room when a queue is full: back-pressure
//!   instead of unbounded memory.
//! * **Shutdown**: [`StoreHandle::close`] stops accepting operations, lets the threads finish every
//!   queued commit and read, and resolves once they exited and the backend was dropped (so a redb file
//!   can be reopened right after). Later operations fail with [`STORE_CLOSED`]. Dropping the last
//!   handle closes the store the same way, without waiting.
//!
//! A commit request that was queued is executed even if its caller's future is dropped meanwhile:
//! once sent, a write cannot be recalled, exactly as with a network request.
//!
//! [`MemoryKv`]: streamkit_proto::storage::MemoryKv

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use async_channel::{Receiver, Sender, TryRecvError};
use futures_channel::oneshot;
use streamkit_proto::storage::{
    CommitOutcome, KvError, KvPair, OrderedKv, ScanRange, StorageOp, StorageResult, WriteBatch,
};
use uuid::Uuid;

use super::redb::{CommitDurability, RedbKv};
use crate::log_limit::limited_log;

/// Text of the error of every operation on a closed store.
pub const STORE_CLOSED: &str = "store closed";

/// What one transaction of the writer did, reported to a [`CommitObserver`] after it finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitReport {
    /// Commit requests (callers) the transaction served.
    pub requests: usize,
    /// Write batches in the transaction (the group size).
    pub batches: usize,
    /// Batches written (the rest conflicted, or the call failed).
    pub committed: usize,
    /// Key and value bytes of the batches written.
    pub bytes: usize,
    /// Whether the transaction fsynced (a durable backend that wrote something).
    pub fsynced: bool,
    /// Whether the backend call failed.
    pub failed: bool,
    /// How long the backend call took (the transaction, fsync included).
    pub elapsed: std::time::Duration,
}

/// Called by the writer thread after every transaction, e.g. to feed metrics. It runs on the writer
/// thread between transactions, so it must be quick and must not block.
#[derive(Clone)]
pub struct CommitObserver(Arc<dyn Fn(&CommitReport) + Send + Sync>);

impl CommitObserver {
    /// An observer calling `f`.
    pub fn new(f: impl Fn(&CommitReport) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Hands `report` to the observer.
    pub(crate) fn report(&self, report: &CommitReport) {
        (self.0)(report);
    }
}

impl std::fmt::Debug for CommitObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitObserver")
    }
}

// Observers are compared by identity: two configurations are equal only if they report to the same one.
impl PartialEq for CommitObserver {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for CommitObserver {}

/// Sizes of a store worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Commit requests that may wait for the writer (at least 1).
    pub commit_queue: usize,
    /// Read requests that may wait for a reader (at least 1).
    pub read_queue: usize,
    /// Reader threads (at least 1).
    pub reader_threads: usize,
    /// A group stops taking requests once it holds this many batches (the request that crosses the
    /// limit is still taken whole, and a single larger request forms a group on its own).
    pub max_group_batches: usize,
    /// A group stops taking requests once its batches write this many bytes (same rule as above).
    pub max_group_bytes: usize,
    /// Whether each successful commit call of the backend is an fsync; only feeds
    /// [`StoreStats::fsyncs`]. [`StoreHandle::spawn_redb`] sets it from the database's durability.
    pub durable_commits: bool,
    /// Prefix of the worker threads' names (Linux shows at most 15 bytes of a name).
    pub thread_name: String,
    /// Told about every transaction (none by default).
    pub observer: Option<CommitObserver>,
    /// The id of the store, for the log (none by default; [`super::StoreFactory::open`] sets it).
    pub store_id: Option<Uuid>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            commit_queue: 1024,
            read_queue: 256,
            reader_threads: 2,
            max_group_batches: 4096,
            max_group_bytes: 64 << 20,
            durable_commits: false,
            thread_name: "skstore".to_owned(),
            observer: None,
            store_id: None,
        }
    }
}

/// Counters of one store since it was opened (monotonic; read them twice and subtract for rates).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Commit requests executed (one per `commit` call of a caller).
    pub commit_requests: u64,
    /// [`OrderedKv::commit`] calls made, i.e. transactions (one per group, plus one per request of a
    /// group committed again one request at a time). `commit_requests / commit_calls` is the average
    /// group size.
    pub commit_calls: u64,
    /// Commit calls that failed with a [`KvError`] (all their batches failed).
    pub failed_commit_calls: u64,
    /// Groups of several requests whose commit call failed and whose requests were committed again
    /// one at a time, so that only the requests failing alone got the error.
    pub isolation_retries: u64,
    /// Batches written.
    pub batches_committed: u64,
    /// Batches skipped because a precondition did not hold.
    pub batches_conflicted: u64,
    /// Commit calls that wrote something with a durable backend (one fsync each).
    pub fsyncs: u64,
    /// Key and value bytes of the batches written ([`WriteBatch::byte_size`]).
    pub bytes_committed: u64,
    /// Gets and scans executed.
    pub reads: u64,
    /// Most batches handed to one commit call.
    pub largest_group: u64,
}

#[derive(Default)]
struct Counters {
    commit_requests: AtomicU64,
    commit_calls: AtomicU64,
    failed_commit_calls: AtomicU64,
    isolation_retries: AtomicU64,
    batches_committed: AtomicU64,
    batches_conflicted: AtomicU64,
    fsyncs: AtomicU64,
    bytes_committed: AtomicU64,
    reads: AtomicU64,
    largest_group: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> StoreStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StoreStats {
            commit_requests: get(&self.commit_requests),
            commit_calls: get(&self.commit_calls),
            failed_commit_calls: get(&self.failed_commit_calls),
            isolation_retries: get(&self.isolation_retries),
            batches_committed: get(&self.batches_committed),
            batches_conflicted: get(&self.batches_conflicted),
            fsyncs: get(&self.fsyncs),
            bytes_committed: get(&self.bytes_committed),
            reads: get(&self.reads),
            largest_group: get(&self.largest_group),
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, KvError>>;

struct CommitRequest {
    batches: Vec<WriteBatch>,
    reply: Reply<Vec<CommitOutcome>>,
}

enum ReadRequest {
    Get { key: Vec<u8>, reply: Reply<Option<Vec<u8>>> },
    Scan { range: ScanRange, reply: Reply<Vec<KvPair>> },
    Usage { reply: Reply<u64> },
}

/// The commit side of a backend, as the writer thread sees it.
trait WriteSide: Send {
    fn commit(&mut self, batches: &[WriteBatch]) -> Result<Vec<CommitOutcome>, KvError>;
}

/// The read side of a backend, shared by the reader threads.
trait ReadSide: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    fn scan(&self, range: &ScanRange) -> Result<Vec<KvPair>, KvError>;
    fn usage(&self) -> Result<u64, KvError>;
}

/// A backend with separate read and write handles.
struct Own<K>(K);

impl<K: OrderedKv + Send> WriteSide for Own<K> {
    fn commit(&mut self, batches: &[WriteBatch]) -> Result<Vec<CommitOutcome>, KvError> {
        self.0.commit(batches)
    }
}

impl<K: OrderedKv + Send + Sync> ReadSide for Own<K> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.0.get(key)
    }
    fn scan(&self, range: &ScanRange) -> Result<Vec<KvPair>, KvError> {
        self.0.scan(range)
    }
    fn usage(&self) -> Result<u64, KvError> {
        self.0.usage()
    }
}

/// A backend that cannot be split, shared by the writer and the readers.
struct Locked<K>(Arc<Mutex<K>>);

impl<K> Locked<K> {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, K>, KvError> {
        // A poisoned lock means an operation panicked half-way: the backend's state is unknown.
        self.0.lock().map_err(|_| KvError("store disabled: an earlier operation on it panicked".to_owned()))
    }
}

impl<K: OrderedKv + Send> WriteSide for Locked<K> {
    fn commit(&mut self, batches: &[WriteBatch]) -> Result<Vec<CommitOutcome>, KvError> {
        self.lock()?.commit(batches)
    }
}

impl<K: OrderedKv + Send> ReadSide for Locked<K> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.lock()?.get(key)
    }
    fn scan(&self, range: &ScanRange) -> Result<Vec<KvPair>, KvError> {
        self.lock()?.scan(range)
    }
    fn usage(&self) -> Result<u64, KvError> {
        self.lock()?.usage()
    }
}

/// A clone-able async handle on one store; clones share the worker threads.
#[derive(Clone)]
pub struct StoreHandle {
    inner: Arc<Inner>,
}

struct Inner {
    commits: Sender<CommitRequest>,
    reads: Sender<ReadRequest>,
    /// Never receives a message: it reports "closed" once every worker thread has exited, because each
    /// thread holds one of its senders until after it dropped its part of the backend.
    exited: Receiver<()>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle")
            .field("closed", &self.is_closed())
            .field("queued_commits", &self.queued_commits())
            .field("stats", &self.stats())
            .finish()
    }
}

impl StoreHandle {
    /// Starts the worker threads for a backend whose reads and commits share one value: reads run on
    /// the reader threads but wait while a commit holds the backend. Use [`StoreHandle::spawn_split`]
    /// (or [`StoreHandle::spawn_redb`]) when the backend offers independent read handles.
    pub fn spawn<K: OrderedKv + Send + 'static>(kv: K, config: StoreConfig) -> Result<Self, KvError> {
        let shared = Arc::new(Mutex::new(kv));
        Self::start(Box::new(Locked(Arc::clone(&shared))), Arc::new(Locked(shared)), &config)
    }

    /// Starts the worker threads with `writer` for commits and `reader`, shared by the reader threads,
    /// for gets and scans; both must be handles on the same data (e.g. clones of a [`RedbKv`]).
    pub fn spawn_split<W, R>(writer: W, reader: R, config: StoreConfig) -> Result<Self, KvError>
    where
        W: OrderedKv + Send + 'static,
        R: OrderedKv + Send + Sync + 'static,
    {
        Self::start(Box::new(Own(writer)), Arc::new(Own(reader)), &config)
    }

    /// Starts the worker threads on a redb database, with reads on their own MVCC snapshots, and
    /// counts fsyncs when its durability is [`CommitDurability::Immediate`] (overriding
    /// [`StoreConfig::durable_commits`]).
    pub fn spawn_redb(kv: RedbKv, mut config: StoreConfig) -> Result<Self, KvError> {
        config.durable_commits = kv.durability() == CommitDurability::Immediate;
        Self::spawn_split(kv.clone(), kv, config)
    }

    fn start(
        writer: Box<dyn WriteSide>,
        reader: Arc<dyn ReadSide>,
        config: &StoreConfig,
    ) -> Result<Self, KvError> {
        let (commit_tx, commit_rx) = async_channel::bounded(config.commit_queue.max(1));
        let (read_tx, read_rx) = async_channel::bounded(config.read_queue.max(1));
        let (exited_tx, exited_rx) = async_channel::bounded::<()>(1);
        let counters = Arc::new(Counters::default());
        let handle = StoreHandle {
            inner: Arc::new(Inner { commits: commit_tx, reads: read_tx, exited: exited_rx, counters }),
        };
        let spawn_failed = |e: std::io::Error| {
            // Threads already started drain their (empty, now closed) queues and exit.
            handle.inner.commits.close();
            handle.inner.reads.close();
            KvError(format!("cannot start store worker thread: {e}"))
        };

        let group = GroupLimits {
            max_batches: config.max_group_batches.max(1),
            max_bytes: config.max_group_bytes.max(1),
            durable: config.durable_commits,
            observer: config.observer.clone(),
            store_id: config.store_id,
        };
        let counters = Arc::clone(&handle.inner.counters);
        let exited = exited_tx.clone();
        thread::Builder::new()
            .name(format!("{}-w", config.thread_name))
            .spawn(move || {
                write_loop(commit_rx, writer, group, &counters);
                drop(exited);
            })
            .map_err(spawn_failed)?;

        for index in 0..config.reader_threads.max(1) {
            let requests = read_rx.clone();
            let reader = Arc::clone(&reader);
            let counters = Arc::clone(&handle.inner.counters);
            let exited = exited_tx.clone();
            thread::Builder::new()
                .name(format!("{}-r{index}", config.thread_name))
                .spawn(move || {
                    read_loop(requests, &*reader, &counters);
                    // The backend must be released before `exited` reports the thread gone.
                    drop(reader);
                    drop(exited);
                })
                .map_err(spawn_failed)?;
        }
        Ok(handle)
    }

    /// Executes one storage effect of the engine.
    pub async fn execute(&self, op: StorageOp) -> StorageResult {
        let result = match op {
            StorageOp::Get { key } => self.get(key).await.map(StorageResult::Value),
            StorageOp::Scan(range) => self.scan(range).await.map(StorageResult::Pairs),
            StorageOp::Commit(batch) => self.commit_one(batch).await.map(StorageResult::Commit),
            StorageOp::Usage => self.usage().await.map(StorageResult::Usage),
        };
        result.unwrap_or_else(StorageResult::Failed)
    }

    /// Reads one key.
    pub async fn get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, KvError> {
        let (reply, answer) = oneshot::channel();
        self.read(ReadRequest::Get { key, reply }, answer).await
    }

    /// Bytes the store holds (see [`OrderedKv::usage`]).
    pub async fn usage(&self) -> Result<u64, KvError> {
        let (reply, answer) = oneshot::channel();
        self.read(ReadRequest::Usage { reply }, answer).await
    }

    /// Reads up to `range.limit` pairs of `range` (see [`OrderedKv::scan`]).
    pub async fn scan(&self, range: ScanRange) -> Result<Vec<KvPair>, KvError> {
        let (reply, answer) = oneshot::channel();
        self.read(ReadRequest::Scan { range, reply }, answer).await
    }

    /// Commits `batches` atomically, possibly in one transaction with other callers' batches, and
    /// returns one outcome per batch once they are durable (for a durable backend).
    pub async fn commit(&self, batches: Vec<WriteBatch>) -> Result<Vec<CommitOutcome>, KvError> {
        if self.is_closed() {
            return Err(closed());
        }
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.inner.commits.send(CommitRequest { batches, reply }).await.map_err(|_| closed())?;
        answer.await.unwrap_or_else(|_| Err(abandoned()))
    }

    /// Commits one batch (see [`StoreHandle::commit`]).
    pub async fn commit_one(&self, batch: WriteBatch) -> Result<CommitOutcome, KvError> {
        let mut outcomes = self.commit(vec![batch]).await?;
        outcomes.pop().ok_or_else(|| KvError("store returned no outcome for a batch".to_owned()))
    }

    async fn read<T>(
        &self,
        request: ReadRequest,
        answer: oneshot::Receiver<Result<T, KvError>>,
    ) -> Result<T, KvError> {
        self.inner.reads.send(request).await.map_err(|_| closed())?;
        answer.await.unwrap_or_else(|_| Err(abandoned()))
    }

    /// Stops accepting operations, finishes every queued commit and read, and resolves once the worker
    /// threads exited and released the backend. Idempotent; concurrent callers all wait.
    pub async fn close(&self) {
        self.inner.commits.close();
        self.inner.reads.close();
        // Err(closed) once the last worker dropped its sender: that is the signal, not an error.
        let _ = self.inner.exited.recv().await;
    }

    /// [`StoreHandle::close`] for synchronous callers (blocks the calling thread; never call it from a
    /// worker of this store).
    pub fn close_blocking(&self) {
        self.inner.commits.close();
        self.inner.reads.close();
        let _ = self.inner.exited.recv_blocking();
    }

    /// Whether [`StoreHandle::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.commits.is_closed()
    }

    /// Commit requests waiting for the writer (a queue-depth gauge).
    pub fn queued_commits(&self) -> usize {
        self.inner.commits.len()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> StoreStats {
        self.inner.counters.snapshot()
    }
}

fn closed() -> KvError {
    KvError(STORE_CLOSED.to_owned())
}

/// The worker stopped without answering; only happens if a worker thread itself died.
fn abandoned() -> KvError {
    KvError(format!("{STORE_CLOSED}: the store worker stopped before answering"))
}

/// How the writer forms groups and reports on them.
#[derive(Clone)]
struct GroupLimits {
    max_batches: usize,
    max_bytes: usize,
    durable: bool,
    observer: Option<CommitObserver>,
    store_id: Option<Uuid>,
}

fn request_bytes(request: &CommitRequest) -> usize {
    request.batches.iter().map(WriteBatch::byte_size).sum()
}

/// How a commit call failed.
enum CallFailure {
    /// The backend returned an error: the transaction did not happen (a commit call is all or
    /// nothing), so its requests may be committed again.
    Backend(KvError),
    /// The backend panicked, or answered with the wrong number of outcomes: what it did is unknown
    /// (it may have written), so nothing is committed again.
    Broken(KvError),
}

/// The writer thread and what it carries from one transaction to the next.
struct Writer<'a> {
    backend: Box<dyn WriteSide>,
    /// Set when the backend panicked: its state is unknown, so it is not called again.
    broken: Option<KvError>,
    limits: GroupLimits,
    counters: &'a Counters,
}

impl Writer<'_> {
    /// One transaction: a commit call with `batches` (of `requests` requests), counted and reported
    /// to the observer.
    fn transaction(
        &mut self,
        batches: &[WriteBatch],
        requests: usize,
    ) -> Result<Vec<CommitOutcome>, CallFailure> {
        let started = std::time::Instant::now();
        let result = match &self.broken {
            Some(error) => Err(CallFailure::Broken(error.clone())),
            None => match catch_unwind(AssertUnwindSafe(|| self.backend.commit(batches))) {
                Ok(Ok(outcomes)) if outcomes.len() == batches.len() => Ok(outcomes),
                Ok(Ok(outcomes)) => Err(CallFailure::Broken(KvError(format!(
                    "store backend returned {} outcomes for {} batches",
                    outcomes.len(),
                    batches.len()
                )))),
                Ok(Err(error)) => Err(CallFailure::Backend(error)),
                Err(_) => {
                    let error = KvError("store disabled: its backend panicked during a commit".to_owned());
                    self.broken = Some(error.clone());
                    Err(CallFailure::Broken(error))
                }
            },
        };
        let report = record(self.counters, batches, result.as_deref().ok(), requests, self.limits.durable);
        if let Some(observer) = &self.limits.observer {
            observer.report(&CommitReport { elapsed: started.elapsed(), ..report });
        }
        result
    }

    /// Commits the requests of a group whose commit call failed one by one, in order (so a request
    /// still sees the effects of the requests before it), each in a call of its own: only the
    /// requests that fail alone get an error. Sharing a transaction is an optimisation; it must not
    /// make one producer's unwritable batch the failure of every producer queued with it.
    fn commit_one_by_one(&mut self, batches: &[WriteBatch], callers: Vec<Caller>, group_error: &KvError) {
        self.counters.isolation_retries.fetch_add(1, Ordering::Relaxed);
        let requests = callers.len();
        let mut failed = 0usize;
        let mut errors: Vec<String> = Vec::new();
        let mut offset = 0;
        for (count, reply) in callers {
            let own = &batches[offset..offset + count];
            offset += count;
            match self.transaction(own, 1) {
                Ok(outcomes) => {
                    let _ = reply.send(Ok(outcomes));
                }
                Err(CallFailure::Backend(error) | CallFailure::Broken(error)) => {
                    failed += 1;
                    if !errors.contains(&error.0) {
                        errors.push(error.0.clone());
                    }
                    let _ = reply.send(Err(error));
                }
            }
        }
        // One line per isolated group, and a client can make a group fail with every batch it sends.
        limited_log!(
            warn,
            [
                store_id = %self.limits.store_id.map_or_else(|| "unknown".to_owned(), |id| id.to_string()),
                requests,
                failed,
                group_error = %group_error,
                errors = %errors.join(" | ")
            ],
            "a store commit failed; its requests were committed one by one and only those failing alone \
             got an error"
        );
    }
}

/// A caller of a group: how many of the group's batches (consecutive, in order) are its own, and
/// where its outcomes go.
type Caller = (usize, Reply<Vec<CommitOutcome>>);

fn write_loop(
    requests: Receiver<CommitRequest>,
    backend: Box<dyn WriteSide>,
    limits: GroupLimits,
    counters: &Counters,
) {
    let mut writer = Writer { backend, broken: None, limits, counters };
    // Returns Err only once the queue is closed *and* empty: queued commits are finished first.
    while let Ok(first) = requests.recv_blocking() {
        let mut batch_count = first.batches.len();
        let mut bytes = request_bytes(&first);
        let mut group = vec![first];
        while batch_count < writer.limits.max_batches && bytes < writer.limits.max_bytes {
            match requests.try_recv() {
                Ok(request) => {
                    batch_count += request.batches.len();
                    bytes += request_bytes(&request);
                    group.push(request);
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }

        let mut batches = Vec::with_capacity(batch_count);
        let mut callers: Vec<Caller> = Vec::with_capacity(group.len());
        for request in group {
            callers.push((request.batches.len(), request.reply));
            batches.extend(request.batches);
        }
        add(&counters.commit_requests, callers.len());

        match writer.transaction(&batches, callers.len()) {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for (count, reply) in callers {
                    // A caller that stopped waiting has nobody to tell; its batches were still handled.
                    let _ = reply.send(Ok(outcomes.by_ref().take(count).collect()));
                }
            }
            Err(CallFailure::Backend(error)) if callers.len() > 1 => {
                writer.commit_one_by_one(&batches, callers, &error);
            }
            Err(CallFailure::Backend(error) | CallFailure::Broken(error)) => {
                for (_, reply) in callers {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

/// Counts one commit call (`outcomes` is `None` when it failed) and describes it for the observer
/// (all but the elapsed time).
fn record(
    counters: &Counters,
    batches: &[WriteBatch],
    outcomes: Option<&[CommitOutcome]>,
    requests: usize,
    durable: bool,
) -> CommitReport {
    add(&counters.commit_calls, 1);
    counters.largest_group.fetch_max(u64::try_from(batches.len()).unwrap_or(u64::MAX), Ordering::Relaxed);
    let mut report = CommitReport {
        requests,
        batches: batches.len(),
        committed: 0,
        bytes: 0,
        fsynced: false,
        failed: false,
        elapsed: std::time::Duration::ZERO,
    };
    match outcomes {
        Some(outcomes) => {
            let mut committed = 0;
            let mut bytes = 0;
            for (batch, outcome) in batches.iter().zip(outcomes) {
                if *outcome == CommitOutcome::Committed {
                    committed += 1;
                    bytes += batch.byte_size();
                }
            }
            add(&counters.batches_committed, committed);
            add(&counters.batches_conflicted, batches.len() - committed);
            add(&counters.bytes_committed, bytes);
            if durable && committed > 0 {
                add(&counters.fsyncs, 1);
            }
            report.committed = committed;
            report.bytes = bytes;
            report.fsynced = durable && committed > 0;
        }
        None => {
            add(&counters.failed_commit_calls, 1);
            report.failed = true;
        }
    }
    report
}

fn read_loop(requests: Receiver<ReadRequest>, backend: &dyn ReadSide, counters: &Counters) {
    fn run<T>(op: impl FnOnce() -> Result<T, KvError>) -> Result<T, KvError> {
        // A panicking read cannot corrupt anything (reads take `&self`), so the reader carries on.
        catch_unwind(AssertUnwindSafe(op))
            .unwrap_or_else(|_| Err(KvError("store backend panicked during a read".to_owned())))
    }
    while let Ok(request) = requests.recv_blocking() {
        counters.reads.fetch_add(1, Ordering::Relaxed);
        match request {
            ReadRequest::Get { key, reply } => {
                let _ = reply.send(run(|| backend.get(&key)));
            }
            ReadRequest::Scan { range, reply } => {
                let _ = reply.send(run(|| backend.scan(&range)));
            }
            ReadRequest::Usage { reply } => {
                let _ = reply.send(run(|| backend.usage()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use futures_lite::future::block_on;
    use streamkit_proto::storage::{MemoryKv, Precondition};

    use super::*;

    fn put(key: &[u8], value: &[u8]) -> WriteBatch {
        WriteBatch { puts: vec![(key.to_vec(), value.to_vec())], ..WriteBatch::default() }
    }

    /// A backend whose commits block until the test lets them through, to build a queue
    /// deterministically.
    struct Gated {
        kv: MemoryKv,
        entered: mpsc::Sender<()>,
        gate: mpsc::Receiver<()>,
    }

    impl OrderedKv for Gated {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
            self.kv.get(key)
        }
        fn scan(&self, range: &ScanRange) -> Result<Vec<KvPair>, KvError> {
            self.kv.scan(range)
        }
        fn commit(&mut self, batches: &[WriteBatch]) -> Result<Vec<CommitOutcome>, KvError> {
            let _ = self.entered.send(());
            self.gate.recv().map_err(|_| KvError("gate dropped".into()))?;
            self.kv.commit(batches)
        }
    }

    fn wait_until(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn queued_commits_form_one_group_and_each_caller_gets_its_own_outcomes() {
        let (entered_tx, entered) = mpsc::channel();
        let (gate, gate_rx) = mpsc::channel();
        let backend = Gated { kv: MemoryKv::new(), entered: entered_tx, gate: gate_rx };
        let store = StoreHandle::spawn(backend, StoreConfig::default()).unwrap();

        // The first commit occupies the writer...
        let first = {
            let store = store.clone();
            thread::spawn(move || block_on(store.commit_one(put(b"first", b"1"))))
        };
        entered.recv().unwrap();
        // ...while 100 callers queue up; 10 keys, 10 callers per key, each guarded by "absent".
        let callers: Vec<_> = (0..100u32)
            .map(|i| {
                let store = store.clone();
                thread::spawn(move || {
                    let key = format!("k{}", i % 10).into_bytes();
                    let batch = WriteBatch {
                        preconditions: vec![Precondition::Absent { key: key.clone() }],
                        puts: vec![(key.clone(), i.to_be_bytes().to_vec())],
                        deletes: vec![],
                    };
                    (key, i, block_on(store.commit(vec![batch])))
                })
            })
            .collect();
        wait_until("100 queued commits", || store.queued_commits() == 100);
        gate.send(()).unwrap();
        gate.send(()).unwrap();
        assert_eq!(first.join().unwrap(), Ok(CommitOutcome::Committed));

        let mut winners = 0;
        for caller in callers {
            let (key, i, outcome) = caller.join().unwrap();
            let stored = block_on(store.get(key)).unwrap().unwrap();
            match outcome.unwrap().as_slice() {
                [CommitOutcome::Committed] => {
                    winners += 1;
                    assert_eq!(stored, i.to_be_bytes(), "a winner's value is stored");
                }
                [CommitOutcome::Conflict { index: 0 }] => assert_ne!(stored, i.to_be_bytes()),
                other => panic!("unexpected outcomes {other:?}"),
            }
        }
        assert_eq!(winners, 10);
        let stats = store.stats();
        assert_eq!(stats.commit_calls, 2, "{stats:?}");
        assert_eq!(stats.commit_requests, 101);
        assert_eq!(stats.largest_group, 100);
        assert_eq!(stats.batches_committed, 11);
        assert_eq!(stats.batches_conflicted, 90);
        assert_eq!(stats.fsyncs, 0, "a memory store does not fsync");
        store.close_blocking();
    }

    #[test]
    fn group_limits_split_a_long_queue() {
        let (entered_tx, entered) = mpsc::channel();
        let (gate, gate_rx) = mpsc::channel();
        let backend = Gated { kv: MemoryKv::new(), entered: entered_tx, gate: gate_rx };
        let reports = Arc::new(Mutex::new(Vec::new()));
        let observer = {
            let reports = Arc::clone(&reports);
            CommitObserver::new(move |report| reports.lock().unwrap().push(*report))
        };
        let config = StoreConfig { max_group_batches: 4, observer: Some(observer), ..StoreConfig::default() };
        let store = StoreHandle::spawn(backend, config).unwrap();
        let first = {
            let store = store.clone();
            thread::spawn(move || block_on(store.commit_one(put(b"first", b"1"))))
        };
        entered.recv().unwrap();
        let callers: Vec<_> = (0..10u8)
            .map(|i| {
                let store = store.clone();
                thread::spawn(move || block_on(store.commit_one(put(&[i], b"v"))))
            })
            .collect();
        wait_until("10 queued commits", || store.queued_commits() == 10);
        for _ in 0..4 {
            gate.send(()).unwrap();
        }
        first.join().unwrap().unwrap();
        for caller in callers {
            assert_eq!(caller.join().unwrap(), Ok(CommitOutcome::Committed));
        }
        let stats = store.stats();
        // 1 + 4 + 4 + 2
        assert_eq!((stats.commit_calls, stats.largest_group, stats.batches_committed), (4, 4, 11));
        store.close_blocking();
        let reports = reports.lock().unwrap();
        let groups: Vec<(usize, usize, bool, bool)> =
            reports.iter().map(|r| (r.batches, r.committed, r.fsynced, r.failed)).collect();
        assert_eq!(
            groups,
            [(1, 1, false, false), (4, 4, false, false), (4, 4, false, false), (2, 2, false, false)]
        );
        // One batch per request; the queued batches are one-byte keys with one-byte values.
        assert!(reports.iter().all(|r| r.requests == r.batches));
        assert!(reports[1..].iter().all(|r| r.bytes == r.committed * 2));
    }

    #[test]
    fn a_backend_error_fails_a_lone_request_whole() {
        let mut kv = MemoryKv::new();
        kv.fail_next_commits(1);
        let store = StoreHandle::spawn(kv, StoreConfig::default()).unwrap();
        let err = block_on(store.commit(vec![put(b"a", b"1"), put(b"b", b"1")])).unwrap_err();
        assert!(err.0.contains("injected"), "{err}");
        assert_eq!(block_on(store.commit_one(put(b"a", b"1"))), Ok(CommitOutcome::Committed));
        let stats = store.stats();
        assert_eq!((stats.failed_commit_calls, stats.batches_committed), (1, 1));
        assert_eq!(stats.isolation_retries, 0, "a group of one request is not committed again");
        assert_eq!(
            block_on(store.execute(StorageOp::Get { key: b"b".to_vec() })),
            StorageResult::Value(None)
        );
        store.close_blocking();
    }

    /// Refuses every commit call holding a batch that writes the key `poison` (as a database refuses
    /// a key over its index limit); its first call waits for the test's signal.
    struct Poisoned {
        kv: MemoryKv,
        entered: mpsc::Sender<()>,
        gate: Option<mpsc::Receiver<()>>,
    }

    impl OrderedKv for Poisoned {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
            self.kv.get(key)
        }
        fn scan(&self, range: &ScanRange) -> Result<Vec<KvPair>, KvError> {
            self.kv.scan(range)
        }
        fn commit(&mut self, batches: &[WriteBatch]) -> Result<Vec<CommitOutcome>, KvError> {
            let _ = self.entered.send(());
            if let Some(gate) = self.gate.take() {
                gate.recv().map_err(|_| KvError("gate dropped".into()))?;
            }
            if batches.iter().any(|batch| batch.puts.iter().any(|(key, _)| key == b"poison")) {
                return Err(KvError("poison refused".into()));
            }
            self.kv.commit(batches)
        }
    }

    #[test]
    fn a_failing_request_fails_alone_and_the_others_of_its_group_commit_in_order() {
        let (entered_tx, entered) = mpsc::channel();
        let (gate, gate_rx) = mpsc::channel();
        let backend = Poisoned { kv: MemoryKv::new(), entered: entered_tx, gate: Some(gate_rx) };
        let store = StoreHandle::spawn(backend, StoreConfig::default()).unwrap();
        let first = {
            let store = store.clone();
            thread::spawn(move || block_on(store.commit_one(put(b"first", b"1"))))
        };
        entered.recv().unwrap();
        let needs_a = WriteBatch {
            preconditions: vec![Precondition::Equals { key: b"a".to_vec(), value: b"1".to_vec() }],
            puts: vec![(b"b".to_vec(), b"2".to_vec())],
            deletes: vec![],
        };
        let requests = [
            vec![put(b"a", b"1")],
            vec![put(b"poison", b"x")],
            // Committed alone, it still sees the first request's write.
            vec![needs_a],
            // A request fails whole: its good batch is not written either.
            vec![put(b"c", b"3"), put(b"poison", b"y")],
            vec![put(b"d", b"4")],
        ];
        // Queued one after the other, so the group holds them in this order.
        let mut callers = Vec::new();
        for (i, batches) in requests.into_iter().enumerate() {
            let store_clone = store.clone();
            callers.push(thread::spawn(move || block_on(store_clone.commit(batches))));
            wait_until("the request to queue", || store.queued_commits() == i + 1);
        }
        gate.send(()).unwrap();
        assert_eq!(first.join().unwrap(), Ok(CommitOutcome::Committed));
        let results: Vec<_> = callers.into_iter().map(|caller| caller.join().unwrap()).collect();
        let refused = Err(KvError("poison refused".into()));
        assert_eq!(
            results,
            [
                Ok(vec![CommitOutcome::Committed]),
                refused.clone(),
                Ok(vec![CommitOutcome::Committed]),
                refused,
                Ok(vec![CommitOutcome::Committed]),
            ]
        );
        for (key, value) in
            [(&b"a"[..], Some(&b"1"[..])), (b"b", Some(b"2")), (b"c", None), (b"d", Some(b"4"))]
        {
            assert_eq!(block_on(store.get(key.to_vec())).unwrap().as_deref(), value);
        }
        let stats = store.stats();
        assert_eq!(stats.isolation_retries, 1);
        // The first request, the failed group, then its five requests one by one.
        assert_eq!((stats.commit_requests, stats.commit_calls, stats.failed_commit_calls), (6, 7, 3));
        assert_eq!(stats.batches_committed, 4);
        store.close_blocking();
    }

    #[test]
    fn close_finishes_queued_commits_then_refuses_operations() {
        let (entered_tx, entered) = mpsc::channel();
        let (gate, gate_rx) = mpsc::channel();
        let backend = Gated { kv: MemoryKv::new(), entered: entered_tx, gate: gate_rx };
        let store = StoreHandle::spawn(backend, StoreConfig::default()).unwrap();
        let spawn_caller = |i: u8| {
            let store = store.clone();
            thread::spawn(move || block_on(store.commit_one(put(&[i], b"v"))))
        };
        let mut callers = vec![spawn_caller(0)];
        entered.recv().unwrap();
        callers.extend((1..5).map(spawn_caller));
        wait_until("queued commits", || store.queued_commits() == 4);
        let closer = {
            let store = store.clone();
            thread::spawn(move || block_on(store.close()))
        };
        wait_until("close", || store.is_closed());
        assert_eq!(block_on(store.commit_one(put(b"late", b"v"))), Err(KvError(STORE_CLOSED.into())));
        assert_eq!(block_on(store.get(b"late".to_vec())), Err(KvError(STORE_CLOSED.into())));
        // The writer still has the queued requests to finish.
        gate.send(()).unwrap();
        gate.send(()).unwrap();
        for caller in callers {
            assert_eq!(caller.join().unwrap(), Ok(CommitOutcome::Committed));
        }
        closer.join().unwrap();
        assert_eq!(store.stats().batches_committed, 5);
        assert_eq!(
            block_on(store.execute(StorageOp::Commit(put(b"x", b"y")))),
            StorageResult::Failed(KvError(STORE_CLOSED.into()))
        );
        block_on(store.close());
    }

    #[test]
    fn reads_are_served_while_a_commit_is_in_progress() {
        // Split handles: the reader has its own view, so a blocked commit must not block reads.
        struct SharedReader(Arc<Mutex<MemoryKv>>);
        impl OrderedKv for SharedReader {
            fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
                self.0.lock().unwrap().get(key)
            }
            fn scan(&self, range: &ScanRange) -> Result<Vec<KvPair>, KvError> {
                self.0.lock().unwrap().scan(range)
            }
            fn commit(&mut self, _: &[WriteBatch]) -> Result<Vec<CommitOutcome>, KvError> {
                Err(KvError("read-only".into()))
            }
        }
        let data = Arc::new(Mutex::new(MemoryKv::new()));
        data.lock().unwrap().commit(&[put(b"k", b"v")]).unwrap();
        let (entered_tx, entered) = mpsc::channel();
        let (gate, gate_rx) = mpsc::channel();
        let writer = Gated { kv: MemoryKv::new(), entered: entered_tx, gate: gate_rx };
        let store = StoreHandle::spawn_split(writer, SharedReader(data), StoreConfig::default()).unwrap();
        let blocked = {
            let store = store.clone();
            thread::spawn(move || block_on(store.commit_one(put(b"w", b"1"))))
        };
        entered.recv().unwrap();
        assert_eq!(block_on(store.get(b"k".to_vec())), Ok(Some(b"v".to_vec())));
        let range = ScanRange { reverse: true, ..ScanRange::new(vec![], vec![0xff], 5) };
        assert_eq!(block_on(store.scan(range)), Ok(vec![(b"k".to_vec(), b"v".to_vec())]));
        gate.send(()).unwrap();
        assert_eq!(blocked.join().unwrap(), Ok(CommitOutcome::Committed));
        assert_eq!(store.stats().reads, 2);
        store.close_blocking();
    }

    #[test]
    fn a_panicking_backend_disables_commits_without_killing_the_worker() {
        struct Panics;
        impl OrderedKv for Panics {
            fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
                panic!("read bug")
            }
            fn scan(&self, _: &ScanRange) -> Result<Vec<KvPair>, KvError> {
                Ok(Vec::new())
            }
            fn commit(&mut self, _: &[WriteBatch]) -> Result<Vec<CommitOutcome>, KvError> {
                panic!("commit bug")
            }
        }
        let store = StoreHandle::spawn_split(Panics, Panics, StoreConfig::default()).unwrap();
        for _ in 0..2 {
            let err = block_on(store.commit_one(put(b"a", b"1"))).unwrap_err();
            assert!(err.0.contains("panicked"), "{err}");
        }
        let err = block_on(store.get(b"a".to_vec())).unwrap_err();
        assert!(err.0.contains("panicked during a read"), "{err}");
        let range = ScanRange::new(vec![], vec![1], 1);
        assert_eq!(block_on(store.scan(range)), Ok(Vec::new()));
        store.close_blocking();
    }

    #[test]
    fn zero_sizes_are_clamped() {
        let config = StoreConfig {
            commit_queue: 0,
            read_queue: 0,
            reader_threads: 0,
            max_group_batches: 0,
            max_group_bytes: 0,
            ..StoreConfig::default()
        };
        let store = StoreHandle::spawn(MemoryKv::new(), config).unwrap();
        assert_eq!(block_on(store.commit_one(put(b"a", b"1"))), Ok(CommitOutcome::Committed));
        assert_eq!(block_on(store.get(b"a".to_vec())), Ok(Some(b"1".to_vec())));
        assert_eq!(block_on(store.commit(Vec::new())), Ok(Vec::new()));
        block_on(store.close());
        assert_eq!(block_on(store.commit(Vec::new())), Err(KvError(STORE_CLOSED.into())));
    }
}
