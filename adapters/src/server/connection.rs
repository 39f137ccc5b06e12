//! One accepted WebSocket connection: the core's [`ServerConnection`] driven on its own task.
//!
//! The driver is one hand-written future that polls every source of the connection in turn: the
//! socket (read only while the connection's memory budget allows, [`ServerConnection::wants_input`]),
//! its outbox from the engine, its timer, the socket's write side and the forwarding of inputs to the
//! engine. Nothing waits for anything else: a peer that stops reading fills the socket and then the
//! connection's output budget, while the connection keeps taking the engine's outputs, returning
//! credit and running its timers; a peer that sends faster than the engine takes finds its socket
//! unread until the engine caught up. Reads and engine outputs are handled in batches and every batch
//! of frames costs one flush.
//!
//! The connection ends when the peer closes or fails, on a protocol violation (the mux decides), when
//! the token expires, when its output outgrows its memory budget, or when the engine stops (server
//! shutdown): then its `close` frame and whatever was queued before it are flushed and the socket is
//! closed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_channel::Receiver;
use futures_util::{Stream, future::poll_fn};
use streamkit_proto::Millis;
use streamkit_proto::mux::{MuxConfig, MuxCounters, MuxSession, Role};
use streamkit_proto::server::{ConnectionConfig, EngineOutput, ServerConnection};
use streamkit_proto::stream::EndReason;

use crate::clock::{MonotonicClock, WallClock};
use crate::engine::{EngineHandle, EngineStopped, TrySendInputs};
use crate::http::AcceptedWebSocket;
use crate::log_limit::limited_log;
use crate::metrics::{ErrorKind, Metrics};
use crate::runtime::{AsyncTimer, BoxFuture, Runtime, RuntimeExt};
use crate::ws::{WsReader, WsWriter};

/// Frames read, or engine outputs handled, in one go before the driver writes (and so returns
/// credit): large enough to batch, small enough that writes are never starved by a busy peer.
const MAX_BATCH: usize = 256;

/// Rounds of progress the driver makes before it yields to the executor, so that one busy connection
/// cannot keep a worker thread from every other task.
const MAX_ROUNDS: usize = 32;

/// How long a connection that is over keeps trying to write its last frames (its close frame among
/// them) to a peer that does not read, before the socket is dropped with them.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// How long a connection the server closes keeps reading (and discarding) after its close frame,
/// waiting for the peer's close. Dropping a socket with unread input makes the kernel answer with a
/// reset, which can destroy the close frame (and the last statuses) before the peer has read them: a
/// client that was still producing would see a broken connection instead of a clean close.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

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

/// What a connection needs from its server besides the socket.
#[derive(Clone)]
pub struct ConnectionContext {
    /// The engine.
    pub engine: EngineHandle,
    /// The runtime the connection runs on.
    pub runtime: Arc<dyn Runtime>,
    /// Mux configuration.
    pub mux: MuxConfig,
    /// The memory budget.
    pub connection: ConnectionConfig,
    /// Where to count.
    pub metrics: Arc<Metrics>,
}

