//! The streamkit server: the HTTP front (WebSocket at `/streamz`, probes, metrics), one task per
//! connection and the engine task, on any runtime.

mod connection;

pub use connection::{SERVER_SHUTDOWN, TOKEN_EXPIRED, run_connection};

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use streamkit_core::mux::MuxConfig;
use streamkit_core::server::EngineConfig;

use crate::auth::JwtVerifier;
use crate::engine::{EngineHandle, EngineTaskConfig, spawn_engine};
use crate::http::{AcceptedWebSocket, ConnectionHandler, HttpConfig, HttpFront, Readiness};
use crate::metrics::Metrics;
use crate::runtime::{BoxFuture, Runtime, RuntimeExt};
use crate::store::StoreFactory;

/// Everything a server needs.
pub struct ServerConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Token verification.
    pub verifier: JwtVerifier,
    /// Where stores live (embedded redb under a data directory, or memory).
    pub stores: StoreFactory,
    /// Engine tunables (node limits, idle eviction, store circuit breaker).
    pub engine: EngineConfig,
    /// Per-connection mux tunables (frame and payload limits, heartbeats, stream limits).
    pub mux: MuxConfig,
    /// HTTP front tunables.
    pub http: HttpConfig,
    /// Connections served at once; more are closed right after the upgrade.
    pub max_connections: usize,
}

impl ServerConfig {
    /// A configuration with defaults for everything but the address, the verifier and the stores.
    pub fn new(listen: SocketAddr, verifier: JwtVerifier, stores: StoreFactory) -> Self {
        Self {
            listen,
            verifier,
            stores,
            engine: EngineConfig::default(),
            mux: MuxConfig::default(),
            http: HttpConfig::default(),
            max_connections: 10_000,
        }
    }
}

struct Handler {
    engine: EngineHandle,
    runtime: Arc<dyn Runtime>,
    mux: MuxConfig,
    metrics: Arc<Metrics>,
    connections: Arc<AtomicUsize>,
    max_connections: usize,
    seeds: AtomicU64,
}

impl ConnectionHandler for Handler {
    fn on_websocket(&self, accepted: AcceptedWebSocket) -> BoxFuture<'static, ()> {
        let engine = self.engine.clone();
        let runtime = self.runtime.clone();
        let mux = self.mux.clone();
        let connections = self.connections.clone();
        let max = self.max_connections;
        let metrics = self.metrics.clone();
        let seed = self.seeds.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        Box::pin(async move {
            if connections.fetch_add(1, Ordering::AcqRel) >= max {
                connections.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!(peer = %accepted.peer, "connection limit reached");
                let mut ws = accepted.connection;
                let _ = ws.close().await;
                return;
            }
            let _gauge = metrics.connection_opened();
            run_connection(accepted, engine, runtime, mux, seed).await;
            connections.fetch_sub(1, Ordering::AcqRel);
        })
    }

    fn render_metrics(&self) -> String {
        self.metrics.render()
    }
}

/// A running server.
pub struct RunningServer {
    local_addr: SocketAddr,
    engine: EngineHandle,
    readiness: Readiness,
    stop: Option<futures_channel::oneshot::Sender<()>>,
    accept_done: Option<crate::runtime::JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

impl RunningServer {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The engine (for in-process clients).
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops accepting, closes every stream and connection, finishes in-flight commits and closes the
    /// stores.
    pub async fn shutdown(mut self) {
        self.readiness.set_draining();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(accept) = self.accept_done.take() {
            let _ = accept.await;
        }
        self.engine.shutdown().await;
    }
}

/// Starts a server on `runtime`.
pub async fn start(runtime: Arc<dyn Runtime>, config: ServerConfig) -> io::Result<RunningServer> {
    let metrics = Arc::new(Metrics::new());
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64);
    let engine = spawn_engine(
        runtime.clone(),
        EngineTaskConfig { engine: config.engine, stores: config.stores, metrics: metrics.clone(), seed },
    );
    let listener = runtime.bind(config.listen)?;
    let local_addr = listener.local_addr()?;
    let readiness = Readiness::new();
    let handler = Arc::new(Handler {
        engine: engine.clone(),
        runtime: runtime.clone(),
        mux: config.mux,
        metrics: metrics.clone(),
        connections: Arc::new(AtomicUsize::new(0)),
        max_connections: config.max_connections,
        seeds: AtomicU64::new(seed ^ 0x5eed),
    });
    let front = HttpFront::new(runtime.clone(), config.verifier, handler, readiness.clone(), config.http);
    let (stop, stopped) = futures_channel::oneshot::channel::<()>();
    let accept_done = runtime.spawn(async move {
        front
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await;
    });
    readiness.set_ready();
    tracing::info!(%local_addr, "streamkit server listening");
    Ok(RunningServer {
        local_addr,
        engine,
        readiness,
        stop: Some(stop),
        accept_done: Some(accept_done),
        metrics,
    })
}
