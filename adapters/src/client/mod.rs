//! The streamkit client SDK: [`Client`].
//!
//! One client holds **one connection**, shared by every operation (each operation is a logical stream
//! of the connection's mux), driven by one background task that owns the connection; operations talk
//! to it through channels. The client is runtime-agnostic: it takes an `Arc<dyn Runtime>` (tokio, smol
//! or the deprecated async-std).
//!
//! Two transports, same operations:
//! * [`connect`], [`Client::builder`] or [`Client::connect`]: a WebSocket to a server (`ws://`, or `wss://` with the `tls` feature), with a
//!   [`TokenSource`] called on every dial, JSON (default, what Go speaks) or CBOR;
//! * [`Client::in_process`]: a server's engine in the same process, no sockets and no encoding.
//!
//! # Failures and retries (PROTOCOL.md §2.10, §7.1)
//!
//! Operations that **open** a stream retry transient failures (a failed dial, a lost connection) with
//! jittered exponential backoff ([`RetryPolicy`]); a refused token (HTTP 401/403) is permanent and not
//! retried unless [`ClientOptions::retry_auth_failures`] is set. The connection is redialed on demand by
//! the next operation after it was lost. **Established streams are not resumed**, as in Go: a consume,
//! subscription or produce whose connection is lost fails with an error (`muxer closed`, ...) and the
//! caller starts a new one from its cursor (`min_sequence = last + 1`, `offset = last.space_offset()`).
//!
//! Errors are [`Error`]s: a [`ErrorKind`] to match on and the exact text a Go client shows
//! (`remote closed stream: sequence gap: expected 3, got 4`, `remote error: access denied`).
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), streamkit::Error> {
//! use futures_util::StreamExt;
//! use streamkit::{Client, ConsumeSegment, Metadata};
//!
//! let client = Client::builder().token("<jwt>").connect("ws://127.0.0.1:7070").await?;
//! let store = streamkit::Uuid::new_v4();
//! let status = client.publish(store, "orders", "order-1", "created", Metadata::new()).await?;
//! assert_eq!(status.last_sequence, 1);
//! let request = ConsumeSegment { space: "orders".into(), segment: "order-1".into(), ..Default::default() };
//! let mut entries = client.consume_segment(store, request);
//! while let Some(entry) = entries.next().await {
//!     println!("{}", entry?.sequence);
//! }
//! client.close().await;
//! # Ok(()) }
//! ```

mod builder;
mod error;
mod follow;
mod handlers;
mod hooks;
#[cfg(feature = "server")]
mod inproc;
mod items;
mod lease;
mod retry;
mod socket;
mod store_handle;
mod stream;

pub use builder::{ClientBuilder, connect};
pub use error::{
    Error, ErrorKind, HEARTBEAT_MISSED, INVALID_ENTRY, LEASE_LOST, LEASE_NOT_ACQUIRED,
    NO_STATUS_CONFIRMATION, is_retryable_text,
};
pub use follow::FollowStream;
pub use handlers::{HandlerOptions, SubscriptionId, SubscriptionInfo, SubscriptionState};
pub use hooks::ConnectionHooks;
pub use items::ItemStream;
pub use lease::Lease;
pub use retry::RetryPolicy;
pub use store_handle::StoreHandle;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_channel::Sender;
use futures_channel::oneshot;
use futures_util::StreamExt;
use serde::Serialize;
use streamkit_proto::api::{
    Consume, ConsumeSegment, ConsumeSpace, Entry, Envelope, GetSegments, GetSpaces, LeaseResult, Metadata,
    Peek, Presence, Produce, Record, Request, SegmentStatus, SubscribeToSegmentStatus, SubscribeWorkers,
    WorkerInventory, to_json,
};
use streamkit_proto::mux::MuxConfig;
use streamkit_proto::wire::{Codec, Message};
use uuid::Uuid;

use self::items::Mapped;
use self::stream::{Command, OpStream};
use crate::clock::WallClock;
#[cfg(feature = "server")]
use crate::engine::EngineHandle;
use crate::runtime::{BoxFuture, Runtime, RuntimeExt};

/// Result of client operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
/// Entries of a consume operation.
pub type EntryStream = ItemStream<Entry>;
/// Names of a `get_spaces` / `get_segments` operation.
pub type NameStream = ItemStream<String>;
/// Segment statuses: a produce's acknowledgements, or a subscription's snapshot and live updates.
pub type StatusStream = ItemStream<SegmentStatus>;
/// Worker inventories of a `subscribe_workers` operation.
pub type InventoryStream = ItemStream<WorkerInventory>;

/// Where the token for each dial comes from; called on **every** dial, so a rotating or refreshed token
/// is picked up when the client reconnects.
///
/// Implemented for closures returning a future of `Result<String, E>` (any displayable `E`) and, for
/// a fixed token, for `String` and `&'static str` (or use [`static_token`]).
pub trait TokenSource: Send + Sync + 'static {
    /// The token to present as `Authorization: Bearer <token>`.
    fn token(&self) -> BoxFuture<'static, Result<String>>;
}

