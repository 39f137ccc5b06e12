//! Starting and stopping a server: [`start`] (with its own listener) and [`start_embedded`] (for an
//! application that owns the HTTP listener and hands the server its WebSocket connections).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::{BusKind, ConnectionContext, ConnectionTracker, Handler, ServerConfig, StartError};
use crate::engine::{EngineHandle, EngineTaskConfig, spawn_engine};
use crate::http::{HttpFront, Readiness};
use crate::metrics::Metrics;
use crate::runtime::{JoinHandle, Listener, Runtime, RuntimeExt};
use crate::store::CommitObserver;

/// What every server has, listener or not: the engine, the front, and what a graceful stop needs.
struct ServerCore {
    engine: EngineHandle,
    front: HttpFront,
    readiness: Readiness,
    runtime: Arc<dyn Runtime>,
    metrics: Arc<Metrics>,
    tracker: Arc<ConnectionTracker>,
    connections: Arc<AtomicUsize>,
    grace: Duration,
}

impl ServerCore {
    /// Connects the database and the bus when configured and starts the engine shards and the front.
    async fn start(runtime: Arc<dyn Runtime>, mut config: ServerConfig) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new());
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |d| d.as_nanos() as u64);
        let observer = {
            let metrics = metrics.clone();
            CommitObserver::new(move |report| metrics.transaction(report.batches, report.fsynced))
        };
        let mux = config.mux_config();
        let stores = config.take_store_factory(observer).await?;
        let cluster = config.apply_cluster_mode(stores.is_shared());
        let custom_bus = config.bus.is_some();
        let bus = config.take_bus(&stores).await?;
        if cluster && !custom_bus && config.bus_kind == BusKind::Memory {
            tracing::warn!(
                "cluster features on with the in-process bus: subscriptions and worker presence will not \
                 reach clients of other instances (use a NATS or postgres bus)"
            );
        }
        let engine_config = config.engine_config();
        let engine = spawn_engine(
            runtime.clone(),
            EngineTaskConfig {
                shards: config.shards,
                engine: engine_config,
                stores,
                bus,
                metrics: metrics.clone(),
                seed,
            },
        );
        let readiness = Readiness::new();
        let connections = Arc::new(AtomicUsize::new(0));
        let tracker = Arc::new(ConnectionTracker::new());
        let context = ConnectionContext {
            engine: engine.clone(),
            runtime: runtime.clone(),
            mux,
            connection: config.connection_config(),
            metrics: metrics.clone(),
        };
        let handler = Arc::new(Handler {
            context,
            metrics: metrics.clone(),
            connections: connections.clone(),
            max_connections: config.max_connections,
            seeds: AtomicU64::new(seed ^ 0x5eed),
            tracker: tracker.clone(),
        });
        let mut http = config.http;
        http.websocket = http
            .websocket
            .max_message_size(Some(config.max_frame_bytes))
            .max_frame_size(Some(config.max_frame_bytes));
        let front = HttpFront::new(runtime.clone(), config.authenticator, handler, readiness.clone(), http);
        tracing::info!(
            runtime = runtime.name(),
            store = %config.store,
            durability = %config.durability,
            bus = %config.bus_kind,
            cluster,
            "streamkit server started"
        );
        Ok(Self {
            engine,
            front,
            readiness,
            runtime,
            metrics,
            tracker,
            connections,
            grace: config.shutdown_grace,
        })
    }

    fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Steps 2 to 4 of [`RunningServer::shutdown`] (the caller stopped accepting).
    async fn drain(self) {
        self.tracker.close();
        self.engine.drain_and_shutdown(self.grace).await;
        let grace = self.grace.max(Duration::from_millis(100));
        if self.runtime.timeout(grace, self.tracker.wait()).await.is_err() {
            tracing::warn!(
                connections = self.connection_count(),
                "connections still open after the grace period"
            );
        }
    }
}

/// A running server; stop it with [`RunningServer::shutdown`]. Dropping it stops accepting
/// connections at once (without the graceful drain of `shutdown`).
#[must_use = "dropping a RunningServer stops it: keep it while the server should run, then call shutdown"]
pub struct RunningServer {
    core: ServerCore,
    local_addr: SocketAddr,
    stop: Option<futures_channel::oneshot::Sender<()>>,
    accept_done: Option<JoinHandle<()>>,
    tls: bool,
}

impl fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningServer")
            .field("local_addr", &self.local_addr)
            .field("runtime", &self.core.runtime.name())
            .field("connections", &self.connection_count())
            .finish_non_exhaustive()
    }
}

