//! WebSocket connections: the server side handed over by the HTTP front, and the client [`dial`].
//!
//! A [`WsConnection`] carries one codec ([`Codec::Json`] in text frames, [`Codec::Cbor`] in binary
//! frames, PROTOCOL.md §2.3 and the CBOR extension) and moves whole frames as bytes:
//!
//! * receiving yields the payload of the next data message, text or binary alike (Go also parses a
//!   binary frame as JSON); WebSocket pings are answered while the reader is polled, and a close frame
//!   (answered with its echo) or a closed socket is a benign end (`Ok(None)`). The client reads with
//!   tungstenite; the server ([`WsConnection::accepted`]) with its own [`FrameReader`], which holds no
//!   read buffer while the connection is idle and reads a large frame into a buffer of its own that
//!   leaves with the message (tungstenite keeps one buffer for the connection's life, as large as the
//!   largest frame it read);
//! * sending is **batched**: [`WsWriter::feed`] queues frames in tungstenite's write buffer (it only
//!   touches the socket when that buffer passes its size target) and [`WsWriter::flush`] pushes them
//!   out, so a drained batch of core output costs one flush, not one syscall per frame. Each frame is
//!   sent as a single, unfragmented WebSocket message, as Go peers require.
//!
//! [`WsConnection::split`] gives a reader and a writer usable from two tasks at once: one task blocks
//! in [`WsReader::recv`] while another writes.
//!
//! [`dial`] speaks `ws://`, and `wss://` with the `tls` feature (rustls on aws-lc-rs, the crypto stack
//! jsonwebtoken already uses).

pub mod frame_reader;

use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::error::{ProtocolError, SubProtocolError};
use async_tungstenite::tungstenite::http::header::{AUTHORIZATION, ORIGIN, SEC_WEBSOCKET_PROTOCOL};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use bytes::Bytes;
use futures_util::io::{AsyncReadExt, ReadHalf, WriteHalf};
use futures_util::{AsyncRead, AsyncWrite, Sink, Stream};
use streamkit_proto::wire::{CBOR_SUBPROTOCOL, Codec, DEFAULT_MAX_FRAME};

use crate::runtime::{BoxedStream, Runtime, RuntimeExt};
pub use frame_reader::FrameReader;

/// The `Origin` the client sends, like the Go client (a Go server refuses an upgrade without one).
pub const CLIENT_ORIGIN: &str = "http://localhost";

/// The WebSocket settings used on both sides unless configured otherwise.
///
/// * messages and frames are capped at the core's frame limit (8 MiB, Go's `MaxPayloadBytes`), so a
///   peer cannot make us buffer more than that per message;
/// * a 32 KiB read buffer instead of tungstenite's eagerly allocated 128 KiB keeps idle connections
///   cheap; writes are gathered up to 64 KiB before touching the socket.
pub fn default_websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(32 * 1024)
        .write_buffer_size(64 * 1024)
        .max_message_size(Some(DEFAULT_MAX_FRAME))
        .max_frame_size(Some(DEFAULT_MAX_FRAME))
}

/// tungstenite asserts `max_write_buffer_size > write_buffer_size` when a socket is wrapped; a
/// configuration that breaks it is repaired here rather than panicking on the first connection.
pub(crate) fn sanitize_config(mut config: WebSocketConfig) -> WebSocketConfig {
    if config.max_write_buffer_size <= config.write_buffer_size {
        if config.write_buffer_size == usize::MAX {
            config = config.write_buffer_size(64 * 1024);
        }
        config = config.max_write_buffer_size(config.write_buffer_size.saturating_add(DEFAULT_MAX_FRAME));
    }
    config
}

/// Errors of an established connection. Any error means the connection is unusable.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The connection is closed (by either side); sending is no longer possible.
    #[error("connection closed")]
    Closed,
    /// A JSON-codec frame was not valid UTF-8, so it cannot travel in a text frame; nothing was sent.
    #[error("frame for a text connection is not valid UTF-8")]
    InvalidUtf8,
    /// A WebSocket protocol or IO failure.
    #[error(transparent)]
    Protocol(tungstenite::Error),
}

impl From<tungstenite::Error> for WsError {
    fn from(error: tungstenite::Error) -> Self {
        match error {
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => WsError::Closed,
            other => WsError::Protocol(other),
        }
    }
}