impl<F, Fut, E> TokenSource for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<String, E>> + Send + 'static,
    E: fmt::Display,
{
    fn token(&self) -> BoxFuture<'static, Result<String>> {
        let future = self();
        Box::pin(async move {
            future.await.map_err(|e| {
                let text = format!("token source failed: {e}");
                let kind =
                    if is_retryable_text(&text) { ErrorKind::Connection } else { ErrorKind::Unauthorized };
                Error::new(kind, text)
            })
        })
    }
}

/// A fixed token (`Fn` is a fundamental trait, so this cannot overlap the closure impl).
impl TokenSource for String {
    fn token(&self) -> BoxFuture<'static, Result<String>> {
        Box::pin(std::future::ready(Ok(self.clone())))
    }
}

/// A fixed token.
impl TokenSource for &'static str {
    fn token(&self) -> BoxFuture<'static, Result<String>> {
        Box::pin(std::future::ready(Ok((*self).to_owned())))
    }
}

/// A [`TokenSource`] that always presents `token`.
pub fn static_token(token: impl Into<String>) -> impl TokenSource {
    let token: Arc<str> = Arc::from(token.into());
    move || {
        let token = token.clone();
        std::future::ready(Ok::<_, std::convert::Infallible>(token.to_string()))
    }
}

/// Client settings. [`Default`]: JSON, Go's default retry policy, 10 s dial timeout.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The codec: [`Codec::Json`] (default; Go servers speak only JSON) or [`Codec::Cbor`] (a streamkit
    /// server; a server that refuses it fails the dial with a permanent error).
    pub codec: Codec,
    /// Retry policy for opening operations.
    pub retry: RetryPolicy,
    /// Deadline for one dial (resolution, TCP, TLS and the WebSocket handshake).
    pub dial_timeout: Duration,
    /// Treat a refused token (401/403) as transient, retrying it with backoff (Go `RetryAuthFailures`;
    /// useful when the token source refreshes an expired token).
    pub retry_auth_failures: bool,
    /// Mux settings of the connection (frame limits, heartbeat, inbound queue bounds).
    pub mux: MuxConfig,
    /// Answers buffered per operation before the client stops pulling that stream's answers.
    pub stream_buffer: usize,
    /// Messages (records, presence renewals) an operation may have queued for the socket.
    pub send_window: u32,
    /// How long a paused socket (a consumer not keeping up) may stall the other streams before the
    /// stalled streams are aborted with `stream receive buffer overloaded`. Keep it well under the mux's
    /// idle timeout (90 s): a paused socket does not read the server's pongs.
    pub stall_timeout: Duration,
    /// TLS settings for `wss://` (custom root certificates, a client certificate); `None` uses rustls
    /// with the Mozilla root certificates.
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<futures_rustls::rustls::ClientConfig>>,
    /// Callbacks on reconnects and failed dials (none by default).
    pub hooks: ConnectionHooks,
    /// When set, the client looks at its connection every interval and, when it is lost, dials again
    /// in the background, so that the next operation finds it up (Go's health check). `None`
    /// (default): the next operation dials.
    pub health_check: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            codec: Codec::Json,
            retry: RetryPolicy::default(),
            dial_timeout: Duration::from_secs(10),
            retry_auth_failures: false,
            mux: MuxConfig::default(),
            stream_buffer: 256,
            send_window: 256,
            stall_timeout: Duration::from_secs(30),
            #[cfg(feature = "tls")]
            tls: None,
            hooks: ConnectionHooks::default(),
            health_check: None,
        }
    }
}

impl ClientOptions {
    /// These options with `codec`.
    pub fn with_codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// These options with `retry`.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

/// How a client reaches the server: the command queue of its driver task, the socket driver
/// ([`socket`]) or the in-process one ([`inproc`]); both answer the same [`Command`]s.
pub(crate) struct DriverHandle {
    commands: Sender<Command>,
}

impl DriverHandle {
    /// Connects now if not connected (the socket driver dials; in-process is always connected).
    async fn connect(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Connect { reply }).await.map_err(|_| Error::closed())?;
        answer.await.map_err(|_| Error::closed())?
    }

