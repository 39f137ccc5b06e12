//! The streamkit server: the HTTP front (WebSocket at `/streamz`, probes, metrics), one task per
//! connection and the engine task, on any runtime.
//!
//! ```no_run
//! # async fn run(runtime: std::sync::Arc<dyn streamkit::runtime::Runtime>) -> std::io::Result<()> {
//! use streamkit::auth::JwtVerifier;
//! use streamkit::server::{Durability, ServerConfig, start};
//!
//! let verifier = JwtVerifier::hs256(b"a long random secret").expect("non-empty secret");
//! let mut config = ServerConfig::embedded("127.0.0.1:7070".parse().unwrap(), verifier, "./data");
//! config.durability = Durability::Fsync; // the default
//! let server = start(runtime, config).await?;
//! // ... until SIGTERM:
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! The same [`start`] runs on tokio, smol and (deprecated) async-std: the runtime is a value
//! ([`Runtime`](crate::runtime::Runtime)), and nothing below it depends on a particular executor.

mod connection;
mod running;

pub use connection::{ConnectionContext, run_connection};
pub use running::{EmbeddedServer, RunningServer, start, start_embedded};

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures_util::FutureExt;
use streamkit_proto::Millis;
use streamkit_proto::manager::{IdleEviction, ManagerConfig};
use streamkit_proto::mux::{MuxConfig, OverloadPolicy};
use streamkit_proto::node::NodeConfig;
use streamkit_proto::server::{ConnectionConfig, DEFAULT_MEMORY_BUDGET, EngineConfig};
use streamkit_proto::wire::{DEFAULT_MAX_FRAME, DEFAULT_MAX_PAYLOAD, Limits};

use crate::auth::Authenticator;
#[cfg(any(doc, test))]
use crate::auth::JwtVerifier;
use crate::bus::{MemoryBus, MessageBus};
use crate::http::{AcceptedWebSocket, ConnectionHandler, ConnectionPermit, HttpConfig, Rejection};
use crate::log_limit::limited_log;
use crate::metrics::{ErrorKind, Metrics};
use crate::runtime::BoxFuture;
use crate::store::{CommitDurability, CommitObserver, RedbOptions, StoreConfig, StoreFactory};

/// The address [`ServerConfig`] listens on unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default [`ServerConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default [`ServerConfig::max_streams_per_connection`].
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: usize = 1024;
/// Default [`ServerConfig::shutdown_grace`].
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Which storage backend holds the stores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreKind {
    /// One redb database per store under [`ServerConfig::data_dir`] (the default).
    #[default]
    Embedded,
    /// In process memory: lost when the server stops. For tests and embedding.
    Memory,
    /// Every store in one PostgreSQL database ([`ServerConfig::postgres`]), shared by every server
    /// instance pointed at it (feature `postgres`).
    Postgres,
}

impl FromStr for StoreKind {
    type Err = String;

    /// Parses `embedded`, `memory` or `postgres`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "embedded" => Ok(StoreKind::Embedded),
            "memory" => Ok(StoreKind::Memory),
            "postgres" => Ok(StoreKind::Postgres),
            other => {
                Err(format!("unknown store {other:?}: expected \"embedded\", \"memory\" or \"postgres\""))
            }
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreKind::Embedded => "embedded",
            StoreKind::Memory => "memory",
            StoreKind::Postgres => "postgres",
        })
    }
}

/// Which message bus carries segment notifications and worker presence between instances, when
/// [`ServerConfig::bus`] does not give a ready-made one. Variants come and go with the crate's features
/// (and new backends), so matches need a wildcard arm.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusKind {
    /// In process: reaches this server's subscribers only (the default).
    #[default]
    Memory,
    /// PostgreSQL `LISTEN`/`NOTIFY` on the store's database (needs [`StoreKind::Postgres`]).
    #[cfg(feature = "postgres")]
    Postgres,
    /// Core NATS.
    #[cfg(feature = "nats")]
    Nats(crate::bus::NatsConfig),
}

impl fmt::Display for BusKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusKind::Memory => f.write_str("memory"),
            #[cfg(feature = "postgres")]
            BusKind::Postgres => f.write_str("postgres"),
            #[cfg(feature = "nats")]
            BusKind::Nats(config) => f.write_str(&config.url),
        }
    }
}