/// An established WebSocket connection with its negotiated codec.
pub struct WsConnection {
    reader: WsReader,
    writer: WsWriter,
}

// The boxed socket has no `Debug`; the codec is what matters in logs.
impl std::fmt::Debug for WsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConnection").field("codec", &self.codec()).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for WsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsReader").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for WsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsWriter").field("codec", &self.codec).finish_non_exhaustive()
    }
}

/// The write half of a server's socket, as the stream tungstenite writes to. tungstenite never reads
/// from it (the [`FrameReader`] does); a read would see the end of input.
struct WriteOnly(WriteHalf<BoxedStream>);

impl AsyncRead for WriteOnly {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut [u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(0))
    }
}

impl AsyncWrite for WriteOnly {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

impl WsConnection {
    /// Wraps an established WebSocket (after a handshake done elsewhere); tungstenite reads and writes.
    pub fn new(stream: WebSocketStream<BoxedStream>, codec: Codec) -> Self {
        Self::from_parts(stream, None, codec)
    }

    /// The server side of a connection whose upgrade was answered: `leftover` is what was read past
    /// the request head. Frames are read by a [`FrameReader`] (no read buffer while idle, large frames
    /// read into buffers of their own) under `config`'s frame and message caps; tungstenite writes.
    pub async fn accepted(
        socket: BoxedStream,
        leftover: Vec<u8>,
        config: WebSocketConfig,
        codec: Codec,
    ) -> Self {
        let (read, write) = socket.split();
        let frames = FrameReader::new(read, leftover, &config);
        // tungstenite's read buffer would never be used: none is allocated.
        let config = sanitize_config(config.read_buffer_size(0));
        let writer: BoxedStream = Box::new(WriteOnly(write));
        let stream =
            WebSocketStream::from_raw_socket(writer, tungstenite::protocol::Role::Server, Some(config)).await;
        Self::from_parts(stream, Some(frames), codec)
    }

    /// The two halves over `stream`, reading with `frames` when given.
    fn from_parts(
        stream: WebSocketStream<BoxedStream>,
        frames: Option<FrameReader<ReadHalf<BoxedStream>>>,
        codec: Codec,
    ) -> Self {
        let shared = Arc::new(Mutex::new(stream));
        let source = match frames {
            Some(frames) => ReadSource::Frames { frames, writer: shared.clone(), answer_unflushed: false },
            None => ReadSource::Tungstenite(shared.clone()),
        };
        Self { reader: WsReader { source }, writer: WsWriter { stream: shared, codec } }
    }

    /// The codec of this connection.
    pub fn codec(&self) -> Codec {
        self.writer.codec
    }

    /// The next data message's payload; `Ok(None)` once the peer closed the connection.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, WsError> {
        self.reader.recv().await
    }

    /// Queues one frame without flushing (see the module docs).
    pub async fn feed(&mut self, frame: impl Into<Bytes>) -> Result<(), WsError> {
        self.writer.feed(frame).await
    }

    /// Writes every queued frame to the socket.
    pub async fn flush(&mut self) -> Result<(), WsError> {
        self.writer.flush().await
    }

    /// Queues every frame of `frames`, then flushes once.
    pub async fn send_batch<I>(&mut self, frames: I) -> Result<(), WsError>
    where
        I: IntoIterator,
        I::Item: Into<Bytes>,
    {
        self.writer.send_batch(frames).await
    }

    /// Starts the closing handshake (a normal close frame) and flushes it.
    pub async fn close(&mut self) -> Result<(), WsError> {
        self.writer.close().await
    }

    /// Splits the connection into a reader and a writer for two tasks.
    pub fn split(self) -> (WsReader, WsWriter) {
        (self.reader, self.writer)
    }
}

/// The WebSocket both halves of a split connection use, one at a time (what async-tungstenite's own
/// split does too).
type Shared = Arc<Mutex<WebSocketStream<BoxedStream>>>;

/// A poisoned lock means a panic in tungstenite while the other half held it; the stream is whatever
/// state that left, and every later error is reported by tungstenite itself.
fn lock(shared: &Shared) -> MutexGuard<'_, WebSocketStream<BoxedStream>> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The receiving half of a [`WsConnection`].
pub struct WsReader {
    source: ReadSource,
}