/// Runs `accepted` until the connection ends.
///
/// The connection's whole state is built here, before the returned future exists, and that future
/// owns it as one value: the future lives as long as the connection, so nothing in it is kept twice
/// (an `async fn` would also keep its arguments, moved apart, for the connection's whole life).
pub fn run_connection(
    accepted: AcceptedWebSocket,
    context: ConnectionContext,
    seed: u64,
) -> impl Future<Output = ()> + Send + 'static {
    let ConnectionContext { engine, runtime, mux, connection: budget, metrics } = context;
    let (conn_id, outbox_sender, outbox) = engine.new_connection();
    // Heartbeats and idle timeouts run on the monotonic clock: a step of the system clock must not
    // close connections (or keep dead ones open). The token's expiry becomes a deadline on it too.
    let clock = MonotonicClock::new();
    // `permit` holds this connection's place under the connection limit until the connection ends.
    let AcceptedWebSocket { connection, principal, codec, peer, permit } = accepted;
    let session = MuxSession::new(Role::Server { scopes: principal.scopes }, codec, mux, clock.now(), seed);
    let (reader, writer) = connection.split();
    let mut conn = ServerConnection::with_config(conn_id, session, budget);
    if let Some(expiry) = clock.from_wall(&WallClock::default(), principal.expires_at) {
        conn.set_token_expiry(expiry);
    }
    let driver = Driver {
        conn,
        engine,
        outbox: Box::pin(outbox),
        reader,
        writer,
        timer: runtime.sleep(Duration::from_secs(3600)),
        clock,
        metrics,
        counters: MuxCounters::default(),
        forwarding: None,
        unflushed: (0, 0),
        input_ended: false,
        write_failed: false,
        over_since: None,
        armed: None,
        ending: Ending::Mux,
    };
    async move {
        let _permit = permit;
        let mut driver = driver;
        if driver.engine.register_outbox(conn_id, outbox_sender).await.is_err() {
            return;
        }
        tracing::debug!(conn = conn_id, %peer, ?codec, "connection opened");
        poll_fn(|cx| driver.poll_drive(cx)).await;
        driver.finish(&runtime, peer).await;
    }
}

/// The state of one connection's driver (see the module docs).
struct Driver {
    conn: ServerConnection,
    engine: EngineHandle,
    /// Pinned: polling a receiver registers a listener inside it.
    outbox: Pin<Box<Receiver<Vec<EngineOutput>>>>,
    reader: WsReader,
    writer: WsWriter,
    timer: Pin<Box<dyn AsyncTimer>>,
    clock: MonotonicClock,
    metrics: Arc<Metrics>,
    /// What the mux had refused at the last look (for the metrics).
    counters: MuxCounters,
    /// Engine inputs on their way (the engine's inbox was full).
    forwarding: Option<BoxFuture<'static, Result<(), EngineStopped>>>,
    /// Frames and bytes written since the last flush.
    unflushed: (u64, u64),
    /// The reader saw the end of the input (the peer's close, EOF or a read error).
    input_ended: bool,
    /// A write failed (or the last frames could not be written in time): nothing more is written.
    write_failed: bool,
    /// When the connection was found over (shut down), for [`SHUTDOWN_FLUSH`].
    over_since: Option<Millis>,
    /// The deadline the timer is armed for.
    armed: Option<Millis>,
    ending: Ending,
}

impl Driver {
    /// After [`poll_drive`](Self::poll_drive): closes the socket, lingers for the peer's close,
    /// counts how the connection ended and leaves the engine.
    async fn finish(&mut self, runtime: &Arc<dyn Runtime>, peer: SocketAddr) {
        let conn_id = self.conn.id();
        if !self.write_failed {
            let _ = self.writer.close().await;
        }
        if !self.input_ended {
            let reader = &mut self.reader;
            let drain = async { while let Ok(Some(_)) = reader.recv().await {} };
            let _ = runtime.timeout(CLOSE_LINGER, drain).await;
        }
        let reason = self.conn.shutdown_reason();
        match (self.ending, reason) {
            (Ending::Transport, _) => self.metrics.error(ErrorKind::Transport),
            (Ending::Mux, Some(reason))
                if !matches!(reason, EndReason::MuxerClosed | EndReason::ShuttingDown) =>
            {
                self.metrics.error(ErrorKind::Protocol);
                // A client can end connections with protocol errors as fast as it can open them.
                limited_log!(info, [conn = conn_id, %peer, %reason], "connection closed on a protocol error");
            }
            _ => {}
        }
        tracing::debug!(conn = conn_id, %peer, reason = reason.map(tracing::field::display), "connection closed");
        self.engine.unregister(conn_id).await;
    }

