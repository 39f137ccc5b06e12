//! The HTTP front: one listener for the WebSocket endpoint and the operational endpoints.
//!
//! | route | answer |
//! |---|---|
//! | `GET /streamz` | WebSocket upgrade, authenticated by `Authorization: Bearer <jwt>` (PROTOCOL.md §2.1–2.2) |
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
//! the socket, with any bytes already read past the head, becomes a [`WsConnection::accepted`]:
//! the server's own frame reader (no read buffer while idle) and tungstenite's writer. Reading the
//! head ourselves rather than handing the socket to
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
//! Abuse bounds, all on connections still in the pre-upgrade phase (not yet authenticated, so nothing
//! tells tenants apart but their address):
//!
//! * at most [`HttpConfig::max_pending_handshakes`] of them at once, and at most
//!   [`HttpConfig::max_pending_handshakes_per_ip`] from one source address (an IPv4 address or an
//!   IPv6 /64): one client opening idle sockets fills its own share, not the server's, so `/healthz`
//!   and other clients still get in. A connection over either cap is closed at once, reported to
//!   [`ConnectionHandler::on_rejected`] and not answered;
//! * the complete request head within [`HttpConfig::header_timeout`] (5 s) and the whole
//!   negotiation within [`HttpConfig::handshake_timeout`] (10 s), so a slot held by a silent or
//!   trickling client is freed soon;
//! * at most [`HttpConfig::max_head_bytes`] of head. A socket that sent nothing costs its task (a
//!   few KiB, fixed): the read buffer is allocated when the first bytes arrive.
//!
//! An application with an HTTP stack of its own serves `/streamz` through the same checks with
//! [`HttpFront::accept_upgrade`] and [`HttpFront::serve_upgraded`] (or the [`axum`] router, feature
//! `axum`); who may connect is the front's [`Authenticator`] either way.
//!
//! Behind a reverse proxy every connection comes from the proxy's address: raise
//! `max_pending_handshakes_per_ip` or set it to 0 (no per-address cap), and let the proxy limit
//! per client.

#[cfg(feature = "axum")]
pub mod axum;
mod embed;
mod request;

pub use embed::AcceptedUpgrade;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use futures_util::AsyncWriteExt;
use streamkit_proto::wire::{CBOR_SUBPROTOCOL, Codec};

use crate::auth::{AuthError, AuthRefusal, AuthRequest, Authenticator, Principal};
use crate::runtime::{BoxFuture, BoxedStream, Listener, Runtime, RuntimeExt, until};
use crate::ws::{WsConnection, default_websocket_config, sanitize_config};
pub(crate) use request::RequestHead;
use request::{HeadError, read_head};

/// The WebSocket endpoint's path.
pub const STREAMZ_PATH: &str = "/streamz";

/// Default [`HttpConfig::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`HttpConfig::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`HttpConfig::max_pending_handshakes`].
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 1024;
/// Default [`HttpConfig::max_pending_handshakes_per_ip`].
pub const DEFAULT_MAX_PENDING_HANDSHAKES_PER_IP: usize = 32;

