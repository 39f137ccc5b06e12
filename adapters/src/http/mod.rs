//! The HTTP front: one listener for the WebSocket endpoint and the operational endpoints.
//!
//! | route | answer |
//! |---|---|
//! | `GET /streamz` | WebSocket upgrade, authenticated by `Authorization: Bearer <jwt>` (spec §2.1–2.2) |
//! | `GET /healthz` | 200 `ok` while the listener serves |
//! | `GET /readyz` | 200 when [`Readiness`] is ready, 503 while starting or draining |
//! | `GET /metrics` | the handler's OpenMetrics text ([`ConnectionHandler::render_metrics`]) |
//! | other paths | 404; a known path with another method: 405 |
//!
//! The request head is read here with `httparse` (at most [`HttpConfig::max_head_bytes`], within
//! [`HttpConfig::handshake_timeout`]), so plain routes need no HTTP framework and the upgrade is done on
//! the same connection: the token is verified **before** anything is switched, and a refused token
//! gets a real `401` with body `Unauthorized\n` (Go's answer), never an upgraded-then-closed socket.
//! The 101 answer is written here (`Sec-WebSocket-Accept` from tungstenite's `derive_accept_key`) and
//! the socket, with any bytes already read past the head, becomes a tungstenite WebSocket
//! (`from_partially_read`). Reading the head ourselves rather than handing the socket to
//! `accept_hdr_async` avoids parsing it twice and lets every route share one listener.
//!
//! Subprotocol: a client offering `streamkit.v1.cbor` gets it back and speaks [`Codec::Cbor`] in binary
//! frames; any other client speaks [`Codec::Json`] in text frames (what Go clients do). `Origin` is
//! not checked: browsers are not streamkit clients and the bearer token is not ambient authority.
//!
//! Connection limit: the handler's [`ConnectionHandler::admit`] is asked for a place before the 101 is
//! written, so a client over the server's limit gets `503 Service Unavailable` (with `Retry-After`) and
//! can tell "busy" from "broken", instead of an upgrade closed at once.
//!
//! Abuse bounds: the head size and time limits above, and at most
//! [`HttpConfig::max_pending_handshakes`] connections still in the pre-upgrade phase (more are closed
//! at once), so a slowloris client holds at most a few KiB and one task per slot, never unbounded.

mod request;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use futures_util::AsyncWriteExt;
use streamkit_core::wire::{CBOR_SUBPROTOCOL, Codec};

use crate::auth::{AuthError, JwtVerifier, Principal};
use crate::runtime::{BoxFuture, BoxedStream, Listener, Runtime, RuntimeExt, until};
use crate::ws::{WsConnection, default_websocket_config, sanitize_config};
use request::{HeadError, RequestHead, read_head};

/// The WebSocket endpoint's path.
pub const STREAMZ_PATH: &str = "/streamz";

/// Settings of the HTTP front.
#[derive(Clone, Copy, Debug)]
pub struct HttpConfig {
    /// Largest accepted request head (request line and headers); larger heads get 431.
    pub max_head_bytes: usize,
    /// Time allowed from accept until the request is answered or upgraded; slower clients are dropped.
    pub handshake_timeout: Duration,
    /// Connections allowed in the pre-upgrade phase at once; further ones are closed immediately.
    pub max_pending_handshakes: usize,
    /// Settings of upgraded connections (default [`default_websocket_config`]: 8 MiB frame cap).
    pub websocket: WebSocketConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_head_bytes: 16 * 1024,
            handshake_timeout: Duration::from_secs(10),
            max_pending_handshakes: 1024,
            websocket: default_websocket_config(),
        }
    }
}

/// Whether the server takes traffic, as `/readyz` reports it. Cheap to clone; clones share the state.
///
/// Starts as [`ReadinessState::Starting`]. New WebSocket upgrades are accepted only while
/// [`ReadinessState::Ready`]: a starting or draining server answers them 503, which clients retry.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicU8>);

