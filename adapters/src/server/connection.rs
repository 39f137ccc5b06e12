//! One accepted WebSocket connection: the core's [`ServerConnection`] driven on its own task.
//!
//! A reader task turns socket messages into a bounded channel (so a slow engine slows the socket, not
//! memory); the connection task waits on that channel, its outbox from the engine and its timer, and
//! after every input forwards engine inputs and writes every pending frame with one flush.
//!
//! The connection ends when the peer closes or fails, on a protocol violation (the mux decides), when
//! the token expires, or when the engine stops (server shutdown): then its `close` frame and whatever
//! was queued before it are flushed and the socket is closed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{Either, select};
use streamkit_core::mux::{MUXER_CLOSED, MuxConfig, MuxCounters, MuxSession, Role};
use streamkit_core::server::{EngineOutput, ServerConnection};

use crate::clock::WallClock;
use crate::engine::EngineHandle;
use crate::http::AcceptedWebSocket;
use crate::metrics::{ErrorKind, Metrics};
use crate::runtime::{Runtime, RuntimeExt};
use crate::ws::{WsError, WsWriter};

/// Why a connection whose token expired is closed (invariant 5: no request outlives its authorization).
pub const TOKEN_EXPIRED: &str = "token expired";
/// Why connections are closed when the server shuts down.
pub const SERVER_SHUTDOWN: &str = "server shutting down";

/// Frames buffered between the reader task and the connection task.
const READ_AHEAD: usize = 64;

/// Frames handled from the reader or the outbox before the connection writes (and so returns credit):
/// large enough to batch, small enough that writes are never starved by a busy peer.
const MAX_BATCH: usize = 256;

/// How long a connection the server closes keeps reading (and discarding) after its close frame,
/// waiting for the peer's close. Dropping a socket with unread input makes the kernel answer with a
/// reset, which can destroy the close frame (and the last statuses) before the peer has read them: a
/// client that was still producing would see a broken connection instead of a clean close.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

enum Event {
    Frame(Result<Option<Bytes>, WsError>),
    Output(Option<EngineOutput>),
    Timer,
}

/// How a connection ended, for the error metrics.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Still running, or ended by the mux (its reason tells why).
    Mux,
    /// A socket read or write failed.
    Transport,
    /// Token expiry or server shutdown.
    Server,
}