    /// Polls every source until none makes progress; `Ready` once the connection is over and flushed.
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..MAX_ROUNDS {
            let mut progress = self.poll_forward(cx);
            progress |= self.poll_write(cx);
            progress |= self.poll_outbox(cx);
            progress |= self.poll_read(cx);
            progress |= self.poll_timer(cx);
            self.record_refusals();
            if self.is_done() {
                return Poll::Ready(());
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Still busy: come back after the other tasks had their turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Whether the connection is over: shut down, its last frames written and its last inputs
    /// delivered to the engine.
    fn is_done(&self) -> bool {
        self.conn.shutdown_reason().is_some()
            && (self.write_failed || (!self.conn.has_transmit() && self.unflushed == (0, 0)))
            && self.forwarding.is_none()
            && !self.conn.has_engine_input()
    }

    fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Hands queued inputs to the engine; waits (without blocking the rest) while its inbox is full.
    fn poll_forward(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        loop {
            if let Some(forwarding) = &mut self.forwarding {
                match forwarding.as_mut().poll(cx) {
                    Poll::Pending => return progress,
                    Poll::Ready(result) => {
                        self.forwarding = None;
                        progress = true;
                        if result.is_err() {
                            self.engine_stopped();
                        }
                    }
                }
            }
            if !self.conn.has_engine_input() {
                return progress;
            }
            let inputs: Vec<_> = std::iter::from_fn(|| self.conn.poll_engine_input()).collect();
            match self.engine.try_send(inputs) {
                Ok(()) => return true,
                Err(TrySendInputs::Stopped) => {
                    self.engine_stopped();
                    return true;
                }
                // Only a full inbox costs a future that waits for room.
                Err(TrySendInputs::Full(inputs)) => {
                    let engine = self.engine.clone();
                    self.forwarding = Some(Box::pin(async move { engine.send(inputs).await }));
                }
            }
        }
    }

    /// Writes what the socket takes and flushes it.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> bool {
        if self.write_failed {
            return false;
        }
        let mut progress = false;
        let result = loop {
            if !self.conn.has_transmit() {
                break Ok(());
            }
            match self.writer.poll_ready(cx) {
                Poll::Pending => break Ok(()),
                Poll::Ready(Err(e)) => break Err(e),
                Poll::Ready(Ok(())) => {}
            }
            let Some(frame) = self.conn.poll_transmit() else { break Ok(()) };
            self.unflushed.0 += 1;
            self.unflushed.1 += frame.len() as u64;
            progress = true;
            if let Err(e) = self.writer.start_send(frame) {
                break Err(e);
            }
        };
        let result = result.and_then(|()| {
            if self.unflushed == (0, 0) {
                return Ok(());
            }
            match self.writer.poll_flush(cx) {
                Poll::Pending => Ok(()),
                Poll::Ready(Ok(())) => {
                    let (frames, bytes) = std::mem::take(&mut self.unflushed);
                    self.metrics.sent(frames, bytes);
                    progress = true;
                    Ok(())
                }
                Poll::Ready(Err(e)) => Err(e),
            }
        });
        if result.is_err() {
            self.write_failed = true;
            self.unflushed = (0, 0);
            if self.conn.shutdown_reason().is_none() {
                self.ending = Ending::Transport;
            }
            self.conn.handle_transport_closed(self.now(), EndReason::Transport("write failed".into()));
            progress = true;
        }
        progress
    }

    /// Handles what the engine sent this connection.
    fn poll_outbox(&mut self, cx: &mut Context<'_>) -> bool {
        let now = self.now();
        let mut handled = 0;
        while handled < MAX_BATCH {
            match self.outbox.as_mut().poll_next(cx) {
                Poll::Pending => return handled > 0,
                Poll::Ready(Some(batch)) => {
                    // A batch is what the engine produced for this connection from one input: bounded
                    // by the send credit of the streams concerned.
                    handled += batch.len().max(1);
                    for output in batch {
                        self.conn.handle_engine(now, output);
                    }
                }
                Poll::Ready(None) => {
                    self.engine_stopped();
                    return true;
                }
            }
        }
        true
    }

    /// Reads frames while the connection's budget allows.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> bool {
        let (mut frames, mut bytes) = (0u64, 0u64);
        let now = self.now();
        while !self.input_ended && frames < MAX_BATCH as u64 && self.conn.wants_input() {
            match self.reader.poll_recv(cx) {
                Poll::Pending => break,
                Poll::Ready(Ok(Some(frame))) => {
                    frames += 1;
                    bytes += frame.len() as u64;
                    self.conn.handle_frame(now, &frame);
                }
                Poll::Ready(Ok(None)) => {
                    self.input_ended = true;
                    self.conn.handle_transport_closed(now, EndReason::MuxerClosed);
                    return true;
                }
                Poll::Ready(Err(e)) => {
                    self.input_ended = true;
                    self.ending = Ending::Transport;
                    self.conn.handle_transport_closed(now, EndReason::Transport(e.to_string()));
                    return true;
                }
            }
        }
        if frames > 0 {
            self.metrics.received(frames, bytes);
        }
        frames > 0
    }