/// The states of [`Readiness`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadinessState {
    /// Not serving yet.
    Starting,
    /// Serving.
    Ready,
    /// Shutting down: existing connections finish, new ones are refused.
    Draining,
}

impl Readiness {
    /// A readiness flag in the starting state.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current state.
    pub fn state(&self) -> ReadinessState {
        match self.0.load(Ordering::Acquire) {
            0 => ReadinessState::Starting,
            1 => ReadinessState::Ready,
            _ => ReadinessState::Draining,
        }
    }

    /// Sets the state.
    pub fn set(&self, state: ReadinessState) {
        let value = match state {
            ReadinessState::Starting => 0,
            ReadinessState::Ready => 1,
            ReadinessState::Draining => 2,
        };
        self.0.store(value, Ordering::Release);
    }

    /// Shorthand for `set(ReadinessState::Ready)`.
    pub fn set_ready(&self) {
        self.set(ReadinessState::Ready);
    }

    /// Shorthand for `set(ReadinessState::Draining)`.
    pub fn set_draining(&self) {
        self.set(ReadinessState::Draining);
    }
}

/// An upgraded, authenticated WebSocket connection, handed to the server.
#[derive(Debug)]
pub struct AcceptedWebSocket {
    /// The connection (split it for a reader task and a writer task).
    pub connection: WsConnection,
    /// Who connected, and which stores the token allows.
    pub principal: Principal,
    /// The negotiated codec (also `connection.codec()`).
    pub codec: Codec,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The connection's place under the handler's connection limit ([`ConnectionHandler::admit`]):
    /// keep it for as long as the connection is served.
    pub permit: ConnectionPermit,
}

/// A place under a connection limit, released when dropped (see [`ConnectionHandler::admit`]).
pub struct ConnectionPermit(Option<Box<dyn Send + Sync>>);

impl ConnectionPermit {
    /// A permit that holds `guard` (whose `Drop` frees the place) until the permit is dropped.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Self(Some(Box::new(guard)))
    }

    /// A permit of a handler without a limit.
    pub fn unlimited() -> Self {
        Self(None)
    }
}

impl fmt::Debug for ConnectionPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "ConnectionPermit" } else { "ConnectionPermit(unlimited)" })
    }
}

/// Why a connection was answered with an error or dropped before the upgrade (for logs and metrics).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// 401: the token was missing or refused.
    #[error("unauthorized: {0}")]
    Unauthorized(AuthError),
    /// 503: the server is not ready (starting or draining).
    #[error("not ready")]
    NotReady,
    /// 400: not a valid WebSocket upgrade request, or not HTTP at all.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// 426: a WebSocket version other than 13.
    #[error("unsupported websocket version")]
    UnsupportedVersion,
    /// 404 or 405.
    #[error("no such route")]
    NotFound,
    /// 431: the request head is over the size or header-count limit.
    #[error("request head too large")]
    HeadTooLarge,
    /// Dropped: the request was not complete within the handshake timeout.
    #[error("handshake timed out")]
    Timeout,
    /// Dropped: too many connections were already in the pre-upgrade phase.
    #[error("too many pending handshakes")]
    TooManyPending,
    /// 503: the handler's connection limit is reached ([`ConnectionHandler::admit`]).
    #[error("connection limit reached")]
    ConnectionLimit,
}

/// What the server plugs into the front.
pub trait ConnectionHandler: Send + Sync + 'static {
    /// Runs an accepted connection. The returned future runs on the connection's own task, after the
    /// handshake slot is released; it may run the connection to its end or spawn tasks and return.
    fn on_websocket(&self, accepted: AcceptedWebSocket) -> BoxFuture<'static, ()>;

    /// Reserves a place for one more WebSocket connection, after the token and the upgrade request
    /// were accepted and before the 101 is written; `None` refuses the upgrade with 503 (reported to
    /// [`on_rejected`](Self::on_rejected) as [`Rejection::ConnectionLimit`]). The permit reaches
    /// [`on_websocket`](Self::on_websocket) in [`AcceptedWebSocket::permit`]. The default admits every
    /// connection.
    fn admit(&self) -> Option<ConnectionPermit> {
        Some(ConnectionPermit::unlimited())
    }

    /// The OpenMetrics text for `/metrics`, e.g. [`Metrics::render`](crate::metrics::Metrics::render).
    fn render_metrics(&self) -> String;

    /// Called for each refused or dropped connection; the default ignores it.
    fn on_rejected(&self, peer: SocketAddr, rejection: &Rejection) {
        let _ = (peer, rejection);
    }
}