// The large variant is the one every server connection uses; boxing it would cost each of them an
// allocation for nothing.
#[allow(clippy::large_enum_variant)]
enum ReadSource {
    /// tungstenite reads (and answers pings itself).
    Tungstenite(Shared),
    /// The server's frame reader; the pongs and the close reply it owes are written through `writer`.
    Frames { frames: FrameReader<ReadHalf<BoxedStream>>, writer: Shared, answer_unflushed: bool },
}

impl WsReader {
    /// The next data message's payload; `Ok(None)` once the peer closed the connection.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, WsError> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`recv`](Self::recv) for poll-based drivers: `Pending` until a data message (or the end)
    /// arrived. Nothing is lost when a driver stops polling between messages. Pings are answered while
    /// the reader is polled, even when no data message arrives.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, WsError>> {
        match &mut self.source {
            ReadSource::Tungstenite(shared) => loop {
                let item = match Pin::new(&mut *lock(shared)).poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(item) => item,
                };
                if let Some(result) = data_of(item) {
                    return Poll::Ready(result);
                }
            },
            ReadSource::Frames { frames, writer, answer_unflushed } => {
                let received = frames.poll_recv(cx);
                if frames.owes_answer() || *answer_unflushed {
                    answer_control(frames, &mut lock(writer), answer_unflushed, cx);
                }
                received.map_err(WsError::from)
            }
        }
    }
}

/// Writes the pong a ping asked for and the reply to a close, when the write buffer takes them, and
/// pushes them out. A failure is left to the writer, which meets the same broken socket.
fn answer_control<R: AsyncRead + Unpin>(
    frames: &mut FrameReader<R>,
    ws: &mut WebSocketStream<BoxedStream>,
    unflushed: &mut bool,
    cx: &mut Context<'_>,
) {
    while frames.owes_answer() {
        match Pin::new(&mut *ws).poll_ready(cx) {
            Poll::Pending => break,
            Poll::Ready(Err(_)) => {
                // Nothing more can be written; the answers are moot.
                frames.take_pong();
                frames.take_close_reply();
                break;
            }
            Poll::Ready(Ok(())) => {}
        }
        let answer = match frames.take_pong() {
            Some(pong) => Message::Pong(pong),
            None => Message::Close(frames.take_close_reply().flatten()),
        };
        *unflushed |= Pin::new(&mut *ws).start_send(answer).is_ok();
    }
    if *unflushed && Pin::new(&mut *ws).poll_flush(cx).is_ready() {
        *unflushed = false;
    }
}

/// The sending half of a [`WsConnection`].
pub struct WsWriter {
    stream: Shared,
    codec: Codec,
}

impl WsWriter {
    /// The codec of this connection.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// For poll-based drivers: `Ready(Ok)` once [`start_send`](Self::start_send) may be called (the
    /// write buffer has room; a full buffer is written out first).
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Pin::new(&mut *lock(&self.stream)).poll_ready(cx).map_err(WsError::from)
    }

    /// Queues one frame after [`poll_ready`](Self::poll_ready) said so.
    pub fn start_send(&mut self, frame: impl Into<Bytes>) -> Result<(), WsError> {
        let message = message_of(self.codec, frame.into())?;
        Pin::new(&mut *lock(&self.stream)).start_send(message).map_err(WsError::from)
    }

    /// For poll-based drivers: writes every queued frame to the socket.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Pin::new(&mut *lock(&self.stream)).poll_flush(cx).map_err(WsError::from)
    }

    /// Queues one frame without flushing.
    pub async fn feed(&mut self, frame: impl Into<Bytes>) -> Result<(), WsError> {
        poll_fn(|cx| self.poll_ready(cx)).await?;
        self.start_send(frame)
    }

    /// Writes every queued frame to the socket.
    pub async fn flush(&mut self) -> Result<(), WsError> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Queues every frame of `frames`, then flushes once.
    pub async fn send_batch<I>(&mut self, frames: I) -> Result<(), WsError>
    where
        I: IntoIterator,
        I::Item: Into<Bytes>,
    {
        for frame in frames {
            self.feed(frame).await?;
        }
        self.flush().await
    }

    /// Starts the closing handshake (a normal close frame) and flushes it.
    pub async fn close(&mut self) -> Result<(), WsError> {
        close_sink(poll_fn(|cx| Pin::new(&mut *lock(&self.stream)).poll_close(cx)).await)
    }
}