/// Settings of the HTTP front.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Largest accepted request head (request line and headers); larger heads get 431.
    pub max_head_bytes: usize,
    /// Time allowed from accept until the complete request head has arrived (default
    /// [`DEFAULT_HEADER_TIMEOUT`]); slower clients are dropped ([`Rejection::HeaderTimeout`]).
    pub header_timeout: Duration,
    /// Time allowed from accept until the request is answered or upgraded (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]); slower clients are dropped ([`Rejection::Timeout`]).
    pub handshake_timeout: Duration,
    /// Connections allowed in the pre-upgrade phase at once (default
    /// [`DEFAULT_MAX_PENDING_HANDSHAKES`]); further ones are closed immediately
    /// ([`Rejection::TooManyPending`]).
    pub max_pending_handshakes: usize,
    /// Connections from one source allowed in the pre-upgrade phase at once (default
    /// [`DEFAULT_MAX_PENDING_HANDSHAKES_PER_IP`]; 0 = no per-source cap); further ones are closed
    /// immediately ([`Rejection::TooManyPendingFromIp`]). A source is an IPv4 address (an
    /// IPv4-mapped IPv6 address counts as IPv4) or an IPv6 /64, the block one host usually has.
    pub max_pending_handshakes_per_ip: usize,
    /// Settings of upgraded connections (default [`default_websocket_config`]: 8 MiB frame and
    /// message cap; the read buffer size is not used, see [`WsConnection::accepted`]).
    pub websocket: WebSocketConfig,
    /// Serve TLS (`wss://`, and `https://` for the probes and metrics) with this certificate: every
    /// connection starts with a TLS handshake, within the handshake deadline and the pending-handshake
    /// caps like the rest of the negotiation (default: none, plain `ws://`).
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::ServerTls>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_head_bytes: 16 * 1024,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
            max_pending_handshakes_per_ip: DEFAULT_MAX_PENDING_HANDSHAKES_PER_IP,
            websocket: default_websocket_config(),
            #[cfg(feature = "tls")]
            tls: None,
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
    /// 403: the authenticator refused credentials it recognised ([`AuthRefusal::Forbidden`]).
    #[error("forbidden: {0}")]
    Forbidden(AuthError),
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
    /// Dropped: the request head was not complete within [`HttpConfig::header_timeout`].
    #[error("request head timed out")]
    HeaderTimeout,
    /// Dropped: the request was not answered or upgraded within [`HttpConfig::handshake_timeout`].
    #[error("handshake timed out")]
    Timeout,
    /// Dropped: too many connections were already in the pre-upgrade phase.
    #[error("too many pending handshakes")]
    TooManyPending,
    /// Dropped: too many connections from the same source were already in the pre-upgrade phase
    /// ([`HttpConfig::max_pending_handshakes_per_ip`]).
    #[error("too many pending handshakes from one address")]
    TooManyPendingFromIp,
    /// 503: the handler's connection limit is reached ([`ConnectionHandler::admit`]).
    #[error("connection limit reached")]
    ConnectionLimit,
    /// Dropped: the TLS handshake failed (not TLS, an unknown CA, no client certificate).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
}

/// The HTTP answer to a [`Rejection`]: what the front itself writes, for an application that answers
/// on its own stack ([`HttpFront::accept_upgrade`]). Bodies are plain text, shaped like Go's
/// `http.Error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectionAnswer {
    /// The status code.
    pub status: u16,
    /// Its reason phrase.
    pub reason: &'static str,
    /// The `text/plain` body.
    pub body: &'static str,
    /// Headers beyond the content type (`Retry-After`, `Sec-WebSocket-Version`).
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Rejection {
    /// The answer this rejection gets. Rejections that are dropped rather than answered by the
    /// front's own listener (timeouts, pending-handshake caps, TLS failures) answer 503 here.
    pub fn answer(&self) -> RejectionAnswer {
        let (status, reason, body, headers) = match self {
            Rejection::Unauthorized(_) => (401, "Unauthorized", "Unauthorized\n", vec![]),
            Rejection::Forbidden(_) => (403, "Forbidden", "Forbidden\n", vec![]),
            Rejection::NotReady => (503, "Service Unavailable", "Service Unavailable\n", vec![]),
            Rejection::BadRequest(_) => (400, "Bad Request", "Bad Request\n", vec![]),
            Rejection::UnsupportedVersion => {
                (426, "Upgrade Required", "Upgrade Required\n", vec![("Sec-WebSocket-Version", "13")])
            }
            Rejection::NotFound => (404, "Not Found", "404 page not found\n", vec![]),
            Rejection::HeadTooLarge => {
                (431, "Request Header Fields Too Large", "Request Header Fields Too Large\n", vec![])
            }
            Rejection::HeaderTimeout
            | Rejection::Timeout
            | Rejection::TooManyPending
            | Rejection::TooManyPendingFromIp
            | Rejection::Tls(_) => (503, "Service Unavailable", "Service Unavailable\n", vec![]),
            Rejection::ConnectionLimit => {
                (503, "Service Unavailable", "Service Unavailable\n", vec![("Retry-After", "1")])
            }
        };
        RejectionAnswer { status, reason, body, headers }
    }
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
    authenticator: Arc<dyn Authenticator>,
    handler: Arc<dyn ConnectionHandler>,
    readiness: Readiness,
    config: HttpConfig,
    pending: PendingHandshakes,
}