/// The HTTP front (see the module docs). Cheap to clone; clones share state.
#[derive(Clone)]
pub struct HttpFront {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Arc<dyn Runtime>,
    verifier: JwtVerifier,
    handler: Arc<dyn ConnectionHandler>,
    readiness: Readiness,
    config: HttpConfig,
    pending: AtomicUsize,
}

impl fmt::Debug for HttpFront {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpFront")
            .field("runtime", &self.inner.runtime.name())
            .field("verifier", &self.inner.verifier)
            .field("readiness", &self.inner.readiness.state())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl HttpFront {
    /// A front that authenticates with `verifier` and hands connections to `handler`.
    pub fn new(
        runtime: Arc<dyn Runtime>,
        verifier: JwtVerifier,
        handler: Arc<dyn ConnectionHandler>,
        readiness: Readiness,
        mut config: HttpConfig,
    ) -> Self {
        config.websocket = sanitize_config(config.websocket);
        let inner = Inner { runtime, verifier, handler, readiness, config, pending: AtomicUsize::new(0) };
        Self { inner: Arc::new(inner) }
    }

    /// The readiness flag `/readyz` reports.
    pub fn readiness(&self) -> &Readiness {
        &self.inner.readiness
    }

    /// Connections currently in the pre-upgrade phase (reading the request or writing the answer).
    pub fn pending_handshakes(&self) -> usize {
        self.inner.pending.load(Ordering::Acquire)
    }

    /// Accepts connections until `shutdown` completes, each served on its own task. Connections
    /// already accepted keep running after this returns.
    pub async fn serve<F: Future<Output = ()>>(&self, listener: Box<dyn Listener>, shutdown: F) {
        until(self.accept_loop(&*listener), shutdown).await;
    }

    async fn accept_loop(&self, listener: &dyn Listener) {
        const MAX_BACKOFF: Duration = Duration::from_secs(1);
        let mut backoff = Duration::from_millis(5);
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    let front = self.clone();
                    self.inner
                        .runtime
                        .spawn(async move { front.serve_connection(stream, peer).await })
                        .detach();
                }
                // The failed connection is gone; the listener is fine.
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(error) => {
                    // Typically out of file descriptors: spinning would not free any, waiting may.
                    tracing::warn!(%error, "accept failed; backing off for {backoff:?}");
                    self.inner.runtime.sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Serves one accepted connection (also usable for streams accepted elsewhere, e.g. after a TLS
    /// handshake): answers a plain route, or upgrades and runs the handler until it returns.
    pub async fn serve_connection(&self, mut stream: BoxedStream, peer: SocketAddr) {
        let inner = &self.inner;
        let Some(slot) = PendingSlot::acquire(&inner.pending, inner.config.max_pending_handshakes) else {
            inner.handler.on_rejected(peer, &Rejection::TooManyPending);
            return;
        };
        let negotiation =
            inner.runtime.timeout(inner.config.handshake_timeout, self.negotiate(&mut stream, peer));
        let upgrade = match negotiation.await {
            Ok(Some(upgrade)) => upgrade,
            Ok(None) => return,
            Err(_) => {
                inner.handler.on_rejected(peer, &Rejection::Timeout);
                return;
            }
        };
        drop(slot);
        let Upgrade { principal, codec, leftover, permit } = upgrade;
        let websocket = WebSocketStream::from_partially_read(
            stream,
            leftover,
            Role::Server,
            Some(inner.config.websocket),
        )
        .await;
        let connection = WsConnection::new(websocket, codec);
        inner.handler.on_websocket(AcceptedWebSocket { connection, principal, codec, peer, permit }).await;
    }

    /// Reads the request and answers it; `Some` when the connection is to be upgraded (the 101 is
    /// already written).
    async fn negotiate(&self, stream: &mut BoxedStream, peer: SocketAddr) -> Option<Upgrade> {
        let inner = &self.inner;
        let (head, leftover) = match read_head(stream, inner.config.max_head_bytes).await {
            Ok(read) => read,
            Err(HeadError::Disconnected) => return None,
            Err(HeadError::Malformed) => {
                self.refuse(stream, peer, Rejection::BadRequest("malformed request")).await;
                return None;
            }
            Err(HeadError::TooLarge) => {
                self.refuse(stream, peer, Rejection::HeadTooLarge).await;
                return None;
            }
        };
        let route = Route::of(&head.path);
        if route == Route::Unknown {
            self.refuse(stream, peer, Rejection::NotFound).await;
            return None;
        }
        if head.method != "GET" {
            inner.handler.on_rejected(peer, &Rejection::NotFound);
            let response =
                Response::text(405, "Method Not Allowed", "Method Not Allowed\n").header("Allow", "GET");
            response.write(stream).await;
            return None;
        }
        let response = match route {
            Route::Streamz => match self.upgrade(&head) {
                Ok((upgrade, response)) => {
                    // The handshake succeeded only if the 101 actually went out.
                    return response.write(stream).await.then_some(Upgrade { leftover, ..upgrade });
                }
                Err(rejection) => {
                    inner.handler.on_rejected(peer, &rejection);
                    Response::rejection(&rejection)
                }
            },
            Route::Healthz => Response::text(200, "OK", "ok"),
            Route::Readyz => match inner.readiness.state() {
                ReadinessState::Ready => Response::text(200, "OK", "ready"),
                ReadinessState::Starting => Response::text(503, "Service Unavailable", "starting"),
                ReadinessState::Draining => Response::text(503, "Service Unavailable", "draining"),
            },
            Route::Metrics => Response::new(
                200,
                "OK",
                crate::metrics::CONTENT_TYPE,
                inner.handler.render_metrics().into_bytes(),
            ),
            Route::Unknown => Response::rejection(&Rejection::NotFound),
        };
        response.write(stream).await;
        None
    }

    async fn refuse(&self, stream: &mut BoxedStream, peer: SocketAddr, rejection: Rejection) {
        self.inner.handler.on_rejected(peer, &rejection);
        Response::rejection(&rejection).write(stream).await;
    }

    /// Checks an upgrade request: readiness, then the token, then the WebSocket headers.
    fn upgrade(&self, head: &RequestHead) -> Result<(Upgrade, Response), Rejection> {
        if self.inner.readiness.state() != ReadinessState::Ready {
            return Err(Rejection::NotReady);
        }
        // More than one Authorization header is ambiguous: treated as none.
        let principal = self
            .inner
            .verifier
            .verify_authorization(head.single_header("authorization"))
            .map_err(Rejection::Unauthorized)?;
        if head.minor_version != 1 {
            return Err(Rejection::BadRequest("websocket upgrade needs HTTP/1.1"));
        }
        if !head.has_token("upgrade", "websocket") || !head.has_token("connection", "upgrade") {
            return Err(Rejection::BadRequest("not a websocket upgrade"));
        }
        if head.single_header("sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
            return Err(Rejection::UnsupportedVersion);
        }
        let key = head
            .single_header("sec-websocket-key")
            .map(<[u8]>::trim_ascii)
            .filter(|key| is_websocket_key(key))
            .ok_or(Rejection::BadRequest("missing or invalid Sec-WebSocket-Key"))?;
        let codec = if head.has_token("sec-websocket-protocol", CBOR_SUBPROTOCOL) {
            Codec::Cbor
        } else {
            Codec::Json
        };

        let mut response = Response::empty(101, "Switching Protocols")
            .header("Upgrade", "websocket")
            .header("Connection", "Upgrade")
            .header("Sec-WebSocket-Accept", &derive_accept_key(key));
        if codec == Codec::Cbor {
            response = response.header("Sec-WebSocket-Protocol", CBOR_SUBPROTOCOL);
        }
        // Last, so that only a request that would otherwise be upgraded takes a place.
        let permit = self.inner.handler.admit().ok_or(Rejection::ConnectionLimit)?;
        Ok((Upgrade { principal, codec, leftover: Vec::new(), permit }, response))
    }
}

/// A key is the base64 of 16 bytes (RFC 6455 §4.1): 24 characters ending in `==`.
fn is_websocket_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22].iter().all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Streamz,
    Healthz,
    Readyz,
    Metrics,
    Unknown,
}

impl Route {
    fn of(path: &str) -> Self {
        match path {
            STREAMZ_PATH => Route::Streamz,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            _ => Route::Unknown,
        }
    }
}

struct Upgrade {
    principal: Principal,
    codec: Codec,
    leftover: Vec<u8>,
    permit: ConnectionPermit,
}

/// Counts a connection in the pre-upgrade phase while alive.
struct PendingSlot<'a>(&'a AtomicUsize);