    /// Opens a stream on `store` whose first message is `request`.
    async fn open(&self, store: Uuid, request: Request) -> Result<OpStream> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Open { store, request, reply }).await.map_err(|_| Error::closed())?;
        answer.await.map_err(|_| Error::closed())?
    }

    /// Closes the client and waits until the driver did: every stream fails with `client closed`.
    async fn close(&self) {
        let (done, finished) = oneshot::channel();
        if self.commands.send(Command::Close { done }).await.is_ok() {
            let _ = finished.await;
        }
    }
}

/// Publish locks kept at most (Go `MaxProduceLocks`); past it a tenth of the idle ones are dropped.
const MAX_PUBLISH_LOCKS: usize = 10_000;
/// Peeks a publish retries when the segment looks empty (a concurrent write may hide its head, §4.2).
const PUBLISH_PEEK_RETRIES: usize = 3;
const PUBLISH_PEEK_DELAY: Duration = Duration::from_millis(5);

type PublishKey = (Uuid, String, String);

struct Inner {
    driver: DriverHandle,
    runtime: Arc<dyn Runtime>,
    retry: RetryPolicy,
    publish_locks: Mutex<HashMap<PublishKey, Arc<futures_util::lock::Mutex<()>>>>,
    clock: WallClock,
    /// The callback-style subscriptions ([`Client::subscriptions`]).
    subscriptions: handlers::Registry,
}

/// A streamkit client; cheap to clone (clones share the connection). See the [module](self) docs.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("runtime", &self.inner.runtime.name()).finish_non_exhaustive()
    }
}

/// Options of a segment-status subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Ask the server for a heartbeat every interval (rounded up to whole seconds, clamped to 1..=300 s)
    /// and fail the subscription with `subscription heartbeat timeout` after three intervals without any
    /// frame. `None` (default, like Go): no heartbeats, an idle subscription stays open.
    pub heartbeat_interval: Option<Duration>,
}

/// How to join the worker presence of a store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerOptions {
    /// `None`: observe the inventory only. `Some(id)`: register as worker `id`.
    pub worker_id: Option<Uuid>,
    /// The worker's metadata.
    pub metadata: Metadata,
    /// Renewal interval of a worker (rounded up to whole seconds, clamped to 1..=300 s; default 30 s).
    pub heartbeat_interval: Option<Duration>,
}

impl WorkerOptions {
    /// An observer: the inventory, then every change.
    pub fn observer() -> Self {
        Self::default()
    }

    /// A worker registering as `worker_id`.
    pub fn worker(worker_id: Uuid) -> Self {
        Self { worker_id: Some(worker_id), ..Self::default() }
    }

    /// Adds a metadata pair.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the renewal interval.
    pub fn with_heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = Some(interval);
        self
    }
}

/// Whole seconds of `interval`, rounded up and clamped to 1..=300 (PROTOCOL.md §7.2).
fn interval_seconds(interval: Duration) -> u64 {
    let secs = interval.as_secs() + u64::from(interval.subsec_nanos() > 0);
    secs.clamp(1, 300)
}

impl Client {
    /// A [`ClientBuilder`]: `Client::builder().token(jwt).connect(url).await`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, url, token) = streamkit::doc_support::server().await?;
    /// use std::time::Duration;
    /// use streamkit::{Client, Codec};
    ///
    /// let client = Client::builder()
    ///     .token_source(move || {
    ///         let token = token.clone(); // e.g. fetched from your identity provider
    ///         async move { Ok::<_, std::io::Error>(token) }
    ///     }) // asked again on every dial
    ///     .codec(Codec::Cbor)
    ///     .dial_timeout(Duration::from_secs(5))
    ///     .connect(url)
    ///     .await?;
    /// # client.close().await;
    /// # Ok(()) }
    /// ```
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Connects to the server at `url` (`ws://host:port`; `/streamz` is appended), calling `tokens` for
    /// the token of this and every later dial. The first dial happens here (with the retry policy for
    /// transient failures), so a wrong address or a refused token is reported at once.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, url, token) = streamkit::doc_support::server().await?;
    /// use streamkit::client::{Client, ClientOptions};
    ///
    /// let runtime = streamkit::runtime::default_runtime().ok_or("no async runtime")?;
    /// let client = Client::connect(runtime, url, token, ClientOptions::default()).await?;
    /// # client.close().await;
    /// # Ok(()) }
    /// ```
    pub async fn connect(
        runtime: Arc<dyn Runtime>,
        url: impl Into<String>,
        tokens: impl TokenSource,
        options: ClientOptions,
    ) -> Result<Self> {
        let client = Self::connect_lazy(runtime, url, tokens, options);
        client.dial_now().await?;
        Ok(client)
    }