/// A close on an already closed connection is not an error worth reporting.
fn close_sink(result: Result<(), tungstenite::Error>) -> Result<(), WsError> {
    match result.map_err(WsError::from) {
        Err(WsError::Closed) => Ok(()),
        other => other,
    }
}

/// What one item read from a WebSocket means to a receiver: a data message's payload, the end
/// (`Ok(None)`), an error, or `None` for control messages to skip.
fn data_of(item: Option<Result<Message, tungstenite::Error>>) -> Option<Result<Option<Bytes>, WsError>> {
    match item {
        None => Some(Ok(None)),
        Some(Ok(Message::Text(text))) => Some(Ok(Some(Bytes::from(text)))),
        Some(Ok(Message::Binary(bytes))) => Some(Ok(Some(bytes))),
        // Ping: tungstenite queued the pong, and the next read flushes it.
        // Close: tungstenite queued the reply; reading on sends it and then ends the stream.
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_))) => None,
        Some(Err(error)) => Some(match WsError::from(error) {
            WsError::Closed => Ok(None),
            other => Err(other),
        }),
    }
}

/// A frame as the WebSocket message of its codec: binary for CBOR, text for JSON.
fn message_of(codec: Codec, frame: Bytes) -> Result<Message, WsError> {
    Ok(if codec.is_binary() {
        Message::Binary(frame)
    } else {
        Message::Text(Utf8Bytes::try_from(frame).map_err(|_| WsError::InvalidUtf8)?)
    })
}

/// `base` with trailing `/` trimmed and `/streamz` appended, like the Go provider
/// (`ws://host:8080/` → `ws://host:8080/streamz`).
pub fn streamz_url(base: &str) -> String {
    format!("{}/streamz", base.trim_end_matches('/'))
}

/// How to dial a server.
#[derive(Clone)]
pub struct DialOptions {
    /// The JWT sent as `Authorization: Bearer <token>`.
    pub token: String,
    /// Offer the CBOR subprotocol; without it the connection speaks JSON.
    pub cbor: bool,
    /// Deadline for name resolution, TCP connect and the WebSocket handshake together.
    pub timeout: Duration,
    /// WebSocket settings (defaults: [`default_websocket_config`]).
    pub websocket: WebSocketConfig,
    /// TLS settings for `wss://`; `None` uses rustls (aws-lc-rs) with the Mozilla root certificates.
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<futures_rustls::rustls::ClientConfig>>,
}