/// Whether the features that keep several instances sharing one storage consistent are on: the
/// space clock in storage ([`NodeConfig::shared_space_clock`]), leases in storage
/// ([`NodeConfig::leases_in_storage`]) and cluster-wide worker presence
/// ([`NodeConfig::cluster_presence`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterMode {
    /// On when the stores are shared (PostgreSQL), off otherwise (the default).
    #[default]
    Auto,
    /// All three on, whatever the store.
    On,
    /// Left as [`ServerConfig::node`] sets them (all off by default): for a single instance on
    /// PostgreSQL that wants to skip their cost, or to pick them one by one.
    Off,
}

impl FromStr for ClusterMode {
    type Err = String;

    /// Parses `auto`, `on` or `off`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(ClusterMode::Auto),
            "on" => Ok(ClusterMode::On),
            "off" => Ok(ClusterMode::Off),
            other => Err(format!("unknown cluster mode {other:?}: expected \"auto\", \"on\" or \"off\"")),
        }
    }
}

/// When an embedded store's commit is on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// A produce is acknowledged only after its commit was fsynced (group commit shares one fsync
    /// between concurrent produces of a store). The default.
    #[default]
    Fsync,
    /// **Not durable**: commits are acknowledged before they reach the disk; a crash or `kill -9`
    /// loses every produce since the last clean close, although it was acknowledged. For tests,
    /// benchmarks and data that can be rebuilt.
    None,
}

impl FromStr for Durability {
    type Err = String;

    /// Parses `fsync` or `none` (the CLI's `--durability`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fsync" => Ok(Durability::Fsync),
            "none" => Ok(Durability::None),
            other => Err(format!("unknown durability {other:?}: expected \"fsync\" or \"none\"")),
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::Fsync => "fsync",
            Durability::None => "none",
        })
    }
}

impl From<Durability> for CommitDurability {
    fn from(value: Durability) -> Self {
        match value {
            Durability::Fsync => CommitDurability::Immediate,
            Durability::None => CommitDurability::None,
        }
    }
}