    /// The first dial of [`connect`](Self::connect): now, with the retry policy.
    async fn dial_now(&self) -> Result<()> {
        self.retrying(|| self.inner.driver.connect()).await
    }

    /// Like [`connect`](Self::connect) without dialing: the first operation dials.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use streamkit::client::{Client, ClientOptions};
    ///
    /// let runtime = streamkit::runtime::default_runtime().ok_or("no async runtime")?;
    /// // Nothing listens there yet, and nothing is dialed yet either.
    /// let client = Client::connect_lazy(runtime, "ws://127.0.0.1:1", "jwt", ClientOptions::default());
    /// # client.close().await;
    /// # Ok(()) }
    /// ```
    pub fn connect_lazy(
        runtime: Arc<dyn Runtime>,
        url: impl Into<String>,
        tokens: impl TokenSource,
        options: ClientOptions,
    ) -> Self {
        Self::connect_lazy_shared(runtime, url.into(), Arc::new(tokens), options)
    }

    /// [`connect_lazy`](Self::connect_lazy) with a token source already shared.
    fn connect_lazy_shared(
        runtime: Arc<dyn Runtime>,
        url: String,
        tokens: Arc<dyn TokenSource>,
        options: ClientOptions,
    ) -> Self {
        let retry = options.retry.normalized();
        let commands = socket::spawn_driver(runtime.clone(), url, tokens, options);
        Self::with_driver(runtime, DriverHandle { commands }, retry)
    }

    /// A client of the server whose engine is `engine` (see [`RunningServer::engine`]), in the same
    /// process: no socket, no encoding, no authentication (every store is reachable).
    ///
    /// [`RunningServer::engine`]: crate::server::RunningServer::engine
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (server, _url, _token) = streamkit::doc_support::server().await?;
    /// use streamkit::Client;
    ///
    /// let client = Client::builder().in_process(server.engine()).await?;
    /// let status = client.append(streamkit::Uuid::new_v4(), "orders", "order-1", "created", Default::default()).await?;
    /// assert_eq!(status.last_sequence, 1);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "server")]
    pub async fn in_process(runtime: Arc<dyn Runtime>, engine: &EngineHandle) -> Result<Self> {
        Self::in_process_with(runtime, engine, ClientOptions::default()).await
    }

    /// [`in_process`](Self::in_process) with options (the codec and dial settings do not apply).
    #[cfg(feature = "server")]
    pub async fn in_process_with(
        runtime: Arc<dyn Runtime>,
        engine: &EngineHandle,
        options: ClientOptions,
    ) -> Result<Self> {
        let retry = options.retry.normalized();
        let commands = inproc::spawn_driver(runtime.clone(), engine.clone(), options).await?;
        Ok(Self::with_driver(runtime, DriverHandle { commands }, retry))
    }