impl std::fmt::Debug for DialOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("DialOptions")
            .field("cbor", &self.cbor)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl DialOptions {
    /// JSON codec, 10 s timeout, default WebSocket settings.
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            cbor: false,
            timeout: Duration::from_secs(10),
            websocket: default_websocket_config(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Offers (`true`) or does not offer the CBOR subprotocol.
    pub fn with_cbor(mut self, cbor: bool) -> Self {
        self.cbor = cbor;
        self
    }

    /// Sets the dial timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Uses `config` for `wss://` (custom roots, client certificates, ...).
    #[cfg(feature = "tls")]
    pub fn with_tls_config(mut self, config: Arc<futures_rustls::rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The address is not a usable `ws://` URL.
    #[error("invalid url: {0}")]
    InvalidUrl(String),
    /// `wss://` needs the `tls` feature, which is not enabled in this build.
    #[error("wss:// needs the `tls` feature of the streamkit crate")]
    TlsUnsupported,
    /// The TLS handshake failed (untrusted certificate, wrong name, reset, ...).
    #[error("tls handshake failed: {0}")]
    Tls(io::Error),
    /// The token cannot be sent in an HTTP header.
    #[error("token is not a valid header value")]
    InvalidToken,
    /// The host name did not resolve.
    #[error("cannot resolve host: {0}")]
    Resolve(io::Error),
    /// No resolved address accepted a TCP connection.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// The deadline passed before the handshake completed.
    #[error("dial timed out")]
    Timeout,
    /// HTTP 401: the token was refused. Permanent until the token changes.
    #[error("401 unauthorized")]
    Unauthorized,
    /// HTTP 403: refused (a Go server does this when `Origin` is missing).
    #[error("403 forbidden")]
    Forbidden,
    /// Another non-101 HTTP status.
    #[error("unexpected HTTP status {0}")]
    Status(u16),
    /// CBOR was offered and the server did not accept it (a Go server never does); dial again
    /// without CBOR to speak JSON.
    #[error("server did not accept the {CBOR_SUBPROTOCOL} subprotocol")]
    SubprotocolRefused,
    /// The answer to the upgrade request was not HTTP: typically `ws://` dialed to a port that speaks
    /// TLS (which answers the request with a TLS alert).
    #[error("the server did not answer in HTTP (a TLS port? dial wss://): {0}")]
    NotHttp(tungstenite::Error),
    /// Any other WebSocket handshake failure.
    #[error("websocket handshake failed: {0}")]
    Handshake(tungstenite::Error),
}

impl DialError {
    /// Whether the server refused the credentials (401 or 403).
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, DialError::Unauthorized | DialError::Forbidden)
    }

    /// Whether retrying the same dial cannot succeed (bad address, refused credentials, ...);
    /// everything else is worth retrying with backoff.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            DialError::InvalidUrl(_)
                | DialError::TlsUnsupported
                | DialError::InvalidToken
                | DialError::Unauthorized
                | DialError::Forbidden
                | DialError::SubprotocolRefused
                | DialError::NotHttp(_)
        )
    }
}

/// Dials `base_url` (`ws://` or, with the `tls` feature, `wss://`; `/streamz` is appended) and
/// completes the WebSocket handshake with the token, `Origin: http://localhost` and, if asked, the CBOR
/// subprotocol. The returned connection's [`codec`](WsConnection::codec) is the negotiated one.
pub async fn dial(
    runtime: &dyn Runtime,
    base_url: &str,
    options: &DialOptions,
) -> Result<WsConnection, DialError> {
    let url = streamz_url(base_url);
    let mut request = url.as_str().into_client_request().map_err(|e| DialError::InvalidUrl(e.to_string()))?;
    let secure = match request.uri().scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(DialError::InvalidUrl(format!("{url}: scheme must be ws:// or wss://"))),
    };
    #[cfg(not(feature = "tls"))]
    if secure {
        return Err(DialError::TlsUnsupported);
    }
    let host = request.uri().host().ok_or_else(|| DialError::InvalidUrl(format!("{url}: no host")))?;
    // `Uri::host` keeps the brackets of an IPv6 literal.
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = request.uri().port_u16().unwrap_or(if secure { 443 } else { 80 });

    let headers = request.headers_mut();
    let authorization =
        HeaderValue::from_str(&format!("Bearer {}", options.token)).map_err(|_| DialError::InvalidToken)?;
    headers.insert(AUTHORIZATION, authorization);
    headers.insert(ORIGIN, HeaderValue::from_static(CLIENT_ORIGIN));
    if options.cbor {
        headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(CBOR_SUBPROTOCOL));
    }
    let config = sanitize_config(options.websocket);

    let attempt = async move {
        let stream = connect_host(runtime, host.clone(), port).await?;
        #[cfg(feature = "tls")]
        let stream = if secure { tls::connect(options.tls.clone(), host, stream).await? } else { stream };
        let (stream, response) = async_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(handshake_error)?;
        let codec = match response.headers().get(SEC_WEBSOCKET_PROTOCOL) {
            Some(value) if value.as_bytes() == CBOR_SUBPROTOCOL.as_bytes() => Codec::Cbor,
            _ => Codec::Json,
        };
        Ok(WsConnection::new(stream, codec))
    };
    runtime.timeout(options.timeout, attempt).await.map_err(|_| DialError::Timeout)?
}

#[cfg(feature = "tls")]
mod tls {
    use std::io;
    use std::sync::{Arc, OnceLock};

    use futures_rustls::TlsConnector;
    use futures_rustls::rustls::pki_types::ServerName;
    use futures_rustls::rustls::{ClientConfig, RootCertStore, crypto};

    use super::DialError;
    use crate::runtime::BoxedStream;