impl RunningServer {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The URL clients dial: `ws://` (`wss://` when serving TLS) and [`local_addr`](Self::local_addr).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}", self.local_addr)
    }

    /// The engine (for in-process clients).
    pub fn engine(&self) -> &EngineHandle {
        &self.core.engine
    }

    /// The HTTP front the listener serves; connections accepted elsewhere can be handed to it too
    /// ([`HttpFront::serve_connection`], [`HttpFront::serve_upgraded`]).
    pub fn front(&self) -> &HttpFront {
        &self.core.front
    }

    /// The metrics registry (what `GET /metrics` renders).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.core.metrics
    }

    /// WebSocket connections currently served.
    pub fn connection_count(&self) -> usize {
        self.core.connection_count()
    }

    /// Serves until `signal` completes (say `tokio::signal::ctrl_c()`, or a channel an application closes
    /// on its own shutdown), then shuts down gracefully like [`shutdown`](Self::shutdown).
    pub async fn shutdown_on<F: Future>(self, signal: F) {
        signal.await;
        self.shutdown().await;
    }

    /// Stops the server gracefully:
    ///
    /// 1. `/readyz` turns 503 and the listener stops accepting;
    /// 2. new streams on existing connections are refused (`server shutting down`); commits already
    ///    started get up to [`ServerConfig::shutdown_grace`] to finish, and their producers get their
    ///    statuses (an acknowledged produce is durable);
    /// 3. every remaining stream is closed (`store closed`), every store is closed after its queued
    ///    commits, and every connection is sent its `close` frame and closed;
    /// 4. resolves once the connections are gone (or after another grace period for connections whose
    ///    peer does not read).
    pub async fn shutdown(mut self) {
        tracing::info!(local_addr = %self.local_addr, "streamkit server shutting down");
        self.core.readiness.set_draining();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(accept) = self.accept_done.take() {
            let _ = accept.await;
        }
        let local_addr = self.local_addr;
        self.core.drain().await;
        tracing::info!(%local_addr, "streamkit server stopped");
    }
}

/// Starts a server on `runtime`: binds the listener, connects the database and the bus when
/// configured, starts the engine shards and accepts connections in the background. Fails if the
/// address cannot be bound or the database or bus cannot be reached.
pub async fn start(runtime: Arc<dyn Runtime>, config: ServerConfig) -> Result<RunningServer, StartError> {
    let addr = config.listen;
    let listener = runtime.bind(addr).map_err(|source| StartError::Bind { addr, source })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
    let tls = config.tls_enabled();
    let core = ServerCore::start(runtime.clone(), config).await?;
    let (stop, accept_done) = accept_in_background(&runtime, core.front.clone(), listener);
    core.readiness.set_ready();
    tracing::info!(%local_addr, "streamkit server listening");
    Ok(RunningServer { core, local_addr, stop: Some(stop), accept_done: Some(accept_done), tls })
}

/// Runs `front.serve(listener)` on its own task until the returned sender fires (or is dropped).
fn accept_in_background(
    runtime: &Arc<dyn Runtime>,
    front: HttpFront,
    listener: Box<dyn Listener>,
) -> (futures_channel::oneshot::Sender<()>, JoinHandle<()>) {
    let (stop, stopped) = futures_channel::oneshot::channel::<()>();
    let accept_done = runtime.spawn(async move {
        front
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await;
    });
    (stop, accept_done)
}

/// A server without a listener of its own, for an application that serves HTTP itself: hand it the
/// WebSocket connections of `/streamz` through its [`front`](Self::front)
/// ([`HttpFront::accept_upgrade`] then [`HttpFront::serve_upgraded`], or the `axum` feature's
/// [`router`](crate::http::axum::router)). [`ServerConfig::listen`] and the server TLS settings are not
/// used (the application's stack owns the socket). Stop it with [`shutdown`](Self::shutdown).
#[must_use = "dropping an EmbeddedServer leaves its connections running without a graceful stop: call shutdown"]
pub struct EmbeddedServer {
    core: ServerCore,
}

impl fmt::Debug for EmbeddedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedServer")
            .field("runtime", &self.core.runtime.name())
            .field("connections", &self.connection_count())
            .finish_non_exhaustive()
    }
}

impl EmbeddedServer {
    /// The front to hand connections to. Cheap to clone.
    pub fn front(&self) -> &HttpFront {
        &self.core.front
    }

    /// The engine (for in-process clients).
    pub fn engine(&self) -> &EngineHandle {
        &self.core.engine
    }

    /// The metrics registry (also [`HttpFront::render_metrics`]).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.core.metrics
    }

    /// WebSocket connections currently served.
    pub fn connection_count(&self) -> usize {
        self.core.connection_count()
    }

    /// Stops the server gracefully, as [`RunningServer::shutdown`] does: the front refuses new
    /// upgrades (503) and reports not ready, streams are drained, and connections are closed.
    pub async fn shutdown(self) {
        tracing::info!("embedded streamkit server shutting down");
        self.core.readiness.set_draining();
        self.core.drain().await;
        tracing::info!("embedded streamkit server stopped");
    }
}

/// Starts a server without a listener (see [`EmbeddedServer`]): connects the database and the bus
/// when configured and starts the engine shards. Fails if the database or bus cannot be reached.
pub async fn start_embedded(
    runtime: Arc<dyn Runtime>,
    config: ServerConfig,
) -> Result<EmbeddedServer, StartError> {
    let core = ServerCore::start(runtime, config).await?;
    core.readiness.set_ready();
    Ok(EmbeddedServer { core })
}