    /// Runs the connection's timers: heartbeats, idle timeout, token expiry, and the deadline of the
    /// last writes once the connection is over.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let mut deadline = self.conn.poll_timeout().map(|(at, _)| at);
        let now = self.now();
        if self.conn.shutdown_reason().is_some() {
            let since = *self.over_since.get_or_insert(now);
            deadline = Some(since + Millis(SHUTDOWN_FLUSH.as_millis() as u64));
        }
        let Some(deadline) = deadline else { return false };
        // Re-arming costs a trip through the runtime's timer wheel: only when the deadline moved.
        if self.armed != Some(deadline) {
            self.armed = Some(deadline);
            self.timer.as_mut().reset(self.clock.instant_of(deadline));
        }
        // Timers may fire late or (tokio's budget) report Pending past their deadline: the clock decides.
        if now < deadline && self.timer.as_mut().poll_elapsed(cx).is_pending() {
            return false;
        }
        if self.conn.shutdown_reason().is_some() {
            if !self.write_failed {
                // The peer does not read: drop the socket with what it did not take.
                tracing::debug!(
                    conn = self.conn.id(),
                    "last frames not written in time; dropping the socket"
                );
                self.write_failed = true;
                self.unflushed = (0, 0);
                return true;
            }
            return false;
        }
        self.conn.handle_timeout(now);
        if self.conn.shutdown_reason() == Some(&EndReason::TokenExpired) {
            // Clients choose their tokens' expiry: a thousand connections can expire in one instant.
            limited_log!(info, [conn = self.conn.id()], "closing connection: token expired");
            self.metrics.error(ErrorKind::TokenExpired);
            self.ending = Ending::Server;
        }
        true
    }

    /// The engine is gone (server shutdown).
    fn engine_stopped(&mut self) {
        if self.conn.shutdown_reason().is_none() {
            self.ending = Ending::Server;
            self.conn.shutdown(self.now(), EndReason::ShuttingDown);
        }
        // Nothing can reach the engine any more.
        while self.conn.poll_engine_input().is_some() {}
    }

    /// Counts what the mux refused since the last look (denied frames, refused and overloaded streams).
    fn record_refusals(&mut self) {
        let now = self.conn.mux().counters();
        let seen = &mut self.counters;
        if now == *seen {
            return;
        }
        self.metrics.error_n(ErrorKind::AccessDenied, now.denied_frames - seen.denied_frames);
        self.metrics.error_n(ErrorKind::TooManyStreams, now.refused_streams - seen.refused_streams);
        self.metrics.error_n(ErrorKind::StreamOverload, now.overloaded_streams - seen.overloaded_streams);
        *seen = now;
    }
}