    /// rustls with the Mozilla roots, built once. The provider is named explicitly so that no
    /// process-wide default provider has to be installed (rustls panics when none or several are).
    fn default_config() -> Result<Arc<ClientConfig>, DialError> {
        static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
        let built = CONFIG.get_or_init(|| {
            let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            ClientConfig::builder_with_provider(Arc::new(crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .map(|builder| Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| e.to_string())
        });
        built.clone().map_err(|e| DialError::Tls(io::Error::other(e)))
    }

    /// Runs the TLS handshake for `host` over `stream`.
    pub(super) async fn connect(
        config: Option<Arc<ClientConfig>>,
        host: String,
        stream: BoxedStream,
    ) -> Result<BoxedStream, DialError> {
        let config = match config {
            Some(config) => config,
            None => default_config()?,
        };
        let name = ServerName::try_from(host).map_err(|e| DialError::InvalidUrl(e.to_string()))?;
        let stream = TlsConnector::from(config).connect(name, stream).await.map_err(DialError::Tls)?;
        Ok(Box::new(stream))
    }
}

/// Resolves `host` (off the executor: std's resolver blocks) and connects to the first address
/// that answers.
async fn connect_host(runtime: &dyn Runtime, host: String, port: u16) -> Result<BoxedStream, DialError> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => runtime
            .spawn_blocking(move || (host.as_str(), port).to_socket_addrs().map(Iterator::collect))
            .await
            .map_err(|e| DialError::Resolve(io::Error::other(e.to_string())))?
            .map_err(DialError::Resolve)?,
    };
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "host resolved to no address");
    for addr in addrs {
        match runtime.connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = error,
        }
    }
    Err(DialError::Connect(last_error))
}

fn handshake_error(error: tungstenite::Error) -> DialError {
    match error {
        tungstenite::Error::Http(response) => match response.status() {
            StatusCode::UNAUTHORIZED => DialError::Unauthorized,
            StatusCode::FORBIDDEN => DialError::Forbidden,
            status => DialError::Status(status.as_u16()),
        },
        tungstenite::Error::Protocol(ProtocolError::SecWebSocketSubProtocolError(
            SubProtocolError::NoSubProtocol | SubProtocolError::InvalidSubProtocol,
        )) => DialError::SubprotocolRefused,
        tungstenite::Error::Io(error) => DialError::Connect(error),
        error @ tungstenite::Error::Protocol(ProtocolError::HttparseError(_)) => DialError::NotHttp(error),
        other => DialError::Handshake(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamz_url_normalises_like_go() {
        assert_eq!(streamz_url("https://example.com/"), "https://example.com/streamz");
        assert_eq!(streamz_url("ws://127.0.0.1:8080"), "ws://127.0.0.1:8080/streamz");
        assert_eq!(streamz_url("ws://h/api//"), "ws://h/api/streamz");
    }

    #[test]
    fn config_is_repaired_not_panicking() {
        let bad = default_websocket_config().write_buffer_size(100).max_write_buffer_size(100);
        let fixed = sanitize_config(bad);
        assert!(fixed.max_write_buffer_size > fixed.write_buffer_size);
        let worst =
            default_websocket_config().write_buffer_size(usize::MAX).max_write_buffer_size(usize::MAX);
        let fixed = sanitize_config(worst);
        assert!(fixed.max_write_buffer_size > fixed.write_buffer_size);
        let good = default_websocket_config();
        assert_eq!(sanitize_config(good).max_write_buffer_size, good.max_write_buffer_size);
    }

    #[cfg(all(not(feature = "tls"), feature = "tokio"))]
    #[test]
    fn wss_needs_the_tls_feature() {
        let tokio = ::tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let runtime = crate::runtime::TokioRuntime::new(tokio.handle().clone());
        let error = tokio.block_on(dial(&runtime, "wss://localhost:1", &DialOptions::new("t"))).unwrap_err();
        assert!(matches!(error, DialError::TlsUnsupported), "{error:?}");
    }

    #[test]
    fn permanent_errors() {
        assert!(DialError::Unauthorized.is_permanent() && DialError::Unauthorized.is_auth_failure());
        assert!(!DialError::Timeout.is_permanent());
        assert!(!DialError::Status(503).is_permanent());
    }
}