/// Everything a server needs. Every field is public and documented with its default; the
/// constructors fill in the defaults.
pub struct ServerConfig {
    /// Address to listen on (default [`DEFAULT_LISTEN`]; port 0 picks a free port).
    pub listen: SocketAddr,
    /// Who may connect: a [`JwtVerifier`] (one key), a [`JwksVerifier`](crate::auth::JwksVerifier)
    /// (a key set chosen by `kid`) or any [`Authenticator`]. No default: a server never runs with a
    /// fixed secret.
    pub authenticator: Arc<dyn Authenticator>,
    /// Storage backend (default [`StoreKind::Embedded`]).
    pub store: StoreKind,
    /// Directory of the embedded stores, one sub-directory per store UUID (default `./data`; created
    /// when needed). Unused by memory stores.
    pub data_dir: PathBuf,
    /// Durability of embedded stores (default [`Durability::Fsync`]). Unused by memory stores.
    pub durability: Durability,
    /// A ready-made store factory, used instead of `store`, `data_dir` and `durability` (default
    /// `None`). For embedding and tests that share or inspect the stores.
    pub store_factory: Option<StoreFactory>,
    /// Sizes of each store's worker (commit and read queues, reader threads, group-commit caps;
    /// default [`StoreConfig::default`]).
    pub store_worker: StoreConfig,
    /// The PostgreSQL database of [`StoreKind::Postgres`] (default `None`; required for that kind).
    #[cfg(feature = "postgres")]
    pub postgres: Option<crate::store::PgConfig>,
    /// The message bus for segment notifications and worker presence (default `None`: the bus
    /// [`ServerConfig::bus_kind`] names).
    pub bus: Option<Arc<dyn MessageBus>>,
    /// The bus to connect at start when `bus` is `None` (default [`BusKind::Memory`]).
    pub bus_kind: BusKind,
    /// Cluster features for shared storage (default [`ClusterMode::Auto`]: on with PostgreSQL).
    pub cluster: ClusterMode,
    /// WebSocket connections served at once (default [`DEFAULT_MAX_CONNECTIONS`]); an upgrade request
    /// over the limit is answered `503 Service Unavailable` with `Retry-After: 1`, before any upgrade.
    pub max_connections: usize,
    /// Logical streams one connection may have open at once (the mux's `max_streams`; default
    /// [`DEFAULT_MAX_STREAMS_PER_CONNECTION`]; 0 = unlimited, Go's default). A stream over the limit is
    /// refused with `too many active streams`.
    pub max_streams_per_connection: usize,
    /// What a connection does when a stream's inbound queue is over its bound because the engine
    /// takes its input slower than the peer sends it (default [`OverloadPolicy::Wait`], Go's default:
    /// the socket is not read until the engine caught up, so TCP slows the peer down).
    /// [`OverloadPolicy::GO_CLOSE`] is Go's `close`: a stream that stays over its bound for 400 ms is
    /// closed with `stream receive buffer overloaded`.
    pub overload_policy: OverloadPolicy,
    /// Largest WebSocket message accepted (default 8 MiB, Go's `MaxPayloadBytes`); a larger one closes
    /// the connection.
    pub max_frame_bytes: usize,
    /// Largest inner message (decoded payload) accepted or sent (default 6 MiB).
    pub max_payload_bytes: usize,
    /// Memory the server may hold for one connection: its queued input, the input the engine has not
    /// released yet and its queued output (default [`DEFAULT_MEMORY_BUDGET`], 64 MiB). Past half of it
    /// the connection's socket is left unread and its streams' send credit is held back; a connection
    /// whose output outgrows all of it (its peer does not read) loses its largest stream, with
    /// `connection memory budget exceeded`.
    pub connection_memory_budget: usize,
    /// Period of the application-level ping (default 30 s; zero disables heartbeats and the idle
    /// timeout).
    pub heartbeat_interval: Duration,
    /// Each heartbeat wait is shortened by a random amount below this (default 5 s), so connections do
    /// not ping in lock-step.
    pub heartbeat_jitter: Duration,
    /// A connection silent for longer than this is closed with `heartbeat timeout` (default 90 s).
    pub idle_timeout: Duration,
    /// Closing of stores that have been idle (no open stream, no effect in flight, no live lease) for
    /// `ttl`, checked every `check_interval` (default on: 10 min, checked every minute). `None` keeps
    /// stores open until shutdown.
    pub idle_eviction: Option<IdleEviction>,
    /// How long [`RunningServer::shutdown`] lets in-flight commits finish, and then connections flush
    /// their last frames (default [`DEFAULT_SHUTDOWN_GRACE`]).
    pub shutdown_grace: Duration,
    /// Per-node tunables (produce chunking, read batches, stream credit, subscription queues; default
    /// [`NodeConfig::default`], the values of PROTOCOL.md).
    pub node: NodeConfig,
    /// HTTP front tunables (request head limits, header and handshake timeouts, pending handshakes in
    /// all and per source address; default
    /// [`HttpConfig::default`]). Its WebSocket message cap is set from `max_frame_bytes`.
    pub http: HttpConfig,
    /// Engine shards: independent engine tasks over which the stores are spread, so that the engine
    /// can use that many cores (default [`default_shards`]: the available parallelism). A store always
    /// belongs to the same shard; 0 counts as 1.
    pub shards: usize,
}