impl fmt::Debug for HttpFront {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpFront")
            .field("runtime", &self.inner.runtime.name())
            .field("readiness", &self.inner.readiness.state())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl HttpFront {
    /// A front that authenticates with `authenticator` and hands connections to `handler`.
    pub fn new(
        runtime: Arc<dyn Runtime>,
        authenticator: Arc<dyn Authenticator>,
        handler: Arc<dyn ConnectionHandler>,
        readiness: Readiness,
        mut config: HttpConfig,
    ) -> Self {
        config.websocket = sanitize_config(config.websocket);
        let pending =
            PendingHandshakes::new(config.max_pending_handshakes, config.max_pending_handshakes_per_ip);
        let inner = Inner { runtime, authenticator, handler, readiness, config, pending };
        Self { inner: Arc::new(inner) }
    }

    /// The readiness flag `/readyz` reports.
    pub fn readiness(&self) -> &Readiness {
        &self.inner.readiness
    }

    /// Connections currently in the pre-upgrade phase (reading the request or writing the answer).
    pub fn pending_handshakes(&self) -> usize {
        self.inner.pending.total.load(Ordering::Acquire)
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
        let slot = match inner.pending.acquire(peer.ip()) {
            Ok(slot) => slot,
            Err(rejection) => {
                inner.handler.on_rejected(peer, &rejection);
                return;
            }
        };
        // `timeout` boxes the negotiation, whose state is much larger than what the connection keeps
        // afterwards: inline, it would stay part of this future, which lives as long as the connection.
        let mut negotiation = inner.runtime.timeout(inner.config.handshake_timeout, async {
            #[cfg(feature = "tls")]
            if let Some(tls) = &inner.config.tls {
                stream = match tls.accept(stream).await {
                    Ok(stream) => stream,
                    Err(error) => {
                        inner.handler.on_rejected(peer, &Rejection::Tls(error.to_string()));
                        return None;
                    }
                };
            }
            self.negotiate(&mut stream, peer).await.map(|upgrade| (stream, upgrade))
        });
        // Awaited by reference: on a timeout the socket (inside the negotiation) is closed only after
        // the rejection is recorded, so whoever sees the close also sees why.
        let (stream, upgrade) = match (&mut negotiation).await {
            Ok(Some(negotiated)) => negotiated,
            Ok(None) => return,
            Err(_) => {
                inner.handler.on_rejected(peer, &Rejection::Timeout);
                drop(negotiation);
                return;
            }
        };
        drop(negotiation);
        drop(slot);
        let Upgrade { principal, codec, leftover, permit, .. } = upgrade;
        let connection = WsConnection::accepted(stream, leftover, inner.config.websocket, codec).await;
        inner.handler.on_websocket(AcceptedWebSocket { connection, principal, codec, peer, permit }).await;
    }

    /// Reads the request and answers it; `Some` when the connection is to be upgraded (the 101 is
    /// already written).
    async fn negotiate(&self, stream: &mut BoxedStream, peer: SocketAddr) -> Option<Upgrade> {
        let inner = &self.inner;
        let reading = inner
            .runtime
            .timeout(inner.config.header_timeout, read_head(stream, inner.config.max_head_bytes));
        let Ok(read) = reading.await else {
            inner.handler.on_rejected(peer, &Rejection::HeaderTimeout);
            return None;
        };
        let (head, leftover) = match read {
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
                Ok(upgrade) => {
                    let mut response = Response::empty(101, "Switching Protocols");
                    for (name, value) in upgrade.response_headers() {
                        response = response.header(name, &value);
                    }
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

    /// Checks an upgrade request: readiness, then the token, then the WebSocket headers, and last
    /// takes a place under the connection limit.
    fn upgrade(&self, head: &RequestHead) -> Result<Upgrade, Rejection> {
        if self.inner.readiness.state() != ReadinessState::Ready {
            return Err(Rejection::NotReady);
        }
        // More than one Authorization header is ambiguous: `AuthRequest::header` reads it as none.
        let principal = self.inner.authenticator.authenticate(&AuthRequest::new(head)).map_err(
            |refusal| match refusal {
                AuthRefusal::Unauthorized(error) => Rejection::Unauthorized(error),
                AuthRefusal::Forbidden(error) => Rejection::Forbidden(error),
            },
        )?;
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
        let accept_key = derive_accept_key(key);
        // Last, so that only a request that would otherwise be upgraded takes a place.
        let permit = self.inner.handler.admit().ok_or(Rejection::ConnectionLimit)?;
        Ok(Upgrade { principal, codec, leftover: Vec::new(), permit, accept_key })
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
    /// `Sec-WebSocket-Accept` of the 101.
    accept_key: String,
}

impl Upgrade {
    /// The headers of the 101 answer.
    fn response_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("Upgrade", "websocket".to_owned()),
            ("Connection", "Upgrade".to_owned()),
            ("Sec-WebSocket-Accept", self.accept_key.clone()),
        ];
        if self.codec == Codec::Cbor {
            headers.push(("Sec-WebSocket-Protocol", CBOR_SUBPROTOCOL.to_owned()));
        }
        headers
    }
}

/// The connections in the pre-upgrade phase: how many in all, and how many from each source.
struct PendingHandshakes {
    total: AtomicUsize,
    max_total: usize,
    /// Only sources with at least one pending connection have an entry, so the map never holds more
    /// entries than there are pending connections (entries at zero are removed).
    by_source: Mutex<HashMap<IpAddr, usize>>,
    /// 0: no per-source cap (and no map upkeep).
    max_per_source: usize,
}

impl PendingHandshakes {
    fn new(max_total: usize, max_per_source: usize) -> Self {
        Self { total: AtomicUsize::new(0), max_total, by_source: Mutex::default(), max_per_source }
    }

    /// A place for a connection from `ip`, or why there is none.
    fn acquire(&self, ip: IpAddr) -> Result<PendingSlot<'_>, Rejection> {
        // The source's share first: a client over it must not take (even briefly) a place of the
        // shared total.
        let source = (self.max_per_source > 0).then(|| source_of(ip));
        if let Some(source) = source {
            let mut counts = self.counts();
            let count = counts.entry(source).or_insert(0);
            if *count >= self.max_per_source {
                return Err(Rejection::TooManyPendingFromIp);
            }
            *count += 1;
        }
        // From here on, dropping `slot` gives the source's place back.
        let mut slot = PendingSlot { pending: self, source, counted_in_total: false };
        let max = self.max_total;
        self.total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|_| Rejection::TooManyPending)?;
        slot.counted_in_total = true;
        Ok(slot)
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The map is consistent whenever the lock is released (no code in between can panic).
        self.by_source.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The unit the per-source cap counts: an IPv4 address, or an IPv6 /64 (a host usually has a whole
/// /64, so counting single IPv6 addresses would give it 2^64 shares).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// A connection's place among the [`PendingHandshakes`], given back when dropped.
struct PendingSlot<'a> {
    pending: &'a PendingHandshakes,
    source: Option<IpAddr>,
    counted_in_total: bool,
}

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        if self.counted_in_total {
            self.pending.total.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(source) = self.source {
            let mut counts = self.pending.counts();
            if let Some(count) = counts.get_mut(&source) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&source);
                }
            }
        }
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
        let answer = rejection.answer();
        let mut response = Self::text(answer.status, answer.reason, answer.body);
        for (name, value) in answer.headers {
            response = response.header(name, value);
        }
        response
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn pending_handshakes_are_capped_per_source_and_in_total() {
        let pending = PendingHandshakes::new(5, 2);
        let a1 = pending.acquire(ip("10.0.0.1")).unwrap();
        let a2 = pending.acquire(ip("10.0.0.1")).unwrap();
        assert_eq!(pending.acquire(ip("10.0.0.1")).err(), Some(Rejection::TooManyPendingFromIp));
        let b1 = pending.acquire(ip("10.0.0.2")).unwrap();
        let b2 = pending.acquire(ip("10.0.0.2")).unwrap();
        let c1 = pending.acquire(ip("10.0.0.3")).unwrap();
        // The total is full: a fresh source is refused, and its refusal leaves no entry behind.
        assert_eq!(pending.acquire(ip("10.0.0.4")).err(), Some(Rejection::TooManyPending));
        assert_eq!(pending.total.load(Ordering::Acquire), 5);
        assert_eq!(pending.counts().len(), 3);
        drop(a1);
        assert_eq!(pending.counts().get(&ip("10.0.0.1")), Some(&1));
        let a3 = pending.acquire(ip("10.0.0.1")).unwrap();
        drop((a2, a3, b1, b2, c1));
        assert_eq!(pending.total.load(Ordering::Acquire), 0);
        assert!(pending.counts().is_empty(), "entries at zero are removed");
    }

    #[test]
    fn zero_means_no_per_source_cap() {
        let pending = PendingHandshakes::new(3, 0);
        let slots: Vec<_> = (0..3).map(|_| pending.acquire(ip("10.0.0.1")).unwrap()).collect();
        assert_eq!(pending.acquire(ip("10.0.0.1")).err(), Some(Rejection::TooManyPending));
        assert!(pending.counts().is_empty());
        drop(slots);
        assert_eq!(pending.total.load(Ordering::Acquire), 0);
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        assert_eq!(source_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")), ip("2001:db8:1:2::"));
        assert_eq!(source_of(ip("2001:db8:1:2::1")), source_of(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(source_of(ip("2001:db8:1:2::1")), source_of(ip("2001:db8:1:3::1")));
        let pending = PendingHandshakes::new(10, 1);
        let _held = pending.acquire(ip("2001:db8::1")).unwrap();
        assert_eq!(pending.acquire(ip("2001:db8::2")).err(), Some(Rejection::TooManyPendingFromIp));
    }
}