impl<'a> PendingSlot<'a> {
    fn acquire(pending: &'a AtomicUsize, max: usize) -> Option<Self> {
        pending.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Self(pending))
    }
}

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A complete HTTP/1.1 response; every non-upgrade response closes the connection.
struct Response {
    head: String,
    body: Vec<u8>,
    upgrade: bool,
}

impl Response {
    fn empty(status: u16, reason: &str) -> Self {
        Self { head: format!("HTTP/1.1 {status} {reason}\r\n"), body: Vec::new(), upgrade: status == 101 }
    }

    fn new(status: u16, reason: &str, content_type: &str, body: Vec<u8>) -> Self {
        Self::empty(status, reason).header("Content-Type", content_type).with_body(body)
    }

    /// A plain-text answer, shaped like Go's `http.Error`.
    fn text(status: u16, reason: &str, body: &str) -> Self {
        Self::new(status, reason, "text/plain; charset=utf-8", body.as_bytes().to_vec())
            .header("X-Content-Type-Options", "nosniff")
    }

    fn rejection(rejection: &Rejection) -> Self {
        match rejection {
            Rejection::Unauthorized(_) => Self::text(401, "Unauthorized", "Unauthorized\n"),
            Rejection::NotReady => Self::text(503, "Service Unavailable", "Service Unavailable\n"),
            Rejection::BadRequest(_) => Self::text(400, "Bad Request", "Bad Request\n"),
            Rejection::UnsupportedVersion => Self::text(426, "Upgrade Required", "Upgrade Required\n")
                .header("Sec-WebSocket-Version", "13"),
            Rejection::NotFound => Self::text(404, "Not Found", "404 page not found\n"),
            Rejection::HeadTooLarge => {
                Self::text(431, "Request Header Fields Too Large", "Request Header Fields Too Large\n")
            }
            Rejection::Timeout | Rejection::TooManyPending => {
                Self::text(503, "Service Unavailable", "Service Unavailable\n")
            }
            Rejection::ConnectionLimit => {
                Self::text(503, "Service Unavailable", "Service Unavailable\n").header("Retry-After", "1")
            }
        }
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.head.push_str(name);
        self.head.push_str(": ");
        self.head.push_str(value);
        self.head.push_str("\r\n");
        self
    }

    fn with_body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    /// Writes the response; plain responses also close the write side. `false` if the peer is gone.
    async fn write(self, stream: &mut BoxedStream) -> bool {
        let mut bytes = self.head.into_bytes();
        if !self.upgrade {
            bytes.extend_from_slice(
                format!("Content-Length: {}\r\nConnection: close\r\n", self.body.len()).as_bytes(),
            );
        }
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(&self.body);
        let written = stream.write_all(&bytes).await.is_ok() && stream.flush().await.is_ok();
        if written && !self.upgrade {
            let _ = stream.close().await;
        }
        written
    }
}