/// The default number of engine shards: the machine's available parallelism (1 if unknown).
pub fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("store", &self.store)
            .field("data_dir", &self.data_dir)
            .field("durability", &self.durability)
            .field("store_factory", &self.store_factory)
            .field("bus_kind", &self.bus_kind)
            .field("cluster", &self.cluster)
            .field("max_connections", &self.max_connections)
            .field("max_streams_per_connection", &self.max_streams_per_connection)
            .field("overload_policy", &self.overload_policy)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("idle_timeout", &self.idle_timeout)
            .field("idle_eviction", &self.idle_eviction)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("shards", &self.shards)
            .field("tls", &self.tls_enabled())
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// Defaults for everything but the address and the verifier: embedded, durable stores in `./data`.
    pub fn defaults(listen: SocketAddr, authenticator: impl Authenticator) -> Self {
        Self {
            listen,
            authenticator: Arc::new(authenticator),
            store: StoreKind::Embedded,
            data_dir: PathBuf::from("./data"),
            durability: Durability::Fsync,
            store_factory: None,
            store_worker: StoreConfig::default(),
            #[cfg(feature = "postgres")]
            postgres: None,
            bus: None,
            bus_kind: BusKind::Memory,
            cluster: ClusterMode::Auto,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            overload_policy: OverloadPolicy::Wait,
            max_frame_bytes: DEFAULT_MAX_FRAME,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD,
            connection_memory_budget: DEFAULT_MEMORY_BUDGET,
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_jitter: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
            idle_eviction: Some(IdleEviction::default()),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            node: NodeConfig::default(),
            http: HttpConfig::default(),
            shards: default_shards(),
        }
    }

    /// Whether the server is to serve TLS ([`HttpConfig::tls`]).
    pub fn tls_enabled(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.http.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// Defaults, with the stores `stores` opens (embedded or memory, as built).
    pub fn new(listen: SocketAddr, authenticator: impl Authenticator, stores: StoreFactory) -> Self {
        Self { store_factory: Some(stores), ..Self::defaults(listen, authenticator) }
    }

    /// Defaults, with embedded stores under `data_dir`.
    pub fn embedded(
        listen: SocketAddr,
        authenticator: impl Authenticator,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        Self { data_dir: data_dir.into(), ..Self::defaults(listen, authenticator) }
    }

    /// Defaults, with memory stores.
    pub fn memory(listen: SocketAddr, authenticator: impl Authenticator) -> Self {
        Self { store: StoreKind::Memory, ..Self::defaults(listen, authenticator) }
    }

    /// Defaults, with the stores in PostgreSQL (the cluster features on, the bus still
    /// [`BusKind::Memory`] until set).
    #[cfg(feature = "postgres")]
    pub fn postgres(
        listen: SocketAddr,
        authenticator: impl Authenticator,
        database: crate::store::PgConfig,
    ) -> Self {
        Self { store: StoreKind::Postgres, postgres: Some(database), ..Self::defaults(listen, authenticator) }
    }

    /// The mux configuration of every connection.
    pub fn mux_config(&self) -> MuxConfig {
        let millis = |d: Duration| Millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        MuxConfig {
            limits: Limits { max_frame: self.max_frame_bytes, max_payload: self.max_payload_bytes },
            heartbeat_interval: millis(self.heartbeat_interval),
            heartbeat_jitter: millis(self.heartbeat_jitter),
            idle_timeout: millis(self.idle_timeout),
            max_streams: self.max_streams_per_connection,
            overload: self.overload_policy,
            ..MuxConfig::default()
        }
    }

    /// The configuration of every connection: its memory budget, at least twice the largest frame so
    /// that a frame of each direction always fits.
    pub fn connection_config(&self) -> ConnectionConfig {
        ConnectionConfig {
            memory_budget: self.connection_memory_budget.max(self.max_frame_bytes.saturating_mul(2)),
        }
    }

    /// The core engine's configuration.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            manager: ManagerConfig {
                node: self.node.clone(),
                idle_eviction: self.idle_eviction,
                ..ManagerConfig::default()
            },
        }
    }

    /// Turns the cluster features on in [`ServerConfig::node`] as [`ServerConfig::cluster`] says, for
    /// stores that are (`shared`) or are not shared.
    pub fn apply_cluster_mode(&mut self, shared: bool) -> bool {
        let on = match self.cluster {
            ClusterMode::Auto => shared,
            ClusterMode::On => true,
            ClusterMode::Off => false,
        };
        if on {
            self.node.shared_space_clock = true;
            self.node.leases_in_storage = true;
            self.node.cluster_presence = true;
        }
        on
    }

    async fn take_store_factory(&mut self, observer: CommitObserver) -> Result<StoreFactory, StartError> {
        let worker = StoreConfig { observer: Some(observer.clone()), ..self.store_worker.clone() };
        Ok(match self.store_factory.take() {
            Some(factory) => factory.with_observer(observer),
            None => match self.store {
                StoreKind::Embedded => {
                    let options =
                        RedbOptions { durability: self.durability.into(), ..RedbOptions::default() };
                    StoreFactory::embedded(self.data_dir.clone(), options).with_config(worker)
                }
                StoreKind::Memory => StoreFactory::memory().with_config(worker),
                #[cfg(feature = "postgres")]
                StoreKind::Postgres => {
                    let database = self
                        .postgres
                        .clone()
                        .ok_or(StartError::Config("the postgres store needs a database"))?;
                    let db = crate::store::PgDatabase::connect(database)
                        .await
                        .map_err(|e| StartError::Database(e.into()))?;
                    StoreFactory::postgres(db).with_observer(observer)
                }
                #[cfg(not(feature = "postgres"))]
                StoreKind::Postgres => {
                    return Err(StartError::Config("the postgres store needs the `postgres` feature"));
                }
            },
        })
    }

    async fn take_bus(&mut self, stores: &StoreFactory) -> Result<Arc<dyn MessageBus>, StartError> {
        if let Some(bus) = self.bus.take() {
            return Ok(bus);
        }
        #[cfg(not(feature = "postgres"))]
        let _ = stores;
        Ok(match &self.bus_kind {
            BusKind::Memory => Arc::new(MemoryBus::new()),
            #[cfg(feature = "postgres")]
            BusKind::Postgres => {
                let db = stores
                    .postgres_database()
                    .ok_or(StartError::Config("the postgres bus needs the postgres store"))?;
                Arc::new(crate::bus::PgBus::connect(db).await.map_err(|e| StartError::Bus(e.into()))?)
            }
            #[cfg(feature = "nats")]
            BusKind::Nats(config) => Arc::new(
                crate::bus::NatsBus::connect(config.clone()).await.map_err(|e| StartError::Bus(e.into()))?,
            ),
        })
    }
}

