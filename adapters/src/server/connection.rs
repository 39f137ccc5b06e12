//! One accepted WebSocket connection: the core's [`ServerConnection`] driven on its own task.
//!
//! A reader task turns socket messages into a bounded channel (so a slow engine slows the socket, not
//! memory); the connection task waits on that channel, its outbox from the engine and its timer, and
//! after every input forwards engine inputs and writes every pending frame with one flush.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{Either, select};
use streamkit_core::mux::{MuxConfig, MuxSession, Role};
use streamkit_core::server::{EngineOutput, ServerConnection};

use crate::clock::WallClock;
use crate::engine::EngineHandle;
use crate::http::AcceptedWebSocket;
use crate::runtime::{Runtime, RuntimeExt};
use crate::ws::{WsError, WsWriter};

/// Why a connection whose token expired is closed (invariant 5: no request outlives its authorization).
pub const TOKEN_EXPIRED: &str = "token expired";
/// Why connections are closed when the server shuts down.
pub const SERVER_SHUTDOWN: &str = "server shutting down";

/// Frames buffered between the reader task and the connection task.
const READ_AHEAD: usize = 64;

enum Event {
    Frame(Result<Option<Bytes>, WsError>),
    Output(Option<EngineOutput>),
    Timer,
}

/// Runs `accepted` until the connection ends.
pub async fn run_connection(
    accepted: AcceptedWebSocket,
    engine: EngineHandle,
    runtime: Arc<dyn Runtime>,
    mux: MuxConfig,
    seed: u64,
) {
    let Ok((conn_id, outbox)) = engine.register().await else { return };
    let clock = WallClock::default();
    let AcceptedWebSocket { connection, principal, codec, peer } = accepted;
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
                conn.handle_frame(now, &bytes);
                // Take what else the reader has ready before writing: batching.
                while let Ok(Ok(Some(bytes))) = frames_rx.try_recv() {
                    conn.handle_frame(now, &bytes);
                }
            }
            Event::Frame(Ok(None)) => conn.handle_transport_closed(now, "muxer closed"),
            Event::Frame(Err(e)) => conn.handle_transport_closed(now, &e.to_string()),
            Event::Output(Some(output)) => {
                conn.handle_engine(now, output);
                while let Ok(output) = outbox.try_recv() {
                    conn.handle_engine(now, output);
                }
            }
            Event::Output(None) => conn.shutdown(now, SERVER_SHUTDOWN),
            Event::Timer => {
                if now >= expires_at {
                    tracing::info!(conn = conn_id, "closing connection: token expired");
                    conn.shutdown(now, TOKEN_EXPIRED);
                } else {
                    conn.handle_timeout(now);
                }
            }
        }
        if flush(&mut conn, &engine, &mut writer, &clock).await.is_err() {
            conn.handle_transport_closed(clock.now(), "write failed");
            let _ = forward(&mut conn, &engine).await;
            break;
        }
        if conn.shutdown_reason().is_some() && !conn.has_transmit() {
            let _ = writer.close().await;
            break;
        }
    }
    tracing::debug!(conn = conn_id, reason = conn.shutdown_reason().unwrap_or(""), "connection closed");
    engine.unregister(conn_id).await;
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
) -> Result<(), WsError> {
    if forward(conn, engine).await.is_err() {
        conn.shutdown(clock.now(), SERVER_SHUTDOWN);
    }
    let mut wrote = false;
    while let Some(frame) = conn.poll_transmit() {
        writer.feed(frame).await?;
        wrote = true;
    }
    if wrote {
        writer.flush().await?;
    }
    // Taking frames produced send credit for the engine.
    if forward(conn, engine).await.is_err() {
        conn.shutdown(clock.now(), SERVER_SHUTDOWN);
    }
    Ok(())
}
