//! End-to-end suites for streamkit: the harness of the parity suite (`tests/parity.rs`).
//!
//! Like the Go suite's `configurations()`, every scenario runs against a real server (embedded redb
//! store in a temporary directory, random loopback port, HS256 JWT authentication) and a real client,
//! in several [`Config`]urations: the in-process transport, WebSocket with JSON and WebSocket with CBOR,
//! on tokio, smol and (deprecated) async-std.
//!
//! * [`run`] builds the runtime, starts the server and the client, runs one scenario and shuts down;
//! * [`Env`] is what a scenario gets: the client, the store id, more clients, the metrics, a restart;
//! * [`raw`] speaks WebSocket by hand, for hostile input;
//! * [`process`] runs the `streamkit serve` command line as a child process (kill -9 durability).
//!
//! Sizes follow the Go suite: `STREAMKIT_TEST_SMALL=1` shrinks record counts (Go's `-short`), and
//! `STREAMKIT_TEST_RECORDS` overrides the per-segment count of the consumer data set.

pub mod process;
pub mod raw;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use futures_util::StreamExt;
use streamkit::auth::{JwtVerifier, TokenClaims, TokenSigner};
use streamkit::client::{Client, ClientOptions, Error, ItemStream, static_token};
use streamkit::core::wire::Codec;
use streamkit::runtime::{Runtime, RuntimeExt};
use streamkit::server::{Durability, RunningServer, ServerConfig, start};
use tempfile::TempDir;
use uuid::Uuid;

/// The HS256 secret of every test server (the Go suite's `top-secret`).
pub const SECRET: &[u8] = b"top-secret";

/// How long one step of a scenario may take before the test fails (a hang must fail, not stall).
pub const STEP: Duration = Duration::from_secs(30);

/// How long a whole scenario may take.
pub const SCENARIO: Duration = Duration::from_secs(180);

/// The async runtime a configuration runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    /// tokio, multi-threaded with two workers.
    Tokio,
    /// smol's global executor.
    Smol,
    /// async-std (deprecated upstream; kept as a runtime feature).
    AsyncStd,
}

/// How the client reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The server's engine in the same process: no socket, no encoding (Go's `inproc`).
    InProcess,
    /// WebSocket, JSON text frames (what Go peers speak; Go's `pebble` configuration).
    Json,
    /// WebSocket, CBOR binary frames (subprotocol `streamkit.v1.cbor`).
    Cbor,
}

impl Transport {
    /// Whether the client talks to the server over a socket.
    pub fn is_socket(self) -> bool {
        self != Transport::InProcess
    }

    /// The codec of a socket transport.
    pub fn codec(self) -> Codec {
        if self == Transport::Cbor { Codec::Cbor } else { Codec::Json }
    }
}

/// One configuration of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The runtime of the server and the client.
    pub runtime: RuntimeKind,
    /// The client's transport.
    pub transport: Transport,
}

impl Config {
    /// tokio, in-process.
    pub const TOKIO_INPROC: Config = Config { runtime: RuntimeKind::Tokio, transport: Transport::InProcess };
    /// tokio, WebSocket JSON.
    pub const TOKIO_JSON: Config = Config { runtime: RuntimeKind::Tokio, transport: Transport::Json };
    /// tokio, WebSocket CBOR.
    pub const TOKIO_CBOR: Config = Config { runtime: RuntimeKind::Tokio, transport: Transport::Cbor };
    /// smol, WebSocket JSON.
    pub const SMOL_JSON: Config = Config { runtime: RuntimeKind::Smol, transport: Transport::Json };
    /// smol, WebSocket CBOR.
    pub const SMOL_CBOR: Config = Config { runtime: RuntimeKind::Smol, transport: Transport::Cbor };
    /// async-std, WebSocket JSON.
    pub const ASYNC_STD_JSON: Config = Config { runtime: RuntimeKind::AsyncStd, transport: Transport::Json };
    /// async-std, WebSocket CBOR.
    pub const ASYNC_STD_CBOR: Config = Config { runtime: RuntimeKind::AsyncStd, transport: Transport::Cbor };
}