/// Runs `accepted` until the connection ends.
pub async fn run_connection(
    accepted: AcceptedWebSocket,
    engine: EngineHandle,
    runtime: Arc<dyn Runtime>,
    mux: MuxConfig,
    metrics: Arc<Metrics>,
    seed: u64,
) {
    let Ok((conn_id, outbox)) = engine.register().await else { return };
    let clock = WallClock::default();
    // `_permit` holds this connection's place under the connection limit until the connection ends.
    let AcceptedWebSocket { connection, principal, codec, peer, permit: _permit } = accepted;
    let expires_at = principal.expires_at;
    let session = MuxSession::new(Role::Server { scopes: principal.scopes }, codec, mux, clock.now(), seed);
    let mut conn = ServerConnection::new(conn_id, session);
    let (mut reader, mut writer) = connection.split();
    let (frames_tx, frames_rx) = async_channel::bounded(READ_AHEAD);
    runtime
        .spawn(async move {
            loop {
                let frame = reader.recv().await;
                let last = !matches!(frame, Ok(Some(_)));
                if frames_tx.send(frame).await.is_err() || last {
                    break;
                }
            }
        })
        .detach();
    tracing::debug!(conn = conn_id, %peer, ?codec, "connection opened");
    let mut counters = MuxCounters::default();
    let mut ending = Ending::Mux;
    // Whether the reader saw the end of the input (the peer's close, EOF or a read error).
    let mut input_ended = false;
    let mut timer = runtime.sleep(Duration::from_secs(3600));
    loop {
        let now = clock.now();
        let deadline = conn.poll_timeout().map_or(expires_at, |(at, _)| at.min(expires_at));
        timer.as_mut().reset(clock.instant_of(deadline));
        let inputs = select(Box::pin(frames_rx.recv()), Box::pin(outbox.recv()));
        let event = match select(inputs, timer.as_mut()).await {
            Either::Left((Either::Left((frame, _)), _)) => Event::Frame(frame.unwrap_or(Ok(None))),
            Either::Left((Either::Right((output, _)), _)) => Event::Output(output.ok()),
            Either::Right(_) => Event::Timer,
        };
        let now = clock.now().max(now);
        match event {
            Event::Frame(Ok(Some(bytes))) => {
                let (mut frames, mut size) = (1, bytes.len());
                conn.handle_frame(now, &bytes);
                // Take what else the reader has ready before writing: batching.
                while frames < MAX_BATCH {
                    let Ok(Ok(Some(bytes))) = frames_rx.try_recv() else { break };
                    frames += 1;
                    size += bytes.len();
                    conn.handle_frame(now, &bytes);
                }
                metrics.received(frames as u64, size as u64);
            }
            Event::Frame(Ok(None)) => {
                input_ended = true;
                conn.handle_transport_closed(now, MUXER_CLOSED);
            }
            Event::Frame(Err(e)) => {
                input_ended = true;
                ending = Ending::Transport;
                conn.handle_transport_closed(now, &e.to_string());
            }
            Event::Output(Some(output)) => {
                conn.handle_engine(now, output);
                for _ in 1..MAX_BATCH {
                    let Ok(output) = outbox.try_recv() else { break };
                    conn.handle_engine(now, output);
                }
            }
            Event::Output(None) => {
                ending = Ending::Server;
                conn.shutdown(now, SERVER_SHUTDOWN);
            }
            Event::Timer => {
                if now >= expires_at {
                    tracing::info!(conn = conn_id, %peer, "closing connection: token expired");
                    metrics.error(ErrorKind::TokenExpired);
                    ending = Ending::Server;
                    conn.shutdown(now, TOKEN_EXPIRED);
                } else {
                    conn.handle_timeout(now);
                }
            }
        }
        record_refusals(&conn, &mut counters, &metrics);
        if flush(&mut conn, &engine, &mut writer, &clock, &metrics).await.is_err() {
            if conn.shutdown_reason().is_none() {
                ending = Ending::Transport;
            }
            conn.handle_transport_closed(clock.now(), "write failed");
            let _ = forward(&mut conn, &engine).await;
            break;
        }
        if conn.shutdown_reason().is_some() && !conn.has_transmit() {
            let _ = writer.close().await;
            if !input_ended {
                let drain = async { while let Ok(Ok(Some(_))) = frames_rx.recv().await {} };
                let _ = runtime.timeout(CLOSE_LINGER, drain).await;
            }
            break;
        }
    }
    let reason = conn.shutdown_reason().unwrap_or("");
    match ending {
        Ending::Transport => metrics.error(ErrorKind::Transport),
        Ending::Mux if reason != MUXER_CLOSED && reason != SERVER_SHUTDOWN => {
            metrics.error(ErrorKind::Protocol);
            tracing::info!(conn = conn_id, %peer, reason, "connection closed on a protocol error");
        }
        _ => {}
    }
    tracing::debug!(conn = conn_id, %peer, reason, "connection closed");
    engine.unregister(conn_id).await;
}

/// Counts what the mux refused since the last call (denied frames, refused and overloaded streams).
fn record_refusals(conn: &ServerConnection, seen: &mut MuxCounters, metrics: &Metrics) {
    let now = conn.mux().counters();
    if now == *seen {
        return;
    }
    metrics.error_n(ErrorKind::AccessDenied, now.denied_frames - seen.denied_frames);
    metrics.error_n(ErrorKind::TooManyStreams, now.refused_streams - seen.refused_streams);
    metrics.error_n(ErrorKind::StreamOverload, now.overloaded_streams - seen.overloaded_streams);
    *seen = now;
}

/// Forwards queued engine inputs.
async fn forward(
    conn: &mut ServerConnection,
    engine: &EngineHandle,
) -> Result<(), crate::engine::EngineStopped> {
    let mut inputs = Vec::new();
    while let Some(input) = conn.poll_engine_input() {
        inputs.push(input);
    }
    engine.send(inputs).await
}

/// Forwards engine inputs and writes every pending frame, flushing once.
async fn flush(
    conn: &mut ServerConnection,
    engine: &EngineHandle,
    writer: &mut WsWriter,
    clock: &WallClock,
    metrics: &Metrics,
) -> Result<(), WsError> {
    if forward(conn, engine).await.is_err() {
        conn.shutdown(clock.now(), SERVER_SHUTDOWN);
    }
    let (mut frames, mut bytes) = (0u64, 0u64);
    while let Some(frame) = conn.poll_transmit() {
        frames += 1;
        bytes += frame.len() as u64;
        writer.feed(frame).await?;
    }
    if frames > 0 {
        writer.flush().await?;
        metrics.sent(frames, bytes);
    }
    // Taking frames produced send credit for the engine.
    if forward(conn, engine).await.is_err() {
        conn.shutdown(clock.now(), SERVER_SHUTDOWN);
    }
    Ok(())
}