    fn with_driver(runtime: Arc<dyn Runtime>, driver: DriverHandle, retry: RetryPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                driver,
                runtime,
                retry,
                publish_locks: Mutex::new(HashMap::new()),
                clock: WallClock::default(),
                subscriptions: handlers::Registry::default(),
            }),
        }
    }

    /// The runtime the client runs on.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// assert_eq!(client.runtime().name(), "tokio");
    /// # Ok(()) }
    /// ```
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.inner.runtime
    }

    /// Closes the client: open operations fail with `client closed`, the connection is closed, and
    /// later operations fail. Idempotent.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// client.close().await;
    /// let error = client.peek(store, "orders", "order-42").await.unwrap_err();
    /// assert_eq!(error.kind(), streamkit::ErrorKind::Closed);
    /// # Ok(()) }
    /// ```
    pub async fn close(&self) {
        self.inner.driver.close().await;
    }

    /// Runs `attempt` with the retry policy: transient errors are retried after a jittered backoff.
    async fn retrying<T, F, Fut>(&self, attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.retrying_when(Error::is_retryable, attempt).await
    }

    /// Runs `attempt` until it succeeds, fails with an error `retry` does not accept, or the client's
    /// [`RetryPolicy`] runs out of attempts, waiting the policy's jittered delays in between.
    async fn retrying_when<T, F, Fut>(&self, retry: impl Fn(&Error) -> bool, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let policy = self.inner.retry;
        let mut failures = 0;
        loop {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) if retry(&error) && failures + 1 < policy.attempts => {
                    tracing::debug!(%error, attempt = failures + 1, "streamkit operation retried");
                    self.inner.runtime.sleep(policy.delay(failures)).await;
                    failures += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Opens an operation's stream, retrying transient failures.
    async fn open(&self, store: Uuid, request: Request) -> Result<OpStream> {
        self.retrying(|| self.inner.driver.open(store, request.clone())).await
    }

    /// An operation that opens on the first poll.
    fn lazy<T>(&self, store: Uuid, request: Request, map: fn(Message) -> Mapped<T>) -> ItemStream<T> {
        let client = self.clone();
        ItemStream::opening(
            Box::pin(async move { Ok((client.open(store, request).await?, Vec::new())) }),
            map,
        )
    }

    // ---------------------------------------------------------------------------------------------
    // operations

    /// Appends `records` to a segment and streams the server's acknowledgements: one
    /// [`SegmentStatus`] per committed chunk. Each record must carry the segment's next sequence; a
    /// wrong one ends the stream with `remote closed stream: sequence gap: expected X, got Y`.
    ///
    /// The operation opens on the first poll; records are pumped from a background task that waits for
    /// send credit, so memory stays bounded whatever the source. Dropping the stream cancels it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// use futures_util::{StreamExt, stream};
    /// use streamkit::Record;
    ///
    /// let records = stream::iter((1..=3).map(|sequence| Record::new(sequence, format!("event {sequence}"))));
    /// let mut statuses = client.produce(store, "orders", "order-42", records);
    /// while let Some(status) = statuses.next().await {
    ///     println!("committed up to {}", status?.last_sequence);
    /// }
    /// assert_eq!(client.peek(store, "orders", "order-42").await?.sequence, 3);
    /// # Ok(()) }
    /// ```
    pub fn produce<S>(
        &self,
        store: Uuid,
        space: impl Into<String>,
        segment: impl Into<String>,
        records: S,
    ) -> StatusStream
    where
        S: futures_core::Stream<Item = Record> + Send + 'static,
    {
        let client = self.clone();
        let request = Request::Produce(Produce { space: space.into(), segment: segment.into() });
        let opening = async move {
            let stream = client.open(store, request).await?;
            let sender = stream.sender();
            let pump = client.inner.runtime.spawn(async move {
                let mut records = Box::pin(records);
                while let Some(record) = records.next().await {
                    if sender.send(Message::Record(record)).await.is_err() {
                        return;
                    }
                }
                sender.close_send(None).await;
            });
            Ok((stream, vec![pump]))
        };
        ItemStream::opening(Box::pin(opening), items::status)
    }

    /// Appends one record at the segment's next sequence: peeks the head (again, up to 3 times 5 ms
    /// apart, while it reads 0, since an in-flight write can hide it), produces `head + 1` and waits
    /// for its status. Publishes to one segment through this client are serialised, so concurrent
    /// publishes get strictly increasing sequences. A conflict with another writer is not retried:
    /// it fails with `produce failed: remote closed stream: sequence gap: ...`, of kind
    /// [`ErrorKind::SequenceConflict`] ([`append`](Self::append) retries it).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// let first = client.publish(store, "orders", "order-42", "created", Default::default()).await?;
    /// let second = client.publish(store, "orders", "order-42", "paid", Default::default()).await?;
    /// assert_eq!((first.last_sequence, second.last_sequence), (1, 2));
    /// # Ok(()) }
    /// ```
    pub async fn publish(
        &self,
        store: Uuid,
        space: &str,
        segment: &str,
        payload: impl Into<bytes::Bytes>,
        metadata: Metadata,
    ) -> Result<SegmentStatus> {
        let lock = self.publish_lock(store, space, segment);
        let _serialised = lock.lock().await;
        let mut head = self.peek(store, space, segment).await?;
        for _ in 0..PUBLISH_PEEK_RETRIES {
            if head.sequence != 0 {
                break;
            }
            self.inner.runtime.sleep(PUBLISH_PEEK_DELAY).await;
            head = self.peek(store, space, segment).await?;
        }
        let record = Record { sequence: head.sequence + 1, payload: Some(payload.into()), metadata };
        let mut statuses = self.produce(store, space, segment, futures_util::stream::iter([record]));
        let first = match statuses.next().await {
            Some(Ok(status)) => status,
            Some(Err(error)) => {
                let kind = match error.kind() {
                    conflict @ ErrorKind::SequenceConflict { .. } => conflict,
                    _ => ErrorKind::ProduceFailed,
                };
                return Err(Error::new(kind, format!("produce failed: {error}")).with_source(error));
            }
            None => return Err(Error::new(ErrorKind::NoConfirmation, NO_STATUS_CONFIRMATION)),
        };
        // Read to the end rather than cancelling an operation the server is finishing anyway.
        while statuses.next().await.is_some() {}
        Ok(first)
    }

    /// Appends one record after whatever the segment holds, like [`publish`](Self::publish), and when
    /// another writer took that sequence first ([`ErrorKind::SequenceConflict`]) reads the head again
    /// and retries, waiting as the client's [`RetryPolicy`] says between attempts (the jitter keeps
    /// competing writers apart). After the policy's attempts the conflict is returned.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// use streamkit::Metadata;
    ///
    /// let metadata = Metadata::from([("type".to_owned(), "OrderCreated".to_owned())]);
    /// let status = client.append(store, "orders", "order-42", r#"{"id":42}"#, metadata).await?;
    /// assert_eq!(status.last_sequence, 1);
    /// # Ok(()) }
    /// ```
    pub async fn append(
        &self,
        store: Uuid,
        space: &str,
        segment: &str,
        payload: impl Into<bytes::Bytes>,
        metadata: Metadata,
    ) -> Result<SegmentStatus> {
        let payload = payload.into();
        let conflict = |error: &Error| matches!(error.kind(), ErrorKind::SequenceConflict { .. });
        self.retrying_when(conflict, || {
            self.publish(store, space, segment, payload.clone(), metadata.clone())
        })
        .await
    }

    /// [`append`](Self::append) of `value` as a JSON payload (read it back with
    /// [`Entry::json`]). A value serde cannot write as JSON fails with
    /// [`ErrorKind::InvalidArgument`] before anything is sent.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    /// struct OrderPlaced {
    ///     id: u32,
    /// }
    ///
    /// client.append_json(store, "orders", "order-42", &OrderPlaced { id: 42 }, Default::default()).await?;
    /// let head = client.peek(store, "orders", "order-42").await?;
    /// assert_eq!(head.json::<OrderPlaced>()?, OrderPlaced { id: 42 });
    /// # Ok(()) }
    /// ```
    pub async fn append_json<T: Serialize + ?Sized>(
        &self,
        store: Uuid,
        space: &str,
        segment: &str,
        value: &T,
        metadata: Metadata,
    ) -> Result<SegmentStatus> {
        let payload = to_json(value)
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, e.to_string()).with_source(e))?;
        self.append(store, space, segment, payload, metadata).await
    }

    fn publish_lock(&self, store: Uuid, space: &str, segment: &str) -> Arc<futures_util::lock::Mutex<()>> {
        let mut locks = self.inner.publish_locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (store, space.to_owned(), segment.to_owned());
        if let Some(lock) = locks.get(&key) {
            return lock.clone();
        }
        if locks.len() >= MAX_PUBLISH_LOCKS {
            // Evict a tenth of the locks nobody holds or waits for (only the map refers to them).
            let idle: Vec<PublishKey> = locks
                .iter()
                .filter(|(_, lock)| Arc::strong_count(lock) == 1)
                .map(|(key, _)| key.clone())
                .take(MAX_PUBLISH_LOCKS / 10)
                .collect();
            for key in idle {
                locks.remove(&key);
            }
        }
        locks.entry(key).or_default().clone()
    }

    /// The last entry of a segment; for a missing (or empty) segment an entry with only `space` and
    /// `segment` set (sequence 0).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// assert_eq!(client.peek(store, "orders", "order-42").await?.sequence, 0); // nothing yet
    /// client.append(store, "orders", "order-42", "created", Default::default()).await?;
    /// let head = client.peek(store, "orders", "order-42").await?;
    /// assert_eq!((head.sequence, head.payload.as_deref()), (1, Some(&b"created"[..])));
    /// # Ok(()) }
    /// ```
    pub async fn peek(&self, store: Uuid, space: &str, segment: &str) -> Result<Entry> {
        let request = Request::Peek(Peek { space: space.to_owned(), segment: segment.to_owned() });
        match self.open(store, request).await?.single().await? {
            Some(Message::Entry(entry)) => Ok(entry),
            Some(_) => Err(Error::unexpected("peek answer")),
            None => Err(Error::new(ErrorKind::Protocol, "peek ended without an entry")),
        }
    }

    /// Reads a segment in sequence order (PROTOCOL.md §4.3). Lazy: opens on the first poll. Dropping the stream
    /// cancels the read.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// use futures_util::TryStreamExt;
    /// use streamkit::ConsumeSegment;
    ///
    /// for event in ["created", "paid", "shipped"] {
    ///     client.append(store, "orders", "order-42", event, Default::default()).await?;
    /// }
    /// let request = ConsumeSegment::new("orders", "order-42").from_sequence(2);
    /// let entries: Vec<_> = client.consume_segment(store, request).try_collect().await?;
    /// let sequences: Vec<u64> = entries.iter().map(|entry| entry.sequence).collect();
    /// assert_eq!(sequences, [2, 3]);
    /// # Ok(()) }
    /// ```
    pub fn consume_segment(&self, store: Uuid, request: ConsumeSegment) -> EntryStream {
        self.lazy(store, Request::ConsumeSegment(request), items::valid_entry)
    }

    /// Reads a space in timestamp order, resuming strictly after `request.offset` (PROTOCOL.md §4.4).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// use futures_util::TryStreamExt;
    /// use streamkit::ConsumeSpace;
    ///
    /// client.append(store, "orders", "order-1", "created", Default::default()).await?;
    /// client.append(store, "orders", "order-2", "created", Default::default()).await?;
    /// let first: Vec<_> = client.consume_space(store, ConsumeSpace::new("orders").limit(1)).try_collect().await?;
    /// // Later, resume after the last entry seen:
    /// let cursor = first[0].space_offset();
    /// let rest: Vec<_> = client.consume_space(store, ConsumeSpace::new("orders").after(cursor)).try_collect().await?;
    /// assert_eq!((first.len(), rest.len()), (1, 1));
    /// # Ok(()) }
    /// ```
    pub fn consume_space(&self, store: Uuid, request: ConsumeSpace) -> EntryStream {
        self.lazy(store, Request::ConsumeSpace(request), items::valid_entry)
    }

    /// Reads several spaces merged by timestamp (PROTOCOL.md §4.5).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// use futures_util::TryStreamExt;
    /// use streamkit::Consume;
    ///
    /// client.append(store, "orders", "order-1", "created", Default::default()).await?;
    /// client.append(store, "payments", "payment-1", "received", Default::default()).await?;
    /// let entries: Vec<_> = client.consume(store, Consume::new(["orders", "payments"])).try_collect().await?;
    /// assert_eq!(entries.len(), 2);
    /// # Ok(()) }
    /// ```
    pub fn consume(&self, store: Uuid, request: Consume) -> EntryStream {
        self.lazy(store, Request::Consume(request), items::valid_entry)
    }

    /// The spaces of a store, in byte order.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// use futures_util::TryStreamExt;
    ///
    /// client.append(store, "payments", "payment-1", "received", Default::default()).await?;
    /// client.append(store, "orders", "order-1", "created", Default::default()).await?;
    /// let spaces: Vec<String> = client.get_spaces(store).try_collect().await?;
    /// assert_eq!(spaces, ["orders", "payments"]);
    /// # Ok(()) }
    /// ```
    pub fn get_spaces(&self, store: Uuid) -> NameStream {
        self.lazy(store, Request::GetSpaces(GetSpaces {}), items::name)
    }

    /// The segments of a space, in byte order.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// use futures_util::TryStreamExt;
    ///
    /// client.append(store, "orders", "order-2", "created", Default::default()).await?;
    /// client.append(store, "orders", "order-1", "created", Default::default()).await?;
    /// let segments: Vec<String> = client.get_segments(store, "orders").try_collect().await?;
    /// assert_eq!(segments, ["order-1", "order-2"]);
    /// # Ok(()) }
    /// ```
    pub fn get_segments(&self, store: Uuid, space: impl Into<String>) -> NameStream {
        self.lazy(store, Request::GetSegments(GetSegments { space: space.into() }), items::name)
    }

    /// Subscribes to one segment's status: a snapshot (if the segment has data), then every update.
    /// Heartbeats are filtered out. The subscription ends with an error when the connection is lost; it
    /// is not re-established (subscribe again: a new subscription starts with the current snapshot).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// use futures_util::StreamExt;
    /// use streamkit::client::SubscribeOptions;
    ///
    /// let mut statuses = client.subscribe_segment(store, "orders", "order-42", SubscribeOptions::default()).await?;
    /// client.append(store, "orders", "order-42", "created", Default::default()).await?;
    /// let status = statuses.next().await.ok_or("subscription ended")??;
    /// assert_eq!((status.segment.as_str(), status.last_sequence), ("order-42", 1));
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_segment(
        &self,
        store: Uuid,
        space: impl Into<String>,
        segment: impl Into<String>,
        options: SubscribeOptions,
    ) -> Result<StatusStream> {
        self.subscribe(store, space.into(), segment.into(), options).await
    }

    /// Subscribes to every segment of a space (`"*"`): snapshots sorted by segment, then updates.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// use futures_util::StreamExt;
    /// use streamkit::client::SubscribeOptions;
    ///
    /// client.append(store, "orders", "order-1", "created", Default::default()).await?;
    /// let mut statuses = client.subscribe_space(store, "orders", SubscribeOptions::default()).await?;
    /// let snapshot = statuses.next().await.ok_or("subscription ended")??;
    /// assert_eq!(snapshot.segment, "order-1");
    /// client.append(store, "orders", "order-2", "created", Default::default()).await?;
    /// let update = statuses.next().await.ok_or("subscription ended")??;
    /// assert_eq!(update.segment, "order-2");
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_space(
        &self,
        store: Uuid,
        space: impl Into<String>,
        options: SubscribeOptions,
    ) -> Result<StatusStream> {
        self.subscribe(store, space.into(), "*".to_owned(), options).await
    }

    async fn subscribe(
        &self,
        store: Uuid,
        space: String,
        segment: String,
        options: SubscribeOptions,
    ) -> Result<StatusStream> {
        let interval = options.heartbeat_interval.map(interval_seconds);
        let request = Request::SubscribeToSegmentStatus(SubscribeToSegmentStatus {
            space,
            segment,
            heartbeat_interval_seconds: interval.map_or(0, |s| s as i64),
        });
        let stream = ItemStream::open(self.open(store, request).await?, Vec::new(), items::live_status);
        Ok(match interval {
            Some(secs) => stream.with_idle_timeout(self.inner.runtime.clone(), Duration::from_secs(3 * secs)),
            None => stream,
        })
    }

    /// Joins the worker presence of a store: as an observer (the inventory, then every change) or as a
    /// worker (registered while the stream lives; a `Presence` renewal is sent at once and every
    /// interval, and the stream fails after three intervals without a frame from the server).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_server, client) = streamkit::doc_support::client().await?;
    /// # let store = streamkit::Uuid::new_v4();
    /// use futures_util::StreamExt;
    /// use streamkit::client::WorkerOptions;
    ///
    /// let mut observer = client.subscribe_workers(store, WorkerOptions::observer()).await?;
    /// let worker_id = streamkit::Uuid::new_v4();
    /// let options = WorkerOptions::worker(worker_id).with_metadata("role", "indexer");
    /// let _registration = client.subscribe_workers(store, options).await?; // registered while it lives
    /// // The observer sees the inventory, then every change:
    /// while let Some(inventory) = observer.next().await {
    ///     if inventory?.workers.iter().any(|worker| worker.worker_id == worker_id) {
    ///         break;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_workers(&self, store: Uuid, options: WorkerOptions) -> Result<InventoryStream> {
        let WorkerOptions { worker_id, metadata, heartbeat_interval } = options;
        let Some(worker_id) = worker_id.filter(|id| !id.is_nil()) else {
            let request = Request::SubscribeWorkers(SubscribeWorkers {
                worker_id: Uuid::nil(),
                metadata,
                heartbeat_interval_seconds: 0,
            });
            return Ok(ItemStream::open(self.open(store, request).await?, Vec::new(), items::inventory));
        };
        let secs = heartbeat_interval.map_or(30, interval_seconds);
        let request = Request::SubscribeWorkers(SubscribeWorkers {
            worker_id,
            metadata,
            heartbeat_interval_seconds: secs as i64,
        });
        let stream = self.open(store, request).await?;
        let sender = stream.sender();
        let runtime = self.inner.runtime.clone();
        let clock = self.inner.clock.clone();
        let renewals = self.inner.runtime.spawn(async move {
            loop {
                let presence =
                    Presence { worker_id, heartbeat: false, timestamp: clock.now().as_u64() as i64 };
                if sender.send(Message::Envelope(Envelope::Presence(presence))).await.is_err() {
                    return;
                }
                runtime.sleep(Duration::from_secs(secs)).await;
            }
        });
        Ok(ItemStream::open(stream, vec![renewals], items::inventory)
            .with_idle_timeout(self.inner.runtime.clone(), Duration::from_secs(3 * secs)))
    }

    /// A lease operation: one result.
    async fn lease_call(&self, store: Uuid, request: Request) -> Result<LeaseResult> {
        match self.open(store, request).await?.single().await? {
            Some(Message::LeaseResult(result)) => Ok(result),
            Some(_) => Err(Error::unexpected("lease answer")),
            None => Err(Error::new(ErrorKind::Protocol, "lease operation ended without a result")),
        }
    }
}