/// Every configuration (the Go suite's `configurations()`, with runtimes and codecs as extra axes).
pub fn configurations() -> [Config; 7] {
    [
        Config::TOKIO_INPROC,
        Config::TOKIO_JSON,
        Config::TOKIO_CBOR,
        Config::SMOL_JSON,
        Config::SMOL_CBOR,
        Config::ASYNC_STD_JSON,
        Config::ASYNC_STD_CBOR,
    ]
}

// -------------------------------------------------------------------------------------------------
// sizes

/// Whether `STREAMKIT_TEST_SMALL` asks for the small data sets (Go's `-short`).
pub fn small() -> bool {
    std::env::var("STREAMKIT_TEST_SMALL").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Records per segment of the consumer data set (Go `setupConsumerData`): 253, or 50 when small;
/// `STREAMKIT_TEST_RECORDS` overrides both.
pub fn consumer_records() -> u64 {
    std::env::var("STREAMKIT_TEST_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| if small() { 50 } else { 253 })
}

/// Records per segment of the high-volume scenario: in-process 4000, WebSocket 3000; 250 when small.
pub fn high_volume_records(transport: Transport) -> u64 {
    match (small(), transport) {
        (true, _) => 250,
        (false, Transport::InProcess) => 4000,
        (false, _) => 3000,
    }
}

// -------------------------------------------------------------------------------------------------
// tokens and servers

/// A token for `scopes`, valid for a minute (the Go suite's TTL).
pub fn token(scopes: &[&str]) -> String {
    TokenSigner::hs256(SECRET)
        .expect("non-empty secret")
        .sign(&TokenClaims::new(scopes.iter().copied(), Duration::from_secs(60)))
        .expect("token signs")
}

/// A token for every store (`streamkit::*`).
pub fn admin_token() -> String {
    token(&["streamkit::*"])
}

/// The verifier of [`SECRET`].
pub fn verifier() -> JwtVerifier {
    JwtVerifier::hs256(SECRET).expect("non-empty secret")
}

/// The server configuration of the suite: embedded (redb) stores under `data`, durable (fsync).
pub fn server_config(listen: SocketAddr, data: &Path) -> ServerConfig {
    let mut config = ServerConfig::embedded(listen, verifier(), data);
    config.durability = Durability::Fsync;
    config.shutdown_grace = Duration::from_millis(500);
    config
}

/// A loopback address with a port the system picks.
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

// -------------------------------------------------------------------------------------------------
// the environment of a scenario

struct EnvInner {
    config: Config,
    runtime: Arc<dyn Runtime>,
    data: TempDir,
    addr: SocketAddr,
    server: Mutex<Option<RunningServer>>,
    client: Client,
    store: Uuid,
    clients: Mutex<Vec<Client>>,
    adjust: Adjust,
}

/// Changes a scenario makes to the server configuration (applied again on restart).
type Adjust = Box<dyn Fn(&mut ServerConfig) + Send + Sync>;

/// What a scenario gets: a running server, a client of it over the configured transport, and a fresh
/// store id. Cheap to clone.
#[derive(Clone)]
pub struct Env {
    inner: Arc<EnvInner>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env").field("config", &self.inner.config).field("addr", &self.inner.addr).finish()
    }
}

impl Env {
    /// Starts a server (temporary data directory, random port) and connects a client.
    pub async fn start(runtime: Arc<dyn Runtime>, config: Config) -> Env {
        Self::start_with(runtime, config, |_| {}).await
    }

    /// [`start`](Self::start), adjusting the server configuration first.
    pub async fn start_with(
        runtime: Arc<dyn Runtime>,
        config: Config,
        adjust: impl Fn(&mut ServerConfig) + Send + Sync + 'static,
    ) -> Env {
        let data = tempfile::tempdir().expect("temporary directory");
        let mut server_config = server_config(any_port(), data.path());
        adjust(&mut server_config);
        let server = start(runtime.clone(), server_config).await.expect("server starts");
        let addr = server.local_addr();
        let client = connect(&runtime, config.transport, &server, ClientOptions::default()).await;
        Env {
            inner: Arc::new(EnvInner {
                config,
                runtime,
                data,
                addr,
                server: Mutex::new(Some(server)),
                client,
                store: Uuid::new_v4(),
                clients: Mutex::new(Vec::new()),
                adjust: Box::new(adjust),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> Config {
        self.inner.config
    }

    /// The client's transport.
    pub fn transport(&self) -> Transport {
        self.inner.config.transport
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.inner.runtime
    }

    /// The client connected at start.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// A fresh store id for this scenario.
    pub fn store(&self) -> Uuid {
        self.inner.store
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The server's `ws://` base URL.
    pub fn url(&self) -> String {
        format!("ws://{}", self.inner.addr)
    }

    /// The data directory of the server's stores.
    pub fn data_dir(&self) -> &Path {
        self.inner.data.path()
    }

    /// Another client over the configured transport (its own connection), closed with the scenario.
    pub async fn new_client(&self) -> Client {
        self.new_client_with(ClientOptions::default()).await
    }

    /// [`new_client`](Self::new_client) with options (the codec is the configuration's).
    pub async fn new_client_with(&self, options: ClientOptions) -> Client {
        self.new_client_via(self.transport(), options).await
    }

    /// Another client over `transport`.
    pub async fn new_client_via(&self, transport: Transport, options: ClientOptions) -> Client {
        let engine = {
            let server = self.inner.server.lock().unwrap();
            server.as_ref().expect("server running").engine().clone()
        };
        let client = match transport {
            Transport::InProcess => {
                Client::in_process_with(self.inner.runtime.clone(), &engine, options).await
            }
            _ => {
                Client::connect(
                    self.inner.runtime.clone(),
                    self.url(),
                    static_token(admin_token()),
                    options.with_codec(transport.codec()),
                )
                .await
            }
        }
        .expect("client connects");
        self.inner.clients.lock().unwrap().push(client.clone());
        client
    }

    /// The server's metrics text (what `GET /metrics` renders).
    pub fn metrics(&self) -> String {
        let server = self.inner.server.lock().unwrap();
        server.as_ref().expect("server running").metrics().render()
    }

    /// The value of the metric line starting with `name` (name and labels); fails the test if absent.
    pub fn metric(&self, name: &str) -> f64 {
        metric(&self.metrics(), name).unwrap_or_else(|| panic!("no metric {name}"))
    }

    /// Stops the server gracefully and starts a new one on the same address and data directory.
    /// Socket clients redial on their next operation.
    pub async fn restart(&self) {
        self.stop_server().await;
        // The port was just released; binding it again is allowed (SO_REUSEADDR), but retry briefly in
        // case the old listener is still being torn down.
        let mut attempts = 0;
        let server = loop {
            let mut config = server_config(self.inner.addr, self.inner.data.path());
            (self.inner.adjust)(&mut config);
            match start(self.inner.runtime.clone(), config).await {
                Ok(server) => break server,
                Err(error) if attempts < 50 => {
                    attempts += 1;
                    eprintln!("restart on {} failed ({error}); retrying", self.inner.addr);
                    self.inner.runtime.sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("server restart on {}: {error}", self.inner.addr),
            }
        };
        *self.inner.server.lock().unwrap() = Some(server);
    }

    /// Stops the server gracefully (the scenario may start it again with [`restart`](Self::restart)).
    pub async fn stop_server(&self) {
        let server = self.inner.server.lock().unwrap().take();
        if let Some(server) = server {
            server.shutdown().await;
        }
    }

    /// Closes every client and stops the server.
    pub async fn shutdown(&self) {
        let clients: Vec<Client> = std::mem::take(&mut *self.inner.clients.lock().unwrap());
        for client in clients {
            client.close().await;
        }
        self.inner.client.close().await;
        self.stop_server().await;
    }

    /// Awaits `future` for at most [`STEP`], failing the test with `what` otherwise.
    pub async fn step<F: Future>(&self, what: &str, future: F) -> F::Output {
        step(&self.inner.runtime, what, future).await
    }

    /// Sleeps.
    pub async fn sleep(&self, duration: Duration) {
        self.inner.runtime.sleep(duration).await;
    }

    /// Polls `condition` every 10 ms until it holds, for at most [`STEP`].
    pub async fn eventually(&self, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + STEP;
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            self.sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn connect(
    runtime: &Arc<dyn Runtime>,
    transport: Transport,
    server: &RunningServer,
    options: ClientOptions,
) -> Client {
    match transport {
        Transport::InProcess => Client::in_process_with(runtime.clone(), server.engine(), options)
            .await
            .expect("in-process client"),
        _ => Client::connect(
            runtime.clone(),
            format!("ws://{}", server.local_addr()),
            static_token(admin_token()),
            options.with_codec(transport.codec()),
        )
        .await
        .expect("client connects"),
    }
}

/// The value of the metric line starting with `prefix` (name and labels) in `/metrics` text.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(prefix) && line[prefix.len()..].starts_with(' '))
        .and_then(|line| line[prefix.len()..].trim().parse().ok())
}

/// Awaits `future` for at most [`STEP`], failing the test with `what` otherwise.
pub async fn step<F: Future>(runtime: &Arc<dyn Runtime>, what: &str, future: F) -> F::Output {
    match runtime.timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Collects a stream to its end: the items, and the error it ended with, if any.
pub async fn collect<T>(runtime: &Arc<dyn Runtime>, mut stream: ItemStream<T>) -> (Vec<T>, Option<Error>) {
    step(runtime, "a stream to end", async {
        let mut items = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(item) => items.push(item),
                Err(error) => return (items, Some(error)),
            }
        }
        (items, None)
    })
    .await
}

/// Collects a stream that must end cleanly.
pub async fn collect_ok<T>(runtime: &Arc<dyn Runtime>, stream: ItemStream<T>) -> Vec<T> {
    let (items, error) = collect(runtime, stream).await;
    if let Some(error) = error {
        panic!("stream failed after {} items: {error} ({:?})", items.len(), error.kind());
    }
    items
}

// -------------------------------------------------------------------------------------------------
// panics

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts, from now on, every panic on a thread that is not a test's own thread: the runtimes' worker
/// threads, where server and client tasks run under `catch_unwind`, so that a panicking task would
/// otherwise go unnoticed by a scenario that still passes. (The default hook still prints it.)
///
/// A test's own failed assertions are not counted: libtest runs each test on a thread named after it
/// (`parity::group::config::scenario`) or on `main`, and counting those would let one failure fail
/// every test that overlaps it in time, and those the next ones.
pub fn count_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("");
            if !name.contains("::") && name != "main" {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

/// Panics of runtime threads counted so far (see [`count_panics`]). Tests run in parallel, so a task
/// of one test that panics also shows up in the count of the test running next to it.
pub fn panics() -> usize {
    PANICS.load(Ordering::SeqCst)
}

// -------------------------------------------------------------------------------------------------
// running a scenario

/// Runs `future` to completion on a fresh runtime of `kind`, handing it the runtime.
pub fn block_on<F, Fut>(kind: RuntimeKind, case: F)
where
    F: FnOnce(Arc<dyn Runtime>) -> Fut,
    Fut: Future<Output = ()>,
{
    match kind {
        RuntimeKind::Tokio => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            let handle = runtime.handle().clone();
            runtime.block_on(case(Arc::new(streamkit::runtime::TokioRuntime::new(handle))));
        }
        RuntimeKind::Smol => smol::block_on(case(Arc::new(streamkit::runtime::SmolRuntime::new()))),
        #[allow(deprecated)]
        RuntimeKind::AsyncStd => {
            async_std::task::block_on(case(Arc::new(streamkit::runtime::AsyncStdRuntime::new())))
        }
    }
}

/// Runs one scenario in `config`: a runtime, a server, a client; then closes the clients and stops the
/// server. The scenario fails if it takes longer than [`SCENARIO`].
pub fn run<F, Fut>(config: Config, scenario: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = ()>,
{
    run_with(config, |_| {}, scenario);
}

/// [`run`] with a server configuration adjusted by `adjust` (at start and on every restart).
pub fn run_with<F, Fut>(
    config: Config,
    adjust: impl Fn(&mut ServerConfig) + Send + Sync + 'static,
    scenario: F,
) where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = ()>,
{
    count_panics();
    let panics_before = panics();
    let started = std::time::Instant::now();
    block_on(config.runtime, |runtime| async move {
        let env = Env::start_with(runtime.clone(), config, adjust).await;
        if runtime.timeout(SCENARIO, scenario(env.clone())).await.is_err() {
            panic!("scenario timed out after {SCENARIO:?} in {config:?}");
        }
        env.shutdown().await;
    });
    let name = std::thread::current().name().unwrap_or("scenario").to_owned();
    eprintln!("[parity] {name}: {:.2} s", started.elapsed().as_secs_f64());
    assert_eq!(panics(), panics_before, "a task panicked while {name} ran (see the output above)");
}