/// Why [`start`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The listen address could not be bound (in use, not an address of this machine, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// A configuration that cannot work (a store or bus option without what it needs).
    #[error("{0}")]
    Config(&'static str),
    /// The PostgreSQL database could not be reached or prepared.
    #[error("cannot connect the database: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The message bus could not be reached.
    #[error("cannot connect the bus: {0}")]
    Bus(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// For callers that keep `io::Result`: the text survives, and a bind failure keeps its kind
/// (`AddrInUse`, `PermissionDenied`, …).
impl From<StartError> for io::Error {
    fn from(error: StartError) -> Self {
        let kind = match &error {
            StartError::Bind { source, .. } => source.kind(),
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, error)
    }
}

/// Counts live connection tasks: each holds a clone of the sender; the receiver sees the channel
/// close once all of them (and the tracker's own sender) are gone.
struct ConnectionTracker {
    sender: Mutex<Option<Sender<()>>>,
    done: Receiver<()>,
}

impl ConnectionTracker {
    fn new() -> Self {
        let (sender, done) = async_channel::bounded(1);
        Self { sender: Mutex::new(Some(sender)), done }
    }

    /// A token for a new connection; `None` once the server is shutting down.
    fn enter(&self) -> Option<Sender<()>> {
        self.sender.lock().ok()?.clone()
    }

    /// Refuses new connections from now on.
    fn close(&self) {
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
    }

    /// Resolves once every connection task ended (after [`close`](Self::close)).
    async fn wait(&self) {
        // Err(closed) once the last sender is dropped: that is the signal.
        let _ = self.done.recv().await;
    }
}

struct Handler {
    context: ConnectionContext,
    metrics: Arc<Metrics>,
    connections: Arc<AtomicUsize>,
    max_connections: usize,
    seeds: AtomicU64,
    tracker: Arc<ConnectionTracker>,
}

impl ConnectionHandler for Handler {
    fn on_websocket(&self, accepted: AcceptedWebSocket) -> BoxFuture<'static, ()> {
        let context = self.context.clone();
        let metrics = self.metrics.clone();
        let seed = self.seeds.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let Some(token) = self.tracker.enter() else {
            // Shutting down: the upgrade raced with the drain.
            let mut ws = accepted.connection;
            return Box::pin(async move {
                let _ = ws.close().await;
            });
        };
        let gauge = metrics.connection_opened();
        // `map`, not an `async` block awaiting the connection: such a block would hold the
        // connection's future twice (captured, then awaited), for the connection's whole life.
        Box::pin(run_connection(accepted, context, seed).map(move |()| {
            drop(gauge);
            drop(token);
        }))
    }

    fn admit(&self) -> Option<ConnectionPermit> {
        let max = self.max_connections;
        if self.connections.fetch_add(1, Ordering::AcqRel) >= max {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionPermit::new(ConnectionSlot(self.connections.clone())))
    }

    fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    fn on_rejected(&self, peer: SocketAddr, rejection: &Rejection) {
        // One line per refused socket at the rate a client can open sockets would be a log flood:
        // these two are rate limited (the metrics count every one).
        match rejection {
            Rejection::Unauthorized(error) | Rejection::Forbidden(error) => {
                self.metrics.error(ErrorKind::Auth);
                limited_log!(info, [%peer, %error], "handshake refused: unauthorized");
            }
            Rejection::ConnectionLimit => {
                self.metrics.error(ErrorKind::ConnectionLimit);
                let max = self.max_connections;
                limited_log!(warn, [%peer, max], "connection limit reached: upgrade refused");
            }
            // Debug only, like the other handshake failures: they come one per socket, so at info a
            // flood of sockets would be a flood of log lines.
            Rejection::TooManyPendingFromIp => {
                self.metrics.error(ErrorKind::PendingPerIp);
                tracing::debug!(%peer, "handshake refused: too many pending from this address");
            }
            other => {
                self.metrics.error(ErrorKind::Handshake);
                tracing::debug!(%peer, rejection = %other, "handshake refused");
            }
        }
    }
}

/// One place under [`ServerConfig::max_connections`], freed when the connection's permit is dropped.
struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_print() {
        for kind in [StoreKind::Embedded, StoreKind::Memory, StoreKind::Postgres] {
            assert_eq!(kind.to_string().parse::<StoreKind>(), Ok(kind));
        }
        for durability in [Durability::Fsync, Durability::None] {
            assert_eq!(durability.to_string().parse::<Durability>(), Ok(durability));
        }
        assert!("disk".parse::<StoreKind>().unwrap_err().contains("embedded"));
        assert_eq!("on".parse::<ClusterMode>(), Ok(ClusterMode::On));
        assert!("maybe".parse::<ClusterMode>().unwrap_err().contains("auto"));
        assert!("sync".parse::<Durability>().unwrap_err().contains("fsync"));
        assert_eq!(CommitDurability::from(Durability::None), CommitDurability::None);
    }

    #[test]
    fn limits_reach_the_mux_and_the_engine() {
        let verifier = JwtVerifier::hs256(b"secret").unwrap();
        let mut config = ServerConfig::memory(DEFAULT_LISTEN.parse().unwrap(), verifier);
        config.max_streams_per_connection = 7;
        config.max_frame_bytes = 1 << 20;
        config.max_payload_bytes = 512 << 10;
        config.heartbeat_interval = Duration::ZERO;
        config.idle_eviction = None;
        let mux = config.mux_config();
        assert_eq!((mux.max_streams, mux.limits.max_frame, mux.limits.max_payload), (7, 1 << 20, 512 << 10));
        assert_eq!(mux.heartbeat_interval, Millis::ZERO);
        assert_eq!(mux.idle_timeout, Millis::from_secs(90));
        assert_eq!(config.engine_config().manager.idle_eviction, None);
        assert!(
            ServerConfig::embedded(config.listen, config.authenticator.clone(), "d").idle_eviction.is_some()
        );
    }

    #[test]
    fn cluster_mode_turns_the_shared_storage_features_on() {
        let verifier = JwtVerifier::hs256(b"secret").unwrap();
        let mut config = ServerConfig::memory(DEFAULT_LISTEN.parse().unwrap(), verifier);
        assert!(!config.apply_cluster_mode(false), "auto: off for local stores");
        assert!(
            !config.node.shared_space_clock
                && !config.node.leases_in_storage
                && !config.node.cluster_presence
        );
        assert!(config.apply_cluster_mode(true), "auto: on for shared stores");
        assert!(
            config.node.shared_space_clock && config.node.leases_in_storage && config.node.cluster_presence
        );
        config.node = NodeConfig::default();
        config.cluster = ClusterMode::Off;
        assert!(!config.apply_cluster_mode(true));
        assert!(!config.node.shared_space_clock);
        config.cluster = ClusterMode::On;
        assert!(config.apply_cluster_mode(false));
        assert!(config.node.leases_in_storage);
    }
}
